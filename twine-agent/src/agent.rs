//! The pieces composed: an [`Agent`] owns a state directory (under its lock),
//! boots one container per job, installs and starts the job's units over
//! D-Bus, ships its journal, feeds what it observes to the job's
//! [`Lifecycle`](crate::lifecycle::Lifecycle), persists the record after every change, and reattaches to
//! running containers after a restart, even one after SIGKILL.
//!
//! Each job is driven by a supervisor task of its own; a [`JobHandle`] gives
//! callers its state, its event stream, its log lines and a way to stop it.

mod prepare;
mod record;
mod service;
mod supervise;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{broadcast, mpsc, watch};
use twine_spec::job::KillPolicy;
use twine_spec::{JobSpec, UnitSet};

use crate::container::{Container, ContainerError, Network};
use crate::identity::{Identity, IdentityError};
use crate::lifecycle::{Event, Input, TaskState};
use crate::logs::{LogError, LogLine, LogStore, StoreBudget};
use crate::state::{AgentLock, StateDir, StateError, read_record, write_record};
use crate::systemd::BusError;

pub use prepare::{IDENTITY_INSIDE, job_key};
pub use record::JobRecord;
pub use service::AgentService;

/// How the agent runs its containers.
#[derive(Debug, Clone)]
pub struct AgentSettings {
    /// The read-only base rootfs every container boots.
    pub rootfs: PathBuf,
    /// The containers' network.
    pub network: Network,
    /// How long systemd in a container may take to become ready.
    pub ready_timeout: Duration,
    /// The parent of every container's cgroup, relative to the cgroup2 mount.
    pub cgroup_parent: PathBuf,
    /// The byte budget of each job's log store.
    pub log_budget: StoreBudget,
    /// Added to the kill policy's grace period before a stop is given up on
    /// and the container is killed.
    pub stop_margin: Duration,
    /// How long a clean poweroff of a container may take.
    pub poweroff_timeout: Duration,
}

impl AgentSettings {
    /// The defaults for booting `rootfs`: host network, 30 s to be ready,
    /// cgroups under `twine`, 64 MiB of logs per job, a 5 s stop margin, 20 s
    /// to power off.
    pub fn new(rootfs: impl Into<PathBuf>) -> AgentSettings {
        AgentSettings {
            rootfs: rootfs.into(),
            network: Network::Host,
            ready_timeout: Duration::from_secs(30),
            cgroup_parent: PathBuf::from("twine"),
            log_budget: StoreBudget::default(),
            stop_margin: Duration::from_secs(5),
            poweroff_timeout: Duration::from_secs(20),
        }
    }
}

/// What can go wrong running a job. Each variant names the job and the cause.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum AgentError {
    /// The spec does not validate or translate.
    #[error("job {job}: the spec cannot run: {message}")]
    Spec {
        /// The job.
        job: String,
        /// The problems.
        message: String,
    },
    /// The state directory failed (or another agent holds it).
    #[error(transparent)]
    State(#[from] StateError),
    /// The container failed.
    #[error("job {job}: {source}")]
    Container {
        /// The job.
        job: String,
        /// The container error.
        source: ContainerError,
    },
    /// The container's systemd failed over D-Bus.
    #[error("job {job}: {source}")]
    Bus {
        /// The job.
        job: String,
        /// The bus error (boxed: it is large and rare).
        source: Box<BusError>,
    },
    /// The log store or shipper failed.
    #[error("job {job}: logs: {source}")]
    Logs {
        /// The job.
        job: String,
        /// The log error.
        source: LogError,
    },
    /// The identity directory failed.
    #[error("job {job}: identity: {source}")]
    Identity {
        /// The job.
        job: String,
        /// The identity error.
        source: IdentityError,
    },
    /// A step did not finish in time.
    #[error("job {job}: {what} did not finish within {after:?}")]
    Timeout {
        /// The job.
        job: String,
        /// The step.
        what: &'static str,
        /// The limit.
        after: Duration,
    },
    /// The job is not known to this agent.
    #[error("job {job}: no such job in {state}", state = state.display())]
    UnknownJob {
        /// The job.
        job: String,
        /// The state directory.
        state: PathBuf,
    },
    /// The job's supervisor ended without a result (a bug).
    #[error("job {job}: internal error: {what}")]
    Internal {
        /// The job.
        job: String,
        /// What went wrong.
        what: String,
    },
}

/// A running agent: a state directory held under its lock.
#[derive(Debug)]
pub struct Agent {
    state: StateDir,
    settings: Arc<AgentSettings>,
    _lock: AgentLock,
}

/// Control messages to a job's supervisor.
#[derive(Debug)]
pub(crate) enum Control {
    /// Stop the job by its kill policy.
    Stop,
}

/// A job driven by the agent.
#[derive(Debug)]
pub struct JobHandle {
    spec: JobSpec,
    control: mpsc::UnboundedSender<Control>,
    state: watch::Receiver<TaskState>,
    events: broadcast::Sender<Event>,
    lines: Option<mpsc::UnboundedReceiver<LogLine>>,
    done: tokio::task::JoinHandle<Result<TaskState, AgentError>>,
    reattached: bool,
}

