//! Test doubles for code built on this crate (feature `test-util`): a fixture host root in
//! a temporary directory, and [`FixtureWrites`], which does to fixture files what the kernel
//! does to its own (a choice file keeps its `[selection]`, cgroupfs takes `+ctrl -ctrl`, the
//! hugepage pool may grant fewer pages) and can fail any write, before or after its effect.

use std::collections::BTreeMap;
use std::fs;
use std::io;
use std::path::{Path, PathBuf};

use crate::apply::{KernelWrites, Writes};
use crate::host::HostRoot;

/// A host tree in a temporary directory, removed on drop.
#[derive(Debug)]
pub struct FixtureRoot {
    dir: tempfile::TempDir,
}

impl FixtureRoot {
    /// An empty tree.
    pub fn empty() -> io::Result<Self> {
        Ok(Self {
            dir: tempfile::tempdir()?,
        })
    }

    /// A small host: a few sysctls, 2 MiB hugepages (global and node0), THP, two CPUs with
    /// different governors, a cgroup2 root, a GRUB defaults file and `proc/cmdline`.
    pub fn typical() -> io::Result<Self> {
        let f = Self::empty()?;
        let hp = "hugepages/hugepages-2048kB/nr_hugepages";
        for (rel, content) in [
            ("proc/sys/vm/swappiness", "60\n"),
            ("proc/sys/kernel/printk_ratelimit", "5\n"),
            ("proc/sys/net/ipv4/tcp_rmem", "4096\t131072\t6291456\n"),
            (
                "proc/cmdline",
                "BOOT_IMAGE=/vmlinuz root=/dev/sda1 ro quiet\n",
            ),
            (&format!("sys/kernel/mm/{hp}"), "0\n"),
            (&format!("sys/devices/system/node/node0/{hp}"), "0\n"),
            (
                "sys/kernel/mm/transparent_hugepage/enabled",
                "always [madvise] never\n",
            ),
            (
                "sys/kernel/mm/transparent_hugepage/defrag",
                "always defer defer+madvise [madvise] never\n",
            ),
            (
                "sys/devices/system/cpu/cpu0/cpufreq/scaling_governor",
                "performance\n",
            ),
            (
                "sys/devices/system/cpu/cpu1/cpufreq/scaling_governor",
                "powersave\n",
            ),
            ("sys/fs/cgroup/cgroup.subtree_control", "cpu memory\n"),
            (
                "etc/default/grub",
                "GRUB_DEFAULT=0\nGRUB_CMDLINE_LINUX_DEFAULT=\"quiet\"\nGRUB_CMDLINE_LINUX=\"console=ttyS0\"\n",
            ),
        ] {
            f.file(rel, content)?;
        }
        Ok(f)
    }

    /// Writes a file under the tree, creating its directories.
    pub fn file(&self, relative: impl AsRef<Path>, content: &str) -> io::Result<()> {
        let path = self.dir.path().join(relative);
        if let Some(dir) = path.parent() {
            fs::create_dir_all(dir)?;
        }
        fs::write(path, content)
    }

    /// The tree's directory.
    pub fn path(&self) -> &Path {
        self.dir.path()
    }

    /// A host root on the tree.
    pub fn root(&self) -> HostRoot {
        HostRoot::at(self.dir.path())
    }

    /// Every file of the tree and its bytes, by relative path (directories left out), for
    /// byte-for-byte comparisons.
    pub fn snapshot(&self) -> io::Result<BTreeMap<PathBuf, Vec<u8>>> {
        let mut out = BTreeMap::new();
        let mut todo = vec![self.dir.path().to_owned()];
        while let Some(dir) = todo.pop() {
            for entry in fs::read_dir(&dir)? {
                let entry = entry?;
                let path = entry.path();
                if entry.file_type()?.is_dir() {
                    todo.push(path);
                } else {
                    let rel = path
                        .strip_prefix(self.dir.path())
                        .map_err(io::Error::other)?
                        .to_owned();
                    out.insert(rel, fs::read(&path)?);
                }
            }
        }
        Ok(out)
    }
}

