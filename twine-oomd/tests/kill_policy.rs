//! Kill policies: victim choice, held detectors, the pause, dry-run, hooks.

use std::time::Duration;

use twine_oomd::kill::{
    CgroupSample, Detector, Kill, KillPolicy, KillRule, KillVia, PolicyError, PrekillHook,
    Selection, Tick, Verdict,
};

const MIB: u64 = 1 << 20;

fn sample(path: &str, current_mib: u64, full_avg10: f64) -> CgroupSample {
    CgroupSample {
        path: path.into(),
        current: current_mib * MIB,
        full_avg10,
        full_avg60: full_avg10,
        full_avg300: full_avg10,
    }
}

fn tick(t_s: u64, cgroups: Vec<CgroupSample>) -> Tick {
    Tick {
        now: Duration::from_secs(t_s),
        cgroups,
        swap_free: 0,
        swap_total: 0,
    }
}

fn rule(select: Selection, detectors: Vec<Detector>) -> KillRule {
    KillRule {
        name: "workload".into(),
        cgroup: "workload.slice".into(),
        detectors,
        select,
        prefer: vec![],
        avoid: vec![],
        omit: vec![],
        via: KillVia::CgroupKill,
    }
}

fn always() -> Vec<Detector> {
    vec![Detector::MemoryAbove { bytes: 0 }]
}

fn policy(rules: Vec<KillRule>) -> KillPolicy {
    KillPolicy::new(rules, vec![], Duration::from_secs(15), false).expect("valid policy")
}

fn victim(v: &Verdict) -> Option<&str> {
    match v {
        Verdict::Kill(Kill { kill, .. }) => Some(kill.path.as_str()),
        _ => None,
    }
}

/// A parent, three children: a (big), b (growing), c (pressured).
fn children(t_s: u64, b_mib: u64) -> Tick {
    tick(
        t_s,
        vec![
            sample("workload.slice", 3000, 0.0),
            sample("workload.slice/a.service", 1000, 1.0),
            sample("workload.slice/b.service", b_mib, 2.0),
            sample("workload.slice/c.service", 300, 50.0),
            sample("system.slice/huge.service", 9000, 90.0),
        ],
    )
}

#[test]
fn largest_picks_the_biggest_descendant_only() {
    let mut p = policy(vec![rule(Selection::Largest, always())]);
    assert_eq!(
        victim(&p.evaluate(&children(0, 100))),
        Some("workload.slice/a.service")
    );
}

#[test]
fn most_pressure_picks_the_most_stalled() {
    let mut p = policy(vec![rule(Selection::MostPressure, always())]);
    assert_eq!(
        victim(&p.evaluate(&children(0, 100))),
        Some("workload.slice/c.service")
    );
}

#[test]
fn fastest_growing_needs_a_previous_sample() {
    let never = vec![Detector::MemoryAbove { bytes: u64::MAX }];
    let mut quiet = rule(Selection::FastestGrowing, never);
    quiet.name = "watch".into();
    let mut p = policy(vec![
        quiet.clone(),
        rule(Selection::FastestGrowing, always()),
    ]);
    // First sight: no growth is known, so ties fall back to the largest.
    assert_eq!(
        victim(&p.evaluate(&children(0, 100))),
        Some("workload.slice/a.service")
    );
    // 100 -> 700 MiB in 20 s: b grows fastest (after the 15 s pause).
    let v = p.evaluate(&children(20, 700));
    assert_eq!(victim(&v), Some("workload.slice/b.service"));
}

