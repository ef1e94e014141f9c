//! A workload and kernel model that the Senpai controller drives over simulated time.
//!
//! The [`Workload`] has a hot set, touched in full every `hot_period_s`, and a cold set,
//! touched once at start; each is part anonymous memory and part page cache. The simulated
//! kernel reclaims when `memory.high` is below the resident size or when `memory.reclaim` is
//! written, evicting in this order: cold page cache, cold anon (only with swap), hot page cache,
//! hot anon (only with swap). Evicted hot pages refault as the workload touches them, each
//! costing `file_refault_us` or `swapin_us` of `some` stall, and become resident again. If
//! `memory.high` is below what can be evicted at all, the workload is throttled for the
//! whole tick. Cold pages are never touched again, so they never refault.
//!
//! [`simulate`] steps the model and the controller once per simulated second (the controller's
//! own `interval` decides when it probes) and returns a [`SimReport`]: one [`SimRow`] per tick
//! and a [`SimSummary`]. Everything is plain serde data for `twine oomd simulate`.
//!
//! The model is deliberately simple: eviction is perfectly cold-first, and PSI `some` averages
//! are exponential moving averages of the simulated stall (the kernel's avg10/avg60 shape).

use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::senpai::{
    Action, InvalidParameter, MemoryStat, Observation, ObservationError, SenpaiConfig, SenpaiState,
    step,
};

const MIB: u64 = 1 << 20;

/// The simulated workload and machine.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Workload {
    /// Hot anonymous memory, bytes.
    pub hot_anon: u64,
    /// Hot page cache, bytes.
    pub hot_file: u64,
    /// Cold anonymous memory, bytes.
    pub cold_anon: u64,
    /// Cold page cache, bytes.
    pub cold_file: u64,
    /// Swap space, bytes; 0 means no swap (anon memory cannot be evicted).
    pub swap: u64,
    /// Seconds in which the workload touches its whole hot set.
    pub hot_period_s: f64,
    /// Stall per page-cache refault, µs.
    pub file_refault_us: f64,
    /// Stall per swap-in, µs.
    pub swapin_us: f64,
    /// Page size, bytes.
    pub page_size: u64,
    /// Simulated time, seconds.
    pub duration_s: u64,
}

impl Default for Workload {
    /// 200 MiB hot (half anon, half cache), 1 GiB cold (likewise), 4 GiB of swap, the hot
    /// set touched every 10 s, 200 µs per cache refault, 50 µs per swap-in (SSD-ish and
    /// zswap-ish), 4 KiB pages, 10 minutes.
    fn default() -> Self {
        Self {
            hot_anon: 100 * MIB,
            hot_file: 100 * MIB,
            cold_anon: 512 * MIB,
            cold_file: 512 * MIB,
            swap: 4096 * MIB,
            hot_period_s: 10.0,
            file_refault_us: 200.0,
            swapin_us: 50.0,
            page_size: 4096,
            duration_s: 600,
        }
    }
}

/// Why a simulation could not run.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[non_exhaustive]
pub enum SimError {
    /// A controller or workload parameter is impossible (workload fields are named
    /// `workload.FIELD`).
    #[error(transparent)]
    Invalid(#[from] InvalidParameter),
    /// The controller rejected an observation (a bug in the model).
    #[error("controller at {t_s} s: {error}")]
    Controller {
        /// Simulated time, seconds.
        t_s: u64,
        /// The rejection.
        error: ObservationError,
    },
}

/// One simulated second.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SimRow {
    /// Simulated time, seconds.
    pub t_s: u64,
    /// `memory.current` after the tick, bytes.
    pub current: u64,
    /// `memory.high` after the tick; `None` is `max`.
    pub high: Option<u64>,
    /// `some` stall during the tick, µs.
    pub stall_us: u64,
    /// What the controller did at the start of the tick.
    pub action: Action,
}

/// What the run achieved.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SimSummary {
    /// Cold bytes no longer resident at the end.
    pub cold_given_back: u64,
    /// `cold_given_back` over the cold set.
    pub cold_given_back_share: f64,
    /// Hot bytes not resident at the end.
    pub hot_missing: u64,
    /// Total `some` stall, µs.
    pub total_stall_us: u64,
    /// Mean stall per controller interval, µs (the target is `pressure`).
    pub mean_stall_per_interval_us: f64,
    /// First time at which 90 % of the cold set had been given back, seconds; `None` if never.
    pub converged_at_s: Option<u64>,
}

