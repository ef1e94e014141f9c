//! `twine freshness simulate`: a seeded fleet of jobs kept fresh by the planner of
//! `twine_sched::freshness`; the figures come from the simulation's own event log.

use std::path::{Path, PathBuf};
use std::time::Instant;

use twine::sched::freshness::{DAY_MS, SimConfig, SimError, SimReport, simulate};

use crate::flags;

/// `twine freshness ...`.
#[derive(clap::Subcommand)]
pub(crate) enum FreshnessCommand {
    /// Simulate jobs restarted on fresh containers within a max age, through TaskControl,
    /// with identities renewed in place.
    Simulate(SimulateArgs),
}

/// The arguments of `twine freshness simulate`.
#[derive(clap::Args)]
#[command(after_help = "\
Jobs of 1 to 100 tasks (seeded), each with a max-unavailable budget of 1 to a quarter of its \
tasks and a controller: a replicated service (shards of three replicas, no two down at once, \
leaders last), a budget-respecting acker, a slow acker (one at a time, answering 1 to 6 hours \
later; jobs of up to 20 tasks), or with --vetoing-jobs a controller that never acks. A job's \
tasks start together; 40% of jobs are deployed on one of five shared days (clumps). Restarts \
take 1 to 30 minutes. A task is due at start + max age - margin (margin 7/90 of the max age); \
the planner offers restarts at a level rate, earliest due first, pulling clumps forward.

Restarts per day, the oldest container each day and budget violations are counted from the \
simulation's event log by a pass independent of the planner and TaskControl. levelness is the \
most restarts on a day after warm-up (the first cycle) over their daily mean.

--json: one object; wall_s is the simulation's time.")]
pub(crate) struct SimulateArgs {
    /// How many jobs [default: 1000].
    #[arg(long, value_name = "N", allow_hyphen_values = true)]
    jobs: Option<String>,
    /// No container may be older than this many days.
    #[arg(
        long,
        value_name = "DAYS",
        allow_hyphen_values = true,
        default_value = "90"
    )]
    max_age_days: String,
    /// Simulated span in days [default: twice the max age].
    #[arg(long, value_name = "D", allow_hyphen_values = true)]
    days: Option<String>,
    /// The seed of every random draw.
    #[arg(
        long,
        value_name = "N",
        allow_hyphen_values = true,
        default_value = "0"
    )]
    seed: String,
    /// This many jobs (the first ones) have a controller that never acks; the report names
    /// them overdue.
    #[arg(
        long,
        value_name = "N",
        allow_hyphen_values = true,
        default_value = "0"
    )]
    vetoing_jobs: String,
    /// Print one JSON object instead of a summary.
    #[arg(long)]
    json: bool,
    /// Write an SVG of restarts per day and the oldest container each day.
    #[arg(long, value_name = "FILE.svg")]
    plot: Option<PathBuf>,
}

/// A whole-number flag of at least `min`: `--flag: ... (got "x")` otherwise.
fn number(flag: &str, text: &str, min: u64) -> Result<u64, Vec<String>> {
    let what = format!("a whole number of at least {min}");
    match flags::number::<u64>(flag, text, &what)? {
        n if n >= min => Ok(n),
        _ => Err(vec![format!("{flag}: expected {what} (got {text:?})")]),
    }
}

fn config(args: &SimulateArgs) -> Result<SimConfig, Vec<String>> {
    let jobs = number("--jobs", args.jobs.as_deref().unwrap_or("1000"), 1)?;
    let max_age_days = number("--max-age-days", &args.max_age_days, 1)?;
    if max_age_days > 36_500 {
        return Err(vec![format!(
            "--max-age-days: expected at most 36500 (got {:?})",
            args.max_age_days
        )]);
    }
    let jobs = usize::try_from(jobs).map_err(|_| {
        vec![format!(
            "--jobs: too many for this machine (got {:?})",
            args.jobs.as_deref().unwrap_or_default()
        )]
    })?;
    let mut config = SimConfig::new(jobs, max_age_days);
    if let Some(days) = &args.days {
        config.days = number("--days", days, 1)?;
        if config.days > 36_500 {
            return Err(vec![format!(
                "--days: expected at most 36500 (got {days:?})"
            )]);
        }
    }
    config.seed = number("--seed", &args.seed, 0)?;
    let vetoing = number("--vetoing-jobs", &args.vetoing_jobs, 0)?;
    config.vetoing_jobs = usize::try_from(vetoing)
        .ok()
        .filter(|&v| v <= jobs)
        .ok_or_else(|| {
            vec![format!(
                "--vetoing-jobs: expected at most --jobs ({jobs}) (got {:?})",
                args.vetoing_jobs
            )]
        })?;
    Ok(config)
}

fn explain(e: &SimError) -> Vec<String> {
    match e {
        SimError::InvalidConfig { field, .. } => vec![format!("{field}: {e}")],
        other => vec![format!("freshness simulate: {other}")],
    }
}

fn json(r: &SimReport, config: &SimConfig, wall_s: f64) -> serde_json::Value {
    serde_json::json!({
        "jobs": r.jobs,
        "tasks": r.tasks,
        "days": r.days,
        "seed": config.seed,
        "max_age_days": config.freshness.max_age_ms / DAY_MS,
        "margin_days": config.freshness.margin_ms as f64 / DAY_MS as f64,
        "restarts_per_day": r.restarts_per_day,
        "oldest_age_days": r.oldest_age_days,
        "max_age_days_seen": r.max_age_days_seen,
        "budget_violations": r.budget_violations,
        "renewals": r.renewals,
        "restarts_by_renewal": r.restarts_by_renewal,
        "identities_expired": r.identities_expired,
        "offers": r.offers,
        "level_rate_per_day": r.level_rate_per_day,
        "warmup_days": r.warmup_days,
        "levelness": r.levelness,
        "mean_over_level": r.mean_over_level,
        "tasks_over_max_age": r.tasks_over_max_age,
        "overdue_jobs": r.overdue_jobs.iter().map(|j| j.0).collect::<Vec<_>>(),
        "wall_s": wall_s,
    })
}

