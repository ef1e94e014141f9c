//! Checking rendered units with real systemd: `systemd-analyze verify`.
//!
//! This is the crate's only I/O besides reading spec files. systemd's own loader
//! is the judge of what a unit means, so it is run on every rendered set in the
//! tests and by `twine check`. It works without systemd as PID 1. Any output at
//! all counts as a failure: systemd reports unknown keys and bad values as
//! warnings and still exits 0.
//!
//! Note that systemd checks that each `ExecStart=` executable exists on the
//! machine that runs the check.

use std::path::{Path, PathBuf};
use std::process::Command;

use crate::translate::UnitFile;

/// Why a unit set did not verify.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum VerifyError {
    /// The temporary directory for the files could not be created.
    #[error("creating a temporary directory in {}: {source}", dir.display())]
    TempDir {
        /// Where it was to be created.
        dir: PathBuf,
        /// Why it failed.
        source: std::io::Error,
    },
    /// A unit file could not be written into the temporary directory.
    #[error("writing {}: {source}", path.display())]
    Write {
        /// The file.
        path: PathBuf,
        /// Why it failed.
        source: std::io::Error,
    },
    /// `systemd-analyze` could not be run.
    #[error("running {program} (apt: systemd): {source}")]
    Spawn {
        /// The program.
        program: &'static str,
        /// Why it failed.
        source: std::io::Error,
    },
    /// systemd rejected the units or warned about them.
    #[error("systemd-analyze verify {}: exit status {status}: {output}", files.join(" "))]
    Rejected {
        /// The unit files checked.
        files: Vec<String>,
        /// Its exit status (`-1` if killed by a signal).
        status: i32,
        /// Everything it printed, stdout then stderr.
        output: String,
    },
}

/// Writes `files` into a fresh temporary directory and runs `systemd-analyze verify` on them.
///
/// The directory is created by [`tempfile`] with a random name and mode 0700, so
/// a directory another user made first is never used; it is removed afterwards.
pub fn verify(files: &[UnitFile]) -> Result<(), VerifyError> {
    let dir = tempfile::Builder::new()
        .prefix("twine-verify-")
        .tempdir()
        .map_err(|source| VerifyError::TempDir {
            dir: std::env::temp_dir(),
            source,
        })?;
    let mut paths = Vec::with_capacity(files.len());
    for file in files {
        let path = dir.path().join(&file.name);
        std::fs::write(&path, &file.contents).map_err(|source| VerifyError::Write {
            path: path.clone(),
            source,
        })?;
        paths.push(path);
    }
    verify_paths(&paths)
}

/// Runs `systemd-analyze verify --man=no` on unit files already on disk.
pub fn verify_paths(paths: &[PathBuf]) -> Result<(), VerifyError> {
    let output = Command::new("systemd-analyze")
        .arg("verify")
        .arg("--man=no")
        .args(paths)
        .env("SYSTEMD_LOG_COLOR", "0")
        .output()
        .map_err(|source| VerifyError::Spawn {
            program: "systemd-analyze",
            source,
        })?;
    let mut printed = String::from_utf8_lossy(&output.stdout).into_owned();
    printed.push_str(&String::from_utf8_lossy(&output.stderr));
    if output.status.success() && printed.trim().is_empty() {
        Ok(())
    } else {
        Err(VerifyError::Rejected {
            files: paths.iter().map(|p| file_name(p)).collect(),
            status: output.status.code().unwrap_or(-1),
            output: printed.trim().to_owned(),
        })
    }
}

fn file_name(path: &Path) -> String {
    path.file_name().map_or_else(
        || path.display().to_string(),
        |n| n.to_string_lossy().into_owned(),
    )
}
