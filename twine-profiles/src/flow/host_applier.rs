//! [`HostApplier`]: the flow's [`Applier`] carried out by [`crate::apply`] through a
//! [`HostRoot`], so that an integrator implements only [`super::Drain`] and
//! [`super::Reboot`].

use crate::apply::{
    self, ApplyError, ApplyPolicy, ApplyReport, KernelWrites, ReassertReport, Writes,
};
use crate::change::Plan;
use crate::host::HostRoot;

use super::{Applier, HookError};

/// Applies, verifies and rolls back plans on a [`HostRoot`] with [`crate::apply`]'s journal.
///
/// - [`Applier::apply`] resumes an apply the journal says did not finish (a crash during
///   the flow's `Applying` state) and otherwise applies the plan; it returns whether the
///   journal has boot-time settings the booted kernel lacks (`reboot_required`).
/// - [`Applier::verify`] first writes back, with [`apply::reassert_with`], the journal's live
///   writes the kernel forgot at a reboot (THP, the 2 MiB pool, sysfs attributes, the
///   governor, cgroup2 controllers; sysctls come back from twine's sysctl.d drop-in and
///   files persist), so that a plan mixing them with command-line changes verifies after
///   the boot. It does so on every verify, not only after a new boot id: reassert is
///   idempotent (nothing drifted, nothing written), and the flow verifies right after its
///   own apply, when the journal's values are the ones the host should hold. It then
///   reports, as `kind key` strings, every boot-time setting still pending (in the boot
///   config, not in `proc/cmdline`) and every place that still does not hold what twine
///   wrote (`drifted`: `path`), e.g. a 2 MiB count granted only in part on the rewrite.
/// - [`Applier::rollback`] restores exactly what the journal recorded.
#[derive(Debug)]
pub struct HostApplier<W: Writes = KernelWrites> {
    root: HostRoot,
    policy: ApplyPolicy,
    writes: W,
    last: Option<ApplyReport>,
    reasserted: Option<ReassertReport>,
}

impl HostApplier<KernelWrites> {
    /// An applier writing through the kernel's files under `root`.
    pub fn new(root: HostRoot, policy: ApplyPolicy) -> Self {
        Self::with_writes(root, policy, KernelWrites)
    }
}

impl<W: Writes> HostApplier<W> {
    /// An applier whose every write goes through `writes` (a test double, a fault injector).
    pub fn with_writes(root: HostRoot, policy: ApplyPolicy, writes: W) -> Self {
        Self {
            root,
            policy,
            writes,
            last: None,
            reasserted: None,
        }
    }

    /// The host root written to.
    pub fn root(&self) -> &HostRoot {
        &self.root
    }

    /// The report of the last successful apply, if any (skipped keys, partial hugepages,
    /// whether `systemctl daemon-reload` or `networkctl reload` is due).
    pub fn last_report(&self) -> Option<&ApplyReport> {
        self.last.as_ref()
    }

    /// What the last verify wrote back before verifying, if a verify ran.
    pub fn last_reassert(&self) -> Option<&ReassertReport> {
        self.reasserted.as_ref()
    }

    /// The writes, e.g. to read a test double's counters.
    pub fn writes(&self) -> &W {
        &self.writes
    }
}

impl<W: Writes> Applier for HostApplier<W> {
    fn apply(&mut self, plan: &Plan) -> Result<bool, HookError> {
        let report = match apply::apply_with(&self.root, plan, self.policy, &mut self.writes) {
            Err(ApplyError::Unfinished { what: "apply", .. }) => {
                apply::resume_with(&self.root, &mut self.writes)?
            }
            other => other?,
        };
        let reboot = report.reboot_required;
        self.last = Some(report);
        Ok(reboot)
    }

    fn verify(&mut self, _plan: &Plan) -> Result<Vec<String>, HookError> {
        self.reasserted = Some(apply::reassert_with(&self.root, &mut self.writes)?);
        let report = apply::verify(&self.root)?;
        let mut pending: Vec<String> = report
            .pending
            .iter()
            .map(|item| format!("{} {}", item.setting.kind(), item.setting))
            .collect();
        pending.extend(report.drifted.iter().map(|d| match &d.setting {
            Some(s) => format!("{} {} ({})", s.kind(), s, d.path.display()),
            None => d.path.display().to_string(),
        }));
        Ok(pending)
    }

    fn rollback(&mut self) -> Result<(), HookError> {
        apply::rollback_with(&self.root, &mut self.writes)?;
        Ok(())
    }
}
