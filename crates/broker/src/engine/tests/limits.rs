//! Frame, byte and reply limits, and standard peers at the default settings.

use super::*;

fn frames_n(prefix: &[&[u8]], body: usize) -> Vec<Vec<u8>> {
    let mut frames = f(prefix);
    frames.extend((0..body).map(|i| format!("part{i}").into_bytes()));
    frames
}

#[test]
fn a_64_frame_request_is_answered_and_its_64_frame_reply_forwarded() {
    let mut e = engine();
    let mut out = Vec::new();
    e.on_backend(0, f(&[b"W", b"\x01"]), at(0), &mut out);
    // A REQ client's 64-frame request: identity, delimiter, 64 body frames.
    e.on_frontend(0, frames_n(&[b"C", b""], 64), at(1), &mut out);
    let to_worker = only(&mut out);
    assert_eq!(to_worker.frames.len(), 1 + 2 + 64);
    // The worker echoes it: 1 + 2 + 64 frames reach the broker.
    e.on_backend(0, to_worker.frames, at(2), &mut out);
    let to_client = only(&mut out);
    assert_eq!(to_client.socket, Socket::Frontend(0));
    assert_eq!(to_client.frames.len(), 2 + 64);
    assert!(parse_error(&to_client.frames[2]).is_none());
}

#[test]
fn a_request_over_the_limit_is_refused_at_once() {
    let mut e = engine();
    let mut out = Vec::new();
    e.on_backend(0, f(&[b"W", b"\x01"]), at(0), &mut out);
    e.on_frontend(0, frames_n(&[b"C", b""], 65), at(1), &mut out);
    let errors = error_replies(&out);
    assert_eq!(errors.len(), 1, "{out:?}");
    assert_eq!(errors[0].2, 503);
    out.clear();
    e.on_majordomo(
        frames_n(&[b"M", b"", b"MDPC01", b"echo"], 65),
        at(2),
        &mut out,
    );
    let errors = error_replies(&out);
    assert_eq!(errors.len(), 1, "{out:?}");
    assert_eq!(errors[0].0, Socket::Majordomo);
}

#[test]
fn a_reply_over_the_limit_fails_its_request_with_an_error() {
    let mut e = engine();
    let mut out = Vec::new();
    e.on_backend(0, f(&[b"W", b"\x01"]), at(0), &mut out);
    e.on_frontend(0, f(&[b"C", b"", b"x"]), at(1), &mut out);
    out.clear();
    // The socket loop keeps MAX_RECEIVED_FRAMES + 1 frames of a longer message.
    let mut reply = frames_n(&[b"W", b"C", b""], 200);
    reply.truncate(protocol::MAX_RECEIVED_FRAMES + 1);
    e.on_backend(0, reply, at(2), &mut out);
    let errors = error_replies(&out);
    assert_eq!(errors.len(), 1, "{out:?}");
    assert_eq!(errors[0].2, 502);
    assert_eq!(out[0].frames[0], b"C".to_vec());
    let stats = e.stats(at(3));
    assert_eq!(stats.services[0].held, 0);
    assert_eq!(stats.services[0].stats.refused_replies, 1);
    // The worker got its credit back: the next request goes to it.
    out.clear();
    e.on_frontend(0, f(&[b"C", b"", b"y"]), at(4), &mut out);
    assert_eq!(only(&mut out).socket, Socket::Backend(0));

    // Majordomo worker, too.
    e.on_majordomo(
        f(&[b"MW", b"", b"MDPW01", b"\x01", b"weather"]),
        at(5),
        &mut out,
    );
    e.on_majordomo(
        f(&[b"MC", b"", b"MDPC01", b"weather", b"q"]),
        at(6),
        &mut out,
    );
    out.clear();
    e.on_majordomo(
        frames_n(&[b"MW", b"", b"MDPW01", b"\x03", b"MC", b""], 65),
        at(7),
        &mut out,
    );
    let errors = error_replies(&out);
    assert_eq!(errors.len(), 1, "{out:?}");
    assert_eq!(errors[0].2, 502);
}

/// The engine at the default settings (1 s heartbeats, liveness 3).
fn default_engine() -> Engine<Vec<u8>> {
    let config = BrokerConfig::default();
    config.validate().unwrap();
    Engine::new(config, at(0))
}

fn workers(e: &Engine<Vec<u8>>, service: &str, now: Instant) -> Vec<String> {
    e.stats(now)
        .services
        .iter()
        .filter(|s| s.name == service)
        .flat_map(|s| s.worker_list.iter().map(|w| w.identity.clone()))
        .collect()
}

/// Runs the heartbeat timer every second from `from` to `to` (ms), calling `each` before each
/// tick with the tick's time.
fn run(
    e: &mut Engine<Vec<u8>>,
    from: u64,
    to: u64,
    out: &mut Out,
    mut each: impl FnMut(&mut Engine<Vec<u8>>, u64, &mut Out),
) {
    let mut t = from;
    while t <= to {
        each(e, t, out);
        e.on_timer(at(t), out);
        t += 100;
    }
}

