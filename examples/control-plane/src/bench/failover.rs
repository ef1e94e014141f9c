//! `twine-control bench-failover`: how long an entitlement goes without a scheduler
//! when its leader dies. Scheduler processes of this binary run against etcd; each
//! round `kill -9`s the leader of one entitlement, submits a job to it at once, and
//! times from the kill to the first task record written by the successor (seen by a
//! watch on the store, not reported by any scheduler). A fresh scheduler replaces the
//! dead one before the next round.

use std::collections::BTreeMap;
use std::process::Stdio;
use std::time::{Duration, Instant};

use serde::Serialize;
use tokio::process::{Child, Command};

use super::{BenchError, err, lay_out, wipe};
use crate::admin::{self, Submission};
use crate::keys;
use crate::model::{Capacity, JobRecord};
use crate::store::{AnyStore, Event, Store, WatchMessage};

/// What to measure.
#[derive(Debug, Clone, clap::Args)]
pub struct FailoverArgs {
    /// etcd URLs, comma-separated.
    #[arg(long)]
    pub endpoints: String,
    /// Leaders killed.
    #[arg(long, default_value_t = 20)]
    pub kills: u32,
    /// Scheduler processes kept running.
    #[arg(long, default_value_t = 3)]
    pub schedulers: u32,
    /// Their session lease TTL, seconds.
    #[arg(long, default_value_t = 2)]
    pub lease_ttl: i64,
    /// Hosts in the fleet.
    #[arg(long, default_value_t = 1000)]
    pub hosts: u32,
    /// Deletes everything under /twine/v1/ first.
    #[arg(long)]
    pub fresh: bool,
}

/// The measurements.
#[derive(Debug, Clone, Serialize)]
pub struct FailoverReport {
    /// Session lease TTL, seconds.
    pub lease_ttl: i64,
    /// Milliseconds from each kill to the successor's first placement.
    pub failover_ms: Vec<u64>,
    /// Their median.
    pub p50_ms: u64,
    /// Their maximum.
    pub max_ms: u64,
}

/// Scheduler processes, killed when dropped.
struct Fleet {
    exe: std::path::PathBuf,
    endpoints: String,
    ttl: i64,
    next: u32,
    running: BTreeMap<String, Child>,
}

impl Fleet {
    fn spawn(&mut self) -> Result<(), BenchError> {
        let name = format!("failover-{}", self.next);
        self.next += 1;
        let child = Command::new(&self.exe)
            .args([
                "scheduler",
                "--endpoints",
                &self.endpoints,
                "--name",
                &name,
                "--lease-ttl",
            ])
            .arg(self.ttl.to_string())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .map_err(|e| BenchError(format!("starting {}: {e}", self.exe.display())))?;
        self.running.insert(name, child);
        Ok(())
    }
}

/// Runs the rounds.
pub async fn run(args: &FailoverArgs) -> Result<FailoverReport, BenchError> {
    if args.endpoints == "memory" {
        return Err(BenchError(
            "bench-failover kills scheduler processes: it needs etcd endpoints, not memory".into(),
        ));
    }
    if args.kills == 0 || args.schedulers < 2 {
        return Err(BenchError(
            "--kills must be positive and --schedulers at least 2".into(),
        ));
    }
    let store = AnyStore::connect(&args.endpoints, Duration::from_secs(5))
        .await
        .map_err(err)?;
    wipe(&store, &args.endpoints, args.fresh).await?;
    let (ents, _) = lay_out(&store, args.hosts, args.schedulers).await?;
    let mut fleet = Fleet {
        exe: std::env::current_exe().map_err(err)?,
        endpoints: args.endpoints.clone(),
        ttl: args.lease_ttl,
        next: 0,
        running: BTreeMap::new(),
    };
    for _ in 0..args.schedulers {
        fleet.spawn()?;
    }
    let mut times = Vec::new();
    for round in 0..args.kills {
        let ent = &ents[(round % args.schedulers) as usize];
        let victim = led_by_live(&store, &ents, &fleet, Duration::from_secs(30))
            .await?
            .remove(ent)
            .ok_or_else(|| BenchError(format!("{ent} has no leader")))?;
        let mut child = fleet
            .running
            .remove(&victim)
            .ok_or_else(|| BenchError(format!("{victim} leads {ent} but is not ours")))?;
        let from = store
            .get(keys::FLEET, false, None)
            .await
            .map_err(err)?
            .revision;
        let job = format!("failover-{round}");
        let mut w = store
            .watch(&format!("{}{ent}/tasks/{job}/", keys::ENTS), from + 1)
            .await
            .map_err(err)?;
        child.start_kill().map_err(err)?; // SIGKILL
        let t0 = Instant::now();
        child.wait().await.map_err(err)?;
        admin::submit_records(
            &store,
            vec![Submission {
                path: job.clone().into(),
                record: JobRecord {
                    name: job.clone(),
                    entitlement: ent.clone(),
                    replicas: 1,
                    demand: Capacity {
                        cpu_milli: 100,
                        memory_mib: 128,
                    },
                    spec: String::new(),
                    format: "toml".into(),
                },
            }],
        )
        .await
        .map_err(err)?;
        let writer = loop {
            let msg = tokio::time::timeout(Duration::from_secs(60), w.next())
                .await
                .map_err(|_| {
                    BenchError(format!(
                        "round {round}: no successor placed {job} within 60 s"
                    ))
                })?;
            match msg {
                Some(Ok(WatchMessage::Events(evs))) => {
                    if let Some(Event::Put(kv)) = evs.first() {
                        let v: serde_json::Value = serde_json::from_str(&kv.value).map_err(err)?;
                        break v["writer"].as_str().unwrap_or_default().to_owned();
                    }
                }
                Some(Ok(_)) => {}
                Some(Err(e)) => return Err(err(e)),
                None => return Err(BenchError("watch ended".into())),
            }
        };
        let ms = u64::try_from(t0.elapsed().as_millis()).map_err(err)?;
        if writer == victim {
            return Err(BenchError(format!(
                "round {round}: {job} was written by the killed {victim}"
            )));
        }
        times.push(ms);
        fleet.spawn()?;
    }
    for (_, mut c) in std::mem::take(&mut fleet.running) {
        c.start_kill().ok();
        c.wait().await.ok();
    }
    let mut sorted = times.clone();
    sorted.sort_unstable();
    Ok(FailoverReport {
        lease_ttl: args.lease_ttl,
        p50_ms: sorted[sorted.len() / 2],
        max_ms: sorted.last().copied().unwrap_or(0),
        failover_ms: times,
    })
}

/// Waits until every entitlement is led by a scheduler this bench runs; returns who.
async fn led_by_live(
    store: &AnyStore,
    ents: &[String],
    fleet: &Fleet,
    limit: Duration,
) -> Result<BTreeMap<String, String>, BenchError> {
    let t = Instant::now();
    loop {
        let r = store.get(keys::ENTS, true, None).await.map_err(err)?;
        let leaders: BTreeMap<String, String> = r
            .kvs
            .iter()
            .filter_map(|kv| {
                let e = kv.key.strip_prefix(keys::ENTS)?.strip_suffix("/leader")?;
                Some((e.to_owned(), kv.value.clone()))
            })
            .collect();
        if ents.iter().all(|e| {
            leaders
                .get(e)
                .is_some_and(|s| fleet.running.contains_key(s))
        }) {
            return Ok(leaders);
        }
        if t.elapsed() > limit {
            return Err(BenchError(format!(
                "entitlements not all led by live schedulers after {limit:?}: {leaders:?}"
            )));
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}
