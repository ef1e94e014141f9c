//! The switch flow: request, drain, apply, reboot if needed, verify after boot, undrain.
//!
//! Deciding is apart from doing, as in raft-rs: [`Flow::step`] is a pure function from the
//! current [`Flow`] and the outcome of the last action ([`Event`]) to the next [`Flow`], and
//! [`State::action`] says what the runner must do next. The action is a function of the
//! state alone, so a flow read back after a crash or a reboot re-issues the action it was
//! carrying out; every action is therefore idempotent on the caller's side (draining a
//! drained host, applying a plan the applier already applied or half-applied, ...).
//!
//! [`Runner`] is the thin I/O shell: it persists the flow atomically (a temporary file
//! renamed over `flow.json` in a directory the caller chooses) *before* carrying out each
//! action, calls the caller's [`Drain`], [`Applier`] and [`Reboot`], and feeds their
//! outcomes back. After a reboot, [`Runner::resume`] reads the boot id: only a boot id that
//! differs from the one recorded before the reboot counts as "booted"; otherwise the
//! reboot is requested again.
//!
//! ```
//! use twine_profiles::change::Plan;
//! use twine_profiles::flow::{Action, Event, Flow, State};
//!
//! let flow = Flow::request("throughput-performance", Plan::default());
//! assert_eq!(flow.state.action(), Some(Action::Start));
//! // the plan needs no drain: straight to applying
//! let flow = flow.step(Event::Start)?;
//! assert_eq!(flow.state, State::Applying);
//! let flow = flow.step(Event::Applied { reboot_required: false, boot_id: "b1".into() })?;
//! let flow = flow.step(Event::Verified { pending: vec![] })?;
//! assert_eq!(flow.state, State::Done);
//! assert!(flow.is_finished());
//! # Ok::<(), twine_profiles::flow::UnexpectedEvent>(())
//! ```
//!
//! Two choices differ from a naive "undrain always": a failed verify and a failed rollback
//! leave the host drained ([`State::Failed`]), because it is in neither the old nor the new
//! profile and jobs must not land on it; a refused drain undrains (as kured uncordons after
//! a failed drain) and fails without having changed anything.

use std::error::Error as StdError;
use std::fmt;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::apply::{KernelWrites, Writes as _};
use crate::change::Plan;

mod host_applier;
pub use host_applier::HostApplier;

/// The error type of the caller's hooks ([`Drain`], [`Applier`], [`Reboot`]).
pub type HookError = Box<dyn StdError + Send + Sync + 'static>;

/// The step of the flow at which it failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
#[non_exhaustive]
pub enum Stage {
    /// Draining: nothing was changed on the host.
    Draining,
    /// Rolling back a failed apply: the host is in an unknown state and stays drained.
    RollingBack,
    /// Verifying after apply (and reboot): some settings did not take; the host stays drained.
    Verifying,
}

impl fmt::Display for Stage {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Stage::Draining => "draining",
            Stage::RollingBack => "rolling back",
            Stage::Verifying => "verifying",
        })
    }
}

/// Where the flow is. The profile and the plan live in [`Flow`], beside the state.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "state", rename_all = "kebab-case")]
#[non_exhaustive]
pub enum State {
    /// The switch to `profile` was asked for; nothing done yet.
    Requested {
        /// The profile asked for.
        profile: String,
    },
    /// Jobs are being moved off the host.
    Draining,
    /// The plan is being applied.
    Applying,
    /// A reboot was requested; `from_boot` is the boot id read before it.
    Rebooting {
        /// The boot id of the boot that applied the plan.
        from_boot: String,
    },
    /// The host is checked against the plan.
    Verifying,
    /// A failed apply is being rolled back; `error` is why the apply failed.
    RollingBack {
        /// Why the apply failed.
        error: String,
    },
    /// Jobs may come back; `then` is the terminal state after that.
    Undraining {
        /// The state the flow ends in once undrained.
        then: Box<State>,
    },
    /// The host has the profile and is undrained (if it was drained).
    Done,
    /// The flow failed at `at`; see [`Stage`] for what that leaves on the host.
    Failed {
        /// The step that failed.
        at: Stage,
        /// Why.
        error: String,
    },
    /// The apply failed and was rolled back; the host has its previous values again.
    RolledBack {
        /// Why the apply failed.
        error: String,
    },
}

/// What the runner must do next.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Action {
    /// Begin the flow (feed [`Event::Start`]).
    Start,
    /// Drain the host ([`Drain::drain`]).
    Drain,
    /// Apply the plan ([`Applier::apply`]).
    Apply,
    /// Request a reboot ([`Reboot::request_reboot`]) unless the boot id already moved on.
    Reboot,
    /// Verify the plan ([`Applier::verify`]).
    Verify,
    /// Roll back what was applied ([`Applier::rollback`]).
    Rollback,
    /// Undrain the host ([`Drain::undrain`]).
    Undrain,
}

