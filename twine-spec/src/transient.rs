//! The unit set as `StartTransientUnit` property lists.
//!
//! `org.freedesktop.systemd1.Manager.StartTransientUnit(s name, s mode, a(sv) properties,
//! a(sa(sv)) aux)` takes each unit as `(name, signature, value)` triples. Every
//! directive maps to the property systemd's D-Bus API names for it: spans become
//! `...USec` in microseconds, `CPUQuota=` becomes `CPUQuotaPerSecUSec`, repeated
//! `Environment=` and `ExecStart=` lines become one array, timer settings become
//! `TimersMonotonic`. D-Bus values are not specifier-expanded, so `%` is sent as
//! is; command arguments are still variable-expanded at exec time, so `$` is sent
//! as `$$`. `X-` annotations have no D-Bus form and are left out.
//!
//! systemd 252 refuses transient targets ("Unit type target does not support
//! transient units"), so the D-Bus form has no target and no `PartOf=` to it: the
//! main unit stands for the job. Start a job with one call,
//! `StartTransientUnit(units[0], "fail", units[0].properties, aux = units[1..])`:
//! systemd creates every aux unit first, then starts the main unit in one
//! transaction that pulls in the steps, sidecars and health timer in order.
//! Stopping the main unit stops the sidecars and the health timer (`BindsTo=`);
//! stop the pre-start steps too (they stay `active (exited)`), so that the next
//! start runs them again. The `transient_dbus` test proves both
//! forms give the same properties in real systemd.

use serde::Serialize;

use crate::translate::UnitSet;
use crate::unit::{Unit, ValueKind};

/// One unit as `StartTransientUnit` arguments.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct TransientUnit {
    /// The unit name.
    pub name: String,
    /// Its properties, in directive order.
    pub properties: Vec<Property>,
}

/// One `(name, variant)` entry of the `a(sv)` property array.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Property {
    /// The D-Bus property name.
    pub name: &'static str,
    /// The D-Bus signature of the variant's value.
    pub signature: &'static str,
    /// The value.
    pub value: PropertyValue,
}

/// A property value; serializes to the JSON shape of its D-Bus type.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(untagged)]
#[non_exhaustive]
pub enum PropertyValue {
    /// `s`
    String(String),
    /// `b`
    Bool(bool),
    /// `t`
    U64(u64),
    /// `u`
    U32(u32),
    /// `i`
    I32(i32),
    /// `as`
    Strings(Vec<String>),
    /// `a(sasb)`: path, argv, ignore-failure.
    Exec(Vec<(String, Vec<String>, bool)>),
    /// `a(st)`: timer base and microseconds.
    Timers(Vec<(String, u64)>),
}

impl UnitSet {
    /// The job as transient units: the main unit first, then the rest in the order of
    /// [`UnitSet::units`], without the target; see the module docs for how to start it.
    pub fn transient(&self) -> Vec<TransientUnit> {
        let units = self
            .units()
            .iter()
            .filter(|u| !u.name.as_str().ends_with(".target"));
        let (main, rest): (Vec<&Unit>, Vec<&Unit>) = units.partition(|u| u.name == *self.main());
        main.into_iter().chain(rest).map(transient_unit).collect()
    }
}

fn transient_unit(unit: &Unit) -> TransientUnit {
    let mut properties: Vec<Property> = Vec::new();
    for directive in unit.sections.iter().flat_map(|s| &s.directives) {
        if directive.key == "PartOf" {
            continue; // only ever points at the target, which has no D-Bus form
        }
        let Some((name, signature, value)) = property(directive.key, &directive.value.0) else {
            continue;
        };
        // Repeated keys accumulate into one array property.
        if let Some(existing) = properties.iter_mut().find(|p| p.name == name) {
            match (&mut existing.value, value) {
                (PropertyValue::Strings(a), PropertyValue::Strings(b)) => a.extend(b),
                (PropertyValue::Exec(a), PropertyValue::Exec(b)) => a.extend(b),
                (PropertyValue::Timers(a), PropertyValue::Timers(b)) => a.extend(b),
                (slot, value) => *slot = value,
            }
            continue;
        }
        properties.push(Property {
            name,
            signature,
            value,
        });
    }
    TransientUnit {
        name: unit.name.to_string(),
        properties,
    }
}

