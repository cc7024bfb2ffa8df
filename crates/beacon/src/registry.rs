//! The registry: registered nodes, their liveness, and the numbered history of changes.
//!
//! Sans-IO: every method takes the current time and returns what changed; nothing here reads
//! a clock, a socket or a file. The beacon actor feeds it requests and a periodic
//! [`Registry::tick`]; unit tests feed it a fake clock.
//!
//! Invariants:
//! - only `online` nodes are ever offered (by [`Registry::requirements`] and
//!   [`Registry::lookup`]);
//! - a node is indexed under every resource it offers (its registration is normalized: its
//!   `offers` list them all), and shown projected onto the resource asked about;
//! - a node is online from its registration until `liveness` × its heartbeat interval passes
//!   without a heartbeat, then offline until it heartbeats or re-registers again, and removed
//!   after `offline_ttl` offline;
//! - every change produces exactly one [`Event`] whose revision is the previous one plus one;
//!   the last `history` events are kept for watchers that resume;
//! - each node has exactly one entry in the deadline index, at or before its real deadline, so
//!   a heartbeat costs no index update and a tick only visits nodes whose deadline may be due.

use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::protocol::{Event, EventKind, Node, NodeView, Offers, Position, Registration, Status};

/// The connection a node registered from (a ZeroMQ routing id). Heartbeats and deregistration
/// are accepted only from it, so that two processes claiming one name cannot silently share it.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct PeerId(pub Vec<u8>);

/// Liveness and size limits.
#[derive(Debug, Clone)]
pub struct RegistryConfig {
    /// Heartbeat intervals without a heartbeat after which a node is offline.
    pub liveness: u32,
    /// How long an offline node stays listed before it is removed.
    pub offline_ttl: Duration,
    /// How many events are kept for watchers that resume.
    pub history: usize,
    /// Most nodes registered at once.
    pub max_nodes: usize,
}

/// Why a registry operation was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RegistryError {
    /// No node of that name is registered from this connection.
    #[error("node \"{0}\" is not registered (from this connection); register it")]
    UnknownNode(String),
    /// `max_nodes` reached.
    #[error("the registry is full ({0} nodes, the beacon's max_nodes); node not registered")]
    Full(usize),
}

/// Where a watch starts.
#[derive(Debug, Clone, PartialEq)]
pub enum WatchStart {
    /// The history reaches back to the watcher's position: the watched events it missed.
    Resume(Vec<Event>),
    /// It does not (or there was no position): every watched node now.
    Snapshot(Vec<Node>),
}

struct Entry {
    view: Node,
    heartbeat: Duration,
    last_seen: Instant,
    offline_since: Option<Instant>,
    owner: Option<PeerId>,
    /// This node's key in the deadline index; never later than its real deadline.
    indexed_at: Instant,
}

/// The registry.
pub struct Registry {
    config: RegistryConfig,
    epoch: String,
    rev: u64,
    nodes: HashMap<Arc<str>, Entry>,
    by_resource: HashMap<String, BTreeSet<Arc<str>>>,
    deadlines: BTreeSet<(Instant, Arc<str>)>,
    history: VecDeque<Event>,
    online: usize,
}

impl Registry {
    /// An empty registry for the beacon run `epoch`.
    pub fn new(config: RegistryConfig, epoch: String) -> Self {
        Registry {
            config,
            epoch,
            rev: 0,
            nodes: HashMap::new(),
            by_resource: HashMap::new(),
            deadlines: BTreeSet::new(),
            history: VecDeque::new(),
            online: 0,
        }
    }

    /// The beacon run this registry belongs to.
    pub fn epoch(&self) -> &str {
        &self.epoch
    }

    /// The current revision: the number of changes so far in this run.
    pub fn rev(&self) -> u64 {
        self.rev
    }

    /// Nodes registered (online and offline).
    pub fn len(&self) -> usize {
        self.nodes.len()
    }

    /// Whether no node is registered.
    pub fn is_empty(&self) -> bool {
        self.nodes.is_empty()
    }

    /// Nodes online.
    pub fn online(&self) -> usize {
        self.online
    }

    /// The node called `name`, if registered.
    pub fn get(&self, name: &str) -> Option<&Node> {
        self.nodes.get(name).map(|e| &e.view)
    }

