//! The online providers of the resources roles follow with
//! [`WatchProviders`](troupe_core::cluster::WatchProviders), sans-IO. Both backends use it:
//! the beacon client feeds it a beacon subscription, the etcd client an etcd watch.
//!
//! The client keeps one subscription for every provider watch: on the union of their
//! resources (on every resource when the union is larger than a watch may filter on). Its
//! snapshot replaces the mirror of the watched nodes, its events update it, and each watch is
//! told its picture — for each of its resources, the online nodes offering it with their
//! endpoints for it, sorted by node name — when the picture is first known and then only when
//! it changes. This node itself is shown from its own registration, as it is now. While no
//! beacon is reachable, every watch is told `reachable: false` with empty lists; when one
//! answers again, the picture comes back with the subscription's next snapshot (or resume).

use std::collections::{BTreeMap, BTreeSet};

use troupe_core::cluster::{Provider, ProvidersChanged, WatchId};

use crate::protocol::{check_name, Endpoints, Event, EventKind, Node, Status, MAX_WATCH_RESOURCES};

/// Most provider watches one client holds.
pub const MAX_PROVIDER_WATCHES: usize = 1024;

#[derive(Debug)]
struct Watch {
    resources: BTreeSet<String>,
    last: Option<ProvidersChanged>,
}

/// This node as it offers itself: its name and what it offers.
pub type Own = (String, BTreeMap<String, Endpoints>);

/// The provider watches and the mirror that feeds them.
#[derive(Debug)]
pub struct Providers {
    watches: BTreeMap<WatchId, Watch>,
    /// The filter the subscription was last given (empty: every resource); `None`: none.
    filter: Option<Vec<String>>,
    /// The watched nodes by name, as the subscription shows them.
    nodes: BTreeMap<String, Node>,
    /// Whether `nodes` reflects `filter`: a snapshot (or resume) came since the subscription
    /// was last changed or no beacon was reachable.
    fresh: bool,
    reachable: bool,
    own: Option<Own>,
    /// Whether something changed since the watches were last told.
    dirty: bool,
}

impl Providers {
    /// No watch; `own` is this node when it registers.
    pub fn new(own: Option<Own>) -> Self {
        Providers {
            watches: BTreeMap::new(),
            filter: None,
            nodes: BTreeMap::new(),
            fresh: false,
            reachable: true,
            own,
            dirty: false,
        }
    }

    /// Watches held.
    pub fn len(&self) -> usize {
        self.watches.len()
    }

    /// Whether no watch is held.
    pub fn is_empty(&self) -> bool {
        self.watches.is_empty()
    }

    /// Adds a watch of `resources`; the error is a sentence naming what is wrong.
    pub fn add(&mut self, id: WatchId, resources: Vec<String>) -> Result<(), String> {
        if self.watches.len() >= MAX_PROVIDER_WATCHES {
            return Err(format!(
                "this node already follows the providers of {MAX_PROVIDER_WATCHES} watches, the most it may; unwatch some first"
            ));
        }
        if resources.is_empty() {
            return Err("a provider watch needs at least one resource".into());
        }
        if resources.len() > MAX_WATCH_RESOURCES {
            return Err(format!(
                "a provider watch may follow at most {MAX_WATCH_RESOURCES} resources, not {}",
                resources.len()
            ));
        }
        for resource in &resources {
            check_name("resource", resource).map_err(|err| format!("cannot watch {err}"))?;
        }
        self.watches.insert(
            id,
            Watch {
                resources: resources.into_iter().collect(),
                last: None,
            },
        );
        self.dirty = true;
        Ok(())
    }

    /// Ends a watch (nothing when it is not held).
    pub fn remove(&mut self, id: WatchId) {
        self.watches.remove(&id);
    }

    /// The filter the subscription should have: the union of the watched resources (empty,
    /// meaning every resource, when larger than a watch may filter on); `None` without watches.
    pub fn wanted_filter(&self) -> Option<Vec<String>> {
        if self.watches.is_empty() {
            return None;
        }
        let union: BTreeSet<&String> = self.watches.values().flat_map(|w| &w.resources).collect();
        if union.len() > MAX_WATCH_RESOURCES {
            return Some(Vec::new());
        }
        Some(union.into_iter().cloned().collect())
    }

