//! The packing figures docs/BENCHMARKS.md publishes for the openb trace, kept true: every
//! policy packs the trace onto identical 96-core / 384 GiB / 8-GPU hosts, with GPUs as
//! devices and pooled, each packing passes the independent checker, and the host counts,
//! the lower bound and the unplaced pods are the published ones. Skips with a reason
//! where the trace is absent; fails instead under `TWINE_REQUIRE_REALSYS=1`.

mod support;

use twine_sched::pack::{Dimension, GpuMode, NotPlaced, PackPolicy, pack, pool_gpus, verify};

#[test]
fn openb_host_counts_are_the_published_ones() {
    let Some(openb) = support::openb() else {
        return;
    };
    assert_eq!((openb.nodes.len(), openb.pods.len()), (1_523, 8_152));
    let (pooled_hosts, pooled_pods) = pool_gpus(&openb.hosts, &openb.pods);
    let mut seen = Vec::new();
    for policy in PackPolicy::all() {
        for pooled in [false, true] {
            let (hosts, pods, mode) = if pooled {
                (&pooled_hosts, &pooled_pods, GpuMode::Pooled)
            } else {
                (&openb.hosts, &openb.pods, GpuMode::Devices)
            };
            let what = format!("{} (GPUs pooled: {pooled})", policy.name());
            let p = pack(hosts, pods, policy).unwrap_or_else(|e| panic!("{what}: {e}"));
            let checked = verify(&openb.hosts, &openb.pods, &p, mode)
                .unwrap_or_else(|e| panic!("{what}: {e}"));
            assert_eq!(
                checked.hosts_used,
                support::published_hosts(policy.name(), pooled),
                "{what}"
            );
            assert_eq!(p.lower_bound, support::LOWER_BOUND, "{what}");
            assert_eq!(checked.placed, 8_152 - support::UNPLACEABLE, "{what}");
            assert_eq!(
                p.unplaced_reasons
                    .get(&NotPlaced::Insufficient(Dimension::Cpu)),
                Some(&support::UNPLACEABLE),
                "{what}: {:?}",
                p.unplaced_reasons
            );
        }
        seen.push(policy.name());
    }
    let published: Vec<&str> = support::HOSTS.iter().map(|(name, _, _)| *name).collect();
    assert_eq!(seen, published, "every policy has a published figure");
}
