//! A Paranoid Pirate worker for Rust programs: connects a DEALER to a broker's backend, says
//! READY with its free concurrency, heartbeats, runs the handler on `concurrency` threads,
//! reconnects with a doubling backoff when the broker goes silent, and leaves gracefully.
//!
//! The socket lives on the thread that calls [`Worker::run`]; handler threads hand their
//! replies back through [`troupe_core::zmq_thread`], so heartbeats keep flowing while a slow
//! request runs.
//!
//! Leaving ([`WorkerStop::stop`]): in the seed framing the worker announces zero free
//! concurrency, keeps serving what still arrives until nothing has been in progress or
//! arrived for a short quiet period (or `drain_timeout` passes), then sends STOP. Standard
//! Paranoid Pirate has no STOP: the worker stops heartbeating, serves what is in progress and
//! disconnects; the broker notices after its liveness window.
//!
//! Under a supervisor (`TROUPE_SERVICE_ID` set, or [`WorkerOptions::service_id`]) each socket's
//! identity names the process (`troupe/<service id>/<pid>/<n>`), so that the broker fails the
//! process's requests over the moment the supervisor reports its exit. For several brokers at
//! once, see [`crate::worker_set`].
//!
//! ```no_run
//! use std::sync::Arc;
//! use troupe_broker::worker::{Worker, WorkerOptions};
//!
//! # fn main() -> Result<(), troupe_broker::worker::WorkerError> {
//! let options = WorkerOptions {
//!     concurrency: 4,
//!     ..WorkerOptions::new("tcp://127.0.0.1:7502")
//! };
//! let (worker, stop) = Worker::new(options)?;
//! // Call `stop.stop()` from anywhere (a signal handler's thread, say) to leave gracefully.
//! # drop(stop);
//! let summary = worker.run(Arc::new(|body: Vec<Vec<u8>>| body))?;
//! println!("handled {} requests", summary.handled);
//! # Ok(())
//! # }
//! ```

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{sync_channel, Receiver, SyncSender, TrySendError};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use troupe_core::zmq_thread::{self, CommandInbox, CommandSender, SendError};

use crate::protocol::{PPP_HEARTBEAT, PPP_READY, SEED_STOP};

/// Control frame version byte of the seed framing.
const SEED_VERSION: u8 = 1;
/// Quiet period after which a stopping worker with nothing in progress leaves.
const QUIET: Duration = Duration::from_millis(100);
/// How long a leaving worker waits for its STOP to be sent.
const LEAVE_LINGER_MS: i32 = 1000;

/// How the worker frames its messages.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WorkerFraming {
    /// Standard Paranoid Pirate: one-byte control frames; the broker assumes concurrency 1.
    Pirate,
    /// The seed's framing: an empty frame first, 3-byte control frames carrying the free
    /// concurrency, and STOP.
    Seed,
}

/// Connections (sockets) this process has opened to brokers, for
/// [`troupe_core::services::worker_identity`]: each gets the next number, so a reconnecting
/// worker, or a second connection of a [`crate::worker_set::WorkerSet`], has an identity of
/// its own.
static CONNECTIONS: AtomicU64 = AtomicU64::new(0);

/// How a worker connects and behaves.
#[derive(Debug, Clone)]
pub struct WorkerOptions {
    /// The broker backend, e.g. `tcp://127.0.0.1:7502`.
    pub endpoint: String,
    /// The supervised service this process belongs to. When set, every socket the worker
    /// opens gets the ZeroMQ identity
    /// [`worker_identity`](troupe_core::services::worker_identity)`(service_id, pid, n)`
    /// (`troupe/<service id>/<pid>/<n>`, `n` counting the connections this process has opened),
    /// which lets a broker on the supervisor's node fail its requests over the moment the
    /// process exits. When `None` the socket's identity is ZeroMQ's (random). [`WorkerOptions::new`]
    /// takes it from `TROUPE_SERVICE_ID` ([`troupe_core::services::ENV_SERVICE_ID`]), which the
    /// supervisor gives its services.
    pub service_id: Option<String>,
    /// Framing; see [`WorkerFraming`].
    pub framing: WorkerFraming,
    /// Requests handled at once (handler threads), 1 to 255.
    pub concurrency: u8,
    /// Time between heartbeats; must match the broker's.
    pub heartbeat_interval: Duration,
    /// Silent intervals after which the broker is considered gone and the worker reconnects.
    pub liveness: u32,
    /// First reconnect delay; doubles up to `reconnect_max`.
    pub reconnect_initial: Duration,
    /// Longest reconnect delay.
    pub reconnect_max: Duration,
    /// Longest time a stopping worker keeps serving before it leaves.
    pub drain_timeout: Duration,
}

