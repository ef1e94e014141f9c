//! The trailing report: every host not updated, and why.

use crate::allocator::Allocator;
use crate::fleet::{FaultLevel, HostId};
use crate::request::JobId;

use super::RolloutError;
use super::runner::{Deferral, HostStep, Runner, Status};

/// Why a host is not updated (yet).
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Blocker {
    /// Its wave has not started.
    NotReached {
        /// The wave.
        wave: usize,
    },
    /// Queued in a started wave; its rack's turn has not come.
    Queued {
        /// The wave.
        wave: usize,
    },
    /// Queued, and a fault domain of its is at its limit of hosts in flight.
    FaultDomainLimit {
        /// The level whose limit holds it.
        level: FaultLevel,
        /// The domain (full path).
        domain: String,
    },
    /// Draining: a job has not moved its tasks off (it has not consented yet); at the
    /// deadline they are stopped.
    Veto {
        /// The job (the lowest id among those with tasks left).
        job: JobId,
        /// The notice's deadline, in the caller's milliseconds.
        deadline_ms: u64,
    },
    /// The deadline passed; stopping the job's tasks here waits for its max-unavailable
    /// budget (its tasks stopped on other hosts to run again).
    JobBudget {
        /// The job.
        job: JobId,
    },
    /// A step is under way.
    InProgress {
        /// The step.
        step: HostStep,
    },
    /// The host was down when its turn came; it is retried.
    HostDown,
    /// Someone else (the profiles side, the ReBalancer, an operator) held the host
    /// cordoned when its turn came; it is retried.
    HeldElsewhere,
    /// It was updated but failed its health check; it stays out of service.
    FailedHealthCheck,
    /// A failed gate halted the rollout before this host was done.
    Halted {
        /// The wave whose gate failed.
        wave: usize,
    },
}

impl Blocker {
    /// The job it names, if any.
    pub fn job(&self) -> Option<JobId> {
        match self {
            Blocker::Veto { job, .. } | Blocker::JobBudget { job } => Some(*job),
            _ => None,
        }
    }

    /// A short stable name (`veto`, `host_down`, ...), for JSON and counts.
    pub fn name(&self) -> &'static str {
        match self {
            Blocker::NotReached { .. } => "not_reached",
            Blocker::Queued { .. } => "queued",
            Blocker::FaultDomainLimit { .. } => "fault_domain_limit",
            Blocker::Veto { .. } => "veto",
            Blocker::JobBudget { .. } => "job_budget",
            Blocker::InProgress { .. } => "in_progress",
            Blocker::HostDown => "host_down",
            Blocker::HeldElsewhere => "held_elsewhere",
            Blocker::FailedHealthCheck => "failed_health_check",
            Blocker::Halted { .. } => "halted",
        }
    }
}

/// One host not updated.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Trailing {
    /// The host.
    pub host: HostId,
    /// Its wave.
    pub wave: usize,
    /// Why.
    pub blocker: Blocker,
}

impl Runner {
    /// Every host not updated, by host id, with why.
    pub fn trailing(&self, alloc: &Allocator) -> Result<Vec<Trailing>, RolloutError> {
        let halted_at = match self.state {
            super::runner::RolloutState::Halted { wave } => Some(wave),
            _ => None,
        };
        let mut out = Vec::new();
        for (i, &s) in self.status.iter().enumerate() {
            let host =
                HostId(u32::try_from(i).map_err(|_| RolloutError::UnknownHost(HostId(u32::MAX)))?);
            let wave = self.wave_of[i] as usize;
            let blocker = match s {
                Status::Updated => continue,
                Status::Waiting => Blocker::NotReached { wave },
                Status::Queued | Status::Resuming => match self.full_level(host) {
                    Some(level) => Blocker::FaultDomainLimit {
                        level,
                        domain: alloc.host(host)?.domain(level).to_owned(),
                    },
                    None => Blocker::Queued { wave },
                },
                Status::Deferred(Deferral::Down) => Blocker::HostDown,
                Status::Deferred(Deferral::Elsewhere) => Blocker::HeldElsewhere,
                Status::Draining { deadline_ms, .. } => {
                    if self.stop_waiting.contains(&host) {
                        match self.job_short_of_budget(alloc, host)? {
                            Some(job) => Blocker::JobBudget { job },
                            None => Blocker::InProgress {
                                step: HostStep::Update,
                            },
                        }
                    } else {
                        let mut jobs = Vec::new();
                        for &t in alloc.host(host)?.tasks() {
                            jobs.push(alloc.task_view(t)?.job);
                        }
                        match jobs.into_iter().min() {
                            Some(job) => Blocker::Veto { job, deadline_ms },
                            None => Blocker::InProgress {
                                step: HostStep::Update,
                            },
                        }
                    }
                }
                Status::Doing(step) => Blocker::InProgress { step },
                Status::Failed => Blocker::FailedHealthCheck,
                Status::Halted => Blocker::Halted {
                    wave: halted_at.unwrap_or(wave),
                },
            };
            out.push(Trailing {
                host,
                wave,
                blocker,
            });
        }
        Ok(out)
    }
}
