//! Advance notices: posting them, and acting on their deadlines.

use std::collections::{BTreeMap, BTreeSet};

use super::protocol::Completion;
use super::{
    Forced, Inconsistency, Notice, NoticeId, OpenNotice, Outcome, State, TaskControl,
    TaskControlError, Tick,
};
use crate::request::TaskId;

impl TaskControl {
    /// Posts an advance notice; its deadline is acted on by the first [`tick`](Self::tick)
    /// at or after it (the next one, if it has passed already). Tasks with a Move or Stop in
    /// flight are handled already.
    ///
    /// Refused if an open notice has its id, or it lists a task twice.
    pub fn notice(&mut self, notice: Notice) -> Result<(), TaskControlError> {
        if self.notices.contains_key(&notice.id) {
            return Err(TaskControlError::DuplicateNotice(notice.id));
        }
        let mut remaining = BTreeSet::new();
        for &task in &notice.tasks {
            if !remaining.insert(task) {
                return Err(TaskControlError::NoticeTaskTwice {
                    notice: notice.id,
                    task,
                });
            }
        }
        let handled: Vec<TaskId> = self
            .ops
            .values()
            .filter(|l| l.state == State::Started && l.op.kind.leaves_host())
            .map(|l| l.op.task)
            .collect();
        for task in handled {
            remaining.remove(&task);
        }
        self.notices
            .insert(notice.id, OpenNotice { notice, remaining });
        Ok(())
    }

    /// Time passes to `now_ms`: every notice whose deadline is at or before it
    /// force-stops its remaining tasks (see [advance notices](super#advance-notices)), then
    /// waiting operations start as the budget allows.
    ///
    /// Refused if time went back.
    pub fn tick(&mut self, now_ms: u64) -> Result<Tick, TaskControlError> {
        self.check_time(now_ms)?;
        self.last_ms = now_ms;
        let (mut due, open): (Vec<OpenNotice>, BTreeMap<NoticeId, OpenNotice>) = {
            let mut due = Vec::new();
            let mut open = BTreeMap::new();
            for (id, n) in std::mem::take(&mut self.notices) {
                if n.notice.deadline_ms <= now_ms {
                    due.push(n);
                } else {
                    open.insert(id, n);
                }
            }
            (due, open)
        };
        self.notices = open;
        due.sort_by_key(|n| (n.notice.deadline_ms, n.notice.id));
        let mut forced = Vec::new();
        for n in due {
            let notice = n.notice.id;
            for task in n.remaining {
                if self.down.contains_key(&task) {
                    continue;
                }
                self.withdraw(task, notice)?;
                self.down.insert(task, notice);
                forced.push(Forced { task, notice });
            }
        }
        let started = self.start_waiting(now_ms)?;
        Ok(Tick { forced, started })
    }

    /// Ends the outstanding operation of a task being force-stopped, if it has one.
    pub(super) fn withdraw(
        &mut self,
        task: TaskId,
        notice: NoticeId,
    ) -> Result<(), TaskControlError> {
        let Some(id) = self.busy.remove(&task) else {
            return Ok(());
        };
        let live = self.ops.remove(&id).ok_or(TaskControlError::Internal(
            Inconsistency::BusyWithoutOp { task, op: id },
        ))?;
        if live.state == State::Acked {
            self.queue.retain(|&q| q != id);
        }
        self.ended.push(Completion {
            op: live.op,
            outcome: Outcome::Withdrawn { notice },
        });
        Ok(())
    }
}
