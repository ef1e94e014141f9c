//! An independent checker of the control plane's state in etcd: it reads the keys
//! itself (one prefix read at one revision, values parsed as `serde_json::Value`),
//! never through the crate's model or dump code, so a bug there cannot hide a bug in
//! what the schedulers wrote.
//!
//! - [`check_state`]: the invariants of one snapshot (hosts, capacity, ownership,
//!   quotas, one task per (job, index), assignments answering task records).
//! - [`check_history`]: replays the store's history with a watch and checks that every
//!   task record was written while its writer held the entitlement's leader key at
//!   the epoch the record names (so no write of a deposed leader was accepted).

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use anyhow::{Context, Result, anyhow, bail, ensure};
use serde_json::Value;
use twine_control::store::{EtcdStore, Event, Op, Revision, Store, Txn, WatchMessage};

const ROOT: &str = "/twine/v1/";

/// A task's identity: (entitlement, job, index).
pub type TaskKey = (String, String, u64);

/// What [`check_state`] read.
#[derive(Debug, Clone, Default)]
pub struct State {
    /// The revision read at.
    pub revision: Revision,
    /// Every task record: its host.
    pub tasks: BTreeMap<TaskKey, String>,
    /// Tasks whose status says `running`.
    pub running: usize,
    /// Replicas of every job record, summed.
    pub replicas: u64,
    /// Entitlement → leader (scheduler name).
    pub leaders: BTreeMap<String, String>,
    /// Hosts per owner (including `free`).
    pub owners: BTreeMap<String, usize>,
}

impl State {
    /// Every job has all its replicas placed, and every task runs.
    pub fn complete(&self) -> bool {
        self.tasks.len() as u64 == self.replicas && self.running == self.tasks.len()
    }
}

fn json(key: &str, value: &str) -> Result<Value> {
    serde_json::from_str(value).with_context(|| format!("{key}: not JSON: {value:?}"))
}

fn u64_at(v: &Value, path: &[&str], key: &str) -> Result<u64> {
    let mut cur = v;
    for p in path {
        cur = cur
            .get(p)
            .ok_or_else(|| anyhow!("{key}: no field {path:?} in {v}"))?;
    }
    cur.as_u64()
        .ok_or_else(|| anyhow!("{key}: field {path:?} is not a number in {v}"))
}

fn str_at<'a>(v: &'a Value, field: &str, key: &str) -> Result<&'a str> {
    v.get(field)
        .and_then(Value::as_str)
        .ok_or_else(|| anyhow!("{key}: no string field {field} in {v}"))
}

