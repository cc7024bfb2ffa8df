//! The beacon's ROUTER socket, on its own thread.
//!
//! The thread reads frames in batches, decodes them (JSON parsing happens here, off the
//! arbiter) and hands each batch to the actor; the actor answers with the batch's outgoing
//! messages, which the thread encodes and sends. At most [`MAX_BATCHES_IN_FLIGHT`] batches wait
//! for the actor: beyond that the thread stops reading, ZeroMQ's receive queues fill up and TCP
//! pushes back on the senders, so memory stays bounded however fast peers send.
//!
//! Sends never block: the socket has `ROUTER_MANDATORY` set and sends with `DONTWAIT`, so a
//! message for a vanished peer fails at once and is reported to the actor as
//! [`Undelivered::Unreachable`].
//!
//! A reply is never dropped silently. When ZeroMQ's queue for a peer is full
//! ([`SEND_QUEUE_PER_PEER`] messages), its replies wait in a backlog of the thread, in order,
//! and are sent again every [`RETRY`] until they go. A peer whose backlog grows past
//! [`BACKLOG_PER_PEER`] messages (or [`BACKLOG_BYTES_PER_PEER`] bytes, or all backlogs past
//! [`BACKLOG_BYTES_TOTAL`]) is not reading: its backlog is discarded and the actor told
//! ([`Undelivered::Overflow`]), which drops the peer's session. Watch events are not queued:
//! a watch whose event does not fit is dropped and resumed ([`Undelivered::Full`]).

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use actix::prelude::*;
use troupe_core::zmq_thread::CommandInbox;

use crate::protocol::{decode_request, encode_reply, ErrorCode, WireError};
use crate::registry::PeerId;
use crate::server::core::{Inbound, Outbound, Undelivered};

/// Messages queued for one peer at most.
pub(crate) const SEND_QUEUE_PER_PEER: i32 = 256;
/// Replies that wait in the thread for one peer whose ZeroMQ queue is full, at most; one more
/// and the peer's session is dropped. A peer that reads its replies as they come may keep this
/// many requests in flight (plus the [`SEND_QUEUE_PER_PEER`] ZeroMQ holds) without loss.
pub(crate) const BACKLOG_PER_PEER: usize = 1024;
/// Bytes of replies waiting in the thread for one peer, at most.
pub(crate) const BACKLOG_BYTES_PER_PEER: usize = 16 << 20;
/// Bytes of replies waiting in the thread for all peers together, at most.
pub(crate) const BACKLOG_BYTES_TOTAL: usize = 256 << 20;
/// How often waiting replies are offered to ZeroMQ again.
pub(crate) const RETRY: Duration = Duration::from_millis(5);
/// Frames read per batch at most.
pub(crate) const BATCH: usize = 256;
/// Batches handed to the actor and not yet answered, at most.
pub(crate) const MAX_BATCHES_IN_FLIGHT: usize = 4;

/// Commands from the actor.
pub(crate) enum ToSocket {
    /// Send these messages; they answer `answered_batches` batches of [`Received`] (more
    /// than one when an earlier answer could not be queued).
    Send {
        messages: Vec<Outbound>,
        answered_batches: usize,
    },
    /// Close the socket and end the thread.
    Stop,
}

/// A batch of frames from peers.
#[derive(Message)]
#[rtype(result = "()")]
pub(crate) struct Received(pub(crate) Vec<Inbound>);

/// Messages that could not be handed to their peers.
#[derive(Message)]
#[rtype(result = "()")]
pub(crate) struct NotDelivered(pub(crate) Vec<(PeerId, Option<String>, Undelivered)>);

/// Sets the ROUTER's options.
pub(crate) fn configure(router: &zmq::Socket, max_frame: usize) -> zmq::Result<()> {
    router.set_router_mandatory(true)?;
    router.set_linger(0)?;
    // At most this many answers wait for a peer that does not read; then sends to it fail
    // (and a watch it holds is dropped and resumed later).
    router.set_sndhwm(SEND_QUEUE_PER_PEER)?;
    // Frames up to this size are read and answered with `too_large`; beyond, libzmq drops the
    // connection without reading the frame into memory.
    router.set_maxmsgsize(hard_frame_limit(max_frame) as i64)?;
    Ok(())
}

