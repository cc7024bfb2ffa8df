//! The hub's logic driven directly: frames in, frames and effects out, a fake clock.

use std::collections::HashMap;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use bytes::Bytes;
use troupe_core::services::ChannelError;

use super::*;
use crate::wire::frame::{Damage, Found};
use crate::wire::{envelope, Envelope, ErrorCode, Kind};

/// A frame as a client sees it.
#[derive(Debug, Clone, PartialEq)]
struct Out {
    sender: u32,
    kind: Kind,
    pid: u32,
    corr: u64,
    arg: u32,
    name: String,
    body: Vec<u8>,
}

impl Out {
    fn code(&self) -> ErrorCode {
        assert_eq!(self.kind, Kind::Error, "{self:?}");
        ErrorCode::from_u32(self.arg)
    }
    fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
}

struct Bench {
    hub: Hub,
    now: Instant,
    /// Frames written to each connection so far, not yet looked at.
    got: HashMap<ConnId, Vec<Out>>,
    effects: Vec<Effect>,
    /// Connections whose writer does not write (a client that does not read).
    blocked: Vec<ConnId>,
    /// The batch each blocked writer holds.
    stuck: HashMap<ConnId, Bytes>,
}

fn limits() -> Limits {
    Limits {
        max_frame_bytes: 1 << 20,
        max_connections: 8,
        max_connections_per_uid: 6,
        register_timeout: Duration::from_secs(5),
        max_partial_bytes: 3 << 20,
        mailbox_ttl: Duration::from_secs(10),
        mailbox_max_messages: 3,
        mailbox_max_bytes: 4096,
        mailbox_total_bytes: 8192,
        request_timeout: Duration::from_secs(5),
        max_pending_requests: 4,
        outbox_high_water: 1000,
        stall_timeout: Duration::from_secs(10),
        attach_timeout: Duration::from_secs(5),
        max_damage_bytes: 1 << 20,
        close_grace: Duration::from_secs(1),
    }
}

fn env(kind: Kind) -> Envelope<'static> {
    Envelope::new(kind)
}

impl Bench {
    fn new() -> Bench {
        Bench {
            hub: Hub::new(limits()),
            now: Instant::now(),
            got: HashMap::new(),
            effects: Vec::new(),
            blocked: Vec::new(),
            stuck: HashMap::new(),
        }
    }

    fn advance(&mut self, by: Duration) {
        self.now += by;
        self.hub.tick(self.now);
        self.pump();
    }

    /// Connects `conn` as process `pid` and registers it, optionally with a name.
    fn client(&mut self, conn: ConnId, pid: u32, name: &str) {
        self.hub.connect(conn, Peer { pid, uid: 1000 }, self.now);
        self.input(
            conn,
            pid,
            Envelope {
                pid,
                corr: 1,
                name,
                ..env(Kind::Register)
            },
        );
        let mut got = self.take(conn);
        assert_eq!(got.first().map(|o| o.kind), Some(Kind::Ok), "{got:?}");
        assert_eq!(got[0].arg, 1 << 20, "the Ok says max_frame_bytes");
        got.remove(0);
        if !got.is_empty() {
            self.got.insert(conn, got);
        }
    }

    fn input(&mut self, conn: ConnId, pid: u32, envelope: Envelope<'_>) -> Flow {
        let bytes = envelope.to_frame(pid);
        let found = [(
            0,
            Found::Frame {
                pid,
                length: bytes.len(),
            },
        )];
        let flow = self
            .hub
            .receive(conn, &bytes, &found, Damage::default(), self.now);
        self.pump();
        flow
    }

