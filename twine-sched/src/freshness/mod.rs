//! Job freshness: every task is restarted on a fresh container at least every
//! [`FreshnessConfig::max_age_ms`] (90 days by default), through each job's
//! [`TaskControl`], at a level fleet-wide rate; identity certificates are renewed in place,
//! before they expire, and a renewal never restarts anything.
//!
//! [`Freshness`] is a state machine over plain data and the caller's time in milliseconds
//! (which must not go back): no I/O, no clock, no randomness. The caller
//! [`advance`](Freshness::advance)s it (an hour apart is plenty), carries out the
//! [`Plan`]'s renewals, and drives each job's TaskControl round trip through
//! [`request`](Freshness::request), [`respond`](Freshness::respond) and
//! [`complete`](Freshness::complete), which is how the planner learns that a task runs on a
//! fresh container.
//!
//! ```
//! use twine_sched::{JobId, TaskId};
//! use twine_sched::freshness::*;
//! use twine_sched::taskcontrol::{JobPolicy, TaskControlResponse};
//!
//! let now = 100 * DAY_MS;
//! let mut fresh = Freshness::new(FreshnessConfig::default(), now)?;
//! // Two tasks started 80 and 10 days ago; identities valid for 20 more days.
//! fresh.add_job(JobId(1), JobPolicy { max_unavailable: 1 }, &[
//!     TaskClock { task: TaskId(1), started_ms: now - 80 * DAY_MS, identity_expires_ms: now + 20 * DAY_MS },
//!     TaskClock { task: TaskId(2), started_ms: now - 10 * DAY_MS, identity_expires_ms: now + 20 * DAY_MS },
//! ])?;
//! // Ten days later task 1 has passed 90 − 7 days: it is offered, whatever the level rate.
//! let plan = fresh.advance(now + 10 * DAY_MS)?;
//! assert!(plan.offers.iter().any(|o| o.op.task == TaskId(1)));
//! // Both identities are within the 10-day renewal lead: renewed in place, no restart.
//! assert_eq!(plan.renewals.len(), 2);
//! // The job's controller approves; the scheduler restarts the task and reports it done.
//! let req = fresh.request(JobId(1))?;
//! let ack = req.request.iter().map(|op| op.id).collect();
//! let started = fresh.respond(JobId(1), TaskControlResponse { sequence: req.sequence, ack }, now + 10 * DAY_MS)?;
//! assert_eq!(started.len(), 1); // max_unavailable 1: one at a time
//! fresh.complete(JobId(1), started[0].op.id, now + 10 * DAY_MS + 60_000)?;
//! assert_eq!(fresh.task(JobId(1), started[0].op.task)?.started_ms, now + 10 * DAY_MS + 60_000);
//! # Ok::<(), FreshnessError>(())
//! ```
//!
//! # When a task is offered
//!
//! A task is *due* at `started + max_age − margin`: the margin is the time its controller
//! and the restart itself may take (see [`FreshnessConfig::margin_ms`]). Offers are paced by
//! a credit that grows at a *rate* and is spent one task per offer, earliest due first
//! (earliest deadline first over the idle tasks of every job). The rate is re-planned every
//! [`FreshnessConfig::replan_every_ms`] as the larger of
//!
//! * the *level rate*, all tasks over one cycle `max_age − margin`: in steady state each task
//!   comes round once a cycle, so the fleet restarts the same number of tasks every day;
//! * the *required rate*, the least constant rate at which earliest-deadline-first meets
//!   every due date: `max over k of k / max(due_k − now, replan period)`, over the idle
//!   tasks not yet due, in due order.
//!
//! So a clump of tasks started the same day is pulled forward, ahead of its due date, at
//! the level rate when that suffices, and the cycle after is level again. A task whose due
//! date comes is offered then even without credit (a replan period too coarse for a
//! burst, or tasks added late), and the credit never goes below zero. Credit stops
//! accumulating beyond one replan period's worth, so an idle fleet does not burst later.
//!
//! A task has one offer at a time, held by its job's TaskControl until the restart
//! completes, and the job's [`JobPolicy::max_unavailable`] is enforced there: an offer is
//! a request for approval, not a restart.
//!
//! # Guarantee and its assumption
//!
//! If every job's controller approves an offered restart, and the restart completes, within
//! `margin` of its due date (the per-job budget included: a job of `n` tasks with budget
//! `b` and restarts of `r` needs `n·r/b` when many of its tasks are due together), no task
//! ever runs a container older than `max_age`. A controller that vetoes (never acks) breaks
//! the assumption; its tasks are then listed in [`Plan::overdue`] at every advance, by job
//! and task, rather than restarted behind its back.
//!
//! # Renewals
//!
//! A task's identity is due for renewal `renewal_lead_ms` before it expires; the plan lists
//! it once in [`Plan::renewals`], and [`renewed`](Freshness::renewed) records the new expiry.
//! A [`Renewal`] carries no operation: it goes to the identity service, never through
//! TaskControl, and does not change the task's container start.
//!
//! # Where things are
//!
//! This file holds the planner; `simulate.rs` a seeded fleet of jobs with controllers of
//! different speeds, and an independent check of its event log.

