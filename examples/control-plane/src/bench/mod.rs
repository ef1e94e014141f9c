//! `twine-control bench`: placements per second through the store, with 1 and 3 (or
//! any) scheduler shards, next to the embedded store, in one run and one process.
//!
//! Each run lays out a fresh fleet, adds the entitlements, starts the shards (each with
//! its own store connection), waits until every entitlement has a leader, submits the
//! jobs in one go and times until every task is placed. Writes per placement come from
//! the store's own history, not from the schedulers' counters: the run replays the
//! watch over the revisions it spanned and counts revisions and keys written.

pub mod failover;

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use serde::Serialize;

use crate::admin::{self, FleetConfig, Submission};
use crate::keys;
use crate::model::{Capacity, JobRecord};
use crate::sched::{self, SchedulerConfig, SchedulerHandle};
use crate::store::{AnyStore, MemoryStore, Op, Revision, Store, Txn, WatchMessage};

/// What to measure.
#[derive(Debug, Clone, clap::Args)]
pub struct BenchArgs {
    /// etcd URLs, comma-separated; `memory` measures the embedded store only.
    #[arg(long)]
    pub endpoints: String,
    /// Hosts in the fleet.
    #[arg(long, default_value_t = 2000)]
    pub hosts: u32,
    /// Jobs submitted.
    #[arg(long, default_value_t = 200)]
    pub jobs: u32,
    /// Tasks per job.
    #[arg(long, default_value_t = 10)]
    pub replicas: u32,
    /// Entitlements (jobs go round-robin; each has an equal share of the fleet).
    #[arg(long, default_value_t = 4)]
    pub entitlements: u32,
    /// Shard counts to measure through etcd, comma-separated.
    #[arg(long, default_value = "1,3", value_delimiter = ',')]
    pub shards: Vec<u32>,
    /// Deletes everything under /twine/v1/ in etcd before each run (the bench needs an
    /// empty layout).
    #[arg(long)]
    pub fresh: bool,
    /// Repetitions of each configuration (the report gives each).
    #[arg(long, default_value_t = 1)]
    pub repeat: u32,
    /// Also runs the simulated agents and times until every task is reported running.
    #[arg(long)]
    pub agents: bool,
}

/// One measured run.
#[derive(Debug, Clone, Serialize)]
pub struct BenchRun {
    /// `memory` or `etcd`.
    pub store: String,
    /// Scheduler shards.
    pub shards: u32,
    /// Hosts.
    pub hosts: u32,
    /// Tasks placed.
    pub placed: u64,
    /// Seconds from submission to the last placement.
    pub seconds: f64,
    /// Placements per second.
    pub placements_per_s: f64,
    /// Store revisions (committed writes) by the schedulers during the run.
    pub scheduler_revisions: u64,
    /// Keys the schedulers wrote during the run.
    pub scheduler_keys: u64,
    /// Revisions per placement.
    pub writes_per_placement: f64,
    /// Keys written per placement.
    pub keys_per_placement: f64,
    /// Placement transactions refused for a host taken meanwhile.
    pub conflicts: u64,
    /// Seconds `fleet init` took.
    pub fleet_init_seconds: f64,
    /// Seconds from starting the schedulers until every entitlement had a leader
    /// (registration, election, and each shard's rebuild from a snapshot).
    pub leaders_seconds: f64,
    /// With `--agents`: seconds from submission until every task was reported running.
    pub converged_seconds: Option<f64>,
    /// Keys under the layout at the end.
    pub store_keys: u64,
    /// Bytes of those keys and values (etcd's own database is larger: history, index).
    pub store_bytes: u64,
}

/// All runs.
#[derive(Debug, Clone, Serialize)]
pub struct BenchReport {
    /// Runs in order: the embedded store first, then etcd per shard count.
    pub runs: Vec<BenchRun>,
}

/// Why the bench failed.
#[derive(Debug, thiserror::Error)]
#[error("bench: {0}")]
pub struct BenchError(pub(crate) String);

/// Lays out a fleet of `hosts` benchmark hosts (18 CPUs, 64 GiB) and `entitlements`
/// entitlements `ent0`.. with an equal share of it each; returns their names and the
/// seconds `fleet init` took.
async fn lay_out<S: Store>(
    store: &S,
    hosts: u32,
    entitlements: u32,
) -> Result<(Vec<String>, f64), BenchError> {
    let shape = Capacity {
        cpu_milli: 18_000,
        memory_mib: 65_536,
    };
    let fleet = FleetConfig {
        hosts,
        shape,
        gpus: 0,
        racks_per_pd: 10,
    };
    let t = Instant::now();
    admin::fleet_init(store, &fleet).await.map_err(err)?;
    let seconds = t.elapsed().as_secs_f64();
    let ents: Vec<String> = (0..entitlements).map(|i| format!("ent{i}")).collect();
    for e in &ents {
        admin::entitlement_add(store, e, hosts / entitlements)
            .await
            .map_err(err)?;
    }
    Ok((ents, seconds))
}

