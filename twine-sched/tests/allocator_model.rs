//! The online allocator against a shadow model the test holds itself: model-based
//! property tests replay random sequences of allocate, free, resize, host failure, drain,
//! quota changes and profile switches, and check every step independently. The
//! case-by-case tests are in `allocator_scenarios.rs`.

use std::collections::{BTreeMap, BTreeSet};

use proptest::prelude::*;
use twine_sched::rebalance::{Goal, RateLimit, ReBalancer, RebalanceConfig};
use twine_sched::{
    AllocError, Allocator, AllocatorConfig, AttrPredicate, Demand, EntitlementId, FaultLevel,
    GpuDemand, GpuGrant, HostId, HostSpec, HostState, JobId, Owner, Policy, Preferences, Quota,
    Request, Requirements, Resized, Resources, TaskId, Unplaced,
};

// ---- model-based property tests against a shadow model ----
//
// The shadow is held by the test: each task's demand, host, GPU grant and job (whose
// rules are plain data here), each host's capacity, state and profile. Owners are
// derived (a host belongs to the entitlement of the tasks on it, else to the pool).
// After every step the shadow checks by itself that hosts are within capacity (GPUs
// per device), placed tasks meet their job's hard rules and limits, quotas hold, and
// that the allocator's public views agree with it. An unplaced task is checked
// against the shadow too: no eligible host had room at that moment.

#[derive(Debug, Clone)]
struct HostGen {
    cpu: u64,
    mem: u64,
    big: bool,
    gpus: u8,
    gpu_model: bool,
    profile: bool,
    zone: bool,
    rack: usize,
}

fn host_gen() -> impl Strategy<Value = HostGen> {
    (
        2_000u64..16_000,
        2_048u64..32_768,
        any::<bool>(),
        0u8..3,
        any::<bool>(),
        any::<bool>(),
        any::<bool>(),
        0usize..6,
    )
        .prop_map(
            |(cpu, mem, big, gpus, gpu_model, profile, zone, rack)| HostGen {
                cpu,
                mem,
                big,
                gpus,
                gpu_model,
                profile,
                zone,
                rack,
            },
        )
}

#[derive(Debug, Clone)]
enum Op {
    Allocate {
        job: u64,
        tasks: Vec<Demand>,
    },
    Free {
        pick: usize,
    },
    Resize {
        pick: usize,
        demand: Demand,
    },
    Down {
        host: usize,
    },
    Up {
        host: usize,
    },
    Drain {
        host: usize,
    },
    Quota {
        ent: usize,
        small: u32,
        big: u32,
    },
    Switch {
        host: usize,
    },
    /// `Allocator::move_task` of a live task to a host of the caller's choosing.
    Move {
        pick: usize,
        host: usize,
    },
    /// A ReBalancer round, `advance_ms` after the one before.
    Rebalance {
        advance_ms: u64,
        free_hosts: Option<usize>,
    },
}

fn demand_gen() -> impl Strategy<Value = Demand> {
    (
        100u64..7_000,
        100u64..10_000,
        prop_oneof![
            3 => Just(GpuDemand::None),
            1 => (1u16..1000).prop_map(GpuDemand::Shared),
            1 => (1u8..3).prop_map(GpuDemand::Whole),
        ],
    )
        .prop_map(|(cpu, mem, gpu)| Demand {
            resources: Resources::new(cpu, mem),
            gpu,
        })
}

/// Churn: many small tasks come and go, with rebalancing rounds in between.
fn churn_gen() -> impl Strategy<Value = Op> {
    let small = (100u64..2_500, 100u64..4_000).prop_map(|(cpu, mem)| Demand {
        resources: Resources::new(cpu, mem),
        gpu: GpuDemand::None,
    });
    prop_oneof![
        4 => (0u64..5, prop::collection::vec(small, 1..6))
            .prop_map(|(job, tasks)| Op::Allocate { job, tasks }),
        4 => any::<usize>().prop_map(|pick| Op::Free { pick }),
        1 => (any::<usize>(), any::<usize>()).prop_map(|(pick, host)| Op::Move { pick, host }),
        3 => (0u64..900_000, prop::option::of(1usize..4))
            .prop_map(|(advance_ms, free_hosts)| Op::Rebalance { advance_ms, free_hosts }),
    ]
}