mod simulate;

use std::collections::{BTreeMap, BTreeSet};

pub use simulate::{ControllerKind, SimConfig, SimError, SimReport, simulate};

use crate::request::{JobId, TaskId};
use crate::taskcontrol::{
    JobPolicy, OpId, OpKind, Operation, Started, TaskControl, TaskControlError, TaskControlRequest,
    TaskControlResponse,
};

/// Milliseconds in a day.
pub const DAY_MS: u64 = 86_400_000;

/// How fresh containers and identities are kept.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct FreshnessConfig {
    /// No task may run a container older than this (90 days by default).
    pub max_age_ms: u64,
    /// How long before `max_age` a task is offered at the latest (7 days by default): the
    /// time its controller's approval, the wait for its job's budget and the restart may
    /// take together. Less than `max_age_ms`.
    pub margin_ms: u64,
    /// How long before an identity expires it is renewed (10 days by default).
    pub renewal_lead_ms: u64,
    /// How long one restart of a job takes, from the slot it needs in the job's budget
    /// coming free to the next (approval, restart, completion), as the planner assumes for
    /// jobs added with [`add_job`](Freshness::add_job) (1 hour by default). A job whose
    /// tasks are due together is started early enough to restart them
    /// `max_unavailable` at a time at this pace; see [`Freshness::add_job_paced`].
    pub restart_allowance_ms: u64,
    /// How often the pacing rate is re-planned (1 day by default); each re-plan costs one
    /// pass over the idle tasks.
    pub replan_every_ms: u64,
}

impl Default for FreshnessConfig {
    fn default() -> Self {
        FreshnessConfig {
            max_age_ms: 90 * DAY_MS,
            margin_ms: 7 * DAY_MS,
            renewal_lead_ms: 10 * DAY_MS,
            restart_allowance_ms: 3_600_000,
            replan_every_ms: DAY_MS,
        }
    }
}

impl FreshnessConfig {
    /// The cycle a task comes round in at the level rate: `max_age − margin`.
    pub fn cycle_ms(&self) -> u64 {
        self.max_age_ms.saturating_sub(self.margin_ms)
    }

    fn validate(&self) -> Result<(), FreshnessError> {
        let bad = |field: &'static str, value: u64, reason: &'static str| {
            Err(FreshnessError::InvalidConfig {
                field,
                value,
                reason,
            })
        };
        if self.max_age_ms == 0 {
            return bad("max_age_ms", self.max_age_ms, "must be positive");
        }
        if self.margin_ms >= self.max_age_ms {
            return bad("margin_ms", self.margin_ms, "must be less than max_age_ms");
        }
        if self.replan_every_ms == 0 {
            return bad("replan_every_ms", self.replan_every_ms, "must be positive");
        }
        Ok(())
    }
}

/// A task as the planner is told about it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct TaskClock {
    /// The task.
    pub task: TaskId,
    /// When its current container started.
    pub started_ms: u64,
    /// When its identity certificate expires.
    pub identity_expires_ms: u64,
}

/// A restart operation the planner offered to a job's TaskControl.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Offer {
    /// The job.
    pub job: JobId,
    /// The operation (always [`OpKind::Restart`]).
    pub op: Operation,
    /// When the task was due (`started + max_age − margin`); an offer earlier than this is
    /// pacing pulling it forward.
    pub due_ms: u64,
}

/// An identity to renew in place. It names no operation: renewing never restarts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Renewal {
    /// The job.
    pub job: JobId,
    /// The task.
    pub task: TaskId,
    /// When its current identity expires.
    pub expires_ms: u64,
}

