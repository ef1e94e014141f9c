//! Host tier: the cgroup2 I/O layer on the real kernel, as root. On the CI host cgroup2 is at
//! `/sys/fs/cgroup/unified` (hybrid; no memory controller on v2, but per-cgroup PSI files).
//! Each test skips with a one-line reason when the host cannot run it, and fails instead
//! under `TWINE_REQUIRE_REALSYS=1`.
#![allow(clippy::unwrap_used)] // tests: a failed unwrap is a failed test with its message.

use std::fs;
use std::process::{Child, Command};
use std::time::{Duration, Instant};

use twine_oomd::{
    Cgroup, CgroupError, CgroupEvents, CgroupRoot, Resource, Stall, Trigger, TriggerEvent,
};

/// What a test does when the host cannot run it: skip with a reason, or fail under
/// `TWINE_REQUIRE_REALSYS=1`.
fn realsys_gate(reason: &str) -> Option<CgroupRoot> {
    if std::env::var("TWINE_REQUIRE_REALSYS").is_ok_and(|v| v == "1") {
        panic!("TWINE_REQUIRE_REALSYS=1 but the real system is not usable: {reason}");
    }
    eprintln!("skipped: {reason}");
    None
}

/// The real cgroup2 mount, if this host can run the tests.
fn host_root() -> Option<CgroupRoot> {
    if !nix::unistd::geteuid().is_root() {
        return realsys_gate("host cgroup2 tests need root");
    }
    match CgroupRoot::find() {
        Ok(root) if root.path().join("cgroup.procs").exists() => Some(root),
        Ok(root) => realsys_gate(&format!("{} is not a cgroup2 mount", root.path().display())),
        Err(e) => realsys_gate(&e.to_string()),
    }
}

/// A cgroup made for one test; dropping it kills what is left in it and removes it.
struct TestCgroup(Cgroup);

impl TestCgroup {
    fn new(root: &CgroupRoot, name: &str) -> Self {
        let name = format!("twine-oomd-{name}-{}", std::process::id());
        Self(root.top().create_child(&name).unwrap())
    }
}

