//! Carrying a [`Plan`] out through a [`HostRoot`], journalled so that it can be resumed or
//! rolled back, and verified by reading every write back.
//!
//! - [`apply`] checks the whole plan (values, keys this kernel lacks, the boot config's
//!   syntax) before the first write, then writes each change with its original value
//!   recorded first in the journal (`var/lib/twine/profiles/state.json` under the root).
//! - Sysctls are written live to `proc/sys` and persisted in twine's own
//!   `etc/sysctl.d/90-twine.conf`; kernel command-line changes go to the boot config
//!   (`etc/kernel/cmdline`, else `etc/default/grub`) and stay pending until
//!   [`verify`] sees them in the booted `proc/cmdline`.
//! - [`resume`] continues an interrupted apply; [`rollback`] restores exactly what the
//!   journal says twine changed, and clears it.
//! - No process is spawned: the report says when `systemctl daemon-reload` or a networkd
//!   reload is due, and the caller runs it.
//!
//! # The journal
//!
//! `var/lib/twine/profiles/state.json` (JSON, replaced atomically through [`Writes`], under
//! an exclusive `flock` on its directory) holds the steps of every apply since the last
//! rollback, in order; a step is one write (a kernel file, a whole etc file, a cgroup's
//! controllers). A step's original value is recorded, and the journal saved, before the step
//! writes; the step is marked done, and the journal saved, after its write was read back. So
//! at any crash point the journal names every place twine may have changed, with what it held
//! before: [`resume`] runs from the first step not done (rewriting the one in flight, which is
//! idempotent), and [`rollback`] writes the recorded originals back newest first, which leaves
//! each place as it was before twine first touched it; places twine never wrote are never
//! written. An apply on top of a finished one appends its steps, so a rollback still returns
//! to the values from before the first. Directories created for new files stay, empty, after
//! a rollback.

mod build;
mod journal;
mod writes;

use std::fs;
use std::io;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::change::{Plan, Setting};
use crate::host::{self, BootConfig, HostError, HostRoot};
use journal::{Check, JOURNAL, Journal, Op, Recorded};
pub use writes::{KernelWrites, Writes};

/// What to do with a setting this kernel does not have.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum MissingKeys {
    /// Refuse the whole plan before anything is written.
    #[default]
    Fail,
    /// Leave the setting out, and report it in [`ApplyReport::skipped`].
    Skip,
}

/// How an apply treats what it cannot do live.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct ApplyPolicy {
    /// Settings this kernel lacks.
    pub missing: MissingKeys,
    /// Whether a 2 MiB hugepage count the kernel grants only in part may move to the boot
    /// command line (the report then says `reboot_required`); else it is an error.
    pub allow_reboot: bool,
}

impl ApplyPolicy {
    /// A policy.
    pub fn new(missing: MissingKeys, allow_reboot: bool) -> Self {
        Self {
            missing,
            allow_reboot,
        }
    }
}

/// A hugepage count the kernel granted only in part (fragmented memory).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct Partial {
    /// The hugepage setting.
    pub setting: Setting,
    /// The file written, under the root.
    pub path: PathBuf,
    /// The count asked for.
    pub wanted: u64,
    /// The count the kernel gave.
    pub got: u64,
}

/// A boot-time setting and the value the booted command line must show (`None`: absent).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct BootItem {
    /// The command-line argument, 1 GiB count, or escalated 2 MiB count.
    pub setting: Setting,
    /// The value wanted.
    pub value: Option<String>,
}

/// What an apply (or resume) did.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct ApplyReport {
    /// Settings skipped because this kernel lacks them ([`MissingKeys::Skip`]).
    pub skipped: Vec<Setting>,
    /// Hugepage counts granted only in part, moved to the boot command line.
    pub partial: Vec<Partial>,
    /// Boot-time settings written to the boot config that the booted kernel lacks yet.
    pub pending_boot: Vec<BootItem>,
    /// Whether a reboot is needed for the plan to take full effect.
    pub reboot_required: bool,
    /// Whether systemd drop-ins changed: the caller runs `systemctl daemon-reload`.
    pub daemon_reload: bool,
    /// Whether networkd files changed: the caller runs `networkctl reload`.
    pub networkd_reload: bool,
}

