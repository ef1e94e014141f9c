//! `twine rollout simulate`: a fleet-wide host update in waves over the synthetic
//! Twine-like fleet; the engine is `twine_sched::rollout`.

use std::path::{Path, PathBuf};

use twine::sched::rollout::sim::{SimConfig, SimOutcome, simulate};
use twine::sched::rollout::{Blocker, DomainLimits, RolloutError, UpdateKind, WaveKind};

use crate::flags::number;

/// `twine rollout ...`.
#[derive(clap::Subcommand)]
pub(crate) enum RolloutCommand {
    /// Simulate a rollout over a synthetic Twine-like fleet with jobs on it.
    Simulate(SimulateArgs),
}

/// What the update needs.
#[derive(Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub(crate) enum UpdateArg {
    /// Packages applied on the running host.
    Live,
    /// A kernel or systemd update: drain, update, reboot, verify, undrain.
    Reboot,
}

/// The arguments of `twine rollout simulate`.
#[derive(clap::Args)]
#[command(after_help = "\
The fleet: 4 of 5 hosts small (18 cores, 64 GiB; one in 10 on host profile hugepages), 1 of \
5 big (96 cores, 8 GPUs); 40 hosts per rack, 10 racks per power domain, 10 power domains per \
datacenter. One job per 10 hosts, 3 to 30 tasks each, one per host, spread over racks; max \
unavailable max(1, tasks/10). --veto-fraction of the jobs ack no move, so their tasks are \
stopped at the notice's deadline (7 days after the drain starts), as their budgets allow.

Durations (seeded): update 2-10 min, reboot 3-8 min, verify 1-2 min, a stopped task restarts \
elsewhere in 1-5 min, each gate answers 1 hour after its wave ends. At time 0, 0.2% of hosts \
are down (half come back within 20 days) and 0.3% cordoned by someone else (back within 5 \
days); 0.05% of updated hosts fail their health check.

Waves: canaries (one host per machine type and host profile in use), then cumulative \
percentages. --health-failure-at W fails the gate after wave W (0 = canaries).

--json: one object: hosts, updated, days_to_99, days_to_100 (null if never), waves (kind, \
size, started_days, ended_days), halted_at_wave, rollback_proposed, trailing ({host, reason, \
job, deadline_days}), trailing_by_reason, budget_violations and fault_domain_violations \
(counted from the simulator's own event log), end_days.")]
pub(crate) struct SimulateArgs {
    /// Hosts in the fleet.
    #[arg(
        long,
        value_name = "N",
        allow_hyphen_values = true,
        default_value = "10000"
    )]
    hosts: String,
    /// What the update needs.
    #[arg(long, value_enum, default_value = "reboot")]
    update: UpdateArg,
    /// Cumulative percentages of the waves after the canaries, ending at 100.
    #[arg(
        long,
        value_name = "P,P,...",
        allow_hyphen_values = true,
        default_value = "1,5,25,100"
    )]
    waves: String,
    /// Hosts in flight per rack, at most.
    #[arg(
        long,
        value_name = "K",
        allow_hyphen_values = true,
        default_value = "2"
    )]
    max_in_flight_per_rack: String,
    /// Hosts in flight per power domain, at most.
    #[arg(
        long,
        value_name = "K",
        allow_hyphen_values = true,
        default_value = "20"
    )]
    max_in_flight_per_power: String,
    /// Hosts in flight per datacenter, at most.
    #[arg(
        long,
        value_name = "K",
        allow_hyphen_values = true,
        default_value = "200"
    )]
    max_in_flight_per_dc: String,
    /// Share of jobs that veto every move until their deadline, in [0, 1].
    #[arg(
        long,
        value_name = "F",
        allow_hyphen_values = true,
        default_value = "0"
    )]
    veto_fraction: String,
    /// The gate after this wave fails (0 = canaries).
    #[arg(long, value_name = "WAVE", allow_hyphen_values = true)]
    health_failure_at: Option<String>,
    /// Seed of every draw.
    #[arg(
        long,
        value_name = "N",
        allow_hyphen_values = true,
        default_value = "0"
    )]
    seed: String,
    /// The simulation stops after this many days if it has not finished.
    #[arg(
        long,
        value_name = "DAYS",
        allow_hyphen_values = true,
        default_value = "60"
    )]
    days: String,
    /// Print one JSON object instead of a summary.
    #[arg(long)]
    json: bool,
    /// Write an SVG of the share of the fleet updated over time, wave by wave.
    #[arg(long, value_name = "FILE.svg")]
    plot: Option<PathBuf>,
}

