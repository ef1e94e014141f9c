//! The guest tier: a Debian kernel with systemd as PID 1 under QEMU (TCG), running test binaries
//! built on the host (`guest-test`) or one command (`guest-run`). See `docs/GUEST.md` for the
//! why and the measured costs.
//!
//! By concept: `image` (kernel, cached image, the in-guest runner), `script` (the command script
//! the runner executes), `qemu` (one boot, supervised and cleaned up).

mod image;
mod qemu;
mod script;

use std::fs;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};

use crate::{debian, test_binaries};
use image::Kernel;

/// Guest RAM by default. The resizer's guest tests hold up to 1 GiB of workload at a time on
/// top of the test binaries; with 2 GiB one run in five hung (docs/GUEST.md: cause not found,
/// whole-guest memory pressure under emulation is the suspect), so the guest gets 4 GiB of the
/// host's 24 (QEMU touches only what the guest uses).
pub(crate) const GUEST_MEMORY: &str = "4G";

/// Host packages the tier needs. `qemu-utils/bookworm` downgrades the backports qemu-utils the
/// machine image ships, which otherwise Breaks bookworm's qemu-system-common.
pub(crate) const PACKAGES: &[&str] = &[
    "qemu-system-x86",
    "qemu-utils/bookworm",
    "linux-image-amd64",
];

/// 9p mount options used for every share (the control dir and the host dirs).
const NINEP_OPTS: &str = "trans=virtio,version=9p2000.L,msize=524288";

/// How to boot: the settings `guest-test` and `guest-run` share.
#[derive(Debug)]
pub(crate) struct GuestOptions {
    /// Limit for the whole guest run: boot, command, power-off.
    pub(crate) timeout: Duration,
    /// Guest RAM, in QEMU's `-m` syntax.
    pub(crate) memory: String,
    /// Extra host directories to share at the same path.
    pub(crate) shares: Vec<PathBuf>,
}

/// What `cargo xtask guest-test` was asked to do.
#[derive(Debug)]
pub(crate) struct GuestTest {
    /// Packages whose test binaries to search (`-p`); empty means the whole workspace.
    pub(crate) packages: Vec<String>,
    /// Arguments for the test binaries (filters, `--nocapture`, ...).
    pub(crate) test_args: Vec<String>,
    pub(crate) guest: GuestOptions,
}

/// What `cargo xtask guest-run` was asked to do.
#[derive(Debug)]
pub(crate) struct GuestRun {
    /// The command and its arguments, run as root in the workspace directory.
    pub(crate) argv: Vec<String>,
    pub(crate) guest: GuestOptions,
}

/// Whether `count` selected guest tests are worth a boot. None selected is an error when the
/// real system is required: a tier that silently finds nothing would pass forever after its
/// tests vanish (a rename, a lost `#[ignore]`, a wrong `-p`).
fn worth_booting(count: usize, require_realsys: bool) -> Result<bool> {
    match (count, require_realsys) {
        (0, true) => bail!(
            "no guest-only tests (`guest_*`, ignored) selected and TWINE_REQUIRE_REALSYS=1 is set: \
             the guest tier must run at least one test"
        ),
        (0, false) => Ok(false),
        _ => Ok(true),
    }
}

fn require_root(command: &str) -> Result<()> {
    if !debian::is_root() {
        bail!(
            "the guest tier needs root (apt packages, debootstrap, the guest image); run `cargo xtask {command}` as root"
        );
    }
    Ok(())
}

/// Run the guest-only tests in a fresh guest; returns the exit status to exit with.
pub(crate) fn run(opts: &GuestTest) -> Result<i32> {
    require_root("guest-test")?;
    let started = Instant::now();
    let binaries = test_binaries::build(&opts.packages)?;
    let binaries = test_binaries::select_guest_tests(binaries, &opts.test_args)?;
    let count: usize = binaries.iter().map(|b| b.guest_tests.len()).sum();
    eprintln!(
        "xtask: built test binaries in {:.1} s; {count} guest test(s) in {} binar{}",
        started.elapsed().as_secs_f64(),
        binaries.len(),
        if binaries.len() == 1 { "y" } else { "ies" }
    );
    if !worth_booting(count, crate::require_realsys())? {
        eprintln!("xtask: no guest-only tests (`guest_*`, ignored) selected; not booting a guest");
        return Ok(0);
    }
    let guest = Prepared::new(&opts.guest)?;
    let script = script::tests(
        &guest.toolchain,
        &guest.environment(),
        &binaries,
        &opts.test_args,
    );
    let code = guest.boot(&opts.guest, script, "the guest tests")?;
    eprintln!(
        "xtask: guest tier total {:.1} s, exit status {code}",
        started.elapsed().as_secs_f64()
    );
    Ok(code)
}

/// Run one command as root in the workspace directory of a fresh guest; returns its status.
pub(crate) fn run_command(opts: &GuestRun) -> Result<i32> {
    require_root("guest-run")?;
    if opts.argv.is_empty() {
        bail!("no command given; usage: cargo xtask guest-run [OPTIONS] -- CMD [ARGS]...");
    }
    let guest = Prepared::new(&opts.guest)?;
    let script = script::command(
        &guest.toolchain,
        &guest.environment(),
        &guest.workspace,
        &opts.argv,
    );
    guest.boot(&opts.guest, script, "the command")
}

/// Everything a boot needs on the host: packages, the kernel, the image, the shares.
struct Prepared {
    kernel: Kernel,
    image: PathBuf,
    workspace: PathBuf,
    toolchain: script::Toolchain,
    shares: Vec<PathBuf>,
    /// The cached rootfs (canonical), shared so that containers in the guest boot the same tree
    /// as the host tier's (`TWINE_ROOTFS`).
    rootfs: PathBuf,
}