/// A whole run.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SimReport {
    /// The workload simulated.
    pub workload: Workload,
    /// The controller's parameters.
    pub config: SenpaiConfig,
    /// One row per simulated second.
    pub rows: Vec<SimRow>,
    /// The outcome.
    pub summary: SimSummary,
}

/// Resident bytes by class, in eviction order.
#[derive(Debug, Clone, Copy)]
struct Resident {
    /// cold file, cold anon, hot file, hot anon.
    bytes: [u64; 4],
}

const COLD_FILE: usize = 0;
const COLD_ANON: usize = 1;
const HOT_FILE: usize = 2;
const HOT_ANON: usize = 3;

struct Kernel<'a> {
    w: &'a Workload,
    resident: Resident,
    swapped: u64,
    high: Option<u64>,
    total_stall_us: f64,
    avg10: f64,
    avg60: f64,
    /// Fractional refault bytes carried to the next tick, per hot class.
    carry: [f64; 2],
}

impl Kernel<'_> {
    fn current(&self) -> u64 {
        self.resident
            .bytes
            .iter()
            .fold(0, |a, &b| a.saturating_add(b))
    }

    /// Cold bytes (of `cold` in all) no longer resident.
    fn cold_given_back(&self, cold: u64) -> u64 {
        let r = &self.resident.bytes;
        cold.saturating_sub(r[COLD_FILE].saturating_add(r[COLD_ANON]))
    }

    fn evictable(&self, class: usize) -> bool {
        class == COLD_FILE || class == HOT_FILE || self.w.swap > 0
    }

    /// Evicts up to `bytes`, cold first; returns what was evicted.
    fn evict(&mut self, bytes: u64) -> u64 {
        let mut left = bytes;
        for class in [COLD_FILE, COLD_ANON, HOT_FILE, HOT_ANON] {
            if left == 0 || !self.evictable(class) {
                continue;
            }
            let mut take = self.resident.bytes[class].min(left);
            if class == COLD_ANON || class == HOT_ANON {
                take = take.min(self.w.swap.saturating_sub(self.swapped));
                self.swapped = self.swapped.saturating_add(take);
            }
            self.resident.bytes[class] -= take;
            left -= take;
        }
        bytes - left
    }

    /// Enforces `memory.high`; returns true if it could not (the workload is throttled).
    fn enforce_high(&mut self) -> bool {
        let Some(high) = self.high else { return false };
        let over = self.current().saturating_sub(high);
        over > 0 && self.evict(over) < over
    }

    /// One second of the workload: hot refaults and their stall, then `memory.high`.
    fn run_second(&mut self) -> f64 {
        let page = self.w.page_size;
        let mut stall = 0.0;
        for (k, (class, size, cost)) in [
            (HOT_FILE, self.w.hot_file, self.w.file_refault_us),
            (HOT_ANON, self.w.hot_anon, self.w.swapin_us),
        ]
        .into_iter()
        .enumerate()
        {
            let missing = size.saturating_sub(self.resident.bytes[class]);
            self.carry[k] += missing as f64 / self.w.hot_period_s;
            let pages = (self.carry[k] / page as f64).floor();
            self.carry[k] -= pages * page as f64;
            let bytes = crate::senpai::share(page, pages).min(missing);
            self.resident.bytes[class] += bytes;
            if class == HOT_ANON {
                self.swapped = self.swapped.saturating_sub(bytes);
            }
            stall += (bytes / page) as f64 * cost;
        }
        if self.enforce_high() {
            stall = 1e6;
        }
        stall.min(1e6)
    }

    fn observe(&self, now: Duration) -> Observation {
        let r = &self.resident.bytes;
        let mut obs = Observation::new(now, self.current());
        obs.high = self.high;
        #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)]
        let total = self.total_stall_us as u64; // finite, non-negative, saturating
        obs.some_total_us = total;
        obs.some_avg10 = self.avg10;
        obs.some_avg60 = self.avg60;
        obs.stat = MemoryStat {
            active_file: r[HOT_FILE],
            inactive_file: r[COLD_FILE],
            active_anon: r[HOT_ANON],
            inactive_anon: r[COLD_ANON],
        };
        obs.swap_usable = self.w.swap > 0;
        obs.swap_free = self.w.swap.saturating_sub(self.swapped);
        obs.page_size = self.w.page_size;
        obs
    }
}

