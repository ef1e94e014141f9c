//! Profile values, each validated when it is deserialised so that an invalid one is an
//! error carrying its field path (from `serde_path_to_error`) and the value.

use std::fmt;

use serde::de::{self, Visitor};
use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::change::Setting;
use crate::key::{CgroupPath, FileName, KeyError, KeyProblem, UnitName};

/// A scalar as written: a string, an integer or a boolean.
enum Scalar {
    Str(String),
    Int(String),
    Bool(bool),
}

impl<'de> Deserialize<'de> for Scalar {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl Visitor<'_> for V {
            type Value = Scalar;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a string, an integer or a boolean")
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Scalar, E> {
                Ok(Scalar::Str(v.to_owned()))
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<Scalar, E> {
                Ok(Scalar::Int(v.to_string()))
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<Scalar, E> {
                Ok(Scalar::Int(v.to_string()))
            }
            fn visit_bool<E: de::Error>(self, v: bool) -> Result<Scalar, E> {
                Ok(Scalar::Bool(v))
            }
        }
        d.deserialize_any(V)
    }
}

/// Reads a string or an integer as text; refuses booleans.
fn text<'de, D: Deserializer<'de>>(d: D, what: &str) -> Result<String, D::Error> {
    match Scalar::deserialize(d)? {
        Scalar::Str(s) | Scalar::Int(s) => Ok(s),
        Scalar::Bool(b) => Err(de::Error::custom(format!(
            "{b} is not a valid {what} (a string or an integer)"
        ))),
    }
}

fn refuse<E: de::Error>(what: &str, value: &str, why: &str) -> E {
    E::custom(format!("{what} {value:?} {why}"))
}

/// A refused value: what it was for, the value as given, and why.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{what} {value:?} {problem}")]
#[non_exhaustive]
pub struct ValueError {
    /// What the value is (`sysctl value`, `governor`, ...).
    pub what: &'static str,
    /// The value as given.
    pub value: String,
    /// Why it was refused.
    pub problem: &'static str,
}

/// A string-valued newtype, serialised as the string, validated by `$check` on the way in.
macro_rules! text_value {
    ($(#[$doc:meta])* $name:ident, $what:literal, $check:expr) => {
        $(#[$doc])*
        #[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
        pub struct $name(String);

        impl $name {
            /// Validates (and normalises) a value.
            pub fn new(value: &str) -> Result<Self, ValueError> {
                let check: fn(&str) -> Result<String, &'static str> = $check;
                check(value).map(Self).map_err(|problem| ValueError {
                    what: $what,
                    value: value.to_owned(),
                    problem,
                })
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }

        impl Serialize for $name {
            fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                s.serialize_str(&self.0)
            }
        }

        impl<'de> Deserialize<'de> for $name {
            fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                let raw = text(d, $what)?;
                Self::new(&raw).map_err(de::Error::custom)
            }
        }
    };
}

fn alphabet(value: &str) -> Result<String, &'static str> {
    if !value.is_empty() && value.chars().all(|c| c.is_ascii_lowercase() || c == '_') {
        Ok(value.to_owned())
    } else {
        Err("is not a name of [a-z_]+")
    }
}

text_value!(
    /// A sysctl value: one or more whitespace-separated fields, held with single spaces
    /// (as `sysctl` prints them with tabs, compare normalised); no newline or NUL.
    SysctlValue,
    "sysctl value",
    |v| {
        if v.contains(['\n', '\r', '\0']) {
            return Err("has a newline or NUL");
        }
        Ok(normalise_fields(v))
    }
);

text_value!(
    /// A sysfs value: one line, no NUL.
    Line,
    "sysfs value",
    |v| {
        if v.contains(['\n', '\r', '\0']) {
            Err("is not one line without NUL")
        } else {
            Ok(v.to_owned())
        }
    }
);

text_value!(
    /// The content of a drop-in or networkd file: anything but NUL.
    Content,
    "file content",
    |v| {
        if v.contains('\0') {
            Err("has a NUL byte")
        } else {
            Ok(v.to_owned())
        }
    }
);

