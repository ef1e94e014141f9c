//! The host's Debian: which mirror its apt sources use, and installing the packages the harness needs.

use std::fs;
use std::path::Path;
use std::process::Command;

use anyhow::{Context, Result, bail};

/// The Debian release the harness builds images from and pins packages to.
pub(crate) const SUITE: &str = "bookworm";

/// Whether this process runs as root (the set-up steps need it).
pub(crate) fn is_root() -> bool {
    nix::unistd::geteuid().is_root()
}

/// The mirror URI that the machine's apt sources use for `bookworm main`.
///
/// The host name is never written into the repository: it is read from `/etc/apt/sources.list`,
/// `/etc/apt/sources.list.d/*.list` and deb822 `*.sources`. `TWINE_DEBIAN_MIRROR` overrides it.
pub(crate) fn mirror() -> Result<String> {
    if let Ok(uri) = std::env::var("TWINE_DEBIAN_MIRROR")
        && !uri.is_empty()
    {
        return Ok(uri);
    }
    mirror_in(Path::new("/etc/apt"))
}

fn mirror_in(apt_dir: &Path) -> Result<String> {
    let mut files = vec![apt_dir.join("sources.list")];
    if let Ok(entries) = fs::read_dir(apt_dir.join("sources.list.d")) {
        let mut more: Vec<_> = entries.filter_map(|e| e.ok().map(|e| e.path())).collect();
        more.sort();
        files.extend(more);
    }
    for file in &files {
        let name = file.to_string_lossy();
        let Ok(text) = fs::read_to_string(file) else {
            continue;
        };
        let found = if name.ends_with(".sources") {
            mirror_in_deb822(&text)
        } else if name.ends_with(".list") {
            mirror_in_one_line(&text)
        } else {
            None
        };
        if let Some(uri) = found {
            return Ok(uri);
        }
    }
    bail!(
        "no apt source for `{SUITE}` with component `main` in {}/sources.list, sources.list.d/*.list or *.sources; \
         set TWINE_DEBIAN_MIRROR to a Debian mirror URI",
        apt_dir.display()
    )
}

/// One-line format: `deb [options] URI SUITE COMPONENT...`.
fn mirror_in_one_line(text: &str) -> Option<String> {
    text.lines().find_map(|line| {
        let line = line.split('#').next().unwrap_or_default();
        let mut words = line.split_whitespace();
        if words.next()? != "deb" {
            return None;
        }
        let mut uri = words.next()?;
        if uri.starts_with('[') {
            // Options run up to the word that ends with `]`.
            while !uri.ends_with(']') {
                uri = words.next()?;
            }
            uri = words.next()?;
        }
        let suite = words.next()?;
        (suite == SUITE && words.any(|c| c == "main")).then(|| uri.to_owned())
    })
}

/// deb822 format: stanzas of `Field: value` separated by blank lines.
fn mirror_in_deb822(text: &str) -> Option<String> {
    let mut stanzas = vec![Vec::new()];
    for line in text.lines() {
        let line = line.trim_end();
        if line.trim().is_empty() {
            stanzas.push(Vec::new());
        } else if !line.starts_with('#')
            && let Some(last) = stanzas.last_mut()
        {
            last.push(line);
        }
    }
    stanzas.iter().find_map(|stanza| {
        let field = |name: &str| -> Vec<&str> {
            stanza
                .iter()
                .filter_map(|l| l.split_once(':'))
                .filter(|(k, _)| k.trim().eq_ignore_ascii_case(name))
                .flat_map(|(_, v)| v.split_whitespace())
                .collect()
        };
        let enabled = field("Enabled").first().is_none_or(|v| *v != "no");
        let ok = enabled
            && field("Types").contains(&"deb")
            && field("Suites").contains(&SUITE)
            && field("Components").contains(&"main");
        ok.then(|| field("URIs").first().map(|u| (*u).to_owned()))
            .flatten()
    })
}