/// What a rollback did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct RollbackReport {
    /// How many recorded writes were restored.
    pub restored: usize,
    /// Whether the booted command line has twine's arguments, which leave at the next boot.
    pub reboot_required: bool,
    /// Whether systemd drop-ins were restored: the caller runs `systemctl daemon-reload`.
    pub daemon_reload: bool,
    /// Whether networkd files were restored: the caller runs `networkctl reload`.
    pub networkd_reload: bool,
}

/// What [`verify`] found: boot-time settings pending (in the boot config, not yet in the
/// booted command line) or done, and writes that drifted.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct VerifyReport {
    /// Written, awaiting a reboot.
    pub pending: Vec<BootItem>,
    /// In effect.
    pub done: Vec<BootItem>,
    /// Places twine wrote that no longer hold what it wrote (a reboot resets live sysfs
    /// writes; someone else may have written them). Planning again re-applies them.
    pub drifted: Vec<Drift>,
}

/// A place that no longer holds what twine wrote there.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct Drift {
    /// The setting (`None`: twine's sysctl.d drop-in or the boot config).
    pub setting: Option<Setting>,
    /// The file, under the root.
    pub path: PathBuf,
    /// What twine wrote (`None`: it removed the file).
    pub wanted: Option<String>,
    /// What it holds now (`None`: absent).
    pub found: Option<String>,
}

/// Why an apply, resume, rollback or verify failed. Every variant names the path, and the
/// value for writes; the journal still records whatever was done.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ApplyError {
    /// Reading the host failed.
    #[error(transparent)]
    Host(#[from] HostError),
    /// The setting does not exist on this kernel and the policy is [`MissingKeys::Fail`].
    #[error("{} {setting}: {path} does not exist on this host", setting.kind())]
    Missing {
        /// The setting.
        setting: Setting,
        /// The file it would be.
        path: PathBuf,
    },
    /// A change without a value for a setting that cannot be removed.
    #[error("{} {setting}: no value to write", setting.kind())]
    NoValue {
        /// The setting.
        setting: Setting,
    },
    /// A value twine refuses to write.
    #[error("{} {setting}: value {value:?} {problem}", setting.kind())]
    BadValue {
        /// The setting.
        setting: Setting,
        /// The value.
        value: String,
        /// Why.
        problem: &'static str,
    },
    /// A file twine edits holds something it cannot edit safely.
    #[error("{path}: {value:?} {problem}")]
    BadFile {
        /// The file.
        path: PathBuf,
        /// The offending part.
        value: String,
        /// Why.
        problem: &'static str,
    },
    /// The path is a symlink, or leads out of a directory root: twine does not write it.
    #[error("writing {path}: {problem}")]
    Unsafe {
        /// The path.
        path: PathBuf,
        /// Why.
        problem: &'static str,
    },
    /// The filesystem is read-only.
    #[error("writing {value} to {path}: read-only file system")]
    ReadOnly {
        /// The file.
        path: PathBuf,
        /// The value.
        value: String,
    },
    /// Permission denied.
    #[error("writing {value} to {path}: permission denied")]
    Permission {
        /// The file.
        path: PathBuf,
        /// The value.
        value: String,
    },
    /// Another write failure.
    #[error("writing {value} to {path}: {source}")]
    Write {
        /// The file.
        path: PathBuf,
        /// The value.
        value: String,
        /// The cause.
        source: io::Error,
    },
    /// A write read back as something else.
    #[error("{path}: wrote {wanted:?} but read back {read:?}")]
    Mismatch {
        /// The file.
        path: PathBuf,
        /// The value written.
        wanted: String,
        /// The value read back (`None`: the file is gone).
        read: Option<String>,
    },
    /// The kernel granted fewer hugepages than asked and the policy allows no reboot.
    #[error("{path}: asked for {wanted} hugepages, the kernel gave {got}")]
    PartialHugepages {
        /// The file.
        path: PathBuf,
        /// The count asked for.
        wanted: u64,
        /// The count given.
        got: u64,
    },
    /// The journal cannot be read or written.
    #[error("journal {path}: {problem}")]
    Journal {
        /// The journal file.
        path: PathBuf,
        /// Why.
        problem: String,
    },
    /// An earlier apply or rollback did not finish: resume or roll back first.
    #[error("journal {path}: an earlier {what} did not finish; resume or roll back first")]
    Unfinished {
        /// The journal file.
        path: PathBuf,
        /// `apply` or `rollback`.
        what: &'static str,
    },
    /// Another apply, resume or rollback holds the journal's lock.
    #[error("journal {path}: another twine apply or rollback is running")]
    Busy {
        /// The locked directory.
        path: PathBuf,
    },
    /// There is nothing to resume.
    #[error("journal {path}: no apply to resume")]
    NothingToResume {
        /// The journal file.
        path: PathBuf,
    },
}