/// Whether an injected failure strikes before the write has its effect or after.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FaultPoint {
    /// Nothing is written (a crash just before the write).
    Before,
    /// The write happens, then the error (a crash just after it).
    After,
}

/// [`Writes`] for a fixture tree, emulating the kernel's files, with an optional failure.
#[derive(Debug, Clone)]
pub struct FixtureWrites {
    count: usize,
    fail_at: Option<(usize, FaultPoint, i32)>,
    hugepage_limit: Option<u64>,
}

impl Default for FixtureWrites {
    fn default() -> Self {
        Self::new()
    }
}

impl FixtureWrites {
    /// No failure, no hugepage limit.
    pub fn new() -> Self {
        Self {
            count: 0,
            fail_at: None,
            hugepage_limit: None,
        }
    }

    /// Fails write number `n` (from 0, journal writes included) with `errno` at `point`.
    pub fn fail_at(mut self, n: usize, point: FaultPoint, errno: i32) -> Self {
        self.fail_at = Some((n, point, errno));
        self
    }

    /// Grants at most `pages` in any `nr_hugepages` file (fragmented memory).
    pub fn hugepage_limit(mut self, pages: u64) -> Self {
        self.hugepage_limit = Some(pages);
        self
    }

    /// How many writes were attempted.
    pub fn count(&self) -> usize {
        self.count
    }

    fn guarded(&mut self, f: impl FnOnce(&mut Self) -> io::Result<()>) -> io::Result<()> {
        let n = self.count;
        self.count += 1;
        match self.fail_at {
            Some((at, FaultPoint::Before, errno)) if at == n => {
                Err(io::Error::from_raw_os_error(errno))
            }
            Some((at, FaultPoint::After, errno)) if at == n => {
                f(self)?;
                Err(io::Error::from_raw_os_error(errno))
            }
            _ => f(self),
        }
    }
}

impl Writes for FixtureWrites {
    fn write_live(&mut self, path: &Path, value: &str) -> io::Result<()> {
        self.guarded(|w| {
            let current = fs::read_to_string(path)?;
            let new = if current.contains('[') {
                let words: Vec<&str> = current
                    .split_whitespace()
                    .map(|x| x.trim_start_matches('[').trim_end_matches(']'))
                    .collect();
                if !words.contains(&value.trim()) {
                    return Err(io::Error::from_raw_os_error(libc::EINVAL));
                }
                let marked: Vec<String> = words
                    .iter()
                    .map(|x| {
                        if *x == value.trim() {
                            format!("[{x}]")
                        } else {
                            (*x).to_owned()
                        }
                    })
                    .collect();
                marked.join(" ")
            } else if let (Some(limit), Some("nr_hugepages"), Ok(n)) = (
                w.hugepage_limit,
                path.file_name().and_then(|n| n.to_str()),
                value.trim().parse::<u64>(),
            ) {
                n.min(limit).to_string()
            } else {
                value.to_owned()
            };
            // The kernel shows a value with one trailing newline, whether or not the write
            // had one (`echo 60 >` and a restored `60\n` read back alike).
            fs::write(
                path,
                format!("{}\n", new.strip_suffix('\n').unwrap_or(&new)),
            )
        })
    }

    fn replace_file(&mut self, path: &Path, content: &str) -> io::Result<()> {
        self.guarded(|_| KernelWrites.replace_file(path, content))
    }

    fn remove_file(&mut self, path: &Path) -> io::Result<()> {
        self.guarded(|_| KernelWrites.remove_file(path))
    }

    fn write_controllers(
        &mut self,
        path: &Path,
        enable: &[&str],
        disable: &[&str],
    ) -> io::Result<()> {
        self.guarded(|_| {
            let current = fs::read_to_string(path)?;
            let mut set: Vec<&str> = current
                .split_whitespace()
                .filter(|c| !disable.contains(c))
                .collect();
            set.extend(
                enable
                    .iter()
                    .filter(|c| !current.split_whitespace().any(|x| x == **c)),
            );
            set.sort_unstable();
            fs::write(path, format!("{}\n", set.join(" ")))
        })
    }
}
