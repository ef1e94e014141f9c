//! The daemon ([`twine_oomd::daemon::Daemon::run`]) in a process of its own, stopped by real
//! signals: SIGTERM and SIGINT set its stop flag (as `twine oomd run` does), SIGKILL is a crash.
//!
//! The process is this test binary run again on its ignored entry
//! `support::daemon::daemon_child`, with the [`DaemonSpec`] as JSON in `TWINE_OOMD_DAEMON`. It
//! prints `twine-daemon: started` once the daemon is built, one line per record
//! (`twine-daemon: record JSON`) and per kill decision (`twine-daemon: kill JSON`), and
//! `twine-daemon: stopped` after a clean stop. Dropping the [`DaemonProcess`] guard SIGKILLs it.
// Each test binary uses a different part of this module.
#![allow(dead_code)]

use std::io;
use std::path::PathBuf;
use std::process::{Child, ExitStatus, Stdio};
use std::sync::Arc;
use std::sync::atomic::AtomicBool;
use std::sync::mpsc;
use std::time::{Duration, Instant};

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use serde::{Deserialize, Serialize};
use twine_oomd::CgroupRoot;
use twine_oomd::config::Config;
use twine_oomd::daemon::{Daemon, Options, Output, Selection};
use twine_oomd::senpai::{Mode, SenpaiConfig};

const SPEC_VAR: &str = "TWINE_OOMD_DAEMON";
const CHILD_TEST: &str = "support::daemon::daemon_child";
const STARTED: &str = "twine-daemon: started";
const STOPPED: &str = "twine-daemon: stopped";

/// What the daemon process runs: `Options::new(CgroupRoot::at(root), selection)` with these
/// overrides.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub(crate) struct DaemonSpec {
    /// The cgroup root the daemon sees (a test's own parent cgroup).
    pub(crate) root: PathBuf,
    /// Cgroups relative to `root`, sized with `senpai` (`Selection::Cgroups`); unused when
    /// `config` is set.
    pub(crate) cgroups: Vec<String>,
    /// A TOML config (`Selection::Config`) instead of `cgroups`.
    pub(crate) config: Option<String>,
    /// `Options::mode`.
    pub(crate) mode: Option<Mode>,
    /// `Options::senpai`.
    pub(crate) senpai: SenpaiConfig,
    /// `Options::state_file`.
    pub(crate) state_file: PathBuf,
}

impl DaemonSpec {
    /// The daemon over `cgroups` under `root` in `mode`, with `senpai`'s parameters.
    pub(crate) fn cgroups(
        root: impl Into<PathBuf>,
        cgroups: &[&str],
        mode: Mode,
        senpai: SenpaiConfig,
        state_file: impl Into<PathBuf>,
    ) -> Self {
        Self {
            root: root.into(),
            cgroups: cgroups.iter().map(|c| (*c).to_owned()).collect(),
            config: None,
            mode: Some(mode),
            senpai,
            state_file: state_file.into(),
        }
    }

    /// The daemon with a TOML config under `root`.
    pub(crate) fn config(
        root: impl Into<PathBuf>,
        toml: &str,
        state_file: impl Into<PathBuf>,
    ) -> Self {
        Self {
            root: root.into(),
            cgroups: Vec::new(),
            config: Some(toml.to_owned()),
            mode: None,
            senpai: SenpaiConfig::default(),
            state_file: state_file.into(),
        }
    }

    /// Starts the daemon process and waits until the daemon is built (or fails to be).
    pub(crate) fn spawn(&self) -> io::Result<DaemonProcess> {
        let exe = std::env::current_exe()?;
        let spec = serde_json::to_string(self).map_err(io::Error::other)?;
        let mut child = super::child_command(&exe, CHILD_TEST)
            .env(SPEC_VAR, spec)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .map_err(|e| {
                io::Error::new(
                    e.kind(),
                    format!("starting the daemon {}: {e}", exe.display()),
                )
            })?;
        let lines = super::lines_of(child.stdout.take().expect("piped stdout"));
        let mut daemon = DaemonProcess {
            child,
            lines,
            records: Vec::new(),
            stopped: false,
        };
        loop {
            match daemon.lines.recv_timeout(Duration::from_secs(30)) {
                Ok(line) if line.ends_with(STARTED) => return Ok(daemon),
                Ok(line) => daemon.take(line),
                Err(_) => {
                    return Err(io::Error::other(format!(
                        "the daemon process did not start: {:?}",
                        daemon.child.try_wait()
                    )));
                }
            }
        }
    }
}

