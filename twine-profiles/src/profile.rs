//! The profile model: what a host should look like, read from TOML, YAML or JSON, with
//! inheritance resolved, every key confined and every value validated where it is read.
//!
//! ```
//! use twine_profiles::profile::{Format, Profile};
//!
//! let p = Profile::from_str("[sysctl]\n\"vm.swappiness\" = 10\n", Format::Toml).unwrap();
//! assert_eq!(p.desired().len(), 1);
//! ```
//!
//! A loaded profile is flat: [`Profile::load`] merges the parents named in `inherits` (each a
//! sibling file, merged left to right, then the child) and clears `inherits`.

mod load;
mod value;

use std::collections::BTreeMap;
use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use crate::change::{Setting, ThpKnob};
use crate::key::{CmdlineArg, KeyError, SysctlKey, SysfsPath};

pub(crate) use value::normalise_fields;
pub use value::{
    CgroupKey, CmdlineValue, Content, Controller, DropIn, Governor, Line, NetworkdFile, NodeId,
    SysctlValue, ThpDefrag, ThpEnabled, ValueError,
};

/// The formats a profile can be written in.
///
/// (The same as twine-spec's `Format`; crates stay independent, so each has its own.)
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Format {
    /// TOML (`.toml`).
    Toml,
    /// JSON (`.json`).
    Json,
    /// YAML (`.yaml`, `.yml`).
    Yaml,
}

/// What the applier does with a setting this kernel does not have.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum MissingKeyPolicy {
    /// Refuse the whole apply (the default).
    #[default]
    Fail,
    /// Report the setting and go on without it.
    Skip,
}

/// A profile that could not be read.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ProfileError {
    /// The profile could not be written as TOML (a bug in the profile's types).
    #[error("writing the profile as TOML: {message}")]
    Serialize {
        /// What the serialiser said.
        message: String,
    },
    /// The file could not be read.
    #[error("{}: {source}", path.display())]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The file name does not say which format it is in.
    #[error("{}: unknown profile format (use .toml, .json, .yaml or .yml)", path.display())]
    UnknownFormat {
        /// The file.
        path: PathBuf,
    },
    /// Bad syntax, an unknown key, a wrong type or an invalid key or value.
    #[error("{}{field}: {message}", file_prefix(file.as_ref()))]
    Syntax {
        /// The file, when the text came from one.
        file: Option<PathBuf>,
        /// The field path (`thp.enabled`, `sysctl.vm.swappiness`), `.` for the document.
        field: String,
        /// What is wrong, naming the value.
        message: String,
    },
    /// Two settings of the profile contradict each other.
    #[error("{}{field}: {value:?} conflicts with {other}", file_prefix(file.as_ref()))]
    Conflict {
        /// The file, when the text came from one.
        file: Option<PathBuf>,
        /// The field path of the refused entry (`cmdline.hugepages`).
        field: String,
        /// Its value.
        value: String,
        /// The field it contradicts (`hugepages.count_1g`).
        other: String,
    },
    /// A parent named in `inherits` is not a plain name.
    #[error("{}: inherits: {} is not a profile name", path.display(), source.value)]
    BadParent {
        /// The file naming it.
        path: PathBuf,
        /// Why the name was refused.
        source: KeyError,
    },
    /// No sibling file holds the parent.
    #[error("{}: inherits: no {name}.toml, .yaml, .yml or .json beside it", path.display())]
    MissingParent {
        /// The file naming it.
        path: PathBuf,
        /// The parent's name.
        name: String,
    },
    /// Inheritance loops back on itself.
    #[error("{}: inherits: cycle {}", path.display(), chain.join(" -> "))]
    Cycle {
        /// The file where the loop closed.
        path: PathBuf,
        /// The profile names along the loop, first and last the same.
        chain: Vec<String>,
    },
}

/// Whether a section equals its default, and so is left out when serialising.
fn is_default<T: Default + PartialEq>(value: &T) -> bool {
    *value == T::default()
}

