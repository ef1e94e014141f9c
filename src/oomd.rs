//! `twine oomd run | status | simulate`: the Senpai-style resizer and kill policies of
//! twine-oomd on the command line.

use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::AtomicBool;
use std::time::Duration;

use serde_json::{Value, json};
use twine_oomd::config::Config;
use twine_oomd::daemon::{
    DEFAULT_STATE_FILE, Daemon, KillRecord, Options, Output, Record, Selection,
};
use twine_oomd::senpai::{Action, Mode, SenpaiConfig};
use twine_oomd::sim::{SimReport, SimRow, Workload, simulate};
use twine_oomd::{Cgroup, CgroupError, CgroupRoot, Limit, LimitFile, PressureLine, Resource};

use crate::{Problems, problem};

/// `--mode`.
#[derive(Clone, Copy, clap::ValueEnum)]
pub(crate) enum ModeArg {
    /// Move memory.high down and up (restored on exit).
    High,
    /// Proactive reclaim through memory.reclaim (Linux 5.19+).
    Reclaim,
}

impl From<ModeArg> for Mode {
    fn from(mode: ModeArg) -> Self {
        match mode {
            ModeArg::High => Mode::High,
            ModeArg::Reclaim => Mode::Reclaim,
        }
    }
}

/// The `twine oomd` subcommands.
#[derive(clap::Subcommand)]
pub(crate) enum OomdCommand {
    /// Size many cgroups by their memory pressure (Senpai) and run the kill policy, until
    /// SIGTERM, SIGINT or --duration; every memory.high changed is then restored.
    Run(RunArgs),
    /// Show one cgroup's memory: current, limits, pressure and a working-set estimate.
    Status(StatusArgs),
    /// Drive the controller against a simulated workload with a known hot and cold set.
    Simulate(SimulateArgs),
}

/// The arguments of `twine oomd run`.
#[derive(clap::Args)]
pub(crate) struct RunArgs {
    /// TOML config: [[resize]] globs, [[kill]] rules, [[prekill_hook]]s
    /// (twine-oomd/examples/oomd.toml).
    #[arg(
        long,
        value_name = "FILE",
        required_unless_present = "cgroup",
        conflicts_with = "cgroup"
    )]
    config: Option<PathBuf>,
    /// Cgroups to size, relative to the cgroup2 root or absolute paths inside it.
    #[arg(long, value_name = "PATH", num_args = 1..)]
    cgroup: Vec<String>,
    /// high or reclaim; default: the config's, else reclaim where the cgroup has
    /// memory.reclaim and high elsewhere.
    #[arg(long, value_enum)]
    mode: Option<ModeArg>,
    /// The controller's interval in seconds (Senpai: 6); the daemon ticks every second or
    /// every interval if shorter.
    #[arg(long, value_name = "SECONDS")]
    interval: Option<f64>,
    /// Stop cleanly (restoring memory.high) after this many seconds.
    #[arg(long, value_name = "SECONDS")]
    duration: Option<f64>,
    /// Report kills without carrying them out (resizing still writes).
    #[arg(long)]
    dry_run: bool,
    /// Print one JSON record per cgroup per tick on stdout (one object per line), and one
    /// line per kill decision (dry run or not) with "action": "kill".
    #[arg(long)]
    json: bool,
    /// Where the original memory.high values are kept, so that the next run restores them
    /// after a crash.
    #[arg(long, value_name = "FILE", default_value = DEFAULT_STATE_FILE)]
    state: PathBuf,
    /// The cgroup2 mount to use (default: found in /proc/self/mountinfo).
    #[arg(long, value_name = "DIR")]
    root: Option<PathBuf>,
}

/// The arguments of `twine oomd status`.
#[derive(clap::Args)]
pub(crate) struct StatusArgs {
    /// The cgroup, relative to the cgroup2 root or an absolute path inside it.
    cgroup: String,
    /// The cgroup2 mount to use (default: found in /proc/self/mountinfo).
    #[arg(long, value_name = "DIR")]
    root: Option<PathBuf>,
    /// Print one JSON object.
    #[arg(long)]
    json: bool,
}

