//! The container: namespaces, an overlay root, `pivot_root`, the mounts of
//! systemd's container interface, a delegated cgroup2 subtree, and systemd as
//! PID 1 with readiness through `NOTIFY_SOCKET`; shutdown with `SIGRTMIN+3` and
//! a deadline, then `SIGKILL` through `cgroup.kill`; cleanup on every path.
//!
//! Written with nix rather than on top of nspawn or runc; the `spawn` module says why a
//! fork is needed; it and `systemd::connect` are the two places that use `unsafe`.
//!
//! Every mount is made inside the container's own mount namespace (private
//! propagation), so none is ever visible on the host and all of them go away
//! with the container's last process. What the agent leaves on the host is
//! the cgroup and the scratch directory, and [`Container::shutdown`] (or the
//! failure path of [`Container::start`]) removes both.

mod cgroup;
mod config;
mod console;
mod error;
mod mounts;
mod notify;
mod rootfs;
mod spawn;

use std::ffi::{CString, OsString};
use std::fs;
use std::os::unix::ffi::OsStrExt as _;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use nix::sched::CloneFlags;
use nix::unistd::Pid;
use serde::{Deserialize, Serialize};

pub use config::{Bind, ContainerConfig, Network, SeedFile};
pub use error::ContainerError;
pub use mounts::NOTIFY_INSIDE;

use config::check_name;

/// What identifies a running container across agent restarts.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ContainerRecord {
    /// The container's name.
    pub name: String,
    /// PID 1's pid on the host.
    pub pid: i32,
    /// PID 1's start time (clock ticks after boot, `/proc/PID/stat` field 22),
    /// so a reused pid is never mistaken for the container.
    pub start_time: u64,
    /// The container's cgroup, an absolute host path.
    pub cgroup: PathBuf,
    /// The scratch directory.
    pub scratch: PathBuf,
    /// The container's machine id (its journal directory's name).
    pub machine_id: String,
}

/// Where the time of one [`Container::start`] went, for benchmarks and
/// diagnostics (`twine-agent/benches/start.rs`). The three phases are
/// consecutive and add up to the whole start.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StartPhases {
    /// From the call to just before the fork: checks, the cgroup, the
    /// scratch and overlay directories, seed files, the notify socket, the
    /// console and the mount plan.
    pub prepare: Duration,
    /// From the fork until `execve` of systemd succeeded (cgroup join,
    /// `unshare`, the mount plan, `pivot_root`), as the parent sees it.
    pub spawn: Duration,
    /// From `execve` until systemd's `READY=1` (its whole boot).
    pub boot: Duration,
}

impl StartPhases {
    /// The whole start: the sum of the phases.
    pub fn total(&self) -> Duration {
        self.prepare + self.spawn + self.boot
    }
}

/// A running container with systemd as PID 1.
#[derive(Debug)]
pub struct Container {
    record: ContainerRecord,
    /// Set by [`Container::start`], `None` after a reattach.
    phases: Option<StartPhases>,
    /// Stops the console drain thread (only the agent that booted the
    /// container holds the console).
    console_stop: Option<Arc<AtomicBool>>,
}

impl Drop for Container {
    fn drop(&mut self) {
        if let Some(stop) = &self.console_stop {
            stop.store(true, Ordering::Relaxed);
        }
    }
}

/// How a container ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Shutdown {
    /// systemd powered off within the deadline.
    Clean,
    /// The deadline passed; the rest was killed through `cgroup.kill`.
    Killed,
}
fn cstring(path: &Path) -> Result<CString, ContainerError> {
    CString::new(path.as_os_str().as_bytes()).map_err(|_| ContainerError::BadPath {
        path: path.into(),
        reason: "contains a NUL byte",
    })
}

/// `(state, start time)` of a process from `/proc/PID/stat`.
fn proc_stat(pid: i32) -> Option<(char, u64)> {
    let text = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command is in parentheses and may hold spaces: split after the last ')'.
    let rest = &text[text.rfind(')')? + 2..];
    let mut fields = rest.split_whitespace();
    let state = fields.next()?.chars().next()?;
    // Field 22 overall is the 20th after the command.
    let start = fields.nth(18)?.parse().ok()?;
    Some((state, start))
}

