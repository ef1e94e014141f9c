//! The per-job credentials directory (`STATE/jobs/JOB/identity`, bind-mounted
//! read-only at `/run/twine/identity`) and its atomic renewal.
//!
//! The layout is kubelet's `AtomicWriter`, so tools that know Kubernetes secret
//! volumes know this one:
//!
//! ```text
//! identity/..gen-7/cert.pem      the files of generation 7
//! identity/..gen-7/key.pem
//! identity/..data -> ..gen-7     swapped by rename(2): the one atomic step
//! identity/cert.pem -> ..data/cert.pem
//! identity/key.pem  -> ..data/key.pem
//! ```
//!
//! Every symlink is relative, so the set resolves the same inside the container,
//! and because the directory (not each file) is bind-mounted, a swap on the host
//! is seen inside at once, without a restart.
//!
//! Each file, opened by its visible name, is always a whole file of some
//! generation. Two files opened one after the other can straddle a renewal,
//! exactly as with kubelet; a reader that needs a matching set (a certificate
//! and its key) resolves `..data` once and reads both under the generation it
//! names, retrying if that generation was removed meanwhile. [`Identity::read_set`]
//! does that.
//!
//! ```
//! # let tmp = tempfile::tempdir()?;
//! use twine_agent::identity::Identity;
//!
//! let identity = Identity::new(tmp.path().join("identity"));
//! identity.renew(&[("cert.pem", b"cert 1"), ("key.pem", b"key 1")])?;
//! identity.renew(&[("cert.pem", b"cert 2"), ("key.pem", b"key 2")])?;
//! assert_eq!(std::fs::read(tmp.path().join("identity/key.pem"))?, b"key 2");
//! let (generation, files) = identity.read_set()?;
//! assert_eq!((generation, files["cert.pem"].as_slice()), (2, &b"cert 2"[..]));
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

use std::collections::{BTreeMap, BTreeSet};
use std::fs::{DirBuilder, File, OpenOptions};
use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::Mutex;

/// The longest file name accepted (`NAME_MAX`).
pub const MAX_NAME_LEN: usize = 255;

const DATA: &str = "..data";
const DATA_TMP: &str = "..data_tmp";
const GEN_PREFIX: &str = "..gen-";

/// What went wrong with a credentials directory.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum IdentityError {
    /// A file name that cannot be one visible entry of the directory.
    #[error("identity file {name:?}: {reason}")]
    InvalidName {
        /// The name as given.
        name: String,
        /// Which rule it breaks.
        reason: &'static str,
    },
    /// The same name twice in one set.
    #[error("identity file {name:?}: given twice")]
    Duplicate {
        /// The name.
        name: String,
    },
    /// A file system operation failed.
    #[error("{action} {path}: {source}", path = path.display())]
    Io {
        /// What was being done.
        action: String,
        /// The path it was done to.
        path: PathBuf,
        /// The error.
        #[source]
        source: std::io::Error,
    },
    /// A set could not be read consistently (renewals kept removing the
    /// generation being read).
    #[error("{path}: the identity set kept changing while being read", path = path.display())]
    Unstable {
        /// The directory.
        path: PathBuf,
    },
}

fn io(action: impl Into<String>, path: &Path) -> impl FnOnce(std::io::Error) -> IdentityError + '_ {
    let action = action.into();
    move |source| IdentityError::Io {
        action,
        path: path.to_owned(),
        source,
    }
}

/// A credentials directory. Renewals through one `Identity` are serialized;
/// keep one `Identity` per directory.
#[derive(Debug)]
pub struct Identity {
    dir: PathBuf,
    renewing: Mutex<()>,
}

impl Identity {
    /// The credentials directory at `dir` (created by the first renewal).
    pub fn new(dir: impl Into<PathBuf>) -> Identity {
        Identity {
            dir: dir.into(),
            renewing: Mutex::new(()),
        }
    }

