//! `twine profile`: plan --json on a fixture root, apply then plan is empty, resume,
//! verify, rollback restoring the fixture byte for byte, a confined key refused as
//! `path: message` with exit 1, and import-tuned on fixture TuneD directories.
#![allow(clippy::unwrap_used)] // tests: a failed unwrap is a failed test with its message.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Output;

mod support;
use support::{stdout, twine};

use serde_json::Value;
use twine_profiles::profile::{Format, Profile};
use twine_profiles::testing::FixtureRoot;

fn json(out: &Output) -> Value {
    let text = stdout(out);
    assert_eq!(text.lines().count(), 1, "one JSON object: {text}");
    serde_json::from_str(&text).unwrap()
}

/// A profile of sysctls, the 2 MiB pool and a command-line argument: what a plain directory
/// root can hold (its THP files are plain files, not the kernel's choice files).
const PROFILE: &str = r#"
[sysctl]
"vm.swappiness" = 10
"net.ipv4.tcp_rmem" = "4096 87380 6291456"

[hugepages]
count_2m = 64

[cmdline]
isolcpus = "2-3"
"#;

struct Case {
    fixture: FixtureRoot,
    dir: tempfile::TempDir,
}

impl Case {
    fn new(profile: &str) -> Self {
        let dir = tempfile::tempdir().unwrap();
        fs::write(dir.path().join("p.toml"), profile).unwrap();
        Self {
            fixture: FixtureRoot::typical().unwrap(),
            dir,
        }
    }
    fn profile(&self) -> String {
        self.dir.path().join("p.toml").display().to_string()
    }
    fn root(&self) -> String {
        self.fixture.path().display().to_string()
    }
    /// `twine profile CMD PROFILE --root ROOT --json EXTRA...`, which must succeed.
    fn with_profile(&self, cmd: &str, extra: &[&str]) -> Value {
        let (profile, root) = (self.profile(), self.root());
        let mut args = vec!["profile", cmd, &profile, "--root", &root, "--json"];
        args.extend(extra);
        json(&twine(&args))
    }
    /// `twine profile CMD --root ROOT --json`, which must succeed.
    fn on_root(&self, cmd: &str) -> Value {
        json(&twine(&["profile", cmd, "--root", &self.root(), "--json"]))
    }
    fn read(&self, rel: &str) -> String {
        fs::read_to_string(self.fixture.path().join(rel)).unwrap()
    }
}

#[test]
fn plan_json_has_the_contract_shape() {
    let c = Case::new(PROFILE);
    let v = c.with_profile("plan", &[]);
    let mut keys: Vec<&String> = v.as_object().unwrap().keys().collect();
    keys.sort();
    assert_eq!(keys, ["changes", "drain", "reboot"]);
    assert_eq!(v["drain"], true);
    assert_eq!(v["reboot"], true);
    let changes = v["changes"].as_array().unwrap();
    let rows: Vec<(String, String, Value, Value, String)> = changes
        .iter()
        .map(|c| {
            let mut k: Vec<&String> = c.as_object().unwrap().keys().collect();
            k.sort();
            assert_eq!(k, ["effect", "from", "key", "kind", "to"]);
            (
                c["kind"].as_str().unwrap().to_owned(),
                c["key"].as_str().unwrap().to_owned(),
                c["from"].clone(),
                c["to"].clone(),
                c["effect"].as_str().unwrap().to_owned(),
            )
        })
        .collect();
    let row = |kind: &str, key: &str, from: Value, to: &str, effect: &str| {
        (
            kind.to_owned(),
            key.to_owned(),
            from,
            Value::from(to),
            effect.to_owned(),
        )
    };
    assert_eq!(
        rows,
        [
            row(
                "sysctl",
                "net.ipv4.tcp_rmem",
                "4096 131072 6291456".into(),
                "4096 87380 6291456",
                "live"
            ),
            row("sysctl", "vm.swappiness", "60".into(), "10", "live"),
            row("hugepages-2m", "global", "0".into(), "64", "live"),
            row("cmdline", "isolcpus", Value::Null, "2-3", "reboot"),
        ]
    );
    // --jobs-running makes the pool change live-restart-jobs
    let v = c.with_profile("plan", &["--jobs-running"]);
    assert_eq!(v["changes"][2]["effect"], "live-restart-jobs");
    // the table names every change and the verdicts
    let table = stdout(&twine(&[
        "profile",
        "plan",
        &c.profile(),
        "--root",
        &c.root(),
    ]));
    assert!(
        table.contains("vm.swappiness") && table.contains("reboot"),
        "{table}"
    );
    assert!(table.contains("drain first: yes; reboot: yes"), "{table}");
}