/// Removes what a failed or finished container left: processes, cgroup, scratch.
fn clean_up(cgroup: &Path, scratch: &Path, kill_deadline: Duration) -> Result<(), ContainerError> {
    let killed = cgroup::kill(cgroup, kill_deadline);
    let removed = cgroup::remove_tree(cgroup);
    let scratch_removed = match fs::remove_dir_all(scratch) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(source) => Err(ContainerError::Io {
            what: "removing the container's scratch directory",
            path: scratch.into(),
            source,
        }),
    };
    killed.and(removed).and(scratch_removed)
}

/// How long `cgroup.kill` may take to empty a cgroup.
const KILL_DEADLINE: Duration = Duration::from_secs(10);

impl Container {
    /// Boots a container per `config` and returns once systemd inside has sent
    /// `READY=1`. On any failure, everything made so far is removed again and
    /// the error says which step failed.
    pub fn start(config: &ContainerConfig) -> Result<Container, ContainerError> {
        let called = Instant::now();
        let uid = nix::unistd::geteuid().as_raw();
        if uid != 0 {
            return Err(ContainerError::NotRoot { uid });
        }
        check_name(&config.name)?;
        for path in [&config.rootfs, &config.scratch] {
            if !path.is_absolute() {
                return Err(ContainerError::BadPath {
                    path: path.clone(),
                    reason: "must be absolute (the container pivots into it)",
                });
            }
        }
        let systemd = rootfs::systemd_in(&config.rootfs)?;
        let cgroup_parent = &config.cgroup_parent;
        if !rootfs::confined(cgroup_parent) {
            return Err(ContainerError::Unconfined {
                what: "cgroup parent",
                path: cgroup_parent.clone(),
            });
        }
        let mount = cgroup::cgroup2_mount()?;
        let cgroup = mount.join(cgroup_parent).join(&config.name);
        match fs::create_dir(&config.scratch) {
            Ok(()) => {}
            Err(source) => {
                return Err(ContainerError::Io {
                    what: "creating the container's scratch directory (it must not exist)",
                    path: config.scratch.clone(),
                    source,
                });
            }
        }
        if let Err(e) = cgroup::create(&mount, &cgroup) {
            let _ = fs::remove_dir_all(&config.scratch);
            return Err(e);
        }
        match Container::boot(config, systemd, &cgroup, called) {
            Ok(container) => Ok(container),
            Err(first) => match clean_up(&cgroup, &config.scratch, KILL_DEADLINE) {
                Ok(()) => Err(first),
                Err(cleanup) => Err(ContainerError::CleanupFailed {
                    first: Box::new(first),
                    cleanup: Box::new(cleanup),
                }),
            },
        }
    }

