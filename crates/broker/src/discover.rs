//! Finding brokers through the beacons: [`follow`] watches the online nodes offering the
//! resource `broker` and turns each change into the set of endpoints a worker or a client of
//! one broker service should use, handed to a sink — typically
//! [`WorkerSetHandle::set_endpoints`](crate::worker_set::WorkerSetHandle::set_endpoints) or
//! [`BrokerEndpoints::set_endpoints`](crate::client::BrokerEndpoints::set_endpoints).
//!
//! - [`DiscoverKind::Worker`]: the `<service>.backend` endpoint of every online broker that
//!   has one.
//! - [`DiscoverKind::Client`]: the `majordomo` endpoint of every online broker, keeping only
//!   the brokers that also list `<service>.frontend` when at least one does (a broker that
//!   serves the service on its own sockets is preferred; a Majordomo-only service is served
//!   by any broker).
//!
//! The beacons push every change (no polling), so a broker is in the set as soon as its
//! registration reaches them. While no beacon answers the set is kept as it was: a worker stays
//! with the brokers it has (the brokers' heartbeats tell it when one is dead).
//!
//! The cluster client runs in an actix System on a thread of its own; [`Discovery::stop`]
//! ends it.

use std::collections::BTreeSet;
use std::path::PathBuf;
use std::sync::mpsc;
use std::thread::JoinHandle;
use std::time::Duration;

use actix::prelude::*;
use tokio::sync::oneshot;
use troupe_beacon::client::{start_client, ClusterConfig};
use troupe_core::cluster::{ProvidersChanged, Unwatch, WatchProviders};
use troupe_core::settings::ZmqEndpoint;

use crate::actor::BROKER_RESOURCE;
use crate::discovery::MAJORDOMO_ENDPOINT;

/// How long [`follow`] waits for the cluster client to start and take the watch.
const START_WITHIN: Duration = Duration::from_secs(10);

/// Which side of a broker service the endpoints are for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DiscoverKind {
    /// A worker: the service's backends.
    Worker,
    /// A Majordomo client: the brokers' Majordomo sockets.
    Client,
}

impl DiscoverKind {
    fn name(self) -> &'static str {
        match self {
            DiscoverKind::Worker => "worker",
            DiscoverKind::Client => "client",
        }
    }
}

/// What to follow.
#[derive(Debug, Clone)]
pub struct DiscoverOptions {
    /// The beacons to ask (ZeroMQ endpoints).
    pub beacons: Vec<String>,
    /// The cluster's cookie file (mode 0600), if the beacons require one.
    pub cookie_file: Option<PathBuf>,
    /// Another backend to ask instead of `beacons` (etcd): its `[cluster]` keys (see
    /// `ClusterConfig::for_services`).
    pub cluster: Option<ClusterConfig>,
    /// The broker service, e.g. `echo`.
    pub service: String,
    /// Worker or client endpoints.
    pub kind: DiscoverKind,
}

/// Why [`follow`] could not start.
#[derive(Debug, thiserror::Error)]
pub enum DiscoverError {
    /// No beacon was given.
    #[error("no beacon to ask")]
    NoBeacon,
    /// A beacon address is not a ZeroMQ endpoint.
    #[error("beacon {beacon}: {reason}")]
    Beacon {
        /// The address given.
        beacon: String,
        /// Why it is refused.
        reason: String,
    },
    /// The cluster client did not start (an unreadable cookie file, say).
    #[error("cannot ask the beacons {beacons}: {reason}")]
    Start {
        /// The beacons, space-separated.
        beacons: String,
        /// Why.
        reason: String,
    },
}

/// The endpoints `changed` gives a `kind` of `service`; `None` while no beacon answers (keep
/// what you have).
pub fn endpoints_for(
    changed: &ProvidersChanged,
    service: &str,
    kind: DiscoverKind,
) -> Option<BTreeSet<String>> {
    if !changed.reachable {
        return None;
    }
    let providers = changed
        .providers
        .get(BROKER_RESOURCE)
        .map(Vec::as_slice)
        .unwrap_or_default();
    let endpoints = match kind {
        DiscoverKind::Worker => {
            let backend = format!("{service}.backend");
            providers
                .iter()
                .filter_map(|p| p.endpoints.get(&backend).cloned())
                .collect()
        }
        DiscoverKind::Client => {
            let frontend = format!("{service}.frontend");
            let serving = providers
                .iter()
                .any(|p| p.endpoints.contains_key(&frontend));
            providers
                .iter()
                .filter(|p| !serving || p.endpoints.contains_key(&frontend))
                .filter_map(|p| p.endpoints.get(MAJORDOMO_ENDPOINT).cloned())
                .collect()
        }
    };
    Some(endpoints)
}

/// A running [`follow`]: stops when dropped or with [`Discovery::stop`].
pub struct Discovery {
    stop: Option<oneshot::Sender<()>>,
    thread: Option<JoinHandle<()>>,
}

impl Discovery {
    /// Stops following and ends the cluster client; returns once its thread has ended.
    pub fn stop(mut self) {
        self.end();
    }

