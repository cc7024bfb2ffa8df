//! The beacon's protocol logic, sans-IO: sessions, cookie authentication, watches, and the
//! dispatch of requests to the [`Registry`].
//!
//! [`BeaconCore::handle`] takes one decoded frame from one peer and appends the messages to
//! send to [`Outbound`]; [`BeaconCore::tick`] applies deadlines. Nothing here touches a socket
//! or a clock.
//!
//! A *session* is what the beacon remembers about a peer connection between requests: whether
//! it proved the cookie, and its watches. Sessions exist only when needed (a cookie is set, or
//! the peer watches), are bounded in number, and are forgotten after `session_ttl` without a
//! message or as soon as the peer's connection is gone.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet, VecDeque};
use std::time::{Duration, Instant};

use rand::rngs::StdRng;
use rand::SeedableRng;

use crate::auth::{self, Cookie};
use crate::log_limit::LogLimiter;
use crate::protocol::{
    Auth, ErrorCode, Event, EventKind, Hello, Incoming, Reply, Request, Watch, WireError,
};
use crate::registry::{PeerId, Registry, RegistryError, WatchStart};

/// Most changes of one burst pushed to one watch; beyond, the watch resumes instead.
pub const MAX_BURST_PER_WATCH: usize = 256;

/// Limits on what peers may hold on the beacon.
#[derive(Debug, Clone)]
pub struct SessionLimits {
    /// Most sessions at once.
    pub max_sessions: usize,
    /// Most sessions waiting for their `auth` at once; the oldest is dropped beyond.
    pub max_pending_auth: usize,
    /// Most watches at once, over all peers.
    pub max_watchers: usize,
    /// Most watches one peer may hold.
    pub max_watches_per_peer: usize,
    /// A session with no message for this long is forgotten.
    pub session_ttl: Duration,
    /// Nodes that large answers (`list`, watch snapshots) may carry per second, over all
    /// peers; beyond, they are refused with `limit` for a moment.
    pub listed_nodes_per_second: usize,
}

impl Default for SessionLimits {
    fn default() -> Self {
        SessionLimits {
            max_sessions: 16_384,
            max_pending_auth: 1024,
            max_watchers: 1000,
            max_watches_per_peer: 16,
            session_ttl: Duration::from_secs(60),
            listed_nodes_per_second: 100_000,
        }
    }
}

/// One frame received from a peer, decoded (or not).
#[derive(Debug)]
pub struct Inbound {
    /// The sending connection.
    pub peer: PeerId,
    /// Whether the frame came after an empty delimiter frame (REQ-style envelope).
    pub delimited: bool,
    /// The request, or why it could not be decoded.
    pub frame: Result<Incoming, WireError>,
}

/// One message to send to a peer.
#[derive(Debug)]
pub struct Outbound {
    /// The receiving connection.
    pub peer: PeerId,
    /// Whether to put an empty delimiter frame before the body.
    pub delimited: bool,
    /// The `id` of the request answered (none for pushes).
    pub id: Option<u64>,
    /// The message.
    pub reply: Reply,
}

impl Outbound {
    /// The watch this message is a push for, if it is one.
    pub fn pushed_watch(&self) -> Option<&str> {
        match &self.reply {
            Reply::Event { watch, .. } | Reply::WatchLost { watch } => Some(watch),
            _ => None,
        }
    }
}

/// Why a message could not be handed to a peer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Undelivered {
    /// The peer's connection is gone.
    Unreachable,
    /// The peer is not reading fast enough (its queue is full): a watch event is dropped.
    Full,
    /// The peer left more than the allowed number of replies unread: they were discarded and
    /// its session is dropped.
    Overflow,
}

#[derive(Debug)]
struct Challenge {
    beacon_nonce: String,
    client_nonce: String,
    node: Option<String>,
}

#[derive(Debug)]
struct Session {
    authenticated: bool,
    challenge: Option<Challenge>,
    watches: BTreeMap<String, Vec<String>>,
    lost: BTreeSet<String>,
    delimited: bool,
    last_heard: Instant,
}

impl Session {
    fn new(now: Instant, delimited: bool) -> Self {
        Session {
            authenticated: false,
            challenge: None,
            watches: BTreeMap::new(),
            lost: BTreeSet::new(),
            delimited,
            last_heard: now,
        }
    }

    fn is_idle(&self) -> bool {
        !self.authenticated
            && self.challenge.is_none()
            && self.watches.is_empty()
            && self.lost.is_empty()
    }
}

/// A token bucket counting nodes in large answers.
#[derive(Debug)]
struct NodeBudget {
    per_second: f64,
    available: f64,
    refilled_at: Option<Instant>,
}

impl NodeBudget {
    fn new(per_second: usize) -> Self {
        NodeBudget {
            per_second: per_second as f64,
            available: per_second as f64,
            refilled_at: None,
        }
    }

    /// Whether an answer listing `nodes` nodes may go now. One larger than a whole second's
    /// budget goes when the budget is full, so that any registry can still be listed.
    fn take(&mut self, now: Instant, nodes: usize) -> bool {
        if let Some(at) = self.refilled_at {
            let earned = now.saturating_duration_since(at).as_secs_f64() * self.per_second;
            self.available = (self.available + earned).min(self.per_second);
        }
        self.refilled_at = Some(now);
        let nodes = nodes as f64;
        if nodes <= self.available || self.available >= self.per_second {
            self.available -= nodes;
            true
        } else {
            false
        }
    }
}

/// The op named for a frame that could not be decoded, in [`BeaconCounters::requests`].
pub const UNDECODED_OP: &str = "undecoded";

/// What the beacon has answered since it started, for metrics.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct BeaconCounters {
    /// Requests by `(op, outcome)`: the op's name (or [`UNDECODED_OP`]) and `ok` or the
    /// error code answered. Both come from fixed lists, so the map stays small.
    pub requests: BTreeMap<(&'static str, &'static str), u64>,
    /// Events pushed to watches.
    pub events_sent: u64,
}

impl BeaconCounters {
    fn answered(&mut self, op: &'static str, reply: &Reply) {
        let outcome = match reply {
            Reply::Error { code, .. } => code.as_str(),
            _ => "ok",
        };
        *self.requests.entry((op, outcome)).or_default() += 1;
    }
}