fn op_gen() -> impl Strategy<Value = Op> {
    prop_oneof![
        5 => (0u64..5, prop::collection::vec(demand_gen(), 1..5))
            .prop_map(|(job, tasks)| Op::Allocate { job, tasks }),
        2 => any::<usize>().prop_map(|pick| Op::Free { pick }),
        2 => (any::<usize>(), demand_gen()).prop_map(|(pick, demand)| Op::Resize { pick, demand }),
        1 => any::<usize>().prop_map(|host| Op::Down { host }),
        1 => any::<usize>().prop_map(|host| Op::Up { host }),
        1 => any::<usize>().prop_map(|host| Op::Drain { host }),
        1 => (0usize..2, 0u32..6, 0u32..6).prop_map(|(ent, small, big)| Op::Quota { ent, small, big }),
        1 => any::<usize>().prop_map(|host| Op::Switch { host }),
        2 => (any::<usize>(), any::<usize>()).prop_map(|(pick, host)| Op::Move { pick, host }),
        2 => (0u64..900_000, prop::option::of(1usize..4))
            .prop_map(|(advance_ms, free_hosts)| Op::Rebalance { advance_ms, free_hosts }),
    ]
}

/// A host attribute rule.
#[derive(Debug, Clone, Copy)]
enum Zone {
    Any,
    /// `zone` in `["x", "nowhere"]`.
    InX,
    /// `zone` present.
    Exists,
}

/// A job's rules as data, from which both its request and the shadow's checks derive.
#[derive(Debug, Clone, Copy)]
struct Rules {
    ent: usize,
    machine_type: Option<&'static str>,
    gpu_model: Option<&'static str>,
    profile: Option<&'static str>,
    zone: Zone,
    spread: Option<FaultLevel>,
    max_per_host: Option<u32>,
    max_per_rack: Option<u32>,
}

/// Each job has fixed rules, so every kind of requirement and preference is exercised;
/// jobs 0, 2, 4 run in entitlement 0, jobs 1, 3 in entitlement 1.
fn rules(job: u64) -> Rules {
    let base = Rules {
        ent: usize::from(job % 2 == 1),
        machine_type: None,
        gpu_model: None,
        profile: None,
        zone: Zone::Any,
        spread: None,
        max_per_host: None,
        max_per_rack: None,
    };
    match job {
        0 => Rules {
            machine_type: Some("small"),
            spread: Some(FaultLevel::Rack),
            ..base
        },
        1 => Rules {
            profile: Some("p1"),
            max_per_host: Some(1),
            ..base
        },
        2 => Rules {
            gpu_model: Some("g1"),
            max_per_rack: Some(2),
            ..base
        },
        3 => Rules {
            zone: Zone::InX,
            spread: Some(FaultLevel::PowerDomain),
            ..base
        },
        _ => Rules {
            zone: Zone::Exists,
            ..base
        },
    }
}

fn job_request(job: u64, policy: Policy) -> Request {
    let r = rules(job);
    let mut req = Requirements::default();
    if let Some(t) = r.machine_type {
        req = req.machine_types([t]);
    }
    if let Some(m) = r.gpu_model {
        req = req.gpu_models([m]);
    }
    if let Some(p) = r.profile {
        req = req.host_profile(p);
    }
    req = match r.zone {
        Zone::Any => req,
        Zone::InX => req.attribute(AttrPredicate::In(
            "zone".into(),
            vec!["x".into(), "nowhere".into()],
        )),
        Zone::Exists => req.attribute(AttrPredicate::Exists("zone".into())),
    };
    let mut prefs = Preferences::default().policy(policy);
    if let Some(l) = r.spread {
        prefs = prefs.spread(l);
    }
    if let Some(k) = r.max_per_host {
        prefs = prefs.max_per_host(k);
    }
    if let Some(k) = r.max_per_rack {
        prefs = prefs.max_per_rack(k);
    }
    let ent = EntitlementId(u32::try_from(r.ent).expect("0 or 1"));
    Request::new(ent, JobId(job)).require(req).prefer(prefs)
}

/// The quotas of entitlement 0 (machines) and 1 (units), as the test sets them.
fn quota(ent: usize, small: u32, big: u32) -> Quota {
    if ent == 0 {
        Quota::machines([("small", small), ("big", big)])
    } else {
        Quota::Units(Resources::new(
            u64::from(small) * 10_000,
            u64::from(big) * 20_000,
        ))
    }
}

#[derive(Debug, Clone)]
struct ShadowHost {
    spec: HostGen,
    profile: &'static str,
    state: HostState,
}

