//! The guest image: Debian's kernel from `/boot`, the cached rootfs, and the runner that the
//! guest starts at boot (`ci-run.service`), built once per kernel and layout into an ext4 image.

use std::fs;
use std::os::unix::fs::PermissionsExt as _;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

use anyhow::{Context, Result, bail};

use super::NINEP_OPTS;
use crate::{debian, rootfs};

/// Bumped when the image's own files (below) change in a way the stamp would not see.
/// 2: 6 GiB disk with room for the swap file.
const IMAGE_LAYOUT: u32 = 2;

/// Size of the sparse disk image: the rootfs and kernel modules (about 650 MB), the 2 GiB swap
/// file the runner makes at boot, and room for tests' files (page cache workloads).
const DISK_BYTES: u64 = 6 << 30;

/// The guest kernel: the newest Debian `/boot/vmlinuz-*-amd64` and its initrd.
#[derive(Debug)]
pub(super) struct Kernel {
    pub(super) version: String,
    pub(super) vmlinuz: PathBuf,
    pub(super) initrd: PathBuf,
}

impl Kernel {
    pub(super) fn newest() -> Result<Self> {
        let boot = Path::new("/boot");
        let mut versions: Vec<String> = fs::read_dir(boot)
            .with_context(|| format!("reading {}", boot.display()))?
            .filter_map(|e| e.ok())
            .filter_map(|e| {
                let name = e.file_name().to_string_lossy().into_owned();
                name.strip_prefix("vmlinuz-")
                    .filter(|v| v.ends_with("-amd64"))
                    .map(str::to_owned)
            })
            .collect();
        versions.sort_by_key(|v| version_key(v));
        let Some(version) = versions.pop() else {
            bail!("no /boot/vmlinuz-*-amd64 after installing linux-image-amd64");
        };
        let kernel = Self {
            vmlinuz: boot.join(format!("vmlinuz-{version}")),
            initrd: boot.join(format!("initrd.img-{version}")),
            version,
        };
        let modules = Path::new("/lib/modules").join(&kernel.version);
        for needed in [&kernel.initrd, &modules] {
            if !needed.exists() {
                bail!(
                    "{} is missing for kernel {}; reinstall linux-image-{}",
                    needed.display(),
                    kernel.version,
                    kernel.version
                );
            }
        }
        Ok(kernel)
    }
}

/// `6.1.0-56-amd64` -> `[6, 1, 0, 56]`, so versions sort as numbers.
fn version_key(version: &str) -> Vec<u64> {
    version
        .split(|c: char| !c.is_ascii_digit())
        .filter_map(|n| n.parse().ok())
        .collect()
}

/// The guest-side runner, installed in the image as `/usr/local/sbin/twine-ci-run`.
///
/// It reads everything per-run from the 9p control dir (`/ci`), so one image serves every run.
/// The command's stdout and stderr go to `stdout.log` and `stderr.log`, which the host streams.
pub(super) const CI_RUN: &str = r#"#!/bin/sh
# twine guest tier: wait for systemd, mount the host's dirs, run the command, report, power off.
ctl=/ci
opts=trans=virtio,version=9p2000.L,msize=524288
i=0
until mountpoint -q "$ctl"; do
    mount -t 9p -o "$opts" ci "$ctl" 2>/dev/null && break
    i=$((i + 1)); [ "$i" -ge 100 ] && { echo "twine-ci: cannot mount the control dir" > /dev/console; systemctl poweroff --no-block; exit 1; }
    sleep 0.2
done
# Swap, as TMO's hosts have it: without swap, cold anonymous memory cannot be reclaimed at all.
# A fresh file every boot (the disk is a throw-away copy); fallocate'd files are valid swap on ext4.
swap=/swapfile
fallocate -l 2G "$swap" && chmod 600 "$swap" && mkswap "$swap" > /dev/null && swapon "$swap" \
    || echo "twine-ci: enabling swap on $swap failed" >> "$ctl/stderr.log"
