//! Fuzz targets as property tests: arbitrary bytes and arbitrary JSON-ish requests go through
//! `decode_request` and the server core (with and without a cookie). For every input: no
//! panic, exactly one answer carrying the request's `id` when it had one, and that answer is a
//! valid reply or an error whose code is in the error table of `docs/protocols/beacon.md`;
//! what the core holds stays within its limits.
//!
//! The corpus in `tests/fuzz_corpus/` always runs. Without `TROUPE_FUZZ_SECS`, a modest number
//! of generated cases follows; with it, cases are generated for that many seconds
//! (`make fuzz`: `TROUPE_FUZZ_SECS=60 cargo test --release -p troupe-beacon --test fuzz`).

use std::cell::RefCell;
use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use proptest::prelude::*;
use proptest::test_runner::{Config, TestCaseError, TestRunner};
use serde_json::{Map, Value};
use troupe_beacon::auth::Cookie;
use troupe_beacon::protocol::{decode_request, encode_reply};
use troupe_beacon::registry::{PeerId, Registry, RegistryConfig};
use troupe_beacon::server::core::{BeaconCore, Inbound, Outbound, SessionLimits};

const MAX_FRAME: usize = 4096;
const MAX_NODES: usize = 50;
const MAX_SESSIONS: usize = 20;
const MAX_WATCHERS: usize = 30;
/// Generated cases per target without `TROUPE_FUZZ_SECS`.
const QUICK_CASES: u32 = 300;

const PROTOCOL: &str = include_str!("../../../docs/protocols/beacon.md");

/// The error codes of the doc's error table.
fn documented_codes() -> BTreeSet<String> {
    let errors = PROTOCOL
        .split("\n## Errors")
        .nth(1)
        .expect("the doc has an Errors section");
    let errors = errors.split("\n## ").next().unwrap_or(errors);
    let codes: BTreeSet<String> = errors
        .lines()
        .filter_map(|line| line.strip_prefix("| `"))
        .filter_map(|rest| rest.split('`').next())
        .map(str::to_string)
        .collect();
    assert!(codes.contains("bad_json") && codes.len() >= 10, "{codes:?}");
    codes
}

/// The replies the doc's operations table and sections name.
const REPLY_OPS: &[&str] = &[
    "challenge",
    "welcome",
    "pong",
    "registered",
    "ack",
    "deregistered",
    "requirements",
    "nodes",
    "snapshot",
    "resumed",
    "unwatched",
    "error",
];
const PUSH_OPS: &[&str] = &["event", "watch_lost"];

struct Target {
    core: BeaconCore,
    now: Instant,
    codes: BTreeSet<String>,
    cases: u64,
}

impl Target {
    fn new(cookie: Option<&str>) -> Self {
        let registry = Registry::new(
            RegistryConfig {
                liveness: 3,
                offline_ttl: Duration::from_secs(30),
                history: 64,
                max_nodes: MAX_NODES,
            },
            "fuzz".into(),
        );
        let limits = SessionLimits {
            max_sessions: MAX_SESSIONS,
            max_pending_auth: 8,
            max_watchers: MAX_WATCHERS,
            max_watches_per_peer: 4,
            session_ttl: Duration::from_secs(5),
            listed_nodes_per_second: 1000,
        };
        Target {
            core: BeaconCore::new(registry, cookie.and_then(Cookie::new), limits),
            now: Instant::now(),
            codes: documented_codes(),
            cases: 0,
        }
    }

