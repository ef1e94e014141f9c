//! No spec string can add a line, a directive or a specifier, or change a word.
//!
//! Arbitrary and hostile strings go into every string field of a spec. Either
//! validation refuses the spec with a problem that names its field, or every
//! rendered file, read back by a port of systemd's parser, has exactly the
//! directives of the unit model with exactly their values, and real systemd
//! (`systemd-analyze verify`) accepts the set without a word of complaint.
//!
//! Each property runs 128 cases; a longer run is
//! `PROPTEST_CASES=2000 cargo test -p twine-spec --test injection`
//! (the count that has passed is in docs/BENCHMARKS.md).

mod support;

use std::collections::BTreeMap;

use proptest::prelude::*;
use support::systemd_parse::{exec_argv, read_unit, resolve_specifiers, split_words};
use twine_spec::escape;
use twine_spec::spec::*;
use twine_spec::unit::Refusal;
use twine_spec::{JobSpec, ProblemKind, TranslateError, translate};

/// Pieces that mean something to systemd, a shell, or a unit-file reader.
const FRAGMENTS: &[&str] = &[
    "%",
    "%n",
    "%%",
    "$",
    "${X}",
    "$$",
    "\\",
    "\\\\",
    "\"",
    "'",
    ";",
    " ",
    "\n",
    "\t",
    "\r",
    "\u{1}",
    "\u{7f}",
    "ü",
    "😀",
    "-",
    "@",
    "+",
    "!",
    ":",
    "[Service]",
    "\nExecStart=/bin/evil",
    "\\\n",
    "a",
    "=",
    "#",
    "x",
    "/",
    ".",
];

fn hostile() -> impl Strategy<Value = String> {
    prop_oneof![
        3 => "[a-z][a-z0-9_-]{0,7}",
        4 => proptest::collection::vec(proptest::sample::select(FRAGMENTS), 0..8).prop_map(|v| v.concat()),
        2 => any::<String>().prop_map(|s| s.chars().take(24).collect()),
    ]
}

/// Printable names that still carry every character systemd interprets.
fn name_like() -> impl Strategy<Value = String> {
    let printable: Vec<&'static str> = FRAGMENTS
        .iter()
        .copied()
        .filter(|f| !f.chars().any(char::is_control) && *f != "/")
        .collect();
    let printable = proptest::collection::vec(proptest::sample::select(printable), 1..8)
        .prop_map(|v| format!("n{}n", v.concat()));
    prop_oneof![12 => printable, 1 => hostile()]
}

/// Mostly valid, sometimes hostile.
fn mostly(valid: impl Strategy<Value = String>) -> impl Strategy<Value = String> {
    prop_oneof![9 => valid, 1 => hostile()]
}

fn argv(exe: &'static str) -> impl Strategy<Value = Vec<String>> {
    proptest::collection::vec(hostile(), 0..6).prop_map(move |mut rest| {
        rest.insert(0, exe.to_owned());
        rest
    })
}

