//! Draining a host with the applications' consent, then handing it to the profiles side:
//! the flow behind maintenance and host-profile switches, built on the allocator's
//! checked moves and [TaskControl](crate::taskcontrol).
//!
//! [`Drain::start`] cordons the host (it takes no new task), posts an advance notice to
//! every job with tasks on it (the deadline after which the rest are stopped), and offers
//! each task a move to the best host of its entitlement, paced by a rate limit. The caller
//! then drives the flow the way a scheduler drives TaskControl:
//!
//! - [`Drain::requests`]: one [`TaskControlRequest`] per job, for its controller;
//! - [`Drain::respond`]: the controller's answer; approved moves are carried out
//!   at once through [`Allocator::move_task`], within the job's max-unavailable budget;
//! - [`Drain::tick`]: time passes; at the deadline the tasks still on the host are
//!   stopped (freed from the allocator); moves that found no room are offered again; once
//!   the host is empty, it goes to the profiles side through [`ProfileSide`], and the
//!   allocator records the switch and takes the host back up.
//!
//! Nothing here does I/O: the profiles side is the caller's (`twine-profiles` drains,
//! applies, reboots and verifies; a test passes a recorder). A switch that fails leaves
//! the host cordoned with its old profile, and the error says which host and profile.
//!
//! ```
//! use twine_sched::*;
//! use twine_sched::drain::{Drain, DrainSettings, Phase, ProfileSide};
//!
//! struct Recorder(Vec<(HostId, String)>);
//! impl ProfileSide for Recorder {
//!     type Error = std::convert::Infallible;
//!     fn switch(&mut self, host: HostId, profile: &str) -> Result<(), Self::Error> {
//!         self.0.push((host, profile.to_owned()));
//!         Ok(())
//!     }
//! }
//!
//! let mut alloc = Allocator::new(AllocatorConfig::default());
//! let a = alloc.add_host(&HostSpec::new(Resources::new(8_000, 8_000)))?;
//! let b = alloc.add_host(&HostSpec::new(Resources::new(8_000, 8_000)))?;
//! let ent = alloc.add_entitlement("web", Quota::Units(Resources::new(64_000, 64_000)))?;
//! let task = Demand { resources: Resources::new(1_000, 1_000), gpu: GpuDemand::None };
//! alloc.apply(&Request::new(ent, JobId(1)).allocate(TaskId(1), task))?;
//! alloc.apply(&Request::new(ent, JobId(1)).allocate(TaskId(2), task))?;
//! assert_eq!(alloc.task(TaskId(1))?.0, a);
//!
//! let settings = DrainSettings::new(60_000, "drain for hugepages").profile("hugepages-1g");
//! let mut drain = Drain::start(&mut alloc, a, settings, 0)?;
//! let mut profiles = Recorder(Vec::new());
//! // The job's controller approves everything it is asked (a real one would pace itself).
//! while drain.phase() != Phase::Done {
//!     for req in drain.requests() {
//!         let ack = req.request.iter().map(|op| op.id).collect();
//!         let resp = taskcontrol::TaskControlResponse { sequence: req.sequence, ack };
//!         drain.respond(&mut alloc, req.job, resp, 1_000)?;
//!     }
//!     drain.tick(&mut alloc, &mut profiles, 1_000)?;
//! }
//! assert_eq!(alloc.task(TaskId(1))?.0, b);
//! assert_eq!(profiles.0, [(a, "hugepages-1g".to_owned())]);
//! assert_eq!(alloc.host(a)?.profile(), "hugepages-1g");
//! assert_eq!(alloc.host(a)?.state(), HostState::Up);
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

use std::collections::{BTreeMap, BTreeSet};

use crate::allocator::{AllocError, Allocator, Moved};
use crate::fleet::{HostId, HostState, Owner};
use crate::rebalance::RateLimit;
use crate::rebalance::budget::TokenBucket;
use crate::request::{JobId, Request, TaskId};
use crate::taskcontrol::{
    JobPolicy, Notice, NoticeId, OpId, OpKind, Operation, Started, TaskControl, TaskControlError,
    TaskControlRequest, TaskControlResponse,
};

