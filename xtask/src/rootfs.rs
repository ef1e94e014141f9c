//! The cached Debian bookworm rootfs: what the nspawn tests boot and what the guest image is made from.

use std::fs::{self, File};
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use anyhow::{Context, Result, bail};
use nix::fcntl::{Flock, FlockArg};

use crate::debian;

/// Packages added to `minbase`. `udev` and `kmod` are required: without them a guest loads no
/// modules (so no 9p) and waits 90 s for `dev-ttyS0.device`.
pub(crate) const INCLUDE: &[&str] = &[
    "systemd",
    "systemd-sysv",
    "dbus",
    "libpam-systemd",
    "udev",
    "kmod",
    "procps",
];

/// Bumped when the post-debootstrap set-up changes, so cached trees are rebuilt.
const LAYOUT: u32 = 1;

/// Where the harness keeps what it builds: `$TWINE_CACHE_DIR`, default `/var/tmp/twine-cache`.
pub(crate) fn cache_dir() -> PathBuf {
    std::env::var_os("TWINE_CACHE_DIR")
        .filter(|v| !v.is_empty())
        .map_or_else(|| PathBuf::from("/var/tmp/twine-cache"), PathBuf::from)
}

/// The path of the cached rootfs (it may not exist yet).
pub(crate) fn path() -> PathBuf {
    cache_dir().join(format!("rootfs-{}", debian::SUITE))
}

/// The stamp's content: what the cached tree was built from. A different stamp means rebuild.
pub(crate) fn stamp() -> String {
    format!(
        "suite={}\nvariant=minbase\ninclude={}\nlayout={LAYOUT}\n",
        debian::SUITE,
        INCLUDE.join(",")
    )
}

fn stamp_path() -> PathBuf {
    cache_dir().join(format!("rootfs-{}.stamp", debian::SUITE))
}

/// Whether the cached rootfs exists and matches [`stamp`].
pub(crate) fn is_current() -> bool {
    path().is_dir() && fs::read_to_string(stamp_path()).is_ok_and(|s| s == stamp())
}

/// Take the cache's build lock, so two builders (say, `xtask test` and `xtask guest-test`) never
/// race on the same tree. Released when the returned guard drops.
pub(crate) fn lock(name: &str) -> Result<Flock<File>> {
    let dir = cache_dir();
    fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    let lock = dir.join(format!("{name}.lock"));
    let file = File::create(&lock).with_context(|| format!("creating {}", lock.display()))?;
    Flock::lock(file, FlockArg::LockExclusive)
        .map_err(|(_, errno)| anyhow::anyhow!("locking {}: {errno}", lock.display()))
}

/// Build the rootfs unless a current one is cached (or `force`); returns its path.
pub(crate) fn ensure(force: bool) -> Result<PathBuf> {
    let target = path();
    if !force && is_current() {
        return Ok(target);
    }
    if !debian::is_root() {
        bail!(
            "building the rootfs at {} needs root (debootstrap and chroot); run `cargo xtask rootfs` as root",
            target.display()
        );
    }
    let _lock = lock("rootfs")?;
    // Someone else may have finished it while we waited for the lock.
    if !force && is_current() {
        return Ok(target);
    }
    debian::ensure_packages(&["debootstrap"])?;
    let mirror = debian::mirror()?;
    let cache = cache_dir();
    remove_stale(&cache, &format!("rootfs-{}.tmp-", debian::SUITE))?;
    let tmp = cache.join(format!(
        "rootfs-{}.tmp-{}",
        debian::SUITE,
        std::process::id()
    ));
    eprintln!(
        "xtask: debootstrap {} into {} from {mirror} (about 40 s)",
        debian::SUITE,
        tmp.display()
    );
    let started = std::time::Instant::now();
    let status = Command::new("debootstrap")
        .arg("--variant=minbase")
        .arg(format!("--include={}", INCLUDE.join(",")))
        .arg(debian::SUITE)
        .arg(&tmp)
        .arg(&mirror)
        .stdout(Stdio::from(std::io::stderr()))
        .status()
        .context("running debootstrap")?;
    if !status.success() {
        let _ = fs::remove_dir_all(&tmp);
        bail!(
            "debootstrap {} {} {mirror} failed: {status}",
            debian::SUITE,
            tmp.display()
        );
    }
    configure(&tmp)?;
    // The old stamp goes first: a crash between here and the new stamp means "rebuild", never a
    // stamp that vouches for the wrong tree.
    let _ = fs::remove_file(stamp_path());
    if target.exists() {
        let old = cache.join(format!(
            "rootfs-{}.tmp-old-{}",
            debian::SUITE,
            std::process::id()
        ));
        fs::rename(&target, &old).with_context(|| format!("moving {} aside", target.display()))?;
        fs::remove_dir_all(&old).with_context(|| format!("removing {}", old.display()))?;
    }
    fs::rename(&tmp, &target)
        .with_context(|| format!("renaming {} to {}", tmp.display(), target.display()))?;
    write(&stamp_path(), &stamp())?;
    eprintln!(
        "xtask: rootfs ready at {} in {:.0} s",
        target.display(),
        started.elapsed().as_secs_f64()
    );
    Ok(target)
}

/// Set-up after debootstrap: an empty machine-id (systemd then makes one per boot, so every
/// container and guest is a fresh machine), a host name, and a root without password.
fn configure(root: &Path) -> Result<()> {
    write(&root.join("etc/machine-id"), "")?;
    write(&root.join("etc/hostname"), "twine\n")?;
    let status = Command::new("chroot")
        .arg(root)
        .args(["passwd", "-d", "root"])
        .stdout(Stdio::null())
        .status()
        .context("running chroot passwd -d root")?;
    if !status.success() {
        bail!("chroot {} passwd -d root failed: {status}", root.display());
    }
    Ok(())
}

/// Remove leftovers of interrupted builds (`PREFIX*` in `dir`) whose builder is gone; the
/// caller holds the lock, so no live build owns them.
pub(crate) fn remove_stale(dir: &Path, prefix: &str) -> Result<()> {
    for entry in fs::read_dir(dir).with_context(|| format!("reading {}", dir.display()))? {
        let entry = entry.with_context(|| format!("reading {}", dir.display()))?;
        if entry.file_name().to_string_lossy().starts_with(prefix) {
            let path = entry.path();
            eprintln!("xtask: removing leftover {}", path.display());
            let removed = if path.is_dir() {
                fs::remove_dir_all(&path)
            } else {
                fs::remove_file(&path)
            };
            removed.with_context(|| format!("removing {}", path.display()))?;
        }
    }
    Ok(())
}

/// Write `content` to `path`, naming both on error.
pub(crate) fn write(path: &Path, content: &str) -> Result<()> {
    let mut file = File::create(path).with_context(|| format!("creating {}", path.display()))?;
    file.write_all(content.as_bytes())
        .with_context(|| format!("writing {content:?} to {}", path.display()))
}
