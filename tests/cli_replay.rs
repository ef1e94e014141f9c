//! `twine replay`: the flags, the JSON fields and the events file of the contract, the
//! errors, and an independent checker of the events: a replay of the events file
//! against the nodes and pods files, written here from the CSV rows alone and sharing no
//! code with twine-sched, that checks no host is ever overcommitted (CPU, memory, each
//! GPU device), every pod is placed at most once at a time, and recomputes the average
//! hosts in use and the moves the JSON reports.
//!
//! The tests on the openb trace skip with a reason where it is absent and fail instead
//! under `TWINE_REQUIRE_REALSYS=1`.

#![allow(clippy::unwrap_used)] // tests: a failed unwrap is a failed test with its message.

mod support;

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use support::{stdout, twine};

/// Three small nodes: two with two T4 GPUs, one CPU-only.
const NODES: &str = "\
sn,cpu_milli,memory_mib,gpu,model
gpu-a,8000,16384,2,T4
gpu-b,8000,16384,2,T4
cpu-c,16000,32768,0,
";

/// Pods that come and go: whole GPUs, shares, CPU-only, one too big for any node.
const PODS: &str = "\
name,cpu_milli,memory_mib,num_gpu,gpu_milli,gpu_spec,qos,pod_phase,creation_time,deletion_time,scheduled_time
whole,4000,4096,1,1000,T4,LS,Running,0,500,0
share-1,1000,2048,1,600,,LS,Running,10,400,10
share-2,1000,2048,1,600,,LS,Running,20,90,20
share-3,1000,2048,1,300,,LS,Running,30,1000,30
cpu-1,12000,8192,0,0,,BE,Running,40,300,40
cpu-2,6000,8192,0,0,,BE,Running,50,700,50
\"comma,pod\",2000,1024,0,0,,BE,Running,60,65,60
two,2000,2048,2,1000,,LS,Running,70,900,70
huge,64000,1024,0,0,,BE,Running,80,100,80
late,1000,1024,0,0,,BE,Running,1200,1300,1200
";

/// The JSON fields the contract names.
const FIELDS: [&str; 9] = [
    "hosts_in_use_avg",
    "hosts_in_use_avg_without_rebalance",
    "lower_bound_avg",
    "moves",
    "rounds",
    "max_moves_in_a_round",
    "pending_task_seconds",
    "unplaced",
    "wall_s",
];

fn write(dir: &Path, name: &str, text: &str) -> String {
    let path = dir.join(name);
    std::fs::write(&path, text).expect("write a fixture");
    path.display().to_string()
}

fn json(out: &std::process::Output) -> serde_json::Value {
    serde_json::from_str(stdout(out).trim()).expect("one JSON object")
}

/// Where the openb trace is, or `None` with a one-line reason (a failure under
/// `TWINE_REQUIRE_REALSYS=1`).
fn openb() -> Option<(String, String)> {
    let dir = std::env::var_os("TWINE_TRACE_DIR").map_or_else(
        || PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../shared/data/traces"),
        PathBuf::from,
    );
    let nodes = dir.join("openb_node_list_all_node.csv");
    let pods = dir.join("openb_pod_list_default.csv");
    if nodes.is_file() && pods.is_file() {
        return Some((nodes.display().to_string(), pods.display().to_string()));
    }
    assert!(
        std::env::var("TWINE_REQUIRE_REALSYS").as_deref() != Ok("1"),
        "TWINE_REQUIRE_REALSYS=1 but the openb trace is not in {}",
        dir.display()
    );
    eprintln!(
        "skipped: no openb trace in {} (set TWINE_TRACE_DIR)",
        dir.display()
    );
    None
}

// ---------------------------------------------------------------------------------------
// The independent checker.

/// A pod's demand as its CSV row states it.
#[derive(Clone, Copy, Debug)]
struct PodRow {
    cpu: u64,
    mem: u64,
    /// Whole devices (`num_gpu` with `gpu_milli` 1000).
    whole: u64,
    /// A share of one device (thousandths), 0 for none.
    share: u64,
}

#[derive(Debug)]
struct HostState {
    cpu: u64,
    mem: u64,
    cpu_used: u64,
    mem_used: u64,
    /// Thousandths used per device.
    devices: Vec<u64>,
    pods: usize,
}

