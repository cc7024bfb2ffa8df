//! The cluster client's logic, sans-IO: one link per beacon, each a small state machine
//! (hello → auth → register → ready), heartbeats, queries with failover between beacons,
//! watches that resume after a reconnect, and waiting for requirements.
//!
//! The actor calls [`ClientCore::start`], [`ClientCore::received`], [`ClientCore::tick`] and
//! the query methods with the current time, and carries out the returned [`Action`]s.
//!
//! Guarantees:
//! - a beacon that forgot this node (it restarted) is answered by re-registering at once: the
//!   first heartbeat it refuses (`unknown_node`, `auth_required`) starts the registration;
//! - a beacon that has not answered anything for `liveness` heartbeat intervals is counted
//!   unreachable: its connection is rebuilt (dropping what was queued for it, so nothing
//!   arrives in a burst later), its queries move to another beacon and its watches resume
//!   elsewhere from their last revision;
//! - a query goes to the beacon heard from most recently and moves to the next one when it is
//!   not answered within `request_timeout`; it fails only when every beacon was tried;
//! - with a cookie, a beacon must prove it knows the cookie too, or this node refuses it;
//! - what the node offers changes at run time ([`ClientCore::offer`], [`ClientCore::withdraw`])
//!   and is sent to every beacon at once; a beacon too old to know `offers` is sent the primary
//!   resource alone;
//! - provider watches ([`ClientCore::watch_providers`]) share one subscription, whose snapshot
//!   and events feed the providers mirror (`client/providers.rs`).

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use rand::rngs::StdRng;
use rand::SeedableRng;

use troupe_core::cluster::{ProvidersChanged, WatchId};

use crate::auth::{self, Cookie};
use crate::client::providers::{Own, Providers};
use crate::client::{ClientError, ClusterEvent, Requirements, SubscriptionId};
use crate::protocol::{
    check_name, encode_request, Auth, Endpoints, ErrorCode, FieldError, Hello, Lookup, Node,
    NodeRef, Position, Register, Registration, Reply, Request, Unwatch, Watch,
};

/// Index of a beacon in the configured list.
pub type LinkId = usize;

/// Most queries waiting for an answer at once.
pub const MAX_PENDING: usize = 4096;
/// Most `await_requirements` callers waiting at once.
pub const MAX_AWAITERS: usize = 1024;
/// Most subscriptions at once (a beacon holds at most 16 watches per connection, and one is
/// kept for the provider watches).
pub const MAX_SUBSCRIPTIONS: usize = 15;

/// The subscription that feeds the provider watches.
const PROVIDERS: SubscriptionId = SubscriptionId(0);

/// How the client behaves.
#[derive(Debug, Clone)]
pub struct ClientSettings {
    /// This node's name.
    pub node: String,
    /// What this node registers; `None` for a client that only asks (operator commands).
    pub registration: Option<Registration>,
    /// The resources of the node's roles and those declared in `[cluster]`: withdrawing one
    /// leaves it offered, with no endpoints. Resources offered at run time beyond these go
    /// when withdrawn.
    pub base_resources: BTreeSet<String>,
    /// The cluster's cookie.
    pub cookie: Option<Cookie>,
    /// Heartbeat interval.
    pub heartbeat: Duration,
    /// Silent intervals before a beacon counts as unreachable.
    pub liveness: u32,
    /// How long one beacon may take to answer a query.
    pub request_timeout: Duration,
}

/// A question for the beacons.
#[derive(Debug, Clone, PartialEq)]
pub enum Query {
    /// `get_requirements` for a node.
    Requirements(String),
    /// `lookup` of a resource.
    Lookup(String),
    /// `list`.
    List,
}

/// An answer from a beacon.
#[derive(Debug, Clone, PartialEq)]
pub enum Answer {
    /// To [`Query::Requirements`].
    Requirements(Requirements),
    /// To [`Query::Lookup`] and [`Query::List`].
    Nodes(Vec<Node>),
}

/// Who is waiting for a query's answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Origin {
    Caller(u64),
    RequirementCheck,
}

/// What the actor must do.
#[derive(Debug, PartialEq)]
pub enum Action {
    /// Send this encoded request to a beacon.
    Send {
        /// The beacon.
        link: LinkId,
        /// The frame.
        frame: Vec<u8>,
    },
    /// Close the beacon's connection and open a fresh one, dropping anything queued on it.
    Reset {
        /// The beacon.
        link: LinkId,
    },
    /// Answer the caller that submitted `token`.
    Answer {
        /// The caller's token.
        token: u64,
        /// The answer.
        result: Result<Answer, ClientError>,
    },
    /// Wake the `await_requirements` caller `token`.
    Awaited {
        /// The caller's token.
        token: u64,
        /// Every requirement met, or why not.
        result: Result<Requirements, ClientError>,
    },
    /// Deliver an event to a subscriber.
    Deliver {
        /// The subscription.
        subscription: SubscriptionId,
        /// The event.
        event: ClusterEvent,
    },
    /// Every beacon answered the deregistration (or none was reachable).
    Left,
    /// Tell a provider watch its new picture.
    Providers {
        /// The watch.
        watch: WatchId,
        /// Its picture.
        changed: ProvidersChanged,
    },
}

#[derive(Debug)]
enum Phase {
    Hello {
        id: u64,
        nonce: String,
    },
    Auth {
        id: u64,
        client_nonce: String,
        beacon_nonce: String,
    },
    Register {
        id: u64,
        update: bool,
    },
    Ready,
    Refused,
}

struct Link {
    endpoint: String,
    phase: Phase,
    /// When the current handshake step (or refusal) began.
    step_at: Instant,
    /// When this beacon last said anything, or when its connection was last rebuilt.
    silent_since: Instant,
    heard_at: Option<Instant>,
    next_beat: Instant,
    position: Option<Position>,
    registered_once: bool,
    unreachable: bool,
    refusal: Option<String>,
    /// Whether the TCP connection is up (from the socket's monitor).
    connected: bool,
    /// Whether the connection went down since the session was opened.
    dropped: bool,
    /// Whether the beacon refused `offers` (it is older): it is sent the primary resource only,
    /// until the next session.
    legacy: bool,
}

impl Link {
    fn is_ready(&self) -> bool {
        matches!(self.phase, Phase::Ready)
    }
}

