//! The job spec as users write it, in TOML, JSON or YAML.
//!
//! These types mirror the file one to one and reject unknown keys. Values whose
//! meaning needs checking (sizes, spans, signals, policies) stay as written here,
//! so that [`JobSpec::validate`] can report every problem at once with its path,
//! instead of the parser stopping at the first.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

/// A number, or a string with a unit (`"512M"`, `"30s"`, `"150%"`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum Quantity {
    /// A whole number.
    Integer(i64),
    /// A fractional number.
    Float(f64),
    /// A number with a unit.
    Text(String),
}

/// A job: one task, replicated, placed by the allocator and run by the agent.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct JobSpec {
    /// The job's name; unit names derive from it.
    pub name: String,
    /// The entitlement (quota) the job runs under; carried for the allocator.
    pub entitlement: String,
    /// How many tasks to run; carried for the allocator. Default 1.
    #[serde(default = "one")]
    pub replicas: i64,
    /// Free-form labels; carried for the allocator.
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
    /// The host profile the job needs; carried for the allocator.
    #[serde(default)]
    pub host_profile: Option<String>,
    /// The machine type the job needs; carried for the allocator.
    #[serde(default)]
    pub machine_type: Option<String>,
    /// What each replica runs.
    pub task: TaskSpec,
}

fn one() -> i64 {
    1
}

/// What one replica runs.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TaskSpec {
    /// argv; the first word is an absolute executable path. Never run through a shell.
    pub command: Vec<String>,
    /// Absolute working directory.
    #[serde(default)]
    pub working_directory: Option<String>,
    /// User to run as (name or numeric id).
    #[serde(default)]
    pub user: Option<String>,
    /// Group to run as (name or numeric id).
    #[serde(default)]
    pub group: Option<String>,
    /// Environment variables for the main command, pre-start steps and sidecars.
    #[serde(default)]
    pub environment: BTreeMap<String, String>,
    /// cgroup resource controls of the main unit.
    #[serde(default)]
    pub resources: ResourcesSpec,
    /// Commands that must succeed, in order, before the main command starts.
    #[serde(default)]
    pub prestart: Vec<PrestartSpec>,
    /// Long-running helpers beside the main command (a log shipper, a proxy).
    #[serde(default)]
    pub sidecars: Vec<SidecarSpec>,
    /// How the task is stopped.
    #[serde(default)]
    pub kill: KillSpec,
    /// When the main command is restarted.
    #[serde(default)]
    pub restart: RestartSpec,
    /// A periodic probe of the main command.
    #[serde(default)]
    pub health_check: Option<HealthCheckSpec>,
    /// Log handling.
    #[serde(default)]
    pub logs: LogSpec,
}

/// cgroup resource controls.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ResourcesSpec {
    /// `cpu.weight`, 1..=10000.
    #[serde(default)]
    pub cpu_weight: Option<i64>,
    /// CPU quota: cores as a number (`1.5`) or percent of one CPU (`"150%"`).
    #[serde(default)]
    pub cpu_quota: Option<Quantity>,
    /// `memory.high`: bytes or `"512M"`.
    #[serde(default)]
    pub memory_high: Option<Quantity>,
    /// `memory.max`: bytes or `"1G"`; must not be below `memory_high`.
    #[serde(default)]
    pub memory_max: Option<Quantity>,
    /// `pids.max`.
    #[serde(default)]
    pub tasks_max: Option<i64>,
    /// `io.weight`, 1..=10000.
    #[serde(default)]
    pub io_weight: Option<i64>,
}

/// One pre-start step.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PrestartSpec {
    /// Unique among the task's steps and sidecars.
    pub name: String,
    /// argv, as for the main command.
    pub command: Vec<String>,
    /// How long the step may run. Default 5 minutes.
    #[serde(default)]
    pub timeout: Option<Quantity>,
    /// Steps this one waits for. When absent, the previous step in the list.
    #[serde(default)]
    pub after: Option<Vec<String>>,
}

/// One sidecar.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SidecarSpec {
    /// Unique among the task's steps and sidecars.
    pub name: String,
    /// argv, as for the main command.
    pub command: Vec<String>,
    /// Restart policy of the sidecar. Default: always, after 1 s.
    #[serde(default)]
    pub restart: Option<RestartSpec>,
}

/// How the task is stopped.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KillSpec {
    /// The first signal. Default `SIGTERM`.
    #[serde(default)]
    pub signal: Option<String>,
    /// How long to wait after it before the final signal. Default 30 s; `"infinity"` never escalates.
    #[serde(default)]
    pub grace_period: Option<Quantity>,
    /// The signal after the grace period. Default `SIGKILL`.
    #[serde(default)]
    pub final_signal: Option<String>,
    /// Who gets the first signal: `control-group` (every process, the default),
    /// `mixed` (the main process; the rest get the final signal) or `process`.
    #[serde(default)]
    pub mode: Option<String>,
}

