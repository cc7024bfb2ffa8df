//! A limit on repeated log lines of one kind: a flood of bad input or refusals must not turn
//! into a flood of log lines.

use std::time::{Duration, Instant};

/// Logs at most a few messages of one kind per second, then says how many it left out.
#[derive(Debug, Default)]
pub(crate) struct LogLimiter {
    window: Option<Instant>,
    in_window: u32,
    pub(crate) suppressed: u64,
    /// Lines allowed since the beacon started (for tests).
    pub(crate) logged: u64,
}

impl LogLimiter {
    const PER_SECOND: u32 = 5;

    /// Whether to log now; with the count of messages left out since the last one logged.
    pub(crate) fn allow(&mut self, now: Instant) -> Option<u64> {
        match self.window {
            Some(start) if now.duration_since(start) < Duration::from_secs(1) => {}
            _ => {
                self.window = Some(now);
                self.in_window = 0;
            }
        }
        if self.in_window < Self::PER_SECOND {
            self.in_window += 1;
            self.logged += 1;
            Some(std::mem::take(&mut self.suppressed))
        } else {
            self.suppressed += 1;
            None
        }
    }
}
