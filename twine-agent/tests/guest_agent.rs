//! Guest tier: a job's `memory_max` is enforced inside the agent's container on a real
//! kernel with the memory controller, a job that allocates past it is OOM-killed by the kernel
//! in the container's cgroup, and the lifecycle reports `Failed { OomKilled }`; a job under its
//! limit runs to `Exited { code: 0 }`. The host's cgroup2 has no memory controller, so this is
//! the only tier where `MemoryMax=` does anything.
//!
//! # The containers' rootfs
//!
//! The containers boot the host's cached bookworm rootfs (`cargo xtask rootfs`, the tree the
//! host tier boots), which `cargo xtask guest-test` shares into the guest over 9p at its host
//! path and names in `TWINE_ROOTFS`. The Debian 6.1 kernel's overlayfs takes the 9p directory
//! as its read-only lower layer (checked by hand with `guest-run`); the upper layer and the
//! work dir stay on the guest's ext4 disk (`/var/tmp`). We chose it over the guest's own `/` as
//! the lower layer (which mounts too) because the guest's root is the rootfs *plus* the CI
//! runner: its `ci-run.service` is enabled in `multi-user.target.wants` and its fstab mounts
//! the control share, so a container booted from it would run the test script again unless
//! each such unit were masked. And over baking a second copy into the image: 270 MB more per
//! image build for the same bytes.
//!
//! # Swap
//!
//! The guest has 2 GiB of swap and `MemoryMax=` bounds RAM only: a job past its limit would be
//! swapped out, not OOM-killed, until the swap ran out. twine-spec has no swap limit, so each
//! test's cgroup parent (the agent's `cgroup_parent`) has `memory.swap.max` 0, which binds
//! every container below it.
//!
//! # The workload
//!
//! No python in the rootfs: `dd if=/dev/zero of=/dev/null bs=SIZE` allocates one buffer of
//! `SIZE` and reads zeros into it, which faults in (and charges) `SIZE` of anonymous memory.
//! The tests read `memory.peak` of the job's unit cgroup to show the buffer was charged.
#![allow(clippy::unwrap_used)] // tests: a failed unwrap is a failed test with its message.

mod realsys;

use std::collections::BTreeMap;
use std::fs;
use std::io::Read as _;
use std::os::unix::fs::OpenOptionsExt as _;
use std::path::{Path, PathBuf};
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant};

use twine_agent::agent::{Agent, AgentSettings};
use twine_agent::container::{Container, ContainerConfig, SeedFile};
use twine_agent::lifecycle::{FailReason, TaskState};
use twine_agent::state::StateDir;
use twine_spec::JobSpec;

const MIB: u64 = 1 << 20;

static SERIAL: Mutex<()> = Mutex::new(());

/// One container at a time: they share two emulated CPUs (a failed test poisons the lock; the
/// next one goes on).
fn serial() -> MutexGuard<'static, ()> {
    SERIAL.lock().unwrap_or_else(|e| e.into_inner())
}

/// `true` in the guest; otherwise says why the test is skipped.
fn in_guest() -> bool {
    let guest = std::env::var_os("TWINE_GUEST").is_some_and(|v| v == "1");
    if !guest {
        eprintln!(
            "skipped: guest-only test (TWINE_GUEST is not 1); run it with `cargo xtask guest-test`"
        );
    }
    guest
}

/// The rootfs, which must be there in the guest (xtask shares it).
fn rootfs() -> PathBuf {
    let rootfs = realsys::rootfs();
    assert!(
        rootfs.join("usr/lib/systemd/systemd").exists(),
        "no rootfs with systemd at {} in the guest (xtask shares the cached rootfs and sets TWINE_ROOTFS)",
        rootfs.display()
    );
    rootfs
}

/// The cgroup2 mount point.
fn cgroup2() -> PathBuf {
    fs::read_to_string("/proc/self/mountinfo")
        .unwrap()
        .lines()
        .find(|l| l.contains(" - cgroup2 "))
        .and_then(|l| l.split_whitespace().nth(4))
        .map(PathBuf::from)
        .expect("a cgroup2 mount")
}