fn rows(path: &str) -> (Vec<String>, Vec<Vec<String>>) {
    let mut r = csv::Reader::from_path(path).expect("a CSV file");
    let header = r
        .headers()
        .expect("a header")
        .iter()
        .map(str::to_owned)
        .collect();
    let rows = r
        .records()
        .map(|rec| rec.expect("a row").iter().map(str::to_owned).collect())
        .collect();
    (header, rows)
}

fn column(header: &[String], name: &str) -> usize {
    header
        .iter()
        .position(|h| h == name)
        .unwrap_or_else(|| panic!("no column {name}"))
}

fn num(s: &str) -> u64 {
    if s.is_empty() {
        0
    } else {
        s.parse().unwrap_or_else(|_| panic!("not a number: {s:?}"))
    }
}

/// The fleet: the nodes file, or `count` hosts of `shape` named `host-NNNNN`.
fn fleet(nodes: &str, shape: Option<(&str, usize)>) -> HashMap<String, HostState> {
    let host = |cpu, mem, gpus: u64| HostState {
        cpu,
        mem,
        cpu_used: 0,
        mem_used: 0,
        devices: vec![0; usize::try_from(gpus).unwrap()],
        pods: 0,
    };
    if let Some((shape, count)) = shape {
        let f: Vec<u64> = shape.split(',').map(num).collect();
        return (0..count)
            .map(|i| (format!("host-{i:05}"), host(f[0], f[1], f[2])))
            .collect();
    }
    let (h, rows) = rows(nodes);
    let (sn, cpu, mem, gpu) = (
        column(&h, "sn"),
        column(&h, "cpu_milli"),
        column(&h, "memory_mib"),
        column(&h, "gpu"),
    );
    rows.iter()
        .map(|r| {
            (
                r[sn].clone(),
                host(num(&r[cpu]), num(&r[mem]), num(&r[gpu])),
            )
        })
        .collect()
}

fn pod_rows(pods: &str) -> HashMap<String, PodRow> {
    let (h, rows) = rows(pods);
    let (name, cpu, mem, n, milli) = (
        column(&h, "name"),
        column(&h, "cpu_milli"),
        column(&h, "memory_mib"),
        column(&h, "num_gpu"),
        column(&h, "gpu_milli"),
    );
    rows.iter()
        .map(|r| {
            let (n, m) = (num(&r[n]), num(&r[milli]));
            let (whole, share) = match (n, m) {
                (0, _) => (0, 0),
                (n, 1000) => (n, 0),
                (_, m) => (0, m),
            };
            (
                r[name].clone(),
                PodRow {
                    cpu: num(&r[cpu]),
                    mem: num(&r[mem]),
                    whole,
                    share,
                },
            )
        })
        .collect()
}

/// What the checker recomputed from the events alone.
#[derive(Debug, PartialEq)]
struct Checked {
    hosts_in_use_avg: f64,
    /// The per-dimension lower bound on hosts for the pods placed at each instant
    /// (CPU, memory, GPU thousandths), averaged over time.
    lower_bound_avg: f64,
    moves: u64,
    placed: u64,
    never_placed: u64,
}

fn ms(time: &str) -> u64 {
    let (s, frac) = time.split_once('.').expect("seconds with decimals");
    assert_eq!(frac.len(), 3, "milliseconds: {time}");
    num(s) * 1000 + num(frac)
}

/// Takes a placed pod off host `name`; 1 if the host is now empty.
fn take_off(
    hosts: &mut HashMap<String, HostState>,
    name: &str,
    demand: PodRow,
    devices: &[usize],
) -> u64 {
    let h = hosts.get_mut(name).expect("a placed pod's host exists");
    h.cpu_used -= demand.cpu;
    h.mem_used -= demand.mem;
    for &d in devices {
        h.devices[d] -= if demand.whole > 0 { 1000 } else { demand.share };
    }
    h.pods -= 1;
    u64::from(h.pods == 0)
}

