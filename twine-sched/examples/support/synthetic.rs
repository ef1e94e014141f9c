//! The synthetic Twine-like fleet shared by the allocator bench and the examples
//! (included with `#[path]`; not an example of its own).
//!
//! 4 of 5 hosts are Twine's small machine (18 cores, 64 GiB, type `small`), 1 of 5 a
//! big stacking host (96 cores, 384 GiB, 8 GPUs, type `big`); 40 hosts per rack, 10
//! racks per power domain, 10 power domains per datacenter, one region. One
//! entitlement, `bench`, whose quota covers the whole fleet.

use twine_sched::{Allocator, AllocatorConfig, EntitlementId, HostSpec, Quota, Resources};

/// Builds the fleet into a new allocator; returns it and the entitlement.
pub(crate) fn fleet(hosts: usize, config: AllocatorConfig) -> (Allocator, EntitlementId) {
    let mut a = Allocator::new(config);
    let n = u32::try_from(hosts).expect("fleet fits u32");
    let ent = a
        .add_entitlement("bench", Quota::machines([("small", n), ("big", n)]))
        .expect("first entitlement");
    for i in 0..hosts {
        let rack = i / 40;
        let (power, dc) = (rack / 10, rack / 100);
        let spec = if i % 5 == 4 {
            HostSpec::new(Resources::new(96_000, 393_216))
                .machine_type("big")
                .gpus(8, "a100")
        } else {
            HostSpec::new(Resources::new(18_000, 65_536)).machine_type("small")
        };
        let path = [
            "region1".to_owned(),
            format!("dc{dc}"),
            format!("power{power}"),
            format!("rack{rack}"),
        ];
        a.add_host(&spec.domain([&path[0], &path[1], &path[2], &path[3]]))
            .expect("host ids fit");
    }
    (a, ent)
}
