//! The allocator of a Twine-style cluster manager: entitlements, hard and soft
//! constraints, and multi-dimensional bin packing of tasks onto hosts.
//!
//! Pure and deterministic: no I/O (besides parsing trace CSV from a reader), no
//! threads, no clock, no randomness beyond a caller-given seed. The caller sends a
//! [`Request`] and acts on the returned [`Allocation`].
//!
//! ```
//! use twine_sched::*;
//!
//! let mut alloc = Allocator::new(AllocatorConfig::default().with_seed(7));
//! for rack in 0..4 {
//!     let small = HostSpec::new(Resources::new(18_000, 65_536)).machine_type("small");
//!     alloc.add_host(&small.domain(["r1", "dc1", "p1", &format!("rack{rack}")]))?;
//! }
//! // An entitlement: a quota of 3 small machines, drawn from the free pool as needed.
//! let web = alloc.add_entitlement("web", Quota::machines([("small", 3)]))?;
//! let task = Demand { resources: Resources::new(4_000, 8_192), gpu: GpuDemand::None };
//! let req = Request::new(web, JobId(1))
//!     .require(Requirements::default().machine_types(["small"]))
//!     .prefer(Preferences::default().spread(FaultLevel::Rack).max_per_host(1).policy(Policy::BestFit))
//!     .allocate(TaskId(1), task)
//!     .allocate(TaskId(2), task)
//!     .allocate(TaskId(3), task)
//!     .allocate(TaskId(4), task);
//! let out = alloc.apply(&req)?;
//! assert_eq!(out.placed.len(), 3);
//! assert_eq!(out.hosts_joined.len(), 3);
//! // Why the fourth did not fit, host by host in aggregate:
//! assert_eq!(
//!     out.unplaced[0].1.to_string(),
//!     "0/4 hosts: 3 job at its per-host limit, 1 entitlement quota exhausted"
//! );
//! # Ok::<(), AllocError>(())
//! ```
//!
//! | module | what |
//! | --- | --- |
//! | [`resources`] | resource vectors; GPUs as devices, shared in thousandths or whole |
//! | [`score`] | the classic scorers side by side: best fit, DotProduct, L2, Borg's stranded, kube's MostAllocated, Nomad's binpack, Tetris, spread |
//! | [`fleet`], [`entitlement`], [`request`] | hosts and fault domains, quotas, Twine-shaped requests |
//! | [`allocator`] | online placement with incremental indexes (the design and its cost are in its docs) |
//! | [`drain`] | draining a host with each job's consent, stopping the rest at the notice's deadline, then a host-profile switch through the profiles side |
//! | [`explain`] | why a task was not placed; host-profile switch proposals |
//! | [`rebalance`] | the ReBalancer: proposals that empty hosts or even out spread, with gain and cost, under a move budget and a rate limit |
//! | [`taskcontrol`] | the TaskControl protocol: operations acked by the application, a max-unavailable budget, advance notices with deadlines; a reference controller for replicated services |
//! | [`freshness`] | every task restarted on a fresh container within a max age (90 days), offered through TaskControl at a level fleet-wide rate; identities renewed in place; a seeded fleet simulation |
//! | [`replay`] | tasks arriving and leaving over time (the trace's times or Poisson churn), placed online and rebalanced, against the lower bound |
//! | [`trace`], [`pack`] | the openb trace CSV; offline packing against the lower bound with twine's policy and the classic ones, and an independent check of any packing |

pub mod allocator;
pub mod drain;
pub mod entitlement;
pub mod explain;
pub mod fleet;
pub mod freshness;
mod index;
pub mod pack;
pub mod rebalance;
pub mod replay;
pub mod request;
pub mod resources;
pub mod rollout;
pub mod score;
pub mod taskcontrol;
pub mod trace;

pub use allocator::{
    AllocError, Allocation, Allocator, AllocatorConfig, Bookkeeping, Evacuation, Moved, Placed,
    Relocated, Resized, TaskView,
};
pub use entitlement::{EntitlementId, Quota, QuotaExcess};
pub use explain::{ProfileSwitch, Unplaced, UnplacedReason};
pub use fleet::{FaultLevel, HostId, HostSpec, HostState, HostView, Owner, ResourceNames};
pub use request::{AttrPredicate, JobId, Preferences, Request, Requirements, TaskId};
pub use resources::{Demand, GpuDemand, GpuDevices, GpuGrant, Resources};
pub use score::{HostFit, Policy};
pub use taskcontrol::{TaskControl, TaskControlError};
