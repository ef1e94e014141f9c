//! `cargo xtask test`: the workspace's one test command. Set-up (as root), the pure and host
//! tiers (`cargo test --workspace`), then the guest tier, with the wall time of each step.

use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};

use crate::{debian, guest, rootfs};

/// Host packages: nspawn for the host tier, debootstrap for the rootfs, tuned for its
/// profiles, etcd (server and etcdctl) for the control plane's real-etcd tests, and protoc
/// with the well-known protos that building etcd-client needs; then the guest tier's.
const HOST_PACKAGES: &[&str] = &[
    "systemd-container",
    "debootstrap",
    "tuned",
    "etcd-server",
    "etcd-client",
    "protobuf-compiler",
    "libprotobuf-dev",
];

/// How one step went.
enum Outcome {
    Passed,
    Failed(String),
    Skipped(&'static str),
}

struct Step {
    name: &'static str,
    outcome: Outcome,
    wall: Duration,
}

/// Run every step; returns the exit status (0 only when no step failed).
pub(crate) fn run(guest_timeout: Duration) -> i32 {
    let root = debian::is_root();
    let require_realsys = crate::require_realsys();
    let mut steps = Vec::new();
    let mut step = |name: &'static str, f: &mut dyn FnMut() -> Result<Outcome>| {
        eprintln!("xtask: == {name}");
        let started = Instant::now();
        let outcome = f().unwrap_or_else(|e| Outcome::Failed(format!("{e:#}")));
        if let Outcome::Failed(why) = &outcome {
            eprintln!("xtask: {name} failed: {why}");
        }
        steps.push(Step {
            name,
            outcome,
            wall: started.elapsed(),
        });
    };

    const NOT_ROOT: &str = "not root";
    if !root {
        eprintln!(
            "xtask: not root: skipping apt packages, the rootfs and the guest tier; real-system tests skip themselves \
             unless TWINE_REQUIRE_REALSYS=1"
        );
    }
    step("apt packages", &mut || {
        if !root {
            return Ok(Outcome::Skipped(NOT_ROOT));
        }
        let mut packages = HOST_PACKAGES.to_vec();
        packages.extend(guest::PACKAGES);
        debian::ensure_packages(&packages)?;
        Ok(Outcome::Passed)
    });
    step("rootfs", &mut || {
        if !root {
            return Ok(Outcome::Skipped(NOT_ROOT));
        }
        rootfs::ensure(false)?;
        Ok(Outcome::Passed)
    });
    step("cargo test --workspace", &mut || {
        let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
        let mut cmd = Command::new(cargo);
        // The LP backend of twine-sched is a feature; its tests only build with it.
        cmd.args(["test", "--workspace", "--features", "twine-sched/lp"]);
        if std::env::var_os("TWINE_ROOTFS").is_none() {
            cmd.env("TWINE_ROOTFS", rootfs::path());
        }
        let status = cmd.status().context("running cargo test --workspace")?;
        if !status.success() {
            bail!("cargo test --workspace: {status}");
        }
        Ok(Outcome::Passed)
    });
    step("guest tier", &mut || {
        if !root {
            if require_realsys {
                bail!("the guest tier needs root and TWINE_REQUIRE_REALSYS=1 is set");
            }
            return Ok(Outcome::Skipped(NOT_ROOT));
        }
        let code = guest::run(&guest::GuestTest {
            packages: Vec::new(),
            test_args: Vec::new(),
            guest: guest::GuestOptions {
                timeout: guest_timeout,
                memory: guest::GUEST_MEMORY.to_owned(),
                shares: Vec::new(),
            },
        })?;
        if code != 0 {
            bail!("guest tests exited with status {code}");
        }
        Ok(Outcome::Passed)
    });

    let total: Duration = steps.iter().map(|s| s.wall).sum();
    println!("\nstep                      result   wall");
    for s in &steps {
        let result = match &s.outcome {
            Outcome::Passed => "ok".to_owned(),
            Outcome::Failed(_) => "FAILED".to_owned(),
            Outcome::Skipped(why) => format!("skipped ({why})"),
        };
        let (result, note) = result.split_once(' ').unwrap_or((&result, ""));
        println!(
            "{:<25} {:<8} {:>6.1} s {note}",
            s.name,
            result,
            s.wall.as_secs_f64()
        );
    }
    println!("{:<25} {:<8} {:>6.1} s", "total", "", total.as_secs_f64());
    let failed: Vec<&str> = steps
        .iter()
        .filter(|s| matches!(s.outcome, Outcome::Failed(_)))
        .map(|s| s.name)
        .collect();
    if failed.is_empty() {
        0
    } else {
        eprintln!("xtask: failed: {}", failed.join(", "));
        1
    }
}
