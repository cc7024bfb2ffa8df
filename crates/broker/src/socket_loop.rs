//! The thread that owns the broker's ZeroMQ sockets: a `zmq::poll` loop that feeds every
//! received message to the [`Engine`] and sends what it returns, never blocking on a send
//! (`ROUTER_MANDATORY` with `DONTWAIT`: a refused send is handed back to the engine).
//! Commands from the actor arrive through [`troupe_core::zmq_thread`].

use std::time::{Duration, Instant};

use tokio::sync::oneshot;
use tracing::Span;
use troupe_core::zmq_thread::{self, CommandInbox, CommandSender};

use crate::config::BrokerConfig;
use crate::engine::{BrokerStats, Engine};
use crate::error::BrokerError;
use crate::service::{Outgoing, Purpose, Socket, WorkerId};

/// Messages read from one socket before the others get their turn.
const BURST: usize = 256;
/// Frames kept from one message; a message with more is dropped as malformed.
const MAX_FRAMES: usize = 64;

/// A command from the control plane.
pub enum Command {
    /// Refuse new requests, let held ones finish for up to `window`, fail the rest, close the
    /// sockets and end the thread; the final counters are sent on `done`.
    Drain {
        /// The drain window.
        window: Duration,
        /// Receives the final counters.
        done: oneshot::Sender<BrokerStats>,
    },
    /// Send the current counters.
    Stats(oneshot::Sender<BrokerStats>),
}

/// The addresses the sockets are bound to (wildcard ports resolved).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BoundEndpoints {
    /// Each Paranoid Pirate service: name, frontend, backend.
    pub services: Vec<ServiceEndpoints>,
    /// The Majordomo socket, if enabled.
    pub majordomo: Option<String>,
}

/// One service's bound sockets.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServiceEndpoints {
    /// The service's name.
    pub name: String,
    /// Where clients connect.
    pub frontend: String,
    /// Where workers connect.
    pub backend: String,
}

/// A handle on a running socket loop.
#[derive(Clone)]
pub struct BrokerHandle {
    commands: CommandSender<Command>,
}

impl BrokerHandle {
    /// The current counters.
    pub async fn stats(&self) -> Result<BrokerStats, BrokerError> {
        let (tx, rx) = oneshot::channel();
        self.commands
            .send(Command::Stats(tx))
            .map_err(|_| BrokerError::Stopped)?;
        rx.await.map_err(|_| BrokerError::Stopped)
    }

    /// Drains (see [`Command::Drain`]) and waits until the loop has ended.
    pub async fn drain(&self, window: Duration) -> Result<BrokerStats, BrokerError> {
        let (tx, rx) = oneshot::channel();
        self.commands
            .send(Command::Drain { window, done: tx })
            .map_err(|_| BrokerError::Stopped)?;
        rx.await.map_err(|_| BrokerError::Stopped)
    }

    /// [`BrokerHandle::drain`] for callers outside an async runtime (benchmarks, tools).
    pub fn drain_blocking(&self, window: Duration) -> Result<BrokerStats, BrokerError> {
        let (tx, rx) = oneshot::channel();
        self.commands
            .send(Command::Drain { window, done: tx })
            .map_err(|_| BrokerError::Stopped)?;
        rx.blocking_recv().map_err(|_| BrokerError::Stopped)
    }
}

/// Starts the socket thread for a validated `config`; its events are recorded in `span`.
/// Resolves once every socket is bound.
pub async fn start(
    config: BrokerConfig,
    span: Span,
) -> Result<(BrokerHandle, BoundEndpoints), BrokerError> {
    let (handle, ready) = spawn(config, span)?;
    let endpoints = ready.await.map_err(|_| BrokerError::Stopped)??;
    Ok((handle, endpoints))
}

/// [`start`] for callers outside an async runtime.
pub fn start_blocking(
    config: BrokerConfig,
    span: Span,
) -> Result<(BrokerHandle, BoundEndpoints), BrokerError> {
    let (handle, ready) = spawn(config, span)?;
    let endpoints = ready.blocking_recv().map_err(|_| BrokerError::Stopped)??;
    Ok((handle, endpoints))
}

