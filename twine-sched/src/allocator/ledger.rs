//! The task and job ledger: what each placed task holds and each job counts, and the
//! bookkeeping that moves a task on or off a host. Every step checks the books it
//! relies on and answers [`AllocError::Internal`] when they disagree, instead of
//! falling back to a quietly wrong fleet.

use std::collections::HashMap;
use std::hash::Hash;
use std::sync::Arc;

use super::{AllocError, Allocator, Bookkeeping, Placement};
use crate::entitlement::EntitlementId;
use crate::fleet::{Host, HostId, HostState, Name, Owner};
use crate::request::{Constraints, JobId, TaskId};
use crate::resources::{Demand, GpuGrant, Resources};

/// A placed task.
#[derive(Debug, Clone)]
pub(crate) struct TaskRecord {
    pub(crate) host: HostId,
    pub(crate) job: JobId,
    pub(crate) demand: Demand,
    pub(crate) grant: GpuGrant,
    /// The rules it was placed under, kept to re-place it after a failure or drain.
    pub(crate) constraints: Arc<Constraints>,
}

/// A job's running counts, for spread and the per-host and per-rack limits.
#[derive(Debug, Clone, Default)]
pub(crate) struct JobRecord {
    pub(crate) entitlement: Option<EntitlementId>,
    pub(crate) tasks: u32,
    pub(crate) per_host: HashMap<HostId, u32>,
    pub(crate) per_domain: [HashMap<Name, u32>; 4],
}

impl JobRecord {
    /// Tasks of the job on `h` (none if absent).
    pub(crate) fn on_host(&self, h: HostId) -> u32 {
        self.per_host.get(&h).copied().unwrap_or(0)
    }
    /// Tasks of the job in domain `d` at `level` (none if absent).
    pub(crate) fn in_domain(&self, level: usize, d: Name) -> u32 {
        self.per_domain
            .get(level)
            .and_then(|m| m.get(&d))
            .copied()
            .unwrap_or(0)
    }
}

/// Host ownership changes collected during one call.
#[derive(Debug, Default)]
pub(crate) struct Moves {
    pub(crate) joined: Vec<HostId>,
    pub(crate) released: Vec<HostId>,
}

/// An internal error on `host`.
pub(super) fn internal(host: HostId) -> impl FnOnce(Bookkeeping) -> AllocError {
    move |what| AllocError::Internal { host, what }
}

impl Host {
    /// Takes `demand` off the free capacity and devices; the host is unchanged on error.
    pub(super) fn take(&mut self, demand: &Demand) -> Result<GpuGrant, Bookkeeping> {
        let free = self
            .free
            .checked_sub(&demand.resources)
            .ok_or(Bookkeeping::FreeBelowDemand)?;
        let grant = self.gpus.take(demand.gpu).ok_or(Bookkeeping::GpuRefused)?;
        self.free = free;
        Ok(grant)
    }

    /// Takes `demand` with exactly the devices of `grant`; the host is unchanged on error.
    pub(super) fn take_exact(
        &mut self,
        demand: &Demand,
        grant: &GpuGrant,
    ) -> Result<GpuGrant, Bookkeeping> {
        let free = self
            .free
            .checked_sub(&demand.resources)
            .ok_or(Bookkeeping::FreeBelowDemand)?;
        self.gpus.take_exact(grant).ok_or(Bookkeeping::GpuRefused)?;
        self.free = free;
        Ok(grant.clone())
    }

    /// Gives back what a task held; the host is unchanged on error.
    pub(super) fn give(&mut self, held: &Resources, grant: &GpuGrant) -> Result<(), Bookkeeping> {
        let free = self
            .free
            .checked_add(held)
            .filter(|f| f.fits_in(&self.capacity))
            .ok_or(Bookkeeping::FreeAboveCapacity)?;
        self.gpus
            .give_back(grant)
            .map_err(|_| Bookkeeping::GpuGrantMismatch)?;
        self.free = free;
        Ok(())
    }
}

