//! A port of the parts of systemd 252 that read what twine-spec writes:
//! `read_line` with continuation lines (`conf-parser.c`), `%` specifier
//! resolution (`specifier.c`), `extract_first_word()` with
//! `EXTRACT_UNQUOTE|EXTRACT_CUNESCAPE|EXTRACT_UNESCAPE_SEPARATORS` and
//! `cunescape_one()` (`extract-word.c`, `escape.c`), and `$$` handling of
//! `replace_env_argv()` (`env-util.c`). Ported from the C semantics, kept
//! deliberately small; used to prove round trips, never to produce units.

/// One `Key=value` line as systemd sees it: section, key, raw value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    pub section: String,
    pub key: String,
    pub value: String,
}

const WHITESPACE: &[char] = &[' ', '\t', '\n', '\r'];

/// Reads a unit file as `config_parse()` does.
pub fn read_unit(text: &str) -> Result<Vec<Entry>, String> {
    let mut entries = Vec::new();
    let mut section: Option<String> = None;
    let mut continuation: Option<String> = None;
    for raw in text.split('\n') {
        let line = raw.trim_matches(WHITESPACE);
        if continuation.is_some() && (line.starts_with('#') || line.starts_with(';')) {
            continue; // comments inside a continuation are dropped
        }
        let mut joined = match continuation.take() {
            Some(mut prefix) => {
                prefix.push_str(line);
                prefix
            }
            None => {
                if line.is_empty() || line.starts_with('#') || line.starts_with(';') {
                    continue;
                }
                line.to_owned()
            }
        };
        if joined.ends_with('\\') {
            joined.pop();
            joined.push(' ');
            continuation = Some(joined);
            continue;
        }
        let line = joined.trim_matches(WHITESPACE);
        if let Some(name) = line.strip_prefix('[') {
            let name = name
                .strip_suffix(']')
                .ok_or_else(|| format!("bad section header {line:?}"))?;
            section = Some(name.to_owned());
            continue;
        }
        let (key, value) = line
            .split_once('=')
            .ok_or_else(|| format!("missing '=' in {line:?}"))?;
        let section = section
            .clone()
            .ok_or_else(|| format!("assignment outside a section: {line:?}"))?;
        entries.push(Entry {
            section,
            key: key.trim_matches(WHITESPACE).to_owned(),
            value: value.trim_matches(WHITESPACE).to_owned(),
        });
    }
    if continuation.is_some() {
        return Err("file ends inside a continuation line".to_owned());
    }
    Ok(entries)
}

/// Resolves `%%`; any other specifier is an error here, because twine-spec never
/// emits one: seeing one means a spec string injected it.
pub fn resolve_specifiers(value: &str) -> Result<String, String> {
    let mut out = String::with_capacity(value.len());
    let mut chars = value.chars();
    while let Some(c) = chars.next() {
        if c == '%' {
            match chars.next() {
                Some('%') => out.push('%'),
                other => {
                    return Err(format!(
                        "specifier %{} in {value:?}",
                        other.map(String::from).unwrap_or_default()
                    ));
                }
            }
        } else {
            out.push(c);
        }
    }
    Ok(out)
}

/// Splits a value into words as `extract_first_word(UNQUOTE|CUNESCAPE|UNESCAPE_SEPARATORS)` does.
pub fn split_words(value: &str) -> Result<Vec<String>, String> {
    let chars: Vec<char> = value.chars().collect();
    let mut i = 0;
    let mut words = Vec::new();
    loop {
        while i < chars.len() && WHITESPACE.contains(&chars[i]) {
            i += 1;
        }
        if i >= chars.len() {
            return Ok(words);
        }
        let mut word = String::new();
        let mut quote: Option<char> = None;
        while i < chars.len() {
            let c = chars[i];
            if c == '\\' {
                i += 1;
                let Some(&next) = chars.get(i) else {
                    return Err("trailing backslash".to_owned());
                };
                if quote.is_none() && WHITESPACE.contains(&next) {
                    word.push(next);
                    i += 1;
                    continue;
                }
                let (unescaped, used) = cunescape_one(&chars[i..])?;
                word.push(unescaped);
                i += used;
                continue;
            }
            match quote {
                Some(q) if c == q => quote = None,
                Some(_) => word.push(c),
                None if c == '"' || c == '\'' => quote = Some(c),
                None if WHITESPACE.contains(&c) => break,
                None => word.push(c),
            }
            i += 1;
        }
        if quote.is_some() {
            return Err(format!("unbalanced quoting in {value:?}"));
        }
        words.push(word);
    }
}