/// A task running a container older than `max_age`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Overdue {
    /// The job.
    pub job: JobId,
    /// The task.
    pub task: TaskId,
    /// How old its container is.
    pub age_ms: u64,
    /// Whether a restart of it is offered (its controller has not let it through yet).
    pub offered: bool,
}

/// What one [`advance`](Freshness::advance) decided.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Plan {
    /// Restarts offered to the jobs' TaskControl now, in the order offered.
    pub offers: Vec<Offer>,
    /// Identities to renew now, each listed once until [`renewed`](Freshness::renewed).
    pub renewals: Vec<Renewal>,
    /// Every task now older than `max_age`, oldest first.
    pub overdue: Vec<Overdue>,
}

/// A task as the planner sees it now.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct TaskView {
    /// When its current container started.
    pub started_ms: u64,
    /// When its identity expires.
    pub identity_expires_ms: u64,
    /// Its outstanding restart, if one is offered.
    pub offered: Option<OpId>,
}

/// Why a call was refused. Nothing changes when one is returned.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum FreshnessError {
    /// A configuration value out of range.
    #[error("{field}: {reason} (got {value})")]
    InvalidConfig {
        /// The field.
        field: &'static str,
        /// Its value.
        value: u64,
        /// What is wrong with it.
        reason: &'static str,
    },
    /// A job added twice.
    #[error("{0} is already known")]
    DuplicateJob(JobId),
    /// A job that lists a task twice.
    #[error("{job} lists {task} twice")]
    DuplicateTask {
        /// The job.
        job: JobId,
        /// The task.
        task: TaskId,
    },
    /// A task whose container starts after the planner's current time.
    #[error("{job} {task}: container starts at {started_ms} ms, after now ({now_ms} ms)")]
    StartInFuture {
        /// The job.
        job: JobId,
        /// The task.
        task: TaskId,
        /// Its start.
        started_ms: u64,
        /// The planner's time.
        now_ms: u64,
    },
    /// No such job.
    #[error("{0} is not known")]
    UnknownJob(JobId),
    /// No such task in the job.
    #[error("{job} has no {task}")]
    UnknownTask {
        /// The job.
        job: JobId,
        /// The task.
        task: TaskId,
    },
    /// A renewal recorded for a task whose renewal was not asked for.
    #[error("{job} {task}: no renewal is pending")]
    NoRenewalPending {
        /// The job.
        job: JobId,
        /// The task.
        task: TaskId,
    },
    /// A call with an earlier time than a previous one.
    #[error("time went back: {now_ms} ms after {last_ms} ms")]
    TimeWentBack {
        /// The time given.
        now_ms: u64,
        /// The latest time seen.
        last_ms: u64,
    },
    /// The job's TaskControl refused the call.
    #[error("{job}: {source}")]
    TaskControl {
        /// The job.
        job: JobId,
        /// Why.
        source: TaskControlError,
    },
}

#[derive(Debug, Clone)]
struct Task {
    job: usize,
    id: TaskId,
    started_ms: u64,
    /// Its key in `idle` while it is idle: its due time, brought forward for its job's pace.
    due_ms: u64,
    expires_ms: u64,
    offered: Option<OpId>,
    renewal_pending: bool,
}

#[derive(Debug, Clone)]
struct Job {
    id: JobId,
    control: TaskControl,
    tasks: BTreeMap<TaskId, usize>,
    /// The planner's outstanding operations and their task.
    ops: BTreeMap<OpId, usize>,
    /// Restarts in flight at once: the budget (at least 1).
    slots: usize,
    allowance_ms: u64,
}

/// The freshness planner over a fleet of jobs (see the [module docs](self)).
#[derive(Debug, Clone)]
pub struct Freshness {
    config: FreshnessConfig,
    jobs: Vec<Job>,
    job_index: BTreeMap<JobId, usize>,
    tasks: Vec<Task>,
    /// Tasks without an outstanding restart, by due time.
    idle: BTreeSet<(u64, usize)>,
    /// Every task by container start: the oldest first.
    by_start: BTreeSet<(u64, usize)>,
    /// Identities not yet listed for renewal, by renewal time.
    renew: BTreeSet<(u64, usize)>,
    /// Offers owed, in task·ms per cycle_ms (integer pacing: `credit / cycle_ms` offers).
    credit: u128,
    /// Tasks per cycle: the pacing rate until the next re-plan.
    rate_per_cycle: u128,
    next_replan_ms: u64,
    next_op: u64,
    last_ms: u64,
}

