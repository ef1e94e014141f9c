//! The embedded store: an in-process MVCC key-value store with the etcd v3 semantics
//! the control plane relies on (see the module doc of [`super`]).
//!
//! State lives behind one `std::sync::Mutex` (never held across an `.await`):
//! - per key, its history since the last compaction (a value or a tombstone per
//!   revision that touched it), in a `BTreeMap` so prefix reads are range scans;
//! - a log of the events of every revision since the last compaction, for watches
//!   that start in the past;
//! - the leases, with their deadlines on `tokio::time::Instant` (so tests can pause
//!   time) and their keys;
//! - the live watchers, fed through unbounded channels while the writer holds the
//!   lock, so a watcher sees every revision exactly once and in order.
//!
//! Like etcd, a revision is spent only when something changes: a put, a delete that
//! found keys, a transaction whose branch wrote, a lease expiry or revoke that deleted
//! keys (one revision per lease, its keys deleted in key order).

use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, Weak};
use std::time::Duration;

use tokio::time::Instant;

use super::*;

/// How often the background task looks for expired leases.
const LEASE_TICK: Duration = Duration::from_millis(100);

/// The in-memory store: a cheap handle (clones share one state).
#[derive(Clone)]
pub struct MemoryStore {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for MemoryStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let st = self.inner.lock();
        f.debug_struct("MemoryStore")
            .field("revision", &st.revision)
            .field("compacted", &st.compacted)
            .field("keys", &st.keys.len())
            .field("leases", &st.leases.len())
            .field("watchers", &st.watchers.len())
            .finish()
    }
}

impl Default for MemoryStore {
    fn default() -> MemoryStore {
        MemoryStore::new()
    }
}

struct Inner {
    state: Mutex<State>,
    /// Whether the lease-expiry task has been started.
    ticker: AtomicBool,
}

impl Inner {
    fn lock(&self) -> MutexGuard<'_, State> {
        // A panic while holding the lock leaves the state as consistent as the last
        // completed step; keep serving rather than poisoning every later call.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// One entry of a key's history: the key as written at `rev`, or `None` if deleted then.
type Entry = (Revision, Option<KeyValue>);

struct State {
    revision: Revision,
    /// The compaction revision (reads below it fail); 0 before any compaction.
    compacted: Revision,
    keys: BTreeMap<String, Vec<Entry>>,
    /// The events of revisions `log_base..=revision` (one entry per revision).
    log: VecDeque<Vec<Event>>,
    log_base: Revision,
    leases: HashMap<LeaseId, LeaseState>,
    next_lease: LeaseId,
    watchers: Watchers,
}

/// The live watchers, indexed by prefix so a write costs O(key length × log watchers)
/// rather than O(watchers) (the control plane has one watcher per host).
#[derive(Default)]
struct Watchers {
    by_id: HashMap<u64, Watcher>,
    by_prefix: BTreeMap<String, Vec<u64>>,
    next_id: u64,
    /// The count at the last sweep of closed receivers (sweeps are amortized).
    swept_at: usize,
}

impl Watchers {
    fn len(&self) -> usize {
        self.by_id.len()
    }

    fn add(&mut self, w: Watcher) {
        if self.by_id.len() >= 2 * self.swept_at.max(64) {
            let closed: Vec<u64> = self
                .by_id
                .iter()
                .filter(|(_, w)| w.tx.is_closed())
                .map(|(id, _)| *id)
                .collect();
            for id in closed {
                self.remove(id);
            }
            self.swept_at = self.by_id.len();
        }
        let id = self.next_id;
        self.next_id += 1;
        self.by_prefix.entry(w.prefix.clone()).or_default().push(id);
        self.by_id.insert(id, w);
    }

    fn remove(&mut self, id: u64) {
        let Some(w) = self.by_id.remove(&id) else {
            return;
        };
        if let Some(ids) = self.by_prefix.get_mut(&w.prefix) {
            ids.retain(|i| *i != id);
            if ids.is_empty() {
                self.by_prefix.remove(&w.prefix);
            }
        }
    }

