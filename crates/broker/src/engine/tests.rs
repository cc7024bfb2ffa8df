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
    // echo is served on its Paranoid Pirate backend: no DISCONNECT (the worker would come
    // back at once, in a loop); it is ignored instead (see `limits.rs`).
    assert!(out.is_empty(), "{out:?}");
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
        e.stats(at(600)).services.len(),
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
    assert_eq!(e.stats(at(0)).malformed, 6);
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

/// [`engine`]'s table with `[[services]]` entries `(name, frontend port, backend port)`.
fn with_services(services: &[(&str, u16, u16)]) -> BrokerConfig {
    let mut config = engine().config().clone();
    for (name, front, back) in services {
        config.services.push(crate::config::ServiceConfig {
            name: name.to_string(),
            frontend: Some(format!("tcp://127.0.0.1:{front}").parse().unwrap()),
            backend: Some(format!("tcp://127.0.0.1:{back}").parse().unwrap()),
            ..Default::default()
        });
    }
    config.validate().unwrap();
    config
}

/// Applies the update to `config`; returns the indices of the services started.
fn update(e: &mut Engine<Vec<u8>>, config: &BrokerConfig, out: &mut Out) -> Vec<usize> {
    let plan = crate::update::plan(e.config(), config);
    e.apply_update(&plan, out)
}

/// The error replies in `out`: (socket, client, code, text).
fn error_replies(out: &Out) -> Vec<(Socket, Vec<u8>, u16, String)> {
    out.iter()
        .filter_map(|o| {
            let (code, text) = parse_error(o.frames.last()?)?;
            Some((o.socket, o.frames[0].clone(), code, text))
        })
        .collect()
}

#[test]
fn an_added_service_serves_on_its_own_index() {
    let mut e = engine();
    let mut out = Vec::new();
    let started = update(&mut e, &with_services(&[("resize", 9011, 9012)]), &mut out);
    assert_eq!(started, [1]);
    assert!(out.is_empty());
    e.on_backend(1, f(&[b"W", b"\x01"]), at(0), &mut out);
    e.on_frontend(1, f(&[b"C", b"", b"img"]), at(1), &mut out);
    let to_worker = only(&mut out);
    assert_eq!(to_worker.socket, Socket::Backend(1));
    assert_eq!(
        to_worker.purpose,
        Purpose::Dispatch {
            service: 1,
            worker: b"W".to_vec()
        }
    );
    e.on_backend(1, f(&[b"W", b"C", b"", b"done"]), at(2), &mut out);
    assert_eq!(only(&mut out).socket, Socket::Frontend(1));
    // Majordomo clients reach it by name, and its workers are not those of `echo`.
    e.on_majordomo(f(&[b"M", b"", b"MDPC01", b"resize", b"x"]), at(3), &mut out);
    assert_eq!(only(&mut out).socket, Socket::Backend(1));
    e.on_frontend(0, f(&[b"C", b"", b"x"]), at(4), &mut out);
    assert!(out.is_empty(), "echo has no worker: the request waits");
    let stats = e.stats(at(5));
    let resize = &stats.services[1];
    assert_eq!((resize.name.as_str(), resize.kind), ("resize", KIND_PIRATE));
    assert_eq!(resize.workers, 1);
    assert_eq!(resize.stats.requests, 2);
}