prop_compose! {
    fn arb_spec()(
        name in name_like(), entitlement in name_like(), profile in proptest::option::of(name_like()),
        label in (mostly("[a-z./_-]{1,8}"), name_like()),
        exe_name in name_like(),
        args in argv("/bin/true"),
        dir in proptest::option::of(name_like()),
        user in proptest::option::of(mostly("[a-z_][a-z0-9_-]{0,8}")),
        env in proptest::collection::btree_map(mostly("[A-Z_][A-Z0-9_]{0,5}"), hostile(), 0..4),
        steps in proptest::collection::vec((name_like(), argv("/bin/true")), 0..3),
        sidecar in proptest::option::of((name_like(), argv("/bin/true"))),
        signal in proptest::option::of(mostly(proptest::sample::select(vec!["SIGINT".to_owned(), "RTMIN+3".to_owned(), "TERM".to_owned()]))),
        mode in proptest::option::of(mostly(proptest::sample::select(vec!["mixed".to_owned(), "process".to_owned()]))),
        identifier in proptest::option::of(mostly("[a-z][a-z0-9_.-]{0,10}")),
        health in proptest::option::of(argv("/bin/true")),
    ) -> (JobSpec, String) {
        let mut command = args;
        command[0] = String::new(); // replaced by the caller with a real executable named exe_name
        let spec = JobSpec {
            name, entitlement, replicas: 1,
            labels: BTreeMap::from([label]),
            host_profile: profile, machine_type: None,
            task: TaskSpec {
                command,
                working_directory: dir.map(|d| format!("/{d}")),
                user, group: None,
                environment: env,
                resources: ResourcesSpec::default(),
                prestart: steps.into_iter().map(|(name, command)| PrestartSpec { name, command, timeout: None, after: None }).collect(),
                sidecars: sidecar.into_iter().map(|(name, command)| SidecarSpec { name, command, restart: None }).collect(),
                kill: KillSpec { signal, grace_period: None, final_signal: None, mode },
                restart: RestartSpec::default(),
                health_check: health.map(|command| HealthCheckSpec { command, interval: None, timeout: None, retries: None, start_period: None }),
                logs: LogSpec { identifier, ..LogSpec::default() },
            },
        };
        (spec, exe_name)
    }
}

/// Reads each file back and compares it, directive by directive, with the model.
fn assert_reads_back(set: &twine_spec::UnitSet) -> Result<(), TestCaseError> {
    for unit in set.units() {
        let text = unit.render();
        let entries = read_unit(&text).map_err(|e| TestCaseError::fail(format!("{e}\n{text}")))?;
        let model: Vec<_> = unit
            .sections
            .iter()
            .flat_map(|s| s.directives.iter().map(move |d| (s.name, d)))
            .collect();
        prop_assert_eq!(
            entries.len(),
            model.len(),
            "directive count differs in\n{}",
            text
        );
        for (entry, (section, directive)) in entries.iter().zip(&model) {
            prop_assert_eq!(&entry.section, section);
            prop_assert_eq!(&entry.key, directive.key);
            let read = match directive.key {
                "ExecStart" => exec_argv(&entry.value),
                "Environment" => resolve_specifiers(&entry.value).and_then(|v| split_words(&v)),
                "Requires" | "Wants" | "BindsTo" | "PartOf" | "After" | "Before" => {
                    Ok(entry.value.split(' ').map(str::to_owned).collect())
                }
                _ => resolve_specifiers(&entry.value).map(|v| vec![v]),
            }
            .map_err(|e| TestCaseError::fail(format!("{}: {e}", directive.key)))?;
            prop_assert_eq!(
                read,
                directive.value.meaning(),
                "{}= in\n{}",
                directive.key,
                text
            );
        }
    }
    Ok(())
}

/// `s` without what validation refuses before any quoting: NUL, and the
/// noncharacters systemd rejects as not UTF-8 clean (utf8.c, unichar_is_valid).
fn quotable(s: &str) -> String {
    s.chars()
        .filter(|&c| {
            let c = c as u32;
            c != 0 && !(0xFDD0..=0xFDEF).contains(&c) && c % 0x10000 < 0xFFFE
        })
        .collect()
}