/// The beacon's protocol state machine.
pub struct BeaconCore {
    registry: Registry,
    cookie: Option<Cookie>,
    limits: SessionLimits,
    sessions: HashMap<PeerId, Session>,
    watching: BTreeSet<PeerId>,
    watchers: usize,
    pending_auth: usize,
    /// Peers in the order their challenges began (may hold peers whose challenge has ended;
    /// compacted when it grows past twice the limit).
    challenge_order: VecDeque<PeerId>,
    listed: NodeBudget,
    rng: StdRng,
    bad_input: LogLimiter,
    auth_failures: LogLimiter,
    refused_registrations: LogLimiter,
    overflows: LogLimiter,
    peers_dropped: u64,
    /// The latest time handed in (by `handle` or `tick`), for what happens between them.
    last_now: Option<Instant>,
    next_sweep: Option<Instant>,
    counters: BeaconCounters,
}

impl BeaconCore {
    /// A core over `registry`, requiring `cookie` when set.
    pub fn new(registry: Registry, cookie: Option<Cookie>, limits: SessionLimits) -> Self {
        let listed = NodeBudget::new(limits.listed_nodes_per_second);
        BeaconCore {
            registry,
            cookie,
            limits,
            sessions: HashMap::new(),
            watching: BTreeSet::new(),
            watchers: 0,
            pending_auth: 0,
            challenge_order: VecDeque::new(),
            listed,
            rng: StdRng::from_entropy(),
            bad_input: LogLimiter::default(),
            auth_failures: LogLimiter::default(),
            refused_registrations: LogLimiter::default(),
            overflows: LogLimiter::default(),
            peers_dropped: 0,
            last_now: None,
            next_sweep: None,
            counters: BeaconCounters::default(),
        }
    }

    /// The registry.
    pub fn registry(&self) -> &Registry {
        &self.registry
    }

    /// The registry, to restore a snapshot into.
    pub fn registry_mut(&mut self) -> &mut Registry {
        &mut self.registry
    }

    /// Sessions held now.
    pub fn sessions(&self) -> usize {
        self.sessions.len()
    }

    /// Watches held now, over all peers.
    pub fn watchers(&self) -> usize {
        self.watchers
    }

    /// What the beacon has answered and pushed since it started.
    pub fn counters(&self) -> &BeaconCounters {
        &self.counters
    }

    /// Handles one frame from a peer; appends replies and pushes to `out`.
    pub fn handle(&mut self, now: Instant, inbound: Inbound, out: &mut Vec<Outbound>) {
        let Inbound {
            peer,
            delimited,
            frame,
        } = inbound;
        self.last_now = Some(now);
        let reply_to = |id, reply| Outbound {
            peer: peer.clone(),
            delimited,
            id,
            reply,
        };
        if let Some(session) = self.sessions.get_mut(&peer) {
            session.last_heard = now;
            for watch in std::mem::take(&mut session.lost) {
                out.push(reply_to(None, Reply::WatchLost { watch }));
            }
        }
        let Incoming { id, request } = match frame {
            Ok(incoming) => incoming,
            Err(err) => {
                if let Some(suppressed) = self.bad_input.allow(now) {
                    tracing::warn!(
                        peer = %hex::encode(&peer.0),
                        code = %err.code,
                        suppressed,
                        "bad request: {}",
                        err.message
                    );
                }
                let reply = Reply::error(err.code, err.message);
                self.counters.answered(UNDECODED_OP, &reply);
                out.push(reply_to(err.id, reply));
                return;
            }
        };
        let op = request.op();
        let mut events = Vec::new();
        let reply = match request {
            Request::Hello(hello) => self.hello(now, &peer, delimited, hello),
            Request::Auth(auth) => self.auth(now, &peer, auth),
            request if !self.is_authenticated(&peer) => Reply::error(
                ErrorCode::AuthRequired,
                format!(
                    "{}: this beacon requires the cluster cookie; send hello and answer its challenge first",
                    request.op()
                ),
            ),
            request => self.dispatch(now, &peer, delimited, request, &mut events),
        };
        self.counters.answered(op, &reply);
        out.push(reply_to(id, reply));
        if !events.is_empty() {
            self.fan_out(&events, out);
        }
    }

    /// Applies deadlines due by `now`: nodes going offline or expiring, idle sessions.
    pub fn tick(&mut self, now: Instant, out: &mut Vec<Outbound>) {
        self.last_now = Some(now);
        let events = self.registry.tick(now);
        self.fan_out(&events, out);
        if self.next_sweep.is_none_or(|at| at <= now) {
            self.next_sweep = Some(now + Duration::from_secs(1));
            self.sweep_sessions(now);
        }
    }

    /// A message could not be handed to `message.peer`.
    pub fn undelivered(&mut self, peer: &PeerId, watch: Option<&str>, why: Undelivered) {
        match why {
            Undelivered::Unreachable => {
                self.forget(peer);
            }
            Undelivered::Overflow => self.overflowed(peer),
            Undelivered::Full => {
                let Some(watch) = watch else { return };
                let Some(session) = self.sessions.get_mut(peer) else {
                    return;
                };
                if session.watches.remove(watch).is_some() {
                    self.watchers -= 1;
                    session.lost.insert(watch.to_string());
                    tracing::warn!(
                        peer = %hex::encode(&peer.0),
                        watch,
                        "watcher is not keeping up; its watch is dropped and it will be told to resume"
                    );
                    if session.watches.is_empty() {
                        self.watching.remove(peer);
                    }
                }
            }
        }
    }

    /// Peers whose unread replies overflowed and whose session was dropped, since the beacon
    /// started.
    pub fn peers_dropped(&self) -> u64 {
        self.peers_dropped
    }

    /// `peer` left too many replies unread: they were discarded. Its session is dropped as if
    /// its connection had closed — it must authenticate again, its watches are gone — except
    /// that the names of its watches are kept, so that its next message is answered with a
    /// `watch_lost` for each before anything else.
    fn overflowed(&mut self, peer: &PeerId) {
        self.peers_dropped += 1;
        let held = self.sessions.get(peer).map(|s| (s.last_heard, s.delimited));
        let lost: Vec<String> = match self.sessions.get(peer) {
            Some(session) => session
                .watches
                .keys()
                .chain(session.lost.iter())
                .cloned()
                .collect(),
            None => Vec::new(),
        };
        self.forget(peer);
        if let (Some((last_heard, delimited)), false) = (held, lost.is_empty()) {
            let mut session = Session::new(last_heard, delimited);
            session.lost = lost.into_iter().collect();
            self.sessions.insert(peer.clone(), session);
        }
        let allowed = match self.last_now {
            Some(now) => self.overflows.allow(now),
            None => Some(0),
        };
        if let Some(suppressed) = allowed {
            tracing::warn!(
                peer = %hex::encode(&peer.0),
                suppressed,
                total = self.peers_dropped,
                "peer left too many replies unread: they were discarded and its session dropped"
            );
        }
    }

