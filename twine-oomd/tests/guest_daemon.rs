//! Guest tier: the daemon (`Daemon::run` in a process of its own, `support::daemon`) on a real
//! kernel with swap, against the test workload (`support::workload`). Every figure asserted is
//! read from the cgroup files by the test itself, not taken from the daemon's records.
//!
//! The resizing tests use faster parameters than Senpai's (1 % of `memory.high` per 6 s would
//! need about 14 minutes to give back the cold set): [`fast_senpai`], an interval of 1 s and
//! probes of up to 5 %, with the target stall (10 ms per interval) unchanged. The benchmark
//! [`bench_cold_memory_given_back`] runs Senpai's defaults for 10 minutes (docs/BENCHMARKS.md).
#![allow(clippy::unwrap_used)] // tests: a failed unwrap is a failed test with its message.

mod support;

use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant};

use nix::sys::signal::Signal;
use support::daemon::{DaemonProcess, DaemonSpec};
use support::workload::{Cgroup, MIB, RunningWorkload, Workload};
use twine_oomd::senpai::{Mode, SenpaiConfig};

/// Under TCG, touching and reading back about 1 GiB takes tens of seconds.
const READY_WITHIN: Duration = Duration::from_secs(300);

/// The resizing workload: cold anonymous memory and cold page cache, each touched once, and a
/// hot set touched about every 10 ms.
const COLD_ANON_MIB: u64 = 512;
const COLD_CACHE_MIB: u64 = 256;
const HOT_MIB: u64 = 200;
const COLD_MIB: u64 = COLD_ANON_MIB + COLD_CACHE_MIB;

/// The heavy tests hold about 1 GiB each in a 2 GiB guest: one at a time (libtest runs the
/// tests of a binary in parallel).
fn serial() -> MutexGuard<'static, ()> {
    static SERIAL: Mutex<()> = Mutex::new(());
    SERIAL
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

fn mib(bytes: u64) -> u64 {
    bytes / MIB
}

/// Senpai's parameters sped up for CI: interval 1 s (Senpai: 6 s), probes of at most 5 % of
/// `memory.high` per interval (Senpai: 1 %); the target stays 10 ms per interval.
fn fast_senpai() -> SenpaiConfig {
    SenpaiConfig {
        interval: Duration::from_secs(1),
        max_probe: 0.05,
        ..SenpaiConfig::default()
    }
}

/// What one resizing run measured, all read from the cgroup's own files.
#[derive(Debug)]
struct Resized {
    /// `memory.current` when the daemon started, and at the end.
    before: u64,
    after: u64,
    /// `some` stall of the workload's cgroup (`memory.pressure` total) over the run, µs.
    stall_us: u64,
    /// The same over the second half of the run (the steady state).
    late_stall_us: u64,
    /// How long the daemon ran.
    elapsed: Duration,
    /// Hot passes over the last 3 s of the run.
    late_passes: u64,
}

impl Resized {
    /// Memory given back, as a share of the cold set (can exceed 1 if hot pages went too).
    fn cold_share(&self) -> f64 {
        self.before.saturating_sub(self.after) as f64 / (COLD_MIB * MIB) as f64
    }

    /// Mean stall per controller interval of `interval`, ms, over `stall_us` in `over`.
    fn per_interval_ms(stall_us: u64, over: Duration, interval: Duration) -> f64 {
        stall_us as f64 / 1000.0 / (over.as_secs_f64() / interval.as_secs_f64())
    }
}

/// Starts the workload in `parent/name` and waits until it is ready.
fn tiered(parent: &Cgroup, name: &str) -> RunningWorkload {
    let mut work = Workload::Tiered {
        cold_anon_mib: COLD_ANON_MIB,
        cold_cache_mib: COLD_CACHE_MIB,
        hot_anon_mib: HOT_MIB,
    }
    .spawn(parent.child(name).unwrap())
    .unwrap();
    let ready = work.wait_ready(READY_WITHIN).unwrap();
    let cgroup = work.cgroup();
    eprintln!(
        "{name}: ready after {:.1} s: memory.current {} MiB (anon {} MiB, file {} MiB)",
        ready.as_secs_f64(),
        mib(cgroup.read_u64("memory.current").unwrap()),
        mib(cgroup.memory_stat("anon").unwrap()),
        mib(cgroup.memory_stat("file").unwrap()),
    );
    work
}

