//! Guest tier: the test workload (`support::workload`) on a real kernel with swap, driven by
//! plain `memory.reclaim` writes (no twine code): the ground the resizer's guest tests stand on.
#![allow(clippy::unwrap_used)] // tests: a failed unwrap is a failed test with its message.

mod support;

use std::io;
use std::time::{Duration, Instant};

use support::workload::{Cgroup, MIB, RunningWorkload, Workload};

/// Under TCG, touching and reading back about 1 GiB takes tens of seconds.
const READY_WITHIN: Duration = Duration::from_secs(300);

/// A parent cgroup for one test, at the root of the guest's cgroup2 mount.
fn test_parent(name: &str) -> Cgroup {
    Cgroup::for_test(name).unwrap()
}

fn mib(bytes: u64) -> u64 {
    bytes / MIB
}

/// Reclaim `bytes` from the workload's cgroup; returns whether the kernel reclaimed it all
/// (EAGAIN: it got less).
fn reclaim(work: &RunningWorkload, bytes: u64) -> bool {
    match work.cgroup().reclaim(bytes) {
        Ok(()) => true,
        Err(e) if e.kind() == io::ErrorKind::WouldBlock => false,
        Err(e) => panic!("memory.reclaim: {e}"),
    }
}

#[test]
#[ignore = "guest tier: cargo xtask guest-test"]
fn guest_reclaim_moves_cold_anonymous_memory_to_swap() {
    if !support::in_guest() {
        return;
    }
    let swaps = std::fs::read_to_string("/proc/swaps").unwrap();
    assert!(
        swaps.lines().count() > 1,
        "no swap active: /proc/swaps: {swaps}"
    );
    let parent = test_parent("twine-swap");
    let mut work = Workload::Tiered {
        cold_anon_mib: 256,
        cold_cache_mib: 0,
        hot_anon_mib: 16,
    }
    .spawn(parent.child("workload").unwrap())
    .unwrap();
    work.wait_ready(READY_WITHIN).unwrap();
    let cgroup = work.cgroup();
    let (current, swapped) = (
        cgroup.read_u64("memory.current").unwrap(),
        cgroup.read_u64("memory.swap.current").unwrap(),
    );
    reclaim(&work, 200 * MIB);
    let cgroup = work.cgroup();
    let (current_after, swapped_after) = (
        cgroup.read_u64("memory.current").unwrap(),
        cgroup.read_u64("memory.swap.current").unwrap(),
    );
    eprintln!(
        "memory.current {} -> {} MiB, memory.swap.current {} -> {} MiB",
        mib(current),
        mib(current_after),
        mib(swapped),
        mib(swapped_after)
    );
    assert!(
        swapped_after >= swapped + 128 * MIB,
        "memory.swap.current grew by less than 128 MiB: {swapped} -> {swapped_after}"
    );
    assert!(
        current_after + 128 * MIB <= current,
        "memory.current fell by less than 128 MiB: {current} -> {current_after}"
    );
    assert!(work.is_running(), "the workload died during reclaim");
}

