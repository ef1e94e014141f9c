//! The Senpai controller: a pure step function that sizes one cgroup by its `some` memory
//! pressure.
//!
//! [`step`] takes the controller's [`SenpaiState`], one [`Observation`] of the cgroup and the
//! [`SenpaiConfig`], and returns the next state and a [`Decision`] whose [`Action`] the caller
//! carries out (write `memory.high`, write `memory.reclaim`, or nothing). Nothing here reads
//! a file or a clock: the caller stamps each observation with a monotonic time.
//!
//! ```
//! use std::time::Duration;
//! use twine_oomd::senpai::{step, Action, Observation, SenpaiConfig, SenpaiState};
//!
//! let config = SenpaiConfig::default(); // Senpai's defaults, memory.high mode
//! let mut obs = Observation::new(Duration::ZERO, 1 << 30);
//! let (state, decision) = step(&SenpaiState::default(), &obs, &config);
//! let decision = decision.unwrap();
//! // The first step takes over memory.high at memory.current, as Senpai does.
//! assert_eq!(decision.action, Action::SetHigh(1 << 30));
//! obs.high = Some(1 << 30);
//! obs.now = Duration::from_secs(6);
//! let (state, decision) = step(&state, &obs, &config);
//! let decision = decision.unwrap();
//! // No stall in the interval: probe down by the full 1 %.
//! assert!(matches!(decision.action, Action::SetHigh(b) if b < 1 << 30));
//! let Action::SetHigh(lowered) = decision.action else { unreachable!() };
//! // On exit, memory.high goes back to what it was before (here: "max").
//! assert_eq!(state.exit(Some(lowered)), Action::RestoreHigh(None));
//! ```
//!
//! # The algorithm
//! It is `senpai.py` (facebookincubator/senpai) with the bounds of oomd's Senpai plugin; see
//! `../shared/references/oomd.md` §1.3 and §1.5. Stall (`some` total, µs) accumulates in an
//! integral. As soon as the integral reaches the target, the controller backs off (raises
//! `memory.high` by `min((err / coeff_backoff)² · max_backoff, max_backoff)`, where
//! `err = integral / target`); otherwise, once a whole interval has passed since the last
//! adjustment, it probes (lowers `memory.high` by `min((err / coeff_probe)² · max_probe,
//! max_probe)`, where `err = target / integral`). Every adjustment resets the integral.
//!
//! Deliberate differences from `senpai.py`:
//! - **Time is monotonic and the integral is scaled by elapsed time, not tick counts.**
//!   `senpai.py` counts one-second sleeps; here a probe happens once `interval` has elapsed
//!   on the caller's clock, and the stall of a late window is scaled to one interval
//!   (`integral · interval / elapsed`) before it is compared with the target, so a daemon that
//!   runs late does not probe harder than one on time.
//! - Sizes are aligned to the observed page size (not a fixed 4 KiB): the floor up, the ceiling
//!   and every target down, so the kernel's own rounding never looks like an external edit.
//! - Bounds follow oomd's plugin: floor `max(limit_min + unreclaimable, memory.min)`, ceiling
//!   `min(memory.current + limit_max, memory.max, MemTotal)`. A `memory.high` found outside
//!   them is clamped at once ([`Cause::Clamp`]); bounds that cross are an error, not a guess.
//!
//! # Modes
//! - [`Mode::High`]: stateful. The first step records the original `memory.high` and takes
//!   over at `memory.current`. A `memory.high` on disk that differs from the last value
//!   written is an external edit: the controller re-initialises from `memory.current`, as
//!   Senpai does, and **the edited value becomes the original** (someone set a new policy;
//!   [`SenpaiState::exit`] restores that, not a value from before it).
//! - [`Mode::Reclaim`]: stateless, like oomd's `immediate_backoff` and TMO. Once per interval,
//!   if `max(avg10, avg60)` of `some` is below `reclaim_pressure_pct`, it asks to reclaim
//!   `max_probe` of what lies above the floor. It never writes `memory.high`.