fn summary(r: &SimReport, config: &SimConfig, wall_s: f64) -> Vec<String> {
    let total: u64 = r.restarts_per_day.iter().sum();
    let opt = |x: Option<f64>| {
        x.map_or_else(
            || "n/a (span within warm-up)".to_owned(),
            |v| format!("{v:.3}"),
        )
    };
    let mut lines = vec![
        format!(
            "{} jobs, {} tasks, {} days, max age {} days (seed {})",
            r.jobs,
            r.tasks,
            r.days,
            config.freshness.max_age_ms / DAY_MS,
            config.seed
        ),
        format!(
            "restarts {total} ({:.1}/day level); after warm-up ({} days): max/mean {}, mean/level {}",
            r.level_rate_per_day,
            r.warmup_days,
            opt(r.levelness),
            opt(r.mean_over_level)
        ),
        format!(
            "oldest container {:.2} days; tasks over the max age {}; budget violations {}",
            r.max_age_days_seen, r.tasks_over_max_age, r.budget_violations
        ),
        format!(
            "renewals {} (restarts by renewal {}, identities seen expired {})",
            r.renewals, r.restarts_by_renewal, r.identities_expired
        ),
    ];
    if !r.overdue_jobs.is_empty() {
        let shown: Vec<String> = r
            .overdue_jobs
            .iter()
            .take(10)
            .map(|j| j.to_string())
            .collect();
        let more = r.overdue_jobs.len().saturating_sub(shown.len());
        let tail = if more > 0 {
            format!(" and {more} more")
        } else {
            String::new()
        };
        lines.push(format!("overdue: {}{tail}", shown.join(", ")));
    }
    lines.push(format!("wall {wall_s:.2} s"));
    lines
}

/// Restarts per day above, the oldest container each day (and the max age) below.
fn plot(r: &SimReport, max_age_days: f64, path: &Path) -> Result<(), Box<dyn std::error::Error>> {
    use plotters::prelude::*;
    let days = r.days as f64;
    let area = SVGBackend::new(path, (1000, 700)).into_drawing_area();
    area.fill(&WHITE)?;
    let (upper, lower) = area.split_vertically(350);
    let top = r.restarts_per_day.iter().copied().max().unwrap_or(0) as f64 * 1.05 + 1.0;
    let mut restarts = ChartBuilder::on(&upper)
        .caption(
            format!("twine freshness: {} jobs, {} tasks", r.jobs, r.tasks),
            ("sans-serif", 18),
        )
        .margin(10)
        .x_label_area_size(30)
        .y_label_area_size(60)
        .build_cartesian_2d(0.0..days, 0.0..top)?;
    restarts
        .configure_mesh()
        .y_desc("restarts per day")
        .x_desc("days")
        .draw()?;
    restarts
        .draw_series(LineSeries::new(
            r.restarts_per_day
                .iter()
                .enumerate()
                .map(|(d, &n)| (d as f64 + 0.5, n as f64)),
            &BLUE,
        ))?
        .label("restarts")
        .legend(|(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], BLUE));
    restarts
        .draw_series(LineSeries::new(
            [(0.0, r.level_rate_per_day), (days, r.level_rate_per_day)],
            &BLACK,
        ))?
        .label("level rate")
        .legend(|(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], BLACK));
    restarts
        .configure_series_labels()
        .position(SeriesLabelPosition::UpperRight)
        .background_style(WHITE)
        .border_style(BLACK)
        .draw()?;
    let high = r.max_age_days_seen.max(max_age_days) * 1.05;
    let mut oldest = ChartBuilder::on(&lower)
        .margin(10)
        .x_label_area_size(30)
        .y_label_area_size(60)
        .build_cartesian_2d(0.0..days, 0.0..high)?;
    oldest
        .configure_mesh()
        .y_desc("oldest container, days")
        .x_desc("days")
        .draw()?;
    oldest
        .draw_series(LineSeries::new(
            r.oldest_age_days
                .iter()
                .enumerate()
                .map(|(d, &a)| (d as f64 + 0.5, a)),
            &RED,
        ))?
        .label("oldest container")
        .legend(|(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], RED));
    oldest
        .draw_series(LineSeries::new(
            [(0.0, max_age_days), (days, max_age_days)],
            &BLACK,
        ))?
        .label("max age")
        .legend(|(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], BLACK));
    oldest
        .configure_series_labels()
        .position(SeriesLabelPosition::LowerRight)
        .background_style(WHITE)
        .border_style(BLACK)
        .draw()?;
    area.present()?;
    Ok(())
}

/// Runs `twine freshness ...`; returns the lines to print on stdout.
pub(crate) fn run(command: &FreshnessCommand) -> Result<Vec<String>, Vec<String>> {
    let FreshnessCommand::Simulate(args) = command;
    let config = config(args)?;
    let start = Instant::now();
    let r = simulate(&config).map_err(|e| explain(&e))?;
    let wall_s = start.elapsed().as_secs_f64();
    if let Some(path) = &args.plot {
        let max_age = config.freshness.max_age_ms as f64 / DAY_MS as f64;
        plot(&r, max_age, path).map_err(|e| vec![format!("{}: {e}", path.display())])?;
    }
    if args.json {
        return Ok(vec![json(&r, &config, wall_s).to_string()]);
    }
    Ok(summary(&r, &config, wall_s))
}
