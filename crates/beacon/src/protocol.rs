//! The beacon's wire protocol: one JSON document per ZeroMQ frame, described in
//! `docs/protocols/beacon.md`.
//!
//! Every message is a JSON object with `"v"` (the protocol version, [`VERSION`]), `"op"` (what
//! it is) and, on requests, an optional `"id"` (any unsigned integer) that the beacon copies into
//! its reply so that a client may have several requests in flight. This module holds the message
//! types, their encoding, and the decoding of requests with errors that name what was wrong —
//! the field, the expected type, the limit exceeded.

use std::collections::BTreeMap;
use std::fmt;
use std::sync::{Arc, OnceLock};

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;
use serde_json::{Map, Value};

/// The protocol version every message carries in `"v"`.
pub const VERSION: u32 = 1;

/// Longest node, resource, endpoint and watch name, in bytes.
pub const MAX_NAME: usize = 128;
/// Longest endpoint address, in bytes.
pub const MAX_ADDRESS: usize = 512;
/// Most requirements one node may declare.
pub const MAX_REQUIRES: usize = 64;
/// Most endpoints one node may declare for one resource.
pub const MAX_ENDPOINTS: usize = 64;
/// Most resources one node may offer (its primary `resource` and the keys of `offers`).
pub const MAX_OFFERS: usize = 64;
/// Most endpoints one node may declare over all the resources it offers.
pub const MAX_TOTAL_ENDPOINTS: usize = 256;
/// Largest metadata object, in bytes of compact JSON.
pub const MAX_METADATA: usize = 8 * 1024;
/// Most resources one watch may filter on.
pub const MAX_WATCH_RESOURCES: usize = 64;
/// Shortest heartbeat interval a node may declare, in milliseconds.
pub const MIN_HEARTBEAT_MS: u64 = 10;
/// Longest heartbeat interval a node may declare, in milliseconds (10 minutes).
pub const MAX_HEARTBEAT_MS: u64 = 600_000;

/// A value that breaks a rule, with the field it is in (`requires[2]`, `endpoints.frontend`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FieldError {
    /// Path of the field.
    pub field: String,
    /// What is wrong with it.
    pub message: String,
}

impl FieldError {
    fn new(field: impl Into<String>, message: impl Into<String>) -> Self {
        FieldError {
            field: field.into(),
            message: message.into(),
        }
    }
}

impl fmt::Display for FieldError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.field, self.message)
    }
}

/// Endpoints: name → address.
pub type Endpoints = BTreeMap<String, String>;

/// What a node offers and needs, as it registers it.
///
/// A node offers its primary `resource` and every key of `offers`, each with its own
/// endpoints. `endpoints` are the primary resource's. [`Registration::normalize`] makes the two
/// agree: `offers` then holds every offered resource, the primary one included.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Registration {
    /// The node's primary resource (`"broker"`): what a client that knows one resource per node
    /// sees.
    pub resource: String,
    /// Resources this node needs.
    #[serde(default)]
    pub requires: Vec<String>,
    /// The primary resource's endpoints: name → address.
    #[serde(default)]
    pub endpoints: Endpoints,
    /// Every resource this node offers, each with its endpoints.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub offers: BTreeMap<String, Endpoints>,
    /// Free-form data about the node.
    #[serde(default)]
    pub metadata: Map<String, Value>,
}

impl Registration {
    /// Checks every name, address and limit; the error names the offending field.
    pub fn check(&self) -> Result<(), FieldError> {
        check_name("resource", &self.resource)?;
        if self.requires.len() > MAX_REQUIRES {
            return Err(FieldError::new(
                "requires",
                format!(
                    "{} entries, at most {MAX_REQUIRES} allowed",
                    self.requires.len()
                ),
            ));
        }
        for (i, role) in self.requires.iter().enumerate() {
            check_name(&format!("requires[{i}]"), role)?;
        }
        for (resource, endpoints) in &self.offers {
            check_name("offers", resource)?;
            check_endpoints(&format!("offers.{resource}"), endpoints)?;
        }
        check_endpoints("endpoints", &self.endpoints)?;
        if let Some(primary) = self.offers.get(&self.resource) {
            if !self.endpoints.is_empty() && *primary != self.endpoints {
                return Err(FieldError::new(
                    "endpoints",
                    format!(
                        "differs from offers.{}; give the primary resource's endpoints in one of the two (or the same in both)",
                        self.resource
                    ),
                ));
            }
        }
        let offered = self.offers.len() + usize::from(!self.offers.contains_key(&self.resource));
        if offered > MAX_OFFERS {
            return Err(FieldError::new(
                "offers",
                format!("{offered} resources offered, at most {MAX_OFFERS} allowed"),
            ));
        }
        let mut total = if self.offers.contains_key(&self.resource) {
            0
        } else {
            self.endpoints.len()
        };
        total += self.offers.values().map(BTreeMap::len).sum::<usize>();
        if total > MAX_TOTAL_ENDPOINTS {
            return Err(FieldError::new(
                "offers",
                format!(
                    "{total} endpoints over all offered resources, at most {MAX_TOTAL_ENDPOINTS} allowed"
                ),
            ));
        }
        let metadata_len = serde_json::to_vec(&self.metadata)
            .map(|v| v.len())
            .unwrap_or(usize::MAX);
        if metadata_len > MAX_METADATA {
            return Err(FieldError::new(
                "metadata",
                format!("{metadata_len} bytes of JSON, at most {MAX_METADATA} allowed"),
            ));
        }
        Ok(())
    }

    /// Makes `offers` hold every offered resource and `endpoints` the primary resource's: the
    /// primary resource is added to `offers` with `endpoints` when missing, and `endpoints` is
    /// taken from `offers` otherwise (see [`Registration::check`] for the two disagreeing).
    pub fn normalize(&mut self) {
        match self.offers.get(&self.resource) {
            Some(primary) => self.endpoints = primary.clone(),
            None => {
                self.offers
                    .insert(self.resource.clone(), self.endpoints.clone());
            }
        }
    }

    /// Whether the node offers `resource`.
    pub fn offers_resource(&self, resource: &str) -> bool {
        self.resource == resource || self.offers.contains_key(resource)
    }
}