    /// Sends the events of one revision: one message per interested watcher, its
    /// events in the revision's order. Drops watchers whose receiver is gone.
    fn send(&mut self, events: &[Event]) {
        if self.by_id.is_empty() {
            return;
        }
        let mut batches: BTreeMap<u64, Vec<Event>> = BTreeMap::new();
        for e in events {
            let key = e.key();
            for (i, _) in key.char_indices().chain([(key.len(), ' ')]) {
                if let Some(ids) = self.by_prefix.get(&key[..i]) {
                    for id in ids {
                        if self.by_id.get(id).is_some_and(|w| e.revision() >= w.start) {
                            batches.entry(*id).or_default().push(e.clone());
                        }
                    }
                }
            }
        }
        for (id, batch) in batches {
            let gone = self
                .by_id
                .get(&id)
                .is_none_or(|w| w.tx.send(Ok(WatchMessage::Events(batch))).is_err());
            if gone {
                self.remove(id);
            }
        }
    }
}

struct LeaseState {
    ttl: i64,
    deadline: Instant,
    keys: BTreeSet<String>,
}

struct Watcher {
    prefix: String,
    /// The watch's start revision: a watch opened ahead of the store skips what
    /// happens before it.
    start: Revision,
    tx: mpsc::UnboundedSender<Result<WatchMessage, StoreError>>,
}

impl MemoryStore {
    /// A fresh, empty store at revision 1.
    pub fn new() -> MemoryStore {
        MemoryStore {
            inner: Arc::new(Inner {
                state: Mutex::new(State {
                    revision: 1,
                    compacted: 0,
                    keys: BTreeMap::new(),
                    log: VecDeque::new(),
                    log_base: 2,
                    leases: HashMap::new(),
                    // Lease ids look like etcd's: large, nonzero.
                    next_lease: 0x694d_0000_0000_0001,
                    watchers: Watchers::default(),
                }),
                ticker: AtomicBool::new(false),
            }),
        }
    }

    /// The store's current revision.
    pub fn revision(&self) -> Revision {
        self.inner.lock().revision
    }

    /// Locks the state after expiring the leases whose deadline has passed.
    fn state(&self) -> MutexGuard<'_, State> {
        let mut st = self.inner.lock();
        st.expire_leases(Instant::now());
        st
    }

    /// Starts the lease-expiry task once; it holds only a `Weak` reference and ends
    /// with the store.
    fn start_ticker(&self) {
        if self.inner.ticker.swap(true, Ordering::SeqCst) {
            return;
        }
        let weak: Weak<Inner> = Arc::downgrade(&self.inner);
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(LEASE_TICK).await;
                let Some(inner) = weak.upgrade() else { break };
                inner.lock().expire_leases(Instant::now());
            }
        });
    }
}

fn in_range(key: &str, prefix: bool, candidate: &str) -> bool {
    if prefix {
        candidate.starts_with(key)
    } else {
        candidate == key
    }
}

fn invalid(msg: &str) -> StoreError {
    StoreError::InvalidTxn(msg.to_owned())
}

/// The etcd request checks: size, and no key written twice in one branch (two puts of
/// one key, or a put inside a deleted range; overlapping deletes are allowed).
fn check_txn(txn: &Txn) -> Result<(), StoreError> {
    let longest = txn.when.len().max(txn.then.len()).max(txn.otherwise.len());
    if longest > MAX_TXN_OPS {
        return Err(invalid("too many operations in txn request"));
    }
    for ops in [&txn.then, &txn.otherwise] {
        let mut puts = BTreeSet::new();
        let mut dels = Vec::new();
        for op in ops {
            match op {
                Op::Put { key, .. } => {
                    if !puts.insert(key.as_str()) {
                        return Err(invalid("duplicate key given in txn request"));
                    }
                }
                Op::Delete { key, prefix } => dels.push((key.as_str(), *prefix)),
                Op::Get { .. } => {}
            }
        }
        for (k, p) in dels {
            if puts.iter().any(|put| in_range(k, p, put)) {
                return Err(invalid("duplicate key given in txn request"));
            }
        }
    }
    Ok(())
}

