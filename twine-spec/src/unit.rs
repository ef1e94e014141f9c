//! A systemd unit model and its writer.
//!
//! Values are typed: an untrusted string can only enter a unit as
//! [`Value::text`], [`Value::path`], [`Value::exec`] or [`Value::environment`].
//! Each constructor checks the value against what systemd can read back exactly
//! (see [`Refusal`]) and refuses it otherwise, and the writer escapes it for the
//! way systemd reads that directive; so no caller of this module, with or without
//! validation, can write a unit that means something else. Validation reports the
//! same rules, through the same functions, with field paths. The only verbatim
//! strings are [`Value::keyword`], section names and directive keys, which are
//! `&'static str`: program text, never a spec's.
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

/// A value that a [`Value`] constructor refused, and why.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{value:?} cannot be written into a unit file: {reason}")]
#[non_exhaustive]
pub struct UnwritableValue {
    /// The refused value: the text, the path, the offending word of a command
    /// line, or the `NAME=value` of an environment entry.
    pub value: String,
    /// Why systemd could not read it back as written.
    pub reason: Refusal,
}

/// Why a value cannot be written into a unit file.
///
/// These are the unit model's invariants. [`Value`]'s constructors check them, and
/// [validation](crate::validate) reports the same rules (through the same
/// functions) as problems with their field paths.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum Refusal {
    /// The value is empty where systemd needs one (an empty path).
    #[error("must not be empty")]
    Empty,
    /// A NUL byte, which no unit file can carry.
    #[error("must not contain NUL bytes")]
    Nul,
    /// A control character in a value that systemd reads verbatim.
    #[error("must not contain control characters")]
    ControlCharacter,
    /// A Unicode noncharacter (U+FDD0 to U+FDEF, or U+xFFFE and U+xFFFF in any
    /// plane). systemd refuses the whole assignment as "not UTF-8 clean", and no
    /// escape spells one, so the unit would fail to load.
    #[error(
        "must not contain Unicode noncharacters (U+FDD0..U+FDEF, U+xFFFE, U+xFFFF), which systemd refuses as not UTF-8 clean"
    )]
    Noncharacter,
    /// Leading or trailing whitespace in a value that systemd reads verbatim: it
    /// strips it, so `/srv/a ` would become `/srv/a`. Any Unicode whitespace is
    /// refused, a superset of the ASCII blanks systemd strips.
    #[error("must not start or end with whitespace (systemd strips it)")]
    SurroundingWhitespace,
    /// A trailing backslash, which would join the next line.
    #[error("must not end with a backslash (systemd would join the next line)")]
    TrailingBackslash,
    /// The value is longer than systemd reads.
    #[error("must be at most {max} bytes, is {len}")]
    TooLong {
        /// The limit.
        max: usize,
        /// The value's length.
        len: usize,
    },
    /// A path that is not absolute and normalized. This also refuses an executable
    /// starting with one of systemd's prefixes (`-`, `@`, `+`, `!`, `:`).
    #[error("must be an absolute, normalized path (no '.', '..', '//' or trailing '/')")]
    NotAbsolute,
    /// Quotes, backslashes or `$` in an executable path: systemd 252 refuses the
    /// first two ("Executable name contains special characters") and reads `$$`
    /// there literally while expanding it in `argv[0]`, so no spelling is exact.
    #[error(
        "an executable path cannot contain quotes, backslashes or $ (systemd refuses or expands them)"
    )]
    ExecutableCharacter,
    /// An empty command line: `ExecStart=` with no value resets the list.
    #[error("must name an executable (an empty command line resets ExecStart=)")]
    NoExecutable,
    /// An environment variable name outside `[A-Za-z_][A-Za-z0-9_]*` or longer
    /// than 255 bytes.
    #[error(
        "variable names are letters, digits and _, not starting with a digit, at most 255 bytes"
    )]
    EnvironmentName,
}

/// Longest path, in bytes (`PATH_MAX` minus the NUL).
pub const MAX_PATH_LEN: usize = 4095;
/// Longest command line once quoted, in bytes; systemd reads lines of at most 1 MiB.
pub const MAX_COMMAND_LINE: usize = 512 * 1024;
/// Longest environment variable name, in bytes.
pub const MAX_ENV_NAME: usize = 255;