fn check_endpoints(field: &str, endpoints: &Endpoints) -> Result<(), FieldError> {
    if endpoints.len() > MAX_ENDPOINTS {
        return Err(FieldError::new(
            field,
            format!(
                "{} entries, at most {MAX_ENDPOINTS} allowed",
                endpoints.len()
            ),
        ));
    }
    for (name, address) in endpoints {
        check_name(field, name)?;
        check_address(&format!("{field}.{name}"), address)?;
    }
    Ok(())
}

/// Checks a node, resource, endpoint or watch name: 1 to [`MAX_NAME`] bytes of ASCII letters,
/// digits and `- _ . @ : /`.
pub fn check_name(field: &str, name: &str) -> Result<(), FieldError> {
    if name.is_empty() {
        return Err(FieldError::new(field, "a name must not be empty"));
    }
    if name.len() > MAX_NAME {
        return Err(FieldError::new(
            field,
            format!(
                "\"{name}\" is {} bytes long, at most {MAX_NAME} allowed",
                name.len()
            ),
        ));
    }
    if let Some(bad) = name
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || "-_.@:/".contains(*c)))
    {
        return Err(FieldError::new(
            field,
            format!(
                "\"{}\" contains {bad:?}; use letters, digits and - _ . @ : / only",
                name.escape_debug()
            ),
        ));
    }
    Ok(())
}

/// Checks an endpoint address: 1 to [`MAX_ADDRESS`] bytes, no control characters or spaces.
pub fn check_address(field: &str, address: &str) -> Result<(), FieldError> {
    if address.is_empty() {
        return Err(FieldError::new(field, "the address must not be empty"));
    }
    if address.len() > MAX_ADDRESS {
        return Err(FieldError::new(
            field,
            format!(
                "the address is {} bytes long, at most {MAX_ADDRESS} allowed",
                address.len()
            ),
        ));
    }
    if address.chars().any(|c| c.is_control() || c.is_whitespace()) {
        return Err(FieldError::new(
            field,
            format!(
                "the address \"{}\" contains a space or control character",
                address.escape_debug()
            ),
        ));
    }
    Ok(())
}

/// Whether a node is currently offered.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Status {
    /// Heartbeating: offered to nodes that require its resource.
    Online,
    /// Missed `liveness` heartbeats (or restored from a snapshot and not yet heard from):
    /// never offered; removed after `offline_ttl`.
    Offline,
}

/// A registered node as the beacon shows it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct NodeView {
    /// The node's name, unique in the cluster.
    pub name: String,
    /// Its primary resource; in answers about one resource (`lookup`, `get_requirements`, a
    /// filtered watch) that resource: see [`Node::projected`].
    pub resource: String,
    /// See [`Registration::requires`].
    pub requires: Vec<String>,
    /// The endpoints of `resource`.
    pub endpoints: Endpoints,
    /// Every resource the node offers, each with its endpoints (`resource` included). Absent
    /// from nodes shown by older beacons.
    #[serde(default)]
    pub offers: BTreeMap<String, Endpoints>,
    /// See [`Registration::metadata`].
    pub metadata: Map<String, Value>,
    /// Online or offline.
    pub status: Status,
    /// The node's declared heartbeat interval.
    pub heartbeat_ms: u64,
    /// Milliseconds since the beacon last heard from the node (only in `list` replies).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_seen_ms: Option<u64>,
}

impl NodeView {
    /// Node `name`, online, as it registers `registration` (normalized here) with a heartbeat
    /// of `heartbeat_ms`.
    pub fn online(name: String, mut registration: Registration, heartbeat_ms: u64) -> NodeView {
        registration.normalize();
        NodeView {
            name,
            resource: registration.resource,
            requires: registration.requires,
            endpoints: registration.endpoints,
            offers: registration.offers,
            metadata: registration.metadata,
            status: Status::Online,
            heartbeat_ms,
            last_seen_ms: None,
        }
    }

    /// Whether the node offers `resource`.
    pub fn offers_resource(&self, resource: &str) -> bool {
        self.resource == resource || self.offers.contains_key(resource)
    }

    /// The node's endpoints for `resource`, if it offers it.
    pub fn endpoints_for(&self, resource: &str) -> Option<&Endpoints> {
        if self.resource == resource {
            Some(&self.endpoints)
        } else {
            self.offers.get(resource)
        }
    }

    /// Every resource the node offers: its primary one first unless `offers` lists it, then
    /// the keys of `offers` in order.
    pub fn resources(&self) -> impl Iterator<Item = &str> {
        let primary = (!self.offers.contains_key(&self.resource)).then_some(self.resource.as_str());
        primary
            .into_iter()
            .chain(self.offers.keys().map(String::as_str))
    }

    /// The first of `resources` the node offers.
    pub fn first_offered<'a>(&self, resources: &'a [String]) -> Option<&'a str> {
        resources
            .iter()
            .find(|r| self.offers_resource(r))
            .map(String::as_str)
    }

    /// The node as a client that knows one resource per node should see it when it asks about
    /// `resource`: with `resource` as its resource and that resource's endpoints.
    pub fn projected(&self, resource: &str) -> NodeView {
        NodeView {
            resource: resource.to_string(),
            endpoints: self.endpoints_for(resource).cloned().unwrap_or_default(),
            ..self.clone()
        }
    }
}

/// A [`NodeView`] as the beacon shares it between its registry and every message that lists
/// it: cheap to clone, immutable, and encoded to JSON once — a reply that lists nodes copies
/// their encodings instead of serializing each node again. Its projections onto the other
/// resources it offers ([`Node::projected`]) are made once too. Derefs to [`NodeView`].
#[derive(Clone)]
pub struct Node(Arc<SharedNode>);

struct SharedNode {
    view: NodeView,
    json: OnceLock<Option<Box<RawValue>>>,
    projections: OnceLock<BTreeMap<String, Node>>,
}

impl Node {
    /// Shares `view`.
    pub fn new(view: NodeView) -> Node {
        Node(Arc::new(SharedNode {
            view,
            json: OnceLock::new(),
            projections: OnceLock::new(),
        }))
    }

    /// The node.
    pub fn view(&self) -> &NodeView {
        &self.0.view
    }

