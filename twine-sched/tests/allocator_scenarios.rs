//! The online allocator against its promises, case by case: explanations, profile
//! switches, resizes, the entitlement lifecycle and typed errors for bad input. The
//! model-based property tests are in `allocator_model.rs`.

use std::collections::BTreeSet;

use twine_sched::{
    AllocError, Allocator, AllocatorConfig, Demand, EntitlementId, FaultLevel, GpuDemand, GpuGrant,
    HostId, HostSpec, JobId, Moved, Owner, Preferences, Quota, QuotaExcess, Request, Requirements,
    Resized, Resources, TaskId,
};

fn demand(cpu: u64, mem: u64) -> Demand {
    Demand {
        resources: Resources::new(cpu, mem),
        gpu: GpuDemand::None,
    }
}

fn small(rack: usize) -> HostSpec {
    HostSpec::new(Resources::new(18_000, 65_536))
        .machine_type("small")
        .domain(["r1", "dc1", "p1", &format!("rack{rack}")])
}

#[test]
fn unplaced_explanation_counts_each_host_once() {
    let mut a = Allocator::new(AllocatorConfig::default());
    let ent = a
        .add_entitlement("web", Quota::machines([("small", 10), ("big", 10)]))
        .unwrap();
    for r in 0..2 {
        a.add_host(&small(r).machine_type("big")).unwrap();
    }
    a.add_host(&small(2).profile("other")).unwrap();
    for r in 3..5 {
        a.add_host(&small(r)).unwrap();
    }
    let req = Request::new(ent, JobId(1))
        .require(
            Requirements::default()
                .machine_types(["small"])
                .host_profile("default"),
        )
        .allocate(TaskId(1), demand(1_000, 100_000));
    let out = a.apply(&req).unwrap();
    assert!(out.placed.is_empty());
    assert_eq!(
        out.unplaced[0].1.to_string(),
        "0/5 hosts: 2 wrong machine type, 2 insufficient memory, 1 wrong host profile"
    );
    a.check_invariants().unwrap();
}

#[test]
fn profile_switch_is_proposed_then_applied_by_the_caller() {
    let mut a = Allocator::new(AllocatorConfig::default());
    let ent = a
        .add_entitlement("ml", Quota::machines([("small", 2)]))
        .unwrap();
    let h0 = a.add_host(&small(0)).unwrap();
    let h1 = a.add_host(&small(1)).unwrap();
    let req = Request::new(ent, JobId(7))
        .require(Requirements::default().host_profile("hugepages"))
        .allocate(TaskId(1), demand(10_000, 1_000))
        .allocate(TaskId(2), demand(10_000, 1_000));
    let out = a.apply(&req).unwrap();
    assert_eq!(out.unplaced.len(), 2);
    let switches: Vec<_> = out
        .profile_switches
        .iter()
        .map(|s| (s.host, s.from.as_str(), s.to.as_str()))
        .collect();
    // Two 10-core tasks need two 18-core hosts.
    assert_eq!(
        switches,
        vec![(h0, "default", "hugepages"), (h1, "default", "hugepages")]
    );
    // The allocator did not switch anything itself.
    assert_eq!(a.host(h0).unwrap().profile(), "default");
    for s in &out.profile_switches {
        a.apply_profile_switch(s.host, &s.to).unwrap();
    }
    let out = a.apply(&req).unwrap();
    assert_eq!(out.placed.len(), 2, "{:?}", out.unplaced);
    assert_eq!(
        a.apply_profile_switch(h0, "default"),
        Err(AllocError::NotInFreePool(h0))
    );
    a.check_invariants().unwrap();
}

#[test]
fn quota_limits_switch_proposals() {
    let mut a = Allocator::new(AllocatorConfig::default());
    let ent = a
        .add_entitlement("ml", Quota::machines([("small", 1)]))
        .unwrap();
    for r in 0..3 {
        a.add_host(&small(r)).unwrap();
    }
    let req = Request::new(ent, JobId(7))
        .require(Requirements::default().host_profile("hugepages"))
        .allocate(TaskId(1), demand(10_000, 1_000))
        .allocate(TaskId(2), demand(10_000, 1_000));
    let out = a.apply(&req).unwrap();
    assert_eq!(out.profile_switches.len(), 1);
}

#[test]
fn hosts_join_within_quota_and_return_when_empty() {
    let mut a = Allocator::new(AllocatorConfig::default());
    let ent = a
        .add_entitlement("web", Quota::machines([("small", 2)]))
        .unwrap();
    for r in 0..4 {
        a.add_host(&small(r)).unwrap();
    }
    let mut req = Request::new(ent, JobId(1));
    for t in 0..4 {
        req = req.allocate(TaskId(t), demand(8_000, 1_000));
    }
    let out = a.apply(&req).unwrap();
    // Two hosts of 18 cores take two 8-core tasks each; quota stops a third host.
    assert_eq!(out.placed.len(), 4);
    assert_eq!(out.hosts_joined.len(), 2);
    let out = a
        .apply(&Request::new(ent, JobId(1)).allocate(TaskId(9), demand(8_000, 1_000)))
        .unwrap();
    assert!(
        out.unplaced[0]
            .1
            .to_string()
            .contains("2 entitlement quota exhausted"),
        "{}",
        out.unplaced[0].1
    );
    let mut free = Request::new(ent, JobId(1));
    for t in 0..4 {
        free = free.free(TaskId(t));
    }
    let out = a.apply(&free).unwrap();
    assert_eq!(out.hosts_released.len(), 2);
    assert!(a.entitlement_hosts(ent).unwrap().is_empty());
    a.check_invariants().unwrap();
}