#[test]
fn a_removed_service_answers_everything_it_held_or_queued() {
    let mut e = engine();
    let mut out = Vec::new();
    update(&mut e, &with_services(&[("resize", 9011, 9012)]), &mut out);
    e.on_backend(1, f(&[b"W", b"\x01"]), at(0), &mut out);
    e.on_frontend(1, f(&[b"held", b"", b"a"]), at(1), &mut out);
    e.on_frontend(1, f(&[b"queued", b"", b"b"]), at(1), &mut out);
    e.on_majordomo(f(&[b"M", b"", b"MDPC01", b"resize", b"c"]), at(1), &mut out);
    assert_eq!(out.len(), 1, "one dispatch, two waiting: {out:?}");
    out.clear();

    let started = update(&mut e, &with_services(&[]), &mut out);
    assert!(started.is_empty());
    let mut answered = error_replies(&out);
    answered.sort_by(|a, b| a.1.cmp(&b.1));
    let text = "resize: the service was removed before the request completed";
    assert_eq!(
        answered,
        [
            (Socket::Majordomo, b"M".to_vec(), 503, text.to_string()),
            (Socket::Frontend(1), b"held".to_vec(), 503, text.to_string()),
            (
                Socket::Frontend(1),
                b"queued".to_vec(),
                503,
                text.to_string()
            ),
        ]
    );
    out.clear();
    assert_eq!(e.stats(at(2)).services.len(), 1);
    // Its worker is forgotten: a late reply and anything on its old index go nowhere.
    e.on_backend(1, f(&[b"W", b"held", b"", b"late"]), at(2), &mut out);
    e.on_frontend(1, f(&[b"C", b"", b"x"]), at(2), &mut out);
    e.on_timer(at(100), &mut out);
    assert!(
        out.iter()
            .all(|o| o.socket == Socket::Backend(0) || o.socket == Socket::Frontend(0)),
        "{out:?}"
    );
    out.clear();

    // The freed index is reused by the next service added, which starts empty.
    let started = update(&mut e, &with_services(&[("thumb", 9021, 9022)]), &mut out);
    assert_eq!(started, [1]);
    assert!(out.is_empty());
    e.on_frontend(1, f(&[b"C", b"", b"x"]), at(101), &mut out);
    e.on_backend(1, f(&[b"V", b"\x01"]), at(102), &mut out);
    assert_eq!(
        only(&mut out).purpose,
        Purpose::Dispatch {
            service: 1,
            worker: b"V".to_vec()
        }
    );
    // A Majordomo request for the removed name now makes a Majordomo-only service.
    e.on_majordomo(
        f(&[b"M", b"", b"MDPC01", b"resize", b"c"]),
        at(103),
        &mut out,
    );
    assert!(out.is_empty(), "waits");
    let kinds: Vec<(String, &str)> = e
        .stats(at(104))
        .services
        .into_iter()
        .map(|s| (s.name, s.kind))
        .collect();
    assert_eq!(
        kinds,
        [
            ("echo".to_string(), KIND_PIRATE),
            ("thumb".to_string(), KIND_PIRATE),
            ("resize".to_string(), KIND_MAJORDOMO),
        ]
    );
}

#[test]
fn request_settings_change_in_place() {
    let mut e = engine();
    let mut out = Vec::new();
    e.on_backend(0, f(&[b"W", b"\x01"]), at(0), &mut out);
    e.on_frontend(0, f(&[b"held", b"", b"a"]), at(1), &mut out);
    e.on_frontend(0, f(&[b"q1", b"", b"b"]), at(1), &mut out);
    e.on_majordomo(
        f(&[b"M", b"", b"MDPC01", b"weather", b"x"]),
        at(1),
        &mut out,
    );
    out.clear();

    let mut config = e.config().clone();
    config.queue_limit = 1;
    config.max_workers = 1;
    config.request_timeout = "200ms".parse().unwrap();
    let plan = crate::update::plan(e.config(), &config);
    assert_eq!(plan.report.changed, ["echo"]);
    assert!(plan.report.needs_restart.is_empty());
    assert!(e.apply_update(&plan, &mut out).is_empty());
    assert!(out.is_empty(), "nothing held or waiting is answered");
    let echo = &e.stats(at(2)).services[0];
    assert_eq!((echo.held, echo.waiting, echo.workers), (1, 1, 1));

    // The new queue limit refuses the next request; the new max_workers the next worker.
    e.on_frontend(0, f(&[b"q2", b"", b"c"]), at(2), &mut out);
    let refused = error_replies(&out);
    assert_eq!(refused.len(), 1);
    assert_eq!((refused[0].1.as_slice(), refused[0].2), (&b"q2"[..], 503));
    out.clear();
    e.on_backend(0, f(&[b"X", b"\x01"]), at(2), &mut out);
    assert_eq!(e.stats(at(2)).services[0].workers, 1);
    // The held request still completes, and the one waiting goes next.
    e.on_backend(0, f(&[b"W", b"held", b"", b"a"]), at(3), &mut out);
    let sent: Vec<(Socket, Vec<u8>)> = out
        .iter()
        .map(|o| (o.socket, o.frames[1].clone()))
        .collect();
    assert_eq!(
        sent,
        [
            (Socket::Backend(0), b"q1".to_vec()),
            (Socket::Frontend(0), vec![])
        ]
    );
    out.clear();
    // Majordomo-only services take the new broker-wide settings too: `weather` already has
    // one request waiting, its new limit.
    e.on_majordomo(
        f(&[b"M2", b"", b"MDPC01", b"weather", b"y"]),
        at(10),
        &mut out,
    );
    let refused = error_replies(&out);
    assert_eq!(refused.len(), 1);
    assert_eq!((refused[0].1.as_slice(), refused[0].2), (&b"M2"[..], 503));
}

