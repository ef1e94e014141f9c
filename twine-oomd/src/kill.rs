//! Kill policies in the manner of oomd, as pure decisions.
//!
//! A [`KillPolicy`] is an ordered list of [`KillRule`]s. Each rule watches one cgroup with a
//! set of [`Detector`]s and names how to pick a victim among that cgroup's descendants. Every
//! tick the caller passes a [`Tick`] (samples of the watched and candidate cgroups plus system
//! swap) to [`KillPolicy::evaluate`], which returns a [`Verdict`]: nothing, paused, no victim, or
//! a [`Kill`] for the executor to carry out (run the prekill hook, then kill the cgroup).
//!
//! Semantics follow oomd's rulesets (`../shared/references/oomd.md` §3.2): all detectors run
//! every tick so their held-time windows stay current; a rule fires when **all** its detectors
//! fire (one oomd detector group); the **first** firing rule that finds a victim acts, and the
//! next firing rule is tried when one finds none (the dropped-kill bug systemd fixed in PR
//! #40704, §4.3). After a kill no new kill is decided for `pause` (oomd's `post_action_delay`,
//! 15 s), dry-run included, so a dry run reports what a real run would have done.
//! Pressure detectors read the `full` line, as oomd's do.

use std::collections::BTreeMap;
use std::time::Duration;

use globset::{Glob, GlobSet, GlobSetBuilder};
use serde::{Deserialize, Serialize};

use crate::senpai::InvalidParameter;

/// A condition on the watched cgroup or the system.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case", deny_unknown_fields)]
pub enum Detector {
    /// `full` memory pressure average over `window_s` (10, 60 or 300) above `threshold_pct`,
    /// held for `duration_s`.
    PressureAbove {
        /// Which PSI average: 10, 60 or 300 seconds.
        window_s: u64,
        /// Percent, in `[0, 100]`.
        threshold_pct: f64,
        /// How long the average must stay above the threshold, seconds.
        duration_s: f64,
    },
    /// `memory.current` of the watched cgroup above `bytes`.
    MemoryAbove {
        /// The limit.
        bytes: u64,
    },
    /// Free swap below `bytes`, or below `pct` percent of total swap. Never fires on a
    /// system without swap (there is none to run out of).
    SwapFreeBelow {
        /// Absolute limit.
        #[serde(default)]
        bytes: Option<u64>,
        /// Percentage limit, in `[0, 100]`.
        #[serde(default)]
        pct: Option<f64>,
    },
}

/// How to rank candidates.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Selection {
    /// Largest `memory.current`.
    #[default]
    Largest,
    /// Largest growth of `memory.current` per second since the previous tick.
    FastestGrowing,
    /// Highest `full` avg10 memory pressure.
    MostPressure,
}

/// How the executor kills a cgroup.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum KillVia {
    /// Write `1` to `cgroup.kill` (Linux 5.14+); if that file is missing, fall back to
    /// SIGKILL for every pid in `cgroup.procs`, repeated until it is empty.
    #[default]
    CgroupKill,
    /// SIGKILL every pid in `cgroup.procs` only.
    Sigkill,
}

/// One rule of a policy, as written in the config.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KillRule {
    /// Name for logs and verdicts.
    pub name: String,
    /// The watched cgroup (path relative to the cgroup root); candidates are its descendants
    /// present in the tick.
    pub cgroup: String,
    /// All must fire for the rule to fire.
    pub detectors: Vec<Detector>,
    /// How to rank candidates.
    #[serde(default)]
    pub select: Selection,
    /// Globs on candidate paths to pick first.
    #[serde(default)]
    pub prefer: Vec<String>,
    /// Globs on candidate paths to pick only when nothing else is left.
    #[serde(default)]
    pub avoid: Vec<String>,
    /// Globs on candidate paths never to pick.
    #[serde(default)]
    pub omit: Vec<String>,
    /// How to kill.
    #[serde(default)]
    pub via: KillVia,
}

/// A command the executor runs before killing a matching cgroup.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PrekillHook {
    /// Globs on victim paths; the first hook that matches runs, at most one per kill.
    pub cgroups: Vec<String>,
    /// Program and arguments; the executor appends nothing and passes the victim's path in
    /// the environment variable `TWINE_OOMD_VICTIM`.
    pub command: Vec<String>,
    /// The executor kills the hook and goes on with the kill after this long, seconds
    /// (oomd: 5).
    #[serde(default = "default_hook_timeout")]
    pub timeout_s: f64,
}

