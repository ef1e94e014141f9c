//! Writing unit files into a directory, all or none (feature `host`).
//!
//! Each file is written to `.NAME.twine-tmp` first. Only when every one is written
//! are they moved into place, one by one; an existing file is first hard-linked to
//! `.NAME.twine-old`, so that it can be put back. If any step fails, every step
//! already taken is undone in reverse order: replaced files get their old inode
//! back, new files are removed, and no temporary or backup file is left behind.
//!
//! A hard link, not a copy, keeps the old file byte for byte with its owner and
//! mode, and putting it back is one atomic `rename`. A target that is a directory
//! cannot be linked, so it is never moved aside: the write fails and is undone.

use std::io::{self, Write as _};
use std::path::{Path, PathBuf};

use crate::translate::{UnitFile, UnitSet};

impl UnitSet {
    /// Writes every unit file into `dir`, or none; see [`write_unit_files`].
    pub fn write_to(&self, dir: &Path) -> Result<Vec<PathBuf>, WriteError> {
        write_unit_files(dir, &self.files())
    }
}

/// Writes `files` into `dir`, all or none, and returns their paths; see the
/// [module docs](self) for how.
///
/// # Errors
///
/// A [`WriteError`] naming the file and the step that failed. Unless the step is
/// [`WriteStep::Cleanup`], `dir` is as it was before the call, except for the
/// paths listed in [`WriteError::not_restored`].
pub fn write_unit_files(dir: &Path, files: &[UnitFile]) -> Result<Vec<PathBuf>, WriteError> {
    let mut entries: Vec<Entry> = files
        .iter()
        .map(|file| Entry {
            path: dir.join(&file.name),
            tmp: dir.join(format!(".{}.twine-tmp", file.name)),
            backup: dir.join(format!(".{}.twine-old", file.name)),
            state: State::Planned,
        })
        .collect();
    if let Err(mut error) = replace_all(&mut entries, files) {
        error.not_restored = roll_back(&entries);
        return Err(error);
    }
    for entry in &entries {
        if entry.state == (State::Replaced { old: true }) {
            remove(&entry.backup).map_err(|source| {
                WriteError::new(entry.backup.clone(), WriteStep::Cleanup, source)
            })?;
        }
    }
    Ok(entries.into_iter().map(|e| e.path).collect())
}

/// A unit file that could not be written.
#[derive(Debug, thiserror::Error)]
#[error("{step} {}: {source}{}", path.display(), shown_not_restored(not_restored))]
#[non_exhaustive]
pub struct WriteError {
    /// The file the failing step worked on.
    pub path: PathBuf,
    /// The step that failed.
    pub step: WriteStep,
    /// Why.
    pub source: io::Error,
    /// Paths that the roll-back could not put back or remove, and why; empty when
    /// `dir` is as it was.
    pub not_restored: Vec<(PathBuf, io::Error)>,
}

impl WriteError {
    fn new(path: PathBuf, step: WriteStep, source: io::Error) -> WriteError {
        WriteError {
            path,
            step,
            source,
            not_restored: Vec::new(),
        }
    }
}

fn shown_not_restored(not_restored: &[(PathBuf, io::Error)]) -> String {
    not_restored
        .iter()
        .map(|(path, e)| format!("; could not undo {}: {e}", path.display()))
        .collect()
}

/// The step of [`write_unit_files`] that failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum WriteStep {
    /// Writing the new contents to the temporary file.
    #[error("writing")]
    Stage,
    /// Linking the existing file to its backup name.
    #[error("keeping the old file")]
    Backup,
    /// Renaming the temporary file into place.
    #[error("replacing")]
    Replace,
    /// Removing a backup once every file is in place: the new files are written.
    #[error("removing the backup")]
    Cleanup,
}

struct Entry {
    path: PathBuf,
    tmp: PathBuf,
    backup: PathBuf,
    state: State,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    Planned,
    /// The temporary file may exist.
    Staged,
    /// The temporary file exists; `old`: so does the backup.
    BackedUp {
        old: bool,
    },
    /// The new file is in place; `old`: the backup holds the previous one.
    Replaced {
        old: bool,
    },
}

fn replace_all(entries: &mut [Entry], files: &[UnitFile]) -> Result<(), WriteError> {
    for (entry, file) in entries.iter_mut().zip(files) {
        let stage = |source| WriteError::new(entry.tmp.clone(), WriteStep::Stage, source);
        // A temporary file left by a crashed run is stale; ours is created afresh, so
        // that the roll-back only ever removes what this call wrote.
        remove(&entry.tmp).map_err(stage)?;
        entry.state = State::Staged;
        std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&entry.tmp)
            .and_then(|mut f| f.write_all(file.contents.as_bytes()))
            .map_err(stage)?;
    }
    for entry in entries.iter_mut() {
        let backup = |source| WriteError::new(entry.path.clone(), WriteStep::Backup, source);
        // A backup left by a crashed run is stale: the file it kept was already replaced.
        remove(&entry.backup).map_err(backup)?;
        let old = match std::fs::hard_link(&entry.path, &entry.backup) {
            Ok(()) => true,
            Err(e) if e.kind() == io::ErrorKind::NotFound => false,
            Err(e) => return Err(backup(e)),
        };
        entry.state = State::BackedUp { old };
        std::fs::rename(&entry.tmp, &entry.path)
            .map_err(|source| WriteError::new(entry.path.clone(), WriteStep::Replace, source))?;
        entry.state = State::Replaced { old };
    }
    Ok(())
}

