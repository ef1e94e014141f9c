//! What the allocator's calls answer: the outcomes and the errors.

use crate::entitlement::{EntitlementId, QuotaExcess};
use crate::explain::{ProfileSwitch, Unplaced, UnplacedReason};
use crate::fleet::HostId;
use crate::request::{JobId, TaskId};
use crate::resources::{GpuDemand, GpuGrant};

/// What went wrong with a call; the allocator is unchanged when one is returned (except
/// after [`AllocError::Internal`], which reports a bug).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum AllocError {
    /// No host has this id.
    #[error("unknown {0}")]
    UnknownHost(HostId),
    /// No placed task has this id.
    #[error("unknown {0}")]
    UnknownTask(TaskId),
    /// No entitlement has this id.
    #[error("unknown {0}")]
    UnknownEntitlement(EntitlementId),
    /// A task to allocate is already placed, or listed twice.
    #[error("{0} is already placed or listed twice")]
    DuplicateTask(TaskId),
    /// A task is listed twice among the tasks to free.
    #[error("{0} is listed twice among the tasks to free")]
    FreedTwice(TaskId),
    /// A task to free belongs to another job.
    #[error("{task} belongs to {owner}, not {job}")]
    TaskOfOtherJob {
        /// The task.
        task: TaskId,
        /// Its job.
        owner: JobId,
        /// The job of the request.
        job: JobId,
    },
    /// The job already runs in another entitlement.
    #[error("{job} runs in {current}, not {requested}")]
    JobInOtherEntitlement {
        /// The job.
        job: JobId,
        /// Where its tasks are.
        current: EntitlementId,
        /// Where the request says.
        requested: EntitlementId,
    },
    /// A GPU demand no device can express.
    #[error(
        "{task}: GPU demand {demand:?} is invalid (a share is 1..=999 thousandths, whole devices at least 1)"
    )]
    InvalidGpuDemand {
        /// The task.
        task: TaskId,
        /// What it asked for.
        demand: GpuDemand,
    },
    /// A new quota is below what the entitlement holds now.
    #[error("{entitlement}: new quota is below current use ({excess})")]
    QuotaBelowUsage {
        /// The entitlement.
        entitlement: EntitlementId,
        /// The first machine type or dimension over the new quota.
        excess: QuotaExcess,
    },
    /// A host-profile switch of a host that is not an empty free-pool host.
    #[error("{0} is not an empty free-pool host; only those switch profiles")]
    NotInFreePool(HostId),
    /// More hosts than ids.
    #[error("too many hosts (at most {max})")]
    TooManyHosts {
        /// The limit.
        max: u32,
    },
    /// More distinct host attribute sets than ids.
    #[error("too many distinct host attribute sets (at most {max})")]
    TooManyAttributeSets {
        /// The limit.
        max: u32,
    },
    /// More distinct strings (machine types, GPU models, profiles, attribute keys and
    /// values, fault-domain paths) than ids.
    #[error("too many distinct names (at most {max})")]
    TooManyNames {
        /// The limit.
        max: u32,
    },
    /// More entitlements than ids.
    #[error("too many entitlements")]
    TooManyEntitlements,
    /// A move of a task to the host it already runs on.
    #[error("{task} already runs on {host}")]
    MoveToSameHost {
        /// The task.
        task: TaskId,
        /// Its host.
        host: HostId,
    },
    /// A move the destination refuses: the first rule it fails, checked as a placement
    /// checks it. Nothing changed.
    #[error("{task} cannot move to {to}: {reason}")]
    MoveRefused {
        /// The task.
        task: TaskId,
        /// The destination.
        to: HostId,
        /// The first rule the destination fails.
        reason: Box<UnplacedReason>,
    },
    /// [`Allocator::place_at`](crate::Allocator::place_at) got a host list that does not
    /// match the request's tasks one for one, or a request that also frees tasks.
    #[error(
        "place_at: {tasks} tasks to allocate, {hosts} hosts, {frees} tasks to free (must be equal counts and no frees)"
    )]
    PlaceAtMismatch {
        /// Tasks the request allocates.
        tasks: usize,
        /// Hosts given.
        hosts: usize,
        /// Tasks the request frees.
        frees: usize,
    },
    /// A recorded placement the named host refuses: the first rule it fails, checked
    /// as a placement checks it. Nothing changed.
    #[error("{task} cannot be placed on {host}: {reason}")]
    PlaceAtRefused {
        /// The task.
        task: TaskId,
        /// The host recorded for it.
        host: HostId,
        /// The first rule the host fails.
        reason: Box<UnplacedReason>,
    },
    /// The allocator's books disagree with themselves: a bug in twine-sched, reported
    /// instead of a quietly wrong fleet. The allocator's state is unspecified afterwards.
    #[error("internal error on {host}: {what} (a bug in twine-sched)")]
    Internal {
        /// The host whose records disagree.
        host: HostId,
        /// What disagrees.
        what: Bookkeeping,
    },
}

