//! The client state machine against scripted beacons, with a fake clock.

use super::*;
use crate::protocol::{decode_request, encode_reply, EventKind, Incoming, NodeView, Status};
use troupe_core::cluster::{ProvidersChanged, WatchId};

const HB: Duration = Duration::from_secs(1);

struct Script {
    core: ClientCore,
    now: Instant,
}

fn settings(cookie: Option<&str>, requires: &[&str]) -> ClientSettings {
    ClientSettings {
        node: "n1".into(),
        registration: Some(Registration {
            resource: "gate".into(),
            requires: requires.iter().map(|s| s.to_string()).collect(),
            ..Registration::default()
        }),
        base_resources: ["gate".to_string()].into(),
        cookie: cookie.and_then(Cookie::new),
        heartbeat: HB,
        liveness: 3,
        request_timeout: Duration::from_secs(2),
    }
}

fn script(settings: ClientSettings, beacons: usize) -> Script {
    let now = Instant::now();
    let endpoints = (0..beacons).map(|i| format!("tcp://b{i}:1")).collect();
    Script {
        core: ClientCore::new(settings, endpoints, now),
        now,
    }
}

/// The requests sent to `link` among `actions`.
fn sent(actions: &[Action], link: LinkId) -> Vec<Incoming> {
    actions
        .iter()
        .filter_map(|a| match a {
            Action::Send { link: l, frame } if *l == link => {
                Some(decode_request(frame, 1 << 20).expect("the client sends valid requests"))
            }
            _ => None,
        })
        .collect()
}

fn only(actions: &[Action], link: LinkId) -> Incoming {
    let mut requests = sent(actions, link);
    assert_eq!(requests.len(), 1, "{actions:?}");
    requests.remove(0)
}

fn welcome(rev: u64) -> Reply {
    Reply::Welcome {
        auth: false,
        proof: None,
        epoch: "e".into(),
        rev,
    }
}

fn registered(rev: u64) -> Reply {
    Reply::Registered {
        node: "n1".into(),
        epoch: "e".into(),
        rev,
    }
}

fn node(name: &str, resource: &str) -> Node {
    Node::new(NodeView {
        name: name.into(),
        resource: resource.into(),
        requires: vec![],
        endpoints: Default::default(),
        offers: Default::default(),
        metadata: Default::default(),
        status: Status::Online,
        heartbeat_ms: 1000,
        last_seen_ms: None,
    })
}

impl Script {
    fn reply(&mut self, link: LinkId, to: &Incoming, reply: Reply) -> Vec<Action> {
        self.push(link, to.id, reply)
    }

    fn push(&mut self, link: LinkId, id: Option<u64>, reply: Reply) -> Vec<Action> {
        self.core
            .received(self.now, link, &encode_reply(id, &reply))
    }

    fn tick(&mut self, by: Duration) -> Vec<Action> {
        self.now += by;
        self.core.tick(self.now)
    }

    /// Takes every link through hello → welcome → register → registered.
    fn connect_all(&mut self) {
        let actions = self.core.start(self.now);
        for link in 0..self.core.links.len() {
            self.core.connected(self.now, link);
            let hello = only(&actions, link);
            let actions = self.reply(link, &hello, welcome(0));
            let register = only(&actions, link);
            assert_eq!(register.request.op(), "register");
            self.reply(link, &register, registered(1));
            assert!(self.core.is_ready(link));
        }
    }
}

#[test]
fn registers_then_heartbeats_every_interval() {
    let mut s = script(settings(None, &[]), 1);
    let actions = s.core.start(s.now);
    let hello = only(&actions, 0);
    let Request::Hello(Hello { node, .. }) = &hello.request else {
        panic!("{hello:?}")
    };
    assert_eq!(node.as_deref(), Some("n1"));
    let register = only(&s.reply(0, &hello, welcome(0)), 0);
    let Request::Register(r) = &register.request else {
        panic!()
    };
    assert_eq!((r.resource.as_str(), r.heartbeat_ms), ("gate", 1000));
    assert!(!s.core.is_ready(0));
    assert!(s.reply(0, &register, registered(1)).is_empty());
    assert!(s.core.is_ready(0));
    assert!(sent(&s.tick(HB / 2), 0).is_empty());
    let beat = only(&s.tick(HB / 2), 0);
    assert_eq!(beat.request.op(), "heartbeat");
    s.reply(
        0,
        &beat,
        Reply::Ack {
            epoch: "e".into(),
            rev: 1,
        },
    );
    assert_eq!(only(&s.tick(HB), 0).request.op(), "heartbeat");
}