    /// Feeds one frame from `peer` and checks the answer; `Err` says what is wrong.
    fn feed(&mut self, peer: u8, frame: &[u8]) -> Result<(), String> {
        self.cases += 1;
        self.now += Duration::from_millis(7);
        let mut out: Vec<Outbound> = Vec::new();
        let decoded = decode_request(frame, MAX_FRAME);
        self.core.handle(
            self.now,
            Inbound {
                peer: PeerId(vec![peer]),
                delimited: peer.is_multiple_of(2),
                frame: decoded,
            },
            &mut out,
        );
        if self.cases.is_multiple_of(50) {
            self.now += Duration::from_millis(900);
            self.core.tick(self.now, &mut out);
        }
        let sent_id = serde_json::from_slice::<Value>(frame)
            .ok()
            .and_then(|v| v.get("id").and_then(Value::as_u64));
        let mut answers = 0;
        for message in &out {
            let bytes = encode_reply(message.id, &message.reply);
            let reply: Value = serde_json::from_slice(&bytes)
                .map_err(|err| format!("the beacon sent invalid JSON ({err})"))?;
            if reply["v"] != 1 {
                return Err(format!("no \"v\":1 in {reply}"));
            }
            let op = reply["op"].as_str().ok_or("a reply without op")?;
            if PUSH_OPS.contains(&op) {
                if reply.get("id").is_some() {
                    return Err(format!("a push with an id: {reply}"));
                }
                continue;
            }
            if message.peer != PeerId(vec![peer]) {
                return Err(format!("a reply to another peer: {reply}"));
            }
            if !REPLY_OPS.contains(&op) {
                return Err(format!("undocumented reply op {op}"));
            }
            answers += 1;
            if op == "error" {
                let code = reply["code"].as_str().ok_or("an error without code")?;
                if !self.codes.contains(code) {
                    return Err(format!("undocumented error code {code}"));
                }
                if frame.len() > MAX_FRAME && code != "too_large" {
                    return Err(format!("{} bytes answered with {code}", frame.len()));
                }
                if reply["error"].as_str().is_none_or(str::is_empty) {
                    return Err(format!("an error without a sentence: {reply}"));
                }
            }
            if let (Some(sent), Some(got)) = (sent_id, reply.get("id")) {
                if got.as_u64() != Some(sent) {
                    return Err(format!("request id {sent} answered with id {got}"));
                }
            }
            if sent_id.is_some() && frame.len() <= MAX_FRAME && reply.get("id").is_none() {
                return Err(format!(
                    "request id {sent_id:?} answered without it: {reply}"
                ));
            }
        }
        // Tick pushes aside, one frame gets exactly one answer.
        if answers != 1 {
            return Err(format!("{answers} answers to one frame: {out:?}"));
        }
        let registry = self.core.registry();
        if registry.len() > MAX_NODES
            || self.core.sessions() > MAX_SESSIONS
            || self.core.watchers() > MAX_WATCHERS
        {
            return Err(format!(
                "limits exceeded: {} nodes, {} sessions, {} watchers",
                registry.len(),
                self.core.sessions(),
                self.core.watchers()
            ));
        }
        Ok(())
    }
}

fn targets() -> [Target; 2] {
    [Target::new(None), Target::new(Some("fuzz-cookie"))]
}

fn corpus() -> Vec<(String, Vec<u8>)> {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fuzz_corpus");
    let mut files: Vec<_> = std::fs::read_dir(&dir)
        .expect("tests/fuzz_corpus exists")
        .map(|entry| entry.unwrap().path())
        .collect();
    files.sort();
    let mut cases: Vec<(String, Vec<u8>)> = files
        .into_iter()
        .map(|path| {
            let name = path.file_name().unwrap().to_string_lossy().into_owned();
            (name, std::fs::read(&path).unwrap())
        })
        .collect();
    cases.push(("too_large".into(), vec![b' '; MAX_FRAME + 1]));
    let mut huge = br#"{"v":1,"op":"ping","id":5,"pad":""#.to_vec();
    huge.extend(std::iter::repeat_n(b'x', 3 * MAX_FRAME));
    huge.extend(br#""}"#);
    cases.push(("too_large_json".into(), huge));
    cases
}

#[test]
fn the_corpus_is_answered_as_documented() {
    let cases = corpus();
    assert!(cases.len() >= 20);
    for mut target in targets() {
        // Twice, from several peers, so that later frames meet the state earlier ones left.
        for round in 0..2u8 {
            for (i, (name, frame)) in cases.iter().enumerate() {
                let peer = (i as u8 % 3) + round;
                if let Err(why) = target.feed(peer, frame) {
                    panic!("corpus {name}: {why}");
                }
            }
        }
    }
}

fn name() -> impl Strategy<Value = String> {
    prop_oneof![
        4 => "[a-z][a-z0-9._-]{0,8}",
        1 => ".{0,20}",
        1 => "[a-z]{129,140}",
        1 => Just("edge-1".to_string()),
        1 => Just("broker".to_string()),
    ]
}

fn json_value() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(Value::from),
        any::<u64>().prop_map(Value::from),
        (0u64..700_000).prop_map(Value::from),
        Just(Value::from(1.5)),
        name().prop_map(Value::String),
        "[0-9a-f]{64}".prop_map(Value::String),
        "(tcp|ipc)://[a-z0-9.:/]{1,20}".prop_map(Value::String),
    ];
    leaf.prop_recursive(3, 24, 6, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..6).prop_map(Value::Array),
            prop::collection::btree_map(name(), inner, 0..6)
                .prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    })
}

