//! Log store append throughput, in lines per second: batches of journal-like
//! lines (a 60-byte message, a systemd cursor) appended with one fdatasync per
//! batch, under a budget that makes the store rotate, and reading back.
//!
//! Run: `cargo bench -p twine-agent --bench logs`. The store lives in
//! `TMPDIR` (default `/tmp`), so the figure depends on that file system's
//! fdatasync. The end-to-end journald → store figure comes from the host test
//! `host_logs` (printed, not asserted).

use std::hint::black_box;
use std::time::Duration;

use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use twine_agent::logs::{LogStore, NewLine, StoreBudget};

fn batch(n: u64) -> Vec<NewLine> {
    (0..n)
        .map(|i| NewLine {
            realtime_usec: 1_700_000_000_000_000 + i,
            machine: "976c2f4b9602492d96d2d14641e22032".into(),
            unit: "web.service".into(),
            message: format!("GET /api/v1/items/{i:08} 200 1532 bytes in 3.2 ms from 10.0.0.7"),
            cursor: format!(
                "s=0f4bcb1d1c8c4a3c9a0d1e2f3a4b5c6d;i={i:x};b=5a1e2f3a4b5c6d7e8f9a0b1c2d3e4f5a;m=1a2b3c;t=5f0e1d2c3b4a5;x=9f8e7d6c5b4a3f2e"
            ),
        })
        .collect()
}

fn append(c: &mut Criterion) {
    let mut group = c.benchmark_group("store_append");
    group.measurement_time(Duration::from_secs(5));
    for lines in [256u64, 4096, 16384] {
        let lines_batch = batch(lines);
        group.throughput(Throughput::Elements(lines));
        group.bench_with_input(BenchmarkId::from_parameter(lines), &lines_batch, |b, lb| {
            let dir = tempfile::tempdir().expect("a temp dir");
            // Small enough to rotate and delete during the run.
            let budget = StoreBudget::new(64 << 20, 8 << 20).expect("a valid budget");
            let mut store = LogStore::open(dir.path(), budget).expect("opening the store");
            b.iter(|| black_box(store.append(lb).expect("appending")));
        });
    }
    group.finish();
}

fn read(c: &mut Criterion) {
    let dir = tempfile::tempdir().expect("a temp dir");
    let mut store = LogStore::open(dir.path(), StoreBudget::default()).expect("opening");
    let lines = 100_000;
    store.append(&batch(lines)).expect("appending");
    let mut group = c.benchmark_group("store_read");
    group.throughput(Throughput::Elements(lines));
    group.sample_size(10);
    group.bench_function("100k", |b| {
        b.iter(|| {
            let n = LogStore::read(dir.path(), 1)
                .expect("reading")
                .map(|l| l.expect("a line").seq)
                .sum::<u64>();
            black_box(n)
        });
    });
    group.finish();
}

criterion_group!(benches, append, read);
criterion_main!(benches);
