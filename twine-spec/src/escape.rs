//! Quoting for unit files, exactly per systemd.syntax(7) and systemd.service(5).
//!
//! systemd reads a directive in three passes, and every function here undoes
//! exactly the passes that apply to its kind of value:
//!
//! 1. the line is read: a trailing `\` joins the next line, `\n` ends it;
//! 2. `%` specifiers are resolved on the whole value (`%%` is a literal `%`);
//! 3. for command lines and `Environment=`, the value is split into words with
//!    `"`/`'` quoting and C-style escapes;
//! 4. for command lines only, `$VAR`/`${VAR}` are expanded at exec time (`$$` is a
//!    literal `$`).
//!
//! We always double-quote words, escape every control character, and double every
//! `%` (and `$` where expansion applies), so no input can end a line, start a new
//! word, name a specifier or expand a variable. The round trip is proven by property
//! tests against a port of systemd's `extract_first_word()` kept in the tests.

use std::fmt::Write as _;

/// Quotes one word of an `ExecStart=`-style command line.
///
/// The result is a single double-quoted word in which `%` is `%%`, `$` is `$$`
/// and every control character is a C escape, so systemd passes exactly `word`
/// as one argument.
pub fn exec_word(word: &str) -> String {
    let mut out = String::with_capacity(word.len() + 2);
    push_quoted(&mut out, word, true);
    out
}

/// Quotes one `NAME=value` item of `Environment=`.
///
/// `Environment=` resolves specifiers and C escapes but does not expand variables,
/// so `$` stays as it is.
pub fn environment_item(name: &str, value: &str) -> String {
    let mut out = String::with_capacity(name.len() + value.len() + 3);
    push_environment_item(&mut out, name, value);
    out
}

/// [`environment_item`], appended to `out`.
pub(crate) fn push_environment_item(out: &mut String, name: &str, value: &str) {
    out.push('"');
    push_escaped(out, name, false);
    out.push('=');
    push_escaped(out, value, false);
    out.push('"');
}

/// Escapes a value that systemd reads verbatim apart from `%` specifiers
/// (`Description=`, `User=`, `WorkingDirectory=` ...).
///
/// Such values cannot carry control characters, surrounding whitespace or a
/// trailing backslash at all; [`crate::unit::Value::text`] rejects those before
/// this is called.
pub fn specifiers(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    push_specifiers(&mut out, text);
    out
}

/// [`specifiers`], appended to `out`.
pub(crate) fn push_specifiers(out: &mut String, text: &str) {
    if text.contains('%') {
        out.push_str(&text.replace('%', "%%"));
    } else {
        out.push_str(text);
    }
}

/// [`exec_word`] (`dollar`) or a quoted word without `$` doubling, appended to `out`.
pub(crate) fn push_quoted(out: &mut String, word: &str, dollar: bool) {
    out.push('"');
    push_escaped(out, word, dollar);
    out.push('"');
}

fn push_escaped(out: &mut String, word: &str, dollar: bool) {
    // Fast path: most words need no escaping at all.
    if !word
        .bytes()
        .any(|b| b.is_ascii_control() || matches!(b, b'"' | b'\\' | b'%') || (dollar && b == b'$'))
    {
        out.push_str(word);
        return;
    }
    for c in word.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '%' => out.push_str("%%"),
            '$' if dollar => out.push_str("$$"),
            '\n' => out.push_str("\\n"),
            '\t' => out.push_str("\\t"),
            '\r' => out.push_str("\\r"),
            '\u{7}' => out.push_str("\\a"),
            '\u{8}' => out.push_str("\\b"),
            '\u{c}' => out.push_str("\\f"),
            '\u{b}' => out.push_str("\\v"),
            c if c.is_ascii_control() => {
                // NUL never gets here: validation refuses it, and `\x00` is refused by systemd.
                let _ = write!(out, "\\x{:02x}", u32::from(c));
            }
            c => out.push(c),
        }
    }
}

/// Escapes a string into one unit-name component as `systemd-escape` does.
///
/// `[A-Za-z0-9_.]` stay (a leading `.` is escaped), `/` becomes `-`, and every
/// other byte becomes `\xNN`. The mapping is injective, so distinct names never
/// collide after escaping, and `systemd-escape --unescape` reverses it.
///
/// One deliberate difference from `systemd-escape`: `:` is escaped too (`\x3a`).
/// systemd accepts it in unit names, but `systemd-analyze verify` 252 cannot load
/// a unit file whose name contains one ("Couldn't process aliases"), and we
/// verify every unit we render.
pub fn unit_name_component(name: &str) -> String {
    let mut out = String::with_capacity(name.len());
    for (i, b) in name.bytes().enumerate() {
        match b {
            b'/' => out.push('-'),
            b'.' if i == 0 => out.push_str("\\x2e"),
            b if b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.') => {
                out.push(char::from(b));
            }
            b => {
                let _ = write!(out, "\\x{b:02x}");
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exec_word_escapes_everything_systemd_interprets() {
        assert_eq!(exec_word("a b"), r#""a b""#);
        assert_eq!(exec_word("100%"), r#""100%%""#);
        assert_eq!(exec_word("$HOME"), r#""$$HOME""#);
        assert_eq!(exec_word("a\"b\\c"), r#""a\"b\\c""#);
        assert_eq!(exec_word("l1\nl2\u{1}"), r#""l1\nl2\x01""#);
        assert_eq!(exec_word(";"), r#"";""#);
        assert_eq!(exec_word(""), r#""""#);
    }

    #[test]
    fn environment_keeps_dollar() {
        assert_eq!(environment_item("A", "$x %i"), r#""A=$x %%i""#);
    }

    #[test]
    fn unit_names_match_systemd_escape() {
        // Expected values from `systemd-escape` 252.
        assert_eq!(unit_name_component("web"), "web");
        assert_eq!(unit_name_component("a b/c-d"), r"a\x20b-c\x2dd");
        assert_eq!(unit_name_component(".hidden"), r"\x2ehidden");
        assert_eq!(unit_name_component("ü@x"), r"\xc3\xbc\x40x");
        // The one difference, see above.
        assert_eq!(unit_name_component("a:b"), r"a\x3ab");
    }
}
