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
use std::sync::atomic::{AtomicU64, Ordering};

use crate::translate::UnitFile;

/// Why a unit set did not verify.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum VerifyError {
    /// `systemd-analyze` could not be run, or the files not written.
    #[error("{context}: {source}")]
    Io {
        /// What was being done, naming the path or program.
        context: String,
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
pub fn verify(files: &[UnitFile]) -> Result<(), VerifyError> {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let dir = std::env::temp_dir().join(format!(
        "twine-verify-{}-{}",
        std::process::id(),
        COUNTER.fetch_add(1, Ordering::Relaxed)
    ));
    let io = |context: String| move |source| VerifyError::Io { context, source };
    std::fs::create_dir_all(&dir).map_err(io(format!("creating {}", dir.display())))?;
    let result = (|| {
        let mut paths = Vec::with_capacity(files.len());
        for file in files {
            let path = dir.join(&file.name);
            std::fs::write(&path, &file.contents)
                .map_err(io(format!("writing {}", path.display())))?;
            paths.push(path);
        }
        verify_paths(&paths)
    })();
    let _ = std::fs::remove_dir_all(&dir);
    result
}

/// Runs `systemd-analyze verify --man=no` on unit files already on disk.
pub fn verify_paths(paths: &[PathBuf]) -> Result<(), VerifyError> {
    let output = Command::new("systemd-analyze")
        .arg("verify")
        .arg("--man=no")
        .args(paths)
        .env("SYSTEMD_LOG_COLOR", "0")
        .output()
        .map_err(|source| VerifyError::Io {
            context: "running systemd-analyze (apt: systemd)".to_owned(),
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
