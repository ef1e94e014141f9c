//! A systemd unit model and its writer.
//!
//! Values are typed: an untrusted string can only enter a unit as
//! [`Value::text`], [`Value::path`], [`Value::exec`] or [`Value::environment`],
//! each escaped by the writer for the way systemd reads that directive. The only
//! verbatim value is [`Value::keyword`], which takes a `&'static str`, so it can
//! never come from a spec.
//!
//! No crate fits here: generic INI writers know neither repeated keys nor
//! systemd's quoting, continuation and specifier rules.

use std::fmt;

use crate::escape;
use crate::signal::Signal;
use crate::timespan::{Timeout, format_span};

/// The kind of a unit, which is also its file-name suffix.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
#[non_exhaustive]
pub enum UnitKind {
    /// `.service`
    Service,
    /// `.target`
    Target,
    /// `.timer`
    Timer,
}

impl UnitKind {
    /// The file-name suffix, without the dot.
    pub fn suffix(self) -> &'static str {
        match self {
            UnitKind::Service => "service",
            UnitKind::Target => "target",
            UnitKind::Timer => "timer",
        }
    }

    /// The type-specific section (`[Service]`, `[Timer]`), if any.
    pub fn section(self) -> Option<&'static str> {
        match self {
            UnitKind::Service => Some("Service"),
            UnitKind::Timer => Some("Timer"),
            UnitKind::Target => None,
        }
    }
}

/// A full unit name such as `web-pre-fetch.service`.
///
/// Built from components escaped as `systemd-escape` does, so it only ever holds
/// `[A-Za-z0-9_.\-\\]`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct UnitName(String);

impl UnitName {
    /// Joins escaped `parts` with `-` and appends the suffix of `kind`.
    pub fn new(parts: &[&str], kind: UnitKind) -> UnitName {
        let mut name = parts
            .iter()
            .map(|p| escape::unit_name_component(p))
            .collect::<Vec<_>>()
            .join("-");
        name.push('.');
        name.push_str(kind.suffix());
        UnitName(name)
    }

    /// The name as systemd sees it.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for UnitName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// A directive value that was refused by [`Value::text`] or [`Value::path`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{value:?} cannot be written into a unit file: {reason}")]
pub struct UnwritableValue {
    /// The refused value.
    pub value: String,
    /// Why systemd could not read it back as written.
    pub reason: &'static str,
}

/// A typed directive value; see the module docs for the safety argument.
#[derive(Debug, Clone, PartialEq)]
pub struct Value(pub(crate) ValueKind);

#[derive(Debug, Clone, PartialEq)]
pub(crate) enum ValueKind {
    Keyword(&'static str),
    Text(String),
    Exec(Vec<String>),
    Environment(String, String),
    Units(Vec<UnitName>),
    Bool(bool),
    Count(u64),
    Bytes(u64),
    Percent(u32),
    Span(u64),
    Timeout(Timeout),
    Signal(Signal),
}

impl Value {
    /// A fixed word chosen by the program, written verbatim.
    pub fn keyword(word: &'static str) -> Value {
        Value(ValueKind::Keyword(word))
    }

    /// Free text that systemd reads verbatim apart from `%` specifiers.
    ///
    /// Refuses control characters, surrounding whitespace (systemd strips it) and a
    /// trailing backslash (systemd would join the next line).
    pub fn text(text: &str) -> Result<Value, UnwritableValue> {
        let reason = if text.chars().any(char::is_control) {
            Some("control characters cannot be escaped here")
        } else if text.trim() != text {
            Some("systemd strips leading and trailing whitespace")
        } else if text.ends_with('\\') {
            Some("a trailing backslash would continue the line")
        } else {
            None
        };
        match reason {
            Some(reason) => Err(UnwritableValue {
                value: text.to_owned(),
                reason,
            }),
            None => Ok(Value(ValueKind::Text(text.to_owned()))),
        }
    }

    /// An absolute path, as in `WorkingDirectory=`; the same rules as [`Value::text`].
    pub fn path(path: &str) -> Result<Value, UnwritableValue> {
        if !path.starts_with('/') {
            return Err(UnwritableValue {
                value: path.to_owned(),
                reason: "the path must be absolute",
            });
        }
        Value::text(path)
    }

    /// A command line: `argv[0]` is the absolute executable, the rest its arguments.
    pub fn exec(argv: Vec<String>) -> Value {
        Value(ValueKind::Exec(argv))
    }

    /// One `NAME=value` item of `Environment=`.
    pub fn environment(name: &str, value: &str) -> Value {
        Value(ValueKind::Environment(name.to_owned(), value.to_owned()))
    }

    /// A space-separated list of unit names (`Requires=`, `After=` ...).
    pub fn units(names: Vec<UnitName>) -> Value {
        Value(ValueKind::Units(names))
    }

    /// `yes` or `no`.
    pub fn bool(value: bool) -> Value {
        Value(ValueKind::Bool(value))
    }

    /// A plain count.
    pub fn count(value: u64) -> Value {
        Value(ValueKind::Count(value))
    }

    /// A size in bytes.
    pub fn bytes(value: u64) -> Value {
        Value(ValueKind::Bytes(value))
    }

    /// A percentage such as `CPUQuota=150%`.
    pub fn percent(value: u32) -> Value {
        Value(ValueKind::Percent(value))
    }

