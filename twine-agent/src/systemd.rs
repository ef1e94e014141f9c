//! The container's systemd, driven over its private D-Bus socket.
//!
//! Every container runs systemd as PID 1, and systemd listens on
//! `/run/systemd/private` for peer-to-peer D-Bus: no bus daemon, no `Hello`, no
//! `AddMatch`; once a client is connected systemd sends it every signal. From
//! the host the socket is `/proc/<leader>/root/run/systemd/private`, but systemd
//! only accepts a peer whose PID it can see, so a [`BusEndpoint::container`]
//! connects from inside the container's PID namespace. The other quirks of the
//! private bus (no `Hello`, a well-known sender name, `BEGIN` pipelined with
//! `AUTH`) are handled in `connect.rs`, which says why for each. systemd sends
//! every signal to every private connection; `Subscribe` is still called, as
//! the API asks.
//!
//! ```no_run
//! # async fn demo() -> Result<(), twine_agent::systemd::BusError> {
//! use std::path::Path;
//! use twine_agent::systemd::{BusEndpoint, JobOutcome, SystemdBus};
//!
//! let leader = 4242; // host PID of the container's systemd
//! let bus = SystemdBus::connect(&BusEndpoint::container(Path::new("/proc"), leader)).await?;
//! assert_eq!(bus.start_unit("job.service").await?, JobOutcome::Done);
//! let status = bus.unit_status("job.service").await?;
//! println!("{} {}", status.active_state, status.sub_state);
//! # Ok(()) }
//! ```
//!
//! # Why not zbus_systemd
//! The design names zbus_systemd, but its releases are built on zbus 5 while this
//! workspace uses zbus 6 (as xtask does); two zbus majors would mean two
//! connection types that cannot share a socket. The dozen members twine needs are
//! declared with zbus 6's `#[proxy]` in `proxies.rs` instead.
//!
//! # Signals
//! zbus's signal streams subscribe through the bus daemon (`AddMatch`), and the
//! workspace builds zbus without `p2p`, so they cannot be used here. One task per
//! connection reads the unfiltered message stream and fans it out on a tokio
//! broadcast channel; [`SystemdBus::start_unit`] and [`SystemdBus::watch`] each
//! subscribe to that channel *before* they act, so no signal can slip past them.
//! The task always drains the connection, so a watcher that stops reading cannot
//! stall method calls; if it falls behind by more than the channel holds, the
//! watch re-reads every unit instead of losing a change. The watch itself (the
//! [`UnitChanges`] stream and the state behind it) is in `watch.rs`.

mod connect;
mod proxies;
mod status;
mod watch;

use std::fmt;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use futures_util::StreamExt;
use tokio::sync::broadcast;
use tokio::time::Instant;
use zbus::message::Type as MessageType;
use zbus::proxy::CacheProperties;
use zbus::{Message, MessageStream, OwnedObjectPath};

pub use status::{ActiveState, ExecMain, JobOutcome, ServiceStatus, UnitChange, UnitStatus};
pub use watch::UnitChanges;

use proxies::{JobRemoved, ManagerProxy, ServiceProxy, UnitProxy};

/// How many signals a slow subscriber may fall behind before it is told it lagged.
const SIGNAL_BACKLOG: usize = 4096;
/// How long one method call may wait for systemd's answer; a peer that stops
/// answering is an error, not a hang.
const METHOD_TIMEOUT: Duration = Duration::from_secs(10);
/// Pause between attempts of [`SystemdBus::connect_with_retry`].
const RETRY_PAUSE: Duration = Duration::from_millis(50);

