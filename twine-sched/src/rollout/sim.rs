//! A simulated rollout over the synthetic Twine-like fleet: jobs placed on it, each with
//! a TaskControl controller that consents to every move or (a chosen fraction) vetoes
//! everything until its deadline, and seeded durations for every step. The simulator
//! keeps its own event log and counts budget and fault-domain violations from it, apart
//! from the runner's books.
//!
//! The fleet (as the allocator benches build it): 4 of 5 hosts are Twine's small machine
//! (18 cores, 64 GiB, `small`; one in 10 of them on host profile `hugepages`, the rest
//! `default`), 1 of 5 a big stacking host (96 cores, 384 GiB, 8 GPUs, `big`); 40 hosts per
//! rack, 10 racks per power domain, 10 power domains per datacenter, one region.
//!
//! Jobs: one per 10 hosts, each of 3 to 30 tasks (2 cores, 4 GiB), at most one per host,
//! spread over racks; max unavailable `max(1, tasks / 10)`.
//!
//! Durations (uniform, seeded): update 2–10 min, reboot 3–8 min, verify 1–2 min, a
//! stopped task restarting elsewhere 1–5 min; a gate answers 1 hour after its wave ends
//! (the bake). At time 0, 0.2% of hosts are down (half come back after 1–20 days, half
//! never) and 0.3% cordoned by someone else (back after 12 hours to 5 days); 0.05% of
//! updated hosts fail their health check.

use std::cmp::Reverse;
use std::collections::{BTreeMap, BTreeSet, BinaryHeap};

use rand::{RngExt as _, SeedableRng as _};
use rand_chacha::ChaCha8Rng;

use crate::allocator::Allocator;
use crate::allocator::AllocatorConfig;
use crate::entitlement::{EntitlementId, Quota};
use crate::fleet::{FaultLevel, HostId, HostSpec};
use crate::request::{JobId, Preferences, Request, Requirements, TaskId};
use crate::resources::{Demand, GpuDemand, Resources};
use crate::taskcontrol::TaskControlResponse;

use super::{
    Action, DomainLimits, HostStep, PlanConfig, RolloutConfig, RolloutError, Runner, Trailing,
    UpdateKind, WaveKind, plan,
};

const MIN: u64 = 60_000;
const HOUR: u64 = 60 * MIN;
const DAY: u64 = 24 * HOUR;

/// Builds the synthetic fleet of `hosts` hosts (see the [module docs](self)); returns
/// the allocator and an entitlement whose quota covers it.
pub fn fleet(hosts: usize) -> Result<(Allocator, EntitlementId), RolloutError> {
    let mut a = Allocator::new(AllocatorConfig::default());
    let n = u32::try_from(hosts).map_err(|_| RolloutError::Config {
        field: "hosts",
        value: hosts.to_string(),
        problem: "more hosts than host ids",
    })?;
    let ent = a.add_entitlement("sim", Quota::machines([("small", n), ("big", n)]))?;
    for i in 0..hosts {
        let rack = i / 40;
        let (power, dc) = (rack / 10, rack / 100);
        let spec = if i % 5 == 4 {
            HostSpec::new(Resources::new(96_000, 393_216))
                .machine_type("big")
                .gpus(8, "a100")
                .profile("default")
        } else {
            let profile = if i % 10 == 3 { "hugepages" } else { "default" };
            HostSpec::new(Resources::new(18_000, 65_536))
                .machine_type("small")
                .profile(profile)
        };
        let path = [
            "region1".to_owned(),
            format!("dc{dc}"),
            format!("power{power}"),
            format!("rack{rack}"),
        ];
        a.add_host(&spec.domain([&path[0], &path[1], &path[2], &path[3]]))?;
    }
    Ok((a, ent))
}

/// What to simulate.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub struct SimConfig {
    /// Hosts in the fleet.
    pub hosts: usize,
    /// Live or reboot.
    pub update: UpdateKind,
    /// Cumulative wave percentages.
    pub waves_percent: Vec<u32>,
    /// Hosts in flight per fault domain.
    pub limits: DomainLimits,
    /// Share of jobs that veto every move (until their deadline), in [0, 1].
    pub veto_fraction: f64,
    /// The gate after this wave (0 = canaries) fails.
    pub health_failure_at: Option<usize>,
    /// Seed of every draw.
    pub seed: u64,
    /// Notice length.
    pub notice_ms: u64,
    /// The simulation stops here if it has not finished.
    pub horizon_ms: u64,
}