impl ShadowHost {
    fn capacity(&self) -> Resources {
        Resources::new(self.spec.cpu, self.spec.mem)
    }
    fn machine_type(&self) -> &'static str {
        if self.spec.big { "big" } else { "small" }
    }
    fn gpu_model(&self) -> Option<&'static str> {
        (self.spec.gpus > 0).then_some(if self.spec.gpu_model { "g1" } else { "g2" })
    }
    /// Whether the host meets `r`'s hard requirements other than room.
    fn meets(&self, r: &Rules) -> bool {
        r.machine_type.is_none_or(|t| t == self.machine_type())
            && r.gpu_model.is_none_or(|m| Some(m) == self.gpu_model())
            && r.profile.is_none_or(|p| p == self.profile)
            && match r.zone {
                Zone::Any => true,
                Zone::InX | Zone::Exists => self.spec.zone,
            }
    }
}

#[derive(Debug, Clone)]
struct ShadowTask {
    job: u64,
    demand: Demand,
    host: usize,
    grant: GpuGrant,
}

struct Shadow {
    ids: Vec<HostId>,
    hosts: Vec<ShadowHost>,
    tasks: BTreeMap<TaskId, ShadowTask>,
    /// `(small, big)` of each entitlement's quota (see [`quota`]).
    quotas: [(u32, u32); 2],
}

/// Whether `d` fits on devices with `free` milli each.
fn fits_gpu(free: &[u32], d: GpuDemand) -> bool {
    match d {
        GpuDemand::None => true,
        GpuDemand::Shared(m) => free.iter().any(|&f| f >= u32::from(m)),
        GpuDemand::Whole(n) => free.iter().filter(|&&f| f == 1000).count() >= usize::from(n),
    }
}

impl Shadow {
    fn on(&self, h: usize) -> impl Iterator<Item = (&TaskId, &ShadowTask)> {
        self.tasks.iter().filter(move |(_, t)| t.host == h)
    }

    /// Free CPU and memory and free milli per GPU device, leaving out `except`.
    fn free(&self, h: usize, except: Option<TaskId>) -> (u64, u64, Vec<u32>) {
        let host = &self.hosts[h];
        let (mut cpu, mut mem) = (host.spec.cpu, host.spec.mem);
        let mut gpus = vec![1000u32; usize::from(host.spec.gpus)];
        for (_, t) in self.on(h).filter(|(id, _)| Some(**id) != except) {
            cpu = cpu.wrapping_sub(t.demand.resources.cpu_milli);
            mem = mem.wrapping_sub(t.demand.resources.memory_mib);
            for &(dev, m) in &t.grant.devices {
                if let Some(g) = gpus.get_mut(usize::from(dev)) {
                    *g = g.wrapping_sub(u32::from(m));
                }
            }
        }
        (cpu, mem, gpus)
    }

    fn owner(&self, h: usize) -> Option<usize> {
        self.on(h).map(|(_, t)| rules(t.job).ent).next()
    }

    fn owned(&self, ent: usize) -> Vec<usize> {
        (0..self.hosts.len())
            .filter(|&h| self.owner(h) == Some(ent))
            .collect()
    }

    /// Whether `ent` holding `hosts` stays within the quota `(small, big)`.
    fn within(&self, ent: usize, hosts: &[usize], (small, big): (u32, u32)) -> bool {
        if ent == 0 {
            let count = |t: &str| {
                hosts
                    .iter()
                    .filter(|&&h| self.hosts[h].machine_type() == t)
                    .count()
            };
            count("small") <= small as usize && count("big") <= big as usize
        } else {
            let cpu: u64 = hosts.iter().map(|&h| self.hosts[h].spec.cpu).sum();
            let mem: u64 = hosts.iter().map(|&h| self.hosts[h].spec.mem).sum();
            cpu <= u64::from(small) * 10_000 && mem <= u64::from(big) * 20_000
        }
    }

    fn tasks_of(&self, job: u64, except: Option<TaskId>) -> impl Iterator<Item = &ShadowTask> {
        self.tasks
            .iter()
            .filter(move |(id, t)| t.job == job && Some(**id) != except)
            .map(|(_, t)| t)
    }

    /// A host that could take a task of `job` with demand `d` (`moving` is the task
    /// itself when it is being moved: its own counts do not hold it back).
    fn eligible(&self, job: u64, d: &Demand, moving: Option<TaskId>) -> Option<usize> {
        (0..self.hosts.len()).find(|&h| self.eligible_on(job, d, moving, h))
    }