impl PrekillHook {
    /// `timeout_s` as a duration (a value too large for one is [`Duration::MAX`]; policies
    /// reject negative and non-finite values).
    pub fn timeout(&self) -> Duration {
        Duration::try_from_secs_f64(self.timeout_s).unwrap_or(Duration::MAX)
    }
}

fn default_hook_timeout() -> f64 {
    5.0
}

/// A policy setting that cannot work.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[non_exhaustive]
pub enum PolicyError {
    /// A glob that does not parse.
    #[error("{field} = {value:?}: {message}")]
    Glob {
        /// Where, e.g. `kill[0].prefer[1]`.
        field: String,
        /// The pattern.
        value: String,
        /// globset's message.
        message: String,
    },
    /// A value out of range, e.g. at `kill[0].detectors[1].window_s`.
    #[error(transparent)]
    Invalid(#[from] InvalidParameter),
}

/// A sample of one cgroup for one tick.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CgroupSample {
    /// Path relative to the cgroup root, `/`-separated, no leading `/`.
    pub path: String,
    /// `memory.current`.
    pub current: u64,
    /// `full avg10=` of `memory.pressure` (percent).
    pub full_avg10: f64,
    /// `full avg60=`.
    pub full_avg60: f64,
    /// `full avg300=`.
    pub full_avg300: f64,
}

/// Everything one evaluation looks at.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Tick {
    /// Monotonic time.
    pub now: Duration,
    /// Watched cgroups and candidates.
    pub cgroups: Vec<CgroupSample>,
    /// `SwapFree`, bytes.
    pub swap_free: u64,
    /// `SwapTotal`, bytes; 0 without swap.
    pub swap_total: u64,
}

/// The kill the executor should carry out.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct KillCgroup {
    /// The victim cgroup.
    pub path: String,
    /// How.
    pub via: KillVia,
}

/// A kill decision.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Kill {
    /// The rule that fired.
    pub rule: String,
    /// The hook to run first, if one matches.
    pub hook: Option<PrekillHook>,
    /// The kill.
    pub kill: KillCgroup,
    /// True: report only, do not carry it out.
    pub dry_run: bool,
}

/// The outcome of one evaluation.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[non_exhaustive]
pub enum Verdict {
    /// No rule fired.
    Quiet,
    /// A previous kill's pause lasts until this time; no kill was decided.
    Paused {
        /// End of the pause.
        until: Duration,
    },
    /// These rules fired but none had a candidate left after `omit`.
    NoVictim {
        /// Names of the rules.
        rules: Vec<String>,
    },
    /// Kill this cgroup.
    Kill(Kill),
}

/// Matching globs of one rule.
#[derive(Debug, Clone)]
struct Lists {
    prefer: GlobSet,
    avoid: GlobSet,
    omit: GlobSet,
}

/// A validated policy with its state (held-time windows, previous sizes, pause).
#[derive(Debug, Clone)]
pub struct KillPolicy {
    rules: Vec<(KillRule, Lists)>,
    hooks: Vec<(PrekillHook, GlobSet)>,
    pause: Duration,
    dry_run: bool,
    /// (rule, detector) -> when its condition became true.
    since: BTreeMap<(usize, usize), Duration>,
    /// path -> (time, memory.current) at the previous tick.
    previous: BTreeMap<String, (Duration, u64)>,
    paused_until: Option<Duration>,
}

impl KillPolicy {
    /// Validates `rules` and `hooks` (field paths are `kill[i]…` and `prekill_hook[i]…`).
    /// `pause` is the wait after a kill; `dry_run` marks every kill as not carried out.
    pub fn new(
        rules: Vec<KillRule>,
        hooks: Vec<PrekillHook>,
        pause: Duration,
        dry_run: bool,
    ) -> Result<Self, PolicyError> {
        let mut compiled = Vec::with_capacity(rules.len());
        for (i, rule) in rules.into_iter().enumerate() {
            for (j, d) in rule.detectors.iter().enumerate() {
                validate_detector(d, &format!("kill[{i}].detectors[{j}]"))?;
            }
            let lists = Lists {
                prefer: globs(&rule.prefer, &format!("kill[{i}].prefer"))?,
                avoid: globs(&rule.avoid, &format!("kill[{i}].avoid"))?,
                omit: globs(&rule.omit, &format!("kill[{i}].omit"))?,
            };
            compiled.push((rule, lists));
        }
        let mut hooks_compiled = Vec::with_capacity(hooks.len());
        for (i, hook) in hooks.into_iter().enumerate() {
            let field = format!("prekill_hook[{i}]");
            if hook.command.is_empty() {
                return Err(invalid(format!("{field}.command"), "[]", "a program"));
            }
            if !(hook.timeout_s.is_finite() && hook.timeout_s >= 0.0) {
                return Err(invalid(
                    format!("{field}.timeout_s"),
                    hook.timeout_s,
                    "a non-negative number of seconds",
                ));
            }
            let set = globs(&hook.cgroups, &format!("{field}.cgroups"))?;
            hooks_compiled.push((hook, set));
        }
        Ok(Self {
            rules: compiled,
            hooks: hooks_compiled,
            pause,
            dry_run,
            since: BTreeMap::new(),
            previous: BTreeMap::new(),
            paused_until: None,
        })
    }

