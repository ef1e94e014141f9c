//! The validated job: what [`crate::JobSpec::validate`] returns and [`crate::translate()`] takes.
//!
//! Every type here is `#[non_exhaustive]`, so outside this crate a value can only
//! come from validation: a `Job` always satisfies every rule validation checks.

use std::collections::BTreeMap;

use crate::signal::Signal;
use crate::timespan::Timeout;

/// A validated job.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub struct Job {
    /// The job's name (non-empty, printable).
    pub name: String,
    /// The entitlement the job runs under.
    pub entitlement: String,
    /// How many tasks to run.
    pub replicas: u32,
    /// Labels for the allocator.
    pub labels: BTreeMap<String, String>,
    /// The required host profile.
    pub host_profile: Option<String>,
    /// The required machine type.
    pub machine_type: Option<String>,
    /// What each replica runs.
    pub task: Task,
}

/// A validated task.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub struct Task {
    /// argv; `command[0]` is an absolute, normalized path.
    pub command: Vec<String>,
    /// Absolute working directory.
    pub working_directory: Option<String>,
    /// User name or id.
    pub user: Option<String>,
    /// Group name or id.
    pub group: Option<String>,
    /// Environment of every command of the task.
    pub environment: BTreeMap<String, String>,
    /// Resource controls of the main unit.
    pub resources: Resources,
    /// Pre-start steps, in spec order.
    pub prestart: Vec<PrestartStep>,
    /// Sidecars.
    pub sidecars: Vec<Sidecar>,
    /// Stop behaviour.
    pub kill: KillPolicy,
    /// Restart behaviour of the main command.
    pub restart: RestartPolicy,
    /// The health probe.
    pub health_check: Option<HealthCheck>,
    /// Log handling.
    pub logs: LogPolicy,
}

/// Resource controls; `None` leaves systemd's default.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct Resources {
    /// `CPUWeight=`, 1..=10000.
    pub cpu_weight: Option<u64>,
    /// `CPUQuota=` in percent of one CPU.
    pub cpu_quota_percent: Option<u32>,
    /// `MemoryHigh=` in bytes.
    pub memory_high: Option<u64>,
    /// `MemoryMax=` in bytes, at least `memory_high`.
    pub memory_max: Option<u64>,
    /// `TasksMax=`.
    pub tasks_max: Option<u64>,
    /// `IOWeight=`, 1..=10000.
    pub io_weight: Option<u64>,
}

/// A pre-start step.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub struct PrestartStep {
    /// Unique name within the task.
    pub name: String,
    /// argv.
    pub command: Vec<String>,
    /// `TimeoutStartSec=`.
    pub timeout: Timeout,
    /// Names of the steps this one runs after (and requires).
    pub after: Vec<String>,
}

/// A sidecar.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub struct Sidecar {
    /// Unique name within the task.
    pub name: String,
    /// argv.
    pub command: Vec<String>,
    /// Its restart policy.
    pub restart: RestartPolicy,
}

/// Who receives the first stop signal.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum KillMode {
    /// Every process of the unit (`KillMode=control-group`).
    ControlGroup,
    /// The main process; the rest get the final signal (`KillMode=mixed`).
    Mixed,
    /// Only the main process (`KillMode=process`).
    Process,
}

impl KillMode {
    /// The `KillMode=` word.
    pub fn as_str(self) -> &'static str {
        match self {
            KillMode::ControlGroup => "control-group",
            KillMode::Mixed => "mixed",
            KillMode::Process => "process",
        }
    }
}

/// How the task is stopped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub struct KillPolicy {
    /// `KillSignal=`.
    pub signal: Signal,
    /// `TimeoutStopSec=`.
    pub grace_period: Timeout,
    /// `FinalKillSignal=`.
    pub final_signal: Signal,
    /// `KillMode=`.
    pub mode: KillMode,
}

/// When a command is restarted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Restart {
    /// `Restart=no`.
    Never,
    /// `Restart=on-failure`.
    OnFailure,
    /// `Restart=always`.
    Always,
}

impl Restart {
    /// The `Restart=` word.
    pub fn as_str(self) -> &'static str {
        match self {
            Restart::Never => "no",
            Restart::OnFailure => "on-failure",
            Restart::Always => "always",
        }
    }
}

/// Restart behaviour.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub struct RestartPolicy {
    /// `Restart=`.
    pub policy: Restart,
    /// `RestartSec=` in microseconds.
    pub delay_usec: u64,
    /// `StartLimitBurst=`; 0 turns the limit off.
    pub burst: u32,
    /// `StartLimitIntervalSec=` in microseconds.
    pub interval_usec: u64,
}

/// A periodic probe, run by a timer beside the main unit.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub struct HealthCheck {
    /// argv.
    pub command: Vec<String>,
    /// Between probes, in microseconds.
    pub interval_usec: u64,
    /// Per probe, in microseconds.
    pub timeout_usec: u64,
    /// Consecutive failures before the task is unhealthy.
    pub retries: u32,
    /// Before the first probe, in microseconds.
    pub start_period_usec: u64,
}

/// Log handling.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct LogPolicy {
    /// `(interval_usec, burst)`; `None` turns journald's rate limit off for the job.
    pub rate_limit: Option<(u64, u32)>,
    /// `SyslogIdentifier=` of the main unit.
    pub identifier: Option<String>,
}
