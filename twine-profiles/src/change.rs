//! The vocabulary the planner and the applier share: what a setting is (its [`Setting`]
//! key), what a host currently has ([`HostFacts`]), and what a plan asks for ([`Change`],
//! [`Effect`], [`Plan`]).
//!
//! Values are strings as the kernel and the files hold them (`"madvise"`, `"1024"`), compared
//! after the normalisation the planner documents; typed validation of values belongs to the
//! profile model.

use std::collections::BTreeMap;
use std::fmt;

use serde::{Deserialize, Serialize};

use crate::key::{CgroupPath, CmdlineArg, FileName, SysctlKey, SysfsPath, UnitName};

/// Which transparent-hugepage knob.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ThpKnob {
    /// `/sys/kernel/mm/transparent_hugepage/enabled`.
    Enabled,
    /// `/sys/kernel/mm/transparent_hugepage/defrag`.
    Defrag,
}

/// One thing on a host that a profile can set. Every key inside is validated and confined
/// at construction (see [`crate::key`]).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "kebab-case")]
#[non_exhaustive]
pub enum Setting {
    /// A sysctl, applied live and persisted in twine's own sysctl.d drop-in.
    Sysctl {
        /// The key.
        key: SysctlKey,
    },
    /// The number of 2 MiB hugepages, globally (`node: None`) or on one NUMA node.
    Hugepages2M {
        /// The NUMA node, or the global pool.
        node: Option<u32>,
    },
    /// The number of 1 GiB hugepages, reserved at boot on the kernel command line.
    Hugepages1G,
    /// A transparent-hugepage knob.
    Thp {
        /// Which knob.
        knob: ThpKnob,
    },
    /// A kernel command-line argument twine owns (value `None` in a change: absent).
    Cmdline {
        /// The argument name.
        arg: CmdlineArg,
    },
    /// The cpufreq scaling governor of every CPU.
    CpuGovernor,
    /// A generic sysfs attribute.
    Sysfs {
        /// The path under /sys.
        path: SysfsPath,
    },
    /// A systemd drop-in file for a unit (the value is the file's whole content).
    DropIn {
        /// The unit.
        unit: UnitName,
        /// The drop-in file name.
        name: FileName,
    },
    /// A systemd-networkd file under /etc/systemd/network (the value is its content).
    Networkd {
        /// The file name.
        name: FileName,
    },
    /// The controllers enabled in a cgroup's `cgroup.subtree_control` (the value is a
    /// space-separated, sorted list of controller names).
    Cgroup2Controllers {
        /// The cgroup, relative to the cgroup2 mount.
        cgroup: CgroupPath,
    },
}

impl Setting {
    /// The `kind` field of the CLI's JSON: `sysctl`, `hugepages-2m`, ...
    pub fn kind(&self) -> &'static str {
        match self {
            Setting::Sysctl { .. } => "sysctl",
            Setting::Hugepages2M { .. } => "hugepages-2m",
            Setting::Hugepages1G => "hugepages-1g",
            Setting::Thp { .. } => "thp",
            Setting::Cmdline { .. } => "cmdline",
            Setting::CpuGovernor => "cpu-governor",
            Setting::Sysfs { .. } => "sysfs",
            Setting::DropIn { .. } => "drop-in",
            Setting::Networkd { .. } => "networkd",
            Setting::Cgroup2Controllers { .. } => "cgroup2-controllers",
        }
    }
}

impl fmt::Display for Setting {
    /// The `key` field of the CLI's JSON: `vm.swappiness`, `node0`, `enabled`, ...
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Setting::Sysctl { key } => key.fmt(f),
            Setting::Hugepages2M { node: None } => f.write_str("global"),
            Setting::Hugepages2M { node: Some(n) } => write!(f, "node{n}"),
            Setting::Hugepages1G => f.write_str("boot"),
            Setting::Thp {
                knob: ThpKnob::Enabled,
            } => f.write_str("enabled"),
            Setting::Thp {
                knob: ThpKnob::Defrag,
            } => f.write_str("defrag"),
            Setting::Cmdline { arg } => arg.fmt(f),
            Setting::CpuGovernor => f.write_str("all"),
            Setting::Sysfs { path } => path.fmt(f),
            Setting::DropIn { unit, name } => write!(f, "{unit}/{name}"),
            Setting::Networkd { name } => name.fmt(f),
            Setting::Cgroup2Controllers { cgroup } => cgroup.fmt(f),
        }
    }
}

/// When a change takes effect.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Effect {
    /// At once, without disturbing running jobs.
    Live,
    /// At once, but running jobs must restart to see it (THP, the hugepage count under
    /// running jobs).
    LiveRestartJobs,
    /// Only after a reboot (the kernel command line, 1 GiB pages).
    Reboot,
}

impl fmt::Display for Effect {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Effect::Live => "live",
            Effect::LiveRestartJobs => "live-restart-jobs",
            Effect::Reboot => "reboot",
        })
    }
}

/// One change of a plan: `from` is what the host has (`None`: absent, or the setting does
/// not exist on this host), `to` what the profile wants (`None`: remove, e.g. a command-line
/// argument or a drop-in twine owned).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct Change {
    /// What is changed.
    pub setting: Setting,
    /// The current value.
    pub from: Option<String>,
    /// The wanted value.
    pub to: Option<String>,
    /// When it takes effect.
    pub effect: Effect,
}

impl Change {
    /// A change; the planner is the one that decides `effect`.
    pub fn new(setting: Setting, from: Option<String>, to: Option<String>, effect: Effect) -> Self {
        Self {
            setting,
            from,
            to,
            effect,
        }
    }
}

/// A plan: the changes in the order to apply them, and whether the host must be drained
/// first and rebooted after.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct Plan {
    /// The changes, in application order.
    pub changes: Vec<Change>,
    /// Whether running jobs must leave the host before the changes are applied.
    pub drain: bool,
    /// Whether a reboot is needed for the plan to take full effect.
    pub reboot: bool,
}

impl Plan {
    /// Whether there is nothing to do.
    pub fn is_empty(&self) -> bool {
        self.changes.is_empty()
    }
}

/// What a host has now, for the settings a profile names: the value of each (`None`: absent
/// or not on this kernel), read through a host root by the applier side, or built by hand in
/// tests.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct HostFacts {
    /// The current value of each setting read.
    pub values: BTreeMap<Setting, Option<String>>,
    /// Whether jobs are running on the host (a hugepage-count change then restarts them).
    pub jobs_running: bool,
    /// The kernel command line the host booted with (`/proc/cmdline`).
    pub booted_cmdline: String,
}
