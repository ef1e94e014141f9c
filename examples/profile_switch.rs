//! A host-profile switch with twine-profiles, as `twine profile apply --root DIR` does it:
//! read the host's facts, plan (pure: each change says whether it is live, needs the jobs
//! restarted, or needs a reboot), apply (journalled, every write read back), verify, and
//! roll back to exactly what was there.
//!
//! ```sh
//! cargo run --example profile_switch                  # a fixture host root in a tempdir
//! cargo run --example profile_switch -- --root DIR    # a directory laid out like / (not / itself)
//! ```
//!
//! The host is a [`HostRoot`]: `HostRoot::real()` is `/`, `HostRoot::at(dir)` any directory
//! with `proc/sys`, `sys` and `etc` under it, so the same code runs on a host and in a test.
//! On a real host the switch sits inside the drain -> apply -> reboot -> verify -> undrain
//! flow of `twine_profiles::flow`, and the drain comes from the scheduler (see
//! `control_loop`).
#![allow(clippy::print_stdout)] // an example: its output is the point

use twine_profiles::apply::{self, ApplyPolicy, MissingKeys};
use twine_profiles::host::HostRoot;
use twine_profiles::plan::plan;
use twine_profiles::profile::{Format, Profile};
use twine_profiles::testing::FixtureRoot;

const PROFILE: &str = r#"
[sysctl]
"vm.swappiness" = 10

"kernel.printk_ratelimit" = 10

[cmdline]
isolcpus = "1"
"#;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    // Without --root: a small fake host (a few sysctls, a GRUB defaults file) in a tempdir.
    let fixture;
    let root = match args.as_slice() {
        [flag, dir] if flag == "--root" => HostRoot::at(dir),
        [] => {
            fixture = FixtureRoot::typical()?;
            fixture.root()
        }
        _ => return Err("usage: profile_switch [--root DIR]".into()),
    };

    let profile = Profile::from_str(PROFILE, Format::Toml)?;
    let settings: Vec<_> = profile.desired().into_keys().collect();
    let facts = root.facts(&settings, /* jobs running */ true)?;
    let p = plan(&facts, &profile);
    println!(
        "plan: {} changes, drain {}, reboot {}",
        p.changes.len(),
        p.drain,
        p.reboot
    );
    for c in &p.changes {
        let from = c.from.as_deref().unwrap_or("(absent)");
        let to = c.to.as_deref().unwrap_or("(removed)");
        println!("  {}: {from:?} -> {to:?} ({})", c.setting, c.effect);
    }

    // Skip settings this host does not have instead of failing; the command line is written
    // for the next boot (GRUB's defaults here), and verify reports it pending until then.
    let report = apply::apply(&root, &p, ApplyPolicy::new(MissingKeys::Skip, false))?;
    println!(
        "applied; skipped {:?}, reboot required: {}",
        report.skipped, report.reboot_required
    );
    let verify = apply::verify(&root)?;
    println!(
        "verify: {} drifted, {} waiting for a boot",
        verify.drifted.len(),
        verify.pending.len()
    );

    apply::rollback(&root)?;
    let facts = root.facts(&settings, true)?;
    println!(
        "rolled back: planning again gives {} changes",
        plan(&facts, &profile).changes.len()
    );
    Ok(())
}
