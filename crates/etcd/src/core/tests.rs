//! Unit tests of the etcd core: records, events, starts, queries and the membership.

use super::*;

const PREFIX: &str = "/troupe/test/";

fn registration(resource: &str, requires: &[&str], api: &str) -> Registration {
    let mut r = Registration {
        resource: resource.into(),
        requires: requires.iter().map(|s| s.to_string()).collect(),
        endpoints: [("api".to_string(), api.to_string())].into(),
        ..Registration::default()
    };
    r.normalize();
    r
}

fn node(name: &str, resource: &str, requires: &[&str]) -> Node {
    let value = encode(
        name,
        &registration(resource, requires, "tcp://h:1"),
        Duration::from_secs(1),
    );
    decode(PREFIX, node_key(PREFIX, name).as_bytes(), &value).unwrap()
}

#[test]
fn a_record_round_trips_and_names_its_key() {
    let r = registration("broker", &["db"], "tcp://h:1");
    let value = encode("b-1", &r, Duration::from_millis(500));
    let text = String::from_utf8(value.clone()).unwrap();
    assert!(text.contains("\"name\":\"b-1\""), "{text}");
    assert!(text.contains("\"heartbeat_ms\":500"), "{text}");
    let node = decode(PREFIX, b"/troupe/test/nodes/b-1", &value).unwrap();
    assert_eq!(node.name, "b-1");
    assert_eq!(node.status, Status::Online);
    assert_eq!(node.requires, ["db"]);
    assert_eq!(node.endpoints_for("broker").unwrap()["api"], "tcp://h:1");
    // Under another key, or invalid: refused with the reason.
    let err = decode(PREFIX, b"/troupe/test/nodes/other", &value).unwrap_err();
    assert!(err.contains("holds node \"b-1\""), "{err}");
    assert!(decode(PREFIX, b"/troupe/test/nodes/x", b"{").is_err());
    let bad = br#"{"name":"x","resource":"a b","heartbeat_ms":1}"#;
    assert!(decode(PREFIX, b"/troupe/test/nodes/x", bad).is_err());
    let big = vec![b' '; MAX_RECORD + 1];
    assert!(decode(PREFIX, b"/troupe/test/nodes/x", &big)
        .unwrap_err()
        .contains("at most"));
    // Written by another program, with the minimum of fields.
    let minimal = br#"{"name":"x","resource":"svc","heartbeat_ms":1000}"#;
    let x = decode(PREFIX, b"/troupe/test/nodes/x", minimal).unwrap();
    assert!(x.offers_resource("svc"));
}

#[test]
fn a_range_ends_after_its_prefix() {
    assert_eq!(
        prefix_end(b"/troupe/x/nodes/"),
        b"/troupe/x/nodes0".to_vec()
    );
    assert_eq!(prefix_end(b"a\xff"), b"b".to_vec());
    assert_eq!(prefix_end(b"\xff\xff"), vec![0]);
}

#[test]
fn etcd_events_become_node_events() {
    let value = |resource: &str| {
        encode(
            "n",
            &registration(resource, &[], "tcp://h:1"),
            Duration::from_secs(1),
        )
    };
    let key = node_key(PREFIX, "n").into_bytes();
    let mut skipped = Vec::new();
    let put = RawEvent {
        rev: 7,
        key: key.clone(),
        value: Some(value("a")),
        prev: None,
    };
    let up = map_event(PREFIX, &put, &mut skipped).unwrap();
    assert_eq!((up.rev, up.kind), (7, EventKind::Nodeup));
    let change = RawEvent {
        rev: 8,
        key: key.clone(),
        value: Some(value("b")),
        prev: Some(value("a")),
    };
    let changed = map_event(PREFIX, &change, &mut skipped).unwrap();
    assert_eq!(changed.kind, EventKind::Changed);
    assert!(changed.previous.is_some());
    // A watch of `a` sees the node go when it stops offering `a`.
    let seen = changed.for_watch(&["a".to_string()]).unwrap();
    assert_eq!(seen.kind, EventKind::Removed);
    let gone = RawEvent {
        rev: 9,
        key: key.clone(),
        value: None,
        prev: Some(value("b")),
    };
    let removed = map_event(PREFIX, &gone, &mut skipped).unwrap();
    assert_eq!(
        (removed.kind, removed.node.name.as_str()),
        (EventKind::Removed, "n")
    );
    let unknown = RawEvent {
        rev: 10,
        key,
        value: None,
        prev: None,
    };
    assert_eq!(map_event(PREFIX, &unknown, &mut skipped), None);
    assert!(skipped.is_empty());
}

