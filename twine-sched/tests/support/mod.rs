//! Shared by the integration tests and the packing bench: proptest settings that honour
//! `PROPTEST_CASES`, and the openb trace with the figures docs/BENCHMARKS.md publishes.
// Each test binary that includes this module uses only part of it.
#![allow(dead_code)]

use std::path::PathBuf;

use proptest::test_runner::Config;
use twine_sched::Resources;
use twine_sched::pack::Hosts;
use twine_sched::trace::{TraceNode, TracePod, read_nodes, read_pods};

/// `cases` cases, unless `PROPTEST_CASES` asks for another number (a longer run).
pub(crate) fn proptest_config(cases: u32) -> Config {
    if std::env::var_os("PROPTEST_CASES").is_some() {
        Config::default()
    } else {
        Config::with_cases(cases)
    }
}

/// Where the trace lives: `TWINE_TRACE_DIR`, else the shared data directory next to the
/// repository. It is read from there and never copied into the project.
pub(crate) fn trace_dir() -> PathBuf {
    std::env::var_os("TWINE_TRACE_DIR").map_or_else(
        || PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../shared/data/traces"),
        PathBuf::from,
    )
}

/// The openb trace, packed as docs/BENCHMARKS.md does.
pub(crate) struct Openb {
    /// `openb_node_list_all_node.csv`.
    pub(crate) nodes: Vec<TraceNode>,
    /// `openb_pod_list_default.csv`.
    pub(crate) pods: Vec<TracePod>,
    /// Identical hosts of the trace's most common shape: 96 cores, 384 GiB, 8 GPUs.
    pub(crate) hosts: Hosts,
}

/// The trace, or `None` (with a one-line reason on stderr) where it is absent; under
/// `TWINE_REQUIRE_REALSYS=1` an absent trace is a failure instead.
pub(crate) fn openb() -> Option<Openb> {
    let dir = trace_dir();
    let nodes_path = dir.join("openb_node_list_all_node.csv");
    let pods_path = dir.join("openb_pod_list_default.csv");
    let (Ok(nodes), Ok(pods)) = (
        std::fs::File::open(&nodes_path),
        std::fs::File::open(&pods_path),
    ) else {
        assert!(
            std::env::var("TWINE_REQUIRE_REALSYS").as_deref() != Ok("1"),
            "TWINE_REQUIRE_REALSYS=1 but the openb trace is not in {}",
            dir.display()
        );
        eprintln!(
            "skipped: no openb trace in {} (set TWINE_TRACE_DIR)",
            dir.display()
        );
        return None;
    };
    Some(Openb {
        nodes: read_nodes(&nodes_path.display().to_string(), nodes).expect("the nodes parse"),
        pods: read_pods(&pods_path.display().to_string(), pods).expect("the pods parse"),
        hosts: Hosts::Identical {
            capacity: Resources::new(96_000, 393_216),
            gpus: 8,
            gpu_model: None,
        },
    })
}

/// docs/BENCHMARKS.md: the lower bound, GPUs as devices or pooled alike.
pub(crate) const LOWER_BOUND: usize = 884;

/// docs/BENCHMARKS.md: pods that fit no empty host (8 GPUs and 120 cores).
pub(crate) const UNPLACEABLE: usize = 5;

/// docs/BENCHMARKS.md: hosts per policy with GPUs as devices, then with GPUs pooled.
pub(crate) const HOSTS: [(&str, usize, usize); 10] = [
    ("twine", 902, 900),
    ("first-fit", 1_052, 1_023),
    ("best-fit", 1_052, 1_023),
    ("dot-product", 1_050, 1_021),
    ("l2", 1_053, 1_023),
    ("stranded", 1_052, 1_022),
    ("most-allocated", 1_052, 1_023),
    ("nomad-binpack", 1_054, 1_022),
    ("tetris", 1_052, 1_021),
    ("spread", 1_051, 1_021),
];

/// The published host count of `policy`, GPUs as devices or pooled.
pub(crate) fn published_hosts(policy: &str, pooled: bool) -> usize {
    let (_, devices, pool) = HOSTS
        .iter()
        .find(|(name, _, _)| *name == policy)
        .unwrap_or_else(|| panic!("docs/BENCHMARKS.md states no figure for {policy}"));
    if pooled { *pool } else { *devices }
}
