//! One job's supervisor: a tokio task that owns the container, the D-Bus
//! connection to its systemd and the log shipper, turns unit changes into
//! lifecycle inputs, persists the record after each change, and tears
//! everything down once the task has ended for good.

use std::collections::HashSet;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use futures_util::StreamExt as _;
use petgraph::visit::EdgeRef as _;
use tokio::sync::{broadcast, mpsc, oneshot, watch};
use tokio::time::Instant;
use twine_spec::translate::Dependency;
use twine_spec::{UnitSet, job::KillPolicy};

use crate::container::Container;
use crate::lifecycle::{self, Event, Input, MainExit, ServiceResult, TaskState};
use crate::logs::JournalShipper;
use crate::state::{StateDir, write_record};
use crate::systemd::{
    ActiveState, BusEndpoint, BusError, ExecMain, JobOutcome, SystemdBus, UnitChange, UnitChanges,
    UnitStatus,
};

use super::{AgentError, AgentSettings, Control, JobHandle, JobRecord, job_key, open_store};

/// How long the container's systemd may take to accept a D-Bus connection.
const BUS_TIMEOUT: Duration = Duration::from_secs(10);
/// How long after the target's stop job the watch may still deliver the
/// main's exit before the supervisor reads it itself.
const SETTLE_GRACE: Duration = Duration::from_millis(500);
/// How often the supervisor checks that PID 1 is still there.
const LIVENESS: Duration = Duration::from_millis(500);

struct Supervisor {
    job: String,
    state: StateDir,
    settings: Arc<AgentSettings>,
    record: JobRecord,
    main: String,
    target: String,
    prestart: HashSet<String>,
    kill: KillPolicy,
    last_main: Option<UnitStatus>,
    state_tx: watch::Sender<TaskState>,
    events: broadcast::Sender<Event>,
    /// The supervisor's own control channel, to stop the job from inside.
    control_self: mpsc::UnboundedSender<Control>,
}

impl Supervisor {
    /// Feeds one input; publishes and persists what it caused. Inputs the
    /// lifecycle refuses (late or impossible observations) are logged and dropped.
    fn feed(&mut self, input: Input) -> Result<(), AgentError> {
        match self.record.lifecycle.apply(input) {
            Ok(events) => {
                if events.is_empty() {
                    return Ok(());
                }
                write_record(&self.state.job(&job_key(&self.job)).record(), &self.record)?;
                self.state_tx
                    .send_replace(self.record.lifecycle.state().clone());
                for event in events {
                    let _ = self.events.send(event);
                }
                Ok(())
            }
            Err(e) => {
                tracing::debug!(job = %self.job, "lifecycle input dropped: {e}");
                Ok(())
            }
        }
    }

    fn terminal(&self) -> bool {
        self.record.lifecycle.state().is_terminal()
    }

    /// Turns one unit change into lifecycle inputs.
    fn on_change(&mut self, change: UnitChange) -> Result<(), AgentError> {
        let status = change.status;
        let result = service_result(&status);
        self.feed(Input::UnitChanged {
            unit: change.unit.clone(),
            active_state: status.active_state.as_str().to_owned(),
            sub_state: status.sub_state.clone(),
            result: result.clone(),
        })?;
        if change.unit == self.main {
            self.on_main(status, false)?;
        } else if self.prestart.contains(&change.unit) && status.active_state == ActiveState::Failed
        {
            self.feed(Input::PrestartFailed {
                unit: change.unit,
                result,
            })?;
        }
        Ok(())
    }

