//! The MIP solver of the ReBalancer (feature `lp`): on random small fleets its plans stay
//! within the budget and every move is accepted by `Allocator::move_task` in order, each
//! proposal emptying its host; on a constructed fleet it frees a host that Greedy's
//! largest-first best fit cannot. `PROPTEST_CASES=N` runs N cases instead of 64.

// The fleet builders are helpers of the tests: a panic with its message is the report.
#![allow(clippy::unwrap_used)]

mod support;

use proptest::prelude::*;
use twine_sched::rebalance::{Goal, Greedy, Mip, Purpose, ReBalancer, RebalanceConfig, Solver};
use twine_sched::{
    Allocator, AllocatorConfig, Demand, GpuDemand, HostSpec, JobId, Owner, Preferences, Quota,
    Request, Resources, TaskId,
};

fn cpu(milli: u64) -> Demand {
    Demand {
        resources: Resources::new(milli, 1),
        gpu: GpuDemand::None,
    }
}

/// Applies every move of `plan` in order on a copy of `alloc`; each must be accepted and
/// each proposal must leave its host empty and back in the free pool.
fn replay(alloc: &Allocator, plan: &twine_sched::rebalance::Plan) -> Result<Allocator, String> {
    let mut work = alloc.clone();
    for p in &plan.proposals {
        for m in &p.moves {
            work.move_task(m.task, m.to)
                .map_err(|e| format!("{m:?} of {:?}: {e}", p.purpose))?;
        }
        if let Purpose::EmptyHost { host } = p.purpose {
            let h = work.host(host).map_err(|e| e.to_string())?;
            if !h.tasks().is_empty() || h.owner() != Owner::FreePool {
                return Err(format!("{host:?} not emptied: {:?}", h.tasks()));
            }
        }
    }
    work.check_invariants()?;
    Ok(work)
}

/// A source holding 5, 4, 3, 3, 3 and 2 cores and two other hosts with 10 cores free
/// each: the six fit only as {5, 3, 2} and {4, 3, 3}. Largest first with best fit puts
/// 5 and 4 together and then has no room for the 2, so Greedy frees nothing; the MIP
/// finds the split.
fn bin_packing_trap() -> (Allocator, twine_sched::HostId) {
    let mut a = Allocator::new(AllocatorConfig::default());
    let ent = a
        .add_entitlement("e", Quota::Units(Resources::new(1_000_000, 1_000_000)))
        .unwrap();
    let src = a
        .add_host(&HostSpec::new(Resources::new(40_000, 1_000)))
        .unwrap();
    let mut small = Request::new(ent, JobId(1));
    for (i, c) in [5, 4, 3, 3, 3, 2].into_iter().enumerate() {
        small = small.allocate(TaskId(i as u64), cpu(c * 1_000));
    }
    assert_eq!(a.apply(&small).unwrap().placed.len(), 6);
    // The destinations join only now, so the small tasks all sit on the source.
    let mut filler = Request::new(ent, JobId(2));
    for i in 0..2 {
        a.add_host(&HostSpec::new(Resources::new(100_000, 1_000)))
            .unwrap();
        filler = filler.allocate(TaskId(100 + i), cpu(90_000));
    }
    assert_eq!(a.apply(&filler).unwrap().placed.len(), 2);
    (a, src)
}

#[test]
fn mip_frees_a_host_greedy_cannot() {
    let (alloc, src) = bin_packing_trap();
    let greedy = Greedy::default().plan(&alloc, &Goal::Compact, 100).unwrap();
    assert_eq!(greedy.proposals.len(), 0, "{greedy:?}");
    let round = Mip::default().solve(&alloc, &Goal::Compact, 100).unwrap();
    assert_eq!(round.plan.proposals.len(), 1, "{round:?}");
    assert_eq!(
        round.plan.proposals[0].purpose,
        Purpose::EmptyHost { host: src }
    );
    assert!(round.proven_optimal);
    assert_eq!((round.dropped, round.repaired), (0, 0));
    replay(&alloc, &round.plan).unwrap();
    // Through the ReBalancer: the host goes back to the pool.
    let mut alloc = alloc;
    let mut rb = ReBalancer::new(RebalanceConfig::default(), Box::new(Mip::default())).unwrap();
    let r = rb.round(&mut alloc, &Goal::Compact, 0).unwrap();
    assert_eq!(r.hosts_released, vec![src]);
    assert_eq!(r.moved.len(), 6);
}

