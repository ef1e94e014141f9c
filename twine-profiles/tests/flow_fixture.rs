//! The whole switch flow on a fixture host root: [`HostApplier`] over the journalled apply,
//! with a fake drain and a fake reboot (which changes the fixture's boot id and, as the
//! boot loader would, its `proc/cmdline` from the boot config).
#![allow(clippy::unwrap_used)] // tests: a failed unwrap is a failed test with its message.

use std::cell::RefCell;
use std::fs;
use std::rc::Rc;

use twine_profiles::apply::{ApplyPolicy, MissingKeys, rollback_with};
use twine_profiles::change::Plan;
use twine_profiles::flow::{
    Drain, DrainRefusal, HookError, HostApplier, Progress, Reboot, Runner, STATE_FILE, State,
    read_boot_id,
};
use twine_profiles::plan::plan;
use twine_profiles::profile::{Format, Profile};
use twine_profiles::testing::{FixtureRoot, FixtureWrites};

/// What the fake drain and reboot did, in order.
#[derive(Debug, Default)]
struct Log {
    events: Vec<&'static str>,
    drained: bool,
}

#[derive(Clone)]
struct Fake {
    log: Rc<RefCell<Log>>,
    dir: std::path::PathBuf,
}

impl Drain for Fake {
    fn drain(&mut self) -> Result<(), DrainRefusal> {
        let mut log = self.log.borrow_mut();
        log.events.push("drain");
        log.drained = true;
        Ok(())
    }
    fn undrain(&mut self) -> Result<(), HookError> {
        let mut log = self.log.borrow_mut();
        log.events.push("undrain");
        log.drained = false;
        Ok(())
    }
}

impl Fake {
    /// What a reboot does to the fixture: a new boot id, and the booted command line is
    /// the GRUB default's `GRUB_CMDLINE_LINUX`.
    fn reboot_now(&self) {
        let grub = fs::read_to_string(self.dir.join("etc/default/grub")).unwrap();
        let args = grub
            .lines()
            .find_map(|l| l.strip_prefix("GRUB_CMDLINE_LINUX="))
            .unwrap()
            .trim_matches('"')
            .to_owned();
        fs::write(
            self.dir.join("proc/cmdline"),
            format!("BOOT_IMAGE=/vmlinuz root=/dev/sda1 ro {args}\n"),
        )
        .unwrap();
        fs::write(
            self.dir.join("proc/sys/kernel/random/boot_id"),
            "boot-after-reboot\n",
        )
        .unwrap();
    }
}

impl Reboot for Fake {
    fn request_reboot(&mut self) -> Result<(), HookError> {
        self.log.borrow_mut().events.push("reboot");
        Ok(())
    }
    fn boot_id(&mut self) -> Result<String, HookError> {
        Ok(read_boot_id(&self.dir)?)
    }
}

struct Setup {
    fixture: FixtureRoot,
    state: tempfile::TempDir,
    fake: Fake,
}

fn setup() -> Setup {
    let fixture = FixtureRoot::typical().unwrap();
    fixture
        .file("proc/sys/kernel/random/boot_id", "boot-before\n")
        .unwrap();
    let fake = Fake {
        log: Rc::default(),
        dir: fixture.path().to_owned(),
    };
    Setup {
        fixture,
        state: tempfile::tempdir().unwrap(),
        fake,
    }
}

impl Setup {
    fn runner(&self) -> Runner<HostApplier<FixtureWrites>, Fake, Fake> {
        let applier = HostApplier::with_writes(
            self.fixture.root(),
            ApplyPolicy::new(MissingKeys::Fail, false),
            FixtureWrites::new(),
        );
        Runner::new(
            self.state.path(),
            applier,
            self.fake.clone(),
            self.fake.clone(),
        )
    }

    fn plan(&self, toml: &str, jobs_running: bool) -> (Profile, Plan) {
        let profile = Profile::from_str(toml, Format::Toml).unwrap();
        let settings: Vec<_> = profile.desired().into_keys().collect();
        let facts = self.fixture.root().facts(&settings, jobs_running).unwrap();
        let p = plan(&facts, &profile);
        (profile, p)
    }