    /// Marks every later kill as dry-run (reported, not carried out) or not.
    pub fn set_dry_run(&mut self, dry_run: bool) {
        self.dry_run = dry_run;
    }

    /// The cgroups the rules watch (paths relative to the cgroup root), in rule order;
    /// a tick needs samples of these and of their descendants.
    pub fn watched(&self) -> impl Iterator<Item = &str> {
        self.rules.iter().map(|(rule, _)| rule.cgroup.as_str())
    }

    /// Watched cgroups of the rules that are absent from `tick` (their rules cannot fire);
    /// for the daemon to report.
    pub fn missing_cgroups<'a>(&'a self, tick: &Tick) -> Vec<&'a str> {
        self.rules
            .iter()
            .map(|(rule, _)| rule.cgroup.as_str())
            .filter(|path| !tick.cgroups.iter().any(|c| c.path == *path))
            .collect()
    }

    /// Runs every detector on `tick` and decides. A watched cgroup absent from the tick
    /// does not fire (its held time restarts).
    pub fn evaluate(&mut self, tick: &Tick) -> Verdict {
        let by_path: BTreeMap<&str, &CgroupSample> =
            tick.cgroups.iter().map(|c| (c.path.as_str(), c)).collect();
        let mut fired = Vec::new();
        for (i, (rule, _)) in self.rules.iter().enumerate() {
            let watched = by_path.get(rule.cgroup.as_str()).copied();
            let mut all = true;
            for (j, detector) in rule.detectors.iter().enumerate() {
                let held = match watched {
                    Some(sample) => detect(&mut self.since, (i, j), detector, sample, tick),
                    None => {
                        self.since.remove(&(i, j));
                        false
                    }
                };
                all &= held;
            }
            if all && watched.is_some() {
                fired.push(i);
            }
        }
        let verdict = self.decide(&fired, tick);
        self.previous = tick
            .cgroups
            .iter()
            .map(|c| (c.path.clone(), (tick.now, c.current)))
            .collect();
        verdict
    }

    fn decide(&mut self, fired: &[usize], tick: &Tick) -> Verdict {
        if fired.is_empty() {
            return Verdict::Quiet;
        }
        if let Some(until) = self.paused_until {
            if tick.now < until {
                return Verdict::Paused { until };
            }
            self.paused_until = None;
        }
        for &i in fired {
            let (rule, lists) = &self.rules[i];
            if let Some(victim) = self.choose(rule, lists, tick) {
                let hook = self
                    .hooks
                    .iter()
                    .find(|(_, set)| set.is_match(&victim))
                    .map(|(hook, _)| hook.clone());
                self.paused_until = Some(tick.now.saturating_add(self.pause));
                return Verdict::Kill(Kill {
                    rule: rule.name.clone(),
                    hook,
                    kill: KillCgroup {
                        path: victim,
                        via: rule.via,
                    },
                    dry_run: self.dry_run,
                });
            }
        }
        let rules = fired
            .iter()
            .map(|&i| self.rules[i].0.name.clone())
            .collect();
        Verdict::NoVictim { rules }
    }

    /// The victim: prefer-listed first, avoid-listed last, omit-listed never; within a tier
    /// the highest score, then the largest, then the first path in byte order.
    fn choose(&self, rule: &KillRule, lists: &Lists, tick: &Tick) -> Option<String> {
        let prefix = format!("{}/", rule.cgroup.trim_end_matches('/'));
        tick.cgroups
            .iter()
            .filter(|c| c.path.starts_with(&prefix) && !lists.omit.is_match(&c.path))
            .map(|c| {
                let tier = if lists.prefer.is_match(&c.path) {
                    2
                } else if lists.avoid.is_match(&c.path) {
                    0
                } else {
                    1
                };
                (tier, self.score(rule.select, c, tick.now), c)
            })
            .max_by(|(ta, sa, a), (tb, sb, b)| {
                ta.cmp(tb)
                    .then(sa.total_cmp(sb))
                    .then(a.current.cmp(&b.current))
                    .then(b.path.cmp(&a.path))
            })
            .map(|(_, _, c)| c.path.clone())
    }

    fn score(&self, select: Selection, c: &CgroupSample, now: Duration) -> f64 {
        match select {
            Selection::Largest => c.current as f64,
            Selection::MostPressure if c.full_avg10.is_nan() => 0.0,
            Selection::MostPressure => c.full_avg10,
            Selection::FastestGrowing => match self.previous.get(&c.path) {
                Some(&(then, before)) if now > then => {
                    (c.current as f64 - before as f64) / (now - then).as_secs_f64()
                }
                // First sight of a cgroup: no growth known yet.
                _ => 0.0,
            },
        }
    }
}
/// Whether `detector` fires; `since` holds when each condition became true.
fn detect(
    since: &mut BTreeMap<(usize, usize), Duration>,
    key: (usize, usize),
    detector: &Detector,
    sample: &CgroupSample,
    tick: &Tick,
) -> bool {
    match detector {
        Detector::PressureAbove {
            window_s,
            threshold_pct,
            duration_s,
        } => {
            let avg = match window_s {
                10 => sample.full_avg10,
                60 => sample.full_avg60,
                _ => sample.full_avg300,
            };
            if avg > *threshold_pct {
                let start = *since.entry(key).or_insert(tick.now);
                tick.now.saturating_sub(start).as_secs_f64() >= *duration_s
            } else {
                since.remove(&key);
                false
            }
        }
        Detector::MemoryAbove { bytes } => sample.current > *bytes,
        Detector::SwapFreeBelow { bytes, pct } => {
            if tick.swap_total == 0 {
                return false;
            }
            let below_bytes = bytes.is_some_and(|b| tick.swap_free < b);
            let free_pct = tick.swap_free as f64 * 100.0 / tick.swap_total as f64;
            let below_pct = pct.is_some_and(|p| free_pct < p);
            below_bytes || below_pct
        }
    }
}