/// Errors of the systemd client. Each names the socket, unit or method involved.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum BusError {
    /// The socket could not be connected: missing, not listening yet, refused.
    #[error("connecting to {}: {source}", path.display())]
    Connect {
        /// The socket path.
        path: PathBuf,
        /// Why.
        #[source]
        source: io::Error,
    },
    /// The container's PID namespace could not be opened.
    #[error("opening the PID namespace {}: {source}", path.display())]
    Namespace {
        /// The `/proc/PID/ns/pid` path.
        path: PathBuf,
        /// Why.
        #[source]
        source: io::Error,
    },
    /// systemd did not accept the SASL handshake.
    #[error("authenticating on {}: {reason}", path.display())]
    Handshake {
        /// The socket path.
        path: PathBuf,
        /// What went wrong.
        reason: String,
    },
    /// zbus could not set the connection up after the handshake.
    #[error("setting up D-Bus on {}: {source}", path.display())]
    Setup {
        /// The socket path.
        path: PathBuf,
        /// Why.
        #[source]
        source: zbus::Error,
    },
    /// A method call or property read failed.
    #[error("{method} for {unit:?}: {source}")]
    Call {
        /// The member called, e.g. `StartUnit` or `Get(ActiveState)`.
        method: &'static str,
        /// The unit concerned (empty for manager-wide calls).
        unit: String,
        /// Why.
        #[source]
        source: zbus::Error,
    },
    /// systemd knows no such unit (no unit file, or not loadable).
    #[error("no such unit: {unit:?}")]
    NoSuchUnit {
        /// The unit name asked for.
        unit: String,
    },
    /// The connection went away: systemd exited, or the container is gone.
    #[error("systemd on {} went away", path.display())]
    Disconnected {
        /// The socket path.
        path: PathBuf,
    },
    /// A waiter fell behind the signal stream and may have missed its job's end.
    #[error("missed signals while waiting for the {method} job of {unit:?}")]
    SignalsLost {
        /// The call whose job was awaited.
        method: &'static str,
        /// The unit.
        unit: String,
    },
}

/// Where a systemd listens and how to reach it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BusEndpoint {
    socket: PathBuf,
    pid_namespace: Option<PathBuf>,
}

impl BusEndpoint {
    /// The private socket of the systemd whose host PID is `leader`, under the
    /// procfs mounted at `proc` (normally `/proc`), connected from its PID namespace.
    pub fn container(proc: &Path, leader: u32) -> BusEndpoint {
        let pid = proc.join(leader.to_string());
        BusEndpoint {
            socket: pid.join("root/run/systemd/private"),
            pid_namespace: Some(pid.join("ns/pid")),
        }
    }

    /// A socket connected from the calling process as it is: for a systemd that
    /// can see the caller's PID (same or ancestor PID namespace).
    pub fn direct(socket: impl Into<PathBuf>) -> BusEndpoint {
        BusEndpoint {
            socket: socket.into(),
            pid_namespace: None,
        }
    }

    /// The socket path.
    pub fn socket(&self) -> &Path {
        &self.socket
    }
}

/// What the dispatcher task fans out.
#[derive(Debug, Clone)]
enum Event {
    Signal(Message),
    Disconnected,
}

/// State shared by the clones of one [`SystemdBus`].
#[derive(Debug)]
struct Shared {
    socket: PathBuf,
    events: broadcast::Sender<Event>,
    disconnected: Arc<AtomicBool>,
    dispatcher: tokio::task::AbortHandle,
}

impl Drop for Shared {
    fn drop(&mut self) {
        self.dispatcher.abort();
    }
}

/// A connection to one systemd over its private socket. Cheap to clone; the
/// connection closes when the last clone is dropped.
#[derive(Clone)]
pub struct SystemdBus {
    conn: zbus::Connection,
    manager: ManagerProxy<'static>,
    shared: Arc<Shared>,
}

impl fmt::Debug for SystemdBus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SystemdBus")
            .field("socket", &self.shared.socket)
            .finish_non_exhaustive()
    }
}

/// Which processes of a unit [`SystemdBus::kill_unit`] signals.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum KillWhom {
    /// The main process only.
    Main,
    /// The control process (e.g. an `ExecStartPre=`) only.
    Control,
    /// Every process of the unit.
    All,
}

impl KillWhom {
    fn as_str(self) -> &'static str {
        match self {
            KillWhom::Main => "main",
            KillWhom::Control => "control",
            KillWhom::All => "all",
        }
    }
}

