//! Job freshness: the planner's invariants over seeded fleets, as the simulation's
//! independent pass over its own event log counts them, and the planner's refusals.
//!
//! 1. no job ever has more restarts in flight than its max-unavailable budget;
//! 2. with controllers that answer within a bounded delay (the simulation's: fast ones
//!    within 10 minutes, slow ones one at a time within 6 hours on jobs of at most 20
//!    tasks, restarts within 30 minutes, all within the pace each job is added with) and
//!    initial containers younger than one cycle, no container ever exceeds the max age;
//! 3. with vetoing controllers, their jobs (and only those) are named overdue;
//! 4. renewals never restart a task, and no identity expires;
//! 5. after warm-up (the first cycle), daily restarts stay level: the busiest day is at
//!    most 1.5 times the daily mean, and the mean within 10% of the level rate (fleets
//!    with a level rate of at least 30 restarts a day, so a day's count is not noise);
//! 6. the same configuration gives the same report.
//!
//! Cases: 16 by default (each case simulates a fleet for months), `PROPTEST_CASES` for
//! more.

#![allow(clippy::unwrap_used)] // tests: a failed unwrap is a failed test with its message.

use proptest::prelude::*;
use twine_sched::freshness::*;
use twine_sched::taskcontrol::{JobPolicy, TaskControlError, TaskControlResponse};
use twine_sched::{JobId, TaskId};

fn cases() -> u32 {
    std::env::var("PROPTEST_CASES").map_or(16, |v| {
        v.parse().expect("PROPTEST_CASES is a number of cases")
    })
}

fn sim(jobs: usize, max_age_days: u64, days_in_cycles: u64, seed: u64) -> SimConfig {
    let mut c = SimConfig::new(jobs, max_age_days);
    c.seed = seed;
    c.days = max_age_days * days_in_cycles;
    c
}

proptest! {
    #![proptest_config(ProptestConfig { cases: cases(), ..ProptestConfig::default() })]

    #[test]
    fn budget_is_never_exceeded(jobs in 1usize..80, age in 20u64..120, seed: u64, veto in 0usize..3) {
        let mut c = sim(jobs, age, 2, seed);
        c.vetoing_jobs = veto.min(jobs);
        let r = simulate(&c).unwrap();
        prop_assert_eq!(r.budget_violations, 0);
        prop_assert!(r.offers > 0);
    }

    #[test]
    fn no_container_outlives_the_max_age(jobs in 1usize..80, age in 20u64..120, seed: u64) {
        let r = simulate(&sim(jobs, age, 2, seed)).unwrap();
        prop_assert_eq!(r.tasks_over_max_age, 0);
        prop_assert!(r.max_age_days_seen <= age as f64, "{} > {age}", r.max_age_days_seen);
        prop_assert!(r.overdue_jobs.is_empty(), "{:?}", r.overdue_jobs);
    }

    #[test]
    fn vetoing_jobs_are_named_overdue(jobs in 3usize..40, veto in 1usize..3, seed: u64) {
        let mut c = sim(jobs, 30, 2, seed);
        c.vetoing_jobs = veto;
        let r = simulate(&c).unwrap();
        let expected: Vec<JobId> = (0..veto as u64).map(JobId).collect();
        prop_assert_eq!(&r.overdue_jobs, &expected);
        prop_assert!(r.tasks_over_max_age > 0);
    }

    #[test]
    fn renewals_never_restart(jobs in 1usize..80, age in 20u64..120, seed: u64) {
        let r = simulate(&sim(jobs, age, 2, seed)).unwrap();
        prop_assert!(r.renewals > 0);
        prop_assert_eq!(r.restarts_by_renewal, 0);
        prop_assert_eq!(r.identities_expired, 0);
    }

    #[test]
    fn daily_restarts_are_level_after_warm_up(jobs in 400usize..1200, age in 30u64..100, seed: u64) {
        let r = simulate(&sim(jobs, age, 3, seed)).unwrap();
        prop_assume!(r.level_rate_per_day >= 30.0);
        let levelness = r.levelness.unwrap();
        let mean = r.mean_over_level.unwrap();
        prop_assert!(levelness <= 1.5, "busiest day {levelness} x the mean");
        prop_assert!((0.9..=1.1).contains(&mean), "mean {mean} x the level rate");
    }

    #[test]
    fn a_seed_gives_the_same_report(jobs in 1usize..60, age in 20u64..90, seed: u64) {
        let c = sim(jobs, age, 2, seed);
        prop_assert_eq!(simulate(&c).unwrap(), simulate(&c).unwrap());
    }
}

/// Seeds matter: two seeds give two fleets.
#[test]
fn seeds_differ() {
    let a = simulate(&sim(50, 30, 2, 1)).unwrap();
    let b = simulate(&sim(50, 30, 2, 2)).unwrap();
    assert_ne!(a, b);
}

fn clock(task: u64, started_ms: u64, identity_expires_ms: u64) -> TaskClock {
    TaskClock {
        task: TaskId(task),
        started_ms,
        identity_expires_ms,
    }
}

