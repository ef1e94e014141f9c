//! Pure tier: the daemon's ticks, restore and state file on a fixture tree in a tempdir.
#![allow(clippy::unwrap_used)] // tests: a failed unwrap is a failed test with its message.

use std::fs;
use std::path::{Path, PathBuf};
use std::time::Duration;

use twine_oomd::CgroupRoot;
use twine_oomd::config::Config;
use twine_oomd::daemon::{Daemon, DaemonError, KillRecord, Options, Output, Record, Selection};
use twine_oomd::fixture::fake_cgroup;
use twine_oomd::senpai::{Action, Cause, Mode};

const GIB: u64 = 1 << 30;

/// A tempdir with `cg/` (the cgroup root) and `proc/meminfo`.
struct Tree {
    dir: tempfile::TempDir,
}

impl Tree {
    fn new() -> Self {
        let dir = tempfile::tempdir().unwrap();
        fs::create_dir_all(dir.path().join("cg")).unwrap();
        fs::create_dir_all(dir.path().join("proc")).unwrap();
        fs::write(
            dir.path().join("proc/meminfo"),
            "MemTotal:       16000000 kB\nMemFree: 1 kB\nSwapTotal:       4000000 kB\nSwapFree:        4000000 kB\n",
        )
        .unwrap();
        Self { dir }
    }

    fn root(&self) -> CgroupRoot {
        CgroupRoot::at(self.dir.path().join("cg"))
    }

    fn state(&self) -> PathBuf {
        self.dir.path().join("run/state.json")
    }

    /// A cgroup using `current` bytes, all of it inactive page cache.
    fn cgroup(&self, rel: &str, current: u64) -> PathBuf {
        let dir = fake_cgroup(&self.dir.path().join("cg"), rel).unwrap();
        fs::write(dir.join("memory.current"), format!("{current}\n")).unwrap();
        let stat = fs::read_to_string(dir.join("memory.stat")).unwrap();
        let stat = stat.replace("inactive_file 0", &format!("inactive_file {current}"));
        fs::write(dir.join("memory.stat"), stat).unwrap();
        dir
    }

    fn options(&self, selection: Selection, mode: Option<Mode>) -> Options {
        let mut options = Options::new(self.root(), selection);
        options.mode = mode;
        options.proc_root = self.dir.path().join("proc");
        options.state_file = Some(self.state());
        options
    }

    fn daemon(&self, cgroups: &[&str], mode: Option<Mode>) -> Daemon {
        let selection = Selection::Cgroups(cgroups.iter().map(|s| s.to_string()).collect());
        Daemon::new(self.options(selection, mode)).unwrap()
    }
}

/// Cgroup `a` (1 GiB of page cache) under a high-mode daemon after its first tick.
fn taken_over(tree: &Tree) -> (PathBuf, Daemon) {
    let a = tree.cgroup("a", GIB);
    let mut daemon = tree.daemon(&["a"], Some(Mode::High));
    daemon.tick(secs(0)).unwrap();
    (a, daemon)
}

fn read(path: &Path) -> String {
    fs::read_to_string(path).unwrap().trim().to_owned()
}

fn secs(s: u64) -> Duration {
    Duration::from_secs(s)
}

#[test]
fn high_mode_takes_over_then_probes_down_in_memory_high() {
    let tree = Tree::new();
    let a = tree.cgroup("a", GIB);
    let mut daemon = tree.daemon(&["a"], Some(Mode::High));
    let report = daemon.tick(secs(0)).unwrap();
    let record = &report.records[0];
    assert_eq!(
        (record.cgroup.as_str(), record.action, record.cause),
        ("a", Action::SetHigh(GIB), Some(Cause::Init)),
        "{record:?}"
    );
    assert_eq!(read(&a.join("memory.high")), GIB.to_string());
    assert_eq!(
        read(&a.join("memory.reclaim")),
        "",
        "high mode never reclaims"
    );
    // Within the interval: wait. After a whole interval without stall: a full 1 % probe.
    let waited = daemon.tick(secs(1)).unwrap();
    assert_eq!(waited.records[0].action, Action::None);
    let probed = daemon.tick(secs(6)).unwrap();
    let lowered = GIB * 99 / 100 / 4096 * 4096; // 1 % less, page-aligned down
    assert_eq!(probed.records[0].action, Action::SetHigh(lowered));
    assert_eq!(read(&a.join("memory.high")), lowered.to_string());
    // Stall at the target makes it back off.
    fs::write(
        a.join("memory.pressure"),
        "some avg10=0.00 avg60=0.00 avg300=0.00 total=50000\nfull avg10=0.00 avg60=0.00 avg300=0.00 total=0\n",
    )
    .unwrap();
    let backed = daemon.tick(secs(7)).unwrap();
    let record = &backed.records[0];
    assert_eq!(record.cause, Some(Cause::Backoff), "{record:?}");
    assert_eq!(record.some_delta_us, Some(50_000));
    assert!(read(&a.join("memory.high")).parse::<u64>().unwrap() > lowered);
}

