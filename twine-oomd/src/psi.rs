//! Pressure stall information: reading `memory.pressure`, `cpu.pressure` and `io.pressure`,
//! and PSI triggers waited on with `poll`.
//!
//! Facts from the kernel this was tested on (6.18, hybrid host, root without
//! CAP_SYS_RESOURCE): a trigger whose window is not a multiple of 2 s is refused with EINVAL;
//! a second trigger on the same fd gives EBUSY; after `rmdir` of the cgroup, `poll` returns
//! POLLPRI|POLLERR at once, and reads on the kept fd give ENODEV. Writing `0` to
//! `cgroup.pressure` removes the pressure files (ENOENT) while the cgroup stays.
//!
//! In the guest tier (Debian's 6.1, root with CAP_SYS_RESOURCE; `tests/guest_io.rs`): a
//! `some 50000 2000000` trigger on a cgroup's `memory.pressure` fires within 0.3 s of
//! `memory.high` going below the workload's hot set, and not in 3 s without it; after
//! `rmdir` the wait says POLLERR (cgroup gone). With `0` in `cgroup.pressure`, kept fds read
//! ENODEV and a trigger's poll gives POLLPRI|POLLERR; after `1`, the kept fds still read
//! ENODEV and the trigger stays dead, while fresh opens work.

use std::fs;
use std::io::{self, Write as _};
use std::os::fd::AsFd as _;
use std::os::unix::fs::OpenOptionsExt as _;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use nix::errno::Errno;
use nix::fcntl::OFlag;
use nix::poll::{PollFd, PollFlags, PollTimeout, poll};

use crate::cgroup::{Cgroup, CgroupError, gone};

/// The resource a pressure file is about.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Resource {
    /// `memory.pressure`
    Memory,
    /// `cpu.pressure`
    Cpu,
    /// `io.pressure`
    Io,
}

impl Resource {
    /// The cgroup file name, e.g. `memory.pressure`.
    pub fn file_name(self) -> &'static str {
        match self {
            Self::Memory => "memory.pressure",
            Self::Cpu => "cpu.pressure",
            Self::Io => "io.pressure",
        }
    }
}

/// One line of a pressure file.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct PressureLine {
    /// Percent of the last 10 s stalled.
    pub avg10: f32,
    /// Percent of the last 60 s stalled.
    pub avg60: f32,
    /// Percent of the last 300 s stalled.
    pub avg300: f32,
    /// Total stall time in microseconds (monotonic).
    pub total_us: u64,
}

/// The contents of a pressure file.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct Pressure {
    /// Some task stalled.
    pub some: PressureLine,
    /// All non-idle tasks stalled; `None` where the kernel has no `full` line (old `cpu.pressure`).
    pub full: Option<PressureLine>,
}

impl Pressure {
    /// Parses the text of the pressure file at `path` (named in a [`CgroupError::Parse`]
    /// with the offending line).
    pub fn parse(path: &Path, text: &str) -> Result<Self, CgroupError> {
        Self::parse_lines(text).map_err(|(line, reason)| CgroupError::Parse {
            path: path.to_owned(),
            line,
            reason,
        })
    }

    /// Parses pressure-file text; on failure, the offending line and what was expected.
    fn parse_lines(text: &str) -> Result<Self, (String, &'static str)> {
        let mut some = None;
        let mut full = None;
        for line in text.lines().filter(|l| !l.is_empty()) {
            let bad = |reason| (line.to_owned(), reason);
            let mut fields = line.split(' ');
            let slot = match fields.next() {
                Some("some") => &mut some,
                Some("full") => &mut full,
                _ => return Err(bad("a line starting with `some` or `full`")),
            };
            if slot.is_some() {
                return Err(bad("each of `some` and `full` once"));
            }
            let mut value = |key: &str| {
                fields
                    .next()
                    .and_then(|f| f.strip_prefix(key))
                    .and_then(|f| f.strip_prefix('='))
                    .ok_or_else(|| bad("avg10=, avg60=, avg300= and total= in that order"))
            };
            let avg = |v: &str| v.parse::<f32>().map_err(|_| bad("a decimal percentage"));
            let parsed = PressureLine {
                avg10: avg(value("avg10")?)?,
                avg60: avg(value("avg60")?)?,
                avg300: avg(value("avg300")?)?,
                total_us: value("total")?
                    .parse()
                    .map_err(|_| bad("total= in microseconds"))?,
            };
            if fields.next().is_some() {
                return Err(bad("nothing after total="));
            }
            *slot = Some(parsed);
        }
        let some = some.ok_or_else(|| (text.to_owned(), "a `some` line"))?;
        Ok(Self { some, full })
    }
}

/// The error for a failed read of a pressure file: a vanished cgroup, missing PSI, or a
/// plain read error.
pub(crate) fn pressure_read_error(dir: &Path, path: PathBuf, source: io::Error) -> CgroupError {
    if gone(dir, &source) {
        return CgroupError::CgroupGone { path };
    }
    match source.raw_os_error().map(Errno::from_raw) {
        Some(Errno::ENOENT | Errno::ENODEV | Errno::EOPNOTSUPP) => CgroupError::PsiUnavailable {
            path,
            reason: source.to_string(),
        },
        _ => CgroupError::Read { path, source },
    }
}

