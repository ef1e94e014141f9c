//! Who arrives when and for how long: the trace's own times, or Poisson arrivals drawn
//! from its mix (see the [module docs](super#poisson-arrivals)).

use rand::{RngExt as _, SeedableRng as _};
use rand_chacha::ChaCha8Rng;
use rand_distr::{Distribution as _, Exp, Poisson};

use super::{Arrivals, DEFAULT_POISSON_DURATION_S, ReplayConfig, ReplayError};
use crate::pack::Dimension;
use crate::resources::{GPU_MILLI, Resources};
use crate::trace::TracePod;

/// The dimensions a load is measured in: CPU, memory, GPU milli.
pub(super) const LOAD_DIMS: [Dimension; 3] = [Dimension::Cpu, Dimension::Memory, Dimension::Gpu];

/// More pods alive on average than this is refused (it would not fit in memory).
const MAX_ALIVE: f64 = 1e8;

/// One arrival.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Arrival {
    /// The pod's name in events: the trace name, or `NAME#K`.
    pub(super) name: String,
    /// The trace pod whose shape it has.
    pub(super) pod: usize,
    /// When it arrives.
    pub(super) arrive_ms: u64,
    /// When it leaves, if ever.
    pub(super) depart_ms: Option<u64>,
}

/// Every arrival of a replay, in arrival order (`K` is the index).
#[derive(Debug, Clone, PartialEq)]
pub(super) struct Schedule {
    pub(super) arrivals: Vec<Arrival>,
    pub(super) duration_ms: u64,
    /// Index into [`LOAD_DIMS`].
    pub(super) bottleneck: usize,
    pub(super) rate_per_s: Option<f64>,
    pub(super) initial: usize,
}

/// A pod's demand in the [`LOAD_DIMS`].
pub(super) fn load_dims(pod: &TracePod) -> [u64; 3] {
    let r = &pod.demand.resources;
    [r.cpu_milli, r.memory_mib, pod.demand.gpu.milli()]
}

/// A host's capacity in the [`LOAD_DIMS`].
pub(super) fn capacity_dims(capacity: &Resources, gpus: u8) -> [u64; 3] {
    [
        capacity.cpu_milli,
        capacity.memory_mib,
        u64::from(gpus) * u64::from(GPU_MILLI),
    ]
}

#[allow(clippy::cast_precision_loss)] // sums of amounts as f64 for ratios; ample
fn as_f64(x: u128) -> f64 {
    x as f64
}

/// The dimension with the largest mean demand over capacity, with its mean demand.
fn bottleneck(pods: &[TracePod], capacity: [u128; 3]) -> Result<(usize, f64), ReplayError> {
    let mut sums = [0u128; 3];
    for p in pods {
        for (s, d) in sums.iter_mut().zip(load_dims(p)) {
            *s += u128::from(d);
        }
    }
    let n = as_f64(pods.len() as u128).max(1.0);
    (0..3)
        .filter(|&k| capacity[k] > 0 && sums[k] > 0)
        .map(|k| {
            (
                k,
                as_f64(sums[k]) / n,
                as_f64(sums[k]) / as_f64(capacity[k]),
            )
        })
        .max_by(|a, b| a.2.total_cmp(&b.2).then(b.0.cmp(&a.0)))
        .map(|(k, mean, _)| (k, mean))
        .ok_or(ReplayError::NoBottleneck)
}

/// The line of the `index`-th data row, assuming one line per row.
fn line(index: usize) -> usize {
    index + 2
}

/// Seconds to milliseconds, saturating (no trace time is near 2^54 s).
fn ms(seconds: u64) -> u64 {
    seconds.saturating_mul(1000)
}

/// The schedule for `config` over `pods`, onto a fleet of `capacity` in total.
pub(super) fn schedule(
    pods: &[TracePod],
    config: &ReplayConfig,
    capacity: [u128; 3],
) -> Result<Schedule, ReplayError> {
    match config.arrivals {
        Arrivals::Trace => trace(pods, config, capacity),
        Arrivals::Poisson { load, seed } => poisson(pods, config, capacity, load, seed),
    }
}

