//! The task lifecycle as a pure state machine: no I/O, no clock, no runtime.
//!
//! The agent observes the container and the container's systemd, turns each
//! observation into an [`Input`], and feeds it to [`Lifecycle::apply`], which
//! returns the [`Event`]s to publish and persist. Deciding is apart from doing:
//! the agent acts (stops the target, kills the container) on what it reads from
//! the resulting [`TaskState`].
//!
//! ```text
//! Pending --ContainerStarted--> Starting --Ready--> Running
//!    |                             |                  |
//!    |                             +--StopRequested---+--> Stopping --MainExited--> Exited | Failed
//!    +--ContainerStartFailed / StopRequested--> Failed
//! Starting/Running --MainExited (no restart), PrestartFailed, ContainerGone, BusLost--> Exited | Failed
//! ```
//!
//! Rules worth knowing:
//! * a main exit that systemd restarts (`will_restart`) keeps the task where it
//!   is and emits [`EventKind::Restarted`] with a strictly increasing count;
//! * a nonzero exit code is [`TaskState::Exited`] with that code, not a failure:
//!   the job said how it ended. Failures are what the job did not choose (a
//!   signal, the OOM killer, a timeout, a lost container);
//! * while [`TaskState::Stopping`], an exit by signal that systemd calls
//!   `success` (it sent the kill signal itself) is
//!   `Exited { code: 128 + signal }`, the shell's convention; a stop that
//!   systemd had to finish with SIGKILL (`timeout`) or that outlived the agent's
//!   own deadline is [`FailReason::StopTimedOut`];
//! * losing D-Bus while stopping is expected (systemd exits) and is ignored;
//! * terminal states ([`TaskState::Exited`], [`TaskState::Failed`]) absorb:
//!   every further input returns [`TransitionError::AfterEnd`] and changes
//!   nothing, so a late observation can be logged and dropped;
//! * an input that cannot happen in the current state (the main service exited
//!   while the container was never started) is [`TransitionError::Impossible`]
//!   and changes nothing. Neither error ever panics.
//!
//! ```
//! use twine_agent::lifecycle::{Input, Lifecycle, MainExit, ServiceResult, TaskState};
//!
//! let mut task = Lifecycle::new();
//! task.apply(Input::ContainerStarted)?;
//! task.apply(Input::Ready)?;
//! assert_eq!(task.state(), &TaskState::Running);
//! task.apply(Input::StopRequested)?;
//! task.apply(Input::MainExited {
//!     exit: MainExit::Signal { signal: 15 },
//!     result: ServiceResult::Success,
//!     will_restart: false,
//!     n_restarts: 0,
//! })?;
//! assert_eq!(task.state(), &TaskState::Exited { code: 143 });
//! # Ok::<(), twine_agent::lifecycle::TransitionError>(())
//! ```

mod input;

use std::fmt;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use twine_spec::job::KillPolicy;
use twine_spec::timespan::Timeout;

pub use input::{Input, MainExit, ServiceResult};

/// Where a task is in its life.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "state", rename_all = "snake_case")]
#[non_exhaustive]
pub enum TaskState {
    /// Accepted, no container yet.
    Pending,
    /// The container is booting; its systemd is not ready yet.
    Starting,
    /// The container's systemd is ready and the job's target is started.
    Running,
    /// A stop was requested; waiting for the main service to exit.
    Stopping,
    /// The main service exited on its own terms (terminal).
    Exited {
        /// The exit code, or `128 + signal` for a signal sent by a graceful stop.
        code: i32,
    },
    /// The task ended in a way the job did not choose (terminal).
    Failed {
        /// Why.
        reason: FailReason,
    },
}

impl TaskState {
    /// Whether the state is terminal: no input leaves it.
    pub fn is_terminal(&self) -> bool {
        matches!(self, TaskState::Exited { .. } | TaskState::Failed { .. })
    }

    /// The lowercase name (`running`), as in the serialized form.
    pub fn name(&self) -> &'static str {
        match self {
            TaskState::Pending => "pending",
            TaskState::Starting => "starting",
            TaskState::Running => "running",
            TaskState::Stopping => "stopping",
            TaskState::Exited { .. } => "exited",
            TaskState::Failed { .. } => "failed",
        }
    }
}

impl fmt::Display for TaskState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            TaskState::Exited { code } => write!(f, "exited with code {code}"),
            TaskState::Failed { reason } => write!(f, "failed: {reason}"),
            other => f.write_str(other.name()),
        }
    }
}