    /// The node as shown to a client asking about `resource` ([`NodeView::projected`]): itself
    /// when `resource` is its primary resource (or one it does not offer), otherwise a shared
    /// projection made once per node and resource.
    pub fn projected(&self, resource: &str) -> Node {
        let view = &self.0.view;
        if view.resource == resource || !view.offers.contains_key(resource) {
            return self.clone();
        }
        let projections = self.0.projections.get_or_init(|| {
            view.offers
                .keys()
                .filter(|r| **r != view.resource)
                .map(|r| (r.clone(), Node::new(view.projected(r))))
                .collect()
        });
        projections
            .get(resource)
            .cloned()
            .unwrap_or_else(|| self.clone())
    }
}

impl std::ops::Deref for Node {
    type Target = NodeView;

    fn deref(&self) -> &NodeView {
        &self.0.view
    }
}

impl PartialEq for Node {
    fn eq(&self, other: &Node) -> bool {
        self.0.view == other.0.view
    }
}

impl fmt::Debug for Node {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.view.fmt(f)
    }
}

impl Serialize for Node {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let json = self
            .0
            .json
            .get_or_init(|| serde_json::value::to_raw_value(&self.0.view).ok());
        match json {
            Some(json) => json.serialize(serializer),
            None => self.0.view.serialize(serializer),
        }
    }
}

impl<'de> Deserialize<'de> for Node {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Node, D::Error> {
        NodeView::deserialize(deserializer).map(Node::new)
    }
}

/// What happened to a node.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum EventKind {
    /// Registered, or back online after being offline; for a filtered watch, also a node that
    /// now offers a watched resource and did not before.
    Nodeup,
    /// Missed `liveness` heartbeats: no longer offered.
    Nodedown,
    /// Re-registered with different resources, endpoints, requirements or metadata while online.
    Changed,
    /// Deregistered, or offline for longer than `offline_ttl`; for a filtered watch, also a node
    /// that no longer offers any watched resource.
    Removed,
}

/// One change to the registry. Revisions grow by one per change, across all resources.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Event {
    /// The registry's revision after this change.
    pub rev: u64,
    /// What happened.
    pub kind: EventKind,
    /// The node as it is after the change (for `removed`: as it was).
    pub node: Node,
    /// In the beacon, for a re-registration that changed the set of resources the node offers:
    /// the node as it was, so that each watch can be told what the change means to it
    /// ([`Event::for_watch`]). Never on the wire.
    #[serde(skip)]
    pub previous: Option<Node>,
}

impl Event {
    /// Whether a watch of `resources` (every resource when empty) is told about this change.
    pub fn concerns(&self, resources: &[String]) -> bool {
        resources.is_empty()
            || self.node.first_offered(resources).is_some()
            || self
                .previous
                .as_ref()
                .is_some_and(|p| p.first_offered(resources).is_some())
    }

    /// This change as a watch of `resources` (every resource when empty) is told it, or `None`
    /// when it does not concern the watch. An unfiltered watch gets the node as it is; a
    /// filtered one gets it projected onto the first watched resource it offers, and a change
    /// of the node's resources as `nodeup` (it now offers a watched resource and did not
    /// before), `removed` (the reverse, with the node as it was) or the change's own kind.
    pub fn for_watch(&self, resources: &[String]) -> Option<Event> {
        let event = |kind, node: Node| Event {
            rev: self.rev,
            kind,
            node,
            previous: None,
        };
        if resources.is_empty() {
            return Some(event(self.kind, self.node.clone()));
        }
        let now = self.node.first_offered(resources);
        let Some(previous) = &self.previous else {
            return now.map(|r| event(self.kind, self.node.projected(r)));
        };
        match (previous.first_offered(resources), now) {
            (Some(_), Some(r)) => Some(event(self.kind, self.node.projected(r))),
            (None, Some(r)) => Some(event(EventKind::Nodeup, self.node.projected(r))),
            (Some(r), None) => Some(event(EventKind::Removed, previous.projected(r))),
            (None, None) => None,
        }
    }
}

/// A point in a beacon's history: its epoch (a new random value each time a beacon starts) and
/// a revision within it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Position {
    /// The beacon run the revision belongs to.
    pub epoch: String,
    /// The last revision seen.
    pub rev: u64,
}

impl fmt::Display for Position {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.epoch, self.rev)
    }
}

impl std::str::FromStr for Position {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, String> {
        let (epoch, rev) = text
            .rsplit_once(':')
            .ok_or_else(|| format!("\"{text}\" is not a position; write EPOCH:REV"))?;
        let rev = rev
            .parse()
            .map_err(|_| format!("\"{rev}\" is not a revision number (in \"{text}\")"))?;
        if epoch.is_empty() {
            return Err(format!("\"{text}\" has no epoch; write EPOCH:REV"));
        }
        Ok(Position {
            epoch: epoch.to_string(),
            rev,
        })
    }
}

/// `hello`: opens a session; answered with `challenge` (the beacon has a cookie) or `welcome`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Hello {
    /// The client's node name, for the beacon's log.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node: Option<String>,
    /// 32 random bytes, hex: the beacon proves it knows the cookie over this.
    pub nonce: String,
}

/// `auth`: the client's answer to a `challenge`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Auth {
    /// HMAC-SHA256 proof, hex (see `auth.rs` and the protocol doc).
    pub proof: String,
}

/// `register`: adds or updates a node.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Register {
    /// The node's name.
    pub node: String,
    /// See [`Registration::resource`].
    pub resource: String,
    /// See [`Registration::requires`].
    #[serde(default)]
    pub requires: Vec<String>,
    /// See [`Registration::endpoints`].
    #[serde(default)]
    pub endpoints: Endpoints,
    /// See [`Registration::offers`]; optional.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub offers: BTreeMap<String, Endpoints>,
    /// See [`Registration::metadata`].
    #[serde(default)]
    pub metadata: Map<String, Value>,
    /// How often the node heartbeats, in ms ([`MIN_HEARTBEAT_MS`]..=[`MAX_HEARTBEAT_MS`]).
    pub heartbeat_ms: u64,
}

