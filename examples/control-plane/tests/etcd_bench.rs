//! The benchmark commands behind docs/BENCHMARKS.md, run small on real etcd, with their
//! figures checked against the store by the independent checker: `bench` must have
//! placed every task (checked in the store, not taken from the bench), its count of
//! keys written must equal two per task plus one per host that joined an entitlement,
//! and `bench-failover` must time every failover within the lease TTL plus a margin.
#![allow(clippy::unwrap_used, clippy::cast_possible_truncation)] // tests: a failed unwrap is a failed test with its message.

mod common;

use std::process::Command;

use common::checker;
use common::etcd::{EtcdCluster, require_etcd};
use serde_json::Value;

const BIN: &str = env!("CARGO_BIN_EXE_twine-control");

fn run(args: &[&str]) -> Value {
    let out = Command::new(BIN).args(args).output().unwrap();
    assert!(
        out.status.success(),
        "twine-control {args:?}: {}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bench_figures_match_the_store() {
    if require_etcd().is_none() {
        return;
    }
    let cluster = EtcdCluster::start(1).await.unwrap();
    let e = cluster.endpoints();
    let report = run(&[
        "bench",
        "--endpoints",
        &e,
        "--hosts",
        "2000",
        "--jobs",
        "200",
        "--replicas",
        "5",
        "--shards",
        "1,3",
        "--agents",
    ]);
    let runs = report["runs"].as_array().unwrap();
    let kinds: Vec<(&str, u64)> = runs
        .iter()
        .map(|r| (r["store"].as_str().unwrap(), r["shards"].as_u64().unwrap()))
        .collect();
    assert_eq!(
        kinds,
        [("memory", 1), ("memory", 3), ("etcd", 1), ("etcd", 3)]
    );
    for r in runs {
        assert_eq!(r["placed"], 1000, "{r}");
        let p = r["placements_per_s"].as_f64().unwrap();
        let s = r["seconds"].as_f64().unwrap();
        assert!(
            (p * s - 1000.0).abs() < 1.0,
            "placements_per_s × seconds = {}",
            p * s
        );
        // At most 40 tasks per transaction, so at least 25 transactions.
        assert!(r["scheduler_revisions"].as_u64().unwrap() >= 25, "{r}");
        assert!(r["converged_seconds"].as_f64().unwrap() >= s, "{r}");
    }
    // The last run's state is still in etcd: check it, and count its keys ourselves.
    let store = cluster.store().await.unwrap();
    let state = checker::check_state(&store, true).await.unwrap();
    assert_eq!(state.tasks.len(), 1000);
    let joined: usize = state
        .owners
        .iter()
        .filter(|(o, _)| *o != "free")
        .map(|(_, n)| n)
        .sum();
    let last = &runs[3];
    assert_eq!(
        last["scheduler_keys"].as_u64().unwrap() as usize,
        2 * 1000 + joined,
        "keys written: a task record and an assignment per task, an owner per joined host"
    );
    let kpp = last["keys_per_placement"].as_f64().unwrap();
    assert!(
        (kpp - (2000 + joined) as f64 / 1000.0).abs() < 1e-9,
        "{kpp}"
    );
    checker::check_history(&store, 0).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failover_bench_times_each_kill() {
    if require_etcd().is_none() {
        return;
    }
    let cluster = EtcdCluster::start(1).await.unwrap();
    let e = cluster.endpoints();
    let r = run(&[
        "bench-failover",
        "--endpoints",
        &e,
        "--kills",
        "3",
        "--lease-ttl",
        "2",
        "--hosts",
        "300",
    ]);
    let times: Vec<u64> = r["failover_ms"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_u64().unwrap())
        .collect();
    assert_eq!(times.len(), 3);
    // The lease runs out at most one TTL after the kill (renewed every third of it, so
    // at least two thirds are left); then a survivor must notice, rebuild and place.
    for &t in &times {
        assert!(
            (1_000..=5_000).contains(&t),
            "failover took {t} ms with a 2 s lease: {r}"
        );
    }
    let mut sorted = times.clone();
    sorted.sort_unstable();
    assert_eq!(r["p50_ms"].as_u64().unwrap(), sorted[1]);
    assert_eq!(r["max_ms"].as_u64().unwrap(), sorted[2]);
    // No scheduler process is left behind.
    let ps = Command::new("pgrep")
        .args(["-f", "failover-"])
        .output()
        .unwrap();
    assert!(
        ps.stdout.is_empty(),
        "left behind: {}",
        String::from_utf8_lossy(&ps.stdout)
    );
    // Each successor's first placement was under its fence.
    checker::check_history(&cluster.store().await.unwrap(), 0)
        .await
        .unwrap();
}
