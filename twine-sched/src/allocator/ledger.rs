//! The task and job ledger: what each placed task holds and each job counts, and the
//! bookkeeping that moves a task on or off a host.

use std::collections::HashMap;
use std::sync::Arc;

use super::{AllocError, Allocator, Placement};
use crate::entitlement::EntitlementId;
use crate::fleet::{HostId, HostState, Name, Owner};
use crate::request::{Constraints, JobId, TaskId};
use crate::resources::{Demand, GpuGrant};

#[derive(Debug, Clone)]
pub(crate) struct TaskRecord {
    pub(crate) host: HostId,
    pub(crate) job: JobId,
    pub(crate) demand: Demand,
    pub(crate) grant: GpuGrant,
    pub(crate) constraints: Arc<Constraints>,
}

#[derive(Debug, Clone, Default)]
pub(crate) struct JobRecord {
    pub(crate) entitlement: Option<EntitlementId>,
    pub(crate) tasks: u32,
    pub(crate) per_host: HashMap<HostId, u32>,
    pub(crate) per_domain: [HashMap<Name, u32>; 4],
}

impl JobRecord {
    pub(crate) fn on_host(&self, h: HostId) -> u32 {
        self.per_host.get(&h).copied().unwrap_or(0)
    }
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

impl Allocator {
    pub(super) fn set_state(&mut self, id: HostId, state: HostState) -> Result<(), AllocError> {
        let (hosts, index) = (&mut self.hosts, &mut self.index);
        let h = hosts
            .get_mut(id.0 as usize)
            .ok_or(AllocError::UnknownHost(id))?;
        index.remove(id, h);
        h.state = state;
        index.insert(id, h);
        Ok(())
    }

    /// Puts a task on a host `choose` picked.
    pub(super) fn commit(
        &mut self,
        p: &Placement<'_>,
        task: TaskId,
        id: HostId,
        moves: &mut Moves,
    ) -> GpuGrant {
        let (job, ent, demand) = (p.job, p.ent, p.demand);
        let (hosts, index) = (&mut self.hosts, &mut self.index);
        let Some(h) = hosts.get_mut(id.0 as usize) else {
            return GpuGrant::default();
        };
        index.remove(id, h);
        h.free = h.free.checked_sub(&demand.resources).unwrap_or_default();
        let grant = h.gpus.take(demand.gpu).unwrap_or_default();
        if h.owner == Owner::FreePool {
            h.owner = Owner::Entitlement(ent);
            if let Some(e) = self.entitlements.get_mut(ent.0 as usize) {
                e.add(id, h);
            }
            moves.joined.push(id);
        }
        h.tasks.push(task);
        index.insert(id, h);
        let domains = h.domains;
        let jr = self.jobs.entry(job).or_default();
        jr.entitlement = Some(ent);
        jr.tasks += 1;
        *jr.per_host.entry(id).or_insert(0) += 1;
        for (level, d) in domains.iter().enumerate() {
            *jr.per_domain[level].entry(*d).or_insert(0) += 1;
        }
        self.tasks.insert(
            task,
            TaskRecord {
                host: id,
                job,
                demand,
                grant: grant.clone(),
                constraints: Arc::clone(p.cons),
            },
        );
        grant
    }

    /// Takes a task off its host; an emptied host goes back to the free pool.
    pub(super) fn unassign(&mut self, task: TaskId, moves: &mut Moves) {
        let Some(rec) = self.tasks.remove(&task) else {
            return;
        };
        let id = rec.host;
        let (hosts, index) = (&mut self.hosts, &mut self.index);
        let Some(h) = hosts.get_mut(id.0 as usize) else {
            return;
        };
        index.remove(id, h);
        h.free = h
            .free
            .checked_add(&rec.demand.resources)
            .unwrap_or(h.capacity);
        h.gpus.give(&rec.grant);
        if let Some(pos) = h.tasks.iter().position(|&t| t == task) {
            h.tasks.swap_remove(pos);
        }
        index.insert(id, h);
        let domains = h.domains;
        if let Some(jr) = self.jobs.get_mut(&rec.job) {
            jr.tasks = jr.tasks.saturating_sub(1);
            decrement(&mut jr.per_host, id);
            for (level, d) in domains.iter().enumerate() {
                decrement(&mut jr.per_domain[level], *d);
            }
            if jr.tasks == 0 {
                self.jobs.remove(&rec.job);
            }
        }
        self.release_if_empty(id, moves);
    }

    pub(super) fn release_if_empty(&mut self, id: HostId, moves: &mut Moves) {
        let (hosts, index) = (&mut self.hosts, &mut self.index);
        let Some(h) = hosts.get_mut(id.0 as usize) else {
            return;
        };
        if let Owner::Entitlement(ent) = h.owner
            && h.tasks.is_empty()
        {
            index.remove(id, h);
            if let Some(e) = self.entitlements.get_mut(ent.0 as usize) {
                e.remove(id, h);
            }
            h.owner = Owner::FreePool;
            index.insert(id, h);
            moves.released.push(id);
        }
    }
}

fn decrement<K: std::hash::Hash + Eq>(m: &mut HashMap<K, u32>, k: K) {
    if let Some(n) = m.get_mut(&k) {
        *n = n.saturating_sub(1);
        if *n == 0 {
            m.remove(&k);
        }
    }
}
