//! The thread that owns the broker's ZeroMQ sockets: a `zmq::poll` loop that feeds every
//! received message to the [`Engine`] and sends what it returns, never blocking on a send
//! (`ROUTER_MANDATORY` with `DONTWAIT`: a refused send is handed back to the engine).
//! Commands from the actor arrive through [`troupe_core::zmq_thread`]: counters, live updates
//! of the Paranoid Pirate services (bind first, then change the engine, then swap the
//! sockets), and the drain.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use tokio::sync::oneshot;
use tracing::Span;
use troupe_core::services::{BrokerWorkers, BrokerWorkersAnswer};
use troupe_core::zmq_thread::{self, CommandInbox, CommandSender};

use crate::backlog::{self, Refusal, ReplyBacklog};
use crate::config::{is_wildcard_port, BrokerConfig, PirateService};
use crate::engine::{BrokerStats, Engine, KIND_PIRATE};
use crate::error::BrokerError;
use crate::service::{Outgoing, Purpose, Socket, WorkerId};
use crate::update::{self, ServicesUpdate, UpdatePlan};

/// Messages read from one socket before the others get their turn.
const BURST: usize = 256;
/// Frames kept from one message: one more than any valid message has, so that the engine sees
/// a longer one is over a limit (see [`crate::protocol::MAX_RECEIVED_FRAMES`]).
const MAX_FRAMES: usize = crate::protocol::MAX_RECEIVED_FRAMES + 1;

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
    /// Change the Paranoid Pirate services to those of `config` (see [`crate::update`]), or
    /// with `dry_run` only say what would change. Refused while draining.
    Update {
        /// The new `[broker]` table.
        config: Box<BrokerConfig>,
        /// Report only.
        dry_run: bool,
        /// Receives the outcome.
        done: oneshot::Sender<Result<ServicesApplied, BrokerError>>,
    },
    /// The supervisor reported that process `pid` of supervised service `service_id` exited:
    /// its workers are dead now (see [`Engine::process_exited`]).
    ProcessExited {
        /// The supervised service.
        service_id: String,
        /// The process that exited.
        pid: u32,
    },
    /// The supervisor reported that process `pid` of supervised service `service_id` started
    /// (see [`Engine::process_started`]).
    ProcessStarted {
        /// The supervised service.
        service_id: String,
        /// The process that started.
        pid: u32,
    },
    /// What the broker sees of a service and of one process's workers (see
    /// [`Engine::broker_workers`]).
    Workers {
        /// The question.
        query: BrokerWorkers,
        /// Receives the answer.
        done: oneshot::Sender<BrokerWorkersAnswer>,
    },
}

