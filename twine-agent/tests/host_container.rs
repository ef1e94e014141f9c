//! Host tier: the agent's own container boots the cached Debian rootfs with
//! systemd as PID 1, presents what the container interface promises, and
//! leaves nothing behind: no mount, cgroup, process or scratch directory.

mod realsys;

use std::fs;
use std::path::Path;
use std::time::Duration;

use twine_agent::container::{
    Bind, Container, ContainerConfig, ContainerError, SeedFile, Shutdown,
};

fn config(tag: &str, scratch: &Path) -> ContainerConfig {
    ContainerConfig::new(realsys::unique(tag), realsys::rootfs(), scratch.join("c"))
}

#[test]
fn boots_systemd_as_pid1_with_the_container_interface_and_cleans_up() {
    if !realsys::available() {
        return;
    }
    let dir = realsys::scratch("boot");
    let shared = dir.path().join("shared");
    fs::create_dir(&shared).expect("shared dir");
    fs::write(shared.join("hello"), "from the host").expect("write");
    let mut cfg = config("boot", dir.path());
    cfg.binds.push(Bind {
        source: shared.clone(),
        target: "/run/twine/identity".into(),
        read_only: true,
    });
    cfg.seed.push(SeedFile::File {
        path: "etc/twine-seeded".into(),
        contents: b"seeded".to_vec(),
        mode: 0o644,
    });
    let guard = realsys::Guard::new(Container::start(&cfg).expect("container boots"));
    let c = guard.get();
    let pid = c.pid();
    let record = c.record().clone();

    // PID 1 is systemd, with container=twine in its environment.
    let environ = fs::read(format!("/proc/{pid}/environ")).expect("environ");
    assert!(
        environ.split(|b| *b == 0).any(|e| e == b"container=twine"),
        "environ"
    );
    let out = realsys::nsenter(pid, &["cat", "/proc/1/comm"]);
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "systemd");
    // systemd knows it runs in a container called twine (detect-virt names
    // managers it does not know "container-other"), and finished booting.
    let out = realsys::nsenter(pid, &["cat", "/run/systemd/container"]);
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "twine");
    let out = realsys::nsenter(pid, &["systemd-detect-virt", "--container"]);
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        "container-other"
    );
    let out = realsys::nsenter(pid, &["systemctl", "is-system-running"]);
    let state = String::from_utf8_lossy(&out.stdout).trim().to_owned();
    assert!(
        state == "running" || state == "degraded",
        "system state {state}"
    );
    // No container may load kernel modules or do raw I/O (as with nspawn).
    let status = fs::read_to_string(format!("/proc/{pid}/status")).expect("status");
    let bounding = status
        .lines()
        .find_map(|l| l.strip_prefix("CapBnd:"))
        .map(|v| u64::from_str_radix(v.trim(), 16).expect("hex"))
        .expect("CapBnd");
    assert_eq!(bounding & (1 << 16), 0, "CAP_SYS_MODULE dropped");
    assert_eq!(bounding & (1 << 17), 0, "CAP_SYS_RAWIO dropped");
    assert_ne!(
        bounding & (1 << 21),
        0,
        "CAP_SYS_ADMIN kept (systemd needs it)"
    );
    let out = realsys::nsenter(pid, &["hostname"]);
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), cfg.name);
    // /sys and the identity bind are read-only; the cgroup is delegated (writable).
    for ro in ["/sys/kernel", "/run/twine/identity"] {
        let out = realsys::nsenter(pid, &["touch", &format!("{ro}/x")]);
        assert!(!out.status.success(), "{ro} must be read-only");
    }
    let out = realsys::nsenter(pid, &["cat", "/run/twine/identity/hello"]);
    assert_eq!(String::from_utf8_lossy(&out.stdout), "from the host");
    let out = realsys::nsenter(pid, &["cat", "/etc/twine-seeded", "/etc/machine-id"]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.starts_with("seeded") && text.contains(&record.machine_id),
        "{text}"
    );
    assert!(
        record.cgroup.join("init.scope").is_dir(),
        "systemd manages its delegated cgroup"
    );
    let bus = twine_agent::systemd::BusEndpoint::container(Path::new("/proc"), pid.unsigned_abs());
    assert!(bus.socket().exists(), "systemd's private bus socket");
    // Nothing the container mounted is visible on the host.
    let scratch = cfg.scratch.to_string_lossy().into_owned();
    assert_eq!(
        realsys::host_mounts_mentioning(&scratch),
        Vec::<String>::new()
    );

    let how = guard
        .take()
        .shutdown(Duration::from_secs(20))
        .expect("shutdown");
    assert_eq!(how, Shutdown::Clean);
    assert!(
        !Path::new(&format!("/proc/{pid}")).exists()
            || fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|s| s.contains(") Z ")),
        "PID 1 is gone"
    );
    assert!(!record.cgroup.exists(), "the cgroup is removed");
    assert!(!cfg.scratch.exists(), "the scratch directory is removed");
    assert_eq!(
        realsys::host_mounts_mentioning(&scratch),
        Vec::<String>::new()
    );
}

