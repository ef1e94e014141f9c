//! `Allocator::place_at`: rebuilding an allocator from placements a store recorded.
//! A fleet is filled by `apply` at random; a second allocator, built from the same
//! hosts, takes the recorded (task, host) pairs through `place_at` and must end with
//! the same free capacity and owner on every host, its books intact. Placements the
//! rules refuse are refused whole, naming the task, with nothing changed.

#![allow(clippy::unwrap_used, clippy::cast_possible_truncation)] // tests: a failed unwrap is a failed test

use proptest::prelude::*;
use twine_sched::*;

fn fleet(hosts: usize, seed: u64) -> (Allocator, Vec<HostId>, Vec<EntitlementId>) {
    let mut a = Allocator::new(AllocatorConfig::default().with_seed(seed));
    let ids = (0..hosts)
        .map(|i| {
            let spec = HostSpec::new(Resources::new(16_000, 65_536))
                .machine_type("m")
                .domain(["r", "dc", "pd", &format!("rack{}", i / 4)]);
            a.add_host(&spec).unwrap()
        })
        .collect();
    let ents = ["a", "b"]
        .iter()
        .map(|e| {
            a.add_entitlement(e, Quota::machines([("m", hosts as u32 / 2)]))
                .unwrap()
        })
        .collect();
    (a, ids, ents)
}

fn demand(cpu: u64, mem: u64) -> Demand {
    Demand {
        resources: Resources::new(cpu, mem),
        gpu: GpuDemand::None,
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    #[test]
    fn place_at_rebuilds_what_apply_placed(
        jobs in prop::collection::vec((0usize..2, 1u32..12, 500u64..6_000, 512u64..20_000, any::<bool>()), 1..12),
        seed in any::<u64>(),
    ) {
        let (mut live, hosts, ents) = fleet(24, seed);
        let mut recorded = Vec::new();
        let mut next = 0u64;
        for (j, &(e, n, cpu, mem, spread)) in jobs.iter().enumerate() {
            let mut req = Request::new(ents[e], JobId(j as u64));
            if spread {
                req = req.prefer(Preferences::default().spread(FaultLevel::Rack).max_per_host(2));
            }
            for _ in 0..n {
                req = req.allocate(TaskId(next), demand(cpu, mem));
                next += 1;
            }
            let out = live.apply(&req).unwrap();
            let placed: Vec<(TaskId, HostId)> = out.placed.iter().map(|p| (p.task, p.host)).collect();
            recorded.push((e, j, cpu, mem, spread, placed));
        }
        // Rebuild in another order (jobs reversed), as a store's key order would.
        let (mut rebuilt, _, ents2) = fleet(24, seed ^ 1);
        for (e, j, cpu, mem, spread, placed) in recorded.iter().rev() {
            if placed.is_empty() {
                continue;
            }
            let mut req = Request::new(ents2[*e], JobId(*j as u64));
            if *spread {
                req = req.prefer(Preferences::default().spread(FaultLevel::Rack).max_per_host(2));
            }
            let mut at = Vec::new();
            for &(t, h) in placed {
                req = req.allocate(t, demand(*cpu, *mem));
                at.push(h);
            }
            rebuilt.place_at(&req, &at).unwrap();
        }
        rebuilt.check_invariants().unwrap();
        prop_assert_eq!(rebuilt.task_count(), live.task_count());
        for &h in &hosts {
            let (x, y) = (live.host(h).unwrap(), rebuilt.host(h).unwrap());
            prop_assert_eq!(x.free(), y.free(), "host {:?}", h);
            prop_assert_eq!(x.owner(), y.owner(), "host {:?}", h);
        }
    }
}

#[test]
fn a_refused_placement_changes_nothing() {
    let (mut a, hosts, ents) = fleet(4, 3);
    let big = demand(10_000, 1_024);
    let req = Request::new(ents[0], JobId(1))
        .allocate(TaskId(1), big)
        .allocate(TaskId(2), big);
    // Both on one 16-CPU host: the second does not fit, so neither is placed.
    let err = a.place_at(&req, &[hosts[0], hosts[0]]).unwrap_err();
    assert!(
        matches!(err, AllocError::PlaceAtRefused { task: TaskId(2), host, .. } if host == hosts[0]),
        "{err}"
    );
    assert_eq!(a.task_count(), 0);
    assert_eq!(
        a.host(hosts[0]).unwrap().free(),
        Resources::new(16_000, 65_536)
    );
    assert_eq!(a.host(hosts[0]).unwrap().owner(), Owner::FreePool);
    a.check_invariants().unwrap();
    // A host of another entitlement is refused too.
    a.place_at(
        &Request::new(ents[1], JobId(2)).allocate(TaskId(3), demand(100, 100)),
        &[hosts[1]],
    )
    .unwrap();
    let err = a
        .place_at(
            &Request::new(ents[0], JobId(1)).allocate(TaskId(4), demand(100, 100)),
            &[hosts[1]],
        )
        .unwrap_err();
    assert!(err.to_string().contains("cannot be placed on"), "{err}");
    // Mismatched lengths and frees are typed errors.
    let err = a
        .place_at(
            &Request::new(ents[0], JobId(1)).allocate(TaskId(5), demand(1, 1)),
            &[],
        )
        .unwrap_err();
    assert!(
        matches!(
            err,
            AllocError::PlaceAtMismatch {
                tasks: 1,
                hosts: 0,
                frees: 0
            }
        ),
        "{err}"
    );
    a.check_invariants().unwrap();
}
