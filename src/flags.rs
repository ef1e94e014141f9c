//! Number flags of the simulation commands, read by twine so errors name the flag and
//! the value: `--flag: expected ... (got "x")`, exit 1.

/// `text` as a `T`, or `--flag: expected {what} (got "text")`.
pub(crate) fn number<T: std::str::FromStr>(
    flag: &str,
    text: &str,
    what: &str,
) -> Result<T, Vec<String>> {
    text.trim()
        .parse()
        .map_err(|_| vec![format!("{flag}: expected {what} (got {text:?})")])
}
