//! Setting keys, validated and confined where they are made.
//!
//! Every key a profile names becomes one of these types before anything else sees it, so a
//! key such as `../../etc/shadow` is an error at construction, never a path that a planner
//! or an applier has to remember to check. Each type maps to exactly one place under a host
//! root (`/proc/sys/...`, `/sys/...`, `/etc/...`), and that mapping is computed here only.

use std::fmt;
use std::path::PathBuf;

use serde::{Deserialize, Serialize};

/// Why a key was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum KeyProblem {
    /// Empty, or with an empty path component.
    #[error("is empty or has an empty component")]
    Empty,
    /// A `.` or `..` component: the key would leave its directory.
    #[error("has a '.' or '..' component")]
    Traversal,
    /// Starts with `/`: keys are relative to their directory.
    #[error("is absolute")]
    Absolute,
    /// A character outside the kind's alphabet (whitespace, control, NUL, quotes, ...).
    #[error("has a character outside [{allowed}]")]
    Character {
        /// The alphabet the kind allows, for the message.
        allowed: &'static str,
    },
    /// Lacks the suffix its kind needs (`.conf`, `.network`, a unit type).
    #[error("must end with one of {expected}")]
    Suffix {
        /// The suffixes accepted, for the message.
        expected: &'static str,
    },
    /// Longer than the kind allows.
    #[error("is longer than {max} bytes")]
    TooLong {
        /// The limit.
        max: usize,
    },
}

/// A refused key: its kind, the value as given, and why.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{kind} key {value:?} {problem}")]
#[non_exhaustive]
pub struct KeyError {
    /// The setting kind (`sysctl`, `sysfs`, ...).
    pub kind: &'static str,
    /// The key as given.
    pub value: String,
    /// Why it was refused.
    pub problem: KeyProblem,
}

const MAX_KEY: usize = 4096;

/// Splits `value` into path components and checks each against `allowed`.
fn components<'a>(
    kind: &'static str,
    value: &'a str,
    sep: char,
    allowed: fn(char) -> bool,
    alphabet: &'static str,
) -> Result<Vec<&'a str>, KeyError> {
    let err = |problem| KeyError {
        kind,
        value: value.to_owned(),
        problem,
    };
    if value.len() > MAX_KEY {
        return Err(err(KeyProblem::TooLong { max: MAX_KEY }));
    }
    if value.starts_with('/') {
        return Err(err(KeyProblem::Absolute));
    }
    let parts: Vec<&str> = value.split(sep).collect();
    for part in &parts {
        if part.is_empty() {
            return Err(err(KeyProblem::Empty));
        }
        if *part == "." || *part == ".." {
            return Err(err(KeyProblem::Traversal));
        }
        if !part.chars().all(allowed) {
            return Err(err(KeyProblem::Character { allowed: alphabet }));
        }
    }
    Ok(parts)
}

fn name_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | ':' | '@' | '+')
}

fn path_char(c: char) -> bool {
    name_char(c) || c == '.'
}

/// A sysctl key, as `sysctl.d(5)` writes it: `vm.swappiness` or `net/ipv4/ip_forward`.
///
/// As in `sysctl.d(5)`, when the first separator is `/` the key is slash-separated and dots
/// are part of names (`net/ipv4/conf/eth0.1/rp_filter`); otherwise dots separate. It maps to
/// `proc/sys/<components>` under a host root.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct SysctlKey {
    components: Vec<String>,
}

impl SysctlKey {
    /// Validates a key in either notation.
    pub fn new(value: &str) -> Result<Self, KeyError> {
        // Whatever the notation, a `..` path segment is someone reaching out of /proc/sys.
        if value.split('/').any(|c| c == "." || c == "..") {
            return Err(KeyError {
                kind: "sysctl",
                value: value.to_owned(),
                problem: KeyProblem::Traversal,
            });
        }
        let slashed = value
            .find(['.', '/'])
            .is_some_and(|i| value[i..].starts_with('/'));
        let parts = if slashed {
            components(
                "sysctl",
                value,
                '/',
                path_char,
                "A-Za-z0-9_-:@+ and '.' in names",
            )?
        } else {
            components("sysctl", value, '.', name_char, "A-Za-z0-9_-:@+")?
        };
        Ok(Self {
            components: parts.into_iter().map(str::to_owned).collect(),
        })
    }

