//! Host tier: twine's systemd client against systemd as PID 1 in a
//! systemd-nspawn container, over the container's private socket.
//!
//! Needs root and the cached rootfs; otherwise each test skips with a reason
//! (or fails under `TWINE_REQUIRE_REALSYS=1`).

// The shared harness of twine-spec's tests; it tests twine-spec's `host` feature,
// which this crate does not have.
#[path = "../../twine-spec/tests/support/mod.rs"]
#[allow(unexpected_cfgs)]
mod support;

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use anyhow::{Context, Result, bail, ensure};
use futures_util::StreamExt;
use support::nspawn::{self, Container};
use twine_agent::systemd::{
    ActiveState, BusEndpoint, BusError, ExecMain, JobOutcome, KillWhom, SystemdBus, UnitChange,
    UnitChanges,
};

/// Upper bound for anything the container's systemd does in these tests.
const STEP: Duration = Duration::from_secs(30);

fn usable() -> bool {
    match nspawn::unavailable() {
        None => true,
        Some(reason) => support::realsys_gate(&reason),
    }
}

/// One runtime for the whole test binary, as the agent has one.
fn runtime() -> &'static tokio::runtime::Runtime {
    static RUNTIME: std::sync::OnceLock<tokio::runtime::Runtime> = std::sync::OnceLock::new();
    RUNTIME.get_or_init(|| {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .expect("tokio runtime")
    })
}

fn endpoint(c: &Container) -> BusEndpoint {
    BusEndpoint::container(Path::new("/proc"), c.leader())
}

async fn connect(c: &Container) -> Result<SystemdBus> {
    let deadline = tokio::time::Instant::now() + STEP;
    SystemdBus::connect_with_retry(&endpoint(c), deadline)
        .await
        .with_context(|| format!("connecting to {}", c.name()))
}

/// The next change, or an error naming what was awaited.
async fn next_change(changes: &mut UnitChanges, what: &str) -> Result<UnitChange> {
    match tokio::time::timeout(STEP, changes.next()).await {
        Err(_) => bail!("no change within {STEP:?} while waiting for {what}"),
        Ok(None) => bail!("the watch ended while waiting for {what}"),
        Ok(Some(item)) => item.with_context(|| format!("waiting for {what}")),
    }
}

async fn with_timeout<T>(what: &str, fut: impl Future<Output = T>) -> Result<T> {
    tokio::time::timeout(STEP, fut)
        .await
        .map_err(|_| anyhow::anyhow!("{what} took over {STEP:?}"))
}

#[test]
fn units_are_driven_and_read_over_the_private_bus() {
    if !usable() {
        return;
    }
    let c = Container::boot().expect("booting a container");
    c.install_units(&[
        (
            "twine-ok.service",
            "[Service]\nType=oneshot\nRemainAfterExit=yes\nExecStart=/bin/true\n",
        ),
        (
            "twine-exit3.service",
            "[Unit]\nStartLimitBurst=100\n[Service]\nExecStart=/bin/sh -c 'exit 3'\nRestart=on-failure\nRestartSec=100ms\n",
        ),
        (
            "twine-sleep.service",
            "[Service]\nExecStart=/bin/sleep 1000\n",
        ),
    ])
    .expect("installing units");
    let outcome = runtime().block_on(async {
        let bus = connect(&c).await?;
        let state = bus.manager_state().await?;
        ensure!(
            state == "running" || state == "degraded",
            "SystemState {state:?}"
        );
        oneshot_exits_zero(&bus).await.context("oneshot")?;
        restarts_are_reported_in_order(&bus)
            .await
            .context("restarts")?;
        sigkill_is_reported_as_signal(&bus)
            .await
            .context("SIGKILL")?;
        stop_makes_inactive(&bus).await.context("stop")?;
        unknown_unit_is_a_typed_error(&bus)
            .await
            .context("unknown unit")?;
        Ok(())
    });
    if let Err(e) = outcome {
        let diag: String = [
            "twine-ok.service",
            "twine-exit3.service",
            "twine-sleep.service",
        ]
        .iter()
        .map(|u| c.unit_diagnostics(u))
        .collect();
        panic!("{e:#}\n{diag}");
    }
}

async fn oneshot_exits_zero(bus: &SystemdBus) -> Result<()> {
    let outcome = with_timeout("start", bus.start_unit("twine-ok.service")).await??;
    ensure!(outcome == JobOutcome::Done, "start job: {outcome:?}");
    let status = bus.unit_status("twine-ok.service").await?;
    ensure!(
        status.active_state == ActiveState::Active && status.sub_state == "exited",
        "{status:?}"
    );
    let service = status.service.context("no service part")?;
    ensure!(service.exec_main == ExecMain::Exited(0), "{service:?}");
    ensure!(service.result == "success", "{service:?}");
    ensure!(service.main_pid.is_none(), "{service:?}");
    Ok(())
}

