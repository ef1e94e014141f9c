//! The ReBalancer case by case: what a proposal says it gains and costs, spread evened
//! out, hosts freed for a profile switch, consent, and typed errors. Every expectation is
//! worked out by hand from the fleet each test builds.

use twine_sched::rebalance::{
    Goal, Greedy, Purpose, RateLimit, ReBalancer, RebalanceConfig, RebalanceError,
};
use twine_sched::{
    Allocator, AllocatorConfig, Demand, EntitlementId, FaultLevel, GpuDemand, HostId, HostSpec,
    JobId, Policy, Preferences, Quota, Request, Resources, TaskId,
};

fn demand(cpu: u64) -> Demand {
    Demand {
        resources: Resources::new(cpu, 1_000),
        gpu: GpuDemand::None,
    }
}

/// `n` hosts of 10 cores, each in its own rack, one entitlement with room for all.
fn fleet(n: usize) -> (Allocator, EntitlementId, Vec<HostId>) {
    let mut a = Allocator::new(AllocatorConfig::default());
    let hosts = (0..n)
        .map(|i| {
            let rack = format!("rack{i}");
            a.add_host(
                &HostSpec::new(Resources::new(10_000, 10_000))
                    .machine_type(if i % 2 == 0 { "even" } else { "odd" })
                    .domain(["r", "dc", "p", &rack]),
            )
            .expect("host")
        })
        .collect();
    let ent = a
        .add_entitlement("e", Quota::Units(Resources::new(1 << 40, 1 << 40)))
        .expect("entitlement");
    (a, ent, hosts)
}

/// Three hosts with one 3-core task each (big tasks placed first, then freed).
fn three_thin_hosts() -> (Allocator, EntitlementId, Vec<HostId>) {
    let (mut a, ent, hosts) = fleet(3);
    let mut big = Request::new(ent, JobId(1));
    for t in 0..3 {
        big = big.allocate(TaskId(t), demand(7_000));
    }
    a.apply(&big).expect("big");
    let mut small = Request::new(ent, JobId(2));
    for t in 10..13 {
        small = small.allocate(TaskId(t), demand(3_000));
    }
    a.apply(&small).expect("small");
    let mut free = Request::new(ent, JobId(1));
    for t in 0..3 {
        free = free.free(TaskId(t));
    }
    a.apply(&free).expect("free");
    assert_eq!(a.entitlement_hosts(ent).expect("hosts").len(), 3);
    (a, ent, hosts)
}

#[test]
fn each_proposal_states_its_gain_and_cost() {
    let (a, _, _) = three_thin_hosts();
    let mut r = ReBalancer::greedy(RebalanceConfig::default()).expect("config");
    let plan = r.propose(&a, &Goal::Compact, 0).expect("plan");
    // Two hosts can be emptied into the third: two proposals of one move each.
    assert_eq!(plan.proposals.len(), 2, "{plan:?}");
    for p in &plan.proposals {
        assert!(matches!(p.purpose, Purpose::EmptyHost { .. }));
        assert_eq!((p.gain.hosts_freed, p.cost.moves), (1, 1));
        assert_eq!(p.cost.resources, Resources::new(3_000, 1_000));
        assert_eq!(p.moves.len(), 1);
        let Purpose::EmptyHost { host } = p.purpose else {
            unreachable!()
        };
        assert_eq!(p.moves[0].from, host);
    }
    assert_eq!(plan.moves(), 2);
}

#[test]
fn a_refused_proposal_is_skipped_whole_and_moves_nothing() {
    let (mut a, ent, _) = three_thin_hosts();
    let mut r = ReBalancer::greedy(RebalanceConfig::default()).expect("config");
    let plan = r.propose(&a, &Goal::Compact, 0).expect("plan");
    let mut asked = 0;
    let round = r
        .execute(&mut a, &plan, 0, |_| {
            asked += 1;
            asked > 1 // the first proposal's jobs say no
        })
        .expect("execute");
    assert_eq!(
        (round.proposed, round.carried_out, round.skipped),
        (2, 1, 1)
    );
    assert_eq!(round.moved.len(), 1);
    assert_eq!(a.entitlement_hosts(ent).expect("hosts").len(), 2);
}

#[test]
fn the_budget_and_the_rate_limit_bound_a_round() {
    let (mut a, ent, _) = three_thin_hosts();
    let config = RebalanceConfig::default()
        .with_move_budget(5)
        .with_rate_limit(RateLimit {
            per_hour: 1,
            burst: 1,
        });
    let mut r = ReBalancer::greedy(config).expect("config");
    assert_eq!(r.budget(0).expect("budget"), 1, "the bucket holds one move");
    let round = r.round(&mut a, &Goal::Compact, 0).expect("round");
    assert_eq!(round.moved.len(), 1);
    assert_eq!(
        r.budget(1_000).expect("budget"),
        0,
        "spent, not yet refilled"
    );
    let round = r.round(&mut a, &Goal::Compact, 1_000).expect("round");
    assert!(round.moved.is_empty());
    let round = r.round(&mut a, &Goal::Compact, 3_600_000).expect("round");
    assert_eq!(round.moved.len(), 1, "an hour later, one more");
    assert_eq!(a.entitlement_hosts(ent).expect("hosts").len(), 1);
}