#[test]
fn a_moved_service_starts_again_at_its_new_sockets() {
    let mut e = engine();
    let mut out = Vec::new();
    update(&mut e, &with_services(&[("resize", 9011, 9012)]), &mut out);
    e.on_backend(1, f(&[b"W", b"\x01"]), at(0), &mut out);
    e.on_frontend(1, f(&[b"held", b"", b"a"]), at(1), &mut out);
    out.clear();
    let plan = crate::update::plan(e.config(), &with_services(&[("resize", 9011, 9013)]));
    assert_eq!(plan.report.changed, ["resize"]);
    let started = e.apply_update(&plan, &mut out);
    assert_eq!(started, [1], "the freed slot is taken again");
    let answered = error_replies(&out);
    assert_eq!(answered.len(), 1);
    assert_eq!(
        answered[0].3,
        "resize: the service was reconfigured before the request completed"
    );
    assert_eq!(e.stats(at(2)).services[1].workers, 0, "workers forgotten");
}

#[test]
fn an_added_service_takes_over_a_majordomo_service_of_its_name() {
    let mut e = engine();
    let mut out = Vec::new();
    e.on_majordomo(
        f(&[b"MW", b"", b"MDPW01", b"\x01", b"resize"]),
        at(0),
        &mut out,
    );
    e.on_majordomo(
        f(&[b"C1", b"", b"MDPC01", b"resize", b"a"]),
        at(1),
        &mut out,
    );
    e.on_majordomo(
        f(&[b"C2", b"", b"MDPC01", b"resize", b"b"]),
        at(1),
        &mut out,
    );
    assert_eq!(
        out.len(),
        1,
        "one held by the Majordomo worker, one waiting"
    );
    out.clear();

    let started = update(&mut e, &with_services(&[("resize", 9011, 9012)]), &mut out);
    let index = started[0];
    let answered = error_replies(&out);
    assert_eq!(answered.len(), 1, "{out:?}");
    assert_eq!((answered[0].1.as_slice(), answered[0].2), (&b"C1"[..], 503));
    assert!(
        out.iter()
            .any(|o| o.frames == f(&[b"MW", b"", b"MDPW01", b"\x05"])),
        "the Majordomo worker is told to disconnect: {out:?}"
    );
    out.clear();
    // Its heartbeat is now from a stranger; the waiting request goes to a worker on the new
    // backend.
    e.on_majordomo(f(&[b"MW", b"", b"MDPW01", b"\x04"]), at(2), &mut out);
    assert_eq!(only(&mut out).frames, f(&[b"MW", b"", b"MDPW01", b"\x05"]));
    e.on_backend(index, f(&[b"W", b"\x01"]), at(3), &mut out);
    let to_worker = only(&mut out);
    assert_eq!(to_worker.socket, Socket::Backend(index));
    assert_eq!(to_worker.frames[1], protocol::tag_majordomo_client(b"C2"));
    let stats = e.stats(at(4));
    assert_eq!(stats.services.len(), 2);
    assert!(stats.services.iter().all(|s| s.kind == KIND_PIRATE));
}