/// With `fresh`, deletes everything under the layout's root; without, refuses a store
/// that holds twine keys.
async fn wipe<S: Store>(store: &S, endpoints: &str, fresh: bool) -> Result<(), BenchError> {
    if fresh {
        let all = Op::Delete {
            key: keys::ROOT.into(),
            prefix: true,
        };
        store.txn(Txn::new().and_then([all])).await.map_err(err)?;
    } else if !store
        .get(keys::ROOT, true, None)
        .await
        .map_err(err)?
        .kvs
        .is_empty()
    {
        return Err(BenchError(format!(
            "{endpoints} holds twine keys already: pass --fresh to delete everything under {}",
            keys::ROOT
        )));
    }
    Ok(())
}

fn err(e: impl std::fmt::Display) -> BenchError {
    BenchError(e.to_string())
}

/// Runs every configuration.
pub async fn run(args: &BenchArgs) -> Result<BenchReport, BenchError> {
    if args.hosts == 0 || args.jobs == 0 || args.replicas == 0 || args.entitlements == 0 {
        return Err(BenchError(
            "--hosts, --jobs, --replicas and --entitlements must be positive".into(),
        ));
    }
    let mut runs = Vec::new();
    let mut first_etcd_run = true;
    for _ in 0..args.repeat {
        for &k in &args.shards {
            let mem = MemoryStore::new();
            runs.push(
                one(args, "memory", k, &mem, || async {
                    Ok(AnyStore::Memory(mem.clone()))
                })
                .await?,
            );
        }
        if args.endpoints != "memory" {
            for &k in &args.shards {
                let connect = || async {
                    AnyStore::connect(&args.endpoints, Duration::from_secs(5))
                        .await
                        .map_err(err)
                };
                let store = connect().await?;
                // After its first run the bench deletes what it wrote itself.
                wipe(&store, &args.endpoints, args.fresh || !first_etcd_run).await?;
                first_etcd_run = false;
                runs.push(one(args, "etcd", k, &store, connect).await?);
            }
        }
    }
    Ok(BenchReport { runs })
}