impl Register {
    /// The registration part, as sent (not normalized).
    pub fn registration(&self) -> Registration {
        Registration {
            resource: self.resource.clone(),
            requires: self.requires.clone(),
            endpoints: self.endpoints.clone(),
            offers: self.offers.clone(),
            metadata: self.metadata.clone(),
        }
    }
}

/// A request naming a node: `heartbeat`, `deregister`, `get_requirements`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NodeRef {
    /// The node.
    pub node: String,
}

/// `lookup`: the online nodes offering a resource.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Lookup {
    /// The resource.
    pub resource: String,
}

/// `watch`: subscribe to changes of some resources.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Watch {
    /// The client's name for this watch, copied into every event (a peer may hold several).
    pub watch: String,
    /// Resources to watch; empty means every resource.
    #[serde(default)]
    pub resources: Vec<String>,
    /// Resume after this position; absent means "start with a snapshot".
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub since: Option<Position>,
}

/// `unwatch`: end a watch.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Unwatch {
    /// The watch's name.
    pub watch: String,
}

/// A request, without its envelope (`v`, `id`).
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(tag = "op", rename_all = "snake_case")]
pub enum Request {
    /// Open a session (and start authentication).
    Hello(Hello),
    /// Answer a challenge.
    Auth(Auth),
    /// Keep the session alive; answered with `pong`.
    Ping,
    /// Add or update a node.
    Register(Register),
    /// The node is alive.
    Heartbeat(NodeRef),
    /// Remove the node now.
    Deregister(NodeRef),
    /// For each of the node's requirements, the online nodes offering it.
    GetRequirements(NodeRef),
    /// The online nodes offering a resource.
    Lookup(Lookup),
    /// Every node, online and offline.
    List,
    /// Subscribe to changes.
    Watch(Watch),
    /// End a subscription.
    Unwatch(Unwatch),
}

impl Request {
    /// The request's `op` name.
    pub fn op(&self) -> &'static str {
        match self {
            Request::Hello(_) => "hello",
            Request::Auth(_) => "auth",
            Request::Ping => "ping",
            Request::Register(_) => "register",
            Request::Heartbeat(_) => "heartbeat",
            Request::Deregister(_) => "deregister",
            Request::GetRequirements(_) => "get_requirements",
            Request::Lookup(_) => "lookup",
            Request::List => "list",
            Request::Watch(_) => "watch",
            Request::Unwatch(_) => "unwatch",
        }
    }

    /// Checks names and limits the types cannot express.
    pub fn check(&self) -> Result<(), FieldError> {
        match self {
            Request::Hello(hello) => {
                if let Some(node) = &hello.node {
                    check_name("node", node)?;
                }
                check_hex("nonce", &hello.nonce, 32)
            }
            Request::Auth(auth) => check_hex("proof", &auth.proof, 32),
            Request::Register(register) => {
                check_name("node", &register.node)?;
                register.registration().check()?;
                if !(MIN_HEARTBEAT_MS..=MAX_HEARTBEAT_MS).contains(&register.heartbeat_ms) {
                    return Err(FieldError::new(
                        "heartbeat_ms",
                        format!(
                            "{} is out of range {MIN_HEARTBEAT_MS}..={MAX_HEARTBEAT_MS}",
                            register.heartbeat_ms
                        ),
                    ));
                }
                Ok(())
            }
            Request::Heartbeat(r) | Request::Deregister(r) | Request::GetRequirements(r) => {
                check_name("node", &r.node)
            }
            Request::Lookup(lookup) => check_name("resource", &lookup.resource),
            Request::Watch(watch) => {
                check_name("watch", &watch.watch)?;
                if watch.resources.len() > MAX_WATCH_RESOURCES {
                    return Err(FieldError::new(
                        "resources",
                        format!(
                            "{} entries, at most {MAX_WATCH_RESOURCES} allowed",
                            watch.resources.len()
                        ),
                    ));
                }
                for (i, resource) in watch.resources.iter().enumerate() {
                    check_name(&format!("resources[{i}]"), resource)?;
                }
                Ok(())
            }
            Request::Unwatch(unwatch) => check_name("watch", &unwatch.watch),
            Request::Ping | Request::List => Ok(()),
        }
    }
}

fn check_hex(field: &str, text: &str, bytes: usize) -> Result<(), FieldError> {
    match hex::decode(text) {
        Ok(decoded) if decoded.len() == bytes => Ok(()),
        Ok(decoded) => Err(FieldError::new(
            field,
            format!(
                "{} bytes, expected {bytes} bytes as {} hex digits",
                decoded.len(),
                bytes * 2
            ),
        )),
        Err(err) => Err(FieldError::new(field, format!("not hex ({err})"))),
    }
}

/// For each requirement, the online nodes offering it.
pub type Offers = BTreeMap<String, Vec<Node>>;

/// A reply or a pushed message from the beacon, without its envelope.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
pub enum Reply {
    /// The beacon has a cookie: prove you know it.
    Challenge {
        /// 32 random bytes, hex.
        nonce: String,
    },
    /// The session is open.
    Welcome {
        /// Whether the beacon checked a cookie.
        auth: bool,
        /// With `auth`: the beacon's proof that it knows the cookie too.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        proof: Option<String>,
        /// The beacon run.
        epoch: String,
        /// The current revision.
        rev: u64,
    },
    /// Answer to `ping`.
    Pong {
        /// The beacon run.
        epoch: String,
        /// The current revision.
        rev: u64,
    },
    /// The node is registered (or its registration updated).
    Registered {
        /// The node.
        node: String,
        /// The beacon run.
        epoch: String,
        /// The current revision.
        rev: u64,
    },
    /// Answer to `heartbeat`.
    Ack {
        /// The beacon run.
        epoch: String,
        /// The current revision: a client that sees it move knows something changed.
        rev: u64,
    },
    /// The node is gone.
    Deregistered {
        /// The node.
        node: String,
    },
    /// Answer to `get_requirements`.
    Requirements {
        /// The asking node.
        node: String,
        /// For each requirement, its online providers (possibly none).
        offers: Offers,
        /// Requirements with no online provider.
        unmet: Vec<String>,
        /// The current revision.
        rev: u64,
    },
    /// Answer to `lookup` and `list`.
    Nodes {
        /// The nodes, sorted by name.
        nodes: Vec<Node>,
        /// The current revision.
        rev: u64,
    },
    /// Answer to `watch` without a usable `since`: the watched nodes now.
    Snapshot {
        /// The watch.
        watch: String,
        /// The beacon run.
        epoch: String,
        /// Revision of this snapshot; events follow from `rev + 1`.
        rev: u64,
        /// Every watched node, online or offline.
        nodes: Vec<Node>,
    },
    /// Answer to `watch` with a `since` the history still covers: the events missed.
    Resumed {
        /// The watch.
        watch: String,
        /// The beacon run.
        epoch: String,
        /// The current revision.
        rev: u64,
        /// The watched changes after `since`, in order.
        events: Vec<Event>,
    },
    /// Answer to `unwatch`.
    Unwatched {
        /// The watch.
        watch: String,
    },
    /// Pushed to a watcher: one change.
    Event {
        /// The watch it matched.
        watch: String,
        /// The beacon run.
        epoch: String,
        /// The change.
        event: Event,
    },
    /// Pushed to a watcher that could not keep up: the watch was dropped; watch again with
    /// `since` set to the last revision seen.
    WatchLost {
        /// The watch.
        watch: String,
    },
    /// The request failed.
    Error {
        /// A stable, machine-readable reason.
        code: ErrorCode,
        /// A sentence naming what was wrong.
        error: String,
    },
}

