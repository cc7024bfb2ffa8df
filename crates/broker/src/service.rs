//! One service's worker queue and request bookkeeping, sans-IO: fed decoded messages and the
//! current time, it appends the messages to send to an output list.
//!
//! Invariants:
//! - a worker is in the map once, whatever it sends; `with_credit` counts exactly the workers
//!   with credit left, and the chosen worker has the most credit, then is the least recently
//!   used;
//! - every request is in exactly one place: waiting in the bounded queue, held by one worker,
//!   or answered (reply, or error reply naming the service);
//! - a worker never holds more than [`MAX_HELD`] requests, whatever credit it announces.

use std::cmp::Reverse;
use std::collections::{HashMap, VecDeque};
use std::time::{Duration, Instant};

use serde::Serialize;

use troupe_core::services::parse_worker_identity;

use crate::config::ServiceSettings;
use crate::protocol::{self, ErrorCode, Frame, Framing};

/// Most requests one worker may hold at once (its credit is a byte).
pub const MAX_HELD: usize = 255;

/// The heartbeat interval of RFC 7 and of the Guide's Majordomo workers: what a Majordomo
/// worker is assumed to use until its own interval is learned.
pub const MAJORDOMO_HEARTBEAT: Duration = Duration::from_millis(2500);
/// The longest heartbeat interval the broker learns from a worker (unless the configured one
/// is longer).
pub const MAX_LEARNED_HEARTBEAT: Duration = Duration::from_secs(10);
/// While a standard Paranoid Pirate or Majordomo worker holds a request, its liveness window
/// is this many times longer.
pub const BUSY_GRACE: u32 = 10;

/// Learns a worker's heartbeat interval from the gap since its last message, within `range`
/// (min, max): a longer gap raises it at once, shorter gaps lower it slowly (by an eighth of
/// the difference per message), so that a worker sending often while busy keeps the interval
/// it heartbeats at while idle. Gaps while the worker holds requests teach nothing (a
/// standard worker may be silent while it works).
fn heard_from<F>(worker: &mut Worker<F>, now: Instant, range: (Duration, Duration)) {
    let gap = now.saturating_duration_since(worker.last_heard);
    worker.last_heard = now;
    if !worker.held.is_empty() {
        return;
    }
    let learned = if gap >= worker.interval {
        gap
    } else {
        worker.interval - (worker.interval - gap) / 8
    };
    worker.interval = learned.clamp(range.0, range.1);
}

/// A worker's identity on its socket.
pub type WorkerId = Vec<u8>;

/// Where a request came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Origin {
    /// The frontend of Paranoid Pirate service `i`.
    Frontend(usize),
    /// The Majordomo socket.
    Majordomo,
}

/// A socket of the broker.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Socket {
    /// Clients of Paranoid Pirate service `i`.
    Frontend(usize),
    /// Workers of Paranoid Pirate service `i`.
    Backend(usize),
    /// The Majordomo socket.
    Majordomo,
}

/// What an outgoing message is, so a failed send can be handled.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Purpose {
    /// A request handed to `worker` of service `service`.
    Dispatch {
        /// Service index.
        service: usize,
        /// The worker.
        worker: WorkerId,
    },
    /// A reply or an error reply to a client.
    Reply,
    /// A heartbeat to `worker` of service `service`; if the socket no longer knows the
    /// worker, it is gone.
    Heartbeat {
        /// Service index.
        service: usize,
        /// The worker.
        worker: WorkerId,
    },
    /// A disconnect to a worker.
    Control,
}

/// A message to send.
#[derive(Debug)]
pub struct Outgoing<F> {
    /// Where.
    pub socket: Socket,
    /// The frames, routing identity first.
    pub frames: Vec<F>,
    /// What it is.
    pub purpose: Purpose,
}

/// A client request.
#[derive(Debug)]
pub struct Request<F> {
    /// Where it came from.
    pub origin: Origin,
    /// The client's routing frames (without the empty delimiter); for Majordomo, the client id.
    pub envelope: Vec<F>,
    /// The body frames.
    pub body: Vec<F>,
    /// Workers it has been given to so far.
    pub attempts: u32,
    /// When the broker received it (for [`ServiceStats::durations`]).
    pub received: Instant,
}

/// Why a worker left the queue.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Loss {
    /// Silent for `liveness` heartbeat intervals.
    Expired,
    /// Sent STOP (seed) or DISCONNECT (Majordomo).
    Stopped,
    /// Sent READY again: it restarted and forgot what it held.
    Restarted,
    /// Its connection is gone (the socket refused to route to it).
    Disconnected,
    /// The supervisor reported that its process exited (its identity names the process, see
    /// [`troupe_core::services::worker_identity`]).
    Exited,
}

impl Loss {
    fn describe(self) -> &'static str {
        match self {
            Loss::Expired => "stopped heartbeating",
            Loss::Stopped => "left",
            Loss::Restarted => "restarted",
            Loss::Disconnected => "disconnected",
            Loss::Exited => "exited",
        }
    }
}

/// Why a reply from a worker is not forwarded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Unmatched {
    /// The worker is not in the queue.
    UnknownWorker,
    /// The worker holds no request with that envelope (answered already, or never sent).
    NotHeld,
}

