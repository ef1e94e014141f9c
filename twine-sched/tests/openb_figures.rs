//! The packing figures docs/BENCHMARKS.md publishes for the openb trace, kept true: every
//! policy packs the trace onto identical 96-core / 384 GiB / 8-GPU hosts, with GPUs as
//! devices and pooled, each packing passes the independent checker, and the host counts,
//! the lower bound and the unplaced pods are the published ones. Skips with a reason
//! where the trace is absent; fails instead under `TWINE_REQUIRE_REALSYS=1`. twine's
//! policy takes most of the time in the debug profile, so it has tests of its own, which
//! run in parallel with the rest.

mod support;

use twine_sched::pack::{
    Dimension, GpuMode, Hosts, NotPlaced, PackPolicy, pack, pool_gpus, verify,
};

/// Packs the trace with `policy` and checks the result against the published figures.
fn check(openb: &support::Openb, policy: PackPolicy, pooled: bool) {
    let pooled_input;
    let (hosts, pods, mode) = if pooled {
        pooled_input = pool_gpus(&openb.hosts, &openb.pods);
        (&pooled_input.0, &pooled_input.1, GpuMode::Pooled)
    } else {
        (&openb.hosts, &openb.pods, GpuMode::Devices)
    };
    let what = format!("{} (GPUs pooled: {pooled})", policy.name());
    let p = pack(hosts, pods, policy).unwrap_or_else(|e| panic!("{what}: {e}"));
    let checked =
        verify(&openb.hosts, &openb.pods, &p, mode).unwrap_or_else(|e| panic!("{what}: {e}"));
    assert_eq!(
        checked.hosts_used,
        support::published_hosts(policy.name(), pooled),
        "{what}"
    );
    assert_eq!(p.lower_bound, support::LOWER_BOUND, "{what}");
    assert_eq!(
        checked.placed,
        openb.pods.len() - support::UNPLACEABLE,
        "{what}"
    );
    assert_eq!(
        p.unplaced_reasons
            .get(&NotPlaced::Insufficient(Dimension::Cpu)),
        Some(&support::UNPLACEABLE),
        "{what}: {:?}",
        p.unplaced_reasons
    );
}

#[test]
fn every_policy_has_a_published_figure() {
    let names: Vec<&str> = PackPolicy::all()
        .into_iter()
        .map(PackPolicy::name)
        .collect();
    let published: Vec<&str> = support::HOSTS.iter().map(|(name, _, _)| *name).collect();
    assert_eq!(names, published);
}

#[test]
fn the_classic_heuristics_need_the_published_hosts() {
    let Some(openb) = support::openb() else {
        return;
    };
    assert_eq!((openb.nodes.len(), openb.pods.len()), (1_523, 8_152));
    for policy in PackPolicy::all() {
        if policy != PackPolicy::Twine {
            check(&openb, policy, false);
            check(&openb, policy, true);
        }
    }
}

#[test]
fn twine_needs_the_published_hosts_with_gpus_as_devices() {
    if let Some(openb) = support::openb() {
        check(&openb, PackPolicy::Twine, false);
    }
}

#[test]
fn twine_needs_the_published_hosts_with_gpus_pooled() {
    if let Some(openb) = support::openb() {
        check(&openb, PackPolicy::Twine, true);
    }
}

/// docs/BENCHMARKS.md: on the trace's own 1,523 listed nodes (all pods at once), twine
/// places 7,230 pods on 1,034 nodes; every classic heuristic about 6,050 on 1,213.
#[test]
fn on_the_listed_nodes_twine_places_the_published_pods() {
    let Some(openb) = support::openb() else {
        return;
    };
    let hosts = Hosts::Listed(openb.nodes.clone());
    for policy in PackPolicy::all() {
        let p = pack(&hosts, &openb.pods, policy).unwrap_or_else(|e| panic!("{e}"));
        let checked = verify(&hosts, &openb.pods, &p, GpuMode::Devices)
            .unwrap_or_else(|e| panic!("{}: {e}", policy.name()));
        let got = (checked.placed, checked.hosts_used);
        if policy == PackPolicy::Twine {
            assert_eq!(got, (7_230, 1_034));
        } else {
            assert!(
                got.0.abs_diff(6_050) <= 10 && got.1 == 1_213,
                "{}: {got:?}",
                policy.name()
            );
        }
    }
}
