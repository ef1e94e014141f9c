//! Pure tier: every cgroup2 file reader and writer against a fake tree in a tempdir.
#![allow(clippy::unwrap_used)] // tests: a failed unwrap is a failed test with its message.

use std::fs;
use std::path::Path;

use twine_oomd::fixture::fake_cgroup;
use twine_oomd::{CgroupError, CgroupRoot, Limit, LimitFile, Resource, SnapshotReader};

fn tree() -> (tempfile::TempDir, CgroupRoot) {
    let dir = tempfile::tempdir().unwrap();
    let root = CgroupRoot::at(dir.path());
    (dir, root)
}

fn put(dir: &Path, name: &str, contents: &str) {
    fs::write(dir.join(name), contents).unwrap();
}

#[test]
fn reads_limits_usage_and_swap() {
    let (_tmp, root) = tree();
    let dir = fake_cgroup(root.path(), "work/app").unwrap();
    put(&dir, "memory.current", "123456\n");
    put(&dir, "memory.high", "104857600\n");
    put(&dir, "memory.min", "4096\n");
    put(&dir, "memory.swap.current", "8192\n");
    let cg = root.cgroup("work/app").unwrap();
    assert_eq!(cg.memory_current().unwrap(), 123_456);
    assert_eq!(cg.swap_current().unwrap(), 8192);
    assert_eq!(
        cg.limit(LimitFile::High).unwrap(),
        Limit::Bytes(104_857_600)
    );
    assert_eq!(cg.limit(LimitFile::Max).unwrap(), Limit::Max);
    assert_eq!(cg.limit(LimitFile::Min).unwrap(), Limit::Bytes(4096));
    assert_eq!(cg.limit(LimitFile::Low).unwrap(), Limit::Bytes(0));
    assert_eq!(cg.limit(LimitFile::SwapMax).unwrap(), Limit::Max);

    put(&dir, "memory.high", "lots\n");
    let err = cg.limit(LimitFile::High).unwrap_err();
    assert!(
        matches!(&err, CgroupError::Parse { line, .. } if line == "lots"),
        "{err}"
    );
    assert!(err.to_string().contains("memory.high"), "{err}");
}

#[test]
fn writes_limits_and_reclaim() {
    let (_tmp, root) = tree();
    let dir = fake_cgroup(root.path(), "app").unwrap();
    let cg = root.cgroup("app").unwrap();
    cg.set_limit(LimitFile::High, Limit::Bytes(1 << 30))
        .unwrap();
    assert_eq!(cg.limit(LimitFile::High).unwrap(), Limit::Bytes(1 << 30));
    cg.set_limit(LimitFile::High, Limit::Max).unwrap();
    assert_eq!(cg.limit(LimitFile::High).unwrap(), Limit::Max);
    cg.set_limit_within(
        LimitFile::Max,
        Limit::Bytes(4096),
        std::time::Duration::from_secs(5),
    )
    .unwrap();
    assert_eq!(cg.limit(LimitFile::Max).unwrap(), Limit::Bytes(4096));
    cg.reclaim(2 << 20).unwrap();
    assert_eq!(
        fs::read_to_string(dir.join("memory.reclaim")).unwrap(),
        "2097152"
    );

    // A write that fails names the file and the value.
    fs::remove_file(dir.join("memory.low")).unwrap();
    fs::create_dir(dir.join("memory.low")).unwrap();
    let err = cg
        .set_limit(LimitFile::Low, Limit::Bytes(104_857_600))
        .unwrap_err();
    assert!(matches!(err, CgroupError::Write { .. }), "{err}");
    assert_eq!(
        err.to_string(),
        format!(
            "writing 104857600 to {}: Is a directory (os error 21)",
            dir.join("memory.low").display()
        )
    );
}

