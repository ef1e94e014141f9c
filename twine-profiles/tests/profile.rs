//! The profile model: formats, validation with field paths, inheritance, the example
//! profiles, and the TOML round trip.
// Helpers outside #[test] fns unwrap too: a panic with its message is the failure report.
#![allow(clippy::unwrap_used)]

use std::path::{Path, PathBuf};

mod support;

use proptest::prelude::*;
use support::{cmdline, examples, sysctl};
use twine_profiles::change::{Setting, ThpKnob};
use twine_profiles::key::{CmdlineArg, SysctlKey};
use twine_profiles::profile::{
    CmdlineValue, Controller, Format, Governor, MissingKeyPolicy, Profile, ProfileError,
    SysctlValue,
};

fn toml(text: &str) -> Result<Profile, ProfileError> {
    Profile::from_str(text, Format::Toml)
}

#[test]
fn an_empty_profile_is_valid_and_wants_nothing() {
    for format in [Format::Toml, Format::Json, Format::Yaml] {
        let text = if format == Format::Json { "{}" } else { "" };
        let p = Profile::from_str(text, format).unwrap();
        assert!(p.desired().is_empty());
        assert_eq!(p.on_missing_key(), MissingKeyPolicy::Fail);
        assert!(!p.allow_reboot());
    }
}

#[test]
fn the_three_formats_read_the_same_profile() {
    let t = toml(
        "[sysctl]\n\"vm.swappiness\" = 10\n[hugepages]\nper_node_2m = { \"1\" = 8 }\n\
         [cmdline]\nnosmt = true\n",
    )
    .unwrap();
    let j = Profile::from_str(
        r#"{"sysctl": {"vm.swappiness": 10}, "hugepages": {"per_node_2m": {"1": 8}},
            "cmdline": {"nosmt": true}}"#,
        Format::Json,
    )
    .unwrap();
    let y = Profile::from_str(
        "sysctl:\n  vm.swappiness: 10\nhugepages:\n  per_node_2m:\n    1: 8\ncmdline:\n  nosmt: true\n",
        Format::Yaml,
    )
    .unwrap();
    assert_eq!(t, j);
    assert_eq!(t, y);
    let d = t.desired();
    assert_eq!(d[&sysctl("vm.swappiness")].as_deref(), Some("10"));
    assert_eq!(d[&cmdline("nosmt")].as_deref(), Some(""));
    assert_eq!(
        d[&Setting::Hugepages2M { node: Some(1) }].as_deref(),
        Some("8")
    );
}

/// The field path and the offending value, from a syntax error.
fn syntax_error(text: &str) -> (String, String) {
    match toml(text) {
        Err(ProfileError::Syntax { field, message, .. }) => (field, message),
        other => panic!("{text:?}: expected a syntax error, got {other:?}"),
    }
}

#[test]
fn bad_keys_and_values_name_their_field_and_value() {
    let cases = [
        ("colour = 1", "colour", "colour"),
        ("[thp]\nenabled = \"sometimes\"", "thp.enabled", "sometimes"),
        ("[thp]\ndefrag = \"maybe\"", "thp.defrag", "maybe"),
        ("[thp]\nsize = 1", "thp.size", "size"),
        (
            "[sysctl]\n\"../../etc/shadow\" = 1",
            "sysctl.../../etc/shadow",
            "../../etc/shadow",
        ),
        ("[sysctl]\n\"vm.x\" = \"a\\nb\"", "sysctl.vm.x", "a\\nb"),
        ("[sysctl]\n\"vm.x\" = true", "sysctl.vm.x", "true"),
        (
            "[sysfs]\n\"kernel/../../etc\" = 1",
            "sysfs.kernel/../../etc",
            "kernel/../../etc",
        ),
        (
            "[sysfs]\n\"kernel/x\" = \"1\\n2\"",
            "sysfs.kernel/x",
            "1\\n2",
        ),
        ("[cpu]\ngovernor = \"Perf\"", "cpu.governor", "Perf"),
        ("[cgroup2]\n\"/\" = [\"cpu\", \"IO\"]", "cgroup2./[1]", "IO"),
        ("[cgroup2]\n\"../x\" = [\"cpu\"]", "cgroup2.../x", "../x"),
        ("[cgroup2]\n\"/a\" = [\"cpu\"]", "cgroup2./a", "/a"),
        ("[hugepages]\ncount_2m = -1", "hugepages.count_2m", "-1"),
        (
            "[hugepages]\nper_node_2m = { \"x\" = 1 }",
            "hugepages.per_node_2m.x",
            "\"x\"",
        ),
        ("[cmdline]\n\"a=b\" = true", "cmdline.a=b", "a=b"),
        ("[cmdline]\nisolcpus = \"1 2\"", "cmdline.isolcpus", "1 2"),
        (
            "[[drop_in]]\nunit = \"nginx\"\nname = \"a.conf\"\ncontent = \"\"",
            "drop_in[0]",
            "nginx",
        ),
        (
            "[[drop_in]]\nunit = \"a.service\"\nname = \"../a.conf\"\ncontent = \"\"",
            "drop_in[0]",
            "../a.conf",
        ),
        (
            "[[networkd]]\nname = \"a.network\"\ncontent = \"\\u0000\"",
            "networkd[0].content",
            "\\0",
        ),
        ("on_missing_key = \"ignore\"", "on_missing_key", "ignore"),
    ];
    let mut wrong = Vec::new();
    for (text, field, value) in cases {
        let (got_field, message) = syntax_error(text);
        if got_field != field || !message.contains(value) {
            wrong.push(format!(
                "{text:?}: got {got_field} {message:?}, want {field} {value:?}"
            ));
        }
    }
    assert!(wrong.is_empty(), "{}", wrong.join("\n"));
}

