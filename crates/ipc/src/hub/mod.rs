//! The hub's logic, sans IO: [`Hub`] is fed connections, decoded frames, write completions,
//! service lifecycle reports, channel calls and the time, and answers with frames queued per
//! connection ([`Hub::take_writes`]) and [`Effect`]s for the actor to carry out.
//!
//! Guarantees it keeps (tested in this module and `channels`):
//! - a registered connection's pid is its peer's pid; a name belongs to one live connection;
//! - frames from one connection reach one receiving connection in the order sent;
//! - a message that cannot be delivered (mailbox full, expired, receiver gone with the
//!   request) is answered to its sender with an error, never dropped silently; each message
//!   of a `Batch` is answered on its own;
//! - everything queued or held is bounded: outboxes by pausing senders (and closing a
//!   receiver that stops reading), mailboxes by their caps, requests by a per-connection cap.

mod channels;
mod mailbox;
mod outbox;
mod stats;
mod timers;

use std::collections::{BTreeMap, HashMap, HashSet};
use std::fmt;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use bytes::Bytes;
use rustc_hash::FxHashMap;
use troupe_core::services::ChannelError;

use crate::config::IpcConfig;
use crate::events::ServiceEvent;
use crate::wire::frame::{Damage, Found, HEADER_LEN};
use crate::wire::{batch, envelope, Envelope, ErrorCode, Kind};

use mailbox::{MailboxLimits, Mailboxes};
use outbox::{ChunkPool, Outbox};
pub use stats::{ConnectionInfo, HubStats, HubView, MailboxInfo};
use timers::{Timer, Timers};

/// Identifies one accepted connection for the life of the hub.
pub type ConnId = u64;
/// Identifies one `push_config` or `invoke` call from the node.
pub type CallId = u64;

/// Where a message goes: a pid or a registered name.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Address {
    /// The connection a process registered first.
    Pid(u32),
    /// The connection holding this name.
    Name(String),
}

impl fmt::Display for Address {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Address::Pid(pid) => write!(f, "pid {pid}"),
            Address::Name(name) => write!(f, "name \"{name}\""),
        }
    }
}

/// Who is on the other end of a connection, from the socket's peer credentials.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Peer {
    /// The connecting process.
    pub pid: u32,
    /// Its user.
    pub uid: u32,
}

/// The limits the hub enforces, from the `[ipc]` table.
#[derive(Debug, Clone)]
pub struct Limits {
    /// Longest frame (the reader's decoder enforces it; the hub names it in errors).
    pub max_frame_bytes: usize,
    /// Most connections.
    pub max_connections: usize,
    /// Most connections from one user (peer uid).
    pub max_connections_per_uid: usize,
    /// How long a connection may stay unregistered before it is closed.
    pub register_timeout: Duration,
    /// Most bytes of partial frames held by all readers together.
    pub max_partial_bytes: usize,
    /// How long held messages live, and the caps of mailboxes.
    pub mailbox_ttl: Duration,
    /// Most messages held per absent receiver.
    pub mailbox_max_messages: usize,
    /// Most bytes held per absent receiver.
    pub mailbox_max_bytes: usize,
    /// Most bytes held in all mailboxes.
    pub mailbox_total_bytes: usize,
    /// Timeout of requests that name none.
    pub request_timeout: Duration,
    /// Most requests in flight per connection and channel calls per service.
    pub max_pending_requests: usize,
    /// Queued bytes towards a connection above which senders to it are paused.
    pub outbox_high_water: usize,
    /// How long a full connection may go without reading before it is closed.
    pub stall_timeout: Duration,
    /// How long an attach waits for the supervisor's report of the process.
    pub attach_timeout: Duration,
    /// How long a closing connection gets to take what is queued for it.
    pub close_grace: Duration,
    /// Damage (skipped plus vainly checksummed bytes) after which the reader of a
    /// connection gives up on it (its decoder enforces it).
    pub max_damage_bytes: u64,
}

impl Limits {
    /// The limits set by `config`.
    pub fn from_config(config: &IpcConfig) -> Limits {
        Limits {
            max_frame_bytes: config.max_frame_bytes.as_usize(),
            max_connections: config.max_connections,
            max_connections_per_uid: config.max_connections_per_uid,
            register_timeout: config.register_timeout.get(),
            max_partial_bytes: config.max_partial_bytes.as_usize(),
            mailbox_ttl: config.mailbox_ttl.get(),
            mailbox_max_messages: config.mailbox_max_messages,
            mailbox_max_bytes: config.mailbox_max_bytes.as_usize(),
            mailbox_total_bytes: config.mailbox_total_bytes.as_usize(),
            request_timeout: config.request_timeout.get(),
            max_pending_requests: config.max_pending_requests,
            outbox_high_water: config.outbox_high_water.as_usize(),
            stall_timeout: config.stall_timeout.get(),
            attach_timeout: config.attach_timeout.get(),
            close_grace: Duration::from_secs(1),
            max_damage_bytes: config.max_damage_bytes.0,
        }
    }
}

/// Whether the reader of a connection may go on after a batch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Flow {
    /// Read on.
    Go,
    /// Wait for [`Effect::Resume`]: a receiver of this batch has too much queued.
    Paused,
}

/// What the actor must do.
#[derive(Debug, Clone, PartialEq)]
pub enum Effect {
    /// Stop reading from the connection; go on writing what it is handed.
    StopReading {
        /// The connection.
        conn: ConnId,
    },
    /// Shut the connection down; the hub has forgotten it.
    Finish {
        /// The connection.
        conn: ConnId,
    },
    /// The paused reader of this connection may read again.
    Resume {
        /// The connection.
        conn: ConnId,
    },
    /// A `push_config` or `invoke` call has its answer.
    CallDone {
        /// The call.
        call: CallId,
        /// The service's reply, or why there is none.
        result: Result<Vec<u8>, ChannelError>,
    },
    /// The service acknowledged a pushed config: persist it, then answer the call.
    PersistConfig {
        /// The call.
        call: CallId,
        /// The service.
        service: String,
        /// Where its `config.json` lives.
        path: PathBuf,
        /// The config as pushed.
        config: Bytes,
    },
    /// A service asked for its config: read it and hand it to [`Hub::config_read`].
    ReadConfig {
        /// The asking connection.
        conn: ConnId,
        /// The request's correlation id.
        corr: u64,
        /// Where the config lives.
        path: PathBuf,
    },
    /// A metric or event for the node's event stream.
    Publish(ServiceEvent),
}

