//! The online allocator: places tasks of one job at a time onto hosts of the job's
//! entitlement, taking hosts from the free pool within quota, and keeps every index up
//! to date on each placement, free, resize, failure and drain.
//!
//! It is a synchronous state machine over plain data: no I/O, no threads, no clock, no
//! randomness beyond a caller-given seed. The caller (a scheduler) sends a [`Request`]
//! and acts on the returned [`Allocation`]; host failures and drains come in as calls and
//! come back as [`Evacuation`]s.
//!
//! ```
//! use twine_sched::*;
//!
//! let mut alloc = Allocator::new(AllocatorConfig::default().with_seed(7));
//! for rack in 0..4 {
//!     let small = HostSpec::new(Resources::new(18_000, 65_536)).machine_type("small");
//!     alloc.add_host(&small.domain(["r1", "dc1", "p1", &format!("rack{rack}")]))?;
//! }
//! let web = alloc.add_entitlement("web", Quota::machines([("small", 3)]))?;
//! let task = Demand { resources: Resources::new(4_000, 8_192), gpu: GpuDemand::None };
//! let req = Request::new(web, JobId(1))
//!     .require(Requirements::default().machine_types(["small"]))
//!     .prefer(Preferences::default().spread(FaultLevel::Rack).max_per_host(1))
//!     .allocate(TaskId(1), task)
//!     .allocate(TaskId(2), task)
//!     .allocate(TaskId(3), task)
//!     .allocate(TaskId(4), task);
//! let out = alloc.apply(&req)?;
//! assert_eq!(out.placed.len(), 3); // quota: 3 small machines
//! assert_eq!(out.unplaced[0].1.to_string(), "0/4 hosts: 3 job at its per-host limit, 1 entitlement quota exhausted");
//! # Ok::<(), AllocError>(())
//! ```
//!
//! # Where things are
//!
//! This file holds the calls; `outcome.rs` what they answer (outcomes, errors);
//! `search.rs` the candidate search; `ledger.rs` the task and job records and the
//! bookkeeping that moves a task on or off a host; `invariants.rs` the from-scratch
//! recomputation behind the `test-util` feature; the explanations of unplaced tasks and
//! the profile-switch proposals are in [`crate::explain`]. A bug in the bookkeeping
//! surfaces as [`AllocError::Internal`], never as a quietly wrong fleet.
//!
//! # Index design and complexity
//!
//! Let `N` be the number of hosts, `C` the number of *equivalence classes* (hosts that
//! agree on owner, state, machine type, GPU model, host profile and attribute set; see
//! `index.rs`), `K` the candidate bound ([`AllocatorConfig::candidates`]) and `E` the
//! examine bound ([`AllocatorConfig::examine_limit`]).
//!
//! - **Classes.** Every hard requirement except capacity is a property of a class, so a
//!   request filters classes, not hosts: only the up classes of its own entitlement and of
//!   the free pool are looked at, `O(C_owner)` integer compares. Machine-count quotas are
//!   also a class property (a class has one machine type), so a type at quota is skipped
//!   whole.
//! - **Free-capacity index.** Inside a class, hosts sit in a `BTreeSet` keyed by (free
//!   CPU, free memory, seeded scramble of the id, id). A range query from (demanded CPU,
//!   demanded memory) yields only hosts with enough CPU, tightest first, which is the
//!   order best-fit style packing wants; the `Spread` policy walks the same range from the
//!   other end. Memory, extras, GPU devices, quota in units and the per-host / per-rack
//!   limits are checked on each visited entry. The scramble makes hosts with equal free
//!   capacity (a fresh fleet) come in an order unrelated to racks, so a bounded sample
//!   spans many fault domains.
//! - **Bounded scoring.** Like Borg's relaxed randomization and kube-scheduler's
//!   `percentageOfNodesToScore`, but deterministic: a placement stops after `K` feasible
//!   hosts, or after `E` visited entries once it has at least one. Only when nothing is
//!   feasible does it keep walking the matching classes to the end, so "unplaced" is
//!   never a false negative; that walk is bounded by the matching classes, not the fleet.
//! - **Spread and limits.** Per job, task counts per host and per fault domain at each
//!   level are kept in hash maps (looked up, never iterated for decisions). Candidates are
//!   ranked by (tasks of the job in the candidate's domain at the spread level, already in
//!   the entitlement before free pool, policy score, host id), so spreading is a count
//!   lookup per candidate. Hosts of the entitlement are tried first; the free pool is
//!   searched only if no entitlement host fits, or (with spread) if the best one already
//!   holds a task of the job in its domain.
//!
//! A placement costs `O(C_owner + min(K, E) · log N)` in the common case; every update
//! (place, free, resize, move a host between owner or state) is one `BTreeSet` remove and
//! insert, `O(log N)`, plus `O(1)` count updates. Memory is about 200 bytes per host plus
//! about 40 per index entry. Explaining a failure scans all `N` hosts; it runs once per
//! distinct demand of a failed request.