#[test]
fn stale_replies_are_ignored() {
    let mut s = script(settings(None, &[]), 1);
    let first = only(&s.core.start(s.now), 0);
    // No answer within an interval: a new hello; the late welcome to the first one is ignored.
    let second = only(&s.tick(HB), 0);
    assert_ne!(first.id, second.id);
    assert!(s.reply(0, &first, welcome(0)).is_empty());
    assert_eq!(
        only(&s.reply(0, &second, welcome(0)), 0).request.op(),
        "register"
    );
}

#[test]
fn mutual_cookie_proof() {
    let mut s = script(settings(Some("k"), &[]), 1);
    let hello = only(&s.core.start(s.now), 0);
    let Request::Hello(Hello {
        nonce: client_nonce,
        ..
    }) = hello.request.clone()
    else {
        panic!()
    };
    let beacon_nonce = "ab".repeat(32);
    let auth = only(
        &s.reply(
            0,
            &hello,
            Reply::Challenge {
                nonce: beacon_nonce.clone(),
            },
        ),
        0,
    );
    let Request::Auth(Auth { proof }) = &auth.request else {
        panic!("{auth:?}")
    };
    let cookie = Cookie::new("k").unwrap();
    assert!(cookie.verify_client(&beacon_nonce, &client_nonce, proof));
    // A beacon that answers without the right proof is refused.
    let fake = Reply::Welcome {
        auth: true,
        proof: Some("00".repeat(32)),
        epoch: "e".into(),
        rev: 0,
    };
    assert!(s.reply(0, &auth, fake).is_empty());
    assert!(matches!(s.core.links[0].phase, Phase::Refused));
    // Refused links try again after liveness intervals; a genuine beacon is accepted.
    assert!(sent(&s.tick(HB), 0).is_empty());
    let hello = only(&s.tick(HB * 2), 0);
    let Request::Hello(Hello {
        nonce: client_nonce,
        ..
    }) = hello.request.clone()
    else {
        panic!()
    };
    let auth = only(
        &s.reply(
            0,
            &hello,
            Reply::Challenge {
                nonce: beacon_nonce.clone(),
            },
        ),
        0,
    );
    let genuine = Reply::Welcome {
        auth: true,
        proof: Some(cookie.server_proof(&client_nonce, &beacon_nonce)),
        epoch: "e".into(),
        rev: 0,
    };
    assert_eq!(
        only(&s.reply(0, &auth, genuine), 0).request.op(),
        "register"
    );
}

#[test]
fn a_cookie_mismatch_is_refused_both_ways() {
    // The beacon has no cookie but the node has one.
    let mut s = script(settings(Some("k"), &[]), 1);
    let hello = only(&s.core.start(s.now), 0);
    assert!(s.reply(0, &hello, welcome(0)).is_empty());
    assert!(matches!(s.core.links[0].phase, Phase::Refused));
    // The node has no cookie but the beacon has one.
    let mut s = script(settings(None, &[]), 1);
    let hello = only(&s.core.start(s.now), 0);
    assert!(s
        .reply(
            0,
            &hello,
            Reply::Challenge {
                nonce: "00".repeat(32)
            }
        )
        .is_empty());
    assert!(matches!(s.core.links[0].phase, Phase::Refused));
    // The beacon refuses the proof.
    let mut s = script(settings(Some("k"), &[]), 1);
    let hello = only(&s.core.start(s.now), 0);
    let auth = only(
        &s.reply(
            0,
            &hello,
            Reply::Challenge {
                nonce: "00".repeat(32),
            },
        ),
        0,
    );
    s.reply(
        0,
        &auth,
        Reply::error(ErrorCode::AuthFailed, "wrong cookie"),
    );
    assert!(matches!(s.core.links[0].phase, Phase::Refused));
}