async fn one<S, F, Fut>(
    args: &BenchArgs,
    kind: &str,
    shards: u32,
    store: &S,
    connect: F,
) -> Result<BenchRun, BenchError>
where
    S: Store,
    F: Fn() -> Fut,
    Fut: std::future::Future<Output = Result<AnyStore, BenchError>>,
{
    let (ents, fleet_init_seconds) = lay_out(store, args.hosts, args.entitlements).await?;
    let (stop_agents, agent_stats) = tokio::sync::watch::channel(false);
    let agents = if args.agents {
        let stats = std::sync::Arc::new(crate::agents::AgentStats::default());
        let s = connect().await?;
        tokio::spawn(crate::agents::run_simulated(s, agent_stats, stats));
        true
    } else {
        drop(agent_stats);
        false
    };
    let t_leaders = Instant::now();
    let mut handles = Vec::new();
    let mut tasks = Vec::new();
    for i in 0..shards {
        let s = connect().await?;
        let h = SchedulerHandle::new();
        handles.push(h.clone());
        let cfg = SchedulerConfig {
            name: format!("bench-{i}"),
            lease_ttl: 5,
        };
        tasks.push(tokio::spawn(sched::run(s, cfg, h)));
    }
    // Every entitlement led before the clock starts.
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let leaders = store.get(keys::ENTS, true, None).await.map_err(err)?;
        let led: BTreeSet<&str> = leaders
            .kvs
            .iter()
            .filter_map(|kv| match keys::split(keys::ENTS, &kv.key).as_deref() {
                Some([e, "leader"]) => Some(*e),
                _ => None,
            })
            .collect();
        if ents.iter().all(|e| led.contains(e.as_str())) {
            break;
        }
        if Instant::now() > deadline {
            return Err(BenchError(format!(
                "entitlements not all led after 30 s: {led:?}"
            )));
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let subs: Vec<Submission> = (0..args.jobs)
        .map(|j| {
            let e = &ents[(j % args.entitlements) as usize];
            Submission {
                path: format!("bench-job-{j}").into(),
                record: JobRecord {
                    name: format!("job{j}"),
                    entitlement: e.clone(),
                    replicas: args.replicas,
                    demand: Capacity {
                        cpu_milli: 1_000,
                        memory_mib: 2_048,
                    },
                    spec: String::new(),
                    format: "toml".into(),
                },
            }
        })
        .collect();
    let leaders_seconds = t_leaders.elapsed().as_secs_f64();
    let r0 = store
        .get(keys::FLEET, false, None)
        .await
        .map_err(err)?
        .revision;
    let t0 = Instant::now();
    admin::submit_records(store, subs).await.map_err(err)?;
    let want = u64::from(args.jobs) * u64::from(args.replicas);
    let deadline = Instant::now() + Duration::from_secs(300);
    loop {
        let placed: u64 = handles
            .iter()
            .map(|h| h.stats.placed.load(std::sync::atomic::Ordering::Relaxed))
            .sum();
        if placed >= want {
            break;
        }
        if Instant::now() > deadline || tasks.iter().any(|t| t.is_finished()) {
            for h in &handles {
                h.stop();
            }
            let mut why = Vec::new();
            for t in tasks {
                match t.await {
                    Ok(Err(e)) => why.push(e.to_string()),
                    Err(e) => why.push(e.to_string()),
                    Ok(Ok(())) => {}
                }
            }
            return Err(BenchError(format!(
                "placed {placed} of {want} tasks, then stopped: {}",
                why.join("; ")
            )));
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let seconds = t0.elapsed().as_secs_f64();
    let r1 = store
        .get(keys::FLEET, false, None)
        .await
        .map_err(err)?
        .revision;
    let conflicts = handles
        .iter()
        .map(|h| h.stats.conflicts.load(std::sync::atomic::Ordering::Relaxed))
        .sum();
    for h in &handles {
        h.stop();
    }
    for t in tasks {
        t.await.map_err(err)?.map_err(err)?;
    }
    let converged_seconds = if agents {
        loop {
            let running = store
                .get(keys::STATUS, true, None)
                .await
                .map_err(err)?
                .kvs
                .len() as u64;
            if running >= want {
                break Some(t0.elapsed().as_secs_f64());
            }
            if Instant::now() > deadline {
                return Err(BenchError(format!(
                    "agents reported {running} of {want} tasks"
                )));
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    } else {
        None
    };
    stop_agents.send_replace(true);
    let (revisions, keys_written, placed) = count_writes(store, r0, r1).await?;
    let all = store.get(keys::ROOT, true, None).await.map_err(err)?;
    let store_bytes = all
        .kvs
        .iter()
        .map(|kv| (kv.key.len() + kv.value.len()) as u64)
        .sum();
    if placed != want {
        return Err(BenchError(format!(
            "the store holds {placed} task records, expected {want}"
        )));
    }
    let p = placed as f64;
    Ok(BenchRun {
        store: kind.into(),
        shards,
        hosts: args.hosts,
        placed,
        seconds,
        placements_per_s: p / seconds,
        scheduler_revisions: revisions,
        scheduler_keys: keys_written,
        writes_per_placement: revisions as f64 / p,
        keys_per_placement: keys_written as f64 / p,
        conflicts,
        fleet_init_seconds,
        leaders_seconds,
        converged_seconds,
        store_keys: all.kvs.len() as u64,
        store_bytes,
    })
}

/// Replays the store's history between two revisions: revisions and keys written by
/// the schedulers (under `/ents/*/tasks/`, `/assign/`, `/hosts/*/owner`), and task
/// records created.
async fn count_writes<S: Store>(
    store: &S,
    from: Revision,
    to: Revision,
) -> Result<(u64, u64, u64), BenchError> {
    let mut w = store.watch(keys::ROOT, from + 1).await.map_err(err)?;
    let (mut revisions, mut keys_written, mut tasks) = (BTreeSet::new(), 0u64, 0u64);
    let mut seen = from;
    while seen < to {
        let msg = tokio::time::timeout(Duration::from_secs(10), w.next())
            .await
            .map_err(|_| {
                BenchError(format!("history replay stalled at revision {seen} of {to}"))
            })?;
        match msg {
            Some(Ok(WatchMessage::Events(events))) => {
                for ev in events {
                    seen = seen.max(ev.revision());
                    if ev.revision() > to {
                        continue;
                    }
                    let k = ev.key();
                    let task =
                        keys::split(keys::ENTS, k).is_some_and(|p| p.get(1) == Some(&"tasks"));
                    let owner =
                        keys::split(keys::HOSTS, k).is_some_and(|p| p.get(1) == Some(&"owner"));
                    if task || owner || k.starts_with(keys::ASSIGN) {
                        revisions.insert(ev.revision());
                        keys_written += 1;
                    }
                    if task && matches!(ev, crate::store::Event::Put(ref kv) if kv.version == 1) {
                        tasks += 1;
                    }
                }
            }
            Some(Ok(WatchMessage::Progress(r))) => seen = seen.max(r),
            Some(Ok(other)) => return Err(BenchError(format!("history replay: {other:?}"))),
            Some(Err(e)) => return Err(err(e)),
            None => return Err(BenchError("history replay ended early".into())),
        }
    }
    Ok((revisions.len() as u64, keys_written, tasks))
}
