//! Hosts being filled, the shapes they come in, and opening new ones: the bookkeeping
//! both the classic heuristics and twine's policy stand on. Every change to a bin is
//! checked; a bookkeeping slip is a [`PackError`], never a quietly wrong packing.

use super::{Dimension, Hosts, NotPlaced, PackError};
use crate::resources::{
    DIMS, Demand, GPU_MILLI, GpuDemand, GpuDevices, GpuGrant, Resources, dims, fractions,
};
use crate::score::HostFit;
use crate::trace::TracePod;

/// One host being filled.
#[derive(Debug, Clone)]
pub(super) struct Bin {
    /// Index of the host: into the node list, or the n-th identical host opened.
    pub(super) node: usize,
    pub(super) capacity: Resources,
    pub(super) free: Resources,
    pub(super) gpus: GpuDevices,
    pub(super) gpu_capacity_milli: u64,
    /// `(task index, grant)` of what is on the bin.
    pub(super) members: Vec<(usize, GpuGrant)>,
}

impl Bin {
    pub(super) fn new(node: usize, capacity: Resources, gpus: u8) -> Bin {
        Bin {
            node,
            capacity,
            free: capacity,
            gpus: GpuDevices::new(gpus),
            gpu_capacity_milli: u64::from(gpus) * u64::from(GPU_MILLI),
            members: Vec::new(),
        }
    }

    pub(super) fn fits(&self, demand: &Demand) -> bool {
        demand.resources.fits_in(&self.free) && self.gpus.fits(demand.gpu)
    }

    pub(super) fn fit<'a>(&'a self, demand: &'a Demand) -> HostFit<'a> {
        HostFit {
            capacity: &self.capacity,
            free: &self.free,
            gpu_capacity_milli: self.gpu_capacity_milli,
            gpu_free_milli: self.gpus.free_milli(),
            demand,
        }
    }

    /// Places task `index`; an error if it does not fit (callers choose bins it fits).
    pub(super) fn put(&mut self, index: usize, demand: &Demand) -> Result<(), PackError> {
        let no_room = || PackError::NoRoom {
            host: self.node,
            pod: index,
        };
        let free = self
            .free
            .checked_sub(&demand.resources)
            .ok_or_else(no_room)?;
        let grant = self.gpus.take(demand.gpu).ok_or_else(no_room)?;
        self.free = free;
        self.members.push((index, grant));
        Ok(())
    }

    /// Removes the member at `position` and gives back what it held; returns its task
    /// index. On an error the bin is unchanged.
    pub(super) fn remove_at(
        &mut self,
        position: usize,
        pods: &[TracePod],
    ) -> Result<usize, PackError> {
        let (index, grant) = self.members.get(position).ok_or(PackError::NoMember {
            host: self.node,
            position,
        })?;
        let index = *index;
        let free = self
            .free
            .checked_add(&pods[index].demand.resources)
            .filter(|f| f.fits_in(&self.capacity))
            .ok_or(PackError::GiveBack {
                host: self.node,
                pod: index,
            })?;
        self.gpus
            .give_back(grant)
            .map_err(|device| PackError::GiveBackGpu {
                host: self.node,
                pod: index,
                device,
            })?;
        self.members.swap_remove(position);
        self.free = free;
        Ok(index)
    }

    /// Every dimension of the bin's capacity: CPU, memory, extras, GPU milli.
    pub(super) fn capacity_dims(&self) -> [u64; DIMS] {
        dims(&self.capacity, self.gpu_capacity_milli)
    }

    /// Free capacity per dimension as fractions of this bin's capacity (0 where it has none).
    pub(super) fn residual(&self) -> [f64; DIMS] {
        fractions(
            &dims(&self.free, self.gpus.free_milli()),
            &self.capacity_dims(),
        )
    }

    /// A demand as fractions of this bin's capacity.
    pub(super) fn normalize(&self, demand: &Demand) -> [f64; DIMS] {
        fractions(
            &dims(&demand.resources, demand.gpu.milli()),
            &self.capacity_dims(),
        )
    }

    /// How well `demand` fills this bin's hole: minus the squared L2 distance
    /// between residual and demand (higher is better).
    pub(super) fn l2_fit(&self, demand: &Demand) -> f64 {
        let (r, d) = (self.residual(), self.normalize(demand));
        -r.iter().zip(&d).map(|(r, d)| (r - d).powi(2)).sum::<f64>()
    }
}

/// A node the pack may open: its shape and GPU model.
#[derive(Debug, Clone)]
pub(super) struct NodeShape {
    pub(super) capacity: Resources,
    pub(super) gpus: u8,
    pub(super) gpu_model: Option<String>,
}