    fn is_authenticated(&self, peer: &PeerId) -> bool {
        self.cookie.is_none() || self.sessions.get(peer).is_some_and(|s| s.authenticated)
    }

    fn hello(&mut self, now: Instant, peer: &PeerId, delimited: bool, hello: Hello) -> Reply {
        if self.cookie.is_none() {
            return Reply::Welcome {
                auth: false,
                proof: None,
                epoch: self.registry.epoch().to_string(),
                rev: self.registry.rev(),
            };
        }
        if !self.sessions.contains_key(peer) && !self.make_room(now) {
            return Reply::error(
                ErrorCode::Limit,
                format!(
                    "the beacon holds its maximum of {} sessions; try again later",
                    self.limits.max_sessions
                ),
            );
        }
        let beacon_nonce = auth::nonce(&mut self.rng);
        let session = self
            .sessions
            .entry(peer.clone())
            .or_insert_with(|| Session::new(now, delimited));
        let new_challenge = session.challenge.is_none();
        session.authenticated = false;
        session.challenge = Some(Challenge {
            beacon_nonce: beacon_nonce.clone(),
            client_nonce: hello.nonce,
            node: hello.node,
        });
        if new_challenge {
            self.pending_auth += 1;
            self.challenge_order.push_back(peer.clone());
            if self.challenge_order.len() > 2 * self.limits.max_pending_auth {
                self.compact_challenge_order();
            }
        }
        if self.pending_auth > self.limits.max_pending_auth {
            self.drop_oldest_challenge(peer);
        }
        Reply::Challenge {
            nonce: beacon_nonce,
        }
    }

    fn auth(&mut self, now: Instant, peer: &PeerId, auth: Auth) -> Reply {
        let Some(cookie) = self.cookie.clone() else {
            return Reply::Welcome {
                auth: false,
                proof: None,
                epoch: self.registry.epoch().to_string(),
                rev: self.registry.rev(),
            };
        };
        let Some(challenge) = self.sessions.get_mut(peer).and_then(|s| s.challenge.take()) else {
            return Reply::error(
                ErrorCode::AuthRequired,
                "auth: no challenge is pending for this connection; send hello first",
            );
        };
        self.pending_auth -= 1;
        let valid = cookie.verify_client(
            &challenge.beacon_nonce,
            &challenge.client_nonce,
            &auth.proof,
        );
        if !valid {
            if let Some(suppressed) = self.auth_failures.allow(now) {
                tracing::warn!(
                    peer = %hex::encode(&peer.0),
                    node = challenge.node.as_deref().unwrap_or("(unnamed)"),
                    suppressed,
                    "authentication failed: wrong cookie; connection refused"
                );
            }
            if self.sessions.get(peer).is_some_and(Session::is_idle) {
                self.sessions.remove(peer);
            }
            return Reply::error(
                ErrorCode::AuthFailed,
                "auth: wrong cookie (the proof does not match); the node's [cluster] cookie must equal the beacon's",
            );
        }
        if let Some(session) = self.sessions.get_mut(peer) {
            session.authenticated = true;
        }
        tracing::debug!(
            peer = %hex::encode(&peer.0),
            node = challenge.node.as_deref().unwrap_or("(unnamed)"),
            "peer authenticated"
        );
        Reply::Welcome {
            auth: true,
            proof: Some(cookie.server_proof(&challenge.client_nonce, &challenge.beacon_nonce)),
            epoch: self.registry.epoch().to_string(),
            rev: self.registry.rev(),
        }
    }

    fn dispatch(
        &mut self,
        now: Instant,
        peer: &PeerId,
        delimited: bool,
        request: Request,
        events: &mut Vec<Event>,
    ) -> Reply {
        let epoch = self.registry.epoch().to_string();
        match request {
            Request::Hello(_) | Request::Auth(_) => unreachable!("handled before dispatch"),
            Request::Ping => Reply::Pong {
                epoch,
                rev: self.registry.rev(),
            },
            Request::Register(register) => {
                let registration = register.registration();
                let heartbeat = Duration::from_millis(register.heartbeat_ms);
                match self.registry.register(
                    now,
                    Some(peer.clone()),
                    &register.node,
                    registration,
                    heartbeat,
                ) {
                    Ok(changes) => {
                        events.extend(changes);
                        Reply::Registered {
                            node: register.node,
                            epoch,
                            rev: self.registry.rev(),
                        }
                    }
                    Err(err) => {
                        if let Some(suppressed) = self.refused_registrations.allow(now) {
                            tracing::warn!(
                                node = %register.node,
                                suppressed,
                                "registration refused: {err}"
                            );
                        }
                        registry_error(err)
                    }
                }
            }
            Request::Heartbeat(node) => match self.registry.heartbeat(now, peer, &node.node) {
                Ok(changes) => {
                    events.extend(changes);
                    Reply::Ack {
                        epoch,
                        rev: self.registry.rev(),
                    }
                }
                Err(err) => registry_error(err),
            },
            Request::Deregister(node) => match self.registry.deregister(peer, &node.node) {
                Ok(changes) => {
                    events.extend(changes);
                    Reply::Deregistered { node: node.node }
                }
                Err(err) => registry_error(err),
            },
            Request::GetRequirements(node) => match self.registry.requirements(&node.node) {
                Ok((offers, unmet)) => Reply::Requirements {
                    node: node.node,
                    offers,
                    unmet,
                    rev: self.registry.rev(),
                },
                Err(err) => registry_error(err),
            },
            Request::Lookup(lookup) => Reply::Nodes {
                nodes: self.registry.lookup(&lookup.resource),
                rev: self.registry.rev(),
            },
            Request::List => {
                if !self.listed.take(now, self.registry.len()) {
                    return self.over_budget("list");
                }
                Reply::Nodes {
                    nodes: self.registry.list(now),
                    rev: self.registry.rev(),
                }
            }
            Request::Watch(watch) => self.watch(now, peer, delimited, watch),
            Request::Unwatch(unwatch) => {
                let removed = self
                    .sessions
                    .get_mut(peer)
                    .and_then(|s| s.watches.remove(&unwatch.watch))
                    .is_some();
                if !removed {
                    return Reply::error(
                        ErrorCode::UnknownWatch,
                        format!(
                            "unwatch: this connection has no watch \"{}\"",
                            unwatch.watch
                        ),
                    );
                }
                self.watchers -= 1;
                if self
                    .sessions
                    .get(peer)
                    .is_some_and(|s| s.watches.is_empty())
                {
                    self.watching.remove(peer);
                }
                Reply::Unwatched {
                    watch: unwatch.watch,
                }
            }
        }
    }

