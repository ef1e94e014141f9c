//! Trace replay: tasks arrive and leave over time, the [`Allocator`](crate::Allocator)
//! places them online and the [ReBalancer](crate::rebalance) keeps the fleet packed;
//! the report says how many hosts were in use against the lower bound, with and without
//! rebalancing.
//!
//! ```
//! use twine_sched::pack::Hosts;
//! use twine_sched::replay::{Arrivals, ReplayConfig, replay};
//! use twine_sched::trace::read_pods;
//! use twine_sched::Resources;
//!
//! let pods = read_pods("pods.csv", "name,cpu_milli,memory_mib,num_gpu,gpu_milli,creation_time,deletion_time
//! a,6000,1024,0,0,0,600
//! b,6000,1024,0,0,10,20
//! c,3000,1024,0,0,15,900
//! ".as_bytes())?;
//! let hosts = Hosts::Identical { capacity: Resources::new(10_000, 8_192), gpus: 0, gpu_model: None };
//! let config = ReplayConfig::new(hosts, Arrivals::Trace).with_fleet_size(3).with_rebalance_every_s(60);
//! let r = replay(&pods, &config)?;
//! // a and b need two hosts; c goes beside a or b; b leaves at 20 s. At 60 s the
//! // ReBalancer empties the lighter of the two hosts if c was left on its own.
//! assert_eq!(r.main.unplaced, 0);
//! assert!(r.main.hosts_in_use_avg <= r.baseline.hosts_in_use_avg);
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```
//!
//! # The model
//!
//! - **Fleet.** [`ReplayConfig::hosts`]: the listed nodes, or [`ReplayConfig::fleet_size`]
//!   identical hosts. Every host is added to the allocator with its GPUs and GPU model.
//!   A pod's `gpu_spec` becomes a GPU-model requirement when the fleet has GPU models at
//!   all (identical hosts without a model accept every `gpu_spec`, as in [`pack`](crate::pack)).
//! - **Tasks.** Each pod is its own job with one task, all in one entitlement `"replay"`
//!   whose [`Quota::Units`](crate::Quota::Units) is the fleet's total capacity, so the
//!   quota never binds. Placement uses [`ReplayConfig::policy`] as the request's policy.
//! - **Arrivals.** [`Arrivals::Trace`]: each pod arrives at its `creation_time` and leaves
//!   at its `deletion_time` (never, without one; a pod that would leave the second it
//!   arrives stays one second). [`Arrivals::Poisson`]: see [`arrivals`](self#poisson-arrivals).
//! - **Two runs in lock-step.** The same arrivals and departures go to two allocators:
//!   the main one runs a ReBalancer round ([`Goal::Compact`](crate::rebalance::Goal::Compact),
//!   the greedy solver, [`ReplayConfig::move_budget`] moves) at every multiple of
//!   [`ReplayConfig::rebalance_every_s`]; the baseline never rebalances. A round is
//!   skipped when nothing changed since the last round that made no move.
//! - **Pending.** A pod that fits nowhere right now is pending (an
//!   [`EventKind::Unplaced`] event when it arrives). Pending pods are retried first come,
//!   first served at every instant where a departure or a move freed room, before the
//!   new arrivals of that instant; a pod further back in the queue is placed if it fits
//!   even when an earlier one does not. A pod's lifetime counts from its arrival, so a
//!   pending pod whose lifetime ends leaves the queue. A pod that fits no *empty* host of
//!   the fleet is never queued: it is unplaced at once (and counted in
//!   [`RunFigures::unplaceable`]).
//! - **Retries without scanning.** A pending pod failed on every host the last time it
//!   was tried; since then only the hosts a departure or a move left from gained room.
//!   So a retry is made only if the pod fits one of those hosts (same capacity, GPU and
//!   model checks as the allocator's), which gives the outcome retrying every pending
//!   pod would, without the allocator explaining each failure over every host.
//! - **One instant.** Departures (`free`) first, in arrival order; then the round's
//!   `move`s in the order made; then retries and arrivals (`place`, `unplaced`). Applied
//!   one by one, the events never overcommit a host: the allocator checks each step.
//!
//! # Poisson arrivals
//!
//! Pods are drawn (seeded [`rand_chacha::ChaCha8Rng`]) from the trace: a pod's shape
//! (demand and `gpu_spec`) uniformly, a lifetime independently from the empirical
//! durations `deletion_time − creation_time` (a 0 becomes 1 s). The bottleneck dimension
//! `k*` is the one of CPU, memory and GPU milli with the largest `E[d_k] / C_k` (`C_k`
//! the fleet's capacity); arrivals come at rate `λ = load · C_k* / (E[d_k*] · E[L])`, so
//! the demand in `k*` of the pods alive holds at `load` times the fleet's capacity on
//! average (an M/G/∞ system: `λ · E[L]` pods alive). Lifetimes are heavy-tailed, so an
//! empty start would take months to settle; the replay starts in the stationary state
//! instead: at `t = 0`, `N0 ~ Poisson(λ · E[L])` pods are already there, each with a
//! shape from the mix and a residual lifetime (a lifetime `L` drawn with probability
//! proportional to `L`, then uniform in `(0, L]`). They arrive at 0 in the order drawn.
//! Arrival `K` (counting from 0, the initial pods included) is named `NAME#K` after the
//! trace pod whose shape it takes.
//!
//! # Figures
//!
//! Averages are over time, `[0, duration]`, of quantities that change only at instants:
//! hosts in use (hosts running at least one task); the lower bound of the pods running
//! ([`crate::pack::BoundTable`] over running sums); utilisation in the bottleneck
//! dimension (what the running pods use over the capacity of the hosts in use, 0 while
//! none is); fragmentation in the bottleneck dimension: the free capacity on hosts in
//! use as a share of all free capacity (0 when free capacity sits only on empty hosts,
//! which the packing wants; 1 when every empty host is gone); pending pods. Times are
//! milliseconds.