impl Freshness {
    /// An empty fleet at `now_ms`. Refused if the configuration is out of range.
    pub fn new(config: FreshnessConfig, now_ms: u64) -> Result<Self, FreshnessError> {
        config.validate()?;
        Ok(Freshness {
            config,
            jobs: Vec::new(),
            job_index: BTreeMap::new(),
            tasks: Vec::new(),
            idle: BTreeSet::new(),
            by_start: BTreeSet::new(),
            renew: BTreeSet::new(),
            credit: 0,
            rate_per_cycle: 0,
            next_replan_ms: now_ms,
            next_op: 1,
            last_ms: now_ms,
        })
    }

    /// The configuration.
    pub fn config(&self) -> &FreshnessConfig {
        &self.config
    }

    /// Adds a job with its tasks and restart budget. Its tasks are considered at the next
    /// [`advance`](Self::advance) (the pacing rate takes them in at the next re-plan; a task
    /// already due is offered at once).
    ///
    /// Refused if the job is known, lists a task twice, or a container starts after the
    /// planner's time.
    pub fn add_job(
        &mut self,
        job: JobId,
        policy: JobPolicy,
        tasks: &[TaskClock],
    ) -> Result<(), FreshnessError> {
        self.add_job_paced(job, policy, self.config.restart_allowance_ms, tasks)
    }

    /// As [`add_job`](Self::add_job), with this job's own restart allowance (a slow
    /// controller's): its idle tasks, in due order, are offered early enough that
    /// restarting them `max_unavailable` at a time, each taking `allowance_ms`, ends by
    /// each one's due time. That is, a task's effective due time is the earlier of its own
    /// and `allowance_ms` before the effective due time of the task `max_unavailable`
    /// places after it.
    pub fn add_job_paced(
        &mut self,
        job: JobId,
        policy: JobPolicy,
        allowance_ms: u64,
        tasks: &[TaskClock],
    ) -> Result<(), FreshnessError> {
        if self.job_index.contains_key(&job) {
            return Err(FreshnessError::DuplicateJob(job));
        }
        let mut seen = BTreeSet::new();
        for t in tasks {
            if !seen.insert(t.task) {
                return Err(FreshnessError::DuplicateTask { job, task: t.task });
            }
            if t.started_ms > self.last_ms {
                return Err(FreshnessError::StartInFuture {
                    job,
                    task: t.task,
                    started_ms: t.started_ms,
                    now_ms: self.last_ms,
                });
            }
        }
        let j = self.jobs.len();
        let mut index = BTreeMap::new();
        for t in tasks {
            let i = self.tasks.len();
            self.tasks.push(Task {
                job: j,
                id: t.task,
                started_ms: t.started_ms,
                due_ms: 0,
                expires_ms: t.identity_expires_ms,
                offered: None,
                renewal_pending: false,
            });
            index.insert(t.task, i);
            self.by_start.insert((t.started_ms, i));
            self.renew.insert((self.renew_at(t.identity_expires_ms), i));
        }
        self.jobs.push(Job {
            id: job,
            control: TaskControl::new(job, policy),
            tasks: index,
            ops: BTreeMap::new(),
            // A budget beyond the address space is no budget (as in TaskControl).
            slots: usize::try_from(policy.max_unavailable.max(1)).unwrap_or(usize::MAX),
            allowance_ms,
        });
        self.job_index.insert(job, j);
        self.pace_job(j);
        Ok(())
    }

    /// Recomputes the effective due times of a job's idle tasks (see
    /// [`add_job_paced`](Self::add_job_paced)) and files them in `idle`.
    fn pace_job(&mut self, j: usize) {
        let job = &self.jobs[j];
        let mut idle: Vec<(u64, usize)> = job
            .tasks
            .values()
            .filter(|&&i| self.tasks[i].offered.is_none())
            .map(|&i| (self.due(self.tasks[i].started_ms), i))
            .collect();
        idle.sort_unstable();
        let mut due: Vec<u64> = idle.iter().map(|&(d, _)| d).collect();
        for k in (0..due.len()).rev() {
            if let Some(&later) = due.get(k + job.slots) {
                due[k] = due[k].min(later.saturating_sub(job.allowance_ms));
            }
        }
        for (&(_, i), &d) in idle.iter().zip(&due) {
            let t = &mut self.tasks[i];
            if t.due_ms == d && self.idle.contains(&(d, i)) {
                continue;
            }
            self.idle.remove(&(t.due_ms, i));
            t.due_ms = d;
            self.idle.insert((d, i));
        }
    }

