//! Imports a TuneD profile directory as a twine profile, listing what it cannot express.
//!
//! [`import_tuned`] reads `DIR/tuned.conf`, resolves `include=` against sibling directories
//! (`DIR/../NAME/tuned.conf`), merges as TuneD's `tuned/profiles/merger.py` does, expands
//! `[variables]`, and maps the sysctl, vm, bootloader `cmdline*`, cpu `governor` and sysfs
//! units to the twine profile schema (TOML). Everything else is returned in
//! [`Imported::dropped`] with the reason, never dropped silently.
//!
//! ```
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let root = tempfile::tempdir()?;
//! let dir = root.path().join("fast");
//! std::fs::create_dir(&dir)?;
//! std::fs::write(dir.join("tuned.conf"), "[sysctl]\nvm.swappiness=10\n[disk]\nreadahead=>4096\n")?;
//! let imported = twine_profiles::tuned::import_tuned(&dir)?;
//! assert!(imported.profile_toml.contains("\"vm.swappiness\" = \"10\""));
//! assert_eq!(imported.dropped[0].section, "disk");
//! # Ok(())
//! # }
//! ```
//!
//! Merge and inheritance, after TuneD (`tuned/profiles/loader.py`, `merger.py`; see
//! `references/profiles-and-style.md` A1):
//! - `include=` is a list split on `,`, `;` or whitespace; included profiles load depth-first
//!   before the includer and merge left to right, so later settings win. An include that
//!   names a `${f:...}` function (`${f:virt_check:...}`) cannot be evaluated here and is
//!   reported as dropped. A cycle is an error; a diamond (two includes sharing one) is not.
//! - A unit of the same name is updated option by option; `replace=1` (or `true`) swaps the
//!   whole inherited unit and `drop=a,b` removes the named inherited options.
//! - `${name}` expands from the merged `[variables]` (a later profile's variable wins);
//!   a value still holding `${f:...}`, `${i:...}` or an unknown variable after expansion is
//!   reported as dropped. `[variables] include=FILE` (an external, host-edited file such as
//!   `/etc/tuned/realtime-variables.conf`) is not read and is reported.
//!
//! Not carried: `[main] summary` and `description` (descriptions, not settings). Units conditional on the
//! hardware (`uname_regex`, `cpuinfo_regex`, `devices`, `devices_udev_regex`), disabled units
//! and options conditional on the current value (`>N`, `<N`) are reported as dropped.

mod ini;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::Serialize;

use crate::key::{CmdlineArg, SysctlKey, SysfsPath};
use ini::Section;

/// The result of an import: the twine profile and what could not be expressed.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct Imported {
    /// The twine profile, as TOML.
    pub profile_toml: String,
    /// Every TuneD option (or unit) that the profile does not carry, with why.
    pub dropped: Vec<Dropped>,
}

/// One TuneD option the twine profile does not carry.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct Dropped {
    /// The unit (`[disk]`, `[sysctl.thunderx]`, ...), without brackets.
    pub section: String,
    /// The option (empty when the whole unit is meant).
    pub option: String,
    /// Its value as written (before expansion), or the part of it dropped.
    pub value: String,
    /// Why.
    pub reason: String,
}