#[test]
fn reads_stat_events_and_swap_events() {
    let (_tmp, root) = tree();
    let dir = fake_cgroup(root.path(), "app").unwrap();
    put(
        &dir,
        "memory.stat",
        "anon 100\nfile 200\nkernel 5\nshmem 7\nactive_anon 60\ninactive_anon 40\nactive_file 150\ninactive_file 50\nunevictable 3\nnew_key_from_the_future 9\n",
    );
    put(
        &dir,
        "memory.events",
        "low 1\nhigh 2\nmax 3\noom 4\noom_kill 5\n",
    );
    put(&dir, "memory.swap.events", "high 0\nmax 6\nfail 7\n");
    let cg = root.cgroup("app").unwrap();
    let stat = cg.memory_stat().unwrap();
    assert_eq!(stat.anon(), Some(100));
    assert_eq!(stat.file(), Some(200));
    assert_eq!(stat.inactive_file(), Some(50));
    assert_eq!(stat.get("new_key_from_the_future"), Some(9));
    assert_eq!(stat.get("absent"), None);
    assert_eq!(stat.iter().count(), 10);
    let events = cg.memory_events().unwrap();
    assert_eq!(
        (
            events.low,
            events.high,
            events.max,
            events.oom,
            events.oom_kill
        ),
        (1, 2, 3, 4, 5)
    );
    assert_eq!(events.oom_group_kill, None); // a kernel before 5.17
    let swap = cg.swap_events().unwrap();
    assert_eq!((swap.high, swap.max, swap.fail), (0, 6, 7));

    put(&dir, "memory.events", "low 1\nhigh 2\n");
    let err = cg.memory_events().unwrap_err();
    assert!(
        matches!(&err, CgroupError::Parse { line, .. } if line == "max"),
        "{err}"
    );
    put(&dir, "memory.stat", "anon 1\nfile\n");
    let err = cg.memory_stat().unwrap_err();
    assert!(
        matches!(&err, CgroupError::Parse { line, .. } if line == "file"),
        "{err}"
    );
}

#[test]
fn reads_pressure_of_each_resource_and_names_garbage() {
    let (_tmp, root) = tree();
    let dir = fake_cgroup(root.path(), "app").unwrap();
    put(
        &dir,
        "io.pressure",
        "some avg10=2.50 avg60=1.00 avg300=0.10 total=5000\nfull avg10=1.25 avg60=0.00 avg300=0.00 total=300\n",
    );
    let cg = root.cgroup("app").unwrap();
    let io = cg.pressure(Resource::Io).unwrap();
    assert_eq!(io.some.avg10, 2.5);
    assert_eq!(io.full.unwrap().total_us, 300);
    assert_eq!(cg.pressure(Resource::Cpu).unwrap().some.total_us, 0);

    put(
        &dir,
        "memory.pressure",
        "some avg10=0.00 avg60=0.00 avg300=0.00 total=0\nfull everything is fine\n",
    );
    let err = cg.pressure(Resource::Memory).unwrap_err();
    assert!(
        matches!(&err, CgroupError::Parse { line, .. } if line == "full everything is fine"),
        "{err}"
    );
    let msg = err.to_string();
    assert!(
        msg.contains(&dir.join("memory.pressure").display().to_string()),
        "{msg}"
    );
    let err = SnapshotReader::new(&cg).unwrap().read().unwrap_err();
    assert!(matches!(err, CgroupError::Parse { .. }), "{err}");
}

#[test]
fn missing_psi_is_its_own_condition_and_a_gone_cgroup_another() {
    let (_tmp, root) = tree();
    let dir = fake_cgroup(root.path(), "app").unwrap();
    let cg = root.cgroup("app").unwrap();
    fs::remove_file(dir.join("memory.pressure")).unwrap();
    let err = cg.pressure(Resource::Memory).unwrap_err();
    assert!(matches!(err, CgroupError::PsiUnavailable { .. }), "{err}");
    let err = SnapshotReader::new(&cg).unwrap_err();
    assert!(matches!(err, CgroupError::PsiUnavailable { .. }), "{err}");

    fs::remove_dir_all(&dir).unwrap();
    for err in [
        cg.pressure(Resource::Memory).unwrap_err(),
        cg.memory_current().unwrap_err(),
        cg.set_limit(LimitFile::High, Limit::Max).unwrap_err(),
        SnapshotReader::new(&cg).unwrap_err(),
    ] {
        assert!(matches!(err, CgroupError::CgroupGone { .. }), "{err}");
    }
}

