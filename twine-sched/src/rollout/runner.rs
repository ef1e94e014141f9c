//! The runner: a state machine that walks the plan's waves, host by host, within the
//! fault-domain limits and every job's budget. It does no I/O and keeps no clock: the
//! caller drives it with [`Runner::step`] and reports what it carried out.

use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};

use crate::allocator::Allocator;
use crate::drain::{Drain, DrainEvent, DrainSettings, Phase, ProfileSide};
use crate::fleet::{FaultLevel, HostId, HostState};
use crate::request::{JobId, TaskId};
use crate::taskcontrol::{TaskControlRequest, TaskControlResponse};

use super::RolloutError;
use super::plan::{Plan, UpdateKind};

/// Hosts in flight at once, at most, in one fault domain of each level.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub struct DomainLimits {
    /// Per rack (at least 1).
    pub rack: u32,
    /// Per power domain (at least 1).
    pub power: u32,
    /// Per datacenter (at least 1).
    pub datacenter: u32,
}

impl DomainLimits {
    /// Limits per rack, power domain and datacenter.
    pub fn new(rack: u32, power: u32, datacenter: u32) -> DomainLimits {
        DomainLimits {
            rack,
            power,
            datacenter,
        }
    }

    /// The limit at `level` (`None` for the region, which has none).
    pub fn at(&self, level: FaultLevel) -> Option<u32> {
        match level {
            FaultLevel::Rack => Some(self.rack),
            FaultLevel::PowerDomain => Some(self.power),
            FaultLevel::Datacenter => Some(self.datacenter),
            FaultLevel::Region => None,
        }
    }
}

impl Default for DomainLimits {
    /// 2 per rack, 20 per power domain, 200 per datacenter.
    fn default() -> Self {
        DomainLimits::new(2, 20, 200)
    }
}

/// The levels the runner limits, innermost first.
pub(crate) const LIMITED: [FaultLevel; 3] = [
    FaultLevel::Rack,
    FaultLevel::PowerDomain,
    FaultLevel::Datacenter,
];

/// How a rollout runs.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct RolloutConfig {
    /// What the update needs.
    pub update: UpdateKind,
    /// Hosts in flight per fault domain.
    pub limits: DomainLimits,
    /// A drain's advance notice: its deadline is this long after it starts.
    pub notice_ms: u64,
    /// A drain whose host is not empty this long after it started is *parked*: it waits
    /// on its jobs' consent (or their deadline) without holding its wave open or its
    /// fault-domain slot; once empty it queues, at the head of its rack, for a slot
    /// before its update starts.
    pub consent_grace_ms: u64,
    /// A host found down or cordoned by someone else is looked at again after this long;
    /// so is a drain whose approved move found no room.
    pub retry_ms: u64,
    /// Tasks of a job that may be unavailable at once, for jobs without their own
    /// ([`Runner::set_max_unavailable`]).
    pub max_unavailable: u32,
    /// Why, for the applications (each notice's reason).
    pub reason: String,
}

impl RolloutConfig {
    /// Defaults: 7-day notices, 1 hour of consent grace, retries every hour, one task of
    /// each job unavailable at a time, [`DomainLimits::default`].
    pub fn new(update: UpdateKind) -> RolloutConfig {
        RolloutConfig {
            update,
            limits: DomainLimits::default(),
            notice_ms: 7 * 86_400_000,
            consent_grace_ms: 3_600_000,
            retry_ms: 3_600_000,
            max_unavailable: 1,
            reason: "host update".to_owned(),
        }
    }
    /// Sets the fault-domain limits.
    pub fn limits(mut self, limits: DomainLimits) -> RolloutConfig {
        self.limits = limits;
        self
    }
    /// Sets the notice length.
    pub fn notice_ms(mut self, ms: u64) -> RolloutConfig {
        self.notice_ms = ms;
        self
    }
}

/// A step of a host's update the caller carries out.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum HostStep {
    /// Install the packages.
    Update,
    /// Reboot into them.
    Reboot,
    /// Check the host is healthy.
    Verify,
}