text_value!(
    /// A cpufreq governor name, `[a-z_]+`.
    Governor,
    "governor",
    alphabet
);

text_value!(
    /// A cgroup2 controller name, `[a-z_]+`.
    Controller,
    "controller",
    alphabet
);

/// Whitespace-separated fields joined by single spaces: how twine compares sysctl values.
pub(crate) fn normalise_fields(value: &str) -> String {
    value.split_whitespace().collect::<Vec<_>>().join(" ")
}

/// Controllers as the [`Setting::Cgroup2Controllers`] value: sorted, unique, space-separated.
pub(crate) fn controller_list<'a>(names: impl IntoIterator<Item = &'a Controller>) -> String {
    let set: std::collections::BTreeSet<&str> = names.into_iter().map(|c| c.0.as_str()).collect();
    set.into_iter().collect::<Vec<_>>().join(" ")
}

/// A string-valued enum with a fixed set of spellings.
macro_rules! choice {
    ($(#[$doc:meta])* $name:ident, $($(#[$vdoc:meta])* $variant:ident = $text:literal),+) => {
        $(#[$doc])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
        pub enum $name {
            $($(#[$vdoc])* #[serde(rename = $text)] $variant),+
        }

        impl $name {
            /// The spelling the kernel uses.
            pub fn as_str(self) -> &'static str {
                match self {
                    $($name::$variant => $text),+
                }
            }
        }
    };
}

choice!(
    /// `transparent_hugepage/enabled`.
    ThpEnabled,
    /// THP for every mapping.
    Always = "always",
    /// Only for `madvise(MADV_HUGEPAGE)` regions.
    Madvise = "madvise",
    /// Never.
    Never = "never"
);

choice!(
    /// `transparent_hugepage/defrag`.
    ThpDefrag,
    /// Stall on fault to compact.
    Always = "always",
    /// Wake kswapd/kcompactd, do not stall.
    Defer = "defer",
    /// Defer, but stall for madvised regions.
    DeferMadvise = "defer+madvise",
    /// Stall only for madvised regions.
    Madvise = "madvise",
    /// Never compact for THP.
    Never = "never"
);

/// A kernel command-line argument's wanted state: `true` a bare flag, `false` absent, or
/// `arg=value` (a value without whitespace, quotes or NUL).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CmdlineValue {
    /// Present as a bare flag (`true`) or absent (`false`).
    Flag(bool),
    /// Present as `arg=value`.
    Value(String),
}

impl CmdlineValue {
    /// The value as the planner compares it: a bare flag `""`, absent `None`.
    pub fn wanted(&self) -> Option<String> {
        match self {
            CmdlineValue::Flag(true) => Some(String::new()),
            CmdlineValue::Flag(false) => None,
            CmdlineValue::Value(v) => Some(v.clone()),
        }
    }
}

impl fmt::Display for CmdlineValue {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            CmdlineValue::Flag(b) => write!(f, "{b}"),
            CmdlineValue::Value(v) => f.write_str(v),
        }
    }
}

impl Serialize for CmdlineValue {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self {
            CmdlineValue::Flag(b) => s.serialize_bool(*b),
            CmdlineValue::Value(v) => s.serialize_str(v),
        }
    }
}

impl<'de> Deserialize<'de> for CmdlineValue {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        match Scalar::deserialize(d)? {
            Scalar::Bool(b) => Ok(CmdlineValue::Flag(b)),
            Scalar::Str(v) | Scalar::Int(v) => {
                if v.is_empty() || v.contains(|c: char| c.is_whitespace() || c == '"' || c == '\0')
                {
                    Err(refuse(
                        "cmdline value",
                        &v,
                        "is empty or has whitespace, a quote or NUL",
                    ))
                } else {
                    Ok(CmdlineValue::Value(v))
                }
            }
        }
    }
}

/// A NUMA node id, written as a string key (`"0"`) or, in YAML, an integer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct NodeId(pub u32);

impl Serialize for NodeId {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.0.to_string())
    }
}

