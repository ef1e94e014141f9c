//! The agent's state directory: its layout, the lock that keeps a second agent
//! out ([`AgentLock`]), and the persisted records a restarted agent reattaches
//! from ([`write_record`], [`read_record`]: JSON, replaced atomically).
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

use std::fs::{File, OpenOptions};
use std::io::{Read, Seek, SeekFrom, Write};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use nix::errno::Errno;
use nix::fcntl::{Flock, FlockArg};
use serde::Serialize;
use serde::de::DeserializeOwned;

/// What went wrong with the state directory.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StateError {
    /// A file system operation failed.
    #[error("{action} {path}: {source}", path = path.display())]
    Io {
        /// What was being done (`creating`, `renaming ... to`).
        action: String,
        /// The path it was done to.
        path: PathBuf,
        /// The error.
        #[source]
        source: std::io::Error,
    },
    /// Another agent holds the state directory.
    #[error("{path}: locked by another agent{}", holder.map(|pid| format!(" (pid {pid})")).unwrap_or_default(), path = path.display())]
    Locked {
        /// The lock file.
        path: PathBuf,
        /// The holder's pid, if it wrote one.
        holder: Option<i32>,
    },
    /// A record exists but does not parse.
    #[error("{path}: corrupt record: {message}", path = path.display())]
    Corrupt {
        /// The record.
        path: PathBuf,
        /// What the parser said.
        message: String,
    },
    /// A value could not be serialized.
    #[error("{path}: cannot encode the record: {message}", path = path.display())]
    Encode {
        /// The record it was meant for.
        path: PathBuf,
        /// What the serializer said.
        message: String,
    },
    /// A job name that is not a single, ordinary path component.
    #[error("{name:?} is not a job name (one path component, not starting with '.')")]
    BadJobName {
        /// The name.
        name: String,
    },
    /// Removal met a directory on another file system (a mount left behind).
    #[error("{path}: is a mount point; unmount it before removing the job", path = path.display())]
    MountPoint {
        /// The directory.
        path: PathBuf,
    },
}

fn io(action: impl Into<String>, path: &Path) -> impl FnOnce(std::io::Error) -> StateError + '_ {
    let action = action.into();
    move |source| StateError::Io {
        action,
        path: path.to_owned(),
        source,
    }
}

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

    /// The jobs that have a directory, sorted. Entries starting with `.`
    /// (removals in progress) and non-directories are skipped; a missing jobs
    /// directory is no jobs.
    pub fn list_jobs(&self) -> Result<Vec<String>, StateError> {
        let dir = self.jobs_dir();
        let entries = match std::fs::read_dir(&dir) {
            Ok(entries) => entries,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => return Err(io("listing", &dir)(e)),
        };
        let mut jobs = Vec::new();
        for entry in entries {
            let entry = entry.map_err(io("listing", &dir))?;
            let file_type = entry.file_type().map_err(io("inspecting", &entry.path()))?;
            if let Some(name) = entry.file_name().to_str()
                && file_type.is_dir()
                && is_job_name(name)
            {
                jobs.push(name.to_owned());
            }
        }
        jobs.sort();
        Ok(jobs)
    }

    /// Removes a job's directory and everything in it. The directory is first
    /// renamed to a hidden name, so a crash halfway leaves no half job behind
    /// for [`StateDir::list_jobs`] (only a `.removing-*` entry, which the next
    /// removal of anything sweeps). Removal refuses to cross into another file
    /// system: a container's rootfs still mounted under the job is
    /// [`StateError::MountPoint`], not deleted through. A missing job is fine.
    pub fn remove_job(&self, job: &str) -> Result<(), StateError> {
        if !is_job_name(job) {
            return Err(StateError::BadJobName {
                name: job.to_owned(),
            });
        }
        let dir = self.jobs_dir();
        let from = dir.join(job);
        // Refuse before hiding the job, so a refused removal leaves it listed.
        walk_tree(&from, Walk::Check)?;
        let to = dir.join(format!(".removing-{job}-{}", unique_suffix()));
        match std::fs::rename(&from, &to) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => {
                return Err(io(format!("renaming to {} from", to.display()), &from)(e));
            }
        }
        // Sweep this removal and any an earlier crash left behind.
        let entries = match std::fs::read_dir(&dir) {
            Ok(entries) => entries,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
            Err(e) => return Err(io("listing", &dir)(e)),
        };
        for entry in entries {
            let entry = entry.map_err(io("listing", &dir))?;
            if entry
                .file_name()
                .to_string_lossy()
                .starts_with(".removing-")
            {
                walk_tree(&entry.path(), Walk::Remove)?;
            }
        }
        Ok(())
    }
}

/// Whether `name` can be a job directory: one ordinary path component.
fn is_job_name(name: &str) -> bool {
    !name.is_empty() && !name.starts_with('.') && !name.contains(['/', '\0']) && name.len() <= 255
}

#[derive(Clone, Copy, PartialEq)]
enum Walk {
    /// Only look for mount points.
    Check,
    /// Remove everything.
    Remove,
}

/// Walks `path` without following symlinks or crossing into another file
/// system (that is [`StateError::MountPoint`]), removing what it meets when
/// asked to. A missing `path` is fine.
fn walk_tree(path: &Path, walk: Walk) -> Result<(), StateError> {
    match std::fs::symlink_metadata(path) {
        Ok(meta) => walk_tree_on(path, meta.dev(), walk),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(io("inspecting", path)(e)),
    }
}

