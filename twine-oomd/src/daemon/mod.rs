//! The daemon: the I/O shell that drives the [`senpai`](crate::senpai) controller and the
//! [`kill`](crate::kill) policy over many cgroups.
//!
//! A [`Daemon`] is built from [`Options`] (which cgroups, which mode, where the cgroup root,
//! `/proc` and the state file are). Each [`Daemon::tick`] re-resolves the selection (new
//! cgroups join, vanished ones leave, both with a log line), reads one
//! [`MemorySnapshot`](crate::memory::MemorySnapshot) per cgroup through a kept
//! [`SnapshotReader`], steps each controller, carries out its action
//! and runs the kill policy once. [`Daemon::restore`] puts back every `memory.high` the daemon
//! changed; [`Daemon::run`] is the loop around both, stopped by a flag or a duration, and
//! hands its caller every record and every kill decision (including dry-run ones) as an
//! [`Output`].
//!
//! The tick takes the time as an argument (monotonic, since the daemon's start) and does not
//! sleep, so tests drive it tick by tick on a fixture tree:
//!
//! ```
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! use std::time::Duration;
//! use twine_oomd::daemon::{Daemon, Options, Selection};
//! use twine_oomd::senpai::Mode;
//! use twine_oomd::CgroupRoot;
//!
//! let dir = tempfile::tempdir()?;
//! # twine_oomd::fixture::fake_cgroup(dir.path(), "cg/a")?;
//! # std::fs::write(dir.path().join("cg/a/memory.current"), "1073741824\n")?;
//! # let stat = "anon 0\nfile 1073741824\nkernel 0\nshmem 0\nactive_anon 0\ninactive_anon 0\nactive_file 0\ninactive_file 1073741824\nunevictable 0\n";
//! # std::fs::write(dir.path().join("cg/a/memory.stat"), stat)?;
//! # std::fs::create_dir(dir.path().join("proc"))?;
//! # std::fs::write(dir.path().join("proc/meminfo"), "MemTotal: 8000000 kB\nSwapTotal: 0 kB\nSwapFree: 0 kB\n")?;
//! // `cg/a` is a fake cgroup (twine_oomd::fixture): 1 GiB of page cache.
//! let mut options = Options::new(CgroupRoot::at(dir.path().join("cg")), Selection::Cgroups(vec!["a".into()]));
//! options.mode = Some(Mode::High);
//! options.proc_root = dir.path().join("proc");
//! options.state_file = Some(dir.path().join("state.json"));
//! let mut daemon = Daemon::new(options)?;
//! let report = daemon.tick(Duration::ZERO)?;
//! assert_eq!(report.records[0].cgroup, "a");
//! // The first step takes over memory.high at memory.current.
//! assert_eq!(std::fs::read_to_string(dir.path().join("cg/a/memory.high"))?, "1073741824");
//! daemon.restore()?; // a clean stop: memory.high is back to "max"
//! assert_eq!(std::fs::read_to_string(dir.path().join("cg/a/memory.high"))?, "max");
//! # Ok(())
//! # }
//! ```
//!
//! # Restoring `memory.high` across a crash
//! In `high` mode the daemon remembers each cgroup's original `memory.high`. So that a
//! successor of a daemon killed with SIGKILL still restores the true original (and not the
//! lowered value it finds), the originals are kept in a JSON state file
//! ([`DEFAULT_STATE_FILE`] unless [`Options::state_file`] says otherwise), written atomically
//! (temporary file and rename) **before** the first write of `memory.high` to a cgroup; a
//! daemon that cannot persist an original does not lower that `memory.high`. On start the
//! daemon reads the file, and a cgroup listed there keeps the listed original (one sized in
//! `reclaim` mode now gets it back as soon as it joins). The daemon holds an exclusive `flock`
//! on `STATE_FILE.lock` while it lives: a second daemon on the same state file is refused. A
//! clean stop
//! restores every cgroup (also those listed but not selected this run, if they exist) and
//! removes the file. An external edit of `memory.high` while the daemon runs becomes the new
//! original, as in [`SenpaiState::restore`].
//!
//! A cgroup that goes away is dropped and its original forgotten (one created again under the
//! same name is a new cgroup).
//!
//! # Faults
//! - A cgroup that vanishes mid-tick: its record carries the error, it is dropped, and the
//!   tick goes on with the others.
//! - `memory.reclaim` answering EAGAIN or EBUSY (reclaimed less than asked): retried
//!   [`Options::reclaim_retries`] times in the tick, then reported in the record.
//! - A `memory.high` write the kernel blocks (synchronous reclaim on older kernels): the
//!   writes of a tick go to one long-lived writer thread ([`LimitWriter`]); after
//!   [`Options::write_timeout`] the daemon moves on, and the next read of `memory.high` shows
//!   whether the write landed, which decides the controller state it continues from. A write
//!   that failed is undone in the controller, so it never looks like an external edit.
//! - Garbage in a cgroup file: an error in that cgroup's record for that tick.
//!
//! `--dry-run` concerns kills only (as in oomd): the resizer still writes.
//!
//! # Layout
//! This file holds the public calls and types and the daemon's state; `select` resolves the
//! selection against the tree, `tick` is one cgroup's tick and the batch of `memory.high`
//! writes, `policy` runs the kill policy and `execute` carries out its decision,
//! `state_file` keeps the originals, and `host` reads the page size, the fd limit and
//! `meminfo`.

