//! Maintenance on the placed region: a rack drained through TaskControl, with the
//! cache's own controller deciding which of its moves go when, and a live host update
//! rolled out over the region in waves.

use std::cmp::Reverse;
use std::collections::{BTreeMap, BinaryHeap};

use twine::sched::drain::{Drain, DrainEvent, DrainSettings, Phase, ProfileSide};
use twine::sched::rollout::{
    Action, HostStep, PlanConfig, RolloutConfig, Runner, UpdateKind, plan,
};
use twine::sched::taskcontrol::{OpId, ReplicatedService, TaskControlRequest, TaskControlResponse};
use twine::sched::{Allocator, FaultLevel, HostId, HostState, JobId, TaskId};

const MIN: u64 = 60_000;

/// A drain that only drains: the rack comes back with the profile it had.
struct NoSwitch;

impl ProfileSide for NoSwitch {
    type Error = std::convert::Infallible;
    fn switch(&mut self, _host: HostId, _profile: &str) -> Result<(), Self::Error> {
        Ok(())
    }
}

/// What the rack drain did.
pub(crate) struct RackDrain {
    /// The rack.
    pub(crate) rack: String,
    /// Its hosts.
    pub(crate) hosts: usize,
    /// Tasks on it before.
    pub(crate) tasks: usize,
    /// Tasks moved off, by job name.
    pub(crate) moved: BTreeMap<String, usize>,
    /// Tasks stopped at the deadline.
    pub(crate) stopped: usize,
    /// Cache moves the cache's controller held back (summed over its answers).
    pub(crate) held_back: usize,
    /// Cache tasks on the rack.
    pub(crate) cache_tasks: usize,
    /// Most replicas of one shard moving at once (the controller keeps it at 1).
    pub(crate) max_replicas_moving: usize,
    /// Minutes until every host was empty.
    pub(crate) minutes: u64,
    /// Each minute: tasks left on the rack.
    pub(crate) left: Vec<usize>,
}

/// Drains the rack with the most tasks of `cache` through TaskControl: every job but
/// the cache approves every move; the cache answers with `controller`.
pub(crate) fn drain_rack(
    alloc: &mut Allocator,
    cache: JobId,
    cache_tasks: &[TaskId],
    mut controller: ReplicatedService,
    shards: &[Vec<TaskId>],
    names: &BTreeMap<JobId, String>,
) -> Result<RackDrain, String> {
    let mut per_rack: BTreeMap<String, usize> = BTreeMap::new();
    for &t in cache_tasks {
        let (host, _) = alloc.task(t).map_err(|e| e.to_string())?;
        let view = alloc.host(host).map_err(|e| e.to_string())?;
        *per_rack
            .entry(view.domain(FaultLevel::Rack).to_owned())
            .or_default() += 1;
    }
    let (rack, cache_on_rack) = per_rack
        .iter()
        .max_by_key(|(rack, n)| (**n, Reverse((*rack).clone())))
        .map(|(r, n)| (r.clone(), *n))
        .ok_or("the cache has no task placed")?;
    let mut hosts = Vec::new();
    let mut tasks = 0;
    for i in 0..alloc.host_count() {
        let id = HostId(u32::try_from(i).map_err(|e| e.to_string())?);
        let view = alloc.host(id).map_err(|e| e.to_string())?;
        if view.domain(FaultLevel::Rack) == rack && view.state() == HostState::Up {
            tasks += view.tasks().len();
            hosts.push(id);
        }
    }
    let deadline = 4 * 60 * MIN;
    let mut drains = Vec::new();
    for &h in &hosts {
        let settings = DrainSettings::new(deadline, "rack maintenance").max_unavailable(8);
        drains.push(Drain::start(alloc, h, settings, 0).map_err(|e| e.to_string())?);
    }
    let mut out = RackDrain {
        rack,
        hosts: hosts.len(),
        tasks,
        moved: BTreeMap::new(),
        stopped: 0,
        held_back: 0,
        cache_tasks: cache_on_rack,
        max_replicas_moving: 0,
        minutes: 0,
        left: vec![tasks],
    };
    let mut now = 0;
    while drains.iter().any(|d| d.phase() != Phase::Done) && now <= deadline {
        now += MIN;
        // Cache moves started this minute, to count replicas of a shard moving at once.
        let mut moving: Vec<TaskId> = Vec::new();
        for (k, d) in drains.iter_mut().enumerate() {
            // Each drain numbers its operations from 0; the one controller sees them all.
            let base = (k as u64 + 1) << 32;
            for req in d.requests() {
                let resp = if req.job == cache {
                    let asked = req.request.len();
                    let global = shift(&req, base);
                    let r = controller.process(&global);
                    out.held_back += asked - r.ack.len();
                    TaskControlResponse {
                        sequence: r.sequence,
                        ack: r.ack.iter().map(|o| OpId(o.0 - base)).collect(),
                    }
                } else {
                    TaskControlResponse {
                        sequence: req.sequence,
                        ack: req.request.iter().map(|op| op.id).collect(),
                    }
                };
                let events = d
                    .respond(alloc, req.job, resp, now)
                    .map_err(|e| e.to_string())?;
                record(&events, alloc, names, &mut out, &mut moving)?;
            }
            let events = d
                .tick(alloc, &mut NoSwitch, now)
                .map_err(|e| e.to_string())?;
            record(&events, alloc, names, &mut out, &mut moving)?;
        }
        for shard in shards {
            let n = shard.iter().filter(|t| moving.contains(t)).count();
            out.max_replicas_moving = out.max_replicas_moving.max(n);
        }
        let left = drains
            .iter()
            .map(|d| match d.phase() {
                Phase::Draining { tasks_left } => tasks_left,
                _ => 0,
            })
            .sum();
        out.left.push(left);
        out.minutes = now / MIN;
    }
    Ok(out)
}

