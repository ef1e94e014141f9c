//! The demo's steps, in order, each on the engines of the crates; what they found goes
//! into an [`Outcome`] for the report.

use std::collections::BTreeMap;
use std::path::Path;

use serde_json::{Value, json};
use twine::oomd::senpai::SenpaiConfig;
use twine::oomd::sim::{SimReport, Workload, simulate};
use twine::profiles::apply::{self, ApplyPolicy, MissingKeys};
use twine::profiles::host::HostRoot;
use twine::profiles::plan::plan;
use twine::profiles::profile::{Format, Profile};
use twine::sched::taskcontrol::ReplicatedService;
use twine::sched::{Allocator, HostId, JobId, Owner, ProfileSwitch, TaskId};
use twine::spec::verify::{VerifyError, verify};

use super::Progress;
use super::jobs::{self, CACHE, JOBS};
use super::maintenance::{self, RackDrain, Rollout};
use super::region::{self, PROFILES, Region};

/// A job after placement.
pub(crate) struct Placed {
    pub(crate) name: String,
    pub(crate) entitlement: String,
    pub(crate) tasks: u32,
    pub(crate) placed: usize,
    pub(crate) first_try: usize,
    pub(crate) unplaced_why: Option<String>,
    pub(crate) cpu_milli: u64,
    pub(crate) memory_mib: u64,
    pub(crate) gpus: u64,
    pub(crate) units: Vec<String>,
    pub(crate) verify: String,
}

/// A host-profile switch carried out.
pub(crate) struct Switched {
    pub(crate) host: HostId,
    pub(crate) from: String,
    pub(crate) to: String,
    pub(crate) changes: Vec<String>,
    pub(crate) verified: bool,
}

/// Everything the steps found.
pub(crate) struct Outcome {
    pub(crate) region: Json,
    pub(crate) hosts: usize,
    pub(crate) entitlements: Vec<Entitlement>,
    pub(crate) jobs: Vec<Placed>,
    pub(crate) switches: Vec<Switched>,
    pub(crate) placements: Vec<Value>,
    pub(crate) drain: RackDrain,
    pub(crate) rollout: Rollout,
    pub(crate) memory: SimReport,
    pub(crate) spec_example: String,
    pub(crate) unit_example: String,
}

/// JSON as the summary has it.
pub(crate) type Json = Value;

/// An entitlement after placement.
pub(crate) struct Entitlement {
    pub(crate) name: String,
    pub(crate) hosts: usize,
    pub(crate) by_type: BTreeMap<String, usize>,
    pub(crate) cpu_used: f64,
    pub(crate) memory_used: f64,
}