/// Why a task failed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
#[serde(tag = "kind", rename_all = "snake_case")]
#[non_exhaustive]
pub enum FailReason {
    /// The container could not be created or systemd could not be executed.
    #[error("the container did not start: {message}")]
    ContainerStart {
        /// What went wrong, as the container module reported it.
        message: String,
    },
    /// The container's systemd never sent `READY=1` in time.
    #[error("the container's systemd never became ready")]
    NeverReady,
    /// A pre-start unit failed, so the main service never (re)started.
    #[error("pre-start unit {unit} failed (result {result})")]
    PrestartFailed {
        /// The pre-start unit's name.
        unit: String,
        /// systemd's `Result` of that unit.
        result: ServiceResult,
    },
    /// The main service was killed by the OOM killer.
    #[error("the main service was killed by the OOM killer")]
    OomKilled,
    /// The main service was killed by a signal nobody asked for.
    #[error("the main service was killed by signal {signal}")]
    Signal {
        /// The signal number.
        signal: i32,
    },
    /// systemd gave up on the main service (`timeout`, `watchdog`, `start-limit-hit`, ...).
    #[error("systemd gave up on the main service (result {result})")]
    Service {
        /// systemd's `Result` of the main service.
        result: ServiceResult,
    },
    /// The graceful stop did not finish within the kill policy's grace period.
    #[error("the task did not stop within its grace period")]
    StopTimedOut,
    /// A stop was requested before the container was started.
    #[error("stopped before it started")]
    StoppedBeforeStart,
    /// The connection to the container's systemd was lost.
    #[error("lost the D-Bus connection to the container's systemd")]
    BusLost,
    /// The container (its PID 1) went away.
    #[error("the container went away")]
    ContainerGone,
}

/// Something that happened to a task, numbered.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Event {
    /// Per-task sequence number, strictly increasing from 1.
    pub seq: u64,
    /// What happened.
    #[serde(flatten)]
    pub kind: EventKind,
}

/// What happened, in an [`Event`]. Serialized with an `event` tag:
/// `{"seq":2,"event":"state_changed","from":{"state":"starting"},"to":{"state":"running"}}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "event", rename_all = "snake_case")]
#[non_exhaustive]
pub enum EventKind {
    /// The task moved from one state to another.
    StateChanged {
        /// The previous state.
        from: TaskState,
        /// The new state.
        to: TaskState,
    },
    /// systemd restarted the main service.
    Restarted {
        /// Restarts so far (strictly increasing).
        count: u32,
        /// How the previous run ended.
        exit: MainExit,
        /// systemd's `Result` for that run.
        result: ServiceResult,
    },
    /// A unit in the container changed state.
    UnitChanged {
        /// The unit's name.
        unit: String,
        /// `ActiveState`.
        active_state: String,
        /// `SubState`.
        sub_state: String,
        /// `Result`.
        result: ServiceResult,
    },
}

/// An input that the current state cannot take. The state is unchanged.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum TransitionError {
    /// The input cannot happen in this state (a bug or a confused observer).
    #[error("{input} is impossible while the task is {state}")]
    Impossible {
        /// The state the task was (and still is) in.
        state: TaskState,
        /// The input's name ([`Input::name`]).
        input: &'static str,
    },
    /// The task already ended; late observations are expected and can be dropped.
    #[error("{input} arrived after the task ended ({state})")]
    AfterEnd {
        /// The terminal state.
        state: TaskState,
        /// The input's name ([`Input::name`]).
        input: &'static str,
    },
}

/// One task's lifecycle: its state, its restart count and its event numbering.
/// Serializable, so it can be persisted in the job record and resumed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Lifecycle {
    state: TaskState,
    restarts: u32,
    last_seq: u64,
}

impl Default for Lifecycle {
    fn default() -> Lifecycle {
        Lifecycle::new()
    }
}

impl Lifecycle {
    /// A new task, [`TaskState::Pending`], with no events yet.
    pub fn new() -> Lifecycle {
        Lifecycle {
            state: TaskState::Pending,
            restarts: 0,
            last_seq: 0,
        }
    }

    /// The current state.
    pub fn state(&self) -> &TaskState {
        &self.state
    }

    /// How many times systemd restarted the main service.
    pub fn restarts(&self) -> u32 {
        self.restarts
    }

    /// The sequence number of the last event emitted (0 before the first).
    pub fn last_seq(&self) -> u64 {
        self.last_seq
    }

