//! Unit tests of the worker queue, on a fake clock: `at(ms)` is a point on it.

use std::sync::OnceLock;

use super::*;
use crate::protocol::parse_error;

type Out = Vec<Outgoing<Vec<u8>>>;

fn at(ms: u64) -> Instant {
    static BASE: OnceLock<Instant> = OnceLock::new();
    *BASE.get_or_init(Instant::now) + Duration::from_millis(ms)
}

fn settings(queue_limit: usize, retry: bool) -> ServiceSettings {
    ServiceSettings {
        name: "echo".into(),
        request_timeout: Duration::from_millis(500),
        queue_limit,
        queue_max_bytes: 64 * 1024 * 1024,
        max_workers: 8,
        retry_on_worker_loss: retry,
        max_attempts: 2,
        error_replies: true,
    }
}

/// A service whose workers are dead after 300 ms of silence (100 ms heartbeats, liveness 3).
fn service(queue_limit: usize, retry: bool) -> Service<Vec<u8>> {
    Service::new(
        0,
        settings(queue_limit, retry),
        Socket::Backend(0),
        Duration::from_millis(100),
        3,
    )
}

fn request(client: &str) -> Request<Vec<u8>> {
    Request {
        origin: Origin::Frontend(0),
        envelope: vec![client.as_bytes().to_vec()],
        body: vec![format!("body of {client}").into_bytes()],
        attempts: 0,
        received: at(0),
    }
}

/// Which worker each dispatch went to, in order.
fn dispatched_to(out: &Out) -> Vec<String> {
    out.iter()
        .filter_map(|o| match &o.purpose {
            Purpose::Dispatch { worker, .. } => Some(String::from_utf8(worker.clone()).unwrap()),
            _ => None,
        })
        .collect()
}

/// The error codes of error replies, with the client they go to.
fn errors(out: &Out) -> Vec<(String, u16, String)> {
    out.iter()
        .filter(|o| o.purpose == Purpose::Reply)
        .filter_map(|o| {
            let (code, text) = parse_error(o.frames.last()?)?;
            Some((String::from_utf8(o.frames[0].clone()).unwrap(), code, text))
        })
        .collect()
}

fn ready(svc: &mut Service<Vec<u8>>, id: &str, concurrency: u8, now: Instant, out: &mut Out) {
    assert!(svc.worker_ready(id.as_bytes(), Framing::Seed, concurrency, now, out));
}

fn reply(svc: &mut Service<Vec<u8>>, id: &str, client: &str, now: Instant, out: &mut Out) {
    svc.worker_reply(id.as_bytes(), &[client.as_bytes().to_vec()], now, out)
        .expect("reply matches a held request");
}

#[test]
fn the_worker_with_most_free_concurrency_is_chosen() {
    let mut svc = service(10, false);
    let mut out = Vec::new();
    ready(&mut svc, "small", 1, at(0), &mut out);
    ready(&mut svc, "big", 3, at(0), &mut out);
    for c in ["a", "b", "c", "d"] {
        svc.offer(request(c), at(1), &mut out);
    }
    // big (3) > small (1): big; then big has 2 > 1: big; then 1 == 1: the least recently
    // used (small, never used); then big.
    assert_eq!(dispatched_to(&out), ["big", "big", "small", "big"]);
}

#[test]
fn equal_workers_are_used_least_recently_used_first() {
    let mut svc = service(10, false);
    let mut out = Vec::new();
    for w in ["w1", "w2", "w3"] {
        ready(&mut svc, w, 2, at(0), &mut out);
    }
    for c in ["a", "b", "c"] {
        svc.offer(request(c), at(1), &mut out);
    }
    let first_round = dispatched_to(&out);
    let mut sorted = first_round.clone();
    sorted.sort();
    assert_eq!(
        sorted,
        ["w1", "w2", "w3"],
        "each worker once before any twice"
    );
    out.clear();
    for c in ["d", "e", "f"] {
        svc.offer(request(c), at(2), &mut out);
    }
    assert_eq!(dispatched_to(&out), first_round, "same order again: LRU");
}

