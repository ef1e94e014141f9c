//! The control plane in one process on the embedded store: schedulers, simulated
//! agents, operators' commands. The real-etcd versions of these scenarios (processes,
//! kill -9, etcd restarts) are in `etcd_control_plane.rs`; these run anywhere, fast.
//!
//! Results are checked from the store's raw JSON, not through the crate's records.
#![allow(
    clippy::unwrap_used,
    clippy::cast_possible_wrap,
    clippy::cast_possible_truncation
)]

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::Value;
use tokio::sync::watch;
use twine_control::admin::{self, AdminError, FleetConfig, Submission};
use twine_control::agents::{self, AgentStats};
use twine_control::keys;
use twine_control::model::{Capacity, JobRecord};
use twine_control::sched::{self, SchedError, SchedulerConfig, SchedulerHandle};
use twine_control::store::{CmpOp, Compare, MemoryStore, Op, Store, Txn};

const SHAPE: Capacity = Capacity {
    cpu_milli: 18_000,
    memory_mib: 65_536,
};

async fn fleet(hosts: u32, ents: &[(&str, u32)]) -> MemoryStore {
    // The schedulers' logs go into the test's output (shown when it fails).
    let _ = tracing_subscriber::fmt().with_test_writer().try_init();
    let store = MemoryStore::new();
    admin::fleet_init(
        &store,
        &FleetConfig {
            hosts,
            shape: SHAPE,
            gpus: 0,
            racks_per_pd: 4,
        },
    )
    .await
    .unwrap();
    for (e, q) in ents {
        admin::entitlement_add(&store, e, *q).await.unwrap();
    }
    store
}

fn job(name: &str, ent: &str, replicas: u32, cpu: u64, mem: u64) -> Submission {
    Submission {
        path: PathBuf::from(format!("{name}.toml")),
        record: JobRecord {
            name: name.into(),
            entitlement: ent.into(),
            replicas,
            demand: Capacity {
                cpu_milli: cpu,
                memory_mib: mem,
            },
            spec: String::new(),
            format: "toml".into(),
        },
    }
}

struct Running {
    handle: SchedulerHandle,
    task: tokio::task::JoinHandle<Result<(), SchedError>>,
}

fn start(store: &MemoryStore, name: &str, ttl: i64) -> Running {
    let handle = SchedulerHandle::new();
    let cfg = SchedulerConfig {
        name: name.into(),
        lease_ttl: ttl,
    };
    let task = tokio::spawn(sched::run(store.clone(), cfg, handle.clone()));
    Running { handle, task }
}

fn start_agents(store: &MemoryStore) -> (watch::Sender<bool>, Arc<AgentStats>) {
    let (tx, rx) = watch::channel(false);
    let stats = Arc::new(AgentStats::default());
    tokio::spawn(agents::run_simulated(store.clone(), rx, stats.clone()));
    (tx, stats)
}

/// Every key under the layout, as raw JSON where it is JSON.
async fn raw(store: &MemoryStore) -> BTreeMap<String, (Value, i64, i64)> {
    let all = store.get(keys::ROOT, true, None).await.unwrap();
    all.kvs
        .into_iter()
        .map(|kv| {
            let v = serde_json::from_str(&kv.value).unwrap_or(Value::String(kv.value.clone()));
            (kv.key, (v, kv.create_revision, kv.mod_revision))
        })
        .collect()
}

