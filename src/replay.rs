//! `twine replay`: tasks of a trace arriving and leaving over time, placed online and
//! rebalanced, against the lower bound; the engine is `twine_sched::replay`.

use std::path::{Path, PathBuf};
use std::time::Instant;

use clap::builder::PossibleValue;
use twine::sched::Policy;
use twine::sched::pack::Hosts;
use twine::sched::replay::{
    Arrivals, DEFAULT_MOVE_BUDGET, DEFAULT_REBALANCE_EVERY_S, Event, Replay, ReplayConfig,
    ReplayError, Sample, replay,
};
use twine::sched::trace::{TraceNode, read_nodes, read_pods};

use crate::flags::number;
use crate::trace_input::{gpu_devices, host_name, parse_shape, read};

/// A `--policy` value: any [`Policy`], spelled as [`Policy::name`].
#[derive(Clone, Copy)]
pub(crate) struct PolicyArg(Policy);

static POLICIES: [PolicyArg; Policy::ALL.len()] = {
    let mut all = [PolicyArg(Policy::FirstFit); Policy::ALL.len()];
    let mut i = 0;
    while i < all.len() {
        all[i] = PolicyArg(Policy::ALL[i]);
        i += 1;
    }
    all
};

impl clap::ValueEnum for PolicyArg {
    fn value_variants<'a>() -> &'a [Self] {
        &POLICIES
    }

    fn to_possible_value(&self) -> Option<PossibleValue> {
        Some(PossibleValue::new(self.0.name()))
    }
}

/// Where arrivals come from.
#[derive(Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub(crate) enum ArrivalsArg {
    /// The pods' creation_time and deletion_time.
    Trace,
    /// Pods drawn from the trace's mix, arriving as a Poisson process at --load.
    Poisson,
}

/// The arguments of `twine replay`.
#[derive(clap::Args)]
#[command(after_help = "\
The fleet is the nodes of NODES.csv, or with --hosts-shape as many identical hosts of that \
shape as NODES.csv lists (--hosts N for another number), named host-00000, host-00001, ... \
A host is in use while it runs at least one task.

Two allocators replay the same arrivals and departures in lock-step: one runs a ReBalancer \
round (greedy, compact) at every multiple of --rebalance-every seconds, the other never \
rebalances (the *_without_rebalance figures). A pod that fits nowhere is pending and retried \
first come first served whenever a departure or a move frees room; its lifetime counts from \
its arrival.

--arrivals poisson: pods drawn (seeded) from the trace's shapes, lifetimes from its durations \
(deletion_time - creation_time), arriving at the rate that holds the demand at --load times \
the fleet's capacity in its bottleneck dimension; the replay starts in that steady state (the \
pods alive at 0 arrive at 0). Arrival K is named NAME#K after the trace pod it copies.

--events CSV: time,event,pod,host,gpu_devices; time in seconds with three decimals; event \
place, move (host is the destination), free (host is the one left) or unplaced (host and \
gpu_devices empty); applied in file order they never overcommit a host.

--json: one object; averages are over time, [0, duration]; wall_s is the time the replay \
took (both runs), reading and writing files aside.")]
pub(crate) struct ReplayArgs {
    /// Nodes CSV (columns sn,cpu_milli,memory_mib,gpu,model).
    #[arg(long)]
    nodes: PathBuf,
    /// Pods CSV (columns name,cpu_milli,memory_mib,num_gpu,gpu_milli[,gpu_spec,creation_time,deletion_time,...]).
    #[arg(long)]
    pods: PathBuf,
    /// Identical hosts of this shape instead of the listed nodes: CPU_MILLI,MEMORY_MIB,GPUS[,GPU_MODEL].
    #[arg(long)]
    hosts_shape: Option<String>,
    /// With --hosts-shape: this many hosts [default: as many as NODES.csv lists].
    #[arg(long, value_name = "N", allow_hyphen_values = true)]
    hosts: Option<String>,
    /// Placement policy of every request.
    #[arg(long, value_enum, default_value = "best-fit")]
    policy: PolicyArg,
    /// Where arrivals come from.
    #[arg(long, value_enum, default_value = "trace")]
    arrivals: ArrivalsArg,
    /// With --arrivals poisson: steady-state demand as a fraction of the fleet's capacity
    /// in its bottleneck dimension [default: 0.8].
    #[arg(long, value_name = "FACTOR", allow_hyphen_values = true)]
    load: Option<String>,
    /// The replay covers [0, SECONDS] [default: 86400 for poisson, up to the trace's last
    /// creation or deletion for trace].
    #[arg(long, value_name = "SECONDS", allow_hyphen_values = true)]
    duration: Option<String>,
    /// With --arrivals poisson: the seed of every random draw [default: 0].
    #[arg(long, value_name = "N", allow_hyphen_values = true)]
    seed: Option<String>,
    /// A rebalance round at every multiple of this many seconds.
    #[arg(long, value_name = "SECONDS", allow_hyphen_values = true, default_value_t = DEFAULT_REBALANCE_EVERY_S.to_string())]
    rebalance_every: String,
    /// Moves per rebalance round, at most (0: never move).
    #[arg(long, value_name = "N", allow_hyphen_values = true, default_value_t = DEFAULT_MOVE_BUDGET.to_string())]
    move_budget: String,
    /// Print one JSON object instead of a summary.
    #[arg(long)]
    json: bool,
    /// Write an SVG of hosts in use (with and without rebalancing, and the lower bound)
    /// and utilisation over time.
    #[arg(long, value_name = "FILE.svg")]
    plot: Option<PathBuf>,
    /// Write every event of the rebalanced run as CSV.
    #[arg(long, value_name = "FILE.csv")]
    events: Option<PathBuf>,
}

