//! The embedded default region: Twine's small machine by the thousand, bigger stacking
//! hosts, GPU hosts, over datacenters, power domains and racks; three entitlements; the
//! host profiles the hosts may carry.

use twine::sched::{Allocator, AllocatorConfig, EntitlementId, HostSpec, Quota, Resources};

/// Hosts per rack.
pub(crate) const RACK: usize = 40;
/// Racks per power domain.
const RACKS_PER_POWER: usize = 25;
/// Power domains per datacenter.
const POWER_PER_DC: usize = 10;

/// The machine types: name, capacity (millicores, MiB), GPUs, and how many of the
/// region's hosts are of it, per 20,000 small ones.
pub(crate) const SMALL: &str = "small";
/// The stacking host: many tasks of many jobs on one machine.
pub(crate) const BIG: &str = "big";
/// The GPU host.
pub(crate) const GPU: &str = "gpu";

/// The host profiles: what the hosts carry, in twine-profiles' TOML.
pub(crate) const PROFILES: [(&str, &str); 3] = [
    ("default", "[sysctl]\n\"vm.swappiness\" = 60\n"),
    (
        "web",
        "# Tuned for many short connections.\n[sysctl]\n\"vm.swappiness\" = 10\n\
         \"net.core.somaxconn\" = 65535\n\"net.ipv4.tcp_fin_timeout\" = 15\n\
         \"net.ipv4.tcp_tw_reuse\" = 1\n",
    ),
    ("hugepages", "[hugepages]\ncount_2m = 4096\n"),
];

/// The region's hosts and entitlements, in the allocator.
pub(crate) struct Region {
    /// The allocator holding every host.
    pub(crate) alloc: Allocator,
    /// The entitlements, by name, in the order of [`ENTITLEMENTS`].
    pub(crate) entitlements: Vec<(&'static str, EntitlementId)>,
    /// Hosts of each machine type, in the order small, big, gpu.
    pub(crate) hosts_by_type: [(&'static str, usize); 3],
    /// Racks, power domains and datacenters.
    pub(crate) racks: usize,
    /// Power domains.
    pub(crate) power_domains: usize,
    /// Datacenters.
    pub(crate) datacenters: usize,
    /// Capacity of each machine type.
    pub(crate) capacity: [(&'static str, Resources, u8); 3],
}

/// The entitlements and their quotas, in machines of each type.
pub(crate) const ENTITLEMENTS: [&str; 3] = ["frontend", "batch", "ml"];

/// Builds the region with `small` small hosts; big and GPU hosts scale with it (1 per
/// 25 and 1 per 100 small ones), in racks of their own at the end.
pub(crate) fn build(small: usize) -> Result<Region, String> {
    let big = (small / 25).max(RACK);
    let gpu = (small / 100).max(RACK / 2);
    let small_cap = Resources::new(18_000, 65_536);
    let big_cap = Resources::new(96_000, 393_216);
    let gpu_cap = Resources::new(64_000, 524_288);
    let mut alloc = Allocator::new(AllocatorConfig::default().with_seed(14));
    let count = |n: usize| u32::try_from(n).map_err(|_| format!("{n} hosts: too many"));
    let quotas = [
        Quota::machines([(SMALL, count(small / 10)?), (BIG, count(big / 2)?)]),
        Quota::machines([(SMALL, count(small / 2)?), (BIG, count(big / 2)?)]),
        Quota::machines([(GPU, count(gpu)?), (SMALL, count(small / 50)?)]),
    ];
    let mut entitlements = Vec::new();
    for (name, quota) in ENTITLEMENTS.into_iter().zip(quotas) {
        let id = alloc
            .add_entitlement(name, quota)
            .map_err(|e| format!("entitlement {name}: {e}"))?;
        entitlements.push((name, id));
    }
    let total = small + big + gpu;
    for i in 0..total {
        let rack = i / RACK;
        let power = rack / RACKS_PER_POWER;
        let dc = power / POWER_PER_DC;
        // Machine types are interleaved evenly, so a rack holds mostly small hosts and a
        // big or GPU host now and then, as racks filled over years of purchases do.
        let every = |n: usize, i: usize| (i + 1) * n / total > i * n / total;
        let kind = if every(gpu, i) {
            GPU
        } else if every(big + gpu, i) {
            BIG
        } else {
            SMALL
        };
        let spec = if kind == SMALL {
            // One small host in 10 carries the hugepages profile; a few racks' worth
            // already run the web profile.
            let profile = if i % 10 == 9 {
                "hugepages"
            } else if i % 200 == 0 {
                "web"
            } else {
                "default"
            };
            HostSpec::new(small_cap)
                .machine_type(SMALL)
                .profile(profile)
        } else if kind == BIG {
            HostSpec::new(big_cap).machine_type(BIG).profile("default")
        } else {
            HostSpec::new(gpu_cap)
                .machine_type(GPU)
                .gpus(8, "a100")
                .profile("default")
        };
        let path = [
            "region1".to_owned(),
            format!("dc{}", dc + 1),
            format!("dc{}-p{}", dc + 1, power + 1),
            format!("rack{:04}", rack + 1),
        ];
        alloc
            .add_host(&spec.domain([&path[0], &path[1], &path[2], &path[3]]))
            .map_err(|e| format!("host {i}: {e}"))?;
    }
    let racks = total.div_ceil(RACK);
    let power_domains = racks.div_ceil(RACKS_PER_POWER);
    Ok(Region {
        alloc,
        entitlements,
        hosts_by_type: [(SMALL, small), (BIG, big), (GPU, gpu)],
        racks,
        power_domains,
        datacenters: power_domains.div_ceil(POWER_PER_DC),
        capacity: [(SMALL, small_cap, 0), (BIG, big_cap, 0), (GPU, gpu_cap, 8)],
    })
}
