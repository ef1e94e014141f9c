//! Validation: a [`JobSpec`] becomes a [`Job`], or every problem is reported at once.

use std::collections::{BTreeMap, HashMap};
use std::fmt;

use petgraph::algo::tarjan_scc;
use petgraph::graphmap::DiGraphMap;

use crate::job::*;
use crate::naming::UnitNames;
use crate::signal::Signal;
use crate::spec::*;
use crate::timespan::{QuantityError, Timeout, parse_bytes, parse_span};
use crate::unit::{self, Refusal};

/// Longest job, step, sidecar or label name, in bytes.
pub const MAX_NAME_LEN: usize = 64;
/// Longest unit name systemd accepts (`UNIT_NAME_MAX` minus the NUL).
pub const MAX_UNIT_NAME_LEN: usize = 255;
pub use crate::unit::{MAX_COMMAND_LINE, MAX_PATH_LEN};
/// Most arguments in one command.
pub const MAX_ARGS: usize = 4096;
/// Longest environment value, in bytes.
pub const MAX_ENV_VALUE: usize = 64 * 1024;
/// Most environment variables.
pub const MAX_ENV_VARS: usize = 1024;
/// Most pre-start steps.
pub const MAX_PRESTART: usize = 64;
/// Most sidecars.
pub const MAX_SIDECARS: usize = 16;
/// Most labels.
pub const MAX_LABELS: usize = 64;

/// What is wrong with one field.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum ProblemKind {
    /// A required value is empty.
    Empty,
    /// The value is longer or has more items than allowed.
    TooLong,
    /// The value contains a NUL byte.
    Nul,
    /// The value contains another control character where none can be written.
    ControlCharacter,
    /// The value contains a Unicode noncharacter, which systemd refuses.
    Noncharacter,
    /// An executable or directory is not an absolute, normalized path.
    NotAbsolute,
    /// A number is zero, negative or out of range.
    OutOfRange,
    /// The value is not in the accepted notation or set.
    Malformed,
    /// Two steps or sidecars share a name.
    Duplicate,
    /// An `after` entry names no step.
    UnknownReference,
    /// Pre-start steps wait for each other in a cycle.
    Cycle,
    /// Two units of the job would get the same name, or a name is too long for systemd.
    UnitName,
    /// Two values contradict each other (`memory_high` above `memory_max`).
    Conflict,
    /// A value systemd reads verbatim starts or ends with whitespace, which
    /// systemd would strip (`/srv/a ` would become `/srv/a`).
    SurroundingWhitespace,
    /// A value systemd reads verbatim ends with a backslash, which would join the
    /// next line.
    TrailingBackslash,
}

impl From<Refusal> for ProblemKind {
    fn from(refusal: Refusal) -> ProblemKind {
        match refusal {
            Refusal::Empty | Refusal::NoExecutable => ProblemKind::Empty,
            Refusal::Nul => ProblemKind::Nul,
            Refusal::ControlCharacter => ProblemKind::ControlCharacter,
            Refusal::Noncharacter => ProblemKind::Noncharacter,
            Refusal::SurroundingWhitespace => ProblemKind::SurroundingWhitespace,
            Refusal::TrailingBackslash => ProblemKind::TrailingBackslash,
            Refusal::TooLong { .. } => ProblemKind::TooLong,
            Refusal::NotAbsolute => ProblemKind::NotAbsolute,
            Refusal::ExecutableCharacter | Refusal::EnvironmentName => ProblemKind::Malformed,
        }
    }
}

/// One problem: the field path, the offending value and what is wrong.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct Problem {
    /// The field path, as `task.prestart[2].command[0]`.
    pub field: String,
    /// The offending value, as written (quoted and escaped for display).
    pub value: String,
    /// The category.
    pub kind: ProblemKind,
    /// A sentence saying what is wrong and what is accepted.
    pub message: String,
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {} (got {})", self.field, self.message, self.value)
    }
}

