//! The daemon: the I/O shell that drives the [`senpai`](crate::senpai) controller and the
//! [`kill`](crate::kill) policy over many cgroups.
//!
//! A [`Daemon`] is built from [`Options`] (which cgroups, which mode, where the cgroup root,
//! `/proc` and the state file are). Each [`Daemon::tick`] re-resolves the selection (new
//! cgroups join, vanished ones leave, both with a log line), reads one
//! [`MemorySnapshot`](crate::MemorySnapshot) per cgroup through a kept
//! [`SnapshotReader`](crate::SnapshotReader), steps each controller, carries out its action
//! and runs the kill policy once. [`Daemon::restore`] puts back every `memory.high` the daemon
//! changed; [`Daemon::run`] is the loop around both, stopped by a flag or a duration.
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
//! daemon reads the file, and a cgroup listed there keeps the listed original. A clean stop
//! restores every cgroup (also those listed but not selected this run, if they exist) and
//! removes the file. An external edit of `memory.high` while the daemon runs becomes the new
//! original, as in [`SenpaiState::restore`].
//!
//! `--dry-run` concerns kills only (as in oomd): the resizer still writes.

mod execute;
mod state_file;

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use serde::Serialize;

use crate::cgroup::{Cgroup, CgroupError, CgroupRoot};
use crate::config::{Config, ConfigError};
use crate::kill::{CgroupSample, KillPolicy, Tick, Verdict};
use crate::memory::{Limit, LimitFile, LimitWriter, MemorySnapshot, SnapshotReader};
use crate::psi::Resource;
use crate::senpai::{
    Action, Cause, MemoryStat, Mode, Observation, SenpaiConfig, SenpaiState, step,
};

pub use execute::KillRecord;
use state_file::Originals;

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
}