    fn read(&self, rel: &str) -> String {
        fs::read_to_string(self.fixture.path().join(rel)).unwrap()
    }

    fn events(&self) -> Vec<&'static str> {
        self.fake.log.borrow().events.clone()
    }

    /// THP reads `enabled = never`, `defrag = defer`.
    #[track_caller]
    fn has_thp_never_defer(&self) {
        assert_eq!(
            self.read("sys/kernel/mm/transparent_hugepage/enabled"),
            "always madvise [never]\n"
        );
        assert_eq!(
            self.read("sys/kernel/mm/transparent_hugepage/defrag"),
            "always [defer] defer+madvise madvise never\n"
        );
    }

    /// Planning again against the fixture is empty: the host has the profile.
    fn replans_empty(&self, profile: &Profile) {
        let settings: Vec<_> = profile.desired().into_keys().collect();
        let facts = self.fixture.root().facts(&settings, true).unwrap();
        assert!(plan(&facts, profile).is_empty());
    }
}

#[test]
fn live_only_profile_applies_verifies_without_drain() {
    let s = setup();
    let (profile, p) = s.plan("[sysctl]\n\"vm.swappiness\" = 10\n", true);
    assert!(!p.drain && !p.reboot, "{p:?}");
    let progress = s.runner().start("live", p).unwrap();
    assert_eq!(progress, Progress::Finished(State::Done));
    assert_eq!(s.read("proc/sys/vm/swappiness"), "10\n");
    assert!(
        s.events().is_empty(),
        "no drain, no reboot: {:?}",
        s.events()
    );
    s.replans_empty(&profile);
}

#[test]
fn thp_profile_while_jobs_run_drains_applies_and_undrains() {
    let s = setup();
    let (profile, p) = s.plan("[thp]\nenabled = \"never\"\ndefrag = \"defer\"\n", true);
    assert!(p.drain && !p.reboot, "{p:?}");
    let progress = s.runner().start("thp", p).unwrap();
    assert_eq!(progress, Progress::Finished(State::Done));
    s.has_thp_never_defer();
    assert_eq!(s.events(), ["drain", "undrain"]);
    assert!(!s.fake.log.borrow().drained);
    s.replans_empty(&profile);
}

#[test]
fn cmdline_profile_is_pending_until_the_reboot_then_verified_and_undrained() {
    let s = setup();
    let (profile, p) = s.plan("[cmdline]\nisolcpus = \"2-3\"\n", false);
    assert!(p.drain && p.reboot, "{p:?}");
    let mut runner = s.runner();
    assert_eq!(
        runner.start("isolated", p).unwrap(),
        Progress::AwaitingReboot
    );
    assert_eq!(s.events(), ["drain", "reboot"]);
    assert!(
        s.fake.log.borrow().drained,
        "stays drained across the reboot"
    );
    assert!(
        s.read("etc/default/grub")
            .contains("GRUB_CMDLINE_LINUX=\"console=ttyS0 isolcpus=2-3\""),
        "{}",
        s.read("etc/default/grub")
    );
    // Resumed without a reboot (same boot id): the reboot is requested again, still pending.
    assert_eq!(runner.resume().unwrap(), Some(Progress::AwaitingReboot));
    assert_eq!(s.events(), ["drain", "reboot", "reboot"]);
    let flow = runner.load().unwrap().unwrap();
    assert!(matches!(flow.state, State::Rebooting { .. }), "{flow:?}");

    // The reboot: a new boot id and the new command line; a fresh runner resumes.
    s.fake.reboot_now();
    assert_eq!(
        s.read("proc/cmdline").split_whitespace().last(),
        Some("isolcpus=2-3")
    );
    let mut after = s.runner();
    assert_eq!(
        after.resume().unwrap(),
        Some(Progress::Finished(State::Done))
    );
    assert_eq!(s.events(), ["drain", "reboot", "reboot", "undrain"]);
    assert!(!s.fake.log.borrow().drained);
    assert!(s.state.path().join(STATE_FILE).is_file());
    s.replans_empty(&profile);
}