    /// Adds or updates `name`, owned by `owner`. Re-registering never duplicates a node: it
    /// updates the entry, brings it online and emits an event only if something changed. A
    /// change of the set of resources offered is one event that remembers the node as it was
    /// (see [`Event::for_watch`]).
    pub fn register(
        &mut self,
        now: Instant,
        owner: Option<PeerId>,
        name: &str,
        registration: Registration,
        heartbeat: Duration,
    ) -> Result<Vec<Event>, RegistryError> {
        let view = Node::new(NodeView::online(
            name.to_string(),
            registration,
            heartbeat.as_millis() as u64,
        ));
        let due = now + heartbeat * self.config.liveness;
        let mut events = Vec::new();
        let Some(entry) = self.nodes.get_mut(name) else {
            if self.nodes.len() >= self.config.max_nodes {
                return Err(RegistryError::Full(self.config.max_nodes));
            }
            self.insert_new(Entry {
                view: view.clone(),
                heartbeat,
                last_seen: now,
                offline_since: None,
                owner,
                indexed_at: due,
            });
            self.online += 1;
            events.push(self.emit(EventKind::Nodeup, view, None));
            return Ok(events);
        };
        let old = std::mem::replace(&mut entry.view, view.clone());
        let was_online = old.status == Status::Online;
        entry.heartbeat = heartbeat;
        entry.last_seen = now;
        entry.offline_since = None;
        entry.owner = owner;
        let reindex = (entry.indexed_at > due).then_some(entry.indexed_at);
        if reindex.is_some() {
            entry.indexed_at = due;
        }
        if !was_online {
            self.online += 1;
        }
        let key = self.key(name);
        if let Some(old_key) = reindex {
            self.deadlines.remove(&(old_key, key.clone()));
            self.deadlines.insert((due, key.clone()));
        }
        let same_resources = old.offers.keys().eq(view.offers.keys());
        if !same_resources {
            for resource in old.offers.keys() {
                if !view.offers.contains_key(resource) {
                    self.unindex_resource(resource, &key);
                }
            }
            for resource in view.offers.keys() {
                self.by_resource
                    .entry(resource.clone())
                    .or_default()
                    .insert(key.clone());
            }
        }
        let previous = (!same_resources).then_some(old.clone());
        if !was_online {
            events.push(self.emit(EventKind::Nodeup, view, previous));
        } else if *old != *view {
            events.push(self.emit(EventKind::Changed, view, previous));
        }
        Ok(events)
    }

    /// Records a heartbeat from `owner` for `name`. A node that was offline comes back online.
    /// A node restored from a snapshot has no owner yet: the first connection that heartbeats
    /// it takes it over (as a `register` would), so a node that kept running while the beacon
    /// restarted comes back with its next heartbeat.
    pub fn heartbeat(
        &mut self,
        now: Instant,
        owner: &PeerId,
        name: &str,
    ) -> Result<Vec<Event>, RegistryError> {
        let liveness = self.config.liveness;
        let entry = match self.nodes.get_mut(name) {
            Some(entry) if entry.owner.as_ref() == Some(owner) => entry,
            Some(entry) if entry.owner.is_none() => {
                entry.owner = Some(owner.clone());
                entry
            }
            _ => return Err(RegistryError::UnknownNode(name.to_string())),
        };
        entry.last_seen = now;
        if entry.view.status == Status::Online {
            return Ok(Vec::new());
        }
        entry.offline_since = None;
        let mut view = entry.view.view().clone();
        view.status = Status::Online;
        let view = Node::new(view);
        entry.view = view.clone();
        let due = now + entry.heartbeat * liveness;
        let old_key = std::mem::replace(&mut entry.indexed_at, due);
        self.online += 1;
        let key = self.key(name);
        self.deadlines.remove(&(old_key, key.clone()));
        self.deadlines.insert((due, key));
        Ok(vec![self.emit(EventKind::Nodeup, view, None)])
    }

    /// Removes `name` at once, if `owner` registered it.
    pub fn deregister(&mut self, owner: &PeerId, name: &str) -> Result<Vec<Event>, RegistryError> {
        match self.nodes.get(name) {
            Some(entry) if entry.owner.as_ref() == Some(owner) => Ok(vec![self.remove(name)]),
            _ => Err(RegistryError::UnknownNode(name.to_string())),
        }
    }

    /// Applies every deadline up to `now`: online nodes silent for too long go offline,
    /// offline nodes past `offline_ttl` are removed.
    pub fn tick(&mut self, now: Instant) -> Vec<Event> {
        let mut events = Vec::new();
        while let Some((at, _)) = self.deadlines.first() {
            if *at > now {
                break;
            }
            let Some((_, key)) = self.deadlines.pop_first() else {
                break;
            };
            let (liveness, ttl) = (self.config.liveness, self.config.offline_ttl);
            let Some(entry) = self.nodes.get_mut(&key) else {
                continue;
            };
            let real = match entry.offline_since {
                None => entry.last_seen + entry.heartbeat * liveness,
                Some(since) => since + ttl,
            };
            if real > now {
                entry.indexed_at = real;
                self.deadlines.insert((real, key));
                continue;
            }
            if entry.offline_since.is_none() {
                entry.offline_since = Some(now);
                let mut view = entry.view.view().clone();
                view.status = Status::Offline;
                let view = Node::new(view);
                entry.view = view.clone();
                entry.indexed_at = now + ttl;
                self.deadlines.insert((now + ttl, key));
                self.online -= 1;
                events.push(self.emit(EventKind::Nodedown, view, None));
            } else {
                events.push(self.remove(&key));
            }
        }
        events
    }

