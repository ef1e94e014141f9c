//! What the agent observes and feeds to [`Lifecycle::apply`](super::Lifecycle::apply)(super::Lifecycle::apply).

use std::fmt;

use serde::{Deserialize, Serialize};

/// systemd's `Result` property of a service.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(from = "String", into = "String")]
#[non_exhaustive]
pub enum ServiceResult {
    /// `success`.
    Success,
    /// `exit-code`.
    ExitCode,
    /// `signal`.
    Signal,
    /// `core-dump`.
    CoreDump,
    /// `oom-kill`.
    OomKill,
    /// `timeout`.
    Timeout,
    /// `watchdog`.
    Watchdog,
    /// `start-limit-hit`.
    StartLimitHit,
    /// `resources`.
    Resources,
    /// Any other word systemd uses (kept verbatim).
    Other(String),
}

impl ServiceResult {
    /// Parses systemd's word; unknown words are kept as [`ServiceResult::Other`].
    pub fn parse(word: &str) -> ServiceResult {
        match word {
            "success" => ServiceResult::Success,
            "exit-code" => ServiceResult::ExitCode,
            "signal" => ServiceResult::Signal,
            "core-dump" => ServiceResult::CoreDump,
            "oom-kill" => ServiceResult::OomKill,
            "timeout" => ServiceResult::Timeout,
            "watchdog" => ServiceResult::Watchdog,
            "start-limit-hit" => ServiceResult::StartLimitHit,
            "resources" => ServiceResult::Resources,
            other => ServiceResult::Other(other.to_owned()),
        }
    }

    /// systemd's word.
    pub fn as_str(&self) -> &str {
        match self {
            ServiceResult::Success => "success",
            ServiceResult::ExitCode => "exit-code",
            ServiceResult::Signal => "signal",
            ServiceResult::CoreDump => "core-dump",
            ServiceResult::OomKill => "oom-kill",
            ServiceResult::Timeout => "timeout",
            ServiceResult::Watchdog => "watchdog",
            ServiceResult::StartLimitHit => "start-limit-hit",
            ServiceResult::Resources => "resources",
            ServiceResult::Other(word) => word,
        }
    }
}

impl From<String> for ServiceResult {
    fn from(word: String) -> ServiceResult {
        ServiceResult::parse(&word)
    }
}

impl From<ServiceResult> for String {
    fn from(result: ServiceResult) -> String {
        result.as_str().to_owned()
    }
}

impl fmt::Display for ServiceResult {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// How the main process ended (systemd's `ExecMainCode`/`ExecMainStatus`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "how", rename_all = "snake_case")]
pub enum MainExit {
    /// It exited with this code.
    Code {
        /// The exit code.
        code: i32,
    },
    /// It was killed (or dumped core) by this signal.
    Signal {
        /// The signal number.
        signal: i32,
    },
}

/// One observation fed to [`Lifecycle::apply`](super::Lifecycle::apply).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "input", rename_all = "snake_case")]
#[non_exhaustive]
pub enum Input {
    /// The container's PID 1 is running.
    ContainerStarted,
    /// The container could not be started.
    ContainerStartFailed {
        /// Why.
        message: String,
    },
    /// The container's systemd sent `READY=1` and the job's target was started.
    Ready,
    /// The readiness deadline passed without `READY=1`.
    ReadyTimeout,
    /// A unit's state changed (informational: recorded as an event).
    UnitChanged {
        /// The unit's name.
        unit: String,
        /// `ActiveState`.
        active_state: String,
        /// `SubState`.
        sub_state: String,
        /// `Result`.
        result: ServiceResult,
    },
    /// The main service's process exited.
    MainExited {
        /// How it ended.
        exit: MainExit,
        /// systemd's `Result` for the service.
        result: ServiceResult,
        /// Whether systemd will restart it (its `Restart=` policy applies).
        will_restart: bool,
        /// systemd's `NRestarts` after this exit.
        n_restarts: u32,
    },
    /// A pre-start unit failed.
    PrestartFailed {
        /// The unit's name.
        unit: String,
        /// systemd's `Result` for it.
        result: ServiceResult,
    },
    /// Somebody asked for the task to stop.
    StopRequested,
    /// The stop deadline (see [`stop_deadline`](super::stop_deadline)) passed before the main exited.
    StopDeadlinePassed,
    /// The container's PID 1 is gone.
    ContainerGone,
    /// The D-Bus connection to the container's systemd broke.
    BusLost,
}

impl Input {
    /// A short name for messages (`main exited`).
    pub fn name(&self) -> &'static str {
        match self {
            Input::ContainerStarted => "container started",
            Input::ContainerStartFailed { .. } => "container start failed",
            Input::Ready => "ready",
            Input::ReadyTimeout => "ready timeout",
            Input::UnitChanged { .. } => "unit changed",
            Input::MainExited { .. } => "main exited",
            Input::PrestartFailed { .. } => "pre-start failed",
            Input::StopRequested => "stop requested",
            Input::StopDeadlinePassed => "stop deadline passed",
            Input::ContainerGone => "container gone",
            Input::BusLost => "D-Bus lost",
        }
    }
}
