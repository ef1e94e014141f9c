//! `twine agent run | logs | daemon | ctl | renew`: the host agent of twine-agent on
//! the command line.

use std::io::Write as _;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use serde_json::json;
use tokio::signal::unix::{SignalKind, signal};
use twine::spec::JobSpec;
use twine_agent::agent::{Agent, AgentSettings, log_dir, renew_identity};
use twine_agent::container::Network;
use twine_agent::lifecycle::{FailReason, TaskState};
use twine_agent::logs::{LogLine, LogStore};
use twine_agent::state::StateDir;

use crate::{Problems, problem};

/// The default state directory.
const DEFAULT_STATE_DIR: &str = "/var/lib/twine/agent";
/// The default rootfs: the one `cargo xtask rootfs` caches.
const DEFAULT_ROOTFS: &str = "/var/tmp/twine-cache/rootfs-bookworm";

/// `--network`.
#[derive(Clone, Copy, clap::ValueEnum)]
pub(crate) enum NetworkArg {
    /// The host's network namespace.
    Host,
    /// A new network namespace with loopback only.
    Private,
}

/// The `twine agent` subcommands.
#[derive(clap::Subcommand)]
pub(crate) enum AgentCommand {
    /// Run one job in a fresh container, in the foreground, streaming its log lines to
    /// stdout. Exits with the main process's exit status once the main unit has ended
    /// for good, or after stopping the job by its kill policy on SIGINT/SIGTERM. Run
    /// again on the same state directory, it reattaches to the job if it still runs.
    Run(RunArgs),
    /// Print a job's lines from the host log store, in order, one message per line.
    Logs(LogsArgs),
    /// Serve submit, stop, status and events as JSON lines on a local Unix socket;
    /// reattaches to the jobs of the state directory at start.
    Daemon(DaemonArgs),
    /// The daemon's client.
    Ctl(CtlArgs),
    /// Replace a job's credentials atomically (seen at /run/twine/identity inside).
    Renew(RenewArgs),
}

/// The arguments of `twine agent run`.
#[derive(clap::Args)]
pub(crate) struct RunArgs {
    /// The job spec (.toml, .json, .yaml).
    spec: PathBuf,
    /// The read-only base rootfs (a directory with systemd), shared by every container.
    #[arg(long, value_name = "DIR")]
    rootfs: PathBuf,
    /// Where the agent keeps its lock, job records, journals and log stores.
    #[arg(long, value_name = "DIR", default_value = DEFAULT_STATE_DIR)]
    state_dir: PathBuf,
    /// The container's network.
    #[arg(long, value_enum, default_value = "host")]
    network: NetworkArg,
    /// Seconds systemd in the container may take to become ready.
    #[arg(long, value_name = "S", default_value_t = 30)]
    ready_timeout: u64,
    /// Print each log line as a JSON object (seq, ts, unit, msg) instead of its message.
    #[arg(long)]
    json: bool,
}

/// The arguments of `twine agent logs`.
#[derive(clap::Args)]
pub(crate) struct LogsArgs {
    /// The job's name.
    job: String,
    /// The agent's state directory.
    #[arg(long, value_name = "DIR")]
    state_dir: PathBuf,
    /// Keep printing new lines until the job has ended and its last line is shown.
    #[arg(long)]
    follow: bool,
    /// One JSON object per line: seq, ts (µs), unit, msg, cursor.
    #[arg(long)]
    json: bool,
}

/// The arguments of `twine agent daemon`.
#[derive(clap::Args)]
pub(crate) struct DaemonArgs {
    /// The agent's state directory.
    #[arg(long, value_name = "DIR")]
    state_dir: PathBuf,
    /// The Unix socket to listen on (mode 0600).
    #[arg(long, value_name = "PATH")]
    socket: PathBuf,
    /// The rootfs containers boot.
    #[arg(long, value_name = "DIR", default_value = DEFAULT_ROOTFS)]
    rootfs: PathBuf,
}

