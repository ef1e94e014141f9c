//! Translation: a validated [`Job`] becomes a [`UnitSet`].
//!
//! # The units of a job
//!
//! | unit | type | relations |
//! | --- | --- | --- |
//! | `JOB.target` | target | `Wants=`+`After=` main |
//! | `JOB-pre-STEP.service` | oneshot, `RemainAfterExit=yes` | `Requires=`+`After=` the steps it waits for; `PartOf=` the target |
//! | `JOB.service` | exec | `Requires=`+`After=` every step; `Wants=` sidecars and the health timer; `PartOf=` the target |
//! | `JOB-sidecar-NAME.service` | exec | `BindsTo=` main, `Before=` main, `After=` every step; `PartOf=` the target |
//! | `JOB-health.service` / `.timer` | oneshot / timer | timer `BindsTo=`+`After=` main; `PartOf=` the target |
//!
//! Start or stop the job by starting or stopping its target: `PartOf=` carries a
//! stop or restart of the target to every unit, and the requirements pull in the
//! rest in order. The main unit alone is enough to start the job too: it pulls in
//! the steps, sidecars and health timer. That is how the D-Bus form works, because
//! systemd cannot create transient targets (see [`UnitSet::transient`]). Sidecars start before the main command and stop after
//! it, so a log shipper sees its first and last line.
//!
//! # Pre-start steps and restarts
//!
//! Steps are oneshots with `RemainAfterExit=yes`: once they succeed they stay
//! active. An automatic restart of the main unit (its `Restart=` policy) therefore
//! does **not** run them again: they prepare the job, not each process. Stopping
//! the target stops them (`PartOf=`), so every start of the job runs them again, in
//! order, before the main command; `systemctl restart JOB.target` re-runs them too.
//!
//! This is why the target only `Wants=` the main unit: systemd 252 turns an
//! automatic restart into a restart job, and a `Requires=` from the target would
//! carry it to the target and from there, through `PartOf=`, to the steps. The
//! price is that `systemctl start JOB.target` succeeds even when a step fails;
//! the failure shows on the main unit, whose start job ends with `dependency`.
//! For the same reason nothing propagates a stop from the main unit to the
//! steps (`PropagatesStopTo=` stops them as soon as the main process fails). A failed step keeps the
//! main unit from starting (its start job ends with result `dependency`). Both
//! behaviours are proven against real systemd in the crate's `exec` tests.
//!
//! # Kill policy
//!
//! The task's kill policy applies to every service of the job, so a stop sends the
//! configured signal to every process of the job (with `KillMode=control-group`),
//! then the final signal after the grace period.

use petgraph::Direction;
use petgraph::algo::toposort;
use petgraph::graph::{DiGraph, NodeIndex};
use petgraph::visit::EdgeRef;

use crate::job::{Job, KillPolicy, RestartPolicy, Task};
use crate::naming::UnitNames;
use crate::unit::{Unit, UnitKind, UnitName, UnwritableValue, Value};

/// A dependency directive between two units of a job: `from` has `Key=to`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Dependency {
    /// `Requires=`
    Requires,
    /// `Wants=`
    Wants,
    /// `BindsTo=`
    BindsTo,
    /// `PartOf=`
    PartOf,
    /// `After=`
    After,
    /// `Before=`
    Before,
}

impl Dependency {
    /// The directive name.
    pub fn key(self) -> &'static str {
        match self {
            Dependency::Requires => "Requires",
            Dependency::Wants => "Wants",
            Dependency::BindsTo => "BindsTo",
            Dependency::PartOf => "PartOf",
            Dependency::After => "After",
            Dependency::Before => "Before",
        }
    }

    const ORDER: [Dependency; 6] = [
        Dependency::Requires,
        Dependency::Wants,
        Dependency::BindsTo,
        Dependency::PartOf,
        Dependency::After,
        Dependency::Before,
    ];
}

/// The units of one job and the dependency graph between them.
#[derive(Debug, Clone)]
pub struct UnitSet {
    units: Vec<Unit>,
    graph: DiGraph<UnitName, Dependency>,
    /// Indices into `units`, in start order.
    start_order: Vec<usize>,
    target: UnitName,
    main: UnitName,
}

/// One rendered unit file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UnitFile {
    /// The unit name, which is also the file name.
    pub name: String,
    /// The file's contents.
    pub contents: String,
}

impl UnitSet {
    /// The units, target first, then steps, main, sidecars and health units.
    pub fn units(&self) -> &[Unit] {
        &self.units
    }

    /// The dependency graph: node weights are unit names (node `i` is `units()[i]`),
    /// an edge `a -> b` with weight `d` means unit `a` has `d=b`.
    pub fn graph(&self) -> &DiGraph<UnitName, Dependency> {
        &self.graph
    }