/// The arguments of `twine oomd simulate`.
#[derive(clap::Args)]
pub(crate) struct SimulateArgs {
    /// Simulated minutes.
    #[arg(long, default_value_t = 10)]
    minutes: u64,
    /// The controller's mode.
    #[arg(long, value_enum, default_value = "high")]
    mode: ModeArg,
    /// Write an SVG of memory.high, memory.current and the stall over time.
    #[arg(long, value_name = "FILE.svg")]
    plot: Option<PathBuf>,
    /// Print one JSON object: workload, config and summary.
    #[arg(long)]
    json: bool,
}

/// Runs a `twine oomd` subcommand.
pub(crate) fn oomd(command: OomdCommand) -> Result<(), Problems> {
    match command {
        OomdCommand::Run(args) => run(&args),
        OomdCommand::Status(args) => status(&args),
        OomdCommand::Simulate(args) => simulate_cmd(&args),
    }
}

/// `--root`, or the mount found in `/proc/self/mountinfo`.
fn cgroup_root(root: Option<&Path>) -> Result<CgroupRoot, Problems> {
    match root {
        Some(dir) if dir.is_dir() => Ok(CgroupRoot::at(dir)),
        Some(dir) => Err(problem(format!("{}: not a directory", dir.display()))),
        None => CgroupRoot::find().map_err(problem),
    }
}

/// A `--cgroup` or `CGROUP` argument as a path relative to `root` (empty for the root).
fn relative(root: &CgroupRoot, path: &str) -> Result<String, Problems> {
    if !path.starts_with('/') {
        return Ok(path.trim_end_matches('/').to_owned());
    }
    match Path::new(path).strip_prefix(root.path()) {
        Ok(rel) => Ok(rel.display().to_string()),
        Err(_) => Err(problem(format!(
            "{path}: outside the cgroup2 root {}",
            root.path().display()
        ))),
    }
}

/// A `--cgroup` argument: a cgroup below the root, which the daemon may size.
fn sized(root: &CgroupRoot, path: &str) -> Result<String, Problems> {
    let rel = relative(root, path)?;
    root.cgroup(&rel)
        .map(|_| rel)
        .map_err(|e| problem(format!("{path}: {e}")))
}

/// Seconds given on the command line as a duration.
fn seconds(flag: &str, value: f64) -> Result<Duration, Problems> {
    match Duration::try_from_secs_f64(value) {
        Ok(d) if !d.is_zero() => Ok(d),
        _ => Err(problem(format!(
            "{flag}: {value} is not a positive number of seconds"
        ))),
    }
}

/// Logs go to stderr; `TWINE_LOG` (error, warn, info, debug, trace) sets the level.
pub(crate) fn init_logs() -> Result<(), Problems> {
    let level = match std::env::var("TWINE_LOG") {
        Ok(text) => text.parse::<tracing::Level>().map_err(|_| {
            problem(format!(
                "TWINE_LOG: unknown level {text:?} (use error, warn, info, debug or trace)"
            ))
        })?,
        Err(_) => tracing::Level::INFO,
    };
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_max_level(level)
        .with_target(false)
        .init();
    Ok(())
}