/// Runs the daemon in `mode` with `senpai` over the ready workload `name` under `parent` for
/// `run`, printing a line every `every`; stops it with SIGTERM (it must stop cleanly).
fn resize(
    parent: &Cgroup,
    name: &str,
    work: &mut RunningWorkload,
    mode: Mode,
    senpai: SenpaiConfig,
    run: Duration,
    every: Duration,
) -> Resized {
    let state = tempfile::tempdir().unwrap();
    let interval = senpai.interval;
    let cgroup = work.cgroup();
    let before = cgroup.read_u64("memory.current").unwrap();
    let stall_start = cgroup.some_stall_total_us().unwrap();
    let spec = DaemonSpec::cgroups(
        parent.path(),
        &[name],
        mode,
        senpai,
        state.path().join("state.json"),
    );
    let mut daemon = spec.spawn().unwrap();
    let started = Instant::now();
    let mut stall_mid = None;
    let mut last = (Duration::ZERO, stall_start);
    while started.elapsed() < run {
        std::thread::sleep(every.min(run.saturating_sub(started.elapsed())));
        let cgroup = work.cgroup();
        let (t, stall) = (started.elapsed(), cgroup.some_stall_total_us().unwrap());
        if stall_mid.is_none() && t >= run / 2 {
            stall_mid = Some((t, stall));
        }
        eprintln!(
            "{name} {mode:?} t={:5.1} s: memory.current {:4} MiB, memory.high {}, swap {:4} MiB, \
             stall {:6.1} ms/interval, hot passes {}",
            t.as_secs_f64(),
            mib(cgroup.read_u64("memory.current").unwrap()),
            high_mib(cgroup),
            mib(cgroup.read_u64("memory.swap.current").unwrap()),
            Resized::per_interval_ms(stall - last.1, t - last.0, interval),
            work.hot_passes(),
        );
        last = (t, stall);
        assert!(work.is_running(), "the workload died under the daemon");
    }
    let passes = work.hot_passes();
    std::thread::sleep(Duration::from_secs(3));
    let late_passes = work.hot_passes() - passes;
    let cgroup = work.cgroup();
    let (elapsed, stall_end) = (started.elapsed(), cgroup.some_stall_total_us().unwrap());
    let after = cgroup.read_u64("memory.current").unwrap();
    let (status, clean) = daemon.terminate().unwrap();
    assert!(
        status.success() && clean,
        "the daemon did not stop cleanly on SIGTERM: {status}"
    );
    let (mid_t, mid_stall) = stall_mid.unwrap_or(last);
    let resized = Resized {
        before,
        after,
        stall_us: stall_end - stall_start,
        late_stall_us: stall_end - mid_stall,
        elapsed,
        late_passes,
    };
    eprintln!(
        "{name} {mode:?}: {} -> {} MiB in {:.0} s: {:.0} % of the {COLD_MIB} MiB cold set given back; \
         stall {:.1} ms/interval ({:.1} in the second half; target {} ms); {late_passes} hot passes in the last 3 s",
        mib(before),
        mib(after),
        elapsed.as_secs_f64(),
        resized.cold_share() * 100.0,
        Resized::per_interval_ms(resized.stall_us, elapsed, interval),
        Resized::per_interval_ms(resized.late_stall_us, elapsed - mid_t, interval),
        SenpaiConfig::default().pressure.as_millis(),
    );
    resized
}

/// `memory.high` in MiB, or `max`.
fn high_mib(cgroup: &Cgroup) -> String {
    let high = cgroup.read("memory.high").unwrap();
    match high.trim().parse::<u64>() {
        Ok(bytes) => format!("{} MiB", mib(bytes)),
        Err(_) => high.trim().to_owned(),
    }
}

/// The resizing acceptance test for one mode: within 60 s the daemon brings `memory.current`
/// within a quarter of the cold set above the hot set, the workload keeps running, and the
/// stall it cost stays within a bounded multiple of the target.
fn resizes_to_hot_set(mode: Mode) {
    let _serial = serial();
    let parent = Cgroup::for_test(&format!("twine-resize-{mode:?}").to_lowercase()).unwrap();
    let mut work = tiered(&parent, "workload");
    let senpai = fast_senpai();
    let interval = senpai.interval;
    let run = Duration::from_secs(60);
    let r = resize(
        &parent,
        "workload",
        &mut work,
        mode,
        senpai,
        run,
        Duration::from_secs(5),
    );
    let bound = (HOT_MIB + COLD_MIB / 4) * MIB;
    assert!(
        r.after <= bound,
        "{mode:?}: memory.current {} MiB after {:.0} s, above the hot set + 25 % of the cold set ({} MiB)",
        mib(r.after),
        r.elapsed.as_secs_f64(),
        mib(bound)
    );
    assert!(work.is_running(), "{mode:?}: the workload died");
    assert!(
        r.late_passes > 0,
        "{mode:?}: the hot loop made no progress at the end"
    );
    let stall = Resized::per_interval_ms(r.stall_us, r.elapsed, interval);
    let target_ms = SenpaiConfig::default().pressure.as_secs_f64() * 1000.0;
    assert!(
        stall <= MAX_STALL_FACTOR * target_ms,
        "{mode:?}: mean stall {stall:.1} ms per interval, over {MAX_STALL_FACTOR} x the {target_ms} ms target"
    );
}