#[test]
fn watches_resume_in_the_same_etcd_and_read_afresh_otherwise() {
    let e = epoch(0xabc);
    let at = |epoch: &str, rev| Position {
        epoch: epoch.to_string(),
        rev,
    };
    assert_eq!(start_from(None, &e, 10), Start::Snapshot);
    assert_eq!(start_from(Some(&at(&e, 4)), &e, 10), Start::From(5));
    assert_eq!(start_from(Some(&at(&e, 10)), &e, 10), Start::From(11));
    assert_eq!(start_from(Some(&at(&e, 11)), &e, 10), Start::Snapshot);
    assert_eq!(
        start_from(Some(&at("etcd-other", 4)), &e, 10),
        Start::Snapshot
    );
    assert_eq!(after_compaction(3, 7), Start::Snapshot);
    assert_eq!(after_compaction(0, 7), Start::From(8));
}

#[test]
fn lookups_and_requirements_offer_online_providers_never_the_asker() {
    let nodes = vec![
        node("app", "app", &["db", "cache"]),
        node("db-2", "db", &[]),
        node("db-1", "db", &[]),
        node("self-db", "db", &["db"]),
    ];
    let found = lookup(&nodes, "db");
    let names: Vec<&str> = found.iter().map(|n| n.name.as_str()).collect();
    assert_eq!(names, ["db-1", "db-2", "self-db"]);
    let shown = watched(&nodes, &["app".to_string()]);
    assert_eq!(shown.len(), 1);
    let nodes: Vec<&Node> = nodes.iter().collect();
    let r = requirements_of("app", &nodes).unwrap();
    assert_eq!(r.offers["db"].len(), 3);
    assert_eq!(r.unmet, ["cache"]);
    let own = requirements_of("self-db", &nodes).unwrap();
    assert!(own.offers["db"].iter().all(|n| n.name != "self-db"));
    match requirements_of("nobody", &nodes) {
        Err(ClientError::Refused { code, .. }) => assert_eq!(code, ErrorCode::UnknownNode),
        other => panic!("{other:?}"),
    }
}

fn settings(requires: &[&str]) -> Settings {
    Settings {
        node: "me".into(),
        registration: Some(registration("web", requires, "tcp://me:1")),
        base_resources: ["web".to_string()].into(),
        heartbeat: Duration::from_millis(500),
        liveness: 3,
        prefix: PREFIX.into(),
        endpoints: vec!["http://127.0.0.1:2379".into()],
    }
}

/// A core connected, on lease `lease`, and with the registration value it would put next.
fn leased(settings: Settings, lease: i64, now: Instant) -> (EtcdCore, Vec<u8>) {
    let mut core = EtcdCore::new(settings, now);
    core.next_op(now);
    core.connected(now, Ok(()));
    core.next_op(now);
    core.granted(now, Ok(lease));
    let Some(Op::Register { value, .. }) = core.next_op(now) else {
        panic!("expected a registration")
    };
    (core, value)
}

#[test]
fn the_membership_connects_leases_registers_and_keeps_alive() {
    let t0 = Instant::now();
    let mut core = EtcdCore::new(settings(&[]), t0);
    assert_eq!(core.settings().ttl(), 2);
    assert_eq!(core.next_op(t0), Some(Op::Connect));
    assert_eq!(core.next_op(t0), None, "one call at a time");
    assert!(core.connected(t0, Ok(())).is_empty());
    assert_eq!(core.next_op(t0), Some(Op::Grant { ttl: 2 }));
    core.granted(t0, Ok(42));
    let Some(Op::Register { lease, key, value }) = core.next_op(t0) else {
        panic!("expected a registration");
    };
    assert_eq!((lease, key.as_str()), (42, "/troupe/test/nodes/me"));
    let notes = core.claimed(t0, value, Ok(Claim::Put));
    assert_eq!(
        notes,
        [Note::Registered {
            lease: 42,
            again: false
        }]
    );
    assert!(core.registered());
    assert_eq!(core.next_op(t0), None, "nothing before the next heartbeat");
    let t1 = t0 + Duration::from_millis(500);
    assert_eq!(core.next_op(t1), Some(Op::KeepAlive { lease: 42 }));
    assert!(core.kept_alive(t1, Ok(2)).is_empty());
    assert_eq!(core.status(t1, 0).beacons[0].state, "registered");
}

