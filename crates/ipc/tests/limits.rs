//! The hub's limits on a real socket: connections per user, the time to register, the
//! bytes held in partial frames, the damage budget, and the corr of envelope-level errors.

mod support;

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;

use support::{quick_config, TestHub, WAIT};
use troupe_ipc::hub::HubStats;
use troupe_ipc::wire::{Envelope, ErrorCode, Kind};
use troupe_ipc::{ByteSize, GetStats};

fn pid() -> u32 {
    std::process::id()
}

fn connect(hub: &TestHub) -> UnixStream {
    let stream = UnixStream::connect(&hub.path).unwrap();
    stream.set_read_timeout(Some(WAIT)).unwrap();
    stream
}

fn register(stream: &mut UnixStream, name: &str) {
    let frame = Envelope {
        pid: pid(),
        corr: 1,
        name,
        ..Envelope::new(Kind::Register)
    }
    .to_frame(pid());
    stream.write_all(&frame).unwrap();
    let (kind, corr, _, _) = read_frame(stream).expect("an answer");
    assert_eq!((kind, corr), (Kind::Ok, 1));
}

/// The next frame from the hub: kind, corr, arg, body; `None` at the end of the stream.
fn read_frame(stream: &mut UnixStream) -> Option<(Kind, u64, u32, String)> {
    let mut head = [0u8; 4];
    match stream.read_exact(&mut head) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => return None,
        Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => return None,
        Err(e) => panic!("reading from the hub: {e}"),
    }
    let length = u32::from_le_bytes(head) as usize;
    let mut rest = vec![0u8; length - 4];
    stream.read_exact(&mut rest).unwrap();
    let env = Envelope::parse(&rest[8..]).unwrap();
    Some((
        env.kind,
        env.corr,
        env.arg,
        String::from_utf8_lossy(env.body).into_owned(),
    ))
}

/// Reads until the hub closes the stream; returns the errors it sent: (code, corr, text).
fn errors_until_closed(stream: &mut UnixStream) -> Vec<(ErrorCode, u64, String)> {
    let mut errors = Vec::new();
    while let Some((kind, corr, arg, body)) = read_frame(stream) {
        if kind == Kind::Error {
            errors.push((ErrorCode::from_u32(arg), corr, body));
        }
    }
    errors
}

fn stats(hub: &TestHub) -> HubStats {
    futures::executor::block_on(hub.hub.send(GetStats)).unwrap()
}

#[test]
fn connections_per_user_are_capped() {
    let hub = TestHub::start(troupe_ipc::IpcConfig {
        max_connections_per_uid: 3,
        ..quick_config()
    });
    let mut held: Vec<UnixStream> = (0..3).map(|_| connect(&hub)).collect();
    for (i, stream) in held.iter_mut().enumerate() {
        register(stream, &format!("slot{i}"));
    }
    let mut fourth = connect(&hub);
    let errors = errors_until_closed(&mut fourth);
    assert_eq!(errors.len(), 1, "{errors:?}");
    assert_eq!(
        (errors[0].0, errors[0].1),
        (ErrorCode::TooManyConnections, 0)
    );
    assert!(
        errors[0].2.contains("max_connections_per_uid"),
        "{}",
        errors[0].2
    );
    assert_eq!(stats(&hub).refused_per_uid, 1);
    // A slot freed is a slot again.
    drop(held.pop());
    support::eventually(WAIT, || (stats(&hub).connections == 2).then_some(()));
    let mut again = connect(&hub);
    register(&mut again, "again");
}

#[test]
fn a_connection_that_does_not_register_is_closed_after_register_timeout() {
    let hub = TestHub::start(troupe_ipc::IpcConfig {
        register_timeout: "300ms".parse().unwrap(),
        ..quick_config()
    });
    let mut registered = connect(&hub);
    register(&mut registered, "stays");
    let mut idle = connect(&hub);
    let errors = errors_until_closed(&mut idle);
    assert_eq!(errors.len(), 1, "{errors:?}");
    assert_eq!((errors[0].0, errors[0].1), (ErrorCode::NotRegistered, 0));
    assert!(errors[0].2.contains("register_timeout"), "{}", errors[0].2);
    assert_eq!(stats(&hub).register_timeouts, 1);
    // The registered one is still served.
    let ask = Envelope {
        corr: 9,
        ..Envelope::new(Kind::Stats)
    }
    .to_frame(pid());
    registered.write_all(&ask).unwrap();
    let (kind, corr, _, _) = read_frame(&mut registered).unwrap();
    assert_eq!((kind, corr), (Kind::Reply, 9));
}