/// Runs every step.
pub(crate) fn run(small: usize, out: &Path, progress: &mut Progress) -> Result<Outcome, String> {
    progress.begin("building the region");
    let Region {
        mut alloc,
        entitlements,
        hosts_by_type,
        racks,
        power_domains,
        datacenters,
        capacity,
    } = region::build(small)?;
    let hosts = alloc.host_count();
    let region_json = json!({
        "hosts": hosts,
        "datacenters": datacenters,
        "power_domains": power_domains,
        "racks": racks,
        "machine_types": capacity.iter().zip(hosts_by_type).map(|((name, cap, gpus), (_, n))| json!({
            "name": name, "hosts": n, "cpu_milli": cap.cpu_milli, "memory_mib": cap.memory_mib, "gpus": gpus,
        })).collect::<Vec<_>>(),
    });
    progress.end();

    progress.begin("admitting and placing the jobs, switching host profiles");
    let mut admitted = Vec::new();
    let mut placed_jobs = Vec::new();
    let mut names = BTreeMap::new();
    let roots = out.join("host-roots");
    let mut switches = Vec::new();
    for index in 0..JOBS.len() {
        let a = jobs::admit(index)?;
        let ent = entitlements
            .iter()
            .find(|(name, _)| *name == a.job.entitlement)
            .map(|(_, id)| *id)
            .ok_or_else(|| format!("job {}: no entitlement {:?}", a.job.name, a.job.entitlement))?;
        let tasks: Vec<TaskId> = (0..a.job.replicas)
            .map(|t| jobs::task_id(index, t))
            .collect();
        let res = alloc
            .apply(&a.request(ent, tasks.iter().copied()))
            .map_err(|e| format!("job {}: {e}", a.job.name))?;
        let mut why = res.unplaced.first().map(|(_, u)| u.to_string());
        let mut placed = res.placed.len();
        // Hosts the job needs switched: carried out before the next job can take them.
        for s in &res.profile_switches {
            switches.push(switch(&roots, s)?);
            alloc
                .apply_profile_switch(s.host, &s.to)
                .map_err(|e| format!("switching {}: {e}", s.host))?;
        }
        if !res.profile_switches.is_empty() {
            let again = alloc
                .apply(&a.request(ent, res.unplaced.iter().map(|(t, _)| *t)))
                .map_err(|e| format!("job {}: {e}", a.job.name))?;
            placed += again.placed.len();
            why = again.unplaced.first().map(|(_, u)| u.to_string());
        }
        names.insert(a.id, a.job.name.clone());
        placed_jobs.push(Placed {
            name: a.job.name.clone(),
            entitlement: a.job.entitlement.clone(),
            tasks: a.job.replicas,
            placed,
            first_try: res.placed.len(),
            unplaced_why: why,
            cpu_milli: a.demand.resources.cpu_milli,
            memory_mib: a.demand.resources.memory_mib,
            gpus: a.demand.gpu.milli() / 1000,
            units: Vec::new(),
            verify: String::new(),
        });
        admitted.push((a, ent));
    }
    progress.end();

    progress.begin("rendering units and checking them with systemd-analyze verify");
    for ((a, _), p) in admitted.iter().zip(&mut placed_jobs) {
        let files = a.units.files();
        p.units = files.iter().map(|f| f.name.clone()).collect();
        p.verify = match verify(&files) {
            Ok(()) => "ok".to_owned(),
            Err(VerifyError::Spawn { .. }) => "skipped: no systemd-analyze".to_owned(),
            Err(e) => format!("failed: {e}"),
        };
    }
    let spec_example = JOBS[0].spec.to_owned();
    let unit_example = admitted[0]
        .0
        .units
        .files()
        .into_iter()
        .find(|f| f.name == admitted[0].0.units.main().as_str())
        .map(|f| format!("### {}\n{}", f.name, f.contents))
        .unwrap_or_default();
    progress.end();

    let placements = placements(&alloc, &names)?;
    let entitlement_rows = entitlement_rows(&alloc, &entitlements)?;

    progress.begin("draining a rack through TaskControl");
    let cache = &admitted[CACHE].0;
    let cache_tasks: Vec<TaskId> = (0..cache.job.replicas)
        .map(|t| jobs::task_id(CACHE, t))
        .filter(|t| alloc.task(*t).is_ok())
        .collect();
    let shards = jobs::cache_shards(cache.job.replicas);
    let replicas: Vec<Vec<TaskId>> = shards.iter().map(|s| s.replicas.clone()).collect();
    let controller = ReplicatedService::new(shards).map_err(|e| e.to_string())?;
    let drain = maintenance::drain_rack(
        &mut alloc,
        cache.id,
        &cache_tasks,
        controller,
        &replicas,
        &names,
    )?;
    progress.end();

    progress.begin("rolling a host update out over the region");
    let rollout = maintenance::rollout(&mut alloc)?;
    progress.end();

    progress.begin("sizing one task's memory with the resizer (Senpai)");
    let memory =
        simulate(&Workload::default(), &SenpaiConfig::default()).map_err(|e| e.to_string())?;
    progress.end();

    Ok(Outcome {
        region: region_json,
        hosts,
        entitlements: entitlement_rows,
        jobs: placed_jobs,
        switches,
        placements,
        drain,
        rollout,
        memory,
        spec_example,
        unit_example,
    })
}

