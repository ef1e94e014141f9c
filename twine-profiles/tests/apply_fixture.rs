//! Pure tier: facts, apply, resume, rollback and verify on fixture host roots.
#![allow(clippy::unwrap_used)] // tests: a failed unwrap is a failed test with its message.

use std::path::Path;

use twine_profiles::apply::{
    self, ApplyError, ApplyPolicy, MissingKeys, apply_with, reassert_with, resume_with,
    rollback_with,
};
use twine_profiles::change::{Change, Effect, Plan, Setting, ThpKnob};
use twine_profiles::key::{CgroupPath, CmdlineArg, FileName, SysctlKey, UnitName};
use twine_profiles::testing::{FaultPoint, FixtureRoot, FixtureWrites};

const JOURNAL: &str = "var/lib/twine/profiles/state.json";

fn sysctl(key: &str) -> Setting {
    Setting::Sysctl {
        key: SysctlKey::new(key).unwrap(),
    }
}

fn change(setting: Setting, to: Option<&str>, effect: Effect) -> Change {
    Change::new(setting, None, to.map(str::to_owned), effect)
}

/// One change of every kind the fixture has.
fn full_plan() -> Plan {
    let mut plan = plan_of(vec![
        change(sysctl("vm.swappiness"), Some("10"), Effect::Live),
        change(sysctl("kernel.printk_ratelimit"), Some("7"), Effect::Live),
        change(
            Setting::Hugepages2M { node: None },
            Some("512"),
            Effect::LiveRestartJobs,
        ),
        change(
            Setting::Hugepages2M { node: Some(0) },
            Some("256"),
            Effect::LiveRestartJobs,
        ),
        change(
            Setting::Thp {
                knob: ThpKnob::Enabled,
            },
            Some("never"),
            Effect::LiveRestartJobs,
        ),
        change(Setting::CpuGovernor, Some("schedutil"), Effect::Live),
        change(
            Setting::Cgroup2Controllers {
                cgroup: CgroupPath::new("").unwrap(),
            },
            Some("cpu io"),
            Effect::Live,
        ),
        change(
            Setting::DropIn {
                unit: UnitName::new("job.service").unwrap(),
                name: FileName::drop_in("50-twine.conf").unwrap(),
            },
            Some("[Service]\nCPUWeight=200\n"),
            Effect::Live,
        ),
        change(
            Setting::Cmdline {
                arg: CmdlineArg::new("isolcpus").unwrap(),
            },
            Some("1-3"),
            Effect::Reboot,
        ),
        change(Setting::Hugepages1G, Some("4"), Effect::Reboot),
    ]);
    plan.drain = true;
    plan.reboot = true;
    plan
}

/// Applies with the strict policy and plain fixture writes.
fn apply_strict(f: &FixtureRoot, plan: &Plan) -> Result<apply::ApplyReport, ApplyError> {
    apply_with(
        &f.root(),
        plan,
        policy(MissingKeys::Fail, false),
        &mut FixtureWrites::new(),
    )
}

fn plan_of(changes: Vec<Change>) -> Plan {
    let mut plan = Plan::default();
    plan.changes = changes;
    plan
}

fn policy(missing: MissingKeys, allow_reboot: bool) -> ApplyPolicy {
    ApplyPolicy::new(missing, allow_reboot)
}

fn read(f: &FixtureRoot, rel: &str) -> String {
    std::fs::read_to_string(f.path().join(rel)).unwrap()
}

