//! Guest tier (a real 6.1 kernel under QEMU: `cargo xtask guest-test -p twine-profiles`):
//! profiles applied through `HostRoot::real()`, read back from the kernel's own files
//! (not through twine), and rolled back to exactly what was there before.
#![allow(clippy::unwrap_used, clippy::print_stdout)] // tests: unwrap is a failed test; the benchmark prints its figure.

use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use twine_profiles::apply::{self, ApplyPolicy, ApplyReport, MissingKeys};
use twine_profiles::change::{Effect, Plan};
use twine_profiles::host::HostRoot;
use twine_profiles::plan::plan;
use twine_profiles::profile::{Format, Profile};

/// The tests share one kernel and one journal: they take turns.
static KERNEL: Mutex<()> = Mutex::new(());

const NR_HUGEPAGES: &str = "/sys/kernel/mm/hugepages/hugepages-2048kB/nr_hugepages";
const THP_ENABLED: &str = "/sys/kernel/mm/transparent_hugepage/enabled";
const THP_DEFRAG: &str = "/sys/kernel/mm/transparent_hugepage/defrag";
const DROP_IN: &str = "/etc/sysctl.d/90-twine.conf";
const KERNEL_CMDLINE: &str = "/etc/kernel/cmdline";

fn in_guest() -> bool {
    if std::env::var_os("TWINE_GUEST").is_none_or(|v| v != "1") {
        eprintln!("skipped: guest-only test; run it with `cargo xtask guest-test`");
        return false;
    }
    true
}

fn sysctl_path(key: &str) -> PathBuf {
    Path::new("/proc/sys").join(key.replace('.', "/"))
}

/// A file's bytes as text, `None` when absent.
fn read(path: impl AsRef<Path>) -> Option<String> {
    match fs::read_to_string(path.as_ref()) {
        Ok(s) => Some(s),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
        Err(e) => panic!("{}: {e}", path.as_ref().display()),
    }
}

fn words(s: &str) -> String {
    s.split_whitespace().collect::<Vec<_>>().join(" ")
}

/// The selected word of a kernel choice file, read directly.
fn selected(path: &str) -> String {
    let text = read(path).unwrap();
    text.split_whitespace()
        .find_map(|w| w.strip_prefix('[').and_then(|w| w.strip_suffix(']')))
        .unwrap_or_else(|| panic!("{path}: {text:?}"))
        .to_owned()
}

/// `HugePages_Total` in /proc/meminfo.
fn meminfo_hugepages() -> u64 {
    read("/proc/meminfo")
        .unwrap()
        .lines()
        .find_map(|l| l.strip_prefix("HugePages_Total:"))
        .unwrap()
        .trim()
        .parse()
        .unwrap()
}

