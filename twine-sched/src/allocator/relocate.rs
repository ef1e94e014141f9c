//! Moving one placed task to a host the caller names: what the ReBalancer and the drain
//! flows do, checked here against every rule a placement obeys, so a move can never
//! break capacity, GPU devices, hard requirements, quota or the job's limits, whoever
//! proposed it.

use super::ledger::{Moves, internal};
use super::search::Scope;
use super::{AllocError, Allocation, Allocator, Bookkeeping, Moved, Placement, TaskRecord};
use crate::explain::UnplacedReason;
use crate::fleet::HostId;
use crate::request::{JobId, Request, TaskId};
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

    /// Places the tasks of `req` on the hosts a store recorded for them, `hosts[i]` for
    /// the request's i-th task to allocate: what a scheduler does when it rebuilds its
    /// allocator from a snapshot of its store. Each is checked against every rule a
    /// placement obeys (capacity, GPU devices, hard requirements, quota, the job's
    /// per-host and per-rack limits). If one fails, the whole request is refused with
    /// [`AllocError::PlaceAtRefused`] naming the first, and nothing changes.
    ///
    /// ```
    /// use twine_sched::*;
    ///
    /// let mut alloc = Allocator::new(AllocatorConfig::default());
    /// let h = alloc.add_host(&HostSpec::new(Resources::new(8_000, 16_384)))?;
    /// let ent = alloc.add_entitlement("web", Quota::machines([("default", 1)]))?;
    /// let d = Demand { resources: Resources::new(4_000, 8_192), gpu: GpuDemand::None };
    /// let req = Request::new(ent, JobId(1)).allocate(TaskId(1), d).allocate(TaskId(2), d);
    /// let out = alloc.place_at(&req, &[h, h])?;
    /// assert_eq!(out.hosts_joined, [h]);
    /// let third = Request::new(ent, JobId(1)).allocate(TaskId(3), d);
    /// assert!(matches!(alloc.place_at(&third, &[h]), Err(AllocError::PlaceAtRefused { .. })));
    /// # Ok::<(), AllocError>(())
    /// ```
    pub fn place_at(&mut self, req: &Request, hosts: &[HostId]) -> Result<Allocation, AllocError> {
        if hosts.len() != req.allocate.len() || !req.free.is_empty() {
            return Err(AllocError::PlaceAtMismatch {
                tasks: req.allocate.len(),
                hosts: hosts.len(),
                frees: req.free.len(),
            });
        }
        self.entitlement(req.entitlement)?;
        if let Some(current) = self.jobs.get(&req.job).and_then(|j| j.entitlement)
            && current != req.entitlement
        {
            return Err(AllocError::JobInOtherEntitlement {
                job: req.job,
                current,
                requested: req.entitlement,
            });
        }
        let mut new = std::collections::BTreeSet::new();
        for &(t, d) in &req.allocate {
            super::validate_gpu(t, d.gpu)?;
            if self.tasks.contains_key(&t) || !new.insert(t) {
                return Err(AllocError::DuplicateTask(t));
            }
        }
        let cons = std::sync::Arc::new(super::Constraints::resolve(
            &req.requirements,
            req.preferences,
            &self.names,
        ));
        let mut out = Allocation::default();
        let mut moves = Moves::default();
        let empty = super::JobRecord::default();
        for (&(t, d), &h) in req.allocate.iter().zip(hosts) {
            let p = Placement {
                job: req.job,
                ent: req.entitlement,
                cons: &cons,
                demand: d,
            };
            let dest = self
                .hosts
                .get(h.0 as usize)
                .ok_or(AllocError::UnknownHost(h))?;
            let jr = self.jobs.get(&req.job).unwrap_or(&empty);
            let e = self.entitlement(req.entitlement)?;
            if let Some(reason) = self.first_failure(&p, jr, e, h, dest, None) {
                // Undo this request's placements, newest first, so nothing changed.
                for placed in out.placed.iter().rev() {
                    self.unassign(placed.task, &mut Moves::default())?;
                }
                return Err(AllocError::PlaceAtRefused {
                    task: t,
                    host: h,
                    reason: Box::new(reason),
                });
            }
            let gpus = self.commit(&p, t, h, &mut moves)?;
            out.placed.push(super::Placed {
                task: t,
                host: h,
                gpus,
            });
        }
        out.hosts_joined = moves.joined;
        out.hosts_released = moves.released;
        Ok(out)
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
