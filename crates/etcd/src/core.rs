//! The etcd backend's logic, sans-IO: how a registration is stored (key and JSON value), how
//! etcd's keys and events become [`Node`]s, [`Event`]s and [`ClusterEvent`]s, where a watch
//! starts, the answers to lookups and requirements, and the membership state machine (lease,
//! registration, keep-alive, refusal) with the provider watches and `AwaitRequirements`
//! callers it feeds. The actor ([`crate::actor`]) runs the etcd calls this module asks for and
//! hands back their outcomes; nothing here does IO or reads a clock.
//!
//! The key layout is documented for other programs in `docs/protocols/etcd.md`.

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
pub use troupe_beacon::client::core::OfferChanges;
use troupe_beacon::client::core::{BeaconStatus, ClientStatus, RequirementState};
use troupe_beacon::client::providers::{Own, Providers};
use troupe_beacon::client::{ClientError, ClusterEvent, ProvidersChanged, Requirements, WatchId};
use troupe_beacon::protocol::{
    check_name, Endpoints, ErrorCode, Event, EventKind, Node, NodeView, Offers, Position,
    Registration, Status,
};

/// The version of the record format (`v` in the value).
pub const RECORD_VERSION: u32 = 1;
/// The largest value read as a registration; larger ones are skipped.
pub const MAX_RECORD: usize = 64 * 1024;
/// Most nodes the client keeps in its mirror; more are skipped (and logged).
pub const MAX_NODES: usize = 100_000;
/// Most `AwaitRequirements` callers waiting at once.
pub const MAX_AWAITERS: usize = 1024;
/// The name a [`ClusterEvent`] gives as its source.
pub const SOURCE: &str = "etcd";

/// The folder of the node keys under the prefix.
pub fn nodes_prefix(prefix: &str) -> String {
    format!("{prefix}nodes/")
}

/// The key of node `name`.
pub fn node_key(prefix: &str, name: &str) -> String {
    format!("{prefix}nodes/{name}")
}

/// The end of the range of keys starting with `prefix`.
pub fn prefix_end(prefix: &[u8]) -> Vec<u8> {
    let mut end = prefix.to_vec();
    while let Some(last) = end.pop() {
        if last < 0xff {
            end.push(last + 1);
            return end;
        }
    }
    vec![0]
}

/// The epoch of a position in an etcd cluster: its cluster id. Revisions only compare within
/// one etcd cluster.
pub fn epoch(cluster_id: u64) -> String {
    format!("etcd-{cluster_id:016x}")
}

/// A node's registration as stored in etcd (the value of its key), in JSON.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Record {
    /// [`RECORD_VERSION`].
    #[serde(default = "version_one")]
    pub v: u32,
    /// The node's name: the last part of its key.
    pub name: String,
    /// Its primary resource.
    pub resource: String,
    /// What it needs.
    #[serde(default)]
    pub requires: Vec<String>,
    /// The primary resource's endpoints.
    #[serde(default)]
    pub endpoints: Endpoints,
    /// Every resource offered, with its endpoints.
    #[serde(default)]
    pub offers: BTreeMap<String, Endpoints>,
    /// Free-form data.
    #[serde(default)]
    pub metadata: Map<String, Value>,
    /// The node's heartbeat interval, in milliseconds.
    pub heartbeat_ms: u64,
}

fn version_one() -> u32 {
    RECORD_VERSION
}

/// The value stored for node `name` registering `registration`.
pub fn encode(name: &str, registration: &Registration, heartbeat: Duration) -> Vec<u8> {
    let record = Record {
        v: RECORD_VERSION,
        name: name.to_string(),
        resource: registration.resource.clone(),
        requires: registration.requires.clone(),
        endpoints: registration.endpoints.clone(),
        offers: registration.offers.clone(),
        metadata: registration.metadata.clone(),
        heartbeat_ms: heartbeat.as_millis() as u64,
    };
    serde_json::to_vec(&record).unwrap_or_default()
}