#[test]
fn apply_then_plan_is_empty_and_rollback_restores_byte_for_byte() {
    let c = Case::new(PROFILE);
    let before = c.fixture.snapshot().unwrap();
    let v = c.with_profile("apply", &[]);
    assert_eq!(v["reboot_required"], true, "{v}");
    assert_eq!(v["pending_boot"][0]["key"], "isolcpus", "{v}");
    assert_eq!(v["plan"]["changes"].as_array().unwrap().len(), 4);
    // read back independently
    assert_eq!(c.read("proc/sys/vm/swappiness").trim(), "10");
    assert_eq!(
        c.read("proc/sys/net/ipv4/tcp_rmem")
            .split_whitespace()
            .collect::<Vec<_>>(),
        ["4096", "87380", "6291456"]
    );
    assert_eq!(
        c.read("sys/kernel/mm/hugepages/hugepages-2048kB/nr_hugepages")
            .trim(),
        "64"
    );
    assert!(c.read("etc/default/grub").contains("isolcpus=2-3"));
    assert!(
        c.read("etc/sysctl.d/90-twine.conf")
            .contains("vm.swappiness")
    );

    let again = c.with_profile("plan", &[]);
    assert_eq!(again["changes"], Value::Array(vec![]), "{again}");
    assert_eq!(again["drain"], false);

    // the command line is pending until a boot shows it
    let v = c.on_root("verify");
    assert_eq!(v["pending"][0]["key"], "isolcpus", "{v}");
    assert_eq!(v["drifted"], Value::Array(vec![]));
    // resume of a finished apply reports it again
    let v = c.on_root("resume");
    assert_eq!(v["reboot_required"], true);

    let v = c.on_root("rollback");
    assert!(v["restored"].as_u64().unwrap() >= 4, "{v}");
    let after = c.fixture.snapshot().unwrap();
    assert_eq!(
        before.keys().collect::<Vec<_>>(),
        after.keys().collect::<Vec<_>>()
    );
    for (path, bytes) in &before {
        assert_eq!(&after[path], bytes, "{}", path.display());
    }
}

#[test]
fn an_escaping_sysctl_key_is_refused_naming_the_field_and_writes_nothing() {
    let c = Case::new("[sysctl]\n\"../../etc/shadow\" = \"x\"\n");
    let before = c.fixture.snapshot().unwrap();
    for cmd in ["plan", "apply"] {
        let out = twine(&["profile", cmd, &c.profile(), "--root", &c.root()]);
        assert_eq!(out.status.code(), Some(1), "{cmd}");
        assert!(out.stdout.is_empty(), "{cmd}");
        let err = String::from_utf8(out.stderr).unwrap();
        assert_eq!(err.lines().count(), 1, "{err}");
        assert!(err.starts_with(&format!("{}: ", c.profile())), "{err}");
        assert!(
            err.contains("sysctl") && err.contains("../../etc/shadow"),
            "{err}"
        );
    }
    assert_eq!(before, c.fixture.snapshot().unwrap());
}

#[test]
fn errors_are_path_message_with_exit_1() {
    let c = Case::new(PROFILE);
    let missing = c.dir.path().join("nope");
    let out = twine(&["profile", "rollback", "--root", missing.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8(out.stderr).unwrap();
    assert_eq!(
        err.trim(),
        format!("{}: not a directory", missing.display())
    );
    // nothing to resume
    let out = twine(&["profile", "resume", "--root", &c.root()]);
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8(out.stderr).unwrap();
    assert!(
        err.starts_with(&format!("{}: ", c.root())) && err.contains("no apply to resume"),
        "{err}"
    );
}

fn tuned(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("twine-profiles/tests/data/tuned")
        .join(name)
}

#[test]
fn import_tuned_writes_the_profile_and_lists_every_drop() {
    let dir = tuned("base");
    let out = twine(&["profile", "import-tuned", dir.to_str().unwrap()]);
    let text = stdout(&out);
    let profile = Profile::from_str(&text, Format::Toml).unwrap();
    assert!(text.contains("\"vm.swappiness\" = \"10\""), "{text}");
    assert!(!profile.desired().is_empty());
    let err = String::from_utf8(out.stderr).unwrap();
    assert!(
        err.lines()
            .any(|l| l.starts_with("disk.readahead = >4096: ")),
        "{err}"
    );
    assert!(
        err.lines()
            .any(|l| l.starts_with("sysctl.net.core.somaxconn = >2048: ")),
        "{err}"
    );

    // --out writes the same profile to the file, nothing on stdout
    let tmp = tempfile::tempdir().unwrap();
    let file = tmp.path().join("base.toml");
    let out = twine(&[
        "profile",
        "import-tuned",
        dir.to_str().unwrap(),
        "--out",
        file.to_str().unwrap(),
    ]);
    assert!(stdout(&out).is_empty());
    assert_eq!(fs::read_to_string(&file).unwrap(), text);
    // and the written profile plans on a fixture root
    let fixture = FixtureRoot::typical().unwrap();
    let v = json(&twine(&[
        "profile",
        "plan",
        file.to_str().unwrap(),
        "--root",
        fixture.path().to_str().unwrap(),
        "--json",
    ]));
    assert!(!v["changes"].as_array().unwrap().is_empty(), "{v}");
}

#[test]
fn import_tuned_fails_only_when_no_profile_can_be_written() {
    for (name, needle) in [
        ("cycle-a", "circular include"),
        ("missing-include", "include="),
        ("no-such-profile", "no-such-profile"),
    ] {
        let dir = tuned(name);
        let out = twine(&["profile", "import-tuned", dir.to_str().unwrap()]);
        assert_eq!(out.status.code(), Some(1), "{name}");
        assert!(out.stdout.is_empty(), "{name}");
        let err = String::from_utf8(out.stderr).unwrap();
        assert!(err.starts_with(&format!("{}: ", dir.display())), "{err}");
        assert!(err.contains(needle), "{name}: {err}");
    }
}