/// The D-Bus name, signature and value of one directive; names that do not change
/// (most of them) are the directive's own `&'static str` key.
fn property(
    key: &'static str,
    value: &ValueKind,
) -> Option<(&'static str, &'static str, PropertyValue)> {
    use PropertyValue as P;
    let string = |v: &ValueKind| match v {
        ValueKind::Keyword(k) => (*k).to_owned(),
        ValueKind::Text(t) => t.clone(),
        _ => String::new(),
    };
    let usec = |v: &ValueKind| match v {
        ValueKind::Span(u) => *u,
        ValueKind::Timeout(t) => t.usec(),
        _ => 0,
    };
    let count = |v: &ValueKind| match v {
        ValueKind::Count(n) | ValueKind::Bytes(n) => *n,
        _ => 0,
    };
    let p = match key {
        "Description" => ("Description", "s", P::String(string(value))),
        "Requires" | "Wants" | "BindsTo" | "After" | "Before" => {
            let ValueKind::Units(names) = value else {
                return None;
            };
            let name = key;
            (
                name,
                "as",
                P::Strings(names.iter().map(ToString::to_string).collect()),
            )
        }
        "StartLimitIntervalSec" => ("StartLimitIntervalUSec", "t", P::U64(usec(value))),
        "StartLimitBurst" => (
            "StartLimitBurst",
            "u",
            P::U32(u32::try_from(count(value)).ok()?),
        ),
        "Type" => ("Type", "s", P::String(string(value))),
        "RemainAfterExit" => (
            "RemainAfterExit",
            "b",
            P::Bool(matches!(value, ValueKind::Bool(true))),
        ),
        "ExecStart" => {
            let ValueKind::Exec(argv) = value else {
                return None;
            };
            let path = argv.first()?.clone();
            let argv = argv.iter().map(|w| w.replace('$', "$$")).collect();
            ("ExecStart", "a(sasb)", P::Exec(vec![(path, argv, false)]))
        }
        "TimeoutStartSec" => ("TimeoutStartUSec", "t", P::U64(usec(value))),
        "TimeoutStopSec" => ("TimeoutStopUSec", "t", P::U64(usec(value))),
        "WorkingDirectory" => ("WorkingDirectory", "s", P::String(string(value))),
        "User" => ("User", "s", P::String(string(value))),
        "Group" => ("Group", "s", P::String(string(value))),
        "Environment" => {
            let ValueKind::Environment(k, v) = value else {
                return None;
            };
            ("Environment", "as", P::Strings(vec![format!("{k}={v}")]))
        }
        "CPUWeight" => ("CPUWeight", "t", P::U64(count(value))),
        "CPUQuota" => {
            let ValueKind::Percent(p) = value else {
                return None;
            };
            ("CPUQuotaPerSecUSec", "t", P::U64(u64::from(*p) * 10_000))
        }
        "MemoryHigh" => ("MemoryHigh", "t", P::U64(count(value))),
        "MemoryMax" => ("MemoryMax", "t", P::U64(count(value))),
        "TasksMax" => ("TasksMax", "t", P::U64(count(value))),
        "IOWeight" => ("IOWeight", "t", P::U64(count(value))),
        "KillMode" => ("KillMode", "s", P::String(string(value))),
        "KillSignal" | "FinalKillSignal" => {
            let ValueKind::Signal(s) = value else {
                return None;
            };
            (key, "i", P::I32(s.number()))
        }
        "Restart" => ("Restart", "s", P::String(string(value))),
        "RestartSec" => ("RestartUSec", "t", P::U64(usec(value))),
        "StandardOutput" => ("StandardOutput", "s", P::String(string(value))),
        "StandardError" => ("StandardError", "s", P::String(string(value))),
        "SyslogIdentifier" => ("SyslogIdentifier", "s", P::String(string(value))),
        "LogRateLimitIntervalSec" => ("LogRateLimitIntervalUSec", "t", P::U64(usec(value))),
        "LogRateLimitBurst" => (
            "LogRateLimitBurst",
            "u",
            P::U32(u32::try_from(count(value)).ok()?),
        ),
        "OnActiveSec" => (
            "TimersMonotonic",
            "a(st)",
            P::Timers(vec![("OnActiveSec".to_owned(), usec(value))]),
        ),
        "OnUnitActiveSec" => (
            "TimersMonotonic",
            "a(st)",
            P::Timers(vec![("OnUnitActiveSec".to_owned(), usec(value))]),
        ),
        "AccuracySec" => ("AccuracyUSec", "t", P::U64(usec(value))),
        _ => return None,
    };
    Some(p)
}
