//! The LP lower bound (feature `lp`). See [`lp_lower_bound`].

use std::collections::{BTreeMap, HashMap};

use good_lp::{
    Expression, ResolutionError, Solution, SolverModel, Variable, constraint, microlp, variable,
    variables,
};

use super::{Hosts, lower_bound};
use crate::resources::{DIMS, Demand, GPU_MILLI, GpuDemand, GpuDevices, Resources, dims};
use crate::trace::TracePod;

/// A lower bound on hosts from the LP relaxation (see [`lp_lower_bound`]).
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub struct LpBound {
    /// No packing of the pods can use fewer hosts: the larger of [`Self::lp_ceil`] and
    /// [`Self::per_dimension`].
    pub bound: usize,
    /// The LP optimum (fractional hosts).
    pub lp_optimum: f64,
    /// `ceil` of the optimum, lowered first by a relative 1e-6 against solver tolerance.
    pub lp_ceil: usize,
    /// [`lower_bound`](super::lower_bound), the per-dimension bound, for comparison.
    pub per_dimension: usize,
    /// Pod classes (distinct demand and `gpu_spec`) in the LP.
    pub classes: usize,
    /// Host shapes in the LP.
    pub shapes: usize,
}

/// Why [`lp_lower_bound`] gave no bound.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum LpBoundError {
    /// A pod fits no empty host of any shape (pass only placeable pods, for example
    /// those a [`pack`](super::pack) placed).
    #[error("pod {pod:?} fits no empty host of any shape, so no number of hosts holds the pods")]
    NoShapeFits {
        /// The pod's name.
        pod: String,
    },
    /// The listed nodes cannot hold the pods even fractionally, or a dimension has demand
    /// but no capacity.
    #[error("the hosts cannot hold the pods even in the LP relaxation")]
    Infeasible,
    /// The solver failed (its own words); the instance size helps reproduce it.
    #[error("the LP solver failed on {classes} classes x {shapes} shapes: {message}")]
    Solver {
        /// What the solver said.
        message: String,
        /// Pod classes in the LP.
        classes: usize,
        /// Host shapes in the LP.
        shapes: usize,
    },
}

/// The relative tolerance by which the LP optimum is lowered before rounding up.
const TOLERANCE: f64 = 1e-6;

/// A share above this many thousandths holds its device against every other such share.
const BIG_SHARE: u16 = GPU_MILLI / 2;

#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
struct ShapeKey {
    capacity: [u64; 2 + crate::resources::MAX_EXTRA],
    gpus: u8,
    gpu_model: Option<String>,
}

struct Shape {
    capacity: Resources,
    gpus: u8,
    gpu_model: Option<String>,
    /// Nodes of this shape; `None` for as many as needed.
    count: Option<usize>,
}

struct Class<'a> {
    demand: Demand,
    gpu_spec: &'a [String],
    /// A pod of the class, to name in errors.
    example: &'a str,
    count: usize,
}

fn shapes(hosts: &Hosts) -> Vec<Shape> {
    match hosts {
        Hosts::Identical {
            capacity,
            gpus,
            gpu_model,
        } => vec![Shape {
            capacity: *capacity,
            gpus: *gpus,
            gpu_model: gpu_model.clone(),
            count: None,
        }],
        Hosts::Listed(nodes) => {
            let mut by_key: BTreeMap<ShapeKey, Shape> = BTreeMap::new();
            for n in nodes {
                let key = ShapeKey {
                    capacity: n.capacity.dims(),
                    gpus: n.gpus,
                    gpu_model: n.gpu_model.clone(),
                };
                by_key
                    .entry(key)
                    .and_modify(|s| s.count = s.count.map(|c| c + 1))
                    .or_insert_with(|| Shape {
                        capacity: n.capacity,
                        gpus: n.gpus,
                        gpu_model: n.gpu_model.clone(),
                        count: Some(1),
                    });
            }
            by_key.into_values().collect()
        }
    }
}

fn classes<'a>(pods: &[&'a TracePod]) -> Vec<Class<'a>> {
    // In order of first appearance, so the LP (and any solver error) is reproducible.
    let mut index: HashMap<(Demand, &'a [String]), usize> = HashMap::new();
    let mut classes: Vec<Class<'a>> = Vec::new();
    for p in pods {
        let next = classes.len();
        let i = *index
            .entry((p.demand, p.gpu_spec.as_slice()))
            .or_insert(next);
        if i == next {
            classes.push(Class {
                demand: p.demand,
                gpu_spec: &p.gpu_spec,
                example: &p.name,
                count: 0,
            });
        }
        classes[i].count += 1;
    }
    classes
}

