//! Offline packing of the openb trace (8,152 pods) onto identical 96-core / 384 GiB /
//! 8-GPU hosts, every policy in the same run. Before timing a policy, the bench asserts
//! the host count docs/BENCHMARKS.md publishes for it (the same table
//! `tests/openb_figures.rs` checks). The trace is read from `TWINE_TRACE_DIR` (default:
//! the shared data directory next to the repository) and never copied into the project.
#![allow(missing_docs)]

#[path = "../tests/support/mod.rs"]
mod support;

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use twine_sched::pack::{PackPolicy, pack};

fn bench(c: &mut Criterion) {
    let Some(support::Openb { hosts, pods, .. }) = support::openb() else {
        return;
    };
    let mut group = c.benchmark_group("pack-openb");
    group.sample_size(10);
    group.throughput(Throughput::Elements(pods.len() as u64));
    for policy in PackPolicy::all() {
        let p = pack(&hosts, &pods, policy).expect("the packer's bookkeeping holds");
        assert_eq!(
            (p.hosts_used, p.lower_bound),
            (
                support::published_hosts(policy.name(), false),
                support::LOWER_BOUND
            ),
            "{}: hosts and lower bound differ from docs/BENCHMARKS.md",
            policy.name()
        );
        group.bench_function(policy.name(), |b| b.iter(|| pack(&hosts, &pods, policy)));
    }
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