#[test]
fn count_1g_owns_its_command_line_arguments() {
    let p = toml("[hugepages]\ncount_1g = 4\n").unwrap();
    let d = p.desired();
    assert_eq!(d[&Setting::Hugepages1G].as_deref(), Some("4"));
    assert_eq!(d[&cmdline("hugepagesz")].as_deref(), Some("1G"));
    assert_eq!(d[&cmdline("hugepages")].as_deref(), Some("4"));

    let zero = toml("[hugepages]\ncount_1g = 0\n").unwrap().desired();
    assert_eq!(zero[&cmdline("hugepagesz")], None);
    assert_eq!(zero[&cmdline("hugepages")], None);

    let err = toml("[hugepages]\ncount_1g = 4\n[cmdline]\nhugepages = 8\n").unwrap_err();
    assert!(
        matches!(&err, ProfileError::Conflict { field, .. } if field == "cmdline.hugepages"),
        "{err}"
    );
}

#[test]
fn duplicate_drop_ins_are_refused() {
    let one = "[[drop_in]]\nunit = \"a.service\"\nname = \"x.conf\"\ncontent = \"\"\n";
    let err = toml(&format!("{one}{one}")).unwrap_err();
    assert!(
        matches!(&err, ProfileError::Conflict { field, .. } if field == "drop_in[1]"),
        "{err}"
    );
}

#[test]
fn values_are_normalised_as_the_host_prints_them() {
    let p = toml(
        "[sysctl]\n\"net.ipv4.ip_local_port_range\" = \"1024\\t 65000\"\n\
         [cgroup2]\n\"/\" = [\"memory\", \"cpu\", \"cpu\"]\n\"work.slice\" = []\n\
         [cmdline]\nnosmt = false\n",
    )
    .unwrap();
    let d = p.desired();
    assert_eq!(
        d[&sysctl("net.ipv4.ip_local_port_range")].as_deref(),
        Some("1024 65000")
    );
    let root = d
        .iter()
        .find(|(s, _)| s.kind() == "cgroup2-controllers" && s.to_string() == "/")
        .unwrap();
    assert_eq!(root.1.as_deref(), Some("cpu memory"));
    assert!(
        d.keys()
            .any(|s| s.kind() == "cgroup2-controllers" && s.to_string() == "work.slice")
    );
    assert_eq!(d[&cmdline("nosmt")], None);
}

#[test]
fn every_example_loads() {
    let mut names = Vec::new();
    for entry in std::fs::read_dir(examples()).unwrap() {
        let path = entry.unwrap().path();
        let p = Profile::load(&path).unwrap_or_else(|e| panic!("{e}"));
        assert!(p.inherits.is_empty());
        names.push(p.name.clone().unwrap());
    }
    names.sort();
    assert_eq!(names, ["base", "hugepages", "web"]);
}

#[test]
fn inheritance_lays_the_child_over_its_parents() {
    let web = Profile::load(&examples().join("web.toml")).unwrap();
    let d = web.desired();
    // The child's value wins, the parent's others stay.
    assert_eq!(d[&sysctl("net.core.somaxconn")].as_deref(), Some("65535"));
    assert_eq!(d[&sysctl("vm.swappiness")].as_deref(), Some("10"));
    assert_eq!(d[&Setting::CpuGovernor].as_deref(), Some("performance"));
    assert_eq!(
        d[&Setting::Thp {
            knob: ThpKnob::Enabled
        }]
            .as_deref(),
        Some("madvise")
    );
    assert_eq!(web.name.as_deref(), Some("web"));

    let huge = Profile::load(&examples().join("hugepages.toml")).unwrap();
    assert!(huge.allow_reboot());
    assert_eq!(
        huge.desired()[&Setting::Thp {
            knob: ThpKnob::Enabled
        }]
            .as_deref(),
        Some("never")
    );
}

fn write(dir: &Path, name: &str, text: &str) -> PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, text).unwrap();
    path
}