type Ready = oneshot::Receiver<Result<BoundEndpoints, BrokerError>>;

fn spawn(config: BrokerConfig, span: Span) -> Result<(BrokerHandle, Ready), BrokerError> {
    // The command channel has a context of its own: the sockets' context is terminated by the
    // thread when it ends, which waits for their last messages, and must not wait for the
    // actor's end of the channel.
    let control = zmq::Context::new();
    let (commands, inbox) =
        zmq_thread::channel(&control).map_err(|e| BrokerError::Socket("command channel", e))?;
    let (ready_tx, ready_rx) = oneshot::channel();
    troupe_core::span::spawn_role_thread("broker-sockets", span, "broker", move || {
        let context = zmq::Context::new();
        match Sockets::bind(&context, &config) {
            Ok((sockets, endpoints)) => {
                let _ = ready_tx.send(Ok(endpoints));
                let finished = run(sockets, config, inbox);
                // Terminating the context waits, up to `linger`, until the last replies have
                // left: a node exiting right after the drain must not lose them.
                drop(context);
                if let Some((done, stats)) = finished {
                    let _ = done.send(stats);
                }
                tracing::debug!("broker socket thread ended");
            }
            Err(err) => {
                let _ = ready_tx.send(Err(err));
            }
        }
    })
    .map_err(BrokerError::Thread)?;
    Ok((BrokerHandle { commands }, ready_rx))
}

struct Sockets {
    frontends: Vec<zmq::Socket>,
    backends: Vec<zmq::Socket>,
    majordomo: Option<zmq::Socket>,
}

impl Sockets {
    fn bind(
        context: &zmq::Context,
        config: &BrokerConfig,
    ) -> Result<(Sockets, BoundEndpoints), BrokerError> {
        let mut sockets = Sockets {
            frontends: Vec::new(),
            backends: Vec::new(),
            majordomo: None,
        };
        let mut endpoints = BoundEndpoints {
            services: Vec::new(),
            majordomo: None,
        };
        for (i, service) in config.pirate_services().iter().enumerate() {
            let key = |k: &str| {
                if i == 0 {
                    format!("broker.{k}")
                } else {
                    format!("broker.services[{}].{k}", i - 1)
                }
            };
            let (frontend, front_at) = router(context, config, &service.frontend, key("frontend"))?;
            let (backend, back_at) = router(context, config, &service.backend, key("backend"))?;
            sockets.frontends.push(frontend);
            sockets.backends.push(backend);
            endpoints.services.push(ServiceEndpoints {
                name: service.settings.name.clone(),
                frontend: front_at,
                backend: back_at,
            });
        }
        if config.majordomo.enabled {
            let (socket, at) = router(
                context,
                config,
                &config.majordomo.bind,
                "broker.majordomo.bind".into(),
            )?;
            sockets.majordomo = Some(socket);
            endpoints.majordomo = Some(at);
        }
        Ok((sockets, endpoints))
    }

    fn get(&self, socket: Socket) -> Option<&zmq::Socket> {
        match socket {
            Socket::Frontend(i) => self.frontends.get(i),
            Socket::Backend(i) => self.backends.get(i),
            Socket::Majordomo => self.majordomo.as_ref(),
        }
    }

    /// Every socket in poll order.
    fn all(&self) -> Vec<(Socket, &zmq::Socket)> {
        let mut all = Vec::with_capacity(self.frontends.len() * 2 + 1);
        for i in 0..self.frontends.len() {
            all.push((Socket::Backend(i), &self.backends[i]));
            all.push((Socket::Frontend(i), &self.frontends[i]));
        }
        if let Some(m) = &self.majordomo {
            all.push((Socket::Majordomo, m));
        }
        all
    }
}