#[test]
fn a_beacon_that_forgot_the_node_gets_it_back_at_once() {
    let mut s = script(settings(None, &[]), 1);
    s.connect_all();
    let beat = only(&s.tick(HB), 0);
    // The beacon restarted: it does not know the node.
    let again = only(
        &s.reply(0, &beat, Reply::error(ErrorCode::UnknownNode, "?")),
        0,
    );
    assert_eq!(again.request.op(), "register");
    s.reply(0, &again, registered(1));
    assert!(s.core.is_ready(0));
    // A restarted beacon with a cookie has lost the session: authenticate again.
    let beat = only(&s.tick(HB), 0);
    let hello = only(
        &s.reply(0, &beat, Reply::error(ErrorCode::AuthRequired, "?")),
        0,
    );
    assert_eq!(hello.request.op(), "hello");
}

#[test]
fn a_silent_beacon_is_reconnected_and_its_queries_move() {
    let mut s = script(settings(None, &[]), 2);
    s.connect_all();
    // Link 0 is the one heard from last, so it gets the query.
    let beat = only(&s.tick(HB), 0);
    s.reply(
        0,
        &beat,
        Reply::Ack {
            epoch: "e".into(),
            rev: 1,
        },
    );
    let actions = s.core.query(s.now, 7, Query::Lookup("db".into()));
    assert_eq!(only(&actions, 0).request.op(), "lookup");
    assert!(sent(&actions, 1).is_empty());
    // Beacon 0 dies. Beacon 1 keeps answering its heartbeats.
    let mut reset = false;
    let mut moved = None;
    for _ in 0..30 {
        let actions = s.tick(HB / 10);
        for request in sent(&actions, 1) {
            match &request.request {
                Request::Heartbeat(_) => {
                    s.reply(
                        1,
                        &request,
                        Reply::Ack {
                            epoch: "e".into(),
                            rev: 1,
                        },
                    );
                }
                Request::Lookup(_) => moved = Some(request),
                _ => {}
            }
        }
        reset |= actions.contains(&Action::Reset { link: 0 });
        if moved.is_some() {
            break;
        }
    }
    // The query moved to beacon 1 after request_timeout (2 s), before the reset (3 s).
    let moved = moved.expect("query retried on beacon 1");
    assert!(!reset);
    let actions = s.reply(
        1,
        &moved,
        Reply::Nodes {
            nodes: vec![node("d", "db")],
            rev: 1,
        },
    );
    assert_eq!(
        actions,
        [Action::Answer {
            token: 7,
            result: Ok(Answer::Nodes(vec![node("d", "db")]))
        }]
    );
    // After liveness intervals of silence beacon 0's connection is rebuilt, with a new hello.
    let mut actions = Vec::new();
    for _ in 0..20 {
        actions = s.tick(HB / 10);
        if actions.contains(&Action::Reset { link: 0 }) {
            break;
        }
    }
    let at = actions
        .iter()
        .position(|a| *a == Action::Reset { link: 0 })
        .expect("reset");
    assert_eq!(only(&actions[at..], 0).request.op(), "hello");
}

#[test]
fn a_query_fails_only_after_every_beacon_was_tried() {
    let mut s = script(settings(None, &[]), 2);
    s.connect_all();
    let actions = s.core.query(s.now, 1, Query::List);
    assert_eq!(sent(&actions, 0).len() + sent(&actions, 1).len(), 1);
    let actions = s.tick(Duration::from_secs(2));
    assert_eq!(
        sent(&actions, 0)
            .iter()
            .chain(&sent(&actions, 1))
            .filter(|r| r.request.op() == "list")
            .count(),
        1
    );
    let actions = s.tick(Duration::from_secs(2));
    let answer = actions.iter().find_map(|a| match a {
        Action::Answer { token: 1, result } => Some(result.clone()),
        _ => None,
    });
    assert_eq!(
        answer,
        Some(Err(ClientError::Timeout(Duration::from_secs(2))))
    );
    // With no ready beacon at all, a query fails after request_timeout.
    let mut s = script(settings(None, &[]), 1);
    s.core.start(s.now);
    assert!(sent(&s.core.query(s.now, 2, Query::List), 0).is_empty());
    let actions = s.tick(Duration::from_secs(2));
    assert!(actions.contains(&Action::Answer {
        token: 2,
        result: Err(ClientError::NoBeacon(Duration::from_secs(2)))
    }));
}