#[test]
fn mode_defaults_to_reclaim_where_the_cgroup_has_memory_reclaim() {
    let tree = Tree::new();
    let a = tree.cgroup("a", GIB);
    let b = tree.cgroup("b", GIB);
    fs::remove_file(b.join("memory.reclaim")).unwrap();
    let mut daemon = tree.daemon(&["a", "b"], None);
    for t in [0, 6, 12] {
        let report = daemon.tick(secs(t)).unwrap();
        assert_eq!(report.records[0].mode, Mode::Reclaim);
        assert_eq!(report.records[1].mode, Mode::High);
    }
    let asked: u64 = read(&a.join("memory.reclaim")).parse().unwrap();
    assert!(asked > 0 && asked <= GIB / 100, "{asked}");
    assert_eq!(
        read(&a.join("memory.high")),
        "max",
        "reclaim mode leaves memory.high"
    );
    assert_ne!(read(&b.join("memory.high")), "max");
    drop(daemon); // one daemon per state file at a time
    // A forced mode wins over what the cgroup offers.
    let mut forced = tree.daemon(&["a"], Some(Mode::High));
    assert_eq!(forced.tick(secs(0)).unwrap().records[0].mode, Mode::High);
    drop(forced);
    let c = tree.cgroup("c", GIB);
    let mut forced = tree.daemon(&["c"], Some(Mode::Reclaim));
    forced.tick(secs(0)).unwrap();
    let report = forced.tick(secs(6)).unwrap();
    assert_eq!(report.records[0].mode, Mode::Reclaim);
    assert!(matches!(report.records[0].action, Action::Reclaim(_)));
    assert_eq!(read(&c.join("memory.high")), "max");
}

#[test]
fn a_vanished_cgroup_is_dropped_and_a_new_one_joins() {
    let tree = Tree::new();
    let a = tree.cgroup("a", GIB);
    tree.cgroup("b", GIB);
    let mut daemon = tree.daemon(&["a", "b", "c"], Some(Mode::High));
    assert_eq!(daemon.tick(secs(0)).unwrap().records.len(), 2);
    fs::remove_dir_all(&a).unwrap();
    let report = daemon.tick(secs(1)).unwrap();
    assert_eq!(daemon.cgroups().collect::<Vec<_>>(), ["b"]);
    assert_eq!(report.records.len(), 1);
    tree.cgroup("c", GIB);
    daemon.tick(secs(2)).unwrap();
    assert_eq!(daemon.cgroups().collect::<Vec<_>>(), ["b", "c"]);
    // The gone cgroup's original is forgotten; the others are restored.
    let restored = daemon.restore().unwrap();
    let names: Vec<_> = restored.iter().map(|r| r.cgroup.as_str()).collect();
    assert_eq!(names, ["b", "c"]);
}

#[test]
fn a_cgroup_whose_files_break_mid_run_is_reported_not_fatal() {
    let tree = Tree::new();
    let (a, mut daemon) = taken_over(&tree);
    fs::write(a.join("memory.pressure"), "some garbage\n").unwrap();
    let report = daemon.tick(secs(1)).unwrap();
    let error = report.records[0].error.as_deref().unwrap();
    assert!(error.contains("memory.pressure"), "{error}");
}