/// Why no profile could be imported.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum TunedError {
    /// The profile directory has no `tuned.conf`.
    #[error("{dir} is not a TuneD profile: it has no tuned.conf")]
    NoTunedConf {
        /// The directory.
        dir: PathBuf,
    },
    /// Reading a directory or file failed.
    #[error("reading {path}: {source}")]
    Io {
        /// The path.
        path: PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// A line of a `tuned.conf` cannot be read.
    #[error("{path} line {line}: {problem}")]
    Syntax {
        /// The file.
        path: PathBuf,
        /// The line, from 1.
        line: usize,
        /// What is wrong.
        problem: &'static str,
    },
    /// An `include=` names a profile that has no sibling directory with a `tuned.conf`.
    #[error("{path} [main] include={include}: no profile {include:?} at {missing}")]
    MissingInclude {
        /// The including file.
        path: PathBuf,
        /// The name included.
        include: String,
        /// Where it was looked for.
        missing: PathBuf,
    },
    /// The include chain loops.
    #[error("circular include: {}", chain.join(" -> "))]
    CircularInclude {
        /// The profiles of the loop, the first repeated at the end.
        chain: Vec<String>,
    },
    /// The twine profile could not be rendered as TOML.
    #[error("rendering the twine profile: {0}")]
    Render(#[from] toml::ser::Error),
}

/// The profile directories under a TuneD profile root: `ROOT/profiles/*` (newer TuneD) or
/// `ROOT/*` (Debian's `/usr/lib/tuned`), each holding a `tuned.conf`; sorted.
pub fn profile_dirs(root: &Path) -> Result<Vec<PathBuf>, TunedError> {
    let nested = root.join("profiles");
    let base = if nested.is_dir() {
        nested
    } else {
        root.to_owned()
    };
    let io = |source| TunedError::Io {
        path: base.clone(),
        source,
    };
    let mut dirs = Vec::new();
    for entry in std::fs::read_dir(&base).map_err(io)? {
        let path = entry.map_err(io)?.path();
        if path.join("tuned.conf").is_file() {
            dirs.push(path);
        }
    }
    dirs.sort();
    Ok(dirs)
}

/// Imports the TuneD profile in `dir` (see the module docs for what is mapped and how).
pub fn import_tuned(dir: &Path) -> Result<Imported, TunedError> {
    let mut dropped = Vec::new();
    let mut stack = Vec::new();
    let units = load(dir, &mut stack, &mut dropped)?;
    let name = dir
        .canonicalize()
        .ok()
        .and_then(|d| d.file_name().map(|n| n.to_string_lossy().into_owned()))
        .unwrap_or_else(|| dir.display().to_string());
    let profile = map(name, units, &mut dropped);
    Ok(Imported {
        profile_toml: toml::to_string(&profile)?,
        dropped,
    })
}

fn drop_it(section: &str, option: &str, value: &str, reason: impl Into<String>) -> Dropped {
    Dropped {
        section: section.to_owned(),
        option: option.to_owned(),
        value: value.to_owned(),
        reason: reason.into(),
    }
}

/// Loads `dir` and its includes, merged; `stack` holds the profiles being loaded.
fn load(
    dir: &Path,
    stack: &mut Vec<PathBuf>,
    dropped: &mut Vec<Dropped>,
) -> Result<Vec<Section>, TunedError> {
    let real = dir.canonicalize().map_err(|source| TunedError::Io {
        path: dir.to_owned(),
        source,
    })?;
    if let Some(at) = stack.iter().position(|d| *d == real) {
        let name = |d: &PathBuf| {
            d.file_name()
                .map_or_else(String::new, |n| n.to_string_lossy().into_owned())
        };
        let mut chain: Vec<String> = stack[at..].iter().map(name).collect();
        chain.push(name(&real));
        return Err(TunedError::CircularInclude { chain });
    }
    let path = real.join("tuned.conf");
    let text = match std::fs::read_to_string(&path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return Err(TunedError::NoTunedConf {
                dir: dir.to_owned(),
            });
        }
        Err(source) => return Err(TunedError::Io { path, source }),
    };
    let mut sections = ini::parse(&text).map_err(|e| TunedError::Syntax {
        path: path.clone(),
        line: e.line,
        problem: e.problem,
    })?;
    let include = sections
        .iter_mut()
        .find(|s| s.name == "main")
        .and_then(|m| m.take("include"))
        .flatten();
    stack.push(real.clone());
    let mut merged: Vec<Section> = Vec::new();
    for name in include
        .iter()
        .flat_map(|v| v.split([',', ';', ' ', '\t', '\n']))
        .filter(|n| !n.is_empty())
    {
        if name.contains("${") {
            let all = include.as_deref().unwrap_or_default();
            dropped.push(drop_it(
                "main",
                "include",
                all,
                format!("the include {name:?} calls a TuneD function or variable that cannot be evaluated when importing"),
            ));
            continue;
        }
        let sibling = real.parent().unwrap_or(&real).join(name);
        // a profile name, not a path: nothing outside the sibling directories is read
        let not_a_name = name.contains('/') || name == "." || name == "..";
        if not_a_name || !sibling.join("tuned.conf").is_file() {
            stack.pop();
            return Err(TunedError::MissingInclude {
                path,
                include: name.to_owned(),
                missing: sibling,
            });
        }
        let inherited = load(&sibling, stack, dropped)?;
        merge(&mut merged, inherited);
    }
    stack.pop();
    merge(&mut merged, sections);
    Ok(merged)
}