impl SimConfig {
    /// 10,000 hosts, waves 1,5,25,100, default limits, no vetoes, no failing gate, seed 0,
    /// 7-day notices, a 60-day horizon.
    pub fn new(update: UpdateKind) -> SimConfig {
        SimConfig {
            hosts: 10_000,
            update,
            waves_percent: vec![1, 5, 25, 100],
            limits: DomainLimits::default(),
            veto_fraction: 0.0,
            health_failure_at: None,
            seed: 0,
            notice_ms: 7 * DAY,
            horizon_ms: 60 * DAY,
        }
    }
}

/// One entry of the simulator's own event log.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum LogEvent {
    /// A host entered (`true`) or left flight.
    Flight {
        /// When.
        t_ms: u64,
        /// The host.
        host: HostId,
        /// Entered or left.
        entered: bool,
    },
    /// A task went down (`true`) or came back up. A move logs both at one instant.
    Task {
        /// When.
        t_ms: u64,
        /// Its job.
        job: JobId,
        /// The task.
        task: TaskId,
        /// Down or up.
        down: bool,
    },
}

/// A simulated job.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SimJob {
    /// Its id.
    pub job: JobId,
    /// Its tasks.
    pub tasks: Vec<TaskId>,
    /// Its max-unavailable budget.
    pub max_unavailable: u32,
    /// Whether it vetoes every move.
    pub vetoes: bool,
}

/// What happened to one wave.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SimWave {
    /// What it is.
    pub kind: WaveKind,
    /// Its hosts.
    pub size: usize,
    /// When it started, if it did.
    pub started_ms: Option<u64>,
    /// When it ended (its gate was asked), if it did.
    pub ended_ms: Option<u64>,
}

/// The outcome of [`simulate`].
#[derive(Debug, Clone)]
pub struct SimOutcome {
    /// Hosts in the fleet.
    pub hosts: usize,
    /// `(time, hosts updated)` at each host updated.
    pub curve: Vec<(u64, usize)>,
    /// The waves.
    pub waves: Vec<SimWave>,
    /// Hosts not updated at the end, with why.
    pub trailing: Vec<Trailing>,
    /// The jobs.
    pub jobs: Vec<SimJob>,
    /// The event log.
    pub log: Vec<LogEvent>,
    /// The wave whose gate failed, if one did.
    pub halted_at: Option<usize>,
    /// Hosts proposed for rollback by a failed gate.
    pub rollback: Vec<HostId>,
    /// When a gate failed and the rollout halted, if it did.
    pub halted_ms: Option<u64>,
    /// When the simulation ended.
    pub end_ms: u64,
    /// Times a job had more tasks down than its budget, counted from the log.
    pub budget_violations: usize,
    /// Times a fault domain had more hosts in flight than its limit, counted from the log.
    pub fault_domain_violations: usize,
    /// The fault-domain limits it ran with.
    pub limits: DomainLimits,
    /// The fleet at the end.
    pub alloc: Allocator,
}

impl SimOutcome {
    /// Hosts updated at the end.
    pub fn updated(&self) -> usize {
        self.curve.last().map_or(0, |&(_, n)| n)
    }

    /// When at least `share` (0..=1) of the fleet was updated, if it was.
    pub fn time_to(&self, share: f64) -> Option<u64> {
        #[allow(
            clippy::cast_precision_loss,
            clippy::cast_possible_truncation,
            clippy::cast_sign_loss
        )]
        // hosts fit f64 exactly; the product is in [0, hosts]
        let need = ((self.hosts as f64) * share).ceil() as usize;
        self.curve
            .iter()
            .find(|&&(_, n)| n >= need.max(1))
            .map(|&(t, _)| t)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Ev {
    StepDone {
        host: HostId,
        step: HostStep,
        ok: bool,
    },
    Restore {
        task: TaskId,
        job: JobId,
    },
    Gate {
        wave: usize,
        pass: bool,
    },
    HostBack {
        host: HostId,
    },
}

