//! Real agents: one host's assignments run through twine-agent, one container per task.
//!
//! The agent follows the same pattern as the simulated ones (see [`super`]): it reads
//! the host's assignments (`keys::host_assign(host)`) at one revision, converges by
//! diff (stops what is no longer assigned, starts what is missing), then follows the
//! watch from the next revision; a compacted or broken watch makes it re-read and
//! converge again, by diff, so nothing that runs is restarted. If the store is down,
//! the tasks keep running and their reports wait until it is back.
//!
//! Each task runs as a twine-agent job named [`task_name`]`(job, index)` (`web-0`,
//! `web-1`), so that two replicas on one host do not collide, and is reported at
//! `keys::status(host, job, index)` as it changes: `starting`, `running`, or `failed`
//! with a detail (a spec that does not parse, a container that did not start, a task
//! that ended; the control plane has no finished state, so a task that exits is
//! `failed` with its exit code). A failed task stays failed until its assignment is
//! deleted: the agent does not retry by itself.
//!
//! **Stopping the agent does not stop the tasks.** When `stop` turns true, [`run`]
//! returns and leaves every container running; the next agent on the same state
//! directory reattaches to them (`Agent::reattach_all`) without restarting anything.
//! twine-agent's supervisors are tasks of the tokio runtime: the runtime must end (the
//! process exits, as `twine-control agents` does) before another agent opens the same
//! state directory, or two supervisors would drive one container. To stop everything
//! (tests, decommissioning a host) use [`stop_all`].

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;
use tokio::task::JoinHandle;
use twine_agent::agent::{Agent, AgentError, AgentSettings, JobHandle};
use twine_agent::lifecycle::TaskState as AgentState;
use twine_agent::state::StateDir;
use twine_spec::{Format, JobSpec, ParseError};

use super::{assign_key, assignment_events, flush, status_key};
use crate::keys::{self, BadName};
use crate::model::{self, Assignment, BadRecord, JobRecord, StatusRecord, TaskState};
use crate::store::{Event, Op, Store, StoreError};

/// The `agent` field of this agent's reports.
pub const AGENT: &str = "twine-agent";

/// How long to wait before retrying a store call that failed.
const RETRY: Duration = Duration::from_millis(500);

/// The longest job name twine-spec accepts.
const MAX_TASK_NAME: usize = twine_spec::validate::MAX_NAME_LEN;

/// Why a real agent stopped, or [`stop_all`] failed. Per-task failures are not
/// errors of the agent: they are reported as `failed` in the task's status record.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum RealAgentError {
    /// The host name cannot go into a key.
    #[error(transparent)]
    BadHost(#[from] BadName),
    /// The state directory could not be opened (or another agent holds it).
    #[error("host {host}: opening the agent's state directory {}: {source}", state_dir.display())]
    Open {
        /// The host.
        host: String,
        /// The state directory.
        state_dir: PathBuf,
        /// The agent's error (boxed: it is large).
        source: Box<AgentError>,
    },
    /// The tasks that survived a previous agent could not be reattached.
    #[error("host {host}: reattaching to the tasks in {}: {source}", state_dir.display())]
    Reattach {
        /// The host.
        host: String,
        /// The state directory.
        state_dir: PathBuf,
        /// The agent's error (boxed: it is large).
        source: Box<AgentError>,
    },
    /// A task did not stop cleanly.
    #[error("host {host}: stopping task {task}: {source}")]
    Stop {
        /// The host.
        host: String,
        /// The task (twine-agent job name).
        task: String,
        /// The agent's error (boxed: it is large).
        source: Box<AgentError>,
    },
    /// The host's status keys could not be deleted.
    #[error("host {host}: deleting the status keys under {prefix}: {source}")]
    Store {
        /// The host.
        host: String,
        /// The prefix.
        prefix: String,
        /// The store's error.
        source: StoreError,
    },
}

