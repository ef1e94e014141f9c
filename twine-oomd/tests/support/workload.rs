//! A workload with a known cold and hot set, in a cgroup of its own, for the resizer's and the
//! kill policies' guest tests. It does not use twine-oomd: it is what twine-oomd is tested on.
//!
//! ```ignore
//! let parent = Cgroup::create(Path::new("/sys/fs/cgroup"), &format!("twine-test-{}", std::process::id()))?;
//! let mut work = Workload::Tiered { cold_anon_mib: 512, cold_cache_mib: 256, hot_anon_mib: 128 }
//!     .spawn(parent.child("workload")?)?;
//! work.wait_ready(Duration::from_secs(300))?;   // cold set touched, hot loop running
//! // ... drive memory.reclaim / memory.high on work.cgroup(), check work.hot_passes() grows ...
//! // dropping `work` kills it and removes its cgroup and cache file; dropping `parent` removes it.
//! ```
//!
//! The workload process is this test binary run again (`current_exe()`) on its one ignored
//! entry, `support::workload::workload_child`, with the role in `TWINE_WORKLOAD`: no shell, no
//! `dd`, nothing the guest image would have to provide. It joins its cgroup (writes its own pid
//! to `cgroup.procs`) before it touches any memory, so everything is charged there.
// Each test binary uses a different part of this module.
#![allow(dead_code)]

use std::fs;
use std::io::{self, BufReader, Read as _, Write as _};
use std::os::fd::AsFd as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

/// One mebibyte.
pub(crate) const MIB: u64 = 1 << 20;

/// Touching one byte per page faults the whole page in.
const PAGE: usize = 4096;

const ROLE_VAR: &str = "TWINE_WORKLOAD";
const CGROUP_VAR: &str = "TWINE_WORKLOAD_CGROUP";
const CACHE_VAR: &str = "TWINE_WORKLOAD_CACHE_FILE";

/// The child's full test name, as libtest lists it (the module path is `support::workload`
/// in every test binary that declares `mod support;`).
const CHILD_TEST: &str = "support::workload::workload_child";

/// Where the page-cache part lives: the guest's own disk (not 9p, not tmpfs).
const CACHE_DIR: &str = "/var/tmp";

const READY: &str = "twine-workload: ready";
const PASS: &str = "twine-workload: hot passes ";

/// What the workload process does.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Workload {
    /// Touch `cold_anon_mib` MiB of anonymous memory once and `cold_cache_mib` MiB of page cache
    /// once (a file written, dropped from the cache, then read once), then touch every page of
    /// `hot_anon_mib` MiB of anonymous memory in a loop until killed.
    Tiered {
        cold_anon_mib: u64,
        cold_cache_mib: u64,
        hot_anon_mib: u64,
    },
    /// Allocate and touch `mib_per_sec` MiB of anonymous memory every second, without bound,
    /// until killed (by a kill policy, the OOM killer, or the guard).
    Runaway { mib_per_sec: u64 },
}

impl Workload {
    fn encode(self) -> String {
        match self {
            Self::Tiered {
                cold_anon_mib,
                cold_cache_mib,
                hot_anon_mib,
            } => format!("tiered {cold_anon_mib} {cold_cache_mib} {hot_anon_mib}"),
            Self::Runaway { mib_per_sec } => format!("runaway {mib_per_sec}"),
        }
    }

    fn decode(role: &str) -> Option<Self> {
        let mut words = role.split_whitespace();
        let kind = words.next()?;
        let numbers: Vec<u64> = words.map(str::parse).collect::<Result<_, _>>().ok()?;
        match (kind, numbers.as_slice()) {
            ("tiered", &[cold_anon_mib, cold_cache_mib, hot_anon_mib]) => Some(Self::Tiered {
                cold_anon_mib,
                cold_cache_mib,
                hot_anon_mib,
            }),
            ("runaway", &[mib_per_sec]) => Some(Self::Runaway { mib_per_sec }),
            _ => None,
        }
    }

