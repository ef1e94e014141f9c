//! `twine demo`: the report's files exist and parse, its figures agree with the test's own
//! arithmetic over the placements it lists, and a bad `--out` fails before any work.
//! The region is shrunk with the hidden `--small-hosts` so a debug build stays quick; the
//! default is the 20,000.

#![allow(clippy::unwrap_used)] // tests: a failed unwrap is a failed test with its message.

mod support;

use std::collections::BTreeMap;
use std::fs;

use serde_json::Value;
use support::{stdout, twine};

fn demo(out: &std::path::Path) -> (String, Value) {
    let o = out.display().to_string();
    let run = twine(&["demo", "--out", &o, "--small-hosts", "2000"]);
    assert!(
        run.status.success(),
        "{}",
        String::from_utf8_lossy(&run.stderr)
    );
    let summary = fs::read_to_string(out.join("summary.json")).unwrap();
    (stdout(&run), serde_json::from_str(&summary).unwrap())
}

#[test]
fn report_files_exist_and_figures_add_up() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("report");
    let (text, s) = demo(&out);
    for line in [
        "region:",
        "job web",
        "profiles:",
        "drain of",
        "rollout:",
        "memory:",
        "report:",
    ] {
        assert!(text.contains(line), "stdout lacks {line:?}: {text}");
    }
    for svg in [
        "entitlements.svg",
        "utilisation.svg",
        "rollout.svg",
        "memory.svg",
    ] {
        let body = fs::read_to_string(out.join(svg)).unwrap();
        assert!(body.trim_start().starts_with("<svg"), "{svg}");
        assert!(body.trim_end().ends_with("</svg>"), "{svg}");
    }
    let md = fs::read_to_string(out.join("report.md")).unwrap();
    for step in [
        "The region",
        "Admit and place",
        "Host profiles",
        "Units",
        "rack drained through TaskControl",
        "rollout across the region",
        "Memory",
    ] {
        assert!(md.contains(step), "report.md lacks {step:?}");
    }

    // Capacities by machine type, and what each job's task asks.
    let mut cap = BTreeMap::new();
    for t in s["region"]["machine_types"].as_array().unwrap() {
        let c = (
            t["cpu_milli"].as_u64().unwrap(),
            t["memory_mib"].as_u64().unwrap(),
            t["gpus"].as_u64().unwrap(),
        );
        cap.insert(t["name"].as_str().unwrap().to_owned(), c);
    }
    let mut demand = BTreeMap::new();
    for j in s["jobs"].as_array().unwrap() {
        let d = &j["demand"];
        demand.insert(
            j["name"].as_str().unwrap().to_owned(),
            (
                d["cpu_milli"].as_u64().unwrap(),
                d["memory_mib"].as_u64().unwrap(),
                d["gpus"].as_u64().unwrap(),
            ),
        );
        assert!(j["placed"].as_u64().unwrap() <= j["tasks"].as_u64().unwrap());
        let verify = j["verify"].as_str().unwrap();
        assert!(verify == "ok" || verify.starts_with("skipped"), "{verify}");
    }
    // Every host holds no more than its capacity, by the test's own sums; the tasks
    // counted on hosts are the tasks the jobs say were placed.
    let mut placed: BTreeMap<String, u64> = BTreeMap::new();
    for p in s["placements"].as_array().unwrap() {
        let (c, m, g) = cap[p["machine_type"].as_str().unwrap()];
        let (mut uc, mut um, mut ug) = (0, 0, 0);
        for (job, n) in p["tasks"].as_object().unwrap() {
            let n = n.as_u64().unwrap();
            let (dc, dm, dg) = demand[job];
            uc += dc * n;
            um += dm * n;
            ug += dg * n;
            *placed.entry(job.clone()).or_default() += n;
            if job == "web" {
                assert_eq!(p["profile"], "web", "a web task off the web profile: {p}");
                assert_eq!(n, 1, "two web tasks on one host: {p}");
            }
        }
        assert!(uc <= c && um <= m && ug <= g, "over capacity: {p}");
    }
    for j in s["jobs"].as_array().unwrap() {
        let name = j["name"].as_str().unwrap();
        assert_eq!(
            placed.get(name).copied().unwrap_or(0),
            j["placed"].as_u64().unwrap(),
            "{name}"
        );
    }
    // Hosts per entitlement add up to their machine types.
    for e in s["entitlements"].as_array().unwrap() {
        let by_type: u64 = e["hosts_by_type"]
            .as_object()
            .unwrap()
            .values()
            .map(|v| v.as_u64().unwrap())
            .sum();
        assert_eq!(by_type, e["hosts"].as_u64().unwrap());
    }
    // Every switch was carried out on a host root and verified.
    let switches = s["profile_switches"].as_array().unwrap();
    assert!(!switches.is_empty());
    for sw in switches {
        assert_eq!(sw["to"], "web");
        assert_eq!(sw["verified"], true);
        let root = out.join("host-roots").join(format!("host-{}", sw["host"]));
        assert_eq!(
            fs::read_to_string(root.join("proc/sys/net/core/somaxconn"))
                .unwrap()
                .trim(),
            "65535"
        );
    }
    // The drain: the cache's controller never let two replicas of a shard move at once.
    let d = &s["drain"];
    assert!(
        d["max_replicas_of_a_shard_moving"].as_u64().unwrap() <= 1,
        "{d}"
    );
    assert!(d["cache_tasks"].as_u64().unwrap() > 0);
    assert_eq!(d["tasks_left"], 0);
    // The rollout updated every host.
    let r = &s["rollout"];
    assert_eq!(r["updated"], r["hosts"]);
    let waves: u64 = r["waves"]
        .as_array()
        .unwrap()
        .iter()
        .map(|w| w.as_u64().unwrap())
        .sum();
    assert_eq!(waves, r["hosts"].as_u64().unwrap());
    assert!(s["memory"]["cold_given_back_mib"].as_f64().unwrap() > 0.0);
}

