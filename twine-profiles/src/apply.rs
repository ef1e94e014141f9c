//! Carrying a [`Plan`](crate::change::Plan) out through a [`HostRoot`](crate::host::HostRoot), journalled so that it can be resumed or
//! rolled back, and verified by reading every write back.
//!
//! - [`apply`] checks the whole plan (values, keys this kernel lacks, the boot config's
//!   syntax) before the first write, then writes each change with its original value
//!   recorded first in the journal (`var/lib/twine/profiles/state.json` under the root).
//! - Sysctls are written live to `proc/sys` and persisted in twine's own
//!   `etc/sysctl.d/90-twine.conf`; kernel command-line changes go to the boot config
//!   (`etc/kernel/cmdline`, else `etc/default/grub`) and stay pending until
//!   [`verify`] sees them in the booted `proc/cmdline`.
//! - [`reassert`], after a boot, writes back the live writes the kernel forgot at boot
//!   (THP, the 2 MiB pool, sysfs attributes, the governor, cgroup2 controllers), so that
//!   [`verify`] finds them again; sysctls come back from the drop-in, files persist.
//! - [`resume`] continues an interrupted apply; [`rollback`] restores exactly what the
//!   journal says twine changed, and clears it.
//! - No process is spawned: the report says when `systemctl daemon-reload` or a networkd
//!   reload is due, and the caller runs it.
//!
//! # The journal
//!
//! `var/lib/twine/profiles/state.json` (JSON, replaced atomically through [`Writes`], under
//! an exclusive `flock` on its directory) holds the steps of every apply since the last
//! rollback, in order; a step is one write (a kernel file, a whole etc file, a cgroup's
//! controllers). A step's original value is recorded, and the journal saved, before the step
//! writes; the step is marked done, and the journal saved, after its write was read back. So
//! at any crash point the journal names every place twine may have changed, with what it held
//! before: [`resume`] runs from the first step not done (rewriting the one in flight, which is
//! idempotent), and [`rollback`] writes the recorded originals back newest first, which leaves
//! each place as it was before twine first touched it; places twine never wrote are never
//! written. An apply on top of a finished one appends its steps, so a rollback still returns
//! to the values from before the first. Directories created for new files stay, empty, after
//! a rollback.

mod build;
mod error;
mod journal;
mod readback;
mod reassert;
mod report;
mod restore;
mod run;
mod step;
mod writes;

use serde::{Deserialize, Serialize};

pub use error::ApplyError;
pub use readback::{Drift, VerifyReport, verify};
pub use reassert::{ReassertReport, reassert, reassert_with};
pub use report::{ApplyReport, BootItem, Partial, RollbackReport};
pub use restore::{rollback, rollback_with};
pub use run::{apply, apply_with, resume, resume_with};
pub use writes::{KernelWrites, Writes};

/// What to do with a setting this kernel does not have.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum MissingKeys {
    /// Refuse the whole plan before anything is written.
    #[default]
    Fail,
    /// Leave the setting out, and report it in [`ApplyReport::skipped`].
    Skip,
}

/// How an apply treats what it cannot do live.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct ApplyPolicy {
    /// Settings this kernel lacks.
    pub missing: MissingKeys,
    /// Whether a 2 MiB hugepage count the kernel grants only in part may move to the boot
    /// command line (the report then says `reboot_required`); else it is an error.
    pub allow_reboot: bool,
}

impl ApplyPolicy {
    /// A policy.
    pub fn new(missing: MissingKeys, allow_reboot: bool) -> Self {
        Self {
            missing,
            allow_reboot,
        }
    }
}