    fn due(&self, started_ms: u64) -> u64 {
        started_ms.saturating_add(self.config.cycle_ms())
    }

    fn renew_at(&self, expires_ms: u64) -> u64 {
        expires_ms.saturating_sub(self.config.renewal_lead_ms)
    }

    /// How many tasks the planner tracks.
    pub fn task_count(&self) -> usize {
        self.tasks.len()
    }

    /// The level rate, in restarts per day: all tasks over one cycle.
    pub fn level_rate_per_day(&self) -> f64 {
        self.tasks.len() as f64 * DAY_MS as f64 / self.config.cycle_ms() as f64
    }

    /// The pacing rate in force until the next re-plan, in offers per day.
    pub fn rate_per_day(&self) -> f64 {
        self.rate_per_cycle as f64 * DAY_MS as f64 / self.config.cycle_ms() as f64
    }

    /// A task's container start, identity expiry and outstanding restart.
    pub fn task(&self, job: JobId, task: TaskId) -> Result<TaskView, FreshnessError> {
        let t = &self.tasks[self.task_index(job, task)?];
        Ok(TaskView {
            started_ms: t.started_ms,
            identity_expires_ms: t.expires_ms,
            offered: t.offered,
        })
    }

    /// The job's TaskControl, for inspection (its budget, unavailable tasks).
    pub fn task_control(&self, job: JobId) -> Result<&TaskControl, FreshnessError> {
        Ok(&self.jobs[self.job(job)?].control)
    }

    /// The task with the oldest container now, with its age, if there is any task.
    pub fn oldest(&self, now_ms: u64) -> Option<(JobId, TaskId, u64)> {
        let &(started, i) = self.by_start.first()?;
        let t = &self.tasks[i];
        Some((self.jobs[t.job].id, t.id, now_ms.saturating_sub(started)))
    }

    fn job(&self, job: JobId) -> Result<usize, FreshnessError> {
        self.job_index
            .get(&job)
            .copied()
            .ok_or(FreshnessError::UnknownJob(job))
    }

    fn task_index(&self, job: JobId, task: TaskId) -> Result<usize, FreshnessError> {
        let j = self.job(job)?;
        self.jobs[j]
            .tasks
            .get(&task)
            .copied()
            .ok_or(FreshnessError::UnknownTask { job, task })
    }

    fn check_time(&self, now_ms: u64) -> Result<(), FreshnessError> {
        if now_ms < self.last_ms {
            return Err(FreshnessError::TimeWentBack {
                now_ms,
                last_ms: self.last_ms,
            });
        }
        Ok(())
    }

    /// The least rate, in tasks per cycle, at which earliest-deadline-first offers every
    /// idle task by its due time, starting at `now_ms`. Tasks already due are left out
    /// (they are offered at once, credit or not), and no window counts as shorter than a
    /// replan period, the least time a rate is held for.
    fn required_per_cycle(&self, now_ms: u64) -> u128 {
        let cycle = u128::from(self.config.cycle_ms());
        let shortest = self.config.replan_every_ms;
        let mut best = 0u128;
        let ahead = self.idle.range((now_ms.saturating_add(1), 0)..);
        for (k, &(due, _)) in (1u128..).zip(ahead) {
            let window = u128::from((due - now_ms).max(shortest));
            best = best.max((k * cycle).div_ceil(window));
        }
        best
    }

