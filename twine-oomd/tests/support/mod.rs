//! Shared by twine-oomd's integration tests: the guest-tier check and the workload.
//!
//! Include it with `mod support;`. Each test binary that does also carries the workload's child
//! entry (`support::workload::workload_child`, ignored), which the workload re-executes.

pub(crate) mod workload;

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
