//! What every guest-tier test shares: knowing whether it runs in the guest.
//!
//! The convention (docs/GUEST.md): a guest-only test is named `guest_*`, carries
//! `#[ignore = "guest tier: cargo xtask guest-test"]` so the host tier never runs it, and starts
//! with `if !support::in_guest() { return; }` so that running it by hand on the host (with
//! `--ignored`) skips it with a one-line reason instead of testing the host's kernel.

/// Whether this test runs inside the guest tier (`cargo xtask guest-test` sets `TWINE_GUEST=1`).
/// Prints a one-line skip reason when it does not.
pub(crate) fn in_guest() -> bool {
    let inside = std::env::var_os("TWINE_GUEST").is_some_and(|v| v == "1");
    if !inside {
        eprintln!(
            "skipped: guest-only test; run it with `cargo xtask guest-test` (TWINE_GUEST is unset)"
        );
    }
    inside
}