#[derive(Debug)]
struct Conn {
    peer: Peer,
    registered: bool,
    name: Option<String>,
    /// The service whose channel this connection is.
    service: Option<String>,
    outbox: Outbox,
    /// Listed in `Hub::writable`.
    listed: bool,
    /// Requests this connection sent that are in flight (their correlation ids).
    requests: HashSet<u64>,
    /// Requests delivered to this connection and not yet answered.
    serving: HashSet<(u32, u64)>,
    /// Readers paused until this connection's outbox drains.
    paused_senders: Vec<ConnId>,
    /// No more reading; the connection ends once its outbox is written.
    closing: bool,
    /// The peer hung up while the writer was busy; clean up once it reports.
    hung_up: bool,
    last_progress: Instant,
    stall_timer_set: bool,
    damage: Damage,
    last_damage_log: Option<Instant>,
    /// Bytes of a partial frame its reader holds, as last reported.
    partial: usize,
}

/// The last destination the fast path looked up.
#[derive(Default)]
struct Route<'a> {
    pid: u32,
    name: &'a [u8],
    to: Option<ConnId>,
}

/// Frames lying back to back in a reader's batch, all for one receiver.
struct Run {
    to: ConnId,
    start: usize,
    end: usize,
    frames: usize,
}

#[derive(Debug)]
struct Pending {
    requester: ConnId,
    receiver: Option<ConnId>,
    deadline: Instant,
}

/// The hub; see the module doc.
#[derive(Debug)]
pub struct Hub {
    limits: Limits,
    conns: FxHashMap<ConnId, Conn>,
    pids: FxHashMap<u32, Vec<ConnId>>,
    names: BTreeMap<String, ConnId>,
    mailboxes: Mailboxes,
    requests: HashMap<(u32, u64), Pending>,
    channels: channels::Channels,
    timers: Timers,
    effects: Vec<Effect>,
    writable: Vec<ConnId>,
    touched: Vec<ConnId>,
    stats: HubStats,
    stopping: bool,
    /// Outbox buffers to reuse.
    chunks: ChunkPool,
    /// When a connection closed for damage was last logged.
    last_damaged_log: Option<Instant>,
    /// When a connection closed for not registering was last logged.
    last_register_timeout_log: Option<Instant>,
    /// When a connection closed for the partial-frame bound was last logged.
    last_partial_log: Option<Instant>,
    /// Bytes of partial frames held by all readers.
    partial_total: usize,
    /// When a refused connection was last logged.
    last_refusal_log: Option<Instant>,
}

impl Hub {
    /// An empty hub.
    pub fn new(limits: Limits) -> Hub {
        let mailbox = MailboxLimits {
            ttl: limits.mailbox_ttl,
            max_messages: limits.mailbox_max_messages,
            max_bytes: limits.mailbox_max_bytes,
            total_bytes: limits.mailbox_total_bytes,
        };
        Hub {
            limits,
            conns: FxHashMap::default(),
            pids: FxHashMap::default(),
            names: BTreeMap::new(),
            mailboxes: Mailboxes::new(mailbox),
            requests: HashMap::new(),
            channels: channels::Channels::default(),
            timers: Timers::default(),
            effects: Vec::new(),
            writable: Vec::new(),
            touched: Vec::new(),
            stats: HubStats::default(),
            stopping: false,
            chunks: ChunkPool::default(),
            last_damaged_log: None,
            last_register_timeout_log: None,
            last_partial_log: None,
            partial_total: 0,
            last_refusal_log: None,
        }
    }

    /// A new connection from `peer`. Over `max_connections` (or while stopping) it is told
    /// why and closed.
    pub fn connect(&mut self, conn: ConnId, peer: Peer, now: Instant) {
        self.conns.insert(conn, Conn::new(peer, now));
        self.stats.connections_accepted += 1;
        let refusal = if self.stopping {
            Some((ErrorCode::ShuttingDown, "the hub is stopping".to_string()))
        } else if self.conns.len() > self.limits.max_connections {
            Some((
                ErrorCode::TooManyConnections,
                format!(
                    "the hub already has {} connections (max_connections)",
                    self.limits.max_connections
                ),
            ))
        } else if self
            .conns
            .values()
            .filter(|c| c.peer.uid == peer.uid)
            .count()
            > self.limits.max_connections_per_uid
        {
            self.stats.refused_per_uid += 1;
            Some((
                ErrorCode::TooManyConnections,
                format!(
                    "user {} already has {} connections (max_connections_per_uid)",
                    peer.uid, self.limits.max_connections_per_uid
                ),
            ))
        } else {
            self.timers
                .at(now + self.limits.register_timeout, Timer::Register(conn));
            None
        };
        if let Some((code, why)) = refusal {
            // Rate-limited: a process can knock again and again.
            let quiet = self
                .last_refusal_log
                .is_none_or(|at| now.saturating_duration_since(at) >= Duration::from_secs(1));
            if quiet {
                self.last_refusal_log = Some(now);
                tracing::warn!(pid = peer.pid, uid = peer.uid, "connection refused: {why}");
            }
            self.send_error(conn, 0, code, None, &why);
            self.close(conn, now);
        }
    }

