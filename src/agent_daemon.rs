//! `twine agent daemon` and `twine agent ctl`.

use std::path::Path;

use crate::Problems;
use crate::agent::CtlOp;

/// Serves the agent's Unix-socket protocol.
pub(crate) fn daemon(_state_dir: &Path, _socket: &Path, _rootfs: &Path) -> Result<(), Problems> {
    Err(vec!["twine agent daemon: not wired yet".to_owned()])
}

/// The daemon's client.
pub(crate) fn ctl(_socket: &Path, _op: CtlOp) -> Result<(), Problems> {
    Err(vec!["twine agent ctl: not wired yet".to_owned()])
}
