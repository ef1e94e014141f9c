//! The rollout's invariants on small random fleets and jobs, run through the simulator.
//! Budget and fault-domain limits are checked by this file's own pass over the
//! simulator's event log (sharing no code with the runner or the simulator's counter).

#![allow(clippy::unwrap_used)] // tests: a failed unwrap is a failed test with its message.

use std::collections::{BTreeMap, BTreeSet};

use proptest::prelude::*;
use twine_sched::rollout::sim::{LogEvent, SimConfig, SimOutcome, simulate};
use twine_sched::rollout::{Blocker, DomainLimits, UpdateKind};
use twine_sched::{FaultLevel, HostId};

fn config(
    hosts: usize,
    reboot: bool,
    limits: (u32, u32, u32),
    veto: f64,
    fail_at: Option<usize>,
    seed: u64,
) -> SimConfig {
    let mut c = SimConfig::new(if reboot {
        UpdateKind::Reboot
    } else {
        UpdateKind::Live
    });
    c.hosts = hosts;
    c.limits = DomainLimits::new(limits.0, limits.1, limits.2);
    c.veto_fraction = veto;
    c.health_failure_at = fail_at;
    c.seed = seed;
    c
}

/// The most tasks of each job down at once, and the most hosts in flight in each fault
/// domain at once, replayed from the log in order.
fn peaks(out: &SimOutcome) -> (BTreeMap<u64, u32>, BTreeMap<(usize, String), u32>) {
    let mut down: BTreeMap<u64, u32> = BTreeMap::new();
    let mut down_peak: BTreeMap<u64, u32> = BTreeMap::new();
    let mut flight: BTreeMap<(usize, String), u32> = BTreeMap::new();
    let mut flight_peak: BTreeMap<(usize, String), u32> = BTreeMap::new();
    let mut last_t = 0;
    for e in &out.log {
        match *e {
            LogEvent::Task {
                t_ms, job, down: d, ..
            } => {
                assert!(t_ms >= last_t, "log out of time order");
                last_t = t_ms;
                let c = down.entry(job.0).or_default();
                if d {
                    *c += 1;
                } else {
                    assert!(*c > 0, "{job} up without being down");
                    *c -= 1;
                }
                let p = down_peak.entry(job.0).or_default();
                *p = (*p).max(*c);
            }
            LogEvent::Flight {
                t_ms,
                host,
                entered,
            } => {
                assert!(t_ms >= last_t, "log out of time order");
                last_t = t_ms;
                let view = out.alloc.host(host).unwrap();
                for (k, level) in [
                    FaultLevel::Rack,
                    FaultLevel::PowerDomain,
                    FaultLevel::Datacenter,
                ]
                .into_iter()
                .enumerate()
                {
                    let key = (k, view.domain(level).to_owned());
                    let c = flight.entry(key.clone()).or_default();
                    if entered {
                        *c += 1;
                    } else {
                        assert!(*c > 0, "{host} landed without being in flight");
                        *c -= 1;
                    }
                    let p = flight_peak.entry(key).or_default();
                    *p = (*p).max(*c);
                }
            }
            _ => {}
        }
    }
    (down_peak, flight_peak)
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 24, ..ProptestConfig::default() })]

    /// No job ever has more tasks down than its max-unavailable budget, no fault domain
    /// more hosts in flight than its limit, every host ends updated or in the trailing
    /// report (never both), and with a long horizon every veto has ended.
    #[test]
    fn limits_hold_and_every_host_is_accounted_for(
        hosts in 40usize..400,
        reboot in any::<bool>(),
        rack in 1u32..4,
        power in 1u32..12,
        dc in 1u32..40,
        veto in 0.0f64..0.6,
        seed in any::<u64>(),
    ) {
        let out = simulate(&config(hosts, reboot, (rack, power, dc), veto, None, seed)).unwrap();
        let (down, flight) = peaks(&out);
        for j in &out.jobs {
            let peak = down.get(&j.job.0).copied().unwrap_or(0);
            prop_assert!(peak <= j.max_unavailable, "{} had {} down, budget {}", j.job, peak, j.max_unavailable);
        }
        for ((k, domain), peak) in &flight {
            let limit = [rack, power, dc][*k];
            prop_assert!(*peak <= limit, "{domain}: {peak} in flight, limit {limit}");
        }
        let updated: BTreeSet<HostId> = out
            .log
            .iter()
            .filter_map(|e| match e { LogEvent::Flight { host, entered: false, .. } => Some(*host), _ => None })
            .filter(|h| !out.trailing.iter().any(|t| t.host == *h))
            .collect();
        let trailing: BTreeSet<HostId> = out.trailing.iter().map(|t| t.host).collect();
        prop_assert_eq!(out.trailing.len(), trailing.len(), "a host listed twice");
        prop_assert_eq!(updated.len() + trailing.len(), hosts);
        prop_assert_eq!(out.updated(), updated.len());
        for t in &out.trailing {
            prop_assert!(
                !matches!(t.blocker, Blocker::Veto { .. } | Blocker::JobBudget { .. } | Blocker::InProgress { .. } | Blocker::Queued { .. } | Blocker::NotReached { .. }),
                "{} still {:?} after 60 days", t.host, t.blocker
            );
        }
        prop_assert_eq!(out.budget_violations, 0);
        prop_assert_eq!(out.fault_domain_violations, 0);
    }

    /// A failed gate halts the rollout: no host enters flight after it, the hosts done
    /// are proposed for rollback, and every host not done is reported.
    #[test]
    fn failed_gate_halts(
        hosts in 40usize..400,
        reboot in any::<bool>(),
        wave in 0usize..4,
        veto in 0.0f64..0.3,
        seed in any::<u64>(),
    ) {
        let out = simulate(&config(hosts, reboot, (2, 10, 40), veto, Some(wave), seed)).unwrap();
        let halted = out.halted_ms;
        prop_assume!(out.halted_at.is_some());
        let halted = halted.unwrap();
        prop_assert_eq!(out.halted_at, Some(wave));
        for e in &out.log {
            if let LogEvent::Flight { t_ms, host, entered: true } = *e {
                prop_assert!(t_ms < halted, "{} started at {} after the halt at {}", host, t_ms, halted);
            }
        }
        let later: usize = out.waves.iter().skip(wave + 1).map(|w| w.size).sum();
        prop_assert!(out.trailing.len() >= later);
        prop_assert!(out.waves.iter().skip(wave + 1).all(|w| w.started_ms.is_none()));
        let done_at_halt = out.curve.iter().filter(|&&(t, _)| t <= halted).map(|&(_, n)| n).next_back().unwrap_or(0);
        prop_assert_eq!(out.rollback.len(), done_at_halt);
        for h in &out.rollback {
            prop_assert!(!out.trailing.iter().any(|t| t.host == *h), "{} proposed for rollback but not done", h);
        }
    }

    /// The same seed gives the same run.
    #[test]
    fn deterministic(hosts in 40usize..300, veto in 0.0f64..0.5, seed in any::<u64>()) {
        let c = config(hosts, true, (2, 10, 40), veto, None, seed);
        let (a, b) = (simulate(&c).unwrap(), simulate(&c).unwrap());
        prop_assert_eq!(&a.log, &b.log);
        prop_assert_eq!(&a.curve, &b.curve);
        prop_assert_eq!(&a.trailing, &b.trailing);
    }
}

