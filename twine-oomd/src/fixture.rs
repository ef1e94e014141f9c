//! Fake cgroup2 directories for tests (feature `test-util`): a cgroup's files as a fresh
//! cgroup on a kernel with the memory controller would show them, as plain files to
//! overwrite.

use std::fs;
use std::io;
use std::path::{Path, PathBuf};

/// The files of a fresh cgroup and their contents.
pub const FRESH_CGROUP: &[(&str, &str)] = &[
    ("cgroup.procs", ""),
    ("cgroup.events", "populated 0\nfrozen 0\n"),
    ("cgroup.kill", ""),
    ("cgroup.freeze", "0\n"),
    ("cgroup.subtree_control", ""),
    ("memory.current", "0\n"),
    ("memory.high", "max\n"),
    ("memory.max", "max\n"),
    ("memory.min", "0\n"),
    ("memory.low", "0\n"),
    ("memory.reclaim", ""),
    ("memory.swap.current", "0\n"),
    ("memory.swap.max", "max\n"),
    ("memory.swap.events", "high 0\nmax 0\nfail 0\n"),
    (
        "memory.events",
        "low 0\nhigh 0\nmax 0\noom 0\noom_kill 0\noom_group_kill 0\n",
    ),
    (
        "memory.stat",
        "anon 0\nfile 0\nkernel 0\nshmem 0\nactive_anon 0\ninactive_anon 0\n\
         active_file 0\ninactive_file 0\nunevictable 0\npgscan 0\npgsteal 0\n",
    ),
    ("memory.pressure", PRESSURE_ZERO),
    ("cpu.pressure", PRESSURE_ZERO),
    ("io.pressure", PRESSURE_ZERO),
];

const PRESSURE_ZERO: &str = "some avg10=0.00 avg60=0.00 avg300=0.00 total=0\n\
                             full avg10=0.00 avg60=0.00 avg300=0.00 total=0\n";

/// Creates the directory `root/rel` (and its parents) holding [`FRESH_CGROUP`]'s files,
/// and returns it. Overwrite files with [`fs::write`] to shape a test case.
pub fn fake_cgroup(root: &Path, rel: &str) -> io::Result<PathBuf> {
    let dir = root.join(rel);
    fs::create_dir_all(&dir)?;
    for (name, contents) in FRESH_CGROUP {
        fs::write(dir.join(name), contents)?;
    }
    Ok(dir)
}