fn run(args: &RunArgs) -> Result<(), Problems> {
    init_logs()?;
    let root = cgroup_root(args.root.as_deref())?;
    let selection = match &args.config {
        Some(path) => {
            let text = std::fs::read_to_string(path)
                .map_err(|e| problem(format!("{}: {e}", path.display())))?;
            let config = Config::from_toml(&text)
                .map_err(|e| problem(format!("{}: {e}", path.display())))?;
            Selection::Config(Box::new(config))
        }
        None => Selection::Cgroups(
            args.cgroup
                .iter()
                .map(|c| sized(&root, c))
                .collect::<Result<_, _>>()?,
        ),
    };
    let mut options = Options::new(root, selection);
    options.mode = args.mode.map(Mode::from);
    options.interval = args
        .interval
        .map(|s| seconds("--interval", s))
        .transpose()?;
    options.dry_run = args.dry_run;
    options.state_file = Some(args.state.clone());
    let duration = args
        .duration
        .map(|s| seconds("--duration", s))
        .transpose()?;
    let shown = args.config.as_deref().map(|p| format!("{}: ", p.display()));
    let mut daemon =
        Daemon::new(options).map_err(|e| problem(format!("{}{e}", shown.unwrap_or_default())))?;
    match twine_oomd::daemon::raise_fd_limit() {
        Ok(limit) => tracing::debug!(limit, "RLIMIT_NOFILE soft limit raised"),
        Err(error) => {
            tracing::warn!(%error, "could not raise RLIMIT_NOFILE; many cgroups may not fit")
        }
    }
    let stop = Arc::new(AtomicBool::new(false));
    for signal in [signal_hook::consts::SIGTERM, signal_hook::consts::SIGINT] {
        let registered =
            signal_hook::flag::register_conditional_shutdown(signal, 1, Arc::clone(&stop))
                .and_then(|_| signal_hook::flag::register(signal, Arc::clone(&stop)));
        // The first signal stops cleanly (restoring); a second one, during a restore that
        // hangs, exits at once (status 1) and leaves the state file to the next run.
        registered
            .map_err(|e| problem(format!("registering a handler for signal {signal}: {e}")))?;
    }
    tracing::info!(period = ?daemon.tick_period(), "twine oomd running");
    let json = args.json;
    daemon
        .run(&stop, duration, |output| {
            let line = match (output, json) {
                (Output::Record(record), true) => serde_json::to_string(record),
                (Output::Kill(kill), true) => serde_json::to_string(&kill_json(kill)),
                (Output::Record(record), false) => Ok(record_line(record)),
                (Output::Kill(kill), false) => Ok(kill_line(kill)),
            };
            match line {
                Ok(line) => say!("{line}"),
                Err(e) => tracing::error!(%e, "output line not printed"),
            }
        })
        .map_err(problem)
}

/// A kill decision as a JSON line beside the per-tick records: `cgroup` is the victim and
/// `action` is `"kill"`, so that scripts can filter both kinds of line by those fields.
fn kill_json(k: &KillRecord) -> Value {
    json!({
        "time_s": k.time_s,
        "cgroup": k.victim,
        "action": "kill",
        "rule": k.rule,
        "via": k.via,
        "dry_run": k.dry_run,
        "hook": k.hook,
        "error": k.error,
    })
}

/// A kill decision as one human-readable line.
fn kill_line(k: &KillRecord) -> String {
    let done = match (k.dry_run, k.via) {
        (true, _) => " (dry run: not killed)".to_owned(),
        (false, Some(via)) => format!(" via {via}"),
        (false, None) => String::new(),
    };
    let hook = labelled("hook", k.hook.as_deref());
    let error = labelled("error", k.error.as_deref());
    format!(
        "{:>9.3}s {} kill (rule {}){done}{hook}{error}",
        k.time_s, k.victim, k.rule
    )
}

/// ` LABEL: VALUE`, or nothing without a value.
fn labelled(label: &str, value: Option<&str>) -> String {
    value.map(|v| format!(" {label}: {v}")).unwrap_or_default()
}

/// A record as one human-readable line.
fn record_line(r: &Record) -> String {
    let opt = |v: Option<u64>| v.map_or("-".to_owned(), |v| v.to_string());
    let high = r.high.map_or("-".to_owned(), |h| h.to_string());
    let action = match r.action {
        Action::None => "none".to_owned(),
        Action::SetHigh(b) => format!("memory.high={b}"),
        Action::Reclaim(b) => format!("reclaim {b}"),
        Action::RestoreHigh(b) => format!("restore memory.high={}", limit(b)),
    };
    let cause = r.cause.map(|c| format!(" ({c:?})")).unwrap_or_default();
    let error = labelled("error", r.error.as_deref());
    format!(
        "{:>9.3}s {} current={} high={} some+={}us {action}{cause}{error}",
        r.time_s,
        r.cgroup,
        opt(r.current),
        high,
        opt(r.some_delta_us),
    )
}

fn limit(bytes: Option<u64>) -> Limit {
    bytes.map_or(Limit::Max, Limit::Bytes)
}