/// The outcome of an action, fed to [`Flow::step`].
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Event {
    /// Begin: answers [`Action::Start`].
    Start,
    /// The host is drained.
    DrainDone,
    /// The drain was refused (a disruption budget, a job that cannot move).
    DrainRefused {
        /// Why.
        reason: String,
    },
    /// The drain did not finish before the deadline.
    DrainTimedOut {
        /// What was still running, for the message.
        reason: String,
    },
    /// The plan was applied.
    Applied {
        /// Whether a reboot is needed for it to take full effect.
        reboot_required: bool,
        /// The boot id now (`/proc/sys/kernel/random/boot_id`), to tell a reboot later.
        boot_id: String,
    },
    /// The apply failed.
    ApplyFailed {
        /// Why.
        error: String,
    },
    /// The boot id read now (after a requested reboot, or on resume).
    Booted {
        /// The boot id.
        boot_id: String,
    },
    /// Verify ran; `pending` names every setting that does not have its wanted value.
    Verified {
        /// The settings still pending (empty: verified).
        pending: Vec<String>,
    },
    /// The rollback finished.
    RolledBack,
    /// The rollback failed.
    RollbackFailed {
        /// Why.
        error: String,
    },
    /// The host is undrained.
    Undrained,
}

/// An event that the flow's state does not expect (a runner bug, or a stale outcome).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("the switch flow in state {state:?} does not expect event {event:?}")]
#[non_exhaustive]
pub struct UnexpectedEvent {
    /// The state, unchanged.
    pub state: State,
    /// The event refused.
    pub event: Event,
}

/// A switch flow: the profile, the plan, and where the flow is. This is what is persisted.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct Flow {
    /// The profile switched to.
    pub profile: String,
    /// The plan to apply (its `drain` decides whether the flow drains).
    pub plan: Plan,
    /// Where the flow is.
    pub state: State,
}

impl Flow {
    /// A flow asked to switch to `profile` by carrying out `plan`.
    pub fn request(profile: &str, plan: Plan) -> Self {
        Self {
            profile: profile.to_owned(),
            plan,
            state: State::Requested {
                profile: profile.to_owned(),
            },
        }
    }

    /// Whether the flow has ended (done, failed or rolled back).
    pub fn is_finished(&self) -> bool {
        self.state.action().is_none()
    }

    /// The flow after `event`: pure, no I/O. An event the state does not expect is refused
    /// and the flow is unchanged.
    pub fn step(&self, event: Event) -> Result<Flow, UnexpectedEvent> {
        let drained = self.plan.drain;
        // After draining, every way out goes through Undraining.
        let leave = |end: State| {
            if drained {
                State::Undraining {
                    then: Box::new(end),
                }
            } else {
                end
            }
        };
        let next = match (&self.state, event) {
            (State::Requested { .. }, Event::Start) if drained => State::Draining,
            (State::Requested { .. }, Event::Start) => State::Applying,
            (State::Draining, Event::DrainDone) => State::Applying,
            (State::Draining, Event::DrainRefused { reason })
            | (State::Draining, Event::DrainTimedOut { reason }) => leave(State::Failed {
                at: Stage::Draining,
                error: reason,
            }),
            (
                State::Applying,
                Event::Applied {
                    reboot_required: true,
                    boot_id,
                },
            ) => State::Rebooting { from_boot: boot_id },
            (State::Applying, Event::Applied { .. }) => State::Verifying,
            (State::Applying, Event::ApplyFailed { error }) => State::RollingBack { error },
            (State::Rebooting { from_boot }, Event::Booted { boot_id }) => {
                if boot_id == *from_boot {
                    self.state.clone()
                } else {
                    State::Verifying
                }
            }
            (State::Verifying, Event::Verified { pending }) if pending.is_empty() => {
                leave(State::Done)
            }
            (State::Verifying, Event::Verified { pending }) => State::Failed {
                at: Stage::Verifying,
                error: format!("still pending after apply: {}", pending.join(", ")),
            },
            (State::RollingBack { error }, Event::RolledBack) => leave(State::RolledBack {
                error: error.clone(),
            }),
            (State::RollingBack { error }, Event::RollbackFailed { error: why }) => State::Failed {
                at: Stage::RollingBack,
                error: format!("{why} (rolling back after: {error})"),
            },
            (State::Undraining { then }, Event::Undrained) => (**then).clone(),
            (_, event) => {
                return Err(UnexpectedEvent {
                    state: self.state.clone(),
                    event,
                });
            }
        };
        Ok(Flow {
            profile: self.profile.clone(),
            plan: self.plan.clone(),
            state: next,
        })
    }
}

