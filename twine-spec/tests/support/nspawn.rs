//! A throw-away container with systemd as PID 1, booted by `systemd-nspawn`,
//! for tests that need real systemd to run the units twine renders.
//!
//! Each [`Container`] is independent, so tests may boot many in parallel:
//! * the cached rootfs (`TWINE_ROOTFS`, default [`DEFAULT_ROOTFS`], built by
//!   `cargo xtask rootfs`) is never written: `--volatile=overlay` puts a tmpfs
//!   overlay over it, and `SYSTEMD_NSPAWN_LOCK=0` lets several containers
//!   share it at once;
//! * the machine name is unique, and the container is neither registered with
//!   machined nor given a scope of its own (`--register=no --keep-unit`; PID 1
//!   here is not systemd);
//! * `systemd-nspawn` is started from a fresh cgroup of its own in every
//!   writable hierarchy it uses (cgroup2 and `name=systemd` on a hybrid host),
//!   because it creates `payload/` and `supervisor/` in the cgroup it starts
//!   in; the harness removes the whole subtree afterwards;
//! * a host directory ([`Container::share`]) is bind-mounted at [`SHARE_IN`]
//!   inside, for unit files and outputs.
//!
//! Commands run inside through `nsenter -t <leader> -a` (`systemd-run -M` needs
//! machined registration). Every wait has a timeout; dropping the container
//! powers it off (SIGRTMIN+3 to its PID 1), kills whatever is left through the
//! cgroup, and removes the cgroups and temporary directories.

use std::fmt::Write as _;
use std::fs;
use std::io;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::thread;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};

/// Where `cargo xtask rootfs` caches the Debian rootfs, unless `TWINE_ROOTFS` says otherwise.
pub const DEFAULT_ROOTFS: &str = "/var/tmp/twine-cache/rootfs-bookworm";

/// Where the shared host directory appears inside the container.
pub const SHARE_IN: &str = "/twine";

/// How long booting to `running`/`degraded` may take.
const BOOT_TIMEOUT: Duration = Duration::from_secs(60);
/// Default limit for one command inside the container.
const EXEC_TIMEOUT: Duration = Duration::from_secs(60);
/// How long a clean poweroff may take before everything is killed.
const POWEROFF_TIMEOUT: Duration = Duration::from_secs(15);
/// Polling interval for every wait.
const POLL: Duration = Duration::from_millis(10);

const PATH_INSIDE: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// The rootfs the containers boot: `TWINE_ROOTFS`, or [`DEFAULT_ROOTFS`].
pub fn rootfs() -> PathBuf {
    std::env::var_os("TWINE_ROOTFS").map_or_else(|| PathBuf::from(DEFAULT_ROOTFS), PathBuf::from)
}

/// Why containers cannot be booted here, or `None` when they can.
/// Tests pass the reason to `support::realsys_gate`.
pub fn unavailable() -> Option<String> {
    if !is_root() {
        return Some("systemd-nspawn tests need root".into());
    }
    for tool in ["systemd-nspawn", "nsenter", "timeout"] {
        if find_in_path(tool).is_none() {
            return Some(format!(
                "{tool} is not installed (apt: systemd-container, util-linux, coreutils)"
            ));
        }
    }
    let rootfs = rootfs();
    if !rootfs.join("usr/lib/systemd/systemd").exists() {
        return Some(format!(
            "no container rootfs with systemd at {} (build it with `cargo xtask rootfs`, or set TWINE_ROOTFS)",
            rootfs.display()
        ));
    }
    if let Err(e) = hierarchies() {
        return Some(format!("no usable cgroup hierarchy: {e:#}"));
    }
    None
}

fn is_root() -> bool {
    fs::read_to_string("/proc/self/status").is_ok_and(|s| {
        s.lines()
            .find_map(|l| l.strip_prefix("Uid:"))
            .and_then(|ids| ids.split_whitespace().nth(1))
            == Some("0")
    })
}

fn find_in_path(tool: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_else(|| "/usr/sbin:/usr/bin:/sbin:/bin".into());
    std::env::split_paths(&path)
        .map(|d| d.join(tool))
        .find(|p| p.is_file())
}