/// The flag a config field is set by.
fn flag_of(field: &str) -> &str {
    match field {
        "load" => "--load",
        "duration_s" => "--duration",
        "rebalance_every_s" => "--rebalance-every",
        "fleet_size" => "--hosts",
        "move_budget" => "--move-budget",
        other => other,
    }
}

/// A replay error as `path: message` or `--flag: message`.
fn explain(e: &ReplayError, args: &ReplayArgs) -> Vec<String> {
    let pods = args.pods.display();
    let line = match e {
        ReplayError::Config {
            field: "hosts",
            value,
            problem,
        } => format!("{}: {problem} (got {value})", args.nodes.display()),
        ReplayError::Config {
            field,
            value,
            problem,
        } => format!("{}: {problem} (got {value})", flag_of(field)),
        ReplayError::NoCreationTime { .. } | ReplayError::DeletedBeforeCreated { .. } => {
            format!("{pods}: {e}")
        }
        ReplayError::NoPods | ReplayError::NoDurations | ReplayError::NoBottleneck => {
            let text = e.to_string();
            format!("{pods}: {}", text.strip_prefix("pods: ").unwrap_or(&text))
        }
        other => format!("internal error: {other}"),
    };
    vec![line]
}

/// The config the flags ask for.
fn config(
    args: &ReplayArgs,
    nodes: Vec<TraceNode>,
) -> Result<(ReplayConfig, Option<u64>), Vec<String>> {
    let listed = nodes.len();
    let hosts = match &args.hosts_shape {
        Some(shape) => parse_shape(shape)?,
        None => {
            if let Some(n) = &args.hosts {
                return Err(vec![format!(
                    "--hosts: only with --hosts-shape (got {n:?}; without it the fleet is the nodes of {})",
                    args.nodes.display()
                )]);
            }
            Hosts::Listed(nodes)
        }
    };
    let fleet_size = match &args.hosts {
        Some(n) => number("--hosts", n, "a whole number of hosts")?,
        None => listed,
    };
    let poisson = args.arrivals == ArrivalsArg::Poisson;
    for (flag, given) in [("--load", &args.load), ("--seed", &args.seed)] {
        if let (Some(value), false) = (given, poisson) {
            return Err(vec![format!(
                "{flag}: only with --arrivals poisson (got {value:?})"
            )]);
        }
    }
    let seed = args
        .seed
        .as_deref()
        .map(|s| number::<u64>("--seed", s, "a whole number"))
        .transpose()?;
    let arrivals = if poisson {
        let load = args
            .load
            .as_deref()
            .map_or(Ok(0.8), |s| number::<f64>("--load", s, "a number"))?;
        Arrivals::Poisson {
            load,
            seed: seed.unwrap_or(0),
        }
    } else {
        Arrivals::Trace
    };
    let mut config = ReplayConfig::new(hosts, arrivals)
        .with_fleet_size(fleet_size)
        .with_policy(args.policy.0)
        .with_rebalance_every_s(number(
            "--rebalance-every",
            &args.rebalance_every,
            "a whole number of seconds",
        )?)
        .with_move_budget(number(
            "--move-budget",
            &args.move_budget,
            "a whole number",
        )?);
    if let Some(d) = &args.duration {
        config = config.with_duration_s(number("--duration", d, "a whole number of seconds")?);
    }
    Ok((config, poisson.then(|| seed.unwrap_or(0))))
}

/// `ms` as seconds with three decimals.
fn seconds(ms: u64) -> String {
    format!("{}.{:03}", ms / 1000, ms % 1000)
}

const EVENTS_HEADER: [&str; 5] = ["time", "event", "pod", "host", "gpu_devices"];