/// A request held by a worker.
#[derive(Debug)]
pub struct Held<F> {
    /// Where the request came from.
    pub origin: Origin,
    /// The routing frames the worker saw, which its reply must carry (see [`flatten_route`]).
    route: Vec<u8>,
    /// Workers the request has been given to, this one included.
    pub attempts: u32,
    /// The body, kept only when the service retries on worker loss.
    body: Option<Vec<F>>,
    /// When the broker received the request.
    pub received: Instant,
}

struct Waiting<F> {
    request: Request<F>,
    deadline: Instant,
}

impl<F: Frame> Waiting<F> {
    fn new(request: Request<F>, deadline: Instant) -> Self {
        Waiting { request, deadline }
    }

    /// What it counts against `queue_max_bytes`: its envelope and body bytes.
    fn bytes(&self) -> u64 {
        request_bytes(&self.request)
    }
}

struct Worker<F> {
    id: WorkerId,
    framing: Framing,
    credit: u32,
    sent_since_heard: u32,
    /// When the broker last heard from it.
    last_heard: Instant,
    /// Its heartbeat interval as learned from the gaps between its messages (see
    /// [`Service::heard_from`]).
    interval: Duration,
    last_used: u64,
    held: VecDeque<Held<F>>,
}

/// One worker as an operator sees it (see [`Service::worker_snapshots`]).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct WorkerSnapshot {
    /// Its identity on the socket: the text if it is printable ASCII, else hex.
    pub identity: String,
    /// How it frames its messages: `"pirate"`, `"seed"` or `"majordomo"`.
    pub framing: &'static str,
    /// Further requests the broker may give it now.
    pub credit: u32,
    /// Requests it holds.
    pub held: usize,
    /// Milliseconds since the broker last heard from it.
    pub last_heard_ms_ago: u64,
    /// Its heartbeat interval as the broker learned it, in milliseconds (see *Liveness* in
    /// docs/protocols/broker.md).
    pub heartbeat_ms: u64,
    /// The supervised service whose process opened this worker, when its identity says so
    /// (see [`troupe_core::services::worker_identity`]); `null` otherwise.
    pub service_id: Option<String>,
    /// That process's id, with `service_id`.
    pub pid: Option<u32>,
}

/// Per-service counters.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct ServiceStats {
    /// Requests received.
    pub requests: u64,
    /// Requests handed to a worker (retries included).
    pub dispatched: u64,
    /// Replies forwarded to clients.
    pub replies: u64,
    /// Requests refused at once (queue full, shutting down).
    pub refused: u64,
    /// Requests that waited `request_timeout` for a worker.
    pub timed_out: u64,
    /// Requests failed because their worker was lost.
    pub lost: u64,
    /// Requests given to another worker after their worker was lost.
    pub retried: u64,
    /// Replies dropped because no held request matched them.
    pub unmatched_replies: u64,
    /// Requests failed without an error reply to their client, because the service has
    /// `error_replies = false` (counted in `refused`, `timed_out` or `lost` too).
    pub silenced: u64,
    /// Replies the broker could not forward (over a limit); their requests were answered
    /// with a 502 instead.
    pub refused_replies: u64,
    /// Workers that joined.
    pub workers_joined: u64,
    /// Workers that left or were lost (those below included).
    pub workers_lost: u64,
    /// Workers removed because the supervisor reported their process's exit.
    pub workers_exited: u64,
    /// Bytes of request bodies received from clients.
    pub received_bytes: u64,
    /// Bytes of reply bodies forwarded from workers to clients (the broker's own error
    /// replies are not counted).
    pub sent_bytes: u64,
    /// Time from each request's arrival to its worker's reply, for replies forwarded. Not in
    /// the JSON: metrics expose it as a histogram.
    #[serde(skip)]
    pub durations: DurationHistogram,
}

/// Upper bounds of [`DurationHistogram`]'s buckets, in microseconds (100 µs to 10 s).
pub const DURATION_BUCKETS_US: [u64; 16] = [
    100, 250, 500, 1_000, 2_500, 5_000, 10_000, 25_000, 50_000, 100_000, 250_000, 500_000,
    1_000_000, 2_500_000, 5_000_000, 10_000_000,
];

/// A histogram of durations with fixed buckets ([`DURATION_BUCKETS_US`]): a count per bucket
/// (not cumulative; the last counts what is above every bound) and the sum. Recording is a
/// binary search over 16 bounds and two additions.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DurationHistogram {
    counts: [u64; DURATION_BUCKETS_US.len() + 1],
    sum_us: u64,
}

impl DurationHistogram {
    /// Records one duration.
    pub fn observe(&mut self, duration: Duration) {
        let us = u64::try_from(duration.as_micros()).unwrap_or(u64::MAX);
        let bucket = DURATION_BUCKETS_US.partition_point(|&bound| bound < us);
        self.counts[bucket] += 1;
        self.sum_us = self.sum_us.saturating_add(us);
    }

    /// Durations recorded.
    pub fn count(&self) -> u64 {
        self.counts.iter().sum()
    }

    /// Their sum, in seconds.
    pub fn sum_seconds(&self) -> f64 {
        self.sum_us as f64 / 1e6
    }

    /// Each bucket's upper bound in seconds and the durations in it, not cumulative (the
    /// last bucket, above every bound, is left out: it is `count()` minus the others).
    pub fn buckets(&self) -> impl Iterator<Item = (f64, u64)> + '_ {
        DURATION_BUCKETS_US
            .iter()
            .zip(self.counts)
            .map(|(&bound, count)| (bound as f64 / 1e6, count))
    }
}

