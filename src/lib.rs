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