/// The arguments of `twine agent ctl`.
#[derive(clap::Args)]
pub(crate) struct CtlArgs {
    /// The daemon's socket.
    #[arg(long, value_name = "PATH")]
    socket: PathBuf,
    #[command(subcommand)]
    op: CtlOp,
}

/// What `twine agent ctl` asks.
#[derive(clap::Subcommand)]
pub(crate) enum CtlOp {
    /// Submit a spec file; the daemon starts (or updates) the job.
    Submit {
        /// The job spec (.toml, .json, .yaml).
        spec: PathBuf,
    },
    /// Stop a job by its kill policy.
    Stop {
        /// The job's name.
        job: String,
    },
    /// The state of one job, or of all.
    Status {
        /// The job's name.
        job: Option<String>,
    },
    /// Stream events (one JSON object per line) until interrupted.
    Events {
        /// Only this job's events.
        job: Option<String>,
    },
}

/// The arguments of `twine agent renew`.
#[derive(clap::Args)]
pub(crate) struct RenewArgs {
    /// The job's name.
    job: String,
    /// The agent's state directory.
    #[arg(long, value_name = "DIR")]
    state_dir: PathBuf,
    /// The new credential set, as NAME=FILE (every file of the set, at least one).
    #[arg(required = true, value_name = "NAME=FILE")]
    files: Vec<String>,
}

/// Runs a `twine agent` subcommand; the exit code is the job's for `run`.
pub(crate) fn agent(command: AgentCommand) -> ExitCode {
    if let Err(p) = crate::oomd::init_logs() {
        return finish(Err(p));
    }
    let result = match command {
        AgentCommand::Run(args) => return run(&args),
        AgentCommand::Logs(args) => logs(&args),
        AgentCommand::Daemon(args) => {
            crate::agent_daemon::daemon(&args.state_dir, &args.socket, &args.rootfs)
        }
        AgentCommand::Ctl(args) => crate::agent_daemon::ctl(&args.socket, args.op),
        AgentCommand::Renew(args) => renew(&args),
    };
    finish(result)
}

fn finish(result: Result<(), Problems>) -> ExitCode {
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(lines) => {
            for line in lines {
                eprintln!("{line}");
            }
            ExitCode::FAILURE
        }
    }
}

pub(crate) fn runtime() -> Result<tokio::runtime::Runtime, Problems> {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .map_err(|e| problem(format!("starting the async runtime: {e}")))
}

pub(crate) fn read_spec(path: &std::path::Path) -> Result<JobSpec, Problems> {
    JobSpec::from_path(path).map_err(|e| match e {
        twine::spec::ParseError::Syntax { field, message } => {
            problem(format!("{}: {field}: {message}", path.display()))
        }
        other => problem(other),
    })
}

fn print_line(line: &LogLine, as_json: bool) -> bool {
    let mut stdout = std::io::stdout().lock();
    let written = if as_json {
        writeln!(
            stdout,
            "{}",
            json!({"seq": line.seq, "ts": line.realtime_usec, "unit": line.unit, "msg": line.message, "cursor": line.cursor})
        )
    } else {
        writeln!(stdout, "{}", line.message)
    };
    written.is_ok()
}

/// The exit code of a finished task: the main process's status, 128 + a signal,
/// or 1 for any other failure (with the reason on stderr).
pub(crate) fn exit_code(job: &str, state: &TaskState) -> ExitCode {
    match state {
        TaskState::Exited { code } => ExitCode::from(u8::try_from(*code & 0xff).unwrap_or(1)),
        TaskState::Failed {
            reason: FailReason::Signal { signal },
        } => {
            eprintln!("job {job}: the main process was killed by signal {signal}");
            ExitCode::from(u8::try_from((128 + signal) & 0xff).unwrap_or(1))
        }
        TaskState::Failed { reason } => {
            eprintln!("job {job}: failed: {reason}");
            ExitCode::FAILURE
        }
        other => {
            eprintln!("job {job}: ended in state {}", other.name());
            ExitCode::FAILURE
        }
    }
}