impl Reply {
    /// An error reply.
    pub fn error(code: ErrorCode, error: impl Into<String>) -> Reply {
        Reply::Error {
            code,
            error: error.into(),
        }
    }
}

/// Why a request failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ErrorCode {
    /// The frame is not JSON, or not a JSON object.
    BadJson,
    /// A field is missing, unknown, of the wrong type or out of its limits.
    BadRequest,
    /// `op` names no operation.
    UnknownOp,
    /// `v` is not a version this beacon speaks.
    UnsupportedVersion,
    /// The frame is larger than the beacon's `max_frame`.
    TooLarge,
    /// The message has more frames than `[envelope…, body]`.
    BadFrame,
    /// The beacon has a cookie and this session has not proven it (send `hello`).
    AuthRequired,
    /// The proof was wrong: the client's cookie differs from the beacon's.
    AuthFailed,
    /// The node is not registered (from this connection): register it.
    UnknownNode,
    /// A registry limit is reached (`max_nodes`, `max_watchers`, sessions).
    Limit,
    /// `unwatch` named no watch of this session.
    UnknownWatch,
}

impl ErrorCode {
    /// The code as it appears on the wire.
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorCode::BadJson => "bad_json",
            ErrorCode::BadRequest => "bad_request",
            ErrorCode::UnknownOp => "unknown_op",
            ErrorCode::UnsupportedVersion => "unsupported_version",
            ErrorCode::TooLarge => "too_large",
            ErrorCode::BadFrame => "bad_frame",
            ErrorCode::AuthRequired => "auth_required",
            ErrorCode::AuthFailed => "auth_failed",
            ErrorCode::UnknownNode => "unknown_node",
            ErrorCode::Limit => "limit",
            ErrorCode::UnknownWatch => "unknown_watch",
        }
    }
}

impl fmt::Display for ErrorCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A request that could not be decoded: the error to answer with, and the request's `id` when
/// it could still be read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WireError {
    /// The request's `id`, if the frame was an object with a numeric `id`.
    pub id: Option<u64>,
    /// Why.
    pub code: ErrorCode,
    /// A sentence naming what was wrong.
    pub message: String,
}

impl WireError {
    fn new(id: Option<u64>, code: ErrorCode, message: impl Into<String>) -> Self {
        WireError {
            id,
            code,
            message: message.into(),
        }
    }
}

/// A decoded request with its envelope's `id`.
#[derive(Debug, Clone, PartialEq)]
pub struct Incoming {
    /// Copied into the reply.
    pub id: Option<u64>,
    /// The request.
    pub request: Request,
}

const OPS: &str = "hello, auth, ping, register, heartbeat, deregister, get_requirements, lookup, list, watch, unwatch";

/// Decodes one request frame of at most `max_frame` bytes.
pub fn decode_request(frame: &[u8], max_frame: usize) -> Result<Incoming, WireError> {
    if frame.len() > max_frame {
        return Err(WireError::new(
            None,
            ErrorCode::TooLarge,
            format!(
                "the frame is {} bytes, larger than the beacon's max_frame of {max_frame} bytes",
                frame.len()
            ),
        ));
    }
    let value: Value = serde_json::from_slice(frame).map_err(|err| {
        WireError::new(None, ErrorCode::BadJson, format!("not valid JSON: {err}"))
    })?;
    let mut map = match value {
        Value::Object(map) => map,
        other => {
            return Err(WireError::new(
                None,
                ErrorCode::BadJson,
                format!("expected a JSON object, found {}", json_type(&other)),
            ))
        }
    };
    let id = match map.remove("id") {
        None | Some(Value::Null) => None,
        Some(Value::Number(n)) if n.as_u64().is_some() => n.as_u64(),
        Some(other) => {
            return Err(WireError::new(
                None,
                ErrorCode::BadRequest,
                format!(
                    "field `id`: expected an unsigned integer, found {}",
                    json_type(&other)
                ),
            ))
        }
    };
    match map.remove("v") {
        Some(Value::Number(n)) if n.as_u64() == Some(u64::from(VERSION)) => {}
        Some(Value::Number(n)) => {
            return Err(WireError::new(
                id,
                ErrorCode::UnsupportedVersion,
                format!(
                    "protocol version {n} is not supported; this beacon speaks version {VERSION}"
                ),
            ))
        }
        Some(other) => {
            return Err(WireError::new(
                id,
                ErrorCode::BadRequest,
                format!(
                    "field `v`: expected the protocol version {VERSION}, found {}",
                    json_type(&other)
                ),
            ))
        }
        None => {
            return Err(WireError::new(
                id,
                ErrorCode::BadRequest,
                format!("missing field `v` (the protocol version, {VERSION})"),
            ))
        }
    }
    let op = match map.remove("op") {
        Some(Value::String(op)) => op,
        Some(other) => {
            return Err(WireError::new(
                id,
                ErrorCode::BadRequest,
                format!("field `op`: expected a string, found {}", json_type(&other)),
            ))
        }
        None => {
            return Err(WireError::new(
                id,
                ErrorCode::BadRequest,
                format!("missing field `op`; valid operations: {OPS}"),
            ))
        }
    };
    let bad = |message: String| WireError::new(id, ErrorCode::BadRequest, message);
    let request = match op.as_str() {
        "hello" => Request::Hello(body(&op, map).map_err(bad)?),
        "auth" => Request::Auth(body(&op, map).map_err(bad)?),
        "ping" => no_body(&op, map, Request::Ping).map_err(bad)?,
        "register" => Request::Register(body(&op, map).map_err(bad)?),
        "heartbeat" => Request::Heartbeat(body(&op, map).map_err(bad)?),
        "deregister" => Request::Deregister(body(&op, map).map_err(bad)?),
        "get_requirements" => Request::GetRequirements(body(&op, map).map_err(bad)?),
        "lookup" => Request::Lookup(body(&op, map).map_err(bad)?),
        "list" => no_body(&op, map, Request::List).map_err(bad)?,
        "watch" => Request::Watch(body(&op, map).map_err(bad)?),
        "unwatch" => Request::Unwatch(body(&op, map).map_err(bad)?),
        _ => {
            return Err(WireError::new(
                id,
                ErrorCode::UnknownOp,
                format!(
                    "unknown operation \"{}\"; valid operations: {OPS}",
                    op.escape_debug()
                ),
            ))
        }
    };
    request
        .check()
        .map_err(|err| bad(format!("{op}: field `{}`: {}", err.field, err.message)))?;
    Ok(Incoming { id, request })
}