/// Every problem found in a spec, in field order.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub struct ValidationErrors {
    /// The problems; never empty.
    pub problems: Vec<Problem>,
}

impl fmt::Display for ValidationErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, problem) in self.problems.iter().enumerate() {
            if i > 0 {
                f.write_str("\n")?;
            }
            write!(f, "{problem}")?;
        }
        Ok(())
    }
}

/// Shows a value in a problem: quoted, escaped, and cut at 80 characters.
fn shown(value: &str) -> String {
    let mut out: String = format!("{value:?}");
    if out.chars().count() > 82 {
        out = out.chars().take(79).collect::<String>() + "...\"";
    }
    out
}

fn shown_quantity(q: &Quantity) -> String {
    match q {
        Quantity::Integer(n) => n.to_string(),
        Quantity::Float(x) => x.to_string(),
        Quantity::Text(t) => shown(t),
    }
}

fn malformed(error: QuantityError) -> (ProblemKind, String) {
    (ProblemKind::Malformed, error.to_string())
}

fn out_of_range(message: &str) -> (ProblemKind, String) {
    (ProblemKind::OutOfRange, message.to_owned())
}

#[derive(Default)]
struct Checker {
    problems: Vec<Problem>,
}

impl Checker {
    fn report(
        &mut self,
        field: impl Into<String>,
        value: String,
        kind: ProblemKind,
        message: impl Into<String>,
    ) {
        self.problems.push(Problem {
            field: field.into(),
            value,
            kind,
            message: message.into(),
        });
    }

    /// A printable name: non-empty, bounded, and a valid text value of a unit
    /// (see [`unit::check_text`]).
    fn name(&mut self, field: &str, value: &str, max: usize) -> bool {
        let problem = if value.is_empty() {
            Some((ProblemKind::Empty, "must not be empty".to_owned()))
        } else if value.len() > max {
            Some((
                ProblemKind::TooLong,
                format!("must be at most {max} bytes, is {}", value.len()),
            ))
        } else {
            self.printable(value)
        };
        match problem {
            Some((kind, message)) => {
                self.report(field, shown(value), kind, message);
                false
            }
            None => true,
        }
    }

    fn printable(&self, value: &str) -> Option<(ProblemKind, String)> {
        unit::check_text(value)
            .err()
            .map(|refusal| (refusal.into(), refusal.to_string()))
    }

    /// Reports `refusal` of `value` at `field`.
    fn refused(&mut self, field: impl Into<String>, value: String, refusal: Refusal) {
        self.report(field, value, refusal.into(), refusal.to_string());
    }

    fn optional_name(&mut self, field: &str, value: &Option<String>, max: usize) -> Option<String> {
        let value = value.as_ref()?;
        self.name(field, value, max).then(|| value.clone())
    }

    /// An absolute, normalized path that can be written into a unit file
    /// (see [`unit::check_path`]).
    fn path(&mut self, field: &str, value: &str) {
        if let Err(refusal) = unit::check_path(value) {
            self.refused(field, shown(value), refusal);
        }
    }

    /// A command line that can be written into a unit file (see
    /// [`unit::check_argv`]), with at most [`MAX_ARGS`] words.
    fn command(&mut self, field: &str, argv: &[String]) {
        for (word, refusal) in unit::check_argv(argv) {
            match (word, refusal) {
                (Some(i), _) => self.refused(format!("{field}[{i}]"), shown(&argv[i]), refusal),
                (None, Refusal::TooLong { len, .. }) => {
                    self.refused(field, format!("{len} bytes once quoted"), refusal);
                }
                (None, _) => self.refused(field, "[]".to_owned(), refusal),
            }
        }
        if argv.len() > MAX_ARGS {
            self.report(
                field,
                format!("{} arguments", argv.len()),
                ProblemKind::TooLong,
                format!("must have at most {MAX_ARGS} arguments"),
            );
        }
    }

