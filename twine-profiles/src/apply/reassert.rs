//! [`reassert`]: after a boot, writing back the journal's live writes that the kernel forgot.
//!
//! THP `enabled`/`defrag`, the 2 MiB hugepage pool, sysfs attributes, the cpufreq governor and
//! cgroup2 controllers are kernel state that a boot resets to its defaults; twine writes them
//! live and keeps no file the boot reads them from. Sysctls are not among them (twine's
//! sysctl.d drop-in sets them at boot), nor are the files twine writes (drop-ins, networkd
//! files, the boot config), which persist.

use super::journal::Journal;
use super::readback::{Drift, drifts};
use super::step::{Outcome, perform};
use super::{ApplyError, KernelWrites, Partial, Writes};
use crate::change::Setting;
use crate::host::HostRoot;

/// What [`reassert`] wrote back.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct ReassertReport {
    /// Each place rewritten: the value the journal says twine wrote (`wanted`, now back in
    /// place) and what the place held before the rewrite (`found`).
    pub rewritten: Vec<Drift>,
    /// Hugepage counts the kernel granted only in part on the rewrite, when the journal's
    /// policy allows a reboot. Nothing is escalated to the boot command line (that would be
    /// a write the journal does not hold), so [`super::verify`] still reports them drifted.
    pub partial: Vec<Partial>,
}

/// Reasserts with [`KernelWrites`]; see [`reassert_with`].
pub fn reassert(root: &HostRoot) -> Result<ReassertReport, ApplyError> {
    reassert_with(root, &mut KernelWrites)
}

/// Writes back, through `writes`, every finished journal write of a kind the kernel forgets
/// at boot (THP, the 2 MiB pool, sysfs attributes, the governor, cgroup2 controllers) whose
/// place no longer holds it, and reads each back. Only the journal's latest wanted value per
/// place is written; nothing outside the journal, and the journal itself not at all, so the
/// recorded originals stay and a later [`super::rollback`] restores the values from before
/// the apply. Idempotent: where nothing drifted, nothing is written. Without a journal,
/// nothing is done.
///
/// A 2 MiB count the kernel grants only in part is [`ApplyError::PartialHugepages`] under a
/// policy without reboot, as in [`super::apply`]; with one, it is reported in
/// [`ReassertReport::partial`]. An error leaves the places already rewritten as they are
/// (each holds the journal's wanted value); running it again continues.
pub fn reassert_with(
    root: &HostRoot,
    writes: &mut dyn Writes,
) -> Result<ReassertReport, ApplyError> {
    let Some((_lock, journal)) = Journal::load_locked(root)? else {
        return Ok(ReassertReport::default());
    };
    journal.ensure_finished(root)?;
    let mut report = ReassertReport::default();
    for (step, drift) in drifts(root, &journal)? {
        if !forgotten_at_boot(step.setting.as_ref()) {
            continue;
        }
        if let Outcome::Partial { wanted, got } = perform(root, writes, &step.op)? {
            if !journal.policy.allow_reboot {
                return Err(ApplyError::PartialHugepages {
                    path: drift.path,
                    wanted,
                    got,
                });
            }
            report
                .partial
                .extend(step.setting.clone().map(|setting| Partial {
                    setting,
                    path: drift.path.clone(),
                    wanted,
                    got,
                }));
        }
        report.rewritten.push(drift);
    }
    Ok(report)
}

/// Whether a setting's live write is lost at boot, with nothing on disk to restore it.
fn forgotten_at_boot(setting: Option<&Setting>) -> bool {
    matches!(
        setting,
        Some(
            Setting::Thp { .. }
                | Setting::Hugepages2M { .. }
                | Setting::Sysfs { .. }
                | Setting::CpuGovernor
                | Setting::Cgroup2Controllers { .. }
        )
    )
}
