//! Turning a plan into journal steps, checking everything that can be checked before the
//! first write: values, missing keys, the boot config's syntax.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use super::journal::{Check, Op, Step};
use super::{ApplyError, ApplyPolicy, BootItem, MissingKeys};
use crate::change::{Plan, Setting};
use crate::host::{self, BootConfig, HostRoot, HugepageSize};

/// twine's own sysctl.d drop-in, relative to the root; rewritten whole, never edited.
pub(crate) const SYSCTL_DROP_IN: &str = "etc/sysctl.d/90-twine.conf";
const SYSCTL_HEADER: &str = "# Written by twine-profiles; rewritten as a whole on every apply.\n";

/// Command-line arguments twine writes in pairs for the hugepage settings, never alone.
const HUGEPAGE_ARGS: &[&str] = &["hugepages", "hugepagesz"];

/// The steps of one apply, and what it reports before writing.
#[derive(Debug, Default)]
pub(crate) struct Built {
    pub(crate) steps: Vec<Step>,
    pub(crate) boot: Vec<BootItem>,
    pub(crate) skipped: Vec<Setting>,
}

fn step(setting: Option<&Setting>, op: Op) -> Step {
    Step {
        setting: setting.cloned(),
        op,
        original: None,
        done: false,
    }
}

pub(crate) fn build(
    root: &HostRoot,
    plan: &Plan,
    policy: ApplyPolicy,
) -> Result<Built, ApplyError> {
    let mut built = Built::default();
    let mut sysctls: Vec<(String, Option<String>)> = Vec::new();
    let mut boot: Option<BootConfig> = None;
    for change in &plan.changes {
        let setting = &change.setting;
        let to = change.to.as_deref();
        let value = || {
            let v = to.ok_or_else(|| ApplyError::NoValue {
                setting: setting.clone(),
            })?;
            if v.contains(['\n', '\0']) {
                return Err(ApplyError::BadValue {
                    setting: setting.clone(),
                    value: v.to_owned(),
                    problem: "has a newline or NUL",
                });
            }
            Ok(v.to_owned())
        };
        // A setting this kernel lacks: refused before anything is written, or skipped.
        let missing = |path: PathBuf, built: &mut Built| -> Result<(), ApplyError> {
            match policy.missing {
                MissingKeys::Fail => Err(ApplyError::Missing {
                    setting: setting.clone(),
                    path: root.path(path),
                }),
                MissingKeys::Skip => {
                    built.skipped.push(setting.clone());
                    Ok(())
                }
            }
        };
        match setting {
            Setting::Sysctl { key } => {
                let path = key.relative_path();
                if !root.path(&path).exists() {
                    missing(path, &mut built)?;
                    continue;
                }
                if to.is_some() {
                    let v = value()?;
                    built.steps.push(step(
                        Some(setting),
                        Op::Live {
                            path,
                            value: v.clone(),
                            check: Check::Words,
                        },
                    ));
                    sysctls.push((key.to_string(), Some(v)));
                } else {
                    sysctls.push((key.to_string(), None));
                }
            }
            Setting::Hugepages2M { .. } | Setting::Thp { .. } | Setting::Sysfs { .. } => {
                let path = host::live_path(setting).unwrap_or_default();
                let v = value()?;
                if !root.path(&path).exists() {
                    missing(path, &mut built)?;
                    continue;
                }
                let check = match setting {
                    Setting::Hugepages2M { .. } => {
                        if v.parse::<u64>().is_err() {
                            return Err(ApplyError::BadValue {
                                setting: setting.clone(),
                                value: v,
                                problem: "is not a page count",
                            });
                        }
                        Check::Count
                    }
                    Setting::Thp { .. } => Check::Bracketed,
                    _ => Check::Trimmed,
                };
                built.steps.push(step(
                    Some(setting),
                    Op::Live {
                        path,
                        value: v,
                        check,
                    },
                ));
            }
            Setting::CpuGovernor => {
                let v = value()?;
                let paths = root.governor_paths()?;
                if paths.is_empty() {
                    missing(PathBuf::from("sys/devices/system/cpu"), &mut built)?;
                    continue;
                }
                for (_, path) in paths {
                    built.steps.push(step(
                        Some(setting),
                        Op::Live {
                            path,
                            value: v.clone(),
                            check: Check::Trimmed,
                        },
                    ));
                }
            }
            Setting::Cmdline { arg } if HUGEPAGE_ARGS.contains(&arg.to_string().as_str()) => {
                return Err(ApplyError::BadValue {
                    setting: setting.clone(),
                    value: arg.to_string(),
                    problem: "is set through the hugepages-2m and hugepages-1g settings",
                });
            }
            Setting::Hugepages1G | Setting::Cmdline { .. } => {
                if let Some(v) = to
                    && (v.contains(char::is_whitespace) || v.contains(['"', '\'']))
                {
                    return Err(ApplyError::BadValue {
                        setting: setting.clone(),
                        value: v.to_owned(),
                        problem: "has whitespace or a quote, which a command-line argument cannot hold",
                    });
                }
                let cfg = match &mut boot {
                    Some(cfg) => cfg,
                    None => boot.insert(root.boot_config()?),
                };
                set_boot_value(cfg, setting, to);
                built.boot.push(BootItem {
                    setting: setting.clone(),
                    value: change.to.clone(),
                });
            }
            Setting::DropIn { unit, name } => {
                let path = unit.drop_in_path(name);
                built.steps.push(step(
                    Some(setting),
                    Op::File {
                        path,
                        content: change.to.clone(),
                    },
                ));
            }
            Setting::Networkd { name } => {
                let path = Path::new("etc/systemd/network").join(name.as_str());
                built.steps.push(step(
                    Some(setting),
                    Op::File {
                        path,
                        content: change.to.clone(),
                    },
                ));
            }
            Setting::Cgroup2Controllers { cgroup } => {
                let path = root.subtree_control(cgroup.as_str())?;
                if !root.path(&path).exists() {
                    missing(path, &mut built)?;
                    continue;
                }
                let want = host::sorted_words(to.unwrap_or_default());
                built
                    .steps
                    .push(step(Some(setting), Op::Controllers { path, want }));
            }
        }
    }
    if !sysctls.is_empty() {
        let content = sysctl_drop_in(root, &sysctls)?;
        built.steps.push(step(
            None,
            Op::File {
                path: PathBuf::from(SYSCTL_DROP_IN),
                content,
            },
        ));
    }
    if let Some(cfg) = boot {
        built.steps.push(boot_step(&cfg)?);
    }
    Ok(built)
}

