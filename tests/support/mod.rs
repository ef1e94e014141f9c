//! What the CLI test files share: running the `twine` binary and reading its output.
#![allow(dead_code)] // each test file uses a part

use std::process::{Command, Output};

/// Runs the `twine` binary built for these tests with `args`.
pub(crate) fn twine(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_twine"))
        .args(args)
        .output()
        .expect("twine runs")
}

/// The stdout of a run that must have succeeded (else its stderr is the failure).
pub(crate) fn stdout(out: &Output) -> String {
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout.clone()).expect("stdout is UTF-8")
}
