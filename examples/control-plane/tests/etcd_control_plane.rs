//! The control plane as processes on real etcd: `twine-control` schedulers and agents
//! spawned from the built binary, state checked by an independent checker
//! (`common::checker`: reads the keys itself, and replays the history to show that
//! every task record was written under its writer's fence).
//!
//! - `failover`: a leading scheduler is SIGKILLed while jobs are being submitted; the
//!   others take its entitlements within the lease TTL plus a margin.
//! - `deposed_leader_wakes_up`: a SIGSTOPped leader loses its entitlements, wakes up,
//!   has no write accepted and exits ("expired; stepping down").
//! - `etcd_restart`: etcd SIGKILLed and restarted from its data dir under a running
//!   control plane: nothing lost, nothing doubled.
//! - `three_members_lose_the_raft_leader`: a 3-member cluster loses its raft leader.
//! - `compacted_watch_rebuilds_from_a_snapshot`: watches of stopped processes are
//!   compacted away; on waking up they rebuild from a snapshot.
//! - `drain_through_taskcontrol`: a host drained through TaskControl with a controller
//!   process acking one move at a time.
//! - `bad_input`: the CLI refuses bad input with exit code 1, a message naming the
//!   thing, and no change to the store.
//!
//! Without an etcd binary every test skips with a reason (`TWINE_REQUIRE_REALSYS=1`
//! makes that a failure).
#![allow(clippy::unwrap_used)] // tests: a failed unwrap is a failed test with its message.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use common::checker::{self, State};
use common::etcd::{EtcdCluster, require_etcd};
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use twine_control::store::{EtcdStore, Event, Op, Store, Txn, WatchMessage};

const BIN: &str = env!("CARGO_BIN_EXE_twine-control");

// ---------------------------------------------------------------------------------
// Processes and the CLI.

/// A long-running `twine-control` process (scheduler or agents), stderr to a log
/// file. Dropping it SIGKILLs and reaps it, and prints its log if the test failed.
struct Proc {
    what: String,
    child: Option<Child>,
    status: Option<ExitStatus>,
    log: PathBuf,
}

impl Proc {
    fn spawn(dir: &Path, what: &str, args: &[&str]) -> Proc {
        let log = dir.join(format!("{what}.log"));
        let err = File::options()
            .create(true)
            .append(true)
            .open(&log)
            .unwrap();
        let child = Command::new(BIN)
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(err)
            .spawn()
            .unwrap();
        Proc {
            what: what.to_owned(),
            child: Some(child),
            status: None,
            log,
        }
    }

    fn scheduler(dir: &Path, endpoints: &str, name: &str, ttl: u32) -> Proc {
        let ttl = ttl.to_string();
        Proc::spawn(
            dir,
            name,
            &[
                "scheduler",
                "--endpoints",
                endpoints,
                "--name",
                name,
                "--lease-ttl",
                &ttl,
            ],
        )
    }

    fn agents(dir: &Path, endpoints: &str) -> Proc {
        Proc::spawn(
            dir,
            "agents",
            &["agents", "--endpoints", endpoints, "--simulated"],
        )
    }

    fn pid(&self) -> Pid {
        Pid::from_raw(i32::try_from(self.child.as_ref().unwrap().id()).unwrap())
    }

    fn signal(&self, sig: Signal) {
        kill(self.pid(), sig).unwrap();
    }

    /// The exit status if it exited.
    fn exited(&mut self) -> Option<ExitStatus> {
        if self.status.is_none()
            && let Some(c) = self.child.as_mut()
        {
            self.status = c.try_wait().unwrap();
        }
        self.status
    }

    fn wait_exit(&mut self, timeout: Duration) -> Option<ExitStatus> {
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            if let Some(s) = self.exited() {
                return Some(s);
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        None
    }

    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            // A stopped process dies of SIGKILL too.
            let _ = c.kill();
            let _ = c.wait();
        }
        if std::thread::panicking() {
            let log = self.log();
            let lines: Vec<&str> = log.lines().collect();
            eprintln!(
                "--- log of {} (last 40 lines) ---\n{}",
                self.what,
                lines[lines.len().saturating_sub(40)..].join("\n")
            );
        }
    }
}

/// The outcome of one CLI run.
#[derive(Debug)]
struct Out {
    code: Option<i32>,
    stdout: String,
    stderr: String,
    took: Duration,
}

