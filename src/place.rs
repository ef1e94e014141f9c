//! `twine place`: offline packing of a trace's pods onto its nodes or identical hosts.

use std::path::{Path, PathBuf};
use std::time::Instant;

use twine::sched::pack::{Hosts, PackPolicy, Packing, pack, pool_gpus};
use twine::sched::trace::{TraceNode, TracePod, read_nodes, read_pods};
use twine::sched::{GpuDemand, Resources};

/// The arguments of `twine place`.
#[derive(clap::Args)]
pub(crate) struct PlaceArgs {
    /// Nodes CSV (columns sn,cpu_milli,memory_mib,gpu,model).
    #[arg(long)]
    nodes: PathBuf,
    /// Pods CSV (columns name,cpu_milli,memory_mib,num_gpu,gpu_milli[,gpu_spec,...]).
    #[arg(long)]
    pods: PathBuf,
    /// Packing policy: twine (default) or a greedy heuristic (first-fit, best-fit,
    /// dot-product, l2, stranded, most-allocated, nomad-binpack, tetris, spread).
    #[arg(long, default_value = "twine")]
    policy: String,
    /// Pack onto as many identical hosts of this shape as needed: CPU_MILLI,MEMORY_MIB,GPUS[,GPU_MODEL].
    #[arg(long)]
    hosts_shape: Option<String>,
    /// Write a CSV `pod,host,gpu_devices` (device indexes separated by `|`).
    #[arg(long)]
    assignments: Option<PathBuf>,
    /// Print one JSON object instead of a summary.
    #[arg(long)]
    json: bool,
    /// Also run every other policy on the same input and report each (side by side).
    #[arg(long)]
    compare: bool,
    /// Treat each host's GPUs as one pool instead of devices, to compare with published
    /// figures computed that way (not a valid placement on real devices).
    #[arg(long)]
    gpu_pool: bool,
}

fn read<T>(
    path: &Path,
    parse: impl Fn(&str, std::fs::File) -> Result<T, twine::sched::trace::TraceError>,
) -> Result<T, Vec<String>> {
    let file = std::fs::File::open(path).map_err(|e| vec![format!("{}: {e}", path.display())])?;
    parse(&path.display().to_string(), file).map_err(|e| vec![e.to_string()])
}

fn parse_shape(text: &str) -> Result<Hosts, Vec<String>> {
    let bad = |m: &str| {
        vec![format!(
            "--hosts-shape: {m} (got {text:?}; expected CPU_MILLI,MEMORY_MIB,GPUS[,GPU_MODEL])"
        )]
    };
    let parts: Vec<&str> = text.split(',').map(str::trim).collect();
    if !(3..=4).contains(&parts.len()) {
        return Err(bad("expected three or four comma-separated fields"));
    }
    let number = |s: &str, what: &str| {
        s.parse::<u64>()
            .map_err(|_| bad(&format!("{what} must be a whole number")))
    };
    let cpu = number(parts[0], "CPU_MILLI")?;
    let mem = number(parts[1], "MEMORY_MIB")?;
    let gpus =
        u8::try_from(number(parts[2], "GPUS")?).map_err(|_| bad("GPUS must be at most 255"))?;
    if cpu == 0 || mem == 0 {
        return Err(bad("CPU_MILLI and MEMORY_MIB must be positive"));
    }
    let gpu_model = parts
        .get(3)
        .filter(|m| !m.is_empty())
        .map(|m| (*m).to_owned());
    Ok(Hosts::Identical {
        capacity: Resources::new(cpu, mem),
        gpus,
        gpu_model,
    })
}

struct Run {
    policy: PackPolicy,
    packing: Packing,
    seconds: f64,
}

impl Run {
    fn placements_per_sec(&self) -> f64 {
        #[allow(clippy::cast_precision_loss)]
        let placed = self.packing.placed() as f64;
        if self.seconds > 0.0 {
            placed / self.seconds
        } else {
            0.0
        }
    }