#[test]
fn the_snapshot_lists_workers_with_framing_and_credit() {
    let mut e = engine();
    let mut out = Vec::new();
    e.on_backend(0, f(&[b"P", b"\x01"]), at(0), &mut out);
    e.on_backend(0, f(&[b"S", b"", b"\x01\x01\x04"]), at(10), &mut out);
    e.on_backend(0, f(&[&[0u8, 0xff][..], b"\x01"]), at(10), &mut out);
    e.on_majordomo(
        f(&[b"M", b"", b"MDPW01", b"\x01", b"weather"]),
        at(20),
        &mut out,
    );
    e.on_frontend(0, f(&[b"C", b"", b"x"]), at(30), &mut out);
    let stats = e.stats(at(50));
    let echo = &stats.services[0];
    assert_eq!((echo.kind, echo.frontend.as_deref()), (KIND_PIRATE, None));
    let workers: Vec<(&str, &str, u32, usize, u64)> = echo
        .worker_list
        .iter()
        .map(|w| {
            (
                w.identity.as_str(),
                w.framing,
                w.credit,
                w.held,
                w.last_heard_ms_ago,
            )
        })
        .collect();
    assert_eq!(
        workers,
        [
            ("P", "pirate", 1, 0, 50),
            ("S", "seed", 3, 1, 40),
            ("00ff", "pirate", 1, 0, 40),
        ]
    );
    let weather = &stats.services[1];
    assert_eq!(weather.kind, KIND_MAJORDOMO);
    assert_eq!(weather.worker_list[0].framing, "majordomo");
    let json = serde_json::to_value(&stats).unwrap();
    assert_eq!(json["services"][0]["worker_list"][1]["framing"], "seed");
    assert_eq!(json["services"][1]["kind"], "majordomo");
    assert_eq!(json["services"][0]["stats"]["requests"], 1);
}

/// A worker identity made by the worker API under a supervisor.
fn supervised(service_id: &str, pid: u32, connection: u64) -> Vec<u8> {
    troupe_core::services::worker_identity(service_id, pid, connection)
}

fn query(broker_service: &str, service_id: &str, pid: u32) -> BrokerWorkers {
    BrokerWorkers {
        broker_service: broker_service.into(),
        service_id: service_id.into(),
        pid,
    }
}

#[test]
fn a_supervised_process_exit_fails_its_workers_requests_at_once() {
    let mut e = engine();
    let mut out = Vec::new();
    let dead = supervised("echo-svc", 41, 0);
    let dead_too = supervised("echo-svc", 41, 1);
    let other_pid = supervised("echo-svc", 42, 2);
    e.on_backend(0, vec![dead.clone(), b"\x01".to_vec()], at(0), &mut out);
    e.on_backend(0, vec![dead_too.clone(), b"\x01".to_vec()], at(0), &mut out);
    e.on_backend(
        0,
        vec![other_pid.clone(), b"\x01".to_vec()],
        at(0),
        &mut out,
    );
    e.on_majordomo(
        vec![
            supervised("echo-svc", 41, 3),
            vec![],
            b"MDPW01".to_vec(),
            b"\x01".to_vec(),
            b"weather".to_vec(),
        ],
        at(0),
        &mut out,
    );
    // Four requests: one for each pirate worker, one for the Majordomo worker.
    for client in [b"A", b"B", b"C"] {
        e.on_frontend(0, f(&[client, b"", b"x"]), at(1), &mut out);
    }
    e.on_majordomo(
        f(&[b"M", b"", b"MDPC01", b"weather", b"y"]),
        at(1),
        &mut out,
    );
    let held_by: Vec<Vec<u8>> = out.drain(..).map(|o| o.frames[0].clone()).collect();
    assert_eq!(held_by.len(), 4);
    assert_eq!(
        e.broker_workers(&query("echo", "echo-svc", 41)),
        BrokerWorkersAnswer {
            known: true,
            ready: true,
            workers: 3,
            queue_depth: 0
        }
    );

    // Well inside the liveness window (300 ms): the three workers of pid 41 are gone now.
    assert_eq!(e.process_exited("echo-svc", 41, at(2), &mut out), 3);
    let failed = error_replies(&out);
    assert_eq!(failed.len(), 3, "{failed:?}");
    for (socket, _, code, text) in &failed {
        assert_eq!(*code, 502);
        assert!(text.contains("exited after 1 attempt(s)"), "{text}");
        assert!(matches!(socket, Socket::Frontend(0) | Socket::Majordomo));
    }
    let stats = e.stats(at(2));
    assert_eq!(stats.services[0].workers, 1);
    assert_eq!(stats.services[0].stats.workers_exited, 2);
    assert_eq!(stats.services[0].stats.lost, 2);
    assert_eq!(stats.services[1].stats.workers_exited, 1);
    assert_eq!(stats.services[0].worker_list[0].pid, Some(42));
    assert_eq!(
        stats.services[0].worker_list[0].service_id.as_deref(),
        Some("echo-svc")
    );
    let answer = e.broker_workers(&query("echo", "echo-svc", 41));
    assert!(answer.known && !answer.ready);
    assert_eq!(answer.workers, 1);

    // A heartbeat still queued from a dead worker does not bring it back, nor does a
    // Majordomo command.
    out.clear();
    e.on_backend(0, vec![dead.clone(), b"\x02".to_vec()], at(3), &mut out);
    e.on_majordomo(
        vec![
            supervised("echo-svc", 41, 3),
            vec![],
            b"MDPW01".to_vec(),
            b"\x04".to_vec(),
        ],
        at(3),
        &mut out,
    );
    assert!(out.is_empty(), "{out:?}");
    assert_eq!(e.stats(at(3)).services[0].workers, 1);
    // Reported twice: nothing more happens.
    assert_eq!(e.process_exited("echo-svc", 41, at(4), &mut out), 0);
    assert!(out.is_empty());
}

