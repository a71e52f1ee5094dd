//! Talking to systemd: readiness, reload and stop notifications, status line, watchdog
//! (sd_notify; silently nothing when not started by systemd), and where the logs go.

use std::time::Duration;

use sd_notify::NotifyState;

use crate::shutdown::Shutdown;

fn send(states: &[NotifyState<'_>]) {
    if let Err(e) = sd_notify::notify(false, states) {
        tracing::debug!("sd_notify failed: {e}");
    }
}

pub fn ready(status: &str) {
    send(&[NotifyState::Ready, NotifyState::Status(status)]);
}

pub fn reloading() {
    match NotifyState::monotonic_usec_now() {
        Ok(now) => send(&[NotifyState::Reloading, now]),
        Err(_) => send(&[NotifyState::Reloading]),
    }
}

pub fn stopping() {
    send(&[NotifyState::Stopping, NotifyState::Status("stopping")]);
}

pub fn status(line: &str) {
    send(&[NotifyState::Status(line)]);
}

/// Sends WATCHDOG=1 at half the interval systemd asked for, if it asked, until shutdown.
pub fn spawn_watchdog(shutdown: Shutdown) {
    let mut usec = 0;
    if sd_notify::watchdog_enabled(false, &mut usec) && usec > 0 {
        let every = Duration::from_micros(usec / 2);
        tokio::spawn(super::until_stopped(shutdown, async move {
            let mut tick = tokio::time::interval(every);
            loop {
                tick.tick().await;
                send(&[NotifyState::Watchdog]);
            }
        }));
    }
}

/// Whether stderr goes to the journal: `JOURNAL_STREAM` names its device and inode (systemd
/// sets it; a child whose stderr was redirected elsewhere inherits it, so it is checked).
pub fn stderr_is_journal() -> bool {
    use std::os::fd::AsRawFd;
    let Some(named) = std::env::var_os("JOURNAL_STREAM") else {
        return false;
    };
    let Some((dev, ino)) = named.to_str().and_then(|t| t.split_once(':')) else {
        return false;
    };
    match nix::sys::stat::fstat(std::io::stderr().as_raw_fd()) {
        Ok(st) => dev.parse() == Ok(st.st_dev) && ino.parse() == Ok(st.st_ino),
        Err(_) => false,
    }
}

/// Logs to journald when running under systemd, to stderr otherwise.
/// `RUST_LOG` sets the level (default info).
pub fn init_logging() {
    use tracing_subscriber::prelude::*;
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let under_systemd =
        std::env::var_os("JOURNAL_STREAM").is_some() || std::env::var_os("INVOCATION_ID").is_some();
    let journald = under_systemd
        .then(tracing_journald::layer)
        .and_then(Result::ok);
    let registry = tracing_subscriber::registry().with(filter);
    match journald {
        Some(layer) => registry.with(layer).init(),
        None => registry
            .with(tracing_subscriber::fmt::layer().with_writer(std::io::stderr))
            .init(),
    }
}