impl JobHandle {
    /// The job's name.
    pub fn job(&self) -> &str {
        &self.spec.name
    }

    /// The spec the job runs.
    pub fn spec(&self) -> &JobSpec {
        &self.spec
    }

    /// Whether this handle took over a container a previous agent started.
    pub fn reattached(&self) -> bool {
        self.reattached
    }

    /// The current state.
    pub fn state(&self) -> TaskState {
        self.state.borrow().clone()
    }

    /// A receiver of state changes.
    pub fn watch_state(&self) -> watch::Receiver<TaskState> {
        self.state.clone()
    }

    /// The job's events from now on.
    pub fn events(&self) -> broadcast::Receiver<Event> {
        self.events.subscribe()
    }

    /// The job's log lines as they are stored (once; later calls get `None`).
    pub fn take_lines(&mut self) -> Option<mpsc::UnboundedReceiver<LogLine>> {
        self.lines.take()
    }

    /// Asks the job to stop by its kill policy; [`JobHandle::wait`] returns
    /// when it has, and the container is gone.
    pub fn stop(&self) {
        let _ = self.control.send(Control::Stop);
    }

    /// A sender that stops the job, for signal handlers and daemons.
    pub fn stopper(&self) -> impl Fn() + Send + Sync + 'static {
        let control = self.control.clone();
        move || {
            let _ = control.send(Control::Stop);
        }
    }

    /// Waits until the job has ended for good and everything is cleaned up;
    /// returns the final state.
    pub async fn wait(self) -> Result<TaskState, AgentError> {
        let job = self.spec.name;
        self.done.await.map_err(|e| AgentError::Internal {
            job,
            what: format!("the supervisor task failed: {e}"),
        })?
    }
}

impl Agent {
    /// Opens the state directory and takes its lock; a second agent on the
    /// same directory gets [`StateError::Locked`].
    pub fn open(state: StateDir, mut settings: AgentSettings) -> Result<Agent, AgentError> {
        // Containers pivot into paths under the state directory and the rootfs:
        // relative ones would be resolved from the wrong directory.
        let absolute = |path: &std::path::Path| {
            std::path::absolute(path).map_err(|source| {
                AgentError::State(StateError::Io {
                    action: "making the path absolute".into(),
                    path: path.to_path_buf(),
                    source,
                })
            })
        };
        let state = StateDir::new(absolute(state.root())?);
        settings.rootfs = absolute(&settings.rootfs)?;
        let lock = AgentLock::acquire(&state)?;
        Ok(Agent {
            state,
            settings: Arc::new(settings),
            _lock: lock,
        })
    }

    /// The state directory.
    pub fn state_dir(&self) -> &StateDir {
        &self.state
    }

    /// The jobs with a record in the state directory, by key.
    pub fn jobs(&self) -> Result<Vec<String>, AgentError> {
        Ok(self.state.list_jobs()?)
    }

    /// The persisted record of a job.
    pub fn record(&self, job: &str) -> Result<Option<JobRecord>, AgentError> {
        Ok(read_record(&self.state.job(&job_key(job)).record())?)
    }

    /// Runs `spec`. If this state directory already has the same job running
    /// with the same spec (a restarted agent), the agent reattaches to it
    /// without restarting anything. A job running with a different spec is
    /// updated by restarting it on a fresh container. A job this agent is
    /// already driving must be stopped and waited for through its
    /// [`JobHandle`] first, or two supervisors would drive one container;
    /// [`AgentService`] does that for the daemon.
    pub async fn run(&self, spec: JobSpec) -> Result<JobHandle, AgentError> {
        let name = spec.name.clone();
        let (kill, units) = record::translate(&spec)?;
        let key = job_key(&name);
        let dirs = self.state.job(&key);
        let previous: Option<JobRecord> = read_record(&dirs.record())?;
        let mut generation = 1;
        if let Some(previous) = previous {
            generation =
                previous
                    .generation
                    .checked_add(1)
                    .ok_or_else(|| AgentError::Internal {
                        job: name.clone(),
                        what: "the container generation counter is exhausted".into(),
                    })?;
            if let Some(container) = previous.container.clone() {
                match Container::reattach(container.clone()) {
                    Ok(running) if previous.spec == spec => {
                        return self.attach(previous, running, kill, units).await;
                    }
                    Ok(running) => {
                        // An update: the old container goes, the new one starts fresh.
                        let (old_kill, old_units) = previous.translate()?;
                        let handle = self.attach(previous, running, old_kill, old_units).await?;
                        handle.stop();
                        handle.wait().await?;
                    }
                    Err(_) => {
                        // Gone while no agent watched: remove what is left of it.
                        Container::clean_up_record(&container).map_err(|source| {
                            AgentError::Container {
                                job: name.clone(),
                                source,
                            }
                        })?;
                    }
                }
            }
        }
        self.start_fresh(spec, kill, units, generation).await
    }

