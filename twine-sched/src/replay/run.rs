//! The event loop: two allocators, one with a ReBalancer, fed the same arrivals and
//! departures instant by instant.

use std::cmp::Reverse;
use std::collections::{BTreeSet, BinaryHeap, HashMap};

use super::arrivals::{LOAD_DIMS, Schedule, capacity_dims, load_dims, schedule};
use super::series::{Sample, Track, ms};
use super::{
    Event, EventKind, Replay, ReplayConfig, ReplayError, RunFigures, SERIES_POINTS, Workload,
};
use crate::allocator::{Allocator, AllocatorConfig};
use crate::entitlement::{EntitlementId, Quota};
use crate::fleet::{HostId, HostSpec};
use crate::pack::{BoundTable, DemandSums, Hosts};
use crate::rebalance::{Goal, ReBalancer, RebalanceConfig};
use crate::request::{JobId, Preferences, Request, Requirements, TaskId};
use crate::resources::{GpuDemand, GpuDevices, GpuGrant, Resources};
use crate::score::Policy;
use crate::trace::TracePod;

/// One host of the fleet.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct FleetHost {
    capacity: Resources,
    gpus: u8,
    model: Option<String>,
}

/// The fleet as the replay sees it.
#[derive(Debug)]
struct Fleet {
    hosts: Vec<FleetHost>,
    /// Whether any host has a GPU model (else `gpu_spec` is not a requirement).
    has_models: bool,
    /// Total capacity in the load dimensions.
    total: [u128; 3],
}

impl Fleet {
    fn of(config: &ReplayConfig) -> Result<Fleet, ReplayError> {
        let hosts: Vec<FleetHost> = match &config.hosts {
            Hosts::Identical {
                capacity,
                gpus,
                gpu_model,
            } => {
                if config.fleet_size == 0 {
                    return Err(ReplayError::Config {
                        field: "fleet_size",
                        value: "0".into(),
                        problem: "a fleet needs at least one host",
                    });
                }
                let host = FleetHost {
                    capacity: *capacity,
                    gpus: *gpus,
                    model: gpu_model.clone(),
                };
                vec![host; config.fleet_size]
            }
            Hosts::Listed(nodes) => nodes
                .iter()
                .map(|n| FleetHost {
                    capacity: n.capacity,
                    gpus: n.gpus,
                    model: n.gpu_model.clone(),
                })
                .collect(),
        };
        if hosts.is_empty() {
            return Err(ReplayError::Config {
                field: "hosts",
                value: "no nodes".into(),
                problem: "a fleet needs at least one host",
            });
        }
        let mut total = [0u128; 3];
        for h in &hosts {
            for (t, c) in total.iter_mut().zip(capacity_dims(&h.capacity, h.gpus)) {
                *t += u128::from(c);
            }
        }
        Ok(Fleet {
            has_models: hosts.iter().any(|h| h.model.is_some()),
            hosts,
            total,
        })
    }

    /// The GPU models a pod may run on, if it is restricted at all: its `gpu_spec`, for
    /// a pod with GPUs, when the fleet has GPU models.
    fn models<'p>(&self, pod: &'p TracePod) -> Option<&'p [String]> {
        (self.has_models && pod.demand.gpu != GpuDemand::None && !pod.gpu_spec.is_empty())
            .then_some(pod.gpu_spec.as_slice())
    }

    /// Whether `pod` may run on `host` as far as GPU models go.
    fn model_ok(&self, pod: &TracePod, host: &FleetHost) -> bool {
        self.models(pod).is_none_or(|allowed| {
            host.model
                .as_ref()
                .is_some_and(|m| allowed.iter().any(|a| a == m))
        })
    }

    /// Per pod, whether some empty host of the fleet takes it.
    fn fits_empty(&self, pods: &[TracePod]) -> Vec<bool> {
        let mut shapes: Vec<&FleetHost> = self.hosts.iter().collect();
        shapes.sort_by(|a, b| {
            (a.capacity.dims(), a.gpus, &a.model).cmp(&(b.capacity.dims(), b.gpus, &b.model))
        });
        shapes.dedup();
        pods.iter()
            .map(|p| {
                shapes.iter().any(|h| {
                    p.demand.resources.fits_in(&h.capacity)
                        && GpuDevices::new(h.gpus).fits(p.demand.gpu)
                        && self.model_ok(p, h)
                })
            })
            .collect()
    }
}

