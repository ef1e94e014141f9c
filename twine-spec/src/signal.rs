//! Signal names as systemd's `KillSignal=` understands them.

use std::fmt;

/// Linux signal names by number (x86_64), index = number.
const NAMES: [&str; 32] = [
    "",
    "SIGHUP",
    "SIGINT",
    "SIGQUIT",
    "SIGILL",
    "SIGTRAP",
    "SIGABRT",
    "SIGBUS",
    "SIGFPE",
    "SIGKILL",
    "SIGUSR1",
    "SIGSEGV",
    "SIGUSR2",
    "SIGPIPE",
    "SIGALRM",
    "SIGTERM",
    "SIGSTKFLT",
    "SIGCHLD",
    "SIGCONT",
    "SIGSTOP",
    "SIGTSTP",
    "SIGTTIN",
    "SIGTTOU",
    "SIGURG",
    "SIGXCPU",
    "SIGXFSZ",
    "SIGVTALRM",
    "SIGPROF",
    "SIGWINCH",
    "SIGIO",
    "SIGPWR",
    "SIGSYS",
];
const RTMIN: u8 = 34;
const RTMAX: u8 = 64;

/// A signal that can stop a process, by number.
///
/// Parsed from `SIGTERM`, `TERM`, `SIGRTMIN+3` or `RTMAX-1` (case-sensitive, as
/// systemd does). `SIGSTOP`, `SIGCONT` and the job-control signals are refused
/// because they cannot end a process.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Signal(u8);

impl Signal {
    /// `SIGTERM`
    pub const TERM: Signal = Signal(15);
    /// `SIGKILL`
    pub const KILL: Signal = Signal(9);

    /// Parses a signal name; `None` if it is unknown or cannot stop a process.
    pub fn parse(name: &str) -> Option<Signal> {
        let bare = name.strip_prefix("SIG").unwrap_or(name);
        let number = if let Some(offset) = bare.strip_prefix("RTMIN") {
            rt_offset(offset, RTMIN, 1)?
        } else if let Some(offset) = bare.strip_prefix("RTMAX") {
            rt_offset(offset, RTMAX, -1)?
        } else {
            let index = NAMES
                .iter()
                .position(|n| !n.is_empty() && &n[3..] == bare)?;
            u8::try_from(index).ok()?
        };
        let signal = Signal(number);
        (!signal.is_job_control()).then_some(signal)
    }

    fn is_job_control(self) -> bool {
        matches!(self.0, 17..=22) // SIGCHLD SIGCONT SIGSTOP SIGTSTP SIGTTIN SIGTTOU
    }

    /// The signal number.
    pub fn number(self) -> i32 {
        i32::from(self.0)
    }

    /// The canonical name, as systemd prints it (`SIGTERM`, `SIGRTMIN+3`).
    pub fn name(self) -> String {
        match self.0 {
            n @ 1..=31 => NAMES[usize::from(n)].to_owned(),
            RTMIN => "SIGRTMIN".to_owned(),
            n if n > RTMIN => format!("SIGRTMIN+{}", n - RTMIN),
            n => n.to_string(), // 32 and 33 belong to libc; `parse` never returns them
        }
    }
}

fn rt_offset(offset: &str, base: u8, sign: i16) -> Option<u8> {
    let n: i16 = if offset.is_empty() {
        0
    } else {
        let digits = offset.strip_prefix(if sign > 0 { '+' } else { '-' })?;
        if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) || digits.len() > 2 {
            return None;
        }
        digits.parse().ok()?
    };
    let number = i16::from(base) + sign * n;
    (i16::from(RTMIN)..=i16::from(RTMAX))
        .contains(&number)
        .then(|| u8::try_from(number).ok())?
}

impl fmt::Display for Signal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.name())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_systemd_forms() {
        assert_eq!(Signal::parse("SIGTERM"), Some(Signal::TERM));
        assert_eq!(Signal::parse("KILL"), Some(Signal::KILL));
        assert_eq!(Signal::parse("SIGRTMIN+3").map(Signal::number), Some(37));
        assert_eq!(Signal::parse("RTMAX-0").map(Signal::number), Some(64));
        assert_eq!(
            Signal::parse("SIGRTMAX-30").map(Signal::name).as_deref(),
            Some("SIGRTMIN")
        );
        for bad in [
            "SIGFOO",
            "sigterm",
            "SIGSTOP",
            "SIGRTMIN+31",
            "SIGRTMIN+",
            "",
            "SIG",
            "15",
        ] {
            assert_eq!(Signal::parse(bad), None, "{bad}");
        }
    }

    #[test]
    fn names_round_trip() {
        for n in 1..=64u8 {
            if let Some(sig) = Signal::parse(&Signal(n).name()) {
                assert_eq!(sig.0, n);
            }
        }
    }
}