    /// Whether host `h` could take a task of `job` with demand `d`.
    fn eligible_on(&self, job: u64, d: &Demand, moving: Option<TaskId>, h: usize) -> bool {
        let r = rules(job);
        let host = &self.hosts[h];
        let owner_ok = match self.owner(h) {
            Some(e) => e == r.ent,
            None => {
                let mut held = self.owned(r.ent);
                held.push(h);
                self.within(r.ent, &held, self.quotas[r.ent])
            }
        };
        let on_host = self.tasks_of(job, moving).filter(|t| t.host == h).count();
        let in_rack = self
            .tasks_of(job, moving)
            .filter(|t| self.hosts[t.host].spec.rack == host.spec.rack)
            .count();
        let (cpu, mem, gpus) = self.free(h, None);
        host.state == HostState::Up
            && owner_ok
            && host.meets(&r)
            && r.max_per_host.is_none_or(|k| on_host < k as usize)
            && r.max_per_rack.is_none_or(|k| in_rack < k as usize)
            && d.resources.cpu_milli <= cpu
            && d.resources.memory_mib <= mem
            && fits_gpu(&gpus, d.gpu)
    }

    /// An unplaced task must be a true negative.
    fn check_unplaced(
        &self,
        job: u64,
        d: &Demand,
        moving: Option<TaskId>,
        why: &Unplaced,
    ) -> Result<(), String> {
        if why.available != 0 {
            return Err(format!(
                "unplaced with {} hosts available: {why}",
                why.available
            ));
        }
        match self.eligible(job, d, moving) {
            Some(h) => Err(format!(
                "job {job} demand {d:?} unplaced ({why}) but {} had room",
                self.ids[h]
            )),
            None => Ok(()),
        }
    }

    /// Whether the task could have grown where it is.
    fn fits_in_place(&self, t: TaskId, d: &Demand) -> bool {
        let s = &self.tasks[&t];
        let (cpu, mem, gpus) = self.free(s.host, Some(t));
        self.hosts[s.host].state == HostState::Up
            && d.resources.cpu_milli <= cpu
            && d.resources.memory_mib <= mem
            && fits_gpu(&gpus, d.gpu)
    }

    fn place(&mut self, t: TaskId, job: u64, demand: Demand, to: HostId, grant: &GpuGrant) {
        let host = self.index(to);
        self.tasks.insert(
            t,
            ShadowTask {
                job,
                demand,
                host,
                grant: grant.clone(),
            },
        );
    }

    fn index(&self, id: HostId) -> usize {
        self.ids
            .iter()
            .position(|&h| h == id)
            .expect("the allocator names a host it has")
    }

    fn owners(&self) -> Vec<Option<usize>> {
        (0..self.hosts.len()).map(|h| self.owner(h)).collect()
    }

    /// Hosts that joined and left an entitlement between `before` and now must be the
    /// ones the allocator reported.
    fn check_moves(
        &self,
        before: &[Option<usize>],
        joined: &[HostId],
        released: &[HostId],
    ) -> Result<(), String> {
        for (h, (was, now)) in before.iter().zip(self.owners()).enumerate() {
            let id = self.ids[h];
            let (j, r) = (joined.contains(&id), released.contains(&id));
            let ok = match (was, now) {
                (None, Some(_)) => j,
                (Some(_), None) => r,
                (None, None) => j == r,
                (Some(_), Some(_)) => j == r,
            };
            if !ok {
                return Err(format!(
                    "{id}: owner {was:?} -> {now:?}, reported joined {j}, released {r}"
                ));
            }
        }
        Ok(())
    }