    /// The main unit's status changed (or was read at start, `initial`).
    fn on_main(&mut self, status: UnitStatus, initial: bool) -> Result<(), AgentError> {
        let previous = self.last_main.replace(status.clone());
        let Some(service) = status.service.as_ref() else {
            return Ok(());
        };
        let was_down = previous.as_ref().is_none_or(|p| {
            matches!(p.active_state, ActiveState::Inactive | ActiveState::Failed)
                && p.sub_state != "auto-restart"
        });
        // An exit not seen before: the main was up, or its exit status or
        // restart count changed (a short-lived main can go from inactive to
        // failed between two reads, without an `active` in between).
        let new_exit = !was_down
            || previous.as_ref().is_some_and(|p| {
                p.service.as_ref().is_none_or(|ps| {
                    ps.exec_main != service.exec_main || ps.n_restarts != service.n_restarts
                })
            });
        let exit = main_exit(&service.exec_main);
        let result = ServiceResult::parse(&service.result);
        let restarting = status.sub_state == "auto-restart";
        let was_restarting = previous
            .as_ref()
            .is_some_and(|p| p.sub_state == "auto-restart");
        let down = matches!(
            status.active_state,
            ActiveState::Inactive | ActiveState::Failed
        );
        if status.active_state == ActiveState::Active {
            if self.record.lifecycle.state() == &TaskState::Starting {
                self.feed(Input::Ready)?;
            }
        } else if restarting && !was_restarting {
            if let Some(exit) = exit {
                self.feed(Input::MainExited {
                    exit,
                    result,
                    will_restart: true,
                    n_restarts: service.n_restarts,
                })?;
            }
        } else if down
            && (new_exit || (initial && self.record.lifecycle.state() != &TaskState::Starting))
            && let Some(exit) = exit
        {
            self.feed(Input::MainExited {
                exit,
                result,
                will_restart: false,
                n_restarts: service.n_restarts,
            })?;
        }
        Ok(())
    }
}

impl Supervisor {
    /// After the stop job of the target: if the main is down but no exit was
    /// seen (it was already down, or systemd collected the unit before its
    /// last state could be read), settle the stop from what is known.
    async fn settle_after_stop(&mut self, bus: &SystemdBus) -> Result<(), AgentError> {
        if self.terminal() {
            return Ok(());
        }
        match bus.unit_status(&self.main).await {
            Ok(status)
                if matches!(
                    status.active_state,
                    ActiveState::Inactive | ActiveState::Failed
                ) =>
            {
                let exit = status
                    .service
                    .as_ref()
                    .and_then(|s| main_exit(&s.exec_main));
                let result = service_result(&status);
                let n_restarts = status.service.as_ref().map_or(0, |s| s.n_restarts);
                let exit = exit.unwrap_or_else(|| self.assumed_exit());
                self.feed(Input::MainExited {
                    exit,
                    result,
                    will_restart: false,
                    n_restarts,
                })
            }
            Ok(_) => Ok(()),
            Err(BusError::NoSuchUnit { .. }) => {
                // Collected: it is not running. The stop was systemd's, by the
                // kill policy; its last exit is the one seen, or else the
                // policy's first signal.
                let exit = self.assumed_exit();
                self.feed(Input::MainExited {
                    exit,
                    result: ServiceResult::Success,
                    will_restart: false,
                    n_restarts: self.record.lifecycle.restarts(),
                })
            }
            Err(e) => {
                tracing::warn!(job = %self.job, "reading {} after the stop: {e}", self.main);
                Ok(())
            }
        }
    }

    /// The last exit seen of the main, or the kill policy's first signal.
    fn assumed_exit(&self) -> MainExit {
        self.last_main
            .as_ref()
            .and_then(|s| s.service.as_ref())
            .and_then(|s| main_exit(&s.exec_main))
            .unwrap_or(MainExit::Signal {
                signal: self.kill.signal.number(),
            })
    }
}

/// systemd's `Result` of a service; `success` for units that are not services.
fn service_result(status: &UnitStatus) -> ServiceResult {
    status
        .service
        .as_ref()
        .map_or(ServiceResult::Success, |s| ServiceResult::parse(&s.result))
}

/// The lifecycle's view of systemd's `ExecMainCode`/`ExecMainStatus`.
fn main_exit(exec_main: &ExecMain) -> Option<MainExit> {
    match *exec_main {
        ExecMain::NotExited => None,
        ExecMain::Exited(code) => Some(MainExit::Code { code }),
        ExecMain::Killed(signal) | ExecMain::Dumped(signal) => Some(MainExit::Signal { signal }),
        ExecMain::Other { status, .. } => Some(MainExit::Code { code: status }),
    }
}

