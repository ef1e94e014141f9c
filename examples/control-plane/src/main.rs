//! `twine-control`: the reference control plane's CLI. `--endpoints` is a
//! comma-separated list of etcd URLs, or `memory` for the embedded store (which lives
//! only as long as the process: useful with `bench`, which runs everything in one).

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use clap::{Parser, Subcommand};
use tokio::sync::watch;

use twine_control::admin::{self, FleetConfig};
use twine_control::agents::{self, AgentStats};
use twine_control::model::Capacity;
use twine_control::sched::{self, SchedulerConfig, SchedulerHandle};
use twine_control::store::AnyStore;
use twine_control::{bench, dump};

/// How long connecting to etcd may take before it counts as unreachable.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

#[derive(Parser)]
#[command(
    name = "twine-control",
    version,
    about = "A reference control plane for twine on etcd"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// The fleet's hosts.
    Fleet {
        #[command(subcommand)]
        command: FleetCommand,
    },
    /// Entitlements.
    Entitlement {
        #[command(subcommand)]
        command: EntitlementCommand,
    },
    /// Runs a scheduler shard until SIGINT or SIGTERM (then hands its entitlements over).
    Scheduler {
        /// etcd URLs, comma-separated, or `memory`.
        #[arg(long)]
        endpoints: String,
        /// The scheduler's unique name.
        #[arg(long)]
        name: String,
        /// Its session lease TTL: a standby takes over about this long after it dies.
        #[arg(long, default_value_t = 5, value_name = "SECONDS")]
        lease_ttl: i64,
    },
    /// Runs agents until SIGINT or SIGTERM.
    Agents {
        /// etcd URLs, comma-separated, or `memory`.
        #[arg(long)]
        endpoints: String,
        /// One process serving every host's simulated agent (acknowledges only).
        #[arg(long, conflicts_with_all = ["host", "rootfs"])]
        simulated: bool,
        /// A real agent: runs this host's assignments through twine-agent (as root).
        #[arg(long, requires = "rootfs")]
        host: Option<String>,
        /// The rootfs the real agent's containers boot.
        #[arg(long)]
        rootfs: Option<PathBuf>,
        /// The real agent's state directory.
        #[arg(long, default_value = "/var/lib/twine-control/agent")]
        state_dir: PathBuf,
    },
    /// Submits job specs (TOML, JSON or YAML): `entitlement`, `replicas` and
    /// `task.resources` (cpu_quota, memory_max) give the demand.
    Submit {
        /// etcd URLs, comma-separated, or `memory`.
        #[arg(long)]
        endpoints: String,
        /// The specs.
        #[arg(required = true)]
        specs: Vec<PathBuf>,
    },
    /// Drains a host through TaskControl: its entitlement's leader offers each of its
    /// tasks' jobs a move, and moves each task once its job's controller acks.
    Drain {
        /// etcd URLs, comma-separated, or `memory`.
        #[arg(long)]
        endpoints: String,
        /// The host.
        #[arg(long)]
        host: String,
    },
    /// Runs a job's TaskControl controller until SIGINT or SIGTERM: acks the operations
    /// offered to the job, at most N acked and not yet done at a time.
    Taskcontrol {
        /// etcd URLs, comma-separated, or `memory`.
        #[arg(long)]
        endpoints: String,
        /// The job.
        #[arg(long)]
        job: String,
        /// Its entitlement.
        #[arg(long)]
        entitlement: String,
        /// Operations acked and not yet done, at most (0 vetoes every operation).
        #[arg(long, default_value_t = 1, value_name = "N")]
        max_unavailable: usize,
    },
    /// Prints the state at one revision.
    Dump {
        /// etcd URLs, comma-separated, or `memory`.
        #[arg(long)]
        endpoints: String,
        /// As one JSON object.
        #[arg(long)]
        json: bool,
    },
    /// Measures placements per second and writes per placement, all in this process.
    Bench(bench::BenchArgs),
    /// Measures failover: kills the leader of an entitlement, times until its successor
    /// places (scheduler processes of this binary, against etcd).
    BenchFailover(bench::failover::FailoverArgs),
}