/// Vetoing jobs hold their hosts until the notice's deadline, then their tasks are
/// stopped (within budget) and the hosts finish: in the middle of the notice they are in
/// the trailing report as vetoes with the deadline; at the end none is.
#[test]
fn vetoes_end_at_their_deadline() {
    let mut c = config(400, true, (2, 10, 40), 0.3, None, 7);
    c.horizon_ms = 3 * 86_400_000;
    let early = simulate(&c).unwrap();
    let vetoes: Vec<_> = early
        .trailing
        .iter()
        .filter_map(|t| match t.blocker {
            Blocker::Veto { job, deadline_ms } => Some((job, deadline_ms)),
            _ => None,
        })
        .collect();
    assert!(!vetoes.is_empty(), "no veto in flight at day 3");
    for (job, deadline) in &vetoes {
        assert!(
            early.jobs.iter().any(|j| j.job == *job && j.vetoes),
            "{job} is not a vetoing job"
        );
        assert!(
            *deadline > c.horizon_ms,
            "deadline {deadline} already passed"
        );
    }
    c.horizon_ms = 60 * 86_400_000;
    let late = simulate(&c).unwrap();
    assert!(late.trailing.iter().all(|t| t.blocker.job().is_none()));
    // Vetoing jobs consent to nothing, so each of their tasks down is a forced stop:
    // none before a notice's deadline (7 days after its drain started, at 0 or later).
    let vetoing: BTreeSet<u64> = late
        .jobs
        .iter()
        .filter(|j| j.vetoes)
        .map(|j| j.job.0)
        .collect();
    let stops: Vec<u64> = late
        .log
        .iter()
        .filter_map(|e| match *e {
            LogEvent::Task {
                t_ms,
                down: true,
                job,
                ..
            } if vetoing.contains(&job.0) => Some(t_ms),
            _ => None,
        })
        .collect();
    assert!(!stops.is_empty(), "no vetoing task was ever stopped");
    assert!(
        stops.iter().all(|&t| t >= c.notice_ms),
        "a vetoing job's task stopped before its deadline"
    );
    assert!(late.curve.last().unwrap().0 >= vetoes.iter().map(|v| v.1).min().unwrap());
}

/// A wave's gate is asked only once every host of the wave has landed (regression: a
/// drained host let go of its wave when its drain was held, before its update).
#[test]
fn gate_waits_for_every_host_of_its_wave() {
    use std::collections::VecDeque;
    use twine_sched::rollout::{Action, PlanConfig, RolloutConfig, Runner, plan};

    let (mut alloc, _) = twine_sched::rollout::sim::fleet(400).unwrap();
    let waves = plan(&alloc, &PlanConfig::default()).unwrap();
    let mut runner = Runner::new(
        &alloc,
        waves.clone(),
        RolloutConfig::new(UpdateKind::Reboot),
    )
    .unwrap();
    let mut now = 0;
    let mut todo: VecDeque<Action> = runner.step(&mut alloc, now).unwrap().into();
    let mut landed = BTreeSet::new();
    let mut gates = Vec::new();
    while let Some(action) = todo.pop_front() {
        now += 1_000;
        let more = match action {
            Action::Do { host, step } => runner.report(&mut alloc, host, step, true, now).unwrap(),
            Action::Landed { host } => {
                landed.insert(host);
                Vec::new()
            }
            Action::CheckGate { wave } => {
                for h in &waves.waves[wave].hosts {
                    assert!(
                        landed.contains(h),
                        "gate of wave {wave} asked before {h} landed"
                    );
                }
                gates.push(wave);
                runner.gate(&mut alloc, wave, true, now).unwrap()
            }
            _ => Vec::new(),
        };
        todo.extend(more);
    }
    assert_eq!(gates, (0..waves.waves.len()).collect::<Vec<_>>());
    assert_eq!(runner.updated().len(), 400);
}
