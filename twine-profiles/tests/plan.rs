//! The planner: effects, order, the CLI's JSON, pending reboots, and its invariants as
//! properties (idempotence, equal values plan nothing, reboot flags, determinism, no panic).
// Helpers outside #[test] fns unwrap too: a panic with its message is the failure report.
#![allow(clippy::unwrap_used)]

use std::collections::BTreeMap;

mod support;

use proptest::prelude::*;
use support::{cmdline, examples, sysctl};
use twine_profiles::change::{Effect, HostFacts, Plan, Setting, ThpKnob};
use twine_profiles::plan::{cmdline_value, pending_reboot, plan};
use twine_profiles::profile::{Format, Profile};

fn toml(text: &str) -> Profile {
    Profile::from_str(text, Format::Toml).unwrap()
}

fn facts(values: &[(Setting, Option<&str>)], jobs_running: bool, booted: &str) -> HostFacts {
    let mut f = HostFacts::default();
    f.values = values
        .iter()
        .map(|(s, v)| (s.clone(), v.map(str::to_owned)))
        .collect();
    f.jobs_running = jobs_running;
    f.booted_cmdline = booted.to_owned();
    f
}

fn effects(p: &Plan) -> Vec<(String, Effect)> {
    p.changes
        .iter()
        .map(|c| (format!("{}:{}", c.setting.kind(), c.setting), c.effect))
        .collect()
}

#[test]
fn the_json_has_the_cli_shape() {
    let profile = toml(
        "[sysctl]\n\"vm.swappiness\" = 10\n[thp]\nenabled = \"madvise\"\n[cmdline]\nnosmt = true\n",
    );
    let f = facts(
        &[
            (sysctl("vm.swappiness"), Some("60")),
            (
                Setting::Thp {
                    knob: ThpKnob::Enabled,
                },
                Some("[always] madvise never"),
            ),
        ],
        true,
        "BOOT_IMAGE=/vmlinuz root=/dev/vda1",
    );
    let json = plan(&f, &profile).to_json();
    let expected = serde_json::json!({
        "changes": [
            {"kind": "sysctl", "key": "vm.swappiness", "from": "60", "to": "10", "effect": "live"},
            {"kind": "thp", "key": "enabled", "from": "[always] madvise never", "to": "madvise",
             "effect": "live-restart-jobs"},
            {"kind": "cmdline", "key": "nosmt", "from": null, "to": "", "effect": "reboot"},
        ],
        "drain": true,
        "reboot": true,
    });
    assert_eq!(json, expected);
}

#[test]
fn effects_follow_the_kernel() {
    let profile = toml(
        "[sysctl]\n\"vm.nr_hugepages\" = 64\n\"net.core.somaxconn\" = 4096\n\
         [hugepages]\ncount_2m = 128\nper_node_2m = { \"0\" = 64 }\ncount_1g = 2\n\
         [thp]\ndefrag = \"defer\"\n[cpu]\ngovernor = \"performance\"\n\
         [sysfs]\n\"kernel/mm/ksm/run\" = 1\n\
         [[drop_in]]\nunit = \"a.service\"\nname = \"90-twine.conf\"\ncontent = \"[Service]\\n\"\n\
         [[networkd]]\nname = \"10-twine.network\"\ncontent = \"[Match]\\n\"\n\
         [cgroup2]\n\"/\" = [\"cpu\"]\n",
    );
    let idle = plan(&facts(&[], false, ""), &profile);
    assert_eq!(
        effects(&idle),
        [
            ("sysctl:net.core.somaxconn".to_owned(), Effect::Live),
            ("sysfs:kernel/mm/ksm/run".to_owned(), Effect::Live),
            ("cpu-governor:all".to_owned(), Effect::Live),
            ("cgroup2-controllers:/".to_owned(), Effect::Live),
            ("thp:defrag".to_owned(), Effect::LiveRestartJobs),
            ("sysctl:vm.nr_hugepages".to_owned(), Effect::Live),
            ("hugepages-2m:global".to_owned(), Effect::Live),
            ("hugepages-2m:node0".to_owned(), Effect::Live),
            ("drop-in:a.service/90-twine.conf".to_owned(), Effect::Live),
            ("networkd:10-twine.network".to_owned(), Effect::Live),
            ("hugepages-1g:boot".to_owned(), Effect::Reboot),
            ("cmdline:hugepages".to_owned(), Effect::Reboot),
            ("cmdline:hugepagesz".to_owned(), Effect::Reboot),
        ]
    );
    assert!(idle.drain && idle.reboot);

    let busy = plan(&facts(&[], true, ""), &profile);
    for (key, effect) in effects(&busy) {
        if key.contains("hugepages-2m") || key.contains("nr_hugepages") {
            assert_eq!(effect, Effect::LiveRestartJobs, "{key}");
        }
    }
}

