//! Forking the container's PID 1, one of the two places in twine that need `unsafe`
//! (the other is `systemd::connect`, which joins the container's PID namespace).
//!
//! The agent runs a tokio runtime with many threads, and a new PID namespace
//! takes effect only for children of the process that unshared it, so PID 1
//! must come from a fork. The alternative crates do not fit: `std::process`
//! cannot fork twice, and libcontainer (youki) is an OCI runtime built around
//! config.json, hooks and seccomp rather than systemd as PID 1 over an overlay.
//!
//! Sequence: the agent forks an intermediate process, which moves itself into
//! the container's cgroup, unshares the namespaces and forks again. The
//! grandchild is PID 1 of the new PID namespace: it runs the prepared mount
//! plan, pivots into the new root, sets the hostname and execs systemd. The
//! intermediate reports the grandchild's host pid through a pipe and exits.
//!
//! Everything the children need (paths, argv, environment, the mount plan) is
//! built before the fork. The children make system calls only; the few small
//! allocations inside nix wrappers are safe after fork with glibc, whose malloc
//! resets its locks in the child (the reason a plain `fork` is used, not a raw
//! `clone`, which would skip glibc's fork handlers). A failing step is reported
//! as `(step index, errno)` through a close-on-exec pipe: end of file with no
//! data means `execve` succeeded.
#![allow(unsafe_code)]

use std::ffi::{CStr, CString};
use std::os::fd::OwnedFd;

use nix::errno::Errno;
use nix::fcntl::{OFlag, open};
use nix::mount::{MntFlags, MsFlags, mount, umount2};
use nix::sched::{CloneFlags, unshare};
use nix::sys::signal::{SigSet, SigmaskHow, sigprocmask};
use nix::sys::stat::Mode;
use nix::sys::wait::{WaitStatus, waitpid};
use nix::unistd::{ForkResult, Pid, chdir, execve, fork, mkdir, pipe2, read, sethostname, write};

/// One step of the mount plan, run by PID 1 before `pivot_root`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Step {
    /// `mount(2)`.
    Mount {
        /// What the step is for, in error messages.
        what: &'static str,
        /// Source (`None` for remounts and propagation changes).
        source: Option<CString>,
        /// Mount point.
        target: CString,
        /// File system type.
        fstype: Option<CString>,
        /// Flags.
        flags: MsFlags,
        /// Options.
        data: Option<CString>,
    },
    /// `mkdir(2)`; an existing directory is fine.
    Mkdir(CString),
    /// Creates an empty file to bind a file onto; an existing one is fine.
    Touch(CString),
    /// `symlink(2)`: (target, link).
    Symlink(CString, CString),
}

impl Step {
    /// A short description for error messages.
    pub(crate) fn describe(&self) -> String {
        let lossy = |c: &CStr| c.to_string_lossy().into_owned();
        match self {
            Step::Mount { what, target, .. } => format!("mount {what} at {}", lossy(target)),
            Step::Mkdir(p) => format!("mkdir {}", lossy(p)),
            Step::Touch(p) => format!("create {}", lossy(p)),
            Step::Symlink(to, link) => format!("symlink {} -> {}", lossy(link), lossy(to)),
        }
    }
}

/// Everything the children need, built before the fork.
#[derive(Debug)]
pub(crate) struct Plan {
    /// The container cgroup's `cgroup.procs` on the host.
    pub(crate) cgroup_procs: CString,
    /// Namespaces to unshare.
    pub(crate) namespaces: CloneFlags,
    /// The mount plan.
    pub(crate) steps: Vec<Step>,
    /// The new root (the overlay's merged directory).
    pub(crate) new_root: CString,
    /// `new_root` + the old-root directory, for `pivot_root`.
    pub(crate) put_old: CString,
    /// The old root's path after the pivot.
    pub(crate) old_root_inside: CString,
    /// Hostname.
    pub(crate) hostname: std::ffi::OsString,
    /// systemd inside the new root.
    pub(crate) exe: CString,
    /// argv.
    pub(crate) argv: Vec<CString>,
    /// The environment.
    pub(crate) env: Vec<CString>,
}

/// Where a failure happened, beyond the mount steps.
pub(crate) const STEP_CGROUP: u32 = u32::MAX;
/// `unshare(2)`.
pub(crate) const STEP_UNSHARE: u32 = u32::MAX - 1;
/// The second fork.
pub(crate) const STEP_FORK: u32 = u32::MAX - 2;
/// `pivot_root(2)` and unmounting the old root.
pub(crate) const STEP_PIVOT: u32 = u32::MAX - 3;
/// `sethostname(2)`.
pub(crate) const STEP_HOSTNAME: u32 = u32::MAX - 4;
/// `execve(2)`.
pub(crate) const STEP_EXEC: u32 = u32::MAX - 5;
/// Dropping capabilities from the bounding set.
pub(crate) const STEP_CAPS: u32 = u32::MAX - 6;

