//! A Senpai loop over one cgroup with twine-oomd's daemon: each tick reads
//! `memory.current`, `memory.stat` and `memory.pressure`, steps the controller, and writes
//! `memory.high`; at the end the original `memory.high` is put back.
//!
//! ```sh
//! cargo run --example senpai_loop
//! ```
//!
//! It runs without root against a fake cgroup2 tree in a tempdir (twine-oomd's `test-util`
//! fixture), with a toy workload standing in for the kernel: 1 GiB of page cache of which
//! 600 MiB is hot, so squeezing `memory.high` below 600 MiB causes memory stall. Time is
//! simulated, so fifteen minutes of control take a moment. On a real host the same daemon runs
//! over `CgroupRoot::find()` in real time: `twine oomd run --cgroup PATH`.
#![allow(clippy::print_stdout)] // an example: its output is the point

use std::fs;
use std::time::Duration;

use twine_oomd::CgroupRoot;
use twine_oomd::daemon::{Daemon, Options, Selection};
use twine_oomd::fixture::fake_cgroup;
use twine_oomd::senpai::{Action, Mode};

const MIB: u64 = 1 << 20;
const FOOTPRINT: u64 = 1024 * MIB;
const HOT: u64 = 600 * MIB;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let dir = tempfile::tempdir()?;
    fs::create_dir_all(dir.path().join("proc"))?;
    fs::write(
        dir.path().join("proc/meminfo"),
        "MemTotal: 16000000 kB\nMemFree: 8000000 kB\nSwapTotal: 0 kB\nSwapFree: 0 kB\n",
    )?;
    let cgroup = fake_cgroup(&dir.path().join("cg"), "workload.slice/web")?;

    let mut options = Options::new(
        CgroupRoot::at(dir.path().join("cg")),
        Selection::Cgroups(vec!["workload.slice/web".into()]),
    );
    options.mode = Some(Mode::High);
    options.proc_root = dir.path().join("proc");
    options.state_file = None; // keep the original memory.high in memory only
    let mut daemon = Daemon::new(options)?;

    let mut stall_us = 0u64;
    let mut high = FOOTPRINT;
    for t in 0..=900u64 {
        // The toy kernel: the cgroup holds what memory.high lets it, and every tick spent
        // below its hot set is a tick of stall.
        let current = FOOTPRINT.min(high);
        if current < HOT {
            stall_us += 20_000 * (HOT - current) / MIB;
        }
        fs::write(cgroup.join("memory.current"), format!("{current}\n"))?;
        let cold = current.saturating_sub(HOT);
        let stat = format!(
            "anon 0\nfile {current}\nkernel 0\nshmem 0\nactive_anon 0\ninactive_anon 0\n\
             active_file {}\ninactive_file {cold}\nunevictable 0\npgscan 0\npgsteal 0\n",
            current - cold
        );
        fs::write(cgroup.join("memory.stat"), stat)?;
        let psi = format!(
            "some avg10=0.00 avg60=0.00 avg300=0.00 total={stall_us}\n\
             full avg10=0.00 avg60=0.00 avg300=0.00 total=0\n"
        );
        fs::write(cgroup.join("memory.pressure"), psi)?;

        let report = daemon.tick(Duration::from_secs(t))?;
        for record in &report.records {
            if let Action::SetHigh(bytes) = record.action {
                high = bytes;
            }
            if let Some(error) = &record.error {
                return Err(error.clone().into());
            }
            if t % 60 == 0 {
                println!(
                    "t={t:>3}s memory.high={:>4} MiB stall={:>7} us cause={:?}",
                    high / MIB,
                    stall_us,
                    record.cause,
                );
            }
        }
    }
    // On exit (SIGTERM, --duration) the daemon puts back every memory.high it changed.
    daemon.restore()?;
    let restored = fs::read_to_string(cgroup.join("memory.high"))?;
    println!("restored memory.high to {:?}", restored.trim());
    Ok(())
}