#[test]
fn time_going_back_and_zero_rates_are_typed_errors() {
    let (mut a, _, _) = three_thin_hosts();
    let mut r = ReBalancer::greedy(RebalanceConfig::default()).expect("config");
    r.round(&mut a, &Goal::Compact, 10_000).expect("round");
    let e = r.round(&mut a, &Goal::Compact, 5_000).unwrap_err();
    assert_eq!(
        e,
        RebalanceError::TimeWentBack {
            now_ms: 5_000,
            last_ms: 10_000
        }
    );
    let e = ReBalancer::greedy(RebalanceConfig::default().with_rate_limit(RateLimit {
        per_hour: 5,
        burst: 0,
    }))
    .unwrap_err();
    assert!(e.to_string().contains("rate_limit.burst"), "{e}");
}

#[test]
fn respread_moves_a_job_from_its_fullest_rack_to_its_emptiest() {
    // Four single-host racks. A job spread by rack lands with 3 tasks on one host
    // (its other racks were full when it arrived), then room appears elsewhere.
    let (mut a, ent, hosts) = fleet(4);
    let mut fill = Request::new(ent, JobId(9));
    for (t, _) in hosts.iter().enumerate().skip(1) {
        fill = fill.allocate(TaskId(100 + t as u64), demand(10_000));
    }
    a.apply(&fill).expect("fill");
    let spread = Preferences::default().spread(FaultLevel::Rack);
    let mut job = Request::new(ent, JobId(1)).prefer(spread);
    for t in 0..3 {
        job = job.allocate(TaskId(t), demand(2_000));
    }
    a.apply(&job).expect("job");
    let tasks_on = |a: &Allocator, h: HostId| -> Vec<u64> {
        a.host(h)
            .expect("host")
            .tasks()
            .iter()
            .map(|t| t.0)
            .collect()
    };
    let open = *hosts
        .iter()
        .find(|&&h| tasks_on(&a, h).iter().all(|&t| t < 100))
        .expect("one host was left with room");
    assert_eq!(
        tasks_on(&a, open).len(),
        3,
        "all three share the only host with room"
    );
    // Two of the fillers end: their hosts (racks) have room now.
    let mut free = Request::new(ent, JobId(9));
    for t in [101u64, 102] {
        free = free.free(TaskId(t));
    }
    a.apply(&free).expect("free");
    let mut r = ReBalancer::new(
        RebalanceConfig::default(),
        Box::new(Greedy::default().with_max_sources(0)),
    )
    .expect("config");
    let round = r.round(&mut a, &Goal::Compact, 0).expect("round");
    // The job's racks hold 3, 0, 0 (and one full): two moves bring the gap to one.
    assert_eq!(round.moved.len(), 2, "{round:?}");
    let mut per_rack: Vec<usize> = hosts
        .iter()
        .map(|&h| tasks_on(&a, h).iter().filter(|&&t| t < 100).count())
        .collect();
    per_rack.sort_unstable();
    assert_eq!(per_rack, [0, 1, 1, 1], "{per_rack:?}");
    assert_eq!(tasks_on(&a, open).len(), 1);
    // Emptying hosts never undoes it: the job's three hosts hold one task each, and a
    // compacting round may not stack two of them in one rack again.
    let mut compact = ReBalancer::greedy(RebalanceConfig::default()).expect("config");
    let again = compact.round(&mut a, &Goal::Compact, 1).expect("round");
    assert!(again.moved.is_empty(), "{again:?}");
}

#[test]
fn free_hosts_empties_as_many_as_asked_of_the_machine_type() {
    let (mut a, ent, hosts) = fleet(6);
    // Six hosts with a 3-core task each (big ones first, then freed).
    let mut big = Request::new(ent, JobId(1)).prefer(Preferences::default().policy(Policy::Spread));
    for t in 0..6 {
        big = big.allocate(TaskId(t), demand(7_000));
    }
    a.apply(&big).expect("big");
    let mut small = Request::new(ent, JobId(2));
    for t in 10..16 {
        small = small.allocate(TaskId(t), demand(3_000));
    }
    a.apply(&small).expect("small");
    let mut free = Request::new(ent, JobId(1));
    for t in 0..6 {
        free = free.free(TaskId(t));
    }
    a.apply(&free).expect("free");
    let mut r = ReBalancer::greedy(RebalanceConfig::default()).expect("config");
    let goal = Goal::FreeHosts {
        count: 2,
        machine_type: Some("odd".to_owned()),
    };
    let round = r.round(&mut a, &goal, 0).expect("round");
    assert_eq!(round.hosts_released.len(), 2, "{round:?}");
    for h in &round.hosts_released {
        assert_eq!(a.host(*h).expect("host").machine_type(), "odd");
    }
    assert_eq!(a.entitlement_hosts(ent).expect("hosts").len(), 4);
    assert!(hosts.iter().all(|h| a.host(*h).is_ok()));
}
