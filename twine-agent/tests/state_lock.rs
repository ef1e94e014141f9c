//! The state directory: the agent lock across processes, atomic records, jobs.

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};

use serde::{Deserialize, Serialize};
use twine_agent::state::{AgentLock, StateDir, StateError, read_record, write_record};

const CHILD_ENV: &str = "TWINE_TEST_LOCK_CHILD_STATE";

/// Not a test on its own: when run with `CHILD_ENV` set (by
/// `a_lock_held_by_a_killed_process_is_released`), it takes the lock, says so
/// on stdout and waits to be killed.
#[test]
fn child_holds_lock() {
    let Some(dir) = std::env::var_os(CHILD_ENV) else {
        return;
    };
    let _lock = AgentLock::acquire(&StateDir::new(dir)).expect("child acquires the lock");
    use std::io::Write;
    let mut out = std::io::stdout();
    writeln!(out, "TWINE-LOCKED").expect("stdout");
    out.flush().expect("stdout");
    loop {
        std::thread::sleep(std::time::Duration::from_secs(60));
    }
}

#[test]
fn a_lock_held_by_a_killed_process_is_released() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let state = StateDir::new(tmp.path().join("state"));
    let exe = std::env::current_exe().expect("current exe");
    let mut child = Command::new(exe)
        .args([
            "--exact",
            "child_holds_lock",
            "--nocapture",
            "--test-threads=1",
        ])
        .env(CHILD_ENV, state.root())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn the child");
    let stdout = child.stdout.take().expect("child stdout");
    let mut lines = BufReader::new(stdout).lines();
    let locked = lines.any(|line| line.map(|l| l.contains("TWINE-LOCKED")).unwrap_or(false));
    assert!(locked, "the child never took the lock");

    let child_pid = i32::try_from(child.id()).expect("pid fits");
    match AgentLock::acquire(&state) {
        Err(StateError::Locked { path, holder }) => {
            assert_eq!(path, state.lock_path());
            assert_eq!(holder, Some(child_pid));
        }
        other => panic!("a second agent was not refused: {other:?}"),
    }

    // SIGKILL: no destructor runs, the kernel drops the flock.
    child.kill().expect("kill -9 the child");
    child.wait().expect("reap the child");
    let lock = AgentLock::acquire(&state).expect("the lock is free after the holder died");
    let pid = std::fs::read_to_string(lock.path()).expect("read the lock file");
    assert_eq!(pid.trim(), std::process::id().to_string());
}

#[test]
fn a_second_acquire_in_the_same_process_is_refused_until_the_first_is_dropped() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let state = StateDir::new(tmp.path().join("a/b"));
    let first = AgentLock::acquire(&state).expect("first");
    let error = AgentLock::acquire(&state).expect_err("second is refused");
    let pid = i32::try_from(std::process::id()).expect("pid fits");
    assert!(
        matches!(&error, StateError::Locked { holder: Some(h), .. } if *h == pid),
        "{error:?}"
    );
    assert!(
        error
            .to_string()
            .contains(&format!("locked by another agent (pid {pid})")),
        "{error}"
    );
    drop(first);
    AgentLock::acquire(&state).expect("free again after drop");
}

#[derive(Debug, PartialEq, Serialize, Deserialize)]
struct Record {
    generation: u64,
    name: String,
}

#[test]
fn records_round_trip_replace_atomically_and_leave_no_temporaries() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let state = StateDir::new(tmp.path());
    let path = state.job("web").record();
    assert_eq!(read_record::<Record>(&path).expect("missing is fine"), None);
    for generation in 0..5 {
        let record = Record {
            generation,
            name: "web".into(),
        };
        write_record(&path, &record).expect("write");
        assert_eq!(read_record::<Record>(&path).expect("read"), Some(record));
    }
    let entries: Vec<_> = std::fs::read_dir(state.job("web").root())
        .expect("list")
        .map(|e| e.expect("entry").file_name())
        .collect();
    assert_eq!(entries, ["record.json"]);
}

#[test]
fn a_corrupt_record_is_an_error_naming_the_file() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let path = tmp.path().join("record.json");
    std::fs::write(&path, b"{\"generation\": 1, \"name\"").expect("write");
    let error = read_record::<Record>(&path).expect_err("corrupt");
    assert!(
        matches!(&error, StateError::Corrupt { path: p, .. } if *p == path),
        "{error:?}"
    );
    assert!(
        error
            .to_string()
            .starts_with(&format!("{}: corrupt record: ", path.display()))
    );
}

#[test]
fn jobs_are_listed_and_removed() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let state = StateDir::new(tmp.path());
    assert_eq!(
        state.list_jobs().expect("no jobs dir"),
        Vec::<String>::new()
    );
    for job in ["web", "batch", "api"] {
        std::fs::create_dir_all(state.job(job).logs()).expect("mkdir");
        write_record(&state.job(job).record(), &1).expect("write");
    }
    std::fs::write(state.jobs_dir().join("stray-file"), b"").expect("write");
    std::fs::create_dir(state.jobs_dir().join(".removing-old-1-0")).expect("mkdir");
    assert_eq!(state.list_jobs().expect("list"), ["api", "batch", "web"]);

    state.remove_job("batch").expect("remove");
    state
        .remove_job("never-existed")
        .expect("removing a missing job is fine");
    assert_eq!(state.list_jobs().expect("list"), ["api", "web"]);
    assert!(
        !state.jobs_dir().join(".removing-old-1-0").exists(),
        "leftover removal not swept"
    );

    for bad in ["", "..", ".hidden", "a/b", "a\0b"] {
        let error = state.remove_job(bad).expect_err(bad);
        assert!(
            matches!(&error, StateError::BadJobName { name } if name == bad),
            "{error:?}"
        );
    }
    assert!(tmp.path().exists());
}

#[test]
fn removal_refuses_to_delete_through_a_mount() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let state = StateDir::new(tmp.path());
    let merged = state.job("web").container(1).join("merged");
    std::fs::create_dir_all(&merged).expect("mkdir");
    let mounted = nix::mount::mount(
        Some("tmpfs"),
        &merged,
        Some("tmpfs"),
        nix::mount::MsFlags::empty(),
        None::<&str>,
    );
    if let Err(errno) = mounted {
        assert!(
            std::env::var_os("TWINE_REQUIRE_REALSYS").is_none(),
            "mounting a tmpfs at {}: {errno}",
            merged.display()
        );
        eprintln!("skipped: cannot mount a tmpfs ({errno}); needs root");
        return;
    }
    std::fs::write(merged.join("precious"), b"x").expect("write into the mount");
    let error = state.remove_job("web").expect_err("a mount under the job");
    nix::mount::umount(&merged).expect("umount");
    assert!(
        matches!(&error, StateError::MountPoint { path } if *path == merged),
        "{error:?}"
    );
    assert_eq!(
        state.list_jobs().expect("list"),
        ["web"],
        "a refused removal hid the job"
    );
    state.remove_job("web").expect("remove after unmount");
    assert_eq!(state.list_jobs().expect("list"), Vec::<String>::new());
}
