//! The messages of the protocol (the paper's Fig. 8a IDL, typed), and its errors.

use std::fmt;

use crate::fleet::HostId;
use crate::request::{JobId, TaskId};

/// An operation on a task, by the scheduler's id.
///
/// An id is taken from its [`offer`](super::TaskControl::offer) until its end (completion
/// or withdrawal) has been reported in a request; the machine keeps no history beyond that,
/// so a scheduler that wants ids unique forever must not reuse them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct OpId(pub u64);

impl fmt::Display for OpId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "op {}", self.0)
    }
}

/// An advance notice of maintenance, by the scheduler's id.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct NoticeId(pub u64);

impl fmt::Display for NoticeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "notice {}", self.0)
    }
}

/// The job's pacing rule (Twine §2.4: "if a job's total unavailable tasks exceed a
/// user-configured threshold, no more tasks can be restarted").
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct JobPolicy {
    /// An acked operation starts only if the job's unavailable tasks, counting its own,
    /// stay at most this many, or if its task is unavailable already (see
    /// [the budget](super#the-budget) for what counts). With 0, only operations on tasks
    /// that are already unavailable ever start.
    pub max_unavailable: u32,
}

/// What an operation does to its task.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum OpKind {
    /// Restart in place (a software release). Does not take the task off its host, so it
    /// does not handle an advance notice.
    Restart,
    /// Move to another host. Handles an advance notice once started.
    Move {
        /// Where to.
        to: HostId,
    },
    /// Stop the task; once completed it leaves the job. Handles an advance notice once
    /// started.
    Stop,
}

impl OpKind {
    /// Whether starting this operation takes the task off its host, which is what an
    /// advance notice asks for.
    pub(crate) fn leaves_host(self) -> bool {
        matches!(self, OpKind::Move { .. } | OpKind::Stop)
    }
}

/// A task operation the scheduler wants to carry out and the application must approve.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Operation {
    /// Its id.
    pub id: OpId,
    /// The task it acts on.
    pub task: TaskId,
    /// What it does.
    pub kind: OpKind,
}

/// Upcoming planned maintenance: at `deadline_ms`, the tasks still on the affected hosts
/// are stopped whatever the application says.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Notice {
    /// Its id.
    pub id: NoticeId,
    /// The tasks of the job the maintenance affects, each once.
    pub tasks: Vec<TaskId>,
    /// When the remaining tasks are force-stopped, in the caller's milliseconds.
    pub deadline_ms: u64,
    /// Why, for people.
    pub reason: String,
}

/// How an operation ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Outcome {
    /// The scheduler carried it out ([`complete`](super::TaskControl::complete)).
    Completed,
    /// A notice's deadline force-stopped its task first: the operation never started (or,
    /// for a restart already in flight, was cut short by the stop) and never will.
    Withdrawn {
        /// The notice whose deadline passed.
        notice: NoticeId,
    },
}

/// An operation that ended since the previous request.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Completion {
    /// The operation.
    pub op: Operation,
    /// How it ended.
    pub outcome: Outcome,
}

/// What the scheduler asks the job's controller (the paper's `TaskControlRequest`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TaskControlRequest {
    /// The job (`jobHandle`).
    pub job: JobId,
    /// Greater than every earlier request's; the response must carry it back.
    pub sequence: u64,
    /// Operations awaiting approval (offered, not yet acked), by id.
    pub request: Vec<Operation>,
    /// Operations that ended since the previous request, each reported once, in the order
    /// they ended.
    pub completed: Vec<Completion>,
    /// Open advance notices (deadline not yet acted on), by id, as posted.
    pub advance_notices: Vec<Notice>,
    /// The paper's `allUnhealthyTasks`, "unhealthy due to any reason": the tasks reported
    /// unhealthy and those force-stopped by a notice and not yet brought back. Sorted.
    pub unhealthy: Vec<TaskId>,
}

/// The controller's answer (the paper's `TaskControlResponse`).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct TaskControlResponse {
    /// The sequence number of the request answered.
    pub sequence: u64,
    /// The operations approved, in the order they should start. Any subset of the
    /// request's, in any order; leaving one out postpones it (there is no reject).
    pub ack: Vec<OpId>,
}