const OPS: &[&str] = &[
    "hello",
    "auth",
    "ping",
    "register",
    "heartbeat",
    "deregister",
    "get_requirements",
    "lookup",
    "list",
    "watch",
    "unwatch",
];
const FIELDS: &[&str] = &[
    "node",
    "resource",
    "requires",
    "endpoints",
    "offers",
    "metadata",
    "heartbeat_ms",
    "nonce",
    "proof",
    "watch",
    "resources",
    "since",
];

/// A name from a small pool, so that requests meet each other's nodes and watches.
fn pooled() -> impl Strategy<Value = Value> {
    prop_oneof![
        6 => "(n[0-9]|broker|ipc|db|w[0-3])".prop_map(Value::String),
        1 => name().prop_map(Value::String),
    ]
}

fn names() -> impl Strategy<Value = Value> {
    prop::collection::vec(pooled(), 0..4).prop_map(Value::Array)
}

fn endpoints() -> impl Strategy<Value = Value> {
    prop::collection::btree_map(
        "(main|socket|frontend|x)",
        "(tcp://h:[0-9]{1,4}|ipc:///run/[a-z]{1,5})".prop_map(Value::String),
        0..3,
    )
    .prop_map(|m| Value::Object(m.into_iter().collect()))
}

/// A plausible value for `field`, or (sometimes) anything.
fn field_value(field: &'static str) -> BoxedStrategy<Value> {
    let good: BoxedStrategy<Value> = match field {
        "node" | "resource" | "watch" => pooled().boxed(),
        "requires" | "resources" => names().boxed(),
        "endpoints" => endpoints().boxed(),
        "offers" => prop::collection::btree_map("(broker|ipc|db|beacon)", endpoints(), 0..3)
            .prop_map(|m| Value::Object(m.into_iter().collect()))
            .boxed(),
        "metadata" => prop::collection::btree_map(name(), json_value(), 0..3)
            .prop_map(|m| Value::Object(m.into_iter().collect()))
            .boxed(),
        "heartbeat_ms" => prop_oneof![5 => (10u64..5000).prop_map(Value::from), 1 => any::<u64>().prop_map(Value::from)].boxed(),
        "nonce" | "proof" => "[0-9a-f]{64}".prop_map(Value::String).boxed(),
        "since" => ("(fuzz|other)", 0u64..200)
            .prop_map(|(epoch, rev)| serde_json::json!({"epoch": epoch, "rev": rev}))
            .boxed(),
        _ => json_value().boxed(),
    };
    prop_oneof![12 => good, 1 => json_value()].boxed()
}

/// The fields of `op` (required ones and optional ones).
fn fields_of(op: &str) -> &'static [&'static str] {
    match op {
        "hello" => &["nonce", "node"],
        "auth" => &["proof"],
        "register" => &[
            "node",
            "resource",
            "heartbeat_ms",
            "requires",
            "endpoints",
            "offers",
            "metadata",
        ],
        "heartbeat" | "deregister" | "get_requirements" => &["node"],
        "lookup" => &["resource"],
        "watch" => &["watch", "resources", "since"],
        "unwatch" => &["watch"],
        _ => &[],
    }
}