#[test]
fn drain_only_when_jobs_must_restart_or_the_host_reboots() {
    let thp = toml("[thp]\nenabled = \"never\"\n");
    let idle = plan(&facts(&[], false, ""), &thp);
    assert!(!idle.drain && !idle.reboot);
    let busy = plan(&facts(&[], true, ""), &thp);
    assert!(busy.drain && !busy.reboot);
    let live = plan(&facts(&[], true, ""), &toml("[sysctl]\n\"vm.x\" = 1\n"));
    assert!(!live.drain && !live.reboot);
}

#[test]
fn values_compare_normalised() {
    let profile = toml(
        "[sysctl]\n\"net.ipv4.ip_local_port_range\" = \"1024 65000\"\n\
         [thp]\nenabled = \"madvise\"\n[cpu]\ngovernor = \"performance\"\n\
         [cgroup2]\n\"/\" = [\"memory\", \"cpu\"]\n",
    );
    let f = facts(
        &[
            (
                sysctl("net.ipv4.ip_local_port_range"),
                Some("1024\t65000\n"),
            ),
            (
                Setting::Thp {
                    knob: ThpKnob::Enabled,
                },
                Some("always [madvise] never\n"),
            ),
            (Setting::CpuGovernor, Some("performance\n")),
            (
                Setting::Cgroup2Controllers {
                    cgroup: twine_profiles::key::CgroupPath::new("").unwrap(),
                },
                Some("cpu io memory pids\n"),
            ),
        ],
        false,
        "",
    );
    assert!(plan(&f, &profile).is_empty());
}

#[test]
fn controllers_are_only_ever_added() {
    let profile = toml("[cgroup2]\n\"/\" = [\"memory\"]\n");
    let root = Setting::Cgroup2Controllers {
        cgroup: twine_profiles::key::CgroupPath::new("").unwrap(),
    };
    let p = plan(&facts(&[(root, Some("cpu io"))], false, ""), &profile);
    assert_eq!(p.changes[0].to.as_deref(), Some("cpu io memory"));
}

#[test]
fn a_command_line_already_booted_is_live_and_a_written_one_is_pending() {
    let profile = toml("[cmdline]\nisolcpus = \"2-3\"\nquiet = false\n");
    // The boot configuration lacks isolcpus but the running kernel has it: fixing the
    // configuration needs no reboot. quiet is booted but twine wants it gone: reboot.
    let f = facts(
        &[(cmdline("quiet"), Some(""))],
        false,
        "root=/dev/vda1 isolcpus=2-3 quiet",
    );
    let p = plan(&f, &profile);
    assert_eq!(
        effects(&p),
        [
            ("cmdline:isolcpus".to_owned(), Effect::Live),
            ("cmdline:quiet".to_owned(), Effect::Reboot),
        ]
    );
    assert_eq!(p.changes[1].to, None);
    assert!(pending_reboot(&f, &profile).is_empty());

    // After the apply the configuration is right, the running kernel not yet.
    let written = facts(
        &[(cmdline("isolcpus"), Some("2-3"))],
        false,
        "root=/dev/vda1 quiet",
    );
    assert!(plan(&written, &profile).is_empty());
    // Both await the reboot: isolcpus to appear, quiet to go.
    assert_eq!(
        pending_reboot(&written, &profile),
        [cmdline("isolcpus"), cmdline("quiet")]
    );
    let mut rebooted = written.clone();
    rebooted.booted_cmdline = "root=/dev/vda1 isolcpus=2-3".to_owned();
    assert!(pending_reboot(&rebooted, &profile).is_empty());
}

