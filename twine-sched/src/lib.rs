//! twine-sched: the allocator (work in progress).

pub mod resources;
pub mod score;

pub use resources::{Demand, GpuDemand, GpuDevices, GpuGrant, Resources};
pub use score::{HostFit, Policy};
pub mod compact;
pub mod pack;
pub mod trace;