mod arrivals;
mod run;
mod series;

use crate::allocator::AllocError;
use crate::pack::{Dimension, Hosts};
use crate::rebalance::RebalanceError;
use crate::resources::GpuGrant;
use crate::score::Policy;

pub use run::replay;
pub use series::Sample;

/// The default [`ReplayConfig::duration_s`] of a Poisson replay: one day.
pub const DEFAULT_POISSON_DURATION_S: u64 = 86_400;
/// The default [`ReplayConfig::rebalance_every_s`].
pub const DEFAULT_REBALANCE_EVERY_S: u64 = 60;
/// The default [`ReplayConfig::move_budget`] (the ReBalancer's own default).
pub const DEFAULT_MOVE_BUDGET: usize = 100;
/// The default [`ReplayConfig::policy`]: best fit, the allocator's own default and the
/// best of the greedy policies measured under churn (see the crate README).
pub const DEFAULT_POLICY: Policy = Policy::BestFit;
/// How many points [`Replay::series`] has at most.
pub const SERIES_POINTS: u64 = 720;

/// Where arrivals come from.
#[derive(Debug, Clone, Copy, PartialEq)]
#[non_exhaustive]
pub enum Arrivals {
    /// The pods' own `creation_time` and `deletion_time`.
    Trace,
    /// Pods drawn from the trace's mix, arriving as a Poisson process that holds the
    /// demand at `load` times the fleet's capacity (see the [module docs](self#poisson-arrivals)).
    Poisson {
        /// Steady-state demand as a fraction of the fleet's capacity in its bottleneck
        /// dimension (finite, above 0).
        load: f64,
        /// Seed of every random draw.
        seed: u64,
    },
}

