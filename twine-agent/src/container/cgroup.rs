//! The container's delegated cgroup2 subtree.
//!
//! cgroups-rs is not used: it fixes the cgroup2 root at `/sys/fs/cgroup`,
//! while on a hybrid host (the CI machine) cgroup2 is mounted at
//! `/sys/fs/cgroup/unified`. The agent needs five operations (find the mount,
//! make a directory, move a process, `cgroup.kill`, remove a tree bottom-up),
//! which are a few lines each on the files themselves.

use std::fs;
use std::io;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use super::ContainerError;

/// The cgroup2 mount point from the text of `/proc/self/mountinfo`: the first
/// mount of type `cgroup2`. Pure, so it is tested on literal tables.
pub(crate) fn cgroup2_mount_in(mountinfo: &str) -> Option<PathBuf> {
    mountinfo.lines().find_map(|line| {
        // "36 35 98:0 /mnt1 /mnt2 rw,noatime master:1 - ext3 /dev/root rw,errors=continue"
        let (before, after) = line.split_once(" - ")?;
        let fstype = after.split_whitespace().next()?;
        let mount_point = before.split_whitespace().nth(4)?;
        (fstype == "cgroup2").then(|| PathBuf::from(unescape_mountinfo(mount_point)))
    })
}

/// Undoes mountinfo's octal escapes (`\040` for a space).
fn unescape_mountinfo(field: &str) -> String {
    let bytes = field.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'\\'
            && i + 3 < bytes.len()
            && bytes[i + 1..i + 4]
                .iter()
                .all(|b| (b'0'..=b'7').contains(b))
        {
            let n = (bytes[i + 1] - b'0') * 64 + (bytes[i + 2] - b'0') * 8 + (bytes[i + 3] - b'0');
            out.push(n);
            i += 4;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Finds the host's cgroup2 mount, wherever it is.
pub(crate) fn cgroup2_mount() -> Result<PathBuf, ContainerError> {
    let path = Path::new("/proc/self/mountinfo");
    let text = fs::read_to_string(path).map_err(|source| ContainerError::Io {
        what: "reading the mount table",
        path: path.into(),
        source,
    })?;
    cgroup2_mount_in(&text).ok_or(ContainerError::NoCgroup2)
}

/// The controllers the container gets delegated when the kernel offers them:
/// systemd inside gives them to its units (`MemoryMax=`, `TasksMax=`,
/// `CPUWeight=`, `IOWeight=`).
const DELEGATED: [&str; 4] = ["memory", "pids", "cpu", "io"];

/// Creates the container's cgroup (its parents as needed); it must not exist.
///
/// A controller reaches a cgroup only when every ancestor has it in
/// `cgroup.subtree_control`, so each of [`DELEGATED`] that the kernel offers
/// is enabled from `mount` down to the container's parent. A controller the
/// kernel does not offer (the CI host's cgroup2 has no memory controller) or
/// refuses to enable is left out: the container still boots, and its units
/// run without that control (logged as a warning).
pub(crate) fn create(mount: &Path, cgroup: &Path) -> Result<(), ContainerError> {
    if let Some(parent) = cgroup.parent() {
        fs::create_dir_all(parent).map_err(|source| ContainerError::Cgroup {
            path: parent.into(),
            source,
        })?;
        if let Ok(below) = parent.strip_prefix(mount) {
            let mut dir = mount.to_path_buf();
            enable_offered(&dir)?;
            for part in below.components() {
                dir.push(part);
                enable_offered(&dir)?;
            }
        }
    }
    fs::create_dir(cgroup).map_err(|source| {
        if source.kind() == io::ErrorKind::AlreadyExists {
            ContainerError::CgroupExists {
                path: cgroup.into(),
            }
        } else {
            ContainerError::Cgroup {
                path: cgroup.into(),
                source,
            }
        }
    })
}

/// Enables in `dir`'s `cgroup.subtree_control` each of [`DELEGATED`] that
/// `dir` has (its `cgroup.controllers`) and has not enabled yet, one at a
/// time so that a refused one does not take the others with it.
fn enable_offered(dir: &Path) -> Result<(), ContainerError> {
    let read = |name: &str| {
        let path = dir.join(name);
        fs::read_to_string(&path).map_err(|source| ContainerError::Cgroup { path, source })
    };
    let offered = read("cgroup.controllers")?;
    let enabled = read("cgroup.subtree_control")?;
    let control = dir.join("cgroup.subtree_control");
    for controller in controllers_to_enable(&offered, &enabled) {
        if let Err(e) = fs::write(&control, format!("+{controller}")) {
            tracing::warn!(
                "writing +{controller} to {}: {e}; the container's units run without it",
                control.display()
            );
        }
    }
    Ok(())
}

/// The controllers of [`DELEGATED`] that are offered and not yet enabled,
/// from the texts of `cgroup.controllers` and `cgroup.subtree_control`.
fn controllers_to_enable<'a>(offered: &str, enabled: &str) -> Vec<&'a str> {
    let has = |list: &str, c: &str| list.split_whitespace().any(|w| w == c);
    DELEGATED
        .into_iter()
        .filter(|c| has(offered, c) && !has(enabled, c))
        .collect()
}

/// The pids in `cgroup` and all its descendants.
pub(crate) fn pids(cgroup: &Path) -> Vec<i32> {
    let mut out = Vec::new();
    let mut stack = vec![cgroup.to_path_buf()];
    while let Some(dir) = stack.pop() {
        if let Ok(text) = fs::read_to_string(dir.join("cgroup.procs")) {
            out.extend(text.lines().filter_map(|l| l.trim().parse::<i32>().ok()));
        }
        if let Ok(entries) = fs::read_dir(&dir) {
            stack.extend(
                entries
                    .flatten()
                    .filter(|e| e.file_type().is_ok_and(|t| t.is_dir()))
                    .map(|e| e.path()),
            );
        }
    }
    out
}

/// Kills every process of the subtree with `cgroup.kill` and waits until it is
/// empty, at most `deadline`.
pub(crate) fn kill(cgroup: &Path, deadline: Duration) -> Result<(), ContainerError> {
    let file = cgroup.join("cgroup.kill");
    let start = Instant::now();
    loop {
        if pids(cgroup).is_empty() {
            return Ok(());
        }
        match fs::write(&file, "1") {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
            Err(source) => return Err(ContainerError::Cgroup { path: file, source }),
        }
        if start.elapsed() > deadline {
            return Err(ContainerError::Unkillable {
                cgroup: cgroup.into(),
                pids: pids(cgroup),
            });
        }
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// Removes the subtree bottom-up. The cgroup must be empty of processes.
pub(crate) fn remove_tree(cgroup: &Path) -> Result<(), ContainerError> {
    let mut dirs = Vec::new();
    let mut stack = vec![cgroup.to_path_buf()];
    while let Some(dir) = stack.pop() {
        match fs::read_dir(&dir) {
            Ok(entries) => stack.extend(
                entries
                    .flatten()
                    .filter(|e| e.file_type().is_ok_and(|t| t.is_dir()))
                    .map(|e| e.path()),
            ),
            Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
            Err(source) => return Err(ContainerError::Cgroup { path: dir, source }),
        }
        dirs.push(dir);
    }
    // Children were pushed after their parents: remove in reverse.
    for dir in dirs.iter().rev() {
        match fs::remove_dir(dir) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(source) => {
                return Err(ContainerError::Cgroup {
                    path: dir.clone(),
                    source,
                });
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_offered_controllers_not_yet_enabled_are_enabled() {
        assert_eq!(
            controllers_to_enable(
                "cpuset cpu io memory hugetlb pids rdma misc\n",
                "cpu memory\n"
            ),
            ["pids", "io"]
        );
        // The CI host: cgroup2 without controllers.
        assert_eq!(controllers_to_enable("\n", "\n"), Vec::<&str>::new());
        assert_eq!(
            controllers_to_enable("memory pids", "memory pids"),
            Vec::<&str>::new()
        );
        // Whole words only.
        assert_eq!(controllers_to_enable("cpuset", ""), Vec::<&str>::new());
    }

    #[test]
    fn finds_cgroup2_on_hybrid_and_unified_hosts() {
        let hybrid = "\
25 30 0:23 / /sys rw,nosuid - sysfs sysfs rw
33 25 0:28 / /sys/fs/cgroup ro,nosuid - tmpfs tmpfs ro,mode=755
34 33 0:29 / /sys/fs/cgroup/unified rw,nosuid shared:10 - cgroup2 cgroup2 rw,nsdelegate
35 33 0:30 / /sys/fs/cgroup/systemd rw - cgroup cgroup rw,xattr,name=systemd
";
        assert_eq!(
            cgroup2_mount_in(hybrid),
            Some(PathBuf::from("/sys/fs/cgroup/unified"))
        );
        let unified = "30 25 0:26 / /sys/fs/cgroup rw shared:4 - cgroup2 cgroup2 rw\n";
        assert_eq!(
            cgroup2_mount_in(unified),
            Some(PathBuf::from("/sys/fs/cgroup"))
        );
        assert_eq!(
            cgroup2_mount_in("33 25 0:28 / /sys/fs/cgroup ro - tmpfs tmpfs ro\n"),
            None
        );
        let spaced = "30 25 0:26 / /mnt/cg\\0402 rw - cgroup2 none rw\n";
        assert_eq!(cgroup2_mount_in(spaced), Some(PathBuf::from("/mnt/cg 2")));
    }
}
