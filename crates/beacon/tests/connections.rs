//! The beacon holds at most `max_connections` TCP connections: one more is closed as soon as
//! it is accepted (counted), the ones held keep working, and a closed connection frees its
//! place.

#[path = "../../../tests/common/ports.rs"]
mod ports;
use ports::free_port;

use std::time::{Duration, Instant};

use actix::Addr;
use troupe_beacon::server::actor::{BeaconServer, GetConnections};
use troupe_beacon::server::start_server;
use troupe_beacon::BeaconConfig;

const DEADLINE: Duration = Duration::from_secs(20);

fn dealer(context: &zmq::Context, port: u16) -> zmq::Socket {
    let dealer = context.socket(zmq::DEALER).unwrap();
    dealer.set_linger(0).unwrap();
    dealer.set_reconnect_ivl(50).unwrap();
    dealer.connect(&format!("tcp://127.0.0.1:{port}")).unwrap();
    dealer
}

/// Pings until a pong comes (a refused connection loses its ping), within the deadline.
fn pinged(dealer: &zmq::Socket, within: Duration) -> bool {
    let deadline = Instant::now() + within;
    while Instant::now() < deadline {
        let _ = dealer.send(&br#"{"v":1,"op":"ping","id":1}"#[..], zmq::DONTWAIT);
        if dealer.poll(zmq::POLLIN, 100).unwrap() > 0 {
            let reply = dealer.recv_bytes(0).unwrap();
            assert!(String::from_utf8_lossy(&reply).contains("pong"));
            while dealer.recv_bytes(zmq::DONTWAIT).is_ok() {}
            return true;
        }
    }
    false
}

/// Pings from every socket, off the arbiter (the beacon's actor runs on it).
async fn all_pinged(sockets: Vec<zmq::Socket>, what: &'static str) -> Vec<zmq::Socket> {
    tokio::task::spawn_blocking(move || {
        for (i, socket) in sockets.iter().enumerate() {
            assert!(pinged(socket, DEADLINE), "{what}: socket {i} got no answer");
        }
        sockets
    })
    .await
    .unwrap()
}

async fn wait_for(
    server: &Addr<BeaconServer>,
    what: &str,
    test: impl Fn(troupe_beacon::server::actor::Connections) -> bool,
) {
    let deadline = Instant::now() + DEADLINE;
    loop {
        let connections = server.send(GetConnections).await.unwrap();
        if test(connections) {
            return;
        }
        assert!(Instant::now() < deadline, "{what}: {connections:?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[test]
fn connections_beyond_the_cap_are_closed_and_counted() {
    actix_rt::System::new().block_on(async {
        let port = free_port();
        let config = BeaconConfig {
            bind: format!("tcp://127.0.0.1:{port}").parse().unwrap(),
            max_connections: 3,
            ..BeaconConfig::default()
        };
        let (server, _done) = start_server(&config, None).await.unwrap();
        let context = zmq::Context::new();
        let held: Vec<_> = (0..3).map(|_| dealer(&context, port)).collect();
        let held = all_pinged(held, "the first 3 connections are answered").await;
        wait_for(&server, "3 open", |c| c.open == 3).await;

        let extra: Vec<_> = (0..2).map(|_| dealer(&context, port)).collect();
        wait_for(&server, "extra connections refused", |c| c.refused >= 2).await;
        let held = all_pinged(held, "the connections held keep working").await;

        // Closing the held ones frees their places: the others get in.
        drop(held);
        let extra = all_pinged(extra, "the others are answered once there is room").await;
        drop(extra);
        wait_for(&server, "all closed", |c| c.open == 0).await;
    });
}