/// Whether a package is installed (`dpkg-query` reports `install ok installed`).
fn installed(name: &str) -> bool {
    Command::new("dpkg-query")
        .args(["-W", "-f=${Status}", name])
        .output()
        .is_ok_and(|o| o.status.success() && o.stdout == b"install ok installed")
}

/// Install whichever of `packages` are missing.
///
/// An entry may carry a target release (`qemu-utils/bookworm`): such a pin counts as present when the
/// package is installed, but it is added to every install that happens, with `--allow-downgrades`,
/// because a pin exists to make another package installable (see `docs/GUEST.md`).
pub(crate) fn ensure_packages(packages: &[&str]) -> Result<()> {
    let missing: Vec<&str> = packages
        .iter()
        .copied()
        .filter(|p| !installed(p.split('/').next().unwrap_or(p)))
        .collect();
    if missing.is_empty() {
        return Ok(());
    }
    let mut install = missing.clone();
    install.extend(
        packages
            .iter()
            .copied()
            .filter(|p| p.contains('/') && !missing.contains(p)),
    );
    let list = install.join(" ");
    if !is_root() {
        bail!(
            "apt packages missing: {list}; installing them needs root (run as root, or install them yourself)"
        );
    }
    eprintln!("xtask: installing apt packages: {list}");
    run_apt(&["update"])
        .with_context(|| format!("apt-get update (before installing {list}) failed"))?;
    let mut args = vec![
        "install",
        "-y",
        "--no-install-recommends",
        "--allow-downgrades",
    ];
    args.extend(&install);
    run_apt(&args).with_context(|| format!("apt-get install {list} failed"))?;
    Ok(())
}

fn run_apt(args: &[&str]) -> Result<()> {
    let status = Command::new("apt-get")
        .args(args)
        .env("DEBIAN_FRONTEND", "noninteractive")
        .status()
        .context("running apt-get")?;
    if !status.success() {
        bail!("apt-get {} exited with {status}", args.join(" "));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn deb822_picks_bookworm_main_not_security() {
        let text = "Types: deb\nURIs: http://mirror.invalid/debian\nSuites: bookworm bookworm-updates\n\
                    Components: main\n\nTypes: deb\nURIs: http://mirror.invalid/debian-security\n\
                    Suites: bookworm-security\nComponents: main\n";
        assert_eq!(
            mirror_in_deb822(text).as_deref(),
            Some("http://mirror.invalid/debian")
        );
        let security_first = text
            .split("\n\n")
            .collect::<Vec<_>>()
            .into_iter()
            .rev()
            .collect::<Vec<_>>()
            .join("\n\n");
        assert_eq!(
            mirror_in_deb822(&security_first).as_deref(),
            Some("http://mirror.invalid/debian")
        );
    }

    #[test]
    fn deb822_skips_disabled_and_comments() {
        let text = "# Types: deb\nEnabled: no\nTypes: deb\nURIs: http://a.invalid/\nSuites: bookworm\nComponents: main\n\n\
                    Types: deb-src deb\nURIs: http://b.invalid/\nSuites: bookworm\nComponents: contrib main\n";
        assert_eq!(mirror_in_deb822(text).as_deref(), Some("http://b.invalid/"));
    }

    #[test]
    fn one_line_with_options_and_comments() {
        let text = "# deb http://x.invalid/ bookworm main\ndeb-src http://y.invalid/ bookworm main\n\
                    deb http://s.invalid/ bookworm-security main\n\
                    deb [arch=amd64 signed-by=/k.gpg] http://z.invalid/debian bookworm main contrib\n";
        assert_eq!(
            mirror_in_one_line(text).as_deref(),
            Some("http://z.invalid/debian")
        );
    }

    #[test]
    fn missing_source_names_the_suite() {
        let dir = tempfile::tempdir().expect("tempdir");
        let err = mirror_in(dir.path()).expect_err("no sources");
        assert!(err.to_string().contains("bookworm"), "{err}");
    }
}