fn body<T: DeserializeOwned>(op: &str, map: Map<String, Value>) -> Result<T, String> {
    serde_path_to_error::deserialize(Value::Object(map)).map_err(|err| {
        let path = err.path().to_string();
        if path == "." {
            format!("{op}: {}", err.into_inner())
        } else {
            format!("{op}: field `{path}`: {}", err.into_inner())
        }
    })
}

fn no_body(op: &str, map: Map<String, Value>, request: Request) -> Result<Request, String> {
    match map.keys().next() {
        None => Ok(request),
        Some(key) => Err(format!("{op}: unknown field `{key}`; {op} takes no fields")),
    }
}

fn json_type(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

#[derive(Serialize)]
struct Envelope<'a, T> {
    v: u32,
    #[serde(skip_serializing_if = "Option::is_none")]
    id: Option<u64>,
    #[serde(flatten)]
    body: &'a T,
}

/// Encodes a reply (or push) with its envelope.
pub fn encode_reply(id: Option<u64>, reply: &Reply) -> Vec<u8> {
    encode(id, reply)
}

/// Encodes a request with its envelope.
pub fn encode_request(id: Option<u64>, request: &Request) -> Vec<u8> {
    encode(id, request)
}

fn encode<T: Serialize>(id: Option<u64>, body: &T) -> Vec<u8> {
    let envelope = Envelope {
        v: VERSION,
        id,
        body,
    };
    // Serializing these types cannot fail: every map key is a string.
    serde_json::to_vec(&envelope).unwrap_or_default()
}

