//! The simulator: what Senpai's defaults give back of a known cold set, and at what stall.
//!
//! The target is ">= 90 % of the cold set within 10 minutes at the target pressure".
//! Senpai's defaults cannot do that on this workload: a probe removes at most 1 % of
//! `memory.high` per 6 s interval, so 10 minutes (100 probes) take `memory.high` from 1224 MiB
//! to at best 1224 · 0.99^100 ≈ 448 MiB, which gives back ≈ 76 % of the 1 GiB cold set. The
//! tests below pin that bound, and that 90 % comes at about 14 minutes.
//! Run `cargo test -p twine-oomd --test sim -- --nocapture` for the figures.

use twine_oomd::senpai::{Mode, SenpaiConfig};
use twine_oomd::sim::{SimReport, Workload, simulate};

const MIB: u64 = 1 << 20;

fn run(workload: &Workload, config: &SenpaiConfig) -> SimReport {
    let report = simulate(workload, config).expect("valid simulation");
    let s = &report.summary;
    eprintln!(
        "{:?} max_probe={} {} s swap={}: cold given back {} MiB ({:.1} %), hot missing {} KiB, \
         stall {} ms total ({:.0} µs per interval), 90 % of cold at {:?} s",
        config.mode,
        config.max_probe,
        workload.duration_s,
        workload.swap > 0,
        s.cold_given_back / MIB,
        s.cold_given_back_share * 100.0,
        s.hot_missing >> 10,
        s.total_stall_us / 1000,
        s.mean_stall_per_interval_us,
        s.converged_at_s,
    );
    report
}

/// Mean stall per interval over the rows from `from_s` on, µs.
fn stall_per_interval(report: &SimReport, from_s: u64) -> f64 {
    let rows: Vec<_> = report.rows.iter().filter(|r| r.t_s >= from_s).collect();
    let total: u64 = rows.iter().map(|r| r.stall_us).sum();
    total as f64 / rows.len() as f64 * report.config.interval.as_secs_f64()
}

#[test]
fn defaults_give_back_what_the_probe_rate_allows_in_ten_minutes() {
    let w = Workload::default();
    let report = run(&w, &SenpaiConfig::default());
    let hot = (w.hot_anon + w.hot_file) as f64;
    let cold = (w.cold_anon + w.cold_file) as f64;
    // 100 full probes of 1 % from hot + cold.
    let bound = (hot + cold) * (1.0 - 0.99f64.powi(100)) / cold;
    let share = report.summary.cold_given_back_share;
    eprintln!(
        "10 min: {:.1} % given back; the probe-rate bound is {:.1} %",
        share * 100.0,
        bound * 100.0
    );
    assert!(
        (share - bound).abs() < 0.01,
        "share {share} vs bound {bound}"
    );
    assert!(share < 0.9, "the defaults cannot reach 90 % in 10 minutes");
    // Still above the hot set: no hot page evicted, so (almost) no stall yet.
    assert!(report.summary.total_stall_us < 20_000);
}

#[test]
fn defaults_reach_ninety_percent_in_fifteen_minutes_at_about_the_target() {
    let w = Workload {
        duration_s: 1800,
        ..Workload::default()
    };
    let config = SenpaiConfig::default();
    let report = run(&w, &config);
    let at = report.summary.converged_at_s.expect("reaches 90 %");
    assert!((780..=900).contains(&at), "90 % at {at} s");
    assert!(report.summary.cold_given_back_share > 0.99);
    // Settled on the hot set: stall per interval over the last 10 minutes near 10 ms.
    let stall = stall_per_interval(&report, 1200);
    eprintln!("last 10 min: {stall:.0} µs of stall per 6 s interval (target 10000)");
    assert!(
        (2_500.0..=20_000.0).contains(&stall),
        "{stall} µs per interval"
    );
    assert!(report.summary.hot_missing < 4 * MIB);
}

#[test]
fn reclaim_mode_gives_back_the_cold_set_below_its_pressure_gate() {
    let w = Workload {
        duration_s: 1800,
        ..Workload::default()
    };
    let config = SenpaiConfig {
        mode: Mode::Reclaim,
        ..SenpaiConfig::default()
    };
    let report = run(&w, &config);
    assert!(
        report.rows.iter().all(|r| r.high.is_none()),
        "never writes memory.high"
    );
    assert!(report.summary.cold_given_back_share > 0.99);
    // The gate is 0.1 % some (6 ms per 6 s); allow the overshoot of one probe.
    let stall = stall_per_interval(&report, 1200);
    eprintln!("reclaim, last 10 min: {stall:.0} µs of stall per 6 s interval");
    assert!(stall <= 15_000.0, "{stall} µs per interval");
}

#[test]
fn without_swap_cold_anon_stays() {
    let w = Workload {
        swap: 0,
        duration_s: 1800,
        ..Workload::default()
    };
    let report = run(&w, &SenpaiConfig::default());
    let file_share = w.cold_file as f64 / (w.cold_file + w.cold_anon) as f64;
    assert!(report.summary.cold_given_back_share <= file_share + 1e-9);
}

#[test]
fn a_faster_probe_meets_the_ten_minute_target() {
    // Not the defaults: shown for comparison with the target.
    let config = SenpaiConfig {
        max_probe: 0.02,
        ..SenpaiConfig::default()
    };
    let report = run(&Workload::default(), &config);
    assert!(report.summary.cold_given_back_share >= 0.9);
}

#[test]
fn report_is_serialisable_and_rows_are_per_second() {
    let w = Workload {
        duration_s: 60,
        ..Workload::default()
    };
    let report = run(&w, &SenpaiConfig::default());
    assert_eq!(report.rows.len(), 61);
    let json = serde_json::to_string(&report).expect("serialisable");
    assert!(json.contains("\"cold_given_back_share\""));
}

#[test]
fn bad_workload_is_a_typed_error() {
    let w = Workload {
        hot_period_s: 0.0,
        ..Workload::default()
    };
    let err = simulate(&w, &SenpaiConfig::default()).expect_err("zero period");
    assert_eq!(
        err.to_string(),
        "workload.hot_period_s = 0: must be a positive number"
    );
}

proptest::proptest! {
    /// Any workload simulates or errors without panicking.
    #[test]
    fn any_workload_simulates_or_errors(
        sizes in proptest::array::uniform5(proptest::prop_oneof![4 => 0u64..4 << 30, 1 => proptest::num::u64::ANY]),
        floats in proptest::array::uniform3(proptest::prop_oneof![3 => 0.001f64..1000.0, 1 => proptest::num::f64::ANY]),
        page in proptest::num::u64::ANY,
        duration_s in 0u64..200,
        mode in proptest::prop_oneof![proptest::strategy::Just(Mode::High), proptest::strategy::Just(Mode::Reclaim)],
    ) {
        let w = Workload {
            hot_anon: sizes[0],
            hot_file: sizes[1],
            cold_anon: sizes[2],
            cold_file: sizes[3],
            swap: sizes[4],
            hot_period_s: floats[0],
            file_refault_us: floats[1],
            swapin_us: floats[2],
            page_size: page % 100_000,
            duration_s,
        };
        let _ = simulate(&w, &SenpaiConfig { mode, ..SenpaiConfig::default() });
    }
}
