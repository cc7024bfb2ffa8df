//! The systemd notify protocol, for a node run as a `Type=notify` unit: `READY=1` once the node
//! has started, `RELOADING=1` / `READY=1` around a reload, `STOPPING=1` at shutdown, and
//! `WATCHDOG=1` pings when the unit sets `WatchdogSec=`.
//!
//! The protocol is one datagram per message to the socket named by `NOTIFY_SOCKET` (a path, or
//! an abstract name after `@`). [`Notifier::take_from_env`] reads the variables once and
//! removes them from the environment before any thread starts, so that supervised services do
//! not inherit them and cannot speak for the node.
//!
//! Messages are sent in order by a thread of their own, so that a service manager slow to
//! read never holds up the node: a state change (`READY`, `RELOADING`, `STOPPING`) waits up to
//! [`SEND_TIMEOUT`] for room in the manager's queue; a watchdog ping that finds the thread's
//! own queue full is skipped (the next one follows).

use std::os::unix::net::UnixDatagram;
use std::sync::mpsc::{sync_channel, SyncSender, TrySendError};
use std::time::Duration;

/// Longest wait for room in the service manager's queue.
pub const SEND_TIMEOUT: Duration = Duration::from_secs(2);
/// Messages waiting for the sending thread.
const QUEUE: usize = 64;

/// Where notifications go; does nothing when the node was not started by systemd.
#[derive(Debug, Clone, Default)]
pub struct Notifier {
    socket: Option<String>,
    watchdog: Option<Duration>,
    queue: Option<SyncSender<String>>,
}

impl Notifier {
    /// Reads `NOTIFY_SOCKET` and `WATCHDOG_USEC` (honoured only when `WATCHDOG_PID` is unset
    /// or this process), then removes them and `WATCHDOG_PID` from the environment. Must be
    /// called before the node starts any thread.
    pub fn take_from_env() -> Notifier {
        let socket = std::env::var("NOTIFY_SOCKET")
            .ok()
            .filter(|s| !s.is_empty());
        let for_us = std::env::var("WATCHDOG_PID")
            .map(|pid| pid.trim() == std::process::id().to_string())
            .unwrap_or(true);
        let watchdog = std::env::var("WATCHDOG_USEC")
            .ok()
            .and_then(|usec| usec.trim().parse::<u64>().ok())
            .filter(|usec| *usec > 0 && for_us)
            .map(Duration::from_micros);
        for var in ["NOTIFY_SOCKET", "WATCHDOG_USEC", "WATCHDOG_PID"] {
            // SAFETY: called by `main` before any other thread exists (see the doc).
            std::env::remove_var(var);
        }
        let queue = socket.clone().and_then(start_sender);
        Notifier {
            socket,
            watchdog,
            queue,
        }
    }

    /// Whether a notify socket was given.
    pub fn enabled(&self) -> bool {
        self.socket.is_some()
    }

    /// How often to ping the watchdog: half its timeout, as systemd recommends.
    pub fn watchdog_interval(&self) -> Option<Duration> {
        self.watchdog.filter(|_| self.enabled()).map(|w| w / 2)
    }

    /// Sends `state` (`READY=1`, `STATUS=...`, one assignment per line), in order, from the
    /// sending thread; never blocks the caller. See the module doc for what may be skipped.
    pub fn notify(&self, state: &str) {
        let Some(queue) = &self.queue else {
            return;
        };
        match queue.try_send(state.to_string()) {
            Ok(()) => {}
            Err(TrySendError::Full(_)) if state == "WATCHDOG=1" => {}
            Err(TrySendError::Full(_)) | Err(TrySendError::Disconnected(_)) => {
                tracing::warn!(
                    state,
                    "cannot notify the service manager: its sender is stuck"
                );
            }
        }
    }
}

/// Starts the thread that sends to `socket`.
fn start_sender(socket: String) -> Option<SyncSender<String>> {
    let (queue, states) = sync_channel::<String>(QUEUE);
    let started = std::thread::Builder::new()
        .name("troupe-notify".into())
        .spawn(move || {
            for state in states {
                if let Err(err) = send(&socket, &state) {
                    tracing::warn!(socket = %socket, %err, state, "cannot notify the service manager");
                }
            }
        });
    match started {
        Ok(_) => Some(queue),
        Err(err) => {
            tracing::warn!(%err, "cannot start the thread that notifies the service manager");
            None
        }
    }
}

fn send(socket: &str, state: &str) -> std::io::Result<()> {
    let datagram = UnixDatagram::unbound()?;
    datagram.set_write_timeout(Some(SEND_TIMEOUT))?;
    match socket.strip_prefix('@') {
        Some(name) => {
            use std::os::linux::net::SocketAddrExt;
            let addr = std::os::unix::net::SocketAddr::from_abstract_name(name.as_bytes())?;
            datagram.send_to_addr(state.as_bytes(), &addr)?;
        }
        None => {
            datagram.send_to(state.as_bytes(), socket)?;
        }
    }
    Ok(())
}

/// How often the node looks whether its services are ready before telling systemd.
const READY_POLL: Duration = Duration::from_millis(50);

/// Sends `READY=1` once no supervised service is still starting (every service with a
/// readiness check has passed it), then pings the watchdog for as long as the node's main
/// event loop runs. Does nothing without a notify socket.
pub fn spawn_ready_and_watchdog(notifier: Notifier, published: troupe_core::context::Published) {
    if !notifier.enabled() {
        return;
    }
    actix_rt::spawn(async move {
        if let Some(supervisor) = published.lookup::<actix::Addr<troupe_supervisor::Supervisor>>() {
            // Bounded by the node's life: the task ends with the System.
            loop {
                match supervisor
                    .send(troupe_supervisor::messages::ServiceStatuses)
                    .await
                {
                    Ok(services) => {
                        let starting = services
                            .iter()
                            .filter(|s| s.state == troupe_supervisor::ServiceState::Starting)
                            .count();
                        if starting == 0 {
                            break;
                        }
                    }
                    Err(_) => break,
                }
                tokio::time::sleep(READY_POLL).await;
            }
        }
        notifier.notify("READY=1");
        tracing::info!("told the service manager the node is ready");
        if let Some(every) = notifier.watchdog_interval() {
            let mut ticks = tokio::time::interval(every);
            loop {
                ticks.tick().await;
                notifier.notify("WATCHDOG=1");
            }
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_reach_a_path_socket_and_nothing_is_sent_without_one() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("notify");
        let receiver = UnixDatagram::bind(&path).unwrap();
        receiver
            .set_read_timeout(Some(Duration::from_secs(10)))
            .unwrap();
        let socket = path.to_string_lossy().into_owned();
        let notifier = Notifier {
            queue: start_sender(socket.clone()),
            socket: Some(socket),
            watchdog: Some(Duration::from_secs(10)),
        };
        notifier.notify("READY=1");
        let mut buf = [0u8; 64];
        let n = receiver.recv(&mut buf).unwrap();
        assert_eq!(&buf[..n], b"READY=1");
        assert_eq!(notifier.watchdog_interval(), Some(Duration::from_secs(5)));
        let silent = Notifier::default();
        assert!(!silent.enabled());
        assert_eq!(silent.watchdog_interval(), None);
        silent.notify("READY=1");
    }
}