#[test]
fn a_failed_memory_high_write_is_undone_not_taken_for_an_external_edit() {
    let tree = Tree::new();
    let (a, mut daemon) = taken_over(&tree);
    // The kept fd still reads the old file; writes to the path now fail (EISDIR).
    fs::remove_file(a.join("memory.high")).unwrap();
    fs::create_dir(a.join("memory.high")).unwrap();
    for t in [6, 7] {
        let record = &daemon.tick(secs(t)).unwrap().records[0];
        assert_eq!(record.cause, Some(Cause::Probe), "{record:?}");
        let error = record.error.as_deref().unwrap();
        assert!(error.contains("memory.high"), "{error}");
    }
}

#[test]
fn restore_on_stop_writes_back_the_original_and_removes_the_state_file() {
    let tree = Tree::new();
    let a = tree.cgroup("a", GIB);
    let b = tree.cgroup("b", GIB);
    fs::write(b.join("memory.high"), "5368709120\n").unwrap();
    let mut daemon = tree.daemon(&["a", "b"], Some(Mode::High));
    for t in 0..=12 {
        daemon.tick(secs(t)).unwrap();
    }
    assert!(read(&a.join("memory.high")).parse::<u64>().unwrap() < GIB);
    assert!(
        tree.state().exists(),
        "originals persisted before the first write"
    );
    let restored = daemon.restore().unwrap();
    assert_eq!(restored.len(), 2);
    assert_eq!(read(&a.join("memory.high")), "max");
    assert_eq!(read(&b.join("memory.high")), "5368709120");
    assert!(
        !tree.state().exists(),
        "state file removed after a clean restore"
    );
}

#[test]
fn an_external_edit_stands_at_restore() {
    let tree = Tree::new();
    let (a, mut daemon) = taken_over(&tree);
    fs::write(a.join("memory.high"), "2147483648\n").unwrap();
    daemon.tick(secs(1)).unwrap(); // external edit: re-initialise, new original
    daemon.restore().unwrap();
    assert_eq!(read(&a.join("memory.high")), "2147483648");
}

#[test]
fn the_successor_of_a_killed_daemon_restores_the_first_original() {
    let tree = Tree::new();
    let a = tree.cgroup("a", 2 * GIB);
    fs::write(a.join("memory.high"), "4294967296\n").unwrap();
    let mut first = tree.daemon(&["a"], Some(Mode::High));
    for t in 0..=30 {
        first.tick(secs(t)).unwrap();
    }
    drop(first); // as if SIGKILLed: no restore
    let lowered: u64 = read(&a.join("memory.high")).parse().unwrap();
    assert!(lowered < 2 * GIB);
    let mut second = tree.daemon(&["a"], Some(Mode::High));
    second.tick(secs(0)).unwrap();
    second.tick(secs(6)).unwrap();
    let restored = second.restore().unwrap();
    assert_eq!(restored[0].action, Action::RestoreHigh(Some(4 * GIB)));
    assert_eq!(read(&a.join("memory.high")), "4294967296");
    assert!(!tree.state().exists());
}

#[test]
fn a_killed_daemons_cgroups_are_restored_even_when_not_selected_again() {
    let tree = Tree::new();
    let a = tree.cgroup("a", GIB);
    tree.cgroup("b", GIB);
    let mut first = tree.daemon(&["a"], Some(Mode::High));
    first.tick(secs(0)).unwrap();
    first.tick(secs(6)).unwrap();
    drop(first);
    assert_ne!(read(&a.join("memory.high")), "max");
    let mut second = tree.daemon(&["b"], Some(Mode::High));
    second.tick(secs(0)).unwrap();
    second.restore().unwrap();
    assert_eq!(read(&a.join("memory.high")), "max");
}