#[test]
fn beacon_errors_are_answers() {
    let mut s = script(settings(None, &[]), 1);
    s.connect_all();
    let q = only(&s.core.query(s.now, 3, Query::Requirements("x".into())), 0);
    let actions = s.reply(
        0,
        &q,
        Reply::error(ErrorCode::UnknownNode, "not registered"),
    );
    assert_eq!(
        actions,
        [Action::Answer {
            token: 3,
            result: Err(ClientError::Refused {
                code: ErrorCode::UnknownNode,
                message: "not registered".into()
            })
        }]
    );
}

#[test]
fn await_requirements_wakes_when_a_provider_appears_or_times_out() {
    // Registration triggers a requirements check.
    let mut s = script(settings(None, &["db"]), 1);
    let hello = only(&s.core.start(s.now), 0);
    let register = only(&s.reply(0, &hello, welcome(0)), 0);
    let check = only(&s.reply(0, &register, registered(1)), 0);
    assert_eq!(check.request.op(), "get_requirements");
    let unmet = Reply::Requirements {
        node: "n1".into(),
        offers: [("db".to_string(), vec![])].into(),
        unmet: vec!["db".into()],
        rev: 1,
    };
    assert!(s.reply(0, &check, unmet.clone()).is_empty());

    let long = s
        .core
        .await_requirements(s.now, 10, Duration::from_secs(30));
    let check = only(&long, 0);
    s.reply(0, &check, unmet.clone());
    let short = s.core.await_requirements(s.now, 11, Duration::from_secs(1));
    let check = only(&short, 0);
    s.reply(0, &check, unmet);
    // One interval later the short one times out, naming what is missing; the heartbeat goes.
    let actions = s.tick(HB);
    assert!(actions.contains(&Action::Awaited {
        token: 11,
        result: Err(ClientError::Unmet(vec!["db".into()]))
    }));
    let beat = only(&actions, 0);
    // The heartbeat's ack shows a new revision: the client checks again and the long waiter wakes.
    let actions = s.reply(
        0,
        &beat,
        Reply::Ack {
            epoch: "e".into(),
            rev: 2,
        },
    );
    let check = only(&actions, 0);
    let met = Reply::Requirements {
        node: "n1".into(),
        offers: [("db".to_string(), vec![node("d", "db")])].into(),
        unmet: vec![],
        rev: 2,
    };
    let actions = s.reply(0, &check, met);
    assert!(
        matches!(&actions[..], [Action::Awaited { token: 10, result: Ok(r) }] if r.unmet.is_empty())
    );
}

#[test]
fn await_requirements_times_out_with_the_unmet_list() {
    let mut s = script(settings(None, &["db", "cache"]), 1);
    s.core.start(s.now);
    let actions = s
        .core
        .await_requirements(s.now, 4, Duration::from_millis(500));
    assert!(sent(&actions, 0).is_empty());
    let actions = s.tick(Duration::from_millis(500));
    assert!(actions.contains(&Action::Awaited {
        token: 4,
        result: Err(ClientError::Unmet(vec!["db".into(), "cache".into()]))
    }));
}

