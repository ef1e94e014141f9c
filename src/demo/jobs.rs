//! The built-in jobs: a spec each (what a user writes), and the glue that turns a spec
//! into an allocation request (what twine-sched takes): machine type and host profile
//! from the spec, CPU from `cpu_quota`, memory from `memory_max`.

use twine::sched::taskcontrol::{Shard, ShardId};
use twine::sched::{
    Demand, EntitlementId, FaultLevel, GpuDemand, JobId, Policy, Preferences, Request,
    Requirements, Resources, TaskId,
};
use twine::spec::{Job, JobSpec, UnitSet, translate};

/// A built-in job: its spec and what the spec does not say about placement.
pub(crate) struct BuiltIn {
    /// The spec, TOML.
    pub(crate) spec: &'static str,
    /// Machine types the job may run on when its spec names none.
    pub(crate) machine_types: &'static [&'static str],
    /// GPUs per task.
    pub(crate) gpu: GpuDemand,
    /// How its tasks are laid out.
    pub(crate) prefs: fn() -> Preferences,
}

/// The jobs, in admission order.
pub(crate) const JOBS: [BuiltIn; 4] = [
    BuiltIn {
        spec: r#"# A web service: one task per host, spread over racks, on the web profile.
name = "web"
entitlement = "frontend"
replicas = 150
host_profile = "web"
machine_type = "small"

[task]
command = ["/bin/sh", "-c", "exec sleep infinity", "web", "--port=8080"]

[task.resources]
cpu_quota = 4.0
memory_high = "6G"
memory_max = "8G"

[[task.prestart]]
name = "fetch-config"
command = ["/bin/true"]
timeout = "30s"

[[task.sidecars]]
name = "log-shipper"
command = ["/bin/sh", "-c", "exec sleep infinity"]

[task.health_check]
command = ["/bin/true"]
interval = "10s"
timeout = "2s"
retries = 3
"#,
        machine_types: &[],
        gpu: GpuDemand::None,
        prefs: || {
            Preferences::default()
                .spread(FaultLevel::Rack)
                .max_per_host(1)
        },
    },
    BuiltIn {
        spec: r#"# A batch job: many tasks packed tight on small and big hosts.
name = "batch"
entitlement = "batch"
replicas = 8000

[task]
command = ["/bin/sh", "-c", "exec sleep 3600"]

[task.resources]
cpu_quota = 4.0
memory_max = "12G"

[task.restart]
policy = "on-failure"
delay = "5s"
"#,
        machine_types: &["small", "big"],
        gpu: GpuDemand::None,
        prefs: || Preferences::default().policy(Policy::BestFit),
    },
    BuiltIn {
        spec: r#"# A training job: two whole GPUs per task.
name = "train"
entitlement = "ml"
replicas = 300
machine_type = "gpu"

[task]
command = ["/bin/sh", "-c", "exec sleep infinity", "train", "--epochs=90"]

[task.resources]
cpu_quota = 12.0
memory_max = "96G"
"#,
        machine_types: &[],
        gpu: GpuDemand::Whole(2),
        prefs: || Preferences::default().policy(Policy::BestFit),
    },
    BuiltIn {
        spec: r#"# A replicated cache: 3 replicas of each shard, with a TaskControl controller.
name = "cache"
entitlement = "frontend"
replicas = 96
machine_type = "big"

[task]
command = ["/bin/sh", "-c", "exec sleep infinity", "cache", "--replicas=3"]

[task.resources]
cpu_quota = 12.0
memory_high = "56G"
memory_max = "64G"

[task.kill]
signal = "SIGTERM"
grace_period = "30s"
"#,
        machine_types: &[],
        gpu: GpuDemand::None,
        prefs: || {
            Preferences::default()
                .policy(Policy::BestFit)
                .max_per_host(4)
        },
    },
];

/// Index of the cache in [`JOBS`].
pub(crate) const CACHE: usize = 3;

/// A job admitted: validated, translated, and its demand.
pub(crate) struct Admitted {
    /// The validated job.
    pub(crate) job: Job,
    /// Its units (the same for every task).
    pub(crate) units: UnitSet,
    /// Its id in the allocator.
    pub(crate) id: JobId,
    /// What each task asks for.
    pub(crate) demand: Demand,
    /// Hard requirements.
    pub(crate) require: Requirements,
    /// Soft preferences.
    pub(crate) prefer: Preferences,
}

/// The task ids of job number `index`.
pub(crate) fn task_id(index: usize, task: u32) -> TaskId {
    TaskId(index as u64 * 1_000_000 + u64::from(task))
}

/// Parses, validates and translates built-in job `index`; glues its spec to a demand.
pub(crate) fn admit(index: usize) -> Result<Admitted, String> {
    let b = &JOBS[index];
    let at = |e: &dyn std::fmt::Display| format!("built-in job {index}: {e}");
    let spec = JobSpec::from_toml(b.spec).map_err(|e| at(&e))?;
    let job = spec.validate().map_err(|e| {
        let problems: Vec<String> = e.problems.iter().map(ToString::to_string).collect();
        at(&problems.join("; "))
    })?;
    let units = translate(&job).map_err(|e| at(&e))?;
    let r = &job.task.resources;
    let cpu = u64::from(r.cpu_quota_percent.unwrap_or(100)) * 10;
    let memory_mib = r.memory_max.unwrap_or(1 << 30) >> 20;
    let demand = Demand {
        resources: Resources::new(cpu, memory_mib),
        gpu: b.gpu,
    };
    let types: Vec<&str> = match &job.machine_type {
        Some(t) => vec![t.as_str()],
        None => b.machine_types.to_vec(),
    };
    let mut require = Requirements::default().machine_types(types);
    if let Some(p) = &job.host_profile {
        require = require.host_profile(p);
    }
    Ok(Admitted {
        job,
        units,
        id: JobId(index as u64 + 1),
        demand,
        require,
        prefer: (b.prefs)(),
    })
}

impl Admitted {
    /// A request for `tasks` of this job in entitlement `ent`.
    pub(crate) fn request(
        &self,
        ent: EntitlementId,
        tasks: impl IntoIterator<Item = TaskId>,
    ) -> Request {
        let mut req = Request::new(ent, self.id)
            .require(self.require.clone())
            .prefer(self.prefer);
        for t in tasks {
            req = req.allocate(t, self.demand);
        }
        req
    }
}

/// The cache's shard layout: shard `i` on tasks `i`, `i+1` and `i+2` (ring order), led by
/// task `i`; neighbouring tasks share shards, as a consistent-hashing ring places them.
pub(crate) fn cache_shards(tasks: u32) -> Vec<Shard> {
    (0..tasks)
        .map(|i| Shard {
            id: ShardId(u64::from(i)),
            replicas: (0..3).map(|k| task_id(CACHE, (i + k) % tasks)).collect(),
            leader: task_id(CACHE, i),
        })
        .collect()
}