/// What the two runs share.
struct Shared<'a> {
    pods: &'a [TracePod],
    schedule: &'a Schedule,
    fleet: &'a Fleet,
    fits_empty: &'a [bool],
    table: &'a BoundTable,
    policy: Policy,
}

impl Shared<'_> {
    fn pod(&self, k: usize) -> Result<&TracePod, ReplayError> {
        self.schedule
            .arrivals
            .get(k)
            .and_then(|a| self.pods.get(a.pod))
            .ok_or_else(|| ReplayError::Internal(format!("arrival #{k} names no pod")))
    }

    fn bottleneck_of(&self, pod: &TracePod) -> u128 {
        u128::from(load_dims(pod)[self.schedule.bottleneck])
    }

    fn bottleneck_cap(&self, host: usize) -> u128 {
        self.fleet.hosts.get(host).map_or(0, |h| {
            u128::from(capacity_dims(&h.capacity, h.gpus)[self.schedule.bottleneck])
        })
    }
}

fn task(k: usize) -> TaskId {
    TaskId(k as u64)
}

fn arrival_of(task: TaskId) -> Result<usize, ReplayError> {
    usize::try_from(task.0)
        .map_err(|_| ReplayError::Internal(format!("task {} is no arrival", task.0)))
}

/// The time-weighted quantities of one run.
struct Tracks {
    hosts: Track,
    bound: Track,
    utilisation: Track,
    fragmentation: Track,
    pending: Track,
}

/// One allocator and what the replay keeps about it.
struct Sim {
    alloc: Allocator,
    ent: EntitlementId,
    rebalancer: Option<ReBalancer>,
    /// Arrival -> (host, GPU devices) of the pods running.
    running: HashMap<usize, (usize, GpuGrant)>,
    /// Arrivals waiting, first come first.
    pending: BTreeSet<usize>,
    /// Tasks per host.
    tasks_on: Vec<u32>,
    in_use: usize,
    /// Bottleneck capacity of the hosts in use, and used by the pods running.
    cap_in_use: u128,
    used: u128,
    sums: DemandSums,
    bound: usize,
    /// Something was placed, freed or moved since the last round that moved nothing.
    changed: bool,
    /// Hosts that gained room this instant.
    gained: Vec<usize>,
    events: Option<Vec<Event>>,
    figures: RunFigures,
    tracks: Tracks,
    /// The instant integrated up to.
    at_ms: u64,
}

impl Sim {
    fn new(
        shared: &Shared<'_>,
        seed: u64,
        rebalancer: Option<ReBalancer>,
        window_ms: u64,
    ) -> Result<Sim, ReplayError> {
        let mut alloc = Allocator::new(AllocatorConfig::default().with_seed(seed));
        let mut quota = Resources::default();
        for h in &shared.fleet.hosts {
            let mut spec = HostSpec::new(h.capacity);
            spec.gpus = h.gpus;
            spec.gpu_model.clone_from(&h.model);
            alloc.add_host(&spec)?;
            // The quota is the fleet's total, so it never binds; saturating only makes it
            // larger still.
            quota.cpu_milli = quota.cpu_milli.saturating_add(h.capacity.cpu_milli);
            quota.memory_mib = quota.memory_mib.saturating_add(h.capacity.memory_mib);
            for (q, c) in quota.extra.iter_mut().zip(h.capacity.extra) {
                *q = q.saturating_add(c);
            }
        }
        let ent = alloc.add_entitlement("replay", Quota::Units(quota))?;
        let d = shared.schedule.duration_ms;
        let track = || Track::new(d, window_ms);
        Ok(Sim {
            alloc,
            ent,
            events: rebalancer.as_ref().map(|_| Vec::new()),
            rebalancer,
            running: HashMap::new(),
            pending: BTreeSet::new(),
            tasks_on: vec![0; shared.fleet.hosts.len()],
            in_use: 0,
            cap_in_use: 0,
            used: 0,
            sums: DemandSums::default(),
            bound: 0,
            changed: false,
            gained: Vec::new(),
            figures: RunFigures {
                hosts_in_use_avg: 0.0,
                lower_bound_avg: 0.0,
                ratio: 1.0,
                utilisation_avg: 0.0,
                fragmentation_avg: 0.0,
                pending_task_seconds: 0.0,
                placed: 0,
                unplaced: 0,
                unplaceable: 0,
                moves: 0,
                rounds: 0,
                max_moves_in_a_round: 0,
            },
            tracks: Tracks {
                hosts: track(),
                bound: track(),
                utilisation: track(),
                fragmentation: track(),
                pending: track(),
            },
            at_ms: 0,
        })
    }