impl ApplyError {
    fn write(path: &Path, value: &str, e: io::Error) -> Self {
        let (path, value) = (path.to_owned(), value.to_owned());
        if e.raw_os_error() == Some(libc::EROFS) {
            ApplyError::ReadOnly { path, value }
        } else if e.kind() == io::ErrorKind::PermissionDenied {
            ApplyError::Permission { path, value }
        } else {
            ApplyError::Write {
                path,
                value,
                source: e,
            }
        }
    }
}

/// Applies a plan on a host with [`KernelWrites`]; see [`apply_with`].
pub fn apply(root: &HostRoot, plan: &Plan, policy: ApplyPolicy) -> Result<ApplyReport, ApplyError> {
    apply_with(root, plan, policy, &mut KernelWrites)
}

/// Applies a plan, every write through `writes`. Everything that can be checked is checked
/// before the first write; each write is recorded in the journal before it happens and read
/// back after. On an error the journal says what was done: [`resume`] or [`rollback`].
pub fn apply_with(
    root: &HostRoot,
    plan: &Plan,
    policy: ApplyPolicy,
    writes: &mut dyn Writes,
) -> Result<ApplyReport, ApplyError> {
    let _lock = Journal::lock(root)?;
    let mut journal = match Journal::load(root)? {
        Some(j) if j.rolling_back || !j.finished => {
            return Err(ApplyError::Unfinished {
                path: root.path(JOURNAL),
                what: if j.rolling_back { "rollback" } else { "apply" },
            });
        }
        Some(j) => j,
        None => Journal::new(policy),
    };
    let built = build::build(root, plan, policy)?;
    journal.policy = policy;
    journal.report = ApplyReport {
        skipped: built.skipped,
        ..ApplyReport::default()
    };
    if built.steps.is_empty() {
        return Ok(journal.report);
    }
    journal.boot.extend(built.boot);
    journal.steps.extend(built.steps);
    journal.finished = false;
    journal.save(root, writes)?;
    run(root, &mut journal, writes)
}

/// Resumes an interrupted apply with [`KernelWrites`]; see [`resume_with`].
pub fn resume(root: &HostRoot) -> Result<ApplyReport, ApplyError> {
    resume_with(root, &mut KernelWrites)
}

/// Continues an interrupted apply from its first unfinished step, rewriting the step that
/// was in flight (writes are idempotent). A finished apply returns its report again.
pub fn resume_with(root: &HostRoot, writes: &mut dyn Writes) -> Result<ApplyReport, ApplyError> {
    let path = root.path(JOURNAL);
    let _lock = Journal::lock(root)?;
    let mut journal =
        Journal::load(root)?.ok_or(ApplyError::NothingToResume { path: path.clone() })?;
    if journal.rolling_back {
        return Err(ApplyError::Unfinished {
            path,
            what: "rollback",
        });
    }
    if journal.finished {
        return Ok(journal.report);
    }
    run(root, &mut journal, writes)
}

/// Rolls back with [`KernelWrites`]; see [`rollback_with`].
pub fn rollback(root: &HostRoot) -> Result<RollbackReport, ApplyError> {
    rollback_with(root, &mut KernelWrites)
}