/// What to replay and how.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct ReplayConfig {
    /// The fleet: listed nodes, or one shape for [`ReplayConfig::fleet_size`] hosts.
    pub hosts: Hosts,
    /// Number of identical hosts (ignored for listed nodes).
    pub fleet_size: usize,
    /// The placement policy of every request.
    pub policy: Policy,
    /// Where arrivals come from.
    pub arrivals: Arrivals,
    /// The replay covers `[0, duration_s]`; `None`: [`DEFAULT_POISSON_DURATION_S`] for
    /// Poisson arrivals, up to the last creation or deletion for trace arrivals.
    pub duration_s: Option<u64>,
    /// A rebalance round at every multiple of this many seconds (above 0).
    pub rebalance_every_s: u64,
    /// Moves per rebalance round, at most (0: the main run never moves a task).
    pub move_budget: usize,
}

impl ReplayConfig {
    /// A replay of `arrivals` onto `hosts` with the defaults: one identical host (set
    /// [`ReplayConfig::with_fleet_size`]), [`DEFAULT_POLICY`], the default duration,
    /// [`DEFAULT_REBALANCE_EVERY_S`], [`DEFAULT_MOVE_BUDGET`].
    pub fn new(hosts: Hosts, arrivals: Arrivals) -> ReplayConfig {
        ReplayConfig {
            hosts,
            fleet_size: 1,
            policy: DEFAULT_POLICY,
            arrivals,
            duration_s: None,
            rebalance_every_s: DEFAULT_REBALANCE_EVERY_S,
            move_budget: DEFAULT_MOVE_BUDGET,
        }
    }
    /// Sets the number of identical hosts.
    pub fn with_fleet_size(mut self, n: usize) -> Self {
        self.fleet_size = n;
        self
    }
    /// Sets the placement policy.
    pub fn with_policy(mut self, policy: Policy) -> Self {
        self.policy = policy;
        self
    }
    /// Sets the duration.
    pub fn with_duration_s(mut self, seconds: u64) -> Self {
        self.duration_s = Some(seconds);
        self
    }
    /// Sets the rebalance interval.
    pub fn with_rebalance_every_s(mut self, seconds: u64) -> Self {
        self.rebalance_every_s = seconds;
        self
    }
    /// Sets the moves per round.
    pub fn with_move_budget(mut self, moves: usize) -> Self {
        self.move_budget = moves;
        self
    }
}

/// What happened to a pod at an instant.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum EventKind {
    /// Placed on a host.
    Place,
    /// Moved by the ReBalancer; the host is the destination.
    Move,
    /// Left the host it ran on.
    Free,
    /// Found no host when it arrived (it is pending, or never fits).
    Unplaced,
}

impl EventKind {
    /// The name in an events file: `place`, `move`, `free`, `unplaced`.
    pub fn name(self) -> &'static str {
        match self {
            EventKind::Place => "place",
            EventKind::Move => "move",
            EventKind::Free => "free",
            EventKind::Unplaced => "unplaced",
        }
    }
}

/// One event of the main (rebalanced) run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Event {
    /// When, in milliseconds from the start.
    pub time_ms: u64,
    /// What.
    pub kind: EventKind,
    /// The pod: its trace name, or `NAME#K` for Poisson arrivals.
    pub pod: String,
    /// The host: an index into the listed nodes, or the n-th identical host; the
    /// destination of a move, the host left by a free; `None` for unplaced.
    pub host: Option<usize>,
    /// The GPU devices held on that host (empty for none and for unplaced).
    pub gpus: GpuGrant,
}

/// The figures of one run.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub struct RunFigures {
    /// Hosts running at least one task, averaged over time.
    pub hosts_in_use_avg: f64,
    /// The lower bound of this run's running pods, averaged over time.
    pub lower_bound_avg: f64,
    /// `hosts_in_use_avg / lower_bound_avg` (1 when the bound is 0).
    pub ratio: f64,
    /// Utilisation of the hosts in use in the bottleneck dimension, averaged over time.
    pub utilisation_avg: f64,
    /// Fragmentation in the bottleneck dimension (see the [module docs](self#figures)),
    /// averaged over time.
    pub fragmentation_avg: f64,
    /// Pending pods integrated over time, in pod-seconds.
    pub pending_task_seconds: f64,
    /// Pods placed at least once.
    pub placed: usize,
    /// Pods that arrived and were never placed.
    pub unplaced: usize,
    /// Of those, pods that fit no empty host of the fleet.
    pub unplaceable: usize,
    /// Moves made.
    pub moves: usize,
    /// Rebalance rounds run (skipped rounds not counted).
    pub rounds: usize,
    /// The most moves one round made.
    pub max_moves_in_a_round: usize,
}

