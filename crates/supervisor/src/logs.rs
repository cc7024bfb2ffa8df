//! Each service's recent output: a ring of its last lines (bounded by a number of lines and a
//! number of bytes of text), shared between the output readers that fill it and the API that
//! reads it, and a broadcast channel for followers. The ring outlives restarts (each line
//! names its generation and pid) and is dropped with the child.
//!
//! A snapshot and a subscription are taken under the ring's lock, the same lock a new line
//! is pushed under, so a follower sees every line after its snapshot exactly once. A follower
//! that falls more than [`FOLLOW_CAPACITY`] lines behind gets tokio's `Lagged` error; a push
//! never waits for a reader.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};

use serde::Serialize;
use tokio::sync::broadcast;

/// Lines a follower may fall behind before it gets `Lagged`.
pub const FOLLOW_CAPACITY: usize = 1024;

/// One line of a service's output.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct LogLine {
    /// When it was read, in milliseconds since the Unix epoch.
    pub at_unix_ms: u64,
    /// `stdout` or `stderr`.
    pub stream: &'static str,
    /// Generation of the run that wrote it.
    pub generation: u64,
    /// Process that wrote it (the service's main process).
    pub pid: u32,
    /// The line, without its newline (invalid UTF-8 replaced).
    pub text: String,
}

/// The answer to [`GetLogs`](crate::messages::GetLogs).
#[derive(Debug)]
pub struct ServiceLogs {
    /// The latest lines asked for, oldest first.
    pub lines: Vec<LogLine>,
    /// When following: every line pushed after `lines`, with no gap and no duplicate.
    pub follow: Option<broadcast::Receiver<Arc<LogLine>>>,
}

/// One service's ring of recent lines.
#[derive(Debug)]
pub(crate) struct LogRing {
    inner: Mutex<Ring>,
}

#[derive(Debug)]
struct Ring {
    lines: VecDeque<Arc<LogLine>>,
    bytes: usize,
    max_lines: usize,
    max_bytes: usize,
    /// Created for the first follower, dropped once none is left.
    followers: Option<broadcast::Sender<Arc<LogLine>>>,
}

impl Ring {
    fn trim(&mut self) {
        while self.lines.len() > self.max_lines || self.bytes > self.max_bytes {
            match self.lines.pop_front() {
                Some(old) => self.bytes -= old.text.len(),
                None => break,
            }
        }
    }
}

