//! What systemd reports about units and jobs, decoded into types (pure: no I/O).

use std::fmt;

/// How a job ended: the `result` string of the `JobRemoved` signal.
///
/// systemd 252 documents `done`, `canceled`, `timeout`, `failed`, `dependency`
/// and `skipped`; its source also emits `invalid`, `assert`, `unsupported`,
/// `collected`, `once` and `frozen`. Anything newer is kept verbatim in
/// [`JobOutcome::Other`] rather than refused.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum JobOutcome {
    /// The job finished successfully (`done`).
    Done,
    /// The job was canceled before it finished, e.g. replaced by another (`canceled`).
    Canceled,
    /// The job's timeout (e.g. `TimeoutStartSec=`) passed (`timeout`).
    Timeout,
    /// The job failed: for a start job, the unit did not start (`failed`).
    Failed,
    /// A unit this job required failed (`dependency`).
    Dependency,
    /// The job did not apply to the unit's state, e.g. reloading an inactive unit (`skipped`).
    Skipped,
    /// The job type does not apply to the unit (`invalid`).
    Invalid,
    /// An `Assert*=` setting of the unit did not hold (`assert`).
    Assert,
    /// The unit type is not supported here (`unsupported`).
    Unsupported,
    /// The job was garbage-collected (`collected`).
    Collected,
    /// A `RefuseManualStart=`-style one-time job was refused (`once`).
    Once,
    /// The unit is frozen (`frozen`).
    Frozen,
    /// A result string this version does not know, kept as sent.
    Other(String),
}

impl JobOutcome {
    /// Decodes the `result` argument of `JobRemoved`.
    pub fn from_result(result: &str) -> JobOutcome {
        match result {
            "done" => JobOutcome::Done,
            "canceled" => JobOutcome::Canceled,
            "timeout" => JobOutcome::Timeout,
            "failed" => JobOutcome::Failed,
            "dependency" => JobOutcome::Dependency,
            "skipped" => JobOutcome::Skipped,
            "invalid" => JobOutcome::Invalid,
            "assert" => JobOutcome::Assert,
            "unsupported" => JobOutcome::Unsupported,
            "collected" => JobOutcome::Collected,
            "once" => JobOutcome::Once,
            "frozen" => JobOutcome::Frozen,
            other => JobOutcome::Other(other.to_owned()),
        }
    }

    /// Whether the job did what it was asked (only [`JobOutcome::Done`]).
    pub fn is_done(&self) -> bool {
        matches!(self, JobOutcome::Done)
    }
}

/// A unit's `ActiveState` property.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum ActiveState {
    /// `active`: started and running (or exited, with `RemainAfterExit=yes`).
    Active,
    /// `reloading`: active, reloading its configuration.
    Reloading,
    /// `inactive`: stopped, or never started.
    Inactive,
    /// `failed`: stopped after a failure; stays so until reset or started again.
    Failed,
    /// `activating`: starting, including waiting to be restarted (`SubState` `auto-restart`).
    Activating,
    /// `deactivating`: stopping.
    Deactivating,
    /// `maintenance` (systemd 250+): active, running a clean or freeze operation.
    Maintenance,
    /// `refreshing` (systemd 254+): active, refreshing mounts or extensions.
    Refreshing,
    /// A state this version does not know, kept as sent.
    Other(String),
}

impl ActiveState {
    /// Decodes the `ActiveState` property.
    pub fn parse(state: &str) -> ActiveState {
        match state {
            "active" => ActiveState::Active,
            "reloading" => ActiveState::Reloading,
            "inactive" => ActiveState::Inactive,
            "failed" => ActiveState::Failed,
            "activating" => ActiveState::Activating,
            "deactivating" => ActiveState::Deactivating,
            "maintenance" => ActiveState::Maintenance,
            "refreshing" => ActiveState::Refreshing,
            other => ActiveState::Other(other.to_owned()),
        }
    }

    /// The string systemd uses for this state.
    pub fn as_str(&self) -> &str {
        match self {
            ActiveState::Active => "active",
            ActiveState::Reloading => "reloading",
            ActiveState::Inactive => "inactive",
            ActiveState::Failed => "failed",
            ActiveState::Activating => "activating",
            ActiveState::Deactivating => "deactivating",
            ActiveState::Maintenance => "maintenance",
            ActiveState::Refreshing => "refreshing",
            ActiveState::Other(s) => s,
        }
    }
}

impl fmt::Display for ActiveState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// How a service's main process last ended, from the `ExecMainCode` (a
/// `waitid(2)` `CLD_*` code) and `ExecMainStatus` properties.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum ExecMain {
    /// No main process has ended yet (code 0): never started, or still running.
    NotExited,
    /// `CLD_EXITED`: exited with this status.
    Exited(i32),
    /// `CLD_KILLED`: killed by this signal.
    Killed(i32),
    /// `CLD_DUMPED`: killed by this signal, and dumped core.
    Dumped(i32),
    /// Another `CLD_*` code (trapped, stopped, continued), with its status.
    Other {
        /// The `CLD_*` code.
        code: i32,
        /// The status that came with it.
        status: i32,
    },
}

