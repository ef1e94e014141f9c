//! Timed writes of limit files: [`Cgroup::set_limit_within`]'s helper thread per write, and
//! the [`LimitWriter`] that keeps one long-lived thread for a daemon's many writes.

use std::fmt;
use std::fs;
use std::io::{self, Write as _};
use std::os::unix::fs::OpenOptionsExt as _;
use std::path::{Path, PathBuf};
use std::sync::mpsc;
use std::time::Duration;

use nix::fcntl::OFlag;

use super::{Limit, LimitFile};
use crate::cgroup::{Cgroup, CgroupError, write_error};

/// Writes `value` to `path` in one `write(2)`, the file opened with `flags` added.
fn write_flagged(path: &Path, value: &str, flags: OFlag) -> io::Result<()> {
    fs::OpenOptions::new()
        .write(true)
        .truncate(true) // the kernel ignores it; a fixture file wants it
        .custom_flags(flags.bits())
        .open(path)
        .and_then(|mut f| f.write_all(value.as_bytes()))
}

/// Logs the outcome of a write whose caller stopped waiting.
fn log_late_write(path: &Path, value: &str, outcome: &io::Result<()>) {
    tracing::warn!(file = %path.display(), %value, ?outcome,
        "cgroup write finished after its timeout");
}

/// Writes `value` to `path` (a file of the cgroup at `dir`, opened with `flags` added) on a
/// helper thread, waiting at most `timeout` for it.
pub(super) fn write_within(
    dir: &Path,
    path: PathBuf,
    value: String,
    flags: OFlag,
    timeout: Duration,
) -> Result<(), CgroupError> {
    let (tx, rx) = mpsc::channel();
    let (thread_path, thread_value) = (path.clone(), value.clone());
    let spawned = std::thread::Builder::new()
        .name("cgroup write".into())
        .spawn(move || {
            let result = write_flagged(&thread_path, &thread_value, flags);
            if let Err(result) = tx.send(result) {
                log_late_write(&thread_path, &thread_value, &result.0);
            }
        });
    if let Err(source) = spawned {
        return Err(write_error(dir, path, &value, source));
    }
    match rx.recv_timeout(timeout) {
        Ok(Ok(())) => Ok(()),
        Ok(Err(source)) => Err(write_error(dir, path, &value, source)),
        Err(_) => Err(CgroupError::TimedOut {
            path,
            value,
            after: timeout,
        }),
    }
}

/// One write for a [`LimitWriter`]'s thread.
struct WriteJob {
    path: PathBuf,
    value: String,
    reply: mpsc::SyncSender<io::Result<()>>,
}

/// Timed limit writes, as [`Cgroup::set_limit_within`] does them, on one long-lived helper
/// thread instead of a new thread per write: a daemon that writes `memory.high` of many
/// cgroups saves the thread start (tens of µs) per write.
///
/// When a write overruns its timeout, the writer abandons that thread (it finishes the
/// write, logs the outcome through `tracing`, and ends) and starts a new one for the next
/// write, so one blocked cgroup never holds up the others.
#[derive(Debug, Default)]
pub struct LimitWriter {
    jobs: Option<mpsc::Sender<WriteJob>>,
}

impl std::fmt::Debug for WriteJob {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "WriteJob({} <- {})", self.path.display(), self.value)
    }
}

impl LimitWriter {
    /// A writer; its thread starts with the first write.
    pub fn new() -> Self {
        Self::default()
    }

    /// Sets `file` of `cgroup` to `limit` (opened with O_NONBLOCK), waiting at most
    /// `timeout`; errors as [`Cgroup::set_limit_within`]'s.
    pub fn write(
        &mut self,
        cgroup: &Cgroup,
        file: LimitFile,
        limit: Limit,
        timeout: Duration,
    ) -> Result<(), CgroupError> {
        let mut results = self.write_all(&[(cgroup, file, limit)], timeout);
        results.pop().unwrap_or(Ok(()))
    }

