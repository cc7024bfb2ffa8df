//! Replies held for clients that are not reading, sans-IO.
//!
//! A reply the frontend (or the Majordomo socket) refuses because the client's pipe is full
//! (`EAGAIN` under `ROUTER_MANDATORY`) is held here and sent again, in order, once the client
//! reads. Later replies to a client that has held ones queue behind them, so a client never
//! sees its replies reordered. The bounds: [`MAX_REPLIES_PER_CLIENT`] replies and
//! [`MAX_BYTES_PER_CLIENT`] bytes per client, [`MAX_TOTAL_BYTES`] in all, and
//! [`MAX_AGE`] per reply; past a bound a reply is dropped and counted
//! ([`ReplyBacklog::dropped`]), and the drops are logged at WARN at most once per
//! [`WARN_EVERY`]. A client whose connection is gone has its held replies dropped (counted as
//! undeliverable by the caller).

use std::collections::{HashMap, VecDeque};
use std::time::{Duration, Instant};

use crate::protocol::Frame;
use crate::service::Socket;

/// Replies held at most per client.
pub const MAX_REPLIES_PER_CLIENT: usize = 1000;
/// Bytes held at most per client.
pub const MAX_BYTES_PER_CLIENT: u64 = 16 * 1024 * 1024;
/// Bytes held at most for all clients together.
pub const MAX_TOTAL_BYTES: u64 = 256 * 1024 * 1024;
/// How long a reply is held at most.
pub const MAX_AGE: Duration = Duration::from_secs(30);
/// Drops are logged at most this often.
pub const WARN_EVERY: Duration = Duration::from_secs(10);

/// How often the socket loop retries sending held replies while some are held.
pub const RETRY_EVERY: Duration = Duration::from_millis(5);

/// Why a send was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// The peer's pipe is full: try again later.
    Full,
    /// The peer is gone.
    Gone,
}

struct Held<F> {
    frames: Vec<F>,
    bytes: u64,
    at: Instant,
}

struct Client<F> {
    replies: VecDeque<Held<F>>,
    bytes: u64,
}

/// The replies held per client.
pub struct ReplyBacklog<F> {
    clients: HashMap<(Socket, Vec<u8>), Client<F>>,
    total_bytes: u64,
    dropped: u64,
    unreported: u64,
    last_warning: Option<Instant>,
}

impl<F> Default for ReplyBacklog<F> {
    fn default() -> Self {
        ReplyBacklog {
            clients: HashMap::new(),
            total_bytes: 0,
            dropped: 0,
            unreported: 0,
            last_warning: None,
        }
    }
}

fn size<F: Frame>(frames: &[F]) -> u64 {
    frames.iter().map(|f| f.bytes().len() as u64).sum()
}

impl<F: Frame> ReplyBacklog<F> {
    /// Whether any reply is held.
    pub fn is_empty(&self) -> bool {
        self.clients.is_empty()
    }

    /// Whether replies to `client` on `socket` are held (a new one must queue behind them).
    pub fn holds(&self, socket: Socket, client: &[u8]) -> bool {
        !self.clients.is_empty() && self.clients.contains_key(&(socket, client.to_vec()))
    }

    /// Replies held now, in all.
    pub fn len(&self) -> usize {
        self.clients.values().map(|c| c.replies.len()).sum()
    }

    /// Bytes held now, in all.
    pub fn bytes(&self) -> u64 {
        self.total_bytes
    }

    /// Replies dropped since start because a bound was reached.
    pub fn dropped(&self) -> u64 {
        self.dropped
    }

    /// Holds `frames` (routing identity first) for a later send; false if a bound was
    /// reached and the reply was dropped (counted).
    pub fn hold(&mut self, socket: Socket, frames: Vec<F>, now: Instant) -> bool {
        let Some(client) = frames.first().map(|f| f.bytes().to_vec()) else {
            return true;
        };
        let bytes = size(&frames);
        let key = (socket, client);
        let (count, held) = self
            .clients
            .get(&key)
            .map_or((0, 0), |c| (c.replies.len(), c.bytes));
        if count >= MAX_REPLIES_PER_CLIENT
            || held + bytes > MAX_BYTES_PER_CLIENT
            || self.total_bytes + bytes > MAX_TOTAL_BYTES
        {
            self.count_drops(1, now);
            return false;
        }
        let entry = self.clients.entry(key).or_insert_with(|| Client {
            replies: VecDeque::new(),
            bytes: 0,
        });
        entry.bytes += bytes;
        entry.replies.push_back(Held {
            frames,
            bytes,
            at: now,
        });
        self.total_bytes += bytes;
        true
    }

