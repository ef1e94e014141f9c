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
//!
//! # Tutorial
//!
//! An [`Agent`](agent::Agent) owns a state directory and boots containers from one
//! read-only rootfs (any tree with systemd in it; `cargo xtask rootfs` makes a Debian
//! one). [`run`](agent::Agent::run) takes a spec and returns once the job's units are
//! started in a fresh container; the [`JobHandle`](agent::JobHandle) streams the job's log
//! lines and its state, and [`wait`](agent::JobHandle::wait) returns when the job has
//! ended and the container is gone. This needs root (namespaces, mounts, cgroups), so the
//! example only compiles here; `cargo run --example run_job` runs it.
//!
//! ```no_run
//! use twine_agent::agent::{Agent, AgentSettings};
//! use twine_agent::lifecycle::TaskState;
//! use twine_agent::state::StateDir;
//! use twine_spec::JobSpec;
//!
//! # async fn run() -> Result<(), Box<dyn std::error::Error>> {
//! let spec = JobSpec::from_toml(r#"
//!     name = "hello"
//!     entitlement = "examples"
//!     [task]
//!     command = ["/bin/echo", "hello"]
//!     [task.restart]
//!     policy = "never"
//! "#)?;
//! let settings = AgentSettings::new("/var/tmp/twine-cache/rootfs-bookworm");
//! let agent = Agent::open(StateDir::new("/var/lib/twine-agent"), settings)?;
//! let mut handle = agent.run(spec).await?;
//! if let Some(mut lines) = handle.take_lines() {
//!     tokio::spawn(async move {
//!         while let Some(line) = lines.recv().await {
//!             eprintln!("{}: {}", line.unit, line.message);
//!         }
//!     });
//! }
//! // `handle.stop()` would stop it by the spec's kill policy; this job ends by itself.
//! assert_eq!(handle.wait().await?, TaskState::Exited { code: 0 });
//! # Ok(())
//! # }
//! ```
//!
//! After an agent restart, [`Agent::reattach_all`](agent::Agent::reattach_all) picks up
//! the containers still running, without restarting their jobs.

pub mod agent;
pub mod container;
pub mod daemon;
pub mod identity;
pub mod lifecycle;
pub mod logs;
pub mod state;
pub mod systemd;
