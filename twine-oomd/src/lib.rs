//! A Senpai-style memory resizer on PSI and `memory.high` / `memory.reclaim`, with
//! oomd-style kill policies.
//!
//! Deciding is apart from doing: the [`senpai`] controller and the [`kill`] policies are
//! pure step functions over observations, configured by [`config`] and exercised by the
//! [`sim`]ulator; [`cgroup`] and [`psi`] are the thin I/O shell that reads and writes cgroup2
//! files under a `cgroup::CgroupRoot` (the real mount, found from `/proc/self/mountinfo`, or
//! a tempdir fixture); the [`daemon`] drives many cgroups with them (`twine oomd run`).
//!
//! The pure core in a few lines: one controller step per tick, then restore on exit.
//!
//! ```
//! use std::time::Duration;
//! use twine_oomd::senpai::{step, Action, Observation, SenpaiConfig, SenpaiState};
//!
//! let config = SenpaiConfig::default();
//! let mut state = SenpaiState::default();
//! let mut high = None; // memory.high as the kernel holds it ("max")
//! for t in 0..60 {
//!     // The daemon reads these from memory.current, memory.pressure, memory.stat, ...
//!     let mut obs = Observation::new(Duration::from_secs(t), 2 << 30);
//!     obs.high = high;
//!     let (next, decision) = step(&state, &obs, &config);
//!     state = next;
//!     match decision.map(|d| d.action) {
//!         Ok(Action::SetHigh(bytes)) => high = Some(bytes), // write memory.high
//!         Ok(Action::Reclaim(_)) => {}                      // write memory.reclaim
//!         Ok(_) => {}
//!         Err(error) => eprintln!("skipped a tick: {error}"),
//!     }
//! }
//! assert!(high < Some(2 << 30)); // a minute without stall: probed down
//! assert_eq!(state.exit(high), Action::RestoreHigh(None)); // back to "max"
//! ```
//!
//! twine-oomd reads and writes the cgroup2 files itself instead of using `cgroups-rs`: that
//! crate has no PSI, no `memory.reclaim` and no movable root (see
//! `../shared/references/oomd.md`, section on Rust crates).

pub mod cgroup;
pub mod config;
pub mod daemon;
#[cfg(feature = "test-util")]
pub mod fixture;
pub mod kill;
pub mod memory;
pub mod psi;
pub mod senpai;
pub mod sim;

pub use cgroup::{Cgroup, CgroupError, CgroupEvents, CgroupRoot};
pub use memory::{
    Limit, LimitFile, LimitWriter, MemoryEvents, MemorySnapshot, MemoryStat, SnapshotReader,
    SwapEvents,
};
pub use psi::{Pressure, PressureLine, PsiTrigger, Resource, Stall, Trigger, TriggerEvent};