/// Why one task cannot run; reported as the `detail` of a `failed` status.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum TaskError {
    /// The assignment key is not `<prefix><job>/<index>`.
    #[error("{key}: not an assignment key of this host")]
    BadKey {
        /// The key.
        key: String,
    },
    /// The assignment or job record does not parse.
    #[error(transparent)]
    BadRecord(#[from] BadRecord),
    /// The assigned job has no record.
    #[error("{key}: the job record is missing")]
    NoJob {
        /// The job's key.
        key: String,
    },
    /// The job record names a spec format this agent does not know.
    #[error("{key}: unknown spec format {format:?} (known: toml, json, yaml)")]
    Format {
        /// The job's key.
        key: String,
        /// The format.
        format: String,
    },
    /// The spec does not parse.
    #[error("{key}: the spec does not parse: {source}")]
    Spec {
        /// The job's key.
        key: String,
        /// The parse error (with its field).
        source: ParseError,
    },
    /// twine-agent refused or failed to start the task.
    #[error("task {task}: {source}")]
    Start {
        /// The task (twine-agent job name).
        task: String,
        /// The agent's error (it names the job and the cause; boxed: it is large).
        source: Box<AgentError>,
    },
}

/// The twine-agent job name of replica `index` of `job`: `<job>-<index>`. Replica
/// indexes hold no `-`, so distinct tasks get distinct names. A name longer than
/// twine-spec allows (64 bytes) keeps a prefix of the job and a hash of the whole
/// job name: `<prefix>-<hash>-<index>`.
pub fn task_name(job: &str, index: u32) -> String {
    let name = format!("{job}-{index}");
    if name.len() <= MAX_TASK_NAME {
        return name;
    }
    // FNV-1a: stable across Rust versions and runs, unlike `DefaultHasher`.
    let hash = job.bytes().fold(0xcbf2_9ce4_8422_2325_u64, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x0000_0100_0000_01b3)
    });
    let tail = format!("-{hash:016x}-{index}");
    let mut keep = MAX_TASK_NAME.saturating_sub(tail.len());
    while !job.is_char_boundary(keep) {
        keep -= 1;
    }
    format!("{}{tail}", &job[..keep])
}

/// The prefix of a host's status keys.
fn host_status(host: &str) -> String {
    format!("{}{host}/", keys::STATUS)
}

fn settings(rootfs: &Path) -> AgentSettings {
    AgentSettings::new(rootfs)
}

fn open(host: &str, rootfs: &Path, state_dir: &Path) -> Result<Agent, RealAgentError> {
    Agent::open(StateDir::new(state_dir), settings(rootfs)).map_err(|source| RealAgentError::Open {
        host: host.to_owned(),
        state_dir: state_dir.to_path_buf(),
        source: Box::new(source),
    })
}

/// What a task driver is told.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Command {
    /// Keep the task running and report on it.
    Run,
    /// Stop the task by its kill policy, then end.
    Stop,
    /// End, leaving the task running (the agent is stopping).
    Detach,
}

/// How a task driver begins.
enum Start {
    /// Start the spec (or reattach, if twine-agent finds it running).
    Spec(Box<JobSpec>),
    /// Take over a task reattached at the agent's start.
    Attached(Box<JobHandle>),
    /// Nothing can run: report this failure.
    Broken(TaskError),
}

/// One assigned task: the driver that runs and reports it.
struct Task {
    name: String,
    command: watch::Sender<Command>,
    driver: JoinHandle<()>,
}

/// The agent's state, kept across resyncs.
struct Host<S> {
    store: S,
    host: String,
    agent: Arc<Agent>,
    /// By assignment key.
    tasks: BTreeMap<String, Task>,
    /// Reattached tasks not matched with an assignment yet, by task name.
    orphans: BTreeMap<String, JobHandle>,
}

/// Runs `host`'s assignments through twine-agent until `stop` turns true. Tasks that
/// survived a previous agent on `state_dir` are reattached first, never restarted.
/// Store failures are retried with the tasks left running; only `stop` ends it, and
/// it leaves the tasks running (see the module documentation).
pub async fn run<S: Store>(
    store: S,
    host: &str,
    rootfs: &Path,
    state_dir: &Path,
    mut stop: watch::Receiver<bool>,
) -> Result<(), RealAgentError> {
    let (agent, reattached) = open_and_reattach(host, rootfs, state_dir).await?;
    if !reattached.is_empty() {
        tracing::info!(host, "reattached to {} running task(s)", reattached.len());
    }
    let mut me = Host {
        store,
        host: host.to_owned(),
        agent: Arc::new(agent),
        tasks: BTreeMap::new(),
        orphans: reattached
            .into_iter()
            .map(|h| (h.job().to_owned(), h))
            .collect(),
    };
    loop {
        if *stop.borrow() {
            break;
        }
        match me.sync_and_follow(&mut stop).await {
            Ok(()) => break,
            Err(e) => {
                tracing::warn!(host, "agent: {e}; re-reading assignments");
                tokio::select! {
                    _ = tokio::time::sleep(RETRY) => {}
                    _ = stop.changed() => break,
                }
            }
        }
    }
    // Leave every task running: drivers end without stopping them.
    for task in me.tasks.values() {
        task.command.send_replace(Command::Detach);
    }
    for (_, task) in std::mem::take(&mut me.tasks) {
        let _ = task.driver.await;
    }
    Ok(())
}