/// Capabilities no container keeps, as nspawn does not give them either:
/// loading kernel modules and raw I/O (ioperm, /dev/mem). Without them
/// systemd skips its module-loading units at boot, which also makes the boot
/// shorter.
const DROPPED_CAPS: [i32; 2] = [
    16, // CAP_SYS_MODULE
    17, // CAP_SYS_RAWIO
];

/// A failed step inside the children.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct ChildFailure {
    /// The step index, or one of the `STEP_*` constants.
    pub(crate) step: u32,
    /// The error.
    pub(crate) errno: Errno,
}

/// Forks PID 1 per `plan` and returns its host pid once `execve` has succeeded.
pub(crate) fn spawn(plan: &Plan) -> Result<Pid, SpawnError> {
    let (pid_read, pid_write) = pipe2(OFlag::O_CLOEXEC).map_err(SpawnError::Pipe)?;
    let (err_read, err_write) = pipe2(OFlag::O_CLOEXEC).map_err(SpawnError::Pipe)?;
    // SAFETY: the child runs `intermediate`, which only makes system calls on
    // data prepared above and leaves with `_exit`; see the module docs.
    match unsafe { fork() }.map_err(SpawnError::Fork)? {
        ForkResult::Child => {
            drop(pid_read);
            drop(err_read);
            intermediate(plan, &pid_write, &err_write)
        }
        ForkResult::Parent { child } => {
            drop(pid_write);
            drop(err_write);
            let status = waitpid(child, None).map_err(SpawnError::Wait)?;
            let mut pid_bytes = [0u8; 4];
            let got = read_full(&pid_read, &mut pid_bytes);
            let mut err_bytes = [0u8; 8];
            let failed = read_full(&err_read, &mut err_bytes);
            if failed == 8 {
                let step =
                    u32::from_ne_bytes([err_bytes[0], err_bytes[1], err_bytes[2], err_bytes[3]]);
                let errno =
                    i32::from_ne_bytes([err_bytes[4], err_bytes[5], err_bytes[6], err_bytes[7]]);
                return Err(SpawnError::Child(ChildFailure {
                    step,
                    errno: Errno::from_raw(errno),
                }));
            }
            if got != 4 || !matches!(status, WaitStatus::Exited(_, 0)) {
                return Err(SpawnError::Intermediate(format!("{status:?}")));
            }
            Ok(Pid::from_raw(i32::from_ne_bytes(pid_bytes)))
        }
    }
}

/// Why PID 1 could not be started.
#[derive(Debug)]
pub(crate) enum SpawnError {
    /// A pipe could not be made.
    Pipe(Errno),
    /// The first fork failed.
    Fork(Errno),
    /// Waiting for the intermediate process failed.
    Wait(Errno),
    /// The intermediate process died without a report.
    Intermediate(String),
    /// A step inside the children failed.
    Child(ChildFailure),
}

/// Reads until `buf` is full or end of file; returns the bytes read.
fn read_full(fd: &OwnedFd, buf: &mut [u8]) -> usize {
    let mut got = 0;
    while got < buf.len() {
        match read(fd, &mut buf[got..]) {
            Ok(0) => break,
            Ok(n) => got += n,
            Err(Errno::EINTR) => {}
            Err(_) => break,
        }
    }
    got
}

/// Reports a failure and leaves without running destructors or atexit handlers.
fn fail(err: &OwnedFd, step: u32, errno: Errno) -> ! {
    let mut bytes = [0u8; 8];
    bytes[..4].copy_from_slice(&step.to_ne_bytes());
    bytes[4..].copy_from_slice(&(errno as i32).to_ne_bytes());
    let _ = write(err, &bytes);
    // SAFETY: `_exit` is async-signal-safe and ends the process at once.
    unsafe { nix::libc::_exit(1) }
}

