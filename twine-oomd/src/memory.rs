//! The cgroup2 memory controller's files: limits, usage, `memory.reclaim`, `memory.stat`,
//! `memory.events`, swap, and a lean [`MemorySnapshot`] for the daemon's tick.

use std::collections::HashMap;
use std::fmt;
use std::fs;
use std::io::{self, Write as _};
use std::os::unix::fs::FileExt as _;
use std::os::unix::fs::OpenOptionsExt as _;
use std::path::{Path, PathBuf};
use std::sync::mpsc;
use std::time::Duration;

use nix::errno::Errno;
use nix::fcntl::OFlag;

use crate::cgroup::{Cgroup, CgroupError, read_error, read_path_into, write_error};
use crate::psi::{Pressure, pressure_read_error};

/// A memory limit: `max` (none) or a number of bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Limit {
    /// A limit in bytes.
    Bytes(u64),
    /// No limit (`max`).
    Max,
}

impl Limit {
    /// Parses `max` or a decimal byte count (surrounding whitespace ignored).
    pub fn parse(text: &str) -> Option<Self> {
        match text.trim() {
            "max" => Some(Self::Max),
            n => n.parse().ok().map(Self::Bytes),
        }
    }
}

impl serde::Serialize for Limit {
    /// A number of bytes, or the string `"max"`.
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self {
            Self::Bytes(n) => s.serialize_u64(*n),
            Self::Max => s.serialize_str("max"),
        }
    }
}

impl fmt::Display for Limit {
    /// As the kernel writes it: `max` or the byte count.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Bytes(n) => write!(f, "{n}"),
            Self::Max => f.write_str("max"),
        }
    }
}

/// A memory limit file.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum LimitFile {
    /// `memory.high`: throttle and reclaim above it; never invokes the OOM killer.
    High,
    /// `memory.max`: hard limit; the OOM killer acts above it.
    Max,
    /// `memory.min`: hard protection.
    Min,
    /// `memory.low`: best-effort protection.
    Low,
    /// `memory.swap.max`: hard swap limit.
    SwapMax,
}

impl LimitFile {
    /// The cgroup file name, e.g. `memory.high`.
    pub fn file_name(self) -> &'static str {
        match self {
            Self::High => "memory.high",
            Self::Max => "memory.max",
            Self::Min => "memory.min",
            Self::Low => "memory.low",
            Self::SwapMax => "memory.swap.max",
        }
    }
}

/// Calls `each(key, value)` for every `key value` line of a flat-keyed file.
fn flat_keyed(path: &Path, text: &str, mut each: impl FnMut(&str, u64)) -> Result<(), CgroupError> {
    for line in text.lines().filter(|l| !l.is_empty()) {
        let (key, value) = line
            .split_once(' ')
            .and_then(|(k, v)| Some((k, v.trim().parse().ok()?)))
            .ok_or_else(|| CgroupError::Parse {
                path: path.to_owned(),
                line: line.to_owned(),
                reason: "`KEY VALUE` with a whole number",
            })?;
        each(key, value);
    }
    Ok(())
}

/// Parses a single-value file as a [`Limit`].
fn parse_limit(path: &Path, text: &str) -> Result<Limit, CgroupError> {
    Limit::parse(text).ok_or_else(|| CgroupError::Parse {
        path: path.to_owned(),
        line: text.trim_end().to_owned(),
        reason: "`max` or a byte count",
    })
}

/// Parses a single-value file holding a byte count.
fn parse_bytes(path: &Path, text: &str) -> Result<u64, CgroupError> {
    text.trim().parse().map_err(|_| CgroupError::Parse {
        path: path.to_owned(),
        line: text.trim_end().to_owned(),
        reason: "a byte count",
    })
}

/// `memory.stat`: every key, looked up by name (the kernel adds and reorders keys).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct MemoryStat {
    values: HashMap<String, u64>,
}

impl MemoryStat {
    /// The value of `key`, if the kernel reports it.
    pub fn get(&self, key: &str) -> Option<u64> {
        self.values.get(key).copied()
    }

    /// All keys and values.
    pub fn iter(&self) -> impl Iterator<Item = (&str, u64)> {
        self.values.iter().map(|(k, v)| (k.as_str(), *v))
    }
}