fn file_prefix(file: Option<&PathBuf>) -> String {
    file.map(|f| format!("{}: ", f.display()))
        .unwrap_or_default()
}

/// The 2 MiB and 1 GiB hugepage pools.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
#[non_exhaustive]
pub struct Hugepages {
    /// The global 2 MiB pool.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub count_2m: Option<u64>,
    /// The 2 MiB pool of each NUMA node.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub per_node_2m: BTreeMap<NodeId, u64>,
    /// 1 GiB pages reserved at boot; above 0 twine owns `hugepagesz=1G hugepages=N` on the
    /// kernel command line, at 0 it removes them.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub count_1g: Option<u64>,
}

/// The transparent-hugepage knobs.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
#[non_exhaustive]
pub struct Thp {
    /// `transparent_hugepage/enabled`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub enabled: Option<ThpEnabled>,
    /// `transparent_hugepage/defrag`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub defrag: Option<ThpDefrag>,
}

/// CPU frequency scaling.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
#[non_exhaustive]
pub struct Cpu {
    /// The cpufreq governor of every CPU.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub governor: Option<Governor>,
}

/// A host profile. Every key and value is validated when read; an empty profile is valid
/// and wants nothing.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
#[non_exhaustive]
pub struct Profile {
    /// The name; [`Profile::load`] sets it to the file stem when the file does not.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// Parents, sibling files by name; empty once loaded.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub inherits: Vec<String>,
    /// Settings this kernel lacks: fail or skip (unset: fail).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub on_missing_key: Option<MissingKeyPolicy>,
    /// Whether a partial hugepage allocation may escalate to a reboot (unset: no).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub allow_reboot: Option<bool>,
    /// Sysctls.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub sysctl: BTreeMap<SysctlKey, SysctlValue>,
    /// Hugepage pools.
    #[serde(default, skip_serializing_if = "is_default")]
    pub hugepages: Hugepages,
    /// Transparent hugepages.
    #[serde(default, skip_serializing_if = "is_default")]
    pub thp: Thp,
    /// Kernel command-line arguments twine owns.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub cmdline: BTreeMap<CmdlineArg, CmdlineValue>,
    /// CPU frequency scaling.
    #[serde(default, skip_serializing_if = "is_default")]
    pub cpu: Cpu,
    /// Generic sysfs attributes, paths under /sys.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub sysfs: BTreeMap<SysfsPath, Line>,
    /// systemd drop-ins, at most one per unit and name.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub drop_in: Vec<DropIn>,
    /// systemd-networkd files, at most one per name.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub networkd: Vec<NetworkdFile>,
    /// Controllers to enable in each cgroup's `cgroup.subtree_control`.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub cgroup2: BTreeMap<CgroupKey, Vec<Controller>>,
}

/// The command-line arguments `count_1g` owns.
const HUGEPAGESZ: &str = "hugepagesz";
const HUGEPAGES: &str = "hugepages";

impl Profile {
    /// The missing-key policy in force.
    pub fn on_missing_key(&self) -> MissingKeyPolicy {
        self.on_missing_key.unwrap_or_default()
    }

    /// Whether a partial hugepage allocation may escalate to a reboot.
    pub fn allow_reboot(&self) -> bool {
        self.allow_reboot.unwrap_or(false)
    }