#[test]
fn snapshot_reads_every_field_and_reuses_its_reader() {
    let (_tmp, root) = tree();
    let dir = fake_cgroup(root.path(), "app").unwrap();
    put(&dir, "memory.current", "1000\n");
    put(&dir, "memory.high", "900\n");
    put(&dir, "memory.low", "10\n");
    put(
        &dir,
        "memory.pressure",
        "some avg10=0.50 avg60=0.00 avg300=0.00 total=42\nfull avg10=0.00 avg60=0.00 avg300=0.00 total=7\n",
    );
    put(
        &dir,
        "memory.stat",
        "anon 1\nfile 2\nshmem 3\nactive_anon 4\ninactive_anon 5\nactive_file 6\ninactive_file 7\nunevictable 8\n",
    );
    let cg = root.cgroup("app").unwrap();
    let mut reader = SnapshotReader::new(&cg).unwrap();
    let snap = reader.read().unwrap();
    assert_eq!(snap.current, 1000);
    assert_eq!(
        (snap.high, snap.max, snap.min, snap.low),
        (
            Limit::Bytes(900),
            Limit::Max,
            Limit::Bytes(0),
            Limit::Bytes(10)
        )
    );
    assert_eq!(snap.pressure.some.total_us, 42);
    assert_eq!(snap.pressure.some.avg10, 0.5);
    assert_eq!(snap.pressure.full.unwrap().total_us, 7);
    assert_eq!(
        [
            snap.anon,
            snap.file,
            snap.shmem,
            snap.active_anon,
            snap.inactive_anon,
            snap.active_file,
            snap.inactive_file,
            snap.unevictable
        ],
        [1, 2, 3, 4, 5, 6, 7, 8]
    );
    put(&dir, "memory.current", "2000\n");
    assert_eq!(reader.read().unwrap().current, 2000);

    // Larger than the reader's first buffer: it grows.
    let mut big = String::from(
        "anon 11\nfile 2\nshmem 3\nactive_anon 4\ninactive_anon 5\nactive_file 6\ninactive_file 7\n",
    );
    for i in 0..2000 {
        big.push_str(&format!("some_future_counter_{i} {i}\n"));
    }
    big.push_str("unevictable 88\n");
    assert!(big.len() > 32 * 1024);
    put(&dir, "memory.stat", &big);
    let snap = reader.read().unwrap();
    assert_eq!((snap.anon, snap.unevictable), (11, 88));

    put(&dir, "memory.stat", "anon 1\nfile 2\n");
    let err = reader.read().unwrap_err();
    assert!(
        matches!(&err, CgroupError::Parse { line, .. } if line == "shmem"),
        "{err}"
    );
}

#[test]
fn creates_lists_and_removes_children() {
    let (_tmp, root) = tree();
    let top = root.top();
    let b = top.create_child("b").unwrap();
    top.create_child("a").unwrap();
    fs::write(root.path().join("not-a-cgroup"), "").unwrap();
    let names: Vec<_> = top
        .children()
        .unwrap()
        .iter()
        .map(|c| c.relative().to_owned())
        .collect();
    assert_eq!(names, [Path::new("a"), Path::new("b")]);
    let nested = b.create_child("c").unwrap();
    assert_eq!(nested.relative(), Path::new("b/c"));
    assert_eq!(nested, root.cgroup("b/c").unwrap());
    let err = b.create_child("c").unwrap_err();
    assert!(matches!(err, CgroupError::Dir { .. }), "{err}");
    assert!(err.to_string().starts_with("creating cgroup "), "{err}");
    assert!(top.create_child("../escape").is_err());
    nested.remove().unwrap();
    assert!(!nested.path().exists());

    fs::write(root.path().join("cgroup.subtree_control"), "").unwrap();
    top.enable_controllers(&["memory", "io"]).unwrap();
    assert_eq!(
        fs::read_to_string(root.path().join("cgroup.subtree_control")).unwrap(),
        "+memory +io"
    );
}

#[test]
fn procs_kill_and_events() {
    let (_tmp, root) = tree();
    let dir = fake_cgroup(root.path(), "app").unwrap();
    let cg = root.cgroup("app").unwrap();
    assert_eq!(cg.procs().unwrap(), Vec::<u32>::new());
    put(&dir, "cgroup.procs", "12\n345\n");
    assert_eq!(cg.procs().unwrap(), [12, 345]);
    cg.move_process(77).unwrap();
    assert_eq!(fs::read_to_string(dir.join("cgroup.procs")).unwrap(), "77");
    cg.kill().unwrap();
    assert_eq!(fs::read_to_string(dir.join("cgroup.kill")).unwrap(), "1");
    cg.set_frozen(true).unwrap();
    assert_eq!(fs::read_to_string(dir.join("cgroup.freeze")).unwrap(), "1");
    cg.set_frozen(false).unwrap();
    assert_eq!(fs::read_to_string(dir.join("cgroup.freeze")).unwrap(), "0");
    let events = cg.events().unwrap();
    assert!(!events.populated && !events.frozen);
    put(&dir, "cgroup.events", "populated 1\nfrozen 0\n");
    assert!(cg.events().unwrap().populated);
    put(&dir, "cgroup.events", "populated yes\nfrozen 0\n");
    let err = cg.events().unwrap_err();
    assert!(
        matches!(&err, CgroupError::Parse { line, .. } if line == "populated yes"),
        "{err}"
    );
    put(&dir, "cgroup.procs", "12\nabc\n");
    assert!(matches!(cg.procs().unwrap_err(), CgroupError::Parse { .. }));
}