/// Typed accessors for the `memory.stat` keys the controllers use.
macro_rules! stat_accessors {
    ($($key:ident),*) => {
        impl MemoryStat {
            $(
                #[doc = concat!("`", stringify!($key), "` in bytes, if reported.")]
                pub fn $key(&self) -> Option<u64> {
                    self.get(stringify!($key))
                }
            )*
        }
    };
}
stat_accessors!(
    anon,
    file,
    shmem,
    active_anon,
    inactive_anon,
    active_file,
    inactive_file,
    unevictable
);

/// `memory.events` (hierarchical counts).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct MemoryEvents {
    /// Times reclaimed despite being under `memory.low`.
    pub low: u64,
    /// Times throttled for being over `memory.high`.
    pub high: u64,
    /// Times about to go over `memory.max`.
    pub max: u64,
    /// Times the OOM killer was considered.
    pub oom: u64,
    /// Processes killed by the OOM killer.
    pub oom_kill: u64,
    /// Group OOM kills (Linux 5.17+; `None` where the kernel lacks the key).
    pub oom_group_kill: Option<u64>,
}

/// `memory.swap.events`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct SwapEvents {
    /// Times swap usage went over `memory.swap.high`.
    pub high: u64,
    /// Times swap usage was about to go over `memory.swap.max`.
    pub max: u64,
    /// Times swap allocation failed.
    pub fail: u64,
}

/// The values of `keys` in the flat-keyed text of the file at `path`.
fn pick<const N: usize>(
    path: &Path,
    text: &str,
    keys: [&str; N],
) -> Result<[Option<u64>; N], CgroupError> {
    let mut out = [None; N];
    flat_keyed(path, text, |k, v| {
        if let Some(i) = keys.iter().position(|&key| key == k) {
            out[i] = Some(v);
        }
    })?;
    Ok(out)
}

/// `value`, the value of `key` in the file at `path`, which must be there.
fn required(path: &Path, key: &str, value: Option<u64>) -> Result<u64, CgroupError> {
    value.ok_or_else(|| CgroupError::Parse {
        path: path.to_owned(),
        line: key.to_owned(),
        reason: "a key that must be there is missing",
    })
}

/// The files of the memory controller.
impl Cgroup {
    /// `memory.current` in bytes.
    pub fn memory_current(&self) -> Result<u64, CgroupError> {
        self.read_value("memory.current", parse_bytes)
    }

    /// `memory.swap.current` in bytes.
    pub fn swap_current(&self) -> Result<u64, CgroupError> {
        self.read_value("memory.swap.current", parse_bytes)
    }

    /// The current value of a limit file.
    pub fn limit(&self, file: LimitFile) -> Result<Limit, CgroupError> {
        self.read_value(file.file_name(), parse_limit)
    }

    /// Sets a limit file. Lowering `memory.high` or `memory.max` may block while the kernel
    /// reclaims down to the new value; see [`Cgroup::set_limit_within`].
    pub fn set_limit(&self, file: LimitFile, limit: Limit) -> Result<(), CgroupError> {
        self.write(file.file_name(), &limit.to_string())
    }

    /// Sets a limit file (typically `memory.high`), waiting at most `timeout`. The file is opened with O_NONBLOCK, which
    /// recent kernels take as "skip synchronous reclaim"; older ones may still block, so the
    /// write runs on a helper thread. On [`CgroupError::TimedOut`] that thread goes on and
    /// finishes the write later, logging its outcome through `tracing`.
    pub fn set_limit_within(
        &self,
        file: LimitFile,
        limit: Limit,
        timeout: Duration,
    ) -> Result<(), CgroupError> {
        write_within(
            self.path(),
            self.file(file.file_name()),
            limit.to_string(),
            OFlag::O_NONBLOCK,
            timeout,
        )
    }

    /// Asks the kernel to reclaim `bytes` from the cgroup (`memory.reclaim`, Linux 5.19+).
    /// EAGAIN or EBUSY (less reclaimed than asked) is [`CgroupError::ReclaimShort`], so the
    /// caller can retry a bounded number of times.
    pub fn reclaim(&self, bytes: u64) -> Result<(), CgroupError> {
        self.write("memory.reclaim", &bytes.to_string())
            .map_err(short_reclaim)
    }

    /// `memory.stat`, every key.
    pub fn memory_stat(&self) -> Result<MemoryStat, CgroupError> {
        let (path, text) = self.read_text("memory.stat")?;
        let mut values = HashMap::new();
        flat_keyed(&path, &text, |k, v| {
            values.insert(k.to_owned(), v);
        })?;
        Ok(MemoryStat { values })
    }