/// A started daemon process; dropping it SIGKILLs it (if still running) and reaps it.
pub(crate) struct DaemonProcess {
    child: Child,
    lines: mpsc::Receiver<String>,
    records: Vec<String>,
    stopped: bool,
}

impl DaemonProcess {
    /// Its process id.
    pub(crate) fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Sends `signal` to it.
    pub(crate) fn signal(&self, signal: Signal) -> io::Result<()> {
        let pid = i32::try_from(self.child.id()).map_err(io::Error::other)?;
        kill(Pid::from_raw(pid), signal).map_err(io::Error::from)
    }

    /// Waits up to `timeout` for it to exit.
    pub(crate) fn wait(&mut self, timeout: Duration) -> io::Result<ExitStatus> {
        let started = Instant::now();
        loop {
            if let Some(status) = self.child.try_wait()? {
                self.drain();
                return Ok(status);
            }
            if started.elapsed() >= timeout {
                return Err(io::Error::new(
                    io::ErrorKind::TimedOut,
                    format!(
                        "the daemon (pid {}) still runs after {timeout:?}",
                        self.pid()
                    ),
                ));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// SIGTERM, then waits up to 10 s: the exit status, and whether it reported a clean stop.
    pub(crate) fn terminate(&mut self) -> io::Result<(ExitStatus, bool)> {
        self.signal(Signal::SIGTERM)?;
        let status = self.wait(Duration::from_secs(10))?;
        Ok((status, self.stopped))
    }

    /// The records it printed so far (JSON, one per cgroup per tick), for diagnostics.
    pub(crate) fn records(&mut self) -> &[String] {
        self.drain();
        &self.records
    }

    fn drain(&mut self) {
        while let Ok(line) = self.lines.try_recv() {
            self.take(line);
        }
    }

    fn take(&mut self, line: String) {
        if line.ends_with(STOPPED) {
            self.stopped = true;
        } else if let Some((_, record)) = line.split_once("twine-daemon: record ") {
            self.records.push(record.to_owned());
        }
    }
}

impl Drop for DaemonProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The daemon's entry point when this binary is run again by [`DaemonSpec::spawn`]; a no-op
/// otherwise. Not a guest test (not `guest_*`): the guest tier never selects it.
#[test]
#[ignore = "daemon child: run by support::daemon::DaemonSpec::spawn, not a test"]
fn daemon_child() {
    let Ok(spec) = std::env::var(SPEC_VAR) else {
        eprintln!("skipped: the daemon's child entry; DaemonSpec::spawn runs it");
        return;
    };
    let spec: DaemonSpec =
        serde_json::from_str(&spec).unwrap_or_else(|e| panic!("bad {SPEC_VAR}: {e}: {spec}"));
    let stop = Arc::new(AtomicBool::new(false));
    for signal in [signal_hook::consts::SIGTERM, signal_hook::consts::SIGINT] {
        signal_hook::flag::register(signal, Arc::clone(&stop))
            .unwrap_or_else(|e| panic!("registering signal {signal}: {e}"));
    }
    let selection = match &spec.config {
        Some(toml) => Selection::Config(Box::new(
            Config::from_toml(toml).unwrap_or_else(|e| panic!("bad config: {e}")),
        )),
        None => Selection::Cgroups(spec.cgroups.clone()),
    };
    let mut options = Options::new(CgroupRoot::at(&spec.root), selection);
    options.mode = spec.mode;
    options.senpai = spec.senpai.clone();
    options.state_file = Some(spec.state_file.clone());
    let mut daemon = Daemon::new(options).unwrap_or_else(|e| panic!("Daemon::new: {e}"));
    let say = |line: &str| {
        use std::io::Write as _;
        let mut out = io::stdout().lock();
        let _ = writeln!(out, "{line}");
        let _ = out.flush();
    };
    say(STARTED);
    daemon
        .run(&stop, None, |output| match output {
            Output::Record(record) => {
                let json = serde_json::to_string(record).unwrap_or_else(|e| e.to_string());
                say(&format!("twine-daemon: record {json}"));
            }
            Output::Kill(kill) => {
                let json = serde_json::to_string(kill).unwrap_or_else(|e| e.to_string());
                say(&format!("twine-daemon: kill {json}"));
            }
        })
        .unwrap_or_else(|e| panic!("Daemon::run: {e}"));
    say(STOPPED);
}
