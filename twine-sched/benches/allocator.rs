//! Online placement throughput on synthetic Twine-like fleets.
//!
//! Fleets mix Twine's small machine (18 cores, 64 GiB; 4 of 5 hosts) with big stacking
//! hosts (2 x 48 cores, 384 GiB, 8 GPUs), in racks of 40 hosts, 10 racks per power
//! domain, 10 power domains per datacenter. Every iteration frees the oldest 36-task
//! job and places a new one (Twine's average job size), so the fleet stays at a steady
//! fill instead of running out of room; throughput is counted in placed tasks.
//!
//! Run: `cargo bench -p twine-sched --bench allocator`.

use std::collections::VecDeque;
use std::hint::black_box;
use std::time::Duration;

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use twine_sched::{
    Allocator, AllocatorConfig, Demand, EntitlementId, FaultLevel, GpuDemand, JobId, Preferences,
    Request, Requirements, Resources, TaskId,
};

const TASKS_PER_JOB: u64 = 36;

#[path = "../examples/support/synthetic.rs"]
mod synthetic;

fn fleet(hosts: usize) -> (Allocator, EntitlementId) {
    synthetic::fleet(hosts, AllocatorConfig::default())
}

struct Steady {
    alloc: Allocator,
    ent: EntitlementId,
    prefs: Preferences,
    live: VecDeque<(JobId, Vec<TaskId>)>,
    next_job: u64,
    next_task: u64,
}

impl Steady {
    fn new(hosts: usize, prefs: Preferences, live_jobs: usize) -> Steady {
        let (alloc, ent) = fleet(hosts);
        let mut s = Steady {
            alloc,
            ent,
            prefs,
            live: VecDeque::new(),
            next_job: 0,
            next_task: 0,
        };
        for _ in 0..live_jobs {
            s.place_job(false);
        }
        s
    }

    /// Frees the oldest job (if `churn`) and places a new one; returns tasks placed.
    fn place_job(&mut self, churn: bool) -> usize {
        let job = JobId(self.next_job);
        self.next_job += 1;
        let mut req = Request::new(self.ent, job)
            .require(Requirements::default().machine_types(["small"]))
            .prefer(self.prefs);
        let mut tasks = Vec::new();
        for k in 0..TASKS_PER_JOB {
            let t = TaskId(self.next_task);
            self.next_task += 1;
            // Mixed sizes: 0.5 to 4 cores, 1 to 8 GiB.
            let d = Demand {
                resources: Resources::new(500 + (k % 8) * 500, 1024 + (k % 8) * 1024),
                gpu: GpuDemand::None,
            };
            req = req.allocate(t, d);
            tasks.push(t);
        }
        if churn && let Some((old, old_tasks)) = self.live.pop_front() {
            let free = Request::new(self.ent, old).free_all(&old_tasks);
            self.alloc.apply(&free).expect("free live tasks");
        }
        let out = self.alloc.apply(&req).expect("valid request");
        self.live.push_back((job, tasks));
        assert_eq!(
            out.placed.len(),
            tasks_len(&self.live),
            "{:?}",
            out.unplaced.first()
        );
        out.placed.len()
    }
}

fn tasks_len(live: &VecDeque<(JobId, Vec<TaskId>)>) -> usize {
    live.back().map_or(0, |(_, t)| t.len())
}

trait FreeAll {
    fn free_all(self, tasks: &[TaskId]) -> Self;
}

impl FreeAll for Request {
    fn free_all(mut self, tasks: &[TaskId]) -> Self {
        self.free.extend_from_slice(tasks);
        self
    }
}

fn placements(c: &mut Criterion) {
    let mut g = c.benchmark_group("allocator");
    g.sample_size(10);
    g.measurement_time(Duration::from_secs(4));
    g.throughput(Throughput::Elements(TASKS_PER_JOB));
    let spread = Preferences::default().spread(FaultLevel::Rack);
    for hosts in [5_000, 50_000, 100_000, 170_000, 1_000_000] {
        // About a third of the small hosts' CPU in use.
        let live = hosts * 4 / 5 * 6 / 80;
        let mut s = Steady::new(hosts, spread, live);
        g.bench_function(format!("spread_rack/{hosts}"), |b| {
            b.iter(|| black_box(s.place_job(true)));
        });
        s.alloc
            .check_invariants()
            .expect("consistent after the bench");
    }
    let anti = Preferences::default().max_per_host(1);
    for hosts in [5_000, 100_000] {
        let live = hosts * 4 / 5 * 6 / 80;
        let mut s = Steady::new(hosts, anti, live);
        g.bench_function(format!("anti_affinity_host/{hosts}"), |b| {
            b.iter(|| black_box(s.place_job(true)));
        });
    }
    g.finish();
}

criterion_group!(benches, placements);
criterion_main!(benches);