/// Creates the beacon's ROUTER, binds it to `bind` and watches its connections; on the socket
/// thread, since binding may block. The error names what failed.
pub(crate) fn open(
    bind: &str,
    max_frame: usize,
    max_connections: usize,
    counts: Arc<ConnectionCounts>,
) -> Result<(zmq::Socket, ConnectionGuard), String> {
    let context = zmq::Context::new();
    let router = context
        .socket(zmq::ROUTER)
        .and_then(|router| {
            configure(&router, max_frame)?;
            router.bind(bind)?;
            Ok(router)
        })
        .map_err(|err| format!("cannot bind the beacon on {bind}: {err}"))?;
    let guard = ConnectionGuard::new(&context, &router, max_connections, counts)
        .map_err(|err| format!("cannot monitor the beacon's socket: {err}"))?;
    Ok((router, guard))
}

/// The size beyond which a frame closes the connection instead of being answered.
pub(crate) fn hard_frame_limit(max_frame: usize) -> usize {
    max_frame.saturating_mul(16).max(1 << 20)
}

/// Connections held and refused, shared with the actor.
#[derive(Debug, Default)]
pub struct ConnectionCounts {
    /// TCP connections open now (refused ones included until they are closed).
    pub open: AtomicUsize,
    /// Connections closed at once because `max_connections` were open.
    pub refused: AtomicU64,
}

/// Counts the ROUTER's TCP connections through a socket monitor and closes (shuts down) the
/// ones beyond `max`, so that connections that never send anything cannot pile up.
pub(crate) struct ConnectionGuard {
    pub(crate) monitor: zmq::Socket,
    pub(crate) max: usize,
    pub(crate) counts: Arc<ConnectionCounts>,
    logged_at: Option<Instant>,
    refused_unlogged: u64,
}

impl ConnectionGuard {
    /// Starts monitoring `router`'s accepted and closed connections.
    pub(crate) fn new(
        context: &zmq::Context,
        router: &zmq::Socket,
        max: usize,
        counts: Arc<ConnectionCounts>,
    ) -> zmq::Result<Self> {
        let endpoint = format!(
            "inproc://troupe-beacon-monitor-{}-{}",
            std::process::id(),
            MONITORS.fetch_add(1, Ordering::Relaxed)
        );
        let events = zmq::SocketEvent::ACCEPTED.to_raw() | zmq::SocketEvent::DISCONNECTED.to_raw();
        router.monitor(&endpoint, events as i32)?;
        let monitor = context.socket(zmq::PAIR)?;
        monitor.connect(&endpoint)?;
        Ok(ConnectionGuard {
            monitor,
            max,
            counts,
            logged_at: None,
            refused_unlogged: 0,
        })
    }

    fn drain(&mut self) {
        while let Ok(parts) = self.monitor.recv_multipart(zmq::DONTWAIT) {
            let Some(head) = parts.first().filter(|p| p.len() >= 6) else {
                continue;
            };
            let event = u16::from_le_bytes([head[0], head[1]]);
            let value = u32::from_le_bytes([head[2], head[3], head[4], head[5]]);
            if event == zmq::SocketEvent::ACCEPTED.to_raw() {
                let open = self.counts.open.fetch_add(1, Ordering::Relaxed) + 1;
                if open > self.max {
                    self.refuse(value as i32);
                }
            } else if event == zmq::SocketEvent::DISCONNECTED.to_raw() {
                let _ = self
                    .counts
                    .open
                    .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| {
                        Some(n.saturating_sub(1))
                    });
            }
        }
    }

    /// Shuts the connection's socket down: libzmq sees it end and closes it (the descriptor
    /// stays libzmq's, so it is never closed twice).
    fn refuse(&mut self, fd: i32) {
        // SAFETY: shutdown only ends the connection of a descriptor libzmq just accepted and
        // still owns; it neither closes nor frees it.
        unsafe {
            libc::shutdown(fd, libc::SHUT_RDWR);
        }
        let refused = self.counts.refused.fetch_add(1, Ordering::Relaxed) + 1;
        self.refused_unlogged += 1;
        let now = Instant::now();
        if self
            .logged_at
            .is_none_or(|at| now.duration_since(at) >= Duration::from_secs(1))
        {
            self.logged_at = Some(now);
            tracing::warn!(
                max_connections = self.max,
                refused_since_last = self.refused_unlogged,
                refused,
                "connection refused: the beacon holds its maximum of connections"
            );
            self.refused_unlogged = 0;
        }
    }
}

static MONITORS: AtomicU64 = AtomicU64::new(0);

