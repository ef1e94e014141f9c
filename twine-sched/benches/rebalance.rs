//! A ReBalancer round on a 50K-host fleet (the target: under one second on one
//! core).
//!
//! The fleet is the synthetic Twine-like one of the allocator bench (4 of 5 hosts small,
//! 18 cores / 64 GiB; racks of 40). Jobs of 36 mixed-size tasks fill it to about 90%,
//! then every other job ends: the holes churn leaves, which the allocator's quick
//! placements never close. A round plans (on a scratch copy) and carries out up to the
//! move budget; the bench times the plan alone and the whole round, at budgets of 100
//! , 1,000 and 10,000 moves, and prints what a round frees.
//!
//! Run: `cargo bench -p twine-sched --bench rebalance`.

use std::hint::black_box;
use std::time::Duration;

use criterion::{BatchSize, Criterion, criterion_group, criterion_main};
use twine_sched::rebalance::{Goal, ReBalancer, RebalanceConfig};
use twine_sched::{
    Allocator, AllocatorConfig, Demand, GpuDemand, JobId, Request, Requirements, Resources, TaskId,
};

#[path = "../examples/support/synthetic.rs"]
mod synthetic;

const HOSTS: usize = 50_000;
const TASKS_PER_JOB: u64 = 36;

/// The fleet after churn, and how many hosts are in use.
fn churned() -> (Allocator, usize) {
    let (mut alloc, ent) = synthetic::fleet(HOSTS, AllocatorConfig::default().with_seed(1));
    let mut jobs = Vec::new();
    let mut next = 0u64;
    // 18 cores x 40,000 small hosts at ~2.25 cores a task: about 90% full, then half.
    for j in 0..8_000u64 {
        let mut req =
            Request::new(ent, JobId(j)).require(Requirements::default().machine_types(["small"]));
        let mut tasks = Vec::new();
        for k in 0..TASKS_PER_JOB {
            let d = Demand {
                resources: Resources::new(500 + (k % 8) * 500, 1024 + (k % 8) * 1024),
                gpu: GpuDemand::None,
            };
            req = req.allocate(TaskId(next), d);
            tasks.push(TaskId(next));
            next += 1;
        }
        let out = alloc.apply(&req).expect("valid request");
        assert!(out.unplaced.is_empty(), "the fleet has room");
        jobs.push((JobId(j), tasks));
    }
    for (job, tasks) in jobs.iter().step_by(2) {
        let mut free = Request::new(ent, *job);
        free.free.extend_from_slice(tasks);
        alloc.apply(&free).expect("free live tasks");
    }
    let in_use = alloc.entitlement_hosts(ent).expect("entitlement").len();
    (alloc, in_use)
}

fn bench(c: &mut Criterion) {
    let (alloc, in_use) = churned();
    let mut group = c.benchmark_group("rebalance_round_50k_hosts");
    group
        .sample_size(10)
        .measurement_time(Duration::from_secs(20));
    for budget in [100usize, 1_000, 10_000] {
        let config = RebalanceConfig::default().with_move_budget(budget);
        // What one round achieves, printed once beside the timings.
        let mut probe = alloc.clone();
        let round = ReBalancer::greedy(config)
            .expect("valid config")
            .round(&mut probe, &Goal::Compact, 0)
            .expect("round");
        eprintln!(
            "rebalance: {HOSTS} hosts, {} tasks, {in_use} in use; budget {budget}: {} moves free {} hosts",
            alloc.task_count(),
            round.moved.len(),
            round.hosts_released.len(),
        );
        assert!(round.moved.len() <= budget);
        group.bench_function(format!("plan/budget_{budget}"), |b| {
            let mut r = ReBalancer::greedy(config).expect("valid config");
            b.iter(|| black_box(r.propose(&alloc, &Goal::Compact, 0).expect("plan")));
        });
        group.bench_function(format!("round/budget_{budget}"), |b| {
            b.iter_batched(
                || {
                    (
                        alloc.clone(),
                        ReBalancer::greedy(config).expect("valid config"),
                    )
                },
                |(mut a, mut r)| black_box(r.round(&mut a, &Goal::Compact, 0).expect("round")),
                BatchSize::LargeInput,
            );
        });
    }
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