/// Checks the store's state by its own arithmetic: capacity per host, ownership,
/// quota, one record per replica, assignments matching task records, and (if
/// `complete`) every replica placed and reported running. Returns the task count.
async fn check(store: &MemoryStore, complete: bool) -> usize {
    let kv = raw(store).await;
    let mut cap: BTreeMap<String, (i64, i64)> = BTreeMap::new();
    let mut owner: BTreeMap<String, String> = BTreeMap::new();
    let mut quota: BTreeMap<String, i64> = BTreeMap::new();
    let mut replicas: BTreeMap<(String, String), i64> = BTreeMap::new();
    let mut tasks = Vec::new();
    let mut assigns = BTreeMap::new();
    let mut status = BTreeMap::new();
    for (k, (v, _, _)) in &kv {
        let p: Vec<&str> = k.trim_start_matches("/twine/v1/").split('/').collect();
        match p.as_slice() {
            ["hosts", h, "info"] => {
                let c = &v["capacity"];
                cap.insert(
                    h.to_string(),
                    (
                        c["cpu_milli"].as_i64().unwrap(),
                        c["memory_mib"].as_i64().unwrap(),
                    ),
                );
            }
            ["hosts", h, "owner"] => {
                owner.insert(h.to_string(), v.as_str().unwrap().to_string());
            }
            ["ents", e, "spec"] => {
                quota.insert(e.to_string(), v["quota_machines"].as_i64().unwrap());
            }
            ["ents", e, "jobs", j] => {
                replicas.insert(
                    (e.to_string(), j.to_string()),
                    v["replicas"].as_i64().unwrap(),
                );
            }
            ["ents", e, "tasks", j, i] => tasks.push((
                e.to_string(),
                j.to_string(),
                i.parse::<i64>().unwrap(),
                v.clone(),
            )),
            ["assign", h, j, i] => {
                assigns.insert((h.to_string(), j.to_string(), i.to_string()), v.clone());
            }
            ["status", h, j, i] => {
                status.insert(
                    (h.to_string(), j.to_string(), i.to_string()),
                    v["state"].as_str().unwrap().to_string(),
                );
            }
            _ => {}
        }
    }
    let mut used: BTreeMap<String, (i64, i64)> = BTreeMap::new();
    let mut placed: BTreeMap<(String, String), i64> = BTreeMap::new();
    for (e, j, i, v) in &tasks {
        let h = v["host"].as_str().unwrap().to_string();
        assert_eq!(
            owner.get(&h),
            Some(e),
            "{e}/{j}/{i} on {h}, which {e} does not own"
        );
        let r = replicas.get(&(e.clone(), j.clone())).copied().unwrap();
        assert!((0..r).contains(i), "{j}/{i}: index out of 0..{r}");
        let u = used.entry(h.clone()).or_default();
        u.0 += v["demand"]["cpu_milli"].as_i64().unwrap();
        u.1 += v["demand"]["memory_mib"].as_i64().unwrap();
        *placed.entry((e.clone(), j.clone())).or_default() += 1;
        let a = assigns.remove(&(h.clone(), j.clone(), i.to_string()));
        assert!(
            a.is_some_and(|a| a["entitlement"] == Value::String(e.clone())),
            "{j}/{i}: no assignment on {h}"
        );
        if complete {
            assert_eq!(
                status
                    .get(&(h.clone(), j.clone(), i.to_string()))
                    .map(String::as_str),
                Some("running"),
                "{j}/{i}"
            );
        }
    }
    assert!(
        assigns.is_empty(),
        "assignments without a task record: {assigns:?}"
    );
    for (h, u) in &used {
        let c = cap[h];
        assert!(
            u.0 <= c.0 && u.1 <= c.1,
            "{h} over capacity: {u:?} of {c:?}"
        );
    }
    for (e, q) in &quota {
        let n = owner.values().filter(|o| *o == e).count() as i64;
        assert!(n <= *q, "{e} owns {n} hosts, quota {q}");
    }
    if complete {
        for (k, r) in &replicas {
            assert_eq!(
                placed.get(k).copied().unwrap_or(0),
                *r,
                "{k:?} not all placed"
            );
        }
    }
    tasks.len()
}

