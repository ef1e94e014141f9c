//! The host tier's gate and fixtures for twine-agent's tests: root, the cached
//! rootfs (`cargo xtask rootfs`), and scratch directories under /var/tmp.
#![allow(dead_code, unreachable_pub)]

use std::path::PathBuf;

/// Where `cargo xtask rootfs` caches the Debian rootfs, unless `TWINE_ROOTFS` says otherwise.
pub const DEFAULT_ROOTFS: &str = "/var/tmp/twine-cache/rootfs-bookworm";

/// The rootfs the containers boot.
pub fn rootfs() -> PathBuf {
    std::env::var_os("TWINE_ROOTFS").map_or_else(|| PathBuf::from(DEFAULT_ROOTFS), PathBuf::from)
}

/// Why the host tier cannot run here, or `None` when it can.
pub fn unavailable() -> Option<String> {
    if !nix::unistd::geteuid().is_root() {
        return Some("the agent's host tests need root".into());
    }
    let rootfs = rootfs();
    if !rootfs.join("usr/lib/systemd/systemd").exists() {
        return Some(format!(
            "no container rootfs with systemd at {} (build it with `cargo xtask rootfs`, or set TWINE_ROOTFS)",
            rootfs.display()
        ));
    }
    None
}

/// `true` when the host tier can run; otherwise prints why and returns `false`,
/// or panics under `TWINE_REQUIRE_REALSYS=1` so CI cannot skip silently.
pub fn available() -> bool {
    match unavailable() {
        None => true,
        Some(reason) => {
            if std::env::var("TWINE_REQUIRE_REALSYS").is_ok_and(|v| v == "1") {
                panic!("TWINE_REQUIRE_REALSYS=1 but the host tier cannot run: {reason}");
            }
            eprintln!("skipped: {reason}");
            false
        }
    }
}

/// A fresh scratch directory on a disk file system (overlayfs cannot put its
/// upper layer on every file system; /var/tmp is the rootfs's own disk).
pub fn scratch(tag: &str) -> tempfile::TempDir {
    std::fs::create_dir_all("/var/tmp/twine-agent-tests")
        .expect("creating /var/tmp/twine-agent-tests");
    tempfile::Builder::new()
        .prefix(&format!("{tag}-"))
        .tempdir_in("/var/tmp/twine-agent-tests")
        .expect("scratch dir")
}

/// A unique container name for this test process.
pub fn unique(tag: &str) -> String {
    use std::sync::atomic::{AtomicUsize, Ordering};
    static N: AtomicUsize = AtomicUsize::new(0);
    format!(
        "{tag}-{}-{}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    )
}

/// Host mount table lines that mention `needle`.
pub fn host_mounts_mentioning(needle: &str) -> Vec<String> {
    std::fs::read_to_string("/proc/self/mountinfo")
        .expect("mountinfo")
        .lines()
        .filter(|l| l.contains(needle))
        .map(str::to_owned)
        .collect()
}

/// Runs `cmd` inside the container with `nsenter` (all namespaces of `pid`).
pub fn nsenter(pid: i32, cmd: &[&str]) -> std::process::Output {
    std::process::Command::new("nsenter")
        .arg("-t")
        .arg(pid.to_string())
        .arg("-a")
        .args(cmd)
        .output()
        .expect("running nsenter")
}

/// Kills the container if the test panics before shutting it down, so a
/// failing test leaves no container running.
pub struct Guard(Option<twine_agent::container::Container>);

impl Guard {
    /// Guards `c`.
    pub fn new(c: twine_agent::container::Container) -> Guard {
        Guard(Some(c))
    }

    /// The container.
    pub fn get(&self) -> &twine_agent::container::Container {
        self.0.as_ref().expect("guarded container")
    }

    /// Ends the guard, for an orderly shutdown.
    pub fn take(mut self) -> twine_agent::container::Container {
        self.0.take().expect("guarded container")
    }
}

impl Drop for Guard {
    fn drop(&mut self) {
        if let Some(c) = self.0.take() {
            let _ = c.kill();
        }
    }
}

/// Kills every container recorded under a state directory when dropped, so a
/// test that panics half-way leaves no container running. After a passing
/// test there is nothing left to kill.
pub struct Reaper(PathBuf);

impl Reaper {
    /// Reaps under `state` (an agent's state directory).
    pub fn new(state: PathBuf) -> Reaper {
        Reaper(state)
    }
}

impl Drop for Reaper {
    fn drop(&mut self) {
        let Ok(jobs) = std::fs::read_dir(self.0.join("jobs")) else {
            return;
        };
        for job in jobs.flatten() {
            let Ok(text) = std::fs::read_to_string(job.path().join("record.json")) else {
                continue;
            };
            let Ok(record) = serde_json::from_str::<twine_agent::agent::JobRecord>(&text) else {
                continue;
            };
            if let Some(container) = record.container {
                match twine_agent::container::Container::reattach(container.clone()) {
                    Ok(c) => {
                        let _ = c.kill();
                    }
                    Err(_) => {
                        let _ = twine_agent::container::Container::clean_up_record(&container);
                    }
                }
            }
        }
    }
}
