//! Every write twine makes goes through [`Writes`], so that a test can fail write N (a
//! crash between two writes) or emulate what the kernel does with a write.

use std::fs;
use std::io::{self, Write as _};
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::Path;

/// The writes an apply, a resume or a rollback makes, journal included. Paths are already
/// joined under the host root and checked to stay inside it.
pub trait Writes {
    /// One `write(2)` of `value` to an existing kernel file (`/proc/sys`, `/sys`, cgroupfs);
    /// it is not created when absent, and a symlink is not followed.
    fn write_live(&mut self, path: &Path, value: &str) -> io::Result<()>;

    /// Replaces a file atomically: a temporary file in the same directory, fsync, rename,
    /// fsync of the directory. An existing file's mode is kept; a new file gets 0644.
    fn replace_file(&mut self, path: &Path, content: &str) -> io::Result<()>;

    /// Removes a file (absent already: not an error).
    fn remove_file(&mut self, path: &Path) -> io::Result<()>;

    /// Enables and disables controllers in a `cgroup.subtree_control` file: one write of
    /// `+a +b -c`, as cgroupfs takes it.
    fn write_controllers(
        &mut self,
        path: &Path,
        enable: &[&str],
        disable: &[&str],
    ) -> io::Result<()> {
        let line: Vec<String> = enable
            .iter()
            .map(|c| format!("+{c}"))
            .chain(disable.iter().map(|c| format!("-{c}")))
            .collect();
        self.write_live(path, &line.join(" "))
    }
}

/// The writes of a real host: [`Writes`] on the filesystem as it is.
#[derive(Debug, Default, Clone, Copy)]
pub struct KernelWrites;

impl Writes for KernelWrites {
    fn write_live(&mut self, path: &Path, value: &str) -> io::Result<()> {
        let mut file = fs::OpenOptions::new()
            .write(true)
            .truncate(true)
            .custom_flags(libc::O_NOFOLLOW)
            .open(path)?;
        // One write: a kernel file takes the value of a single write(2).
        let n = file.write(value.as_bytes())?;
        if n != value.len() {
            return Err(io::Error::new(
                io::ErrorKind::WriteZero,
                format!("short write: {n} of {} bytes", value.len()),
            ));
        }
        Ok(())
    }

    fn replace_file(&mut self, path: &Path, content: &str) -> io::Result<()> {
        let dir = path
            .parent()
            .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "no parent directory"))?;
        let mode = match fs::symlink_metadata(path) {
            Ok(m) => m.permissions().mode() & 0o7777,
            Err(e) if e.kind() == io::ErrorKind::NotFound => 0o644,
            Err(e) => return Err(e),
        };
        let mut tmp = tempfile::Builder::new()
            .prefix(".twine-")
            .tempfile_in(dir)?;
        tmp.write_all(content.as_bytes())?;
        tmp.as_file()
            .set_permissions(fs::Permissions::from_mode(mode))?;
        tmp.as_file().sync_all()?;
        tmp.persist(path).map_err(|e| e.error)?;
        fs::File::open(dir)?.sync_all()
    }

    fn remove_file(&mut self, path: &Path) -> io::Result<()> {
        match fs::remove_file(path) {
            Err(e) if e.kind() != io::ErrorKind::NotFound => Err(e),
            _ => Ok(()),
        }
    }
}
