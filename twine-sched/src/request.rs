//! Allocation requests, shaped like Twine's (§2.3): an entitlement, hard requirements,
//! soft preferences, and a per-task map of tasks to allocate or free.
//!
//! Requirements are written with strings, as a job spec has them, and resolved against
//! the fleet's interned names once per request, so a string the fleet never saw simply
//! matches no host (and the unplaced explanation says which requirement failed).

use std::fmt;

use crate::entitlement::EntitlementId;
use crate::fleet::{AttrSet, FaultLevel, Name, Names};
use crate::resources::Demand;
use crate::score::Policy;

/// A task, by the caller's id (unique across the allocator).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct TaskId(pub u64);

impl fmt::Display for TaskId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "task {}", self.0)
    }
}

/// A job, by the caller's id; spread and per-host limits count tasks of one job.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct JobId(pub u64);

impl fmt::Display for JobId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "job {}", self.0)
    }
}

/// A predicate on a host attribute.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum AttrPredicate {
    /// `key` is present with this value.
    Equals(String, String),
    /// `key` is present with one of these values.
    In(String, Vec<String>),
    /// `key` is present.
    Exists(String),
}

/// Hard requirements: a host that fails any of them never gets the task.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Requirements {
    /// Allowed machine types; empty means any.
    pub machine_types: Vec<String>,
    /// Allowed GPU models; empty means any (including hosts without GPUs).
    pub gpu_models: Vec<String>,
    /// The host profile the task needs, if any.
    pub host_profile: Option<String>,
    /// Attribute predicates, all of which must hold.
    pub attributes: Vec<AttrPredicate>,
}

impl Requirements {
    /// Allows these machine types only.
    pub fn machine_types<'a>(mut self, types: impl IntoIterator<Item = &'a str>) -> Self {
        self.machine_types = types.into_iter().map(str::to_owned).collect();
        self
    }
    /// Allows these GPU models only.
    pub fn gpu_models<'a>(mut self, models: impl IntoIterator<Item = &'a str>) -> Self {
        self.gpu_models = models.into_iter().map(str::to_owned).collect();
        self
    }
    /// Requires this host profile.
    pub fn host_profile(mut self, profile: &str) -> Self {
        self.host_profile = Some(profile.to_owned());
        self
    }
    /// Adds an attribute predicate.
    pub fn attribute(mut self, predicate: AttrPredicate) -> Self {
        self.attributes.push(predicate);
        self
    }
}

/// Soft preferences: how hosts that meet the requirements are ranked.
///
/// The per-host and per-rack limits are enforced (a host over the limit is not a
/// candidate); spread and the packing policy only rank.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Preferences {
    /// Spread the job's tasks evenly over this fault-domain level.
    pub spread: Option<FaultLevel>,
    /// How to rank hosts otherwise.
    pub policy: Policy,
    /// At most this many tasks of the job per host.
    pub max_per_host: Option<u32>,
    /// At most this many tasks of the job per rack.
    pub max_per_rack: Option<u32>,
}

impl Default for Preferences {
    fn default() -> Self {
        Preferences {
            spread: None,
            policy: Policy::BestFit,
            max_per_host: None,
            max_per_rack: None,
        }
    }
}

impl Preferences {
    /// Spreads over `level`.
    pub fn spread(mut self, level: FaultLevel) -> Self {
        self.spread = Some(level);
        self
    }
    /// Ranks with `policy`.
    pub fn policy(mut self, policy: Policy) -> Self {
        self.policy = policy;
        self
    }
    /// At most `k` tasks of the job per host.
    pub fn max_per_host(mut self, k: u32) -> Self {
        self.max_per_host = Some(k);
        self
    }
    /// At most `k` tasks of the job per rack.
    pub fn max_per_rack(mut self, k: u32) -> Self {
        self.max_per_rack = Some(k);
        self
    }
}

