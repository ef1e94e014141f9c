//! The cgroup2 tree: finding the mount, confined cgroup handles, creating and removing
//! cgroups, moving and killing processes, and the one error type of the I/O layer.
//!
//! Every path is built from a [`CgroupRoot`] (the real mount or a tempdir fixture) and a
//! relative path that cannot leave it. Every error names the file and, for writes, the value.

use std::fs;
use std::io::{self, Read as _};
use std::path::{Path, PathBuf};
use std::time::Duration;

use nix::errno::Errno;

/// What went wrong reading, writing or finding a cgroup2 file.
///
/// Every variant names the path involved and, for writes, the value written.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum CgroupError {
    /// No cgroup2 file system is mounted according to the mount table read.
    #[error("{mountinfo}: no cgroup2 mount")]
    NoCgroup2Mount {
        /// The mount table that was searched.
        mountinfo: PathBuf,
    },
    /// A cgroup path that would leave the root or name nothing.
    #[error("cgroup path {value:?} is refused: {reason}")]
    InvalidPath {
        /// The path as given.
        value: String,
        /// Why it is refused.
        reason: &'static str,
    },
    /// Reading a file failed.
    #[error("reading {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// The OS error.
        source: io::Error,
    },
    /// Writing a value to a file failed.
    #[error("writing {value} to {path}: {source}")]
    Write {
        /// The file.
        path: PathBuf,
        /// The value written.
        value: String,
        /// The OS error.
        source: io::Error,
    },
    /// Creating or removing a cgroup directory, or listing it, failed.
    #[error("{action} {path}: {source}")]
    Dir {
        /// `creating cgroup`, `removing cgroup` or `listing cgroup`.
        action: &'static str,
        /// The cgroup directory.
        path: PathBuf,
        /// The OS error.
        source: io::Error,
    },
    /// A file's contents could not be parsed.
    #[error("{path}: cannot parse {line:?}: {reason}")]
    Parse {
        /// The file.
        path: PathBuf,
        /// The offending line (or the whole value for single-value files).
        line: String,
        /// What was expected.
        reason: &'static str,
    },
    /// The cgroup was there and is gone (ENOENT or ENODEV, or POLLERR on a trigger).
    #[error("{path}: the cgroup is gone")]
    CgroupGone {
        /// The file that was being accessed.
        path: PathBuf,
    },
    /// Pressure stall information is not available for this file: no file (`CONFIG_PSI=n`
    /// or disabled for that cgroup through `cgroup.pressure`), or EOPNOTSUPP (`psi=0`).
    #[error("{path}: pressure stall information is unavailable: {reason}")]
    PsiUnavailable {
        /// The pressure file.
        path: PathBuf,
        /// What the kernel said.
        reason: String,
    },
    /// `memory.reclaim` returned EAGAIN or EBUSY: the kernel reclaimed less than asked;
    /// the caller may retry with a bound.
    #[error("writing {value} to {path}: reclaimed less than asked ({source})")]
    ReclaimShort {
        /// The `memory.reclaim` file.
        path: PathBuf,
        /// The value written.
        value: String,
        /// EAGAIN or EBUSY.
        source: io::Error,
    },
    /// A write did not finish in time (synchronous reclaim in the kernel); the write goes on
    /// in a helper thread and its outcome is logged through `tracing`.
    #[error("writing {value} to {path}: not finished after {after:?}")]
    TimedOut {
        /// The file.
        path: PathBuf,
        /// The value written.
        value: String,
        /// How long the caller waited.
        after: Duration,
    },
    /// A PSI trigger's threshold or window is outside what the kernel accepts.
    #[error("PSI trigger {value:?}: {reason}")]
    InvalidTrigger {
        /// The trigger as it would be written.
        value: String,
        /// The rule it breaks.
        reason: &'static str,
    },
    /// The kernel refused a trigger whose window is not a multiple of 2 s: without
    /// CAP_SYS_RESOURCE only such windows are allowed.
    #[error(
        "writing {value} to {path}: {source}; without CAP_SYS_RESOURCE the window must be a multiple of 2 s"
    )]
    TriggerNeedsPrivilege {
        /// The pressure file.
        path: PathBuf,
        /// The trigger written.
        value: String,
        /// EPERM or EINVAL.
        source: io::Error,
    },
}

/// A cgroup2 hierarchy: the real mount or a directory standing in for it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CgroupRoot {
    dir: PathBuf,
}

/// The mount table [`CgroupRoot::find`] reads.
const MOUNTINFO: &str = "/proc/self/mountinfo";

