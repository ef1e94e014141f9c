//! Offline packing of the openb trace (8,152 pods) onto identical 96-core / 384 GiB /
//! 8-GPU hosts, every policy in the same run; the host counts are printed beside
//! the timings. The trace is read from `TWINE_TRACE_DIR` (default: the shared
//! data directory next to the repository) and never copied into the project.
#![allow(missing_docs, clippy::print_stderr)]

use std::path::PathBuf;

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use twine_sched::Resources;
use twine_sched::pack::{Hosts, PackPolicy, pack};
use twine_sched::trace::read_pods;

fn trace_dir() -> PathBuf {
    std::env::var_os("TWINE_TRACE_DIR").map_or_else(
        || PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../shared/data/traces"),
        PathBuf::from,
    )
}

fn bench(c: &mut Criterion) {
    let path = trace_dir().join("openb_pod_list_default.csv");
    let Ok(file) = std::fs::File::open(&path) else {
        eprintln!(
            "skipped: no trace at {} (set TWINE_TRACE_DIR)",
            path.display()
        );
        return;
    };
    let pods = read_pods(&path.display().to_string(), file).expect("the trace parses");
    let hosts = Hosts::Identical {
        capacity: Resources::new(96_000, 393_216),
        gpus: 8,
        gpu_model: None,
    };
    let mut group = c.benchmark_group("pack-openb");
    group.sample_size(10);
    group.throughput(Throughput::Elements(pods.len() as u64));
    for policy in PackPolicy::all() {
        let p = pack(&hosts, &pods, policy);
        eprintln!(
            "{:<15} hosts {:>5}  lower bound {}  ratio {:.3}",
            policy.name(),
            p.hosts_used,
            p.lower_bound,
            p.ratio()
        );
        group.bench_function(policy.name(), |b| b.iter(|| pack(&hosts, &pods, policy)));
    }
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
