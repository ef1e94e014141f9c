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

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use crate::entitlement::{Entitlement, EntitlementId, Quota, ResolvedQuota};
use crate::explain::{ProfileSwitch, Unplaced, UnplacedReason};
use crate::fleet::{
    AttrSet, AttrSetId, FaultLevel, Host, HostId, HostSpec, HostState, HostView, Name, Names,
    Owner, ResourceNames,
};
use crate::index::{ClassIndex, ClassKey, FreeKey};
use crate::request::{Constraints, JobId, Request, TaskId};
use crate::resources::{Demand, GPU_MILLI, GpuDemand, GpuDevices, GpuGrant, MAX_EXTRA, Resources};
use crate::score::{HostFit, Policy};

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

/// What went wrong with a call; the allocator is unchanged when one is returned.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum AllocError {
    /// No host has this id.
    #[error("unknown {0}")]
    UnknownHost(HostId),
    /// No placed task has this id.
    #[error("unknown {0}")]
    UnknownTask(TaskId),
    /// No entitlement has this id.
    #[error("unknown {0}")]
    UnknownEntitlement(EntitlementId),
    /// A task to allocate is already placed, or listed twice.
    #[error("{0} is already placed or listed twice")]
    DuplicateTask(TaskId),
    /// A task to free belongs to another job.
    #[error("{task} belongs to {owner}, not {job}")]
    TaskOfOtherJob {
        /// The task.
        task: TaskId,
        /// Its job.
        owner: JobId,
        /// The job of the request.
        job: JobId,
    },
    /// The job already runs in another entitlement.
    #[error("{job} runs in {current}, not {requested}")]
    JobInOtherEntitlement {
        /// The job.
        job: JobId,
        /// Where its tasks are.
        current: EntitlementId,
        /// Where the request says.
        requested: EntitlementId,
    },
    /// A GPU demand no device can express.
    #[error(
        "{task}: GPU demand {demand:?} is invalid (a share is 1..=999 thousandths, whole devices at least 1)"
    )]
    InvalidGpuDemand {
        /// The task.
        task: TaskId,
        /// What it asked for.
        demand: GpuDemand,
    },
    /// A new quota is below what the entitlement holds now.
    #[error("{entitlement}: new quota is below current use ({detail})")]
    QuotaBelowUsage {
        /// The entitlement.
        entitlement: EntitlementId,
        /// What is over, as `type: used > limit` or the capacity vectors.
        detail: String,
    },
    /// A host-profile switch of a host that is not an empty free-pool host.
    #[error("{0} is not an empty free-pool host; only those switch profiles")]
    NotInFreePool(HostId),
    /// More hosts than ids.
    #[error("too many hosts (at most {max})")]
    TooManyHosts {
        /// The limit.
        max: u32,
    },
    /// More entitlements than ids.
    #[error("too many entitlements")]
    TooManyEntitlements,
    /// A size that does not fit the arithmetic.
    #[error("{what} overflows")]
    Overflow {
        /// What was being computed.
        what: String,
    },
}

/// A task that got a host.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Placed {
    /// The task.
    pub task: TaskId,
    /// Its host.
    pub host: HostId,
    /// The GPU devices it holds.
    pub gpus: GpuGrant,
}

/// A task moved from one host to another (failure, drain, resize).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Moved {
    /// The task.
    pub task: TaskId,
    /// Where it was.
    pub from: HostId,
    /// Where it goes.
    pub to: HostId,
    /// The GPU devices it holds there.
    pub gpus: GpuGrant,
}

/// The outcome of a [`Request`].
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Allocation {
    /// Tasks placed, in request order.
    pub placed: Vec<Placed>,
    /// Tasks not placed, with why.
    pub unplaced: Vec<(TaskId, Unplaced)>,
    /// Tasks freed.
    pub freed: Vec<TaskId>,
    /// Free-pool hosts that joined the entitlement.
    pub hosts_joined: Vec<HostId>,
    /// Hosts that went back to the free pool (empty).
    pub hosts_released: Vec<HostId>,
    /// Profile switches of free-pool hosts that would let unplaced tasks with a host
    /// profile requirement be placed.
    pub profile_switches: Vec<ProfileSwitch>,
}