    /// The wanted value of every setting the profile names (`None`: absent, e.g. a
    /// command-line argument set to `false`, or `hugepagesz` when `count_1g` is 0).
    ///
    /// Values are as the host holds them: a bare command-line flag is `""`, controllers are
    /// sorted and space-separated, sysctl values have single spaces between fields.
    pub fn desired(&self) -> BTreeMap<Setting, Option<String>> {
        let mut out = BTreeMap::new();
        for (key, value) in &self.sysctl {
            out.insert(
                Setting::Sysctl { key: key.clone() },
                Some(value.to_string()),
            );
        }
        if let Some(n) = self.hugepages.count_2m {
            out.insert(Setting::Hugepages2M { node: None }, Some(n.to_string()));
        }
        for (node, n) in &self.hugepages.per_node_2m {
            out.insert(
                Setting::Hugepages2M { node: Some(node.0) },
                Some(n.to_string()),
            );
        }
        for (knob, value) in [
            (ThpKnob::Enabled, self.thp.enabled.map(|v| v.as_str())),
            (ThpKnob::Defrag, self.thp.defrag.map(|v| v.as_str())),
        ] {
            if let Some(v) = value {
                out.insert(Setting::Thp { knob }, Some(v.to_owned()));
            }
        }
        for (arg, value) in &self.cmdline {
            out.insert(Setting::Cmdline { arg: arg.clone() }, value.wanted());
        }
        if let Some(n) = self.hugepages.count_1g {
            out.insert(Setting::Hugepages1G, Some(n.to_string()));
            let (size, count) = if n > 0 {
                (Some("1G".to_owned()), Some(n.to_string()))
            } else {
                (None, None)
            };
            for (arg, value) in [(HUGEPAGESZ, size), (HUGEPAGES, count)] {
                if let Ok(arg) = CmdlineArg::new(arg) {
                    out.insert(Setting::Cmdline { arg }, value);
                }
            }
        }
        if let Some(g) = &self.cpu.governor {
            out.insert(Setting::CpuGovernor, Some(g.to_string()));
        }
        for (path, value) in &self.sysfs {
            out.insert(
                Setting::Sysfs { path: path.clone() },
                Some(value.to_string()),
            );
        }
        for d in &self.drop_in {
            out.insert(d.setting(), Some(d.content.to_string()));
        }
        for n in &self.networkd {
            out.insert(n.setting(), Some(n.content.to_string()));
        }
        for (cgroup, controllers) in &self.cgroup2 {
            out.insert(
                Setting::Cgroup2Controllers {
                    cgroup: cgroup.path(),
                },
                Some(value::controller_list(controllers)),
            );
        }
        out
    }

    /// Serialises the profile as TOML in the schema [`Profile::from_str`] reads.
    ///
    /// Every field is a string, integer, bool, table or array of tables with string keys, all
    /// of which TOML holds, so an error here is a bug in this module's types; it is still an
    /// error, never an empty profile.
    pub fn to_toml(&self) -> Result<String, ProfileError> {
        toml::to_string(self).map_err(|e| ProfileError::Serialize {
            message: e.to_string(),
        })
    }

    /// Checks what the field types cannot: entries that contradict each other.
    fn check(&self, file: Option<&PathBuf>) -> Result<(), ProfileError> {
        let conflict = |field: String, value: String, other: &str| ProfileError::Conflict {
            file: file.cloned(),
            field,
            value,
            other: other.to_owned(),
        };
        if self.hugepages.count_1g.is_some() {
            for arg in [HUGEPAGESZ, HUGEPAGES] {
                if let Some((k, v)) = self.cmdline.iter().find(|(k, _)| k.to_string() == arg) {
                    return Err(conflict(
                        format!("cmdline.{k}"),
                        v.to_string(),
                        "hugepages.count_1g",
                    ));
                }
            }
        }
        let mut seen = std::collections::BTreeSet::new();
        for (i, d) in self.drop_in.iter().enumerate() {
            if !seen.insert(d.setting()) {
                return Err(conflict(
                    format!("drop_in[{i}]"),
                    format!("{}/{}", d.unit, d.name),
                    "an earlier drop_in of the same unit and name",
                ));
            }
        }
        for (i, n) in self.networkd.iter().enumerate() {
            if !seen.insert(n.setting()) {
                return Err(conflict(
                    format!("networkd[{i}]"),
                    n.name.to_string(),
                    "an earlier networkd file of the same name",
                ));
            }
        }
        Ok(())
    }
}