/// Reads everything under `/twine/v1/` at one revision and checks the invariants.
/// With `complete`, also that every job has all its replicas placed and every task's
/// status is `running`.
pub async fn check_state(store: &EtcdStore, complete: bool) -> Result<State> {
    let range = store.get(ROOT, true, None).await?;
    let mut st = State {
        revision: range.revision,
        ..State::default()
    };
    // host → (cpu, mem)
    let mut capacity: BTreeMap<String, (u64, u64)> = BTreeMap::new();
    let mut owner: BTreeMap<String, String> = BTreeMap::new();
    let mut quota: BTreeMap<String, u64> = BTreeMap::new();
    // (ent, job) → replicas
    let mut jobs: BTreeMap<(String, String), u64> = BTreeMap::new();
    // (ent, job, i) → (host, cpu, mem)
    let mut tasks: BTreeMap<TaskKey, (String, u64, u64)> = BTreeMap::new();
    // (host, job, i) → entitlement
    let mut assigns: BTreeMap<(String, String, u64), String> = BTreeMap::new();
    let mut status: BTreeMap<(String, String, u64), String> = BTreeMap::new();
    for kv in &range.kvs {
        let (key, value) = (kv.key.as_str(), kv.value.as_str());
        let Some(rest) = key.strip_prefix(ROOT) else {
            continue;
        };
        let parts: Vec<&str> = rest.split('/').collect();
        match parts.as_slice() {
            ["hosts", h, "info"] => {
                let v = json(key, value)?;
                let cpu = u64_at(&v, &["capacity", "cpu_milli"], key)?;
                let mem = u64_at(&v, &["capacity", "memory_mib"], key)?;
                capacity.insert((*h).to_owned(), (cpu, mem));
            }
            ["hosts", h, "owner"] => {
                owner.insert((*h).to_owned(), value.to_owned());
            }
            ["ents", e, "spec"] => {
                quota.insert(
                    (*e).to_owned(),
                    u64_at(&json(key, value)?, &["quota_machines"], key)?,
                );
            }
            ["ents", e, "leader"] => {
                st.leaders.insert((*e).to_owned(), value.to_owned());
            }
            ["ents", e, "jobs", j] => {
                let v = json(key, value)?;
                ensure!(str_at(&v, "name", key)? == *j, "{key}: name field {v}");
                ensure!(
                    str_at(&v, "entitlement", key)? == *e,
                    "{key}: entitlement field {v}"
                );
                jobs.insert(
                    ((*e).to_owned(), (*j).to_owned()),
                    u64_at(&v, &["replicas"], key)?,
                );
            }
            ["ents", e, "tasks", j, i] => {
                let v = json(key, value)?;
                let i: u64 = i.parse().with_context(|| format!("{key}: index"))?;
                let host = str_at(&v, "host", key)?.to_owned();
                let cpu = u64_at(&v, &["demand", "cpu_milli"], key)?;
                let mem = u64_at(&v, &["demand", "memory_mib"], key)?;
                let prev = tasks.insert(((*e).to_owned(), (*j).to_owned(), i), (host, cpu, mem));
                ensure!(prev.is_none(), "{key}: twice");
            }
            ["assign", h, j, i] => {
                let v = json(key, value)?;
                let i: u64 = i.parse().with_context(|| format!("{key}: index"))?;
                ensure!(str_at(&v, "job", key)? == *j, "{key}: job field {v}");
                ensure!(u64_at(&v, &["index"], key)? == i, "{key}: index field {v}");
                let e = str_at(&v, "entitlement", key)?.to_owned();
                assigns.insert(((*h).to_owned(), (*j).to_owned(), i), e);
            }
            ["status", h, j, i] => {
                let v = json(key, value)?;
                let i: u64 = i.parse().with_context(|| format!("{key}: index"))?;
                status.insert(
                    ((*h).to_owned(), (*j).to_owned(), i),
                    str_at(&v, "state", key)?.to_owned(),
                );
            }
            _ => {}
        }
    }
    // Tasks: host exists, is owned by the entitlement, index within replicas, fits.
    let mut used: BTreeMap<&str, (u64, u64)> = BTreeMap::new();
    let mut seen_job_index: BTreeSet<(&str, u64)> = BTreeSet::new();
    for ((e, j, i), (h, cpu, mem)) in &tasks {
        ensure!(
            capacity.contains_key(h),
            "task {e}/{j}/{i} on unknown host {h}"
        );
        ensure!(
            owner.get(h) == Some(e),
            "task {e}/{j}/{i} on host {h} owned by {:?}, not {e}",
            owner.get(h)
        );
        let replicas = jobs
            .get(&(e.clone(), j.clone()))
            .ok_or_else(|| anyhow!("task {e}/{j}/{i} of a job with no record"))?;
        ensure!(
            *i < *replicas,
            "task {e}/{j}/{i}: index not below replicas {replicas}"
        );
        // Assignment keys name no entitlement: a job name is one task set fleet-wide.
        ensure!(
            seen_job_index.insert((j, *i)),
            "job {j} index {i} placed twice"
        );
        let u = used.entry(h).or_default();
        u.0 += cpu;
        u.1 += mem;
        let a = assigns.get(&(h.clone(), j.clone(), *i));
        ensure!(
            a == Some(e),
            "task {e}/{j}/{i} on {h}: assignment says {a:?}"
        );
    }
    for (h, (cpu, mem)) in &used {
        let (c, m) = capacity[*h];
        ensure!(
            *cpu <= c && *mem <= m,
            "host {h} over capacity: {cpu}/{c} mCPU, {mem}/{m} MiB"
        );
    }
    for ((h, j, i), e) in &assigns {
        let t = tasks.get(&(e.clone(), j.clone(), *i));
        ensure!(
            t.is_some_and(|t| &t.0 == h),
            "assignment {h}/{j}/{i} ({e}) has no task record on that host: {t:?}"
        );
    }
    // Quotas.
    for o in owner.values() {
        *st.owners.entry(o.clone()).or_default() += 1;
    }
    for (o, n) in &st.owners {
        if o == "free" {
            continue;
        }
        let q = quota
            .get(o)
            .ok_or_else(|| anyhow!("{n} hosts owned by unknown entitlement {o}"))?;
        ensure!(
            *n as u64 <= *q,
            "entitlement {o} holds {n} hosts, quota {q}"
        );
    }
    st.replicas = jobs.values().sum();
    for ((e, j, i), (h, ..)) in &tasks {
        if status
            .get(&(h.clone(), j.clone(), *i))
            .is_some_and(|s| s == "running")
        {
            st.running += 1;
        }
        st.tasks.insert((e.clone(), j.clone(), *i), h.clone());
    }
    if complete {
        for ((e, j), r) in &jobs {
            let n = tasks
                .keys()
                .filter(|(te, tj, _)| te == e && tj == j)
                .count() as u64;
            ensure!(n == *r, "job {e}/{j}: {n} of {r} replicas placed");
        }
        ensure!(
            st.running == tasks.len(),
            "{} of {} tasks running",
            st.running,
            tasks.len()
        );
    }
    Ok(st)
}

