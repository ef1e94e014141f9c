//! twine-sched: the allocator (work in progress).

pub mod allocator;
pub mod entitlement;
pub mod explain;
pub mod fleet;
mod index;
pub mod request;
pub mod resources;
pub mod score;

pub use resources::{Demand, GpuDemand, GpuDevices, GpuGrant, Resources};
pub use score::{HostFit, Policy};

pub use allocator::{
    AllocError, Allocation, Allocator, AllocatorConfig, Evacuation, Moved, Placed, Resized,
};
pub use entitlement::{EntitlementId, Quota};
pub use explain::{ProfileSwitch, Unplaced, UnplacedReason};
pub use fleet::{FaultLevel, HostId, HostSpec, HostState, HostView, Owner, ResourceNames};
pub use request::{AttrPredicate, JobId, Preferences, Request, Requirements, TaskId};
pub mod compact;
pub mod pack;
pub mod trace;