#[test]
fn inheritance_across_formats_and_its_errors() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    write(d, "a.yaml", "sysctl:\n  vm.a: 1\n  vm.b: 1\n");
    write(d, "b.json", r#"{"sysctl": {"vm.b": 2}}"#);
    let c = write(
        d,
        "c.toml",
        "inherits = [\"a\", \"b\"]\n[sysctl]\n\"vm.c\" = 3\n",
    );
    let p = Profile::load(&c).unwrap();
    let values: Vec<String> = p.sysctl.values().map(SysctlValue::to_string).collect();
    assert_eq!(values, ["1", "2", "3"]);

    let loop_a = write(d, "x.toml", "inherits = [\"y\"]\n");
    write(d, "y.toml", "inherits = [\"x\"]\n");
    match Profile::load(&loop_a).unwrap_err() {
        ProfileError::Cycle { chain, .. } => assert_eq!(chain, ["x", "y", "x"]),
        e => panic!("{e}"),
    }
    let own = write(d, "self.toml", "inherits = [\"self\"]\n");
    assert!(matches!(
        Profile::load(&own),
        Err(ProfileError::Cycle { .. })
    ));

    let orphan = write(d, "orphan.toml", "inherits = [\"nowhere\"]\n");
    match Profile::load(&orphan).unwrap_err() {
        ProfileError::MissingParent { name, path } => {
            assert_eq!(name, "nowhere");
            assert_eq!(path, orphan);
        }
        e => panic!("{e}"),
    }
    let escape = write(d, "escape.toml", "inherits = [\"../etc/base\"]\n");
    let err = Profile::load(&escape).unwrap_err();
    assert!(
        matches!(&err, ProfileError::BadParent { source, .. } if source.value == "../etc/base"),
        "{err}"
    );
    let bad_child = write(d, "bad.toml", "inherits = [\"a\"]\n[thp]\nenabled = 1\n");
    let err = Profile::load(&bad_child).unwrap_err();
    assert!(
        err.to_string()
            .starts_with(&bad_child.display().to_string()),
        "{err}"
    );
    assert!(matches!(
        Profile::load(&d.join("a.ini")),
        Err(ProfileError::UnknownFormat { .. })
    ));
    assert!(matches!(
        Profile::load(&d.join("absent.toml")),
        Err(ProfileError::Read { .. })
    ));
}

fn arb_profile() -> impl Strategy<Value = Profile> {
    let key = "[a-z_]{1,8}(\\.[a-z0-9_]{1,8}){0,2}";
    let value = "[ -~]{0,12}";
    (
        proptest::collection::btree_map(key, value, 0..6),
        proptest::option::of(any::<u64>()),
        proptest::collection::btree_map(
            "[a-z_]{1,10}",
            prop_oneof![
                any::<bool>().prop_map(CmdlineValue::Flag),
                "[a-zA-Z0-9,.:-]{1,10}".prop_map(CmdlineValue::Value),
            ],
            0..4,
        ),
        proptest::option::of("[a-z_]{1,12}"),
        proptest::collection::vec("[a-z_]{1,6}", 0..4),
        proptest::option::of(any::<bool>()),
    )
        .prop_map(|(sysctls, count_2m, args, governor, controllers, reboot)| {
            let mut p = Profile::default();
            for (k, v) in sysctls {
                p.sysctl
                    .insert(SysctlKey::new(&k).unwrap(), SysctlValue::new(&v).unwrap());
            }
            p.hugepages.count_2m = count_2m;
            for (k, v) in args {
                p.cmdline.insert(CmdlineArg::new(&k).unwrap(), v);
            }
            p.cpu.governor = governor.map(|g| Governor::new(&g).unwrap());
            if !controllers.is_empty() {
                let key = twine_profiles::profile::CgroupKey::new("/").unwrap();
                let list = controllers
                    .iter()
                    .map(|c| Controller::new(c).unwrap())
                    .collect();
                p.cgroup2.insert(key, list);
            }
            p.allow_reboot = reboot;
            p
        })
}

proptest! {
    /// `to_toml` writes what `from_str` reads back unchanged.
    #[test]
    fn toml_round_trips(p in arb_profile()) {
        let text = p.to_toml().unwrap();
        let back = Profile::from_str(&text, Format::Toml)
            .map_err(|e| TestCaseError::fail(format!("{e}\n{text}")))?;
        prop_assert_eq!(back, p);
    }
}

#[test]
fn examples_round_trip_through_toml() {
    for name in ["base", "web", "hugepages"] {
        let p = Profile::load(&examples().join(format!("{name}.toml"))).unwrap();
        let back = toml(&p.to_toml().unwrap()).unwrap();
        assert_eq!(back, p, "{name}");
    }
}

#[test]
fn json_and_yaml_errors_name_their_field_too() {
    let json = Profile::from_str(r#"{"thp": {"enabled": "often"}}"#, Format::Json).unwrap_err();
    let yaml = Profile::from_str("cpu:\n  governer: performance\n", Format::Yaml).unwrap_err();
    let trailing = Profile::from_str("{} {}", Format::Json).unwrap_err();
    for (err, field, value) in [
        (json, "thp.enabled", "often"),
        (yaml, "cpu.governer", "governer"),
        (trailing, ".", "trailing"),
    ] {
        match err {
            ProfileError::Syntax {
                field: f, message, ..
            } => {
                assert_eq!(f, field, "{message}");
                assert!(message.contains(value), "{message}");
            }
            e => panic!("{e}"),
        }
    }
}