    fn boot(
        config: &ContainerConfig,
        systemd: &str,
        cgroup: &Path,
        called: Instant,
    ) -> Result<Container, ContainerError> {
        let scratch = &config.scratch;
        let (upper, work, merged) = (
            scratch.join("upper"),
            scratch.join("work"),
            scratch.join("merged"),
        );
        for dir in [&upper, &work, &merged] {
            fs::create_dir(dir).map_err(|source| ContainerError::Io {
                what: "creating an overlay directory",
                path: dir.clone(),
                source,
            })?;
        }
        let machine_id = rootfs::new_machine_id()?;
        // The image's /etc/hostname would win over the hostname set before
        // exec (container interface), so the container's name is seeded too.
        let mut seed = vec![
            SeedFile::File {
                path: "etc/machine-id".into(),
                contents: format!("{machine_id}\n").into_bytes(),
                mode: 0o444,
            },
            SeedFile::File {
                path: "etc/hostname".into(),
                contents: format!("{}\n", config.name).into_bytes(),
                mode: 0o644,
            },
        ];
        seed.extend(config.seed.iter().cloned());
        rootfs::seed(&upper, &seed)?;
        let notify_path = scratch.join("notify");
        let notify = notify::NotifySocket::bind(&notify_path)?;
        let console = console::Console::open()?;
        let layout = mounts::Layout {
            rootfs: &config.rootfs,
            upper: &upper,
            work: &work,
            merged: &merged,
            notify: &notify_path,
            console: &console.slave_path,
            binds: &config.binds,
        };
        let steps = mounts::plan(&layout)?;
        let mut namespaces = CloneFlags::CLONE_NEWNS
            | CloneFlags::CLONE_NEWPID
            | CloneFlags::CLONE_NEWUTS
            | CloneFlags::CLONE_NEWIPC
            | CloneFlags::CLONE_NEWCGROUP;
        if config.network == Network::Private {
            namespaces |= CloneFlags::CLONE_NEWNET;
        }
        let env = [
            "container=twine".to_owned(),
            format!("container_uuid={machine_id}"),
            format!("NOTIFY_SOCKET={}", mounts::NOTIFY_INSIDE),
            "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin".to_owned(),
        ];
        let plan = spawn::Plan {
            cgroup_procs: cstring(&cgroup.join("cgroup.procs"))?,
            namespaces,
            new_root: cstring(&merged)?,
            put_old: cstring(&merged.join(mounts::OLD_ROOT))?,
            old_root_inside: cstring(&Path::new("/").join(mounts::OLD_ROOT))?,
            hostname: OsString::from(&config.name),
            exe: cstring(Path::new(systemd))?,
            argv: vec![cstring(Path::new(systemd))?],
            env: env
                .iter()
                .map(|e| cstring(Path::new(e)))
                .collect::<Result<_, _>>()?,
            steps,
        };
        let console_log = scratch.join("console.log");
        let console_stop = Arc::new(AtomicBool::new(false));
        console.drain_into(&console_log, Arc::clone(&console_stop))?;
        let forked = Instant::now();
        let pid = spawn::spawn(&plan).map_err(|e| match e {
            spawn::SpawnError::Child(failure) => ContainerError::Spawn {
                step: step_name(&plan, failure.step),
                errno: failure.errno,
            },
            spawn::SpawnError::Pipe(errno)
            | spawn::SpawnError::Fork(errno)
            | spawn::SpawnError::Wait(errno) => ContainerError::Spawn {
                step: "fork".into(),
                errno,
            },
            spawn::SpawnError::Intermediate(status) => ContainerError::Spawn {
                step: format!("the intermediate process ({status})"),
                errno: nix::errno::Errno::UnknownErrno,
            },
        })?;
        let execed = Instant::now();
        let start_time = proc_stat(pid.as_raw())
            .map(|(_, t)| t)
            .ok_or(ContainerError::Gone {
                name: config.name.clone(),
                pid: pid.as_raw(),
            })?;
        let record = ContainerRecord {
            name: config.name.clone(),
            pid: pid.as_raw(),
            start_time,
            cgroup: cgroup.into(),
            scratch: scratch.clone(),
            machine_id,
        };
        let mut container = Container {
            record,
            phases: None,
            console_stop: Some(console_stop),
        };
        let ready = notify.wait_ready(config.ready_timeout, || container.is_running());
        match ready {
            Ok(_) => {
                // Unlinks the socket now, so that the phases cover all of `start`.
                drop(notify);
                container.phases = Some(StartPhases {
                    prepare: forked - called,
                    spawn: execed - forked,
                    boot: execed.elapsed(),
                });
                Ok(container)
            }
            Err(notify::ReadyError::Timeout { status }) => Err(ContainerError::NeverReady {
                timeout: config.ready_timeout,
                status,
                console: console::tail(&console_log, 2048),
            }),
            Err(notify::ReadyError::Died { status }) => Err(ContainerError::DiedBeforeReady {
                status,
                console: console::tail(&console_log, 2048),
            }),
            Err(notify::ReadyError::Io(path, source)) => Err(ContainerError::Io {
                what: "waiting for READY=1",
                path,
                source,
            }),
        }
    }

