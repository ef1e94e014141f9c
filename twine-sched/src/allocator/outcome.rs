//! What the allocator's calls answer: the outcomes and the errors.

use crate::entitlement::EntitlementId;
use crate::explain::{ProfileSwitch, Unplaced};
use crate::fleet::HostId;
use crate::request::{JobId, TaskId};
use crate::resources::{GpuDemand, GpuGrant};

/// What went wrong with a call; the allocator is unchanged when one is returned.
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
    #[error("{entitlement}: new quota is below current use ({detail})")]
    QuotaBelowUsage {
        /// The entitlement.
        entitlement: EntitlementId,
        /// What is over, as `type: used > limit` or the capacity vectors.
        detail: String,
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
    /// More entitlements than ids.
    #[error("too many entitlements")]
    TooManyEntitlements,
    /// A size that does not fit the arithmetic.
    #[error("{what} overflows")]
    Overflow {
        /// What was being computed.
        what: String,
    },
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
    Moved(Moved),
    /// No host has room: the task keeps its old size and host.
    Unplaced(Unplaced),
}
