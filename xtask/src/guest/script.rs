//! The shell script the guest runs as its command (`/ci/command.sh`): the environment every run
//! gets, then either the selected test binaries (`guest-test`) or one command (`guest-run`).

use std::path::{Path, PathBuf};

use crate::test_binaries::TestBinary;

/// Host variables passed into the guest when set.
const PASSED_THROUGH: &[&str] = &[
    "TWINE_REQUIRE_REALSYS",
    "RUST_BACKTRACE",
    "RUST_LOG",
    "RUST_TEST_THREADS",
];

/// `s` as one single-quoted shell word.
pub(super) fn sh_quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', r"'\''"))
}

/// Where the toolchain lives on the host, and so in the guest (shared at the same paths).
#[derive(Debug, Default)]
pub(super) struct Toolchain {
    pub(super) cargo_home: Option<PathBuf>,
    pub(super) rustup_home: Option<PathBuf>,
}

/// The start of every command script: `PATH` (with `$CARGO_HOME/bin` first), `HOME`, the
/// toolchain dirs, `TWINE_GUEST=1`, and the passed-through variables with their `values`.
fn prelude(toolchain: &Toolchain, values: &[(&str, String)]) -> String {
    let mut script = String::from("#!/bin/sh\n");
    let mut path = String::new();
    if let Some(dir) = &toolchain.cargo_home {
        script.push_str(&format!(
            "export CARGO_HOME={}\n",
            sh_quote(&dir.to_string_lossy())
        ));
        path = format!("{}:", dir.join("bin").to_string_lossy());
    }
    if let Some(dir) = &toolchain.rustup_home {
        script.push_str(&format!(
            "export RUSTUP_HOME={}\n",
            sh_quote(&dir.to_string_lossy())
        ));
    }
    script.push_str(&format!(
        "export PATH={}/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin\n",
        sh_quote(&path)
    ));
    script.push_str("export HOME=/root TWINE_GUEST=1\n");
    for (var, value) in values {
        script.push_str(&format!("export {var}={}\n", sh_quote(value)));
    }
    script
}

/// The passed-through variables that are set on the host, with their values.
pub(super) fn passed_through() -> Vec<(&'static str, String)> {
    PASSED_THROUGH
        .iter()
        .filter_map(|var| std::env::var(var).ok().map(|value| (*var, value)))
        .collect()
}

/// `guest-test`: every selected binary with only its guest tests, in its package directory;
/// the first non-zero status is the script's. Test output is one stream (stderr into stdout).
pub(super) fn tests(
    toolchain: &Toolchain,
    env: &[(&str, String)],
    binaries: &[TestBinary],
    test_args: &[String],
) -> String {
    let mut script = prelude(toolchain, env);
    script.push_str("exec 2>&1\nrc=0\n");
    for binary in binaries {
        let dir = sh_quote(&binary.package_dir.to_string_lossy());
        let mut line = format!(
            "echo {}\ncd {dir} && CARGO_MANIFEST_DIR={dir} {} --ignored --exact",
            sh_quote(&format!(
                "=== {} ({} guest test(s))",
                binary.label,
                binary.guest_tests.len()
            )),
            sh_quote(&binary.executable.to_string_lossy())
        );
        for arg in binary.guest_tests.iter().chain(test_args) {
            line.push(' ');
            line.push_str(&sh_quote(arg));
        }
        script.push_str(&line);
        script.push_str("\nr=$?; [ \"$rc\" -eq 0 ] && rc=$r\n");
    }
    script.push_str("exit \"$rc\"\n");
    script
}

/// `guest-run`: `argv` run in `dir`, as one `exec`, so its status is the script's; stdout and
/// stderr stay apart.
pub(super) fn command(
    toolchain: &Toolchain,
    env: &[(&str, String)],
    dir: &Path,
    argv: &[String],
) -> String {
    let mut script = prelude(toolchain, env);
    script.push_str(&format!(
        "cd {} || exit 125\nexec",
        sh_quote(&dir.to_string_lossy())
    ));
    for arg in argv {
        script.push(' ');
        script.push_str(&sh_quote(arg));
    }
    script.push('\n');
    script
}

#[cfg(test)]
mod tests {
    use super::*;

    fn toolchain() -> Toolchain {
        Toolchain {
            cargo_home: Some("/root/.cargo".into()),
            rustup_home: Some("/root/.rustup".into()),
        }
    }

    #[test]
    fn quoting_survives_single_quotes() {
        assert_eq!(sh_quote("a'b"), r"'a'\''b'");
        assert_eq!(sh_quote(""), "''");
        assert_eq!(sh_quote("$(x) `y` \\ \n"), "'$(x) `y` \\ \n'");
    }

    #[test]
    fn command_script_execs_the_quoted_argv_in_the_directory() {
        let argv = ["sh", "-c", "echo 'hi'; exit 3"].map(str::to_owned);
        let script = command(
            &toolchain(),
            &[("RUST_LOG", "debug".to_owned())],
            Path::new("/work/my repo"),
            &argv,
        );
        assert_eq!(
            script,
            "#!/bin/sh\n\
             export CARGO_HOME='/root/.cargo'\n\
             export RUSTUP_HOME='/root/.rustup'\n\
             export PATH='/root/.cargo/bin:'/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin\n\
             export HOME=/root TWINE_GUEST=1\n\
             export RUST_LOG='debug'\n\
             cd '/work/my repo' || exit 125\n\
             exec 'sh' '-c' 'echo '\\''hi'\\''; exit 3'\n"
        );
    }

    #[test]
    fn command_script_runs_as_written_by_sh() {
        let dir = tempfile::tempdir().expect("tempdir");
        let argv = [
            "sh",
            "-c",
            "pwd; echo \"$1\" >&2; exit 3",
            "sh",
            "it's $HOME",
        ]
        .map(str::to_owned);
        let script = command(&Toolchain::default(), &[], dir.path(), &argv);
        let out = std::process::Command::new("sh")
            .arg("-c")
            .arg(&script)
            .output()
            .expect("sh");
        assert_eq!(out.status.code(), Some(3));
        let pwd = std::fs::canonicalize(dir.path()).expect("canonical");
        assert_eq!(
            String::from_utf8_lossy(&out.stdout).trim(),
            pwd.to_string_lossy()
        );
        assert_eq!(String::from_utf8_lossy(&out.stderr), "it's $HOME\n");
    }

    #[test]
    fn tests_script_keeps_the_first_failure() {
        let binary = TestBinary {
            executable: "/t/deps/a-1".into(),
            package_dir: "/t/a".into(),
            label: "a/a".into(),
            guest_tests: vec!["guest_x".into()],
        };
        let script = tests(
            &Toolchain::default(),
            &[],
            &[binary],
            &["--nocapture".into()],
        );
        assert!(script.contains("exec 2>&1\nrc=0\n"), "{script}");
        assert!(
            script.contains(
                "cd '/t/a' && CARGO_MANIFEST_DIR='/t/a' '/t/deps/a-1' --ignored --exact 'guest_x' '--nocapture'\n"
            ),
            "{script}"
        );
        assert!(script.ends_with("exit \"$rc\"\n"), "{script}");
    }
}
