//! `twine freshness simulate`: the JSON fields of the contract, the flag errors, and a
//! default run that keeps every container within the max age and every job within its
//! budget, with renewals that never restart; a vetoing controller's job named overdue.

#![allow(clippy::unwrap_used)] // tests: a failed unwrap is a failed test with its message.

mod support;

use support::{stdout, twine};

/// The JSON fields the contract names.
const FIELDS: [&str; 12] = [
    "jobs",
    "tasks",
    "days",
    "restarts_per_day",
    "oldest_age_days",
    "max_age_days_seen",
    "budget_violations",
    "renewals",
    "restarts_by_renewal",
    "levelness",
    "level_rate_per_day",
    "overdue_jobs",
];

fn run_json(args: &[&str]) -> serde_json::Value {
    let mut all = vec!["freshness", "simulate", "--json"];
    all.extend_from_slice(args);
    let out = stdout(&twine(&all));
    serde_json::from_str(&out).unwrap()
}

#[test]
fn default_run_keeps_every_container_fresh() {
    let v = run_json(&[]);
    for f in FIELDS {
        assert!(v.get(f).is_some(), "missing {f} in {v}");
    }
    assert_eq!(v["jobs"], 1000);
    assert_eq!(v["days"], 180);
    let oldest = v["oldest_age_days"].as_array().unwrap();
    assert_eq!(oldest.len(), 180);
    assert_eq!(v["restarts_per_day"].as_array().unwrap().len(), 180);
    for (day, age) in oldest.iter().enumerate() {
        let age = age.as_f64().unwrap();
        assert!(age <= 90.0, "day {day}: oldest container {age} days");
    }
    assert!(v["max_age_days_seen"].as_f64().unwrap() <= 90.0);
    assert_eq!(v["budget_violations"], 0);
    assert_eq!(v["restarts_by_renewal"], 0);
    assert!(v["renewals"].as_u64().unwrap() > 0);
    assert_eq!(v["overdue_jobs"], serde_json::json!([]));
    let levelness = v["levelness"].as_f64().unwrap();
    assert!(levelness <= 1.5, "levelness {levelness}");
    // The figures docs/BENCHMARKS.md states (deterministic for the seed).
    let figures = format!(
        "{:.2} {levelness:.3} {:.3} {}",
        v["max_age_days_seen"].as_f64().unwrap(),
        v["mean_over_level"].as_f64().unwrap(),
        v["tasks"]
    );
    assert_eq!(figures, "83.21 1.072 1.002 8189", "{v}");
}

#[test]
fn flags_shape_the_run_and_a_seed_repeats() {
    let args = [
        "--jobs",
        "40",
        "--max-age-days",
        "30",
        "--days",
        "45",
        "--seed",
        "5",
    ];
    let a = run_json(&args);
    assert_eq!(a["jobs"], 40);
    assert_eq!(a["days"], 45);
    assert_eq!(a["max_age_days"], 30);
    assert_eq!(a["restarts_per_day"].as_array().unwrap().len(), 45);
    let b = run_json(&args);
    assert_eq!(a["restarts_per_day"], b["restarts_per_day"]);
    assert_eq!(a["oldest_age_days"], b["oldest_age_days"]);
}

#[test]
fn a_vetoing_job_is_named_overdue() {
    let v = run_json(&[
        "--jobs",
        "30",
        "--max-age-days",
        "30",
        "--vetoing-jobs",
        "1",
    ]);
    assert_eq!(v["overdue_jobs"], serde_json::json!([0]));
    assert!(v["max_age_days_seen"].as_f64().unwrap() > 30.0);
    assert_eq!(v["budget_violations"], 0);
}

#[test]
fn bad_flags_are_errors() {
    let cases: [(&[&str], &str); 6] = [
        (
            &["--jobs", "x"],
            "--jobs: expected a whole number of at least 1 (got \"x\")",
        ),
        (
            &["--jobs", "0"],
            "--jobs: expected a whole number of at least 1 (got \"0\")",
        ),
        (
            &["--max-age-days", "-3"],
            "--max-age-days: expected a whole number of at least 1 (got \"-3\")",
        ),
        (
            &["--days", "0"],
            "--days: expected a whole number of at least 1 (got \"0\")",
        ),
        (
            &["--seed", "1.5"],
            "--seed: expected a whole number of at least 0 (got \"1.5\")",
        ),
        (
            &["--jobs", "3", "--vetoing-jobs", "4"],
            "--vetoing-jobs: expected at most --jobs (3) (got \"4\")",
        ),
    ];
    for (args, message) in cases {
        let mut all = vec!["freshness", "simulate"];
        all.extend_from_slice(args);
        let out = twine(&all);
        assert_eq!(out.status.code(), Some(1), "{args:?}");
        assert!(out.stdout.is_empty(), "{args:?}");
        assert_eq!(String::from_utf8_lossy(&out.stderr).trim(), message);
    }
}

#[test]
fn plot_writes_an_svg() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("fresh.svg");
    let p = path.display().to_string();
    let out = stdout(&twine(&[
        "freshness",
        "simulate",
        "--jobs",
        "20",
        "--days",
        "10",
        "--plot",
        &p,
    ]));
    assert!(out.contains("20 jobs"), "{out}");
    assert!(std::fs::read_to_string(&path).unwrap().contains("<svg"));
}