    /// Carries out `writes` in order, all queued at once (one wake-up of the thread for a
    /// whole tick), waiting at most `timeout` for each; one result per write. Once a write
    /// overruns, the thread is abandoned with the writes still queued behind it: they are
    /// [`CgroupError::TimedOut`] too, and land (or fail, logged) when it gets to them.
    pub fn write_all(
        &mut self,
        writes: &[(&Cgroup, LimitFile, Limit)],
        timeout: Duration,
    ) -> Vec<Result<(), CgroupError>> {
        let mut queued = Vec::with_capacity(writes.len());
        for &(cgroup, file, limit) in writes {
            let path = cgroup.file(file.file_name());
            let value = limit.to_string();
            let (reply, replies) = mpsc::sync_channel(1);
            let job = WriteJob {
                path: path.clone(),
                value: value.clone(),
                reply,
            };
            let sent = self.send(job).map(|()| replies);
            queued.push((cgroup, path, value, sent));
        }
        let mut abandoned = false;
        let mut results = Vec::with_capacity(queued.len());
        for (cgroup, path, value, sent) in queued {
            let timed_out = |path, value| CgroupError::TimedOut {
                path,
                value,
                after: timeout,
            };
            let result = match sent {
                Err(source) => Err(cgroup.write_error(path, &value, source)),
                Ok(_) if abandoned => Err(timed_out(path, value)),
                Ok(replies) => match replies.recv_timeout(timeout) {
                    Ok(Ok(())) => Ok(()),
                    Ok(Err(source)) => Err(cgroup.write_error(path, &value, source)),
                    Err(mpsc::RecvTimeoutError::Timeout) => {
                        abandoned = true;
                        self.jobs = None; // the thread ends once its queue is done
                        Err(timed_out(path, value))
                    }
                    Err(mpsc::RecvTimeoutError::Disconnected) => Err(cgroup.write_error(
                        path,
                        &value,
                        io::Error::other("the writer thread ended without writing"),
                    )),
                },
            };
            results.push(result);
        }
        results
    }

    /// Queues `job` on the thread, starting one if needed (and once more if it ended).
    fn send(&mut self, mut job: WriteJob) -> io::Result<()> {
        for _ in 0..2 {
            let jobs = match &self.jobs {
                Some(jobs) => jobs,
                None => self.jobs.insert(spawn_writer()?),
            };
            match jobs.send(job) {
                Ok(()) => return Ok(()),
                Err(mpsc::SendError(back)) => {
                    job = back;
                    self.jobs = None;
                }
            }
        }
        Err(io::Error::other("the writer thread ended twice"))
    }
}

/// Starts a [`LimitWriter`] thread.
fn spawn_writer() -> io::Result<mpsc::Sender<WriteJob>> {
    let (jobs, queue) = mpsc::channel::<WriteJob>();
    std::thread::Builder::new()
        .name("cgroup limit writer".into())
        .spawn(move || {
            for job in queue {
                let result = write_flagged(&job.path, &job.value, OFlag::O_NONBLOCK);
                if let Err(result) = job.reply.send(result) {
                    log_late_write(&job.path, &job.value, &result.0);
                }
            }
        })?;
    Ok(jobs)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn a_blocked_write_times_out_and_finishes_later() {
        let dir = tempfile::tempdir().unwrap();
        let fifo = dir.path().join("memory.high");
        nix::unistd::mkfifo(&fifo, nix::sys::stat::Mode::S_IRWXU).unwrap();
        // Opening a FIFO for writing blocks until a reader comes, as a write that reclaims does.
        let started = std::time::Instant::now();
        let err = write_within(
            dir.path(),
            fifo.clone(),
            "104857600".into(),
            OFlag::empty(),
            Duration::from_millis(100),
        )
        .unwrap_err();
        assert!(started.elapsed() >= Duration::from_millis(100));
        assert!(matches!(err, CgroupError::TimedOut { .. }), "{err}");
        assert_eq!(
            err.to_string(),
            format!(
                "writing 104857600 to {}: not finished after 100ms",
                fifo.display()
            )
        );
        // The helper thread finishes the write once the reader comes.
        assert_eq!(fs::read_to_string(&fifo).unwrap(), "104857600");
    }
}