/// Carries out one switch through twine-profiles on a directory standing for the host's
/// `/`, with the values a stock kernel has.
fn switch(roots: &Path, s: &ProfileSwitch) -> Result<Switched, String> {
    let dir = roots.join(format!("host-{}", s.host.0));
    let at = |e: &dyn std::fmt::Display| format!("{}: {e}", dir.display());
    for (file, value) in [
        ("proc/sys/vm/swappiness", "60\n"),
        ("proc/sys/net/core/somaxconn", "4096\n"),
        ("proc/sys/net/ipv4/tcp_fin_timeout", "60\n"),
        ("proc/sys/net/ipv4/tcp_tw_reuse", "2\n"),
        (
            "sys/kernel/mm/hugepages/hugepages-2048kB/nr_hugepages",
            "0\n",
        ),
        ("etc/kernel/cmdline", "root=/dev/sda1 ro\n"),
    ] {
        let path = dir.join(file);
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent).map_err(|e| at(&e))?;
        }
        std::fs::write(&path, value).map_err(|e| at(&e))?;
    }
    let text = PROFILES
        .iter()
        .find(|(name, _)| *name == s.to)
        .map(|(_, t)| *t)
        .ok_or_else(|| format!("no host profile {:?}", s.to))?;
    let profile = Profile::from_str(text, Format::Toml).map_err(|e| at(&e))?;
    let root = HostRoot::at(&dir);
    let settings: Vec<_> = profile.desired().into_keys().collect();
    let facts = root.facts(&settings, false).map_err(|e| at(&e))?;
    let p = plan(&facts, &profile);
    let changes = p
        .changes
        .iter()
        .map(|c| {
            format!(
                "{} {} -> {} ({})",
                c.setting,
                c.from.as_deref().unwrap_or("(absent)"),
                c.to.as_deref().unwrap_or("(absent)"),
                c.effect
            )
        })
        .collect();
    apply::apply(&root, &p, ApplyPolicy::new(MissingKeys::Fail, false)).map_err(|e| at(&e))?;
    let check = apply::verify(&root).map_err(|e| at(&e))?;
    let facts = root.facts(&settings, false).map_err(|e| at(&e))?;
    Ok(Switched {
        host: s.host,
        from: s.from.clone(),
        to: s.to.clone(),
        changes,
        verified: check.drifted.is_empty() && plan(&facts, &profile).is_empty(),
    })
}

/// Every host with tasks: its machine type and the tasks of each job on it.
fn placements(alloc: &Allocator, names: &BTreeMap<JobId, String>) -> Result<Vec<Value>, String> {
    let mut out = Vec::new();
    for i in 0..alloc.host_count() {
        let id = HostId(u32::try_from(i).map_err(|e| e.to_string())?);
        let view = alloc.host(id).map_err(|e| e.to_string())?;
        if view.tasks().is_empty() {
            continue;
        }
        let mut per_job: BTreeMap<&str, usize> = BTreeMap::new();
        for &t in view.tasks() {
            let job = alloc.task_view(t).map_err(|e| e.to_string())?.job;
            let name = names.get(&job).map_or("?", String::as_str);
            *per_job.entry(name).or_default() += 1;
        }
        out.push(json!({ "host": id.0, "machine_type": view.machine_type(), "profile": view.profile(), "tasks": per_job }));
    }
    Ok(out)
}

fn entitlement_rows(
    alloc: &Allocator,
    entitlements: &[(&str, twine::sched::EntitlementId)],
) -> Result<Vec<Entitlement>, String> {
    let mut rows = Vec::new();
    for (name, id) in entitlements {
        let hosts = alloc.entitlement_hosts(*id).map_err(|e| e.to_string())?;
        let mut by_type = BTreeMap::new();
        let (mut cap_cpu, mut cap_mem, mut used_cpu, mut used_mem) = (0u64, 0u64, 0u64, 0u64);
        for h in &hosts {
            let v = alloc.host(*h).map_err(|e| e.to_string())?;
            debug_assert_eq!(v.owner(), Owner::Entitlement(*id));
            *by_type.entry(v.machine_type().to_owned()).or_insert(0) += 1;
            let (c, f) = (v.capacity(), v.free());
            cap_cpu += c.cpu_milli;
            cap_mem += c.memory_mib;
            used_cpu += c.cpu_milli - f.cpu_milli;
            used_mem += c.memory_mib - f.memory_mib;
        }
        let share = |u: u64, c: u64| if c == 0 { 0.0 } else { u as f64 / c as f64 };
        rows.push(Entitlement {
            name: (*name).to_owned(),
            hosts: hosts.len(),
            by_type,
            cpu_used: share(used_cpu, cap_cpu),
            memory_used: share(used_mem, cap_mem),
        });
    }
    Ok(rows)
}