#[test]
fn one_gigabyte_pages_are_pending_until_booted() {
    let profile = toml("[hugepages]\ncount_1g = 4\n");
    let written = facts(
        &[
            (Setting::Hugepages1G, Some("4")),
            (cmdline("hugepagesz"), Some("1G")),
            (cmdline("hugepages"), Some("4")),
        ],
        false,
        "root=/dev/vda1",
    );
    assert!(plan(&written, &profile).is_empty());
    assert_eq!(pending_reboot(&written, &profile).len(), 3);
    let mut booted = written.clone();
    booted.booted_cmdline = "root=/dev/vda1 hugepagesz=1G hugepages=4".to_owned();
    assert!(pending_reboot(&booted, &profile).is_empty());
}

#[test]
fn cmdline_values_are_read_as_the_kernel_does() {
    let line = "BOOT_IMAGE=/vmlinuz nosmt isolcpus=1 isolcpus=2-3 a.b=c";
    assert_eq!(cmdline_value(line, "nosmt").as_deref(), Some(""));
    assert_eq!(cmdline_value(line, "isolcpus").as_deref(), Some("2-3"));
    assert_eq!(cmdline_value(line, "a.b").as_deref(), Some("c"));
    assert_eq!(cmdline_value(line, "quiet"), None);
}

#[test]
fn every_example_plans_against_an_empty_host() {
    let dir = examples();
    for name in ["base", "web", "hugepages"] {
        let profile = Profile::load(&dir.join(format!("{name}.toml"))).unwrap();
        let p = plan(&HostFacts::default(), &profile);
        assert_eq!(p.changes.len(), profile.desired().len(), "{name}");
        assert_eq!(p.reboot, name == "hugepages", "{name}");
    }
}

/// The facts after an apply: every change's `to` written.
fn applied(facts: &HostFacts, p: &Plan) -> HostFacts {
    let mut after = facts.clone();
    for c in &p.changes {
        after.values.insert(c.setting.clone(), c.to.clone());
    }
    after
}

fn arb_profile() -> impl Strategy<Value = Profile> {
    let key = prop_oneof![
        Just("vm.nr_hugepages".to_owned()),
        "[a-z]{1,3}\\.[a-z_]{1,4}"
    ];
    (
        proptest::collection::btree_map(key, "[a-z0-9 \t]{0,6}", 0..6),
        proptest::option::of(0u64..4),
        proptest::option::of(0u64..3),
        proptest::option::of(prop_oneof![Just("always"), Just("madvise"), Just("never")]),
        proptest::collection::btree_map(
            "[a-c]{1,2}",
            prop_oneof![Just("true"), Just("false"), Just("\"1\"")],
            0..4,
        ),
        proptest::collection::vec("cpu|io|memory|pids", 0..3),
    )
        .prop_map(|(sysctls, count_2m, count_1g, thp, args, controllers)| {
            let mut text = String::from("[sysctl]\n");
            for (k, v) in sysctls {
                text += &format!("{k:?} = {v:?}\n");
            }
            text += "[hugepages]\n";
            if let Some(n) = count_2m {
                text += &format!("count_2m = {n}\nper_node_2m = {{ \"1\" = {n} }}\n");
            }
            if let Some(n) = count_1g {
                text += &format!("count_1g = {n}\n");
            }
            if let Some(t) = thp {
                text += &format!("[thp]\nenabled = {t:?}\n");
            }
            text += "[cmdline]\n";
            for (k, v) in args {
                text += &format!("{k} = {v}\n");
            }
            text += &format!("[cgroup2]\n\"/\" = {controllers:?}\n");
            Profile::from_str(&text, Format::Toml).unwrap_or_else(|e| panic!("{e}\n{text}"))
        })
}