/// When a command is restarted.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RestartSpec {
    /// `never`, `on-failure` (default for the main command) or `always`.
    #[serde(default)]
    pub policy: Option<String>,
    /// Wait before restarting. Default 1 s.
    #[serde(default)]
    pub delay: Option<Quantity>,
    /// At most this many starts within `interval`; then the unit stays failed. Default 5.
    #[serde(default)]
    pub burst: Option<i64>,
    /// The window of `burst`. Default 60 s.
    #[serde(default)]
    pub interval: Option<Quantity>,
}

/// A periodic probe.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HealthCheckSpec {
    /// argv; exit 0 means healthy.
    pub command: Vec<String>,
    /// Time between probes. Default 30 s.
    #[serde(default)]
    pub interval: Option<Quantity>,
    /// How long one probe may run. Default 10 s.
    #[serde(default)]
    pub timeout: Option<Quantity>,
    /// Consecutive failures before the task counts as unhealthy. Default 3.
    #[serde(default)]
    pub retries: Option<i64>,
    /// Grace after start before the first probe. Default 0.
    #[serde(default)]
    pub start_period: Option<Quantity>,
}

/// Log handling. By default nothing is rate-limited, so nothing is dropped.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LogSpec {
    /// Rate-limit window; absent means no rate limiting.
    #[serde(default)]
    pub rate_limit_interval: Option<Quantity>,
    /// Messages allowed per window; needs `rate_limit_interval`.
    #[serde(default)]
    pub rate_limit_burst: Option<i64>,
    /// The syslog identifier of the main command. Default: the job name.
    #[serde(default)]
    pub identifier: Option<String>,
}

/// The formats a spec can be written in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Format {
    /// TOML (`.toml`).
    Toml,
    /// JSON (`.json`).
    Json,
    /// YAML (`.yaml`, `.yml`).
    Yaml,
}

impl Format {
    /// The format a file name's extension stands for.
    pub fn from_path(path: &Path) -> Option<Format> {
        match path.extension()?.to_str()? {
            "toml" => Some(Format::Toml),
            "json" => Some(Format::Json),
            "yaml" | "yml" => Some(Format::Yaml),
            _ => None,
        }
    }
}

/// A spec that could not be read.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ParseError {
    /// The file could not be read.
    #[error("{}: {source}", path.display())]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The file name does not say which format it is in.
    #[error("{}: unknown spec format (use .toml, .json, .yaml or .yml)", path.display())]
    UnknownFormat {
        /// The file.
        path: PathBuf,
    },
    /// The text is not a spec: bad syntax, an unknown key, a wrong type.
    #[error("{field}: {message}")]
    Syntax {
        /// The field path where it went wrong (`task.kill.mode`), or `.` for the document.
        field: String,
        /// What the parser said.
        message: String,
    },
}

impl JobSpec {
    /// Reads a spec in `format` from `text`.
    pub fn parse(text: &str, format: Format) -> Result<JobSpec, ParseError> {
        match format {
            Format::Toml => {
                let de = toml::Deserializer::parse(text).map_err(|e| syntax(".", &e))?;
                from_deserializer(de)
            }
            Format::Json => {
                let mut de = serde_json::Deserializer::from_str(text);
                let spec = from_deserializer(&mut de)?;
                de.end().map_err(|e| syntax(".", &e))?;
                Ok(spec)
            }
            Format::Yaml => from_deserializer(serde_norway::Deserializer::from_str(text)),
        }
    }

    /// Reads a TOML spec.
    pub fn from_toml(text: &str) -> Result<JobSpec, ParseError> {
        JobSpec::parse(text, Format::Toml)
    }

    /// Reads a JSON spec.
    pub fn from_json(text: &str) -> Result<JobSpec, ParseError> {
        JobSpec::parse(text, Format::Json)
    }

    /// Reads a YAML spec.
    pub fn from_yaml(text: &str) -> Result<JobSpec, ParseError> {
        JobSpec::parse(text, Format::Yaml)
    }

    /// Reads a spec file, choosing the format by extension.
    pub fn from_path(path: &Path) -> Result<JobSpec, ParseError> {
        let format = Format::from_path(path).ok_or_else(|| ParseError::UnknownFormat {
            path: path.to_owned(),
        })?;
        let text = std::fs::read_to_string(path).map_err(|source| ParseError::Read {
            path: path.to_owned(),
            source,
        })?;
        JobSpec::parse(&text, format)
    }
}

fn from_deserializer<'de, D>(de: D) -> Result<JobSpec, ParseError>
where
    D: serde::Deserializer<'de>,
    D::Error: std::fmt::Display,
{
    serde_path_to_error::deserialize(de).map_err(|e| {
        let field = e.path().to_string();
        syntax(&field, e.inner())
    })
}

fn syntax(field: &str, error: &dyn std::fmt::Display) -> ParseError {
    // Parser messages may span lines (TOML quotes the source); keep the first line
    // plus location so `path: message` stays one line per problem.
    let message = error
        .to_string()
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .collect::<Vec<_>>()
        .join(" ");
    ParseError::Syntax {
        field: field.to_owned(),
        message,
    }
}