/// Which record of the allocator's books disagrees (see [`AllocError::Internal`]).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum Bookkeeping {
    /// The host a search picked has less free capacity than the demand.
    #[error("free capacity below the demand of the task placed on it")]
    FreeBelowDemand,
    /// The host a search picked has no GPU devices for the demand.
    #[error("GPU devices refuse the demand of the task placed on it")]
    GpuRefused,
    /// Giving a task's demand back would leave more free capacity than the host has.
    #[error("free capacity would exceed the host's capacity")]
    FreeAboveCapacity,
    /// A task's GPU grant names a device the host lacks or fills one past a whole device.
    #[error("a GPU grant does not fit back onto the host's devices")]
    GpuGrantMismatch,
    /// The host's task list and the task's record disagree.
    #[error("{0} is not in the host's task list")]
    TaskNotOnHost(TaskId),
    /// A task on the host's list has no record.
    #[error("{0} is on the host but has no record")]
    TaskRecordMissing(TaskId),
    /// Moving one task changed the owner of more than one host on either side.
    #[error("moving {0} changed the owner of several hosts")]
    SeveralOwnerChanges(TaskId),
    /// A job with a placed task has no record, or no entitlement.
    #[error("{0} has a task on the host but no record")]
    JobRecordMissing(JobId),
    /// A job's per-host or per-domain count of the host is missing.
    #[error("{0} has no count for the host or its fault domains")]
    JobCountMissing(JobId),
    /// The entitlement that owns the host does not list it, or does not exist.
    #[error("the entitlement that owns the host does not list it")]
    EntitlementMissingHost,
    /// The host is not where its class and free capacity place it in the index.
    #[error("the host is missing from the free-capacity index")]
    NotIndexed,
    /// The free-capacity index holds a host id that no host has.
    #[error("the free-capacity index holds this id but no such host exists")]
    IndexedButUnknown,
    /// The index has no class id left for the host's properties.
    #[error("no class id left for the host's properties")]
    ClassIdsExhausted,
}

/// A task that got a host.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Placed {
    /// The task.
    pub task: TaskId,
    /// Its host.
    pub host: HostId,
    /// The GPU devices it holds.
    pub gpus: GpuGrant,
}

/// A task moved from one host to another (failure, drain, resize).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Moved {
    /// The task.
    pub task: TaskId,
    /// Where it was.
    pub from: HostId,
    /// Where it goes.
    pub to: HostId,
    /// The GPU devices it holds there.
    pub gpus: GpuGrant,
}

/// The outcome of a [`Request`](crate::Request).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Allocation {
    /// Tasks placed, in request order.
    pub placed: Vec<Placed>,
    /// Tasks not placed, with why.
    pub unplaced: Vec<(TaskId, Unplaced)>,
    /// Tasks freed.
    pub freed: Vec<TaskId>,
    /// Free-pool hosts that joined the entitlement.
    pub hosts_joined: Vec<HostId>,
    /// Hosts that went back to the free pool (empty).
    pub hosts_released: Vec<HostId>,
    /// Profile switches of free-pool hosts that would let unplaced tasks with a host
    /// profile requirement be placed.
    pub profile_switches: Vec<ProfileSwitch>,
}

/// The outcome of a host failure or drain.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Evacuation {
    /// Tasks moved to another host.
    pub moved: Vec<Moved>,
    /// Tasks with nowhere to go: removed after a failure, left on the host for a drain.
    pub unplaced: Vec<(TaskId, Unplaced)>,
    /// Free-pool hosts that joined an entitlement to take moved tasks.
    pub hosts_joined: Vec<HostId>,
    /// Hosts that went back to the free pool (including the evacuated one once empty).
    pub hosts_released: Vec<HostId>,
}

/// The outcome of a resize.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Resized {
    /// The task fits where it is.
    InPlace {
        /// Its GPU devices after the resize.
        gpus: GpuGrant,
    },
    /// The task had to move.
    Moved {
        /// Where from and where to.
        moved: Moved,
        /// Free-pool hosts that joined the entitlement to take it.
        hosts_joined: Vec<HostId>,
        /// Hosts that went back to the free pool (the old one, once empty).
        hosts_released: Vec<HostId>,
    },
    /// No host has room: the task keeps its old size and host.
    Unplaced(Unplaced),
}