/// Facts about the settings a profile names (and a few it does not), each absent or some
/// value near the wanted one.
fn arb_facts(profile: Profile) -> impl Strategy<Value = (Profile, HostFacts)> {
    let settings: Vec<Setting> = profile.desired().into_keys().collect();
    let n = settings.len();
    (
        proptest::collection::vec(
            proptest::option::of("[a-z0-9 \t\\[\\]]{0,8}|1G|4|cpu io"),
            n,
        ),
        any::<bool>(),
        "[a-z0-9=, ]{0,30}",
    )
        .prop_map(move |(values, jobs, booted)| {
            let mut f = HostFacts::default();
            f.values = settings
                .iter()
                .cloned()
                .zip(values)
                .collect::<BTreeMap<_, _>>();
            f.values
                .insert(sysctl("vm.unrelated"), Some("1".to_owned()));
            f.jobs_running = jobs;
            f.booted_cmdline = booted;
            (profile.clone(), f)
        })
}

proptest! {
    /// Planning against the facts an apply leaves is empty.
    #[test]
    fn planning_is_idempotent((profile, facts) in arb_profile().prop_flat_map(arb_facts)) {
        let first = plan(&facts, &profile);
        let again = plan(&applied(&facts, &first), &profile);
        prop_assert!(again.is_empty(), "{:?}", again.changes);
    }

    /// Facts equal to the wanted values plan nothing, whatever runs or was booted.
    #[test]
    fn equal_values_plan_nothing(profile in arb_profile(), jobs in any::<bool>(), booted in ".{0,20}") {
        let mut f = HostFacts::default();
        f.values = profile.desired();
        f.jobs_running = jobs;
        f.booted_cmdline = booted;
        prop_assert!(plan(&f, &profile).is_empty());
    }

    /// The flags agree with the changes, and planning twice gives the same plan.
    #[test]
    fn flags_agree_and_planning_is_deterministic((profile, facts) in arb_profile().prop_flat_map(arb_facts)) {
        let p = plan(&facts, &profile);
        let any_reboot = p.changes.iter().any(|c| c.effect == Effect::Reboot);
        prop_assert_eq!(p.reboot, any_reboot);
        let restart = p.changes.iter().any(|c| c.effect == Effect::LiveRestartJobs);
        prop_assert_eq!(p.drain, any_reboot || (facts.jobs_running && restart));
        prop_assert_eq!(&plan(&facts, &profile), &p);
        prop_assert_eq!(plan(&facts, &profile).to_json(), p.to_json());
        for c in &p.changes {
            prop_assert_eq!(facts.values.get(&c.setting).cloned().flatten(), c.from.clone());
        }
    }

    /// Any facts at all, even for settings the profile does not name, plan without panic.
    #[test]
    fn any_facts_plan_without_panic(
        profile in arb_profile(),
        values in proptest::collection::btree_map("[a-z]{1,3}\\.[a-z]{1,3}", proptest::option::of(".{0,10}"), 0..8),
        jobs in any::<bool>(),
        booted in ".{0,40}",
    ) {
        let mut f = HostFacts::default();
        f.values = values.into_iter().map(|(k, v)| (sysctl(&k), v)).collect();
        f.jobs_running = jobs;
        f.booted_cmdline = booted;
        let _ = plan(&f, &profile);
        let _ = pending_reboot(&f, &profile);
    }
}
