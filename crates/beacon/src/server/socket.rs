//! The beacon's ROUTER socket, on its own thread.
//!
//! The thread reads frames in batches, decodes them (JSON parsing happens here, off the
//! arbiter) and hands each batch to the actor; the actor answers with the batch's outgoing
//! messages, which the thread encodes and sends. At most [`MAX_BATCHES_IN_FLIGHT`] batches wait
//! for the actor: beyond that the thread stops reading, ZeroMQ's receive queues fill up and TCP
//! pushes back on the senders, so memory stays bounded however fast peers send.
//!
//! Sends never block: the socket has `ROUTER_MANDATORY` set and sends with `DONTWAIT`, so a
//! message for a vanished peer or a peer whose queue is full fails at once and is reported to
//! the actor as [`Undelivered`].

use actix::prelude::*;
use troupe_core::zmq_thread::CommandInbox;

use crate::protocol::{decode_request, encode_reply, ErrorCode, WireError};
use crate::registry::PeerId;
use crate::server::core::{Inbound, Outbound, Undelivered};

/// Messages queued for one peer at most.
pub(crate) const SEND_QUEUE_PER_PEER: i32 = 256;
/// Frames read per batch at most.
pub(crate) const BATCH: usize = 256;
/// Batches handed to the actor and not yet answered, at most.
pub(crate) const MAX_BATCHES_IN_FLIGHT: usize = 4;

/// Commands from the actor.
pub(crate) enum ToSocket {
    /// Send these messages; `answers_batch` when they answer one batch of [`Received`].
    Send {
        messages: Vec<Outbound>,
        answers_batch: bool,
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

/// The size beyond which a frame closes the connection instead of being answered.
pub(crate) fn hard_frame_limit(max_frame: usize) -> usize {
    max_frame.saturating_mul(16).max(1 << 20)
}

/// The thread's body: runs until [`ToSocket::Stop`] or a socket error.
pub(crate) fn run(
    router: zmq::Socket,
    inbox: CommandInbox<ToSocket>,
    received: Recipient<Received>,
    not_delivered: Recipient<NotDelivered>,
    max_frame: usize,
) {
    let mut in_flight = 0usize;
    loop {
        let reading = in_flight < MAX_BATCHES_IN_FLIGHT;
        let (commands_waiting, frames_waiting) = {
            let mut items = [
                inbox.poll_item(),
                router.as_poll_item(if reading {
                    zmq::POLLIN
                } else {
                    zmq::PollEvents::empty()
                }),
            ];
            match zmq::poll(&mut items, -1) {
                Ok(_) => {}
                Err(zmq::Error::EINTR) => continue,
                Err(err) => {
                    tracing::error!(%err, "beacon socket poll failed; the beacon stops answering");
                    return;
                }
            }
            (items[0].is_readable(), items[1].is_readable())
        };
        let mut failed = Vec::new();
        if commands_waiting {
            for command in inbox.drain() {
                match command {
                    ToSocket::Send {
                        messages,
                        answers_batch,
                    } => {
                        for message in messages {
                            send(&router, message, &mut failed);
                        }
                        if answers_batch {
                            in_flight = in_flight.saturating_sub(1);
                        }
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

fn send(
    router: &zmq::Socket,
    message: Outbound,
    failed: &mut Vec<(PeerId, Option<String>, Undelivered)>,
) {
    let body = encode_reply(message.id, &message.reply);
    let result = if message.delimited {
        router.send_multipart([&message.peer.0[..], &[], &body[..]], zmq::DONTWAIT)
    } else {
        router.send_multipart([&message.peer.0[..], &body[..]], zmq::DONTWAIT)
    };
    let why = match result {
        Ok(()) => return,
        Err(zmq::Error::EHOSTUNREACH) => Undelivered::Unreachable,
        Err(zmq::Error::EAGAIN) => Undelivered::Full,
        Err(err) => {
            tracing::warn!(%err, "send failed");
            Undelivered::Unreachable
        }
    };
    let watch = message.pushed_watch().map(str::to_string);
    failed.push((message.peer, watch, why));
}

#[cfg(test)]
mod tests {
    use super::*;

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