/// Puts a pod on host `name` with `devices`, checked; 1 if the host was empty.
fn put_on(
    hosts: &mut HashMap<String, HostState>,
    name: &str,
    demand: PodRow,
    devices: &[usize],
) -> Result<u64, String> {
    let h = hosts.get_mut(name).ok_or(format!("no host {name}"))?;
    h.cpu_used += demand.cpu;
    h.mem_used += demand.mem;
    if h.cpu_used > h.cpu || h.mem_used > h.mem {
        return Err(format!("host {name} overcommitted in CPU or memory"));
    }
    let want = if demand.whole > 0 {
        demand.whole
    } else {
        u64::from(demand.share > 0)
    };
    let mut distinct = devices.to_vec();
    distinct.sort_unstable();
    distinct.dedup();
    if distinct.len() != devices.len() || devices.len() as u64 != want {
        return Err(format!("{} devices for {want}", devices.len()));
    }
    for &d in devices {
        let used = h
            .devices
            .get_mut(d)
            .ok_or(format!("host {name} has no device {d}"))?;
        if demand.whole > 0 && *used != 0 {
            return Err(format!("device {d} of {name} is not free"));
        }
        *used += if demand.whole > 0 { 1000 } else { demand.share };
        if *used > 1000 {
            return Err(format!("device {d} of {name} over 1000"));
        }
    }
    h.pods += 1;
    Ok(u64::from(h.pods == 1))
}

/// Per dimension (CPU, memory, GPU thousandths), the capacities largest first, summed:
/// the fewest hosts that hold an amount is the first prefix sum that reaches it.
struct Bound {
    prefix: [Vec<u128>; 3],
}

impl Bound {
    fn new(hosts: &HashMap<String, HostState>) -> Bound {
        let dim = |f: &dyn Fn(&HostState) -> u64| {
            let mut caps: Vec<u64> = hosts.values().map(f).collect();
            caps.sort_unstable_by(|a, b| b.cmp(a));
            caps.iter()
                .scan(0u128, |sum, &c| {
                    *sum += u128::from(c);
                    Some(*sum)
                })
                .collect()
        };
        Bound {
            prefix: [
                dim(&|h| h.cpu),
                dim(&|h| h.mem),
                dim(&|h| 1000 * h.devices.len() as u64),
            ],
        }
    }

    fn hosts(&self, sums: &[u128; 3]) -> u64 {
        (0..3)
            .map(|k| {
                if sums[k] == 0 {
                    0
                } else {
                    self.prefix[k].partition_point(|&p| p < sums[k]) as u64 + 1
                }
            })
            .max()
            .unwrap_or(0)
    }
}

fn amounts(d: PodRow) -> [u128; 3] {
    [
        u128::from(d.cpu),
        u128::from(d.mem),
        u128::from(d.whole * 1000 + d.share),
    ]
}

/// Replays `events` against the fleet and the pods; the first violation is the error.
fn check_events(
    mut hosts: HashMap<String, HostState>,
    pods: &HashMap<String, PodRow>,
    events: &str,
    duration_s: u64,
) -> Result<Checked, String> {
    let (h, rows) = rows(events);
    assert_eq!(h, ["time", "event", "pod", "host", "gpu_devices"]);
    // Pod (with its #K) -> (host, devices) while placed.
    let mut placed: HashMap<String, (String, Vec<usize>)> = HashMap::new();
    let mut ever_placed: HashMap<String, bool> = HashMap::new();
    let bound = Bound::new(&hosts);
    let mut sums = [0u128; 3];
    let mut bound_integral = 0u128;
    let (mut in_use, mut last_ms, mut integral) = (0u64, 0u64, 0u128);
    let (mut moves, mut places) = (0, 0);
    for (i, r) in rows.iter().enumerate() {
        let at = format!("row {}: {r:?}", i + 2);
        let t = ms(&r[0]);
        if t < last_ms {
            return Err(format!("{at}: time goes back"));
        }
        if t > duration_s * 1000 {
            return Err(format!("{at}: after the duration"));
        }
        integral += u128::from(in_use) * u128::from(t - last_ms);
        bound_integral += u128::from(bound.hosts(&sums)) * u128::from(t - last_ms);
        last_ms = t;
        let (kind, pod, host) = (r[1].as_str(), r[2].clone(), r[3].clone());
        let base = pod.split_once('#').map_or(pod.as_str(), |(b, _)| b);
        let demand = *pods
            .get(base)
            .ok_or_else(|| format!("{at}: no pod {base}"))?;
        let devices: Vec<usize> = if r[4].is_empty() {
            Vec::new()
        } else {
            r[4].split('|').map(|d| d.parse().unwrap()).collect()
        };
        match kind {
            "place" => {
                if placed.contains_key(&pod) {
                    return Err(format!("{at}: placed twice"));
                }
                in_use += put_on(&mut hosts, &host, demand, &devices)
                    .map_err(|e| format!("{at}: {e}"))?;
                placed.insert(pod.clone(), (host, devices));
                ever_placed.insert(pod, true);
                places += 1;
                for (sum, a) in sums.iter_mut().zip(amounts(demand)) {
                    *sum += a;
                }
            }
            "move" => {
                let (from, held) = placed
                    .remove(&pod)
                    .ok_or(format!("{at}: moves a pod that is not placed"))?;
                in_use -= take_off(&mut hosts, &from, demand, &held);
                in_use += put_on(&mut hosts, &host, demand, &devices)
                    .map_err(|e| format!("{at}: {e}"))?;
                placed.insert(pod, (host, devices));
                moves += 1;
            }
            "free" => {
                let (on, held) = placed
                    .remove(&pod)
                    .ok_or(format!("{at}: frees a pod that is not placed"))?;
                if on != host || held != devices {
                    return Err(format!("{at}: the pod is on {on} {held:?}"));
                }
                in_use -= take_off(&mut hosts, &on, demand, &held);
                for (sum, a) in sums.iter_mut().zip(amounts(demand)) {
                    *sum -= a;
                }
            }
            "unplaced" => {
                if !host.is_empty() || !devices.is_empty() || placed.contains_key(&pod) {
                    return Err(format!("{at}: unplaced with a host, or while placed"));
                }
                ever_placed.entry(pod).or_insert(false);
            }
            other => return Err(format!("{at}: unknown event {other}")),
        }
    }
    let end = duration_s * 1000;
    integral += u128::from(in_use) * u128::from(end - last_ms);
    bound_integral += u128::from(bound.hosts(&sums)) * u128::from(end - last_ms);
    Ok(Checked {
        hosts_in_use_avg: integral as f64 / end.max(1) as f64,
        lower_bound_avg: bound_integral as f64 / end.max(1) as f64,
        moves,
        placed: places,
        never_placed: ever_placed.values().filter(|p| !**p).count() as u64,
    })
}