#[test]
fn a_worker_without_credit_gets_nothing_until_it_replies_or_heartbeats() {
    let mut svc = service(10, false);
    let mut out = Vec::new();
    ready(&mut svc, "w", 1, at(0), &mut out);
    svc.offer(request("a"), at(1), &mut out);
    svc.offer(request("b"), at(1), &mut out);
    assert_eq!(dispatched_to(&out), ["w"]);
    assert_eq!(svc.waiting_count(), 1);
    assert_eq!(svc.credit_of(b"w"), Some(0));

    // The reply gives one credit back: the waiting request goes at once.
    out.clear();
    reply(&mut svc, "w", "a", at(2), &mut out);
    assert_eq!(dispatched_to(&out), ["w"]);
    assert_eq!(svc.waiting_count(), 0);

    // A heartbeat announcing 3 free, but one request was sent since the worker was last
    // heard from: credit 2.
    out.clear();
    svc.offer(request("c"), at(3), &mut out);
    assert_eq!(svc.waiting_count(), 1);
    out.clear();
    reply(&mut svc, "w", "b", at(4), &mut out);
    assert_eq!(dispatched_to(&out), ["w"]);
    svc.worker_heartbeat(b"w", Some(3), at(5), &mut out);
    assert_eq!(svc.credit_of(b"w"), Some(2));
    // A heartbeat announcing zero free stops dispatching.
    svc.worker_heartbeat(b"w", Some(0), at(6), &mut out);
    out.clear();
    svc.offer(request("d"), at(7), &mut out);
    assert!(dispatched_to(&out).is_empty());
}

#[test]
fn duplicate_heartbeats_never_duplicate_a_worker() {
    let mut svc = service(10, false);
    let mut out = Vec::new();
    ready(&mut svc, "w1", 1, at(0), &mut out);
    ready(&mut svc, "w2", 1, at(0), &mut out);
    for t in 1..20 {
        svc.worker_heartbeat(b"w1", Some(1), at(t), &mut out);
    }
    assert_eq!(svc.worker_count(), 2);
    for c in ["a", "b", "c"] {
        svc.offer(request(c), at(30), &mut out);
    }
    let mut to = dispatched_to(&out);
    to.sort();
    assert_eq!(to, ["w1", "w2"], "one request each; the third waits");
    assert_eq!(svc.waiting_count(), 1);
    // An unknown worker's heartbeat changes nothing.
    assert!(!svc.worker_heartbeat(b"stranger", Some(5), at(31), &mut out));
    assert_eq!(svc.worker_count(), 2);
}

#[test]
fn the_purge_visits_every_worker() {
    let mut svc = service(10, false);
    let mut out = Vec::new();
    for w in ["dead1", "alive", "dead2", "dead3"] {
        ready(&mut svc, w, 1, at(0), &mut out);
    }
    // Only "alive" speaks; the others stay silent past the 300 ms window.
    svc.worker_heartbeat(b"alive", Some(1), at(200), &mut out);
    out.clear();
    svc.tick(at(301), &mut out);
    assert_eq!(svc.worker_count(), 1);
    assert!(svc.knows(b"alive"));
    // Heartbeats go only to the live worker.
    let heartbeats: Vec<&Vec<u8>> = out
        .iter()
        .filter(|o| matches!(o.purpose, Purpose::Heartbeat { .. }))
        .map(|o| &o.frames[0])
        .collect();
    assert_eq!(heartbeats, [&b"alive".to_vec()]);
}

#[test]
fn heartbeats_are_answered_in_each_workers_framing() {
    let mut svc = service(10, false);
    let mut out = Vec::new();
    assert!(svc.worker_ready(b"p", Framing::Pirate, 1, at(0), &mut out));
    assert!(svc.worker_ready(b"s", Framing::Seed, 1, at(0), &mut out));
    svc.tick(at(10), &mut out);
    for o in &out {
        match o.frames[0].as_slice() {
            b"p" => assert_eq!(o.frames, [b"p".to_vec(), vec![0x02]]),
            b"s" => assert_eq!(o.frames, [b"s".to_vec(), vec![], vec![0x02]]),
            other => panic!("unexpected {other:?}"),
        }
    }
    out.clear();
    svc.offer(request("a"), at(11), &mut out);
    svc.offer(request("b"), at(11), &mut out);
    for o in &out {
        match o.frames[0].as_slice() {
            b"p" => assert_eq!(
                o.frames.len(),
                4,
                "[wid, client, \"\", body]: {:?}",
                o.frames
            ),
            b"s" => assert_eq!(o.frames[1], b"", "seed framing keeps its empty frame"),
            other => panic!("unexpected {other:?}"),
        }
    }
}