#[test]
fn prefer_avoid_and_omit_lists() {
    let mut r = rule(Selection::Largest, always());
    r.prefer = vec!["*/c.service".into()];
    let mut p = policy(vec![r.clone()]);
    assert_eq!(
        victim(&p.evaluate(&children(0, 100))),
        Some("workload.slice/c.service")
    );

    r.prefer = vec![];
    r.avoid = vec!["*/a.service".into()];
    let mut p = policy(vec![r.clone()]);
    assert_eq!(
        victim(&p.evaluate(&children(0, 100))),
        Some("workload.slice/c.service")
    );

    r.avoid = vec!["*/a.service".into(), "*/c.service".into()];
    r.omit = vec!["*/b.service".into()];
    let mut p = policy(vec![r.clone()]);
    // Only avoided candidates are left: the largest of them.
    assert_eq!(
        victim(&p.evaluate(&children(0, 100))),
        Some("workload.slice/a.service")
    );

    r.omit = vec!["workload.slice/*".into()];
    let mut p = policy(vec![r]);
    assert_eq!(
        p.evaluate(&children(0, 100)),
        Verdict::NoVictim {
            rules: vec!["workload".into()]
        }
    );
}

#[test]
fn pressure_detector_needs_its_duration() {
    let d = vec![Detector::PressureAbove {
        window_s: 10,
        threshold_pct: 40.0,
        duration_s: 30.0,
    }];
    let mut p = policy(vec![rule(Selection::Largest, d)]);
    let at = |t, pct| {
        let mut k = children(t, 100);
        k.cgroups[0].full_avg10 = pct;
        k
    };
    assert_eq!(p.evaluate(&at(0, 50.0)), Verdict::Quiet);
    assert_eq!(p.evaluate(&at(29, 50.0)), Verdict::Quiet);
    // Dipping below restarts the clock.
    assert_eq!(p.evaluate(&at(30, 10.0)), Verdict::Quiet);
    assert_eq!(p.evaluate(&at(31, 50.0)), Verdict::Quiet);
    assert_eq!(p.evaluate(&at(60, 50.0)), Verdict::Quiet);
    assert_eq!(
        victim(&p.evaluate(&at(61, 50.0))),
        Some("workload.slice/a.service")
    );
}

#[test]
fn the_pause_holds_then_ends() {
    let mut p = policy(vec![rule(Selection::Largest, always())]);
    assert!(victim(&p.evaluate(&children(100, 100))).is_some());
    let until = Duration::from_secs(115);
    assert_eq!(p.evaluate(&children(101, 100)), Verdict::Paused { until });
    assert_eq!(p.evaluate(&children(114, 100)), Verdict::Paused { until });
    assert!(victim(&p.evaluate(&children(115, 100))).is_some());
}

#[test]
fn first_firing_rule_acts_and_the_next_is_tried_without_victims() {
    let mut empty = rule(Selection::Largest, always());
    empty.name = "empty".into();
    empty.cgroup = "nothing.slice".into();
    let mut sys = rule(Selection::Largest, always());
    sys.name = "system".into();
    sys.cgroup = "system.slice".into();
    let mut p = policy(vec![
        empty.clone(),
        sys.clone(),
        rule(Selection::Largest, always()),
    ]);
    let mut k = children(0, 100);
    assert_eq!(p.missing_cgroups(&k), ["nothing.slice", "system.slice"]);
    k.cgroups.push(sample("nothing.slice", 10, 0.0));
    k.cgroups.push(sample("system.slice", 9000, 90.0));
    let Verdict::Kill(kill) = p.evaluate(&k) else {
        panic!("expected a kill")
    };
    assert_eq!(
        (kill.rule.as_str(), kill.kill.path.as_str()),
        ("system", "system.slice/huge.service")
    );
}

#[test]
fn swap_detector_absolute_and_percentage() {
    let pct = vec![Detector::SwapFreeBelow {
        bytes: None,
        pct: Some(10.0),
    }];
    let mut p = policy(vec![rule(Selection::Largest, pct)]);
    let mut k = children(0, 100);
    assert_eq!(p.evaluate(&k), Verdict::Quiet, "no swap: never fires");
    k.swap_total = 1000 * MIB;
    k.swap_free = 200 * MIB;
    assert_eq!(p.evaluate(&k), Verdict::Quiet);
    k.swap_free = 50 * MIB;
    assert!(victim(&p.evaluate(&k)).is_some());

    let abs = vec![Detector::SwapFreeBelow {
        bytes: Some(100 * MIB),
        pct: None,
    }];
    let mut p = policy(vec![rule(Selection::Largest, abs)]);
    assert!(victim(&p.evaluate(&k)).is_some());
}