fn router(
    context: &zmq::Context,
    config: &BrokerConfig,
    endpoint: &troupe_core::settings::ZmqEndpoint,
    key: String,
) -> Result<(zmq::Socket, String), BrokerError> {
    let socket = context
        .socket(zmq::ROUTER)
        .map_err(|e| BrokerError::Socket("ROUTER", e))?;
    let configure = || -> zmq::Result<()> {
        socket.set_router_mandatory(true)?;
        socket.set_router_handover(true)?;
        socket.set_sndhwm(config.hwm)?;
        socket.set_rcvhwm(config.hwm)?;
        socket.set_maxmsgsize(config.max_message_size)?;
        socket.set_linger(config.linger.get().as_millis().min(i32::MAX as u128) as i32)?;
        Ok(())
    };
    configure().map_err(|e| BrokerError::Socket("socket options", e))?;
    socket
        .bind(endpoint.as_str())
        .map_err(|source| BrokerError::Bind {
            key: key.clone(),
            endpoint: endpoint.to_string(),
            source,
        })?;
    let bound = match socket.get_last_endpoint() {
        Ok(Ok(at)) => at,
        _ => endpoint.to_string(),
    };
    Ok((socket, bound))
}

/// Reads one whole message; `Ok(None)` when none is waiting. Frames past [`MAX_FRAMES`] are
/// read and discarded, and the message comes back empty (malformed).
fn recv_message(socket: &zmq::Socket) -> zmq::Result<Option<Vec<zmq::Message>>> {
    let mut first = zmq::Message::new();
    match socket.recv(&mut first, zmq::DONTWAIT) {
        Ok(()) => {}
        Err(zmq::Error::EAGAIN) => return Ok(None),
        Err(e) => return Err(e),
    }
    let mut more = first.get_more();
    let mut frames = Vec::with_capacity(8);
    frames.push(first);
    let mut overflow = false;
    while more {
        let mut part = zmq::Message::new();
        socket.recv(&mut part, 0)?;
        more = part.get_more();
        if frames.len() < MAX_FRAMES {
            frames.push(part);
        } else {
            overflow = true;
        }
    }
    if overflow {
        frames.clear();
    }
    Ok(Some(frames))
}

/// Sends `frames` without blocking. On refusal (no such peer, or its queue is full) nothing
/// has been sent and the frames come back with the error, the routing frame emptied.
fn send_message(
    socket: &zmq::Socket,
    mut frames: Vec<zmq::Message>,
) -> Result<(), (Vec<zmq::Message>, zmq::Error)> {
    if frames.is_empty() {
        return Ok(());
    }
    let last = frames.len() - 1;
    let more = |i: usize| if i < last { zmq::SNDMORE } else { 0 };
    let route = std::mem::replace(&mut frames[0], zmq::Message::new());
    if let Err(err) = socket.send(route, zmq::DONTWAIT | more(0)) {
        return Err((frames, err));
    }
    for (i, frame) in frames.drain(..).enumerate().skip(1) {
        // Once the routing frame is accepted ZeroMQ takes the whole message.
        if let Err(err) = socket.send(frame, zmq::DONTWAIT | more(i)) {
            tracing::error!(%err, "a message part was refused after its routing frame");
            break;
        }
    }
    Ok(())
}

struct Loop {
    sockets: Sockets,
    engine: Engine<zmq::Message>,
    out: Vec<Outgoing<zmq::Message>>,
    /// `out`'s previous buffer, kept to avoid an allocation per message.
    spare: Vec<Outgoing<zmq::Message>>,
}