/// A value of a file that may be absent (no memory controller, no PSI): `None` then.
fn optional<T>(read: Result<T, CgroupError>) -> Result<Option<T>, Problems> {
    match read {
        Ok(value) => Ok(Some(value)),
        Err(CgroupError::Read { source, .. }) if source.kind() == std::io::ErrorKind::NotFound => {
            Ok(None)
        }
        Err(CgroupError::PsiUnavailable { .. }) => Ok(None),
        Err(e) => Err(problem(e)),
    }
}

fn pressure_json(line: &PressureLine) -> Value {
    json!({"avg10": line.avg10, "avg60": line.avg60, "avg300": line.avg300, "total_us": line.total_us})
}

/// How the working set is estimated.
const WORKING_SET: &str =
    "memory.current - inactive_file (memory.stat), as cAdvisor and the kubelet compute it";

fn status(args: &StatusArgs) -> Result<(), Problems> {
    let root = cgroup_root(args.root.as_deref())?;
    let rel = relative(&root, &args.cgroup)?;
    let cgroup: Cgroup = if rel.is_empty() {
        root.top()
    } else {
        root.cgroup(&rel)
            .map_err(|e| problem(format!("{}: {e}", args.cgroup)))?
    };
    if !cgroup.path().is_dir() {
        return Err(problem(format!(
            "{}: no such cgroup",
            cgroup.path().display()
        )));
    }
    let current = optional(cgroup.memory_current())?;
    let limits = [
        ("high", LimitFile::High),
        ("max", LimitFile::Max),
        ("low", LimitFile::Low),
        ("min", LimitFile::Min),
    ]
    .into_iter()
    .map(|(name, file)| Ok((name, optional(cgroup.limit(file))?)))
    .collect::<Result<Vec<_>, Problems>>()?;
    let inactive_file = optional(cgroup.memory_stat())?.and_then(|s| s.inactive_file());
    let working_set = current.zip(inactive_file).map(|(c, i)| c.saturating_sub(i));
    let pressure = optional(cgroup.pressure(Resource::Memory))?;
    if args.json {
        let mut object = json!({
            "cgroup": rel,
            "path": cgroup.path(),
            "current": current,
            "working_set": working_set,
            "working_set_formula": WORKING_SET,
            "pressure": pressure.map(|p| json!({
                "some": pressure_json(&p.some),
                "full": p.full.as_ref().map(pressure_json),
            })),
        });
        for (name, value) in &limits {
            object[*name] = json!(value);
        }
        say!("{object}");
        return Ok(());
    }
    let absent = "absent (no memory controller for this cgroup)";
    let show = |v: Option<String>| v.unwrap_or_else(|| absent.to_owned());
    say!("cgroup       {}", cgroup.path().display());
    say!("current      {}", show(current.map(|c| c.to_string())));
    for (name, value) in &limits {
        say!("{name:<12} {}", show(value.map(|l| l.to_string())));
    }
    match working_set {
        Some(bytes) => say!("working set  {bytes} ({WORKING_SET})"),
        None => say!("working set  {absent}"),
    }
    match pressure {
        Some(p) => {
            for (name, line) in [("some", Some(p.some)), ("full", p.full)] {
                if let Some(l) = line {
                    say!(
                        "pressure {name} avg10={:.2} avg60={:.2} avg300={:.2} total={}us",
                        l.avg10,
                        l.avg60,
                        l.avg300,
                        l.total_us
                    );
                }
            }
        }
        None => say!("pressure     absent (no PSI for this cgroup)"),
    }
    Ok(())
}