/// Something for the caller to do, or to know.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Action {
    /// A wave started.
    WaveStarted {
        /// Its index in the plan.
        wave: usize,
    },
    /// The host entered flight (counts against its fault domains from now).
    InFlight {
        /// The host.
        host: HostId,
    },
    /// The host left flight.
    Landed {
        /// The host.
        host: HostId,
    },
    /// A drain has TaskControl requests: fetch them with [`Runner::requests`] and answer
    /// with [`Runner::respond`].
    Consult {
        /// The drained host.
        host: HostId,
    },
    /// A task moved off a draining host with its job's consent (done in the allocator).
    Moved(crate::allocator::Moved),
    /// A notice's deadline passed: stop this task now, restart it elsewhere, and call
    /// [`Runner::task_restored`] once it runs again.
    StopTask {
        /// The task (already freed from the allocator).
        task: TaskId,
        /// Its job.
        job: JobId,
    },
    /// Carry out a step on a host; report it with [`Runner::report`].
    Do {
        /// The host.
        host: HostId,
        /// The step.
        step: HostStep,
    },
    /// The wave is done: check its health, and answer with [`Runner::gate`].
    CheckGate {
        /// The wave.
        wave: usize,
    },
    /// A gate failed: the rollout stops, and these hosts (already updated) are proposed
    /// for rollback. A proposal, not an action.
    Halted {
        /// The wave whose gate failed.
        wave: usize,
        /// Hosts updated so far.
        rollback: Vec<HostId>,
    },
    /// Every wave passed its gate (hosts deferred earlier are still retried).
    Complete,
    /// A host action failed ([`Runner::perform`]): the host is failed and reported.
    StepFailed {
        /// The host.
        host: HostId,
        /// The step.
        step: HostStep,
        /// What the host side said.
        error: String,
    },
}

/// Why a host was set aside to be retried.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(crate) enum Deferral {
    Down,
    Elsewhere,
}

/// Where one host is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Status {
    /// Its wave has not started.
    Waiting,
    /// In its rack's queue.
    Queued,
    /// Skipped; retried later.
    Deferred(Deferral),
    /// Its drain runs; `parked` once it waits on consent past the grace, without a
    /// fault-domain slot.
    Draining { deadline_ms: u64, parked: bool },
    /// Drained after waiting parked; queued (at the head of its rack) for a slot.
    Resuming,
    /// A step runs.
    Doing(HostStep),
    /// Done and healthy.
    Updated,
    /// Verified unhealthy after its update.
    Failed,
    /// Stopped by a failed gate before it was done.
    Halted,
}

/// Where the rollout is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum RolloutState {
    /// Nothing has started (before the first [`Runner::step`]).
    NotStarted,
    /// A wave runs.
    Running {
        /// Its index.
        wave: usize,
    },
    /// A wave is done; its gate is awaited.
    AwaitingGate {
        /// Its index.
        wave: usize,
    },
    /// Every gate passed.
    Complete,
    /// A gate failed.
    Halted {
        /// The wave whose gate failed.
        wave: usize,
    },
}

struct NoProfile;
impl ProfileSide for NoProfile {
    type Error = std::convert::Infallible;
    fn switch(&mut self, _: HostId, _: &str) -> Result<(), Self::Error> {
        Ok(())
    }
}

/// The rollout state machine (see the [module docs](super)).
#[derive(Debug)]
pub struct Runner {
    pub(crate) plan: Plan,
    pub(crate) config: RolloutConfig,
    pub(crate) state: RolloutState,
    pub(crate) status: Vec<Status>,
    pub(crate) wave_of: Vec<u32>,
    /// Whether the host still holds its wave open.
    holds_wave: Vec<bool>,
    open: Vec<usize>,
    /// Fault-domain names per host: rack, power domain, datacenter.
    pub(crate) domains: Vec<[u32; 3]>,
    pub(crate) in_flight: [HashMap<u32, u32>; 3],
    queues: BTreeMap<u32, VecDeque<HostId>>,
    dirty: BTreeSet<u32>,
    /// Racks whose head waits on a full power domain / datacenter.
    blocked: [HashMap<u32, BTreeSet<u32>>; 2],
    pub(crate) drains: BTreeMap<HostId, Drain>,
    wakes: BTreeSet<(u64, HostId)>,
    /// Drains past their deadline whose stops wait for a job's budget.
    pub(crate) stop_waiting: BTreeSet<HostId>,
    budgets: HashMap<JobId, u32>,
    pub(crate) down: HashMap<JobId, u32>,
    stopped: HashMap<TaskId, JobId>,
    pub(crate) updated: Vec<HostId>,
    last_ms: u64,
}