    /// A time span in microseconds.
    pub fn span(usec: u64) -> Value {
        Value(ValueKind::Span(usec))
    }

    /// A time span that may be `infinity`.
    pub fn timeout(timeout: Timeout) -> Value {
        Value(ValueKind::Timeout(timeout))
    }

    /// A signal, written by name.
    pub fn signal(signal: Signal) -> Value {
        Value(ValueKind::Signal(signal))
    }

    /// What systemd reads back from the written value: the argv of a command, the
    /// `NAME=value` item of an environment entry, the text itself, the unit names,
    /// or the single word of a number or keyword. Tests compare this with what a
    /// port of systemd's parser makes of [`Value::render`].
    pub fn meaning(&self) -> Vec<String> {
        match &self.0 {
            ValueKind::Text(text) => vec![text.clone()],
            ValueKind::Exec(argv) => argv.clone(),
            ValueKind::Environment(name, value) => vec![format!("{name}={value}")],
            ValueKind::Units(names) => names.iter().map(ToString::to_string).collect(),
            _ => vec![self.render()],
        }
    }

    /// The value as it is written after `Key=`.
    pub fn render(&self) -> String {
        let mut out = String::new();
        self.render_into(&mut out);
        out
    }

    /// [`Value::render`], appended to `out`.
    pub fn render_into(&self, out: &mut String) {
        use std::fmt::Write as _;
        match &self.0 {
            ValueKind::Keyword(word) => out.push_str(word),
            ValueKind::Text(text) => escape::push_specifiers(out, text),
            ValueKind::Exec(argv) => {
                for (i, word) in argv.iter().enumerate() {
                    if i > 0 {
                        out.push(' ');
                    }
                    escape::push_quoted(out, word, true);
                }
            }
            ValueKind::Environment(name, value) => escape::push_environment_item(out, name, value),
            ValueKind::Units(names) => {
                for (i, name) in names.iter().enumerate() {
                    if i > 0 {
                        out.push(' ');
                    }
                    out.push_str(name.as_str());
                }
            }
            ValueKind::Bool(b) => out.push_str(if *b { "yes" } else { "no" }),
            ValueKind::Count(n) | ValueKind::Bytes(n) => {
                let _ = write!(out, "{n}");
            }
            ValueKind::Percent(p) => {
                let _ = write!(out, "{p}%");
            }
            ValueKind::Span(usec) | ValueKind::Timeout(Timeout::After(usec)) => {
                out.push_str(&format_span(*usec))
            }
            ValueKind::Timeout(Timeout::Infinity) => out.push_str("infinity"),
            ValueKind::Signal(signal) => out.push_str(&signal.name()),
        }
    }
}

/// One `Key=value` line.
#[derive(Debug, Clone, PartialEq)]
pub struct Directive {
    /// The directive name, chosen by the program.
    pub key: &'static str,
    /// Its value.
    pub value: Value,
}

/// A `[Section]` with its directives in order; keys may repeat.
#[derive(Debug, Clone, PartialEq)]
pub struct Section {
    /// The section name without brackets.
    pub name: &'static str,
    /// The directives, written in this order.
    pub directives: Vec<Directive>,
}

/// A unit: its name and its sections, written in order.
#[derive(Debug, Clone, PartialEq)]
pub struct Unit {
    /// The unit's name.
    pub name: UnitName,
    /// Its sections; empty sections are not written.
    pub sections: Vec<Section>,
}

impl Unit {
    /// An empty unit with a `[Unit]` section and, where the kind has one, its own section.
    pub fn new(name: UnitName, kind: UnitKind) -> Unit {
        let mut sections = vec![Section {
            name: "Unit",
            directives: Vec::new(),
        }];
        if let Some(section) = kind.section() {
            sections.push(Section {
                name: section,
                directives: Vec::new(),
            });
        }
        Unit { name, sections }
    }

    /// Appends `key=value` to `section`, creating the section at the end if needed.
    pub fn set(&mut self, section: &'static str, key: &'static str, value: Value) {
        let index = match self.sections.iter().position(|s| s.name == section) {
            Some(index) => index,
            None => {
                self.sections.push(Section {
                    name: section,
                    directives: Vec::new(),
                });
                self.sections.len() - 1
            }
        };
        self.sections[index]
            .directives
            .push(Directive { key, value });
    }

    /// All values of `key` in `section`, in order.
    pub fn values<'a>(&'a self, section: &'a str, key: &'a str) -> impl Iterator<Item = &'a Value> {
        self.sections
            .iter()
            .filter(move |s| s.name == section)
            .flat_map(|s| s.directives.iter())
            .filter(move |d| d.key == key)
            .map(|d| &d.value)
    }

    /// The unit file's contents.
    pub fn render(&self) -> String {
        let mut out = String::with_capacity(1024);
        out.push_str("# Generated by twine-spec; changes are overwritten.\n");
        for section in self.sections.iter().filter(|s| !s.directives.is_empty()) {
            out.push('\n');
            out.push('[');
            out.push_str(section.name);
            out.push_str("]\n");
            for directive in &section.directives {
                out.push_str(directive.key);
                out.push('=');
                directive.value.render_into(&mut out);
                out.push('\n');
            }
        }
        out
    }
}