#[test]
fn dry_run_reports_and_hooks_are_named() {
    let hook = PrekillHook {
        cgroups: vec!["workload.slice/a.*".into()],
        command: vec!["/bin/dump".into(), "--heap".into()],
        timeout_s: 5.0,
    };
    let mut p = KillPolicy::new(
        vec![rule(Selection::Largest, always())],
        vec![hook.clone()],
        Duration::from_secs(15),
        true,
    )
    .expect("valid policy");
    let Verdict::Kill(kill) = p.evaluate(&children(0, 100)) else {
        panic!("expected a kill")
    };
    assert!(kill.dry_run);
    assert_eq!(kill.hook, Some(hook));
    assert_eq!(kill.hook.map(|h| h.timeout()), Some(Duration::from_secs(5)));
    assert_eq!(kill.kill.via, KillVia::CgroupKill);
    // A dry run pauses like a real one, so it reports what a real run would do.
    assert!(matches!(
        p.evaluate(&children(1, 100)),
        Verdict::Paused { .. }
    ));
}

fn pressure_rule_error(window_s: u64, threshold_pct: f64) -> String {
    let d = vec![Detector::PressureAbove {
        window_s,
        threshold_pct,
        duration_s: 3.0,
    }];
    KillPolicy::new(
        vec![rule(Selection::Largest, d)],
        vec![],
        Duration::ZERO,
        false,
    )
    .expect_err("an impossible detector")
    .to_string()
}

#[test]
fn impossible_rules_name_the_field() {
    assert_eq!(
        pressure_rule_error(30, 40.0),
        "kill[0].detectors[0].window_s = 30: must be 10, 60 or 300"
    );
    assert_eq!(
        pressure_rule_error(10, 140.0),
        "kill[0].detectors[0].threshold_pct = 140: must be a percentage in [0, 100]"
    );
    let mut r = rule(Selection::Largest, always());
    r.prefer = vec!["a[".into()];
    let err = KillPolicy::new(vec![r], vec![], Duration::ZERO, false).expect_err("bad glob");
    assert!(matches!(err, PolicyError::Glob { ref field, .. } if field == "kill[0].prefer[0]"));
}

mod no_panic {
    use super::*;
    use proptest::prelude::*;

    fn any_sample() -> impl Strategy<Value = CgroupSample> {
        (
            prop_oneof![
                Just("workload.slice".to_string()),
                "workload\\.slice/[a-c]{1,2}",
                "[a-z/]{0,6}"
            ],
            any::<u64>(),
            any::<[f64; 3]>(),
        )
            .prop_map(|(path, current, avg)| CgroupSample {
                path,
                current,
                full_avg10: avg[0],
                full_avg60: avg[1],
                full_avg300: avg[2],
            })
    }

    proptest! {
        /// Any sequence of ticks (time going back, NaN averages, duplicate paths) decides
        /// without panicking.
        #[test]
        fn evaluate_never_panics(
            ticks in proptest::collection::vec(
                (any::<u64>(), proptest::collection::vec(any_sample(), 0..6), any::<u64>(), any::<u64>()),
                1..20,
            ),
            select in prop_oneof![Just(Selection::Largest), Just(Selection::FastestGrowing), Just(Selection::MostPressure)],
        ) {
            let detectors = vec![
                Detector::PressureAbove { window_s: 60, threshold_pct: 10.0, duration_s: 5.0 },
                Detector::SwapFreeBelow { bytes: Some(1 << 30), pct: Some(50.0) },
            ];
            let mut r = rule(select, detectors);
            r.avoid = vec!["**/a*".into()];
            let mut p = policy(vec![r, rule(select, always())]);
            for (now, cgroups, swap_free, swap_total) in ticks {
                let _ = p.evaluate(&Tick { now: Duration::from_nanos(now), cgroups, swap_free, swap_total });
            }
        }
    }
}
