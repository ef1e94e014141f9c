//! Property tests of the Senpai controller over random observation sequences.
//!
//! The number of cases follows `PROPTEST_CASES` (proptest's default config reads it).

use std::time::Duration;

use proptest::prelude::*;
use twine_oomd::senpai::{
    Action, Cause, MemoryStat, Mode, Observation, SenpaiConfig, SenpaiState, step,
};

const MIB: u64 = 1 << 20;
const GIB: u64 = 1 << 30;

/// What happens before one step.
#[derive(Debug, Clone)]
struct Event {
    dt_ms: u64,
    stall_us: u64,
    current: u64,
    min: u64,
    max: Option<u64>,
    mem_total: Option<u64>,
    file_share: u8,
    anon_share: u8,
    swap_free: u64,
    swap_usable: bool,
    avg10: f64,
    /// External edit of memory.high before this step: `Some(None)` writes "max".
    edit: Option<Option<u64>>,
    /// The stall counter resets (the cgroup was recreated: memory.high goes back to max).
    recreate: bool,
    /// The clock goes back by this much (garbage).
    time_back_ms: Option<u64>,
    bad_average: bool,
}

prop_compose! {
    fn event()(
        dt_ms in prop_oneof![3 => 0u64..2_000, 1 => 0u64..30_000],
        stall_us in prop_oneof![4 => 0u64..3_000, 2 => 0u64..30_000, 1 => 0u64..2_000_000],
        current in prop_oneof![Just(0u64), 0u64..64 * GIB, Just(u64::MAX)],
        min in prop_oneof![3 => Just(0u64), 1 => 0u64..4 * GIB, 1 => Just(u64::MAX)],
        max in proptest::option::of(prop_oneof![0u64..64 * GIB, Just(u64::MAX)]),
        mem_total in proptest::option::of(0u64..128 * GIB),
        shares in (0u8..=100, 0u8..=100),
        swap in (prop_oneof![0u64..8 * GIB, Just(u64::MAX)], any::<bool>()),
        avg10 in 0.0f64..100.0,
        edit in proptest::option::weighted(
            0.05,
            proptest::option::of((0u64..16 * GIB).prop_map(|x| x & !0xFFFF)),
        ),
        recreate in proptest::bool::weighted(0.02),
        time_back_ms in proptest::option::weighted(0.02, 1u64..10_000),
        bad_average in proptest::bool::weighted(0.02),
    ) -> Event {
        Event {
            dt_ms, stall_us, current, min, max, mem_total,
            file_share: shares.0, anon_share: shares.1, swap_free: swap.0, swap_usable: swap.1,
            avg10, edit, recreate, time_back_ms, bad_average,
        }
    }
}

fn part(x: u64, share: u8) -> u64 {
    x / 100 * u64::from(share) + x % 100 * u64::from(share) / 100
}

fn config(mode: Mode) -> impl Strategy<Value = SenpaiConfig> {
    (
        1u64..20_000,
        1u64..100_000,
        0.001f64..1.0,
        0.01f64..2.0,
        0u64..2 * GIB,
        prop_oneof![Just(10 * GIB), 2 * GIB..100 * GIB],
    )
        .prop_map(
            move |(interval_ms, pressure_us, max_probe, max_backoff, min, max)| SenpaiConfig {
                mode,
                interval: Duration::from_millis(interval_ms),
                pressure: Duration::from_micros(pressure_us),
                max_probe,
                max_backoff,
                limit_min_bytes: min,
                limit_max_bytes: max,
                ..SenpaiConfig::default()
            },
        )
}

/// A fake cgroup that applies the controller's actions.
struct Run {
    now: Duration,
    total: u64,
    high: Option<u64>,
    /// What exit must leave: the value before the controller, or the last external edit.
    original: Option<u64>,
    page: u64,
}

fn observe(run: &Run, e: &Event) -> Observation {
    let file = part(e.current, e.file_share);
    let anon = part(e.current - file, e.anon_share);
    let mut obs = Observation::new(run.now, e.current);
    obs.high = run.high;
    obs.max = e.max;
    obs.min = e.min;
    obs.mem_total = e.mem_total;
    obs.some_total_us = run.total;
    obs.some_avg10 = if e.bad_average { f64::NAN } else { e.avg10 };
    obs.some_avg60 = e.avg10 / 2.0;
    obs.stat = MemoryStat {
        active_file: file / 2,
        inactive_file: file - file / 2,
        active_anon: anon / 3,
        inactive_anon: anon - anon / 3,
    };
    obs.swap_free = e.swap_free;
    obs.swap_usable = e.swap_usable;
    obs.page_size = run.page;
    obs
}

