//! The hub's per-message work without sockets: what a 64 KiB read of 64-byte messages costs
//! to check, to route, and to seal, in nanoseconds per message; and what a receiving client
//! spends on each message, through one socket pair in one thread. Then the same messages in
//! `Batch` frames, as the client sends them by default.
//!
//! These are the pieces `benches/hub.rs` measures together with the kernel's copies and the
//! three processes; here each runs alone in one thread, so a change to one of them shows up
//! without the noise of a shared machine. The CRC of each frame is also computed the plain way
//! (`frame::checksum`: the header's share, then the payload's, one frame at a time) to show
//! what folding a frame whole, four frames at a time, saves the decoder and the sender.
//!
//! Run with `cargo bench -p troupe-ipc --bench core` (or `make bench`); medians of 9 rounds.

#[path = "common/clock.rs"]
mod clock;

use std::hint::black_box;
use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::time::Instant;

use bytes::BytesMut;
use troupe_ipc::client::{Client, ClientOptions, Incoming};
use troupe_ipc::hub::{Hub, Limits, Peer};
use troupe_ipc::wire::frame::{checksum, seal_frames, Damage, Found, FrameDecoder, HEADER_LEN};
use troupe_ipc::wire::{batch, Envelope, Kind, MIN_FRAME};
use troupe_ipc::IpcConfig;

const READ: usize = 64 * 1024;
const ROUNDS: usize = 9;
const READS_PER_ROUND: usize = 2_000;
const SENDER: u32 = 100;
const RECEIVER: u32 = 200;

fn main() {
    let read = one_read();
    let frames = frames_in(&read);
    println!(
        "hub core: one {} KiB read of {} frames of 64-byte messages; ns per message, median of {ROUNDS}",
        READ / 1024,
        frames.len()
    );
    println!();
    println!("| step | ns per message |");
    println!("|---|---|");

    let plain = per_message(frames.len(), || {
        for &(at, length) in &frames {
            black_box(checksum(
                &read[at..at + 8],
                &read[at + HEADER_LEN..at + length],
            ));
        }
    });
    println!("| CRC-32 of each frame, plain | {plain:.1} |");

    let table = per_message(frames.len(), || {
        for &(at, length) in &frames {
            let mut hasher = crc32fast::Hasher::new();
            hasher.update(&read[at..at + 8]);
            hasher.update(&read[at + HEADER_LEN..at + length]);
            black_box(hasher.finalize());
        }
    });
    println!("| CRC-32 of each frame, crc32fast | {table:.1} |");

    let mut decoder = FrameDecoder::new(MIN_FRAME, 1 << 20, Some(SENDER));
    let scan = per_message(frames.len(), || {
        black_box(found_in(&mut decoder, &read));
    });
    println!("| decoder: find and check each frame | {scan:.1} |");

    let (mut hub, now) = hub_with_two_clients();
    let route = route_per_message(&mut hub, now, &read, frames.len());
    println!("| hub: route to the receiver's outbox and hand to its writer | {route:.1} |");

    let mut unsealed = read.clone();
    let seal = per_message(frames.len(), || {
        seal_frames(&mut unsealed);
    });
    assert_eq!(unsealed, read);
    println!("| sender: seal (checksum) each queued frame | {seal:.1} |");

    let send = send_per_message(frames.len(), 0);
    println!("| sender: queue, seal and write each 64-byte message to a name | {send:.1} |");

    let receive = receive_per_message(&read, frames.len());
    println!(
        "| receiver: write, read and take each message as the hub delivers it | {receive:.1} |"
    );

    // The same messages in `Batch` frames, as the client queues them by default.
    let batches = batched_read();
    let messages = frames.len();
    let mut decoder = FrameDecoder::new(MIN_FRAME, 1 << 20, Some(SENDER));
    let scan = per_message(messages, || {
        black_box(found_in(&mut decoder, &batches));
    });
    println!("| batched: decoder, find and check each frame | {scan:.1} |");
    let route = route_per_message(&mut hub, now, &batches, messages);
    println!(
        "| batched: hub, route to the receiver's outbox and hand to its writer | {route:.1} |"
    );
    let send = send_per_message(messages, ClientOptions::default().batch_bytes);
    println!("| batched: sender, queue, seal and write each message | {send:.1} |");
    let receive = receive_per_message(&batches, messages);
    println!("| batched: receiver, write, read and take each message | {receive:.1} |");
}

/// The hub's work on `read` (frames from the sender to the receiver, `messages` in all):
/// route them to the receiver's outbox and hand that to its writer, which is done at once.
fn route_per_message(hub: &mut Hub, now: Instant, read: &[u8], messages: usize) -> f64 {
    let found = found_in(
        &mut FrameDecoder::new(MIN_FRAME, 1 << 20, Some(SENDER)),
        read,
    );
    let delivered = hub.stats().delivered;
    let route = per_message(messages, || {
        hub.receive(1, read, &found, Damage::default(), now);
        for (conn, batch) in hub.take_writes() {
            let written = batch.len();
            drop(batch);
            hub.written(conn, written, now);
        }
    });
    assert_eq!(
        (hub.stats().delivered - delivered) as usize,
        messages * ROUNDS * READS_PER_ROUND
    );
    route
}