fn walk_tree_on(path: &Path, dev: u64, walk: Walk) -> Result<(), StateError> {
    let meta = match std::fs::symlink_metadata(path) {
        Ok(meta) => meta,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(io("inspecting", path)(e)),
    };
    if !meta.is_dir() {
        return match walk {
            Walk::Check => Ok(()),
            Walk::Remove => match std::fs::remove_file(path) {
                Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(io("removing", path)(e)),
                _ => Ok(()),
            },
        };
    }
    if meta.dev() != dev {
        return Err(StateError::MountPoint {
            path: path.to_owned(),
        });
    }
    for entry in std::fs::read_dir(path).map_err(io("listing", path))? {
        let entry = entry.map_err(io("listing", path))?;
        walk_tree_on(&entry.path(), dev, walk)?;
    }
    match walk {
        Walk::Check => Ok(()),
        Walk::Remove => match std::fs::remove_dir(path) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(io("removing", path)(e)),
            _ => Ok(()),
        },
    }
}

fn unique_suffix() -> String {
    static NEXT: AtomicU64 = AtomicU64::new(0);
    format!(
        "{}-{}",
        std::process::id(),
        NEXT.fetch_add(1, Ordering::Relaxed)
    )
}

/// The state directory's lock: while it lives, no other agent (in this process
/// or another) can acquire it. It is an `flock(2)` on `STATE/lock`, so the
/// kernel releases it when the holder dies, even by SIGKILL; the file is opened
/// close-on-exec, so containers the agent spawns do not inherit it.
#[derive(Debug)]
pub struct AgentLock {
    path: PathBuf,
    file: Flock<File>,
}

impl AgentLock {
    /// Takes the lock without waiting, creating the state directory as needed,
    /// and writes this process's pid into the lock file. A lock held by anyone
    /// else is [`StateError::Locked`], with the holder's pid when it is known.
    pub fn acquire(state: &StateDir) -> Result<AgentLock, StateError> {
        std::fs::create_dir_all(state.root()).map_err(io("creating", state.root()))?;
        let path = state.lock_path();
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&path)
            .map_err(io("opening", &path))?;
        let mut file = match Flock::lock(file, FlockArg::LockExclusiveNonblock) {
            Ok(locked) => locked,
            Err((mut file, Errno::EWOULDBLOCK)) => {
                let mut text = String::new();
                let holder = file
                    .read_to_string(&mut text)
                    .ok()
                    .and_then(|_| text.trim().parse::<i32>().ok());
                return Err(StateError::Locked { path, holder });
            }
            Err((_, errno)) => return Err(io("locking", &path)(std::io::Error::from(errno))),
        };
        let pid = std::process::id().to_string();
        file.set_len(0)
            .and_then(|()| file.seek(SeekFrom::Start(0)))
            .and_then(|_| file.write_all(format!("{pid}\n").as_bytes()))
            .and_then(|()| file.sync_all())
            .map_err(io(format!("writing {pid} to"), &path))?;
        Ok(AgentLock { path, file })
    }

    /// The lock file.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl Drop for AgentLock {
    fn drop(&mut self) {
        // Clear the pid while still holding the lock, so a later reader never
        // blames a process that let go; the flock itself goes with the file.
        if let Err(error) = self.file.set_len(0) {
            tracing::debug!(path = %self.path.display(), %error, "clearing the lock holder's pid");
        }
    }
}

/// Writes `value` as JSON to `path` atomically: a temporary file in the same
/// directory is written and fsynced, renamed over `path`, and the directory is
/// fsynced, so after a crash `path` holds the old record or the new one, whole.
/// Missing parent directories are created.
pub fn write_record<T: Serialize>(path: &Path, value: &T) -> Result<(), StateError> {
    let mut bytes = serde_json::to_vec_pretty(value).map_err(|e| StateError::Encode {
        path: path.to_owned(),
        message: e.to_string(),
    })?;
    bytes.push(b'\n');
    let dir = match path.parent() {
        Some(dir) if !dir.as_os_str().is_empty() => dir,
        _ => Path::new("."),
    };
    std::fs::create_dir_all(dir).map_err(io("creating", dir))?;
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let temp = dir.join(format!(".{name}.tmp-{}", unique_suffix()));
    let written = (|| {
        let mut file = File::create(&temp).map_err(io("creating", &temp))?;
        file.write_all(&bytes)
            .and_then(|()| file.sync_all())
            .map_err(io(format!("writing {} bytes to", bytes.len()), &temp))?;
        std::fs::rename(&temp, path).map_err(io(format!("renaming {} to", temp.display()), path))
    })();
    if written.is_err() {
        let _ = std::fs::remove_file(&temp);
    }
    written?;
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(io("syncing", dir))
}

/// Reads a JSON record: `None` when there is none, [`StateError::Corrupt`]
/// when it does not parse as `T`.
pub fn read_record<T: DeserializeOwned>(path: &Path) -> Result<Option<T>, StateError> {
    let bytes = match std::fs::read(path) {
        Ok(bytes) => bytes,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(io("reading", path)(e)),
    };
    serde_json::from_slice(&bytes)
        .map(Some)
        .map_err(|e| StateError::Corrupt {
            path: path.to_owned(),
            message: e.to_string(),
        })
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
