//! The agent's state directory: its layout, the lock that keeps a second agent
//! out, and the persisted records a restarted agent reattaches from.
//!
//! ```text
//! STATE/lock                          flock(2), held by the running agent
//! STATE/jobs/JOB/record.json          the job's persisted record (atomic replace)
//! STATE/jobs/JOB/journal/             bind-mounted at /var/log/journal in every
//!                                     container of the job (one subdirectory
//!                                     per container machine id)
//! STATE/jobs/JOB/logs/                the host log store of the job
//! STATE/jobs/JOB/identity/            bind-mounted read-only at /run/twine/identity
//! STATE/jobs/JOB/containers/GEN/      one container generation: upper/, work/,
//!                                     merged/, the notify socket, console.log
//! ```

use std::path::{Path, PathBuf};

/// The root of an agent's state (`--state-dir`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StateDir {
    root: PathBuf,
}

impl StateDir {
    /// The state directory at `root` (nothing is created).
    pub fn new(root: impl Into<PathBuf>) -> StateDir {
        StateDir { root: root.into() }
    }

    /// The root directory.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// The lock file.
    pub fn lock_path(&self) -> PathBuf {
        self.root.join("lock")
    }

    /// Where the jobs live.
    pub fn jobs_dir(&self) -> PathBuf {
        self.root.join("jobs")
    }

    /// The directories of one job. `job` is a validated twine-spec job name, so
    /// it is one path component.
    pub fn job(&self, job: &str) -> JobDirs {
        JobDirs {
            root: self.jobs_dir().join(job),
        }
    }
}

/// The directories of one job inside a [`StateDir`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JobDirs {
    root: PathBuf,
}

impl JobDirs {
    /// `STATE/jobs/JOB`.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// The persisted record.
    pub fn record(&self) -> PathBuf {
        self.root.join("record.json")
    }

    /// The host side of the container's `/var/log/journal`.
    pub fn journal(&self) -> PathBuf {
        self.root.join("journal")
    }

    /// The host log store.
    pub fn logs(&self) -> PathBuf {
        self.root.join("logs")
    }

    /// The credentials directory, read-only at `/run/twine/identity` inside.
    pub fn identity(&self) -> PathBuf {
        self.root.join("identity")
    }

    /// The scratch directory of container generation `generation`.
    pub fn container(&self, generation: u64) -> PathBuf {
        self.root.join("containers").join(generation.to_string())
    }
}
