//! `twine place`: offline packing of a trace's pods onto its nodes or identical hosts.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::LazyLock;
use std::time::Instant;

use clap::builder::PossibleValue;
use twine::sched::GpuDemand;
use twine::sched::pack::{GpuMode, Hosts, PackPolicy, Packing, Verified, pack, pool_gpus, verify};
use twine::sched::trace::{TracePod, read_nodes, read_pods};

use crate::trace_input::{gpu_devices, host_name, parse_shape, read};

/// A `--policy` value: any [`PackPolicy`], spelled as [`PackPolicy::name`].
#[derive(Clone, Copy)]
pub(crate) struct PolicyArg(PackPolicy);

static POLICIES: LazyLock<Vec<PolicyArg>> =
    LazyLock::new(|| PackPolicy::all().into_iter().map(PolicyArg).collect());

impl clap::ValueEnum for PolicyArg {
    fn value_variants<'a>() -> &'a [Self] {
        &POLICIES
    }

    fn to_possible_value(&self) -> Option<PossibleValue> {
        Some(PossibleValue::new(self.0.name()))
    }
}

/// The arguments of `twine place`.
#[derive(clap::Args)]
pub(crate) struct PlaceArgs {
    /// Nodes CSV (columns sn,cpu_milli,memory_mib,gpu,model).
    #[arg(long)]
    nodes: PathBuf,
    /// Pods CSV (columns name,cpu_milli,memory_mib,num_gpu,gpu_milli[,gpu_spec,...]).
    #[arg(long)]
    pods: PathBuf,
    /// Packing policy: twine (bin-centric fill and compaction) or a greedy heuristic,
    /// tasks largest first.
    #[arg(long, value_enum, default_value = "twine")]
    policy: PolicyArg,
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
    /// Check every packing with the independent checker (per-host sums recomputed from
    /// the trace rows and the assignments alone); fail on any violation.
    #[arg(long)]
    verify: bool,
}

struct Run {
    policy: PackPolicy,
    packing: Packing,
    /// The LP relaxation's bound on the placed pods (with the `lp` feature).
    lp_bound: Option<usize>,
    seconds: f64,
    /// What the independent checker counted, with `--verify`.
    verified: Option<Verified>,
}

impl Run {
    /// Hosts used over the LP bound.
    fn lp_ratio(&self) -> Option<f64> {
        #[allow(clippy::cast_precision_loss)] // host counts; f64 is exact far beyond them
        self.lp_bound
            .filter(|&b| b > 0)
            .map(|b| self.packing.hosts_used as f64 / b as f64)
    }

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
            "lp_lower_bound": self.lp_bound,
            "lp_ratio": self.lp_ratio().map(|r| (r * 10_000.0).round() / 10_000.0),
            "placed": p.placed(),
            "unplaced": pods - p.placed(),
            "unplaced_reasons": p.unplaced_reasons.iter().map(|(r, n)| (r.to_string(), *n)).collect::<BTreeMap<_, _>>(),
            "placements_per_sec": self.placements_per_sec().round(),
            "seconds": (self.seconds * 1e4).round() / 1e4,
            "verified": self.verified.map(|v| serde_json::json!({
                "placed": v.placed,
                "hosts_used": v.hosts_used,
            })),
        })
    }
}

fn run(hosts: &Hosts, pods: &[TracePod], policy: PackPolicy) -> Result<Run, Vec<String>> {
    let start = Instant::now();
    let packing = pack(hosts, pods, policy).map_err(|e| vec![format!("{}: {e}", policy.name())])?;
    let seconds = start.elapsed().as_secs_f64();
    let lp_bound =
        lp_bound(hosts, pods, &packing).map_err(|e| vec![format!("{}: {e}", policy.name())])?;
    Ok(Run {
        policy,
        packing,
        lp_bound,
        seconds,
        verified: None,
    })
}

/// The LP relaxation's bound on the pods `packing` placed (a tighter bound than the
/// per-dimension one where GPU devices or mixed node shapes bind).
#[cfg(feature = "lp")]
fn lp_bound(hosts: &Hosts, pods: &[TracePod], packing: &Packing) -> Result<Option<usize>, String> {
    let placed: Vec<&TracePod> = pods
        .iter()
        .zip(&packing.placements)
        .filter(|(_, p)| p.is_some())
        .map(|(p, _)| p)
        .collect();
    twine::sched::pack::lp_lower_bound(hosts, &placed)
        .map(|b| Some(b.bound))
        .map_err(|e| format!("LP lower bound: {e}"))
}

#[cfg(not(feature = "lp"))]
#[allow(clippy::unnecessary_wraps)] // the same signature as with the feature
fn lp_bound(_: &Hosts, _: &[TracePod], _: &Packing) -> Result<Option<usize>, String> {
    Ok(None)
}

/// The trace as read, before any GPU pooling: what `--verify` checks against.
struct Trace<'a> {
    hosts: &'a Hosts,
    pods: &'a [TracePod],
    gpus: GpuMode,
}

