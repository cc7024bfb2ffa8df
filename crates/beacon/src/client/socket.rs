//! The cluster client's sockets, on their own thread: one DEALER per beacon, each with a
//! ZeroMQ monitor so that the client learns at once when a beacon's connection comes up or
//! goes down.
//!
//! Frames read are handed to the actor in batches; at most [`MAX_BATCHES_IN_FLIGHT`] wait for
//! the actor, beyond which the thread stops reading (ZeroMQ's queues and TCP then hold back the
//! beacons). Sends never block (`DONTWAIT`): a message that does not fit the queue is dropped,
//! and the client's deadlines notice. A reset closes a beacon's socket, discarding what was
//! queued for it, and connects a fresh one.

use std::sync::atomic::{AtomicU64, Ordering};

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
    /// Carry out these actions; they answer `answered_batches` batches of [`Frames`] (more
    /// than one when an earlier answer could not be queued).
    Run {
        actions: Vec<SocketAction>,
        answered_batches: usize,
    },
    /// Close every socket and end the thread.
    Stop,
}

/// What happened on a beacon's connection.
#[derive(Debug)]
pub(crate) enum LinkEvent {
    /// A frame arrived.
    Frame(Vec<u8>),
    /// The TCP connection is up.
    Connected,
    /// The TCP connection went down (ZeroMQ reconnects by itself).
    Disconnected,
}

/// Events from beacons, in arrival order per beacon.
#[derive(Message)]
#[rtype(result = "()")]
pub(crate) struct Frames(pub(crate) Vec<(LinkId, LinkEvent)>);

static NEXT_MONITOR: AtomicU64 = AtomicU64::new(0);

/// A beacon's DEALER and the PAIR that receives its connection events.
struct Connection {
    dealer: zmq::Socket,
    monitor: zmq::Socket,
}

/// How often ZeroMQ retries a beacon that refuses connections: from 100 ms, backing off to at
/// most one heartbeat interval (and 1 s), so a restarted beacon is reached within an interval.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Reconnect {
    first_ms: i32,
    max_ms: i32,
}

impl Reconnect {
    pub(crate) fn for_heartbeat(heartbeat: std::time::Duration) -> Self {
        let max_ms = heartbeat.as_millis().clamp(10, 1000) as i32;
        Reconnect {
            first_ms: max_ms.min(100),
            max_ms,
        }
    }
}

fn connect(
    context: &zmq::Context,
    endpoint: &str,
    reconnect: Reconnect,
) -> zmq::Result<Connection> {
    let dealer = context.socket(zmq::DEALER)?;
    dealer.set_linger(0)?;
    dealer.set_maxmsgsize(MAX_FRAME_FROM_BEACON)?;
    dealer.set_reconnect_ivl(reconnect.first_ms)?;
    dealer.set_reconnect_ivl_max(reconnect.max_ms)?;
    let events = zmq::SocketEvent::CONNECTED.to_raw() | zmq::SocketEvent::DISCONNECTED.to_raw();
    let monitor_endpoint = format!(
        "inproc://troupe-cluster-monitor-{}",
        NEXT_MONITOR.fetch_add(1, Ordering::Relaxed)
    );
    dealer.monitor(&monitor_endpoint, i32::from(events))?;
    let monitor = context.socket(zmq::PAIR)?;
    monitor.set_linger(0)?;
    monitor.connect(&monitor_endpoint)?;
    dealer.connect(endpoint)?;
    Ok(Connection { dealer, monitor })
}

fn open(context: &zmq::Context, endpoint: &str, reconnect: Reconnect) -> Option<Connection> {
    match connect(context, endpoint, reconnect) {
        Ok(connection) => Some(connection),
        Err(err) => {
            tracing::error!(beacon = endpoint, %err, "cannot open a socket to the beacon; retrying later");
            None
        }
    }
}

/// Reads one monitor event: `[event u16 LE, value u32 LE]`, then the endpoint frame.
fn monitor_event(monitor: &zmq::Socket) -> Option<Option<LinkEvent>> {
    let parts = monitor.recv_multipart(zmq::DONTWAIT).ok()?;
    let event = parts
        .first()
        .filter(|head| head.len() >= 2)
        .map(|head| u16::from_le_bytes([head[0], head[1]]));
    Some(match event {
        Some(e) if e == zmq::SocketEvent::CONNECTED.to_raw() => Some(LinkEvent::Connected),
        Some(e) if e == zmq::SocketEvent::DISCONNECTED.to_raw() => Some(LinkEvent::Disconnected),
        _ => None,
    })
}

/// The thread's body: runs until [`ToDealers::Stop`].
pub(crate) fn run(
    endpoints: Vec<String>,
    reconnect: Reconnect,
    inbox: CommandInbox<ToDealers>,
    frames: Recipient<Frames>,
) {
    let context = zmq::Context::new();
    let mut connections: Vec<Option<Connection>> = endpoints
        .iter()
        .map(|e| open(&context, e, reconnect))
        .collect();
    let mut in_flight = 0usize;
    loop {
        let reading = in_flight < MAX_BATCHES_IN_FLIGHT;
        let (commands_waiting, readable) = {
            let mut items = vec![inbox.poll_item()];
            let mut owners = Vec::new();
            for (link, connection) in connections.iter().enumerate() {
                if let (Some(connection), true) = (connection, reading) {
                    items.push(connection.monitor.as_poll_item(zmq::POLLIN));
                    items.push(connection.dealer.as_poll_item(zmq::POLLIN));
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
                .zip(items[1..].chunks(2))
                .filter(|(_, pair)| pair.iter().any(|item| item.is_readable()))
                .map(|(link, _)| *link)
                .collect();
            (commands, links)
        };
        if commands_waiting {
            for command in inbox.drain() {
                match command {
                    ToDealers::Run {
                        actions,
                        answered_batches,
                    } => {
                        for action in actions {
                            carry_out(&context, &endpoints, reconnect, &mut connections, action);
                        }
                        in_flight = in_flight.saturating_sub(answered_batches);
                    }
                    ToDealers::Stop => return,
                }
            }
        }
        let mut batch = Vec::new();
        for link in readable {
            let Some(connection) = &connections[link] else {
                continue;
            };
            // Connection events first: a frame read after `Connected` came over that connection.
            while let Some(event) = monitor_event(&connection.monitor) {
                if let Some(event) = event {
                    batch.push((link, event));
                }
            }
            while batch.len() < BATCH {
                match connection.dealer.recv_multipart(zmq::DONTWAIT) {
                    Ok(mut parts) if parts.len() == 1 => {
                        batch.push((link, LinkEvent::Frame(parts.remove(0))))
                    }
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
    reconnect: Reconnect,
    connections: &mut [Option<Connection>],
    action: SocketAction,
) {
    match action {
        SocketAction::Send { link, frame } => {
            if connections[link].is_none() {
                connections[link] = open(context, &endpoints[link], reconnect);
            }
            if let Some(connection) = &connections[link] {
                match connection.dealer.send(frame, zmq::DONTWAIT) {
                    Ok(()) => {}
                    Err(zmq::Error::EAGAIN) => {
                        tracing::debug!(beacon = %endpoints[link], "send queue full; message dropped")
                    }
                    Err(err) => tracing::warn!(beacon = %endpoints[link], %err, "send failed"),
                }
            }
        }
        SocketAction::Reset { link } => {
            // Dropping the sockets closes them (linger 0: queued messages are discarded).
            connections[link] = None;
            connections[link] = open(context, &endpoints[link], reconnect);
        }
    }
}
