//! The lower bound on hosts from per-dimension sums, for callers that keep the sums
//! as tasks come and go (a replay) instead of rescanning every task.
//!
//! [`BoundTable`] sorts and sums the capacities once; [`DemandSums`] is a running total
//! a caller adds to and takes from; [`BoundTable::lower_bound`] then answers in
//! `O(dimensions · log nodes)`. [`lower_bound`](super::lower_bound) is the same table
//! over the sums of a slice of pods.

use crate::resources::{DIMS, Demand, GPU_MILLI, dims};

use super::{Dimension, Hosts, NodeShape};

/// The dimension at `index` of the packing dimensions (CPU, memory, extras, GPU milli).
fn dimension(index: usize) -> Dimension {
    if index == DIMS - 1 {
        Dimension::Gpu
    } else {
        Dimension::of_resource(index)
    }
}

/// The index of `d` among the packing dimensions, if it is one.
fn index_of(d: Dimension) -> Option<usize> {
    match d {
        Dimension::Cpu => Some(0),
        Dimension::Memory => Some(1),
        Dimension::Extra(k) if k < DIMS - 3 => Some(2 + k),
        Dimension::Gpu => Some(DIMS - 1),
        Dimension::Extra(_) => None,
    }
}

/// Running totals of demand per dimension (CPU, memory, extras, GPU milli as a pool),
/// in `u128` so that no number of tasks that fits in memory overflows them.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct DemandSums {
    sums: [u128; DIMS],
}

/// [`DemandSums::remove`] would take more than the sums hold: the caller removed a
/// demand it never added.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("removing a demand takes the {dimension} sum below zero (it was never added)")]
#[non_exhaustive]
pub struct SumUnderflow {
    /// The first dimension that would go below zero.
    pub dimension: Dimension,
}

impl DemandSums {
    /// Adds one task's demand.
    pub fn add(&mut self, demand: &Demand) {
        for (s, d) in self
            .sums
            .iter_mut()
            .zip(dims(&demand.resources, demand.gpu.milli()))
        {
            *s += u128::from(d);
        }
    }

    /// Takes one task's demand away; on an error nothing changed.
    pub fn remove(&mut self, demand: &Demand) -> Result<(), SumUnderflow> {
        let d = dims(&demand.resources, demand.gpu.milli());
        let mut next = self.sums;
        for (k, (s, d)) in next.iter_mut().zip(d).enumerate() {
            *s = s.checked_sub(u128::from(d)).ok_or(SumUnderflow {
                dimension: dimension(k),
            })?;
        }
        self.sums = next;
        Ok(())
    }

    /// The total in dimension `d` (0 for an extra index beyond the vector).
    pub fn amount(&self, d: Dimension) -> u128 {
        index_of(d).map_or(0, |k| self.sums[k])
    }
}

/// The hosts' capacities, sorted and summed once per dimension.
#[derive(Debug, Clone)]
pub struct BoundTable {
    fleet: Fleet,
}

#[derive(Debug, Clone)]
enum Fleet {
    /// One shape, as many hosts as needed.
    Identical([u64; DIMS]),
    /// Per dimension, `covered[k][i]` is the capacity of the `i + 1` largest nodes.
    Listed(Box<[Vec<u128>; DIMS]>),
}

impl BoundTable {
    /// The table for `hosts`: `O(dimensions · nodes · log nodes)` once.
    pub fn new(hosts: &Hosts) -> BoundTable {
        let caps: Vec<[u64; DIMS]> = NodeShape::of(hosts)
            .iter()
            .map(|s| dims(&s.capacity, u64::from(s.gpus) * u64::from(GPU_MILLI)))
            .collect();
        let fleet = match hosts {
            Hosts::Identical { .. } => Fleet::Identical(caps.first().copied().unwrap_or_default()),
            Hosts::Listed(_) => Fleet::Listed(Box::new(std::array::from_fn(|k| {
                let mut by_size: Vec<u64> = caps.iter().map(|c| c[k]).collect();
                by_size.sort_unstable_by(|a, b| b.cmp(a));
                by_size
                    .iter()
                    .scan(0u128, |covered, &c| {
                        *covered += u128::from(c);
                        Some(*covered)
                    })
                    .collect()
            }))),
        };
        BoundTable { fleet }
    }