/// `key value` lines of a cgroup file (`memory.events`, `cgroup.events`), or `None` when the
/// file is gone.
fn flat_keyed(path: &Path) -> Option<BTreeMap<String, u64>> {
    let text = fs::read_to_string(path).ok()?;
    Some(
        text.lines()
            .filter_map(|l| {
                let (k, v) = l.split_once(' ')?;
                Some((k.to_owned(), v.trim().parse().ok()?))
            })
            .collect(),
    )
}

fn read_u64(path: &Path) -> Option<u64> {
    fs::read_to_string(path).ok()?.trim().parse().ok()
}

/// A test's cgroup parent (the containers' `cgroup_parent`): the memory controller enabled
/// for it and `memory.swap.max` 0 (see the module docs). Dropping it kills and removes
/// whatever a failed test left below it, then the parent itself.
struct TestParent {
    path: PathBuf,
    /// Relative to the cgroup2 mount, as `cgroup_parent` wants it.
    relative: PathBuf,
}

impl TestParent {
    fn new(tag: &str) -> TestParent {
        let mount = cgroup2();
        let control = mount.join("cgroup.subtree_control");
        fs::write(&control, "+memory")
            .unwrap_or_else(|e| panic!("writing +memory to {}: {e}", control.display()));
        let relative = PathBuf::from(format!("twine-guest-{tag}-{}", std::process::id()));
        let path = mount.join(&relative);
        fs::create_dir(&path).unwrap_or_else(|e| panic!("mkdir {}: {e}", path.display()));
        let swap = path.join("memory.swap.max");
        fs::write(&swap, "0").unwrap_or_else(|e| panic!("writing 0 to {}: {e}", swap.display()));
        TestParent { path, relative }
    }

    /// The child cgroups left below the parent.
    fn children(&self) -> Vec<PathBuf> {
        fs::read_dir(&self.path)
            .unwrap()
            .flatten()
            .filter(|e| e.file_type().is_ok_and(|t| t.is_dir()))
            .map(|e| e.path())
            .collect()
    }
}

impl Drop for TestParent {
    fn drop(&mut self) {
        let _ = fs::write(self.path.join("cgroup.kill"), "1");
        let deadline = Instant::now() + Duration::from_secs(10);
        while flat_keyed(&self.path.join("cgroup.events"))
            .is_some_and(|e| e.get("populated") == Some(&1))
            && Instant::now() < deadline
        {
            std::thread::sleep(Duration::from_millis(10));
        }
        let mut dirs = vec![self.path.clone()];
        let mut i = 0;
        while i < dirs.len() {
            if let Ok(entries) = fs::read_dir(&dirs[i]) {
                dirs.extend(
                    entries
                        .flatten()
                        .filter(|e| e.file_type().is_ok_and(|t| t.is_dir()))
                        .map(|e| e.path()),
                );
            }
            i += 1;
        }
        for dir in dirs.iter().rev() {
            let _ = fs::remove_dir(dir);
        }
    }
}

/// The kernel's OOM-kill reports (`oom-kill:constraint=...,oom_memcg=...`) that name a memory
/// cgroup under `cgroup` (relative to the cgroup2 mount, as the kernel prints it), read from
/// `/dev/kmsg` (the whole ring since boot; tests filter by their own cgroup names).
fn kernel_oom_kills_under(cgroup: &Path) -> Vec<String> {
    let needle = format!("oom_memcg=/{}/", cgroup.display());
    let mut kmsg = fs::OpenOptions::new()
        .read(true)
        .custom_flags(nix::fcntl::OFlag::O_NONBLOCK.bits())
        .open("/dev/kmsg")
        .unwrap();
    let mut out = Vec::new();
    let mut record = vec![0_u8; 16 * 1024];
    loop {
        match kmsg.read(&mut record) {
            Ok(0) => break,
            Ok(n) => {
                let line = String::from_utf8_lossy(&record[..n]);
                if line.contains("oom-kill:") && line.contains(&needle) {
                    out.push(line.trim_end().to_owned());
                }
            }
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => break,
            // EPIPE: records overwritten while we read; go on with the next one.
            Err(e) if e.raw_os_error() == Some(nix::libc::EPIPE) => {}
            Err(e) => panic!("reading /dev/kmsg: {e}"),
        }
    }
    out
}