fn trace(
    pods: &[TracePod],
    config: &ReplayConfig,
    capacity: [u128; 3],
) -> Result<Schedule, ReplayError> {
    let mut timed = Vec::with_capacity(pods.len());
    for (i, p) in pods.iter().enumerate() {
        let created = p.creation_time.ok_or_else(|| ReplayError::NoCreationTime {
            pod: p.name.clone(),
            line: line(i),
        })?;
        let deleted = match p.deletion_time {
            Some(d) if d < created => {
                return Err(ReplayError::DeletedBeforeCreated {
                    pod: p.name.clone(),
                    line: line(i),
                    creation: created,
                    deletion: d,
                });
            }
            // A pod that would leave the second it arrives stays one second.
            Some(d) => Some(d.max(created.saturating_add(1))),
            None => None,
        };
        timed.push((created, i, deleted));
    }
    timed.sort_unstable();
    let last = timed
        .iter()
        .map(|&(c, _, d)| d.unwrap_or(c).max(c))
        .max()
        .unwrap_or(0);
    let duration_ms = ms(config.duration_s.unwrap_or(last.max(1)));
    let arrivals = timed
        .into_iter()
        .map(|(c, i, d)| Arrival {
            name: pods[i].name.clone(),
            pod: i,
            arrive_ms: ms(c),
            depart_ms: d.map(ms),
        })
        .take_while(|a| a.arrive_ms <= duration_ms)
        .collect();
    // With no pod asking for anything, any dimension is the bottleneck: CPU.
    let bottleneck = bottleneck(pods, capacity).map_or(0, |(k, _)| k);
    Ok(Schedule {
        arrivals,
        duration_ms,
        bottleneck,
        rate_per_s: None,
        initial: 0,
    })
}

/// Lifetimes in seconds with a length-biased sampler: `cumulative[i]` is the sum of the
/// first `i + 1` lifetimes.
struct Lifetimes {
    seconds: Vec<u64>,
    cumulative: Vec<u128>,
}

impl Lifetimes {
    fn of(pods: &[TracePod]) -> Result<Lifetimes, ReplayError> {
        let seconds: Vec<u64> = pods
            .iter()
            .filter_map(|p| Some(p.deletion_time?.saturating_sub(p.creation_time?).max(1)))
            .collect();
        if seconds.is_empty() {
            return Err(ReplayError::NoDurations);
        }
        let cumulative = seconds
            .iter()
            .scan(0u128, |sum, &s| {
                *sum += u128::from(s);
                Some(*sum)
            })
            .collect();
        Ok(Lifetimes {
            seconds,
            cumulative,
        })
    }

    fn mean(&self) -> f64 {
        let total = self.cumulative.last().copied().unwrap_or(0);
        as_f64(total) / as_f64(self.seconds.len() as u128)
    }

    fn draw(&self, rng: &mut ChaCha8Rng) -> u64 {
        self.seconds[rng.random_range(0..self.seconds.len())]
    }

    /// A lifetime drawn with probability proportional to its length.
    fn draw_biased(&self, rng: &mut ChaCha8Rng) -> u64 {
        let total = self.cumulative.last().copied().unwrap_or(0);
        let x = rng.random_range(0..total.max(1));
        let i = self.cumulative.partition_point(|&c| c <= x);
        self.seconds[i.min(self.seconds.len() - 1)]
    }
}

#[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)] // finite, ≥ 0, far below 2^64
fn to_u64(x: f64) -> u64 {
    x.max(0.0).round() as u64
}