impl PartialOrd for HostStep {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}
impl Ord for HostStep {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        let k = |s: &HostStep| match s {
            HostStep::Update => 0u8,
            HostStep::Reboot => 1,
            HostStep::Verify => 2,
        };
        k(self).cmp(&k(other))
    }
}

struct Sim {
    rng: ChaCha8Rng,
    queue: BinaryHeap<Reverse<(u64, u64, Ev)>>,
    seq: u64,
    ent: EntitlementId,
    vetoes: BTreeSet<JobId>,
    job_of: BTreeMap<TaskId, JobId>,
    log: Vec<LogEvent>,
    curve: Vec<(u64, usize)>,
    waves: Vec<SimWave>,
    halted_at: Option<usize>,
    halted_ms: Option<u64>,
    rollback: Vec<HostId>,
    health_failure_at: Option<usize>,
}

fn task_demand() -> Demand {
    Demand {
        resources: Resources::new(2_000, 4_096),
        gpu: GpuDemand::None,
    }
}

fn job_request(ent: EntitlementId, job: JobId) -> Request {
    Request::new(ent, job)
        .require(Requirements::default().machine_types(["small", "big"]))
        .prefer(
            Preferences::default()
                .spread(FaultLevel::Rack)
                .max_per_host(1),
        )
}

impl Sim {
    fn at(&mut self, t: u64, ev: Ev) {
        self.seq += 1;
        self.queue.push(Reverse((t, self.seq, ev)));
    }

    fn between(&mut self, lo: u64, hi: u64) -> u64 {
        self.rng.random_range(lo..=hi)
    }

    /// Carries out actions (and what they lead to) at `now`.
    fn handle(
        &mut self,
        runner: &mut Runner,
        alloc: &mut Allocator,
        mut todo: Vec<Action>,
        now: u64,
    ) -> Result<(), RolloutError> {
        todo.reverse();
        while let Some(action) = todo.pop() {
            let mut more = Vec::new();
            match action {
                Action::WaveStarted { wave } => {
                    if let Some(w) = self.waves.get_mut(wave) {
                        w.started_ms = Some(now);
                    }
                }
                Action::InFlight { host } => self.log.push(LogEvent::Flight {
                    t_ms: now,
                    host,
                    entered: true,
                }),
                Action::Landed { host } => {
                    self.log.push(LogEvent::Flight {
                        t_ms: now,
                        host,
                        entered: false,
                    });
                    let n = runner.updated().len();
                    if self.curve.last().map_or(0, |&(_, m)| m) != n {
                        self.curve.push((now, n));
                    }
                }
                Action::Consult { host } => {
                    for req in runner.requests(host)? {
                        if self.vetoes.contains(&req.job) || req.request.is_empty() {
                            continue;
                        }
                        let ack = req.request.iter().map(|op| op.id).collect();
                        let resp = TaskControlResponse {
                            sequence: req.sequence,
                            ack,
                        };
                        more.extend(runner.respond(alloc, host, req.job, resp, now)?);
                    }
                }
                Action::Moved(m) => {
                    let job = alloc.task_view(m.task)?.job;
                    for down in [true, false] {
                        self.log.push(LogEvent::Task {
                            t_ms: now,
                            job,
                            task: m.task,
                            down,
                        });
                    }
                }
                Action::StopTask { task, job } => {
                    self.log.push(LogEvent::Task {
                        t_ms: now,
                        job,
                        task,
                        down: true,
                    });
                    let t = now + self.between(MIN, 5 * MIN);
                    self.at(t, Ev::Restore { task, job });
                }
                Action::Do { host, step } => {
                    let (lo, hi) = match step {
                        HostStep::Update => (2 * MIN, 10 * MIN),
                        HostStep::Reboot => (3 * MIN, 8 * MIN),
                        HostStep::Verify => (MIN, 2 * MIN),
                    };
                    let t = now + self.between(lo, hi);
                    let ok = step != HostStep::Verify || self.rng.random_range(0..10_000u32) >= 5;
                    self.at(t, Ev::StepDone { host, step, ok });
                }
                Action::CheckGate { wave } => {
                    if let Some(w) = self.waves.get_mut(wave) {
                        w.ended_ms = Some(now);
                    }
                    let pass = self.health_failure_at != Some(wave);
                    self.at(now + HOUR, Ev::Gate { wave, pass });
                }
                Action::Halted { wave, rollback } => {
                    self.halted_at = Some(wave);
                    self.halted_ms = Some(now);
                    self.rollback = rollback;
                }
                _ => {}
            }
            more.reverse();
            todo.extend(more);
        }
        Ok(())
    }