/// How far above the target the mean stall per interval may be over a resizing run.
const MAX_STALL_FACTOR: f64 = 5.0;

#[test]
#[ignore = "guest tier: cargo xtask guest-test"]
fn guest_daemon_high_mode_resizes_workload_to_its_hot_set() {
    if !support::in_guest() {
        return;
    }
    resizes_to_hot_set(Mode::High);
}

#[test]
#[ignore = "guest tier: cargo xtask guest-test"]
fn guest_daemon_reclaim_mode_resizes_workload_to_its_hot_set() {
    if !support::in_guest() {
        return;
    }
    resizes_to_hot_set(Mode::Reclaim);
}

/// The kill policy: a runaway allocator and a steady workload, siblings under a watched
/// cgroup; a `memory_above` rule on the parent kills the runaway's cgroup (through
/// `cgroup.kill`, before the kernel's OOM killer at its `memory.max`) and leaves the other.
#[test]
#[ignore = "guest tier: cargo xtask guest-test"]
fn guest_daemon_kills_the_runaway_and_spares_its_sibling() {
    if !support::in_guest() {
        return;
    }
    let _serial = serial();
    let parent = Cgroup::for_test("twine-kill").unwrap();
    let watched = parent.child("watched").unwrap();
    let mut steady = Workload::Tiered {
        cold_anon_mib: 64,
        cold_cache_mib: 0,
        hot_anon_mib: 64,
    }
    .spawn(watched.child("steady").unwrap())
    .unwrap();
    steady.wait_ready(READY_WITHIN).unwrap();
    let runaway_cgroup = watched.child("runaway").unwrap();
    // A backstop: without the daemon, the kernel would OOM-kill it here (memory.events says
    // which of the two did it).
    runaway_cgroup
        .write("memory.max", &(1024 * MIB).to_string())
        .unwrap();
    runaway_cgroup.write("memory.swap.max", "0").unwrap();
    const LIMIT_MIB: u64 = 384;
    let config = format!(
        "pause_s = 60\n\
         [[kill]]\n\
         name = \"runaway\"\n\
         cgroup = \"watched\"\n\
         select = \"largest\"\n\
         detectors = [{{ type = \"memory_above\", bytes = {} }}]\n",
        LIMIT_MIB * MIB
    );
    let state = tempfile::tempdir().unwrap();
    let mut daemon = DaemonSpec::config(parent.path(), &config, state.path().join("state.json"))
        .spawn()
        .unwrap();
    let mut runaway = Workload::Runaway { mib_per_sec: 64 }
        .spawn(runaway_cgroup)
        .unwrap();
    runaway.wait_ready(READY_WITHIN).unwrap();
    let started = Instant::now();
    let mut peak = 0;
    while runaway.is_running() && started.elapsed() < Duration::from_secs(60) {
        peak = peak.max(runaway.cgroup().read_u64("memory.current").unwrap());
        std::thread::sleep(Duration::from_millis(100));
    }
    let took = started.elapsed();
    let events = runaway.cgroup().read("memory.events").unwrap();
    let runaway_populated = runaway.cgroup().read("cgroup.events").unwrap();
    let passes = steady.hot_passes();
    std::thread::sleep(Duration::from_secs(2));
    let steady_passes = steady.hot_passes() - passes;
    let steady_populated = steady.cgroup().read("cgroup.events").unwrap();
    eprintln!(
        "runaway gone after {:.1} s at a peak of {} MiB (limit on the parent {LIMIT_MIB} MiB); \
         runaway memory.events: {}; steady: {steady_passes} hot passes in 2 s, memory.current {} MiB",
        took.as_secs_f64(),
        mib(peak),
        events.trim().replace('\n', ", "),
        mib(steady.cgroup().read_u64("memory.current").unwrap()),
    );
    assert!(
        !runaway.is_running(),
        "the runaway still runs after 60 s (peak {} MiB)",
        mib(peak)
    );
    assert!(
        events.contains("oom_kill 0"),
        "the kernel's OOM killer, not the daemon, killed the runaway: {events}"
    );
    assert!(
        runaway_populated.contains("populated 0"),
        "the runaway's cgroup still has processes: {runaway_populated}"
    );
    assert!(steady.is_running(), "the steady sibling was killed too");
    assert!(
        steady_populated.contains("populated 1"),
        "the steady cgroup lost its processes: {steady_populated}"
    );
    assert!(steady_passes > 0, "the steady sibling made no progress");
    let (status, clean) = daemon.terminate().unwrap();
    assert!(
        status.success() && clean,
        "the daemon did not stop cleanly: {status}"
    );
}

