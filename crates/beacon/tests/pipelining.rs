//! A client that keeps many requests in flight while reading continuously gets every reply:
//! the beacon never drops one silently, even when ZeroMQ's queue for the peer is full.

#[path = "../../../tests/common/ports.rs"]
mod ports;
use ports::free_port;

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use troupe_beacon::server::actor::GetPeersDropped;
use troupe_beacon::server::start_server;
use troupe_beacon::BeaconConfig;

const DEADLINE: Duration = Duration::from_secs(60);
const IN_FLIGHT: u64 = 200;
const TOTAL: u64 = 20_000;

/// Sends `TOTAL` requests, never more than `IN_FLIGHT` unanswered, reading as replies come;
/// returns the ids answered.
fn pipelined_client(port: u16) -> Result<BTreeSet<u64>, String> {
    let context = zmq::Context::new();
    let dealer = context.socket(zmq::DEALER).map_err(|e| e.to_string())?;
    dealer.set_linger(0).map_err(|e| e.to_string())?;
    dealer
        .connect(&format!("tcp://127.0.0.1:{port}"))
        .map_err(|e| e.to_string())?;
    let deadline = Instant::now() + DEADLINE;
    let mut answered = BTreeSet::new();
    let mut next = 0u64;
    while (answered.len() as u64) < TOTAL {
        if Instant::now() > deadline {
            return Err(format!(
                "{} of {TOTAL} replies before the deadline (sent {next})",
                answered.len()
            ));
        }
        // Keep IN_FLIGHT requests outstanding; a `list` now and then makes replies larger.
        while next < TOTAL && next - (answered.len() as u64) < IN_FLIGHT {
            let op = if next.is_multiple_of(50) {
                "list"
            } else {
                "ping"
            };
            let body = format!(r#"{{"v":1,"op":"{op}","id":{next}}}"#);
            dealer.send(body.as_bytes(), 0).map_err(|e| e.to_string())?;
            next += 1;
        }
        if dealer.poll(zmq::POLLIN, 1000).map_err(|e| e.to_string())? == 0 {
            continue;
        }
        while let Ok(frame) = dealer.recv_bytes(zmq::DONTWAIT) {
            let reply: serde_json::Value =
                serde_json::from_slice(&frame).map_err(|e| e.to_string())?;
            let id = reply["id"]
                .as_u64()
                .ok_or_else(|| format!("a reply without id: {reply}"))?;
            if reply["op"] == "error" {
                return Err(format!("request {id} answered with an error: {reply}"));
            }
            if !answered.insert(id) {
                return Err(format!("reply {id} twice"));
            }
        }
    }
    Ok(answered)
}

#[test]
fn a_client_with_200_requests_in_flight_gets_every_reply() {
    actix_rt::System::new().block_on(async {
        let port = free_port();
        let config = BeaconConfig {
            bind: format!("tcp://127.0.0.1:{port}").parse().unwrap(),
            ..BeaconConfig::default()
        };
        let (server, _done) = start_server(&config, None).await.unwrap();
        let client = tokio::task::spawn_blocking(move || pipelined_client(port));
        let answered = tokio::time::timeout(DEADLINE + Duration::from_secs(5), client)
            .await
            .expect("the client finished")
            .unwrap()
            .unwrap();
        assert_eq!(answered.len() as u64, TOTAL);
        assert_eq!(answered.last(), Some(&(TOTAL - 1)));
        assert_eq!(server.send(GetPeersDropped).await.unwrap(), 0);
    });
}
