//! The `twine` command line; see `twine --help` and DESIGN.md for the contract.
//!
//! Errors print `path: message` lines on stderr and exit 1.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

mod flags;
mod freshness;
mod place;
mod replay;
mod rollout;
mod trace_input;

use std::io::Write as _;

use clap::{Parser, Subcommand};

/// Prints a line to stdout; a closed pipe (`twine render | head`) ends quietly instead of panicking.
macro_rules! say {
    ($($arg:tt)*) => {{
        let mut stdout = std::io::stdout().lock();
        if writeln!(stdout, $($arg)*).is_err() {
            std::process::exit(0);
        }
    }};
}
mod agent;
mod agent_daemon;
mod demo;
mod oomd;
mod profile;

use twine::spec::{JobSpec, UnitFile, UnitSet, translate, verify};

#[derive(Parser)]
#[command(
    name = "twine",
    version,
    about = "Building blocks of a Twine-style cluster manager"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// The whole suite on an embedded default region: admit, place, switch host
    /// profiles, render units, drain a rack, roll out an update, size memory; a report in
    /// --out (no root, no network).
    Demo(demo::DemoArgs),
    /// Render job specs into systemd units.
    Render {
        /// Spec files (.toml, .json, .yaml).
        #[arg(required = true)]
        specs: Vec<PathBuf>,
        /// Write the unit files into this directory (all or none) instead of stdout.
        #[arg(long)]
        out: Option<PathBuf>,
        /// Print StartTransientUnit property lists as one JSON object instead of unit files:
        /// `{"jobs": [{"main": NAME, "units": [...]}]}`, main unit first; start a job with
        /// StartTransientUnit(units[0], aux = units[1..]).
        #[arg(long, conflicts_with = "out")]
        transient: bool,
    },
    /// Pack a trace's pods onto its nodes, or onto identical hosts, with as few hosts as possible.
    Place(place::PlaceArgs),
    /// Replay a trace's pods arriving and leaving over time (its own times or Poisson churn),
    /// placed online and rebalanced, against the lower bound and a run without rebalancing.
    Replay(replay::ReplayArgs),
    /// Job freshness: every task restarted on a fresh container within a max age, through
    /// TaskControl at a level rate; identities renewed in place.
    Freshness {
        #[command(subcommand)]
        command: freshness::FreshnessCommand,
    },
    /// Fleet-wide host updates in waves across fault domains, with the jobs' consent.
    Rollout {
        #[command(subcommand)]
        command: rollout::RolloutCommand,
    },
    /// The memory resizer (Senpai on PSI) and oomd-style kill policies.
    Oomd {
        #[command(subcommand)]
        command: oomd::OomdCommand,
    },
    /// Validate specs, render them, and run `systemd-analyze verify` on the units.
    Check {
        /// Spec files (.toml, .json, .yaml).
        #[arg(required = true)]
        specs: Vec<PathBuf>,
    },
    /// Host profiles: plan, apply, resume, verify and roll back sysctls, hugepages, THP,
    /// the kernel command line and more, through a host root; import TuneD profiles.
    Profile {
        #[command(subcommand)]
        command: profile::ProfileCommand,
    },
    /// The host agent: run jobs in containers with systemd as PID 1, keep their logs,
    /// reattach after a restart; a daemon on a Unix socket and its client.
    Agent {
        #[command(subcommand)]
        command: agent::AgentCommand,
    },
}

fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => return invalid_value(e),
    };
    let result = match cli.command {
        Command::Demo(args) => demo::demo(&args),
        Command::Render {
            specs,
            out,
            transient,
        } => render(&specs, out.as_deref(), transient),
        Command::Check { specs } => check(&specs),
        Command::Oomd { command } => oomd::oomd(command),
        Command::Profile { command } => profile::profile(command),
        Command::Agent { command } => return agent::agent(command),
        Command::Place(args) => place::place(&args).map(|lines| {
            for line in lines {
                say!("{line}");
            }
        }),
        Command::Freshness { command } => freshness::run(&command).map(|lines| {
            for line in lines {
                say!("{line}");
            }
        }),
        Command::Rollout { command } => rollout::run(&command).map(|lines| {
            for line in lines {
                say!("{line}");
            }
        }),
        Command::Replay(args) => replay::run(&args).map(|lines| {
            for line in lines {
                say!("{line}");
            }
        }),
    };
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