/// The restore tests' original `memory.high` values.
const ORIGINAL_HIGH: &str = "1073741824";

/// A small workload under `parent` (about 300 MiB) whose `memory.high` is `original`, and the
/// daemon in high mode over it with a state file in `state`; returns once the daemon has
/// lowered `memory.high` below `original` (read from the file).
fn lowered(
    parent: &Cgroup,
    original: &str,
    state: &std::path::Path,
) -> (RunningWorkload, DaemonProcess) {
    let cgroup = parent.child("workload").unwrap();
    cgroup.write("memory.high", original).unwrap();
    let mut work = Workload::Tiered {
        cold_anon_mib: 256,
        cold_cache_mib: 0,
        hot_anon_mib: 32,
    }
    .spawn(cgroup)
    .unwrap();
    work.wait_ready(READY_WITHIN).unwrap();
    let daemon = high_mode_daemon(parent, state);
    wait_lowered(&work, original, "memory.high was never lowered");
    (work, daemon)
}

fn high_mode_daemon(parent: &Cgroup, state: &std::path::Path) -> DaemonProcess {
    DaemonSpec::cgroups(
        parent.path(),
        &["workload"],
        Mode::High,
        fast_senpai(),
        state.join("state.json"),
    )
    .spawn()
    .unwrap()
}

