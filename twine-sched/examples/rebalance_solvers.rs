//! The ReBalancer's solvers side by side: Greedy (least-loaded host first, each task best
//! fit) against Mip (which hosts to empty and where each task goes, decided together on
//! microlp), round after round on the same fragmented fleet.
//!
//! Fleet: the synthetic Twine-like one (4 of 5 hosts 18 cores / 64 GiB, 1 of 5 96 cores /
//! 384 GiB / 8 GPUs), filled by 8-task jobs (3 of 4 CPU jobs on small machines, 1 of 4 GPU
//! jobs on big hosts) to about 70% of its CPU, then every other job's tasks freed at
//! random (seeded), leaving many part-empty hosts in the entitlement. Each round proposes
//! with a budget of moves and carries the plan out; we report hosts freed, moves and the
//! time to propose.
//!
//! Run: `cargo run --release -p twine-sched --features lp --example rebalance_solvers --
//! [HOSTS [BUDGET [ROUNDS]]]` (default 400 100 5).
#![allow(clippy::print_stdout, clippy::cast_precision_loss, missing_docs)]

use std::time::Instant;

#[path = "support/synthetic.rs"]
mod synthetic;

use twine_sched::rebalance::{Goal, Greedy, Mip, Plan, ReBalancer, RebalanceConfig, Solver};
use twine_sched::{
    Allocator, AllocatorConfig, Demand, GpuDemand, JobId, Request, Requirements, Resources, TaskId,
};

/// A small deterministic generator (SplitMix64), so runs are reproducible.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
    fn range(&mut self, lo: u64, hi: u64) -> u64 {
        lo + self.next() % (hi - lo)
    }
}

fn fragmented_fleet(hosts: usize) -> anyhow::Result<Allocator> {
    let (mut a, ent) = synthetic::fleet(hosts, AllocatorConfig::default().with_seed(1));
    let mut rng = Rng(7);
    let target_cpu = hosts as u64 * (4 * 18_000 + 96_000) / 5 * 7 / 10;
    let (mut cpu, mut task) = (0u64, 0u64);
    let mut jobs: Vec<(JobId, Vec<TaskId>)> = Vec::new();
    let mut failures = 0;
    while cpu < target_cpu && failures < 50 {
        let job = JobId(jobs.len() as u64);
        let gpu_job = jobs.len() % 4 == 3;
        let machine = if gpu_job { "big" } else { "small" };
        let mut req =
            Request::new(ent, job).require(Requirements::default().machine_types([machine]));
        for _ in 0..8 {
            let demand = if gpu_job {
                let gpu = match rng.range(0, 3) {
                    0 => GpuDemand::Shared(u16::try_from(rng.range(100, 1000))?),
                    1 => GpuDemand::Whole(1),
                    _ => GpuDemand::Whole(u8::try_from(rng.range(1, 3))?),
                };
                Demand {
                    resources: Resources::new(rng.range(2_000, 12_000), rng.range(8_192, 65_536)),
                    gpu,
                }
            } else {
                Demand {
                    resources: Resources::new(rng.range(500, 4_000), rng.range(1_024, 8_192)),
                    gpu: GpuDemand::None,
                }
            };
            req = req.allocate(TaskId(task), demand);
            task += 1;
        }
        let out = a.apply(&req)?;
        if out.placed.is_empty() {
            failures += 1;
        }
        for p in &out.placed {
            cpu += a.task_view(p.task)?.demand.resources.cpu_milli;
        }
        jobs.push((job, out.placed.iter().map(|p| p.task).collect()));
    }
    // Every other job loses a random half of its tasks.
    for (i, (job, tasks)) in jobs.iter().enumerate() {
        if i % 2 == 0 {
            continue;
        }
        let mut req = Request::new(ent, *job);
        for &t in tasks {
            if rng.range(0, 2) == 0 {
                req = req.free(t);
            }
        }
        a.apply(&req)?;
    }
    Ok(a)
}

fn in_use(a: &Allocator) -> usize {
    (0..a.host_count())
        .filter(|&i| {
            u32::try_from(i)
                .ok()
                .and_then(|i| a.host(twine_sched::HostId(i)).ok())
                .is_some_and(|h| !h.tasks().is_empty())
        })
        .count()
}

fn main() -> anyhow::Result<()> {
    let args: Vec<usize> = std::env::args()
        .skip(1)
        .map(|s| s.parse())
        .collect::<Result<_, _>>()?;
    let hosts = args.first().copied().unwrap_or(400);
    let budget = args.get(1).copied().unwrap_or(100);
    let rounds = args.get(2).copied().unwrap_or(5);
    let fleet = fragmented_fleet(hosts)?;
    println!(
        "{hosts} hosts, {} tasks on {} hosts in use; budget {budget} moves a round",
        fleet.task_count(),
        in_use(&fleet)
    );
    let mip = Mip::default();
    let solvers: Vec<(&str, Box<dyn Solver>)> = vec![
        ("greedy", Box::new(Greedy::default())),
        (
            "greedy-32",
            Box::new(Greedy::default().with_max_sources(32)),
        ),
        ("mip", Box::new(mip)),
    ];
    let mut totals = Vec::new();
    for (name, solver) in solvers {
        let mut a = fleet.clone();
        let mut rb = ReBalancer::new(
            RebalanceConfig::default().with_move_budget(budget),
            Box::new(Greedy::default()),
        )?;
        let (mut freed, mut moves, mut secs) = (0, 0, 0.0);
        for r in 1..=rounds {
            let start = Instant::now();
            let (plan, note): (Plan, String) = if name == "mip" {
                let round = mip.solve(&a, &Goal::Compact, budget)?;
                let note = format!(
                    " [{} sources, {} destinations, {} vars, {} rows, {} nodes, optimal {}, chosen {}, dropped {}, repaired {}]",
                    round.sources,
                    round.destinations,
                    round.variables,
                    round.constraints,
                    round.nodes,
                    round.proven_optimal,
                    round.chosen,
                    round.dropped,
                    round.repaired
                );
                (round.plan, note)
            } else {
                (solver.plan(&a, &Goal::Compact, budget)?, String::new())
            };
            let took = start.elapsed().as_secs_f64();
            let done = rb.execute(&mut a, &plan, 0, |_| true)?;
            freed += done.hosts_released.len();
            moves += done.moved.len();
            secs += took;
            println!(
                "{name:>9} round {r}: freed {:>3} hosts with {:>3} moves in {:>8.1} ms{note}",
                done.hosts_released.len(),
                done.moved.len(),
                took * 1e3
            );
        }
        println!(
            "{name:>9} total: freed {freed} hosts with {moves} moves in {:.1} ms; {} hosts in use",
            secs * 1e3,
            in_use(&a)
        );
        totals.push((name, freed, moves, in_use(&a)));
    }
    // With the default arguments, the figures docs/BENCHMARKS.md states.
    if (hosts, budget, rounds) == (400, 100, 5) {
        let want = [
            ("greedy", 82, 292, 282),
            ("greedy-32", 82, 292, 282),
            ("mip", 82, 291, 282),
        ];
        anyhow::ensure!(
            totals == want,
            "the figures changed: {totals:?}, docs/BENCHMARKS.md has {want:?}"
        );
        println!("figures as in docs/BENCHMARKS.md");
    }
    Ok(())
}