    fn watch(&mut self, now: Instant, peer: &PeerId, delimited: bool, watch: Watch) -> Reply {
        let held = self.sessions.get(peer).map(|s| &s.watches);
        let replaces = held.is_some_and(|w| w.contains_key(&watch.watch));
        if !replaces {
            if self.watchers >= self.limits.max_watchers {
                return Reply::error(
                    ErrorCode::Limit,
                    format!(
                        "watch: the beacon holds its maximum of {} watches",
                        self.limits.max_watchers
                    ),
                );
            }
            if held.is_some_and(|w| w.len() >= self.limits.max_watches_per_peer) {
                return Reply::error(
                    ErrorCode::Limit,
                    format!(
                        "watch: a connection may hold at most {} watches",
                        self.limits.max_watches_per_peer
                    ),
                );
            }
            if !self.sessions.contains_key(peer) && !self.make_room(now) {
                return Reply::error(
                    ErrorCode::Limit,
                    format!(
                        "watch: the beacon holds its maximum of {} sessions",
                        self.limits.max_sessions
                    ),
                );
            }
        }
        let start = self
            .registry
            .watch_from(watch.since.as_ref(), &watch.resources);
        if let WatchStart::Snapshot(nodes) = &start {
            if !self.listed.take(now, nodes.len()) {
                return self.over_budget("watch");
            }
        }
        let session = self
            .sessions
            .entry(peer.clone())
            .or_insert_with(|| Session::new(now, delimited));
        session.delimited = delimited;
        session.lost.remove(&watch.watch);
        session.watches.insert(watch.watch.clone(), watch.resources);
        if !replaces {
            self.watchers += 1;
        }
        self.watching.insert(peer.clone());
        let epoch = self.registry.epoch().to_string();
        let rev = self.registry.rev();
        match start {
            WatchStart::Snapshot(nodes) => Reply::Snapshot {
                watch: watch.watch,
                epoch,
                rev,
                nodes,
            },
            WatchStart::Resume(events) => Reply::Resumed {
                watch: watch.watch,
                epoch,
                rev,
                events,
            },
        }
    }

    /// Logs each change and pushes it to every watch it concerns, as that watch is to see it
    /// ([`Event::for_watch`]).
    fn fan_out(&mut self, events: &[Event], out: &mut Vec<Outbound>) {
        if events.len() > MAX_BURST_PER_WATCH {
            self.drop_flooded_watches(events);
        }
        for event in events {
            let node = &event.node;
            let resources = node.resources().collect::<Vec<_>>().join(",");
            match event.kind {
                EventKind::Nodeup => {
                    tracing::info!(node = %node.name, resource = %node.resource, %resources, rev = event.rev, "node up")
                }
                EventKind::Nodedown => {
                    tracing::warn!(node = %node.name, resource = %node.resource, %resources, rev = event.rev, "node down: missed its heartbeats")
                }
                EventKind::Changed => {
                    tracing::info!(node = %node.name, resource = %node.resource, %resources, rev = event.rev, "node changed its registration")
                }
                EventKind::Removed => {
                    tracing::info!(node = %node.name, resource = %node.resource, %resources, rev = event.rev, "node removed")
                }
            }
            for peer in &self.watching {
                let Some(session) = self.sessions.get(peer) else {
                    continue;
                };
                for (watch, resources) in &session.watches {
                    if let Some(event) = event.for_watch(resources) {
                        self.counters.events_sent += 1;
                        out.push(Outbound {
                            peer: peer.clone(),
                            delimited: session.delimited,
                            id: None,
                            reply: Reply::Event {
                                watch: watch.clone(),
                                epoch: self.registry.epoch().to_string(),
                                event,
                            },
                        });
                    }
                }
            }
        }
    }

    /// A burst of changes (many nodes going offline in one tick, say) would queue one message
    /// per change for every watch that covers it. A watch that would get more than
    /// [`MAX_BURST_PER_WATCH`] of them is dropped instead and told to resume, which it does from
    /// the history or a snapshot: what one burst queues stays bounded by
    /// `max_watchers` × [`MAX_BURST_PER_WATCH`].
    fn drop_flooded_watches(&mut self, events: &[Event]) {
        for peer in &self.watching {
            let Some(session) = self.sessions.get_mut(peer) else {
                continue;
            };
            let flooded: Vec<String> = session
                .watches
                .iter()
                .filter(|(_, resources)| {
                    events.iter().filter(|e| e.concerns(resources)).count() > MAX_BURST_PER_WATCH
                })
                .map(|(watch, _)| watch.clone())
                .collect();
            for watch in flooded {
                session.watches.remove(&watch);
                session.lost.insert(watch);
                self.watchers -= 1;
            }
        }
        let sessions = &self.sessions;
        self.watching
            .retain(|peer| sessions.get(peer).is_some_and(|s| !s.watches.is_empty()));
    }

    fn over_budget(&self, op: &str) -> Reply {
        Reply::error(
            ErrorCode::Limit,
            format!(
                "{op}: the beacon sends at most {} listed nodes per second (list and watch snapshots together); try again in a moment",
                self.limits.listed_nodes_per_second
            ),
        )
    }

    /// Whether one more session fits, after dropping expired ones if needed.
    fn make_room(&mut self, now: Instant) -> bool {
        if self.sessions.len() < self.limits.max_sessions {
            return true;
        }
        self.sweep_sessions(now);
        self.sessions.len() < self.limits.max_sessions
    }

    fn sweep_sessions(&mut self, now: Instant) {
        let ttl = self.limits.session_ttl;
        let expired: Vec<PeerId> = self
            .sessions
            .iter()
            .filter(|(_, s)| now.saturating_duration_since(s.last_heard) >= ttl)
            .map(|(p, _)| p.clone())
            .collect();
        for peer in expired {
            tracing::debug!(peer = %hex::encode(&peer.0), "session expired");
            self.forget(&peer);
        }
        self.shrink();
    }