mod ledger;
mod outcome;
mod relocate;
mod search;

#[cfg(feature = "test-util")]
mod invariants;

use std::collections::{BTreeSet, HashMap, HashSet};
use std::sync::Arc;

use crate::entitlement::{Entitlement, EntitlementId, Quota, ResolvedQuota};
use crate::explain::Unplaced;
use crate::fleet::{
    AttrSet, AttrSetId, Host, HostId, HostSpec, HostState, HostView, Interner, Name, Names, Owner,
    ResourceNames,
};
use crate::index::ClassIndex;
use crate::request::{Constraints, JobId, Request, TaskId};
use crate::resources::{Demand, GPU_MILLI, GpuDemand, GpuDevices, GpuGrant};

pub(crate) use ledger::{JobRecord, TaskRecord};
use ledger::{Moves, internal};
pub use outcome::{AllocError, Allocation, Bookkeeping, Evacuation, Moved, Placed, Resized};
pub use relocate::{Relocated, TaskView};
pub(crate) use search::{Placement, class_matches};

/// Tuning knobs; the defaults suit fleets from thousands to a million hosts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub struct AllocatorConfig {
    /// Feasible hosts scored per placement before the best is taken.
    pub candidates: usize,
    /// Index entries visited per placement before settling for the best feasible so far.
    pub examine_limit: usize,
    /// Seed of the order among hosts with equal free capacity.
    pub seed: u64,
}

impl Default for AllocatorConfig {
    fn default() -> Self {
        AllocatorConfig {
            candidates: 16,
            examine_limit: 512,
            seed: 0,
        }
    }
}

impl AllocatorConfig {
    /// Sets the seed.
    pub fn with_seed(mut self, seed: u64) -> Self {
        self.seed = seed;
        self
    }
    /// Sets the number of feasible candidates scored per placement (at least 1).
    pub fn with_candidates(mut self, k: usize) -> Self {
        self.candidates = k.max(1);
        self
    }
}

/// The online allocator. See the [module docs](self) for the index design.
///
/// Its fields are visible to the crate so that the explanations (`explain.rs`) read the
/// same records placement does.
#[derive(Debug, Clone)]
pub struct Allocator {
    pub(crate) config: AllocatorConfig,
    pub(crate) names: Names,
    pub(crate) resource_names: ResourceNames,
    pub(crate) attr_sets: Interner<AttrSet>,
    pub(crate) hosts: Vec<Host>,
    pub(crate) index: ClassIndex,
    pub(crate) entitlements: Vec<Entitlement>,
    pub(crate) tasks: HashMap<TaskId, TaskRecord>,
    pub(crate) jobs: HashMap<JobId, JobRecord>,
    /// Distinct fault domains per level, to know when a job touches all of them.
    pub(crate) domains_at: [HashSet<Name>; 4],
}

fn validate_gpu(task: TaskId, gpu: GpuDemand) -> Result<(), AllocError> {
    match gpu {
        GpuDemand::Shared(m) if m == 0 || m >= GPU_MILLI => {
            Err(AllocError::InvalidGpuDemand { task, demand: gpu })
        }
        GpuDemand::Whole(0) => Err(AllocError::InvalidGpuDemand { task, demand: gpu }),
        _ => Ok(()),
    }
}

impl Allocator {
    /// An empty allocator.
    pub fn new(config: AllocatorConfig) -> Allocator {
        Allocator {
            config,
            names: Names::default(),
            resource_names: ResourceNames::default(),
            attr_sets: Interner::default(),
            hosts: Vec::new(),
            index: ClassIndex::new(config.seed),
            entitlements: Vec::new(),
            tasks: HashMap::new(),
            jobs: HashMap::new(),
            domains_at: Default::default(),
        }
    }

    /// Names the extensible resources (used in unplaced explanations).
    pub fn set_resource_names(&mut self, names: ResourceNames) {
        self.resource_names = names;
    }

    /// Interns `s`; [`AllocError::TooManyNames`] when the table is full.
    fn intern(&mut self, s: &str) -> Result<Name, AllocError> {
        self.names.intern(s).ok_or(AllocError::TooManyNames {
            max: self.names.0.max,
        })
    }

