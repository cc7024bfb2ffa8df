//! A node offering several resources, each with its own endpoints, against a real beacon on a
//! loopback port, in one process: lookups of each resource, run-time offers and withdrawals,
//! and provider watches that follow them, the providers' liveness and the beacon's.

#[path = "../../../tests/common/ports.rs"]
mod ports;
use ports::free_port;

use std::collections::BTreeMap;
use std::time::Duration;

use actix::prelude::*;
use tokio::sync::mpsc;
use troupe_beacon::client::{
    start_client, start_node_client, AwaitRequirements, ListNodes, LookupResource, Offer, Provider,
    ProvidersChanged, Unwatch, WatchProviders, Withdraw,
};
use troupe_beacon::server::start_server;
use troupe_beacon::{BeaconConfig, ClusterConfig};
use troupe_core::settings::Duration as ConfigDuration;
use troupe_core::Shutdown;

const WAIT: Duration = Duration::from_secs(20);

type Endpoints = BTreeMap<String, String>;

fn endpoints(entries: &[(&str, &str)]) -> Endpoints {
    entries
        .iter()
        .map(|(n, a)| (n.to_string(), a.to_string()))
        .collect()
}

fn beacon_config(port: u16) -> BeaconConfig {
    BeaconConfig {
        bind: format!("tcp://127.0.0.1:{port}").parse().unwrap(),
        ..BeaconConfig::default()
    }
}

/// A member of the cluster at `port` declaring `resources`, with `endpoints` for the first.
fn member(port: u16, resources: &[&str], endpoints: Endpoints) -> ClusterConfig {
    ClusterConfig {
        beacons: vec![format!("tcp://127.0.0.1:{port}").parse().unwrap()],
        resources: resources.iter().map(|s| s.to_string()).collect(),
        endpoints,
        heartbeat_interval: ConfigDuration::from_millis(100),
        request_timeout: ConfigDuration::from_secs(1),
        ..ClusterConfig::default()
    }
}

/// Forwards pictures to a channel the test reads.
struct Forward(mpsc::UnboundedSender<ProvidersChanged>);

impl Actor for Forward {
    type Context = Context<Self>;
}

impl Handler<ProvidersChanged> for Forward {
    type Result = ();
    fn handle(&mut self, changed: ProvidersChanged, _: &mut Self::Context) {
        let _ = self.0.send(changed);
    }
}

/// The pictures a provider watch received, in order.
struct Pictures {
    rx: mpsc::UnboundedReceiver<ProvidersChanged>,
    seen: Vec<ProvidersChanged>,
}

impl Pictures {
    fn new() -> (Pictures, Recipient<ProvidersChanged>) {
        let (tx, rx) = mpsc::unbounded_channel();
        let recipient = Forward(tx).start().recipient();
        (
            Pictures {
                rx,
                seen: Vec::new(),
            },
            recipient,
        )
    }

    /// Waits for a picture equal to `expected`.
    async fn expect(&mut self, what: &str, expected: ProvidersChanged) {
        let deadline = tokio::time::Instant::now() + WAIT;
        loop {
            match tokio::time::timeout_at(deadline, self.rx.recv()).await {
                Ok(Some(changed)) => {
                    if let Some(last) = self.seen.last() {
                        assert_ne!(*last, changed, "a picture is only sent when it changes");
                    }
                    self.seen.push(changed.clone());
                    if changed == expected {
                        return;
                    }
                }
                Ok(None) => panic!("{what}: the watch ended"),
                Err(_) => panic!(
                    "{what}: not seen within {WAIT:?}\nexpected {expected:#?}\nseen {:#?}",
                    self.seen
                ),
            }
        }
    }
}

/// A picture: for each resource, its providers with their endpoints.
fn picture(entries: &[(&str, &[(&str, Endpoints)])]) -> ProvidersChanged {
    ProvidersChanged {
        providers: entries
            .iter()
            .map(|(resource, providers)| {
                let providers = providers
                    .iter()
                    .map(|(node, endpoints)| Provider {
                        node: node.to_string(),
                        endpoints: endpoints.clone(),
                    })
                    .collect();
                (resource.to_string(), providers)
            })
            .collect(),
        reachable: true,
    }
}

