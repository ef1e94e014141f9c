//! [`ApplyError`]: why an apply, resume, rollback or verify failed.

use std::io;
use std::path::{Path, PathBuf};

use crate::change::Setting;
use crate::host::HostError;

/// Why an apply, resume, rollback or verify failed. Every variant names the path, and the
/// value for writes; the journal still records whatever was done.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ApplyError {
    /// Reading the host failed.
    #[error(transparent)]
    Host(#[from] HostError),
    /// The setting does not exist on this kernel and the policy is [`MissingKeys::Fail`](super::MissingKeys::Fail).
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
    pub(crate) fn write(path: &Path, value: &str, e: io::Error) -> Self {
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