/// Opens the agent of `host` on `state_dir` (under its lock) and reattaches to the
/// tasks a previous agent left running there.
async fn open_and_reattach(
    host: &str,
    rootfs: &Path,
    state_dir: &Path,
) -> Result<(Agent, Vec<JobHandle>), RealAgentError> {
    keys::check_name("host", host)?;
    let agent = open(host, rootfs, state_dir)?;
    let handles = agent
        .reattach_all()
        .await
        .map_err(|source| RealAgentError::Reattach {
            host: host.to_owned(),
            state_dir: state_dir.to_path_buf(),
            source: Box::new(source),
        })?;
    Ok((agent, handles))
}

/// Stops every task in `state_dir` by its kill policy, waits until each container
/// is gone, then deletes `host`'s status keys. For tests and decommissioning; it
/// takes the state directory's lock, so no agent may run on it meanwhile.
pub async fn stop_all<S: Store>(
    store: &S,
    host: &str,
    rootfs: &Path,
    state_dir: &Path,
) -> Result<(), RealAgentError> {
    let (_agent, handles) = open_and_reattach(host, rootfs, state_dir).await?;
    for h in &handles {
        h.stop();
    }
    let mut first = None;
    for h in handles {
        let task = h.job().to_owned();
        if let Err(source) = h.wait().await {
            tracing::warn!(host, task, "stopping: {source}");
            first.get_or_insert(RealAgentError::Stop {
                host: host.to_owned(),
                task,
                source: Box::new(source),
            });
        }
    }
    let prefix = host_status(host);
    let deleted = store
        .txn(crate::store::Txn::new().and_then([Op::Delete {
            key: prefix.clone(),
            prefix: true,
        }]))
        .await;
    if let Err(source) = deleted {
        first.get_or_insert(RealAgentError::Store {
            host: host.to_owned(),
            prefix,
            source,
        });
    }
    first.map_or(Ok(()), Err)
}

impl<S: Store> Host<S> {
    /// One snapshot, converge, then follow the watch until `stop` (`Ok`) or a store
    /// failure (`Err`: the caller re-reads).
    async fn sync_and_follow(
        &mut self,
        stop: &mut watch::Receiver<bool>,
    ) -> Result<(), StoreError> {
        let prefix = keys::host_assign(&self.host);
        let assigned = self.store.get(&prefix, true, None).await?;
        let r = assigned.revision;
        let reported = self
            .store
            .get(&host_status(&self.host), true, Some(r))
            .await?;
        let want: BTreeMap<String, String> = assigned
            .kvs
            .into_iter()
            .map(|kv| (kv.key, kv.value))
            .collect();
        // Stop what is no longer assigned.
        let gone: Vec<String> = self
            .tasks
            .keys()
            .filter(|k| !want.contains_key(*k))
            .cloned()
            .collect();
        self.stop_tasks(&gone).await;
        // Start what is missing (reattached tasks are adopted here).
        for (key, value) in &want {
            if !self.tasks.contains_key(key) {
                self.start(key, value).await?;
            }
        }
        // Reattached tasks nothing assigns any more.
        let orphans = std::mem::take(&mut self.orphans);
        for h in &orphans {
            tracing::info!(host = %self.host, task = %h.0, "stopping a reattached task that is no longer assigned");
            h.1.stop();
        }
        for (name, h) in orphans {
            if let Err(e) = h.wait().await {
                tracing::warn!(host = %self.host, task = %name, "stopping: {e}");
            }
        }
        // Reports without an assignment go.
        let mut ops = Vec::new();
        for kv in &reported.kvs {
            if assign_key(&kv.key).is_some_and(|a| !want.contains_key(&a)) {
                ops.push(Op::delete(kv.key.clone()));
            }
        }
        flush(&self.store, &mut ops).await?;

        let mut w = self.store.watch(&prefix, r + 1).await?;
        loop {
            let msg = tokio::select! {
                m = w.next() => m,
                _ = stop.changed() => return Ok(()),
            };
            let Some(events) = assignment_events(msg, r + 1)? else {
                continue;
            };
            for ev in events {
                match ev {
                    Event::Put(kv) => {
                        // A new assignment; a changed one keeps its task.
                        if !self.tasks.contains_key(&kv.key) {
                            self.start(&kv.key, &kv.value).await?;
                        }
                    }
                    Event::Delete { key, .. } => {
                        self.stop_tasks(std::slice::from_ref(&key)).await;
                        if let Some(sk) = status_key(&key) {
                            ops.push(Op::delete(sk));
                        }
                    }
                }
            }
            flush(&self.store, &mut ops).await?;
        }
    }