async fn restarts_are_reported_in_order(bus: &SystemdBus) -> Result<()> {
    let unit = "twine-exit3.service".to_owned();
    let mut changes = bus.watch(std::slice::from_ref(&unit)).await?;
    let first = next_change(&mut changes, "the initial status").await?;
    ensure!(
        first.status.active_state == ActiveState::Inactive,
        "before start: {:?}",
        first.status
    );
    let outcome = with_timeout("start", bus.start_unit(&unit)).await??;
    ensure!(outcome == JobOutcome::Done, "start job: {outcome:?}");
    let mut restarts = Vec::new();
    let mut saw_exit3 = false;
    while restarts.last().is_none_or(|n| *n < 2) {
        let change = next_change(&mut changes, "two restarts").await?;
        ensure!(change.unit == unit, "change of another unit: {change:?}");
        let service = change.status.service.context("no service part")?;
        if service.exec_main == ExecMain::Exited(3) {
            saw_exit3 = true;
        }
        if restarts.last() != Some(&service.n_restarts) {
            restarts.push(service.n_restarts);
        }
    }
    ensure!(
        restarts.windows(2).all(|w| w[0] < w[1]),
        "NRestarts not increasing: {restarts:?}"
    );
    ensure!(
        saw_exit3,
        "never saw ExecMain Exited(3); NRestarts {restarts:?}"
    );
    let stop = with_timeout("stop", bus.stop_unit(&unit)).await??;
    ensure!(stop == JobOutcome::Done, "stop job: {stop:?}");
    Ok(())
}

async fn sigkill_is_reported_as_signal(bus: &SystemdBus) -> Result<()> {
    let unit = "twine-sleep.service".to_owned();
    let outcome = with_timeout("start", bus.start_unit(&unit)).await??;
    ensure!(outcome == JobOutcome::Done, "start job: {outcome:?}");
    let running = bus.unit_status(&unit).await?;
    ensure!(running.active_state == ActiveState::Active, "{running:?}");
    ensure!(
        running.service.as_ref().and_then(|s| s.main_pid).is_some(),
        "no MainPID while running: {running:?}"
    );
    let mut changes = bus.watch(std::slice::from_ref(&unit)).await?;
    bus.kill_unit(&unit, KillWhom::Main, 9).await?;
    let failed = loop {
        let change = next_change(&mut changes, "the unit to fail").await?;
        if change.status.active_state == ActiveState::Failed {
            break change.status;
        }
    };
    let service = failed.service.context("no service part")?;
    ensure!(service.exec_main == ExecMain::Killed(9), "{service:?}");
    ensure!(service.result == "signal", "{service:?}");
    Ok(())
}

async fn stop_makes_inactive(bus: &SystemdBus) -> Result<()> {
    let unit = "twine-sleep.service";
    let outcome = with_timeout("start", bus.start_unit(unit)).await??;
    ensure!(outcome == JobOutcome::Done, "start job: {outcome:?}");
    ensure!(
        bus.unit_status(unit).await?.active_state == ActiveState::Active,
        "not active after start"
    );
    let outcome = with_timeout("stop", bus.stop_unit(unit)).await??;
    ensure!(outcome == JobOutcome::Done, "stop job: {outcome:?}");
    let status = bus.unit_status(unit).await?;
    ensure!(
        status.active_state == ActiveState::Inactive,
        "after stop: {status:?}"
    );
    Ok(())
}

async fn unknown_unit_is_a_typed_error(bus: &SystemdBus) -> Result<()> {
    let unit = "twine-no-such-unit.service";
    match bus.start_unit(unit).await {
        Err(BusError::NoSuchUnit { unit: u }) if u == unit => {}
        other => bail!("start_unit: {other:?}"),
    }
    match bus.unit_status(unit).await {
        Err(BusError::NoSuchUnit { unit: u }) if u == unit => {}
        other => bail!("unit_status: {other:?}"),
    }
    match bus.watch(&[unit.to_owned()]).await {
        Err(BusError::NoSuchUnit { unit: u }) if u == unit => {}
        other => bail!("watch: {:?}", other.map(|_| "a stream")),
    }
    Ok(())
}