#[test]
fn facts_read_every_kind_as_documented() {
    let f = FixtureRoot::typical().unwrap();
    let root = f.root();
    let settings = vec![
        sysctl("net.ipv4.tcp_rmem"),
        sysctl("vm.no_such_key"),
        Setting::Thp {
            knob: ThpKnob::Defrag,
        },
        Setting::CpuGovernor,
        Setting::Hugepages2M { node: Some(0) },
        Setting::Hugepages1G,
        Setting::Cmdline {
            arg: CmdlineArg::new("console").unwrap(),
        },
        Setting::Cgroup2Controllers {
            cgroup: CgroupPath::new("").unwrap(),
        },
    ];
    let facts = root.facts(&settings, true).unwrap();
    let v = |i: usize| facts.values[&settings[i]].clone();
    assert_eq!(v(0).as_deref(), Some("4096 131072 6291456"));
    assert_eq!(v(1), None);
    assert_eq!(v(2).as_deref(), Some("madvise"));
    assert_eq!(
        v(3).as_deref(),
        Some("mixed:cpu0=performance,cpu1=powersave")
    );
    assert_eq!(v(4).as_deref(), Some("0"));
    assert_eq!(v(5), None);
    assert_eq!(v(6).as_deref(), Some("ttyS0"));
    assert_eq!(v(7).as_deref(), Some("cpu memory"));
    assert!(facts.jobs_running);
    assert_eq!(
        facts.booted_cmdline,
        "BOOT_IMAGE=/vmlinuz root=/dev/sda1 ro quiet"
    );

    // etc/kernel/cmdline, when it exists, is the boot config.
    f.file(
        "etc/kernel/cmdline",
        "root=/dev/sda1 hugepagesz=1G hugepages=8\n",
    )
    .unwrap();
    assert_eq!(
        root.read(&Setting::Hugepages1G).unwrap().as_deref(),
        Some("8")
    );
    assert_eq!(root.read(&settings[6]).unwrap(), None);
}

#[test]
fn apply_writes_verifies_and_rollback_restores_the_tree() {
    let f = FixtureRoot::typical().unwrap();
    let root = f.root();
    let before = f.snapshot().unwrap();
    let mut w = FixtureWrites::new();
    let report = apply_with(
        &root,
        &full_plan(),
        policy(MissingKeys::Fail, false),
        &mut w,
    )
    .unwrap();

    assert_eq!(read(&f, "proc/sys/vm/swappiness"), "10\n");
    assert_eq!(
        read(&f, "sys/kernel/mm/transparent_hugepage/enabled"),
        "always madvise [never]\n"
    );
    assert_eq!(read(&f, "sys/fs/cgroup/cgroup.subtree_control"), "cpu io\n");
    assert_eq!(
        read(&f, "sys/devices/system/cpu/cpu1/cpufreq/scaling_governor"),
        "schedutil\n"
    );
    assert_eq!(
        read(&f, "etc/sysctl.d/90-twine.conf"),
        "# Written by twine-profiles; rewritten as a whole on every apply.\n\
         kernel.printk_ratelimit = 7\nvm.swappiness = 10\n"
    );
    assert!(read(&f, "etc/default/grub").ends_with(
        "GRUB_CMDLINE_LINUX=\"console=ttyS0 isolcpus=1-3 hugepagesz=1G hugepages=4\"\n"
    ));
    assert!(report.daemon_reload);
    assert!(report.reboot_required);
    assert_eq!(report.pending_boot.len(), 2);

    // After the reboot the booted command line shows the arguments: verify says done.
    assert_eq!(apply::verify(&root).unwrap().pending.len(), 2);
    f.file(
        "proc/cmdline",
        "BOOT_IMAGE=/vmlinuz console=ttyS0 isolcpus=1-3 hugepagesz=1G hugepages=4\n",
    )
    .unwrap();
    let status = apply::verify(&root).unwrap();
    assert!(status.pending.is_empty());
    assert_eq!(status.done.len(), 2);
    assert!(status.drifted.is_empty(), "{:?}", status.drifted);
    // A reboot resets live-only writes: verify names them.
    f.file(
        "sys/kernel/mm/transparent_hugepage/enabled",
        "[always] madvise never\n",
    )
    .unwrap();
    let drifted = apply::verify(&root).unwrap().drifted;
    assert_eq!(drifted.len(), 1, "{drifted:?}");
    assert_eq!(drifted[0].wanted.as_deref(), Some("never"));
    assert_eq!(drifted[0].found.as_deref(), Some("always"));
    f.file(
        "sys/kernel/mm/transparent_hugepage/enabled",
        "always madvise [never]\n",
    )
    .unwrap();
    f.file(
        "proc/cmdline",
        &String::from_utf8_lossy(&before[Path::new("proc/cmdline")]),
    )
    .unwrap();

    let back = rollback_with(&root, &mut FixtureWrites::new()).unwrap();
    assert!(back.daemon_reload);
    same_tree(&f.snapshot().unwrap(), &before, "tree");
}

