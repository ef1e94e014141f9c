//! What a container is made of: its name, root file system, scratch
//! directory, network, bind mounts, seed files and cgroup parent.

use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::ContainerError;

/// The container's network.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Network {
    /// The host's network namespace.
    #[default]
    Host,
    /// A new network namespace with only loopback (systemd brings `lo` up).
    Private,
}

/// A host directory or file bind-mounted into the container.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Bind {
    /// The host path.
    pub source: PathBuf,
    /// The absolute path inside the container.
    pub target: PathBuf,
    /// Whether the container sees it read-only.
    pub read_only: bool,
}

/// A file placed into the container's writable layer before boot.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SeedFile {
    /// A regular file.
    File {
        /// Path relative to the container's root (confined: no `..`).
        path: PathBuf,
        /// Contents.
        contents: Vec<u8>,
        /// Permission bits.
        mode: u32,
    },
    /// A symbolic link (for example a unit masked to `/dev/null`).
    Symlink {
        /// Path relative to the container's root (confined: no `..`).
        path: PathBuf,
        /// What it points to.
        to: PathBuf,
    },
}

/// What a container is made of.
#[derive(Debug, Clone)]
pub struct ContainerConfig {
    /// The container's name: its hostname and its cgroup's directory name.
    /// Letters, digits, `-`, `_` and `.`, at most 64 bytes, not starting with `.`.
    pub name: String,
    /// The read-only base root file system (shared by many containers).
    pub rootfs: PathBuf,
    /// The container's scratch directory on the host (overlay layers, notify
    /// socket, console log); created, and removed at shutdown.
    pub scratch: PathBuf,
    /// The network.
    pub network: Network,
    /// Extra bind mounts.
    pub binds: Vec<Bind>,
    /// Files seeded into the writable layer.
    pub seed: Vec<SeedFile>,
    /// The parent of the container's cgroup, relative to the cgroup2 mount.
    pub cgroup_parent: PathBuf,
    /// How long systemd may take to report `READY=1`.
    pub ready_timeout: Duration,
}

impl ContainerConfig {
    /// A configuration with the defaults: host network, no binds, no seed
    /// files, cgroup parent `twine`, 30 s to become ready.
    pub fn new(
        name: impl Into<String>,
        rootfs: impl Into<PathBuf>,
        scratch: impl Into<PathBuf>,
    ) -> ContainerConfig {
        ContainerConfig {
            name: name.into(),
            rootfs: rootfs.into(),
            scratch: scratch.into(),
            network: Network::Host,
            binds: Vec::new(),
            seed: Vec::new(),
            cgroup_parent: PathBuf::from("twine"),
            ready_timeout: Duration::from_secs(30),
        }
    }
}

/// Checks a container name against the rule on [`ContainerConfig::name`].
pub(super) fn check_name(name: &str) -> Result<(), ContainerError> {
    let bad = |reason| {
        Err(ContainerError::BadName {
            name: name.to_owned(),
            reason,
        })
    };
    if name.is_empty() || name.len() > 64 {
        return bad("must be 1 to 64 bytes");
    }
    if name.starts_with('.') {
        return bad("must not start with '.'");
    }
    if !name
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
    {
        return bad("may hold only letters, digits, '-', '_' and '.'");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_checked() {
        for bad in ["", ".x", "a/b", "a b", &"x".repeat(65)] {
            assert!(check_name(bad).is_err(), "{bad:?}");
        }
        check_name("web-1.gen_2").expect("fine");
    }
}