/// The node stored under `key` (online: its key exists, so its lease is alive), or why the
/// entry is not a valid registration.
pub fn decode(prefix: &str, key: &[u8], value: &[u8]) -> Result<Node, String> {
    let key = std::str::from_utf8(key).map_err(|_| "the key is not UTF-8".to_string())?;
    if value.len() > MAX_RECORD {
        return Err(format!(
            "{key}: {} bytes, at most {MAX_RECORD}",
            value.len()
        ));
    }
    let record: Record =
        serde_json::from_slice(value).map_err(|err| format!("{key}: not a registration: {err}"))?;
    if record.v != RECORD_VERSION {
        return Err(format!("{key}: record version {} unknown", record.v));
    }
    check_name("name", &record.name).map_err(|err| format!("{key}: {err}"))?;
    if key != node_key(prefix, &record.name) {
        return Err(format!(
            "{key}: holds node \"{}\", whose key is {}",
            record.name,
            node_key(prefix, &record.name)
        ));
    }
    let registration = Registration {
        resource: record.resource,
        requires: record.requires,
        endpoints: record.endpoints,
        offers: record.offers,
        metadata: record.metadata,
    };
    registration
        .check()
        .map_err(|err| format!("{key}: {err}"))?;
    Ok(Node::new(NodeView::online(
        record.name,
        registration,
        record.heartbeat_ms,
    )))
}

/// One etcd event under the nodes folder, as the watch gives it.
#[derive(Debug, Clone, PartialEq)]
pub struct RawEvent {
    /// The revision of the change.
    pub rev: i64,
    /// The key.
    pub key: Vec<u8>,
    /// The new value; `None` for a deletion (or the lease's expiry).
    pub value: Option<Vec<u8>>,
    /// The value before the change, when there was one.
    pub prev: Option<Vec<u8>>,
}

/// What an etcd event means: the change to the node it concerns, with the node as it was in
/// [`Event::previous`] for a change of what it offers. `None` when it concerns no valid node
/// before or after. `skipped` is told why a value was not a valid registration.
pub fn map_event(prefix: &str, raw: &RawEvent, skipped: &mut Vec<String>) -> Option<Event> {
    let mut decode_logged = |value: &[u8]| match decode(prefix, &raw.key, value) {
        Ok(node) => Some(node),
        Err(why) => {
            skipped.push(why);
            None
        }
    };
    let previous = raw.prev.as_deref().and_then(&mut decode_logged);
    let now = raw.value.as_deref().and_then(&mut decode_logged);
    let rev = raw.rev.max(0) as u64;
    let (kind, node, previous) = match (now, previous) {
        (Some(node), None) => (EventKind::Nodeup, node, None),
        (Some(node), Some(previous)) => (EventKind::Changed, node, Some(previous)),
        (None, Some(previous)) => (EventKind::Removed, previous, None),
        (None, None) => return None,
    };
    Some(Event {
        rev,
        kind,
        node,
        previous,
    })
}

/// Where a watch that last saw `since` starts, in an etcd cluster whose epoch is `epoch` and
/// whose revision is `current`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Start {
    /// Read every node (a snapshot), then watch from the revision after the read.
    Snapshot,
    /// Watch from this revision on (the one after the last seen).
    From(i64),
}

/// A watch resumes from the revision after `since` when `since` is a position in this etcd
/// cluster that is not ahead of it; otherwise it starts with a fresh read. (A resumed watch
/// whose revision etcd has compacted away is told so by etcd and starts over with a fresh
/// read: see [`after_compaction`].)
pub fn start_from(since: Option<&Position>, epoch: &str, current: i64) -> Start {
    match since {
        Some(since) if since.epoch == epoch && since.rev <= current.max(0) as u64 => {
            Start::From(since.rev as i64 + 1)
        }
        _ => Start::Snapshot,
    }
}

/// Where a watch that etcd cancelled goes on: with a fresh read when its revision was
/// compacted (`compact_revision > 0`), else from the revision after the last it saw.
pub fn after_compaction(compact_revision: i64, last_seen: i64) -> Start {
    if compact_revision > 0 {
        Start::Snapshot
    } else {
        Start::From(last_seen + 1)
    }
}

