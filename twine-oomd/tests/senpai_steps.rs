//! Worked examples of the Senpai controller's steps (numbers from oomd.md §1.3).

use std::time::Duration;

use twine_oomd::senpai::{
    Action, Cause, Decision, Mode, Observation, ObservationError, SenpaiConfig, SenpaiState, step,
};

const MIB: u64 = 1 << 20;
const GIB: u64 = 1 << 30;

fn obs(t_s: f64, current: u64, high: Option<u64>, total_us: u64) -> Observation {
    let mut o = Observation::new(Duration::from_secs_f64(t_s), current);
    o.high = high;
    o.some_total_us = total_us;
    o
}

fn ok(state: &SenpaiState, o: &Observation, c: &SenpaiConfig) -> (SenpaiState, Decision) {
    let (next, d) = step(state, o, c);
    (next, d.expect("usable observation"))
}

/// Takes over a 1 GiB cgroup at t = 0; returns the state and the value written.
fn taken_over(c: &SenpaiConfig) -> (SenpaiState, u64) {
    let (s, d) = ok(&SenpaiState::default(), &obs(0.0, GIB, None, 0), c);
    assert_eq!((d.action, d.cause), (Action::SetHigh(GIB), Cause::Init));
    (s, GIB)
}

#[test]
fn probe_waits_a_whole_interval_then_shrinks_by_max_probe() {
    let c = SenpaiConfig::default();
    let (s, high) = taken_over(&c);
    let (s, d) = ok(&s, &obs(5.9, GIB, Some(high), 0), &c);
    assert_eq!((d.action, d.cause), (Action::None, Cause::Wait));
    let (_, d) = ok(&s, &obs(6.0, GIB, Some(high), 500), &c);
    // 0.5 ms of stall is under pressure / coeff_probe: the full 1 %, page-aligned down.
    let expected = (GIB - GIB / 100) & !4095;
    assert_eq!(
        (d.action, d.cause),
        (Action::SetHigh(expected), Cause::Probe)
    );
}

#[test]
fn probe_is_quadratic_in_the_error() {
    let c = SenpaiConfig::default();
    let (s, high) = taken_over(&c);
    // 5 ms in the interval: (10 / 5 / 10)^2 * 1 % = 0.04 %.
    let (_, d) = ok(&s, &obs(6.0, GIB, Some(high), 5_000), &c);
    // 0.04 % of 1 GiB is 429496.7296 bytes, rounded down.
    let expected = (GIB - 429_496) & !4095;
    assert_eq!(d.action, Action::SetHigh(expected));
}

#[test]
fn backoff_is_immediate_and_quadratic() {
    let c = SenpaiConfig::default();
    let (s, high) = taken_over(&c);
    // 100 ms after one second: (10 / 20)^2 * 100 % = 25 % up, without waiting for the interval.
    let (s, d) = ok(&s, &obs(1.0, GIB, Some(high), 100_000), &c);
    assert_eq!(
        (d.action, d.cause),
        (Action::SetHigh(GIB + GIB / 4), Cause::Backoff)
    );
    // >= 200 ms: capped at max_backoff (doubling), bounded by current + limit_max.
    let (_, d) = ok(&s, &obs(2.0, GIB, Some(GIB + GIB / 4), 400_000), &c);
    assert_eq!(d.action, Action::SetHigh(2 * (GIB + GIB / 4)));
}

#[test]
fn a_late_window_is_scaled_to_one_interval() {
    let c = SenpaiConfig::default();
    let (s, high) = taken_over(&c);
    // 9 ms over 12 s is 4.5 ms per 6 s interval, so the probe is sized as for 4.5 ms.
    let (_, late) = ok(&s, &obs(12.0, GIB, Some(high), 9_000), &c);
    let (_, on_time) = ok(&s, &obs(6.0, GIB, Some(high), 4_500), &c);
    assert_eq!(late.action, on_time.action);
}

#[test]
fn external_edit_reinitialises_and_becomes_the_original() {
    let c = SenpaiConfig::default();
    let (s, _) = taken_over(&c);
    let (s, d) = ok(&s, &obs(3.0, 900 * MIB, Some(2 * GIB), 0), &c);
    assert_eq!(
        (d.action, d.cause),
        (Action::SetHigh(900 * MIB), Cause::ExternalEdit)
    );
    assert_eq!(
        s.restore(Some(900 * MIB)),
        Action::RestoreHigh(Some(2 * GIB))
    );
    // Edited again after our last write and before exit: the edit stands.
    assert_eq!(s.exit(Some(3 * GIB)), Action::None);
}

