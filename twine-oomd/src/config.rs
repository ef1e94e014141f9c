//! The daemon's TOML config (`twine oomd run --config FILE`).
//!
//! ```toml
//! mode = "reclaim"     # high | reclaim, for every [[resize]] entry; unset: reclaim where
//!                      # the cgroup has memory.reclaim, else high
//! interval_s = 6       # default for every [[resize]] entry
//! dry_run = false      # report kills without carrying them out
//! pause_s = 15         # no new kill this long after one (oomd's post_action_delay)
//!
//! [[resize]]           # first entry whose glob matches a cgroup sizes it
//! cgroups = ["workload.slice/*.service"]
//! pressure_ms = 10     # any SenpaiConfig parameter; mode and interval_s override the globals
//!
//! [[kill]]             # ordered rules, see crate::kill
//! name = "workload-thrashing"
//! cgroup = "workload.slice"
//! select = "largest"   # largest | fastest_growing | most_pressure
//! detectors = [{ type = "pressure_above", window_s = 10, threshold_pct = 60, duration_s = 30 }]
//!
//! [[prekill_hook]]
//! cgroups = ["workload.slice/**"]
//! command = ["/usr/local/bin/dump-heap"]
//! timeout_s = 5
//! ```
//!
//! Unknown keys are errors everywhere. Impossible values give a [`ConfigError`] naming the
//! field path (`resize[0].max_probe`, `kill[1].detectors[0].window_s`) and the value.
//! `twine-oomd/examples/oomd.toml` is a full example.

use std::time::Duration;

use globset::GlobSet;
use serde::Deserialize;

use crate::kill::{KillPolicy, KillRule, PolicyError, PrekillHook, globs};
use crate::senpai::{InvalidParameter, Mode, SenpaiConfig};