impl Cgroup {
    /// Reads the cgroup's pressure file for `resource`.
    ///
    /// A missing file or EOPNOTSUPP is [`CgroupError::PsiUnavailable`]; a cgroup that
    /// vanished is [`CgroupError::CgroupGone`].
    pub fn pressure(&self, resource: Resource) -> Result<Pressure, CgroupError> {
        let path = self.file(resource.file_name());
        let text = fs::read_to_string(&path)
            .map_err(|source| pressure_read_error(self.path(), path.clone(), source))?;
        Pressure::parse(&path, &text)
    }

    /// Registers `trigger` on the cgroup's pressure file for `resource`.
    pub fn register_trigger(
        &self,
        resource: Resource,
        trigger: Trigger,
    ) -> Result<PsiTrigger, CgroupError> {
        let path = self.file(resource.file_name());
        let value = trigger.to_string();
        let mut file = fs::OpenOptions::new()
            .read(true)
            .write(true)
            .custom_flags(OFlag::O_NONBLOCK.bits())
            .open(&path)
            .map_err(|source| pressure_read_error(self.path(), path.clone(), source))?;
        if let Err(source) = file.write_all(value.as_bytes()) {
            let errno = source.raw_os_error().map(Errno::from_raw);
            let two_s = Duration::from_secs(2);
            let unprivileged_ok = trigger.window.as_micros().is_multiple_of(two_s.as_micros());
            return Err(match errno {
                Some(Errno::EPERM | Errno::EINVAL) if !unprivileged_ok => {
                    CgroupError::TriggerNeedsPrivilege {
                        path,
                        value,
                        source,
                    }
                }
                _ => self.write_error(path, &value, source),
            });
        }
        tracing::debug!(file = %path.display(), trigger = %value, "registered PSI trigger");
        Ok(PsiTrigger {
            file,
            path,
            cgroup_dir: self.path().to_owned(),
        })
    }
}

/// Which pressure line a trigger watches.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stall {
    /// Some task stalled.
    Some,
    /// All non-idle tasks stalled.
    Full,
}

/// A validated PSI trigger: fire when `threshold` of stall accrues within `window`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Trigger {
    stall: Stall,
    threshold: Duration,
    window: Duration,
}

impl Trigger {
    /// Smallest window the kernel accepts.
    pub const MIN_WINDOW: Duration = Duration::from_millis(500);
    /// Largest window the kernel accepts.
    pub const MAX_WINDOW: Duration = Duration::from_secs(10);

    /// A trigger; the window must be 500 ms..=10 s and the threshold at most the window.
    /// (Without CAP_SYS_RESOURCE the kernel also wants a window that is a multiple of 2 s;
    /// that is reported at registration as [`CgroupError::TriggerNeedsPrivilege`].)
    pub fn new(stall: Stall, threshold: Duration, window: Duration) -> Result<Self, CgroupError> {
        let trigger = Self {
            stall,
            threshold,
            window,
        };
        let refuse = |reason| CgroupError::InvalidTrigger {
            value: trigger.to_string(),
            reason,
        };
        if !(Self::MIN_WINDOW..=Self::MAX_WINDOW).contains(&window) {
            return Err(refuse("the window must be between 500 ms and 10 s"));
        }
        if threshold.is_zero() || threshold > window {
            return Err(refuse(
                "the threshold must be above 0 and at most the window",
            ));
        }
        Ok(trigger)
    }
}

impl std::fmt::Display for Trigger {
    /// The line written to the pressure file: `some|full THRESHOLD_US WINDOW_US`.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let stall = match self.stall {
            Stall::Some => "some",
            Stall::Full => "full",
        };
        write!(
            f,
            "{stall} {} {}",
            self.threshold.as_micros(),
            self.window.as_micros()
        )
    }
}

/// What a wait on a [`PsiTrigger`] saw.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TriggerEvent {
    /// The stall threshold was crossed within the window.
    Fired,
    /// The timeout passed first.
    TimedOut,
}

/// A registered trigger; it stays registered while this value (and its fd) lives.
#[derive(Debug)]
pub struct PsiTrigger {
    file: fs::File,
    path: PathBuf,
    cgroup_dir: PathBuf,
}