impl WorkerOptions {
    /// The Guide's defaults (1 s heartbeat, liveness 3, reconnect 1 s doubling to 32 s), seed
    /// framing, concurrency 1.
    pub fn new(endpoint: impl Into<String>) -> Self {
        WorkerOptions {
            endpoint: endpoint.into(),
            service_id: service_id_from_env(),
            framing: WorkerFraming::Seed,
            concurrency: 1,
            heartbeat_interval: Duration::from_secs(1),
            liveness: 3,
            reconnect_initial: Duration::from_secs(1),
            reconnect_max: Duration::from_secs(32),
            drain_timeout: Duration::from_secs(5),
        }
    }
}

impl WorkerOptions {
    /// Checks the ranges [`Worker::new`] requires.
    pub fn validate(&self) -> Result<(), WorkerError> {
        if self.concurrency == 0 {
            return Err(WorkerError::Options("concurrency must be 1 to 255".into()));
        }
        if self.heartbeat_interval.is_zero() || self.liveness == 0 {
            return Err(WorkerError::Options(
                "heartbeat interval and liveness must be positive".into(),
            ));
        }
        if self.service_id.as_deref() == Some("") {
            return Err(WorkerError::Options(
                "the service id, when given, cannot be empty".into(),
            ));
        }
        Ok(())
    }
}

/// The supervised service id in `TROUPE_SERVICE_ID`, if set and not empty.
pub fn service_id_from_env() -> Option<String> {
    std::env::var(troupe_core::services::ENV_SERVICE_ID)
        .ok()
        .filter(|id| !id.is_empty())
}

/// The identity of the next socket this process opens for `options`, if it has a service id
/// (see [`WorkerOptions::service_id`]).
fn next_identity(options: &WorkerOptions) -> Option<Vec<u8>> {
    let service_id = options.service_id.as_deref()?;
    let n = CONNECTIONS.fetch_add(1, Ordering::Relaxed);
    Some(troupe_core::services::worker_identity(
        service_id,
        std::process::id(),
        n,
    ))
}

/// Errors of the worker API.
#[derive(Debug, thiserror::Error)]
pub enum WorkerError {
    /// An option is out of range.
    #[error("invalid worker option: {0}")]
    Options(String),
    /// ZeroMQ refused something.
    #[error("worker socket: {0}")]
    Socket(#[from] zmq::Error),
    /// A handler thread could not be started.
    #[error("cannot start a handler thread: {0}")]
    Thread(std::io::Error),
    /// The channel between the handler threads and the socket could not be created.
    #[error("cannot create the worker's event channel: {0}")]
    Bridge(std::io::Error),
}

/// What a worker did, returned when it has left.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct WorkerSummary {
    /// Requests handled and replied to.
    pub handled: u64,
    /// Times it reconnected after the broker went silent.
    pub reconnects: u64,
    /// Malformed messages from the broker that were ignored.
    pub ignored: u64,
}

/// The request handler: body frames in, reply body frames out.
pub type Handler = Arc<dyn Fn(Vec<Vec<u8>>) -> Vec<Vec<u8>> + Send + Sync>;

enum Event {
    Stop,
    Done {
        envelope: Vec<Vec<u8>>,
        reply: Vec<Vec<u8>>,
    },
}

/// Asks a running worker to leave gracefully. Cheap to clone.
#[derive(Clone)]
pub struct WorkerStop {
    events: CommandSender<Event>,
}

impl WorkerStop {
    /// Starts the graceful exit; [`Worker::run`] returns once it is done. Idempotent.
    pub fn stop(&self) {
        let _ = self.events.send(Event::Stop);
    }
}

/// A worker, ready to run.
pub struct Worker {
    options: WorkerOptions,
    context: zmq::Context,
    events: CommandSender<Event>,
    inbox: CommandInbox<Event>,
}

struct Job {
    envelope: Vec<Vec<u8>>,
    body: Vec<Vec<u8>>,
}

impl Worker {
    /// A worker with `options`, and the handle that stops it.
    pub fn new(options: WorkerOptions) -> Result<(Worker, WorkerStop), WorkerError> {
        options.validate()?;
        let (events, inbox) = zmq_thread::channel().map_err(WorkerError::Bridge)?;
        let stop = WorkerStop {
            events: events.clone(),
        };
        Ok((
            Worker {
                options,
                context: zmq::Context::new(),
                events,
                inbox,
            },
            stop,
        ))
    }