impl State {
    /// The key as of `rev` (the latest entry at or below it), if it existed then.
    fn at(history: &[Entry], rev: Revision) -> Option<&KeyValue> {
        let idx = history.partition_point(|(r, _)| *r <= rev);
        idx.checked_sub(1).and_then(|i| history[i].1.as_ref())
    }

    fn live(&self, key: &str) -> Option<&KeyValue> {
        self.keys
            .get(key)
            .and_then(|h| h.last())
            .and_then(|(_, kv)| kv.as_ref())
    }

    fn range(&self, key: &str, prefix: bool, rev: Revision) -> Vec<KeyValue> {
        if !prefix {
            return self
                .keys
                .get(key)
                .and_then(|h| State::at(h, rev))
                .cloned()
                .into_iter()
                .collect();
        }
        self.keys
            .range::<str, _>((std::ops::Bound::Included(key), std::ops::Bound::Unbounded))
            .take_while(|(k, _)| k.starts_with(key))
            .filter_map(|(_, h)| State::at(h, rev).cloned())
            .collect()
    }

    fn compare(&self, c: &Compare) -> bool {
        let kv = self.live(&c.key);
        let ord = match (&c.target, kv) {
            (Target::Value(_), None) => return false,
            (Target::Value(v), Some(kv)) => kv.value.as_str().cmp(v.as_str()),
            (Target::Version(v), kv) => kv.map_or(0, |kv| kv.version).cmp(v),
            (Target::CreateRevision(r), kv) => kv.map_or(0, |kv| kv.create_revision).cmp(r),
            (Target::ModRevision(r), kv) => kv.map_or(0, |kv| kv.mod_revision).cmp(r),
            (Target::Lease(l), kv) => kv.map_or(0, |kv| kv.lease).cmp(l),
        };
        match c.op {
            CmpOp::Equal => ord.is_eq(),
            CmpOp::NotEqual => ord.is_ne(),
            CmpOp::Greater => ord.is_gt(),
            CmpOp::Less => ord.is_lt(),
        }
    }

    /// Applies a put at revision `rev` (the caller has checked the lease).
    fn put(&mut self, key: &str, value: &str, lease: LeaseId, rev: Revision) -> Event {
        let prev = self.live(key).cloned();
        if let Some(old) = prev
            .as_ref()
            .map(|kv| kv.lease)
            .filter(|l| *l != lease && *l != 0)
            && let Some(l) = self.leases.get_mut(&old)
        {
            l.keys.remove(key);
        }
        if lease != 0
            && let Some(l) = self.leases.get_mut(&lease)
        {
            l.keys.insert(key.to_owned());
        }
        let kv = KeyValue {
            key: key.to_owned(),
            value: value.to_owned(),
            create_revision: prev.as_ref().map_or(rev, |p| p.create_revision),
            mod_revision: rev,
            version: prev.as_ref().map_or(1, |p| p.version + 1),
            lease,
        };
        let history = self.keys.entry(key.to_owned()).or_default();
        match history.last_mut() {
            // The key was already written at this revision (deleted by an earlier op
            // of the same txn): the last write of the revision wins.
            Some((r, slot)) if *r == rev => *slot = Some(kv.clone()),
            _ => history.push((rev, Some(kv.clone()))),
        }
        Event::Put(kv)
    }

    /// Deletes one key at `rev` if it exists.
    fn delete_one(&mut self, key: &str, rev: Revision) -> Option<Event> {
        let lease = self.live(key)?.lease;
        if lease != 0
            && let Some(l) = self.leases.get_mut(&lease)
        {
            l.keys.remove(key);
        }
        let history = self.keys.get_mut(key)?;
        match history.last_mut() {
            Some((r, slot)) if *r == rev => *slot = None,
            _ => history.push((rev, None)),
        }
        Some(Event::Delete {
            key: key.to_owned(),
            mod_revision: rev,
        })
    }