fn write_events(path: &Path, hosts: &Hosts, events: &[Event]) -> Result<(), Vec<String>> {
    let failed = |e: &dyn std::fmt::Display| vec![format!("{}: {e}", path.display())];
    let mut out = csv::Writer::from_path(path).map_err(|e| failed(&e))?;
    out.write_record(EVENTS_HEADER).map_err(|e| failed(&e))?;
    for e in events {
        let host = match e.host {
            Some(h) => host_name(hosts, h).map_err(|e| failed(&e))?,
            None => String::new(),
        };
        out.write_record([
            seconds(e.time_ms).as_str(),
            e.kind.name(),
            e.pod.as_str(),
            host.as_str(),
            gpu_devices(&e.gpus).as_str(),
        ])
        .map_err(|e| failed(&e))?;
    }
    out.flush().map_err(|e| failed(&e))
}

/// A line of the plot: its label, its colour, its value in a window.
type Line = (&'static str, plotters::style::RGBColor, fn(&Sample) -> f64);

/// Hosts in use (with and without rebalancing, and the lower bound) above, utilisation
/// in the bottleneck dimension below, over trace time.
fn plot(r: &Replay, path: &Path) -> Result<(), Box<dyn std::error::Error>> {
    use plotters::prelude::*;
    let end = r.series.last().map_or(1.0, |s| s.end_s.max(1.0));
    let (scale, unit) = if end > 3.0 * 86_400.0 {
        (86_400.0, "days")
    } else if end > 3.0 * 3_600.0 {
        (3_600.0, "hours")
    } else {
        (1.0, "seconds")
    };
    let top = r
        .series
        .iter()
        .map(|s| {
            s.hosts_in_use
                .max(s.hosts_in_use_baseline)
                .max(s.lower_bound)
        })
        .fold(1.0, f64::max)
        * 1.05;
    // Start the axis near the lowest line, so a gap of a few percent shows.
    let bottom = r
        .series
        .iter()
        .map(|s| {
            s.hosts_in_use
                .min(s.hosts_in_use_baseline)
                .min(s.lower_bound)
        })
        .fold(top, f64::min)
        * 0.9;
    let mid = |s: &Sample| (s.start_s + s.end_s) / 2.0 / scale;
    let area = SVGBackend::new(path, (1000, 700)).into_drawing_area();
    area.fill(&WHITE)?;
    let (upper, lower) = area.split_vertically(430);
    let mut hosts = ChartBuilder::on(&upper)
        .caption(
            format!(
                "twine replay: {} hosts, bottleneck {}",
                r.workload.hosts, r.workload.bottleneck
            ),
            ("sans-serif", 18),
        )
        .margin(10)
        .x_label_area_size(30)
        .y_label_area_size(60)
        .build_cartesian_2d(0.0..end / scale, bottom.min(top - 1.0).max(0.0)..top)?;
    hosts
        .configure_mesh()
        .y_desc("hosts in use")
        .x_desc(unit)
        .draw()?;
    let lines: [Line; 3] = [
        ("with rebalancing", BLUE, |s| s.hosts_in_use),
        ("without rebalancing", RED, |s| s.hosts_in_use_baseline),
        ("lower bound", BLACK, |s| s.lower_bound),
    ];
    for (label, color, value) in lines {
        hosts
            .draw_series(LineSeries::new(
                r.series.iter().map(|s| (mid(s), value(s))),
                &color,
            ))?
            .label(label)
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], color));
    }
    hosts
        .configure_series_labels()
        .position(SeriesLabelPosition::LowerRight)
        .background_style(WHITE)
        .border_style(BLACK)
        .draw()?;
    let mut util = ChartBuilder::on(&lower)
        .margin(10)
        .x_label_area_size(30)
        .y_label_area_size(60)
        .build_cartesian_2d(0.0..end / scale, 0.0..1.05)?;
    util.configure_mesh()
        .y_desc(format!(
            "{} utilisation of hosts in use",
            r.workload.bottleneck
        ))
        .x_desc(unit)
        .draw()?;
    let lines: [Line; 2] = [
        ("with rebalancing", BLUE, |s| s.utilisation),
        ("without rebalancing", RED, |s| s.utilisation_baseline),
    ];
    for (label, color, value) in lines {
        util.draw_series(LineSeries::new(
            r.series.iter().map(|s| (mid(s), value(s))),
            &color,
        ))?
        .label(label)
        .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], color));
    }
    util.configure_series_labels()
        .position(SeriesLabelPosition::LowerRight)
        .background_style(WHITE)
        .border_style(BLACK)
        .draw()?;
    area.present()?;
    Ok(())
}

