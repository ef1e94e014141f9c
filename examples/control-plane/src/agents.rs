//! Agents: each host's agent converges on its assignments and reports each task's
//! state. `twine-control agents --simulated` serves every host of the fleet from one
//! process with agents that only acknowledge (for scale tests); [`real`] runs the
//! assignments of one host through twine-agent.
//!
//! An agent reads its assignments at one revision, converges, then follows the watch
//! from the next revision; a watch compacted away or broken makes it re-read and
//! converge again (by diff, so nothing restarts). It never needs the schedulers: if
//! the whole control plane is down, what runs keeps running, and reports wait until
//! the store is back.

pub mod real;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use tokio::sync::watch;

use crate::keys;
use crate::model::{self, StatusRecord, TaskState};
use crate::store::{Event, MAX_TXN_OPS, Op, Revision, Store, StoreError, Txn, WatchMessage};

/// Counters of the simulated agents.
#[derive(Debug, Default)]
pub struct AgentStats {
    /// Tasks started (acknowledged as running).
    pub started: AtomicU64,
    /// Tasks stopped (assignment removed).
    pub stopped: AtomicU64,
    /// Times the agents re-read their assignments (start, compaction, broken watch).
    pub resyncs: AtomicU64,
}

/// The status key that answers an assignment key.
fn status_key(assign_key: &str) -> Option<String> {
    let rest = assign_key.strip_prefix(keys::ASSIGN)?;
    Some(format!("{}{rest}", keys::STATUS))
}

/// The assignment key a status key answers.
fn assign_key(status_key: &str) -> Option<String> {
    let rest = status_key.strip_prefix(keys::STATUS)?;
    Some(format!("{}{rest}", keys::ASSIGN))
}

/// The events of one message of an assignment watch started at `start` (`None` for a
/// progress message), or why the watch ended: compacted away, broken or closed. The
/// agent then re-reads its assignments and converges again.
fn assignment_events(
    msg: Option<Result<WatchMessage, StoreError>>,
    start: Revision,
) -> Result<Option<Vec<Event>>, StoreError> {
    match msg {
        Some(Ok(WatchMessage::Events(events))) => Ok(Some(events)),
        Some(Ok(WatchMessage::Progress(_))) => Ok(None),
        Some(Ok(WatchMessage::Canceled { compact_revision })) => Err(StoreError::Compacted {
            requested: start,
            compacted: compact_revision,
        }),
        Some(Err(e)) => Err(e),
        None => Err(StoreError::Backend("assignment watch ended".into())),
    }
}

/// Runs the simulated agents of every host until `stop` turns true. Store failures
/// are retried (with the tasks left running); only `stop` ends it.
pub async fn run_simulated<S: Store>(
    store: S,
    mut stop: watch::Receiver<bool>,
    stats: Arc<AgentStats>,
) {
    // What runs, by assignment key: survives every resync, as real tasks would.
    let mut running: BTreeMap<String, ()> = BTreeMap::new();
    loop {
        if *stop.borrow() {
            return;
        }
        match sync_and_follow(&store, &mut running, &mut stop, &stats).await {
            Ok(()) => return,
            Err(e) => {
                tracing::warn!("agents: {e}; re-reading assignments");
                tokio::select! {
                    _ = tokio::time::sleep(Duration::from_millis(500)) => {}
                    _ = stop.changed() => return,
                }
            }
        }
    }
}

