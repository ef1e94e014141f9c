//! [`ContainerError`]: every way starting, reattaching or stopping a container fails,
//! each variant carrying the path, step or name needed to fix it.

use std::path::PathBuf;
use std::time::Duration;

/// Why a container could not be started, reattached or stopped.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ContainerError {
    /// The agent is not root.
    #[error("containers need root (running as uid {uid})")]
    NotRoot {
        /// The effective uid.
        uid: u32,
    },
    /// The rootfs does not exist or is not a directory.
    #[error("{path}: no such rootfs directory", path = path.display())]
    MissingRootfs {
        /// The path given.
        path: PathBuf,
    },
    /// The rootfs has no executable systemd.
    #[error("{rootfs}: no systemd in this rootfs (looked for usr/lib/systemd/systemd and lib/systemd/systemd)", rootfs = rootfs.display())]
    NoSystemd {
        /// The rootfs.
        rootfs: PathBuf,
    },
    /// The container name is not usable as a hostname and cgroup name.
    #[error("container name {name:?}: {reason}")]
    BadName {
        /// The name.
        name: String,
        /// What is wrong.
        reason: &'static str,
    },
    /// A path cannot be used.
    #[error("{path}: {reason}", path = path.display())]
    BadPath {
        /// The path.
        path: PathBuf,
        /// What is wrong.
        reason: &'static str,
    },
    /// A path from the configuration would leave its root.
    #[error("{what} {path}: must be a confined path (no '..', absolute inside the container)", path = path.display())]
    Unconfined {
        /// What the path is for.
        what: &'static str,
        /// The path.
        path: PathBuf,
    },
    /// No cgroup2 file system is mounted on the host.
    #[error("no cgroup2 mount in /proc/self/mountinfo")]
    NoCgroup2,
    /// The container's cgroup exists already (another container of that name).
    #[error("{path}: the container's cgroup exists already", path = path.display())]
    CgroupExists {
        /// The cgroup.
        path: PathBuf,
    },
    /// A cgroup file could not be written.
    #[error("{path}: {source}", path = path.display())]
    Cgroup {
        /// The cgroup file or directory.
        path: PathBuf,
        /// The error.
        source: std::io::Error,
    },
    /// Processes survived `cgroup.kill`.
    #[error("{cgroup}: processes {pids:?} survived cgroup.kill", cgroup = cgroup.display())]
    Unkillable {
        /// The cgroup.
        cgroup: PathBuf,
        /// What is left.
        pids: Vec<i32>,
    },
    /// A file operation failed.
    #[error("{what}: {path}: {source}", path = path.display())]
    Io {
        /// What the agent was doing.
        what: &'static str,
        /// The path.
        path: PathBuf,
        /// The error.
        source: std::io::Error,
    },
    /// Starting PID 1 failed at a named step.
    #[error("starting the container failed at {step}: {errno}")]
    Spawn {
        /// The step (a mount, `unshare`, `pivot_root`, `execve` ...).
        step: String,
        /// The error.
        errno: nix::errno::Errno,
    },
    /// systemd did not report `READY=1` in time.
    #[error(
        "systemd in the container did not become ready within {timeout:?} (last status: {status:?}); console:\n{console}"
    )]
    NeverReady {
        /// The deadline.
        timeout: Duration,
        /// The last `STATUS=` systemd sent.
        status: Option<String>,
        /// The end of the console log.
        console: String,
    },
    /// PID 1 exited before it was ready.
    #[error(
        "systemd in the container exited before it was ready (last status: {status:?}); console:\n{console}"
    )]
    DiedBeforeReady {
        /// The last `STATUS=` systemd sent.
        status: Option<String>,
        /// The end of the console log.
        console: String,
    },
    /// The recorded container is no longer running.
    #[error("container {name} (pid {pid}) is gone")]
    Gone {
        /// The container.
        name: String,
        /// Its recorded pid.
        pid: i32,
    },
    /// The container still runs where it was expected to be gone.
    #[error("container {name} (pid {pid}) is still running")]
    StillRunning {
        /// The container.
        name: String,
        /// Its PID 1.
        pid: i32,
    },
    /// Cleanup after another failure failed too; both are reported.
    #[error("{first}; cleaning up also failed: {cleanup}")]
    CleanupFailed {
        /// The original failure.
        first: Box<ContainerError>,
        /// The cleanup failure.
        cleanup: Box<ContainerError>,
    },
}
