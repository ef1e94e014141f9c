//! [`verify`]: reading back what the journal says twine wrote, and the booted command line.

use std::path::PathBuf;

use super::build;
use super::journal::{self, Check, Journal, Op};
use super::step::{normalised, read_as};
use super::{ApplyError, BootItem};
use crate::change::Setting;
use crate::host::{self, BootConfig, HostRoot};

/// What [`verify`] found: boot-time settings pending (in the boot config, not yet in the
/// booted command line) or done, and writes that drifted.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct VerifyReport {
    /// Written, awaiting a reboot.
    pub pending: Vec<BootItem>,
    /// In effect.
    pub done: Vec<BootItem>,
    /// Places twine wrote that no longer hold what it wrote (a reboot resets live writes to
    /// THP, the 2 MiB pool, sysfs, the governor and cgroup2 controllers, which
    /// [`super::reassert`] writes back; someone else may have written them).
    pub drifted: Vec<Drift>,
}

/// A place that no longer holds what twine wrote there.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct Drift {
    /// The setting (`None`: twine's sysctl.d drop-in or the boot config).
    pub setting: Option<Setting>,
    /// The file, under the root.
    pub path: PathBuf,
    /// What twine wrote (`None`: it removed the file).
    pub wanted: Option<String>,
    /// What it holds now (`None`: absent).
    pub found: Option<String>,
}

/// Which boot-time settings of the journal the booted `proc/cmdline` shows (done) and which
/// it does not yet (pending), and which finished writes no longer read back (drifted: after
/// a reboot, the live-only ones). Without a journal, all are empty.
pub fn verify(root: &HostRoot) -> Result<VerifyReport, ApplyError> {
    let Some(journal) = Journal::load(root)? else {
        return Ok(VerifyReport::default());
    };
    let mut status = boot_status(root, &journal)?;
    status.drifted = drifts(root, &journal)?
        .into_iter()
        .map(|(_, drift)| drift)
        .collect();
    Ok(status)
}

/// Every place whose latest finished write no longer reads back, in journal order, with
/// that write's step. A 2 MiB count the apply escalated to the boot command line is left
/// out: the kernel granted it only in part, as the apply reported.
pub(super) fn drifts<'j>(
    root: &HostRoot,
    journal: &'j Journal,
) -> Result<Vec<(&'j journal::Step, Drift)>, ApplyError> {
    // The latest finished write to each place is what it should hold.
    let mut latest: Vec<&journal::Step> = Vec::new();
    for step in journal.steps.iter().rev().filter(|s| s.done) {
        if !latest.iter().any(|l| l.op.path() == step.op.path()) {
            latest.push(step);
        }
    }
    let mut drifts = Vec::new();
    for step in latest.into_iter().rev() {
        let path = root.path(step.op.path());
        let raw = host::read_opt(&path)?;
        let (wanted, found) = match &step.op {
            Op::Live { value, check, .. } => {
                let partial = journal.report.partial.iter().any(|p| p.path == path);
                if *check == Check::Count && partial {
                    continue;
                }
                let found = raw.map(|r| read_as(&path, &r, *check)).transpose()?;
                (Some(normalised(value, *check)), found)
            }
            Op::File { content, .. } => (content.clone(), raw),
            Op::Controllers { want, .. } => {
                (Some(want.clone()), raw.map(|r| host::sorted_words(&r)))
            }
        };
        if wanted != found {
            let drift = Drift {
                setting: step.setting.clone(),
                path,
                wanted,
                found,
            };
            drifts.push((step, drift));
        }
    }
    Ok(drifts)
}

pub(super) fn boot_status(root: &HostRoot, journal: &Journal) -> Result<VerifyReport, ApplyError> {
    let booted = BootConfig::kernel_cmdline("proc/cmdline", &root.booted_cmdline()?);
    // The latest value per setting is the one that counts.
    let mut latest: Vec<&BootItem> = Vec::new();
    for item in journal.boot.iter().rev() {
        if !latest.iter().any(|i| i.setting == item.setting) {
            latest.push(item);
        }
    }
    let mut status = VerifyReport::default();
    for item in latest.into_iter().rev() {
        if build::boot_value(&booted, &item.setting) == item.value {
            status.done.push(item.clone());
        } else {
            status.pending.push(item.clone());
        }
    }
    Ok(status)
}
