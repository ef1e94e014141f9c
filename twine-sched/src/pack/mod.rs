//! Offline packing: every task of a trace onto as few hosts as possible.
//!
//! This is Borg's cell-compaction measure of packing quality: how many hosts a
//! workload needs, against the lower bound `max over dimensions of
//! ceil(total demand / capacity)`. Hosts are either identical (a shape, as many as
//! needed) or a listed set of nodes (bigger nodes are opened first). GPUs are
//! devices throughout: a host is only chosen if the task fits on its devices.
//!
//! [`pack`] runs a [`PackPolicy`]; [`verify`] checks any packing against the trace rows
//! alone, independently of the packer's bookkeeping. [`lower_bound`] recomputes the
//! bound from the pods; [`BoundTable`] and [`DemandSums`] give the same bound from
//! running per-dimension sums, for callers whose tasks come and go.
//!
//! # twine's policy
//!
//! The classic heuristics ([`PackPolicy::Decreasing`]) are item-centric: they fix the
//! task order up front (largest first) and put each task where a score likes it best.
//! On workloads whose demands are anti-correlated, as in the openb GPU trace
//! (GPU-heavy tasks with little CPU beside CPU-only tasks), that strands capacity:
//! hosts run out of GPU devices with CPU still free, and first-fit-decreasing needs
//! 1.19x the lower bound. [`PackPolicy::Twine`] works in two stages.
//!
//! 1. **Fill**: open one host at a time and keep adding the task *shape* (tasks are
//!    grouped into equivalence classes of identical demand) whose normalized demand
//!    is closest, in L2, to the host's remaining hole, until nothing fits. A fresh
//!    host takes a large task first; once its devices are spoken for it takes
//!    CPU-only tasks; small GPU shares fill device fragments. L2 beats the dot
//!    product here: the dot product favours large tasks, not tasks that match the
//!    hole. A host is opened only if some remaining task fits it, so every host
//!    takes at least one task and the stage ends by itself.
//! 2. **Compact**: Borg's cell compaction as local search. Take the 20 least-loaded
//!    hosts (load weights the bottleneck dimension double) and try to empty one by
//!    moving its tasks, largest first, to the best-fitting other host, or by a
//!    one-step swap (evict a task from a host so the moving task fits there, and put
//!    the evicted task on a third host). A host that empties is closed; one that
//!    does not is restored exactly. Repeat until no candidate empties (each success
//!    closes a host, so this ends).
//!
//! Measured on the openb trace (8,147 placeable pods, 96-core/384 GiB/8-GPU hosts):
//! fill alone 921 hosts (1.042x the lower bound of 884), with compaction 902
//! (1.020x); see docs/BENCHMARKS.md, whose figures `tests/openb_figures.rs` keeps
//! true (all but the fill-only count, an internal stage). Deterministic: no clock, no randomness, ties broken by index.

use std::collections::BTreeMap;
use std::fmt;

use crate::resources::{GPU_MILLI, GpuDemand, MAX_EXTRA, Resources};
use crate::score::{Policy, UnknownPolicy};
use crate::trace::{TraceNode, TracePod};

mod bins;
mod bound;
mod classic;
#[cfg(feature = "lp")]
mod lp;
mod twine;
mod verify;

pub use bound::{BoundTable, DemandSums, SumUnderflow};
#[cfg(feature = "lp")]
pub use lp::{LpBound, LpBoundError, lp_lower_bound};
pub use verify::{GpuMode, Verified, Violation, verify};

use bins::{NodeShape, Opener, reference_bin, unplaceable};

/// The hosts to pack onto.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub enum Hosts {
    /// As many identical hosts as needed.
    Identical {
        /// CPU and memory of each host.
        capacity: Resources,
        /// GPU devices per host.
        gpus: u8,
        /// GPU model; `None` accepts every `gpu_spec`.
        gpu_model: Option<String>,
    },
    /// These nodes, each at most once.
    Listed(Vec<TraceNode>),
}