/// Waits up to 20 s until `memory.high` is a number below `than` (a number or `max`).
fn wait_lowered(work: &RunningWorkload, than: &str, why: &str) -> u64 {
    let than: u64 = than.parse().unwrap_or(u64::MAX);
    let started = Instant::now();
    loop {
        let high = work.cgroup().read("memory.high").unwrap();
        if let Ok(bytes) = high.trim().parse::<u64>()
            && bytes < than
        {
            return bytes;
        }
        assert!(started.elapsed() < Duration::from_secs(20), "{why}: {high}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// The restore tests: the daemon stopped by SIGTERM puts the original `memory.high` back.
#[test]
#[ignore = "guest tier: cargo xtask guest-test"]
fn guest_daemon_restores_memory_high_on_sigterm() {
    if !support::in_guest() {
        return;
    }
    let _serial = serial();
    let parent = Cgroup::for_test("twine-restore").unwrap();
    let state = tempfile::tempdir().unwrap();
    let (work, mut daemon) = lowered(&parent, ORIGINAL_HIGH, state.path());
    let low = wait_lowered(&work, ORIGINAL_HIGH, "memory.high");
    let (status, clean) = daemon.terminate().unwrap();
    let high = work.cgroup().read("memory.high").unwrap();
    eprintln!(
        "memory.high {ORIGINAL_HIGH} -> {} MiB under the daemon -> {} after SIGTERM ({status})",
        mib(low),
        high.trim()
    );
    assert!(status.success() && clean, "not a clean stop: {status}");
    assert_eq!(high.trim(), ORIGINAL_HIGH, "memory.high not restored");
    assert!(
        !state.path().join("state.json").exists(),
        "a clean stop left the state file"
    );
}

/// The daemon SIGKILLed after lowering `memory.high` (which stays lowered), and a successor
/// with the same state file: after it ticked and got SIGTERM, `memory.high` is back to the
/// first original (`max`), not the lowered value the successor found.
#[test]
#[ignore = "guest tier: cargo xtask guest-test"]
fn guest_daemon_successor_restores_memory_high_after_sigkill() {
    if !support::in_guest() {
        return;
    }
    let _serial = serial();
    let parent = Cgroup::for_test("twine-restart").unwrap();
    let state = tempfile::tempdir().unwrap();
    let (work, mut first) = lowered(&parent, "max", state.path());
    first.signal(Signal::SIGKILL).unwrap();
    let status = first.wait(Duration::from_secs(10)).unwrap();
    let found = work.cgroup().read("memory.high").unwrap();
    assert!(
        found.trim() != "max",
        "memory.high is {found} after SIGKILL: nothing left to restore"
    );
    assert!(
        state.path().join("state.json").exists(),
        "no state file after SIGKILL"
    );
    let found: u64 = found.trim().parse().unwrap();
    let mut second = high_mode_daemon(&parent, state.path());
    // The successor takes over and probes below what it found.
    let low = wait_lowered(&work, &found.to_string(), "the successor never acted");
    let (status2, clean) = second.terminate().unwrap();
    let high = work.cgroup().read("memory.high").unwrap();
    eprintln!(
        "memory.high max -> {} MiB, daemon SIGKILLed ({status}); successor -> {} MiB; after SIGTERM: {}",
        mib(found),
        mib(low),
        high.trim()
    );
    assert!(status2.success() && clean, "not a clean stop: {status2}");
    assert_eq!(high.trim(), "max", "the first original was not restored");
    assert!(
        !state.path().join("state.json").exists(),
        "a clean stop left the state file"
    );
}

/// The guest benchmark (docs/BENCHMARKS.md), not a CI test: Senpai's defaults for 10 minutes
/// in the mode(s) named by `TWINE_OOMD_BENCH_MODES` (`high`, `reclaim`, or `high,reclaim`,
/// the default, run side by side in two cgroups: give the guest `--memory 4G`); reports the
/// share of the cold set given back and the stall it cost. `TWINE_OOMD_BENCH_SECS` changes
/// the 600 s, `TWINE_OOMD_BENCH_MAX_PROBE` the 1 % probe. Run by hand, see docs/BENCHMARKS.md.
#[test]
#[ignore = "benchmark: 10+ minutes in the guest; see docs/BENCHMARKS.md"]
fn bench_cold_memory_given_back() {
    if !support::in_guest() {
        return;
    }
    let modes = std::env::var("TWINE_OOMD_BENCH_MODES").unwrap_or_else(|_| "high,reclaim".into());
    let run = std::env::var("TWINE_OOMD_BENCH_SECS")
        .ok()
        .and_then(|s| s.parse().ok())
        .map_or(Duration::from_secs(600), Duration::from_secs);
    let max_probe = std::env::var("TWINE_OOMD_BENCH_MAX_PROBE")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(SenpaiConfig::default().max_probe);
    let parent = Cgroup::for_test("twine-bench").unwrap();
    let modes: Vec<Mode> = modes
        .split(',')
        .map(|m| match m.trim() {
            "high" => Mode::High,
            "reclaim" => Mode::Reclaim,
            other => panic!("TWINE_OOMD_BENCH_MODES: unknown mode {other:?}"),
        })
        .collect();
    let mut works: Vec<(Mode, String, RunningWorkload)> = modes
        .iter()
        .map(|&mode| {
            let name = format!("workload-{mode:?}").to_lowercase();
            let work = tiered(&parent, &name);
            (mode, name, work)
        })
        .collect();
    let results: Vec<(Mode, Resized)> = std::thread::scope(|s| {
        let handles: Vec<_> = works
            .iter_mut()
            .map(|(mode, name, work)| {
                let (mode, parent) = (*mode, &parent);
                s.spawn(move || {
                    let senpai = SenpaiConfig {
                        max_probe,
                        ..SenpaiConfig::default()
                    };
                    let every = Duration::from_secs(30);
                    (mode, resize(parent, name, work, mode, senpai, run, every))
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    let interval = SenpaiConfig::default().interval;
    for (mode, r) in &results {
        eprintln!(
            "BENCH mode={mode:?} max_probe={max_probe} secs={:.0} before_mib={} after_mib={} cold_given_back_mib={} \
             cold_given_back_pct={:.1} stall_ms_per_6s={:.2} late_stall_ms_per_6s={:.2} hot_alive={}",
            r.elapsed.as_secs_f64(),
            mib(r.before),
            mib(r.after),
            mib(r.before.saturating_sub(r.after)),
            r.cold_share() * 100.0,
            Resized::per_interval_ms(r.stall_us, r.elapsed, interval),
            Resized::per_interval_ms(r.late_stall_us, r.elapsed / 2, interval),
            r.late_passes > 0,
        );
    }
}
