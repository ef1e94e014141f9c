//! Host tier: `cargo xtask guest-run` boots the guest, runs one command as root in the workspace
//! directory, and hands back its stdout, its stderr and its exit status.
//!
//! It boots a real guest (about 30-45 s under TCG), so it runs only as root, where the guest tier
//! can work; CI (root, `TWINE_REQUIRE_REALSYS=1`) always runs it, and a non-root run fails there
//! instead of skipping. It is not a `guest_*` test: the command under test runs on the host.
#![allow(clippy::unwrap_used)] // tests: a failed unwrap is a failed test with its message.

use std::path::Path;
use std::process::Command;

#[test]
fn guest_run_returns_the_commands_status_stdout_and_stderr() {
    if std::env::var_os("TWINE_GUEST").is_some_and(|v| v == "1") {
        eprintln!("skipped: already in the guest; guest-run boots guests from the host");
        return;
    }
    if !nix::unistd::geteuid().is_root() {
        assert!(
            std::env::var_os("TWINE_REQUIRE_REALSYS").is_none_or(|v| v != "1"),
            "guest-run needs root (it boots the QEMU guest) and TWINE_REQUIRE_REALSYS=1 is set"
        );
        eprintln!("skipped: guest-run needs root (it boots the QEMU guest)");
        return;
    }
    let workspace = Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_xtask"))
        .args(["guest-run", "--timeout", "300", "--"])
        .args([
            "sh",
            "-c",
            "pwd; echo \"guest=$TWINE_GUEST uid=$(id -u)\"; echo 'to stderr' >&2; exit 3",
        ])
        .current_dir(workspace)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(
        out.status.code(),
        Some(3),
        "stdout: {stdout}\nstderr: {stderr}"
    );
    assert_eq!(
        stdout,
        format!(
            "{}\nguest=1 uid=0\n",
            workspace.canonicalize().unwrap().display()
        ),
        "stderr: {stderr}"
    );
    assert!(stderr.contains("\nto stderr\n"), "stderr: {stderr}");
}
