//! Test binaries built on the host, and the guest-only tests inside them.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use anyhow::{Context, Result, bail};

/// A guest-only test is an ignored test whose function name starts with this.
pub(crate) const GUEST_PREFIX: &str = "guest_";

/// One test executable, with the package directory cargo would run it in.
#[derive(Debug)]
pub(crate) struct TestBinary {
    /// The executable cargo built.
    pub(crate) executable: PathBuf,
    /// The package's directory (cargo runs tests there; so does the guest).
    pub(crate) package_dir: PathBuf,
    /// `package/target` for messages.
    pub(crate) label: String,
    /// The guest-only tests it holds, by full name (`module::guest_name`).
    pub(crate) guest_tests: Vec<String>,
}

/// Build every test target of `packages` (the whole workspace when empty) with
/// `cargo test --no-run` and return the executables.
pub(crate) fn build(packages: &[String]) -> Result<Vec<TestBinary>> {
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let mut cmd = Command::new(&cargo);
    cmd.args([
        "test",
        "--no-run",
        "--message-format=json-render-diagnostics",
    ]);
    if packages.is_empty() {
        cmd.arg("--workspace");
    }
    for package in packages {
        cmd.args(["-p", package]);
    }
    let out = cmd
        .stderr(Stdio::inherit())
        .output()
        .context("running cargo test --no-run")?;
    if !out.status.success() {
        bail!(
            "building the test binaries (cargo test --no-run) failed: {}",
            out.status
        );
    }
    let mut binaries = Vec::new();
    for line in String::from_utf8_lossy(&out.stdout).lines() {
        let Ok(msg) = serde_json::from_str::<serde_json::Value>(line) else {
            continue;
        };
        if msg["reason"] != "compiler-artifact" || msg["profile"]["test"] != true {
            continue;
        }
        let (Some(exe), Some(manifest)) =
            (msg["executable"].as_str(), msg["manifest_path"].as_str())
        else {
            continue;
        };
        let package_dir = Path::new(manifest)
            .parent()
            .map(Path::to_path_buf)
            .unwrap_or_default();
        let package = package_dir
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        let target = msg["target"]["name"].as_str().unwrap_or("?");
        binaries.push(TestBinary {
            executable: PathBuf::from(exe),
            package_dir,
            label: format!("{package}/{target}"),
            guest_tests: Vec::new(),
        });
    }
    Ok(binaries)
}

/// Fill in each binary's guest-only tests by asking it on the host (`--list --ignored`), with
/// the user's test arguments so a filter narrows the selection. Binaries without any are dropped.
pub(crate) fn select_guest_tests(
    binaries: Vec<TestBinary>,
    test_args: &[String],
) -> Result<Vec<TestBinary>> {
    let mut selected = Vec::new();
    for mut binary in binaries {
        let out = Command::new(&binary.executable)
            .args(["--list", "--ignored", "--format", "terse"])
            .args(test_args)
            .current_dir(&binary.package_dir)
            .stderr(Stdio::inherit())
            .output()
            .with_context(|| format!("listing tests of {}", binary.executable.display()))?;
        if !out.status.success() {
            bail!(
                "{} --list --ignored {} failed: {}",
                binary.executable.display(),
                test_args.join(" "),
                out.status
            );
        }
        binary.guest_tests = guest_tests_in(&String::from_utf8_lossy(&out.stdout));
        if !binary.guest_tests.is_empty() {
            selected.push(binary);
        }
    }
    Ok(selected)
}

/// The guest-only names in libtest's terse listing (`path::name: test`).
fn guest_tests_in(listing: &str) -> Vec<String> {
    listing
        .lines()
        .filter_map(|l| l.strip_suffix(": test"))
        .filter(|name| {
            name.rsplit("::")
                .next()
                .is_some_and(|f| f.starts_with(GUEST_PREFIX))
        })
        .map(str::to_owned)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn listing_keeps_only_guest_functions() {
        let listing = "guest_helpers::plain: test\ncg::guest_memory: test\nguest_top: test\n\
                       cg::not_guest_x: test\ncg::guest_bench: benchmark\n";
        assert_eq!(guest_tests_in(listing), ["cg::guest_memory", "guest_top"]);
    }
}
