//! The drain and host-profile switch flow, end to end on a real allocator with the
//! reference controller: moves only with consent, one replica of a shard down at a time,
//! stops at the deadline, the hand-off to the profiles side, and failures that leave the
//! host cordoned with its old profile. Every check reads the allocator's public views or
//! the test's own records.

use std::collections::{BTreeMap, BTreeSet};

use twine_sched::drain::{Drain, DrainError, DrainEvent, DrainSettings, Phase, ProfileSide};
use twine_sched::rebalance::RateLimit;
use twine_sched::taskcontrol::{ReplicatedService, Shard, ShardId, TaskControlResponse};
use twine_sched::{
    Allocator, AllocatorConfig, Demand, EntitlementId, GpuDemand, HostId, HostSpec, HostState,
    JobId, Owner, Quota, Request, Resources, TaskId,
};

/// Records switches; fails the first `fail` of them.
#[derive(Default)]
struct Profiles {
    switched: Vec<(HostId, String)>,
    fail: usize,
}

#[derive(Debug, thiserror::Error)]
#[error("reboot did not come back")]
struct RebootFailed;

impl ProfileSide for Profiles {
    type Error = RebootFailed;
    fn switch(&mut self, host: HostId, profile: &str) -> Result<(), RebootFailed> {
        if self.fail > 0 {
            self.fail -= 1;
            return Err(RebootFailed);
        }
        self.switched.push((host, profile.to_owned()));
        Ok(())
    }
}

fn small(cpu: u64) -> Demand {
    Demand {
        resources: Resources::new(cpu, 1_000),
        gpu: GpuDemand::None,
    }
}

/// Four hosts; job 1 is a replicated service of 6 tasks, 3 on the first host.
fn fleet() -> (Allocator, EntitlementId, Vec<HostId>) {
    let mut a = Allocator::new(AllocatorConfig::default());
    let hosts: Vec<HostId> = (0..4)
        .map(|_| {
            a.add_host(&HostSpec::new(Resources::new(8_000, 8_000)).profile("default"))
                .expect("host")
        })
        .collect();
    let ent = a
        .add_entitlement("svc", Quota::Units(Resources::new(1 << 30, 1 << 30)))
        .expect("entitlement");
    let mut req = Request::new(ent, JobId(1));
    for t in 0..6 {
        req = req.allocate(TaskId(t), small(2_500));
    }
    let out = a.apply(&req).expect("placement");
    assert_eq!(out.placed.len(), 6);
    (a, ent, hosts)
}

/// Shards of replicas over the six tasks: (0,1,2), (1,2,3), (3,4,5), (4,5,0); leaders
/// are the first of each.
fn service() -> ReplicatedService {
    let shard = |id, r: [u64; 3]| Shard {
        id: ShardId(id),
        replicas: r.iter().map(|&t| TaskId(t)).collect(),
        leader: TaskId(r[0]),
    };
    ReplicatedService::new(vec![
        shard(0, [0, 1, 2]),
        shard(1, [1, 2, 3]),
        shard(2, [3, 4, 5]),
        shard(3, [4, 5, 0]),
    ])
    .expect("valid layout")
}

fn on(a: &Allocator, h: HostId) -> Vec<TaskId> {
    let mut v = a.host(h).expect("host").tasks().to_vec();
    v.sort_unstable();
    v
}