    fn event(
        &mut self,
        runner: &mut Runner,
        alloc: &mut Allocator,
        ev: Ev,
        now: u64,
    ) -> Result<(), RolloutError> {
        let actions = match ev {
            Ev::StepDone { host, step, ok } => runner.report(alloc, host, step, ok, now)?,
            Ev::Gate { wave, pass } => runner.gate(alloc, wave, pass, now)?,
            Ev::HostBack { host } => {
                alloc.host_up(host)?;
                Vec::new()
            }
            Ev::Restore { task, job } => {
                let out = alloc.apply(&job_request(self.ent, job).allocate(task, task_demand()))?;
                if out.placed.is_empty() {
                    // No room now: try again later; the task stays down meanwhile.
                    self.at(now + 10 * MIN, Ev::Restore { task, job });
                } else {
                    runner.task_restored(task)?;
                    self.log.push(LogEvent::Task {
                        t_ms: now,
                        job,
                        task,
                        down: false,
                    });
                }
                Vec::new()
            }
        };
        self.handle(runner, alloc, actions, now)
    }
}

/// Runs a rollout over the synthetic fleet (see the [module docs](self)).
pub fn simulate(config: &SimConfig) -> Result<SimOutcome, RolloutError> {
    if !(0.0..=1.0).contains(&config.veto_fraction) {
        return Err(RolloutError::Config {
            field: "veto_fraction",
            value: config.veto_fraction.to_string(),
            problem: "must be in [0, 1]",
        });
    }
    let (mut alloc, ent) = fleet(config.hosts)?;
    let mut rng = ChaCha8Rng::seed_from_u64(config.seed);
    let mut back = Vec::new();
    for i in 0..config.hosts {
        let host =
            HostId(u32::try_from(i).map_err(|_| RolloutError::UnknownHost(HostId(u32::MAX)))?);
        let draw = rng.random_range(0..10_000u32);
        if draw < 20 {
            alloc.host_down(host)?;
            if draw < 10 {
                back.push((rng.random_range(DAY..=20 * DAY), host));
            }
        } else if draw < 50 {
            alloc.cordon(host)?;
            back.push((rng.random_range(12 * HOUR..=5 * DAY), host));
        }
    }
    let mut jobs = Vec::new();
    let mut next_task = 0u64;
    for j in 0..(config.hosts / 10).max(1) {
        let job = JobId(j as u64);
        let n = rng.random_range(3..=30u64);
        let mut req = job_request(ent, job);
        for _ in 0..n {
            req = req.allocate(TaskId(next_task), task_demand());
            next_task += 1;
        }
        let out = alloc.apply(&req)?;
        let tasks: Vec<TaskId> = out.placed.iter().map(|p| p.task).collect();
        let vetoes = rng.random_bool(config.veto_fraction);
        #[allow(clippy::cast_possible_truncation)] // at most 30 tasks
        let max_unavailable = (tasks.len() as u32 / 10).max(1);
        jobs.push(SimJob {
            job,
            tasks,
            max_unavailable,
            vetoes,
        });
    }
    let waves = plan(
        &alloc,
        &PlanConfig {
            waves_percent: config.waves_percent.clone(),
            seed: config.seed,
        },
    )?;
    let mut rc = RolloutConfig::new(config.update)
        .limits(config.limits)
        .notice_ms(config.notice_ms);
    rc.reason = "OS update".to_owned();
    let sim_waves = waves
        .waves
        .iter()
        .map(|w| SimWave {
            kind: w.kind,
            size: w.hosts.len(),
            started_ms: None,
            ended_ms: None,
        })
        .collect();
    let mut runner = Runner::new(&alloc, waves, rc)?;
    let mut sim = Sim {
        rng,
        queue: BinaryHeap::new(),
        seq: 0,
        ent,
        vetoes: jobs.iter().filter(|j| j.vetoes).map(|j| j.job).collect(),
        job_of: BTreeMap::new(),
        log: Vec::new(),
        curve: vec![(0, 0)],
        waves: sim_waves,
        halted_at: None,
        halted_ms: None,
        rollback: Vec::new(),
        health_failure_at: config.health_failure_at,
    };
    for j in &jobs {
        runner.set_max_unavailable(j.job, j.max_unavailable);
        for &t in &j.tasks {
            sim.job_of.insert(t, j.job);
        }
    }
    for (t, host) in back {
        sim.at(t, Ev::HostBack { host });
    }
    let first = runner.step(&mut alloc, 0)?;
    sim.handle(&mut runner, &mut alloc, first, 0)?;
    let mut now = 0;
    loop {
        let queued = sim.queue.peek().map(|Reverse((t, _, _))| *t);
        let wake = runner.next_wakeup();
        let next = match (queued, wake) {
            (Some(a), Some(b)) => a.min(b),
            (Some(a), None) => a,
            (None, Some(b)) => b,
            (None, None) => break,
        };
        if next > config.horizon_ms {
            now = config.horizon_ms;
            break;
        }
        now = next.max(now);
        if queued == Some(next)
            && let Some(Reverse((_, _, ev))) = sim.queue.pop()
        {
            sim.event(&mut runner, &mut alloc, ev, now)?;
        }
        let actions = runner.step(&mut alloc, now)?;
        sim.handle(&mut runner, &mut alloc, actions, now)?;
    }
    let trailing = runner.trailing(&alloc)?;
    let budgets: BTreeMap<JobId, u32> = jobs.iter().map(|j| (j.job, j.max_unavailable)).collect();
    let (budget_violations, fault_domain_violations) =
        count_violations(&sim.log, &alloc, config.limits, &budgets)?;
    Ok(SimOutcome {
        hosts: config.hosts,
        curve: sim.curve,
        waves: sim.waves,
        trailing,
        jobs,
        log: sim.log,
        halted_at: sim.halted_at,
        rollback: sim.rollback,
        halted_ms: sim.halted_ms,
        end_ms: now,
        budget_violations,
        fault_domain_violations,
        limits: config.limits,
        alloc,
    })
}