    /// Adds a host to the free pool, up.
    pub fn add_host(&mut self, spec: &HostSpec) -> Result<HostId, AllocError> {
        let max = u32::MAX - 1;
        let id = u32::try_from(self.hosts.len())
            .ok()
            .filter(|&i| i < max)
            .ok_or(AllocError::TooManyHosts { max })?;
        let mut attrs = AttrSet::new();
        for (k, v) in &spec.attributes {
            attrs.push((self.intern(k)?, self.intern(v)?));
        }
        attrs.sort_unstable();
        attrs.dedup();
        let attr_id = self
            .attr_sets
            .intern(&attrs)
            .ok_or(AllocError::TooManyAttributeSets {
                max: self.attr_sets.max,
            })?;
        let mut path = String::new();
        let mut domains = [Name::UNKNOWN; 4];
        for (d, seg) in domains.iter_mut().zip(&spec.domain) {
            if !path.is_empty() {
                path.push('/');
            }
            path.push_str(seg);
            *d = self.intern(&path)?;
        }
        let gpu_model = match &spec.gpu_model {
            Some(m) => Some(self.intern(m)?),
            None => None,
        };
        let mut host = Host {
            capacity: spec.capacity,
            free: spec.capacity,
            gpus: GpuDevices::new(spec.gpus),
            gpu_model,
            machine_type: self.intern(&spec.machine_type)?,
            profile: self.intern(&spec.profile)?,
            attrs: AttrSetId(attr_id),
            domains,
            owner: Owner::FreePool,
            state: HostState::Up,
            class: 0,
            tasks: Vec::new(),
        };
        let hid = HostId(id);
        self.index.insert(hid, &mut host).map_err(internal(hid))?;
        self.hosts.push(host);
        for (level, d) in domains.iter().enumerate() {
            self.domains_at[level].insert(*d);
        }
        Ok(hid)
    }

    /// Adds an entitlement with no hosts.
    pub fn add_entitlement(
        &mut self,
        name: &str,
        quota: Quota,
    ) -> Result<EntitlementId, AllocError> {
        let id =
            u32::try_from(self.entitlements.len()).map_err(|_| AllocError::TooManyEntitlements)?;
        let quota = self.resolve_quota(quota)?;
        self.entitlements
            .push(Entitlement::new(name.to_owned(), quota));
        Ok(EntitlementId(id))
    }

    fn resolve_quota(&mut self, quota: Quota) -> Result<ResolvedQuota, AllocError> {
        Ok(match quota {
            Quota::Machines(m) => ResolvedQuota::Machines(
                m.iter()
                    .map(|(t, &n)| Ok((self.intern(t)?, n)))
                    .collect::<Result<_, AllocError>>()?,
            ),
            Quota::Units(r) => ResolvedQuota::Units(r),
        })
    }

    /// Changes an entitlement's quota. Refused if the entitlement already holds more
    /// (its hosts all run tasks, since empty hosts go back to the pool at once).
    pub fn set_quota(&mut self, ent: EntitlementId, quota: Quota) -> Result<(), AllocError> {
        self.entitlement(ent)?;
        let quota = self.resolve_quota(quota)?;
        let e = self
            .entitlements
            .get_mut(ent.0 as usize)
            .ok_or(AllocError::UnknownEntitlement(ent))?;
        e.within(&quota, &self.names)
            .map_err(|excess| AllocError::QuotaBelowUsage {
                entitlement: ent,
                excess,
            })?;
        e.quota = quota;
        Ok(())
    }

    pub(crate) fn entitlement(&self, ent: EntitlementId) -> Result<&Entitlement, AllocError> {
        self.entitlements
            .get(ent.0 as usize)
            .ok_or(AllocError::UnknownEntitlement(ent))
    }

    /// Hosts currently assigned to `ent`.
    pub fn entitlement_hosts(&self, ent: EntitlementId) -> Result<Vec<HostId>, AllocError> {
        Ok(self.entitlement(ent)?.hosts.iter().copied().collect())
    }

    /// An entitlement's name.
    pub fn entitlement_name(&self, ent: EntitlementId) -> Result<&str, AllocError> {
        Ok(&self.entitlement(ent)?.name)
    }