#[derive(Subcommand)]
enum FleetCommand {
    /// Lays out the fleet: hosts, racks, power domains, datacenters, all free.
    Init {
        /// etcd URLs, comma-separated, or `memory`.
        #[arg(long)]
        endpoints: String,
        /// Number of hosts.
        #[arg(long)]
        hosts: u32,
        /// Every host's shape.
        #[arg(
            long,
            default_value = "18000,65536,0",
            value_name = "CPU_MILLI,MEMORY_MIB,GPUS"
        )]
        shape: String,
        /// Racks per power domain (20 hosts per rack, 8 power domains per datacenter).
        #[arg(long, default_value_t = 10, value_name = "K")]
        racks_per_pd: u32,
    },
}

#[derive(Subcommand)]
enum EntitlementCommand {
    /// Adds an entitlement.
    Add {
        /// etcd URLs, comma-separated, or `memory`.
        #[arg(long)]
        endpoints: String,
        /// Its name.
        name: String,
        /// At most this many hosts.
        #[arg(long, value_name = "N")]
        quota_machines: u32,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let long_running = matches!(
        cli.command,
        Command::Scheduler { .. } | Command::Agents { .. } | Command::Taskcontrol { .. }
    );
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_max_level(if long_running {
            tracing::Level::INFO
        } else {
            tracing::Level::WARN
        })
        .init();
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("twine-control: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match rt.block_on(run(cli.command)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("twine-control: {e:#}");
            ExitCode::FAILURE
        }
    }
}

async fn connect(endpoints: &str) -> Result<AnyStore> {
    Ok(AnyStore::connect(endpoints, CONNECT_TIMEOUT).await?)
}

/// A receiver that turns true on SIGINT or SIGTERM.
fn on_signal() -> Result<watch::Receiver<bool>> {
    use tokio::signal::unix::{SignalKind, signal};
    let (tx, rx) = watch::channel(false);
    let mut int = signal(SignalKind::interrupt()).context("SIGINT handler")?;
    let mut term = signal(SignalKind::terminate()).context("SIGTERM handler")?;
    tokio::spawn(async move {
        tokio::select! {
            _ = int.recv() => {}
            _ = term.recv() => {}
        }
        tx.send_replace(true);
    });
    Ok(rx)
}

fn parse_shape(s: &str) -> Result<(Capacity, u8)> {
    let parts: Vec<&str> = s.split(',').collect();
    let [cpu, mem, gpus] = parts.as_slice() else {
        bail!("--shape {s:?}: expected CPU_MILLI,MEMORY_MIB,GPUS (three numbers)");
    };
    let num = |what: &str, v: &str| -> Result<u64> {
        v.trim()
            .parse::<u64>()
            .with_context(|| format!("--shape {s:?}: {what} {v:?} is not a whole number"))
    };
    let gpus = u8::try_from(num("GPUS", gpus)?)
        .with_context(|| format!("--shape {s:?}: at most 255 GPUs"))?;
    Ok((
        Capacity {
            cpu_milli: num("CPU_MILLI", cpu)?,
            memory_mib: num("MEMORY_MIB", mem)?,
        },
        gpus,
    ))
}

/// Prints a line on stdout; a closed pipe (`| head`) ends the output quietly.
macro_rules! println {
    ($($arg:tt)*) => {{
        use std::io::Write as _;
        let mut out = std::io::stdout().lock();
        if let Err(e) = writeln!(out, $($arg)*) {
            if e.kind() != std::io::ErrorKind::BrokenPipe {
                return Err(anyhow::Error::from(e).context("writing to stdout"));
            }
        }
    }};
}

async fn run(command: Command) -> Result<()> {
    match command {
        Command::Fleet {
            command:
                FleetCommand::Init {
                    endpoints,
                    hosts,
                    shape,
                    racks_per_pd,
                },
        } => {
            let (shape, gpus) = parse_shape(&shape)?;
            let store = connect(&endpoints).await?;
            let f = admin::fleet_init(
                &store,
                &FleetConfig {
                    hosts,
                    shape,
                    gpus,
                    racks_per_pd,
                },
            )
            .await?;
            println!(
                "fleet: {} hosts of {} mCPU, {} MiB, {} GPUs",
                f.hosts, f.shape.cpu_milli, f.shape.memory_mib, f.gpus
            );
        }
        Command::Entitlement {
            command:
                EntitlementCommand::Add {
                    endpoints,
                    name,
                    quota_machines,
                },
        } => {
            let store = connect(&endpoints).await?;
            admin::entitlement_add(&store, &name, quota_machines).await?;
            println!("entitlement {name}: quota {quota_machines} machines");
        }
        Command::Scheduler {
            endpoints,
            name,
            lease_ttl,
        } => {
            if !(2..=3600).contains(&lease_ttl) {
                bail!("--lease-ttl {lease_ttl}: must be 2 to 3600 seconds");
            }
            let store = connect(&endpoints).await?;
            let handle = SchedulerHandle::new();
            let mut stop = on_signal()?;
            let h = handle.clone();
            tokio::spawn(async move {
                let _ = stop.changed().await;
                h.stop();
            });
            sched::run(store, SchedulerConfig { name, lease_ttl }, handle).await?;
        }
        Command::Agents {
            endpoints,
            simulated,
            host,
            rootfs,
            state_dir,
        } => {
            let store = connect(&endpoints).await?;
            let stop = on_signal()?;
            if simulated {
                agents::run_simulated(store, stop, Arc::new(AgentStats::default())).await;
            } else if let (Some(host), Some(rootfs)) = (host, rootfs) {
                agents::real::run(store, &host, &rootfs, &state_dir, stop).await?;
            } else {
                bail!("agents: give --simulated, or --host NAME --rootfs DIR for a real agent");
            }
        }
        Command::Submit { endpoints, specs } => {
            let store = connect(&endpoints).await?;
            for job in admin::submit(&store, &specs).await? {
                println!(
                    "submitted {}: {} x ({} mCPU, {} MiB) in {}",
                    job.name,
                    job.replicas,
                    job.demand.cpu_milli,
                    job.demand.memory_mib,
                    job.entitlement
                );
            }
        }
        Command::Drain { endpoints, host } => {
            let store = connect(&endpoints).await?;
            admin::drain(&store, &host).await?;
            println!("host {host}: draining");
        }
        Command::Taskcontrol {
            endpoints,
            job,
            entitlement,
            max_unavailable,
        } => {
            let store = connect(&endpoints).await?;
            let stop = on_signal()?;
            let cfg = twine_control::taskcontrol::ControllerConfig {
                name: format!("taskcontrol-{job}"),
                entitlement,
                job,
                max_unavailable,
            };
            twine_control::taskcontrol::run(store, cfg, stop).await?;
        }
        Command::Dump { endpoints, json } => {
            let store = connect(&endpoints).await?;
            let d = dump::dump(&store).await?;
            if json {
                println!("{}", serde_json::to_string(&d)?);
            } else {
                println!(
                    "revision {}: {} hosts ({} free), {} tasks ({} running)",
                    d.revision,
                    d.hosts.len(),
                    d.hosts
                        .iter()
                        .filter(|h| h.owner == twine_control::keys::FREE)
                        .count(),
                    d.tasks.len(),
                    d.tasks
                        .iter()
                        .filter(|t| t.state == twine_control::model::TaskState::Running)
                        .count()
                );
                for (e, s) in &d.leaders {
                    println!("  {e}: led by {s}");
                }
            }
        }
        Command::BenchFailover(args) => {
            let report = bench::failover::run(&args).await?;
            println!("{}", serde_json::to_string(&report)?);
        }
        Command::Bench(args) => {
            let report = bench::run(&args).await?;
            println!("{}", serde_json::to_string(&report)?);
        }
    }
    Ok(())
}
