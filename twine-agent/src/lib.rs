//! The twine host agent: it takes a job spec, boots a container with systemd as
//! PID 1, installs the job's units (translated by [`twine_spec`]) and drives them
//! over D-Bus, ships the container's journal into a host log store without losing
//! a line, and keeps tasks running when the agent itself restarts.
//!
//! Modules, from the bottom up:
//! * [`container`]: namespaces, an overlay rootfs, `pivot_root`, the mounts
//!   systemd's container interface expects, a delegated cgroup2 subtree, systemd
//!   as PID 1 with readiness through `NOTIFY_SOCKET`, shutdown and cleanup;
//! * [`systemd`]: the container's systemd over its private D-Bus socket (zbus);
//! * [`lifecycle`]: the task state machine (pure);
//! * [`logs`]: the host log store and the journal shipper;
//! * [`state`]: the agent's state directory, its lock and the persisted records
//!   that let a restarted agent reattach;
//! * [`identity`]: the per-job credentials directory and its atomic renewal;
//! * [`agent`]: the pieces composed: run, stop, status, events, reattach;
//! * [`daemon`]: the local Unix-socket protocol of `twine agent daemon`.

pub mod agent;
pub mod container;
pub mod daemon;
pub mod identity;
pub mod lifecycle;
pub mod logs;
pub mod state;
pub mod systemd;