/// A cgroup hierarchy nspawn needs a cgroup of its own in.
#[derive(Debug, Clone)]
struct Hierarchy {
    /// Mount point, e.g. `/sys/fs/cgroup/unified`.
    mount: PathBuf,
    /// Our own cgroup in it, relative to the mount (from `/proc/self/cgroup`).
    own: PathBuf,
    /// cgroup2 (has `cgroup.kill`) or v1 `name=systemd`.
    v2: bool,
}

/// The writable hierarchies: pure cgroup2 at /sys/fs/cgroup, or on a hybrid
/// host the cgroup2 at /sys/fs/cgroup/unified plus `name=systemd`.
fn hierarchies() -> Result<Vec<Hierarchy>> {
    let own = fs::read_to_string("/proc/self/cgroup").context("reading /proc/self/cgroup")?;
    let own_in = |controllers: &str| -> Option<PathBuf> {
        own.lines().find_map(|l| {
            let mut parts = l.splitn(3, ':');
            let (_, c, path) = (parts.next()?, parts.next()?, parts.next()?);
            (c == controllers).then(|| PathBuf::from(path.trim_start_matches('/')))
        })
    };
    let root = Path::new("/sys/fs/cgroup");
    if root.join("cgroup.controllers").exists() {
        let own = own_in("").context("no cgroup2 line in /proc/self/cgroup")?;
        return Ok(vec![Hierarchy {
            mount: root.into(),
            own,
            v2: true,
        }]);
    }
    let unified = root.join("unified");
    let systemd = root.join("systemd");
    if !unified.join("cgroup.procs").exists() || !systemd.join("cgroup.procs").exists() {
        bail!(
            "neither pure cgroup2 at /sys/fs/cgroup nor hybrid (/sys/fs/cgroup/unified and /sys/fs/cgroup/systemd)"
        );
    }
    Ok(vec![
        Hierarchy {
            mount: unified,
            own: own_in("").context("no cgroup2 line in /proc/self/cgroup")?,
            v2: true,
        },
        Hierarchy {
            mount: systemd,
            own: own_in("name=systemd").context("no name=systemd line in /proc/self/cgroup")?,
            v2: false,
        },
    ])
}

static COUNTER: AtomicUsize = AtomicUsize::new(0);

/// A booted container; dropping it powers it off and cleans up.
#[derive(Debug)]
pub struct Container {
    name: String,
    nspawn: Child,
    leader: u32,
    /// Holds `share/` and the nspawn log; removed on drop.
    tmp: Option<tempfile::TempDir>,
    share: PathBuf,
    log: PathBuf,
    /// One per hierarchy: the cgroup nspawn was started in (removed on drop).
    cgroups: Vec<(PathBuf, bool)>,
}

impl Container {
    /// Boots a fresh container and waits until systemd reports `running` or `degraded`.
    pub fn boot() -> Result<Container> {
        if let Some(reason) = unavailable() {
            bail!("{reason}");
        }
        let started = Instant::now();
        let name = format!(
            "twine-{}-{}",
            std::process::id(),
            COUNTER.fetch_add(1, Ordering::Relaxed)
        );
        let tmp = tempfile::Builder::new()
            .prefix(&format!("{name}-"))
            .tempdir()
            .context("creating a temp dir")?;
        let share = tmp.path().join("share");
        fs::create_dir(&share).with_context(|| format!("creating {}", share.display()))?;
        let log = tmp.path().join("nspawn.log");

        let mut cgroups = Vec::new();
        let mut procs = Vec::new();
        for h in hierarchies()? {
            let dir = h.mount.join(&h.own).join(&name);
            fs::create_dir(&dir).with_context(|| format!("creating cgroup {}", dir.display()))?;
            procs.push(dir.join("cgroup.procs"));
            cgroups.push((dir, h.v2));
        }
        let spawned = spawn_nspawn(&name, &share, &log, &procs);
        let nspawn = match spawned {
            Ok(child) => child,
            Err(e) => {
                remove_cgroups(&cgroups);
                return Err(e);
            }
        };
        // From here on Drop cleans up, also when the boot fails.
        let mut container = Container {
            name,
            nspawn,
            leader: 0,
            tmp: Some(tmp),
            share,
            log,
            cgroups,
        };
        container
            .wait_booted(started)
            .with_context(|| container.diagnostics())?;
        Ok(container)
    }

