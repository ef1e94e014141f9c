//! The container's root file system: the checks before anything is created,
//! and the files seeded into the writable overlay layer before boot.

use std::fs;
use std::io::Write as _;
use std::os::unix::fs::{PermissionsExt as _, symlink};
use std::path::{Component, Path, PathBuf};

use super::{ContainerError, SeedFile};

/// Where systemd may live in a rootfs, relative to its root, in search order.
const SYSTEMD_PATHS: [&str; 2] = ["usr/lib/systemd/systemd", "lib/systemd/systemd"];

/// Checks the rootfs and returns systemd's absolute path inside it.
pub(crate) fn systemd_in(rootfs: &Path) -> Result<&'static str, ContainerError> {
    match fs::metadata(rootfs) {
        Ok(m) if m.is_dir() => {}
        Ok(_) | Err(_) => {
            return Err(ContainerError::MissingRootfs {
                path: rootfs.into(),
            });
        }
    }
    for rel in SYSTEMD_PATHS {
        // Debian's `lib -> usr/lib` is relative, so it resolves inside the rootfs.
        let candidate = rootfs.join(rel);
        if fs::metadata(&candidate)
            .is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
        {
            return Ok(if rel.starts_with("usr/") {
                "/usr/lib/systemd/systemd"
            } else {
                "/lib/systemd/systemd"
            });
        }
    }
    Err(ContainerError::NoSystemd {
        rootfs: rootfs.into(),
    })
}

/// A relative path that stays inside the root it is joined to: no `..`, no
/// absolute part, not empty.
pub(crate) fn confined(rel: &Path) -> bool {
    !rel.as_os_str().is_empty() && rel.components().all(|c| matches!(c, Component::Normal(_)))
}

/// Writes the seed files into the overlay's upper layer.
pub(crate) fn seed(upper: &Path, files: &[SeedFile]) -> Result<(), ContainerError> {
    for file in files {
        let (rel, what) = match file {
            SeedFile::File { path, .. } | SeedFile::Symlink { path, .. } => (path, "seed file"),
        };
        if !confined(rel) {
            return Err(ContainerError::Unconfined {
                what,
                path: rel.clone(),
            });
        }
        let target = upper.join(rel);
        let io = |source| ContainerError::Io {
            what: "seeding the container's upper layer",
            path: target.clone(),
            source,
        };
        if let Some(parent) = target.parent() {
            fs::create_dir_all(parent).map_err(io)?;
        }
        match file {
            SeedFile::File { contents, mode, .. } => {
                let mut f = fs::File::create(&target).map_err(io)?;
                f.write_all(contents).map_err(io)?;
                f.set_permissions(fs::Permissions::from_mode(*mode))
                    .map_err(io)?;
            }
            SeedFile::Symlink { to, .. } => symlink(to, &target).map_err(io)?,
        }
    }
    Ok(())
}

/// A fresh machine id: 128 random bits as 32 lowercase hex digits.
pub(crate) fn new_machine_id() -> Result<String, ContainerError> {
    let path = PathBuf::from("/proc/sys/kernel/random/uuid");
    let uuid = fs::read_to_string(&path).map_err(|source| ContainerError::Io {
        what: "reading a random uuid",
        path,
        source,
    })?;
    Ok(uuid.trim().replace('-', ""))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn confinement_refuses_escapes() {
        for bad in ["", "/etc/passwd", "../x", "a/../../x", "./a"] {
            assert!(!confined(Path::new(bad)), "{bad}");
        }
        for good in ["etc/machine-id", "etc/systemd/system/a.service"] {
            assert!(confined(Path::new(good)), "{good}");
        }
    }

    #[test]
    fn a_rootfs_without_systemd_is_refused_by_name() {
        let dir = tempfile::tempdir().expect("tempdir");
        let err = systemd_in(dir.path()).expect_err("no systemd");
        assert!(
            matches!(err, ContainerError::NoSystemd { ref rootfs } if rootfs == dir.path()),
            "{err}"
        );
        let missing = dir.path().join("nope");
        let err = systemd_in(&missing).expect_err("missing");
        assert!(
            matches!(err, ContainerError::MissingRootfs { ref path } if *path == missing),
            "{err}"
        );
        fs::create_dir_all(dir.path().join("usr/lib/systemd")).expect("mkdir");
        let systemd = dir.path().join("usr/lib/systemd/systemd");
        fs::write(&systemd, "#!/bin/sh\n").expect("write");
        assert!(systemd_in(dir.path()).is_err(), "not executable");
        fs::set_permissions(&systemd, fs::Permissions::from_mode(0o755)).expect("chmod");
        assert_eq!(
            systemd_in(dir.path()).expect("found"),
            "/usr/lib/systemd/systemd"
        );
    }

    #[test]
    fn machine_ids_are_32_hex_digits_and_differ() {
        let a = new_machine_id().expect("id");
        let b = new_machine_id().expect("id");
        assert_eq!(a.len(), 32);
        assert!(a.bytes().all(|c| c.is_ascii_hexdigit()));
        assert_ne!(a, b);
    }
}
