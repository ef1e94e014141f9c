//! Start latency (issue 8): twine's own container beside `systemd-nspawn
//! --boot` of the same rootfs, and the agent's "spec to main unit active".
//!
//! Run as root: `cargo bench -p twine-agent --bench start`. The rootfs is
//! `TWINE_ROOTFS` (default `/var/tmp/twine-cache/rootfs-bookworm`, built by
//! `cargo xtask rootfs`); `TWINE_BENCH_RUNS` sets the runs per system
//! (default 50); the raw samples go to `TWINE_BENCH_OUT` (default
//! `target/twine-bench/start.json`); `TWINE_BENCH_MASK=1` masks, in the twine
//! container only, the units nspawn's capability set makes systemd skip
//! (see [`MASKED_LIKE_NSPAWN`]); `TWINE_BENCH_AGENT_RUNS` runs the agent in
//! only the first that many runs (0: not at all). A missing prerequisite prints one line
//! and exits 0, or 1 under `TWINE_REQUIRE_REALSYS=1`.
//!
//! Each run times, in an order that alternates from run to run so that drift
//! (the machine is shared) falls on every system alike:
//! * **twine**: `Container::start` from a `ContainerConfig` to its return,
//!   which is the container systemd's `READY=1`, split by
//!   [`Container::start_phases`] into prepare, spawn and boot;
//! * **nspawn**: `systemd-nspawn --boot --volatile=overlay ...
//!   --notify-ready=yes` from a fresh cgroup of its own in each writable
//!   hierarchy, from spawning it to its own `READY=1` on a datagram socket the
//!   bench binds, split at its `X_NSPAWN_LEADER_PID=` message (the container's
//!   PID 1 is running) into setup and boot;
//! * **agent**: `Agent::run` of a job whose main is `sleep infinity` until its
//!   state is `Running` (the main unit is active), split at `run`'s return.
//!
//! After every run the bench checks that nothing is left (processes, cgroup
//! directories, scratch directories) and stops with an error if something
//! is; it also checks that each sample's phases add up to its total within
//! 1 ms. It is a plain `main`, not criterion: a sample costs a whole boot.

use std::fmt::Write as _;
use std::fs;
use std::io::{self, Write as _};
use std::os::unix::net::UnixDatagram;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitCode, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context as _, Result, bail, ensure};
use twine_agent::agent::{Agent, AgentSettings, job_key};
use twine_agent::container::{Container, ContainerConfig, SeedFile};
use twine_agent::lifecycle::TaskState;
use twine_agent::state::StateDir;
use twine_spec::JobSpec;

const DEFAULT_ROOTFS: &str = "/var/tmp/twine-cache/rootfs-bookworm";
/// Where scratch directories go: a disk file system, as overlayfs needs for
/// twine's upper layer (the agent's tests use the same place).
const SCRATCH: &str = "/var/tmp/twine-bench";
/// twine's cgroup parent for the container-level runs.
const CGROUP_PARENT: &str = "twine-bench";
/// Longest a boot may take before the run fails.
const READY_TIMEOUT: Duration = Duration::from_secs(30);
/// Longest a clean poweroff may take before the rest is killed.
const STOP_TIMEOUT: Duration = Duration::from_secs(15);
/// The units systemd skips under nspawn because their `ConditionCapability=`
/// (`CAP_SYS_MODULE`, `CAP_SYS_RAWIO`) fails there, while twine's PID 1 keeps
/// every capability. `TWINE_BENCH_MASK=1` masks them in the twine container's
/// seed, to measure what skipping them would save.
const MASKED_LIKE_NSPAWN: [&str; 5] = [
    "systemd-modules-load.service",
    "modprobe@.service",
    "sys-kernel-debug.mount",
    "sys-kernel-tracing.mount",
    "e2scrub_reap.service",
];

/// Whether `TWINE_BENCH_MASK=1` asks for [`MASKED_LIKE_NSPAWN`] in twine's seed.
fn mask_skipped_units() -> bool {
    std::env::var("TWINE_BENCH_MASK").is_ok_and(|v| v == "1")
}

/// After this many failed agent runs the bench stops trying the agent.
const MAX_AGENT_FAILURES: usize = 3;
/// Longest `Agent::run` may take (container start plus D-Bus setup).
const AGENT_RUN_TIMEOUT: Duration = Duration::from_secs(45);
/// How far a sample's phases may be from its measured total.
const SUM_TOLERANCE: Duration = Duration::from_millis(1);

