//! The cluster client's sockets, on their own thread: one DEALER per beacon.
//!
//! Frames read are handed to the actor in batches; at most [`MAX_BATCHES_IN_FLIGHT`] wait for
//! the actor, beyond which the thread stops reading (ZeroMQ's queues and TCP then hold back the
//! beacons). Sends never block (`DONTWAIT`): a message that does not fit the queue is dropped,
//! and the client's deadlines notice. A reset closes a beacon's socket, discarding what was
//! queued for it, and connects a fresh one.

use actix::prelude::*;
use troupe_core::zmq_thread::CommandInbox;

use crate::client::core::LinkId;

/// Frames read per batch at most.
const BATCH: usize = 256;
/// Batches handed to the actor and not yet acknowledged, at most.
const MAX_BATCHES_IN_FLIGHT: usize = 4;
/// Largest frame accepted from a beacon (a `list` of a large cluster is a few MB).
const MAX_FRAME_FROM_BEACON: i64 = 64 << 20;

/// One socket operation.
#[derive(Debug)]
pub(crate) enum SocketAction {
    /// Send a frame to a beacon.
    Send { link: LinkId, frame: Vec<u8> },
    /// Rebuild a beacon's connection.
    Reset { link: LinkId },
}

/// Commands from the actor.
pub(crate) enum ToDealers {
    /// Carry out these actions; `answers_batch` when they answer one batch of [`Frames`].
    Run {
        actions: Vec<SocketAction>,
        answers_batch: bool,
    },
    /// Close every socket and end the thread.
    Stop,
}

/// Frames from beacons, in arrival order per beacon.
#[derive(Message)]
#[rtype(result = "()")]
pub(crate) struct Frames(pub(crate) Vec<(LinkId, Vec<u8>)>);

fn dealer(context: &zmq::Context, endpoint: &str) -> zmq::Result<zmq::Socket> {
    let socket = context.socket(zmq::DEALER)?;
    socket.set_linger(0)?;
    socket.set_maxmsgsize(MAX_FRAME_FROM_BEACON)?;
    socket.set_reconnect_ivl(100)?;
    socket.set_reconnect_ivl_max(1000)?;
    socket.connect(endpoint)?;
    Ok(socket)
}

fn open(context: &zmq::Context, endpoint: &str) -> Option<zmq::Socket> {
    match dealer(context, endpoint) {
        Ok(socket) => Some(socket),
        Err(err) => {
            tracing::error!(beacon = endpoint, %err, "cannot open a socket to the beacon; retrying later");
            None
        }
    }
}

/// The thread's body: runs until [`ToDealers::Stop`].
pub(crate) fn run(
    context: zmq::Context,
    endpoints: Vec<String>,
    inbox: CommandInbox<ToDealers>,
    frames: Recipient<Frames>,
) {
    let mut sockets: Vec<Option<zmq::Socket>> =
        endpoints.iter().map(|e| open(&context, e)).collect();
    let mut in_flight = 0usize;
    loop {
        let reading = in_flight < MAX_BATCHES_IN_FLIGHT;
        let readable = {
            let mut items = vec![inbox.poll_item()];
            let mut owners = Vec::new();
            for (link, socket) in sockets.iter().enumerate() {
                if let (Some(socket), true) = (socket, reading) {
                    items.push(socket.as_poll_item(zmq::POLLIN));
                    owners.push(link);
                }
            }
            match zmq::poll(&mut items, -1) {
                Ok(_) => {}
                Err(zmq::Error::EINTR) => continue,
                Err(err) => {
                    tracing::error!(%err, "cluster socket poll failed; the client stops");
                    return;
                }
            }
            let commands = items[0].is_readable();
            let links: Vec<LinkId> = owners
                .iter()
                .zip(&items[1..])
                .filter(|(_, item)| item.is_readable())
                .map(|(link, _)| *link)
                .collect();
            (commands, links)
        };
        let (commands_waiting, readable_links) = readable;
        if commands_waiting {
            for command in inbox.drain() {
                match command {
                    ToDealers::Run {
                        actions,
                        answers_batch,
                    } => {
                        for action in actions {
                            carry_out(&context, &endpoints, &mut sockets, action);
                        }
                        if answers_batch {
                            in_flight = in_flight.saturating_sub(1);
                        }
                    }
                    ToDealers::Stop => return,
                }
            }
        }
        let mut batch = Vec::new();
        for link in readable_links {
            let Some(socket) = &sockets[link] else {
                continue;
            };
            while batch.len() < BATCH {
                match socket.recv_multipart(zmq::DONTWAIT) {
                    Ok(mut parts) if parts.len() == 1 => batch.push((link, parts.remove(0))),
                    Ok(parts) => tracing::warn!(
                        beacon = %endpoints[link],
                        frames = parts.len(),
                        "ignoring a message of more than one frame from the beacon"
                    ),
                    Err(_) => break,
                }
            }
        }
        if !batch.is_empty() {
            in_flight += 1;
            frames.do_send(Frames(batch));
        }
    }
}

fn carry_out(
    context: &zmq::Context,
    endpoints: &[String],
    sockets: &mut [Option<zmq::Socket>],
    action: SocketAction,
) {
    match action {
        SocketAction::Send { link, frame } => {
            if sockets[link].is_none() {
                sockets[link] = open(context, &endpoints[link]);
            }
            if let Some(socket) = &sockets[link] {
                match socket.send(frame, zmq::DONTWAIT) {
                    Ok(()) => {}
                    Err(zmq::Error::EAGAIN) => {
                        tracing::debug!(beacon = %endpoints[link], "send queue full; message dropped")
                    }
                    Err(err) => tracing::warn!(beacon = %endpoints[link], %err, "send failed"),
                }
            }
        }
        SocketAction::Reset { link } => {
            // Dropping the socket closes it (linger 0: queued messages are discarded).
            sockets[link] = None;
            sockets[link] = open(context, &endpoints[link]);
        }
    }
}
