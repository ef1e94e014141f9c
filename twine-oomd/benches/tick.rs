//! The whole daemon tick over a fixture tree of 1,000 cgroups: re-resolving the selection,
//! reading every cgroup's snapshot (kept fds, `pread`), the controller step, and the write
//! (`memory.reclaim` in reclaim mode, `memory.high` in high mode). Throughput is in cgroups,
//! so criterion's time per element is the cost per cgroup per tick (target: 20 µs).
//!
//! `cargo bench -p twine-oomd --features test-util --bench tick`

use std::fs;
use std::path::Path;
use std::time::Duration;

use criterion::{BatchSize, Criterion, Throughput, criterion_group, criterion_main};
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
    // (name, mode, controller interval in ticks, force a write every tick)
    for (name, mode, interval_s, every_tick) in [
        ("reclaim", Mode::Reclaim, 1, true),
        ("high", Mode::High, 1, true),
        ("high_steady", Mode::High, 6, false),
    ] {
        let file = if mode == Mode::High {
            "memory.high"
        } else {
            "memory.reclaim"
        };
        // cgroupfs lives in memory; a fixture on a disk file system would measure ext4's
        // truncate-and-rewrite flushes instead.
        let dir = tempfile::tempdir_in("/dev/shm").expect("a tempdir in /dev/shm (tmpfs)");
        let paths = tree(dir.path());
        let mut options = Options::new(
            CgroupRoot::at(dir.path().join("cg")),
            Selection::Cgroups(paths.clone()),
        );
        options.mode = Some(mode);
        // Ticks are 1 s apart: with a 1 s interval every cgroup acts every tick; with
        // Senpai's 6 s, a cgroup probes (writes) in one tick of six, as in steady state.
        options.interval = Some(Duration::from_secs(interval_s));
        // No 100 MiB floor: however many ticks criterion runs, memory.high never settles
        // at the floor, where the controller would stop writing.
        options.senpai.limit_min_bytes = 0;
        options.proc_root = dir.path().join("proc");
        options.state_file = Some(dir.path().join("state.json"));
        let mut daemon = Daemon::new(options).expect("daemon");
        // Take over (high mode's first write) before measuring, then clear the files.
        let mut now = Duration::ZERO;
        daemon.tick(now).expect("first tick");
        let clear = if mode == Mode::High { "max\n" } else { "" };
        for rel in &paths {
            fs::write(dir.path().join("cg").join(rel).join(file), clear).expect("clear");
        }
        let mut last = None;
        let mut stall_us = 0u64;
        let mut odd = false;
        group.bench_function(name, |b| {
            b.iter_batched(
                || {
                    // High mode, unmeasured: 20 ms of stall every other tick, so that the
                    // controller alternates a 1 % backoff and a 1 % probe and writes every tick
                    // instead of settling at its floor.
                    if mode == Mode::High && every_tick {
                        odd = !odd;
                        stall_us += if odd { 20_000 } else { 0 };
                        let text = format!(
                            "some avg10=0.00 avg60=0.00 avg300=0.00 total={stall_us}\n\
                             full avg10=0.00 avg60=0.00 avg300=0.00 total=0\n"
                        );
                        for rel in &paths {
                            let path = dir.path().join("cg").join(rel).join("memory.pressure");
                            fs::write(path, &text).expect("pressure");
                        }
                    }
                    now += Duration::from_secs(1);
                    now
                },
                |now| last = Some(daemon.tick(now).expect("tick")),
                BatchSize::PerIteration,
            );
        });
        let Some(report) = last else {
            continue; // filtered out on the command line
        };
        // The figure is per cgroup only if every tick covered all 1,000 of them, and (where
        // forced) each acted.
        assert_eq!(report.records.len(), CGROUPS);
        for record in &report.records {
            assert!(record.error.is_none(), "{record:?}");
            assert!(
                !every_tick || matches!(record.action, Action::Reclaim(_) | Action::SetHigh(_)),
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
