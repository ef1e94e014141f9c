//! The mount plan PID 1 runs before `pivot_root`: the overlay root and the file
//! systems systemd's container interface expects. Building it is pure, so the
//! plan is tested without root; running it is [`super::spawn`]'s job.

use std::ffi::CString;
use std::os::unix::ffi::OsStrExt as _;
use std::path::{Component, Path, PathBuf};

use nix::mount::MsFlags;

use super::spawn::Step;
use super::{Bind, ContainerError};

/// Device nodes bound from the host into the container's `/dev`.
pub(crate) const DEVICES: [&str; 6] = ["null", "zero", "full", "random", "urandom", "tty"];
/// The old root's directory name during `pivot_root`.
pub(crate) const OLD_ROOT: &str = ".twine-oldroot";
/// Where the notify socket appears inside the container (`$NOTIFY_SOCKET`).
pub const NOTIFY_INSIDE: &str = "/run/host/notify";

/// The paths the plan is built from.
#[derive(Debug, Clone)]
pub(crate) struct Layout<'a> {
    /// Read-only lower layer.
    pub(crate) rootfs: &'a Path,
    /// Overlay upper, work and merged directories.
    pub(crate) upper: &'a Path,
    pub(crate) work: &'a Path,
    pub(crate) merged: &'a Path,
    /// The notify socket on the host.
    pub(crate) notify: &'a Path,
    /// The console terminal on the host.
    pub(crate) console: &'a Path,
    /// Extra bind mounts.
    pub(crate) binds: &'a [Bind],
}

fn c(path: &Path) -> Result<CString, ContainerError> {
    CString::new(path.as_os_str().as_bytes()).map_err(|_| ContainerError::BadPath {
        path: path.into(),
        reason: "contains a NUL byte",
    })
}

/// An overlay option value: overlayfs splits options at `,` and layers at `:`,
/// and `\` escapes; such paths are refused rather than escaped.
fn overlay_path(path: &Path) -> Result<String, ContainerError> {
    let text = path.to_str().ok_or(ContainerError::BadPath {
        path: path.into(),
        reason: "is not UTF-8",
    })?;
    if text.contains([',', ':', '\\']) {
        return Err(ContainerError::BadPath {
            path: path.into(),
            reason: "contains ',', ':' or '\\', which overlayfs options cannot carry",
        });
    }
    Ok(text.to_owned())
}

/// An absolute path inside the container joined onto `merged`, refusing `..`.
pub(crate) fn inside(merged: &Path, target: &Path) -> Result<PathBuf, ContainerError> {
    let mut out = merged.to_path_buf();
    let mut parts = target.components();
    if parts.next() != Some(Component::RootDir) {
        return Err(ContainerError::Unconfined {
            what: "bind target",
            path: target.into(),
        });
    }
    for part in parts {
        match part {
            Component::Normal(p) => out.push(p),
            _ => {
                return Err(ContainerError::Unconfined {
                    what: "bind target",
                    path: target.into(),
                });
            }
        }
    }
    if out == merged {
        return Err(ContainerError::Unconfined {
            what: "bind target",
            path: target.into(),
        });
    }
    Ok(out)
}

struct Builder {
    steps: Vec<Step>,
}

impl Builder {
    fn mount(
        &mut self,
        what: &'static str,
        source: Option<&str>,
        target: &Path,
        fstype: Option<&str>,
        flags: MsFlags,
        data: Option<&str>,
    ) -> Result<(), ContainerError> {
        let cs = |s: &str| {
            CString::new(s).map_err(|_| ContainerError::BadPath {
                path: s.into(),
                reason: "contains a NUL byte",
            })
        };
        self.steps.push(Step::Mount {
            what,
            source: source.map(cs).transpose()?,
            target: c(target)?,
            fstype: fstype.map(cs).transpose()?,
            flags,
            data: data.map(cs).transpose()?,
        });
        Ok(())
    }

    fn bind(
        &mut self,
        what: &'static str,
        source: &Path,
        target: &Path,
        read_only: bool,
    ) -> Result<(), ContainerError> {
        let source = source.to_str().ok_or(ContainerError::BadPath {
            path: source.into(),
            reason: "is not UTF-8",
        })?;
        self.mount(
            what,
            Some(source),
            target,
            None,
            MsFlags::MS_BIND | MsFlags::MS_REC,
            None,
        )?;
        if read_only {
            self.mount(
                what,
                None,
                target,
                None,
                MsFlags::MS_BIND
                    | MsFlags::MS_REMOUNT
                    | MsFlags::MS_RDONLY
                    | MsFlags::MS_NOSUID
                    | MsFlags::MS_NODEV,
                None,
            )?;
        }
        Ok(())
    }