use std::time::Duration;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// Which file the controller acts through.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    /// Senpai proper: move `memory.high` down and up.
    #[default]
    High,
    /// Proactive reclaim through `memory.reclaim` (Linux 5.19+); `memory.high` untouched.
    Reclaim,
}

/// Senpai's parameters. [`Default`] gives Senpai's defaults (oomd.md §1.2, §1.5).
///
/// In TOML, durations are `interval_s` (seconds) and `pressure_ms` (milliseconds).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SenpaiConfig {
    /// Which file the controller acts through.
    pub mode: Mode,
    /// Time between probes (Senpai: 6 s).
    #[serde(rename = "interval_s", with = "secs")]
    pub interval: Duration,
    /// Target stall per interval (Senpai: 10 ms).
    #[serde(rename = "pressure_ms", with = "millis")]
    pub pressure: Duration,
    /// Largest share of `memory.high` one probe removes (Senpai: 0.01).
    pub max_probe: f64,
    /// Largest share of `memory.high` one backoff adds (Senpai: 1.0).
    pub max_backoff: f64,
    /// A probe is full-sized when stall is at most `pressure / coeff_probe` (Senpai: 10).
    pub coeff_probe: f64,
    /// A backoff is full-sized when stall is at least `pressure · coeff_backoff` (Senpai: 20).
    pub coeff_backoff: f64,
    /// Lowest `memory.high` above the unreclaimable memory (Senpai: 100 MiB).
    pub limit_min_bytes: u64,
    /// Highest `memory.high` above `memory.current` (oomd: 10 GiB).
    pub limit_max_bytes: u64,
    /// Reclaim mode only: reclaim while `some` avg10 and avg60 are below this percentage
    /// (oomd: 0.1).
    pub reclaim_pressure_pct: f64,
}

impl Default for SenpaiConfig {
    fn default() -> Self {
        Self {
            mode: Mode::High,
            interval: Duration::from_secs(6),
            pressure: Duration::from_millis(10),
            max_probe: 0.01,
            max_backoff: 1.0,
            coeff_probe: 10.0,
            coeff_backoff: 20.0,
            limit_min_bytes: 100 << 20,
            limit_max_bytes: 10 << 30,
            reclaim_pressure_pct: 0.1,
        }
    }
}

/// A parameter value that cannot work (controller, kill policy or config).
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("{field} = {value}: must be {expected}")]
#[non_exhaustive]
pub struct InvalidParameter {
    /// The parameter's path as spelled in TOML, e.g. `resize[0].max_probe`.
    pub field: String,
    /// The value given.
    pub value: String,
    /// What it must be.
    pub expected: &'static str,
}

impl InvalidParameter {
    /// The error for `field = value`, which must be `expected`.
    pub fn new(field: impl Into<String>, value: impl ToString, expected: &'static str) -> Self {
        Self {
            field: field.into(),
            value: value.to_string(),
            expected,
        }
    }
}

impl SenpaiConfig {
    /// Checks every parameter; the first impossible one is the error.
    pub fn validate(&self) -> Result<(), InvalidParameter> {
        let bad = |field: &str, value: String, expected| {
            Err(InvalidParameter::new(field, value, expected))
        };
        let in_unit = |x: f64| x.is_finite() && x > 0.0 && x <= 1.0;
        let positive = |x: f64| x.is_finite() && x > 0.0;
        if self.interval.is_zero() {
            return bad("interval_s", "0".into(), "greater than zero");
        }
        if self.pressure.is_zero() {
            return bad("pressure_ms", "0".into(), "greater than zero");
        }
        if !in_unit(self.max_probe) {
            return bad("max_probe", self.max_probe.to_string(), "in (0, 1]");
        }
        if !positive(self.max_backoff) {
            return bad("max_backoff", self.max_backoff.to_string(), "positive");
        }
        if !positive(self.coeff_probe) {
            return bad("coeff_probe", self.coeff_probe.to_string(), "positive");
        }
        if !positive(self.coeff_backoff) {
            return bad("coeff_backoff", self.coeff_backoff.to_string(), "positive");
        }
        if self.limit_min_bytes > self.limit_max_bytes {
            return bad(
                "limit_min_bytes",
                self.limit_min_bytes.to_string(),
                "at most limit_max_bytes",
            );
        }
        let pct = self.reclaim_pressure_pct;
        if !(pct.is_finite() && pct > 0.0 && pct <= 100.0) {
            return bad("reclaim_pressure_pct", pct.to_string(), "in (0, 100]");
        }
        Ok(())
    }
}