    /// `memory.events`.
    pub fn memory_events(&self) -> Result<MemoryEvents, CgroupError> {
        const KEYS: [&str; 6] = ["low", "high", "max", "oom", "oom_kill", "oom_group_kill"];
        let (path, text) = self.read_text("memory.events")?;
        let v = pick(&path, &text, KEYS)?;
        let need = |i: usize| required(&path, KEYS[i], v[i]);
        Ok(MemoryEvents {
            low: need(0)?,
            high: need(1)?,
            max: need(2)?,
            oom: need(3)?,
            oom_kill: need(4)?,
            oom_group_kill: v[5],
        })
    }

    /// `memory.swap.events`.
    pub fn swap_events(&self) -> Result<SwapEvents, CgroupError> {
        const KEYS: [&str; 3] = ["high", "max", "fail"];
        let (path, text) = self.read_text("memory.swap.events")?;
        let v = pick(&path, &text, KEYS)?;
        let need = |i: usize| required(&path, KEYS[i], v[i]);
        Ok(SwapEvents {
            high: need(0)?,
            max: need(1)?,
            fail: need(2)?,
        })
    }

    /// The path and text of the file `name`.
    fn read_text(&self, name: &str) -> Result<(PathBuf, String), CgroupError> {
        let mut text = String::new();
        self.read_into(name, &mut text)?;
        Ok((self.file(name), text))
    }

    /// Reads the single-value file `name` and parses it.
    fn read_value<T>(
        &self,
        name: &str,
        parse: fn(&Path, &str) -> Result<T, CgroupError>,
    ) -> Result<T, CgroupError> {
        read_parsed(self.path(), &self.file(name), &mut String::new(), parse)
    }
}

/// What the controllers observe of one cgroup's memory in one tick.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct MemorySnapshot {
    /// `memory.current`.
    pub current: u64,
    /// `memory.high`.
    pub high: Limit,
    /// `memory.max`.
    pub max: Limit,
    /// `memory.min`.
    pub min: Limit,
    /// `memory.low`.
    pub low: Limit,
    /// `memory.pressure`.
    pub pressure: Pressure,
    /// `memory.stat` `anon`.
    pub anon: u64,
    /// `memory.stat` `file`.
    pub file: u64,
    /// `memory.stat` `shmem`.
    pub shmem: u64,
    /// `memory.stat` `active_anon`.
    pub active_anon: u64,
    /// `memory.stat` `inactive_anon`.
    pub inactive_anon: u64,
    /// `memory.stat` `active_file`.
    pub active_file: u64,
    /// `memory.stat` `inactive_file`.
    pub inactive_file: u64,
    /// `memory.stat` `unevictable`.
    pub unevictable: u64,
}

/// The pressure file a [`SnapshotReader`] reads.
const PRESSURE: &str = "memory.pressure";

/// The files a [`SnapshotReader`] reads, in order.
const SNAPSHOT_FILES: [&str; 7] = [
    "memory.current",
    "memory.high",
    "memory.max",
    "memory.min",
    "memory.low",
    PRESSURE,
    "memory.stat",
];

/// The `memory.stat` keys a snapshot needs.
const SNAPSHOT_STAT_KEYS: [&str; 8] = [
    "anon",
    "file",
    "shmem",
    "active_anon",
    "inactive_anon",
    "active_file",
    "inactive_file",
    "unevictable",
];

/// Reads [`MemorySnapshot`]s of one cgroup, cheaply enough for a tick over many cgroups.
///
/// It keeps the seven files open and re-reads each with `pread` from offset 0 into one reused
/// buffer: on cgroupfs an open costs about 8 µs, a `pread` 0.5-2 µs (measured on the CI host,
/// kernel 6.18), so a snapshot costs a few microseconds and allocates nothing. The price is
/// seven file descriptors per cgroup: a daemon over many cgroups should raise its
/// `RLIMIT_NOFILE` soft limit (often 1024) towards the hard one.
///
/// On the kernel, the files of a removed cgroup read ENODEV, which is
/// [`CgroupError::CgroupGone`]. (A fixture's regular files stay readable after removal: make
/// a new reader to see the removal there.)
#[derive(Debug)]
pub struct SnapshotReader {
    dir: PathBuf,
    files: [KeptFile; SNAPSHOT_FILES.len()],
    scratch: Vec<u8>,
}