/// Watches a running unit, has the container go away by `how`, and checks the
/// stream ends with `Disconnected` soon after.
fn watch_ends_when_container_goes(how: &str) {
    if !usable() {
        return;
    }
    let c = Container::boot().expect("booting a container");
    c.install_units(&[(
        "twine-sleep.service",
        "[Service]\nExecStart=/bin/sleep 1000\n",
    )])
    .expect("installing units");
    let leader = c.leader().to_string();
    let outcome: Result<()> = runtime().block_on(async {
        let bus = connect(&c).await?;
        bus.start_unit("twine-sleep.service").await?;
        let mut changes = bus.watch(&["twine-sleep.service".to_owned()]).await?;
        let first = next_change(&mut changes, "the initial status").await?;
        ensure!(
            first.status.active_state == ActiveState::Active,
            "{first:?}"
        );
        let signal = match how {
            "poweroff" => "RTMIN+3",
            _ => "KILL",
        };
        let status = Command::new("kill")
            .args(["-s", signal, &leader])
            .status()?;
        ensure!(status.success(), "kill -s {signal} {leader}: {status}");
        // A poweroff stops the unit first: changes may come before the end.
        let limit = Duration::from_secs(if how == "poweroff" { 20 } else { 5 });
        let end = tokio::time::timeout(limit, async {
            loop {
                match changes.next().await {
                    Some(Ok(_)) => continue,
                    other => return other,
                }
            }
        })
        .await
        .map_err(|_| anyhow::anyhow!("the watch did not end within {limit:?}"))?;
        match end {
            Some(Err(BusError::Disconnected { path })) => {
                ensure!(path == endpoint(&c).socket(), "names {}", path.display());
            }
            other => bail!("the watch ended with {other:?}"),
        }
        ensure!(changes.next().await.is_none(), "items after Disconnected");
        match bus.unit_status("twine-sleep.service").await {
            Err(BusError::Disconnected { .. }) => {}
            other => bail!("a call after the end: {other:?}"),
        }
        Ok(())
    });
    outcome.unwrap_or_else(|e| panic!("{how}: {e:#}"));
}

#[test]
fn watch_ends_with_disconnected_when_the_container_powers_off() {
    watch_ends_when_container_goes("poweroff");
}

#[test]
fn watch_ends_with_disconnected_when_the_container_is_killed() {
    watch_ends_when_container_goes("kill");
}

#[test]
fn connecting_to_a_missing_socket_names_the_path() {
    let dir = tempfile::tempdir().expect("temp dir");
    let socket = dir.path().join("private");
    let err = runtime()
        .block_on(SystemdBus::connect(&BusEndpoint::direct(&socket)))
        .expect_err("connected to nothing");
    match &err {
        BusError::Connect { path, source } => {
            assert_eq!(path, &socket);
            assert_eq!(source.kind(), std::io::ErrorKind::NotFound, "{err}");
        }
        other => panic!("{other:?}"),
    }
    assert!(
        err.to_string().contains(&socket.display().to_string()),
        "{err}"
    );
}

#[test]
fn connecting_to_a_socket_nobody_listens_on_is_refused_until_the_deadline() {
    let dir = tempfile::tempdir().expect("temp dir");
    let socket = dir.path().join("private");
    // Bound but never listening: what the path looks like while systemd starts.
    let fd = nix::sys::socket::socket(
        nix::sys::socket::AddressFamily::Unix,
        nix::sys::socket::SockType::Stream,
        nix::sys::socket::SockFlag::SOCK_CLOEXEC,
        None,
    )
    .expect("socket");
    let addr = nix::sys::socket::UnixAddr::new(&socket).expect("address");
    nix::sys::socket::bind(std::os::fd::AsRawFd::as_raw_fd(&fd), &addr).expect("bind");
    let started = std::time::Instant::now();
    let err = runtime()
        .block_on(async {
            let deadline = tokio::time::Instant::now() + Duration::from_millis(300);
            SystemdBus::connect_with_retry(&BusEndpoint::direct(&socket), deadline).await
        })
        .expect_err("connected to a socket nobody listens on");
    assert!(
        started.elapsed() >= Duration::from_millis(200),
        "gave up after {:?}",
        started.elapsed()
    );
    match &err {
        BusError::Connect { path, source } => {
            assert_eq!(path, &socket);
            assert_eq!(
                source.kind(),
                std::io::ErrorKind::ConnectionRefused,
                "{err}"
            );
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn a_container_endpoint_without_that_process_names_the_namespace() {
    let dir = tempfile::tempdir().expect("temp dir");
    // A fake procfs without the process: the namespace file is what is missing.
    let err = runtime()
        .block_on(SystemdBus::connect(&BusEndpoint::container(
            dir.path(),
            4242,
        )))
        .expect_err("connected through a missing namespace");
    match err {
        BusError::Namespace { path, .. } => {
            assert_eq!(path, dir.path().join("4242/ns/pid"));
        }
        other => panic!("{other:?}"),
    }
}
