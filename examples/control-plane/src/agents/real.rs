//! Real agents: one host's assignments run through twine-agent (to be written).

use std::path::Path;

use tokio::sync::watch;

use crate::store::Store;

/// Why a real agent stopped.
#[derive(Debug, thiserror::Error)]
pub enum RealAgentError {
    /// Not written yet.
    #[error("real agents are not built yet")]
    Unbuilt,
}

/// Runs `host`'s assignments through twine-agent until `stop` turns true.
pub async fn run<S: Store>(
    _store: S,
    _host: &str,
    _rootfs: &Path,
    _state_dir: &Path,
    _stop: watch::Receiver<bool>,
) -> Result<(), RealAgentError> {
    Err(RealAgentError::Unbuilt)
}