#[test]
fn with_retry_a_dead_process_requests_go_to_another_worker_at_once() {
    let mut config = engine().config().clone();
    config.retry_on_worker_loss = true;
    config.validate().unwrap();
    let mut e = Engine::new(config, at(0));
    let mut out = Vec::new();
    let dead = supervised("echo-svc", 7, 0);
    e.on_backend(0, vec![dead.clone(), b"\x01".to_vec()], at(0), &mut out);
    e.on_frontend(0, f(&[b"A", b"", b"x"]), at(1), &mut out);
    assert_eq!(only(&mut out).frames[0], dead);
    e.on_backend(0, f(&[b"spare", b"\x01"]), at(2), &mut out);
    assert!(out.is_empty());
    assert_eq!(e.process_exited("echo-svc", 7, at(3), &mut out), 1);
    let retried = only(&mut out);
    assert_eq!(retried.frames, f(&[b"spare", b"A", b"", b"x"]));
    let stats = e.stats(at(3)).services[0].stats.clone();
    assert_eq!((stats.retried, stats.lost, stats.workers_exited), (1, 0, 1));

    // With one attempt allowed, the request is answered instead (502), at once.
    let mut config = e.config().clone();
    config.max_attempts = 1;
    let mut e = Engine::new(config, at(0));
    e.on_backend(0, vec![dead.clone(), b"\x01".to_vec()], at(0), &mut out);
    e.on_frontend(0, f(&[b"B", b"", b"x"]), at(1), &mut out);
    assert_eq!(only(&mut out).frames[0], dead);
    e.on_backend(0, f(&[b"spare", b"\x01"]), at(2), &mut out);
    e.process_exited("echo-svc", 7, at(3), &mut out);
    let failed = error_replies(&out);
    assert_eq!(failed.len(), 1, "{out:?}");
    assert_eq!((failed[0].1.as_slice(), failed[0].2), (&b"B"[..], 502));
}

#[test]
fn broker_workers_answers_for_unknown_and_majordomo_services() {
    let mut e = engine();
    let mut out = Vec::new();
    // Any valid name is served on demand through the Majordomo socket.
    assert_eq!(
        e.broker_workers(&query("weather", "w", 1)),
        BrokerWorkersAnswer {
            known: true,
            ..Default::default()
        }
    );
    assert!(!e.broker_workers(&query("mmi.service", "w", 1)).known);
    assert!(!e.broker_workers(&query("bad name", "w", 1)).known);
    e.on_majordomo(
        f(&[b"C", b"", b"MDPC01", b"weather", b"x"]),
        at(0),
        &mut out,
    );
    let waiting = e.broker_workers(&query("weather", "w", 1));
    assert_eq!(
        (waiting.known, waiting.ready, waiting.queue_depth),
        (true, false, 1)
    );
    e.on_majordomo(
        vec![
            supervised("w", 1, 9),
            vec![],
            b"MDPW01".to_vec(),
            b"\x01".to_vec(),
            b"weather".to_vec(),
        ],
        at(1),
        &mut out,
    );
    let ready = e.broker_workers(&query("weather", "w", 1));
    assert_eq!(
        (ready.ready, ready.workers, ready.queue_depth),
        (true, 1, 0)
    );
    assert!(!e.broker_workers(&query("weather", "w", 2)).ready);

    let mut config = engine().config().clone();
    config.majordomo.enabled = false;
    let e = Engine::<Vec<u8>>::new(config, at(0));
    assert!(e.broker_workers(&query("echo", "w", 1)).known);
    assert!(!e.broker_workers(&query("weather", "w", 1)).known);
}

