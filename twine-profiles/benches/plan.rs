//! Planning a 200-setting profile (159 sysctls, 20 sysfs attributes, 8 command-line
//! arguments, 5 drop-ins, 2 networkd files, THP, the 2 MiB pool on 2 nodes and globally,
//! the governor): against a host where every setting differs, and one where none does.
//! Target from the issue: under 1 ms.
#![allow(missing_docs)]

use std::fmt::Write as _;
use std::hint::black_box;

use criterion::{Criterion, criterion_group, criterion_main};
use twine_profiles::change::HostFacts;
use twine_profiles::plan::plan;
use twine_profiles::profile::{Format, Profile};

fn profile() -> Profile {
    let mut t = String::from("[sysctl]\n");
    for i in 0..159 {
        writeln!(t, "\"net.bench.key{i}\" = \"{i} {}\"", i * 2).expect("string");
    }
    t += "[sysfs]\n";
    for i in 0..20 {
        writeln!(t, "\"kernel/bench/attr{i}\" = \"{i}\"").expect("string");
    }
    t += "[cmdline]\n";
    for i in 0..8 {
        writeln!(t, "arg{i} = \"{i}\"").expect("string");
    }
    t += "[thp]\nenabled = \"madvise\"\ndefrag = \"defer\"\n";
    t += "[hugepages]\ncount_2m = 1024\nper_node_2m = { \"0\" = 512, \"1\" = 512 }\n";
    t += "[cpu]\ngovernor = \"performance\"\n";
    for i in 0..5 {
        writeln!(
            t,
            "[[drop_in]]\nunit = \"svc{i}.service\"\nname = \"90-twine.conf\"\ncontent = \"[Service]\\nLimitNOFILE={i}\\n\""
        )
        .expect("string");
    }
    for i in 0..2 {
        writeln!(
            t,
            "[[networkd]]\nname = \"1{i}-twine.network\"\ncontent = \"[Match]\\nName=eth{i}\\n\""
        )
        .expect("string");
    }
    let p = Profile::from_str(&t, Format::Toml).expect("bench profile parses");
    assert_eq!(p.desired().len(), 200);
    p
}

fn bench(c: &mut Criterion) {
    let profile = profile();
    let mut differ = HostFacts::default();
    differ.values = profile
        .desired()
        .into_keys()
        .map(|s| (s, Some("other".to_owned())))
        .collect();
    differ.jobs_running = true;
    differ.booted_cmdline = "BOOT_IMAGE=/vmlinuz root=/dev/vda1 quiet".to_owned();
    let mut same = differ.clone();
    same.values = profile.desired();
    assert_eq!(plan(&differ, &profile).changes.len(), 200);
    assert!(plan(&same, &profile).is_empty());

    let mut group = c.benchmark_group("plan-200");
    group.bench_function("all-differ", |b| {
        b.iter(|| plan(black_box(&differ), black_box(&profile)))
    });
    group.bench_function("none-differ", |b| {
        b.iter(|| plan(black_box(&same), black_box(&profile)))
    });
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