    /// The file under a host root: `proc/sys/vm/swappiness`.
    pub fn relative_path(&self) -> PathBuf {
        let mut p = PathBuf::from("proc/sys");
        p.extend(&self.components);
        p
    }
}

impl fmt::Display for SysctlKey {
    /// The dotted form when no component holds a dot, else the slashed form.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let sep = if self.components.iter().any(|c| c.contains('.')) {
            "/"
        } else {
            "."
        };
        f.write_str(&self.components.join(sep))
    }
}

/// A path under `/sys`, relative: `kernel/mm/transparent_hugepage/enabled`.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct SysfsPath(String);

impl SysfsPath {
    /// Validates a relative sysfs path.
    pub fn new(value: &str) -> Result<Self, KeyError> {
        components("sysfs", value, '/', path_char, "A-Za-z0-9_-:@+.")?;
        Ok(Self(value.to_owned()))
    }

    /// The file under a host root: `sys/<path>`.
    pub fn relative_path(&self) -> PathBuf {
        PathBuf::from("sys").join(&self.0)
    }
}

impl fmt::Display for SysfsPath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// A cgroup under the cgroup2 mount, relative; empty is the root cgroup.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct CgroupPath(String);

impl CgroupPath {
    /// Validates a relative cgroup path (`""` for the root cgroup).
    pub fn new(value: &str) -> Result<Self, KeyError> {
        if !value.is_empty() {
            components("cgroup", value, '/', path_char, "A-Za-z0-9_-:@+.")?;
        }
        Ok(Self(value.to_owned()))
    }

    /// The path relative to the cgroup2 mount (`""` for the root cgroup).
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for CgroupPath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.0.is_empty() {
            f.write_str("/")
        } else {
            f.write_str(&self.0)
        }
    }
}

/// A single file name for a drop-in or networkd file, with its required suffix.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct FileName(String);

impl FileName {
    /// Validates a drop-in file name (`*.conf`).
    pub fn drop_in(value: &str) -> Result<Self, KeyError> {
        Self::with_suffix("drop-in", value, &[".conf"], ".conf")
    }

    /// Validates a networkd file name (`*.network`, `*.netdev`, `*.link`).
    pub fn networkd(value: &str) -> Result<Self, KeyError> {
        Self::with_suffix(
            "networkd",
            value,
            &[".network", ".netdev", ".link"],
            ".network, .netdev, .link",
        )
    }

    fn with_suffix(
        kind: &'static str,
        value: &str,
        suffixes: &[&str],
        expected: &'static str,
    ) -> Result<Self, KeyError> {
        let parts = components(kind, value, '/', path_char, "A-Za-z0-9_-:@+.")?;
        if parts.len() != 1 {
            return Err(KeyError {
                kind,
                value: value.to_owned(),
                problem: KeyProblem::Character {
                    allowed: "A-Za-z0-9_-:@+. (one file name, no '/')",
                },
            });
        }
        if !suffixes
            .iter()
            .any(|s| value.len() > s.len() && value.ends_with(s))
        {
            return Err(KeyError {
                kind,
                value: value.to_owned(),
                problem: KeyProblem::Suffix { expected },
            });
        }
        Ok(Self(value.to_owned()))
    }

    /// The name.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for FileName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// A systemd unit name (`nginx.service`), for drop-in directories.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct UnitName(String);

const UNIT_SUFFIXES: &[&str] = &[
    ".service", ".socket", ".target", ".timer", ".slice", ".scope", ".mount", ".path",
];

impl UnitName {
    /// Validates a unit name: systemd's alphabet and a unit type suffix.
    pub fn new(value: &str) -> Result<Self, KeyError> {
        let file = FileName::with_suffix(
            "unit",
            value,
            UNIT_SUFFIXES,
            ".service, .socket, .target, .timer, .slice, .scope, .mount, .path",
        )?;
        Ok(Self(file.0))
    }

