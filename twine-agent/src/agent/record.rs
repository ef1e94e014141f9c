//! The persisted record of a job: enough for a restarted agent to find the
//! container, the units and the lifecycle where the last agent left them.

use serde::{Deserialize, Serialize};
use twine_spec::job::KillPolicy;
use twine_spec::{JobSpec, UnitSet};

use super::AgentError;

use crate::container::ContainerRecord;
use crate::lifecycle::Lifecycle;

/// One job as the state directory keeps it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct JobRecord {
    /// The spec the job runs.
    pub spec: JobSpec,
    /// The container generation (each update boots a fresh container).
    pub generation: u64,
    /// The running container, if there is one.
    pub container: Option<ContainerRecord>,
    /// The task's lifecycle.
    pub lifecycle: Lifecycle,
}

impl JobRecord {
    /// A record for a job about to start.
    pub fn new(spec: JobSpec, generation: u64) -> JobRecord {
        JobRecord {
            spec,
            generation,
            container: None,
            lifecycle: Lifecycle::new(),
        }
    }

    /// The job's kill policy and units, from the recorded spec validated and
    /// translated again.
    pub(crate) fn translate(&self) -> Result<(KillPolicy, UnitSet), AgentError> {
        translate(&self.spec)
    }
}

/// Validates and translates `spec`: its kill policy and its units.
pub(crate) fn translate(spec: &JobSpec) -> Result<(KillPolicy, UnitSet), AgentError> {
    let refused = |message: String| AgentError::Spec {
        job: spec.name.clone(),
        message,
    };
    let job = spec.validate().map_err(|e| refused(e.to_string()))?;
    let units = twine_spec::translate(&job).map_err(|e| refused(e.to_string()))?;
    Ok((job.task.kill, units))
}
