//! Offline packing: every task of a trace onto as few hosts as possible.
//!
//! This is Borg's cell-compaction measure of packing quality: how many hosts a
//! workload needs, against the lower bound `max over dimensions of
//! ceil(total demand / capacity)`. Hosts are either identical (a shape, as many as
//! needed) or a listed set of nodes (bigger nodes are opened first). GPUs are
//! devices throughout: a host is only chosen if the task fits on its devices.

use std::collections::BTreeMap;

use crate::resources::{Demand, GPU_MILLI, GpuDevices, GpuGrant, MAX_EXTRA, Resources};
use crate::score::{HostFit, Policy};
use crate::trace::{TraceNode, TracePod};

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
    pub gpus: GpuGrant,
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
    pub unplaced_reasons: BTreeMap<String, usize>,
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
    /// hosts into the others, with one-step swaps. See [`crate::compact`].
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
    type Err = crate::score::UnknownPolicy;

    fn from_str(s: &str) -> Result<PackPolicy, Self::Err> {
        if s == "twine" {
            return Ok(PackPolicy::Twine);
        }
        s.parse()
            .map(PackPolicy::Decreasing)
            .map_err(|_| crate::score::UnknownPolicy(s.to_owned()))
    }
}

/// One host being filled.
#[derive(Debug, Clone)]
pub(crate) struct Bin {
    pub(crate) node: usize,
    pub(crate) capacity: Resources,
    pub(crate) free: Resources,
    pub(crate) gpus: GpuDevices,
    pub(crate) gpu_capacity_milli: u64,
    pub(crate) tasks: usize,
    /// `(task index, grant)` of what is on the bin, for the passes that move tasks.
    pub(crate) members: Vec<(usize, GpuGrant)>,
}

impl Bin {
    fn new(node: usize, capacity: Resources, gpus: u8) -> Bin {
        Bin {
            node,
            capacity,
            free: capacity,
            gpus: GpuDevices::new(gpus),
            gpu_capacity_milli: u64::from(gpus) * u64::from(GPU_MILLI),
            tasks: 0,
            members: Vec::new(),
        }
    }

    pub(crate) fn fits(&self, demand: &Demand) -> bool {
        demand.resources.fits_in(&self.free) && self.gpus.fits(demand.gpu)
    }

    pub(crate) fn fit<'a>(&'a self, demand: &'a Demand) -> HostFit<'a> {
        HostFit {
            capacity: &self.capacity,
            free: &self.free,
            gpu_capacity_milli: self.gpu_capacity_milli,
            gpu_free_milli: self.gpus.free_milli(),
            demand,
        }
    }

    /// Places `demand`; the caller has checked [`Bin::fits`].
    pub(crate) fn take(&mut self, demand: &Demand) -> Option<GpuGrant> {
        let free = self.free.checked_sub(&demand.resources)?;
        let grant = self.gpus.take(demand.gpu)?;
        self.free = free;
        self.tasks += 1;
        Some(grant)
    }

    pub(crate) fn give(&mut self, demand: &Demand, grant: &GpuGrant) {
        self.free = self
            .free
            .checked_add(&demand.resources)
            .unwrap_or(self.capacity);
        self.gpus.give(grant);
        self.tasks -= 1;
    }

    /// Places task `index` and remembers it.
    pub(crate) fn put(&mut self, index: usize, demand: &Demand) -> bool {
        match self.take(demand) {
            Some(grant) => {
                self.members.push((index, grant));
                true
            }
            None => false,
        }
    }

    /// Removes the member at `position`; returns its task index.
    pub(crate) fn remove_at(&mut self, position: usize, pods: &[TracePod]) -> usize {
        let (index, grant) = self.members.swap_remove(position);
        self.give(&pods[index].demand, &grant);
        index
    }

    /// Free capacity per dimension as fractions of this bin's capacity (CPU, memory, GPU).
    /// Every dimension of the bin's capacity: CPU, memory, extras, GPU milli.
    pub(crate) fn capacity_dims(&self) -> [u64; DIMS] {
        dims(&self.capacity, self.gpu_capacity_milli)
    }

    /// Free capacity per dimension as fractions of this bin's capacity (0 where it has none).
    pub(crate) fn residual(&self) -> [f64; DIMS] {
        ratios(
            &dims(&self.free, self.gpus.free_milli()),
            &self.capacity_dims(),
        )
    }

