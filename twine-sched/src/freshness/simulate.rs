//! A seeded fleet run through the planner: jobs of mixed sizes and budgets, deployed at
//! random times with clumps (many jobs deployed the same day), each with a controller of
//! its own speed, and restarts that take minutes. The figures come from the run's event
//! log, read back by a pass that shares nothing with the planner or TaskControl: it
//! counts each job's restarts in flight against its budget, and each container's age.

use std::cmp::Reverse;
use std::collections::{BTreeMap, BTreeSet, BinaryHeap};

use rand::{RngExt as _, SeedableRng as _};
use rand_chacha::ChaCha8Rng;

use super::{DAY_MS, Freshness, FreshnessConfig, FreshnessError, TaskClock};
use crate::request::{JobId, TaskId};
use crate::taskcontrol::{
    JobPolicy, OpId, Outcome, ReplicatedService, Shard, ShardId, TaskControlRequest,
    TaskControlResponse,
};

/// How a simulated job's controller answers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum ControllerKind {
    /// [`ReplicatedService`] over shards of three replicas; answers within minutes.
    Replicated,
    /// Acks pending restarts while its own count of acked, unfinished ones stays within
    /// the job's budget; answers within minutes.
    Acker,
    /// As `Acker`, but one restart at a time and answering 1 to 6 hours later (jobs of up
    /// to 20 tasks).
    SlowAcker,
    /// Never acks (a veto): its tasks go overdue and the report names the job.
    Veto,
}

/// What to simulate.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct SimConfig {
    /// How many jobs.
    pub jobs: usize,
    /// Simulated span, in days.
    pub days: u64,
    /// The seed of every random draw.
    pub seed: u64,
    /// The planner's configuration.
    pub freshness: FreshnessConfig,
    /// How long an identity is valid once issued (30 days by default).
    pub identity_lifetime_ms: u64,
    /// How many jobs (the first ones) have a vetoing controller.
    pub vetoing_jobs: usize,
    /// How often the planner is advanced (1 hour by default).
    pub step_ms: u64,
}

impl SimConfig {
    /// `jobs` jobs over twice `max_age_days`, seed 0, a margin of 7/90 of the max age
    /// (7 days of 90), no vetoing controller.
    pub fn new(jobs: usize, max_age_days: u64) -> Self {
        let max_age_ms = max_age_days.saturating_mul(DAY_MS);
        SimConfig {
            jobs,
            days: max_age_days.saturating_mul(2),
            seed: 0,
            freshness: FreshnessConfig {
                max_age_ms,
                margin_ms: max_age_ms / 90 * 7,
                ..FreshnessConfig::default()
            },
            identity_lifetime_ms: 30 * DAY_MS,
            vetoing_jobs: 0,
            step_ms: 3_600_000,
        }
    }
}

