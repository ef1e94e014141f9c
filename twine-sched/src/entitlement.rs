//! Entitlements: a quota plus the hosts currently lent to it from the free pool.
//!
//! As in Twine, an entitlement is a pseudo cluster whose hosts come and go: a host
//! joins when a job needs room and no assigned host has it, and goes back to the free
//! pool as soon as it is empty, so the quota is a ceiling, not a reservation. Quota
//! accounting is kept as running totals so admitting a host is O(log types).

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;

use crate::fleet::{Host, HostId, Name};
use crate::resources::Resources;

/// An entitlement, by the index the allocator gave it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct EntitlementId(pub u32);

impl fmt::Display for EntitlementId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "entitlement {}", self.0)
    }
}

/// How much of the fleet an entitlement may hold.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Quota {
    /// At most this many hosts per machine type; types not listed get none.
    Machines(BTreeMap<String, u32>),
    /// At most this much total host capacity (Twine's resource units), any machine type.
    Units(Resources),
}

impl Quota {
    /// A machine-count quota from `(machine type, count)` pairs.
    pub fn machines<'a>(pairs: impl IntoIterator<Item = (&'a str, u32)>) -> Quota {
        Quota::Machines(pairs.into_iter().map(|(t, n)| (t.to_owned(), n)).collect())
    }
}

/// A quota with machine types interned.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum ResolvedQuota {
    Machines(BTreeMap<Name, u32>),
    Units(Resources),
}

/// An entitlement's live record.
#[derive(Debug, Clone)]
pub(crate) struct Entitlement {
    pub(crate) name: String,
    pub(crate) quota: ResolvedQuota,
    pub(crate) hosts: BTreeSet<HostId>,
    /// Assigned hosts per machine type.
    pub(crate) per_type: BTreeMap<Name, u32>,
    /// Sum of assigned hosts' capacity (saturating: only compared against a quota).
    pub(crate) capacity: Resources,
}

impl Entitlement {
    pub(crate) fn new(name: String, quota: ResolvedQuota) -> Entitlement {
        Entitlement {
            name,
            quota,
            hosts: BTreeSet::new(),
            per_type: BTreeMap::new(),
            capacity: Resources::default(),
        }
    }

    /// Whether one more machine type `machine_type` may join (a class-level check:
    /// every host of a class shares its machine type).
    pub(crate) fn admits_type(&self, machine_type: Name) -> bool {
        match &self.quota {
            ResolvedQuota::Machines(q) => {
                let used = self.per_type.get(&machine_type).copied().unwrap_or(0);
                used < q.get(&machine_type).copied().unwrap_or(0)
            }
            ResolvedQuota::Units(_) => true,
        }
    }

    /// Whether `host` may join without exceeding the quota.
    pub(crate) fn admits(&self, host: &Host) -> bool {
        match &self.quota {
            ResolvedQuota::Machines(_) => self.admits_type(host.machine_type),
            ResolvedQuota::Units(q) => self
                .capacity
                .checked_add(&host.capacity)
                .is_some_and(|sum| sum.fits_in(q)),
        }
    }

    pub(crate) fn add(&mut self, id: HostId, host: &Host) {
        self.hosts.insert(id);
        *self.per_type.entry(host.machine_type).or_insert(0) += 1;
        self.capacity = saturating_add(&self.capacity, &host.capacity);
    }

    pub(crate) fn remove(&mut self, id: HostId, host: &Host) {
        self.hosts.remove(&id);
        if let Some(n) = self.per_type.get_mut(&host.machine_type) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                self.per_type.remove(&host.machine_type);
            }
        }
        self.capacity = self
            .capacity
            .checked_sub(&host.capacity)
            .unwrap_or_default();
    }

    /// Whether the current assignment is within `quota`; `Err((what, used, limit))` if not.
    pub(crate) fn within(
        &self,
        quota: &ResolvedQuota,
    ) -> Result<(), (Option<Name>, Resources, Resources)> {
        match quota {
            ResolvedQuota::Machines(q) => {
                for (t, &used) in &self.per_type {
                    let limit = q.get(t).copied().unwrap_or(0);
                    if used > limit {
                        return Err((
                            Some(*t),
                            Resources::new(u64::from(used), 0),
                            Resources::new(u64::from(limit), 0),
                        ));
                    }
                }
                Ok(())
            }
            ResolvedQuota::Units(q) => {
                if self.capacity.fits_in(q) {
                    Ok(())
                } else {
                    Err((None, self.capacity, *q))
                }
            }
        }
    }
}

pub(crate) fn saturating_add(a: &Resources, b: &Resources) -> Resources {
    let mut extra = a.extra;
    for (e, x) in extra.iter_mut().zip(b.extra) {
        *e = e.saturating_add(x);
    }
    Resources {
        cpu_milli: a.cpu_milli.saturating_add(b.cpu_milli),
        memory_mib: a.memory_mib.saturating_add(b.memory_mib),
        extra,
    }
}
