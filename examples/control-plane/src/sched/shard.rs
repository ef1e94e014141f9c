//! One entitlement led by this scheduler: an allocator rebuilt from a snapshot of the
//! store at one revision, kept current from the watch, and the fenced transactions that
//! record its placements.
//!
//! The shard's allocator holds every host of the fleet. Hosts of this entitlement carry
//! its tasks; free hosts are up in the allocator's free pool; hosts owned by any other
//! entitlement are cordoned (the allocator never offers them). Capacity on a host is
//! only ever decided by the one shard whose entitlement owns it, so the only contested
//! write is a host joining an entitlement, and that is a compare on its owner key.

use std::collections::{BTreeMap, HashMap, HashSet};

use twine_sched::{
    AllocError, Allocator, AllocatorConfig, Demand, EntitlementId, GpuDemand, HostId, HostSpec,
    JobId, Quota, Request, Resources, TaskId,
};

use super::SchedError;
use super::view::{Change, View};
use crate::keys::{self, FREE};
use crate::model::{
    self, Assignment, Capacity, DrainRecord, DrainState, JobRecord, OpRecord, OpState, TaskRecord,
};
use crate::store::{CmpOp, Compare, Op, Revision, Store, Txn};

mod drain;

/// At most this many tasks go into one transaction: two keys each, plus a host joining
/// for each at worst, stays within etcd's 128 operations per transaction.
pub(crate) const TASKS_PER_TXN: usize = 40;

/// A job as the shard tracks it.
#[derive(Debug)]
struct JobState {
    id: JobId,
    record: JobRecord,
    /// Placed replicas.
    placed: BTreeMap<u32, TaskId>,
}

/// What one round of placement did.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub(crate) struct Placed {
    /// Tasks written.
    pub(crate) tasks: u64,
    /// Transactions that committed.
    pub(crate) txns: u64,
    /// Transactions refused because a host was taken meanwhile.
    pub(crate) conflicts: u64,
    /// Hosts that joined the entitlement (the scheduler's other shards learn of them
    /// at once instead of at the watch's pace).
    pub(crate) joined: Vec<String>,
}

/// Why a shard stopped.
#[derive(Debug)]
pub(crate) enum Outcome {
    /// Still leading.
    Leading(Placed),
    /// The fence failed: another scheduler leads now. Nothing was written.
    Deposed,
    /// A move was refused because its destination was taken meanwhile: the allocator
    /// is ahead of the store, so the shard is dropped and rebuilt from the store.
    Rebuild,
}

/// One led entitlement.
pub(crate) struct Shard {
    pub(crate) name: String,
    /// The fencing token: the create revision of the leader key.
    pub(crate) epoch: Revision,
    /// The snapshot revision the allocator was built at; older events are in it.
    pub(crate) revision: Revision,
    scheduler: String,
    alloc: Allocator,
    ent: EntitlementId,
    ids: HashMap<String, HostId>,
    names: Vec<String>,
    /// Hosts of other entitlements (cordoned here).
    foreign: HashSet<HostId>,
    jobs: BTreeMap<String, JobState>,
    next_task: u64,
    next_job: u64,
    /// Hosts with a drain record: its mod revision and state. All are cordoned here.
    drains: BTreeMap<String, (Revision, DrainState)>,
    /// This entitlement's TaskControl operations, by (job, op id), and whether acked.
    ops: BTreeMap<(String, String), (OpRecord, bool)>,
    /// Something changed that may let pending tasks be placed.
    pub(crate) dirty: bool,
}

fn demand(c: Capacity) -> Demand {
    Demand {
        resources: Resources::new(c.cpu_milli, c.memory_mib),
        gpu: GpuDemand::None,
    }
}

