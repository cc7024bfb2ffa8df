//! The cluster client's actor API as a role uses it, against a real beacon on a loopback port,
//! in one process: waiting for requirements, adding endpoints at run time, subscribing.

#[path = "../../../tests/common/ports.rs"]
mod ports;
use ports::free_port;

use std::collections::BTreeMap;
use std::time::Duration;

use actix::prelude::*;
use tokio::sync::mpsc;
use troupe_beacon::client::{
    start_client, AwaitRequirements, ClientError, ClusterEvent, GetRequirements, Offer, Subscribe,
    Withdraw,
};
use troupe_beacon::protocol::EventKind;
use troupe_beacon::server::start_server;
use troupe_beacon::{BeaconConfig, ClusterConfig};
use troupe_core::settings::Duration as ConfigDuration;

const WAIT: Duration = Duration::from_secs(20);

fn member(port: u16, resource: &str, requires: &[&str]) -> ClusterConfig {
    ClusterConfig {
        beacons: vec![format!("tcp://127.0.0.1:{port}").parse().unwrap()],
        resource: resource.into(),
        requires: requires.iter().map(|s| s.to_string()).collect(),
        heartbeat_interval: ConfigDuration::from_millis(100),
        ..ClusterConfig::default()
    }
}

/// Forwards events to a channel the test reads.
struct Forward(mpsc::UnboundedSender<ClusterEvent>);

impl Actor for Forward {
    type Context = Context<Self>;
}

impl Handler<ClusterEvent> for Forward {
    type Result = ();
    fn handle(&mut self, event: ClusterEvent, _: &mut Self::Context) {
        let _ = self.0.send(event);
    }
}

#[test]
fn a_role_waits_for_its_requirements_and_publishes_endpoints() {
    actix_rt::System::new().block_on(async {
        let port = free_port();
        let beacon = BeaconConfig {
            bind: format!("tcp://127.0.0.1:{port}").parse().unwrap(),
            ..BeaconConfig::default()
        };
        let (_server, _server_done) = start_server(&beacon, None).await.unwrap();
        let (app, _) = start_client(&member(port, "app", &["db"]), "app-1", true)
            .await
            .unwrap();

        // Nothing offers `db` yet: a short wait times out naming it, without failing the node.
        let waited = app
            .send(AwaitRequirements {
                timeout: Duration::from_millis(300),
            })
            .await
            .unwrap();
        assert_eq!(waited, Err(ClientError::Unmet(vec!["db".into()])));

        // A long wait is woken when a provider registers.
        let wait = app.send(AwaitRequirements { timeout: WAIT });
        let (db, _) = start_client(&member(port, "db", &[]), "db-1", true)
            .await
            .unwrap();
        let met = tokio::time::timeout(WAIT, wait)
            .await
            .unwrap()
            .unwrap()
            .unwrap();
        assert_eq!(met.offers["db"][0].name, "db-1");
        assert!(met.unmet.is_empty());

        // Watch `db`, then let the provider publish the endpoints it opened at start.
        let (tx, mut events) = mpsc::unbounded_channel();
        let forward = Forward(tx).start();
        app.send(Subscribe {
            resources: vec!["db".into()],
            since: None,
            recipient: forward.recipient(),
        })
        .await
        .unwrap()
        .unwrap();
        let first = tokio::time::timeout(WAIT, events.recv())
            .await
            .unwrap()
            .unwrap();
        assert!(matches!(&first, ClusterEvent::Snapshot { nodes, .. } if nodes.len() == 1));

        let endpoints: BTreeMap<String, String> = [
            ("db.primary".to_string(), "tcp://10.0.0.7:5432".to_string()),
            ("db.replica".to_string(), "tcp://10.0.0.8:5432".to_string()),
        ]
        .into();
        db.send(Offer {
            resource: "db".into(),
            endpoints: endpoints.clone(),
        })
        .await
        .unwrap()
        .unwrap();
        let changed = tokio::time::timeout(WAIT, events.recv())
            .await
            .unwrap()
            .unwrap();
        let ClusterEvent::Change { event, .. } = &changed else {
            panic!("{changed:?}")
        };
        assert_eq!(event.kind, EventKind::Changed);
        assert_eq!(event.node.endpoints, endpoints);
        assert_eq!(event.rev, first.position().rev + 1);

        let requirements = app.send(GetRequirements).await.unwrap().unwrap();
        assert_eq!(requirements.offers["db"][0].endpoints, endpoints);

        // Invalid endpoints are refused, naming the field; removal re-registers too.
        let bad = db
            .send(Offer {
                resource: "db".into(),
                endpoints: [("x".to_string(), "has space".to_string())].into(),
            })
            .await
            .unwrap();
        assert!(
            matches!(&bad, Err(m) if m.contains("offers.db.x")),
            "{bad:?}"
        );
        db.send(Withdraw {
            resource: "db".into(),
            names: vec!["db.replica".into()],
        })
        .await
        .unwrap()
        .unwrap();
        let changed = tokio::time::timeout(WAIT, events.recv())
            .await
            .unwrap()
            .unwrap();
        let ClusterEvent::Change { event, .. } = &changed else {
            panic!("{changed:?}")
        };
        assert_eq!(event.node.endpoints.len(), 1);
    });
}