/// The first of `choices` that differs from the current selection of a choice file.
fn other_choice(path: &str, choices: [&'static str; 2]) -> &'static str {
    let now = selected(path);
    choices.into_iter().find(|c| *c != now).unwrap()
}

/// Every file a test may change, with its bytes, to compare after the rollback.
fn snapshot(paths: &[PathBuf]) -> BTreeMap<PathBuf, Option<String>> {
    paths.iter().map(|p| (p.clone(), read(p))).collect()
}

fn plan_real(toml: &str) -> (Profile, Plan) {
    let profile = Profile::from_str(toml, Format::Toml).unwrap();
    let settings: Vec<_> = profile.desired().into_keys().collect();
    let facts = HostRoot::real().facts(&settings, false).unwrap();
    let p = plan(&facts, &profile);
    (profile, p)
}

fn apply_real(p: &Plan) -> ApplyReport {
    apply::apply(
        &HostRoot::real(),
        p,
        ApplyPolicy::new(MissingKeys::Fail, false),
    )
    .unwrap()
}

/// Rolls back and checks every file is byte for byte what it was.
fn roll_back_to(before: &BTreeMap<PathBuf, Option<String>>) {
    apply::rollback(&HostRoot::real()).unwrap();
    for (path, was) in before {
        assert_eq!(&read(path), was, "{} after rollback", path.display());
    }
    assert!(
        read("/var/lib/twine/profiles/state.json").is_none(),
        "the journal is cleared"
    );
}

#[test]
#[ignore = "guest tier: cargo xtask guest-test"]
fn guest_apply_sysctls_hugepages_thp_read_back_and_roll_back() {
    if !in_guest() {
        return;
    }
    let _turn = KERNEL.lock().unwrap_or_else(|e| e.into_inner());
    let sysctls = [
        ("vm.swappiness", "13"),
        ("vm.dirty_ratio", "33"),
        ("kernel.printk_ratelimit", "9"),
        ("net.ipv4.tcp_rmem", "4096 87381 6291457"),
    ];
    let enabled = other_choice(THP_ENABLED, ["never", "madvise"]);
    let defrag = other_choice(THP_DEFRAG, ["defer", "madvise"]);
    let mut paths: Vec<PathBuf> = sysctls.iter().map(|(k, _)| sysctl_path(k)).collect();
    paths.extend([NR_HUGEPAGES, THP_ENABLED, THP_DEFRAG, DROP_IN].map(PathBuf::from));
    let before = snapshot(&paths);
    let hugepages_before = meminfo_hugepages();
    assert_eq!(hugepages_before, 0, "the guest boots without hugepages");

    let mut toml = String::from("[sysctl]\n");
    for (k, v) in sysctls {
        toml.push_str(&format!("{k:?} = {v:?}\n"));
    }
    toml.push_str(&format!(
        "[hugepages]\ncount_2m = 64\n[thp]\nenabled = {enabled:?}\ndefrag = {defrag:?}\n"
    ));
    let (profile, p) = plan_real(&toml);
    assert_eq!(p.changes.len(), sysctls.len() + 3, "{p:?}");
    assert!(!p.reboot, "{p:?}");
    let report = apply_real(&p);
    assert!(
        !report.reboot_required && report.partial.is_empty(),
        "{report:?}"
    );

    // read back from the kernel, not through twine
    for (k, v) in sysctls {
        assert_eq!(words(&read(sysctl_path(k)).unwrap()), v, "{k}");
    }
    assert_eq!(read(NR_HUGEPAGES).unwrap().trim(), "64");
    assert_eq!(meminfo_hugepages(), 64, "/proc/meminfo HugePages_Total");
    assert_eq!(selected(THP_ENABLED), enabled);
    assert_eq!(selected(THP_DEFRAG), defrag);
    let drop_in = read(DROP_IN).unwrap();
    for (k, _) in sysctls {
        assert!(
            drop_in.contains(k),
            "{k} persisted in {DROP_IN}:\n{drop_in}"
        );
    }
    // the host has the profile: planning again is empty, verify finds nothing amiss
    let (_, again) = plan_real(&profile.to_toml().unwrap());
    assert!(again.is_empty(), "{again:?}");
    let v = apply::verify(&HostRoot::real()).unwrap();
    assert!(v.pending.is_empty() && v.drifted.is_empty(), "{v:?}");

    roll_back_to(&before);
    assert_eq!(meminfo_hugepages(), hugepages_before);
}

#[test]
#[ignore = "guest tier: cargo xtask guest-test"]
fn guest_cmdline_change_is_reboot_and_stays_pending() {
    if !in_guest() {
        return;
    }
    let _turn = KERNEL.lock().unwrap_or_else(|e| e.into_inner());
    let existed = read(KERNEL_CMDLINE);
    let booted = read("/proc/cmdline").unwrap();
    if existed.is_none() {
        fs::create_dir_all("/etc/kernel").unwrap();
        fs::write(KERNEL_CMDLINE, format!("{}\n", booted.trim())).unwrap();
    }
    let before = snapshot(&[PathBuf::from(KERNEL_CMDLINE)]);

    let (_, p) = plan_real("[cmdline]\ntwine_guest_pending = \"1\"\n");
    assert_eq!(p.changes.len(), 1, "{p:?}");
    assert_eq!(p.changes[0].effect, Effect::Reboot);
    assert!(p.reboot && p.drain, "{p:?}");
    let report = apply_real(&p);
    assert!(report.reboot_required, "{report:?}");
    assert_eq!(report.pending_boot.len(), 1, "{report:?}");

    // the boot config has it, the running kernel does not
    let config = read(KERNEL_CMDLINE).unwrap();
    assert!(
        config
            .split_whitespace()
            .any(|w| w == "twine_guest_pending=1"),
        "{config}"
    );
    assert_eq!(read("/proc/cmdline").unwrap(), booted);
    let v = apply::verify(&HostRoot::real()).unwrap();
    assert_eq!(v.pending.len(), 1, "{v:?}");
    assert!(v.done.is_empty() && v.drifted.is_empty(), "{v:?}");
    assert_eq!(v.pending[0].value.as_deref(), Some("1"));
    // and planning again is not a change: the setting is pending, not missing
    let (_, again) = plan_real("[cmdline]\ntwine_guest_pending = \"1\"\n");
    assert!(again.is_empty(), "{again:?}");

    roll_back_to(&before);
    if existed.is_none() {
        fs::remove_file(KERNEL_CMDLINE).unwrap();
    }
    assert_eq!(read(KERNEL_CMDLINE), existed);
}

/// 50 harmless writable sysctls, each with two valid values: the first that differs from the
/// current one is set.
const FIFTY: [(&str, [&str; 2]); 50] = [
    ("net.ipv4.tcp_fin_timeout", ["30", "31"]),
    ("net.ipv4.tcp_keepalive_time", ["600", "601"]),
    ("net.ipv4.tcp_keepalive_intvl", ["30", "31"]),
    ("net.ipv4.tcp_keepalive_probes", ["5", "6"]),
    ("net.ipv4.tcp_syn_retries", ["5", "4"]),
    ("net.ipv4.tcp_synack_retries", ["4", "3"]),
    ("net.ipv4.tcp_retries1", ["4", "5"]),
    ("net.ipv4.tcp_retries2", ["12", "13"]),
    ("net.ipv4.tcp_max_syn_backlog", ["4096", "4097"]),
    ("net.ipv4.tcp_slow_start_after_idle", ["0", "1"]),
    ("net.ipv4.tcp_mtu_probing", ["1", "0"]),
    ("net.ipv4.tcp_sack", ["0", "1"]),
    ("net.ipv4.tcp_timestamps", ["0", "1"]),
    ("net.ipv4.tcp_window_scaling", ["0", "1"]),
    ("net.ipv4.tcp_fastopen", ["3", "1"]),
    ("net.ipv4.tcp_tw_reuse", ["1", "0"]),
    (
        "net.ipv4.tcp_rmem",
        ["4096 87380 6291456", "4096 87381 6291456"],
    ),
    (
        "net.ipv4.tcp_wmem",
        ["4096 65536 4194304", "4096 65537 4194304"],
    ),
    (
        "net.ipv4.ip_local_port_range",
        ["10000 65000", "10001 65000"],
    ),
    ("net.ipv4.tcp_notsent_lowat", ["131072", "131073"]),
    ("net.ipv4.tcp_no_metrics_save", ["1", "0"]),
    ("net.ipv4.tcp_orphan_retries", ["1", "2"]),
    ("net.ipv4.icmp_echo_ignore_broadcasts", ["0", "1"]),
    ("net.ipv4.icmp_ratelimit", ["500", "501"]),
    ("net.ipv4.ip_default_ttl", ["65", "66"]),
    ("net.ipv4.tcp_reordering", ["4", "5"]),
    ("net.ipv4.tcp_autocorking", ["0", "1"]),
    ("net.ipv4.tcp_early_retrans", ["2", "1"]),
    ("net.core.somaxconn", ["8192", "8193"]),
    ("net.core.netdev_max_backlog", ["2000", "2001"]),
    ("net.core.rmem_max", ["4194304", "4194305"]),
    ("net.core.wmem_max", ["4194304", "4194305"]),
    ("net.core.rmem_default", ["262144", "262145"]),
    ("net.core.wmem_default", ["262144", "262145"]),
    ("net.core.optmem_max", ["65536", "65537"]),
    ("vm.swappiness", ["10", "11"]),
    ("vm.dirty_ratio", ["30", "31"]),
    ("vm.dirty_background_ratio", ["5", "6"]),
    ("vm.dirty_expire_centisecs", ["1500", "1501"]),
    ("vm.dirty_writeback_centisecs", ["1000", "1001"]),
    ("vm.vfs_cache_pressure", ["50", "51"]),
    ("vm.stat_interval", ["2", "3"]),
    ("vm.overcommit_ratio", ["60", "61"]),
    ("vm.page-cluster", ["2", "1"]),
    ("vm.max_map_count", ["262144", "262145"]),
    ("vm.watermark_scale_factor", ["20", "21"]),
    ("kernel.printk_ratelimit", ["10", "11"]),
    ("kernel.printk_ratelimit_burst", ["20", "21"]),
    ("kernel.msgmax", ["16384", "16385"]),
    ("kernel.shmmni", ["8192", "8193"]),
];

/// The benchmark: 50 sysctls, THP (enabled and defrag) and 64 hugepages applied live, timed
/// from reading the facts to the last write read back (plan + journalled apply), three times,
/// each rolled back. `docs/BENCHMARKS.md` has the figures.
#[test]
#[ignore = "guest tier: cargo xtask guest-test"]
fn guest_apply_50_sysctls_thp_and_hugepages_live() {
    if !in_guest() {
        return;
    }
    let _turn = KERNEL.lock().unwrap_or_else(|e| e.into_inner());
    let mut paths: Vec<PathBuf> = FIFTY.iter().map(|(k, _)| sysctl_path(k)).collect();
    paths.extend([NR_HUGEPAGES, THP_ENABLED, THP_DEFRAG, DROP_IN].map(PathBuf::from));
    let mut times: Vec<Duration> = Vec::new();
    for run in 1..=3 {
        let before = snapshot(&paths);
        let mut toml = String::from("[sysctl]\n");
        let mut wanted = Vec::new();
        for (k, choices) in FIFTY {
            let now = words(&read(sysctl_path(k)).unwrap_or_else(|| panic!("{k} missing")));
            let v = choices.into_iter().find(|c| *c != now).unwrap();
            toml.push_str(&format!("{k:?} = {v:?}\n"));
            wanted.push((k, v));
        }
        let enabled = other_choice(THP_ENABLED, ["never", "madvise"]);
        let defrag = other_choice(THP_DEFRAG, ["defer", "madvise"]);
        toml.push_str(&format!(
            "[hugepages]\ncount_2m = 64\n[thp]\nenabled = {enabled:?}\ndefrag = {defrag:?}\n"
        ));
        let profile = Profile::from_str(&toml, Format::Toml).unwrap();

        let start = Instant::now();
        let settings: Vec<_> = profile.desired().into_keys().collect();
        let facts = HostRoot::real().facts(&settings, false).unwrap();
        let p = plan(&facts, &profile);
        let planned = start.elapsed();
        let report = apply_real(&p);
        let took = start.elapsed();

        assert_eq!(p.changes.len(), 53, "every setting changes");
        assert!(p.changes.iter().all(|c| c.effect != Effect::Reboot));
        assert!(
            !report.reboot_required && report.partial.is_empty(),
            "{report:?}"
        );
        for (k, v) in &wanted {
            assert_eq!(words(&read(sysctl_path(k)).unwrap()), *v, "{k}");
        }
        assert_eq!(meminfo_hugepages(), 64);
        assert_eq!(selected(THP_ENABLED), enabled);
        assert_eq!(selected(THP_DEFRAG), defrag);
        println!(
            "run {run}: 50 sysctls + THP enabled/defrag + 64 x 2 MiB hugepages applied live in {:.1} ms (facts + plan {:.2} ms)",
            took.as_secs_f64() * 1e3,
            planned.as_secs_f64() * 1e3
        );
        times.push(took);
        roll_back_to(&before);
    }
    times.sort();
    println!(
        "live switch, 53 settings: median {:.1} ms, max {:.1} ms over {} runs (Twine: 3.0 s at P90)",
        times[1].as_secs_f64() * 1e3,
        times[2].as_secs_f64() * 1e3,
        times.len()
    );
}
