//! Why a task was not placed, and what would let it be.
//!
//! The failure path is allowed to scan: it runs once per distinct demand of a failed
//! request, and an operator reading "0/5000 hosts: 3000 insufficient memory, 1500 wrong
//! machine type" needs every host counted, not a sample. Each host is charged to the
//! *first* check it fails, in the order placement applies them, so the counts add up to
//! the fleet size.

use std::collections::BTreeMap;
use std::fmt;

use crate::allocator::{AllocError, Allocator, JobRecord, Placement, class_matches};
use crate::entitlement::{Entitlement, EntitlementId};
use crate::fleet::{FaultLevel, Host, HostId, HostState, Name, Owner};
use crate::index::FreeKey;
use crate::request::Constraints;
use crate::resources::{Demand, GpuDevices, MAX_EXTRA, Resources};

/// The first reason a host could not take a task.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
#[non_exhaustive]
pub enum UnplacedReason {
    /// The host is draining or down.
    NotUp,
    /// The host belongs to another entitlement.
    OtherEntitlement,
    /// Machine type not among the required ones.
    WrongMachineType,
    /// GPU model not among the required ones.
    WrongGpuModel,
    /// Host profile differs from the required one.
    WrongHostProfile,
    /// An attribute predicate fails.
    AttributeMismatch,
    /// A free-pool host the entitlement's quota does not allow it to take.
    QuotaExhausted,
    /// The job already has its maximum number of tasks on the host.
    MaxPerHost,
    /// The job already has its maximum number of tasks in the host's rack.
    MaxPerRack,
    /// Not enough free CPU.
    InsufficientCpu,
    /// Not enough free memory.
    InsufficientMemory,
    /// Not enough of the named extensible resource.
    InsufficientResource(String),
    /// No GPU device (or not enough idle devices) for the demand.
    InsufficientGpu,
}

impl fmt::Display for UnplacedReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            UnplacedReason::NotUp => f.write_str("not up"),
            UnplacedReason::OtherEntitlement => f.write_str("in another entitlement"),
            UnplacedReason::WrongMachineType => f.write_str("wrong machine type"),
            UnplacedReason::WrongGpuModel => f.write_str("wrong GPU model"),
            UnplacedReason::WrongHostProfile => f.write_str("wrong host profile"),
            UnplacedReason::AttributeMismatch => f.write_str("attribute mismatch"),
            UnplacedReason::QuotaExhausted => f.write_str("entitlement quota exhausted"),
            UnplacedReason::MaxPerHost => f.write_str("job at its per-host limit"),
            UnplacedReason::MaxPerRack => f.write_str("job at its per-rack limit"),
            UnplacedReason::InsufficientCpu => f.write_str("insufficient cpu"),
            UnplacedReason::InsufficientMemory => f.write_str("insufficient memory"),
            UnplacedReason::InsufficientResource(name) => write!(f, "insufficient {name}"),
            UnplacedReason::InsufficientGpu => f.write_str("insufficient gpu"),
        }
    }
}

/// Why a task was not placed, host by host in aggregate.
///
/// Displays as `0/5000 hosts: 3000 insufficient memory, 1500 wrong machine type, 500
/// wrong host profile` (largest count first, ties in the order of [`UnplacedReason`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Unplaced {
    /// Hosts that could take the task (0 unless the bounded search was unlucky).
    pub available: u32,
    /// Hosts in the fleet.
    pub total: u32,
    /// Hosts per first failing reason.
    pub counts: BTreeMap<UnplacedReason, u32>,
}

impl Unplaced {
    /// `(reason, count)` pairs in display order.
    pub fn ranked(&self) -> Vec<(&UnplacedReason, u32)> {
        let mut v: Vec<_> = self.counts.iter().map(|(r, &n)| (r, n)).collect();
        v.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(b.0)));
        v
    }
}

impl fmt::Display for Unplaced {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{} hosts", self.available, self.total)?;
        for (i, (reason, n)) in self.ranked().into_iter().enumerate() {
            let sep = if i == 0 { ": " } else { ", " };
            write!(f, "{sep}{n} {reason}")?;
        }
        Ok(())
    }
}

/// A proposed host-profile switch of a free-pool host, for the profiles side to carry
/// out (then [`crate::Allocator::apply_profile_switch`] records it).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProfileSwitch {
    /// The host.
    pub host: HostId,
    /// Its current profile.
    pub from: String,
    /// The profile the request needs.
    pub to: String,
}

impl Allocator {
    /// Why no host takes `demand` (scans the fleet; failure path only).
    pub(crate) fn explain(&self, p: &Placement<'_>) -> Result<Unplaced, AllocError> {
        let empty = JobRecord::default();
        let jr = self.jobs.get(&p.job).unwrap_or(&empty);
        let e = self.entitlement(p.ent)?;
        let mut counts: BTreeMap<UnplacedReason, u32> = BTreeMap::new();
        let mut available = 0u32;
        for (hid, h) in self.host_records() {
            match self.first_failure(p, jr, e, hid, h, None) {
                Some(r) => *counts.entry(r).or_insert(0) += 1,
                None => available += 1,
            }
        }
        // Each host is charged once, so this is the fleet size (below `u32::MAX`, as
        // `add_host` keeps it).
        let total = counts.values().sum::<u32>() + available;
        Ok(Unplaced {
            available,
            total,
            counts,
        })
    }

