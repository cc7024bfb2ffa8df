//! Unit tests of message routing across sockets, on a fake clock.

use std::sync::OnceLock;

use super::*;
use crate::protocol::parse_error;
use crate::service::Socket;

type Out = Vec<Outgoing<Vec<u8>>>;

fn at(ms: u64) -> Instant {
    static BASE: OnceLock<Instant> = OnceLock::new();
    *BASE.get_or_init(Instant::now) + Duration::from_millis(ms)
}

fn f(parts: &[&[u8]]) -> Vec<Vec<u8>> {
    parts.iter().map(|p| p.to_vec()).collect()
}

/// 100 ms heartbeats, liveness 3, 400 ms request timeout, two Majordomo services at most.
fn engine() -> Engine<Vec<u8>> {
    let config: BrokerConfig = toml::from_str(
        r#"
        heartbeat_interval = "100ms"
        request_timeout = "400ms"
        majordomo.max_services = 2
        "#,
    )
    .unwrap();
    config.validate().unwrap();
    Engine::new(config, at(0))
}

fn only(out: &mut Out) -> Outgoing<Vec<u8>> {
    assert_eq!(out.len(), 1, "{out:?}");
    out.pop().unwrap()
}

#[test]
fn a_pirate_round_trip_keeps_the_frames_exact() {
    let mut e = engine();
    let mut out = Vec::new();
    e.on_backend(0, f(&[b"W", b"\x01"]), at(0), &mut out);
    assert!(out.is_empty());
    e.on_frontend(0, f(&[b"C", b"", b"hello"]), at(1), &mut out);
    let to_worker = only(&mut out);
    assert_eq!(to_worker.socket, Socket::Backend(0));
    assert_eq!(to_worker.frames, f(&[b"W", b"C", b"", b"hello"]));
    e.on_backend(0, f(&[b"W", b"C", b"", b"hello"]), at(2), &mut out);
    let to_client = only(&mut out);
    assert_eq!(to_client.socket, Socket::Frontend(0));
    assert_eq!(to_client.frames, f(&[b"C", b"", b"hello"]));
}

#[test]
fn a_seed_worker_gets_and_sends_the_empty_frame() {
    let mut e = engine();
    let mut out = Vec::new();
    e.on_backend(0, f(&[b"S", b"", b"\x01\x01\x02"]), at(0), &mut out);
    e.on_frontend(0, f(&[b"P", b"C", b"", b"x"]), at(1), &mut out);
    assert_eq!(
        only(&mut out).frames,
        f(&[b"S", b"", b"P", b"C", b"", b"x"])
    );
    e.on_backend(0, f(&[b"S", b"", b"P", b"C", b"", b"y"]), at(2), &mut out);
    assert_eq!(only(&mut out).frames, f(&[b"P", b"C", b"", b"y"]));
}

#[test]
fn a_heartbeat_from_an_unknown_pirate_worker_registers_it() {
    let mut e = engine();
    let mut out = Vec::new();
    e.on_backend(0, f(&[b"W", b"\x02"]), at(0), &mut out);
    e.on_frontend(0, f(&[b"C", b"", b"x"]), at(1), &mut out);
    assert_eq!(only(&mut out).socket, Socket::Backend(0));
}

#[test]
fn majordomo_clients_reach_pirate_services_by_name() {
    let mut e = engine();
    let mut out = Vec::new();
    e.on_backend(0, f(&[b"W", b"\x01"]), at(0), &mut out);
    e.on_majordomo(f(&[b"M", b"", b"MDPC01", b"echo", b"hi"]), at(1), &mut out);
    let to_worker = only(&mut out);
    assert_eq!(to_worker.socket, Socket::Backend(0));
    assert_eq!(
        to_worker.frames.len(),
        4,
        "a standard worker needs [id, route, \"\", body]"
    );
    let route = to_worker.frames[1].clone();
    assert_eq!(route, protocol::tag_majordomo_client(b"M"));
    e.on_backend(
        0,
        vec![b"W".to_vec(), route, vec![], b"hi".to_vec()],
        at(2),
        &mut out,
    );
    let to_client = only(&mut out);
    assert_eq!(to_client.socket, Socket::Majordomo);
    assert_eq!(to_client.frames, f(&[b"M", b"", b"MDPC01", b"echo", b"hi"]));
}