fn drive(
    config: &SenpaiConfig,
    page: u64,
    initial: Option<u64>,
    events: &[Event],
) -> Result<(), TestCaseError> {
    let mut run = Run {
        now: Duration::from_secs(1000),
        total: 5_000_000,
        high: initial,
        original: initial,
        page,
    };
    let mut state = SenpaiState::default();
    for e in events {
        if let Some(edit) = e.edit
            && edit != run.high
        {
            run.high = edit;
            run.original = edit;
        }
        if e.recreate {
            run.total = 0;
            if run.high.is_some() {
                run.high = None;
                run.original = None;
            }
        } else {
            run.total = run.total.saturating_add(e.stall_us);
        }
        run.now = match e.time_back_ms {
            Some(back) => run.now.saturating_sub(Duration::from_millis(back)),
            None => run.now + Duration::from_millis(e.dt_ms),
        };
        let obs = observe(&run, e);
        let before = state.written();
        let (next, decision) = step(&state, &obs, config);
        // Deterministic: the same input gives the same output.
        let (again, decision_again) = step(&state, &obs, config);
        prop_assert_eq!(&next, &again);
        // Debug, not ==: a rejected NaN average is not equal to itself.
        prop_assert_eq!(format!("{decision:?}"), format!("{decision_again:?}"));
        state = next;
        let Ok(d) = decision else { continue };
        prop_assert!(d.bounds.floor <= d.bounds.ceiling);
        prop_assert_eq!(d.bounds.floor % page, 0);
        prop_assert_eq!(d.bounds.ceiling % page, 0);
        prop_assert!(d.bounds.floor >= obs.min.min(d.bounds.ceiling));
        prop_assert!(d.bounds.ceiling <= obs.max.unwrap_or(u64::MAX));
        prop_assert!(d.bounds.ceiling <= obs.mem_total.unwrap_or(u64::MAX));
        prop_assert!(d.bounds.ceiling <= obs.current.saturating_add(config.limit_max_bytes));
        match d.action {
            Action::SetHigh(b) => {
                prop_assert_eq!(config.mode, Mode::High);
                prop_assert!(b >= d.bounds.floor, "{} below floor {:?}", b, d.bounds);
                prop_assert!(b <= d.bounds.ceiling, "{} above ceiling {:?}", b, d.bounds);
                prop_assert!(b >= obs.min && b <= obs.max.unwrap_or(u64::MAX));
                prop_assert_eq!(b % page, 0);
                if let Some(before) = before {
                    match d.cause {
                        Cause::Backoff => {
                            prop_assert!(b >= before, "backoff lowered {} -> {}", before, b)
                        }
                        Cause::Probe => {
                            prop_assert!(b <= before, "probe raised {} -> {}", before, b)
                        }
                        _ => {}
                    }
                }
                run.high = Some(b);
            }
            Action::Reclaim(b) => {
                prop_assert_eq!(config.mode, Mode::Reclaim);
                prop_assert!(b > 0);
                prop_assert_eq!(b % page, 0);
                prop_assert!(b <= obs.current.saturating_sub(d.bounds.floor));
            }
            Action::RestoreHigh(_) => prop_assert!(false, "step never restores"),
            Action::None => {}
        }
        if config.mode == Mode::Reclaim {
            prop_assert_eq!(state.written(), None);
        }
    }
    // Exit leaves the original (never a lowered value).
    match state.exit(run.high) {
        Action::RestoreHigh(h) => run.high = h,
        Action::None => {}
        other => prop_assert!(false, "exit gave {:?}", other),
    }
    prop_assert_eq!(run.high, run.original);
    Ok(())
}

proptest! {
    #[test]
    fn high_mode_invariants(
        config in config(Mode::High),
        page in prop_oneof![Just(4096u64), Just(16384), Just(65536)],
        initial in proptest::option::of((0u64..64 * GIB).prop_map(|x| x & !0xFFFF)),
        events in proptest::collection::vec(event(), 0..120),
    ) {
        drive(&config, page, initial, &events)?;
    }

    #[test]
    fn reclaim_mode_invariants(
        config in config(Mode::Reclaim),
        page in prop_oneof![Just(4096u64), Just(65536)],
        initial in proptest::option::of((0u64..64 * GIB).prop_map(|x| x & !0xFFFF)),
        events in proptest::collection::vec(event(), 0..120),
    ) {
        drive(&config, page, initial, &events)?;
    }

    /// No panic on any input, even an unvalidated config and a zero or odd page size.
    #[test]
    fn never_panics(
        interval_ns in any::<u64>(),
        pressure_ns in any::<u64>(),
        floats in proptest::array::uniform5(any::<f64>()),
        limits in (any::<u64>(), any::<u64>()),
        mode in prop_oneof![Just(Mode::High), Just(Mode::Reclaim)],
        obs in proptest::collection::vec(
            (any::<u64>(), any::<u64>(), any::<Option<u64>>(), any::<Option<u64>>(), any::<u64>(),
             any::<[u64; 4]>(), any::<u64>(), any::<f64>(), any::<u64>()),
            1..20,
        ),
    ) {
        let config = SenpaiConfig {
            mode,
            interval: Duration::from_nanos(interval_ns),
            pressure: Duration::from_nanos(pressure_ns),
            max_probe: floats[0],
            max_backoff: floats[1],
            coeff_probe: floats[2],
            coeff_backoff: floats[3],
            limit_min_bytes: limits.0,
            limit_max_bytes: limits.1,
            reclaim_pressure_pct: floats[4],
        };
        let mut state = SenpaiState::default();
        for (now, current, high, max, total, stat, swap_free, avg, page) in obs {
            let mut o = Observation::new(Duration::from_nanos(now), current);
            o.high = high;
            o.max = max;
            o.some_total_us = total;
            o.stat = MemoryStat { active_file: stat[0], inactive_file: stat[1], active_anon: stat[2], inactive_anon: stat[3] };
            o.swap_free = swap_free;
            o.swap_usable = swap_free % 2 == 0;
            o.some_avg10 = avg;
            o.page_size = page % 70_000;
            state = step(&state, &o, &config).0;
        }
        let _ = state.exit(None);
    }
}

#[test]
fn defaults_are_senpais() {
    let c = SenpaiConfig::default();
    assert_eq!(c.interval, Duration::from_secs(6));
    assert_eq!(c.pressure, Duration::from_millis(10));
    assert_eq!(
        (c.max_probe, c.max_backoff, c.coeff_probe, c.coeff_backoff),
        (0.01, 1.0, 10.0, 20.0)
    );
    assert_eq!(c.limit_min_bytes, 100 * MIB);
    assert_eq!(c.limit_max_bytes, 10 * GIB);
    c.validate().expect("defaults are valid");
}