/// A unit that runs `dd` with a buffer of `buffer_mib` MiB, `count` times, under `MemoryMax`.
fn dd_unit(memory_max: &str, buffer_mib: u64, count: u32, oneshot: bool) -> Vec<u8> {
    let kind = if oneshot {
        "Type=oneshot\nRemainAfterExit=yes\n"
    } else {
        "Type=exec\n"
    };
    format!(
        "[Service]\n{kind}MemoryMax={memory_max}\n\
         ExecStart=/bin/dd if=/dev/zero of=/dev/null bs={buffer_mib}M count={count}\n\
         [Install]\nWantedBy=multi-user.target\n"
    )
    .into_bytes()
}

fn seed_unit(cfg: &mut ContainerConfig, name: &str, contents: Vec<u8>) {
    cfg.seed.push(SeedFile::File {
        path: PathBuf::from("etc/systemd/system").join(name),
        contents,
        mode: 0o644,
    });
    cfg.seed.push(SeedFile::Symlink {
        path: PathBuf::from("etc/systemd/system/multi-user.target.wants").join(name),
        to: PathBuf::from("/etc/systemd/system").join(name),
    });
}

/// `systemctl show -p PROPS` of a unit inside the container.
fn show(pid: i32, unit: &str, props: &str) -> BTreeMap<String, String> {
    let out = realsys::nsenter(pid, &["systemctl", "show", unit, "-p", props]);
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| l.split_once('='))
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect()
}

/// Asserts that nothing of a finished container is left: no cgroup under the test parent,
/// no process in it, no mount mentioning `scratch`, no scratch directory.
fn assert_nothing_left(parent: &TestParent, cgroup: &Path, scratch: &Path) {
    assert!(!cgroup.exists(), "{} is left", cgroup.display());
    assert_eq!(parent.children(), Vec::<PathBuf>::new(), "cgroups left");
    assert_eq!(
        fs::read_to_string(parent.path.join("cgroup.procs")).unwrap(),
        "",
        "processes left"
    );
    assert_eq!(
        flat_keyed(&parent.path.join("cgroup.events")).and_then(|e| e.get("populated").copied()),
        Some(0),
        "the parent is still populated"
    );
    assert_eq!(
        realsys::host_mounts_mentioning(&scratch.to_string_lossy()),
        Vec::<String>::new(),
        "mounts left"
    );
    assert!(!scratch.exists(), "{} is left", scratch.display());
}