/// Decodes a frame from a beacon: the reply's `id` and the reply.
pub fn decode_reply(frame: &[u8]) -> Result<(Option<u64>, Reply), String> {
    let value: Value =
        serde_json::from_slice(frame).map_err(|err| format!("not valid JSON: {err}"))?;
    let Value::Object(mut map) = value else {
        return Err("expected a JSON object".to_string());
    };
    let id = map.remove("id").and_then(|v| v.as_u64());
    match map.remove("v") {
        Some(v) if v.as_u64() == Some(u64::from(VERSION)) => {}
        other => {
            return Err(format!(
                "protocol version {} is not supported (expected {VERSION})",
                other.unwrap_or(Value::Null)
            ))
        }
    }
    let reply = serde_path_to_error::deserialize(Value::Object(map)).map_err(|err| {
        let path = err.path().to_string();
        format!("field `{path}`: {}", err.into_inner())
    })?;
    Ok((id, reply))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn decode(text: &str) -> Result<Incoming, WireError> {
        decode_request(text.as_bytes(), 65536)
    }

    fn err(text: &str) -> WireError {
        decode(text).expect_err(text)
    }

    #[test]
    fn requests_round_trip() {
        let requests = [
            Request::Hello(Hello {
                node: Some("n1".into()),
                nonce: "ab".repeat(32),
            }),
            Request::Ping,
            Request::Register(Register {
                node: "n1".into(),
                resource: "broker".into(),
                requires: vec!["ipc".into()],
                endpoints: [("frontend".to_string(), "tcp://10.0.0.1:7501".to_string())].into(),
                offers: [("ipc".to_string(), Endpoints::new())].into(),
                metadata: serde_json::json!({"zone": "a", "weight": 3})
                    .as_object()
                    .cloned()
                    .unwrap(),
                heartbeat_ms: 1000,
            }),
            Request::Heartbeat(NodeRef { node: "n1".into() }),
            Request::List,
            Request::Watch(Watch {
                watch: "w".into(),
                resources: vec![],
                since: Some(Position {
                    epoch: "e".into(),
                    rev: 4,
                }),
            }),
        ];
        for (i, request) in requests.into_iter().enumerate() {
            let frame = encode_request(Some(i as u64), &request);
            let decoded = decode_request(&frame, 65536).unwrap();
            assert_eq!(decoded.id, Some(i as u64));
            assert_eq!(decoded.request, request);
        }
    }

    #[test]
    fn replies_round_trip() {
        let reply = Reply::Error {
            code: ErrorCode::UnknownNode,
            error: "x".into(),
        };
        let frame = encode_reply(Some(9), &reply);
        assert_eq!(
            std::str::from_utf8(&frame).unwrap(),
            r#"{"v":1,"id":9,"op":"error","code":"unknown_node","error":"x"}"#
        );
        assert_eq!(decode_reply(&frame).unwrap(), (Some(9), reply));
    }

    #[test]
    fn malformed_requests_name_the_problem() {
        let e = err("{nope");
        assert_eq!(e.code, ErrorCode::BadJson);
        assert!(e.message.contains("not valid JSON"), "{}", e.message);

        let e = err("[1,2]");
        assert_eq!(e.code, ErrorCode::BadJson);
        assert!(e.message.contains("found an array"), "{}", e.message);

        let e = err(r#"{"op":"ping","id":3}"#);
        assert_eq!((e.code, e.id), (ErrorCode::BadRequest, Some(3)));
        assert!(e.message.contains("missing field `v`"), "{}", e.message);

        let e = err(r#"{"v":2,"op":"ping"}"#);
        assert_eq!(e.code, ErrorCode::UnsupportedVersion);

        let e = err(r#"{"v":1,"op":"frobnicate","id":7}"#);
        assert_eq!((e.code, e.id), (ErrorCode::UnknownOp, Some(7)));
        assert!(e.message.contains("\"frobnicate\""), "{}", e.message);
        assert!(e.message.contains("get_requirements"), "{}", e.message);

        let e = err(
            r#"{"v":1,"op":"register","node":"n","resource":"r","requires":["a",5],"heartbeat_ms":1000}"#,
        );
        assert_eq!(e.code, ErrorCode::BadRequest);
        assert!(e.message.contains("`requires[1]`"), "{}", e.message);
        assert!(e.message.contains("expected a string"), "{}", e.message);

        let e = err(r#"{"v":1,"op":"heartbeat"}"#);
        assert!(e.message.contains("missing field `node`"), "{}", e.message);

        let e = err(r#"{"v":1,"op":"heartbeat","node":"n","nmae":"x"}"#);
        assert!(e.message.contains("unknown field `nmae`"), "{}", e.message);

        let e = err(r#"{"v":1,"op":"list","all":true}"#);
        assert!(e.message.contains("unknown field `all`"), "{}", e.message);

        let e = err(r#"{"v":1,"op":"heartbeat","node":"a b"}"#);
        assert!(e.message.contains("contains ' '"), "{}", e.message);

        let e = err(r#"{"v":1,"op":"register","node":"n","resource":"r","heartbeat_ms":1}"#);
        assert!(e.message.contains("heartbeat_ms"), "{}", e.message);

        let e = err(r#"{"v":1,"op":"ping","id":"seven"}"#);
        assert!(e.message.contains("field `id`"), "{}", e.message);

        let e = err(r#"{"v":1,"op":"hello","nonce":"zz"}"#);
        assert!(e.message.contains("`nonce`: not hex"), "{}", e.message);
    }

    #[test]
    fn oversize_frames_are_refused_before_parsing() {
        let big = vec![b' '; 2000];
        let e = decode_request(&big, 1000).unwrap_err();
        assert_eq!(e.code, ErrorCode::TooLarge);
        assert!(e.message.contains("2000 bytes"), "{}", e.message);
    }

    #[test]
    fn registration_limits_are_checked() {
        let mut r = Registration {
            resource: "broker".into(),
            ..Registration::default()
        };
        assert!(r.check().is_ok());
        r.requires = (0..=MAX_REQUIRES).map(|i| format!("r{i}")).collect();
        assert!(r.check().unwrap_err().to_string().contains("at most 64"));
        r.requires.clear();
        r.endpoints.insert("front".into(), "tcp://a b".into());
        assert_eq!(r.check().unwrap_err().field, "endpoints.front");
        r.endpoints.clear();
        r.metadata
            .insert("blob".into(), Value::String("x".repeat(MAX_METADATA)));
        assert_eq!(r.check().unwrap_err().field, "metadata");
    }

    fn offers(entries: &[(&str, &[(&str, &str)])]) -> BTreeMap<String, Endpoints> {
        entries
            .iter()
            .map(|(resource, endpoints)| {
                let endpoints = endpoints
                    .iter()
                    .map(|(n, a)| (n.to_string(), a.to_string()))
                    .collect();
                (resource.to_string(), endpoints)
            })
            .collect()
    }

    #[test]
    fn offers_are_checked_field_by_field() {
        let mut r = Registration {
            resource: "ipc".into(),
            offers: offers(&[("broker", &[("frontend", "tcp://h:1")])]),
            ..Registration::default()
        };
        assert!(r.check().is_ok());
        r.offers = offers(&[("broker", &[("frontend", "tcp://a b")])]);
        assert_eq!(r.check().unwrap_err().field, "offers.broker.frontend");
        r.offers = offers(&[("bro ker", &[])]);
        let err = r.check().unwrap_err();
        assert_eq!(err.field, "offers");
        assert!(err.message.contains("\"bro ker\""), "{err}");
        r.offers = offers(&[("broker", &[("front end", "tcp://h:1")])]);
        assert_eq!(r.check().unwrap_err().field, "offers.broker");
        // 64 resources in all, the primary one counted.
        r.offers = (0..MAX_OFFERS)
            .map(|i| (format!("r{i}"), Endpoints::new()))
            .collect();
        let err = r.check().unwrap_err();
        assert_eq!(err.field, "offers");
        assert!(err.message.contains("65 resources"), "{err}");
        r.offers.insert("ipc".into(), Endpoints::new());
        r.offers.remove("r0");
        assert!(r.check().is_ok());
        // 64 endpoints per resource, 256 over all of them.
        let many = |n: usize, tag: &str| -> Endpoints {
            (0..n)
                .map(|i| (format!("{tag}{i}"), "tcp://h:1".to_string()))
                .collect()
        };
        r.offers = [("broker".to_string(), many(MAX_ENDPOINTS + 1, "e"))].into();
        let err = r.check().unwrap_err();
        assert_eq!(err.field, "offers.broker");
        assert!(err.message.contains("at most 64"), "{err}");
        r.offers = (0..5)
            .map(|i| (format!("r{i}"), many(MAX_ENDPOINTS, "e")))
            .collect();
        let err = r.check().unwrap_err();
        assert_eq!(err.field, "offers");
        assert!(err.message.contains("320 endpoints"), "{err}");
        // The primary resource's endpoints given twice must agree.
        r.offers = offers(&[("ipc", &[("api", "tcp://h:1")])]);
        r.endpoints = [("api".to_string(), "tcp://h:2".to_string())].into();
        assert_eq!(r.check().unwrap_err().field, "endpoints");
        r.endpoints = [("api".to_string(), "tcp://h:1".to_string())].into();
        assert!(r.check().is_ok());
    }

    #[test]
    fn a_register_with_offers_is_decoded_and_normalized() {
        let frame = br#"{"v":1,"op":"register","node":"n","resource":"ipc","endpoints":{"sock":"ipc:///s"},"offers":{"broker":{"frontend":"tcp://h:1"}},"heartbeat_ms":1000}"#;
        let Request::Register(register) = decode_request(frame, 65536).unwrap().request else {
            panic!()
        };
        let mut r = register.registration();
        r.normalize();
        assert_eq!(
            r.offers,
            offers(&[
                ("broker", &[("frontend", "tcp://h:1")]),
                ("ipc", &[("sock", "ipc:///s")])
            ])
        );
        // `endpoints` follows `offers` when that lists the primary resource.
        let mut r = Registration {
            resource: "ipc".into(),
            offers: offers(&[("ipc", &[("sock", "ipc:///t")])]),
            ..Registration::default()
        };
        r.normalize();
        assert_eq!(r.endpoints["sock"], "ipc:///t");
        let e = err(
            r#"{"v":1,"op":"register","node":"n","resource":"r","offers":{"b":{"x":"a b"}},"heartbeat_ms":1000}"#,
        );
        assert!(e.message.contains("field `offers.b.x`"), "{}", e.message);
    }

    #[test]
    fn nodes_are_projected_onto_one_resource() {
        let view = NodeView {
            name: "hub".into(),
            resource: "ipc".into(),
            requires: vec![],
            endpoints: [("sock".to_string(), "ipc:///s".to_string())].into(),
            offers: offers(&[
                ("broker", &[("frontend", "tcp://h:1")]),
                ("ipc", &[("sock", "ipc:///s")]),
                ("supervisor", &[]),
            ]),
            metadata: Map::new(),
            status: Status::Online,
            heartbeat_ms: 1000,
            last_seen_ms: None,
        };
        assert!(view.offers_resource("broker") && !view.offers_resource("db"));
        assert_eq!(
            view.endpoints_for("broker").unwrap()["frontend"],
            "tcp://h:1"
        );
        assert_eq!(view.endpoints_for("db"), None);
        assert_eq!(
            view.resources().collect::<Vec<_>>(),
            ["broker", "ipc", "supervisor"]
        );
        let node = Node::new(view);
        let broker = node.projected("broker");
        assert_eq!(broker.resource, "broker");
        assert_eq!(
            broker.endpoints,
            offers(&[("x", &[("frontend", "tcp://h:1")])])["x"]
        );
        assert_eq!(broker.offers, node.offers, "offers still lists everything");
        // Made once: the same shared projection every time, encoded once.
        assert!(Arc::ptr_eq(&broker.0, &node.projected("broker").0));
        assert!(Arc::ptr_eq(&node.0, &node.projected("ipc").0));
        let json: Value = serde_json::to_value(&broker).unwrap();
        assert_eq!(json["resource"], "broker");
        assert_eq!(json["endpoints"]["frontend"], "tcp://h:1");
        assert_eq!(json["offers"]["ipc"]["sock"], "ipc:///s");
        // A node from an older beacon (no `offers`) still answers for its one resource.
        let old: NodeView = serde_json::from_value(serde_json::json!({
            "name": "old", "resource": "db", "requires": [], "endpoints": {"main": "tcp://d:1"},
            "metadata": {}, "status": "online", "heartbeat_ms": 1000
        }))
        .unwrap();
        assert!(old.offers_resource("db"));
        assert_eq!(old.endpoints_for("db").unwrap()["main"], "tcp://d:1");
        assert_eq!(old.resources().collect::<Vec<_>>(), ["db"]);
    }

    #[test]
    fn events_are_translated_for_each_watch() {
        let node = |resources: &[&str]| {
            let offers = resources
                .iter()
                .map(|r| {
                    (
                        r.to_string(),
                        [("e".to_string(), format!("tcp://{r}:1"))].into(),
                    )
                })
                .collect::<BTreeMap<String, Endpoints>>();
            Node::new(NodeView {
                name: "n".into(),
                resource: resources[0].into(),
                requires: vec![],
                endpoints: offers[resources[0]].clone(),
                offers,
                metadata: Map::new(),
                status: Status::Online,
                heartbeat_ms: 1000,
                last_seen_ms: None,
            })
        };
        let change = Event {
            rev: 7,
            kind: EventKind::Changed,
            node: node(&["ipc", "db"]),
            previous: Some(node(&["ipc", "broker"])),
        };
        let watch = |filter: &[&str]| {
            let filter: Vec<String> = filter.iter().map(|s| s.to_string()).collect();
            change.for_watch(&filter).map(|e| {
                (
                    e.kind,
                    e.node.resource.clone(),
                    e.node.endpoints["e"].clone(),
                )
            })
        };
        let seen = |kind, resource: &str| {
            Some((kind, resource.to_string(), format!("tcp://{resource}:1")))
        };
        assert_eq!(watch(&[]), seen(EventKind::Changed, "ipc"));
        assert_eq!(watch(&["ipc"]), seen(EventKind::Changed, "ipc"));
        assert_eq!(watch(&["broker"]), seen(EventKind::Removed, "broker"));
        assert_eq!(watch(&["db"]), seen(EventKind::Nodeup, "db"));
        assert_eq!(watch(&["db", "ipc"]), seen(EventKind::Changed, "db"));
        assert_eq!(watch(&["cache"]), None);
        assert!(!change.concerns(&["cache".to_string()]));
        assert!(change.concerns(&["broker".to_string()]));
        let removed = change.for_watch(&["broker".to_string()]).unwrap();
        assert!(
            removed.node.offers.contains_key("broker"),
            "the node as it was"
        );
        assert_eq!(removed.previous, None);
    }

    #[test]
    fn positions_parse() {
        let p: Position = "abc:12".parse().unwrap();
        assert_eq!(p.to_string(), "abc:12");
        assert!("abc".parse::<Position>().is_err());
        assert!("abc:x".parse::<Position>().is_err());
    }
}
