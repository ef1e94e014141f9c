//! Properties of `replay` on small random fleets and pod mixes: deterministic for a seed,
//! every figure finite and within its range, and an event stream that a small
//! independent capacity check (written here, from the pods' demands alone) accepts,
//! whose hosts-in-use average and move count match the figures.

#![allow(clippy::unwrap_used)] // tests: a failed unwrap is a failed test with its message.

mod support;

use std::collections::HashMap;

use proptest::prelude::*;
use twine_sched::pack::Hosts;
use twine_sched::replay::{Arrivals, EventKind, Replay, ReplayConfig, replay};
use twine_sched::trace::{TraceNode, TracePod};
use twine_sched::{Demand, GpuDemand, Resources};

fn gpu(kind: u8, amount: u16) -> GpuDemand {
    match kind % 4 {
        0 | 1 => GpuDemand::None,
        2 => GpuDemand::Shared(amount % 999 + 1),
        _ => GpuDemand::Whole(u8::try_from(amount % 2 + 1).unwrap()),
    }
}

fn pods() -> impl Strategy<Value = Vec<TracePod>> {
    prop::collection::vec(
        (
            1u64..12_000,
            1u64..12_000,
            any::<u8>(),
            any::<u16>(),
            0u64..2_000,
            1u64..3_000,
        ),
        1..30,
    )
    .prop_map(|v| {
        v.into_iter()
            .enumerate()
            .map(|(i, (cpu, mem, k, a, created, life))| TracePod {
                name: format!("p{i}"),
                demand: Demand {
                    resources: Resources::new(cpu, mem),
                    gpu: gpu(k, a),
                },
                gpu_spec: Vec::new(),
                creation_time: Some(created),
                deletion_time: Some(created + life),
            })
            .collect()
    })
}

fn hosts() -> impl Strategy<Value = (Hosts, usize)> {
    let node = (8_000u64..32_000, 8_000u64..32_000, 0u8..4);
    prop_oneof![
        (node.clone(), 1usize..6).prop_map(|((c, m, g), n)| (
            Hosts::Identical {
                capacity: Resources::new(c, m),
                gpus: g,
                gpu_model: None,
            },
            n
        )),
        prop::collection::vec(node, 1..6).prop_map(|v| {
            let n = v.len();
            let nodes = v
                .into_iter()
                .enumerate()
                .map(|(i, (c, m, g))| TraceNode {
                    name: format!("n{i}"),
                    capacity: Resources::new(c, m),
                    gpus: g,
                    gpu_model: None,
                })
                .collect();
            (Hosts::Listed(nodes), n)
        }),
    ]
}

fn arrivals() -> impl Strategy<Value = Arrivals> {
    prop_oneof![
        Just(Arrivals::Trace),
        (0.2f64..1.2, any::<u64>()).prop_map(|(load, seed)| Arrivals::Poisson { load, seed }),
    ]
}

fn config(hosts: Hosts, n: usize, arrivals: Arrivals, every: u64, budget: usize) -> ReplayConfig {
    let c = ReplayConfig::new(hosts, arrivals)
        .with_fleet_size(n)
        .with_rebalance_every_s(every)
        .with_move_budget(budget);
    match arrivals {
        Arrivals::Poisson { .. } => c.with_duration_s(4_000),
        _ => c,
    }
}

/// Capacity of host `h`: (cpu, memory, GPU devices).
fn capacity(hosts: &Hosts, h: usize) -> (u64, u64, usize) {
    match hosts {
        Hosts::Identical { capacity, gpus, .. } => {
            (capacity.cpu_milli, capacity.memory_mib, usize::from(*gpus))
        }
        Hosts::Listed(nodes) => {
            let n = &nodes[h];
            (
                n.capacity.cpu_milli,
                n.capacity.memory_mib,
                usize::from(n.gpus),
            )
        }
        _ => unreachable!("only two kinds of fleet"),
    }
}