    /// A host's properties.
    pub fn host(&self, id: HostId) -> Result<HostView<'_>, AllocError> {
        let host = self
            .hosts
            .get(id.0 as usize)
            .ok_or(AllocError::UnknownHost(id))?;
        Ok(HostView {
            host,
            names: &self.names,
        })
    }

    /// Number of hosts.
    pub fn host_count(&self) -> usize {
        self.hosts.len()
    }

    /// Number of placed tasks.
    pub fn task_count(&self) -> usize {
        self.tasks.len()
    }

    /// Where a task runs and the GPU devices it holds.
    pub fn task(&self, task: TaskId) -> Result<(HostId, &GpuGrant), AllocError> {
        let t = self.tasks.get(&task).ok_or(AllocError::UnknownTask(task))?;
        Ok((t.host, &t.grant))
    }

    /// Frees and places the tasks of one job. Validation happens first: on an error
    /// nothing changed. Placement is best effort per task: tasks that fit are placed,
    /// the others come back in [`Allocation::unplaced`] with the reason.
    pub fn apply(&mut self, req: &Request) -> Result<Allocation, AllocError> {
        self.entitlement(req.entitlement)?;
        if let Some(current) = self.jobs.get(&req.job).and_then(|j| j.entitlement)
            && current != req.entitlement
            && req.free.len() < self.jobs.get(&req.job).map_or(0, |j| j.tasks as usize)
        {
            return Err(AllocError::JobInOtherEntitlement {
                job: req.job,
                current,
                requested: req.entitlement,
            });
        }
        let mut seen = BTreeSet::new();
        for &t in &req.free {
            let rec = self.tasks.get(&t).ok_or(AllocError::UnknownTask(t))?;
            if rec.job != req.job {
                return Err(AllocError::TaskOfOtherJob {
                    task: t,
                    owner: rec.job,
                    job: req.job,
                });
            }
            if !seen.insert(t) {
                return Err(AllocError::FreedTwice(t));
            }
        }
        let mut new = BTreeSet::new();
        for &(t, d) in &req.allocate {
            validate_gpu(t, d.gpu)?;
            if (self.tasks.contains_key(&t) && !seen.contains(&t)) || !new.insert(t) {
                return Err(AllocError::DuplicateTask(t));
            }
        }

        let mut out = Allocation::default();
        let mut moves = Moves::default();
        for &t in &req.free {
            self.unassign(t, &mut moves)?;
            out.freed.push(t);
        }
        let cons = Arc::new(Constraints::resolve(
            &req.requirements,
            req.preferences,
            &self.names,
        ));
        let mut explained: Vec<(Demand, Unplaced)> = Vec::new();
        let mut failed: Vec<Demand> = Vec::new();
        for &(t, d) in &req.allocate {
            let p = Placement {
                job: req.job,
                ent: req.entitlement,
                cons: &cons,
                demand: d,
            };
            match self.choose(&p, None)? {
                Some(h) => {
                    let gpus = self.commit(&p, t, h, &mut moves)?;
                    out.placed.push(Placed {
                        task: t,
                        host: h,
                        gpus,
                    });
                }
                None => {
                    let u = match explained.iter().find(|(x, _)| *x == d) {
                        Some((_, u)) => u.clone(),
                        None => {
                            let u = self.explain(&p)?;
                            explained.push((d, u.clone()));
                            u
                        }
                    };
                    failed.push(d);
                    out.unplaced.push((t, u));
                }
            }
        }
        if let Some(want) = &req.requirements.host_profile
            && !failed.is_empty()
        {
            out.profile_switches = self.propose_switches(req.entitlement, &cons, want, &failed)?;
        }
        out.hosts_joined = moves.joined;
        out.hosts_released = moves.released;
        Ok(out)
    }

    /// Changes a task's demand: in place if it fits on its host, else it moves to the
    /// best host under the constraints it was placed with; if none has room, nothing
    /// changes and the reason comes back.
    pub fn resize(&mut self, task: TaskId, demand: Demand) -> Result<Resized, AllocError> {
        validate_gpu(task, demand.gpu)?;
        let rec = self
            .tasks
            .get(&task)
            .ok_or(AllocError::UnknownTask(task))?
            .clone();
        let host = self
            .hosts
            .get(rec.host.0 as usize)
            .ok_or(AllocError::UnknownHost(rec.host))?;
        // The host's capacity as it would be without the task, to see whether the new
        // size fits (its task list is not needed, so it is not copied).
        let mut without = Host {
            gpus: host.gpus.clone(),
            tasks: Vec::new(),
            ..*host
        };
        without
            .give(&rec.demand.resources, &rec.grant)
            .map_err(internal(rec.host))?;
        if host.state == HostState::Up
            && demand.resources.fits_in(&without.free)
            && without.gpus.fits(demand.gpu)
        {
            let grant = without.take(&demand).map_err(internal(rec.host))?;
            self.update_host(rec.host, |h| {
                h.free = without.free;
                h.gpus = without.gpus;
                Ok(())
            })?;
            let t = self
                .tasks
                .get_mut(&task)
                .ok_or(AllocError::UnknownTask(task))?;
            t.demand = demand;
            t.grant = grant.clone();
            return Ok(Resized::InPlace { gpus: grant });
        }
        let ent = self.job_entitlement(rec.host, rec.job)?;
        let p = Placement {
            job: rec.job,
            ent,
            cons: &rec.constraints,
            demand,
        };
        match self.choose(&p, Some(rec.host))? {
            Some(to) => {
                let mut moves = Moves::default();
                self.unassign(task, &mut moves)?;
                let gpus = self.commit(&p, task, to, &mut moves)?;
                Ok(Resized::Moved {
                    moved: Moved {
                        task,
                        from: rec.host,
                        to,
                        gpus,
                    },
                    hosts_joined: moves.joined,
                    hosts_released: moves.released,
                })
            }
            None => Ok(Resized::Unplaced(self.explain(&p)?)),
        }
    }

    /// A host failed: it goes down, its tasks are re-placed under the constraints they
    /// were placed with, and the ones with nowhere to go are removed and reported.
    pub fn host_down(&mut self, id: HostId) -> Result<Evacuation, AllocError> {
        self.set_state(id, HostState::Down)?;
        self.evacuate(id, true)
    }

    /// Starts a drain: the host takes no new tasks, its tasks move elsewhere, and once
    /// empty it leaves its entitlement. Tasks that cannot move stay (call again later).
    pub fn drain(&mut self, id: HostId) -> Result<Evacuation, AllocError> {
        self.set_state(id, HostState::Draining)?;
        self.evacuate(id, false)
    }

    /// Cordons a host: it takes no new tasks, and its tasks stay until they are moved
    /// ([`move_task`](Self::move_task)) or freed, for a drain that asks each job first
    /// (see [`crate::rebalance`]); once empty it leaves its entitlement.
    pub fn cordon(&mut self, id: HostId) -> Result<(), AllocError> {
        self.set_state(id, HostState::Draining)?;
        let mut moves = Moves::default();
        self.release_if_empty(id, &mut moves)
    }

    /// The host is back (repaired, or drain cancelled): it takes tasks again.
    pub fn host_up(&mut self, id: HostId) -> Result<(), AllocError> {
        self.set_state(id, HostState::Up)
    }

    fn evacuate(&mut self, id: HostId, remove_unplaced: bool) -> Result<Evacuation, AllocError> {
        let mut out = Evacuation::default();
        let mut moves = Moves::default();
        let tasks = self
            .hosts
            .get(id.0 as usize)
            .ok_or(AllocError::UnknownHost(id))?
            .tasks
            .clone();
        for t in tasks {
            let rec = self.tasks.get(&t).cloned().ok_or(AllocError::Internal {
                host: id,
                what: Bookkeeping::TaskRecordMissing(t),
            })?;
            let ent = self.job_entitlement(id, rec.job)?;
            let p = Placement {
                job: rec.job,
                ent,
                cons: &rec.constraints,
                demand: rec.demand,
            };
            match self.choose(&p, Some(id))? {
                Some(to) => {
                    self.unassign(t, &mut moves)?;
                    let gpus = self.commit(&p, t, to, &mut moves)?;
                    out.moved.push(Moved {
                        task: t,
                        from: id,
                        to,
                        gpus,
                    });
                }
                None => {
                    let why = self.explain(&p)?;
                    if remove_unplaced {
                        self.unassign(t, &mut moves)?;
                    }
                    out.unplaced.push((t, why));
                }
            }
        }
        // A draining host with its last task gone leaves even if nothing was freed now.
        self.release_if_empty(id, &mut moves)?;
        out.hosts_joined = moves.joined;
        out.hosts_released = moves.released;
        Ok(out)
    }

    /// Records a host-profile switch the profiles side carried out. Only empty
    /// free-pool hosts switch.
    pub fn apply_profile_switch(&mut self, id: HostId, profile: &str) -> Result<(), AllocError> {
        let h = self
            .hosts
            .get(id.0 as usize)
            .ok_or(AllocError::UnknownHost(id))?;
        if h.owner != Owner::FreePool || !h.tasks.is_empty() {
            return Err(AllocError::NotInFreePool(id));
        }
        let name = self.intern(profile)?;
        self.update_host(id, |h| {
            h.profile = name;
            Ok(())
        })
    }
}