#[test]
fn an_unreachable_etcd_is_told_once_and_an_expired_lease_is_replaced() {
    let t0 = Instant::now();
    let (mut core, value) = leased(settings(&[]), 1, t0);
    core.claimed(t0, value, Ok(Claim::Put));
    let mut t = t0 + Duration::from_millis(500);
    core.next_op(t);
    let notes = core.kept_alive(t, Err("connection refused".into()));
    assert!(matches!(&notes[..], [Note::Unreachable(why)] if why.contains("refused")));
    assert_eq!(core.status(t, 0).beacons[0].state, "unreachable");
    t += Duration::from_millis(500);
    assert_eq!(core.next_op(t), Some(Op::KeepAlive { lease: 1 }));
    assert!(
        core.kept_alive(t, Err("again".into())).is_empty(),
        "told once"
    );
    t += Duration::from_millis(500);
    core.next_op(t);
    // etcd is back, and the lease expired meanwhile.
    let notes = core.kept_alive(t, Ok(0));
    assert!(matches!(notes[0], Note::Reachable(_)));
    assert_eq!(notes[1], Note::LeaseLost);
    assert!(!core.registered());
    assert_eq!(core.next_op(t), Some(Op::Grant { ttl: 2 }));
    core.granted(t, Ok(2));
    let Some(Op::Register { lease, value, .. }) = core.next_op(t) else {
        panic!()
    };
    assert_eq!(lease, 2);
    let notes = core.claimed(t, value, Ok(Claim::Put));
    assert_eq!(
        notes,
        [Note::Registered {
            lease: 2,
            again: true
        }]
    );
}

#[test]
fn a_name_held_by_another_lease_is_refused_not_taken() {
    assert!(may_claim(5, 5));
    assert!(!may_claim(6, 5));
    assert!(!may_claim(0, 5), "a key without a lease is held for good");
    let t0 = Instant::now();
    let (mut core, value) = leased(settings(&[]), 1, t0);
    let notes = core.claimed(t0, value.clone(), Ok(Claim::HeldBy { lease: 9 }));
    assert!(
        matches!(&notes[..], [Note::Refused(why)] if why.contains("held by another live node"))
    );
    let status = core.status(t0, 0);
    assert_eq!(status.beacons[0].state, "refused");
    // It tries again at the next heartbeat, and is told once.
    let t1 = t0 + Duration::from_millis(500);
    assert!(matches!(core.next_op(t1), Some(Op::Register { .. })));
    assert!(core
        .claimed(t1, value.clone(), Ok(Claim::HeldBy { lease: 9 }))
        .is_empty());
    let t2 = t1 + Duration::from_millis(500);
    core.next_op(t2);
    core.claimed(t2, value, Ok(Claim::Put));
    assert!(core.registered());
}

#[test]
fn requirements_are_awaited_on_the_mirror_and_providers_follow_it() {
    let t0 = Instant::now();
    let mut core = EtcdCore::new(settings(&["db"]), t0);
    assert!(core
        .await_requirements(7, t0 + Duration::from_secs(5))
        .unwrap()
        .is_empty());
    let actions = core.watch_providers(WatchId(1), vec!["db".into()]).unwrap();
    assert!(actions.is_empty(), "no picture before the first read");
    let position = Position {
        epoch: epoch(1),
        rev: 3,
    };
    let actions = core.mirror_snapshot(position, vec![node("me", "web", &["db"])]);
    assert!(
        matches!(&actions[..], [Action::Providers { changed, .. }] if changed.providers["db"].is_empty())
    );
    assert_eq!(core.status(t0, 0).requirements, "unmet");
    let up = Event {
        rev: 4,
        kind: EventKind::Nodeup,
        node: node("db-1", "db", &[]),
        previous: None,
    };
    let actions = core.mirror_events(&epoch(1), vec![up]);
    assert!(actions
        .iter()
        .any(|a| matches!(a, Action::Awaited { token: 7, result: Ok(r) } if r.unmet.is_empty())));
    assert!(actions.iter().any(
        |a| matches!(a, Action::Providers { changed, .. } if changed.providers["db"][0].node == "db-1")
    ));
    assert_eq!(core.position().unwrap().rev, 4);
    // Unreachable: the watches are told so.
    let actions = core.mirror_down();
    assert!(matches!(&actions[..], [Action::Providers { changed, .. }] if !changed.reachable));
    // A caller whose wait is over is told what is unmet.
    core.await_requirements(8, t0 + Duration::from_millis(10))
        .unwrap();
    let actions = core.tick(t0 + Duration::from_millis(20));
    assert!(matches!(
        &actions[..],
        [Action::Awaited {
            token: 8,
            result: Err(ClientError::Unmet(_))
        }]
    ));
    // Back (the watch resumed from its revision): the picture returns.
    let actions = core.mirror_watching();
    assert!(matches!(&actions[..], [Action::Providers { changed, .. }] if changed.reachable));
}