    /// Time passes to `now_ms`: offers the restarts the pacing allows (and every task due),
    /// lists identities to renew, and every task older than `max_age`.
    ///
    /// Refused if time went back, or (a bug) a job's TaskControl refuses an offer.
    pub fn advance(&mut self, now_ms: u64) -> Result<Plan, FreshnessError> {
        self.check_time(now_ms)?;
        let cycle = u128::from(self.config.cycle_ms());
        let elapsed = u128::from(now_ms - self.last_ms);
        self.last_ms = now_ms;
        let cap = self.rate_per_cycle * u128::from(self.config.replan_every_ms) + cycle;
        self.credit = (self.credit + self.rate_per_cycle * elapsed).min(cap);
        if now_ms >= self.next_replan_ms {
            let level = u128::try_from(self.tasks.len()).unwrap_or(u128::MAX);
            self.rate_per_cycle = level.max(self.required_per_cycle(now_ms));
            self.next_replan_ms = now_ms.saturating_add(self.config.replan_every_ms);
        }
        let mut plan = Plan::default();
        while let Some(&(due, i)) = self.idle.first() {
            let paid = self.credit >= cycle;
            if !paid && due > now_ms {
                break;
            }
            self.credit = self.credit.saturating_sub(cycle);
            self.idle.pop_first();
            let t = &mut self.tasks[i];
            let op = Operation {
                id: OpId(self.next_op),
                task: t.id,
                kind: OpKind::Restart,
            };
            let job = &mut self.jobs[t.job];
            job.control
                .offer(op)
                .map_err(|source| FreshnessError::TaskControl {
                    job: job.id,
                    source,
                })?;
            self.next_op += 1;
            t.offered = Some(op.id);
            job.ops.insert(op.id, i);
            plan.offers.push(Offer {
                job: job.id,
                op,
                due_ms: due,
            });
        }
        let renew_by = now_ms;
        while let Some(&(at, i)) = self.renew.first() {
            if at > renew_by {
                break;
            }
            self.renew.pop_first();
            let t = &mut self.tasks[i];
            t.renewal_pending = true;
            plan.renewals.push(Renewal {
                job: self.jobs[t.job].id,
                task: t.id,
                expires_ms: t.expires_ms,
            });
        }
        for &(started, i) in &self.by_start {
            let age = now_ms.saturating_sub(started);
            if age <= self.config.max_age_ms {
                break;
            }
            let t = &self.tasks[i];
            plan.overdue.push(Overdue {
                job: self.jobs[t.job].id,
                task: t.id,
                age_ms: age,
                offered: t.offered.is_some(),
            });
        }
        Ok(plan)
    }

    /// The next TaskControl request of a job, for its controller.
    pub fn request(&mut self, job: JobId) -> Result<TaskControlRequest, FreshnessError> {
        let j = self.job(job)?;
        Ok(self.jobs[j].control.request())
    }

    /// The controller's answer for a job at `now_ms`; returns the restarts to carry out now
    /// (the job's budget allowing). See [`TaskControl::respond`].
    pub fn respond(
        &mut self,
        job: JobId,
        resp: TaskControlResponse,
        now_ms: u64,
    ) -> Result<Vec<Started>, FreshnessError> {
        self.check_time(now_ms)?;
        let j = self.job(job)?;
        self.jobs[j]
            .control
            .respond(resp, now_ms)
            .map_err(|source| FreshnessError::TaskControl { job, source })
    }

    /// A started restart finished at `now_ms`: its task runs a fresh container from now,
    /// due again one cycle later. Returns the job's waiting restarts that can start now.
    /// See [`TaskControl::complete`].
    pub fn complete(
        &mut self,
        job: JobId,
        op: OpId,
        now_ms: u64,
    ) -> Result<Vec<Started>, FreshnessError> {
        self.check_time(now_ms)?;
        let j = self.job(job)?;
        let started = self.jobs[j]
            .control
            .complete(op, now_ms)
            .map_err(|source| FreshnessError::TaskControl { job, source })?;
        if let Some(i) = self.jobs[j].ops.remove(&op) {
            let t = &mut self.tasks[i];
            self.by_start.remove(&(t.started_ms, i));
            t.started_ms = now_ms;
            t.offered = None;
            self.by_start.insert((now_ms, i));
            self.pace_job(j);
        }
        Ok(started)
    }

    /// A task's identity was renewed in place; it now expires at `expires_ms`. Its
    /// container is untouched.
    ///
    /// Refused if the job or task is unknown, or no renewal of it is pending.
    pub fn renewed(
        &mut self,
        job: JobId,
        task: TaskId,
        expires_ms: u64,
    ) -> Result<(), FreshnessError> {
        let i = self.task_index(job, task)?;
        if !self.tasks[i].renewal_pending {
            return Err(FreshnessError::NoRenewalPending { job, task });
        }
        let t = &mut self.tasks[i];
        t.renewal_pending = false;
        t.expires_ms = expires_ms;
        let at = self.renew_at(expires_ms);
        self.renew.insert((at, i));
        Ok(())
    }
}
