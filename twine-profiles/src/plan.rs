//! The planner: a pure function from what a host has ([`HostFacts`]) and what a profile
//! wants ([`Profile::desired`]) to the changes that close the gap ([`Plan`]).
//!
//! ```
//! use twine_profiles::change::HostFacts;
//! use twine_profiles::plan::plan;
//! use twine_profiles::profile::{Format, Profile};
//!
//! let profile = Profile::from_str("[thp]\nenabled = \"madvise\"\n", Format::Toml).unwrap();
//! let p = plan(&HostFacts::default(), &profile);
//! assert_eq!(p.changes.len(), 1);
//! assert_eq!(p.to_json()["changes"][0]["effect"], "live-restart-jobs");
//! ```
//!
//! # Effects
//!
//! Each change is classified on its own (not per kind of setting), after the kernel facts in
//! the reference notes (A3):
//!
//! | setting | effect | why |
//! |---|---|---|
//! | sysctl | `live` | a `/proc/sys` write takes effect at once; the sysctl.d drop-in persists it |
//! | `vm.nr_hugepages`, `vm.nr_hugepages_mempolicy` | as a 2 MiB count | they are the hugepage pool under another name |
//! | 2 MiB count (global, per node) | `live`; `live-restart-jobs` while jobs run | the pool is resized at runtime, but running jobs must remap to use it |
//! | THP enabled, defrag | `live-restart-jobs` | the kernel doc: they "only affect future behavior", so running applications must restart |
//! | command-line argument | `reboot`; `live` when the booted command line already has the wanted value | the kernel reads it only at boot; if the running kernel already has it, only the boot configuration is stale |
//! | 1 GiB pages | `reboot` | reserved on the command line at boot; runtime allocation rarely succeeds on a loaded host |
//! | cpufreq governor, sysfs | `live` | runtime writes |
//! | drop-in | `live` | the applier runs `systemctl daemon-reload`; units pick it up on their next (re)start |
//! | networkd file | `live` | the applier runs `networkctl reload` |
//! | cgroup2 controllers | `live` | `cgroup.subtree_control` is written at runtime |
//!
//! [`Plan::drain`] is set when some change is `reboot`, or is `live-restart-jobs` while jobs
//! run; [`Plan::reboot`] when some change is `reboot`.
//!
//! # Comparison
//!
//! Current and wanted values are compared normalised: sysctl values by whitespace-separated
//! field (`sysctl` prints tabs), THP by the bracketed choice (`always [madvise] never`),
//! counts, governor and sysfs values trimmed, file contents exactly. Controllers are a
//! subset test: twine enables the ones it names and never disables others, so a change's
//! `to` is the union of what the cgroup has and what the profile names.
//!
//! # Command line: config and booted
//!
//! For [`Setting::Cmdline`] and [`Setting::Hugepages1G`] the facts' `values` describe the
//! boot configuration (what the next boot gets: the argument in /etc/kernel/cmdline or the
//! GRUB default; for 1 GiB pages the count it reserves) and `booted_cmdline` the running
//! kernel. A bare flag is the value `""`. A change is planned only when the boot
//! configuration differs; a configuration that is already right but not yet booted is
//! *pending*, not a change (see [`pending_reboot`]), so that planning after an apply is empty.
//!
//! # Order
//!
//! The applier applies in plan order, which is by kind: sysctls, sysfs attributes, the
//! governor and cgroup2 controllers first (cheap, certain, and some prepare memory, e.g.
//! compaction sysctls); THP next; then the 2 MiB pool (the step most likely to fail part
//! way, on fragmented memory, so everything certain is done before it); then drop-ins and
//! networkd files (one daemon reload after every file is written); reboot-class changes
//! last, 1 GiB pages then the command line, so that a failure earlier leaves the boot
//! configuration untouched and the reboot follows the last write. Within a kind, by setting.

use std::collections::BTreeSet;

use crate::change::{Change, Effect, HostFacts, Plan, Setting};
use crate::profile::Profile;

/// Sysctls that are the 2 MiB hugepage pool under another name.
const HUGEPAGE_SYSCTLS: [&str; 2] = ["vm.nr_hugepages", "vm.nr_hugepages_mempolicy"];

fn is_hugepage_sysctl(setting: &Setting) -> bool {
    matches!(setting, Setting::Sysctl { key } if HUGEPAGE_SYSCTLS.contains(&key.to_string().as_str()))
}

/// The plan that brings a host with `facts` to `profile`: one change per setting whose
/// current value differs from the wanted one, in application order.
pub fn plan(facts: &HostFacts, profile: &Profile) -> Plan {
    // Ranked once per change: the rank of a sysctl looks at its name.
    let mut ranked: Vec<(u8, Change)> = Vec::new();
    for (setting, wanted) in profile.desired() {
        let current = facts.values.get(&setting).cloned().flatten();
        let Some(to) = target(&setting, current.as_deref(), wanted.as_deref()) else {
            continue;
        };
        let effect = effect(&setting, to.as_deref(), facts);
        ranked.push((rank(&setting), Change::new(setting, current, to, effect)));
    }
    ranked.sort_by(|(ra, a), (rb, b)| (ra, &a.setting).cmp(&(rb, &b.setting)));
    let changes: Vec<Change> = ranked.into_iter().map(|(_, c)| c).collect();
    let reboot = changes.iter().any(|c| c.effect == Effect::Reboot);
    let drain = reboot
        || (facts.jobs_running && changes.iter().any(|c| c.effect == Effect::LiveRestartJobs));
    Plan {
        changes,
        drain,
        reboot,
    }
}

