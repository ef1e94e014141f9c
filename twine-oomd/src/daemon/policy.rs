//! Running the kill policy each tick: a sample of every watched cgroup and its
//! descendants, the policy's verdict, and the decision handed to [`execute`](super::execute).

use std::collections::BTreeSet;
use std::time::Duration;

use super::host::Meminfo;
use super::{Daemon, KillRecord, execute};
use crate::cgroup::{Cgroup, CgroupError};
use crate::kill::{CgroupSample, Tick, Verdict};
use crate::psi::Resource;

impl Daemon {
    /// Runs the kill policy on a fresh sample of its watched cgroups and their descendants,
    /// found in `tree`: every cgroup below the root, parents first (`select::descendants`).
    pub(super) fn kill(
        &mut self,
        now: Duration,
        meminfo: &Meminfo,
        tree: &[Cgroup],
    ) -> Option<KillRecord> {
        let policy = self.policy.as_mut()?;
        let mut cgroups = Vec::new();
        let mut seen = BTreeSet::new();
        for watched in policy.watched() {
            for cgroup in tree {
                let Some(path) = cgroup.relative().to_str() else {
                    continue;
                };
                let below = path
                    .strip_prefix(watched)
                    .is_some_and(|rest| rest.is_empty() || rest.starts_with('/'));
                if below
                    && seen.insert(path.to_owned())
                    && let Some(sample) = sample(cgroup, path)
                {
                    cgroups.push(sample);
                }
            }
        }
        let tick = Tick {
            now,
            cgroups,
            swap_free: meminfo.swap_free,
            swap_total: meminfo.swap_total,
        };
        match policy.evaluate(&tick) {
            Verdict::Kill(kill) => Some(execute::carry_out(&self.options.root, &kill, now)),
            Verdict::NoVictim { rules } => {
                tracing::warn!(?rules, "kill rules fired but found no victim");
                None
            }
            _ => None,
        }
    }
}

/// A kill-policy sample of `cgroup`; `None` (logged) if it cannot be read.
fn sample(cgroup: &Cgroup, path: &str) -> Option<CgroupSample> {
    let read = || -> Result<CgroupSample, CgroupError> {
        let current = cgroup.memory_current()?;
        let full = cgroup.pressure(Resource::Memory)?.full;
        let (a10, a60, a300) = full.map_or((0.0, 0.0, 0.0), |f| (f.avg10, f.avg60, f.avg300));
        Ok(CgroupSample {
            path: path.to_owned(),
            current,
            full_avg10: f64::from(a10),
            full_avg60: f64::from(a60),
            full_avg300: f64::from(a300),
        })
    };
    read()
        .inspect_err(|error| tracing::debug!(%error, "kill policy: cgroup not sampled"))
        .ok()
}