/// A value systemd reads verbatim apart from `%` specifiers: no NUL, no control
/// characters, no surrounding whitespace, no trailing backslash.
pub(crate) fn check_text(text: &str) -> Result<(), Refusal> {
    if text.contains('\0') {
        Err(Refusal::Nul)
    } else if text.chars().any(char::is_control) {
        Err(Refusal::ControlCharacter)
    } else if has_noncharacter(text) {
        Err(Refusal::Noncharacter)
    } else if text.trim() != text {
        Err(Refusal::SurroundingWhitespace)
    } else if text.ends_with('\\') {
        Err(Refusal::TrailingBackslash)
    } else {
        Ok(())
    }
}

/// Whether `text` holds a character that systemd's `unichar_is_valid()` refuses
/// (surrogates cannot occur in a `str`).
pub(crate) fn has_noncharacter(text: &str) -> bool {
    text.chars().any(|c| {
        let c = u32::from(c);
        (0xFDD0..=0xFDEF).contains(&c) || c & 0xFFFE == 0xFFFE
    })
}

/// An absolute, normalized path that is also a valid text value.
pub(crate) fn check_path(path: &str) -> Result<(), Refusal> {
    if path.is_empty() {
        return Err(Refusal::Empty);
    }
    check_text(path)?;
    if path.len() > MAX_PATH_LEN {
        Err(Refusal::TooLong {
            max: MAX_PATH_LEN,
            len: path.len(),
        })
    } else if path == "/"
        || (path.starts_with('/')
            && path[1..]
                .split('/')
                .all(|c| !c.is_empty() && c != "." && c != ".."))
    {
        Ok(())
    } else {
        Err(Refusal::NotAbsolute)
    }
}

/// `argv[0]` of a command line: a path that systemd takes exactly as written.
fn check_executable(path: &str) -> Result<(), Refusal> {
    check_path(path)?;
    if path.contains(['"', '\'', '\\', '$']) {
        Err(Refusal::ExecutableCharacter)
    } else {
        Ok(())
    }
}

/// Every refusal of a command line, with the index of the word it concerns
/// (`None`: the command line as a whole).
pub(crate) fn check_argv(argv: &[String]) -> Vec<(Option<usize>, Refusal)> {
    let mut refusals = Vec::new();
    match argv.first() {
        None => refusals.push((None, Refusal::NoExecutable)),
        Some(exe) => {
            if let Err(refusal) = check_executable(exe) {
                refusals.push((Some(0), refusal));
            }
        }
    }
    for (i, arg) in argv.iter().enumerate().skip(1) {
        if arg.contains('\0') {
            refusals.push((Some(i), Refusal::Nul));
        } else if has_noncharacter(arg) {
            refusals.push((Some(i), Refusal::Noncharacter));
        }
    }
    let len: usize = argv.iter().map(|w| escape::exec_word(w).len() + 1).sum();
    if len > MAX_COMMAND_LINE {
        refusals.push((
            None,
            Refusal::TooLong {
                max: MAX_COMMAND_LINE,
                len,
            },
        ));
    }
    refusals
}

/// The name of an `Environment=` variable.
pub(crate) fn check_environment_name(name: &str) -> Result<(), Refusal> {
    let mut bytes = name.bytes();
    let valid = name.len() <= MAX_ENV_NAME
        && matches!(bytes.next(), Some(b) if b.is_ascii_alphabetic() || b == b'_')
        && bytes.all(|b| b.is_ascii_alphanumeric() || b == b'_');
    if valid {
        Ok(())
    } else {
        Err(Refusal::EnvironmentName)
    }
}