#[test]
fn consented_moves_empty_the_host_then_it_switches_and_comes_back() {
    let (mut a, _, hosts) = fleet();
    let drained = hosts[0];
    let before = on(&a, drained);
    assert!(
        before.len() >= 2,
        "the first host holds several tasks: {before:?}"
    );
    let mut svc = service();
    let mut profiles = Profiles::default();
    let settings = DrainSettings::new(3_600_000, "hugepages").profile("hugepages-1g");
    let mut drain = Drain::start(&mut a, drained, settings, 0).expect("start");
    assert_eq!(a.host(drained).expect("host").state(), HostState::Draining);
    let mut moved = BTreeSet::new();
    let mut now = 0;
    while drain.phase() != Phase::Done {
        now += 1_000;
        assert!(now < 600_000, "the drain finishes long before its deadline");
        for req in drain.requests() {
            let resp = svc.process(&req);
            // With max_unavailable 1 and one op in flight at most, no two replicas of a
            // shard can be down; the controller's own rule is checked in its tests.
            for ev in drain.respond(&mut a, req.job, resp, now).expect("respond") {
                if let DrainEvent::Moved(m) = ev {
                    assert_eq!(m.from, drained);
                    assert_ne!(m.to, drained);
                    moved.insert(m.task);
                }
            }
        }
        let events = drain.tick(&mut a, &mut profiles, now).expect("tick");
        assert!(
            events
                .iter()
                .all(|e| !matches!(e, DrainEvent::Stopped { .. })),
            "nothing is stopped before the deadline: {events:?}"
        );
    }
    assert_eq!(moved.into_iter().collect::<Vec<_>>(), before);
    assert!(on(&a, drained).is_empty());
    assert_eq!(profiles.switched, [(drained, "hugepages-1g".to_owned())]);
    let view = a.host(drained).expect("host");
    assert_eq!(
        (view.profile(), view.state(), view.owner()),
        ("hugepages-1g", HostState::Up, Owner::FreePool)
    );
    // Every task still runs, on a host with room (the allocator's own views).
    let mut per_host: BTreeMap<HostId, u64> = BTreeMap::new();
    for t in 0..6 {
        let (h, _) = a.task(TaskId(t)).expect("still placed");
        *per_host.entry(h).or_default() += 2_500;
    }
    assert!(per_host.values().all(|&cpu| cpu <= 8_000), "{per_host:?}");
}

#[test]
fn a_veto_holds_until_the_deadline_then_the_rest_is_stopped() {
    let (mut a, _, hosts) = fleet();
    let drained = hosts[0];
    let before = on(&a, drained);
    let mut profiles = Profiles::default();
    let mut drain = Drain::start(
        &mut a,
        drained,
        DrainSettings::new(10_000, "switch maintenance"),
        0,
    )
    .expect("start");
    // The controller acks nothing: the veto.
    for now in [1_000, 5_000, 9_999] {
        for req in drain.requests() {
            assert!(!req.request.is_empty(), "moves are offered");
            assert_eq!(req.advance_notices[0].deadline_ms, 10_000);
            let resp = TaskControlResponse {
                sequence: req.sequence,
                ack: Vec::new(),
            };
            assert!(
                drain
                    .respond(&mut a, req.job, resp, now)
                    .expect("respond")
                    .is_empty()
            );
        }
        drain.tick(&mut a, &mut profiles, now).expect("tick");
        assert_eq!(on(&a, drained), before, "nothing moves without consent");
    }
    let events = drain.tick(&mut a, &mut profiles, 10_000).expect("tick");
    let stopped: Vec<TaskId> = events
        .iter()
        .filter_map(|e| match e {
            DrainEvent::Stopped { task, .. } => Some(*task),
            _ => None,
        })
        .collect();
    assert_eq!(
        stopped, before,
        "every remaining task stops at the deadline"
    );
    for t in &before {
        assert!(a.task(*t).is_err(), "{t} was freed from the allocator");
    }
    assert!(events.contains(&DrainEvent::Up));
    assert_eq!(drain.phase(), Phase::Done);
    assert!(profiles.switched.is_empty(), "no profile was asked for");
}