/// The outcome of a host failure or drain.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Evacuation {
    /// Tasks moved to another host.
    pub moved: Vec<Moved>,
    /// Tasks with nowhere to go: removed after a failure, left on the host for a drain.
    pub unplaced: Vec<(TaskId, Unplaced)>,
    /// Free-pool hosts that joined an entitlement to take moved tasks.
    pub hosts_joined: Vec<HostId>,
    /// Hosts that went back to the free pool (including the evacuated one once empty).
    pub hosts_released: Vec<HostId>,
}

/// The outcome of a resize.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Resized {
    /// The task fits where it is.
    InPlace {
        /// Its GPU devices after the resize.
        gpus: GpuGrant,
    },
    /// The task had to move.
    Moved(Moved),
    /// No host has room: the task keeps its old size and host.
    Unplaced(Unplaced),
}

#[derive(Debug, Clone)]
struct TaskRecord {
    host: HostId,
    job: JobId,
    demand: Demand,
    grant: GpuGrant,
    constraints: Arc<Constraints>,
}

#[derive(Debug, Clone, Default)]
struct JobRecord {
    entitlement: Option<EntitlementId>,
    tasks: u32,
    per_host: HashMap<HostId, u32>,
    per_domain: [HashMap<Name, u32>; 4],
}

impl JobRecord {
    fn on_host(&self, h: HostId) -> u32 {
        self.per_host.get(&h).copied().unwrap_or(0)
    }
    fn in_domain(&self, level: usize, d: Name) -> u32 {
        self.per_domain
            .get(level)
            .and_then(|m| m.get(&d))
            .copied()
            .unwrap_or(0)
    }
}

/// Host ownership changes collected during one call.
#[derive(Debug, Default)]
struct Moves {
    joined: Vec<HostId>,
    released: Vec<HostId>,
}

/// The best candidate so far; smaller `rank` is better.
#[derive(Debug, Clone, Copy)]
struct Candidate {
    spread: u32,
    tier: u8,
    score: f64,
    host: HostId,
}

impl Candidate {
    fn better_than(&self, other: &Candidate) -> bool {
        (self.spread, self.tier)
            .cmp(&(other.spread, other.tier))
            .then_with(|| other.score.total_cmp(&self.score))
            .then_with(|| self.host.cmp(&other.host))
            .is_lt()
    }
}

