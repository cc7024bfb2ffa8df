//! The hub on a real socket, in this process: the client library (blocking, async, gproc),
//! ordering, mailboxes, damage, oversize frames and the socket file's life.

mod support;

use std::io::{Read, Write};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::{UnixListener, UnixStream};
use std::time::{Duration, Instant};

use support::{quick_config, TestHub, WAIT};
use troupe_ipc::client::{
    gproc, Addressed, AsyncClient, Client, ClientError, ClientOptions, Destination, Incoming,
};
use troupe_ipc::wire::{Envelope, ErrorCode, Kind};
use troupe_ipc::{ByteSize, GetStats, IpcConfig};

fn client(hub: &TestHub, name: &str) -> Client {
    let mut client = Client::connect(&hub.path).unwrap();
    client.register(Some(name)).unwrap();
    client
}

fn expect_message(client: &mut Client) -> troupe_ipc::client::Message {
    match client.recv_timeout(WAIT).unwrap() {
        Some(Incoming::Message(m)) => m,
        other => panic!("expected a message, got {other:?}"),
    }
}

fn expect_failure(client: &mut Client) -> troupe_ipc::client::Failure {
    match client.recv_timeout(WAIT).unwrap() {
        Some(Incoming::Failure(f)) => f,
        other => panic!("expected a failure report, got {other:?}"),
    }
}

#[test]
fn blocking_and_async_clients_exchange_messages_and_requests() {
    let hub = TestHub::start(quick_config());
    let mut blocking = client(&hub, "blocking");
    let path = hub.path.clone();
    let server = std::thread::spawn(move || {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap()
            .block_on(async move {
                let mut client = AsyncClient::connect(&path).await.unwrap();
                client.register(Some("async")).await.unwrap();
                client.send("blocking", b"hello from async").await.unwrap();
                match client.recv().await.unwrap() {
                    Incoming::Request(request) => {
                        let mut answer = b"re: ".to_vec();
                        answer.extend_from_slice(&request.body);
                        client.reply(&request, &answer).await.unwrap();
                    }
                    other => panic!("{other:?}"),
                }
                let stats = client.stats().await.unwrap();
                assert!(stats["frames_in"].as_u64().unwrap() >= 4, "{stats}");
                // Queued messages go as a batch, both ways.
                for i in 0..50u8 {
                    client.queue("blocking", &[i]);
                }
                client.flush().await.unwrap();
                for i in 0..50u8 {
                    match client.recv().await.unwrap() {
                        Incoming::Message(m) => assert_eq!(m.body, [i]),
                        other => panic!("{other:?}"),
                    }
                }
            })
    });
    let message = expect_message(&mut blocking);
    assert_eq!(message.body, b"hello from async");
    assert_eq!(message.from, std::process::id());
    assert_eq!(message.to, Addressed::Name);
    let reply = blocking
        .request("async", b"question", Duration::from_secs(10))
        .unwrap();
    assert_eq!(reply, b"re: question");
    for i in 0..50u8 {
        assert_eq!(expect_message(&mut blocking).body, [i]);
    }
    for i in 0..50u8 {
        blocking.queue("async", &[i]);
    }
    blocking.flush().unwrap();
    server.join().unwrap();
}

#[test]
fn a_broadcast_reaches_every_name_with_the_prefix_and_says_so() {
    let hub = TestHub::start(quick_config());
    let mut first = client(&hub, "worker.first");
    let mut second = client(&hub, "worker.second");
    let mut other = client(&hub, "other");
    let mut sender = client(&hub, "sender");
    sender.broadcast("worker.", b"to all workers").unwrap();
    sender.send("other", b"to other alone").unwrap();
    for worker in [&mut first, &mut second] {
        let message = expect_message(worker);
        assert_eq!(message.body, b"to all workers");
        assert_eq!(message.to, Addressed::Broadcast { prefix_len: 7 });
    }
    let message = expect_message(&mut other);
    assert_eq!(
        message.body, b"to other alone",
        "the broadcast did not reach `other`"
    );
    assert_eq!(message.to, Addressed::Name);
}