    /// Feeds one observation; returns the events it caused, in order. On error
    /// nothing changed.
    pub fn apply(&mut self, input: Input) -> Result<Vec<Event>, TransitionError> {
        use TaskState as S;
        let name = input.name();
        if self.state.is_terminal() {
            return Err(TransitionError::AfterEnd {
                state: self.state.clone(),
                input: name,
            });
        }
        let impossible = |state: &TaskState| TransitionError::Impossible {
            state: state.clone(),
            input: name,
        };
        let mut events = Vec::new();
        let next = match (&self.state, input) {
            (S::Pending, Input::ContainerStarted) => S::Starting,
            (S::Pending, Input::ContainerStartFailed { message }) => S::Failed {
                reason: FailReason::ContainerStart { message },
            },
            (S::Pending, Input::StopRequested) => S::Failed {
                reason: FailReason::StoppedBeforeStart,
            },
            (S::Pending, _) => return Err(impossible(&self.state)),

            (
                S::Starting | S::Running | S::Stopping,
                Input::UnitChanged {
                    unit,
                    active_state,
                    sub_state,
                    result,
                },
            ) => {
                self.push(
                    &mut events,
                    EventKind::UnitChanged {
                        unit,
                        active_state,
                        sub_state,
                        result,
                    },
                );
                return Ok(events);
            }

            (S::Starting, Input::Ready) => S::Running,
            (S::Starting, Input::ReadyTimeout) => S::Failed {
                reason: FailReason::NeverReady,
            },
            (S::Starting | S::Running, Input::StopRequested) => S::Stopping,
            (
                S::Starting | S::Running,
                Input::MainExited {
                    exit,
                    result,
                    will_restart,
                    n_restarts,
                },
            ) => {
                if will_restart {
                    let count = n_restarts.max(self.restarts.saturating_add(1));
                    self.restarts = count;
                    self.push(
                        &mut events,
                        EventKind::Restarted {
                            count,
                            exit,
                            result,
                        },
                    );
                    return Ok(events);
                }
                ended(exit, result)
            }
            (S::Starting | S::Running | S::Stopping, Input::PrestartFailed { unit, result }) => {
                S::Failed {
                    reason: FailReason::PrestartFailed { unit, result },
                }
            }
            (S::Starting | S::Running | S::Stopping, Input::ContainerGone) => S::Failed {
                reason: FailReason::ContainerGone,
            },
            (S::Starting | S::Running, Input::BusLost) => S::Failed {
                reason: FailReason::BusLost,
            },
            (S::Starting | S::Running, _) => return Err(impossible(&self.state)),

            (S::Stopping, Input::MainExited { exit, result, .. }) => stopped(exit, result),
            (S::Stopping, Input::StopDeadlinePassed) => S::Failed {
                reason: FailReason::StopTimedOut,
            },
            // A repeated stop, a boot that finishes (or times out) after the
            // stop was asked, and systemd leaving the bus while it shuts down
            // are all expected while stopping and change nothing.
            (
                S::Stopping,
                Input::StopRequested | Input::Ready | Input::ReadyTimeout | Input::BusLost,
            ) => {
                return Ok(events);
            }
            (S::Stopping, _) => return Err(impossible(&self.state)),

            (S::Exited { .. } | S::Failed { .. }, _) => {
                return Err(TransitionError::AfterEnd {
                    state: self.state.clone(),
                    input: name,
                });
            }
        };
        let from = std::mem::replace(&mut self.state, next.clone());
        self.push(&mut events, EventKind::StateChanged { from, to: next });
        Ok(events)
    }

    fn push(&mut self, events: &mut Vec<Event>, kind: EventKind) {
        self.last_seq = self.last_seq.saturating_add(1);
        events.push(Event {
            seq: self.last_seq,
            kind,
        });
    }
}

/// The main service ended on its own (not restarted, no stop asked).
fn ended(exit: MainExit, result: ServiceResult) -> TaskState {
    match (exit, result) {
        (_, ServiceResult::OomKill) => TaskState::Failed {
            reason: FailReason::OomKilled,
        },
        (MainExit::Code { code }, ServiceResult::Success | ServiceResult::ExitCode) => {
            TaskState::Exited { code }
        }
        (
            MainExit::Signal { signal },
            ServiceResult::Success | ServiceResult::Signal | ServiceResult::CoreDump,
        ) => TaskState::Failed {
            reason: FailReason::Signal { signal },
        },
        (_, result) => TaskState::Failed {
            reason: FailReason::Service { result },
        },
    }
}

/// The main service ended while a stop was in progress.
fn stopped(exit: MainExit, result: ServiceResult) -> TaskState {
    match (exit, result) {
        (_, ServiceResult::Timeout) => TaskState::Failed {
            reason: FailReason::StopTimedOut,
        },
        (MainExit::Signal { signal }, ServiceResult::Success) => TaskState::Exited {
            code: signal.saturating_add(128),
        },
        (exit, result) => ended(exit, result),
    }
}

/// How long the agent waits, after asking systemd to stop the job's target,
/// before it feeds [`Input::StopDeadlinePassed`] and kills the container:
/// the kill policy's grace period (systemd's `TimeoutStopSec=`, after which
/// systemd itself sends the final signal) plus `margin` for systemd to reap
/// and report. `None` when the grace period is infinite.
pub fn stop_deadline(policy: &KillPolicy, margin: Duration) -> Option<Duration> {
    match policy.grace_period {
        Timeout::After(usec) => Some(Duration::from_micros(usec).saturating_add(margin)),
        Timeout::Infinity => None,
    }
}