/// Every node (of `nodes`, sorted by name) offering one of `resources` (all when empty), each
/// projected onto the first watched resource it offers: what a subscription's snapshot shows.
pub fn watched(nodes: &[Node], resources: &[String]) -> Vec<Node> {
    let mut shown: Vec<Node> = nodes
        .iter()
        .filter_map(|node| match resources.is_empty() {
            true => Some(node.clone()),
            false => Some(node.projected(node.first_offered(resources)?)),
        })
        .collect();
    shown.sort_by(|a, b| a.name.cmp(&b.name));
    shown
}

/// The online nodes offering `resource`, sorted by name, each projected onto it.
pub fn lookup<'a>(nodes: impl IntoIterator<Item = &'a Node>, resource: &str) -> Vec<Node> {
    let mut found: Vec<Node> = nodes
        .into_iter()
        .filter(|node| node.status == Status::Online && node.offers_resource(resource))
        .map(|node| node.projected(resource))
        .collect();
    found.sort_by(|a, b| a.name.cmp(&b.name));
    found
}

/// For each of `requires` of node `name`, the providers `providers` finds (never `name`
/// itself), and those nobody offers.
fn requirements_by(
    name: &str,
    requires: &[String],
    providers: impl Fn(&str) -> Vec<Node>,
) -> Requirements {
    let mut offers = Offers::new();
    let mut unmet = Vec::new();
    for resource in requires {
        let providers: Vec<Node> = providers(resource);
        if providers.is_empty() {
            unmet.push(resource.clone());
        }
        offers.insert(resource.clone(), providers);
    }
    Requirements {
        node: name.to_string(),
        offers,
        unmet,
    }
}

/// The requirements of node `name` among `nodes`; refused as the beacon refuses it when no
/// such node is registered.
pub fn requirements_of(name: &str, nodes: &[&Node]) -> Result<Requirements, ClientError> {
    let node = nodes
        .iter()
        .find(|n| n.name == name)
        .ok_or_else(|| unknown_node(name))?;
    Ok(requirements_by(name, &node.requires, |resource| {
        lookup(nodes.iter().copied().filter(|n| n.name != name), resource)
    }))
}

fn unknown_node(name: &str) -> ClientError {
    ClientError::Refused {
        code: ErrorCode::UnknownNode,
        message: format!("no node \"{name}\" is registered in etcd"),
    }
}

/// Every resource `node` offers: its primary one and those of its offers.
fn resources_of(node: &Node) -> impl Iterator<Item = &String> {
    std::iter::once(&node.resource).chain(node.offers.keys())
}

/// An etcd call the actor must make for the membership.
#[derive(Debug, Clone, PartialEq)]
pub enum Op {
    /// Open the client (connect, and authenticate when a user is set).
    Connect,
    /// Grant a lease of `ttl` seconds.
    Grant {
        /// Its time to live.
        ttl: i64,
    },
    /// Put `value` under `key` with `lease`, unless another lease holds the key.
    Register {
        /// The lease.
        lease: i64,
        /// The node's key.
        key: String,
        /// Its registration.
        value: Vec<u8>,
    },
    /// Renew `lease`.
    KeepAlive {
        /// The lease.
        lease: i64,
    },
}

/// The outcome of [`Op::Register`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Claim {
    /// The key holds this node's registration, on its lease.
    Put,
    /// Another live lease holds the key: another node of that name is registered.
    HeldBy {
        /// The other lease.
        lease: i64,
    },
}

/// Whether a key held by `holder` (its lease; 0 for none) may be written by this node, whose
/// lease is `ours`: a node never takes over a name held on another lease.
pub fn may_claim(holder: i64, ours: i64) -> bool {
    holder == ours
}

