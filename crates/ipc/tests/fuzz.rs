//! Fuzz targets, as property tests: arbitrary bytes and arbitrary frame sequences into the
//! frame decoder, the envelope and batch parsers and the hub core. Nothing panics, buffers
//! stay within their documented limits, the work spent is linear in the input, and every
//! input gets the answer `docs/protocols/ipc.md` gives it.
//!
//! The files in `tests/fuzz_corpus/` always run. Then a modest number of generated cases
//! run; with `TROUPE_FUZZ_SECS=N` set, cases are generated for N seconds instead
//! (`make fuzz`: `TROUPE_FUZZ_SECS=60 cargo test --release -p troupe-ipc --test fuzz`).

use std::path::PathBuf;
use std::time::{Duration, Instant};

use bytes::BytesMut;
use proptest::prelude::*;
use proptest::test_runner::{Config, TestCaseError, TestRunner};
use troupe_ipc::hub::{ConnId, Effect, Hub, Limits, Peer};
use troupe_ipc::wire::batch;
use troupe_ipc::wire::envelope::{RawEnvelope, ENVELOPE_LEN};
use troupe_ipc::wire::frame::{Damage, Found, HEADER_LEN};
use troupe_ipc::wire::{Envelope, ErrorCode, FrameDecoder, Kind, MIN_FRAME};
use troupe_ipc::IpcConfig;

/// Small limits, so that generated inputs reach them.
const MAX_FRAME: usize = 4096;
const DAMAGE_LIMIT: u64 = 8192;
/// The pid of the fuzzed connection (and of most generated headers).
const PID: u32 = 4242;
const OTHER_PID: u32 = 777;

// ---- the frame decoder ----

/// Feeds `input` in pieces of `piece` bytes to a hub-side decoder the way the hub's reader
/// does, checking each read's findings. Returns the frames found, for the hub target.
fn decode_like_the_hub(input: &[u8], piece: usize) -> Result<Vec<Found>, TestCaseError> {
    let mut decoder =
        FrameDecoder::new(MIN_FRAME, MAX_FRAME, Some(PID)).with_damage_limit(DAMAGE_LIMIT);
    let mut buf = BytesMut::new();
    let mut consumed = 0usize;
    let mut frames_bytes = 0usize;
    let mut all = Vec::new();
    for chunk in input.chunks(piece.max(1)) {
        buf.extend_from_slice(chunk);
        let mut found = Vec::new();
        let at = decoder.scan_read(&buf, &mut found);
        prop_assert!(at <= buf.len());
        let mut end = 0;
        for &(start, item) in &found {
            prop_assert!(start >= end, "findings in order");
            match item {
                Found::Frame { pid, length } => {
                    // The documented answer: only whole, valid frames of the sender.
                    prop_assert_eq!(pid, PID);
                    prop_assert!((MIN_FRAME..=MAX_FRAME).contains(&length));
                    let frame = &buf[start..start + length];
                    prop_assert_eq!(read_u32(frame, 0) as usize, length);
                    let sum = troupe_ipc::wire::frame::checksum(&frame[..8], &frame[HEADER_LEN..]);
                    prop_assert_eq!(read_u32(frame, 8), sum);
                    frames_bytes += length;
                    end = start + length;
                }
                Found::Foreign { pid, length } => {
                    prop_assert!(pid != PID);
                    prop_assert!(length <= MAX_FRAME);
                    frames_bytes += length;
                    end = start + length;
                }
                Found::Oversize { length } => {
                    prop_assert!(length as usize > MAX_FRAME);
                    prop_assert_eq!(read_u32(&buf[start..], 4), PID);
                }
                Found::Damaged => prop_assert!(decoder.damage().cost() > DAMAGE_LIMIT),
            }
            all.push(item);
        }
        consumed += at;
        buf = buf.split_off(at);
        let damage = decoder.damage();
        // Bytes are frames or counted damage, nothing else.
        prop_assert_eq!(consumed as u64, frames_bytes as u64 + damage.skipped_bytes);
        // Bounded work: the damage budget holds within one longest frame, and the checksum
        // work is linear in the input.
        prop_assert!(
            damage.cost() <= DAMAGE_LIMIT + MAX_FRAME as u64 + 1,
            "{:?}",
            damage
        );
        prop_assert!(
            decoder.checked_bytes() <= 4 * (consumed as u64 + DAMAGE_LIMIT + MAX_FRAME as u64),
            "checked {} bytes for {consumed}",
            decoder.checked_bytes()
        );
        if matches!(all.last(), Some(Found::Oversize { .. } | Found::Damaged)) {
            // The reader stops here.
            break;
        }
        // Bounded memory: what is kept for the next read is less than one longest frame.
        prop_assert!(buf.len() < MAX_FRAME, "kept {} bytes", buf.len());
    }
    Ok(all)
}