/// The thread's body: runs until [`ToSocket::Stop`] or a socket error.
pub(crate) fn run(
    router: zmq::Socket,
    inbox: CommandInbox<ToSocket>,
    received: Recipient<Received>,
    not_delivered: Recipient<NotDelivered>,
    max_frame: usize,
    mut guard: ConnectionGuard,
) {
    let mut in_flight = 0usize;
    let mut backlogs = Backlogs::default();
    loop {
        let reading = in_flight < MAX_BATCHES_IN_FLIGHT;
        let timeout = if backlogs.is_empty() {
            -1
        } else {
            RETRY.as_millis() as i64
        };
        let (commands_waiting, frames_waiting, monitor_waiting) = {
            let mut items = [
                inbox.poll_item(),
                router.as_poll_item(if reading {
                    zmq::POLLIN
                } else {
                    zmq::PollEvents::empty()
                }),
                guard.monitor.as_poll_item(zmq::POLLIN),
            ];
            match zmq::poll(&mut items, timeout) {
                Ok(_) => {}
                Err(zmq::Error::EINTR) => continue,
                Err(err) => {
                    tracing::error!(%err, "beacon socket poll failed; the beacon stops answering");
                    return;
                }
            }
            (
                items[0].is_readable(),
                items[1].is_readable(),
                items[2].is_readable(),
            )
        };
        if monitor_waiting {
            guard.drain();
        }
        let mut failed = Vec::new();
        if !backlogs.is_empty() {
            backlogs.flush(
                &mut |peer, delimited, body| try_send(&router, peer, delimited, body),
                &mut failed,
            );
        }
        if commands_waiting {
            for command in inbox.drain() {
                match command {
                    ToSocket::Send {
                        messages,
                        answered_batches,
                    } => {
                        for message in messages {
                            let body = encode_reply(message.id, &message.reply);
                            backlogs.send(
                                &mut |peer, delimited, body| {
                                    try_send(&router, peer, delimited, body)
                                },
                                message,
                                body,
                                &mut failed,
                            );
                        }
                        in_flight = in_flight.saturating_sub(answered_batches);
                    }
                    ToSocket::Stop => return,
                }
            }
        }
        if reading && frames_waiting {
            let batch = read_batch(&router, max_frame);
            if !batch.is_empty() {
                in_flight += 1;
                received.do_send(Received(batch));
            }
        }
        if !failed.is_empty() {
            not_delivered.do_send(NotDelivered(failed));
        }
    }
}

fn read_batch(router: &zmq::Socket, max_frame: usize) -> Vec<Inbound> {
    let mut batch = Vec::new();
    while batch.len() < BATCH {
        match router.recv_multipart(zmq::DONTWAIT) {
            Ok(parts) => batch.push(inbound(parts, max_frame)),
            Err(zmq::Error::EAGAIN) | Err(zmq::Error::EINTR) => break,
            Err(err) => {
                tracing::warn!(%err, "receive failed");
                break;
            }
        }
    }
    batch
}

/// Splits `[peer, body]` or `[peer, "", body]`; anything else is a `bad_frame`.
fn inbound(mut parts: Vec<Vec<u8>>, max_frame: usize) -> Inbound {
    let peer = PeerId(if parts.is_empty() {
        Vec::new()
    } else {
        parts.remove(0)
    });
    let delimited = parts.len() > 1 && parts[0].is_empty();
    let frame = match (parts.len(), delimited) {
        (1, _) => decode_request(&parts[0], max_frame),
        (2, true) => decode_request(&parts[1], max_frame),
        (n, _) => Err(WireError {
            id: None,
            code: ErrorCode::BadFrame,
            message: format!(
                "expected one JSON frame (after an optional empty delimiter), got {n} frames"
            ),
        }),
    };
    Inbound {
        peer,
        delimited,
        frame,
    }
}

/// Hands one message to ZeroMQ without blocking.
fn try_send(router: &zmq::Socket, peer: &PeerId, delimited: bool, body: &[u8]) -> Attempt {
    let result = if delimited {
        router.send_multipart([&peer.0[..], &[], body], zmq::DONTWAIT)
    } else {
        router.send_multipart([&peer.0[..], body], zmq::DONTWAIT)
    };
    match result {
        Ok(()) => Attempt::Sent,
        Err(zmq::Error::EAGAIN) => Attempt::Full,
        Err(zmq::Error::EHOSTUNREACH) => Attempt::Unreachable,
        Err(err) => {
            tracing::warn!(%err, "send failed");
            Attempt::Unreachable
        }
    }
}