/// Connects to the container's systemd, starts log shipping and (for a fresh
/// container) the job's target, and spawns the supervisor. If any of that
/// fails, the container is killed and the record says why.
pub(super) async fn launch(
    state: StateDir,
    settings: Arc<AgentSettings>,
    record: JobRecord,
    container: Container,
    kill: KillPolicy,
    units: UnitSet,
    reattached: bool,
) -> Result<JobHandle, AgentError> {
    let spec = record.spec.clone();
    let job = spec.name.clone();
    let names: Vec<String> = units.units().iter().map(|u| u.name.to_string()).collect();
    let main = units.main().to_string();
    let graph = units.graph();
    let prestart: HashSet<String> = graph
        .node_indices()
        .filter(|&n| graph[n].to_string() == main)
        .flat_map(|n| graph.edges(n).collect::<Vec<_>>())
        .filter(|e| *e.weight() == Dependency::Requires)
        .map(|e| graph[e.target()].to_string())
        .collect();
    let (state_tx, state_rx) = watch::channel(record.lifecycle.state().clone());
    let (events, _) = broadcast::channel(4096);
    let (control, control_rx) = mpsc::unbounded_channel();
    let mut sup = Supervisor {
        job: job.clone(),
        state,
        settings,
        record,
        main: main.clone(),
        target: units.target().to_string(),
        prestart,
        kill,
        last_main: None,
        state_tx,
        events: events.clone(),
        control_self: control.clone(),
    };
    let pid = u32::try_from(container.pid()).map_err(|_| AgentError::Internal {
        job: job.clone(),
        what: format!("PID 1 has a negative pid {}", container.pid()),
    })?;
    let endpoint = BusEndpoint::container(Path::new("/proc"), pid);
    let connected = async {
        let bus = SystemdBus::connect_with_retry(&endpoint, Instant::now() + BUS_TIMEOUT).await?;
        let changes = bus.watch(&names).await?;
        let main_status = bus.unit_status(&main).await?;
        Ok::<_, BusError>((bus, changes, main_status))
    };
    // Every step above is bounded by systemd's answers; this bounds the whole
    // in case the peer accepts and then never answers.
    let limit = BUS_TIMEOUT + BUS_TIMEOUT;
    let (bus, changes, main_status) = match tokio::time::timeout(limit, connected).await {
        Ok(Ok(parts)) => parts,
        Ok(Err(source)) => {
            return Err(abort(
                sup,
                container,
                AgentError::Bus {
                    job,
                    source: Box::new(source),
                },
            )
            .await);
        }
        Err(_) => {
            let error = AgentError::Timeout {
                job,
                what: "connecting to the container's systemd over D-Bus",
                after: limit,
            };
            return Err(abort(sup, container, error).await);
        }
    };
    let store = match open_store(&sup.state, &job, sup.settings.log_budget) {
        Ok(store) => store,
        Err(e) => return Err(abort(sup, container, e).await),
    };
    let shipper = JournalShipper::new(sup.state.job(&job_key(&job)).journal(), names, store);
    let (logs_stop, logs_stop_rx) = watch::channel(false);
    let (line_tx, lines) = mpsc::unbounded_channel();
    let logs = tokio::spawn(async move {
        let mut shipper = shipper;
        shipper.follow(logs_stop_rx, Some(line_tx)).await
    });
    sup.on_main(main_status, true)?;
    let started = if reattached {
        None
    } else {
        let (tx, rx) = oneshot::channel();
        let bus = bus.clone();
        let target = sup.target.clone();
        tokio::spawn(async move {
            let _ = tx.send(bus.start_unit(&target).await);
        });
        Some(rx)
    };
    let done = tokio::spawn(run(
        sup, container, bus, changes, control_rx, started, logs, logs_stop,
    ));
    Ok(JobHandle {
        spec,
        control,
        state: state_rx,
        events,
        lines: Some(lines),
        done,
        reattached,
    })
}