/// A client-side decoder (no expected pid, checksums checked or trusted): no panic, frames
/// within the limit, bytes accounted for.
fn decode_like_a_client(input: &[u8], piece: usize, verify: bool) -> Result<(), TestCaseError> {
    let mut decoder = FrameDecoder::new(MIN_FRAME, MAX_FRAME, None);
    if !verify {
        decoder = decoder.trusting_checksums();
    }
    let mut buf = BytesMut::new();
    let mut out = 0u64;
    for chunk in input.chunks(piece.max(1)) {
        buf.extend_from_slice(chunk);
        while let Some(decoded) = decoder.decode(&mut buf) {
            match decoded {
                troupe_ipc::wire::Decoded::Frame(f) => {
                    prop_assert!((MIN_FRAME..=MAX_FRAME).contains(&f.bytes.len()));
                    out += f.bytes.len() as u64;
                }
                other => prop_assert!(false, "a client decoder found {:?}", other),
            }
        }
        prop_assert!(buf.len() < MAX_FRAME);
    }
    while let Some(decoded) = decoder.decode_eof(&mut buf) {
        if let troupe_ipc::wire::Decoded::Frame(f) = decoded {
            out += f.bytes.len() as u64;
        }
    }
    prop_assert!(buf.is_empty());
    prop_assert_eq!(out + decoder.damage().skipped_bytes, input.len() as u64);
    Ok(())
}

// ---- envelopes and batches ----

fn parse_envelope(payload: &[u8]) -> Result<(), TestCaseError> {
    match RawEnvelope::parse(payload) {
        Ok(raw) => {
            prop_assert!(payload.len() >= ENVELOPE_LEN);
            prop_assert!(ENVELOPE_LEN + raw.name.len() + raw.body.len() == payload.len());
            if let Ok(env) = Envelope::parse(payload) {
                // What parses writes back to the same bytes.
                let again = env.to_frame(PID);
                prop_assert_eq!(&again[HEADER_LEN..], payload);
            }
        }
        Err(_) => prop_assert!(Envelope::parse(payload).is_err()),
    }
    Ok(())
}

fn parse_batch(body: &[u8], count: u32) -> Result<(), TestCaseError> {
    let entries: Vec<&[u8]> = batch::Entries::new(body).take(2000).collect();
    if batch::check(body, count).is_ok() {
        prop_assert!((1..=batch::MAX_BATCH_MESSAGES).contains(&count));
        prop_assert_eq!(entries.len(), count as usize);
        let total: usize = entries.iter().map(|m| m.len() + batch::ENTRY_HEADER).sum();
        prop_assert_eq!(total, body.len());
    }
    Ok(())
}

// ---- the hub core ----

struct HubBench {
    hub: Hub,
    now: Instant,
    closed: Vec<ConnId>,
}

/// What the hub said to a connection: (frame pid, kind, corr, arg).
type Said = Vec<(u32, Kind, u64, u32)>;

impl HubBench {
    fn new() -> HubBench {
        let config = IpcConfig::default();
        let mut limits = Limits::from_config(&config);
        limits.max_frame_bytes = MAX_FRAME;
        limits.max_damage_bytes = DAMAGE_LIMIT;
        limits.mailbox_max_bytes = 4 * MAX_FRAME;
        limits.mailbox_total_bytes = 8 * MAX_FRAME;
        let mut hub = Hub::new(limits);
        let now = Instant::now();
        hub.connect(
            1,
            Peer {
                pid: PID,
                uid: 1000,
            },
            now,
        );
        hub.connect(
            2,
            Peer {
                pid: OTHER_PID,
                uid: 1000,
            },
            now,
        );
        HubBench {
            hub,
            now,
            closed: Vec::new(),
        }
    }

    /// Writes out everything queued; returns what went to `conn`.
    fn pump(&mut self, conn: ConnId) -> Result<Said, TestCaseError> {
        let mut said = Vec::new();
        loop {
            let writes = self.hub.take_writes();
            if writes.is_empty() {
                break;
            }
            for (to, bytes) in writes {
                let mut rest = &bytes[..];
                while !rest.is_empty() {
                    let length = read_u32(rest, 0) as usize;
                    prop_assert!(length >= MIN_FRAME && length <= rest.len());
                    let env = Envelope::parse(&rest[HEADER_LEN..length])
                        .map_err(|e| TestCaseError::fail(format!("the hub wrote {e}")))?;
                    if to == conn {
                        said.push((read_u32(rest, 4), env.kind, env.corr, env.arg));
                    }
                    rest = &rest[length..];
                }
                self.hub.written(to, bytes.len(), self.now);
            }
        }
        for effect in self.hub.take_effects() {
            if let Effect::StopReading { conn } | Effect::Finish { conn } = effect {
                self.closed.push(conn);
            }
        }
        Ok(said)
    }