    /// Sends what is held, each client's replies in order, with `send`, which gives a refused
    /// message back. A client that is still full keeps the rest; one that is gone has its
    /// replies dropped, and their number is returned (undeliverable). Replies older than
    /// [`MAX_AGE`] are dropped and counted first.
    pub fn retry(
        &mut self,
        now: Instant,
        mut send: impl FnMut(Socket, Vec<F>) -> Result<(), (Vec<F>, Refusal)>,
    ) -> u64 {
        let mut gone = 0;
        let mut expired = 0;
        let mut freed = 0;
        for ((socket, _), client) in self.clients.iter_mut() {
            while client
                .replies
                .front()
                .is_some_and(|h| now.saturating_duration_since(h.at) >= MAX_AGE)
            {
                let held = client.replies.pop_front().expect("checked");
                client.bytes -= held.bytes;
                freed += held.bytes;
                expired += 1;
            }
            while let Some(held) = client.replies.pop_front() {
                let bytes = held.bytes;
                match send(*socket, held.frames) {
                    Ok(()) => {
                        client.bytes -= bytes;
                        freed += bytes;
                    }
                    Err((frames, Refusal::Full)) => {
                        client.replies.push_front(Held {
                            frames,
                            bytes,
                            at: held.at,
                        });
                        break;
                    }
                    Err((_, Refusal::Gone)) => {
                        gone += 1 + client.replies.len() as u64;
                        freed += client.bytes;
                        client.replies.clear();
                        client.bytes = 0;
                    }
                }
            }
        }
        self.total_bytes -= freed;
        self.clients.retain(|_, c| !c.replies.is_empty());
        if expired > 0 {
            self.count_drops(expired, now);
        }
        gone
    }

    /// Drops everything held (counted), e.g. when the broker stops.
    pub fn discard(&mut self, now: Instant) {
        let n = self.len() as u64;
        self.clients.clear();
        self.total_bytes = 0;
        if n > 0 {
            self.count_drops(n, now);
        }
    }

    fn count_drops(&mut self, n: u64, now: Instant) {
        self.dropped += n;
        self.unreported += n;
        if self
            .last_warning
            .is_none_or(|at| now.saturating_duration_since(at) >= WARN_EVERY)
        {
            tracing::warn!(
                count = self.unreported,
                total = self.dropped,
                held = self.len(),
                "dropped replies to clients that are not reading"
            );
            self.unreported = 0;
            self.last_warning = Some(now);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reply(client: &[u8], n: usize) -> Vec<Vec<u8>> {
        vec![client.to_vec(), Vec::new(), vec![b'x'; n]]
    }

    #[test]
    fn held_replies_leave_in_order_once_the_client_reads() {
        let now = Instant::now();
        let mut backlog = ReplyBacklog::default();
        let s = Socket::Frontend(0);
        assert!(backlog.hold(s, reply(b"C", 1), now));
        assert!(backlog.hold(s, reply(b"C", 2), now));
        assert!(backlog.holds(s, b"C"));
        assert!(!backlog.holds(s, b"D"));
        // Still full: nothing leaves.
        let gone = backlog.retry(now, |_, f| Err((f, Refusal::Full)));
        assert_eq!((gone, backlog.len()), (0, 2));
        let mut sent = Vec::new();
        backlog.retry(now, |_, f| {
            sent.push(f[2].len());
            Ok(())
        });
        assert_eq!(sent, [1, 2]);
        assert!(backlog.is_empty());
        assert_eq!(backlog.bytes(), 0);
        assert_eq!(backlog.dropped(), 0);
    }

    #[test]
    fn the_backlog_is_bounded_per_client_and_by_age() {
        let now = Instant::now();
        let mut backlog = ReplyBacklog::default();
        let s = Socket::Majordomo;
        for _ in 0..MAX_REPLIES_PER_CLIENT {
            assert!(backlog.hold(s, reply(b"C", 1), now));
        }
        assert!(!backlog.hold(s, reply(b"C", 1), now));
        assert!(!backlog.hold(s, reply(b"D", MAX_BYTES_PER_CLIENT as usize), now));
        assert_eq!(backlog.dropped(), 2);
        assert!(!backlog.holds(s, b"D"));
        backlog.retry(now + MAX_AGE, |_, f| Err((f, Refusal::Full)));
        assert!(backlog.is_empty());
        assert_eq!(backlog.dropped(), 2 + MAX_REPLIES_PER_CLIENT as u64);
    }

    #[test]
    fn a_gone_client_has_its_replies_dropped_as_undeliverable() {
        let now = Instant::now();
        let mut backlog = ReplyBacklog::default();
        let s = Socket::Frontend(1);
        backlog.hold(s, reply(b"C", 1), now);
        backlog.hold(s, reply(b"C", 1), now);
        assert_eq!(backlog.retry(now, |_, f| Err((f, Refusal::Gone))), 2);
        assert!(backlog.is_empty());
        assert_eq!(backlog.bytes(), 0);
    }
}