    /// Stops the tasks of these assignment keys, all at once, and waits for them.
    async fn stop_tasks(&mut self, assign_keys: &[String]) {
        let stopping: Vec<Task> = assign_keys
            .iter()
            .filter_map(|k| self.tasks.remove(k))
            .collect();
        for task in &stopping {
            tracing::info!(host = %self.host, task = %task.name, "assignment removed: stopping");
            task.command.send_replace(Command::Stop);
        }
        for task in stopping {
            if let Err(e) = task.driver.await {
                tracing::warn!(host = %self.host, task = %task.name, "task driver failed: {e}");
            }
        }
    }

    /// Starts the driver of one assignment. Only store failures are errors; a task
    /// that cannot run gets a driver that reports why.
    async fn start(&mut self, key: &str, value: &str) -> Result<(), StoreError> {
        let Some(sk) = status_key(key) else {
            return Ok(());
        };
        let prefix = keys::host_assign(&self.host);
        let parts = keys::split(&prefix, key);
        let (name, begin) = match parts.as_deref() {
            Some([job, index]) => match index.parse::<u32>() {
                Ok(index) => {
                    let name = task_name(job, index);
                    let begin = match self.orphans.remove(&name) {
                        Some(handle) => Start::Attached(Box::new(handle)),
                        None => match self.spec_of(key, value, &name).await? {
                            Ok(spec) => Start::Spec(Box::new(spec)),
                            Err(e) => Start::Broken(e),
                        },
                    };
                    (name, begin)
                }
                Err(_) => (
                    key.to_owned(),
                    Start::Broken(TaskError::BadKey { key: key.into() }),
                ),
            },
            _ => (
                key.to_owned(),
                Start::Broken(TaskError::BadKey { key: key.into() }),
            ),
        };
        let (command, rx) = watch::channel(Command::Run);
        let driver = tokio::spawn(drive(
            self.store.clone(),
            Arc::clone(&self.agent),
            sk,
            name.clone(),
            begin,
            rx,
        ));
        self.tasks.insert(
            key.to_owned(),
            Task {
                name,
                command,
                driver,
            },
        );
        Ok(())
    }

    /// Reads the assigned job's spec and names it `name`. The outer error is the
    /// store's (retried); the inner one is the task's (reported).
    async fn spec_of(
        &self,
        key: &str,
        value: &str,
        name: &str,
    ) -> Result<Result<JobSpec, TaskError>, StoreError> {
        let assignment: Assignment = match model::decode(key, value) {
            Ok(a) => a,
            Err(e) => return Ok(Err(e.into())),
        };
        let job_key = keys::job(&assignment.entitlement, &assignment.job);
        let found = self.store.get(&job_key, false, None).await?;
        let Some(kv) = found.kvs.first() else {
            return Ok(Err(TaskError::NoJob { key: job_key }));
        };
        Ok(parse_job(&kv.key, &kv.value).map(|mut spec| {
            spec.name = name.to_owned();
            spec
        }))
    }
}