fn close(a: f64, b: f64) -> bool {
    (a - b).abs() <= 1e-6 * a.abs().max(b.abs()).max(1e-9)
}

/// Runs `twine replay` with `extra` flags, an events file and `--json`; checks the
/// events independently and against the JSON; returns the JSON.
fn replay_checked(
    nodes: &str,
    pods: &str,
    shape: Option<(&str, usize)>,
    extra: &[&str],
) -> serde_json::Value {
    let dir = tempfile::tempdir().unwrap();
    let events = dir.path().join("events.csv").display().to_string();
    let mut args = vec![
        "replay", "--nodes", nodes, "--pods", pods, "--json", "--events", &events,
    ];
    let count = shape.map(|(_, n)| n.to_string());
    if let (Some((s, _)), Some(n)) = (shape, &count) {
        args.extend(["--hosts-shape", s, "--hosts", n]);
    }
    args.extend(extra);
    let j = json(&twine(&args));
    let text = std::fs::read_to_string(&events).unwrap();
    let c = check_events(
        fleet(nodes, shape),
        &pod_rows(pods),
        &events,
        j["duration_s"].as_u64().unwrap(),
    )
    .unwrap_or_else(|e| panic!("{args:?}: {e}"));
    assert!(!text.is_empty());
    assert!(
        close(c.hosts_in_use_avg, j["hosts_in_use_avg"].as_f64().unwrap()),
        "{c:?} {j}"
    );
    assert!(
        close(c.lower_bound_avg, j["lower_bound_avg"].as_f64().unwrap()),
        "{c:?} {j}"
    );
    assert_eq!(c.moves, j["moves"].as_u64().unwrap(), "{j}");
    assert_eq!(c.placed, j["placed"].as_u64().unwrap(), "{j}");
    assert_eq!(c.never_placed, j["unplaced"].as_u64().unwrap(), "{j}");
    j
}

// ---------------------------------------------------------------------------------------
// The contract.