#[test]
fn waiting_requests_time_out_and_a_full_queue_refuses_at_once() {
    let mut svc = service(2, false);
    let mut out = Vec::new();
    svc.offer(request("a"), at(0), &mut out);
    svc.offer(request("b"), at(100), &mut out);
    assert!(out.is_empty());
    svc.offer(request("c"), at(100), &mut out);
    let refused = errors(&out);
    assert_eq!(refused.len(), 1);
    assert_eq!(refused[0].0, "c");
    assert_eq!(refused[0].1, 503);
    assert!(
        refused[0].2.starts_with("echo: "),
        "names the service: {refused:?}"
    );

    out.clear();
    assert_eq!(svc.next_deadline(), Some(at(500)));
    svc.expire_waiting(at(499), &mut out);
    assert!(out.is_empty(), "not before the timeout");
    svc.expire_waiting(at(500), &mut out);
    assert_eq!(
        errors(&out)
            .iter()
            .map(|e| (e.0.as_str(), e.1))
            .collect::<Vec<_>>(),
        [("a", 504)]
    );
    out.clear();
    svc.expire_waiting(at(600), &mut out);
    assert_eq!(errors(&out)[0].0, "b");
    assert_eq!(svc.waiting_count(), 0);
    assert_eq!(svc.stats.timed_out, 2);
    assert_eq!(svc.stats.refused, 1);
}

#[test]
fn a_lost_worker_fails_what_it_held_at_once() {
    let mut svc = service(10, false);
    let mut out = Vec::new();
    ready(&mut svc, "w", 2, at(0), &mut out);
    svc.offer(request("a"), at(1), &mut out);
    svc.offer(request("b"), at(1), &mut out);
    out.clear();
    svc.tick(at(301), &mut out);
    let failed = errors(&out);
    assert_eq!(
        failed
            .iter()
            .map(|e| (e.0.as_str(), e.1))
            .collect::<Vec<_>>(),
        [("a", 502), ("b", 502)]
    );
    assert!(failed[0].2.contains("stopped heartbeating"), "{failed:?}");
    assert_eq!(svc.worker_count(), 0);
    // Its late reply is dropped, not forwarded a second time.
    assert_eq!(
        svc.worker_reply(b"w", &[b"a".to_vec()], at(302), &mut out)
            .err(),
        Some(Unmatched::UnknownWorker)
    );
}

#[test]
fn stop_and_restart_fail_held_requests_too() {
    let mut svc = service(10, false);
    let mut out = Vec::new();
    ready(&mut svc, "w", 1, at(0), &mut out);
    svc.offer(request("a"), at(1), &mut out);
    out.clear();
    // READY again: the worker restarted; what it held is lost, it is known once.
    ready(&mut svc, "w", 1, at(2), &mut out);
    assert_eq!(errors(&out)[0].1, 502);
    assert!(errors(&out)[0].2.contains("restarted"));
    assert_eq!(svc.worker_count(), 1);
    out.clear();
    svc.offer(request("b"), at(3), &mut out);
    out.clear();
    assert!(svc.remove_worker(b"w", Loss::Stopped, at(4), &mut out));
    assert_eq!(errors(&out)[0].0, "b");
    assert!(errors(&out)[0].2.contains("left"));
}

#[test]
fn with_retry_a_lost_workers_requests_go_to_another_worker() {
    let mut svc = service(10, true);
    let mut out = Vec::new();
    ready(&mut svc, "w1", 1, at(0), &mut out);
    svc.offer(request("a"), at(1), &mut out);
    ready(&mut svc, "w2", 1, at(2), &mut out);
    svc.worker_heartbeat(b"w2", Some(0), at(2), &mut out);
    out.clear();
    svc.remove_worker(b"w1", Loss::Stopped, at(3), &mut out);
    assert!(errors(&out).is_empty());
    assert_eq!(svc.waiting_count(), 1, "waits: w2 has no credit");
    svc.worker_heartbeat(b"w2", Some(1), at(4), &mut out);
    assert_eq!(dispatched_to(&out), ["w2"]);
    let retried = out.last().unwrap();
    assert_eq!(
        retried.frames.last().unwrap(),
        b"body of a",
        "the same body again"
    );
    // max_attempts = 2: a second loss fails it.
    out.clear();
    svc.remove_worker(b"w2", Loss::Expired, at(5), &mut out);
    assert_eq!(errors(&out)[0].1, 502);
    assert_eq!(svc.stats.retried, 1);
    assert_eq!(svc.stats.lost, 1);
}