impl Allocator {
    /// Changes a host under the index: takes it out, applies `change`, and puts it back
    /// where its (possibly new) class and free capacity say, even if `change` failed.
    pub(super) fn update_host<R>(
        &mut self,
        id: HostId,
        change: impl FnOnce(&mut Host) -> Result<R, Bookkeeping>,
    ) -> Result<R, AllocError> {
        let (hosts, index) = (&mut self.hosts, &mut self.index);
        let h = hosts
            .get_mut(id.0 as usize)
            .ok_or(AllocError::UnknownHost(id))?;
        index.remove(id, h).map_err(internal(id))?;
        let out = change(h);
        index.insert(id, h).map_err(internal(id))?;
        out.map_err(internal(id))
    }

    pub(super) fn set_state(&mut self, id: HostId, state: HostState) -> Result<(), AllocError> {
        self.update_host(id, |h| {
            h.state = state;
            Ok(())
        })
    }

    /// The entitlement of `job`, which has a task on `host`.
    pub(crate) fn job_entitlement(
        &self,
        host: HostId,
        job: JobId,
    ) -> Result<EntitlementId, AllocError> {
        self.jobs
            .get(&job)
            .and_then(|j| j.entitlement)
            .ok_or(AllocError::Internal {
                host,
                what: Bookkeeping::JobRecordMissing(job),
            })
    }

    /// Puts a task on a host `choose` picked.
    pub(super) fn commit(
        &mut self,
        p: &Placement<'_>,
        task: TaskId,
        id: HostId,
        moves: &mut Moves,
    ) -> Result<GpuGrant, AllocError> {
        self.commit_with(p, task, id, moves, None)
    }

    /// [`commit`](Self::commit), with exactly the devices of `exact` if given.
    pub(super) fn commit_with(
        &mut self,
        p: &Placement<'_>,
        task: TaskId,
        id: HostId,
        moves: &mut Moves,
        exact: Option<&GpuGrant>,
    ) -> Result<GpuGrant, AllocError> {
        let ent = p.ent;
        let (grant, joined) = self.update_host(id, |h| {
            let grant = match exact {
                Some(g) => h.take_exact(&p.demand, g)?,
                None => h.take(&p.demand)?,
            };
            let joined = h.owner == Owner::FreePool;
            if joined {
                h.owner = Owner::Entitlement(ent);
            }
            h.tasks.push(task);
            Ok((grant, joined))
        })?;
        let h = self
            .hosts
            .get(id.0 as usize)
            .ok_or(AllocError::UnknownHost(id))?;
        if joined {
            self.entitlements
                .get_mut(ent.0 as usize)
                .ok_or(AllocError::UnknownEntitlement(ent))?
                .add(id, h);
            moves.joined.push(id);
        }
        let jr = self.jobs.entry(p.job).or_default();
        jr.entitlement = Some(ent);
        jr.tasks += 1;
        *jr.per_host.entry(id).or_insert(0) += 1;
        for (level, d) in h.domains.iter().enumerate() {
            *jr.per_domain[level].entry(*d).or_insert(0) += 1;
        }
        self.tasks.insert(
            task,
            TaskRecord {
                host: id,
                job: p.job,
                demand: p.demand,
                grant: grant.clone(),
                constraints: Arc::clone(p.cons),
            },
        );
        Ok(grant)
    }

    /// Takes a task off its host; an emptied host goes back to the free pool.
    pub(super) fn unassign(
        &mut self,
        task: TaskId,
        moves: &mut Moves,
    ) -> Result<TaskRecord, AllocError> {
        let rec = self
            .tasks
            .remove(&task)
            .ok_or(AllocError::UnknownTask(task))?;
        let id = rec.host;
        let domains = self.update_host(id, |h| {
            let pos = h
                .tasks
                .iter()
                .position(|&t| t == task)
                .ok_or(Bookkeeping::TaskNotOnHost(task))?;
            h.give(&rec.demand.resources, &rec.grant)?;
            h.tasks.swap_remove(pos);
            Ok(h.domains)
        })?;
        let miss = |what| AllocError::Internal { host: id, what };
        let jr = self
            .jobs
            .get_mut(&rec.job)
            .ok_or(miss(Bookkeeping::JobRecordMissing(rec.job)))?;
        let counted = match jr.tasks.checked_sub(1) {
            Some(n) => {
                jr.tasks = n;
                decrement(&mut jr.per_host, id)
                    && domains
                        .iter()
                        .zip(&mut jr.per_domain)
                        .all(|(d, m)| decrement(m, *d))
            }
            None => false,
        };
        if !counted {
            return Err(miss(Bookkeeping::JobCountMissing(rec.job)));
        }
        if jr.tasks == 0 {
            self.jobs.remove(&rec.job);
        }
        self.release_if_empty(id, moves)?;
        Ok(rec)
    }