/// A budget below the source's six tasks, or a goal of zero hosts, means no proposal.
#[test]
fn mip_respects_budget_and_goal() {
    let (alloc, _) = bin_packing_trap();
    let round = Mip::default().solve(&alloc, &Goal::Compact, 5).unwrap();
    assert!(round.plan.proposals.is_empty(), "{round:?}");
    let goal = Goal::FreeHosts {
        count: 0,
        machine_type: None,
    };
    assert!(
        Mip::default()
            .solve(&alloc, &goal, 100)
            .unwrap()
            .plan
            .proposals
            .is_empty()
    );
}

/// A job: its entitlement (0 or 1), its per-host limit, its tasks (CPU, memory, GPUs).
type Job = (usize, Option<u32>, Vec<(u64, u64, GpuDemand)>);

#[derive(Debug, Clone)]
struct Fleet {
    hosts: Vec<(u64, u64, u8)>,
    jobs: Vec<Job>,
    frees: Vec<usize>,
}

fn gpu_demand() -> impl Strategy<Value = GpuDemand> {
    prop_oneof![
        4 => Just(GpuDemand::None),
        2 => (1u16..1000).prop_map(GpuDemand::Shared),
        1 => (1u8..=2).prop_map(GpuDemand::Whole),
    ]
}

fn fleet() -> impl Strategy<Value = Fleet> {
    let host = (4_000u64..16_000, 4_096u64..32_768, 0u8..=3);
    let task = (500u64..6_000, 256u64..8_192, gpu_demand());
    let job = (
        0usize..2,
        prop_oneof![3 => Just(None), 1 => (1u32..3).prop_map(Some)],
        proptest::collection::vec(task, 1..8),
    );
    (
        proptest::collection::vec(host, 2..12),
        proptest::collection::vec(job, 1..10),
        proptest::collection::vec(0usize..1000, 0..20),
    )
        .prop_map(|(hosts, jobs, frees)| Fleet { hosts, jobs, frees })
}

/// Builds the fleet through the public API: two entitlements, jobs placed, then some
/// tasks freed so hosts are left part-empty.
fn build(f: &Fleet) -> Allocator {
    let mut a = Allocator::new(AllocatorConfig::default().with_seed(3));
    let ents: Vec<_> = (0..2)
        .map(|i| {
            a.add_entitlement(
                &format!("e{i}"),
                Quota::Units(Resources::new(1_000_000, 1_000_000)),
            )
            .unwrap()
        })
        .collect();
    for &(cpu, mem, gpus) in &f.hosts {
        let spec = HostSpec::new(Resources::new(cpu, mem));
        let spec = if gpus > 0 { spec.gpus(gpus, "g") } else { spec };
        a.add_host(&spec).unwrap();
    }
    let mut placed: Vec<(JobId, usize, TaskId)> = Vec::new();
    let mut next = 0u64;
    for (j, (ent, max_per_host, tasks)) in f.jobs.iter().enumerate() {
        let job = JobId(j as u64);
        let mut prefs = Preferences::default();
        if let Some(k) = max_per_host {
            prefs = prefs.max_per_host(*k);
        }
        let mut req = Request::new(ents[*ent], job).prefer(prefs);
        for &(cpu, mem, gpu) in tasks {
            req = req.allocate(
                TaskId(next),
                Demand {
                    resources: Resources::new(cpu, mem),
                    gpu,
                },
            );
            next += 1;
        }
        for p in a.apply(&req).unwrap().placed {
            placed.push((job, *ent, p.task));
        }
    }
    let mut freed = std::collections::HashSet::new();
    for &i in &f.frees {
        if placed.is_empty() {
            break;
        }
        let (job, ent, task) = placed[i % placed.len()];
        if freed.insert(task) {
            a.apply(&Request::new(ents[ent], job).free(task)).unwrap();
        }
    }
    a
}

proptest! {
    #![proptest_config(support::proptest_config(64))]

    #[test]
    fn mip_plans_are_within_budget_and_valid_in_order(
        f in fleet(),
        budget in 0usize..20,
        free_hosts in proptest::option::of(0usize..4),
        sources in 1usize..6,
        destinations in 1usize..6,
    ) {
        let alloc = build(&f);
        let goal = match free_hosts {
            None => Goal::Compact,
            Some(count) => Goal::FreeHosts { count, machine_type: None },
        };
        let mip = Mip::default().with_max_sources(sources).with_max_destinations(destinations);
        let round = mip.solve(&alloc, &goal, budget).unwrap();
        prop_assert!(round.plan.moves() <= budget, "{round:?}");
        if let Some(count) = free_hosts {
            prop_assert!(round.plan.proposals.len() <= count);
        }
        prop_assert_eq!(round.plan.proposals.len(), round.chosen - round.dropped);
        if let Err(e) = replay(&alloc, &round.plan) {
            prop_assert!(false, "{}: {:?}", e, round);
        }
    }
}