#[test]
fn spread_over_racks_and_anti_affinity() {
    let mut a = Allocator::new(AllocatorConfig::default());
    let ent = a
        .add_entitlement("web", Quota::machines([("small", 100)]))
        .unwrap();
    for r in 0..4 {
        for _ in 0..3 {
            a.add_host(&small(r)).unwrap();
        }
    }
    let mut req =
        Request::new(ent, JobId(1)).prefer(Preferences::default().spread(FaultLevel::Rack));
    for t in 0..8 {
        req = req.allocate(TaskId(t), demand(1_000, 1_000));
    }
    let out = a.apply(&req).unwrap();
    let mut per_rack = [0; 4];
    for p in &out.placed {
        let rack = a.host(p.host).unwrap().domain(FaultLevel::Rack).to_owned();
        per_rack[rack
            .trim_start_matches("r1/dc1/p1/rack")
            .parse::<usize>()
            .unwrap()] += 1;
    }
    assert_eq!(per_rack, [2, 2, 2, 2]);

    let mut req = Request::new(ent, JobId(2)).prefer(Preferences::default().max_per_host(1));
    for t in 100..113 {
        req = req.allocate(TaskId(t), demand(100, 100));
    }
    let out = a.apply(&req).unwrap();
    let hosts: BTreeSet<HostId> = out.placed.iter().map(|p| p.host).collect();
    assert_eq!(out.placed.len(), 12);
    assert_eq!(hosts.len(), 12);
    assert_eq!(
        out.unplaced[0].1.to_string(),
        "0/12 hosts: 12 job at its per-host limit"
    );
    a.check_invariants().unwrap();
}

#[test]
fn failure_and_drain_move_tasks() {
    let mut a = Allocator::new(AllocatorConfig::default());
    let ent = a
        .add_entitlement("web", Quota::machines([("small", 100)]))
        .unwrap();
    for r in 0..3 {
        a.add_host(&small(r)).unwrap();
    }
    let out = a
        .apply(
            &Request::new(ent, JobId(1))
                .allocate(TaskId(1), demand(10_000, 1_000))
                .allocate(TaskId(2), demand(10_000, 1_000)),
        )
        .unwrap();
    let first = out.placed[0].host;
    let ev = a.host_down(first).unwrap();
    assert_eq!(ev.moved.len(), 1);
    assert_eq!(ev.hosts_released, vec![first]);
    assert_eq!(a.host(first).unwrap().owner(), Owner::FreePool);
    a.check_invariants().unwrap();
    let busy: Vec<HostId> = a.entitlement_hosts(ent).unwrap();
    assert_eq!(busy.len(), 2);
    // The one other up host has no room for a second 10-core task: the task stays.
    let ev = a.drain(busy[0]).unwrap();
    assert!(ev.moved.is_empty(), "{ev:?}");
    assert_eq!(ev.unplaced.len(), 1);
    assert_eq!(a.task(TaskId(2)).unwrap().0, busy[0]);
    a.check_invariants().unwrap();
    // The failed host is repaired; draining again moves the task and releases the host.
    a.host_up(first).unwrap();
    let ev = a.drain(busy[0]).unwrap();
    assert_eq!(ev.moved.len(), 1, "{ev:?}");
    assert_eq!(ev.hosts_released, vec![busy[0]]);
    a.check_invariants().unwrap();
    // A failure with nowhere to go removes the task: the repaired host holds task 2 and
    // has 8 cores left, the drained one takes nothing.
    assert_eq!(a.host(busy[1]).unwrap().tasks(), &[TaskId(1)]);
    let ev = a.host_down(busy[1]).unwrap();
    assert!(ev.moved.is_empty(), "{ev:?}");
    assert_eq!(ev.unplaced.len(), 1, "{ev:?}");
    assert_eq!(ev.unplaced[0].0, TaskId(1));
    assert_eq!(ev.unplaced[0].1.available, 0);
    assert_eq!(ev.hosts_released, vec![busy[1]]);
    assert_eq!(a.task(TaskId(1)), Err(AllocError::UnknownTask(TaskId(1))));
    assert_eq!(a.task_count(), 1);
    a.check_invariants().unwrap();
}