impl Trace<'_> {
    /// Runs the independent checker on `run` and says so on stderr.
    fn verify(&self, run: &mut Run) -> Result<(), Vec<String>> {
        let name = run.policy.name();
        let v = verify(self.hosts, self.pods, &run.packing, self.gpus)
            .map_err(|e| vec![format!("--verify: {name}: {e}")])?;
        let gpus = match self.gpus {
            GpuMode::Pooled => "GPUs pooled per host",
            _ => "GPUs as devices",
        };
        eprintln!(
            "verify: {name}: {} placements on {} hosts checked independently (per-host sums recomputed from the trace rows, {gpus}): ok",
            v.placed, v.hosts_used
        );
        run.verified = Some(v);
        Ok(())
    }
}

/// The rows of the assignments file: `pod,host,gpu_devices`, placed pods in input order.
fn assignment_rows(
    hosts: &Hosts,
    pods: &[TracePod],
    packing: &Packing,
) -> Result<Vec<[String; 3]>, String> {
    let mut rows = Vec::new();
    for (pod, placement) in pods.iter().zip(&packing.placements) {
        let Some(p) = placement else { continue };
        rows.push([
            pod.name.clone(),
            host_name(hosts, p.host)?,
            gpu_devices(&p.gpus),
        ]);
    }
    Ok(rows)
}

const ASSIGNMENTS_HEADER: [&str; 3] = ["pod", "host", "gpu_devices"];

fn write_assignments(path: &Path, rows: &[[String; 3]]) -> Result<(), Vec<String>> {
    let failed = |e: csv::Error| vec![format!("{}: {e}", path.display())];
    let mut out = csv::Writer::from_path(path).map_err(failed)?;
    out.write_record(ASSIGNMENTS_HEADER).map_err(failed)?;
    for row in rows {
        out.write_record(row).map_err(failed)?;
    }
    out.flush()
        .map_err(|e| vec![format!("{}: {e}", path.display())])
}

/// `--verify` with `--assignments`: the file reads back as exactly the rows written.
fn read_back(path: &Path, rows: &[[String; 3]]) -> Result<(), Vec<String>> {
    let failed = |e: &dyn std::fmt::Display| vec![format!("--verify: {}: {e}", path.display())];
    let mut reader = csv::Reader::from_path(path).map_err(|e| failed(&e))?;
    let header = reader.headers().map_err(|e| failed(&e))?;
    if header.iter().ne(ASSIGNMENTS_HEADER) {
        return Err(failed(&format!("header reads back as {header:?}")));
    }
    let mut read = 0;
    for (record, written) in reader.records().zip(rows) {
        let record = record.map_err(|e| failed(&e))?;
        if record.iter().ne(written.iter().map(String::as_str)) {
            return Err(failed(&format!(
                "row {} reads back as {record:?}, written {written:?}",
                read + 2
            )));
        }
        read += 1;
    }
    if read != rows.len() {
        return Err(failed(&format!(
            "{read} rows read back, {} written",
            rows.len()
        )));
    }
    eprintln!(
        "verify: {}: {read} assignments read back as written",
        path.display()
    );
    Ok(())
}

/// Runs `twine place`; returns the lines to print on stdout.
pub(crate) fn place(args: &PlaceArgs) -> Result<Vec<String>, Vec<String>> {
    let policy = args.policy.0;
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
    let trace = Trace {
        hosts: &hosts,
        pods: &pods,
        gpus: if args.gpu_pool {
            GpuMode::Pooled
        } else {
            GpuMode::Devices
        },
    };
    let pooled_input;
    let (hosts, pods) = if args.gpu_pool {
        pooled_input = pool_gpus(&hosts, &pods);
        (&pooled_input.0, pooled_input.1.as_slice())
    } else {
        (&hosts, pods.as_slice())
    };
    let mut main = run(hosts, pods, policy)?;
    let mut others: Vec<Run> = if args.compare {
        PackPolicy::all()
            .into_iter()
            .filter(|p| *p != policy)
            .map(|p| run(hosts, pods, p))
            .collect::<Result<_, _>>()?
    } else {
        Vec::new()
    };
    if args.verify {
        for r in std::iter::once(&mut main).chain(&mut others) {
            trace.verify(r)?;
        }
    }
    if let Some(path) = &args.assignments {
        let rows = assignment_rows(hosts, pods, &main.packing)
            .map_err(|e| vec![format!("{}: {e}", path.display())])?;
        write_assignments(path, &rows)?;
        if args.verify {
            read_back(path, &rows)?;
        }
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
        let lp = match (r.lp_bound, r.lp_ratio()) {
            (Some(b), Some(ratio)) => format!("  LP bound {b:>6} ({ratio:.3})"),
            _ => String::new(),
        };
        lines.push(format!(
            "{:<15} hosts {:>6}  lower bound {:>6}  ratio {:.3}{lp}  placed {:>6}  unplaced {:>4}  {:>10.0} placements/s",
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