/// The `memory.stat` counters oomd's floor needs, in bytes.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct MemoryStat {
    /// `active_file`.
    pub active_file: u64,
    /// `inactive_file`.
    pub inactive_file: u64,
    /// `active_anon`.
    pub active_anon: u64,
    /// `inactive_anon`.
    pub inactive_anon: u64,
}

/// One look at a cgroup, as the daemon read it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Observation {
    /// Monotonic time since an arbitrary epoch fixed for the daemon's life.
    pub now: Duration,
    /// `memory.current`.
    pub current: u64,
    /// `memory.high`; `None` is `max`.
    pub high: Option<u64>,
    /// `memory.max`; `None` is `max`.
    pub max: Option<u64>,
    /// `memory.min`.
    pub min: u64,
    /// `MemTotal`, if the daemon bounds by it.
    pub mem_total: Option<u64>,
    /// `some total=` of `memory.pressure`, µs since the cgroup was created.
    pub some_total_us: u64,
    /// `some avg10=` (percent).
    pub some_avg10: f64,
    /// `some avg60=` (percent).
    pub some_avg60: f64,
    /// The `memory.stat` counters for the floor.
    pub stat: MemoryStat,
    /// Free swap usable by this cgroup, bytes.
    pub swap_free: u64,
    /// Whether anon memory can be swapped at all (swap present, swappiness > 0,
    /// `memory.swap.max` > 0).
    pub swap_usable: bool,
    /// The kernel's page size, bytes.
    pub page_size: u64,
}

impl Observation {
    /// An observation at `now` with `memory.current = current`, no pressure, no limits,
    /// no swap, 4 KiB pages and all of `current` counted as inactive page cache.
    pub fn new(now: Duration, current: u64) -> Self {
        Self {
            now,
            current,
            high: None,
            max: None,
            min: 0,
            mem_total: None,
            some_total_us: 0,
            some_avg10: 0.0,
            some_avg60: 0.0,
            stat: MemoryStat {
                inactive_file: current,
                ..MemoryStat::default()
            },
            swap_free: 0,
            swap_usable: false,
            page_size: 4096,
        }
    }

    /// The bounds oomd's Senpai plugin puts on `memory.high`, page-aligned inward.
    pub fn bounds(&self, config: &SenpaiConfig) -> Result<Bounds, ObservationError> {
        let page = self.page_size;
        if page == 0 {
            return Err(ObservationError::ZeroPageSize);
        }
        let s = &self.stat;
        let anon = if self.swap_usable {
            self.swap_free
                .min(s.active_anon.saturating_add(s.inactive_anon))
        } else {
            0
        };
        let reclaimable = s
            .active_file
            .saturating_add(s.inactive_file)
            .saturating_add(anon);
        let unreclaimable = self.current.saturating_sub(reclaimable);
        let floor = config
            .limit_min_bytes
            .saturating_add(unreclaimable)
            .max(self.min);
        let ceiling = [
            Some(self.current.saturating_add(config.limit_max_bytes)),
            self.max,
            self.mem_total,
        ]
        .into_iter()
        .flatten()
        .min()
        .unwrap_or(u64::MAX);
        let floor_aligned = floor
            .div_ceil(page)
            .checked_mul(page)
            .ok_or(ObservationError::EmptyBounds { floor, ceiling })?;
        let ceiling_aligned = align_down(ceiling, page);
        if floor_aligned > ceiling_aligned {
            return Err(ObservationError::EmptyBounds { floor, ceiling });
        }
        Ok(Bounds {
            floor: floor_aligned,
            ceiling: ceiling_aligned,
        })
    }
}