/// Requests close to valid ones: a known op (mostly) with its fields (each mostly present and
/// plausible), `v` (mostly 1), an `id` (mostly an unsigned integer), and now and then a field
/// of another op or an unknown one.
fn json_request() -> impl Strategy<Value = Vec<u8>> {
    prop::sample::select(OPS)
        .prop_flat_map(|op| {
            let fields: Vec<_> = fields_of(op)
                .iter()
                .map(|field| {
                    prop::option::weighted(0.9, field_value(field))
                        .prop_map(move |value| (field.to_string(), value))
                })
                .collect();
            let extra = prop::option::weighted(
                0.1,
                (
                    prop_oneof![prop::sample::select(FIELDS).prop_map(str::to_string), name()],
                    json_value(),
                ),
            );
            let op_value = prop_oneof![
                20 => Just(Value::from(op.to_string())),
                1 => name().prop_map(Value::String),
                1 => json_value(),
            ];
            let v = prop_oneof![20 => Just(Value::from(1)), 1 => json_value()];
            let id = prop_oneof![10 => (0u64..1000).prop_map(Value::from), 2 => any::<u64>().prop_map(Value::from), 1 => json_value()];
            (
                prop::option::weighted(0.98, op_value),
                prop::option::weighted(0.98, v),
                prop::option::weighted(0.9, id),
                fields,
                extra,
            )
        })
        .prop_map(|(op, v, id, fields, extra)| {
            let mut object = Map::new();
            for (key, value) in fields {
                if let Some(value) = value {
                    object.insert(key, value);
                }
            }
            if let Some((key, value)) = extra {
                object.insert(key, value);
            }
            if let Some(op) = op {
                object.insert("op".into(), op);
            }
            if let Some(v) = v {
                object.insert("v".into(), v);
            }
            if let Some(id) = id {
                object.insert("id".into(), id);
            }
            serde_json::to_vec(&Value::Object(object)).unwrap()
        })
}

/// Raw bytes: arbitrary, or a JSON request cut or with a byte changed.
fn raw_bytes() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        prop::collection::vec(any::<u8>(), 0..600),
        (json_request(), any::<prop::sample::Index>()).prop_map(|(frame, at)| {
            let cut = at.index(frame.len() + 1);
            frame[..cut].to_vec()
        }),
        (json_request(), any::<prop::sample::Index>(), any::<u8>()).prop_map(
            |(mut frame, at, byte)| {
                let i = at.index(frame.len());
                frame[i] = byte;
                frame
            }
        ),
        prop::collection::vec(any::<u8>(), MAX_FRAME - 8..MAX_FRAME + 8),
    ]
}

/// Runs `strategy`'s cases through both targets: `QUICK_CASES`, or for `TROUPE_FUZZ_SECS`.
fn fuzz(strategy: impl Strategy<Value = (u8, Vec<u8>)>) {
    let budget = std::env::var("TROUPE_FUZZ_SECS")
        .ok()
        .and_then(|s| s.parse::<u64>().ok())
        .map(Duration::from_secs);
    let deadline = budget.map(|b| Instant::now() + b);
    let mut total = 0u64;
    let mut outcomes = std::collections::BTreeMap::<(&str, &str), u64>::new();
    loop {
        let targets = RefCell::new(targets());
        let mut runner = TestRunner::new(Config {
            cases: if deadline.is_some() {
                2000
            } else {
                QUICK_CASES
            },
            failure_persistence: None,
            ..Config::default()
        });
        let result = runner.run(&strategy, |(peer, frame)| {
            for target in targets.borrow_mut().iter_mut() {
                target
                    .feed(peer % 6, &frame)
                    .map_err(|why| TestCaseError::fail(format!("{why}\ninput: {frame:?}")))?;
            }
            Ok(())
        });
        if let Err(err) = result {
            panic!("{err}");
        }
        total += targets.borrow().iter().map(|t| t.cases).sum::<u64>();
        for (outcome, count) in &targets.borrow()[0].core.counters().requests {
            *outcomes.entry(*outcome).or_default() += count;
        }
        match deadline {
            Some(at) if Instant::now() < at => continue,
            _ => break,
        }
    }
    eprintln!("fuzz: {total} frames fed; answers without a cookie by (op, outcome): {outcomes:?}");
}

#[test]
fn arbitrary_bytes_are_answered_as_documented() {
    fuzz((any::<u8>(), raw_bytes()));
}

#[test]
fn arbitrary_json_requests_are_answered_as_documented() {
    fuzz((any::<u8>(), json_request()));
}

#[test]
fn the_error_table_is_what_the_beacon_answers() {
    // Every code the beacon can answer is in the doc's table, and the other way round.
    let documented = documented_codes();
    let known: BTreeSet<String> = [
        "bad_json",
        "bad_request",
        "unknown_op",
        "unsupported_version",
        "too_large",
        "bad_frame",
        "auth_required",
        "auth_failed",
        "unknown_node",
        "limit",
        "unknown_watch",
    ]
    .into_iter()
    .map(str::to_string)
    .collect();
    assert_eq!(documented, known);
}