struct Pending {
    origin: Origin,
    query: Query,
    tried: Vec<bool>,
    sent: Option<(LinkId, u64, Instant)>,
    wait_until: Instant,
    last_error: Option<ClientError>,
}

struct Subscription {
    resources: Vec<String>,
    position: Option<Position>,
    link: Option<LinkId>,
    /// The id of the `watch` request last sent for it.
    request: Option<u64>,
    /// After the beacon refused the watch: not before this time again.
    retry_at: Option<Instant>,
}

/// Whether this node's requirements were last seen met.
#[derive(Debug, Clone, PartialEq)]
pub enum RequirementState {
    /// Not checked yet.
    Unknown,
    /// Each has an online provider.
    Met,
    /// These have none.
    Unmet(Vec<String>),
}

impl ClientStatus {
    /// The status of a client of `backend` (`beacon`, `etcd`) as node `node`, registering
    /// `registration`, with its links to the backend (`links`), requirements as last seen,
    /// and how many subscriptions and provider watches it holds.
    pub fn new(
        backend: &'static str,
        node: &str,
        registration: Option<&Registration>,
        links: Vec<BeaconStatus>,
        requirements: &RequirementState,
        held: (usize, usize),
    ) -> ClientStatus {
        let (state, unmet) = match requirements {
            RequirementState::Unknown => ("unknown", Vec::new()),
            RequirementState::Met => ("met", Vec::new()),
            RequirementState::Unmet(unmet) => ("unmet", unmet.clone()),
        };
        ClientStatus {
            backend,
            node: node.to_string(),
            registration: registration.cloned(),
            offers: registration.map(|r| r.offers.clone()).unwrap_or_default(),
            beacons: links,
            requirements: state,
            unmet,
            subscriptions: held.0,
            provider_watches: held.1,
        }
    }
}

/// One beacon as the client sees it.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct BeaconStatus {
    /// Its address.
    pub endpoint: String,
    /// `up` (session open), `handshake`, `refused` (it refused this node: see `refusal`) or
    /// `down`.
    pub state: &'static str,
    /// Whether the TCP connection is up.
    pub connected: bool,
    /// Why it refused this node, when it did.
    pub refusal: Option<String>,
    /// Time since it last said anything.
    pub last_heard_ms_ago: Option<u64>,
}

/// What the cluster client knows, for operators.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct ClientStatus {
    /// The backend: `beacon` or `etcd`.
    pub backend: &'static str,
    /// This node's name.
    pub node: String,
    /// What it registers (none for an asking-only client).
    pub registration: Option<Registration>,
    /// What it offers: every resource with its endpoints (empty for an asking-only client).
    pub offers: BTreeMap<String, Endpoints>,
    /// Each configured beacon; with etcd, one row for the etcd cluster (its endpoints, and
    /// `state` `registered`, `unregistered`, `refused` or `unreachable`).
    pub beacons: Vec<BeaconStatus>,
    /// `met`, `unmet` or `unknown` (not checked yet), as last seen.
    pub requirements: &'static str,
    /// The requirements without an online provider, as last seen.
    pub unmet: Vec<String>,
    /// Watches open.
    pub subscriptions: usize,
    /// Provider watches held (they share one subscription).
    pub provider_watches: usize,
}

/// The cluster client's state machine.
pub struct ClientCore {
    settings: ClientSettings,
    links: Vec<Link>,
    next_id: u64,
    pending: Vec<Pending>,
    awaiters: Vec<(u64, Instant)>,
    check_queued: bool,
    requirement_state: RequirementState,
    subscriptions: BTreeMap<SubscriptionId, Subscription>,
    leaving: Option<(Vec<u64>, Instant)>,
    providers: Providers,
    rng: StdRng,
}

impl ClientCore {
    /// A client for `beacons`, not started.
    pub fn new(mut settings: ClientSettings, beacons: Vec<String>, now: Instant) -> Self {
        if let Some(registration) = &mut settings.registration {
            registration.normalize();
        }
        let links = beacons
            .into_iter()
            .map(|endpoint| Link {
                endpoint,
                phase: Phase::Refused,
                step_at: now,
                silent_since: now,
                heard_at: None,
                next_beat: now,
                position: None,
                registered_once: false,
                unreachable: false,
                refusal: None,
                connected: false,
                dropped: false,
                legacy: false,
            })
            .collect();
        let providers = Providers::new(own(&settings));
        ClientCore {
            settings,
            links,
            next_id: 1,
            pending: Vec::new(),
            awaiters: Vec::new(),
            check_queued: false,
            requirement_state: RequirementState::Unknown,
            subscriptions: BTreeMap::new(),
            leaving: None,
            providers,
            rng: StdRng::from_entropy(),
        }
    }

    /// This node's name.
    pub fn node(&self) -> &str {
        &self.settings.node
    }

    /// The configured beacons.
    pub fn beacons(&self) -> impl Iterator<Item = &str> {
        self.links.iter().map(|l| l.endpoint.as_str())
    }

    /// Whether beacon `link` has accepted this node (or, for an asking-only client, opened
    /// the session).
    pub fn is_ready(&self, link: LinkId) -> bool {
        self.links.get(link).is_some_and(Link::is_ready)
    }

    /// The registration as it is now.
    pub fn registration(&self) -> Option<&Registration> {
        self.settings.registration.as_ref()
    }

    /// What the client knows now, for operators: this node's registration, each beacon's
    /// link, and whether the requirements were last seen met.
    pub fn status(&self, now: Instant) -> ClientStatus {
        let beacons = self
            .links
            .iter()
            .map(|link| BeaconStatus {
                endpoint: link.endpoint.clone(),
                state: match link.phase {
                    Phase::Ready => "up",
                    Phase::Refused if link.refusal.is_some() => "refused",
                    Phase::Refused => "down",
                    _ if link.connected => "handshake",
                    _ => "down",
                },
                connected: link.connected,
                refusal: link.refusal.clone(),
                last_heard_ms_ago: link
                    .heard_at
                    .map(|at| now.saturating_duration_since(at).as_millis() as u64),
            })
            .collect();
        ClientStatus::new(
            "beacon",
            &self.settings.node,
            self.settings.registration.as_ref(),
            beacons,
            &self.requirement_state,
            (self.subscriptions.len(), self.providers.len()),
        )
    }

    /// Starts the handshake with every beacon.
    pub fn start(&mut self, now: Instant) -> Vec<Action> {
        let mut out = Vec::new();
        for link in 0..self.links.len() {
            self.send_hello(now, link, &mut out);
        }
        out
    }

