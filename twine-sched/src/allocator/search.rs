//! Candidate search: which host takes one task, looked up class by class in the index
//! (the design and its cost are in the [module docs](super)).

use std::sync::Arc;

use super::{AllocError, Allocator, Bookkeeping, JobRecord};
use crate::entitlement::EntitlementId;
use crate::fleet::{AttrSet, FaultLevel, Host, HostId, Interner, Name, Owner};
use crate::index::{ClassKey, FreeKey};
use crate::request::{Constraints, JobId};
use crate::resources::{Demand, GPU_MILLI};
use crate::score::{HostFit, Policy};

/// What one placement is for: the job, its entitlement, the rules it is placed under
/// and the demand. Search, commit and explanation all take it.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Placement<'a> {
    pub(crate) job: JobId,
    pub(crate) ent: EntitlementId,
    pub(crate) cons: &'a Arc<Constraints>,
    pub(crate) demand: Demand,
}

/// Where a search may look.
#[derive(Clone, Copy)]
pub(crate) struct Scope<'a> {
    /// Whether free-pool hosts may join the entitlement.
    pub(crate) free_pool: bool,
    /// Hosts to pass over.
    pub(crate) exclude: Option<&'a dyn Fn(HostId) -> bool>,
}

impl Scope<'_> {
    /// The whole fleet the entitlement may use.
    pub(crate) const ANYWHERE: Scope<'static> = Scope {
        free_pool: true,
        exclude: None,
    };
}

/// The best candidate so far; smaller `rank` is better.
#[derive(Debug, Clone, Copy)]
struct Candidate {
    spread: u32,
    tier: u8,
    score: f64,
    host: HostId,
}

impl Candidate {
    fn better_than(&self, other: &Candidate) -> bool {
        (self.spread, self.tier)
            .cmp(&(other.spread, other.tier))
            .then_with(|| other.score.total_cmp(&self.score))
            .then_with(|| self.host.cmp(&other.host))
            .is_lt()
    }
}

/// Whether every host of the class meets the hard requirements other than capacity.
/// (An attribute-set id comes only from interning, so it always resolves.)
pub(crate) fn class_matches(c: &Constraints, key: &ClassKey, attrs: &Interner<AttrSet>) -> bool {
    c.machine_type_ok(key.machine_type)
        && c.gpu_model_ok(key.gpu_model)
        && c.profile_ok(key.profile)
        && attrs
            .resolve(key.attrs.0)
            .is_some_and(|a| c.attributes_ok(a))
}

impl Allocator {
    /// The host an index entry stands for.
    pub(crate) fn indexed_host(&self, key: &FreeKey) -> Result<(HostId, &Host), AllocError> {
        let id = HostId(key.host);
        let h = self
            .hosts
            .get(key.host as usize)
            .ok_or(AllocError::Internal {
                host: id,
                what: Bookkeeping::IndexedButUnknown,
            })?;
        Ok((id, h))
    }

    /// Every host with its id.
    pub(crate) fn host_records(&self) -> impl Iterator<Item = (HostId, &Host)> {
        // Hosts first, so the ids stop with them (`add_host` keeps them below u32::MAX).
        self.hosts.iter().zip(0u32..).map(|(h, i)| (HostId(i), h))
    }

    /// Picks the best host for one task, or `None` (then no up host of the entitlement
    /// or, within quota, of the free pool can take it). `moving_from` is the task's current
    /// host when it is being moved: the job's counts then do not include the task itself.
    pub(super) fn choose(
        &self,
        p: &Placement<'_>,
        moving_from: Option<HostId>,
    ) -> Result<Option<HostId>, AllocError> {
        self.choose_in(p, moving_from, Scope::ANYWHERE)
    }