impl State {
    /// What the runner must do in this state (`None`: the flow has ended).
    pub fn action(&self) -> Option<Action> {
        Some(match self {
            State::Requested { .. } => Action::Start,
            State::Draining => Action::Drain,
            State::Applying => Action::Apply,
            State::Rebooting { .. } => Action::Reboot,
            State::Verifying => Action::Verify,
            State::RollingBack { .. } => Action::Rollback,
            State::Undraining { .. } => Action::Undrain,
            State::Done | State::Failed { .. } | State::RolledBack { .. } => return None,
        })
    }
}

/// Moves jobs off the host and back, e.g. with the allocator and TaskControl.
pub trait Drain {
    /// Drains the host, enforcing the caller's own deadline. Must be idempotent (it is
    /// called again after a crash). `Err` means refused or timed out: nothing was changed.
    fn drain(&mut self) -> Result<(), DrainRefusal>;
    /// Lets jobs come back. Must be idempotent; an error leaves the flow in
    /// [`State::Undraining`] to be retried by [`Runner::resume`].
    fn undrain(&mut self) -> Result<(), HookError>;
}

/// Why a drain did not happen.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum DrainRefusal {
    /// Refused outright (a disruption budget, a job that cannot move).
    Refused(String),
    /// Not finished before the deadline.
    TimedOut(String),
}

/// Requests a reboot and tells one boot from the next.
pub trait Reboot {
    /// Asks for a reboot. On a real host this does not return in practice; a test double
    /// records the request and returns.
    fn request_reboot(&mut self) -> Result<(), HookError>;
    /// The id of the current boot (`/proc/sys/kernel/random/boot_id`; see [`read_boot_id`]).
    fn boot_id(&mut self) -> Result<String, HookError>;
}

/// What the flow needs from the applier; [`HostApplier`] implements it with [`crate::apply`].
pub trait Applier {
    /// Applies `plan`; returns whether a reboot is needed for it to take effect. Must resume
    /// a half-done apply when called again after a crash. `Err`: the flow rolls back.
    fn apply(&mut self, plan: &Plan) -> Result<bool, HookError>;
    /// The settings of `plan` that do not have their wanted value now (empty: verified).
    /// `Err` (could not read) leaves the flow in [`State::Verifying`] to be retried.
    fn verify(&mut self, plan: &Plan) -> Result<Vec<String>, HookError>;
    /// Restores what the apply changed, and only that. `Err`: the flow fails, drained.
    fn rollback(&mut self) -> Result<(), HookError>;
}

/// Reads the boot id under a host root (`ROOT/proc/sys/kernel/random/boot_id`), trimmed.
pub fn read_boot_id(root: &Path) -> std::io::Result<String> {
    let path = root.join("proc/sys/kernel/random/boot_id");
    std::fs::read_to_string(&path)
        .map(|s| s.trim().to_owned())
        .map_err(|e| std::io::Error::new(e.kind(), format!("reading {}: {e}", path.display())))
}

/// Why the runner stopped with the flow unfinished, or could not read or write it.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum FlowError {
    /// Reading, writing or renaming the state file failed.
    #[error("{op} the switch-flow state file {path}: {source}")]
    Io {
        /// What was done (`reading`, `writing`, ...).
        op: &'static str,
        /// The file.
        path: PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// The state file is not a flow.
    #[error("the switch-flow state file {path} is not valid: {source}")]
    Corrupt {
        /// The file.
        path: PathBuf,
        /// The cause.
        #[source]
        source: serde_json::Error,
    },
    /// A flow is already under way; finish (resume) it first.
    #[error("a switch to {profile:?} is still under way ({path}); resume it first")]
    Busy {
        /// The profile of the flow under way.
        profile: String,
        /// The state file.
        path: PathBuf,
    },
    /// A hook failed in a way that leaves the flow to be resumed (verify, undrain, reboot,
    /// reading the boot id); the state file still holds the flow.
    #[error("{action:?} for the switch to {profile:?} failed, resume later: {source}")]
    Hook {
        /// The action that failed.
        action: Action,
        /// The profile.
        profile: String,
        /// The cause.
        #[source]
        source: HookError,
    },
    /// The runner fed an event the state did not expect (a bug).
    #[error(transparent)]
    Unexpected(#[from] UnexpectedEvent),
}

/// Where the runner stopped.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Progress {
    /// The flow ended in this state (done, failed or rolled back).
    Finished(State),
    /// A reboot was requested; call [`Runner::resume`] after it.
    AwaitingReboot,
}

