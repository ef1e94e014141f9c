//! The max-unavailable budget: what counts, and starting acked operations within it.

use std::collections::{BTreeSet, VecDeque};

use super::{Inconsistency, Started, State, TaskControl, TaskControlError};
use crate::request::TaskId;

impl TaskControl {
    /// How many tasks of the job are unavailable now (see [the budget](super#the-budget)).
    pub fn unavailable(&self) -> usize {
        let in_flight: BTreeSet<TaskId> = self
            .ops
            .values()
            .filter(|l| l.state == State::Started)
            .map(|l| l.op.task)
            .collect();
        let sick = self.unhealthy.iter().filter(|t| !in_flight.contains(t));
        let stopped = self
            .down
            .keys()
            .filter(|t| !in_flight.contains(t) && !self.unhealthy.contains(t));
        in_flight.len() + sick.count() + stopped.count()
    }

    /// Starts waiting operations in ack order while the budget allows, skipping those whose
    /// task a notice due at `now_ms` still covers.
    pub(super) fn start_waiting(&mut self, now_ms: u64) -> Result<Vec<Started>, TaskControlError> {
        let covered: BTreeSet<TaskId> = self
            .notices
            .values()
            .filter(|n| n.notice.deadline_ms <= now_ms)
            .flat_map(|n| n.remaining.iter().copied())
            .collect();
        // A budget beyond the address space is no budget.
        let budget = usize::try_from(self.policy.max_unavailable).unwrap_or(usize::MAX);
        let mut unavailable = self.unavailable();
        let mut started = Vec::new();
        let mut waiting = VecDeque::new();
        for id in std::mem::take(&mut self.queue) {
            let live = match self.ops.get_mut(&id) {
                Some(l) if l.state == State::Acked => l,
                _ => {
                    return Err(TaskControlError::Internal(Inconsistency::QueuedNotAcked(
                        id,
                    )));
                }
            };
            let task = live.op.task;
            let already = self.unhealthy.contains(&task) || self.down.contains_key(&task);
            if covered.contains(&task) || !(already || unavailable < budget) {
                waiting.push_back(id);
                continue;
            }
            live.state = State::Started;
            if !already {
                unavailable += 1;
            }
            if live.op.kind.leaves_host() {
                for n in self.notices.values_mut() {
                    n.remaining.remove(&task);
                }
            }
            started.push(Started { op: live.op });
        }
        self.queue = waiting;
        Ok(started)
    }
}