fn align_down(bytes: u64, page: u64) -> u64 {
    bytes - bytes % page
}

/// Where `memory.high` may go for one observation, both page-aligned.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Bounds {
    /// Lowest allowed value.
    pub floor: u64,
    /// Highest allowed value.
    pub ceiling: u64,
}

impl Bounds {
    fn clamp(&self, bytes: u64) -> u64 {
        bytes.clamp(self.floor, self.ceiling)
    }
}

/// What the caller should do.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Action {
    /// Nothing this time.
    None,
    /// Write this many bytes to `memory.high`.
    SetHigh(u64),
    /// Write this many bytes to `memory.reclaim`.
    Reclaim(u64),
    /// Put `memory.high` back as it was before the controller: bytes, or `None` for `max`.
    RestoreHigh(Option<u64>),
}

/// Why the controller chose its action.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub enum Cause {
    /// First step: take over `memory.high` at `memory.current`.
    Init,
    /// `memory.high` on disk was not the value last written: start again from
    /// `memory.current`.
    ExternalEdit,
    /// Stall reached the target: raise `memory.high`.
    Backoff,
    /// A whole interval under target: lower `memory.high`, or reclaim.
    Probe,
    /// `memory.high` was outside moved bounds: bring it inside.
    Clamp,
    /// Within the interval, under target: wait.
    Wait,
    /// Reclaim mode: pressure averages at or above the threshold, no reclaim.
    Pressured,
    /// Reclaim mode: nothing above the floor worth a page.
    AtFloor,
}

/// The outcome of one [`step`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Decision {
    /// What to do.
    pub action: Action,
    /// Why.
    pub cause: Cause,
    /// The bounds in force for this observation.
    pub bounds: Bounds,
    /// Stall accumulated since the last adjustment (before this step's reset), µs.
    pub stall_us: u64,
}

/// An observation the controller could not use.
///
/// | variant | what [`step`] does |
/// | --- | --- |
/// | `TimeWentBackwards`, `ZeroPageSize`, `BadAverage` | ignores the observation: state unchanged |
/// | `StallTotalWentBackwards` | drops the integral and restarts the window from this observation; no action. A recreated cgroup then shows a `memory.high` that is not the last written, so the next step treats it as an external edit (the new value becomes the original); a mere counter glitch keeps the original |
/// | `EmptyBounds` | keeps the stall baseline, writes nothing |
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[non_exhaustive]
pub enum ObservationError {
    /// `now` was earlier than the previous observation's.
    #[error("time went backwards: {now:?} after {previous:?}")]
    TimeWentBackwards {
        /// The previous observation's time.
        previous: Duration,
        /// This observation's time.
        now: Duration,
    },
    /// The `some` total fell: the cgroup was recreated or the counter reset.
    #[error("some stall total went backwards: {now} µs after {previous} µs")]
    StallTotalWentBackwards {
        /// The previous total.
        previous: u64,
        /// This total.
        now: u64,
    },
    /// A page size of zero.
    #[error("page size is 0")]
    ZeroPageSize,
    /// A pressure average that is not a finite percentage in `[0, 100]`.
    #[error("some {field} = {value}: not a percentage")]
    BadAverage {
        /// `avg10` or `avg60`.
        field: &'static str,
        /// The value.
        value: f64,
    },
    /// The floor lies above the ceiling (for example `memory.min` above `memory.max`).
    #[error("floor {floor} is above ceiling {ceiling}")]
    EmptyBounds {
        /// Unaligned floor.
        floor: u64,
        /// Unaligned ceiling.
        ceiling: u64,
    },
}

/// What the controller remembers between steps. [`Default`] is the state before the first
/// step.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct SenpaiState {
    /// Time of the previous observation.
    last_now: Option<Duration>,
    /// `some` total of the previous observation.
    last_total: Option<u64>,
    /// Stall since the window started, µs.
    integral_us: u64,
    /// Start of the current window (last adjustment).
    window_start: Duration,
    /// High mode: the last value written to `memory.high`.
    written: Option<u64>,
    /// High mode: `memory.high` to restore on exit (`Some(None)` is `max`).
    original: Option<Option<u64>>,
}

