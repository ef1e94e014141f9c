//! The `StartTransientUnit` property lists say exactly what the unit files say.
//!
//! Each file is read back with the port of systemd's parser and converted into
//! D-Bus terms by an independent table here (systemd's `bus_unit_set_properties`
//! names and encodings); the result must equal the crate's property list, unit by
//! unit, property by property.

mod support;

use std::path::Path;

use support::systemd_parse::{exec_argv, read_unit, resolve_specifiers, split_words};
use twine_spec::{JobSpec, PropertyValue, UnitSet, translate};

fn span_usec(text: &str) -> u64 {
    if text == "infinity" {
        return u64::MAX;
    }
    let split = text
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(text.len());
    let (n, unit) = text.split_at(split);
    let n: u64 = n.parse().expect("number");
    n * match unit {
        "" | "s" => 1_000_000,
        "ms" => 1_000,
        "us" => 1,
        other => panic!("unit {other} not written by twine-spec"),
    }
}

fn signal_number(name: &str) -> i32 {
    match name {
        "SIGHUP" => 1,
        "SIGINT" => 2,
        "SIGQUIT" => 3,
        "SIGKILL" => 9,
        "SIGUSR1" => 10,
        "SIGTERM" => 15,
        other => {
            34 + other
                .strip_prefix("SIGRTMIN+")
                .expect("known signal")
                .parse::<i32>()
                .expect("offset")
        }
    }
}

/// (D-Bus name, value) for one directive, by systemd's rules.
fn expected(key: &str, value: &str) -> Option<(&'static str, PropertyValue)> {
    use PropertyValue as P;
    let text = || resolve_specifiers(value).expect("no specifiers");
    Some(match key {
        "Description" | "Type" | "WorkingDirectory" | "User" | "Group" | "KillMode" | "Restart"
        | "StandardOutput" | "StandardError" | "SyslogIdentifier" => {
            let name = [
                "Description",
                "Type",
                "WorkingDirectory",
                "User",
                "Group",
                "KillMode",
                "Restart",
                "StandardOutput",
                "StandardError",
                "SyslogIdentifier",
            ]
            .into_iter()
            .find(|k| *k == key)?;
            (name, P::String(text()))
        }
        "PartOf" => return None, // only points at the target, which has no D-Bus form
        "Requires" | "Wants" | "BindsTo" | "After" | "Before" => {
            let name = ["Requires", "Wants", "BindsTo", "After", "Before"]
                .into_iter()
                .find(|k| *k == key)?;
            (
                name,
                P::Strings(value.split(' ').map(str::to_owned).collect()),
            )
        }
        "Environment" => (
            "Environment",
            P::Strings(split_words(&text()).expect("words")),
        ),
        "ExecStart" => {
            let argv = exec_argv(value).expect("argv");
            // On D-Bus, arguments are still variable-expanded at exec time.
            let escaped = argv.iter().map(|w| w.replace('$', "$$")).collect();
            (
                "ExecStart",
                P::Exec(vec![(argv[0].clone(), escaped, false)]),
            )
        }
        "RemainAfterExit" => ("RemainAfterExit", P::Bool(value == "yes")),
        "TimeoutStartSec" => ("TimeoutStartUSec", P::U64(span_usec(value))),
        "TimeoutStopSec" => ("TimeoutStopUSec", P::U64(span_usec(value))),
        "RestartSec" => ("RestartUSec", P::U64(span_usec(value))),
        "StartLimitIntervalSec" => ("StartLimitIntervalUSec", P::U64(span_usec(value))),
        "LogRateLimitIntervalSec" => ("LogRateLimitIntervalUSec", P::U64(span_usec(value))),
        "AccuracySec" => ("AccuracyUSec", P::U64(span_usec(value))),
        "StartLimitBurst" => ("StartLimitBurst", P::U32(value.parse().ok()?)),
        "LogRateLimitBurst" => ("LogRateLimitBurst", P::U32(value.parse().ok()?)),
        "CPUWeight" => ("CPUWeight", P::U64(value.parse().ok()?)),
        "IOWeight" => ("IOWeight", P::U64(value.parse().ok()?)),
        "TasksMax" => ("TasksMax", P::U64(value.parse().ok()?)),
        "MemoryHigh" => ("MemoryHigh", P::U64(value.parse().ok()?)),
        "MemoryMax" => ("MemoryMax", P::U64(value.parse().ok()?)),
        "CPUQuota" => (
            "CPUQuotaPerSecUSec",
            P::U64(value.strip_suffix('%')?.parse::<u64>().ok()? * 10_000),
        ),
        "KillSignal" => ("KillSignal", P::I32(signal_number(value))),
        "FinalKillSignal" => ("FinalKillSignal", P::I32(signal_number(value))),
        "OnActiveSec" => (
            "TimersMonotonic",
            P::Timers(vec![("OnActiveSec".into(), span_usec(value))]),
        ),
        "OnUnitActiveSec" => (
            "TimersMonotonic",
            P::Timers(vec![("OnUnitActiveSec".into(), span_usec(value))]),
        ),
        k if k.starts_with("X-") => return None, // annotations have no D-Bus form
        other => panic!("directive {other} has no mapping in this test: add it"),
    })
}