    fn live_keys(&self, key: &str, prefix: bool) -> Vec<String> {
        let rev = self.revision + 1;
        self.range(key, prefix, rev)
            .into_iter()
            .map(|kv| kv.key)
            .collect()
    }

    /// Records the events of revision `rev` (if any) and sends them to the watchers.
    fn commit(&mut self, events: Vec<Event>) {
        if events.is_empty() {
            return;
        }
        self.revision += 1;
        self.watchers.send(&events);
        self.log.push_back(events);
    }

    fn run_ops(&mut self, ops: &[Op]) -> Vec<Vec<KeyValue>> {
        let rev = self.revision + 1;
        let mut events = Vec::new();
        let mut responses = Vec::with_capacity(ops.len());
        for op in ops {
            match op {
                Op::Put { key, value, lease } => {
                    events.push(self.put(key, value, lease.unwrap_or(0), rev));
                    responses.push(Vec::new());
                }
                Op::Delete { key, prefix } => {
                    for k in self.live_keys(key, *prefix) {
                        events.extend(self.delete_one(&k, rev));
                    }
                    responses.push(Vec::new());
                }
                Op::Get { key, prefix } => {
                    // Reads inside a txn see its earlier writes (as in etcd).
                    responses.push(self.range(key, *prefix, rev));
                }
            }
        }
        self.commit(events);
        responses
    }

    fn revoke(&mut self, id: LeaseId) -> bool {
        let Some(lease) = self.leases.remove(&id) else {
            return false;
        };
        let rev = self.revision + 1;
        let events: Vec<Event> = lease
            .keys
            .iter()
            .filter_map(|k| self.delete_one(k, rev))
            .collect();
        self.commit(events);
        true
    }

    fn expire_leases(&mut self, now: Instant) {
        if self.leases.is_empty() {
            return;
        }
        let mut expired: Vec<(Instant, LeaseId)> = self
            .leases
            .iter()
            .filter(|(_, l)| l.deadline <= now)
            .map(|(id, l)| (l.deadline, *id))
            .collect();
        expired.sort();
        for (_, id) in expired {
            self.revoke(id);
        }
    }

    fn compact(&mut self, rev: Revision) {
        self.compacted = rev;
        while self.log_base < rev && !self.log.is_empty() {
            self.log.pop_front();
            self.log_base += 1;
        }
        self.keys.retain(|_, h| {
            // Keep the newest entry at or below `rev` (what a read at `rev` sees) and
            // everything after it; drop the key if all that is left is a tombstone.
            let keep_from = h.partition_point(|(r, _)| *r <= rev).saturating_sub(1);
            h.drain(..keep_from);
            !(h.len() == 1 && h[0].1.is_none())
        });
        // Live watchers are always caught up (they are fed under the lock), so none
        // has a next revision below `rev`; a watcher created below it is canceled at
        // creation.
    }
}

impl Store for MemoryStore {
    async fn get(
        &self,
        key: &str,
        prefix: bool,
        revision: Option<Revision>,
    ) -> Result<Range, StoreError> {
        let st = self.state();
        let rev = match revision {
            Some(r) if r > 0 => {
                if r < st.compacted {
                    return Err(StoreError::Compacted {
                        requested: r,
                        compacted: st.compacted,
                    });
                }
                if r > st.revision {
                    return Err(StoreError::FutureRevision {
                        requested: r,
                        current: st.revision,
                    });
                }
                r
            }
            _ => st.revision,
        };
        Ok(Range {
            revision: st.revision,
            kvs: st.range(key, prefix, rev),
        })
    }

    async fn txn(&self, txn: Txn) -> Result<TxnResult, StoreError> {
        check_txn(&txn)?;
        let mut st = self.state();
        let succeeded = txn.when.iter().all(|c| st.compare(c));
        let ops = if succeeded { &txn.then } else { &txn.otherwise };
        for op in ops {
            if let Op::Put { lease: Some(l), .. } = op
                && *l != 0
                && !st.leases.contains_key(l)
            {
                return Err(StoreError::LeaseNotFound(*l));
            }
        }
        let responses = st.run_ops(ops);
        Ok(TxnResult {
            succeeded,
            revision: st.revision,
            responses,
        })
    }