mod execute;
mod host;
mod policy;
mod select;
mod state_file;
mod tick;

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use serde::Serialize;

use crate::cgroup::{Cgroup, CgroupError, CgroupRoot};
use crate::config::{Config, ConfigError};
use crate::kill::KillPolicy;
use crate::memory::{Limit, LimitFile, LimitWriter, SnapshotReader};
use crate::senpai::{Action, Cause, Mode, SenpaiConfig, SenpaiState};

pub use execute::KillRecord;
pub use host::raise_fd_limit;
use host::{page_size, read_meminfo};
use select::descendants;
use state_file::Originals;
use tick::{TickContext, tick_one};

/// Where the daemon keeps the original `memory.high` values unless told otherwise.
pub const DEFAULT_STATE_FILE: &str = "/run/twine-oomd/state.json";

/// What can stop the daemon (per-cgroup trouble is in the [`Record`]s instead).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum DaemonError {
    /// A cgroup path or file of the selection.
    #[error(transparent)]
    Cgroup(#[from] CgroupError),
    /// The config, or an override of it.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// `meminfo` under the proc root could not be read or parsed.
    #[error("{path}: {reason}")]
    Meminfo {
        /// The file.
        path: PathBuf,
        /// What went wrong.
        reason: String,
    },
    /// The state file could not be read, parsed or written.
    #[error("{path}: {reason}")]
    StateFile {
        /// The file.
        path: PathBuf,
        /// What went wrong.
        reason: String,
    },
    /// The page size or the file descriptor limit could not be read or set.
    #[error("{what}: {source}")]
    System {
        /// `sysconf(_SC_PAGESIZE)`, `setrlimit(RLIMIT_NOFILE)`, ...
        what: &'static str,
        /// The OS error.
        source: nix::errno::Errno,
    },
}

/// Which cgroups the daemon sizes.
#[derive(Debug, Clone)]
pub enum Selection {
    /// These cgroups (paths relative to the root), each with [`Options::senpai`]; one that
    /// does not exist (yet, or any more) is skipped until it does.
    Cgroups(Vec<String>),
    /// Every cgroup under the root that a `[[resize]]` glob matches, with that entry's
    /// parameters, and the `[[kill]]` rules.
    Config(Box<Config>),
}

/// How to build a [`Daemon`]. [`Options::new`] gives the defaults.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct Options {
    /// The cgroup2 hierarchy.
    pub root: CgroupRoot,
    /// Which cgroups.
    pub selection: Selection,
    /// Controller parameters for [`Selection::Cgroups`] (default: Senpai's).
    pub senpai: SenpaiConfig,
    /// Force this mode on every cgroup; `None`: the config's, else `reclaim` where the
    /// cgroup has `memory.reclaim` and `high` elsewhere.
    pub mode: Option<Mode>,
    /// Force this controller interval on every cgroup.
    pub interval: Option<Duration>,
    /// Report kills without carrying them out.
    pub dry_run: bool,
    /// Where `meminfo` is read (default `/proc`).
    pub proc_root: PathBuf,
    /// The state file of original `memory.high` values; `None` keeps them in memory only
    /// (a SIGKILLed daemon's successor then cannot restore them).
    pub state_file: Option<PathBuf>,
    /// How long a `memory.high` write may block (default 1 s).
    pub write_timeout: Duration,
    /// How many more times a short `memory.reclaim` is tried in one tick (default 2).
    pub reclaim_retries: u32,
}