fn run(args: &RunArgs) -> ExitCode {
    let runtime = match runtime() {
        Ok(rt) => rt,
        Err(p) => return finish(Err(p)),
    };
    let outcome = runtime.block_on(async {
        let spec = read_spec(&args.spec)?;
        let job = spec.name.clone();
        let mut settings = AgentSettings::new(&args.rootfs);
        settings.network = match args.network {
            NetworkArg::Host => Network::Host,
            NetworkArg::Private => Network::Private,
        };
        settings.ready_timeout = Duration::from_secs(args.ready_timeout);
        let agent = Agent::open(StateDir::new(&args.state_dir), settings).map_err(problem)?;
        let mut sigint =
            signal(SignalKind::interrupt()).map_err(|e| problem(format!("SIGINT handler: {e}")))?;
        let mut sigterm = signal(SignalKind::terminate())
            .map_err(|e| problem(format!("SIGTERM handler: {e}")))?;
        // A signal while the container boots is kept and acted on once the job
        // runs: dropping the start half-way would leave the container behind.
        let started = agent.run(spec);
        tokio::pin!(started);
        let mut stop_early = false;
        let mut handle = loop {
            tokio::select! {
                handle = &mut started => break handle.map_err(problem)?,
                _ = sigint.recv() => stop_early = true,
                _ = sigterm.recv() => stop_early = true,
            }
        };
        if stop_early {
            handle.stop();
        }
        if handle.reattached() {
            tracing::info!("job {job} was running; reattached without restarting it");
        }
        let mut lines = handle.take_lines();
        let stop = handle.stopper();
        let wait = handle.wait();
        tokio::pin!(wait);
        let state = loop {
            let next_line = async {
                match lines.as_mut() {
                    Some(rx) => rx.recv().await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                line = next_line => match line {
                    Some(line) => {
                        if !print_line(&line, args.json) {
                            stop();
                        }
                    }
                    None => lines = None,
                },
                _ = sigint.recv() => stop(),
                _ = sigterm.recv() => stop(),
                state = &mut wait => break state.map_err(problem)?,
            }
        };
        if let Some(rx) = lines.as_mut() {
            while let Ok(line) = rx.try_recv() {
                print_line(&line, args.json);
            }
        }
        Ok::<_, Problems>((job, state))
    });
    match outcome {
        Ok((job, state)) => exit_code(&job, &state),
        Err(p) => finish(Err(p)),
    }
}

fn logs(args: &LogsArgs) -> Result<(), Problems> {
    let state = StateDir::new(&args.state_dir);
    let dir = log_dir(&state, &args.job);
    let record_path = state.job(&twine_agent::agent::job_key(&args.job)).record();
    if !record_path.exists() && !dir.exists() {
        return Err(problem(format!(
            "{}: no job {:?} in this state directory",
            args.state_dir.display(),
            args.job
        )));
    }
    let mut next = 1;
    loop {
        let running =
            twine_agent::state::read_record::<twine_agent::agent::JobRecord>(&record_path)
                .map_err(problem)?
                .is_some_and(|r| r.container.is_some());
        if dir.exists() {
            let reader = LogStore::read(&dir, next).map_err(problem)?;
            for line in reader {
                let line = line.map_err(problem)?;
                next = line.seq + 1;
                if !print_line(&line, args.json) {
                    return Ok(());
                }
            }
        }
        if !args.follow || !running {
            return Ok(());
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn renew(args: &RenewArgs) -> Result<(), Problems> {
    let mut files = Vec::new();
    for item in &args.files {
        let (name, path) = item
            .split_once('=')
            .ok_or_else(|| problem(format!("{item}: must be NAME=FILE")))?;
        let bytes = std::fs::read(path).map_err(|e| problem(format!("{path}: {e}")))?;
        files.push((name.to_owned(), bytes));
    }
    let refs: Vec<(&str, &[u8])> = files
        .iter()
        .map(|(n, b)| (n.as_str(), b.as_slice()))
        .collect();
    renew_identity(&StateDir::new(&args.state_dir), &args.job, &refs).map_err(problem)
}