impl Runner {
    /// A runner over `plan`, for the hosts of `alloc`. Nothing starts before the first
    /// [`step`](Self::step).
    ///
    /// Refused if a limit or duration is 0, or the plan names a host `alloc` lacks or
    /// names one twice.
    pub fn new(
        alloc: &Allocator,
        plan: Plan,
        config: RolloutConfig,
    ) -> Result<Runner, RolloutError> {
        for (field, v) in [
            ("limits.rack", u64::from(config.limits.rack)),
            ("limits.power", u64::from(config.limits.power)),
            ("limits.datacenter", u64::from(config.limits.datacenter)),
            ("notice_ms", config.notice_ms),
            ("retry_ms", config.retry_ms),
            ("max_unavailable", u64::from(config.max_unavailable)),
        ] {
            if v == 0 {
                return Err(RolloutError::Config {
                    field,
                    value: "0".to_owned(),
                    problem: "must be at least 1",
                });
            }
        }
        let n = alloc.hosts.len();
        let mut wave_of = vec![u32::MAX; n];
        for (w, wave) in plan.waves.iter().enumerate() {
            let w = u32::try_from(w).map_err(|_| RolloutError::Config {
                field: "waves",
                value: plan.waves.len().to_string(),
                problem: "too many waves",
            })?;
            for &h in &wave.hosts {
                let slot = wave_of
                    .get_mut(h.0 as usize)
                    .ok_or(RolloutError::UnknownHost(h))?;
                if *slot != u32::MAX {
                    return Err(RolloutError::HostTwice(h));
                }
                *slot = w;
            }
        }
        let domains = alloc
            .hosts
            .iter()
            .map(|h| LIMITED.map(|l| h.domains[l.index()].0))
            .collect();
        let open = vec![0; plan.waves.len()];
        Ok(Runner {
            plan,
            config,
            state: RolloutState::NotStarted,
            status: vec![Status::Waiting; n],
            wave_of,
            holds_wave: vec![false; n],
            open,
            domains,
            in_flight: Default::default(),
            queues: BTreeMap::new(),
            dirty: BTreeSet::new(),
            blocked: Default::default(),
            drains: BTreeMap::new(),
            wakes: BTreeSet::new(),
            stop_waiting: BTreeSet::new(),
            budgets: HashMap::new(),
            down: HashMap::new(),
            stopped: HashMap::new(),
            updated: Vec::new(),
            last_ms: 0,
        })
    }

    /// Sets a job's max-unavailable budget (tasks down at once), for the stops forced at
    /// a notice's deadline and the moves it consents to.
    pub fn set_max_unavailable(&mut self, job: JobId, n: u32) {
        self.budgets.insert(job, n);
    }

    fn budget(&self, job: JobId) -> u32 {
        self.budgets
            .get(&job)
            .copied()
            .unwrap_or(self.config.max_unavailable)
    }

    /// Where the rollout is.
    pub fn state(&self) -> RolloutState {
        self.state
    }

    /// The plan it runs.
    pub fn plan(&self) -> &Plan {
        &self.plan
    }

    /// Hosts updated and verified healthy, in the order they finished.
    pub fn updated(&self) -> &[HostId] {
        &self.updated
    }

    /// Hosts in flight now.
    pub fn in_flight(&self) -> usize {
        self.in_flight[0].values().map(|&c| c as usize).sum()
    }

    /// The earliest time the runner wants a [`step`](Self::step) (a deadline, a retry,
    /// the end of a consent grace), if any.
    pub fn next_wakeup(&self) -> Option<u64> {
        self.wakes.first().map(|&(t, _)| t)
    }

    fn check_time(&mut self, now_ms: u64) -> Result<(), RolloutError> {
        if now_ms < self.last_ms {
            return Err(RolloutError::TimeWentBack {
                now_ms,
                last_ms: self.last_ms,
            });
        }
        self.last_ms = now_ms;
        Ok(())
    }

    /// Time passes to `now_ms`: the first wave starts (on the first call), drains reach
    /// deadlines, deferred hosts are retried, and hosts start where the limits allow.
    pub fn step(
        &mut self,
        alloc: &mut Allocator,
        now_ms: u64,
    ) -> Result<Vec<Action>, RolloutError> {
        self.check_time(now_ms)?;
        let mut out = Vec::new();
        if self.state == RolloutState::NotStarted {
            self.start_wave(0, &mut out);
        }
        while let Some(&(t, host)) = self.wakes.first() {
            if t > now_ms {
                break;
            }
            self.wakes.pop_first();
            self.wake(alloc, host, now_ms, &mut out)?;
        }
        self.retry_stops(alloc, now_ms, &mut out)?;
        self.fill(alloc, now_ms, &mut out)?;
        self.settle(&mut out);
        Ok(out)
    }