    /// The target to start or stop the whole job.
    pub fn target(&self) -> &UnitName {
        &self.target
    }

    /// The main unit; it stands for the job where there is no target (over D-Bus).
    pub fn main(&self) -> &UnitName {
        &self.main
    }

    /// The units in the order systemd starts them (by `After=`/`Before=`).
    pub fn start_order(&self) -> Vec<&UnitName> {
        self.start_order
            .iter()
            .map(|&i| &self.units[i].name)
            .collect()
    }

    /// The unit files.
    pub fn files(&self) -> Vec<UnitFile> {
        self.units
            .iter()
            .map(|u| UnitFile {
                name: u.name.to_string(),
                contents: u.render(),
            })
            .collect()
    }
}

/// A job that cannot be translated.
///
/// A [`Job`] straight from validation always translates: validation checks the
/// same rules (see [`crate::unit::Refusal`]). This error is for a job whose public
/// fields were changed afterwards.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum TranslateError {
    /// The unit model refused a value.
    #[error("{unit}: {key}=: {source}")]
    Unwritable {
        /// The unit being built.
        unit: UnitName,
        /// The directive whose value was refused.
        key: &'static str,
        /// The value and why.
        source: UnwritableValue,
    },
    /// A pre-start step waits for a step the task does not have.
    #[error("{unit}: waits for {step:?}, which is no pre-start step of the task")]
    UnknownStep {
        /// The step's unit.
        unit: UnitName,
        /// The name in its `after` list.
        step: String,
    },
    /// Pre-start steps wait for each other in a cycle, so there is no start order.
    #[error("{unit}: pre-start steps wait for each other in a cycle")]
    Cycle {
        /// A unit on the cycle.
        unit: UnitName,
    },
}

/// Appends `key=value` to `section` of `unit`, if the value's constructor accepted it.
fn set(
    unit: &mut Unit,
    section: &'static str,
    key: &'static str,
    value: Result<Value, UnwritableValue>,
) -> Result<(), TranslateError> {
    let value = value.map_err(|source| TranslateError::Unwritable {
        unit: unit.name.clone(),
        key,
        source,
    })?;
    unit.set(section, key, value);
    Ok(())
}

/// Sets `ExecStart=` to `argv`.
fn exec_start(unit: &mut Unit, argv: &[String]) -> Result<(), TranslateError> {
    set(unit, "Service", "ExecStart", Value::exec(argv.to_vec()))
}

