//! Fleet-wide host updates in waves across fault domains, with the applications'
//! consent, and a report of the hosts not done and why.
//!
//! - [`plan()`] cuts the fleet into waves: canaries (one host of each machine type and
//!   host profile in use), then waves that grow to cumulative shares (1%, 5%, 25%, 100%).
//! - [`Runner`] walks them. Like raft-rs, it does no I/O: the caller calls
//!   [`Runner::step`] as time passes and carries out the [`Action`]s it returns
//!   (update, reboot, verify a host; stop a task at a deadline; check a wave's health),
//!   reporting each back with its time. Hosts in flight are limited per rack, power domain
//!   and datacenter ([`DomainLimits`]). The host side (update packages, reboot, check
//!   health) is the integrator's [`HostActions`]; [`Runner::perform`] carries out a `Do`
//!   through it.
//! - An update that needs a reboot ([`UpdateKind::Reboot`]) drains the host first with a
//!   [`Drain`](crate::drain::Drain) held cordoned ([`DrainSettings::hold`](crate::drain::DrainSettings::hold)):
//!   an advance notice with a deadline to every job on it, moves as each job consents
//!   ([`Runner::requests`], [`Runner::respond`]), the rest stopped at the deadline, but
//!   only as each job's max-unavailable budget allows; then update, reboot, verify,
//!   release. A live update ([`UpdateKind::Live`]) only updates and verifies.
//! - After each wave, a health gate ([`Action::CheckGate`], answered by [`Runner::gate`]);
//!   a failed gate halts the rollout and proposes the hosts done for rollback.
//! - A host found down, or cordoned by someone else, is set aside and retried; every host
//!   not updated is in [`Runner::trailing`] with a typed [`Blocker`].
//! - [`sim`] runs the whole thing on a synthetic Twine-like fleet with simulated
//!   durations, consenting and vetoing jobs, and checks the limits from its own event log.
//!
//! ```
//! use twine_sched::rollout::{plan, sim, Action, HostStep, PlanConfig, Runner, RolloutConfig, UpdateKind};
//!
//! let (mut alloc, _ent) = sim::fleet(200)?;
//! let waves = plan(&alloc, &PlanConfig::default())?;
//! let mut runner = Runner::new(&alloc, waves, RolloutConfig::new(UpdateKind::Live))?;
//! let mut now = 0;
//! let mut todo = runner.step(&mut alloc, now)?;
//! while let Some(action) = todo.pop() {
//!     now += 1_000;
//!     match action {
//!         Action::Do { host, step } => todo.extend(runner.report(&mut alloc, host, step, true, now)?),
//!         Action::CheckGate { wave } => todo.extend(runner.gate(&mut alloc, wave, true, now)?),
//!         _ => {}
//!     }
//! }
//! assert_eq!(runner.updated().len(), 200);
//! assert!(runner.trailing(&alloc)?.is_empty());
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```
//!
//! # Decisions
//!
//! - A drain's moves are make-before-break and instant (as in [`crate::drain`]); a task
//!   is *down* from a forced stop until the caller reports it running again
//!   ([`Runner::task_restored`]). Stops at a deadline wait until the job's budget has
//!   room for all of its tasks on the host, so a vetoing job is never taken below its
//!   budget: the deadline bounds the veto, the budget paces what follows it.
//! - A wave ends when each of its hosts is updated, failed, set aside (down, held
//!   elsewhere), or waiting on its jobs past the consent grace. A host waiting on consent
//!   past the grace gives its fault-domain slot back (its tasks still run; it is only
//!   cordoned), so one vetoing job does not stall its racks for a week; once empty it
//!   takes a slot again, ahead of its rack's queue, before anything is done to it. The
//!   limits thus bound hosts being updated, rebooted or verified, and draining within the
//!   grace; cordoned hosts waiting on a deadline are bounded only by the waves.
//! - A failed gate cancels the drains not yet finished (their hosts come back up, their
//!   notices are dropped); hosts already being updated finish. Hosts done are proposed
//!   for rollback; nothing is rolled back.
//! - A host that fails its health check leaves flight but stays cordoned (reboot
//!   updates), and is reported; the gate is the caller's decision.

mod host;
mod plan;
mod report;
mod runner;
pub mod sim;

pub use host::HostActions;
pub use plan::{Plan, PlanConfig, UpdateKind, Wave, WaveKind, plan};
pub use report::{Blocker, Trailing};
pub use runner::{Action, DomainLimits, HostStep, RolloutConfig, RolloutState, Runner};

use crate::allocator::AllocError;
use crate::drain::DrainError;
use crate::fleet::HostId;
use crate::request::TaskId;

/// Why a rollout call was refused.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum RolloutError {
    /// A setting cannot work.
    #[error("{field}: {problem} (got {value:?})")]
    Config {
        /// The setting.
        field: &'static str,
        /// Its value.
        value: String,
        /// What is wrong.
        problem: &'static str,
    },
    /// The plan names a host the allocator lacks.
    #[error("the plan names {0}, which the allocator lacks")]
    UnknownHost(HostId),
    /// The plan names a host twice.
    #[error("the plan names {0} twice")]
    HostTwice(HostId),
    /// A report of a step the host is not carrying out.
    #[error("{host} reported {step:?}, which it is not carrying out")]
    UnexpectedReport {
        /// The host.
        host: HostId,
        /// The step reported.
        step: HostStep,
    },
    /// A gate answer for a wave that is not awaiting one.
    #[error("gate of wave {wave} answered, but it is not awaiting its gate")]
    UnexpectedGate {
        /// The wave.
        wave: usize,
    },
    /// A call about the drain of a host that is not draining.
    #[error("{0} is not draining")]
    NotDraining(HostId),
    /// A restore of a task the rollout did not stop.
    #[error("{0} was not stopped by the rollout")]
    NotStopped(TaskId),
    /// A call with an earlier time than a previous one.
    #[error("time went back: {now_ms} ms after {last_ms} ms")]
    TimeWentBack {
        /// The time given.
        now_ms: u64,
        /// The latest time seen.
        last_ms: u64,
    },
    /// The drain of a host failed.
    #[error("drain of {host}: {source}")]
    Drain {
        /// The host.
        host: HostId,
        /// What the drain said.
        source: DrainError,
    },
    /// The allocator refused a call.
    #[error(transparent)]
    Alloc(#[from] AllocError),
    /// The runner's books disagree with themselves: a bug in twine-sched.
    #[error("rollout at {host}: {what} (a bug in twine-sched)")]
    Internal {
        /// The host.
        host: HostId,
        /// What disagrees.
        what: String,
    },
}
