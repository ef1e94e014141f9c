//! The TuneD importer: fixture profiles (tests/data/tuned/), and every profile the installed
//! `tuned` package ships.

use std::path::{Path, PathBuf};

use twine_profiles::change::Effect;
use twine_profiles::host::HostRoot;
use twine_profiles::plan::plan;
use twine_profiles::profile::{Format, Profile};
use twine_profiles::tuned::{Dropped, Imported, TunedError, import_tuned, profile_dirs};

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/data/tuned")
        .join(name)
}

fn import(name: &str) -> (toml::Table, Vec<Dropped>) {
    let Imported {
        profile_toml,
        dropped,
        ..
    } = import_tuned(&fixture(name)).expect("imports");
    (check_schema(&profile_toml), dropped)
}

/// The top-level keys and sections of the twine profile schema, and the keys of the
/// sections that have fixed keys.
const SCHEMA: &[(&str, Option<&[&str]>)] = &[
    ("name", None),
    ("sysctl", None),
    ("thp", Some(&["enabled", "defrag"])),
    ("cmdline", None),
    ("cpu", Some(&["governor"])),
    ("sysfs", None),
];

/// Parses `text` as TOML and checks it has only the schema's keys, with string values
/// (or `true` for a bare command-line flag). Returns the table.
fn check_schema(text: &str) -> toml::Table {
    let table: toml::Table = text.parse().unwrap_or_else(|e| panic!("{e}\n{text}"));
    for (key, value) in &table {
        let Some((_, fixed)) = SCHEMA.iter().find(|(k, _)| k == key) else {
            panic!("key {key:?} is not in the schema:\n{text}");
        };
        if key == "name" {
            assert!(value.is_str(), "{text}");
            continue;
        }
        let section = value
            .as_table()
            .unwrap_or_else(|| panic!("{key} is a table"));
        for (k, v) in section {
            if let Some(fixed) = fixed {
                assert!(
                    fixed.contains(&k.as_str()),
                    "[{key}] {k} is not in the schema"
                );
            }
            let ok = v.is_str() || (key == "cmdline" && v.as_bool() == Some(true));
            assert!(ok, "[{key}] {k} = {v} is not a string\n{text}");
        }
    }
    table
}

fn get<'a>(t: &'a toml::Table, section: &str, key: &str) -> Option<&'a toml::Value> {
    t.get(section)?.as_table()?.get(key)
}

fn str_of<'a>(t: &'a toml::Table, section: &str, key: &str) -> Option<&'a str> {
    get(t, section, key)?.as_str()
}

fn was_dropped(dropped: &[Dropped], section: &str, option: &str) -> Option<String> {
    dropped
        .iter()
        .find(|d| d.section == section && d.option == option)
        .map(|d| d.reason.clone())
}

#[test]
fn base_maps_each_kind_and_lists_what_it_cannot() {
    let (t, dropped) = import("base");
    assert_eq!(t["name"].as_str(), Some("base"));
    assert_eq!(str_of(&t, "sysctl", "vm.swappiness"), Some("10"));
    assert_eq!(str_of(&t, "sysctl", "vm.dirty_ratio"), Some("40"));
    assert_eq!(str_of(&t, "thp", "enabled"), Some("madvise"));
    assert_eq!(str_of(&t, "cpu", "governor"), Some("performance"));
    assert_eq!(str_of(&t, "sysfs", "kernel/mm/ksm/run"), Some("1"));
    assert_eq!(str_of(&t, "cmdline", "isolcpus"), Some("2-3"));
    assert_eq!(
        get(&t, "cmdline", "nosoftlockup").and_then(|v| v.as_bool()),
        Some(true)
    );
    assert!(get(&t, "cmdline", "hugepages").is_none());
    assert!(get(&t, "sysctl", "net.core.somaxconn").is_none());

    let reason = |s, o| was_dropped(&dropped, s, o).unwrap_or_else(|| panic!("{s} {o} dropped"));
    assert!(reason("sysctl", "net.core.somaxconn").contains("conditional"));
    assert!(reason("cpu", "governor").contains("first"));
    assert!(reason("cpu", "energy_perf_bias").contains("no twine equivalent"));
    assert!(reason("sysfs", "/sys/devices/system/cpu/cpu*/online").contains("glob"));
    assert!(reason("bootloader", "cmdline_base").contains("function"));
    assert!(reason("disk", "readahead").contains("disk plugin"));
    assert_eq!(dropped.len(), 6, "{dropped:#?}");
}