/// One timed start: the total and its consecutive phases.
#[derive(Debug, Clone)]
struct Sample {
    system: &'static str,
    run: usize,
    total: Duration,
    phases: Vec<(&'static str, Duration)>,
}

impl Sample {
    /// The internal consistency check: phases add up to the total.
    fn check(&self) -> Result<()> {
        let sum: Duration = self.phases.iter().map(|(_, d)| *d).sum();
        let gap = sum.abs_diff(self.total);
        ensure!(
            gap <= SUM_TOLERANCE,
            "{} run {}: phases add up to {sum:?} but the total is {:?}",
            self.system,
            self.run,
            self.total
        );
        Ok(())
    }
}

fn main() -> ExitCode {
    if let Some(reason) = unavailable() {
        let strict = std::env::var("TWINE_REQUIRE_REALSYS").is_ok_and(|v| v == "1");
        eprintln!(
            "start bench {}: {reason}",
            if strict { "failed" } else { "skipped" }
        );
        return if strict {
            ExitCode::FAILURE
        } else {
            ExitCode::SUCCESS
        };
    }
    match run() {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("start bench failed: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn rootfs() -> PathBuf {
    std::env::var_os("TWINE_ROOTFS").map_or_else(|| PathBuf::from(DEFAULT_ROOTFS), PathBuf::from)
}

fn unavailable() -> Option<String> {
    if !nix::unistd::geteuid().is_root() {
        return Some("needs root".into());
    }
    let rootfs = rootfs();
    if !rootfs.join("usr/lib/systemd/systemd").exists() {
        return Some(format!(
            "no rootfs with systemd at {} (build it with `cargo xtask rootfs`, or set TWINE_ROOTFS)",
            rootfs.display()
        ));
    }
    if !Path::new("/usr/bin/systemd-nspawn").exists() {
        return Some("no /usr/bin/systemd-nspawn (apt: systemd-container)".into());
    }
    if let Err(e) = hierarchies() {
        return Some(format!("no usable cgroup hierarchy: {e:#}"));
    }
    None
}

fn run() -> Result<()> {
    let runs: usize = match std::env::var("TWINE_BENCH_RUNS") {
        Ok(v) => v
            .parse()
            .with_context(|| format!("TWINE_BENCH_RUNS={v:?}"))?,
        Err(_) => 50,
    };
    ensure!(runs > 0, "TWINE_BENCH_RUNS must be at least 1");
    let agent_runs: usize = match std::env::var("TWINE_BENCH_AGENT_RUNS") {
        Ok(v) => v
            .parse()
            .with_context(|| format!("TWINE_BENCH_AGENT_RUNS={v:?}"))?,
        Err(_) => runs,
    };
    let out = std::env::var_os("TWINE_BENCH_OUT").map_or_else(
        || {
            Path::new(env!("CARGO_MANIFEST_DIR"))
                .join("../target/twine-bench/start.json")
                .to_path_buf()
        },
        PathBuf::from,
    );
    fs::create_dir_all(SCRATCH).with_context(|| format!("creating {SCRATCH}"))?;
    let rootfs = rootfs();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .context("building the tokio runtime")?;
    let state = tempfile::Builder::new()
        .prefix("agent-")
        .tempdir_in(SCRATCH)
        .context("creating the agent's state directory")?;
    let settings = AgentSettings::new(rootfs.clone());
    let agent_cgroups = cgroup2_mount()?.join(&settings.cgroup_parent);
    let agent = Agent::open(StateDir::new(state.path()), settings).context("opening the agent")?;

    let mut samples = Vec::new();
    let mut agent_failures: Vec<String> = Vec::new();
    for run in 0..runs {
        let mut order = ["twine", "nspawn", "agent"];
        if run % 2 == 1 {
            order.reverse();
        }
        for system in order {
            let sample = match system {
                "twine" => twine_container(run, &rootfs),
                "nspawn" => nspawn(run, &rootfs),
                _ if run >= agent_runs || agent_failures.len() >= MAX_AGENT_FAILURES => continue,
                _ => match runtime.block_on(agent_job(run, &agent, &agent_cgroups)) {
                    // A failing agent run must not hide the container
                    // figures: failures are counted, printed under the
                    // table, and fail the bench at the end.
                    Err(e) => {
                        eprintln!("\nagent, run {run}: {e:#}");
                        agent_failures.push(format!("run {run}: {e:#}"));
                        continue;
                    }
                    ok => ok,
                },
            }
            .with_context(|| format!("{system}, run {run}"))?;
            sample.check()?;
            samples.push(sample);
        }
        eprint!("\rstart bench: {}/{runs} runs", run + 1);
    }
    eprintln!();
    drop(agent);
    state
        .close()
        .context("removing the agent's state directory")?;

    // The table is the bench's output (stdout); progress goes to stderr.
    std::io::stdout()
        .write_all(table(&samples).as_bytes())
        .context("writing the table")?;
    write_json(&out, runs, agent_runs, &samples)?;
    eprintln!("raw samples: {}", out.display());
    if !agent_failures.is_empty() {
        bail!(
            "{} agent run(s) failed{}:\n{}",
            agent_failures.len(),
            if agent_failures.len() >= MAX_AGENT_FAILURES {
                " (no further agent runs after that many)"
            } else {
                ""
            },
            agent_failures.join("\n")
        );
    }
    Ok(())
}

/// A name no other run (or process) uses.
fn unique(system: &str, run: usize) -> String {
    format!("bench-{system}-{}-{run}", std::process::id())
}

fn twine_container(run: usize, rootfs: &Path) -> Result<Sample> {
    let name = unique("twine", run);
    let scratch = Path::new(SCRATCH).join(&name);
    let mut config = ContainerConfig::new(name, rootfs, &scratch);
    config.cgroup_parent = CGROUP_PARENT.into();
    config.ready_timeout = READY_TIMEOUT;
    // As the agent does (agent/prepare.rs): no login prompt on the console.
    config.seed.push(SeedFile::Symlink {
        path: "etc/systemd/system/console-getty.service".into(),
        to: "/dev/null".into(),
    });
    if mask_skipped_units() {
        for unit in MASKED_LIKE_NSPAWN {
            config.seed.push(SeedFile::Symlink {
                path: Path::new("etc/systemd/system").join(unit),
                to: "/dev/null".into(),
            });
        }
    }
    let start = Instant::now();
    let container = Container::start(&config).context("starting the container")?;
    let total = start.elapsed();
    let phases = container
        .start_phases()
        .context("a started container has no start phases")?;
    let (pid, cgroup) = (container.pid(), container.record().cgroup.clone());
    container
        .shutdown(STOP_TIMEOUT)
        .context("shutting the container down")?;
    ensure_gone(pid, &[cgroup], &scratch)?;
    Ok(Sample {
        system: if mask_skipped_units() {
            "twine+mask"
        } else {
            "twine"
        },
        run,
        total,
        phases: vec![
            ("prepare", phases.prepare),
            ("spawn", phases.spawn),
            ("boot", phases.boot),
        ],
    })
}

/// One job through the agent; `parent` is the cgroup its containers go under.
async fn agent_job(run: usize, agent: &Agent, parent: &Path) -> Result<Sample> {
    let name = unique("agent", run);
    let spec = JobSpec::from_json(&format!(
        r#"{{"name":"{name}","entitlement":"bench","task":{{"command":["/bin/sleep","infinity"]}}}}"#
    ))
    .context("the bench's spec")?;
    let before = children(parent);
    let start = Instant::now();
    let handle = match tokio::time::timeout(AGENT_RUN_TIMEOUT, agent.run(spec)).await {
        Ok(Ok(handle)) => handle,
        Ok(Err(e)) => {
            kill_new_cgroups(parent, &before, &name);
            return Err(e).context("Agent::run");
        }
        Err(_) => {
            // The dropped future leaves its container running: kill it here.
            kill_new_cgroups(parent, &before, &name);
            bail!("Agent::run did not return within {AGENT_RUN_TIMEOUT:?}");
        }
    };
    let returned = start.elapsed();
    let mut state = handle.watch_state();
    let reached = tokio::time::timeout(
        READY_TIMEOUT,
        state.wait_for(|s| *s == TaskState::Running || s.is_terminal()),
    )
    .await
    .map(|r| r.map(|s| s.clone()));
    let total = start.elapsed();
    let reached = match reached {
        Ok(Ok(s)) => s,
        Ok(Err(_)) => bail!("the job's state channel closed before Running"),
        Err(_) => bail!("the job did not reach Running within {READY_TIMEOUT:?}"),
    };
    drop(state);
    handle.stop();
    let end = handle.wait().await.context("stopping the job")?;
    ensure!(
        reached == TaskState::Running,
        "the job reached {reached:?} instead of Running (final state {end:?})"
    );
    // Other processes may start containers under the same parent meanwhile:
    // only this job's (its container names start with the job's name) count.
    let left: Vec<PathBuf> = children(parent)
        .into_iter()
        .filter(|c| !before.contains(c) && is_jobs(c, &name))
        .collect();
    ensure!(left.is_empty(), "cgroups left behind: {left:?}");
    agent
        .state_dir()
        .remove_job(&job_key(&name))
        .context("removing the job's directory")?;
    Ok(Sample {
        system: "agent",
        run,
        total,
        phases: vec![
            (
                "spec → run() returned (container READY=1 + D-Bus)",
                returned,
            ),
            ("units: StartUnit → main active", total - returned),
        ],
    })
}

/// After a failed agent run: kills and removes the cgroups of this job's
/// containers (new under `parent` since `before`, named after `job`).
fn kill_new_cgroups(parent: &Path, before: &[PathBuf], job: &str) {
    for dir in children(parent) {
        if before.contains(&dir) || !is_jobs(&dir, job) {
            continue;
        }
        let deadline = Instant::now() + Duration::from_secs(10);
        while !procs_in(&dir).is_empty() && Instant::now() < deadline {
            let _ = fs::write(dir.join("cgroup.kill"), "1");
            std::thread::sleep(Duration::from_millis(5));
        }
        for d in subtree(&dir) {
            let _ = fs::remove_dir(&d);
        }
    }
}

/// Whether a cgroup under the agent's parent is a container of `job` (the
/// bench's job names are valid container names, used as the prefix).
fn is_jobs(cgroup: &Path, job: &str) -> bool {
    cgroup
        .file_name()
        .is_some_and(|n| n.to_string_lossy().starts_with(&format!("{job}-")))
}

/// The cgroup directories directly under `dir`.
fn children(dir: &Path) -> Vec<PathBuf> {
    fs::read_dir(dir)
        .map(|entries| {
            entries
                .flatten()
                .filter(|e| e.file_type().is_ok_and(|t| t.is_dir()))
                .map(|e| e.path())
                .collect()
        })
        .unwrap_or_default()
}

fn nspawn(run: usize, rootfs: &Path) -> Result<Sample> {
    let name = unique("nspawn", run);
    let scratch = Path::new(SCRATCH).join(&name);
    fs::create_dir(&scratch).with_context(|| format!("creating {}", scratch.display()))?;
    let mut cgroups = Vec::new();
    for h in hierarchies()? {
        let dir = h.mount.join(&h.own).join(&name);
        fs::create_dir(&dir).with_context(|| format!("creating cgroup {}", dir.display()))?;
        cgroups.push(dir);
    }
    let result = nspawn_timed(run, rootfs, &name, &scratch, &cgroups);
    let cleaned = nspawn_clean_up(&name, &scratch, &cgroups);
    let (sample, leader) = result?;
    cleaned?;
    ensure_gone(leader, &cgroups, &scratch)?;
    Ok(sample)
}

fn nspawn_timed(
    run: usize,
    rootfs: &Path,
    name: &str,
    scratch: &Path,
    cgroups: &[PathBuf],
) -> Result<(Sample, i32)> {
    let notify_path = scratch.join("notify");
    let notify = UnixDatagram::bind(&notify_path)
        .with_context(|| format!("binding {}", notify_path.display()))?;
    let log = scratch.join("nspawn.log");
    let log_out = fs::File::create(&log).with_context(|| format!("creating {}", log.display()))?;
    let log_err = log_out.try_clone().context("duplicating the log file")?;
    // The shell moves itself into the fresh cgroups, then becomes nspawn
    // (as twine-spec's nspawn harness does; nspawn makes payload/ and
    // supervisor/ in the cgroup it starts in).
    let mut cmd = Command::new("/bin/sh");
    cmd.arg("-c")
        .arg(r#"for f in "$@"; do [ "$f" = -- ] && break; echo $$ > "$f" || exit 125; shift; done; shift; exec "$@""#)
        .arg("sh")
        .args(cgroups.iter().map(|c| c.join("cgroup.procs")))
        .arg("--")
        .args([
            "systemd-nspawn",
            "--boot",
            "--volatile=overlay",
            "--register=no",
            "--keep-unit",
            "--quiet",
            "-D",
        ])
        .arg(rootfs)
        .args([
            "--notify-ready=yes",
            "--link-journal=no",
            "--console=pipe",
        ])
        .arg(format!("--machine={name}"))
        .env("SYSTEMD_NSPAWN_LOCK", "0")
        .env("NOTIFY_SOCKET", &notify_path)
        .stdin(Stdio::null())
        .stdout(log_out)
        .stderr(log_err);
    let start = Instant::now();
    let mut child = cmd.spawn().context("spawning systemd-nspawn")?;
    let waited = wait_nspawn_ready(&notify, &mut child, start);
    let total = start.elapsed();
    // Stop it whatever happened: SIGTERM makes nspawn power the container off.
    let stopped = stop_nspawn(&mut child);
    let (leader, running_at) = waited.with_context(|| {
        format!(
            "nspawn log:\n{}",
            fs::read_to_string(&log).unwrap_or_default()
        )
    })?;
    stopped?;
    Ok((
        Sample {
            system: "nspawn",
            run,
            total,
            phases: vec![("setup", running_at), ("boot", total - running_at)],
        },
        leader,
    ))
}

/// Reads nspawn's notifications until `READY=1`; returns the container's PID
/// 1 and when nspawn reported it running (`X_NSPAWN_LEADER_PID=`).
fn wait_nspawn_ready(
    notify: &UnixDatagram,
    child: &mut Child,
    start: Instant,
) -> Result<(i32, Duration)> {
    let mut leader = None;
    let mut buf = vec![0u8; 4096];
    loop {
        let left = READY_TIMEOUT.saturating_sub(start.elapsed());
        ensure!(!left.is_zero(), "no READY=1 within {READY_TIMEOUT:?}");
        notify
            .set_read_timeout(Some(left.min(Duration::from_millis(50))))
            .context("setting the notify socket's timeout")?;
        match notify.recv(&mut buf) {
            Ok(n) => {
                let at = start.elapsed();
                let text = String::from_utf8_lossy(&buf[..n]).into_owned();
                for line in text.lines() {
                    if let Some(pid) = line.strip_prefix("X_NSPAWN_LEADER_PID=") {
                        leader = Some((pid.parse().context("X_NSPAWN_LEADER_PID")?, at));
                    }
                    if line == "READY=1" {
                        return leader.context("READY=1 before X_NSPAWN_LEADER_PID=");
                    }
                }
            }
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                ) =>
            {
                if let Some(status) = child.try_wait().context("polling nspawn")? {
                    bail!("systemd-nspawn exited with {status} before READY=1");
                }
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e).context("reading the notify socket"),
        }
    }
}

/// SIGTERM to nspawn (it powers the container off), then waits for it.
fn stop_nspawn(child: &mut Child) -> Result<()> {
    let pid = nix::unistd::Pid::from_raw(i32::try_from(child.id()).context("nspawn's pid")?);
    if child.try_wait().context("polling nspawn")?.is_none() {
        let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM);
    }
    let deadline = Instant::now() + STOP_TIMEOUT;
    loop {
        if child.try_wait().context("polling nspawn")?.is_some() {
            return Ok(());
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            bail!("systemd-nspawn did not stop within {STOP_TIMEOUT:?} of SIGTERM; killed");
        }
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// Kills what is left in nspawn's cgroups, removes them deepest first, and
/// removes the scratch directory and nspawn's propagation directory.
fn nspawn_clean_up(name: &str, scratch: &Path, cgroups: &[PathBuf]) -> Result<()> {
    let mut problems = String::new();
    let deadline = Instant::now() + Duration::from_secs(10);
    for dir in cgroups {
        let v2 = dir.join("cgroup.kill").exists();
        loop {
            let pids = procs_in(dir);
            if pids.is_empty() {
                break;
            }
            if Instant::now() >= deadline {
                let _ = write!(problems, "{}: processes {pids:?} survive; ", dir.display());
                break;
            }
            if v2 {
                let _ = fs::write(dir.join("cgroup.kill"), "1");
            } else {
                for pid in pids {
                    let _ = nix::sys::signal::kill(
                        nix::unistd::Pid::from_raw(pid),
                        nix::sys::signal::Signal::SIGKILL,
                    );
                }
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        for d in subtree(dir) {
            loop {
                match fs::remove_dir(&d) {
                    Ok(()) => break,
                    Err(e) if e.kind() == io::ErrorKind::NotFound => break,
                    Err(e) if Instant::now() >= deadline => {
                        let _ = write!(problems, "removing {}: {e}; ", d.display());
                        break;
                    }
                    Err(_) => std::thread::sleep(Duration::from_millis(5)),
                }
            }
        }
    }
    let propagate = Path::new("/run/systemd/nspawn/propagate").join(name);
    for dir in [scratch, propagate.as_path()] {
        match fs::remove_dir_all(dir) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => {
                let _ = write!(problems, "removing {}: {e}; ", dir.display());
            }
        }
    }
    ensure!(problems.is_empty(), "cleaning up: {problems}");
    Ok(())
}

/// Fails unless PID 1 is gone and the cgroups and scratch directory are removed.
fn ensure_gone(pid: i32, cgroups: &[PathBuf], scratch: &Path) -> Result<()> {
    // A zombie would still have a /proc entry; a reused pid would not be in
    // our cgroups, which must be gone anyway.
    if let Ok(stat) = fs::read_to_string(format!("/proc/{pid}/stat")) {
        let comm = stat.split(')').next().unwrap_or_default();
        ensure!(
            !comm.ends_with("(systemd"),
            "PID 1 (pid {pid}) is still there: {stat}"
        );
    }
    for dir in cgroups {
        ensure!(!dir.exists(), "cgroup {} left behind", dir.display());
    }
    ensure!(
        !scratch.exists(),
        "scratch directory {} left behind",
        scratch.display()
    );
    Ok(())
}

/// A writable cgroup hierarchy: its mount point and our own cgroup in it.
struct Hierarchy {
    mount: PathBuf,
    own: PathBuf,
}

/// cgroup2 at /sys/fs/cgroup, or on a hybrid host cgroup2 at
/// /sys/fs/cgroup/unified plus `name=systemd` (nspawn uses both).
fn hierarchies() -> Result<Vec<Hierarchy>> {
    let own = fs::read_to_string("/proc/self/cgroup").context("reading /proc/self/cgroup")?;
    let own_in = |controllers: &str| -> Result<PathBuf> {
        own.lines()
            .find_map(|l| {
                let mut parts = l.splitn(3, ':');
                let (_, c, path) = (parts.next()?, parts.next()?, parts.next()?);
                (c == controllers).then(|| PathBuf::from(path.trim_start_matches('/')))
            })
            .with_context(|| format!("no {controllers:?} line in /proc/self/cgroup"))
    };
    let root = Path::new("/sys/fs/cgroup");
    if root.join("cgroup.controllers").exists() {
        return Ok(vec![Hierarchy {
            mount: root.into(),
            own: own_in("")?,
        }]);
    }
    let (unified, systemd) = (root.join("unified"), root.join("systemd"));
    ensure!(
        unified.join("cgroup.procs").exists() && systemd.join("cgroup.procs").exists(),
        "neither pure cgroup2 at /sys/fs/cgroup nor hybrid (unified and name=systemd)"
    );
    Ok(vec![
        Hierarchy {
            mount: unified,
            own: own_in("")?,
        },
        Hierarchy {
            mount: systemd,
            own: own_in("name=systemd")?,
        },
    ])
}

fn cgroup2_mount() -> Result<PathBuf> {
    Ok(hierarchies()?
        .into_iter()
        .next()
        .context("no cgroup2 hierarchy")?
        .mount)
}

/// Every cgroup directory under `dir`, deepest first.
fn subtree(dir: &Path) -> Vec<PathBuf> {
    let mut all = vec![dir.to_path_buf()];
    let mut i = 0;
    while i < all.len() {
        all.extend(children(&all[i]));
        i += 1;
    }
    all.reverse();
    all
}

fn procs_in(dir: &Path) -> Vec<i32> {
    subtree(dir)
        .iter()
        .filter_map(|d| fs::read_to_string(d.join("cgroup.procs")).ok())
        .flat_map(|s| {
            s.lines()
                .filter_map(|l| l.trim().parse().ok())
                .collect::<Vec<i32>>()
        })
        .collect()
}

/// Nearest-rank percentile of sorted durations (p99 of 50 samples is the largest).
fn percentile(sorted: &[Duration], p: f64) -> Duration {
    #[allow(
        clippy::cast_possible_truncation,
        clippy::cast_sign_loss,
        clippy::cast_precision_loss
    )]
    // A rank of at most the sample count, which is far below 2^52.
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

/// p50, p99 and mean of a set of durations.
fn stats(values: &[Duration]) -> (Duration, Duration, Duration) {
    let mut sorted = values.to_vec();
    sorted.sort();
    let mean =
        values.iter().sum::<Duration>() / u32::try_from(values.len().max(1)).unwrap_or(u32::MAX);
    (percentile(&sorted, 50.0), percentile(&sorted, 99.0), mean)
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

/// The table: per system its total and phases, then the ratios to nspawn.
fn table(samples: &[Sample]) -> String {
    let mut out = String::from(
        "| system | phase | p50 ms | p99 ms | mean ms |\n| --- | --- | --- | --- | --- |\n",
    );
    let mut totals = Vec::new();
    for system in ["twine", "twine+mask", "nspawn", "agent"] {
        let of: Vec<&Sample> = samples.iter().filter(|s| s.system == system).collect();
        let Some(first) = of.first() else { continue };
        let all: Vec<Duration> = of.iter().map(|s| s.total).collect();
        let (p50, p99, mean) = stats(&all);
        totals.push((system, p50, p99));
        let _ = writeln!(
            out,
            "| {system} | **total** | **{:.1}** | **{:.1}** | **{:.1}** |",
            ms(p50),
            ms(p99),
            ms(mean)
        );
        for (i, (phase, _)) in first.phases.iter().enumerate() {
            let values: Vec<Duration> = of.iter().map(|s| s.phases[i].1).collect();
            let (p50, p99, mean) = stats(&values);
            let _ = writeln!(
                out,
                "| {system} | {phase} | {:.1} | {:.1} | {:.1} |",
                ms(p50),
                ms(p99),
                ms(mean)
            );
        }
    }
    let nspawn = totals.iter().find(|t| t.0 == "nspawn").copied();
    if let Some((_, n50, n99)) = nspawn {
        for (system, p50, p99) in totals.iter().filter(|t| t.0 != "nspawn") {
            let _ = writeln!(
                out,
                "| {system} / nspawn | ratio | {:.2} | {:.2} | |",
                p50.as_secs_f64() / n50.as_secs_f64(),
                p99.as_secs_f64() / n99.as_secs_f64()
            );
        }
    }
    out
}

fn write_json(path: &Path, runs: usize, agent_runs: usize, samples: &[Sample]) -> Result<()> {
    let samples: Vec<serde_json::Value> = samples
        .iter()
        .map(|s| {
            let phases: serde_json::Map<String, serde_json::Value> = s
                .phases
                .iter()
                .map(|(name, d)| ((*name).to_owned(), ms(*d).into()))
                .collect();
            serde_json::json!({
                "system": s.system,
                "run": s.run,
                "total_ms": ms(s.total),
                "phases_ms": phases,
            })
        })
        .collect();
    let kernel = nix::sys::utsname::uname()
        .map(|u| u.release().to_string_lossy().into_owned())
        .unwrap_or_default();
    let doc = serde_json::json!({
        "bench": "start",
        "runs": runs,
        "agent_runs": agent_runs,
        "kernel": kernel,
        "cpus": std::thread::available_parallelism().map_or(0, std::num::NonZero::get),
        "rootfs": rootfs(),
        "twine_seed_masks": if mask_skipped_units() { MASKED_LIKE_NSPAWN.to_vec() } else { Vec::new() },
        "samples": samples,
    });
    if let Some(dir) = path.parent() {
        fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    let text = serde_json::to_string_pretty(&doc).context("serializing the samples")?;
    fs::write(path, text).with_context(|| format!("writing {}", path.display()))
}
