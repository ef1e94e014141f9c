//! Shared by the integration tests: the real-system gate, systemd-analyze, a port
//! of systemd's parsers, and the nspawn harness. Each test binary uses a subset.
#![allow(dead_code, unreachable_pub)] // each test binary compiles this module and uses part of it

pub mod nspawn;
pub mod systemd_parse;

use twine_spec::UnitFile;

/// Decides what a test that needs the real system does when it is missing:
/// `false` means skip (a one-line reason on stderr); under
/// `TWINE_REQUIRE_REALSYS=1` it panics instead, so CI cannot skip silently.
pub fn realsys_gate(reason: &str) -> bool {
    if std::env::var("TWINE_REQUIRE_REALSYS").is_ok_and(|v| v == "1") {
        panic!("TWINE_REQUIRE_REALSYS=1 but the real system is not usable: {reason}");
    }
    eprintln!("skipped: {reason}");
    false
}

/// Whether `systemd-analyze` can run here; otherwise goes through the gate.
pub fn have_systemd_analyze() -> bool {
    static HAVE: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    let have = *HAVE.get_or_init(|| {
        std::process::Command::new("systemd-analyze")
            .arg("--version")
            .output()
            .is_ok_and(|o| o.status.success())
    });
    have || realsys_gate("systemd-analyze is not installed (apt: systemd)")
}

/// Runs `systemd-analyze verify` on `files` and panics with its output on any complaint.
///
/// Without the crate's `host` feature there is no `verify` to run: the pure checks
/// of the calling test still run, and this goes through the gate once.
#[cfg(not(feature = "host"))]
pub fn assert_verifies(_files: &[UnitFile]) {
    static GATE: std::sync::Once = std::sync::Once::new();
    GATE.call_once(|| {
        realsys_gate(
            "twine-spec is built without its `host` feature: systemd-analyze verify is not run",
        );
    });
}

/// Runs `systemd-analyze verify` on `files` and panics with its output on any complaint.
#[cfg(feature = "host")]
pub fn assert_verifies(files: &[UnitFile]) {
    if !have_systemd_analyze() {
        return;
    }
    if let Err(e) = twine_spec::verify::verify(files) {
        let listing: String = files
            .iter()
            .map(|f| format!("### {}\n{}\n", f.name, f.contents))
            .collect();
        panic!("{e}\n{listing}");
    }
}