#[test]
fn a_container_that_ignores_poweroff_is_killed_at_the_deadline() {
    if !realsys::available() {
        return;
    }
    let dir = realsys::scratch("kill");
    let mut cfg = config("kill", dir.path());
    // A unit that refuses to stop for a long time holds up the poweroff.
    cfg.seed.push(SeedFile::File {
        path: "etc/systemd/system/stubborn.service".into(),
        contents: b"[Service]\nExecStart=/bin/sleep infinity\nKillSignal=SIGCONT\nTimeoutStopSec=1h\nFinalKillSignal=SIGCONT\n[Install]\nWantedBy=multi-user.target\n".to_vec(),
        mode: 0o644,
    });
    cfg.seed.push(SeedFile::Symlink {
        path: "etc/systemd/system/multi-user.target.wants/stubborn.service".into(),
        to: "/etc/systemd/system/stubborn.service".into(),
    });
    let guard = realsys::Guard::new(Container::start(&cfg).expect("container boots"));
    let cgroup = guard.get().record().cgroup.clone();
    let how = guard
        .take()
        .shutdown(Duration::from_millis(500))
        .expect("shutdown");
    assert_eq!(how, Shutdown::Killed);
    assert!(!cgroup.exists());
    assert!(!cfg.scratch.exists());
}

#[test]
fn a_missing_rootfs_or_one_without_systemd_is_refused_and_nothing_is_left() {
    if !realsys::available() {
        return;
    }
    let dir = realsys::scratch("bad");
    let mut cfg = config("bad", dir.path());
    cfg.rootfs = dir.path().join("nope");
    let err = Container::start(&cfg).expect_err("missing rootfs");
    assert!(
        matches!(err, ContainerError::MissingRootfs { ref path } if *path == cfg.rootfs),
        "{err}"
    );
    let empty = dir.path().join("empty");
    fs::create_dir(&empty).expect("mkdir");
    cfg.rootfs = empty.clone();
    let err = Container::start(&cfg).expect_err("no systemd");
    assert!(err.to_string().contains("no systemd"), "{err}");
    assert!(!cfg.scratch.exists());
}

#[test]
fn systemd_that_never_becomes_ready_is_reported_with_its_console_and_cleaned_up() {
    if !realsys::available() {
        return;
    }
    let dir = realsys::scratch("never");
    let mut cfg = config("never", dir.path());
    // The default target waits on a unit that never finishes starting.
    cfg.seed.push(SeedFile::File {
        path: "etc/systemd/system/hang.service".into(),
        contents: b"[Service]\nType=oneshot\nExecStart=/bin/sleep infinity\nTimeoutStartSec=infinity\n[Install]\nWantedBy=multi-user.target\n".to_vec(),
        mode: 0o644,
    });
    cfg.seed.push(SeedFile::Symlink {
        path: "etc/systemd/system/multi-user.target.wants/hang.service".into(),
        to: "/etc/systemd/system/hang.service".into(),
    });
    cfg.ready_timeout = Duration::from_secs(3);
    let cgroup_name = cfg.name.clone();
    let err = Container::start(&cfg).expect_err("never ready");
    assert!(matches!(err, ContainerError::NeverReady { .. }), "{err}");
    assert!(err.to_string().contains("did not become ready"), "{err}");
    assert!(!cfg.scratch.exists(), "scratch removed");
    let mounts = fs::read_to_string("/proc/self/mountinfo").expect("mountinfo");
    let cg2 = mounts
        .lines()
        .find(|l| l.contains(" - cgroup2 "))
        .and_then(|l| l.split_whitespace().nth(4))
        .expect("cgroup2 mount")
        .to_owned();
    assert!(
        !Path::new(&cg2).join("twine").join(cgroup_name).exists(),
        "cgroup removed"
    );
}

#[test]
fn a_private_network_has_only_loopback_and_systemd_brings_it_up() {
    if !realsys::available() {
        return;
    }
    let dir = realsys::scratch("net");
    let mut cfg = config("net", dir.path());
    cfg.network = twine_agent::container::Network::Private;
    let guard = realsys::Guard::new(Container::start(&cfg).expect("container boots"));
    let pid = guard.get().pid();
    // A network namespace of its own, not the host's.
    let ns = |p: &str| fs::read_link(format!("/proc/{p}/ns/net")).expect("net ns");
    assert_ne!(ns(&pid.to_string()), ns("self"), "a new network namespace");
    let out = realsys::nsenter(pid, &["ls", "/sys/class/net"]);
    let links = String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .map(str::to_owned)
        .collect::<Vec<_>>();
    assert_eq!(links, ["lo"], "only loopback");
    let out = realsys::nsenter(
        pid,
        &[
            "cat",
            "/sys/class/net/lo/operstate",
            "/sys/class/net/lo/flags",
        ],
    );
    let text = String::from_utf8_lossy(&out.stdout);
    let flags = text
        .lines()
        .nth(1)
        .and_then(|f| u32::from_str_radix(f.trim_start_matches("0x"), 16).ok())
        .expect("flags");
    assert_ne!(flags & 1, 0, "lo is up (IFF_UP): {text}");
    guard
        .take()
        .shutdown(Duration::from_secs(20))
        .expect("shutdown");
}