/// The step that writes a boot config.
pub(crate) fn boot_step(cfg: &BootConfig) -> Result<Step, ApplyError> {
    let content = cfg
        .render()
        .map_err(|(value, problem)| ApplyError::BadFile {
            path: PathBuf::from(cfg.path()),
            value,
            problem,
        })?;
    Ok(step(
        None,
        Op::File {
            path: PathBuf::from(cfg.path()),
            content: Some(content),
        },
    ))
}

/// What a boot-time setting reads as in a command line.
pub(crate) fn boot_value(cfg: &BootConfig, setting: &Setting) -> Option<String> {
    match setting {
        Setting::Cmdline { arg } => cfg.arg(&arg.to_string()),
        Setting::Hugepages1G => cfg.hugepages(HugepageSize::Giga),
        _ => cfg.hugepages(HugepageSize::Two),
    }
}

/// Sets a boot-time setting in a command line (2 MiB hugepages: an escalated count).
pub(crate) fn set_boot_value(cfg: &mut BootConfig, setting: &Setting, value: Option<&str>) {
    match setting {
        Setting::Cmdline { arg } => cfg.set_arg(&arg.to_string(), value),
        Setting::Hugepages1G => cfg.set_hugepages(HugepageSize::Giga, value),
        _ => cfg.set_hugepages(HugepageSize::Two, value),
    }
}

/// twine's drop-in with the plan's sysctls set (`None`: removed); `None` when it would be
/// empty, so that the file is removed.
fn sysctl_drop_in(
    root: &HostRoot,
    sysctls: &[(String, Option<String>)],
) -> Result<Option<String>, ApplyError> {
    let mut entries: BTreeMap<String, String> = BTreeMap::new();
    if let Some(text) = host::read_opt(&root.path(SYSCTL_DROP_IN))? {
        for line in text.lines() {
            let line = line.trim();
            if line.is_empty() || line.starts_with(['#', ';']) {
                continue;
            }
            let Some((k, v)) = line.split_once('=') else {
                return Err(ApplyError::BadFile {
                    path: root.path(SYSCTL_DROP_IN),
                    value: line.to_owned(),
                    problem: "is not a `key = value` line",
                });
            };
            entries.insert(k.trim().to_owned(), v.trim().to_owned());
        }
    }
    for (k, v) in sysctls {
        match v {
            Some(v) => entries.insert(k.clone(), v.clone()),
            None => entries.remove(k),
        };
    }
    if entries.is_empty() {
        return Ok(None);
    }
    let mut out = String::from(SYSCTL_HEADER);
    for (k, v) in entries {
        out.push_str(&format!("{k} = {v}\n"));
    }
    Ok(Some(out))
}