    /// Handles a frame from beacon `link`.
    pub fn received(&mut self, now: Instant, link: LinkId, frame: &[u8]) -> Vec<Action> {
        let mut out = Vec::new();
        let Some(state) = self.links.get_mut(link) else {
            return out;
        };
        let (id, reply) = match crate::protocol::decode_reply(frame) {
            Ok(decoded) => decoded,
            Err(why) => {
                tracing::warn!(beacon = %state.endpoint, "unreadable message from the beacon: {why}");
                return out;
            }
        };
        state.silent_since = now;
        state.heard_at = Some(now);
        if state.unreachable {
            state.unreachable = false;
            tracing::info!(beacon = %state.endpoint, "beacon reachable again");
        }
        self.on_reply(now, link, id, reply, &mut out);
        self.dispatch(now, &mut out);
        self.provider_updates(&mut out);
        out
    }

    /// Beacon `link`'s connection is up. After a drop, the beacon may be a new process (or
    /// see this client as a new peer): the session is opened again at once.
    pub fn connected(&mut self, now: Instant, link: LinkId) -> Vec<Action> {
        let mut out = Vec::new();
        let Some(state) = self.links.get_mut(link) else {
            return out;
        };
        state.connected = true;
        if std::mem::take(&mut state.dropped) && !matches!(state.phase, Phase::Refused) {
            tracing::info!(beacon = %state.endpoint, "connection to the beacon is back; opening the session again");
            self.link_lost(now, link, &mut out);
            self.send_hello(now, link, &mut out);
        }
        self.dispatch(now, &mut out);
        self.provider_updates(&mut out);
        out
    }

    /// Beacon `link`'s connection went down (ZeroMQ reconnects by itself): its queries and
    /// watches move to another beacon if one is ready.
    pub fn disconnected(&mut self, now: Instant, link: LinkId) -> Vec<Action> {
        let mut out = Vec::new();
        let Some(state) = self.links.get_mut(link) else {
            return out;
        };
        state.connected = false;
        state.dropped = true;
        tracing::info!(beacon = %state.endpoint, "connection to the beacon lost; reconnecting");
        for pending in &mut self.pending {
            if matches!(pending.sent, Some((l, _, _)) if l == link) {
                pending.sent = None;
                // It may come back: another try on this beacon is allowed.
                pending.tried[link] = false;
            }
        }
        for sub in self.subscriptions.values_mut() {
            if sub.link == Some(link) {
                sub.link = None;
            }
        }
        self.attach_subscriptions(now, &mut out);
        self.dispatch(now, &mut out);
        self.provider_updates(&mut out);
        out
    }

    /// Heartbeats, retries, and every deadline due by `now`.
    pub fn tick(&mut self, now: Instant) -> Vec<Action> {
        let mut out = Vec::new();
        let silence_limit = self.settings.heartbeat * self.settings.liveness;
        for link in 0..self.links.len() {
            let state = &mut self.links[link];
            if now.saturating_duration_since(state.silent_since) >= silence_limit {
                if !state.unreachable {
                    state.unreachable = true;
                    tracing::warn!(
                        beacon = %state.endpoint,
                        silent_for = ?silence_limit,
                        "beacon unreachable; reconnecting (other beacons answer meanwhile)"
                    );
                }
                state.silent_since = now;
                state.connected = false;
                state.dropped = false;
                out.push(Action::Reset { link });
                self.link_lost(now, link, &mut out);
                self.send_hello(now, link, &mut out);
                continue;
            }
            let since_step = now.saturating_duration_since(state.step_at);
            match state.phase {
                Phase::Ready => {
                    if now >= state.next_beat {
                        state.next_beat = now + self.settings.heartbeat;
                        let request = match &self.settings.registration {
                            Some(_) => Request::Heartbeat(NodeRef {
                                node: self.settings.node.clone(),
                            }),
                            None => Request::Ping,
                        };
                        self.send(link, request, &mut out);
                    }
                }
                Phase::Refused => {
                    if since_step >= silence_limit {
                        self.send_hello(now, link, &mut out);
                    }
                }
                _ => {
                    if since_step >= self.settings.heartbeat {
                        self.send_hello(now, link, &mut out);
                    }
                }
            }
        }
        self.expire(now, &mut out);
        self.attach_subscriptions(now, &mut out);
        self.dispatch(now, &mut out);
        self.provider_updates(&mut out);
        out
    }

    /// Submits a query; its answer comes back as [`Action::Answer`] with `token`.
    pub fn query(&mut self, now: Instant, token: u64, query: Query) -> Vec<Action> {
        let mut out = Vec::new();
        if self.pending.len() >= MAX_PENDING {
            out.push(Action::Answer {
                token,
                result: Err(ClientError::Busy(MAX_PENDING)),
            });
            return out;
        }
        self.enqueue(now, Origin::Caller(token), query);
        self.dispatch(now, &mut out);
        out
    }

    /// Waits until every requirement of this node has an online provider, or `timeout`.
    pub fn await_requirements(
        &mut self,
        now: Instant,
        token: u64,
        timeout: Duration,
    ) -> Vec<Action> {
        let mut out = Vec::new();
        if self.settings.registration.is_none() {
            out.push(Action::Awaited {
                token,
                result: Err(ClientError::NotRegistering),
            });
            return out;
        }
        if self.awaiters.len() >= MAX_AWAITERS {
            out.push(Action::Awaited {
                token,
                result: Err(ClientError::Busy(MAX_AWAITERS)),
            });
            return out;
        }
        self.awaiters.push((token, now + timeout));
        self.check_requirements(now);
        self.dispatch(now, &mut out);
        out
    }

    /// Subscribes to changes of `resources` (all when empty), resuming after `since` if given.
    pub fn subscribe(
        &mut self,
        now: Instant,
        subscription: SubscriptionId,
        resources: Vec<String>,
        since: Option<Position>,
    ) -> Result<Vec<Action>, ClientError> {
        if subscription == PROVIDERS {
            return Err(ClientError::Invalid(
                "subscription 0 is the provider watches'".into(),
            ));
        }
        let held =
            self.subscriptions.len() - usize::from(self.subscriptions.contains_key(&PROVIDERS));
        if held >= MAX_SUBSCRIPTIONS {
            return Err(ClientError::Busy(MAX_SUBSCRIPTIONS));
        }
        for (i, resource) in resources.iter().enumerate() {
            crate::protocol::check_name(&format!("resources[{i}]"), resource)
                .map_err(|err| ClientError::Invalid(err.to_string()))?;
        }
        self.subscriptions.insert(
            subscription,
            Subscription {
                resources,
                position: since,
                link: None,
                request: None,
                retry_at: None,
            },
        );
        let mut out = Vec::new();
        self.attach_subscriptions(now, &mut out);
        self.dispatch(now, &mut out);
        Ok(out)
    }

