//! Moving one placed task to a host the caller names: what the ReBalancer and the drain
//! flows do, checked here against every rule a placement obeys, so a move can never
//! break capacity, GPU devices, hard requirements, quota or the job's limits, whoever
//! proposed it.

use super::ledger::{Moves, internal};
use super::search::Scope;
use super::{AllocError, Allocator, Bookkeeping, Moved, Placement, TaskRecord};
use crate::explain::UnplacedReason;
use crate::fleet::HostId;
use crate::request::{JobId, TaskId};
use crate::resources::{Demand, GpuGrant};

/// A placed task, read-only.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TaskView<'a> {
    /// Where it runs.
    pub host: HostId,
    /// Its job.
    pub job: JobId,
    /// What it holds.
    pub demand: Demand,
    /// The GPU devices it holds.
    pub gpus: &'a GpuGrant,
}

/// The outcome of [`Allocator::move_task`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Relocated {
    /// Where from and where to, with the devices it holds there.
    pub moved: Moved,
    /// The destination, if it joined the entitlement from the free pool.
    pub host_joined: Option<HostId>,
    /// The source, if the move emptied it and it went back to the free pool.
    pub host_released: Option<HostId>,
}

impl Allocator {
    /// A placed task: its host, job, demand and GPU devices.
    pub fn task_view(&self, task: TaskId) -> Result<TaskView<'_>, AllocError> {
        let t = self.tasks.get(&task).ok_or(AllocError::UnknownTask(task))?;
        Ok(TaskView {
            host: t.host,
            job: t.job,
            demand: t.demand,
            gpus: &t.grant,
        })
    }

    /// Moves a placed task to host `to`, under the rules it was placed with. Refused
    /// with [`AllocError::MoveRefused`] naming the first rule `to` fails (the same
    /// checks, in the same order, as a placement); nothing changes then.
    pub fn move_task(&mut self, task: TaskId, to: HostId) -> Result<Relocated, AllocError> {
        if let Some(reason) = self.move_refusal(task, to)? {
            return Err(AllocError::MoveRefused {
                task,
                to,
                reason: Box::new(reason),
            });
        }
        let rec = self.record(task)?.clone();
        let p = self.placement_of(&rec)?;
        let mut moves = Moves::default();
        self.unassign(task, &mut moves)?;
        let gpus = self.commit(&p, task, to, &mut moves)?;
        let one = |v: Vec<HostId>| match v.as_slice() {
            [] => Ok(None),
            [h] => Ok(Some(*h)),
            _ => Err(internal(to)(Bookkeeping::SeveralOwnerChanges(task))),
        };
        Ok(Relocated {
            moved: Moved {
                task,
                from: rec.host,
                to,
                gpus,
            },
            host_joined: one(moves.joined)?,
            host_released: one(moves.released)?,
        })
    }

    /// Undoes a move of this round's scratch work: puts `task` back on `host` with
    /// exactly the devices `grant` it held there. Only for undoing moves made off `host`
    /// (which then has that room free again); anything else is an internal error.
    pub(crate) fn undo_move(
        &mut self,
        task: TaskId,
        host: HostId,
        grant: &GpuGrant,
    ) -> Result<(), AllocError> {
        let rec = self.record(task)?.clone();
        let p = self.placement_of(&rec)?;
        let mut moves = Moves::default();
        self.unassign(task, &mut moves)?;
        self.commit_with(&p, task, host, &mut moves, Some(grant))?;
        Ok(())
    }

    /// Why [`move_task`](Self::move_task) would refuse to move `task` to `to` now, or
    /// `None` if it would make the move; nothing changes. Solvers that weigh many
    /// candidate moves at once ask this once per pair.
    pub(crate) fn move_refusal(
        &self,
        task: TaskId,
        to: HostId,
    ) -> Result<Option<UnplacedReason>, AllocError> {
        let rec = self.record(task)?;
        if rec.host == to {
            return Err(AllocError::MoveToSameHost { task, host: to });
        }
        let dest = self
            .hosts
            .get(to.0 as usize)
            .ok_or(AllocError::UnknownHost(to))?;
        let from = self
            .hosts
            .get(rec.host.0 as usize)
            .ok_or(AllocError::Internal {
                host: rec.host,
                what: Bookkeeping::TaskRecordMissing(task),
            })?;
        let p = self.placement_of(rec)?;
        let jr = self.jobs.get(&rec.job).ok_or(AllocError::Internal {
            host: rec.host,
            what: Bookkeeping::JobRecordMissing(rec.job),
        })?;
        let e = self.entitlement(p.ent)?;
        Ok(self.first_failure(&p, jr, e, to, dest, Some(from)))
    }

    fn record(&self, task: TaskId) -> Result<&TaskRecord, AllocError> {
        self.tasks.get(&task).ok_or(AllocError::UnknownTask(task))
    }

    /// The placement a task was made under: its job, entitlement, rules and demand.
    fn placement_of<'a>(&self, rec: &'a TaskRecord) -> Result<Placement<'a>, AllocError> {
        Ok(Placement {
            job: rec.job,
            ent: self.job_entitlement(rec.host, rec.job)?,
            cons: &rec.constraints,
            demand: rec.demand,
        })
    }

    /// The best host that would take the task, by the rules and the policy it was
    /// placed with: of its entitlement, or with `free_pool` also from the pool within
    /// quota; never its own host, never one `exclude` names. `None` if there is none.
    pub(crate) fn move_target(
        &self,
        task: TaskId,
        free_pool: bool,
        exclude: &dyn Fn(HostId) -> bool,
    ) -> Result<Option<HostId>, AllocError> {
        let rec = self.record(task)?;
        let p = self.placement_of(rec)?;
        self.choose_in(
            &p,
            Some(rec.host),
            Scope {
                free_pool,
                exclude: Some(exclude),
            },
        )
    }
}