    fn record(
        &mut self,
        shared: &Shared<'_>,
        time_ms: u64,
        kind: EventKind,
        k: usize,
        host: Option<(usize, &GpuGrant)>,
    ) {
        if let Some(events) = &mut self.events {
            events.push(Event {
                time_ms,
                kind,
                pod: shared
                    .schedule
                    .arrivals
                    .get(k)
                    .map_or_else(String::new, |a| a.name.clone()),
                host: host.map(|(h, _)| h),
                gpus: host.map(|(_, g)| g.clone()).unwrap_or_default(),
            });
        }
    }

    /// Integrates the current state up to `to_ms`.
    fn advance(&mut self, shared: &Shared<'_>, to_ms: u64) {
        let from = self.at_ms;
        let free_total =
            u128_f64(shared.fleet.total[shared.schedule.bottleneck]) - u128_f64(self.used);
        let free_in_use = u128_f64(self.cap_in_use) - u128_f64(self.used);
        let t = &mut self.tracks;
        t.hosts.add(from, to_ms, usize_f64(self.in_use));
        t.bound.add(from, to_ms, usize_f64(self.bound));
        if self.cap_in_use > 0 {
            t.utilisation
                .add(from, to_ms, u128_f64(self.used) / u128_f64(self.cap_in_use));
        }
        if free_total > 0.0 {
            t.fragmentation.add(from, to_ms, free_in_use / free_total);
        }
        t.pending.add(from, to_ms, usize_f64(self.pending.len()));
        self.at_ms = self.at_ms.max(to_ms);
    }

    fn host_gains(&mut self, shared: &Shared<'_>, host: usize) -> Result<(), ReplayError> {
        let n = self
            .tasks_on
            .get_mut(host)
            .ok_or_else(|| ReplayError::Internal(format!("no host #{host}")))?;
        *n = n
            .checked_sub(1)
            .ok_or_else(|| ReplayError::Internal(format!("host #{host} had no task to lose")))?;
        if *n == 0 {
            self.in_use -= 1;
            self.cap_in_use -= shared.bottleneck_cap(host);
        }
        self.gained.push(host);
        Ok(())
    }

    fn host_takes(&mut self, shared: &Shared<'_>, host: usize) -> Result<(), ReplayError> {
        let n = self
            .tasks_on
            .get_mut(host)
            .ok_or_else(|| ReplayError::Internal(format!("no host #{host}")))?;
        *n += 1;
        if *n == 1 {
            self.in_use += 1;
            self.cap_in_use += shared.bottleneck_cap(host);
        }
        Ok(())
    }

    /// Arrival `k`'s lifetime ends: it leaves its host, or the queue.
    fn depart(&mut self, shared: &Shared<'_>, t: u64, k: usize) -> Result<(), ReplayError> {
        let Some((host, grant)) = self.running.remove(&k) else {
            self.pending.remove(&k);
            return Ok(());
        };
        let (on, _) = self.alloc.task(task(k))?;
        if on.0 as usize != host {
            return Err(ReplayError::Internal(format!(
                "arrival #{k} runs on host #{} by the allocator, #{host} by the replay",
                on.0
            )));
        }
        let out = self
            .alloc
            .apply(&Request::new(self.ent, JobId(task(k).0)).free(task(k)))?;
        if out.freed != [task(k)] {
            return Err(ReplayError::Internal(format!("arrival #{k} was not freed")));
        }
        let pod = shared.pod(k)?;
        self.used -= shared.bottleneck_of(pod);
        self.sums
            .remove(&pod.demand)
            .map_err(|e| ReplayError::Internal(format!("arrival #{k}: {e}")))?;
        self.host_gains(shared, host)?;
        self.record(shared, t, EventKind::Free, k, Some((host, &grant)));
        self.changed = true;
        Ok(())
    }