    fn end(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

impl Drop for Discovery {
    fn drop(&mut self) {
        self.end();
    }
}

/// Follows the online brokers through `options.beacons` and calls `sink` with the endpoint
/// set for `options.kind` of `options.service` (see [`endpoints_for`]) when the picture is
/// first known, then each time the set changes. Returns once the beacons' watch is set up
/// (not waiting for an answer from a beacon: an unreachable beacon only delays the first
/// set).
pub fn follow<S>(options: DiscoverOptions, sink: S) -> Result<Discovery, DiscoverError>
where
    S: Fn(BTreeSet<String>) + Send + 'static,
{
    let (config, shown) = match &options.cluster {
        Some(cluster) => (cluster.for_services(), cluster.targets().join(" ")),
        None => {
            if options.beacons.is_empty() {
                return Err(DiscoverError::NoBeacon);
            }
            let beacons = options
                .beacons
                .iter()
                .map(|beacon| {
                    beacon
                        .parse::<ZmqEndpoint>()
                        .map_err(|reason| DiscoverError::Beacon {
                            beacon: beacon.clone(),
                            reason,
                        })
                })
                .collect::<Result<Vec<_>, _>>()?;
            let config = ClusterConfig {
                beacons,
                cookie_file: options.cookie_file.clone().unwrap_or_default(),
                ..ClusterConfig::default()
            };
            (config, options.beacons.join(" "))
        }
    };
    let node = format!(
        "{}.{}-{}",
        safe_name(&crate::discovery::host_name()),
        options.kind.name(),
        std::process::id()
    );
    let (ready_tx, ready_rx) = mpsc::channel::<Result<(), String>>();
    let (stop_tx, stop_rx) = oneshot::channel::<()>();
    let watcher = Watcher {
        sink: Box::new(sink),
        service: options.service.clone(),
        kind: options.kind,
        last: None,
    };
    let thread = std::thread::Builder::new()
        .name("broker-discover".into())
        .spawn(move || {
            actix_rt::System::new().block_on(run(config, node, watcher, ready_tx, stop_rx));
        })
        .map_err(|err| DiscoverError::Start {
            beacons: shown.clone(),
            reason: format!("cannot start a thread: {err}"),
        })?;
    let mut discovery = Discovery {
        stop: Some(stop_tx),
        thread: Some(thread),
    };
    match ready_rx.recv_timeout(START_WITHIN) {
        Ok(Ok(())) => Ok(discovery),
        Ok(Err(reason)) => {
            discovery.end();
            Err(DiscoverError::Start {
                beacons: shown,
                reason,
            })
        }
        Err(_) => {
            discovery.end();
            Err(DiscoverError::Start {
                beacons: shown,
                reason: "the cluster client did not start".into(),
            })
        }
    }
}

/// The cluster client's life on the discovery thread.
async fn run(
    config: ClusterConfig,
    node: String,
    watcher: Watcher,
    ready: mpsc::Sender<Result<(), String>>,
    stop: oneshot::Receiver<()>,
) {
    let (client, thread_done) = match start_client(&config, &node, false).await {
        Ok(started) => started,
        Err(err) => {
            let _ = ready.send(Err(err.to_string()));
            return;
        }
    };
    let watcher = watcher.start();
    let watch = WatchProviders {
        resources: vec![BROKER_RESOURCE.to_string()],
        recipient: watcher.recipient(),
    };
    match client.watch.send(watch).await {
        Ok(Ok(id)) => {
            let _ = ready.send(Ok(()));
            let _ = stop.await;
            let _ = client.unwatch.send(Unwatch(id)).await;
        }
        Ok(Err(err)) => {
            let _ = ready.send(Err(format!("the watch was refused: {err}")));
        }
        Err(_) => {
            let _ = ready.send(Err("the cluster client stopped".into()));
        }
    }
    let _ = client.shutdown.send(troupe_core::Shutdown).await;
    let _ = thread_done.await;
}

/// Receives the pictures and pushes the changed endpoint sets.
struct Watcher {
    sink: Box<dyn Fn(BTreeSet<String>) + Send>,
    service: String,
    kind: DiscoverKind,
    last: Option<BTreeSet<String>>,
}

impl Actor for Watcher {
    type Context = Context<Self>;
}

impl Watcher {
    /// Pushes the endpoint set of `changed` if it differs from the last one pushed; an
    /// unreachable picture changes nothing.
    fn push(&mut self, changed: &ProvidersChanged) {
        let Some(endpoints) = endpoints_for(changed, &self.service, self.kind) else {
            tracing::debug!(service = %self.service, "no beacon answers; keeping the brokers known");
            return;
        };
        if self.last.as_ref() == Some(&endpoints) {
            return;
        }
        tracing::debug!(service = %self.service, kind = self.kind.name(), ?endpoints, "brokers changed");
        self.last = Some(endpoints.clone());
        (self.sink)(endpoints);
    }
}

impl Handler<ProvidersChanged> for Watcher {
    type Result = ();

    fn handle(&mut self, changed: ProvidersChanged, _: &mut Self::Context) {
        self.push(&changed);
    }
}

/// `name` with every character a beacon refuses in a node name replaced by `-`.
fn safe_name(name: &str) -> String {
    let safe: String = name
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || "-_.@:/".contains(c) {
                c
            } else {
                '-'
            }
        })
        .take(64)
        .collect();
    if safe.is_empty() {
        "troupe".into()
    } else {
        safe
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use troupe_core::cluster::Provider;

    use super::*;

    fn provider(node: &str, endpoints: &[(&str, &str)]) -> Provider {
        Provider::new(node, endpoints)
    }

    fn picture(providers: Vec<Provider>) -> ProvidersChanged {
        ProvidersChanged {
            providers: BTreeMap::from([(BROKER_RESOURCE.to_string(), providers)]),
            reachable: true,
        }
    }

    fn set(items: &[&str]) -> BTreeSet<String> {
        items.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn workers_get_the_backend_of_every_broker_that_has_one() {
        let changed = picture(vec![
            provider(
                "hub-1",
                &[
                    ("echo.backend", "tcp://hub-1:7502"),
                    ("echo.frontend", "tcp://hub-1:7501"),
                    ("majordomo", "tcp://hub-1:7500"),
                ],
            ),
            provider("hub-2", &[("majordomo", "tcp://hub-2:7500")]),
            provider(
                "hub-3",
                &[
                    ("echo.backend", "tcp://hub-3:7502"),
                    ("resize.backend", "tcp://hub-3:7512"),
                ],
            ),
        ]);
        assert_eq!(
            endpoints_for(&changed, "echo", DiscoverKind::Worker),
            Some(set(&["tcp://hub-1:7502", "tcp://hub-3:7502"]))
        );
        assert_eq!(
            endpoints_for(&changed, "resize", DiscoverKind::Worker),
            Some(set(&["tcp://hub-3:7512"]))
        );
        assert_eq!(
            endpoints_for(&changed, "weather", DiscoverKind::Worker),
            Some(set(&[]))
        );
    }

    #[test]
    fn clients_prefer_the_brokers_that_serve_the_service() {
        let changed = picture(vec![
            provider(
                "hub-1",
                &[
                    ("echo.frontend", "tcp://hub-1:7501"),
                    ("majordomo", "tcp://hub-1:7500"),
                ],
            ),
            provider("hub-2", &[("majordomo", "tcp://hub-2:7500")]),
            // Serves `echo` but has no Majordomo socket: nothing a Majordomo client can use.
            provider("hub-3", &[("echo.frontend", "tcp://hub-3:7501")]),
        ]);
        assert_eq!(
            endpoints_for(&changed, "echo", DiscoverKind::Client),
            Some(set(&["tcp://hub-1:7500"]))
        );
        // A service no broker lists (Majordomo-only): every Majordomo socket.
        assert_eq!(
            endpoints_for(&changed, "weather", DiscoverKind::Client),
            Some(set(&["tcp://hub-1:7500", "tcp://hub-2:7500"]))
        );
    }

    #[test]
    fn an_unreachable_picture_keeps_the_set_and_an_empty_one_empties_it() {
        let unknown = ProvidersChanged {
            providers: BTreeMap::from([(BROKER_RESOURCE.to_string(), vec![])]),
            reachable: false,
        };
        assert_eq!(endpoints_for(&unknown, "echo", DiscoverKind::Worker), None);
        assert_eq!(endpoints_for(&unknown, "echo", DiscoverKind::Client), None);
        let none = picture(vec![]);
        assert_eq!(
            endpoints_for(&none, "echo", DiscoverKind::Client),
            Some(set(&[]))
        );
        let missing = ProvidersChanged {
            providers: BTreeMap::new(),
            reachable: true,
        };
        assert_eq!(
            endpoints_for(&missing, "echo", DiscoverKind::Worker),
            Some(set(&[]))
        );
    }

    #[test]
    fn the_watcher_pushes_only_changes() {
        let pushed = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let seen = pushed.clone();
        let mut watcher = Watcher {
            sink: Box::new(move |set| seen.lock().unwrap().push(set)),
            service: "echo".into(),
            kind: DiscoverKind::Worker,
            last: None,
        };
        let one = picture(vec![provider("a", &[("echo.backend", "tcp://a:1")])]);
        let two = picture(vec![
            provider("a", &[("echo.backend", "tcp://a:1")]),
            provider("b", &[("echo.backend", "tcp://b:1")]),
        ]);
        let away = ProvidersChanged {
            providers: BTreeMap::new(),
            reachable: false,
        };
        for changed in [&one, &one, &away, &two, &away, &one] {
            watcher.push(changed);
        }
        assert_eq!(
            *pushed.lock().unwrap(),
            [
                set(&["tcp://a:1"]),
                set(&["tcp://a:1", "tcp://b:1"]),
                set(&["tcp://a:1"])
            ]
        );
    }

    #[test]
    fn node_names_are_made_acceptable() {
        assert_eq!(safe_name("hub 1(x)"), "hub-1-x-");
        assert_eq!(safe_name(""), "troupe");
    }
}
