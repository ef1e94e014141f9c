//! Time spans and byte sizes in the notations systemd users already know.

/// A stop or start timeout: a span, or never.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Timeout {
    /// After this many microseconds.
    After(u64),
    /// Never (`infinity`).
    Infinity,
}

impl Timeout {
    /// Microseconds, with `infinity` as `u64::MAX` (the D-Bus encoding).
    pub fn usec(self) -> u64 {
        match self {
            Timeout::After(usec) => usec,
            Timeout::Infinity => u64::MAX,
        }
    }
}

/// Why a time span or a size could not be read.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum QuantityError {
    /// The text is empty.
    #[error("an empty time span")]
    EmptySpan,
    /// A span does not start with a number.
    #[error("expected a number such as 30s, 250ms or 1min 30s")]
    NotASpan,
    /// A span has a unit systemd does not know.
    #[error("unknown time unit (use us, ms, s, min, h or d)")]
    UnknownTimeUnit,
    /// A size is not a number with an optional suffix.
    #[error("expected a size such as 512M, 2G or a byte count")]
    NotASize,
    /// A size has a suffix systemd does not know.
    #[error("unknown size suffix (use K, M, G, T or P)")]
    UnknownSizeSuffix,
    /// A number has more than one dot, no digits, or more than 9 decimals.
    #[error("malformed number")]
    MalformedNumber,
    /// The value does not fit in 64 bits.
    #[error("the number is too large")]
    TooLarge,
}

const UNITS: &[(&str, u64)] = &[
    ("usec", 1),
    ("us", 1),
    ("msec", 1_000),
    ("ms", 1_000),
    ("seconds", 1_000_000),
    ("second", 1_000_000),
    ("sec", 1_000_000),
    ("s", 1_000_000),
    ("minutes", 60_000_000),
    ("minute", 60_000_000),
    ("min", 60_000_000),
    ("m", 60_000_000),
    ("hours", 3_600_000_000),
    ("hour", 3_600_000_000),
    ("hr", 3_600_000_000),
    ("h", 3_600_000_000),
    ("days", 86_400_000_000),
    ("day", 86_400_000_000),
    ("d", 86_400_000_000),
];

/// Parses `30s`, `1min 30s`, `1.5s`, `250ms` into microseconds (a bare number is seconds).
pub fn parse_span(text: &str) -> Result<u64, QuantityError> {
    let mut rest = text.trim();
    if rest.is_empty() {
        return Err(QuantityError::EmptySpan);
    }
    let mut total: u64 = 0;
    while !rest.is_empty() {
        let number_len = rest
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .unwrap_or(rest.len());
        let (number, tail) = rest.split_at(number_len);
        if number.is_empty() {
            return Err(QuantityError::NotASpan);
        }
        let tail = tail.trim_start();
        let unit_len = tail
            .find(|c: char| !c.is_ascii_alphabetic())
            .unwrap_or(tail.len());
        let (unit, tail) = tail.split_at(unit_len);
        let scale = if unit.is_empty() {
            1_000_000
        } else {
            UNITS
                .iter()
                .find(|(u, _)| *u == unit)
                .map(|(_, s)| *s)
                .ok_or(QuantityError::UnknownTimeUnit)?
        };
        total = total
            .checked_add(scale_decimal(number, scale)?)
            .ok_or(QuantityError::TooLarge)?;
        rest = tail.trim_start();
    }
    Ok(total)
}

/// `number` (digits with at most one dot) times `scale`, rounded down.
fn scale_decimal(number: &str, scale: u64) -> Result<u64, QuantityError> {
    let (whole, frac) = number.split_once('.').unwrap_or((number, ""));
    if frac.contains('.') || (whole.is_empty() && frac.is_empty()) || frac.len() > 9 {
        return Err(QuantityError::MalformedNumber);
    }
    let whole: u64 = if whole.is_empty() {
        0
    } else {
        whole.parse().map_err(|_| QuantityError::TooLarge)?
    };
    let mut value = whole.checked_mul(scale).ok_or(QuantityError::TooLarge)?;
    if !frac.is_empty() {
        let digits: u64 = frac.parse().map_err(|_| QuantityError::MalformedNumber)?;
        let denominator =
            10u64.pow(u32::try_from(frac.len()).map_err(|_| QuantityError::MalformedNumber)?);
        let part = u128::from(digits) * u128::from(scale) / u128::from(denominator);
        value = value
            .checked_add(u64::try_from(part).map_err(|_| QuantityError::TooLarge)?)
            .ok_or(QuantityError::TooLarge)?;
    }
    Ok(value)
}

/// Writes microseconds in the largest exact unit: `30s`, `1500ms`, `250us`, `0`.
pub fn format_span(usec: u64) -> String {
    match usec {
        0 => "0".to_owned(),
        u if u % 1_000_000 == 0 => format!("{}s", u / 1_000_000),
        u if u % 1_000 == 0 => format!("{}ms", u / 1_000),
        u => format!("{u}us"),
    }
}

/// Parses `512M`, `1G`, `1.5G` or a plain byte count; suffixes are powers of 1024, as in systemd.
pub fn parse_bytes(text: &str) -> Result<u64, QuantityError> {
    let text = text.trim();
    let (number, scale) = match text.char_indices().last() {
        Some((i, c)) if c.is_ascii_alphabetic() => {
            let scale = match c {
                'K' => 1u64 << 10,
                'M' => 1 << 20,
                'G' => 1 << 30,
                'T' => 1 << 40,
                'P' => 1 << 50,
                'B' => 1,
                _ => return Err(QuantityError::UnknownSizeSuffix),
            };
            (&text[..i], scale)
        }
        _ => (text, 1),
    };
    if number.is_empty() || !number.bytes().all(|b| b.is_ascii_digit() || b == b'.') {
        return Err(QuantityError::NotASize);
    }
    scale_decimal(number, scale)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spans() {
        assert_eq!(parse_span("30s"), Ok(30_000_000));
        assert_eq!(parse_span("1min 30s"), Ok(90_000_000));
        assert_eq!(parse_span("1.5s"), Ok(1_500_000));
        assert_eq!(parse_span("250ms"), Ok(250_000));
        assert_eq!(parse_span("2"), Ok(2_000_000));
        assert_eq!(parse_span(""), Err(QuantityError::EmptySpan));
        assert_eq!(parse_span("s"), Err(QuantityError::NotASpan));
        assert_eq!(parse_span("5 parsecs"), Err(QuantityError::UnknownTimeUnit));
        assert_eq!(parse_span("1..2s"), Err(QuantityError::MalformedNumber));
        assert_eq!(
            parse_span("99999999999999999999s"),
            Err(QuantityError::TooLarge)
        );
        assert_eq!(format_span(1_500_000), "1500ms");
        assert_eq!(format_span(90_000_000), "90s");
    }

    #[test]
    fn bytes() {
        assert_eq!(parse_bytes("512M"), Ok(512 << 20));
        assert_eq!(parse_bytes("1.5G"), Ok(3 << 29));
        assert_eq!(parse_bytes("4096"), Ok(4096));
        assert_eq!(parse_bytes("12Q"), Err(QuantityError::UnknownSizeSuffix));
        assert_eq!(parse_bytes("-1"), Err(QuantityError::NotASize));
        assert_eq!(parse_bytes("99999999P"), Err(QuantityError::TooLarge));
    }
}
