//! Host tier: the agent runs jobs in its own containers (the cached rootfs,
//! booted by the agent itself, no nspawn) and drives them over D-Bus.
//! Outputs are checked independently: log lines by parsing the store's
//! segment files here, cleanup from /proc/self/mountinfo and the cgroup tree.

mod realsys;

use std::fs;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use twine_agent::agent::{Agent, AgentError, AgentSettings, JobHandle, job_key};
use twine_agent::lifecycle::{FailReason, TaskState};
use twine_agent::state::{StateDir, StateError};
use twine_spec::JobSpec;

fn spec(toml: &str) -> JobSpec {
    JobSpec::from_toml(toml).unwrap_or_else(|e| panic!("spec: {e}\n{toml}"))
}

fn agent(dir: &Path) -> Agent {
    Agent::open(
        StateDir::new(dir.join("state")),
        AgentSettings::new(realsys::rootfs()),
    )
    .expect("agent opens")
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime")
}

/// `(unit, message)` of every line in a job's log store, read straight from
/// the segment files (JSON lines), oldest segment first.
fn stored(dir: &Path, job: &str) -> Vec<(String, String)> {
    let logs = dir.join("state/jobs").join(job_key(job)).join("logs");
    let mut segments: Vec<PathBuf> = fs::read_dir(&logs)
        .map(|d| d.flatten().map(|e| e.path()).collect())
        .unwrap_or_default();
    segments.retain(|p| p.extension().is_some_and(|e| e == "log"));
    segments.sort();
    let mut out = Vec::new();
    let mut last_seq = 0;
    for seg in segments {
        for line in fs::read_to_string(&seg).expect("segment").lines() {
            let v: serde_json::Value = serde_json::from_str(line)
                .unwrap_or_else(|e| panic!("{}: {e}: {line}", seg.display()));
            if v.get("segment").is_some() {
                continue; // each segment starts with its header
            }
            let seq = v["seq"].as_u64().expect("seq");
            assert_eq!(seq, last_seq + 1, "store sequence numbers are consecutive");
            last_seq = seq;
            out.push((
                v["unit"].as_str().unwrap_or_default().to_owned(),
                v["msg"].as_str().unwrap_or_default().to_owned(),
            ));
        }
    }
    out
}

fn messages(dir: &Path, job: &str) -> Vec<String> {
    stored(dir, job).into_iter().map(|(_, m)| m).collect()
}

/// The cgroup2 mount of this host.
fn cgroup2() -> PathBuf {
    let mounts = fs::read_to_string("/proc/self/mountinfo").expect("mountinfo");
    mounts
        .lines()
        .find(|l| l.contains(" - cgroup2 "))
        .and_then(|l| l.split_whitespace().nth(4))
        .map(PathBuf::from)
        .expect("a cgroup2 mount")
}