    /// The earliest time [`Registry::tick`] may have something to do.
    pub fn next_deadline(&self) -> Option<Instant> {
        self.deadlines.first().map(|(at, _)| *at)
    }

    /// For each requirement of `name`, the online nodes offering it (never `name` itself),
    /// each projected onto the requirement, and the requirements nobody online offers.
    pub fn requirements(&self, name: &str) -> Result<(Offers, Vec<String>), RegistryError> {
        let entry = self
            .nodes
            .get(name)
            .ok_or_else(|| RegistryError::UnknownNode(name.to_string()))?;
        let mut offers = BTreeMap::new();
        let mut unmet = Vec::new();
        for role in &entry.view.requires {
            let providers: Vec<Node> = self
                .providers(role)
                .filter(|view| view.name != name)
                .collect();
            if providers.is_empty() {
                unmet.push(role.clone());
            }
            offers.insert(role.clone(), providers);
        }
        Ok((offers, unmet))
    }

    /// The online nodes offering `resource`, sorted by name, each projected onto it.
    pub fn lookup(&self, resource: &str) -> Vec<Node> {
        self.providers(resource).collect()
    }

    fn providers<'a>(&'a self, resource: &'a str) -> impl Iterator<Item = Node> + 'a {
        self.by_resource
            .get(resource)
            .into_iter()
            .flatten()
            .filter_map(|key| self.nodes.get(key))
            .filter(|entry| entry.view.status == Status::Online)
            .map(move |entry| entry.view.projected(resource))
    }

    /// Every node, online and offline, sorted by name, each with how long ago it was heard.
    pub fn list(&self, now: Instant) -> Vec<Node> {
        let mut nodes: Vec<Node> = self
            .nodes
            .values()
            .map(|entry| {
                let mut view = entry.view.view().clone();
                view.last_seen_ms =
                    Some(now.saturating_duration_since(entry.last_seen).as_millis() as u64);
                Node::new(view)
            })
            .collect();
        nodes.sort_by(|a, b| a.name.cmp(&b.name));
        nodes
    }

    /// Every node (online and offline) offering one of `resources` (all when empty), sorted
    /// by name; with a filter, each projected onto the first of `resources` it offers.
    pub fn watched(&self, resources: &[String]) -> Vec<Node> {
        let mut nodes: Vec<Node> = if resources.is_empty() {
            self.nodes.values().map(|e| e.view.clone()).collect()
        } else {
            let names: BTreeSet<&Arc<str>> = resources
                .iter()
                .filter_map(|r| self.by_resource.get(r.as_str()))
                .flatten()
                .collect();
            names
                .into_iter()
                .filter_map(|key| self.nodes.get(key))
                .filter_map(|e| {
                    let resource = e.view.first_offered(resources)?;
                    Some(e.view.projected(resource))
                })
                .collect()
        };
        nodes.sort_by(|a, b| a.name.cmp(&b.name));
        nodes
    }

    /// Where a watch of `resources` that last saw `since` starts. Resumed events are
    /// translated for the watch ([`Event::for_watch`]) as live ones are.
    pub fn watch_from(&self, since: Option<&Position>, resources: &[String]) -> WatchStart {
        let Some(since) = since else {
            return WatchStart::Snapshot(self.watched(resources));
        };
        if since.epoch != self.epoch || since.rev > self.rev {
            return WatchStart::Snapshot(self.watched(resources));
        }
        // The history holds revisions oldest..=rev, so it can resume anything from oldest - 1.
        let oldest = self.history.front().map_or(self.rev + 1, |e| e.rev);
        if since.rev + 1 < oldest {
            return WatchStart::Snapshot(self.watched(resources));
        }
        let events = self
            .history
            .iter()
            .filter(|e| e.rev > since.rev)
            .filter_map(|e| e.for_watch(resources))
            .collect();
        WatchStart::Resume(events)
    }

    /// Every node as it should be saved in a snapshot file.
    pub fn snapshot(&self) -> Vec<Node> {
        self.watched(&[])
    }