/// Runs until drained (or a fatal poll error); returns who asked for the drain and the final
/// counters. The sockets are closed on return.
fn run(
    sockets: Sockets,
    config: BrokerConfig,
    inbox: CommandInbox<Command>,
) -> Option<(oneshot::Sender<BrokerStats>, BrokerStats)> {
    let mut this = Loop {
        sockets,
        engine: Engine::new(config, Instant::now()),
        out: Vec::new(),
        spare: Vec::new(),
    };
    let mut drained: Option<oneshot::Sender<BrokerStats>> = None;
    let sockets: Vec<Socket> = this.sockets.all().iter().map(|(s, _)| *s).collect();
    let mut busy = false;
    loop {
        // While messages keep coming the loop reads without polling (a poll is a system call);
        // once a whole pass finds nothing it sleeps in poll until a socket, a command or the
        // next timer wakes it.
        if !busy {
            let wait = this
                .engine
                .next_wake()
                .saturating_duration_since(Instant::now());
            // Round up so that the loop wakes at or after the deadline, never just before it.
            let timeout = wait.as_micros().div_ceil(1000).min(i64::MAX as u128) as i64;
            let all = this.sockets.all();
            let mut items: Vec<zmq::PollItem> = all
                .iter()
                .map(|(_, s)| s.as_poll_item(zmq::POLLIN))
                .collect();
            items.push(inbox.poll_item());
            match zmq::poll(&mut items, timeout) {
                Ok(_) | Err(zmq::Error::EINTR) => {}
                Err(err) => {
                    tracing::error!(%err, "poll failed; the broker stops");
                    break;
                }
            }
        }
        busy = false;
        for socket in &sockets {
            busy |= this.read_burst(*socket) > 0;
        }
        for command in inbox.drain() {
            match command {
                Command::Stats(reply) => {
                    let _ = reply.send(this.engine.stats());
                }
                Command::Drain { window, done } => {
                    if drained.is_none() {
                        let now = Instant::now();
                        this.engine.start_drain(now, window, &mut this.out);
                        this.flush(now);
                    }
                    drained = Some(done);
                }
            }
        }
        let now = Instant::now();
        if now >= this.engine.next_wake() {
            this.engine.on_timer(now, &mut this.out);
            this.flush(now);
        }
        if drained.is_some() && this.engine.drain_finished(now, &mut this.out) {
            this.flush(now);
            break;
        }
    }
    let stats = this.engine.stats();
    drained.map(|done| (done, stats))
}

impl Loop {
    /// Handles up to [`BURST`] waiting messages from `socket`; returns how many.
    fn read_burst(&mut self, socket: Socket) -> usize {
        for count in 0..BURST {
            let Some(zmq_socket) = self.sockets.get(socket) else {
                return count;
            };
            let frames = match recv_message(zmq_socket) {
                Ok(Some(frames)) => frames,
                Ok(None) => return count,
                Err(err) => {
                    tracing::warn!(?socket, %err, "receive failed");
                    return count;
                }
            };
            let now = Instant::now();
            match socket {
                Socket::Frontend(i) => self.engine.on_frontend(i, frames, now, &mut self.out),
                Socket::Backend(i) => self.engine.on_backend(i, frames, now, &mut self.out),
                Socket::Majordomo => self.engine.on_majordomo(frames, now, &mut self.out),
            }
            self.flush(now);
        }
        BURST
    }

    /// Sends everything the engine produced; refused dispatches go back to the engine, which
    /// may produce more to send.
    fn flush(&mut self, now: Instant) {
        while !self.out.is_empty() {
            let mut batch = std::mem::replace(&mut self.out, std::mem::take(&mut self.spare));
            let mut refused: Vec<(usize, WorkerId, Vec<Vec<zmq::Message>>, bool)> = Vec::new();
            let mut unreachable: Vec<(usize, WorkerId)> = Vec::new();
            for message in batch.drain(..) {
                if let Purpose::Dispatch { service, worker } = &message.purpose {
                    // Later dispatches to a worker that just refused one are not attempted.
                    if let Some(entry) = refused
                        .iter_mut()
                        .find(|(s, w, _, _)| s == service && w == worker)
                    {
                        entry.2.push(message.frames);
                        continue;
                    }
                }
                let Some(socket) = self.sockets.get(message.socket) else {
                    continue;
                };
                if let Err((frames, err)) = send_message(socket, message.frames) {
                    match message.purpose {
                        Purpose::Dispatch { service, worker } => {
                            let gone = err == zmq::Error::EHOSTUNREACH;
                            refused.push((service, worker, vec![frames], gone));
                        }
                        Purpose::Reply => {
                            tracing::debug!(%err, "reply to a client that is gone or not reading dropped");
                            self.engine.reply_undeliverable();
                        }
                        Purpose::Heartbeat { service, worker } => {
                            if err == zmq::Error::EHOSTUNREACH {
                                unreachable.push((service, worker));
                            }
                        }
                        Purpose::Control => {}
                    }
                }
            }
            self.spare = batch;
            for (service, worker, frames, gone) in refused {
                self.engine
                    .undeliverable(service, &worker, frames, gone, now, &mut self.out);
            }
            for (service, worker) in unreachable {
                self.engine
                    .worker_unreachable(service, &worker, now, &mut self.out);
            }
        }
    }
}