    /// An entitlement's host with no task left goes back to the free pool.
    pub(super) fn release_if_empty(
        &mut self,
        id: HostId,
        moves: &mut Moves,
    ) -> Result<(), AllocError> {
        let h = self
            .hosts
            .get(id.0 as usize)
            .ok_or(AllocError::UnknownHost(id))?;
        let Owner::Entitlement(ent) = h.owner else {
            return Ok(());
        };
        if !h.tasks.is_empty() {
            return Ok(());
        }
        self.entitlements
            .get_mut(ent.0 as usize)
            .ok_or(Bookkeeping::EntitlementMissingHost)
            .and_then(|e| e.remove(id, h))
            .map_err(internal(id))?;
        self.update_host(id, |h| {
            h.owner = Owner::FreePool;
            Ok(())
        })?;
        moves.released.push(id);
        Ok(())
    }
}

/// Counts one fewer of `k`, dropping it at zero; false if `k` had no count.
fn decrement<K: Hash + Eq>(m: &mut HashMap<K, u32>, k: K) -> bool {
    let Some(left) = m.get(&k).and_then(|n| n.checked_sub(1)) else {
        return false;
    };
    if left == 0 {
        m.remove(&k);
    } else {
        m.insert(k, left);
    }
    true
}

/// Each internal error is reached by corrupting the books the way a bug would.
#[cfg(test)]
mod tests {
    use super::*;
    use crate::index::FreeKey;
    use crate::request::{Preferences, Request, Requirements};
    use crate::{AllocatorConfig, GpuDemand, HostSpec, Quota};

    fn demand(cpu: u64) -> Demand {
        Demand {
            resources: Resources::new(cpu, 1),
            gpu: GpuDemand::None,
        }
    }

    /// One host of 10 cores, one entitlement, task 1 (4 cores) placed on it.
    fn fleet() -> (Allocator, EntitlementId, HostId) {
        let mut a = Allocator::new(AllocatorConfig::default());
        let ent = a
            .add_entitlement("e", Quota::Units(Resources::new(100_000, 100_000)))
            .expect("first entitlement");
        let h = a
            .add_host(&HostSpec::new(Resources::new(10_000, 10_000)))
            .expect("first host");
        let out = a
            .apply(&Request::new(ent, JobId(1)).allocate(TaskId(1), demand(4_000)))
            .expect("valid request");
        assert_eq!(out.placed.len(), 1);
        (a, ent, h)
    }

    fn broken(host: HostId, what: Bookkeeping) -> Result<(), AllocError> {
        Err(AllocError::Internal { host, what })
    }

    fn free_task_1(a: &mut Allocator, ent: EntitlementId) -> Result<(), AllocError> {
        a.apply(&Request::new(ent, JobId(1)).free(TaskId(1)))
            .map(drop)
    }

    #[test]
    fn commit_onto_a_host_without_room() {
        let (mut a, ent, h) = fleet();
        let cons = Arc::new(Constraints::resolve(
            &Requirements::default(),
            Preferences::default(),
            &a.names,
        ));
        let mut p = Placement {
            job: JobId(1),
            ent,
            cons: &cons,
            demand: demand(7_000),
        };
        let mut moves = Moves::default();
        let r = a.commit(&p, TaskId(2), h, &mut moves).map(drop);
        assert_eq!(r, broken(h, Bookkeeping::FreeBelowDemand));
        p.demand.gpu = GpuDemand::Whole(1);
        p.demand.resources = Resources::new(1, 1);
        let r = a.commit(&p, TaskId(2), h, &mut moves).map(drop);
        assert_eq!(r, broken(h, Bookkeeping::GpuRefused));
    }