/// Asserts nothing of the job is left on the host: no mount under the state
/// directory, no container cgroup of the job, no scratch directory.
fn assert_clean(dir: &Path, job: &str) {
    let state = dir.join("state").to_string_lossy().into_owned();
    assert_eq!(
        realsys::host_mounts_mentioning(&state),
        Vec::<String>::new(),
        "mounts left"
    );
    let key = job_key(job);
    let prefix: String = key
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' {
                c
            } else {
                '_'
            }
        })
        .take(32)
        .collect();
    let left: Vec<String> = fs::read_dir(cgroup2().join("twine"))
        .map(|d| {
            d.flatten()
                .filter(|e| e.path().is_dir())
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default();
    assert!(
        !left.iter().any(|n| n.starts_with(&format!("{prefix}-"))),
        "cgroups left: {left:?}"
    );
    let containers = dir.join("state/jobs").join(&key).join("containers");
    let scratch: Vec<_> = fs::read_dir(&containers)
        .map(|d| d.flatten().map(|e| e.path()).collect())
        .unwrap_or_default();
    assert_eq!(scratch, Vec::<PathBuf>::new(), "scratch directories left");
}

async fn wait_state(
    handle: &JobHandle,
    want: impl Fn(&TaskState) -> bool,
    timeout: Duration,
) -> TaskState {
    let mut rx = handle.watch_state();
    let got = tokio::time::timeout(timeout, rx.wait_for(|s| want(s))).await;
    match got {
        Ok(Ok(state)) => state.clone(),
        _ => panic!(
            "state not reached within {timeout:?}: now {:?}",
            handle.state()
        ),
    }
}

async fn wait_line(dir: &Path, job: &str, want: &str, timeout: Duration) {
    let start = Instant::now();
    while start.elapsed() < timeout {
        if messages(dir, job).iter().any(|m| m == want) {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!(
        "line {want:?} not stored within {timeout:?}: {:?}",
        messages(dir, job)
    );
}

#[test]
fn prestart_main_and_sidecar_run_in_order_and_the_exit_code_comes_back() {
    if !realsys::available() {
        return;
    }
    let dir = realsys::scratch("order");
    let _reaper = realsys::Reaper::new(dir.path().join("state"));
    let job = realsys::unique("order");
    let spec = spec(&format!(
        r#"
name = "{job}"
entitlement = "test"
[task]
command = ["/bin/sh", "-c", "sleep 0.3; echo main ran; test -f /tmp/one -a -f /tmp/two && echo steps were done; exit 7"]
[task.restart]
policy = "never"
[[task.prestart]]
name = "one"
command = ["/bin/sh", "-c", "echo step one; touch /tmp/one"]
[[task.prestart]]
name = "two"
after = ["one"]
command = ["/bin/sh", "-c", "test -f /tmp/one && echo step two after one; touch /tmp/two"]
[[task.sidecars]]
name = "side"
command = ["/bin/sh", "-c", "echo sidecar up; exec sleep infinity"]
"#
    ));
    let rt = runtime();
    let state = rt.block_on(async {
        let agent = agent(dir.path());
        let handle = agent.run(spec).await.expect("job starts");
        handle.wait().await.expect("job ends")
    });
    assert_eq!(state, TaskState::Exited { code: 7 });
    let lines = messages(dir.path(), &job);
    let pos = |m: &str| {
        lines
            .iter()
            .position(|l| l == m)
            .unwrap_or_else(|| panic!("{m:?} missing in {lines:?}"))
    };
    assert!(pos("step one") < pos("step two after one"), "{lines:?}");
    assert!(pos("step two after one") < pos("main ran"), "{lines:?}");
    pos("steps were done");
    pos("sidecar up");
    assert_clean(dir.path(), &job);
}

#[test]
fn stop_follows_the_kill_policy() {
    if !realsys::available() {
        return;
    }
    let dir = realsys::scratch("stop");
    let _reaper = realsys::Reaper::new(dir.path().join("state"));
    let rt = runtime();
    // The first signal is SIGINT, which the main handles and exits cleanly.
    let polite = realsys::unique("polite");
    let spec_polite = spec(&format!(
        r#"
name = "{polite}"
entitlement = "test"
[task]
command = ["/bin/sh", "-c", "trap 'echo got SIGINT; exit 0' INT; echo ready; while :; do sleep 0.05; done"]
[task.kill]
signal = "SIGINT"
grace_period = "10s"
"#
    ));
    // This one ignores its first signal: after the grace period systemd sends the final one.
    let stubborn = realsys::unique("stubborn");
    let spec_stubborn = spec(&format!(
        r#"
name = "{stubborn}"
entitlement = "test"
[task]
command = ["/bin/sh", "-c", "trap '' TERM; echo ready; while :; do sleep 0.05; done"]
[task.kill]
signal = "SIGTERM"
grace_period = "1s"
final_signal = "SIGKILL"
"#
    ));
    rt.block_on(async {
        let agent = agent(dir.path());
        let handle = agent.run(spec_polite).await.expect("starts");
        wait_state(
            &handle,
            |s| *s == TaskState::Running,
            Duration::from_secs(30),
        )
        .await;
        wait_line(dir.path(), &polite, "ready", Duration::from_secs(10)).await;
        handle.stop();
        let state = handle.wait().await.expect("ends");
        assert_eq!(state, TaskState::Exited { code: 0 });
        assert!(messages(dir.path(), &polite).contains(&"got SIGINT".to_owned()));

        let handle = agent.run(spec_stubborn).await.expect("starts");
        wait_state(
            &handle,
            |s| *s == TaskState::Running,
            Duration::from_secs(30),
        )
        .await;
        wait_line(dir.path(), &stubborn, "ready", Duration::from_secs(10)).await;
        let asked = Instant::now();
        handle.stop();
        let state = handle.wait().await.expect("ends");
        assert!(
            asked.elapsed() >= Duration::from_secs(1),
            "the grace period was honoured"
        );
        assert_eq!(
            state,
            TaskState::Failed {
                reason: FailReason::StopTimedOut
            }
        );
    });
    assert_clean(dir.path(), &polite);
    assert_clean(dir.path(), &stubborn);
}

#[test]
fn renewed_identity_is_seen_inside_without_a_restart() {
    if !realsys::available() {
        return;
    }
    let dir = realsys::scratch("identity");
    let _reaper = realsys::Reaper::new(dir.path().join("state"));
    let job = realsys::unique("identity");
    let spec = spec(&format!(
        r#"
name = "{job}"
entitlement = "test"
[task]
command = ["/bin/sh", "-c", "last=; while :; do t=$(cat /run/twine/identity/token 2>/dev/null); if [ \"$t\" != \"$last\" ]; then echo token=$t; last=$t; fi; sleep 0.05; done"]
"#
    ));
    let rt = runtime();
    rt.block_on(async {
        let agent = agent(dir.path());
        let handle = agent.run(spec).await.expect("starts");
        wait_state(
            &handle,
            |s| *s == TaskState::Running,
            Duration::from_secs(30),
        )
        .await;
        let pid = container_pid(&agent, &job);
        agent
            .renew_identity(&job, &[("token", b"one")])
            .expect("renew");
        wait_line(dir.path(), &job, "token=one", Duration::from_secs(10)).await;
        agent
            .renew_identity(&job, &[("token", b"two")])
            .expect("renew");
        wait_line(dir.path(), &job, "token=two", Duration::from_secs(10)).await;
        let record = agent.record(&job).expect("record").expect("some");
        assert_eq!(record.container.map(|c| c.pid), Some(pid), "same container");
        assert_eq!(record.lifecycle.restarts(), 0, "no restart");
        assert_eq!(handle.state(), TaskState::Running);
        handle.stop();
        handle.wait().await.expect("ends");
    });
    assert_clean(dir.path(), &job);
}

#[test]
fn a_burst_of_100k_lines_all_arrive_in_order_exactly_once() {
    if !realsys::available() {
        return;
    }
    let dir = realsys::scratch("burst");
    let _reaper = realsys::Reaper::new(dir.path().join("state"));
    let job = realsys::unique("burst");
    let spec = spec(&format!(
        r#"
name = "{job}"
entitlement = "test"
[task]
command = ["/usr/bin/seq", "1", "100000"]
[task.restart]
policy = "never"
"#
    ));
    let rt = runtime();
    let state = rt.block_on(async {
        let agent = agent(dir.path());
        agent
            .run(spec)
            .await
            .expect("starts")
            .wait()
            .await
            .expect("ends")
    });
    assert_eq!(state, TaskState::Exited { code: 0 });
    // Only the main prints numbers.
    let lines: Vec<String> = messages(dir.path(), &job)
        .into_iter()
        .filter(|m| m.parse::<u64>().is_ok())
        .collect();
    let want: Vec<String> = (1..=100_000).map(|i| i.to_string()).collect();
    assert_eq!(lines.len(), want.len(), "every line arrives exactly once");
    assert!(lines == want, "in order");
    assert_clean(dir.path(), &job);
}

#[test]
fn a_second_agent_on_the_same_state_dir_is_refused() {
    if !realsys::available() {
        return;
    }
    let dir = realsys::scratch("lock");
    let _reaper = realsys::Reaper::new(dir.path().join("state"));
    let _first = agent(dir.path());
    let err = Agent::open(
        StateDir::new(dir.path().join("state")),
        AgentSettings::new(realsys::rootfs()),
    )
    .expect_err("second agent");
    assert!(
        matches!(err, AgentError::State(StateError::Locked { .. })),
        "{err}"
    );
}

#[test]
fn a_spec_the_agent_cannot_run_is_refused_with_its_field() {
    if !realsys::available() {
        return;
    }
    let dir = realsys::scratch("badspec");
    let _reaper = realsys::Reaper::new(dir.path().join("state"));
    let rt = runtime();
    let bad = spec("name = \"bad\"\nentitlement = \"t\"\n[task]\ncommand = [\"relative/path\"]\n");
    let err = rt
        .block_on(agent(dir.path()).run(bad))
        .expect_err("refused");
    assert!(matches!(err, AgentError::Spec { .. }), "{err}");
    assert!(err.to_string().contains("task.command[0]"), "{err}");
}

/// Runs `sleep infinity` as a job until it is running, applies `fault` to
/// its container's PID 1, and returns the job's name and final state (within 30 s).
fn fault_while_running(dir: &Path, tag: &str, fault: impl FnOnce(i32)) -> (String, TaskState) {
    let job = realsys::unique(tag);
    let spec = spec(&format!(
        "name = \"{job}\"\nentitlement = \"t\"\n[task]\ncommand = [\"/bin/sleep\", \"infinity\"]\n"
    ));
    let state = runtime().block_on(async {
        let agent = agent(dir);
        let handle = agent.run(spec).await.expect("starts");
        wait_state(
            &handle,
            |s| *s == TaskState::Running,
            Duration::from_secs(30),
        )
        .await;
        fault(container_pid(&agent, &job));
        tokio::time::timeout(Duration::from_secs(30), handle.wait())
            .await
            .expect("ends in time")
            .expect("ends")
    });
    (job, state)
}

fn container_pid(agent: &Agent, job: &str) -> i32 {
    agent
        .record(job)
        .expect("record")
        .and_then(|r| r.container)
        .expect("container")
        .pid
}

#[test]
fn dbus_going_away_mid_run_fails_the_task_and_cleans_up() {
    if !realsys::available() {
        return;
    }
    let dir = realsys::scratch("bus");
    let _reaper = realsys::Reaper::new(dir.path().join("state"));
    let (job, state) = fault_while_running(dir.path(), "bus", |pid| {
        // Re-executing systemd closes every private-bus connection while the container keeps running.
        let out = realsys::nsenter(pid, &["systemctl", "daemon-reexec"]);
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    });
    assert_eq!(
        state,
        TaskState::Failed {
            reason: FailReason::BusLost
        }
    );
    assert_clean(dir.path(), &job);
}

#[test]
fn a_container_killed_from_outside_is_reported_gone_and_cleaned_up() {
    if !realsys::available() {
        return;
    }
    let dir = realsys::scratch("gone");
    let _reaper = realsys::Reaper::new(dir.path().join("state"));
    let (job, state) = fault_while_running(dir.path(), "gone", |pid| {
        nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(pid),
            nix::sys::signal::Signal::SIGKILL,
        )
        .expect("kill PID 1");
    });
    assert!(
        matches!(
            state,
            TaskState::Failed {
                reason: FailReason::ContainerGone | FailReason::BusLost
            }
        ),
        "{state:?}"
    );
    assert_clean(dir.path(), &job);
}

#[test]
fn a_cgroup_that_cannot_be_written_is_a_clear_error_and_nothing_is_left() {
    if !realsys::available() {
        return;
    }
    let dir = realsys::scratch("cgroup");
    let _reaper = realsys::Reaper::new(dir.path().join("state"));
    // A parent cgroup that allows no descendants: mkdir of the container's cgroup fails.
    let parent_name = realsys::unique("full");
    let parent = cgroup2().join(&parent_name);
    fs::create_dir(&parent).expect("parent cgroup");
    fs::write(parent.join("cgroup.max.descendants"), "0").expect("limit descendants");
    let mut settings = AgentSettings::new(realsys::rootfs());
    settings.cgroup_parent = PathBuf::from(&parent_name);
    let agent = Agent::open(StateDir::new(dir.path().join("state")), settings).expect("agent");
    let job = realsys::unique("cg");
    let spec = spec(&format!(
        "name = \"{job}\"\nentitlement = \"t\"\n[task]\ncommand = [\"/bin/true\"]\n"
    ));
    let err = runtime()
        .block_on(agent.run(spec))
        .expect_err("cannot create the cgroup");
    let text = err.to_string();
    let _ = fs::remove_dir(&parent);
    assert!(text.contains(&parent_name), "names the cgroup: {text}");
    assert_clean(dir.path(), &job);
}

#[test]
fn an_update_restarts_the_job_on_a_fresh_container() {
    use twine_agent::agent::AgentService;
    use twine_agent::daemon::Handler as _;
    if !realsys::available() {
        return;
    }
    let dir = realsys::scratch("update");
    let _reaper = realsys::Reaper::new(dir.path().join("state"));
    let job = realsys::unique("update");
    let version = |v: &str| {
        spec(&format!(
            "name = \"{job}\"\nentitlement = \"t\"\n[task]\ncommand = [\"/bin/sh\", \"-c\", \"echo version {v}; exec sleep infinity\"]\n"
        ))
    };
    let rt = runtime();
    rt.block_on(async {
        let service = AgentService::start(agent(dir.path()))
            .await
            .expect("service");
        service.submit(version("one")).await.expect("v1");
        wait_line(dir.path(), &job, "version one", Duration::from_secs(30)).await;
        let first = read_record(dir.path(), &job);
        assert_eq!(first.generation, 1);
        let first_pid = first.container.expect("running").pid;
        // The same spec again is a no-op; a changed one is an update.
        service.submit(version("one")).await.expect("same");
        assert_eq!(read_record(dir.path(), &job).generation, 1);
        service.submit(version("two")).await.expect("v2");
        wait_line(dir.path(), &job, "version two", Duration::from_secs(30)).await;
        let second = read_record(dir.path(), &job);
        assert_eq!(second.generation, 2, "a fresh container");
        let second_pid = second.container.expect("running").pid;
        assert_ne!(second_pid, first_pid);
        assert!(
            !Path::new(&format!("/proc/{first_pid}/cgroup")).exists()
                || fs::read_to_string(format!("/proc/{first_pid}/stat"))
                    .is_ok_and(|s| s.contains(") Z ")),
            "the first container is gone"
        );
        let statuses = service.status(Some(job.clone())).await.expect("status");
        assert_eq!(statuses[0].generation, 2);
        assert_eq!(statuses[0].state, TaskState::Running);
        service.stop_all().await;
    });
    assert_clean(dir.path(), &job);
}

fn read_record(dir: &Path, job: &str) -> twine_agent::agent::JobRecord {
    twine_agent::state::read_record(
        &dir.join("state/jobs")
            .join(job_key(job))
            .join("record.json"),
    )
    .expect("record")
    .expect("exists")
}
