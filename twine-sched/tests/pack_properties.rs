//! Offline packing, for every policy, on random workloads: every placement is
//! feasible per the independent checker [`twine_sched::pack::verify`] (no host over
//! capacity in CPU, memory, the extras or on any GPU device, whole devices unshared,
//! GPU models honoured; with GPUs pooled, no host over its pool), every task is either
//! placed or reported, the host count never beats the lower bound, and the same input
//! gives the same result. `PROPTEST_CASES=N` runs N cases instead of 200.

mod support;

use proptest::prelude::*;
use twine_sched::pack::{GpuMode, Hosts, PackPolicy, Packing, pack, pool_gpus, verify};
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
    let extra = prop_oneof![3 => Just(0u64), 1 => 1u64..=4];
    proptest::collection::vec(
        (1u64..20_000, 1u64..40_000, extra, gpu_demand(), models),
        0..60,
    )
    .prop_map(|v| {
        v.into_iter()
            .enumerate()
            .map(|(i, (cpu, mem, extra, gpu, gpu_spec))| TracePod {
                name: format!("p{i}"),
                demand: Demand {
                    resources: with_extra(Resources::new(cpu, mem), extra),
                    gpu,
                },
                gpu_spec,
                creation_time: None,
                deletion_time: None,
            })
            .collect()
    })
}

/// `resources` with `extra` of the first extra resource.
fn with_extra(mut resources: Resources, extra: u64) -> Resources {
    resources.extra[0] = extra;
    resources
}

fn hosts() -> impl Strategy<Value = Hosts> {
    let identical = (8_000u64..40_000, 16_000u64..80_000, 0u64..=8, 0u8..=4).prop_map(
        |(cpu, mem, extra, gpus)| Hosts::Identical {
            capacity: with_extra(Resources::new(cpu, mem), extra),
            gpus,
            gpu_model: None,
        },
    );
    let node = (
        8_000u64..40_000,
        16_000u64..80_000,
        0u64..=8,
        0u8..=4,
        prop_oneof![Just("A"), Just("B"), Just("C")],
    );
    let listed = proptest::collection::vec(node, 1..12).prop_map(|v| {
        Hosts::Listed(
            v.into_iter()
                .enumerate()
                .map(|(i, (cpu, mem, extra, gpus, model))| TraceNode {
                    name: format!("n{i}"),
                    capacity: with_extra(Resources::new(cpu, mem), extra),
                    gpus,
                    gpu_model: (gpus > 0).then(|| model.to_owned()),
                })
                .collect(),
        )
    });
    prop_oneof![identical, listed]
}

/// Packs and checks the result: feasible per the independent checker (GPUs as devices,
/// and again with GPUs pooled), never below the lower bound, deterministic.
fn pack_and_check(
    hosts: &Hosts,
    pods: &[TracePod],
    policy: PackPolicy,
) -> Result<Packing, TestCaseError> {
    let fail = |e: String| TestCaseError::fail(format!("{}: {e}", policy.name()));
    let p = pack(hosts, pods, policy).map_err(|e| fail(e.to_string()))?;
    verify(hosts, pods, &p, GpuMode::Devices).map_err(|e| fail(e.to_string()))?;
    prop_assert!(
        p.hosts_used >= p.lower_bound,
        "{}: {} hosts beat the lower bound {}",
        policy.name(),
        p.hosts_used,
        p.lower_bound
    );
    prop_assert_eq!(
        &pack(hosts, pods, policy).map_err(|e| fail(e.to_string()))?,
        &p,
        "{} is not deterministic",
        policy.name()
    );
    let (pooled_hosts, pooled_pods) = pool_gpus(hosts, pods);
    let pooled = pack(&pooled_hosts, &pooled_pods, policy).map_err(|e| fail(e.to_string()))?;
    verify(hosts, pods, &pooled, GpuMode::Pooled).map_err(|e| fail(format!("pooled: {e}")))?;
    Ok(p)
}

proptest! {
    #![proptest_config(support::proptest_config(200))]

    #[test]
    fn every_policy_packs_feasibly(hosts in hosts(), pods in pods()) {
        for policy in PackPolicy::all() {
            pack_and_check(&hosts, &pods, policy)?;
        }
    }

    /// On identical hosts, everything that fits an empty host is placed.
    #[test]
    fn identical_hosts_place_everything_that_fits(pods in pods()) {
        let mut capacity = Resources::new(40_000, 80_000);
        capacity.extra[0] = 8;
        let hosts = Hosts::Identical { capacity, gpus: 4, gpu_model: None };
        for policy in PackPolicy::all() {
            let p = pack_and_check(&hosts, &pods, policy)?;
            prop_assert!(p.unplaced_reasons.is_empty(), "{}: {:?}", policy.name(), p.unplaced_reasons);
        }
    }
}