/// One service: its workers, their credit, waiting requests and held requests.
pub struct Service<F> {
    index: usize,
    settings: ServiceSettings,
    socket: Socket,
    /// The configured heartbeat interval: the least a worker's learned interval can be.
    heartbeat: Duration,
    /// Silent intervals after which a worker is dead.
    liveness: u32,
    /// Workers by slot; `slots` finds a worker's slot from its identity.
    workers: Vec<Option<Worker<F>>>,
    slots: HashMap<WorkerId, usize>,
    free_slots: Vec<usize>,
    /// Workers with credit left.
    with_credit: usize,
    waiting: VecDeque<Waiting<F>>,
    /// [`Waiting::bytes`] of everything in `waiting`.
    waiting_bytes: u64,
    use_clock: u64,
    /// Counters since start.
    pub stats: ServiceStats,
}

impl<F: Frame> Service<F> {
    /// A service with no workers. `socket` is where its workers live; a worker is dead after
    /// `liveness` of its heartbeat intervals without a message (see [`Service::heard_from`]
    /// for how its interval is learned, starting from `heartbeat`).
    pub fn new(
        index: usize,
        settings: ServiceSettings,
        socket: Socket,
        heartbeat: Duration,
        liveness: u32,
    ) -> Self {
        Service {
            index,
            settings,
            socket,
            heartbeat,
            liveness: liveness.max(1),
            workers: Vec::new(),
            slots: HashMap::new(),
            free_slots: Vec::new(),
            with_credit: 0,
            waiting: VecDeque::new(),
            waiting_bytes: 0,
            use_clock: 0,
            stats: ServiceStats::default(),
        }
    }

    /// The service's name.
    pub fn name(&self) -> &str {
        &self.settings.name
    }

    /// The service's request settings.
    pub fn settings(&self) -> &ServiceSettings {
        &self.settings
    }

    /// Replaces the request settings (live reload). What already waits keeps its deadline and
    /// what is held keeps its attempts; a lower `queue_limit` or `max_workers` refuses only
    /// what comes next. The name is not changed.
    pub fn set_settings(&mut self, settings: ServiceSettings) {
        let name = std::mem::take(&mut self.settings.name);
        self.settings = ServiceSettings { name, ..settings };
    }

    /// Where its workers live: `Socket::Backend(i)` for a Paranoid Pirate service,
    /// `Socket::Majordomo` for one known only through the Majordomo socket.
    pub fn socket(&self) -> Socket {
        self.socket
    }

    /// Every known worker, in slot order (at most `max_workers` of them).
    pub fn worker_snapshots(&self, now: Instant) -> Vec<WorkerSnapshot> {
        self.live()
            .map(|w| {
                let ago = now.saturating_duration_since(w.last_heard);
                let process = parse_worker_identity(&w.id);
                WorkerSnapshot {
                    identity: show_id(&w.id),
                    framing: w.framing.as_str(),
                    credit: w.credit,
                    held: w.held.len(),
                    last_heard_ms_ago: ago.as_millis().min(u64::MAX as u128) as u64,
                    heartbeat_ms: w.interval.as_millis().min(u64::MAX as u128) as u64,
                    service_id: process.map(|(id, _)| id.to_string()),
                    pid: process.map(|(_, pid)| pid),
                }
            })
            .collect()
    }

    /// Number of known workers.
    pub fn worker_count(&self) -> usize {
        self.slots.len()
    }

    fn live(&self) -> impl Iterator<Item = &Worker<F>> {
        self.workers.iter().flatten()
    }

    fn worker_mut(&mut self, id: &[u8]) -> Option<(usize, &mut Worker<F>)> {
        let slot = *self.slots.get(id)?;
        self.workers[slot].as_mut().map(|w| (slot, w))
    }

    /// Number of requests waiting for a worker.
    pub fn waiting_count(&self) -> usize {
        self.waiting.len()
    }

    /// Number of requests held by workers.
    pub fn held_count(&self) -> usize {
        self.live().map(|w| w.held.len()).sum()
    }

    /// Whether `worker` is known.
    pub fn knows(&self, worker: &[u8]) -> bool {
        self.slots.contains_key(worker)
    }

    /// The known workers opened by process `pid` of supervised service `service_id` (their
    /// identities parse to it, see [`troupe_core::services::parse_worker_identity`]).
    pub fn workers_of_process(&self, service_id: &str, pid: u32) -> Vec<WorkerId> {
        self.live()
            .filter(|w| parse_worker_identity(&w.id) == Some((service_id, pid)))
            .map(|w| w.id.clone())
            .collect()
    }

    /// Credit the queue believes `worker` has (None if unknown).
    pub fn credit_of(&self, worker: &[u8]) -> Option<u32> {
        let slot = *self.slots.get(worker)?;
        self.workers[slot].as_ref().map(|w| w.credit)
    }

    /// A new request: handed to the best worker, else queued, else refused at once.
    pub fn offer(&mut self, request: Request<F>, now: Instant, out: &mut Vec<Outgoing<F>>) {
        self.stats.requests += 1;
        self.stats.received_bytes += body_bytes(&request.body);
        self.admit(request, now, out);
    }