proptest! {
    // 128 cases by default; `PROPTEST_CASES=N` (and proptest's other variables) override it.
    #![proptest_config(proptest::test_runner::contextualize_config(
        ProptestConfig { cases: 128, ..ProptestConfig::default() }
    ))]

    /// Any argv survives quoting: our escaping, read by systemd's rules, gives it back,
    /// and real systemd accepts the unit.
    #[test]
    fn exec_words_round_trip(args in proptest::collection::vec(any::<String>(), 0..8)) {
        let args: Vec<String> = args.into_iter().map(|a| quotable(&a)).collect();
        let mut argv = vec!["/bin/true".to_owned()];
        argv.extend(args);
        let line = argv.iter().map(|w| escape::exec_word(w)).collect::<Vec<_>>().join(" ");
        prop_assert_eq!(exec_argv(&line).map_err(TestCaseError::fail)?, argv.clone());
        let unit = format!("[Service]\nType=oneshot\nExecStart={line}\n");
        support::assert_verifies(&[twine_spec::UnitFile { name: "roundtrip.service".into(), contents: unit }]);
    }

    /// Any environment value survives quoting.
    #[test]
    fn environment_round_trip(value in any::<String>()) {
        let value = quotable(&value);
        let item = escape::environment_item("X", &value);
        let words = split_words(&resolve_specifiers(&item).map_err(TestCaseError::fail)?).map_err(TestCaseError::fail)?;
        prop_assert_eq!(words, vec![format!("X={value}")]);
        let unit = format!("[Service]\nType=oneshot\nExecStart=/bin/true\nEnvironment={item}\n");
        support::assert_verifies(&[twine_spec::UnitFile { name: "env.service".into(), contents: unit }]);
    }

    /// Unit-name escaping matches `systemd-escape` and is injective.
    #[test]
    fn unit_names_are_injective(a in hostile(), b in hostile()) {
        if a != b {
            prop_assert_ne!(escape::unit_name_component(&a), escape::unit_name_component(&b));
        }
        let escaped = escape::unit_name_component(&a);
        prop_assert!(escaped.bytes().all(|c| c.is_ascii_alphanumeric() || b"_.\\-".contains(&c)), "{}", escaped);
        if !a.is_empty() && support::have_systemd_analyze() {
            // Real systemd-escape agrees, apart from the ':' we escape on purpose...
            let out = std::process::Command::new("systemd-escape").arg("--").arg(&a).output().expect("systemd-escape runs");
            let theirs = String::from_utf8_lossy(&out.stdout).trim_end_matches('\n').replace(':', "\\x3a");
            prop_assert_eq!(&theirs, &escaped);
            // ...and systemd loads a unit of that name.
            if escaped.len() <= 200 {
                let unit = "[Service]\nType=oneshot\nExecStart=/bin/true\n".to_owned();
                support::assert_verifies(&[twine_spec::UnitFile { name: format!("{escaped}.service"), contents: unit }]);
            }
        }
    }

    #[test]
    fn no_field_injects_anything((mut spec, exe_name) in arb_spec()) {
        let dir = tempfile::tempdir().map_err(|e| TestCaseError::fail(e.to_string()))?;
        let exe = format!("{}/{exe_name}", dir.path().display());
        spec.task.command[0] = exe.clone();
        // The parser sees the same spec: serialize to JSON and read it back.
        let json = serde_json::to_string(&spec).map_err(|e| TestCaseError::fail(e.to_string()))?;
        prop_assert_eq!(&JobSpec::from_json(&json).map_err(|e| TestCaseError::fail(e.to_string()))?, &spec);
        match spec.validate() {
            Err(errors) => {
                for problem in &errors.problems {
                    prop_assert!(!problem.field.is_empty() && !problem.message.is_empty(), "{:?}", problem);
                }
            }
            Ok(job) => {
                let set = translate(&job).map_err(|e| TestCaseError::fail(format!("a validated job must translate: {e}")))?;
                assert_reads_back(&set)?;
                // The name may hold '/': the executable then sits in a subdirectory.
                if let Some(parent) = std::path::Path::new(&exe).parent() {
                    std::fs::create_dir_all(parent).map_err(|e| TestCaseError::fail(format!("{parent:?}: {e}")))?;
                }
                std::os::unix::fs::symlink("/bin/true", &exe).map_err(|e| TestCaseError::fail(format!("{exe:?}: {e}")))?;
                support::assert_verifies(&set.files());
            }
        }
    }
}

