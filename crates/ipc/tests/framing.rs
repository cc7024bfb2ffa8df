//! The frame decoder against damage: random garbage between valid frames, the stream cut
//! into random pieces. Every valid frame still arrives, in order, and nothing else does.

use bytes::BytesMut;
use proptest::prelude::*;
use troupe_ipc::wire::{Decoded, Envelope, FrameDecoder, Kind, MIN_FRAME};

/// Pids above every frame length used here, so a frame's length field never reads as the
/// expected pid.
const PID_RANGE: std::ops::Range<u32> = 70_000..4_000_000;

fn frame(pid: u32, corr: u64, body: &[u8]) -> Vec<u8> {
    Envelope {
        corr,
        name: "sink",
        body,
        ..Envelope::new(Kind::Send)
    }
    .to_frame(pid)
    .to_vec()
}

/// A pid; (garbage, body) pairs, each garbage followed by a frame with the body; the sizes
/// of the pieces the stream arrives in.
type Stream = (u32, Vec<(Vec<u8>, Vec<u8>)>, Vec<usize>);

fn stream_strategy() -> impl Strategy<Value = Stream> {
    (
        PID_RANGE,
        prop::collection::vec(
            (
                prop::collection::vec(any::<u8>(), 0..200),
                prop::collection::vec(any::<u8>(), 0..300),
            ),
            1..40,
        ),
        prop::collection::vec(1usize..700, 1..50),
    )
}

/// Feeds `stream` in pieces of the given sizes, then ends it; returns the frames decoded.
fn decode(decoder: &mut FrameDecoder, stream: &[u8], pieces: &[usize]) -> Vec<Vec<u8>> {
    let mut buf = BytesMut::new();
    let mut got = Vec::new();
    let mut at = 0;
    let mut sizes = pieces.iter().cycle();
    while at < stream.len() {
        let end = (at + sizes.next().unwrap()).min(stream.len());
        buf.extend_from_slice(&stream[at..end]);
        at = end;
        while let Some(decoded) = decoder.decode(&mut buf) {
            match decoded {
                Decoded::Frame(f) => got.push(f.bytes.to_vec()),
                other => panic!("unexpected {other:?}"),
            }
        }
    }
    while let Some(decoded) = decoder.decode_eof(&mut buf) {
        match decoded {
            Decoded::Frame(f) => got.push(f.bytes.to_vec()),
            other => panic!("unexpected {other:?}"),
        }
    }
    got
}

proptest! {
    #![proptest_config(ProptestConfig {
        cases: 300,
        failure_persistence: None,
        ..ProptestConfig::default()
    })]

    #[test]
    fn every_valid_frame_arrives_in_order_through_garbage((pid, parts, pieces) in stream_strategy()) {
        let mut stream = Vec::new();
        let mut frames = Vec::new();
        let mut garbage_bytes = 0;
        for (i, (garbage, body)) in parts.iter().enumerate() {
            stream.extend_from_slice(garbage);
            garbage_bytes += garbage.len();
            let f = frame(pid, i as u64, body);
            stream.extend_from_slice(&f);
            frames.push(f);
        }
        // As the hub reads: only the connection's own pid starts a frame.
        let mut hub_side = FrameDecoder::new(MIN_FRAME, 1 << 20, Some(pid));
        prop_assert_eq!(&decode(&mut hub_side, &stream, &pieces), &frames);
        prop_assert_eq!(hub_side.damage().skipped_bytes, garbage_bytes as u64);

        // As a client reads: any pid, trusting length and checksum alone.
        let mut client_side = FrameDecoder::new(MIN_FRAME, 1 << 20, None);
        prop_assert_eq!(&decode(&mut client_side, &stream, &pieces), &frames);
    }

    #[test]
    fn a_flipped_bit_loses_only_its_own_frame(
        pid in PID_RANGE,
        bodies in prop::collection::vec(prop::collection::vec(any::<u8>(), 0..100), 2..20),
        victim in any::<prop::sample::Index>(),
        bit in 0u8..8,
        offset in any::<prop::sample::Index>(),
    ) {
        let frames: Vec<Vec<u8>> = bodies.iter().enumerate().map(|(i, b)| frame(pid, i as u64, b)).collect();
        let victim = victim.index(frames.len());
        let mut damaged = frames.clone();
        // Any bit after the length field: the pid is covered by the checksum, the checksum
        // by itself. (A damaged length is covered too, but a longer one is only found out
        // once that many bytes have arrived, or is taken for an oversized frame.)
        let at = 4 + offset.index(damaged[victim].len() - 4);
        damaged[victim][at] ^= 1 << bit;
        let stream: Vec<u8> = damaged.concat();
        let mut decoder = FrameDecoder::new(MIN_FRAME, 1 << 20, Some(pid));
        let got = decode(&mut decoder, &stream, &[64]);
        let mut expected = frames.clone();
        expected.remove(victim);
        prop_assert_eq!(got, expected);
        prop_assert_eq!(decoder.damage().skipped_bytes, frames[victim].len() as u64);
    }
}