    /// Feeds several frames from `conn` as one read, as a reader hands them over.
    fn input_many(&mut self, conn: ConnId, pid: u32, envelopes: &[Envelope<'_>]) -> Flow {
        let mut bytes = Vec::new();
        let mut found = Vec::new();
        for envelope in envelopes {
            let frame = envelope.to_frame(pid);
            found.push((
                bytes.len(),
                Found::Frame {
                    pid,
                    length: frame.len(),
                },
            ));
            bytes.extend_from_slice(&frame);
        }
        let flow = self
            .hub
            .receive(conn, &bytes, &found, Damage::default(), self.now);
        self.pump();
        flow
    }

    /// Writes everything the hub hands to writers, except to blocked connections.
    fn pump(&mut self) {
        loop {
            let writes = self.hub.take_writes();
            let mut progressed = false;
            for (conn, batch) in writes {
                if self.blocked.contains(&conn) {
                    self.stuck.insert(conn, batch);
                    continue;
                }
                self.deliver(conn, batch);
                progressed = true;
            }
            self.effects.extend(self.hub.take_effects());
            if !progressed {
                break;
            }
        }
    }

    fn deliver(&mut self, conn: ConnId, batch: Bytes) {
        let mut rest = &batch[..];
        while !rest.is_empty() {
            let length = u32::from_le_bytes(rest[0..4].try_into().unwrap()) as usize;
            let (bytes, tail) = rest.split_at(length);
            rest = tail;
            let e = Envelope::parse(&bytes[12..]).unwrap();
            self.got.entry(conn).or_default().push(Out {
                sender: u32::from_le_bytes(bytes[4..8].try_into().unwrap()),
                kind: e.kind,
                pid: e.pid,
                corr: e.corr,
                arg: e.arg,
                name: e.name.to_string(),
                body: e.body.to_vec(),
            });
        }
        self.hub.written(conn, batch.len(), self.now);
    }

    /// The client of `conn` reads again.
    fn unblock(&mut self, conn: ConnId) {
        self.blocked.retain(|c| *c != conn);
        if let Some(batch) = self.stuck.remove(&conn) {
            self.deliver(conn, batch);
        }
        self.pump();
    }

    /// The writer of blocked `conn` fails: the peer has gone.
    fn writer_failed(&mut self, conn: ConnId) {
        self.stuck.remove(&conn);
        self.hub.written(conn, 0, self.now);
        self.hub.hangup(conn, self.now);
        self.pump();
    }

    fn take(&mut self, conn: ConnId) -> Vec<Out> {
        self.got.remove(&conn).unwrap_or_default()
    }

    /// The bodies of what `conn` was sent, in order.
    fn bodies(&mut self, conn: ConnId) -> Vec<Vec<u8>> {
        self.take(conn).into_iter().map(|o| o.body).collect()
    }

    fn take_effects(&mut self) -> Vec<Effect> {
        std::mem::take(&mut self.effects)
    }

    fn send(
        &mut self,
        conn: ConnId,
        pid: u32,
        to_name: &str,
        to_pid: u32,
        body: &[u8],
        corr: u64,
    ) -> Flow {
        self.input(
            conn,
            pid,
            Envelope {
                pid: to_pid,
                corr,
                name: to_name,
                body,
                ..env(Kind::Send)
            },
        )
    }
}

#[test]
fn messages_by_pid_and_by_name_arrive_in_order_byte_for_byte() {
    let mut b = Bench::new();
    b.client(1, 100, "alice");
    b.client(2, 200, "bob");
    b.send(1, 100, "bob", 0, b"one", 11);
    b.send(1, 100, "", 200, b"two", 12);
    b.send(1, 100, "bob", 0, b"three", 13);
    let got = b.take(2);
    let bodies: Vec<&[u8]> = got.iter().map(|o| o.body.as_slice()).collect();
    assert_eq!(bodies, vec![&b"one"[..], b"two", b"three"]);
    assert!(got.iter().all(|o| o.sender == 100 && o.kind == Kind::Send));
    assert_eq!(got[0].name, "bob");
    assert_eq!(got[1].pid, 200);
    assert!(b.take(1).is_empty(), "no acknowledgement for a send");
}

#[test]
fn registering_another_pid_is_refused_and_the_connection_closed() {
    let mut b = Bench::new();
    b.hub.connect(1, Peer { pid: 100, uid: 0 }, b.now);
    b.input(
        1,
        100,
        Envelope {
            pid: 999,
            corr: 5,
            ..env(Kind::Register)
        },
    );
    let got = b.take(1);
    assert_eq!(got[0].code(), ErrorCode::PidMismatch);
    assert_eq!(got[0].corr, 5);
    assert!(
        got[0].text().contains("pid 999 is not yours"),
        "{}",
        got[0].text()
    );
    let effects = b.take_effects();
    assert!(effects.contains(&Effect::StopReading { conn: 1 }));
    assert!(effects.contains(&Effect::Finish { conn: 1 }));
    assert_eq!(b.hub.stats().spoofing_refused, 1);
}

#[test]
fn a_frame_carrying_another_pid_closes_the_connection() {
    let mut b = Bench::new();
    b.client(1, 100, "");
    let spoofed = Envelope {
        pid: 100,
        ..env(Kind::Send)
    }
    .to_frame(555);
    let found = [(
        0,
        Found::Foreign {
            pid: 555,
            length: spoofed.len(),
        },
    )];
    b.hub.receive(1, &spoofed, &found, Damage::default(), b.now);
    b.pump();
    assert_eq!(b.take(1)[0].code(), ErrorCode::PidMismatch);
    assert!(b.take_effects().contains(&Effect::Finish { conn: 1 }));
}

#[test]
fn names_are_unique_and_registration_comes_first() {
    let mut b = Bench::new();
    b.client(1, 100, "svc");
    b.hub.connect(2, Peer { pid: 200, uid: 0 }, b.now);
    b.send(2, 200, "svc", 0, b"x", 3);
    assert_eq!(b.take(2)[0].code(), ErrorCode::NotRegistered);
    b.input(
        2,
        200,
        Envelope {
            pid: 200,
            corr: 4,
            name: "svc",
            ..env(Kind::Register)
        },
    );
    assert_eq!(b.take(2)[0].code(), ErrorCode::NameTaken);
    // The name is free again once its holder has gone.
    b.hub.hangup(1, b.now);
    b.pump();
    b.input(
        2,
        200,
        Envelope {
            pid: 200,
            corr: 6,
            name: "svc",
            ..env(Kind::Register)
        },
    );
    assert_eq!(b.take(2)[0].kind, Kind::Ok);
}

#[test]
fn held_messages_reach_a_late_receiver_in_order() {
    let mut b = Bench::new();
    b.client(1, 100, "");
    b.send(1, 100, "late", 0, b"a", 1);
    b.send(1, 100, "", 300, b"b", 2);
    b.send(1, 100, "late", 0, b"c", 3);
    assert_eq!(b.hub.stats().mailbox_messages, 3);
    b.advance(Duration::from_secs(9));
    b.client(3, 300, "late");
    let bodies = b.bodies(3);
    assert_eq!(bodies, vec![b"a".to_vec(), b"b".to_vec(), b"c".to_vec()]);
    b.advance(Duration::from_secs(5));
    assert!(b.take(1).is_empty(), "nothing expired: all were delivered");
}

#[test]
fn an_expired_message_is_reported_to_its_sender() {
    let mut b = Bench::new();
    b.client(1, 100, "");
    b.send(1, 100, "absent", 0, b"a", 7);
    b.advance(Duration::from_millis(9_999));
    assert!(b.take(1).is_empty());
    assert_eq!(
        b.hub.next_deadline(),
        Some(b.now + Duration::from_millis(1))
    );
    b.advance(Duration::from_millis(1));
    let got = b.take(1);
    assert_eq!(got.len(), 1);
    assert_eq!(got[0].code(), ErrorCode::Expired);
    assert_eq!(got[0].corr, 7);
    assert_eq!(got[0].name, "absent");
    assert!(got[0].text().contains("mailbox_ttl"), "{}", got[0].text());
    assert_eq!(b.hub.stats().expired, 1);
    assert_eq!(b.hub.stats().mailbox_messages, 0);
}

#[test]
fn the_view_lists_connections_and_mailboxes_within_its_limit() {
    let mut b = Bench::new();
    b.client(1, 100, "alice");
    b.client(2, 200, "");
    b.send(1, 100, "absent", 0, b"held", 1);
    b.send(1, 100, "gone", 0, b"held too", 2);
    let view = b.hub.view(10);
    assert_eq!(view.connections.len(), 2);
    assert_eq!(view.connections[0].pid, 100);
    assert_eq!(view.connections[0].name.as_deref(), Some("alice"));
    assert!(view.connections[0].registered);
    assert_eq!(view.connections[1].name, None);
    assert_eq!(view.mailbox_count, 2);
    assert_eq!(view.mailboxes[0].receiver, "name \"gone\"", "largest first");
    assert_eq!(view.mailboxes[0].messages, 1);
    assert_eq!(view.stats.mailbox_messages, 2);
    let cut = b.hub.view(1);
    assert_eq!(
        (
            cut.connections.len(),
            cut.mailboxes.len(),
            cut.mailbox_count
        ),
        (1, 1, 2)
    );
}

#[test]
fn a_full_mailbox_refuses_with_an_error_naming_the_cap() {
    let mut b = Bench::new();
    b.client(1, 100, "");
    for corr in 1..=4 {
        b.send(1, 100, "absent", 0, b"m", corr);
    }
    let got = b.take(1);
    assert_eq!(got.len(), 1);
    assert_eq!(got[0].code(), ErrorCode::MailboxFull);
    assert_eq!(got[0].corr, 4);
    assert!(
        got[0].text().contains("mailbox_max_messages"),
        "{}",
        got[0].text()
    );
    b.send(1, 100, "other", 0, &[0; 5000], 5);
    let got = b.take(1);
    assert_eq!(got[0].code(), ErrorCode::MailboxFull);
    assert!(
        got[0].text().contains("mailbox_max_bytes"),
        "{}",
        got[0].text()
    );
}

#[test]
fn request_and_reply_with_checks_on_who_answers() {
    let mut b = Bench::new();
    b.client(1, 100, "asker");
    b.client(2, 200, "server");
    b.client(3, 300, "intruder");
    b.input(
        1,
        100,
        Envelope {
            corr: 42,
            name: "server",
            body: b"ping",
            ..env(Kind::Request)
        },
    );
    let request = b.take(2).pop().unwrap();
    assert_eq!(
        (request.kind, request.sender, request.corr),
        (Kind::Request, 100, 42)
    );
    let reply = Envelope {
        pid: 100,
        corr: 42,
        body: b"pong",
        ..env(Kind::Reply)
    };
    b.input(3, 300, reply);
    assert_eq!(b.take(3)[0].code(), ErrorCode::NoSuchRequest);
    b.input(2, 200, reply);
    let got = b.take(1);
    assert_eq!(
        (got[0].kind, got[0].sender, got[0].body.as_slice()),
        (Kind::Reply, 200, &b"pong"[..])
    );
    b.input(2, 200, reply);
    assert_eq!(
        b.take(2)[0].code(),
        ErrorCode::NoSuchRequest,
        "answered once only"
    );
    assert_eq!(b.hub.stats().requests_in_flight, 0);
}

#[test]
fn a_request_times_out_with_an_error_and_a_late_reply_is_refused() {
    let mut b = Bench::new();
    b.client(1, 100, "");
    b.client(2, 200, "server");
    b.input(
        1,
        100,
        Envelope {
            corr: 9,
            name: "server",
            arg: 1500,
            ..env(Kind::Request)
        },
    );
    b.advance(Duration::from_millis(1499));
    assert!(b.take(1).is_empty());
    b.advance(Duration::from_millis(1));
    assert_eq!(b.take(1)[0].code(), ErrorCode::Timeout);
    b.input(
        2,
        200,
        Envelope {
            pid: 100,
            corr: 9,
            ..env(Kind::Reply)
        },
    );
    assert_eq!(b.take(2).last().unwrap().code(), ErrorCode::NoSuchRequest);
}

#[test]
fn requests_in_flight_are_capped_and_ids_unique() {
    let mut b = Bench::new();
    b.client(1, 100, "");
    b.client(2, 200, "server");
    for corr in 1..=4 {
        b.input(
            1,
            100,
            Envelope {
                corr,
                name: "server",
                ..env(Kind::Request)
            },
        );
    }
    assert!(b.take(1).is_empty());
    assert_eq!(b.take(2).len(), 4);
    b.input(
        1,
        100,
        Envelope {
            corr: 4,
            name: "server",
            ..env(Kind::Request)
        },
    );
    assert_eq!(b.take(1)[0].code(), ErrorCode::DuplicateRequest);
    b.input(
        1,
        100,
        Envelope {
            corr: 5,
            name: "server",
            ..env(Kind::Request)
        },
    );
    assert_eq!(b.take(1)[0].code(), ErrorCode::TooManyPending);
}

#[test]
fn a_receiver_that_leaves_with_a_request_fails_it_at_once() {
    let mut b = Bench::new();
    b.client(1, 100, "");
    b.client(2, 200, "server");
    b.input(
        1,
        100,
        Envelope {
            corr: 3,
            name: "server",
            ..env(Kind::Request)
        },
    );
    assert_eq!(b.take(2).len(), 1);
    b.hub.hangup(2, b.now);
    b.pump();
    let got = b.take(1);
    assert_eq!(got[0].code(), ErrorCode::ReceiverGone);
    assert_eq!(got[0].corr, 3);
}

#[test]
fn what_a_leaving_receiver_did_not_take_is_held_for_the_next() {
    let mut b = Bench::new();
    b.client(1, 100, "");
    b.client(2, 200, "sink");
    b.blocked.push(2);
    b.send(1, 100, "sink", 0, b"first", 1);
    b.send(1, 100, "sink", 0, b"second", 2);
    b.writer_failed(2);
    assert_eq!(b.hub.stats().mailbox_messages, 2);
    b.client(3, 201, "sink");
    let bodies = b.bodies(3);
    assert_eq!(bodies, vec![b"first".to_vec(), b"second".to_vec()]);
}

#[test]
fn a_full_receiver_pauses_its_senders_until_it_drains() {
    let mut b = Bench::new();
    b.client(1, 100, "");
    b.client(2, 200, "sink");
    b.blocked.push(2);
    assert_eq!(b.send(1, 100, "sink", 0, &[0; 600], 1), Flow::Go);
    assert_eq!(b.send(1, 100, "sink", 0, &[0; 600], 2), Flow::Paused);
    assert!(b.take_effects().is_empty());
    b.unblock(2);
    assert!(b.take_effects().contains(&Effect::Resume { conn: 1 }));
    assert_eq!(b.take(2).len(), 2);
}

#[test]
fn a_receiver_that_stops_reading_is_closed_and_its_messages_held() {
    let mut b = Bench::new();
    b.client(1, 100, "");
    b.client(2, 200, "sink");
    b.blocked.push(2);
    b.send(1, 100, "sink", 0, &[1; 600], 1);
    assert_eq!(b.send(1, 100, "sink", 0, &[2; 600], 2), Flow::Paused);
    b.advance(Duration::from_secs(9));
    assert!(b.take_effects().is_empty());
    b.advance(Duration::from_secs(1));
    let effects = b.take_effects();
    assert!(
        effects.contains(&Effect::StopReading { conn: 2 }),
        "{effects:?}"
    );
    // It gets the close grace to take its queue; it does not, so the hub lets it go.
    b.advance(Duration::from_secs(1));
    let effects = b.take_effects();
    assert!(effects.contains(&Effect::Finish { conn: 2 }), "{effects:?}");
    assert!(effects.contains(&Effect::Resume { conn: 1 }), "{effects:?}");
    assert_eq!(b.hub.stats().stalled_closed, 1);
    assert_eq!(b.hub.stats().mailbox_messages, 2);
}

#[test]
fn too_many_connections_are_told_and_closed() {
    let mut b = Bench::new();
    for conn in 1..=8 {
        b.hub.connect(
            conn,
            Peer {
                pid: conn as u32,
                uid: 0,
            },
            b.now,
        );
    }
    b.hub.connect(9, Peer { pid: 9, uid: 0 }, b.now);
    b.pump();
    assert_eq!(b.take(9)[0].code(), ErrorCode::TooManyConnections);
    assert!(b.take_effects().contains(&Effect::Finish { conn: 9 }));
}

#[test]
fn oversize_frames_are_refused_and_damage_counted() {
    let mut b = Bench::new();
    b.client(1, 100, "");
    let damage = Damage {
        skipped_bytes: 17,
        resyncs: 2,
        wasted_bytes: 0,
    };
    let found = [(0, Found::Oversize { length: 5_000_000 })];
    b.hub.receive(1, &[], &found, damage, b.now);
    b.pump();
    let got = b.take(1);
    assert_eq!(got[0].code(), ErrorCode::FrameTooLarge);
    assert!(got[0].text().contains("5000000"), "{}", got[0].text());
    let stats = b.hub.stats();
    assert_eq!(
        (stats.corrupt_bytes, stats.resyncs, stats.oversize_frames),
        (17, 2, 1)
    );
}

#[test]
fn broadcast_reaches_every_name_with_the_prefix() {
    let mut b = Bench::new();
    b.client(1, 100, "sensor.a");
    b.client(2, 200, "sensor.b");
    b.client(3, 300, "actuator");
    b.input(
        1,
        100,
        Envelope {
            name: "sensor.",
            body: b"hi",
            ..env(Kind::Broadcast)
        },
    );
    assert_eq!(b.take(2).len(), 1);
    assert!(b.take(1).is_empty(), "not to the sender");
    assert!(b.take(3).is_empty());
}

#[test]
fn shutdown_fails_what_waits_and_closes_everyone() {
    let mut b = Bench::new();
    b.client(1, 100, "");
    b.send(1, 100, "absent", 0, b"x", 1);
    b.input(
        1,
        100,
        Envelope {
            corr: 2,
            name: "absent2",
            ..env(Kind::Request)
        },
    );
    b.hub.shutdown(b.now);
    b.pump();
    let codes: Vec<ErrorCode> = b.take(1).iter().map(|o| o.code()).collect();
    assert_eq!(codes.len(), 2);
    assert!(codes.iter().all(|c| *c == ErrorCode::ShuttingDown));
    assert!(b.hub.is_empty());
}

// ---- service channels ----

fn started(b: &mut Bench, id: &str, pid: u32) {
    b.hub.service_started(
        id.to_string(),
        pid,
        PathBuf::from(format!("/srv/{id}/config.json")),
    );
    b.pump();
}

fn attach(b: &mut Bench, conn: ConnId, pid: u32, id: &str) {
    b.input(
        conn,
        pid,
        Envelope {
            corr: 77,
            name: id,
            ..env(Kind::Attach)
        },
    );
}

#[test]
fn only_the_reported_process_attaches_and_only_once() {
    let mut b = Bench::new();
    started(&mut b, "svc", 500);
    b.client(1, 500, "");
    b.client(2, 500, "");
    b.client(3, 666, "");
    attach(&mut b, 1, 500, "svc");
    assert_eq!(b.take(1)[0].kind, Kind::Ok);
    attach(&mut b, 2, 500, "svc");
    let got = b.take(2);
    assert_eq!(got[0].code(), ErrorCode::ChannelExists);
    assert!(got[0].text().contains("channel exists"));
    attach(&mut b, 3, 666, "svc");
    assert!(
        b.take(3).is_empty(),
        "parked, in case a report is on its way"
    );
    b.advance(Duration::from_secs(5));
    let got = b.take(3);
    assert_eq!(got[0].code(), ErrorCode::NotPermitted);
    assert_eq!(got[0].corr, 77);
}

#[test]
fn an_attach_before_the_supervisors_report_waits_for_it() {
    let mut b = Bench::new();
    b.client(1, 500, "");
    attach(&mut b, 1, 500, "svc");
    assert!(b.take(1).is_empty());
    b.advance(Duration::from_secs(1));
    started(&mut b, "svc", 500);
    assert_eq!(b.take(1)[0].kind, Kind::Ok);
    b.client(2, 600, "");
    attach(&mut b, 2, 600, "ghost");
    b.advance(Duration::from_secs(5));
    assert_eq!(b.take(2)[0].code(), ErrorCode::UnknownService);
}

fn call_done(effects: &[Effect], call: CallId) -> Option<Result<Vec<u8>, ChannelError>> {
    effects.iter().find_map(|e| match e {
        Effect::CallDone { call: c, result } if *c == call => Some(result.clone()),
        _ => None,
    })
}

fn attached(b: &mut Bench) {
    started(b, "svc", 500);
    b.client(1, 500, "");
    attach(b, 1, 500, "svc");
    assert_eq!(b.take(1)[0].kind, Kind::Ok);
}

#[test]
fn push_config_is_persisted_only_once_acknowledged() {
    let mut b = Bench::new();
    b.hub.push_config(
        1,
        "svc",
        Bytes::from_static(b"{}"),
        Duration::from_secs(2),
        b.now,
    );
    b.pump();
    assert_eq!(
        call_done(&b.take_effects(), 1),
        Some(Err(ChannelError::NotAlive))
    );
    attached(&mut b);
    b.hub.push_config(
        2,
        "svc",
        Bytes::from_static(b"{\"a\":1}"),
        Duration::from_secs(2),
        b.now,
    );
    b.pump();
    let push = b.take(1).pop().unwrap();
    assert_eq!(
        (push.kind, push.sender, push.name.as_str()),
        (Kind::PushConfig, 0, "svc")
    );
    assert!(
        b.take_effects().is_empty(),
        "nothing persisted before the acknowledgement"
    );
    b.input(
        1,
        500,
        Envelope {
            corr: push.corr,
            ..env(Kind::Reply)
        },
    );
    assert_eq!(
        b.take_effects(),
        vec![Effect::PersistConfig {
            call: 2,
            service: "svc".into(),
            path: PathBuf::from("/srv/svc/config.json"),
            config: Bytes::from_static(b"{\"a\":1}"),
        }]
    );
    b.hub.push_config(
        3,
        "svc",
        Bytes::from_static(b"{}"),
        Duration::from_secs(2),
        b.now,
    );
    b.pump();
    let push = b.take(1).pop().unwrap();
    b.input(
        1,
        500,
        Envelope {
            corr: push.corr,
            body: b"bad key",
            ..env(Kind::Error)
        },
    );
    assert_eq!(
        call_done(&b.take_effects(), 3),
        Some(Err(ChannelError::Refused("bad key".into())))
    );
}

#[test]
fn invoke_answers_times_out_and_fails_at_once_on_exit() {
    let mut b = Bench::new();
    attached(&mut b);
    b.hub.invoke(
        1,
        "svc",
        Bytes::from_static(b"add 1 2"),
        Duration::from_secs(3),
        b.now,
    );
    b.pump();
    let call = b.take(1).pop().unwrap();
    assert_eq!(
        (call.kind, call.body.as_slice()),
        (Kind::Invoke, &b"add 1 2"[..])
    );
    b.input(
        1,
        500,
        Envelope {
            corr: call.corr,
            body: b"3",
            ..env(Kind::Reply)
        },
    );
    assert_eq!(call_done(&b.take_effects(), 1), Some(Ok(b"3".to_vec())));

    b.hub
        .invoke(2, "svc", Bytes::new(), Duration::from_secs(3), b.now);
    b.advance(Duration::from_secs(3));
    assert_eq!(
        call_done(&b.take_effects(), 2),
        Some(Err(ChannelError::Timeout(Duration::from_secs(3))))
    );

    b.hub
        .invoke(3, "svc", Bytes::new(), Duration::from_secs(3), b.now);
    b.hub.service_exited("svc", 499); // not the current process: ignored
    b.pump();
    assert_eq!(call_done(&b.take_effects(), 3), None);
    b.hub.service_exited("svc", 500);
    b.pump();
    assert_eq!(
        call_done(&b.take_effects(), 3),
        Some(Err(ChannelError::ServiceExited))
    );
    b.hub
        .invoke(4, "svc", Bytes::new(), Duration::from_secs(3), b.now);
    b.pump();
    assert_eq!(
        call_done(&b.take_effects(), 4),
        Some(Err(ChannelError::NotAlive))
    );
}

#[test]
fn the_restarted_process_attaches_again() {
    let mut b = Bench::new();
    attached(&mut b);
    b.hub
        .invoke(1, "svc", Bytes::new(), Duration::from_secs(3), b.now);
    b.hub.hangup(1, b.now);
    b.pump();
    match call_done(&b.take_effects(), 1) {
        Some(Err(ChannelError::ChannelClosed)) => {}
        other => panic!("{other:?}"),
    }
    b.hub.service_exited("svc", 500);
    started(&mut b, "svc", 501);
    b.client(2, 501, "");
    attach(&mut b, 2, 501, "svc");
    assert_eq!(b.take(2)[0].kind, Kind::Ok);
}

#[test]
fn metrics_events_and_config_requests_need_a_channel() {
    let mut b = Bench::new();
    b.client(9, 900, "");
    b.input(
        9,
        900,
        Envelope {
            corr: 1,
            ..env(Kind::RequestConfig)
        },
    );
    assert_eq!(b.take(9)[0].code(), ErrorCode::NotAttached);
    attached(&mut b);
    b.input(
        1,
        500,
        Envelope {
            corr: 8,
            ..env(Kind::RequestConfig)
        },
    );
    assert_eq!(
        b.take_effects(),
        vec![Effect::ReadConfig {
            conn: 1,
            corr: 8,
            path: PathBuf::from("/srv/svc/config.json")
        }]
    );
    b.hub.config_read(1, 8, Ok(b"{\"x\":2}".to_vec()));
    b.pump();
    let reply = b.take(1).pop().unwrap();
    assert_eq!(
        (reply.kind, reply.corr, reply.body.as_slice()),
        (Kind::Reply, 8, &b"{\"x\":2}"[..])
    );
    let metric = envelope::encode_metric("dev", "temp", b"21.5");
    b.input(
        1,
        500,
        Envelope {
            body: &metric,
            ..env(Kind::Metric)
        },
    );
    b.input(
        1,
        500,
        Envelope {
            arg: 7,
            body: b"door open",
            ..env(Kind::Event)
        },
    );
    assert_eq!(
        b.take_effects(),
        vec![
            Effect::Publish(ServiceEvent::Metric {
                service: "svc".into(),
                device: "dev".into(),
                route_key: "temp".into(),
                data: b"21.5".to_vec()
            }),
            Effect::Publish(ServiceEvent::Event {
                service: "svc".into(),
                event_type: 7,
                params: b"door open".to_vec()
            })
        ]
    );
}

#[test]
fn one_read_of_mixed_frames_keeps_each_receivers_order() {
    let mut b = Bench::new();
    b.client(1, 100, "");
    b.client(2, 200, "sink");
    b.client(3, 300, "other");
    let to = |name: &'static str, body: &'static [u8], corr: u64| Envelope {
        name,
        body,
        corr,
        ..env(Kind::Send)
    };
    let by_pid = Envelope {
        pid: 200,
        body: b"by pid",
        corr: 4,
        ..env(Kind::Send)
    };
    let request = Envelope {
        name: "sink",
        body: b"request",
        corr: 3,
        arg: 1000,
        ..env(Kind::Request)
    };
    let frames = [
        to("sink", b"one", 1),
        to("sink", b"two", 2),
        request,
        by_pid,
        to("other", b"elsewhere", 5),
        to("nobody", b"held", 6),
        to("sink", b"three", 7),
    ];
    assert_eq!(b.input_many(1, 100, &frames), Flow::Go);
    let bodies = b.bodies(2);
    let want: Vec<&[u8]> = vec![b"one", b"two", b"request", b"by pid", b"three"];
    assert_eq!(bodies, want);
    assert_eq!(b.take(3)[0].body, b"elsewhere");
    assert_eq!(b.hub.stats().mailbox_messages, 1);
    assert_eq!(
        b.hub.stats().frames_in,
        7 + 3,
        "three registrations, then the read"
    );
}

#[test]
fn a_message_for_a_receiver_that_hung_up_mid_write_is_held_not_lost() {
    let mut b = Bench::new();
    b.client(1, 100, "");
    b.client(2, 200, "sink");
    b.blocked.push(2);
    b.send(1, 100, "sink", 0, b"first", 1);
    // The peer hangs up while its writer still has "first".
    b.hub.hangup(2, b.now);
    b.send(1, 100, "sink", 0, b"second", 2);
    assert!(b.take(1).is_empty(), "the sender is not told of a failure");
    b.writer_failed(2);
    assert_eq!(b.hub.stats().mailbox_messages, 2);
    b.client(3, 201, "sink");
    let bodies = b.bodies(3);
    assert_eq!(bodies, vec![b"first".to_vec(), b"second".to_vec()]);
}

/// A `Batch` envelope body holding `messages`.
fn batch_body(messages: &[&[u8]]) -> Vec<u8> {
    let mut body = bytes::BytesMut::new();
    for message in messages {
        crate::wire::batch::append(&mut body, message);
    }
    body.to_vec()
}

impl Bench {
    fn send_batch(
        &mut self,
        conn: ConnId,
        pid: u32,
        to_name: &str,
        body: &[u8],
        count: u32,
        corr: u64,
    ) {
        self.input(
            conn,
            pid,
            Envelope {
                corr,
                arg: count,
                name: to_name,
                body,
                ..env(Kind::Batch)
            },
        );
    }
}

#[test]
fn a_batch_is_forwarded_whole_and_counted_by_its_messages() {
    let mut b = Bench::new();
    b.client(1, 100, "");
    b.client(2, 200, "sink");
    let body = batch_body(&[b"a", b"", b"ccc"]);
    // Connected: the fast path, between two single messages.
    b.send(1, 100, "sink", 0, b"before", 1);
    b.send_batch(1, 100, "sink", &body, 3, 2);
    b.send(1, 100, "sink", 0, b"after", 5);
    let got = b.take(2);
    assert_eq!(got.len(), 3, "{got:?}");
    assert_eq!((got[1].kind, got[1].corr, got[1].arg), (Kind::Batch, 2, 3));
    assert_eq!(got[1].body, body, "forwarded byte for byte");
    assert_eq!(got[2].body, b"after");
    assert_eq!(b.hub.stats().delivered, 5);
    // Held: the whole batch waits, counted as three messages.
    b.send_batch(1, 100, "late", &body, 3, 10);
    assert_eq!(b.hub.stats().mailbox_messages, 3);
    b.client(3, 300, "late");
    let got = b.take(3);
    assert_eq!((got.len(), got[0].kind, got[0].arg), (1, Kind::Batch, 3));
    assert_eq!(b.hub.stats().delivered, 8);
    assert!(b.take(1).is_empty(), "{:?}", b.take(1));
}

#[test]
fn a_batch_whose_body_does_not_match_its_count_is_refused() {
    let mut b = Bench::new();
    b.client(1, 100, "");
    b.client(2, 200, "sink");
    let body = batch_body(&[b"a", b"b"]);
    for (count, expected) in [(3, "ends inside the length of message 2"), (0, "1 to 1024")] {
        b.send_batch(1, 100, "sink", &body, count, 7);
        let got = b.take(1);
        assert_eq!(got.len(), 1, "{got:?}");
        assert_eq!((got[0].code(), got[0].corr), (ErrorCode::Malformed, 7));
        assert!(got[0].text().contains(expected), "{}", got[0].text());
    }
    assert!(b.take(2).is_empty(), "nothing of a bad batch is delivered");
}

#[test]
fn each_message_of_a_batch_that_cannot_be_held_or_expires_is_reported() {
    let mut b = Bench::new();
    b.client(1, 100, "");
    // mailbox_max_messages is 3: a batch of two is held, the next two do not fit.
    b.send_batch(1, 100, "absent", &batch_body(&[b"a", b"b"]), 2, 20);
    b.send_batch(1, 100, "absent", &batch_body(&[b"c", b"d"]), 2, 30);
    let got = b.take(1);
    let refused: Vec<(ErrorCode, u64)> = got.iter().map(|o| (o.code(), o.corr)).collect();
    assert_eq!(
        refused,
        [(ErrorCode::MailboxFull, 30), (ErrorCode::MailboxFull, 31)]
    );
    assert!(
        got[0].text().contains("a batch of 2 does not fit"),
        "{}",
        got[0].text()
    );
    assert_eq!(b.hub.stats().overflowed, 2);
    b.advance(Duration::from_secs(10));
    let expired: Vec<(ErrorCode, u64)> = b.take(1).iter().map(|o| (o.code(), o.corr)).collect();
    assert_eq!(
        expired,
        [(ErrorCode::Expired, 20), (ErrorCode::Expired, 21)]
    );
    assert_eq!(b.hub.stats().expired, 2);
    assert_eq!(b.hub.stats().mailbox_messages, 0);
}

#[test]
fn a_connection_past_its_damage_budget_is_told_and_closed() {
    let mut b = Bench::new();
    b.client(1, 100, "");
    let damage = Damage {
        skipped_bytes: 70_000,
        resyncs: 9,
        wasted_bytes: 2 << 20,
    };
    b.hub.receive(1, &[], &[(0, Found::Damaged)], damage, b.now);
    b.pump();
    let got = b.take(1);
    assert_eq!(got[0].code(), ErrorCode::TooMuchDamage);
    assert_eq!(got[0].corr, 0);
    assert!(
        got[0].text().contains("max_damage_bytes"),
        "{}",
        got[0].text()
    );
    assert!(b.take_effects().contains(&Effect::Finish { conn: 1 }));
    let stats = b.hub.stats();
    assert_eq!(
        (stats.corrupt_bytes, stats.resyncs, stats.damaged_closed),
        (70_000, 9, 1)
    );
}

#[test]
fn envelope_level_errors_carry_the_corr_of_the_frame() {
    // Malformed: an unknown kind, whose envelope still holds a corr.
    let mut b = Bench::new();
    b.client(1, 100, "");
    let mut bad = Envelope {
        corr: 4242,
        ..env(Kind::Send)
    }
    .to_frame(100)
    .to_vec();
    bad[13] = 0x7f;
    crate::wire::frame::seal(&mut bad);
    let found = [(
        0,
        Found::Frame {
            pid: 100,
            length: bad.len(),
        },
    )];
    b.hub.receive(1, &bad, &found, Damage::default(), b.now);
    b.pump();
    let got = b.take(1);
    assert_eq!((got[0].code(), got[0].corr), (ErrorCode::Malformed, 4242));

    // PidMismatch for a frame with another pid in its header.
    let spoofed = Envelope {
        pid: 100,
        corr: 77,
        ..env(Kind::Send)
    }
    .to_frame(555);
    let found = [(
        0,
        Found::Foreign {
            pid: 555,
            length: spoofed.len(),
        },
    )];
    b.hub.receive(1, &spoofed, &found, Damage::default(), b.now);
    b.pump();
    let got = b.take(1);
    assert_eq!((got[0].code(), got[0].corr), (ErrorCode::PidMismatch, 77));

    // FrameTooLarge: the reader hands over the oversized frame's fixed part.
    let mut b = Bench::new();
    b.client(1, 100, "");
    let mut big = Envelope {
        corr: 99,
        ..env(Kind::Send)
    }
    .to_frame(100)
    .to_vec();
    big[0..4].copy_from_slice(&(5_000_000u32).to_le_bytes());
    let found = [(0, Found::Oversize { length: 5_000_000 })];
    b.hub.receive(1, &big, &found, Damage::default(), b.now);
    b.pump();
    let got = b.take(1);
    assert_eq!((got[0].code(), got[0].corr), (ErrorCode::FrameTooLarge, 99));
}

#[test]
fn one_user_cannot_take_every_slot_and_idle_connections_are_closed() {
    let mut b = Bench::new();
    // limits(): 6 connections per uid, 5 s to register.
    for conn in 1..=6 {
        b.hub.connect(
            conn,
            Peer {
                pid: 100 + conn as u32,
                uid: 1000,
            },
            b.now,
        );
    }
    b.hub.connect(
        7,
        Peer {
            pid: 107,
            uid: 1000,
        },
        b.now,
    );
    b.pump();
    let got = b.take(7);
    assert_eq!(
        (got[0].code(), got[0].corr),
        (ErrorCode::TooManyConnections, 0)
    );
    assert!(
        got[0].text().contains("max_connections_per_uid"),
        "{}",
        got[0].text()
    );
    // Another user still gets in.
    b.hub.connect(
        8,
        Peer {
            pid: 200,
            uid: 2000,
        },
        b.now,
    );
    b.input(
        8,
        200,
        Envelope {
            pid: 200,
            corr: 1,
            ..env(Kind::Register)
        },
    );
    assert_eq!(b.take(8)[0].kind, Kind::Ok);
    assert_eq!(b.hub.stats().refused_per_uid, 1);
    // Connections 1..=6 never register: after register_timeout they are closed.
    b.input(
        1,
        101,
        Envelope {
            pid: 101,
            corr: 1,
            ..env(Kind::Register)
        },
    );
    assert_eq!(b.take(1)[0].kind, Kind::Ok);
    b.advance(Duration::from_secs(5));
    for conn in 2..=6 {
        let got = b.take(conn);
        assert_eq!((got[0].code(), got[0].corr), (ErrorCode::NotRegistered, 0));
        assert!(
            got[0].text().contains("register_timeout"),
            "{}",
            got[0].text()
        );
    }
    assert!(b.take(1).is_empty(), "a registered connection stays");
    assert!(b.take(8).is_empty());
    assert_eq!(b.hub.stats().register_timeouts, 5);
}

#[test]
fn partial_frames_past_the_bound_close_the_connection_that_went_over() {
    let mut b = Bench::new();
    b.client(1, 100, "");
    b.client(2, 200, "");
    // limits(): 3 MiB in all.
    assert!(b.hub.partial(1, 2 << 20, b.now));
    assert!(b.hub.partial(2, 1 << 20, b.now));
    assert!(!b.hub.partial(2, (1 << 20) + 1, b.now));
    b.pump();
    let got = b.take(2);
    assert_eq!(got[0].code(), ErrorCode::Internal);
    assert!(
        got[0].text().contains("max_partial_bytes"),
        "{}",
        got[0].text()
    );
    assert_eq!(
        b.hub.stats().partial_bytes,
        2 << 20,
        "the closed one's is let go"
    );
    // Shrinking is always allowed.
    assert!(b.hub.partial(1, 10, b.now));
    assert_eq!(b.hub.stats().partial_refused, 1);
    // A connection that hangs up lets go of what its reader held.
    assert!(b.hub.partial(1, 1 << 20, b.now));
    b.hub.hangup(1, b.now);
    b.pump();
    assert_eq!(b.hub.stats().partial_bytes, 0);
}
