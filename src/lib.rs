//! twine: building blocks of a Twine-style cluster manager.
//!
//! This facade re-exports the suite's crates behind features, so an integrator can
//! depend on `twine` and pick what they need; each crate also stands alone.
//!
//! | feature | crate | what |
//! | --- | --- | --- |
//! | `spec` (default) | [`twine_spec`] | job specs translated into systemd units |
//! | `sched` (default) | [`twine_sched`] | the allocator: entitlements, constraints, bin packing |
//! | `oomd` (default) | [`twine_oomd`] | Senpai-style memory resizer and oomd-style kill policies |
//! | `profiles` (default) | [`twine_profiles`] | host profiles planned, applied, verified and rolled back |
//! | `agent` (default) | [`twine_agent`] | the host agent: containers with systemd as PID 1, logs, reattach |
//!
//! The `twine` binary is the command-line face of the same crates.
//!
//! # Tutorial
//!
//! The crates do not know each other (only the agent uses the spec); the glue between them
//! is the integrator's, and short. Here a spec becomes a validated job, its resources an
//! allocator demand, its replicas are placed one per rack, and its units are rendered for
//! the agents of the hosts chosen:
//!
//! ```
//! # #[cfg(all(feature = "spec", feature = "sched"))]
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! use twine::sched::{
//!     Allocator, AllocatorConfig, Demand, FaultLevel, GpuDemand, HostSpec, JobId,
//!     Preferences, Quota, Request, Resources, TaskId,
//! };
//!
//! let job = twine::spec::JobSpec::from_toml(r#"
//!     name = "cache"
//!     entitlement = "storage"
//!     replicas = 2
//!     [task]
//!     command = ["/usr/bin/memcached"]
//!     [task.resources]
//!     cpu_quota = 2
//!     memory_max = "2G"
//! "#)?.validate()?;
//!
//! // Spec resources -> allocator demand: CPU in thousandths, memory in MiB.
//! let r = &job.task.resources;
//! let task = Demand {
//!     resources: Resources::new(
//!         u64::from(r.cpu_quota_percent.unwrap_or(100)) * 10,
//!         r.memory_max.unwrap_or(1 << 30).div_ceil(1 << 20),
//!     ),
//!     gpu: GpuDemand::None,
//! };
//!
//! let mut alloc = Allocator::new(AllocatorConfig::default());
//! for rack in ["rack0", "rack1"] {
//!     alloc.add_host(&HostSpec::new(Resources::new(16_000, 65_536)).domain(["r", "dc", "p", rack]))?;
//! }
//! let entitlement = alloc.add_entitlement(&job.entitlement, Quota::Units(Resources::new(32_000, 131_072)))?;
//! let mut request = Request::new(entitlement, JobId(1)).prefer(Preferences::default().spread(FaultLevel::Rack));
//! for i in 0..job.replicas {
//!     request = request.allocate(TaskId(u64::from(i)), task);
//! }
//! let placed = alloc.apply(&request)?;
//! assert_eq!(placed.placed.len(), 2);
//! assert_ne!(placed.placed[0].host, placed.placed[1].host); // one per rack
//!
//! // What each chosen host's agent installs and starts (`cache.target` starts them all).
//! let units = twine::spec::translate(&job)?;
//! assert_eq!(units.target().to_string(), "cache.target");
//! # Ok(())
//! # }
//! # #[cfg(not(all(feature = "spec", feature = "sched")))]
//! # fn main() {}
//! ```
//!
//! The rest of the path (a host-profile switch, the container and its units over D-Bus,
//! memory sized by pressure) is in `docs/ARCHITECTURE.md`, and each step is a program in
//! `examples/`: `control_loop`, `render_units`, `place_trace`, `profile_switch`,
//! `run_job`, `senpai_loop` (`cargo run --example NAME`).

#[cfg(feature = "agent")]
pub use twine_agent as agent;
#[cfg(feature = "oomd")]
pub use twine_oomd as oomd;
#[cfg(feature = "profiles")]
pub use twine_profiles as profiles;
#[cfg(feature = "sched")]
pub use twine_sched as sched;
#[cfg(feature = "spec")]
pub use twine_spec as spec;