fn error(args: &[&str]) -> String {
    let out = twine(args);
    assert_eq!(out.status.code(), Some(1), "{args:?} should fail");
    String::from_utf8_lossy(&out.stderr).into_owned()
}

#[test]
fn bad_out_fails_before_any_work() {
    let dir = tempfile::tempdir().unwrap();
    fs::write(dir.path().join("x"), "taken").unwrap();
    let d = dir.path().display().to_string();
    let e = error(&["demo", "--out", &d]);
    assert!(
        e.starts_with(&format!("{d}: exists and is not empty")),
        "{e}"
    );
    assert!(!e.contains("building the region"), "{e}");

    let file = dir.path().join("x").display().to_string();
    let e = error(&["demo", "--out", &file]);
    assert!(
        e.starts_with(&format!("{file}: exists and is not a directory")),
        "{e}"
    );

    let under_file = dir.path().join("x/report").display().to_string();
    let e = error(&["demo", "--out", &under_file]);
    assert!(e.starts_with(&format!("{under_file}: ")), "{e}");
}

#[test]
fn without_out_a_previous_report_is_replaced_and_anything_else_refused() {
    let cwd = tempfile::tempdir().unwrap();
    let run = |cwd: &std::path::Path| {
        std::process::Command::new(env!("CARGO_BIN_EXE_twine"))
            .args(["demo", "--small-hosts", "1000"])
            .current_dir(cwd)
            .output()
            .unwrap()
    };
    // Twice in a row: the README's first command must keep working.
    for _ in 0..2 {
        let out = run(cwd.path());
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(cwd.path().join("twine-demo/report.md").is_file());
    }
    // A ./twine-demo the demo did not write is not touched.
    let other = tempfile::tempdir().unwrap();
    fs::create_dir(other.path().join("twine-demo")).unwrap();
    fs::write(other.path().join("twine-demo/notes.txt"), "mine").unwrap();
    let out = run(other.path());
    assert_eq!(out.status.code(), Some(1));
    assert!(
        String::from_utf8_lossy(&out.stderr).starts_with("twine-demo: exists and is not empty")
    );
    assert_eq!(
        fs::read_to_string(other.path().join("twine-demo/notes.txt")).unwrap(),
        "mine"
    );
}
