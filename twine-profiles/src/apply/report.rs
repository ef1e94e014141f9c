//! What an apply, a resume and a rollback report.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use crate::change::Setting;

/// A hugepage count the kernel granted only in part (fragmented memory).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct Partial {
    /// The hugepage setting.
    pub setting: Setting,
    /// The file written, under the root.
    pub path: PathBuf,
    /// The count asked for.
    pub wanted: u64,
    /// The count the kernel gave.
    pub got: u64,
}

/// A boot-time setting and the value the booted command line must show (`None`: absent).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct BootItem {
    /// The command-line argument, 1 GiB count, or escalated 2 MiB count.
    pub setting: Setting,
    /// The value wanted.
    pub value: Option<String>,
}

/// What an apply (or resume) did.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct ApplyReport {
    /// Settings skipped because this kernel lacks them ([`MissingKeys::Skip`](super::MissingKeys::Skip)).
    pub skipped: Vec<Setting>,
    /// Hugepage counts granted only in part, moved to the boot command line.
    pub partial: Vec<Partial>,
    /// Boot-time settings written to the boot config that the booted kernel lacks yet.
    pub pending_boot: Vec<BootItem>,
    /// Whether a reboot is needed for the plan to take full effect.
    pub reboot_required: bool,
    /// Whether systemd drop-ins changed: the caller runs `systemctl daemon-reload`.
    pub daemon_reload: bool,
    /// Whether networkd files changed: the caller runs `networkctl reload`.
    pub networkd_reload: bool,
}

/// What a rollback did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct RollbackReport {
    /// How many recorded writes were restored.
    pub restored: usize,
    /// Whether the booted command line has twine's arguments, which leave at the next boot.
    pub reboot_required: bool,
    /// Whether systemd drop-ins were restored: the caller runs `systemctl daemon-reload`.
    pub daemon_reload: bool,
    /// Whether networkd files were restored: the caller runs `networkctl reload`.
    pub networkd_reload: bool,
}