    fn start_wave(&mut self, wave: usize, out: &mut Vec<Action>) {
        let Some(w) = self.plan.waves.get(wave) else {
            self.state = RolloutState::Complete;
            out.push(Action::Complete);
            return;
        };
        self.state = RolloutState::Running { wave };
        let hosts = w.hosts.clone();
        for h in hosts {
            let i = h.0 as usize;
            self.status[i] = Status::Queued;
            self.holds_wave[i] = true;
            self.open[wave] += 1;
            let rack = self.domains[i][0];
            self.queues.entry(rack).or_default().push_back(h);
            self.dirty.insert(rack);
        }
        out.push(Action::WaveStarted { wave });
    }

    fn release_wave(&mut self, host: HostId) -> Result<(), RolloutError> {
        let i = host.0 as usize;
        if std::mem::take(&mut self.holds_wave[i]) {
            let w = self.wave_of[i] as usize;
            self.open[w] = self.open[w]
                .checked_sub(1)
                .ok_or_else(|| internal(host, "its wave had no host open"))?;
        }
        Ok(())
    }

    /// Asks for the gate once the running wave has nothing left open.
    fn settle(&mut self, out: &mut Vec<Action>) {
        if let RolloutState::Running { wave } = self.state
            && self.open.get(wave) == Some(&0)
        {
            self.state = RolloutState::AwaitingGate { wave };
            out.push(Action::CheckGate { wave });
        }
    }

    /// Whether the domain at limit level `l` (0 rack, 1 power, 2 dc) has room.
    fn room(&self, l: usize, name: u32) -> bool {
        let limit = self.config.limits.at(LIMITED[l]).unwrap_or(u32::MAX);
        self.in_flight[l].get(&name).copied().unwrap_or(0) < limit
    }

    /// The first limit level full for `host`, if any.
    pub(crate) fn full_level(&self, host: HostId) -> Option<FaultLevel> {
        let d = self.domains[host.0 as usize];
        (0..3).find(|&l| !self.room(l, d[l])).map(|l| LIMITED[l])
    }

    fn fill(
        &mut self,
        alloc: &mut Allocator,
        now_ms: u64,
        out: &mut Vec<Action>,
    ) -> Result<(), RolloutError> {
        if !matches!(
            self.state,
            RolloutState::Running { .. }
                | RolloutState::AwaitingGate { .. }
                | RolloutState::Complete
        ) {
            self.dirty.clear();
            return Ok(());
        }
        while let Some(rack) = self.dirty.pop_first() {
            loop {
                let Some(&host) = self.queues.get(&rack).and_then(VecDeque::front) else {
                    self.queues.remove(&rack);
                    break;
                };
                let d = self.domains[host.0 as usize];
                if !self.room(0, d[0]) {
                    break;
                }
                if !self.room(1, d[1]) {
                    self.blocked[0].entry(d[1]).or_default().insert(rack);
                    break;
                }
                if !self.room(2, d[2]) {
                    self.blocked[1].entry(d[2]).or_default().insert(rack);
                    break;
                }
                if let Some(q) = self.queues.get_mut(&rack) {
                    q.pop_front();
                }
                if self.status[host.0 as usize] == Status::Resuming {
                    self.take_slot(host, out);
                    self.begin_update(host, out);
                } else {
                    self.start_host(alloc, host, now_ms, out)?;
                }
            }
        }
        Ok(())
    }