    /// Takes over a container an earlier agent started, after checking that
    /// its PID 1 is the same process (pid and start time) in the same cgroup.
    pub fn reattach(record: ContainerRecord) -> Result<Container, ContainerError> {
        let container = Container {
            record,
            phases: None,
            console_stop: None,
        };
        if container.is_running() {
            Ok(container)
        } else {
            Err(ContainerError::Gone {
                name: container.record.name.clone(),
                pid: container.record.pid,
            })
        }
    }

    /// What identifies this container across agent restarts.
    pub fn record(&self) -> &ContainerRecord {
        &self.record
    }

    /// Where the time of [`Container::start`] went; `None` for a container
    /// taken over with [`Container::reattach`].
    pub fn start_phases(&self) -> Option<StartPhases> {
        self.phases
    }

    /// PID 1's pid on the host.
    pub fn pid(&self) -> i32 {
        self.record.pid
    }

    /// Whether PID 1 is still the recorded process and still running.
    pub fn is_running(&self) -> bool {
        matches!(proc_stat(self.record.pid), Some((state, start)) if state != 'Z' && start == self.record.start_time)
            && fs::read_to_string(format!("/proc/{}/cgroup", self.record.pid))
                .is_ok_and(|c| c.lines().any(|l| l.starts_with("0::")))
    }

    /// Stops the container: `SIGRTMIN+3` to systemd (a clean poweroff that
    /// stops every unit by its own kill policy), then after `deadline` whatever
    /// is left is killed through `cgroup.kill`; then the cgroup and scratch
    /// directory are removed.
    pub fn shutdown(self, deadline: Duration) -> Result<Shutdown, ContainerError> {
        let start = Instant::now();
        if self.is_running() {
            let _ = spawn::signal(Pid::from_raw(self.record.pid), spawn::sigrtmin_plus(3));
            while self.is_running() && start.elapsed() < deadline {
                std::thread::sleep(Duration::from_millis(5));
            }
        }
        let how = if self.is_running() {
            Shutdown::Killed
        } else {
            Shutdown::Clean
        };
        clean_up(&self.record.cgroup, &self.record.scratch, KILL_DEADLINE)?;
        Ok(how)
    }

    /// Removes what a container left behind when it is no longer running
    /// (found dead at reattach): any stray process of its cgroup, the cgroup
    /// and the scratch directory. Refuses while its PID 1 still runs.
    pub fn clean_up_record(record: &ContainerRecord) -> Result<(), ContainerError> {
        let probe = Container {
            record: record.clone(),
            phases: None,
            console_stop: None,
        };
        if probe.is_running() {
            return Err(ContainerError::StillRunning {
                name: record.name.clone(),
                pid: record.pid,
            });
        }
        clean_up(&record.cgroup, &record.scratch, KILL_DEADLINE)
    }

    /// Kills everything at once through `cgroup.kill` and cleans up.
    pub fn kill(self) -> Result<(), ContainerError> {
        clean_up(&self.record.cgroup, &self.record.scratch, KILL_DEADLINE)
    }
}

fn step_name(plan: &spawn::Plan, step: u32) -> String {
    match step {
        spawn::STEP_CGROUP => format!(
            "joining the cgroup ({})",
            plan.cgroup_procs.to_string_lossy()
        ),
        spawn::STEP_UNSHARE => "unshare".into(),
        spawn::STEP_FORK => "the second fork".into(),
        spawn::STEP_PIVOT => "pivot_root".into(),
        spawn::STEP_HOSTNAME => "sethostname".into(),
        spawn::STEP_CAPS => "dropping capabilities from the bounding set".into(),
        spawn::STEP_EXEC => format!("execve {}", plan.exe.to_string_lossy()),
        i => plan
            .steps
            .get(i as usize)
            .map_or_else(|| format!("step {i}"), spawn::Step::describe),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn proc_stat_reads_our_own_process() {
        let (state, start) = proc_stat(std::process::id().cast_signed()).expect("own stat");
        assert!(matches!(state, 'R' | 'S'), "{state}");
        assert!(start > 0);
    }
}
