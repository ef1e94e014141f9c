//! Why a task was not placed, and what would let it be.
//!
//! The failure path is allowed to scan: it runs once per distinct demand of a failed
//! request, and an operator reading "0/5000 hosts: 3000 insufficient memory, 1500 wrong
//! machine type" needs every host counted, not a sample. Each host is charged to the
//! *first* check it fails, in the order placement applies them, so the counts add up to
//! the fleet size.

use std::collections::BTreeMap;
use std::fmt;

use crate::fleet::HostId;

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