impl CgroupRoot {
    /// Finds the cgroup2 mount in `/proc/self/mountinfo` (`/sys/fs/cgroup` on unified hosts,
    /// `/sys/fs/cgroup/unified` on hybrid ones).
    pub fn find() -> Result<Self, CgroupError> {
        let text = fs::read_to_string(MOUNTINFO).map_err(|source| CgroupError::Read {
            path: MOUNTINFO.into(),
            source,
        })?;
        Self::find_in(&text).ok_or_else(|| CgroupError::NoCgroup2Mount {
            mountinfo: MOUNTINFO.into(),
        })
    }

    /// The first cgroup2 mount point in the text of a `mountinfo` file, unescaped.
    pub fn find_in(mountinfo: &str) -> Option<Self> {
        mountinfo.lines().find_map(|line| {
            let (before, after) = line.split_once(" - ")?;
            if after.split(' ').next()? != "cgroup2" {
                return None;
            }
            let mount_point = before.split(' ').nth(4)?;
            Some(Self::at(unescape_mount_path(mount_point)))
        })
    }

    /// A root at `dir`, for fixtures or a mount found another way.
    pub fn at(dir: impl Into<PathBuf>) -> Self {
        Self { dir: dir.into() }
    }

    /// The directory of the root.
    pub fn path(&self) -> &Path {
        &self.dir
    }

    /// The root cgroup itself.
    pub fn top(&self) -> Cgroup {
        Cgroup {
            rel: PathBuf::new(),
            dir: self.dir.clone(),
        }
    }

    /// The cgroup at `rel`, relative to the root: no absolute path, no `.` or `..`, no NUL,
    /// no empty component. The cgroup need not exist yet.
    pub fn cgroup(&self, rel: &str) -> Result<Cgroup, CgroupError> {
        let refuse = |reason| CgroupError::InvalidPath {
            value: rel.to_owned(),
            reason,
        };
        if rel.is_empty() {
            return Err(refuse("empty (use CgroupRoot::top for the root)"));
        }
        if rel.starts_with('/') {
            return Err(refuse("absolute; it must be relative to the cgroup root"));
        }
        if rel.contains('\0') {
            return Err(refuse("contains NUL"));
        }
        for component in rel.split('/') {
            match component {
                "" => return Err(refuse("has an empty component")),
                "." | ".." => return Err(refuse("has a `.` or `..` component")),
                _ => {}
            }
        }
        Ok(Cgroup {
            rel: PathBuf::from(rel),
            dir: self.dir.join(rel),
        })
    }
}

/// Undoes the octal escapes (`\040` space, `\011` tab, `\012` newline, `\134` backslash)
/// the kernel writes in mount paths.
fn unescape_mount_path(raw: &str) -> PathBuf {
    let bytes = raw.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let octal = bytes.get(i + 1..i + 4).and_then(|d| {
            d.iter().try_fold(0u8, |acc, &c| match c {
                b'0'..=b'7' => acc.checked_mul(8)?.checked_add(c - b'0'),
                _ => None,
            })
        });
        match (bytes[i], octal) {
            (b'\\', Some(byte)) => {
                out.push(byte);
                i += 4;
            }
            (b, _) => {
                out.push(b);
                i += 1;
            }
        }
    }
    use std::os::unix::ffi::OsStringExt as _;
    PathBuf::from(std::ffi::OsString::from_vec(out))
}

/// A cgroup under a [`CgroupRoot`], named by a confined relative path.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Cgroup {
    rel: PathBuf,
    dir: PathBuf,
}

/// The flags of `cgroup.events`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CgroupEvents {
    /// Some process lives in the cgroup or a descendant.
    pub populated: bool,
    /// The cgroup is frozen.
    pub frozen: bool,
}

impl Cgroup {
    /// The path relative to the root (empty for the root itself).
    pub fn relative(&self) -> &Path {
        &self.rel
    }

    /// The cgroup's directory.
    pub fn path(&self) -> &Path {
        &self.dir
    }

    /// The path of one of the cgroup's files (names are fixed by this crate, never input).
    pub(crate) fn file(&self, name: &str) -> PathBuf {
        self.dir.join(name)
    }

    /// The child cgroup `name` (one path component), not created.
    pub fn child(&self, name: &str) -> Result<Cgroup, CgroupError> {
        if name.contains('/') {
            return Err(CgroupError::InvalidPath {
                value: name.to_owned(),
                reason: "a child name is one path component",
            });
        }
        let child = CgroupRoot::at(&self.dir).cgroup(name)?;
        Ok(Cgroup {
            rel: self.rel.join(name),
            dir: child.dir,
        })
    }