#[test]
fn a_client_that_verifies_checksums_reads_everything_the_hub_sends() {
    let hub = TestHub::start(quick_config());
    let options = ClientOptions {
        verify_checksums: true,
        ..ClientOptions::default()
    };
    let mut checking = Client::connect_with(&hub.path, options).unwrap();
    checking.register(Some("checking")).unwrap();
    // One sender's messages go a frame each, the other's in batches.
    let single = ClientOptions {
        batch_bytes: 0,
        ..ClientOptions::default()
    };
    let mut senders = [
        Client::connect_with(&hub.path, single).unwrap(),
        client(&hub, "batching"),
    ];
    senders[0].register(Some("single")).unwrap();
    for sender in &mut senders {
        for i in 0..100u32 {
            sender.queue("checking", &i.to_le_bytes());
        }
        // Both clients are this process; its pid reaches the connection that registered
        // first.
        sender.queue(std::process::id(), b"by pid");
        sender.flush().unwrap();
        for i in 0..100u32 {
            assert_eq!(expect_message(&mut checking).body, i.to_le_bytes());
        }
        let by_pid = expect_message(&mut checking);
        assert_eq!(by_pid.to, Addressed::Pid);
    }
    let stats = checking.stats().unwrap();
    assert!(stats["delivered"].as_u64().unwrap() >= 202, "{stats}");
    // A frame per message, then a batch and a frame; frames the hub builds itself (the
    // answer to Stats) pass the check too.
    assert!(stats["frames_in"].as_u64().unwrap() >= 106, "{stats}");
}

#[test]
fn a_request_nobody_answers_times_out_with_the_hubs_error() {
    let hub = TestHub::start(quick_config());
    let mut asker = client(&hub, "asker");
    let _silent = client(&hub, "silent");
    let since = Instant::now();
    let err = asker
        .request("silent", b"?", Duration::from_millis(200))
        .unwrap_err();
    assert!(
        matches!(
            err,
            ClientError::Hub {
                code: ErrorCode::Timeout,
                ..
            }
        ),
        "{err}"
    );
    assert!(since.elapsed() < Duration::from_millis(200) + WAIT);
}

#[test]
fn many_concurrent_senders_each_arrive_in_order() {
    const SENDERS: usize = 8;
    const MESSAGES: usize = 2_000;
    let hub = TestHub::start(quick_config());
    let mut sink = client(&hub, "sink");
    let senders: Vec<_> = (0..SENDERS)
        .map(|s| {
            let path = hub.path.clone();
            std::thread::spawn(move || {
                let mut client = Client::connect(&path).unwrap();
                client.register(Some(&format!("sender-{s}"))).unwrap();
                for i in 0..MESSAGES {
                    client.queue("sink", format!("{s}:{i}").as_bytes());
                    if i % 64 == 0 {
                        client.flush().unwrap();
                    }
                }
                client.flush().unwrap();
            })
        })
        .collect();
    let mut next = [0usize; SENDERS];
    for _ in 0..SENDERS * MESSAGES {
        let body = String::from_utf8(expect_message(&mut sink).body).unwrap();
        let (s, i) = body.split_once(':').unwrap();
        let (s, i): (usize, usize) = (s.parse().unwrap(), i.parse().unwrap());
        assert_eq!(i, next[s], "sender {s} out of order");
        next[s] += 1;
    }
    assert_eq!(next, [MESSAGES; SENDERS]);
    for sender in senders {
        sender.join().unwrap();
    }
}

#[test]
fn mailbox_holds_for_a_late_receiver_and_tells_senders_what_expired_or_overflowed() {
    let config = IpcConfig {
        mailbox_max_messages: 3,
        ..quick_config()
    };
    let hub = TestHub::start(config);
    let mut sender = client(&hub, "sender");
    // Held, then collected.
    for i in 0..3 {
        sender.send("late", format!("held {i}").as_bytes()).unwrap();
    }
    let mut late = client(&hub, "late");
    for i in 0..3 {
        assert_eq!(
            expect_message(&mut late).body,
            format!("held {i}").as_bytes()
        );
    }
    // Over the cap: refused at once. Not collected: expired after the TTL.
    let since = Instant::now();
    let sent: Vec<u64> = (0..5)
        .map(|i| sender.send("absent", &[i]).unwrap())
        .collect();
    let mut full = Vec::new();
    let mut expired = Vec::new();
    for _ in 0..5 {
        let failure = expect_failure(&mut sender);
        assert_eq!(
            failure.destination,
            Some(Destination::Name("absent".into()))
        );
        match failure.code {
            ErrorCode::MailboxFull => full.push(failure.corr),
            ErrorCode::Expired => {
                assert!(
                    failure.message.contains("mailbox_ttl"),
                    "{}",
                    failure.message
                );
                expired.push(failure.corr)
            }
            other => panic!("{other:?}: {}", failure.message),
        }
    }
    assert_eq!(full, sent[3..]);
    assert_eq!(expired, sent[..3]);
    // Expiry came no earlier than the TTL (300ms).
    assert!(since.elapsed() >= Duration::from_millis(300));
}

