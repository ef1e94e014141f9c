//! Readiness: the container's systemd sends `READY=1` to `$NOTIFY_SOCKET` when
//! it has finished booting (the container interface's `/run/host/notify`).

use std::os::unix::net::UnixDatagram;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use super::ContainerError;

/// The host end of a container's notify socket.
#[derive(Debug)]
pub(crate) struct NotifySocket {
    socket: UnixDatagram,
    path: PathBuf,
}

impl NotifySocket {
    /// Binds a datagram socket at `path` (replacing a stale one).
    pub(crate) fn bind(path: &Path) -> Result<NotifySocket, ContainerError> {
        let _ = std::fs::remove_file(path);
        let socket = UnixDatagram::bind(path).map_err(|source| ContainerError::Io {
            what: "binding the notify socket",
            path: path.into(),
            source,
        })?;
        Ok(NotifySocket {
            socket,
            path: path.into(),
        })
    }

    /// Waits for `READY=1`, at most `timeout`. `alive` is asked between reads,
    /// so a PID 1 that dies is reported at once rather than at the deadline.
    /// Returns the last `STATUS=` seen, for diagnostics.
    pub(crate) fn wait_ready(
        &self,
        timeout: Duration,
        alive: impl Fn() -> bool,
    ) -> Result<Option<String>, ReadyError> {
        let start = Instant::now();
        let mut status = None;
        let mut buf = vec![0u8; 4096];
        loop {
            let left = timeout.saturating_sub(start.elapsed());
            if left.is_zero() {
                return Err(ReadyError::Timeout { status });
            }
            let slice = left.min(Duration::from_millis(50));
            self.socket
                .set_read_timeout(Some(slice))
                .map_err(|e| ReadyError::Io(self.path.clone(), e))?;
            match self.socket.recv(&mut buf) {
                Ok(n) => {
                    let text = String::from_utf8_lossy(&buf[..n]);
                    for line in text.lines() {
                        if line == "READY=1" {
                            return Ok(status);
                        }
                        if let Some(s) = line.strip_prefix("STATUS=") {
                            status = Some(s.to_owned());
                        }
                    }
                }
                Err(e)
                    if matches!(
                        e.kind(),
                        std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                    ) =>
                {
                    if !alive() {
                        return Err(ReadyError::Died { status });
                    }
                }
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(e) => return Err(ReadyError::Io(self.path.clone(), e)),
            }
        }
    }
}

impl Drop for NotifySocket {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

/// Why readiness did not come.
#[derive(Debug)]
pub(crate) enum ReadyError {
    /// The deadline passed.
    Timeout { status: Option<String> },
    /// PID 1 exited first.
    Died { status: Option<String> },
    /// The socket failed.
    Io(PathBuf, std::io::Error),
}