    /// A demand as fractions of this bin's capacity.
    pub(crate) fn normalize(&self, demand: &Demand) -> [f64; DIMS] {
        ratios(
            &dims(&demand.resources, demand.gpu.milli()),
            &self.capacity_dims(),
        )
    }

    /// How well `demand` fills this bin's hole: minus the squared L2 distance
    /// between residual and demand (higher is better).
    pub(crate) fn l2_fit(&self, demand: &Demand) -> f64 {
        let (r, d) = (self.residual(), self.normalize(demand));
        -r.iter().zip(&d).map(|(r, d)| (r - d).powi(2)).sum::<f64>()
    }
}

/// Dimensions packing looks at: CPU, memory, the extras, GPU milli (as a total).
pub(crate) const DIMS: usize = 3 + MAX_EXTRA;

pub(crate) fn dims(resources: &Resources, gpu_milli: u64) -> [u64; DIMS] {
    let mut d = [0; DIMS];
    d[..2 + MAX_EXTRA].copy_from_slice(&resources.dims());
    d[DIMS - 1] = gpu_milli;
    d
}

fn ratios(amounts: &[u64; DIMS], capacity: &[u64; DIMS]) -> [f64; DIMS] {
    let mut r = [0.0; DIMS];
    for k in 0..DIMS {
        if capacity[k] > 0 {
            #[allow(clippy::cast_precision_loss)] // ratios of resource amounts
            let x = amounts[k] as f64 / capacity[k] as f64;
            r[k] = x;
        }
    }
    r
}

/// A node the pack may open: its index, shape and GPU model.
#[derive(Debug, Clone)]
pub(crate) struct NodeShape {
    pub(crate) capacity: Resources,
    pub(crate) gpus: u8,
    pub(crate) gpu_model: Option<String>,
}

impl Hosts {
    pub(crate) fn shapes(&self) -> Vec<NodeShape> {
        match self {
            Hosts::Identical {
                capacity,
                gpus,
                gpu_model,
            } => vec![NodeShape {
                capacity: *capacity,
                gpus: *gpus,
                gpu_model: gpu_model.clone(),
            }],
            Hosts::Listed(nodes) => nodes
                .iter()
                .map(|n| NodeShape {
                    capacity: n.capacity,
                    gpus: n.gpus,
                    gpu_model: n.gpu_model.clone(),
                })
                .collect(),
        }
    }
}

/// Whether a pod's `gpu_spec` accepts a node's model; model-less shapes accept all.
pub(crate) fn spec_accepts(pod: &TracePod, shape: &NodeShape) -> bool {
    pod.gpu_spec.is_empty()
        || match &shape.gpu_model {
            None => true,
            Some(model) => pod.gpu_spec.iter().any(|m| m == model),
        }
}

/// The shape of a bin: the one identical shape, or its listed node's.
pub(crate) fn shape_of<'a>(shapes: &'a [NodeShape], bin: &Bin) -> &'a NodeShape {
    if shapes.len() == 1 {
        &shapes[0]
    } else {
        &shapes[bin.node]
    }
}

/// Why a pod fits no node at all, in the words of the unplaced report.
fn reason(pod: &TracePod, shapes: &[NodeShape]) -> Option<String> {
    let empty = |s: &NodeShape| Bin::new(0, s.capacity, s.gpus);
    if shapes
        .iter()
        .any(|s| spec_accepts(pod, s) && empty(s).fits(&pod.demand))
    {
        return None;
    }
    let d = &pod.demand;
    let reason = if !shapes.iter().any(|s| spec_accepts(pod, s)) {
        "wrong GPU model"
    } else if !shapes
        .iter()
        .any(|s| d.resources.cpu_milli <= s.capacity.cpu_milli)
    {
        "insufficient cpu"
    } else if !shapes
        .iter()
        .any(|s| d.resources.memory_mib <= s.capacity.memory_mib)
    {
        "insufficient memory"
    } else {
        "insufficient gpu"
    };
    Some(reason.to_owned())
}

/// The normalized size used to order tasks largest first: sum of demand over the
/// reference capacity (the largest node in each dimension).
pub(crate) fn size(demand: &Demand, reference: &Bin) -> f64 {
    reference.normalize(demand).iter().sum()
}

/// A bin with the largest capacity of any node in each dimension.
pub(crate) fn reference_bin(shapes: &[NodeShape]) -> Bin {
    let cap = shapes.iter().fold(Resources::default(), |acc, s| {
        let mut extra = acc.extra;
        for (e, c) in extra.iter_mut().zip(&s.capacity.extra) {
            *e = (*e).max(*c);
        }
        Resources {
            cpu_milli: acc.cpu_milli.max(s.capacity.cpu_milli),
            memory_mib: acc.memory_mib.max(s.capacity.memory_mib),
            extra,
        }
    });
    Bin::new(0, cap, shapes.iter().map(|s| s.gpus).max().unwrap_or(0))
}