/// The regression that motivated refusing a trailing backslash in verbatim values:
/// it would join the next line.
#[test]
fn trailing_backslash_cannot_continue_a_line() {
    assert!(twine_spec::unit::Value::text("a\\").is_err());
    assert!(twine_spec::unit::Value::path("/srv/a\\").is_err());
    let spec = JobSpec::from_toml("name = 'x'\nentitlement = 'e'\n[task]\ncommand = ['/bin/true']\nworking_directory = '/srv/a\\'\n").unwrap();
    let errors = spec.validate().unwrap_err();
    assert_eq!(errors.problems[0].field, "task.working_directory");
}

/// Regression (issue 7, found by a 2,000-case run of `no_field_injects_anything`):
/// `working_directory = "/ "` rendered `WorkingDirectory=/ `, which systemd reads
/// as `/`. Minimal case: name `n%n`, executable named `n;n`.
#[test]
fn working_directory_with_trailing_space_is_refused() {
    // Why it matters: systemd's reader strips the blank.
    let read = read_unit("[Service]\nWorkingDirectory=/ \n").unwrap();
    assert_eq!(read[0].value, "/");

    let spec = |dir: &str| {
        JobSpec::from_toml(&format!(
            "name = 'n%n'\nentitlement = 'n%n'\n[task]\ncommand = ['/tmp/n;n']\nworking_directory = {}\n",
            toml::Value::String(dir.to_owned())
        ))
        .unwrap()
    };
    for dir in ["/ ", " /", "/srv/a ", "/srv\u{a0}"] {
        let problems = spec(dir).validate().unwrap_err().problems;
        assert_eq!(problems.len(), 1, "{problems:?}");
        assert_eq!(problems[0].field, "task.working_directory");
        assert_eq!(problems[0].kind, ProblemKind::SurroundingWhitespace);
        assert_eq!(problems[0].value, format!("{dir:?}"));
    }
    assert!(spec("/srv/a b").validate().is_ok());
}

/// Every value that systemd reads verbatim (and so trims) refuses surrounding
/// whitespace, with its field path.
#[test]
fn surrounding_whitespace_is_refused_in_every_trimmed_value() {
    let base = "name = 'web'\nentitlement = 'e'\nlabels = { a = 'b' }\n[task]\ncommand = ['/bin/true']\n[[task.prestart]]\nname = 'p'\ncommand = ['/bin/true']\n[task.logs]\nidentifier = 'id'\n";
    for (from, to, field) in [
        ("name = 'web'", "name = 'web '", "name"),
        ("entitlement = 'e'", "entitlement = ' e'", "entitlement"),
        ("a = 'b'", "a = 'b '", "labels.a"),
        (
            "command = ['/bin/true']\n[[",
            "command = ['/bin/true ']\n[[",
            "task.command[0]",
        ),
        ("name = 'p'", "name = 'p '", "task.prestart[0].name"),
        (
            "command = ['/bin/true']\n[task.logs]",
            "command = [' /bin/true']\n[task.logs]",
            "task.prestart[0].command[0]",
        ),
        (
            "identifier = 'id'",
            "identifier = 'id '",
            "task.logs.identifier",
        ),
    ] {
        assert!(base.contains(from), "{from}");
        let spec = JobSpec::from_toml(&base.replacen(from, to, 1)).unwrap();
        let problems = spec.validate().unwrap_err().problems;
        assert_eq!(
            problems
                .iter()
                .map(|p| (p.field.as_str(), p.kind))
                .collect::<Vec<_>>(),
            [(field, ProblemKind::SurroundingWhitespace)],
            "{to}"
        );
    }
    assert!(JobSpec::from_toml(base).unwrap().validate().is_ok());
}