fn truthy(v: Option<&str>) -> bool {
    matches!(
        v.map(str::to_ascii_lowercase).as_deref(),
        Some("1" | "true" | "yes" | "on" | "y")
    )
}

/// Merges `later` over `into`, as TuneD's merger: option by option, `replace` swaps the
/// unit, `drop` removes inherited options.
fn merge(into: &mut Vec<Section>, later: Vec<Section>) {
    for mut unit in later {
        let replace = truthy(unit.take("replace").flatten().as_deref());
        let drops = unit.take("drop").flatten();
        let Some(have) = into.iter_mut().find(|s| s.name == unit.name) else {
            into.push(unit);
            continue;
        };
        if replace {
            *have = unit;
            continue;
        }
        for name in drops.iter().flat_map(|d| d.split([',', ';', ' '])) {
            have.take(name.trim());
        }
        for e in unit.entries {
            match (e.name.as_str(), have.get(&e.name)) {
                // scripts accumulate instead of replacing (merger.py)
                ("script", Some(old)) => {
                    let joined = format!("{old} {}", e.value.unwrap_or_default());
                    have.set("script", Some(joined));
                }
                _ => have.set(&e.name, e.value),
            }
        }
    }
}

/// Expands `${var}` from `vars`; `Err` names what cannot be expanded.
fn expand(value: &str, vars: &BTreeMap<String, String>, depth: u8) -> Result<String, String> {
    let mut out = String::new();
    let mut rest = value;
    while let Some(at) = rest.find("${") {
        out.push_str(&rest[..at]);
        let after = &rest[at + 2..];
        let Some(end) = after.find('}') else {
            return Err(format!("an unclosed ${{ in {value:?}"));
        };
        let name = &after[..end];
        if name.contains(':') || name.contains("${") {
            return Err(format!(
                "it calls a TuneD function (${{{}...}}) that cannot be evaluated when importing",
                name.split(':').take(2).collect::<Vec<_>>().join(":")
            ));
        }
        match vars.get(name) {
            Some(v) if depth < 8 => out.push_str(&expand(v, vars, depth + 1)?),
            Some(_) => {
                return Err(format!(
                    "the variable {name:?} is defined in terms of itself (its value is meant to come from an external variables file)"
                ));
            }
            None => {
                return Err(format!(
                    "the variable {name:?} is not defined in the profile"
                ));
            }
        }
        rest = &after[end + 1..];
    }
    out.push_str(rest);
    Ok(out)
}

/// A `[cmdline]` value: `arg=value`, or a bare flag (`true`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(untagged)]
enum CmdlineValue {
    Flag(bool),
    Value(String),
}

/// `[thp]` of the schema.
#[derive(Debug, Default, Serialize)]
struct Thp {
    #[serde(skip_serializing_if = "Option::is_none")]
    enabled: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    defrag: Option<String>,
}

/// `[cpu]` of the schema.
#[derive(Debug, Serialize)]
struct Cpu {
    governor: String,
}

/// The part of the twine profile schema the importer writes.
#[derive(Debug, Default, Serialize)]
struct TwineProfile {
    name: String,
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    sysctl: BTreeMap<String, String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    thp: Option<Thp>,
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    cmdline: BTreeMap<String, CmdlineValue>,
    #[serde(skip_serializing_if = "Option::is_none")]
    cpu: Option<Cpu>,
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    sysfs: BTreeMap<String, String>,
}

/// Unit-level options that TuneD's merger and unit manager read, not plugin options.
const UNIT_OPTIONS: &[&str] = &["type", "enabled", "priority"];
/// Unit-level options that make a unit apply only on some hardware.
const CONDITIONS: &[&str] = &[
    "uname_regex",
    "cpuinfo_regex",
    "devices",
    "devices_udev_regex",
];
/// The vm plugin options that are plain sysctls (`plugin_vm.py`).
const VM_SYSCTLS: &[&str] = &[
    "dirty_bytes",
    "dirty_ratio",
    "dirty_background_bytes",
    "dirty_background_ratio",
];

