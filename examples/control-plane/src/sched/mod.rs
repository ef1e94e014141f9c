//! A scheduler shard: `twine-control scheduler --name NAME`.
//!
//! - **Session.** The scheduler registers `/twine/v1/scheds/<name>` on a lease of its
//!   own (create-if-absent, so a second process under the same name is refused) and
//!   keeps the lease alive. If the lease is lost (the process paused past its TTL, or
//!   etcd expired it), the scheduler stops: its leader keys went with the lease, and
//!   every write it might still try is fenced.
//! - **Who leads what.** Every scheduler computes the desired leader of each
//!   entitlement from the live schedulers ([`assign::desired_leaders`]). It takes the
//!   leader key of an entitlement it should lead when the key is absent (a transaction
//!   comparing its create revision with 0), and hands over one it should no longer lead
//!   by deleting its key once the desired leader is live. A scheduler that dies loses
//!   its keys when its lease expires, and the others take over its entitlements.
//! - **Leading.** Taking the key yields the fencing token (its create revision). The
//!   scheduler then rebuilds that entitlement's allocator from a snapshot at or after
//!   that revision (`shard.rs`) and follows the watch from there. Every
//!   write about the entitlement is a transaction that compares the token; a host joins
//!   the entitlement only by a transaction that also compares its owner with `free`.
//! - **Draining** (`Shard::drain`): a host with a drain key is cordoned in every
//!   shard; the leader owning it offers each of its tasks' jobs a TaskControl `move`
//!   and moves a task, in one fenced transaction, once the job's controller acks it.
//! - **Handing over** keeps tasks running: assignments are not touched, and the next
//!   leader rebuilds the same placements from the store.

pub mod assign;
mod shard;
mod view;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use tokio::sync::watch;

use crate::keys;
use crate::model::BadRecord;
use crate::store::{CmpOp, Compare, LeaseId, Op, Revision, Store, StoreError, Txn, WatchMessage};
use shard::{Outcome, Shard};
use view::View;