    /// Ends a subscription.
    pub fn unsubscribe(&mut self, subscription: SubscriptionId) -> Vec<Action> {
        let mut out = Vec::new();
        if let Some(Subscription {
            link: Some(link), ..
        }) = self.subscriptions.remove(&subscription)
        {
            if self.links[link].is_ready() {
                let watch = watch_name(subscription);
                self.send(link, Request::Unwatch(Unwatch { watch }), &mut out);
            }
        }
        out
    }

    /// Follows the online providers of `resources` for watch `id`: [`Action::Providers`]
    /// tells it its picture once known, then every change to it.
    pub fn watch_providers(
        &mut self,
        now: Instant,
        id: WatchId,
        resources: Vec<String>,
    ) -> Result<Vec<Action>, ClientError> {
        self.providers
            .add(id, resources)
            .map_err(ClientError::Invalid)?;
        let mut out = Vec::new();
        self.sync_providers_subscription(now, &mut out);
        self.dispatch(now, &mut out);
        self.provider_updates(&mut out);
        Ok(out)
    }

    /// Ends provider watch `id`.
    pub fn unwatch_providers(&mut self, now: Instant, id: WatchId) -> Vec<Action> {
        self.providers.remove(id);
        let mut out = Vec::new();
        self.sync_providers_subscription(now, &mut out);
        self.provider_updates(&mut out);
        out
    }

    /// Gives the provider watches' subscription the filter they need now.
    fn sync_providers_subscription(&mut self, now: Instant, out: &mut Vec<Action>) {
        let wanted = self.providers.wanted_filter();
        if wanted.as_deref() == self.providers.filter() {
            return;
        }
        self.providers.resubscribed(wanted.clone());
        let Some(filter) = wanted else {
            out.extend(self.unsubscribe(PROVIDERS));
            return;
        };
        let entry = self
            .subscriptions
            .entry(PROVIDERS)
            .or_insert_with(|| Subscription {
                resources: Vec::new(),
                position: None,
                link: None,
                request: None,
                retry_at: None,
            });
        entry.resources = filter;
        entry.position = None;
        entry.request = None;
        match entry.link {
            Some(link) if self.links[link].is_ready() => self.send_watch(link, PROVIDERS, out),
            _ => {
                entry.link = None;
                self.attach_subscriptions(now, out);
            }
        }
    }

    /// Tells the provider watches what changed: whether a beacon is reachable, their pictures.
    fn provider_updates(&mut self, out: &mut Vec<Action>) {
        let reachable = self.links.iter().any(|l| !l.unreachable);
        self.providers.set_reachable(reachable);
        for (watch, changed) in self.providers.updates() {
            out.push(Action::Providers { watch, changed });
        }
    }

    /// Deregisters from every beacon that has this node; [`Action::Left`] follows once each
    /// answered, at once when none has it, or at `deadline` at the latest.
    pub fn leave(&mut self, deadline: Instant) -> Vec<Action> {
        let mut out = Vec::new();
        let mut ids = Vec::new();
        if self.settings.registration.is_some() {
            for link in 0..self.links.len() {
                if self.links[link].is_ready() && self.links[link].connected {
                    let node = self.settings.node.clone();
                    ids.push(self.send(link, Request::Deregister(NodeRef { node }), &mut out));
                }
            }
        }
        if ids.is_empty() {
            out.push(Action::Left);
        } else {
            self.leaving = Some((ids, deadline));
        }
        out
    }

    fn on_reply(
        &mut self,
        now: Instant,
        link: LinkId,
        id: Option<u64>,
        reply: Reply,
        out: &mut Vec<Action>,
    ) {
        if let Some((ids, _)) = &mut self.leaving {
            if let Some(at) = ids.iter().position(|i| Some(*i) == id) {
                ids.swap_remove(at);
                if ids.is_empty() {
                    self.leaving = None;
                    out.push(Action::Left);
                }
                return;
            }
        }
        match reply {
            Reply::Challenge { nonce } => self.on_challenge(now, link, id, nonce, out),
            Reply::Welcome {
                auth,
                proof,
                epoch,
                rev,
            } => self.on_welcome(now, link, id, auth, proof, Position { epoch, rev }, out),
            Reply::Registered { epoch, rev, .. } => {
                let state = &mut self.links[link];
                if let Phase::Register {
                    id: expected,
                    update,
                } = state.phase
                {
                    if Some(expected) != id {
                        return;
                    }
                    state.phase = Phase::Ready;
                    state.next_beat = now + self.settings.heartbeat;
                    if update {
                        tracing::debug!(beacon = %state.endpoint, "registration updated");
                    } else if state.registered_once {
                        tracing::info!(beacon = %state.endpoint, "registered again with the beacon");
                    } else {
                        let resources = self
                            .settings
                            .registration
                            .as_ref()
                            .map(|r| r.offers.keys().cloned().collect::<Vec<_>>().join(","))
                            .unwrap_or_default();
                        tracing::info!(
                            beacon = %state.endpoint,
                            resource = self.settings.registration.as_ref().map(|r| r.resource.as_str()),
                            %resources,
                            "registered with the beacon"
                        );
                    }
                    state.registered_once = true;
                    // Becoming ready checks the requirements anyway.
                    state.position = Some(Position { epoch, rev });
                    self.became_ready(now, out);
                    return;
                }
                self.note_position(now, link, Position { epoch, rev });
            }
            Reply::Ack { epoch, rev } | Reply::Pong { epoch, rev } => {
                self.note_position(now, link, Position { epoch, rev });
            }
            Reply::Requirements {
                node,
                offers,
                unmet,
                ..
            } => self.answered(
                now,
                link,
                id,
                Ok(Answer::Requirements(Requirements {
                    node,
                    offers,
                    unmet,
                })),
                out,
            ),
            Reply::Nodes { nodes, .. } => {
                self.answered(now, link, id, Ok(Answer::Nodes(nodes)), out)
            }
            Reply::Snapshot {
                watch,
                epoch,
                rev,
                nodes,
            } => {
                let Some(sub) = self.subscription_on(link, &watch) else {
                    return;
                };
                let entry = self.subscriptions.get_mut(&sub).expect("found");
                if sub == PROVIDERS && entry.request != id {
                    // The answer to a watch request since replaced (with another filter).
                    return;
                }
                let position = Position { epoch, rev };
                entry.position = Some(position.clone());
                if sub == PROVIDERS {
                    self.providers.snapshot(nodes);
                    return;
                }
                out.push(Action::Deliver {
                    subscription: sub,
                    event: ClusterEvent::Snapshot {
                        beacon: self.links[link].endpoint.clone(),
                        position,
                        nodes,
                    },
                });
            }
            Reply::Resumed {
                watch,
                epoch,
                rev,
                events,
            } => {
                let Some(sub) = self.subscription_on(link, &watch) else {
                    return;
                };
                if sub == PROVIDERS && self.subscriptions[&sub].request != id {
                    return;
                }
                for event in events {
                    self.deliver_change(link, sub, &epoch, event, out);
                }
                let position = Position { epoch, rev };
                let entry = self.subscriptions.get_mut(&sub).expect("found");
                if advances(entry.position.as_ref(), &position) {
                    entry.position = Some(position);
                }
                if sub == PROVIDERS {
                    self.providers.resumed();
                }
            }
            Reply::Event {
                watch,
                epoch,
                event,
            } => {
                if let Some(sub) = self.subscription_on(link, &watch) {
                    self.deliver_change(link, sub, &epoch, event, out);
                }
            }
            Reply::WatchLost { watch } => {
                if let Some(sub) = self.subscription_on(link, &watch) {
                    tracing::warn!(beacon = %self.links[link].endpoint, "watch dropped by the beacon; resuming");
                    self.send_watch(link, sub, out);
                }
            }
            Reply::Unwatched { .. } | Reply::Deregistered { .. } => {}
            Reply::Error { code, error } => self.on_error(now, link, id, code, error, out),
        }
    }