#[test]
fn offers_change_what_is_registered() {
    let t0 = Instant::now();
    let (mut core, value) = leased(settings(&[]), 1, t0);
    core.claimed(t0, value, Ok(Claim::Put));
    core.offer(
        t0,
        "metrics",
        [("http".to_string(), "http://me:9".to_string())].into(),
    )
    .unwrap();
    assert!(!core.registered());
    let Some(Op::Register { value, .. }) = core.next_op(t0) else {
        panic!("the new offer is put at once")
    };
    assert!(String::from_utf8_lossy(&value).contains("metrics"));
    assert!(core.offer(t0, "bad name", Endpoints::new()).is_err());
    let asking = Settings {
        registration: None,
        ..settings(&[])
    };
    let mut asker = EtcdCore::new(asking, t0);
    assert_eq!(
        asker.offer(t0, "x", Endpoints::new()),
        Err(ClientError::NotRegistering)
    );
    asker.next_op(t0);
    asker.connected(t0, Ok(()));
    assert_eq!(
        asker.next_op(t0),
        None,
        "an asking client registers nothing"
    );
}

#[test]
fn the_mirror_answers_lookups_through_its_index_as_a_full_scan_would() {
    let t0 = Instant::now();
    let mut core = EtcdCore::new(settings(&["db"]), t0);
    assert!(
        core.mirrored_lookup("db").is_none(),
        "no mirror before the first read"
    );
    assert!(core.mirrored_requirements("app").is_none());
    let position = Position {
        epoch: epoch(1),
        rev: 3,
    };
    let nodes = vec![
        node("app", "app", &["db", "cache"]),
        node("db-2", "db", &[]),
        node("db-1", "db", &[]),
    ];
    core.mirror_snapshot(position, nodes);
    let event = |rev: u64, kind: EventKind, node: Node| Event {
        rev,
        kind,
        node,
        previous: None,
    };
    core.mirror_events(
        &epoch(1),
        vec![
            // db-2 now offers a cache instead; db-3 comes; db-1 goes.
            event(4, EventKind::Changed, node("db-2", "cache", &[])),
            event(5, EventKind::Nodeup, node("db-3", "db", &["db"])),
            event(6, EventKind::Removed, node("db-1", "db", &[])),
        ],
    );
    let all = core.mirrored().unwrap();
    let names = |found: Vec<Node>| {
        found
            .into_iter()
            .map(|n| n.name.clone())
            .collect::<Vec<_>>()
    };
    for resource in ["db", "cache", "app", "nothing"] {
        assert_eq!(
            names(core.mirrored_lookup(resource).unwrap()),
            names(lookup(all.iter().copied(), resource)),
            "{resource}"
        );
    }
    assert_eq!(names(core.mirrored_lookup("db").unwrap()), ["db-3"]);
    for asker in ["app", "db-3"] {
        assert_eq!(
            core.mirrored_requirements(asker).unwrap().unwrap(),
            requirements_of(asker, &all).unwrap(),
            "{asker}"
        );
    }
    assert!(matches!(
        core.mirrored_requirements("db-1"),
        Some(Err(ClientError::Refused { .. }))
    ));
    // This node's own requirements come from its registration, before the watch brings its
    // own entry.
    let own = core.mirrored_requirements("me").unwrap().unwrap();
    assert_eq!(own.node, "me");
    assert_eq!(names(own.offers["db"].clone()), ["db-3"]);
    // While the watch is down, queries go to etcd.
    core.mirror_down();
    assert!(core.mirrored_lookup("db").is_none());
}