#[test]
fn a_majordomo_round_trip() {
    let mut e = engine();
    let mut out = Vec::new();
    e.on_majordomo(
        f(&[b"W", b"", b"MDPW01", b"\x01", b"weather"]),
        at(0),
        &mut out,
    );
    assert!(out.is_empty());
    e.on_majordomo(
        f(&[b"C", b"", b"MDPC01", b"weather", b"paris"]),
        at(1),
        &mut out,
    );
    assert_eq!(
        only(&mut out).frames,
        f(&[b"W", b"", b"MDPW01", b"\x02", b"C", b"", b"paris"])
    );
    e.on_majordomo(
        f(&[b"W", b"", b"MDPW01", b"\x03", b"C", b"", b"sunny"]),
        at(2),
        &mut out,
    );
    assert_eq!(
        only(&mut out).frames,
        f(&[b"C", b"", b"MDPC01", b"weather", b"sunny"])
    );
}

#[test]
fn majordomo_protocol_errors_get_disconnect() {
    let disconnect = |id: &[u8]| f(&[id, b"", b"MDPW01", b"\x05"]);
    let mut e = engine();
    let mut out = Vec::new();
    e.on_majordomo(
        f(&[b"W", b"", b"MDPW01", b"\x01", b"weather"]),
        at(0),
        &mut out,
    );
    e.on_majordomo(
        f(&[b"W", b"", b"MDPW01", b"\x01", b"weather"]),
        at(1),
        &mut out,
    );
    assert_eq!(only(&mut out).frames, disconnect(b"W"), "READY twice");
    e.on_majordomo(f(&[b"X", b"", b"MDPW01", b"\x04"]), at(2), &mut out);
    assert_eq!(
        only(&mut out).frames,
        disconnect(b"X"),
        "heartbeat from a stranger"
    );
    e.on_majordomo(
        f(&[b"Y", b"", b"MDPW01", b"\x01", b"echo"]),
        at(3),
        &mut out,
    );
    assert_eq!(
        only(&mut out).frames,
        disconnect(b"Y"),
        "echo is served on its Paranoid Pirate backend"
    );
}

#[test]
fn mmi_service_is_answered_by_the_broker() {
    let mut e = engine();
    let mut out = Vec::new();
    let ask = |e: &mut Engine<Vec<u8>>, service: &[u8], body: &[u8], out: &mut Out| {
        e.on_majordomo(f(&[b"C", b"", b"MDPC01", service, body]), at(1), out);
        only(out).frames[4].clone()
    };
    assert_eq!(ask(&mut e, b"mmi.service", b"echo", &mut out), b"404");
    e.on_backend(0, f(&[b"W", b"\x01"]), at(1), &mut out);
    assert_eq!(ask(&mut e, b"mmi.service", b"echo", &mut out), b"200");
    e.on_majordomo(
        f(&[b"V", b"", b"MDPW01", b"\x01", b"weather"]),
        at(1),
        &mut out,
    );
    assert_eq!(ask(&mut e, b"mmi.service", b"weather", &mut out), b"200");
    assert_eq!(ask(&mut e, b"mmi.service", b"nothing", &mut out), b"404");
    assert_eq!(ask(&mut e, b"mmi.echo", b"x", &mut out), b"501");
}

#[test]
fn majordomo_requests_wait_for_a_worker_then_expire() {
    let mut e = engine();
    let mut out = Vec::new();
    e.on_majordomo(f(&[b"C1", b"", b"MDPC01", b"later", b"a"]), at(0), &mut out);
    e.on_majordomo(f(&[b"C2", b"", b"MDPC01", b"never", b"b"]), at(0), &mut out);
    assert!(out.is_empty());
    // A worker for "later" arrives in time and gets its request.
    e.on_majordomo(
        f(&[b"W", b"", b"MDPW01", b"\x01", b"later"]),
        at(50),
        &mut out,
    );
    assert_eq!(only(&mut out).frames[4], b"C1");
    // "never" expires after 400 ms with a 504 naming the service.
    assert_eq!(e.next_wake(), at(100), "the first heartbeat comes first");
    e.on_timer(at(100), &mut out);
    out.retain(|o| o.purpose == Purpose::Reply);
    assert!(out.is_empty());
    assert_eq!(e.next_wake(), at(200));
    for t in [200, 300, 400] {
        e.on_majordomo(f(&[b"W", b"", b"MDPW01", b"\x04"]), at(t - 1), &mut out);
        e.on_timer(at(t), &mut out);
    }
    out.retain(|o| o.purpose == Purpose::Reply);
    let expired = only(&mut out);
    assert_eq!(expired.frames[..4], f(&[b"C2", b"", b"MDPC01", b"never"]));
    let (code, text) = parse_error(&expired.frames[4]).unwrap();
    assert_eq!(code, 504);
    assert!(text.starts_with("never: "), "{text}");
}

