//! The INI dialect of TuneD's `tuned.conf`, as Python's `ConfigParser` reads it for TuneD
//! (`delimiters=('=')`, `inline_comment_prefixes=('#')`, case-kept option names, `strict=False`
//! so a repeated section or option merges, later wins).
//!
//! Hand-written rather than `rust-ini` or `configparser`: both also split on `:`, which TuneD
//! keys and values hold (`${f:cpulist2hex:...}`, `cpuinfo_regex=CPU part\s+:...`), and
//! neither follows ConfigParser's continuation lines and inline-comment rule. It is small,
//! never panics on input, and is property-tested.

/// One option: its name and its value (`None`: a bare name without `=`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Entry {
    pub(crate) name: String,
    pub(crate) value: Option<String>,
}

/// One section and its options, in file order (a repeated option keeps its first place and
/// its last value, as ConfigParser does).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub(crate) struct Section {
    pub(crate) name: String,
    pub(crate) entries: Vec<Entry>,
}

impl Section {
    /// Sets `name` to `value`, replacing an earlier value in place.
    pub(crate) fn set(&mut self, name: &str, value: Option<String>) {
        match self.entries.iter_mut().find(|e| e.name == name) {
            Some(e) => e.value = value,
            None => self.entries.push(Entry {
                name: name.to_owned(),
                value,
            }),
        }
    }

    /// The value of `name`, if set with a value.
    pub(crate) fn get(&self, name: &str) -> Option<&str> {
        self.entries
            .iter()
            .find(|e| e.name == name)
            .and_then(|e| e.value.as_deref())
    }

    /// Removes `name`, returning its value.
    pub(crate) fn take(&mut self, name: &str) -> Option<Option<String>> {
        let at = self.entries.iter().position(|e| e.name == name)?;
        Some(self.entries.remove(at).value)
    }
}

/// A line the parser cannot read: its number (from 1) and what is wrong.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct SyntaxError {
    pub(crate) line: usize,
    pub(crate) problem: &'static str,
}

/// Strips an inline comment: `#` preceded by whitespace (ConfigParser's rule).
fn strip_inline_comment(line: &str) -> &str {
    let mut prev_space = false;
    for (i, c) in line.char_indices() {
        if c == '#' && prev_space {
            return &line[..i];
        }
        prev_space = c.is_whitespace();
    }
    line
}

/// Parses `text` into sections in file order; a repeated section merges into the first.
pub(crate) fn parse(text: &str) -> Result<Vec<Section>, SyntaxError> {
    let mut sections: Vec<Section> = Vec::new();
    let mut current: Option<usize> = None;
    let mut last_option: Option<String> = None;
    for (n, raw) in text.lines().enumerate() {
        let line_no = n + 1;
        let trimmed = raw.trim();
        if trimmed.is_empty() || trimmed.starts_with('#') || trimmed.starts_with(';') {
            continue;
        }
        let body = strip_inline_comment(trimmed).trim_end();
        let continuation = raw.starts_with([' ', '\t']);
        if continuation
            && let (Some(s), Some(name)) = (current, last_option.as_deref())
            && let Some(e) = sections[s].entries.iter_mut().find(|e| e.name == name)
        {
            let v = e.value.get_or_insert_with(String::new);
            if !v.is_empty() {
                v.push('\n');
            }
            v.push_str(body);
            continue;
        }
        if let Some(rest) = body.strip_prefix('[') {
            let Some(name) = rest.strip_suffix(']') else {
                return Err(SyntaxError {
                    line: line_no,
                    problem: "a section header without its closing ']'",
                });
            };
            let name = name.trim();
            current = Some(match sections.iter().position(|s| s.name == name) {
                Some(i) => i,
                None => {
                    sections.push(Section {
                        name: name.to_owned(),
                        entries: Vec::new(),
                    });
                    sections.len() - 1
                }
            });
            last_option = None;
            continue;
        }
        let Some(s) = current else {
            return Err(SyntaxError {
                line: line_no,
                problem: "an option before any [section]",
            });
        };
        let (name, value) = match body.split_once('=') {
            Some((k, v)) => (k.trim(), Some(v.trim().to_owned())),
            None => (body, None),
        };
        if name.is_empty() {
            return Err(SyntaxError {
                line: line_no,
                problem: "an option without a name",
            });
        }
        sections[s].set(name, value);
        last_option = Some(name.to_owned());
    }
    Ok(sections)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn reads_tuned_syntax() {
        let text = "# c\n[main]\ninclude = a, b # why\n[sysfs]\n/sys/x/*/y = 1\n\
                    [variables]\nr=CPU part\\s+:x#y\n  more\n[main]\nsummary=s\n";
        let s = parse(text).expect("parses");
        assert_eq!(s.len(), 3);
        assert_eq!(s[0].get("include"), Some("a, b"));
        assert_eq!(s[0].get("summary"), Some("s"));
        assert_eq!(s[1].get("/sys/x/*/y"), Some("1"));
        assert_eq!(s[2].get("r"), Some("CPU part\\s+:x#y\nmore"));
    }

    #[test]
    fn refuses_options_outside_sections_and_open_headers() {
        assert_eq!(parse("a=1").map_err(|e| e.line), Err(1));
        assert_eq!(parse("[main]\n[x").map_err(|e| e.line), Err(2));
    }

    proptest! {
        #[test]
        fn never_panics(text in "(\\PC|\n|\\[|\\]|=|#| ){0,200}") {
            let _ = parse(&text);
        }

        #[test]
        fn keeps_what_it_was_given(name in "[a-z./_*]{1,12}", value in "[a-z0-9 :${}|]{0,20}") {
            let text = format!("[s]\n{name}={value}\n");
            let s = parse(&text).expect("parses");
            prop_assert_eq!(s[0].get(&name), Some(value.trim()));
        }
    }
}
