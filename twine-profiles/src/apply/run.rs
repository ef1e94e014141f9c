//! [`apply`] and [`resume`]: running a journal's steps in order, each recorded before it
//! writes and marked done after it read back.

use std::path::PathBuf;

use super::build;
use super::journal::{JOURNAL, Journal, Op};
use super::readback::boot_status;
use super::step::{Outcome, perform, record};
use super::{ApplyError, ApplyPolicy, ApplyReport, BootItem, KernelWrites, Partial, Writes};
use crate::change::{Plan, Setting};
use crate::host::{BootConfig, HostRoot};

/// Applies a plan on a host with [`KernelWrites`]; see [`apply_with`].
pub fn apply(root: &HostRoot, plan: &Plan, policy: ApplyPolicy) -> Result<ApplyReport, ApplyError> {
    apply_with(root, plan, policy, &mut KernelWrites)
}

/// Applies a plan, every write through `writes`. Everything that can be checked is checked
/// before the first write; each write is recorded in the journal before it happens and read
/// back after. On an error the journal says what was done: [`resume`] or [`rollback`](super::rollback).
pub fn apply_with(
    root: &HostRoot,
    plan: &Plan,
    policy: ApplyPolicy,
    writes: &mut dyn Writes,
) -> Result<ApplyReport, ApplyError> {
    let _lock = Journal::lock(root)?;
    let mut journal = match Journal::load(root)? {
        Some(j) => {
            j.ensure_finished(root)?;
            j
        }
        None => Journal::new(policy),
    };
    let built = build::build(root, plan, policy)?;
    journal.policy = policy;
    journal.report = ApplyReport {
        skipped: built.skipped,
        ..ApplyReport::default()
    };
    if built.steps.is_empty() {
        return Ok(journal.report);
    }
    journal.boot.extend(built.boot);
    journal.steps.extend(built.steps);
    journal.finished = false;
    journal.save(root, writes)?;
    run(root, &mut journal, writes)
}

/// Resumes an interrupted apply with [`KernelWrites`]; see [`resume_with`].
pub fn resume(root: &HostRoot) -> Result<ApplyReport, ApplyError> {
    resume_with(root, &mut KernelWrites)
}

/// Continues an interrupted apply from its first unfinished step, rewriting the step that
/// was in flight (writes are idempotent). A finished apply returns its report again.
pub fn resume_with(root: &HostRoot, writes: &mut dyn Writes) -> Result<ApplyReport, ApplyError> {
    let path = root.path(JOURNAL);
    let _lock = Journal::lock(root)?;
    let mut journal =
        Journal::load(root)?.ok_or(ApplyError::NothingToResume { path: path.clone() })?;
    if journal.rolling_back {
        return Err(ApplyError::Unfinished {
            path,
            what: "rollback",
        });
    }
    if journal.finished {
        return Ok(journal.report);
    }
    run(root, &mut journal, writes)
}

fn run(
    root: &HostRoot,
    journal: &mut Journal,
    writes: &mut dyn Writes,
) -> Result<ApplyReport, ApplyError> {
    let mut i = 0;
    while i < journal.steps.len() {
        if journal.steps[i].done {
            i += 1;
            continue;
        }
        let op = journal.steps[i].op.clone();
        if journal.steps[i].original.is_none() {
            journal.steps[i].original = Some(record(root, &op)?);
            journal.save(root, writes)?;
        }
        if let Outcome::Partial { wanted, got } = perform(root, writes, &op)? {
            let path = root.path(op.path());
            if !journal.policy.allow_reboot {
                return Err(ApplyError::PartialHugepages { path, wanted, got });
            }
            escalate(root, journal, i, wanted)?;
            let setting = journal.steps[i].setting.clone();
            journal
                .report
                .partial
                .extend(setting.map(|setting| Partial {
                    setting,
                    path,
                    wanted,
                    got,
                }));
        }
        match journal.steps[i].setting {
            Some(Setting::DropIn { .. }) => journal.report.daemon_reload = true,
            Some(Setting::Networkd { .. }) => journal.report.networkd_reload = true,
            _ => {}
        }
        journal.steps[i].done = true;
        journal.save(root, writes)?;
        i += 1;
    }
    let status = boot_status(root, journal)?;
    journal.report.reboot_required = !status.pending.is_empty();
    journal.report.pending_boot = status.pending;
    journal.finished = true;
    journal.save(root, writes)?;
    Ok(journal.report.clone())
}

/// Moves a partly granted 2 MiB count to the boot command line: into the boot-config step
/// still to come, or a new one at the end.
fn escalate(
    root: &HostRoot,
    journal: &mut Journal,
    i: usize,
    wanted: u64,
) -> Result<(), ApplyError> {
    let Some(setting) = journal.steps[i].setting.clone() else {
        return Ok(());
    };
    let boot_path = PathBuf::from(root.boot_config()?.path());
    let later = journal.steps[i + 1..]
        .iter()
        .position(|s| !s.done && s.setting.is_none() && s.op.path() == boot_path);
    let mut cfg = match later.map(|j| &journal.steps[i + 1 + j].op) {
        Some(Op::File {
            content: Some(text),
            ..
        }) => {
            BootConfig::parse(&boot_path, text).map_err(|(value, problem)| ApplyError::BadFile {
                path: root.path(&boot_path),
                value,
                problem,
            })?
        }
        _ => root.boot_config()?,
    };
    let count = match &setting {
        Setting::Hugepages2M { node: Some(n) } => {
            // The per-node form `hugepages=0:N,1:M`, merged with the nodes already there.
            let mut nodes: Vec<String> = build::boot_value(&cfg, &setting)
                .filter(|v| v.contains(':'))
                .map(|v| {
                    v.split(',')
                        .filter(|e| !e.starts_with(&format!("{n}:")))
                        .map(str::to_owned)
                        .collect()
                })
                .unwrap_or_default();
            nodes.push(format!("{n}:{wanted}"));
            nodes.sort();
            nodes.join(",")
        }
        _ => wanted.to_string(),
    };
    build::set_boot_value(&mut cfg, &setting, Some(&count));
    let new = build::boot_step(&cfg)?;
    match later {
        Some(j) => journal.steps[i + 1 + j] = new,
        None => journal.steps.push(new),
    }
    journal.boot.push(BootItem {
        setting,
        value: Some(count),
    });
    Ok(())
}
