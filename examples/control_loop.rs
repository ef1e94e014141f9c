//! An integrator's own control-plane loop, in one process and without I/O: a job spec is
//! validated, its tasks are placed by the allocator, its units are rendered, and then a
//! rack's maintenance drains one of its hosts through TaskControl, the job's controller
//! answering each request.
//!
//! ```sh
//! cargo run --example control_loop
//! ```
//!
//! The glue an integrator writes is here: spec resources become an allocator demand
//! (`demand`), and the drain's profile switch is handed to a `ProfileSide` (a real one
//! drives twine-profiles: see the `profile_switch` example). The reference control plane
//! with state in etcd is `examples/control-plane`.
#![allow(clippy::print_stdout)] // an example: its output is the point

use std::convert::Infallible;

use twine::sched::drain::{Drain, DrainSettings, Phase, ProfileSide};
use twine::sched::taskcontrol::{ReplicatedService, Shard, ShardId};
use twine::sched::{
    Allocator, AllocatorConfig, Demand, FaultLevel, GpuDemand, HostId, HostSpec, JobId,
    Preferences, Quota, Request, Resources, TaskId,
};
use twine::spec::{JobSpec, translate};

const SPEC: &str = r#"
name = "cache"
entitlement = "storage"
replicas = 3
[task]
command = ["/usr/bin/memcached", "-m", "1024"]
[task.resources]
cpu_quota = 2
memory_max = "2G"
"#;

/// A job's tasks as the allocator sees them: `cpu_quota` (percent of one CPU) in
/// thousandths of a CPU, `memory_max` in MiB.
fn demand(job: &twine::spec::job::Job) -> Result<Demand, String> {
    let r = &job.task.resources;
    let cpu = r
        .cpu_quota_percent
        .ok_or("task.resources.cpu_quota: needed to place")?;
    let memory = r
        .memory_max
        .ok_or("task.resources.memory_max: needed to place")?;
    Ok(Demand {
        resources: Resources::new(u64::from(cpu) * 10, memory.div_ceil(1 << 20)),
        gpu: GpuDemand::None,
    })
}

/// The profiles side of a drain: here it only says what it would do.
struct Announce;

impl ProfileSide for Announce {
    type Error = Infallible;
    fn switch(&mut self, host: HostId, profile: &str) -> Result<(), Infallible> {
        println!("  profiles: host {} switched to {profile:?}", host.0);
        Ok(())
    }
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    // 1. The spec, validated into a job (every problem at once, with its field path).
    let job = JobSpec::from_toml(SPEC)?.validate()?;
    let task = demand(&job)?;
    println!(
        "job {:?}: {} replicas of {} mCPU, {} MiB",
        job.name, job.replicas, task.resources.cpu_milli, task.resources.memory_mib
    );

    // 2. A fleet of 8 hosts on 4 racks, and the job's entitlement.
    let mut alloc = Allocator::new(AllocatorConfig::default().with_seed(1));
    for rack in 0..4 {
        for _ in 0..2 {
            let host = HostSpec::new(Resources::new(16_000, 65_536)).domain([
                "r1",
                "dc1",
                "p1",
                &format!("rack{rack}"),
            ]);
            alloc.add_host(&host)?;
        }
    }
    let quota = Quota::Units(Resources::new(64_000, 262_144));
    let entitlement = alloc.add_entitlement(&job.entitlement, quota)?;

    // 3. Placement: one replica per rack.
    let mut request = Request::new(entitlement, JobId(1)).prefer(
        Preferences::default()
            .spread(FaultLevel::Rack)
            .max_per_host(1),
    );
    for i in 0..job.replicas {
        request = request.allocate(TaskId(u64::from(i)), task);
    }
    let placed = alloc.apply(&request)?;
    for p in &placed.placed {
        let rack = alloc.host(p.host)?.domain(FaultLevel::Rack).to_owned();
        println!("  task {} -> host {} ({rack})", p.task.0, p.host.0);
    }
    if let Some((t, why)) = placed.unplaced.first() {
        return Err(format!("task {} not placed: {why}", t.0).into());
    }

    // 4. The units each host's agent installs (the same for every task of the job).
    let units = translate(&job)?;
    let order: Vec<_> = units.start_order().iter().map(|u| u.to_string()).collect();
    println!("units, in start order: {}", order.join(", "));

    // 5. Maintenance: drain task 0's host and switch it to a new profile. The drain asks
    //    the job's controller through TaskControl. The cache is one shard with a replica on
    //    each task, led by task 2: its controller acks a move only while no other replica
    //    is down, and moves the leader last.
    let replicas = (0..job.replicas).map(|i| TaskId(u64::from(i))).collect();
    let shard = Shard {
        id: ShardId(0),
        replicas,
        leader: TaskId(2),
    };
    let mut controller = ReplicatedService::new(vec![shard])?;
    let (host, _) = alloc.task(TaskId(0))?;
    let settings = DrainSettings::new(60_000, "rack maintenance").profile("hugepages");
    let mut drain = Drain::start(&mut alloc, host, settings, 0)?;
    println!("draining host {}", host.0);
    let mut now = 0;
    while drain.phase() != Phase::Done {
        now += 1_000;
        for req in drain.requests() {
            let response = controller.process(&req);
            println!(
                "  TaskControl: {} operation(s) asked, {} acked",
                req.request.len(),
                response.ack.len()
            );
            drain.respond(&mut alloc, req.job, response, now)?;
        }
        drain.tick(&mut alloc, &mut Announce, now)?;
    }
    let (moved_to, _) = alloc.task(TaskId(0))?;
    println!(
        "  task 0 now on host {}; host {} is {:?}",
        moved_to.0,
        host.0,
        alloc.host(host)?.profile()
    );
    Ok(())
}
