//! The host root, and reading a host's facts through it.
//!
//! Every host path is relative (`proc/sys/vm/swappiness`, `etc/kernel/cmdline`) and joined
//! under a [`HostRoot`]: the real `/`, or a directory holding a fake or mounted tree. No logic
//! names an absolute host path, so the same code runs on `/` and on a tempdir fixture.
//!
//! What each [`Setting`] reads as (`None`: absent, or not on this kernel):
//! - sysctl: `proc/sys/<key>`, whitespace-normalised (`"4096\t87380"` -> `"4096 87380"`);
//! - 2 MiB hugepages: the global or per-node `nr_hugepages` under `sys`;
//! - 1 GiB hugepages: `N` of the `hugepagesz=1G hugepages=N` pair on the boot command line;
//! - THP: the bracketed word of `always [madvise] never`;
//! - a command-line argument: its value in the boot config (`etc/kernel/cmdline` if it
//!   exists, else `GRUB_CMDLINE_LINUX` in `etc/default/grub`); a bare flag reads as `""`;
//! - the cpufreq governor: the one governor every CPU has, or, when CPUs differ,
//!   `mixed:<cpuN>=<gov>,...` (sorted by CPU number), which no profile can equal, so a plan
//!   rewrites every CPU;
//! - sysfs: `sys/<path>`, trimmed; drop-ins and networkd files: the whole content;
//! - cgroup2 controllers: `cgroup.subtree_control` as a sorted, space-separated list.

mod bootcfg;

use std::collections::BTreeMap;
use std::fs;
use std::io;
use std::path::{Path, PathBuf};

use crate::change::{HostFacts, Setting, ThpKnob};

pub(crate) use bootcfg::{BootConfig, HugepageSize};

/// Where host paths live: the real `/`, or a directory standing for it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostRoot {
    dir: PathBuf,
    real: bool,
}

/// A failure to read a host fact: the path, and what went wrong.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum HostError {
    /// A file could not be read.
    #[error("reading {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// The cause.
        source: io::Error,
    },
    /// A file held something twine cannot interpret.
    #[error("reading {path}: {value:?} {problem}")]
    Parse {
        /// The file.
        path: PathBuf,
        /// What it held (or the offending part).
        value: String,
        /// Why it was refused.
        problem: &'static str,
    },
    /// The real root has no cgroup2 mount in `proc/self/mountinfo`.
    #[error("reading {path}: no cgroup2 mount")]
    NoCgroup2 {
        /// The mountinfo file read.
        path: PathBuf,
    },
}

impl HostRoot {
    /// The real root, `/`.
    pub fn real() -> Self {
        Self {
            dir: PathBuf::from("/"),
            real: true,
        }
    }

    /// A directory standing for `/` (a fixture, or a host tree mounted elsewhere).
    pub fn at(dir: impl Into<PathBuf>) -> Self {
        Self {
            dir: dir.into(),
            real: false,
        }
    }

    /// The root directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Whether this is the real `/`.
    pub fn is_real(&self) -> bool {
        self.real
    }

    /// A root-relative path (`proc/sys/vm/swappiness`) under this root.
    pub fn path(&self, relative: impl AsRef<Path>) -> PathBuf {
        self.dir.join(relative)
    }

    /// Reads the current value of each setting, with `jobs_running` as the caller (the host
    /// agent) knows it. See the module docs for what each kind reads as.
    pub fn facts(&self, settings: &[Setting], jobs_running: bool) -> Result<HostFacts, HostError> {
        let mut values = BTreeMap::new();
        for setting in settings {
            values.insert(setting.clone(), self.read(setting)?);
        }
        Ok(HostFacts {
            values,
            jobs_running,
            booted_cmdline: self.booted_cmdline()?,
        })
    }

