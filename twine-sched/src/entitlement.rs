//! Entitlements: a quota plus the hosts currently lent to it from the free pool.
//!
//! As in Twine, an entitlement is a pseudo cluster whose hosts come and go: a host
//! joins when a job needs room and no assigned host has it, and goes back to the free
//! pool as soon as it is empty, so the quota is a ceiling, not a reservation. Quota
//! accounting is kept as running totals so admitting a host is O(log types).

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;

use crate::allocator::Bookkeeping;
use crate::fleet::{Host, HostId, Name, Names};
use crate::resources::{MAX_EXTRA, Resources};

/// An entitlement, by the index the allocator gave it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct EntitlementId(pub u32);

impl fmt::Display for EntitlementId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "entitlement {}", self.0)
    }
}

/// What of an entitlement's holding is over a quota: the first machine type or
/// capacity dimension found over it.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum QuotaExcess {
    /// More hosts of a machine type than a [`Quota::Machines`] allows.
    Machines {
        /// The machine type.
        machine_type: String,
        /// Hosts of that type the entitlement holds.
        hosts: u32,
        /// Hosts of that type the quota allows.
        limit: u32,
    },
    /// More total capacity in one dimension than a [`Quota::Units`] allows.
    Units {
        /// The dimension, as an index into [`Resources::dims`] (0 CPU, 1 memory, then
        /// the extras).
        dimension: usize,
        /// Capacity the entitlement's hosts add up to (wider than a host's, so no sum
        /// overflows).
        held: u128,
        /// What the quota allows.
        limit: u64,
    },
}

impl fmt::Display for QuotaExcess {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            QuotaExcess::Machines {
                machine_type,
                hosts,
                limit,
            } => write!(f, "{hosts} hosts of type {machine_type} > {limit}"),
            QuotaExcess::Units {
                dimension,
                held,
                limit,
            } => {
                let name = match dimension {
                    0 => "cpu_milli".to_owned(),
                    1 => "memory_mib".to_owned(),
                    d => format!("extra{}", d - 2),
                };
                write!(f, "{name}: {held} held > {limit}")
            }
        }
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

/// Total capacity of a set of hosts, per dimension of [`Resources::dims`], in a type
/// wide enough that adding up to `u32::MAX` hosts of `u64::MAX` never overflows.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct CapacitySum([u128; 2 + MAX_EXTRA]);

impl CapacitySum {
    fn plus(mut self, r: &Resources) -> CapacitySum {
        for (s, d) in self.0.iter_mut().zip(r.dims()) {
            *s += u128::from(d);
        }
        self
    }

    fn minus(mut self, r: &Resources) -> Option<CapacitySum> {
        for (s, d) in self.0.iter_mut().zip(r.dims()) {
            *s = s.checked_sub(u128::from(d))?;
        }
        Some(self)
    }

    /// The first dimension over `limit`, as `(dimension, held, limit)`.
    fn over(&self, limit: &Resources) -> Option<(usize, u128, u64)> {
        self.0
            .iter()
            .zip(limit.dims())
            .enumerate()
            .find(|(_, (s, l))| **s > u128::from(*l))
            .map(|(d, (s, l))| (d, *s, l))
    }
}

/// An entitlement's live record.
#[derive(Debug, Clone)]
pub(crate) struct Entitlement {
    pub(crate) name: String,
    pub(crate) quota: ResolvedQuota,
    pub(crate) hosts: BTreeSet<HostId>,
    /// Assigned hosts per machine type.
    pub(crate) per_type: BTreeMap<Name, u32>,
    /// Sum of assigned hosts' capacity.
    pub(crate) capacity: CapacitySum,
}

impl Entitlement {
    pub(crate) fn new(name: String, quota: ResolvedQuota) -> Entitlement {
        Entitlement {
            name,
            quota,
            hosts: BTreeSet::new(),
            per_type: BTreeMap::new(),
            capacity: CapacitySum::default(),
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
            ResolvedQuota::Units(q) => self.capacity.plus(&host.capacity).over(q).is_none(),
        }
    }

    pub(crate) fn add(&mut self, id: HostId, host: &Host) {
        self.hosts.insert(id);
        *self.per_type.entry(host.machine_type).or_insert(0) += 1;
        self.capacity = self.capacity.plus(&host.capacity);
    }

    /// Takes `host` out; an error if the books did not hold it.
    pub(crate) fn remove(&mut self, id: HostId, host: &Host) -> Result<(), Bookkeeping> {
        let missing = Bookkeeping::EntitlementMissingHost;
        let capacity = self.capacity.minus(&host.capacity).ok_or(missing.clone())?;
        let n = self
            .per_type
            .get_mut(&host.machine_type)
            .ok_or(missing.clone())?;
        let left = n.checked_sub(1).ok_or(missing.clone())?;
        if !self.hosts.remove(&id) {
            return Err(missing);
        }
        *n = left;
        if left == 0 {
            self.per_type.remove(&host.machine_type);
        }
        self.capacity = capacity;
        Ok(())
    }

    /// Whether the current assignment is within `quota`; the first excess if not.
    pub(crate) fn within(&self, quota: &ResolvedQuota, names: &Names) -> Result<(), QuotaExcess> {
        match quota {
            ResolvedQuota::Machines(q) => {
                for (t, &hosts) in &self.per_type {
                    let limit = q.get(t).copied().unwrap_or(0);
                    if hosts > limit {
                        return Err(QuotaExcess::Machines {
                            machine_type: names.resolve(*t).to_owned(),
                            hosts,
                            limit,
                        });
                    }
                }
                Ok(())
            }
            ResolvedQuota::Units(q) => match self.capacity.over(q) {
                None => Ok(()),
                Some((dimension, held, limit)) => Err(QuotaExcess::Units {
                    dimension,
                    held,
                    limit,
                }),
            },
        }
    }
}