#[test]
fn two_resources_of_one_node_are_each_looked_up_with_their_own_endpoints() {
    actix_rt::System::new().block_on(async {
        let port = free_port();
        let (_server, _server_done) = start_server(&beacon_config(port), None).await.unwrap();
        // A node running the ipc and broker roles: [cluster] endpoints are the first role's.
        let hub_config = member(port, &[], endpoints(&[("sock", "ipc:///run/hub.sock")]));
        let roles = ["ipc".to_string(), "broker".to_string()];
        let (hub, _) = start_node_client(&hub_config, "hub-1", &roles)
            .await
            .unwrap();
        // The broker role offers its endpoints once its sockets are open.
        let frontend = endpoints(&[("frontend", "tcp://10.0.0.1:7501")]);
        hub.send(Offer {
            resource: "broker".into(),
            endpoints: frontend.clone(),
        })
        .await
        .unwrap()
        .unwrap();

        let (asker, _) = start_client(&member(port, &[], Endpoints::new()), "ops", false)
            .await
            .unwrap();
        let (mut pictures, recipient) = Pictures::new();
        asker
            .send(WatchProviders {
                resources: vec!["broker".into(), "ipc".into()],
                recipient,
            })
            .await
            .unwrap()
            .unwrap();
        pictures
            .expect(
                "both resources offered",
                picture(&[
                    ("broker", &[("hub-1", frontend.clone())]),
                    (
                        "ipc",
                        &[("hub-1", endpoints(&[("sock", "ipc:///run/hub.sock")]))],
                    ),
                ]),
            )
            .await;

        // Each lookup shows the node as a one-resource client expects it: that resource and
        // its endpoints; `offers` lists everything.
        let brokers = asker
            .send(LookupResource("broker".into()))
            .await
            .unwrap()
            .unwrap();
        assert_eq!(brokers.len(), 1);
        assert_eq!(
            (brokers[0].name.as_str(), brokers[0].resource.as_str()),
            ("hub-1", "broker")
        );
        assert_eq!(brokers[0].endpoints, frontend);
        assert_eq!(
            brokers[0].offers.keys().collect::<Vec<_>>(),
            ["broker", "ipc"]
        );
        let ipc = asker
            .send(LookupResource("ipc".into()))
            .await
            .unwrap()
            .unwrap();
        assert_eq!(ipc[0].resource, "ipc");
        assert_eq!(ipc[0].endpoints["sock"], "ipc:///run/hub.sock");
        // `list` shows the primary resource (the first role's).
        let all = asker.send(ListNodes).await.unwrap().unwrap();
        assert_eq!(all[0].resource, "ipc");
        assert_eq!(all[0].endpoints_for("broker"), Some(&frontend));

        // A node requiring `broker` is offered the hub projected onto it.
        let (edge, _) = start_client(
            &ClusterConfig {
                requires: vec!["broker".into()],
                ..member(port, &["edge"], Endpoints::new())
            },
            "edge-1",
            true,
        )
        .await
        .unwrap();
        let requirements = edge
            .send(AwaitRequirements { timeout: WAIT })
            .await
            .unwrap()
            .unwrap();
        assert_eq!(requirements.offers["broker"][0].resource, "broker");
        assert_eq!(requirements.offers["broker"][0].endpoints, frontend);
    });
}