/// Replays the events on per-host, per-device counters; returns the hosts-in-use
/// integral in host-milliseconds and the moves, or the first violation.
fn check(pods: &[TracePod], hosts: &Hosts, r: &Replay) -> Result<(f64, usize), String> {
    let by_name: HashMap<&str, &TracePod> = pods.iter().map(|p| (p.name.as_str(), p)).collect();
    #[derive(Default)]
    struct Host {
        cpu: u64,
        mem: u64,
        devices: Vec<u32>,
        pods: usize,
    }
    let mut state: HashMap<usize, Host> = HashMap::new();
    let mut on: HashMap<String, (usize, Vec<(u8, u16)>)> = HashMap::new();
    let (mut in_use, mut last, mut integral, mut moves) = (0usize, 0u64, 0f64, 0);
    for e in &r.events {
        if e.time_ms < last {
            return Err(format!("time went back at {e:?}"));
        }
        integral += in_use as f64 * (e.time_ms - last) as f64;
        last = e.time_ms;
        let base = e.pod.split('#').next().unwrap_or_default();
        let pod = by_name.get(base).ok_or(format!("unknown pod {}", e.pod))?;
        let devices: Vec<(u8, u16)> = e.gpus.devices.iter().copied().collect();
        let leave = |state: &mut HashMap<usize, Host>, h: usize, devices: &[(u8, u16)]| {
            let s = state.get_mut(&h).expect("host");
            s.cpu -= pod.demand.resources.cpu_milli;
            s.mem -= pod.demand.resources.memory_mib;
            for &(d, m) in devices {
                s.devices[usize::from(d)] -= u32::from(m);
            }
            s.pods -= 1;
            usize::from(s.pods == 0)
        };
        let join = |state: &mut HashMap<usize, Host>, h: usize| -> Result<usize, String> {
            let (cpu, mem, gpus) = capacity(hosts, h);
            let s = state.entry(h).or_insert_with(|| Host {
                devices: vec![0; gpus],
                ..Host::default()
            });
            s.cpu += pod.demand.resources.cpu_milli;
            s.mem += pod.demand.resources.memory_mib;
            if s.cpu > cpu || s.mem > mem {
                return Err(format!("host {h} overcommitted by {e:?}"));
            }
            let milli: u32 = devices.iter().map(|&(_, m)| u32::from(m)).sum();
            if u64::from(milli) != pod.demand.gpu.milli() {
                return Err(format!("grant {devices:?} is not the demand in {e:?}"));
            }
            for &(d, m) in &devices {
                let used = s
                    .devices
                    .get_mut(usize::from(d))
                    .ok_or(format!("no device {d} in {e:?}"))?;
                if matches!(pod.demand.gpu, GpuDemand::Whole(_)) && *used > 0 {
                    return Err(format!("device {d} not idle in {e:?}"));
                }
                *used += u32::from(m);
                if *used > 1000 {
                    return Err(format!("device {d} over 1000 in {e:?}"));
                }
            }
            s.pods += 1;
            Ok(usize::from(s.pods == 1))
        };
        match e.kind {
            EventKind::Place => {
                let h = e.host.ok_or("place without a host")?;
                if on.contains_key(&e.pod) {
                    return Err(format!("placed twice: {e:?}"));
                }
                in_use += join(&mut state, h)?;
                on.insert(e.pod.clone(), (h, devices.clone()));
            }
            EventKind::Move => {
                let h = e.host.ok_or("move without a host")?;
                let (from, held) = on.remove(&e.pod).ok_or(format!("not placed: {e:?}"))?;
                in_use -= leave(&mut state, from, &held);
                in_use += join(&mut state, h)?;
                on.insert(e.pod.clone(), (h, devices.clone()));
                moves += 1;
            }
            EventKind::Free => {
                let (from, held) = on.remove(&e.pod).ok_or(format!("not placed: {e:?}"))?;
                if Some(from) != e.host || held != devices {
                    return Err(format!("freed from elsewhere: {e:?}"));
                }
                in_use -= leave(&mut state, from, &held);
            }
            EventKind::Unplaced => {
                if e.host.is_some() || on.contains_key(&e.pod) {
                    return Err(format!("unplaced while placed: {e:?}"));
                }
            }
            _ => return Err(format!("unknown event {e:?}")),
        }
    }
    let end = r.workload.duration_s * 1000;
    integral += in_use as f64 * (end - last) as f64;
    Ok((integral, moves))
}