impl SenpaiState {
    /// The action that leaves `memory.high` as it was before the controller (or as an
    /// external edit last set it), given `high_now`, the `memory.high` read just before.
    ///
    /// [`Action::None`] if the controller never wrote `memory.high`, or if `high_now` is not
    /// the value it last wrote: someone edited it since the last step, and their value stands.
    /// Surviving a crash of the daemon itself (restoring after a restart) needs the original
    /// persisted by the daemon; this state lives in memory only.
    pub fn restore(&self, high_now: Option<u64>) -> Action {
        match (self.written, self.original) {
            (Some(written), Some(original)) if high_now == Some(written) => {
                Action::RestoreHigh(original)
            }
            _ => Action::None,
        }
    }

    /// Ends control of the cgroup; the returned action is [`SenpaiState::restore`]'s.
    pub fn exit(self, high_now: Option<u64>) -> Action {
        self.restore(high_now)
    }

    /// The `memory.high` the controller will restore on exit, once it has taken over
    /// (`Some(None)` is `max`). A daemon that must survive its own crash persists this.
    pub fn original(&self) -> Option<Option<u64>> {
        self.original
    }

    /// The value the controller last wrote to `memory.high`, if any.
    pub fn written(&self) -> Option<u64> {
        self.written
    }
}

/// One controller step: the state to continue from, and the decision or why the observation
/// was unusable (see [`ObservationError`] for what the state does then). The config is assumed
/// [validated](SenpaiConfig::validate); an invalid one gives odd sizes but never a panic.
pub fn step(
    state: &SenpaiState,
    obs: &Observation,
    config: &SenpaiConfig,
) -> (SenpaiState, Result<Decision, ObservationError>) {
    if let Some(previous) = state.last_now
        && obs.now < previous
    {
        let err = ObservationError::TimeWentBackwards {
            previous,
            now: obs.now,
        };
        return (state.clone(), Err(err));
    }
    for (field, value) in [("avg10", obs.some_avg10), ("avg60", obs.some_avg60)] {
        if !(value.is_finite() && (0.0..=100.0).contains(&value)) {
            return (
                state.clone(),
                Err(ObservationError::BadAverage { field, value }),
            );
        }
    }
    let mut next = state.clone();
    next.last_now = Some(obs.now);
    next.last_total = Some(obs.some_total_us);
    match state.last_total {
        Some(previous) if obs.some_total_us < previous => {
            next.integral_us = 0;
            next.window_start = obs.now;
            let err = ObservationError::StallTotalWentBackwards {
                previous,
                now: obs.some_total_us,
            };
            return (next, Err(err));
        }
        Some(previous) => {
            next.integral_us = state
                .integral_us
                .saturating_add(obs.some_total_us - previous);
        }
        None => next.window_start = obs.now,
    }
    let bounds = match obs.bounds(config) {
        Ok(bounds) => bounds,
        Err(err) => return (next, Err(err)),
    };
    let stall_us = next.integral_us;
    let (action, cause) = match config.mode {
        Mode::High => step_high(&mut next, obs, config, bounds),
        Mode::Reclaim => step_reclaim(&mut next, obs, config, bounds),
    };
    let decision = Decision {
        action,
        cause,
        bounds,
        stall_us,
    };
    (next, Ok(decision))
}