/// The header and fixed envelope of a `Send` announcing `length` bytes, the rest not sent.
fn partial_frame(length: u32, corr: u64) -> Vec<u8> {
    let mut frame = Envelope {
        corr,
        name: "nobody",
        ..Envelope::new(Kind::Send)
    }
    .to_frame(pid())
    .to_vec();
    frame[0..4].copy_from_slice(&length.to_le_bytes());
    frame
}

/// A valid `Send` of `length` bytes in all, to an absent receiver.
fn whole_frame(length: usize) -> Vec<u8> {
    let name = "nobody";
    let body = vec![7u8; length - 32 - name.len()];
    Envelope {
        corr: 2,
        name,
        body: &body,
        ..Envelope::new(Kind::Send)
    }
    .to_frame(pid())
    .to_vec()
}

#[test]
fn partial_frames_are_bounded_across_connections() {
    let hub = TestHub::start(troupe_ipc::IpcConfig {
        max_frame_bytes: ByteSize(1 << 20),
        max_partial_bytes: ByteSize(2 << 20),
        ..quick_config()
    });
    let mut first = connect(&hub);
    register(&mut first, "first");
    let mut second = connect(&hub);
    register(&mut second, "second");
    // Two frames of 1 MiB begun: 2 MiB held, at the bound.
    let whole = whole_frame(1 << 20);
    first.write_all(&whole[..32]).unwrap();
    second.write_all(&whole[..32]).unwrap();
    let mut third = connect(&hub);
    register(&mut third, "third");
    support::eventually(WAIT, || {
        (stats(&hub).partial_bytes == 2 << 20).then_some(())
    });
    third.write_all(&partial_frame(1 << 20, 3)).unwrap();
    let errors = errors_until_closed(&mut third);
    assert_eq!(errors.len(), 1, "{errors:?}");
    assert_eq!(errors[0].0, ErrorCode::Internal);
    assert!(errors[0].2.contains("max_partial_bytes"), "{}", errors[0].2);
    assert_eq!(stats(&hub).partial_refused, 1);
    // The first two may finish their frames.
    first.write_all(&whole[32..]).unwrap();
    let ask = Envelope {
        corr: 5,
        ..Envelope::new(Kind::Stats)
    }
    .to_frame(pid());
    first.write_all(&ask).unwrap();
    // The message is held for its absent receiver; the Stats after it is answered.
    let (kind, corr, _, _) = read_frame(&mut first).unwrap();
    assert_eq!((kind, corr), (Kind::Reply, 5));
}

#[test]
fn a_connection_sending_forged_headers_is_closed_after_max_damage_bytes() {
    let hub = TestHub::start(troupe_ipc::IpcConfig {
        max_damage_bytes: ByteSize(64 << 10),
        ..quick_config()
    });
    let mut stream = connect(&hub);
    register(&mut stream, "forger");
    // 2 MiB of headers with our own pid announcing 1 MiB frames, one every 8 bytes.
    let mut forged = Vec::with_capacity(2 << 20);
    while forged.len() < 2 << 20 {
        forged.extend_from_slice(&(1u32 << 20).to_le_bytes());
        forged.extend_from_slice(&pid().to_le_bytes());
    }
    let mut writer = stream.try_clone().unwrap();
    let writing = std::thread::spawn(move || {
        // The hub stops reading and closes the connection part way: errors are expected.
        let _ = writer.write_all(&forged);
    });
    let errors = errors_until_closed(&mut stream);
    assert_eq!(errors.len(), 1, "{errors:?}");
    assert_eq!((errors[0].0, errors[0].1), (ErrorCode::TooMuchDamage, 0));
    let stats = stats(&hub);
    assert_eq!(stats.damaged_closed, 1);
    assert!(stats.corrupt_bytes <= 64 << 10, "{stats:?}");
    drop(stream);
    writing.join().unwrap();
}

#[test]
fn envelope_level_errors_carry_the_corr_on_the_socket() {
    let hub = TestHub::start(quick_config());
    let mut stream = connect(&hub);
    register(&mut stream, "corr");
    let mut bad = Envelope {
        corr: 4242,
        ..Envelope::new(Kind::Send)
    }
    .to_frame(pid())
    .to_vec();
    bad[12] = 9; // version 9
    troupe_ipc::wire::frame::seal(&mut bad);
    stream.write_all(&bad).unwrap();
    let (kind, corr, arg, _) = read_frame(&mut stream).unwrap();
    assert_eq!(
        (kind, corr, ErrorCode::from_u32(arg)),
        (Kind::Error, 4242, ErrorCode::Malformed)
    );
    // Oversized: answered with its corr, then closed.
    stream.write_all(&partial_frame(2 << 20, 77)).unwrap();
    let errors = errors_until_closed(&mut stream);
    assert_eq!(errors.len(), 1, "{errors:?}");
    assert_eq!((errors[0].0, errors[0].1), (ErrorCode::FrameTooLarge, 77));
}