/// The online allocator. See the [module docs](self) for the index design.
#[derive(Debug, Clone)]
pub struct Allocator {
    config: AllocatorConfig,
    names: Names,
    resource_names: ResourceNames,
    attr_sets: Vec<AttrSet>,
    attr_ids: BTreeMap<AttrSet, u32>,
    hosts: Vec<Host>,
    index: ClassIndex,
    entitlements: Vec<Entitlement>,
    tasks: HashMap<TaskId, TaskRecord>,
    jobs: HashMap<JobId, JobRecord>,
    /// Distinct fault domains per level, to know when a job touches all of them.
    domains_at: [std::collections::HashSet<Name>; 4],
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

fn class_matches(c: &Constraints, key: &ClassKey, attrs: &[AttrSet]) -> bool {
    c.machine_type_ok(key.machine_type)
        && c.gpu_model_ok(key.gpu_model)
        && c.profile_ok(key.profile)
        && attrs
            .get(key.attrs.0 as usize)
            .is_some_and(|a| c.attributes_ok(a))
}

impl Allocator {
    /// An empty allocator.
    pub fn new(config: AllocatorConfig) -> Allocator {
        Allocator {
            config,
            names: Names::default(),
            resource_names: ResourceNames::default(),
            attr_sets: Vec::new(),
            attr_ids: BTreeMap::new(),
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

    /// The interned strings.
    pub fn names(&self) -> &Names {
        &self.names
    }

    /// Adds a host to the free pool, up.
    pub fn add_host(&mut self, spec: &HostSpec) -> Result<HostId, AllocError> {
        let max = u32::MAX - 1;
        let id = u32::try_from(self.hosts.len())
            .ok()
            .filter(|&i| i < max)
            .ok_or(AllocError::TooManyHosts { max })?;
        let mut attrs: AttrSet = spec
            .attributes
            .iter()
            .map(|(k, v)| (self.names.intern(k), self.names.intern(v)))
            .collect();
        attrs.sort_unstable();
        attrs.dedup();
        let attr_id = match self.attr_ids.get(&attrs) {
            Some(&a) => a,
            None => {
                let a = u32::try_from(self.attr_sets.len())
                    .map_err(|_| AllocError::TooManyHosts { max })?;
                self.attr_sets.push(attrs.clone());
                self.attr_ids.insert(attrs, a);
                a
            }
        };
        let mut path = String::new();
        let mut domains = [Name::UNKNOWN; 4];
        for (d, seg) in domains.iter_mut().zip(&spec.domain) {
            if !path.is_empty() {
                path.push('/');
            }
            path.push_str(seg);
            *d = self.names.intern(&path);
        }
        for (level, d) in domains.iter().enumerate() {
            self.domains_at[level].insert(*d);
        }
        let mut host = Host {
            capacity: spec.capacity,
            free: spec.capacity,
            gpus: GpuDevices::new(spec.gpus),
            gpu_model: spec.gpu_model.as_deref().map(|m| self.names.intern(m)),
            machine_type: self.names.intern(&spec.machine_type),
            profile: self.names.intern(&spec.profile),
            attrs: AttrSetId(attr_id),
            domains,
            owner: Owner::FreePool,
            state: HostState::Up,
            class: 0,
            tasks: Vec::new(),
        };
        let hid = HostId(id);
        self.index.insert(hid, &mut host);
        self.hosts.push(host);
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
        let quota = self.resolve_quota(quota);
        self.entitlements
            .push(Entitlement::new(name.to_owned(), quota));
        Ok(EntitlementId(id))
    }

    fn resolve_quota(&mut self, quota: Quota) -> ResolvedQuota {
        match quota {
            Quota::Machines(m) => {
                ResolvedQuota::Machines(m.iter().map(|(t, &n)| (self.names.intern(t), n)).collect())
            }
            Quota::Units(r) => ResolvedQuota::Units(r),
        }
    }

    /// Changes an entitlement's quota. Refused if the entitlement already holds more
    /// (its hosts all run tasks, since empty hosts go back to the pool at once).
    pub fn set_quota(&mut self, ent: EntitlementId, quota: Quota) -> Result<(), AllocError> {
        self.entitlement(ent)?;
        let quota = self.resolve_quota(quota);
        let e = self.entitlement(ent)?;
        if let Err((t, used, limit)) = e.within(&quota) {
            let detail = match t {
                Some(t) => format!(
                    "{}: {} hosts > {}",
                    self.names.resolve(t),
                    used.cpu_milli,
                    limit.cpu_milli
                ),
                None => format!("capacity {used:?} > {limit:?}"),
            };
            return Err(AllocError::QuotaBelowUsage {
                entitlement: ent,
                detail,
            });
        }
        if let Some(e) = self.entitlements.get_mut(ent.0 as usize) {
            e.quota = quota;
        }
        Ok(())
    }

    fn entitlement(&self, ent: EntitlementId) -> Result<&Entitlement, AllocError> {
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
        let mut seen = std::collections::BTreeSet::new();
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
                return Err(AllocError::UnknownTask(t));
            }
        }
        let mut new = std::collections::BTreeSet::new();
        for &(t, d) in &req.allocate {
            validate_gpu(t, d.gpu)?;
            if (self.tasks.contains_key(&t) && !seen.contains(&t)) || !new.insert(t) {
                return Err(AllocError::DuplicateTask(t));
            }
        }

        let mut out = Allocation::default();
        let mut moves = Moves::default();
        for &t in &req.free {
            self.unassign(t, &mut moves);
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
            match self.choose(req.job, req.entitlement, &cons, &d, None) {
                Some(h) => {
                    let gpus = self.commit(t, h, req.job, req.entitlement, d, &cons, &mut moves);
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
                            let u = self.explain(req.job, req.entitlement, &cons, &d);
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
            out.profile_switches = self.propose_switches(req.entitlement, &cons, want, &failed);
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
        let overflow = || AllocError::Overflow {
            what: format!("free capacity of {} plus {task}", rec.host),
        };
        let free = host
            .free
            .checked_add(&rec.demand.resources)
            .ok_or_else(overflow)?;
        let mut gpus = host.gpus.clone();
        gpus.give(&rec.grant);
        if host.state == HostState::Up && demand.resources.fits_in(&free) && gpus.fits(demand.gpu) {
            let grant = gpus.take(demand.gpu).unwrap_or_default();
            let (hosts, index) = (&mut self.hosts, &mut self.index);
            if let Some(h) = hosts.get_mut(rec.host.0 as usize) {
                index.remove(rec.host, h);
                h.free = free.checked_sub(&demand.resources).unwrap_or_default();
                h.gpus = gpus;
                index.insert(rec.host, h);
            }
            if let Some(t) = self.tasks.get_mut(&task) {
                t.demand = demand;
                t.grant = grant.clone();
            }
            return Ok(Resized::InPlace { gpus: grant });
        }
        let ent = self.jobs.get(&rec.job).and_then(|j| j.entitlement);
        let Some(ent) = ent else {
            return Err(AllocError::UnknownTask(task));
        };
        match self.choose(rec.job, ent, &rec.constraints, &demand, Some(rec.host)) {
            Some(to) => {
                let mut moves = Moves::default();
                self.unassign(task, &mut moves);
                let gpus =
                    self.commit(task, to, rec.job, ent, demand, &rec.constraints, &mut moves);
                Ok(Resized::Moved(Moved {
                    task,
                    from: rec.host,
                    to,
                    gpus,
                }))
            }
            None => Ok(Resized::Unplaced(self.explain(
                rec.job,
                ent,
                &rec.constraints,
                &demand,
            ))),
        }
    }

    /// A host failed: it goes down, its tasks are re-placed under the constraints they
    /// were placed with, and the ones with nowhere to go are removed and reported.
    pub fn host_down(&mut self, id: HostId) -> Result<Evacuation, AllocError> {
        self.set_state(id, HostState::Down)?;
        Ok(self.evacuate(id, true))
    }

    /// Starts a drain: the host takes no new tasks, its tasks move elsewhere, and once
    /// empty it leaves its entitlement. Tasks that cannot move stay (call again later).
    pub fn drain(&mut self, id: HostId) -> Result<Evacuation, AllocError> {
        self.set_state(id, HostState::Draining)?;
        Ok(self.evacuate(id, false))
    }

    /// The host is back (repaired, or drain cancelled): it takes tasks again.
    pub fn host_up(&mut self, id: HostId) -> Result<(), AllocError> {
        self.set_state(id, HostState::Up)
    }

    fn set_state(&mut self, id: HostId, state: HostState) -> Result<(), AllocError> {
        let (hosts, index) = (&mut self.hosts, &mut self.index);
        let h = hosts
            .get_mut(id.0 as usize)
            .ok_or(AllocError::UnknownHost(id))?;
        index.remove(id, h);
        h.state = state;
        index.insert(id, h);
        Ok(())
    }

    fn evacuate(&mut self, id: HostId, remove_unplaced: bool) -> Evacuation {
        let mut out = Evacuation::default();
        let mut moves = Moves::default();
        let tasks = self
            .hosts
            .get(id.0 as usize)
            .map(|h| h.tasks.clone())
            .unwrap_or_default();
        for t in tasks {
            let Some(rec) = self.tasks.get(&t).cloned() else {
                continue;
            };
            let Some(ent) = self.jobs.get(&rec.job).and_then(|j| j.entitlement) else {
                continue;
            };
            match self.choose(rec.job, ent, &rec.constraints, &rec.demand, Some(id)) {
                Some(to) => {
                    self.unassign(t, &mut moves);
                    let gpus = self.commit(
                        t,
                        to,
                        rec.job,
                        ent,
                        rec.demand,
                        &rec.constraints,
                        &mut moves,
                    );
                    out.moved.push(Moved {
                        task: t,
                        from: id,
                        to,
                        gpus,
                    });
                }
                None => {
                    let why = self.explain(rec.job, ent, &rec.constraints, &rec.demand);
                    if remove_unplaced {
                        self.unassign(t, &mut moves);
                    }
                    out.unplaced.push((t, why));
                }
            }
        }
        // A draining host with its last task gone leaves even if nothing was freed now.
        self.release_if_empty(id, &mut moves);
        out.hosts_joined = moves.joined;
        out.hosts_released = moves.released;
        out
    }

    /// Records a host-profile switch the profiles side carried out. Only empty
    /// free-pool hosts switch.
    pub fn apply_profile_switch(&mut self, id: HostId, profile: &str) -> Result<(), AllocError> {
        let name = self.names.intern(profile);
        let (hosts, index) = (&mut self.hosts, &mut self.index);
        let h = hosts
            .get_mut(id.0 as usize)
            .ok_or(AllocError::UnknownHost(id))?;
        if h.owner != Owner::FreePool || !h.tasks.is_empty() {
            return Err(AllocError::NotInFreePool(id));
        }
        index.remove(id, h);
        h.profile = name;
        index.insert(id, h);
        Ok(())
    }

    /// Picks the best host for one task, or `None`. `moving_from` is the task's current
    /// host when it is being moved: the job's counts then do not include the task itself.
    fn choose(
        &self,
        job: JobId,
        ent: EntitlementId,
        cons: &Constraints,
        demand: &Demand,
        moving_from: Option<HostId>,
    ) -> Option<HostId> {
        let empty = JobRecord::default();
        let jr = self.jobs.get(&job).unwrap_or(&empty);
        let e = self.entitlements.get(ent.0 as usize)?;
        let from_domains = moving_from
            .and_then(|h| self.hosts.get(h.0 as usize))
            .map(|h| h.domains);
        let count_in = |level: usize, d: Name| {
            let n = jr.in_domain(level, d);
            if from_domains.is_some_and(|f| f[level] == d) {
                n.saturating_sub(1)
            } else {
                n
            }
        };
        // The fewest tasks of the job any domain at the spread level can hold: 0 while
        // the job has not touched every domain, else its smallest count. A candidate at
        // the floor is as spread as it gets; others keep the search going.
        let floor = cons.prefs.spread.map_or(0, |l| {
            let counts = &jr.per_domain[l.index()];
            let touched = counts.values().filter(|&&n| n > 0).count();
            if touched < self.domains_at[l.index()].len() {
                0
            } else {
                counts.values().copied().min().unwrap_or(0)
            }
        });
        let mut best: Option<Candidate> = None;
        for (tier, owner) in [(0u8, Owner::Entitlement(ent)), (1, Owner::FreePool)] {
            if tier == 1 && best.is_some_and(|b| cons.prefs.spread.is_none() || b.spread <= floor) {
                break;
            }
            let mut feasible = 0usize;
            let mut examined = 0usize;
            'classes: for &c in self.index.up_classes(owner) {
                let Some(class) = self.index.classes.get(c as usize) else {
                    continue;
                };
                if class.hosts.is_empty()
                    || !class.key.may_fit_gpu(demand.gpu)
                    || !class_matches(cons, &class.key, &self.attr_sets)
                {
                    continue;
                }
                if tier == 1 && !e.admits_type(class.key.machine_type) {
                    continue;
                }
                let lo = FreeKey {
                    cpu: demand.resources.cpu_milli,
                    mem: demand.resources.memory_mib,
                    scramble: 0,
                    host: 0,
                };
                let range = class.hosts.range(lo..);
                let iter: Box<dyn Iterator<Item = &FreeKey>> =
                    if cons.prefs.policy == Policy::Spread {
                        Box::new(range.rev())
                    } else {
                        Box::new(range)
                    };
                for key in iter {
                    examined += 1;
                    if feasible > 0 && examined > self.config.examine_limit {
                        break 'classes;
                    }
                    if key.mem < demand.resources.memory_mib {
                        continue;
                    }
                    let hid = HostId(key.host);
                    let Some(h) = self.hosts.get(key.host as usize) else {
                        continue;
                    };
                    if !demand.resources.fits_in(&h.free) || !h.gpus.fits(demand.gpu) {
                        continue;
                    }
                    if tier == 1 && !e.admits(h) {
                        continue;
                    }
                    if cons
                        .prefs
                        .max_per_host
                        .is_some_and(|k| jr.on_host(hid) >= k)
                    {
                        continue;
                    }
                    if cons
                        .prefs
                        .max_per_rack
                        .is_some_and(|k| count_in(3, h.domains[3]) >= k)
                    {
                        continue;
                    }
                    let spread = cons
                        .prefs
                        .spread
                        .map_or(0, |l| count_in(l.index(), h.domains[l.index()]));
                    let score = match cons.prefs.policy {
                        Policy::FirstFit => 0.0,
                        p => p.score(&HostFit {
                            capacity: &h.capacity,
                            free: &h.free,
                            gpu_capacity_milli: h.gpus.count() as u64 * u64::from(GPU_MILLI),
                            gpu_free_milli: h.gpus.free_milli(),
                            demand,
                        }),
                    };
                    let cand = Candidate {
                        spread,
                        tier,
                        score,
                        host: hid,
                    };
                    if best.is_none_or(|b| cand.better_than(&b)) {
                        best = Some(cand);
                    }
                    feasible += 1;
                    // With spread, keep looking (up to the examine bound) while the best
                    // candidate's domain already holds a task of the job: an entitlement
                    // host in an untouched domain beats taking a new host from the pool.
                    let settled =
                        cons.prefs.spread.is_none() || best.is_some_and(|b| b.spread <= floor);
                    if (feasible >= self.config.candidates && settled)
                        || (cons.prefs.policy == Policy::FirstFit && cons.prefs.spread.is_none())
                    {
                        break 'classes;
                    }
                }
            }
        }
        best.map(|b| b.host)
    }

    /// Puts a task on a host `choose` picked.
    #[allow(clippy::too_many_arguments)] // one internal call shape, three callers
    fn commit(
        &mut self,
        task: TaskId,
        id: HostId,
        job: JobId,
        ent: EntitlementId,
        demand: Demand,
        cons: &Arc<Constraints>,
        moves: &mut Moves,
    ) -> GpuGrant {
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
                constraints: Arc::clone(cons),
            },
        );
        grant
    }