    /// The fewest hosts that can hold `sums`, dimension by dimension, as
    /// [`lower_bound`](super::lower_bound) computes it for the pods the sums add up;
    /// `None` when no number of these hosts holds them.
    pub fn lower_bound(&self, sums: &DemandSums) -> Option<usize> {
        let bound = |k: usize| -> Option<usize> {
            let sum = sums.sums[k];
            if sum == 0 {
                return Some(0);
            }
            match &self.fleet {
                Fleet::Identical(cap) => {
                    let cap = u128::from(cap[k]);
                    if cap == 0 {
                        return None;
                    }
                    usize::try_from(sum.div_ceil(cap)).ok()
                }
                Fleet::Listed(covered) => {
                    let covered = &covered[k];
                    let short = covered.partition_point(|&c| c < sum);
                    (short < covered.len()).then_some(short + 1)
                }
            }
        };
        (0..DIMS).try_fold(0, |worst, k| Some(worst.max(bound(k)?)))
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::super::test_pod;
    use super::*;
    use crate::resources::{GpuDemand, Resources};
    use crate::trace::{TraceNode, TracePod};

    fn gpu(kind: u8, amount: u16) -> GpuDemand {
        match kind % 3 {
            0 => GpuDemand::None,
            1 => GpuDemand::Shared(amount % 999 + 1),
            _ => GpuDemand::Whole(u8::try_from(amount % 4 + 1).unwrap_or(1)),
        }
    }

    fn hosts(listed: bool, nodes: &[(u64, u64, u8)]) -> Hosts {
        if listed {
            Hosts::Listed(
                nodes
                    .iter()
                    .enumerate()
                    .map(|(i, &(c, m, g))| TraceNode {
                        name: format!("n{i}"),
                        capacity: Resources::new(c, m),
                        gpus: g,
                        gpu_model: None,
                    })
                    .collect(),
            )
        } else {
            let (c, m, g) = nodes[0];
            Hosts::Identical {
                capacity: Resources::new(c, m),
                gpus: g,
                gpu_model: None,
            }
        }
    }

    /// The per-dimension bound computed from the pods themselves, as `lower_bound` did
    /// before it stood on the table: the reference the table is checked against.
    fn from_scratch(hosts: &Hosts, pods: &[&TracePod]) -> Option<usize> {
        // u128: a sum of u64 amounts over any number of pods that fits in memory cannot overflow.
        let sums = pods.iter().fold([0u128; DIMS], |mut s, p| {
            for (sum, d) in s
                .iter_mut()
                .zip(dims(&p.demand.resources, p.demand.gpu.milli()))
            {
                *sum += u128::from(d);
            }
            s
        });
        let shapes = NodeShape::of(hosts);
        let caps: Vec<[u64; DIMS]> = shapes
            .iter()
            .map(|s| dims(&s.capacity, u64::from(s.gpus) * u64::from(GPU_MILLI)))
            .collect();
        let bound = |k: usize| -> Option<usize> {
            if sums[k] == 0 {
                return Some(0);
            }
            match hosts {
                Hosts::Identical { .. } => {
                    let cap = u128::from(caps[0][k]);
                    if cap == 0 {
                        return None;
                    }
                    usize::try_from(sums[k].div_ceil(cap)).ok()
                }
                Hosts::Listed(_) => {
                    let mut by_size: Vec<u64> = caps.iter().map(|c| c[k]).collect();
                    by_size.sort_unstable_by(|a, b| b.cmp(a));
                    let mut covered = 0u128;
                    by_size
                        .iter()
                        .position(|&c| {
                            covered += u128::from(c);
                            covered >= sums[k]
                        })
                        .map(|last| last + 1)
                }
            }
        };
        (0..DIMS).try_fold(0, |worst, k| Some(worst.max(bound(k)?)))
    }

    proptest! {
        /// Adding and removing pods in any order, the table's bound of the running sums
        /// is the bound of the pods still there, recomputed from scratch.
        #[test]
        fn running_sums_give_the_bound_from_scratch(
            listed in any::<bool>(),
            nodes in prop::collection::vec((0u64..50_000, 0u64..50_000, 0u8..4), 1..12),
            pods in prop::collection::vec((0u64..20_000, 0u64..20_000, any::<u8>(), any::<u16>()), 0..40),
            removals in prop::collection::vec(any::<prop::sample::Index>(), 0..40),
        ) {
            let hosts = hosts(listed, &nodes);
            let table = BoundTable::new(&hosts);
            let mut present: Vec<TracePod> = pods
                .iter()
                .map(|&(c, m, k, a)| test_pod("", c, m, gpu(k, a)))
                .collect();
            let mut sums = DemandSums::default();
            for p in &present {
                sums.add(&p.demand);
            }
            let refs: Vec<&TracePod> = present.iter().collect();
            prop_assert_eq!(table.lower_bound(&sums), from_scratch(&hosts, &refs));
            for r in removals {
                if present.is_empty() {
                    break;
                }
                let p = present.swap_remove(r.index(present.len()));
                sums.remove(&p.demand).unwrap();
                let refs: Vec<&TracePod> = present.iter().collect();
                prop_assert_eq!(table.lower_bound(&sums), from_scratch(&hosts, &refs));
            }
        }
    }

    #[test]
    fn removing_what_was_never_added_is_an_error_and_changes_nothing() {
        let mut sums = DemandSums::default();
        let small = test_pod("", 10, 10, GpuDemand::None).demand;
        let with_gpu = test_pod("", 1, 1, GpuDemand::Whole(1)).demand;
        sums.add(&small);
        assert_eq!(
            sums.remove(&with_gpu),
            Err(SumUnderflow {
                dimension: Dimension::Gpu
            })
        );
        assert_eq!(sums.amount(Dimension::Cpu), 10);
        sums.remove(&small).unwrap();
        assert_eq!(sums, DemandSums::default());
    }
}