#[test]
fn a_guide_majordomo_worker_heartbeating_every_2500ms_stays_at_the_defaults() {
    let mut e = default_engine();
    let mut out = Vec::new();
    e.on_majordomo(
        f(&[b"MW", b"", b"MDPW01", b"\x01", b"weather"]),
        at(0),
        &mut out,
    );
    run(&mut e, 0, 30_000, &mut out, |e, t, out| {
        if t > 0 && t % 2500 == 0 {
            e.on_majordomo(f(&[b"MW", b"", b"MDPW01", b"\x04"]), at(t), out);
        }
    });
    assert_eq!(workers(&e, "weather", at(30_000)), ["MW"]);
    let snapshot = &e.stats(at(30_000)).services[1].worker_list[0];
    assert_eq!(snapshot.heartbeat_ms, 2500);
    // Silent: removed after 3 × 2.5 s.
    run(&mut e, 30_100, 37_000, &mut out, |_, _, _| {});
    assert_eq!(workers(&e, "weather", at(37_000)), ["MW"]);
    run(&mut e, 37_100, 38_100, &mut out, |_, _, _| {});
    assert!(workers(&e, "weather", at(38_100)).is_empty());
}

#[test]
fn a_pirate_worker_slower_than_configured_is_learned_and_still_dies_when_silent() {
    let mut e = default_engine();
    let mut out = Vec::new();
    e.on_backend(0, f(&[b"W", b"\x01"]), at(0), &mut out);
    run(&mut e, 0, 20_000, &mut out, |e, t, out| {
        if t > 0 && t % 2000 == 0 {
            e.on_backend(0, f(&[b"W", b"\x02"]), at(t), out);
        }
    });
    assert_eq!(workers(&e, "echo", at(20_000)), ["W"]);
    assert_eq!(
        e.stats(at(20_000)).services[0].worker_list[0].heartbeat_ms,
        2000
    );
    run(&mut e, 20_100, 25_900, &mut out, |_, _, _| {});
    assert_eq!(workers(&e, "echo", at(25_900)), ["W"]);
    run(&mut e, 26_000, 26_100, &mut out, |_, _, _| {});
    assert!(workers(&e, "echo", at(26_100)).is_empty());
}

#[test]
fn a_busy_standard_worker_that_stops_heartbeating_keeps_its_request() {
    let mut e = default_engine();
    let mut out = Vec::new();
    // Like the Guide's ppworker: heartbeats while idle, silent while it works.
    e.on_backend(0, f(&[b"W", b"\x01"]), at(0), &mut out);
    e.on_backend(0, f(&[b"S", b"", b"\x01\x01\x01"]), at(0), &mut out);
    e.on_frontend(0, f(&[b"C", b"", b"slow"]), at(500), &mut out);
    e.on_frontend(0, f(&[b"D", b"", b"slow"]), at(500), &mut out);
    out.clear();
    // 20 s of silence from both: the seed worker (which heartbeats while busy) is lost at
    // once, the standard one keeps its request.
    run(&mut e, 600, 20_000, &mut out, |_, _, _| {});
    let errors = error_replies(&out);
    assert_eq!(errors.len(), 1, "{errors:?}");
    assert_eq!(errors[0].1, b"D".to_vec());
    assert_eq!(workers(&e, "echo", at(20_000)), ["W"]);
    out.clear();
    e.on_backend(0, f(&[b"W", b"C", b"", b"done"]), at(20_000), &mut out);
    assert_eq!(only(&mut out).frames, f(&[b"C", b"", b"done"]));
    // Busy and silent past the generous bound (10 × its window): lost, with a 502.
    e.on_frontend(0, f(&[b"C", b"", b"stuck"]), at(20_100), &mut out);
    out.clear();
    run(&mut e, 20_200, 49_900, &mut out, |_, _, _| {});
    assert!(error_replies(&out).is_empty());
    run(&mut e, 50_000, 50_100, &mut out, |_, _, _| {});
    let errors = error_replies(&out);
    assert_eq!(errors.len(), 1, "{out:?}");
    assert_eq!(errors[0].2, 502);
}

#[test]
fn a_majordomo_worker_offering_a_pirate_service_is_ignored_not_looped() {
    let mut e = default_engine();
    let mut out = Vec::new();
    // The Guide's worker: READY, then on DISCONNECT a new socket (a new identity) and READY
    // again at once. 25,000 tries produce no message at all, and one counter each.
    for i in 0..25_000u32 {
        let id = format!("mdp-{i}").into_bytes();
        let now = at(u64::from(i) / 10);
        e.on_majordomo(
            vec![
                id.clone(),
                vec![],
                b"MDPW01".to_vec(),
                vec![1],
                b"echo".to_vec(),
            ],
            now,
            &mut out,
        );
        e.on_majordomo(vec![id, vec![], b"MDPW01".to_vec(), vec![4]], now, &mut out);
    }
    assert!(out.is_empty(), "{} messages", out.len());
    assert_eq!(e.stats(at(2500)).refused_majordomo_workers, 25_000);
    assert!(workers(&e, "echo", at(2500)).is_empty());
    // Remembered identities are bounded, and forgotten after the backoff: a worker that comes
    // back with the same identity later is refused (and ignored) again.
    assert!(e.refused_workers.len() <= super::super::REFUSED_REMEMBERED);
    let later = 2500 + REFUSAL_BACKOFF.as_millis() as u64 + 1000;
    e.on_timer(at(later), &mut out);
    assert!(e.refused_workers.is_empty());
    out.clear();
    e.on_majordomo(
        f(&[b"mdp-1", b"", b"MDPW01", b"\x01", b"echo"]),
        at(later),
        &mut out,
    );
    assert!(out.is_empty());
    // A Majordomo worker of any other service is served as before.
    e.on_majordomo(
        f(&[b"MW", b"", b"MDPW01", b"\x01", b"weather"]),
        at(later),
        &mut out,
    );
    assert_eq!(workers(&e, "weather", at(later)), ["MW"]);
}
