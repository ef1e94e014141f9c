//! Host profiles: sysctls, hugepages, transparent hugepages, kernel command line, cpufreq
//! governor, sysfs attributes, systemd drop-ins, networkd files and cgroup2 controllers,
//! planned, applied, verified and rolled back, with drain and reboot when they must.
//!
//! Deciding is apart from doing: [`plan`] is a pure function of the host's facts and the
//! desired profile; [`apply`] carries a plan out through a [`host::HostRoot`] (the real `/`
//! or a directory), recording every original value first so that rollback restores exactly
//! what twine changed; [`flow`] is the persisted drain -> apply -> reboot -> verify ->
//! undrain state machine.

pub mod apply;
pub mod change;
pub mod flow;
pub mod host;
pub mod key;
pub mod plan;
pub mod profile;
#[cfg(feature = "test-util")]
pub mod testing;
pub mod tuned;