    /// [`choose`](Self::choose) within `scope`: hosts it excludes are passed over, and
    /// with `free_pool` false only hosts of the entitlement are considered.
    pub(crate) fn choose_in(
        &self,
        p: &Placement<'_>,
        moving_from: Option<HostId>,
        scope: Scope<'_>,
    ) -> Result<Option<HostId>, AllocError> {
        let (cons, demand) = (p.cons, &p.demand);
        let rack = FaultLevel::Rack.index();
        let empty = JobRecord::default();
        let jr = self.jobs.get(&p.job).unwrap_or(&empty);
        let e = self
            .entitlements
            .get(p.ent.0 as usize)
            .ok_or(AllocError::UnknownEntitlement(p.ent))?;
        let from_domains = moving_from
            .and_then(|h| self.hosts.get(h.0 as usize))
            .map(|h| h.domains);
        let count_in = |level: usize, d: Name| {
            let n = jr.in_domain(level, d);
            if from_domains.is_some_and(|f| f[level] == d) {
                // `n` counts the moving task itself, so it is at least 1.
                n.saturating_sub(1)
            } else {
                n
            }
        };
        // The fewest tasks of the job any domain at the spread level can hold: 0 while
        // the job has not touched every domain, else its smallest count. A candidate at
        // the floor is as spread as it gets; others keep the search going.
        let floor = cons.prefs.spread.map_or(0, |l| {
            let counts = &jr.per_domain[l.index()];
            let touched = counts.values().filter(|&&n| n > 0).count();
            if touched < self.domains_at[l.index()].len() {
                0
            } else {
                counts.values().copied().min().unwrap_or(0)
            }
        });
        let mut best: Option<Candidate> = None;
        for (tier, owner) in [(0u8, Owner::Entitlement(p.ent)), (1, Owner::FreePool)] {
            if tier == 1
                && (!scope.free_pool
                    || best.is_some_and(|b| cons.prefs.spread.is_none() || b.spread <= floor))
            {
                break;
            }
            let mut feasible = 0usize;
            let mut examined = 0usize;
            'classes: for class in self.index.up_classes(owner) {
                if class.hosts.is_empty()
                    || !class.key.may_fit_gpu(demand.gpu)
                    || !class_matches(cons, &class.key, &self.attr_sets)
                {
                    continue;
                }
                if tier == 1 && !e.admits_type(class.key.machine_type) {
                    continue;
                }
                let range = class.hosts.range(FreeKey::lowest(&demand.resources)..);
                let iter: Box<dyn Iterator<Item = &FreeKey>> =
                    if cons.prefs.policy == Policy::Spread {
                        Box::new(range.rev())
                    } else {
                        Box::new(range)
                    };
                for key in iter {
                    examined += 1;
                    if feasible > 0 && examined > self.config.examine_limit {
                        break 'classes;
                    }
                    if key.mem < demand.resources.memory_mib {
                        continue;
                    }
                    let (hid, h) = self.indexed_host(key)?;
                    if !demand.resources.fits_in(&h.free)
                        || !h.gpus.fits(demand.gpu)
                        || Some(hid) == moving_from
                        || scope.exclude.is_some_and(|x| x(hid))
                    {
                        continue;
                    }
                    if tier == 1 && !e.admits(h) {
                        continue;
                    }
                    if cons
                        .prefs
                        .max_per_host
                        .is_some_and(|k| jr.on_host(hid) >= k)
                    {
                        continue;
                    }
                    if cons
                        .prefs
                        .max_per_rack
                        .is_some_and(|k| count_in(rack, h.domains[rack]) >= k)
                    {
                        continue;
                    }
                    let spread = cons
                        .prefs
                        .spread
                        .map_or(0, |l| count_in(l.index(), h.domains[l.index()]));
                    let score = match cons.prefs.policy {
                        Policy::FirstFit => 0.0,
                        p => p.score(&HostFit {
                            capacity: &h.capacity,
                            free: &h.free,
                            gpu_capacity_milli: h.gpus.count() as u64 * u64::from(GPU_MILLI),
                            gpu_free_milli: h.gpus.free_milli(),
                            demand,
                        }),
                    };
                    let cand = Candidate {
                        spread,
                        tier,
                        score,
                        host: hid,
                    };
                    if best.is_none_or(|b| cand.better_than(&b)) {
                        best = Some(cand);
                    }
                    feasible += 1;
                    // With spread, keep looking (up to the examine bound) while the best
                    // candidate's domain already holds a task of the job: an entitlement
                    // host in an untouched domain beats taking a new host from the pool.
                    let settled =
                        cons.prefs.spread.is_none() || best.is_some_and(|b| b.spread <= floor);
                    if (feasible >= self.config.candidates && settled)
                        || (cons.prefs.policy == Policy::FirstFit && cons.prefs.spread.is_none())
                    {
                        break 'classes;
                    }
                }
            }
        }
        Ok(best.map(|b| b.host))
    }
}