#[test]
fn replay_json_has_every_field_and_the_events_pass_the_checker() {
    let dir = tempfile::tempdir().unwrap();
    let nodes = write(dir.path(), "nodes.csv", NODES);
    let pods = write(dir.path(), "pods.csv", PODS);
    let j = replay_checked(&nodes, &pods, None, &["--rebalance-every", "30"]);
    for field in FIELDS {
        assert!(j[field].is_number(), "{field}: {j}");
    }
    assert_eq!(j["hosts"], 3);
    assert_eq!(j["arrivals"], 10);
    assert_eq!(j["unplaced"], 1, "huge fits no node: {j}");
    assert_eq!(j["unplaceable"], 1);
    assert_eq!(j["duration_s"], 1300, "up to the last deletion");
    assert_eq!(j["policy"], "best-fit");
    assert_eq!(j["rebalance_every_s"], 30);
    assert!(j["rate_per_s"].is_null() && j["seed"].is_null());
    assert!(j["wall_s"].as_f64().unwrap() >= 0.0);
    let lb = j["lower_bound_avg"].as_f64().unwrap();
    assert!(
        lb > 0.0 && lb <= j["hosts_in_use_avg"].as_f64().unwrap() + 1e-9,
        "{j}"
    );
}

#[test]
fn replay_writes_the_events_header_and_a_plot() {
    let dir = tempfile::tempdir().unwrap();
    let nodes = write(dir.path(), "nodes.csv", NODES);
    let pods = write(dir.path(), "pods.csv", PODS);
    let events = dir.path().join("e.csv");
    let svg = dir.path().join("p.svg");
    let out = twine(&[
        "replay",
        "--nodes",
        &nodes,
        "--pods",
        &pods,
        "--events",
        events.to_str().unwrap(),
        "--plot",
        svg.to_str().unwrap(),
    ]);
    let text = stdout(&out);
    assert!(text.contains("hosts in use"), "{text}");
    let events = std::fs::read_to_string(&events).unwrap();
    assert_eq!(
        events.lines().next(),
        Some("time,event,pod,host,gpu_devices")
    );
    assert!(
        events.contains("60.000,place,\"comma,pod\","),
        "names with commas are quoted: {events}"
    );
    assert!(events.contains("80.000,unplaced,huge,,\n"), "{events}");
    let svg = std::fs::read_to_string(&svg).unwrap();
    assert!(
        svg.starts_with("<svg") && svg.contains("lower bound"),
        "{svg:.200}"
    );
}

#[test]
fn replay_poisson_names_arrivals_and_is_deterministic_for_a_seed() {
    let dir = tempfile::tempdir().unwrap();
    let nodes = write(dir.path(), "nodes.csv", NODES);
    let pods = write(dir.path(), "pods.csv", PODS);
    let run = |seed: &str, name: &str| {
        let events = dir.path().join(name);
        let j = json(&twine(&[
            "replay",
            "--nodes",
            &nodes,
            "--pods",
            &pods,
            "--hosts-shape",
            "16000,32768,4",
            "--hosts",
            "5",
            "--arrivals",
            "poisson",
            "--load",
            "0.7",
            "--seed",
            seed,
            "--duration",
            "3600",
            "--json",
            "--events",
            events.to_str().unwrap(),
        ]));
        (j, std::fs::read_to_string(events).unwrap())
    };
    let (a, ea) = run("7", "a.csv");
    let (b, eb) = run("7", "b.csv");
    let (_, ec) = run("8", "c.csv");
    assert_eq!(ea, eb);
    assert_ne!(ea, ec, "another seed, other arrivals");
    let strip = |mut j: serde_json::Value| {
        j["wall_s"] = serde_json::Value::Null;
        j
    };
    assert_eq!(strip(a.clone()), strip(b));
    assert_eq!(a["hosts"], 5);
    assert_eq!(a["seed"], 7);
    assert_eq!(a["arrivals_from"], "poisson");
    assert!(a["rate_per_s"].as_f64().unwrap() > 0.0);
    // Arrival K is NAME#K, counting from 0 with the pods present at the start.
    let first = ea.lines().nth(1).unwrap();
    let pod = first.split(',').nth(2).unwrap();
    let (name, k) = pod.rsplit_once('#').unwrap();
    assert!(PODS.contains(name), "{first}");
    assert_eq!(k, "0", "{first}");
    replay_checked(
        &nodes,
        &pods,
        Some(("16000,32768,4", 5)),
        &["--arrivals", "poisson", "--seed", "7", "--duration", "3600"],
    );
}

