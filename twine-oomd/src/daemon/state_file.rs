//! The state file of original `memory.high` values, so that a successor of a killed daemon
//! restores the true originals.
//!
//! ```json
//! {"root": "/sys/fs/cgroup", "originals": {"workload.slice/a.service": null, "b": 1073741824}}
//! ```
//! `null` is `max`. The file is replaced atomically (a temporary file in the same directory,
//! then `rename`) and removed once nothing is left to restore.

use std::collections::BTreeMap;
use std::io::Write as _;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::DaemonError;

#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct Contents {
    root: PathBuf,
    originals: BTreeMap<String, Option<u64>>,
}

/// Original `memory.high` per cgroup, kept in memory and, with a path, on disk.
#[derive(Debug)]
pub(crate) struct Originals {
    path: Option<PathBuf>,
    contents: Contents,
}

impl Originals {
    /// Reads the file at `path`, if there is one; a file of another cgroup root is refused.
    pub(crate) fn load(path: Option<&Path>, root: &Path) -> Result<Self, DaemonError> {
        let mut contents = Contents {
            root: root.to_owned(),
            originals: BTreeMap::new(),
        };
        if let Some(path) = path {
            let bad = |reason: String| DaemonError::StateFile {
                path: path.to_owned(),
                reason,
            };
            match std::fs::read_to_string(path) {
                Ok(text) => {
                    let found: Contents =
                        serde_json::from_str(&text).map_err(|e| bad(e.to_string()))?;
                    if found.root != root {
                        return Err(bad(format!(
                            "written for the cgroup root {}, not {}",
                            found.root.display(),
                            root.display()
                        )));
                    }
                    if !found.originals.is_empty() {
                        tracing::info!(file = %path.display(), cgroups = found.originals.len(),
                            "a previous daemon did not stop cleanly: restoring its originals");
                    }
                    contents = found;
                }
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => return Err(bad(e.to_string())),
            }
        }
        Ok(Self {
            path: path.map(Path::to_owned),
            contents,
        })
    }

    /// The original of `rel` (`Some(None)` is `max`), if recorded.
    pub(crate) fn get(&self, rel: &str) -> Option<Option<u64>> {
        self.contents.originals.get(rel).copied()
    }

    /// Records `original` for `rel`; whether that changed anything.
    pub(crate) fn insert(&mut self, rel: &str, original: Option<u64>) -> bool {
        self.contents.originals.insert(rel.to_owned(), original) != Some(original)
    }

    /// Forgets `rel`; whether it was recorded.
    pub(crate) fn remove(&mut self, rel: &str) -> bool {
        self.contents.originals.remove(rel).is_some()
    }

    /// Every recorded cgroup and original.
    pub(crate) fn entries(&self) -> Vec<(String, Option<u64>)> {
        let originals = &self.contents.originals;
        originals.iter().map(|(k, v)| (k.clone(), *v)).collect()
    }

    /// Writes the file atomically, or removes it when nothing is recorded.
    pub(crate) fn save(&self) -> Result<(), DaemonError> {
        let Some(path) = &self.path else {
            return Ok(());
        };
        let bad = |reason: String| DaemonError::StateFile {
            path: path.clone(),
            reason,
        };
        if self.contents.originals.is_empty() {
            return match std::fs::remove_file(path) {
                Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(bad(e.to_string())),
                _ => Ok(()),
            };
        }
        let dir = match path.parent() {
            Some(dir) if !dir.as_os_str().is_empty() => dir,
            _ => Path::new("."),
        };
        std::fs::create_dir_all(dir).map_err(|e| bad(format!("creating its directory: {e}")))?;
        let json = serde_json::to_vec(&self.contents).map_err(|e| bad(e.to_string()))?;
        let name = path
            .file_name()
            .map_or("state".into(), |n| n.to_string_lossy());
        let tmp = dir.join(format!(".{name}.{}.tmp", std::process::id()));
        let written = std::fs::File::create(&tmp).and_then(|mut f| {
            f.write_all(&json)?;
            f.sync_all()
        });
        written
            .and_then(|()| std::fs::rename(&tmp, path))
            .map_err(|e| {
                let _ = std::fs::remove_file(&tmp);
                bad(format!("writing via {}: {e}", tmp.display()))
            })
    }
}