/// The profiles side: switches an empty host, out of every entitlement, to a host
/// profile (in twine, `twine-profiles`: drain, apply, reboot if needed, verify).
pub trait ProfileSide {
    /// Why a switch failed.
    type Error: std::error::Error + Send + Sync + 'static;
    /// Switches `host` to `profile`; on error the host keeps its old profile.
    fn switch(&mut self, host: HostId, profile: &str) -> Result<(), Self::Error>;
}

/// How a drain runs.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct DrainSettings {
    /// When the tasks still on the host are stopped, in the caller's milliseconds.
    pub deadline_ms: u64,
    /// Why, for the applications (the notice's reason).
    pub reason: String,
    /// The host profile to switch to once the host is empty; `None` to only drain.
    pub profile: Option<String>,
    /// Tasks of each job that may be unavailable at once (default 1).
    pub max_unavailable: u32,
    /// Moves offered over time, at most; `None` for no limit.
    pub rate_limit: Option<RateLimit>,
    /// Keep the host cordoned once empty (and switched, if a profile was asked for),
    /// until [`Drain::release`]: for work that takes the host away for a while (an
    /// update and a reboot). Otherwise it comes back up at once.
    pub hold: bool,
}

impl DrainSettings {
    /// A drain with deadline `deadline_ms`, one task of each job unavailable at a time,
    /// no profile switch and no rate limit.
    pub fn new(deadline_ms: u64, reason: &str) -> DrainSettings {
        DrainSettings {
            deadline_ms,
            reason: reason.to_owned(),
            profile: None,
            max_unavailable: 1,
            rate_limit: None,
            hold: false,
        }
    }
    /// Keeps the host cordoned once empty, until [`Drain::release`].
    pub fn hold(mut self) -> DrainSettings {
        self.hold = true;
        self
    }
    /// Switches the host to `profile` once empty.
    pub fn profile(mut self, profile: &str) -> DrainSettings {
        self.profile = Some(profile.to_owned());
        self
    }
    /// Sets the tasks of each job that may be unavailable at once.
    pub fn max_unavailable(mut self, n: u32) -> DrainSettings {
        self.max_unavailable = n;
        self
    }
    /// Paces the moves offered.
    pub fn rate_limit(mut self, limit: RateLimit) -> DrainSettings {
        self.rate_limit = Some(limit);
        self
    }
}

/// Where a drain is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Phase {
    /// Tasks are still on the host.
    Draining {
        /// How many.
        tasks_left: usize,
    },
    /// The host is empty (and switched, if asked) and held cordoned until
    /// [`Drain::release`].
    Held,
    /// The host is empty, switched if a profile was asked for, and up again.
    Done,
}

/// Something the flow did, for the caller to act on (start and stop the tasks for real).
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum DrainEvent {
    /// A task moved off the host, approved by its job.
    Moved(Moved),
    /// The deadline passed and the task was stopped (freed from the allocator).
    Stopped {
        /// The task.
        task: TaskId,
        /// Its job.
        job: JobId,
    },
    /// An approved move found no host with room; it is offered again at a later tick.
    NoRoom {
        /// The task.
        task: TaskId,
    },
    /// The profiles side switched the host.
    Switched {
        /// The new profile.
        profile: String,
    },
    /// The host is up again and takes tasks.
    Up,
}