    /// Creates every missing directory of `dir` below `merged`.
    fn mkdir_all(&mut self, merged: &Path, dir: &Path) -> Result<(), ContainerError> {
        let rel = dir
            .strip_prefix(merged)
            .map_err(|_| ContainerError::Unconfined {
                what: "mount point",
                path: dir.into(),
            })?;
        let mut at = merged.to_path_buf();
        for part in rel.components() {
            at.push(part);
            self.steps.push(Step::Mkdir(c(&at)?));
        }
        Ok(())
    }
}

/// The mount plan for `layout`.
pub(crate) fn plan(layout: &Layout<'_>) -> Result<Vec<Step>, ContainerError> {
    let m = layout.merged;
    let mut b = Builder { steps: Vec::new() };
    let nosuid_nodev = MsFlags::MS_NOSUID | MsFlags::MS_NODEV;
    let sealed = nosuid_nodev | MsFlags::MS_NOEXEC;
    // Nothing below propagates back to the host: every mount of the container
    // lives and dies with its mount namespace.
    b.mount(
        "private propagation",
        None,
        Path::new("/"),
        None,
        MsFlags::MS_REC | MsFlags::MS_PRIVATE,
        None,
    )?;
    let options = format!(
        "lowerdir={},upperdir={},workdir={}",
        overlay_path(layout.rootfs)?,
        overlay_path(layout.upper)?,
        overlay_path(layout.work)?
    );
    b.mount(
        "the overlay root",
        Some("overlay"),
        m,
        Some("overlay"),
        MsFlags::empty(),
        Some(&options),
    )?;
    b.mkdir_all(m, &m.join("proc"))?;
    b.mount(
        "/proc",
        Some("proc"),
        &m.join("proc"),
        Some("proc"),
        sealed,
        None,
    )?;
    let proc_sys = m.join("proc/sys");
    b.bind("/proc/sys read-only", &proc_sys, &proc_sys, true)?;
    b.mkdir_all(m, &m.join("sys"))?;
    b.mount(
        "/sys read-only",
        Some("sysfs"),
        &m.join("sys"),
        Some("sysfs"),
        sealed | MsFlags::MS_RDONLY,
        None,
    )?;
    b.mount(
        "the delegated cgroup2",
        Some("cgroup2"),
        &m.join("sys/fs/cgroup"),
        Some("cgroup2"),
        sealed,
        None,
    )?;
    let dev = m.join("dev");
    b.mkdir_all(m, &dev)?;
    b.mount(
        "/dev",
        Some("tmpfs"),
        &dev,
        Some("tmpfs"),
        MsFlags::MS_NOSUID,
        Some("mode=755,size=4m"),
    )?;
    for node in DEVICES {
        let target = dev.join(node);
        b.steps.push(Step::Touch(c(&target)?));
        b.bind(
            "a device node",
            &Path::new("/dev").join(node),
            &target,
            false,
        )?;
    }
    b.mkdir_all(m, &dev.join("pts"))?;
    b.mount(
        "/dev/pts",
        Some("devpts"),
        &dev.join("pts"),
        Some("devpts"),
        MsFlags::MS_NOSUID | MsFlags::MS_NOEXEC,
        Some("newinstance,ptmxmode=0666,mode=620"),
    )?;
    b.steps.push(Step::Symlink(
        c(Path::new("pts/ptmx"))?,
        c(&dev.join("ptmx"))?,
    ));
    b.mkdir_all(m, &dev.join("shm"))?;
    b.mount(
        "/dev/shm",
        Some("tmpfs"),
        &dev.join("shm"),
        Some("tmpfs"),
        nosuid_nodev,
        Some("mode=1777"),
    )?;
    b.steps.push(Step::Touch(c(&dev.join("console"))?));
    b.bind("/dev/console", layout.console, &dev.join("console"), false)?;
    let run = m.join("run");
    b.mkdir_all(m, &run)?;
    b.mount(
        "/run",
        Some("tmpfs"),
        &run,
        Some("tmpfs"),
        nosuid_nodev,
        Some("mode=755"),
    )?;
    let notify = inside(m, Path::new(NOTIFY_INSIDE))?;
    b.mkdir_all(m, notify.parent().unwrap_or(&run))?;
    b.steps.push(Step::Touch(c(&notify)?));
    b.bind("the notify socket", layout.notify, &notify, false)?;
    b.mkdir_all(m, &m.join("tmp"))?;
    b.mount(
        "/tmp",
        Some("tmpfs"),
        &m.join("tmp"),
        Some("tmpfs"),
        nosuid_nodev,
        Some("mode=1777"),
    )?;
    for bind in layout.binds {
        let target = inside(m, &bind.target)?;
        if let Some(parent) = target.parent() {
            b.mkdir_all(m, parent)?;
        }
        b.steps.push(Step::Mkdir(c(&target)?));
        b.bind("a bind mount", &bind.source, &target, bind.read_only)?;
    }
    b.steps.push(Step::Mkdir(c(&m.join(OLD_ROOT))?));
    Ok(b.steps)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn layout<'a>(binds: &'a [Bind]) -> Layout<'a> {
        Layout {
            rootfs: Path::new("/var/rootfs"),
            upper: Path::new("/s/upper"),
            work: Path::new("/s/work"),
            merged: Path::new("/s/merged"),
            notify: Path::new("/s/notify"),
            console: Path::new("/dev/pts/7"),
            binds,
        }
    }

    fn targets(steps: &[Step]) -> Vec<String> {
        steps
            .iter()
            .filter_map(|s| match s {
                Step::Mount { target, source, .. } if source.is_some() => {
                    Some(target.to_string_lossy().into_owned())
                }
                _ => None,
            })
            .collect()
    }

    #[test]
    fn the_plan_mounts_what_the_container_interface_expects_in_order() {
        let binds = [Bind {
            source: "/s/identity".into(),
            target: "/run/twine/identity".into(),
            read_only: true,
        }];
        let steps = plan(&layout(&binds)).expect("plan");
        let t = targets(&steps);
        let pos = |p: &str| {
            t.iter()
                .position(|x| x == p)
                .unwrap_or_else(|| panic!("{p} not mounted: {t:?}"))
        };
        assert_eq!(pos("/s/merged"), 0, "the overlay comes first");
        assert!(pos("/s/merged/proc") < pos("/s/merged/proc/sys"));
        assert!(pos("/s/merged/sys") < pos("/s/merged/sys/fs/cgroup"));
        assert!(pos("/s/merged/dev") < pos("/s/merged/dev/console"));
        assert!(pos("/s/merged/run") < pos("/s/merged/run/host/notify"));
        assert!(pos("/s/merged/run") < pos("/s/merged/run/twine/identity"));
        for node in DEVICES {
            pos(&format!("/s/merged/dev/{node}"));
        }
        // /sys and /proc/sys are read-only, the identity bind too.
        let read_only: Vec<String> = steps
            .iter()
            .filter_map(|s| match s {
                Step::Mount { target, flags, .. } if flags.contains(MsFlags::MS_RDONLY) => {
                    Some(target.to_string_lossy().into_owned())
                }
                _ => None,
            })
            .collect();
        for p in [
            "/s/merged/sys",
            "/s/merged/proc/sys",
            "/s/merged/run/twine/identity",
        ] {
            assert!(
                read_only.iter().any(|r| r == p),
                "{p} not read-only: {read_only:?}"
            );
        }
        assert!(
            !read_only.iter().any(|r| r == "/s/merged/sys/fs/cgroup"),
            "the delegated cgroup is writable"
        );
    }

    #[test]
    fn bind_targets_and_overlay_paths_are_confined() {
        for bad in ["relative", "/", "/a/../../etc"] {
            let binds = [Bind {
                source: "/s/x".into(),
                target: bad.into(),
                read_only: false,
            }];
            assert!(
                matches!(
                    plan(&layout(&binds)),
                    Err(ContainerError::Unconfined { .. })
                ),
                "{bad}"
            );
        }
        let mut l = layout(&[]);
        l.rootfs = Path::new("/var/a,b");
        assert!(matches!(plan(&l), Err(ContainerError::BadPath { .. })));
    }
}