#[test]
fn floor_counts_unreclaimable_memory_and_memory_min() {
    let c = SenpaiConfig::default();
    let mut o = obs(0.0, GIB, None, 0);
    o.stat.inactive_file = 200 * MIB;
    o.stat.active_anon = 600 * MIB;
    // No swap: anon is unreclaimable: floor = 100 MiB + (1 GiB - 200 MiB).
    assert_eq!(
        o.bounds(&c).map(|b| b.floor),
        Ok(100 * MIB + GIB - 200 * MIB)
    );
    o.swap_usable = true;
    o.swap_free = 500 * MIB;
    // Swap counts, up to what is free: floor = 100 MiB + (1 GiB - 700 MiB).
    assert_eq!(
        o.bounds(&c).map(|b| b.floor),
        Ok(100 * MIB + GIB - 700 * MIB)
    );
    o.min = 900 * MIB;
    assert_eq!(o.bounds(&c).map(|b| b.floor), Ok(900 * MIB));
    o.max = Some(800 * MIB);
    assert!(matches!(
        o.bounds(&c),
        Err(ObservationError::EmptyBounds { .. })
    ));
}

#[test]
fn counter_reset_drops_the_integral_and_keeps_the_original() {
    let c = SenpaiConfig::default();
    let (s, high) = taken_over(&c);
    let (s, _) = ok(&s, &obs(1.0, GIB, Some(high), 9_000), &c);
    let (s, err) = step(&s, &obs(2.0, GIB, Some(high), 100), &c);
    assert_eq!(
        err,
        Err(ObservationError::StallTotalWentBackwards {
            previous: 9_000,
            now: 100
        })
    );
    // 9 ms were forgotten: 8 ms more is still under target, so no backoff.
    let (s, d) = ok(&s, &obs(3.0, GIB, Some(high), 8_100), &c);
    assert_eq!(d.cause, Cause::Wait);
    assert_eq!(s.exit(Some(high)), Action::RestoreHigh(None));
}

#[test]
fn time_going_backwards_is_ignored() {
    let c = SenpaiConfig::default();
    let (s, high) = taken_over(&c);
    let (s4, _) = ok(&s, &obs(10.0, GIB, Some(high), 0), &c);
    let (s5, err) = step(&s4, &obs(5.0, GIB, Some(high), 0), &c);
    assert!(matches!(
        err,
        Err(ObservationError::TimeWentBackwards { .. })
    ));
    assert_eq!(s5, s4);
}

#[test]
fn reclaim_mode_probes_above_the_floor_and_never_writes_high() {
    let c = SenpaiConfig {
        mode: Mode::Reclaim,
        ..SenpaiConfig::default()
    };
    let (s, d) = ok(&SenpaiState::default(), &obs(0.0, GIB, None, 0), &c);
    assert_eq!(d.action, Action::None);
    let (s, d) = ok(&s, &obs(6.0, GIB, None, 0), &c);
    // 1 % of what lies above the 100 MiB floor, page-aligned.
    assert_eq!(
        (d.action, d.cause),
        (
            Action::Reclaim(((GIB - 100 * MIB) / 100) & !4095),
            Cause::Probe
        )
    );
    let mut pressured = obs(12.0, GIB, None, 0);
    pressured.some_avg60 = 0.2;
    let (s, d) = ok(&s, &pressured, &c);
    assert_eq!((d.action, d.cause), (Action::None, Cause::Pressured));
    assert_eq!(s.exit(None), Action::None);
}

#[test]
fn bad_config_names_the_field() {
    let c = SenpaiConfig {
        max_probe: 1.5,
        ..SenpaiConfig::default()
    };
    let e = c.validate().expect_err("probe above 1");
    assert_eq!((e.field.as_str(), e.value.as_str()), ("max_probe", "1.5"));
    let c = SenpaiConfig {
        limit_min_bytes: 2,
        limit_max_bytes: 1,
        ..SenpaiConfig::default()
    };
    assert_eq!(
        c.validate().expect_err("min > max").field,
        "limit_min_bytes"
    );
}