#[test]
fn a_reply_matching_nothing_is_dropped_without_credit() {
    let mut svc = service(10, false);
    let mut out = Vec::new();
    ready(&mut svc, "w", 1, at(0), &mut out);
    svc.offer(request("a"), at(1), &mut out);
    assert_eq!(
        svc.worker_reply(b"w", &[b"zzz".to_vec()], at(2), &mut out)
            .err(),
        Some(Unmatched::NotHeld)
    );
    assert_eq!(svc.credit_of(b"w"), Some(0));
    assert_eq!(svc.stats.unmatched_replies, 1);
}

#[test]
fn pipelined_requests_from_one_client_are_matched_one_reply_each() {
    let mut svc = service(10, false);
    let mut out = Vec::new();
    ready(&mut svc, "w", 3, at(0), &mut out);
    for _ in 0..3 {
        svc.offer(request("dealer"), at(1), &mut out);
    }
    assert_eq!(svc.held_count(), 3);
    for _ in 0..3 {
        reply(&mut svc, "w", "dealer", at(2), &mut out);
    }
    assert_eq!(svc.held_count(), 0);
    assert!(svc
        .worker_reply(b"w", &[b"dealer".to_vec()], at(3), &mut out)
        .is_err());
}

#[test]
fn undeliverable_requests_wait_again_in_order() {
    let mut svc = service(10, false);
    let mut out = Vec::new();
    ready(&mut svc, "w", 2, at(0), &mut out);
    svc.offer(request("a"), at(1), &mut out);
    svc.offer(request("b"), at(1), &mut out);
    svc.offer(request("c"), at(1), &mut out);
    let batch: Vec<Vec<Vec<u8>>> = out.drain(..).map(|o| o.frames).collect();
    assert_eq!(batch.len(), 2);
    // The socket says the worker is gone: nothing was delivered, nothing fails.
    svc.undeliverable(b"w", batch, true, at(2), &mut out);
    assert!(errors(&out).is_empty(), "{out:?}");
    assert_eq!(svc.worker_count(), 0);
    assert_eq!(svc.waiting_count(), 3);
    ready(&mut svc, "w2", 3, at(3), &mut out);
    let order: Vec<Vec<u8>> = out
        .iter()
        .filter(|o| matches!(o.purpose, Purpose::Dispatch { .. }))
        .map(|o| o.frames[2].clone())
        .collect();
    assert_eq!(order, [b"a".to_vec(), b"b".to_vec(), b"c".to_vec()]);
}

#[test]
fn a_full_service_refuses_more_workers() {
    let mut svc = service(10, false);
    let mut out = Vec::new();
    for i in 0..8 {
        ready(&mut svc, &format!("w{i}"), 1, at(0), &mut out);
    }
    assert!(!svc.worker_ready(b"w8", Framing::Seed, 1, at(0), &mut out));
    assert_eq!(svc.worker_count(), 8);
}

#[test]
fn a_worker_never_holds_more_than_max_held() {
    let mut svc = service(1000, false);
    let mut out = Vec::new();
    ready(&mut svc, "w", 255, at(0), &mut out);
    for _ in 0..255 {
        svc.offer(request("c"), at(1), &mut out);
    }
    svc.worker_heartbeat(b"w", Some(255), at(2), &mut out);
    assert_eq!(
        svc.credit_of(b"w"),
        Some(0),
        "255 held: no room whatever it says"
    );
}

