//! SIGINT and SIGTERM as one async stream of signal numbers, and SIGHUP on its own.

use tokio::signal::unix::{signal, Signal, SignalKind};

/// Both stop signals.
pub struct Signals {
    interrupt: Signal,
    terminate: Signal,
}

impl Signals {
    /// Starts listening. Must run inside a tokio runtime.
    pub fn new() -> std::io::Result<Self> {
        Ok(Signals {
            interrupt: signal(SignalKind::interrupt())?,
            terminate: signal(SignalKind::terminate())?,
        })
    }

    /// The next signal's number.
    pub async fn recv(&mut self) -> i32 {
        tokio::select! {
            _ = self.interrupt.recv() => libc::SIGINT,
            _ = self.terminate.recv() => libc::SIGTERM,
        }
    }
}

/// SIGHUP, which asks the node to reload its configuration. Listening for it replaces its
/// default action (ending the process), from the moment the node starts.
pub struct Hangups(Signal);

impl Hangups {
    /// Starts listening. Must run inside a tokio runtime.
    pub fn new() -> std::io::Result<Self> {
        Ok(Hangups(signal(SignalKind::hangup())?))
    }

    /// Waits for the next SIGHUP.
    pub async fn recv(&mut self) {
        self.0.recv().await;
    }
}