/// What was replayed.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub struct Workload {
    /// Hosts in the fleet.
    pub hosts: usize,
    /// The bottleneck dimension (Poisson: the one that sets the rate; trace: the one
    /// with the largest total demand of all pods over the fleet's capacity).
    pub bottleneck: Dimension,
    /// Arrivals per second (Poisson), `None` for trace arrivals.
    pub rate_per_s: Option<f64>,
    /// Pods present at 0 (Poisson); 0 for trace arrivals.
    pub initial_pods: usize,
    /// Pods that arrived in `[0, duration]`, the initial ones included.
    pub arrivals: usize,
    /// Departures in `[0, duration]`, of placed and pending pods alike.
    pub departures: usize,
    /// The replay covers `[0, duration_s]`.
    pub duration_s: u64,
}

/// A replay's report and the main run's events.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub struct Replay {
    /// What was replayed.
    pub workload: Workload,
    /// The run with rebalancing.
    pub main: RunFigures,
    /// The same arrivals without rebalancing.
    pub baseline: RunFigures,
    /// Both runs over time, averaged over equal windows.
    pub series: Vec<Sample>,
    /// Every event of the main run, in an order that never overcommits a host.
    pub events: Vec<Event>,
}

impl Replay {
    /// Hosts rebalancing saved on average: baseline minus main hosts in use.
    pub fn saving(&self) -> f64 {
        self.baseline.hosts_in_use_avg - self.main.hosts_in_use_avg
    }
}

/// Why a replay could not run.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[non_exhaustive]
pub enum ReplayError {
    /// A setting that cannot work, named by its [`ReplayConfig`] field.
    #[error("{field}: {problem} (got {value})")]
    Config {
        /// The field (`load`, `duration_s`, `rebalance_every_s`, `fleet_size`, `hosts`).
        field: &'static str,
        /// Its value.
        value: String,
        /// What is wrong.
        problem: &'static str,
    },
    /// Trace arrivals need a pod's `creation_time`.
    #[error("pod {pod:?} (line {line}): creation_time: trace arrivals need it (got none)")]
    NoCreationTime {
        /// The pod.
        pod: String,
        /// Its line in the pods file, assuming one line per row (the header is line 1).
        line: usize,
    },
    /// A pod's `deletion_time` before its `creation_time`.
    #[error(
        "pod {pod:?} (line {line}): deletion_time: before creation_time {creation} (got {deletion})"
    )]
    DeletedBeforeCreated {
        /// The pod.
        pod: String,
        /// Its line in the pods file, assuming one line per row (the header is line 1).
        line: usize,
        /// Its `creation_time`.
        creation: u64,
        /// Its `deletion_time`.
        deletion: u64,
    },
    /// Poisson arrivals draw from the pods, so there must be some.
    #[error("pods: Poisson arrivals draw shapes from the pods, and there are none")]
    NoPods,
    /// Poisson arrivals draw lifetimes from pods with both times.
    #[error(
        "pods: Poisson arrivals draw lifetimes from pods with creation_time and deletion_time, and none has both"
    )]
    NoDurations,
    /// No dimension the pods ask for has capacity, so there is no rate for a load.
    #[error("pods: the pods ask for nothing the fleet has (no bottleneck dimension)")]
    NoBottleneck,
    /// The allocator refused a call (an internal error there is a bug).
    #[error(transparent)]
    Alloc(#[from] AllocError),
    /// A rebalance round failed.
    #[error(transparent)]
    Rebalance(#[from] RebalanceError),
    /// The replay's own bookkeeping contradicted itself: a bug, reported instead of
    /// quietly wrong figures.
    #[error("internal error in the replay: {0}")]
    Internal(String),
}
