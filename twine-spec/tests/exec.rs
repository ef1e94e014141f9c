//! Execution tests: rendered units run under real systemd (PID 1 in a
//! systemd-nspawn container, see `support::nspawn`), and do exactly what the
//! spec says: argv byte for byte, pre-start order and failure, kill policy,
//! restart behaviour, sidecar lifetime.
//!
//! Needs root, systemd-nspawn and the cached rootfs (`cargo xtask rootfs`);
//! otherwise each test skips through `support::realsys_gate` (fails under
//! `TWINE_REQUIRE_REALSYS=1`).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, missing_docs)]

mod support;

use std::fmt::Write as _;
use std::time::{Duration, Instant};

use proptest::strategy::{Strategy, ValueTree};
use proptest::test_runner::TestRunner;
use support::nspawn::{self, Container, describe};
use twine_spec::validate::ProblemKind;
use twine_spec::{JobSpec, translate};

/// Generous: the machine has two cores and the tests boot containers in parallel.
const WAIT: Duration = Duration::from_secs(30);

/// Boots a container, or returns `None` when the gate says skip.
fn container() -> Option<Container> {
    if let Some(reason) = nspawn::unavailable()
        && !support::realsys_gate(&reason)
    {
        return None;
    }
    Some(Container::boot().expect("booting a systemd-nspawn container"))
}

/// A TOML value for `s` (any string, quoted and escaped by the toml crate).
fn t(s: &str) -> String {
    toml::Value::String(s.to_owned()).to_string()
}

/// A TOML array of strings.
fn ta<S: AsRef<str>>(items: &[S]) -> String {
    let v: Vec<toml::Value> = items
        .iter()
        .map(|s| toml::Value::String(s.as_ref().to_owned()))
        .collect();
    toml::Value::Array(v).to_string()
}

/// `["/bin/sh", "-c", script]` as TOML.
fn sh(script: &str) -> String {
    ta(&["/bin/sh", "-c", script])
}

/// Parses, validates and renders a spec; panics with the problems otherwise.
fn render(spec: &str) -> Vec<(String, String)> {
    let parsed =
        JobSpec::from_toml(spec).unwrap_or_else(|e| panic!("spec does not parse: {e}\n{spec}"));
    let job = parsed
        .validate()
        .unwrap_or_else(|e| panic!("spec does not validate: {e}\n{spec}"));
    translate(&job)
        .expect("a validated job translates")
        .files()
        .into_iter()
        .map(|f| (f.name, f.contents))
        .collect()
}

fn listing(units: &[(String, String)]) -> String {
    units.iter().fold(String::new(), |mut s, (n, c)| {
        let _ = write!(s, "### {n}\n{c}\n");
        s
    })
}