impl<'de> Deserialize<'de> for NodeId {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let raw = text(d, "NUMA node id")?;
        raw.parse()
            .map(NodeId)
            .map_err(|_| refuse("NUMA node id", &raw, "is not an integer in 0..=4294967295"))
    }
}

/// A cgroup key: `/` for the root cgroup, else a path relative to the cgroup2 mount
/// (`system.slice`), confined like every key. Only the root is spelled with a leading `/`,
/// so that no two spellings name the same cgroup.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct CgroupKey(CgroupPath);

impl CgroupKey {
    /// Validates a key.
    pub fn new(value: &str) -> Result<Self, KeyError> {
        if value.is_empty() {
            // The root is spelled "/"; an empty key is a mistake, not the root.
            return Err(KeyError {
                kind: "cgroup",
                value: String::new(),
                problem: KeyProblem::Empty,
            });
        }
        CgroupPath::new(if value == "/" { "" } else { value }).map(CgroupKey)
    }

    /// The cgroup.
    pub fn path(&self) -> CgroupPath {
        self.0.clone()
    }
}

impl Serialize for CgroupKey {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.0.to_string())
    }
}

impl<'de> Deserialize<'de> for CgroupKey {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let raw = String::deserialize(d)?;
        CgroupKey::new(&raw).map_err(de::Error::custom)
    }
}

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawDropIn {
    unit: String,
    name: String,
    content: Content,
}

/// A systemd drop-in: `/etc/systemd/system/<unit>.d/<name>` with `content`. The applier
/// runs `systemctl daemon-reload` after writing drop-ins.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "RawDropIn", into = "RawDropIn")]
#[non_exhaustive]
pub struct DropIn {
    /// The unit.
    pub unit: UnitName,
    /// The file name (`*.conf`).
    pub name: FileName,
    /// The whole file.
    pub content: Content,
}

impl DropIn {
    /// Validates a drop-in.
    pub fn new(unit: &str, name: &str, content: Content) -> Result<Self, KeyError> {
        Ok(DropIn {
            unit: UnitName::new(unit)?,
            name: FileName::drop_in(name)?,
            content,
        })
    }

    pub(crate) fn setting(&self) -> Setting {
        Setting::DropIn {
            unit: self.unit.clone(),
            name: self.name.clone(),
        }
    }
}

impl TryFrom<RawDropIn> for DropIn {
    type Error = KeyError;
    fn try_from(raw: RawDropIn) -> Result<Self, KeyError> {
        DropIn::new(&raw.unit, &raw.name, raw.content)
    }
}

impl From<DropIn> for RawDropIn {
    fn from(d: DropIn) -> Self {
        RawDropIn {
            unit: d.unit.to_string(),
            name: d.name.to_string(),
            content: d.content,
        }
    }
}

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawNetworkd {
    name: String,
    content: Content,
}

/// A systemd-networkd file: `/etc/systemd/network/<name>` with `content`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "RawNetworkd", into = "RawNetworkd")]
#[non_exhaustive]
pub struct NetworkdFile {
    /// The file name (`*.network`, `*.netdev`, `*.link`).
    pub name: FileName,
    /// The whole file.
    pub content: Content,
}

impl NetworkdFile {
    /// Validates a networkd file.
    pub fn new(name: &str, content: Content) -> Result<Self, KeyError> {
        Ok(NetworkdFile {
            name: FileName::networkd(name)?,
            content,
        })
    }

    pub(crate) fn setting(&self) -> Setting {
        Setting::Networkd {
            name: self.name.clone(),
        }
    }
}

impl TryFrom<RawNetworkd> for NetworkdFile {
    type Error = KeyError;
    fn try_from(raw: RawNetworkd) -> Result<Self, KeyError> {
        NetworkdFile::new(&raw.name, raw.content)
    }
}

impl From<NetworkdFile> for RawNetworkd {
    fn from(n: NetworkdFile) -> Self {
        RawNetworkd {
            name: n.name.to_string(),
            content: n.content,
        }
    }
}