#[test]
fn offers_withdrawals_and_liveness_reach_lookups_and_provider_watches() {
    actix_rt::System::new().block_on(async {
        let port = free_port();
        let (server, server_done) = start_server(&beacon_config(port), None).await.unwrap();
        let nobody = Endpoints::new();

        // A watcher that registers nothing, as the broker's command-line tools are.
        let (watcher, _) = start_client(&member(port, &[], nobody.clone()), "watcher", false)
            .await
            .unwrap();
        let (mut pictures, recipient) = Pictures::new();
        let watch = watcher
            .send(WatchProviders {
                resources: vec!["svc".into(), "extra".into()],
                recipient,
            })
            .await
            .unwrap()
            .unwrap();
        pictures
            .expect("nobody yet", picture(&[("extra", &[]), ("svc", &[])]))
            .await;
        // Refused watches name what is wrong.
        let (_, recipient) = Pictures::new();
        let refused = watcher
            .send(WatchProviders {
                resources: vec!["bad name".into()],
                recipient,
            })
            .await
            .unwrap();
        assert!(
            matches!(&refused, Err(m) if m.contains("\"bad name\"")),
            "{refused:?}"
        );

        let p_api = endpoints(&[("api", "tcp://10.0.0.1:1")]);
        let (p, _) = start_client(&member(port, &["svc"], p_api.clone()), "p-1", true)
            .await
            .unwrap();
        pictures
            .expect(
                "p-1 offers svc",
                picture(&[("extra", &[]), ("svc", &[("p-1", p_api.clone())])]),
            )
            .await;

        // A resource added at run time, with its endpoints.
        let p_extra = endpoints(&[("e", "tcp://10.0.0.1:2")]);
        p.send(Offer {
            resource: "extra".into(),
            endpoints: p_extra.clone(),
        })
        .await
        .unwrap()
        .unwrap();
        pictures
            .expect(
                "p-1 offers extra",
                picture(&[
                    ("extra", &[("p-1", p_extra.clone())]),
                    ("svc", &[("p-1", p_api.clone())]),
                ]),
            )
            .await;
        let (looker, _) = start_client(&member(port, &[], nobody.clone()), "looker", false)
            .await
            .unwrap();
        let found = looker
            .send(LookupResource("extra".into()))
            .await
            .unwrap()
            .unwrap();
        assert_eq!(found.len(), 1);
        assert_eq!(
            (found[0].resource.as_str(), &found[0].endpoints),
            ("extra", &p_extra)
        );
        let bad = p
            .send(Offer {
                resource: "extra".into(),
                endpoints: endpoints(&[("e", "tcp://a b")]),
            })
            .await
            .unwrap();
        assert!(
            matches!(&bad, Err(m) if m.contains("offers.extra.e")),
            "{bad:?}"
        );

        // Withdrawn entirely: it was added at run time.
        p.send(Withdraw {
            resource: "extra".into(),
            names: vec![],
        })
        .await
        .unwrap()
        .unwrap();
        pictures
            .expect(
                "extra withdrawn",
                picture(&[("extra", &[]), ("svc", &[("p-1", p_api.clone())])]),
            )
            .await;
        let found = looker
            .send(LookupResource("extra".into()))
            .await
            .unwrap()
            .unwrap();
        assert!(found.is_empty(), "{found:?}");
        // A declared resource stays offered, with no endpoints.
        p.send(Withdraw {
            resource: "svc".into(),
            names: vec![],
        })
        .await
        .unwrap()
        .unwrap();
        pictures
            .expect(
                "svc without endpoints",
                picture(&[("extra", &[]), ("svc", &[("p-1", nobody.clone())])]),
            )
            .await;
        let found = looker
            .send(LookupResource("svc".into()))
            .await
            .unwrap()
            .unwrap();
        assert_eq!(found.len(), 1);
        assert!(found[0].endpoints.is_empty());

        // A second provider; then the first stops heartbeating (no deregistration).
        let q_api = endpoints(&[("api", "tcp://10.0.0.2:1")]);
        let (_q, _) = start_client(&member(port, &["svc"], q_api.clone()), "q-1", true)
            .await
            .unwrap();
        pictures
            .expect(
                "q-1 offers svc",
                picture(&[
                    ("extra", &[]),
                    ("svc", &[("p-1", nobody.clone()), ("q-1", q_api.clone())]),
                ]),
            )
            .await;
        p.send(Shutdown).await.unwrap();
        pictures
            .expect(
                "p-1 went silent",
                picture(&[("extra", &[]), ("svc", &[("q-1", q_api.clone())])]),
            )
            .await;

        // The beacon stops: once the watcher counts it unreachable, the picture is unknown.
        server.send(Shutdown).await.unwrap();
        server_done.await.unwrap();
        pictures
            .expect(
                "no beacon reachable",
                ProvidersChanged {
                    providers: [("extra".to_string(), vec![]), ("svc".to_string(), vec![])].into(),
                    reachable: false,
                },
            )
            .await;
        // It starts again (empty): q-1 registers again and the watcher has the picture back.
        let (_server, _server_done) = start_server(&beacon_config(port), None).await.unwrap();
        pictures
            .expect(
                "the beacon is back",
                picture(&[("extra", &[]), ("svc", &[("q-1", q_api.clone())])]),
            )
            .await;
        watcher.send(Unwatch(watch)).await.unwrap();
    });
}