impl Options {
    /// The defaults for `selection` under `root`: Senpai's parameters, mode chosen per
    /// cgroup, `/proc`, [`DEFAULT_STATE_FILE`].
    pub fn new(root: CgroupRoot, selection: Selection) -> Self {
        Self {
            root,
            selection,
            senpai: SenpaiConfig::default(),
            mode: None,
            interval: None,
            dry_run: false,
            proc_root: PathBuf::from("/proc"),
            state_file: Some(PathBuf::from(DEFAULT_STATE_FILE)),
            write_timeout: Duration::from_secs(1),
            reclaim_retries: 2,
        }
    }
}

/// What the daemon saw and did for one cgroup in one tick (or at the restore).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Record {
    /// Seconds since the daemon started (monotonic).
    pub time_s: f64,
    /// The cgroup, relative to the root.
    pub cgroup: String,
    /// The controller's mode for this cgroup.
    pub mode: Mode,
    /// `memory.current`, bytes, if read.
    pub current: Option<u64>,
    /// `memory.high` as read before acting: bytes or `"max"`.
    pub high: Option<Limit>,
    /// `some` stall total of `memory.pressure`, µs.
    pub some_total_us: Option<u64>,
    /// `some` stall since the previous tick, µs.
    pub some_delta_us: Option<u64>,
    /// `some avg10` of `memory.pressure`, percent.
    pub some_avg10: Option<f32>,
    /// What the daemon did (an action that failed is reported with `error`).
    pub action: Action,
    /// Why the controller chose the action.
    pub cause: Option<Cause>,
    /// What went wrong, if anything.
    pub error: Option<String>,
}