/// Writes back every recorded original, newest first, then clears the journal: each place
/// twine touched gets the value it had before twine first changed it; nothing else is
/// written. Without a journal, nothing is done. An interrupted rollback can be run again.
pub fn rollback_with(
    root: &HostRoot,
    writes: &mut dyn Writes,
) -> Result<RollbackReport, ApplyError> {
    if Journal::load(root)?.is_none() {
        return Ok(RollbackReport::default());
    }
    let _lock = Journal::lock(root)?;
    let Some(mut journal) = Journal::load(root)? else {
        return Ok(RollbackReport::default());
    };
    let mut report = RollbackReport {
        reboot_required: !boot_status(root, &journal)?.done.is_empty(),
        ..RollbackReport::default()
    };
    if !journal.rolling_back {
        journal.rolling_back = true;
        journal.save(root, writes)?;
    }
    for step in journal.steps.iter().rev() {
        let Some(Recorded { value }) = &step.original else {
            continue;
        };
        let op = match (&step.op, value) {
            (Op::Live { path, check, .. }, Some(v)) => Op::Live {
                path: path.clone(),
                value: v.clone(),
                check: *check,
            },
            (Op::File { path, .. }, v) => Op::File {
                path: path.clone(),
                content: v.clone(),
            },
            (Op::Controllers { path, .. }, Some(v)) => Op::Controllers {
                path: path.clone(),
                want: v.clone(),
            },
            // The file did not exist: there was nothing to change, nothing to restore.
            (_, None) => continue,
        };
        if let Outcome::Partial { wanted, got } = perform(root, writes, &op)? {
            return Err(ApplyError::PartialHugepages {
                path: root.path(op.path()),
                wanted,
                got,
            });
        }
        report.restored += 1;
        match step.setting {
            Some(Setting::DropIn { .. }) => report.daemon_reload = true,
            Some(Setting::Networkd { .. }) => report.networkd_reload = true,
            _ => {}
        }
    }
    Journal::clear(root, writes)?;
    Ok(report)
}

/// Which boot-time settings of the journal the booted `proc/cmdline` shows (done) and which
/// it does not yet (pending), and which finished writes no longer read back (drifted: after
/// a reboot, the live-only ones). Without a journal, all are empty.
pub fn verify(root: &HostRoot) -> Result<VerifyReport, ApplyError> {
    let Some(journal) = Journal::load(root)? else {
        return Ok(VerifyReport::default());
    };
    let mut status = boot_status(root, &journal)?;
    // The latest finished write to each place is what it should hold.
    let mut latest: Vec<&journal::Step> = Vec::new();
    for step in journal.steps.iter().rev().filter(|s| s.done) {
        if !latest.iter().any(|l| l.op.path() == step.op.path()) {
            latest.push(step);
        }
    }
    for step in latest.into_iter().rev() {
        let path = root.path(step.op.path());
        let raw = host::read_opt(&path)?;
        let (wanted, found) = match &step.op {
            Op::Live { value, check, .. } => {
                let partial = journal.report.partial.iter().any(|p| p.path == path);
                if *check == Check::Count && partial {
                    continue;
                }
                let found = raw.map(|r| read_as(&path, &r, *check)).transpose()?;
                (Some(normalised(value, *check)), found)
            }
            Op::File { content, .. } => (content.clone(), raw),
            Op::Controllers { want, .. } => {
                (Some(want.clone()), raw.map(|r| host::sorted_words(&r)))
            }
        };
        if wanted != found {
            status.drifted.push(Drift {
                setting: step.setting.clone(),
                path,
                wanted,
                found,
            });
        }
    }
    Ok(status)
}

/// A written value as it reads back when the write took.
fn normalised(value: &str, check: Check) -> String {
    match check {
        Check::Words => host::normalise_words(value),
        _ => value.trim().to_owned(),
    }
}

fn boot_status(root: &HostRoot, journal: &Journal) -> Result<VerifyReport, ApplyError> {
    let booted = BootConfig::kernel_cmdline("proc/cmdline", &root.booted_cmdline()?);
    // The latest value per setting is the one that counts.
    let mut latest: Vec<&BootItem> = Vec::new();
    for item in journal.boot.iter().rev() {
        if !latest.iter().any(|i| i.setting == item.setting) {
            latest.push(item);
        }
    }
    let mut status = VerifyReport::default();
    for item in latest.into_iter().rev() {
        if build::boot_value(&booted, &item.setting) == item.value {
            status.done.push(item.clone());
        } else {
            status.pending.push(item.clone());
        }
    }
    Ok(status)
}