/// A file kept open to be re-read from its start.
#[derive(Debug)]
struct KeptFile {
    path: PathBuf,
    file: fs::File,
}

impl KeptFile {
    /// The whole file, read with `pread` from offset 0 into `scratch` (grown as needed).
    fn read<'s>(&self, scratch: &'s mut Vec<u8>) -> io::Result<&'s str> {
        let mut filled = 0;
        loop {
            if filled == scratch.len() {
                scratch.resize((scratch.len() * 2).max(4096), 0);
            }
            let n = self.file.read_at(&mut scratch[filled..], filled as u64)?;
            if n == 0 {
                break;
            }
            filled += n;
        }
        std::str::from_utf8(&scratch[..filled])
            .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))
    }
}

impl SnapshotReader {
    /// Opens the files of `cgroup`. A missing `memory.pressure` is
    /// [`CgroupError::PsiUnavailable`]; any other missing file a [`CgroupError::Read`].
    pub fn new(cgroup: &Cgroup) -> Result<Self, CgroupError> {
        let dir = cgroup.path().to_owned();
        let mut opened = Vec::with_capacity(SNAPSHOT_FILES.len());
        for name in SNAPSHOT_FILES {
            let path = cgroup.file(name);
            match fs::File::open(&path) {
                Ok(file) => opened.push(KeptFile { path, file }),
                Err(source) if name == PRESSURE => {
                    return Err(pressure_read_error(&dir, path, source));
                }
                Err(source) => return Err(read_error(&dir, path, source)),
            }
        }
        let files = opened.try_into().map_err(|_| CgroupError::Read {
            path: dir.clone(),
            source: io::Error::other("opened a different number of files than listed"),
        })?;
        Ok(Self {
            dir,
            files,
            scratch: vec![0; 16 * 1024],
        })
    }

    /// Reads one snapshot. Missing PSI is [`CgroupError::PsiUnavailable`], a vanished cgroup
    /// [`CgroupError::CgroupGone`], and a missing `memory.stat` key a [`CgroupError::Parse`].
    pub fn read(&mut self) -> Result<MemorySnapshot, CgroupError> {
        let [current, high, max, min, low, pressure, stat] = &self.files;
        let (scratch, dir) = (&mut self.scratch, &self.dir);
        let current = kept_parsed(dir, current, scratch, parse_bytes)?;
        let high = kept_parsed(dir, high, scratch, parse_limit)?;
        let max = kept_parsed(dir, max, scratch, parse_limit)?;
        let min = kept_parsed(dir, min, scratch, parse_limit)?;
        let low = kept_parsed(dir, low, scratch, parse_limit)?;
        let text = pressure
            .read(scratch)
            .map_err(|source| pressure_read_error(dir, pressure.path.clone(), source))?;
        let pressure = Pressure::parse(&pressure.path, text)?;
        let text = kept_text(dir, stat, scratch)?;
        let v = pick(&stat.path, text, SNAPSHOT_STAT_KEYS)?;
        let need = |i: usize| required(&stat.path, SNAPSHOT_STAT_KEYS[i], v[i]);
        let snap = MemorySnapshot {
            current,
            high,
            max,
            min,
            low,
            pressure,
            anon: need(0)?,
            file: need(1)?,
            shmem: need(2)?,
            active_anon: need(3)?,
            inactive_anon: need(4)?,
            active_file: need(5)?,
            inactive_file: need(6)?,
            unevictable: need(7)?,
        };
        Ok(snap)
    }
}

/// The text of a kept file of the cgroup at `dir`; ENODEV (the file's cgroup was removed)
/// is [`CgroupError::CgroupGone`] even when a new cgroup of the same name exists.
fn kept_text<'s>(
    dir: &Path,
    kept: &KeptFile,
    scratch: &'s mut Vec<u8>,
) -> Result<&'s str, CgroupError> {
    kept.read(scratch).map_err(|source| {
        if source.raw_os_error() == Some(Errno::ENODEV as i32) {
            CgroupError::CgroupGone {
                path: kept.path.clone(),
            }
        } else {
            read_error(dir, kept.path.clone(), source)
        }
    })
}

