//! The allocator's invariants, recomputed from scratch (behind the `test-util` feature).

use std::collections::{BTreeMap, HashMap};

use super::{Allocator, JobRecord, TaskRecord};
use crate::entitlement::{Entitlement, EntitlementId};
use crate::fleet::{FaultLevel, HostId, HostState, Name, Owner};
use crate::request::{JobId, TaskId};
use crate::resources::{GPU_MILLI, Resources};

impl Allocator {
    /// Recomputes every index and count from scratch and compares, and checks the
    /// invariants: no host over capacity in any dimension or GPU device, hard
    /// requirements hold, quotas hold, per-host and per-rack limits hold, empty hosts are
    /// in the free pool. For tests; `O(N + tasks)`.
    pub fn check_invariants(&self) -> Result<(), String> {
        self.index.check(&self.hosts)?;
        let mut used: Vec<Resources> = vec![Resources::default(); self.hosts.len()];
        let mut gpu_used: Vec<Vec<u32>> =
            self.hosts.iter().map(|h| vec![0; h.gpus.count()]).collect();
        let mut on_host: BTreeMap<HostId, Vec<TaskId>> = BTreeMap::new();
        let mut jobs: BTreeMap<JobId, JobRecord> = BTreeMap::new();
        let mut ordered: Vec<(&TaskId, &TaskRecord)> = self.tasks.iter().collect();
        ordered.sort_by_key(|(t, _)| **t);
        for &(&t, rec) in &ordered {
            let i = rec.host.0 as usize;
            let h = self
                .hosts
                .get(i)
                .ok_or(format!("{t} on unknown {}", rec.host))?;
            used[i] = used[i]
                .checked_add(&rec.demand.resources)
                .ok_or(format!("{}: usage overflows", rec.host))?;
            for &(dev, m) in &rec.grant.devices {
                let slot = gpu_used[i]
                    .get_mut(usize::from(dev))
                    .ok_or(format!("{t}: GPU {dev} not on {}", rec.host))?;
                *slot += u32::from(m);
            }
            let granted: u64 = rec.grant.devices.iter().map(|d| u64::from(d.1)).sum();
            if granted != rec.demand.gpu.milli() {
                return Err(format!(
                    "{t}: granted {granted} GPU milli for {:?}",
                    rec.demand.gpu
                ));
            }
            let c = &rec.constraints;
            let attrs = self.attr_sets.resolve(h.attrs.0).ok_or("bad attr set")?;
            if !(c.machine_type_ok(h.machine_type)
                && c.gpu_model_ok(h.gpu_model)
                && c.profile_ok(h.profile)
                && c.attributes_ok(attrs))
            {
                return Err(format!("{t} on {} breaks a hard requirement", rec.host));
            }
            if h.state == HostState::Down {
                return Err(format!("{t} on down {}", rec.host));
            }
            let jr = jobs.entry(rec.job).or_default();
            let ent = self.jobs.get(&rec.job).and_then(|j| j.entitlement);
            jr.entitlement = ent;
            if ent.map(Owner::Entitlement) != Some(h.owner) {
                return Err(format!(
                    "{t} of {} on {} owned by {:?}",
                    rec.job, rec.host, h.owner
                ));
            }
            jr.tasks += 1;
            *jr.per_host.entry(rec.host).or_insert(0) += 1;
            for level in 0..4 {
                *jr.per_domain[level].entry(h.domains[level]).or_insert(0) += 1;
            }
            on_host.entry(rec.host).or_default().push(t);
        }
        for &(&t, rec) in &ordered {
            let jr = &jobs[&rec.job];
            let p = rec.constraints.prefs;
            if p.max_per_host.is_some_and(|k| jr.on_host(rec.host) > k) {
                return Err(format!(
                    "{} over its per-host limit on {}",
                    rec.job, rec.host
                ));
            }
            let rack = self.hosts[rec.host.0 as usize].domains[FaultLevel::Rack.index()];
            if p.max_per_rack
                .is_some_and(|k| jr.in_domain(FaultLevel::Rack.index(), rack) > k)
            {
                return Err(format!("{} over its per-rack limit ({t})", rec.job));
            }
        }
        for (i, h) in self.hosts.iter().enumerate() {
            let id = HostId(u32::try_from(i).map_err(|e| e.to_string())?);
            let want_free = h.capacity.checked_sub(&used[i]).ok_or(format!(
                "{id} over capacity: {:?} used of {:?}",
                used[i], h.capacity
            ))?;
            if want_free != h.free {
                return Err(format!("{id}: free {:?}, recomputed {want_free:?}", h.free));
            }
            for (dev, (&u, &f)) in gpu_used[i].iter().zip(h.gpus.free()).enumerate() {
                if u > u32::from(GPU_MILLI) || u32::from(f) + u != u32::from(GPU_MILLI) {
                    return Err(format!("{id} GPU {dev}: {u} milli used, {f} free"));
                }
            }
            let mut listed = h.tasks.clone();
            listed.sort_unstable();
            let mut want = on_host.remove(&id).unwrap_or_default();
            want.sort_unstable();
            if listed != want {
                return Err(format!("{id}: task list {listed:?}, recomputed {want:?}"));
            }
            match h.owner {
                Owner::FreePool if !h.tasks.is_empty() => {
                    return Err(format!("{id} in the free pool runs tasks"));
                }
                Owner::Entitlement(_) if h.tasks.is_empty() => {
                    return Err(format!("{id} is empty but still in an entitlement"));
                }
                _ => {}
            }
        }
        for (k, e) in self.entitlements.iter().enumerate() {
            let ent = EntitlementId(u32::try_from(k).map_err(|e| e.to_string())?);
            let mut fresh = Entitlement::new(e.name.clone(), e.quota.clone());
            for (i, h) in self.hosts.iter().enumerate() {
                if h.owner == Owner::Entitlement(ent) {
                    fresh.add(HostId(u32::try_from(i).map_err(|e| e.to_string())?), h);
                }
            }
            if fresh.hosts != e.hosts
                || fresh.per_type != e.per_type
                || fresh.capacity != e.capacity
            {
                return Err(format!(
                    "{ent}: host accounting disagrees with recomputation"
                ));
            }
            if let Err(excess) = e.within(&e.quota, &self.names) {
                return Err(format!("{ent} over quota ({excess})"));
            }
        }
        if jobs.len() != self.jobs.len() {
            return Err(format!(
                "{} job records, recomputed {}",
                self.jobs.len(),
                jobs.len()
            ));
        }
        for (j, want) in &jobs {
            let have = self.jobs.get(j).ok_or(format!("{j} has no record"))?;
            let nonzero = |m: &HashMap<Name, u32>| -> BTreeMap<Name, u32> {
                m.iter()
                    .filter(|(_, n)| **n > 0)
                    .map(|(k, v)| (*k, *v))
                    .collect()
            };
            let host_counts = |m: &HashMap<HostId, u32>| -> BTreeMap<HostId, u32> {
                m.iter()
                    .filter(|(_, n)| **n > 0)
                    .map(|(k, v)| (*k, *v))
                    .collect()
            };
            if have.tasks != want.tasks
                || host_counts(&have.per_host) != host_counts(&want.per_host)
            {
                return Err(format!("{j}: per-host counts disagree"));
            }
            for level in FaultLevel::ALL {
                let l = level.index();
                if nonzero(&have.per_domain[l]) != nonzero(&want.per_domain[l]) {
                    return Err(format!("{j}: {level:?} counts disagree"));
                }
            }
        }
        Ok(())
    }
}