/// Regression (issue 7): SIGURG and SIGWINCH are ignored by default, so a stop
/// sent with them would do nothing until the grace period ran out.
#[test]
fn kill_signals_that_do_not_end_a_process_are_refused() {
    for signal in ["SIGURG", "SIGWINCH", "SIGSTOP", "CHLD"] {
        let spec = JobSpec::from_toml(&format!(
            "name = 'x'\nentitlement = 'e'\n[task]\ncommand = ['/bin/true']\n[task.kill]\nsignal = '{signal}'\nfinal_signal = '{signal}'\n"
        ))
        .unwrap();
        let problems = spec.validate().unwrap_err().problems;
        let fields: Vec<_> = problems
            .iter()
            .map(|p| (p.field.as_str(), p.kind))
            .collect();
        assert_eq!(
            fields,
            [
                ("task.kill.signal", ProblemKind::Malformed),
                ("task.kill.final_signal", ProblemKind::Malformed)
            ],
            "{signal}"
        );
        assert!(
            problems[0].message.contains("does not end a process"),
            "{}",
            problems[0]
        );
    }
}

/// A change made to a validated job.
type Change = fn(&mut twine_spec::Job);

/// A job changed after validation cannot smuggle a value past the unit model:
/// translation refuses it, naming the unit and the directive.
#[test]
fn translate_refuses_a_job_changed_after_validation() {
    let spec =
        JobSpec::from_toml("name = 'x'\nentitlement = 'e'\n[task]\ncommand = ['/bin/true']\n")
            .unwrap();
    let valid = spec.validate().unwrap();
    let cases: [(Change, &str, Refusal); 6] = [
        (
            |j| j.task.working_directory = Some("/ ".into()),
            "WorkingDirectory",
            Refusal::SurroundingWhitespace,
        ),
        (
            |j| j.task.command.clear(),
            "ExecStart",
            Refusal::NoExecutable,
        ),
        (
            |j| j.task.command[0] = "-/bin/true".into(),
            "ExecStart",
            Refusal::NotAbsolute,
        ),
        (
            |j| {
                j.task.environment.insert("A\nExecStart".into(), "x".into());
            },
            "Environment",
            Refusal::EnvironmentName,
        ),
        (
            |j| j.task.user = Some("root\nExecStart=/bin/evil".into()),
            "User",
            Refusal::ControlCharacter,
        ),
        (
            |j| j.name = "x\n[Service]".into(),
            "Description",
            Refusal::ControlCharacter,
        ),
    ];
    for (change, key, reason) in cases {
        let mut job = valid.clone();
        change(&mut job);
        match translate(&job) {
            Err(TranslateError::Unwritable {
                key: refused_key,
                source,
                ..
            }) => assert_eq!((refused_key, source.reason), (key, reason)),
            other => panic!("{key}: {other:?}"),
        }
    }
    assert!(translate(&valid).is_ok());
}

/// The same for the relations of pre-start steps: a cycle or an unknown step
/// is an error, not a unit set without a start order.
#[test]
fn translate_refuses_steps_changed_after_validation() {
    let spec = JobSpec::from_toml(
        "name = 'x'\nentitlement = 'e'\n[task]\ncommand = ['/bin/true']\n[[task.prestart]]\nname = 'a'\ncommand = ['/bin/true']\n[[task.prestart]]\nname = 'b'\ncommand = ['/bin/true']\n",
    )
    .unwrap();
    let valid = spec.validate().unwrap();
    let order: Vec<String> = translate(&valid)
        .unwrap()
        .start_order()
        .iter()
        .map(ToString::to_string)
        .collect();
    assert_eq!(
        order,
        [
            "x-pre-a.service",
            "x-pre-b.service",
            "x.service",
            "x.target"
        ]
    );

    let mut cyclic = valid.clone();
    cyclic.task.prestart[0].after = vec!["b".to_owned()];
    assert!(
        matches!(translate(&cyclic), Err(TranslateError::Cycle { .. })),
        "{:?}",
        translate(&cyclic)
    );
    let mut unknown = valid;
    unknown.task.prestart[1].after = vec!["c".to_owned()];
    match translate(&unknown) {
        Err(TranslateError::UnknownStep { unit, step }) => {
            assert_eq!((unit.as_str(), step.as_str()), ("x-pre-b.service", "c"));
        }
        other => panic!("{other:?}"),
    }
}