    /// The filter the subscription has now.
    pub fn filter(&self) -> Option<&[String]> {
        self.filter.as_deref()
    }

    /// The subscription was given `filter` (or ended, with `None`): the mirror waits for its
    /// snapshot.
    pub fn resubscribed(&mut self, filter: Option<Vec<String>>) {
        if filter.is_none() {
            self.nodes.clear();
        }
        self.filter = filter;
        self.fresh = false;
        self.dirty = true;
    }

    /// Every watched node now: replaces the mirror.
    pub fn snapshot(&mut self, nodes: Vec<Node>) {
        self.nodes = nodes.into_iter().map(|n| (n.name.clone(), n)).collect();
        self.fresh = true;
        self.dirty = true;
    }

    /// One change, as the subscription shows it.
    pub fn event(&mut self, event: Event) {
        match event.kind {
            EventKind::Removed => {
                self.nodes.remove(&event.node.name);
            }
            EventKind::Nodeup | EventKind::Nodedown | EventKind::Changed => {
                self.nodes.insert(event.node.name.clone(), event.node);
            }
        }
        self.dirty = true;
    }

    /// The subscription resumed: the changes it missed came (as events) and the mirror is
    /// current.
    pub fn resumed(&mut self) {
        self.fresh = true;
        self.dirty = true;
    }

    /// Whether any beacon is reachable. Losing them all makes the mirror stale until the
    /// subscription's next snapshot or resume.
    pub fn set_reachable(&mut self, reachable: bool) {
        if reachable != self.reachable {
            self.reachable = reachable;
            if !reachable {
                self.fresh = false;
            }
            self.dirty = true;
        }
    }

    /// What this node offers now.
    pub fn set_own(&mut self, own: Option<Own>) {
        if own != self.own {
            self.own = own;
            self.dirty = true;
        }
    }

    /// The watches whose picture is known and differs from what they were last told, each
    /// with its new picture.
    pub fn updates(&mut self) -> Vec<(WatchId, ProvidersChanged)> {
        if !std::mem::take(&mut self.dirty) {
            return Vec::new();
        }
        let mut lists: BTreeMap<&str, Vec<Provider>> = BTreeMap::new();
        let mut updates = Vec::new();
        for (id, watch) in &mut self.watches {
            let picture = if !self.reachable {
                ProvidersChanged {
                    providers: watch
                        .resources
                        .iter()
                        .map(|r| (r.clone(), Vec::new()))
                        .collect(),
                    reachable: false,
                }
            } else if self.fresh && covers(self.filter.as_deref(), &watch.resources) {
                let providers = watch
                    .resources
                    .iter()
                    .map(|r| {
                        let list = lists
                            .entry(r.as_str())
                            .or_insert_with(|| providers_of(&self.nodes, self.own.as_ref(), r));
                        (r.clone(), list.clone())
                    })
                    .collect();
                ProvidersChanged {
                    providers,
                    reachable: true,
                }
            } else {
                continue;
            };
            if watch.last.as_ref() != Some(&picture) {
                watch.last = Some(picture.clone());
                updates.push((*id, picture));
            }
        }
        updates
    }
}

/// Whether a subscription with `filter` sees every one of `resources`.
fn covers(filter: Option<&[String]>, resources: &BTreeSet<String>) -> bool {
    match filter {
        None => false,
        Some([]) => true,
        Some(filter) => resources.iter().all(|r| filter.contains(r)),
    }
}

