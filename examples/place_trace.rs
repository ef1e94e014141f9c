//! Placing a cluster trace: the openb GPU trace's pods packed onto identical 96-core,
//! 384 GiB, 8-GPU hosts with twine's policy and with best-fit-decreasing, each against the
//! lower bound (no packing of the pods can use fewer hosts). The trace's own node list is
//! read too: `Hosts::Listed(nodes)` packs onto exactly those nodes instead.
//!
//! ```sh
//! cargo run --release --example place_trace                # ../shared/data/traces/, else a synthetic set
//! cargo run --release --example place_trace -- DIR         # DIR/openb_node_list_all_node.csv, DIR/openb_pod_list_default.csv
//! TWINE_TRACE_DIR=DIR cargo run --release --example place_trace
//! ```
//!
//! The trace is not part of the repository (see its README for where it comes from and
//! its terms). Where it is absent, a small synthetic set in the same CSV columns is packed
//! instead, so the example always runs. `twine place` is the full tool: every policy, a
//! GPU pool mode, identical hosts, assignments written and verified.
#![allow(clippy::print_stdout)] // an example: its output is the point

use std::fmt::Write as _;
use std::path::PathBuf;

use twine::sched::pack::lower_bound;
use twine::sched::pack::{Hosts, PackPolicy, pack};
use twine::sched::trace::{read_nodes, read_pods};
use twine::sched::{Policy, Resources};

const NODES: &str = "openb_node_list_all_node.csv";
const PODS: &str = "openb_pod_list_default.csv";

/// 40 nodes (some with GPUs) and 300 pods of a few shapes, in the trace's columns.
fn synthetic() -> (String, String) {
    let mut nodes = String::from("sn,cpu_milli,memory_mib,gpu,model\n");
    for i in 0..40 {
        let (gpus, model) = if i % 4 == 0 { (8, "V100M32") } else { (0, "") };
        let _ = writeln!(nodes, "node-{i},64000,262144,{gpus},{model}");
    }
    let mut pods = String::from(
        "name,cpu_milli,memory_mib,num_gpu,gpu_milli,gpu_spec,qos,pod_phase,creation_time,deletion_time,scheduled_time\n",
    );
    for i in 0..300u32 {
        let cpu = [500, 1000, 4000, 8000, 16000][i as usize % 5];
        let memory = [1024, 4096, 8192, 32768][i as usize % 4];
        let (gpus, gpu_milli) = match i % 10 {
            0 => (1, 1000),
            1 => (1, 500),
            _ => (0, 0),
        };
        let _ = writeln!(
            pods,
            "pod-{i},{cpu},{memory},{gpus},{gpu_milli},,LS,Running,{i},,{i}"
        );
    }
    (nodes, pods)
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let dir = std::env::args_os()
        .nth(1)
        .or_else(|| std::env::var_os("TWINE_TRACE_DIR"))
        .map_or_else(
            || PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../shared/data/traces"),
            PathBuf::from,
        );
    let (nodes, pods) = if dir.join(NODES).is_file() && dir.join(PODS).is_file() {
        println!("trace: {}", dir.display());
        let read = |name: &str| {
            std::fs::read_to_string(dir.join(name))
                .map_err(|e| format!("{}: {e}", dir.join(name).display()))
        };
        (read(NODES)?, read(PODS)?)
    } else {
        println!("trace: none in {}; packing a synthetic set", dir.display());
        synthetic()
    };
    let nodes = read_nodes(NODES, nodes.as_bytes())?;
    let pods = read_pods(PODS, pods.as_bytes())?;
    println!("{} nodes, {} pods", nodes.len(), pods.len());

    let hosts = Hosts::Identical {
        capacity: Resources::new(96_000, 393_216),
        gpus: 8,
        gpu_model: None,
    };
    let everything: Vec<_> = pods.iter().collect();
    if let Some(bound) = lower_bound(&hosts, &everything) {
        println!("lower bound for every pod: {bound} hosts");
    }
    for policy in [PackPolicy::Twine, PackPolicy::Decreasing(Policy::BestFit)] {
        let packing = pack(&hosts, &pods, policy)?;
        println!(
            "{:>10}: {} of {} pods on {} hosts, {:.3} x the lower bound of {}; unplaced: {:?}",
            policy.name(),
            packing.placed(),
            pods.len(),
            packing.hosts_used,
            packing.ratio(),
            packing.lower_bound,
            packing.unplaced_reasons,
        );
    }
    Ok(())
}