#[test]
#[ignore = "guest tier: cargo xtask guest-test"]
fn guest_container_unit_past_its_memory_max_is_oom_killed_and_one_under_it_succeeds() {
    if !in_guest() {
        return;
    }
    let _serial = serial();
    let parent = TestParent::new("container");
    let dir = realsys::scratch("guest-container");
    let mut cfg = ContainerConfig::new(
        realsys::unique("mem"),
        rootfs(),
        dir.path().join("container"),
    );
    cfg.cgroup_parent = parent.relative.clone();
    cfg.ready_timeout = Duration::from_secs(120);
    seed_unit(&mut cfg, "hog.service", dd_unit("64M", 200, 1, false));
    seed_unit(&mut cfg, "fits.service", dd_unit("256M", 32, 3, true));
    let started = Instant::now();
    let guard = realsys::Guard::new(Container::start(&cfg).expect("the container boots"));
    let c = guard.get();
    let pid = c.pid();
    let cgroup = c.record().cgroup.clone();
    eprintln!(
        "container ready after {:.1} s",
        started.elapsed().as_secs_f64()
    );

    // The controllers reached the container's cgroup (cgroup::create enabled them on the way).
    let controllers = fs::read_to_string(cgroup.join("cgroup.controllers")).unwrap();
    assert!(
        controllers.split_whitespace().any(|c| c == "memory"),
        "the container's cgroup has no memory controller: {controllers:?}"
    );

    let deadline = Instant::now() + Duration::from_secs(60);
    let hog = loop {
        let hog = show(pid, "hog.service", "Result,ActiveState,MemoryMax");
        if hog.get("ActiveState").is_some_and(|s| s == "failed") || Instant::now() > deadline {
            break hog;
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    assert_eq!(
        hog.get("Result").map(String::as_str),
        Some("oom-kill"),
        "hog: {hog:?}"
    );
    assert_eq!(
        hog.get("MemoryMax").map(String::as_str),
        Some("67108864"),
        "hog: {hog:?}"
    );
    let fits = show(pid, "fits.service", "Result,ActiveState,ExecMainStatus");
    assert_eq!(
        fits.get("Result").map(String::as_str),
        Some("success"),
        "fits: {fits:?}"
    );
    assert_eq!(
        fits.get("ExecMainStatus").map(String::as_str),
        Some("0"),
        "fits: {fits:?}"
    );
    // The kernel killed inside the container's cgroup: its (hierarchical) memory.events
    // counts the kill, and the kernel's report names the hog's cgroup in the container.
    let events = flat_keyed(&cgroup.join("memory.events")).unwrap();
    assert!(events["oom_kill"] >= 1, "memory.events: {events:?}");
    let name = parent.relative.join(&cfg.name);
    let kills = kernel_oom_kills_under(&name);
    assert!(
        kills
            .iter()
            .any(|k| k.contains("/system.slice/hog.service,")),
        "no kernel OOM kill in {}/system.slice/hog.service: {kills:?}",
        name.display()
    );
    assert!(
        kills.iter().all(|k| !k.contains("fits.service")),
        "fits was OOM-killed: {kills:?}"
    );
    eprintln!("memory.events {events:?}; kernel: {kills:?}");

    let scratch = cfg.scratch.clone();
    guard
        .take()
        .shutdown(Duration::from_secs(60))
        .expect("shutdown");
    assert_nothing_left(&parent, &cgroup, &scratch);
}

/// What the test saw of a job's container while the agent ran it.
#[derive(Debug, Default)]
struct Observed {
    /// The container's cgroup and scratch dir, from the agent's record.
    container: Option<(PathBuf, PathBuf)>,
    /// The highest `oom_kill` of the container's `memory.events` (hierarchical).
    oom_kills: u64,
    /// The highest `memory.peak` of the job's main unit cgroup.
    unit_peak: u64,
}

/// Runs `spec` with an agent whose containers go under `parent`; returns the final state and
/// what polling the agent's record and the container's cgroup showed while it ran.
fn run_job(parent: &TestParent, spec: &str) -> (TaskState, Observed, tempfile::TempDir) {
    let spec = JobSpec::from_toml(spec).expect("the spec parses");
    let job = spec.name.clone();
    let dir = realsys::scratch("guest-agent");
    let mut settings = AgentSettings::new(rootfs());
    settings.cgroup_parent = parent.relative.clone();
    settings.ready_timeout = Duration::from_secs(120);
    settings.poweroff_timeout = Duration::from_secs(60);
    let agent = Agent::open(StateDir::new(dir.path().join("state")), settings).unwrap();
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let started = Instant::now();
    let (state, seen) = runtime.block_on(async {
        let handle = agent.run(spec).await.expect("the agent runs the job");
        let mut seen = Observed::default();
        let limit = Instant::now() + Duration::from_secs(300);
        // The kernel counts an OOM kill before systemd and then the agent notice it, and the
        // container is torn down after that: polling sees the counter first.
        loop {
            if seen.container.is_none() {
                seen.container = agent
                    .record(&job)
                    .unwrap()
                    .and_then(|r| r.container)
                    .map(|c| (c.cgroup, c.scratch));
            }
            if let Some((cgroup, _)) = &seen.container {
                if let Some(events) = flat_keyed(&cgroup.join("memory.events")) {
                    seen.oom_kills = seen.oom_kills.max(events["oom_kill"]);
                }
                let unit = cgroup.join(format!("system.slice/{job}.service/memory.peak"));
                seen.unit_peak = seen.unit_peak.max(read_u64(&unit).unwrap_or(0));
            }
            if handle.state().is_terminal() || Instant::now() > limit {
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let state = tokio::time::timeout(Duration::from_secs(120), handle.wait())
            .await
            .expect("the job ends and is cleaned up within 120 s")
            .expect("the agent reports the end");
        (state, seen)
    });
    eprintln!(
        "{job}: {state:?} after {:.1} s; {seen:?}",
        started.elapsed().as_secs_f64()
    );
    (state, seen, dir)
}

#[test]
#[ignore = "guest tier: cargo xtask guest-test"]
fn guest_memory_max_is_enforced_and_the_oom_kill_is_reported() {
    if !in_guest() {
        return;
    }
    let _serial = serial();
    let parent = TestParent::new("oom");
    let (state, seen, _dir) = run_job(
        &parent,
        r#"
        name = "hog"
        entitlement = "guest-test"
        [task]
        command = ["/bin/dd", "if=/dev/zero", "of=/dev/null", "bs=200M", "count=1"]
        [task.resources]
        memory_max = "64M"
        [task.restart]
        policy = "never"
        "#,
    );
    assert_eq!(
        state,
        TaskState::Failed {
            reason: FailReason::OomKilled
        }
    );
    let (cgroup, scratch) = seen
        .container
        .clone()
        .expect("the agent recorded its container");
    assert!(
        seen.oom_kills >= 1,
        "memory.events never counted a kill: {seen:?}"
    );
    // When the poll caught the unit's cgroup, its peak is the limit, never above it.
    assert!(seen.unit_peak <= 64 * MIB, "{seen:?}");
    let inside = cgroup.strip_prefix(cgroup2()).unwrap().to_path_buf();
    let kills = kernel_oom_kills_under(&inside);
    assert!(
        kills
            .iter()
            .any(|k| k.contains("/system.slice/hog.service,") && k.contains("task=dd,")),
        "no kernel OOM kill of dd in {}/system.slice/hog.service: {kills:?}",
        inside.display()
    );
    assert_nothing_left(&parent, &cgroup, &scratch);
}

#[test]
#[ignore = "guest tier: cargo xtask guest-test"]
fn guest_job_under_its_memory_max_runs_to_completion() {
    if !in_guest() {
        return;
    }
    let _serial = serial();
    let parent = TestParent::new("fits");
    let (state, seen, _dir) = run_job(
        &parent,
        r#"
        name = "fits"
        entitlement = "guest-test"
        [task]
        command = ["/bin/dd", "if=/dev/zero", "of=/dev/null", "bs=32M", "count=40"]
        [task.resources]
        memory_max = "256M"
        [task.restart]
        policy = "never"
        "#,
    );
    assert_eq!(state, TaskState::Exited { code: 0 });
    let (cgroup, scratch) = seen
        .container
        .clone()
        .expect("the agent recorded its container");
    assert_eq!(seen.oom_kills, 0, "{seen:?}");
    // The buffer was really charged to the job (the 32 MiB it allocated, under 256 MiB).
    assert!(
        (32 * MIB..256 * MIB).contains(&seen.unit_peak),
        "memory.peak of fits.service: {} MiB",
        seen.unit_peak / MIB
    );
    let inside = cgroup.strip_prefix(cgroup2()).unwrap().to_path_buf();
    assert_eq!(kernel_oom_kills_under(&inside), Vec::<String>::new());
    assert_nothing_left(&parent, &cgroup, &scratch);
}