/// What handing a message to the socket did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Attempt {
    Sent,
    /// The peer's queue is full: try again later.
    Full,
    /// The peer's connection is gone.
    Unreachable,
}

pub(crate) type Failed = Vec<(PeerId, Option<String>, Undelivered)>;

/// Replies waiting for peers whose ZeroMQ queue is full, in order, per peer.
#[derive(Debug, Default)]
pub(crate) struct Backlogs {
    peers: HashMap<PeerId, Backlog>,
    bytes: usize,
}

#[derive(Debug, Default)]
struct Backlog {
    messages: VecDeque<(bool, Vec<u8>)>,
    bytes: usize,
}

impl Backlogs {
    pub(crate) fn is_empty(&self) -> bool {
        self.peers.is_empty()
    }

    /// Replies waiting, over all peers.
    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        self.peers.values().map(|b| b.messages.len()).sum()
    }

    /// Sends `message` (encoded as `body`), or queues it behind the peer's waiting replies.
    pub(crate) fn send(
        &mut self,
        try_send: &mut dyn FnMut(&PeerId, bool, &[u8]) -> Attempt,
        message: Outbound,
        body: Vec<u8>,
        failed: &mut Failed,
    ) {
        let event = matches!(message.reply, crate::protocol::Reply::Event { .. });
        let waiting = self.peers.contains_key(&message.peer);
        if !waiting {
            match try_send(&message.peer, message.delimited, &body) {
                Attempt::Sent => return,
                Attempt::Unreachable => {
                    let watch = message.pushed_watch().map(str::to_string);
                    failed.push((message.peer, watch, Undelivered::Unreachable));
                    return;
                }
                Attempt::Full => {}
            }
        }
        if event {
            // A watch that cannot keep up is dropped and resumed rather than queued.
            let watch = message.pushed_watch().map(str::to_string);
            failed.push((message.peer, watch, Undelivered::Full));
            return;
        }
        let backlog = self.peers.entry(message.peer.clone()).or_default();
        backlog.bytes += body.len();
        self.bytes += body.len();
        backlog.messages.push_back((message.delimited, body));
        if backlog.messages.len() > BACKLOG_PER_PEER
            || backlog.bytes > BACKLOG_BYTES_PER_PEER
            || self.bytes > BACKLOG_BYTES_TOTAL
        {
            self.discard(&message.peer);
            failed.push((message.peer, None, Undelivered::Overflow));
        }
    }

    /// Offers every peer's waiting replies to the socket again, in order.
    pub(crate) fn flush(
        &mut self,
        try_send: &mut dyn FnMut(&PeerId, bool, &[u8]) -> Attempt,
        failed: &mut Failed,
    ) {
        let mut gone = Vec::new();
        let mut sent = 0;
        for (peer, backlog) in &mut self.peers {
            let mut unreachable = false;
            while let Some((delimited, body)) = backlog.messages.front() {
                match try_send(peer, *delimited, body) {
                    Attempt::Sent => {
                        backlog.bytes -= body.len();
                        sent += body.len();
                        backlog.messages.pop_front();
                    }
                    Attempt::Full => break,
                    Attempt::Unreachable => {
                        failed.push((peer.clone(), None, Undelivered::Unreachable));
                        unreachable = true;
                        break;
                    }
                }
            }
            if backlog.messages.is_empty() || unreachable {
                gone.push(peer.clone());
            }
        }
        self.bytes -= sent;
        for peer in gone {
            self.discard(&peer);
        }
    }

    fn discard(&mut self, peer: &PeerId) {
        if let Some(backlog) = self.peers.remove(peer) {
            self.bytes -= backlog.bytes;
        }
        // Give the memory back once most peers' backlogs are gone.
        if self.peers.capacity() > 64 && self.peers.len() < self.peers.capacity() / 4 {
            self.peers.shrink_to(self.peers.len() * 2);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::{Event, EventKind, Reply};

    fn reply(peer: u8, id: u64) -> Outbound {
        Outbound {
            peer: PeerId(vec![peer]),
            delimited: false,
            id: Some(id),
            reply: Reply::Pong {
                epoch: "e".into(),
                rev: id,
            },
        }
    }

    fn event(peer: u8) -> Outbound {
        let node = crate::protocol::Node::new(crate::protocol::NodeView {
            name: "n".into(),
            resource: "r".into(),
            requires: vec![],
            endpoints: Default::default(),
            offers: Default::default(),
            metadata: Default::default(),
            status: crate::protocol::Status::Online,
            heartbeat_ms: 1000,
            last_seen_ms: None,
        });
        Outbound {
            peer: PeerId(vec![peer]),
            delimited: false,
            id: None,
            reply: Reply::Event {
                watch: "w".into(),
                epoch: "e".into(),
                event: Event {
                    rev: 1,
                    kind: EventKind::Nodeup,
                    node,
                    previous: None,
                },
            },
        }
    }

    /// A socket whose queue for each peer holds `room` messages until drained.
    struct FakeSocket {
        room: usize,
        queued: HashMap<PeerId, Vec<Vec<u8>>>,
    }

    impl FakeSocket {
        fn attempt(&mut self, peer: &PeerId, _: bool, body: &[u8]) -> Attempt {
            if peer.0 == [0] {
                return Attempt::Unreachable;
            }
            let queue = self.queued.entry(peer.clone()).or_default();
            if queue.len() >= self.room {
                return Attempt::Full;
            }
            queue.push(body.to_vec());
            Attempt::Sent
        }

        fn drain(&mut self, peer: u8) -> Vec<u64> {
            self.queued
                .remove(&PeerId(vec![peer]))
                .unwrap_or_default()
                .iter()
                .map(|body| {
                    let value: serde_json::Value = serde_json::from_slice(body).unwrap();
                    value["id"].as_u64().unwrap()
                })
                .collect()
        }
    }

    fn send(backlogs: &mut Backlogs, socket: &mut FakeSocket, message: Outbound) -> Failed {
        let mut failed = Vec::new();
        let body = encode_reply(message.id, &message.reply);
        backlogs.send(
            &mut |peer, delimited, body| socket.attempt(peer, delimited, body),
            message,
            body,
            &mut failed,
        );
        failed
    }

    #[test]
    fn replies_wait_in_order_when_the_queue_is_full_and_are_never_dropped_silently() {
        let mut socket = FakeSocket {
            room: 10,
            queued: HashMap::new(),
        };
        let mut backlogs = Backlogs::default();
        for id in 0..25 {
            assert!(send(&mut backlogs, &mut socket, reply(1, id)).is_empty());
        }
        assert_eq!(backlogs.len(), 15);
        // An event that does not fit drops its watch (resumed later) instead of queueing.
        let failed = send(&mut backlogs, &mut socket, event(1));
        assert_eq!(failed[0].1.as_deref(), Some("w"));
        assert_eq!(failed[0].2, Undelivered::Full);
        // The peer reads: the waiting replies follow, in order.
        let mut got = Vec::new();
        while !backlogs.is_empty() || socket.queued.contains_key(&PeerId(vec![1])) {
            got.extend(socket.drain(1));
            let mut failed = Vec::new();
            backlogs.flush(
                &mut |peer, delimited, body| socket.attempt(peer, delimited, body),
                &mut failed,
            );
            assert!(failed.is_empty());
        }
        assert_eq!(got, (0..25).collect::<Vec<_>>());
        assert_eq!(backlogs.bytes, 0);

        // A peer that never reads overflows: its backlog is discarded and that is reported.
        let mut reported = Vec::new();
        for id in 0..(10 + BACKLOG_PER_PEER as u64 + 1) {
            reported.extend(send(&mut backlogs, &mut socket, reply(2, id)));
        }
        assert_eq!(reported.len(), 1);
        assert_eq!(reported[0].0, PeerId(vec![2]));
        assert_eq!(reported[0].2, Undelivered::Overflow);
        assert!(backlogs.is_empty());
        assert_eq!(backlogs.bytes, 0);
        // A vanished peer is reported too.
        let failed = send(&mut backlogs, &mut socket, reply(0, 1));
        assert_eq!(failed[0].2, Undelivered::Unreachable);
    }

    #[test]
    fn envelopes_are_split_and_odd_ones_refused() {
        let ping = br#"{"v":1,"op":"ping"}"#.to_vec();
        let plain = inbound(vec![b"p".to_vec(), ping.clone()], 1024);
        assert!(!plain.delimited && plain.frame.is_ok());
        let req = inbound(vec![b"p".to_vec(), vec![], ping.clone()], 1024);
        assert!(req.delimited && req.frame.is_ok());
        let odd = inbound(vec![b"p".to_vec(), ping.clone(), ping], 1024);
        assert_eq!(odd.frame.unwrap_err().code, ErrorCode::BadFrame);
    }
}