impl Prepared {
    fn new(opts: &GuestOptions) -> Result<Self> {
        let phase = Instant::now();
        let mut packages = PACKAGES.to_vec();
        packages.push("debootstrap");
        debian::ensure_packages(&packages)?;
        let kernel = Kernel::newest()?;
        let image = image::ensure(&kernel)?;
        eprintln!(
            "xtask: packages, kernel {} and guest image ready in {:.1} s",
            kernel.version,
            phase.elapsed().as_secs_f64()
        );
        let workspace = Workspace::locate()?;
        let toolchain = toolchain();
        let mut shares = vec![workspace.root.clone(), workspace.target_dir];
        shares.extend(toolchain.cargo_home.iter().cloned());
        shares.extend(toolchain.rustup_home.iter().cloned());
        // The containers of the agent's guest tests boot it as their overlay's lower layer
        // (overlayfs accepts a 9p lower dir; the upper layer stays on the guest's disk).
        let rootfs = fs::canonicalize(crate::rootfs::path())
            .with_context(|| format!("resolving {}", crate::rootfs::path().display()))?;
        shares.push(rootfs.clone());
        shares.extend(opts.shares.iter().cloned());
        // Canonical, as the shares are: the guest has the share's path, not a symlink to it.
        let root = fs::canonicalize(&workspace.root)
            .with_context(|| format!("resolving {}", workspace.root.display()))?;
        Ok(Self {
            kernel,
            image,
            workspace: root,
            toolchain,
            shares: outermost(shares)?,
            rootfs,
        })
    }

    /// The variables set in the guest besides the fixed ones: the passed-through ones, and
    /// `TWINE_ROOTFS` naming the shared rootfs.
    fn environment(&self) -> Vec<(&'static str, String)> {
        let mut values = script::passed_through();
        values.push(("TWINE_ROOTFS", self.rootfs.to_string_lossy().into_owned()));
        values
    }

    fn boot(&self, opts: &GuestOptions, script: String, what: &str) -> Result<i32> {
        let phase = Instant::now();
        let code = qemu::boot(&qemu::Boot {
            kernel: &self.kernel,
            image: &self.image,
            shares: &self.shares,
            script,
            memory: &opts.memory,
            timeout: opts.timeout,
            what,
        })?;
        eprintln!(
            "xtask: guest boot + {what} + power-off took {:.1} s, exit status {code}",
            phase.elapsed().as_secs_f64()
        );
        Ok(code)
    }
}

/// The workspace and its target dir, as cargo sees them.
struct Workspace {
    root: PathBuf,
    target_dir: PathBuf,
}

impl Workspace {
    fn locate() -> Result<Self> {
        let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
        let out = Command::new(cargo)
            .args(["metadata", "--no-deps", "--format-version", "1"])
            .stderr(Stdio::inherit())
            .output()
            .context("running cargo metadata")?;
        if !out.status.success() {
            bail!("cargo metadata failed: {}", out.status);
        }
        let meta: serde_json::Value =
            serde_json::from_slice(&out.stdout).context("parsing cargo metadata")?;
        let path = |key: &str| -> Result<PathBuf> {
            meta[key]
                .as_str()
                .map(PathBuf::from)
                .with_context(|| format!("cargo metadata has no {key}"))
        };
        Ok(Self {
            root: path("workspace_root")?,
            target_dir: path("target_directory")?,
        })
    }
}

/// `CARGO_HOME` and `RUSTUP_HOME` (or their defaults under `$HOME`), when they exist.
fn toolchain() -> script::Toolchain {
    let home = std::env::var_os("HOME")
        .map(PathBuf::from)
        .unwrap_or_default();
    let dir = |var: &str, default: &str| {
        Some(
            std::env::var_os(var)
                .map(PathBuf::from)
                .unwrap_or_else(|| home.join(default)),
        )
        .filter(|d| d.is_dir())
    };
    script::Toolchain {
        cargo_home: dir("CARGO_HOME", ".cargo"),
        rustup_home: dir("RUSTUP_HOME", ".rustup"),
    }
}

/// Canonical share paths with nested ones dropped: a 9p share shows its whole subtree.
fn outermost(dirs: Vec<PathBuf>) -> Result<Vec<PathBuf>> {
    let mut dirs = dirs
        .into_iter()
        .map(|d| fs::canonicalize(&d).with_context(|| format!("share {}", d.display())))
        .collect::<Result<Vec<_>>>()?;
    dirs.sort();
    dirs.dedup();
    let mut kept: Vec<PathBuf> = Vec::new();
    for dir in dirs {
        if !kept.iter().any(|k| dir.starts_with(k)) {
            kept.push(dir);
        }
    }
    Ok(kept)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nested_shares_collapse() {
        let dir = tempfile::tempdir().expect("tempdir");
        let inner = dir.path().join("target");
        fs::create_dir(&inner).expect("mkdir");
        let kept = outermost(vec![inner, dir.path().to_path_buf()]).expect("shares");
        assert_eq!(kept, [fs::canonicalize(dir.path()).expect("canonical")]);
    }

    #[test]
    fn an_empty_tier_fails_only_where_required() {
        assert!(worth_booting(2, true).expect("tests selected"));
        assert!(!worth_booting(0, false).expect("skip allowed"));
        let err = worth_booting(0, true).expect_err("required and empty");
        assert!(err.to_string().contains("TWINE_REQUIRE_REALSYS=1"), "{err}");
    }
}