/// What the actor should log: a change in the membership worth an operator's attention.
#[derive(Debug, Clone, PartialEq)]
pub enum Note {
    /// etcd stopped answering: the sentence says why. Services run on; the node re-registers
    /// when etcd answers again.
    Unreachable(String),
    /// etcd answers again, after being unreachable for this long.
    Reachable(Duration),
    /// The node is registered under this lease (again, after `again`).
    Registered {
        /// The lease.
        lease: i64,
        /// Whether it had been registered before in this run.
        again: bool,
    },
    /// The lease had expired (the node was cut off from etcd for longer than its TTL): a new
    /// one is taken and the node registers again.
    LeaseLost,
    /// Another live node holds the name.
    Refused(String),
}

/// How the membership is set up.
#[derive(Debug, Clone)]
pub struct Settings {
    /// This node's name.
    pub node: String,
    /// What it registers; `None` for a client that only asks.
    pub registration: Option<Registration>,
    /// Resources a `Withdraw` leaves offered (see `ClientSettings::base_resources`).
    pub base_resources: BTreeSet<String>,
    /// Heartbeat interval: how often the lease is renewed.
    pub heartbeat: Duration,
    /// Heartbeat intervals in the lease's time to live.
    pub liveness: u32,
    /// The key prefix.
    pub prefix: String,
    /// The etcd endpoints, for the status.
    pub endpoints: Vec<String>,
}

impl Settings {
    /// The lease's time to live in seconds: the liveness window, rounded up.
    pub fn ttl(&self) -> i64 {
        let window = self.heartbeat.as_millis() as u64 * u64::from(self.liveness);
        window.div_ceil(1000).max(1) as i64
    }
}

/// What the actor must do besides the etcd calls.
#[derive(Debug, PartialEq)]
pub enum Action {
    /// Wake the `AwaitRequirements` caller `token`.
    Awaited {
        /// The caller.
        token: u64,
        /// Its answer.
        result: Result<Requirements, ClientError>,
    },
    /// Tell a provider watch its new picture.
    Providers {
        /// The watch.
        watch: WatchId,
        /// Its picture.
        changed: ProvidersChanged,
    },
}

/// The etcd client's state: the membership (connection, lease, registration), the mirror of
/// every node the client's own watch keeps, the provider watches and the awaiting callers.
#[derive(Debug)]
pub struct EtcdCore {
    settings: Settings,
    connected: bool,
    lease: Option<i64>,
    /// The value last put under the lease.
    stored: Option<Vec<u8>>,
    registered_once: bool,
    busy: bool,
    next_at: Instant,
    /// `None` until the first call ends.
    reachable: Option<bool>,
    unreachable_since: Option<Instant>,
    last_ok: Option<Instant>,
    error: Option<String>,
    refusal: Option<String>,
    mirror: BTreeMap<String, Node>,
    /// Resource → the names of the mirrored nodes offering it, so that a lookup costs what its
    /// answer holds rather than a pass over every node.
    offered: BTreeMap<String, BTreeSet<String>>,
    mirror_fresh: bool,
    position: Option<Position>,
    providers: Providers,
    awaiters: Vec<(u64, Instant)>,
    requirement_state: RequirementState,
}

impl EtcdCore {
    /// A client not connected yet.
    pub fn new(mut settings: Settings, now: Instant) -> Self {
        if let Some(registration) = &mut settings.registration {
            registration.normalize();
        }
        let mut providers = Providers::new(own(&settings));
        providers.resubscribed(Some(Vec::new()));
        EtcdCore {
            settings,
            connected: false,
            lease: None,
            stored: None,
            registered_once: false,
            busy: false,
            next_at: now,
            reachable: None,
            unreachable_since: None,
            last_ok: None,
            error: None,
            refusal: None,
            mirror: BTreeMap::new(),
            offered: BTreeMap::new(),
            mirror_fresh: false,
            position: None,
            providers,
            awaiters: Vec::new(),
            requirement_state: RequirementState::Unknown,
        }
    }

    /// The settings.
    pub fn settings(&self) -> &Settings {
        &self.settings
    }

    /// The lease held, if any.
    pub fn lease(&self) -> Option<i64> {
        self.lease
    }