#[test]
fn a_state_file_that_cannot_be_used_is_an_error() {
    let tree = Tree::new();
    tree.cgroup("a", GIB);
    fs::create_dir_all(tree.state().parent().unwrap()).unwrap();
    for (text, expected) in [
        ("{not json", "key must be a string"),
        (r#"{"root": "/elsewhere", "originals": {}}"#, "/elsewhere"),
    ] {
        fs::write(tree.state(), text).unwrap();
        let options = tree.options(Selection::Cgroups(vec!["a".into()]), None);
        let err = Daemon::new(options).unwrap_err();
        assert!(matches!(err, DaemonError::StateFile { .. }), "{err:?}");
        let message = err.to_string();
        assert!(
            message.starts_with(&tree.state().display().to_string()),
            "{message}"
        );
        assert!(message.contains(expected), "{message}");
    }
}

#[test]
fn two_daemons_never_share_a_state_file() {
    let tree = Tree::new();
    let first = tree.daemon(&["a"], None);
    let options = tree.options(Selection::Cgroups(vec!["a".into()]), None);
    let err = Daemon::new(options).unwrap_err();
    assert!(
        err.to_string().contains("another twine oomd daemon"),
        "{err}"
    );
    drop(first);
    tree.daemon(&["a"], None);
}

#[test]
fn bad_options_and_configs_are_errors() {
    let tree = Tree::new();
    let mut options = tree.options(Selection::Cgroups(vec!["a".into()]), None);
    options.interval = Some(Duration::ZERO);
    assert!(matches!(Daemon::new(options), Err(DaemonError::Config(_))));
    let mut options = tree.options(Selection::Cgroups(vec!["a".into()]), None);
    options.senpai.limit_min_bytes = 2 * options.senpai.limit_max_bytes;
    let err = Daemon::new(options).unwrap_err();
    assert!(err.to_string().contains("limit_min_bytes"), "{err}");
    let mut options = tree.options(Selection::Cgroups(vec!["../etc".into()]), None);
    options.state_file = None;
    let mut daemon = Daemon::new(options).unwrap();
    // A refused path keeps the selection as it was, and is logged.
    assert!(daemon.tick(secs(0)).unwrap().records.is_empty());
    let err = Config::from_toml("[[resize]]\ncgroups = [\"a\"]\nbogus = 1\n").unwrap_err();
    assert!(err.to_string().contains("bogus"), "{err}");
    fs::remove_file(tree.dir.path().join("proc/meminfo")).unwrap();
    let options = tree.options(Selection::Cgroups(vec!["a".into()]), None);
    let err = Daemon::new(options).unwrap_err();
    assert!(err.to_string().contains("meminfo"), "{err}");
}

fn config_daemon(tree: &Tree, toml: &str) -> Daemon {
    let config = Config::from_toml(toml).unwrap();
    let options = tree.options(Selection::Config(Box::new(config)), None);
    Daemon::new(options).unwrap()
}

#[test]
fn config_globs_select_cgroups_as_they_come_and_go() {
    let tree = Tree::new();
    tree.cgroup("work.slice", 4 * GIB);
    tree.cgroup("work.slice/a.service", GIB);
    tree.cgroup("work.slice/b.scope", GIB);
    let mut daemon = config_daemon(
        &tree,
        "[[resize]]\ncgroups = [\"work.slice/*.service\"]\nmode = \"high\"\n",
    );
    assert_eq!(daemon.tick_period(), Duration::from_secs(1));
    daemon.tick(secs(0)).unwrap();
    assert_eq!(
        daemon.cgroups().collect::<Vec<_>>(),
        ["work.slice/a.service"]
    );
    tree.cgroup("work.slice/c.service", GIB);
    let report = daemon.tick(secs(1)).unwrap();
    assert_eq!(report.records.len(), 2);
    assert!(report.records.iter().all(|r| r.mode == Mode::High));
    fs::remove_dir_all(tree.root().path().join("work.slice/a.service")).unwrap();
    daemon.tick(secs(2)).unwrap();
    assert_eq!(
        daemon.cgroups().collect::<Vec<_>>(),
        ["work.slice/c.service"]
    );
}

/// A rule killing the largest child of work.slice above 1 GiB; its hook runs `HOOK_COMMAND`.
const KILL: &str = r#"
pause_s = 60
[[kill]]
name = "too-big"
cgroup = "work.slice"
detectors = [{ type = "memory_above", bytes = 1073741824 }]

[[prekill_hook]]
cgroups = ["work.slice/**"]
command = HOOK_COMMAND
"#;

/// [`KILL`] with a hook that writes the victim to `out`.
fn kill_config(out: &str) -> String {
    let hook = format!(r#"["sh", "-c", "echo $TWINE_OOMD_VICTIM > \"$0\"", "{out}"]"#);
    KILL.replace("HOOK_COMMAND", &hook)
}

#[test]
fn the_kill_policy_runs_the_hook_then_writes_cgroup_kill_and_pauses() {
    let tree = Tree::new();
    tree.cgroup("work.slice", 3 * GIB);
    let big = tree.cgroup("work.slice/big", 2 * GIB);
    let small = tree.cgroup("work.slice/small", GIB);
    let hook_out = tree.dir.path().join("hook.out");
    let toml = kill_config(&hook_out.display().to_string());
    let mut daemon = config_daemon(&tree, &toml);
    let kill = daemon.tick(secs(0)).unwrap().kill.unwrap();
    assert_eq!(
        (kill.victim.as_str(), kill.dry_run),
        ("work.slice/big", false)
    );
    assert_eq!(kill.via, Some("cgroup.kill"), "{kill:?}");
    assert_eq!(read(&hook_out), "work.slice/big");
    assert_eq!(read(&big.join("cgroup.kill")), "1");
    assert_eq!(read(&small.join("cgroup.kill")), "");
    assert_eq!(
        daemon.tick(secs(1)).unwrap().kill,
        None,
        "paused after a kill"
    );
}

/// A `--dry-run` daemon on [`KILL`] over `work.slice/big` (returned) in `tree`.
fn dry_run_kill_daemon(tree: &Tree) -> (PathBuf, Daemon) {
    tree.cgroup("work.slice", 3 * GIB);
    let big = tree.cgroup("work.slice/big", 2 * GIB);
    let config = Config::from_toml(&kill_config("/dev/null")).unwrap();
    let mut options = tree.options(Selection::Config(Box::new(config)), None);
    options.dry_run = true;
    (big, Daemon::new(options).unwrap())
}

/// `Daemon::run` for `millis`: the records and the kills it handed over.
fn run_for(daemon: &mut Daemon, millis: u64) -> (Vec<Record>, Vec<KillRecord>) {
    let stop = std::sync::atomic::AtomicBool::new(false);
    let (mut records, mut kills) = (Vec::new(), Vec::new());
    daemon
        .run(
            &stop,
            Some(Duration::from_millis(millis)),
            |output| match output {
                Output::Record(r) => records.push(r.clone()),
                Output::Kill(k) => kills.push(k.clone()),
            },
        )
        .unwrap();
    (records, kills)
}

#[test]
fn a_dry_run_decides_and_writes_nothing_and_a_slow_hook_is_killed() {
    let tree = Tree::new();
    let (big, mut daemon) = dry_run_kill_daemon(&tree);
    let kill = daemon.tick(secs(0)).unwrap().kill.unwrap();
    assert!(kill.dry_run && kill.via.is_none() && kill.hook.is_none());
    assert_eq!(read(&big.join("cgroup.kill")), "");

    drop(daemon); // one daemon per state file at a time
    let slow = KILL.replace("HOOK_COMMAND", r#"["sleep", "30"]"#) + "timeout_s = 0.2\n";
    let mut daemon = config_daemon(&tree, &slow);
    let started = std::time::Instant::now();
    let kill = daemon.tick(secs(0)).unwrap().kill.unwrap();
    assert!(started.elapsed() < Duration::from_secs(5));
    let hook = kill.hook.unwrap();
    assert!(hook.contains("killed after"), "{hook}");
    assert_eq!(read(&big.join("cgroup.kill")), "1");
}

#[test]
fn run_stops_on_the_flag_or_the_duration_and_restores() {
    let tree = Tree::new();
    let a = tree.cgroup("a", GIB);
    let mut options = tree.options(Selection::Cgroups(vec!["a".into()]), Some(Mode::High));
    options.interval = Some(Duration::from_millis(20));
    let mut daemon = Daemon::new(options).unwrap();
    let (records, kills) = run_for(&mut daemon, 300);
    assert!(kills.is_empty(), "{kills:?}");
    assert!(records.len() >= 3, "{records:?}");
    let last = records.last().unwrap();
    assert_eq!(last.action, Action::RestoreHigh(None), "{last:?}");
    assert_eq!(read(&a.join("memory.high")), "max");
    // A set flag stops before the first tick.
    let stop = std::sync::atomic::AtomicBool::new(true);
    let mut count = 0;
    daemon.run(&stop, None, |_| count += 1).unwrap();
    assert_eq!(count, 0);
}

#[test]
fn run_hands_a_dry_run_kill_decision_to_its_caller() {
    let tree = Tree::new();
    let (big, mut daemon) = dry_run_kill_daemon(&tree);
    let (records, kills) = run_for(&mut daemon, 300);
    assert!(records.is_empty(), "no [[resize]]: {records:?}");
    // pause_s = 60: one decision in the run.
    assert_eq!(kills.len(), 1, "{kills:?}");
    let kill = &kills[0];
    assert_eq!(
        (kill.victim.as_str(), kill.rule.as_str(), kill.dry_run),
        ("work.slice/big", "too-big", true)
    );
    assert!(kill.via.is_none() && kill.error.is_none(), "{kill:?}");
    assert!(kill.time_s < 0.3, "{kill:?}");
    assert_eq!(read(&big.join("cgroup.kill")), "");
}

#[test]
fn without_cgroup_kill_every_pid_gets_sigkill() {
    let tree = Tree::new();
    tree.cgroup("work.slice", 3 * GIB);
    let big = tree.cgroup("work.slice/big", 2 * GIB);
    fs::remove_file(big.join("cgroup.kill")).unwrap(); // a kernel before 5.14
    let mut victim = std::process::Command::new("sleep")
        .arg("30")
        .spawn()
        .unwrap();
    fs::write(big.join("cgroup.procs"), format!("{}\n", victim.id())).unwrap();
    // The kernel empties cgroup.procs when the process dies; here a thread does.
    let procs = big.join("cgroup.procs");
    let reaper = std::thread::spawn(move || {
        let status = victim.wait().unwrap();
        fs::write(procs, "").unwrap();
        status
    });
    let mut daemon = config_daemon(&tree, &kill_config("/dev/null"));
    let kill = daemon.tick(secs(0)).unwrap().kill.unwrap();
    assert_eq!(
        (kill.via, kill.error.as_deref()),
        (Some("SIGKILL"), None),
        "{kill:?}"
    );
    use std::os::unix::process::ExitStatusExt as _;
    assert_eq!(reaper.join().unwrap().signal(), Some(9));
}

#[test]
fn a_memory_high_write_that_lands_after_its_timeout_is_taken_as_written() {
    let tree = Tree::new();
    let a = tree.cgroup("a", GIB);
    let mut options = tree.options(Selection::Cgroups(vec!["a".into()]), Some(Mode::High));
    // No wait at all: each write is reported as timed out (or, racing, as done) and lands
    // on the writer thread just after.
    options.write_timeout = Duration::ZERO;
    let mut daemon = Daemon::new(options).unwrap();
    let settle = || std::thread::sleep(Duration::from_millis(100));
    let first = daemon.tick(secs(0)).unwrap();
    assert_eq!(first.records[0].cause, Some(Cause::Init));
    settle();
    assert_eq!(read(&a.join("memory.high")), GIB.to_string());
    // The landed write is the controller's own, not an external edit nor a new start.
    let next = daemon.tick(secs(6)).unwrap();
    assert_eq!(next.records[0].cause, Some(Cause::Probe), "{next:?}");
    settle();
    daemon.restore().unwrap();
    settle();
    assert_eq!(read(&a.join("memory.high")), "max");
}

#[test]
fn a_reclaim_mode_successor_restores_a_killed_high_mode_daemons_original_at_once() {
    let tree = Tree::new();
    let (a, mut first) = taken_over(&tree);
    first.tick(secs(6)).unwrap();
    drop(first); // SIGKILLed
    assert_ne!(read(&a.join("memory.high")), "max");
    let mut second = tree.daemon(&["a"], Some(Mode::Reclaim));
    let report = second.tick(secs(0)).unwrap();
    let restored = &report.records[0];
    assert_eq!(restored.action, Action::RestoreHigh(None), "{report:?}");
    assert_eq!(read(&a.join("memory.high")), "max");
    assert!(!tree.state().exists());
    assert_eq!(report.records[1].mode, Mode::Reclaim);
}
