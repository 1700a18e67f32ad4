//! systemd readiness (`Type=notify`): `READY=1` once the mount answers, `STOPPING=1` on the way
//! out, and a status line. No-ops when `NOTIFY_SOCKET` is not set.

use sd_notify::NotifyState;

/// Tells systemd the mount is up.
pub fn ready(status: &str) {
    if std::env::var_os("NOTIFY_SOCKET").is_none() {
        return;
    }
    if let Err(e) = sd_notify::notify(&[NotifyState::Ready, NotifyState::Status(status)]) {
        tracing::warn!(error = %e, "could not notify systemd");
    }
}

/// Tells systemd the daemon is stopping.
pub fn stopping() {
    if std::env::var_os("NOTIFY_SOCKET").is_none() {
        return;
    }
    let _ = sd_notify::notify(&[NotifyState::Stopping, NotifyState::Status("Unmounting")]);
}
