//! The kernel command line in the boot config: `etc/kernel/cmdline` (systemd's
//! kernel-install), else `GRUB_CMDLINE_LINUX` in `etc/default/grub`. Only the arguments a
//! change names are touched; every other argument, line and quote of the file is kept.

/// systemd kernel-install's command line file, relative to the root.
pub(crate) const KERNEL_CMDLINE: &str = "etc/kernel/cmdline";
/// GRUB's defaults file, relative to the root.
pub(crate) const GRUB_DEFAULT: &str = "etc/default/grub";
const GRUB_VAR: &str = "GRUB_CMDLINE_LINUX=";

/// A hugepage size reserved on the command line.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum HugepageSize {
    /// `hugepagesz=2M` (the x86 default size: a `hugepages=` with no size before it).
    Two,
    /// `hugepagesz=1G`.
    Giga,
}

impl HugepageSize {
    fn token(self) -> &'static str {
        match self {
            HugepageSize::Two => "2M",
            HugepageSize::Giga => "1G",
        }
    }
}

#[derive(Debug, Clone)]
enum Source {
    Kernel,
    Grub {
        lines: Vec<String>,
        line: Option<usize>,
    },
    Missing,
}

/// The boot config's command-line arguments, and how to write them back.
#[derive(Debug, Clone)]
pub(crate) struct BootConfig {
    path: &'static str,
    source: Source,
    args: Vec<String>,
}

type Problem = (String, &'static str);

impl BootConfig {
    pub(crate) fn kernel_cmdline(path: &'static str, text: &str) -> Self {
        Self {
            path,
            source: Source::Kernel,
            args: text.split_whitespace().map(str::to_owned).collect(),
        }
    }

    /// Parses a GRUB defaults file (`None`: it does not exist).
    pub(crate) fn grub(path: &'static str, text: Option<&str>) -> Result<Self, Problem> {
        let Some(text) = text else {
            return Ok(Self {
                path,
                source: Source::Missing,
                args: Vec::new(),
            });
        };
        let lines: Vec<String> = text.lines().map(str::to_owned).collect();
        // The shell's last assignment wins, so that is the one read and edited.
        let line = lines
            .iter()
            .rposition(|l| l.trim_start().starts_with(GRUB_VAR));
        let args = match line {
            Some(i) => {
                let value = &lines[i].trim_start()[GRUB_VAR.len()..];
                shell_words(value)?
            }
            None => Vec::new(),
        };
        Ok(Self {
            path,
            source: Source::Grub { lines, line },
            args,
        })
    }

    /// Parses a boot config's content again, by its path (a step's content in the journal).
    pub(crate) fn parse(path: &std::path::Path, text: &str) -> Result<Self, Problem> {
        if path == std::path::Path::new(KERNEL_CMDLINE) {
            Ok(Self::kernel_cmdline(KERNEL_CMDLINE, text))
        } else {
            Self::grub(GRUB_DEFAULT, Some(text))
        }
    }

    /// The file, relative to the root.
    pub(crate) fn path(&self) -> &'static str {
        self.path
    }

    /// The value of the last `name=value` (a bare `name`: `""`).
    pub(crate) fn arg(&self, name: &str) -> Option<String> {
        self.args
            .iter()
            .rev()
            .find_map(|a| match a.split_once('=') {
                Some((n, v)) if n == name => Some(v.to_owned()),
                None if a == name => Some(String::new()),
                _ => None,
            })
    }

    /// The count of the `hugepagesz=<size> hugepages=N` pair.
    pub(crate) fn hugepages(&self, size: HugepageSize) -> Option<String> {
        let mut current: Option<&str> = None;
        let mut found = None;
        for a in &self.args {
            if let Some(s) = a.strip_prefix("hugepagesz=") {
                current = Some(s);
            } else if let Some(n) = a.strip_prefix("hugepages=") {
                let this = current.unwrap_or(HugepageSize::Two.token());
                if this == size.token() {
                    found = Some(n.to_owned());
                }
            }
        }
        found
    }

    /// Removes every `name` / `name=...`, then appends `name=value` (`""`: bare `name`).
    pub(crate) fn set_arg(&mut self, name: &str, value: Option<&str>) {
        self.args
            .retain(|a| a != name && a.split_once('=').is_none_or(|(n, _)| n != name));
        match value {
            Some("") => self.args.push(name.to_owned()),
            Some(v) => self.args.push(format!("{name}={v}")),
            None => {}
        }
    }

    /// Replaces the `hugepagesz=<size> hugepages=N` pair (`None`: removes it).
    pub(crate) fn set_hugepages(&mut self, size: HugepageSize, count: Option<&str>) {
        let mut kept = Vec::with_capacity(self.args.len());
        let mut current: Option<String> = None;
        let mut iter = self.args.drain(..).peekable();
        while let Some(a) = iter.next() {
            if let Some(s) = a.strip_prefix("hugepagesz=") {
                if s == size.token() {
                    // Drop the size and the count that belongs to it.
                    if iter.peek().is_some_and(|n| n.starts_with("hugepages=")) {
                        iter.next();
                    }
                    current = Some(s.to_owned());
                    continue;
                }
                current = Some(s.to_owned());
            } else if a.starts_with("hugepages=") && current.is_none() && size == HugepageSize::Two
            {
                continue;
            }
            kept.push(a);
        }
        drop(iter);
        self.args = kept;
        if let Some(n) = count {
            self.args.push(format!("hugepagesz={}", size.token()));
            self.args.push(format!("hugepages={n}"));
        }
    }

    /// The file's new content.
    pub(crate) fn render(&self) -> Result<String, Problem> {
        let joined = self.args.join(" ");
        match &self.source {
            Source::Kernel => Ok(format!("{joined}\n")),
            Source::Missing => Err((joined, "has no boot config to write it to")),
            Source::Grub { lines, line } => {
                if joined.contains(['"', '\\', '$', '`']) {
                    return Err((
                        joined,
                        "has a quote, backslash, '$' or '`', which twine does not write into GRUB's shell file",
                    ));
                }
                let assignment = format!("{GRUB_VAR}\"{joined}\"");
                let mut out: Vec<String> = lines.clone();
                match line {
                    Some(i) => out[*i] = assignment,
                    None => out.push(assignment),
                }
                let mut text = out.join("\n");
                text.push('\n');
                Ok(text)
            }
        }
    }
}