    async fn lease_grant(&self, ttl: i64) -> Result<Lease, StoreError> {
        self.start_ticker();
        let ttl = ttl.max(MIN_LEASE_TTL);
        let mut st = self.state();
        let id = st.next_lease;
        st.next_lease += 1;
        st.leases.insert(
            id,
            LeaseState {
                ttl,
                deadline: Instant::now() + Duration::from_secs(ttl.unsigned_abs()),
                keys: BTreeSet::new(),
            },
        );
        Ok(Lease { id, ttl })
    }

    async fn lease_keep_alive(&self, id: LeaseId) -> Result<i64, StoreError> {
        let mut st = self.state();
        let lease = st
            .leases
            .get_mut(&id)
            .ok_or(StoreError::LeaseNotFound(id))?;
        lease.deadline = Instant::now() + Duration::from_secs(lease.ttl.unsigned_abs());
        Ok(lease.ttl)
    }

    async fn lease_revoke(&self, id: LeaseId) -> Result<(), StoreError> {
        if self.state().revoke(id) {
            Ok(())
        } else {
            Err(StoreError::LeaseNotFound(id))
        }
    }

    async fn watch(&self, prefix: &str, start: Revision) -> Result<WatchStream, StoreError> {
        let (tx, rx) = mpsc::unbounded_channel();
        let mut st = self.state();
        let start = if start <= 0 { st.revision + 1 } else { start };
        if start < st.compacted {
            let _ = tx.send(Ok(WatchMessage::Canceled {
                compact_revision: st.compacted,
            }));
            return Ok(WatchStream::new(rx));
        }
        if start <= st.revision {
            let from = usize::try_from((start - st.log_base).max(0)).unwrap_or(0);
            for events in st.log.iter().skip(from) {
                let mine: Vec<Event> = events
                    .iter()
                    .filter(|e| e.key().starts_with(prefix))
                    .cloned()
                    .collect();
                if !mine.is_empty() {
                    let _ = tx.send(Ok(WatchMessage::Events(mine)));
                }
            }
            let _ = tx.send(Ok(WatchMessage::Progress(st.revision)));
        }
        st.watchers.add(Watcher {
            prefix: prefix.to_owned(),
            start,
            tx,
        });
        Ok(WatchStream::new(rx))
    }