/// Builds the units of `job`.
///
/// # Errors
///
/// A [`TranslateError`] if a value of `job` cannot be written into a unit, which
/// validation rules out; see [`TranslateError`].
pub fn translate(job: &Job) -> Result<UnitSet, TranslateError> {
    let task = &job.task;
    let names = UnitNames::new(&job.name, task);
    let mut b = Builder::default();

    let target = b.unit(
        names.target.clone(),
        UnitKind::Target,
        format!("twine job \"{}\"", job.name),
    )?;
    let steps: Vec<usize> = task
        .prestart
        .iter()
        .zip(&names.prestart)
        .map(|(step, name)| {
            let i = b.unit(
                name.clone(),
                UnitKind::Service,
                format!(
                    "twine job \"{}\" pre-start step \"{}\"",
                    job.name, step.name
                ),
            )?;
            let svc = &mut b.units[i];
            svc.set("Service", "Type", Value::keyword("oneshot"));
            svc.set("Service", "RemainAfterExit", Value::bool(true));
            exec_start(svc, &step.command)?;
            svc.set("Service", "TimeoutStartSec", Value::timeout(step.timeout));
            execution(svc, task)?;
            kill(svc, &task.kill);
            logs(svc, task, None)?;
            Ok(i)
        })
        .collect::<Result<_, TranslateError>>()?;
    let main = b.unit(
        names.main.clone(),
        UnitKind::Service,
        format!("twine job \"{}\" main command", job.name),
    )?;
    let sidecars: Vec<usize> = task
        .sidecars
        .iter()
        .zip(&names.sidecars)
        .map(|(sidecar, name)| {
            let i = b.unit(
                name.clone(),
                UnitKind::Service,
                format!("twine job \"{}\" sidecar \"{}\"", job.name, sidecar.name),
            )?;
            let svc = &mut b.units[i];
            svc.set("Service", "Type", Value::keyword("exec"));
            exec_start(svc, &sidecar.command)?;
            execution(svc, task)?;
            kill(svc, &task.kill);
            restart(svc, &sidecar.restart);
            logs(svc, task, None)?;
            Ok(i)
        })
        .collect::<Result<_, TranslateError>>()?;
    {
        let svc = &mut b.units[main];
        svc.set("Service", "Type", Value::keyword("exec"));
        exec_start(svc, &task.command)?;
        execution(svc, task)?;
        resources(svc, task);
        kill(svc, &task.kill);
        restart(svc, &task.restart);
        logs(svc, task, task.logs.identifier.as_deref())?;
    }
    let health = task
        .health_check
        .as_ref()
        .zip(names.health.as_ref())
        .map(|(check, (service_name, timer_name))| {
            let service = b.unit(
                service_name.clone(),
                UnitKind::Service,
                format!("twine job \"{}\" health check", job.name),
            )?;
            let svc = &mut b.units[service];
            svc.set("Service", "Type", Value::keyword("oneshot"));
            exec_start(svc, &check.command)?;
            svc.set(
                "Service",
                "TimeoutStartSec",
                Value::span(check.timeout_usec),
            );
            execution(svc, task)?;
            kill(svc, &task.kill);
            logs(svc, task, None)?;
            svc.set(
                "Service",
                "X-Twine-HealthRetries",
                Value::count(u64::from(check.retries)),
            );
            let timer = b.unit(
                timer_name.clone(),
                UnitKind::Timer,
                format!("twine job \"{}\" health check timer", job.name),
            )?;
            let tmr = &mut b.units[timer];
            tmr.set("Timer", "OnActiveSec", Value::span(check.start_period_usec));
            tmr.set("Timer", "OnUnitActiveSec", Value::span(check.interval_usec));
            tmr.set("Timer", "AccuracySec", Value::span(100_000));
            Ok((service, timer))
        })
        .transpose()?;

    // Relations; the [Unit] directives are rendered from these edges below.
    for (step, deps) in steps.iter().zip(&task.prestart) {
        for dep in &deps.after {
            let d = task
                .prestart
                .iter()
                .position(|s| &s.name == dep)
                .ok_or_else(|| TranslateError::UnknownStep {
                    unit: b.units[*step].name.clone(),
                    step: dep.clone(),
                })?;
            b.edge(*step, Dependency::Requires, steps[d]);
            b.edge(*step, Dependency::After, steps[d]);
        }
    }
    for &step in &steps {
        b.edge(main, Dependency::Requires, step);
        b.edge(main, Dependency::After, step);
    }
    for &wanted in sidecars.iter().chain(health.iter().map(|(_, timer)| timer)) {
        b.edge(main, Dependency::Wants, wanted);
    }
    for &sidecar in &sidecars {
        b.edge(sidecar, Dependency::BindsTo, main);
        b.edge(sidecar, Dependency::Before, main);
        for &step in &steps {
            b.edge(sidecar, Dependency::After, step);
        }
    }
    if let Some((_, timer)) = health {
        b.edge(timer, Dependency::BindsTo, main);
        b.edge(timer, Dependency::After, main);
    }
    // `Wants=`, not `Requires=`: systemd 252 turns an automatic restart of the main unit
    // into a restart job, which `Requires=` would carry to the target and, through
    // `PartOf=`, to the pre-start steps (observed in the `exec` tests).
    b.edge(target, Dependency::Wants, main);
    b.edge(target, Dependency::After, main);
    let members: Vec<usize> = (0..b.units.len())
        .filter(|&i| i != target)
        .filter(|&i| Some(i) != health.map(|(s, _)| s))
        .collect();
    for member in members {
        b.edge(member, Dependency::PartOf, target);
    }
    if let Some((service, _)) = health {
        b.edge(service, Dependency::PartOf, target);
    }

    b.finish(&names.target, &names.main)
}

#[derive(Default)]
struct Builder {
    units: Vec<Unit>,
    graph: DiGraph<UnitName, Dependency>,
}

impl Builder {
    fn unit(
        &mut self,
        name: UnitName,
        kind: UnitKind,
        description: String,
    ) -> Result<usize, TranslateError> {
        let mut unit = Unit::new(name.clone(), kind);
        set(&mut unit, "Unit", "Description", Value::text(&description))?;
        self.units.push(unit);
        self.graph.add_node(name);
        Ok(self.units.len() - 1)
    }

    fn edge(&mut self, from: usize, dependency: Dependency, to: usize) {
        self.graph
            .add_edge(NodeIndex::new(from), NodeIndex::new(to), dependency);
    }