fn check(w: &Workload) -> Result<(), SimError> {
    let bad = |field: &str, value: String, expected| {
        Err(InvalidParameter::new(format!("workload.{field}"), value, expected).into())
    };
    if w.page_size == 0 {
        return bad("page_size", "0".into(), "positive");
    }
    if [w.hot_anon, w.hot_file, w.cold_anon, w.cold_file]
        .iter()
        .try_fold(0u64, |a, &b| a.checked_add(b))
        .is_none()
    {
        return bad(
            "hot_anon + hot_file + cold_anon + cold_file",
            "overflow".into(),
            "at most 2^64 - 1",
        );
    }
    for (field, x) in [
        ("hot_period_s", w.hot_period_s),
        ("file_refault_us", w.file_refault_us),
        ("swapin_us", w.swapin_us),
    ] {
        if !(x.is_finite() && x > 0.0) {
            return bad(field, x.to_string(), "a positive number");
        }
    }
    if w.duration_s > 7 * 24 * 3600 {
        return bad("duration_s", w.duration_s.to_string(), "at most a week");
    }
    Ok(())
}

/// Runs `workload` under the controller with `config` and reports what happened.
pub fn simulate(workload: &Workload, config: &SenpaiConfig) -> Result<SimReport, SimError> {
    config.validate()?;
    check(workload)?;
    let w = workload;
    let mut kernel = Kernel {
        w,
        resident: Resident {
            bytes: [w.cold_file, w.cold_anon, w.hot_file, w.hot_anon],
        },
        swapped: 0,
        high: None,
        total_stall_us: 0.0,
        avg10: 0.0,
        avg60: 0.0,
        carry: [0.0; 2],
    };
    let cold = w.cold_anon.saturating_add(w.cold_file);
    let mut state = SenpaiState::default();
    let mut rows = Vec::new();
    let mut converged_at_s = None;
    for t in 0..=w.duration_s {
        let now = Duration::from_secs(t);
        let (next, decision) = step(&state, &kernel.observe(now), config);
        state = next;
        let action = decision
            .map_err(|error| SimError::Controller { t_s: t, error })?
            .action;
        match action {
            Action::SetHigh(b) => kernel.high = Some(b),
            Action::RestoreHigh(b) => kernel.high = b,
            Action::Reclaim(b) => {
                kernel.evict(b);
            }
            Action::None => {}
        }
        let stall = kernel.run_second();
        kernel.total_stall_us += stall;
        let pct = stall / 1e4; // µs per second -> percent
        kernel.avg10 += (pct - kernel.avg10) * (1.0 - (-0.1f64).exp());
        kernel.avg60 += (pct - kernel.avg60) * (1.0 - (-1.0f64 / 60.0).exp());
        let given_back = kernel.cold_given_back(cold);
        if converged_at_s.is_none() && given_back as f64 >= 0.9 * cold as f64 {
            converged_at_s = Some(t);
        }
        #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)]
        let stall_us = stall as u64; // in [0, 1e6]
        rows.push(SimRow {
            t_s: t,
            current: kernel.current(),
            high: kernel.high,
            stall_us,
            action,
        });
    }
    let r = &kernel.resident.bytes;
    let cold_given_back = kernel.cold_given_back(cold);
    let hot = w.hot_anon.saturating_add(w.hot_file);
    let intervals = (w.duration_s as f64 + 1.0) / config.interval.as_secs_f64();
    #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)]
    let total_stall_us = kernel.total_stall_us as u64;
    let summary = SimSummary {
        cold_given_back,
        cold_given_back_share: if cold == 0 {
            1.0
        } else {
            cold_given_back as f64 / cold as f64
        },
        hot_missing: hot.saturating_sub(r[HOT_FILE].saturating_add(r[HOT_ANON])),
        total_stall_us,
        mean_stall_per_interval_us: kernel.total_stall_us / intervals,
        converged_at_s,
    };
    Ok(SimReport {
        workload: w.clone(),
        config: config.clone(),
        rows,
        summary,
    })
}