impl LogRing {
    /// An empty ring keeping at most `max_lines` lines and `max_bytes` bytes of text.
    pub(crate) fn new(max_lines: usize, max_bytes: usize) -> Self {
        LogRing {
            inner: Mutex::new(Ring {
                lines: VecDeque::new(),
                bytes: 0,
                max_lines,
                max_bytes,
                followers: None,
            }),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Ring> {
        // A panic while holding the lock leaves the ring consistent enough to keep using.
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// New bounds; older lines are dropped at once if the ring is over them.
    pub(crate) fn set_limits(&self, max_lines: usize, max_bytes: usize) {
        let mut ring = self.lock();
        ring.max_lines = max_lines;
        ring.max_bytes = max_bytes;
        ring.trim();
    }

    /// Adds the line `make` builds, unless nobody would see it (nothing kept, no follower).
    pub(crate) fn push_with(&self, make: impl FnOnce() -> LogLine) {
        let mut ring = self.lock();
        if ring
            .followers
            .as_ref()
            .is_some_and(|f| f.receiver_count() == 0)
        {
            ring.followers = None;
        }
        let keep = ring.max_lines > 0 && ring.max_bytes > 0;
        if !keep && ring.followers.is_none() {
            return;
        }
        let line = Arc::new(make());
        if let Some(followers) = &ring.followers {
            // Fails only without receivers; a slow receiver is skipped ahead, never waited for.
            let _ = followers.send(line.clone());
        }
        if keep {
            ring.bytes += line.text.len();
            ring.lines.push_back(line);
            ring.trim();
        }
    }

    /// The latest `count` lines, oldest first, and with `follow` a receiver of every later one.
    pub(crate) fn snapshot(&self, count: usize, follow: bool) -> ServiceLogs {
        let mut ring = self.lock();
        let skip = ring.lines.len().saturating_sub(count);
        let lines = ring
            .lines
            .iter()
            .skip(skip)
            .map(|l| LogLine::clone(l))
            .collect();
        let follow = follow.then(|| {
            ring.followers
                .get_or_insert_with(|| broadcast::channel(FOLLOW_CAPACITY).0)
                .subscribe()
        });
        ServiceLogs { lines, follow }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::sync::broadcast::error::TryRecvError;

    fn line(text: &str) -> LogLine {
        LogLine {
            at_unix_ms: 1,
            stream: "stdout",
            generation: 1,
            pid: 10,
            text: text.into(),
        }
    }

    fn texts(logs: &ServiceLogs) -> Vec<&str> {
        logs.lines.iter().map(|l| l.text.as_str()).collect()
    }

    #[test]
    fn the_ring_keeps_the_latest_lines_within_both_bounds() {
        let ring = LogRing::new(3, 100);
        for t in ["a", "b", "c", "d"] {
            ring.push_with(|| line(t));
        }
        assert_eq!(texts(&ring.snapshot(10, false)), ["b", "c", "d"]);
        assert_eq!(texts(&ring.snapshot(2, false)), ["c", "d"]);
        assert!(ring.snapshot(0, false).lines.is_empty());
        // Bytes: 4 + 4 > 6, so only the newest stays; a line alone over the bound is not kept.
        let ring = LogRing::new(10, 6);
        for t in ["1234", "5678", "too-long-line"] {
            ring.push_with(|| line(t));
            if t == "5678" {
                assert_eq!(texts(&ring.snapshot(10, false)), ["5678"]);
            }
        }
        assert!(ring.snapshot(10, false).lines.is_empty());
        ring.push_with(|| line("ok"));
        assert_eq!(texts(&ring.snapshot(10, false)), ["ok"]);
        ring.set_limits(0, 6);
        assert!(ring.snapshot(10, false).lines.is_empty());
    }

    #[test]
    fn a_follower_gets_every_later_line_once() {
        let ring = LogRing::new(2, 1000);
        ring.push_with(|| line("old"));
        let mut logs = ring.snapshot(5, true);
        assert_eq!(texts(&logs), ["old"]);
        ring.push_with(|| line("new-1"));
        ring.push_with(|| line("new-2"));
        let rx = logs.follow.as_mut().unwrap();
        assert_eq!(rx.try_recv().unwrap().text, "new-1");
        assert_eq!(rx.try_recv().unwrap().text, "new-2");
        assert_eq!(rx.try_recv().unwrap_err(), TryRecvError::Empty);
        // With nothing kept, followers still get lines.
        ring.set_limits(0, 0);
        ring.push_with(|| line("live"));
        assert_eq!(rx.try_recv().unwrap().text, "live");
        assert!(ring.snapshot(5, false).lines.is_empty());
    }

    #[test]
    fn a_lagging_follower_is_told_and_never_blocks_the_writer() {
        let ring = LogRing::new(1, 1000);
        let mut logs = ring.snapshot(0, true);
        for i in 0..FOLLOW_CAPACITY + 10 {
            ring.push_with(|| line(&i.to_string()));
        }
        let rx = logs.follow.as_mut().unwrap();
        assert!(matches!(rx.try_recv(), Err(TryRecvError::Lagged(10))));
        assert_eq!(rx.try_recv().unwrap().text, "10");
        // Once the follower is gone, nothing is built when nothing is kept.
        drop(logs);
        ring.set_limits(0, 0);
        ring.push_with(|| panic!("built a line nobody reads"));
    }
}