/// One allocation request for one job.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Request {
    /// The entitlement the job runs in.
    pub entitlement: EntitlementId,
    /// The job.
    pub job: JobId,
    /// Hard requirements (they replace the job's previous ones for its new tasks and
    /// for any later re-placement).
    pub requirements: Requirements,
    /// Soft preferences.
    pub preferences: Preferences,
    /// Tasks to place.
    pub allocate: Vec<(TaskId, Demand)>,
    /// Tasks to free (done before placing).
    pub free: Vec<TaskId>,
}

impl Request {
    /// An empty request for `job` in `entitlement`.
    pub fn new(entitlement: EntitlementId, job: JobId) -> Request {
        Request {
            entitlement,
            job,
            requirements: Requirements::default(),
            preferences: Preferences::default(),
            allocate: Vec::new(),
            free: Vec::new(),
        }
    }
    /// Sets the hard requirements.
    pub fn require(mut self, r: Requirements) -> Request {
        self.requirements = r;
        self
    }
    /// Sets the soft preferences.
    pub fn prefer(mut self, p: Preferences) -> Request {
        self.preferences = p;
        self
    }
    /// Adds a task to place.
    pub fn allocate(mut self, task: TaskId, demand: Demand) -> Request {
        self.allocate.push((task, demand));
        self
    }
    /// Adds a task to free.
    pub fn free(mut self, task: TaskId) -> Request {
        self.free.push(task);
        self
    }
}

/// A predicate with names interned.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum ResolvedPredicate {
    Equals(Name, Name),
    In(Name, Vec<Name>),
    Exists(Name),
}

/// Requirements and preferences with names interned: what a placed task keeps, so that
/// failure and drain re-place it under the rules it was placed with.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Constraints {
    pub(crate) machine_types: Vec<Name>,
    pub(crate) gpu_models: Vec<Name>,
    pub(crate) profile: Option<Name>,
    pub(crate) attributes: Vec<ResolvedPredicate>,
    pub(crate) prefs: Preferences,
}

impl Constraints {
    pub(crate) fn resolve(r: &Requirements, prefs: Preferences, names: &Names) -> Constraints {
        let sorted = |v: &[String]| {
            let mut v: Vec<Name> = v.iter().map(|s| names.lookup(s)).collect();
            v.sort_unstable();
            v.dedup();
            v
        };
        Constraints {
            machine_types: sorted(&r.machine_types),
            gpu_models: sorted(&r.gpu_models),
            profile: r.host_profile.as_deref().map(|p| names.lookup(p)),
            attributes: r
                .attributes
                .iter()
                .map(|p| match p {
                    AttrPredicate::Equals(k, v) => {
                        ResolvedPredicate::Equals(names.lookup(k), names.lookup(v))
                    }
                    AttrPredicate::In(k, vs) => ResolvedPredicate::In(
                        names.lookup(k),
                        vs.iter().map(|v| names.lookup(v)).collect(),
                    ),
                    AttrPredicate::Exists(k) => ResolvedPredicate::Exists(names.lookup(k)),
                })
                .collect(),
            prefs,
        }
    }

    pub(crate) fn machine_type_ok(&self, t: Name) -> bool {
        self.machine_types.is_empty() || self.machine_types.binary_search(&t).is_ok()
    }

    pub(crate) fn gpu_model_ok(&self, m: Option<Name>) -> bool {
        self.gpu_models.is_empty() || m.is_some_and(|m| self.gpu_models.binary_search(&m).is_ok())
    }

    pub(crate) fn profile_ok(&self, p: Name) -> bool {
        self.profile.is_none_or(|want| want == p)
    }

    pub(crate) fn attributes_ok(&self, attrs: &AttrSet) -> bool {
        let get = |k: Name| attrs.iter().find(|(ak, _)| *ak == k).map(|(_, v)| *v);
        self.attributes.iter().all(|p| match p {
            ResolvedPredicate::Equals(k, v) => get(*k) == Some(*v),
            ResolvedPredicate::In(k, vs) => get(*k).is_some_and(|v| vs.contains(&v)),
            ResolvedPredicate::Exists(k) => get(*k).is_some(),
        })
    }
}