    fn admit(&mut self, request: Request<F>, now: Instant, out: &mut Vec<Outgoing<F>>) {
        if let Some(worker) = self.best_worker() {
            self.dispatch(worker, request, out);
        } else if let Some(text) = self.queue_full(&request) {
            self.stats.refused += 1;
            self.push_error(
                request.origin,
                request.envelope,
                ErrorCode::Unavailable,
                &text,
                out,
            );
        } else {
            let deadline = now + self.settings.request_timeout;
            self.enqueue(Waiting::new(request, deadline), false);
        }
    }

    /// Why `request` may not wait: `queue_limit` requests already wait, or it would take the
    /// waiting bytes past `queue_max_bytes`.
    fn queue_full(&self, request: &Request<F>) -> Option<String> {
        let bytes = body_bytes(&request.envelope) + body_bytes(&request.body);
        if self.waiting.len() >= self.settings.queue_limit {
            Some(format!(
                "no worker available and {} requests are already waiting",
                self.waiting.len()
            ))
        } else if self.waiting_bytes.saturating_add(bytes) > self.settings.queue_max_bytes {
            Some(format!(
                "no worker available and the waiting requests would exceed {} bytes",
                self.settings.queue_max_bytes
            ))
        } else {
            None
        }
    }

    /// Whether `request` fits the queue's bounds with `count` more requests of `bytes` bytes.
    fn fits(&self, count: usize, bytes: u64, request: &Request<F>) -> bool {
        self.waiting.len() + count < self.settings.queue_limit
            && self.waiting_bytes + bytes + request_bytes(request) <= self.settings.queue_max_bytes
    }

    /// Puts `waiting` in the queue, at the back or the front.
    fn enqueue(&mut self, waiting: Waiting<F>, front: bool) {
        self.waiting_bytes += waiting.bytes();
        if front {
            self.waiting.push_front(waiting);
        } else {
            self.waiting.push_back(waiting);
        }
    }

    /// Takes everything out of the queue.
    fn take_waiting(&mut self) -> VecDeque<Waiting<F>> {
        self.waiting_bytes = 0;
        std::mem::take(&mut self.waiting)
    }

    /// Bytes of the requests waiting for a worker (see [`BrokerConfig::queue_max_bytes`]).
    ///
    /// [`BrokerConfig::queue_max_bytes`]: crate::config::BrokerConfig::queue_max_bytes
    pub fn waiting_bytes(&self) -> u64 {
        self.waiting_bytes
    }

    /// Refuses a request at once with `text` (503), e.g. while shutting down.
    pub fn refuse(&mut self, request: Request<F>, text: &str, out: &mut Vec<Outgoing<F>>) {
        self.stats.requests += 1;
        self.stats.received_bytes += body_bytes(&request.body);
        self.stats.refused += 1;
        self.push_error(
            request.origin,
            request.envelope,
            ErrorCode::Unavailable,
            text,
            out,
        );
    }

    /// The worker with the most credit, least recently used among equals. A scan: for the
    /// tens to hundreds of workers a service has, cheaper than keeping an ordered index up to
    /// date on every request and reply (the index cost more than the scan in the benchmark).
    fn best_worker(&self) -> Option<usize> {
        if self.with_credit == 0 {
            return None;
        }
        self.workers
            .iter()
            .enumerate()
            .filter_map(|(slot, w)| w.as_ref().filter(|w| w.credit > 0).map(|w| (slot, w)))
            .max_by_key(|(slot, w)| (w.credit, Reverse(w.last_used), Reverse(*slot)))
            .map(|(slot, _)| slot)
    }

    fn set_credit(&mut self, slot: usize, credit: u32) {
        let Some(worker) = self.workers[slot].as_mut() else {
            return;
        };
        let credit = credit.min((MAX_HELD - worker.held.len()) as u32);
        match (worker.credit > 0, credit > 0) {
            (false, true) => self.with_credit += 1,
            (true, false) => self.with_credit -= 1,
            _ => {}
        }
        worker.credit = credit;
    }

    fn dispatch(&mut self, slot: usize, mut request: Request<F>, out: &mut Vec<Outgoing<F>>) {
        let Some(worker) = self.workers[slot].as_mut() else {
            return;
        };
        self.use_clock += 1;
        worker.last_used = self.use_clock;
        worker.credit -= 1;
        if worker.credit == 0 {
            self.with_credit -= 1;
        }
        worker.sent_since_heard = worker.sent_since_heard.saturating_add(1);
        request.attempts += 1;
        let tagged = match (request.origin, worker.framing) {
            (Origin::Majordomo, Framing::Pirate | Framing::Seed) => {
                Some(protocol::tag_majordomo_client(request.envelope[0].bytes()))
            }
            _ => None,
        };
        let route = match &tagged {
            Some(tagged) => flatten_route([tagged.as_slice()]),
            None => flatten_route(request.envelope.iter().map(|f| f.bytes())),
        };
        let body_copy = self
            .settings
            .retry_on_worker_loss
            .then(|| request.body.iter().map(|f| F::copy_of(f.bytes())).collect());
        let frames = match worker.framing {
            Framing::Pirate | Framing::Seed => {
                let mut frames =
                    Vec::with_capacity(4 + request.envelope.len() + request.body.len());
                frames.push(F::copy_of(&worker.id));
                if worker.framing == Framing::Seed {
                    frames.push(F::from_vec(Vec::new()));
                }
                match tagged {
                    Some(tagged) => frames.push(F::from_vec(tagged)),
                    None => frames.append(&mut request.envelope),
                }
                frames.push(F::from_vec(Vec::new()));
                frames.append(&mut request.body);
                frames
            }
            Framing::Majordomo => {
                let mut tail = Vec::with_capacity(2 + request.body.len());
                tail.append(&mut request.envelope);
                tail.push(F::from_vec(Vec::new()));
                tail.append(&mut request.body);
                protocol::majordomo_command(&worker.id, protocol::MDP_REQUEST, tail)
            }
        };
        worker.held.push_back(Held {
            origin: request.origin,
            route,
            attempts: request.attempts,
            body: body_copy,
            received: request.received,
        });
        let id = worker.id.clone();
        self.stats.dispatched += 1;
        out.push(Outgoing {
            socket: self.socket,
            frames,
            purpose: Purpose::Dispatch {
                service: self.index,
                worker: id,
            },
        });
    }

