//! Host tier: the real agent runs what an in-process scheduler assigned, through
//! twine-agent, in containers booted from the cached rootfs, with the state in a real
//! etcd. Needs root, the rootfs (`cargo xtask rootfs`) and etcd; skipped with a reason
//! otherwise, unless `TWINE_REQUIRE_REALSYS=1`, which makes it fail instead.
//!
//! Each agent runs in a tokio runtime of its own, on a thread of its own: a runtime
//! stands for the agent's process, and dropping it is the process exiting (the
//! containers stay, as they would).
//!
//! Everything is checked independently of the agent's reports: the containers through
//! the agent's records, `/proc` and the cgroup tree; cleanup through the mount table
//! and the cgroup tree.

mod common;

use std::collections::BTreeMap;
use std::fs;
use std::os::unix::fs::MetadataExt as _;
use std::path::{Path, PathBuf};
use std::thread;
use std::time::{Duration, Instant};

use common::etcd::{EtcdCluster, require_etcd};
use tokio::sync::watch;
use twine_agent::agent::{JobRecord as AgentRecord, job_key};
use twine_control::admin::{self, FleetConfig};
use twine_control::agents::real::{self, RealAgentError};
use twine_control::keys;
use twine_control::model::{self, Assignment, Capacity, StatusRecord, TaskState};
use twine_control::sched::{self, SchedulerConfig, SchedulerHandle};
use twine_control::store::{EtcdStore, Op, Store, Txn};

/// Where `cargo xtask rootfs` caches the rootfs, unless `TWINE_ROOTFS` says otherwise
/// (as in twine-agent's `tests/realsys`).
const DEFAULT_ROOTFS: &str = "/var/tmp/twine-cache/rootfs-bookworm";

fn rootfs() -> PathBuf {
    std::env::var_os("TWINE_ROOTFS").map_or_else(|| PathBuf::from(DEFAULT_ROOTFS), PathBuf::from)
}

/// `true` when the host tier can run; otherwise prints why and returns `false`, or
/// panics under `TWINE_REQUIRE_REALSYS=1`.
fn available() -> bool {
    let reason = if fs::metadata("/proc/self").map(|m| m.uid()).ok() != Some(0) {
        Some("the real agents' host test needs root".to_owned())
    } else if !rootfs().join("usr/lib/systemd/systemd").exists() {
        Some(format!(
            "no container rootfs with systemd at {} (build it with `cargo xtask rootfs`, or set TWINE_ROOTFS)",
            rootfs().display()
        ))
    } else {
        None
    };
    match reason {
        None => true,
        Some(reason) => {
            if std::env::var("TWINE_REQUIRE_REALSYS").is_ok_and(|v| v == "1") {
                panic!("TWINE_REQUIRE_REALSYS=1 but the host tier cannot run: {reason}");
            }
            eprintln!("skipped: {reason}");
            false
        }
    }
}

/// A scratch directory on a disk file system (overlayfs needs one for its upper layer).
fn scratch(tag: &str) -> tempfile::TempDir {
    fs::create_dir_all("/var/tmp/twine-agent-tests").expect("creating /var/tmp/twine-agent-tests");
    tempfile::Builder::new()
        .prefix(&format!("{tag}-"))
        .tempdir_in("/var/tmp/twine-agent-tests")
        .expect("scratch dir")
}

/// The records of every task under an agent's state directory, by task name.
fn records(state: &Path) -> BTreeMap<String, AgentRecord> {
    let mut out = BTreeMap::new();
    let Ok(jobs) = fs::read_dir(state.join("jobs")) else {
        return out;
    };
    for job in jobs.flatten() {
        let Ok(Some(record)) =
            twine_agent::state::read_record::<AgentRecord>(&job.path().join("record.json"))
        else {
            continue;
        };
        out.insert(record.spec.name.clone(), record);
    }
    out
}

fn record(state: &Path, task: &str) -> AgentRecord {
    twine_agent::state::read_record(&state.join("jobs").join(job_key(task)).join("record.json"))
        .expect("record")
        .unwrap_or_else(|| panic!("no record of {task}"))
}

