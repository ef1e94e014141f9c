//! Shared by twine-oomd's integration tests: the guest-tier check, the workload and the daemon
//! in a process of its own.
//!
//! Include it with `mod support;`. Each test binary that does also carries the children's
//! entries (`support::workload::workload_child`, `support::daemon::daemon_child`, ignored),
//! which the guards re-execute.

pub(crate) mod daemon;
pub(crate) mod workload;

use std::io::{BufRead as _, BufReader};
use std::path::Path;
use std::process::{ChildStdout, Command};
use std::sync::mpsc;

/// Whether this runs in the guest tier (`cargo xtask guest-test` sets `TWINE_GUEST=1`); when not,
/// says so on stderr in one line, so a guest test can return early (see docs/GUEST.md).
pub(crate) fn in_guest() -> bool {
    let guest = std::env::var_os("TWINE_GUEST").is_some_and(|v| v == "1");
    if !guest {
        eprintln!(
            "skipped: guest-only test (TWINE_GUEST is not 1); run it with `cargo xtask guest-test`"
        );
    }
    guest
}

/// This test binary (`exe`) run again on its one ignored entry `test` (libtest's full name),
/// alone, with its output not captured.
fn child_command(exe: &Path, test: &str) -> Command {
    let mut command = Command::new(exe);
    command.args([
        test,
        "--exact",
        "--ignored",
        "--nocapture",
        "--test-threads=1",
    ]);
    command
}

/// Each line of a child's stdout, from a thread of its own (which ends with the output).
fn lines_of(stdout: ChildStdout) -> mpsc::Receiver<String> {
    let (lines, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines() {
            let Ok(line) = line else { break };
            if lines.send(line).is_err() {
                break;
            }
        }
    });
    rx
}
