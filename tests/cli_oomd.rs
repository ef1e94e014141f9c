//! `twine oomd`: simulate's figures and plot, run on a fixture tree (records, restore on
//! --duration, SIGTERM and after a SIGKILL), bad input as `path: message` with exit 1,
//! and status on the host's real cgroup2 root.
#![allow(clippy::unwrap_used)] // tests: a failed unwrap is a failed test with its message.

use std::fs;
use std::io::{BufRead as _, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

mod support;
use support::{stdout, twine};

use serde_json::Value;
use twine_oomd::fixture::fake_cgroup;

const GIB: u64 = 1 << 30;

#[test]
fn simulate_json_reports_the_cold_memory_given_back_and_its_stall() {
    let out = twine(&["oomd", "simulate", "--json"]);
    let text = stdout(&out);
    assert_eq!(text.lines().count(), 1, "one JSON object");
    let v: Value = serde_json::from_str(&text).unwrap();
    let summary = &v["summary"];
    for field in [
        "cold_given_back",
        "cold_given_back_share",
        "hot_missing",
        "total_stall_us",
        "mean_stall_per_interval_us",
        "converged_at_s",
    ] {
        assert!(summary.get(field).is_some(), "{field} missing: {summary}");
    }
    // Senpai's defaults give back 75.8 % of the cold set in 10 minutes (docs/BENCHMARKS.md).
    let share = summary["cold_given_back_share"].as_f64().unwrap();
    assert!((share - 0.758).abs() < 0.0005, "{share}");
    assert_eq!(v["workload"]["duration_s"], 600);
    assert_eq!(v["config"]["mode"], "high");

    let out = twine(&["oomd", "simulate", "--minutes", "30", "--json"]);
    let v: Value = serde_json::from_str(&stdout(&out)).unwrap();
    assert_eq!(v["summary"]["cold_given_back_share"], 1.0);
    assert!(v["summary"]["converged_at_s"].as_u64().unwrap() > 600);
}

#[test]
fn simulate_plot_writes_an_svg_of_high_current_and_stall() {
    let dir = tempfile::tempdir().unwrap();
    let svg = dir.path().join("sim.svg");
    let out = twine(&["oomd", "simulate", "--plot", svg.to_str().unwrap()]);
    let text = stdout(&out);
    assert!(text.contains("cold given back: "), "{text}");
    let plot = fs::read_to_string(&svg).unwrap();
    assert!(plot.starts_with("<svg") && plot.trim_end().ends_with("</svg>"));
    assert_eq!(plot.matches("<svg").count(), plot.matches("</svg>").count());
    assert!(plot.matches("<polyline").count() >= 3, "three series");
    for label in ["memory.high", "memory.current", "some stall"] {
        assert!(plot.contains(label), "{label} missing from the plot");
    }
    let out = twine(&["oomd", "simulate", "--plot", "/nonexistent/dir/sim.svg"]);
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8(out.stderr).unwrap();
    assert!(stderr.starts_with("/nonexistent/dir/sim.svg: "), "{stderr}");
}

/// A fixture cgroup root with `work/a` (1 GiB of page cache, memory.high `high`).
fn fixture(high: &str) -> (tempfile::TempDir, PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("cg");
    let a = fake_cgroup(&root, "work/a").unwrap();
    fs::write(a.join("memory.current"), format!("{GIB}\n")).unwrap();
    let stat = fs::read_to_string(a.join("memory.stat")).unwrap();
    fs::write(
        a.join("memory.stat"),
        stat.replace("inactive_file 0", &format!("inactive_file {GIB}")),
    )
    .unwrap();
    fs::write(a.join("memory.high"), high).unwrap();
    (dir, root)
}

fn run_args<'a>(dir: &'a Path, root: &'a Path) -> Vec<String> {
    [
        "oomd",
        "run",
        "--root",
        root.to_str().unwrap(),
        "--state",
        dir.join("state.json").to_str().unwrap(),
        "--mode",
        "high",
        "--interval",
        "0.05",
        "--json",
    ]
    .map(str::to_owned)
    .to_vec()
}

fn high(root: &Path) -> String {
    fs::read_to_string(root.join("work/a/memory.high"))
        .unwrap()
        .trim()
        .to_owned()
}

#[test]
fn run_prints_records_and_restores_memory_high_after_duration() {
    let (dir, root) = fixture("max\n");
    let mut args = run_args(dir.path(), &root);
    // An absolute path inside the root is taken as relative to it.
    let abs = root.join("work/a").display().to_string();
    args.extend(["--cgroup", &abs, "--duration", "0.6"].map(str::to_owned));
    let out = Command::new(env!("CARGO_BIN_EXE_twine"))
        .args(&args)
        .output()
        .unwrap();
    let text = stdout(&out);
    let records: Vec<Value> = text
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert!(records.len() >= 4, "{text}");
    let first = &records[0];
    assert_eq!(first["cgroup"], "work/a");
    assert_eq!(first["current"], GIB);
    assert_eq!(first["high"], "max");
    assert_eq!(first["action"]["SetHigh"], GIB);
    assert_eq!(first["cause"], "Init");
    for field in ["time_s", "some_total_us", "some_avg10", "mode", "error"] {
        assert!(first.get(field).is_some(), "{field} missing: {first}");
    }
    assert!(
        records.iter().any(|r| r["cause"] == "Probe"),
        "probed down: {text}"
    );
    let last = records.last().unwrap();
    assert_eq!(last["action"], serde_json::json!({ "RestoreHigh": null }));
    assert_eq!(high(&root), "max");
    assert!(!dir.path().join("state.json").exists());
}