/// Fails each write in turn (journal writes included), before and after its effect, then
/// resumes (the tree must equal a clean apply's) or rolls back (it must equal the fixture).
#[test]
fn a_crash_at_any_write_can_be_resumed_or_rolled_back() {
    let clean = FixtureRoot::typical().unwrap();
    let original = clean.snapshot().unwrap();
    let mut counter = FixtureWrites::new();
    let plan = full_plan();
    let pol = policy(MissingKeys::Fail, false);
    let clean_report = apply_with(&clean.root(), &plan, pol, &mut counter).unwrap();
    let applied = clean.snapshot().unwrap();
    let total = counter.count();
    assert!(total > 20, "{total} writes");

    for point in [FaultPoint::Before, FaultPoint::After] {
        for n in 0..total {
            for resume in [true, false] {
                let f = FixtureRoot::typical().unwrap();
                let root = f.root();
                let mut faulty = FixtureWrites::new().fail_at(n, point, libc_eio());
                let err = apply_with(&root, &plan, pol, &mut faulty);
                assert!(err.is_err(), "write {n} {point:?} did not fail");
                let journal = f.path().join(JOURNAL).exists();
                if resume {
                    let report = if journal {
                        resume_with(&root, &mut FixtureWrites::new()).unwrap()
                    } else {
                        // The first journal write failed: nothing was written at all.
                        same_tree(
                            &f.snapshot().unwrap(),
                            &original,
                            &format!("write {n} {point:?}"),
                        );
                        apply_with(&root, &plan, pol, &mut FixtureWrites::new()).unwrap()
                    };
                    assert_eq!(report, clean_report, "write {n} {point:?}");
                    same_tree(
                        &f.snapshot().unwrap(),
                        &applied,
                        &format!("resume after write {n} {point:?}"),
                    );
                } else {
                    rollback_with(&root, &mut FixtureWrites::new()).unwrap();
                    same_tree(
                        &f.snapshot().unwrap(),
                        &original,
                        &format!("rollback after write {n} {point:?}"),
                    );
                }
            }
        }
    }
}

/// Compares two trees, naming only the paths that differ.
#[track_caller]
fn same_tree(got: &Tree, want: &Tree, what: &str) {
    let paths: std::collections::BTreeSet<_> = got.keys().chain(want.keys()).collect();
    let differ: Vec<String> = paths
        .into_iter()
        .filter(|p| got.get(*p) != want.get(*p))
        .map(|p| {
            let show = |t: &Tree| t.get(p).map(|b| String::from_utf8_lossy(b).into_owned());
            format!("{}: {:?} != {:?}", p.display(), show(got), show(want))
        })
        .collect();
    assert!(differ.is_empty(), "{what}: {differ:#?}");
}

type Tree = std::collections::BTreeMap<std::path::PathBuf, Vec<u8>>;

fn libc_eio() -> i32 {
    5
}

#[test]
fn an_interrupted_rollback_can_be_run_again() {
    let f = FixtureRoot::typical().unwrap();
    let root = f.root();
    let before = f.snapshot().unwrap();
    let pol = policy(MissingKeys::Fail, false);
    apply_with(&root, &full_plan(), pol, &mut FixtureWrites::new()).unwrap();
    let mut faulty = FixtureWrites::new().fail_at(5, FaultPoint::After, libc_eio());
    assert!(rollback_with(&root, &mut faulty).is_err());
    assert!(matches!(
        resume_with(&root, &mut FixtureWrites::new()),
        Err(ApplyError::Unfinished {
            what: "rollback",
            ..
        })
    ));
    rollback_with(&root, &mut FixtureWrites::new()).unwrap();
    same_tree(&f.snapshot().unwrap(), &before, "tree");
}

#[test]
fn missing_keys_fail_before_any_write_or_are_skipped() {
    let f = FixtureRoot::typical().unwrap();
    let root = f.root();
    let before = f.snapshot().unwrap();
    let plan = plan_of(vec![
        change(sysctl("vm.swappiness"), Some("10"), Effect::Live),
        change(sysctl("vm.not_on_this_kernel"), Some("1"), Effect::Live),
    ]);
    let err = apply_with(
        &root,
        &plan,
        policy(MissingKeys::Fail, false),
        &mut FixtureWrites::new(),
    )
    .unwrap_err();
    assert!(matches!(err, ApplyError::Missing { .. }), "{err}");
    assert!(
        err.to_string().contains("proc/sys/vm/not_on_this_kernel"),
        "{err}"
    );
    same_tree(&f.snapshot().unwrap(), &before, "tree");

    let report = apply_with(
        &root,
        &plan,
        policy(MissingKeys::Skip, false),
        &mut FixtureWrites::new(),
    )
    .unwrap();
    assert_eq!(report.skipped, vec![sysctl("vm.not_on_this_kernel")]);
    assert_eq!(read(&f, "proc/sys/vm/swappiness"), "10\n");
    assert!(!read(&f, "etc/sysctl.d/90-twine.conf").contains("not_on_this_kernel"));
}