/// Splits a shell-quoted assignment value into words: `"..."`, `'...'` and bare text, as
/// `sh` would, refusing expansions (`$`, backquotes), which twine cannot evaluate.
fn shell_words(value: &str) -> Result<Vec<String>, Problem> {
    let refuse = |problem| Err((value.to_owned(), problem));
    let mut chars = value.chars();
    // The assignment's value is one shell word; words inside the quotes are the arguments.
    let mut quoted = String::new();
    while let Some(c) = chars.next() {
        match c {
            '\'' => loop {
                match chars.next() {
                    Some('\'') => break,
                    Some(c) => quoted.push(c),
                    None => return refuse("has an unterminated single quote"),
                }
            },
            '"' => loop {
                match chars.next() {
                    Some('"') => break,
                    Some('\\') => match chars.next() {
                        Some(c @ ('"' | '\\' | '$' | '`')) => quoted.push(c),
                        Some('\n') => {}
                        Some(c) => {
                            quoted.push('\\');
                            quoted.push(c);
                        }
                        None => return refuse("ends in a backslash"),
                    },
                    Some('$' | '`') => return refuse("uses shell expansion"),
                    Some(c) => quoted.push(c),
                    None => return refuse("has an unterminated double quote"),
                }
            },
            '\\' => match chars.next() {
                Some(c) => quoted.push(c),
                None => return refuse("ends in a backslash"),
            },
            '$' | '`' => return refuse("uses shell expansion"),
            '#' if quoted.is_empty() => break,
            c if c.is_whitespace() => {
                // The end of the assignment: only a comment may follow.
                let rest = chars.as_str().trim_start();
                if !rest.is_empty() && !rest.starts_with('#') {
                    return refuse("has text after the value");
                }
                break;
            }
            c => quoted.push(c),
        }
    }
    Ok(quoted.split_whitespace().map(str::to_owned).collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grub_value_is_parsed_and_only_owned_args_change() {
        let text = "# comment\nGRUB_DEFAULT=0\nGRUB_CMDLINE_LINUX_DEFAULT=\"quiet\"\n\
                    GRUB_CMDLINE_LINUX='console=ttyS0 '\"isolcpus=1-3 nohz\"\n";
        let mut cfg = BootConfig::grub(GRUB_DEFAULT, Some(text)).unwrap();
        assert_eq!(cfg.arg("isolcpus").as_deref(), Some("1-3"));
        assert_eq!(cfg.arg("nohz").as_deref(), Some(""));
        assert_eq!(cfg.arg("quiet"), None);
        cfg.set_arg("isolcpus", Some("2-3"));
        cfg.set_hugepages(HugepageSize::Giga, Some("4"));
        let out = cfg.render().unwrap();
        assert_eq!(
            out,
            "# comment\nGRUB_DEFAULT=0\nGRUB_CMDLINE_LINUX_DEFAULT=\"quiet\"\n\
             GRUB_CMDLINE_LINUX=\"console=ttyS0 nohz isolcpus=2-3 hugepagesz=1G hugepages=4\"\n"
        );
        let again = BootConfig::grub(GRUB_DEFAULT, Some(&out)).unwrap();
        assert_eq!(again.hugepages(HugepageSize::Giga).as_deref(), Some("4"));
        assert_eq!(again.hugepages(HugepageSize::Two), None);
    }

    proptest::proptest! {
        /// Whatever arguments twine writes into GRUB's file read back the same, and the
        /// other lines stay as they were.
        #[test]
        fn grub_args_round_trip(args in proptest::collection::vec("[A-Za-z0-9_.=,:/-]{1,12}", 0..8)) {
            let text = "GRUB_TIMEOUT=5\nGRUB_CMDLINE_LINUX='keep me'\n";
            let mut cfg = BootConfig::grub(GRUB_DEFAULT, Some(text)).unwrap();
            for (i, a) in args.iter().enumerate() {
                cfg.set_arg(&format!("twine{i}"), Some(a));
            }
            let out = cfg.render().unwrap();
            proptest::prop_assert!(out.starts_with("GRUB_TIMEOUT=5\n"));
            let back = BootConfig::grub(GRUB_DEFAULT, Some(&out)).unwrap();
            proptest::prop_assert_eq!(back.arg("keep"), Some(String::new()));
            for (i, a) in args.iter().enumerate() {
                proptest::prop_assert_eq!(back.arg(&format!("twine{i}")), Some(a.clone()));
            }
        }
    }

    #[test]
    fn expansions_are_refused() {
        for bad in [
            "GRUB_CMDLINE_LINUX=\"$X\"\n",
            "GRUB_CMDLINE_LINUX=`x`\n",
            "GRUB_CMDLINE_LINUX=\"a\n",
        ] {
            assert!(BootConfig::grub(GRUB_DEFAULT, Some(bad)).is_err(), "{bad}");
        }
    }

    #[test]
    fn hugepage_pairs_are_replaced_whole() {
        let mut cfg = BootConfig::kernel_cmdline(
            KERNEL_CMDLINE,
            "ro hugepagesz=1G hugepages=2 hugepagesz=2M hugepages=64",
        );
        assert_eq!(cfg.hugepages(HugepageSize::Two).as_deref(), Some("64"));
        assert_eq!(cfg.hugepages(HugepageSize::Giga).as_deref(), Some("2"));
        let mut plain = BootConfig::kernel_cmdline(KERNEL_CMDLINE, "ro hugepages=64");
        assert_eq!(plain.hugepages(HugepageSize::Two).as_deref(), Some("64"));
        plain.set_hugepages(HugepageSize::Two, Some("128"));
        assert_eq!(plain.render().unwrap(), "ro hugepagesz=2M hugepages=128\n");
        cfg.set_hugepages(HugepageSize::Giga, None);
        assert_eq!(cfg.render().unwrap(), "ro hugepagesz=2M hugepages=64\n");
    }
}