    /// Hands waiting requests to workers with credit, oldest first.
    fn pump(&mut self, out: &mut Vec<Outgoing<F>>) {
        while !self.waiting.is_empty() {
            let Some(worker) = self.best_worker() else {
                break;
            };
            let waiting = self.waiting.pop_front().expect("not empty");
            self.waiting_bytes -= waiting.bytes();
            self.dispatch(worker, waiting.request, out);
        }
    }

    /// READY from `id`. A known worker is reset first (what it held is lost). Returns false,
    /// changing nothing, when the service already has `max_workers`.
    pub fn worker_ready(
        &mut self,
        id: &[u8],
        framing: Framing,
        concurrency: u8,
        now: Instant,
        out: &mut Vec<Outgoing<F>>,
    ) -> bool {
        if self.slots.contains_key(id) {
            self.remove_worker(id, Loss::Restarted, now, out);
        } else if self.slots.len() >= self.settings.max_workers {
            return false;
        }
        self.stats.workers_joined += 1;
        tracing::info!(
            service = %self.settings.name,
            worker = %show_id(id),
            ?framing,
            concurrency,
            workers = self.slots.len() + 1,
            "worker ready"
        );
        let worker = Worker {
            id: id.to_vec(),
            framing,
            credit: 0,
            sent_since_heard: 0,
            last_heard: now,
            interval: self.initial_interval(framing),
            last_used: 0,
            held: VecDeque::new(),
        };
        let slot = match self.free_slots.pop() {
            Some(slot) => {
                self.workers[slot] = Some(worker);
                slot
            }
            None => {
                self.workers.push(Some(worker));
                self.workers.len() - 1
            }
        };
        self.slots.insert(id.to_vec(), slot);
        self.set_credit(slot, concurrency as u32);
        self.pump(out);
        true
    }

    /// A heartbeat from `id`. With `concurrency` (Paranoid Pirate, seed) the worker's credit
    /// becomes the free concurrency it announces less the requests sent to it since it was
    /// last heard from, which it may not have counted yet. Returns false for an unknown
    /// worker, changing nothing.
    pub fn worker_heartbeat(
        &mut self,
        id: &[u8],
        concurrency: Option<u8>,
        now: Instant,
        out: &mut Vec<Outgoing<F>>,
    ) -> bool {
        let range = self.interval_range();
        let Some((slot, worker)) = self.worker_mut(id) else {
            return false;
        };
        heard_from(worker, now, range);
        if let Some(free) = concurrency {
            let credit = (free as u32).saturating_sub(worker.sent_since_heard);
            worker.sent_since_heard = 0;
            self.set_credit(slot, credit);
            self.pump(out);
        }
        true
    }

    /// A reply from `id` carrying `envelope`: the matching held request (oldest first), which
    /// the caller forwards. Any message from a known worker proves it alive and the reply
    /// gives it one credit back.
    pub fn worker_reply<E: Frame>(
        &mut self,
        id: &[u8],
        envelope: &[E],
        now: Instant,
        out: &mut Vec<Outgoing<F>>,
    ) -> Result<Held<F>, Unmatched> {
        let range = self.interval_range();
        let Some((slot, worker)) = self.worker_mut(id) else {
            self.stats.unmatched_replies += 1;
            return Err(Unmatched::UnknownWorker);
        };
        heard_from(worker, now, range);
        worker.sent_since_heard = 0;
        let position = worker
            .held
            .iter()
            .position(|held| route_matches(&held.route, envelope));
        let Some(position) = position else {
            self.stats.unmatched_replies += 1;
            return Err(Unmatched::NotHeld);
        };
        let held = worker.held.remove(position).expect("position is valid");
        let credit = worker.credit + 1;
        self.set_credit(slot, credit);
        self.stats.replies += 1;
        self.stats
            .durations
            .observe(now.saturating_duration_since(held.received));
        self.pump(out);
        Ok(held)
    }

    /// A reply from `id` to `held` (already taken by [`Service::worker_reply`]) that the
    /// broker cannot forward (over a limit): the request fails with a 502 `text` instead, so
    /// its client still gets exactly one answer.
    pub fn reply_refused(
        &mut self,
        id: &[u8],
        held: Held<F>,
        text: &str,
        out: &mut Vec<Outgoing<F>>,
    ) {
        let framing = self
            .worker_mut(id)
            .map_or(Framing::Pirate, |(_, w)| w.framing);
        self.stats.replies -= 1;
        self.stats.refused_replies += 1;
        tracing::warn!(service = %self.settings.name, worker = %show_id(id), "{text}; the request is answered with an error");
        let envelope = client_envelope::<F>(&held, framing);
        self.push_error(held.origin, envelope, ErrorCode::WorkerLost, text, out);
    }