/// Why a scheduler stopped or could not start.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SchedError {
    /// The store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// Another process runs under this name.
    #[error(
        "scheduler {name:?} is already running (registered at revision {since}); names must be unique"
    )]
    AlreadyRunning {
        /// The name.
        name: String,
        /// When the other registered.
        since: Revision,
    },
    /// The name cannot go into a key.
    #[error(transparent)]
    BadName(#[from] keys::BadName),
    /// `fleet init` has not run against this store.
    #[error("the store has no fleet: run `twine-control fleet init` first")]
    NoFleet,
    /// The session lease expired (the process paused longer than its TTL, or etcd was
    /// unreachable that long); the scheduler stops instead of acting on stale leadership.
    #[error("session lease of scheduler {0:?} expired; stepping down")]
    SessionLost(String),
    /// An entitlement's leader key changed under this scheduler.
    #[error("lost the lead of entitlement {0:?}")]
    Deposed(String),
    /// A stored record does not parse.
    #[error(transparent)]
    BadRecord(#[from] BadRecord),
    /// The allocator refused something the store holds, or its books disagree.
    #[error("allocator: {0}")]
    Alloc(#[from] twine_sched::AllocError),
    /// The store holds something impossible (placements over capacity, tasks of a job
    /// that does not exist, a host given to two entitlements).
    #[error("inconsistent store: {0}")]
    Inconsistent(String),
}

/// Counters a running scheduler keeps (for the benchmarks and the logs).
#[derive(Debug, Default)]
pub struct Stats {
    /// Tasks placed.
    pub placed: AtomicU64,
    /// Placement transactions committed.
    pub txns: AtomicU64,
    /// Placement transactions refused because a host was taken meanwhile.
    pub conflicts: AtomicU64,
    /// Times this scheduler took an entitlement's lead.
    pub acquired: AtomicU64,
    /// Times it lost or handed over one.
    pub released: AtomicU64,
}

/// How a scheduler runs.
#[derive(Debug, Clone)]
pub struct SchedulerConfig {
    /// Its unique name.
    pub name: String,
    /// The TTL of its session lease, in seconds (failover takes about this long).
    pub lease_ttl: i64,
}

/// A running scheduler's handle: its counters and a way to stop it.
#[derive(Debug, Clone)]
pub struct SchedulerHandle {
    /// Its counters.
    pub stats: Arc<Stats>,
    stop: watch::Sender<bool>,
}

impl SchedulerHandle {
    /// A handle with fresh counters.
    pub fn new() -> SchedulerHandle {
        SchedulerHandle {
            stats: Arc::new(Stats::default()),
            stop: watch::channel(false).0,
        }
    }
    /// Asks the scheduler to resign its leads and stop.
    pub fn stop(&self) {
        self.stop.send_replace(true);
    }
}

impl Default for SchedulerHandle {
    fn default() -> Self {
        SchedulerHandle::new()
    }
}

/// Runs a scheduler until [`SchedulerHandle::stop`], or an error. On stop it hands its
/// entitlements over (deletes its leader keys) and revokes its session.
pub async fn run<S: Store>(
    store: S,
    config: SchedulerConfig,
    handle: SchedulerHandle,
) -> Result<(), SchedError> {
    keys::check_name("scheduler", &config.name)?;
    let fleet = store.get(keys::FLEET, false, None).await?;
    if fleet.kvs.is_empty() {
        return Err(SchedError::NoFleet);
    }
    let lease = store.lease_grant(config.lease_ttl).await?;
    let me = keys::sched(&config.name);
    let reg = Txn::new()
        .when([Compare::create_revision(&me, CmpOp::Equal, 0)])
        .and_then([Op::put_leased(&me, "live", lease.id)])
        .or_else([Op::get(&me)]);
    let res = store.txn(reg).await?;
    if !res.succeeded {
        let since = res
            .responses
            .first()
            .and_then(|r| r.first())
            .map_or(0, |kv| kv.create_revision);
        store.lease_revoke(lease.id).await.ok();
        return Err(SchedError::AlreadyRunning {
            name: config.name.clone(),
            since,
        });
    }
    tracing::info!(scheduler = %config.name, lease = lease.id, ttl = lease.ttl, "registered");
    let (lost_tx, mut lost) = watch::channel(false);
    // Ends with this future, however it ends (also when its task is aborted): a
    // scheduler that is gone must not keep its lease alive.
    let _keeper = AbortOnDrop(tokio::spawn(keep_alive(
        store.clone(),
        lease.id,
        lease.ttl,
        lost_tx,
    )));
    let mut s = Scheduler {
        store: store.clone(),
        name: config.name.clone(),
        lease: lease.id,
        view: View::default(),
        shards: BTreeMap::new(),
        stats: handle.stats.clone(),
    };
    let mut stop = handle.stop.subscribe();
    let result = loop {
        match s.main_loop(&mut stop, &mut lost).await {
            // The store failed (unreachable, a raft leader election, a broken watch):
            // the session may well outlive it, and every write is fenced anyway; keep
            // going from a fresh snapshot. Only a lost session, a stop or an error of
            // the scheduler's own ends the process.
            Err(SchedError::Store(e)) if transient(&e) => {
                tracing::warn!("store: {e}; retrying from a snapshot");
                tokio::select! {
                    _ = tokio::time::sleep(Duration::from_millis(500)) => {}
                    _ = stop.changed() => break Ok(()),
                    _ = lost.changed() => break Err(SchedError::SessionLost(config.name.clone())),
                }
            }
            other => break other,
        }
    };
    if result.is_ok() || matches!(result, Err(SchedError::Store(_))) {
        s.resign().await;
    }
    result
}

/// Aborts a task when dropped.
struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// A store error that may go away on its own (as opposed to a refused request).
fn transient(e: &StoreError) -> bool {
    matches!(
        e,
        StoreError::Unreachable { .. } | StoreError::Backend(_) | StoreError::Compacted { .. }
    )
}

async fn keep_alive<S: Store>(store: S, lease: LeaseId, ttl: i64, lost: watch::Sender<bool>) {
    let period = Duration::from_millis(u64::try_from(ttl.max(1) * 1000 / 3).unwrap_or(1000));
    loop {
        tokio::time::sleep(period).await;
        match store.lease_keep_alive(lease).await {
            Ok(_) => {}
            Err(StoreError::LeaseNotFound(_)) => {
                lost.send_replace(true);
                return;
            }
            // The store is unreachable: keep trying; if the lease expires meanwhile the
            // next renewal says so, and every write in between is fenced anyway.
            Err(e) => tracing::warn!("lease renewal failed: {e}"),
        }
    }
}

struct Scheduler<S: Store> {
    store: S,
    name: String,
    lease: LeaseId,
    view: View,
    shards: BTreeMap<String, Shard>,
    stats: Arc<Stats>,
}

impl<S: Store> Scheduler<S> {
    async fn main_loop(
        &mut self,
        stop: &mut watch::Receiver<bool>,
        lost: &mut watch::Receiver<bool>,
    ) -> Result<(), SchedError> {
        'rebuild: loop {
            // A snapshot at one revision, then the watches from the next.
            let scheds = self.store.get(keys::SCHEDS, true, None).await?;
            let r = scheds.revision;
            let ents = self.store.get(keys::ENTS, true, Some(r)).await?;
            let hosts = self.store.get(keys::HOSTS, true, Some(r)).await?;
            let fleet = self.store.get(keys::FLEET, false, Some(r)).await?;
            let ops = self.store.get(keys::TASKCONTROL, true, Some(r)).await?;
            self.view = View::from_snapshot(
                r,
                scheds
                    .kvs
                    .iter()
                    .chain(&ents.kvs)
                    .chain(&hosts.kvs)
                    .chain(&fleet.kvs)
                    .chain(&ops.kvs),
            )?;
            // Shards built before this snapshot are rebuilt from the store too.
            self.shards.clear();
            let mut w_s = self.store.watch(keys::SCHEDS, r + 1).await?;
            let mut w_e = self.store.watch(keys::ENTS, r + 1).await?;
            let mut w_h = self.store.watch(keys::HOSTS, r + 1).await?;
            let mut w_t = self.store.watch(keys::TASKCONTROL, r + 1).await?;
            let mut tick = tokio::time::interval(Duration::from_millis(500));
            loop {
                self.reconcile().await?;
                let msg = tokio::select! {
                    m = w_s.next() => m,
                    m = w_e.next() => m,
                    m = w_h.next() => m,
                    m = w_t.next() => m,
                    _ = tick.tick() => continue,
                    _ = stop.changed() => return Ok(()),
                    _ = lost.changed() => return Err(SchedError::SessionLost(self.name.clone())),
                };
                match msg {
                    Some(Ok(WatchMessage::Events(events))) => {
                        for ev in &events {
                            let change = self.view.apply(ev)?;
                            for shard in self.shards.values_mut() {
                                shard.observe(ev.revision(), &change, &self.view)?;
                            }
                        }
                    }
                    Some(Ok(WatchMessage::Progress(_))) => {}
                    Some(Ok(WatchMessage::Canceled { compact_revision })) => {
                        tracing::warn!(
                            compact_revision,
                            "watch compacted away; rebuilding from a snapshot"
                        );
                        continue 'rebuild;
                    }
                    Some(Err(e)) => {
                        tracing::warn!("watch failed: {e}; rebuilding from a snapshot");
                        tokio::time::sleep(Duration::from_millis(200)).await;
                        continue 'rebuild;
                    }
                    None => {
                        tokio::time::sleep(Duration::from_millis(200)).await;
                        continue 'rebuild;
                    }
                }
            }
        }
    }

    /// Takes, hands over and drops leads as the view says, then places what is pending.
    async fn reconcile(&mut self) -> Result<(), SchedError> {
        let live: Vec<&str> = self.view.scheds.keys().map(String::as_str).collect();
        let ents = self.view.entitlement_names();
        let desired: BTreeMap<String, String> = assign::desired_leaders(&live, &ents)
            .into_iter()
            .map(|(e, s)| (e.to_owned(), s.to_owned()))
            .collect();
        // Leads lost (key gone or taken at another revision).
        let lost: Vec<String> = self
            .shards
            .iter()
            .filter(|(e, sh)| {
                self.view
                    .ents
                    .get(*e)
                    .and_then(|v| v.leader.as_ref())
                    .is_some_and(|(who, rev)| who != &self.name || *rev != sh.epoch)
                    || self.view.ents.get(*e).is_some_and(|v| {
                        v.leader.is_none() && self.view.ents_revision > sh.revision
                    })
            })
            .map(|(e, _)| e.clone())
            .collect();
        for e in lost {
            tracing::warn!(entitlement = %e, "lost the lead");
            self.shards.remove(&e);
            self.stats.released.fetch_add(1, Ordering::Relaxed);
        }
        // Hand over what another live scheduler should lead.
        let handover: Vec<String> = self
            .shards
            .keys()
            .filter(|e| desired.get(*e).is_some_and(|d| d != &self.name))
            .cloned()
            .collect();
        for e in handover {
            if let Some(sh) = self.shards.remove(&e) {
                let txn = Txn::new()
                    .when([sh.fence()])
                    .and_then([Op::delete(keys::ent_leader(&e))]);
                if self.store.txn(txn).await?.succeeded {
                    tracing::info!(entitlement = %e, to = %desired[&e], "handed over");
                } else {
                    tracing::warn!(entitlement = %e, "lost the lead before handing it over");
                }
                self.stats.released.fetch_add(1, Ordering::Relaxed);
            }
        }
        // Leader keys this scheduler holds without a shard (after a rebuild of its view)
        // that it should no longer hold: hand them over too.
        let orphans: Vec<(String, Revision)> = self
            .view
            .ents
            .iter()
            .filter(|(e, _)| {
                !self.shards.contains_key(*e) && desired.get(*e).is_none_or(|d| d != &self.name)
            })
            .filter_map(|(e, v)| match &v.leader {
                Some((who, rev)) if who == &self.name => Some((e.clone(), *rev)),
                _ => None,
            })
            .collect();
        for (e, rev) in orphans {
            let key = keys::ent_leader(&e);
            let txn = Txn::new()
                .when([Compare::create_revision(&key, CmpOp::Equal, rev)])
                .and_then([Op::delete(&key)]);
            self.store.txn(txn).await?;
        }
        // Take what this scheduler should lead and nobody does.
        for (e, d) in &desired {
            if d != &self.name || self.shards.contains_key(e) {
                continue;
            }
            let leader = self.view.ents.get(e).and_then(|v| v.leader.clone());
            let epoch = match leader {
                Some((who, rev)) if who == self.name => rev,
                Some(_) => continue,
                None => {
                    let key = keys::ent_leader(e);
                    let txn = Txn::new()
                        .when([Compare::create_revision(&key, CmpOp::Equal, 0)])
                        .and_then([Op::put_leased(&key, self.name.clone(), self.lease)]);
                    let res = self.store.txn(txn).await?;
                    if !res.succeeded {
                        continue;
                    }
                    res.revision
                }
            };
            match Shard::rebuild(&self.store, &self.name, e, epoch).await {
                Ok(sh) => {
                    tracing::info!(entitlement = %e, epoch, pending = sh.pending(), "leading");
                    self.stats.acquired.fetch_add(1, Ordering::Relaxed);
                    self.shards.insert(e.clone(), sh);
                }
                Err(SchedError::Deposed(_)) => {}
                Err(err) => return Err(err),
            }
        }
        // Place, then drain: offer, move what was acked, mark drained.
        let names: Vec<String> = self.shards.keys().cloned().collect();
        for e in &names {
            let Some(sh) = self.shards.get_mut(e) else {
                continue;
            };
            let outcome = sh.place(&self.store).await?;
            if let Outcome::Leading(p) = &outcome {
                self.stats.placed.fetch_add(p.tasks, Ordering::Relaxed);
                self.stats.txns.fetch_add(p.txns, Ordering::Relaxed);
                self.stats
                    .conflicts
                    .fetch_add(p.conflicts, Ordering::Relaxed);
            }
            self.settle(e, outcome)?;
        }
        let names: Vec<String> = self.shards.keys().cloned().collect();
        for e in &names {
            let Some(sh) = self.shards.get_mut(e) else {
                continue;
            };
            let outcome = sh.drain(&self.store, &self.view).await?;
            self.settle(e, outcome)?;
        }
        Ok(())
    }

    /// Acts on what a shard's round of placing or draining did: hosts it took are
    /// cordoned in the scheduler's other shards at once; a deposed shard is dropped; a
    /// shard whose allocator got ahead of the store (a host taken meanwhile under a
    /// move) is dropped and rebuilt next round with the same token.
    fn settle(&mut self, e: &str, outcome: Outcome) -> Result<(), SchedError> {
        match outcome {
            Outcome::Leading(p) => {
                for (other, sh) in self.shards.iter_mut() {
                    if other != e {
                        for host in &p.joined {
                            sh.taken(host)?;
                        }
                    }
                }
            }
            Outcome::Deposed => {
                tracing::warn!(entitlement = %e, "deposed: a fenced write was refused");
                self.shards.remove(e);
                self.stats.released.fetch_add(1, Ordering::Relaxed);
            }
            Outcome::Rebuild => {
                tracing::info!(entitlement = %e, "a move conflicted; rebuilding the shard");
                self.shards.remove(e);
            }
        }
        Ok(())
    }

    /// Hands every lead over and ends the session (best effort: if the store is gone,
    /// the lease expires on its own).
    async fn resign(&mut self) {
        for (e, sh) in std::mem::take(&mut self.shards) {
            let txn = Txn::new()
                .when([sh.fence()])
                .and_then([Op::delete(keys::ent_leader(&e))]);
            self.store.txn(txn).await.ok();
        }
        self.store.lease_revoke(self.lease).await.ok();
    }
}