    fn on_challenge(
        &mut self,
        now: Instant,
        link: LinkId,
        id: Option<u64>,
        beacon_nonce: String,
        out: &mut Vec<Action>,
    ) {
        let Phase::Hello {
            id: expected,
            nonce,
        } = &self.links[link].phase
        else {
            return;
        };
        if Some(*expected) != id {
            return;
        }
        let client_nonce = nonce.clone();
        let Some(cookie) = self.settings.cookie.clone() else {
            self.refuse(
                now,
                link,
                "the beacon requires a cookie and this node has none; set [cluster] cookie_file",
            );
            return;
        };
        let proof = cookie.client_proof(&beacon_nonce, &client_nonce);
        let id = self.send(link, Request::Auth(Auth { proof }), out);
        let state = &mut self.links[link];
        state.phase = Phase::Auth {
            id,
            client_nonce,
            beacon_nonce,
        };
        state.step_at = now;
    }

    #[allow(clippy::too_many_arguments)]
    fn on_welcome(
        &mut self,
        now: Instant,
        link: LinkId,
        id: Option<u64>,
        authenticated: bool,
        proof: Option<String>,
        position: Position,
        out: &mut Vec<Action>,
    ) {
        let verdict = match (&self.links[link].phase, &self.settings.cookie) {
            (Phase::Hello { id: expected, .. }, None) if Some(*expected) == id => Ok(()),
            (Phase::Hello { id: expected, .. }, Some(_)) if Some(*expected) == id => {
                Err("the beacon does not check cookies but this node has one; refusing to trust it")
            }
            (
                Phase::Auth {
                    id: expected,
                    client_nonce,
                    beacon_nonce,
                },
                Some(cookie),
            ) if Some(*expected) == id => {
                let proven = authenticated
                    && proof
                        .as_deref()
                        .is_some_and(|p| cookie.verify_server(client_nonce, beacon_nonce, p));
                if proven {
                    Ok(())
                } else {
                    Err("the beacon could not prove it knows the cookie; refusing it")
                }
            }
            _ => return,
        };
        if let Err(why) = verdict {
            self.refuse(now, link, why);
            return;
        }
        let state = &mut self.links[link];
        if state.refusal.take().is_some() {
            tracing::info!(beacon = %state.endpoint, "beacon accepted this node");
        }
        self.note_position(now, link, position);
        if self.settings.registration.is_some() {
            self.send_register(now, link, out);
        } else {
            let state = &mut self.links[link];
            state.phase = Phase::Ready;
            state.next_beat = now + self.settings.heartbeat;
            tracing::debug!(beacon = %state.endpoint, "session open");
            self.became_ready(now, out);
        }
    }

    fn on_error(
        &mut self,
        now: Instant,
        link: LinkId,
        id: Option<u64>,
        code: ErrorCode,
        error: String,
        out: &mut Vec<Action>,
    ) {
        let pending = self
            .pending
            .iter_mut()
            .find(|p| matches!(p.sent, Some((l, i, _)) if l == link && Some(i) == id));
        if let Some(pending) = pending {
            if code == ErrorCode::AuthRequired {
                // Asked before the session was (re)opened: ask again once it is.
                pending.sent = None;
                pending.tried[link] = false;
                if matches!(
                    self.links[link].phase,
                    Phase::Ready | Phase::Register { .. }
                ) {
                    self.restart_session(now, link, out);
                }
                return;
            }
            self.answered(
                now,
                link,
                id,
                Err(ClientError::Refused {
                    code,
                    message: error,
                }),
                out,
            );
            return;
        }
        let refused_watch = self
            .subscriptions
            .iter()
            .find(|(_, s)| s.link == Some(link) && id.is_some() && s.request == id)
            .map(|(sub, _)| *sub);
        if let (Some(sub), false) = (refused_watch, code == ErrorCode::AuthRequired) {
            tracing::warn!(beacon = %self.links[link].endpoint, %code, "watch refused: {error}; trying again");
            let entry = self.subscriptions.get_mut(&sub).expect("found");
            entry.link = None;
            entry.retry_at = Some(now + self.settings.heartbeat);
            return;
        }
        let state = &self.links[link];
        let endpoint = state.endpoint.clone();
        match (&state.phase, code) {
            (Phase::Auth { id: expected, .. }, ErrorCode::AuthFailed) if Some(*expected) == id => {
                self.refuse(
                    now,
                    link,
                    "the beacon refused this node's cookie (the cookies differ)",
                );
            }
            (Phase::Ready | Phase::Register { .. }, ErrorCode::AuthRequired) => {
                self.restart_session(now, link, out);
            }
            (Phase::Register { id: expected, .. }, ErrorCode::BadRequest)
                if Some(*expected) == id && !state.legacy && error.contains("`offers`") =>
            {
                tracing::warn!(beacon = %endpoint, "the beacon is older and does not know `offers`: registering the primary resource only (upgrade it to offer every resource)");
                self.links[link].legacy = true;
                self.send_register(now, link, out);
            }
            (Phase::Ready, ErrorCode::UnknownNode) if self.settings.registration.is_some() => {
                tracing::info!(beacon = %endpoint, "the beacon does not know this node (it restarted?); registering again");
                self.send_register(now, link, out);
            }
            (Phase::Hello { id: expected, .. }, _)
            | (Phase::Auth { id: expected, .. }, _)
            | (Phase::Register { id: expected, .. }, _)
                if Some(*expected) == id =>
            {
                let why = format!("the beacon refused the handshake: {code}: {error}");
                self.refuse(now, link, &why);
            }
            _ => {
                if code != ErrorCode::UnknownNode {
                    tracing::debug!(beacon = %endpoint, %code, "beacon error: {error}");
                }
            }
        }
    }