#[test]
fn partial_hugepages_error_or_escalate_to_the_command_line() {
    let plan = plan_of(vec![change(
        Setting::Hugepages2M { node: None },
        Some("512"),
        Effect::LiveRestartJobs,
    )]);
    let hp = "sys/kernel/mm/hugepages/hugepages-2048kB/nr_hugepages";

    let f = FixtureRoot::typical().unwrap();
    let before = f.snapshot().unwrap();
    let mut w = FixtureWrites::new().hugepage_limit(100);
    let err = apply_with(&f.root(), &plan, policy(MissingKeys::Fail, false), &mut w).unwrap_err();
    assert!(
        matches!(
            err,
            ApplyError::PartialHugepages {
                wanted: 512,
                got: 100,
                ..
            }
        ),
        "{err}"
    );
    assert_eq!(read(&f, hp), "100\n");
    rollback_with(&f.root(), &mut FixtureWrites::new()).unwrap();
    same_tree(&f.snapshot().unwrap(), &before, "tree");

    let f = FixtureRoot::typical().unwrap();
    let mut w = FixtureWrites::new().hugepage_limit(100);
    let report = apply_with(&f.root(), &plan, policy(MissingKeys::Fail, true), &mut w).unwrap();
    assert_eq!(report.partial.len(), 1);
    assert_eq!(
        (report.partial[0].wanted, report.partial[0].got),
        (512, 100)
    );
    assert!(report.reboot_required);
    assert!(read(&f, "etc/default/grub").contains("hugepagesz=2M hugepages=512\""));
    assert_eq!(apply::verify(&f.root()).unwrap().pending.len(), 1);
}

#[test]
fn a_partial_node_count_escalates_to_the_per_node_form_in_etc_kernel_cmdline() {
    let f = FixtureRoot::typical().unwrap();
    f.file("etc/kernel/cmdline", "root=/dev/sda1 ro\n").unwrap();
    let plan = plan_of(vec![
        change(
            Setting::Hugepages2M { node: Some(0) },
            Some("300"),
            Effect::LiveRestartJobs,
        ),
        change(
            Setting::Cmdline {
                arg: CmdlineArg::new("nohz").unwrap(),
            },
            Some(""),
            Effect::Reboot,
        ),
    ]);
    let mut w = FixtureWrites::new().hugepage_limit(10);
    let report = apply_with(&f.root(), &plan, policy(MissingKeys::Fail, true), &mut w).unwrap();
    assert_eq!(report.partial.len(), 1);
    assert_eq!(
        read(&f, "etc/kernel/cmdline"),
        "root=/dev/sda1 ro nohz hugepagesz=2M hugepages=0:300\n"
    );
    assert_eq!(read(&f, "etc/default/grub").matches("nohz").count(), 0);
    f.file(
        "proc/cmdline",
        "root=/dev/sda1 ro nohz hugepagesz=2M hugepages=0:300\n",
    )
    .unwrap();
    assert!(apply::verify(&f.root()).unwrap().pending.is_empty());
}

#[test]
fn hugepage_arguments_go_through_the_hugepage_settings() {
    let f = FixtureRoot::typical().unwrap();
    let plan = plan_of(vec![change(
        Setting::Cmdline {
            arg: CmdlineArg::new("hugepages").unwrap(),
        },
        Some("4"),
        Effect::Reboot,
    )]);
    let err = apply_strict(&f, &plan).unwrap_err();
    assert!(matches!(err, ApplyError::BadValue { .. }), "{err}");
}