state=$(systemctl is-system-running --wait)
{ echo "state=$state"; echo "uptime=$(cut -d' ' -f1 /proc/uptime)"; echo "swap=$(awk '/^SwapTotal:/ { print $2 " kB" }' /proc/meminfo)"; systemctl --failed --no-legend --plain; } > "$ctl/boot.tmp"
mv "$ctl/boot.tmp" "$ctl/boot"
rc=0
while read -r tag path; do
    mkdir -p "$path" && mount -t 9p -o "$opts" "$tag" "$path" \
        || { echo "twine-ci: mounting host share $tag at $path failed" >> "$ctl/stderr.log"; rc=125; }
done < "$ctl/shares"
if [ "$rc" -eq 0 ]; then
    timeout --kill-after=10 "$(cat "$ctl/timeout")" sh "$ctl/command.sh" >> "$ctl/stdout.log" 2>> "$ctl/stderr.log"
    rc=$?
fi
echo "$rc" > "$ctl/exit-code.tmp"
mv "$ctl/exit-code.tmp" "$ctl/exit-code"
sync
# The disk is a throw-away copy and the control dir is already synced: skip the orderly
# shutdown (several seconds under TCG) and power off at once.
systemctl poweroff --force --force
"#;

/// Units masked in the guest: nothing the tests use, and each costs boot time under TCG.
const MASKED: &[&str] = &[
    "modprobe@drm.service",
    "modprobe@efi_pstore.service",
    "modprobe@dm_mod.service",
    "sys-kernel-debug.mount",
    "sys-kernel-tracing.mount",
    "serial-getty@ttyS0.service",
    "getty@tty1.service",
    "e2scrub_reap.service",
];

const CI_UNIT: &str = "[Unit]
Description=twine guest tier: run the host's command and power off
Wants=ci.mount
After=ci.mount

[Service]
Type=simple
ExecStart=/usr/local/sbin/twine-ci-run
StandardOutput=journal+console
StandardError=journal+console

[Install]
WantedBy=multi-user.target
";

fn image_paths(kernel: &Kernel) -> (PathBuf, PathBuf) {
    let cache = rootfs::cache_dir();
    let base = format!("guest-{}-{}", debian::SUITE, kernel.version);
    (
        cache.join(format!("{base}.img")),
        cache.join(format!("{base}.stamp")),
    )
}

fn image_stamp(kernel: &Kernel) -> String {
    format!(
        "{}kernel={}\nimage-layout={IMAGE_LAYOUT}\ndisk-bytes={DISK_BYTES}\nmasked={}\n--- ci-run\n{CI_RUN}--- ci-run.service\n{CI_UNIT}",
        rootfs::stamp(),
        kernel.version,
        MASKED.join(",")
    )
}

/// The cached guest image for `kernel`, built from the rootfs when missing or out of date.
pub(super) fn ensure(kernel: &Kernel) -> Result<PathBuf> {
    let (image, stamp_path) = image_paths(kernel);
    let stamp = image_stamp(kernel);
    let current = || image.is_file() && fs::read_to_string(&stamp_path).is_ok_and(|s| s == stamp);
    if current() {
        return Ok(image);
    }
    let _lock = rootfs::lock("guest")?;
    if current() {
        return Ok(image);
    }
    let started = Instant::now();
    let base = rootfs::ensure(false)?;
    let cache = rootfs::cache_dir();
    rootfs::remove_stale(&cache, "guest-build.tmp-")?;
    let tmp = cache.join(format!("guest-build.tmp-{}", std::process::id()));
    let result = build(kernel, &base, &tmp).and_then(|built| {
        let _ = fs::remove_file(&stamp_path);
        fs::rename(&built, &image)
            .with_context(|| format!("renaming {} to {}", built.display(), image.display()))?;
        rootfs::write(&stamp_path, &stamp)
    });
    let _ = fs::remove_dir_all(&tmp);
    result?;
    eprintln!(
        "xtask: guest image {} built in {:.1} s",
        image.display(),
        started.elapsed().as_secs_f64()
    );
    Ok(image)
}