    fn restart_session(&mut self, now: Instant, link: LinkId, out: &mut Vec<Action>) {
        tracing::info!(beacon = %self.links[link].endpoint, "the beacon lost this node's session (it restarted?); authenticating again");
        self.link_lost(now, link, out);
        self.send_hello(now, link, out);
    }

    fn refuse(&mut self, now: Instant, link: LinkId, why: &str) {
        let state = &mut self.links[link];
        state.phase = Phase::Refused;
        state.step_at = now;
        if state.refusal.as_deref() != Some(why) {
            tracing::error!(beacon = %state.endpoint, "{why}");
            state.refusal = Some(why.to_string());
        }
    }

    fn became_ready(&mut self, now: Instant, out: &mut Vec<Action>) {
        self.attach_subscriptions(now, out);
        if self.tracks_requirements() || !self.awaiters.is_empty() {
            self.check_requirements(now);
        }
    }

    fn note_position(&mut self, now: Instant, link: LinkId, position: Position) {
        let state = &mut self.links[link];
        if state.position.as_ref() != Some(&position) {
            let first = state.position.is_none();
            state.position = Some(position);
            if !first && (self.tracks_requirements() || !self.awaiters.is_empty()) {
                self.check_requirements(now);
            }
        }
    }

    fn tracks_requirements(&self) -> bool {
        self.settings
            .registration
            .as_ref()
            .is_some_and(|r| !r.requires.is_empty())
    }

    fn check_requirements(&mut self, now: Instant) {
        if self.settings.registration.is_none() {
            return;
        }
        let in_flight = self
            .pending
            .iter()
            .any(|p| p.origin == Origin::RequirementCheck);
        if in_flight {
            self.check_queued = true;
            return;
        }
        let node = self.settings.node.clone();
        self.enqueue(now, Origin::RequirementCheck, Query::Requirements(node));
    }

    fn requirements_checked(
        &mut self,
        now: Instant,
        result: Result<Requirements, ClientError>,
        out: &mut Vec<Action>,
    ) {
        if std::mem::take(&mut self.check_queued) {
            self.check_requirements(now);
        }
        let Ok(requirements) = result else {
            return;
        };
        let state = if requirements.unmet.is_empty() {
            RequirementState::Met
        } else {
            RequirementState::Unmet(requirements.unmet.clone())
        };
        if self.tracks_requirements() && state != self.requirement_state {
            match &state {
                RequirementState::Met => {
                    let providers: Vec<String> = requirements
                        .offers
                        .iter()
                        .map(|(role, nodes)| {
                            let names: Vec<&str> = nodes.iter().map(|n| n.name.as_str()).collect();
                            format!("{role}: {}", names.join(" "))
                        })
                        .collect();
                    tracing::info!(providers = %providers.join(", "), "requirements met");
                }
                RequirementState::Unmet(unmet) => tracing::warn!(
                    unmet = %unmet.join(", "),
                    "requirements unmet: no online node offers them"
                ),
                RequirementState::Unknown => {}
            }
            self.requirement_state = state.clone();
        }
        if state == RequirementState::Met {
            for (token, _) in self.awaiters.drain(..) {
                out.push(Action::Awaited {
                    token,
                    result: Ok(requirements.clone()),
                });
            }
        }
    }

    fn answered(
        &mut self,
        now: Instant,
        link: LinkId,
        id: Option<u64>,
        result: Result<Answer, ClientError>,
        out: &mut Vec<Action>,
    ) {
        let Some(at) = self
            .pending
            .iter()
            .position(|p| matches!(p.sent, Some((l, i, _)) if l == link && Some(i) == id))
        else {
            return;
        };
        let pending = self.pending.swap_remove(at);
        match pending.origin {
            Origin::Caller(token) => out.push(Action::Answer { token, result }),
            Origin::RequirementCheck => {
                let result = result.and_then(|answer| match answer {
                    Answer::Requirements(r) => Ok(r),
                    Answer::Nodes(_) => Err(ClientError::Unexpected),
                });
                self.requirements_checked(now, result, out);
            }
        }
    }

    fn enqueue(&mut self, now: Instant, origin: Origin, query: Query) {
        self.pending.push(Pending {
            origin,
            query,
            tried: vec![false; self.links.len()],
            sent: None,
            wait_until: now + self.settings.request_timeout,
            last_error: None,
        });
    }

    /// Sends every unsent query to the best beacon it has not tried yet.
    fn dispatch(&mut self, now: Instant, out: &mut Vec<Action>) {
        for i in 0..self.pending.len() {
            if self.pending[i].sent.is_some() {
                continue;
            }
            let Some(link) = self.best_link(&self.pending[i].tried) else {
                continue;
            };
            let request = match &self.pending[i].query {
                Query::Requirements(node) => {
                    Request::GetRequirements(NodeRef { node: node.clone() })
                }
                Query::Lookup(resource) => Request::Lookup(Lookup {
                    resource: resource.clone(),
                }),
                Query::List => Request::List,
            };
            let id = self.send(link, request, out);
            let pending = &mut self.pending[i];
            pending.tried[link] = true;
            pending.sent = Some((link, id, now + self.settings.request_timeout));
        }
    }