    /// Drops the oldest pending challenge other than `keep`'s: a flood of `hello`s from many
    /// connections cannot hold more than `max_pending_auth` challenges, and costs O(1) each.
    fn drop_oldest_challenge(&mut self, keep: &PeerId) {
        for _ in 0..self.challenge_order.len() {
            let Some(peer) = self.challenge_order.pop_front() else {
                break;
            };
            if &peer == keep {
                self.challenge_order.push_back(peer);
                continue;
            }
            let Some(session) = self.sessions.get_mut(&peer) else {
                continue;
            };
            if session.challenge.take().is_some() {
                self.pending_auth -= 1;
                if session.is_idle() {
                    self.sessions.remove(&peer);
                }
                break;
            }
        }
    }

    /// Keeps only peers whose challenge is still pending, once each.
    fn compact_challenge_order(&mut self) {
        let sessions = &self.sessions;
        let mut seen = HashSet::new();
        self.challenge_order.retain(|peer| {
            sessions.get(peer).is_some_and(|s| s.challenge.is_some()) && seen.insert(peer.clone())
        });
    }

    fn forget(&mut self, peer: &PeerId) {
        if let Some(session) = self.sessions.remove(peer) {
            self.watchers -= session.watches.len();
            if session.challenge.is_some() {
                self.pending_auth -= 1;
            }
            self.watching.remove(peer);
        }
        self.shrink();
    }

    /// Gives back the memory of per-peer maps that a burst of connections grew, once most of
    /// those peers are gone (a map keeps its capacity after removals).
    fn shrink(&mut self) {
        if self.sessions.capacity() > 64 && self.sessions.len() < self.sessions.capacity() / 4 {
            self.sessions.shrink_to(self.sessions.len() * 2);
        }
        if self.challenge_order.capacity() > 64
            && self.challenge_order.len() < self.challenge_order.capacity() / 4
        {
            self.challenge_order
                .shrink_to(self.challenge_order.len() * 2);
        }
    }

    /// The capacity of the per-peer session map (for tests of [`Self::shrink`]).
    #[cfg(test)]
    fn session_capacity(&self) -> usize {
        self.sessions.capacity()
    }
}