/// An approved operation the scheduler may now carry out; its task is unavailable until
/// [`complete`](super::TaskControl::complete).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Started {
    /// The operation.
    pub op: Operation,
}

/// A task force-stopped at a notice's deadline: the scheduler stops it now.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Forced {
    /// The task.
    pub task: TaskId,
    /// The notice.
    pub notice: NoticeId,
}

/// What a [`tick`](super::TaskControl::tick) asks the scheduler to do.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Tick {
    /// Tasks to stop now, deadline order (then notice id, then task id).
    pub forced: Vec<Forced>,
    /// Acked operations that could start now, in ack order.
    pub started: Vec<Started>,
}

/// Why a call was refused. Nothing changes when one is returned (except after
/// [`TaskControlError::Internal`], which reports a bug).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum TaskControlError {
    /// An offer reuses the id of an operation that is still outstanding, or whose end has
    /// not been reported yet.
    #[error("{0} is already in use")]
    DuplicateOp(OpId),
    /// An offer on a task that already has an outstanding operation (offered, acked or
    /// started, not yet ended).
    #[error("{task} already has {op} outstanding")]
    TaskBusy {
        /// The task.
        task: TaskId,
        /// Its outstanding operation.
        op: OpId,
    },
    /// A notice reuses the id of an open notice.
    #[error("{0} is already open")]
    DuplicateNotice(NoticeId),
    /// A notice lists a task twice.
    #[error("{notice} lists {task} twice")]
    NoticeTaskTwice {
        /// The notice.
        notice: NoticeId,
        /// The task.
        task: TaskId,
    },
    /// A response to a request that is not the latest one, or that was already answered.
    #[error("response to request {got}, but {}", awaited_text(*.awaited))]
    UnexpectedSequence {
        /// The sequence number of the response.
        got: u64,
        /// The request awaiting an answer, if any.
        awaited: Option<u64>,
    },
    /// No outstanding operation has this id.
    #[error("{0} is not an outstanding operation")]
    UnknownOp(OpId),
    /// An ack of an operation offered after the request answered: the controller acks only
    /// what it was shown.
    #[error("{op} was not in request {sequence}")]
    NotInRequest {
        /// The operation.
        op: OpId,
        /// The request answered.
        sequence: u64,
    },
    /// An ack of an operation withdrawn at a notice's deadline after the request was sent.
    #[error("{0} was withdrawn at a notice deadline")]
    WithdrawnOp(OpId),
    /// An ack of an operation acked in an earlier response (waiting for budget).
    #[error("{0} is already acked")]
    AlreadyAcked(OpId),
    /// An ack of an operation that has started.
    #[error("{0} has already started")]
    AlreadyStarted(OpId),
    /// A response acks the same operation twice.
    #[error("{0} is acked twice")]
    DuplicateAck(OpId),
    /// A completion of an operation that has not started.
    #[error("{0} has not started")]
    NotStarted(OpId),
    /// A call with an earlier time than a previous one.
    #[error("time went back: {now_ms} ms after {last_ms} ms")]
    TimeWentBack {
        /// The time given.
        now_ms: u64,
        /// The latest time seen.
        last_ms: u64,
    },
    /// The machine's records disagree with themselves: a bug in twine-sched, reported
    /// instead of a quietly wrong decision. The state is unspecified afterwards.
    #[error("internal error: {0} (a bug in twine-sched)")]
    Internal(Inconsistency),
}

fn awaited_text(awaited: Option<u64>) -> String {
    match awaited {
        Some(s) => format!("request {s} is the one awaiting an answer"),
        None => "no request awaits an answer".to_owned(),
    }
}

/// Which record disagrees (see [`TaskControlError::Internal`]).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum Inconsistency {
    /// The queue of acked operations holds one with no acked record.
    #[error("{0} is queued as acked but not recorded as acked")]
    QueuedNotAcked(OpId),
    /// A task is marked busy with an operation that has no record.
    #[error("{task} is busy with {op}, which has no record")]
    BusyWithoutOp {
        /// The task.
        task: TaskId,
        /// The operation it is marked with.
        op: OpId,
    },
}