    /// Among the ready beacons not tried, a connected one heard from most recently.
    fn best_link(&self, tried: &[bool]) -> Option<LinkId> {
        (0..self.links.len())
            .filter(|&l| !tried[l] && self.links[l].is_ready())
            .max_by_key(|&l| {
                let link = &self.links[l];
                (link.connected, link.heard_at, std::cmp::Reverse(l))
            })
    }

    fn expire(&mut self, now: Instant, out: &mut Vec<Action>) {
        let mut i = 0;
        while i < self.pending.len() {
            let pending = &mut self.pending[i];
            if let Some((link, _, deadline)) = pending.sent {
                if now >= deadline {
                    tracing::debug!(beacon = %self.links[link].endpoint, "query not answered in time; trying another beacon");
                    pending.sent = None;
                    pending.wait_until = now + self.settings.request_timeout;
                    pending.last_error = Some(ClientError::Timeout(self.settings.request_timeout));
                }
            }
            let pending = &self.pending[i];
            let exhausted = pending.tried.iter().all(|t| *t);
            let gave_up = pending.sent.is_none() && (exhausted || now >= pending.wait_until);
            if gave_up {
                let pending = self.pending.swap_remove(i);
                let error = pending
                    .last_error
                    .unwrap_or(ClientError::NoBeacon(self.settings.request_timeout));
                match pending.origin {
                    Origin::Caller(token) => out.push(Action::Answer {
                        token,
                        result: Err(error),
                    }),
                    Origin::RequirementCheck => self.requirements_checked(now, Err(error), out),
                }
                continue;
            }
            i += 1;
        }
        let mut j = 0;
        while j < self.awaiters.len() {
            if now >= self.awaiters[j].1 {
                let (token, _) = self.awaiters.swap_remove(j);
                let unmet = match &self.requirement_state {
                    RequirementState::Unmet(unmet) => unmet.clone(),
                    _ => self
                        .settings
                        .registration
                        .as_ref()
                        .map(|r| r.requires.clone())
                        .unwrap_or_default(),
                };
                out.push(Action::Awaited {
                    token,
                    result: Err(ClientError::Unmet(unmet)),
                });
                continue;
            }
            j += 1;
        }
        if let Some((_, deadline)) = &self.leaving {
            if now >= *deadline {
                self.leaving = None;
                out.push(Action::Left);
            }
        }
    }

    /// The beacon's connection is being rebuilt: what depended on it moves elsewhere.
    fn link_lost(&mut self, now: Instant, link: LinkId, out: &mut Vec<Action>) {
        for pending in &mut self.pending {
            if matches!(pending.sent, Some((l, _, _)) if l == link) {
                pending.sent = None;
                pending.wait_until = now + self.settings.request_timeout;
            }
        }
        for sub in self.subscriptions.values_mut() {
            if sub.link == Some(link) {
                sub.link = None;
            }
        }
        self.links[link].phase = Phase::Refused;
        self.attach_subscriptions(now, out);
    }

    fn attach_subscriptions(&mut self, now: Instant, out: &mut Vec<Action>) {
        let unattached: Vec<SubscriptionId> = self
            .subscriptions
            .iter()
            .filter(|(_, s)| s.link.is_none() && s.retry_at.is_none_or(|at| at <= now))
            .map(|(id, _)| *id)
            .collect();
        for sub in unattached {
            let Some(link) = self.best_link(&vec![false; self.links.len()]) else {
                return;
            };
            self.send_watch(link, sub, out);
        }
    }

    fn send_watch(&mut self, link: LinkId, sub: SubscriptionId, out: &mut Vec<Action>) {
        let Some(entry) = self.subscriptions.get_mut(&sub) else {
            return;
        };
        entry.link = Some(link);
        entry.retry_at = None;
        let request = Request::Watch(Watch {
            watch: watch_name(sub),
            resources: entry.resources.clone(),
            since: entry.position.clone(),
        });
        let id = self.send(link, request, out);
        if let Some(entry) = self.subscriptions.get_mut(&sub) {
            entry.request = Some(id);
        }
    }

    fn subscription_on(&self, link: LinkId, watch: &str) -> Option<SubscriptionId> {
        let sub = watch.strip_prefix('s')?.parse().ok().map(SubscriptionId)?;
        (self.subscriptions.get(&sub)?.link == Some(link)).then_some(sub)
    }

    fn deliver_change(
        &mut self,
        link: LinkId,
        sub: SubscriptionId,
        epoch: &str,
        event: crate::protocol::Event,
        out: &mut Vec<Action>,
    ) {
        let Some(entry) = self.subscriptions.get_mut(&sub) else {
            return;
        };
        if let Some(position) = &entry.position {
            if position.epoch == epoch && event.rev <= position.rev {
                return;
            }
        }
        entry.position = Some(Position {
            epoch: epoch.to_string(),
            rev: event.rev,
        });
        if sub == PROVIDERS {
            self.providers.event(event);
            return;
        }
        out.push(Action::Deliver {
            subscription: sub,
            event: ClusterEvent::Change {
                beacon: self.links[link].endpoint.clone(),
                epoch: epoch.to_string(),
                event,
            },
        });
    }

    fn send_hello(&mut self, now: Instant, link: LinkId, out: &mut Vec<Action>) {
        // A new session: watches held by the old one are gone and are set up again when the
        // link is ready.
        for sub in self.subscriptions.values_mut() {
            if sub.link == Some(link) {
                sub.link = None;
            }
        }
        let nonce = auth::nonce(&mut self.rng);
        let id = self.send(
            link,
            Request::Hello(Hello {
                node: Some(self.settings.node.clone()),
                nonce: nonce.clone(),
            }),
            out,
        );
        let state = &mut self.links[link];
        state.phase = Phase::Hello { id, nonce };
        state.step_at = now;
        state.legacy = false;
    }