    async fn compact(&self, revision: Revision) -> Result<(), StoreError> {
        let mut st = self.state();
        if revision <= st.compacted {
            return Err(StoreError::Compacted {
                requested: revision,
                compacted: st.compacted,
            });
        }
        if revision > st.revision {
            return Err(StoreError::FutureRevision {
                requested: revision,
                current: st.revision,
            });
        }
        st.compact(revision);
        Ok(())
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // tests: a failed unwrap is a failed test with its message.
mod tests {
    use super::*;

    /// The scale the control plane's tests use: 100K keys, read back by prefix, with
    /// many per-host watchers; each call must stay cheap.
    #[tokio::test]
    async fn hundred_thousand_keys_and_many_watchers_stay_fast() {
        let s = MemoryStore::new();
        let mut watches = Vec::new();
        for h in 0..5_000 {
            watches.push(s.watch(&format!("/assign/h{h:05}/"), 0).await.unwrap());
        }
        let started = std::time::Instant::now();
        for h in 0..50_000 {
            s.txn(Txn::new().and_then([
                Op::put(format!("/host/h{h:05}/info"), "{}"),
                Op::put(format!("/host/h{h:05}/owner"), "free"),
            ]))
            .await
            .unwrap();
        }
        for h in 0..5_000 {
            s.put(&format!("/assign/h{h:05}/t"), "x").await.unwrap();
        }
        let all = s.get("/host/", true, None).await.unwrap();
        assert_eq!(all.kvs.len(), 100_000);
        for h in (0..50_000).step_by(97) {
            let r = s.get(&format!("/host/h{h:05}/"), true, None).await.unwrap();
            assert_eq!(r.kvs.len(), 2);
        }
        let old = s.get("/host/", true, Some(1_001)).await.unwrap();
        assert_eq!(old.kvs.len(), 2_000);
        for w in &mut watches {
            let msg = w.next().await.unwrap().unwrap();
            assert!(
                matches!(msg, WatchMessage::Events(ref e) if e.len() == 1),
                "{msg:?}"
            );
        }
        // Generous bound for a debug build on a busy 2-vCPU machine.
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "{:?}",
            started.elapsed()
        );
    }

    #[tokio::test]
    async fn dropped_watchers_are_forgotten() {
        let s = MemoryStore::new();
        let w = s.watch("/a/", 0).await.unwrap();
        let mut kept = s.watch("/a/", 0).await.unwrap();
        drop(w);
        s.put("/a/1", "x").await.unwrap();
        assert_eq!(s.inner.lock().watchers.len(), 1);
        assert!(matches!(
            kept.next().await,
            Some(Ok(WatchMessage::Events(_)))
        ));
    }

    #[tokio::test]
    async fn a_txn_reads_its_own_writes_and_events_keep_op_order() {
        let s = MemoryStore::new();
        s.put("/k/a", "old").await.unwrap();
        let mut w = s.watch("/k/", 3).await.unwrap();
        let r = s
            .txn(Txn::new().and_then([
                Op::put("/k/b", "1"),
                Op::delete("/k/a"),
                Op::Get {
                    key: "/k/".into(),
                    prefix: true,
                },
            ]))
            .await
            .unwrap();
        assert_eq!(r.revision, 3);
        let keys: Vec<&str> = r.responses[2].iter().map(|kv| kv.key.as_str()).collect();
        assert_eq!(keys, ["/k/b"]);
        let msg = w.next().await.unwrap().unwrap();
        let WatchMessage::Events(events) = msg else {
            panic!("{msg:?}")
        };
        let keys: Vec<&str> = events.iter().map(Event::key).collect();
        assert_eq!(keys, ["/k/b", "/k/a"]);
    }

    #[tokio::test(start_paused = true)]
    async fn the_lease_task_ends_with_the_store() {
        let s = MemoryStore::new();
        s.lease_grant(2).await.unwrap();
        let weak = Arc::downgrade(&s.inner);
        drop(s);
        tokio::time::sleep(LEASE_TICK * 3).await;
        assert!(weak.upgrade().is_none(), "the ticker keeps the store alive");
    }

    #[tokio::test(start_paused = true)]
    async fn keep_alive_postpones_expiry_and_a_leased_key_moves_leases() {
        let s = MemoryStore::new();
        let a = s.lease_grant(2).await.unwrap();
        let b = s.lease_grant(10).await.unwrap();
        s.txn(Txn::new().and_then([Op::put_leased("/x", "1", a.id)]))
            .await
            .unwrap();
        for _ in 0..5 {
            tokio::time::sleep(Duration::from_secs(1)).await;
            assert_eq!(s.lease_keep_alive(a.id).await.unwrap(), 2);
        }
        assert_eq!(s.get("/x", false, None).await.unwrap().kvs.len(), 1);
        // Moving the key to lease b: a's expiry no longer deletes it.
        s.txn(Txn::new().and_then([Op::put_leased("/x", "2", b.id)]))
            .await
            .unwrap();
        tokio::time::sleep(Duration::from_secs(3)).await;
        assert_eq!(
            s.lease_keep_alive(a.id).await.unwrap_err(),
            StoreError::LeaseNotFound(a.id)
        );
        let kv = &s.get("/x", false, None).await.unwrap().kvs[0];
        assert_eq!(kv.lease, b.id);
        tokio::time::sleep(Duration::from_secs(8)).await;
        assert!(s.get("/x", false, None).await.unwrap().kvs.is_empty());
    }
}