    /// Whether the node's registration is in etcd, as last known.
    pub fn registered(&self) -> bool {
        self.lease.is_some() && self.stored.is_some() && self.stored == self.desired()
    }

    fn desired(&self) -> Option<Vec<u8>> {
        let registration = self.settings.registration.as_ref()?;
        Some(encode(
            &self.settings.node,
            registration,
            self.settings.heartbeat,
        ))
    }

    /// The next etcd call the membership needs now, if any (one at a time).
    pub fn next_op(&mut self, now: Instant) -> Option<Op> {
        if self.busy || now < self.next_at {
            return None;
        }
        let op = if !self.connected {
            Op::Connect
        } else if let Some(value) = self.desired() {
            match self.lease {
                None => Op::Grant {
                    ttl: self.settings.ttl(),
                },
                Some(lease) if self.stored.as_ref() != Some(&value) => Op::Register {
                    lease,
                    key: node_key(&self.settings.prefix, &self.settings.node),
                    value,
                },
                Some(lease) => Op::KeepAlive { lease },
            }
        } else {
            return None;
        };
        self.busy = true;
        Some(op)
    }

    fn succeeded(&mut self, now: Instant, notes: &mut Vec<Note>) {
        if self.reachable == Some(false) {
            let down = self
                .unreachable_since
                .map(|since| now.saturating_duration_since(since))
                .unwrap_or_default();
            notes.push(Note::Reachable(down));
        }
        self.reachable = Some(true);
        self.unreachable_since = None;
        self.last_ok = Some(now);
        self.error = None;
    }

    fn failed(&mut self, now: Instant, why: String, notes: &mut Vec<Note>) {
        if self.reachable != Some(false) {
            notes.push(Note::Unreachable(why.clone()));
            self.unreachable_since = Some(now);
        }
        self.reachable = Some(false);
        self.error = Some(why);
        self.busy = false;
        self.next_at = now + self.settings.heartbeat;
    }

    /// [`Op::Connect`] ended.
    pub fn connected(&mut self, now: Instant, result: Result<(), String>) -> Vec<Note> {
        let mut notes = Vec::new();
        match result {
            Ok(()) => {
                self.connected = true;
                self.busy = false;
                self.next_at = now;
            }
            Err(why) => self.failed(now, why, &mut notes),
        }
        notes
    }

    /// [`Op::Grant`] ended.
    pub fn granted(&mut self, now: Instant, result: Result<i64, String>) -> Vec<Note> {
        let mut notes = Vec::new();
        match result {
            Ok(lease) => {
                self.succeeded(now, &mut notes);
                self.lease = Some(lease);
                self.stored = None;
                self.busy = false;
                self.next_at = now;
            }
            Err(why) => self.failed(now, why, &mut notes),
        }
        notes
    }

    /// [`Op::Register`] of `value` ended.
    pub fn claimed(
        &mut self,
        now: Instant,
        value: Vec<u8>,
        result: Result<Claim, String>,
    ) -> Vec<Note> {
        let mut notes = Vec::new();
        match result {
            Ok(Claim::Put) => {
                self.succeeded(now, &mut notes);
                if self.stored.is_none() {
                    notes.push(Note::Registered {
                        lease: self.lease.unwrap_or_default(),
                        again: self.registered_once,
                    });
                }
                self.registered_once = true;
                self.stored = Some(value);
                self.refusal = None;
                self.busy = false;
                self.next_at = now + self.settings.heartbeat;
            }
            Ok(Claim::HeldBy { lease }) => {
                self.succeeded(now, &mut notes);
                let refusal = format!(
                    "the name \"{}\" is held by another live node (key {}, lease {lease:x}); give this node another name, or stop the other one (its entry goes within its lease's TTL)",
                    self.settings.node,
                    node_key(&self.settings.prefix, &self.settings.node),
                );
                if self.refusal.as_ref() != Some(&refusal) {
                    notes.push(Note::Refused(refusal.clone()));
                }
                self.refusal = Some(refusal);
                self.stored = None;
                self.busy = false;
                self.next_at = now + self.settings.heartbeat;
            }
            Err(why) => self.failed(now, why, &mut notes),
        }
        notes
    }