async fn sync_and_follow<S: Store>(
    store: &S,
    running: &mut BTreeMap<String, ()>,
    stop: &mut watch::Receiver<bool>,
    stats: &AgentStats,
) -> Result<(), StoreError> {
    stats.resyncs.fetch_add(1, Ordering::Relaxed);
    let assigned = store.get(keys::ASSIGN, true, None).await?;
    let r: Revision = assigned.revision;
    let reported = store.get(keys::STATUS, true, Some(r)).await?;
    let want: BTreeMap<String, ()> = assigned.kvs.iter().map(|kv| (kv.key.clone(), ())).collect();
    let have: BTreeMap<String, String> = reported
        .kvs
        .iter()
        .map(|kv| (kv.key.clone(), kv.value.clone()))
        .collect();
    let mut ops = Vec::new();
    let running_now = model::encode(&StatusRecord {
        state: TaskState::Running,
        agent: "simulated".into(),
        detail: String::new(),
    });
    for key in want.keys() {
        if running.insert(key.clone(), ()).is_none() {
            stats.started.fetch_add(1, Ordering::Relaxed);
        }
        if let Some(sk) = status_key(key)
            && have.get(&sk) != Some(&running_now)
        {
            ops.push(Op::put(sk, running_now.clone()));
        }
    }
    let gone: Vec<String> = running
        .keys()
        .filter(|k| !want.contains_key(*k))
        .cloned()
        .collect();
    for key in gone {
        running.remove(&key);
        stats.stopped.fetch_add(1, Ordering::Relaxed);
    }
    for sk in have.keys() {
        if assign_key(sk).is_some_and(|ak| !want.contains_key(&ak)) {
            ops.push(Op::delete(sk.clone()));
        }
    }
    flush(store, &mut ops).await?;
    let mut w = store.watch(keys::ASSIGN, r + 1).await?;
    // Reports are gathered for up to BATCH after the first change, so a burst of
    // assignments costs a few transactions rather than one per watch message.
    let mut deadline: Option<tokio::time::Instant> = None;
    loop {
        let msg = tokio::select! {
            m = w.next() => m,
            _ = stop.changed() => return Ok(()),
            _ = sleep_until(deadline) => {
                deadline = None;
                flush(store, &mut ops).await?;
                continue;
            }
        };
        let Some(events) = assignment_events(msg, r + 1)? else {
            continue;
        };
        for ev in &events {
            match ev {
                Event::Put(kv) => {
                    if running.insert(kv.key.clone(), ()).is_none() {
                        stats.started.fetch_add(1, Ordering::Relaxed);
                        if let Some(sk) = status_key(&kv.key) {
                            ops.push(Op::put(sk, running_now.clone()));
                        }
                    }
                }
                Event::Delete { key, .. } => {
                    if running.remove(key).is_some() {
                        stats.stopped.fetch_add(1, Ordering::Relaxed);
                    }
                    if let Some(sk) = status_key(key) {
                        ops.push(Op::delete(sk));
                    }
                }
            }
        }
        if ops.len() >= MAX_TXN_OPS {
            deadline = None;
            flush(store, &mut ops).await?;
        } else if !ops.is_empty() && deadline.is_none() {
            deadline = Some(tokio::time::Instant::now() + BATCH);
        }
    }
}

/// How long reports wait for company before they are written.
const BATCH: Duration = Duration::from_millis(20);

/// Sleeps until `deadline`, or forever without one.
async fn sleep_until(deadline: Option<tokio::time::Instant>) {
    match deadline {
        Some(d) => tokio::time::sleep_until(d).await,
        None => std::future::pending().await,
    }
}

/// Writes reports in transactions of at most [`MAX_TXN_OPS`] operations, each key once.
async fn flush<S: Store>(store: &S, ops: &mut Vec<Op>) -> Result<(), StoreError> {
    // Later operations on a key win; a transaction may name a key only once.
    let mut last: BTreeMap<String, Op> = BTreeMap::new();
    for op in ops.drain(..) {
        let key = match &op {
            Op::Put { key, .. } | Op::Delete { key, .. } | Op::Get { key, .. } => key.clone(),
        };
        last.insert(key, op);
    }
    let all: Vec<Op> = last.into_values().collect();
    for chunk in all.chunks(MAX_TXN_OPS) {
        store
            .txn(Txn::new().and_then(chunk.iter().cloned()))
            .await?;
    }
    Ok(())
}