    /// Everything the shadow knows, checked by itself and against the allocator's views.
    fn check(&self, a: &Allocator) -> Result<(), String> {
        for (h, host) in self.hosts.iter().enumerate() {
            let id = self.ids[h];
            let mut ents: Vec<usize> = self.on(h).map(|(_, t)| rules(t.job).ent).collect();
            ents.dedup();
            if ents.len() > 1 {
                return Err(format!("{id} runs tasks of entitlements {ents:?}"));
            }
            let used_cpu: u64 = self.on(h).map(|(_, t)| t.demand.resources.cpu_milli).sum();
            let used_mem: u64 = self.on(h).map(|(_, t)| t.demand.resources.memory_mib).sum();
            if used_cpu > host.spec.cpu || used_mem > host.spec.mem {
                return Err(format!("{id} over capacity: {used_cpu}m, {used_mem} MiB"));
            }
            let mut per_device = vec![0u32; usize::from(host.spec.gpus)];
            for (t, s) in self.on(h) {
                let devices: BTreeSet<u8> = s.grant.devices.iter().map(|d| d.0).collect();
                let shape_ok = devices.len() == s.grant.devices.len()
                    && match s.demand.gpu {
                        GpuDemand::Shared(m) => {
                            s.grant.devices.as_slice() == [(s.grant.devices[0].0, m)]
                        }
                        GpuDemand::Whole(n) => {
                            devices.len() == usize::from(n)
                                && s.grant.devices.iter().all(|d| d.1 == 1000)
                        }
                        GpuDemand::None => s.grant.devices.is_empty(),
                    };
                if !shape_ok {
                    return Err(format!("{t}: grant {:?} for {:?}", s.grant, s.demand.gpu));
                }
                for &(dev, m) in &s.grant.devices {
                    let slot = per_device
                        .get_mut(usize::from(dev))
                        .ok_or(format!("{t}: GPU {dev} not on {id}"))?;
                    *slot += u32::from(m);
                }
            }
            if per_device.iter().any(|&u| u > 1000) {
                return Err(format!("{id} GPU devices over a whole: {per_device:?}"));
            }
            for (t, s) in self.on(h) {
                let r = rules(s.job);
                if host.state == HostState::Down || !host.meets(&r) {
                    return Err(format!("{t} of job {} on {id} ({host:?})", s.job));
                }
                let on_host = self.tasks_of(s.job, None).filter(|o| o.host == h).count();
                let in_rack = self
                    .tasks_of(s.job, None)
                    .filter(|o| self.hosts[o.host].spec.rack == host.spec.rack)
                    .count();
                if r.max_per_host.is_some_and(|k| on_host > k as usize)
                    || r.max_per_rack.is_some_and(|k| in_rack > k as usize)
                {
                    return Err(format!("job {} over its limits on {id}", s.job));
                }
            }
            // The allocator's view of the host.
            let v = a.host(id).map_err(|e| e.to_string())?;
            let (cpu, mem, gpus) = self.free(h, None);
            let gpu_view: Vec<u32> = v.gpus().free().iter().map(|&f| u32::from(f)).collect();
            let owner = match self.owner(h) {
                None => Owner::FreePool,
                Some(e) => Owner::Entitlement(EntitlementId(u32::try_from(e).expect("0 or 1"))),
            };
            let mut tasks: Vec<TaskId> = v.tasks().to_vec();
            tasks.sort_unstable();
            let want: Vec<TaskId> = self.on(h).map(|(t, _)| *t).collect();
            if v.capacity() != host.capacity()
                || v.free() != Resources::new(cpu, mem)
                || gpu_view != gpus
                || v.state() != host.state
                || v.owner() != owner
                || v.profile() != host.profile
                || v.machine_type() != host.machine_type()
                || tasks != want
            {
                return Err(format!(
                    "{id}: the allocator sees free {:?}, GPUs {gpu_view:?}, {:?}, {:?}, {}, tasks {tasks:?}; \
                     the shadow free ({cpu}, {mem}), GPUs {gpus:?}, {:?}, {owner:?}, {}, tasks {want:?}",
                    v.free(),
                    v.state(),
                    v.owner(),
                    v.profile(),
                    host.state,
                    host.profile,
                ));
            }
        }
        for (e, &q) in self.quotas.iter().enumerate() {
            let owned = self.owned(e);
            if !self.within(e, &owned, q) {
                return Err(format!("entitlement {e} over its quota {q:?}: {owned:?}"));
            }
            let ent = EntitlementId(u32::try_from(e).expect("0 or 1"));
            let want: Vec<HostId> = owned.iter().map(|&h| self.ids[h]).collect();
            let have = a.entitlement_hosts(ent).map_err(|e| e.to_string())?;
            if have != want {
                return Err(format!("{ent}: allocator holds {have:?}, shadow {want:?}"));
            }
        }
        for (t, s) in &self.tasks {
            match a.task(*t) {
                Ok((h, g)) if h == self.ids[s.host] && *g == s.grant => {}
                other => return Err(format!("{t}: allocator says {other:?}, shadow {s:?}")),
            }
        }
        if a.task_count() != self.tasks.len() {
            return Err(format!(
                "{} tasks placed, shadow {}",
                a.task_count(),
                self.tasks.len()
            ));
        }
        Ok(())
    }
}