    /// [`Op::KeepAlive`] ended: the lease's remaining TTL (0: it expired, as it does while the
    /// node is cut off from etcd for longer than the TTL).
    pub fn kept_alive(&mut self, now: Instant, result: Result<i64, String>) -> Vec<Note> {
        let mut notes = Vec::new();
        match result {
            Ok(ttl) if ttl > 0 => {
                self.succeeded(now, &mut notes);
                self.busy = false;
                self.next_at = now + self.settings.heartbeat;
            }
            Ok(_) => {
                self.succeeded(now, &mut notes);
                notes.push(Note::LeaseLost);
                self.lease = None;
                self.stored = None;
                self.busy = false;
                self.next_at = now;
            }
            Err(why) => self.failed(now, why, &mut notes),
        }
        notes
    }

    /// A query or watch could not reach etcd.
    pub fn unreachable(&mut self, now: Instant, why: String) -> Vec<Note> {
        let mut notes = Vec::new();
        let busy = self.busy;
        let next_at = self.next_at;
        self.failed(now, why, &mut notes);
        self.busy = busy;
        self.next_at = next_at;
        notes
    }

    /// Whether etcd answered the last call.
    pub fn is_reachable(&self) -> bool {
        self.reachable != Some(false)
    }

    /// The mirror's watch read every node, at `position`.
    pub fn mirror_snapshot(&mut self, position: Position, nodes: Vec<Node>) -> Vec<Action> {
        self.mirror = BTreeMap::new();
        self.offered = BTreeMap::new();
        for node in nodes.into_iter().take(MAX_NODES) {
            self.mirror_put(node);
        }
        self.mirror_fresh = true;
        self.position = Some(position);
        self.providers
            .snapshot(self.mirror.values().cloned().collect());
        self.providers.set_reachable(true);
        self.changed()
    }

    /// The mirror's watch saw `events`.
    pub fn mirror_events(&mut self, epoch: &str, events: Vec<Event>) -> Vec<Action> {
        for event in events {
            self.position = Some(Position {
                epoch: epoch.to_string(),
                rev: event.rev,
            });
            match event.kind {
                EventKind::Removed => self.mirror_remove(&event.node.name),
                _ if self.mirror.len() >= MAX_NODES
                    && !self.mirror.contains_key(&event.node.name) => {}
                _ => self.mirror_put(event.node.clone()),
            }
            self.providers.event(event);
        }
        self.providers.set_reachable(true);
        self.changed()
    }

    /// The mirror's watch is in place again after its snapshot, resuming from the last
    /// revision seen: the mirror is current (the changes missed come as events).
    pub fn mirror_watching(&mut self) -> Vec<Action> {
        if self.position.is_none() || self.mirror_fresh {
            return Vec::new();
        }
        self.mirror_fresh = true;
        self.providers.resumed();
        self.providers.set_reachable(true);
        self.changed()
    }

    /// The mirror's watch is down: the provider watches are told etcd is unreachable.
    pub fn mirror_down(&mut self) -> Vec<Action> {
        self.mirror_fresh = false;
        self.providers.set_reachable(false);
        self.changed()
    }

    /// Every node as the mirror holds it, while its watch keeps it current: queries are
    /// answered from it without a read. `None` before its first snapshot and while the watch is
    /// down.
    pub fn mirrored(&self) -> Option<Vec<&Node>> {
        self.mirror_fresh.then(|| self.mirror.values().collect())
    }

    /// [`lookup`] from the mirror, through its index; `None` when the mirror is not current.
    pub fn mirrored_lookup(&self, resource: &str) -> Option<Vec<Node>> {
        self.mirror_fresh
            .then(|| self.indexed_lookup(resource, None))
    }