/// A kept file's text, parsed.
fn kept_parsed<T>(
    dir: &Path,
    kept: &KeptFile,
    scratch: &mut Vec<u8>,
    parse: fn(&Path, &str) -> Result<T, CgroupError>,
) -> Result<T, CgroupError> {
    parse(&kept.path, kept_text(dir, kept, scratch)?)
}

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
fn write_within(
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
        let path = cgroup.file(file.file_name());
        let value = limit.to_string();
        let (reply, replies) = mpsc::sync_channel(1);
        let mut job = WriteJob {
            path: path.clone(),
            value: value.clone(),
            reply,
        };
        // A thread that ended (it cannot, short of a panic) is replaced once.
        for _ in 0..2 {
            let jobs = match &self.jobs {
                Some(jobs) => jobs,
                None => {
                    let jobs = spawn_writer()
                        .map_err(|source| cgroup.write_error(path.clone(), &value, source))?;
                    self.jobs.insert(jobs)
                }
            };
            match jobs.send(job) {
                Ok(()) => break,
                Err(mpsc::SendError(back)) => {
                    job = back;
                    self.jobs = None;
                }
            }
        }
        match replies.recv_timeout(timeout) {
            Ok(Ok(())) => Ok(()),
            Ok(Err(source)) => Err(cgroup.write_error(path, &value, source)),
            Err(mpsc::RecvTimeoutError::Timeout) => {
                self.jobs = None; // the thread ends after its blocked write
                Err(CgroupError::TimedOut {
                    path,
                    value,
                    after: timeout,
                })
            }
            Err(mpsc::RecvTimeoutError::Disconnected) => Err(cgroup.write_error(
                path,
                &value,
                io::Error::other("the writer thread ended without writing"),
            )),
        }
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

/// A failed `memory.reclaim` write with EAGAIN or EBUSY as [`CgroupError::ReclaimShort`].
fn short_reclaim(err: CgroupError) -> CgroupError {
    match err {
        CgroupError::Write {
            path,
            value,
            source,
        } if matches!(
            source.raw_os_error().map(Errno::from_raw),
            Some(Errno::EAGAIN | Errno::EBUSY)
        ) =>
        {
            CgroupError::ReclaimShort {
                path,
                value,
                source,
            }
        }
        other => other,
    }
}

/// Reads the file at `path` (of the cgroup at `dir`) into `buf` and parses it.
fn read_parsed<T>(
    dir: &Path,
    path: &Path,
    buf: &mut String,
    parse: fn(&Path, &str) -> Result<T, CgroupError>,
) -> Result<T, CgroupError> {
    read_path_into(dir, path, buf)?;
    parse(path, buf)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn limits_parse_and_print() {
        assert_eq!(Limit::parse("max\n"), Some(Limit::Max));
        assert_eq!(Limit::parse("104857600\n"), Some(Limit::Bytes(104_857_600)));
        assert_eq!(Limit::parse("-1"), None);
        assert_eq!(Limit::parse(""), None);
        assert_eq!(Limit::Bytes(4096).to_string(), "4096");
        assert_eq!(Limit::Max.to_string(), "max");
        assert!(Limit::Bytes(u64::MAX) < Limit::Max);
    }

    #[test]
    fn flat_keyed_refuses_garbage() {
        let p = Path::new("/x/memory.stat");
        let mut n = 0;
        flat_keyed(p, "anon 1\nfile 2\n", |_, _| n += 1).unwrap();
        assert_eq!(n, 2);
        let err = flat_keyed(p, "anon 1\nfile two\n", |_, _| {}).unwrap_err();
        assert!(err.to_string().contains("\"file two\""), "{err}");
        assert!(err.to_string().contains("/x/memory.stat"), "{err}");
    }

    #[test]
    fn reclaim_eagain_and_ebusy_are_short_reclaims() {
        let write = |errno: Errno| CgroupError::Write {
            path: "/cg/x/memory.reclaim".into(),
            value: "1048576".into(),
            source: io::Error::from(errno),
        };
        for errno in [Errno::EAGAIN, Errno::EBUSY] {
            let err = short_reclaim(write(errno));
            assert!(matches!(err, CgroupError::ReclaimShort { .. }), "{err}");
            assert!(
                err.to_string()
                    .starts_with("writing 1048576 to /cg/x/memory.reclaim: reclaimed less"),
                "{err}"
            );
        }
        let err = short_reclaim(write(Errno::EINVAL));
        assert!(matches!(err, CgroupError::Write { .. }), "{err}");
    }

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