    /// The drop-in file under a host root: `etc/systemd/system/<unit>.d/<name>`.
    pub fn drop_in_path(&self, name: &FileName) -> PathBuf {
        PathBuf::from("etc/systemd/system")
            .join(format!("{}.d", self.0))
            .join(&name.0)
    }
}

impl fmt::Display for UnitName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// A kernel command-line argument name (`hugepagesz`, `isolcpus`), owned by twine once a
/// profile sets it.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct CmdlineArg(String);

impl CmdlineArg {
    /// Validates an argument name: `A-Za-z0-9_.-`, no `=`.
    pub fn new(value: &str) -> Result<Self, KeyError> {
        let ok = |c: char| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.');
        if value.is_empty() {
            return Err(KeyError {
                kind: "cmdline",
                value: value.to_owned(),
                problem: KeyProblem::Empty,
            });
        }
        if !value.chars().all(ok) {
            return Err(KeyError {
                kind: "cmdline",
                value: value.to_owned(),
                problem: KeyProblem::Character {
                    allowed: "A-Za-z0-9_.-",
                },
            });
        }
        Ok(Self(value.to_owned()))
    }
}

impl fmt::Display for CmdlineArg {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

macro_rules! string_conversions {
    ($($t:ty),*) => {$(
        impl TryFrom<String> for $t {
            type Error = KeyError;
            fn try_from(value: String) -> Result<Self, KeyError> {
                Self::new(&value)
            }
        }
        impl From<$t> for String {
            fn from(key: $t) -> String {
                key.to_string()
            }
        }
    )*};
}
string_conversions!(SysctlKey, SysfsPath, CmdlineArg);

// Not through `Display`: the root cgroup displays as `/`, which `new` refuses as absolute,
// so a serialised root cgroup must stay `""` to read back.
impl TryFrom<String> for CgroupPath {
    type Error = KeyError;
    fn try_from(value: String) -> Result<Self, KeyError> {
        Self::new(&value)
    }
}
impl From<CgroupPath> for String {
    fn from(key: CgroupPath) -> String {
        key.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn traversal_and_absolute_keys_are_refused() {
        for bad in ["../../etc/shadow", "vm/../../x", "/etc/shadow", "a//b", ""] {
            assert!(SysctlKey::new(bad).is_err(), "{bad}");
            assert!(SysfsPath::new(bad).is_err(), "{bad}");
        }
        assert!(SysctlKey::new("vm..x").is_err());
        assert_eq!(
            SysctlKey::new("../../etc/shadow").unwrap_err().problem,
            KeyProblem::Traversal
        );
        assert!(SysctlKey::new("vm.swap piness").is_err());
        assert!(FileName::drop_in("a/b.conf").is_err());
        assert!(FileName::drop_in(".conf").is_err());
        assert!(UnitName::new("x.service\n").is_err());
        assert!(CmdlineArg::new("a=b").is_err());
    }

    #[test]
    fn the_root_cgroup_survives_a_serde_round_trip() {
        let root = CgroupPath::new("").unwrap();
        let json = serde_json::to_string(&root).unwrap();
        assert_eq!(serde_json::from_str::<CgroupPath>(&json).unwrap(), root);
    }

    #[test]
    fn sysctl_notations_map_to_proc_sys() {
        let dotted = SysctlKey::new("vm.swappiness").unwrap();
        assert_eq!(
            dotted.relative_path(),
            PathBuf::from("proc/sys/vm/swappiness")
        );
        assert_eq!(dotted.to_string(), "vm.swappiness");
        let slashed = SysctlKey::new("net/ipv4/conf/eth0.1/rp_filter").unwrap();
        assert_eq!(
            slashed.relative_path(),
            PathBuf::from("proc/sys/net/ipv4/conf/eth0.1/rp_filter")
        );
        assert_eq!(slashed.to_string(), "net/ipv4/conf/eth0.1/rp_filter");
    }
}
