//! Planning the waves: canaries that cover every machine type and host profile in use,
//! then waves that grow to cumulative shares of the fleet.

use std::collections::BTreeMap;

use crate::allocator::Allocator;
use crate::fleet::HostId;

use super::RolloutError;

/// What an update needs to take effect.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum UpdateKind {
    /// Packages that apply on a running host: no drain, no reboot.
    Live,
    /// A kernel or systemd update: the host drains, reboots and comes back.
    Reboot,
}

impl UpdateKind {
    /// Whether hosts drain for it (only reboots do).
    pub fn drains(self) -> bool {
        self == UpdateKind::Reboot
    }
}

/// How to cut the fleet into waves.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct PlanConfig {
    /// Cumulative shares of the fleet, in percent, each wave brings the rollout to;
    /// strictly increasing, the last 100 (canaries count towards the first).
    pub waves_percent: Vec<u32>,
    /// Seed of the stable host order (a host's place does not depend on the others).
    pub seed: u64,
}

impl Default for PlanConfig {
    fn default() -> Self {
        PlanConfig {
            waves_percent: vec![1, 5, 25, 100],
            seed: 0,
        }
    }
}

/// What a wave is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum WaveKind {
    /// One host of each (machine type, host profile) in use.
    Canary,
    /// The rollout reaches this cumulative share of the fleet, in percent.
    Percent(u32),
}

/// One wave: the hosts it updates, in the order they start.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Wave {
    /// What it is.
    pub kind: WaveKind,
    /// Its hosts.
    pub hosts: Vec<HostId>,
}

/// The waves of a rollout, canaries first; every host of the fleet in exactly one.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Plan {
    /// The waves in order.
    pub waves: Vec<Wave>,
}

impl Plan {
    /// Hosts in all waves.
    pub fn host_count(&self) -> usize {
        self.waves.iter().map(|w| w.hosts.len()).sum()
    }
}

/// A stable 64-bit mix of the seed and the host id (SplitMix64's finaliser), so a
/// host's place in the order is its own, as Cincinnati's wariness hash.
pub(crate) fn mix(seed: u64, id: u64) -> u64 {
    let mut z = seed ^ id.wrapping_mul(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// Plans the waves over every host of `alloc`.
///
/// Hosts are ordered by a seeded hash of their id. The canaries are the first host in
/// that order of each (machine type, host profile) pair in use; then wave `k` takes hosts
/// in order until the rollout covers `waves_percent[k]` of the fleet (rounded up, so a
/// non-empty share is never an empty wave). Empty waves are dropped. `O(N log N)`.
///
/// Refused with [`RolloutError::Config`] if the percentages are empty, not strictly
/// increasing, zero, or do not end at 100.
pub fn plan(alloc: &Allocator, config: &PlanConfig) -> Result<Plan, RolloutError> {
    check_percentages(&config.waves_percent)?;
    let n = alloc.hosts.len();
    let mut order: Vec<(u64, u32)> = Vec::with_capacity(n);
    for i in 0..n {
        let id = u32::try_from(i).map_err(|_| RolloutError::Config {
            field: "hosts",
            value: n.to_string(),
            problem: "more hosts than host ids",
        })?;
        order.push((mix(config.seed, u64::from(id)), id));
    }
    order.sort_unstable();
    let mut canary_of: BTreeMap<(u32, u32), u32> = BTreeMap::new();
    for &(_, id) in &order {
        let h = &alloc.hosts[id as usize];
        canary_of
            .entry((h.machine_type.0, h.profile.0))
            .or_insert(id);
    }
    let mut is_canary = vec![false; n];
    let mut canaries: Vec<HostId> = Vec::with_capacity(canary_of.len());
    for &(_, id) in &order {
        let h = &alloc.hosts[id as usize];
        if canary_of.get(&(h.machine_type.0, h.profile.0)) == Some(&id) {
            is_canary[id as usize] = true;
            canaries.push(HostId(id));
        }
    }
    let mut waves = vec![Wave {
        kind: WaveKind::Canary,
        hosts: canaries,
    }];
    let mut rest = order
        .iter()
        .filter(|(_, id)| !is_canary[*id as usize])
        .map(|&(_, id)| HostId(id));
    let mut covered = waves[0].hosts.len();
    for &p in &config.waves_percent {
        let target = (n * p as usize).div_ceil(100);
        let take = target.saturating_sub(covered);
        let hosts: Vec<HostId> = rest.by_ref().take(take).collect();
        covered += hosts.len();
        waves.push(Wave {
            kind: WaveKind::Percent(p),
            hosts,
        });
    }
    waves.retain(|w| !w.hosts.is_empty());
    Ok(Plan { waves })
}

fn check_percentages(p: &[u32]) -> Result<(), RolloutError> {
    let bad = |problem| RolloutError::Config {
        field: "waves",
        value: p.iter().map(u32::to_string).collect::<Vec<_>>().join(","),
        problem,
    };
    if p.is_empty() {
        return Err(bad("needs at least one wave"));
    }
    if p.first() == Some(&0) {
        return Err(bad("a wave must reach more than 0%"));
    }
    if p.windows(2).any(|w| w[0] >= w[1]) {
        return Err(bad("cumulative percentages must strictly increase"));
    }
    if p.last() != Some(&100) {
        return Err(bad("the last wave must reach 100%"));
    }
    Ok(())
}
