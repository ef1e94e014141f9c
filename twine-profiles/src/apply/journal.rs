//! The journal: `var/lib/twine/profiles/state.json` under the host root.
//!
//! It holds the steps of every apply since the last rollback, in order. A step's original
//! value is recorded, and the journal saved, before the step writes; the step is marked done,
//! and the journal saved, after its write was read back. So at any crash point the journal
//! names every value twine may have changed, with what it was before: resume runs from the
//! first step not done (rewriting the step in flight, which is idempotent), and rollback
//! writes the recorded originals back in reverse order, which leaves each place with the
//! value it had before twine first touched it.

use std::fs;
use std::path::{Path, PathBuf};

use nix::errno::Errno;
use nix::fcntl::{Flock, FlockArg};
use serde::{Deserialize, Serialize};

use super::writes::Writes;
use super::{ApplyError, ApplyPolicy, ApplyReport, BootItem};
use crate::change::Setting;
use crate::host::{HostError, HostRoot};

/// The journal's path under a host root.
pub(crate) const JOURNAL: &str = "var/lib/twine/profiles/state.json";
const VERSION: u32 = 1;

/// How a live write is read back and compared.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub(crate) enum Check {
    /// Whitespace-normalised words (sysctls).
    Words,
    /// Trimmed text (sysfs, the governor).
    Trimmed,
    /// The bracketed word of a choice file (THP).
    Bracketed,
    /// A hugepage count, which the kernel may grant only in part.
    Count,
}

/// What a step writes. Paths are relative to the host root.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "kebab-case")]
pub(crate) enum Op {
    /// A single write to a kernel file.
    Live {
        path: PathBuf,
        value: String,
        check: Check,
    },
    /// A whole file replaced atomically (`None`: removed).
    File {
        path: PathBuf,
        content: Option<String>,
    },
    /// A `cgroup.subtree_control` set (sorted, space-separated).
    Controllers { path: PathBuf, want: String },
}

impl Op {
    pub(crate) fn path(&self) -> &Path {
        match self {
            Op::Live { path, .. } | Op::File { path, .. } | Op::Controllers { path, .. } => path,
        }
    }
}

/// An original value, once recorded (`value: None`: the file did not exist).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct Recorded {
    pub(crate) value: Option<String>,
}

/// One write of an apply.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct Step {
    /// The setting it serves (`None`: twine's own sysctl.d drop-in or the boot config).
    pub(crate) setting: Option<Setting>,
    pub(crate) op: Op,
    /// Recorded before the write; `None` while the step has not started.
    pub(crate) original: Option<Recorded>,
    pub(crate) done: bool,
}

/// The journal file's content.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct Journal {
    pub(crate) version: u32,
    pub(crate) policy: ApplyPolicy,
    pub(crate) steps: Vec<Step>,
    /// What the booted command line must show once every boot-config step took effect.
    pub(crate) boot: Vec<BootItem>,
    /// The report of the latest apply.
    pub(crate) report: ApplyReport,
    /// Set once the latest apply finished.
    pub(crate) finished: bool,
    /// Set when a rollback started: resuming is then refused, rolling back again is not.
    pub(crate) rolling_back: bool,
}

impl Journal {
    pub(crate) fn new(policy: ApplyPolicy) -> Self {
        Self {
            version: VERSION,
            policy,
            steps: Vec::new(),
            boot: Vec::new(),
            report: ApplyReport::default(),
            finished: false,
            rolling_back: false,
        }
    }

    /// The journal under `root`, `None` when there is none.
    pub(crate) fn load(root: &HostRoot) -> Result<Option<Self>, ApplyError> {
        let path = root.path(JOURNAL);
        let Some(text) = crate::host::read_opt(&path)? else {
            return Ok(None);
        };
        let journal: Journal = serde_json::from_str(&text).map_err(|e| ApplyError::Journal {
            path: path.clone(),
            problem: e.to_string(),
        })?;
        if journal.version != VERSION {
            return Err(ApplyError::Journal {
                path,
                problem: format!("version {} is not {VERSION}", journal.version),
            });
        }
        Ok(Some(journal))
    }

    /// The journal under `root` and its lock, held while the handle lives; `None`, without
    /// creating the lock's directory, when there is no journal.
    pub(crate) fn load_locked(
        root: &HostRoot,
    ) -> Result<Option<(Flock<fs::File>, Self)>, ApplyError> {
        let path = root.path(JOURNAL);
        match path.try_exists() {
            Ok(true) => {}
            Ok(false) => return Ok(None),
            Err(source) => return Err(HostError::Read { path, source }.into()),
        }
        // Read under the lock: another apply may have changed it since.
        let lock = Self::lock(root)?;
        Ok(Self::load(root)?.map(|journal| (lock, journal)))
    }

    /// [`ApplyError::Unfinished`] when an apply or a rollback did not finish.
    pub(crate) fn ensure_finished(&self, root: &HostRoot) -> Result<(), ApplyError> {
        if self.rolling_back || !self.finished {
            return Err(ApplyError::Unfinished {
                path: root.path(JOURNAL),
                what: if self.rolling_back {
                    "rollback"
                } else {
                    "apply"
                },
            });
        }
        Ok(())
    }

    /// Saves atomically, through `writes` (a journal write can fail like any other).
    pub(crate) fn save(&self, root: &HostRoot, writes: &mut dyn Writes) -> Result<(), ApplyError> {
        let path = root.path(JOURNAL);
        let text = serde_json::to_string_pretty(self).map_err(|e| ApplyError::Journal {
            path: path.clone(),
            problem: e.to_string(),
        })?;
        if let Some(dir) = path.parent() {
            fs::create_dir_all(dir).map_err(|e| ApplyError::write(&path, "(journal)", e))?;
        }
        writes
            .replace_file(&path, &text)
            .map_err(|e| ApplyError::write(&path, "(journal)", e))
    }

    /// Takes the journal's lock: an exclusive `flock` on its directory (a directory, so that
    /// no lock file outlives a rollback), released when the returned handle drops.
    pub(crate) fn lock(root: &HostRoot) -> Result<Flock<fs::File>, ApplyError> {
        let path = root.path(JOURNAL);
        let dir = path.parent().unwrap_or(&path).to_owned();
        fs::create_dir_all(&dir).map_err(|e| ApplyError::write(&dir, "(directory)", e))?;
        let handle = fs::File::open(&dir).map_err(|source| HostError::Read {
            path: dir.clone(),
            source,
        })?;
        Flock::lock(handle, FlockArg::LockExclusiveNonblock).map_err(|(_, errno)| match errno {
            Errno::EWOULDBLOCK => ApplyError::Busy { path: dir.clone() },
            e => ApplyError::write(&dir, "(lock)", e.into()),
        })
    }

    /// Removes the journal (after a rollback).
    pub(crate) fn clear(root: &HostRoot, writes: &mut dyn Writes) -> Result<(), ApplyError> {
        let path = root.path(JOURNAL);
        writes
            .remove_file(&path)
            .map_err(|e| ApplyError::write(&path, "(remove)", e))
    }
}