    /// Serves requests with `handler` until stopped. Blocks the calling thread.
    pub fn run(self, handler: Handler) -> Result<WorkerSummary, WorkerError> {
        let (jobs_tx, jobs_rx) = sync_channel::<Job>(crate::service::MAX_HELD);
        let jobs_rx = Arc::new(Mutex::new(jobs_rx));
        for n in 0..self.options.concurrency {
            let jobs = jobs_rx.clone();
            let events = self.events.clone();
            let handler = handler.clone();
            std::thread::Builder::new()
                .name(format!("worker-handler-{n}"))
                .spawn(move || handler_thread(jobs, events, handler))
                .map_err(WorkerError::Thread)?;
        }
        let mut worker_loop = WorkerLoop {
            options: &self.options,
            context: &self.context,
            inbox: &self.inbox,
            jobs: jobs_tx,
            summary: WorkerSummary::default(),
            in_progress: 0,
        };
        worker_loop.run()
    }
}

fn handler_thread(jobs: Arc<Mutex<Receiver<Job>>>, events: CommandSender<Event>, handler: Handler) {
    loop {
        let job = {
            let jobs = jobs.lock().unwrap_or_else(|e| e.into_inner());
            jobs.recv()
        };
        let Ok(job) = job else { return };
        let reply = handler(job.body);
        let mut done = Event::Done {
            envelope: job.envelope,
            reply,
        };
        // The loop holds at most `concurrency` replies and the stops, far below the channel's
        // capacity; should it ever fill, this thread (not an arbiter) waits rather than lose
        // the reply.
        loop {
            match events.send(done) {
                Ok(()) => break,
                Err(SendError::Full(_, back)) => {
                    done = back;
                    std::thread::sleep(std::time::Duration::from_millis(1));
                }
                Err(SendError::Stopped(_)) => return,
            }
        }
    }
}

struct WorkerLoop<'a> {
    options: &'a WorkerOptions,
    context: &'a zmq::Context,
    inbox: &'a CommandInbox<Event>,
    jobs: SyncSender<Job>,
    summary: WorkerSummary,
    in_progress: usize,
}

