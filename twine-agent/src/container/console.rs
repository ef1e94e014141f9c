//! `/dev/console`: a pseudo-terminal whose other end the agent drains into
//! `console.log` (bounded), so that systemd's boot messages are kept for
//! diagnostics and a writer to the console never blocks.

use std::fs::{File, OpenOptions};
use std::io::{Read as _, Write as _};
use std::os::fd::{AsFd as _, OwnedFd};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use nix::poll::{PollFd, PollFlags, PollTimeout, poll};
use std::path::{Path, PathBuf};

use super::ContainerError;

/// Most bytes kept in `console.log`; later output is read and dropped.
const CONSOLE_LOG_MAX: u64 = 1 << 20;

/// The terminal pair: the slave's path (bind-mounted at `/dev/console`) and the
/// master, until the drain thread takes it.
#[derive(Debug)]
pub(crate) struct Console {
    pub(crate) slave_path: PathBuf,
    master: OwnedFd,
    // Kept open until the container has opened the console, so the first
    // writer does not see a hang-up.
    slave: OwnedFd,
}

impl Console {
    /// Opens a new pseudo-terminal.
    pub(crate) fn open() -> Result<Console, ContainerError> {
        let pty = nix::pty::openpty(None, None).map_err(|e| ContainerError::Io {
            what: "opening a pseudo-terminal for /dev/console",
            path: "/dev/ptmx".into(),
            source: e.into(),
        })?;
        let slave_path = nix::unistd::ttyname(&pty.slave).map_err(|e| ContainerError::Io {
            what: "naming the console pseudo-terminal",
            path: "/dev/pts".into(),
            source: e.into(),
        })?;
        Ok(Console {
            slave_path,
            master: pty.master,
            slave: pty.slave,
        })
    }

    /// Starts draining into `log` on a thread of its own, until `stop` is set.
    ///
    /// The agent keeps its own slave descriptor open all along: systemd opens
    /// and closes `/dev/console` for each status line, and with no slave open
    /// the master would read end-of-file and the terminal would hang up.
    pub(crate) fn drain_into(
        self,
        log: &Path,
        stop: Arc<AtomicBool>,
    ) -> Result<(), ContainerError> {
        let mut out = OpenOptions::new()
            .create(true)
            .append(true)
            .open(log)
            .map_err(|source| ContainerError::Io {
                what: "opening console.log",
                path: log.into(),
                source,
            })?;
        let master = File::from(self.master);
        let slave = self.slave;
        std::thread::Builder::new()
            .name("twine-console".into())
            .spawn(move || {
                let _slave = slave;
                let mut master = master;
                let mut written = out.metadata().map_or(0, |m| m.len());
                let mut buf = [0u8; 8192];
                while !stop.load(Ordering::Relaxed) {
                    let mut fds = [PollFd::new(master.as_fd(), PollFlags::POLLIN)];
                    match poll(&mut fds, PollTimeout::from(200u16)) {
                        Ok(0) | Err(nix::errno::Errno::EINTR) => continue,
                        Ok(_) => {}
                        Err(_) => break,
                    }
                    match master.read(&mut buf) {
                        Ok(0) | Err(_) => break,
                        Ok(n) => {
                            if written < CONSOLE_LOG_MAX && out.write_all(&buf[..n]).is_ok() {
                                written += n as u64;
                            }
                        }
                    }
                }
            })
            .map_err(|source| ContainerError::Io {
                what: "starting the console drain thread",
                path: log.into(),
                source,
            })?;
        Ok(())
    }
}

/// The last `max` bytes of a console log, for error messages.
pub(crate) fn tail(log: &Path, max: usize) -> String {
    let bytes = std::fs::read(log).unwrap_or_default();
    let start = bytes.len().saturating_sub(max);
    String::from_utf8_lossy(&bytes[start..]).into_owned()
}