impl SystemdBus {
    /// Connects, authenticates as the caller's effective UID and calls `Subscribe`.
    ///
    /// A socket that does not exist or does not listen yet gives
    /// [`BusError::Connect`] naming it; see [`SystemdBus::connect_with_retry`].
    pub async fn connect(endpoint: &BusEndpoint) -> Result<SystemdBus, BusError> {
        let socket = endpoint.socket.as_path();
        let mut stream = match &endpoint.pid_namespace {
            Some(ns) => connect::connect_from_namespace(socket, ns).await?,
            None => connect::connect_direct(socket).await?,
        };
        let guid = connect::authenticate(&mut stream, socket).await?;
        let setup = |source| BusError::Setup {
            path: socket.to_path_buf(),
            source,
        };
        let conn =
            zbus::connection::Builder::authenticated_socket(connect::PeerStream(stream), guid)
                .method_timeout(METHOD_TIMEOUT)
                .build()
                .await
                .map_err(setup)?;
        // Subscribed before anything can be sent, so the dispatcher sees every signal.
        let messages = MessageStream::from(&conn);
        let manager = ManagerProxy::builder(&conn)
            .cache_properties(CacheProperties::No)
            .build()
            .await
            .map_err(setup)?;
        let (events, _) = broadcast::channel(SIGNAL_BACKLOG);
        let disconnected = Arc::new(AtomicBool::new(false));
        let dispatcher = tokio::spawn(dispatch(messages, events.clone(), disconnected.clone()));
        let bus = SystemdBus {
            conn,
            manager,
            shared: Arc::new(Shared {
                socket: socket.to_path_buf(),
                events,
                disconnected,
                dispatcher: dispatcher.abort_handle(),
            }),
        };
        bus.manager
            .subscribe()
            .await
            .map_err(|e| bus.call_error("Subscribe", "", e))?;
        Ok(bus)
    }

    /// [`SystemdBus::connect`], retried while the socket is missing, refuses
    /// connections or does not answer the handshake, until `deadline`; then the
    /// last error. Errors that retrying cannot fix are returned at once.
    pub async fn connect_with_retry(
        endpoint: &BusEndpoint,
        deadline: Instant,
    ) -> Result<SystemdBus, BusError> {
        loop {
            match SystemdBus::connect(endpoint).await {
                Ok(bus) => return Ok(bus),
                Err(
                    e @ (BusError::Connect { .. }
                    | BusError::Handshake { .. }
                    | BusError::Setup { .. }
                    | BusError::Disconnected { .. }),
                ) => {
                    if Instant::now() + RETRY_PAUSE >= deadline {
                        return Err(e);
                    }
                    tracing::debug!("systemd not reachable yet: {e}");
                    tokio::time::sleep(RETRY_PAUSE).await;
                }
                Err(e) => return Err(e),
            }
        }
    }

    /// The socket this client is connected to.
    pub fn socket(&self) -> &Path {
        &self.shared.socket
    }

    /// Starts `unit` (mode `replace`) and waits for its job to end.
    ///
    /// For a `Type=oneshot` service the job ends when the command has exited; for
    /// `Type=simple` as soon as it was spawned. There is no timeout here beyond
    /// the unit's own (`TimeoutStartSec=`): wrap the call in
    /// `tokio::time::timeout` to bound it.
    pub async fn start_unit(&self, unit: &str) -> Result<JobOutcome, BusError> {
        let rx = self.subscribe_events()?;
        let job = self
            .manager
            .start_unit(unit, "replace")
            .await
            .map_err(|e| self.call_error("StartUnit", unit, e))?;
        self.wait_job(rx, job, "StartUnit", unit).await
    }

    /// Stops `unit` (mode `replace`) and waits for its job to end.
    pub async fn stop_unit(&self, unit: &str) -> Result<JobOutcome, BusError> {
        let rx = self.subscribe_events()?;
        let job = self
            .manager
            .stop_unit(unit, "replace")
            .await
            .map_err(|e| self.call_error("StopUnit", unit, e))?;
        self.wait_job(rx, job, "StopUnit", unit).await
    }