#[test]
fn child_overrides_drops_and_reports_conditions() {
    let (t, dropped) = import("child");
    assert_eq!(t["name"].as_str(), Some("child"));
    // the child's variable wins, and expands in the inherited option
    assert_eq!(str_of(&t, "sysctl", "vm.swappiness"), Some("5"));
    // drop= removed the inherited option
    assert!(get(&t, "sysctl", "kernel.sched_migration_cost_ns").is_none());
    assert_eq!(
        str_of(&t, "sysctl", "vm.dirty_background_ratio"),
        Some("10")
    );
    // the conditional unit is not merged into [sysctl]
    assert!(get(&t, "sysctl", "kernel.numa_balancing").is_none());
    assert!(
        was_dropped(&dropped, "sysctl.arm", "kernel.numa_balancing")
            .is_some_and(|r| r.contains("uname_regex"))
    );
    // the later `transparent_hugepage` spelling
    assert_eq!(str_of(&t, "thp", "enabled"), Some("always"));
    // `-` removed an inherited word; quoted words are refused keys, reported
    assert!(get(&t, "cmdline", "nosoftlockup").is_none());
    assert_eq!(str_of(&t, "cmdline", "tsc"), Some("reliable"));
    assert_eq!(str_of(&t, "cmdline", "isolcpus"), Some("2-3"));
    assert!(
        dropped
            .iter()
            .any(|d| d.option == "cmdline_more" && d.value.contains("quoted"))
    );
    assert!(
        was_dropped(
            &dropped,
            "sysfs",
            "/sys/bus/workqueue/devices/writeback/cpumask"
        )
        .is_some_and(|r| r.contains("f:cpulist2hex"))
    );
}

#[test]
fn replace_swaps_the_whole_inherited_unit() {
    let (t, _) = import("replacer");
    assert_eq!(str_of(&t, "sysctl", "kernel.nmi_watchdog"), Some("0"));
    assert!(get(&t, "sysctl", "vm.swappiness").is_none());
    assert!(get(&t, "sysctl", "kernel.sched_migration_cost_ns").is_none());
    // [vm] dirty_ratio is a sysctl too, from the inherited [vm] unit
    assert_eq!(str_of(&t, "sysctl", "vm.dirty_ratio"), Some("40"));
    // other inherited units stay
    assert_eq!(str_of(&t, "thp", "enabled"), Some("madvise"));
}

#[test]
fn broken_chains_are_typed_errors() {
    match import_tuned(&fixture("cycle-a")) {
        Err(TunedError::CircularInclude { chain }) => {
            assert_eq!(chain, ["cycle-a", "cycle-b", "cycle-a"]);
        }
        other => panic!("{other:?}"),
    }
    match import_tuned(&fixture("missing-include")) {
        Err(TunedError::MissingInclude { include, .. }) => assert_eq!(include, "no-such-profile"),
        other => panic!("{other:?}"),
    }
    match import_tuned(&fixture("bad-syntax")) {
        Err(e @ TunedError::Syntax { line: 1, .. }) => {
            assert!(e.to_string().contains("bad-syntax/tuned.conf"), "{e}");
        }
        other => panic!("{other:?}"),
    }
    let empty = tempfile::tempdir().expect("tempdir");
    assert!(matches!(
        import_tuned(empty.path()),
        Err(TunedError::NoTunedConf { .. })
    ));
    assert!(matches!(
        import_tuned(&empty.path().join("absent")),
        Err(TunedError::Io { .. })
    ));
}

/// Debian's TuneD profile root, `None` (with a one-line reason on stderr) when tuned is not
/// installed; under `TWINE_REQUIRE_REALSYS=1` that is a failure instead.
fn installed_tuned() -> Option<&'static Path> {
    let root = Path::new("/usr/lib/tuned");
    if root.is_dir() {
        return Some(root);
    }
    assert!(
        std::env::var("TWINE_REQUIRE_REALSYS").as_deref() != Ok("1"),
        "TWINE_REQUIRE_REALSYS=1 but tuned is not installed (no /usr/lib/tuned)"
    );
    eprintln!("skipped: tuned is not installed (no /usr/lib/tuned)");
    None
}

