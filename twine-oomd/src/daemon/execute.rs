//! Carrying out a kill decision: the prekill hook with its timeout, then `cgroup.kill` or
//! SIGKILL for every pid.

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use nix::errno::Errno;
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use serde::Serialize;

use crate::cgroup::{Cgroup, CgroupError, CgroupRoot};
use crate::kill::{Kill, KillVia, PrekillHook};

/// How often a SIGKILL sweep is repeated before the daemon gives up on a cgroup that
/// keeps gaining processes (a fork bomb).
const SIGKILL_ROUNDS: usize = 20;

/// A kill the policy decided, and what became of it.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct KillRecord {
    /// Seconds since the daemon started (monotonic): the tick that decided the kill.
    pub time_s: f64,
    /// The rule that fired.
    pub rule: String,
    /// The victim, relative to the root.
    pub victim: String,
    /// Reported only, not carried out.
    pub dry_run: bool,
    /// The prekill hook's outcome: `exited with ...`, `killed after ...`, or why it could
    /// not run; `None` without a hook (or in a dry run).
    pub hook: Option<String>,
    /// `cgroup.kill`, or `SIGKILL` when that file is missing or the rule asks for it.
    pub via: Option<&'static str>,
    /// Why the kill failed, if it did.
    pub error: Option<String>,
}

/// Runs the hook and kills, unless the decision is a dry run (then only logs).
pub(crate) fn carry_out(root: &CgroupRoot, decision: &Kill, now: Duration) -> KillRecord {
    let mut record = KillRecord {
        time_s: now.as_secs_f64(),
        rule: decision.rule.clone(),
        victim: decision.kill.path.clone(),
        dry_run: decision.dry_run,
        hook: None,
        via: None,
        error: None,
    };
    if decision.dry_run {
        tracing::warn!(rule = %record.rule, victim = %record.victim, "dry run: would kill");
        return record;
    }
    let cgroup = match root.cgroup(&decision.kill.path) {
        Ok(cgroup) => cgroup,
        Err(error) => {
            record.error = Some(error.to_string());
            return record;
        }
    };
    if let Some(hook) = &decision.hook {
        let outcome = run_hook(hook, &cgroup);
        tracing::info!(victim = %record.victim, %outcome, "prekill hook");
        record.hook = Some(outcome);
    }
    let result = match decision.kill.via {
        KillVia::CgroupKill => match cgroup.kill() {
            Err(CgroupError::Write { source, .. })
                if source.kind() == std::io::ErrorKind::NotFound =>
            {
                tracing::info!(victim = %record.victim, "no cgroup.kill: SIGKILL per pid");
                sigkill_all(&cgroup).map(|()| "SIGKILL")
            }
            other => other.map(|()| "cgroup.kill"),
        },
        KillVia::Sigkill => sigkill_all(&cgroup).map(|()| "SIGKILL"),
    };
    match result {
        Ok(via) => {
            tracing::warn!(rule = %record.rule, victim = %record.victim, via, "killed cgroup");
            record.via = Some(via);
        }
        Err(error) => {
            tracing::error!(rule = %record.rule, victim = %record.victim, %error, "kill failed");
            record.error = Some(error.to_string());
        }
    }
    record
}

/// Runs `hook` with `TWINE_OOMD_VICTIM` set, killing it when it overruns its timeout.
fn run_hook(hook: &PrekillHook, victim: &Cgroup) -> String {
    let Some((program, args)) = hook.command.split_first() else {
        return "no command".into();
    };
    let spawned = Command::new(program)
        .args(args)
        .env("TWINE_OOMD_VICTIM", victim.relative())
        .stdin(Stdio::null())
        .spawn();
    let mut child = match spawned {
        Ok(child) => child,
        Err(e) => return format!("{program}: {e}"),
    };
    let deadline = Instant::now() + hook.timeout();
    loop {
        match child.try_wait() {
            Ok(Some(status)) => return format!("{program}: {status}"),
            Ok(None) if Instant::now() >= deadline => {
                let killed = child.kill().and_then(|()| child.wait());
                return match killed {
                    Ok(_) => format!("{program}: killed after {:?}", hook.timeout()),
                    Err(e) => format!("{program}: overran {:?}; kill: {e}", hook.timeout()),
                };
            }
            Ok(None) => std::thread::sleep(Duration::from_millis(10)),
            Err(e) => return format!("{program}: waiting: {e}"),
        }
    }
}

/// SIGKILL for every pid in `cgroup.procs`, repeated until it is empty (bounded).
fn sigkill_all(cgroup: &Cgroup) -> Result<(), CgroupError> {
    for _ in 0..SIGKILL_ROUNDS {
        let pids = cgroup.procs()?;
        if pids.is_empty() {
            return Ok(());
        }
        for pid in pids {
            let Ok(raw) = i32::try_from(pid) else {
                continue;
            };
            match kill(Pid::from_raw(raw), Signal::SIGKILL) {
                Ok(()) | Err(Errno::ESRCH) => {}
                Err(errno) => {
                    return Err(CgroupError::Write {
                        path: cgroup.path().join("cgroup.procs"),
                        value: format!("SIGKILL to pid {pid}"),
                        source: errno.into(),
                    });
                }
            }
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    Err(CgroupError::Write {
        path: cgroup.path().join("cgroup.procs"),
        value: "SIGKILL to every pid".into(),
        source: std::io::Error::other(format!("processes remain after {SIGKILL_ROUNDS} rounds")),
    })
}