    /// Start the workload in `cgroup`, which the returned guard owns: dropping the guard kills
    /// the process, removes its cache file, then kills what is left in the cgroup and removes it.
    pub(crate) fn spawn(self, cgroup: Cgroup) -> io::Result<RunningWorkload> {
        let exe = std::env::current_exe()?;
        let name = cgroup
            .path
            .file_name()
            .map_or_else(|| "workload".into(), |n| n.to_string_lossy().into_owned());
        let cache_file = matches!(self, Self::Tiered { cold_cache_mib, .. } if cold_cache_mib > 0)
            .then(|| {
                Path::new(CACHE_DIR).join(format!(
                    "twine-workload-{}-{name}.cache",
                    std::process::id()
                ))
            });
        let mut command = super::child_command(&exe, CHILD_TEST);
        command
            .env(ROLE_VAR, self.encode())
            .env(CGROUP_VAR, &cgroup.path)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit());
        if let Some(file) = &cache_file {
            command.env(CACHE_VAR, file);
        }
        let mut child = command.spawn().map_err(|e| {
            io::Error::new(
                e.kind(),
                format!("starting the workload {}: {e}", exe.display()),
            )
        })?;
        let rx = super::lines_of(child.stdout.take().expect("piped stdout"));
        Ok(RunningWorkload {
            child,
            lines: rx,
            hot_passes: 0,
            ready: false,
            cache_file,
            cgroup,
        })
    }
}

/// A started workload; see [`Workload::spawn`].
pub(crate) struct RunningWorkload {
    child: Child,
    lines: mpsc::Receiver<String>,
    hot_passes: u64,
    ready: bool,
    cache_file: Option<PathBuf>,
    /// Declared last: dropped after the process is gone.
    cgroup: Cgroup,
}

impl RunningWorkload {
    /// The cgroup it runs in.
    pub(crate) fn cgroup(&self) -> &Cgroup {
        &self.cgroup
    }

    /// Its process id.
    pub(crate) fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Wait until the cold set has been touched and the hot loop runs (a runaway: until it
    /// starts allocating); returns how long that took. Fails when it exits or times out.
    pub(crate) fn wait_ready(&mut self, timeout: Duration) -> io::Result<Duration> {
        let started = Instant::now();
        while !self.ready {
            let left = timeout.saturating_sub(started.elapsed());
            match self.lines.recv_timeout(left) {
                Ok(line) => self.take(&line),
                Err(mpsc::RecvTimeoutError::Timeout) => {
                    return Err(io::Error::new(
                        io::ErrorKind::TimedOut,
                        format!(
                            "the workload in {} was not ready within {timeout:?}",
                            self.cgroup
                        ),
                    ));
                }
                Err(mpsc::RecvTimeoutError::Disconnected) => {
                    let status = self.child.wait()?;
                    return Err(io::Error::other(format!(
                        "the workload in {} exited before it was ready: {status}",
                        self.cgroup
                    )));
                }
            }
        }
        Ok(started.elapsed())
    }

    /// How many passes over its hot set it has reported (once a second); it keeps growing while
    /// the workload makes progress.
    pub(crate) fn hot_passes(&mut self) -> u64 {
        while let Ok(line) = self.lines.try_recv() {
            self.take(&line);
        }
        self.hot_passes
    }

    /// Whether the process is still alive (not killed, not exited).
    pub(crate) fn is_running(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    /// Reads one line of the child's stdout. A line may start with libtest's own
    /// `test NAME ... ` (printed without a newline before the test runs).
    fn take(&mut self, line: &str) {
        if line.ends_with(READY) {
            self.ready = true;
        } else if let Some((_, n)) = line.split_once(PASS)
            && let Ok(n) = n.trim().parse()
        {
            self.hot_passes = n;
        }
    }
}

impl Drop for RunningWorkload {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if let Some(file) = &self.cache_file {
            let _ = fs::remove_file(file);
        }
    }
}

/// A cgroup2 directory made for a test. Dropping it kills whatever runs in it and removes it,
/// with any cgroups below it (children made through [`Cgroup::child`] go first on their own).
pub(crate) struct Cgroup {
    path: PathBuf,
}

impl std::fmt::Display for Cgroup {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.path.display().fmt(f)
    }
}

impl Cgroup {
    /// A parent cgroup for one test, `name-PID` at the root of the guest's cgroup2 mount.
    pub(crate) fn for_test(name: &str) -> io::Result<Self> {
        Self::create(
            Path::new("/sys/fs/cgroup"),
            &format!("{name}-{}", std::process::id()),
        )
    }

    /// Create `parent/name`, with the memory controller enabled for it (`+memory` in the
    /// parent's `cgroup.subtree_control`).
    pub(crate) fn create(parent: &Path, name: &str) -> io::Result<Self> {
        write_file(&parent.join("cgroup.subtree_control"), "+memory")?;
        let path = parent.join(name);
        fs::create_dir(&path)
            .map_err(|e| io::Error::new(e.kind(), format!("creating {}: {e}", path.display())))?;
        Ok(Self { path })
    }

