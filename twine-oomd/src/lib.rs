//! A Senpai-style memory resizer on PSI and `memory.high` / `memory.reclaim`, with
//! oomd-style kill policies.
//!
//! Deciding is apart from doing: the [`senpai`] controller and the [`kill`] policies are
//! pure step functions over observations; [`cgroup`] and [`psi`] are the thin I/O shell
//! that reads and writes cgroup2 files under a [`cgroup::CgroupRoot`] (the real mount, found
//! from `/proc/self/mountinfo`, or a tempdir fixture); [`daemon`] drives many cgroups.
//!
//! twine-oomd reads and writes the cgroup2 files itself instead of using `cgroups-rs`: that
//! crate has no PSI, no `memory.reclaim` and no movable root (see
//! `../shared/references/oomd.md`, section on Rust crates).

pub mod cgroup;
pub mod config;
pub mod kill;
pub mod memory;
pub mod psi;
pub mod senpai;
pub mod sim;