#[test]
fn replies_record_their_duration_and_requests_and_replies_their_bytes() {
    let mut svc = service(10, false);
    let mut out = Vec::new();
    ready(&mut svc, "w", 2, at(0), &mut out);
    svc.offer(request("c1"), at(0), &mut out);
    assert_eq!(svc.stats.received_bytes, "body of c1".len() as u64);
    reply(&mut svc, "w", "c1", at(3), &mut out);
    let mut late = request("c2");
    late.received = at(10);
    svc.offer(late, at(10), &mut out);
    reply(
        &mut svc,
        "w",
        "c2",
        at(10) + Duration::from_micros(80),
        &mut out,
    );
    let histogram = &svc.stats.durations;
    assert_eq!(histogram.count(), 2);
    assert!((histogram.sum_seconds() - 0.00308).abs() < 1e-9);
    let buckets: Vec<(f64, u64)> = histogram.buckets().collect();
    assert_eq!(buckets.len(), DURATION_BUCKETS_US.len());
    // 80 µs in the first bucket (<= 100 µs), 3 ms in the one up to 5 ms.
    assert_eq!(buckets[0], (0.0001, 1));
    assert_eq!(buckets[5], (0.005, 1));
    assert_eq!(buckets.iter().map(|(_, n)| n).sum::<u64>(), 2);
    // A refused request's body counts as received too; nothing was replied by the broker's
    // own error replies.
    let mut full = service(0, false);
    full.offer(request("c3"), at(0), &mut out);
    assert_eq!(
        (
            full.stats.received_bytes,
            full.stats.refused,
            full.stats.sent_bytes
        ),
        ("body of c3".len() as u64, 1, 0)
    );
}

#[test]
fn the_histogram_puts_each_duration_in_the_first_bucket_that_holds_it() {
    let mut h = DurationHistogram::default();
    h.observe(Duration::from_micros(100));
    h.observe(Duration::from_micros(101));
    h.observe(Duration::from_secs(11));
    let buckets: Vec<u64> = h.buckets().map(|(_, n)| n).collect();
    assert_eq!((buckets[0], buckets[1]), (1, 1));
    // Above every bound: counted, in no listed bucket.
    assert_eq!((h.count(), buckets.iter().sum::<u64>()), (3, 2));
}

#[test]
fn waiting_requests_are_bounded_by_bytes() {
    let mut svc = service(100, false);
    svc.set_settings(ServiceSettings {
        queue_max_bytes: 10_000,
        ..settings(100, false)
    });
    let mut out = Vec::new();
    let big = |client: &str| Request {
        body: vec![vec![0u8; 4000]],
        ..request(client)
    };
    svc.offer(big("a"), at(0), &mut out);
    svc.offer(big("b"), at(0), &mut out);
    assert!(out.is_empty());
    assert_eq!(svc.waiting_bytes(), 8002);
    svc.offer(big("c"), at(0), &mut out);
    let refused = errors(&out);
    assert_eq!(refused.len(), 1, "{out:?}");
    assert_eq!(refused[0].0, "c");
    assert_eq!(refused[0].1, 503);
    assert_eq!(svc.waiting_count(), 2);
    // A small one still fits.
    out.clear();
    svc.offer(request("d"), at(0), &mut out);
    assert!(out.is_empty());
    // Dispatched and expired requests give their bytes back.
    svc.worker_ready(b"W", Framing::Pirate, 1, at(1), &mut out);
    assert_eq!(
        svc.waiting_bytes(),
        4001 + body_bytes(&request("d").body) + 1
    );
    svc.expire_waiting(at(10_000), &mut out);
    assert_eq!(svc.waiting_bytes(), 0);
    assert_eq!(svc.waiting_count(), 0);
}

#[test]
fn with_error_replies_off_pirate_clients_get_silence_and_majordomo_clients_errors() {
    let mut svc = service(0, false);
    svc.set_settings(ServiceSettings {
        error_replies: false,
        ..settings(0, false)
    });
    let mut out = Vec::new();
    // queue_limit 0 and no worker: refused at once, silently.
    svc.offer(request("a"), at(0), &mut out);
    assert!(out.is_empty(), "{out:?}");
    assert_eq!(svc.stats.refused, 1);
    assert_eq!(svc.stats.silenced, 1);
    // A lost worker's request: silent too.
    svc.worker_ready(b"W", Framing::Pirate, 1, at(0), &mut out);
    svc.offer(request("b"), at(0), &mut out);
    assert_eq!(dispatched_to(&out), ["W"]);
    out.clear();
    svc.remove_worker(b"W", Loss::Expired, at(1), &mut out);
    assert!(out.is_empty(), "{out:?}");
    assert_eq!((svc.stats.lost, svc.stats.silenced), (1, 2));
    // A Majordomo client of the same service still gets its error reply.
    svc.offer(
        Request {
            origin: Origin::Majordomo,
            ..request("m")
        },
        at(2),
        &mut out,
    );
    assert_eq!(errors(&out).len(), 1, "{out:?}");
}
