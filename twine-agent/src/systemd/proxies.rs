//! The few `org.freedesktop.systemd1` members twine uses, declared with zbus 6's
//! `#[proxy]` (zbus_systemd is pinned to zbus 5; see the module docs of
//! [`crate::systemd`]).
//!
//! The macro generates, per member, a call or getter plus (for signals and
//! properties that emit changes) a `receive_*` stream. The streams are never used
//! here: they subscribe through the bus daemon's `AddMatch`, which the private
//! socket does not have. Signals are read from the connection's unfiltered
//! message stream and decoded with the generated `JobRemoved`/`UnitNew`/
//! `PropertiesChanged` wrappers instead.
// The macro emits a getter, a change stream and a signal stream per member; we use a subset.
#![allow(dead_code)]

use std::collections::HashMap;

use zbus::{ObjectPath, OwnedObjectPath, Variant};

/// `org.freedesktop.systemd1.Manager` on `/org/freedesktop/systemd1`.
#[zbus::proxy(
    interface = "org.freedesktop.systemd1.Manager",
    default_service = "org.freedesktop.systemd1",
    default_path = "/org/freedesktop/systemd1"
)]
pub(crate) trait Manager {
    /// Asks systemd to send signals to this client.
    fn subscribe(&self) -> zbus::Result<()>;

    /// Enqueues a start job; returns the job's object path.
    fn start_unit(&self, name: &str, mode: &str) -> zbus::Result<OwnedObjectPath>;

    /// Enqueues a stop job; returns the job's object path.
    fn stop_unit(&self, name: &str, mode: &str) -> zbus::Result<OwnedObjectPath>;

    /// Sends `signal` to the unit's processes (`whom`: `main`, `control` or `all`).
    fn kill_unit(&self, name: &str, whom: &str, signal: i32) -> zbus::Result<()>;

    /// The object path of a loaded unit (fails with `NoSuchUnit` when not loaded).
    fn get_unit(&self, name: &str) -> zbus::Result<OwnedObjectPath>;

    /// The object path of a unit, loading it from disk if needed.
    fn load_unit(&self, name: &str) -> zbus::Result<OwnedObjectPath>;

    /// `daemon-reload`.
    fn reload(&self) -> zbus::Result<()>;

    /// A job finished.
    #[zbus(signal)]
    fn job_removed(
        &self,
        id: u32,
        job: ObjectPath<'_>,
        unit: &str,
        result: &str,
    ) -> zbus::Result<()>;

    /// A unit was loaded.
    #[zbus(signal)]
    fn unit_new(&self, id: &str, unit: ObjectPath<'_>) -> zbus::Result<()>;

    /// `initializing`, `starting`, `running`, `degraded`, `maintenance` or `stopping`.
    #[zbus(property)]
    fn system_state(&self) -> zbus::Result<String>;
}

/// `org.freedesktop.systemd1.Unit` on a unit's object path.
#[zbus::proxy(
    interface = "org.freedesktop.systemd1.Unit",
    default_service = "org.freedesktop.systemd1"
)]
pub(crate) trait Unit {
    /// The unit's primary name.
    #[zbus(property)]
    fn id(&self) -> zbus::Result<String>;

    /// `loaded`, `not-found`, `bad-setting`, `error`, `masked`.
    #[zbus(property)]
    fn load_state(&self) -> zbus::Result<String>;

    /// `active`, `inactive`, `failed`, `activating`...
    #[zbus(property)]
    fn active_state(&self) -> zbus::Result<String>;

    /// The type-specific state.
    #[zbus(property)]
    fn sub_state(&self) -> zbus::Result<String>;
}

/// `org.freedesktop.systemd1.Service` on a service unit's object path.
#[zbus::proxy(
    interface = "org.freedesktop.systemd1.Service",
    default_service = "org.freedesktop.systemd1"
)]
pub(crate) trait Service {
    /// `success`, `exit-code`, `signal`, `core-dump`...
    #[zbus(property)]
    fn result(&self) -> zbus::Result<String>;

    /// The main process, 0 when there is none.
    #[zbus(property, name = "MainPID")]
    fn main_pid(&self) -> zbus::Result<u32>;

    /// The `CLD_*` code of the last main process.
    #[zbus(property)]
    fn exec_main_code(&self) -> zbus::Result<i32>;

    /// The exit status or signal of the last main process.
    #[zbus(property)]
    fn exec_main_status(&self) -> zbus::Result<i32>;

    /// Automatic restarts so far.
    #[zbus(property, name = "NRestarts")]
    fn n_restarts(&self) -> zbus::Result<u32>;
}

/// `org.freedesktop.DBus.Properties` on a unit's object path, for its signal.
#[zbus::proxy(
    interface = "org.freedesktop.DBus.Properties",
    default_service = "org.freedesktop.systemd1"
)]
pub(crate) trait UnitProperties {
    /// Some properties of `interface` changed (systemd sends the values of
    /// some, and lists others as invalidated).
    #[zbus(signal)]
    fn properties_changed(
        &self,
        interface: &str,
        changed: HashMap<&str, Variant<'_>>,
        invalidated: Vec<&str>,
    ) -> zbus::Result<()>;
}