/// The lower bound on hosts for `pods`: for identical hosts `max_d ceil(sum_d / cap_d)`;
/// for listed nodes, per dimension the fewest nodes whose capacities (largest first) cover the sum.
pub fn lower_bound(hosts: &Hosts, pods: &[&TracePod]) -> usize {
    // Saturating: a sum that large needs more hosts than any bound we could report anyway.
    let sums = pods.iter().fold([0u64; DIMS], |mut s, p| {
        for (sum, d) in s
            .iter_mut()
            .zip(dims(&p.demand.resources, p.demand.gpu.milli()))
        {
            *sum = sum.saturating_add(d);
        }
        s
    });
    let shapes = hosts.shapes();
    let caps: Vec<[u64; DIMS]> = shapes
        .iter()
        .map(|s| dims(&s.capacity, u64::from(s.gpus) * u64::from(GPU_MILLI)))
        .collect();
    (0..DIMS)
        .map(|k| match hosts {
            Hosts::Identical { .. } => {
                let cap = caps[0][k];
                if sums[k] == 0 {
                    0
                } else if cap == 0 {
                    usize::MAX
                } else {
                    usize::try_from(sums[k].div_ceil(cap)).unwrap_or(usize::MAX)
                }
            }
            Hosts::Listed(_) => {
                let mut by_size: Vec<u64> = caps.iter().map(|c| c[k]).collect();
                by_size.sort_unstable_by(|a, b| b.cmp(a));
                let mut covered = 0u64;
                by_size
                    .iter()
                    .take_while(|c| {
                        let short = covered < sums[k];
                        covered = covered.saturating_add(**c);
                        short
                    })
                    .count()
            }
        })
        .max()
        .unwrap_or(0)
}

/// The same workload with each host's GPUs as one pool: GPU milli becomes the last
/// extra resource and no task needs a device. Published baselines (for example the
/// 1,021-1,029 hosts of first-fit-decreasing, DotProduct and L2 on the openb trace)
/// were computed this way; a pooled packing is **not** valid on real devices (eight
/// 600-milli shares "fit" in 8 x 1000 milli of pool but not on the devices), so use it
/// only to compare with such figures.
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
            demand.gpu = crate::resources::GpuDemand::None;
            TracePod {
                demand,
                ..p.clone()
            }
        })
        .collect();
    (hosts, pods)
}

/// Packs `pods` onto `hosts` with `policy`. Pure and deterministic.
pub fn pack(hosts: &Hosts, pods: &[TracePod], policy: PackPolicy) -> Packing {
    let shapes = hosts.shapes();
    let mut unplaced_reasons: BTreeMap<String, usize> = BTreeMap::new();
    let mut placeable: Vec<usize> = Vec::with_capacity(pods.len());
    for (i, pod) in pods.iter().enumerate() {
        match reason(pod, &shapes) {
            Some(r) => *unplaced_reasons.entry(r).or_default() += 1,
            None => placeable.push(i),
        }
    }
    let reference = reference_bin(&shapes);
    let mut placements: Vec<Option<Placement>> = vec![None; pods.len()];
    let mut bins: Vec<Bin> = Vec::new();
    match policy {
        PackPolicy::Decreasing(score) => {
            let mut order = placeable.clone();
            order.sort_by(|&a, &b| {
                size(&pods[b].demand, &reference)
                    .total_cmp(&size(&pods[a].demand, &reference))
                    .then(a.cmp(&b))
            });
            let mut opener = Opener::new(hosts, &shapes, &reference);
            for i in order {
                let pod = &pods[i];
                let best = bins
                    .iter()
                    .enumerate()
                    .filter(|(_, b)| b.fits(&pod.demand) && spec_accepts(pod, shape_of(&shapes, b)))
                    .map(|(j, b)| (j, score.score(&b.fit(&pod.demand))))
                    .fold(None, |best: Option<(usize, f64)>, (j, s)| match best {
                        Some((_, bs)) if bs >= s => best,
                        _ => Some((j, s)),
                    })
                    .map(|(j, _)| j);
                let j = match best {
                    Some(j) => Some(j),
                    None => opener.open(pod).map(|bin| {
                        bins.push(bin);
                        bins.len() - 1
                    }),
                };
                if !j.is_some_and(|j| bins[j].put(i, &pod.demand)) {
                    *unplaced_reasons
                        .entry("no node left".to_owned())
                        .or_default() += 1;
                }
            }
        }
        PackPolicy::Twine => {
            let mut opener = Opener::new(hosts, &shapes, &reference);
            let left_over =
                crate::compact::fill_bins(pods, &placeable, &shapes, &mut opener, &mut bins);
            if left_over > 0 {
                *unplaced_reasons
                    .entry("no node left".to_owned())
                    .or_default() += left_over;
            }
            crate::compact::compact(&mut bins, pods, &shapes);
        }
    }
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
    Packing {
        hosts_used: bins.iter().filter(|b| b.tasks > 0).count(),
        lower_bound: lower_bound(hosts, &placed),
        placements,
        unplaced_reasons,
    }
}