impl WorkerLoop<'_> {
    fn connect(&self) -> Result<zmq::Socket, WorkerError> {
        let socket = self.context.socket(zmq::DEALER)?;
        socket.set_linger(0)?;
        if let Some(identity) = next_identity(self.options) {
            socket.set_identity(&identity)?;
        }
        socket.connect(&self.options.endpoint)?;
        self.send_control(&socket, PPP_READY, self.free())?;
        Ok(socket)
    }

    fn free(&self) -> u8 {
        (self.options.concurrency as usize).saturating_sub(self.in_progress) as u8
    }

    fn send_control(&self, socket: &zmq::Socket, command: u8, free: u8) -> zmq::Result<()> {
        match self.options.framing {
            WorkerFraming::Pirate => socket.send(&[command][..], zmq::DONTWAIT),
            WorkerFraming::Seed => {
                socket.send_multipart([&[][..], &[command, SEED_VERSION, free][..]], zmq::DONTWAIT)
            }
        }
        .or_else(|e| {
            if e == zmq::Error::EAGAIN {
                Ok(())
            } else {
                Err(e)
            }
        })
    }

    /// Seed framing: a heartbeat announcing no free concurrency, so the broker sends nothing
    /// more. Standard Paranoid Pirate cannot say this.
    fn announce_full(&self, socket: &zmq::Socket) {
        if self.options.framing == WorkerFraming::Seed {
            let _ = self.send_control(socket, PPP_HEARTBEAT, 0);
        }
    }

    fn run(&mut self) -> Result<WorkerSummary, WorkerError> {
        let interval = self.options.heartbeat_interval;
        let mut socket = self.connect()?;
        let mut backoff = self.options.reconnect_initial;
        let mut broker_deadline = Instant::now() + interval * self.options.liveness;
        let mut next_heartbeat = Instant::now() + interval;
        let mut stopping: Option<Instant> = None;
        let mut last_arrival = Instant::now();
        loop {
            let now = Instant::now();
            if let Some(deadline) = stopping {
                let quiet = self.in_progress == 0 && now.duration_since(last_arrival) >= QUIET;
                if quiet || now >= deadline {
                    if self.options.framing == WorkerFraming::Seed {
                        // Give STOP time to leave: the context's termination waits for it.
                        let _ = socket.set_linger(LEAVE_LINGER_MS);
                        let _ = self.send_control(&socket, SEED_STOP, 0);
                    }
                    return Ok(self.summary.clone());
                }
            }
            let mut wake = next_heartbeat.min(broker_deadline);
            if let Some(deadline) = stopping {
                wake = wake.min(deadline).min(last_arrival + QUIET);
            }
            let timeout = wake.saturating_duration_since(now).as_millis() as i64 + 1;
            let mut items = [socket.as_poll_item(zmq::POLLIN), self.inbox.poll_item()];
            match zmq::poll(&mut items, timeout) {
                Ok(_) | Err(zmq::Error::EINTR) => {}
                Err(e) => return Err(e.into()),
            }
            let (socket_ready, events_ready) = (items[0].is_readable(), items[1].is_readable());
            if events_ready {
                for event in self.inbox.drain() {
                    match event {
                        Event::Stop => {
                            if stopping.is_none() {
                                stopping = Some(Instant::now() + self.options.drain_timeout);
                                // Requests dispatched before the broker learns of the stop
                                // may still arrive: wait at least the quiet period.
                                last_arrival = Instant::now();
                                self.announce_full(&socket);
                            }
                        }
                        Event::Done { envelope, reply } => {
                            self.in_progress = self.in_progress.saturating_sub(1);
                            self.send_reply(&socket, envelope, reply)?;
                            self.summary.handled += 1;
                            if stopping.is_some() {
                                self.announce_full(&socket);
                            }
                        }
                    }
                }
            }
            if socket_ready {
                while let Some(frames) = recv_all(&socket)? {
                    broker_deadline = Instant::now() + interval * self.options.liveness;
                    backoff = self.options.reconnect_initial;
                    if self.handle_message(frames) {
                        last_arrival = Instant::now();
                    }
                }
            }
            let now = Instant::now();
            if now >= next_heartbeat {
                next_heartbeat = now + interval;
                let free = if stopping.is_some() { 0 } else { self.free() };
                if stopping.is_none() || self.options.framing == WorkerFraming::Seed {
                    self.send_control(&socket, PPP_HEARTBEAT, free)?;
                }
            }
            if now >= broker_deadline && stopping.is_none() {
                tracing::warn!(
                    endpoint = %self.options.endpoint,
                    retry_in = ?backoff,
                    "broker silent; reconnecting"
                );
                drop(socket);
                if self.wait_or_stop(backoff) {
                    return Ok(self.summary.clone());
                }
                backoff = (backoff * 2).min(self.options.reconnect_max);
                self.summary.reconnects += 1;
                socket = self.connect()?;
                broker_deadline = Instant::now() + interval * self.options.liveness;
                next_heartbeat = Instant::now() + interval;
            }
        }
    }

    /// Waits `delay` unless asked to stop first (returns true then). Replies finishing in the
    /// meantime are dropped: their requests were lost with the connection.
    fn wait_or_stop(&mut self, delay: Duration) -> bool {
        let until = Instant::now() + delay;
        loop {
            let left = until.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return false;
            }
            let mut items = [self.inbox.poll_item()];
            let _ = zmq::poll(&mut items, left.as_millis() as i64 + 1);
            for event in self.inbox.drain() {
                match event {
                    Event::Stop => return true,
                    Event::Done { .. } => self.in_progress = self.in_progress.saturating_sub(1),
                }
            }
        }
    }

    /// Handles one message from the broker; true if it was a request.
    fn handle_message(&mut self, frames: Vec<Vec<u8>>) -> bool {
        let rest = match self.options.framing {
            WorkerFraming::Seed if frames.first().is_some_and(|f| f.is_empty()) => &frames[1..],
            WorkerFraming::Seed => {
                self.summary.ignored += 1;
                return false;
            }
            WorkerFraming::Pirate => &frames[..],
        };
        if rest.len() == 1 {
            if rest[0].first() != Some(&PPP_HEARTBEAT) {
                self.summary.ignored += 1;
            }
            return false;
        }
        let Some(delimiter) = crate::protocol::envelope_end(rest) else {
            self.summary.ignored += 1;
            return false;
        };
        let envelope = rest[..delimiter].to_vec();
        let body = rest[delimiter + 1..].to_vec();
        match self.jobs.try_send(Job { envelope, body }) {
            Ok(()) => self.in_progress += 1,
            Err(TrySendError::Full(_)) | Err(TrySendError::Disconnected(_)) => {
                tracing::warn!("more requests than the worker can queue; one dropped");
                self.summary.ignored += 1;
            }
        }
        true
    }

    fn send_reply(
        &self,
        socket: &zmq::Socket,
        envelope: Vec<Vec<u8>>,
        reply: Vec<Vec<u8>>,
    ) -> Result<(), WorkerError> {
        let mut frames = Vec::with_capacity(envelope.len() + reply.len() + 2);
        if self.options.framing == WorkerFraming::Seed {
            frames.push(Vec::new());
        }
        frames.extend(envelope);
        frames.push(Vec::new());
        frames.extend(reply);
        match socket.send_multipart(frames, zmq::DONTWAIT) {
            Ok(()) | Err(zmq::Error::EAGAIN) => Ok(()),
            Err(e) => Err(e.into()),
        }
    }
}

fn recv_all(socket: &zmq::Socket) -> Result<Option<Vec<Vec<u8>>>, WorkerError> {
    match socket.recv_multipart(zmq::DONTWAIT) {
        Ok(frames) => Ok(Some(frames)),
        Err(zmq::Error::EAGAIN) => Ok(None),
        Err(e) => Err(e.into()),
    }
}
