//! `twine rollout simulate`: the JSON fields of the contract, `--flag: message` errors,
//! and vetoing jobs in the trailing report before their deadline and done after it.

#![allow(clippy::unwrap_used)] // tests: a failed unwrap is a failed test with its message.

mod support;

use support::{stdout, twine};

fn json(args: &[&str]) -> serde_json::Value {
    let out = twine(args);
    assert!(
        out.status.success(),
        "{args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_str(&stdout(&out)).unwrap()
}

fn error(args: &[&str]) -> String {
    let out = twine(args);
    assert_eq!(out.status.code(), Some(1), "{args:?} should fail");
    String::from_utf8_lossy(&out.stderr).into_owned()
}

#[test]
fn json_has_the_contract_fields() {
    let v = json(&["rollout", "simulate", "--hosts", "800", "--json"]);
    for field in [
        "hosts",
        "updated",
        "days_to_99",
        "days_to_100",
        "waves",
        "trailing",
        "budget_violations",
        "fault_domain_violations",
    ] {
        assert!(v.get(field).is_some(), "missing {field}");
    }
    assert_eq!(v["hosts"], 800);
    assert_eq!(v["budget_violations"], 0);
    assert_eq!(v["fault_domain_violations"], 0);
    let waves = v["waves"].as_array().unwrap();
    assert_eq!(waves.len(), 5, "canaries then 1, 5, 25, 100");
    assert_eq!(waves[0]["kind"], "canary");
    let sizes: u64 = waves.iter().map(|w| w["size"].as_u64().unwrap()).sum();
    assert_eq!(sizes, 800);
    for w in waves {
        assert!(w["ended_days"].is_number());
    }
    let updated = v["updated"].as_u64().unwrap();
    let trailing = v["trailing"].as_array().unwrap();
    assert_eq!(updated + trailing.len() as u64, 800);
    for t in trailing {
        assert!(t["host"].is_number() && t["reason"].is_string() && t.get("job").is_some());
    }
    if trailing.is_empty() {
        assert!(v["days_to_100"].is_number());
    } else {
        assert!(v["days_to_100"].is_null());
    }
}

#[test]
fn live_update_and_failed_gate() {
    let v = json(&[
        "rollout",
        "simulate",
        "--hosts",
        "600",
        "--update",
        "live",
        "--waves",
        "10,100",
        "--health-failure-at",
        "1",
        "--json",
    ]);
    assert_eq!(v["halted_at_wave"], 1);
    let waves = v["waves"].as_array().unwrap();
    assert_eq!(waves.len(), 3);
    assert!(waves[2]["started_days"].is_null());
    let halted = v["trailing"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|t| t["reason"] == "halted")
        .count();
    assert!(halted as u64 >= waves[2]["size"].as_u64().unwrap());
    assert_eq!(v["rollback_proposed"], v["updated"]);
}

#[test]
fn vetoing_jobs_trail_until_their_deadline() {
    let args = |days: &'static str| {
        [
            "rollout",
            "simulate",
            "--hosts",
            "1000",
            "--veto-fraction",
            "0.2",
            "--seed",
            "3",
            "--days",
            days,
            "--json",
        ]
    };
    // Day 3 of 7-day notices: the vetoing jobs hold their hosts, deadline ahead.
    let early = json(&args("3"));
    let vetoes: Vec<_> = early["trailing"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|t| t["reason"] == "veto")
        .collect();
    assert!(!vetoes.is_empty());
    for t in &vetoes {
        assert!(t["job"].is_number());
        let d = t["deadline_days"].as_f64().unwrap();
        assert!(d > 3.0 && d <= 3.0 + 7.0, "deadline {d}");
    }
    assert!(early["days_to_99"].is_null());
    // After the deadlines, no job holds a host; 99% is reached after the first deadline.
    let late = json(&args("60"));
    assert!(
        late["trailing"]
            .as_array()
            .unwrap()
            .iter()
            .all(|t| t["job"].is_null())
    );
    assert!(late["days_to_99"].as_f64().unwrap() >= 7.0);
    assert_eq!(late["budget_violations"], 0);
    assert_eq!(late["fault_domain_violations"], 0);
}

#[test]
fn bad_flags_name_the_flag() {
    for (args, start) in [
        (
            vec!["--hosts", "lots"],
            "--hosts: expected a whole number of hosts (got \"lots\")",
        ),
        (vec!["--hosts", "0"], "--hosts: must be at least 1"),
        (
            vec!["--waves", "5,1,100"],
            "--waves: cumulative percentages must strictly increase",
        ),
        (
            vec!["--waves", "1,50"],
            "--waves: the last wave must reach 100%",
        ),
        (
            vec!["--waves", "1,x"],
            "--waves: expected comma-separated whole percentages (got \"x\")",
        ),
        (
            vec!["--max-in-flight-per-rack", "0"],
            "--max-in-flight-per-rack: must be at least 1",
        ),
        (
            vec!["--veto-fraction", "1.5"],
            "--veto-fraction: expected a number in [0, 1] (got \"1.5\")",
        ),
        (
            vec!["--health-failure-at", "9"],
            "--health-failure-at: wave 9 does not exist",
        ),
        (
            vec!["--seed", "-1"],
            "--seed: expected a whole number (got \"-1\")",
        ),
        (vec!["--update", "hot"], "--update: unknown value \"hot\""),
    ] {
        let mut all = vec!["rollout", "simulate"];
        all.extend(args);
        let err = error(&all);
        assert!(err.starts_with(start), "{all:?}: {err}");
    }
}

#[test]
fn plot_is_written() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("rollout.svg");
    let out = twine(&[
        "rollout",
        "simulate",
        "--hosts",
        "400",
        "--plot",
        path.to_str().unwrap(),
    ]);
    assert!(out.status.success());
    let svg = std::fs::read_to_string(&path).unwrap();
    assert!(svg.contains("<svg") && svg.contains("wave 4 (100%)"));
}

/// The figures of docs/BENCHMARKS.md: a reboot rollout over 100,000 hosts, without and
/// with 5% of jobs vetoing until their 7-day deadline (deterministic for the seed). The
/// violation counts come from the simulator's own pass over its event log.
#[test]
fn a_reboot_rollout_over_100k_hosts_gives_the_documented_figures() {
    for (veto, updated, days_to_99, trailing) in [
        ("0", 99_849, 0.474, (58, 93)),
        ("0.05", 99_861, 7.568, (46, 93)),
    ] {
        let v = json(&[
            "rollout",
            "simulate",
            "--hosts",
            "100000",
            "--update",
            "reboot",
            "--veto-fraction",
            veto,
            "--json",
        ]);
        assert_eq!(v["updated"], updated, "{veto}");
        assert_eq!(v["days_to_99"].as_f64(), Some(days_to_99), "{veto}");
        assert_eq!(v["budget_violations"], 0, "{veto}");
        assert_eq!(v["fault_domain_violations"], 0, "{veto}");
        let by = &v["trailing_by_reason"];
        assert_eq!(
            (by["failed_health_check"].as_u64(), by["host_down"].as_u64()),
            (Some(trailing.0), Some(trailing.1)),
            "{veto}: {by}"
        );
        // Every host is updated or named in the trailing report.
        assert_eq!(
            v["updated"].as_u64().unwrap() + v["trailing"].as_array().unwrap().len() as u64,
            100_000
        );
    }
}