#[test]
fn majordomo_services_are_bounded_and_forgotten_when_unused() {
    let mut e = engine();
    let mut out = Vec::new();
    e.on_majordomo(f(&[b"C", b"", b"MDPC01", b"one", b"x"]), at(0), &mut out);
    e.on_majordomo(f(&[b"C", b"", b"MDPC01", b"two", b"x"]), at(0), &mut out);
    e.on_majordomo(f(&[b"C", b"", b"MDPC01", b"three", b"x"]), at(0), &mut out);
    let refused = only(&mut out);
    let (code, text) = parse_error(&refused.frames[4]).unwrap();
    assert_eq!(
        (code, text.as_str()),
        (503, "three: the broker already has 2 Majordomo services")
    );
    // After the requests expired, the idle services are forgotten: room again.
    for t in (100..=600).step_by(100) {
        e.on_timer(at(t), &mut out);
    }
    out.clear();
    assert_eq!(
        e.stats().services.len(),
        1,
        "only the configured service remains"
    );
    e.on_majordomo(
        f(&[b"C", b"", b"MDPC01", b"three", b"x"]),
        at(601),
        &mut out,
    );
    assert!(out.is_empty(), "queued");
}

#[test]
fn the_drain_refuses_new_requests_and_lets_held_ones_finish() {
    let mut e = engine();
    let mut out = Vec::new();
    e.on_backend(0, f(&[b"W", b"\x01"]), at(0), &mut out);
    e.on_frontend(0, f(&[b"A", b"", b"x"]), at(1), &mut out);
    out.clear();
    e.start_drain(at(2), Duration::from_millis(1000), &mut out);
    assert!(!e.drain_finished(at(3), &mut out));
    e.on_frontend(0, f(&[b"B", b"", b"y"]), at(4), &mut out);
    let refused = only(&mut out);
    assert_eq!(refused.frames[0], b"B");
    assert_eq!(parse_error(&refused.frames[2]).unwrap().0, 503);
    e.on_backend(0, f(&[b"W", b"A", b"", b"x"]), at(5), &mut out);
    assert_eq!(only(&mut out).frames, f(&[b"A", b"", b"x"]));
    assert!(e.drain_finished(at(6), &mut out));
    assert!(out.is_empty());
}

#[test]
fn the_drain_window_fails_what_is_left() {
    let mut e = engine();
    let mut out = Vec::new();
    e.on_backend(0, f(&[b"W", b"\x01"]), at(0), &mut out);
    e.on_frontend(0, f(&[b"A", b"", b"x"]), at(1), &mut out);
    e.on_frontend(0, f(&[b"B", b"", b"y"]), at(1), &mut out);
    out.clear();
    e.start_drain(at(2), Duration::from_millis(1000), &mut out);
    assert_eq!(e.next_wake(), at(100));
    assert!(!e.drain_finished(at(1001), &mut out));
    assert!(e.drain_finished(at(1002), &mut out));
    let mut clients: Vec<Vec<u8>> = out
        .iter()
        .filter(|o| parse_error(o.frames.last().unwrap()).is_some_and(|(c, _)| c == 503))
        .map(|o| o.frames[0].clone())
        .collect();
    clients.sort();
    assert_eq!(clients, f(&[b"A", b"B"]));
}

#[test]
fn malformed_messages_are_counted_not_fatal() {
    let mut e = engine();
    let mut out = Vec::new();
    e.on_frontend(0, f(&[b"C", b"no delimiter"]), at(0), &mut out);
    e.on_frontend(0, vec![], at(0), &mut out);
    e.on_backend(0, f(&[b"W", b"\x77"]), at(0), &mut out);
    e.on_backend(0, f(&[b"W"]), at(0), &mut out);
    e.on_majordomo(f(&[b"C", b"", b"MDPC01"]), at(0), &mut out);
    e.on_majordomo(vec![], at(0), &mut out);
    assert!(out.is_empty());
    assert_eq!(e.stats().malformed, 6);
}

#[test]
fn the_drain_answers_at_once_requests_no_worker_could_serve() {
    let mut e = engine();
    let mut out = Vec::new();
    e.on_majordomo(f(&[b"C", b"", b"MDPC01", b"nobody", b"x"]), at(0), &mut out);
    assert!(out.is_empty());
    e.start_drain(at(1), Duration::from_millis(1000), &mut out);
    let failed = only(&mut out);
    assert_eq!(parse_error(&failed.frames[4]).unwrap().0, 503);
    assert!(e.drain_finished(at(2), &mut out));
}