    fn span(
        &mut self,
        field: &str,
        value: &Option<Quantity>,
        default_usec: u64,
        allow_zero: bool,
    ) -> Option<u64> {
        match self.timeout(
            field,
            value,
            Timeout::After(default_usec),
            allow_zero,
            false,
        )? {
            Timeout::After(usec) => Some(usec),
            Timeout::Infinity => None,
        }
    }

    fn timeout(
        &mut self,
        field: &str,
        value: &Option<Quantity>,
        default: Timeout,
        allow_zero: bool,
        allow_infinity: bool,
    ) -> Option<Timeout> {
        let Some(q) = value else { return Some(default) };
        let parsed = match q {
            Quantity::Integer(n) if *n >= 0 => u64::try_from(*n)
                .ok()
                .and_then(|n| n.checked_mul(1_000_000))
                .map(Timeout::After)
                .ok_or_else(|| malformed(QuantityError::TooLarge)),
            Quantity::Integer(_) => Err(out_of_range("must not be negative")),
            Quantity::Float(x) if x.is_finite() && *x >= 0.0 => parse_span(&format!("{x}"))
                .map(Timeout::After)
                .map_err(malformed),
            Quantity::Float(_) => Err(out_of_range(
                "must be a finite, non-negative number of seconds",
            )),
            Quantity::Text(t) if t == "infinity" && allow_infinity => Ok(Timeout::Infinity),
            Quantity::Text(t) => parse_span(t).map(Timeout::After).map_err(malformed),
        };
        match parsed {
            Ok(Timeout::After(0)) if !allow_zero => {
                let hint = if allow_infinity {
                    "must be positive (use \"infinity\" to wait forever)"
                } else {
                    "must be positive"
                };
                self.report(field, shown_quantity(q), ProblemKind::OutOfRange, hint);
                None
            }
            Ok(t) => Some(t),
            Err((kind, message)) => {
                self.report(field, shown_quantity(q), kind, message);
                None
            }
        }
    }

    fn bytes(&mut self, field: &str, value: &Option<Quantity>) -> Option<u64> {
        let q = value.as_ref()?;
        let parsed = match q {
            Quantity::Integer(n) if *n > 0 => {
                u64::try_from(*n).map_err(|_| malformed(QuantityError::TooLarge))
            }
            Quantity::Integer(_) => Err(out_of_range("must be positive")),
            Quantity::Float(_) => Err((
                ProblemKind::Malformed,
                "must be a whole number of bytes or a size such as 512M".to_owned(),
            )),
            Quantity::Text(t) => parse_bytes(t).map_err(malformed).and_then(|n| {
                if n == 0 {
                    Err(out_of_range("must be positive"))
                } else {
                    Ok(n)
                }
            }),
        };
        match parsed {
            Ok(n) => Some(n),
            Err((kind, message)) => {
                self.report(field, shown_quantity(q), kind, message);
                None
            }
        }
    }

    fn ranged(&mut self, field: &str, value: Option<i64>, min: i64, max: i64) -> Option<u64> {
        let n = value?;
        if (min..=max).contains(&n) {
            u64::try_from(n).ok()
        } else {
            self.report(
                field,
                n.to_string(),
                ProblemKind::OutOfRange,
                format!("must be between {min} and {max}"),
            );
            None
        }
    }

    fn signal(&mut self, field: &str, value: &Option<String>, default: Signal) -> Signal {
        let Some(name) = value else { return default };
        Signal::parse(name).unwrap_or_else(|e| {
            self.report(
                field,
                shown(name),
                ProblemKind::Malformed,
                format!(
                    "{e}: must be a signal that ends a process, such as SIGTERM, SIGINT or SIGRTMIN+3"
                ),
            );
            default
        })
    }