/// Why a simulation could not run.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum SimError {
    /// A value of the configuration out of range.
    #[error("{field}: {reason} (got {value})")]
    InvalidConfig {
        /// The field.
        field: &'static str,
        /// Its value.
        value: u64,
        /// What is wrong with it.
        reason: &'static str,
    },
    /// The simulator's records disagree with themselves: a bug in the simulator.
    #[error("internal error: {0} (a bug in the simulator)")]
    Internal(&'static str),
    /// The planner refused a call: a bug in the planner or the simulator.
    #[error("the planner refused a call: {0}")]
    Planner(#[from] FreshnessError),
}

/// What a simulation measured. Every figure except `level_rate_per_day` and
/// `overdue_jobs` comes from the independent pass over the event log.
#[derive(Debug, Clone, PartialEq)]
pub struct SimReport {
    /// Jobs simulated.
    pub jobs: usize,
    /// Tasks simulated.
    pub tasks: usize,
    /// Days simulated.
    pub days: u64,
    /// Restarts completed on each day.
    pub restarts_per_day: Vec<u64>,
    /// The oldest container's age on each day (the most any task reached that day), in days.
    pub oldest_age_days: Vec<f64>,
    /// The most of `oldest_age_days`.
    pub max_age_days_seen: f64,
    /// Times a job had more restarts in flight than its max-unavailable budget.
    pub budget_violations: u64,
    /// Identities renewed.
    pub renewals: u64,
    /// Restarts not started through TaskControl, plus renewals that changed a task's
    /// container start or restart offer (0 when renewals never restart).
    pub restarts_by_renewal: u64,
    /// Identities seen expired, summed over the first step of each day.
    pub identities_expired: u64,
    /// All tasks over one cycle (`max_age − margin`), in restarts per day.
    pub level_rate_per_day: f64,
    /// Days before this one are warm-up (the first cycle) for `levelness`.
    pub warmup_days: u64,
    /// The most restarts on a day after warm-up over their daily mean (1 is perfectly
    /// level); `None` if the span ends within warm-up.
    pub levelness: Option<f64>,
    /// The mean daily restarts after warm-up over the level rate; `None` as `levelness`.
    pub mean_over_level: Option<f64>,
    /// Tasks whose container went past the max age, by the log.
    pub tasks_over_max_age: u64,
    /// The jobs the planner reported overdue, by id.
    pub overdue_jobs: Vec<JobId>,
    /// Restarts offered.
    pub offers: u64,
}

/// One entry of the event log.
#[derive(Debug, Clone, Copy)]
struct Logged {
    t: u64,
    job: usize,
    task: usize,
    what: What,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum What {
    /// A restart started: the task is down.
    Start,
    /// It completed: a fresh container from now.
    Done,
    /// Its identity was renewed.
    Renew,
}

/// What happens next to a job: its controller answers, or a restart finishes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Ev {
    Poll(usize),
    Done(usize, OpId, usize),
}

/// A job's controller, the application's side of TaskControl.
enum Controller {
    Replicated(ReplicatedService),
    Acker {
        budget: usize,
        acked: BTreeSet<OpId>,
    },
    Veto,
}

impl Controller {
    fn process(&mut self, req: &TaskControlRequest, one_at_a_time: bool) -> TaskControlResponse {
        match self {
            Controller::Replicated(s) => s.process(req),
            Controller::Veto => TaskControlResponse {
                sequence: req.sequence,
                ack: Vec::new(),
            },
            Controller::Acker { budget, acked } => {
                for c in &req.completed {
                    acked.remove(&c.op.id);
                    debug_assert!(c.outcome == Outcome::Completed);
                }
                let limit = if one_at_a_time { 1 } else { *budget };
                let mut ack = Vec::new();
                for op in &req.request {
                    if acked.len() + req.unhealthy.len() >= limit {
                        break;
                    }
                    acked.insert(op.id);
                    ack.push(op.id);
                }
                TaskControlResponse {
                    sequence: req.sequence,
                    ack,
                }
            }
        }
    }
}

struct SimJob {
    id: JobId,
    budget: u32,
    kind: ControllerKind,
    controller: Controller,
    restart_ms: u64,
    /// Offers not yet acked.
    unacked: usize,
    poll_scheduled: bool,
}

impl SimJob {
    fn poll_delay(&self, rng: &mut ChaCha8Rng) -> u64 {
        match self.kind {
            ControllerKind::SlowAcker => rng.random_range(3_600_000..=6 * 3_600_000),
            ControllerKind::Veto => DAY_MS,
            _ => rng.random_range(60_000..=600_000),
        }
    }
}

fn check(config: &SimConfig) -> Result<(), SimError> {
    let bad = |field, value, reason| {
        Err(SimError::InvalidConfig {
            field,
            value,
            reason,
        })
    };
    if config.days == 0 {
        return bad("days", 0, "must be positive");
    }
    if config.step_ms == 0 {
        return bad("step_ms", 0, "must be positive");
    }
    if config.identity_lifetime_ms <= config.freshness.renewal_lead_ms {
        return bad(
            "identity_lifetime_ms",
            config.identity_lifetime_ms,
            "must be more than the renewal lead",
        );
    }
    Ok(())
}

/// Runs a seeded fleet through the planner; deterministic for a configuration.
///
/// Jobs of 1 to 100 tasks (70% of 1 to 5, 25% of 6 to 20, 5% of 21 to 100), each with a
/// max-unavailable budget of 1 to a quarter of its tasks, and a controller (see
/// [`ControllerKind`]): a [`ReplicatedService`] over rings of three-replica shards, a
/// budget-respecting acker, a slow acker, or (the first `vetoing_jobs`) a veto. A job's
/// tasks start together, 40% of jobs on one of five shared days (clumps), young enough for
/// the job to restart them all at its pace before they are due. Restarts take 1 to 30
/// minutes; identities are issued for `identity_lifetime_ms` and renewed as the plan says.
///
/// Every figure of the report but `level_rate_per_day` and `overdue_jobs` comes from the
/// run's event log (restart started, restart done, identity renewed), read back by a pass
/// that shares nothing with the planner or TaskControl: it counts each job's restarts in
/// flight against its budget and each container's age, day by day.
///
/// Refused if the configuration is out of range; a planner refusal is a bug, reported.
pub fn simulate(config: &SimConfig) -> Result<SimReport, SimError> {
    check(config)?;
    let mut rng = ChaCha8Rng::seed_from_u64(config.seed);
    let f = config.freshness;
    let cycle = f.cycle_ms();
    // Time starts one max age in, so every initial container start is at or after 0.
    let t0 = f.max_age_ms;
    let end = t0.saturating_add(config.days.saturating_mul(DAY_MS));
    let mut fresh = Freshness::new(f, t0)?;

    // Deployment days that many jobs share.
    let clumps: Vec<u64> = (0..5).map(|_| rng.random_range(0..cycle.max(1))).collect();
    let mut jobs = Vec::with_capacity(config.jobs);
    let mut starts: Vec<u64> = Vec::new();
    let mut task_job: Vec<usize> = Vec::new();
    for j in 0..config.jobs {
        let size: u64 = match rng.random_range(0..100) {
            0..70 => rng.random_range(1..=5),
            70..95 => rng.random_range(6..=20),
            _ => rng.random_range(21..=100),
        };
        let budget = rng.random_range(1..=(size / 4).max(1));
        let kind = if j < config.vetoing_jobs {
            ControllerKind::Veto
        } else {
            match rng.random_range(0..4) {
                0 if size >= 3 => ControllerKind::Replicated,
                0 | 1 => ControllerKind::Acker,
                2 => ControllerKind::Acker,
                _ if size <= 20 => ControllerKind::SlowAcker,
                _ => ControllerKind::Acker,
            }
        };
        // The pace each controller keeps, as the planner's assumption: a poll and a
        // restart per slot; the slow acker uses one slot of the budget's.
        let allowance = match kind {
            ControllerKind::SlowAcker => 7 * 3_600_000 * budget,
            _ => 3_600_000,
        };
        // Containers start young enough for the job to restart them all at its pace
        // before they are due: an older start is a fleet out of policy from the outset,
        // which no planner can bring back in time.
        let youngest_due = cycle.saturating_sub(size.div_ceil(budget) * allowance);
        let age = if rng.random_bool(0.4) {
            clumps[rng.random_range(0..clumps.len())]
        } else {
            rng.random_range(0..cycle.max(1))
        }
        .min(youngest_due);
        let first = task_job.len() as u64;
        let mut clocks = Vec::new();
        for k in 0..size {
            let jitter = rng.random_range(0..3_600_000u64).min(age);
            let started = t0 - age + jitter;
            let expires = t0 + rng.random_range(1..=config.identity_lifetime_ms);
            clocks.push(TaskClock {
                task: TaskId(first + k),
                started_ms: started,
                identity_expires_ms: expires,
            });
            starts.push(started);
            task_job.push(j);
        }
        let id = JobId(j as u64);
        let controller = match kind {
            ControllerKind::Replicated => {
                let tasks: Vec<TaskId> = clocks.iter().map(|c| c.task).collect();
                let shards = (0..tasks.len())
                    .map(|s| Shard {
                        id: ShardId(s as u64),
                        replicas: (0..3).map(|r| tasks[(s + r) % tasks.len()]).collect(),
                        leader: tasks[s],
                    })
                    .collect();
                // Rings of three distinct tasks (jobs of three or more), each led by its first.
                Controller::Replicated(
                    ReplicatedService::new(shards)
                        .map_err(|_| SimError::Internal("a shard layout was refused"))?,
                )
            }
            ControllerKind::Veto => Controller::Veto,
            _ => Controller::Acker {
                budget: index(budget)?,
                acked: BTreeSet::new(),
            },
        };
        // At most 25 (a quarter of 100 tasks).
        let budget = u32::try_from(budget).map_err(|_| SimError::Internal("budget beyond u32"))?;
        fresh.add_job_paced(
            id,
            JobPolicy {
                max_unavailable: budget,
            },
            allowance,
            &clocks,
        )?;
        jobs.push(SimJob {
            id,
            budget,
            kind,
            controller,
            restart_ms: rng.random_range(60_000..=30 * 60_000),
            unacked: 0,
            poll_scheduled: false,
        });
    }

    let mut log: Vec<Logged> = Vec::new();
    let mut events: BinaryHeap<Reverse<(u64, u64, Ev)>> = BinaryHeap::new();
    let mut seq = 0u64;
    let mut push = |events: &mut BinaryHeap<Reverse<(u64, u64, Ev)>>, t: u64, ev: Ev| {
        seq += 1;
        events.push(Reverse((t, seq, ev)));
    };
    let mut renewals = 0u64;
    let mut restarts_by_renewal = 0u64;
    let mut identities_expired = 0u64;
    let mut offers = 0u64;
    let mut overdue_jobs = BTreeSet::new();
    let mut expiry: Vec<u64> = Vec::new();
    for (i, &job) in task_job.iter().enumerate() {
        let v = fresh.task(jobs[job].id, TaskId(i as u64))?;
        expiry.push(v.identity_expires_ms);
    }

    let mut now = t0;
    while now < end {
        while let Some(&Reverse((t, _, ev))) = events.peek() {
            if t > now {
                break;
            }
            events.pop();
            match ev {
                Ev::Poll(j) => {
                    let job = &mut jobs[j];
                    job.poll_scheduled = false;
                    let req = fresh.request(job.id)?;
                    let one = job.kind == ControllerKind::SlowAcker;
                    let resp = job.controller.process(&req, one);
                    job.unacked -= resp.ack.len();
                    let started = fresh.respond(job.id, resp, t)?;
                    for s in started {
                        let task = index(s.op.task.0)?;
                        log.push(Logged {
                            t,
                            job: j,
                            task,
                            what: What::Start,
                        });
                        push(&mut events, t + job.restart_ms, Ev::Done(j, s.op.id, task));
                    }
                    if job.unacked > 0 {
                        let d = job.poll_delay(&mut rng);
                        job.poll_scheduled = true;
                        push(&mut events, t + d, Ev::Poll(j));
                    }
                }
                Ev::Done(j, op, task) => {
                    let job = &mut jobs[j];
                    let started = fresh.complete(job.id, op, t)?;
                    log.push(Logged {
                        t,
                        job: j,
                        task,
                        what: What::Done,
                    });
                    for s in started {
                        let task = index(s.op.task.0)?;
                        log.push(Logged {
                            t,
                            job: j,
                            task,
                            what: What::Start,
                        });
                        push(&mut events, t + job.restart_ms, Ev::Done(j, s.op.id, task));
                    }
                    if job.unacked > 0 && !job.poll_scheduled {
                        let d = job.poll_delay(&mut rng);
                        job.poll_scheduled = true;
                        push(&mut events, t + d, Ev::Poll(j));
                    }
                }
            }
        }
        let plan = fresh.advance(now)?;
        for o in &plan.offers {
            offers += 1;
            let j = index(o.job.0)?;
            let job = &mut jobs[j];
            job.unacked += 1;
            if !job.poll_scheduled {
                let d = job.poll_delay(&mut rng);
                job.poll_scheduled = true;
                push(&mut events, now + d, Ev::Poll(j));
            }
        }
        for r in &plan.renewals {
            let before = fresh.task(r.job, r.task)?;
            let expires = now + config.identity_lifetime_ms;
            fresh.renewed(r.job, r.task, expires)?;
            let after = fresh.task(r.job, r.task)?;
            if before.started_ms != after.started_ms || before.offered != after.offered {
                restarts_by_renewal += 1;
            }
            renewals += 1;
            let i = index(r.task.0)?;
            if let Some(e) = expiry.get_mut(i) {
                *e = expires;
            }
            log.push(Logged {
                t: now,
                job: index(r.job.0)?,
                task: i,
                what: What::Renew,
            });
        }
        if (now - t0) % DAY_MS < config.step_ms {
            identities_expired += expiry.iter().filter(|&&e| e <= now).count() as u64;
        }
        overdue_jobs.extend(plan.overdue.iter().map(|o| o.job));
        now += config.step_ms;
    }

    let budgets: Vec<u32> = jobs.iter().map(|j| j.budget).collect();
    let checked = check_log(&log, &starts, &budgets, t0, config.days, f.max_age_ms)?;
    let warmup_days = cycle.div_ceil(DAY_MS);
    let after: Vec<u64> = checked
        .restarts_per_day
        .iter()
        .skip(index(warmup_days)?)
        .copied()
        .collect();
    let level = fresh.level_rate_per_day();
    let (levelness, mean_over_level) = if after.is_empty() {
        (None, None)
    } else {
        let mean = after.iter().sum::<u64>() as f64 / after.len() as f64;
        let max = after.iter().copied().max().unwrap_or(0) as f64;
        (
            (mean > 0.0).then(|| max / mean),
            (level > 0.0).then(|| mean / level),
        )
    };
    Ok(SimReport {
        jobs: jobs.len(),
        tasks: starts.len(),
        days: config.days,
        max_age_days_seen: checked.oldest_age_days.iter().copied().fold(0.0, f64::max),
        restarts_per_day: checked.restarts_per_day,
        oldest_age_days: checked.oldest_age_days,
        budget_violations: checked.budget_violations,
        renewals,
        restarts_by_renewal: restarts_by_renewal + checked.restarts_not_started,
        identities_expired,
        level_rate_per_day: level,
        warmup_days,
        levelness,
        mean_over_level,
        tasks_over_max_age: checked.tasks_over_max_age,
        overdue_jobs: overdue_jobs.into_iter().collect(),
        offers,
    })
}

/// An id the simulator issued as an index, back to the index.
fn index(id: u64) -> Result<usize, SimError> {
    usize::try_from(id).map_err(|_| SimError::Internal("an id beyond the address space"))
}

struct Checked {
    restarts_per_day: Vec<u64>,
    oldest_age_days: Vec<f64>,
    budget_violations: u64,
    restarts_not_started: u64,
    tasks_over_max_age: u64,
}

/// The independent pass over the log: restarts in flight per job against its budget, each
/// container's age, day by day.
fn check_log(
    log: &[Logged],
    initial_starts: &[u64],
    budgets: &[u32],
    t0: u64,
    days: u64,
    max_age_ms: u64,
) -> Result<Checked, SimError> {
    let n_days = index(days)?;
    let mut restarts_per_day = vec![0u64; n_days];
    let mut oldest_ms = vec![0u64; n_days];
    let mut starts = initial_starts.to_vec();
    let mut down: BTreeMap<usize, BTreeSet<usize>> = BTreeMap::new();
    let mut budget_violations = 0;
    let mut restarts_not_started = 0;
    let mut over: BTreeSet<usize> = BTreeSet::new();
    let mut day = 0usize;
    let day_end = |d: usize| t0 + (d as u64 + 1) * DAY_MS;
    let close_day = |d: usize, starts: &[u64], oldest: &mut [u64], over: &mut BTreeSet<usize>| {
        let e = day_end(d);
        for (i, &s) in starts.iter().enumerate() {
            let age = e - s;
            oldest[d] = oldest[d].max(age);
            if age > max_age_ms {
                over.insert(i);
            }
        }
    };
    for l in log {
        while day < n_days && l.t >= day_end(day) {
            close_day(day, &starts, &mut oldest_ms, &mut over);
            day += 1;
        }
        if day >= n_days {
            break;
        }
        match l.what {
            What::Start => {
                let set = down.entry(l.job).or_default();
                set.insert(l.task);
                if set.len() as u64 > budgets.get(l.job).map_or(0, |&b| u64::from(b)) {
                    budget_violations += 1;
                }
            }
            What::Done => {
                let was_down = down.get_mut(&l.job).is_some_and(|s| s.remove(&l.task));
                if !was_down {
                    restarts_not_started += 1;
                }
                let age = l.t - starts[l.task];
                oldest_ms[day] = oldest_ms[day].max(age);
                if age > max_age_ms {
                    over.insert(l.task);
                }
                starts[l.task] = l.t;
                restarts_per_day[day] += 1;
            }
            What::Renew => {}
        }
    }
    while day < n_days {
        close_day(day, &starts, &mut oldest_ms, &mut over);
        day += 1;
    }
    Ok(Checked {
        restarts_per_day,
        oldest_age_days: oldest_ms
            .iter()
            .map(|&ms| ms as f64 / DAY_MS as f64)
            .collect(),
        budget_violations,
        restarts_not_started,
        tasks_over_max_age: over.len() as u64,
    })
}