impl NodeShape {
    /// The shapes of `hosts`: the one identical shape, or one per listed node.
    pub(super) fn of(hosts: &Hosts) -> Vec<NodeShape> {
        match hosts {
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

    /// Whether a pod's `gpu_spec` accepts this shape's model; model-less shapes accept all.
    fn accepts_model(&self, pod: &TracePod) -> bool {
        pod.gpu_spec.is_empty()
            || match &self.gpu_model {
                None => true,
                Some(model) => pod.gpu_spec.iter().any(|m| m == model),
            }
    }

    /// The dimensions in which `demand` exceeds an empty host of this shape, in report order.
    fn too_small_in(&self, demand: &Demand) -> Vec<Dimension> {
        let mut short: Vec<Dimension> = (0..2 + crate::resources::MAX_EXTRA)
            .filter(|&k| demand.resources.dims()[k] > self.capacity.dims()[k])
            .map(Dimension::of_resource)
            .collect();
        if !GpuDevices::new(self.gpus).fits(demand.gpu) {
            short.push(Dimension::Gpu);
        }
        short
    }
}

/// Whether `pod` fits on `bin` now, GPU model included.
pub(super) fn accepts(bin: &Bin, shapes: &[NodeShape], pod: &TracePod) -> bool {
    let shape = if shapes.len() == 1 {
        &shapes[0]
    } else {
        &shapes[bin.node]
    };
    bin.fits(&pod.demand) && shape.accepts_model(pod)
}

/// Why a pod fits no empty node at all, or `None` if some node can take it. The
/// reason names the first dimension that fails on the best candidate: of the shapes
/// whose GPU model the pod accepts, the one it misses in the fewest dimensions
/// (the first such on a tie).
pub(super) fn unplaceable(pod: &TracePod, shapes: &[NodeShape]) -> Option<NotPlaced> {
    let mut best: Option<Vec<Dimension>> = None;
    for shape in shapes.iter().filter(|s| s.accepts_model(pod)) {
        let short = shape.too_small_in(&pod.demand);
        if short.is_empty() {
            return None;
        }
        if best.as_ref().is_none_or(|b| short.len() < b.len()) {
            best = Some(short);
        }
    }
    Some(match best {
        None => NotPlaced::WrongGpuModel,
        Some(short) => NotPlaced::Insufficient(short[0]),
    })
}

/// The normalized size used to order tasks largest first: sum of demand over the
/// reference capacity (the largest node in each dimension).
pub(super) fn size(demand: &Demand, reference: &Bin) -> f64 {
    reference.normalize(demand).iter().sum()
}

/// A bin with the largest capacity of any node in each dimension.
pub(super) fn reference_bin(shapes: &[NodeShape]) -> Bin {
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
    Bin::new(0, cap, shapes.iter().fold(0, |g, s| g.max(s.gpus)))
}

/// The item with the highest score; the first wins ties.
pub(super) fn best_by_score<T>(scored: impl Iterator<Item = (T, f64)>) -> Option<T> {
    scored
        .fold(None, |best: Option<(T, f64)>, (item, s)| match best {
            Some((_, b)) if b >= s => best,
            _ => Some((item, s)),
        })
        .map(|(item, _)| item)
}

/// Opens new hosts: another identical one, or the largest unused listed node that fits.
pub(super) struct Opener<'a> {
    hosts: &'a Hosts,
    shapes: &'a [NodeShape],
    /// Listed nodes not yet opened, largest first.
    unused: Vec<usize>,
    opened: usize,
}

impl<'a> Opener<'a> {
    pub(super) fn new(hosts: &'a Hosts, shapes: &'a [NodeShape], reference: &Bin) -> Opener<'a> {
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
                        gpu: GpuDemand::None,
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

    /// Opens the next host that `accepts` while empty, or `None` if no host does.
    pub(super) fn open_where(&mut self, accepts: impl Fn(&Bin) -> bool) -> Option<Bin> {
        match self.hosts {
            Hosts::Identical { capacity, gpus, .. } => {
                let bin = Bin::new(self.opened, *capacity, *gpus);
                if !accepts(&bin) {
                    return None;
                }
                self.opened += 1;
                Some(bin)
            }
            Hosts::Listed(_) => {
                let k = self.unused.iter().position(|&n| {
                    let s = &self.shapes[n];
                    accepts(&Bin::new(n, s.capacity, s.gpus))
                })?;
                let n = self.unused.remove(k);
                let s = &self.shapes[n];
                Some(Bin::new(n, s.capacity, s.gpus))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pod(cpu: u64, gpu: GpuDemand) -> TracePod {
        crate::pack::test_pod("p", cpu, 1, gpu)
    }

    /// A bookkeeping slip is an error naming host and pod, never a clamped free vector.
    #[test]
    fn slips_are_errors() {
        let pods = [pod(600, GpuDemand::Shared(600)), pod(600, GpuDemand::None)];
        let mut bin = Bin::new(7, Resources::new(1000, 10), 1);
        bin.put(0, &pods[0].demand).unwrap();
        assert_eq!(
            bin.put(1, &pods[1].demand),
            Err(PackError::NoRoom { host: 7, pod: 1 })
        );
        assert_eq!(
            bin.remove_at(1, &pods),
            Err(PackError::NoMember {
                host: 7,
                position: 1
            })
        );
        // The member's record says pod 1, bigger than what the bin lost.
        bin.members[0].0 = 1;
        bin.free.cpu_milli = 500;
        assert_eq!(
            bin.remove_at(0, &pods),
            Err(PackError::GiveBack { host: 7, pod: 1 })
        );
        bin.members[0].0 = 0;
        bin.free.cpu_milli = 400;
        // The grant says 700 milli, but the device lost 600.
        bin.members[0].1.devices[0].1 = 700;
        assert_eq!(
            bin.remove_at(0, &pods),
            Err(PackError::GiveBackGpu {
                host: 7,
                pod: 0,
                device: 0
            })
        );
        bin.members[0].1.devices[0].1 = 600;
        assert_eq!(bin.remove_at(0, &pods), Ok(0));
        assert_eq!((bin.free, bin.gpus.idle()), (bin.capacity, 1));
    }
}