    /// [`requirements_of`] from the mirror, through its index; `None` when the mirror is not
    /// current. This node's own requirements come from its registration, not from its entry in
    /// the mirror, which the watch may not have brought yet just after it registered.
    pub fn mirrored_requirements(&self, name: &str) -> Option<Result<Requirements, ClientError>> {
        if !self.mirror_fresh {
            return None;
        }
        if name == self.settings.node {
            if let Some(own) = self.own_requirements() {
                return Some(Ok(own));
            }
        }
        let Some(node) = self.mirror.get(name) else {
            return Some(Err(unknown_node(name)));
        };
        Some(Ok(requirements_by(name, &node.requires, |resource| {
            self.indexed_lookup(resource, Some(name))
        })))
    }

    /// The online mirrored nodes offering `resource` (but `except`), sorted by name, each
    /// projected onto it.
    fn indexed_lookup(&self, resource: &str, except: Option<&str>) -> Vec<Node> {
        let Some(names) = self.offered.get(resource) else {
            return Vec::new();
        };
        names
            .iter()
            .filter(|name| Some(name.as_str()) != except)
            .filter_map(|name| self.mirror.get(name))
            .filter(|node| node.status == Status::Online)
            .map(|node| node.projected(resource))
            .collect()
    }

    fn mirror_put(&mut self, node: Node) {
        self.mirror_remove(&node.name);
        for resource in resources_of(&node) {
            self.offered
                .entry(resource.clone())
                .or_default()
                .insert(node.name.clone());
        }
        self.mirror.insert(node.name.clone(), node);
    }

    fn mirror_remove(&mut self, name: &str) {
        let Some(old) = self.mirror.remove(name) else {
            return;
        };
        for resource in resources_of(&old) {
            if let Some(names) = self.offered.get_mut(resource) {
                names.remove(name);
                if names.is_empty() {
                    self.offered.remove(resource);
                }
            }
        }
    }

    /// Where the mirror stands.
    pub fn position(&self) -> Option<&Position> {
        self.position.as_ref()
    }

    fn own_requirements(&self) -> Option<Requirements> {
        let registration = self.settings.registration.as_ref()?;
        let name = &self.settings.node;
        Some(requirements_by(name, &registration.requires, |resource| {
            self.indexed_lookup(resource, Some(name))
        }))
    }

    /// Re-evaluates the requirements and the provider pictures after a change.
    fn changed(&mut self) -> Vec<Action> {
        let mut out = Vec::new();
        if self.mirror_fresh {
            if let Some(requirements) = self.own_requirements() {
                self.requirement_state = match requirements.unmet.is_empty() {
                    true => RequirementState::Met,
                    false => RequirementState::Unmet(requirements.unmet.clone()),
                };
                if requirements.unmet.is_empty() {
                    for (token, _) in self.awaiters.drain(..) {
                        out.push(Action::Awaited {
                            token,
                            result: Ok(requirements.clone()),
                        });
                    }
                }
            }
        }
        for (watch, changed) in self.providers.updates() {
            out.push(Action::Providers { watch, changed });
        }
        out
    }

    /// Waits until every requirement has an online provider, until `deadline` at the latest.
    pub fn await_requirements(
        &mut self,
        token: u64,
        deadline: Instant,
    ) -> Result<Vec<Action>, ClientError> {
        if self.settings.registration.is_none() {
            return Err(ClientError::NotRegistering);
        }
        if self.awaiters.len() >= MAX_AWAITERS {
            return Err(ClientError::Busy(MAX_AWAITERS));
        }
        self.awaiters.push((token, deadline));
        Ok(self.changed())
    }

    /// Answers the callers whose wait is over.
    pub fn tick(&mut self, now: Instant) -> Vec<Action> {
        let mut out = Vec::new();
        let requires = self
            .settings
            .registration
            .as_ref()
            .map(|r| r.requires.clone())
            .unwrap_or_default();
        let unmet = match &self.requirement_state {
            RequirementState::Unmet(unmet) => unmet.clone(),
            RequirementState::Met => Vec::new(),
            RequirementState::Unknown => requires,
        };
        self.awaiters.retain(|(token, deadline)| {
            if now < *deadline {
                return true;
            }
            out.push(Action::Awaited {
                token: *token,
                result: Err(ClientError::Unmet(unmet.clone())),
            });
            false
        });
        out
    }