/// The name of the state file inside the runner's directory.
pub const STATE_FILE: &str = "flow.json";

/// Drives a [`Flow`] with the caller's hooks, persisting it before each action.
#[derive(Debug)]
pub struct Runner<A, D, R> {
    dir: PathBuf,
    applier: A,
    drain: D,
    reboot: R,
}

impl<A: Applier, D: Drain, R: Reboot> Runner<A, D, R> {
    /// A runner keeping its state file in `dir` (which must exist).
    pub fn new(dir: impl Into<PathBuf>, applier: A, drain: D, reboot: R) -> Self {
        Self {
            dir: dir.into(),
            applier,
            drain,
            reboot,
        }
    }

    /// The flow persisted in the directory, if any.
    pub fn load(&self) -> Result<Option<Flow>, FlowError> {
        let path = self.path();
        match std::fs::read(&path) {
            Ok(bytes) => serde_json::from_slice(&bytes)
                .map(Some)
                .map_err(|source| FlowError::Corrupt { path, source }),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(source) => Err(FlowError::Io {
                op: "reading",
                path,
                source,
            }),
        }
    }

    /// Starts switching to `profile` with `plan` and runs until the flow ends or awaits a
    /// reboot. Refused while an unfinished flow is persisted.
    pub fn start(&mut self, profile: &str, plan: Plan) -> Result<Progress, FlowError> {
        if let Some(flow) = self.load()?.filter(|f| !f.is_finished()) {
            return Err(FlowError::Busy {
                profile: flow.profile,
                path: self.path(),
            });
        }
        self.run(Flow::request(profile, plan))
    }

    /// Continues the persisted flow after a crash or a reboot (`None`: there is none).
    pub fn resume(&mut self) -> Result<Option<Progress>, FlowError> {
        match self.load()? {
            Some(flow) => self.run(flow).map(Some),
            None => Ok(None),
        }
    }

    fn path(&self) -> PathBuf {
        self.dir.join(STATE_FILE)
    }

    fn run(&mut self, mut flow: Flow) -> Result<Progress, FlowError> {
        loop {
            self.persist(&flow)?;
            let Some(action) = flow.state.action() else {
                return Ok(Progress::Finished(flow.state));
            };
            let hook = |source| FlowError::Hook {
                action: action.clone(),
                profile: flow.profile.clone(),
                source,
            };
            let event = match action {
                Action::Start => Event::Start,
                Action::Drain => match self.drain.drain() {
                    Ok(()) => Event::DrainDone,
                    Err(DrainRefusal::Refused(reason)) => Event::DrainRefused { reason },
                    Err(DrainRefusal::TimedOut(reason)) => Event::DrainTimedOut { reason },
                },
                Action::Apply => match self.applier.apply(&flow.plan) {
                    Ok(reboot_required) => Event::Applied {
                        reboot_required,
                        boot_id: self.reboot.boot_id().map_err(hook)?,
                    },
                    Err(e) => Event::ApplyFailed {
                        error: e.to_string(),
                    },
                },
                Action::Reboot => {
                    let boot_id = self.reboot.boot_id().map_err(hook)?;
                    let next = flow.step(Event::Booted { boot_id })?;
                    if next.state == flow.state {
                        self.reboot.request_reboot().map_err(hook)?;
                        return Ok(Progress::AwaitingReboot);
                    }
                    flow = next;
                    continue;
                }
                Action::Verify => Event::Verified {
                    pending: self.applier.verify(&flow.plan).map_err(hook)?,
                },
                Action::Rollback => match self.applier.rollback() {
                    Ok(()) => Event::RolledBack,
                    Err(e) => Event::RollbackFailed {
                        error: e.to_string(),
                    },
                },
                Action::Undrain => {
                    self.drain.undrain().map_err(hook)?;
                    Event::Undrained
                }
            };
            flow = flow.step(event)?;
        }
    }

    /// Writes the flow atomically, with [`KernelWrites::replace_file`] (a temporary file in
    /// the same directory, synced, renamed, the directory synced).
    fn persist(&self, flow: &Flow) -> Result<(), FlowError> {
        let path = self.path();
        let io = |op, source| FlowError::Io {
            op,
            path: path.clone(),
            source,
        };
        // A Flow is plain data with string keys: serialising it cannot fail.
        let json = serde_json::to_string_pretty(flow).map_err(|e| io("serialising", e.into()))?;
        KernelWrites
            .replace_file(&path, &json)
            .map_err(|e| io("writing", e))
    }
}
