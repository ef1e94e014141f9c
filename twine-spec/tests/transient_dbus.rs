//! Real systemd proves the `StartTransientUnit` property lists equivalent to the
//! unit files: one copy of a job is installed as files, a second copy (another
//! job name) is created over D-Bus from the property lists, and for every
//! property we send, `systemctl show` reports the same value for both.
//!
//! Needs the systemd-nspawn harness (root, the cached rootfs); skips through the
//! real-system gate otherwise.

mod support;

use support::nspawn::{self, Container, describe};
use twine_spec::{JobSpec, PropertyValue, TransientUnit, UnitSet, translate};

const SPEC: &str = include_str!("../../examples/specs/web.toml");

fn job(name: &str) -> UnitSet {
    let mut spec = JobSpec::from_toml(SPEC).expect("example parses");
    spec.name = name.to_owned();
    // Hostile arguments too: what `%`, `$` and quotes become must agree as well.
    spec.task.command.extend([
        "100% ${X} $Y \"q\" 'a' \\ ;".to_owned(),
        "%n".to_owned(),
        "tab\there\nline".to_owned(),
    ]);
    translate(&spec.validate().expect("example is valid")).expect("a validated job translates")
}

/// The `busctl call` words for one `(name, signature, value)` property.
fn push_property(args: &mut Vec<String>, name: &str, signature: &str, value: &PropertyValue) {
    args.push(name.to_owned());
    args.push(signature.to_owned());
    match value {
        PropertyValue::String(s) => args.push(s.clone()),
        PropertyValue::Bool(b) => args.push(b.to_string()),
        PropertyValue::U64(n) => args.push(n.to_string()),
        PropertyValue::U32(n) => args.push(n.to_string()),
        PropertyValue::I32(n) => args.push(n.to_string()),
        PropertyValue::Strings(v) => {
            args.push(v.len().to_string());
            args.extend(v.iter().cloned());
        }
        PropertyValue::Exec(commands) => {
            args.push(commands.len().to_string());
            for (path, argv, ignore) in commands {
                args.push(path.clone());
                args.push(argv.len().to_string());
                args.extend(argv.iter().cloned());
                args.push(ignore.to_string());
            }
        }
        PropertyValue::Timers(timers) => {
            args.push(timers.len().to_string());
            for (base, usec) in timers {
                args.push(base.clone());
                args.push(usec.to_string());
            }
        }
        other => panic!("no busctl encoding for {other:?}"),
    }
}

fn push_properties(args: &mut Vec<String>, unit: &TransientUnit) {
    args.push(unit.properties.len().to_string());
    for p in &unit.properties {
        push_property(args, p.name, p.signature, &p.value);
    }
}

/// `StartTransientUnit(main, "fail", properties, aux)` with every other unit of the
/// job as `aux`: systemd creates them all, then starts the main unit in one
/// transaction that pulls in the rest, so ordering holds as it does for files.
fn start_transient(c: &Container, target: &TransientUnit, aux: &[TransientUnit]) {
    let mut args: Vec<String> = [
        // `--` first: argument words such as "-c" must not be read as options.
        "busctl",
        "--system",
        "--",
        "call",
        "org.freedesktop.systemd1",
        "/org/freedesktop/systemd1",
        "org.freedesktop.systemd1.Manager",
        "StartTransientUnit",
        "ssa(sv)a(sa(sv))",
    ]
    .map(str::to_owned)
    .to_vec();
    args.push(target.name.clone());
    args.push("fail".to_owned());
    push_properties(&mut args, target);
    args.push(aux.len().to_string());
    for unit in aux {
        args.push(unit.name.clone());
        push_properties(&mut args, unit);
    }
    let argv: Vec<&str> = args.iter().map(String::as_str).collect();
    let out = c.exec(&argv);
    assert!(
        out.status.success(),
        "StartTransientUnit {}: {}",
        target.name,
        describe(&out)
    );
}

/// `systemctl show` values that describe configuration, not run-time state.
fn normalized(value: &str, from: &str, to: &str) -> String {
    let mut v = value.replace(from, to);
    // ExecStart= shows run-time fields after the configuration; timers show their next elapse.
    for marker in [" ; start_time=", " ; next_elapse="] {
        while let Some(start) = v.find(marker) {
            let end = v[start..].find('}').map_or(v.len(), |e| start + e);
            v.replace_range(start..end, " ");
        }
    }
    v
}

#[test]
fn transient_units_equal_unit_files_in_real_systemd() {
    if let Some(reason) = nspawn::unavailable()
        && !support::realsys_gate(&reason)
    {
        return;
    }
    let c = Container::boot().expect("booting a systemd-nspawn container");
    let files = job("ff");
    let bus = job("bb");
    c.install_units(
        &files
            .files()
            .into_iter()
            .map(|f| (f.name, f.contents))
            .collect::<Vec<_>>(),
    )
    .expect("installing unit files");

    let transient = bus.transient();
    let (target, aux) = transient.split_first().expect("a target");
    assert_eq!(target.name, bus.main().as_str());
    start_transient(&c, target, aux);
    c.wait_until(
        "bb.service",
        |active, _| active == "active",
        std::time::Duration::from_secs(30),
    )
    .unwrap_or_else(|e| panic!("{e:#}: {}", c.unit_diagnostics("bb.service")));

    let mut compared = 0;
    for unit in &transient {
        let file_unit = unit.name.replacen("bb", "ff", 1);
        for p in &unit.properties {
            let mut from_bus = normalized(&c.show(&unit.name, p.name), "bb", "ff");
            let mut from_file = normalized(&c.show(&file_unit, p.name), "bb", "ff");
            if p.signature == "as" {
                // Dependency sets print in hash order.
                for v in [&mut from_bus, &mut from_file] {
                    let mut words: Vec<&str> = v.split(' ').collect();
                    words.sort_unstable();
                    *v = words.join(" ");
                }
            }
            assert_eq!(
                from_bus, from_file,
                "{} {}: D-Bus vs file",
                unit.name, p.name
            );
            assert!(
                !from_bus.is_empty() || p.name == "Environment",
                "{} {} is empty",
                unit.name,
                p.name
            );
            compared += 1;
        }
    }
    assert!(compared > 100, "only {compared} properties compared");
    assert_eq!(
        c.show("bb.service", "ActiveState"),
        "active",
        "{}",
        c.unit_diagnostics("bb.service")
    );
}
