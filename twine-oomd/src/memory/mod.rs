//! The cgroup2 memory controller's files: limits, usage, `memory.reclaim`, `memory.stat`,
//! `memory.events`, swap, and a lean [`MemorySnapshot`] for the daemon's tick.
//!
//! This file holds the limits and the keyed files; `snapshot` the [`MemorySnapshot`] and its
//! [`SnapshotReader`]; `write` the timed limit writes and the [`LimitWriter`].

use std::collections::HashMap;
use std::fmt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use nix::errno::Errno;
use nix::fcntl::OFlag;

use crate::cgroup::{Cgroup, CgroupError, read_path_into};

mod snapshot;
mod write;

pub use snapshot::{MemorySnapshot, SnapshotReader};
pub use write::LimitWriter;
use write::write_within;

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

    /// Sets a limit file. The kernel keeps limits in whole pages: a byte count is rounded
    /// down to a multiple of the page size (less than a page is 0), and [`Cgroup::limit`]
    /// reads back the rounded value (seen on 6.1 for all five files: 104857600 + 4095 reads
    /// back 104857600). Compare with a page-aligned value to notice external edits.
    ///
    /// Lowering `memory.high` or `memory.max` below `memory.current` blocks while the kernel
    /// reclaims down to the new value (6.1 in the guest tier: 1.9 s to push 96 MiB of busy
    /// anonymous memory to swap; `memory.max` OOM-kills when reclaim fails); see
    /// [`Cgroup::set_limit_within`].
    pub fn set_limit(&self, file: LimitFile, limit: Limit) -> Result<(), CgroupError> {
        self.write(file.file_name(), &limit.to_string())
    }

    /// Sets a limit file (typically `memory.high`), waiting at most `timeout`.
    ///
    /// The file is opened with O_NONBLOCK, which recent kernels document as "skip the
    /// synchronous reclaim" (cgroup-v2.rst, memory.high); older kernels ignore the flag: lowering the limit below `memory.current` blocks the writer while the
    /// kernel reclaims (6.1: `memory.high` 32 MiB over a busy 128 MiB hot set gave
    /// [`CgroupError::TimedOut`] after a 100 ms timeout; the cgroup reached the limit about a
    /// second later). So the write runs on a helper thread.
    ///
    /// [`CgroupError::TimedOut`] does not mean the limit was not set: the kernel stores the
    /// new value before it reclaims, so it is in force (and [`Cgroup::limit`] reads it back)
    /// when this returns. The helper thread stays in the kernel until the cgroup is at or
    /// under the value it wrote (or reclaim stops making progress), then logs the outcome
    /// through `tracing`. Each timed-out write may leave one more thread blocked: a daemon
    /// should not repeat it on every tick.
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
    use std::io;

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
}