fn run(
    root: &HostRoot,
    journal: &mut Journal,
    writes: &mut dyn Writes,
) -> Result<ApplyReport, ApplyError> {
    let mut i = 0;
    while i < journal.steps.len() {
        if journal.steps[i].done {
            i += 1;
            continue;
        }
        let op = journal.steps[i].op.clone();
        if journal.steps[i].original.is_none() {
            journal.steps[i].original = Some(record(root, &op)?);
            journal.save(root, writes)?;
        }
        if let Outcome::Partial { wanted, got } = perform(root, writes, &op)? {
            let path = root.path(op.path());
            if !journal.policy.allow_reboot {
                return Err(ApplyError::PartialHugepages { path, wanted, got });
            }
            escalate(root, journal, i, wanted)?;
            let setting = journal.steps[i].setting.clone();
            journal
                .report
                .partial
                .extend(setting.map(|setting| Partial {
                    setting,
                    path,
                    wanted,
                    got,
                }));
        }
        match journal.steps[i].setting {
            Some(Setting::DropIn { .. }) => journal.report.daemon_reload = true,
            Some(Setting::Networkd { .. }) => journal.report.networkd_reload = true,
            _ => {}
        }
        journal.steps[i].done = true;
        journal.save(root, writes)?;
        i += 1;
    }
    let status = boot_status(root, journal)?;
    journal.report.reboot_required = !status.pending.is_empty();
    journal.report.pending_boot = status.pending;
    journal.finished = true;
    journal.save(root, writes)?;
    Ok(journal.report.clone())
}

/// Moves a partly granted 2 MiB count to the boot command line: into the boot-config step
/// still to come, or a new one at the end.
fn escalate(
    root: &HostRoot,
    journal: &mut Journal,
    i: usize,
    wanted: u64,
) -> Result<(), ApplyError> {
    let Some(setting) = journal.steps[i].setting.clone() else {
        return Ok(());
    };
    let boot_path = PathBuf::from(root.boot_config()?.path());
    let later = journal.steps[i + 1..]
        .iter()
        .position(|s| !s.done && s.setting.is_none() && s.op.path() == boot_path);
    let mut cfg = match later.map(|j| &journal.steps[i + 1 + j].op) {
        Some(Op::File {
            content: Some(text),
            ..
        }) => {
            BootConfig::parse(&boot_path, text).map_err(|(value, problem)| ApplyError::BadFile {
                path: root.path(&boot_path),
                value,
                problem,
            })?
        }
        _ => root.boot_config()?,
    };
    let count = match &setting {
        Setting::Hugepages2M { node: Some(n) } => {
            // The per-node form `hugepages=0:N,1:M`, merged with the nodes already there.
            let mut nodes: Vec<String> = build::boot_value(&cfg, &setting)
                .filter(|v| v.contains(':'))
                .map(|v| {
                    v.split(',')
                        .filter(|e| !e.starts_with(&format!("{n}:")))
                        .map(str::to_owned)
                        .collect()
                })
                .unwrap_or_default();
            nodes.push(format!("{n}:{wanted}"));
            nodes.sort();
            nodes.join(",")
        }
        _ => wanted.to_string(),
    };
    build::set_boot_value(&mut cfg, &setting, Some(&count));
    let new = build::boot_step(&cfg)?;
    match later {
        Some(j) => journal.steps[i + 1 + j] = new,
        None => journal.steps.push(new),
    }
    journal.boot.push(BootItem {
        setting,
        value: Some(count),
    });
    Ok(())
}

enum Outcome {
    Done,
    Partial { wanted: u64, got: u64 },
}

/// Reads what a step is about to change, as it will be restored: a kernel file's content as
/// it read (the kernel takes it back, trailing newline and tabs included, and a directory
/// root gets its bytes back exactly), except a choice file, whose selected word is what
/// can be written back.
fn record(root: &HostRoot, op: &Op) -> Result<Recorded, ApplyError> {
    let path = root.path(op.path());
    let raw = host::read_opt(&path)?;
    let value = match (op, raw) {
        (_, None) => None,
        (Op::File { .. }, Some(v)) => Some(v),
        (Op::Controllers { .. }, Some(v)) => Some(host::sorted_words(&v)),
        (
            Op::Live {
                check: Check::Bracketed,
                ..
            },
            Some(v),
        ) => Some(read_as(&path, &v, Check::Bracketed)?),
        (Op::Live { check, .. }, Some(v)) => {
            // Checked now, so that a file twine could not read back is refused before
            // the write, as before.
            read_as(&path, &v, *check)?;
            Some(v)
        }
    };
    Ok(Recorded { value })
}