    /// Feeds what a decoder found in one read from `conn`, one item at a time, checking the
    /// hub's answer to each against the protocol.
    fn feed(
        &mut self,
        conn: ConnId,
        frames: &[u8],
        found: &[(usize, Found)],
    ) -> Result<(), TestCaseError> {
        let pid = if conn == 1 { PID } else { OTHER_PID };
        for &(at, item) in found {
            if self.closed.contains(&conn) {
                return Ok(());
            }
            let registered_before = self.registered(conn);
            self.hub
                .receive(conn, frames, &[(at, item)], Damage::default(), self.now);
            let said = self.pump(conn)?;
            let errors: Vec<_> = said
                .iter()
                .filter(|(sender, kind, ..)| *sender == 0 && *kind == Kind::Error)
                .collect();
            match item {
                Found::Frame { length, .. } => {
                    let frame = &frames[at..at + length];
                    let corr = read_u64(frame, HEADER_LEN + 8);
                    let span = match Envelope::parse(&frame[HEADER_LEN..]) {
                        Err(_) => {
                            prop_assert_eq!(errors.len(), 1, "one Malformed: {:?}", said);
                            prop_assert_eq!(ErrorCode::from_u32(errors[0].3), ErrorCode::Malformed);
                            1
                        }
                        Ok(env) => {
                            if !registered_before
                                && !matches!(env.kind, Kind::Register | Kind::Stats)
                            {
                                prop_assert_eq!(errors.len(), 1, "{:?}", said);
                                prop_assert_eq!(
                                    ErrorCode::from_u32(errors[0].3),
                                    ErrorCode::NotRegistered
                                );
                            }
                            if !registered_before && env.kind == Kind::Register && env.pid != pid {
                                prop_assert!(errors
                                    .iter()
                                    .any(|e| ErrorCode::from_u32(e.3) == ErrorCode::PidMismatch));
                            }
                            if env.kind == Kind::Batch {
                                u64::from(env.arg.max(1))
                            } else {
                                1
                            }
                        }
                    };
                    // Every answer carries the corr of the frame it answers (a batch's
                    // messages: corr + i).
                    for e in &errors {
                        prop_assert!(
                            e.2.wrapping_sub(corr) < span,
                            "error {:?} for a frame with corr {corr}",
                            e
                        );
                    }
                }
                Found::Foreign { length, .. } => {
                    let corr = read_u64(&frames[at..at + length], HEADER_LEN + 8);
                    prop_assert!(
                        errors
                            .iter()
                            .any(|e| e.2 == corr
                                && ErrorCode::from_u32(e.3) == ErrorCode::PidMismatch)
                    );
                    prop_assert!(self.closed.contains(&conn));
                }
                Found::Oversize { .. } => {
                    let corr = frames
                        .get(at + HEADER_LEN + 8..at + HEADER_LEN + 16)
                        .map_or(0, |b| u64::from_le_bytes(b.try_into().unwrap()));
                    prop_assert!(errors.iter().any(
                        |e| e.2 == corr && ErrorCode::from_u32(e.3) == ErrorCode::FrameTooLarge
                    ));
                    prop_assert!(self.closed.contains(&conn));
                }
                Found::Damaged => {
                    prop_assert!(errors
                        .iter()
                        .any(|e| e.2 == 0 && ErrorCode::from_u32(e.3) == ErrorCode::TooMuchDamage));
                    prop_assert!(self.closed.contains(&conn));
                }
            }
        }
        Ok(())
    }

    fn registered(&self, conn: ConnId) -> bool {
        self.hub
            .view(100)
            .connections
            .iter()
            .any(|c| c.registered && c.pid == if conn == 1 { PID } else { OTHER_PID })
    }
}