    /// The directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The generation `..data` points at, `None` before the first set.
    pub fn current_generation(&self) -> Result<Option<u64>, IdentityError> {
        let link = self.dir.join(DATA);
        match std::fs::read_link(&link) {
            Ok(target) => Ok(target.to_str().and_then(parse_generation)),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(io("reading the link", &link)(e)),
        }
    }

    /// Installs the first set; the same as [`Identity::renew`].
    pub fn install(&self, files: &[(&str, &[u8])]) -> Result<(), IdentityError> {
        self.renew(files)
    }

    /// Replaces the whole set atomically: the new files are written (mode
    /// 0644) and fsynced in a fresh `..gen-N`, `..data` is swapped to it by
    /// rename, visible names are linked (new names) or unlinked (names no
    /// longer in the set), and older generations are removed. Names are
    /// checked first, so a bad set changes nothing.
    pub fn renew(&self, files: &[(&str, &[u8])]) -> Result<(), IdentityError> {
        let mut names = BTreeSet::new();
        for (name, _) in files {
            check_name(name)?;
            if !names.insert(*name) {
                return Err(IdentityError::Duplicate {
                    name: (*name).to_owned(),
                });
            }
        }
        // A poisoned lock only means another renewal panicked; the on-disk
        // protocol is still sound, so carry on.
        let _renewing = self
            .renewing
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let dir = &self.dir;
        DirBuilder::new()
            .recursive(true)
            .mode(0o755)
            .create(dir)
            .map_err(io("creating", dir))?;

        let (generations, visible) = self.scan()?;
        let old_names = self.current_names()?;
        let next = generations.iter().max().map_or(1, |g| g.saturating_add(1));
        let gen_name = format!("{GEN_PREFIX}{next}");
        let gen_dir = dir.join(&gen_name);
        DirBuilder::new()
            .mode(0o755)
            .create(&gen_dir)
            .map_err(io("creating", &gen_dir))?;
        for (name, contents) in files {
            let path = gen_dir.join(name);
            let mut file = OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o644)
                .open(&path)
                .map_err(io("creating", &path))?;
            file.write_all(contents)
                .and_then(|()| file.sync_all())
                .map_err(io(format!("writing {} bytes to", contents.len()), &path))?;
        }
        sync_dir(&gen_dir)?;

        // The swap: ..data_tmp -> ..gen-N, renamed over ..data.
        let tmp = dir.join(DATA_TMP);
        remove_if_exists(&tmp)?;
        std::os::unix::fs::symlink(&gen_name, &tmp)
            .map_err(io(format!("linking to {gen_name}"), &tmp))?;
        let data = dir.join(DATA);
        std::fs::rename(&tmp, &data)
            .map_err(io(format!("renaming {} to", tmp.display()), &data))?;
        sync_dir(dir)?;

        for name in &names {
            if !visible.contains(*name) {
                let link = dir.join(name);
                let target = Path::new(DATA).join(name);
                // A regular file or stale entry of that name is replaced.
                remove_if_exists(&link)?;
                std::os::unix::fs::symlink(&target, &link)
                    .map_err(io(format!("linking to {}", target.display()), &link))?;
            }
        }
        for name in old_names.iter().chain(visible.iter()) {
            if !names.contains(name.as_str()) {
                remove_if_exists(&dir.join(name))?;
            }
        }
        sync_dir(dir)?;