/// Runs `twine-control ARGS` to completion (30 s at most).
fn cli(args: &[&str]) -> Out {
    let start = Instant::now();
    let mut child = Command::new(BIN)
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = start + Duration::from_secs(30);
    while child.try_wait().unwrap().is_none() {
        if Instant::now() > deadline {
            let _ = child.kill();
            let out = child.wait_with_output().unwrap();
            panic!(
                "twine-control {args:?} did not finish in 30 s; stderr: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    let out = child.wait_with_output().unwrap();
    Out {
        code: out.status.code(),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        took: start.elapsed(),
    }
}

/// Runs the CLI and requires success.
fn cli_ok(args: &[&str]) -> String {
    let out = cli(args);
    assert_eq!(out.code, Some(0), "twine-control {args:?} failed: {out:?}");
    out.stdout
}

/// Runs the CLI and requires exit code 1 with `needle` on stderr.
fn cli_fails(args: &[&str], needle: &str) -> Out {
    let out = cli(args);
    assert_eq!(
        out.code,
        Some(1),
        "twine-control {args:?} should fail: {out:?}"
    );
    assert!(
        out.stderr.contains("twine-control: ") && out.stderr.contains(needle),
        "twine-control {args:?}: stderr should name {needle:?}: {:?}",
        out.stderr
    );
    out
}

/// A job spec file.
fn spec(dir: &Path, name: &str, ent: &str, replicas: u32, cpu: f64, mem: &str) -> PathBuf {
    let path = dir.join(format!("{name}.toml"));
    std::fs::write(
        &path,
        format!(
            "name = \"{name}\"\nentitlement = \"{ent}\"\nreplicas = {replicas}\n[task]\n\
             command = [\"/bin/sleep\", \"infinity\"]\n[task.resources]\n\
             cpu_quota = {cpu:?}\nmemory_max = \"{mem}\"\n"
        ),
    )
    .unwrap();
    path
}

/// Submits specs in one CLI run.
fn submit(endpoints: &str, specs: &[PathBuf]) {
    let mut args = vec!["submit", "--endpoints", endpoints];
    args.extend(specs.iter().map(|p| p.to_str().unwrap()));
    cli_ok(&args);
}

/// Small jobs `<prefix><k>` for k in `range`, round-robin over `ents`, 1 to 5 replicas.
fn small_jobs(
    dir: &Path,
    prefix: &str,
    range: std::ops::Range<u32>,
    ents: &[&str],
) -> Vec<(PathBuf, String, u32)> {
    range
        .map(|k| {
            let ent = ents[k as usize % ents.len()];
            let replicas = 1 + k % 5;
            let name = format!("{prefix}{k}");
            (
                spec(dir, &name, ent, replicas, 0.5, "256M"),
                ent.to_owned(),
                replicas,
            )
        })
        .collect()
}

// ---------------------------------------------------------------------------------
// Set-up.

/// An etcd cluster with a fleet and entitlements, and a directory for logs and specs.
struct Env {
    cluster: EtcdCluster,
    store: EtcdStore,
    endpoints: String,
    dir: tempfile::TempDir,
}

async fn env(members: usize, hosts: u32, ents: &[(&str, u32)]) -> Option<Env> {
    require_etcd()?;
    let cluster = EtcdCluster::start(members).await.unwrap();
    let store = cluster.store().await.unwrap();
    let endpoints = cluster.endpoints();
    let dir = tempfile::Builder::new()
        .prefix("twine-cp-")
        .tempdir()
        .unwrap();
    cli_ok(&[
        "fleet",
        "init",
        "--endpoints",
        &endpoints,
        "--hosts",
        &hosts.to_string(),
    ]);
    for (e, q) in ents {
        cli_ok(&[
            "entitlement",
            "add",
            "--endpoints",
            &endpoints,
            e,
            "--quota-machines",
            &q.to_string(),
        ]);
    }
    Some(Env {
        cluster,
        store,
        endpoints,
        dir,
    })
}

/// Entitlement → leader, read from the store.
async fn leaders(store: &EtcdStore) -> BTreeMap<String, String> {
    checker::check_state(store, false).await.unwrap().leaders
}

/// Waits until the leaders are what `desired_leaders` gives for `live` (stable).
async fn wait_leaders(
    store: &EtcdStore,
    live: &[&str],
    ents: &[&str],
    timeout: Duration,
) -> BTreeMap<String, String> {
    let want: BTreeMap<String, String> = twine_control::sched::assign::desired_leaders(live, ents)
        .into_iter()
        .map(|(e, s)| (e.to_owned(), s.to_owned()))
        .collect();
    let deadline = Instant::now() + timeout;
    loop {
        let got = leaders(store).await;
        if got == want {
            return got;
        }
        assert!(
            Instant::now() < deadline,
            "leaders {got:?}, expected {want:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// etcd's count of slow watchers (ones it stopped sending to: their stream's buffer
/// is full), from its metrics on the client URL.
fn slow_watchers(endpoint: &str) -> u64 {
    use std::io::{Read, Write};
    let addr = endpoint.trim_start_matches("http://");
    let mut conn = std::net::TcpStream::connect(addr).unwrap();
    conn.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    conn.write_all(b"GET /metrics HTTP/1.0\r\n\r\n").unwrap();
    let mut text = String::new();
    conn.read_to_string(&mut text).unwrap();
    text.lines()
        .find_map(|l| l.strip_prefix("etcd_debugging_mvcc_slow_watcher_total "))
        .and_then(|v| v.trim().parse::<u64>().ok())
        .unwrap_or(0)
}

async fn complete(store: &EtcdStore, timeout: Duration) -> State {
    match checker::wait_complete(store, timeout).await {
        Ok(st) => st,
        Err(e) => panic!("{e:#}"),
    }
}

async fn history(store: &EtcdStore, base: i64) -> checker::History {
    match checker::check_history(store, base).await {
        Ok(h) => h,
        Err(e) => panic!("history: {e:#}"),
    }
}

// ---------------------------------------------------------------------------------
// Tests.

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failover() {
    const TTL: u32 = 2;
    let ents = ["ents0", "ents1", "ents2", "ents3"];
    let Some(env) = env(1, 2000, &ents.map(|e| (e, 150))).await else {
        return;
    };
    let (ep, dir) = (env.endpoints.as_str(), env.dir.path());
    let names = ["s0", "s1", "s2"];
    let mut scheds: BTreeMap<&str, Proc> = names
        .iter()
        .map(|n| (*n, Proc::scheduler(dir, ep, n, TTL)))
        .collect();
    let _agents = Proc::agents(dir, ep);
    wait_leaders(&env.store, &names, &ents, Duration::from_secs(15)).await;

    // 200 jobs, 50 per entitlement, submitted in batches of 10 from a thread.
    let jobs = small_jobs(dir, "job", 0..200, &ents);
    let submitted = Arc::new(AtomicUsize::new(0));
    let submitter = {
        let (jobs, submitted, ep) = (jobs.clone(), submitted.clone(), ep.to_owned());
        std::thread::spawn(move || {
            for batch in jobs.chunks(10) {
                let specs: Vec<PathBuf> = batch.iter().map(|j| j.0.clone()).collect();
                submit(&ep, &specs);
                submitted.fetch_add(batch.len(), Ordering::SeqCst);
                std::thread::sleep(Duration::from_millis(100));
            }
        })
    };
    while submitted.load(Ordering::SeqCst) < 100 {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // The entitlement with the most pending work, at one revision.
    let st = checker::check_state(&env.store, false).await.unwrap();
    let n = submitted.load(Ordering::SeqCst);
    let mut pending: BTreeMap<&str, i64> = BTreeMap::new();
    for (_, e, r) in &jobs[..n] {
        *pending.entry(e.as_str()).or_default() += i64::from(*r);
    }
    for (e, ..) in st.tasks.keys() {
        *pending.get_mut(e.as_str()).unwrap() -= 1;
    }
    let busiest = pending
        .iter()
        .max_by_key(|(e, p)| (**p, std::cmp::Reverse(**e)))
        .unwrap()
        .0
        .to_string();
    let victim = st.leaders[&busiest].clone();
    let dead_ents: BTreeSet<String> = st
        .leaders
        .iter()
        .filter(|(_, s)| **s == victim)
        .map(|(e, _)| e.clone())
        .collect();
    eprintln!("failover: pending {pending:?}; killing {victim}, leader of {dead_ents:?}");

    // Watch for the first task record of a dead entitlement by another scheduler.
    let mut w = env
        .store
        .watch("/twine/v1/ents/", st.revision + 1)
        .await
        .unwrap();
    let (v2, d2) = (victim.clone(), dead_ents.clone());
    let watcher = tokio::spawn(async move {
        let (mut took_over, mut first_task) = (None, None);
        while first_task.is_none() {
            let evs = match w.next().await {
                Some(Ok(WatchMessage::Events(evs))) => evs,
                Some(Ok(_)) => continue,
                other => panic!("the failover watch ended: {other:?}"),
            };
            for ev in evs {
                let Event::Put(kv) = ev else { continue };
                let parts: Vec<&str> = kv
                    .key
                    .trim_start_matches("/twine/v1/ents/")
                    .split('/')
                    .collect();
                if !d2.contains(parts[0]) {
                    continue;
                }
                if parts[1..] == ["leader"] && kv.value != v2 && took_over.is_none() {
                    took_over = Some(Instant::now());
                }
                if parts[1] == "tasks"
                    && !kv.value.contains(&format!("\"writer\":\"{v2}\""))
                    && first_task.is_none()
                {
                    first_task = Some(Instant::now());
                }
            }
        }
        (took_over, first_task.unwrap())
    });
    let killed = Instant::now();
    scheds[victim.as_str()].signal(Signal::SIGKILL);
    let (took_over, first_task) = tokio::time::timeout(Duration::from_secs(20), watcher)
        .await
        .expect("no task record of the dead scheduler's entitlements by another within 20 s")
        .unwrap();
    let to_task = first_task - killed;
    eprintln!(
        "failover: kill -> new leader key {:?}, kill -> first task record by another scheduler {to_task:?} (lease TTL {TTL} s)",
        took_over.map(|t| t - killed)
    );
    assert!(
        to_task <= Duration::from_secs(u64::from(TTL) + 3),
        "failover took {to_task:?}, more than the lease TTL {TTL} s + 3 s"
    );

    submitter.join().unwrap();
    let st = complete(&env.store, Duration::from_secs(60)).await;
    assert_eq!(
        st.replicas,
        jobs.iter().map(|j| u64::from(j.2)).sum::<u64>()
    );
    let h = history(&env.store, 0).await;
    eprintln!(
        "failover: {} task records checked, by writer {:?}",
        h.task_puts, h.by_writer
    );
    // Leaders: every entitlement, only live schedulers.
    let live: BTreeSet<&str> = names.iter().copied().filter(|n| *n != victim).collect();
    assert_eq!(st.leaders.len(), ents.len(), "{:?}", st.leaders);
    assert!(
        st.leaders.values().all(|s| live.contains(s.as_str())),
        "{:?}",
        st.leaders
    );
    for (n, p) in &mut scheds {
        if *n != victim {
            assert_eq!(p.exited(), None, "scheduler {n} exited");
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deposed_leader_wakes_up() {
    let ents = ["d0", "d1", "d2", "d3"];
    let Some(env) = env(1, 100, &ents.map(|e| (e, 20))).await else {
        return;
    };
    let (ep, dir) = (env.endpoints.as_str(), env.dir.path());
    let mut a = Proc::scheduler(dir, ep, "sa", 2);
    wait_leaders(&env.store, &["sa"], &ents, Duration::from_secs(15)).await;
    let b = Proc::scheduler(dir, ep, "sb", 2);
    let _agents = Proc::agents(dir, ep);
    let led = wait_leaders(&env.store, &["sa", "sb"], &ents, Duration::from_secs(15)).await;
    let a_ents: Vec<&str> = ents.iter().copied().filter(|e| led[*e] == "sa").collect();
    assert!(!a_ents.is_empty(), "{led:?}");
    let first = small_jobs(dir, "pre", 0..8, &ents);
    submit(ep, &first.iter().map(|j| j.0.clone()).collect::<Vec<_>>());
    complete(&env.store, Duration::from_secs(20)).await;

    a.signal(Signal::SIGSTOP);
    let stopped = Instant::now();
    let deadline = stopped + Duration::from_secs(10);
    loop {
        let l = leaders(&env.store).await;
        if a_ents.iter().all(|e| l.get(*e).is_some_and(|s| s == "sb")) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "sb did not take {a_ents:?}: {l:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    eprintln!(
        "deposed: sb took {a_ents:?} {:?} after SIGSTOP of sa",
        stopped.elapsed()
    );
    let more = small_jobs(dir, "post", 0..8, &a_ents);
    submit(ep, &more.iter().map(|j| j.0.clone()).collect::<Vec<_>>());
    complete(&env.store, Duration::from_secs(20)).await;

    a.signal(Signal::SIGCONT);
    let status = a
        .wait_exit(Duration::from_secs(8))
        .expect("sa did not exit within 8 s of SIGCONT");
    assert_eq!(status.code(), Some(1), "{}", a.log());
    let log = a.log();
    assert!(
        log.contains("twine-control: session lease of scheduler \"sa\" expired; stepping down"),
        "{log}"
    );
    for line in log.lines().filter(|l| {
        l.contains("lost the lead") || l.contains("deposed") || l.contains("stepping down")
    }) {
        eprintln!("deposed: sa after SIGCONT: {line}");
    }
    let h = history(&env.store, 0).await;
    // sb placed the jobs submitted to sa's former entitlements (and the checker saw no
    // task record of sa accepted after its leader keys were gone).
    assert!(
        h.puts
            .iter()
            .any(|(_, e, w)| w == "sb" && a_ents.contains(&e.as_str())),
        "{:?}",
        h.by_writer
    );
    eprintln!("deposed: task records by writer {:?}", h.by_writer);
    let st = complete(&env.store, Duration::from_secs(20)).await;
    assert!(st.leaders.values().all(|s| s == "sb"), "{:?}", st.leaders);
    drop(b);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn etcd_restart() {
    let ents = ["r0", "r1"];
    let Some(mut env) = env(1, 100, &ents.map(|e| (e, 30))).await else {
        return;
    };
    let ep = env.endpoints.clone();
    let dir = env.dir.path().to_owned();
    let mut sched = Proc::scheduler(&dir, &ep, "s0", 5);
    let mut agents = Proc::agents(&dir, &ep);
    let old = small_jobs(&dir, "old", 0..6, &ents);
    submit(&ep, &old.iter().map(|j| j.0.clone()).collect::<Vec<_>>());
    let before = complete(&env.store, Duration::from_secs(20)).await;

    // An outage of 3 s: longer than the store client's own retries of requests that
    // never reached a member, shorter than the scheduler's lease TTL (and etcd renews
    // every lease when it comes back with a leader).
    env.cluster.kill(0).unwrap();
    let down = Instant::now();
    tokio::time::sleep(Duration::from_secs(3)).await;
    env.cluster.restart(0).await.unwrap();
    eprintln!("etcd_restart: etcd was down {:?}", down.elapsed());
    assert_eq!(
        agents.exited(),
        None,
        "the agents exited during the outage:\n{}",
        agents.log()
    );
    // A scheduler whose session lease expired during the outage stops (it cannot know
    // what it still leads) and a supervisor restarts it: its state is all in the store.
    // Any other exit is a failure: the store being away for a while is not an error.
    if let Some(s) = sched.exited() {
        let log = sched.log();
        assert!(
            log.contains("expired; stepping down"),
            "the scheduler exited ({s}):\n{log}"
        );
        eprintln!("etcd_restart: the scheduler's lease expired during the outage; restarting it");
        sched = Proc::scheduler(&dir, &ep, "s0b", 5);
    }
    let new = small_jobs(&dir, "new", 0..6, &ents);
    submit(&ep, &new.iter().map(|j| j.0.clone()).collect::<Vec<_>>());
    let after = complete(&env.store, Duration::from_secs(30)).await;
    for (t, h) in &before.tasks {
        assert_eq!(after.tasks.get(t), Some(h), "task {t:?} moved or vanished");
    }
    assert_eq!(after.tasks.len() as u64, after.replicas);
    history(&env.store, 0).await;
    assert_eq!(agents.exited(), None);
    assert_eq!(sched.exited(), None, "{}", sched.log());
}

/// A host drained through TaskControl, as processes on etcd: `drain` marks the host,
/// the leader offers a move per task, a `taskcontrol` controller process acks one at a
/// time, and the host ends drained and empty with every task placed and running
/// elsewhere, each rewritten task record under its writer's fence.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn drain_through_taskcontrol() {
    let Some(env) = env(1, 20, &[("d0", 10)]).await else {
        return;
    };
    let ep = env.endpoints.clone();
    let dir = env.dir.path().to_owned();
    let _sched = Proc::scheduler(&dir, &ep, "s0", 5);
    let _agents = Proc::agents(&dir, &ep);
    submit(&ep, &[spec(&dir, "dw", "d0", 8, 4.0, "8G")]);
    let before = complete(&env.store, Duration::from_secs(20)).await;
    // The busiest host.
    let mut per_host: BTreeMap<&str, usize> = BTreeMap::new();
    for h in before.tasks.values() {
        *per_host.entry(h).or_default() += 1;
    }
    let (host, n) = per_host
        .iter()
        .max_by_key(|(h, n)| (**n, std::cmp::Reverse(**h)))
        .map(|(h, n)| ((*h).to_owned(), *n))
        .unwrap();
    assert!(n >= 2, "{per_host:?}");
    let _controller = Proc::spawn(
        &dir,
        "controller",
        &[
            "taskcontrol",
            "--endpoints",
            &ep,
            "--job",
            "dw",
            "--entitlement",
            "d0",
            "--max-unavailable",
            "1",
        ],
    );
    cli_ok(&["drain", "--endpoints", &ep, "--host", &host]);
    let key = format!("/twine/v1/hosts/{host}/drain");
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let r = env.store.get(&key, false, None).await.unwrap();
        let state = r
            .kvs
            .first()
            .and_then(|kv| serde_json::from_str::<serde_json::Value>(&kv.value).ok())
            .and_then(|v| v["state"].as_str().map(str::to_owned));
        if state.as_deref() == Some("drained") {
            break;
        }
        assert!(Instant::now() < deadline, "{host} not drained: {state:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let after = complete(&env.store, Duration::from_secs(20)).await;
    assert_eq!(after.tasks.len(), 8);
    assert!(
        after.tasks.values().all(|h| *h != host),
        "tasks left on {host}"
    );
    let moved = before
        .tasks
        .iter()
        .filter(|(t, h)| after.tasks.get(*t) != Some(*h))
        .count();
    assert_eq!(moved, n, "exactly the drained host's tasks moved");
    // No operation left behind, and every task record written under its writer's fence.
    let ops = env
        .store
        .get("/twine/v1/taskcontrol/", true, None)
        .await
        .unwrap();
    assert!(ops.kvs.is_empty(), "{:?}", ops.kvs);
    history(&env.store, 0).await;
    cli_fails(&["drain", "--endpoints", &ep, "--host", &host], "already");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_members_lose_the_raft_leader() {
    let ents = ["c0", "c1"];
    let Some(mut env) = env(3, 100, &ents.map(|e| (e, 30))).await else {
        return;
    };
    let ep = env.endpoints.clone();
    let dir = env.dir.path().to_owned();
    let mut sched = Proc::scheduler(&dir, &ep, "s0", 5);
    let mut agents = Proc::agents(&dir, &ep);
    let old = small_jobs(&dir, "old", 0..4, &ents);
    submit(&ep, &old.iter().map(|j| j.0.clone()).collect::<Vec<_>>());
    let before = complete(&env.store, Duration::from_secs(20)).await;

    // The raft leader: the member whose id is the leader its status names.
    let out = Command::new("etcdctl")
        .args(["--endpoints", &ep, "endpoint", "status", "-w", "json"])
        .env("ETCDCTL_API", "3")
        .output();
    let leader = out
        .ok()
        .and_then(|o| serde_json::from_slice::<serde_json::Value>(&o.stdout).ok())
        .and_then(|v| {
            v.as_array()?.iter().find_map(|m| {
                let s = m.get("Status")?;
                let id = s.get("header")?.get("member_id")?.as_u64()?;
                (s.get("leader")?.as_u64()? == id)
                    .then(|| m.get("Endpoint")?.as_str().map(str::to_owned))?
            })
        })
        .and_then(|e| (0..3).find(|i| env.cluster.endpoint(*i) == e));
    eprintln!("three members: the raft leader is member {leader:?} (killing member 0 if unknown)");
    let leader = leader.unwrap_or(0);
    env.cluster.kill(leader).unwrap();
    // A request during the election fails ("leader changed"); a one-shot CLI command
    // reports that and exits 1 (it cannot know whether a write was applied), so the
    // operator submits once the cluster has a leader again. The long-running processes
    // ride it out.
    let deadline = Instant::now() + Duration::from_secs(10);
    while env.store.get("/", false, None).await.is_err() {
        assert!(Instant::now() < deadline, "no raft leader within 10 s");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let new = small_jobs(&dir, "new", 0..4, &ents);
    submit(&ep, &new.iter().map(|j| j.0.clone()).collect::<Vec<_>>());
    let after = complete(&env.store, Duration::from_secs(30)).await;
    for (t, h) in &before.tasks {
        assert_eq!(after.tasks.get(t), Some(h), "task {t:?} moved or vanished");
    }
    history(&env.store, 0).await;
    assert_eq!(agents.exited(), None, "{}", agents.log());
    assert_eq!(sched.exited(), None, "{}", sched.log());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn compacted_watch_rebuilds_from_a_snapshot() {
    let Some(env) = env(1, 50, &[("k0", 10)]).await else {
        return;
    };
    let (ep, dir) = (env.endpoints.as_str(), env.dir.path());
    let sched = Proc::scheduler(dir, ep, "s0", 60);
    let agents = Proc::agents(dir, ep);
    submit(ep, &[spec(dir, "first", "k0", 2, 0.5, "256M")]);
    complete(&env.store, Duration::from_secs(20)).await;

    sched.signal(Signal::SIGSTOP);
    agents.signal(Signal::SIGSTOP);
    // Separate writes of 1 KB under both watched prefixes, 8 writers at a time, in
    // rounds of 1000, until etcd counts both stopped watchers (the scheduler's on
    // /twine/v1/ents/, the agents' on /twine/v1/assign/) as slow: it stopped sending to
    // them because their streams' buffers are full (about 4000 to 6000 writes here).
    // Then one more round, so they are well behind the compaction.
    let started = Instant::now();
    let mut writes = 0;
    let mut extra_rounds = 1;
    loop {
        let slow = slow_watchers(&env.cluster.endpoint(0));
        if slow >= 2 {
            if extra_rounds == 0 {
                break;
            }
            extra_rounds -= 1;
        }
        assert!(
            started.elapsed() < Duration::from_secs(20),
            "etcd still sends to the stopped watchers after {writes} writes in {:?} ({slow} slow watchers)",
            started.elapsed()
        );
        let mut writers = Vec::new();
        for w in 0..8 {
            let (store, value) = (env.store.clone(), "x".repeat(1024));
            writers.push(tokio::spawn(async move {
                for i in (writes + w..writes + 1000).step_by(8) {
                    let key = if i % 2 == 0 {
                        format!("/twine/v1/assign/junk-host/junk/{i}")
                    } else {
                        format!("/twine/v1/ents/zz-junk/junk/{i}")
                    };
                    store
                        .txn(Txn::new().and_then([Op::put(key, value.clone())]))
                        .await
                        .unwrap();
                }
            }));
        }
        for w in writers {
            w.await.unwrap();
        }
        writes += 1000;
    }
    let rev = env.store.get("/", false, None).await.unwrap().revision;
    env.store.compact(rev).await.unwrap();
    let junk = Txn::new().and_then([
        Op::Delete {
            key: "/twine/v1/assign/junk-host/".into(),
            prefix: true,
        },
        Op::Delete {
            key: "/twine/v1/ents/zz-junk/".into(),
            prefix: true,
        },
    ]);
    env.store.txn(junk).await.unwrap();
    eprintln!(
        "compaction: {writes} writes in {:?}, compacted at {rev}",
        started.elapsed()
    );
    sched.signal(Signal::SIGCONT);
    agents.signal(Signal::SIGCONT);
    submit(ep, &[spec(dir, "second", "k0", 3, 0.5, "256M")]);
    let st = complete(&env.store, Duration::from_secs(30)).await;
    assert_eq!(st.tasks.len(), 5);
    let (slog, alog) = (sched.log(), agents.log());
    assert!(
        slog.contains("watch compacted away; rebuilding from a snapshot"),
        "the scheduler's watch was not compacted away:\n{slog}"
    );
    assert!(
        alog.contains("has been compacted") && alog.contains("re-reading assignments"),
        "the agents' watch was not compacted away:\n{alog}"
    );
    // The history before the compaction is gone: check from the compaction revision.
    history(&env.store, rev).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_input() {
    if require_etcd().is_none() {
        return;
    }
    // etcd unreachable: a closed port; every subcommand fails within ~6 s naming it.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let closed = format!("http://127.0.0.1:{port}");
    let tmp = tempfile::tempdir().unwrap();
    let web = spec(tmp.path(), "web", "ents0", 3, 1.0, "2G");
    let web_s = web.to_str().unwrap();
    let cmds: Vec<Vec<&str>> = vec![
        vec!["fleet", "init", "--endpoints", &closed, "--hosts", "10"],
        vec![
            "entitlement",
            "add",
            "--endpoints",
            &closed,
            "e",
            "--quota-machines",
            "1",
        ],
        vec!["scheduler", "--endpoints", &closed, "--name", "s"],
        vec!["agents", "--endpoints", &closed, "--simulated"],
        vec!["submit", "--endpoints", &closed, web_s],
        vec!["dump", "--endpoints", &closed, "--json"],
    ];
    let runs: Vec<_> = cmds
        .into_iter()
        .map(|args| {
            let args: Vec<String> = args.into_iter().map(str::to_owned).collect();
            std::thread::spawn(move || {
                let a: Vec<&str> = args.iter().map(String::as_str).collect();
                (args.clone(), cli(&a))
            })
        })
        .collect();
    for r in runs {
        let (args, out) = r.join().unwrap();
        assert_eq!(out.code, Some(1), "{args:?}: {out:?}");
        assert!(
            out.stderr.contains("unreachable") && out.stderr.contains(&closed),
            "{args:?}: {:?}",
            out.stderr
        );
        assert!(
            out.took < Duration::from_secs(7),
            "{args:?} took {:?}",
            out.took
        );
        eprintln!(
            "bad input: {} {} against a closed port: exit 1 after {:?}",
            args[0], args[1], out.took
        );
    }

    let Some(env) = env(1, 10, &[("ents0", 2)]).await else {
        return;
    };
    let (ep, dir) = (env.endpoints.as_str(), env.dir.path());
    let rev = |store: EtcdStore| async move { store.get("/", false, None).await.unwrap().revision };
    let unchanged = |what: &'static str, before: i64| {
        let store = env.store.clone();
        async move {
            let after = store.get("/", false, None).await.unwrap().revision;
            assert_eq!(before, after, "{what} changed the store");
        }
    };

    let r0 = rev(env.store.clone()).await;
    let unknown = spec(dir, "lost", "nosuch", 1, 1.0, "1G");
    cli_fails(
        &["submit", "--endpoints", ep, unknown.to_str().unwrap()],
        "nosuch",
    );
    unchanged("a spec of an unknown entitlement", r0).await;
    // 3 hosts' worth of tasks in an entitlement of 2 machines.
    let big = spec(dir, "big", "ents0", 3, 18.0, "60G");
    cli_fails(
        &["submit", "--endpoints", ep, big.to_str().unwrap()],
        "quota",
    );
    unchanged("a job over quota", r0).await;
    cli_fails(
        &["fleet", "init", "--endpoints", ep, "--hosts", "10"],
        "fleet",
    );
    unchanged("fleet init twice", r0).await;
    cli_fails(
        &[
            "entitlement",
            "add",
            "--endpoints",
            ep,
            "ents0",
            "--quota-machines",
            "1",
        ],
        "ents0",
    );
    unchanged("entitlement add twice", r0).await;
    cli_fails(
        &[
            "entitlement",
            "add",
            "--endpoints",
            ep,
            "a/b",
            "--quota-machines",
            "1",
        ],
        "a/b",
    );
    cli_fails(&["scheduler", "--endpoints", ep, "--name", "a/b"], "a/b");
    let slash = spec(dir, "slash", "ents0", 1, 1.0, "1G");
    let text = std::fs::read_to_string(&slash)
        .unwrap()
        .replace("name = \"slash\"", "name = \"a/b\"");
    std::fs::write(&slash, text).unwrap();
    cli_fails(
        &["submit", "--endpoints", ep, slash.to_str().unwrap()],
        "a/b",
    );
    unchanged("names with '/'", r0).await;

    // A scheduler started twice under one name: the second is refused, the first leads on.
    let mut first = Proc::scheduler(dir, ep, "s0", 2);
    wait_leaders(&env.store, &["s0"], &["ents0"], Duration::from_secs(15)).await;
    let r1 = rev(env.store.clone()).await;
    cli_fails(
        &["scheduler", "--endpoints", ep, "--name", "s0"],
        "already running",
    );
    unchanged("a second scheduler s0", r1).await;
    // The first keeps its session past a lease TTL and still leads.
    tokio::time::sleep(Duration::from_millis(2500)).await;
    assert_eq!(first.exited(), None, "{}", first.log());
    assert_eq!(
        leaders(&env.store).await.get("ents0").map(String::as_str),
        Some("s0")
    );
    unchanged("the running scheduler", r1).await;
    let _ = &env.cluster;
}

/// The checker itself: a consistent hand-written state passes, and each kind of
/// violation it is meant to find is found (so a passing check above means something).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn checker_finds_violations() {
    let Some(env) = env(1, 3, &[("e0", 1)]).await else {
        return;
    };
    let s = &env.store;
    let put = |k: &str, v: &str| {
        let (s, k, v) = (s.clone(), k.to_owned(), v.to_owned());
        async move {
            s.txn(Txn::new().and_then([Op::put(k, v)]))
                .await
                .unwrap()
                .revision
        }
    };
    let del = |k: &str| {
        let (s, k) = (s.clone(), k.to_owned());
        async move {
            s.txn(Txn::new().and_then([Op::delete(k)]))
                .await
                .unwrap()
                .revision
        }
    };
    let demand = r#"{"cpu_milli":1000,"memory_mib":1024}"#;
    let task = |host: &str, writer: &str, epoch: i64, cpu: u64| {
        format!(
            r#"{{"host":"{host}","demand":{{"cpu_milli":{cpu},"memory_mib":1024}},"writer":"{writer}","epoch":{epoch}}}"#
        )
    };
    let epoch = put("/twine/v1/ents/e0/leader", "s0").await;
    put(
        "/twine/v1/ents/e0/jobs/j",
        &format!(
            r#"{{"name":"j","entitlement":"e0","replicas":1,"demand":{demand},"spec":"","format":"toml"}}"#
        ),
    )
    .await;
    put("/twine/v1/hosts/h00000/owner", "e0").await;
    let t0 = "/twine/v1/ents/e0/tasks/j/0";
    put(t0, &task("h00000", "s0", epoch, 1000)).await;
    let a0 = "/twine/v1/assign/h00000/j/0";
    put(
        a0,
        &format!(r#"{{"entitlement":"e0","job":"j","index":0,"demand":{demand}}}"#),
    )
    .await;
    put(
        "/twine/v1/status/h00000/j/0",
        r#"{"state":"running","agent":"simulated","detail":""}"#,
    )
    .await;
    let st = checker::check_state(s, true).await.unwrap();
    assert_eq!((st.tasks.len(), st.running), (1, 1));
    assert_eq!(checker::check_history(s, 0).await.unwrap().task_puts, 1);

    // State violations, each undone after it is found.
    let bad_state = |what: &'static str, needle: &'static str| {
        let s = s.clone();
        async move {
            let e = checker::check_state(&s, false).await.expect_err(what);
            assert!(format!("{e:#}").contains(needle), "{what}: {e:#}");
        }
    };
    put(t0, &task("h00000", "s0", epoch, 20_000)).await;
    bad_state("over capacity", "over capacity").await;
    put(t0, &task("h00001", "s0", epoch, 1000)).await;
    bad_state("a host of another owner", "owned by").await;
    put(t0, &task("h00000", "s0", epoch, 1000)).await;
    put(
        "/twine/v1/ents/e0/tasks/j/1",
        &task("h00000", "s0", epoch, 1000),
    )
    .await;
    bad_state("an index beyond replicas", "not below replicas").await;
    del("/twine/v1/ents/e0/tasks/j/1").await;
    put(
        "/twine/v1/assign/h00000/j/7",
        r#"{"entitlement":"e0","job":"j","index":7}"#,
    )
    .await;
    bad_state("an assignment without a task", "no task record").await;
    del("/twine/v1/assign/h00000/j/7").await;
    del(a0).await;
    bad_state("a task without an assignment", "assignment says None").await;
    put(
        a0,
        &format!(r#"{{"entitlement":"e0","job":"j","index":0,"demand":{demand}}}"#),
    )
    .await;
    put("/twine/v1/hosts/h00001/owner", "e0").await;
    bad_state("hosts beyond quota", "quota 1").await;
    put("/twine/v1/hosts/h00001/owner", "free").await;
    checker::check_state(s, true).await.unwrap();

    // History violations: a write after the leader key went, by another writer, at an
    // old epoch.
    del("/twine/v1/ents/e0/leader").await;
    let base = put(t0, &task("h00000", "s0", epoch, 1000)).await;
    let e = checker::check_history(s, 0)
        .await
        .expect_err("a write without a leader");
    assert!(format!("{e:#}").contains("leader key was None"), "{e:#}");
    let epoch2 = put("/twine/v1/ents/e0/leader", "s1").await;
    let base2 = put(t0, &task("h00000", "s1", epoch2, 1000)).await;
    assert_eq!(checker::check_history(s, base).await.unwrap().task_puts, 1);
    put(t0, &task("h00000", "s0", epoch, 1000)).await;
    let e = checker::check_history(s, base2)
        .await
        .expect_err("a write of the deposed leader");
    assert!(format!("{e:#}").contains("by s0 (epoch"), "{e:#}");
    let base3 = put(t0, &task("h00000", "s1", epoch2, 1000)).await;
    put(t0, &task("h00000", "s1", epoch, 1000)).await;
    let e = checker::check_history(s, base3)
        .await
        .expect_err("a write at an old epoch");
    assert!(format!("{e:#}").contains("epoch"), "{e:#}");
}