    /// The current value of one setting (see the module docs).
    pub fn read(&self, setting: &Setting) -> Result<Option<String>, HostError> {
        match setting {
            Setting::Sysctl { key } => {
                let path = self.path(key.relative_path());
                Ok(read_opt(&path)?.map(|v| normalise_words(&v)))
            }
            Setting::Hugepages2M { .. } | Setting::Sysfs { .. } => {
                let rel = live_path(setting).unwrap_or_default();
                Ok(read_opt(&self.path(rel))?.map(|v| v.trim().to_owned()))
            }
            Setting::Thp { knob } => {
                let path = self.path(thp_path(*knob));
                read_opt(&path)?.map(|v| bracketed(&path, &v)).transpose()
            }
            Setting::Hugepages1G => Ok(self.boot_config()?.hugepages(HugepageSize::Giga)),
            Setting::Cmdline { arg } => Ok(self.boot_config()?.arg(&arg.to_string())),
            Setting::CpuGovernor => {
                let govs = self.governors()?;
                let mut distinct: Vec<&String> = govs.iter().map(|(_, g)| g).collect();
                distinct.sort();
                distinct.dedup();
                Ok(match distinct.as_slice() {
                    [] => None,
                    [one] => Some((*one).clone()),
                    _ => Some(format!(
                        "mixed:{}",
                        govs.iter()
                            .map(|(cpu, g)| format!("cpu{cpu}={g}"))
                            .collect::<Vec<_>>()
                            .join(",")
                    )),
                })
            }
            Setting::DropIn { unit, name } => read_opt(&self.path(unit.drop_in_path(name))),
            Setting::Networkd { name } => {
                read_opt(&self.path(Path::new("etc/systemd/network").join(name.as_str())))
            }
            Setting::Cgroup2Controllers { cgroup } => {
                let path = self.path(self.subtree_control(cgroup.as_str())?);
                Ok(read_opt(&path)?.map(|v| sorted_words(&v)))
            }
        }
    }

    /// The command line the host booted with (`proc/cmdline`, whitespace-normalised); a
    /// directory root without that file reads as `""`.
    pub fn booted_cmdline(&self) -> Result<String, HostError> {
        Ok(read_opt(&self.path("proc/cmdline"))?
            .map(|v| normalise_words(&v))
            .unwrap_or_default())
    }

    /// The boot config twine edits: `etc/kernel/cmdline` if it exists, else
    /// `etc/default/grub` (which may not exist either).
    pub(crate) fn boot_config(&self) -> Result<BootConfig, HostError> {
        let kernel = self.path(bootcfg::KERNEL_CMDLINE);
        if let Some(text) = read_opt(&kernel)? {
            return Ok(BootConfig::kernel_cmdline(bootcfg::KERNEL_CMDLINE, &text));
        }
        let grub = self.path(bootcfg::GRUB_DEFAULT);
        let text = read_opt(&grub)?;
        BootConfig::grub(bootcfg::GRUB_DEFAULT, text.as_deref()).map_err(|(value, problem)| {
            HostError::Parse {
                path: grub,
                value,
                problem,
            }
        })
    }

    /// Every CPU's `scaling_governor`, by CPU number (CPUs without cpufreq are left out).
    pub(crate) fn governors(&self) -> Result<Vec<(u32, String)>, HostError> {
        let mut out = Vec::new();
        for (cpu, rel) in self.governor_paths()? {
            if let Some(g) = read_opt(&self.path(&rel))? {
                out.push((cpu, g.trim().to_owned()));
            }
        }
        Ok(out)
    }

    /// `(cpu number, relative path)` of every CPU's `scaling_governor` file, by number.
    pub(crate) fn governor_paths(&self) -> Result<Vec<(u32, PathBuf)>, HostError> {
        let dir = self.path("sys/devices/system/cpu");
        let entries = match fs::read_dir(&dir) {
            Ok(e) => e,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(source) => return Err(HostError::Read { path: dir, source }),
        };
        let mut out = Vec::new();
        for entry in entries {
            let entry = entry.map_err(|source| HostError::Read {
                path: dir.clone(),
                source,
            })?;
            let name = entry.file_name();
            let Some(cpu) = name
                .to_str()
                .and_then(|n| n.strip_prefix("cpu"))
                .and_then(|n| n.parse::<u32>().ok())
            else {
                continue;
            };
            let rel = PathBuf::from(format!(
                "sys/devices/system/cpu/cpu{cpu}/cpufreq/scaling_governor"
            ));
            if self.path(&rel).exists() {
                out.push((cpu, rel));
            }
        }
        out.sort();
        Ok(out)
    }