    fn send_register(&mut self, now: Instant, link: LinkId, out: &mut Vec<Action>) {
        let Some(registration) = self.settings.registration.clone() else {
            return;
        };
        // `offers` only when the node offers more than its primary resource, so that an
        // older beacon still takes a node with one resource.
        let offers = if self.links[link].legacy || registration.offers.len() <= 1 {
            BTreeMap::new()
        } else {
            registration.offers
        };
        let request = Request::Register(Register {
            node: self.settings.node.clone(),
            resource: registration.resource,
            requires: registration.requires,
            endpoints: registration.endpoints,
            offers,
            metadata: registration.metadata,
            heartbeat_ms: self.settings.heartbeat.as_millis() as u64,
        });
        let id = self.send(link, request, out);
        let state = &mut self.links[link];
        // An update of a registration the beacon already holds, rather than a (re)registration.
        let update = matches!(
            state.phase,
            Phase::Ready | Phase::Register { update: true, .. }
        );
        state.phase = Phase::Register { id, update };
        state.step_at = now;
    }

    fn send(&mut self, link: LinkId, request: Request, out: &mut Vec<Action>) -> u64 {
        let id = self.next_id;
        self.next_id += 1;
        out.push(Action::Send {
            link,
            frame: encode_request(Some(id), &request),
        });
        id
    }
}

/// This node as the provider watches show it: its name and what it offers, when it registers.
fn own(settings: &ClientSettings) -> Option<Own> {
    let registration = settings.registration.as_ref()?;
    Some((settings.node.clone(), registration.offers.clone()))
}

/// The wire name of a subscription's watch.
fn watch_name(sub: SubscriptionId) -> String {
    format!("s{}", sub.0)
}

/// Whether moving a watch from `current` to `to` goes forward (or to another beacon run).
fn advances(current: Option<&Position>, to: &Position) -> bool {
    match current {
        None => true,
        Some(p) => p.epoch != to.epoch || p.rev < to.rev,
    }
}

/// What a client core does with an [`Offer`](crate::client::Offer) or a
/// [`Withdraw`](crate::client::Withdraw), whatever the backend: it computes the new
/// registration here and re-registers it its own way.
pub trait OfferChanges {
    /// What re-registering leads to.
    type Actions: Default;

    /// The registration as it is now and the resources a withdrawal leaves offered (see
    /// [`ClientSettings::base_resources`]); `None` for a client that registers no node.
    fn registered(&self) -> Option<(&Registration, &BTreeSet<String>)>;

    /// Registers `updated` instead (nothing when it is the same).
    fn reregister(&mut self, now: Instant, updated: Registration) -> Self::Actions;

    /// Adds `endpoints` to what this node offers for `resource` (replacing those of the same
    /// name; adding the resource when it is new) and re-registers.
    fn offer(
        &mut self,
        now: Instant,
        resource: &str,
        endpoints: Endpoints,
    ) -> Result<Self::Actions, ClientError> {
        let (registration, _) = self.registered().ok_or(ClientError::NotRegistering)?;
        let updated = with_offer(registration, resource, endpoints)?;
        Ok(self.reregister(now, updated))
    }

    /// Removes `names` from the endpoints this node offers for `resource`, or with `names`
    /// empty all of them and the resource itself when it is not one of the base resources,
    /// and re-registers. Withdrawing what is not offered changes nothing.
    fn withdraw(
        &mut self,
        now: Instant,
        resource: &str,
        names: &[String],
    ) -> Result<Self::Actions, ClientError> {
        let (registration, base) = self.registered().ok_or(ClientError::NotRegistering)?;
        match without_offer(registration, base, resource, names)? {
            Some(updated) => Ok(self.reregister(now, updated)),
            None => Ok(Self::Actions::default()),
        }
    }
}

impl OfferChanges for ClientCore {
    type Actions = Vec<Action>;

    /// Sends `updated` (the registration with other offers) to every beacon, if it differs.
    fn reregister(&mut self, now: Instant, updated: Registration) -> Vec<Action> {
        if Some(&updated) == self.settings.registration.as_ref() {
            return Vec::new();
        }
        self.settings.registration = Some(updated);
        let mut out = Vec::new();
        for link in 0..self.links.len() {
            if matches!(
                self.links[link].phase,
                Phase::Ready | Phase::Register { .. }
            ) {
                self.send_register(now, link, &mut out);
            }
        }
        self.providers.set_own(own(&self.settings));
        self.provider_updates(&mut out);
        out
    }

    fn registered(&self) -> Option<(&Registration, &BTreeSet<String>)> {
        let registration = self.settings.registration.as_ref()?;
        Some((registration, &self.settings.base_resources))
    }
}

/// `registration` with `endpoints` added to what it offers for `resource` (replacing those of
/// the same name; adding the resource when it is new), checked: an [`Offer`](crate::client::Offer)
/// as either backend applies it.
pub fn with_offer(
    registration: &Registration,
    resource: &str,
    endpoints: Endpoints,
) -> Result<Registration, ClientError> {
    check_name("resource", resource).map_err(|err| ClientError::Invalid(err.to_string()))?;
    let mut updated = registration.clone();
    updated
        .offers
        .entry(resource.to_string())
        .or_default()
        .extend(endpoints);
    checked(updated)
}

/// `registration` without `names` among the endpoints it offers for `resource`, or with
/// `names` empty without any of them, and without the resource itself unless it is one of
/// `base` (or the primary one); checked. `None` when nothing changes (it is not offered): a
/// [`Withdraw`](crate::client::Withdraw) as either backend applies it.
pub fn without_offer(
    registration: &Registration,
    base: &BTreeSet<String>,
    resource: &str,
    names: &[String],
) -> Result<Option<Registration>, ClientError> {
    check_name("resource", resource).map_err(|err| ClientError::Invalid(err.to_string()))?;
    let mut updated = registration.clone();
    let stays = base.contains(resource) || updated.resource == resource;
    match updated.offers.get_mut(resource) {
        None => return Ok(None),
        Some(endpoints) if !names.is_empty() => {
            for name in names {
                endpoints.remove(name);
            }
        }
        Some(endpoints) if stays => endpoints.clear(),
        Some(_) => {
            updated.offers.remove(resource);
        }
    }
    checked(updated).map(Some)
}

/// `updated` with the primary resource's endpoints taken from `offers`, if it passes
/// [`Registration::check`].
fn checked(mut updated: Registration) -> Result<Registration, ClientError> {
    if let Some(primary) = updated.offers.get(&updated.resource) {
        updated.endpoints = primary.clone();
    }
    updated
        .check()
        .map_err(|err: FieldError| ClientError::Invalid(err.to_string()))?;
    Ok(updated)
}

#[cfg(test)]
mod tests;