/// Where one task went.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Placement {
    /// Index of the host: into the node list, or the n-th identical host opened.
    pub host: usize,
    /// The GPU devices it holds.
    pub gpus: crate::resources::GpuGrant,
}

/// A dimension of a host's capacity.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
#[non_exhaustive]
pub enum Dimension {
    /// CPU (millicores).
    Cpu,
    /// Memory (MiB).
    Memory,
    /// An extra resource, by index (`0..MAX_EXTRA`).
    Extra(usize),
    /// GPU devices.
    Gpu,
}

impl Dimension {
    /// The dimension at `index` of [`Resources::dims`].
    fn of_resource(index: usize) -> Dimension {
        match index {
            0 => Dimension::Cpu,
            1 => Dimension::Memory,
            k => Dimension::Extra(k - 2),
        }
    }
}

impl fmt::Display for Dimension {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Dimension::Cpu => f.write_str("cpu"),
            Dimension::Memory => f.write_str("memory"),
            Dimension::Extra(k) => write!(f, "extra resource {k}"),
            Dimension::Gpu => f.write_str("gpu"),
        }
    }
}

/// Why a task was left unplaced.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
#[non_exhaustive]
pub enum NotPlaced {
    /// No host has a GPU model the task accepts.
    WrongGpuModel,
    /// Even an empty host is too small in this dimension: the first that fails on the
    /// host shape the task misses in the fewest dimensions.
    Insufficient(Dimension),
    /// Some node could take it empty, but every such node was used up (listed nodes).
    NoNodeLeft,
}

impl fmt::Display for NotPlaced {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            NotPlaced::WrongGpuModel => f.write_str("wrong GPU model"),
            NotPlaced::Insufficient(d) => write!(f, "insufficient {d}"),
            NotPlaced::NoNodeLeft => f.write_str("no node left"),
        }
    }
}

/// The packer's bookkeeping contradicted itself: a bug, reported instead of a quietly
/// wrong packing. Hosts and pods are indexes, as in [`Placement::host`] and the input.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum PackError {
    /// A task was put on a host it does not fit.
    #[error("internal error: pod #{pod} does not fit host #{host}, which was chosen for it")]
    NoRoom {
        /// The host.
        host: usize,
        /// The pod.
        pod: usize,
    },
    /// Taking a task off a host would leave more free than the host has.
    #[error("internal error: taking pod #{pod} off host #{host} exceeds the host's capacity")]
    GiveBack {
        /// The host.
        host: usize,
        /// The pod.
        pod: usize,
    },
    /// Taking a task off a host would return GPU milli its device does not miss.
    #[error("internal error: taking pod #{pod} off host #{host} overfills GPU device {device}")]
    GiveBackGpu {
        /// The host.
        host: usize,
        /// The pod.
        pod: usize,
        /// The device.
        device: u8,
    },
    /// A member that is not on the host was removed.
    #[error("internal error: host #{host} has no member at position {position}")]
    NoMember {
        /// The host.
        host: usize,
        /// The position asked for.
        position: usize,
    },
    /// The placed tasks need more than the hosts have, so no lower bound exists.
    #[error("internal error: the placed pods exceed what the hosts can hold")]
    Unbounded,
    /// A host was opened for tasks and took none.
    #[error("internal error: host #{host} was opened but took no pod")]
    NoProgress {
        /// The host.
        host: usize,
    },
}

/// The result of packing.
#[derive(Debug, Clone, PartialEq)]
pub struct Packing {
    /// Per task, in input order: its placement, or `None`.
    pub placements: Vec<Option<Placement>>,
    /// Hosts holding at least one task.
    pub hosts_used: usize,
    /// No packing of the placed tasks can use fewer hosts than this.
    pub lower_bound: usize,
    /// Why tasks were left unplaced: reason -> number of tasks.
    pub unplaced_reasons: BTreeMap<NotPlaced, usize>,
}

impl Packing {
    /// Tasks placed.
    pub fn placed(&self) -> usize {
        self.placements.iter().filter(|p| p.is_some()).count()
    }