    /// A batch the reader of `conn` decoded: `found` lists its frames in order, each with
    /// the offset in `frames` where it starts; `damage` is what the reader skipped since its
    /// last batch.
    pub fn receive(
        &mut self,
        conn: ConnId,
        frames: &[u8],
        found: &[(usize, Found)],
        damage: Damage,
        now: Instant,
    ) -> Flow {
        self.touched.clear();
        if damage != Damage::default() {
            self.note_damage(conn, damage, now);
        }
        let mut fast = self.may_take_fast_path(conn);
        let mut route = Route::default();
        let mut run: Option<Run> = None;
        for &(at, item) in found {
            if let (true, Found::Frame { length, .. }) = (fast, item) {
                let frame = &frames[at..at + length];
                if let Some((to, messages)) = self.connected_receiver(frame, &mut route) {
                    self.stats.frames_in += 1;
                    self.stats.bytes_in += length as u64;
                    self.stats.delivered += messages as u64;
                    match &mut run {
                        Some(run) if run.to == to && run.end == at => {
                            run.end += length;
                            run.frames += 1;
                        }
                        _ => {
                            if let Some(done) = run.take() {
                                self.deliver_run(frames, done);
                            }
                            run = Some(Run {
                                to,
                                start: at,
                                end: at + length,
                                frames: 1,
                            });
                        }
                    }
                    continue;
                }
            }
            // Anything else may change who is connected: deliver the run so far first, and
            // look routes up afresh afterwards.
            if let Some(done) = run.take() {
                self.deliver_run(frames, done);
            }
            route = Route::default();
            match self.conns.get(&conn) {
                Some(c) if !c.closing => {}
                _ => break,
            }
            match item {
                Found::Frame { length, .. } => self.frame(conn, &frames[at..at + length], now),
                Found::Foreign { pid, length } => {
                    let corr = corr_of(&frames[at..at + length]);
                    self.foreign(conn, pid, corr, now)
                }
                Found::Oversize { length } => {
                    let corr = corr_of(frames.get(at..).unwrap_or_default());
                    self.oversize(conn, length, corr, now)
                }
                Found::Damaged => self.damaged(conn, now),
            }
            fast = self.may_take_fast_path(conn);
        }
        if let Some(done) = run.take() {
            self.deliver_run(frames, done);
        }
        self.backpressure(conn, now)
    }

    fn deliver_run(&mut self, frames: &[u8], run: Run) {
        self.push_run(run.to, &frames[run.start..run.end], run.frames);
    }

    /// Whether frames from `conn` may take the fast path: it is registered and open.
    fn may_take_fast_path(&self, conn: ConnId) -> bool {
        self.conns
            .get(&conn)
            .is_some_and(|c| c.registered && !c.closing)
    }