    /// Take over a cgroup directory made another way (by the code under test): dropping the
    /// returned guard kills whatever runs in it and removes it, as for [`Cgroup::create`].
    pub(crate) fn adopt(path: &Path) -> Self {
        Self {
            path: path.to_owned(),
        }
    }

    /// Create a child cgroup `name` below this one.
    pub(crate) fn child(&self, name: &str) -> io::Result<Self> {
        Self::create(&self.path, name)
    }

    pub(crate) fn path(&self) -> &Path {
        &self.path
    }

    /// The `total` of the `some` line of its `memory.pressure`: microseconds during which at
    /// least one of its tasks stalled on memory, since the cgroup was made.
    pub(crate) fn some_stall_total_us(&self) -> io::Result<u64> {
        let text = self.read("memory.pressure")?;
        text.lines()
            .find_map(|l| l.strip_prefix("some "))
            .and_then(|l| l.split_whitespace().find_map(|w| w.strip_prefix("total=")))
            .and_then(|n| n.parse().ok())
            .ok_or_else(|| {
                io::Error::new(
                    io::ErrorKind::InvalidData,
                    format!(
                        "{}/memory.pressure has no `some ... total=N` line: {text:?}",
                        self.path.display()
                    ),
                )
            })
    }

    /// The contents of one of its files.
    pub(crate) fn read(&self, file: &str) -> io::Result<String> {
        let path = self.path.join(file);
        fs::read_to_string(&path)
            .map_err(|e| io::Error::new(e.kind(), format!("reading {}: {e}", path.display())))
    }

    /// A single-number file (`memory.current`, `memory.swap.current`), in bytes.
    pub(crate) fn read_u64(&self, file: &str) -> io::Result<u64> {
        let text = self.read(file)?;
        text.trim().parse().map_err(|e| {
            io::Error::new(
                io::ErrorKind::InvalidData,
                format!(
                    "{}/{file} holds {text:?}, not a number: {e}",
                    self.path.display()
                ),
            )
        })
    }

    /// One key of `memory.stat` (`anon`, `file`, `pswpout`, ...).
    pub(crate) fn memory_stat(&self, key: &str) -> io::Result<u64> {
        let stat = self.read("memory.stat")?;
        stat.lines()
            .filter_map(|l| l.split_once(' '))
            .find(|(k, _)| *k == key)
            .and_then(|(_, v)| v.trim().parse().ok())
            .ok_or_else(|| {
                io::Error::new(
                    io::ErrorKind::NotFound,
                    format!("{}/memory.stat has no key {key}", self.path.display()),
                )
            })
    }

    /// Write `value` to one of its files.
    pub(crate) fn write(&self, file: &str, value: &str) -> io::Result<()> {
        write_file(&self.path.join(file), value)
    }

    /// Ask the kernel to reclaim `bytes` from it (`memory.reclaim`). EAGAIN means it reclaimed
    /// less than asked; that comes back as an error of kind `WouldBlock`.
    pub(crate) fn reclaim(&self, bytes: u64) -> io::Result<()> {
        self.write("memory.reclaim", &bytes.to_string())
    }
}

impl Drop for Cgroup {
    fn drop(&mut self) {
        remove_tree(&self.path);
    }
}