/// The command-line settings (arguments, 1 GiB pages) whose boot configuration already has
/// the wanted value while the running kernel does not: written, awaiting a reboot.
pub fn pending_reboot(facts: &HostFacts, profile: &Profile) -> Vec<Setting> {
    let desired = profile.desired();
    let booted_1g = booted_1g_pages(&facts.booted_cmdline);
    desired
        .iter()
        .filter(|(setting, wanted)| {
            let config = facts.values.get(*setting).cloned().flatten();
            if target(setting, config.as_deref(), wanted.as_deref()).is_some() {
                return false;
            }
            match setting {
                Setting::Cmdline { arg } => {
                    cmdline_value(&facts.booted_cmdline, &arg.to_string()) != **wanted
                }
                Setting::Hugepages1G => {
                    booted_1g.unwrap_or(0).to_string() != wanted.as_deref().unwrap_or("0")
                }
                _ => false,
            }
        })
        .map(|(s, _)| s.clone())
        .collect()
}

/// The value of `arg` on a kernel command line: `Some("")` for a bare flag, `None` when
/// absent; the last occurrence wins, as for most kernel parameters.
pub fn cmdline_value(cmdline: &str, arg: &str) -> Option<String> {
    cmdline
        .split_whitespace()
        .filter_map(|word| match word.split_once('=') {
            Some((k, v)) if k == arg => Some(v.to_owned()),
            None if word == arg => Some(String::new()),
            _ => None,
        })
        .next_back()
}

/// The 1 GiB pages a command line reserves: the `hugepages=` following `hugepagesz=1G`.
fn booted_1g_pages(cmdline: &str) -> Option<u64> {
    let mut size_1g = false;
    let mut count = None;
    for word in cmdline.split_whitespace() {
        match word.split_once('=') {
            Some(("hugepagesz", v)) => size_1g = v.eq_ignore_ascii_case("1g"),
            Some(("hugepages", v)) if size_1g => count = v.parse().ok(),
            _ => {}
        }
    }
    count
}

/// What to set when `current` differs from `wanted` after normalisation; `None` when they
/// agree. Usually `wanted` itself; for controllers, the union with what the cgroup has.
fn target(
    setting: &Setting,
    current: Option<&str>,
    wanted: Option<&str>,
) -> Option<Option<String>> {
    if let Setting::Cgroup2Controllers { .. } = setting {
        let have: BTreeSet<&str> = current.unwrap_or("").split_whitespace().collect();
        let want: BTreeSet<&str> = wanted.unwrap_or("").split_whitespace().collect();
        if want.is_subset(&have) && current.is_some() {
            return None;
        }
        let union: Vec<&str> = have.union(&want).copied().collect();
        return Some(Some(union.join(" ")));
    }
    let same = match (current, wanted) {
        (Some(c), Some(w)) => normalise(setting, c) == normalise(setting, w),
        (None, None) => true,
        _ => false,
    };
    (!same).then(|| wanted.map(str::to_owned))
}

/// A value as compared: see the module documentation.
fn normalise(setting: &Setting, value: &str) -> String {
    match setting {
        Setting::Sysctl { .. } => crate::profile::normalise_fields(value),
        Setting::Thp { .. } => match (value.find('['), value.find(']')) {
            (Some(open), Some(close)) if open < close => value[open + 1..close].to_owned(),
            _ => value.trim().to_owned(),
        },
        Setting::DropIn { .. } | Setting::Networkd { .. } => value.to_owned(),
        _ => value.trim().to_owned(),
    }
}

fn effect(setting: &Setting, to: Option<&str>, facts: &HostFacts) -> Effect {
    let hugepages_live = if facts.jobs_running {
        Effect::LiveRestartJobs
    } else {
        Effect::Live
    };
    match setting {
        s if is_hugepage_sysctl(s) => hugepages_live,
        Setting::Hugepages2M { .. } => hugepages_live,
        Setting::Thp { .. } => Effect::LiveRestartJobs,
        Setting::Cmdline { arg } => {
            if cmdline_value(&facts.booted_cmdline, &arg.to_string()).as_deref() == to {
                Effect::Live
            } else {
                Effect::Reboot
            }
        }
        Setting::Hugepages1G => Effect::Reboot,
        _ => Effect::Live,
    }
}

/// Application order: see the module documentation.
fn rank(setting: &Setting) -> u8 {
    match setting {
        s if is_hugepage_sysctl(s) => 5,
        Setting::Sysctl { .. } => 0,
        Setting::Sysfs { .. } => 1,
        Setting::CpuGovernor => 2,
        Setting::Cgroup2Controllers { .. } => 3,
        Setting::Thp { .. } => 4,
        Setting::Hugepages2M { node: None } => 5,
        Setting::Hugepages2M { node: Some(_) } => 6,
        Setting::DropIn { .. } => 7,
        Setting::Networkd { .. } => 8,
        Setting::Hugepages1G => 9,
        Setting::Cmdline { .. } => 10,
    }
}

impl Plan {
    /// The plan as the CLI prints it with `--json`:
    /// `{"changes": [{"kind", "key", "from", "to", "effect"}], "drain", "reboot"}`.
    pub fn to_json(&self) -> serde_json::Value {
        let changes: Vec<serde_json::Value> = self
            .changes
            .iter()
            .map(|c| {
                serde_json::json!({
                    "kind": c.setting.kind(),
                    "key": c.setting.to_string(),
                    "from": c.from,
                    "to": c.to,
                    "effect": c.effect.to_string(),
                })
            })
            .collect();
        serde_json::json!({ "changes": changes, "drain": self.drain, "reboot": self.reboot })
    }
}