    fn wait_booted(&mut self, started: Instant) -> Result<()> {
        let deadline = started + BOOT_TIMEOUT;
        // The container's PID 1: a child of nspawn in a PID namespace of its own,
        // once it has exec'd systemd (before that its mounts are still being set up).
        self.leader = poll_until(deadline, "the container's PID 1 to exec systemd", || {
            if let Some(status) = self.nspawn.try_wait()? {
                bail!("systemd-nspawn exited early with {status}");
            }
            Ok(find_leader(self.nspawn.id()))
        })?;
        // is-system-running --wait fails ("Failed to connect to bus", or "offline")
        // until systemd listens; retry until it gives a final answer.
        let mut last = String::new();
        poll_until(deadline, "systemd to finish booting", || {
            if let Some(status) = self.nspawn.try_wait()? {
                bail!("systemd-nspawn exited during boot with {status}");
            }
            let left = deadline.saturating_duration_since(Instant::now());
            let out = self.exec_timeout(&["systemctl", "is-system-running", "--wait"], left)?;
            let state = String::from_utf8_lossy(&out.stdout).trim().to_owned();
            last = format!("{state} {}", String::from_utf8_lossy(&out.stderr).trim());
            Ok(match state.as_str() {
                "running" | "degraded" => Some(()),
                "maintenance" | "stopping" => bail!("systemd in the container is {state}"),
                _ => None,
            })
        })
        .with_context(|| format!("last answer: {last}"))
    }

    /// The machine name (unique per container).
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The host PID of the container's PID 1 (systemd).
    pub fn leader(&self) -> u32 {
        self.leader
    }

    /// The host directory that appears at [`SHARE_IN`] inside.
    pub fn share(&self) -> &Path {
        &self.share
    }

    /// A path inside the container, as seen from the host (through `/proc/<leader>/root`).
    pub fn host_path(&self, inside: &str) -> PathBuf {
        PathBuf::from(format!("/proc/{}/root", self.leader)).join(inside.trim_start_matches('/'))
    }

    /// Runs `argv` inside the container (all its namespaces, root and working
    /// directory `/`, a minimal environment) with the default timeout.
    /// A command that overruns is killed and reported with status 124 (or 137).
    pub fn exec(&self, argv: &[&str]) -> Output {
        self.exec_timeout(argv, EXEC_TIMEOUT)
            .unwrap_or_else(|e| panic!("running {argv:?} in {}: {e:#}", self.name))
    }

    /// Like [`Container::exec`], with a timeout of `limit`.
    pub fn exec_timeout(&self, argv: &[&str], limit: Duration) -> Result<Output> {
        let secs = format!("{:.3}", limit.max(Duration::from_millis(100)).as_secs_f64());
        let leader = self.leader.to_string();
        Command::new("timeout")
            .args([
                "--kill-after=5",
                &secs,
                "nsenter",
                "-t",
                &leader,
                "-a",
                "-r",
                "-w",
                "--",
            ])
            .args([
                "/usr/bin/env",
                "-i",
                &format!("PATH={PATH_INSIDE}"),
                "SYSTEMD_PAGER=",
                "SYSTEMD_COLORS=0",
                "LANG=C.UTF-8",
            ])
            .args(argv)
            .stdin(Stdio::null())
            .output()
            .with_context(|| format!("spawning nsenter for {argv:?}"))
    }

    /// Runs `systemctl ARGS...` inside.
    pub fn systemctl(&self, args: &[&str]) -> Output {
        let mut argv = vec!["systemctl", "--no-pager", "--no-ask-password"];
        argv.extend_from_slice(args);
        self.exec(&argv)
    }