    /// A rebalance round, if this run has a ReBalancer and something changed.
    fn round(&mut self, shared: &Shared<'_>, t: u64) -> Result<(), ReplayError> {
        let Some(rebalancer) = &mut self.rebalancer else {
            return Ok(());
        };
        if !self.changed {
            return Ok(());
        }
        // A solver that fails is a bug, reported as such: the replay stops.
        let plan = rebalancer.propose(&self.alloc, &Goal::Compact, t)?;
        let round = rebalancer.execute(&mut self.alloc, &plan, t, |_| true)?;
        self.figures.rounds += 1;
        self.figures.moves += round.moved.len();
        self.figures.max_moves_in_a_round =
            self.figures.max_moves_in_a_round.max(round.moved.len());
        self.changed = !round.moved.is_empty();
        for m in &round.moved {
            let k = arrival_of(m.task)?;
            let (from, to) = (m.from.0 as usize, m.to.0 as usize);
            match self.running.get_mut(&k) {
                Some(entry) if entry.0 == from => *entry = (to, m.gpus.clone()),
                _ => {
                    return Err(ReplayError::Internal(format!(
                        "arrival #{k} moved from host #{from}, where the replay does not have it"
                    )));
                }
            }
            self.host_gains(shared, from)?;
            self.host_takes(shared, to)?;
            self.record(shared, t, EventKind::Move, k, Some((to, &m.gpus)));
        }
        Ok(())
    }

    /// Tries to place arrival `k`; whether it was placed.
    fn place(&mut self, shared: &Shared<'_>, t: u64, k: usize) -> Result<bool, ReplayError> {
        let pod = shared.pod(k)?;
        let mut req = Request::new(self.ent, JobId(task(k).0))
            .prefer(Preferences::default().policy(shared.policy))
            .allocate(task(k), pod.demand);
        if let Some(models) = shared.fleet.models(pod) {
            req =
                req.require(Requirements::default().gpu_models(models.iter().map(String::as_str)));
        }
        let out = self.alloc.apply(&req)?;
        let Some(placed) = out.placed.first() else {
            return Ok(false);
        };
        if placed.task != task(k) {
            return Err(ReplayError::Internal(format!(
                "arrival #{k} placed as task {}",
                placed.task.0
            )));
        }
        let host = placed.host.0 as usize;
        self.used += shared.bottleneck_of(pod);
        self.sums.add(&pod.demand);
        self.host_takes(shared, host)?;
        self.record(shared, t, EventKind::Place, k, Some((host, &placed.gpus)));
        self.running.insert(k, (host, placed.gpus.clone()));
        self.figures.placed += 1;
        self.changed = true;
        Ok(true)
    }

    /// Whether arrival `k` fits on host `h` now (the allocator's own checks, quota and
    /// job limits aside: neither binds in a replay).
    fn fits_now(&self, shared: &Shared<'_>, pod: &TracePod, h: usize) -> Result<bool, ReplayError> {
        let view = self.alloc.host(HostId(
            u32::try_from(h).map_err(|_| ReplayError::Internal(format!("host #{h}")))?,
        ))?;
        let host = shared
            .fleet
            .hosts
            .get(h)
            .ok_or_else(|| ReplayError::Internal(format!("no host #{h}")))?;
        Ok(pod.demand.resources.fits_in(&view.free())
            && view.gpus().fits(pod.demand.gpu)
            && shared.fleet.model_ok(pod, host))
    }