impl Shard {
    /// Builds the shard from the store as it is now (a snapshot at one revision, at or
    /// after the revision at which this scheduler took the leader key, so every write
    /// of a previous leader is in it).
    pub(crate) async fn rebuild<S: Store>(
        store: &S,
        scheduler: &str,
        name: &str,
        epoch: Revision,
    ) -> Result<Shard, SchedError> {
        let ents = store
            .get(&format!("{}{name}/", keys::ENTS), true, None)
            .await?;
        let hosts = store.get(keys::HOSTS, true, Some(ents.revision)).await?;
        let ops = store
            .get(
                &format!("{}{name}/", keys::TASKCONTROL),
                true,
                Some(ents.revision),
            )
            .await?;
        let view = View::from_snapshot(
            ents.revision,
            ents.kvs.iter().chain(&hosts.kvs).chain(&ops.kvs),
        )?;
        let spec = view
            .ents
            .get(name)
            .and_then(|e| e.spec.clone())
            .ok_or_else(|| SchedError::Inconsistent(format!("entitlement {name} has no record")))?;
        match view.ents.get(name).and_then(|e| e.leader.clone()) {
            Some((who, rev)) if who == scheduler && rev == epoch => {}
            _ => return Err(SchedError::Deposed(name.to_owned())),
        }
        // A seed per entitlement: shards racing for free hosts try them in different orders.
        let mut alloc =
            Allocator::new(AllocatorConfig::default().with_seed(super::assign::fnv1a(&[name])));
        let mut ids = HashMap::new();
        let mut names = Vec::new();
        let mut machine_type = None;
        for (host, entry) in &view.hosts {
            let Some(info) = &entry.info else { continue };
            let [r, dc, pd, rack] = &info.domain;
            let spec = HostSpec::new(Resources::new(
                info.capacity.cpu_milli,
                info.capacity.memory_mib,
            ))
            .machine_type(&info.machine_type)
            .domain([r, dc, pd, rack]);
            let id = alloc.add_host(&spec)?;
            ids.insert(host.clone(), id);
            names.push(host.clone());
            machine_type.get_or_insert_with(|| info.machine_type.clone());
        }
        let machine_type = machine_type.unwrap_or_else(|| "standard".to_owned());
        let ent = alloc.add_entitlement(
            name,
            Quota::machines([(machine_type.as_str(), spec.quota_machines)]),
        )?;
        let mut shard = Shard {
            name: name.to_owned(),
            epoch,
            revision: view.revision,
            scheduler: scheduler.to_owned(),
            alloc,
            ent,
            ids,
            names,
            foreign: HashSet::new(),
            jobs: BTreeMap::new(),
            next_task: 0,
            next_job: 0,
            drains: BTreeMap::new(),
            ops: BTreeMap::new(),
            dirty: true,
        };
        let ev = view.ents.get(name).cloned().unwrap_or_default();
        for (job, record) in &ev.jobs {
            shard.add_job(job, record.clone());
        }
        // The recorded placements, job by job, exactly where they are.
        let mut by_job: BTreeMap<&str, Vec<(u32, &TaskRecord)>> = BTreeMap::new();
        for ((job, i), rec) in &ev.tasks {
            by_job.entry(job.as_str()).or_default().push((*i, rec));
        }
        for (job, tasks) in by_job {
            let Some(js) = shard.jobs.get(job) else {
                return Err(SchedError::Inconsistent(format!(
                    "entitlement {name}: tasks of job {job}, which has no record"
                )));
            };
            let jid = js.id;
            let mut req = shard.request(jid);
            let mut hosts = Vec::new();
            let mut placed = Vec::new();
            for (i, rec) in tasks {
                let h = shard.host_id(&rec.host)?;
                let t = shard.new_task()?;
                req = req.allocate(t, demand(rec.demand));
                hosts.push(h);
                placed.push((i, t));
            }
            shard.alloc.place_at(&req, &hosts).map_err(|e| {
                SchedError::Inconsistent(format!(
                    "entitlement {name}, job {job}: the store's placements do not fit: {e}"
                ))
            })?;
            if let Some(js) = shard.jobs.get_mut(job) {
                js.placed.extend(placed);
            }
        }
        // Hosts of other entitlements are cordoned; hosts of this one the allocator
        // released (they hold no task) go back to the pool in the store too.
        let mut release = Vec::new();
        for (host, entry) in &view.hosts {
            let Some(&id) = shard.ids.get(host) else {
                continue;
            };
            match entry.owner.as_deref() {
                Some(FREE) | None => {}
                Some(o) if o == name => {
                    if shard.alloc.host(id)?.tasks().is_empty() {
                        release.push(host.clone());
                    }
                }
                Some(_) => {
                    shard.alloc.cordon(id)?;
                    shard.foreign.insert(id);
                }
            }
        }
        // Draining and drained hosts are cordoned; outstanding operations continue.
        for (host, entry) in &view.hosts {
            if let Some((rec, rev)) = &entry.drain {
                shard.drain_seen(host, *rev, rec.state)?;
            }
        }
        for (k, rec) in &ev.ops {
            let acked = ev.acks.contains(k);
            shard.ops.insert(k.clone(), (rec.clone(), acked));
        }
        for chunk in release.chunks(100) {
            let txn = Txn::new()
                .when([shard.fence()])
                .and_then(chunk.iter().map(|h| Op::put(keys::host_owner(h), FREE)));
            if !store.txn(txn).await?.succeeded {
                return Err(SchedError::Deposed(name.to_owned()));
            }
        }
        Ok(shard)
    }

