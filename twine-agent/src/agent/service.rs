//! The agent behind `twine agent daemon`: the [`Handler`] of the daemon's
//! Unix-socket protocol, over one [`Agent`] and every job it runs.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};

use tokio::sync::{broadcast, watch};
use twine_spec::JobSpec;

use crate::daemon::{Handler, HandlerError, JobEvent, JobStatus};
use crate::lifecycle::TaskState;
use crate::state::read_record;

use super::{Agent, AgentError, JobHandle, JobRecord, job_key};

/// One job the service drives.
struct Entry {
    spec: JobSpec,
    stop: Box<dyn Fn() + Send + Sync>,
    state: watch::Receiver<TaskState>,
    /// Turns true once the job has ended and its container is cleaned up.
    finished: watch::Receiver<bool>,
}

/// An [`Agent`] serving the daemon protocol: submit, stop, status, events.
pub struct AgentService {
    agent: Agent,
    jobs: Mutex<HashMap<String, Entry>>,
    events: broadcast::Sender<JobEvent>,
}

impl std::fmt::Debug for AgentService {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AgentService")
            .field("agent", &self.agent)
            .finish_non_exhaustive()
    }
}

impl AgentService {
    /// Wraps `agent` and reattaches to every job of its state directory that
    /// still runs.
    pub async fn start(agent: Agent) -> Result<Arc<AgentService>, AgentError> {
        let (events, _) = broadcast::channel(4096);
        let service = Arc::new(AgentService {
            agent,
            jobs: Mutex::new(HashMap::new()),
            events,
        });
        for handle in service.agent.reattach_all().await? {
            service.adopt(handle);
        }
        Ok(service)
    }

    /// Stops every job and waits until each has ended (for a daemon that is
    /// told to exit and should leave nothing running). Jobs keep running
    /// when the daemon is killed instead.
    pub async fn stop_all(&self) {
        let entries: Vec<watch::Receiver<bool>> = {
            let jobs = self.jobs.lock().unwrap_or_else(PoisonError::into_inner);
            for entry in jobs.values() {
                (entry.stop)();
            }
            jobs.values().map(|e| e.finished.clone()).collect()
        };
        for mut finished in entries {
            let _ = finished.wait_for(|done| *done).await;
        }
    }

    fn adopt(&self, handle: JobHandle) {
        let spec = handle.spec().clone();
        let job = handle.job().to_owned();
        let mut events = handle.events();
        let forward = self.events.clone();
        let name = job.clone();
        tokio::spawn(async move {
            loop {
                match events.recv().await {
                    Ok(event) => {
                        let _ = forward.send(JobEvent {
                            job: name.clone(),
                            event,
                        });
                    }
                    Err(broadcast::error::RecvError::Lagged(_)) => {}
                    Err(broadcast::error::RecvError::Closed) => break,
                }
            }
        });
        let (finished_tx, finished) = watch::channel(false);
        let entry = Entry {
            spec,
            stop: Box::new(handle.stopper()),
            state: handle.watch_state(),
            finished,
        };
        self.jobs
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(job.clone(), entry);
        tokio::spawn(async move {
            match handle.wait().await {
                Ok(state) => tracing::info!(%job, "job ended: {state}"),
                Err(e) => tracing::warn!(%job, "job ended with an error: {e}"),
            }
            finished_tx.send_replace(true);
        });
    }

    /// The spec of `job` if it is running.
    fn running_spec(&self, job: &str) -> Option<JobSpec> {
        let jobs = self.jobs.lock().unwrap_or_else(PoisonError::into_inner);
        let entry = jobs.get(job)?;
        (!entry.state.borrow().is_terminal()).then(|| entry.spec.clone())
    }

    /// Asks `job` to stop; the receiver turns true once it is cleaned up.
    fn stop_entry(&self, job: &str) -> Option<watch::Receiver<bool>> {
        let jobs = self.jobs.lock().unwrap_or_else(PoisonError::into_inner);
        let entry = jobs.get(job)?;
        (entry.stop)();
        Some(entry.finished.clone())
    }
}

impl Handler for AgentService {
    async fn submit(&self, spec: JobSpec) -> Result<String, HandlerError> {
        let job = spec.name.clone();
        if let Some(running_spec) = self.running_spec(&job) {
            if running_spec == spec {
                return Ok(job);
            }
            // An update: stop the running generation, then start a fresh one.
            if let Some(mut finished) = self.stop_entry(&job) {
                let _ = finished.wait_for(|done| *done).await;
            }
        }
        let handle = self.agent.run(spec).await.map_err(|e| match e {
            AgentError::Spec { .. } => HandlerError::Refused {
                message: e.to_string(),
            },
            other => HandlerError::Failed {
                message: other.to_string(),
            },
        })?;
        self.adopt(handle);
        Ok(job)
    }

    async fn stop(&self, job: String) -> Result<(), HandlerError> {
        match self.stop_entry(&job) {
            Some(_) => Ok(()),
            None => Err(HandlerError::UnknownJob { job }),
        }
    }

    async fn status(&self, job: Option<String>) -> Result<Vec<JobStatus>, HandlerError> {
        let names: Vec<String> = {
            let jobs = self.jobs.lock().unwrap_or_else(PoisonError::into_inner);
            match &job {
                Some(name) if jobs.contains_key(name) => vec![name.clone()],
                Some(name) => {
                    return Err(HandlerError::UnknownJob { job: name.clone() });
                }
                None => {
                    let mut all: Vec<String> = jobs.keys().cloned().collect();
                    all.sort();
                    all
                }
            }
        };
        let mut out = Vec::new();
        for name in names {
            let record: Option<JobRecord> = read_record(
                &self.agent.state_dir().job(&job_key(&name)).record(),
            )
            .map_err(|e| HandlerError::Failed {
                message: e.to_string(),
            })?;
            let Some(record) = record else { continue };
            out.push(JobStatus {
                job: name,
                state: record.lifecycle.state().clone(),
                restarts: record.lifecycle.restarts(),
                generation: record.generation,
                last_seq: record.lifecycle.last_seq(),
            });
        }
        Ok(out)
    }

    fn events(&self) -> broadcast::Receiver<JobEvent> {
        self.events.subscribe()
    }
}
