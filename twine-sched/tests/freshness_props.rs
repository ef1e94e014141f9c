#![allow(clippy::unwrap_used)]
use twine_sched::freshness::*;
#[test]
fn smoke() {
    for jobs in [50usize, 2000] {
        let mut c = SimConfig::new(jobs, 90);
        c.seed = 3;
        let t = std::time::Instant::now();
        let r = simulate(&c).unwrap();
        eprintln!("{jobs}: {:?}s tasks {} level {:.1} levelness {:?} mean/level {:?} maxage {:.2} viol {} over {} renew {} expired {} offers {}", t.elapsed().as_secs_f64(), r.tasks, r.level_rate_per_day, r.levelness, r.mean_over_level, r.max_age_days_seen, r.budget_violations, r.tasks_over_max_age, r.renewals, r.identities_expired, r.offers);
        eprintln!("{:?}", r.restarts_per_day);
        eprintln!("{:?}", r.oldest_age_days.iter().map(|x| *x as u32).collect::<Vec<_>>());
    }
}
