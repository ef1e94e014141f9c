//! Every program in `examples/` builds and runs to a successful exit, so the code an
//! integrator copies keeps working. `run_job` needs root and a rootfs: it skips with a
//! reason, or fails under `TWINE_REQUIRE_REALSYS=1` (inherited from the environment).
#![allow(clippy::unwrap_used)] // tests: a failed unwrap is a failed test with its message.

use std::process::Command;

/// Runs `cargo run --example NAME -- ARGS` with `envs`; returns its stdout.
fn run_example(name: &str, args: &[&str], envs: &[(&str, &str)]) -> String {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let out = Command::new(cargo)
        .args(["run", "--quiet", "--example", name, "--"])
        .args(args)
        .env_remove("TWINE_TRACE_DIR")
        .envs(envs.iter().copied())
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "example {name} failed ({}):\n{stdout}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    stdout
}

#[test]
fn control_loop_places_renders_and_drains() {
    let out = run_example("control_loop", &[], &[]);
    assert!(
        out.contains("units, in start order: cache.service, cache.target"),
        "{out}"
    );
    assert!(out.contains("switched to \"hugepages\""), "{out}");
}

#[test]
fn render_units_renders_the_example_spec() {
    let out = run_example("render_units", &[], &[]);
    assert!(out.contains("### web.service"), "{out}");
    assert!(out.contains("### transient web.service"), "{out}");
}

#[test]
fn place_trace_packs_the_synthetic_set_without_the_trace() {
    let empty = tempfile::tempdir().unwrap();
    let out = run_example("place_trace", &[empty.path().to_str().unwrap()], &[]);
    assert!(out.contains("300 of 300 pods"), "{out}");
}

/// With no argument it reads `../shared/data/traces/` (the openb trace kept beside the
/// repository) where that exists, else it packs the synthetic set.
#[test]
fn place_trace_packs_the_trace_where_it_is() {
    let out = run_example("place_trace", &[], &[]);
    assert!(
        out.contains("packing a synthetic set") || out.contains("1523 nodes, 8152 pods"),
        "{out}"
    );
}

#[test]
fn senpai_loop_sizes_and_restores() {
    let out = run_example("senpai_loop", &[], &[]);
    assert!(out.contains("restored memory.high to \"max\""), "{out}");
}

#[test]
fn profile_switch_applies_and_rolls_back() {
    let out = run_example("profile_switch", &[], &[]);
    assert!(
        out.contains("vm.swappiness: \"60\" -> \"10\" (live)"),
        "{out}"
    );
    assert!(
        out.contains("rolled back: planning again gives 3 changes"),
        "{out}"
    );
}

#[test]
fn run_job_runs_or_says_why_not() {
    let out = run_example("run_job", &[], &[]);
    assert!(
        out.contains("run_job: skipped: ") || out.contains("job ended: Exited { code: 0 }"),
        "{out}"
    );
}
