//! The whole daemon tick over a fixture tree of 1,000 cgroups: re-resolving the selection,
//! reading every cgroup's snapshot (kept fds, `pread`), the controller step, and the write
//! (`memory.reclaim` in reclaim mode, `memory.high` in high mode). Throughput is in cgroups,
//! so criterion's time per element is the cost per cgroup per tick (target: 20 µs).
//!
//! `cargo bench -p twine-oomd --features test-util --bench tick`

use std::fs;
use std::path::Path;
use std::time::Duration;

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use twine_oomd::CgroupRoot;
use twine_oomd::daemon::{Daemon, Options, Selection, raise_fd_limit};
use twine_oomd::fixture::fake_cgroup;
use twine_oomd::senpai::{Action, Mode};

const CGROUPS: usize = 1000;
const GIB: u64 = 1 << 30;

/// `CGROUPS` fake cgroups of 1 GiB of page cache each, and a `meminfo`.
fn tree(dir: &Path) -> Vec<String> {
    fs::create_dir_all(dir.join("proc")).expect("proc dir");
    fs::write(
        dir.join("proc/meminfo"),
        "MemTotal: 67108864 kB\nSwapTotal: 0 kB\nSwapFree: 0 kB\n",
    )
    .expect("meminfo");
    let stat = format!(
        "anon 0\nfile {GIB}\nkernel 0\nshmem 0\nactive_anon 0\ninactive_anon 0\n\
         active_file 0\ninactive_file {GIB}\nunevictable 0\n"
    );
    (0..CGROUPS)
        .map(|i| {
            let rel = format!("bench.slice/c{i:04}.service");
            let cg = fake_cgroup(&dir.join("cg"), &rel).expect("fake cgroup");
            fs::write(cg.join("memory.current"), format!("{GIB}\n")).expect("current");
            fs::write(cg.join("memory.stat"), &stat).expect("stat");
            rel
        })
        .collect()
}

fn tick(c: &mut Criterion) {
    raise_fd_limit().expect("raising RLIMIT_NOFILE for 7,000 kept files");
    let mut group = c.benchmark_group("daemon_tick_1000_cgroups");
    group.sample_size(10);
    group.measurement_time(Duration::from_secs(8));
    group.throughput(Throughput::Elements(CGROUPS as u64));
    for (mode, file) in [
        (Mode::Reclaim, "memory.reclaim"),
        (Mode::High, "memory.high"),
    ] {
        // cgroupfs lives in memory; a fixture on a disk file system would measure ext4's
        // truncate-and-rewrite flushes instead.
        let dir = tempfile::tempdir_in("/dev/shm").expect("a tempdir in /dev/shm (tmpfs)");
        let paths = tree(dir.path());
        let mut options = Options::new(
            CgroupRoot::at(dir.path().join("cg")),
            Selection::Cgroups(paths.clone()),
        );
        options.mode = Some(mode);
        // Every tick is a whole interval after the last: every cgroup acts every tick.
        options.interval = Some(Duration::from_secs(1));
        options.proc_root = dir.path().join("proc");
        options.state_file = Some(dir.path().join("state.json"));
        let mut daemon = Daemon::new(options).expect("daemon");
        let mut now = Duration::ZERO;
        // Take over (high mode's first write) before measuring, then clear the files.
        daemon.tick(now).expect("first tick");
        let clear = if mode == Mode::High { "max\n" } else { "" };
        for rel in &paths {
            fs::write(dir.path().join("cg").join(rel).join(file), clear).expect("clear");
        }
        let mut last = None;
        group.bench_function(format!("{mode:?}").to_lowercase(), |b| {
            b.iter(|| {
                now += Duration::from_secs(1);
                last = Some(daemon.tick(now).expect("tick"));
            });
        });
        // The figure is per cgroup only if every tick acted on all 1,000 of them.
        let report = last.expect("the bench ran");
        assert_eq!(report.records.len(), CGROUPS);
        for record in &report.records {
            assert!(record.error.is_none(), "{record:?}");
            assert!(
                matches!(record.action, Action::Reclaim(_) | Action::SetHigh(_)),
                "{record:?}"
            );
        }
        for rel in &paths {
            let text = fs::read_to_string(dir.path().join("cg").join(rel).join(file))
                .expect("written file");
            assert!(
                text.trim().parse::<u64>().is_ok_and(|b| b > 0),
                "{rel}/{file} not written: {text:?}"
            );
        }
        daemon.restore().expect("restore");
    }
    group.finish();
}

criterion_group!(benches, tick);
criterion_main!(benches);