    /// The first check host `hid` fails for `p`, in the order placement applies them.
    /// `moving_from`: the host of a task being moved, whose job counts include it.
    pub(crate) fn first_failure(
        &self,
        p: &Placement<'_>,
        jr: &JobRecord,
        e: &Entitlement,
        hid: HostId,
        h: &Host,
        moving_from: Option<&Host>,
    ) -> Option<UnplacedReason> {
        let (ent, cons, demand) = (p.ent, p.cons, &p.demand);
        let rack = FaultLevel::Rack.index();
        let in_rack = jr.in_domain(rack, h.domains[rack]);
        // The moving task itself is counted in its own rack, which it leaves.
        let in_rack = match moving_from {
            Some(f) if f.domains[rack] == h.domains[rack] => in_rack.saturating_sub(1),
            _ => in_rack,
        };
        let attrs_ok = self
            .attr_sets
            .resolve(h.attrs.0)
            .is_some_and(|a| cons.attributes_ok(a));
        let r = demand.resources;
        Some(if h.state != HostState::Up {
            UnplacedReason::NotUp
        } else if matches!(h.owner, Owner::Entitlement(o) if o != ent) {
            UnplacedReason::OtherEntitlement
        } else if !cons.machine_type_ok(h.machine_type) {
            UnplacedReason::WrongMachineType
        } else if !cons.gpu_model_ok(h.gpu_model) {
            UnplacedReason::WrongGpuModel
        } else if !cons.profile_ok(h.profile) {
            UnplacedReason::WrongHostProfile
        } else if !attrs_ok {
            UnplacedReason::AttributeMismatch
        } else if h.owner == Owner::FreePool && !e.admits(h) {
            UnplacedReason::QuotaExhausted
        } else if cons
            .prefs
            .max_per_host
            .is_some_and(|k| jr.on_host(hid) >= k)
        {
            UnplacedReason::MaxPerHost
        } else if cons.prefs.max_per_rack.is_some_and(|k| in_rack >= k) {
            UnplacedReason::MaxPerRack
        } else if r.cpu_milli > h.free.cpu_milli {
            UnplacedReason::InsufficientCpu
        } else if r.memory_mib > h.free.memory_mib {
            UnplacedReason::InsufficientMemory
        } else if let Some(i) = (0..MAX_EXTRA).find(|&i| r.extra[i] > h.free.extra[i]) {
            UnplacedReason::InsufficientResource(self.resource_names.name(i))
        } else if !h.gpus.fits(demand.gpu) {
            UnplacedReason::InsufficientGpu
        } else {
            return None;
        })
    }

    /// Free-pool hosts whose profile differs from the required one but which would take
    /// the failed demands once switched, packed first-fit, within quota.
    pub(crate) fn propose_switches(
        &self,
        ent: EntitlementId,
        cons: &Constraints,
        want: &str,
        failed: &[Demand],
    ) -> Result<Vec<ProfileSwitch>, AllocError> {
        let want_name = self.names.lookup(want);
        let any_profile = Constraints {
            profile: None,
            ..cons.clone()
        };
        let mut e = self.entitlement(ent)?.clone();
        let per_host_limit = cons.prefs.max_per_host.unwrap_or(u32::MAX);
        // (host, its profile now, room left, tasks planned) of hosts proposed so far.
        let mut proposed: Vec<(HostId, Name, Room, u32)> = Vec::new();
        for d in failed {
            let planned = proposed
                .iter_mut()
                .filter(|p| p.3 < per_host_limit)
                .find_map(|p| p.2.after(d).map(|left| (p, left)));
            if let Some((p, left)) = planned {
                p.2 = left;
                p.3 += 1;
                continue;
            }
            let mut found = None;
            'search: for class in self.index.up_classes(Owner::FreePool) {
                let k = &class.key;
                if k.profile == want_name || !class_matches(&any_profile, k, &self.attr_sets) {
                    continue;
                }
                for key in class.hosts.range(FreeKey::lowest(&d.resources)..) {
                    let (id, h) = self.indexed_host(key)?;
                    if !e.admits(h) || proposed.iter().any(|p| p.0 == id) {
                        continue;
                    }
                    let room = Room {
                        free: h.free,
                        gpus: h.gpus.clone(),
                    };
                    if let Some(left) = room.after(d) {
                        found = Some((id, h, left));
                        break 'search;
                    }
                }
            }
            if let Some((id, h, left)) = found {
                e.add(id, h);
                proposed.push((id, h.profile, left, 1));
            }
        }
        Ok(proposed
            .into_iter()
            .map(|(host, from, ..)| ProfileSwitch {
                host,
                from: self.names.resolve(from).to_owned(),
                to: want.to_owned(),
            })
            .collect())
    }
}

/// What a free-pool host has left while switches are planned on paper.
#[derive(Debug, Clone)]
struct Room {
    free: Resources,
    gpus: GpuDevices,
}

impl Room {
    /// The room left after `d`, if it fits.
    fn after(&self, d: &Demand) -> Option<Room> {
        let free = self.free.checked_sub(&d.resources)?;
        let mut gpus = self.gpus.clone();
        gpus.take(d.gpu)?;
        Some(Room { free, gpus })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn display_has_the_issue_shape() {
        let u = Unplaced {
            available: 0,
            total: 5000,
            counts: [
                (UnplacedReason::WrongHostProfile, 500),
                (UnplacedReason::InsufficientMemory, 3000),
                (UnplacedReason::WrongMachineType, 1500),
            ]
            .into_iter()
            .collect(),
        };
        assert_eq!(
            u.to_string(),
            "0/5000 hosts: 3000 insufficient memory, 1500 wrong machine type, 500 wrong host profile"
        );
    }

    #[test]
    fn empty_fleet_has_no_reasons() {
        let u = Unplaced {
            available: 0,
            total: 0,
            counts: BTreeMap::new(),
        };
        assert_eq!(u.to_string(), "0/0 hosts");
    }
}