    /// Restores nodes from a snapshot file into an empty registry. They come back *offline* and
    /// without an owner: the beacon has not heard from them in this run, so it offers none of
    /// them until each heartbeats again (from any connection, which then owns it) or registers. Nodes never heard from are removed
    /// after `offline_ttl`. Returns how many nodes were restored; invalid or excess entries are
    /// skipped, with the reason, in the second value.
    pub fn restore(&mut self, now: Instant, nodes: Vec<NodeView>) -> (usize, Vec<String>) {
        let mut skipped = Vec::new();
        let mut restored = 0;
        for node in nodes {
            let mut registration = Registration {
                resource: node.resource.clone(),
                requires: node.requires.clone(),
                endpoints: node.endpoints.clone(),
                offers: node.offers.clone(),
                metadata: node.metadata.clone(),
            };
            if let Err(why) =
                crate::protocol::check_name("name", &node.name).and_then(|()| registration.check())
            {
                skipped.push(format!("{}: {why}", node.name));
                continue;
            }
            registration.normalize();
            if self.nodes.contains_key(node.name.as_str()) {
                skipped.push(format!("{}: listed twice", node.name));
                continue;
            }
            if self.nodes.len() >= self.config.max_nodes {
                skipped.push(format!("{}: max_nodes reached", node.name));
                continue;
            }
            let heartbeat = Duration::from_millis(node.heartbeat_ms.clamp(
                crate::protocol::MIN_HEARTBEAT_MS,
                crate::protocol::MAX_HEARTBEAT_MS,
            ));
            let view = Node::new(NodeView {
                endpoints: registration.endpoints,
                offers: registration.offers,
                status: Status::Offline,
                heartbeat_ms: heartbeat.as_millis() as u64,
                last_seen_ms: None,
                ..node
            });
            self.insert_new(Entry {
                view,
                heartbeat,
                last_seen: now,
                offline_since: Some(now),
                owner: None,
                indexed_at: now + self.config.offline_ttl,
            });
            restored += 1;
        }
        (restored, skipped)
    }

    fn key(&self, name: &str) -> Arc<str> {
        self.nodes
            .get_key_value(name)
            .map(|(k, _)| k.clone())
            .unwrap_or_else(|| Arc::from(name))
    }

    fn unindex_resource(&mut self, resource: &str, key: &Arc<str>) {
        if let Some(names) = self.by_resource.get_mut(resource) {
            names.remove(key);
            if names.is_empty() {
                self.by_resource.remove(resource);
            }
        }
    }

    fn remove(&mut self, name: &str) -> Event {
        let (key, entry) = self
            .nodes
            .remove_entry(name)
            .expect("remove is called for registered nodes");
        self.deadlines.remove(&(entry.indexed_at, key.clone()));
        for resource in entry.view.offers.keys() {
            self.unindex_resource(resource, &key);
        }
        if entry.view.status == Status::Online {
            self.online -= 1;
        }
        self.emit(EventKind::Removed, entry.view, None)
    }

    /// Adds a node not yet known (normalized), indexed by the resources it offers and its next
    /// deadline.
    fn insert_new(&mut self, entry: Entry) {
        let key: Arc<str> = Arc::from(entry.view.name.as_str());
        for resource in entry.view.offers.keys() {
            self.by_resource
                .entry(resource.clone())
                .or_default()
                .insert(key.clone());
        }
        self.deadlines.insert((entry.indexed_at, key.clone()));
        self.nodes.insert(key, entry);
    }