/// Counts, from the log alone, the times a job had more tasks down than its budget and
/// the times a fault domain (by its path in `alloc`) had more hosts in flight than its
/// limit. A job missing from `budgets` counts with budget 0.
pub fn count_violations(
    log: &[LogEvent],
    alloc: &Allocator,
    limits: DomainLimits,
    budgets: &BTreeMap<JobId, u32>,
) -> Result<(usize, usize), RolloutError> {
    let mut down: BTreeMap<JobId, u32> = BTreeMap::new();
    let mut flight: BTreeMap<(usize, String), u32> = BTreeMap::new();
    let (mut budget_v, mut domain_v) = (0, 0);
    for e in log {
        match *e {
            LogEvent::Task { job, down: d, .. } => {
                let c = down.entry(job).or_insert(0);
                if d {
                    *c += 1;
                    if *c > budgets.get(&job).copied().unwrap_or(0) {
                        budget_v += 1;
                    }
                } else {
                    // A task up that the log never took down: the log itself is wrong.
                    *c = c.checked_sub(1).ok_or_else(|| RolloutError::Internal {
                        host: HostId(0),
                        what: format!("the log brings a task of {job} up that was not down"),
                    })?;
                }
            }
            LogEvent::Flight { host, entered, .. } => {
                let view = alloc.host(host)?;
                for (k, level) in [
                    FaultLevel::Rack,
                    FaultLevel::PowerDomain,
                    FaultLevel::Datacenter,
                ]
                .into_iter()
                .enumerate()
                {
                    let c = flight
                        .entry((k, view.domain(level).to_owned()))
                        .or_insert(0);
                    if entered {
                        *c += 1;
                        if Some(*c) > limits.at(level) {
                            domain_v += 1;
                        }
                    } else {
                        *c = c.checked_sub(1).ok_or_else(|| RolloutError::Internal {
                            host,
                            what: "the log lands a host that never entered flight".to_owned(),
                        })?;
                    }
                }
            }
        }
    }
    Ok((budget_v, domain_v))
}