fn poisson(
    pods: &[TracePod],
    config: &ReplayConfig,
    capacity: [u128; 3],
    load: f64,
    seed: u64,
) -> Result<Schedule, ReplayError> {
    if !load.is_finite() || load <= 0.0 {
        return Err(ReplayError::Config {
            field: "load",
            value: load.to_string(),
            problem: "must be a finite number above 0",
        });
    }
    if pods.is_empty() {
        return Err(ReplayError::NoPods);
    }
    let lifetimes = Lifetimes::of(pods)?;
    let (k, mean_demand) = bottleneck(pods, capacity)?;
    // Pods alive on average: load · C / E[d]; the rate is that over E[L].
    let alive = load * as_f64(capacity[k]) / mean_demand;
    if alive > MAX_ALIVE {
        return Err(ReplayError::Config {
            field: "load",
            value: load.to_string(),
            problem: "would keep more than 100,000,000 pods alive at once",
        });
    }
    let rate = alive / lifetimes.mean();
    let duration_ms = ms(config.duration_s.unwrap_or(DEFAULT_POISSON_DURATION_S));
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let bad_rate = |_| ReplayError::Config {
        field: "load",
        value: load.to_string(),
        problem: "gives no usable arrival rate for these pods and this fleet",
    };
    let initial = to_u64(Poisson::new(alive).map_err(bad_rate)?.sample(&mut rng));
    let gaps = Exp::new(rate).map_err(|_| ReplayError::Config {
        field: "load",
        value: load.to_string(),
        problem: "gives no usable arrival rate for these pods and this fleet",
    })?;
    let mut arrivals = Vec::new();
    let named = |k: usize, pod: usize, arrive_ms: u64, depart_ms: u64| Arrival {
        name: format!("{}#{k}", pods[pod].name),
        pod,
        arrive_ms,
        depart_ms: Some(depart_ms),
    };
    for k in 0..usize::try_from(initial).unwrap_or(usize::MAX) {
        let pod = rng.random_range(0..pods.len());
        let life = lifetimes.draw_biased(&mut rng);
        // Uniform in (0, L], in milliseconds, at least one.
        let u: f64 = rng.random();
        let residual = to_u64((ms(life) as f64) * (1.0 - u)).max(1);
        arrivals.push(named(k, pod, 0, residual));
    }
    let initial = arrivals.len();
    let mut t_s = 0.0;
    loop {
        t_s += gaps.sample(&mut rng);
        let arrive_ms = to_u64(t_s * 1000.0);
        if arrive_ms > duration_ms {
            break;
        }
        let pod = rng.random_range(0..pods.len());
        let life = lifetimes.draw(&mut rng);
        let k = arrivals.len();
        arrivals.push(named(k, pod, arrive_ms, arrive_ms.saturating_add(ms(life))));
    }
    Ok(Schedule {
        initial,
        arrivals,
        duration_ms,
        bottleneck: k,
        rate_per_s: Some(rate),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pack::Hosts;
    use crate::resources::{Demand, GpuDemand};

    fn pod(name: &str, cpu: u64, gpu: GpuDemand, times: (u64, u64)) -> TracePod {
        TracePod {
            name: name.into(),
            demand: Demand {
                resources: Resources::new(cpu, 1),
                gpu,
            },
            gpu_spec: Vec::new(),
            creation_time: Some(times.0),
            deletion_time: Some(times.1),
        }
    }

    fn config(load: f64, seed: u64, duration_s: u64) -> ReplayConfig {
        let hosts = Hosts::Identical {
            capacity: Resources::new(10_000, 10_000),
            gpus: 1,
            gpu_model: None,
        };
        ReplayConfig::new(hosts, Arrivals::Poisson { load, seed }).with_duration_s(duration_s)
    }

    /// The rate holds the demand at the load: with one shape of 1,000 milli CPU and
    /// lifetimes of 100 s, a load of 0.5 on 100 hosts of 10,000 keeps 500 pods alive,
    /// arriving at 5 per second; the initial count and the arrivals match.
    #[test]
    fn the_rate_holds_the_load() {
        let pods = vec![pod("a", 1_000, GpuDemand::None, (0, 100))];
        let capacity = [1_000_000, 1_000_000, 100_000];
        let s = schedule(&pods, &config(0.5, 3, 2_000), capacity).unwrap();
        assert_eq!(s.bottleneck, 0);
        let rate = s.rate_per_s.unwrap();
        assert!((rate - 5.0).abs() < 1e-9, "{rate}");
        let initial = s.initial as f64;
        assert!((initial - 500.0).abs() < 5.0 * 500f64.sqrt(), "{initial}");
        let later = (s.arrivals.len() - s.initial) as f64;
        assert!((later - 10_000.0).abs() < 5.0 * 100.0, "{later}");
        assert!(
            s.arrivals
                .windows(2)
                .all(|w| w[0].arrive_ms <= w[1].arrive_ms)
        );
        assert_eq!(s.arrivals[7].name, "a#7");
        // Residual lifetimes of the initial pods lie in (0, 100 s].
        assert!(
            s.arrivals[..s.initial]
                .iter()
                .all(|a| a.depart_ms.is_some_and(|d| (1..=100_000).contains(&d)))
        );
    }

    /// GPU milli is the bottleneck when the pods ask more of it than of anything else.
    #[test]
    fn the_bottleneck_is_the_scarcest_dimension() {
        let pods = vec![
            pod("g", 100, GpuDemand::Whole(1), (0, 10)),
            pod("c", 100, GpuDemand::None, (0, 10)),
        ];
        let s = schedule(&pods, &config(0.8, 1, 10), [1_000_000, 1_000_000, 10_000]).unwrap();
        assert_eq!(LOAD_DIMS[s.bottleneck], Dimension::Gpu);
    }

    #[test]
    fn bad_loads_and_inputs_are_named() {
        let pods = vec![pod("a", 1_000, GpuDemand::None, (0, 100))];
        let cap = [1_000_000, 1_000_000, 0];
        for load in [0.0, -1.0, f64::NAN, f64::INFINITY, 1e30] {
            let e = schedule(&pods, &config(load, 0, 10), cap).unwrap_err();
            assert!(
                matches!(e, ReplayError::Config { field: "load", .. }),
                "{load}: {e}"
            );
        }
        assert_eq!(
            schedule(&[], &config(0.5, 0, 10), cap),
            Err(ReplayError::NoPods)
        );
        let mut timeless = pods[0].clone();
        timeless.deletion_time = None;
        assert_eq!(
            schedule(&[timeless.clone()], &config(0.5, 0, 10), cap),
            Err(ReplayError::NoDurations)
        );
        let trace = ReplayConfig::new(config(1.0, 0, 1).hosts, Arrivals::Trace);
        timeless.creation_time = None;
        let e = schedule(&[pods[0].clone(), timeless], &trace, cap).unwrap_err();
        assert_eq!(
            e,
            ReplayError::NoCreationTime {
                pod: "a".into(),
                line: 3
            }
        );
    }
}