#[test]
fn replay_errors_name_the_flag_or_file_and_the_value() {
    let dir = tempfile::tempdir().unwrap();
    let nodes = write(dir.path(), "nodes.csv", NODES);
    let pods = write(dir.path(), "pods.csv", PODS);
    let timeless = write(
        dir.path(),
        "timeless.csv",
        "name,cpu_milli,memory_mib,num_gpu,gpu_milli,creation_time\nok,1,1,0,0,5\nlost,1,1,0,0,\n",
    );
    let base = ["replay", "--nodes", &nodes, "--pods", &pods];
    for (extra, want) in [
        (
            &["--arrivals", "poisson", "--load", "0"][..],
            "--load: must be a finite number above 0 (got 0)",
        ),
        (
            &["--arrivals", "poisson", "--load", "-1"],
            "--load: must be a finite number above 0 (got -1)",
        ),
        (
            &["--arrivals", "poisson", "--load", "lots"],
            "--load: expected a number (got \"lots\")",
        ),
        (
            &["--load", "0.5"],
            "--load: only with --arrivals poisson (got \"0.5\")",
        ),
        (
            &["--seed", "3"],
            "--seed: only with --arrivals poisson (got \"3\")",
        ),
        (
            &["--duration", "0"],
            "--duration: must be at least 1 second (got 0)",
        ),
        (
            &["--duration", "1h"],
            "--duration: expected a whole number of seconds (got \"1h\")",
        ),
        (
            &["--rebalance-every", "0"],
            "--rebalance-every: must be at least 1 second (got 0)",
        ),
        (
            &["--move-budget", "-3"],
            "--move-budget: expected a whole number (got \"-3\")",
        ),
        (
            &["--hosts", "4"],
            "--hosts: only with --hosts-shape (got \"4\"",
        ),
        (
            &["--hosts-shape", "8000,1024,1", "--hosts", "0"],
            "--hosts: a fleet needs at least one host (got 0)",
        ),
        (
            &["--hosts-shape", "8000,1024"],
            "--hosts-shape: expected three or four comma-separated fields",
        ),
        (
            &["--policy", "worst-fit"],
            "--policy: unknown value \"worst-fit\"",
        ),
        (
            &["--arrivals", "replayed"],
            "--arrivals: unknown value \"replayed\"",
        ),
    ] {
        let mut args = base.to_vec();
        args.extend(extra);
        let out = twine(&args);
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{extra:?}: {err}");
        assert!(err.contains(want), "{extra:?}: {err}");
    }
    let out = twine(&["replay", "--nodes", &nodes, "--pods", &timeless]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(
        err.contains(&format!("{timeless}: pod \"lost\" (line 3): creation_time")),
        "{err}"
    );
    let missing = dir.path().join("nope.csv").display().to_string();
    let out = twine(&["replay", "--nodes", &missing, "--pods", &pods]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.starts_with(&format!("{missing}: ")), "{err}");
}

#[test]
fn replay_help_states_the_fleet_and_the_events_format() {
    let text = stdout(&twine(&["replay", "--help"]));
    for want in [
        "--hosts-shape",
        "--hosts <N>",
        "as many identical hosts",
        "host-00000",
        "--arrivals <ARRIVALS>",
        "--rebalance-every",
        "--move-budget",
        "time,event,pod,host,gpu_devices",
        "best-fit",
    ] {
        assert!(text.contains(want), "{want}: {text}");
    }
}

/// The checker is not vacuous: events that overcommit a device, place a pod twice or
/// free it from the wrong host are caught.
#[test]
fn the_checker_catches_overcommits_and_double_placements() {
    let dir = tempfile::tempdir().unwrap();
    let nodes = write(dir.path(), "nodes.csv", NODES);
    let pods = write(dir.path(), "pods.csv", PODS);
    let header = "time,event,pod,host,gpu_devices\n";
    let ok = "0.000,place,share-1,gpu-a,0\n0.000,place,share-3,gpu-a,0\n";
    let check = |body: &str| {
        let events = write(dir.path(), "e.csv", &format!("{header}{body}"));
        check_events(fleet(&nodes, None), &pod_rows(&pods), &events, 100)
    };
    let fine = check(ok).unwrap();
    assert_eq!((fine.placed, fine.hosts_in_use_avg), (2, 1.0));
    for bad in [
        "0.000,place,share-1,gpu-a,0\n0.000,place,share-2,gpu-a,0\n",
        "0.000,place,whole,gpu-a,0\n0.000,place,share-3,gpu-a,0\n",
        "0.000,place,two,gpu-a,0|0\n",
        "0.000,place,two,gpu-a,0\n",
        "0.000,place,cpu-1,gpu-a,\n",
        "0.000,place,share-1,gpu-a,0\n1.000,place,share-1,gpu-b,0\n",
        "0.000,place,share-1,gpu-a,0\n1.000,free,share-1,gpu-b,0\n",
        "1.000,free,share-1,gpu-a,0\n",
        "1.000,move,share-1,gpu-a,0\n",
        "0.000,place,share-1,gpu-a,0\n1.000,unplaced,share-1,,\n",
        "5.000,place,share-1,gpu-a,0\n1.000,place,share-3,gpu-a,0\n",
    ] {
        assert!(check(bad).is_err(), "{bad}");
    }
}

// ---------------------------------------------------------------------------------------
// The openb trace.

const SHAPE: &str = "96000,393216,8";

#[test]
fn replay_poisson_on_identical_hosts_passes_the_checker() {
    let Some((nodes, pods)) = openb() else {
        return;
    };
    let j = replay_checked(
        &nodes,
        &pods,
        Some((SHAPE, 1_523)),
        &[
            "--arrivals",
            "poisson",
            "--load",
            "0.8",
            "--duration",
            "1200",
            "--seed",
            "1",
        ],
    );
    assert_eq!(j["hosts"], 1_523);
    assert!(j["initial_pods"].as_u64().unwrap() > 5_000, "{j}");
    assert!(j["rounds"].as_u64().unwrap() >= 1, "{j}");
}

/// The figure of docs/BENCHMARKS.md: a day of Poisson churn at load 0.8 on identical
/// 96-core, 384 GiB, 8-GPU hosts, default seed. Hosts in use and the lower bound are
/// recomputed from the events by the checker; the target is within 5% of it.
#[test]
fn replay_a_day_on_identical_hosts_stays_within_5_percent_of_the_bound() {
    let Some((nodes, pods)) = openb() else {
        return;
    };
    let j = replay_checked(
        &nodes,
        &pods,
        Some((SHAPE, 1_523)),
        &["--arrivals", "poisson", "--load", "0.8"],
    );
    let ratio = j["ratio"].as_f64().unwrap();
    let without = j["ratio_without_rebalance"].as_f64().unwrap();
    assert_eq!(j["duration_s"], 86_400, "{j}");
    assert!(ratio <= 1.05, "hosts in use {ratio} times the bound: {j}");
    assert!(ratio < without, "rebalancing saves hosts: {j}");
    // The figures docs/BENCHMARKS.md states (deterministic for the seed).
    assert_eq!(format!("{ratio:.3} {without:.3}"), "1.021 1.042", "{j}");
    assert_eq!(j["moves"], 13_475, "{j}");
}

/// A day of Poisson churn on the trace's own nodes (GPU-bound): the figures of
/// docs/BENCHMARKS.md, with the events checked.
#[test]
fn replay_poisson_on_the_trace_nodes_passes_the_checker() {
    let Some((nodes, pods)) = openb() else {
        return;
    };
    let j = replay_checked(&nodes, &pods, None, &["--arrivals", "poisson"]);
    assert_eq!(j["hosts"], 1_523);
    assert_eq!(j["bottleneck"], "gpu", "{j}");
    let (ratio, without) = (
        j["ratio"].as_f64().unwrap(),
        j["ratio_without_rebalance"].as_f64().unwrap(),
    );
    assert_eq!(format!("{ratio:.3} {without:.3}"), "1.351 1.593", "{j}");
    assert_eq!(j["moves"], 3_891, "{j}");
}

#[test]
fn replay_trace_arrivals_pass_the_checker() {
    let Some((nodes, pods)) = openb() else {
        return;
    };
    let j = replay_checked(&nodes, &pods, None, &["--arrivals", "trace"]);
    assert_eq!(j["arrivals"], 8_152);
    assert_eq!(j["departures"], 8_152);
    assert_eq!(
        j["placed"].as_u64().unwrap() + j["unplaced"].as_u64().unwrap(),
        8_152,
        "{j}"
    );
    // The figures of docs/BENCHMARKS.md.
    let (ratio, without) = (
        j["ratio"].as_f64().unwrap(),
        j["ratio_without_rebalance"].as_f64().unwrap(),
    );
    assert_eq!(format!("{ratio:.3} {without:.3}"), "3.570 5.447", "{j}");
    assert_eq!(j["moves"], 2_275, "{j}");
}