/// Kill everything in the cgroup at `path` and below, then remove it, children first.
fn remove_tree(path: &Path) {
    let _ = fs::write(path.join("cgroup.kill"), "1");
    if let Ok(entries) = fs::read_dir(path) {
        for entry in entries.flatten() {
            if entry.file_type().is_ok_and(|t| t.is_dir()) {
                remove_tree(&entry.path());
            }
        }
    }
    // Killed tasks leave the cgroup asynchronously; rmdir says EBUSY until they have.
    for _ in 0..100 {
        if fs::remove_dir(path).is_ok() || !path.exists() {
            return;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    eprintln!(
        "warning: could not remove the test cgroup {}",
        path.display()
    );
}

fn write_file(path: &Path, value: &str) -> io::Result<()> {
    fs::write(path, value).map_err(|e| {
        io::Error::new(
            e.kind(),
            format!("writing {value} to {}: {e}", path.display()),
        )
    })
}

/// Touch one byte in every page of `buf`, so each page is faulted in (or back in) and marked
/// accessed; `round` makes every pass write something new.
fn touch(buf: &mut [u8], round: u8) {
    for page in buf.chunks_mut(PAGE) {
        page[0] = page[0].wrapping_add(round | 1);
    }
}

/// A buffer of `mib` MiB with every page touched once.
fn touched(mib: u64) -> Vec<u8> {
    let len = usize::try_from(mib * MIB).expect("workload size fits in memory");
    let mut buf = vec![0u8; len];
    touch(&mut buf, 1);
    buf
}

/// Write `mib` MiB to `path`, drop it from the page cache, and read it once: page cache that was
/// used once, charged to this process's cgroup.
fn cold_cache(path: &Path, mib: u64) -> io::Result<fs::File> {
    let mut file = fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(true)
        .open(path)?;
    let chunk = vec![0x5au8; 1 << 20];
    for _ in 0..mib {
        file.write_all(&chunk)?;
    }
    file.sync_all()?;
    nix::fcntl::posix_fadvise(
        file.as_fd(),
        0,
        0,
        nix::fcntl::PosixFadviseAdvice::POSIX_FADV_DONTNEED,
    )
    .map_err(io::Error::from)?;
    let mut reader = BufReader::with_capacity(1 << 20, fs::File::open(path)?);
    let mut sink = vec![0u8; 1 << 20];
    while reader.read(&mut sink)? > 0 {}
    Ok(file)
}

/// The workload process: join the cgroup, then run the role until killed.
fn run_child(role: Workload, cgroup: &Path) -> io::Result<()> {
    write_file(
        &cgroup.join("cgroup.procs"),
        &std::process::id().to_string(),
    )?;
    let say = |line: &str| {
        let mut out = io::stdout().lock();
        let _ = writeln!(out, "{line}");
        let _ = out.flush();
    };
    match role {
        Workload::Tiered {
            cold_anon_mib,
            cold_cache_mib,
            hot_anon_mib,
        } => {
            let cold = touched(cold_anon_mib);
            let _cache = match std::env::var_os(CACHE_VAR) {
                Some(file) if cold_cache_mib > 0 => {
                    Some(cold_cache(Path::new(&file), cold_cache_mib)?)
                }
                _ => None,
            };
            let mut hot = touched(hot_anon_mib);
            say(READY);
            let mut passes: u64 = 0;
            let mut reported = Instant::now();
            loop {
                touch(&mut hot, passes.to_le_bytes()[0]);
                passes += 1;
                if reported.elapsed() >= Duration::from_secs(1) {
                    say(&format!("{PASS}{passes}"));
                    reported = Instant::now();
                }
                // Keeps `cold` alive (and not optimised away) for as long as the loop runs.
                std::hint::black_box(&cold);
                std::thread::sleep(Duration::from_millis(10));
            }
        }
        Workload::Runaway { mib_per_sec } => {
            say(READY);
            let step = (mib_per_sec * MIB / 10).max(PAGE as u64);
            let mut held = Vec::new();
            loop {
                let len = usize::try_from(step).expect("step fits in memory");
                let mut buf = vec![0u8; len];
                touch(&mut buf, 1);
                held.push(buf);
                std::thread::sleep(Duration::from_millis(100));
            }
        }
    }
}

/// The workload's entry point when this binary is run again by [`Workload::spawn`]; a no-op
/// otherwise. Not a guest test (not `guest_*`): the guest tier never selects it.
#[test]
#[ignore = "workload child: run by support::workload::Workload::spawn, not a test"]
fn workload_child() {
    let Some(role) = std::env::var(ROLE_VAR).ok() else {
        eprintln!("skipped: the workload's child entry; Workload::spawn runs it");
        return;
    };
    let role = Workload::decode(&role).unwrap_or_else(|| panic!("bad {ROLE_VAR}={role:?}"));
    let cgroup = std::env::var_os(CGROUP_VAR).unwrap_or_else(|| panic!("{CGROUP_VAR} is unset"));
    if let Err(e) = run_child(role, Path::new(&cgroup)) {
        panic!("workload {role:?}: {e}");
    }
}

#[test]
fn workload_roles_survive_the_environment() {
    for role in [
        Workload::Tiered {
            cold_anon_mib: 512,
            cold_cache_mib: 256,
            hot_anon_mib: 128,
        },
        Workload::Runaway { mib_per_sec: 64 },
    ] {
        assert_eq!(Workload::decode(&role.encode()), Some(role));
    }
    assert_eq!(Workload::decode("tiered 1 2"), None);
    assert_eq!(Workload::decode("runaway x"), None);
    assert_eq!(Workload::decode(""), None);
}