/// The value of an `Environment=` variable: anything but NUL and noncharacters,
/// which is quoted.
pub(crate) fn check_environment_value(value: &str) -> Result<(), Refusal> {
    if value.contains('\0') {
        Err(Refusal::Nul)
    } else if has_noncharacter(value) {
        Err(Refusal::Noncharacter)
    } else {
        Ok(())
    }
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

fn refused(value: &str) -> impl FnOnce(Refusal) -> UnwritableValue {
    move |reason| UnwritableValue {
        value: value.to_owned(),
        reason,
    }
}

impl Value {
    /// A fixed word chosen by the program, written verbatim.
    pub fn keyword(word: &'static str) -> Value {
        Value(ValueKind::Keyword(word))
    }

    /// Free text that systemd reads verbatim apart from `%` specifiers
    /// (`Description=`, `User=`, `SyslogIdentifier=` ...).
    ///
    /// # Errors
    ///
    /// Refuses NUL and control characters, surrounding whitespace (systemd strips
    /// it) and a trailing backslash (systemd would join the next line).
    pub fn text(text: &str) -> Result<Value, UnwritableValue> {
        check_text(text).map_err(refused(text))?;
        Ok(Value(ValueKind::Text(text.to_owned())))
    }

    /// An absolute path, as in `WorkingDirectory=`.
    ///
    /// # Errors
    ///
    /// The refusals of [`Value::text`], and a path that is empty, longer than
    /// [`MAX_PATH_LEN`], relative, or not normalized (`.`, `..`, `//`, trailing `/`).
    pub fn path(path: &str) -> Result<Value, UnwritableValue> {
        check_path(path).map_err(refused(path))?;
        Ok(Value(ValueKind::Text(path.to_owned())))
    }

    /// A command line: `argv[0]` is the absolute executable, the rest its arguments.
    ///
    /// # Errors
    ///
    /// Refuses an empty argv (it would reset `ExecStart=`), an `argv[0]` that
    /// [`Value::path`] refuses or that holds quotes, backslashes or `$` (so none of
    /// systemd's prefixes `-@+!:` and no variable can appear there), a NUL in any
    /// argument, and a line longer than [`MAX_COMMAND_LINE`] once quoted.
    pub fn exec(argv: Vec<String>) -> Result<Value, UnwritableValue> {
        if let Some((word, reason)) = check_argv(&argv).into_iter().next() {
            let value = word.map_or_else(|| argv.join(" "), |i| argv[i].clone());
            return Err(UnwritableValue { value, reason });
        }
        Ok(Value(ValueKind::Exec(argv)))
    }

    /// One `NAME=value` item of `Environment=`.
    ///
    /// # Errors
    ///
    /// Refuses a name outside `[A-Za-z_][A-Za-z0-9_]*` (or longer than
    /// [`MAX_ENV_NAME`]) and a NUL in the value.
    pub fn environment(name: &str, value: &str) -> Result<Value, UnwritableValue> {
        check_environment_name(name)
            .and_then(|()| check_environment_value(value))
            .map_err(refused(&format!("{name}={value}")))?;
        Ok(Value(ValueKind::Environment(
            name.to_owned(),
            value.to_owned(),
        )))
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

#[cfg(test)]
mod tests {
    use super::*;

    fn refusal<T: fmt::Debug>(result: Result<T, UnwritableValue>) -> Refusal {
        result.expect_err("must be refused").reason
    }

    fn argv(words: &[&str]) -> Vec<String> {
        words.iter().map(|w| (*w).to_owned()).collect()
    }

    #[test]
    fn text_refuses_what_systemd_would_not_read_back() {
        assert_eq!(refusal(Value::text("a\0b")), Refusal::Nul);
        assert_eq!(refusal(Value::text("a\nb")), Refusal::ControlCharacter);
        assert_eq!(refusal(Value::text("a\u{7f}")), Refusal::ControlCharacter);
        for blank in [" a", "a ", "\u{a0}a", "a\u{2003}"] {
            assert_eq!(
                refusal(Value::text(blank)),
                Refusal::SurroundingWhitespace,
                "{blank:?}"
            );
        }
        assert_eq!(refusal(Value::text("a\\")), Refusal::TrailingBackslash);
        for fine in ["", "a b", "100% $HOME \"q\" 'a' \\ ;", "ü😀"] {
            assert!(Value::text(fine).is_ok(), "{fine:?}");
        }
    }

    /// Regression (issue 7): `WorkingDirectory=/ ` is read by systemd as `/`.
    #[test]
    fn path_refuses_surrounding_whitespace() {
        for path in ["/ ", " /", "/srv/a ", "/srv/a\t", " /srv/a"] {
            let refused = refusal(Value::path(path));
            assert!(
                matches!(
                    refused,
                    Refusal::SurroundingWhitespace | Refusal::ControlCharacter
                ),
                "{path:?}: {refused:?}"
            );
        }
        assert!(Value::path("/srv/a b").is_ok());
    }

    #[test]
    fn path_refuses_relative_unnormalized_empty_and_long_paths() {
        assert_eq!(refusal(Value::path("")), Refusal::Empty);
        for path in ["srv", "./srv", "/srv/", "/srv//a", "/srv/./a", "/srv/../a"] {
            assert_eq!(refusal(Value::path(path)), Refusal::NotAbsolute, "{path}");
        }
        let long = format!("/{}", "a".repeat(MAX_PATH_LEN));
        assert_eq!(
            refusal(Value::path(&long)),
            Refusal::TooLong {
                max: MAX_PATH_LEN,
                len: MAX_PATH_LEN + 1
            }
        );
        assert_eq!(refusal(Value::path("/srv/a\\")), Refusal::TrailingBackslash);
        assert!(Value::path("/").is_ok());
    }

    /// Regression (issue 7): `Value::exec` accepted an empty argv, which renders
    /// `ExecStart=` (a reset), and any `argv[0]`.
    #[test]
    fn exec_refuses_what_would_change_the_command() {
        let empty = Value::exec(Vec::new()).expect_err("empty argv");
        assert_eq!(empty.reason, Refusal::NoExecutable);
        assert_eq!(empty.value, "");
        // systemd's prefixes, which would change how the command runs.
        for exe in [
            "-/bin/true",
            "@/bin/true",
            "+/bin/true",
            "!/bin/true",
            "!!/bin/true",
            ":/bin/true",
        ] {
            let refused = Value::exec(argv(&[exe, "x"])).expect_err(exe);
            assert_eq!(refused.reason, Refusal::NotAbsolute, "{exe}");
            assert_eq!(refused.value, exe);
        }
        for exe in ["/bin/$x", "/bin/${X}", "/bin/a\"b", "/bin/a'b", "/bin/a\\b"] {
            assert_eq!(
                refusal(Value::exec(argv(&[exe]))),
                Refusal::ExecutableCharacter,
                "{exe}"
            );
        }
        assert_eq!(
            refusal(Value::exec(argv(&["/bin/true "]))),
            Refusal::SurroundingWhitespace
        );
        assert_eq!(
            refusal(Value::exec(argv(&["bin/true"]))),
            Refusal::NotAbsolute
        );
        assert_eq!(refusal(Value::exec(argv(&[""]))), Refusal::Empty);
        let nul = Value::exec(argv(&["/bin/true", "ok", "a\0b"])).expect_err("NUL");
        assert_eq!((nul.reason, nul.value.as_str()), (Refusal::Nul, "a\0b"));
        let long = vec!["/bin/true".to_owned(), "a".repeat(MAX_COMMAND_LINE)];
        assert!(matches!(
            refusal(Value::exec(long)),
            Refusal::TooLong {
                max: MAX_COMMAND_LINE,
                ..
            }
        ));
        // Arguments may hold anything else: they are quoted.
        let fine = argv(&["/bin/true", "", "-x", " a ", "$HOME", "%n", "a\\", "\n"]);
        assert_eq!(Value::exec(fine.clone()).expect("quoted").meaning(), fine);
    }

    /// Regression (issue 7): `Value::environment` accepted any name.
    #[test]
    fn environment_refuses_bad_names_and_nul() {
        let long = "A".repeat(MAX_ENV_NAME + 1);
        for name in ["", "1A", "A-B", "A B", "A=B", "Ä", "A\n", long.as_str()] {
            assert_eq!(
                refusal(Value::environment(name, "v")),
                Refusal::EnvironmentName,
                "{name:?}"
            );
        }
        assert_eq!(refusal(Value::environment("A", "a\0b")), Refusal::Nul);
        assert!(Value::environment("_A1", " $x %n \n\"").is_ok());
        assert!(Value::environment(&"A".repeat(MAX_ENV_NAME), "").is_ok());
    }

    /// Regression: systemd 252 refused an `ExecStart=` holding U+FFFF as "not
    /// UTF-8 clean" and the unit failed to load; found by the randomized argv test.
    #[test]
    fn noncharacters_are_refused_everywhere_systemd_refuses_them() {
        // systemd's unichar_is_valid(): U+FDD0..U+FDEF and U+xFFFE/U+xFFFF of every plane.
        let bad = [
            '\u{fdd0}',
            '\u{fdef}',
            '\u{fffe}',
            '\u{ffff}',
            '\u{1fffe}',
            '\u{10ffff}',
        ];
        for c in bad {
            let word = format!("a{c}b");
            assert_eq!(refusal(Value::text(&word)), Refusal::Noncharacter, "{c:?}");
            let refused = Value::exec(argv(&["/bin/true", "ok", &word])).expect_err("exec");
            assert_eq!(
                (refused.reason, refused.value),
                (Refusal::Noncharacter, word.clone())
            );
            assert_eq!(
                refusal(Value::environment("A", &word)),
                Refusal::Noncharacter
            );
        }
        for c in [
            '\u{fdcf}',
            '\u{fdf0}',
            '\u{fffd}',
            '\u{10000}',
            '\u{10fffd}',
        ] {
            let word = format!("a{c}b");
            assert!(Value::text(&word).is_ok(), "{c:?}");
            assert!(Value::exec(argv(&["/bin/true", &word])).is_ok(), "{c:?}");
        }
    }
}