    fn start_host(
        &mut self,
        alloc: &mut Allocator,
        host: HostId,
        now_ms: u64,
        out: &mut Vec<Action>,
    ) -> Result<(), RolloutError> {
        let i = host.0 as usize;
        match alloc.host(host)?.state() {
            HostState::Up => {}
            state => {
                let why = if state == HostState::Down {
                    Deferral::Down
                } else {
                    Deferral::Elsewhere
                };
                self.status[i] = Status::Deferred(why);
                self.release_wave(host)?;
                self.wakes
                    .insert((now_ms.saturating_add(self.config.retry_ms), host));
                return Ok(());
            }
        }
        self.take_slot(host, out);
        if !self.config.update.drains() {
            self.status[i] = Status::Doing(HostStep::Update);
            out.push(Action::Do {
                host,
                step: HostStep::Update,
            });
            return Ok(());
        }
        let deadline_ms = now_ms.saturating_add(self.config.notice_ms);
        let settings = DrainSettings::new(deadline_ms, &self.config.reason).hold();
        let drain = Drain::start(alloc, host, settings, now_ms)
            .map_err(|source| RolloutError::Drain { host, source })?;
        let has_jobs = matches!(drain.phase(), Phase::Draining { tasks_left } if tasks_left > 0);
        self.drains.insert(host, drain);
        self.status[i] = Status::Draining {
            deadline_ms,
            parked: false,
        };
        self.wakes.insert((deadline_ms, host));
        if has_jobs {
            self.wakes
                .insert((now_ms.saturating_add(self.config.consent_grace_ms), host));
            out.push(Action::Consult { host });
        } else {
            self.tick_drain(alloc, host, now_ms, out)?;
        }
        Ok(())
    }

    fn wake(
        &mut self,
        alloc: &mut Allocator,
        host: HostId,
        now_ms: u64,
        out: &mut Vec<Action>,
    ) -> Result<(), RolloutError> {
        let i = host.0 as usize;
        match self.status[i] {
            Status::Draining {
                deadline_ms,
                parked,
            } => {
                // The consent grace is over, or the deadline came, or a retry is due.
                let waiting = self.drains.get(&host).is_some_and(
                    |d| matches!(d.phase(), Phase::Draining { tasks_left } if tasks_left > 0),
                );
                if waiting && !parked {
                    // Waiting on its jobs: it gives its wave and its slot back.
                    self.release_wave(host)?;
                    self.status[i] = Status::Draining {
                        deadline_ms,
                        parked: true,
                    };
                    self.land(host, out)?;
                }
                self.tick_drain(alloc, host, now_ms, out)?;
            }
            Status::Deferred(_) => {
                if matches!(self.state, RolloutState::Halted { .. }) {
                    return Ok(());
                }
                let rack = self.domains[i][0];
                self.status[i] = Status::Queued;
                self.queues.entry(rack).or_default().push_back(host);
                self.dirty.insert(rack);
            }
            _ => {}
        }
        Ok(())
    }

    /// Ticks a drain; past its deadline, only when every job on the host has the budget
    /// for its tasks there to be stopped.
    fn tick_drain(
        &mut self,
        alloc: &mut Allocator,
        host: HostId,
        now_ms: u64,
        out: &mut Vec<Action>,
    ) -> Result<(), RolloutError> {
        let Status::Draining {
            deadline_ms,
            parked,
        } = self.status[host.0 as usize]
        else {
            return Ok(());
        };
        if now_ms >= deadline_ms {
            if self.job_short_of_budget(alloc, host)?.is_some() {
                self.stop_waiting.insert(host);
                return Ok(());
            }
            self.stop_waiting.remove(&host);
        }
        let drain = self
            .drains
            .get_mut(&host)
            .ok_or_else(|| internal(host, "draining without a drain"))?;
        let events = drain
            .tick(alloc, &mut NoProfile, now_ms)
            .map_err(|source| RolloutError::Drain { host, source })?;
        let held = drain.phase() == Phase::Held;
        for e in events {
            self.drain_event(host, e, now_ms, out);
        }
        if held {
            // The host holds its wave open until it lands (a parked one gave it back).
            if parked {
                let rack = self.domains[host.0 as usize][0];
                self.status[host.0 as usize] = Status::Resuming;
                self.queues.entry(rack).or_default().push_front(host);
                self.dirty.insert(rack);
            } else {
                self.begin_update(host, out);
            }
        }
        Ok(())
    }

    fn begin_update(&mut self, host: HostId, out: &mut Vec<Action>) {
        self.status[host.0 as usize] = Status::Doing(HostStep::Update);
        out.push(Action::Do {
            host,
            step: HostStep::Update,
        });
    }

    fn take_slot(&mut self, host: HostId, out: &mut Vec<Action>) {
        let d = self.domains[host.0 as usize];
        for (counts, name) in self.in_flight.iter_mut().zip(d) {
            *counts.entry(name).or_insert(0) += 1;
        }
        out.push(Action::InFlight { host });
    }