    /// `hosts_used / lower_bound` (1.0 when nothing needs a host).
    pub fn ratio(&self) -> f64 {
        #[allow(clippy::cast_precision_loss)] // host counts are far below 2^52
        if self.lower_bound == 0 {
            1.0
        } else {
            self.hosts_used as f64 / self.lower_bound as f64
        }
    }
}

/// How to pack.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum PackPolicy {
    /// Tasks largest first (by their normalized size), each onto the open host the
    /// policy scores highest, a new host when none fits: first-fit-decreasing with
    /// [`Policy::FirstFit`], best-fit-decreasing with [`Policy::BestFit`], and so on.
    Decreasing(Policy),
    /// twine's default: fill one host at a time with the task shape that best fills
    /// its remaining hole (bin-centric L2), then compact: empty the least-loaded
    /// hosts into the others, with one-step swaps. See the [module docs](self).
    Twine,
}

impl PackPolicy {
    /// `twine` and every greedy [`Policy`], for side-by-side runs.
    pub fn all() -> Vec<PackPolicy> {
        std::iter::once(PackPolicy::Twine)
            .chain(Policy::ALL.into_iter().map(PackPolicy::Decreasing))
            .collect()
    }

    /// The name used on the command line and in reports.
    pub fn name(self) -> &'static str {
        match self {
            PackPolicy::Decreasing(p) => p.name(),
            PackPolicy::Twine => "twine",
        }
    }
}

impl std::str::FromStr for PackPolicy {
    type Err = UnknownPolicy;

    fn from_str(s: &str) -> Result<PackPolicy, UnknownPolicy> {
        PackPolicy::all()
            .into_iter()
            .find(|p| p.name() == s)
            .ok_or_else(|| {
                UnknownPolicy::new(s, PackPolicy::all().into_iter().map(PackPolicy::name))
            })
    }
}

/// The lower bound on hosts for `pods`: for identical hosts `max_d ceil(sum_d / cap_d)`;
/// for listed nodes, per dimension the fewest nodes whose capacities (largest first)
/// cover the sum. `None` when no number of these hosts holds the sum (a dimension with
/// demand but no capacity, or more than all listed nodes together have).
pub fn lower_bound(hosts: &Hosts, pods: &[&TracePod]) -> Option<usize> {
    let mut sums = DemandSums::default();
    for p in pods {
        sums.add(&p.demand);
    }
    BoundTable::new(hosts).lower_bound(&sums)
}

/// The same workload with each host's GPUs as one pool: GPU milli becomes the last
/// extra resource and no task needs a device. Published baselines (for example the
/// 1,021-1,029 hosts of first-fit-decreasing, DotProduct and L2 on the openb trace)
/// were computed this way; a pooled packing is **not** valid on real devices (eight
/// 600-milli shares "fit" in 8 x 1000 milli of pool but not on the devices), so use it
/// only to compare with such figures. Check such a packing with [`verify`] and
/// [`GpuMode::Pooled`] against the original hosts and pods.
pub fn pool_gpus(hosts: &Hosts, pods: &[TracePod]) -> (Hosts, Vec<TracePod>) {
    let pooled = |capacity: &Resources, gpus: u8| {
        let mut c = *capacity;
        c.extra[MAX_EXTRA - 1] = u64::from(gpus) * u64::from(GPU_MILLI);
        c
    };
    let hosts = match hosts {
        Hosts::Identical {
            capacity,
            gpus,
            gpu_model,
        } => Hosts::Identical {
            capacity: pooled(capacity, *gpus),
            gpus: 0,
            gpu_model: gpu_model.clone(),
        },
        Hosts::Listed(nodes) => Hosts::Listed(
            nodes
                .iter()
                .map(|n| TraceNode {
                    capacity: pooled(&n.capacity, n.gpus),
                    gpus: 0,
                    ..n.clone()
                })
                .collect(),
        ),
    };
    let pods = pods
        .iter()
        .map(|p| {
            let mut demand = p.demand;
            demand.resources.extra[MAX_EXTRA - 1] = demand.gpu.milli();
            demand.gpu = GpuDemand::None;
            TracePod {
                demand,
                ..p.clone()
            }
        })
        .collect();
    (hosts, pods)
}

