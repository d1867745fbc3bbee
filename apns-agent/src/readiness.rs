//! Readiness as a protocol: systemd's notify protocol (`sd_notify(3)`), spoken by `run` so
//! that a `Type=notify` unit, the tests, the demo and the benchmark wait for the real event
//! instead of a log line:
//!
//! | message | when |
//! |---|---|
//! | `READY=1` | the datapath is installed, attached and its policy applied, and /metrics is served |
//! | `RELOADING=1` (with `MONOTONIC_USEC`), then `READY=1` | around a SIGHUP reload, whatever its outcome |
//! | `STOPPING=1` | on SIGTERM/SIGINT, before `run` detaches (with --detach-on-exit) and exits |
//! | `STATUS=…` | with each of the above: one line for `systemctl status` |
//!
//! Without `NOTIFY_SOCKET` in the environment (not started by systemd or a test) nothing is
//! sent. A failure to send is logged, never fatal: the datapath matters more than the
//! service manager's view of it.

use sd_notify::NotifyState;

pub fn ready(status: &str) {
    send(&[NotifyState::Ready, NotifyState::Status(status)]);
}

pub fn reloading() {
    let mut states = vec![
        NotifyState::Reloading,
        NotifyState::Status("reloading the config"),
    ];
    // systemd (Type=notify-reload) wants the reload's start time with RELOADING=1.
    if let Ok(now) = NotifyState::monotonic_usec_now() {
        states.push(now);
    }
    send(&states);
}

pub fn stopping() {
    send(&[NotifyState::Stopping, NotifyState::Status("stopping")]);
}

fn send(states: &[NotifyState]) {
    if let Err(err) = sd_notify::notify(states) {
        tracing::warn!("telling the service manager ({}): {err}", states[0]);
    }
}