/// Runs `ops`, checking the shadow and the allocator's own invariants after each step;
/// returns a transcript of outcomes.
fn run(hosts: &[HostGen], ops: &[Op], policy: Policy, seed: u64) -> Result<Vec<String>, String> {
    let mut a = Allocator::new(
        AllocatorConfig::default()
            .with_seed(seed)
            .with_candidates(3),
    );
    let initial = [(4, 3), (4, 4)];
    let ents = [
        a.add_entitlement("e0", quota(0, initial[0].0, initial[0].1))
            .expect("valid by construction"),
        a.add_entitlement("e1", quota(1, initial[1].0, initial[1].1))
            .expect("valid by construction"),
    ];
    let ids: Vec<HostId> = hosts
        .iter()
        .map(|g| {
            let mut s = HostSpec::new(Resources::new(g.cpu, g.mem))
                .machine_type(if g.big { "big" } else { "small" })
                .profile(if g.profile { "p1" } else { "p2" })
                .domain([
                    "r",
                    &format!("dc{}", g.rack % 2),
                    &format!("p{}", g.rack % 3),
                    &format!("rack{}", g.rack),
                ]);
            if g.gpus > 0 {
                s = s.gpus(g.gpus, if g.gpu_model { "g1" } else { "g2" });
            }
            if g.zone {
                s = s.attribute("zone", "x");
            }
            a.add_host(&s).expect("valid by construction")
        })
        .collect();
    let mut shadow = Shadow {
        ids: ids.clone(),
        hosts: hosts
            .iter()
            .map(|g| ShadowHost {
                spec: g.clone(),
                profile: if g.profile { "p1" } else { "p2" },
                state: HostState::Up,
            })
            .collect(),
        tasks: BTreeMap::new(),
        quotas: initial,
    };
    let fail = |e: AllocError| e.to_string();
    let mut rebalancer = ReBalancer::greedy(
        RebalanceConfig::default()
            .with_move_budget(MOVE_BUDGET)
            .with_rate_limit(RATE_LIMIT),
    )
    .map_err(|e| e.to_string())?;
    let mut now_ms = 0u64;
    // (time, moves) of every round, for the rate-limit check.
    let mut rounds: Vec<(u64, usize)> = Vec::new();
    let mut next = 0u64;
    let mut log = Vec::new();
    for op in ops {
        let before = shadow.owners();
        let live: Vec<TaskId> = shadow.tasks.keys().copied().collect();
        let line = match op {
            Op::Allocate { job, tasks } => {
                let mut req = job_request(*job, policy);
                for d in tasks {
                    req = req.allocate(TaskId(next), *d);
                    next += 1;
                }
                let out = a.apply(&req).map_err(fail)?;
                for (t, d) in &req.allocate {
                    if let Some(p) = out.placed.iter().find(|p| p.task == *t) {
                        shadow.place(*t, *job, *d, p.host, &p.gpus);
                    } else if let Some((_, why)) = out.unplaced.iter().find(|u| u.0 == *t) {
                        shadow.check_unplaced(*job, d, None, why)?;
                    } else {
                        return Err(format!("{t} neither placed nor unplaced: {out:?}"));
                    }
                }
                shadow.check_moves(&before, &out.hosts_joined, &out.hosts_released)?;
                format!("{out:?}")
            }
            Op::Free { pick } if !live.is_empty() => {
                let t = live[pick % live.len()];
                let job = shadow.tasks[&t].job;
                let out = a.apply(&job_request(job, policy).free(t)).map_err(fail)?;
                if out.freed != [t] {
                    return Err(format!("freed {:?}, not {t}", out.freed));
                }
                shadow.tasks.remove(&t);
                shadow.check_moves(&before, &out.hosts_joined, &out.hosts_released)?;
                format!("{out:?}")
            }
            Op::Resize { pick, demand } if !live.is_empty() => {
                let t = live[pick % live.len()];
                let s = shadow.tasks[&t].clone();
                let out = a.resize(t, *demand).map_err(fail)?;
                match &out {
                    Resized::InPlace { gpus } => {
                        shadow.place(t, s.job, *demand, shadow.ids[s.host], gpus);
                    }
                    Resized::Moved {
                        moved,
                        hosts_joined,
                        hosts_released,
                    } => {
                        if shadow.fits_in_place(t, demand) || moved.from != shadow.ids[s.host] {
                            return Err(format!("{t} moved though it fit in place: {out:?}"));
                        }
                        shadow.place(t, s.job, *demand, moved.to, &moved.gpus);
                        shadow.check_moves(&before, hosts_joined, hosts_released)?;
                    }
                    Resized::Unplaced(why) => {
                        if shadow.fits_in_place(t, demand) {
                            return Err(format!("{t} fit in place: {out:?}"));
                        }
                        shadow.check_unplaced(s.job, demand, Some(t), why)?;
                    }
                    _ => return Err(format!("unknown outcome {out:?}")),
                }
                format!("{out:?}")
            }
            Op::Down { host } | Op::Drain { host } => {
                let h = host % ids.len();
                let down = matches!(op, Op::Down { .. });
                let order = a.host(ids[h]).map_err(fail)?.tasks().to_vec();
                shadow.hosts[h].state = if down {
                    HostState::Down
                } else {
                    HostState::Draining
                };
                let ev = if down {
                    a.host_down(ids[h])
                } else {
                    a.drain(ids[h])
                }
                .map_err(fail)?;
                for t in order {
                    let s = shadow.tasks[&t].clone();
                    if let Some(m) = ev.moved.iter().find(|m| m.task == t) {
                        if m.from != ids[h] {
                            return Err(format!("{t} moved from {}, not {}", m.from, ids[h]));
                        }
                        shadow.place(t, s.job, s.demand, m.to, &m.gpus);
                    } else if let Some((_, why)) = ev.unplaced.iter().find(|u| u.0 == t) {
                        shadow.check_unplaced(s.job, &s.demand, Some(t), why)?;
                        if down {
                            shadow.tasks.remove(&t);
                        }
                    } else {
                        return Err(format!("{t} neither moved nor unplaced: {ev:?}"));
                    }
                }
                shadow.check_moves(&before, &ev.hosts_joined, &ev.hosts_released)?;
                format!("{ev:?}")
            }
            Op::Up { host } => {
                let h = host % ids.len();
                a.host_up(ids[h]).map_err(fail)?;
                shadow.hosts[h].state = HostState::Up;
                String::from("up")
            }
            Op::Quota { ent, small, big } => {
                let r = a.set_quota(ents[*ent], quota(*ent, *small, *big));
                let fits = shadow.within(*ent, &shadow.owned(*ent), (*small, *big));
                match (&r, fits) {
                    (Ok(()), true) => shadow.quotas[*ent] = (*small, *big),
                    (Err(AllocError::QuotaBelowUsage { .. }), false) => {}
                    _ => return Err(format!("set_quota answered {r:?}; shadow: fits {fits}")),
                }
                format!("{r:?}")
            }
            Op::Switch { host } => {
                let h = host % ids.len();
                let r = a.apply_profile_switch(ids[h], "p1");
                match (&r, shadow.owner(h)) {
                    (Ok(()), None) => shadow.hosts[h].profile = "p1",
                    (Err(AllocError::NotInFreePool(_)), Some(_)) => {}
                    _ => return Err(format!("profile switch of {} answered {r:?}", ids[h])),
                }
                format!("{r:?}")
            }
            Op::Move { pick, host } if !live.is_empty() => {
                let t = live[pick % live.len()];
                let s = shadow.tasks[&t].clone();
                let h = host % ids.len();
                let may = h != s.host && shadow.eligible_on(s.job, &s.demand, Some(t), h);
                let r = a.move_task(t, ids[h]);
                match (&r, may) {
                    (Ok(done), true) => {
                        if done.moved.from != ids[s.host] || done.moved.to != ids[h] {
                            return Err(format!("{t}: {done:?}"));
                        }
                        shadow.place(t, s.job, s.demand, ids[h], &done.moved.gpus);
                        shadow.check_moves(
                            &before,
                            &Vec::from_iter(done.host_joined),
                            &Vec::from_iter(done.host_released),
                        )?;
                    }
                    (Err(AllocError::MoveRefused { .. }), false) => {}
                    (Err(AllocError::MoveToSameHost { .. }), false) if h == s.host => {}
                    _ => {
                        return Err(format!(
                            "move of {t} to {} answered {r:?}; shadow: may {may}",
                            ids[h]
                        ));
                    }
                }
                format!("{r:?}")
            }
            Op::Rebalance {
                advance_ms,
                free_hosts,
            } => {
                now_ms += advance_ms;
                let goal = match free_hosts {
                    None => Goal::Compact,
                    Some(count) => Goal::FreeHosts {
                        count: *count,
                        machine_type: None,
                    },
                };
                let round = rebalancer
                    .round(&mut a, &goal, now_ms)
                    .map_err(|e| e.to_string())?;
                if round.moved.len() > MOVE_BUDGET.min(round.budget) {
                    return Err(format!(
                        "{} moves over the budget: {round:?}",
                        round.moved.len()
                    ));
                }
                for m in &round.moved {
                    let s = shadow.tasks[&m.task].clone();
                    if m.from != shadow.ids[s.host] {
                        return Err(format!(
                            "{} moved from {}, shadow has it on {}",
                            m.task, m.from, shadow.ids[s.host]
                        ));
                    }
                    if !shadow.eligible_on(s.job, &s.demand, Some(m.task), shadow.index(m.to)) {
                        return Err(format!(
                            "{} moved to {}, which the shadow says could not take it",
                            m.task, m.to
                        ));
                    }
                    shadow.place(m.task, s.job, s.demand, m.to, &m.gpus);
                }
                // Hosts change owner exactly as the round reports; only respreading takes
                // hosts from the pool.
                shadow.check_moves(&before, &round.hosts_joined, &round.hosts_released)?;
                if !round.hosts_joined.is_empty() && free_hosts.is_some() {
                    return Err(format!("freeing hosts took hosts from the pool: {round:?}"));
                }
                rounds.push((now_ms, round.moved.len()));
                check_rate_limit(&rounds)?;
                format!("{round:?}")
            }
            _ => String::new(),
        };
        shadow.check(&a).map_err(|e| format!("after {op:?}: {e}"))?;
        a.check_invariants()
            .map_err(|e| format!("after {op:?}: {e}"))?;
        log.push(line);
    }
    Ok(log)
}