#[test]
fn write_errors_are_typed_and_name_the_path_and_value() {
    for (errno, want) in [
        (30, "read-only file system"),
        (13, "permission denied"),
        (16, "Device or resource busy (os error 16)"),
    ] {
        let f = FixtureRoot::typical().unwrap();
        let before = f.snapshot().unwrap();
        let plan = plan_of(vec![change(
            sysctl("vm.swappiness"),
            Some("10"),
            Effect::Live,
        )]);
        // Write 0 is the journal, 1 the journal with the original recorded, 2 the sysctl.
        let mut w = FixtureWrites::new().fail_at(2, FaultPoint::Before, errno);
        let err =
            apply_with(&f.root(), &plan, policy(MissingKeys::Fail, false), &mut w).unwrap_err();
        let kind_ok = match errno {
            30 => matches!(err, ApplyError::ReadOnly { .. }),
            13 => matches!(err, ApplyError::Permission { .. }),
            _ => matches!(err, ApplyError::Write { .. }),
        };
        assert!(kind_ok, "{err:?}");
        let text = err.to_string();
        assert!(text.starts_with("writing 10 to "), "{text}");
        assert!(
            text.ends_with(&format!("proc/sys/vm/swappiness: {want}")),
            "{text}"
        );
        rollback_with(&f.root(), &mut FixtureWrites::new()).unwrap();
        same_tree(&f.snapshot().unwrap(), &before, "tree");
    }
}

#[test]
fn two_applies_roll_back_to_the_first_originals() {
    let f = FixtureRoot::typical().unwrap();
    let root = f.root();
    let before = f.snapshot().unwrap();
    let pol = policy(MissingKeys::Fail, false);
    apply_with(&root, &full_plan(), pol, &mut FixtureWrites::new()).unwrap();
    let mut second = Plan::default();
    second.changes = vec![
        change(sysctl("vm.swappiness"), Some("1"), Effect::Live),
        change(
            Setting::Thp {
                knob: ThpKnob::Defrag,
            },
            Some("never"),
            Effect::LiveRestartJobs,
        ),
    ];
    apply_with(&root, &second, pol, &mut FixtureWrites::new()).unwrap();
    assert_eq!(read(&f, "proc/sys/vm/swappiness"), "1\n");
    rollback_with(&root, &mut FixtureWrites::new()).unwrap();
    same_tree(&f.snapshot().unwrap(), &before, "tree");
    assert!(!f.path().join(JOURNAL).exists());
}

#[test]
fn a_second_apply_at_the_same_time_is_refused() {
    let f = FixtureRoot::typical().unwrap();
    let dir = f.path().join("var/lib/twine/profiles");
    std::fs::create_dir_all(&dir).unwrap();
    let held = nix::fcntl::Flock::lock(
        std::fs::File::open(&dir).unwrap(),
        nix::fcntl::FlockArg::LockExclusiveNonblock,
    )
    .unwrap();
    let err = apply_strict(&f, &full_plan()).unwrap_err();
    assert!(matches!(err, ApplyError::Busy { .. }), "{err}");
    drop(held);
    apply_strict(&f, &full_plan()).unwrap();
}

#[test]
fn an_unfinished_apply_blocks_a_new_one() {
    let f = FixtureRoot::typical().unwrap();
    let pol = policy(MissingKeys::Fail, false);
    let mut w = FixtureWrites::new().fail_at(3, FaultPoint::Before, libc_eio());
    assert!(apply_with(&f.root(), &full_plan(), pol, &mut w).is_err());
    let err = apply_with(&f.root(), &full_plan(), pol, &mut FixtureWrites::new()).unwrap_err();
    assert!(
        matches!(err, ApplyError::Unfinished { what: "apply", .. }),
        "{err}"
    );
}

#[test]
fn files_are_not_written_through_symlinks_out_of_the_root() {
    let f = FixtureRoot::typical().unwrap();
    let outside = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(f.path().join("etc/systemd")).unwrap();
    std::os::unix::fs::symlink(outside.path(), f.path().join("etc/systemd/network")).unwrap();
    let plan = plan_of(vec![change(
        Setting::Networkd {
            name: FileName::networkd("10-x.network").unwrap(),
        },
        Some("[Match]\nName=eth0\n"),
        Effect::Live,
    )]);
    let err = apply_strict(&f, &plan).unwrap_err();
    assert!(matches!(err, ApplyError::Unsafe { .. }), "{err}");
    assert_eq!(std::fs::read_dir(outside.path()).unwrap().count(), 0);
}

#[test]
fn values_that_could_inject_are_refused_before_writing() {
    let f = FixtureRoot::typical().unwrap();
    let before = f.snapshot().unwrap();
    let plan = plan_of(vec![
        change(sysctl("vm.swappiness"), Some("10"), Effect::Live),
        change(
            sysctl("kernel.printk_ratelimit"),
            Some("1\nkernel.x = 1"),
            Effect::Live,
        ),
    ]);
    let err = apply_strict(&f, &plan).unwrap_err();
    assert!(matches!(err, ApplyError::BadValue { .. }), "{err}");
    same_tree(&f.snapshot().unwrap(), &before, "tree");
}