    fn finish(mut self, target: &UnitName, main: &UnitName) -> Result<UnitSet, TranslateError> {
        let mut order = DiGraph::<(), ()>::with_capacity(self.units.len(), self.graph.edge_count());
        for _ in &self.units {
            order.add_node(());
        }
        for edge in self.graph.edge_references() {
            match edge.weight() {
                Dependency::After => order.add_edge(edge.target(), edge.source(), ()),
                Dependency::Before => order.add_edge(edge.source(), edge.target(), ()),
                _ => continue,
            };
        }
        let start_order = toposort(&order, None)
            .map_err(|cycle| TranslateError::Cycle {
                unit: self.units[cycle.node_id().index()].name.clone(),
            })?
            .into_iter()
            .map(NodeIndex::index)
            .collect();
        for (i, unit) in self.units.iter_mut().enumerate() {
            // Edges come out newest first; reverse to keep insertion order.
            let mut edges: Vec<_> = self
                .graph
                .edges_directed(NodeIndex::new(i), Direction::Outgoing)
                .collect();
            edges.reverse();
            let mut position = 1; // after Description=
            for dependency in Dependency::ORDER {
                let names: Vec<UnitName> = edges
                    .iter()
                    .filter(|e| *e.weight() == dependency)
                    .map(|e| self.graph[e.target()].clone())
                    .collect();
                if !names.is_empty() {
                    insert_unit_directive(unit, position, dependency.key(), Value::units(names));
                    position += 1;
                }
            }
        }
        Ok(UnitSet {
            units: self.units,
            graph: self.graph,
            start_order,
            target: target.clone(),
            main: main.clone(),
        })
    }
}

fn insert_unit_directive(unit: &mut Unit, position: usize, key: &'static str, value: Value) {
    let section = &mut unit.sections[0];
    section
        .directives
        .insert(position, crate::unit::Directive { key, value });
}

fn execution(unit: &mut Unit, task: &Task) -> Result<(), TranslateError> {
    if let Some(dir) = &task.working_directory {
        set(unit, "Service", "WorkingDirectory", Value::path(dir))?;
    }
    if let Some(user) = &task.user {
        set(unit, "Service", "User", Value::text(user))?;
    }
    if let Some(group) = &task.group {
        set(unit, "Service", "Group", Value::text(group))?;
    }
    for (key, value) in &task.environment {
        set(
            unit,
            "Service",
            "Environment",
            Value::environment(key, value),
        )?;
    }
    Ok(())
}

fn resources(unit: &mut Unit, task: &Task) {
    let r = &task.resources;
    if let Some(w) = r.cpu_weight {
        unit.set("Service", "CPUWeight", Value::count(w));
    }
    if let Some(p) = r.cpu_quota_percent {
        unit.set("Service", "CPUQuota", Value::percent(p));
    }
    if let Some(b) = r.memory_high {
        unit.set("Service", "MemoryHigh", Value::bytes(b));
    }
    if let Some(b) = r.memory_max {
        unit.set("Service", "MemoryMax", Value::bytes(b));
    }
    if let Some(n) = r.tasks_max {
        unit.set("Service", "TasksMax", Value::count(n));
    }
    if let Some(w) = r.io_weight {
        unit.set("Service", "IOWeight", Value::count(w));
    }
}

fn kill(unit: &mut Unit, policy: &KillPolicy) {
    unit.set("Service", "KillMode", Value::keyword(policy.mode.as_str()));
    unit.set("Service", "KillSignal", Value::signal(policy.signal));
    unit.set(
        "Service",
        "TimeoutStopSec",
        Value::timeout(policy.grace_period),
    );
    unit.set(
        "Service",
        "FinalKillSignal",
        Value::signal(policy.final_signal),
    );
}

fn restart(unit: &mut Unit, policy: &RestartPolicy) {
    unit.set("Service", "Restart", Value::keyword(policy.policy.as_str()));
    unit.set("Service", "RestartSec", Value::span(policy.delay_usec));
    // [Unit] keys; the relations are inserted before them when the set is finished.
    unit.set(
        "Unit",
        "StartLimitIntervalSec",
        Value::span(policy.interval_usec),
    );
    unit.set(
        "Unit",
        "StartLimitBurst",
        Value::count(u64::from(policy.burst)),
    );
}

fn logs(unit: &mut Unit, task: &Task, identifier: Option<&str>) -> Result<(), TranslateError> {
    unit.set("Service", "StandardOutput", Value::keyword("journal"));
    unit.set("Service", "StandardError", Value::keyword("journal"));
    let identifier = identifier.map_or_else(
        || {
            unit.name
                .as_str()
                .rsplit_once('.')
                .map_or("", |(stem, _)| stem)
                .to_owned()
        },
        str::to_owned,
    );
    set(
        unit,
        "Service",
        "SyslogIdentifier",
        Value::text(&identifier),
    )?;
    match task.logs.rate_limit {
        None => unit.set("Service", "LogRateLimitIntervalSec", Value::span(0)),
        Some((interval, burst)) => {
            unit.set("Service", "LogRateLimitIntervalSec", Value::span(interval));
            unit.set(
                "Service",
                "LogRateLimitBurst",
                Value::count(u64::from(burst)),
            );
        }
    }
    Ok(())
}