fn build(kernel: &Kernel, base: &Path, tmp: &Path) -> Result<PathBuf> {
    eprintln!(
        "xtask: building the guest image for kernel {} in {}",
        kernel.version,
        tmp.display()
    );
    fs::create_dir_all(tmp).with_context(|| format!("creating {}", tmp.display()))?;
    let root = tmp.join("root");
    run_tool(
        Command::new("cp")
            .args(["-a", "--reflink=auto"])
            .arg(base)
            .arg(&root),
    )?;
    // Relative to the rootfs: `lib` is a symlink to `usr/lib` (merged /usr).
    let modules = root.join("usr/lib/modules");
    fs::create_dir_all(&modules).with_context(|| format!("creating {}", modules.display()))?;
    run_tool(
        Command::new("cp")
            .args(["-a", "--reflink=auto"])
            .arg(Path::new("/lib/modules").join(&kernel.version))
            .arg(&modules),
    )?;
    rootfs::write(
        &root.join("etc/fstab"),
        &format!("/dev/vda / ext4 rw,relatime 0 1\nci /ci 9p {NINEP_OPTS},nofail 0 0\n"),
    )?;
    for dir in [
        "ci",
        "usr/local/sbin",
        "etc/systemd/system/multi-user.target.wants",
    ] {
        let dir = root.join(dir);
        fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    let runner = root.join("usr/local/sbin/twine-ci-run");
    rootfs::write(&runner, CI_RUN)?;
    fs::set_permissions(&runner, fs::Permissions::from_mode(0o755))
        .with_context(|| format!("chmod 755 {}", runner.display()))?;
    rootfs::write(&root.join("etc/systemd/system/ci-run.service"), CI_UNIT)?;
    let link = root.join("etc/systemd/system/multi-user.target.wants/ci-run.service");
    std::os::unix::fs::symlink("/etc/systemd/system/ci-run.service", &link)
        .with_context(|| format!("linking {}", link.display()))?;
    for unit in MASKED {
        let mask = root.join("etc/systemd/system").join(unit);
        std::os::unix::fs::symlink("/dev/null", &mask)
            .with_context(|| format!("masking {}", mask.display()))?;
    }
    let disk = tmp.join("disk.img");
    let file = fs::File::create(&disk).with_context(|| format!("creating {}", disk.display()))?;
    file.set_len(DISK_BYTES)
        .with_context(|| format!("growing {} to {} GiB", disk.display(), DISK_BYTES >> 30))?;
    drop(file);
    run_tool(
        Command::new("mkfs.ext4")
            .args(["-q", "-F", "-L", "root", "-d"])
            .arg(&root)
            .arg(&disk),
    )?;
    Ok(disk)
}

pub(super) fn run_tool(cmd: &mut Command) -> Result<()> {
    let status = cmd.status().with_context(|| format!("running {cmd:?}"))?;
    if !status.success() {
        bail!("{cmd:?} failed: {status}");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kernel_versions_sort_numerically() {
        let mut v = ["6.1.0-9-amd64", "6.1.0-56-amd64", "6.10.0-1-amd64"];
        v.sort_by_key(|v| version_key(v));
        assert_eq!(v, ["6.1.0-9-amd64", "6.1.0-56-amd64", "6.10.0-1-amd64"]);
    }

    #[test]
    fn the_runner_enables_swap_before_reporting_boot() {
        let swapon = CI_RUN.find("swapon").expect("swapon in the runner");
        let report = CI_RUN.find("> \"$ctl/boot.tmp\"").expect("boot report");
        assert!(swapon < report);
        assert!(CI_RUN.contains("SwapTotal"));
    }
}
