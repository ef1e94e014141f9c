//! TaskControl (Twine §2.5, Fig. 8): the application decides which task operations
//! proceed and which wait, within a max-unavailable budget, while maintenance announced
//! by advance notices cannot be blocked past its deadline.
//!
//! [`TaskControl`] is the scheduler's side for one job, a state machine over plain data:
//! no I/O, no threads, no clock. Time is the caller's, in milliseconds (`now_ms: u64`,
//! `deadline_ms: u64`), and must not go back. [`ReplicatedService`] is a reference
//! controller, the application's side, for a sharded service with replicas and leaders.
//!
//! ```
//! use twine_sched::{JobId, TaskId};
//! use twine_sched::taskcontrol::*;
//!
//! let mut tc = TaskControl::new(JobId(7), JobPolicy { max_unavailable: 2 });
//! // One shard on three tasks; task 1 leads it.
//! let shard = Shard { id: ShardId(0), replicas: vec![TaskId(1), TaskId(2), TaskId(3)], leader: TaskId(1) };
//! let mut service = ReplicatedService::new(vec![shard])?;
//! for t in 1..=3 {
//!     tc.offer(Operation { id: OpId(t), task: TaskId(t), kind: OpKind::Restart })?;
//! }
//! // The scheduler asks; the controller approves one follower (one replica down at most).
//! let req = tc.request();
//! let resp = service.process(&req);
//! assert_eq!(resp.ack, [OpId(2)]);
//! let started = tc.respond(resp, 1_000)?;
//! assert_eq!(started[0].op.task, TaskId(2));
//! // The restart is done; the next request reports it, and the other follower goes.
//! tc.complete(OpId(2), 5_000)?;
//! let req = tc.request();
//! assert_eq!(req.completed[0].outcome, Outcome::Completed);
//! assert_eq!(service.process(&req).ack, [OpId(3)]);
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```
//!
//! # The life of an operation
//!
//! *offered* ([`TaskControl::offer`]) → listed in each [`request`](TaskControl::request)
//! until acked → *acked* ([`respond`](TaskControl::respond)) → *started* when the budget
//! allows (returned by `respond`, [`complete`](TaskControl::complete) or
//! [`tick`](TaskControl::tick)) → *ended*: completed by the scheduler, or withdrawn at a
//! notice's deadline. Each end is reported once, in the next request's `completed`.
//! A task has at most one outstanding operation.
//!
//! # The budget
//!
//! A task is *unavailable* while an operation on it has started and not completed (a
//! [`OpKind::Stop`] counts until completed, then its task leaves the job), while it is
//! reported unhealthy ([`set_unhealthy`](TaskControl::set_unhealthy)), and while it is
//! force-stopped by a notice. Each task counts once. An acked operation starts only if its
//! task is already unavailable (restarting a sick task makes nothing worse) or if one more
//! unavailable task stays within [`JobPolicy::max_unavailable`]; otherwise it waits, and
//! waiting operations start in ack order as soon as the budget frees, at the next
//! `respond`, `complete` or `tick` (not at `set_unhealthy`, which takes no time). Reports of
//! unhealthy tasks are observations and may take the count over the budget; the machine
//! then starts nothing that adds to it.
//!
//! # Advance notices
//!
//! A [`Notice`] names tasks and a deadline. Before it, the controller may ack the Move or
//! Stop operations the scheduler offers for them, or do nothing. A task is *handled* once a
//! Move or Stop on it starts (or was in flight when the notice was posted). At the first
//! `tick` at or after the deadline, every task of the notice not handled and not already
//! force-stopped is force-stopped ([`Forced`]): its outstanding operation is withdrawn
//! (reported with [`Outcome::Withdrawn`]; a restart in flight is cut short), and from the
//! deadline on, no `respond` or `complete` starts an operation on it, even if acked.
//! Forced stops ignore the budget (maintenance cannot be blocked forever) but count against
//! it afterwards. A force-stopped task stays unavailable, listed in requests' `unhealthy`,
//! until an operation on it completes (the scheduler offers a Restart or Move to bring it
//! back after maintenance, and the controller approves it as any other).
//!
//! # Errors
//!
//! Every refused call returns a [`TaskControlError`] and changes nothing. Timed calls check
//! the time first; `respond` then checks the sequence, then each ack in order.
//!
//! # Where things are
//!
//! This file holds the machine and the protocol's round trip; `budget.rs` what counts as
//! unavailable and the start of acked operations; `notices.rs` advance notices and their
//! deadlines; `protocol.rs` the messages and errors; `controller.rs` the reference
//! controller.

mod budget;
mod controller;
mod notices;
mod protocol;
#[cfg(test)]
mod tests;

use std::collections::{BTreeMap, BTreeSet, VecDeque};

pub use controller::{ReplicatedService, Shard, ShardId, ShardLayoutError};
pub use protocol::{
    Completion, Forced, Inconsistency, JobPolicy, Notice, NoticeId, OpId, OpKind, Operation,
    Outcome, Started, TaskControlError, TaskControlRequest, TaskControlResponse, Tick,
};

use crate::request::{JobId, TaskId};

/// The scheduler's side of TaskControl for one job (see the [module docs](self)).
#[derive(Debug, Clone)]
pub struct TaskControl {
    job: JobId,
    policy: JobPolicy,
    /// Outstanding operations (offered, acked or started).
    ops: BTreeMap<OpId, Live>,
    /// The outstanding operation of each task that has one.
    busy: BTreeMap<TaskId, OpId>,
    /// Acked operations waiting for budget, in ack order.
    queue: VecDeque<OpId>,
    unhealthy: BTreeSet<TaskId>,
    /// Force-stopped tasks not yet brought back, with the notice that stopped them.
    down: BTreeMap<TaskId, NoticeId>,
    /// Notices whose deadline has not been acted on.
    notices: BTreeMap<NoticeId, OpenNotice>,
    /// Ends not yet reported in a request.
    ended: Vec<Completion>,
    /// The latest request's sequence number (0 before the first).
    sequence: u64,
    awaiting: Option<Awaiting>,
    last_ms: u64,
}

#[derive(Debug, Clone, Copy)]
struct Live {
    op: Operation,
    state: State,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    Offered,
    Acked,
    Started,
}

#[derive(Debug, Clone)]
struct OpenNotice {
    notice: Notice,
    /// Tasks not handled yet.
    remaining: BTreeSet<TaskId>,
}

/// The latest request, while it awaits its answer.
#[derive(Debug, Clone)]
struct Awaiting {
    sequence: u64,
    /// The operations it listed.
    listed: BTreeSet<OpId>,
}

impl TaskControl {
    /// A job with no operations, notices or unhealthy tasks, at time 0.
    pub fn new(job: JobId, policy: JobPolicy) -> Self {
        TaskControl {
            job,
            policy,
            ops: BTreeMap::new(),
            busy: BTreeMap::new(),
            queue: VecDeque::new(),
            unhealthy: BTreeSet::new(),
            down: BTreeMap::new(),
            notices: BTreeMap::new(),
            ended: Vec::new(),
            sequence: 0,
            awaiting: None,
            last_ms: 0,
        }
    }

    /// The job.
    pub fn job(&self) -> JobId {
        self.job
    }

    /// Offers an operation for approval; it is listed in requests until acked.
    ///
    /// Refused if its id is in use ([`TaskControlError::DuplicateOp`]) or its task already
    /// has an outstanding operation ([`TaskControlError::TaskBusy`]).
    pub fn offer(&mut self, op: Operation) -> Result<(), TaskControlError> {
        if self.ops.contains_key(&op.id) || self.ended.iter().any(|c| c.op.id == op.id) {
            return Err(TaskControlError::DuplicateOp(op.id));
        }
        if let Some(&other) = self.busy.get(&op.task) {
            return Err(TaskControlError::TaskBusy {
                task: op.task,
                op: other,
            });
        }
        self.ops.insert(
            op.id,
            Live {
                op,
                state: State::Offered,
            },
        );
        self.busy.insert(op.task, op.id);
        Ok(())
    }

    /// Reports a task unhealthy (or healthy again). Unhealthy tasks count against the
    /// budget and are listed in requests. Operations waiting for budget freed by this start
    /// at the next `respond`, `complete` or `tick`.
    pub fn set_unhealthy(&mut self, task: TaskId, unhealthy: bool) {
        if unhealthy {
            self.unhealthy.insert(task);
        } else {
            self.unhealthy.remove(&task);
        }
    }

    /// The next request to the job's controller. Its sequence number is one more than the
    /// previous one's; only a response to it is accepted from now on. It carries the
    /// operations ended since the previous request, which are then forgotten.
    pub fn request(&mut self) -> TaskControlRequest {
        self.sequence += 1;
        let request: Vec<Operation> = self
            .ops
            .values()
            .filter(|l| l.state == State::Offered)
            .map(|l| l.op)
            .collect();
        self.awaiting = Some(Awaiting {
            sequence: self.sequence,
            listed: request.iter().map(|op| op.id).collect(),
        });
        let unhealthy: BTreeSet<TaskId> = self
            .unhealthy
            .iter()
            .chain(self.down.keys())
            .copied()
            .collect();
        TaskControlRequest {
            job: self.job,
            sequence: self.sequence,
            request,
            completed: std::mem::take(&mut self.ended),
            advance_notices: self.notices.values().map(|n| n.notice.clone()).collect(),
            unhealthy: unhealthy.into_iter().collect(),
        }
    }

    /// Takes the controller's answer to the latest request at `now_ms`: the acked
    /// operations queue up in ack order, and those the budget allows start. Returns the
    /// operations to carry out now (possibly including ones acked earlier).
    ///
    /// Refused, changing nothing, if time went back, the sequence is not the one awaiting an
    /// answer (each request is answered at most once), or any ack is not an operation of
    /// that request still awaiting approval (the error names the first such op).
    pub fn respond(
        &mut self,
        resp: TaskControlResponse,
        now_ms: u64,
    ) -> Result<Vec<Started>, TaskControlError> {
        self.check_time(now_ms)?;
        let awaiting = match &self.awaiting {
            Some(a) if a.sequence == resp.sequence => a,
            other => {
                return Err(TaskControlError::UnexpectedSequence {
                    got: resp.sequence,
                    awaited: other.as_ref().map(|a| a.sequence),
                });
            }
        };
        let mut seen = BTreeSet::new();
        for &id in &resp.ack {
            if !seen.insert(id) {
                return Err(TaskControlError::DuplicateAck(id));
            }
            match self.ops.get(&id).map(|l| l.state) {
                None if awaiting.listed.contains(&id) => {
                    return Err(TaskControlError::WithdrawnOp(id));
                }
                None => return Err(TaskControlError::UnknownOp(id)),
                Some(State::Acked) => return Err(TaskControlError::AlreadyAcked(id)),
                Some(State::Started) => return Err(TaskControlError::AlreadyStarted(id)),
                Some(State::Offered) if !awaiting.listed.contains(&id) => {
                    return Err(TaskControlError::NotInRequest {
                        op: id,
                        sequence: awaiting.sequence,
                    });
                }
                Some(State::Offered) => {}
            }
        }
        self.last_ms = now_ms;
        self.awaiting = None;
        for id in resp.ack {
            if let Some(live) = self.ops.get_mut(&id) {
                live.state = State::Acked;
                self.queue.push_back(id);
            }
        }
        self.start_waiting(now_ms)
    }

    /// The scheduler carried out a started operation at `now_ms`: its task is available
    /// again (a Stop's task leaves the job, and its unhealthy mark goes with it), and the
    /// end is reported in the next request. Returns the waiting operations that can start
    /// now.
    ///
    /// Refused if time went back, the operation is not outstanding
    /// ([`TaskControlError::UnknownOp`]: never offered, already ended, or withdrawn) or has
    /// not started ([`TaskControlError::NotStarted`]).
    pub fn complete(&mut self, op: OpId, now_ms: u64) -> Result<Vec<Started>, TaskControlError> {
        self.check_time(now_ms)?;
        let live = match self.ops.get(&op) {
            None => return Err(TaskControlError::UnknownOp(op)),
            Some(l) if l.state != State::Started => {
                return Err(TaskControlError::NotStarted(op));
            }
            Some(&l) => l,
        };
        self.last_ms = now_ms;
        self.ops.remove(&op);
        let task = live.op.task;
        self.busy.remove(&task);
        self.down.remove(&task);
        if live.op.kind == OpKind::Stop {
            self.unhealthy.remove(&task);
        }
        self.ended.push(Completion {
            op: live.op,
            outcome: Outcome::Completed,
        });
        self.start_waiting(now_ms)
    }

    fn check_time(&self, now_ms: u64) -> Result<(), TaskControlError> {
        if now_ms < self.last_ms {
            return Err(TaskControlError::TimeWentBack {
                now_ms,
                last_ms: self.last_ms,
            });
        }
        Ok(())
    }
}