/// Kills every container recorded under the state directories when dropped, so a
/// failing test leaves nothing running. After a passing test nothing is left to kill.
struct Reaper(Vec<PathBuf>);

impl Drop for Reaper {
    fn drop(&mut self) {
        for state in &self.0 {
            for record in records(state).into_values() {
                let Some(container) = record.container else {
                    continue;
                };
                match twine_agent::container::Container::reattach(container.clone()) {
                    Ok(c) => {
                        let _ = c.kill();
                    }
                    Err(_) => {
                        let _ = twine_agent::container::Container::clean_up_record(&container);
                    }
                }
            }
        }
    }
}

/// Whether a process is there (a zombie counts as gone).
fn alive(pid: i32) -> bool {
    fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|s| {
        s.rsplit_once(')')
            .is_some_and(|(_, rest)| !rest.trim_start().starts_with('Z'))
    })
}

/// Every cgroup at or under `dir`.
fn cgroups(dir: &Path) -> Vec<PathBuf> {
    let mut out = vec![dir.to_path_buf()];
    let mut i = 0;
    while i < out.len() {
        if let Ok(entries) = fs::read_dir(&out[i]) {
            for e in entries.flatten() {
                if e.file_type().is_ok_and(|t| t.is_dir()) {
                    out.push(e.path());
                }
            }
        }
        i += 1;
    }
    out
}

/// Checks a running task from outside: PID 1 alive, a `sleep` inside its cgroup, and
/// the spec's CPU quota and memory limit on the unit that runs it.
fn assert_running(state: &Path, task: &str) -> i32 {
    let rec = record(state, task);
    let container = rec
        .container
        .unwrap_or_else(|| panic!("{task}: no container in its record"));
    assert!(
        alive(container.pid),
        "{task}: PID 1 {} is gone",
        container.pid
    );
    let groups = cgroups(&container.cgroup);
    let read = |g: &Path, f: &str| fs::read_to_string(g.join(f)).unwrap_or_default();
    let unit_dir = groups
        .iter()
        .find(|g| {
            read(g, "cgroup.procs").lines().any(|p| {
                fs::read_to_string(format!("/proc/{p}/comm")).is_ok_and(|c| c.trim() == "sleep")
            })
        })
        .unwrap_or_else(|| panic!("{task}: no sleep process in {}", container.cgroup.display()));
    // The unit's limits, from the container's systemd.
    let unit = unit_dir
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let out = std::process::Command::new("nsenter")
        .args(["-t", &container.pid.to_string(), "-a"])
        .args([
            "systemctl",
            "show",
            &unit,
            "-p",
            "CPUQuotaPerSecUSec",
            "-p",
            "MemoryMax",
        ])
        .output()
        .expect("running nsenter");
    let shown = String::from_utf8_lossy(&out.stdout);
    assert!(
        shown.contains("CPUQuotaPerSecUSec=250ms") && shown.contains("MemoryMax=67108864"),
        "{task}: unit {unit} has {shown:?}"
    );
    // And in the kernel, where the cgroup2 tree has the controllers (not on a hybrid
    // layout, where cpu and memory are cgroup1 hierarchies).
    if let Ok(cpu) = fs::read_to_string(unit_dir.join("cpu.max")) {
        assert_eq!(cpu.trim(), "25000 100000", "{task}: cpu.max");
    }
    if let Ok(mem) = fs::read_to_string(unit_dir.join("memory.max")) {
        assert_eq!(mem.trim(), "67108864", "{task}: memory.max");
    }
    container.pid
}

/// A real agent in a runtime and on a thread of its own (its "process").
struct AgentProc {
    stop: watch::Sender<bool>,
    thread: thread::JoinHandle<Result<(), RealAgentError>>,
}

fn start_agent(endpoints: &str, host: &str, state: &Path) -> AgentProc {
    let (stop, rx) = watch::channel(false);
    let (endpoints, host, state) = (endpoints.to_owned(), host.to_owned(), state.to_path_buf());
    let thread = thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .expect("agent runtime");
        // Like a process of its own: its own connection to etcd.
        let store = rt
            .block_on(EtcdStore::connect(&[endpoints], Duration::from_secs(5)))
            .expect("agent connects to etcd");
        let result = rt.block_on(real::run(store, &host, &rootfs(), &state, rx));
        // The process exits: its supervisors go, the containers stay.
        rt.shutdown_timeout(Duration::from_secs(10));
        result
    });
    AgentProc { stop, thread }
}