    fn drain_event(&mut self, host: HostId, e: DrainEvent, now_ms: u64, out: &mut Vec<Action>) {
        match e {
            DrainEvent::Moved(m) => out.push(Action::Moved(m)),
            DrainEvent::Stopped { task, job } => {
                *self.down.entry(job).or_insert(0) += 1;
                self.stopped.insert(task, job);
                out.push(Action::StopTask { task, job });
            }
            DrainEvent::NoRoom { .. } => {
                self.wakes
                    .insert((now_ms.saturating_add(self.config.retry_ms), host));
            }
            _ => {}
        }
    }

    /// The first job on `host` whose tasks there, stopped now, would take it over budget.
    pub(crate) fn job_short_of_budget(
        &self,
        alloc: &Allocator,
        host: HostId,
    ) -> Result<Option<JobId>, RolloutError> {
        let mut per_job: BTreeMap<JobId, u32> = BTreeMap::new();
        for &t in alloc.host(host)?.tasks() {
            *per_job.entry(alloc.task_view(t)?.job).or_insert(0) += 1;
        }
        Ok(per_job.into_iter().find_map(|(job, n)| {
            let down = self.down.get(&job).copied().unwrap_or(0);
            (down.saturating_add(n) > self.budget(job)).then_some(job)
        }))
    }

    fn retry_stops(
        &mut self,
        alloc: &mut Allocator,
        now_ms: u64,
        out: &mut Vec<Action>,
    ) -> Result<(), RolloutError> {
        let waiting: Vec<HostId> = self.stop_waiting.iter().copied().collect();
        for host in waiting {
            self.tick_drain(alloc, host, now_ms, out)?;
        }
        Ok(())
    }

    /// A task stopped at a deadline ([`Action::StopTask`]) runs again elsewhere: its
    /// job's budget frees, and stops waiting for it go ahead at the next step.
    pub fn task_restored(&mut self, task: TaskId) -> Result<(), RolloutError> {
        let job = self
            .stopped
            .remove(&task)
            .ok_or(RolloutError::NotStopped(task))?;
        let d = self
            .down
            .get_mut(&job)
            .ok_or_else(|| internal(HostId(0), "a stopped task's job has no down count"))?;
        *d = d
            .checked_sub(1)
            .ok_or_else(|| internal(HostId(0), "a stopped task's job counted no task down"))?;
        Ok(())
    }

    /// The TaskControl requests of the drain of `host`, one per job with tasks there.
    pub fn requests(&mut self, host: HostId) -> Result<Vec<TaskControlRequest>, RolloutError> {
        Ok(self
            .drains
            .get_mut(&host)
            .ok_or(RolloutError::NotDraining(host))?
            .requests())
    }

    /// A job controller's answer for the drain of `host`. Acks of a job whose budget is
    /// used up by stopped tasks are held back (the operations stay offered).
    pub fn respond(
        &mut self,
        alloc: &mut Allocator,
        host: HostId,
        job: JobId,
        mut resp: TaskControlResponse,
        now_ms: u64,
    ) -> Result<Vec<Action>, RolloutError> {
        self.check_time(now_ms)?;
        if self.down.get(&job).copied().unwrap_or(0) >= self.budget(job) {
            resp.ack.clear();
        }
        let drain = self
            .drains
            .get_mut(&host)
            .ok_or(RolloutError::NotDraining(host))?;
        let events = drain
            .respond(alloc, job, resp, now_ms)
            .map_err(|source| RolloutError::Drain { host, source })?;
        let mut out = Vec::new();
        for e in events {
            self.drain_event(host, e, now_ms, &mut out);
        }
        self.tick_drain(alloc, host, now_ms, &mut out)?;
        self.fill(alloc, now_ms, &mut out)?;
        self.settle(&mut out);
        Ok(out)
    }

