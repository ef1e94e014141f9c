//! The guest tier: a Debian kernel with systemd as PID 1 under QEMU (TCG), running test binaries
//! built on the host. See `docs/GUEST.md` for the why and the measured costs.

use std::fs;
use std::io::{Read as _, Seek as _, SeekFrom, Write as _};
use std::os::unix::fs::PermissionsExt as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use nix::sys::signal::{SigSet, Signal};
use nix::sys::signalfd::{SfdFlags, SignalFd};

use crate::test_binaries::{self, TestBinary};
use crate::{debian, rootfs};

/// Host packages the tier needs. `qemu-utils/bookworm` downgrades the backports qemu-utils the
/// machine image ships, which otherwise Breaks bookworm's qemu-system-common.
pub(crate) const PACKAGES: &[&str] = &[
    "qemu-system-x86",
    "qemu-utils/bookworm",
    "linux-image-amd64",
];

/// Exit status when the guest never reported one (boot failure, hang, crash).
const NO_REPORT: i32 = 125;

/// Time the guest gets to boot and to power off, on top of the tests' own timeout.
const BOOT_AND_POWEROFF: Duration = Duration::from_secs(120);

/// Time the guest gets to power off after reporting, before QEMU is killed.
const POWEROFF_GRACE: Duration = Duration::from_secs(60);

/// 9p mount options used for every share (the control dir and the host dirs).
const NINEP_OPTS: &str = "trans=virtio,version=9p2000.L,msize=524288";

/// Bumped when the image's own files (below) change in a way the stamp would not see.
const IMAGE_LAYOUT: u32 = 1;