    #[test]
    fn free_capacity_above_capacity() {
        let (mut a, ent, h) = fleet();
        a.update_host(h, |host| {
            host.free = host.capacity;
            Ok(())
        })
        .expect("host exists");
        let r = free_task_1(&mut a, ent);
        assert_eq!(r, broken(h, Bookkeeping::FreeAboveCapacity));
    }

    #[test]
    fn gpu_grant_on_a_missing_device() {
        let (mut a, ent, h) = fleet();
        if let Some(t) = a.tasks.get_mut(&TaskId(1)) {
            t.grant.devices.push((9, 100));
        }
        let r = free_task_1(&mut a, ent);
        assert_eq!(r, broken(h, Bookkeeping::GpuGrantMismatch));
    }

    #[test]
    fn task_missing_from_its_host() {
        let (mut a, ent, h) = fleet();
        a.hosts[0].tasks.clear();
        let r = free_task_1(&mut a, ent);
        assert_eq!(r, broken(h, Bookkeeping::TaskNotOnHost(TaskId(1))));
    }

    #[test]
    fn job_counts_missing() {
        let (mut a, ent, h) = fleet();
        if let Some(j) = a.jobs.get_mut(&JobId(1)) {
            j.per_host.clear();
        }
        let r = free_task_1(&mut a, ent);
        assert_eq!(r, broken(h, Bookkeeping::JobCountMissing(JobId(1))));
        let (mut a, _, h) = fleet();
        a.jobs.clear();
        assert_eq!(
            a.resize(TaskId(1), demand(20_000)).map(drop),
            broken(h, Bookkeeping::JobRecordMissing(JobId(1)))
        );
    }

    #[test]
    fn entitlement_missing_its_host() {
        let (mut a, ent, h) = fleet();
        a.entitlements[0].hosts.clear();
        let r = free_task_1(&mut a, ent);
        assert_eq!(r, broken(h, Bookkeeping::EntitlementMissingHost));
    }

    #[test]
    fn task_record_missing() {
        let (mut a, _, h) = fleet();
        a.tasks.clear();
        let r = a.host_down(h).map(drop);
        assert_eq!(r, broken(h, Bookkeeping::TaskRecordMissing(TaskId(1))));
    }

    #[test]
    fn host_moved_without_the_index() {
        let (mut a, _, h) = fleet();
        a.hosts[0].free = Resources::default();
        assert_eq!(a.drain(h).map(drop), broken(h, Bookkeeping::NotIndexed));
    }

    #[test]
    fn class_ids_run_out() {
        let (mut a, _, h) = fleet();
        a.index.keys.max = u32::try_from(a.index.classes.len()).expect("a few classes");
        // Down is a class no host was in yet.
        assert_eq!(
            a.host_down(h).map(drop),
            broken(h, Bookkeeping::ClassIdsExhausted)
        );
    }

    #[test]
    fn index_entry_without_a_host() {
        let (mut a, ent, _) = fleet();
        let ghost = FreeKey {
            cpu: u64::MAX,
            mem: u64::MAX,
            scramble: 0,
            host: 7,
        };
        for class in &mut a.index.classes {
            class.hosts.insert(ghost);
        }
        let r = a
            .apply(&Request::new(ent, JobId(2)).allocate(TaskId(2), demand(1)))
            .map(drop);
        assert_eq!(r, broken(HostId(7), Bookkeeping::IndexedButUnknown));
    }

    #[test]
    fn full_name_and_attribute_tables_are_errors() {
        let mut a = Allocator::new(AllocatorConfig::default());
        a.names.0.max = 2;
        let spec = HostSpec::new(Resources::new(1, 1));
        // "default" (type and profile) and "" (every level of an empty fault-domain path).
        a.add_host(&spec).expect("two names");
        assert_eq!(
            a.add_host(&spec.clone().machine_type("other")),
            Err(AllocError::TooManyNames { max: 2 })
        );
        let mut a = Allocator::new(AllocatorConfig::default());
        a.attr_sets.max = 1;
        a.add_host(&spec).expect("the empty attribute set");
        assert_eq!(
            a.add_host(&spec.attribute("k", "v")),
            Err(AllocError::TooManyAttributeSets { max: 1 })
        );
    }
}
