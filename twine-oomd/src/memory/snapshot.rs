//! [`MemorySnapshot`], what the daemon's tick reads of one cgroup, and the
//! [`SnapshotReader`] that reads it from files kept open.

use std::fs;
use std::io;
use std::os::unix::fs::FileExt as _;
use std::path::{Path, PathBuf};

use nix::errno::Errno;

use super::{Limit, parse_bytes, parse_limit, pick, required};
use crate::cgroup::{Cgroup, CgroupError, read_error};
use crate::psi::{Pressure, pressure_read_error};

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
/// a new reader to see the removal there.) PSI turned off for the cgroup (`0` in
/// `cgroup.pressure`) is [`CgroupError::PsiUnavailable`] until it is turned on again; the
/// reader then reads pressure again by itself (it reopens `memory.pressure`).
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
            let space = scratch.len() - filled;
            let n = self.file.read_at(&mut scratch[filled..], filled as u64)?;
            filled += n;
            // A short read is the end: the snapshot's files are each printed by one kernfs
            // `seq_show` (so one read returns all of it when it fits) or are regular fixture
            // files; this saves a second, empty `pread` per file. (Multi-record files such as
            // cgroup.procs can read short before their end; they are not read here.)
            if n < space {
                break;
            }
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
        let [current, high, max, min, low, pressure, stat] = &mut self.files;
        let (scratch, dir) = (&mut self.scratch, &self.dir);
        let current = kept_parsed(dir, current, scratch, parse_bytes)?;
        let high = kept_parsed(dir, high, scratch, parse_limit)?;
        let max = kept_parsed(dir, max, scratch, parse_limit)?;
        let min = kept_parsed(dir, min, scratch, parse_limit)?;
        let low = kept_parsed(dir, low, scratch, parse_limit)?;
        // After the five files above: they tell a removed cgroup (ENODEV) from a live one.
        let pressure = kept_pressure(dir, pressure, scratch)?;
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

/// The kept `memory.pressure` of a live cgroup, parsed. ENODEV there means PSI was turned off
/// through `cgroup.pressure`; the kept descriptor keeps reading ENODEV after it is turned
/// back on (seen on 6.1) while a fresh open reads, so the file is opened again: missing PSI
/// is [`CgroupError::PsiUnavailable`] for as long as the file is missing, and no longer.
fn kept_pressure(
    dir: &Path,
    kept: &mut KeptFile,
    scratch: &mut Vec<u8>,
) -> Result<Pressure, CgroupError> {
    match kept.read(scratch) {
        Ok(text) => return Pressure::parse(&kept.path, text),
        Err(source) if source.raw_os_error() != Some(Errno::ENODEV as i32) => {
            return Err(pressure_read_error(dir, kept.path.clone(), source));
        }
        Err(_) => {}
    }
    kept.file = fs::File::open(&kept.path)
        .map_err(|source| pressure_read_error(dir, kept.path.clone(), source))?;
    let text = kept
        .read(scratch)
        .map_err(|source| pressure_read_error(dir, kept.path.clone(), source))?;
    Pressure::parse(&kept.path, text)
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
