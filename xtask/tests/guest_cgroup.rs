//! Guest tier: cgroup2 with the memory controller, memory.high and PSI on a real kernel.
#![allow(clippy::unwrap_used)] // tests: a failed unwrap is a failed test with its message.

mod support;

use std::fs;
use std::os::fd::AsFd as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::time::{Duration, Instant};

use nix::poll::{PollFd, PollFlags, PollTimeout, poll};

const CGROUP_ROOT: &str = "/sys/fs/cgroup";

/// A cgroup made for one test, removed (after killing what is left in it) when dropped.
struct TestCgroup(PathBuf);

impl TestCgroup {
    fn new(name: &str) -> Self {
        let root = Path::new(CGROUP_ROOT);
        // systemd normally has memory on already; writing it again is harmless.
        fs::write(root.join("cgroup.subtree_control"), "+memory").unwrap();
        let path = root.join(format!("{name}-{}", std::process::id()));
        fs::create_dir(&path).unwrap_or_else(|e| panic!("mkdir {}: {e}", path.display()));
        Self(path)
    }

    fn file(&self, name: &str) -> PathBuf {
        self.0.join(name)
    }
}

impl Drop for TestCgroup {
    fn drop(&mut self) {
        let _ = fs::write(self.file("cgroup.kill"), "1");
        for _ in 0..50 {
            if fs::remove_dir(&self.0).is_ok() {
                return;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

/// Kills the child when the test ends, pass or fail.
struct Reaped(Child);

impl Drop for Reaped {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[test]
#[ignore = "guest tier: cargo xtask guest-test"]
fn guest_cgroup2_lists_memory_controller() {
    if !support::in_guest() {
        return;
    }
    let controllers =
        fs::read_to_string(Path::new(CGROUP_ROOT).join("cgroup.controllers")).unwrap();
    assert!(
        controllers.split_whitespace().any(|c| c == "memory"),
        "cgroup.controllers: {controllers}"
    );
}

#[test]
#[ignore = "guest tier: cargo xtask guest-test"]
fn guest_transient_unit_gets_memory_high() {
    if !support::in_guest() {
        return;
    }
    let out = Command::new("systemd-run")
        .args([
            "--quiet",
            "--pipe",
            "--wait",
            "--collect",
            "-p",
            "MemoryHigh=50M",
        ])
        .args([
            "sh",
            "-c",
            "cat /sys/fs/cgroup$(cut -d: -f3 /proc/self/cgroup)/memory.high",
        ])
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "systemd-run: {}: {stdout} {}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(stdout.trim(), (50 * 1024 * 1024).to_string());
}

#[test]
#[ignore = "guest tier: cargo xtask guest-test"]
fn guest_created_cgroup_has_writable_memory_high_and_pressure() {
    if !support::in_guest() {
        return;
    }
    let cgroup = TestCgroup::new("twine-guest-high");
    fs::write(cgroup.file("memory.high"), "104857600").unwrap();
    assert_eq!(
        fs::read_to_string(cgroup.file("memory.high"))
            .unwrap()
            .trim(),
        "104857600"
    );
    let pressure = fs::read_to_string(cgroup.file("memory.pressure")).unwrap();
    assert!(
        pressure.starts_with("some avg10="),
        "memory.pressure: {pressure}"
    );
    assert!(
        pressure.contains("\nfull avg10="),
        "memory.pressure: {pressure}"
    );
}

#[test]
#[ignore = "guest tier: cargo xtask guest-test"]
fn guest_psi_trigger_fires_when_allocating_past_memory_high() {
    if !support::in_guest() {
        return;
    }
    let cgroup = TestCgroup::new("twine-guest-psi");
    fs::write(cgroup.file("memory.high"), (16 * 1024 * 1024).to_string()).unwrap();
    // 10 ms of stall within a 1 s window: root in the guest has CAP_SYS_RESOURCE, so sub-2 s
    // windows are allowed (on the project's hosts they are not).
    let pressure = fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(cgroup.file("memory.pressure"))
        .unwrap();
    nix::unistd::write(&pressure, b"some 10000 1000000\0").unwrap();

    // dd reads into one 128 MiB buffer: 8x memory.high of anonymous memory that it touches over
    // and over, so the kernel throttles it (swapping it out and back in) and counts the time as
    // memory stall.
    let procs = cgroup.file("cgroup.procs");
    let _hog = Reaped(
        Command::new("sh")
            .arg("-c")
            .arg(format!(
                "echo $$ > {} && exec dd if=/dev/zero of=/dev/null bs=128M count=100 status=none",
                procs.display()
            ))
            .spawn()
            .unwrap(),
    );
    let started = Instant::now();
    let mut fds = [PollFd::new(pressure.as_fd(), PollFlags::POLLPRI)];
    let ready = poll(&mut fds, PollTimeout::from(30_000u16)).unwrap();
    let revents = fds[0].revents().unwrap_or(PollFlags::empty());
    assert!(
        ready == 1 && revents.contains(PollFlags::POLLPRI),
        "no PSI event within 30 s (revents {revents:?}); memory.pressure: {}; memory.current: {}",
        fs::read_to_string(cgroup.file("memory.pressure")).unwrap_or_default(),
        fs::read_to_string(cgroup.file("memory.current")).unwrap_or_default(),
    );
    assert!(
        !revents.contains(PollFlags::POLLERR),
        "trigger error: {revents:?}"
    );
    eprintln!("PSI trigger fired after {:?}", started.elapsed());
}

#[test]
#[ignore = "guest tier: cargo xtask guest-test"]
fn guest_swap_is_active() {
    if !support::in_guest() {
        return;
    }
    // `Filename Type Size Used Priority`, sizes in KiB; the runner makes a 2 GiB swap file.
    let swaps = fs::read_to_string("/proc/swaps").unwrap();
    let total_kib: u64 = swaps
        .lines()
        .skip(1)
        .filter_map(|l| l.split_whitespace().nth(2)?.parse::<u64>().ok())
        .sum();
    assert!(
        total_kib >= 1 << 20,
        "less than 1 GiB of swap: /proc/swaps: {swaps}"
    );
}