/// What `cargo xtask guest-test` was asked to do.
#[derive(Debug)]
pub(crate) struct GuestTest {
    /// Packages whose test binaries to search (`-p`); empty means the whole workspace.
    pub(crate) packages: Vec<String>,
    /// Arguments for the test binaries (filters, `--nocapture`, ...).
    pub(crate) test_args: Vec<String>,
    /// Limit for the whole guest run: boot, tests, power-off.
    pub(crate) timeout: Duration,
    /// Guest RAM, in QEMU's `-m` syntax.
    pub(crate) memory: String,
    /// Extra host directories to share at the same path.
    pub(crate) shares: Vec<PathBuf>,
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

/// Run the guest-only tests in a fresh guest; returns the exit status to exit with.
pub(crate) fn run(opts: &GuestTest) -> Result<i32> {
    if !debian::is_root() {
        bail!(
            "the guest tier needs root (apt packages, debootstrap, the guest image); run `cargo xtask guest-test` as root"
        );
    }
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

    let phase = Instant::now();
    let mut packages = PACKAGES.to_vec();
    packages.push("debootstrap");
    debian::ensure_packages(&packages)?;
    let kernel = Kernel::newest()?;
    let image = ensure_image(&kernel)?;
    eprintln!(
        "xtask: packages, kernel {} and guest image ready in {:.1} s",
        kernel.version,
        phase.elapsed().as_secs_f64()
    );

    let phase = Instant::now();
    let workspace = Workspace::locate()?;
    let mut shares = vec![workspace.root.clone(), workspace.target_dir.clone()];
    shares.extend(toolchain_dirs());
    shares.extend(opts.shares.iter().cloned());
    let shares = outermost(shares)?;
    let code = boot_and_run(opts, &kernel, &image, &shares, &binaries)?;
    eprintln!(
        "xtask: guest boot + tests + power-off took {:.1} s (guest tier total {:.1} s), exit status {code}",
        phase.elapsed().as_secs_f64(),
        started.elapsed().as_secs_f64()
    );
    Ok(code)
}

/// The guest kernel: the newest Debian `/boot/vmlinuz-*-amd64` and its initrd.
#[derive(Debug)]
struct Kernel {
    version: String,
    vmlinuz: PathBuf,
    initrd: PathBuf,
}

impl Kernel {
    fn newest() -> Result<Self> {
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
const CI_RUN: &str = r#"#!/bin/sh
# twine guest tier: wait for systemd, mount the host's dirs, run the command, report, power off.
ctl=/ci
opts=trans=virtio,version=9p2000.L,msize=524288
i=0
until mountpoint -q "$ctl"; do
    mount -t 9p -o "$opts" ci "$ctl" 2>/dev/null && break
    i=$((i + 1)); [ "$i" -ge 100 ] && { echo "twine-ci: cannot mount the control dir" > /dev/console; systemctl poweroff --no-block; exit 1; }
    sleep 0.2
done
state=$(systemctl is-system-running --wait)
{ echo "state=$state"; echo "uptime=$(cut -d' ' -f1 /proc/uptime)"; systemctl --failed --no-legend --plain; } > "$ctl/boot.tmp"
mv "$ctl/boot.tmp" "$ctl/boot"
rc=0
while read -r tag path; do
    mkdir -p "$path" && mount -t 9p -o "$opts" "$tag" "$path" \
        || { echo "twine-ci: mounting host share $tag at $path failed" >> "$ctl/output.log"; rc=125; }
done < "$ctl/shares"
if [ "$rc" -eq 0 ]; then
    timeout --kill-after=10 "$(cat "$ctl/timeout")" sh "$ctl/command.sh" >> "$ctl/output.log" 2>&1
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
        "{}kernel={}\nimage-layout={IMAGE_LAYOUT}\nmasked={}\n--- ci-run\n{CI_RUN}--- ci-run.service\n{CI_UNIT}",
        rootfs::stamp(),
        kernel.version,
        MASKED.join(",")
    )
}

/// The cached guest image for `kernel`, built from the rootfs when missing or out of date.
fn ensure_image(kernel: &Kernel) -> Result<PathBuf> {
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
    let result = build_image(kernel, &base, &tmp).and_then(|built| {
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

fn build_image(kernel: &Kernel, base: &Path, tmp: &Path) -> Result<PathBuf> {
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
    file.set_len(3 << 30)
        .with_context(|| format!("growing {} to 3 GiB", disk.display()))?;
    drop(file);
    run_tool(
        Command::new("mkfs.ext4")
            .args(["-q", "-F", "-L", "root", "-d"])
            .arg(&root)
            .arg(&disk),
    )?;
    Ok(disk)
}

fn run_tool(cmd: &mut Command) -> Result<()> {
    let status = cmd.status().with_context(|| format!("running {cmd:?}"))?;
    if !status.success() {
        bail!("{cmd:?} failed: {status}");
    }
    Ok(())
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
fn toolchain_dirs() -> Vec<PathBuf> {
    let home = std::env::var_os("HOME")
        .map(PathBuf::from)
        .unwrap_or_default();
    [("CARGO_HOME", ".cargo"), ("RUSTUP_HOME", ".rustup")]
        .into_iter()
        .map(|(var, default)| {
            std::env::var_os(var)
                .map(PathBuf::from)
                .unwrap_or_else(|| home.join(default))
        })
        .filter(|d| d.is_dir())
        .collect()
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

fn sh_quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', r"'\''"))
}

/// The shell script the guest runs: every selected binary with only its guest tests.
fn command_script(binaries: &[TestBinary], test_args: &[String]) -> String {
    let mut script = String::from("#!/bin/sh\n");
    let mut path = String::new();
    for (var, default) in [("CARGO_HOME", ".cargo"), ("RUSTUP_HOME", ".rustup")] {
        if let Some(dir) = toolchain_dirs().into_iter().find(|d| d.ends_with(default)) {
            script.push_str(&format!(
                "export {var}={}\n",
                sh_quote(&dir.to_string_lossy())
            ));
            if var == "CARGO_HOME" {
                path = format!("{}:", dir.join("bin").to_string_lossy());
            }
        }
    }
    script.push_str(&format!(
        "export PATH={}/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin\n",
        sh_quote(&path)
    ));
    script.push_str("export HOME=/root TWINE_GUEST=1\n");
    for var in [
        "TWINE_REQUIRE_REALSYS",
        "RUST_BACKTRACE",
        "RUST_LOG",
        "RUST_TEST_THREADS",
    ] {
        if let Ok(value) = std::env::var(var) {
            script.push_str(&format!("export {var}={}\n", sh_quote(&value)));
        }
    }
    script.push_str("rc=0\n");
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

/// A run's directory and its QEMU; dropping it kills QEMU (if still there) and removes the dir.
struct Run {
    dir: PathBuf,
    qemu: Option<Child>,
}

impl Drop for Run {
    fn drop(&mut self) {
        if let Some(mut qemu) = self.qemu.take() {
            let _ = qemu.kill();
            let _ = qemu.wait();
        }
        let _ = fs::remove_dir_all(&self.dir);
    }
}

/// Remove run dirs left by harnesses that died (their pid is gone).
fn remove_dead_runs(runs: &Path) -> Result<()> {
    fs::create_dir_all(runs).with_context(|| format!("creating {}", runs.display()))?;
    for entry in fs::read_dir(runs).with_context(|| format!("reading {}", runs.display()))? {
        let entry = entry.with_context(|| format!("reading {}", runs.display()))?;
        let name = entry.file_name().to_string_lossy().into_owned();
        let alive = name
            .strip_prefix("run-")
            .and_then(|pid| pid.parse::<u32>().ok())
            .is_some_and(|pid| Path::new("/proc").join(pid.to_string()).exists());
        if !alive {
            eprintln!(
                "xtask: removing leftover run dir {}",
                entry.path().display()
            );
            let _ = fs::remove_dir_all(entry.path());
        }
    }
    Ok(())
}

fn boot_and_run(
    opts: &GuestTest,
    kernel: &Kernel,
    image: &Path,
    shares: &[PathBuf],
    binaries: &[TestBinary],
) -> Result<i32> {
    let runs = rootfs::cache_dir().join("runs");
    remove_dead_runs(&runs)?;
    let mut run = Run {
        dir: runs.join(format!("run-{}", std::process::id())),
        qemu: None,
    };
    let ctl = run.dir.join("ctl");
    fs::create_dir_all(&ctl).with_context(|| format!("creating {}", ctl.display()))?;
    let disk = run.dir.join("disk.img");
    run_tool(
        Command::new("cp")
            .args(["--reflink=auto", "--sparse=always"])
            .arg(image)
            .arg(&disk),
    )?;
    let share_lines: String = shares
        .iter()
        .enumerate()
        .map(|(i, dir)| format!("s{i} {}\n", dir.display()))
        .collect();
    rootfs::write(&ctl.join("shares"), &share_lines)?;
    let command_timeout = opts
        .timeout
        .saturating_sub(BOOT_AND_POWEROFF)
        .max(Duration::from_secs(30));
    rootfs::write(
        &ctl.join("timeout"),
        &format!("{}\n", command_timeout.as_secs()),
    )?;
    rootfs::write(
        &ctl.join("command.sh"),
        &command_script(binaries, &opts.test_args),
    )?;
    let console = run.dir.join("console.log");

    let cpus = std::thread::available_parallelism().map_or(1, usize::from);
    let mut qemu = Command::new("qemu-system-x86_64");
    qemu.args(["-accel", "tcg,thread=multi", "-cpu", "max", "-smp"])
        .arg(cpus.to_string())
        .args([
            "-m",
            &opts.memory,
            "-nographic",
            "-no-reboot",
            "-monitor",
            "none",
        ])
        .arg("-serial")
        .arg(format!("file:{}", console.display()))
        .arg("-kernel")
        .arg(&kernel.vmlinuz)
        .arg("-initrd")
        .arg(&kernel.initrd)
        .args([
            "-append",
            "root=/dev/vda rw console=ttyS0 init=/lib/systemd/systemd panic=-1 quiet",
        ])
        .arg("-drive")
        .arg(format!(
            "file={},format=raw,if=virtio,cache=unsafe",
            disk.display()
        ))
        .arg("-virtfs")
        .arg(format!(
            "local,path={},mount_tag=ci,security_model=none,id=ci",
            ctl.display()
        ));
    for (i, dir) in shares.iter().enumerate() {
        qemu.arg("-virtfs").arg(format!(
            "local,path={},mount_tag=s{i},security_model=none,id=s{i},readonly=off",
            dir.display()
        ));
    }
    let qemu_log = run.dir.join("qemu.log");
    let qemu_log_file =
        fs::File::create(&qemu_log).with_context(|| format!("creating {}", qemu_log.display()))?;
    qemu.stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(qemu_log_file);

    // Block the terminating signals while QEMU runs (it inherits the mask), and take them
    // through a signalfd instead, so Ctrl-C or a CI timeout still kills QEMU and removes the
    // run dir.
    let mut signals = SigSet::empty();
    for signal in [Signal::SIGINT, Signal::SIGTERM, Signal::SIGHUP] {
        signals.add(signal);
    }
    let old_mask = signals
        .thread_swap_mask(nix::sys::signal::SigmaskHow::SIG_BLOCK)
        .context("blocking signals")?;
    let result = (|| {
        let signal_fd =
            SignalFd::with_flags(&signals, SfdFlags::SFD_NONBLOCK | SfdFlags::SFD_CLOEXEC)
                .context("creating a signalfd")?;
        eprintln!(
            "xtask: booting the guest (TCG, {cpus} vCPUs, {} RAM, limit {} s); run dir {}",
            opts.memory,
            opts.timeout.as_secs(),
            run.dir.display()
        );
        run.qemu = Some(qemu.spawn().context("starting qemu-system-x86_64")?);
        supervise(&mut run, &ctl, opts.timeout, &signal_fd)
    })();
    let _ = old_mask.thread_set_mask();
    let outcome = result?;

    let code = match outcome.exit_code {
        Some(code @ (124 | 137)) => {
            eprintln!(
                "xtask: the guest tests did not finish within {} s and were killed (a hanging test?); \
                 pass a larger --timeout if they are just slow",
                command_timeout.as_secs()
            );
            code
        }
        Some(code) => code,
        None => {
            let why = outcome.fault.unwrap_or_else(|| "QEMU exited".to_owned());
            let booted = fs::read_to_string(ctl.join("boot")).ok();
            eprintln!(
                "xtask: the guest did not report an exit status: {why}; {}",
                if booted.is_some() {
                    "it booted, then stopped reporting"
                } else {
                    "it never finished booting"
                }
            );
            print_tail("QEMU stderr", &qemu_log, 20);
            print_tail("guest console", &console, 40);
            NO_REPORT
        }
    };
    if let Some(status) = outcome.qemu_status
        && !status.success()
        && outcome.exit_code.is_some()
    {
        eprintln!("xtask: note: QEMU exited with {status} after the guest reported");
    }
    drop(run);
    Ok(code)
}

struct Outcome {
    exit_code: Option<i32>,
    fault: Option<String>,
    qemu_status: Option<std::process::ExitStatus>,
}

/// Stream the guest's output until QEMU exits, killing it at the deadline, on a signal, or when
/// it does not power off after reporting.
fn supervise(
    run: &mut Run,
    ctl: &Path,
    timeout: Duration,
    signal_fd: &SignalFd,
) -> Result<Outcome> {
    let started = Instant::now();
    let output = ctl.join("output.log");
    let mut offset = 0;
    let mut reported: Option<(i32, Instant)> = None;
    let mut boot_seen = false;
    let mut fault = None;
    let qemu = run.qemu.as_mut().context("qemu not started")?;
    let status = loop {
        offset = stream(&output, offset);
        if !boot_seen && let Ok(boot) = fs::read_to_string(ctl.join("boot")) {
            boot_seen = true;
            let mut lines = boot.lines();
            let state = lines.next().unwrap_or_default();
            let uptime = lines.next().unwrap_or_default();
            eprintln!(
                "xtask: guest up after {:.1} s ({state}, {uptime} s)",
                started.elapsed().as_secs_f64()
            );
            for failed in lines.filter(|l| !l.trim().is_empty()) {
                eprintln!("xtask: guest failed unit: {failed}");
            }
        }
        if reported.is_none()
            && let Ok(code) = fs::read_to_string(ctl.join("exit-code"))
        {
            let code = code.trim().parse().unwrap_or(NO_REPORT);
            eprintln!(
                "xtask: guest reported exit status {code} after {:.1} s; waiting for power-off",
                started.elapsed().as_secs_f64()
            );
            reported = Some((code, Instant::now()));
        }
        if let Some(status) = qemu.try_wait().context("waiting for qemu")? {
            break Some(status);
        }
        let kill_reason = if let Ok(Some(info)) = signal_fd.read_signal() {
            Some(format!("interrupted by signal {}", info.ssi_signo))
        } else if started.elapsed() > timeout {
            Some(format!(
                "no report within the limit of {} s",
                timeout.as_secs()
            ))
        } else if let Some((_, at)) = reported {
            (at.elapsed() > POWEROFF_GRACE).then(|| {
                format!(
                    "the guest did not power off within {} s",
                    POWEROFF_GRACE.as_secs()
                )
            })
        } else {
            None
        };
        if let Some(reason) = kill_reason {
            eprintln!("xtask: killing QEMU: {reason}");
            let _ = qemu.kill();
            let status = qemu.wait().ok();
            if reason.starts_with("interrupted") {
                run.qemu = None;
                stream(&output, offset);
                bail!("guest tier {reason}; QEMU killed and run dir removed");
            }
            fault = Some(reason);
            break status;
        }
        std::thread::sleep(Duration::from_millis(200));
    };
    run.qemu = None;
    stream(&output, offset);
    if reported.is_none()
        && let Ok(code) = fs::read_to_string(ctl.join("exit-code"))
    {
        reported = Some((code.trim().parse().unwrap_or(NO_REPORT), Instant::now()));
    }
    Ok(Outcome {
        exit_code: reported.map(|(code, _)| code),
        fault,
        qemu_status: status,
    })
}

/// Copy what the guest appended to `path` since `offset` to stdout; returns the new offset.
fn stream(path: &Path, offset: u64) -> u64 {
    let Ok(mut file) = fs::File::open(path) else {
        return offset;
    };
    let mut buf = Vec::new();
    if file.seek(SeekFrom::Start(offset)).is_err() || file.read_to_end(&mut buf).is_err() {
        return offset;
    }
    let mut stdout = std::io::stdout().lock();
    let _ = stdout.write_all(&buf);
    let _ = stdout.flush();
    offset + buf.len() as u64
}

fn print_tail(what: &str, path: &Path, lines: usize) {
    let text = fs::read(path).unwrap_or_default();
    if text.is_empty() {
        return;
    }
    let text = String::from_utf8_lossy(&text);
    let all: Vec<&str> = text.lines().collect();
    let tail = &all[all.len().saturating_sub(lines)..];
    eprintln!(
        "xtask: --- last {} lines of the {what} ({}) ---",
        tail.len(),
        path.display()
    );
    for line in tail {
        eprintln!("{line}");
    }
    eprintln!("xtask: --- end of the {what} ---");
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

    #[test]
    fn quoting_survives_single_quotes() {
        assert_eq!(sh_quote("a'b"), r"'a'\''b'");
    }
}