fn registry_error(err: RegistryError) -> Reply {
    let code = match err {
        RegistryError::UnknownNode(_) => ErrorCode::UnknownNode,
        RegistryError::Full(_) => ErrorCode::Limit,
    };
    Reply::error(code, err.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::{
        decode_request, encode_reply, encode_request, NodeRef, Position, Register, Status,
    };
    use crate::registry::RegistryConfig;
    use rand::SeedableRng;

    struct Harness {
        core: BeaconCore,
        now: Instant,
    }

    fn harness(cookie: Option<&str>, limits: SessionLimits) -> Harness {
        let registry = Registry::new(
            RegistryConfig {
                liveness: 3,
                offline_ttl: Duration::from_secs(60),
                history: 100,
                max_nodes: 1000,
            },
            "e1".into(),
        );
        Harness {
            core: BeaconCore::new(registry, cookie.and_then(Cookie::new), limits),
            now: Instant::now(),
        }
    }

    impl Harness {
        fn send(&mut self, peer: u8, request: Request) -> Vec<Outbound> {
            let frame = encode_request(Some(1), &request);
            self.raw(peer, &frame)
        }

        fn raw(&mut self, peer: u8, frame: &[u8]) -> Vec<Outbound> {
            let mut out = Vec::new();
            self.core.handle(
                self.now,
                Inbound {
                    peer: PeerId(vec![peer]),
                    delimited: false,
                    frame: decode_request(frame, 4096),
                },
                &mut out,
            );
            out
        }

        fn tick(&mut self, by: Duration) -> Vec<Outbound> {
            self.now += by;
            let mut out = Vec::new();
            self.core.tick(self.now, &mut out);
            out
        }

        fn register(&mut self, peer: u8, node: &str, resource: &str, requires: &[&str]) -> Reply {
            let mut out = self.send(
                peer,
                Request::Register(Register {
                    node: node.into(),
                    resource: resource.into(),
                    requires: requires.iter().map(|s| s.to_string()).collect(),
                    endpoints: [("main".to_string(), format!("tcp://{node}:1"))].into(),
                    offers: Default::default(),
                    metadata: Default::default(),
                    heartbeat_ms: 1000,
                }),
            );
            out.remove(0).reply
        }
    }

    fn error_code(reply: &Reply) -> ErrorCode {
        match reply {
            Reply::Error { code, .. } => *code,
            other => panic!("expected an error, got {other:?}"),
        }
    }

    fn hello(nonce: &str) -> Request {
        Request::Hello(Hello {
            node: Some("n1".into()),
            nonce: nonce.into(),
        })
    }

    #[test]
    fn requests_are_counted_by_op_and_outcome_and_pushed_events_too() {
        let mut h = harness(None, SessionLimits::default());
        let watch = Request::Watch(Watch {
            watch: "w".into(),
            resources: vec!["broker".into()],
            since: None,
        });
        h.send(9, watch);
        h.register(1, "a", "broker", &[]);
        h.register(2, "b", "broker", &[]);
        h.send(1, Request::Heartbeat(NodeRef { node: "zz".into() }));
        h.raw(1, b"not json");
        let counters = h.core.counters();
        let count = |op, outcome| counters.requests.get(&(op, outcome)).copied();
        assert_eq!(count("watch", "ok"), Some(1));
        assert_eq!(count("register", "ok"), Some(2));
        assert_eq!(count("heartbeat", "unknown_node"), Some(1));
        assert_eq!(count(UNDECODED_OP, "bad_json"), Some(1));
        assert_eq!(counters.requests.values().sum::<u64>(), 5);
        // Two nodes came up under the watch: two events pushed.
        assert_eq!(counters.events_sent, 2);
    }

    #[test]
    fn without_a_cookie_requests_need_no_session() {
        let mut h = harness(None, SessionLimits::default());
        assert!(matches!(
            h.register(1, "a", "broker", &[]),
            Reply::Registered { rev: 1, .. }
        ));
        let out = h.send(1, Request::GetRequirements(NodeRef { node: "a".into() }));
        assert!(matches!(out[0].reply, Reply::Requirements { .. }));
        assert_eq!(out[0].id, Some(1));
        assert_eq!(h.core.sessions(), 0);
        let out = h.send(2, hello(&"00".repeat(32)));
        assert!(matches!(out[0].reply, Reply::Welcome { auth: false, .. }));
    }

    #[test]
    fn with_a_cookie_only_a_correct_proof_opens_the_session() {
        let mut h = harness(Some("right"), SessionLimits::default());
        // Anything before authentication is refused.
        let out = h.send(1, Request::Ping);
        assert_eq!(error_code(&out[0].reply), ErrorCode::AuthRequired);
        assert_eq!(
            error_code(&h.register(1, "a", "broker", &[])),
            ErrorCode::AuthRequired
        );

        let mut rng = StdRng::seed_from_u64(5);
        for (peer, cookie, ok) in [(1, "right", true), (2, "wrong", false)] {
            let client_nonce = auth::nonce(&mut rng);
            let out = h.send(peer, hello(&client_nonce));
            let Reply::Challenge { nonce } = &out[0].reply else {
                panic!("{:?}", out[0].reply)
            };
            let cookie = Cookie::new(cookie).unwrap();
            let proof = cookie.client_proof(nonce, &client_nonce);
            let out = h.send(peer, Request::Auth(Auth { proof }));
            if ok {
                let Reply::Welcome {
                    auth: true,
                    proof: Some(server),
                    ..
                } = &out[0].reply
                else {
                    panic!("{:?}", out[0].reply)
                };
                assert!(cookie.verify_server(&client_nonce, nonce, server));
                assert!(matches!(
                    h.register(peer, "a", "broker", &[]),
                    Reply::Registered { .. }
                ));
            } else {
                assert_eq!(error_code(&out[0].reply), ErrorCode::AuthFailed);
                assert_eq!(
                    error_code(&h.register(peer, "b", "broker", &[])),
                    ErrorCode::AuthRequired
                );
                // The challenge is single-use: replaying an auth finds nothing pending.
                let out = h.send(
                    peer,
                    Request::Auth(Auth {
                        proof: "00".repeat(32),
                    }),
                );
                assert_eq!(error_code(&out[0].reply), ErrorCode::AuthRequired);
            }
        }
        assert_eq!(h.core.registry().len(), 1);
    }

    #[test]
    fn a_flood_of_refused_registrations_logs_a_bounded_number_of_lines() {
        let registry = Registry::new(
            RegistryConfig {
                liveness: 3,
                offline_ttl: Duration::from_secs(60),
                history: 100,
                max_nodes: 1,
            },
            "e1".into(),
        );
        let mut h = Harness {
            core: BeaconCore::new(registry, None, SessionLimits::default()),
            now: Instant::now(),
        };
        assert!(matches!(
            h.register(1, "first", "x", &[]),
            Reply::Registered { .. }
        ));
        // 90,000 refusals over 3 seconds: at most 5 lines a second are logged.
        for i in 0..90_000u32 {
            if i % 30_000 == 0 && i > 0 {
                h.now += Duration::from_secs(1);
            }
            let reply = h.register(2, &format!("n{i}"), "x", &[]);
            assert_eq!(error_code(&reply), ErrorCode::Limit);
        }
        let limiter = &h.core.refused_registrations;
        assert_eq!(limiter.logged, 15, "{limiter:?}");
        assert_eq!(limiter.suppressed, 30_000 - 5);
    }

    #[test]
    fn a_peer_that_overflows_its_replies_loses_its_session_and_is_told() {
        let mut h = harness(Some("right"), SessionLimits::default());
        let mut rng = StdRng::seed_from_u64(7);
        let client_nonce = auth::nonce(&mut rng);
        let out = h.send(1, hello(&client_nonce));
        let Reply::Challenge { nonce } = &out[0].reply else {
            panic!("{:?}", out[0].reply)
        };
        let proof = Cookie::new("right")
            .unwrap()
            .client_proof(nonce, &client_nonce);
        assert!(matches!(
            h.send(1, Request::Auth(Auth { proof }))[0].reply,
            Reply::Welcome { auth: true, .. }
        ));
        let watch = Request::Watch(Watch {
            watch: "w".into(),
            resources: vec![],
            since: None,
        });
        assert!(matches!(h.send(1, watch)[0].reply, Reply::Snapshot { .. }));
        assert_eq!((h.core.sessions(), h.core.watchers()), (1, 1));

        h.core
            .undelivered(&PeerId(vec![1]), None, Undelivered::Overflow);
        assert_eq!(h.core.peers_dropped(), 1);
        assert_eq!(h.core.watchers(), 0);
        // Its next message is told the watch is gone, and must authenticate again.
        let out = h.send(1, Request::Ping);
        assert!(matches!(&out[0].reply, Reply::WatchLost { watch } if watch == "w"));
        assert_eq!(error_code(&out[1].reply), ErrorCode::AuthRequired);
        // The kept session holds nothing and expires as any other.
        h.tick(Duration::from_secs(61));
        h.tick(Duration::from_secs(1));
        assert_eq!(h.core.sessions(), 0);
        // A peer without a session is only counted.
        h.core
            .undelivered(&PeerId(vec![2]), None, Undelivered::Overflow);
        assert_eq!((h.core.peers_dropped(), h.core.sessions()), (2, 0));
    }

    #[test]
    fn sessions_beyond_the_cap_are_refused_and_gone_peers_leave_nothing_behind() {
        let limits = SessionLimits {
            max_sessions: 100,
            max_pending_auth: 1000,
            ..SessionLimits::default()
        };
        let mut h = harness(Some("c"), limits);
        for peer in 0..100u8 {
            assert!(matches!(
                h.send(peer, hello(&"11".repeat(32)))[0].reply,
                Reply::Challenge { .. }
            ));
        }
        // The 101st connection is refused with `limit` and holds nothing.
        assert_eq!(
            error_code(&h.send(200, hello(&"11".repeat(32)))[0].reply),
            ErrorCode::Limit
        );
        assert_eq!((h.core.sessions(), h.core.pending_auth), (100, 100));
        let grown = h.core.session_capacity();
        assert!(grown >= 100);
        // Their connections go away: every per-peer map is emptied and its memory given back.
        for peer in 0..100u8 {
            h.core
                .undelivered(&PeerId(vec![peer]), None, Undelivered::Unreachable);
        }
        assert_eq!((h.core.sessions(), h.core.pending_auth), (0, 0));
        assert!(h.core.watching.is_empty());
        assert!(
            h.core.session_capacity() < grown,
            "{}",
            h.core.session_capacity()
        );
        // Room again.
        assert!(matches!(
            h.send(200, hello(&"11".repeat(32)))[0].reply,
            Reply::Challenge { .. }
        ));
    }

    #[test]
    fn pending_challenges_are_bounded() {
        let limits = SessionLimits {
            max_pending_auth: 3,
            ..SessionLimits::default()
        };
        let mut h = harness(Some("c"), limits);
        for peer in 0..10 {
            h.now += Duration::from_millis(1);
            let out = h.send(peer, hello(&"11".repeat(32)));
            assert!(matches!(out[0].reply, Reply::Challenge { .. }));
        }
        assert_eq!(h.core.pending_auth, 3);
        assert_eq!(h.core.sessions(), 3);
        // One peer failing and retrying over and over leaves the order bounded.
        for _ in 0..100 {
            h.send(42, hello(&"22".repeat(32)));
            h.send(
                42,
                Request::Auth(Auth {
                    proof: "00".repeat(32),
                }),
            );
        }
        assert!(
            h.core.challenge_order.len() <= 6,
            "{}",
            h.core.challenge_order.len()
        );
        assert!(h.core.pending_auth <= 3);
    }

    #[test]
    fn bad_frames_are_answered_with_errors_and_change_nothing() {
        let mut h = harness(None, SessionLimits::default());
        let cases: [(&[u8], ErrorCode); 4] = [
            (b"not json", ErrorCode::BadJson),
            (br#"{"v":1,"op":"nope","id":4}"#, ErrorCode::UnknownOp),
            (
                br#"{"v":1,"op":"heartbeat","node":7}"#,
                ErrorCode::BadRequest,
            ),
            (&[b' '; 5000], ErrorCode::TooLarge),
        ];
        for (frame, code) in cases {
            let out = h.raw(1, frame);
            assert_eq!(out.len(), 1);
            assert_eq!(error_code(&out[0].reply), code);
        }
        assert_eq!(h.raw(1, br#"{"v":1,"op":"nope","id":4}"#)[0].id, Some(4));
        assert!(h.core.registry().is_empty());
    }

    #[test]
    fn unknown_nodes_are_told_to_register() {
        let mut h = harness(None, SessionLimits::default());
        let out = h.send(
            1,
            Request::Heartbeat(NodeRef {
                node: "ghost".into(),
            }),
        );
        assert_eq!(error_code(&out[0].reply), ErrorCode::UnknownNode);
    }

    #[test]
    fn watchers_get_ordered_events_and_resume_from_a_revision() {
        let mut h = harness(None, SessionLimits::default());
        let out = h.send(
            9,
            Request::Watch(Watch {
                watch: "w".into(),
                resources: vec!["broker".into()],
                since: None,
            }),
        );
        let Reply::Snapshot {
            rev: 0, ref nodes, ..
        } = out[0].reply
        else {
            panic!("{:?}", out[0].reply)
        };
        assert!(nodes.is_empty());
        h.register(1, "b1", "broker", &[]);
        h.register(2, "i1", "ipc", &[]);
        // The registering peer gets its reply, the watcher the event, nothing for ipc.
        let out = h.send(3, Request::Ping);
        assert_eq!(out.len(), 1);
        let mut out = Vec::new();
        h.core.handle(
            h.now,
            Inbound {
                peer: PeerId(vec![4]),
                delimited: false,
                frame: decode_request(
                    &encode_request(
                        None,
                        &Request::Register(Register {
                            node: "b2".into(),
                            resource: "broker".into(),
                            requires: vec![],
                            endpoints: Default::default(),
                            offers: Default::default(),
                            metadata: Default::default(),
                            heartbeat_ms: 1000,
                        }),
                    ),
                    4096,
                ),
            },
            &mut out,
        );
        assert_eq!(out.len(), 2);
        assert!(matches!(out[0].reply, Reply::Registered { .. }));
        assert_eq!(out[1].peer, PeerId(vec![9]));
        let Reply::Event { ref event, .. } = out[1].reply else {
            panic!()
        };
        assert_eq!((event.rev, event.kind), (3, EventKind::Nodeup));

        // b1 stops heartbeating; b2 and i1 keep going: the watcher is told b1 is down.
        let mut seen = Vec::new();
        for _ in 0..3 {
            for (peer, node) in [(2, "i1"), (4, "b2")] {
                h.send(peer, Request::Heartbeat(NodeRef { node: node.into() }));
            }
            h.send(9, Request::Ping);
            seen.extend(h.tick(Duration::from_secs(1)));
        }
        assert_eq!(seen.len(), 1, "{seen:?}");
        let Reply::Event {
            ref event,
            ref epoch,
            ..
        } = seen[0].reply
        else {
            panic!()
        };
        assert_eq!(
            (event.rev, event.kind, event.node.name.as_str()),
            (4, EventKind::Nodedown, "b1")
        );
        assert_eq!(event.node.status, Status::Offline);

        // A new connection resumes after revision 1: it gets 3 and 4 (2 was ipc).
        let out = h.send(
            8,
            Request::Watch(Watch {
                watch: "w".into(),
                resources: vec!["broker".into()],
                since: Some(Position {
                    epoch: epoch.clone(),
                    rev: 1,
                }),
            }),
        );
        let Reply::Resumed {
            ref events, rev: 4, ..
        } = out[0].reply
        else {
            panic!("{:?}", out[0].reply)
        };
        assert_eq!(events.iter().map(|e| e.rev).collect::<Vec<_>>(), [3, 4]);
    }

    #[test]
    fn a_change_of_resources_is_told_to_each_watch_as_it_concerns_it() {
        let mut h = harness(None, SessionLimits::default());
        let watch = |name: &str, resources: &[&str]| {
            Request::Watch(Watch {
                watch: name.into(),
                resources: resources.iter().map(|s| s.to_string()).collect(),
                since: None,
            })
        };
        let register = |offers: &[&str]| {
            Request::Register(Register {
                node: "hub".into(),
                resource: "ipc".into(),
                requires: vec![],
                endpoints: Default::default(),
                offers: offers
                    .iter()
                    .map(|r| {
                        let endpoints = [("main".to_string(), format!("tcp://{r}:1"))].into();
                        (r.to_string(), endpoints)
                    })
                    .collect(),
                metadata: Default::default(),
                heartbeat_ms: 1000,
            })
        };
        assert!(matches!(
            h.send(1, register(&["broker"]))[0].reply,
            Reply::Registered { rev: 1, .. }
        ));
        for (name, resources) in [
            ("all", &[][..]),
            ("brokers", &["broker"][..]),
            ("dbs", &["db"][..]),
            ("ipc", &["ipc", "db"][..]),
            ("caches", &["cache"][..]),
        ] {
            let out = h.send(9, watch(name, resources));
            let Reply::Snapshot { ref nodes, .. } = out[0].reply else {
                panic!("{:?}", out[0].reply)
            };
            if name == "brokers" {
                assert_eq!(
                    nodes[0].resource, "broker",
                    "projected onto the watched resource"
                );
                assert_eq!(nodes[0].endpoints["main"], "tcp://broker:1");
            }
        }
        // The hub stops offering `broker` and offers `db`: one revision, told to each watch as
        // it concerns it, projected onto the watched resource.
        let out = h.send(1, register(&["db"]));
        assert!(matches!(out[0].reply, Reply::Registered { rev: 2, .. }));
        let told: Vec<(&str, EventKind, &str, u64)> = out[1..]
            .iter()
            .map(|o| match &o.reply {
                Reply::Event { watch, event, .. } => (
                    watch.as_str(),
                    event.kind,
                    event.node.resource.as_str(),
                    event.rev,
                ),
                other => panic!("{other:?}"),
            })
            .collect();
        assert_eq!(
            told,
            [
                ("all", EventKind::Changed, "ipc", 2),
                ("brokers", EventKind::Removed, "broker", 2),
                ("dbs", EventKind::Nodeup, "db", 2),
                ("ipc", EventKind::Changed, "ipc", 2),
            ]
        );
        let frame = String::from_utf8(encode_reply(None, &out[3].reply)).unwrap();
        assert!(!frame.contains("previous"), "{frame}");
        assert!(
            frame.contains(r#""endpoints":{"main":"tcp://db:1"}"#),
            "{frame}"
        );
    }

    #[test]
    fn a_burst_of_changes_makes_watches_resume_instead_of_queueing_without_bound() {
        let mut h = harness(None, SessionLimits::default());
        let watch = |name: &str, resources: Vec<String>| {
            Request::Watch(Watch {
                watch: name.into(),
                resources,
                since: None,
            })
        };
        h.send(9, watch("all", vec![]));
        h.send(9, watch("few", vec!["rare".into()]));
        for i in 0..300 {
            h.register(1, &format!("n{i}"), "common", &[]);
        }
        h.register(1, "r", "rare", &[]);
        // Nobody heartbeats: all 301 go offline in the same tick.
        let out = h.tick(Duration::from_secs(3));
        let pushes: Vec<&str> = out.iter().filter_map(|o| o.pushed_watch()).collect();
        assert_eq!(pushes, ["few"], "the flooded watch gets nothing queued");
        let out = h.send(9, Request::Ping);
        assert!(matches!(&out[0].reply, Reply::WatchLost { watch } if watch == "all"));
        assert!(matches!(out[1].reply, Reply::Pong { .. }));
        // Resuming from before the burst gets a snapshot (the history holds 100 changes).
        let resumed = h.send(
            9,
            Request::Watch(Watch {
                watch: "all".into(),
                resources: vec![],
                since: Some(Position {
                    epoch: "e1".into(),
                    rev: 301,
                }),
            }),
        );
        assert!(matches!(&resumed[0].reply, Reply::Snapshot { nodes, .. } if nodes.len() == 301));
    }

    #[test]
    fn large_answers_share_a_budget_of_nodes_per_second() {
        let limits = SessionLimits {
            listed_nodes_per_second: 10,
            ..SessionLimits::default()
        };
        let mut h = harness(None, limits);
        for i in 0..4 {
            h.register(1, &format!("n{i}"), "x", &[]);
        }
        // 4 nodes per list: two lists fit in the budget of 10, the third does not.
        for _ in 0..2 {
            assert!(matches!(
                h.send(2, Request::List)[0].reply,
                Reply::Nodes { .. }
            ));
        }
        assert_eq!(
            error_code(&h.send(2, Request::List)[0].reply),
            ErrorCode::Limit
        );
        let snapshot = Request::Watch(Watch {
            watch: "w".into(),
            resources: vec![],
            since: None,
        });
        assert_eq!(
            error_code(&h.send(3, snapshot.clone())[0].reply),
            ErrorCode::Limit
        );
        assert_eq!(h.core.watchers(), 0, "a refused watch is not installed");
        // Half a second refills 5 nodes' worth.
        h.tick(Duration::from_millis(500));
        assert!(matches!(
            h.send(3, snapshot)[0].reply,
            Reply::Snapshot { .. }
        ));
        // An answer larger than a whole second's budget still goes once the budget is full.
        for i in 4..30 {
            h.register(1, &format!("n{i}"), "x", &[]);
        }
        h.tick(Duration::from_secs(2));
        assert!(matches!(
            h.send(2, Request::List)[0].reply,
            Reply::Nodes { .. }
        ));
        assert_eq!(
            error_code(&h.send(2, Request::List)[0].reply),
            ErrorCode::Limit
        );
    }

    #[test]
    fn watches_are_bounded_and_dropped_with_their_peer() {
        let limits = SessionLimits {
            max_watchers: 2,
            ..SessionLimits::default()
        };
        let mut h = harness(None, limits);
        let watch = |name: &str| {
            Request::Watch(Watch {
                watch: name.into(),
                resources: vec![],
                since: None,
            })
        };
        assert!(matches!(
            h.send(1, watch("a"))[0].reply,
            Reply::Snapshot { .. }
        ));
        assert!(matches!(
            h.send(1, watch("a"))[0].reply,
            Reply::Snapshot { .. }
        ));
        assert!(matches!(
            h.send(2, watch("a"))[0].reply,
            Reply::Snapshot { .. }
        ));
        assert_eq!(
            error_code(&h.send(3, watch("a"))[0].reply),
            ErrorCode::Limit
        );
        assert_eq!(h.core.watchers(), 2);
        // A peer whose connection is gone loses its watches.
        h.core
            .undelivered(&PeerId(vec![1]), Some("a"), Undelivered::Unreachable);
        assert_eq!(h.core.watchers(), 1);
        // A slow peer loses the watch and is told so when it next speaks.
        h.core
            .undelivered(&PeerId(vec![2]), Some("a"), Undelivered::Full);
        assert_eq!(h.core.watchers(), 0);
        let out = h.send(2, Request::Ping);
        assert!(matches!(&out[0].reply, Reply::WatchLost { watch } if watch == "a"));
        assert!(matches!(out[1].reply, Reply::Pong { .. }));
        // Idle sessions are forgotten after session_ttl.
        assert!(matches!(
            h.send(3, watch("b"))[0].reply,
            Reply::Snapshot { .. }
        ));
        h.tick(Duration::from_secs(61));
        h.tick(Duration::from_secs(1));
        assert_eq!((h.core.sessions(), h.core.watchers()), (0, 0));
        let out = h.send(
            3,
            Request::Unwatch(crate::protocol::Unwatch { watch: "b".into() }),
        );
        assert_eq!(error_code(&out[0].reply), ErrorCode::UnknownWatch);
    }
}
