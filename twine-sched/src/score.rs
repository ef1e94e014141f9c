//! Scoring a host for a task: the classic bin-packing heuristics, side by side.
//!
//! Every scorer sees the host's capacity and what is free on it *before* the task,
//! normalized per dimension by capacity (CPU, memory, GPU milli and any extra the
//! host has), and returns a score where **higher is better**. The allocator only
//! scores hosts where the task fits.

use std::fmt;
use std::str::FromStr;

use crate::resources::{DIMS, Demand, Resources, dims, fractions};

/// A host as a scorer sees it.
#[derive(Debug, Clone, Copy)]
pub struct HostFit<'a> {
    /// Total capacity.
    pub capacity: &'a Resources,
    /// Free before placing the task.
    pub free: &'a Resources,
    /// GPU capacity in milli (devices x 1000).
    pub gpu_capacity_milli: u64,
    /// Free GPU milli over all devices.
    pub gpu_free_milli: u64,
    /// The task's demand.
    pub demand: &'a Demand,
}

/// `(demand, free)` per dimension the host has, each as a fraction of capacity.
fn normalized(fit: &HostFit<'_>) -> ([f64; DIMS], [f64; DIMS], usize) {
    let cap = dims(fit.capacity, fit.gpu_capacity_milli);
    let demand = fractions(&dims(&fit.demand.resources, fit.demand.gpu.milli()), &cap);
    let free = fractions(&dims(fit.free, fit.gpu_free_milli), &cap);
    let mut d = [0.0; DIMS];
    let mut f = [0.0; DIMS];
    let mut n = 0;
    // Only the dimensions the host has, so that means and spreads ignore the others.
    for k in (0..DIMS).filter(|&k| cap[k] > 0) {
        d[n] = demand[k];
        f[n] = free[k];
        n += 1;
    }
    (d, f, n)
}

/// A placement policy: how hosts where a task fits are ranked.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Policy {
    /// The first host in index order (first fit).
    FirstFit,
    /// The least capacity left over after placing, summed over dimensions (best fit).
    BestFit,
    /// Cosine of demand and free vectors (Panigrahy et al.'s DotProduct, normalized).
    DotProduct,
    /// Smallest L2 distance between free and demand (Panigrahy et al.'s norm-based greedy).
    L2,
    /// Borg's hybrid: least stranded capacity (the spread between the most and least
    /// free dimension after placing), best fit as tie-break.
    Stranded,
    /// kube-scheduler's `MostAllocated`: highest mean utilization after placing.
    MostAllocated,
    /// Nomad's `ScoreFitBinPack` (BestFit v3): `20 - (10^freeCpu + 10^freeMem)` after placing.
    NomadBinpack,
    /// Tetris alignment: the raw dot product of demand and free, both normalized by capacity.
    Tetris,
    /// Spread (kube-scheduler's `LeastAllocated`): the most capacity left after placing.
    Spread,
}

impl Policy {
    /// Every policy, for side-by-side runs.
    pub const ALL: [Policy; 9] = [
        Policy::FirstFit,
        Policy::BestFit,
        Policy::DotProduct,
        Policy::L2,
        Policy::Stranded,
        Policy::MostAllocated,
        Policy::NomadBinpack,
        Policy::Tetris,
        Policy::Spread,
    ];