    fn restart(&mut self, field: &str, spec: &RestartSpec, default: Restart) -> RestartPolicy {
        let policy = match spec.policy.as_deref() {
            None => default,
            Some("never") => Restart::Never,
            Some("on-failure") => Restart::OnFailure,
            Some("always") => Restart::Always,
            Some(other) => {
                self.report(
                    format!("{field}.policy"),
                    shown(other),
                    ProblemKind::Malformed,
                    "must be one of never, on-failure, always",
                );
                default
            }
        };
        let delay_usec = self
            .span(&format!("{field}.delay"), &spec.delay, 1_000_000, true)
            .unwrap_or(0);
        let burst = self
            .ranged(&format!("{field}.burst"), spec.burst, 0, 10_000)
            .unwrap_or(5);
        let interval_usec = self
            .span(
                &format!("{field}.interval"),
                &spec.interval,
                60_000_000,
                false,
            )
            .unwrap_or(1);
        RestartPolicy {
            policy,
            delay_usec,
            burst: u32::try_from(burst).unwrap_or(5),
            interval_usec,
        }
    }
}

fn is_user_or_group(name: &str) -> bool {
    if !name.is_empty() && name.bytes().all(|b| b.is_ascii_digit()) {
        return name.parse::<u32>().is_ok_and(|id| id < u32::MAX);
    }
    let mut bytes = name.bytes();
    name.len() <= 31
        && matches!(bytes.next(), Some(b) if b.is_ascii_alphabetic() || b == b'_')
        && bytes.all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'.'))
}

fn is_label_key(key: &str) -> bool {
    !key.is_empty()
        && key
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'/' | b'-'))
}

impl JobSpec {
    /// Checks every rule and returns the validated [`Job`], or all problems found.
    pub fn validate(&self) -> Result<Job, ValidationErrors> {
        let mut c = Checker::default();
        let spec = self;
        c.name("name", &spec.name, MAX_NAME_LEN);
        c.name("entitlement", &spec.entitlement, 128);
        let replicas = c
            .ranged("replicas", Some(spec.replicas), 0, 1_000_000)
            .unwrap_or(0);
        if spec.labels.len() > MAX_LABELS {
            c.report(
                "labels",
                format!("{} labels", spec.labels.len()),
                ProblemKind::TooLong,
                format!("must have at most {MAX_LABELS} labels"),
            );
        }
        for (key, value) in &spec.labels {
            if !is_label_key(key) || key.len() > MAX_NAME_LEN {
                c.report(
                    format!("labels.{key}"),
                    shown(key),
                    ProblemKind::Malformed,
                    format!("label keys are 1 to {MAX_NAME_LEN} of A-Z a-z 0-9 . _ / -"),
                );
            }
            if let Some((kind, message)) = c.printable(value) {
                c.report(format!("labels.{key}"), shown(value), kind, message);
            } else if value.len() > 256 {
                c.report(
                    format!("labels.{key}"),
                    shown(value),
                    ProblemKind::TooLong,
                    "must be at most 256 bytes",
                );
            }
        }
        let host_profile = c.optional_name("host_profile", &spec.host_profile, 128);
        let machine_type = c.optional_name("machine_type", &spec.machine_type, 128);
        let task = validate_task(&mut c, &spec.task);

        // Unit names, once every name is known to be printable.
        if c.problems.is_empty() {
            let names = UnitNames::new(&spec.name, &task);
            let mut seen: HashMap<String, String> = HashMap::new();
            for (field, unit) in names.all_with_fields() {
                if unit.as_str().len() > MAX_UNIT_NAME_LEN {
                    c.report(
                        field,
                        shown(unit.as_str()),
                        ProblemKind::UnitName,
                        format!(
                            "gives a unit name longer than {MAX_UNIT_NAME_LEN} bytes once escaped"
                        ),
                    );
                } else if let Some(other) = seen.insert(unit.as_str().to_owned(), field.clone()) {
                    c.report(
                        field,
                        shown(unit.as_str()),
                        ProblemKind::UnitName,
                        format!("gives the same unit name as {other}"),
                    );
                }
            }
        }

        if c.problems.is_empty() {
            Ok(Job {
                name: spec.name.clone(),
                entitlement: spec.entitlement.clone(),
                replicas: u32::try_from(replicas).unwrap_or(u32::MAX),
                labels: spec.labels.clone(),
                host_profile,
                machine_type,
                task,
            })
        } else {
            Err(ValidationErrors {
                problems: c.problems,
            })
        }
    }
}

