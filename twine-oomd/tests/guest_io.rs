//! Guest tier: twine-oomd's I/O layer (`cgroup`, `memory`, `psi`) through its public API on a
//! real kernel with the memory controller and swap, on cgroups holding the test workload
//! (`support::workload`). The host's cgroup2 has no memory controller, so this is where the
//! limits, `memory.reclaim`, snapshots, PSI triggers and `cgroup.kill` meet a kernel.
//!
//! The tests take a lock so that they run one at a time: they share two emulated CPUs, and
//! the blocking and pressure tests measure time.
#![allow(clippy::unwrap_used)] // tests: a failed unwrap is a failed test with its message.

mod support;

use std::path::Path;
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant};

use support::workload::{MIB, RunningWorkload, Workload};
use twine_oomd::{
    Cgroup, CgroupError, CgroupRoot, Limit, LimitFile, Resource, SnapshotReader, Stall, Trigger,
    TriggerEvent,
};

/// Small workloads are ready in a few seconds under TCG; this is only the failure bound.
const READY_WITHIN: Duration = Duration::from_secs(60);

static SERIAL: Mutex<()> = Mutex::new(());

/// One test at a time (a failed test poisons the lock; the next one goes on).
fn serial() -> MutexGuard<'static, ()> {
    SERIAL.lock().unwrap_or_else(|e| e.into_inner())
}

/// The guest's cgroup2 root, found through the API.
fn root() -> CgroupRoot {
    CgroupRoot::find().unwrap()
}

/// A parent cgroup for one test, made through the API with the memory controller enabled for
/// it and its children; the guard removes it (and anything below it) on every path.
fn parent(name: &str) -> (Cgroup, support::workload::Cgroup) {
    let top = root().top();
    top.enable_controllers(&["memory"]).unwrap();
    let cgroup = top
        .create_child(&format!("twine-io-{name}-{}", std::process::id()))
        .unwrap();
    let guard = support::workload::Cgroup::adopt(cgroup.path());
    cgroup.enable_controllers(&["memory"]).unwrap();
    (cgroup, guard)
}

/// One test's cgroups and workload; fields drop in order: the workload (and its cgroup)
/// first, then the parent cgroup, then the lock.
struct Case {
    /// The API's handle on the workload's cgroup.
    cgroup: Cgroup,
    /// Dropping it kills the workload and removes its cgroup.
    work: RunningWorkload,
    _parent: support::workload::Cgroup,
    _serial: MutexGuard<'static, ()>,
}

/// In the guest only (`None` elsewhere, said on stderr): takes the lock, makes the parent
/// cgroup `name` through the API, starts `workload` in `parent/workload` and waits until it
/// is ready.
fn case(name: &str, workload: Workload) -> Option<Case> {
    if !support::in_guest() {
        return None;
    }
    let serial = serial();
    let (parent, guard) = parent(name);
    let cgroup = parent.create_child("workload").unwrap();
    let mut work = workload
        .spawn(support::workload::Cgroup::adopt(cgroup.path()))
        .unwrap();
    let ready = work.wait_ready(READY_WITHIN).unwrap();
    eprintln!("{workload:?} ready after {:.1} s", ready.as_secs_f64());
    Some(Case {
        cgroup,
        work,
        _parent: guard,
        _serial: serial,
    })
}

fn tiered(cold_anon_mib: u64, cold_cache_mib: u64, hot_anon_mib: u64) -> Workload {
    Workload::Tiered {
        cold_anon_mib,
        cold_cache_mib,
        hot_anon_mib,
    }
}

fn page_size() -> u64 {
    nix::unistd::sysconf(nix::unistd::SysconfVar::PAGE_SIZE)
        .unwrap()
        .map_or(4096, |n| u64::try_from(n).unwrap())
}

fn mib(bytes: u64) -> u64 {
    bytes / MIB
}