/// Waits until `name` exists in the shared directory and returns its contents.
fn wait_for_file(c: &Container, name: &str, units: &[&str]) -> Vec<u8> {
    let deadline = Instant::now() + WAIT;
    loop {
        if let Some(bytes) = c.read_shared(name) {
            return bytes;
        }
        if Instant::now() >= deadline {
            let diag: String = units.iter().map(|u| c.unit_diagnostics(u)).collect();
            panic!("{name} did not appear in the shared dir within {WAIT:?}\n{diag}");
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// Lines of a shared file.
fn lines(c: &Container, name: &str) -> Vec<String> {
    c.read_shared_string(name)
        .lines()
        .map(str::to_owned)
        .collect()
}

fn start(c: &Container, units: &[&str]) {
    let mut args = vec!["start", "--"];
    args.extend_from_slice(units);
    let out = c.systemctl(&args);
    assert!(
        out.status.success(),
        "systemctl start {units:?}: {}\n{}",
        describe(&out),
        units
            .iter()
            .map(|u| c.unit_diagnostics(u))
            .collect::<String>()
    );
}

fn is(want_active: &'static str, want_sub: &'static str) -> impl Fn(&str, &str) -> bool {
    move |a, s| a == want_active && s == want_sub
}

// ---------------------------------------------------------------------------
// argv

/// Records its arguments, NUL-terminated, in /twine/FILE (atomically, via a rename).
fn argv_recorder(file: &str) -> String {
    format!(
        r#"for a; do printf '%s\0' "$a"; done > /twine/{file}.tmp && mv /twine/{file}.tmp /twine/{file}"#
    )
}

/// A job whose main command is the recorder followed by `args`.
fn argv_job(name: &str, args: &[String]) -> String {
    let mut argv = vec![
        "/bin/sh".to_owned(),
        "-c".to_owned(),
        argv_recorder(name),
        "argv0".to_owned(),
    ];
    argv.extend_from_slice(args);
    format!(
        "name = {}\nentitlement = \"test\"\n[task]\ncommand = {}\n[task.restart]\npolicy = \"never\"\n",
        t(name),
        ta(&argv)
    )
}

fn hostile_args() -> Vec<String> {
    [
        "'",
        "\"",
        "'single' \"double\" `back`",
        "\\",
        "\\\\",
        "a\\nb",
        "trailing\\",
        "\\\"",
        "%",
        "%n",
        "%%n",
        "100%",
        "%i%I%u%h%t%H",
        "$",
        "$$",
        "${X}",
        "$X",
        "$HOME",
        "${HOME}",
        "$$X",
        "$(echo pwned)",
        ";",
        "a;b",
        "a ; b",
        " ",
        "two  spaces",
        " leading and trailing ",
        "\t",
        "tab\tinside",
        "\n",
        "line1\nline2\n",
        "\r\n",
        "\u{1}\u{7f}\u{1b}[31m",
        "ünïcödé ✓ 日本語 🦀",
        "\u{a0}\u{2028}\u{feff}",
        "",
        "-",
        "-x",
        "--flag=value",
        "@",
        "@at",
        "+",
        "+plus",
        "!",
        "!!bang",
        ":",
        ":colon",
        "-@+!:",
        "#comment",
        "=equals=",
        "[Service]",
        "ExecStartPre=/bin/false",
        "*?[glob]",
        "~",
        "|&<>(){}",
    ]
    .iter()
    .map(|s| (*s).to_owned())
    .collect()
}

/// NUL-terminated argv as written by the recorder.
fn encode(args: &[String]) -> Vec<u8> {
    let mut out = Vec::new();
    for a in args {
        out.extend_from_slice(a.as_bytes());
        out.push(0);
    }
    out
}

fn decode(bytes: &[u8]) -> Vec<String> {
    let body = bytes.strip_suffix(&[0]).unwrap_or(bytes);
    if bytes.is_empty() {
        return Vec::new();
    }
    body.split(|b| *b == 0)
        .map(|a| String::from_utf8_lossy(a).into_owned())
        .collect()
}

#[test]
fn hostile_argv_survives_quoting_byte_for_byte() {
    let Some(c) = container() else { return };
    let args = hostile_args();
    let units = render(&argv_job("argv", &args));
    c.install_units(&units).unwrap();
    start(&c, &["argv.target"]);
    let got = wait_for_file(&c, "argv", &["argv.service"]);
    assert!(
        got == encode(&args),
        "argv differs\nwant {args:#?}\ngot  {:#?}\n{}",
        decode(&got),
        listing(&units)
    );
    let (_, sub) = c
        .wait_until(
            "argv.service",
            |a, _| a != "active" && a != "activating",
            WAIT,
        )
        .unwrap();
    assert_eq!(
        c.show("argv.service", "Result"),
        "success",
        "sub-state {sub}"
    );
}

#[test]
fn arbitrary_argv_survives_quoting_in_one_boot() {
    const CASES: usize = 16;
    let Some(c) = container() else { return };
    // Any string without NUL: control characters, quotes, `$`, `%`, `\`, UTF-8.
    let arg = proptest::string::string_regex("[^\\x00]{0,12}").unwrap();
    let hostile = proptest::sample::select(hostile_args());
    let one = proptest::prop_oneof![3 => arg, 1 => hostile];
    let strategy = proptest::collection::vec(one, 0..8);
    let mut runner = TestRunner::default();
    let mut cases: Vec<Vec<String>> = (0..CASES)
        .map(|_| strategy.new_tree(&mut runner).unwrap().current())
        .collect();
    // systemd refuses noncharacters as "not UTF-8 clean" (utf8.c,
    // unichar_is_valid), so validation must refuse them, with the word's field
    // path, before any unit is written. One such case is always present.
    cases.push(vec!["ok".to_owned(), "a\u{ffff}b".to_owned()]);
    cases.retain(|args| {
        let bad = args.iter().position(|a| {
            a.chars().any(|c| {
                let c = c as u32;
                (0xFDD0..=0xFDEF).contains(&c) || c % 0x10000 >= 0xFFFE
            })
        });
        let Some(bad) = bad else { return true };
        let spec = argv_job("refused", args);
        let problems = JobSpec::from_toml(&spec)
            .expect("parses")
            .validate()
            .expect_err("a noncharacter must not validate")
            .problems;
        let field = format!("task.command[{}]", bad + 4);
        assert!(
            problems
                .iter()
                .any(|p| p.field == field && p.kind == ProblemKind::Noncharacter),
            "{args:?}: {problems:?}"
        );
        false
    });

    let mut units = Vec::new();
    let mut targets = Vec::new();
    for (i, args) in cases.iter().enumerate() {
        let name = format!("argv{i}");
        units.extend(render(&argv_job(&name, args)));
        targets.push(format!("{name}.target"));
    }
    c.install_units(&units).unwrap();
    let targets: Vec<&str> = targets.iter().map(String::as_str).collect();
    start(&c, &targets);
    for (i, args) in cases.iter().enumerate() {
        let name = format!("argv{i}");
        let got = wait_for_file(&c, &name, &[&format!("{name}.service")]);
        assert!(
            got == encode(args),
            "case {i}: argv differs\nwant {args:?}\ngot  {:?}\n{}",
            decode(&got),
            listing(
                &units
                    .iter()
                    .filter(|(n, _)| n.starts_with(&name))
                    .cloned()
                    .collect::<Vec<_>>()
            )
        );
    }
}

// ---------------------------------------------------------------------------
// pre-start steps

fn prestart_job(name: &str, steps: &[(&str, &str)], main: &str) -> String {
    let mut spec = format!(
        "name = {}\nentitlement = \"test\"\n[task]\ncommand = {}\n[task.restart]\npolicy = \"never\"\n",
        t(name),
        sh(main)
    );
    for (step, script) in steps {
        let _ = write!(
            spec,
            "[[task.prestart]]\nname = {}\ncommand = {}\ntimeout = \"30s\"\n",
            t(step),
            sh(script)
        );
    }
    spec
}

#[test]
fn prestart_steps_run_in_order_before_main() {
    let Some(c) = container() else { return };
    let units = render(&prestart_job(
        "ord",
        &[
            ("one", "echo 1 >> /twine/order"),
            ("two", "echo 2 >> /twine/order"),
            ("three", "echo 3 >> /twine/order"),
        ],
        "echo main >> /twine/order; touch /twine/done",
    ));
    c.install_units(&units).unwrap();
    start(&c, &["ord.target"]);
    wait_for_file(&c, "done", &["ord.service"]);
    assert_eq!(
        lines(&c, "order"),
        ["1", "2", "3", "main"],
        "\n{}",
        listing(&units)
    );
    for step in ["one", "two", "three"] {
        let unit = format!("ord-pre-{step}.service");
        // Each step ran once, succeeded, and stays active after main has exited.
        assert_eq!(
            c.show_many(
                &unit,
                &["ActiveState", "SubState", "Result", "ExecMainStatus"]
            ),
            ["active", "exited", "success", "0"],
            "{unit}"
        );
    }
}

#[test]
fn failing_prestart_step_keeps_main_from_starting() {
    let Some(c) = container() else { return };
    let units = render(&prestart_job(
        "bad",
        &[
            ("ok", "echo ok >> /twine/ran"),
            ("fails", "echo fails >> /twine/ran; exit 3"),
            ("after", "echo after >> /twine/ran"),
        ],
        "echo main >> /twine/ran",
    ));
    c.install_units(&units).unwrap();
    // The target only `Wants=` main (see the translate docs: a `Requires=` would carry
    // automatic restarts to the steps), so starting the job itself succeeds...
    let out = c.systemctl(&["start", "bad.target"]);
    assert!(
        out.status.success(),
        "starting the target: {}",
        describe(&out)
    );
    assert_eq!(
        lines(&c, "ran"),
        ["ok", "fails"],
        "nothing after the failing step may run\n{}",
        listing(&units)
    );
    assert_eq!(
        c.show_many(
            "bad-pre-fails.service",
            &["ActiveState", "Result", "ExecMainStatus"]
        ),
        ["failed", "exit-code", "3"]
    );
    for unit in ["bad-pre-after.service", "bad.service"] {
        let state = c.show_many(unit, &["ActiveState", "ExecMainStartTimestampMonotonic"]);
        assert!(
            state[0] == "inactive" || state[0] == "failed",
            "{unit} is {}",
            state[0]
        );
        assert!(
            state[1].is_empty() || state[1] == "0",
            "{unit} started at {}",
            state[1]
        );
    }
    // ...but the main unit's own start job fails with a failed dependency, every time.
    let out = c.systemctl(&["start", "bad.service"]);
    assert!(
        !out.status.success(),
        "main must not start: {}",
        describe(&out)
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("dependency"),
        "systemctl start should report a failed dependency: {stderr}"
    );
    assert_eq!(
        lines(&c, "ran"),
        ["ok", "fails", "fails"],
        "only the failed step runs again"
    );
    assert_eq!(
        c.show("bad.service", "ExecMainStartTimestampMonotonic"),
        "0"
    );
}

/// The design: an automatic restart of main (restart policy) does not re-run
/// the pre-start steps (they stay active/exited), while `systemctl restart
/// NAME.target` does; a sidecar comes back with main either way.
///
/// Regression: with the target `Requires=` main, or main `PropagatesStopTo=` the
/// steps, systemd 252 re-ran the steps on every automatic restart (the restart job
/// reached the target and, through `PartOf=`, the steps; or the failure stopped
/// them at once). The target now only `Wants=` main and main `Wants=` each sidecar.
#[test]
fn auto_restart_skips_prestart_but_target_restart_reruns_it() {
    let Some(c) = container() else { return };
    // Main fails on its first run only; on-failure restarts it.
    let spec = format!(
        "name = \"rs\"\nentitlement = \"test\"\n[task]\ncommand = {}\n\
         [[task.prestart]]\nname = \"count\"\ncommand = {}\n\
         [[task.sidecars]]\nname = \"side\"\ncommand = {}\n\
         [task.restart]\npolicy = \"on-failure\"\ndelay = \"100ms\"\n",
        sh(
            "echo run >> /twine/main; [ $(wc -l < /twine/main) -ge 2 ] || exit 1; exec sleep infinity"
        ),
        sh("echo pre >> /twine/pre"),
        sh("echo side >> /twine/side; exec sleep infinity"),
    );
    let units = render(&spec);
    c.install_units(&units).unwrap();
    start(&c, &["rs.target"]);
    let deadline = Instant::now() + WAIT;
    while lines(&c, "main").len() < 2 {
        assert!(
            Instant::now() < deadline,
            "main was not restarted\n{}",
            c.unit_diagnostics("rs.service")
        );
        std::thread::sleep(Duration::from_millis(10));
    }
    c.wait_until("rs.service", is("active", "running"), WAIT)
        .unwrap();
    c.wait_until("rs-sidecar-side.service", is("active", "running"), WAIT)
        .unwrap();
    assert_eq!(c.show("rs.service", "NRestarts"), "1");
    let journal = || {
        let out = c.exec(&[
            "journalctl",
            "--no-pager",
            "-o",
            "short-monotonic",
            "SYSLOG_IDENTIFIER=systemd",
        ]);
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    assert_eq!(
        lines(&c, "pre"),
        ["pre"],
        "an automatic restart of main must not re-run pre-start steps\n{}\n{}",
        journal(),
        listing(&units)
    );
    assert_eq!(
        c.show_many("rs-pre-count.service", &["ActiveState", "SubState"]),
        ["active", "exited"]
    );

    c.systemctl_ok(&["restart", "rs.target"]).unwrap();
    c.wait_until("rs.service", is("active", "running"), WAIT)
        .unwrap();
    c.wait_until("rs-sidecar-side.service", is("active", "running"), WAIT)
        .unwrap();
    assert_eq!(
        lines(&c, "main").len(),
        3,
        "restarting the target restarts main"
    );
    assert_eq!(
        lines(&c, "pre"),
        ["pre", "pre"],
        "restarting the target re-runs pre-start steps\n{}",
        journal()
    );
}

// ---------------------------------------------------------------------------
// kill policy

#[test]
fn stop_signals_every_process_then_kills_after_grace_period() {
    let Some(c) = container() else { return };
    // Main and a child both trap SIGUSR1, record it, and keep running.
    let child = r#"trap 'echo child >> /twine/sig' USR1; echo $$ > /twine/child.pid; while :; do sleep 0.05; done"#;
    let main = format!(
        r#"trap 'echo main >> /twine/sig' USR1; /bin/sh -c {} & echo $$ > /twine/main.pid; while :; do sleep 0.05; done"#,
        shell_quote(child)
    );
    let spec = format!(
        "name = \"kl\"\nentitlement = \"test\"\n[task]\ncommand = {}\n\
         [task.kill]\nsignal = \"SIGUSR1\"\ngrace_period = \"2s\"\nfinal_signal = \"SIGKILL\"\nmode = \"control-group\"\n\
         [task.restart]\npolicy = \"never\"\n",
        sh(&main)
    );
    let units = render(&spec);
    c.install_units(&units).unwrap();
    start(&c, &["kl.target"]);
    wait_for_file(&c, "child.pid", &["kl.service"]);
    wait_for_file(&c, "main.pid", &["kl.service"]);
    let pids = [
        c.read_shared_string("main.pid"),
        c.read_shared_string("child.pid"),
    ];

    let began = Instant::now();
    c.systemctl_ok(&["stop", "kl.target"]).unwrap();
    let returned = began.elapsed();
    // `systemctl stop NAME.target` does not wait for the job's processes: the
    // target is ordered After= its units, so on stop it goes first and returns
    // while the main unit's stop job still runs. Wait for the main unit itself.
    let (active, _) = c
        .wait_until("kl.service", |a, _| a == "inactive" || a == "failed", WAIT)
        .unwrap();
    let took = began.elapsed();
    // The processes ignored SIGUSR1, so systemd needed the final SIGKILL: the
    // unit ends failed with result "timeout" (not inactive/success).
    assert_eq!(
        c.show_many("kl.service", &["ActiveState", "Result"]),
        ["failed", "timeout"]
    );
    eprintln!(
        "systemctl stop kl.target returned after {returned:?}; kl.service {active} (result {}) after {took:?}",
        c.show("kl.service", "Result")
    );

    let mut got = lines(&c, "sig");
    let journal = c.unit_diagnostics("kl.service");
    got.sort();
    assert_eq!(
        got,
        ["child", "main"],
        "both processes must receive SIGUSR1\n{journal}\n{}",
        listing(&units)
    );
    for pid in &pids {
        let pid = pid.trim();
        assert!(
            !alive(&c, pid),
            "pid {pid} survived the stop: {}",
            describe(&c.exec(&["ps", "-ef"]))
        );
    }
    let stamps: Vec<u64> = c
        .show_many(
            "kl.service",
            &[
                "ActiveExitTimestampMonotonic",
                "InactiveEnterTimestampMonotonic",
            ],
        )
        .iter()
        .map(|v| v.parse().unwrap())
        .collect();
    let (exit, inactive) = (stamps[0], stamps[1]);
    let stopping = Duration::from_micros(inactive - exit);
    assert!(
        stopping >= Duration::from_secs(2),
        "SIGKILL came after {stopping:?}, before the 2s grace period"
    );
    assert!(
        took >= Duration::from_secs(2),
        "kl.service stopped after {took:?}"
    );
    assert!(
        stopping < Duration::from_secs(10),
        "the stop took {stopping:?}"
    );
}

/// Whether container PID `pid` still runs: a zombie that systemd has not reaped
/// yet counts as dead (the unit goes inactive once its cgroup is empty, which
/// can be a moment before PID 1 reaps the orphans).
fn alive(c: &Container, pid: &str) -> bool {
    let stat = c.host_path(&format!("/proc/{pid}/stat"));
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let state = std::fs::read_to_string(&stat).ok().and_then(|s| {
            s.rsplit_once(')')
                .and_then(|(_, rest)| rest.split_whitespace().next().map(str::to_owned))
        });
        match state.as_deref() {
            None | Some("Z" | "X") => return false,
            Some(_) if Instant::now() >= deadline => return true,
            Some(_) => std::thread::sleep(Duration::from_millis(10)),
        }
    }
}

/// Single-quotes `s` for /bin/sh.
fn shell_quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', r"'\''"))
}

// ---------------------------------------------------------------------------
// sidecars

#[test]
fn sidecar_starts_with_the_job_and_stops_with_main() {
    let Some(c) = container() else { return };
    let spec = format!(
        "name = \"sc\"\nentitlement = \"test\"\n[task]\ncommand = {}\n\
         [[task.sidecars]]\nname = \"logs\"\ncommand = {}\n\
         [task.restart]\npolicy = \"never\"\n",
        sh("exec sleep infinity"),
        sh("echo up >> /twine/sidecar; exec sleep infinity"),
    );
    let units = render(&spec);
    c.install_units(&units).unwrap();
    let side = "sc-sidecar-logs.service";

    // Starting the job starts the sidecar.
    start(&c, &["sc.target"]);
    c.wait_until("sc.service", is("active", "running"), WAIT)
        .unwrap();
    c.wait_until(side, is("active", "running"), WAIT).unwrap();
    assert_eq!(lines(&c, "sidecar"), ["up"]);

    // Stopping main (not the target) stops the sidecar.
    c.systemctl_ok(&["stop", "sc.service"]).unwrap();
    c.wait_until(side, |a, _| a == "inactive", WAIT).unwrap();

    // Main dying on its own stops the sidecar too, and it is not restarted.
    start(&c, &["sc.target"]);
    c.wait_until(side, is("active", "running"), WAIT).unwrap();
    c.systemctl_ok(&["kill", "--signal=SIGKILL", "sc.service"])
        .unwrap();
    c.wait_until("sc.service", |a, _| a == "failed" || a == "inactive", WAIT)
        .unwrap();
    c.wait_until(side, |a, _| a == "inactive" || a == "failed", WAIT)
        .unwrap();
    assert_eq!(lines(&c, "sidecar"), ["up", "up"], "\n{}", listing(&units));
}
