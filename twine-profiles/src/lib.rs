//! Host profiles: sysctls, hugepages, transparent hugepages, kernel command line, cpufreq
//! governor, sysfs attributes, systemd drop-ins, networkd files and cgroup2 controllers,
//! planned, applied, verified and rolled back, with drain and reboot when they must.
//!
//! Deciding is apart from doing: [`plan`] is a pure function of the host's facts and the
//! desired profile; [`apply`] carries a plan out through a [`host::HostRoot`] (the real `/`
//! or a directory), recording every original value first so that rollback restores exactly
//! what twine changed; [`flow`] is the persisted drain -> apply -> reboot -> verify ->
//! undrain state machine, and [`flow::HostApplier`] runs it over [`apply`], so that an
//! integrator implements only [`flow::Drain`] and [`flow::Reboot`]; [`tuned`] imports TuneD
//! profiles.
//!
//! # Tutorial
//!
//! A profile, a host (here a directory standing for `/`; [`host::HostRoot::real`] is the real
//! one), the plan, the apply, and the rollback:
//!
//! ```
//! use twine_profiles::apply::{self, ApplyPolicy, MissingKeys};
//! use twine_profiles::change::Effect;
//! use twine_profiles::host::HostRoot;
//! use twine_profiles::plan::plan;
//! use twine_profiles::profile::{Format, Profile};
//!
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! // 1. A profile: TOML, YAML or JSON (`Profile::load` reads a file and its `inherits`).
//! let profile = Profile::from_str(
//!     "[sysctl]\n\"vm.swappiness\" = 10\n[cmdline]\nisolcpus = \"2-3\"\n",
//!     Format::Toml,
//! )?;
//!
//! // 2. A host: /proc/sys, /sys and /etc under a root directory.
//! let dir = tempfile::tempdir()?;
//! std::fs::create_dir_all(dir.path().join("proc/sys/vm"))?;
//! std::fs::write(dir.path().join("proc/sys/vm/swappiness"), "60\n")?;
//! std::fs::create_dir_all(dir.path().join("etc/kernel"))?;
//! std::fs::write(dir.path().join("etc/kernel/cmdline"), "root=/dev/vda ro\n")?;
//! let root = HostRoot::at(dir.path());
//!
//! // 3. The plan: pure, from the host's facts; each change says when it takes effect.
//! let settings: Vec<_> = profile.desired().into_keys().collect();
//! let facts = root.facts(&settings, /* jobs running */ false)?;
//! let p = plan(&facts, &profile);
//! assert_eq!(p.changes[0].effect, Effect::Live); // the sysctl
//! assert_eq!(p.changes[1].effect, Effect::Reboot); // the command line
//! assert!(p.drain && p.reboot);
//!
//! // 4. Apply: journalled, every write read back; the command line waits for a boot.
//! let report = apply::apply(&root, &p, ApplyPolicy::new(MissingKeys::Fail, false))?;
//! assert!(report.reboot_required);
//! assert_eq!(std::fs::read_to_string(dir.path().join("proc/sys/vm/swappiness"))?, "10");
//! assert_eq!(apply::verify(&root)?.pending.len(), 1);
//! let facts = root.facts(&settings, false)?;
//! assert!(plan(&facts, &profile).is_empty()); // planning again: nothing to do
//!
//! // 5. Roll back: exactly what twine changed, to exactly what it was.
//! apply::rollback(&root)?;
//! assert_eq!(std::fs::read_to_string(dir.path().join("proc/sys/vm/swappiness"))?, "60\n");
//! assert_eq!(
//!     std::fs::read_to_string(dir.path().join("etc/kernel/cmdline"))?,
//!     "root=/dev/vda ro\n"
//! );
//! # Ok(())
//! # }
//! ```
//!
//! The same on the command line: `twine profile plan|apply PROFILE [--root DIR] [--json]`,
//! `twine profile verify|resume|rollback [--root DIR]`, `twine profile import-tuned DIR`
//! (see the crate's README).

pub mod apply;
pub mod change;
pub mod flow;
pub mod host;
pub mod key;
pub mod plan;
pub mod profile;
#[cfg(feature = "test-util")]
pub mod testing;
pub mod tuned;

// The README's examples are compiled and run as doctests.
#[cfg(doctest)]
#[doc = include_str!("../README.md")]
struct ReadmeDoctests;
