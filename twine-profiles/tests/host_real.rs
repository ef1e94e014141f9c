//! Host tier: the real kernel through `HostRoot::real()`. Reading facts needs no privilege;
//! apply and rollback of one harmless sysctl need root, and leave the host as it was.
#![allow(clippy::unwrap_used)] // tests: a failed unwrap is a failed test with its message.

use std::fs;
use std::path::Path;
use std::process::Command;

use twine_profiles::apply::{self, ApplyPolicy, MissingKeys};
use twine_profiles::change::{Change, Effect, Plan, Setting, ThpKnob};
use twine_profiles::host::HostRoot;
use twine_profiles::key::{CgroupPath, SysctlKey};

/// The apply test changes a sysctl the facts test reads: they take turns.
static REAL_HOST: std::sync::Mutex<()> = std::sync::Mutex::new(());

fn sysctl(key: &str) -> Setting {
    Setting::Sysctl {
        key: SysctlKey::new(key).unwrap(),
    }
}

/// `Some(reason)` when this test cannot run here; it panics instead under
/// `TWINE_REQUIRE_REALSYS=1`.
fn unless_root() -> Option<String> {
    let status = fs::read_to_string("/proc/self/status").unwrap();
    let uid = status
        .lines()
        .find_map(|l| l.strip_prefix("Uid:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .unwrap_or("?")
        .to_owned();
    if uid == "0" {
        return None;
    }
    let reason = format!("needs root to write /proc/sys (effective uid {uid})");
    assert!(
        std::env::var("TWINE_REQUIRE_REALSYS").as_deref() != Ok("1"),
        "TWINE_REQUIRE_REALSYS=1: {reason}"
    );
    Some(reason)
}

fn sysctl_n(key: &str) -> String {
    let out = Command::new("sysctl").arg("-n").arg(key).output().unwrap();
    assert!(out.status.success(), "sysctl -n {key}");
    String::from_utf8(out.stdout)
        .unwrap()
        .split_whitespace()
        .collect::<Vec<_>>()
        .join(" ")
}

#[test]
fn real_facts_match_sysctl_and_the_kernel_files() {
    let _turn = REAL_HOST.lock().unwrap_or_else(|e| e.into_inner());
    let root = HostRoot::real();
    let keys = [
        "kernel.printk_ratelimit",
        "vm.stat_interval",
        "vm.swappiness",
        "net.ipv4.tcp_rmem",
    ];
    let mut settings: Vec<Setting> = keys.iter().map(|k| sysctl(k)).collect();
    settings.push(sysctl("vm.twine_no_such_key"));
    let facts = root.facts(&settings, false).unwrap();
    for (k, s) in keys.iter().zip(&settings) {
        assert_eq!(
            facts.values[s].as_deref(),
            Some(sysctl_n(k).as_str()),
            "{k}"
        );
    }
    assert_eq!(facts.values[&settings[4]], None);
    let cmdline = fs::read_to_string("/proc/cmdline").unwrap();
    assert_eq!(facts.booted_cmdline, cmdline.trim());

    let thp = Path::new("/sys/kernel/mm/transparent_hugepage/enabled");
    if thp.exists() {
        let text = fs::read_to_string(thp).unwrap();
        let got = root
            .read(&Setting::Thp {
                knob: ThpKnob::Enabled,
            })
            .unwrap()
            .unwrap();
        assert!(text.contains(&format!("[{got}]")), "{text} vs {got}");
    }

    // The cgroup2 mount comes from mountinfo (on a hybrid host, /sys/fs/cgroup/unified).
    let rel = root.subtree_control("").unwrap();
    let text = fs::read_to_string(root.path(&rel)).unwrap();
    let mut want: Vec<&str> = text.split_whitespace().collect();
    want.sort_unstable();
    let got = root
        .read(&Setting::Cgroup2Controllers {
            cgroup: CgroupPath::new("").unwrap(),
        })
        .unwrap();
    assert_eq!(
        got.as_deref(),
        Some(want.join(" ").as_str()),
        "{}",
        rel.display()
    );
}

/// Rolls back if the test fails half-way, so the host keeps its settings.
struct RollbackOnDrop;

impl Drop for RollbackOnDrop {
    fn drop(&mut self) {
        if Path::new("/var/lib/twine/profiles/state.json").exists() {
            let _ = apply::rollback(&HostRoot::real());
        }
    }
}

#[test]
fn real_apply_and_rollback_of_a_harmless_sysctl_leave_the_host_as_it_was() {
    if let Some(reason) = unless_root() {
        eprintln!("skipped: {reason}");
        return;
    }
    let _turn = REAL_HOST.lock().unwrap_or_else(|e| e.into_inner());
    let root = HostRoot::real();
    let journal = Path::new("/var/lib/twine/profiles/state.json");
    assert!(
        !journal.exists(),
        "{} exists: a real twine apply is in progress on this host",
        journal.display()
    );
    let had_var_lib_twine = Path::new("/var/lib/twine").exists();
    let drop_in = Path::new("/etc/sysctl.d/90-twine.conf");
    let drop_in_before = fs::read(drop_in).ok();
    let key = "kernel.printk_ratelimit";
    let before = sysctl_n(key);
    let wanted = (before.parse::<u64>().unwrap() + 1).to_string();

    let guard = RollbackOnDrop;
    let mut plan = Plan::default();
    plan.changes = vec![Change::new(
        sysctl(key),
        Some(before.clone()),
        Some(wanted.clone()),
        Effect::Live,
    )];
    let report = apply::apply(&root, &plan, ApplyPolicy::new(MissingKeys::Fail, false)).unwrap();
    assert!(!report.reboot_required);
    assert_eq!(sysctl_n(key), wanted);
    assert!(
        fs::read_to_string(drop_in)
            .unwrap()
            .contains(&format!("{key} = {wanted}\n"))
    );

    apply::rollback(&root).unwrap();
    drop(guard);
    assert_eq!(sysctl_n(key), before);
    assert_eq!(fs::read(drop_in).ok(), drop_in_before);
    assert!(!journal.exists());
    if !had_var_lib_twine {
        fs::remove_dir_all("/var/lib/twine").unwrap();
    }
}