#[test]
fn subscriptions_deliver_in_order_and_resume_elsewhere() {
    let mut s = script(settings(None, &[]), 2);
    s.connect_all();
    let sub = SubscriptionId(1);
    let actions = s
        .core
        .subscribe(s.now, sub, vec!["db".into()], None)
        .unwrap();
    let (link, watch) = match (sent(&actions, 0).pop(), sent(&actions, 1).pop()) {
        (Some(w), None) => (0, w),
        (None, Some(w)) => (1, w),
        other => panic!("{other:?}"),
    };
    let other = 1 - link;
    let Request::Watch(w) = &watch.request else {
        panic!()
    };
    assert_eq!(
        (w.resources.as_slice(), &w.since),
        (&["db".to_string()][..], &None)
    );
    let actions = s.reply(
        link,
        &watch,
        Reply::Snapshot {
            watch: w.watch.clone(),
            epoch: "e".into(),
            rev: 5,
            nodes: vec![node("d1", "db")],
        },
    );
    assert!(
        matches!(&actions[..], [Action::Deliver { event: ClusterEvent::Snapshot { nodes, .. }, .. }] if nodes.len() == 1)
    );
    let event = |rev, kind| Reply::Event {
        watch: w.watch.clone(),
        epoch: "e".into(),
        event: crate::protocol::Event {
            rev,
            kind,
            node: node("d1", "db"),
            previous: None,
        },
    };
    assert_eq!(s.push(link, None, event(6, EventKind::Nodedown)).len(), 1);
    // A duplicate (an event already covered) is dropped.
    assert!(s.push(link, None, event(6, EventKind::Nodedown)).is_empty());
    // The watch's beacon goes silent; the watch moves to the other beacon, resuming after 6.
    let mut moved = None;
    for _ in 0..40 {
        let actions = s.tick(HB / 10);
        for request in sent(&actions, other) {
            match &request.request {
                Request::Heartbeat(_) => {
                    s.reply(
                        other,
                        &request,
                        Reply::Ack {
                            epoch: "f".into(),
                            rev: 1,
                        },
                    );
                }
                Request::Watch(w) => moved = Some(w.clone()),
                _ => {}
            }
        }
        if moved.is_some() {
            break;
        }
    }
    let moved = moved.expect("the watch moved");
    assert_eq!(
        moved.since,
        Some(Position {
            epoch: "e".into(),
            rev: 6
        })
    );
}

fn endpoints(entries: &[(&str, &str)]) -> Endpoints {
    entries
        .iter()
        .map(|(n, a)| (n.to_string(), a.to_string()))
        .collect()
}

/// The register request among `actions` sent to `link`.
fn register_sent(actions: &[Action], link: LinkId) -> Register {
    match only(actions, link).request {
        Request::Register(r) => r,
        other => panic!("{other:?}"),
    }
}

#[test]
fn resources_are_offered_and_withdrawn_at_run_time() {
    let mut s = script(settings(None, &[]), 2);
    s.connect_all();
    let add = endpoints(&[("frontend", "tcp://h:1")]);
    let actions = s.core.offer(s.now, "broker", add.clone()).unwrap();
    for link in 0..2 {
        let r = register_sent(&actions, link);
        assert_eq!((r.resource.as_str(), r.endpoints.len()), ("gate", 0));
        assert_eq!(r.offers["broker"], add);
        assert!(r.offers["gate"].is_empty());
    }
    // Unchanged: nothing sent.
    assert!(s.core.offer(s.now, "broker", add).unwrap().is_empty());
    // The primary resource's endpoints go in `endpoints` too.
    let actions = s
        .core
        .offer(s.now, "gate", endpoints(&[("api", "tcp://g:1")]))
        .unwrap();
    let r = register_sent(&actions, 0);
    assert_eq!(r.endpoints["api"], "tcp://g:1");
    assert_eq!(r.offers["gate"], r.endpoints);
    // Bad names and addresses are refused, named.
    let bad = endpoints(&[("x", "has space")]);
    assert!(
        matches!(s.core.offer(s.now, "broker", bad), Err(ClientError::Invalid(m)) if m.contains("offers.broker.x"))
    );
    assert!(
        matches!(s.core.offer(s.now, "bro ker", Endpoints::new()), Err(ClientError::Invalid(m)) if m.contains("\"bro ker\""))
    );
    // Withdrawing endpoints by name, then a run-time resource entirely.
    let actions = s
        .core
        .withdraw(s.now, "broker", &["frontend".into()])
        .unwrap();
    let r = register_sent(&actions, 1);
    assert!(r.offers["broker"].is_empty());
    let actions = s.core.withdraw(s.now, "broker", &[]).unwrap();
    let r = register_sent(&actions, 0);
    assert!(!r.offers.contains_key("broker"));
    // Only the primary resource is left: no `offers` on the wire (an older beacon takes it).
    assert!(r.offers.is_empty());
    assert_eq!(r.endpoints["api"], "tcp://g:1");
    // A base resource stays offered, with no endpoints.
    let actions = s.core.withdraw(s.now, "gate", &[]).unwrap();
    let r = register_sent(&actions, 0);
    assert_eq!(r.resource, "gate");
    assert!(r.endpoints.is_empty());
    assert!(s.core.withdraw(s.now, "nothing", &[]).unwrap().is_empty());
    let status = s.core.status(s.now);
    assert_eq!(status.offers.keys().collect::<Vec<_>>(), ["gate"]);
    // An asking-only client has nothing to offer.
    let mut asking = script(
        ClientSettings {
            registration: None,
            ..settings(None, &[])
        },
        1,
    );
    assert_eq!(
        asking.core.offer(asking.now, "x", Endpoints::new()),
        Err(ClientError::NotRegistering)
    );
}