#[test]
fn resize_in_place_then_move() {
    let mut a = Allocator::new(AllocatorConfig::default());
    let ent = a
        .add_entitlement("web", Quota::machines([("small", 100), ("big", 1)]))
        .unwrap();
    let hosts: Vec<HostId> = (0..2).map(|r| a.add_host(&small(r)).unwrap()).collect();
    let out = a
        .apply(
            &Request::new(ent, JobId(1))
                .allocate(TaskId(1), demand(8_000, 1_000))
                .allocate(TaskId(2), demand(8_000, 1_000)),
        )
        .unwrap();
    // Best fit stacks both on one host.
    let first = out.placed[0].host;
    assert_eq!(out.hosts_joined, vec![first]);
    let other = hosts.into_iter().find(|&h| h != first).unwrap();
    assert!(matches!(
        a.resize(TaskId(1), demand(9_000, 1_000)).unwrap(),
        Resized::InPlace { .. }
    ));
    // The task moves to the other host, which joins the entitlement; the first keeps task 2.
    assert_eq!(
        a.resize(TaskId(1), demand(12_000, 1_000)).unwrap(),
        Resized::Moved {
            moved: Moved {
                task: TaskId(1),
                from: first,
                to: other,
                gpus: GpuGrant::default()
            },
            hosts_joined: vec![other],
            hosts_released: vec![],
        }
    );
    assert!(matches!(
        a.resize(TaskId(1), demand(20_000, 1_000)).unwrap(),
        Resized::Unplaced(_)
    ));
    a.check_invariants().unwrap();
    // A big host appears: the task moves there and the host it leaves goes back to the pool.
    let big_spec = HostSpec::new(Resources::new(36_000, 65_536)).machine_type("big");
    let bigger = a.add_host(&big_spec).unwrap();
    match a.resize(TaskId(1), demand(20_000, 1_000)).unwrap() {
        Resized::Moved {
            moved,
            hosts_joined,
            hosts_released,
        } => {
            assert_eq!((moved.from, moved.to), (other, bigger));
            assert_eq!(hosts_joined, vec![bigger]);
            assert_eq!(hosts_released, vec![other]);
            assert_eq!(a.host(other).unwrap().owner(), Owner::FreePool);
        }
        r => panic!("expected a move, got {r:?}"),
    }
    a.check_invariants().unwrap();
}

#[test]
fn bad_input_is_a_typed_error() {
    let mut a = Allocator::new(AllocatorConfig::default());
    let ent = a
        .add_entitlement("web", Quota::Units(Resources::new(u64::MAX, u64::MAX)))
        .unwrap();
    a.add_host(&HostSpec::new(Resources::new(u64::MAX, u64::MAX)))
        .unwrap();
    a.add_host(&HostSpec::new(Resources::new(u64::MAX, u64::MAX)))
        .unwrap();
    assert_eq!(
        a.host_down(HostId(99)).unwrap_err(),
        AllocError::UnknownHost(HostId(99))
    );
    assert_eq!(
        a.apply(&Request::new(EntitlementId(5), JobId(1)))
            .unwrap_err(),
        AllocError::UnknownEntitlement(EntitlementId(5))
    );
    assert_eq!(
        a.apply(&Request::new(ent, JobId(1)).free(TaskId(3)))
            .unwrap_err(),
        AllocError::UnknownTask(TaskId(3))
    );
    assert_eq!(
        a.resize(TaskId(3), demand(1, 1)).unwrap_err(),
        AllocError::UnknownTask(TaskId(3))
    );
    a.apply(&Request::new(ent, JobId(1)).allocate(TaskId(3), demand(1, 1)))
        .unwrap();
    assert_eq!(
        a.apply(&Request::new(ent, JobId(1)).free(TaskId(3)).free(TaskId(3)))
            .unwrap_err(),
        AllocError::FreedTwice(TaskId(3))
    );
    a.apply(&Request::new(ent, JobId(1)).free(TaskId(3)))
        .unwrap();
    let bad_gpu = Demand {
        resources: Resources::new(1, 1),
        gpu: GpuDemand::Shared(1000),
    };
    assert!(matches!(
        a.apply(&Request::new(ent, JobId(1)).allocate(TaskId(1), bad_gpu)),
        Err(AllocError::InvalidGpuDemand { .. })
    ));
    // Huge sizes: the unit quota adds up without overflowing.
    let out = a
        .apply(
            &Request::new(ent, JobId(1))
                .allocate(TaskId(1), demand(u64::MAX, u64::MAX))
                .allocate(TaskId(2), demand(u64::MAX, 1)),
        )
        .unwrap();
    assert_eq!(out.placed.len(), 1);
    assert_eq!(out.unplaced.len(), 1);
    assert_eq!(
        a.apply(&Request::new(ent, JobId(1)).allocate(TaskId(1), demand(1, 1)))
            .unwrap_err(),
        AllocError::DuplicateTask(TaskId(1))
    );
    assert_eq!(
        a.set_quota(ent, Quota::Units(Resources::new(u64::MAX, 0))),
        Err(AllocError::QuotaBelowUsage {
            entitlement: ent,
            excess: QuotaExcess::Units {
                dimension: 1,
                held: u128::from(u64::MAX),
                limit: 0
            }
        })
    );
    assert_eq!(
        a.set_quota(ent, Quota::machines([]))
            .unwrap_err()
            .to_string(),
        "entitlement 0: new quota is below current use (1 hosts of type default > 0)"
    );
    a.check_invariants().unwrap();
}
