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
/// systemd does). Signals whose default action leaves the process running are
/// refused, because a stop sent with one would do nothing until the grace period
/// ran out: `SIGCHLD`, `SIGCONT`, `SIGSTOP` and the other job-control signals,
/// `SIGURG` and `SIGWINCH` (all ignored or stopping by default, signal(7)).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Signal(u8);

impl Signal {
    /// `SIGTERM`
    pub const TERM: Signal = Signal(15);
    /// `SIGKILL`
    pub const KILL: Signal = Signal(9);

    /// Parses a signal name.
    ///
    /// # Errors
    ///
    /// [`SignalError::Unknown`] for a name systemd does not know, and
    /// [`SignalError::DoesNotEnd`] for a signal whose default action does not end a
    /// process.
    pub fn parse(name: &str) -> Result<Signal, SignalError> {
        let unknown = || SignalError::Unknown {
            name: name.to_owned(),
        };
        let bare = name.strip_prefix("SIG").unwrap_or(name);
        let number = if let Some(offset) = bare.strip_prefix("RTMIN") {
            rt_offset(offset, RTMIN, 1).ok_or_else(unknown)?
        } else if let Some(offset) = bare.strip_prefix("RTMAX") {
            rt_offset(offset, RTMAX, -1).ok_or_else(unknown)?
        } else {
            NAMES
                .iter()
                .position(|n| !n.is_empty() && &n[3..] == bare)
                .and_then(|index| u8::try_from(index).ok())
                .ok_or_else(unknown)?
        };
        let signal = Signal(number);
        if signal.ends_a_process() {
            Ok(signal)
        } else {
            Err(SignalError::DoesNotEnd { signal })
        }
    }

    /// Whether the default action of the signal ends the process (signal(7)).
    fn ends_a_process(self) -> bool {
        // SIGCHLD SIGCONT SIGSTOP SIGTSTP SIGTTIN SIGTTOU, SIGURG, SIGWINCH
        !matches!(self.0, 17..=23 | 28)
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

/// A signal name that [`Signal::parse`] refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum SignalError {
    /// systemd knows no signal of that name.
    #[error("{name:?} is not a signal name")]
    Unknown {
        /// The name as given.
        name: String,
    },
    /// The signal's default action does not end a process, so a stop would wait out
    /// the whole grace period.
    #[error("{signal} does not end a process by default")]
    DoesNotEnd {
        /// The refused signal.
        signal: Signal,
    },
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
        assert_eq!(Signal::parse("SIGTERM"), Ok(Signal::TERM));
        assert_eq!(Signal::parse("KILL"), Ok(Signal::KILL));
        assert_eq!(Signal::parse("SIGRTMIN+3").map(Signal::number), Ok(37));
        assert_eq!(Signal::parse("RTMAX-0").map(Signal::number), Ok(64));
        assert_eq!(
            Signal::parse("SIGRTMAX-30").map(Signal::name).as_deref(),
            Ok("SIGRTMIN")
        );
        for bad in [
            "SIGFOO",
            "sigterm",
            "SIGRTMIN+31",
            "SIGRTMIN+",
            "",
            "SIG",
            "15",
        ] {
            assert_eq!(
                Signal::parse(bad),
                Err(SignalError::Unknown {
                    name: bad.to_owned()
                }),
                "{bad}"
            );
        }
    }

    /// Regression (issue 7): SIGURG and SIGWINCH were accepted as kill signals,
    /// although both are ignored by default.
    #[test]
    fn refuses_signals_that_do_not_end_a_process() {
        for (name, number) in [
            ("SIGCHLD", 17),
            ("SIGCONT", 18),
            ("SIGSTOP", 19),
            ("TSTP", 20),
            ("SIGTTIN", 21),
            ("SIGTTOU", 22),
            ("SIGURG", 23),
            ("WINCH", 28),
        ] {
            assert_eq!(
                Signal::parse(name),
                Err(SignalError::DoesNotEnd {
                    signal: Signal(number)
                }),
                "{name}"
            );
        }
        for name in ["SIGHUP", "SIGPIPE", "SIGALRM", "SIGIO", "SIGPWR", "SIGSYS"] {
            assert!(Signal::parse(name).is_ok(), "{name}");
        }
    }

    #[test]
    fn names_round_trip() {
        for n in 1..=64u8 {
            if let Ok(sig) = Signal::parse(&Signal(n).name()) {
                assert_eq!(sig.0, n);
            }
        }
    }
}