    /// The policy's name on the command line.
    pub fn name(self) -> &'static str {
        match self {
            Policy::FirstFit => "first-fit",
            Policy::BestFit => "best-fit",
            Policy::DotProduct => "dot-product",
            Policy::L2 => "l2",
            Policy::Stranded => "stranded",
            Policy::MostAllocated => "most-allocated",
            Policy::NomadBinpack => "nomad-binpack",
            Policy::Tetris => "tetris",
            Policy::Spread => "spread",
        }
    }

    /// Scores a host where the task fits; higher is better.
    pub fn score(self, fit: &HostFit<'_>) -> f64 {
        let (d, f, n) = normalized(fit);
        let (d, f) = (&d[..n], &f[..n]);
        let left = || d.iter().zip(f).map(|(d, f)| f - d);
        match self {
            Policy::FirstFit => 0.0,
            Policy::BestFit => -left().sum::<f64>(),
            Policy::DotProduct => {
                let dot: f64 = d.iter().zip(f).map(|(d, f)| d * f).sum();
                let norm = d.iter().map(|x| x * x).sum::<f64>().sqrt()
                    * f.iter().map(|x| x * x).sum::<f64>().sqrt();
                if norm > 0.0 { dot / norm } else { 0.0 }
            }
            Policy::L2 => -left().map(|x| x * x).sum::<f64>(),
            Policy::Stranded => {
                let (lo, hi) =
                    left().fold((f64::MAX, f64::MIN), |(lo, hi), x| (lo.min(x), hi.max(x)));
                let stranded = if n > 0 { hi - lo } else { 0.0 };
                -(stranded + 0.01 * left().sum::<f64>())
            }
            Policy::MostAllocated => {
                #[allow(clippy::cast_precision_loss)]
                let mean = left().map(|x| 1.0 - x).sum::<f64>() / n.max(1) as f64;
                mean
            }
            Policy::NomadBinpack => {
                // CPU and memory only, as Nomad does.
                let cpu = f.first().zip(d.first()).map_or(0.0, |(f, d)| f - d);
                let mem = f.get(1).zip(d.get(1)).map_or(0.0, |(f, d)| f - d);
                20.0 - (10f64.powf(cpu) + 10f64.powf(mem))
            }
            Policy::Tetris => d.iter().zip(f).map(|(d, f)| d * f).sum(),
            Policy::Spread => left().sum(),
        }
    }
}

impl fmt::Display for Policy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// A policy name that is not one of the known ones.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown policy {name:?} (use one of {})", known.join(", "))]
#[non_exhaustive]
pub struct UnknownPolicy {
    /// The name given.
    pub name: String,
    /// The names that would have been accepted.
    pub known: Vec<&'static str>,
}

impl UnknownPolicy {
    /// `name` is none of `known`.
    pub fn new(name: &str, known: impl IntoIterator<Item = &'static str>) -> UnknownPolicy {
        UnknownPolicy {
            name: name.to_owned(),
            known: known.into_iter().collect(),
        }
    }
}

impl FromStr for Policy {
    type Err = UnknownPolicy;

    fn from_str(s: &str) -> Result<Policy, UnknownPolicy> {
        Policy::ALL
            .into_iter()
            .find(|p| p.name() == s)
            .ok_or_else(|| UnknownPolicy::new(s, Policy::ALL.map(Policy::name)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::resources::GpuDemand;

    fn fit<'a>(cap: &'a Resources, free: &'a Resources, demand: &'a Demand) -> HostFit<'a> {
        HostFit {
            capacity: cap,
            free,
            gpu_capacity_milli: 0,
            gpu_free_milli: 0,
            demand,
        }
    }

    #[test]
    fn packers_prefer_the_fuller_host_and_spread_the_emptier() {
        let cap = Resources::new(10_000, 10_000);
        let full = Resources::new(2_000, 2_000);
        let empty = Resources::new(10_000, 10_000);
        let demand = Demand {
            resources: Resources::new(1_000, 1_000),
            gpu: GpuDemand::None,
        };
        for policy in [
            Policy::BestFit,
            Policy::L2,
            Policy::MostAllocated,
            Policy::NomadBinpack,
            Policy::Stranded,
        ] {
            assert!(
                policy.score(&fit(&cap, &full, &demand))
                    > policy.score(&fit(&cap, &empty, &demand)),
                "{policy}"
            );
        }
        assert!(
            Policy::Spread.score(&fit(&cap, &empty, &demand))
                > Policy::Spread.score(&fit(&cap, &full, &demand))
        );
    }

    #[test]
    fn dot_product_prefers_complementary_hosts() {
        let cap = Resources::new(10_000, 10_000);
        let cpu_free = Resources::new(9_000, 1_000);
        let mem_free = Resources::new(1_000, 9_000);
        let cpu_task = Demand {
            resources: Resources::new(800, 100),
            gpu: GpuDemand::None,
        };
        assert!(
            Policy::DotProduct.score(&fit(&cap, &cpu_free, &cpu_task))
                > Policy::DotProduct.score(&fit(&cap, &mem_free, &cpu_task))
        );
    }

    #[test]
    fn names_round_trip() {
        for p in Policy::ALL {
            assert_eq!(p.name().parse::<Policy>(), Ok(p));
        }
        assert!("worst-fit".parse::<Policy>().is_err());
    }
}