    /// The caller carried out `step` on `host` (`ok`: a verify found it healthy; for
    /// the other steps, `false` counts as a failed host too).
    pub fn report(
        &mut self,
        alloc: &mut Allocator,
        host: HostId,
        step: HostStep,
        ok: bool,
        now_ms: u64,
    ) -> Result<Vec<Action>, RolloutError> {
        self.check_time(now_ms)?;
        let i = host.0 as usize;
        match self.status.get(i) {
            Some(&Status::Doing(s)) if s == step => {}
            _ => return Err(RolloutError::UnexpectedReport { host, step }),
        }
        let mut out = Vec::new();
        let next = match step {
            HostStep::Update if self.config.update.drains() => Some(HostStep::Reboot),
            HostStep::Update | HostStep::Reboot => Some(HostStep::Verify),
            HostStep::Verify => None,
        };
        match next {
            Some(next) if ok => {
                self.status[i] = Status::Doing(next);
                out.push(Action::Do { host, step: next });
            }
            _ => {
                if ok {
                    if let Some(mut drain) = self.drains.remove(&host) {
                        drain
                            .release(alloc)
                            .map_err(|source| RolloutError::Drain { host, source })?;
                    }
                    self.status[i] = Status::Updated;
                    self.updated.push(host);
                } else {
                    // Stays cordoned (if drained) for someone to look at.
                    self.drains.remove(&host);
                    self.status[i] = Status::Failed;
                }
                self.land(host, &mut out)?;
            }
        }
        self.fill(alloc, now_ms, &mut out)?;
        self.settle(&mut out);
        Ok(out)
    }

    fn land(&mut self, host: HostId, out: &mut Vec<Action>) -> Result<(), RolloutError> {
        let i = host.0 as usize;
        self.release_wave(host)?;
        let d = self.domains[i];
        for (counts, name) in self.in_flight.iter_mut().zip(d) {
            let c = counts
                .get_mut(&name)
                .and_then(|c| c.checked_sub(1).map(|left| (c, left)))
                .ok_or_else(|| {
                    internal(
                        host,
                        "landed from a fault domain that counted it not in flight",
                    )
                })?;
            *c.0 = c.1;
        }
        self.dirty.insert(d[0]);
        for l in 0..2 {
            if let Some(racks) = self.blocked[l].remove(&d[l + 1]) {
                self.dirty.extend(racks);
            }
        }
        out.push(Action::Landed { host });
        Ok(())
    }

    /// The health gate of `wave` ([`Action::CheckGate`]): passed, the next wave starts;
    /// failed, the rollout halts. Drains not yet finished are cancelled (their hosts come
    /// back up); steps under way finish; nothing starts again.
    pub fn gate(
        &mut self,
        alloc: &mut Allocator,
        wave: usize,
        pass: bool,
        now_ms: u64,
    ) -> Result<Vec<Action>, RolloutError> {
        self.check_time(now_ms)?;
        if self.state != (RolloutState::AwaitingGate { wave }) {
            return Err(RolloutError::UnexpectedGate { wave });
        }
        let mut out = Vec::new();
        if pass {
            self.start_wave(wave + 1, &mut out);
            self.fill(alloc, now_ms, &mut out)?;
            self.settle(&mut out);
            return Ok(out);
        }
        self.state = RolloutState::Halted { wave };
        let draining: Vec<HostId> = self
            .drains
            .iter()
            .filter(|(_, d)| d.phase() != Phase::Held)
            .map(|(&h, _)| h)
            .collect();
        for host in draining {
            self.drains.remove(&host);
            self.stop_waiting.remove(&host);
            alloc.host_up(host)?;
            let was = std::mem::replace(&mut self.status[host.0 as usize], Status::Halted);
            if !matches!(was, Status::Draining { parked: true, .. }) {
                self.land(host, &mut out)?;
            }
        }
        let resuming: Vec<HostId> = self
            .drains
            .keys()
            .copied()
            .filter(|h| self.status[h.0 as usize] == Status::Resuming)
            .collect();
        for host in resuming {
            if let Some(mut drain) = self.drains.remove(&host) {
                drain
                    .release(alloc)
                    .map_err(|source| RolloutError::Drain { host, source })?;
            }
            self.status[host.0 as usize] = Status::Halted;
        }
        for (i, s) in self.status.iter_mut().enumerate() {
            if matches!(s, Status::Waiting | Status::Queued | Status::Deferred(_)) {
                *s = Status::Halted;
                self.holds_wave[i] = false;
            }
        }
        self.queues.clear();
        self.dirty.clear();
        self.wakes.clear();
        out.push(Action::Halted {
            wave,
            rollback: self.updated.clone(),
        });
        Ok(out)
    }
}

fn internal(host: HostId, what: &str) -> RolloutError {
    RolloutError::Internal {
        host,
        what: what.to_owned(),
    }
}