/// Waits until `f` holds, polling.
async fn until<F: AsyncFnMut() -> bool>(what: &str, limit: Duration, mut f: F) {
    let t = Instant::now();
    while !f().await {
        assert!(
            t.elapsed() < limit,
            "timed out after {limit:?} waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

async fn leaders(store: &MemoryStore) -> BTreeMap<String, String> {
    raw(store)
        .await
        .into_iter()
        .filter_map(|(k, (v, _, _))| {
            let e = k
                .strip_prefix(keys::ENTS)?
                .strip_suffix("/leader")?
                .to_string();
            Some((e, v.as_str()?.to_string()))
        })
        .collect()
}

async fn all_running(store: &MemoryStore, want: usize) -> bool {
    let kv = raw(store).await;
    let running = kv
        .iter()
        .filter(|(k, (v, _, _))| k.starts_with(keys::STATUS) && v["state"] == "running")
        .count();
    let tasks = kv.keys().filter(|k| k.contains("/tasks/")).count();
    running == want && tasks == want
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn places_every_task_and_agents_converge() {
    let store = fleet(400, &[("web", 40), ("batch", 40), ("ml", 40)]).await;
    let a = start(&store, "s1", 2);
    let b = start(&store, "s2", 2);
    let (_stop, stats) = start_agents(&store);
    let mut subs = Vec::new();
    for i in 0..30 {
        let ent = ["web", "batch", "ml"][i % 3];
        subs.push(job(
            &format!("j{i}"),
            ent,
            1 + (i as u32 % 7),
            500 + 250 * (i as u64 % 5),
            1024 * (1 + i as u64 % 6),
        ));
    }
    let want: usize = subs.iter().map(|s| s.record.replicas as usize).sum();
    admin::submit_records(&store, subs).await.unwrap();
    until(
        "every task placed and running",
        Duration::from_secs(20),
        async || all_running(&store, want).await,
    )
    .await;
    assert_eq!(check(&store, true).await, want);
    let l = leaders(&store).await;
    assert_eq!(l.len(), 3);
    assert!(l.values().all(|s| s == "s1" || s == "s2"), "{l:?}");
    assert_eq!(
        stats.started.load(std::sync::atomic::Ordering::Relaxed) as usize,
        want
    );
    a.handle.stop();
    b.handle.stop();
    a.task.await.unwrap().unwrap();
    b.task.await.unwrap().unwrap();
    // Stopped schedulers hand everything over and leave.
    assert!(leaders(&store).await.is_empty());
    assert!(
        store
            .get(keys::SCHEDS, true, None)
            .await
            .unwrap()
            .kvs
            .is_empty()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_entitlement_moves_shard_without_restarting_tasks() {
    let store = fleet(200, &[("web", 30), ("batch", 30)]).await;
    let a = start(&store, "s1", 2);
    let (_stop, stats) = start_agents(&store);
    admin::submit_records(
        &store,
        vec![
            job("w", "web", 8, 2000, 4096),
            job("b", "batch", 8, 2000, 4096),
        ],
    )
    .await
    .unwrap();
    until("16 running", Duration::from_secs(10), async || {
        all_running(&store, 16).await
    })
    .await;
    let before: BTreeMap<String, i64> = raw(&store)
        .await
        .into_iter()
        .filter(|(k, _)| k.starts_with(keys::ASSIGN))
        .map(|(k, (_, _, m))| (k, m))
        .collect();
    let b = start(&store, "s2", 2);
    until(
        "s2 leads one entitlement",
        Duration::from_secs(10),
        async || {
            let l = leaders(&store).await;
            l.len() == 2 && l.values().any(|s| s == "s2") && l.values().any(|s| s == "s1")
        },
    )
    .await;
    let moved = leaders(&store)
        .await
        .into_iter()
        .find(|(_, s)| s == "s2")
        .unwrap()
        .0;
    let after: BTreeMap<String, i64> = raw(&store)
        .await
        .into_iter()
        .filter(|(k, _)| k.starts_with(keys::ASSIGN))
        .map(|(k, (_, _, m))| (k, m))
        .collect();
    assert_eq!(before, after, "assignments were rewritten by the move");
    assert_eq!(
        stats.started.load(std::sync::atomic::Ordering::Relaxed),
        16,
        "a task restarted"
    );
    // The new leader places on top of what it rebuilt, within capacity.
    admin::submit_records(&store, vec![job("more", &moved, 20, 3000, 8192)])
        .await
        .unwrap();
    until("36 running", Duration::from_secs(10), async || {
        all_running(&store, 36).await
    })
    .await;
    let writers: Vec<String> = raw(&store)
        .await
        .into_iter()
        .filter(|(k, _)| k.contains("/tasks/more/"))
        .map(|(_, (v, _, _))| v["writer"].as_str().unwrap().to_string())
        .collect();
    assert!(writers.iter().all(|w| w == "s2"), "{writers:?}");
    check(&store, true).await;
    a.handle.stop();
    b.handle.stop();
    a.task.await.unwrap().unwrap();
    b.task.await.unwrap().unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_crashed_scheduler_is_replaced_within_its_lease() {
    let store = fleet(200, &[("web", 30), ("batch", 30), ("ml", 30), ("db", 30)]).await;
    let a = start(&store, "s1", 2);
    let b = start(&store, "s2", 2);
    let (_stop, _) = start_agents(&store);
    until("both lead", Duration::from_secs(10), async || {
        let l = leaders(&store).await;
        l.len() == 4 && l.values().any(|s| s == "s1") && l.values().any(|s| s == "s2")
    })
    .await;
    let lost: Vec<String> = leaders(&store)
        .await
        .into_iter()
        .filter(|(_, s)| s == "s1")
        .map(|(e, _)| e)
        .collect();
    // A crash: the task is gone without resigning; only the lease's expiry frees its keys.
    a.task.abort();
    let t = Instant::now();
    let subs: Vec<Submission> = lost
        .iter()
        .map(|e| job(&format!("after-{e}"), e, 5, 1000, 1024))
        .collect();
    admin::submit_records(&store, subs).await.unwrap();
    until(
        "s2 places the orphaned jobs",
        Duration::from_secs(10),
        async || {
            raw(&store)
                .await
                .iter()
                .any(|(k, (v, _, _))| k.contains("/tasks/after-") && v["writer"] == "s2")
        },
    )
    .await;
    let took = t.elapsed();
    assert!(
        took < Duration::from_secs(4),
        "failover took {took:?} with a 2 s lease"
    );
    until("all running", Duration::from_secs(10), async || {
        all_running(&store, 5 * lost.len()).await
    })
    .await;
    check(&store, true).await;
    assert!(leaders(&store).await.values().all(|s| s == "s2"));
    b.handle.stop();
    b.task.await.unwrap().unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deposed_leader_cannot_write() {
    let store = fleet(100, &[("web", 50)]).await;
    let a = start(&store, "s1", 30);
    until("s1 leads", Duration::from_secs(10), async || {
        leaders(&store).await.len() == 1
    })
    .await;
    // Another leader takes the key behind s1's back (as after a pause past its lease):
    // a new key, so a new create revision.
    // (s1 may see the key gone and take it again first: then the usurper tries again.)
    let key = keys::ent_leader("web");
    let mut usurper = None;
    for _ in 0..50 {
        store
            .txn(Txn::new().and_then([Op::delete(&key)]))
            .await
            .unwrap();
        let take = Txn::new()
            .when([Compare::create_revision(&key, CmpOp::Equal, 0)])
            .and_then([Op::put(&key, "usurper")]);
        let res = store.txn(take).await.unwrap();
        if res.succeeded {
            usurper = Some(res.revision);
            break;
        }
    }
    let usurper = usurper.expect("the usurper takes the key");
    admin::submit_records(&store, vec![job("w", "web", 10, 1000, 1024)])
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(500)).await;
    let kv = raw(&store).await;
    assert!(
        !kv.keys().any(|k| k.contains("/tasks/")),
        "a task record from a deposed leader was accepted"
    );
    assert_eq!(kv[&key].1, usurper, "the usurper's key stands");
    assert!(
        a.handle
            .stats
            .released
            .load(std::sync::atomic::Ordering::Relaxed)
            >= 1
    );
    a.handle.stop();
    a.task.await.unwrap().unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_input_is_refused_and_changes_nothing() {
    let store = fleet(50, &[("web", 5)]).await;
    let rev = store.get(keys::ROOT, true, None).await.unwrap().revision;
    let e = admin::submit_records(&store, vec![job("x", "nope", 1, 100, 100)])
        .await
        .unwrap_err();
    assert!(matches!(e, AdminError::UnknownEntitlement { .. }), "{e}");
    assert!(
        e.to_string().contains("\"nope\" is unknown (known: web)"),
        "{e}"
    );
    // 5 hosts of 18 CPUs hold 90 one-CPU tasks at most.
    let e = admin::submit_records(&store, vec![job("big", "web", 91, 1000, 1024)])
        .await
        .unwrap_err();
    assert!(e.to_string().contains("needs at least 6 hosts"), "{e}");
    // All or nothing: a good job next to a bad one is not written either.
    let e = admin::submit_records(
        &store,
        vec![
            job("ok", "web", 1, 100, 100),
            job("bad/name", "web", 1, 100, 100),
        ],
    )
    .await
    .unwrap_err();
    assert!(matches!(e, AdminError::BadName(_)), "{e}");
    let e = admin::entitlement_add(&store, "web", 3).await.unwrap_err();
    assert!(matches!(e, AdminError::EntitlementExists(_)), "{e}");
    let e = admin::entitlement_add(&store, "huge", 51)
        .await
        .unwrap_err();
    assert!(e.to_string().contains("--quota-machines 51"), "{e}");
    let e = admin::fleet_init(
        &store,
        &FleetConfig {
            hosts: 10,
            shape: SHAPE,
            gpus: 0,
            racks_per_pd: 1,
        },
    )
    .await
    .unwrap_err();
    assert!(matches!(e, AdminError::FleetExists { hosts: 50 }), "{e}");
    assert_eq!(
        store.get(keys::ROOT, true, None).await.unwrap().revision,
        rev,
        "a refused command wrote"
    );
    // A scheduler name is unique while its session lives.
    let a = start(&store, "s1", 5);
    until("s1 registered", Duration::from_secs(5), async || {
        leaders(&store).await.len() == 1
    })
    .await;
    let twin = start(&store, "s1", 5);
    let e = twin.task.await.unwrap().unwrap_err();
    assert!(matches!(e, SchedError::AlreadyRunning { .. }), "{e}");
    assert_eq!(leaders(&store).await["web"], "s1");
    a.handle.stop();
    a.task.await.unwrap().unwrap();
    let e = sched::run(
        MemoryStore::new(),
        SchedulerConfig {
            name: "s".into(),
            lease_ttl: 2,
        },
        SchedulerHandle::new(),
    )
    .await
    .unwrap_err();
    assert!(matches!(e, SchedError::NoFleet), "{e}");
}

// Draining a host through TaskControl.

/// Tasks per host of an entitlement: host -> [(job, index)].
async fn tasks_by_host(store: &MemoryStore) -> BTreeMap<String, Vec<(String, String)>> {
    let mut out: BTreeMap<String, Vec<(String, String)>> = BTreeMap::new();
    for (k, (v, _, _)) in raw(store).await {
        let p: Vec<&str> = k.trim_start_matches("/twine/v1/").split('/').collect();
        if let ["ents", _, "tasks", j, i] = p.as_slice() {
            out.entry(v["host"].as_str().unwrap().to_string())
                .or_default()
                .push((j.to_string(), i.to_string()));
        }
    }
    out
}

/// A fleet with two entitlements, jobs `v` and `w` of `web` (small tasks, few hosts,
/// so they share hosts) and `b` of `batch`, all placed; returns the store, the
/// scheduler and a host holding tasks of both `v` and `w`.
async fn drain_setup() -> (MemoryStore, Running, String) {
    let store = fleet(20, &[("web", 4), ("batch", 4)]).await;
    let s = start(&store, "s1", 2);
    admin::submit_records(
        &store,
        vec![
            job("v", "web", 10, 1000, 1024),
            job("w", "web", 10, 1000, 1024),
            job("b", "batch", 4, 1000, 1024),
        ],
    )
    .await
    .unwrap();
    until("24 placed", Duration::from_secs(10), async || {
        tasks_by_host(&store)
            .await
            .values()
            .map(Vec::len)
            .sum::<usize>()
            == 24
    })
    .await;
    let by_host = tasks_by_host(&store).await;
    let h = by_host
        .iter()
        .filter(|(_, ts)| ts.iter().any(|(j, _)| j == "v") && ts.iter().any(|(j, _)| j == "w"))
        .max_by_key(|(_, ts)| ts.len())
        .map(|(h, _)| h.clone())
        .expect("a host with tasks of both v and w");
    (store, s, h)
}

fn controller(store: &MemoryStore, job: &str, max_unavailable: usize) -> watch::Sender<bool> {
    let (tx, rx) = watch::channel(false);
    let cfg = twine_control::taskcontrol::ControllerConfig {
        entitlement: "web".into(),
        job: job.into(),
        max_unavailable,
        name: format!("ctl-{job}"),
    };
    tokio::spawn(twine_control::taskcontrol::run(store.clone(), cfg, rx));
    tx
}

async fn drain_state(store: &MemoryStore, host: &str) -> Option<String> {
    raw(store)
        .await
        .get(&keys::host_drain(host))
        .and_then(|(v, _, _)| v["state"].as_str().map(str::to_string))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_drain_moves_every_acked_task_and_completes() {
    let (store, s, h) = drain_setup().await;
    let before = tasks_by_host(&store).await[&h].clone();
    let _v = controller(&store, "v", 100);
    let _w = controller(&store, "w", 100);
    admin::drain(&store, &h).await.unwrap();
    until("the host drained", Duration::from_secs(20), async || {
        drain_state(&store, &h).await.as_deref() == Some("drained")
    })
    .await;
    assert_eq!(check(&store, false).await, 24);
    let kv = raw(&store).await;
    assert!(!tasks_by_host(&store).await.contains_key(&h));
    assert!(!kv.keys().any(|k| k.starts_with(&keys::host_assign(&h))));
    assert!(
        !kv.keys().any(|k| k.starts_with(keys::TASKCONTROL)),
        "{kv:?}"
    );
    for (j, i) in &before {
        let rec = &kv[&format!("/twine/v1/ents/web/tasks/{j}/{i}")].0;
        let to = rec["host"].as_str().unwrap();
        assert_ne!(to, h);
        assert!(kv.contains_key(&format!("/twine/v1/assign/{to}/{j}/{i}")));
    }
    // The drained host went back to the pool and nobody takes it.
    assert_eq!(kv[&keys::host_owner(&h)].0, Value::String("free".into()));
    admin::submit_records(&store, vec![job("b2", "batch", 30, 1000, 1024)])
        .await
        .unwrap();
    until("b2 placed", Duration::from_secs(10), async || {
        tasks_by_host(&store)
            .await
            .values()
            .map(Vec::len)
            .sum::<usize>()
            == 54
    })
    .await;
    assert!(!tasks_by_host(&store).await.contains_key(&h));
    assert_eq!(check(&store, false).await, 54);
    s.handle.stop();
    s.task.await.unwrap().unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn max_unavailable_one_acks_one_operation_at_a_time() {
    let (store, s, h) = drain_setup().await;
    let w_on_h = tasks_by_host(&store).await[&h]
        .iter()
        .filter(|(j, _)| j == "w")
        .count();
    assert!(w_on_h >= 2, "the drained host holds {w_on_h} tasks of w");
    // The store's own history of the job's operation keys, from the test.
    let start_rev = store.get(keys::ROOT, false, None).await.unwrap().revision;
    let mut watch = store
        .watch(&keys::taskcontrol("web", "w"), start_rev + 1)
        .await
        .unwrap();
    let history = tokio::spawn(async move {
        let mut acked = std::collections::BTreeSet::new();
        let (mut most, mut acks) = (0, 0);
        while let Some(Ok(m)) = watch.next().await {
            let twine_control::store::WatchMessage::Events(evs) = m else {
                continue;
            };
            for ev in evs {
                let key = ev.key().to_string();
                let put = matches!(ev, twine_control::store::Event::Put(_));
                match key.strip_suffix("/ack") {
                    Some(op) if put => {
                        acked.insert(op.to_string());
                        acks += 1;
                    }
                    Some(op) => {
                        acked.remove(op);
                    }
                    None if !put => {
                        acked.remove(&key);
                    }
                    None => {}
                }
                most = most.max(acked.len());
            }
            if acks == w_on_h && acked.is_empty() {
                break;
            }
        }
        (most, acks)
    });
    let _v = controller(&store, "v", 100);
    let _w = controller(&store, "w", 1);
    admin::drain(&store, &h).await.unwrap();
    until("the host drained", Duration::from_secs(20), async || {
        drain_state(&store, &h).await.as_deref() == Some("drained")
    })
    .await;
    let (most, acks) = tokio::time::timeout(Duration::from_secs(5), history)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(acks, w_on_h);
    assert_eq!(most, 1, "more than one operation of w acked and not done");
    assert_eq!(check(&store, false).await, 24);
    s.handle.stop();
    s.task.await.unwrap().unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_vetoing_job_keeps_its_tasks_and_the_drain_waits() {
    let (store, s, h) = drain_setup().await;
    let v_on_h: Vec<_> = tasks_by_host(&store).await[&h]
        .iter()
        .filter(|(j, _)| j == "v")
        .cloned()
        .collect();
    let _w = controller(&store, "w", 100); // v has no controller: it vetoes
    admin::drain(&store, &h).await.unwrap();
    until(
        "w's tasks left the host",
        Duration::from_secs(20),
        async || {
            tasks_by_host(&store)
                .await
                .get(&h)
                .is_some_and(|ts| ts.iter().all(|(j, _)| j == "v"))
        },
    )
    .await;
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let on_h: Vec<_> = tasks_by_host(&store).await[&h].clone();
    assert_eq!(on_h, v_on_h);
    assert_eq!(drain_state(&store, &h).await.as_deref(), Some("draining"));
    let kv = raw(&store).await;
    let ops: Vec<_> = kv
        .iter()
        .filter(|(k, _)| k.starts_with(keys::TASKCONTROL))
        .collect();
    assert_eq!(ops.len(), v_on_h.len(), "{ops:?}");
    for (k, (v, _, _)) in ops {
        assert!(k.starts_with(&keys::taskcontrol("web", "v")), "{k}");
        assert_eq!(v["state"], "offered");
        assert_eq!(v["kind"], "move");
        assert_eq!(v["from"], Value::String(h.clone()));
    }
    assert_eq!(check(&store, false).await, 24);
    s.handle.stop();
    s.task.await.unwrap().unwrap();
}

#[tokio::test]
async fn drain_refuses_an_unknown_host_and_a_second_drain() {
    let store = fleet(4, &[("web", 2)]).await;
    assert!(matches!(
        admin::drain(&store, "nope").await,
        Err(AdminError::UnknownHost(h)) if h == "nope"
    ));
    assert!(matches!(
        admin::drain(&store, "a/b").await,
        Err(AdminError::BadName(_))
    ));
    let h = admin::host_name(1);
    admin::drain(&store, &h).await.unwrap();
    let err = admin::drain(&store, &h).await.unwrap_err();
    assert!(
        matches!(&err, AdminError::AlreadyDraining { host, .. } if *host == h),
        "{err}"
    );
    assert!(err.to_string().contains(&h), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_leader_continues_a_drain_from_the_store() {
    let (store, s1, h) = drain_setup().await;
    // v vetoes at first: its operations stay offered under the first leader.
    let _w = controller(&store, "w", 100);
    admin::drain(&store, &h).await.unwrap();
    until(
        "w's tasks left the host",
        Duration::from_secs(20),
        async || {
            tasks_by_host(&store)
                .await
                .get(&h)
                .is_some_and(|ts| ts.iter().all(|(j, _)| j == "v"))
        },
    )
    .await;
    until(
        "v's operations offered",
        Duration::from_secs(10),
        async || {
            let v_on_h = tasks_by_host(&store).await[&h].len();
            let ops = raw(&store)
                .await
                .keys()
                .filter(|k| k.starts_with(&keys::taskcontrol("web", "v")))
                .count();
            ops == v_on_h
        },
    )
    .await;
    // The leader goes; another scheduler rebuilds from the store and carries on once
    // v's controller approves.
    s1.handle.stop();
    s1.task.await.unwrap().unwrap();
    let s2 = start(&store, "s2", 2);
    until("s2 leads web", Duration::from_secs(10), async || {
        leaders(&store).await.get("web").map(String::as_str) == Some("s2")
    })
    .await;
    let _v = controller(&store, "v", 2);
    until("the host drained", Duration::from_secs(20), async || {
        drain_state(&store, &h).await.as_deref() == Some("drained")
    })
    .await;
    assert!(!tasks_by_host(&store).await.contains_key(&h));
    assert!(
        !raw(&store)
            .await
            .keys()
            .any(|k| k.starts_with(keys::TASKCONTROL))
    );
    assert_eq!(check(&store, false).await, 24);
    s2.handle.stop();
    s2.task.await.unwrap().unwrap();
}