#[test]
fn garbage_between_frames_over_a_real_socket_is_skipped_and_counted() {
    let hub = TestHub::start(quick_config());
    let mut sink = client(&hub, "sink");
    let mut raw = UnixStream::connect(&hub.path).unwrap();
    let pid = std::process::id();
    let frame = |env: Envelope<'_>| env.to_frame(pid);
    raw.write_all(&frame(Envelope {
        pid,
        corr: 1,
        name: "raw",
        ..Envelope::new(Kind::Register)
    }))
    .unwrap();
    let mut corrupted = frame(Envelope {
        name: "sink",
        body: b"damaged",
        ..Envelope::new(Kind::Send)
    })
    .to_vec();
    corrupted[40] ^= 0x55;
    let mut stream = Vec::new();
    stream.extend_from_slice(b"\x00\xffjunk");
    stream.extend_from_slice(&frame(Envelope {
        name: "sink",
        body: b"first",
        ..Envelope::new(Kind::Send)
    }));
    stream.extend_from_slice(&corrupted);
    stream.extend_from_slice(&[7; 33]);
    stream.extend_from_slice(&frame(Envelope {
        name: "sink",
        body: b"second",
        ..Envelope::new(Kind::Send)
    }));
    raw.write_all(&stream).unwrap();
    assert_eq!(expect_message(&mut sink).body, b"first");
    assert_eq!(expect_message(&mut sink).body, b"second");
    let stats = support::eventually(WAIT, || {
        let stats = futures::executor::block_on(hub.hub.send(GetStats)).unwrap();
        (stats.corrupt_bytes > 0).then_some(stats)
    });
    assert_eq!(stats.corrupt_bytes, 6 + corrupted.len() as u64 + 33);
    assert!(stats.resyncs >= 2, "{stats:?}");
}

#[test]
fn an_oversize_frame_gets_an_error_and_the_connection_closes() {
    let config = IpcConfig {
        max_frame_bytes: ByteSize(4096),
        outbox_high_water: ByteSize(4096),
        mailbox_max_bytes: ByteSize(4096),
        mailbox_total_bytes: ByteSize(4096),
        ..quick_config()
    };
    let hub = TestHub::start(config);
    let mut raw = UnixStream::connect(&hub.path).unwrap();
    let pid = std::process::id();
    let mut header = Vec::new();
    header.extend_from_slice(&5000u32.to_le_bytes());
    header.extend_from_slice(&pid.to_le_bytes());
    header.extend_from_slice(&[0; 4]);
    raw.write_all(&header).unwrap();
    raw.set_read_timeout(Some(WAIT)).unwrap();
    let mut answer = Vec::new();
    raw.read_to_end(&mut answer).unwrap();
    let env = Envelope::parse(&answer[12..]).unwrap();
    assert_eq!(env.kind, Kind::Error);
    assert_eq!(ErrorCode::from_u32(env.arg), ErrorCode::FrameTooLarge);
    let text = String::from_utf8_lossy(env.body);
    assert!(text.contains("5000") && text.contains("4096"), "{text}");
}

#[test]
fn batches_stay_within_a_small_max_frame_bytes() {
    let config = IpcConfig {
        max_frame_bytes: ByteSize(1024),
        ..quick_config()
    };
    let hub = TestHub::start(config);
    let mut receiver = client(&hub, "small-frames");
    // The client batches up to 16 KiB unless the hub says less.
    let mut sender = client(&hub, "batching");
    for i in 0..300u32 {
        sender.queue("small-frames", &[i as u8; 64]);
    }
    sender.flush().unwrap();
    for i in 0..300u32 {
        assert_eq!(expect_message(&mut receiver).body, [i as u8; 64]);
    }
    let stats = sender.stats().unwrap();
    assert_eq!(stats["oversize_frames"], 0, "{stats}");
    assert!(
        stats["frames_in"].as_u64().unwrap() >= 300 * 68 / 1024,
        "{stats}"
    );
}