/// A flag value outside its list (`--policy worst-fit`) is a `path: message` error with
/// exit 1, as every other input error; clap reports the rest (usage, `--help`) itself.
fn invalid_value(e: clap::Error) -> ExitCode {
    use clap::error::{ContextKind, ContextValue, ErrorKind};
    if e.kind() == ErrorKind::InvalidValue
        && let (Some(ContextValue::String(arg)), Some(ContextValue::String(value))) = (
            e.get(ContextKind::InvalidArg),
            e.get(ContextKind::InvalidValue),
        )
    {
        let flag = arg.split_whitespace().next().unwrap_or(arg);
        let valid = match e.get(ContextKind::ValidValue) {
            Some(ContextValue::Strings(values)) => format!(" (use one of {})", values.join(", ")),
            _ => String::new(),
        };
        eprintln!("{flag}: unknown value {value:?}{valid}");
        return ExitCode::FAILURE;
    }
    e.exit()
}

/// Error lines, each `path: message`, printed on stderr before exit 1.
pub(crate) type Problems = Vec<String>;

/// One error line as [`Problems`].
pub(crate) fn problem(e: impl ToString) -> Problems {
    vec![e.to_string()]
}

/// Reads, validates and translates every spec; all problems of all specs, or the unit sets.
fn load(specs: &[PathBuf]) -> Result<Vec<UnitSet>, Problems> {
    let mut problems = Vec::new();
    let mut sets = Vec::new();
    for path in specs {
        match load_one(path, None) {
            Ok(set) => sets.push(set),
            Err(mut p) => problems.append(&mut p),
        }
    }
    if problems.is_empty() {
        Ok(sets)
    } else {
        Err(problems)
    }
}

fn load_one(path: &Path, text: Option<&str>) -> Result<UnitSet, Problems> {
    let shown = path.display();
    let spec = match text {
        Some(text) => JobSpec::from_toml(text),
        None => JobSpec::from_path(path),
    };
    let spec = spec.map_err(|e| match e {
        twine::spec::ParseError::Syntax { field, message } => {
            vec![format!("{shown}: {field}: {message}")]
        }
        other => vec![other.to_string()],
    })?;
    let job = spec.validate().map_err(|e| {
        e.problems
            .iter()
            .map(|p| format!("{shown}: {p}"))
            .collect::<Vec<_>>()
    })?;
    translate(&job).map_err(|e| vec![format!("{shown}: {e}")])
}

/// All files of all sets; two specs that give the same unit name are an error.
fn files(specs: &[PathBuf], sets: &[UnitSet]) -> Result<Vec<UnitFile>, Problems> {
    let mut seen = std::collections::HashMap::new();
    let mut problems = Vec::new();
    let mut all = Vec::new();
    for (path, set) in specs.iter().zip(sets) {
        for file in set.files() {
            if let Some(other) = seen.insert(file.name.clone(), path) {
                problems.push(format!(
                    "{}: unit {} is also rendered from {}",
                    path.display(),
                    file.name,
                    other.display()
                ));
            }
            all.push(file);
        }
    }
    if problems.is_empty() {
        Ok(all)
    } else {
        Err(problems)
    }
}

fn render(specs: &[PathBuf], out: Option<&Path>, transient: bool) -> Result<(), Problems> {
    let sets = load(specs)?;
    let files = files(specs, &sets)?;
    if transient {
        // One entry per job: start it with StartTransientUnit(units[0], aux = units[1..]).
        let jobs: Vec<_> = sets
            .iter()
            .map(|set| serde_json::json!({ "main": set.main().as_str(), "units": set.transient() }))
            .collect();
        let json = serde_json::json!({ "jobs": jobs });
        say!("{json}");
        return Ok(());
    }
    match out {
        Some(dir) => {
            twine::spec::install::write_unit_files(dir, &files).map_err(|e| vec![e.to_string()])?;
        }
        None => {
            for file in &files {
                say!("### {}\n{}", file.name, file.contents);
            }
        }
    }
    Ok(())
}

fn check(specs: &[PathBuf]) -> Result<(), Problems> {
    let sets = load(specs)?;
    let files = files(specs, &sets)?;
    verify::verify(&files).map_err(|e| vec![e.to_string()])?;
    say!("{} spec(s), {} unit(s): ok", specs.len(), files.len());
    Ok(())
}