    /// The heartbeat interval a new worker of `framing` is assumed to have until the broker
    /// has heard it twice: the configured one, and for Majordomo workers at least
    /// [`MAJORDOMO_HEARTBEAT`] (the interval RFC 7 and the Guide's workers use).
    fn initial_interval(&self, framing: Framing) -> Duration {
        match framing {
            Framing::Majordomo => self.heartbeat.max(MAJORDOMO_HEARTBEAT),
            Framing::Pirate | Framing::Seed => self.heartbeat,
        }
    }

    /// The range a learned interval is kept in: from the configured interval to
    /// [`MAX_LEARNED_HEARTBEAT`] (or the configured one, if longer).
    fn interval_range(&self) -> (Duration, Duration) {
        (self.heartbeat, self.heartbeat.max(MAX_LEARNED_HEARTBEAT))
    }

    /// When worker `w` is dead if nothing more is heard from it: `liveness` of its learned
    /// intervals after its last message; [`BUSY_GRACE`] times that while a standard Paranoid
    /// Pirate or Majordomo worker holds a request (those workers run one request at a time and
    /// may not heartbeat while they do).
    fn dead_at(&self, w: &Worker<F>) -> Instant {
        let mut window = w.interval * self.liveness;
        if !w.held.is_empty() && matches!(w.framing, Framing::Pirate | Framing::Majordomo) {
            window *= BUSY_GRACE;
        }
        w.last_heard + window
    }

    /// Removes `id` (STOP, DISCONNECT, expiry, lost connection): each request it held is given
    /// to another worker if the service retries and attempts remain, else answered with an
    /// error at once. Returns false for an unknown worker.
    pub fn remove_worker(
        &mut self,
        id: &[u8],
        why: Loss,
        now: Instant,
        out: &mut Vec<Outgoing<F>>,
    ) -> bool {
        let Some(slot) = self.slots.remove(id) else {
            return false;
        };
        let Some(worker) = self.workers[slot].take() else {
            return false;
        };
        self.free_slots.push(slot);
        if worker.credit > 0 {
            self.with_credit -= 1;
        }
        self.stats.workers_lost += 1;
        if why == Loss::Exited {
            self.stats.workers_exited += 1;
        }
        let held = worker.held.len();
        let (service, worker_id, why_text) = (&self.settings.name, show_id(id), why.describe());
        // A worker leaving empty-handed is routine; one lost with requests, silent, or whose
        // process died, is not.
        if matches!(why, Loss::Expired | Loss::Exited) || held > 0 {
            tracing::warn!(%service, worker = %worker_id, held, "worker {why_text}; removed");
        } else {
            tracing::info!(%service, worker = %worker_id, held, "worker {why_text}; removed");
        }
        let mut retry = Vec::new();
        for held in worker.held {
            let can_retry = self.settings.retry_on_worker_loss
                && held.attempts < self.settings.max_attempts
                && held.body.is_some();
            let envelope = client_envelope::<F>(&held, worker.framing);
            if can_retry {
                self.stats.retried += 1;
                retry.push(Request {
                    origin: held.origin,
                    envelope,
                    body: held.body.expect("checked"),
                    attempts: held.attempts,
                    received: held.received,
                });
            } else {
                self.stats.lost += 1;
                let text = format!(
                    "the worker handling the request {} after {} attempt(s)",
                    why.describe(),
                    held.attempts
                );
                self.push_error(held.origin, envelope, ErrorCode::WorkerLost, &text, out);
            }
        }
        // Retried requests go first, in their original order: to a worker with credit, else
        // to the front of the queue if it has room (they are bounded like new ones), else
        // they fail.
        let deadline = now + self.settings.request_timeout;
        let mut queued = Vec::new();
        let (mut count, mut bytes) = (0, 0);
        for request in retry {
            if let Some(worker) = self.best_worker() {
                self.dispatch(worker, request, out);
            } else if self.fits(count, bytes, &request) {
                count += 1;
                bytes += request_bytes(&request);
                queued.push(request);
            } else {
                self.stats.lost += 1;
                let text = format!(
                    "the worker handling the request {} after {} attempt(s), and no other worker is free",
                    why.describe(),
                    request.attempts
                );
                self.push_error(
                    request.origin,
                    request.envelope,
                    ErrorCode::WorkerLost,
                    &text,
                    out,
                );
            }
        }
        for request in queued.into_iter().rev() {
            self.enqueue(Waiting::new(request, deadline), true);
        }
        self.pump(out);
        true
    }

