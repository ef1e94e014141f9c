//! Guest tier: the guest's systemd (PID 1) answers on the system bus.

mod support;

#[test]
#[ignore = "guest tier: cargo xtask guest-test"]
fn guest_systemd_answers_over_dbus_with_its_version() {
    if !support::in_guest() {
        return;
    }
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("tokio runtime");
    let version: String = runtime
        .block_on(async {
            let bus = zbus::Connection::system().await?;
            let manager = zbus::Proxy::new(
                &bus,
                "org.freedesktop.systemd1",
                "/org/freedesktop/systemd1",
                "org.freedesktop.systemd1.Manager",
            )
            .await?;
            manager.get_property::<String>("Version").await
        })
        .expect("asking systemd for its Version over D-Bus");
    let major = version.split(['.', '-', '~']).next().unwrap_or_default();
    assert!(
        major.parse::<u32>().is_ok_and(|m| m >= 252),
        "systemd Version {version:?}"
    );
}