fn assert_equivalent(set: &UnitSet) {
    let transient = set.transient();
    let files = set.files();
    // Every unit but the target, the main unit first.
    assert_eq!(transient.len(), files.len() - 1);
    assert_eq!(&transient[0].name, set.main().as_str());
    for unit in &transient {
        let file = files
            .iter()
            .find(|f| f.name == unit.name)
            .expect("a file for every transient unit");
        let mut want: Vec<(&str, PropertyValue)> = Vec::new();
        for entry in read_unit(&file.contents).expect("reads back") {
            let Some((name, value)) = expected(&entry.key, &entry.value) else {
                continue;
            };
            match (want.iter_mut().find(|(n, _)| *n == name), value) {
                (Some((_, PropertyValue::Strings(a))), PropertyValue::Strings(b)) => a.extend(b),
                (Some((_, PropertyValue::Timers(a))), PropertyValue::Timers(b)) => a.extend(b),
                (Some(_), v) => panic!("{}: {name} repeated with {v:?}", file.name),
                (None, v) => want.push((name, v)),
            }
        }
        let got: Vec<(&str, PropertyValue)> = unit
            .properties
            .iter()
            .map(|p| (p.name, p.value.clone()))
            .collect();
        assert_eq!(got, want, "{}", file.name);
        for p in &unit.properties {
            let signature = match &p.value {
                PropertyValue::String(_) => "s",
                PropertyValue::Bool(_) => "b",
                PropertyValue::U64(_) => "t",
                PropertyValue::U32(_) => "u",
                PropertyValue::I32(_) => "i",
                PropertyValue::Strings(_) => "as",
                PropertyValue::Exec(_) => "a(sasb)",
                PropertyValue::Timers(_) => "a(st)",
                _ => "?",
            };
            assert_eq!(p.signature, signature, "{}: {}", file.name, p.name);
        }
    }
}

#[test]
fn transient_properties_match_unit_files() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/golden");
    let mut checked = 0;
    for entry in std::fs::read_dir(&dir).expect("golden dir") {
        let path = entry.expect("entry").path();
        let Ok(spec) = JobSpec::from_path(&path) else {
            continue;
        };
        let Ok(job) = spec.validate() else { continue };
        assert_equivalent(&translate(&job).expect("a validated job translates"));
        checked += 1;
    }
    assert!(checked >= 7, "only {checked} golden specs translated");
}

#[test]
fn exec_start_is_sasb_in_json() {
    let job = JobSpec::from_toml(
        "name='j'\nentitlement='e'\n[task]\ncommand=['/bin/echo','$HOME','100%']\n",
    )
    .expect("parses")
    .validate()
    .expect("valid");
    let units = translate(&job)
        .expect("a validated job translates")
        .transient();
    let main = units
        .iter()
        .find(|u| u.name == "j.service")
        .expect("main unit");
    let exec = main
        .properties
        .iter()
        .find(|p| p.name == "ExecStart")
        .expect("ExecStart");
    assert_eq!(exec.signature, "a(sasb)");
    assert_eq!(
        serde_json::to_value(&exec.value).expect("json"),
        serde_json::json!([["/bin/echo", ["/bin/echo", "$$HOME", "100%"], false]])
    );
}