    /// Dispatches to `id` that the socket refused (`frames` as produced, in order). The
    /// requests were never delivered, so they wait again at the front of the queue whatever
    /// the retry setting. If `gone`, the worker is removed (what it held before is lost);
    /// otherwise it only loses its credit until it is next heard from.
    pub fn undeliverable(
        &mut self,
        id: &[u8],
        batch: Vec<Vec<F>>,
        gone: bool,
        now: Instant,
        out: &mut Vec<Outgoing<F>>,
    ) {
        let deadline = now + self.settings.request_timeout;
        let mut returned = Vec::new();
        let mut returned_from = None;
        let mut undone = 0;
        if let Some((slot, worker)) = self.worker_mut(id) {
            returned_from = Some(slot);
            for mut frames in batch.into_iter().rev() {
                let Some(held) = worker.held.pop_back() else {
                    break;
                };
                let route_len = route_frames(&held.route).count();
                let body_start = match worker.framing {
                    Framing::Pirate => 2 + route_len,
                    Framing::Seed => 3 + route_len,
                    Framing::Majordomo => 6,
                };
                if frames.len() < body_start {
                    continue;
                }
                let body = frames.split_off(body_start);
                let envelope = client_envelope::<F>(&held, worker.framing);
                returned.push(Request {
                    origin: held.origin,
                    envelope,
                    body,
                    attempts: held.attempts - 1,
                    received: held.received,
                });
                undone += 1;
            }
        }
        self.stats.dispatched -= undone;
        // `returned` is newest first: pushing each to the front restores the original order.
        // Those that do not fit the queue's bounds fail (the oldest are kept).
        let (mut count, mut bytes) = (0, 0);
        let mut kept = Vec::new();
        for request in returned.into_iter().rev() {
            if self.fits(count, bytes, &request) {
                count += 1;
                bytes += request_bytes(&request);
                kept.push(request);
            } else {
                self.stats.refused += 1;
                self.push_error(
                    request.origin,
                    request.envelope,
                    ErrorCode::Unavailable,
                    "the worker could not take the request and the queue is full",
                    out,
                );
            }
        }
        for request in kept.into_iter().rev() {
            self.enqueue(Waiting::new(request, deadline), true);
        }
        if gone {
            self.remove_worker(id, Loss::Disconnected, now, out);
        } else {
            if let Some(slot) = returned_from {
                self.set_credit(slot, 0);
            }
            self.pump(out);
        }
    }

    /// Periodic work at each heartbeat: purge every worker silent for too long, answer every
    /// request that waited too long, heartbeat every remaining worker.
    pub fn tick(&mut self, now: Instant, out: &mut Vec<Outgoing<F>>) {
        let expired: Vec<WorkerId> = self
            .live()
            .filter(|w| now >= self.dead_at(w))
            .map(|w| w.id.clone())
            .collect();
        for id in expired {
            self.remove_worker(&id, Loss::Expired, now, out);
        }
        self.expire_waiting(now, out);
        for worker in self.workers.iter().flatten() {
            let id = &worker.id;
            let frames = match worker.framing {
                Framing::Majordomo => {
                    protocol::majordomo_command(id, protocol::MDP_HEARTBEAT, Vec::new())
                }
                framing => protocol::pirate_control(id, framing, protocol::PPP_HEARTBEAT),
            };
            out.push(Outgoing {
                socket: self.socket,
                frames,
                purpose: Purpose::Heartbeat {
                    service: self.index,
                    worker: id.clone(),
                },
            });
        }
    }

    /// Answers every request whose wait has reached its deadline.
    pub fn expire_waiting(&mut self, now: Instant, out: &mut Vec<Outgoing<F>>) {
        // Deadlines are not strictly ordered (retried requests go to the front with a new
        // one), so every entry is checked.
        let mut kept = VecDeque::with_capacity(self.waiting.len());
        for waiting in self.take_waiting() {
            if waiting.deadline <= now {
                self.stats.timed_out += 1;
                let text = format!(
                    "no worker took the request within {}",
                    humantime_short(self.settings.request_timeout)
                );
                self.push_error(
                    waiting.request.origin,
                    waiting.request.envelope,
                    ErrorCode::Timeout,
                    &text,
                    out,
                );
            } else {
                kept.push_back(waiting);
            }
        }
        for waiting in kept {
            self.enqueue(waiting, false);
        }
    }

    /// The earliest waiting deadline.
    pub fn next_deadline(&self) -> Option<Instant> {
        self.waiting.iter().map(|w| w.deadline).min()
    }

    /// Whether nothing waits and nothing is held.
    pub fn is_idle(&self) -> bool {
        self.waiting.is_empty() && self.live().all(|w| w.held.is_empty())
    }

    /// Answers every waiting and held request with `text` (503); used when the drain window
    /// ends, and when the service is removed. Workers stay known so their late replies are
    /// recognised and dropped.
    pub fn fail_everything(&mut self, text: &str, out: &mut Vec<Outgoing<F>>) {
        for waiting in self.take_waiting() {
            self.stats.refused += 1;
            let request = waiting.request;
            self.push_error(
                request.origin,
                request.envelope,
                ErrorCode::Unavailable,
                text,
                out,
            );
        }
        self.fail_held(text, out);
    }

    /// Answers every held request with `text` (503). Workers stay known but get no credit
    /// back: for a service that is going away (or a broker that is).
    pub fn fail_held(&mut self, text: &str, out: &mut Vec<Outgoing<F>>) {
        let mut failed = Vec::new();
        for worker in self.workers.iter_mut().flatten() {
            for held in std::mem::take(&mut worker.held) {
                failed.push((held.origin, client_envelope::<F>(&held, worker.framing)));
            }
        }
        for (origin, envelope) in failed {
            self.stats.refused += 1;
            self.push_error(origin, envelope, ErrorCode::Unavailable, text, out);
        }
    }

    /// Takes over the waiting requests of `other` (a service of the same name that this one
    /// replaces), oldest first, each keeping its deadline. Those past this service's
    /// `queue_limit` are refused (503); the others are handed to workers with credit, if any.
    pub fn adopt_waiting(&mut self, other: &mut Service<F>, out: &mut Vec<Outgoing<F>>) {
        for waiting in other.take_waiting() {
            self.stats.requests += 1;
            if let Some(text) = self.queue_full(&waiting.request) {
                self.stats.refused += 1;
                let request = waiting.request;
                self.push_error(
                    request.origin,
                    request.envelope,
                    ErrorCode::Unavailable,
                    &text,
                    out,
                );
            } else {
                self.enqueue(waiting, false);
            }
        }
        self.pump(out);
    }