    /// Runs `systemctl ARGS...` inside and fails with its output unless it succeeds.
    pub fn systemctl_ok(&self, args: &[&str]) -> Result<String> {
        let out = self.systemctl(args);
        if !out.status.success() {
            bail!("systemctl {args:?}: {}", describe(&out));
        }
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    /// Writes unit files into `/etc/systemd/system` inside and reloads systemd.
    pub fn install_units<N: AsRef<str>, C: AsRef<str>>(&self, units: &[(N, C)]) -> Result<()> {
        let dir = self.host_path("/etc/systemd/system");
        for (name, contents) in units {
            let name = name.as_ref();
            if name.is_empty() || name.contains('/') || name.starts_with('.') {
                bail!("not a unit file name: {name:?}");
            }
            let path = dir.join(name);
            fs::write(&path, contents.as_ref())
                .with_context(|| format!("writing {}", path.display()))?;
        }
        self.systemctl_ok(&["daemon-reload"])?;
        Ok(())
    }

    /// `systemctl show -P PROPERTY UNIT`, trimmed. Panics when systemctl fails.
    pub fn show(&self, unit: &str, property: &str) -> String {
        let out = self.systemctl(&["show", "-P", property, "--", unit]);
        assert!(
            out.status.success(),
            "systemctl show -P {property} {unit}: {}",
            describe(&out)
        );
        String::from_utf8_lossy(&out.stdout)
            .trim_end_matches('\n')
            .to_owned()
    }

    /// Several properties at once, in the order asked.
    pub fn show_many(&self, unit: &str, properties: &[&str]) -> Vec<String> {
        let mut args = vec!["show".to_owned()];
        for p in properties {
            args.push(format!("--property={p}"));
        }
        args.extend(["--".to_owned(), unit.to_owned()]);
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let out = self.systemctl(&args);
        assert!(
            out.status.success(),
            "systemctl show {unit}: {}",
            describe(&out)
        );
        let text = String::from_utf8_lossy(&out.stdout);
        properties
            .iter()
            .map(|p| {
                text.lines()
                    .find_map(|l| l.strip_prefix(p).and_then(|r| r.strip_prefix('=')))
                    .unwrap_or_default()
                    .to_owned()
            })
            .collect()
    }

    /// Polls `unit` until `predicate(ActiveState, SubState)` holds; returns the
    /// states seen last. On timeout the error carries `systemctl status` and the journal tail.
    pub fn wait_until(
        &self,
        unit: &str,
        predicate: impl Fn(&str, &str) -> bool,
        timeout: Duration,
    ) -> Result<(String, String)> {
        let deadline = Instant::now() + timeout;
        let mut last = (String::new(), String::new());
        let found = poll_until(deadline, "unit state", || {
            let states = self.show_many(unit, &["ActiveState", "SubState"]);
            last = (states[0].clone(), states[1].clone());
            Ok(predicate(&last.0, &last.1).then(|| last.clone()))
        });
        found.with_context(|| {
            format!(
                "{unit} did not reach the expected state within {timeout:?}; last {}/{}\n{}",
                last.0,
                last.1,
                self.unit_diagnostics(unit)
            )
        })
    }

    /// `systemctl status` and the journal of `unit`, for failure messages.
    pub fn unit_diagnostics(&self, unit: &str) -> String {
        let status = self.exec_timeout(
            &["systemctl", "--no-pager", "status", "--", unit],
            Duration::from_secs(10),
        );
        let journal = self.exec_timeout(
            &["journalctl", "--no-pager", "-n", "40", "-u", unit],
            Duration::from_secs(10),
        );
        let mut out = String::new();
        for o in [status, journal].into_iter().flatten() {
            out.push_str(&String::from_utf8_lossy(&o.stdout));
            out.push_str(&String::from_utf8_lossy(&o.stderr));
        }
        out
    }

    /// Reads a file from the shared directory (`name` relative to it).
    pub fn read_shared(&self, name: &str) -> Option<Vec<u8>> {
        fs::read(self.share.join(name)).ok()
    }

    /// Reads a file from the shared directory as text; empty when missing.
    pub fn read_shared_string(&self, name: &str) -> String {
        self.read_shared(name)
            .map(|b| String::from_utf8_lossy(&b).into_owned())
            .unwrap_or_default()
    }

    fn diagnostics(&self) -> String {
        let log = fs::read_to_string(&self.log).unwrap_or_default();
        let tail: Vec<&str> = log.lines().rev().take(30).collect();
        let mut out = format!(
            "container {} (rootfs {}), nspawn log tail:",
            self.name,
            rootfs().display()
        );
        for l in tail.into_iter().rev() {
            let _ = write!(out, "\n  {l}");
        }
        out
    }

    fn shutdown(&mut self) {
        let deadline = Instant::now() + POWEROFF_TIMEOUT;
        if self.nspawn.try_wait().ok().flatten().is_none() {
            if self.leader != 0 {
                // SIGRTMIN+3 asks systemd for a clean poweroff.
                let _ = Command::new("kill")
                    .args(["-s", "RTMIN+3", &self.leader.to_string()])
                    .stdout(Stdio::null())
                    .stderr(Stdio::null())
                    .status();
            } else {
                let _ = self.nspawn.kill();
            }
            if wait_child(&mut self.nspawn, deadline).is_none() {
                eprintln!(
                    "{}: no clean poweroff within {POWEROFF_TIMEOUT:?}; killing it",
                    self.name
                );
                kill_cgroups(&self.cgroups);
                let _ = self.nspawn.kill();
                let _ = wait_child(&mut self.nspawn, Instant::now() + Duration::from_secs(5));
            }
        }
        // nspawn is gone; nothing may survive in its cgroups.
        kill_cgroups(&self.cgroups);
        remove_cgroups(&self.cgroups);
        // Best effort: nspawn leaves its propagation directory behind on exit.
        let _ = fs::remove_dir_all(Path::new("/run/systemd/nspawn/propagate").join(&self.name));
        if let Some(tmp) = self.tmp.take()
            && let Err(e) = tmp.close()
        {
            eprintln!("{}: removing the temp dir: {e}", self.name);
        }
    }
}

impl Drop for Container {
    fn drop(&mut self) {
        self.shutdown();
    }
}

fn spawn_nspawn(name: &str, share: &Path, log: &Path, procs: &[PathBuf]) -> Result<Child> {
    let log_out = fs::File::create(log).with_context(|| format!("creating {}", log.display()))?;
    let log_err = log_out.try_clone()?;
    // The shell moves itself into the fresh cgroups, then becomes nspawn.
    let mut cmd = Command::new("/bin/sh");
    cmd.arg("-c")
        .arg(r#"for f in "$@"; do [ "$f" = -- ] && break; echo $$ > "$f" || exit 125; shift; done; shift; exec "$@""#)
        .arg("sh");
    cmd.args(procs).arg("--");
    cmd.arg("systemd-nspawn")
        .arg("--quiet")
        .arg("-D")
        .arg(rootfs())
        .args([
            "--volatile=overlay",
            "--register=no",
            "--keep-unit",
            "--console=pipe",
        ])
        .arg(format!("--machine={name}"))
        .arg(format!("--bind={}:{SHARE_IN}", share.display()))
        .args([
            "--private-network",
            "--resolv-conf=off",
            "--timezone=off",
            "--link-journal=no",
        ])
        .arg("--boot")
        // Kernel command line for systemd inside: no status lines on the console pipe.
        .arg("systemd.show_status=0")
        .env("SYSTEMD_NSPAWN_LOCK", "0")
        .stdin(Stdio::null())
        .stdout(log_out)
        .stderr(log_err);
    cmd.spawn().context("spawning systemd-nspawn")
}

/// The child of `nspawn` that is PID 1 of a new PID namespace and runs systemd.
fn find_leader(nspawn: u32) -> Option<u32> {
    let want_ppid = nspawn.to_string();
    for entry in fs::read_dir("/proc").ok()?.flatten() {
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|s| s.parse::<u32>().ok())
        else {
            continue;
        };
        let Ok(status) = fs::read_to_string(entry.path().join("status")) else {
            continue;
        };
        let field = |k: &str| {
            status
                .lines()
                .find_map(|l| l.strip_prefix(k))
                .map(str::trim)
        };
        if field("PPid:") != Some(want_ppid.as_str()) {
            continue;
        }
        let ns_pids: Vec<&str> = field("NSpid:")
            .unwrap_or_default()
            .split_whitespace()
            .collect();
        if ns_pids.len() >= 2 && ns_pids.last() == Some(&"1") && field("Name:") == Some("systemd") {
            return Some(pid);
        }
    }
    None
}

/// Calls `step` every [`POLL`] until it returns `Some`, fails, or `deadline` passes.
fn poll_until<T>(
    deadline: Instant,
    what: &str,
    mut step: impl FnMut() -> Result<Option<T>>,
) -> Result<T> {
    loop {
        if let Some(v) = step()? {
            return Ok(v);
        }
        if Instant::now() >= deadline {
            bail!("timed out waiting for {what}");
        }
        thread::sleep(POLL);
    }
}

fn wait_child(child: &mut Child, deadline: Instant) -> Option<ExitStatus> {
    loop {
        match child.try_wait() {
            Ok(Some(status)) => return Some(status),
            Ok(None) if Instant::now() < deadline => thread::sleep(POLL),
            _ => return None,
        }
    }
}

/// Every cgroup directory under `dir`, deepest first.
fn subtree(dir: &Path) -> Vec<PathBuf> {
    let mut all = vec![dir.to_path_buf()];
    let mut i = 0;
    while i < all.len() {
        if let Ok(entries) = fs::read_dir(&all[i]) {
            for e in entries.flatten() {
                if e.file_type().is_ok_and(|t| t.is_dir()) {
                    all.push(e.path());
                }
            }
        }
        i += 1;
    }
    all.reverse();
    all
}

fn procs_in(dir: &Path) -> Vec<u32> {
    subtree(dir)
        .iter()
        .filter_map(|d| fs::read_to_string(d.join("cgroup.procs")).ok())
        .flat_map(|s| {
            s.lines()
                .filter_map(|l| l.trim().parse().ok())
                .collect::<Vec<u32>>()
        })
        .collect()
}

/// Kills everything in the cgroups and waits (bounded) until they are empty.
fn kill_cgroups(cgroups: &[(PathBuf, bool)]) {
    let deadline = Instant::now() + Duration::from_secs(10);
    for (dir, v2) in cgroups {
        if !dir.exists() {
            continue;
        }
        loop {
            let pids = procs_in(dir);
            if pids.is_empty() {
                break;
            }
            if *v2 && fs::write(dir.join("cgroup.kill"), "1").is_ok() {
                // Killed the whole subtree at once.
            } else {
                let mut kill = Command::new("kill");
                kill.arg("-KILL").args(pids.iter().map(u32::to_string));
                let _ = kill.stdout(Stdio::null()).stderr(Stdio::null()).status();
            }
            if Instant::now() >= deadline {
                eprintln!("processes left in {}: {pids:?}", dir.display());
                break;
            }
            thread::sleep(POLL);
        }
    }
}

/// Removes the cgroups, deepest first; retries briefly while exiting tasks release them.
fn remove_cgroups(cgroups: &[(PathBuf, bool)]) {
    let deadline = Instant::now() + Duration::from_secs(10);
    for (dir, _) in cgroups {
        for d in subtree(dir) {
            loop {
                match fs::remove_dir(&d) {
                    Ok(()) => break,
                    Err(e) if e.kind() == io::ErrorKind::NotFound => break,
                    Err(e) if Instant::now() >= deadline => {
                        eprintln!("cannot remove cgroup {}: {e}", d.display());
                        break;
                    }
                    Err(_) => thread::sleep(POLL),
                }
            }
        }
    }
}

/// Status, stdout and stderr of a finished command, for messages.
pub fn describe(out: &Output) -> String {
    format!(
        "{}\nstdout: {}\nstderr: {}",
        out.status,
        String::from_utf8_lossy(&out.stdout).trim_end(),
        String::from_utf8_lossy(&out.stderr).trim_end()
    )
}