    /// Creates the child cgroup `name` and returns it.
    pub fn create_child(&self, name: &str) -> Result<Cgroup, CgroupError> {
        let child = self.child(name)?;
        fs::create_dir(&child.dir).map_err(|source| CgroupError::Dir {
            action: "creating cgroup",
            path: child.dir.clone(),
            source,
        })?;
        tracing::debug!(cgroup = %child.dir.display(), "created cgroup");
        Ok(child)
    }

    /// Removes this cgroup, which must have no processes and no children.
    pub fn remove(&self) -> Result<(), CgroupError> {
        fs::remove_dir(&self.dir).map_err(|source| CgroupError::Dir {
            action: "removing cgroup",
            path: self.dir.clone(),
            source,
        })
    }

    /// The child cgroups, sorted by name.
    pub fn children(&self) -> Result<Vec<Cgroup>, CgroupError> {
        let dir_error = |source| CgroupError::Dir {
            action: "listing cgroup",
            path: self.dir.clone(),
            source,
        };
        let mut names = Vec::new();
        for entry in fs::read_dir(&self.dir).map_err(dir_error)? {
            let entry = entry.map_err(dir_error)?;
            if entry.file_type().map_err(dir_error)?.is_dir() {
                names.push(entry.file_name().to_string_lossy().into_owned());
            }
        }
        names.sort_unstable();
        names.iter().map(|name| self.child(name)).collect()
    }

    /// Enables controllers for the children (`+memory` ... in `cgroup.subtree_control`).
    pub fn enable_controllers(&self, controllers: &[&str]) -> Result<(), CgroupError> {
        let value = controllers
            .iter()
            .map(|c| format!("+{c}"))
            .collect::<Vec<_>>()
            .join(" ");
        self.write("cgroup.subtree_control", &value)
    }

    /// The processes in this cgroup (`cgroup.procs`).
    pub fn procs(&self) -> Result<Vec<u32>, CgroupError> {
        let mut text = String::new();
        self.read_into("cgroup.procs", &mut text)?;
        text.lines()
            .map(|line| {
                line.trim()
                    .parse()
                    .map_err(|_| self.parse_error("cgroup.procs", line, "a pid"))
            })
            .collect()
    }

    /// Moves process `pid` into this cgroup.
    pub fn move_process(&self, pid: u32) -> Result<(), CgroupError> {
        self.write("cgroup.procs", &pid.to_string())
    }

    /// Kills every process in this cgroup and its descendants (`cgroup.kill`, Linux 5.14+).
    pub fn kill(&self) -> Result<(), CgroupError> {
        self.write("cgroup.kill", "1")
    }

    /// Freezes or thaws every process in this cgroup and its descendants (`cgroup.freeze`);
    /// `cgroup.events` says when the freeze is complete.
    pub fn set_frozen(&self, frozen: bool) -> Result<(), CgroupError> {
        self.write("cgroup.freeze", if frozen { "1" } else { "0" })
    }

    /// `cgroup.events`: populated and frozen.
    pub fn events(&self) -> Result<CgroupEvents, CgroupError> {
        let mut text = String::new();
        self.read_into("cgroup.events", &mut text)?;
        let (mut populated, mut frozen) = (None, None);
        for line in text.lines() {
            let slot = match line.split_once(' ') {
                Some(("populated", _)) => &mut populated,
                Some(("frozen", _)) => &mut frozen,
                _ => continue, // keys may be added
            };
            *slot = Some(match line.split_once(' ').map(|(_, v)| v.trim()) {
                Some("0") => false,
                Some("1") => true,
                _ => return Err(self.parse_error("cgroup.events", line, "0 or 1")),
            });
        }
        match (populated, frozen) {
            (Some(populated), Some(frozen)) => Ok(CgroupEvents { populated, frozen }),
            _ => Err(self.parse_error("cgroup.events", &text, "populated and frozen lines")),
        }
    }

    /// Reads the file `name` into `buf` (cleared first), mapping a vanished cgroup to
    /// [`CgroupError::CgroupGone`].
    pub(crate) fn read_into(&self, name: &str, buf: &mut String) -> Result<(), CgroupError> {
        read_path_into(&self.dir, &self.file(name), buf)
    }

    /// Writes `value` to the file `name` in one `write(2)`.
    pub(crate) fn write(&self, name: &str, value: &str) -> Result<(), CgroupError> {
        let path = self.file(name);
        fs::OpenOptions::new()
            .write(true)
            .truncate(true) // the kernel ignores it; a fixture file wants it
            .open(&path)
            .and_then(|mut f| io::Write::write_all(&mut f, value.as_bytes()))
            .map_err(|source| self.write_error(path, value, source))
    }

    /// The error for a failed write: a vanished cgroup, or a plain write error.
    pub(crate) fn write_error(&self, path: PathBuf, value: &str, source: io::Error) -> CgroupError {
        write_error(&self.dir, path, value, source)
    }