    fn add_job(&mut self, job: &str, record: JobRecord) {
        if self.jobs.contains_key(job) {
            return;
        }
        let id = JobId(self.next_job);
        self.next_job += 1;
        self.jobs.insert(
            job.to_owned(),
            JobState {
                id,
                record,
                placed: BTreeMap::new(),
            },
        );
        self.dirty = true;
    }

    fn new_task(&mut self) -> Result<TaskId, SchedError> {
        let t = TaskId(self.next_task);
        self.next_task = self
            .next_task
            .checked_add(1)
            .ok_or_else(|| SchedError::Inconsistent("task ids exhausted".into()))?;
        Ok(t)
    }

    fn host_id(&self, host: &str) -> Result<HostId, SchedError> {
        self.ids.get(host).copied().ok_or_else(|| {
            SchedError::Inconsistent(format!("entitlement {}: unknown host {host}", self.name))
        })
    }

    fn host_name(&self, id: HostId) -> Result<&str, SchedError> {
        self.names
            .get(id.0 as usize)
            .map(String::as_str)
            .ok_or_else(|| {
                SchedError::Inconsistent(format!("entitlement {}: unknown {id}", self.name))
            })
    }

    /// The request every placement of a job is made with (the same on every leader,
    /// so a rebuilt shard checks recorded placements by the rules they were made by).
    fn request(&self, job: JobId) -> Request {
        Request::new(self.ent, job)
    }

    /// The fence: the leader key still has the create revision this shard took it at.
    pub(crate) fn fence(&self) -> Compare {
        Compare::create_revision(keys::ent_leader(&self.name), CmpOp::Equal, self.epoch)
    }

    /// Follows one change the watch saw (changes at or before the snapshot are in it).
    pub(crate) fn observe(
        &mut self,
        revision: Revision,
        change: &Change,
        view: &View,
    ) -> Result<(), SchedError> {
        if revision <= self.revision {
            return Ok(());
        }
        match change {
            Change::Job(ent, job) if *ent == self.name => {
                if let Some(rec) = view.ents.get(ent).and_then(|e| e.jobs.get(job)) {
                    self.add_job(job, rec.clone());
                }
            }
            Change::HostOwner(host, owner) => {
                let Some(&id) = self.ids.get(host) else {
                    return Ok(());
                };
                match owner.as_deref() {
                    Some(FREE) => {
                        // A draining host stays cordoned wherever it goes.
                        if self.foreign.remove(&id) && !self.drains.contains_key(host) {
                            self.alloc.host_up(id)?;
                            self.dirty = true;
                        }
                    }
                    Some(o) if o == self.name => {}
                    _ => self.taken(host)?,
                }
            }
            Change::HostDrain(host) => {
                match view.hosts.get(host).and_then(|h| h.drain.as_ref()) {
                    Some((rec, rev)) => self.drain_seen(host, *rev, rec.state)?,
                    None => {
                        // The record was removed by hand: the host takes tasks again.
                        if self.drains.remove(host).is_some()
                            && let Some(&id) = self.ids.get(host)
                            && !self.foreign.contains(&id)
                        {
                            self.alloc.host_up(id)?;
                            self.dirty = true;
                        }
                    }
                }
            }
            Change::TaskControl(ent, job, op) if *ent == self.name => {
                let key = (job.clone(), op.clone());
                let ev = view.ents.get(ent);
                match ev.and_then(|e| e.ops.get(&key)) {
                    Some(rec) => {
                        let acked = ev.is_some_and(|e| e.acks.contains(&key));
                        self.ops.insert(key, (rec.clone(), acked));
                    }
                    None => {
                        self.ops.remove(&key);
                    }
                }
            }
            _ => {}
        }
        Ok(())
    }