/// Polls [`check_state`] until the state is complete (every replica placed and
/// running) and returns it; fails with the last error after `timeout`. Invariant
/// violations fail at once.
pub async fn wait_complete(store: &EtcdStore, timeout: Duration) -> Result<State> {
    let deadline = std::time::Instant::now() + timeout;
    loop {
        let st = check_state(store, false).await?;
        if st.complete() {
            return check_state(store, true).await;
        }
        if std::time::Instant::now() > deadline {
            bail!(
                "not complete within {timeout:?}: {} of {} replicas placed, {} running",
                st.tasks.len(),
                st.replicas,
                st.running
            );
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// What [`check_history`] saw.
#[derive(Debug, Default)]
pub struct History {
    /// Task record PUTs checked.
    pub task_puts: usize,
    /// Task record PUTs per writer.
    pub by_writer: BTreeMap<String, usize>,
    /// Leader key changes: (revision, entitlement, new leader or `None` if deleted).
    pub leader_changes: Vec<(Revision, String, Option<String>)>,
    /// Every task record PUT: (revision, entitlement, writer).
    pub puts: Vec<(Revision, String, String)>,
}

/// Replays the history with a watch on `/` from `base + 1`, starting from the leader
/// keys as they were at `base` (0: from revision 1 with no leader; `base` must not be
/// compacted away), up to a sentinel written outside `/twine/v1/` now. Checks every
/// PUT of a task record: at that revision the entitlement's leader key existed with
/// value == the record's `writer` and create revision == its `epoch`.
pub async fn check_history(store: &EtcdStore, base: Revision) -> Result<History> {
    // leader state: ent → (value, create_revision)
    let mut leader: BTreeMap<String, (String, Revision)> = BTreeMap::new();
    if base > 0 {
        let r = store.get(&format!("{ROOT}ents/"), true, Some(base)).await?;
        for kv in r.kvs {
            if let Some(e) = kv
                .key
                .strip_prefix(&format!("{ROOT}ents/"))
                .and_then(|r| r.strip_suffix("/leader"))
                && !e.contains('/')
            {
                leader.insert(e.to_owned(), (kv.value.clone(), kv.create_revision));
            }
        }
    }
    let sentinel_key = format!("/twine-checker/sentinel-{}", std::process::id());
    let end = store
        .txn(Txn::new().and_then([Op::put(&sentinel_key, "x")]))
        .await?
        .revision;
    let mut w = store.watch("/", base + 1).await?;
    let mut h = History::default();
    loop {
        let msg = tokio::time::timeout(Duration::from_secs(20), w.next())
            .await
            .context("history watch: nothing for 20 s")?
            .ok_or_else(|| anyhow!("history watch ended"))??;
        let events = match msg {
            WatchMessage::Events(ev) => ev,
            WatchMessage::Progress(_) => continue,
            WatchMessage::Canceled { compact_revision } => {
                bail!("history watch canceled: compacted at {compact_revision}")
            }
        };
        for ev in events {
            if ev.revision() >= end {
                return Ok(h);
            }
            let Some(rest) = ev.key().strip_prefix(&format!("{ROOT}ents/")) else {
                continue;
            };
            let parts: Vec<&str> = rest.split('/').collect();
            match (parts.as_slice(), &ev) {
                ([e, "leader"], Event::Put(kv)) => {
                    leader.insert((*e).to_owned(), (kv.value.clone(), kv.create_revision));
                    h.leader_changes.push((
                        kv.mod_revision,
                        (*e).to_owned(),
                        Some(kv.value.clone()),
                    ));
                }
                ([e, "leader"], Event::Delete { mod_revision, .. }) => {
                    leader.remove(*e);
                    h.leader_changes
                        .push((*mod_revision, (*e).to_owned(), None));
                }
                ([e, "tasks", _, _], Event::Put(kv)) => {
                    let v = json(&kv.key, &kv.value)?;
                    let writer = str_at(&v, "writer", &kv.key)?;
                    let epoch = v
                        .get("epoch")
                        .and_then(Value::as_i64)
                        .ok_or_else(|| anyhow!("{}: no epoch in {v}", kv.key))?;
                    let l = leader.get(*e);
                    ensure!(
                        l.is_some_and(|(who, rev)| who == writer && *rev == epoch),
                        "{} written at revision {} by {writer} (epoch {epoch}) while the leader key was {l:?}",
                        kv.key,
                        kv.mod_revision
                    );
                    h.task_puts += 1;
                    *h.by_writer.entry(writer.to_owned()).or_default() += 1;
                    h.puts
                        .push((kv.mod_revision, (*e).to_owned(), writer.to_owned()));
                }
                _ => {}
            }
        }
    }
}
