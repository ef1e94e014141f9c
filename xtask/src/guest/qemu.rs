//! One boot: a throw-away copy of the image under QEMU (TCG), the command script in the 9p
//! control dir, its output streamed back, and QEMU and the run dir gone on every path.

use std::fs;
use std::io::{Read as _, Seek as _, SeekFrom};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use nix::sys::signal::{SigSet, Signal};
use nix::sys::signalfd::{SfdFlags, SignalFd};

use super::image::{Kernel, run_tool};
use crate::rootfs;

/// Exit status when the guest never reported one (boot failure, hang, crash).
pub(super) const NO_REPORT: i32 = 125;

/// Time the guest gets to boot and to power off, on top of the command's own timeout.
const BOOT_AND_POWEROFF: Duration = Duration::from_secs(120);

/// Time the guest gets to power off after reporting, before QEMU is killed.
const POWEROFF_GRACE: Duration = Duration::from_secs(60);

/// What one boot runs, and with what.
pub(super) struct Boot<'a> {
    pub(super) kernel: &'a Kernel,
    pub(super) image: &'a Path,
    /// Host dirs mounted at the same paths in the guest.
    pub(super) shares: &'a [PathBuf],
    /// The command script (see `script.rs`).
    pub(super) script: String,
    /// Guest RAM, in QEMU's `-m` syntax.
    pub(super) memory: &'a str,
    /// Limit for the whole run: boot, command, power-off.
    pub(super) timeout: Duration,
    /// What the script runs, for messages ("the guest tests", "the command").
    pub(super) what: &'a str,
}

/// The command's share of the whole run's limit.
fn command_timeout(timeout: Duration) -> Duration {
    timeout
        .saturating_sub(BOOT_AND_POWEROFF)
        .max(Duration::from_secs(30))
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

/// Boot the guest, run the script, stream its output; returns the script's exit status, or
/// `NO_REPORT` when the guest never reported one.
pub(super) fn boot(spec: &Boot<'_>) -> Result<i32> {
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
            .arg(spec.image)
            .arg(&disk),
    )?;
    let share_lines: String = spec
        .shares
        .iter()
        .enumerate()
        .map(|(i, dir)| format!("s{i} {}\n", dir.display()))
        .collect();
    rootfs::write(&ctl.join("shares"), &share_lines)?;
    let command_timeout = command_timeout(spec.timeout);
    rootfs::write(
        &ctl.join("timeout"),
        &format!("{}\n", command_timeout.as_secs()),
    )?;
    rootfs::write(&ctl.join("command.sh"), &spec.script)?;
    let console = run.dir.join("console.log");

    let cpus = std::thread::available_parallelism().map_or(1, usize::from);
    let mut qemu = Command::new("qemu-system-x86_64");
    qemu.args(["-accel", "tcg,thread=multi", "-cpu", "max", "-smp"])
        .arg(cpus.to_string())
        .args([
            "-m",
            spec.memory,
            "-nographic",
            "-no-reboot",
            "-monitor",
            "none",
        ])
        .arg("-serial")
        .arg(format!("file:{}", console.display()))
        .arg("-kernel")
        .arg(&spec.kernel.vmlinuz)
        .arg("-initrd")
        .arg(&spec.kernel.initrd)
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
    for (i, dir) in spec.shares.iter().enumerate() {
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
            spec.memory,
            spec.timeout.as_secs(),
            run.dir.display()
        );
        run.qemu = Some(qemu.spawn().context("starting qemu-system-x86_64")?);
        supervise(&mut run, &ctl, spec.timeout, &signal_fd)
    })();
    let _ = old_mask.thread_set_mask();
    let outcome = result?;

    let code = match outcome.exit_code {
        Some(code @ (124 | 137)) => {
            eprintln!(
                "xtask: {} did not finish within {} s and were killed (a hang?); \
                 pass a larger --timeout if it is just slow",
                spec.what,
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

/// The guest's two output files and how far each has been copied to the host's stream.
struct Streams {
    stdout: (PathBuf, u64),
    stderr: (PathBuf, u64),
}

impl Streams {
    fn new(ctl: &Path) -> Self {
        Self {
            stdout: (ctl.join("stdout.log"), 0),
            stderr: (ctl.join("stderr.log"), 0),
        }
    }

    fn copy(&mut self) {
        let (path, offset) = &mut self.stdout;
        *offset = stream(path, *offset, &mut std::io::stdout().lock());
        let (path, offset) = &mut self.stderr;
        *offset = stream(path, *offset, &mut std::io::stderr().lock());
    }
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
    let mut streams = Streams::new(ctl);
    let mut reported: Option<(i32, Instant)> = None;
    let mut boot_seen = false;
    let mut fault = None;
    let qemu = run.qemu.as_mut().context("qemu not started")?;
    let status = loop {
        streams.copy();
        if !boot_seen && let Ok(boot) = fs::read_to_string(ctl.join("boot")) {
            boot_seen = true;
            let mut lines = boot.lines();
            let state = lines.next().unwrap_or_default();
            let uptime = lines.next().unwrap_or_default();
            let swap = lines.next().unwrap_or_default();
            eprintln!(
                "xtask: guest up after {:.1} s ({state}, {uptime} s, {swap})",
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
                streams.copy();
                bail!("guest run {reason}; QEMU killed and run dir removed");
            }
            fault = Some(reason);
            break status;
        }
        std::thread::sleep(Duration::from_millis(200));
    };
    run.qemu = None;
    streams.copy();
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

/// Copy what the guest appended to `path` since `offset` to `out`; returns the new offset.
fn stream(path: &Path, offset: u64, out: &mut dyn std::io::Write) -> u64 {
    let Ok(mut file) = fs::File::open(path) else {
        return offset;
    };
    let mut buf = Vec::new();
    if file.seek(SeekFrom::Start(offset)).is_err() || file.read_to_end(&mut buf).is_err() {
        return offset;
    }
    let _ = out.write_all(&buf);
    let _ = out.flush();
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
    fn the_command_gets_the_limit_minus_boot_but_at_least_30_s() {
        assert_eq!(
            command_timeout(Duration::from_secs(600)),
            Duration::from_secs(480)
        );
        assert_eq!(
            command_timeout(Duration::from_secs(60)),
            Duration::from_secs(30)
        );
    }

    #[test]
    fn streaming_copies_only_what_was_appended() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("out.log");
        let mut out = Vec::new();
        assert_eq!(
            stream(&path, 0, &mut out),
            0,
            "a missing file is no output yet"
        );
        fs::write(&path, "hi\n").expect("write");
        let offset = stream(&path, 0, &mut out);
        fs::write(&path, "hi\nthere\n").expect("write");
        let offset = stream(&path, offset, &mut out);
        assert_eq!(offset, 9);
        assert_eq!(out, b"hi\nthere\n");
    }
}