    /// Sends `signal` to `whom` of `unit`'s processes; systemd records the outcome
    /// as for any other death (`Result` `signal` for an unhandled SIGKILL).
    pub async fn kill_unit(&self, unit: &str, whom: KillWhom, signal: i32) -> Result<(), BusError> {
        self.manager
            .kill_unit(unit, whom.as_str(), signal)
            .await
            .map_err(|e| self.call_error("KillUnit", unit, e))
    }

    /// `daemon-reload`: rereads unit files (after installing new ones).
    pub async fn reload(&self) -> Result<(), BusError> {
        self.manager
            .reload()
            .await
            .map_err(|e| self.call_error("Reload", "", e))
    }

    /// `SystemState`: `initializing`, `starting`, `running`, `degraded`,
    /// `maintenance` or `stopping`.
    pub async fn manager_state(&self) -> Result<String, BusError> {
        self.manager
            .system_state()
            .await
            .map_err(|e| self.call_error("Get(SystemState)", "", e))
    }

    /// The current status of `unit`, loading it if needed.
    /// A unit without a unit file is [`BusError::NoSuchUnit`].
    pub async fn unit_status(&self, unit: &str) -> Result<UnitStatus, BusError> {
        let path = self.unit_path(unit).await?;
        self.status_at(unit, &path).await
    }

    /// Changes of `units`: first the current status of each (in the order given),
    /// then one [`UnitChange`] whenever systemd announces a change of one of them
    /// and the status read afterwards differs from the last one reported. Quick
    /// successive changes may fold into one. The stream ends with
    /// [`BusError::Disconnected`] when systemd goes away.
    pub async fn watch(&self, units: &[String]) -> Result<UnitChanges, BusError> {
        watch::watch(self, units).await
    }

    fn subscribe_events(&self) -> Result<broadcast::Receiver<Event>, BusError> {
        let rx = self.shared.events.subscribe();
        // The dispatcher sets the flag before it sends Disconnected: either this
        // receiver gets the event or the flag is already visible.
        if self.shared.disconnected.load(Ordering::Acquire) {
            return Err(self.disconnected());
        }
        Ok(rx)
    }

    async fn wait_job(
        &self,
        mut rx: broadcast::Receiver<Event>,
        job: OwnedObjectPath,
        method: &'static str,
        unit: &str,
    ) -> Result<JobOutcome, BusError> {
        loop {
            match rx.recv().await {
                Ok(Event::Signal(msg)) => {
                    let Some(removed) = JobRemoved::from_message(msg) else {
                        continue;
                    };
                    let Ok(args) = removed.args() else {
                        continue;
                    };
                    if args.job.as_str() == job.as_str() {
                        return Ok(JobOutcome::from_result(args.result));
                    }
                }
                Ok(Event::Disconnected) | Err(broadcast::error::RecvError::Closed) => {
                    return Err(self.disconnected());
                }
                Err(broadcast::error::RecvError::Lagged(_)) => {
                    return Err(BusError::SignalsLost {
                        method,
                        unit: unit.to_owned(),
                    });
                }
            }
        }
    }

    async fn unit_path(&self, unit: &str) -> Result<OwnedObjectPath, BusError> {
        let path = self
            .manager
            .load_unit(unit)
            .await
            .map_err(|e| self.call_error("LoadUnit", unit, e))?;
        let load_state = self
            .unit_proxy(unit, &path)
            .await?
            .load_state()
            .await
            .map_err(|e| self.call_error("Get(LoadState)", unit, e))?;
        if load_state == "not-found" {
            return Err(BusError::NoSuchUnit {
                unit: unit.to_owned(),
            });
        }
        Ok(path)
    }