    fn emit(&mut self, kind: EventKind, node: Node, previous: Option<Node>) -> Event {
        self.rev += 1;
        let event = Event {
            rev: self.rev,
            kind,
            node,
            previous,
        };
        if self.config.history > 0 {
            if self.history.len() == self.config.history {
                self.history.pop_front();
            }
            self.history.push_back(event.clone());
        }
        event
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const HB: Duration = Duration::from_secs(1);

    fn registry() -> Registry {
        Registry::new(
            RegistryConfig {
                liveness: 3,
                offline_ttl: Duration::from_secs(60),
                history: 8,
                max_nodes: 100,
            },
            "epoch-a".into(),
        )
    }

    fn peer(n: u8) -> PeerId {
        PeerId(vec![n])
    }

    fn offering(resource: &str, requires: &[&str]) -> Registration {
        Registration {
            resource: resource.into(),
            requires: requires.iter().map(|s| s.to_string()).collect(),
            endpoints: [("main".to_string(), format!("tcp://{resource}:1"))].into(),
            ..Registration::default()
        }
    }

    fn kinds(events: &[Event]) -> Vec<(u64, EventKind, String)> {
        events
            .iter()
            .map(|e| (e.rev, e.kind, e.node.name.clone()))
            .collect()
    }

    fn names(views: &[Node]) -> Vec<&str> {
        views.iter().map(|v| v.name.as_str()).collect()
    }

    #[test]
    fn register_then_get_requirements_offers_online_providers() {
        let mut r = registry();
        let t0 = Instant::now();
        r.register(
            t0,
            Some(peer(1)),
            "gate-1",
            offering("gate", &["manager", "db"]),
            HB,
        )
        .unwrap();
        r.register(t0, Some(peer(2)), "mgr-1", offering("manager", &[]), HB)
            .unwrap();
        r.register(t0, Some(peer(3)), "mgr-2", offering("manager", &[]), HB)
            .unwrap();
        let (offers, unmet) = r.requirements("gate-1").unwrap();
        assert_eq!(names(&offers["manager"]), ["mgr-1", "mgr-2"]);
        assert_eq!(offers["manager"][0].endpoints["main"], "tcp://manager:1");
        assert!(offers["db"].is_empty());
        assert_eq!(unmet, ["db"]);
        assert_eq!(
            r.requirements("nobody").unwrap_err(),
            RegistryError::UnknownNode("nobody".into())
        );
    }

    #[test]
    fn re_registering_updates_and_never_duplicates() {
        let mut r = registry();
        let t0 = Instant::now();
        let e = r
            .register(t0, Some(peer(1)), "n", offering("broker", &[]), HB)
            .unwrap();
        assert_eq!(kinds(&e), [(1, EventKind::Nodeup, "n".into())]);
        // Same content: no change, no event.
        assert!(r
            .register(t0, Some(peer(1)), "n", offering("broker", &[]), HB)
            .unwrap()
            .is_empty());
        // New endpoints: one `changed` event, still one node.
        let mut changed = offering("broker", &[]);
        changed
            .endpoints
            .insert("backend".into(), "tcp://b:2".into());
        let e = r.register(t0, Some(peer(2)), "n", changed, HB).unwrap();
        assert_eq!(kinds(&e), [(2, EventKind::Changed, "n".into())]);
        assert_eq!(r.len(), 1);
        assert_eq!(r.lookup("broker").len(), 1);
        assert_eq!(r.lookup("broker")[0].endpoints.len(), 2);
        // Another resource: one change, remembering the node as it was, so that each watch
        // can be told what it means to it.
        let e = r
            .register(t0, Some(peer(2)), "n", offering("ipc", &[]), HB)
            .unwrap();
        assert_eq!(kinds(&e), [(3, EventKind::Changed, "n".into())]);
        assert_eq!(e[0].previous.as_ref().unwrap().resource, "broker");
        assert_eq!(e[0].node.resource, "ipc");
        assert!(r.lookup("broker").is_empty());
        assert_eq!(names(&r.lookup("ipc")), ["n"]);
        assert!(!r.by_resource.contains_key("broker"));
        // Endpoints changed within the same resources: a plain `changed`.
        let mut moved = offering("ipc", &[]);
        moved.endpoints.insert("main".into(), "tcp://ipc:2".into());
        let e = r.register(t0, Some(peer(2)), "n", moved, HB).unwrap();
        assert_eq!(kinds(&e), [(4, EventKind::Changed, "n".into())]);
        assert_eq!(e[0].previous, None);
    }

    /// A registration offering `primary` (with one endpoint) and `others` (each with one).
    fn multi(primary: &str, others: &[&str]) -> Registration {
        let mut r = offering(primary, &[]);
        for other in others {
            r.offers.insert(
                other.to_string(),
                [("main".to_string(), format!("tcp://{other}:9"))].into(),
            );
        }
        r
    }

    #[test]
    fn a_node_is_found_under_every_resource_it_offers_projected_onto_it() {
        let mut r = registry();
        let t0 = Instant::now();
        r.register(
            t0,
            Some(peer(1)),
            "hub",
            multi("ipc", &["broker", "beacon"]),
            HB,
        )
        .unwrap();
        r.register(t0, Some(peer(2)), "b2", offering("broker", &[]), HB)
            .unwrap();
        r.register(
            t0,
            Some(peer(3)),
            "edge",
            offering("app", &["broker", "ipc"]),
            HB,
        )
        .unwrap();
        let hub = r.get("hub").unwrap();
        assert_eq!(
            hub.offers.keys().collect::<Vec<_>>(),
            ["beacon", "broker", "ipc"]
        );
        assert_eq!(hub.endpoints, hub.offers["ipc"]);
        let brokers = r.lookup("broker");
        assert_eq!(names(&brokers), ["b2", "hub"]);
        assert_eq!(brokers[1].resource, "broker");
        assert_eq!(brokers[1].endpoints["main"], "tcp://broker:9");
        assert_eq!(brokers[1].offers.len(), 3);
        let ipc = r.lookup("ipc");
        assert_eq!(
            (ipc[0].resource.as_str(), ipc[0].endpoints["main"].as_str()),
            ("ipc", "tcp://ipc:1")
        );
        assert_eq!(r.lookup("beacon")[0].endpoints["main"], "tcp://beacon:9");
        let (offers, unmet) = r.requirements("edge").unwrap();
        assert!(unmet.is_empty());
        assert_eq!(offers["broker"][1].endpoints["main"], "tcp://broker:9");
        assert_eq!(offers["ipc"][0].resource, "ipc");
        // A watch of several resources lists a node once, projected onto the first it offers.
        let watched = r.watched(&["beacon".to_string(), "broker".to_string()]);
        assert_eq!(names(&watched), ["b2", "hub"]);
        assert_eq!(watched[1].resource, "beacon");
        assert_eq!(r.watched(&[])[2].resource, "ipc");
        // Its whole set is unindexed when it goes.
        r.deregister(&peer(1), "hub").unwrap();
        assert!(r.lookup("beacon").is_empty());
        assert!(!r.by_resource.contains_key("beacon") && !r.by_resource.contains_key("ipc"));
    }

    #[test]
    fn a_change_of_resources_is_one_revision_translated_for_each_watch() {
        let mut r = registry();
        let t0 = Instant::now();
        r.register(t0, Some(peer(1)), "n", multi("ipc", &["broker"]), HB)
            .unwrap();
        let start = Position {
            epoch: "epoch-a".into(),
            rev: r.rev(),
        };
        let e = r
            .register(t0, Some(peer(1)), "n", multi("ipc", &["db"]), HB)
            .unwrap();
        assert_eq!(e.len(), 1);
        assert_eq!(r.rev(), 2);
        let shown = |filter: &[&str]| -> Option<(EventKind, String)> {
            let filter: Vec<String> = filter.iter().map(|s| s.to_string()).collect();
            e[0].for_watch(&filter)
                .map(|e| (e.kind, e.node.resource.clone()))
        };
        assert_eq!(shown(&[]), Some((EventKind::Changed, "ipc".into())));
        assert_eq!(shown(&["ipc"]), Some((EventKind::Changed, "ipc".into())));
        assert_eq!(
            shown(&["broker"]),
            Some((EventKind::Removed, "broker".into()))
        );
        assert_eq!(shown(&["db"]), Some((EventKind::Nodeup, "db".into())));
        assert_eq!(shown(&["cache"]), None);
        // Resuming from before the change is told the same.
        for (filter, kind) in [
            ("broker", EventKind::Removed),
            ("db", EventKind::Nodeup),
            ("ipc", EventKind::Changed),
        ] {
            match r.watch_from(Some(&start), &[filter.to_string()]) {
                WatchStart::Resume(events) => {
                    assert_eq!(kinds(&events), [(2, kind, "n".into())], "{filter}");
                    assert_eq!(events[0].node.resource, filter);
                    assert_eq!(events[0].previous, None);
                }
                other => panic!("{other:?}"),
            }
        }
        match r.watch_from(Some(&start), &["cache".to_string()]) {
            WatchStart::Resume(events) => assert!(events.is_empty()),
            other => panic!("{other:?}"),
        }
        // Back online with another set after going offline: `nodeup` for those that keep
        // seeing it.
        r.tick(t0 + HB * 3);
        let e = r
            .register(
                t0 + HB * 4,
                Some(peer(1)),
                "n",
                multi("ipc", &["broker"]),
                HB,
            )
            .unwrap();
        let to = |filter: &str| {
            let e = e[0].for_watch(&[filter.to_string()]).unwrap();
            (e.kind, e.node.status)
        };
        assert_eq!(to("ipc"), (EventKind::Nodeup, Status::Online));
        assert_eq!(to("broker"), (EventKind::Nodeup, Status::Online));
        assert_eq!(to("db"), (EventKind::Removed, Status::Offline));
    }

    #[test]
    fn silent_nodes_go_offline_after_liveness_intervals_and_are_never_offered() {
        let mut r = registry();
        let t0 = Instant::now();
        r.register(t0, Some(peer(1)), "c", offering("client", &["broker"]), HB)
            .unwrap();
        r.register(t0, Some(peer(2)), "b", offering("broker", &[]), HB)
            .unwrap();
        // The client keeps heartbeating; the broker stops.
        for s in 1..=2 {
            r.heartbeat(t0 + HB * s, &peer(1), "c").unwrap();
            assert!(r.tick(t0 + HB * s).is_empty());
        }
        assert_eq!(r.requirements("c").unwrap().1, Vec::<String>::new());
        // Just before liveness × interval: still online.
        assert!(r.tick(t0 + HB * 3 - Duration::from_millis(1)).is_empty());
        r.heartbeat(t0 + HB * 3 - Duration::from_millis(1), &peer(1), "c")
            .unwrap();
        let e = r.tick(t0 + HB * 3);
        assert_eq!(kinds(&e), [(3, EventKind::Nodedown, "b".into())]);
        assert_eq!(e[0].node.status, Status::Offline);
        let (offers, unmet) = r.requirements("c").unwrap();
        assert!(offers["broker"].is_empty());
        assert_eq!(unmet, ["broker"]);
        assert!(r.lookup("broker").is_empty());
        assert_eq!(r.online(), 1);
        // Still listed, as offline, with how long ago it was heard.
        let listed = r.list(t0 + HB * 3);
        let b = listed.iter().find(|v| v.name == "b").unwrap();
        assert_eq!(b.status, Status::Offline);
        assert_eq!(b.last_seen_ms, Some(3000));
    }

    #[test]
    fn a_node_that_comes_back_goes_online_again() {
        let mut r = registry();
        let t0 = Instant::now();
        r.register(t0, Some(peer(1)), "b", offering("broker", &[]), HB)
            .unwrap();
        r.tick(t0 + HB * 3);
        assert!(r.lookup("broker").is_empty());
        // A late heartbeat from the same connection brings it back.
        let e = r.heartbeat(t0 + HB * 4, &peer(1), "b").unwrap();
        assert_eq!(kinds(&e), [(3, EventKind::Nodeup, "b".into())]);
        assert_eq!(names(&r.lookup("broker")), ["b"]);
        // Its liveness counts from that heartbeat, not from the old offline deadline.
        assert!(r.tick(t0 + HB * 6).is_empty());
        assert_eq!(
            kinds(&r.tick(t0 + HB * 7)),
            [(4, EventKind::Nodedown, "b".into())]
        );
        // A re-registration from a new connection also brings it back.
        let e = r
            .register(t0 + HB * 8, Some(peer(9)), "b", offering("broker", &[]), HB)
            .unwrap();
        assert_eq!(kinds(&e), [(5, EventKind::Nodeup, "b".into())]);
    }

    #[test]
    fn heartbeats_only_count_from_the_registering_connection() {
        let mut r = registry();
        let t0 = Instant::now();
        r.register(t0, Some(peer(1)), "b", offering("broker", &[]), HB)
            .unwrap();
        assert_eq!(
            r.heartbeat(t0, &peer(2), "b").unwrap_err(),
            RegistryError::UnknownNode("b".into())
        );
        assert!(r.heartbeat(t0, &peer(1), "nobody").is_err());
        assert!(r.deregister(&peer(2), "b").is_err());
        assert_eq!(r.len(), 1);
    }

    #[test]
    fn offline_nodes_are_removed_after_offline_ttl() {
        let mut r = registry();
        let t0 = Instant::now();
        r.register(t0, Some(peer(1)), "b", offering("broker", &[]), HB)
            .unwrap();
        let down = t0 + HB * 3;
        r.tick(down);
        assert!(r.tick(down + Duration::from_secs(59)).is_empty());
        assert_eq!(r.next_deadline(), Some(down + Duration::from_secs(60)));
        let e = r.tick(down + Duration::from_secs(60));
        assert_eq!(kinds(&e), [(3, EventKind::Removed, "b".into())]);
        assert!(r.is_empty());
        assert_eq!(r.next_deadline(), None);
        assert!(r.by_resource.is_empty());
    }

    #[test]
    fn deregister_removes_at_once() {
        let mut r = registry();
        let t0 = Instant::now();
        r.register(t0, Some(peer(1)), "b", offering("broker", &[]), HB)
            .unwrap();
        let e = r.deregister(&peer(1), "b").unwrap();
        assert_eq!(kinds(&e), [(2, EventKind::Removed, "b".into())]);
        assert!(r.is_empty() && r.deadlines.is_empty() && r.online() == 0);
        assert!(r.tick(t0 + HB * 100).is_empty());
    }

    #[test]
    fn the_deadline_index_follows_heartbeats_lazily() {
        let mut r = registry();
        let t0 = Instant::now();
        r.register(t0, Some(peer(1)), "b", offering("broker", &[]), HB)
            .unwrap();
        for s in 1..=100 {
            r.heartbeat(t0 + HB * s, &peer(1), "b").unwrap();
            assert!(r.tick(t0 + HB * s).is_empty());
            assert_eq!(r.deadlines.len(), 1);
        }
        // A shorter interval on re-registration moves the deadline earlier at once.
        r.register(
            t0 + HB * 100,
            Some(peer(1)),
            "b",
            offering("broker", &[]),
            HB / 10,
        )
        .unwrap();
        assert_eq!(r.deadlines.len(), 1);
        let e = r.tick(t0 + HB * 100 + HB * 3 / 10);
        assert_eq!(e.len(), 1);
    }

    #[test]
    fn revisions_grow_by_one_and_history_is_a_window() {
        let mut r = registry();
        let t0 = Instant::now();
        for i in 0..10 {
            let e = r
                .register(t0, Some(peer(1)), &format!("n{i}"), offering("x", &[]), HB)
                .unwrap();
            assert_eq!(e[0].rev, i + 1);
        }
        assert_eq!(r.rev(), 10);
        assert_eq!(r.history.len(), 8);
        assert_eq!(r.history.front().unwrap().rev, 3);
        let at = |rev| Position {
            epoch: "epoch-a".into(),
            rev,
        };
        // Revisions 3..=10 are kept, so a watcher that saw 2 can resume; one that saw 1 cannot.
        match r.watch_from(Some(&at(2)), &[]) {
            WatchStart::Resume(events) => {
                assert_eq!(
                    events.iter().map(|e| e.rev).collect::<Vec<_>>(),
                    (3..=10).collect::<Vec<_>>()
                )
            }
            other => panic!("{other:?}"),
        }
        assert!(
            matches!(r.watch_from(Some(&at(1)), &[]), WatchStart::Snapshot(s) if s.len() == 10)
        );
        assert_eq!(r.watch_from(Some(&at(10)), &[]), WatchStart::Resume(vec![]));
        // A revision from the future, or from another beacon run: snapshot.
        assert!(matches!(
            r.watch_from(Some(&at(11)), &[]),
            WatchStart::Snapshot(_)
        ));
        let other_run = Position {
            epoch: "epoch-b".into(),
            rev: 9,
        };
        assert!(matches!(
            r.watch_from(Some(&other_run), &[]),
            WatchStart::Snapshot(_)
        ));
        assert!(matches!(r.watch_from(None, &[]), WatchStart::Snapshot(_)));
    }

    #[test]
    fn watches_see_only_their_resources() {
        let mut r = registry();
        let t0 = Instant::now();
        r.register(t0, Some(peer(1)), "a", offering("broker", &[]), HB)
            .unwrap();
        r.register(t0, Some(peer(1)), "b", offering("ipc", &[]), HB)
            .unwrap();
        r.register(t0, Some(peer(1)), "c", offering("broker", &[]), HB)
            .unwrap();
        let brokers = vec!["broker".to_string()];
        match r.watch_from(None, &brokers) {
            WatchStart::Snapshot(nodes) => assert_eq!(names(&nodes), ["a", "c"]),
            other => panic!("{other:?}"),
        }
        let start = Position {
            epoch: "epoch-a".into(),
            rev: 0,
        };
        match r.watch_from(Some(&start), &brokers) {
            WatchStart::Resume(events) => assert_eq!(
                kinds(&events),
                [
                    (1, EventKind::Nodeup, "a".into()),
                    (3, EventKind::Nodeup, "c".into())
                ]
            ),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn a_full_registry_refuses_new_nodes_but_updates_known_ones() {
        let mut r = Registry::new(
            RegistryConfig {
                liveness: 3,
                offline_ttl: Duration::from_secs(1),
                history: 0,
                max_nodes: 2,
            },
            "e".into(),
        );
        let t0 = Instant::now();
        r.register(t0, Some(peer(1)), "a", offering("x", &[]), HB)
            .unwrap();
        r.register(t0, Some(peer(1)), "b", offering("x", &[]), HB)
            .unwrap();
        assert_eq!(
            r.register(t0, Some(peer(1)), "c", offering("x", &[]), HB),
            Err(RegistryError::Full(2))
        );
        assert!(r
            .register(t0, Some(peer(1)), "a", offering("y", &[]), HB)
            .is_ok());
        assert!(r.history.is_empty());
    }

    #[test]
    fn restored_nodes_are_offline_until_they_come_back() {
        let mut r = registry();
        let t0 = Instant::now();
        r.register(t0, Some(peer(1)), "a", offering("broker", &["ipc"]), HB)
            .unwrap();
        r.register(t0, Some(peer(2)), "b", offering("ipc", &[]), HB)
            .unwrap();
        let saved: Vec<NodeView> = r.snapshot().iter().map(|v| v.view().clone()).collect();

        let mut again = Registry::new(r.config.clone(), "epoch-b".into());
        let mut bad = saved[0].clone();
        bad.name = "bad name".into();
        let mut input = saved.clone();
        input.push(bad);
        input.push(saved[1].clone());
        let (restored, skipped) = again.restore(t0, input);
        assert_eq!(restored, 2);
        assert_eq!(skipped.len(), 2, "{skipped:?}");
        assert_eq!(again.rev(), 0);
        assert!(
            again.lookup("broker").is_empty(),
            "restored nodes are not offered"
        );
        assert_eq!(again.list(t0).len(), 2);
        // The first heartbeat, from any connection, brings it back online and takes it over:
        // heartbeats from another connection are then refused.
        let e = again.heartbeat(t0, &peer(1), "a").unwrap();
        assert_eq!(kinds(&e), [(1, EventKind::Nodeup, "a".into())]);
        assert_eq!(again.lookup("broker").len(), 1);
        assert!(again.heartbeat(t0, &peer(9), "a").is_err());
        assert!(again.deregister(&peer(9), "a").is_err());
        assert!(again.heartbeat(t0, &peer(1), "a").unwrap().is_empty());
        // A register from another connection still takes the entry over, as always.
        let e = again
            .register(t0, Some(peer(7)), "a", offering("broker", &["ipc"]), HB)
            .unwrap();
        assert!(e.is_empty(), "same content: no change");
        assert!(again.heartbeat(t0, &peer(1), "a").is_err());
        assert!(again.heartbeat(t0, &peer(7), "a").is_ok());
        // The one that never comes back is removed after offline_ttl (and `a`, silent since
        // it re-registered, went offline on the way).
        let e = again.tick(t0 + Duration::from_secs(60));
        assert_eq!(
            kinds(&e),
            [
                (2, EventKind::Nodedown, "a".into()),
                (3, EventKind::Removed, "b".into())
            ]
        );
    }
}