fn invalid(field: String, value: impl ToString, expected: &'static str) -> PolicyError {
    InvalidParameter::new(field, value, expected).into()
}

fn percentage(x: f64) -> bool {
    x.is_finite() && (0.0..=100.0).contains(&x)
}

fn validate_detector(d: &Detector, field: &str) -> Result<(), PolicyError> {
    match d {
        Detector::PressureAbove {
            window_s,
            threshold_pct,
            duration_s,
        } => {
            if ![10, 60, 300].contains(window_s) {
                return Err(invalid(
                    format!("{field}.window_s"),
                    window_s,
                    "10, 60 or 300",
                ));
            }
            if !percentage(*threshold_pct) {
                return Err(invalid(
                    format!("{field}.threshold_pct"),
                    threshold_pct,
                    "a percentage in [0, 100]",
                ));
            }
            if !(duration_s.is_finite() && *duration_s >= 0.0) {
                return Err(invalid(
                    format!("{field}.duration_s"),
                    duration_s,
                    "a non-negative number of seconds",
                ));
            }
        }
        Detector::MemoryAbove { .. } => {}
        Detector::SwapFreeBelow { bytes, pct } => {
            if bytes.is_none() && pct.is_none() {
                return Err(invalid(field.to_string(), "{}", "one of bytes or pct"));
            }
            if let Some(p) = pct
                && !percentage(*p)
            {
                return Err(invalid(
                    format!("{field}.pct"),
                    p,
                    "a percentage in [0, 100]",
                ));
            }
        }
    }
    Ok(())
}

/// Compiles globs on cgroup paths; `field` names the list in errors.
pub(crate) fn globs(patterns: &[String], field: &str) -> Result<GlobSet, PolicyError> {
    let mut builder = GlobSetBuilder::new();
    for (k, pattern) in patterns.iter().enumerate() {
        let glob = Glob::new(pattern).map_err(|e| PolicyError::Glob {
            field: format!("{field}[{k}]"),
            value: pattern.clone(),
            message: e.kind().to_string(),
        })?;
        builder.add(glob);
    }
    builder.build().map_err(|e| PolicyError::Glob {
        field: field.to_string(),
        value: patterns.join(","),
        message: e.to_string(),
    })
}