/// Starts `twine oomd run` on the fixture and waits until it has lowered memory.high.
fn start(dir: &Path, root: &Path) -> Child {
    let mut args = run_args(dir, root);
    args.extend(["--cgroup", "work/a"].map(str::to_owned));
    let mut child = Command::new(env!("CARGO_BIN_EXE_twine"))
        .args(&args)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    loop {
        let line = lines.next().expect("a record before the end").unwrap();
        let record: Value = serde_json::from_str(&line).unwrap();
        if record["cause"] == "Probe" {
            break;
        }
    }
    // Keep draining so the daemon never blocks on a full pipe.
    std::thread::spawn(move || lines.for_each(drop));
    child
}

fn signal(child: &Child, name: &str) {
    let status = Command::new("kill")
        .args([name, &child.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
}

#[test]
fn sigterm_stops_cleanly_and_restores_memory_high() {
    let (dir, root) = fixture("2147483648\n");
    let mut child = start(dir.path(), &root);
    assert!(high(&root).parse::<u64>().unwrap() < GIB);
    signal(&child, "-TERM");
    let status = child.wait().unwrap();
    assert!(status.success(), "{status}");
    assert_eq!(high(&root), "2147483648");
}

#[test]
fn after_a_sigkill_the_next_run_restores_the_first_original() {
    let (dir, root) = fixture("2147483648\n");
    let mut child = start(dir.path(), &root);
    signal(&child, "-KILL");
    child.wait().unwrap();
    let lowered = high(&root);
    assert!(lowered.parse::<u64>().unwrap() < GIB, "{lowered}");
    assert!(dir.path().join("state.json").exists());
    let mut args = run_args(dir.path(), &root);
    args.extend(["--cgroup", "work/a", "--duration", "0.3"].map(str::to_owned));
    let out = Command::new(env!("CARGO_BIN_EXE_twine"))
        .args(&args)
        .output()
        .unwrap();
    stdout(&out);
    assert_eq!(high(&root), "2147483648");
    assert!(!dir.path().join("state.json").exists());
}

#[test]
fn bad_configs_and_paths_are_path_message_errors() {
    let (dir, root) = fixture("max\n");
    let root_arg = root.to_str().unwrap();
    let cases = [
        (
            "unknown.toml",
            "[[resize]]\ncgroups = [\"work/*\"]\nbogus = 1\n",
            "bogus",
        ),
        (
            "bounds.toml",
            "[[resize]]\ncgroups = [\"work/*\"]\nlimit_min_bytes = 2\nlimit_max_bytes = 1\n",
            "resize[0].limit_min_bytes",
        ),
        ("interval.toml", "interval_s = 0\n", "interval_s"),
    ];
    for (name, text, expected) in cases {
        let path = dir.path().join(name);
        fs::write(&path, text).unwrap();
        let path = path.to_str().unwrap();
        let out = twine(&["oomd", "run", "--root", root_arg, "--config", path]);
        assert_eq!(out.status.code(), Some(1), "{name}");
        let stderr = String::from_utf8(out.stderr).unwrap();
        assert!(stderr.starts_with(&format!("{path}: ")), "{stderr}");
        assert!(stderr.contains(expected), "{stderr}");
    }
    let out = twine(&["oomd", "run", "--root", root_arg, "--cgroup", "/etc"]);
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8(out.stderr).unwrap();
    assert!(
        stderr.starts_with("/etc: outside the cgroup2 root"),
        "{stderr}"
    );
    let out = twine(&[
        "oomd",
        "run",
        "--root",
        root_arg,
        "--config",
        "/nonexistent.toml",
    ]);
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8(out.stderr).unwrap();
    assert!(stderr.starts_with("/nonexistent.toml: "), "{stderr}");
    let out = twine(&[
        "oomd", "run", "--root", root_arg, "--cgroup", "work/a", "--mode", "lots",
    ]);
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8(out.stderr).unwrap();
    assert!(
        stderr.starts_with("--mode: unknown value \"lots\""),
        "{stderr}"
    );
}

#[test]
fn status_of_a_fixture_cgroup_shows_limits_pressure_and_working_set() {
    let (_dir, root) = fixture("2147483648\n");
    let a = root.join("work/a");
    let stat = fs::read_to_string(a.join("memory.stat")).unwrap();
    let stat = stat.replace(&format!("inactive_file {GIB}"), "inactive_file 1048576");
    fs::write(a.join("memory.stat"), stat).unwrap();
    let root_arg = root.to_str().unwrap();
    let out = twine(&["oomd", "status", "work/a", "--root", root_arg, "--json"]);
    let v: Value = serde_json::from_str(&stdout(&out)).unwrap();
    assert_eq!(v["current"], GIB);
    assert_eq!(v["high"], 2 * GIB);
    assert_eq!(v["max"], "max");
    assert_eq!(v["working_set"], GIB - (1 << 20));
    assert_eq!(v["pressure"]["some"]["total_us"], 0);
    let out = twine(&["oomd", "status", "work/a", "--root", root_arg]);
    let text = stdout(&out);
    assert!(text.contains("working set  1072693248"), "{text}");
    let out = twine(&["oomd", "status", "work/none", "--root", root_arg]);
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8(out.stderr).unwrap();
    assert!(stderr.ends_with("work/none: no such cgroup\n"), "{stderr}");
}

/// Host tier: the real cgroup2 root. On this CI host (hybrid hierarchy) it has PSI but no
/// memory controller files; elsewhere the limits may be present. Either way: exit 0,
/// limits reported present or absent, pressure present.
#[test]
fn status_on_the_real_cgroup2_root() {
    let mountinfo = fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    let Some(root) = twine_oomd::CgroupRoot::find_in(&mountinfo) else {
        assert!(
            std::env::var("TWINE_REQUIRE_REALSYS").as_deref() != Ok("1"),
            "TWINE_REQUIRE_REALSYS=1 but no cgroup2 mount"
        );
        eprintln!("skipped: no cgroup2 mount in /proc/self/mountinfo");
        return;
    };
    if !root.path().join("memory.pressure").exists() {
        assert!(
            std::env::var("TWINE_REQUIRE_REALSYS").as_deref() != Ok("1"),
            "TWINE_REQUIRE_REALSYS=1 but the cgroup2 root has no memory.pressure (PSI off)"
        );
        eprintln!("skipped: the cgroup2 root has no memory.pressure (PSI off)");
        return;
    }
    let abs = root.path().display().to_string();
    let out = twine(&["oomd", "status", &abs, "--json"]);
    let v: Value = serde_json::from_str(&stdout(&out)).unwrap();
    assert!(v["pressure"]["some"]["total_us"].is_u64(), "{v}");
    let has_current = root.path().join("memory.current").exists();
    assert_eq!(v["current"].is_u64(), has_current, "{v}");
    if !has_current {
        assert!(v["current"].is_null() && v["working_set"].is_null(), "{v}");
        let text = stdout(&twine(&["oomd", "status", &abs]));
        assert!(text.contains("current      absent"), "{text}");
    }
}

#[test]
fn a_dry_run_kill_decision_is_printed_as_a_json_line_and_kills_nothing() {
    let (dir, root) = fixture("max\n");
    let work = fake_cgroup(&root, "work").unwrap();
    fs::write(work.join("memory.current"), format!("{}\n", 2 * GIB)).unwrap();
    let config = dir.path().join("kill.toml");
    fs::write(
        &config,
        "dry_run = true\npause_s = 60\n[[kill]]\nname = \"too-big\"\ncgroup = \"work\"\n\
         detectors = [{ type = \"memory_above\", bytes = 1048576 }]\n",
    )
    .unwrap();
    let state = dir.path().join("state.json");
    let args = [
        "oomd",
        "run",
        "--root",
        root.to_str().unwrap(),
        "--config",
        config.to_str().unwrap(),
        "--state",
        state.to_str().unwrap(),
        "--duration",
        "2",
        "--json",
    ];
    let text = stdout(&twine(&args));
    let kills: Vec<Value> = text
        .lines()
        .map(|l| serde_json::from_str::<Value>(l).unwrap())
        .filter(|v| v["action"] == "kill")
        .collect();
    assert_eq!(kills.len(), 1, "pause_s = 60: one decision: {text}");
    let kill = &kills[0];
    assert_eq!(kill["cgroup"], "work/a", "{kill}");
    assert_eq!(kill["rule"], "too-big", "{kill}");
    assert_eq!(kill["dry_run"], true, "{kill}");
    assert!(kill["via"].is_null() && kill["hook"].is_null(), "{kill}");
    assert!(kill["time_s"].as_f64().unwrap() < 2.0, "{kill}");
    for cgroup in [&work, &root.join("work/a")] {
        assert_eq!(fs::read_to_string(cgroup.join("cgroup.kill")).unwrap(), "");
    }

    // Without --json: one readable line.
    let text = stdout(&twine(&args[..args.len() - 1]));
    let line = text
        .lines()
        .find(|l| l.contains(" kill "))
        .unwrap_or_default();
    assert!(
        line.contains("work/a kill (rule too-big) (dry run: not killed)"),
        "{text}"
    );
}