    /// The fast path: when `frame` is a well-formed `Send` or `Batch` to a connected
    /// receiver, that receiver and how many messages the frame carries. Anything else (other
    /// kinds, mailboxes, errors) is left to [`Hub::frame`]. `route` remembers the last
    /// destination looked up, as a run of messages usually goes to one receiver.
    #[inline]
    fn connected_receiver<'a>(
        &self,
        frame: &'a [u8],
        route: &mut Route<'a>,
    ) -> Option<(ConnId, u32)> {
        let (pid, name, messages) = envelope::send_destination(&frame[HEADER_LEN..])?;
        if let Some(to) = route
            .to
            .filter(|_| route.pid == pid && envelope::same_name(route.name, name))
        {
            return Some((to, messages));
        }
        let to = if name.is_empty() {
            self.pids.get(&pid)?.first().copied()?
        } else {
            *self.names.get(std::str::from_utf8(name).ok()?)?
        };
        *route = Route {
            pid,
            name,
            to: Some(to),
        };
        Some((to, messages))
    }

    /// The writer of `conn` wrote the first `bytes` bytes of its batch.
    pub fn written(&mut self, conn: ConnId, bytes: usize, now: Instant) {
        let high_water = self.limits.outbox_high_water;
        let Some(c) = self.conns.get_mut(&conn) else {
            return;
        };
        let frames = c.outbox.written(bytes, &mut self.chunks);
        c.last_progress = now;
        self.stats.frames_out += frames as u64;
        if c.hung_up {
            self.cleanup(conn, now);
            return;
        }
        if c.outbox.bytes() <= high_water / 2 {
            let paused = std::mem::take(&mut c.paused_senders);
            self.resume(paused);
        }
        if self.conns[&conn].outbox.has_unhanded() {
            self.list_writable(conn);
        } else if self.conns[&conn].closing {
            self.cleanup(conn, now);
        }
    }

    /// The peer of `conn` hung up, or its socket failed.
    pub fn hangup(&mut self, conn: ConnId, now: Instant) {
        let Some(c) = self.conns.get_mut(&conn) else {
            return;
        };
        if c.outbox.busy() {
            // Wait for the writer's report so that what it wrote is known exactly; meanwhile
            // nothing new is routed to it (it would go to the mailbox instead).
            c.hung_up = true;
            c.closing = true;
            self.partial_total -= std::mem::take(&mut c.partial);
            let pid = c.peer.pid;
            let name = c.name.clone();
            self.unlist(conn, pid, name.as_deref());
        } else {
            self.cleanup(conn, now);
        }
    }

    /// Fires every deadline due at `now`.
    pub fn tick(&mut self, now: Instant) {
        for (address, held) in self.mailboxes.expire(now) {
            if held.kind == Kind::Request {
                if self
                    .requests
                    .remove(&(held.sender_pid, held.corr))
                    .is_none()
                {
                    continue; // it has timed out already, and its sender was told
                }
                self.forget_request_of(held.sender, held.corr);
            }
            self.stats.expired += held.messages as u64;
            let why = format!(
                "not delivered: {address} did not connect within mailbox_ttl ({:?})",
                self.limits.mailbox_ttl
            );
            let failed = (held.corr, held.messages);
            self.fail_messages(held.sender, failed, ErrorCode::Expired, &address, &why);
        }
        while let Some((when, timer)) = self.timers.pop_due(now) {
            match timer {
                Timer::Request(pid, corr) => self.request_timed_out(pid, corr, when),
                Timer::Call(corr) => self.call_timed_out(corr, when),
                Timer::Attach(conn) => self.attach_timed_out(conn, when),
                Timer::Stall(conn) => self.check_stall(conn, now),
                Timer::CloseGrace(conn) => self.cleanup(conn, now),
                Timer::Register(conn) => self.register_timed_out(conn, now),
            }
        }
    }

    /// When [`tick`](Self::tick) next has something to do.
    pub fn next_deadline(&self) -> Option<Instant> {
        match (self.mailboxes.next_expiry(), self.timers.next()) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    /// Batches for idle writers: `(connection, whole frames in order)`.
    pub fn take_writes(&mut self) -> Vec<(ConnId, Bytes)> {
        let mut writes = Vec::new();
        for conn in std::mem::take(&mut self.writable) {
            if let Some(c) = self.conns.get_mut(&conn) {
                c.listed = false;
                if let Some(batch) = c.outbox.take_batch() {
                    writes.push((conn, batch));
                }
            }
        }
        writes
    }

    /// Effects produced since the last call, in order.
    pub fn take_effects(&mut self) -> Vec<Effect> {
        std::mem::take(&mut self.effects)
    }

    /// The hub's counters now.
    pub fn stats(&self) -> HubStats {
        let mut stats = self.stats.clone();
        stats.connections = self.conns.len();
        stats.registered = self.conns.values().filter(|c| c.registered).count();
        stats.mailbox_messages = self.mailboxes.len();
        stats.mailbox_bytes = self.mailboxes.total_bytes();
        stats.requests_in_flight = self.requests.len();
        stats.channels_attached = self.channels.attached();
        stats.calls_in_flight = self.channels.calls_in_flight();
        stats.partial_bytes = self.partial_total;
        stats
    }

    /// Connections and mailboxes as an operator sees them, each list cut at `limit`.
    pub fn view(&self, limit: usize) -> HubView {
        let mut connections: Vec<ConnectionInfo> = self
            .conns
            .values()
            .map(|c| ConnectionInfo {
                pid: c.peer.pid,
                uid: c.peer.uid,
                registered: c.registered,
                name: c.name.clone(),
                service: c.service.clone(),
                outbox_bytes: c.outbox.bytes(),
                requests_in_flight: c.requests.len(),
            })
            .collect();
        connections.sort_by(|a, b| (a.pid, &a.name).cmp(&(b.pid, &b.name)));
        connections.truncate(limit);
        let mut mailboxes: Vec<MailboxInfo> = self
            .mailboxes
            .each()
            .map(|(receiver, messages, bytes)| MailboxInfo {
                receiver: receiver.to_string(),
                messages,
                bytes,
            })
            .collect();
        let mailbox_count = mailboxes.len();
        mailboxes.sort_by(|a, b| {
            b.bytes
                .cmp(&a.bytes)
                .then_with(|| a.receiver.cmp(&b.receiver))
        });
        mailboxes.truncate(limit);
        HubView {
            connections,
            mailboxes,
            mailbox_count,
            stats: self.stats(),
        }
    }

    /// Stops the hub: every call, request and held message is failed with an error to
    /// whoever waits for it, and every connection is closed once told.
    pub fn shutdown(&mut self, now: Instant) {
        self.stopping = true;
        self.fail_all_calls(ChannelError::Failed("the ipc hub is stopping".into()));
        let requests: Vec<((u32, u64), Pending)> = self.requests.drain().collect();
        for ((_, corr), pending) in requests {
            self.send_error(
                pending.requester,
                corr,
                ErrorCode::ShuttingDown,
                None,
                "the hub stopped before a reply arrived",
            );
        }
        for (address, held) in self.mailboxes.drain() {
            if held.kind == Kind::Request {
                continue; // failed with the requests above, or timed out before
            }
            let why = format!("not delivered: the hub stopped while {address} was not connected");
            let failed = (held.corr, held.messages);
            self.fail_messages(held.sender, failed, ErrorCode::ShuttingDown, &address, &why);
        }
        let conns: Vec<ConnId> = self.conns.keys().copied().collect();
        for conn in conns {
            self.close(conn, now);
        }
    }

    /// Whether every connection has finished (after [`shutdown`](Self::shutdown)).
    pub fn is_empty(&self) -> bool {
        self.conns.is_empty()
    }

    /// The config a service asked for was read (`Ok(empty)` when there is none yet).
    pub fn config_read(&mut self, conn: ConnId, corr: u64, result: Result<Vec<u8>, String>) {
        match result {
            Ok(config) => {
                let frame = Envelope {
                    corr,
                    body: &config,
                    ..Envelope::new(Kind::Reply)
                };
                self.push_env(conn, &frame);
            }
            Err(why) => self.send_error(conn, corr, ErrorCode::Internal, None, &why),
        }
    }

    // ---- frames ----

    fn frame(&mut self, conn: ConnId, frame: &[u8], now: Instant) {
        self.stats.frames_in += 1;
        self.stats.bytes_in += frame.len() as u64;
        let parsed = Envelope::parse(&frame[HEADER_LEN..]);
        let env = match parsed {
            Ok(env) => env,
            Err(err) => {
                self.stats.malformed += 1;
                let why = format!("malformed frame: {err}");
                self.send_error(conn, corr_of(frame), ErrorCode::Malformed, None, &why);
                return;
            }
        };
        let registered = self.conns[&conn].registered;
        if !registered && !matches!(env.kind, Kind::Register | Kind::Stats) {
            self.send_error(
                conn,
                env.corr,
                ErrorCode::NotRegistered,
                None,
                "register the connection first",
            );
            return;
        }
        match env.kind {
            Kind::Register => self.register(conn, &env, now),
            Kind::Send | Kind::Request | Kind::Batch => self.message(conn, &env, frame, now),
            Kind::Reply | Kind::Error => self.answer(conn, &env, frame),
            Kind::Broadcast => self.broadcast(conn, &env, frame),
            Kind::Stats => {
                let body = serde_json::to_vec(&self.stats()).unwrap_or_default();
                let reply = Envelope {
                    corr: env.corr,
                    body: &body,
                    ..Envelope::new(Kind::Reply)
                };
                self.push_env(conn, &reply);
            }
            Kind::Attach => self.attach(conn, &env, now),
            Kind::RequestConfig | Kind::Metric | Kind::Event => self.channel_message(conn, &env),
            Kind::PushConfig | Kind::Invoke | Kind::Ok => {
                let why = format!("kind {:?} is only sent by the hub", env.kind);
                self.send_error(conn, env.corr, ErrorCode::Malformed, None, &why);
            }
        }
    }

    fn foreign(&mut self, conn: ConnId, claimed: u32, corr: u64, now: Instant) {
        let own = self.conns[&conn].peer.pid;
        self.stats.foreign_frames += 1;
        let why =
            format!("frame claims pid {claimed} but this connection belongs to pid {own}; closing");
        tracing::warn!(
            pid = own,
            claimed,
            "refused a frame speaking as another process"
        );
        self.send_error(conn, corr, ErrorCode::PidMismatch, None, &why);
        self.close(conn, now);
    }

    /// The reader of `conn` now holds `bytes` of a partial frame (read, waiting for the
    /// rest). Past `max_partial_bytes` over all connections, a connection whose partial frame
    /// grew is told and closed (it is the one whose new data went over). Returns whether
    /// the reader may read on.
    pub fn partial(&mut self, conn: ConnId, bytes: usize, now: Instant) -> bool {
        let Some(c) = self.conns.get_mut(&conn) else {
            return false;
        };
        if c.closing {
            return false;
        }
        let grew = bytes > c.partial;
        self.partial_total = self.partial_total - c.partial + bytes;
        c.partial = bytes;
        if !grew || self.partial_total <= self.limits.max_partial_bytes {
            return true;
        }
        self.stats.partial_refused += 1;
        let (pid, max) = (c.peer.pid, self.limits.max_partial_bytes);
        let quiet = self
            .last_partial_log
            .is_none_or(|at| now.saturating_duration_since(at) >= Duration::from_secs(1));
        if quiet {
            self.last_partial_log = Some(now);
            tracing::warn!(
                pid,
                partial = bytes,
                total = self.partial_total,
                closed_so_far = self.stats.partial_refused,
                "partial frames hold more than max_partial_bytes; closing the connection that went over"
            );
        }
        let why = format!(
            "the hub holds more than max_partial_bytes ({max}) of partial frames; closing this connection, whose frame of {bytes} bytes so far went over"
        );
        self.send_error(conn, 0, ErrorCode::Internal, None, &why);
        self.close(conn, now);
        false
    }

    /// `conn` did not register within `register_timeout`: it is closed, so that idle
    /// connections cannot hold slots.
    fn register_timed_out(&mut self, conn: ConnId, now: Instant) {
        match self.conns.get(&conn) {
            Some(c) if !c.registered && !c.closing => {}
            _ => return,
        }
        self.stats.register_timeouts += 1;
        let pid = self.conns[&conn].peer.pid;
        let timeout = self.limits.register_timeout;
        let quiet = self
            .last_register_timeout_log
            .is_none_or(|at| now.saturating_duration_since(at) >= Duration::from_secs(1));
        if quiet {
            self.last_register_timeout_log = Some(now);
            tracing::warn!(
                pid,
                closed_so_far = self.stats.register_timeouts,
                "closing a connection that did not register within register_timeout"
            );
        }
        let why = format!("not registered within register_timeout ({timeout:?}); closing");
        self.send_error(conn, 0, ErrorCode::NotRegistered, None, &why);
        self.close(conn, now);
    }

    /// The reader of `conn` gave up on it: it sent more damage than `max_damage_bytes`.
    fn damaged(&mut self, conn: ConnId, now: Instant) {
        self.stats.damaged_closed += 1;
        let Some(c) = self.conns.get(&conn) else {
            return;
        };
        let (pid, damage) = (c.peer.pid, c.damage);
        let max = self.limits.max_damage_bytes;
        // Rate-limited across connections: one process can open many.
        let quiet = self
            .last_damaged_log
            .is_none_or(|at| now.saturating_duration_since(at) >= Duration::from_secs(1));
        if quiet {
            self.last_damaged_log = Some(now);
            tracing::warn!(
                pid,
                skipped_bytes = damage.skipped_bytes,
                wasted_bytes = damage.wasted_bytes,
                resyncs = damage.resyncs,
                closed_so_far = self.stats.damaged_closed,
                "closing a connection that sent more damage than max_damage_bytes"
            );
        }
        let why = format!(
            "more than max_damage_bytes ({max}) of damaged data (bytes skipped plus bytes \
             of frames with a wrong checksum); closing"
        );
        self.send_error(conn, 0, ErrorCode::TooMuchDamage, None, &why);
        self.close(conn, now);
    }

    fn oversize(&mut self, conn: ConnId, length: u32, corr: u64, now: Instant) {
        self.stats.oversize_frames += 1;
        let pid = self.conns[&conn].peer.pid;
        let max = self.limits.max_frame_bytes;
        tracing::warn!(
            pid,
            length,
            max,
            "frame over max_frame_bytes; closing the connection"
        );
        let why = format!("frame of {length} bytes is over max_frame_bytes ({max}); closing");
        self.send_error(conn, corr, ErrorCode::FrameTooLarge, None, &why);
        self.close(conn, now);
    }

    fn register(&mut self, conn: ConnId, env: &Envelope<'_>, now: Instant) {
        let c = &self.conns[&conn];
        let peer = c.peer;
        if c.registered {
            let why = "this connection is already registered";
            self.send_error(conn, env.corr, ErrorCode::AlreadyRegistered, None, why);
            return;
        }
        if env.pid != peer.pid {
            self.stats.spoofing_refused += 1;
            tracing::warn!(
                pid = peer.pid,
                claimed = env.pid,
                "refused a registration under another process's pid"
            );
            let why = format!(
                "pid {} is not yours: the connection belongs to pid {} (SO_PEERCRED); closing",
                env.pid, peer.pid
            );
            self.send_error(conn, env.corr, ErrorCode::PidMismatch, None, &why);
            self.close(conn, now);
            return;
        }
        let name = if env.name.is_empty() {
            None
        } else {
            if let Err(why) = envelope::check_name(env.name) {
                self.send_error(conn, env.corr, ErrorCode::Malformed, None, &why);
                return;
            }
            if self.names.contains_key(env.name) {
                let why = format!("the name \"{}\" is held by another connection", env.name);
                self.send_error(conn, env.corr, ErrorCode::NameTaken, None, &why);
                return;
            }
            Some(env.name.to_string())
        };
        let owners = self.pids.entry(peer.pid).or_default();
        owners.push(conn);
        let primary = owners.len() == 1;
        let c = self.conns.get_mut(&conn).expect("conn exists");
        c.registered = true;
        c.name = name.clone();
        let mut addresses = Vec::new();
        if primary {
            addresses.push(Address::Pid(peer.pid));
        }
        if let Some(name) = name {
            self.names.insert(name.clone(), conn);
            addresses.push(Address::Name(name));
        }
        tracing::debug!(pid = peer.pid, name = ?self.conns[&conn].name, "client registered");
        // The longest frame accepted, so that a client never batches past it.
        let max_frame = u32::try_from(self.limits.max_frame_bytes).unwrap_or(u32::MAX);
        let ok = Envelope {
            corr: env.corr,
            pid: peer.pid,
            arg: max_frame,
            ..Envelope::new(Kind::Ok)
        };
        self.push_env(conn, &ok);
        for held in self.mailboxes.take(&addresses) {
            if held.kind == Kind::Request {
                let key = (held.sender_pid, held.corr);
                match self.requests.get_mut(&key) {
                    Some(pending) => pending.receiver = Some(conn),
                    None => continue, // timed out while held; its sender was told
                }
                self.conns
                    .get_mut(&conn)
                    .expect("conn exists")
                    .serving
                    .insert(key);
            }
            self.stats.delivered += held.messages as u64;
            self.push(conn, &held.frame);
        }
    }

    fn message(&mut self, conn: ConnId, env: &Envelope<'_>, frame: &[u8], now: Instant) {
        let pid = self.conns[&conn].peer.pid;
        let checked = match env.kind {
            Kind::Batch => {
                batch::check(env.body, env.arg).map_err(|why| format!("bad batch: {why}"))
            }
            _ => Ok(()),
        };
        let address = match checked.and_then(|()| destination(env)) {
            Ok(address) => address,
            Err(why) => {
                self.send_error(conn, env.corr, ErrorCode::Malformed, None, &why);
                return;
            }
        };
        if env.kind == Kind::Request {
            let key = (pid, env.corr);
            if self.requests.contains_key(&key) {
                let why = format!("request {} of this process is already in flight", env.corr);
                self.send_error(
                    conn,
                    env.corr,
                    ErrorCode::DuplicateRequest,
                    Some(&address),
                    &why,
                );
                return;
            }
            let in_flight = self.conns[&conn].requests.len();
            if in_flight >= self.limits.max_pending_requests {
                let why = format!(
                    "{in_flight} requests of this connection are in flight (max_pending_requests)"
                );
                self.send_error(
                    conn,
                    env.corr,
                    ErrorCode::TooManyPending,
                    Some(&address),
                    &why,
                );
                return;
            }
            let timeout = match env.arg {
                0 => self.limits.request_timeout,
                ms => Duration::from_millis(ms as u64),
            };
            let deadline = now + timeout;
            self.requests.insert(
                key,
                Pending {
                    requester: conn,
                    receiver: None,
                    deadline,
                },
            );
            self.conns
                .get_mut(&conn)
                .expect("conn exists")
                .requests
                .insert(env.corr);
            self.timers.at(deadline, Timer::Request(pid, env.corr));
        }
        let frame = Bytes::copy_from_slice(frame);
        self.route(address, frame, conn, pid, env.kind, env.corr, now);
    }

    /// Delivers a `Send` or `Request` frame to `address`, or holds it.
    #[allow(clippy::too_many_arguments)]
    fn route(
        &mut self,
        address: Address,
        frame: Bytes,
        sender: ConnId,
        sender_pid: u32,
        kind: Kind,
        corr: u64,
        now: Instant,
    ) {
        if let Some(to) = self.resolve(&address) {
            if kind == Kind::Request {
                let key = (sender_pid, corr);
                if let Some(pending) = self.requests.get_mut(&key) {
                    pending.receiver = Some(to);
                }
                if let Some(c) = self.conns.get_mut(&to) {
                    c.serving.insert(key);
                }
            }
            self.stats.delivered += envelope::messages_in(&frame) as u64;
            self.push(to, &frame);
            return;
        }
        let messages = envelope::messages_in(&frame);
        match self
            .mailboxes
            .hold(&address, frame, sender, sender_pid, kind, corr, now)
        {
            Ok(()) => self.stats.held += messages as u64,
            Err(overflow) => {
                self.stats.overflowed += messages as u64;
                if kind == Kind::Request && self.requests.remove(&(sender_pid, corr)).is_some() {
                    self.forget_request_of(sender, corr);
                }
                let why = format!(
                    "not delivered: {address} is not connected and {}",
                    overflow.0
                );
                let failed = (corr, messages);
                self.fail_messages(sender, failed, ErrorCode::MailboxFull, &address, &why);
            }
        }
    }

    /// A `Reply` or `Error` from `conn`: to the hub (a channel call) or to a requester.
    fn answer(&mut self, conn: ConnId, env: &Envelope<'_>, frame: &[u8]) {
        if env.pid == 0 {
            self.service_answer(conn, env);
            return;
        }
        let key = (env.pid, env.corr);
        let valid = self
            .requests
            .get(&key)
            .is_some_and(|pending| pending.receiver == Some(conn));
        if !valid {
            let why = format!(
                "no request {} from pid {} is waiting for this connection's answer (answered, timed out, or never sent here)",
                env.corr, env.pid
            );
            self.send_error(
                conn,
                env.corr,
                ErrorCode::NoSuchRequest,
                Some(&Address::Pid(env.pid)),
                &why,
            );
            return;
        }
        let pending = self.requests.remove(&key).expect("checked above");
        if let Some(c) = self.conns.get_mut(&conn) {
            c.serving.remove(&key);
        }
        self.forget_request_of(pending.requester, env.corr);
        self.stats.delivered += 1;
        self.push(pending.requester, frame);
    }

    fn broadcast(&mut self, conn: ConnId, env: &Envelope<'_>, frame: &[u8]) {
        let receivers: Vec<ConnId> = self
            .names
            .range(env.name.to_string()..)
            .take_while(|(name, _)| name.starts_with(env.name))
            .map(|(_, c)| *c)
            .filter(|c| *c != conn)
            .collect();
        self.stats.delivered += receivers.len() as u64;
        for to in receivers {
            self.push(to, frame);
        }
    }

    // ---- timers ----

    fn request_timed_out(&mut self, pid: u32, corr: u64, when: Instant) {
        let key = (pid, corr);
        match self.requests.get(&key) {
            Some(pending) if pending.deadline == when => {}
            _ => return,
        }
        let pending = self.requests.remove(&key).expect("checked above");
        if let Some(receiver) = pending.receiver {
            if let Some(c) = self.conns.get_mut(&receiver) {
                c.serving.remove(&key);
            }
        }
        self.forget_request_of(pending.requester, corr);
        self.stats.requests_timed_out += 1;
        self.send_error(
            pending.requester,
            corr,
            ErrorCode::Timeout,
            None,
            "no reply within the request's timeout",
        );
    }

    fn check_stall(&mut self, conn: ConnId, now: Instant) {
        let high_water = self.limits.outbox_high_water;
        let stall = self.limits.stall_timeout;
        let Some(c) = self.conns.get_mut(&conn) else {
            return;
        };
        c.stall_timer_set = false;
        if c.closing || c.outbox.bytes() <= high_water {
            return;
        }
        let quiet = now.saturating_duration_since(c.last_progress);
        if quiet < stall {
            c.stall_timer_set = true;
            self.timers.at(c.last_progress + stall, Timer::Stall(conn));
            return;
        }
        let pid = c.peer.pid;
        let queued = c.outbox.bytes();
        self.stats.stalled_closed += 1;
        tracing::warn!(
            pid,
            queued,
            quiet_ms = quiet.as_millis() as u64,
            "closing a connection that stopped reading (stall_timeout); its undelivered messages go back to the mailboxes"
        );
        self.close(conn, now);
    }

    // ---- connections ----

    fn backpressure(&mut self, sender: ConnId, now: Instant) -> Flow {
        let high_water = self.limits.outbox_high_water;
        let stall = self.limits.stall_timeout;
        let touched = std::mem::take(&mut self.touched);
        let mut flow = Flow::Go;
        for to in &touched {
            let Some(c) = self.conns.get_mut(to) else {
                continue;
            };
            if c.outbox.bytes() <= high_water || c.closing {
                continue;
            }
            if !c.stall_timer_set {
                c.stall_timer_set = true;
                self.timers
                    .at(now.max(c.last_progress) + stall, Timer::Stall(*to));
            }
            if flow == Flow::Go && self.conns.get(&sender).is_some_and(|s| !s.closing) {
                let c = self.conns.get_mut(to).expect("checked above");
                if !c.paused_senders.contains(&sender) {
                    c.paused_senders.push(sender);
                }
                flow = Flow::Paused;
            }
        }
        self.touched = touched;
        self.touched.clear();
        flow
    }

    fn resume(&mut self, senders: Vec<ConnId>) {
        for conn in senders {
            if self.conns.contains_key(&conn) {
                self.effects.push(Effect::Resume { conn });
            }
        }
    }

    fn resolve(&self, address: &Address) -> Option<ConnId> {
        match address {
            Address::Pid(pid) => self
                .pids
                .get(pid)
                .and_then(|owners| owners.first().copied()),
            Address::Name(name) => self.names.get(name).copied(),
        }
    }

    /// Queues a copy of `frame` towards `conn`.
    fn push(&mut self, conn: ConnId, frame: &[u8]) {
        self.push_run(conn, frame, 1);
    }

    /// Queues a copy of `count` whole frames lying back to back in `frames` towards `conn`.
    fn push_run(&mut self, conn: ConnId, frames: &[u8], count: usize) {
        let Some(c) = self.conns.get_mut(&conn) else {
            return;
        };
        if c.hung_up {
            return;
        }
        c.outbox.push_run(frames, count, &mut self.chunks);
        self.queued_to(conn);
    }

    /// Queues a frame from the hub (pid 0) towards `conn`.
    fn push_env(&mut self, conn: ConnId, env: &Envelope<'_>) {
        let Some(c) = self.conns.get_mut(&conn) else {
            return;
        };
        if c.hung_up {
            return;
        }
        c.outbox.push_envelope(env, 0, &mut self.chunks);
        self.queued_to(conn);
    }

    fn queued_to(&mut self, conn: ConnId) {
        if self.touched.last() != Some(&conn) {
            self.touched.push(conn);
        }
        self.list_writable(conn);
    }

    fn list_writable(&mut self, conn: ConnId) {
        if let Some(c) = self.conns.get_mut(&conn) {
            if !c.listed && !c.outbox.busy() {
                c.listed = true;
                self.writable.push(conn);
            }
        }
    }

    /// Tells `sender` that the messages with correlation ids `corr .. corr + count` (one
    /// frame: a `Send`, a `Request` or a `Batch`) failed, one `Error` each.
    fn fail_messages(
        &mut self,
        sender: ConnId,
        (corr, count): (u64, u32),
        code: ErrorCode,
        address: &Address,
        why: &str,
    ) {
        for index in 0..count as u64 {
            self.send_error(sender, corr.wrapping_add(index), code, Some(address), why);
        }
    }

    fn send_error(
        &mut self,
        conn: ConnId,
        corr: u64,
        code: ErrorCode,
        address: Option<&Address>,
        why: &str,
    ) {
        self.stats.errors_sent += 1;
        if !self.conns.contains_key(&conn) {
            tracing::debug!(conn, ?code, "error for a connection that has gone: {why}");
            return;
        }
        let (pid, name) = match address {
            Some(Address::Pid(pid)) => (*pid, ""),
            Some(Address::Name(name)) => (0, name.as_str()),
            None => (0, ""),
        };
        let frame = Envelope {
            kind: Kind::Error,
            pid,
            corr,
            arg: code.as_u32(),
            name,
            body: why.as_bytes(),
        };
        self.push_env(conn, &frame);
    }

    /// Stops reading from `conn`; it ends once what is queued for it is written (or after
    /// the close grace).
    fn close(&mut self, conn: ConnId, now: Instant) {
        let Some(c) = self.conns.get_mut(&conn) else {
            return;
        };
        if c.closing {
            return;
        }
        c.closing = true;
        // Its reader stops: what it holds is let go.
        self.partial_total -= std::mem::take(&mut c.partial);
        let pid = c.peer.pid;
        let name = c.name.clone();
        self.unlist(conn, pid, name.as_deref());
        self.effects.push(Effect::StopReading { conn });
        let c = &self.conns[&conn];
        if c.outbox.busy() || c.outbox.has_unhanded() {
            self.timers
                .at(now + self.limits.close_grace, Timer::CloseGrace(conn));
            self.list_writable(conn);
        } else {
            self.cleanup(conn, now);
        }
    }

    /// Removes `conn` from the pid and name tables, so nothing new is routed to it.
    fn unlist(&mut self, conn: ConnId, pid: u32, name: Option<&str>) {
        if let Some(owners) = self.pids.get_mut(&pid) {
            owners.retain(|c| *c != conn);
            if owners.is_empty() {
                self.pids.remove(&pid);
            }
        }
        if let Some(name) = name {
            if self.names.get(name) == Some(&conn) {
                self.names.remove(name);
            }
        }
    }

    /// Forgets `conn`: what it did not take goes back to the mailboxes, what waits on it
    /// fails with an error, and the actor is told to shut it.
    fn cleanup(&mut self, conn: ConnId, now: Instant) {
        let Some(mut c) = self.conns.remove(&conn) else {
            return;
        };
        self.partial_total -= std::mem::take(&mut c.partial);
        let pid = c.peer.pid;
        self.unlist(conn, pid, c.name.as_deref());
        self.effects.push(Effect::Finish { conn });
        let unwritten = c.outbox.drain();
        if !unwritten.is_empty() {
            // Messages held for this connection's addresses since it was unlisted were sent
            // after these: take them out and hold them again behind, to keep each sender's
            // order.
            let mut addresses = vec![Address::Pid(pid)];
            addresses.extend(c.name.clone().map(Address::Name));
            let later = self.mailboxes.take(&addresses);
            for frame in unwritten {
                self.reroute(frame, now);
            }
            for held in later {
                self.reroute(held.frame, now);
            }
        }
        for key in std::mem::take(&mut c.serving) {
            let Some(pending) = self.requests.get(&key) else {
                continue;
            };
            if pending.receiver != Some(conn) {
                continue; // rerouted above
            }
            let pending = self.requests.remove(&key).expect("checked above");
            self.forget_request_of(pending.requester, key.1);
            self.send_error(
                pending.requester,
                key.1,
                ErrorCode::ReceiverGone,
                None,
                "the receiver disconnected before replying",
            );
        }
        for corr in std::mem::take(&mut c.requests) {
            self.requests.remove(&(pid, corr));
        }
        if let Some(service) = c.service.take() {
            self.channel_closed(&service, conn);
        }
        self.channels.unpark(conn);
        self.resume(std::mem::take(&mut c.paused_senders));
        tracing::debug!(pid, "connection finished");
    }

    /// A frame that was queued towards a connection that has gone: a client's message goes
    /// to its address again (another connection, or a mailbox); anything else is moot.
    fn reroute(&mut self, frame: Bytes, now: Instant) {
        let sender_pid = u32::from_le_bytes(frame[4..8].try_into().expect("header"));
        if sender_pid == 0 {
            return;
        }
        let Ok(env) = Envelope::parse(&frame[HEADER_LEN..]) else {
            return;
        };
        let Ok(address) = destination(&env) else {
            return;
        };
        match env.kind {
            Kind::Send | Kind::Request | Kind::Batch => {
                let sender = if env.kind == Kind::Request {
                    match self.requests.get_mut(&(sender_pid, env.corr)) {
                        Some(pending) => {
                            pending.receiver = None;
                            pending.requester
                        }
                        None => return, // already failed or answered
                    }
                } else {
                    self.resolve(&Address::Pid(sender_pid)).unwrap_or(0)
                };
                let (kind, corr) = (env.kind, env.corr);
                self.route(address, frame, sender, sender_pid, kind, corr, now);
            }
            _ => {
                self.stats.undeliverable += 1;
                tracing::debug!(kind = ?env.kind, "an answer for a connection that has gone is dropped");
            }
        }
    }

    fn forget_request_of(&mut self, requester: ConnId, corr: u64) {
        if let Some(c) = self.conns.get_mut(&requester) {
            c.requests.remove(&corr);
        }
    }

    fn note_damage(&mut self, conn: ConnId, damage: Damage, now: Instant) {
        self.stats.corrupt_bytes += damage.skipped_bytes;
        self.stats.resyncs += damage.resyncs;
        let Some(c) = self.conns.get_mut(&conn) else {
            return;
        };
        c.damage.skipped_bytes += damage.skipped_bytes;
        c.damage.resyncs += damage.resyncs;
        c.damage.wasted_bytes += damage.wasted_bytes;
        let quiet = c
            .last_damage_log
            .is_none_or(|at| now.saturating_duration_since(at) >= Duration::from_secs(1));
        if quiet {
            c.last_damage_log = Some(now);
            tracing::warn!(
                pid = c.peer.pid,
                skipped_bytes = c.damage.skipped_bytes,
                resyncs = c.damage.resyncs,
                "skipped corrupt bytes from a client and resynchronised"
            );
        }
    }
}