fn at_least_one(flag: &str, text: &str) -> Result<u32, Vec<String>> {
    let n: u32 = number(flag, text, "a whole number")?;
    if n == 0 {
        return Err(vec![format!("{flag}: must be at least 1 (got {text:?})")]);
    }
    Ok(n)
}

const DAY_MS: f64 = 86_400_000.0;

#[allow(clippy::cast_precision_loss)] // times below 2^53 ms
fn days(ms: u64) -> f64 {
    (ms as f64 / DAY_MS * 1000.0).round() / 1000.0
}

fn config(args: &SimulateArgs) -> Result<SimConfig, Vec<String>> {
    let update = match args.update {
        UpdateArg::Live => UpdateKind::Live,
        UpdateArg::Reboot => UpdateKind::Reboot,
    };
    let mut c = SimConfig::new(update);
    c.hosts = number("--hosts", &args.hosts, "a whole number of hosts")?;
    if c.hosts == 0 {
        return Err(vec![format!(
            "--hosts: must be at least 1 (got {:?})",
            args.hosts
        )]);
    }
    c.waves_percent = args
        .waves
        .split(',')
        .map(|p| number("--waves", p, "comma-separated whole percentages"))
        .collect::<Result<_, _>>()?;
    c.limits = DomainLimits::new(
        at_least_one("--max-in-flight-per-rack", &args.max_in_flight_per_rack)?,
        at_least_one("--max-in-flight-per-power", &args.max_in_flight_per_power)?,
        at_least_one("--max-in-flight-per-dc", &args.max_in_flight_per_dc)?,
    );
    let f: f64 = number("--veto-fraction", &args.veto_fraction, "a number in [0, 1]")?;
    if !(0.0..=1.0).contains(&f) {
        return Err(vec![format!(
            "--veto-fraction: expected a number in [0, 1] (got {:?})",
            args.veto_fraction
        )]);
    }
    c.veto_fraction = f;
    c.health_failure_at = args
        .health_failure_at
        .as_deref()
        .map(|w| number("--health-failure-at", w, "a wave number (0 = canaries)"))
        .transpose()?;
    c.seed = number("--seed", &args.seed, "a whole number")?;
    let d: u64 = number("--days", &args.days, "a whole number of days")?;
    if d == 0 {
        return Err(vec![format!(
            "--days: must be at least 1 (got {:?})",
            args.days
        )]);
    }
    c.horizon_ms = d.saturating_mul(86_400_000);
    Ok(c)
}

fn explain(e: &RolloutError) -> Vec<String> {
    match e {
        RolloutError::Config {
            field,
            value,
            problem,
        } => {
            let flag = match *field {
                "waves" => "--waves",
                "hosts" => "--hosts",
                "veto_fraction" => "--veto-fraction",
                other => other,
            };
            vec![format!("{flag}: {problem} (got {value:?})")]
        }
        other => vec![format!("internal error: {other}")],
    }
}

/// Runs `twine rollout ...`; the lines to print.
pub(crate) fn run(cmd: &RolloutCommand) -> Result<Vec<String>, Vec<String>> {
    let RolloutCommand::Simulate(args) = cmd;
    let config = config(args)?;
    if let Some(w) = config.health_failure_at
        && w > config.waves_percent.len()
    {
        return Err(vec![format!(
            "--health-failure-at: wave {w} does not exist (waves 0..={}, 0 = canaries)",
            config.waves_percent.len()
        )]);
    }
    let out = simulate(&config).map_err(|e| explain(&e))?;
    if let Some(path) = &args.plot {
        plot(&out, path).map_err(|e| vec![format!("{}: {e}", path.display())])?;
    }
    if args.json {
        return Ok(vec![json(&out).to_string()]);
    }
    Ok(summary(&out))
}

fn kind(k: WaveKind) -> String {
    match k {
        WaveKind::Canary => "canary".to_owned(),
        WaveKind::Percent(p) => format!("{p}%"),
        _ => "?".to_owned(),
    }
}

fn json(o: &SimOutcome) -> serde_json::Value {
    let mut by_reason = std::collections::BTreeMap::new();
    let trailing: Vec<_> = o
        .trailing
        .iter()
        .map(|t| {
            *by_reason.entry(t.blocker.name()).or_insert(0usize) += 1;
            let deadline = match t.blocker {
                Blocker::Veto { deadline_ms, .. } => Some(days(deadline_ms)),
                _ => None,
            };
            serde_json::json!({
                "host": t.host.0,
                "wave": t.wave,
                "reason": t.blocker.name(),
                "job": t.blocker.job().map(|j| j.0),
                "deadline_days": deadline,
            })
        })
        .collect();
    let waves: Vec<_> = o
        .waves
        .iter()
        .map(|w| {
            serde_json::json!({
                "kind": kind(w.kind),
                "size": w.size,
                "started_days": w.started_ms.map(days),
                "ended_days": w.ended_ms.map(days),
            })
        })
        .collect();
    serde_json::json!({
        "hosts": o.hosts,
        "updated": o.updated(),
        "days_to_99": o.time_to(0.99).map(days),
        "days_to_100": o.time_to(1.0).map(days),
        "waves": waves,
        "halted_at_wave": o.halted_at,
        "rollback_proposed": o.rollback.len(),
        "vetoing_jobs": o.jobs.iter().filter(|j| j.vetoes).count(),
        "jobs": o.jobs.len(),
        "trailing": trailing,
        "trailing_by_reason": by_reason,
        "budget_violations": o.budget_violations,
        "fault_domain_violations": o.fault_domain_violations,
        "end_days": days(o.end_ms),
    })
}