/// A config that cannot be used.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[non_exhaustive]
pub enum ConfigError {
    /// Not TOML, an unknown key or a value of the wrong type.
    #[error("{field}: {message}")]
    Syntax {
        /// Where: `line N` of the document, or `resize[i]` for a `[[resize]]` entry.
        field: String,
        /// The parser's message.
        message: String,
    },
    /// A value out of range, e.g. at `resize[0].max_probe`.
    #[error(transparent)]
    Invalid(#[from] InvalidParameter),
    /// A kill rule or prekill hook that cannot work.
    #[error(transparent)]
    Policy(#[from] PolicyError),
}

/// One `[[resize]]` entry, validated.
#[derive(Debug, Clone)]
pub struct Resize {
    /// The globs as written.
    pub cgroups: Vec<String>,
    /// Controller parameters for matching cgroups.
    pub senpai: SenpaiConfig,
    /// Whether the entry or the file set `mode`; when neither did, the daemon picks
    /// `reclaim` where the cgroup has `memory.reclaim`, else `high`.
    pub mode_given: bool,
    matcher: GlobSet,
}

impl Resize {
    /// Whether this entry selects the cgroup at `path` (relative to the cgroup root).
    pub fn matches(&self, path: &str) -> bool {
        self.matcher.is_match(path)
    }
}

/// A parsed and validated config.
#[derive(Debug, Clone)]
pub struct Config {
    /// Report kills without carrying them out.
    pub dry_run: bool,
    /// `[[resize]]` entries in file order.
    pub resize: Vec<Resize>,
    policy: KillPolicy,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    #[serde(default)]
    mode: Option<Mode>,
    #[serde(default = "default_interval")]
    interval_s: f64,
    #[serde(default)]
    dry_run: bool,
    #[serde(default = "default_pause")]
    pause_s: f64,
    #[serde(default)]
    resize: Vec<toml::Table>,
    #[serde(default)]
    kill: Vec<KillRule>,
    #[serde(default)]
    prekill_hook: Vec<PrekillHook>,
}

fn default_interval() -> f64 {
    6.0
}

fn default_pause() -> f64 {
    15.0
}

fn seconds(field: &str, value: f64, zero_ok: bool) -> Result<Duration, ConfigError> {
    match Duration::try_from_secs_f64(value) {
        Ok(d) if zero_ok || !d.is_zero() => Ok(d),
        _ => Err(InvalidParameter::new(
            field,
            value,
            if zero_ok {
                "a non-negative number of seconds"
            } else {
                "a positive number of seconds"
            },
        )
        .into()),
    }
}

impl Config {
    /// Parses and validates a config.
    pub fn from_toml(text: &str) -> Result<Self, ConfigError> {
        let raw: RawConfig = toml::from_str(text).map_err(|e| ConfigError::Syntax {
            field: match e.span() {
                Some(span) => {
                    let before = text.as_bytes().get(..span.start).unwrap_or_default();
                    let line = 1 + before.iter().filter(|&&b| b == b'\n').count();
                    format!("line {line}")
                }
                None => ".".into(),
            },
            message: e.message().to_string(),
        })?;
        seconds("interval_s", raw.interval_s, false)?;
        let pause = seconds("pause_s", raw.pause_s, true)?;
        let mut resize = Vec::with_capacity(raw.resize.len());
        for (i, mut table) in raw.resize.into_iter().enumerate() {
            let field = format!("resize[{i}]");
            let syntax = |message: String| ConfigError::Syntax {
                field: field.clone(),
                message,
            };
            let cgroups: Vec<String> = match table.remove("cgroups") {
                Some(v) => v
                    .try_into()
                    .map_err(|e: toml::de::Error| syntax(format!("cgroups: {}", e.message())))?,
                None => return Err(syntax("missing field `cgroups`".into())),
            };
            let mode_given = raw.mode.is_some() || table.contains_key("mode");
            let mode = toml::Value::try_from(raw.mode.unwrap_or_default())
                .map_err(|e| syntax(e.to_string()))?;
            table.entry("mode").or_insert(mode);
            table
                .entry("interval_s")
                .or_insert(toml::Value::Float(raw.interval_s));
            let senpai: SenpaiConfig = toml::Value::Table(table)
                .try_into()
                .map_err(|e: toml::de::Error| syntax(e.message().to_string()))?;
            senpai.validate().map_err(|e| {
                InvalidParameter::new(format!("{field}.{}", e.field), e.value, e.expected)
            })?;
            let matcher = globs(&cgroups, &format!("{field}.cgroups"))?;
            resize.push(Resize {
                cgroups,
                senpai,
                mode_given,
                matcher,
            });
        }
        let policy = KillPolicy::new(raw.kill, raw.prekill_hook, pause, raw.dry_run)?;
        Ok(Self {
            dry_run: raw.dry_run,
            resize,
            policy,
        })
    }

    /// The first `[[resize]]` entry that selects `path`.
    pub fn resize_for(&self, path: &str) -> Option<&Resize> {
        self.resize.iter().find(|r| r.matches(path))
    }

    /// Overrides every entry's mode (`--mode`).
    pub fn set_mode(&mut self, mode: Mode) {
        for r in &mut self.resize {
            r.senpai.mode = mode;
            r.mode_given = true;
        }
    }

    /// Overrides every entry's interval (`--interval`); zero is an error.
    pub fn set_interval(&mut self, interval: Duration) -> Result<(), ConfigError> {
        if interval.is_zero() {
            return Err(
                InvalidParameter::new("interval_s", 0, "a positive number of seconds").into(),
            );
        }
        for r in &mut self.resize {
            r.senpai.interval = interval;
        }
        Ok(())
    }

    /// Overrides `dry_run` (`--dry-run`).
    pub fn set_dry_run(&mut self, dry_run: bool) {
        self.dry_run = dry_run;
        self.policy.set_dry_run(dry_run);
    }

    /// A fresh kill policy (no held detectors, no pause) from the `[[kill]]` and
    /// `[[prekill_hook]]` sections.
    pub fn kill_policy(&self) -> KillPolicy {
        self.policy.clone()
    }
}