fn json(r: &Replay, config: &ReplayConfig, seed: Option<u64>, wall_s: f64) -> serde_json::Value {
    let (m, b, w) = (&r.main, &r.baseline, &r.workload);
    let load = match config.arrivals {
        Arrivals::Poisson { load, .. } => Some(load),
        _ => None,
    };
    serde_json::json!({
        "arrivals_from": if load.is_some() { "poisson" } else { "trace" },
        "hosts": w.hosts,
        "policy": config.policy.name(),
        "load": load,
        "seed": seed,
        "duration_s": w.duration_s,
        "rebalance_every_s": config.rebalance_every_s,
        "move_budget": config.move_budget,
        "bottleneck": w.bottleneck.to_string(),
        "rate_per_s": w.rate_per_s,
        "initial_pods": w.initial_pods,
        "arrivals": w.arrivals,
        "departures": w.departures,
        "hosts_in_use_avg": m.hosts_in_use_avg,
        "hosts_in_use_avg_without_rebalance": b.hosts_in_use_avg,
        "lower_bound_avg": m.lower_bound_avg,
        "lower_bound_avg_without_rebalance": b.lower_bound_avg,
        "ratio": m.ratio,
        "ratio_without_rebalance": b.ratio,
        "saving": r.saving(),
        "utilisation_avg": m.utilisation_avg,
        "utilisation_avg_without_rebalance": b.utilisation_avg,
        "fragmentation_avg": m.fragmentation_avg,
        "fragmentation_avg_without_rebalance": b.fragmentation_avg,
        "moves": m.moves,
        "rounds": m.rounds,
        "max_moves_in_a_round": m.max_moves_in_a_round,
        "pending_task_seconds": m.pending_task_seconds,
        "pending_task_seconds_without_rebalance": b.pending_task_seconds,
        "placed": m.placed,
        "unplaced": m.unplaced,
        "unplaceable": m.unplaceable,
        "unplaced_without_rebalance": b.unplaced,
        "events": r.events.len(),
        "wall_s": wall_s,
    })
}

fn summary(r: &Replay, config: &ReplayConfig, wall_s: f64) -> Vec<String> {
    let (m, b, w) = (&r.main, &r.baseline, &r.workload);
    let from = match (config.arrivals, w.rate_per_s) {
        (Arrivals::Poisson { load, seed }, Some(rate)) => format!(
            "poisson arrivals at load {load} (seed {seed}, {rate:.3}/s, {} pods at 0)",
            w.initial_pods
        ),
        _ => "trace arrivals".to_owned(),
    };
    let mut lines = vec![
        format!(
            "{from}; {} hosts, bottleneck {}, policy {}, {} s",
            w.hosts,
            w.bottleneck,
            config.policy.name(),
            w.duration_s
        ),
        format!(
            "arrivals {}  departures {}  placed {}  unplaced {} ({} fit no empty host)  pending {:.0} task-seconds",
            w.arrivals, w.departures, m.placed, m.unplaced, m.unplaceable, m.pending_task_seconds
        ),
        format!(
            "hosts in use {:.1} (lower bound {:.1}, ratio {:.3}); without rebalancing {:.1} (ratio {:.3}); saving {:.1} hosts",
            m.hosts_in_use_avg,
            m.lower_bound_avg,
            m.ratio,
            b.hosts_in_use_avg,
            b.ratio,
            r.saving()
        ),
        format!(
            "utilisation {:.3} ({:.3} without)  fragmentation {:.3} ({:.3} without)",
            m.utilisation_avg, b.utilisation_avg, m.fragmentation_avg, b.fragmentation_avg
        ),
        format!(
            "moves {} in {} rounds (at most {} in a round, budget {}, every {} s)",
            m.moves, m.rounds, m.max_moves_in_a_round, config.move_budget, config.rebalance_every_s
        ),
    ];
    lines.push(format!("wall {wall_s:.2} s"));
    lines
}

/// Runs `twine replay`; returns the lines to print on stdout.
pub(crate) fn run(args: &ReplayArgs) -> Result<Vec<String>, Vec<String>> {
    let nodes = read(&args.nodes, read_nodes)?;
    let pods = read(&args.pods, read_pods)?;
    let (config, seed) = config(args, nodes)?;
    let start = Instant::now();
    let r = replay(&pods, &config).map_err(|e| explain(&e, args))?;
    let wall_s = start.elapsed().as_secs_f64();
    if let Some(path) = &args.events {
        write_events(path, &config.hosts, &r.events)?;
    }
    if let Some(path) = &args.plot {
        plot(&r, path).map_err(|e| vec![format!("{}: {e}", path.display())])?;
    }
    if args.json {
        return Ok(vec![json(&r, &config, seed, wall_s).to_string()]);
    }
    Ok(summary(&r, &config, wall_s))
}