/// The sending client's work: `messages` messages queued to the name `sink` (in batches of
/// up to `batch_bytes`; 0: a frame each) and written to one end of a socket pair at once
/// (the other end is drained, in the same thread).
fn send_per_message(messages: usize, batch_bytes: usize) -> f64 {
    let (client_end, mut hub_end) = UnixStream::pair().expect("a socket pair");
    let options = ClientOptions {
        batch_bytes,
        ..ClientOptions::default()
    };
    let mut client = Client::from_stream(client_end, options);
    // The body's length is hidden from the compiler, as a program's usually is: a known
    // 64 bytes would be copied inline, which a real sender does not get.
    let body = black_box(vec![0xa5u8; 64]);
    let mut drain = vec![0u8; 2 * READ];
    per_message(messages, || {
        for _ in 0..messages {
            client.queue("sink", &body);
        }
        let mut left = client.queued_bytes();
        client.flush().expect("write");
        while left > 0 {
            left -= hub_end.read(&mut drain).expect("read");
        }
    })
}

/// The messages of [`one_read`] in `Batch` frames of up to the client's default size.
fn batched_read() -> BytesMut {
    let body = [0xa5u8; 64];
    let frame_room = ClientOptions::default().batch_bytes - MIN_FRAME - "sink".len();
    let per_batch = frame_room / (batch::ENTRY_HEADER + body.len());
    let messages = frames_in(&one_read()).len();
    let mut read = BytesMut::new();
    let mut corr = 1;
    for first in (0..messages).step_by(per_batch) {
        let count = per_batch.min(messages - first);
        let mut entries = BytesMut::new();
        for _ in 0..count {
            batch::append(&mut entries, &body);
        }
        Envelope {
            corr,
            arg: count as u32,
            name: "sink",
            body: &entries,
            ..Envelope::new(Kind::Batch)
        }
        .write(&mut read, SENDER);
        corr += count as u64;
    }
    read
}

/// The receiving client's work: `read` (what the hub forwards) written into one end of a
/// socket pair and taken message by message from the other with [`Client::recv`].
fn receive_per_message(read: &[u8], messages: usize) -> f64 {
    let (mut hub_end, client_end) = UnixStream::pair().expect("a socket pair");
    let options = ClientOptions {
        inbox_max: 1 << 20,
        ..ClientOptions::default()
    };
    let mut client = Client::from_stream(client_end, options);
    per_message(messages, || {
        hub_end.write_all(read).expect("write");
        for _ in 0..messages {
            match client.recv().expect("a message") {
                Incoming::Message(message) => {
                    black_box(message);
                }
                other => panic!("unexpected {other:?}"),
            }
        }
    })
}

/// 64-byte messages from [`SENDER`] to the name `sink`, filling one read.
fn one_read() -> BytesMut {
    let body = [0xa5u8; 64];
    let mut read = BytesMut::new();
    let mut corr = 0;
    while read.len() + MIN_FRAME + 4 + body.len() <= READ {
        corr += 1;
        let message = Envelope {
            corr,
            name: "sink",
            body: &body,
            ..Envelope::new(Kind::Send)
        };
        message.write(&mut read, SENDER);
    }
    read
}

/// `(offset, length)` of every frame in `read`.
fn frames_in(read: &[u8]) -> Vec<(usize, usize)> {
    let mut frames = Vec::new();
    let mut at = 0;
    while at < read.len() {
        let length = u32::from_le_bytes(read[at..at + 4].try_into().expect("a header")) as usize;
        frames.push((at, length));
        at += length;
    }
    frames
}

/// What a connection's reader hands the hub for `read`.
fn found_in(decoder: &mut FrameDecoder, read: &[u8]) -> Vec<(usize, Found)> {
    let mut found = Vec::new();
    let at = decoder.scan_read(read, &mut found);
    assert_eq!(at, read.len(), "the read is whole frames");
    found
}

/// A hub with the sender (connection 1) and the receiver `sink` (connection 2) registered.
fn hub_with_two_clients() -> (Hub, Instant) {
    let now = Instant::now();
    let mut hub = Hub::new(Limits::from_config(&IpcConfig::default()));
    for (conn, pid, name) in [(1, SENDER, ""), (2, RECEIVER, "sink")] {
        hub.connect(conn, Peer { pid, uid: 0 }, now);
        let register = Envelope {
            pid,
            corr: 1,
            name,
            ..Envelope::new(Kind::Register)
        }
        .to_frame(pid);
        let found = [(
            0,
            Found::Frame {
                pid,
                length: register.len(),
            },
        )];
        hub.receive(conn, &register, &found, Damage::default(), now);
    }
    for (conn, batch) in hub.take_writes() {
        hub.written(conn, batch.len(), now);
    }
    (hub, now)
}

/// CPU time of this thread, in nanoseconds: unlike the wall clock it does not count the
/// moments a busy machine gives the core to another process.
fn thread_cpu_ns() -> u64 {
    clock::clock_ns(libc::CLOCK_THREAD_CPUTIME_ID)
}

/// Median over [`ROUNDS`] of the CPU time `work` takes per message, `work` handling one read of
/// `messages` messages and running [`READS_PER_ROUND`] times a round.
fn per_message(messages: usize, mut work: impl FnMut()) -> f64 {
    let mut rounds: Vec<f64> = (0..ROUNDS)
        .map(|_| {
            let since = thread_cpu_ns();
            for _ in 0..READS_PER_ROUND {
                work();
            }
            (thread_cpu_ns() - since) as f64 / (READS_PER_ROUND * messages) as f64
        })
        .collect();
    rounds.sort_by(|a, b| a.partial_cmp(b).expect("numbers"));
    rounds[ROUNDS / 2]
}