    /// Retries the pending pods that fit a host that gained room, first come first.
    fn retry(&mut self, shared: &Shared<'_>, t: u64) -> Result<(), ReplayError> {
        self.gained.sort_unstable();
        self.gained.dedup();
        let waiting: Vec<usize> = self.pending.iter().copied().collect();
        for k in waiting {
            let pod = shared.pod(k)?;
            let mut hopeful = false;
            for &h in &self.gained {
                if self.fits_now(shared, pod, h)? {
                    hopeful = true;
                    break;
                }
            }
            if hopeful && self.place(shared, t, k)? {
                self.pending.remove(&k);
            }
        }
        Ok(())
    }

    /// Arrival `k` comes.
    fn arrive(&mut self, shared: &Shared<'_>, t: u64, k: usize) -> Result<(), ReplayError> {
        let pod_index = shared
            .schedule
            .arrivals
            .get(k)
            .map(|a| a.pod)
            .ok_or_else(|| ReplayError::Internal(format!("no arrival #{k}")))?;
        if !shared.fits_empty.get(pod_index).copied().unwrap_or(false) {
            self.figures.unplaceable += 1;
            self.record(shared, t, EventKind::Unplaced, k, None);
            return Ok(());
        }
        if !self.place(shared, t, k)? {
            self.pending.insert(k);
            self.record(shared, t, EventKind::Unplaced, k, None);
        }
        Ok(())
    }

    /// One instant: departures, a round if due, retries, arrivals; then the state's
    /// lower bound.
    fn instant(
        &mut self,
        shared: &Shared<'_>,
        t: u64,
        departing: &[usize],
        round_due: bool,
        arriving: &[usize],
    ) -> Result<(), ReplayError> {
        self.advance(shared, t);
        self.gained.clear();
        for &k in departing {
            self.depart(shared, t, k)?;
        }
        if round_due {
            self.round(shared, t)?;
        }
        if !self.gained.is_empty() && !self.pending.is_empty() {
            self.retry(shared, t)?;
        }
        for &k in arriving {
            self.arrive(shared, t, k)?;
        }
        self.bound = shared.table.lower_bound(&self.sums).ok_or_else(|| {
            ReplayError::Internal("the running pods exceed what the fleet can hold".into())
        })?;
        Ok(())
    }

    /// The figures over `[0, duration]`, once integrated up to it.
    #[allow(clippy::type_complexity)] // three parts, taken apart at once by the caller
    fn finish(
        mut self,
        arrivals: usize,
        duration_ms: u64,
    ) -> Result<(RunFigures, Tracks, Option<Vec<Event>>), ReplayError> {
        let d = ms(duration_ms).max(1.0);
        let f = &mut self.figures;
        let t = &self.tracks;
        f.hosts_in_use_avg = t.hosts.total() / d;
        f.lower_bound_avg = t.bound.total() / d;
        f.ratio = if f.lower_bound_avg > 0.0 {
            f.hosts_in_use_avg / f.lower_bound_avg
        } else {
            1.0
        };
        f.utilisation_avg = t.utilisation.total() / d;
        f.fragmentation_avg = t.fragmentation.total() / d;
        f.pending_task_seconds = t.pending.total() / 1000.0;
        f.unplaced = arrivals.checked_sub(f.placed).ok_or_else(|| {
            ReplayError::Internal(format!("{} pods placed of {arrivals} arrivals", f.placed))
        })?;
        Ok((self.figures, self.tracks, self.events))
    }
}

#[allow(clippy::cast_precision_loss)] // counts and amounts as f64 for averages; ample
fn u128_f64(x: u128) -> f64 {
    x as f64
}

#[allow(clippy::cast_precision_loss)] // counts as f64 for averages; ample
fn usize_f64(x: usize) -> f64 {
    x as f64
}

fn check(config: &ReplayConfig) -> Result<(), ReplayError> {
    if config.rebalance_every_s == 0 {
        return Err(ReplayError::Config {
            field: "rebalance_every_s",
            value: "0".into(),
            problem: "must be at least 1 second",
        });
    }
    if config.duration_s == Some(0) {
        return Err(ReplayError::Config {
            field: "duration_s",
            value: "0".into(),
            problem: "must be at least 1 second",
        });
    }
    Ok(())
}