/// What [`Daemon::run`] hands its caller, in order: each tick's records, then that tick's
/// kill, if any; the restore's records last.
///
/// Not `#[non_exhaustive]` on purpose: a new kind of output must make every caller decide
/// how to show it, not fall silently into a wildcard arm.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Output<'a> {
    /// One cgroup's record of a tick or of the restore.
    Record(&'a Record),
    /// A kill the policy decided, carried out or (in a dry run) only reported.
    Kill(&'a KillRecord),
}

/// The outcome of one [`Daemon::tick`].
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct TickReport {
    /// One record per cgroup.
    pub records: Vec<Record>,
    /// The kill the policy decided, if any, and what became of it.
    pub kill: Option<KillRecord>,
}

/// One sized cgroup.
#[derive(Debug)]
struct Watched {
    cgroup: Cgroup,
    reader: SnapshotReader,
    senpai: SenpaiConfig,
    state: SenpaiState,
    swap_max_zero: bool,
    last_total: Option<u64>,
    /// A timed-out `memory.high` write: the controller state had it been written, and the
    /// value. `state` holds the state from before it.
    pending: Option<(SenpaiState, u64)>,
}

impl Watched {
    /// Takes the state of a timed-out write once `memory.high` shows that it landed.
    fn settle(&mut self, high: Limit) {
        if let Some((after, bytes)) = self.pending.take()
            && high == Limit::Bytes(bytes)
        {
            self.state = after;
        }
    }
}

/// The daemon over many cgroups.
#[derive(Debug)]
pub struct Daemon {
    options: Options,
    policy: Option<KillPolicy>,
    watched: BTreeMap<String, Watched>,
    /// Cgroups that could not be opened, so their failure is logged once.
    failed: BTreeSet<String>,
    originals: Originals,
    writer: LimitWriter,
    page_size: u64,
    meminfo_path: PathBuf,
    started: Instant,
}

impl Daemon {
    /// Checks the options, reads the page size, `meminfo` and the state file. Touches no
    /// cgroup yet.
    pub fn new(mut options: Options) -> Result<Self, DaemonError> {
        if let Selection::Config(config) = &mut options.selection {
            if let Some(mode) = options.mode {
                config.set_mode(mode);
            }
            if let Some(interval) = options.interval {
                config.set_interval(interval)?;
            }
            config.set_dry_run(options.dry_run || config.dry_run);
        } else {
            if let Some(mode) = options.mode {
                options.senpai.mode = mode;
            }
            if let Some(interval) = options.interval {
                options.senpai.interval = interval;
            }
        }
        options.senpai.validate().map_err(ConfigError::from)?;
        let policy = match &options.selection {
            Selection::Config(config) => {
                Some(config.kill_policy()).filter(|p| p.watched().next().is_some())
            }
            Selection::Cgroups(_) => None,
        };
        let page_size = page_size()?;
        let meminfo_path = options.proc_root.join("meminfo");
        read_meminfo(&meminfo_path)?;
        let originals = Originals::load(options.state_file.as_deref(), options.root.path())?;
        Ok(Self {
            options,
            policy,
            watched: BTreeMap::new(),
            failed: BTreeSet::new(),
            originals,
            writer: LimitWriter::new(),
            page_size,
            meminfo_path,
            started: Instant::now(),
        })
    }

    /// The time between ticks [`Daemon::run`] keeps: 1 s (Senpai's loop), or the shortest
    /// controller interval if that is shorter.
    pub fn tick_period(&self) -> Duration {
        let shortest = match &self.options.selection {
            Selection::Cgroups(_) => Some(self.options.senpai.interval),
            Selection::Config(config) => config.resize.iter().map(|r| r.senpai.interval).min(),
        };
        shortest.map_or(Duration::from_secs(1), |i| i.min(Duration::from_secs(1)))
    }

    /// The cgroups sized now, relative to the root.
    pub fn cgroups(&self) -> impl Iterator<Item = &str> {
        self.watched.keys().map(String::as_str)
    }

    /// One tick at `now` (monotonic, since the daemon's start): re-resolve the selection,
    /// step every controller and act, then run the kill policy. Trouble with one cgroup is
    /// in its record; only an unreadable `meminfo` stops the tick.
    pub fn tick(&mut self, now: Duration) -> Result<TickReport, DaemonError> {
        let meminfo = read_meminfo(&self.meminfo_path)?;
        let mut records = Vec::with_capacity(self.watched.len());
        // One walk of the tree per tick, shared by the globs and the kill policy (which
        // exists only with a config).
        let tree = match &self.options.selection {
            Selection::Config(_) => descendants(&self.options.root.top()),
            Selection::Cgroups(_) => Vec::new(),
        };
        self.resolve(now, &tree, &mut records);
        let mut gone = Vec::new();
        let at = TickContext {
            now,
            meminfo: &meminfo,
            page_size: self.page_size,
        };
        let mut writes = Vec::new();
        for (rel, watched) in &mut self.watched {
            match tick_one(rel, watched, &at, &self.options, &mut self.originals) {
                Ok((record, write)) => {
                    if let Some(write) = write {
                        writes.push((records.len(), rel.clone(), write));
                    }
                    records.push(record);
                }
                Err(error) => {
                    if matches!(error, CgroupError::CgroupGone { .. }) {
                        gone.push(rel.clone());
                    }
                    let mut r = empty_record(now, rel, watched.senpai.mode);
                    r.error = Some(error.to_string());
                    records.push(r);
                }
            }
        }
        self.write_highs(writes, &mut records);
        for rel in gone {
            tracing::info!(cgroup = %rel, "cgroup is gone: dropped");
            self.leave(&rel);
        }
        let kill = self.kill(now, &meminfo, &tree);
        Ok(TickReport { records, kill })
    }

    /// Puts back every `memory.high` the daemon changed (and those a killed predecessor
    /// changed, from the state file), stops sizing every cgroup, and removes the state
    /// file once nothing is left to restore. Returns one record per cgroup it restored or
    /// failed to.
    pub fn restore(&mut self) -> Result<Vec<Record>, DaemonError> {
        let now = self.started.elapsed();
        let mut records = Vec::new();
        let sized: BTreeSet<String> = self.watched.keys().cloned().collect();
        for (rel, mut watched) in std::mem::take(&mut self.watched) {
            if watched.senpai.mode != Mode::High {
                continue;
            }
            let mut record = empty_record(now, &rel, Mode::High);
            let high_now = watched.cgroup.limit(LimitFile::High);
            let result = high_now.and_then(|high_now| {
                record.high = Some(high_now);
                watched.settle(high_now);
                let action = watched.state.exit(limit_bytes(high_now));
                let Action::RestoreHigh(original) = action else {
                    return Ok(());
                };
                // A predecessor's original wins over what this run found on disk.
                let original = self.originals.get(&rel).unwrap_or(original);
                record.action = Action::RestoreHigh(original);
                restore_high(&mut self.writer, &watched.cgroup, original, &self.options)
            });
            self.finish_restore(&rel, &mut record, result);
            if record.action != Action::None || record.error.is_some() {
                records.push(record);
            }
        }
        // Listed by a killed predecessor but not sized in this run.
        for (rel, original) in self.originals.entries() {
            if sized.contains(&rel) {
                continue;
            }
            let mut record = empty_record(now, &rel, Mode::High);
            record.action = Action::RestoreHigh(original);
            let result = self.options.root.cgroup(&rel).and_then(|cgroup| {
                if !cgroup.path().is_dir() {
                    return Err(CgroupError::CgroupGone {
                        path: cgroup.path().to_owned(),
                    });
                }
                restore_high(&mut self.writer, &cgroup, original, &self.options)
            });
            self.finish_restore(&rel, &mut record, result);
            records.push(record);
        }
        self.originals.save()?;
        Ok(records)
    }

    /// Ticks every [`Daemon::tick_period`] until `stop` is set or `duration` has passed,
    /// handing each tick's records and then its kill (dry run or not) to `emit` as
    /// [`Output`]s, then [restores](Daemon::restore) (records included). A failed tick also
    /// restores before it is returned.
    pub fn run(
        &mut self,
        stop: &AtomicBool,
        duration: Option<Duration>,
        mut emit: impl FnMut(Output<'_>),
    ) -> Result<(), DaemonError> {
        let period = self.tick_period();
        let mut next = Duration::ZERO;
        let outcome = loop {
            let now = self.started.elapsed();
            if stop.load(Ordering::Relaxed) || duration.is_some_and(|d| now >= d) {
                break Ok(());
            }
            if now >= next {
                match self.tick(now) {
                    Ok(report) => {
                        report.records.iter().for_each(|r| emit(Output::Record(r)));
                        if let Some(kill) = &report.kill {
                            emit(Output::Kill(kill));
                        }
                    }
                    Err(error) => break Err(error),
                }
                next = now.saturating_add(period);
            }
            let mut wait = next.saturating_sub(self.started.elapsed());
            if let Some(d) = duration {
                wait = wait.min(d.saturating_sub(self.started.elapsed()));
            }
            // Short sleeps, so that a stop request is seen within 50 ms.
            std::thread::sleep(wait.min(Duration::from_millis(50)));
        };
        tracing::info!("stopping: restoring memory.high");
        let restored = self.restore();
        for record in restored.iter().flatten() {
            emit(Output::Record(record));
        }
        outcome.and(restored.map(drop))
    }

    /// Stops sizing `rel`, which is gone (the selection is fixed, so a cgroup leaves it only
    /// by going away), and forgets its original: a cgroup created again under the same name
    /// is a new one, whose own `memory.high` is its original.
    fn leave(&mut self, rel: &str) {
        self.watched.remove(rel);
        if self.originals.remove(rel)
            && let Err(error) = self.originals.save()
        {
            tracing::warn!(%error, "could not update the state file");
        }
    }

    /// Logs a restore's outcome into `record` and forgets the original once it is settled.
    fn finish_restore(&mut self, rel: &str, record: &mut Record, result: Result<(), CgroupError>) {
        match result {
            Ok(()) => {
                tracing::info!(cgroup = %rel, action = ?record.action, "restored memory.high");
                self.originals.remove(rel);
            }
            Err(CgroupError::CgroupGone { .. }) => {
                tracing::info!(cgroup = %rel, "cgroup is gone: nothing to restore");
                self.originals.remove(rel);
            }
            Err(error) => {
                tracing::error!(cgroup = %rel, %error, "could not restore memory.high; kept in the state file");
                record.error = Some(error.to_string());
            }
        }
    }
}

/// A record with nothing read and nothing done.
fn empty_record(now: Duration, rel: &str, mode: Mode) -> Record {
    Record {
        time_s: now.as_secs_f64(),
        cgroup: rel.to_owned(),
        mode,
        current: None,
        high: None,
        some_total_us: None,
        some_delta_us: None,
        some_avg10: None,
        action: Action::None,
        cause: None,
        error: None,
    }
}

/// `None` for `max`.
fn limit_bytes(limit: Limit) -> Option<u64> {
    match limit {
        Limit::Bytes(b) => Some(b),
        Limit::Max => None,
    }
}

/// Writes `original` (`None`: `max`) back to `memory.high`.
fn restore_high(
    writer: &mut LimitWriter,
    cgroup: &Cgroup,
    original: Option<u64>,
    options: &Options,
) -> Result<(), CgroupError> {
    let limit = original.map_or(Limit::Max, Limit::Bytes);
    writer.write(cgroup, LimitFile::High, limit, options.write_timeout)
}