/// Opens new hosts: another identical one, or the largest unused listed node that fits.
pub(crate) struct Opener<'a> {
    hosts: &'a Hosts,
    shapes: &'a [NodeShape],
    /// Listed nodes not yet opened, largest first.
    unused: Vec<usize>,
    opened: usize,
}

impl<'a> Opener<'a> {
    pub(crate) fn new(hosts: &'a Hosts, shapes: &'a [NodeShape], reference: &Bin) -> Opener<'a> {
        let mut unused: Vec<usize> = (0..shapes.len()).collect();
        if matches!(hosts, Hosts::Listed(_)) {
            let bins: Vec<Bin> = shapes
                .iter()
                .map(|s| Bin::new(0, s.capacity, s.gpus))
                .collect();
            let cap = |b: &Bin| {
                size(
                    &Demand {
                        resources: b.capacity,
                        gpu: crate::resources::GpuDemand::None,
                    },
                    reference,
                ) + if reference.gpu_capacity_milli == 0 {
                    0.0
                } else {
                    #[allow(clippy::cast_precision_loss)]
                    let g = b.gpu_capacity_milli as f64 / reference.gpu_capacity_milli as f64;
                    g
                }
            };
            unused.sort_by(|&a, &b| cap(&bins[b]).total_cmp(&cap(&bins[a])).then(a.cmp(&b)));
        }
        Opener {
            hosts,
            shapes,
            unused,
            opened: 0,
        }
    }

    /// Opens the next host that `accepts` (identical hosts always do).
    pub(crate) fn open_where(&mut self, accepts: impl Fn(&Bin, usize) -> bool) -> Option<Bin> {
        match self.hosts {
            Hosts::Identical { capacity, gpus, .. } => {
                self.opened += 1;
                Some(Bin::new(self.opened - 1, *capacity, *gpus))
            }
            Hosts::Listed(_) => {
                let k = self.unused.iter().position(|&n| {
                    let s = &self.shapes[n];
                    accepts(&Bin::new(n, s.capacity, s.gpus), n)
                })?;
                let n = self.unused.remove(k);
                let s = &self.shapes[n];
                Some(Bin::new(n, s.capacity, s.gpus))
            }
        }
    }

    /// Opens the next host `pod` fits on, GPU model included.
    pub(crate) fn open(&mut self, pod: &TracePod) -> Option<Bin> {
        let shapes = self.shapes;
        self.open_where(|bin, n| spec_accepts(pod, &shapes[n]) && bin.fits(&pod.demand))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::resources::GpuDemand;

    fn pod(cpu: u64, mem: u64, gpu: GpuDemand) -> TracePod {
        TracePod {
            name: String::new(),
            demand: Demand {
                resources: Resources::new(cpu, mem),
                gpu,
            },
            gpu_spec: Vec::new(),
            creation_time: None,
            deletion_time: None,
        }
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
        let p = pack(&hosts, &pods, PackPolicy::Decreasing(Policy::BestFit));
        assert_eq!(p.placed(), 1);
        assert_eq!(p.unplaced_reasons.get("insufficient cpu"), Some(&1));
        assert_eq!(p.unplaced_reasons.get("insufficient memory"), Some(&1));
        assert_eq!(p.unplaced_reasons.get("insufficient gpu"), Some(&1));
    }

    #[test]
    fn listed_nodes_open_largest_first_and_honour_gpu_spec() {
        let node = |name: &str, cpu, gpus, model: Option<&str>| TraceNode {
            name: name.into(),
            capacity: Resources::new(cpu, 1000),
            gpus,
            gpu_model: model.map(str::to_owned),
        };
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
