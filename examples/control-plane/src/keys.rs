//! The key layout. Every key lives under [`ROOT`]; one prefix per kind of watcher, so
//! an agent watches only its own assignments and a scheduler never sees status churn.
//!
//! ```text
//! /twine/v1/fleet                          fleet record (shape, host count)        admin, once
//! /twine/v1/hosts/<host>/info              host inventory (capacity, fault domain) admin, once
//! /twine/v1/hosts/<host>/owner             "free" or an entitlement name           CAS target
//! /twine/v1/hosts/<host>/drain             drain record (draining, drained)        drain; leader
//! /twine/v1/ents/<ent>/spec                entitlement record (quota)              admin
//! /twine/v1/ents/<ent>/leader              scheduler name, on its session lease    FENCE KEY
//! /twine/v1/ents/<ent>/jobs/<job>          job record (the spec and its demand)    submit
//! /twine/v1/ents/<ent>/tasks/<job>/<i>     task record (host, demand, writer)      scheduler
//! /twine/v1/assign/<host>/<job>/<i>        what the host's agent runs              scheduler
//! /twine/v1/status/<host>/<job>/<i>        what the agent reports                  agent
//! /twine/v1/taskcontrol/<ent>/<job>/<op>   TaskControl operation offered to a job  scheduler
//! /twine/v1/taskcontrol/<ent>/<job>/<op>/ack  the job's controller approves it     controller
//! /twine/v1/scheds/<name>                  live scheduler, on its session lease    scheduler
//! ```
//!
//! Names in keys are checked by [`check_name`] where they enter (fleet init, entitlement
//! add, submit, scheduler start): a name can never carry a `/` into the layout.

use std::fmt;

/// The prefix of every key.
pub const ROOT: &str = "/twine/v1/";
/// The fleet record.
pub const FLEET: &str = "/twine/v1/fleet";
/// Hosts.
pub const HOSTS: &str = "/twine/v1/hosts/";
/// Entitlements, their jobs and tasks.
pub const ENTS: &str = "/twine/v1/ents/";
/// Assignments, per host.
pub const ASSIGN: &str = "/twine/v1/assign/";
/// Agent status, per host.
pub const STATUS: &str = "/twine/v1/status/";
/// TaskControl operations.
pub const TASKCONTROL: &str = "/twine/v1/taskcontrol/";
/// Live schedulers.
pub const SCHEDS: &str = "/twine/v1/scheds/";

/// The value of a host's owner key while it is in the free pool.
pub const FREE: &str = "free";

/// A host's inventory.
pub fn host_info(host: &str) -> String {
    format!("{HOSTS}{host}/info")
}
/// A host's owner: [`FREE`] or an entitlement.
pub fn host_owner(host: &str) -> String {
    format!("{HOSTS}{host}/owner")
}
/// A host's drain record, while it is draining or once it is drained.
pub fn host_drain(host: &str) -> String {
    format!("{HOSTS}{host}/drain")
}
/// An entitlement's record.
pub fn ent_spec(ent: &str) -> String {
    format!("{ENTS}{ent}/spec")
}
/// The fence key: the scheduler leading an entitlement.
pub fn ent_leader(ent: &str) -> String {
    format!("{ENTS}{ent}/leader")
}
/// The jobs of an entitlement.
pub fn ent_jobs(ent: &str) -> String {
    format!("{ENTS}{ent}/jobs/")
}
/// One job.
pub fn job(ent: &str, job: &str) -> String {
    format!("{ENTS}{ent}/jobs/{job}")
}
/// The task records of an entitlement.
pub fn ent_tasks(ent: &str) -> String {
    format!("{ENTS}{ent}/tasks/")
}
/// One task record.
pub fn task(ent: &str, job: &str, index: u32) -> String {
    format!("{ENTS}{ent}/tasks/{job}/{index}")
}
/// A host's assignments.
pub fn host_assign(host: &str) -> String {
    format!("{ASSIGN}{host}/")
}
/// One assignment.
pub fn assign(host: &str, job: &str, index: u32) -> String {
    format!("{ASSIGN}{host}/{job}/{index}")
}
/// One status report.
pub fn status(host: &str, job: &str, index: u32) -> String {
    format!("{STATUS}{host}/{job}/{index}")
}
/// A live scheduler.
pub fn sched(name: &str) -> String {
    format!("{SCHEDS}{name}")
}
/// The TaskControl operations of a job.
pub fn taskcontrol(ent: &str, job: &str) -> String {
    format!("{TASKCONTROL}{ent}/{job}/")
}

/// One TaskControl operation of a job.
pub fn taskcontrol_op(ent: &str, job: &str, op: &str) -> String {
    format!("{TASKCONTROL}{ent}/{job}/{op}")
}
/// The ack of one TaskControl operation (written by the job's controller).
pub fn taskcontrol_ack(ent: &str, job: &str, op: &str) -> String {
    format!("{TASKCONTROL}{ent}/{job}/{op}/ack")
}

/// The parts of a key under a prefix: `split("/a/", "/a/x/y") == Some(["x", "y"])`.
pub fn split<'a>(prefix: &str, key: &'a str) -> Option<Vec<&'a str>> {
    key.strip_prefix(prefix)
        .map(|rest| rest.split('/').collect())
}

/// A name that may not go into a key.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{what} {value:?}: {why}")]
pub struct BadName {
    /// What the name names (`entitlement`, `job`, `scheduler`, `host`).
    pub what: &'static str,
    /// The name.
    pub value: String,
    /// Why it is refused.
    pub why: &'static str,
}

/// Checks a name for use as one key segment: 1 to 63 characters of ASCII letters,
/// digits, `-`, `_` and `.`, not starting with `.` (so never `.` or `..`).
pub fn check_name(what: &'static str, value: &str) -> Result<(), BadName> {
    let bad = |why| {
        Err(BadName {
            what,
            value: value.to_owned(),
            why,
        })
    };
    if value.is_empty() || value.len() > 63 {
        return bad("must be 1 to 63 characters");
    }
    if value.starts_with('.') {
        return bad("must not start with '.'");
    }
    if !value
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
    {
        return bad("may hold only ASCII letters, digits, '-', '_' and '.'");
    }
    Ok(())
}

/// A task's id as `dump` prints it: `<job>/<index>`.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct TaskName {
    /// The job.
    pub job: String,
    /// The replica index.
    pub index: u32,
}

impl fmt::Display for TaskName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.job, self.index)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_cannot_escape_their_segment() {
        for bad in ["", ".", "..", "a/b", "a b", "é", &"x".repeat(64), ".hidden"] {
            assert!(check_name("job", bad).is_err(), "{bad:?}");
        }
        for good in ["web", "ads-frontend", "a_b.c", "h00001"] {
            assert_eq!(check_name("job", good), Ok(()));
        }
    }

    #[test]
    fn split_reads_the_layout_back() {
        assert_eq!(
            split(ENTS, &task("ads", "web", 3)),
            Some(vec!["ads", "tasks", "web", "3"])
        );
        assert_eq!(split(HOSTS, "/other/x"), None);
    }
}