/// Polls `check` every 50 ms until it holds or `within` passes; returns how long it took.
fn eventually(within: Duration, mut check: impl FnMut() -> bool) -> Option<Duration> {
    let started = Instant::now();
    loop {
        if check() {
            return Some(started.elapsed());
        }
        if started.elapsed() > within {
            return None;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
#[ignore = "guest tier: cargo xtask guest-test"]
fn guest_root_is_found_and_children_get_the_memory_controller() {
    if !support::in_guest() {
        return;
    }
    let _serial = serial();
    assert_eq!(root().path(), Path::new("/sys/fs/cgroup"));
    let (parent, _guard) = parent("root");
    let controllers = std::fs::read_to_string(parent.path().join("cgroup.subtree_control"));
    assert!(
        controllers.as_deref().unwrap().contains("memory"),
        "{controllers:?}"
    );
    let child = parent.create_child("child").unwrap();
    assert_eq!(
        child.relative(),
        Path::new(&format!("twine-io-root-{}/child", std::process::id()))
    );
    assert_eq!(parent.children().unwrap(), vec![child.clone()]);
    // The memory controller's files are there and hold a fresh cgroup's values.
    assert_eq!(child.memory_current().unwrap(), 0);
    assert_eq!(child.limit(LimitFile::High).unwrap(), Limit::Max);
    assert_eq!(child.limit(LimitFile::Min).unwrap(), Limit::Bytes(0));
    assert_eq!(child.memory_events().unwrap().oom_kill, 0);
    let events = child.events().unwrap();
    assert!(!events.populated && !events.frozen, "{events:?}");
    child.remove().unwrap();
    assert!(!child.path().exists());
    assert!(matches!(
        child.memory_current(),
        Err(CgroupError::CgroupGone { .. })
    ));
}

#[test]
#[ignore = "guest tier: cargo xtask guest-test"]
fn guest_limits_are_set_and_read_back_rounded_down_to_pages() {
    let Some(mut case) = case("limits", tiered(8, 0, 8)) else {
        return;
    };
    let cgroup = &case.cgroup;
    let page = page_size();
    let bytes = 100 * MIB; // well above the workload's 16 MiB: no write blocks
    for file in [
        LimitFile::Min,
        LimitFile::Low,
        LimitFile::High,
        LimitFile::Max,
        LimitFile::SwapMax,
    ] {
        let initial = cgroup.limit(file).unwrap();
        cgroup.set_limit(file, Limit::Bytes(bytes)).unwrap();
        assert_eq!(cgroup.limit(file).unwrap(), Limit::Bytes(bytes), "{file:?}");
        // Not a multiple of the page size: the kernel keeps whole pages, rounded down.
        cgroup
            .set_limit(file, Limit::Bytes(bytes + page - 1))
            .unwrap();
        assert_eq!(cgroup.limit(file).unwrap(), Limit::Bytes(bytes), "{file:?}");
        // Less than a page is 0 (not tried on memory.high and memory.max: 0 there would
        // stall or OOM-kill the workload).
        if !matches!(file, LimitFile::High | LimitFile::Max) {
            cgroup.set_limit(file, Limit::Bytes(page - 1)).unwrap();
            assert_eq!(cgroup.limit(file).unwrap(), Limit::Bytes(0), "{file:?}");
        }
        cgroup.set_limit(file, Limit::Max).unwrap();
        assert_eq!(cgroup.limit(file).unwrap(), Limit::Max, "{file:?}");
        cgroup.set_limit(file, initial).unwrap();
        eprintln!(
            "{}: {bytes} and {} read back {bytes}; max reads max; initial {initial}",
            file.file_name(),
            bytes + page - 1,
        );
        assert!(case.work.is_running(), "the workload died after {file:?}");
    }
}

#[test]
#[ignore = "guest tier: cargo xtask guest-test"]
fn guest_reclaim_moves_cold_memory_to_swap_and_a_short_reclaim_is_typed() {
    let Some(mut case) = case("reclaim", tiered(128, 0, 16)) else {
        return;
    };
    let cgroup = &case.cgroup;
    let (current, swapped) = (
        cgroup.memory_current().unwrap(),
        cgroup.swap_current().unwrap(),
    );
    let started = Instant::now();
    cgroup.reclaim(96 * MIB).unwrap();
    let took = started.elapsed();
    let (current_after, swapped_after) = (
        cgroup.memory_current().unwrap(),
        cgroup.swap_current().unwrap(),
    );
    eprintln!(
        "reclaim 96 MiB in {:.2} s: memory.current {} -> {} MiB, memory.swap.current {} -> {} MiB",
        took.as_secs_f64(),
        mib(current),
        mib(current_after),
        mib(swapped),
        mib(swapped_after)
    );
    assert!(
        current_after + 80 * MIB <= current,
        "memory.current fell by less than 80 MiB: {current} -> {current_after}"
    );
    assert!(
        swapped_after >= swapped + 80 * MIB,
        "memory.swap.current grew by less than 80 MiB: {swapped} -> {swapped_after}"
    );

    // No more swap for it: what is left is the hot anon set, which cannot go anywhere.
    cgroup
        .set_limit(LimitFile::SwapMax, Limit::Bytes(0))
        .unwrap();
    let ask = cgroup.memory_current().unwrap() + 256 * MIB;
    let started = Instant::now();
    let err = cgroup.reclaim(ask).unwrap_err();
    let took = started.elapsed();
    eprintln!(
        "reclaim {} MiB with memory.swap.max 0: {err} after {:.2} s",
        mib(ask),
        took.as_secs_f64()
    );
    match &err {
        CgroupError::ReclaimShort { value, source, .. } => {
            assert_eq!(value, &ask.to_string());
            assert_eq!(
                source.raw_os_error(),
                Some(nix::errno::Errno::EAGAIN as i32),
                "{err}"
            );
        }
        other => panic!("expected ReclaimShort, got {other:?}"),
    }
    // The limit holds: nothing more went to swap. (`fail` in memory.swap.events counts
    // swap allocations the limit refused; reclaim on 6.1 sometimes still tries, so it
    // may be above 0, which is the limit at work, not a leak.)
    let swap_events = cgroup.swap_events().unwrap();
    let swapped_last = cgroup.swap_current().unwrap();
    eprintln!(
        "memory.swap.events: {swap_events:?}, memory.swap.current {} MiB",
        mib(swapped_last)
    );
    assert!(
        swapped_last <= swapped_after,
        "memory.swap.current grew past memory.swap.max 0: {swapped_after} -> {swapped_last}"
    );
    assert!(case.work.is_running(), "the workload died during reclaim");
}

/// Whether this is the guest tier's kernel series (Debian 12's 6.1), observed to ignore
/// O_NONBLOCK on limit writes and to reclaim in the writer; later kernels may document the
/// flag as "skip the synchronous reclaim", so either outcome is accepted there.
fn kernel_6_1_or_older() -> bool {
    let release = nix::sys::utsname::uname().unwrap();
    let release = release.release().to_string_lossy().into_owned();
    let mut parts = release
        .split(['.', '-'])
        .map(|p| p.parse::<u32>().unwrap_or(0));
    let (major, minor) = (parts.next().unwrap_or(0), parts.next().unwrap_or(0));
    (major, minor) <= (6, 1)
}

#[test]
#[ignore = "guest tier: cargo xtask guest-test"]
fn guest_memory_high_below_the_hot_set_blocks_the_writer_and_times_out() {
    let Some(mut case) = case("high", tiered(0, 0, 128)) else {
        return;
    };
    let cgroup = &case.cgroup;
    let before = cgroup.memory_current().unwrap();
    let high = 32 * MIB;
    let timeout = Duration::from_millis(100);
    let started = Instant::now();
    let result = cgroup.set_limit_within(LimitFile::High, Limit::Bytes(high), timeout);
    let returned = started.elapsed();
    // The kernel sets the limit before it reclaims: it is in force whatever the write says.
    let read_back = cgroup.limit(LimitFile::High).unwrap();
    let settled = eventually(Duration::from_secs(15), || {
        cgroup.memory_current().unwrap() <= high + 4 * MIB
    });
    eprintln!(
        "memory.high {} MiB over a {} MiB hot set: {result:?} after {:.3} s; read back {read_back}; \
         memory.current at the limit after {settled:?}",
        mib(high),
        mib(before),
        returned.as_secs_f64()
    );
    assert!(
        returned < timeout + Duration::from_secs(1),
        "set_limit_within took {returned:?} with a timeout of {timeout:?}"
    );
    assert_eq!(read_back, Limit::Bytes(high));
    if kernel_6_1_or_older() {
        assert!(
            matches!(&result, Err(CgroupError::TimedOut { after, .. }) if *after == timeout),
            "this kernel ignores O_NONBLOCK and reclaims in the writer, yet: {result:?}"
        );
    } else {
        assert!(
            result.is_ok() || matches!(result, Err(CgroupError::TimedOut { .. })),
            "{result:?}"
        );
    }
    assert!(
        settled.is_some(),
        "memory.current never came down to memory.high"
    );
    assert!(case.work.is_running(), "memory.high killed the workload");
    let events = cgroup.memory_events().unwrap();
    assert!(
        events.high > 0,
        "no throttling counted in memory.events: {events:?}"
    );

    // The plain write blocks for as long as the kernel reclaims: let the workload grow back,
    // then measure it.
    cgroup.set_limit(LimitFile::High, Limit::Max).unwrap();
    let regrown = eventually(Duration::from_secs(15), || {
        cgroup.memory_current().unwrap() >= before * 9 / 10
    });
    let started = Instant::now();
    cgroup
        .set_limit(LimitFile::High, Limit::Bytes(high))
        .unwrap();
    let blocked = started.elapsed();
    eprintln!(
        "memory.events high {}; after regrowing ({regrown:?}) a plain write of memory.high \
         blocked {:.3} s",
        events.high,
        blocked.as_secs_f64()
    );
    assert!(
        regrown.is_none() || blocked >= timeout,
        "the plain write returned in {blocked:?}, yet set_limit_within timed out"
    );
    cgroup.set_limit(LimitFile::High, Limit::Max).unwrap();
}

#[test]
#[ignore = "guest tier: cargo xtask guest-test"]
fn guest_disabled_psi_is_reported_as_unavailable() {
    let Some(case) = case("nopsi", tiered(0, 0, 8)) else {
        return;
    };
    let cgroup = &case.cgroup;
    let mut reader = SnapshotReader::new(cgroup).unwrap();
    let trigger = Trigger::new(
        Stall::Some,
        Duration::from_millis(50),
        Duration::from_secs(2),
    )
    .unwrap();
    let psi = cgroup.register_trigger(Resource::Memory, trigger).unwrap();
    // Per-cgroup PSI off (Linux 6.1+): the pressure files go, the cgroup stays.
    let switch = cgroup.path().join("cgroup.pressure");
    std::fs::write(&switch, "0").unwrap();
    let unavailable = |what: &str, err: CgroupError| {
        eprintln!("PSI off, {what}: {err}");
        assert!(
            matches!(err, CgroupError::PsiUnavailable { .. }),
            "{what}: {err:?}"
        );
    };
    unavailable("kept snapshot reader", reader.read().unwrap_err());
    unavailable("pressure()", cgroup.pressure(Resource::Memory).unwrap_err());
    unavailable("new reader", SnapshotReader::new(cgroup).unwrap_err());
    unavailable(
        "trigger wait",
        psi.wait(Duration::from_secs(1)).unwrap_err(),
    );
    unavailable(
        "new trigger",
        cgroup
            .register_trigger(Resource::Memory, trigger)
            .unwrap_err(),
    );
    assert!(cgroup.memory_current().unwrap() > 0);
    // And on again: the kept reader reads pressure again (it reopens the file), the trigger
    // stays dead (the kernel keeps failing its fd) and a new one can be registered.
    std::fs::write(&switch, "1").unwrap();
    assert!(cgroup.pressure(Resource::Memory).is_ok());
    let snap = reader.read();
    eprintln!(
        "PSI on again: the kept reader reads {:?}",
        snap.as_ref().map(|s| s.pressure)
    );
    assert!(snap.is_ok(), "{snap:?}");
    assert!(SnapshotReader::new(cgroup).unwrap().read().is_ok());
    unavailable(
        "old trigger",
        psi.wait(Duration::from_millis(100)).unwrap_err(),
    );
    let again = cgroup.register_trigger(Resource::Memory, trigger).unwrap();
    assert_eq!(
        again.wait(Duration::from_millis(100)).unwrap(),
        TriggerEvent::TimedOut
    );
}

#[test]
#[ignore = "guest tier: cargo xtask guest-test"]
fn guest_snapshot_agrees_with_single_reads_then_reports_the_cgroup_gone() {
    let Some(case) = case("snapshot", tiered(64, 32, 16)) else {
        return;
    };
    let cgroup = &case.cgroup;
    cgroup
        .set_limit(LimitFile::High, Limit::Bytes(1 << 30))
        .unwrap();
    cgroup
        .set_limit(LimitFile::Low, Limit::Bytes(8 * MIB))
        .unwrap();
    let mut reader = SnapshotReader::new(cgroup).unwrap();
    // Many reads while the workload runs: every one parses (the values change under us).
    let started = Instant::now();
    for _ in 0..200 {
        reader.read().unwrap();
    }
    let per_read = started.elapsed() / 200;
    let snap = reader.read().unwrap();
    let current = cgroup.memory_current().unwrap();
    let stat = cgroup.memory_stat().unwrap();
    let pressure = cgroup.pressure(Resource::Memory).unwrap();
    eprintln!(
        "snapshot ({per_read:?} a read): current {} MiB (single read {} MiB), anon {} MiB, file {} MiB, \
         high {}, max {}, low {}, pressure some total {} us",
        mib(snap.current),
        mib(current),
        mib(snap.anon),
        mib(snap.file),
        snap.high,
        snap.max,
        snap.low,
        snap.pressure.some.total_us
    );
    assert!(
        snap.current.abs_diff(current) <= 8 * MIB,
        "{snap:?} vs {current}"
    );
    assert!(snap.current >= (64 + 32 + 16) * MIB * 9 / 10, "{snap:?}");
    assert_eq!(snap.high, cgroup.limit(LimitFile::High).unwrap());
    assert_eq!(snap.high, Limit::Bytes(1 << 30));
    assert_eq!(snap.max, cgroup.limit(LimitFile::Max).unwrap());
    assert_eq!(snap.max, Limit::Max);
    assert_eq!(snap.min, Limit::Bytes(0));
    assert_eq!(snap.low, Limit::Bytes(8 * MIB));
    assert!(
        snap.anon.abs_diff(stat.anon().unwrap()) <= 8 * MIB,
        "{snap:?} vs {stat:?}"
    );
    assert!(snap.anon >= 80 * MIB * 9 / 10, "{snap:?}");
    assert!(
        snap.file.abs_diff(stat.file().unwrap()) <= 8 * MIB,
        "{snap:?} vs {stat:?}"
    );
    assert_eq!(snap.unevictable, stat.unevictable().unwrap());
    assert!(
        snap.active_anon + snap.inactive_anon <= snap.anon + 8 * MIB,
        "{snap:?}"
    );
    assert!(snap.pressure.full.is_some(), "{snap:?}");
    assert!(
        snap.pressure.some.total_us <= pressure.some.total_us,
        "{snap:?} vs {pressure:?}"
    );

    // Kill the workload and remove its cgroup: the kept files answer ENODEV.
    let path = cgroup.path().to_owned();
    drop(case.work);
    assert!(!path.exists(), "{} is still there", path.display());
    let err = reader.read().unwrap_err();
    eprintln!("after rmdir: {err}");
    assert!(matches!(err, CgroupError::CgroupGone { .. }), "{err:?}");
    let err = SnapshotReader::new(cgroup).unwrap_err();
    assert!(matches!(err, CgroupError::CgroupGone { .. }), "{err:?}");
}

#[test]
#[ignore = "guest tier: cargo xtask guest-test"]
fn guest_memory_trigger_fires_under_memory_high_and_not_without() {
    let Some(mut case) = case("trigger", tiered(0, 0, 96)) else {
        return;
    };
    let cgroup = &case.cgroup;
    let trigger = Trigger::new(
        Stall::Some,
        Duration::from_millis(50),
        Duration::from_secs(2),
    )
    .unwrap();
    let psi = cgroup.register_trigger(Resource::Memory, trigger).unwrap();
    assert_eq!(psi.path(), cgroup.path().join("memory.pressure"));
    // Unconstrained: the hot set fits, nothing stalls.
    let before = cgroup.pressure(Resource::Memory).unwrap();
    assert_eq!(
        psi.wait(Duration::from_secs(3)).unwrap(),
        TriggerEvent::TimedOut
    );
    let calm = cgroup.pressure(Resource::Memory).unwrap();
    eprintln!(
        "unconstrained 3 s: some total {} -> {} us",
        before.some.total_us, calm.some.total_us
    );
    // Squeezed to a third of the hot set: every pass refaults from swap.
    let squeezed = cgroup.set_limit_within(
        LimitFile::High,
        Limit::Bytes(32 * MIB),
        Duration::from_millis(100),
    );
    let started = Instant::now();
    let event = psi.wait(Duration::from_secs(10)).unwrap();
    let waited = started.elapsed();
    let stalled = cgroup.pressure(Resource::Memory).unwrap();
    eprintln!(
        "memory.high 32 MiB ({squeezed:?}): {event:?} after {:.2} s; some total {} us, avg10 {}",
        waited.as_secs_f64(),
        stalled.some.total_us,
        stalled.some.avg10
    );
    assert_eq!(event, TriggerEvent::Fired);
    assert!(
        stalled.some.total_us >= calm.some.total_us + 50_000,
        "fired with less than 50 ms of new stall: {calm:?} -> {stalled:?}"
    );
    assert!(
        case.work.is_running(),
        "the workload died under memory.high"
    );

    // The cgroup goes away: the trigger says so.
    let path = cgroup.path().to_owned();
    drop(case.work);
    assert!(!path.exists());
    let err = psi.wait(Duration::from_secs(2)).unwrap_err();
    assert!(matches!(err, CgroupError::CgroupGone { .. }), "{err:?}");
}

#[test]
#[ignore = "guest tier: cargo xtask guest-test"]
fn guest_freeze_then_kill_empties_the_cgroup_of_a_runaway() {
    let Some(mut case) = case("kill", Workload::Runaway { mib_per_sec: 32 }) else {
        return;
    };
    let cgroup = &case.cgroup;
    cgroup
        .set_limit(LimitFile::Max, Limit::Bytes(512 * MIB))
        .unwrap(); // a bound, should all else fail
    std::thread::sleep(Duration::from_millis(500));
    let pid = case.work.pid();
    assert!(cgroup.procs().unwrap().contains(&pid));
    assert!(cgroup.events().unwrap().populated);
    // Frozen first, as oomd's kill does: the runaway stops growing.
    cgroup.set_frozen(true).unwrap();
    let frozen = eventually(Duration::from_secs(5), || cgroup.events().unwrap().frozen);
    assert!(frozen.is_some(), "cgroup.events never said frozen");
    let held = cgroup.memory_current().unwrap();
    std::thread::sleep(Duration::from_millis(300));
    let still = cgroup.memory_current().unwrap();
    eprintln!(
        "frozen after {frozen:?}: memory.current {} -> {} MiB in 0.3 s",
        mib(held),
        mib(still)
    );
    assert!(
        still <= held + MIB,
        "a frozen runaway grew: {held} -> {still}"
    );
    let started = Instant::now();
    cgroup.kill().unwrap();
    let emptied = eventually(Duration::from_secs(5), || {
        !cgroup.events().unwrap().populated
    });
    eprintln!(
        "cgroup.kill with {} MiB held: populated 0 after {emptied:?}; memory.current {} MiB",
        mib(held),
        mib(cgroup.memory_current().unwrap())
    );
    assert!(emptied.is_some(), "still populated 5 s after cgroup.kill");
    assert_eq!(cgroup.procs().unwrap(), Vec::<u32>::new());
    assert!(
        eventually(Duration::from_secs(2), || !case.work.is_running()).is_some(),
        "pid {pid} still runs after cgroup.kill"
    );
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "cgroup.kill took {:?}",
        started.elapsed()
    );
    assert_eq!(
        cgroup.memory_events().unwrap().oom_kill,
        0,
        "the OOM killer, not cgroup.kill"
    );
    // Empty now: the API removes it.
    cgroup.remove().unwrap();
}
