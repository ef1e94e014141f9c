//! The `twine` CLI contract: `path: message` errors with exit 1, all-or-nothing `--out`,
//! one JSON object for `--transient`, and `check` failing on anything systemd says.

use std::path::Path;
use std::process::{Command, Output};

mod support;
use support::twine;

fn have_systemd_analyze() -> bool {
    let have = Command::new("systemd-analyze")
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success());
    if !have {
        assert!(
            std::env::var("TWINE_REQUIRE_REALSYS").as_deref() != Ok("1"),
            "TWINE_REQUIRE_REALSYS=1 but systemd-analyze is missing"
        );
        eprintln!("skipped: systemd-analyze is not installed (apt: systemd)");
    }
    have
}

fn write(dir: &Path, name: &str, text: &str) -> String {
    let path = dir.join(name);
    std::fs::write(&path, text).expect("writing a test spec");
    path.display().to_string()
}

#[test]
fn render_prints_every_unit() {
    let out = twine(&["render", "examples/specs/web.toml"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let stdout = String::from_utf8(out.stdout).unwrap();
    assert_eq!(
        stdout.matches("\n### ").count() + usize::from(stdout.starts_with("### ")),
        9
    );
    assert!(stdout.contains("### web.target"));
}

#[test]
fn render_out_writes_all_or_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let out_dir = dir.path().join("units");
    std::fs::create_dir(&out_dir).unwrap();
    let good = "examples/specs/web.toml";
    let bad = write(
        dir.path(),
        "bad.toml",
        "name = 'b'\nentitlement = 'e'\n[task]\ncommand = ['./run']\n",
    );

    let out = twine(&["render", good, &bad, "--out", out_dir.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8(out.stderr).unwrap();
    assert!(
        stderr.starts_with(&format!("{bad}: task.command[0]: ")),
        "{stderr}"
    );
    assert_eq!(
        std::fs::read_dir(&out_dir).unwrap().count(),
        0,
        "nothing may be written"
    );

    let out = twine(&["render", good, "--out", out_dir.to_str().unwrap()]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let mut names: Vec<String> = std::fs::read_dir(&out_dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    names.sort();
    assert_eq!(names.len(), 9, "{names:?}");
    assert!(names.iter().all(|n| !n.contains("twine-tmp")), "{names:?}");
}

#[test]
fn every_problem_of_every_spec_is_listed() {
    let dir = tempfile::tempdir().unwrap();
    let a = write(
        dir.path(),
        "a.yaml",
        "name: a\nentitlement: e\ntask:\n  command: [x]\n  kill: {signal: SIGNOPE}\n",
    );
    let b = write(
        dir.path(),
        "b.json",
        r#"{"name": "b", "entitlement": "e", "task": {"command": ["/bin/true"], "bogus": 1}}"#,
    );
    let out = twine(&["render", &a, &b]);
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8(out.stderr).unwrap();
    let lines: Vec<&str> = stderr.lines().collect();
    assert_eq!(lines.len(), 3, "{stderr}");
    assert!(
        lines[0].starts_with(&format!("{a}: task.command[0]: ")),
        "{stderr}"
    );
    assert!(
        lines[1].starts_with(&format!("{a}: task.kill.signal: ")),
        "{stderr}"
    );
    assert!(
        lines[2].starts_with(&format!("{b}: task.bogus: unknown field")),
        "{stderr}"
    );
}

#[test]
fn transient_is_one_json_object() {
    let out = twine(&["render", "--transient", "examples/specs/web.toml"]);
    assert!(out.status.success());
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let jobs = json["jobs"].as_array().unwrap();
    assert_eq!(jobs.len(), 1);
    assert_eq!(jobs[0]["main"], "web.service");
    let units = jobs[0]["units"].as_array().unwrap();
    assert_eq!(units.len(), 8, "every unit but the target");
    assert_eq!(units[0]["name"], "web.service", "the main unit first");
    let main = units.iter().find(|u| u["name"] == "web.service").unwrap();
    let exec = main["properties"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["name"] == "ExecStart")
        .unwrap();
    assert_eq!(exec["signature"], "a(sasb)");
}

#[test]
fn check_accepts_the_example_and_rejects_what_systemd_rejects() {
    if !have_systemd_analyze() {
        return;
    }
    let out = twine(&["check", "examples/specs/web.toml"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    // Valid as a spec, but the executable does not exist here: systemd says so, and check fails.
    let dir = tempfile::tempdir().unwrap();
    let missing = write(
        dir.path(),
        "m.toml",
        "name = 'm'\nentitlement = 'e'\n[task]\ncommand = ['/nonexistent/twine-test-binary']\n",
    );
    let out = twine(&["check", &missing]);
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8(out.stderr).unwrap();
    assert!(stderr.contains("is not executable"), "{stderr}");
}

#[test]
fn demo_runs_without_files() {
    if !have_systemd_analyze() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_twine"))
        .arg("demo")
        .current_dir(dir.path())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // Every built-in job's units pass `systemd-analyze verify` (the demo's own report is
    // checked in detail by tests/cli_demo.rs).
    let stdout = String::from_utf8(out.stdout).unwrap();
    for job in ["web", "batch", "train", "cache"] {
        assert!(
            stdout
                .lines()
                .any(|l| l.starts_with(&format!("job {job} ")) && l.ends_with("units ok")),
            "{job}: {stdout}"
        );
    }
    assert!(dir.path().join("twine-demo/report.md").is_file());
}

const NODES: &str = "sn,cpu_milli,memory_mib,gpu,model\nn0,32000,131072,2,T4\nn1,96000,393216,8,G2\nn2,16000,65536,0,\n";
const PODS: &str = "name,cpu_milli,memory_mib,num_gpu,gpu_milli,gpu_spec,qos,pod_phase,creation_time,deletion_time,scheduled_time\n\
p0,8000,16384,1,500,,LS,Running,0,10,0\n\
p1,8000,16384,1,500,,LS,Running,0,10,0\n\
p2,4000,8192,2,1000,T4,BE,Running,0,10,0\n\
p3,2000,4096,0,0,,BE,Running,0,10,0\n\
p4,500000,4096,0,0,,BE,Running,0,10,0\n";

/// Runs `twine place` on `NODES` and `pods`, written into `dir`, with `extra` arguments.
fn place_in(dir: &Path, pods: &str, extra: &[&str]) -> Output {
    let nodes = write(dir, "nodes.csv", NODES);
    let pods = write(dir, "pods.csv", pods);
    let mut args = vec!["place", "--nodes", &nodes, "--pods", &pods];
    args.extend_from_slice(extra);
    twine(&args)
}

/// Runs `twine place` on `NODES` and `PODS` with `extra` arguments.
fn place(extra: &[&str]) -> Output {
    let dir = tempfile::tempdir().expect("a temporary directory");
    place_in(dir.path(), PODS, extra)
}

#[test]
fn place_packs_and_writes_assignments() {
    let dir = tempfile::tempdir().unwrap();
    let assignments = dir.path().join("a.csv");
    let out = place_in(
        dir.path(),
        PODS,
        &["--json", "--assignments", assignments.to_str().unwrap()],
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    for key in [
        "hosts_used",
        "lower_bound",
        "ratio",
        "placed",
        "unplaced",
        "unplaced_reasons",
        "placements_per_sec",
        "policy",
    ] {
        assert!(json.get(key).is_some(), "missing {key} in {json}");
    }
    assert_eq!(json["policy"], "twine");
    assert_eq!(json["placed"], 4);
    assert_eq!(json["unplaced"], 1);
    assert_eq!(json["unplaced_reasons"]["insufficient cpu"], 1);
    let csv = std::fs::read_to_string(&assignments).unwrap();
    let rows: Vec<&str> = csv.lines().collect();
    assert_eq!(rows[0], "pod,host,gpu_devices");
    assert_eq!(rows.len(), 5);
    let p2 = rows.iter().find(|r| r.starts_with("p2,")).unwrap();
    assert!(
        p2.starts_with("p2,n0,") && p2.matches('|').count() == 1,
        "the T4 pod takes both devices of n0: {p2}"
    );
}

#[test]
fn place_on_identical_hosts_compares_every_policy() {
    let out = place(&[
        "--hosts-shape",
        "16000,65536,2",
        "--json",
        "--compare",
        "--policy",
        "best-fit",
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(json["policy"], "best-fit");
    assert_eq!(json["compare"].as_array().unwrap().len(), 9);
    assert_eq!(json["lower_bound"], 2);
}

/// Three 600-thousandth shares fit the GPU milli of one 2-device host (1,800 of 2,000),
/// but no device holds two of them: the LP bound sees the third device a packing needs.
#[test]
fn place_reports_the_lp_bound_beside_the_ratio() {
    let dir = tempfile::tempdir().unwrap();
    let pods = "name,cpu_milli,memory_mib,num_gpu,gpu_milli\ns0,1000,1024,1,600\ns1,1000,1024,1,600\ns2,1000,1024,1,600\n";
    let out = place_in(
        dir.path(),
        pods,
        &["--hosts-shape", "16000,65536,2", "--json"],
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(
        (
            &json["hosts_used"],
            &json["lower_bound"],
            &json["lp_lower_bound"]
        ),
        (&2.into(), &1.into(), &2.into()),
        "{json}"
    );
    assert_eq!(json["lp_ratio"], 1.0, "{json}");
    let text = place_in(dir.path(), pods, &["--hosts-shape", "16000,65536,2"]);
    assert!(
        stdout_of(&text).contains("LP bound      2 (1.000)"),
        "{}",
        stdout_of(&text)
    );
}

fn stdout_of(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[test]
fn place_reports_bad_input_by_file_line_and_field() {
    let dir = tempfile::tempdir().unwrap();
    let nodes = write(dir.path(), "nodes.csv", NODES);
    let pods = write(
        dir.path(),
        "pods.csv",
        "name,cpu_milli,memory_mib,num_gpu,gpu_milli\np0,1,1,0,0\np1,1,-5,0,0\n",
    );
    let out = twine(&["place", "--nodes", &nodes, "--pods", &pods]);
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8(out.stderr).unwrap();
    assert!(
        stderr.starts_with(&format!("{pods}:3: memory_mib: ")),
        "{stderr}"
    );

    for (flag, value) in [
        ("--hosts-shape", "96000,abc,8"),
        ("--hosts-shape", "1,2"),
        ("--policy", "worst-fit"),
    ] {
        let good_pods = write(dir.path(), "good.csv", PODS);
        let out = twine(&[
            "place", "--nodes", &nodes, "--pods", &good_pods, flag, value,
        ]);
        assert_eq!(out.status.code(), Some(1), "{flag} {value}");
        let stderr = String::from_utf8(out.stderr).unwrap();
        assert!(stderr.starts_with(&format!("{flag}: ")), "{stderr}");
    }
}

#[test]
fn place_verify_checks_its_own_output_and_says_so() {
    for pool in [false, true] {
        let mut args = vec!["--verify", "--json", "--compare"];
        if pool {
            args.push("--gpu-pool");
        }
        let out = place(&args);
        let stderr = String::from_utf8(out.stderr).unwrap();
        assert!(out.status.success(), "{stderr}");
        let said: Vec<&str> = stderr.lines().collect();
        assert_eq!(said.len(), 10, "one line per policy: {stderr}");
        assert!(
            said.iter().all(|l| l.starts_with("verify: ")
                && l.contains("checked independently")
                && l.ends_with(": ok")),
            "{stderr}"
        );
        let json: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        for run in std::iter::once(&json).chain(json["compare"].as_array().unwrap()) {
            assert_eq!(run["verified"]["placed"], run["placed"], "{run}");
            assert_eq!(run["verified"]["hosts_used"], run["hosts_used"], "{run}");
        }
    }
    let out = place(&["--json"]);
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert!(json["verified"].is_null(), "not asked to verify: {json}");
    assert!(out.stderr.is_empty());
}

/// Regression: a pod name with a comma shifted the columns of the assignments file.
#[test]
fn place_assignments_quote_names_with_commas() {
    let dir = tempfile::tempdir().unwrap();
    let assignments = dir.path().join("a.csv");
    let out = place_in(
        dir.path(),
        "name,cpu_milli,memory_mib,num_gpu,gpu_milli\n\"web,0\",1000,1024,1,1000\n",
        &["--assignments", assignments.to_str().unwrap(), "--verify"],
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let mut reader = csv::Reader::from_path(&assignments).unwrap();
    let rows: Vec<csv::StringRecord> = reader.records().map(Result::unwrap).collect();
    assert_eq!(rows.len(), 1);
    assert_eq!(rows[0].len(), 3, "{:?}", rows[0]);
    assert_eq!(&rows[0][0], "web,0");
    assert_eq!(&rows[0][2], "0");
    let stderr = String::from_utf8(out.stderr).unwrap();
    assert!(
        stderr.contains("1 assignments read back as written"),
        "{stderr}"
    );
}

#[test]
fn place_help_lists_every_policy() {
    let out = twine(&["place", "--help"]);
    let help = String::from_utf8(out.stdout).unwrap();
    for policy in [
        "twine",
        "first-fit",
        "best-fit",
        "dot-product",
        "l2",
        "stranded",
        "most-allocated",
        "nomad-binpack",
        "tetris",
        "spread",
    ] {
        assert!(help.contains(policy), "{policy} missing from {help}");
    }
    let out = place(&["--policy", "worst-fit"]);
    let stderr = String::from_utf8(out.stderr).unwrap();
    assert!(
        stderr.contains("twine, first-fit"),
        "the error names every value, twine included: {stderr}"
    );
}