        for generation in generations {
            let old = dir.join(format!("{GEN_PREFIX}{generation}"));
            std::fs::remove_dir_all(&old).map_err(io("removing", &old))?;
        }
        Ok(())
    }

    /// Reads the current set consistently: `..data` is resolved once, every
    /// file is read under that generation, and the read counts only if `..data`
    /// still names it afterwards; otherwise it starts over (a bounded number of
    /// times, then [`IdentityError::Unstable`]). Before the first set, it is
    /// generation 0 with no files.
    pub fn read_set(&self) -> Result<(u64, BTreeMap<String, Vec<u8>>), IdentityError> {
        const ATTEMPTS: usize = 100;
        let data = self.dir.join(DATA);
        for _ in 0..ATTEMPTS {
            let target = match std::fs::read_link(&data) {
                Ok(target) => target,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                    return Ok((0, BTreeMap::new()));
                }
                Err(e) => return Err(io("reading the link", &data)(e)),
            };
            let Some(generation) = target.to_str().and_then(parse_generation) else {
                return Err(io("reading the link", &data)(std::io::Error::new(
                    std::io::ErrorKind::InvalidData,
                    format!("unexpected target {}", target.display()),
                )));
            };
            match read_generation(&self.dir.join(&target)) {
                // A generation is removed only after `..data` left it, and
                // `..data` never comes back: if it still points here, nothing
                // of this generation was removed while we read.
                Ok(files) if std::fs::read_link(&data).is_ok_and(|now| now == target) => {
                    return Ok((generation, files));
                }
                Ok(_) => continue,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
                Err(e) => return Err(io("reading", &self.dir.join(&target))(e)),
            }
        }
        Err(IdentityError::Unstable {
            path: self.dir.clone(),
        })
    }

    /// The generations on disk and the visible names (symlinks into `..data`).
    fn scan(&self) -> Result<(Vec<u64>, BTreeSet<String>), IdentityError> {
        let mut generations = Vec::new();
        let mut visible = BTreeSet::new();
        let entries = std::fs::read_dir(&self.dir).map_err(io("listing", &self.dir))?;
        for entry in entries {
            let entry = entry.map_err(io("listing", &self.dir))?;
            let Some(name) = entry.file_name().to_str().map(str::to_owned) else {
                continue;
            };
            if let Some(generation) = parse_generation(&name) {
                generations.push(generation);
            } else if !name.starts_with('.') {
                let path = entry.path();
                if let Ok(target) = std::fs::read_link(&path)
                    && target == Path::new(DATA).join(&name)
                {
                    visible.insert(name);
                }
            }
        }
        Ok((generations, visible))
    }

    /// The names in the current generation.
    fn current_names(&self) -> Result<BTreeSet<String>, IdentityError> {
        let data = self.dir.join(DATA);
        let entries = match std::fs::read_dir(&data) {
            Ok(entries) => entries,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(BTreeSet::new()),
            Err(e) => return Err(io("listing", &data)(e)),
        };
        let mut names = BTreeSet::new();
        for entry in entries {
            let entry = entry.map_err(io("listing", &data))?;
            if let Some(name) = entry.file_name().to_str() {
                names.insert(name.to_owned());
            }
        }
        Ok(names)
    }
}

fn read_generation(dir: &Path) -> std::io::Result<BTreeMap<String, Vec<u8>>> {
    let mut files = BTreeMap::new();
    for entry in std::fs::read_dir(dir)? {
        let entry = entry?;
        if let Some(name) = entry.file_name().to_str() {
            files.insert(name.to_owned(), std::fs::read(entry.path())?);
        }
    }
    Ok(files)
}

fn parse_generation(name: &str) -> Option<u64> {
    name.strip_prefix(GEN_PREFIX)?.parse().ok()
}

fn check_name(name: &str) -> Result<(), IdentityError> {
    let reason = if name.is_empty() {
        "is empty"
    } else if name.starts_with('.') {
        "starts with '.'"
    } else if name.contains('/') {
        "is more than one path component"
    } else if name.contains('\0') {
        "contains a NUL byte"
    } else if name.len() > MAX_NAME_LEN {
        "is longer than 255 bytes"
    } else {
        return Ok(());
    };
    Err(IdentityError::InvalidName {
        name: name.to_owned(),
        reason,
    })
}

fn remove_if_exists(path: &Path) -> Result<(), IdentityError> {
    match std::fs::remove_file(path) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(io("removing", path)(e)),
        _ => Ok(()),
    }
}

fn sync_dir(dir: &Path) -> Result<(), IdentityError> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(io("syncing", dir))
}