impl Conn {
    fn new(peer: Peer, now: Instant) -> Conn {
        Conn {
            peer,
            registered: false,
            name: None,
            service: None,
            outbox: Outbox::default(),
            listed: false,
            requests: HashSet::new(),
            serving: HashSet::new(),
            paused_senders: Vec::new(),
            closing: false,
            hung_up: false,
            last_progress: now,
            stall_timer_set: false,
            damage: Damage::default(),
            last_damage_log: None,
            partial: 0,
        }
    }
}

/// The correlation id in the envelope of `frame` (header included) when its fixed part is
/// there to read, whatever else is wrong with it; else 0.
fn corr_of(frame: &[u8]) -> u64 {
    const CORR: usize = HEADER_LEN + 8;
    frame
        .get(CORR..CORR + 8)
        .map_or(0, |b| u64::from_le_bytes(b.try_into().expect("8 bytes")))
}

/// Where a `Send` or `Request` goes: its name if it has one, else its pid.
fn destination(env: &Envelope<'_>) -> Result<Address, String> {
    if !env.name.is_empty() {
        envelope::check_name(env.name)?;
        Ok(Address::Name(env.name.to_string()))
    } else if env.pid != 0 {
        Ok(Address::Pid(env.pid))
    } else {
        Err("no destination: give a name or a pid other than 0".into())
    }
}

#[cfg(test)]
mod tests;
