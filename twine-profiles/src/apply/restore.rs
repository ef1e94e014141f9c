//! [`rollback`]: writing the journal's recorded originals back.

use super::journal::{Journal, Op, Recorded};
use super::readback::boot_status;
use super::step::{Outcome, perform};
use super::{ApplyError, KernelWrites, RollbackReport, Writes};
use crate::change::Setting;
use crate::host::HostRoot;

/// Rolls back with [`KernelWrites`]; see [`rollback_with`].
pub fn rollback(root: &HostRoot) -> Result<RollbackReport, ApplyError> {
    rollback_with(root, &mut KernelWrites)
}

/// Writes back every recorded original, newest first, then clears the journal: each place
/// twine touched gets the value it had before twine first changed it; nothing else is
/// written. Without a journal, nothing is done. An interrupted rollback can be run again.
pub fn rollback_with(
    root: &HostRoot,
    writes: &mut dyn Writes,
) -> Result<RollbackReport, ApplyError> {
    let Some((_lock, mut journal)) = Journal::load_locked(root)? else {
        return Ok(RollbackReport::default());
    };
    let mut report = RollbackReport {
        reboot_required: !boot_status(root, &journal)?.done.is_empty(),
        ..RollbackReport::default()
    };
    if !journal.rolling_back {
        journal.rolling_back = true;
        journal.save(root, writes)?;
    }
    for step in journal.steps.iter().rev() {
        let Some(Recorded { value }) = &step.original else {
            continue;
        };
        let op = match (&step.op, value) {
            (Op::Live { path, check, .. }, Some(v)) => Op::Live {
                path: path.clone(),
                value: v.clone(),
                check: *check,
            },
            (Op::File { path, .. }, v) => Op::File {
                path: path.clone(),
                content: v.clone(),
            },
            (Op::Controllers { path, .. }, Some(v)) => Op::Controllers {
                path: path.clone(),
                want: v.clone(),
            },
            // The file did not exist: there was nothing to change, nothing to restore.
            (_, None) => continue,
        };
        if let Outcome::Partial { wanted, got } = perform(root, writes, &op)? {
            return Err(ApplyError::PartialHugepages {
                path: root.path(op.path()),
                wanted,
                got,
            });
        }
        report.restored += 1;
        match step.setting {
            Some(Setting::DropIn { .. }) => report.daemon_reload = true,
            Some(Setting::Networkd { .. }) => report.networkd_reload = true,
            _ => {}
        }
    }
    Journal::clear(root, writes)?;
    Ok(report)
}