fn step_high(
    next: &mut SenpaiState,
    obs: &Observation,
    config: &SenpaiConfig,
    bounds: Bounds,
) -> (Action, Cause) {
    let page = obs.page_size;
    let take_over = |next: &mut SenpaiState, cause| {
        let bytes = align_down(bounds.clamp(obs.current), page).max(bounds.floor);
        next.written = Some(bytes);
        next.integral_us = 0;
        next.window_start = obs.now;
        (Action::SetHigh(bytes), cause)
    };
    let Some(written) = next.written else {
        if next.original.is_none() {
            next.original = Some(obs.high);
        }
        return take_over(next, Cause::Init);
    };
    if obs.high != Some(written) {
        next.original = Some(obs.high);
        return take_over(next, Cause::ExternalEdit);
    }
    let target_us = duration_us(config.pressure);
    let elapsed = obs.now.saturating_sub(next.window_start);
    let (wanted, cause) = if next.integral_us >= target_us {
        let err = ratio(next.integral_us, target_us);
        let adj =
            ((err / config.coeff_backoff).powi(2) * config.max_backoff).min(config.max_backoff);
        (written.saturating_add(share(written, adj)), Cause::Backoff)
    } else if elapsed >= config.interval {
        // Scale a late window's stall to one interval (see the module docs).
        let per_interval = next.integral_us as f64 * config.interval.as_secs_f64()
            / elapsed.as_secs_f64().max(f64::MIN_POSITIVE);
        let err = target_us as f64 / per_interval.max(1.0);
        let adj = ((err / config.coeff_probe).powi(2) * config.max_probe).min(config.max_probe);
        (written.saturating_sub(share(written, adj)), Cause::Probe)
    } else if bounds.clamp(written) != written {
        (written, Cause::Clamp)
    } else {
        return (Action::None, Cause::Wait);
    };
    if cause != Cause::Clamp {
        next.integral_us = 0;
        next.window_start = obs.now;
    }
    let bytes = align_down(bounds.clamp(wanted), page).max(bounds.floor);
    let cause = match cause {
        Cause::Backoff if bytes < written => Cause::Clamp,
        Cause::Probe if bytes > written => Cause::Clamp,
        other => other,
    };
    if bytes == written {
        return (Action::None, cause);
    }
    next.written = Some(bytes);
    (Action::SetHigh(bytes), cause)
}

fn step_reclaim(
    next: &mut SenpaiState,
    obs: &Observation,
    config: &SenpaiConfig,
    bounds: Bounds,
) -> (Action, Cause) {
    if obs.now.saturating_sub(next.window_start) < config.interval {
        return (Action::None, Cause::Wait);
    }
    next.integral_us = 0;
    next.window_start = obs.now;
    if obs.some_avg10.max(obs.some_avg60) >= config.reclaim_pressure_pct {
        return (Action::None, Cause::Pressured);
    }
    let above = obs.current.saturating_sub(bounds.floor);
    let bytes = align_down(share(above, config.max_probe), obs.page_size);
    if bytes == 0 {
        return (Action::None, Cause::AtFloor);
    }
    (Action::Reclaim(bytes), Cause::Probe)
}

fn duration_us(d: Duration) -> u64 {
    u64::try_from(d.as_micros()).unwrap_or(u64::MAX)
}

fn ratio(a: u64, b: u64) -> f64 {
    a as f64 / (b.max(1) as f64)
}

/// `bytes · fraction`, rounded down, saturating at `u64::MAX`; 0 for a fraction that is not
/// a positive finite number.
pub(crate) fn share(bytes: u64, fraction: f64) -> u64 {
    let x = bytes as f64 * fraction;
    if !(x.is_finite() && x > 0.0) {
        return 0;
    }
    // The `as` cast saturates at u64::MAX; x is finite and positive here.
    #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)]
    let bytes = x as u64;
    bytes
}

/// Serde for a [`Duration`] as float seconds.
mod secs {
    use super::{Deserialize, Deserializer, Duration, Serializer};
    pub(super) fn serialize<S: Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_f64(d.as_secs_f64())
    }
    pub(super) fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        let x = f64::deserialize(d)?;
        Duration::try_from_secs_f64(x).map_err(|e| serde::de::Error::custom(format!("{x}: {e}")))
    }
}

/// Serde for a [`Duration`] as float milliseconds.
mod millis {
    use super::{Deserialize, Deserializer, Duration, Serializer};
    pub(super) fn serialize<S: Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_f64(d.as_secs_f64() * 1000.0)
    }
    pub(super) fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        let x = f64::deserialize(d)?;
        Duration::try_from_secs_f64(x / 1000.0)
            .map_err(|e| serde::de::Error::custom(format!("{x}: {e}")))
    }
}