/// Undoes every step taken, newest first; returns what could not be undone.
fn roll_back(entries: &[Entry]) -> Vec<(PathBuf, io::Error)> {
    let mut failed = Vec::new();
    let mut undo = |path: &Path, result: io::Result<()>| {
        if let Err(e) = result {
            failed.push((path.to_owned(), e));
        }
    };
    for entry in entries.iter().rev() {
        match entry.state {
            State::Planned => {}
            State::Staged => undo(&entry.tmp, remove(&entry.tmp)),
            State::BackedUp { old } => {
                undo(&entry.tmp, remove(&entry.tmp));
                if old {
                    undo(&entry.backup, remove(&entry.backup));
                }
            }
            State::Replaced { old: true } => {
                undo(&entry.path, std::fs::rename(&entry.backup, &entry.path));
            }
            State::Replaced { old: false } => undo(&entry.path, remove(&entry.path)),
        }
    }
    failed
}

/// Removes a file; one that does not exist is already removed.
fn remove(path: &Path) -> io::Result<()> {
    match std::fs::remove_file(path) {
        Err(e) if e.kind() != io::ErrorKind::NotFound => Err(e),
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn file(name: &str, contents: &str) -> UnitFile {
        UnitFile {
            name: name.to_owned(),
            contents: contents.to_owned(),
        }
    }

    /// Every entry of `dir`, with the contents of files and `None` for directories.
    fn listing(dir: &Path) -> Vec<(String, Option<String>)> {
        let mut entries: Vec<_> = std::fs::read_dir(dir)
            .expect("dir reads")
            .map(|e| {
                let e = e.expect("entry reads");
                let path = e.path();
                let contents = path
                    .is_file()
                    .then(|| std::fs::read_to_string(&path).expect("file reads"));
                (e.file_name().to_string_lossy().into_owned(), contents)
            })
            .collect();
        entries.sort();
        entries
    }

    #[test]
    fn writes_and_replaces_every_file_leaving_nothing_else() {
        let dir = tempfile::tempdir().expect("tempdir");
        std::fs::write(dir.path().join("a.service"), "old a").expect("seed");
        let written = write_unit_files(
            dir.path(),
            &[file("a.service", "new a"), file("b.service", "new b")],
        )
        .expect("writes");
        assert_eq!(
            written,
            [dir.path().join("a.service"), dir.path().join("b.service")]
        );
        assert_eq!(
            listing(dir.path()),
            [
                ("a.service".to_owned(), Some("new a".to_owned())),
                ("b.service".to_owned(), Some("new b".to_owned())),
            ]
        );
    }

    /// Regression (issue 7): a failure after the first file was replaced left it
    /// replaced and leaked the other temporary files. `b.service` is a directory, so
    /// its step fails even as root, after `a.service` was replaced and `c.service`
    /// staged.
    #[test]
    fn a_failure_partway_restores_the_directory() {
        let dir = tempfile::tempdir().expect("tempdir");
        std::fs::write(dir.path().join("a.service"), "old a").expect("seed");
        std::fs::create_dir(dir.path().join("b.service")).expect("seed");
        std::fs::write(dir.path().join("b.service/keep"), "kept").expect("seed");
        // A stale backup from a crashed run is replaced, then removed by the roll-back.
        std::fs::write(dir.path().join(".a.service.twine-old"), "stale").expect("seed");
        let before = listing(dir.path());
        let error = write_unit_files(
            dir.path(),
            &[
                file("a.service", "new a"),
                file("b.service", "new b"),
                file("c.service", "new c"),
                file("d.service", "new d"),
            ],
        )
        .expect_err("b.service is a directory");
        assert_eq!(error.path, dir.path().join("b.service"));
        assert_eq!(error.step, WriteStep::Backup);
        assert!(error.not_restored.is_empty(), "{error}");
        let after = listing(dir.path());
        let expected: Vec<_> = before
            .into_iter()
            .filter(|(name, _)| name != ".a.service.twine-old")
            .collect();
        assert_eq!(after, expected);
        assert_eq!(
            std::fs::read_to_string(dir.path().join("b.service/keep")).expect("kept"),
            "kept"
        );
    }

    #[test]
    fn a_failure_while_staging_removes_the_temporary_files() {
        let dir = tempfile::tempdir().expect("tempdir");
        std::fs::create_dir(dir.path().join(".b.service.twine-tmp")).expect("seed");
        let error = write_unit_files(
            dir.path(),
            &[file("a.service", "new a"), file("b.service", "new b")],
        )
        .expect_err("the temporary name of b is a directory");
        assert_eq!(error.step, WriteStep::Stage);
        assert_eq!(error.path, dir.path().join(".b.service.twine-tmp"));
        assert!(error.not_restored.is_empty(), "{error}");
        assert_eq!(
            listing(dir.path()),
            [(".b.service.twine-tmp".to_owned(), None)]
        );
    }
}