    /// A parse error for the file `name`.
    pub(crate) fn parse_error(&self, name: &str, line: &str, reason: &'static str) -> CgroupError {
        CgroupError::Parse {
            path: self.file(name),
            line: line.to_owned(),
            reason,
        }
    }
}

/// Reads `path` (a file of the cgroup at `dir`) into `buf`, cleared first.
pub(crate) fn read_path_into(dir: &Path, path: &Path, buf: &mut String) -> Result<(), CgroupError> {
    read_file_into(path, buf).map_err(|source| read_error(dir, path.to_owned(), source))
}

/// Reads `path` into `buf`, cleared first.
pub(crate) fn read_file_into(path: &Path, buf: &mut String) -> io::Result<()> {
    buf.clear();
    fs::File::open(path)?.read_to_string(buf).map(drop)
}

/// Whether an error on a file of the cgroup at `dir` means the cgroup went away.
pub(crate) fn gone(dir: &Path, source: &io::Error) -> bool {
    matches!(
        source.raw_os_error().map(Errno::from_raw),
        Some(Errno::ENOENT | Errno::ENODEV)
    ) && !dir.is_dir()
}

/// The error for a failed read of `path`, a file of the cgroup at `dir`.
pub(crate) fn read_error(dir: &Path, path: PathBuf, source: io::Error) -> CgroupError {
    if gone(dir, &source) {
        CgroupError::CgroupGone { path }
    } else {
        CgroupError::Read { path, source }
    }
}

/// The error for a failed write of `value` to `path`, a file of the cgroup at `dir`.
pub(crate) fn write_error(
    dir: &Path,
    path: PathBuf,
    value: &str,
    source: io::Error,
) -> CgroupError {
    if gone(dir, &source) {
        CgroupError::CgroupGone { path }
    } else {
        CgroupError::Write {
            path,
            value: value.to_owned(),
            source,
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    const HYBRID: &str = "\
31 23 0:28 / /sys/fs/cgroup rw,relatime - tmpfs tmpfs rw,mode=755
35 31 0:32 / /sys/fs/cgroup/memory rw,relatime - cgroup cgroup rw,memory
41 31 0:38 / /sys/fs/cgroup/unified rw,relatime - cgroup2 cgroup2 rw
";
    const UNIFIED: &str = "\
22 1 259:1 / / rw,relatime shared:1 - ext4 /dev/vda rw
30 22 0:26 / /sys/fs/cgroup rw,nosuid,nodev,noexec,relatime shared:4 - cgroup2 cgroup2 rw,nsdelegate
";

    #[test]
    fn finds_cgroup2_on_hybrid_and_unified_hosts() {
        assert_eq!(
            CgroupRoot::find_in(HYBRID).unwrap().path(),
            Path::new("/sys/fs/cgroup/unified")
        );
        assert_eq!(
            CgroupRoot::find_in(UNIFIED).unwrap().path(),
            Path::new("/sys/fs/cgroup")
        );
    }

    #[test]
    fn unescapes_mount_points_and_skips_other_file_systems() {
        let text = "50 22 0:40 / /mnt/my\\040cg\\134x rw - cgroup2 none rw\n";
        assert_eq!(
            CgroupRoot::find_in(text).unwrap().path(),
            Path::new("/mnt/my cg\\x")
        );
        let v1_only = "35 31 0:32 / /sys/fs/cgroup/memory rw - cgroup cgroup rw,memory\n";
        assert_eq!(CgroupRoot::find_in(v1_only), None);
        assert_eq!(CgroupRoot::find_in("garbage\n\n - \n"), None);
        // A truncated escape is kept as it is.
        assert_eq!(unescape_mount_path("a\\04"), PathBuf::from("a\\04"));
    }

    #[test]
    fn confines_cgroup_paths() {
        let root = CgroupRoot::at("/cg");
        assert_eq!(root.cgroup("a/b").unwrap().path(), Path::new("/cg/a/b"));
        for bad in ["", "/etc", "a/../..", "..", "a//b", "a/", "./a", "a\0b"] {
            let err = root.cgroup(bad).unwrap_err();
            assert!(
                matches!(&err, CgroupError::InvalidPath { value, .. } if value == bad),
                "{bad:?}: {err}"
            );
            assert!(err.to_string().contains(&format!("{bad:?}")), "{err}");
        }
        let a = root.cgroup("a").unwrap();
        assert!(a.child("b/c").is_err());
        assert!(a.child("..").is_err());
        assert_eq!(a.child("b").unwrap().relative(), Path::new("a/b"));
    }
}