/// Every profile the installed `tuned` package ships imports, and each written profile has
/// only the schema's keys. The integrator extends this with the profile model's plan check
/// over the same `profile_dirs` + `import_tuned` pair.
#[test]
fn every_installed_tuned_profile_imports() {
    let Some(root) = installed_tuned() else {
        return;
    };
    let dirs = profile_dirs(root).expect("lists profiles");
    assert!(dirs.len() > 10, "{dirs:?}");
    for dir in &dirs {
        let imported = import_tuned(dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display()));
        check_schema(&imported.profile_toml);
    }
    eprintln!("imported {} TuneD profiles", dirs.len());
}

/// Host tier: every profile Debian's `tuned` package ships imports, loads as a twine profile
/// and gives a valid plan against this host's real facts (`HostRoot::real()`).
#[test]
fn every_installed_tuned_profile_plans_against_the_real_host() {
    let Some(root) = installed_tuned() else {
        return;
    };
    let host = HostRoot::real();
    let dirs = profile_dirs(root).expect("lists profiles");
    assert!(dirs.len() > 10, "{dirs:?}");
    let mut changes = 0;
    for dir in &dirs {
        let shown = dir.display();
        let imported = import_tuned(dir).unwrap_or_else(|e| panic!("{shown}: {e}"));
        let profile = Profile::from_str(&imported.profile_toml, Format::Toml)
            .unwrap_or_else(|e| panic!("{shown}: {e}\n{}", imported.profile_toml));
        let settings: Vec<_> = profile.desired().into_keys().collect();
        let facts = host
            .facts(&settings, false)
            .unwrap_or_else(|e| panic!("{shown}: {e}"));
        let p = plan(&facts, &profile);
        // every change is one the profile asked for, and the plan's verdicts follow its effects
        for c in &p.changes {
            assert!(settings.contains(&c.setting), "{shown}: {c:?}");
        }
        let reboot = p.changes.iter().any(|c| c.effect == Effect::Reboot);
        assert_eq!(p.reboot, reboot, "{shown}");
        assert!(!reboot || p.drain, "{shown}");
        serde_json::to_string(&p.to_json()).unwrap_or_else(|e| panic!("{shown}: {e}"));
        changes += p.changes.len();
    }
    eprintln!(
        "planned {} TuneD profiles against this host: {changes} changes in all",
        dirs.len()
    );
}

#[test]
fn what_cannot_be_evaluated_is_reported_not_guessed() {
    let (t, dropped) = import("unevaluable");
    // nothing inherited: the include was a function call
    assert!(t.get("sysctl").is_none());
    assert!(t.get("thp").is_none(), "the disabled unit is not imported");
    assert_eq!(str_of(&t, "cmdline", "skew_tick"), Some("1"));
    assert!(get(&t, "cmdline", "nohz_full").is_none());
    let reason = |s, o| was_dropped(&dropped, s, o).unwrap_or_else(|| panic!("{s} {o} dropped"));
    assert!(reason("main", "include").contains("function"));
    assert!(reason("variables", "include").contains("external variables file"));
    assert!(reason("vm", "transparent_hugepages").contains("disabled"));
    assert!(reason("bootloader", "cmdline").contains("absence"));
    assert!(reason("bootloader", "cmdline_iso").contains("itself"));
    assert!(reason("rtentsk", "").contains("rtentsk plugin"));
    assert_eq!(dropped.len(), 6, "{dropped:#?}");
}

proptest::proptest! {
    #![proptest_config(proptest::prelude::ProptestConfig::with_cases(128))]
    /// Any tuned.conf gives a profile or a typed error, never a panic, and a written profile
    /// always has only the schema's keys.
    #[test]
    fn any_tuned_conf_imports_or_errs_without_panicking(
        body in "(\\[(main|sysctl|vm|bootloader|cpu|sysfs|variables|disk)\\]\n|[a-z_./*${}:|<>=+ -]{0,30}\n){0,12}"
    ) {
        let dir = tempfile::tempdir().expect("tempdir");
        let profile = dir.path().join("p");
        std::fs::create_dir(&profile).expect("mkdir");
        std::fs::write(profile.join("tuned.conf"), &body).expect("write");
        if let Ok(imported) = import_tuned(&profile) {
            check_schema(&imported.profile_toml);
        }
    }
}