    /// A host another entitlement took: cordoned here (a no-op if known already).
    pub(crate) fn taken(&mut self, host: &str) -> Result<(), SchedError> {
        let Some(&id) = self.ids.get(host) else {
            return Ok(());
        };
        if self.foreign.contains(&id) {
            return Ok(());
        }
        if !self.alloc.host(id)?.tasks().is_empty() {
            return Err(SchedError::Inconsistent(format!(
                "host {host} holds tasks of {} but another entitlement took it",
                self.name
            )));
        }
        self.alloc.cordon(id)?;
        self.foreign.insert(id);
        Ok(())
    }

    /// Tasks not yet placed.
    pub(crate) fn pending(&self) -> usize {
        self.jobs
            .values()
            .map(|j| (j.record.replicas as usize).saturating_sub(j.placed.len()))
            .sum()
    }

    /// Places what is pending, in fenced transactions of up to [`TASKS_PER_TXN`] tasks
    /// (of one job or several). A transaction refused because a host was taken undoes
    /// its placements in the allocator and ends the round; the next round retries
    /// without that host.
    pub(crate) async fn place<S: Store>(&mut self, store: &S) -> Result<Outcome, SchedError> {
        let mut done = Placed::default();
        if !self.dirty {
            return Ok(Outcome::Leading(done));
        }
        self.dirty = false;
        let mut batch = Batch::default();
        let jobs: Vec<String> = self.jobs.keys().cloned().collect();
        for job in jobs {
            while let Some(js) = self.jobs.get(&job) {
                let room = TASKS_PER_TXN - batch.tasks;
                let missing: Vec<u32> = (0..js.record.replicas)
                    .filter(|i| !js.placed.contains_key(i))
                    .take(room)
                    .collect();
                if missing.is_empty() {
                    break;
                }
                let (jid, d) = (js.id, demand(js.record.demand));
                let mut req = self.request(jid);
                let mut index_of = HashMap::new();
                for &i in &missing {
                    let t = self.new_task()?;
                    req = req.allocate(t, d);
                    index_of.insert(t, i);
                }
                let out = self.alloc.apply(&req)?;
                if !out.placed.is_empty() {
                    self.add_to(&mut batch, &job, jid, &out, &index_of)?;
                }
                // The job's replicas are in the batch up to its room; only a full batch,
                // once committed, leaves more of this job to place in this round.
                if batch.tasks < TASKS_PER_TXN {
                    break;
                }
                if let Some(o) = self.commit(store, &mut batch, &mut done).await? {
                    return Ok(o);
                }
                if self.dirty || out.placed.len() < missing.len() {
                    return Ok(Outcome::Leading(done));
                }
            }
        }
        if let Some(o) = self.commit(store, &mut batch, &mut done).await? {
            return Ok(o);
        }
        Ok(Outcome::Leading(done))
    }

    /// Adds one allocation's placements to the transaction being built.
    fn add_to(
        &self,
        batch: &mut Batch,
        job: &str,
        jid: JobId,
        out: &twine_sched::Allocation,
        index_of: &HashMap<TaskId, u32>,
    ) -> Result<(), SchedError> {
        for &h in &out.hosts_joined {
            let host = self.host_name(h)?.to_owned();
            batch
                .when
                .push(Compare::value(keys::host_owner(&host), CmpOp::Equal, FREE));
            batch.when.push(Compare::create_revision(
                keys::host_drain(&host),
                CmpOp::Equal,
                0,
            ));
            batch
                .ops
                .push(Op::put(keys::host_owner(&host), self.name.clone()));
            batch.joined.push((h, host));
        }
        for &h in &out.hosts_released {
            let host = self.host_name(h)?.to_owned();
            batch.ops.push(Op::put(keys::host_owner(&host), FREE));
        }
        let mut tasks = Vec::new();
        for p in &out.placed {
            let i = *index_of.get(&p.task).ok_or_else(|| {
                SchedError::Inconsistent(format!("{} placed but not asked for", p.task))
            })?;
            let host = self.host_name(p.host)?.to_owned();
            let rec = TaskRecord {
                host: host.clone(),
                demand: p_demand(self, p.task)?,
                writer: self.scheduler.clone(),
                epoch: self.epoch,
            };
            let assign = Assignment {
                entitlement: self.name.clone(),
                job: job.to_owned(),
                index: i,
                demand: rec.demand,
            };
            batch
                .ops
                .push(Op::put(keys::task(&self.name, job, i), model::encode(&rec)));
            batch
                .ops
                .push(Op::put(keys::assign(&host, job, i), model::encode(&assign)));
            tasks.push((i, p.task));
        }
        batch.tasks += tasks.len();
        batch.parts.push((job.to_owned(), jid, tasks));
        Ok(())
    }