#[test]
fn a_beacon_that_does_not_know_offers_is_sent_the_primary_resource() {
    let mut s = script(settings(None, &[]), 1);
    s.connect_all();
    let actions = s
        .core
        .offer(s.now, "broker", endpoints(&[("frontend", "tcp://h:1")]))
        .unwrap();
    let register = only(&actions, 0);
    let actions = s.reply(
        0,
        &register,
        Reply::error(
            ErrorCode::BadRequest,
            "register: unknown field `offers`, expected one of `node`, `resource`",
        ),
    );
    let again = only(&actions, 0);
    let Request::Register(r) = &again.request else {
        panic!("{again:?}")
    };
    assert!(r.offers.is_empty());
    assert_eq!(r.resource, "gate");
    s.reply(0, &again, registered(2));
    assert!(s.core.is_ready(0));
}

fn snapshot(watch: &str, rev: u64, nodes: Vec<Node>) -> Reply {
    Reply::Snapshot {
        watch: watch.into(),
        epoch: "e".into(),
        rev,
        nodes,
    }
}

fn providers(actions: &[Action]) -> Vec<(WatchId, ProvidersChanged)> {
    actions
        .iter()
        .filter_map(|a| match a {
            Action::Providers { watch, changed } => Some((*watch, changed.clone())),
            _ => None,
        })
        .collect()
}

fn names_of(changed: &ProvidersChanged, resource: &str) -> Vec<String> {
    changed.providers[resource]
        .iter()
        .map(|p| p.node.clone())
        .collect()
}

