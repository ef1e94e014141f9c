//! Every placement policy side by side on synthetic Twine-like fleets: the same
//! workload is placed online, job by job, and we report how many hosts each
//! policy pulled out of the free pool into the entitlement (fewer is better
//! packing) and how fast it placed; once with packing alone, once with each
//! job also spread evenly over power domains (Twine's default for services).
//!
//! Fleets: 4 of 5 hosts are Twine's small machine (18 cores, 64 GiB), 1 of 5 a big
//! stacking host (96 cores, 384 GiB, 8 GPUs); 40 hosts per rack, 10 racks per power
//! domain, 10 power domains per datacenter. Workload: 36-task jobs; 3 of 4 are CPU
//! jobs on small machines (0.5-4 cores, 1-8 GiB), 1 of 4 GPU jobs on big hosts
//! (2-12 cores, 8-64 GiB, a share of a GPU or 1-2 whole GPUs), totalling about a
//! quarter of the fleet's CPU.
//!
//! Run: `cargo run --release -p twine-sched --example fleet_policies -- [HOSTS...]`
//! (default 5000 50000 170000 1000000).
#![allow(clippy::print_stdout, clippy::cast_precision_loss, missing_docs)]

use std::time::Instant;

#[path = "support/synthetic.rs"]
mod synthetic;

use twine_sched::{
    AllocatorConfig, Demand, FaultLevel, GpuDemand, JobId, Policy, Preferences, Request,
    Requirements, Resources, TaskId,
};

/// One run: hosts pulled into the entitlement, tasks placed and unplaced, placements
/// per second, and the most tasks of one job in one power domain (over the last 100 jobs).
fn run(hosts: usize, policy: Policy, spread: bool) -> (usize, usize, usize, f64, usize) {
    let (mut a, ent) = synthetic::fleet(hosts, AllocatorConfig::default().with_seed(1));
    // About a quarter of the fleet's CPU: small hosts carry 4/5 of the hosts.
    let target_cpu = hosts as u64 * (4 * 18_000 + 96_000) / 5 / 4;
    let (mut placed, mut unplaced, mut cpu, mut task) = (0, 0, 0u64, 0u64);
    let start = Instant::now();
    let mut job = 0u64;
    let mut jobs: Vec<Vec<TaskId>> = Vec::new();
    while cpu < target_cpu {
        let gpu_job = job % 4 == 3;
        let machine = if gpu_job { "big" } else { "small" };
        let mut req = Request::new(ent, JobId(job))
            .require(Requirements::default().machine_types([machine]))
            .prefer(if spread {
                Preferences::default()
                    .policy(policy)
                    .spread(FaultLevel::PowerDomain)
            } else {
                Preferences::default().policy(policy)
            });
        for k in 0..36u64 {
            let v = (job * 7 + k * 13) % 8;
            let demand = if gpu_job {
                let gpu = match v % 4 {
                    0 => GpuDemand::Whole(1),
                    1 => GpuDemand::Whole(2),
                    2 => GpuDemand::Shared(500),
                    _ => GpuDemand::Shared(250),
                };
                Demand {
                    resources: Resources::new(2_000 + v * 1_500, 8_192 * (1 + v)),
                    gpu,
                }
            } else {
                Demand {
                    resources: Resources::new(500 + v * 500, 1_024 + v * 1_024),
                    gpu: GpuDemand::None,
                }
            };
            cpu += demand.resources.cpu_milli;
            req = req.allocate(TaskId(task), demand);
            task += 1;
        }
        jobs.push(req.allocate.iter().map(|(t, _)| *t).collect());
        let out = a.apply(&req).expect("valid request");
        placed += out.placed.len();
        unplaced += out.unplaced.len();
        job += 1;
    }
    let seconds = start.elapsed().as_secs_f64();
    let used = a.entitlement_hosts(ent).expect("entitlement").len();
    let mut most_in_domain = 0;
    for tasks in jobs.iter().rev().take(100) {
        let mut per_domain: std::collections::BTreeMap<String, usize> =
            std::collections::BTreeMap::new();
        for &t in tasks {
            if let Ok((host, _)) = a.task(t) {
                let domain = a
                    .host(host)
                    .expect("host")
                    .domain(FaultLevel::PowerDomain)
                    .to_owned();
                *per_domain.entry(domain).or_default() += 1;
            }
        }
        most_in_domain = most_in_domain.max(per_domain.values().copied().max().unwrap_or(0));
    }
    (
        used,
        placed,
        unplaced,
        placed as f64 / seconds,
        most_in_domain,
    )
}

fn main() {
    let sizes: Vec<usize> = std::env::args()
        .skip(1)
        .filter_map(|a| a.parse().ok())
        .collect();
    let sizes = if sizes.is_empty() {
        vec![5_000, 50_000, 170_000, 1_000_000]
    } else {
        sizes
    };
    println!(
        "{:>9} {:<13} {:<15} {:>10} {:>9} {:>9} {:>14} {:>18}",
        "fleet",
        "preference",
        "policy",
        "hosts used",
        "placed",
        "unplaced",
        "placements/s",
        "max/job/power dom"
    );
    for hosts in sizes {
        for spread in [false, true] {
            let mode = if spread { "spread:power" } else { "pack" };
            for policy in Policy::ALL {
                let (used, placed, unplaced, rate, most) = run(hosts, policy, spread);
                println!(
                    "{hosts:>9} {mode:<13} {:<15} {used:>10} {placed:>9} {unplaced:>9} {rate:>14.0} {most:>18}",
                    policy.name()
                );
            }
        }
    }
}