/// `req` with its operation ids moved up by `base`.
fn shift(req: &TaskControlRequest, base: u64) -> TaskControlRequest {
    let mut r = req.clone();
    for op in &mut r.request {
        op.id = OpId(op.id.0 + base);
    }
    for c in &mut r.completed {
        c.op.id = OpId(c.op.id.0 + base);
    }
    r
}

fn record(
    events: &[DrainEvent],
    alloc: &Allocator,
    names: &BTreeMap<JobId, String>,
    out: &mut RackDrain,
    moving: &mut Vec<TaskId>,
) -> Result<(), String> {
    for e in events {
        match e {
            DrainEvent::Moved(m) => {
                let job = alloc.task_view(m.task).map_err(|e| e.to_string())?.job;
                let name = names.get(&job).cloned().unwrap_or_else(|| job.to_string());
                *out.moved.entry(name).or_default() += 1;
                moving.push(m.task);
            }
            DrainEvent::Stopped { .. } => out.stopped += 1,
            _ => {}
        }
    }
    Ok(())
}

/// What the rollout did.
pub(crate) struct Rollout {
    /// Hosts in the plan.
    pub(crate) hosts: usize,
    /// Hosts updated.
    pub(crate) updated: usize,
    /// The waves: size of each.
    pub(crate) waves: Vec<usize>,
    /// (simulated hours, hosts updated) as the rollout went.
    pub(crate) progress: Vec<(f64, usize)>,
    /// Simulated hours to the end.
    pub(crate) hours: f64,
    /// Hosts not updated at the end.
    pub(crate) trailing: usize,
}

enum Due {
    Report(HostId, HostStep),
    Gate(usize),
}

/// A live update (no reboot, no drain) across the region, in waves, with 2 hosts per
/// rack, 20 per power domain and 200 per datacenter in flight, each host taking 2 to 10
/// minutes to update and 1 to verify, each wave's health gate answered after 30 minutes.
pub(crate) fn rollout(alloc: &mut Allocator) -> Result<Rollout, String> {
    let waves = plan(alloc, &PlanConfig::default()).map_err(|e| e.to_string())?;
    let sizes = waves.waves.iter().map(|w| w.hosts.len()).collect();
    let hosts = waves.host_count();
    let mut runner = Runner::new(alloc, waves, RolloutConfig::new(UpdateKind::Live))
        .map_err(|e| e.to_string())?;
    let mut due: BinaryHeap<Reverse<(u64, u64, usize)>> = BinaryHeap::new();
    let mut dues: Vec<Due> = Vec::new();
    let mut now = 0;
    let mut actions = runner.step(alloc, now).map_err(|e| e.to_string())?;
    let mut progress = vec![(0.0, 0)];
    let mut seq = 0u64;
    loop {
        for a in actions.drain(..) {
            let (after, what) = match a {
                Action::Do { host, step } => {
                    let minutes = match step {
                        HostStep::Update => 2 + u64::from(host.0.wrapping_mul(2_654_435_761) % 9),
                        _ => 1,
                    };
                    (minutes * MIN, Due::Report(host, step))
                }
                Action::CheckGate { wave } => (30 * MIN, Due::Gate(wave)),
                _ => continue,
            };
            seq += 1;
            due.push(Reverse((now + after, seq, dues.len())));
            dues.push(what);
        }
        let Some(Reverse((t, _, i))) = due.pop() else {
            match runner.next_wakeup() {
                Some(t) if t > now => {
                    now = t;
                    actions = runner.step(alloc, now).map_err(|e| e.to_string())?;
                    continue;
                }
                _ => break,
            }
        };
        now = t;
        actions = match dues[i] {
            Due::Report(host, step) => runner.report(alloc, host, step, true, now),
            Due::Gate(wave) => runner.gate(alloc, wave, true, now),
        }
        .map_err(|e| e.to_string())?;
        let updated = runner.updated().len();
        if progress.last().is_none_or(|p| p.1 != updated) {
            progress.push((now as f64 / 3_600_000.0, updated));
        }
    }
    let trailing = runner.trailing(alloc).map_err(|e| e.to_string())?.len();
    Ok(Rollout {
        hosts,
        updated: runner.updated().len(),
        waves: sizes,
        progress,
        hours: now as f64 / 3_600_000.0,
        trailing,
    })
}