#[test]
fn registering_as_another_process_is_refused() {
    let hub = TestHub::start(quick_config());
    let mut raw = UnixStream::connect(&hub.path).unwrap();
    raw.write_all(
        &Envelope {
            pid: 1,
            corr: 9,
            ..Envelope::new(Kind::Register)
        }
        .to_frame(std::process::id()),
    )
    .unwrap();
    raw.set_read_timeout(Some(WAIT)).unwrap();
    let mut answer = Vec::new();
    raw.read_to_end(&mut answer).unwrap();
    let env = Envelope::parse(&answer[12..]).unwrap();
    assert_eq!(ErrorCode::from_u32(env.arg), ErrorCode::PidMismatch);
    assert_eq!(env.corr, 9);
}

#[test]
fn socket_is_private_and_removed_on_stop() {
    let mut hub = TestHub::start(quick_config());
    let mode = std::fs::metadata(&hub.path).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600);
    hub.stop();
    assert!(!hub.path.exists());
    assert!(!hub.path.with_file_name("hub.sock.lock").exists());
}

#[test]
fn a_stale_socket_is_replaced_but_a_live_one_never_taken() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("hub.sock");
    // A socket file nobody listens on: what a node killed with SIGKILL leaves.
    drop(UnixListener::bind(&path).unwrap());
    assert!(path.exists());
    let mut hub = TestHub::start_at(dir, path.clone(), quick_config()).unwrap();
    let mut c = Client::connect(&path).unwrap();
    c.register(None).unwrap();
    // A second hub on the same path while the first lives.
    let err = TestHub::start_at(tempfile::tempdir().unwrap(), path.clone(), quick_config())
        .err()
        .expect("second hub refused");
    assert!(err.contains("another node"), "{err}");
    c.send(c.pid(), b"still here").unwrap();
    assert_eq!(expect_message(&mut c).body, b"still here");
    hub.stop();

    // A live listener that is not a troupe node: found by the connect probe.
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("other.sock");
    let _listener = UnixListener::bind(&path).unwrap();
    let err = TestHub::start_at(tempfile::tempdir().unwrap(), path.clone(), quick_config())
        .err()
        .expect("live socket refused");
    assert!(err.contains("a live node is listening"), "{err}");
    assert!(path.exists());

    // Something that is not a socket is never replaced.
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("file.sock");
    std::fs::write(&path, b"data").unwrap();
    let err = TestHub::start_at(tempfile::tempdir().unwrap(), path.clone(), quick_config())
        .err()
        .expect("regular file refused");
    assert!(err.contains("not a socket"), "{err}");
    assert_eq!(std::fs::read(&path).unwrap(), b"data");
}

#[test]
fn gproc_helpers_send_and_receive_by_pid() {
    let hub = TestHub::start(quick_config());
    gproc::connect(&hub.path).unwrap();
    let me = std::process::id();
    gproc::send(me, b"to myself").unwrap();
    let msg = gproc::receive().unwrap();
    assert_eq!((msg.pid, msg.data.as_slice()), (me, &b"to myself"[..]));
    // A message nobody collects comes back as an error from receive.
    gproc::send(u32::MAX - 1, b"lost?").unwrap();
    match gproc::receive() {
        Err(ClientError::Undelivered(failure)) => {
            assert_eq!(failure.code, ErrorCode::Expired, "{failure:?}")
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn a_socket_group_opens_the_socket_to_its_members() {
    use std::os::unix::fs::MetadataExt;
    let gid = nix::unistd::getegid().as_raw();
    let config = IpcConfig {
        socket_group: gid.to_string(),
        ..quick_config()
    };
    let hub = TestHub::start(config);
    let meta = std::fs::metadata(&hub.path).unwrap();
    assert_eq!(meta.permissions().mode() & 0o777, 0o660);
    assert_eq!(meta.gid(), gid);

    let config = IpcConfig {
        socket_group: "no-such-group-for-troupe".into(),
        ..quick_config()
    };
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("hub.sock");
    let err = TestHub::start_at(dir, path, config)
        .err()
        .expect("an unknown group is refused");
    assert!(
        err.contains("socket_group \"no-such-group-for-troupe\": no such group"),
        "{err}"
    );
}