const MOVE_BUDGET: usize = 6;
const RATE_LIMIT: RateLimit = RateLimit {
    per_hour: 10,
    burst: 3,
};

/// A token bucket of `burst` refilled at `per_hour` allows, in any window from one
/// round to a later one, at most `burst + per_hour * window / 1 h` moves.
fn check_rate_limit(rounds: &[(u64, usize)]) -> Result<(), String> {
    for (i, &(start, _)) in rounds.iter().enumerate() {
        let mut moves = 0u128;
        for &(end, n) in &rounds[i..] {
            moves += n as u128;
            let allowed = u128::from(RATE_LIMIT.burst)
                + u128::from(RATE_LIMIT.per_hour) * u128::from(end - start) / 3_600_000;
            if moves > allowed {
                return Err(format!(
                    "{moves} moves from {start} ms to {end} ms; the rate limit allows {allowed}"
                ));
            }
        }
    }
    Ok(())
}

fn policy_gen() -> impl Strategy<Value = Policy> {
    prop::sample::select(Policy::ALL.to_vec())
}

/// 200 cases, or `PROPTEST_CASES` for a longer run.
fn cases() -> u32 {
    std::env::var("PROPTEST_CASES").map_or(200, |v| {
        v.parse().expect("PROPTEST_CASES is a number of cases")
    })
}