impl Drop for TestCgroup {
    fn drop(&mut self) {
        if !self.0.path().exists() {
            return;
        }
        let _ = self.0.kill();
        for _ in 0..50 {
            if self.0.remove().is_ok() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

/// Kills and reaps the child when the test ends, pass or fail.
struct Reaped(Child);

impl Drop for Reaped {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Waits up to 5 s for `cgroup.events` to satisfy `want`.
fn wait_for_events(cg: &Cgroup, want: impl Fn(CgroupEvents) -> bool, what: &str) {
    let deadline = Instant::now() + Duration::from_secs(5);
    while !want(cg.events().unwrap()) {
        assert!(Instant::now() < deadline, "cgroup.events never said {what}");
        std::thread::sleep(Duration::from_millis(10));
    }
}

fn has_cap_sys_resource() -> bool {
    let status = fs::read_to_string("/proc/self/status").unwrap();
    let eff = status
        .lines()
        .find_map(|l| l.strip_prefix("CapEff:"))
        .map(|v| u64::from_str_radix(v.trim(), 16).unwrap())
        .unwrap();
    eff & (1 << 24) != 0 // CAP_SYS_RESOURCE
}

#[test]
fn host_reads_pressure_files_of_a_new_cgroup() {
    let Some(root) = host_root() else { return };
    let cg = TestCgroup::new(&root, "pressure");
    for resource in [Resource::Memory, Resource::Cpu, Resource::Io] {
        let p = cg.0.pressure(resource).unwrap();
        assert_eq!(
            p.some.total_us, 0,
            "{resource:?}: a new cgroup has not stalled"
        );
        assert!(
            p.full.is_some(),
            "{resource:?}: kernels since 5.13 write a full line"
        );
    }
    assert!(root.top().children().unwrap().contains(&cg.0));
    assert!(!cg.0.events().unwrap().populated);

    // Disabling PSI for the cgroup removes the files: PsiUnavailable, not CgroupGone.
    fs::write(cg.0.path().join("cgroup.pressure"), "0").unwrap();
    let err = cg.0.pressure(Resource::Memory).unwrap_err();
    assert!(matches!(err, CgroupError::PsiUnavailable { .. }), "{err}");
}

#[test]
fn host_trigger_times_out_then_reports_the_cgroup_gone() {
    let Some(root) = host_root() else { return };
    let cg = TestCgroup::new(&root, "trigger");
    let two_s = Trigger::new(
        Stall::Some,
        Duration::from_millis(150),
        Duration::from_secs(2),
    )
    .unwrap();
    let trigger = cg.0.register_trigger(Resource::Memory, two_s).unwrap();
    let started = Instant::now();
    assert_eq!(
        trigger.wait(Duration::from_millis(200)).unwrap(),
        TriggerEvent::TimedOut
    );
    assert!(started.elapsed() >= Duration::from_millis(200));

    // A window that is not a multiple of 2 s needs CAP_SYS_RESOURCE.
    let one_s = Trigger::new(
        Stall::Some,
        Duration::from_millis(10),
        Duration::from_secs(1),
    )
    .unwrap();
    match cg.0.register_trigger(Resource::Memory, one_s) {
        Err(CgroupError::TriggerNeedsPrivilege { .. }) => assert!(!has_cap_sys_resource()),
        Ok(_) => assert!(has_cap_sys_resource()),
        Err(e) => panic!("{e}"),
    }

    // Removing the cgroup wakes the waiter at once (the kernel reports POLLPRI|POLLERR).
    cg.0.remove().unwrap();
    let started = Instant::now();
    let err = trigger.wait(Duration::from_secs(5)).unwrap_err();
    assert!(matches!(err, CgroupError::CgroupGone { .. }), "{err}");
    assert!(started.elapsed() < Duration::from_secs(1));
}

#[test]
fn host_trigger_on_a_cgroup_whose_psi_is_disabled_reports_psi_unavailable() {
    let Some(root) = host_root() else { return };
    let cg = TestCgroup::new(&root, "psi-off");
    let t = Trigger::new(
        Stall::Full,
        Duration::from_millis(100),
        Duration::from_secs(2),
    )
    .unwrap();
    let trigger = cg.0.register_trigger(Resource::Io, t).unwrap();
    fs::write(cg.0.path().join("cgroup.pressure"), "0").unwrap();
    let err = trigger.wait(Duration::from_secs(5)).unwrap_err();
    assert!(matches!(err, CgroupError::PsiUnavailable { .. }), "{err}");
}

#[test]
fn host_trigger_fires_under_cpu_contention() {
    let Some(root) = host_root() else { return };
    let cg = TestCgroup::new(&root, "fires");
    let t = Trigger::new(
        Stall::Some,
        Duration::from_millis(50),
        Duration::from_secs(2),
    )
    .unwrap();
    let trigger = cg.0.register_trigger(Resource::Cpu, t).unwrap();
    // More busy loops than CPUs stall each other; at the lowest priority to spare other work.
    let cpus = std::thread::available_parallelism().map_or(2, |n| n.get());
    let _busy: Vec<Reaped> = (0..=cpus)
        .map(|_| {
            let child = Reaped(
                Command::new("nice")
                    .args(["-n", "19", "sh", "-c", "while :; do :; done"])
                    .spawn()
                    .unwrap(),
            );
            cg.0.move_process(child.0.id()).unwrap();
            child
        })
        .collect();
    assert_eq!(
        trigger.wait(Duration::from_secs(10)).unwrap(),
        TriggerEvent::Fired
    );
    assert!(cg.0.pressure(Resource::Cpu).unwrap().some.total_us > 0);
}

#[test]
fn host_moves_a_process_in_and_kills_it_through_cgroup_kill() {
    let Some(root) = host_root() else { return };
    let cg = TestCgroup::new(&root, "kill");
    if !cg.0.path().join("cgroup.kill").exists() {
        realsys_gate("no cgroup.kill (Linux 5.14+)");
        return;
    }
    let mut child = Reaped(Command::new("sleep").arg("60").spawn().unwrap());
    cg.0.move_process(child.0.id()).unwrap();
    assert_eq!(cg.0.procs().unwrap(), [child.0.id()]);
    assert!(cg.0.events().unwrap().populated);

    // Freeze first, as oomd's kernel kill does, so nothing forks during the kill.
    cg.0.set_frozen(true).unwrap();
    wait_for_events(&cg.0, |e| e.frozen, "frozen 1");
    cg.0.kill().unwrap();
    let status = child.0.wait().unwrap();
    use std::os::unix::process::ExitStatusExt as _;
    assert_eq!(status.signal(), Some(9), "{status}");
    let deadline = Instant::now() + Duration::from_secs(5);
    while cg.0.events().unwrap().populated {
        assert!(
            Instant::now() < deadline,
            "cgroup.events still says populated 1"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
    assert!(cg.0.procs().unwrap().is_empty());
}

#[test]
fn host_daemon_on_a_real_cgroup_reports_it_and_drops_it_when_it_goes() {
    use twine_oomd::daemon::{Daemon, Options, Selection};
    let Some(root) = host_root() else { return };
    let cg = TestCgroup::new(&root, "daemon");
    let rel = cg.0.relative().to_str().unwrap().to_owned();
    let mut options = Options::new(root.clone(), Selection::Cgroups(vec![rel.clone()]));
    options.mode = Some(twine_oomd::senpai::Mode::High);
    options.state_file = None;
    let mut daemon = Daemon::new(options).unwrap();
    let report = daemon.tick(Duration::ZERO).unwrap();
    assert_eq!(report.records.len(), 1, "{report:?}");
    let record = &report.records[0];
    if cg.0.path().join("memory.current").exists() {
        assert!(
            record.current.is_some() && record.error.is_none(),
            "{record:?}"
        );
        assert_eq!(daemon.cgroups().collect::<Vec<_>>(), [rel.as_str()]);
    } else {
        // A hybrid host: no memory controller on cgroup2. Reported, retried, not fatal.
        let error = record.error.as_deref().unwrap();
        assert!(error.contains("memory.current"), "{error}");
        assert_eq!(daemon.cgroups().count(), 0);
    }
    cg.0.remove().unwrap();
    let report = daemon.tick(Duration::from_secs(1)).unwrap();
    assert!(report.records.is_empty(), "{report:?}");
    assert_eq!(daemon.cgroups().count(), 0);
    assert!(daemon.restore().unwrap().is_empty());
}