/// Maps the merged units to the twine profile.
fn map(name: String, mut units: Vec<Section>, dropped: &mut Vec<Dropped>) -> TwineProfile {
    let mut vars = BTreeMap::new();
    if let Some(at) = units.iter().position(|s| s.name == "variables") {
        for e in units.remove(at).entries {
            match (e.name.as_str(), e.value) {
                ("include", v) => dropped.push(drop_it(
                    "variables",
                    "include",
                    v.as_deref().unwrap_or_default(),
                    "an external variables file (edited on each host) is not read when importing",
                )),
                (n, Some(v)) => {
                    vars.insert(n.to_owned(), v);
                }
                (_, None) => {}
            }
        }
    }
    let mut p = TwineProfile {
        name,
        ..TwineProfile::default()
    };
    for unit in units {
        map_unit(&mut p, &unit, &vars, dropped);
    }
    p
}

fn map_unit(
    p: &mut TwineProfile,
    unit: &Section,
    vars: &BTreeMap<String, String>,
    dropped: &mut Vec<Dropped>,
) {
    let section = unit.name.as_str();
    let plugin = unit.get("type").unwrap_or(section);
    // The unit's own options (type, conditions, priority) are not settings: list only the
    // plugin options, or the unit itself when it has none.
    let whole_unit = |reason: String| -> Vec<Dropped> {
        let settings: Vec<Dropped> = unit
            .entries
            .iter()
            .filter(|e| {
                !UNIT_OPTIONS.contains(&e.name.as_str()) && !CONDITIONS.contains(&e.name.as_str())
            })
            .map(|e| {
                drop_it(
                    section,
                    &e.name,
                    e.value.as_deref().unwrap_or_default(),
                    reason.clone(),
                )
            })
            .collect();
        if settings.is_empty() {
            return vec![drop_it(section, "", "", reason)];
        }
        settings
    };
    if section == "main" {
        for e in &unit.entries {
            if !matches!(e.name.as_str(), "summary" | "description") {
                dropped.push(drop_it(
                    section,
                    &e.name,
                    e.value.as_deref().unwrap_or_default(),
                    "a [main] option with no twine equivalent",
                ));
            }
        }
        return;
    }
    if unit.get("enabled").is_some() && !truthy(unit.get("enabled")) {
        dropped.extend(whole_unit("the unit is disabled".into()));
        return;
    }
    if let Some(c) = CONDITIONS.iter().find(|c| unit.get(c).is_some()) {
        dropped.extend(whole_unit(format!(
            "the unit applies only where {c} matches; twine profiles have no hardware conditions"
        )));
        return;
    }
    if !matches!(plugin, "sysctl" | "vm" | "bootloader" | "cpu" | "sysfs") {
        dropped.extend(whole_unit(format!(
            "the TuneD {plugin} plugin has no twine equivalent"
        )));
        return;
    }
    let mut cmdline_words: Vec<(String, String)> = Vec::new();
    for e in &unit.entries {
        let option = e.name.as_str();
        if UNIT_OPTIONS.contains(&option) {
            continue;
        }
        let raw = e.value.as_deref().unwrap_or_default();
        let mut lost = |reason: String| dropped.push(drop_it(section, option, raw, reason));
        let Some(value) = &e.value else {
            lost("an option without a value".into());
            continue;
        };
        if plugin == "bootloader" && option.starts_with("cmdline") {
            cmdline_words.push((option.to_owned(), value.clone()));
            continue;
        }
        if value.starts_with(['>', '<']) {
            lost("a value conditional on the current one (>, <) has no twine equivalent".into());
            continue;
        }
        let value = match expand(value, vars, 0) {
            Ok(v) => v,
            Err(why) => {
                lost(format!("cannot be expanded: {why}"));
                continue;
            }
        };
        match (plugin, option) {
            ("sysctl", key) => match SysctlKey::new(key) {
                Ok(_) => {
                    p.sysctl.insert(key.to_owned(), value);
                }
                Err(err) => lost(err.to_string()),
            },
            ("vm", "transparent_hugepages" | "transparent_hugepage") => {
                if matches!(value.as_str(), "always" | "madvise" | "never") {
                    p.thp.get_or_insert_with(Thp::default).enabled = Some(value);
                } else {
                    lost("not one of always, madvise, never".into());
                }
            }
            ("vm", "transparent_hugepage.defrag" | "transparent_hugepages.defrag") => {
                p.thp.get_or_insert_with(Thp::default).defrag = Some(value);
            }
            ("vm", o) if VM_SYSCTLS.contains(&o) => {
                p.sysctl.insert(format!("vm.{o}"), value);
            }
            ("cpu", "governor") => {
                let mut alternatives = value.split('|').map(str::trim);
                let first = alternatives.next().unwrap_or_default().to_owned();
                let rest: Vec<&str> = alternatives.collect();
                if !rest.is_empty() {
                    dropped.push(drop_it(
                        section,
                        option,
                        &rest.join("|"),
                        format!("alternative governors: twine sets one, the first ({first})"),
                    ));
                }
                p.cpu = Some(Cpu { governor: first });
            }
            ("sysfs", path) => match sysfs_key(path) {
                Ok(key) => {
                    p.sysfs.insert(key, value);
                }
                Err(why) => lost(why),
            },
            _ => lost(format!(
                "the TuneD {plugin} option {option} has no twine equivalent"
            )),
        }
    }
    cmdline(p, section, &cmdline_words, vars, dropped);
}