/// Whether one pod of `class` fits an empty host of `shape`, GPU model included.
fn fits_empty(class: &Class<'_>, shape: &Shape) -> bool {
    let model_ok = class.gpu_spec.is_empty()
        || shape
            .gpu_model
            .as_ref()
            .is_none_or(|m| class.gpu_spec.contains(m));
    model_ok
        && class.demand.resources.fits_in(&shape.capacity)
        && GpuDevices::new(shape.gpus).fits(class.demand.gpu)
}

/// Devices a pod holds against every other whole-device pod or big share.
fn exclusive_devices(gpu: GpuDemand) -> u8 {
    match gpu {
        GpuDemand::None => 0,
        GpuDemand::Shared(m) => u8::from(m > BIG_SHARE),
        GpuDemand::Whole(n) => n,
    }
}

#[allow(clippy::cast_precision_loss)] // resource amounts and counts; f64 is ample for an LP
fn f(x: u64) -> f64 {
    x as f64
}

/// A lower bound on hosts from a linear-programming relaxation that knows GPU devices
/// are indivisible (feature `lp`).
///
/// [`lower_bound`](super::lower_bound) divides each dimension's total by a host's
/// capacity. On GPU workloads that is loose: eight 600-milli shares are 4,800 milli,
/// "five hosts' worth" of a 1-GPU shape by the milli count, yet each needs a device of
/// its own. [`lp_lower_bound`] solves a small LP over *pod classes* (pods with the same
/// demand and `gpu_spec`) and *host shapes* (the identical shape, or the distinct shapes
/// of a listed fleet with their counts) that adds one device constraint per shape.
///
/// # The LP
///
/// Classes `c` with `n_c` pods and demand `d_ck` in each dimension `k` (CPU, memory, the
/// extras, GPU milli); shapes `s` with capacity `cap_sk`, `g_s` GPU devices and, for a
/// listed fleet, `count_s` nodes. Variables `z_s >= 0` (hosts of shape `s` used, at most
/// `count_s` for listed nodes) and `x_cs >= 0` (pods of class `c` on shape `s`), the
/// latter only where one pod of the class fits an empty host of the shape (GPU model,
/// devices, every dimension).
///
/// ```text
/// minimise   sum_s z_s
/// subject to sum_s x_cs = n_c                                   every class c
///            sum_c d_ck x_cs <= cap_sk z_s                      every shape s, dimension k
///            sum_c (whole_c + [share_c > 500]) x_cs <= g_s z_s  every shape s
/// ```
///
/// where `whole_c` is the number of whole devices a pod of class `c` holds and
/// `[share_c > 500]` is 1 for a pod holding a share of more than 500 thousandths.
///
/// **Why it is a lower bound.** Take any packing and let `z_s` be the hosts of shape `s`
/// it uses and `x_cs` the pods of class `c` it puts on them. Every pod is placed once
/// (first row). On each host, the pods' demands fit its capacity; summing over the hosts
/// of a shape gives the second row. On each host, a whole-device pod holds its devices
/// alone, and a device holding a share above 500 has less than 500 left, so it holds no
/// whole-device pod and no second share above 500: the devices so held are distinct,
/// at most `g_s` per host, and summing gives the third row. So every packing is a
/// feasible point, whose objective is its host count; the LP optimum is at most the best
/// packing's host count, which is an integer, so `ceil(optimum)` is a bound too.
/// Solvers stop within a tolerance, so the optimum is first lowered by a relative 1e-6
/// (which only ever makes the bound smaller). The reported [`LpBound::bound`] is the
/// larger of that and the per-dimension bound, both valid.
///
/// # Why microlp, and its limits
///
/// The model is written with `good_lp` (a modelling layer: another solver, for example
/// HiGHS, plugs in as a feature of `good_lp`) and solved by `microlp`, a pure-Rust
/// simplex: no system solver, no C or C++ toolchain, so the feature builds wherever
/// `cargo` does, CI included. Its simplex is dense in places and single-threaded; the
/// LP has `classes x shapes + shapes` variables, which stays small because pods with
/// equal demand share a class (the openb trace: a few hundred classes, one shape for
/// identical hosts, about twenty for its node list). A workload with tens of thousands of
/// distinct demands would want a bigger solver.
///
/// # Use
///
/// The bound is never below [`lower_bound`](super::lower_bound). Pure and
/// deterministic. Pass only pods that some host can take (for example those
/// [`pack`](super::pack) placed); a pod no shape fits is an error, not a silent drop.
pub fn lp_lower_bound(hosts: &Hosts, pods: &[&TracePod]) -> Result<LpBound, LpBoundError> {
    let shapes = shapes(hosts);
    let classes = classes(pods);
    let per_dimension = lower_bound(hosts, pods).ok_or(LpBoundError::Infeasible)?;
    let solver_error = |e: ResolutionError| match e {
        ResolutionError::Infeasible => LpBoundError::Infeasible,
        e => LpBoundError::Solver {
            message: e.to_string(),
            classes: classes.len(),
            shapes: shapes.len(),
        },
    };

    let caps: Vec<[u64; DIMS]> = shapes
        .iter()
        .map(|s| dims(&s.capacity, u64::from(s.gpus) * u64::from(GPU_MILLI)))
        .collect();
    // Rows are scaled by the largest capacity in their dimension, so coefficients are
    // fractions of a host rather than millicores and MiB.
    let mut scale = [0u64; DIMS];
    for c in &caps {
        for (s, &x) in scale.iter_mut().zip(c) {
            *s = (*s).max(x);
        }
    }

    let mut vars = variables!();
    let z: Vec<Variable> = shapes
        .iter()
        .map(|s| {
            let v = variable().min(0);
            vars.add(match s.count {
                Some(n) => v.max(f(n as u64)),
                None => v,
            })
        })
        .collect();
    // x[c] = (shape, variable) for the shapes class c may use.
    let mut x: Vec<Vec<(usize, Variable)>> = Vec::with_capacity(classes.len());
    for class in &classes {
        let allowed: Vec<(usize, Variable)> = shapes
            .iter()
            .enumerate()
            .filter(|(_, s)| fits_empty(class, s))
            .map(|(si, _)| (si, vars.add(variable().min(0))))
            .collect();
        if allowed.is_empty() {
            return Err(LpBoundError::NoShapeFits {
                pod: class.example.to_owned(),
            });
        }
        x.push(allowed);
    }

    let objective: Expression = z.iter().copied().sum();
    let mut model = vars.minimise(objective).using(microlp);
    for (class, xs) in classes.iter().zip(&x) {
        let placed: Expression = xs.iter().map(|&(_, v)| v).sum();
        model = model.with(constraint::eq(placed, f(class.count as u64)));
    }
    for (si, shape) in shapes.iter().enumerate() {
        // Per shape: (class demand, variable) of every class allowed on it.
        let on_shape: Vec<(&Class<'_>, Variable)> = classes
            .iter()
            .zip(&x)
            .filter_map(|(c, xs)| xs.iter().find(|(s, _)| *s == si).map(|&(_, v)| (c, v)))
            .collect();
        for k in 0..DIMS {
            let mut used = Expression::from(0.0);
            let mut any = false;
            for (c, v) in &on_shape {
                let d = dims(&c.demand.resources, c.demand.gpu.milli())[k];
                if d > 0 {
                    used.add_mul(f(d) / f(scale[k]), *v);
                    any = true;
                }
            }
            if any {
                let room = f(caps[si][k]) / f(scale[k]) * z[si];
                model = model.with(constraint::leq(used, room));
            }
        }
        let mut held = Expression::from(0.0);
        let mut any = false;
        for (c, v) in &on_shape {
            let n = exclusive_devices(c.demand.gpu);
            if n > 0 {
                held.add_mul(f(u64::from(n)), *v);
                any = true;
            }
        }
        if any {
            model = model.with(constraint::leq(held, f(u64::from(shape.gpus)) * z[si]));
        }
    }
    let solution = model.solve().map_err(solver_error)?;
    let lp_optimum: f64 = z.iter().map(|&v| solution.value(v)).sum();
    if !lp_optimum.is_finite() || lp_optimum < 0.0 {
        return Err(LpBoundError::Solver {
            message: format!("the optimum came back as {lp_optimum}"),
            classes: classes.len(),
            shapes: shapes.len(),
        });
    }
    let lowered = (lp_optimum - TOLERANCE * lp_optimum.max(1.0))
        .ceil()
        .max(0.0);
    // The optimum is at most the hosts of some packing, far below 2^52.
    #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)]
    let lp_ceil = lowered as usize;
    Ok(LpBound {
        bound: lp_ceil.max(per_dimension),
        lp_optimum,
        lp_ceil,
        per_dimension,
        classes: classes.len(),
        shapes: shapes.len(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pack::test_pod;
    use crate::trace::TraceNode;

    fn identical(cpu: u64, gpus: u8) -> Hosts {
        Hosts::Identical {
            capacity: Resources::new(cpu, 100_000),
            gpus,
            gpu_model: None,
        }
    }

    /// Eight 600-milli shares need eight devices: two 4-GPU hosts, where the milli sum
    /// says one and a bit (4,800 over 4,000), so both bounds say 2; on 8-GPU hosts the
    /// milli bound says 1 and so does the device row. On 2-GPU hosts: milli 3, devices 4.
    #[test]
    fn big_shares_count_as_devices() {
        let pods: Vec<TracePod> = (0..8)
            .map(|_| test_pod("s", 1, 1, GpuDemand::Shared(600)))
            .collect();
        let refs: Vec<&TracePod> = pods.iter().collect();
        let b = lp_lower_bound(&identical(100_000, 2), &refs).unwrap();
        assert_eq!((b.per_dimension, b.lp_ceil, b.bound), (3, 4, 4), "{b:?}");
        let b = lp_lower_bound(&identical(100_000, 8), &refs).unwrap();
        assert_eq!(b.bound, 1, "{b:?}");
        assert_eq!((b.classes, b.shapes), (1, 1));
    }

    /// Whole devices and big shares compete for the same devices; small shares do not.
    #[test]
    fn whole_devices_and_big_shares_share_the_device_row() {
        let mut pods = vec![test_pod("w", 1, 1, GpuDemand::Whole(3))];
        pods.extend((0..3).map(|_| test_pod("b", 1, 1, GpuDemand::Shared(700))));
        pods.extend((0..4).map(|_| test_pod("s", 1, 1, GpuDemand::Shared(250))));
        let refs: Vec<&TracePod> = pods.iter().collect();
        // Milli: 3000 + 2100 + 1000 = 6100 over 4000: 2. Devices: 3 + 3 = 6 over 4: 2.
        let b = lp_lower_bound(&identical(100_000, 4), &refs).unwrap();
        assert_eq!(b.bound, 2, "{b:?}");
        // On 2-GPU hosts the 3-GPU pod fits nowhere: an error naming it.
        assert_eq!(
            lp_lower_bound(&identical(100_000, 2), &refs),
            Err(LpBoundError::NoShapeFits { pod: "w".into() })
        );
    }

    /// Listed nodes: counts bound each shape, GPU models are honoured, and a fleet too
    /// small is infeasible.
    #[test]
    fn listed_nodes_bound_each_shape() {
        let node = |name: &str, cpu, gpus, model: Option<&str>| TraceNode {
            name: name.into(),
            capacity: Resources::new(cpu, 100_000),
            gpus,
            gpu_model: model.map(str::to_owned),
        };
        let hosts = Hosts::Listed(vec![
            node("big", 8_000, 0, None),
            node("t4-1", 1_000, 2, Some("T4")),
            node("t4-2", 1_000, 2, Some("T4")),
            node("v100", 1_000, 2, Some("V100")),
        ]);
        let mut v100 = test_pod("v", 100, 1, GpuDemand::Whole(1));
        v100.gpu_spec = vec!["V100".into()];
        let cpu = test_pod("c", 4_000, 1, GpuDemand::None);
        // Two V100 pods fit the one V100 node; the CPU pods go to "big".
        let b = lp_lower_bound(&hosts, &[&v100, &v100, &cpu, &cpu]).unwrap();
        assert_eq!(b.bound, 2, "{b:?}");
        assert_eq!(b.shapes, 3);
        // Three V100 pods do not fit the one V100 node.
        assert_eq!(
            lp_lower_bound(&hosts, &[&v100, &v100, &v100]),
            Err(LpBoundError::Infeasible)
        );
    }

    #[test]
    fn no_pods_need_no_hosts() {
        let b = lp_lower_bound(&identical(1_000, 1), &[]).unwrap();
        assert_eq!((b.bound, b.lp_ceil, b.classes), (0, 0, 0));
    }
}