fn finite(r: &Replay) -> bool {
    [&r.main, &r.baseline].iter().all(|f| {
        [
            f.hosts_in_use_avg,
            f.lower_bound_avg,
            f.ratio,
            f.utilisation_avg,
            f.fragmentation_avg,
            f.pending_task_seconds,
        ]
        .iter()
        .all(|x| x.is_finite() && *x >= 0.0)
            && (0.0..=1.0 + 1e-9).contains(&f.utilisation_avg)
            && (0.0..=1.0 + 1e-9).contains(&f.fragmentation_avg)
    }) && r.saving().is_finite()
        && r.series.iter().all(|s| {
            [
                s.hosts_in_use,
                s.hosts_in_use_baseline,
                s.lower_bound,
                s.utilisation,
                s.pending,
            ]
            .iter()
            .all(|x| x.is_finite())
        })
}

proptest! {
    #![proptest_config(support::proptest_config(48))]

    #[test]
    fn replays_are_deterministic_finite_and_never_overcommit(
        pods in pods(),
        (hosts, n) in hosts(),
        arrivals in arrivals(),
        every in 1u64..400,
        budget in 0usize..6,
    ) {
        let c = config(hosts.clone(), n, arrivals, every, budget);
        let a = replay(&pods, &c).unwrap();
        let b = replay(&pods, &c).unwrap();
        prop_assert_eq!(&a, &b);
        prop_assert!(finite(&a), "{:?}", a.main);
        let (integral, moves) = check(&pods, &hosts, &a).map_err(TestCaseError::fail)?;
        let d = (a.workload.duration_s * 1000) as f64;
        let avg = integral / d;
        prop_assert!((avg - a.main.hosts_in_use_avg).abs() <= 1e-9 * avg.max(1.0), "{} {}", avg, a.main.hosts_in_use_avg);
        prop_assert_eq!(moves, a.main.moves);
        prop_assert!(a.main.max_moves_in_a_round <= budget);
        prop_assert_eq!(a.main.placed + a.main.unplaced, a.workload.arrivals);
        prop_assert_eq!(a.baseline.moves, 0);
        // The bound holds at every instant, so on average too.
        prop_assert!(a.main.lower_bound_avg <= a.main.hosts_in_use_avg + 1e-9);
        prop_assert!(a.baseline.lower_bound_avg <= a.baseline.hosts_in_use_avg + 1e-9);
        prop_assert!(a.main.hosts_in_use_avg <= a.workload.hosts as f64 + 1e-9);
    }
}

/// Without a move budget the two runs are the same run.
#[test]
fn a_zero_budget_makes_the_runs_equal() {
    let pods: Vec<TracePod> = (0..20)
        .map(|i| TracePod {
            name: format!("p{i}"),
            demand: Demand {
                resources: Resources::new(3_000 + 100 * i, 2_000),
                gpu: GpuDemand::None,
            },
            gpu_spec: Vec::new(),
            creation_time: Some(10 * i),
            deletion_time: Some(10 * i + 50 + (i % 3) * 400),
        })
        .collect();
    let hosts = Hosts::Identical {
        capacity: Resources::new(10_000, 10_000),
        gpus: 0,
        gpu_model: None,
    };
    let c = config(hosts, 8, Arrivals::Trace, 30, 0);
    let r = replay(&pods, &c).unwrap();
    assert_eq!(r.main.moves, 0);
    assert_eq!(r.main.hosts_in_use_avg, r.baseline.hosts_in_use_avg);
    assert_eq!(r.main.pending_task_seconds, r.baseline.pending_task_seconds);
}