/// Live writes of every kind the kernel forgets at boot, and a sysctl, which it does not
/// (twine's sysctl.d drop-in sets it at boot): part of [`full_plan`].
fn forgotten_plan() -> Plan {
    let keep = |s: &Setting| {
        *s == sysctl("vm.swappiness")
            || matches!(
                s,
                Setting::Hugepages2M { node: None }
                    | Setting::Thp { .. }
                    | Setting::CpuGovernor
                    | Setting::Cgroup2Controllers { .. }
            )
    };
    plan_of(
        full_plan()
            .changes
            .into_iter()
            .filter(|c| keep(&c.setting))
            .collect(),
    )
}

/// The places of [`forgotten_plan`] a boot resets, in journal order.
const FORGOTTEN: &[&str] = &[
    "sys/kernel/mm/hugepages/hugepages-2048kB/nr_hugepages",
    "sys/kernel/mm/transparent_hugepage/enabled",
    "sys/devices/system/cpu/cpu0/cpufreq/scaling_governor",
    "sys/devices/system/cpu/cpu1/cpufreq/scaling_governor",
    "sys/fs/cgroup/cgroup.subtree_control",
];

/// A fixture with [`forgotten_plan`] applied under `pol`, its tree before and after.
fn applied_forgotten(pol: ApplyPolicy) -> (FixtureRoot, Tree, Tree) {
    let f = FixtureRoot::typical().unwrap();
    let before = f.snapshot().unwrap();
    apply_with(&f.root(), &forgotten_plan(), pol, &mut FixtureWrites::new()).unwrap();
    let applied = f.snapshot().unwrap();
    (f, before, applied)
}

/// What a boot does to the fixture: the forgotten places hold their boot defaults (the
/// fixture's values) again.
fn boot(f: &FixtureRoot, before: &Tree) {
    for rel in FORGOTTEN {
        f.file(rel, &String::from_utf8_lossy(&before[Path::new(rel)]))
            .unwrap();
    }
}

#[test]
fn reassert_writes_back_what_a_boot_forgot_and_nothing_else() {
    let (f, before, applied) = applied_forgotten(policy(MissingKeys::Fail, false));
    let root = f.root();
    boot(&f, &before);
    // A sysctl that drifted is not reasserted: at a real boot the drop-in sets it.
    f.file("proc/sys/vm/swappiness", "60\n").unwrap();
    assert_eq!(apply::verify(&root).unwrap().drifted.len(), 6);

    let report = reassert_with(&root, &mut FixtureWrites::new()).unwrap();
    let paths: Vec<_> = report.rewritten.iter().map(|d| d.path.clone()).collect();
    let want: Vec<_> = FORGOTTEN.iter().map(|rel| root.path(rel)).collect();
    assert_eq!(paths, want);
    assert_eq!(report.rewritten[1].wanted.as_deref(), Some("never"));
    assert_eq!(report.rewritten[1].found.as_deref(), Some("madvise"));
    assert!(report.partial.is_empty());
    assert_eq!(read(&f, "proc/sys/vm/swappiness"), "60\n");
    let drifted = apply::verify(&root).unwrap().drifted;
    assert_eq!(drifted.len(), 1, "{drifted:?}");
    assert_eq!(drifted[0].setting, Some(sysctl("vm.swappiness")));

    // The journal's originals are untouched: rollback returns to the fixture.
    f.file("proc/sys/vm/swappiness", "10\n").unwrap();
    same_tree(&f.snapshot().unwrap(), &applied, "reasserted");
    rollback_with(&root, &mut FixtureWrites::new()).unwrap();
    same_tree(&f.snapshot().unwrap(), &before, "rolled back");
}