    /// The `cgroup.subtree_control` file of a cgroup under the cgroup2 mount, relative to
    /// the root. The mount is
    /// found in `proc/self/mountinfo` under the root (hybrid hosts have it at
    /// `/sys/fs/cgroup/unified`); a directory root without that file uses `sys/fs/cgroup`.
    pub fn subtree_control(&self, cgroup: &str) -> Result<PathBuf, HostError> {
        let info = self.path("proc/self/mountinfo");
        let mount = match read_opt(&info)? {
            Some(text) => match cgroup2_mount(&text) {
                Some(m) => m,
                None => return Err(HostError::NoCgroup2 { path: info }),
            },
            None if self.real => return Err(HostError::NoCgroup2 { path: info }),
            None => PathBuf::from("sys/fs/cgroup"),
        };
        let mut path = mount;
        if !cgroup.is_empty() {
            path.push(cgroup);
        }
        path.push("cgroup.subtree_control");
        Ok(path)
    }
}

/// The kernel file a live setting is written to, relative to the root (`None`: not a
/// single live file: the command line, drop-ins, the governor of every CPU, cgroups).
pub(crate) fn live_path(setting: &Setting) -> Option<PathBuf> {
    match setting {
        Setting::Sysctl { key } => Some(key.relative_path()),
        Setting::Hugepages2M { node: None } => Some(PathBuf::from(
            "sys/kernel/mm/hugepages/hugepages-2048kB/nr_hugepages",
        )),
        Setting::Hugepages2M { node: Some(n) } => Some(PathBuf::from(format!(
            "sys/devices/system/node/node{n}/hugepages/hugepages-2048kB/nr_hugepages"
        ))),
        Setting::Thp { knob } => Some(thp_path(*knob)),
        Setting::Sysfs { path } => Some(path.relative_path()),
        _ => None,
    }
}

fn thp_path(knob: ThpKnob) -> PathBuf {
    PathBuf::from(match knob {
        ThpKnob::Enabled => "sys/kernel/mm/transparent_hugepage/enabled",
        ThpKnob::Defrag => "sys/kernel/mm/transparent_hugepage/defrag",
    })
}

/// The mount point (made relative) of the first cgroup2 mount in a mountinfo text.
fn cgroup2_mount(mountinfo: &str) -> Option<PathBuf> {
    mountinfo.lines().find_map(|line| {
        // `id parent maj:min root mountpoint opts [optional...] - fstype source superopts`
        let (left, right) = line.split_once(" - ")?;
        if right.split_whitespace().next()? != "cgroup2" {
            return None;
        }
        let mount = left.split_whitespace().nth(4)?;
        Some(PathBuf::from(mount.trim_start_matches('/')))
    })
}

/// A file's content, `None` when it does not exist.
pub(crate) fn read_opt(path: &Path) -> Result<Option<String>, HostError> {
    match fs::read_to_string(path) {
        Ok(s) => Ok(Some(s)),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(source) => Err(HostError::Read {
            path: path.to_owned(),
            source,
        }),
    }
}

/// Words joined by single spaces, as `sysctl -n` values compare.
pub(crate) fn normalise_words(v: &str) -> String {
    v.split_whitespace().collect::<Vec<_>>().join(" ")
}

/// Words sorted and joined by single spaces (controller lists).
pub(crate) fn sorted_words(v: &str) -> String {
    let mut words: Vec<&str> = v.split_whitespace().collect();
    words.sort_unstable();
    words.join(" ")
}

/// The bracketed word of a kernel choice file (`always [madvise] never` -> `madvise`).
pub(crate) fn bracketed(path: &Path, v: &str) -> Result<String, HostError> {
    v.split_whitespace()
        .find_map(|w| w.strip_prefix('[').and_then(|w| w.strip_suffix(']')))
        .map(str::to_owned)
        .ok_or_else(|| HostError::Parse {
            path: path.to_owned(),
            value: v.trim().to_owned(),
            problem: "has no [selected] word",
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mountinfo_finds_the_cgroup2_mount_on_a_hybrid_host() {
        let text = "25 1 0:23 / /sys/fs/cgroup ro - tmpfs tmpfs ro\n\
                    26 25 0:24 / /sys/fs/cgroup/unified rw - cgroup2 cgroup2 rw\n";
        assert_eq!(
            cgroup2_mount(text),
            Some(PathBuf::from("sys/fs/cgroup/unified"))
        );
        assert_eq!(cgroup2_mount("1 0 0:1 / / rw - ext4 /dev/sda rw\n"), None);
    }

    #[test]
    fn bracketed_word_is_the_selection() {
        let p = Path::new("x");
        assert_eq!(bracketed(p, "always [madvise] never\n").unwrap(), "madvise");
        assert!(bracketed(p, "madvise").is_err());
    }
}