fn validate_task(c: &mut Checker, t: &TaskSpec) -> Task {
    c.command("task.command", &t.command);
    if let Some(dir) = &t.working_directory {
        c.path("task.working_directory", dir);
    }
    for (field, value) in [("task.user", &t.user), ("task.group", &t.group)] {
        if let Some(v) = value.as_deref().filter(|v| !is_user_or_group(v)) {
            c.report(field, shown(v), ProblemKind::Malformed, "must be a user or group name (letters, digits, _ - ., at most 31, not starting with a digit) or a numeric id");
        }
    }
    if t.environment.len() > MAX_ENV_VARS {
        c.report(
            "task.environment",
            format!("{} variables", t.environment.len()),
            ProblemKind::TooLong,
            format!("must have at most {MAX_ENV_VARS} variables"),
        );
    }
    for (name, value) in &t.environment {
        let field = format!("task.environment.{name}");
        if let Err(refusal) = unit::check_environment_name(name) {
            c.refused(&field, shown(name), refusal);
        }
        if let Err(refusal) = unit::check_environment_value(value) {
            c.refused(&field, shown(value), refusal);
        } else if value.len() > MAX_ENV_VALUE {
            c.report(
                &field,
                format!("{} bytes", value.len()),
                ProblemKind::TooLong,
                format!("must be at most {MAX_ENV_VALUE} bytes"),
            );
        }
    }
    let resources = validate_resources(c, &t.resources);

    let mut names: BTreeMap<String, String> = BTreeMap::new();
    let mut unique = |c: &mut Checker, field: String, name: &str| {
        if let Some(first) = names.get(name) {
            c.report(
                &field,
                shown(name),
                ProblemKind::Duplicate,
                format!("is already the name of {first}"),
            );
        } else {
            names.insert(name.to_owned(), field);
        }
    };
    if t.prestart.len() > MAX_PRESTART {
        c.report(
            "task.prestart",
            format!("{} steps", t.prestart.len()),
            ProblemKind::TooLong,
            format!("must have at most {MAX_PRESTART} steps"),
        );
    }
    let mut prestart = Vec::with_capacity(t.prestart.len());
    for (i, step) in t.prestart.iter().enumerate() {
        let field = format!("task.prestart[{i}]");
        if c.name(&format!("{field}.name"), &step.name, MAX_NAME_LEN) {
            unique(c, format!("{field}.name"), &step.name);
        }
        c.command(&format!("{field}.command"), &step.command);
        let timeout = c
            .timeout(
                &format!("{field}.timeout"),
                &step.timeout,
                Timeout::After(300_000_000),
                false,
                true,
            )
            .unwrap_or(Timeout::Infinity);
        let after = match &step.after {
            Some(after) => after.clone(),
            None => t
                .prestart
                .get(i.wrapping_sub(1))
                .map(|prev| vec![prev.name.clone()])
                .unwrap_or_default(),
        };
        prestart.push(PrestartStep {
            name: step.name.clone(),
            command: step.command.clone(),
            timeout,
            after,
        });
    }
    check_step_graph(c, &prestart);

    if t.sidecars.len() > MAX_SIDECARS {
        c.report(
            "task.sidecars",
            format!("{} sidecars", t.sidecars.len()),
            ProblemKind::TooLong,
            format!("must have at most {MAX_SIDECARS} sidecars"),
        );
    }
    let mut sidecars = Vec::with_capacity(t.sidecars.len());
    for (i, sidecar) in t.sidecars.iter().enumerate() {
        let field = format!("task.sidecars[{i}]");
        if c.name(&format!("{field}.name"), &sidecar.name, MAX_NAME_LEN) {
            unique(c, format!("{field}.name"), &sidecar.name);
        }
        c.command(&format!("{field}.command"), &sidecar.command);
        let restart = c.restart(
            &format!("{field}.restart"),
            sidecar.restart.as_ref().unwrap_or(&RestartSpec::default()),
            Restart::Always,
        );
        sidecars.push(Sidecar {
            name: sidecar.name.clone(),
            command: sidecar.command.clone(),
            restart,
        });
    }

    let kill = KillPolicy {
        signal: c.signal("task.kill.signal", &t.kill.signal, Signal::TERM),
        grace_period: c
            .timeout(
                "task.kill.grace_period",
                &t.kill.grace_period,
                Timeout::After(30_000_000),
                false,
                true,
            )
            .unwrap_or(Timeout::Infinity),
        final_signal: c.signal("task.kill.final_signal", &t.kill.final_signal, Signal::KILL),
        mode: match t.kill.mode.as_deref() {
            None | Some("control-group") => KillMode::ControlGroup,
            Some("mixed") => KillMode::Mixed,
            Some("process") => KillMode::Process,
            Some(other) => {
                c.report(
                    "task.kill.mode",
                    shown(other),
                    ProblemKind::Malformed,
                    "must be one of control-group, mixed, process",
                );
                KillMode::ControlGroup
            }
        },
    };
    let restart = c.restart("task.restart", &t.restart, Restart::OnFailure);

    let health_check = t.health_check.as_ref().map(|h| {
        c.command("task.health_check.command", &h.command);
        HealthCheck {
            command: h.command.clone(),
            interval_usec: c
                .span("task.health_check.interval", &h.interval, 30_000_000, false)
                .unwrap_or(1),
            timeout_usec: c
                .span("task.health_check.timeout", &h.timeout, 10_000_000, false)
                .unwrap_or(1),
            retries: c
                .ranged(
                    "task.health_check.retries",
                    Some(h.retries.unwrap_or(3)),
                    1,
                    1000,
                )
                .and_then(|n| u32::try_from(n).ok())
                .unwrap_or(1),
            start_period_usec: c
                .span("task.health_check.start_period", &h.start_period, 0, true)
                .unwrap_or(0),
        }
    });

    let logs = &t.logs;
    let rate_limit = match (&logs.rate_limit_interval, logs.rate_limit_burst) {
        (None, None) => None,
        (None, Some(burst)) => {
            c.report(
                "task.logs.rate_limit_burst",
                burst.to_string(),
                ProblemKind::Conflict,
                "needs task.logs.rate_limit_interval",
            );
            None
        }
        (Some(interval), burst) => {
            let interval = c.span(
                "task.logs.rate_limit_interval",
                &Some(interval.clone()),
                0,
                false,
            );
            let burst = c.ranged(
                "task.logs.rate_limit_burst",
                Some(burst.unwrap_or(10_000)),
                1,
                1_000_000_000,
            );
            interval.zip(burst.and_then(|b| u32::try_from(b).ok()))
        }
    };
    let identifier = c.optional_name("task.logs.identifier", &logs.identifier, MAX_NAME_LEN);
    if let Some(id) = identifier
        .as_deref()
        .filter(|id| id.contains(char::is_whitespace))
    {
        c.report(
            "task.logs.identifier",
            shown(id),
            ProblemKind::Malformed,
            "must not contain whitespace",
        );
    }

    Task {
        command: t.command.clone(),
        working_directory: t.working_directory.clone(),
        user: t.user.clone(),
        group: t.group.clone(),
        environment: t.environment.clone(),
        resources,
        prestart,
        sidecars,
        kill,
        restart,
        health_check,
        logs: LogPolicy {
            rate_limit,
            identifier,
        },
    }
}