    /// Reattaches to every job whose container is still running (after an
    /// agent restart); jobs whose container died meanwhile are marked failed
    /// and cleaned up.
    pub async fn reattach_all(&self) -> Result<Vec<JobHandle>, AgentError> {
        let mut handles = Vec::new();
        for key in self.state.list_jobs()? {
            let Some(record) = read_record::<JobRecord>(&self.state.job(&key).record())? else {
                continue;
            };
            let Some(container) = record.container.clone() else {
                continue;
            };
            let name = record.spec.name.clone();
            let (kill, units) = record.translate()?;
            match Container::reattach(container.clone()) {
                Ok(running) => handles.push(self.attach(record, running, kill, units).await?),
                Err(_) => {
                    let mut record = record;
                    let _ = record.lifecycle.apply(Input::ContainerGone);
                    record.container = None;
                    Container::clean_up_record(&container).map_err(|source| {
                        AgentError::Container {
                            job: name.clone(),
                            source,
                        }
                    })?;
                    write_record(&self.state.job(&key).record(), &record)?;
                }
            }
        }
        Ok(handles)
    }

    /// Renews the job's credentials; see [`renew_identity`].
    pub fn renew_identity(&self, job: &str, files: &[(&str, &[u8])]) -> Result<(), AgentError> {
        renew_identity(&self.state, job, files)
    }

    async fn start_fresh(
        &self,
        spec: JobSpec,
        kill: KillPolicy,
        units: UnitSet,
        generation: u64,
    ) -> Result<JobHandle, AgentError> {
        let name = spec.name.clone();
        let key = job_key(&name);
        let dirs = self.state.job(&key);
        for dir in [
            dirs.journal(),
            dirs.identity(),
            dirs.root().join("containers"),
        ] {
            std::fs::create_dir_all(&dir).map_err(|e| {
                AgentError::State(StateError::Io {
                    action: "creating the job's directories".into(),
                    path: dir.clone(),
                    source: e,
                })
            })?;
        }
        let mut record = JobRecord::new(spec, generation);
        write_record(&dirs.record(), &record)?;
        let config = prepare::container_config(&key, &units, &dirs, generation, &self.settings);
        let started = tokio::task::spawn_blocking(move || Container::start(&config))
            .await
            .map_err(|e| AgentError::Internal {
                job: name.clone(),
                what: format!("the container start task failed: {e}"),
            })?;
        let container = match started {
            Ok(container) => container,
            Err(source) => {
                let _ = record.lifecycle.apply(Input::ContainerStartFailed {
                    message: source.to_string(),
                });
                write_record(&dirs.record(), &record)?;
                return Err(AgentError::Container { job: name, source });
            }
        };
        let _ = record.lifecycle.apply(Input::ContainerStarted);
        record.container = Some(container.record().clone());
        write_record(&dirs.record(), &record)?;
        supervise::launch(
            self.state.clone(),
            Arc::clone(&self.settings),
            record,
            container,
            kill,
            units,
            false,
        )
        .await
    }

    async fn attach(
        &self,
        record: JobRecord,
        container: Container,
        kill: KillPolicy,
        units: UnitSet,
    ) -> Result<JobHandle, AgentError> {
        supervise::launch(
            self.state.clone(),
            Arc::clone(&self.settings),
            record,
            container,
            kill,
            units,
            true,
        )
        .await
    }
}

/// Renews a job's credentials: the whole set is replaced atomically, and the
/// running container sees it at [`IDENTITY_INSIDE`] without a restart. Needs
/// no agent lock (the renewal is atomic on its own), so `twine agent renew`
/// works beside a running agent.
pub fn renew_identity(
    state: &StateDir,
    job: &str,
    files: &[(&str, &[u8])],
) -> Result<(), AgentError> {
    let dirs = state.job(&job_key(job));
    if !dirs.root().exists() {
        return Err(AgentError::UnknownJob {
            job: job.to_owned(),
            state: state.root().to_path_buf(),
        });
    }
    Identity::new(dirs.identity())
        .renew(files)
        .map_err(|source| AgentError::Identity {
            job: job.to_owned(),
            source,
        })
}

/// The directory of a job's log store, for reading it with
/// [`LogStore::read`](crate::logs::LogStore::read) (as `twine agent logs` does)
/// without the agent's lock: the store is append-only and readable while an
/// agent writes it.
pub fn log_dir(state: &StateDir, job: &str) -> PathBuf {
    state.job(&job_key(job)).logs()
}

/// Opens the log store of a job for appending.
pub(crate) fn open_store(
    state: &StateDir,
    job: &str,
    budget: StoreBudget,
) -> Result<LogStore, AgentError> {
    LogStore::open(&log_dir(state, job), budget).map_err(|source| AgentError::Logs {
        job: job.to_owned(),
        source,
    })
}