impl PsiTrigger {
    /// The pressure file the trigger is registered on.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Waits up to `timeout` (rounded up to milliseconds, at most about 24 days) for the
    /// trigger. POLLERR (the kernel reports it with POLLPRI when the cgroup is removed) is
    /// [`CgroupError::CgroupGone`], or [`CgroupError::PsiUnavailable`] when the cgroup is
    /// still there (its PSI was disabled). Either way the trigger is dead, and every later
    /// wait returns the same error at once, even once PSI is back: drop it and register a
    /// new one.
    pub fn wait(&self, timeout: Duration) -> Result<TriggerEvent, CgroupError> {
        let deadline = Instant::now() + timeout;
        let mut fds = [PollFd::new(self.file.as_fd(), PollFlags::POLLPRI)];
        let ready = loop {
            let left = deadline.saturating_duration_since(Instant::now());
            // Rounded up to whole milliseconds, so the wait is never shorter than asked.
            let left =
                PollTimeout::try_from(left.as_micros().div_ceil(1000)).unwrap_or(PollTimeout::MAX);
            match poll(&mut fds, left) {
                Err(Errno::EINTR) => continue, // a signal: wait for what is left
                other => break other,
            }
        };
        let ready = ready.map_err(|e| CgroupError::Read {
            path: self.path.clone(),
            source: io::Error::from(e),
        })?;
        if ready == 0 {
            return Ok(TriggerEvent::TimedOut);
        }
        let revents = fds[0].revents().unwrap_or(PollFlags::empty());
        if revents.intersects(PollFlags::POLLERR | PollFlags::POLLHUP | PollFlags::POLLNVAL) {
            let path = self.path.clone();
            return Err(if self.cgroup_dir.is_dir() {
                CgroupError::PsiUnavailable {
                    path,
                    reason: format!("poll returned {revents:?} while the cgroup is still there"),
                }
            } else {
                CgroupError::CgroupGone { path }
            });
        }
        Ok(TriggerEvent::Fired)
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn parses_some_and_full() {
        let p = Pressure::parse_lines(
            "some avg10=1.50 avg60=0.25 avg300=0.00 total=92417\nfull avg10=0.00 avg60=0.00 avg300=0.00 total=12\n",
        )
        .unwrap();
        assert_eq!(p.some.avg10, 1.5);
        assert_eq!(p.some.avg60, 0.25);
        assert_eq!(p.some.total_us, 92417);
        assert_eq!(p.full.unwrap().total_us, 12);
        let cpu_old =
            Pressure::parse_lines("some avg10=0.00 avg60=0.00 avg300=0.00 total=7\n").unwrap();
        assert_eq!(cpu_old.full, None);
    }

    #[test]
    fn garbage_names_the_line() {
        for (text, line) in [
            ("junk\n", "junk"),
            (
                "some avg10=x avg60=0 avg300=0 total=1\n",
                "some avg10=x avg60=0 avg300=0 total=1",
            ),
            (
                "some avg10=0 avg60=0 avg300=0\n",
                "some avg10=0 avg60=0 avg300=0",
            ),
            (
                "some avg10=0 avg60=0 avg300=0 total=-1\n",
                "some avg10=0 avg60=0 avg300=0 total=-1",
            ),
            (
                "some avg10=0 avg60=0 avg300=0 total=1 x\n",
                "some avg10=0 avg60=0 avg300=0 total=1 x",
            ),
            (
                "full avg10=0 avg60=0 avg300=0 total=1\n",
                "full avg10=0 avg60=0 avg300=0 total=1\n",
            ),
            ("", ""),
        ] {
            assert_eq!(Pressure::parse_lines(text).unwrap_err().0, line, "{text:?}");
        }
        let twice =
            "some avg10=0 avg60=0 avg300=0 total=1\nsome avg10=0 avg60=0 avg300=0 total=1\n";
        assert!(Pressure::parse_lines(twice).is_err());
    }

    #[test]
    fn classifies_pressure_read_errors() {
        let dir = Path::new("/"); // a cgroup that is still there
        let path = || PathBuf::from("/cg/memory.pressure");
        for errno in [Errno::ENOENT, Errno::EOPNOTSUPP, Errno::ENODEV] {
            let err = pressure_read_error(dir, path(), io::Error::from(errno));
            assert!(matches!(err, CgroupError::PsiUnavailable { .. }), "{err}");
        }
        let err = pressure_read_error(dir, path(), io::Error::from(Errno::EACCES));
        assert!(matches!(err, CgroupError::Read { .. }), "{err}");
        let gone = Path::new("/nonexistent/twine-oomd/cgroup");
        let err = pressure_read_error(gone, path(), io::Error::from(Errno::ENOENT));
        assert!(matches!(err, CgroupError::CgroupGone { .. }), "{err}");
    }

    #[test]
    fn validates_triggers() {
        let ms = Duration::from_millis;
        let t = Trigger::new(Stall::Full, ms(150), ms(2000)).unwrap();
        assert_eq!(t.to_string(), "full 150000 2000000");
        for (threshold, window) in [
            (ms(100), ms(499)),
            (ms(100), ms(10_001)),
            (ms(0), ms(1000)),
            (ms(1001), ms(1000)),
        ] {
            let err = Trigger::new(Stall::Some, threshold, window).unwrap_err();
            assert!(matches!(err, CgroupError::InvalidTrigger { .. }), "{err}");
        }
        assert!(Trigger::new(Stall::Some, ms(500), ms(500)).is_ok());
        assert!(Trigger::new(Stall::Some, ms(1), ms(10_000)).is_ok());
    }
}