fn validate_resources(c: &mut Checker, r: &ResourcesSpec) -> Resources {
    let cpu_quota_percent = r.cpu_quota.as_ref().and_then(|q| {
        let percent = match q {
            Quantity::Integer(cores) => cores
                .checked_mul(100)
                .filter(|p| *p > 0)
                .ok_or("must be positive"),
            Quantity::Float(cores) if cores.is_finite() && *cores > 0.0 && *cores <= 100_000.0 => {
                #[allow(clippy::cast_possible_truncation)] // bounded above
                Ok((cores * 100.0).round() as i64)
            }
            Quantity::Float(_) => Err("must be a positive number of cores"),
            Quantity::Text(t) => t
                .strip_suffix('%')
                .and_then(|p| p.trim().parse::<i64>().ok())
                .ok_or("must be a number of cores such as 1.5 or a percentage such as \"150%\""),
        };
        match percent {
            Ok(p) if (1..=10_000_000).contains(&p) => u32::try_from(p).ok(),
            Ok(_) => {
                c.report(
                    "task.resources.cpu_quota",
                    shown_quantity(q),
                    ProblemKind::OutOfRange,
                    "must be between 1% and 10000000%",
                );
                None
            }
            Err(message) => {
                c.report(
                    "task.resources.cpu_quota",
                    shown_quantity(q),
                    ProblemKind::OutOfRange,
                    message,
                );
                None
            }
        }
    });
    let memory_high = c.bytes("task.resources.memory_high", &r.memory_high);
    let memory_max = c.bytes("task.resources.memory_max", &r.memory_max);
    if let (Some(high), Some(max)) = (memory_high, memory_max)
        && high > max
    {
        c.report(
            "task.resources.memory_high",
            high.to_string(),
            ProblemKind::Conflict,
            format!("must not be above task.resources.memory_max ({max})"),
        );
    }
    Resources {
        cpu_weight: c.ranged("task.resources.cpu_weight", r.cpu_weight, 1, 10_000),
        cpu_quota_percent,
        memory_high,
        memory_max,
        tasks_max: c.ranged("task.resources.tasks_max", r.tasks_max, 1, i64::MAX),
        io_weight: c.ranged("task.resources.io_weight", r.io_weight, 1, 10_000),
    }
}

