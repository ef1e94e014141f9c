//! `twine agent`: run a job in the foreground (its log lines on stdout, its exit
//! status as ours), SIGKILL the agent mid-run and run it again (the job keeps
//! running, is reattached, and the store holds every line exactly once), `logs`,
//! the daemon and its client, and the errors scripts see (not root, no rootfs).
//!
//! Host tier: needs root and the cached rootfs (`cargo xtask rootfs`); skips with
//! a one-line reason otherwise, and fails under `TWINE_REQUIRE_REALSYS=1`.
#![allow(clippy::unwrap_used)] // tests: a failed unwrap is a failed test with its message.

use std::fs;
use std::io::{BufRead as _, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

mod support;
use support::twine;

const DEFAULT_ROOTFS: &str = "/var/tmp/twine-cache/rootfs-bookworm";

fn rootfs() -> PathBuf {
    std::env::var_os("TWINE_ROOTFS").map_or_else(|| PathBuf::from(DEFAULT_ROOTFS), PathBuf::from)
}

fn available() -> bool {
    let reason = if !nix::unistd::geteuid().is_root() {
        Some("twine agent tests need root".to_owned())
    } else if !rootfs().join("usr/lib/systemd/systemd").exists() {
        Some(format!(
            "no rootfs at {} (cargo xtask rootfs)",
            rootfs().display()
        ))
    } else {
        None
    };
    match reason {
        None => true,
        Some(reason) => {
            assert!(
                !std::env::var("TWINE_REQUIRE_REALSYS").is_ok_and(|v| v == "1"),
                "TWINE_REQUIRE_REALSYS=1 but: {reason}"
            );
            eprintln!("skipped: {reason}");
            false
        }
    }
}

fn scratch(tag: &str) -> tempfile::TempDir {
    fs::create_dir_all("/var/tmp/twine-agent-tests").unwrap();
    tempfile::Builder::new()
        .prefix(&format!("cli-{tag}-"))
        .tempdir_in("/var/tmp/twine-agent-tests")
        .unwrap()
}

fn write_spec(dir: &Path, name: &str, body: &str) -> PathBuf {
    let path = dir.join(format!("{name}.toml"));
    fs::write(
        &path,
        format!("name = \"{name}\"\nentitlement = \"test\"\n{body}"),
    )
    .unwrap();
    path
}

fn unique(tag: &str) -> String {
    format!("{tag}-{}", std::process::id())
}

/// Messages of the job's store, read from the segment files (JSON lines).
fn stored(state: &Path, job: &str) -> Vec<String> {
    let logs = state.join("jobs").join(job).join("logs");
    let mut segs: Vec<PathBuf> = fs::read_dir(&logs)
        .map(|d| d.flatten().map(|e| e.path()).collect())
        .unwrap_or_default();
    segs.retain(|p| p.extension().is_some_and(|e| e == "log"));
    segs.sort();
    segs.iter()
        .flat_map(|p| {
            fs::read_to_string(p)
                .unwrap()
                .lines()
                .map(str::to_owned)
                .collect::<Vec<_>>()
        })
        .map(|l| {
            serde_json::from_str::<serde_json::Value>(&l).unwrap()["msg"]
                .as_str()
                .unwrap_or_default()
                .to_owned()
        })
        .collect()
}

#[test]
fn run_streams_the_jobs_lines_and_exits_with_its_status() {
    if !available() {
        return;
    }
    let dir = scratch("run");
    let job = unique("run");
    let spec = write_spec(
        dir.path(),
        &job,
        "[task]\ncommand = [\"/bin/sh\", \"-c\", \"echo first; echo second; exit 3\"]\n[task.restart]\npolicy = \"never\"\n",
    );
    let state = dir.path().join("state");
    let out = twine(&[
        "agent",
        "run",
        spec.to_str().unwrap(),
        "--rootfs",
        rootfs().to_str().unwrap(),
        "--state-dir",
        state.to_str().unwrap(),
    ]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(
        out.status.code(),
        Some(3),
        "stdout {stdout}\nstderr {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let lines: Vec<&str> = stdout
        .lines()
        .filter(|l| *l == "first" || *l == "second")
        .collect();
    assert_eq!(lines, ["first", "second"], "{stdout}");
    // `logs` prints the same lines from the store, in order.
    let out = twine(&[
        "agent",
        "logs",
        &job,
        "--state-dir",
        state.to_str().unwrap(),
    ]);
    let logs = support::stdout(&out);
    let lines: Vec<&str> = logs
        .lines()
        .filter(|l| *l == "first" || *l == "second")
        .collect();
    assert_eq!(lines, ["first", "second"], "{logs}");
    let out = twine(&[
        "agent",
        "logs",
        &job,
        "--state-dir",
        state.to_str().unwrap(),
        "--json",
    ]);
    for line in support::stdout(&out).lines() {
        let v: serde_json::Value = serde_json::from_str(line).unwrap();
        assert!(
            v["seq"].is_u64() && v["msg"].is_string() && v["unit"].is_string(),
            "{line}"
        );
    }
}

#[test]
fn sigkill_mid_run_then_run_again_reattaches_without_losing_or_repeating_a_line() {
    if !available() {
        return;
    }
    let dir = scratch("reattach");
    let job = unique("reattach");
    // 3000 numbered lines over about 3 s, then exit 0.
    let spec = write_spec(
        dir.path(),
        &job,
        "[task]\ncommand = [\"/bin/sh\", \"-c\", \"i=0; while [ $i -lt 3000 ]; do i=$((i+1)); echo n$i; case $i in *00) sleep 0.1;; esac; done\"]\n[task.restart]\npolicy = \"never\"\n",
    );
    let state = dir.path().join("state");
    let rootfs = rootfs();
    let args = [
        "agent",
        "run",
        spec.to_str().unwrap(),
        "--rootfs",
        rootfs.to_str().unwrap(),
        "--state-dir",
        state.to_str().unwrap(),
    ];
    let mut first = Command::new(env!("CARGO_BIN_EXE_twine"))
        .args(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    // Wait until some lines are out, then SIGKILL the agent.
    let mut reader = BufReader::new(first.stdout.take().unwrap());
    let mut seen = 0;
    let mut line = String::new();
    while seen < 200 && reader.read_line(&mut line).unwrap() > 0 {
        if line.starts_with('n') {
            seen += 1;
        }
        line.clear();
    }
    first.kill().unwrap();
    first.wait().unwrap();
    // The container is still there, running the job.
    let record: serde_json::Value = serde_json::from_str(
        &fs::read_to_string(state.join("jobs").join(&job).join("record.json")).unwrap(),
    )
    .unwrap();
    let pid = record["container"]["pid"]
        .as_i64()
        .expect("the record names the running container");
    assert!(
        Path::new(&format!("/proc/{pid}")).exists(),
        "the container outlived the agent"
    );
    // The lock died with the agent: a new one takes over.
    let started = Instant::now();
    let out = Command::new(env!("CARGO_BIN_EXE_twine"))
        .args(args)
        .output()
        .unwrap();
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("reattached"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(started.elapsed() < Duration::from_secs(60));
    let want: Vec<String> = (1..=3000).map(|i| format!("n{i}")).collect();
    let got: Vec<String> = stored(&state, &job)
        .into_iter()
        .filter(|m| m.starts_with('n'))
        .collect();
    assert_eq!(got.len(), want.len(), "no line lost or repeated");
    assert!(got == want, "in order");
    assert!(
        !Path::new(&format!("/proc/{pid}/cgroup")).exists()
            || !fs::read_to_string(format!("/proc/{pid}/stat"))
                .unwrap_or_default()
                .contains(" S "),
        "the container is gone at the end"
    );
}

#[test]
fn the_daemon_runs_submitted_jobs_and_answers_status_and_stop() {
    if !available() {
        return;
    }
    let dir = scratch("daemon");
    let job = unique("daemon");
    let spec = write_spec(
        dir.path(),
        &job,
        "[task]\ncommand = [\"/bin/sh\", \"-c\", \"echo daemon job; exec sleep infinity\"]\n",
    );
    let state = dir.path().join("state");
    let socket = dir.path().join("agent.sock");
    let mut daemon = Command::new(env!("CARGO_BIN_EXE_twine"))
        .args([
            "agent",
            "daemon",
            "--state-dir",
            state.to_str().unwrap(),
            "--socket",
            socket.to_str().unwrap(),
            "--rootfs",
            rootfs().to_str().unwrap(),
        ])
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let start = Instant::now();
    while !socket.exists() && start.elapsed() < Duration::from_secs(20) {
        std::thread::sleep(Duration::from_millis(20));
    }
    let ctl = |args: &[&str]| {
        let mut all = vec!["agent", "ctl", "--socket", socket.to_str().unwrap()];
        all.extend_from_slice(args);
        twine(&all)
    };
    let out = ctl(&["submit", spec.to_str().unwrap()]);
    let reply: serde_json::Value = serde_json::from_str(&support::stdout(&out)).unwrap();
    assert_eq!(reply["submitted"], job.as_str());
    let deadline = Instant::now() + Duration::from_secs(30);
    let state_of = || {
        let out = ctl(&["status", &job]);
        let v: serde_json::Value = serde_json::from_str(&support::stdout(&out)).unwrap();
        v["jobs"][0]["state"]["state"]
            .as_str()
            .unwrap_or_default()
            .to_owned()
    };
    while state_of() != "running" {
        assert!(Instant::now() < deadline, "never running: {}", state_of());
        std::thread::sleep(Duration::from_millis(100));
    }
    let out = ctl(&["status", "no-such-job"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("no-such-job"));
    support::stdout(&ctl(&["stop", &job]));
    while !matches!(state_of().as_str(), "exited" | "failed") {
        assert!(Instant::now() < deadline, "never stopped: {}", state_of());
        std::thread::sleep(Duration::from_millis(100));
    }
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(i32::try_from(daemon.id()).unwrap()),
        nix::sys::signal::Signal::SIGTERM,
    )
    .unwrap();
    assert!(daemon.wait().unwrap().success());
    assert!(stored(&state, &job).contains(&"daemon job".to_owned()));
}

#[test]
fn a_missing_rootfs_and_a_non_root_caller_get_clear_errors() {
    if !available() {
        return;
    }
    let dir = scratch("errors");
    let job = unique("errors");
    let spec = write_spec(dir.path(), &job, "[task]\ncommand = [\"/bin/true\"]\n");
    let state = dir.path().join("state");
    let out = twine(&[
        "agent",
        "run",
        spec.to_str().unwrap(),
        "--rootfs",
        "/nonexistent/rootfs",
        "--state-dir",
        state.to_str().unwrap(),
    ]);
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("/nonexistent/rootfs") && err.contains("no such rootfs"),
        "{err}"
    );
    // Not root: setpriv drops to nobody; the state dir is theirs.
    let state = dir.path().join("nobody-state");
    fs::create_dir(&state).unwrap();
    nix::unistd::chown(
        &state,
        Some(nix::unistd::Uid::from_raw(65534)),
        Some(nix::unistd::Gid::from_raw(65534)),
    )
    .unwrap();
    fs::set_permissions(
        dir.path(),
        std::os::unix::fs::PermissionsExt::from_mode(0o755),
    )
    .unwrap();
    let out = Command::new("setpriv")
        .args([
            "--reuid=65534",
            "--regid=65534",
            "--clear-groups",
            env!("CARGO_BIN_EXE_twine"),
            "agent",
            "run",
            spec.to_str().unwrap(),
            "--rootfs",
        ])
        .arg(rootfs())
        .arg("--state-dir")
        .arg(&state)
        .output()
        .unwrap();
    assert_eq!(
        out.status.code(),
        Some(1),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("need root"), "{err}");
}