#[test]
fn reassert_where_nothing_drifted_writes_nothing() {
    let (f, _, applied) = applied_forgotten(policy(MissingKeys::Fail, false));
    let mut w = FixtureWrites::new();
    let report = reassert_with(&f.root(), &mut w).unwrap();
    assert_eq!(report, apply::ReassertReport::default());
    assert_eq!(w.count(), 0);
    same_tree(&f.snapshot().unwrap(), &applied, "nothing drifted");

    // Without a journal there is nothing to reassert, and nothing is created.
    let bare = FixtureRoot::typical().unwrap();
    let before = bare.snapshot().unwrap();
    let mut w = FixtureWrites::new();
    reassert_with(&bare.root(), &mut w).unwrap();
    assert_eq!(w.count(), 0);
    same_tree(&bare.snapshot().unwrap(), &before, "no journal");
    assert!(!bare.path().join("var").exists());
}

/// Fails each reassert write in turn, before and after its effect: a typed error naming the
/// place and value, the journal unchanged, and a retry that finishes the job.
#[test]
fn a_fault_at_any_reassert_write_is_typed_and_a_retry_succeeds() {
    let pol = policy(MissingKeys::Fail, false);
    let (f, before, _) = applied_forgotten(pol);
    boot(&f, &before);
    let mut counter = FixtureWrites::new();
    reassert_with(&f.root(), &mut counter).unwrap();
    let total = counter.count();
    assert_eq!(total, FORGOTTEN.len());

    for point in [FaultPoint::Before, FaultPoint::After] {
        for (n, place) in FORGOTTEN.iter().enumerate() {
            let what = format!("write {n} {point:?}");
            let (f, before, applied) = applied_forgotten(pol);
            let root = f.root();
            boot(&f, &before);
            let journal = read(&f, JOURNAL);
            let mut faulty = FixtureWrites::new().fail_at(n, point, libc_eio());
            match reassert_with(&root, &mut faulty) {
                Err(ApplyError::Write { path, value, .. }) => {
                    assert_eq!(path, root.path(place), "{what}");
                    assert!(!value.is_empty(), "{what}");
                }
                other => panic!("{what}: {other:?}"),
            }
            assert_eq!(read(&f, JOURNAL), journal, "{what}: journal changed");
            reassert_with(&root, &mut FixtureWrites::new()).unwrap();
            same_tree(&f.snapshot().unwrap(), &applied, &what);
            rollback_with(&root, &mut FixtureWrites::new()).unwrap();
            same_tree(
                &f.snapshot().unwrap(),
                &before,
                &format!("{what}, rolled back"),
            );
        }
    }
}

#[test]
fn a_partly_granted_pool_on_reassert_follows_the_apply_policy() {
    let pool = FORGOTTEN[0];
    // No reboot allowed: a typed error.
    let (f, before, _) = applied_forgotten(policy(MissingKeys::Fail, false));
    boot(&f, &before);
    let err = reassert_with(&f.root(), &mut FixtureWrites::new().hugepage_limit(100));
    match err {
        Err(ApplyError::PartialHugepages { path, wanted, got }) => {
            assert_eq!(path, f.root().path(pool));
            assert_eq!((wanted, got), (512, 100));
        }
        other => panic!("{other:?}"),
    }
    // A reboot allowed: reported, nothing escalated, and verify still sees the short pool.
    let (f, before, _) = applied_forgotten(policy(MissingKeys::Fail, true));
    boot(&f, &before);
    let grub = read(&f, "etc/default/grub");
    let report = reassert_with(&f.root(), &mut FixtureWrites::new().hugepage_limit(100)).unwrap();
    assert_eq!(report.partial.len(), 1, "{report:?}");
    assert_eq!(
        (report.partial[0].wanted, report.partial[0].got),
        (512, 100)
    );
    assert_eq!(report.rewritten.len(), FORGOTTEN.len());
    assert_eq!(read(&f, "etc/default/grub"), grub);
    let drifted = apply::verify(&f.root()).unwrap().drifted;
    assert_eq!(drifted.len(), 1, "{drifted:?}");
    assert_eq!(drifted[0].path, f.root().path(pool));
}

#[test]
fn reassert_refuses_an_unfinished_apply() {
    let f = FixtureRoot::typical().unwrap();
    let pol = policy(MissingKeys::Fail, false);
    let mut faulty = FixtureWrites::new().fail_at(3, FaultPoint::Before, libc_eio());
    assert!(apply_with(&f.root(), &forgotten_plan(), pol, &mut faulty).is_err());
    let err = reassert_with(&f.root(), &mut FixtureWrites::new()).unwrap_err();
    assert!(
        matches!(err, ApplyError::Unfinished { what: "apply", .. }),
        "{err:?}"
    );
}
