//! Planning a rollout's waves over a synthetic Twine-like fleet (the simulator's: small
//! and big hosts on two host profiles, racks of 40, 10 racks per power domain, 10 power
//! domains per datacenter). Building the allocator is setup, not timed.
//!
//! Run: `cargo bench -p twine-sched --bench rollout`.

use std::hint::black_box;
use std::time::Duration;

use criterion::{Criterion, criterion_group, criterion_main};
use twine_sched::rollout::{PlanConfig, plan, sim};

fn plan_waves(c: &mut Criterion) {
    let mut group = c.benchmark_group("rollout_plan");
    group
        .sample_size(10)
        .measurement_time(Duration::from_secs(20));
    for hosts in [100_000usize, 1_000_000] {
        let (alloc, _) = sim::fleet(hosts).expect("synthetic fleet");
        let config = PlanConfig::default();
        group.bench_function(format!("{hosts}_hosts"), |b| {
            b.iter(|| black_box(plan(&alloc, &config).expect("plan")));
        });
    }
    group.finish();
}

criterion_group!(benches, plan_waves);
criterion_main!(benches);