#[test]
fn a_dead_process_is_forgotten_after_a_window_or_when_its_pid_starts_again() {
    let mut e = engine();
    let mut out = Vec::new();
    let dead = supervised("svc", 5, 0);
    e.on_backend(0, vec![dead.clone(), b"\x01".to_vec()], at(0), &mut out);
    e.process_exited("svc", 5, at(10), &mut out);
    e.on_backend(0, vec![dead.clone(), b"\x01".to_vec()], at(20), &mut out);
    assert_eq!(
        e.stats(at(20)).services[0].workers,
        0,
        "a late READY is dropped"
    );
    // A new process of the service with the same pid (reused): accepted again.
    e.process_started("svc", 5);
    e.on_backend(
        0,
        vec![supervised("svc", 5, 1), b"\x01".to_vec()],
        at(30),
        &mut out,
    );
    assert_eq!(e.stats(at(30)).services[0].workers, 1);

    // Another exit is remembered for a worker window (300 ms), then forgotten.
    e.process_exited("svc", 5, at(40), &mut out);
    assert_eq!(e.stats(at(40)).services[0].workers, 0);
    let late = supervised("svc", 5, 2);
    e.on_backend(0, vec![late.clone(), b"\x02".to_vec()], at(100), &mut out);
    assert_eq!(e.stats(at(100)).services[0].workers, 0);
    let mut t = 100;
    while t <= 400 {
        t += 100;
        e.on_timer(at(t), &mut out);
    }
    e.on_backend(0, vec![late, b"\x02".to_vec()], at(t), &mut out);
    assert_eq!(e.stats(at(t)).services[0].workers, 1);
}

#[test]
fn the_engine_counts_body_bytes_and_reply_durations_per_service() {
    let mut e = engine();
    let mut out = Vec::new();
    // Paranoid Pirate: 5 bytes in, 7 bytes back after 2 ms.
    e.on_backend(0, f(&[b"W", b"\x01"]), at(0), &mut out);
    e.on_frontend(0, f(&[b"C", b"", b"hello"]), at(1), &mut out);
    out.clear();
    e.on_backend(0, f(&[b"W", b"C", b"", b"goodbye"]), at(3), &mut out);
    // Majordomo: 5 bytes in, 3 bytes back after 1 ms.
    e.on_majordomo(
        f(&[b"M", b"", b"MDPW01", b"\x01", b"weather"]),
        at(0),
        &mut out,
    );
    e.on_majordomo(
        f(&[b"C", b"", b"MDPC01", b"weather", b"paris"]),
        at(4),
        &mut out,
    );
    out.clear();
    e.on_majordomo(
        f(&[b"M", b"", b"MDPW01", b"\x03", b"C", b"", b"sun"]),
        at(5),
        &mut out,
    );
    assert_eq!(out.len(), 1, "{out:?}");
    let stats = e.stats(at(5));
    let by_name = |name: &str| {
        stats
            .services
            .iter()
            .find(|s| s.name == name)
            .unwrap()
            .stats
            .clone()
    };
    let echo = by_name("echo");
    assert_eq!((echo.received_bytes, echo.sent_bytes), (5, 7));
    assert_eq!(echo.durations.count(), 1);
    assert!((echo.durations.sum_seconds() - 0.002).abs() < 1e-9);
    let weather = by_name("weather");
    assert_eq!((weather.received_bytes, weather.sent_bytes), (5, 3));
    assert!((weather.durations.sum_seconds() - 0.001).abs() < 1e-9);
}

mod limits;