/// `CLD_EXITED` from `<signal.h>`.
const CLD_EXITED: i32 = 1;
/// `CLD_KILLED` from `<signal.h>`.
const CLD_KILLED: i32 = 2;
/// `CLD_DUMPED` from `<signal.h>`.
const CLD_DUMPED: i32 = 3;

impl ExecMain {
    /// The `(CLD_* code, status)` pair this was decoded from.
    pub fn code_and_status(&self) -> (i32, i32) {
        match *self {
            ExecMain::NotExited => (0, 0),
            ExecMain::Exited(status) => (CLD_EXITED, status),
            ExecMain::Killed(signal) => (CLD_KILLED, signal),
            ExecMain::Dumped(signal) => (CLD_DUMPED, signal),
            ExecMain::Other { code, status } => (code, status),
        }
    }

    /// Decodes `ExecMainCode` and `ExecMainStatus`.
    pub fn from_code(code: i32, status: i32) -> ExecMain {
        match code {
            0 => ExecMain::NotExited,
            CLD_EXITED => ExecMain::Exited(status),
            CLD_KILLED => ExecMain::Killed(status),
            CLD_DUMPED => ExecMain::Dumped(status),
            code => ExecMain::Other { code, status },
        }
    }
}

/// What systemd reports about a unit at one moment.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct UnitStatus {
    /// The unit's primary name (`Id`).
    pub id: String,
    /// `LoadState`: `loaded`, `not-found`, `bad-setting`, `error`, `masked`...
    pub load_state: String,
    /// `ActiveState`.
    pub active_state: ActiveState,
    /// `SubState`, specific to the unit type: `running`, `exited`, `dead`, `auto-restart`...
    pub sub_state: String,
    /// What only services report; `None` for other unit types.
    pub service: Option<ServiceStatus>,
}

/// The `org.freedesktop.systemd1.Service` part of a [`UnitStatus`].
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct ServiceStatus {
    /// `Result`: `success`, `exit-code`, `signal`, `core-dump`, `timeout`, `start-limit-hit`...
    pub result: String,
    /// `MainPID` in the container's PID namespace, `None` when there is no main process.
    pub main_pid: Option<u32>,
    /// How the last main process ended.
    pub exec_main: ExecMain,
    /// `NRestarts`: automatic restarts since the unit was last started by hand.
    pub n_restarts: u32,
}

/// A change of one watched unit, with its status after the change.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct UnitChange {
    /// The unit name as given to [`crate::systemd::SystemdBus::watch`].
    pub unit: String,
    /// The unit's status read after systemd announced the change.
    pub status: UnitStatus,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cld_codes_decode_to_how_the_process_ended() {
        assert_eq!(ExecMain::from_code(0, 0), ExecMain::NotExited);
        assert_eq!(ExecMain::from_code(1, 3), ExecMain::Exited(3));
        assert_eq!(ExecMain::from_code(1, 0), ExecMain::Exited(0));
        assert_eq!(ExecMain::from_code(2, 9), ExecMain::Killed(9));
        assert_eq!(ExecMain::from_code(3, 11), ExecMain::Dumped(11));
        assert_eq!(
            ExecMain::from_code(5, 19),
            ExecMain::Other {
                code: 5,
                status: 19
            }
        );
    }

    #[test]
    fn active_states_round_trip_and_keep_unknown_ones() {
        for s in [
            "active",
            "reloading",
            "inactive",
            "failed",
            "activating",
            "deactivating",
            "maintenance",
            "refreshing",
        ] {
            let parsed = ActiveState::parse(s);
            assert!(!matches!(parsed, ActiveState::Other(_)), "{s}");
            assert_eq!(parsed.as_str(), s);
        }
        assert_eq!(
            ActiveState::parse("hibernating"),
            ActiveState::Other("hibernating".into())
        );
        assert_eq!(ActiveState::parse("failed").to_string(), "failed");
    }

    #[test]
    fn job_results_map_to_outcomes() {
        assert_eq!(JobOutcome::from_result("done"), JobOutcome::Done);
        assert_eq!(JobOutcome::from_result("failed"), JobOutcome::Failed);
        assert_eq!(JobOutcome::from_result("canceled"), JobOutcome::Canceled);
        assert_eq!(JobOutcome::from_result("timeout"), JobOutcome::Timeout);
        assert_eq!(
            JobOutcome::from_result("dependency"),
            JobOutcome::Dependency
        );
        assert_eq!(JobOutcome::from_result("skipped"), JobOutcome::Skipped);
        assert_eq!(JobOutcome::from_result("frozen"), JobOutcome::Frozen);
        assert_eq!(
            JobOutcome::from_result("Done"),
            JobOutcome::Other("Done".into()),
            "results are case-sensitive"
        );
        assert!(JobOutcome::Done.is_done());
        assert!(!JobOutcome::Skipped.is_done());
    }
}
