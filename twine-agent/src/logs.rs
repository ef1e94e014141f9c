//! Logs that lose nothing: the host log store of a job and the journal shipper
//! that fills it.
//!
//! Every container of a job sees the host directory `STATE/jobs/JOB/journal/`
//! at `/var/log/journal`, and [`journald_dropin`] turns journald's rate
//! limiting off, so journald itself writes every line to files on the host
//! (one subdirectory per container machine id, that is one per container
//! generation). The sidecar is then only a shipper:
//!
//! * [`JournalShipper`] reads those files with the host's `journalctl` and
//!   appends the entries of the job's units to the store in batches;
//! * [`LogStore`] keeps them in append-only segment files under a byte budget,
//!   and keeps the journal cursors *in the same records*, so a line and the
//!   resume point that covers it are one durable write: a restarted agent
//!   (even after SIGKILL) resumes exactly after the last stored line.
//!
//! ```no_run
//! # async fn demo() -> Result<(), twine_agent::logs::LogError> {
//! use twine_agent::logs::{JournalShipper, LogStore, StoreBudget};
//! use twine_agent::state::StateDir;
//!
//! let job = StateDir::new("/var/lib/twine").job("web");
//! let store = LogStore::open(&job.logs(), StoreBudget::default())?;
//! let mut shipper = JournalShipper::new(job.journal(), vec!["web.service".into()], store);
//! let shipped = shipper.drain().await?;
//! for line in LogStore::read(&job.logs(), 1)? {
//!     let line = line?;
//!     eprintln!("{} {} {}", line.seq, line.unit, line.message);
//! }
//! # let _ = shipped; Ok(()) }
//! ```

mod shipper;
mod store;

use std::path::PathBuf;

pub use shipper::JournalShipper;
pub use store::{LogLine, LogReader, LogStore, NewLine, StoreBudget, StoreStats};

/// What can go wrong in the log store or the shipper. Every variant names the
/// path (or the program) it is about.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum LogError {
    /// An I/O error other than a full disk.
    #[error("{op} {}: {source}", path.display())]
    Io {
        /// What was being done ("writing", "opening", ...).
        op: &'static str,
        /// The file or directory.
        path: PathBuf,
        /// The underlying error.
        source: std::io::Error,
    },
    /// The file system of the store is full (ENOSPC or EDQUOT). The partial
    /// record was truncated away and the resume cursor did not advance.
    #[error("the file system holding {} is full; the log store kept its last complete record", path.display())]
    DiskFull {
        /// The file that could not be written.
        path: PathBuf,
    },
    /// A segment that is not the last one (or a segment header) does not parse.
    #[error("{} is corrupt at byte {offset}: {reason}", path.display())]
    Corrupt {
        /// The segment file.
        path: PathBuf,
        /// Byte offset of the bad record.
        offset: u64,
        /// What is wrong with it.
        reason: String,
    },
    /// Store sequence numbers are not consecutive: an internal error (a
    /// segment removed by hand, or a bug).
    #[error("{}: expected store sequence number {expected}, found {found}", path.display())]
    SequenceGap {
        /// The segment file.
        path: PathBuf,
        /// The number that should have come next.
        expected: u64,
        /// The number found.
        found: u64,
    },
    /// The next sequence number would not fit in a `u64`.
    #[error("{}: store sequence numbers exhausted after {last}", path.display())]
    SequenceExhausted {
        /// The store directory.
        path: PathBuf,
        /// The last number assigned.
        last: u64,
    },
    /// A [`StoreBudget`] that cannot work.
    #[error(
        "invalid log store budget: max_bytes {max_bytes} and segment_bytes {segment_bytes} must be > 0 with segment_bytes <= max_bytes"
    )]
    InvalidBudget {
        /// The total budget asked for.
        max_bytes: u64,
        /// The segment size asked for.
        segment_bytes: u64,
    },
    /// `journalctl` could not be started.
    #[error("starting {program} for {}: {source}", dir.display())]
    Spawn {
        /// The program.
        program: PathBuf,
        /// The journal directory it was to read.
        dir: PathBuf,
        /// The underlying error.
        source: std::io::Error,
    },
    /// `journalctl` failed.
    #[error("{program} --directory={} failed with {status}: {stderr}", dir.display())]
    Journalctl {
        /// The program.
        program: PathBuf,
        /// The journal directory it read.
        dir: PathBuf,
        /// Its exit status.
        status: String,
        /// Its standard error, trimmed.
        stderr: String,
    },
    /// `journalctl` printed an entry that is not what `-o json` promises.
    #[error("unexpected journal entry from {}: {reason}: {line}", dir.display())]
    JournalEntry {
        /// The journal directory.
        dir: PathBuf,
        /// What is wrong.
        reason: String,
        /// The line (cut to 200 bytes).
        line: String,
    },
}

impl LogError {
    /// Maps an I/O error on `path`; ENOSPC and EDQUOT become [`LogError::DiskFull`].
    pub(crate) fn io(op: &'static str, path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        let path = path.into();
        match source.raw_os_error() {
            Some(code) if code == libc_enospc() || code == libc_edquot() => {
                LogError::DiskFull { path }
            }
            _ => LogError::Io { op, path, source },
        }
    }
}

fn libc_enospc() -> i32 {
    nix::errno::Errno::ENOSPC as i32
}

fn libc_edquot() -> i32 {
    nix::errno::Errno::EDQUOT as i32
}

/// The journald drop-in the agent writes into every container: its path
/// relative to the container root, and its contents.
pub fn journald_dropin() -> (&'static str, &'static str) {
    (
        "etc/systemd/journald.conf.d/twine.conf",
        "\
# Written by the twine agent: journald must not drop or delete what the host
# has not shipped yet.
[Journal]
# Rate limiting drops lines beyond the burst by design (10000 per 30 s per
# service by default); 0 turns it off, so a burst blocks the writer instead.
RateLimitIntervalSec=0
RateLimitBurst=0
# Write to /var/log/journal (the host bind mount) and never to /run only, even
# before /var/log/journal would otherwise be detected.
Storage=persistent
# Vacuuming by size deletes archived files whether shipped or not: keep the
# cap far above what the shipper lags behind (the host store has its own
# budget, and the agent removes shipped journal files).
SystemMaxUse=4G
# Keep journald writing until the disk is really full rather than rotating
# away unshipped files to keep 15% free.
SystemKeepFree=0
# No time-based deletion of unshipped entries.
MaxRetentionSec=0
# Every copy costs journald time at 100k lines/s: the host ships the files,
# nothing reads the container's syslog, console or wall.
ForwardToSyslog=no
ForwardToKMsg=no
ForwardToConsole=no
ForwardToWall=no
",
    )
}