    async fn unit_proxy(
        &self,
        unit: &str,
        path: &OwnedObjectPath,
    ) -> Result<UnitProxy<'static>, BusError> {
        UnitProxy::builder(&self.conn)
            .path(path.clone())
            .cache_properties(CacheProperties::No)
            .build()
            .await
            .map_err(|e| self.call_error("org.freedesktop.systemd1.Unit", unit, e))
    }

    async fn status_at(&self, unit: &str, path: &OwnedObjectPath) -> Result<UnitStatus, BusError> {
        let u = self.unit_proxy(unit, path).await?;
        let err = |method| move |e| self.call_error(method, unit, e);
        let (id, load_state, active_state, sub_state) = tokio::try_join!(
            async { u.id().await.map_err(err("Get(Id)")) },
            async { u.load_state().await.map_err(err("Get(LoadState)")) },
            async { u.active_state().await.map_err(err("Get(ActiveState)")) },
            async { u.sub_state().await.map_err(err("Get(SubState)")) },
        )?;
        let service = if id.ends_with(".service") {
            let s = ServiceProxy::builder(&self.conn)
                .path(path.clone())
                .cache_properties(CacheProperties::No)
                .build()
                .await
                .map_err(err("org.freedesktop.systemd1.Service"))?;
            let (result, main_pid, code, status, n_restarts) = tokio::try_join!(
                async { s.result().await.map_err(err("Get(Result)")) },
                async { s.main_pid().await.map_err(err("Get(MainPID)")) },
                async { s.exec_main_code().await.map_err(err("Get(ExecMainCode)")) },
                async {
                    s.exec_main_status()
                        .await
                        .map_err(err("Get(ExecMainStatus)"))
                },
                async { s.n_restarts().await.map_err(err("Get(NRestarts)")) },
            )?;
            Some(ServiceStatus {
                result,
                main_pid: (main_pid != 0).then_some(main_pid),
                exec_main: ExecMain::from_code(code, status),
                n_restarts,
            })
        } else {
            None
        };
        Ok(UnitStatus {
            id,
            load_state,
            active_state: ActiveState::parse(&active_state),
            sub_state,
            service,
        })
    }

    fn disconnected(&self) -> BusError {
        BusError::Disconnected {
            path: self.shared.socket.clone(),
        }
    }

    /// Maps a zbus error to ours: a closed connection is [`BusError::Disconnected`],
    /// systemd's `NoSuchUnit` is [`BusError::NoSuchUnit`].
    fn call_error(&self, method: &'static str, unit: &str, source: zbus::Error) -> BusError {
        if let zbus::Error::MethodError(name, _, _) = &source
            && name.as_str() == "org.freedesktop.systemd1.NoSuchUnit"
        {
            return BusError::NoSuchUnit {
                unit: unit.to_owned(),
            };
        }
        if self.conn.is_closed()
            || self.shared.disconnected.load(Ordering::Acquire)
            || is_connection_loss(&source)
        {
            return self.disconnected();
        }
        BusError::Call {
            method,
            unit: unit.to_owned(),
            source,
        }
    }
}

/// Whether a call failed because the socket went away (systemd died, or the
/// container with it), which can be seen before the reader notices the end.
fn is_connection_loss(error: &zbus::Error) -> bool {
    let zbus::Error::InputOutput(e) = error else {
        return false;
    };
    matches!(
        e.kind(),
        io::ErrorKind::ConnectionReset
            | io::ErrorKind::BrokenPipe
            | io::ErrorKind::NotConnected
            | io::ErrorKind::UnexpectedEof
            | io::ErrorKind::ConnectionAborted
    )
}

/// Reads every message of the connection and fans the signals out.
async fn dispatch(
    mut messages: MessageStream,
    events: broadcast::Sender<Event>,
    disconnected: Arc<AtomicBool>,
) {
    while let Some(Ok(msg)) = messages.next().await {
        if msg.message_type() == MessageType::Signal {
            // No receivers is fine: nobody is waiting right now.
            let _ = events.send(Event::Signal(msg));
        }
    }
    disconnected.store(true, Ordering::Release);
    let _ = events.send(Event::Disconnected);
}
