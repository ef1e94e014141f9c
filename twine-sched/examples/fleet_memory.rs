//! Resident memory of a 1M-host fleet in the allocator, with a task on every tenth host.
//!
//! Run: `cargo run --release -p twine-sched --example fleet_memory [HOSTS]`
//! (Linux: reads VmRSS from /proc/self/status).

use std::time::Instant;

#[path = "support/synthetic.rs"]
mod synthetic;

use twine_sched::{
    AllocatorConfig, Demand, FaultLevel, GpuDemand, JobId, Preferences, Request, Requirements,
    Resources, TaskId,
};

fn vm_rss_kib() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

#[allow(clippy::print_stdout)] // an example reports on stdout
fn main() {
    let hosts: usize = std::env::args()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(1_000_000);
    let before = vm_rss_kib().unwrap_or(0);
    let start = Instant::now();
    let (mut a, ent) = synthetic::fleet(hosts, AllocatorConfig::default());
    let built = start.elapsed();
    let jobs = hosts / 10 / 36;
    let mut placed = 0;
    for j in 0..jobs {
        let mut req = Request::new(ent, JobId(j as u64))
            .require(Requirements::default().machine_types(["small"]))
            .prefer(
                Preferences::default()
                    .spread(FaultLevel::Rack)
                    .max_per_host(1),
            );
        for k in 0..36 {
            req = req.allocate(
                TaskId((j * 36 + k) as u64),
                Demand {
                    resources: Resources::new(2_000, 4_096),
                    gpu: GpuDemand::None,
                },
            );
        }
        placed += a.apply(&req).map_or(0, |o| o.placed.len());
    }
    let after = vm_rss_kib().unwrap_or(0);
    println!(
        "hosts={hosts} tasks={placed} build_s={:.2} total_s={:.2} rss_mib={} (process {} MiB before)",
        built.as_secs_f64(),
        start.elapsed().as_secs_f64(),
        after / 1024,
        before / 1024
    );
}