    /// Registers `updated` from the next call on, if it differs.
    fn update_registration(&mut self, now: Instant, updated: Registration) -> Vec<Action> {
        if Some(&updated) == self.settings.registration.as_ref() {
            return Vec::new();
        }
        self.settings.registration = Some(updated);
        // The next call puts the new value (it differs from the one stored).
        if !self.busy {
            self.next_at = now;
        }
        self.providers.set_own(own(&self.settings));
        self.changed()
    }

    /// Follows the providers of `resources` for watch `id`: its picture comes once known.
    pub fn watch_providers(
        &mut self,
        id: WatchId,
        watched: Vec<String>,
    ) -> Result<Vec<Action>, String> {
        self.providers.add(id, watched)?;
        Ok(self.changed())
    }

    /// Ends provider watch `id`.
    pub fn unwatch_providers(&mut self, id: WatchId) {
        self.providers.remove(id);
    }

    /// Forgets the registration: the node left (its lease was revoked).
    pub fn left(&mut self) {
        self.lease = None;
        self.stored = None;
        self.settings.registration = None;
    }

    /// What the client knows, for operators; `subscriptions` is how many are open.
    pub fn status(&self, now: Instant, subscriptions: usize) -> ClientStatus {
        let state = if !self.is_reachable() {
            "unreachable"
        } else if self.refusal.is_some() {
            "refused"
        } else if self.registered() {
            "registered"
        } else {
            "unregistered"
        };
        let link = BeaconStatus {
            endpoint: self.settings.endpoints.join(","),
            state,
            connected: self.is_reachable() && self.connected,
            refusal: self.refusal.clone().or_else(|| self.error.clone()),
            last_heard_ms_ago: self
                .last_ok
                .map(|at| now.saturating_duration_since(at).as_millis() as u64),
        };
        ClientStatus::new(
            "etcd",
            &self.settings.node,
            self.settings.registration.as_ref(),
            vec![link],
            &self.requirement_state,
            (subscriptions, self.providers.len()),
        )
    }
}
impl OfferChanges for EtcdCore {
    type Actions = Vec<Action>;

    fn registered(&self) -> Option<(&Registration, &BTreeSet<String>)> {
        let settings = &self.settings;
        Some((settings.registration.as_ref()?, &settings.base_resources))
    }

    /// The next call puts `updated` (it differs from the value stored).
    fn reregister(&mut self, now: Instant, updated: Registration) -> Vec<Action> {
        self.update_registration(now, updated)
    }
}

fn own(settings: &Settings) -> Option<Own> {
    let registration = settings.registration.as_ref()?;
    Some((settings.node.clone(), registration.offers.clone()))
}

/// The events of a subscription of `resources` for the etcd events `raw` at `epoch`.
pub fn subscription_events(
    prefix: &str,
    epoch: &str,
    resources: &[String],
    raw: &[RawEvent],
    skipped: &mut Vec<String>,
) -> Vec<ClusterEvent> {
    raw.iter()
        .filter_map(|raw| map_event(prefix, raw, skipped))
        .filter_map(|event| event.for_watch(resources))
        .map(|event| ClusterEvent::Change {
            beacon: SOURCE.to_string(),
            epoch: epoch.to_string(),
            event,
        })
        .collect()
}

/// The nodes of a range read, sorted by name; invalid entries are told to `skipped`.
pub fn decode_all(
    prefix: &str,
    entries: impl IntoIterator<Item = (Vec<u8>, Vec<u8>)>,
    skipped: &mut Vec<String>,
) -> Vec<Node> {
    let mut nodes: Vec<Node> = entries
        .into_iter()
        .filter_map(|(key, value)| match decode(prefix, &key, &value) {
            Ok(node) => Some(node),
            Err(why) => {
                skipped.push(why);
                None
            }
        })
        .take(MAX_NODES)
        .collect();
    nodes.sort_by(|a, b| a.name.cmp(&b.name));
    nodes
}

#[cfg(test)]
mod tests;
