//! Offline packing, for every policy, on random workloads: every placement is
//! feasible (no host over capacity in any dimension or on any GPU device, whole
//! devices unshared, GPU models honoured), every task is either placed or
//! reported, the host count never beats the lower bound, and the same input gives
//! the same result.

use std::collections::BTreeMap;

use proptest::prelude::*;
use twine_sched::pack::{Hosts, PackPolicy, Packing, pack};
use twine_sched::resources::GPU_MILLI;
use twine_sched::trace::{TraceNode, TracePod};
use twine_sched::{Demand, GpuDemand, Resources};

fn gpu_demand() -> impl Strategy<Value = GpuDemand> {
    prop_oneof![
        3 => Just(GpuDemand::None),
        3 => (1u16..1000).prop_map(GpuDemand::Shared),
        1 => (1u8..=4).prop_map(GpuDemand::Whole),
    ]
}

fn pods() -> impl Strategy<Value = Vec<TracePod>> {
    let models = prop_oneof![3 => Just(vec![]), 1 => Just(vec!["A".to_owned()]), 1 => Just(vec!["A".to_owned(), "B".to_owned()])];
    proptest::collection::vec((1u64..20_000, 1u64..40_000, gpu_demand(), models), 0..60).prop_map(
        |v| {
            v.into_iter()
                .enumerate()
                .map(|(i, (cpu, mem, gpu, gpu_spec))| TracePod {
                    name: format!("p{i}"),
                    demand: Demand {
                        resources: Resources::new(cpu, mem),
                        gpu,
                    },
                    gpu_spec,
                    creation_time: None,
                    deletion_time: None,
                })
                .collect()
        },
    )
}

fn hosts() -> impl Strategy<Value = Hosts> {
    let identical = (8_000u64..40_000, 16_000u64..80_000, 0u8..=4).prop_map(|(cpu, mem, gpus)| {
        Hosts::Identical {
            capacity: Resources::new(cpu, mem),
            gpus,
            gpu_model: None,
        }
    });
    let node = (
        8_000u64..40_000,
        16_000u64..80_000,
        0u8..=4,
        prop_oneof![Just("A"), Just("B"), Just("C")],
    );
    let listed = proptest::collection::vec(node, 1..12).prop_map(|v| {
        Hosts::Listed(
            v.into_iter()
                .enumerate()
                .map(|(i, (cpu, mem, gpus, model))| TraceNode {
                    name: format!("n{i}"),
                    capacity: Resources::new(cpu, mem),
                    gpus,
                    gpu_model: (gpus > 0).then(|| model.to_owned()),
                })
                .collect(),
        )
    });
    prop_oneof![identical, listed]
}

/// What the placements put on one host: CPU, memory, milli per device, whole devices.
#[derive(Default)]
struct Usage {
    cpu: u64,
    mem: u64,
    devices: BTreeMap<u8, u32>,
    whole: Vec<u8>,
}

/// Recomputes every host's usage from the placements alone.
fn check(hosts: &Hosts, pods: &[TracePod], p: &Packing) -> Result<(), String> {
    let mut used: BTreeMap<usize, Usage> = BTreeMap::new();
    for (pod, placement) in pods.iter().zip(&p.placements) {
        let Some(pl) = placement else { continue };
        let (capacity, gpus, model) = match hosts {
            Hosts::Identical {
                capacity,
                gpus,
                gpu_model,
            } => (*capacity, *gpus, gpu_model.clone()),
            Hosts::Listed(nodes) => {
                let n = nodes.get(pl.host).ok_or(format!("no node {}", pl.host))?;
                (n.capacity, n.gpus, n.gpu_model.clone())
            }
            other => return Err(format!("unknown host kind {other:?}")),
        };
        if let Some(model) = &model
            && !pod.gpu_spec.is_empty()
            && !pod.gpu_spec.contains(model)
        {
            return Err(format!(
                "{} needs {:?}, host has {model}",
                pod.name, pod.gpu_spec
            ));
        }
        let u = used.entry(pl.host).or_default();
        u.cpu += pod.demand.resources.cpu_milli;
        u.mem += pod.demand.resources.memory_mib;
        if u.cpu > capacity.cpu_milli || u.mem > capacity.memory_mib {
            return Err(format!("host {} over capacity", pl.host));
        }
        let granted: u64 = pl.gpus.devices.iter().map(|(_, m)| u64::from(*m)).sum();
        if granted != pod.demand.gpu.milli() {
            return Err(format!(
                "{} granted {granted} milli, asked {:?}",
                pod.name, pod.demand.gpu
            ));
        }
        for &(device, milli) in &pl.gpus.devices {
            if device >= gpus {
                return Err(format!("device {device} on a host with {gpus}"));
            }
            if matches!(pod.demand.gpu, GpuDemand::Whole(_)) {
                u.whole.push(device);
            }
            let d = u.devices.entry(device).or_default();
            *d += u32::from(milli);
            if *d > u32::from(GPU_MILLI) {
                return Err(format!("host {} device {device} over 1000 milli", pl.host));
            }
        }
    }
    for (host, u) in &used {
        for device in &u.whole {
            if u.devices.get(device) != Some(&u32::from(GPU_MILLI)) {
                return Err(format!("whole device {device} on host {host} is shared"));
            }
        }
    }
    if used.len() != p.hosts_used {
        return Err(format!(
            "{} hosts hold tasks, {} reported",
            used.len(),
            p.hosts_used
        ));
    }
    let unplaced: usize = p.unplaced_reasons.values().sum();
    if p.placed() + unplaced != pods.len() {
        return Err(format!(
            "{} placed + {unplaced} unplaced != {}",
            p.placed(),
            pods.len()
        ));
    }
    if p.hosts_used < p.lower_bound {
        return Err(format!(
            "{} hosts beat the lower bound {}",
            p.hosts_used, p.lower_bound
        ));
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 200, ..ProptestConfig::default() })]

    #[test]
    fn every_policy_packs_feasibly(hosts in hosts(), pods in pods()) {
        for policy in PackPolicy::all() {
            let p = pack(&hosts, &pods, policy);
            check(&hosts, &pods, &p).map_err(|e| TestCaseError::fail(format!("{}: {e}", policy.name())))?;
            prop_assert_eq!(&pack(&hosts, &pods, policy), &p, "{} is not deterministic", policy.name());
        }
    }

    /// On identical hosts, everything that fits an empty host is placed.
    #[test]
    fn identical_hosts_place_everything_that_fits(pods in pods()) {
        let hosts = Hosts::Identical { capacity: Resources::new(40_000, 80_000), gpus: 4, gpu_model: None };
        for policy in PackPolicy::all() {
            let p = pack(&hosts, &pods, policy);
            prop_assert!(p.unplaced_reasons.is_empty(), "{}: {:?}", policy.name(), p.unplaced_reasons);
        }
    }
}