fn read_as(path: &Path, v: &str, check: Check) -> Result<String, ApplyError> {
    Ok(match check {
        Check::Words => host::normalise_words(v),
        Check::Trimmed | Check::Count => v.trim().to_owned(),
        Check::Bracketed => host::bracketed(path, v)?,
    })
}

/// Writes one step and reads it back.
fn perform(root: &HostRoot, writes: &mut dyn Writes, op: &Op) -> Result<Outcome, ApplyError> {
    let path = confined(root, op)?;
    match op {
        Op::Live { value, check, .. } => {
            writes
                .write_live(&path, value)
                .map_err(|e| ApplyError::write(&path, value, e))?;
            let read = host::read_opt(&path)?;
            let got = read
                .as_deref()
                .map(|r| read_as(&path, r, *check))
                .transpose()?;
            let wanted = normalised(value, *check);
            if got.as_deref() == Some(wanted.as_str()) {
                return Ok(Outcome::Done);
            }
            if *check == Check::Count
                && let (Ok(w), Some(Ok(g))) = (wanted.parse(), got.as_deref().map(str::parse))
            {
                return Ok(Outcome::Partial { wanted: w, got: g });
            }
            Err(ApplyError::Mismatch {
                path,
                wanted,
                read: got,
            })
        }
        Op::File { content, .. } => {
            match content {
                Some(c) => writes.replace_file(&path, c),
                None => writes.remove_file(&path),
            }
            .map_err(|e| ApplyError::write(&path, content.as_deref().unwrap_or("(remove)"), e))?;
            let read = host::read_opt(&path)?;
            if read != *content {
                return Err(ApplyError::Mismatch {
                    path,
                    wanted: content.clone().unwrap_or_else(|| "(absent)".to_owned()),
                    read,
                });
            }
            Ok(Outcome::Done)
        }
        Op::Controllers { want, .. } => {
            let current = host::read_opt(&path)?
                .map(|v| host::sorted_words(&v))
                .unwrap_or_default();
            let have: Vec<&str> = current.split_whitespace().collect();
            let wanted: Vec<&str> = want.split_whitespace().collect();
            let enable: Vec<&str> = wanted
                .iter()
                .copied()
                .filter(|c| !have.contains(c))
                .collect();
            let disable: Vec<&str> = have
                .iter()
                .copied()
                .filter(|c| !wanted.contains(c))
                .collect();
            if !enable.is_empty() || !disable.is_empty() {
                writes
                    .write_controllers(&path, &enable, &disable)
                    .map_err(|e| ApplyError::write(&path, want, e))?;
            }
            let read = host::read_opt(&path)?.map(|v| host::sorted_words(&v));
            if read.as_deref() != Some(want.as_str()) {
                return Err(ApplyError::Mismatch {
                    path,
                    wanted: want.clone(),
                    read,
                });
            }
            Ok(Outcome::Done)
        }
    }
}

/// The step's path under the root, refused when it is a symlink or (for a directory root)
/// when its directory resolves outside the root. Directories for new files are created.
fn confined(root: &HostRoot, op: &Op) -> Result<PathBuf, ApplyError> {
    let path = root.path(op.path());
    let unsafe_path = |problem| ApplyError::Unsafe {
        path: path.clone(),
        problem,
    };
    if let Op::File { .. } = op
        && let Some(dir) = path.parent()
    {
        fs::create_dir_all(dir).map_err(|e| ApplyError::write(dir, "(directory)", e))?;
    }
    if fs::symlink_metadata(&path).is_ok_and(|m| m.file_type().is_symlink()) {
        return Err(unsafe_path("is a symlink"));
    }
    if !root.is_real() {
        let base = fs::canonicalize(root.dir()).map_err(|source| HostError::Read {
            path: root.dir().to_owned(),
            source,
        })?;
        if let Some(dir) = path.parent() {
            let real = fs::canonicalize(dir).map_err(|source| HostError::Read {
                path: dir.to_owned(),
                source,
            })?;
            if !real.starts_with(&base) {
                return Err(unsafe_path("leads out of the host root through a symlink"));
            }
        }
    }
    Ok(path)
}
