//! The `twine` CLI contract: `path: message` errors with exit 1, all-or-nothing `--out`,
//! one JSON object for `--transient`, and `check` failing on anything systemd says.

use std::path::Path;
use std::process::{Command, Output};

fn twine(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_twine"))
        .args(args)
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .expect("twine runs")
}

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
    assert!(
        String::from_utf8(out.stdout)
            .unwrap()
            .contains("systemd-analyze verify: ok")
    );
}
