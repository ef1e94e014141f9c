//! Job specs translated into systemd units that real systemd accepts and runs exactly as written.
//!
//! A [`JobSpec`] is read from TOML, JSON or YAML (unknown keys are errors),
//! [validated](JobSpec::validate) into a [`Job`] with every problem reported at
//! once, and [translated](fn@translate) into a [`UnitSet`]: one oneshot unit per
//! pre-start step, the main service, sidecars bound to it, a health timer, and a
//! target that starts and stops the whole job. The set renders as unit files or as
//! `StartTransientUnit` property lists.
//!
//! ```
//! let spec = twine_spec::JobSpec::from_toml(r#"
//!     name = "web"
//!     entitlement = "ads"
//!     [task]
//!     command = ["/usr/bin/server", "--port", "8080", "100% $HOME"]
//!     [[task.prestart]]
//!     name = "fetch"
//!     command = ["/usr/bin/fetch", "config"]
//!     [task.resources]
//!     memory_high = "512M"
//!     memory_max = "1G"
//!     [task.kill]
//!     signal = "SIGINT"
//!     grace_period = "20s"
//! "#)?;
//! let job = spec.validate()?;
//! let units = twine_spec::translate(&job)?;
//! let main = units.files().into_iter().find(|f| f.name == "web.service").unwrap();
//! assert!(main.contents.contains(r#"ExecStart="/usr/bin/server" "--port" "8080" "100%% $$HOME""#));
//! assert!(main.contents.contains("Requires=web-pre-fetch.service"));
//! assert!(main.contents.contains("MemoryHigh=536870912"));
//! assert!(main.contents.contains("KillSignal=SIGINT"));
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```
//!
//! Bad input never panics: parse errors name the field path, and validation lists
//! every problem as `field: message (got value)`:
//!
//! ```
//! let spec = twine_spec::JobSpec::from_toml(r#"
//!     name = "web"
//!     entitlement = "ads"
//!     [task]
//!     command = ["bin/server"]
//!     [task.resources]
//!     memory_high = "2G"
//!     memory_max = "1G"
//! "#)?;
//! let errors = spec.validate().unwrap_err();
//! let fields: Vec<_> = errors.problems.iter().map(|p| p.field.as_str()).collect();
//! assert_eq!(fields, ["task.command[0]", "task.resources.memory_high"]);
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```
//!
//! The translation rules, including what a restart does to pre-start steps, are
//! documented on [`translate`](mod@translate). Quoting follows systemd's rules
//! exactly; see [`escape`].
//!
//! # Features
//!
//! Everything above is pure: no file is written and no process is run. The
//! crate's I/O sits behind the default feature `host`:
//!
//! - the `install` module: `write_unit_files` writes a set of unit files into a
//!   directory, all or none;
//! - the `verify` module: runs `systemd-analyze verify` on rendered units.
//!
//! An integrator who wants the pure core alone depends on the crate with
//! `default-features = false`.

pub mod escape;
#[cfg(feature = "host")]
pub mod install;
pub mod job;
mod naming;
pub mod signal;
pub mod spec;
pub mod timespan;
pub mod transient;
pub mod translate;
pub mod unit;
pub mod validate;
#[cfg(feature = "host")]
pub mod verify;

pub use job::Job;
pub use spec::{Format, JobSpec, ParseError};
pub use transient::{Property, PropertyValue, TransientUnit};
pub use translate::{TranslateError, UnitFile, UnitSet, translate};
pub use validate::{Problem, ProblemKind, ValidationErrors};