/// A TuneD sysfs key (`/sys/...`, maybe a glob) as a twine sysfs key (relative to /sys).
fn sysfs_key(path: &str) -> Result<String, String> {
    let Some(rel) = path.strip_prefix("/sys/") else {
        return Err("a sysfs path outside /sys".into());
    };
    if rel.contains(['*', '?', '[']) {
        return Err("a glob: twine sysfs keys name one attribute each".into());
    }
    SysfsPath::new(rel)
        .map(|_| rel.to_owned())
        .map_err(|e| e.to_string())
}

/// Applies the `cmdline*` options of a bootloader unit, in order: `+` (or nothing) adds
/// words, `-` removes words added earlier (`plugin_bootloader.py`).
fn cmdline(
    p: &mut TwineProfile,
    section: &str,
    options: &[(String, String)],
    vars: &BTreeMap<String, String>,
    dropped: &mut Vec<Dropped>,
) {
    for (option, value) in options {
        let (remove, words) = match value.strip_prefix('-') {
            Some(w) => (true, w),
            None => (false, value.strip_prefix('+').unwrap_or(value)),
        };
        for word in words.split_whitespace() {
            let word = match expand(word, vars, 0) {
                Ok(w) => w,
                Err(why) => {
                    dropped.push(drop_it(
                        section,
                        option,
                        word,
                        format!("cannot be expanded: {why}"),
                    ));
                    continue;
                }
            };
            let (arg, val) = match word.split_once('=') {
                Some((a, v)) => (a, CmdlineValue::Value(v.to_owned())),
                None => (word.as_str(), CmdlineValue::Flag(true)),
            };
            if let Err(e) = CmdlineArg::new(arg) {
                dropped.push(drop_it(section, option, &word, e.to_string()));
                continue;
            }
            if remove {
                if p.cmdline.get(arg) == Some(&val) {
                    p.cmdline.remove(arg);
                } else {
                    dropped.push(drop_it(
                        section,
                        option,
                        &word,
                        "removes an argument no earlier unit added; a twine profile cannot ask for an argument's absence",
                    ));
                }
                continue;
            }
            if let Some(old) = p.cmdline.insert(arg.to_owned(), val) {
                let old = match old {
                    CmdlineValue::Flag(_) => arg.to_owned(),
                    CmdlineValue::Value(v) => format!("{arg}={v}"),
                };
                dropped.push(drop_it(
                    section,
                    option,
                    &old,
                    "a repeated argument: twine keeps one value per argument, the last",
                ));
            }
        }
    }
}