/// What a live update did.
#[derive(Debug, Clone)]
pub struct ServicesApplied {
    /// Which services were added, removed, changed, and what needs a restart.
    pub report: ServicesUpdate,
    /// Every socket's address after the update.
    pub endpoints: BoundEndpoints,
    /// The addresses of the services started: added, or changed with new sockets (empty on a
    /// dry run).
    pub started: Vec<ServiceEndpoints>,
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
            .map_err(BrokerError::from)?;
        rx.await.map_err(|_| BrokerError::Stopped)
    }

    /// Drains (see [`Command::Drain`]) and waits until the loop has ended.
    pub async fn drain(&self, window: Duration) -> Result<BrokerStats, BrokerError> {
        let (tx, rx) = oneshot::channel();
        self.commands
            .send(Command::Drain { window, done: tx })
            .map_err(BrokerError::from)?;
        rx.await.map_err(|_| BrokerError::Stopped)
    }

    /// Applies a live update of the services (see [`Command::Update`]).
    pub async fn update(
        &self,
        config: BrokerConfig,
        dry_run: bool,
    ) -> Result<ServicesApplied, BrokerError> {
        let (tx, rx) = oneshot::channel();
        self.commands
            .send(Command::Update {
                config: Box::new(config),
                dry_run,
                done: tx,
            })
            .map_err(BrokerError::from)?;
        rx.await.map_err(|_| BrokerError::Stopped)?
    }

    /// Tells the broker that process `pid` of supervised service `service_id` exited (see
    /// [`Command::ProcessExited`]). Never waits.
    pub fn process_exited(&self, service_id: String, pid: u32) -> Result<(), BrokerError> {
        self.commands
            .send(Command::ProcessExited { service_id, pid })
            .map_err(BrokerError::from)
    }

    /// Tells the broker that process `pid` of supervised service `service_id` started (see
    /// [`Command::ProcessStarted`]). Never waits.
    pub fn process_started(&self, service_id: String, pid: u32) -> Result<(), BrokerError> {
        self.commands
            .send(Command::ProcessStarted { service_id, pid })
            .map_err(BrokerError::from)
    }

    /// What the broker sees of `query`'s service and process (see [`Command::Workers`]).
    pub async fn workers(&self, query: BrokerWorkers) -> Result<BrokerWorkersAnswer, BrokerError> {
        let (tx, rx) = oneshot::channel();
        self.commands
            .send(Command::Workers { query, done: tx })
            .map_err(BrokerError::from)?;
        rx.await.map_err(|_| BrokerError::Stopped)
    }

    /// [`BrokerHandle::drain`] for callers outside an async runtime (benchmarks, tools).
    pub fn drain_blocking(&self, window: Duration) -> Result<BrokerStats, BrokerError> {
        let (tx, rx) = oneshot::channel();
        self.commands
            .send(Command::Drain { window, done: tx })
            .map_err(BrokerError::from)?;
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
    let (commands, inbox) = zmq_thread::channel().map_err(BrokerError::Bridge)?;
    let (ready_tx, ready_rx) = oneshot::channel();
    troupe_core::span::spawn_role_thread("broker-sockets", span, "broker", move || {
        let context = zmq::Context::new();
        match Sockets::bind(&context, &config) {
            Ok((sockets, endpoints)) => {
                let _ = ready_tx.send(Ok(endpoints));
                let finished = run(sockets, context.clone(), config, inbox);
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

/// A Paranoid Pirate service's two sockets.
struct PirateSockets {
    frontend: zmq::Socket,
    backend: zmq::Socket,
    /// The configured addresses, frontend then backend (a live update reuses a socket whose
    /// configured address it asks for again).
    configured: [String; 2],
    /// The service's name and bound addresses.
    bound: ServiceEndpoints,
}

/// Which socket of a Paranoid Pirate service.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum Side {
    Frontend,
    Backend,
}

impl Side {
    const BOTH: [Side; 2] = [Side::Frontend, Side::Backend];

    fn name(self) -> &'static str {
        match self {
            Side::Frontend => "frontend",
            Side::Backend => "backend",
        }
    }

    fn of(self, service: &PirateService) -> &troupe_core::settings::ZmqEndpoint {
        match self {
            Side::Frontend => &service.frontend,
            Side::Backend => &service.backend,
        }
    }
}

/// How a live update gets a socket for a service it starts.
enum Prepared {
    /// A socket of a service it stops, at (index, side), bound to the same configured address.
    Reuse(usize, Side),
    /// A socket bound for it, and its bound address.
    New(zmq::Socket, String),
}

/// The key on which a socket of a stopping service is reused: its configured address, or for
/// an address with a wildcard port (a different port at each bind) the same service's same
/// side at the same configured address.
fn reuse_key(service: &str, side: Side, configured: &str) -> String {
    if is_wildcard_port(configured) {
        format!("{service}\0{}\0{configured}", side.name())
    } else {
        configured.to_string()
    }
}

struct Sockets {
    /// By engine service index; `None` for Majordomo-only services and free slots.
    pirate: Vec<Option<PirateSockets>>,
    majordomo: Option<zmq::Socket>,
    /// The Majordomo socket's bound address.
    majordomo_at: Option<String>,
}

impl Sockets {
    fn bind(
        context: &zmq::Context,
        config: &BrokerConfig,
    ) -> Result<(Sockets, BoundEndpoints), BrokerError> {
        let mut sockets = Sockets {
            pirate: Vec::new(),
            majordomo: None,
            majordomo_at: None,
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
            sockets.pirate.push(Some(PirateSockets {
                frontend,
                backend,
                configured: [
                    service.frontend.as_str().to_string(),
                    service.backend.as_str().to_string(),
                ],
                bound: ServiceEndpoints {
                    name: service.settings.name.clone(),
                    frontend: front_at,
                    backend: back_at,
                },
            }));
        }
        if config.majordomo.enabled {
            let (socket, at) = router(
                context,
                config,
                &config.majordomo.bind,
                "broker.majordomo.bind".into(),
            )?;
            sockets.majordomo = Some(socket);
            sockets.majordomo_at = Some(at);
        }
        let endpoints = sockets.bound();
        Ok((sockets, endpoints))
    }

    /// The bound addresses, Paranoid Pirate services in index order.
    fn bound(&self) -> BoundEndpoints {
        BoundEndpoints {
            services: self
                .pirate
                .iter()
                .flatten()
                .map(|p| p.bound.clone())
                .collect(),
            majordomo: self.majordomo_at.clone(),
        }
    }

    fn get(&self, socket: Socket) -> Option<&zmq::Socket> {
        match socket {
            Socket::Frontend(i) => self.pirate.get(i)?.as_ref().map(|p| &p.frontend),
            Socket::Backend(i) => self.pirate.get(i)?.as_ref().map(|p| &p.backend),
            Socket::Majordomo => self.majordomo.as_ref(),
        }
    }

    /// Every socket in poll order.
    fn all(&self) -> Vec<(Socket, &zmq::Socket)> {
        let mut all = Vec::with_capacity(self.pirate.len() * 2 + 1);
        for (i, pirate) in self.pirate.iter().enumerate() {
            if let Some(p) = pirate {
                all.push((Socket::Backend(i), &p.backend));
                all.push((Socket::Frontend(i), &p.frontend));
            }
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
/// read and discarded: the engine answers such a message (it is over the body limit).
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
    while more {
        let mut part = zmq::Message::new();
        socket.recv(&mut part, 0)?;
        more = part.get_more();
        if frames.len() < MAX_FRAMES {
            frames.push(part);
        }
    }
    Ok(Some(frames))
}

/// Sends `frames` without blocking. On refusal (no such peer, or its queue is full) nothing
/// has been sent and the frames come back intact with the error.
fn send_message(
    socket: &zmq::Socket,
    mut frames: Vec<zmq::Message>,
) -> Result<(), (Vec<zmq::Message>, zmq::Error)> {
    if frames.is_empty() {
        return Ok(());
    }
    let last = frames.len() - 1;
    let more = |i: usize| if i < last { zmq::SNDMORE } else { 0 };
    // The routing frame is sent as a copy (identities are short, so ZeroMQ keeps it inline
    // without an allocation) so that a refused message comes back whole.
    if let Err(err) = socket.send(&frames[0][..], zmq::DONTWAIT | more(0)) {
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
    /// For the sockets a live update binds.
    context: zmq::Context,
    engine: Engine<zmq::Message>,
    out: Vec<Outgoing<zmq::Message>>,
    /// `out`'s previous buffer, kept to avoid an allocation per message.
    spare: Vec<Outgoing<zmq::Message>>,
    /// Replies to clients that are not reading, sent again once they read.
    backlog: ReplyBacklog<zmq::Message>,
}

/// Runs until drained (or a fatal poll error); returns who asked for the drain and the final
/// counters. The sockets are closed on return.
fn run(
    sockets: Sockets,
    context: zmq::Context,
    config: BrokerConfig,
    inbox: CommandInbox<Command>,
) -> Option<(oneshot::Sender<BrokerStats>, BrokerStats)> {
    let mut this = Loop {
        sockets,
        context,
        engine: Engine::new(config, Instant::now()),
        out: Vec::new(),
        spare: Vec::new(),
        backlog: ReplyBacklog::default(),
    };
    let mut drained: Option<oneshot::Sender<BrokerStats>> = None;
    let mut sockets = this.read_order();
    let mut busy = false;
    loop {
        let mut commands_rung = false;
        // While messages keep coming the loop reads without polling (a poll is a system call);
        // once a whole pass finds nothing it sleeps in poll until a socket, a command or the
        // next timer wakes it.
        if !busy {
            let mut wait = this
                .engine
                .next_wake()
                .saturating_duration_since(Instant::now());
            if !this.backlog.is_empty() {
                wait = wait.min(backlog::RETRY_EVERY);
            }
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
            commands_rung = items.last().is_some_and(|item| item.is_readable());
        }
        busy = false;
        for socket in &sockets {
            busy |= this.read_burst(*socket) > 0;
        }
        let commands = if commands_rung {
            inbox.drain()
        } else {
            inbox.drain_if_rung()
        };
        for command in commands {
            match command {
                Command::Stats(reply) => {
                    let _ = reply.send(this.stats(Instant::now()));
                }
                Command::Update {
                    config,
                    dry_run,
                    done,
                } => {
                    let result = this.update(&config, dry_run);
                    sockets = this.read_order();
                    let _ = done.send(result);
                }
                Command::ProcessExited { service_id, pid } => {
                    let now = Instant::now();
                    let removed = this
                        .engine
                        .process_exited(&service_id, pid, now, &mut this.out);
                    this.flush(now);
                    tracing::debug!(service_id = %service_id, pid, removed, "supervised process exited");
                }
                Command::ProcessStarted { service_id, pid } => {
                    this.engine.process_started(&service_id, pid);
                }
                Command::Workers { query, done } => {
                    let _ = done.send(this.engine.broker_workers(&query));
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
        if !this.backlog.is_empty() {
            this.retry_backlog(now);
        }
        if now >= this.engine.next_wake() {
            this.engine.on_timer(now, &mut this.out);
            this.flush(now);
        }
        if drained.is_some() && this.engine.drain_finished(now, &mut this.out) {
            this.flush(now);
            // Replies still held for clients that were not reading get a last try; what
            // cannot leave now is counted as dropped.
            if !this.backlog.is_empty() {
                this.retry_backlog(now);
                this.backlog.discard(now);
            }
            break;
        }
    }
    let stats = this.stats(Instant::now());
    drained.map(|done| (done, stats))
}

impl Loop {
    /// Sends the replies held for clients that were not reading, as far as they read now.
    fn retry_backlog(&mut self, now: Instant) {
        let sockets = &self.sockets;
        let gone = self.backlog.retry(now, |socket, frames| {
            let Some(zmq_socket) = sockets.get(socket) else {
                return Err((frames, Refusal::Gone));
            };
            send_message(zmq_socket, frames).map_err(|(frames, err)| {
                let why = if err == zmq::Error::EAGAIN {
                    Refusal::Full
                } else {
                    Refusal::Gone
                };
                (frames, why)
            })
        });
        for _ in 0..gone {
            self.engine.reply_undeliverable();
        }
    }

    /// The sockets in the order they are read.
    fn read_order(&self) -> Vec<Socket> {
        self.sockets.all().iter().map(|(s, _)| *s).collect()
    }

    /// The engine's snapshot with each Paranoid Pirate service's bound addresses.
    fn stats(&self, now: Instant) -> BrokerStats {
        let mut stats = self.engine.stats(now);
        stats.dropped_replies = self.backlog.dropped();
        stats.held_replies = self.backlog.len();
        for service in &mut stats.services {
            if service.kind != KIND_PIRATE {
                continue;
            }
            let bound = self
                .engine
                .pirate_index(&service.name)
                .and_then(|i| self.sockets.pirate.get(i))
                .and_then(|p| p.as_ref())
                .filter(|p| p.bound.name == service.name);
            if let Some(p) = bound {
                service.frontend = Some(p.bound.frontend.clone());
                service.backend = Some(p.bound.backend.clone());
            }
        }
        stats
    }

    /// A live update (see [`Command::Update`]): every socket a started service needs is bound
    /// (or taken over from a stopping service at the same address) before anything changes, so
    /// a failure leaves everything as it was. Then the engine changes, the stopped services'
    /// last answers are sent on their old sockets, and the sockets are swapped.
    fn update(
        &mut self,
        config: &BrokerConfig,
        dry_run: bool,
    ) -> Result<ServicesApplied, BrokerError> {
        if self.engine.is_draining() {
            return Err(BrokerError::Draining);
        }
        config
            .validate()
            .map_err(|e| BrokerError::Config(e.within("broker")))?;
        let plan = update::plan(self.engine.config(), config);
        if dry_run {
            return Ok(ServicesApplied {
                report: plan.report,
                endpoints: self.sockets.bound(),
                started: Vec::new(),
            });
        }

        let prepared = self.prepare_sockets(&plan)?;

        let now = Instant::now();
        let started = self.engine.apply_update(&plan, &mut self.out);
        self.flush(now);

        // The stopped services' sockets, their last answers queued: taken over, or closed.
        let mut released: HashMap<(usize, Side), (zmq::Socket, String)> = HashMap::new();
        for (index, pirate) in self.sockets.pirate.iter_mut().enumerate() {
            let stopping = pirate
                .as_ref()
                .is_some_and(|p| plan.stop.contains(&p.bound.name) || started.contains(&index));
            if let Some(p) = pirate.take_if(|_| stopping) {
                released.insert((index, Side::Frontend), (p.frontend, p.bound.frontend));
                released.insert((index, Side::Backend), (p.backend, p.bound.backend));
            }
        }
        let mut resolve = |prepared: Prepared| match prepared {
            Prepared::New(socket, at) => Some((socket, at)),
            Prepared::Reuse(index, side) => released.remove(&(index, side)),
        };
        let mut started_at = Vec::with_capacity(plan.start.len());
        for ((service, [front, back]), index) in plan.start.iter().zip(prepared).zip(started) {
            let (Some((frontend, front_at)), Some((backend, back_at))) =
                (resolve(front), resolve(back))
            else {
                tracing::error!(service = %service.settings.name, "a socket to take over was not released; the service has no sockets");
                continue;
            };
            let bound = ServiceEndpoints {
                name: service.settings.name.clone(),
                frontend: front_at,
                backend: back_at,
            };
            tracing::info!(
                service = %bound.name,
                frontend = %bound.frontend,
                backend = %bound.backend,
                "broker service listening"
            );
            if self.sockets.pirate.len() <= index {
                self.sockets.pirate.resize_with(index + 1, || None);
            }
            self.sockets.pirate[index] = Some(PirateSockets {
                frontend,
                backend,
                configured: [
                    service.frontend.as_str().to_string(),
                    service.backend.as_str().to_string(),
                ],
                bound: bound.clone(),
            });
            started_at.push(bound);
        }
        // What was not taken over closes now; its last answers leave within `linger`.
        drop(released);
        tracing::info!(
            added = ?plan.report.added,
            removed = ?plan.report.removed,
            changed = ?plan.report.changed,
            needs_restart = ?plan.report.needs_restart,
            "broker services updated"
        );
        Ok(ServicesApplied {
            report: plan.report,
            endpoints: self.sockets.bound(),
            started: started_at,
        })
    }

    /// The frontend and backend of each service `plan` starts: a socket of a service it stops
    /// bound at the same configured address (see [`reuse_key`]), or one bound now. A socket
    /// that cannot be bound is an error naming the service and address; the sockets bound
    /// before it are closed, and nothing has changed.
    fn prepare_sockets(&self, plan: &UpdatePlan) -> Result<Vec<[Prepared; 2]>, BrokerError> {
        let mut releasing: HashMap<String, (usize, Side)> = HashMap::new();
        for (index, pirate) in self.sockets.pirate.iter().enumerate() {
            let Some(p) = pirate else { continue };
            if plan.stop.contains(&p.bound.name) {
                for (side, configured) in Side::BOTH.into_iter().zip(&p.configured) {
                    releasing.insert(reuse_key(&p.bound.name, side, configured), (index, side));
                }
            }
        }
        let mut prepare = |service: &PirateService, side: Side| {
            let name = &service.settings.name;
            let endpoint = side.of(service);
            if let Some((index, side)) = releasing.remove(&reuse_key(name, side, endpoint.as_str()))
            {
                return Ok(Prepared::Reuse(index, side));
            }
            let key = format!("broker.{name}.{}", side.name());
            match router(&self.context, self.engine.config(), endpoint, key) {
                Ok((socket, at)) => Ok(Prepared::New(socket, at)),
                Err(BrokerError::Bind {
                    endpoint, source, ..
                }) => Err(BrokerError::ServiceBind {
                    service: name.clone(),
                    socket: side.name(),
                    endpoint,
                    source,
                }),
                Err(other) => Err(other),
            }
        };
        let mut prepared = Vec::with_capacity(plan.start.len());
        for service in &plan.start {
            let frontend = prepare(service, Side::Frontend)?;
            let backend = prepare(service, Side::Backend)?;
            prepared.push([frontend, backend]);
        }
        Ok(prepared)
    }

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
                if message.purpose == Purpose::Reply
                    && !self.backlog.is_empty()
                    && message
                        .frames
                        .first()
                        .is_some_and(|id| self.backlog.holds(message.socket, id))
                {
                    // Behind the replies already held for that client, in order.
                    self.backlog.hold(message.socket, message.frames, now);
                    continue;
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
                        Purpose::Reply if err == zmq::Error::EAGAIN => {
                            self.backlog.hold(message.socket, frames, now);
                        }
                        Purpose::Reply => {
                            tracing::debug!(%err, "reply to a client that is gone dropped");
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