    /// Takes a task off its host; an emptied host goes back to the free pool.
    fn unassign(&mut self, task: TaskId, moves: &mut Moves) {
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

    fn release_if_empty(&mut self, id: HostId, moves: &mut Moves) {
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

    /// Why no host takes `demand` (scans the fleet; failure path only).
    fn explain(
        &self,
        job: JobId,
        ent: EntitlementId,
        cons: &Constraints,
        demand: &Demand,
    ) -> Unplaced {
        let empty = JobRecord::default();
        let jr = self.jobs.get(&job).unwrap_or(&empty);
        let e = self.entitlements.get(ent.0 as usize);
        let mut counts: BTreeMap<UnplacedReason, u32> = BTreeMap::new();
        let mut available = 0u32;
        for (i, h) in self.hosts.iter().enumerate() {
            let hid = HostId(u32::try_from(i).unwrap_or(u32::MAX));
            match self.first_failure(hid, h, jr, e, ent, cons, demand) {
                Some(r) => *counts.entry(r).or_insert(0) += 1,
                None => available += 1,
            }
        }
        Unplaced {
            available,
            total: u32::try_from(self.hosts.len()).unwrap_or(u32::MAX),
            counts,
        }
    }

    #[allow(clippy::too_many_arguments)] // the full context of one host check
    fn first_failure(
        &self,
        hid: HostId,
        h: &Host,
        jr: &JobRecord,
        e: Option<&Entitlement>,
        ent: EntitlementId,
        cons: &Constraints,
        demand: &Demand,
    ) -> Option<UnplacedReason> {
        let attrs_ok = self
            .attr_sets
            .get(h.attrs.0 as usize)
            .is_some_and(|a| cons.attributes_ok(a));
        let r = demand.resources;
        Some(if h.state != HostState::Up {
            UnplacedReason::NotUp
        } else if matches!(h.owner, Owner::Entitlement(o) if o != ent) {
            UnplacedReason::OtherEntitlement
        } else if !cons.machine_type_ok(h.machine_type) {
            UnplacedReason::WrongMachineType
        } else if !cons.gpu_model_ok(h.gpu_model) {
            UnplacedReason::WrongGpuModel
        } else if !cons.profile_ok(h.profile) {
            UnplacedReason::WrongHostProfile
        } else if !attrs_ok {
            UnplacedReason::AttributeMismatch
        } else if h.owner == Owner::FreePool && !e.is_some_and(|e| e.admits(h)) {
            UnplacedReason::QuotaExhausted
        } else if cons
            .prefs
            .max_per_host
            .is_some_and(|k| jr.on_host(hid) >= k)
        {
            UnplacedReason::MaxPerHost
        } else if cons
            .prefs
            .max_per_rack
            .is_some_and(|k| jr.in_domain(3, h.domains[3]) >= k)
        {
            UnplacedReason::MaxPerRack
        } else if r.cpu_milli > h.free.cpu_milli {
            UnplacedReason::InsufficientCpu
        } else if r.memory_mib > h.free.memory_mib {
            UnplacedReason::InsufficientMemory
        } else if let Some(i) = (0..MAX_EXTRA).find(|&i| r.extra[i] > h.free.extra[i]) {
            UnplacedReason::InsufficientResource(self.resource_names.name(i))
        } else if !h.gpus.fits(demand.gpu) {
            UnplacedReason::InsufficientGpu
        } else {
            return None;
        })
    }

    /// Free-pool hosts whose profile differs from the required one but which would take
    /// the failed demands once switched, packed first-fit, within quota.
    fn propose_switches(
        &self,
        ent: EntitlementId,
        cons: &Constraints,
        want: &str,
        failed: &[Demand],
    ) -> Vec<ProfileSwitch> {
        let want_name = self.names.lookup(want);
        let any_profile = Constraints {
            profile: None,
            ..cons.clone()
        };
        let Some(mut e) = self.entitlements.get(ent.0 as usize).cloned() else {
            return Vec::new();
        };
        let per_host_limit = cons.prefs.max_per_host.unwrap_or(u32::MAX);
        // (host, free, gpus, tasks) of hosts proposed so far.
        let mut proposed: Vec<(HostId, Resources, GpuDevices, u32)> = Vec::new();
        for d in failed {
            if let Some(p) = proposed.iter_mut().find(|(_, free, gpus, n)| {
                *n < per_host_limit && d.resources.fits_in(free) && gpus.fits(d.gpu)
            }) {
                p.1 = p.1.checked_sub(&d.resources).unwrap_or_default();
                p.2.take(d.gpu);
                p.3 += 1;
                continue;
            }
            let found = self
                .index
                .up_classes(Owner::FreePool)
                .iter()
                .find_map(|&c| {
                    let class = self.index.classes.get(c as usize)?;
                    let k = &class.key;
                    if k.profile == want_name || !class_matches(&any_profile, k, &self.attr_sets) {
                        return None;
                    }
                    let lo = FreeKey {
                        cpu: d.resources.cpu_milli,
                        mem: d.resources.memory_mib,
                        scramble: 0,
                        host: 0,
                    };
                    class.hosts.range(lo..).find_map(|key| {
                        let h = self.hosts.get(key.host as usize)?;
                        let id = HostId(key.host);
                        let ok = d.resources.fits_in(&h.free)
                            && h.gpus.fits(d.gpu)
                            && e.admits(h)
                            && !proposed.iter().any(|p| p.0 == id);
                        ok.then_some((id, h))
                    })
                });
            if let Some((id, h)) = found {
                e.add(id, h);
                let mut gpus = h.gpus.clone();
                gpus.take(d.gpu);
                proposed.push((
                    id,
                    h.free.checked_sub(&d.resources).unwrap_or_default(),
                    gpus,
                    1,
                ));
            }
        }
        proposed
            .into_iter()
            .filter_map(|(id, ..)| {
                let h = self.hosts.get(id.0 as usize)?;
                Some(ProfileSwitch {
                    host: id,
                    from: self.names.resolve(h.profile).to_owned(),
                    to: want.to_owned(),
                })
            })
            .collect()
    }

    /// Recomputes every index and count from scratch and compares, and checks the
    /// invariants: no host over capacity in any dimension or GPU device, hard
    /// requirements hold, quotas hold, per-host and per-rack limits hold, empty hosts are
    /// in the free pool. For tests; `O(N + tasks)`.
    #[doc(hidden)]
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
            let attrs = self
                .attr_sets
                .get(h.attrs.0 as usize)
                .ok_or("bad attr set")?;
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
            let rack = self.hosts[rec.host.0 as usize].domains[3];
            if p.max_per_rack.is_some_and(|k| jr.in_domain(3, rack) > k) {
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
            if let Err((t, used, limit)) = e.within(&e.quota) {
                return Err(format!("{ent} over quota ({t:?}: {used:?} > {limit:?})"));
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

fn decrement<K: std::hash::Hash + Eq>(m: &mut HashMap<K, u32>, k: K) {
    if let Some(n) = m.get_mut(&k) {
        *n = n.saturating_sub(1);
        if *n == 0 {
            m.remove(&k);
        }
    }
}