/// `MemTotal`, `SwapTotal` and `SwapFree`, bytes.
#[derive(Debug, Clone, Copy, Default)]
struct Meminfo {
    mem_total: u64,
    swap_total: u64,
    swap_free: u64,
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
            Selection::Config(config) if config.kill_policy().watched().next().is_some() => {
                Some(config.kill_policy())
            }
            _ => None,
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
        self.resolve(now, &mut records);
        let mut gone = Vec::new();
        let at = TickContext {
            now,
            meminfo: &meminfo,
            page_size: self.page_size,
        };
        for (rel, watched) in &mut self.watched {
            let record = tick_one(
                rel,
                watched,
                &at,
                &self.options,
                &mut self.originals,
                &mut self.writer,
            );
            if matches!(record, Err(CgroupError::CgroupGone { .. })) {
                gone.push(rel.clone());
            }
            records.push(record.unwrap_or_else(|error| {
                let mut r = empty_record(now, rel, watched.senpai.mode);
                r.error = Some(error.to_string());
                r
            }));
        }
        for rel in gone {
            tracing::info!(cgroup = %rel, "cgroup is gone: dropped");
            self.leave(&rel);
        }
        let kill = self.kill(now, &meminfo);
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
        for (rel, watched) in std::mem::take(&mut self.watched) {
            if watched.senpai.mode != Mode::High {
                continue;
            }
            let mut record = empty_record(now, &rel, Mode::High);
            let high_now = watched.cgroup.limit(LimitFile::High);
            let result = high_now.and_then(|high_now| {
                record.high = Some(high_now);
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
    /// handing each record to `emit`, then [restores](Daemon::restore) (records included).
    /// A failed tick also restores before it is returned.
    pub fn run(
        &mut self,
        stop: &AtomicBool,
        duration: Option<Duration>,
        mut emit: impl FnMut(&Record),
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
                    Ok(report) => report.records.iter().for_each(&mut emit),
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
            emit(record);
        }
        outcome.and(restored.map(drop))
    }

    /// Brings the sized set in line with the selection.
    fn resolve(&mut self, now: Duration, records: &mut Vec<Record>) {
        let wanted = match self.wanted() {
            Ok(wanted) => wanted,
            Err(error) => {
                tracing::warn!(%error, "could not list the selected cgroups; keeping the last set");
                return;
            }
        };
        let left: Vec<String> = self
            .watched
            .keys()
            .filter(|rel| !wanted.contains_key(*rel))
            .cloned()
            .collect();
        for rel in left {
            tracing::info!(cgroup = %rel, "cgroup left the selection (gone or no longer matched)");
            self.leave(&rel);
        }
        self.failed.retain(|rel| wanted.contains_key(rel));
        for (rel, (cgroup, mut senpai, mode_given)) in wanted {
            if self.watched.contains_key(&rel) {
                continue;
            }
            if !mode_given {
                senpai.mode = if cgroup.path().join("memory.reclaim").exists() {
                    Mode::Reclaim
                } else {
                    Mode::High
                };
            }
            match SnapshotReader::new(&cgroup) {
                Ok(reader) => {
                    tracing::info!(cgroup = %rel, mode = ?senpai.mode, "cgroup joined");
                    self.failed.remove(&rel);
                    let swap_max_zero =
                        matches!(cgroup.limit(LimitFile::SwapMax), Ok(Limit::Bytes(0)));
                    let watched = Watched {
                        cgroup,
                        reader,
                        senpai,
                        state: SenpaiState::default(),
                        swap_max_zero,
                        last_total: None,
                    };
                    self.watched.insert(rel, watched);
                }
                Err(error) => {
                    if self.failed.insert(rel.clone()) {
                        tracing::warn!(cgroup = %rel, %error, "cannot watch cgroup; retrying each tick");
                    }
                    let mut record = empty_record(now, &rel, senpai.mode);
                    record.error = Some(error.to_string());
                    records.push(record);
                }
            }
        }
    }

    /// The selected cgroups now, with their parameters and whether the mode was given.
    fn wanted(&self) -> Result<BTreeMap<String, (Cgroup, SenpaiConfig, bool)>, CgroupError> {
        let mut wanted = BTreeMap::new();
        match &self.options.selection {
            Selection::Cgroups(paths) => {
                for rel in paths {
                    let cgroup = self.options.root.cgroup(rel)?;
                    if cgroup.path().is_dir() {
                        let mode_given = self.options.mode.is_some();
                        wanted.insert(
                            rel.clone(),
                            (cgroup, self.options.senpai.clone(), mode_given),
                        );
                    }
                }
            }
            Selection::Config(config) => {
                for cgroup in descendants(&self.options.root.top()) {
                    let Some(rel) = cgroup.relative().to_str().map(str::to_owned) else {
                        continue;
                    };
                    if let Some(resize) = config.resize_for(&rel) {
                        let entry = (cgroup, resize.senpai.clone(), resize.mode_given);
                        wanted.insert(rel, entry);
                    }
                }
            }
        }
        Ok(wanted)
    }

    /// Stops sizing `rel` without restoring (it is gone or no longer selected); a gone
    /// cgroup's original is forgotten.
    fn leave(&mut self, rel: &str) {
        self.watched.remove(rel);
        if let Ok(cgroup) = self.options.root.cgroup(rel)
            && !cgroup.path().is_dir()
            && self.originals.remove(rel)
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

    /// Runs the kill policy on a fresh sample of its watched cgroups and their descendants.
    fn kill(&mut self, now: Duration, meminfo: &Meminfo) -> Option<KillRecord> {
        let policy = self.policy.as_mut()?;
        let mut cgroups = Vec::new();
        let mut seen = BTreeSet::new();
        for watched in policy.watched() {
            let Ok(top) = self.options.root.cgroup(watched) else {
                continue;
            };
            for cgroup in std::iter::once(top.clone()).chain(descendants(&top)) {
                let Some(path) = cgroup.relative().to_str() else {
                    continue;
                };
                if seen.insert(path.to_owned())
                    && let Some(sample) = sample(&cgroup, path)
                {
                    cgroups.push(sample);
                }
            }
        }
        let tick = Tick {
            now,
            cgroups,
            swap_free: meminfo.swap_free,
            swap_total: meminfo.swap_total,
        };
        match policy.evaluate(&tick) {
            Verdict::Kill(kill) => Some(execute::carry_out(&self.options.root, &kill)),
            Verdict::NoVictim { rules } => {
                tracing::warn!(?rules, "kill rules fired but found no victim");
                None
            }
            _ => None,
        }
    }
}

/// Every cgroup below `top` (not `top` itself), parents first; a directory that vanishes
/// while listed is skipped.
fn descendants(top: &Cgroup) -> Vec<Cgroup> {
    let mut out = Vec::new();
    let mut stack = vec![top.clone()];
    while let Some(cgroup) = stack.pop() {
        match cgroup.children() {
            Ok(children) => {
                for child in children.into_iter().rev() {
                    out.push(child.clone());
                    stack.push(child);
                }
            }
            Err(error) => tracing::debug!(%error, "skipping a cgroup that could not be listed"),
        }
    }
    out
}

/// A kill-policy sample of `cgroup`; `None` (logged) if it cannot be read.
fn sample(cgroup: &Cgroup, path: &str) -> Option<CgroupSample> {
    let read = || -> Result<CgroupSample, CgroupError> {
        let current = cgroup.memory_current()?;
        let full = cgroup.pressure(Resource::Memory)?.full;
        let (a10, a60, a300) = full.map_or((0.0, 0.0, 0.0), |f| (f.avg10, f.avg60, f.avg300));
        Ok(CgroupSample {
            path: path.to_owned(),
            current,
            full_avg10: f64::from(a10),
            full_avg60: f64::from(a60),
            full_avg300: f64::from(a300),
        })
    };
    read()
        .inspect_err(|error| tracing::debug!(%error, "kill policy: cgroup not sampled"))
        .ok()
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

/// What the controller sees in a snapshot.
fn observe(snap: &MemorySnapshot, at: &TickContext<'_>, swap_max_zero: bool) -> Observation {
    let (meminfo, page_size) = (at.meminfo, at.page_size);
    let some = &snap.pressure.some;
    Observation {
        now: at.now,
        current: snap.current,
        high: limit_bytes(snap.high),
        max: limit_bytes(snap.max),
        min: limit_bytes(snap.min).unwrap_or(u64::MAX),
        mem_total: Some(meminfo.mem_total),
        some_total_us: some.total_us,
        some_avg10: f64::from(some.avg10),
        some_avg60: f64::from(some.avg60),
        stat: MemoryStat {
            active_file: snap.active_file,
            inactive_file: snap.inactive_file,
            active_anon: snap.active_anon,
            inactive_anon: snap.inactive_anon,
        },
        swap_free: meminfo.swap_free,
        swap_usable: meminfo.swap_total > 0 && !swap_max_zero,
        page_size,
    }
}

/// What every cgroup's tick shares.
struct TickContext<'a> {
    now: Duration,
    meminfo: &'a Meminfo,
    page_size: u64,
}

/// One cgroup's tick: read, step, act. `Err` only when nothing could be read.
fn tick_one(
    rel: &str,
    w: &mut Watched,
    at: &TickContext<'_>,
    options: &Options,
    originals: &mut Originals,
    writer: &mut LimitWriter,
) -> Result<Record, CgroupError> {
    let snap = w.reader.read()?;
    let now = at.now;
    let obs = observe(&snap, at, w.swap_max_zero);
    let mut record = empty_record(now, rel, w.senpai.mode);
    record.current = Some(snap.current);
    record.high = Some(snap.high);
    record.some_total_us = Some(obs.some_total_us);
    record.some_delta_us = w
        .last_total
        .map(|last| obs.some_total_us.saturating_sub(last));
    record.some_avg10 = Some(snap.pressure.some.avg10);
    w.last_total = Some(obs.some_total_us);
    let (next, decision) = step(&w.state, &obs, &w.senpai);
    let before = std::mem::replace(&mut w.state, next);
    let decision = match decision {
        Ok(decision) => decision,
        Err(error) => {
            tracing::warn!(cgroup = %rel, %error, "observation skipped");
            record.error = Some(error.to_string());
            return Ok(record);
        }
    };
    record.cause = Some(decision.cause);
    record.action = decision.action;
    let done = match decision.action {
        Action::SetHigh(bytes) => {
            let limit = Limit::Bytes(bytes);
            let written = persist_original(rel, &w.state, decision.cause, originals)
                .map_err(|e| (e, true))
                .and_then(|()| {
                    match writer.write(&w.cgroup, LimitFile::High, limit, options.write_timeout) {
                        Ok(()) => Ok(()),
                        // The write goes on and lands: the controller's view stands.
                        Err(e @ CgroupError::TimedOut { .. }) => Err((e.to_string(), false)),
                        Err(e) => Err((e.to_string(), true)),
                    }
                });
            written.map_err(|(error, undo)| {
                // A write that failed or never happened must not look like an external
                // edit next tick (that would make our own value the original).
                if undo {
                    w.state = before;
                }
                error
            })
        }
        Action::Reclaim(bytes) => reclaim(&w.cgroup, bytes, options.reclaim_retries),
        Action::None | Action::RestoreHigh(_) => Ok(()),
    };
    if let Err(error) = done {
        tracing::warn!(cgroup = %rel, action = ?decision.action, %error, "action failed");
        record.error = Some(error);
    } else if decision.action != Action::None {
        tracing::debug!(cgroup = %rel, action = ?decision.action, cause = ?decision.cause, "acted");
    }
    Ok(record)
}

/// Records the original `memory.high` in the state file before the first write: on
/// [`Cause::Init`] a predecessor's original wins; on [`Cause::ExternalEdit`] the edited
/// value is the new original.
fn persist_original(
    rel: &str,
    state: &SenpaiState,
    cause: Cause,
    originals: &mut Originals,
) -> Result<(), String> {
    let Some(original) = state.original() else {
        return Ok(());
    };
    let changed = match cause {
        Cause::ExternalEdit => originals.insert(rel, original),
        _ if originals.get(rel).is_none() => originals.insert(rel, original),
        _ => false,
    };
    if changed {
        originals
            .save()
            .map_err(|e| format!("{e}; memory.high left alone"))?;
    }
    Ok(())
}

/// Writes `memory.reclaim`, trying again up to `retries` times when the kernel reclaimed
/// less than asked (EAGAIN, EBUSY).
fn reclaim(cgroup: &Cgroup, bytes: u64, retries: u32) -> Result<(), String> {
    let mut attempt = 0;
    loop {
        match cgroup.reclaim(bytes) {
            Err(CgroupError::ReclaimShort { .. }) if attempt < retries => {
                attempt += 1;
                tracing::debug!(cgroup = %cgroup.path().display(), attempt, "memory.reclaim short; retrying");
            }
            other => return other.map_err(|e| e.to_string()),
        }
    }
}

/// The kernel's page size.
fn page_size() -> Result<u64, DaemonError> {
    use nix::unistd::{SysconfVar, sysconf};
    let what = "sysconf(_SC_PAGESIZE)";
    match sysconf(SysconfVar::PAGE_SIZE) {
        Ok(Some(n)) => u64::try_from(n).map_err(|_| DaemonError::System {
            what,
            source: nix::errno::Errno::EINVAL,
        }),
        Ok(None) => Err(DaemonError::System {
            what,
            source: nix::errno::Errno::EINVAL,
        }),
        Err(source) => Err(DaemonError::System { what, source }),
    }
}

/// Raises this process's `RLIMIT_NOFILE` soft limit to the hard limit (a sized cgroup
/// keeps seven files open) and returns the new soft limit.
pub fn raise_fd_limit() -> Result<u64, DaemonError> {
    use nix::sys::resource::{Resource, getrlimit, setrlimit};
    let (soft, hard) =
        getrlimit(Resource::RLIMIT_NOFILE).map_err(|source| DaemonError::System {
            what: "getrlimit(RLIMIT_NOFILE)",
            source,
        })?;
    if soft < hard {
        setrlimit(Resource::RLIMIT_NOFILE, hard, hard).map_err(|source| DaemonError::System {
            what: "setrlimit(RLIMIT_NOFILE)",
            source,
        })?;
    }
    Ok(hard)
}

/// `MemTotal`, `SwapTotal` and `SwapFree` of the `meminfo` file at `path`.
fn read_meminfo(path: &Path) -> Result<Meminfo, DaemonError> {
    let bad = |reason: String| DaemonError::Meminfo {
        path: path.to_owned(),
        reason,
    };
    let text = std::fs::read_to_string(path).map_err(|e| bad(e.to_string()))?;
    let mut found = [None; 3];
    for line in text.lines() {
        let Some((key, rest)) = line.split_once(':') else {
            continue;
        };
        let slot = match key {
            "MemTotal" => 0,
            "SwapTotal" => 1,
            "SwapFree" => 2,
            _ => continue,
        };
        let kib: u64 = rest
            .trim()
            .trim_end_matches("kB")
            .trim()
            .parse()
            .map_err(|_| bad(format!("cannot parse {line:?}: expected `KEY: N kB`")))?;
        found[slot] = Some(kib.saturating_mul(1024));
    }
    match found {
        [Some(mem_total), Some(swap_total), Some(swap_free)] => Ok(Meminfo {
            mem_total,
            swap_total,
            swap_free,
        }),
        _ => Err(bad("MemTotal, SwapTotal or SwapFree is missing".into())),
    }
}