#[test]
fn provider_watches_share_one_subscription_and_follow_reachability() {
    let mut s = script(settings(None, &[]), 1);
    s.connect_all();
    let actions = s
        .core
        .watch_providers(s.now, WatchId(1), vec!["db".into()])
        .unwrap();
    assert!(providers(&actions).is_empty(), "nothing known yet");
    let watch = only(&actions, 0);
    let Request::Watch(w) = &watch.request else {
        panic!("{watch:?}")
    };
    assert_eq!(w.resources, ["db"]);
    let actions = s.reply(0, &watch, snapshot(&w.watch, 3, vec![node("d1", "db")]));
    let told = providers(&actions);
    assert_eq!(told.len(), 1);
    assert!(told[0].1.reachable);
    assert_eq!(names_of(&told[0].1, "db"), ["d1"]);

    // A second watch of other resources changes the subscription's filter (same watch name:
    // the beacon replaces it); the first watch hears nothing new.
    let actions = s
        .core
        .watch_providers(s.now, WatchId(2), vec!["cache".into(), "gate".into()])
        .unwrap();
    let rewatch = only(&actions, 0);
    let Request::Watch(w2) = &rewatch.request else {
        panic!("{rewatch:?}")
    };
    assert_eq!(
        (w2.watch.as_str(), w2.since.as_ref()),
        (w.watch.as_str(), None)
    );
    assert_eq!(w2.resources, ["cache", "db", "gate"]);
    // A late answer to the replaced watch request is ignored.
    assert!(providers(&s.reply(0, &watch, snapshot(&w.watch, 3, vec![]))).is_empty());
    let actions = s.reply(0, &rewatch, snapshot(&w.watch, 4, vec![node("d1", "db")]));
    let told = providers(&actions);
    assert_eq!(told.len(), 1);
    assert_eq!(told[0].0, WatchId(2));
    // This node offers `gate`: it is its own provider.
    assert_eq!(names_of(&told[0].1, "gate"), ["n1"]);
    assert!(told[0].1.providers["cache"].is_empty());

    // Events update the picture.
    let event = Reply::Event {
        watch: w.watch.clone(),
        epoch: "e".into(),
        event: crate::protocol::Event {
            rev: 5,
            kind: EventKind::Nodeup,
            node: node("c1", "cache"),
            previous: None,
        },
    };
    let told = providers(&s.push(0, None, event));
    assert_eq!(told.len(), 1);
    assert_eq!(names_of(&told[0].1, "cache"), ["c1"]);

    // The beacon goes silent: after liveness intervals, every watch is told it is unreachable.
    let mut unreachable = Vec::new();
    for _ in 0..40 {
        unreachable.extend(providers(&s.tick(HB / 10)));
        if !unreachable.is_empty() {
            break;
        }
    }
    assert_eq!(unreachable.len(), 2, "{unreachable:?}");
    assert!(unreachable.iter().all(|(_, c)| !c.reachable));
    assert!(unreachable[1].1.providers["gate"].is_empty());
    // It answers again: the session, the registration, then the watch resumes; the picture
    // comes back with it.
    let actions = s.tick(HB / 10);
    let hello = sent(&actions, 0)
        .into_iter()
        .find(|r| r.request.op() == "hello");
    let hello = match hello {
        Some(hello) => hello,
        None => only(&s.tick(HB), 0),
    };
    let register = only(&s.reply(0, &hello, welcome(5)), 0);
    let actions = s.reply(0, &register, registered(6));
    assert!(providers(&actions).is_empty());
    let resume = only(&actions, 0);
    let Request::Watch(w3) = &resume.request else {
        panic!("{resume:?}")
    };
    assert_eq!(w3.since.as_ref().map(|p| p.rev), Some(5));
    let resumed = Reply::Resumed {
        watch: w.watch.clone(),
        epoch: "e".into(),
        rev: 6,
        events: vec![],
    };
    let told = providers(&s.reply(0, &resume, resumed));
    assert_eq!(told.len(), 2);
    assert!(told.iter().all(|(_, c)| c.reachable));
    assert_eq!(names_of(&told[0].1, "db"), ["d1"]);

    // The last watch gone, the subscription ends.
    assert!(sent(&s.core.unwatch_providers(s.now, WatchId(1)), 0)
        .iter()
        .all(|r| r.request.op() == "watch"));
    let actions = s.core.unwatch_providers(s.now, WatchId(2));
    assert_eq!(only(&actions, 0).request.op(), "unwatch");
    assert_eq!(s.core.status(s.now).provider_watches, 0);
}

#[test]
fn an_asking_only_client_follows_providers_too() {
    let mut s = script(
        ClientSettings {
            registration: None,
            ..settings(None, &[])
        },
        1,
    );
    let hello = only(&s.core.start(s.now), 0);
    s.reply(0, &hello, welcome(0));
    let actions = s
        .core
        .watch_providers(s.now, WatchId(1), vec!["gate".into()])
        .unwrap();
    let watch = only(&actions, 0);
    let Request::Watch(w) = &watch.request else {
        panic!()
    };
    let told = providers(&s.reply(0, &watch, snapshot(&w.watch, 1, vec![node("n1", "gate")])));
    assert_eq!(names_of(&told[0].1, "gate"), ["n1"]);
    assert!(s.core.watch_providers(s.now, WatchId(2), vec![]).is_err());
}