fn intermediate(plan: &Plan, pid_out: &OwnedFd, err: &OwnedFd) -> ! {
    // Into the container's cgroup first, so the cgroup namespace is rooted there.
    match open(
        plan.cgroup_procs.as_c_str(),
        OFlag::O_WRONLY | OFlag::O_CLOEXEC,
        Mode::empty(),
    ) {
        Ok(fd) => {
            if let Err(e) = write(&fd, b"0") {
                fail(err, STEP_CGROUP, e);
            }
        }
        Err(e) => fail(err, STEP_CGROUP, e),
    }
    if let Err(e) = unshare(plan.namespaces) {
        fail(err, STEP_UNSHARE, e);
    }
    // SAFETY: as for the first fork; the grandchild only makes system calls.
    match unsafe { fork() } {
        Err(e) => fail(err, STEP_FORK, e),
        Ok(ForkResult::Child) => pid1(plan, err),
        Ok(ForkResult::Parent { child }) => {
            let _ = write(pid_out, &child.as_raw().to_ne_bytes());
            // SAFETY: see `fail`.
            unsafe { nix::libc::_exit(0) }
        }
    }
}

fn pid1(plan: &Plan, err: &OwnedFd) -> ! {
    for (i, step) in plan.steps.iter().enumerate() {
        let index = u32::try_from(i).unwrap_or(STEP_EXEC - 1);
        if let Err(e) = run_step(step) {
            fail(err, index, e);
        }
    }
    let pivot = || -> Result<(), Errno> {
        chdir(plan.new_root.as_c_str())?;
        nix::unistd::pivot_root(plan.new_root.as_c_str(), plan.put_old.as_c_str())?;
        chdir(c"/")?;
        umount2(plan.old_root_inside.as_c_str(), MntFlags::MNT_DETACH)?;
        nix::unistd::unlinkat(
            nix::fcntl::AT_FDCWD,
            plan.old_root_inside.as_c_str(),
            nix::unistd::UnlinkatFlags::RemoveDir,
        )
    };
    if let Err(e) = pivot() {
        fail(err, STEP_PIVOT, e);
    }
    if let Err(e) = sethostname(&plan.hostname) {
        fail(err, STEP_HOSTNAME, e);
    }
    for cap in DROPPED_CAPS {
        // SAFETY: prctl(PR_CAPBSET_DROP) takes integers only.
        let rc = unsafe {
            nix::libc::prctl(
                nix::libc::PR_CAPBSET_DROP,
                nix::libc::c_ulong::from(cap.unsigned_abs()),
                0,
                0,
                0,
            )
        };
        if let Err(e) = Errno::result(rc) {
            fail(err, STEP_CAPS, e);
        }
    }
    // A clean signal mask, and no descriptor of the agent's leaks into the
    // container: everything from 3 up is closed on exec (the error pipe too,
    // which tells the agent that exec succeeded).
    let _ = sigprocmask(SigmaskHow::SIG_SETMASK, Some(&SigSet::empty()), None);
    // SAFETY: close_range only changes descriptor flags.
    unsafe {
        nix::libc::close_range(
            3,
            nix::libc::c_uint::MAX,
            nix::libc::CLOSE_RANGE_CLOEXEC.cast_signed(),
        );
    }
    let e = match execve(plan.exe.as_c_str(), &plan.argv, &plan.env) {
        Err(e) => e,
        Ok(never) => match never {},
    };
    fail(err, STEP_EXEC, e)
}

fn run_step(step: &Step) -> Result<(), Errno> {
    match step {
        Step::Mount {
            source,
            target,
            fstype,
            flags,
            data,
            ..
        } => mount(
            source.as_deref(),
            target.as_c_str(),
            fstype.as_deref(),
            *flags,
            data.as_deref(),
        ),
        Step::Mkdir(path) => match mkdir(path.as_c_str(), Mode::from_bits_truncate(0o755)) {
            Ok(()) | Err(Errno::EEXIST) => Ok(()),
            Err(e) => Err(e),
        },
        Step::Touch(path) => {
            match open(
                path.as_c_str(),
                OFlag::O_CREAT | OFlag::O_WRONLY | OFlag::O_CLOEXEC,
                Mode::from_bits_truncate(0o644),
            ) {
                Ok(_fd) => Ok(()),
                Err(e) => Err(e),
            }
        }
        Step::Symlink(to, link) => {
            match nix::unistd::symlinkat(to.as_c_str(), nix::fcntl::AT_FDCWD, link.as_c_str()) {
                Ok(()) | Err(Errno::EEXIST) => Ok(()),
                Err(e) => Err(e),
            }
        }
    }
}

/// `SIGRTMIN+n`, which nix's `Signal` cannot name.
pub(crate) fn sigrtmin_plus(n: i32) -> i32 {
    nix::libc::SIGRTMIN() + n
}

/// Sends a signal by number (realtime signals included).
pub(crate) fn signal(pid: Pid, signo: i32) -> Result<(), Errno> {
    // SAFETY: kill(2) has no memory-safety preconditions.
    Errno::result(unsafe { nix::libc::kill(pid.as_raw(), signo) }).map(drop)
}