/// A task at its due time is offered even with no credit, and once only.
#[test]
fn a_due_task_is_offered_once() {
    let now = 100 * DAY_MS;
    let mut f = Freshness::new(FreshnessConfig::default(), now).unwrap();
    let policy = JobPolicy { max_unavailable: 1 };
    f.add_job(
        JobId(1),
        policy,
        &[clock(1, now - 83 * DAY_MS, now + 30 * DAY_MS)],
    )
    .unwrap();
    let plan = f.advance(now).unwrap();
    assert_eq!(plan.offers.len(), 1);
    assert_eq!(plan.offers[0].due_ms, now);
    assert!(f.advance(now + DAY_MS).unwrap().offers.is_empty());
}

/// A vetoed task is listed overdue once past the max age, with its offer outstanding.
#[test]
fn a_vetoed_task_is_overdue() {
    let now = 100 * DAY_MS;
    let mut f = Freshness::new(FreshnessConfig::default(), now).unwrap();
    let policy = JobPolicy { max_unavailable: 1 };
    f.add_job(
        JobId(4),
        policy,
        &[clock(9, now - 83 * DAY_MS, now + 300 * DAY_MS)],
    )
    .unwrap();
    assert!(f.advance(now + 7 * DAY_MS).unwrap().overdue.is_empty());
    let plan = f.advance(now + 8 * DAY_MS).unwrap();
    assert_eq!(plan.overdue.len(), 1);
    assert_eq!(plan.overdue[0].job, JobId(4));
    assert!(plan.overdue[0].offered);
}

/// A job of many tasks due together, one at a time, is started early enough to finish by
/// the due time at its pace.
#[test]
fn a_job_due_together_starts_early() {
    let now = 100 * DAY_MS;
    let mut f = Freshness::new(FreshnessConfig::default(), now).unwrap();
    let policy = JobPolicy { max_unavailable: 1 };
    let tasks: Vec<TaskClock> = (0..10)
        .map(|t| clock(t, now - 60 * DAY_MS, now + 300 * DAY_MS))
        .collect();
    f.add_job_paced(JobId(1), policy, DAY_MS, &tasks).unwrap();
    // Due at now + 23 days; ten at one a day means the first goes 9 days before.
    let plan = f.advance(now + 14 * DAY_MS).unwrap();
    assert_eq!(plan.offers.len(), 1, "{plan:?}");
    assert_eq!(plan.offers[0].due_ms, now + 14 * DAY_MS);
}

/// Renewals come at the lead before expiry, once, and leave the container alone.
#[test]
fn a_renewal_is_listed_once_and_keeps_the_container() {
    let now = 100 * DAY_MS;
    let mut f = Freshness::new(FreshnessConfig::default(), now).unwrap();
    let policy = JobPolicy { max_unavailable: 1 };
    f.add_job(
        JobId(1),
        policy,
        &[clock(1, now - DAY_MS, now + 15 * DAY_MS)],
    )
    .unwrap();
    assert!(f.advance(now + 4 * DAY_MS).unwrap().renewals.is_empty());
    let plan = f.advance(now + 5 * DAY_MS).unwrap();
    assert_eq!(plan.renewals.len(), 1);
    assert!(plan.offers.is_empty());
    assert!(f.advance(now + 6 * DAY_MS).unwrap().renewals.is_empty());
    f.renewed(JobId(1), TaskId(1), now + 45 * DAY_MS).unwrap();
    let view = f.task(JobId(1), TaskId(1)).unwrap();
    assert_eq!(view.started_ms, now - DAY_MS);
    assert_eq!(view.offered, None);
    assert_eq!(
        f.renewed(JobId(1), TaskId(1), now + 45 * DAY_MS),
        Err(FreshnessError::NoRenewalPending {
            job: JobId(1),
            task: TaskId(1)
        })
    );
}

/// Each refusal names what was wrong.
#[test]
fn refusals() {
    let bad = FreshnessConfig {
        margin_ms: 90 * DAY_MS,
        ..FreshnessConfig::default()
    };
    assert!(matches!(
        Freshness::new(bad, 0),
        Err(FreshnessError::InvalidConfig {
            field: "margin_ms",
            ..
        })
    ));
    let mut f = Freshness::new(FreshnessConfig::default(), DAY_MS).unwrap();
    let policy = JobPolicy { max_unavailable: 1 };
    assert_eq!(
        f.add_job(JobId(1), policy, &[clock(1, 0, 0), clock(1, 0, 0)]),
        Err(FreshnessError::DuplicateTask {
            job: JobId(1),
            task: TaskId(1)
        })
    );
    assert!(matches!(
        f.add_job(JobId(1), policy, &[clock(1, 2 * DAY_MS, 0)]),
        Err(FreshnessError::StartInFuture { .. })
    ));
    f.add_job(JobId(1), policy, &[clock(1, 0, 0)]).unwrap();
    assert_eq!(
        f.add_job(JobId(1), policy, &[]),
        Err(FreshnessError::DuplicateJob(JobId(1)))
    );
    assert_eq!(
        f.request(JobId(2)).map(|_| ()),
        Err(FreshnessError::UnknownJob(JobId(2)))
    );
    f.advance(2 * DAY_MS).unwrap();
    assert!(matches!(
        f.advance(DAY_MS),
        Err(FreshnessError::TimeWentBack { .. })
    ));
    let req = f.request(JobId(1)).unwrap();
    let resp = TaskControlResponse {
        sequence: req.sequence + 1,
        ack: vec![],
    };
    assert!(matches!(
        f.respond(JobId(1), resp, 2 * DAY_MS),
        Err(FreshnessError::TaskControl {
            job: JobId(1),
            source: TaskControlError::UnexpectedSequence { .. }
        })
    ));
}