#[test]
fn leaving_deregisters_from_every_beacon() {
    let mut s = script(settings(None, &[]), 2);
    s.connect_all();
    let actions = s.core.leave(s.now + Duration::from_secs(1));
    let d0 = only(&actions, 0);
    let d1 = only(&actions, 1);
    assert_eq!(d0.request.op(), "deregister");
    assert!(s
        .reply(0, &d0, Reply::Deregistered { node: "n1".into() })
        .is_empty());
    assert_eq!(
        s.reply(1, &d1, Reply::Deregistered { node: "n1".into() }),
        [Action::Left]
    );
    // A beacon that does not answer does not hold the node up beyond the deadline.
    let mut s = script(settings(None, &[]), 1);
    s.connect_all();
    s.core.leave(s.now + Duration::from_secs(1));
    assert!(s.tick(Duration::from_secs(1)).contains(&Action::Left));
}

#[test]
fn a_dropped_connection_moves_queries_at_once_and_reopens_the_session() {
    let mut s = script(settings(None, &[]), 2);
    s.connect_all();
    let beat = only(&s.tick(HB), 0);
    s.reply(
        0,
        &beat,
        Reply::Ack {
            epoch: "e".into(),
            rev: 1,
        },
    );
    assert_eq!(
        only(&s.core.query(s.now, 5, Query::List), 0).request.op(),
        "list"
    );
    // Beacon 0 is killed: its connection drops and the query goes to beacon 1 without waiting.
    let actions = s.core.disconnected(s.now, 0);
    assert_eq!(only(&actions, 1).request.op(), "list");
    // Nothing is sent to a disconnected beacon when leaving.
    let leave = s.core.leave(s.now + HB);
    assert!(sent(&leave, 0).is_empty());
    assert_eq!(only(&leave, 1).request.op(), "deregister");
    // When it is back (restarted, or the same process), the session is opened again at once.
    let actions = s.core.connected(s.now, 0);
    assert_eq!(only(&actions, 0).request.op(), "hello");
}

#[test]
fn a_refused_watch_is_asked_again_later() {
    let mut s = script(settings(None, &[]), 1);
    s.connect_all();
    let actions = s
        .core
        .subscribe(s.now, SubscriptionId(3), vec![], None)
        .unwrap();
    let watch = only(&actions, 0);
    assert!(s
        .reply(
            0,
            &watch,
            Reply::error(ErrorCode::Limit, "too many listed nodes")
        )
        .is_empty());
    // Not at once; after an interval, with the heartbeat.
    assert!(sent(&s.tick(HB / 2), 0).is_empty());
    let actions = s.tick(HB / 2);
    let ops: Vec<&str> = sent(&actions, 0).iter().map(|r| r.request.op()).collect();
    assert_eq!(ops, ["heartbeat", "watch"]);
}

#[test]
fn status_shows_the_registration_and_each_beacon_as_it_stands() {
    let mut s = script(settings(None, &["broker"]), 2);
    let before = s.core.status(s.now);
    assert_eq!(before.node, "n1");
    assert_eq!(before.registration.as_ref().unwrap().resource, "gate");
    assert!(before
        .beacons
        .iter()
        .all(|b| b.state == "down" && b.last_heard_ms_ago.is_none()));
    assert_eq!(before.requirements, "unknown");
    s.connect_all();
    s.now += Duration::from_millis(300);
    let after = s.core.status(s.now);
    assert_eq!(after.beacons.len(), 2);
    for beacon in &after.beacons {
        assert_eq!(beacon.state, "up", "{beacon:?}");
        assert!(beacon.connected);
        assert_eq!(beacon.last_heard_ms_ago, Some(300));
    }
    assert_eq!(after.beacons[1].endpoint, "tcp://b1:1");
}