/// Runs `input` (one connection's byte stream) through the decoder and the hub.
fn hub_target(input: &[u8], piece: usize) -> Result<(), TestCaseError> {
    decode_like_the_hub(input, piece)?;
    let mut bench = HubBench::new();
    // The other connection registers, so that messages have somewhere to go.
    let register = Envelope {
        pid: OTHER_PID,
        corr: 1,
        name: "other",
        ..Envelope::new(Kind::Register)
    }
    .to_frame(OTHER_PID);
    let found = [(
        0,
        Found::Frame {
            pid: OTHER_PID,
            length: register.len(),
        },
    )];
    bench.feed(2, &register, &found)?;
    let mut decoder =
        FrameDecoder::new(MIN_FRAME, MAX_FRAME, Some(PID)).with_damage_limit(DAMAGE_LIMIT);
    let mut buf = BytesMut::new();
    for chunk in input.chunks(piece.max(1)) {
        buf.extend_from_slice(chunk);
        let mut found = Vec::new();
        let at = decoder.scan_read(&buf, &mut found);
        let keep = if matches!(found.last(), Some((_, Found::Oversize { .. }))) {
            (at + MIN_FRAME).min(buf.len())
        } else {
            at
        };
        let frames = buf.split_to(keep);
        bench.feed(1, &frames, &found)?;
        if bench.closed.contains(&1) {
            break;
        }
    }
    Ok(())
}

// ---- inputs ----

fn read_u32(buf: &[u8], at: usize) -> u32 {
    u32::from_le_bytes(buf[at..at + 4].try_into().unwrap())
}

fn read_u64(buf: &[u8], at: usize) -> u64 {
    u64::from_le_bytes(buf[at..at + 8].try_into().unwrap())
}

/// One generated piece of a stream.
#[derive(Debug, Clone)]
enum Piece {
    /// Arbitrary bytes.
    Garbage(Vec<u8>),
    /// A valid frame from `pid` with an arbitrary envelope.
    Frame {
        pid: u32,
        kind: u8,
        env_pid: u32,
        corr: u64,
        arg: u32,
        name: Vec<u8>,
        body: Vec<u8>,
    },
    /// A valid frame with one bit flipped.
    Damaged { at: usize, bit: u8, body: Vec<u8> },
    /// A forged header with the sender's pid and an arbitrary length.
    Forged(u32),
    /// A batch frame with arbitrary entries and count.
    Batch {
        count: u32,
        entries: Vec<Vec<u8>>,
        corr: u64,
    },
}

fn piece_strategy() -> impl Strategy<Value = Piece> {
    let kinds = prop::sample::select(vec![
        0x01u8, 0x02, 0x03, 0x04, 0x05, 0x06, 0x07, 0x10, 0x11, 0x12, 0x13, 0x20, 0x21, 0x40, 0x41,
        0x00, 0x99,
    ]);
    prop_oneof![
        prop::collection::vec(any::<u8>(), 0..64).prop_map(Piece::Garbage),
        (
            prop::sample::select(vec![PID, PID, PID, OTHER_PID]),
            kinds,
            prop::sample::select(vec![0, PID, OTHER_PID, 1]),
            any::<u64>(),
            prop_oneof![Just(0u32), 0..5u32, any::<u32>()],
            prop_oneof![
                Just(Vec::new()),
                Just(b"other".to_vec()),
                prop::collection::vec(any::<u8>(), 0..8)
            ],
            prop::collection::vec(any::<u8>(), 0..96),
        )
            .prop_map(|(pid, kind, env_pid, corr, arg, name, body)| Piece::Frame {
                pid,
                kind,
                env_pid,
                corr,
                arg,
                name,
                body
            }),
        (
            any::<usize>(),
            0..8u8,
            prop::collection::vec(any::<u8>(), 0..64)
        )
            .prop_map(|(at, bit, body)| Piece::Damaged { at, bit, body }),
        prop_oneof![
            Just(MAX_FRAME as u32),
            Just(MAX_FRAME as u32 + 1),
            0..200u32,
            any::<u32>()
        ]
        .prop_map(Piece::Forged),
        (
            0..6u32,
            prop::collection::vec(prop::collection::vec(any::<u8>(), 0..16), 0..6),
            any::<u64>()
        )
            .prop_map(|(count, entries, corr)| Piece::Batch {
                count,
                entries,
                corr
            }),
    ]
}