/// Reads a job record's spec.
fn parse_job(key: &str, value: &str) -> Result<JobSpec, TaskError> {
    let record: JobRecord = model::decode(key, value)?;
    let format = match record.format.as_str() {
        "toml" => Format::Toml,
        "json" => Format::Json,
        "yaml" | "yml" => Format::Yaml,
        other => {
            return Err(TaskError::Format {
                key: key.to_owned(),
                format: other.to_owned(),
            });
        }
    };
    JobSpec::parse(&record.spec, format).map_err(|source| TaskError::Spec {
        key: key.to_owned(),
        source,
    })
}

/// The report of a twine-agent state.
fn report(state: &AgentState) -> StatusRecord {
    let (state, detail) = match state {
        AgentState::Pending | AgentState::Starting => (TaskState::Starting, String::new()),
        // Stopping is only ever asked by this agent, just before the status goes.
        AgentState::Running | AgentState::Stopping => (TaskState::Running, String::new()),
        AgentState::Exited { code } => (TaskState::Failed, format!("exited with code {code}")),
        other => (TaskState::Failed, other.to_string()),
    };
    StatusRecord {
        state,
        agent: AGENT.into(),
        detail,
    }
}

fn failed(detail: String) -> StatusRecord {
    StatusRecord {
        state: TaskState::Failed,
        agent: AGENT.into(),
        detail,
    }
}

/// Drives one task: starts (or adopts) it, reports its state at `status_key` as it
/// changes (retrying while the store is down), and on [`Command::Stop`] stops it and
/// waits until its container is gone. On [`Command::Detach`] (or a dropped sender) it
/// ends and leaves the task running.
async fn drive<S: Store>(
    store: S,
    agent: Arc<Agent>,
    status_key: String,
    name: String,
    begin: Start,
    mut command: watch::Receiver<Command>,
) {
    let mut written: Option<StatusRecord> = None;
    let (handle, mut want) = match begin {
        Start::Attached(handle) => {
            let want = report(&handle.state());
            (Some(*handle), want)
        }
        Start::Broken(e) => {
            tracing::warn!(task = %name, "cannot run: {e}");
            (None, failed(e.to_string()))
        }
        Start::Spec(spec) => {
            // The first report is best effort: a store that is down must not hold the
            // start back (the loop below retries whatever is wanted last).
            let starting = report(&AgentState::Starting);
            if store
                .put(&status_key, &model::encode(&starting))
                .await
                .is_ok()
            {
                written = Some(starting.clone());
            }
            match agent.run(*spec).await {
                Ok(handle) => {
                    let want = report(&handle.state());
                    (Some(handle), want)
                }
                Err(source) => {
                    let e = TaskError::Start {
                        task: name.clone(),
                        source: Box::new(source),
                    };
                    tracing::warn!(task = %name, "cannot start: {e}");
                    (None, failed(e.to_string()))
                }
            }
        }
    };
    let mut states = handle.as_ref().map(JobHandle::watch_state);
    let order = loop {
        let pending = written.as_ref() != Some(&want);
        if pending {
            match store.put(&status_key, &model::encode(&want)).await {
                Ok(_) => written = Some(want.clone()),
                Err(e) => tracing::debug!(task = %name, "report waits: {e}"),
            }
        }
        let retry = written.as_ref() != Some(&want);
        tokio::select! {
            changed = command.changed() => match changed {
                Ok(()) => {
                    let c = *command.borrow_and_update();
                    if c != Command::Run {
                        break c;
                    }
                }
                Err(_) => break Command::Detach,
            },
            changed = async {
                match states.as_mut() {
                    Some(rx) => rx.changed().await.is_ok(),
                    None => std::future::pending().await,
                }
            } => {
                if let Some(rx) = states.as_mut() {
                    want = report(&rx.borrow_and_update());
                }
                if !changed {
                    // The supervisor ended: its last state stays, nothing more comes.
                    states = None;
                }
            }
            _ = tokio::time::sleep(RETRY), if retry => {}
        }
    };
    if order == Command::Stop
        && let Some(handle) = handle
    {
        handle.stop();
        match handle.wait().await {
            Ok(state) => tracing::info!(task = %name, "stopped: {state}"),
            Err(e) => tracing::warn!(task = %name, "stopping: {e}"),
        }
    }
}
