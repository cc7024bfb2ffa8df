//! Deadlines the hub keeps besides mailbox expiry: request and channel-call timeouts,
//! parked attaches, stalled connections. A min-heap; entries whose subject has gone are
//! skipped by the hub when they fire.

use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::time::Instant;

use super::ConnId;

/// What a deadline is for.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) enum Timer {
    /// The request `(requester pid, corr)`.
    Request(u32, u64),
    /// The channel call with this hub correlation id.
    Call(u64),
    /// The attach parked on this connection.
    Attach(ConnId),
    /// Check whether this connection has stalled.
    Stall(ConnId),
    /// A closing connection's time to take what is queued for it is up.
    CloseGrace(ConnId),
    /// A new connection's time to register is up.
    Register(ConnId),
}

#[derive(Debug, Default)]
pub(crate) struct Timers {
    heap: BinaryHeap<Reverse<(Instant, Timer)>>,
}

impl Timers {
    pub(crate) fn at(&mut self, when: Instant, timer: Timer) {
        self.heap.push(Reverse((when, timer)));
    }

    pub(crate) fn next(&self) -> Option<Instant> {
        self.heap.peek().map(|Reverse((when, _))| *when)
    }

    /// The earliest timer due at `now`, removed.
    pub(crate) fn pop_due(&mut self, now: Instant) -> Option<(Instant, Timer)> {
        match self.heap.peek() {
            Some(Reverse((when, _))) if *when <= now => self.heap.pop().map(|Reverse(t)| t),
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn timers_fire_in_deadline_order() {
        let t0 = Instant::now();
        let mut timers = Timers::default();
        timers.at(t0 + Duration::from_secs(2), Timer::Call(2));
        timers.at(t0 + Duration::from_secs(1), Timer::Call(1));
        assert_eq!(timers.next(), Some(t0 + Duration::from_secs(1)));
        assert!(timers.pop_due(t0).is_none());
        let due = t0 + Duration::from_secs(5);
        assert_eq!(timers.pop_due(due).unwrap().1, Timer::Call(1));
        assert_eq!(timers.pop_due(due).unwrap().1, Timer::Call(2));
        assert!(timers.pop_due(due).is_none());
    }
}
