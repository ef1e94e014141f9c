//! Rendering a realistic job: 3 pre-start steps, 2 sidecars, every policy set
//! (`examples/specs/web.toml`, 9 units). Throughput is reported in units per second.
#![allow(missing_docs)]

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use std::hint::black_box;

const SPEC: &str = include_str!("../../examples/specs/web.toml");

fn render(c: &mut Criterion) {
    let spec = twine_spec::JobSpec::from_toml(SPEC).expect("example spec parses");
    let job = spec.validate().expect("example spec is valid");
    let units = twine_spec::translate(&job)
        .expect("translates")
        .units()
        .len() as u64;

    let mut group = c.benchmark_group("render");
    group.throughput(Throughput::Elements(units));
    group.bench_function("translate+files", |b| {
        b.iter(|| {
            twine_spec::translate(black_box(&job))
                .expect("translates")
                .files()
        })
    });
    group.bench_function("translate+transient", |b| {
        b.iter(|| {
            twine_spec::translate(black_box(&job))
                .expect("translates")
                .transient()
        })
    });
    group.bench_function("validate+translate+files", |b| {
        b.iter(|| {
            twine_spec::translate(&black_box(&spec).validate().expect("valid"))
                .expect("translates")
                .files()
        })
    });
    group.bench_function("parse+validate+translate+files", |b| {
        b.iter(|| {
            let spec = twine_spec::JobSpec::from_toml(black_box(SPEC)).expect("parses");
            twine_spec::translate(&spec.validate().expect("valid"))
                .expect("translates")
                .files()
        })
    });
    group.finish();
}

criterion_group!(benches, render);
criterion_main!(benches);
