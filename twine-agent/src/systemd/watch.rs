//! The watch behind [`SystemdBus::watch`]: the [`UnitChanges`] stream and the
//! state that turns systemd's `PropertiesChanged` signals into [`UnitChange`]s.
//!
//! A watch subscribes to the dispatcher's broadcast before it reads any unit,
//! reports a unit only when its status differs from the last one reported,
//! prefers the values a signal carries to a fresh read (systemd may have
//! collected the unit by then), and re-reads every unit when it fell behind.

use std::collections::{HashMap, VecDeque};
use std::fmt;
use std::pin::Pin;
use std::task::{Context, Poll};

use futures_util::Stream;
use tokio::sync::broadcast;
use zbus::{Message, OwnedObjectPath};

use super::proxies::PropertiesChanged;
use super::{ActiveState, BusError, Event, ExecMain, SystemdBus, UnitChange, UnitStatus};

/// The stream returned by [`SystemdBus::watch`].
pub struct UnitChanges {
    inner: Pin<Box<dyn Stream<Item = Result<UnitChange, BusError>> + Send>>,
}

impl fmt::Debug for UnitChanges {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("UnitChanges").finish_non_exhaustive()
    }
}

impl Stream for UnitChanges {
    type Item = Result<UnitChange, BusError>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        self.inner.as_mut().poll_next(cx)
    }
}

/// Starts a watch of `units` for [`SystemdBus::watch`]: subscribes to the
/// signals before the first read, so no change can slip between the two.
pub(super) async fn watch(bus: &SystemdBus, units: &[String]) -> Result<UnitChanges, BusError> {
    let rx = bus.subscribe_events()?;
    let mut watched = Vec::with_capacity(units.len());
    for unit in units {
        watched.push((unit.clone(), bus.unit_path(unit).await?));
    }
    let mut state = WatchState {
        bus: bus.clone(),
        rx,
        units: watched,
        last: HashMap::new(),
        pending: VecDeque::new(),
        ended: false,
    };
    state.resync().await;
    if state.ended {
        return Err(bus.disconnected());
    }
    Ok(UnitChanges {
        inner: Box::pin(futures_util::stream::unfold(state, WatchState::step)),
    })
}

struct WatchState {
    bus: SystemdBus,
    rx: broadcast::Receiver<Event>,
    units: Vec<(String, OwnedObjectPath)>,
    last: HashMap<String, UnitStatus>,
    pending: VecDeque<Result<UnitChange, BusError>>,
    ended: bool,
}

impl WatchState {
    async fn step(mut self) -> Option<(Result<UnitChange, BusError>, WatchState)> {
        loop {
            if let Some(item) = self.pending.pop_front() {
                return Some((item, self));
            }
            if self.ended {
                return None;
            }
            match self.rx.recv().await {
                Ok(Event::Signal(msg)) => {
                    if let Some(i) = self.concerned(&msg) {
                        let from_signal = self.with_signal(i, &msg);
                        self.refresh(i, from_signal).await;
                    }
                }
                Ok(Event::Disconnected) | Err(broadcast::error::RecvError::Closed) => {
                    self.ended = true;
                    self.pending.push_back(Err(self.bus.disconnected()));
                }
                Err(broadcast::error::RecvError::Lagged(n)) => {
                    tracing::debug!("watch fell {n} signals behind; re-reading every unit");
                    self.resync().await;
                }
            }
        }
    }

    /// The index of the watched unit a `PropertiesChanged` signal is about.
    fn concerned(&self, msg: &Message) -> Option<usize> {
        let header = msg.header();
        let path = header.path()?;
        let i = self
            .units
            .iter()
            .position(|(_, p)| p.as_str() == path.as_str())?;
        PropertiesChanged::from_message(msg.clone())?;
        Some(i)
    }

    /// The unit's last status with the values a `PropertiesChanged` signal
    /// carries applied (systemd sends the new values of `ActiveState`,
    /// `SubState`, `Result`, `ExecMainCode`, `ExecMainStatus`, `NRestarts`...).
    /// It stands in for a fresh read when the unit is gone by the time it is
    /// read: systemd collects an inactive unit right after its last change.
    fn with_signal(&self, i: usize, msg: &Message) -> Option<UnitStatus> {
        let (unit, _) = &self.units[i];
        let mut status = self.last.get(unit)?.clone();
        let signal = PropertiesChanged::from_message(msg.clone())?;
        let args = signal.args().ok()?;
        tracing::trace!(
            "{unit}: {} changed {:?}, invalidated {:?}",
            args.interface,
            args.changed.keys().collect::<Vec<_>>(),
            args.invalidated
        );
        let (mut exec_code, mut exec_status) = (None, None);
        for (name, value) in args.changed.iter() {
            let text = || String::try_from(value.try_clone().ok()?).ok();
            let int = || i32::try_from(value.try_clone().ok()?).ok();
            let uint = || u32::try_from(value.try_clone().ok()?).ok();
            match *name {
                "ActiveState" => {
                    if let Some(v) = text() {
                        status.active_state = ActiveState::parse(&v);
                    }
                }
                "SubState" => {
                    if let Some(v) = text() {
                        status.sub_state = v;
                    }
                }
                "LoadState" => {
                    if let Some(v) = text() {
                        status.load_state = v;
                    }
                }
                _ => {}
            }
            if let Some(service) = status.service.as_mut() {
                match *name {
                    "Result" => {
                        if let Some(v) = text() {
                            service.result = v;
                        }
                    }
                    "MainPID" => {
                        if let Some(v) = uint() {
                            service.main_pid = (v != 0).then_some(v);
                        }
                    }
                    "NRestarts" => {
                        if let Some(v) = uint() {
                            service.n_restarts = v;
                        }
                    }
                    "ExecMainCode" => exec_code = int(),
                    "ExecMainStatus" => exec_status = int(),
                    _ => {}
                }
            }
        }
        // Code and status come as a pair, in any order within the signal.
        if let Some(service) = status.service.as_mut()
            && (exec_code.is_some() || exec_status.is_some())
        {
            let (code, st) = service.exec_main.code_and_status();
            service.exec_main =
                ExecMain::from_code(exec_code.unwrap_or(code), exec_status.unwrap_or(st));
        }
        Some(status)
    }

    /// Reports unit `i` after a change: from the signal's values on top of the
    /// last status when there is one (systemd sends the new values of every
    /// property the status holds), else from a fresh read. A read is avoided
    /// where it can be: systemd loads a collected unit again when its object
    /// is read, and would answer with a fresh unit's blank exit status.
    async fn refresh(&mut self, i: usize, from_signal: Option<UnitStatus>) {
        let (unit, path) = &self.units[i];
        let read = match from_signal {
            Some(status) => Ok(status),
            None => self.bus.status_at(unit, path).await,
        };
        match read {
            Ok(status) => {
                if self.last.get(unit) != Some(&status) {
                    self.last.insert(unit.clone(), status.clone());
                    self.pending.push_back(Ok(UnitChange {
                        unit: unit.clone(),
                        status,
                    }));
                }
            }
            Err(e @ BusError::Disconnected { .. }) => {
                self.ended = true;
                self.pending.push_back(Err(e));
            }
            Err(e) => self.pending.push_back(Err(e)),
        }
    }

    /// Reads every unit again; errors are queued as items.
    async fn resync(&mut self) {
        for i in 0..self.units.len() {
            if self.ended {
                break;
            }
            self.refresh(i, None).await;
        }
    }
}