/// Replays `pods` as `config` says: both runs, their figures, the main run's events.
/// Pure and deterministic: the same input gives the same report, event for event.
pub fn replay(pods: &[TracePod], config: &ReplayConfig) -> Result<Replay, ReplayError> {
    check(config)?;
    let fleet = Fleet::of(config)?;
    let schedule = schedule(pods, config, fleet.total)?;
    let fits_empty = fleet.fits_empty(pods);
    let table = BoundTable::new(&config.hosts);
    let shared = Shared {
        pods,
        schedule: &schedule,
        fleet: &fleet,
        fits_empty: &fits_empty,
        table: &table,
        policy: config.policy,
    };
    let duration_ms = schedule.duration_ms;
    let window_ms = duration_ms.div_ceil(SERIES_POINTS).max(1000);
    let seed = match config.arrivals {
        super::Arrivals::Poisson { seed, .. } => seed,
        super::Arrivals::Trace => 0,
    };
    let rebalancer =
        ReBalancer::greedy(RebalanceConfig::default().with_move_budget(config.move_budget))?;
    let mut main = Sim::new(&shared, seed, Some(rebalancer), window_ms)?;
    let mut base = Sim::new(&shared, seed, None, window_ms)?;
    let every_ms = config.rebalance_every_s.saturating_mul(1000);
    let mut leaving: BinaryHeap<Reverse<(u64, usize)>> = BinaryHeap::new();
    let mut next = 0;
    let mut last: Option<u64> = None;
    let mut departures = 0;
    let (mut departing, mut arriving) = (Vec::new(), Vec::new());
    loop {
        let arrival = schedule.arrivals.get(next).map(|a| a.arrive_ms);
        let departure = leaving.peek().map(|Reverse((t, _))| *t);
        let tick = main.changed.then(|| match last {
            Some(t) => (t / every_ms).saturating_add(1).saturating_mul(every_ms),
            None => 0,
        });
        let Some(t) = [arrival, departure, tick].into_iter().flatten().min() else {
            break;
        };
        if t > duration_ms {
            break;
        }
        departing.clear();
        while let Some(&Reverse((when, k))) = leaving.peek() {
            if when != t {
                break;
            }
            leaving.pop();
            departing.push(k);
        }
        departures += departing.len();
        arriving.clear();
        while let Some(a) = schedule.arrivals.get(next) {
            if a.arrive_ms != t {
                break;
            }
            arriving.push(next);
            if let Some(d) = a.depart_ms.filter(|&d| d <= duration_ms) {
                leaving.push(Reverse((d, next)));
            }
            next += 1;
        }
        let round_due = t % every_ms == 0;
        main.instant(&shared, t, &departing, round_due, &arriving)?;
        base.instant(&shared, t, &departing, false, &arriving)?;
        last = Some(t);
    }
    main.advance(&shared, duration_ms);
    base.advance(&shared, duration_ms);
    let arrivals = next;
    let (main_figures, main_tracks, events) = main.finish(arrivals, duration_ms)?;
    let (base_figures, base_tracks, _) = base.finish(arrivals, duration_ms)?;
    let series = (0..main_tracks.hosts.windows())
        .map(|w| {
            let (start, end) = main_tracks.hosts.window(w, duration_ms);
            let avg = |t: &Track| t.window_avg(w, duration_ms);
            Sample {
                start_s: ms(start) / 1000.0,
                end_s: ms(end) / 1000.0,
                hosts_in_use: avg(&main_tracks.hosts),
                hosts_in_use_baseline: avg(&base_tracks.hosts),
                lower_bound: avg(&main_tracks.bound),
                utilisation: avg(&main_tracks.utilisation),
                utilisation_baseline: avg(&base_tracks.utilisation),
                pending: avg(&main_tracks.pending),
            }
        })
        .collect();
    Ok(Replay {
        workload: Workload {
            hosts: fleet.hosts.len(),
            bottleneck: LOAD_DIMS[schedule.bottleneck],
            rate_per_s: schedule.rate_per_s,
            initial_pods: schedule.initial,
            arrivals,
            departures,
            duration_s: duration_ms / 1000,
        },
        main: main_figures,
        baseline: base_figures,
        series,
        events: events.unwrap_or_default(),
    })
}