fn render(pieces: &[Piece]) -> Vec<u8> {
    let mut out = Vec::new();
    for piece in pieces {
        match piece {
            Piece::Garbage(bytes) => out.extend_from_slice(bytes),
            Piece::Frame {
                pid,
                kind,
                env_pid,
                corr,
                arg,
                name,
                body,
            } => {
                // Written by hand: the kind byte and the name may be anything.
                let length = MIN_FRAME + name.len() + body.len();
                let mut f = Vec::with_capacity(length);
                f.extend_from_slice(&(length as u32).to_le_bytes());
                f.extend_from_slice(&pid.to_le_bytes());
                f.extend_from_slice(&[0; 4]);
                f.extend_from_slice(&[1, *kind]);
                f.extend_from_slice(&(name.len() as u16).to_le_bytes());
                f.extend_from_slice(&env_pid.to_le_bytes());
                f.extend_from_slice(&corr.to_le_bytes());
                f.extend_from_slice(&arg.to_le_bytes());
                f.extend_from_slice(name);
                f.extend_from_slice(body);
                troupe_ipc::wire::frame::seal(&mut f);
                out.extend_from_slice(&f);
            }
            Piece::Damaged { at, bit, body } => {
                let mut f = Envelope {
                    pid: OTHER_PID,
                    corr: 5,
                    body,
                    ..Envelope::new(Kind::Send)
                }
                .to_frame(PID)
                .to_vec();
                let at = at % f.len();
                f[at] ^= 1 << bit;
                out.extend_from_slice(&f);
            }
            Piece::Forged(length) => {
                out.extend_from_slice(&length.to_le_bytes());
                out.extend_from_slice(&PID.to_le_bytes());
            }
            Piece::Batch {
                count,
                entries,
                corr,
            } => {
                let mut body = BytesMut::new();
                for e in entries {
                    batch::append(&mut body, e);
                }
                let f = Envelope {
                    name: "other",
                    corr: *corr,
                    arg: *count,
                    body: &body,
                    ..Envelope::new(Kind::Batch)
                }
                .to_frame(PID);
                out.extend_from_slice(&f);
            }
        }
    }
    out
}

/// Every target on one input.
fn all_targets(input: &[u8], piece: usize) -> Result<(), TestCaseError> {
    decode_like_a_client(input, piece, true)?;
    decode_like_a_client(input, piece, false)?;
    hub_target(input, piece)?;
    for at in [0, HEADER_LEN.min(input.len())] {
        parse_envelope(&input[at..])?;
    }
    for count in [0, 1, 2, 3, batch::MAX_BATCH_MESSAGES] {
        parse_batch(input, count)?;
    }
    Ok(())
}

// ---- the tests ----

fn corpus() -> Vec<(PathBuf, Vec<u8>)> {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fuzz_corpus");
    let mut files: Vec<_> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|e| e.unwrap().path())
        .filter(|p| p.is_file() && p.extension().is_some_and(|e| e == "bin"))
        .collect();
    files.sort();
    files
        .into_iter()
        .map(|p| {
            let bytes = std::fs::read(&p).unwrap();
            (p, bytes)
        })
        .collect()
}

#[test]
fn the_corpus_gets_the_documented_answers() {
    let files = corpus();
    assert!(files.len() >= 5, "the corpus is in tests/fuzz_corpus");
    for (path, bytes) in files {
        for piece in [1, 7, 64, 4096, usize::MAX] {
            all_targets(&bytes, piece)
                .unwrap_or_else(|e| panic!("{} in pieces of {piece}: {e}", path.display()));
        }
    }
}

/// How long to keep generating: `TROUPE_FUZZ_SECS`, else a fixed number of cases.
fn budget() -> Option<Duration> {
    let secs = std::env::var("TROUPE_FUZZ_SECS").ok()?;
    Some(Duration::from_secs(
        secs.trim().parse().expect("TROUPE_FUZZ_SECS: seconds"),
    ))
}

fn run(name: &str, cases: u32, strategy: impl Strategy<Value = (Vec<u8>, usize)>) {
    let test = |(input, piece): (Vec<u8>, usize)| all_targets(&input, piece);
    match budget() {
        None => {
            let mut runner = TestRunner::new(Config {
                cases,
                failure_persistence: None,
                ..Config::default()
            });
            if let Err(e) = runner.run(&strategy, test) {
                panic!("{name}: {e}");
            }
        }
        Some(secs) => {
            let end = Instant::now() + secs;
            let mut total = 0u64;
            while Instant::now() < end {
                let mut runner = TestRunner::new(Config {
                    cases: 64,
                    failure_persistence: None,
                    ..Config::default()
                });
                if let Err(e) = runner.run(&strategy, test) {
                    panic!("{name}: {e}");
                }
                total += 64;
            }
            eprintln!("{name}: {total} cases in {secs:?}");
        }
    }
}

#[test]
fn arbitrary_bytes() {
    run(
        "arbitrary_bytes",
        64,
        (prop::collection::vec(any::<u8>(), 0..2048), 1usize..600),
    );
}

#[test]
fn arbitrary_frame_sequences() {
    run(
        "arbitrary_frame_sequences",
        64,
        (prop::collection::vec(piece_strategy(), 0..40), 1usize..600)
            .prop_map(|(pieces, piece)| (render(&pieces), piece)),
    );
}