/// The online providers of `resource`, sorted by node name, this node from `own`.
fn providers_of(
    nodes: &BTreeMap<String, Node>,
    own: Option<&Own>,
    resource: &str,
) -> Vec<Provider> {
    let own_name = own.map(|(name, _)| name.as_str());
    let mut providers: Vec<Provider> = nodes
        .values()
        .filter(|node| node.status == Status::Online && Some(node.name.as_str()) != own_name)
        .filter_map(|node| {
            Some(Provider {
                node: node.name.clone(),
                endpoints: node.endpoints_for(resource)?.clone(),
            })
        })
        .collect();
    if let Some((name, offers)) = own {
        if let Some(endpoints) = offers.get(resource) {
            let at = providers.partition_point(|p| p.node < *name);
            providers.insert(
                at,
                Provider {
                    node: name.clone(),
                    endpoints: endpoints.clone(),
                },
            );
        }
    }
    providers
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::NodeView;

    fn node(name: &str, status: Status, offers: &[(&str, &str)]) -> Node {
        let offers: BTreeMap<String, Endpoints> = offers
            .iter()
            .map(|(r, a)| (r.to_string(), [("main".to_string(), a.to_string())].into()))
            .collect();
        let (resource, endpoints) = offers
            .iter()
            .next()
            .map(|(r, e)| (r.clone(), e.clone()))
            .unwrap();
        Node::new(NodeView {
            name: name.into(),
            resource,
            requires: vec![],
            endpoints,
            offers,
            metadata: Default::default(),
            status,
            heartbeat_ms: 1000,
            last_seen_ms: None,
        })
    }

    fn event(kind: EventKind, node: Node) -> Event {
        Event {
            rev: 1,
            kind,
            node,
            previous: None,
        }
    }

    fn strings(items: &[&str]) -> Vec<String> {
        items.iter().map(|s| s.to_string()).collect()
    }

    /// `(resource, [(node, main endpoint)])` of a picture.
    fn shown(picture: &ProvidersChanged) -> Vec<(String, Vec<(String, String)>)> {
        picture
            .providers
            .iter()
            .map(|(r, list)| {
                let list = list
                    .iter()
                    .map(|p| {
                        let main = p.endpoints.get("main").cloned().unwrap_or_default();
                        (p.node.clone(), main)
                    })
                    .collect();
                (r.clone(), list)
            })
            .collect()
    }

    fn pair(resource: &str, list: &[(&str, &str)]) -> (String, Vec<(String, String)>) {
        (
            resource.to_string(),
            list.iter()
                .map(|(n, a)| (n.to_string(), a.to_string()))
                .collect(),
        )
    }

    #[test]
    fn the_picture_is_sent_once_known_then_only_when_it_changes() {
        let own: Own = (
            "me".into(),
            [(
                "broker".to_string(),
                [("main".to_string(), "tcp://me:1".to_string())].into(),
            )]
            .into(),
        );
        let mut p = Providers::new(Some(own));
        p.add(WatchId(1), strings(&["broker", "db"])).unwrap();
        assert_eq!(p.wanted_filter(), Some(strings(&["broker", "db"])));
        p.resubscribed(p.wanted_filter());
        assert!(
            p.updates().is_empty(),
            "nothing is known before the snapshot"
        );
        p.snapshot(vec![
            node(
                "b2",
                Status::Online,
                &[("broker", "tcp://b2:1"), ("ipc", "ipc://b2")],
            ),
            node("a1", Status::Online, &[("broker", "tcp://a1:1")]),
            node("z9", Status::Offline, &[("broker", "tcp://z9:1")]),
            // This node as the beacon last saw it: its own registration wins.
            node("me", Status::Online, &[("broker", "tcp://old:1")]),
        ]);
        let updates = p.updates();
        assert_eq!(updates.len(), 1);
        assert!(updates[0].1.reachable);
        assert_eq!(
            shown(&updates[0].1),
            [
                pair(
                    "broker",
                    &[
                        ("a1", "tcp://a1:1"),
                        ("b2", "tcp://b2:1"),
                        ("me", "tcp://me:1")
                    ]
                ),
                pair("db", &[]),
            ]
        );
        assert_eq!(updates[0].1.unmet(), ["db"]);
        // A change that does not touch the picture (another resource of a provider) is not sent.
        p.event(event(
            EventKind::Changed,
            node(
                "b2",
                Status::Online,
                &[("broker", "tcp://b2:1"), ("ipc", "ipc://b2/new")],
            ),
        ));
        assert!(p.updates().is_empty());
        // A provider goes down, another comes up.
        p.event(event(
            EventKind::Nodedown,
            node("a1", Status::Offline, &[("broker", "tcp://a1:1")]),
        ));
        p.event(event(
            EventKind::Nodeup,
            node("d1", Status::Online, &[("db", "tcp://d1:1")]),
        ));
        let updates = p.updates();
        assert_eq!(
            shown(&updates[0].1),
            [
                pair("broker", &[("b2", "tcp://b2:1"), ("me", "tcp://me:1")]),
                pair("db", &[("d1", "tcp://d1:1")]),
            ]
        );
        // This node withdraws: it leaves the picture at once.
        p.set_own(Some(("me".into(), BTreeMap::new())));
        p.event(event(
            EventKind::Removed,
            node("b2", Status::Online, &[("broker", "tcp://b2:1")]),
        ));
        let updates = p.updates();
        assert_eq!(
            shown(&updates[0].1),
            [pair("broker", &[]), pair("db", &[("d1", "tcp://d1:1")])]
        );
    }

    #[test]
    fn unreachable_beacons_empty_the_picture_until_the_next_snapshot() {
        let mut p = Providers::new(None);
        p.add(WatchId(1), strings(&["db"])).unwrap();
        p.resubscribed(p.wanted_filter());
        p.snapshot(vec![node("d1", Status::Online, &[("db", "tcp://d1:1")])]);
        assert_eq!(p.updates().len(), 1);
        p.set_reachable(false);
        let updates = p.updates();
        assert_eq!(updates.len(), 1);
        assert!(!updates[0].1.reachable);
        assert_eq!(shown(&updates[0].1), [pair("db", &[])]);
        // A beacon answers again: nothing until the subscription is current again.
        p.set_reachable(true);
        assert!(p.updates().is_empty());
        p.resumed();
        let updates = p.updates();
        assert!(updates[0].1.reachable);
        assert_eq!(shown(&updates[0].1), [pair("db", &[("d1", "tcp://d1:1")])]);
        // A watch added while nothing is reachable is told so at once.
        p.set_reachable(false);
        p.updates();
        p.add(WatchId(2), strings(&["other"])).unwrap();
        let updates = p.updates();
        assert_eq!(updates.len(), 1);
        assert_eq!(updates[0].0, WatchId(2));
    }

    #[test]
    fn a_new_watch_waits_for_a_snapshot_covering_its_resources() {
        let mut p = Providers::new(None);
        p.add(WatchId(1), strings(&["db"])).unwrap();
        p.resubscribed(p.wanted_filter());
        p.snapshot(vec![node("d1", Status::Online, &[("db", "tcp://d1:1")])]);
        p.updates();
        p.add(WatchId(2), strings(&["cache"])).unwrap();
        assert_eq!(p.wanted_filter(), Some(strings(&["cache", "db"])));
        p.resubscribed(p.wanted_filter());
        assert!(p.updates().is_empty());
        p.snapshot(vec![
            node("c1", Status::Online, &[("cache", "tcp://c1:1")]),
            node("d1", Status::Online, &[("db", "tcp://d1:1")]),
        ]);
        let updates = p.updates();
        assert_eq!(updates.len(), 1, "the first watch's picture did not change");
        assert_eq!(updates[0].0, WatchId(2));
        p.remove(WatchId(2));
        p.remove(WatchId(1));
        assert_eq!(p.wanted_filter(), None);
    }

    #[test]
    fn watches_are_checked_and_bounded() {
        let mut p = Providers::new(None);
        assert!(p
            .add(WatchId(1), vec![])
            .unwrap_err()
            .contains("at least one"));
        let err = p.add(WatchId(1), strings(&["a b"])).unwrap_err();
        assert!(err.contains("\"a b\""), "{err}");
        for i in 0..MAX_PROVIDER_WATCHES as u64 {
            p.add(WatchId(i), vec![format!("r{i}")]).unwrap();
        }
        assert!(p
            .add(WatchId(5000), strings(&["x"]))
            .unwrap_err()
            .contains("1024"));
        // More resources than one beacon watch may filter on: the subscription takes them all.
        assert_eq!(p.wanted_filter(), Some(vec![]));
        assert_eq!(p.len(), MAX_PROVIDER_WATCHES);
    }
}