proptest! {
    #![proptest_config(ProptestConfig { cases: cases(), ..ProptestConfig::default() })]

    #[test]
    fn shadow_model_agrees_after_every_step(
        hosts in prop::collection::vec(host_gen(), 1..12),
        ops in prop::collection::vec(op_gen(), 1..40),
        policy in policy_gen(),
        seed in any::<u64>(),
    ) {
        run(&hosts, &ops, policy, seed).map_err(TestCaseError::fail)?;
    }

    /// Rebalancing under churn, with the policy that spreads most (so rounds have hosts
    /// to empty): every move checked by the shadow, the budget and the rate limit held.
    #[test]
    fn rebalancing_under_churn_keeps_every_rule(
        hosts in prop::collection::vec(host_gen(), 2..16),
        ops in prop::collection::vec(churn_gen(), 1..60),
        seed in any::<u64>(),
    ) {
        run(&hosts, &ops, Policy::Spread, seed).map_err(TestCaseError::fail)?;
    }

    #[test]
    fn same_input_and_seed_give_the_same_result(
        hosts in prop::collection::vec(host_gen(), 1..12),
        ops in prop::collection::vec(op_gen(), 1..30),
        policy in policy_gen(),
        seed in any::<u64>(),
    ) {
        let first = run(&hosts, &ops, policy, seed).map_err(TestCaseError::fail)?;
        let second = run(&hosts, &ops, policy, seed).map_err(TestCaseError::fail)?;
        prop_assert_eq!(first, second);
    }
}