impl AgentProc {
    fn exit(self) {
        self.stop.send_replace(true);
        self.thread
            .join()
            .expect("agent thread")
            .expect("agent ends without error");
    }
}

async fn wait_for<F: Fn() -> Fut, Fut: std::future::Future<Output = bool>>(
    what: &str,
    timeout: Duration,
    f: F,
) {
    let start = Instant::now();
    while !f().await {
        assert!(start.elapsed() < timeout, "{what}: not within {timeout:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn statuses(store: &EtcdStore) -> BTreeMap<String, StatusRecord> {
    store
        .get(keys::STATUS, true, None)
        .await
        .expect("read statuses")
        .kvs
        .into_iter()
        .map(|kv| {
            let r = model::decode(&kv.key, &kv.value).expect("status record");
            (kv.key, r)
        })
        .collect()
}

/// Cgroups left under the agent's cgroup parent whose name starts like one of `tasks`.
fn cgroups_left(tasks: &[String]) -> Vec<String> {
    let mounts = fs::read_to_string("/proc/self/mountinfo").expect("mountinfo");
    let root = mounts
        .lines()
        .find(|l| l.contains(" - cgroup2 "))
        .and_then(|l| l.split_whitespace().nth(4))
        .map(PathBuf::from)
        .expect("a cgroup2 mount");
    let names: Vec<String> = fs::read_dir(root.join("twine"))
        .map(|d| {
            d.flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default();
    names
        .into_iter()
        .filter(|n| {
            tasks.iter().any(|t| {
                let key: String = job_key(t)
                    .chars()
                    .map(|c| {
                        if c.is_ascii_alphanumeric() || c == '-' {
                            c
                        } else {
                            '_'
                        }
                    })
                    .take(32)
                    .collect();
                n.starts_with(&format!("{key}-"))
            })
        })
        .collect()
}

#[test]
fn real_agents_run_stop_and_survive_their_own_restart() {
    if !available() || require_etcd().is_none() {
        return;
    }
    let _ = tracing_subscriber::fmt()
        .with_max_level(tracing::Level::INFO)
        .with_test_writer()
        .try_init();
    let t0 = Instant::now();
    let phase = |what: &str| eprintln!("{:>6.1?} {what}", t0.elapsed());
    let dir = scratch("real-agents");
    let hosts = [admin::host_name(0), admin::host_name(1)];
    let state_of = |h: &str| dir.path().join(format!("state-{h}"));
    let _reaper = Reaper(hosts.iter().map(|h| state_of(h)).collect());
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    // Real etcd, as in the other control-plane tests (the harness kills it at the end).
    let mut cluster = rt.block_on(EtcdCluster::start(1)).expect("etcd starts");
    let endpoint = cluster.endpoint(0);
    let store = rt.block_on(cluster.store()).expect("connect to etcd");
    let tag = std::process::id();
    let jobs = [(format!("ra{tag}"), 2u32), (format!("rb{tag}"), 1u32)];

    // Lay out, submit, schedule.
    let assignments: BTreeMap<String, Assignment> = rt.block_on(async {
        admin::fleet_init(
            &store,
            &FleetConfig {
                hosts: 2,
                shape: Capacity {
                    cpu_milli: 4000,
                    memory_mib: 4096,
                },
                gpus: 0,
                racks_per_pd: 1,
            },
        )
        .await
        .expect("fleet init");
        admin::entitlement_add(&store, "realtest", 2)
            .await
            .expect("entitlement");
        let mut paths = Vec::new();
        for (job, replicas) in &jobs {
            let path = dir.path().join(format!("{job}.toml"));
            fs::write(
                &path,
                format!(
                    "name = \"{job}\"\nentitlement = \"realtest\"\nreplicas = {replicas}\n\
                     [task]\ncommand = [\"/bin/sleep\", \"infinity\"]\n\
                     [task.resources]\ncpu_quota = 0.25\nmemory_max = \"64M\"\n\
                     [task.kill]\nsignal = \"SIGTERM\"\ngrace_period = \"5s\"\n"
                ),
            )
            .expect("spec file");
            paths.push(path);
        }
        admin::submit(&store, &paths).await.expect("submit");
        let handle = SchedulerHandle::new();
        let sched = tokio::spawn(sched::run(
            store.clone(),
            SchedulerConfig {
                name: "s1".into(),
                lease_ttl: 5,
            },
            handle.clone(),
        ));
        wait_for("3 assignments", Duration::from_secs(20), || async {
            store
                .get(keys::ASSIGN, true, None)
                .await
                .is_ok_and(|r| r.kvs.len() == 3)
        })
        .await;
        // The scheduler goes, so that nothing but this test changes assignments.
        handle.stop();
        tokio::time::timeout(Duration::from_secs(10), sched)
            .await
            .expect("scheduler stops")
            .expect("scheduler task")
            .expect("scheduler ends cleanly");
        store
            .get(keys::ASSIGN, true, None)
            .await
            .expect("assignments")
            .kvs
            .into_iter()
            .map(|kv| {
                let a = model::decode(&kv.key, &kv.value).expect("assignment");
                (kv.key, a)
            })
            .collect()
    });
    assert_eq!(assignments.len(), 3, "{assignments:?}");
    // Which host runs which task.
    let placed: Vec<(String, String, String)> = assignments
        .iter()
        .map(|(k, a)| {
            let host = keys::split(keys::ASSIGN, k).expect("assignment key")[0].to_owned();
            (host, k.clone(), real::task_name(&a.job, a.index))
        })
        .collect();
    let busy: Vec<String> = hosts
        .iter()
        .filter(|h| placed.iter().any(|p| &p.0 == *h))
        .cloned()
        .collect();
    let all_tasks: Vec<String> = placed.iter().map(|p| p.2.clone()).collect();

    phase("scheduled");
    // The agents run what was assigned.
    let agents: Vec<AgentProc> = busy
        .iter()
        .map(|h| start_agent(&endpoint, h, &state_of(h)))
        .collect();
    let want_running = |store: EtcdStore, n: usize| async move {
        let s = statuses(&store).await;
        s.len() == n && s.values().all(|r| r.state == TaskState::Running)
    };
    rt.block_on(wait_for("3 tasks running", Duration::from_secs(60), || {
        want_running(store.clone(), 3)
    }));
    let reports = rt.block_on(statuses(&store));
    for r in reports.values() {
        assert_eq!(r.agent, "twine-agent");
    }
    let mut pids = BTreeMap::new();
    for (host, _, task) in &placed {
        pids.insert(task.clone(), assert_running(&state_of(host), task));
    }

    phase("running");
    // The whole control plane down (its store killed): the tasks keep running, and the
    // agents carry on once the store is back.
    cluster.kill(0).expect("kill etcd");
    std::thread::sleep(Duration::from_secs(3));
    for (host, _, task) in &placed {
        assert_eq!(
            assert_running(&state_of(host), task),
            pids[task],
            "{task}: restarted while etcd was down"
        );
    }
    rt.block_on(cluster.restart(0)).expect("restart etcd");
    phase("etcd back");
    // An assignment deleted in the store: that task stops, its report goes.
    let (gone_host, gone_key, gone_task) = placed
        .iter()
        .find(|p| p.2.ends_with("-1"))
        .cloned()
        .expect("the second replica of the first job");
    let gone_status = gone_key.replacen(keys::ASSIGN, keys::STATUS, 1);
    rt.block_on(async {
        store
            .txn(Txn::new().and_then([Op::delete(gone_key.clone())]))
            .await
            .expect("delete the assignment");
        wait_for(
            "the status key deleted",
            Duration::from_secs(30),
            || async { !statuses(&store).await.contains_key(&gone_status) },
        )
        .await;
    });
    assert!(
        !alive(pids[&gone_task]),
        "{gone_task}: its container still runs"
    );
    assert!(
        record(&state_of(&gone_host), &gone_task)
            .container
            .is_none(),
        "{gone_task}: its record still has a container"
    );
    assert_eq!(
        cgroups_left(std::slice::from_ref(&gone_task)),
        Vec::<String>::new()
    );

    phase("one stopped");
    // The agents exit and come back: what runs is not restarted.
    let before: BTreeMap<String, AgentRecord> =
        busy.iter().flat_map(|h| records(&state_of(h))).collect();
    for a in agents {
        a.exit();
    }
    for (task, pid) in &pids {
        if *task != gone_task {
            assert!(alive(*pid), "{task}: the agent's exit took its container");
        }
    }
    phase("agents exited");
    let agents: Vec<AgentProc> = busy
        .iter()
        .map(|h| start_agent(&endpoint, h, &state_of(h)))
        .collect();
    rt.block_on(async {
        // Let the agents converge, then check that nothing moved.
        tokio::time::sleep(Duration::from_secs(2)).await;
        wait_for("2 tasks running", Duration::from_secs(30), || {
            want_running(store.clone(), 2)
        })
        .await;
    });
    for (host, _, task) in placed.iter().filter(|p| p.2 != gone_task) {
        let pid = assert_running(&state_of(host), task);
        assert_eq!(pid, pids[task], "{task}: restarted (a new PID 1)");
        let now = record(&state_of(host), task);
        assert_eq!(
            now.generation, before[task].generation,
            "{task}: a new container"
        );
        assert_eq!(now.lifecycle.restarts(), 0, "{task}: restarted");
    }
    assert!(
        record(&state_of(&gone_host), &gone_task)
            .container
            .is_none(),
        "{gone_task}: started again"
    );

    phase("reattached");
    // The new agents drive the reattached tasks: deleting another assignment stops
    // its task.
    let (next_host, next_key, next_task) = placed
        .iter()
        .find(|p| p.2 != gone_task)
        .cloned()
        .expect("another task");
    let next_status = next_key.replacen(keys::ASSIGN, keys::STATUS, 1);
    rt.block_on(async {
        store
            .txn(Txn::new().and_then([Op::delete(next_key.clone())]))
            .await
            .expect("delete the assignment");
        wait_for(
            "the status key deleted",
            Duration::from_secs(30),
            || async { !statuses(&store).await.contains_key(&next_status) },
        )
        .await;
    });
    assert!(
        !alive(pids[&next_task]),
        "{next_task}: its container still runs"
    );
    assert!(
        record(&state_of(&next_host), &next_task)
            .container
            .is_none(),
        "{next_task}: its record still has a container"
    );

    phase("another stopped");
    // Cleanup: the agents exit, stop_all stops everything.
    for a in agents {
        a.exit();
    }
    rt.block_on(async {
        for h in &busy {
            real::stop_all(&store, h, &rootfs(), &state_of(h))
                .await
                .expect("stop_all");
        }
    });
    phase("all stopped");
    assert_eq!(
        rt.block_on(statuses(&store)),
        BTreeMap::new(),
        "reports left"
    );
    for (task, pid) in &pids {
        assert!(!alive(*pid), "{task}: container {pid} left");
    }
    for h in &busy {
        for (task, rec) in records(&state_of(h)) {
            assert!(rec.container.is_none(), "{task}: a container in its record");
            let containers = state_of(h)
                .join("jobs")
                .join(job_key(&task))
                .join("containers");
            let scratch: Vec<_> = fs::read_dir(&containers)
                .map(|d| d.flatten().map(|e| e.path()).collect())
                .unwrap_or_default();
            assert_eq!(
                scratch,
                Vec::<PathBuf>::new(),
                "{task}: scratch directories left"
            );
        }
    }
    let base = dir.path().to_string_lossy().into_owned();
    let mounts: Vec<String> = fs::read_to_string("/proc/self/mountinfo")
        .expect("mountinfo")
        .lines()
        .filter(|l| l.contains(&base))
        .map(str::to_owned)
        .collect();
    assert_eq!(mounts, Vec::<String>::new(), "mounts left");
    assert_eq!(
        cgroups_left(&all_tasks),
        Vec::<String>::new(),
        "cgroups left"
    );
}