/// `after` must name other steps, and the steps must not wait for each other in a cycle.
fn check_step_graph(c: &mut Checker, steps: &[PrestartStep]) {
    let index: HashMap<&str, usize> = steps
        .iter()
        .enumerate()
        .map(|(i, s)| (s.name.as_str(), i))
        .collect();
    let mut graph = DiGraphMap::<usize, (), std::hash::RandomState>::new();
    for (i, step) in steps.iter().enumerate() {
        graph.add_node(i);
        for (j, dep) in step.after.iter().enumerate() {
            match index.get(dep.as_str()) {
                Some(&d) if d == i => c.report(
                    format!("task.prestart[{i}].after[{j}]"),
                    shown(dep),
                    ProblemKind::Cycle,
                    "a step cannot wait for itself",
                ),
                Some(&d) => {
                    graph.add_edge(d, i, ());
                }
                None => c.report(
                    format!("task.prestart[{i}].after[{j}]"),
                    shown(dep),
                    ProblemKind::UnknownReference,
                    "names no pre-start step of this task",
                ),
            }
        }
    }
    for scc in tarjan_scc(&graph).into_iter().filter(|scc| scc.len() > 1) {
        let mut members = scc;
        members.sort_unstable();
        let names: Vec<&str> = members.iter().map(|&i| steps[i].name.as_str()).collect();
        c.report(
            format!("task.prestart[{}].after", members[0]),
            shown(&names.join(" -> ")),
            ProblemKind::Cycle,
            "pre-start steps wait for each other in a cycle",
        );
    }
}