fn simulate_cmd(args: &SimulateArgs) -> Result<(), Problems> {
    let workload = Workload {
        duration_s: args.minutes.saturating_mul(60),
        ..Workload::default()
    };
    let config = SenpaiConfig {
        mode: args.mode.into(),
        ..SenpaiConfig::default()
    };
    let report = simulate(&workload, &config).map_err(problem)?;
    if let Some(path) = &args.plot {
        plot(&report, path).map_err(|e| problem(format!("{}: {e}", path.display())))?;
    }
    if args.json {
        let object = json!({
            "workload": report.workload,
            "config": report.config,
            "summary": report.summary,
        });
        say!("{object}");
        return Ok(());
    }
    let s = &report.summary;
    let mib = |b: u64| b as f64 / f64::from(1 << 20);
    let cold = workload.cold_anon.saturating_add(workload.cold_file);
    say!(
        "cold given back: {:.1} MiB of {:.1} MiB ({:.1} %) in {} min",
        mib(s.cold_given_back),
        mib(cold),
        s.cold_given_back_share * 100.0,
        args.minutes
    );
    say!(
        "stall: {:.1} ms in all, {:.2} ms per {:?} interval (target {:?})",
        s.total_stall_us as f64 / 1000.0,
        s.mean_stall_per_interval_us / 1000.0,
        config.interval,
        config.pressure
    );
    say!("hot set missing at the end: {:.1} MiB", mib(s.hot_missing));
    match s.converged_at_s {
        Some(t) => say!("90 % of the cold set given back at {t} s"),
        None => say!("90 % of the cold set not given back within the run"),
    }
    Ok(())
}

/// memory.high and memory.current (MiB) over a simulation's rows, on one drawing area:
/// the upper half of `twine oomd simulate --plot`, and the demo's memory plot.
pub(crate) fn draw_memory(
    area: &plotters::drawing::DrawingArea<
        plotters::prelude::SVGBackend<'_>,
        plotters::coord::Shift,
    >,
    caption: &str,
    caption_size: u32,
    rows: &[SimRow],
) -> Result<(), Box<dyn std::error::Error>> {
    use plotters::prelude::*;
    let mib = |b: u64| b as f64 / f64::from(1 << 20);
    let end = rows.last().map_or(1, |r| r.t_s.max(1)) as f64;
    let top_mib = rows
        .iter()
        .map(|r| mib(r.current).max(r.high.map_or(0.0, mib)))
        .fold(1.0, f64::max)
        * 1.1;
    let mut memory = ChartBuilder::on(area)
        .caption(caption, ("sans-serif", caption_size))
        .margin(10)
        .x_label_area_size(30)
        .y_label_area_size(60)
        .build_cartesian_2d(0.0..end, 0.0..top_mib)?;
    memory
        .configure_mesh()
        .y_desc("MiB")
        .x_desc("seconds")
        .draw()?;
    memory
        .draw_series(LineSeries::new(
            rows.iter()
                .filter_map(|r| Some((r.t_s as f64, mib(r.high?)))),
            &RED,
        ))?
        .label("memory.high")
        .legend(|(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], RED));
    memory
        .draw_series(LineSeries::new(
            rows.iter().map(|r| (r.t_s as f64, mib(r.current))),
            &BLUE,
        ))?
        .label("memory.current")
        .legend(|(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], BLUE));
    memory
        .configure_series_labels()
        .background_style(WHITE)
        .border_style(BLACK)
        .draw()?;
    Ok(())
}

/// memory.high and memory.current (MiB) above, stall (ms per second) below, over time.
fn plot(report: &SimReport, path: &Path) -> Result<(), Box<dyn std::error::Error>> {
    use plotters::prelude::*;
    let rows = &report.rows;
    let end = rows.last().map_or(1, |r| r.t_s.max(1)) as f64;
    let top_stall = rows
        .iter()
        .map(|r| r.stall_us as f64 / 1000.0)
        .fold(1.0, f64::max)
        * 1.1;
    let area = SVGBackend::new(path, (900, 600)).into_drawing_area();
    area.fill(&WHITE)?;
    let (upper, lower) = area.split_vertically(380);
    draw_memory(
        &upper,
        "twine oomd simulate: Senpai on a 200 MiB hot / 1 GiB cold workload",
        18,
        rows,
    )?;
    let mut stall = ChartBuilder::on(&lower)
        .margin(10)
        .x_label_area_size(30)
        .y_label_area_size(60)
        .build_cartesian_2d(0.0..end, 0.0..top_stall)?;
    stall
        .configure_mesh()
        .y_desc("some stall, ms/s")
        .x_desc("seconds")
        .draw()?;
    stall.draw_series(LineSeries::new(
        rows.iter()
            .map(|r| (r.t_s as f64, r.stall_us as f64 / 1000.0)),
        &BLACK,
    ))?;
    area.present()?;
    Ok(())
}