/// Packs `pods` onto `hosts` with `policy`. Pure and deterministic. An error means the
/// packer's own bookkeeping went wrong (a bug), never bad input.
pub fn pack(hosts: &Hosts, pods: &[TracePod], policy: PackPolicy) -> Result<Packing, PackError> {
    let shapes = NodeShape::of(hosts);
    let mut unplaced_reasons: BTreeMap<NotPlaced, usize> = BTreeMap::new();
    let mut placeable: Vec<usize> = Vec::with_capacity(pods.len());
    for (i, pod) in pods.iter().enumerate() {
        match unplaceable(pod, &shapes) {
            Some(r) => *unplaced_reasons.entry(r).or_default() += 1,
            None => placeable.push(i),
        }
    }
    let reference = reference_bin(&shapes);
    let mut opener = Opener::new(hosts, &shapes, &reference);
    let (bins, left_over) = match policy {
        PackPolicy::Decreasing(score) => {
            classic::pack(pods, &placeable, &shapes, &mut opener, &reference, score)?
        }
        PackPolicy::Twine => twine::pack(pods, &placeable, &shapes, &mut opener)?,
    };
    if !left_over.is_empty() {
        *unplaced_reasons.entry(NotPlaced::NoNodeLeft).or_default() += left_over.len();
    }
    let mut placements: Vec<Option<Placement>> = vec![None; pods.len()];
    for bin in &bins {
        for (index, grant) in &bin.members {
            placements[*index] = Some(Placement {
                host: bin.node,
                gpus: grant.clone(),
            });
        }
    }
    let placed: Vec<&TracePod> = pods
        .iter()
        .zip(&placements)
        .filter(|(_, p)| p.is_some())
        .map(|(p, _)| p)
        .collect();
    Ok(Packing {
        hosts_used: bins.iter().filter(|b| !b.members.is_empty()).count(),
        lower_bound: lower_bound(hosts, &placed).ok_or(PackError::Unbounded)?,
        placements,
        unplaced_reasons,
    })
}