#[test]
fn a_failed_switch_keeps_the_host_cordoned_with_its_old_profile() {
    let (mut a, _, hosts) = fleet();
    let drained = hosts[3];
    assert!(on(&a, drained).is_empty(), "the last host is empty");
    let mut profiles = Profiles {
        fail: 1,
        ..Profiles::default()
    };
    let mut drain = Drain::start(
        &mut a,
        drained,
        DrainSettings::new(60_000, "kernel").profile("new-kernel"),
        0,
    )
    .expect("start");
    let e = drain.tick(&mut a, &mut profiles, 1_000).unwrap_err();
    assert!(matches!(e, DrainError::Profile { host, .. } if host == drained));
    assert!(e.to_string().contains("new-kernel"), "{e}");
    let view = a.host(drained).expect("host");
    assert_eq!(
        (view.profile(), view.state()),
        ("default", HostState::Draining)
    );
    // The next tick tries again and succeeds.
    drain.tick(&mut a, &mut profiles, 2_000).expect("tick");
    assert_eq!(drain.phase(), Phase::Done);
    assert_eq!(a.host(drained).expect("host").profile(), "new-kernel");
}

#[test]
fn the_rate_limit_paces_the_moves_offered() {
    let (mut a, _, hosts) = fleet();
    let drained = hosts[0];
    let on_drained = on(&a, drained).len();
    assert!(on_drained >= 2);
    let settings = DrainSettings::new(100 * 3_600_000, "slow")
        .max_unavailable(10)
        .rate_limit(RateLimit {
            per_hour: 1,
            burst: 1,
        });
    let mut drain = Drain::start(&mut a, drained, settings, 0).expect("start");
    let mut profiles = Profiles::default();
    let offered =
        |drain: &mut Drain| -> usize { drain.requests().iter().map(|r| r.request.len()).sum() };
    assert_eq!(offered(&mut drain), 1, "one token: one move offered");
    drain.tick(&mut a, &mut profiles, 1_800_000).expect("tick");
    assert_eq!(offered(&mut drain), 1, "no new token after half an hour");
    drain.tick(&mut a, &mut profiles, 3_600_000).expect("tick");
    assert_eq!(offered(&mut drain), 2, "a second move after an hour");
}

#[test]
fn bad_starts_are_typed_errors_and_change_nothing() {
    let (mut a, _, hosts) = fleet();
    let e = Drain::start(&mut a, hosts[0], DrainSettings::new(0, "late"), 5).unwrap_err();
    assert!(matches!(e, DrainError::DeadlinePassed { .. }), "{e}");
    assert_eq!(a.host(hosts[0]).expect("host").state(), HostState::Up);
    let e = Drain::start(&mut a, HostId(99), DrainSettings::new(10, "x"), 0).unwrap_err();
    assert!(e.to_string().contains("99"), "{e}");
    a.drain(hosts[1]).expect("drain");
    let e = Drain::start(&mut a, hosts[1], DrainSettings::new(10, "x"), 0).unwrap_err();
    assert!(matches!(e, DrainError::NotUp { .. }), "{e}");
}

#[test]
fn a_held_drain_keeps_the_host_cordoned_until_released() {
    let (mut a, _, hosts) = fleet();
    let drained = hosts[3];
    let mut profiles = Profiles::default();
    let mut drain = Drain::start(
        &mut a,
        drained,
        DrainSettings::new(60_000, "reboot").hold(),
        0,
    )
    .expect("start");
    drain.tick(&mut a, &mut profiles, 1_000).expect("tick");
    assert_eq!(drain.phase(), Phase::Held);
    assert_eq!(a.host(drained).expect("host").state(), HostState::Draining);
    // Nothing lands on a held host.
    let mut req = Request::new(EntitlementId(0), JobId(9));
    for t in 100..140 {
        req = req.allocate(TaskId(t), small(2_000));
    }
    let out = a.apply(&req).expect("apply");
    assert!(out.placed.iter().all(|p| p.host != drained));
    assert_eq!(drain.release(&mut a).expect("release"), [DrainEvent::Up]);
    assert_eq!(drain.phase(), Phase::Done);
    assert_eq!(a.host(drained).expect("host").state(), HostState::Up);
    assert!(
        drain.release(&mut a).is_err(),
        "a second release is refused"
    );
}