/// One C escape after the backslash; returns the character and how many chars it used.
fn cunescape_one(s: &[char]) -> Result<(char, usize), String> {
    let hex = |digits: &[char]| -> Result<u32, String> {
        let text: String = digits.iter().collect();
        u32::from_str_radix(&text, 16).map_err(|_| format!("bad hex escape \\{text}"))
    };
    let c = s[0];
    let simple = match c {
        'a' => Some('\u{7}'),
        'b' => Some('\u{8}'),
        'f' => Some('\u{c}'),
        'n' => Some('\n'),
        'r' => Some('\r'),
        't' => Some('\t'),
        'v' => Some('\u{b}'),
        '\\' => Some('\\'),
        '"' => Some('"'),
        '\'' => Some('\''),
        's' => Some(' '),
        _ => None,
    };
    if let Some(ch) = simple {
        return Ok((ch, 1));
    }
    let (code, used) = match c {
        'x' if s.len() >= 3 => (hex(&s[1..3])?, 3),
        'u' if s.len() >= 5 => (hex(&s[1..5])?, 5),
        'U' if s.len() >= 9 => (hex(&s[1..9])?, 9),
        '0'..='7' if s.len() >= 3 => {
            let text: String = s[..3].iter().collect();
            (
                u32::from_str_radix(&text, 8).map_err(|_| format!("bad octal escape \\{text}"))?,
                3,
            )
        }
        _ => return Err(format!("unknown escape \\{c}")),
    };
    if code == 0 {
        return Err("\\0 is refused".to_owned());
    }
    // systemd appends a byte for \x and octal escapes; every byte twine-spec escapes is ASCII.
    char::from_u32(code)
        .map(|ch| (ch, used))
        .ok_or_else(|| format!("bad code point {code:#x}"))
}

/// Undoes `$$` as `replace_env_argv()` does; any other `$` would expand a variable,
/// which twine-spec never asks for, so it is an error here.
pub fn unescape_dollars(word: &str) -> Result<String, String> {
    let mut out = String::with_capacity(word.len());
    let mut chars = word.chars();
    while let Some(c) = chars.next() {
        if c == '$' {
            match chars.next() {
                Some('$') => out.push('$'),
                other => {
                    return Err(format!(
                        "variable expansion ${} in {word:?}",
                        other.map(String::from).unwrap_or_default()
                    ));
                }
            }
        } else {
            out.push(c);
        }
    }
    Ok(out)
}

/// An `ExecStart=` value as the argv systemd executes.
pub fn exec_argv(value: &str) -> Result<Vec<String>, String> {
    let resolved = resolve_specifiers(value)?;
    // config_parse_exec() looks for a bare `;` (a command separator) or `\;` before
    // unquoting each word; either would change the command, so neither may appear.
    let chars: Vec<char> = resolved.chars().collect();
    let mut quote: Option<char> = None;
    let mut at_word_start = true;
    let mut i = 0;
    while i < chars.len() {
        let c = chars[i];
        let ends_word = |j: usize| chars.get(j).is_none_or(|c| WHITESPACE.contains(c));
        if quote.is_none()
            && at_word_start
            && ((c == ';' && ends_word(i + 1))
                || (c == '\\' && chars.get(i + 1) == Some(&';') && ends_word(i + 2)))
        {
            return Err(format!("bare command separator in {value:?}"));
        }
        at_word_start = false;
        match (quote, c) {
            (_, '\\') => i += 1,
            (Some(q), c) if c == q => quote = None,
            (None, '"' | '\'') => quote = Some(c),
            (None, c) if WHITESPACE.contains(&c) => at_word_start = true,
            _ => {}
        }
        i += 1;
    }
    split_words(&resolved)?
        .iter()
        .map(|w| unescape_dollars(w))
        .collect()
}