#[test]
#[ignore = "guest tier: cargo xtask guest-test"]
fn guest_workload_is_reclaimed_down_to_its_hot_set() {
    if !support::in_guest() {
        return;
    }
    const HOT_MIB: u64 = 128;
    let parent = test_parent("twine-workload");
    let mut work = Workload::Tiered {
        cold_anon_mib: 512,
        cold_cache_mib: 256,
        hot_anon_mib: HOT_MIB,
    }
    .spawn(parent.child("workload").unwrap())
    .unwrap();
    let ready = work.wait_ready(READY_WITHIN).unwrap();
    let cgroup = work.cgroup();
    let before = cgroup.read_u64("memory.current").unwrap();
    eprintln!(
        "workload ready after {:.1} s: memory.current {} MiB (anon {} MiB, file {} MiB)",
        ready.as_secs_f64(),
        mib(before),
        mib(cgroup.memory_stat("anon").unwrap()),
        mib(cgroup.memory_stat("file").unwrap()),
    );
    assert!(
        before >= (512 + 256 + HOT_MIB) * MIB * 9 / 10,
        "the workload holds less than 90% of its 896 MiB: {} MiB",
        mib(before)
    );

    // Reclaim in steps of at most 256 MiB, as a resizer would, until within 64 MiB of the hot set.
    let target = (HOT_MIB + 64) * MIB;
    let started = Instant::now();
    let passes_before = work.hot_passes();
    let mut current = before;
    for step in 1..=12 {
        if current <= target {
            break;
        }
        let ask = (current - target).min(256 * MIB);
        let step_started = Instant::now();
        let complete = reclaim(&work, ask);
        current = work.cgroup().read_u64("memory.current").unwrap();
        eprintln!(
            "step {step}: reclaim {} MiB ({}) in {:.1} s -> memory.current {} MiB",
            mib(ask),
            if complete { "complete" } else { "EAGAIN" },
            step_started.elapsed().as_secs_f64(),
            mib(current)
        );
        assert!(work.is_running(), "the workload died during reclaim");
    }
    let took = started.elapsed();
    // The hot loop must still be running: passes keep coming after the reclaim.
    std::thread::sleep(Duration::from_secs(3));
    let passes_after = work.hot_passes();
    let cgroup = work.cgroup();
    let after = cgroup.read_u64("memory.current").unwrap();
    eprintln!(
        "reclaimed {} -> {} MiB in {:.1} s (swap {} MiB, anon {} MiB, file {} MiB); hot passes {passes_before} -> {passes_after}",
        mib(before),
        mib(after),
        took.as_secs_f64(),
        mib(cgroup.read_u64("memory.swap.current").unwrap()),
        mib(cgroup.memory_stat("anon").unwrap()),
        mib(cgroup.memory_stat("file").unwrap()),
    );
    assert!(
        after <= target,
        "memory.current {} MiB did not come within 64 MiB of the {HOT_MIB} MiB hot set",
        mib(after)
    );
    assert!(work.is_running(), "the workload died");
    assert!(
        passes_after > passes_before,
        "the hot loop made no progress after reclaim ({passes_before} -> {passes_after} passes)"
    );

    // The guard leaves nothing behind: no cgroup, no cache file.
    let path = work.cgroup().path().to_path_buf();
    drop(work);
    assert!(!path.exists(), "{} is still there", path.display());
    let leftover = format!("twine-workload-{}-", std::process::id());
    let left: Vec<_> = std::fs::read_dir("/var/tmp")
        .unwrap()
        .filter_map(|e| e.ok())
        .filter(|e| e.file_name().to_string_lossy().starts_with(&leftover))
        .map(|e| e.path())
        .collect();
    assert!(left.is_empty(), "cache files left: {left:?}");
}

#[test]
#[ignore = "guest tier: cargo xtask guest-test"]
fn guest_runaway_workload_is_oom_killed_at_memory_max() {
    if !support::in_guest() {
        return;
    }
    let parent = test_parent("twine-runaway");
    let cgroup = parent.child("runaway").unwrap();
    cgroup.write("memory.max", &(64 * MIB).to_string()).unwrap();
    cgroup.write("memory.swap.max", "0").unwrap();
    let mut work = Workload::Runaway { mib_per_sec: 64 }.spawn(cgroup).unwrap();
    work.wait_ready(READY_WITHIN).unwrap();
    let started = Instant::now();
    while work.is_running() && started.elapsed() < Duration::from_secs(60) {
        std::thread::sleep(Duration::from_millis(100));
    }
    let events = work.cgroup().read("memory.events").unwrap();
    eprintln!(
        "runaway stopped after {:.1} s; memory.events: {}",
        started.elapsed().as_secs_f64(),
        events.trim().replace('\n', ", ")
    );
    assert!(
        !work.is_running(),
        "the runaway still runs after 60 s at memory.max = 64 MiB"
    );
    assert!(
        events.contains("oom_kill 1"),
        "the kernel did not OOM-kill the runaway: memory.events: {events}"
    );
}
