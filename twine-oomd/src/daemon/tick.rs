//! One cgroup's tick: what the controller observes in a snapshot, the step and its action
//! (`memory.reclaim` at once, `memory.high` queued), the state file written before a first
//! `memory.high` write, and the batch of a tick's `memory.high` writes.

use std::time::Duration;

use super::host::Meminfo;
use super::state_file::Originals;
use super::{Daemon, Options, Record, Watched, empty_record, limit_bytes};
use crate::cgroup::{Cgroup, CgroupError};
use crate::memory::{Limit, LimitFile, MemorySnapshot};
use crate::senpai::{Action, Cause, MemoryStat, Observation, SenpaiState, step};

/// A `memory.high` write decided in a tick, carried out after every cgroup has stepped.
#[derive(Debug)]
pub(super) struct HighWrite {
    cgroup: Cgroup,
    bytes: u64,
    /// The controller state before the step, for when the write fails.
    before: SenpaiState,
}

/// What every cgroup's tick shares.
pub(super) struct TickContext<'a> {
    pub(super) now: Duration,
    pub(super) meminfo: &'a Meminfo,
    pub(super) page_size: u64,
}

impl Daemon {
    /// Carries out this tick's `memory.high` writes, all queued at once on the writer
    /// thread, and settles each controller with the outcome.
    pub(super) fn write_highs(
        &mut self,
        writes: Vec<(usize, String, HighWrite)>,
        records: &mut [Record],
    ) {
        if writes.is_empty() {
            return;
        }
        let jobs: Vec<_> = writes
            .iter()
            .map(|(_, _, w)| (&w.cgroup, LimitFile::High, Limit::Bytes(w.bytes)))
            .collect();
        let results = self.writer.write_all(&jobs, self.options.write_timeout);
        for ((index, rel, write), result) in writes.into_iter().zip(results) {
            let Some(watched) = self.watched.get_mut(&rel) else {
                continue;
            };
            let error = match result {
                Ok(()) => continue,
                Err(error @ CgroupError::TimedOut { .. }) => {
                    // It may land later: the next read of memory.high tells which state holds.
                    let after = std::mem::replace(&mut watched.state, write.before);
                    watched.pending = Some((after, write.bytes));
                    error.to_string()
                }
                Err(error) => {
                    // Undone, so that it does not look like an external edit next tick
                    // (which would make the daemon's own value the original).
                    watched.state = write.before;
                    format!("{error}; the step is undone")
                }
            };
            tracing::warn!(cgroup = %rel, %error, "memory.high write failed");
            if let Some(record) = records.get_mut(index) {
                record.error = Some(error);
            }
        }
    }
}

/// What the controller sees in a snapshot.
fn observe(snap: &MemorySnapshot, at: &TickContext<'_>, swap_max_zero: bool) -> Observation {
    let (meminfo, page_size) = (at.meminfo, at.page_size);
    let some = &snap.pressure.some;
    Observation {
        now: at.now,
        current: snap.current,
        high: limit_bytes(snap.high),
        max: limit_bytes(snap.max),
        min: limit_bytes(snap.min).unwrap_or(u64::MAX),
        mem_total: Some(meminfo.mem_total),
        some_total_us: some.total_us,
        some_avg10: f64::from(some.avg10),
        some_avg60: f64::from(some.avg60),
        stat: MemoryStat {
            active_file: snap.active_file,
            inactive_file: snap.inactive_file,
            active_anon: snap.active_anon,
            inactive_anon: snap.inactive_anon,
        },
        swap_free: meminfo.swap_free,
        swap_usable: meminfo.swap_total > 0 && !swap_max_zero,
        page_size,
    }
}

/// One cgroup's tick: read, step, act. `Err` only when nothing could be read.
pub(super) fn tick_one(
    rel: &str,
    w: &mut Watched,
    at: &TickContext<'_>,
    options: &Options,
    originals: &mut Originals,
) -> Result<(Record, Option<HighWrite>), CgroupError> {
    let snap = w.reader.read()?;
    w.settle(snap.high);
    let now = at.now;
    let obs = observe(&snap, at, w.swap_max_zero);
    let mut record = empty_record(now, rel, w.senpai.mode);
    record.current = Some(snap.current);
    record.high = Some(snap.high);
    record.some_total_us = Some(obs.some_total_us);
    record.some_delta_us = w
        .last_total
        .map(|last| obs.some_total_us.saturating_sub(last));
    record.some_avg10 = Some(snap.pressure.some.avg10);
    w.last_total = Some(obs.some_total_us);
    let (next, decision) = step(&w.state, &obs, &w.senpai);
    let before = std::mem::replace(&mut w.state, next);
    let decision = match decision {
        Ok(decision) => decision,
        Err(error) => {
            tracing::warn!(cgroup = %rel, %error, "observation skipped");
            record.error = Some(error.to_string());
            return Ok((record, None));
        }
    };
    record.cause = Some(decision.cause);
    record.action = decision.action;
    let mut write = None;
    let done = match decision.action {
        Action::SetHigh(bytes) => {
            persist_original(rel, &w.state, decision.cause, originals).map(|()| {
                write = Some(HighWrite {
                    cgroup: w.cgroup.clone(),
                    bytes,
                    before: before.clone(),
                });
            })
        }
        Action::Reclaim(bytes) => reclaim(&w.cgroup, bytes, options.reclaim_retries),
        Action::None | Action::RestoreHigh(_) => Ok(()),
    };
    if let Err(error) = done {
        tracing::warn!(cgroup = %rel, action = ?decision.action, %error, "action failed");
        record.error = Some(error);
        if matches!(decision.action, Action::SetHigh(_)) {
            w.state = before; // nothing written: as if the step had not happened
        }
    } else if decision.action != Action::None {
        tracing::debug!(cgroup = %rel, action = ?decision.action, cause = ?decision.cause, "acted");
    }
    Ok((record, write))
}

/// Records the original `memory.high` in the state file before the first write: on
/// [`Cause::Init`] a predecessor's original wins; on [`Cause::ExternalEdit`] the edited
/// value is the new original.
fn persist_original(
    rel: &str,
    state: &SenpaiState,
    cause: Cause,
    originals: &mut Originals,
) -> Result<(), String> {
    let Some(original) = state.original() else {
        return Ok(());
    };
    let changed = match cause {
        Cause::ExternalEdit => originals.insert(rel, original),
        _ if originals.get(rel).is_none() => originals.insert(rel, original),
        _ => false,
    };
    if changed {
        originals
            .save()
            .map_err(|e| format!("{e}; memory.high left alone"))?;
    }
    Ok(())
}

/// Writes `memory.reclaim`, trying again up to `retries` times when the kernel reclaimed
/// less than asked (EAGAIN, EBUSY).
fn reclaim(cgroup: &Cgroup, bytes: u64, retries: u32) -> Result<(), String> {
    let mut attempt = 0;
    loop {
        match cgroup.reclaim(bytes) {
            Err(CgroupError::ReclaimShort { .. }) if attempt < retries => {
                attempt += 1;
                tracing::debug!(cgroup = %cgroup.path().display(), attempt, "memory.reclaim short; retrying");
            }
            other => return other.map_err(|e| e.to_string()),
        }
    }
}