    fn json(&self, pods: usize) -> serde_json::Value {
        let p = &self.packing;
        serde_json::json!({
            "policy": self.policy.name(),
            "hosts_used": p.hosts_used,
            "lower_bound": p.lower_bound,
            "ratio": (p.ratio() * 10_000.0).round() / 10_000.0,
            "placed": p.placed(),
            "unplaced": pods - p.placed(),
            "unplaced_reasons": p.unplaced_reasons,
            "placements_per_sec": self.placements_per_sec().round(),
            "seconds": (self.seconds * 1e4).round() / 1e4,
        })
    }
}

fn run(hosts: &Hosts, pods: &[TracePod], policy: PackPolicy) -> Run {
    let start = Instant::now();
    let packing = pack(hosts, pods, policy);
    Run {
        policy,
        packing,
        seconds: start.elapsed().as_secs_f64(),
    }
}

fn host_name(hosts: &Hosts, nodes: &[TraceNode], index: usize) -> String {
    match hosts {
        Hosts::Listed(_) => nodes
            .get(index)
            .map_or_else(|| format!("node-{index}"), |n| n.name.clone()),
        _ => format!("host-{index:05}"),
    }
}

fn write_assignments(
    path: &Path,
    hosts: &Hosts,
    nodes: &[TraceNode],
    pods: &[TracePod],
    packing: &Packing,
) -> Result<(), Vec<String>> {
    use std::fmt::Write as _;
    let mut out = String::from("pod,host,gpu_devices\n");
    for (pod, placement) in pods.iter().zip(&packing.placements) {
        let Some(p) = placement else { continue };
        let devices: Vec<String> = p.gpus.indexes().map(|i| i.to_string()).collect();
        let _ = writeln!(
            out,
            "{},{},{}",
            pod.name,
            host_name(hosts, nodes, p.host),
            devices.join("|")
        );
    }
    std::fs::write(path, out).map_err(|e| vec![format!("{}: {e}", path.display())])
}

/// Runs `twine place`; returns the lines to print on stdout.
pub(crate) fn place(args: &PlaceArgs) -> Result<Vec<String>, Vec<String>> {
    let policy: PackPolicy = args
        .policy
        .parse()
        .map_err(|e| vec![format!("--policy: {e}")])?;
    let nodes = read(&args.nodes, read_nodes)?;
    let pods = read(&args.pods, read_pods)?;
    let hosts = match &args.hosts_shape {
        Some(shape) => parse_shape(shape)?,
        None => Hosts::Listed(nodes.clone()),
    };
    let gpu_pods = pods
        .iter()
        .filter(|p| p.demand.gpu != GpuDemand::None)
        .count();
    let (hosts, pods) = if args.gpu_pool {
        pool_gpus(&hosts, &pods)
    } else {
        (hosts, pods)
    };
    let main = run(&hosts, &pods, policy);
    let others: Vec<Run> = if args.compare {
        PackPolicy::all()
            .into_iter()
            .filter(|p| *p != policy)
            .map(|p| run(&hosts, &pods, p))
            .collect()
    } else {
        Vec::new()
    };
    if let Some(path) = &args.assignments {
        write_assignments(path, &hosts, &nodes, &pods, &main.packing)?;
    }
    if args.json {
        let mut object = main.json(pods.len());
        if args.compare {
            object["compare"] = others.iter().map(|r| r.json(pods.len())).collect();
        }
        return Ok(vec![object.to_string()]);
    }
    let pooled = if args.gpu_pool {
        ", GPUs pooled per host"
    } else {
        ""
    };
    let mut lines = vec![format!(
        "{} pods ({gpu_pods} with GPUs), {} nodes read{pooled}",
        pods.len(),
        nodes.len()
    )];
    for r in std::iter::once(&main).chain(&others) {
        let p = &r.packing;
        lines.push(format!(
            "{:<15} hosts {:>6}  lower bound {:>6}  ratio {:.3}  placed {:>6}  unplaced {:>4}  {:>10.0} placements/s",
            r.policy.name(),
            p.hosts_used,
            p.lower_bound,
            p.ratio(),
            p.placed(),
            pods.len() - p.placed(),
            r.placements_per_sec()
        ));
    }
    for (reason, count) in &main.packing.unplaced_reasons {
        lines.push(format!("unplaced: {count} {reason}"));
    }
    Ok(lines)
}