    /// Commits the batch (if any). `Some(Deposed)` if the fence failed; on a host
    /// taken meanwhile, undoes the batch's placements, cordons the host and marks the
    /// shard dirty.
    async fn commit<S: Store>(
        &mut self,
        store: &S,
        batch: &mut Batch,
        done: &mut Placed,
    ) -> Result<Option<Outcome>, SchedError> {
        let b = std::mem::take(batch);
        if b.tasks == 0 {
            return Ok(None);
        }
        let mut otherwise = vec![Op::get(keys::ent_leader(&self.name))];
        otherwise.extend(
            b.joined
                .iter()
                .map(|(_, host)| Op::get(keys::host_owner(host))),
        );
        otherwise.extend(
            b.joined
                .iter()
                .map(|(_, host)| Op::get(keys::host_drain(host))),
        );
        let txn = Txn::new()
            .when([self.fence()])
            .when(b.when)
            .and_then(b.ops)
            .or_else(otherwise);
        let res = store.txn(txn).await?;
        if res.succeeded {
            done.txns += 1;
            done.tasks += b.tasks as u64;
            done.joined
                .extend(b.joined.into_iter().map(|(_, host)| host));
            for (job, _, tasks) in b.parts {
                if let Some(js) = self.jobs.get_mut(&job) {
                    js.placed.extend(tasks);
                }
            }
            return Ok(None);
        }
        // Refused: either the fence (another leader) or a host taken meanwhile.
        let leader = res.responses.first().and_then(|r| r.first());
        if leader.is_none_or(|kv| kv.create_revision != self.epoch) {
            return Ok(Some(Outcome::Deposed));
        }
        done.conflicts += 1;
        for (_, jid, tasks) in &b.parts {
            let mut undo = self.request(*jid);
            for &(_, t) in tasks {
                undo = undo.free(t);
            }
            self.alloc.apply(&undo)?;
        }
        for (k, (h, _)) in b.joined.iter().enumerate() {
            let owner = res
                .responses
                .get(k + 1)
                .and_then(|r| r.first())
                .map(|kv| kv.value.as_str());
            let draining = res
                .responses
                .get(k + 1 + b.joined.len())
                .is_some_and(|r| !r.is_empty());
            if (owner != Some(FREE) || draining) && self.foreign.insert(*h) {
                self.alloc.cordon(*h)?;
            }
        }
        self.dirty = true;
        Ok(None)
    }
}

/// The demand a placed task holds in the allocator.
fn p_demand(shard: &Shard, task: TaskId) -> Result<Capacity, SchedError> {
    let r = shard.alloc.task_view(task)?.demand.resources;
    Ok(Capacity {
        cpu_milli: r.cpu_milli,
        memory_mib: r.memory_mib,
    })
}

/// One job's share of a batch: its name, id and the (replica, task) pairs placed.
type Part = (String, JobId, Vec<(u32, TaskId)>);

/// A placement transaction being built.
#[derive(Debug, Default)]
struct Batch {
    /// Owner compares of joining hosts.
    when: Vec<Compare>,
    /// Its writes.
    ops: Vec<Op>,
    /// Hosts joining, with their names.
    joined: Vec<(HostId, String)>,
    /// Per job: its name, id and the (replica, task) pairs placed.
    parts: Vec<Part>,
    /// Tasks in it.
    tasks: usize,
}