    /// Majordomo DISCONNECT to every Majordomo worker (at shutdown).
    pub fn disconnect_workers(&self, out: &mut Vec<Outgoing<F>>) {
        for worker in self.live() {
            if worker.framing == Framing::Majordomo {
                out.push(Outgoing {
                    socket: self.socket,
                    frames: protocol::majordomo_command(
                        &worker.id,
                        protocol::MDP_DISCONNECT,
                        Vec::new(),
                    ),
                    purpose: Purpose::Control,
                });
            }
        }
    }

    /// Answers the client at `origin` with an error reply, unless the service keeps silent
    /// towards its Paranoid Pirate clients (`error_replies = false`): then the request is
    /// only counted ([`ServiceStats::silenced`]) and the client sees a timeout.
    fn push_error(
        &mut self,
        origin: Origin,
        envelope: Vec<F>,
        code: ErrorCode,
        text: &str,
        out: &mut Vec<Outgoing<F>>,
    ) {
        if !self.settings.error_replies && matches!(origin, Origin::Frontend(_)) {
            self.stats.silenced += 1;
            tracing::debug!(service = %self.settings.name, code = code.number(), text, "request dropped without an error reply (error_replies = false)");
            return;
        }
        out.push(self.error_reply(origin, envelope, code, text));
    }

    /// An error reply to the client at `origin` with routing frames `envelope`.
    pub fn error_reply(
        &self,
        origin: Origin,
        envelope: Vec<F>,
        code: ErrorCode,
        text: &str,
    ) -> Outgoing<F> {
        let body = F::from_vec(protocol::error_body(code, &self.settings.name, text));
        match origin {
            Origin::Frontend(i) => {
                let mut frames = envelope;
                frames.push(F::from_vec(Vec::new()));
                frames.push(body);
                Outgoing {
                    socket: Socket::Frontend(i),
                    frames,
                    purpose: Purpose::Reply,
                }
            }
            Origin::Majordomo => {
                let client = envelope
                    .into_iter()
                    .next()
                    .unwrap_or_else(|| F::from_vec(Vec::new()));
                Outgoing {
                    socket: Socket::Majordomo,
                    frames: protocol::majordomo_client_reply(
                        client,
                        &self.settings.name,
                        vec![body],
                    ),
                    purpose: Purpose::Reply,
                }
            }
        }
    }
}

/// What a request counts against `queue_max_bytes`: its envelope and body bytes.
fn request_bytes<F: Frame>(request: &Request<F>) -> u64 {
    body_bytes(&request.envelope) + body_bytes(&request.body)
}

/// The bytes of a message's body frames.
pub fn body_bytes<F: Frame>(frames: &[F]) -> u64 {
    frames.iter().map(|f| f.bytes().len() as u64).sum()
}

/// The client's routing frames for a held request.
fn client_envelope<F: Frame>(held: &Held<F>, framing: Framing) -> Vec<F> {
    let mut frames = route_frames(&held.route);
    match (held.origin, framing) {
        (Origin::Majordomo, Framing::Pirate | Framing::Seed) => {
            let tagged = frames.next().unwrap_or_default();
            let client = tagged
                .get(protocol::MAJORDOMO_ROUTE_TAG.len()..)
                .unwrap_or_default();
            vec![F::copy_of(client)]
        }
        _ => frames.map(F::copy_of).collect(),
    }
}

/// Routing frames in one buffer (one allocation per held request): each frame as its length
/// (u32, little-endian) followed by its bytes.
fn flatten_route<'a>(frames: impl IntoIterator<Item = &'a [u8]> + Clone) -> Vec<u8> {
    let size = frames.clone().into_iter().map(|f| 4 + f.len()).sum();
    let mut route = Vec::with_capacity(size);
    for frame in frames {
        route.extend_from_slice(&(frame.len() as u32).to_le_bytes());
        route.extend_from_slice(frame);
    }
    route
}

/// The frames of a flattened route.
fn route_frames(route: &[u8]) -> impl Iterator<Item = &[u8]> {
    let mut rest = route;
    std::iter::from_fn(move || {
        let (len, tail) = rest.split_first_chunk::<4>()?;
        let len = u32::from_le_bytes(*len) as usize;
        let (frame, tail) = tail.split_at(len.min(tail.len()));
        rest = tail;
        Some(frame)
    })
}

/// Whether `frames` are exactly the flattened `route`.
fn route_matches<E: Frame>(route: &[u8], frames: &[E]) -> bool {
    let mut stored = route_frames(route);
    frames.iter().all(|f| stored.next() == Some(f.bytes())) && stored.next().is_none()
}

/// A worker identity for logs: text if printable, else hex.
pub fn show_id(id: &[u8]) -> String {
    if !id.is_empty() && id.iter().all(|b| b.is_ascii_graphic()) {
        String::from_utf8_lossy(id).into_owned()
    } else {
        id.iter().map(|b| format!("{b:02x}")).collect()
    }
}

fn humantime_short(d: Duration) -> String {
    troupe_core::settings::Duration(d).to_string()
}

#[cfg(test)]
mod tests;
