//! One journal step carried out: its original recorded, its write confined to the root,
//! made, and read back.

use std::fs;
use std::path::{Path, PathBuf};

use super::journal::{Check, Op, Recorded};
use super::{ApplyError, Writes};
use crate::host::{self, HostError, HostRoot};

pub(super) enum Outcome {
    Done,
    Partial { wanted: u64, got: u64 },
}

/// Reads what a step is about to change, as it will be restored: a kernel file's content as
/// it read (the kernel takes it back, trailing newline and tabs included, and a directory
/// root gets its bytes back exactly), except a choice file, whose selected word is what
/// can be written back.
pub(super) fn record(root: &HostRoot, op: &Op) -> Result<Recorded, ApplyError> {
    let path = root.path(op.path());
    let raw = host::read_opt(&path)?;
    let value = match (op, raw) {
        (_, None) => None,
        (Op::File { .. }, Some(v)) => Some(v),
        (Op::Controllers { .. }, Some(v)) => Some(host::sorted_words(&v)),
        (
            Op::Live {
                check: Check::Bracketed,
                ..
            },
            Some(v),
        ) => Some(read_as(&path, &v, Check::Bracketed)?),
        (Op::Live { check, .. }, Some(v)) => {
            // Checked now, so that a file twine could not read back is refused before
            // the write, as before.
            read_as(&path, &v, *check)?;
            Some(v)
        }
    };
    Ok(Recorded { value })
}

/// A written value as it reads back when the write took.
pub(super) fn normalised(value: &str, check: Check) -> String {
    match check {
        Check::Words => host::normalise_words(value),
        _ => value.trim().to_owned(),
    }
}

pub(super) fn read_as(path: &Path, v: &str, check: Check) -> Result<String, ApplyError> {
    Ok(match check {
        Check::Words => host::normalise_words(v),
        Check::Trimmed | Check::Count => v.trim().to_owned(),
        Check::Bracketed => host::bracketed(path, v)?,
    })
}

/// Writes one step and reads it back.
pub(super) fn perform(
    root: &HostRoot,
    writes: &mut dyn Writes,
    op: &Op,
) -> Result<Outcome, ApplyError> {
    let path = confined(root, op)?;
    match op {
        Op::Live { value, check, .. } => {
            writes
                .write_live(&path, value)
                .map_err(|e| ApplyError::write(&path, value, e))?;
            let read = host::read_opt(&path)?;
            let got = read
                .as_deref()
                .map(|r| read_as(&path, r, *check))
                .transpose()?;
            let wanted = normalised(value, *check);
            if got.as_deref() == Some(wanted.as_str()) {
                return Ok(Outcome::Done);
            }
            if *check == Check::Count
                && let (Ok(w), Some(Ok(g))) = (wanted.parse(), got.as_deref().map(str::parse))
            {
                return Ok(Outcome::Partial { wanted: w, got: g });
            }
            Err(ApplyError::Mismatch {
                path,
                wanted,
                read: got,
            })
        }
        Op::File { content, .. } => {
            match content {
                Some(c) => writes.replace_file(&path, c),
                None => writes.remove_file(&path),
            }
            .map_err(|e| ApplyError::write(&path, content.as_deref().unwrap_or("(remove)"), e))?;
            let read = host::read_opt(&path)?;
            if read != *content {
                return Err(ApplyError::Mismatch {
                    path,
                    wanted: content.clone().unwrap_or_else(|| "(absent)".to_owned()),
                    read,
                });
            }
            Ok(Outcome::Done)
        }
        Op::Controllers { want, .. } => {
            let current = host::read_opt(&path)?
                .map(|v| host::sorted_words(&v))
                .unwrap_or_default();
            let have: Vec<&str> = current.split_whitespace().collect();
            let wanted: Vec<&str> = want.split_whitespace().collect();
            let enable: Vec<&str> = wanted
                .iter()
                .copied()
                .filter(|c| !have.contains(c))
                .collect();
            let disable: Vec<&str> = have
                .iter()
                .copied()
                .filter(|c| !wanted.contains(c))
                .collect();
            if !enable.is_empty() || !disable.is_empty() {
                writes
                    .write_controllers(&path, &enable, &disable)
                    .map_err(|e| ApplyError::write(&path, want, e))?;
            }
            let read = host::read_opt(&path)?.map(|v| host::sorted_words(&v));
            if read.as_deref() != Some(want.as_str()) {
                return Err(ApplyError::Mismatch {
                    path,
                    wanted: want.clone(),
                    read,
                });
            }
            Ok(Outcome::Done)
        }
    }
}

/// The step's path under the root, refused when it is a symlink or (for a directory root)
/// when its directory resolves outside the root. Directories for new files are created.
fn confined(root: &HostRoot, op: &Op) -> Result<PathBuf, ApplyError> {
    let path = root.path(op.path());
    let unsafe_path = |problem| ApplyError::Unsafe {
        path: path.clone(),
        problem,
    };
    if let Op::File { .. } = op
        && let Some(dir) = path.parent()
    {
        fs::create_dir_all(dir).map_err(|e| ApplyError::write(dir, "(directory)", e))?;
    }
    if fs::symlink_metadata(&path).is_ok_and(|m| m.file_type().is_symlink()) {
        return Err(unsafe_path("is a symlink"));
    }
    if !root.is_real() {
        let base = fs::canonicalize(root.dir()).map_err(|source| HostError::Read {
            path: root.dir().to_owned(),
            source,
        })?;
        if let Some(dir) = path.parent() {
            let real = fs::canonicalize(dir).map_err(|source| HostError::Read {
                path: dir.to_owned(),
                source,
            })?;
            if !real.starts_with(&base) {
                return Err(unsafe_path("leads out of the host root through a symlink"));
            }
        }
    }
    Ok(path)
}