#[test]
fn a_failed_apply_is_rolled_back_through_the_journal() {
    let s = setup();
    let before = s.fixture.snapshot().unwrap();
    // the second sysctl does not exist on the fixture: refused before any write
    let (_, mut p) = s.plan("[sysctl]\n\"vm.swappiness\" = 10\n", false);
    let (_, extra) = s.plan("[sysctl]\n\"vm.twine_absent\" = 1\n", false);
    p.changes.extend(extra.changes);
    let progress = s.runner().start("broken", p).unwrap();
    let Progress::Finished(State::RolledBack { error }) = progress else {
        panic!("{progress:?}");
    };
    assert!(error.contains("vm.twine_absent"), "{error}");
    let after = s.fixture.snapshot().unwrap();
    assert_eq!(before, after);
}

/// A sysfs attribute the mixed profile sets; the fixture adds it.
const KSM_RUN: &str = "sys/kernel/ksm/run";

/// What a boot resets the mixed profile's live places to: the kernel's defaults, which are
/// the fixture's values.
const BOOT_DEFAULTS: &[(&str, &str)] = &[
    (
        "sys/kernel/mm/transparent_hugepage/enabled",
        "always [madvise] never\n",
    ),
    (
        "sys/kernel/mm/transparent_hugepage/defrag",
        "always defer defer+madvise [madvise] never\n",
    ),
    (
        "sys/kernel/mm/hugepages/hugepages-2048kB/nr_hugepages",
        "0\n",
    ),
    (KSM_RUN, "0\n"),
];

/// Regression for the gap of issue 10: live writes the kernel forgets at boot, mixed with
/// a command-line change, read as drifted after the reboot and the flow ended
/// `Failed { Verifying }`. Verify now writes them back first: the flow ends `Done`, and a
/// rollback afterwards restores the fixture byte for byte (but for `proc/cmdline` and the
/// boot id, which belong to the booted kernel, not to twine).
#[test]
fn mixed_live_and_cmdline_plan_is_reasserted_after_the_reboot_and_done() {
    let s = setup();
    s.fixture.file(KSM_RUN, "0\n").unwrap();
    let before = s.fixture.snapshot().unwrap();
    let (profile, p) = s.plan(
        "[hugepages]\ncount_2m = 64\n[thp]\nenabled = \"never\"\ndefrag = \"defer\"\n\
         [sysfs]\n\"kernel/ksm/run\" = 1\n[cmdline]\nisolcpus = \"2-3\"\n",
        false,
    );
    assert!(p.drain && p.reboot, "{p:?}");
    assert_eq!(p.changes.len(), 5, "{p:?}");
    assert_eq!(
        s.runner().start("mixed", p).unwrap(),
        Progress::AwaitingReboot
    );
    assert_eq!(s.read(KSM_RUN), "1\n");

    // The reboot: a new boot id and command line, and the live places back at the defaults.
    s.fake.reboot_now();
    for (rel, content) in BOOT_DEFAULTS {
        s.fixture.file(rel, content).unwrap();
    }
    assert_eq!(
        s.runner().resume().unwrap(),
        Some(Progress::Finished(State::Done))
    );
    assert_eq!(s.events(), ["drain", "reboot", "undrain"]);
    s.has_thp_never_defer();
    assert_eq!(
        s.read("sys/kernel/mm/hugepages/hugepages-2048kB/nr_hugepages"),
        "64\n"
    );
    assert_eq!(s.read(KSM_RUN), "1\n");
    s.replans_empty(&profile);

    rollback_with(&s.fixture.root(), &mut FixtureWrites::new()).unwrap();
    let kernel_owned = |mut tree: std::collections::BTreeMap<std::path::PathBuf, Vec<u8>>| {
        tree.remove(std::path::Path::new("proc/cmdline"));
        tree.remove(std::path::Path::new("proc/sys/kernel/random/boot_id"));
        tree
    };
    assert_eq!(
        kernel_owned(s.fixture.snapshot().unwrap()),
        kernel_owned(before)
    );
}