/// Kills the container after a failed launch and records the failure.
async fn abort(mut sup: Supervisor, container: Container, error: AgentError) -> AgentError {
    // The container is up (Starting or Running): losing systemd is the reason.
    let _ = sup.feed(Input::BusLost);
    let killed = tokio::task::spawn_blocking(move || container.kill()).await;
    sup.record.container = None;
    let _ = write_record(&sup.state.job(&job_key(&sup.job)).record(), &sup.record);
    match killed {
        Ok(Ok(())) => error,
        Ok(Err(cleanup)) => AgentError::Internal {
            job: sup.job.clone(),
            what: format!("{error}; cleaning up also failed: {cleanup}"),
        },
        Err(e) => AgentError::Internal {
            job: sup.job.clone(),
            what: format!("{error}; the cleanup task failed: {e}"),
        },
    }
}

#[allow(clippy::too_many_arguments)]
async fn run(
    mut sup: Supervisor,
    container: Container,
    bus: SystemdBus,
    changes: UnitChanges,
    mut control: mpsc::UnboundedReceiver<Control>,
    mut started: Option<oneshot::Receiver<Result<JobOutcome, BusError>>>,
    mut logs: tokio::task::JoinHandle<Result<u64, crate::logs::LogError>>,
    logs_stop: watch::Sender<bool>,
) -> Result<TaskState, AgentError> {
    // A shipper that fails (a full disk) ends the job: it is stopped by its
    // kill policy and the failure is what the run returns.
    let mut logs_failed: Option<AgentError> = None;
    let mut logs_done = false;
    let mut changes = Some(changes);
    let mut deadline: Option<Instant> = None;
    let mut liveness = tokio::time::interval(LIVENESS);
    let mut stop_task: Option<tokio::task::JoinHandle<()>> = None;
    let (stop_done_tx, mut stop_done) = mpsc::unbounded_channel::<()>();
    let mut settle_at: Option<Instant> = None;
    while !sup.terminal() {
        let wait_deadline = async {
            match deadline {
                Some(at) => tokio::time::sleep_until(at).await,
                None => std::future::pending().await,
            }
        };
        let next_change = async {
            match changes.as_mut() {
                Some(stream) => stream.next().await,
                None => std::future::pending().await,
            }
        };
        let start_done = async {
            match started.as_mut() {
                Some(rx) => rx.await,
                None => std::future::pending().await,
            }
        };
        let settle_wait = async {
            match settle_at {
                Some(at) => tokio::time::sleep_until(at).await,
                None => std::future::pending().await,
            }
        };
        let shipper_end = async {
            if logs_done {
                std::future::pending().await
            } else {
                (&mut logs).await
            }
        };
        tokio::select! {
            ended = shipper_end => {
                logs_done = true;
                let error = match ended {
                    Ok(Ok(_)) => AgentError::Internal {
                        job: sup.job.clone(),
                        what: "the log shipper stopped on its own".into(),
                    },
                    Ok(Err(source)) => AgentError::Logs { job: sup.job.clone(), source },
                    Err(e) => AgentError::Internal {
                        job: sup.job.clone(),
                        what: format!("the log shipper task failed: {e}"),
                    },
                };
                tracing::error!(job = %sup.job, "{error}; stopping the job");
                logs_failed = Some(error);
                let _ = sup.control_self.send(Control::Stop);
            }
            change = next_change => match change {
                Some(Ok(change)) => sup.on_change(change)?,
                // A unit read that failed (it was collected, a call timed out):
                // the stream goes on; only a lost connection ends it.
                Some(Err(e)) if !matches!(e, BusError::Disconnected { .. }) => {
                    tracing::debug!(job = %sup.job, "watching the units: {e}");
                }
                Some(Err(_)) | None => {
                    changes = None;
                    if container.is_running() {
                        sup.feed(Input::BusLost)?;
                    } else {
                        sup.feed(Input::ContainerGone)?;
                    }
                }
            },
            outcome = start_done => {
                started = None;
                match outcome {
                    Ok(Ok(JobOutcome::Done)) => {}
                    Ok(Ok(other)) => {
                        let failed = first_failed_prestart(&bus, &sup.prestart).await;
                        let (unit, result) = failed.unwrap_or_else(|| (sup.target.clone(), ServiceResult::Other(format!("{other:?}"))));
                        sup.feed(Input::PrestartFailed { unit, result })?;
                    }
                    Ok(Err(e)) => tracing::warn!(job = %sup.job, "starting the target: {e}"),
                    Err(_) => {}
                }
            }
            command = control.recv() => match command {
                Some(Control::Stop) => {
                    sup.feed(Input::StopRequested)?;
                    if sup.record.lifecycle.state() == &TaskState::Stopping && stop_task.is_none() {
                        deadline = lifecycle::stop_deadline(&sup.kill, sup.settings.stop_margin).map(|d| Instant::now() + d);
                        let bus = bus.clone();
                        let target = sup.target.clone();
                        let done = stop_done_tx.clone();
                        stop_task = Some(tokio::spawn(async move {
                            if let Err(e) = bus.stop_unit(&target).await {
                                tracing::warn!("stopping {target}: {e}");
                            }
                            let _ = done.send(());
                        }));
                    }
                }
                None => {}
            },
            Some(()) = stop_done.recv() => {
                // The stop job is over. A main that was already down (or never
                // started) gives no further change: settle it from its status,
                // once the watch has had a moment to deliver the main's exit.
                settle_at = Some(Instant::now() + SETTLE_GRACE);
            }
            () = settle_wait => {
                settle_at = None;
                sup.settle_after_stop(&bus).await?;
            }
            () = wait_deadline => {
                deadline = None;
                sup.feed(Input::StopDeadlinePassed)?;
            }
            _ = liveness.tick() => {
                if !container.is_running() {
                    sup.feed(Input::ContainerGone)?;
                }
            }
        }
    }
    if let Some(task) = stop_task {
        task.abort();
    }
    drop(bus);
    // Power the container off (every unit stops by its own kill policy), then
    // ship what journald wrote until the end, then forget the container.
    let poweroff = sup.settings.poweroff_timeout;
    let shutdown = tokio::task::spawn_blocking(move || container.shutdown(poweroff)).await;
    let _ = logs_stop.send(true);
    let shipped = if logs_done { Ok(Ok(0)) } else { logs.await };
    sup.record.container = None;
    write_record(&sup.state.job(&job_key(&sup.job)).record(), &sup.record)?;
    if let Some(error) = logs_failed {
        return Err(error);
    }
    match shutdown {
        Ok(Ok(_)) => {}
        Ok(Err(source)) => {
            return Err(AgentError::Container {
                job: sup.job.clone(),
                source,
            });
        }
        Err(e) => {
            return Err(AgentError::Internal {
                job: sup.job.clone(),
                what: format!("the shutdown task failed: {e}"),
            });
        }
    }
    match shipped {
        Ok(Ok(_)) => {}
        Ok(Err(source)) => {
            return Err(AgentError::Logs {
                job: sup.job.clone(),
                source,
            });
        }
        Err(e) => {
            return Err(AgentError::Internal {
                job: sup.job.clone(),
                what: format!("the log shipper task failed: {e}"),
            });
        }
    }
    Ok(sup.record.lifecycle.state().clone())
}

/// The first pre-start unit systemd reports failed, with its result.
async fn first_failed_prestart(
    bus: &SystemdBus,
    prestart: &HashSet<String>,
) -> Option<(String, ServiceResult)> {
    let mut names: Vec<&String> = prestart.iter().collect();
    names.sort();
    for unit in names {
        if let Ok(status) = bus.unit_status(unit).await
            && status.active_state == ActiveState::Failed
        {
            let result = status
                .service
                .as_ref()
                .map_or(ServiceResult::Other("failed".into()), |s| {
                    ServiceResult::parse(&s.result)
                });
            return Some((unit.clone(), result));
        }
    }
    None
}