/// A pod for the unit tests of this module and its children.
#[cfg(test)]
fn test_pod(name: &str, cpu: u64, mem: u64, gpu: GpuDemand) -> TracePod {
    TracePod {
        name: name.into(),
        demand: crate::resources::Demand {
            resources: Resources::new(cpu, mem),
            gpu,
        },
        gpu_spec: Vec::new(),
        creation_time: None,
        deletion_time: None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Packs and checks the result with the independent checker.
    fn pack(hosts: &Hosts, pods: &[TracePod], policy: PackPolicy) -> Packing {
        let p = super::pack(hosts, pods, policy).unwrap();
        verify(hosts, pods, &p, GpuMode::Devices).unwrap();
        p
    }

    fn pod(cpu: u64, mem: u64, gpu: GpuDemand) -> TracePod {
        test_pod("", cpu, mem, gpu)
    }

    #[test]
    fn gpu_shares_need_devices_not_pool() {
        // Eight 600-milli shares fit a pool of 8 x 1000 twice over... but only once per device.
        let hosts = Hosts::Identical {
            capacity: Resources::new(100_000, 100_000),
            gpus: 4,
            gpu_model: None,
        };
        let pods: Vec<TracePod> = (0..8).map(|_| pod(1, 1, GpuDemand::Shared(600))).collect();
        let p = pack(&hosts, &pods, PackPolicy::Decreasing(Policy::FirstFit));
        assert_eq!(p.hosts_used, 2);
        assert_eq!(p.lower_bound, 2); // 4800 milli over 4000 per host
        let per_device: BTreeMap<(usize, u8), u32> =
            p.placements
                .iter()
                .flatten()
                .fold(BTreeMap::new(), |mut m, pl| {
                    *m.entry((pl.host, pl.gpus.devices[0].0)).or_default() += 1;
                    m
                });
        assert!(per_device.values().all(|&n| n == 1), "{per_device:?}");
    }

    #[test]
    fn pooled_gpus_over_promise() {
        let hosts = Hosts::Identical {
            capacity: Resources::new(100_000, 100_000),
            gpus: 4,
            gpu_model: None,
        };
        let pods: Vec<TracePod> = (0..6).map(|_| pod(1, 1, GpuDemand::Shared(600))).collect();
        assert_eq!(
            pack(&hosts, &pods, PackPolicy::Decreasing(Policy::FirstFit)).hosts_used,
            2
        );
        let (pooled_hosts, pooled_pods) = pool_gpus(&hosts, &pods);
        // 3600 milli of pool fit one host; on devices they need two.
        assert_eq!(
            pack(
                &pooled_hosts,
                &pooled_pods,
                PackPolicy::Decreasing(Policy::FirstFit)
            )
            .hosts_used,
            1
        );
    }

    #[test]
    fn oversized_pods_are_reported() {
        let hosts = Hosts::Identical {
            capacity: Resources::new(1000, 1000),
            gpus: 1,
            gpu_model: None,
        };
        let pods = vec![
            pod(2000, 1, GpuDemand::None),
            pod(1, 2000, GpuDemand::None),
            pod(1, 1, GpuDemand::Whole(2)),
            pod(500, 500, GpuDemand::None),
        ];
        for policy in PackPolicy::all() {
            let p = pack(&hosts, &pods, policy);
            assert_eq!(p.placed(), 1);
            for d in [Dimension::Cpu, Dimension::Memory, Dimension::Gpu] {
                assert_eq!(
                    p.unplaced_reasons.get(&NotPlaced::Insufficient(d)),
                    Some(&1),
                    "{d}: {:?}",
                    p.unplaced_reasons
                );
            }
        }
    }

    fn node(name: &str, capacity: Resources, gpus: u8, model: Option<&str>) -> TraceNode {
        TraceNode {
            name: name.into(),
            capacity,
            gpus,
            gpu_model: model.map(str::to_owned),
        }
    }

    fn reason(hosts: &Hosts, pod: TracePod) -> Option<NotPlaced> {
        let p = pack(hosts, &[pod], PackPolicy::Twine);
        assert!(p.unplaced_reasons.values().sum::<usize>() <= 1);
        p.unplaced_reasons.keys().next().copied()
    }

    /// Regression: a CPU-only pod too big for every shape, but in different dimensions on
    /// different shapes, was reported as "insufficient gpu".
    #[test]
    fn a_cpu_only_pod_is_never_short_of_gpu() {
        let hosts = Hosts::Listed(vec![
            node("cpu-rich", Resources::new(4000, 1000), 8, None),
            node("mem-rich", Resources::new(1000, 4000), 8, None),
        ]);
        assert_eq!(
            reason(&hosts, pod(3000, 3000, GpuDemand::None)),
            Some(NotPlaced::Insufficient(Dimension::Memory)),
            "the first shape misses in memory alone"
        );
        let mut extra = pod(1, 1, GpuDemand::None);
        extra.demand.resources.extra[1] = 5;
        assert_eq!(
            reason(&hosts, extra),
            Some(NotPlaced::Insufficient(Dimension::Extra(1)))
        );
    }

    /// Each dimension is named when it is the one that fails on the best candidate shape.
    #[test]
    fn the_failing_dimension_is_named() {
        let mut with_extra = Resources::new(1000, 1000);
        with_extra.extra[2] = 10;
        let hosts = Hosts::Listed(vec![
            node("a", Resources::new(1000, 1000), 0, Some("P100")),
            node("b", with_extra, 2, Some("T4")),
        ]);
        let with = |cpu, mem, extra: u64, gpu, spec: &[&str]| {
            let mut p = pod(cpu, mem, gpu);
            p.demand.resources.extra[2] = extra;
            p.gpu_spec = spec.iter().map(|s| (*s).to_owned()).collect();
            p
        };
        for (p, want) in [
            (
                with(2000, 1, 0, GpuDemand::None, &[]),
                NotPlaced::Insufficient(Dimension::Cpu),
            ),
            (
                with(1, 2000, 0, GpuDemand::None, &[]),
                NotPlaced::Insufficient(Dimension::Memory),
            ),
            (
                with(1, 1, 11, GpuDemand::None, &[]),
                NotPlaced::Insufficient(Dimension::Extra(2)),
            ),
            (
                with(1, 1, 0, GpuDemand::Whole(3), &[]),
                NotPlaced::Insufficient(Dimension::Gpu),
            ),
            // b misses only the GPUs; a misses GPUs and the extra.
            (
                with(1, 1, 5, GpuDemand::Whole(3), &[]),
                NotPlaced::Insufficient(Dimension::Gpu),
            ),
            // Only b has the model; it is short of CPU, not of GPUs.
            (
                with(2000, 1, 0, GpuDemand::Whole(1), &["T4"]),
                NotPlaced::Insufficient(Dimension::Cpu),
            ),
            (
                with(1, 1, 0, GpuDemand::Whole(1), &["V100"]),
                NotPlaced::WrongGpuModel,
            ),
        ] {
            assert_eq!(reason(&hosts, p.clone()), Some(want), "{p:?}");
        }
        assert_eq!(
            reason(&hosts, with(1, 1, 10, GpuDemand::Whole(2), &[])),
            None
        );
    }

    #[test]
    fn no_bound_where_no_host_can_hold_the_pods() {
        let hosts = Hosts::Identical {
            capacity: Resources::new(1000, 1000),
            gpus: 0,
            gpu_model: None,
        };
        let (small, gpu) = (pod(1, 1, GpuDemand::None), pod(1, 1, GpuDemand::Whole(1)));
        assert_eq!(lower_bound(&hosts, &[&small, &small]), Some(1));
        assert_eq!(lower_bound(&hosts, &[&small, &gpu]), None);
        let listed = Hosts::Listed(vec![node("n", Resources::new(1000, 1000), 0, None)]);
        let big = pod(600, 1, GpuDemand::None);
        assert_eq!(lower_bound(&listed, &[&big]), Some(1));
        assert_eq!(lower_bound(&listed, &[&big, &big]), None);
    }

    /// Listed nodes run out: the pods that found no node are reported, and packing ends.
    #[test]
    fn used_up_nodes_leave_pods_unplaced() {
        let hosts = Hosts::Listed(vec![node("only", Resources::new(1000, 1000), 0, None)]);
        let pods: Vec<TracePod> = (0..3).map(|_| pod(600, 1, GpuDemand::None)).collect();
        for policy in PackPolicy::all() {
            let p = pack(&hosts, &pods, policy);
            assert_eq!(p.placed(), 1, "{}", policy.name());
            assert_eq!(p.unplaced_reasons.get(&NotPlaced::NoNodeLeft), Some(&2));
        }
    }

    #[test]
    fn listed_nodes_open_largest_first_and_honour_gpu_spec() {
        let node =
            |name: &str, cpu, gpus, model| node(name, Resources::new(cpu, 1000), gpus, model);
        let hosts = Hosts::Listed(vec![
            node("small", 1000, 0, None),
            node("big", 4000, 2, Some("T4")),
            node("v100", 2000, 2, Some("V100")),
        ]);
        let mut want_v100 = pod(100, 10, GpuDemand::Whole(1));
        want_v100.gpu_spec = vec!["V100".into()];
        let pods = vec![pod(3000, 10, GpuDemand::None), want_v100];
        let p = pack(&hosts, &pods, PackPolicy::Decreasing(Policy::FirstFit));
        assert_eq!(
            p.placements[0].as_ref().map(|p| p.host),
            Some(1),
            "the big node opens first"
        );
        assert_eq!(
            p.placements[1].as_ref().map(|p| p.host),
            Some(2),
            "only the V100 node is allowed"
        );
    }
}