/// What went wrong in a drain. The allocator and the flow are unchanged by a refused
/// call, except that a failed profile switch leaves the host cordoned.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum DrainError {
    /// The allocator refused a call (an internal error there is a bug).
    #[error(transparent)]
    Alloc(#[from] AllocError),
    /// TaskControl refused a call (for example a stale response).
    #[error("{job}: {source}")]
    TaskControl {
        /// The job.
        job: JobId,
        /// What TaskControl said.
        source: TaskControlError,
    },
    /// A response for a job with no task on the host.
    #[error("{0} has no task on the drained host")]
    UnknownJob(JobId),
    /// The host is not up (already draining or down).
    #[error("{host} is {state:?}, not up; only an up host starts a drain")]
    NotUp {
        /// The host.
        host: HostId,
        /// Its state.
        state: HostState,
    },
    /// A deadline not after the start.
    #[error("drain deadline {deadline_ms} ms is not after the start at {now_ms} ms")]
    DeadlinePassed {
        /// The deadline.
        deadline_ms: u64,
        /// The start.
        now_ms: u64,
    },
    /// The rate limit cannot work.
    #[error(transparent)]
    RateLimit(#[from] crate::rebalance::RebalanceError),
    /// The profiles side failed; the host stays cordoned with its old profile.
    #[error("switching {host} to profile {profile:?}: {source}")]
    Profile {
        /// The host.
        host: HostId,
        /// The profile asked for.
        profile: String,
        /// What the profiles side said.
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    /// The flow's books disagree with TaskControl's: a bug in twine-sched.
    #[error("drain of {host}: {what} (a bug in twine-sched)")]
    Internal {
        /// The host.
        host: HostId,
        /// What disagrees.
        what: String,
    },
}

/// A drain in progress (see the [module docs](self)).
#[derive(Debug)]
pub struct Drain {
    host: HostId,
    settings: DrainSettings,
    jobs: BTreeMap<JobId, TaskControl>,
    /// Move operations outstanding, by id: the task and its job.
    ops: BTreeMap<OpId, (JobId, TaskId)>,
    next_op: u64,
    bucket: Option<TokenBucket>,
    /// Tasks on the host after the last call.
    left: usize,
    /// Empty, switched if asked, and held cordoned (see [`DrainSettings::hold`]).
    held: bool,
    done: bool,
}

impl Drain {
    /// Cordons `host`, posts the notice to each job on it and offers the first moves.
    pub fn start(
        alloc: &mut Allocator,
        host: HostId,
        settings: DrainSettings,
        now_ms: u64,
    ) -> Result<Drain, DrainError> {
        let view = alloc.host(host)?;
        if view.state() != HostState::Up {
            return Err(DrainError::NotUp {
                host,
                state: view.state(),
            });
        }
        if settings.deadline_ms <= now_ms {
            return Err(DrainError::DeadlinePassed {
                deadline_ms: settings.deadline_ms,
                now_ms,
            });
        }
        let mut bucket = settings.rate_limit.map(TokenBucket::new).transpose()?;
        if let Some(b) = &mut bucket {
            b.refill(now_ms);
        }
        let mut by_job: BTreeMap<JobId, Vec<TaskId>> = BTreeMap::new();
        for &t in view.tasks() {
            by_job.entry(alloc.task_view(t)?.job).or_default().push(t);
        }
        let mut jobs = BTreeMap::new();
        for (job, mut tasks) in by_job {
            tasks.sort_unstable();
            let mut tc = TaskControl::new(
                job,
                JobPolicy {
                    max_unavailable: settings.max_unavailable,
                },
            );
            tc.notice(Notice {
                id: NoticeId(u64::from(host.0)),
                tasks,
                deadline_ms: settings.deadline_ms,
                reason: settings.reason.clone(),
            })
            .map_err(|source| DrainError::TaskControl { job, source })?;
            jobs.insert(job, tc);
        }
        alloc.cordon(host)?;
        let mut drain = Drain {
            host,
            settings,
            jobs,
            ops: BTreeMap::new(),
            next_op: 0,
            bucket,
            left: 0,
            held: false,
            done: false,
        };
        drain.offer_moves(alloc)?;
        drain.count_left(alloc)?;
        Ok(drain)
    }

    /// The host being drained.
    pub fn host(&self) -> HostId {
        self.host
    }

    /// Where the drain is.
    pub fn phase(&self) -> Phase {
        if self.done {
            Phase::Done
        } else if self.held {
            Phase::Held
        } else {
            Phase::Draining {
                tasks_left: self.left,
            }
        }
    }

    fn count_left(&mut self, alloc: &Allocator) -> Result<(), DrainError> {
        self.left = alloc.host(self.host)?.tasks().len();
        Ok(())
    }

    /// One request per job that still has a task on the host, for its controller.
    pub fn requests(&mut self) -> Vec<TaskControlRequest> {
        self.jobs.values_mut().map(TaskControl::request).collect()
    }

    /// A job controller's answer: approved moves start within the job's budget and are
    /// carried out at once.
    pub fn respond(
        &mut self,
        alloc: &mut Allocator,
        job: JobId,
        resp: TaskControlResponse,
        now_ms: u64,
    ) -> Result<Vec<DrainEvent>, DrainError> {
        let tc = self.jobs.get_mut(&job).ok_or(DrainError::UnknownJob(job))?;
        let started = tc
            .respond(resp, now_ms)
            .map_err(|source| DrainError::TaskControl { job, source })?;
        let mut events = Vec::new();
        self.carry_out(alloc, job, started, now_ms, &mut events)?;
        self.count_left(alloc)?;
        Ok(events)
    }

    /// Time passes: stops what the deadline covers, offers moves again, and once the
    /// host is empty switches it and takes it back up.
    pub fn tick<P: ProfileSide>(
        &mut self,
        alloc: &mut Allocator,
        profiles: &mut P,
        now_ms: u64,
    ) -> Result<Vec<DrainEvent>, DrainError> {
        let mut events = Vec::new();
        if self.done || self.held {
            return Ok(events);
        }
        if let Some(b) = &mut self.bucket {
            b.refill(now_ms);
        }
        let jobs: Vec<JobId> = self.jobs.keys().copied().collect();
        for job in jobs {
            let tick = self
                .jobs
                .get_mut(&job)
                .ok_or(DrainError::UnknownJob(job))?
                .tick(now_ms)
                .map_err(|source| DrainError::TaskControl { job, source })?;
            for f in tick.forced {
                self.ops.retain(|_, (_, t)| *t != f.task);
                if self.on_host(alloc, f.task)? {
                    let ent = alloc.job_entitlement(self.host, job)?;
                    alloc.apply(&Request::new(ent, job).free(f.task))?;
                    events.push(DrainEvent::Stopped { task: f.task, job });
                }
            }
            self.carry_out(alloc, job, tick.started, now_ms, &mut events)?;
        }
        self.offer_moves(alloc)?;
        let empty = alloc.host(self.host)?.tasks().is_empty();
        self.count_left(alloc)?;
        if empty {
            self.finish(alloc, profiles, &mut events)?;
        }
        Ok(events)
    }

    fn on_host(&self, alloc: &Allocator, task: TaskId) -> Result<bool, DrainError> {
        Ok(alloc.host(self.host)?.tasks().contains(&task))
    }

    /// Carries out started moves; each completion may start more of the job's.
    fn carry_out(
        &mut self,
        alloc: &mut Allocator,
        job: JobId,
        mut started: Vec<Started>,
        now_ms: u64,
        events: &mut Vec<DrainEvent>,
    ) -> Result<(), DrainError> {
        while let Some(s) = started.pop() {
            let op = s.op;
            let OpKind::Move { to } = op.kind else {
                return Err(
                    self.internal(format!("{} started, but the flow offers only moves", op.id))
                );
            };
            if self.ops.remove(&op.id).is_none() {
                return Err(self.internal(format!("{} started but was not offered", op.id)));
            }
            let moved = match alloc.move_task(op.task, to) {
                Ok(r) => Some(r.moved),
                // The fleet changed since the offer: the best host now, if any.
                Err(AllocError::MoveRefused { .. }) => {
                    let host = self.host;
                    match alloc.move_target(op.task, true, &|h| h == host)? {
                        Some(other) => Some(alloc.move_task(op.task, other)?.moved),
                        None => None,
                    }
                }
                Err(e) => return Err(e.into()),
            };
            match moved {
                Some(m) => events.push(DrainEvent::Moved(m)),
                None => events.push(DrainEvent::NoRoom { task: op.task }),
            }
            // Done either way: the task is available again, moved or where it was.
            let more = self
                .jobs
                .get_mut(&job)
                .ok_or(DrainError::UnknownJob(job))?
                .complete(op.id, now_ms)
                .map_err(|source| DrainError::TaskControl { job, source })?;
            started.extend(more);
        }
        Ok(())
    }

    /// Offers a move to every task on the host without one, while the rate limit allows.
    fn offer_moves(&mut self, alloc: &Allocator) -> Result<(), DrainError> {
        let busy: BTreeSet<TaskId> = self.ops.values().map(|(_, t)| *t).collect();
        let mut tasks: Vec<TaskId> = alloc
            .host(self.host)?
            .tasks()
            .iter()
            .copied()
            .filter(|t| !busy.contains(t))
            .collect();
        tasks.sort_unstable();
        for task in tasks {
            if let Some(b) = &self.bucket
                && b.whole() == 0
            {
                break;
            }
            let host = self.host;
            let Some(to) = alloc.move_target(task, true, &|h| h == host)? else {
                continue;
            };
            let job = alloc.task_view(task)?.job;
            let id = OpId(self.next_op);
            self.next_op = self
                .next_op
                .checked_add(1)
                .ok_or_else(|| self.internal("operation ids ran out".to_owned()))?;
            let tc = self.jobs.get_mut(&job).ok_or(DrainError::UnknownJob(job))?;
            match tc.offer(Operation {
                id,
                task,
                kind: OpKind::Move { to },
            }) {
                Ok(()) => {}
                // A task force-stopped or already in flight: nothing to offer.
                Err(TaskControlError::TaskBusy { .. }) => continue,
                Err(source) => return Err(DrainError::TaskControl { job, source }),
            }
            if let Some(b) = &mut self.bucket
                && !b.take_one()
            {
                return Err(self.internal("the rate limit was overdrawn".to_owned()));
            }
            self.ops.insert(id, (job, task));
        }
        Ok(())
    }

    /// Takes a held host back up (it takes tasks again); the drain is done.
    pub fn release(&mut self, alloc: &mut Allocator) -> Result<Vec<DrainEvent>, DrainError> {
        if !self.held {
            return Err(self.internal("release of a drain that is not held".to_owned()));
        }
        alloc.host_up(self.host)?;
        self.held = false;
        self.done = true;
        Ok(vec![DrainEvent::Up])
    }

    fn finish<P: ProfileSide>(
        &mut self,
        alloc: &mut Allocator,
        profiles: &mut P,
        events: &mut Vec<DrainEvent>,
    ) -> Result<(), DrainError> {
        if alloc.host(self.host)?.owner() != Owner::FreePool {
            return Err(
                self.internal("an empty drained host is still in an entitlement".to_owned())
            );
        }
        if let Some(profile) = self.settings.profile.clone() {
            profiles
                .switch(self.host, &profile)
                .map_err(|e| DrainError::Profile {
                    host: self.host,
                    profile: profile.clone(),
                    source: Box::new(e),
                })?;
            alloc.apply_profile_switch(self.host, &profile)?;
            events.push(DrainEvent::Switched { profile });
        }
        if self.settings.hold {
            self.held = true;
            return Ok(());
        }
        alloc.host_up(self.host)?;
        events.push(DrainEvent::Up);
        self.done = true;
        Ok(())
    }

    fn internal(&self, what: String) -> DrainError {
        DrainError::Internal {
            host: self.host,
            what,
        }
    }
}