fn summary(o: &SimOutcome) -> Vec<String> {
    let show = |t: Option<u64>| t.map_or("never".to_owned(), |t| format!("{:.2} days", days(t)));
    let mut lines = vec![
        format!("{} of {} hosts updated", o.updated(), o.hosts),
        format!(
            "99%: {}; 100%: {}",
            show(o.time_to(0.99)),
            show(o.time_to(1.0))
        ),
    ];
    for (i, w) in o.waves.iter().enumerate() {
        lines.push(format!(
            "wave {i} ({}): {} hosts, ended {}",
            kind(w.kind),
            w.size,
            show(w.ended_ms)
        ));
    }
    if let Some(w) = o.halted_at {
        lines.push(format!(
            "halted: the gate after wave {w} failed; {} hosts proposed for rollback",
            o.rollback.len()
        ));
    }
    let mut by_reason = std::collections::BTreeMap::new();
    for t in &o.trailing {
        *by_reason.entry(t.blocker.name()).or_insert(0usize) += 1;
    }
    for (r, n) in by_reason {
        lines.push(format!("trailing: {n} {r}"));
    }
    lines.push(format!(
        "violations (from the event log): budget {}, fault domain {}",
        o.budget_violations, o.fault_domain_violations
    ));
    lines
}

/// The share of the fleet updated over time, one colour per wave (the segment while it
/// ran), with each wave's end marked.
fn plot(o: &SimOutcome, path: &Path) -> Result<(), Box<dyn std::error::Error>> {
    use plotters::prelude::*;
    #[allow(clippy::cast_precision_loss)]
    let share = |n: usize| n as f64 / o.hosts.max(1) as f64 * 100.0;
    // Up to the last change, not the horizon, so the early waves are not squashed.
    let last = o
        .waves
        .iter()
        .filter_map(|w| w.ended_ms)
        .chain(o.curve.last().map(|&(t, _)| t))
        .max()
        .unwrap_or(o.end_ms);
    let end = (days(last) * 1.05).max(0.01);
    let area = SVGBackend::new(path, (1000, 600)).into_drawing_area();
    area.fill(&WHITE)?;
    let mut chart = ChartBuilder::on(&area)
        .caption(
            format!("twine rollout simulate: {} hosts", o.hosts),
            ("sans-serif", 18),
        )
        .margin(10)
        .x_label_area_size(30)
        .y_label_area_size(60)
        .build_cartesian_2d(0.0..end, 0.0..101.0)?;
    chart
        .configure_mesh()
        .y_desc("% of the fleet updated")
        .x_desc("days")
        .draw()?;
    let mut points: Vec<(f64, f64)> = Vec::new();
    for &(t, n) in &o.curve {
        if let Some(&(_, y)) = points.last() {
            points.push((days(t), y));
        }
        points.push((days(t), share(n)));
    }
    points.push((end, points.last().map_or(0.0, |p| p.1)));
    for (i, w) in o.waves.iter().enumerate() {
        let color = Palette99::pick(i).to_rgba();
        let from = w.started_ms.map_or(f64::INFINITY, days);
        let to = o
            .waves
            .get(i + 1)
            .and_then(|n| n.started_ms)
            .map_or(end, days);
        let seg: Vec<(f64, f64)> = points
            .iter()
            .copied()
            .filter(|&(x, _)| x >= from && x <= to)
            .collect();
        chart
            .draw_series(LineSeries::new(seg, color.stroke_width(2)))?
            .label(format!("wave {i} ({})", kind(w.kind)))
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], color));
        if let Some(e) = w.ended_ms {
            let x = days(e);
            chart.draw_series(std::iter::once(PathElement::new(
                vec![(x, 0.0), (x, 101.0)],
                color.mix(0.3),
            )))?;
        }
    }
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::LowerRight)
        .background_style(WHITE)
        .border_style(BLACK)
        .draw()?;
    area.present()?;
    Ok(())
}
