//! The frame: `u32 length | u32 sender pid | u32 checksum | payload`, little-endian.
//!
//! `length` counts the whole frame, header included. The checksum is the CRC-32 (IEEE, as
//! zlib's `crc32`) of the header's first eight bytes followed by the payload, so the length
//! and the pid are protected too, and a frame can be forwarded byte for byte without being
//! re-encoded.
//!
//! [`FrameDecoder`] cuts frames out of a byte stream. Like the seed's decoder it treats
//! anything that is not a valid frame as damage: it skips one byte and tries again, so the
//! stream resynchronises on the next valid frame, and it counts what it skipped.

use bytes::{Buf, Bytes, BytesMut};

use super::crc;

/// Bytes before the payload.
pub const HEADER_LEN: usize = 12;

/// The checksum of a frame whose header starts with `head` (length and pid) and whose
/// payload is `payload`.
#[inline]
pub fn checksum(head: &[u8], payload: &[u8]) -> u32 {
    crc::update(crc::update(0, head), payload)
}

/// Computes frames' checksums, remembering the share of the last header: the frames of one
/// stream usually repeat their first eight bytes (one sender, often one size), and that share
/// need not be computed again.
#[derive(Debug, Clone, Default)]
pub struct Checksums {
    head: [u8; 8],
    /// The checksum of `head` alone, when `head` is set.
    head_crc: Option<u32>,
}

impl Checksums {
    /// The checksum of the whole frame `frame` (its checksum field is not read). Bytes too
    /// few for a header are no frame: their checksum is that of what there is.
    #[inline]
    pub fn of(&mut self, frame: &[u8]) -> u32 {
        let Some(head) = frame
            .first_chunk::<8>()
            .filter(|_| frame.len() >= HEADER_LEN)
        else {
            return checksum(frame, &[]);
        };
        let head_crc = match self.head_crc {
            Some(head_crc) if *head == self.head => head_crc,
            _ => {
                let head_crc = crc::update(0, head);
                self.head = *head;
                self.head_crc = Some(head_crc);
                head_crc
            }
        };
        crc::update(head_crc, &frame[HEADER_LEN..])
    }
}

/// Fills in the checksum of the one frame that `frame` holds.
pub fn seal(frame: &mut [u8]) {
    let crc = checksum(&frame[..8], &frame[HEADER_LEN..]);
    frame[8..HEADER_LEN].copy_from_slice(&crc.to_le_bytes());
}

/// Fills in the checksum of every frame in `frames`, which holds whole frames written
/// unsealed (their length fields are right).
pub fn seal_frames(frames: &mut [u8]) {
    let mut sums = Checksums::default();
    let mut at = 0;
    while frames.len() - at >= HEADER_LEN {
        let length = (read_u32(frames, at) as usize).clamp(HEADER_LEN, frames.len() - at);
        let crc = sums.of(&frames[at..at + length]);
        frames[at + 8..at + HEADER_LEN].copy_from_slice(&crc.to_le_bytes());
        at += length;
    }
}

/// Appends one frame to `out`: the header, then whatever `write_payload` appends.
pub fn write_frame(out: &mut BytesMut, pid: u32, write_payload: impl FnOnce(&mut BytesMut)) {
    let start = out.len();
    out.extend_from_slice(&[0; HEADER_LEN]);
    write_payload(out);
    let length = (out.len() - start) as u32;
    out[start..start + 4].copy_from_slice(&length.to_le_bytes());
    out[start + 4..start + 8].copy_from_slice(&pid.to_le_bytes());
    seal(&mut out[start..]);
}

/// One whole, verified frame.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Frame {
    /// The sender pid from the header.
    pub pid: u32,
    /// The whole frame, header included, exactly as received.
    pub bytes: Bytes,
}

impl Frame {
    /// The bytes after the header.
    pub fn payload(&self) -> &[u8] {
        &self.bytes[HEADER_LEN..]
    }
}

/// What the decoder found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decoded {
    /// A valid frame.
    Frame(Frame),
    /// A valid frame carrying another pid than the expected one: a process speaking as
    /// another.
    Foreign(Frame),
    /// A header from the expected sender announcing a frame longer than the limit. The stream
    /// cannot continue: the peer is not speaking within the limits.
    Oversize {
        /// The announced length.
        length: u32,
    },
}

/// Where the next frame is, as [`FrameDecoder::locate`] found it at the start of the buffer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Found {
    /// A valid frame of `length` bytes from `pid`.
    Frame {
        /// The header's pid.
        pid: u32,
        /// The frame's length.
        length: usize,
    },
    /// A valid frame from another pid than the expected one.
    Foreign {
        /// The header's pid.
        pid: u32,
        /// The frame's length.
        length: usize,
    },
    /// A frame over the limit; see [`Decoded::Oversize`].
    Oversize {
        /// The announced length.
        length: u32,
    },
}

/// Counters of damage seen by a decoder.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Damage {
    /// Bytes skipped because they did not start a valid frame.
    pub skipped_bytes: u64,
    /// Times the decoder lost and found the frame boundary again (runs of skipped bytes).
    pub resyncs: u64,
}

/// Cuts frames out of a byte stream; see the module doc.
#[derive(Debug, Clone)]
pub struct FrameDecoder {
    min_frame: usize,
    max_frame: usize,
    expected_pid: Option<u32>,
    verify_checksums: bool,
    sums: Checksums,
    damage: Damage,
    skipping: bool,
}

impl FrameDecoder {
    /// A decoder for frames of `min_frame..=max_frame` bytes.
    ///
    /// With `expected_pid`, only a header carrying that pid can start a frame: random damage
    /// then almost never looks like a header, so the decoder neither waits for data a garbage
    /// length announces nor mistakes garbage for an oversized frame.
    pub fn new(min_frame: usize, max_frame: usize, expected_pid: Option<u32>) -> Self {
        FrameDecoder {
            min_frame: min_frame.max(HEADER_LEN),
            max_frame,
            expected_pid,
            verify_checksums: true,
            sums: Checksums::default(),
            damage: Damage::default(),
            skipping: false,
        }
    }

    /// The same decoder taking checksums on trust: for a stream whose writer only sends frames
    /// it built or verified itself (what the hub sends its clients), where recomputing them
    /// would find nothing. Lengths are still checked against the limits.
    pub fn trusting_checksums(mut self) -> Self {
        self.verify_checksums = false;
        self
    }

    /// Whether `frame`'s checksum is right (or taken on trust).
    #[inline]
    fn checksum_ok(&mut self, frame: &[u8]) -> bool {
        !self.verify_checksums || read_u32(frame, 8) == self.sums.of(frame)
    }

    /// Damage seen so far.
    pub fn damage(&self) -> Damage {
        self.damage
    }

    /// The next frame in `buf`, removing it and any damage before it; `None` when more bytes
    /// are needed.
    pub fn decode(&mut self, buf: &mut BytesMut) -> Option<Decoded> {
        let found = self.locate(buf, false)?;
        Some(Self::take(buf, found))
    }

    /// Like [`decode`](Self::decode), at the end of the stream: a header whose frame cannot
    /// complete any more is damage too.
    pub fn decode_eof(&mut self, buf: &mut BytesMut) -> Option<Decoded> {
        match self.locate(buf, true) {
            Some(found) => Some(Self::take(buf, found)),
            None => {
                if !buf.is_empty() {
                    let all = self.skip(buf.len());
                    buf.advance(all);
                }
                None
            }
        }
    }

    /// Removes the damage before the next frame in `buf` and says where that frame is,
    /// leaving it at the start of `buf`; `None` when more bytes are needed. For readers that
    /// take what they need from the frame in place and then advance past it.
    pub fn locate(&mut self, buf: &mut BytesMut, eof: bool) -> Option<Found> {
        self.next(buf, eof)
    }

    fn take(buf: &mut BytesMut, found: Found) -> Decoded {
        match found {
            Found::Frame { pid, length } => Decoded::Frame(Frame {
                pid,
                bytes: buf.split_to(length).freeze(),
            }),
            Found::Foreign { pid, length } => Decoded::Foreign(Frame {
                pid,
                bytes: buf.split_to(length).freeze(),
            }),
            Found::Oversize { length } => Decoded::Oversize { length },
        }
    }

    /// How many bytes `buf` must hold before the frame at its start can be checked.
    pub fn wanted(&self, buf: &[u8]) -> usize {
        if buf.len() < HEADER_LEN {
            return HEADER_LEN;
        }
        let length = read_u32(buf, 0) as usize;
        length.clamp(HEADER_LEN, self.max_frame)
    }

    fn next(&mut self, buf: &mut BytesMut, eof: bool) -> Option<Found> {
        let (skipped, found) = self.scan(buf, eof);
        buf.advance(skipped);
        found
    }

    /// Looks for the next frame in `buf` without consuming anything: returns how many bytes
    /// of damage come before it (all of `buf` that cannot start a frame when there is none
    /// yet) and the frame, which then starts at that offset. Damage is counted here, so
    /// the caller must not scan the same damage twice.
    #[inline]
    pub fn scan(&mut self, buf: &[u8], eof: bool) -> (usize, Option<Found>) {
        // The common case, kept small enough to inline: a whole valid frame right here.
        if let Some((pid, length)) = self.frame_at_start(buf) {
            return (0, Some(Found::Frame { pid, length }));
        }
        self.scan_slow(buf, eof)
    }

    /// `(pid, length)` of a valid frame from the expected sender (any sender without one)
    /// that starts `buf` and is whole in it; `None` leaves everything else to
    /// [`scan`](Self::scan).
    #[inline]
    pub fn frame_at_start(&mut self, buf: &[u8]) -> Option<(u32, usize)> {
        if buf.len() < HEADER_LEN {
            return None;
        }
        let length = read_u32(buf, 0) as usize;
        let pid = read_u32(buf, 4);
        if length < self.min_frame
            || length > self.max_frame
            || buf.len() < length
            || self.expected_pid.is_some_and(|p| p != pid)
            || !self.checksum_ok(&buf[..length])
        {
            return None;
        }
        self.skipping = false;
        Some((pid, length))
    }

    #[inline(never)]
    fn scan_slow(&mut self, buf: &[u8], eof: bool) -> (usize, Option<Found>) {
        let mut at = 0;
        loop {
            let rest = &buf[at..];
            if rest.len() < HEADER_LEN {
                return (at, None);
            }
            let length = read_u32(rest, 0) as usize;
            let pid = read_u32(rest, 4);
            if length < self.min_frame {
                at += self.skip(1);
                continue;
            }
            if self.expected_pid.is_some_and(|p| p != pid) {
                // Only a frame already whole in the buffer is recognised as another pid's:
                // waiting for the length such a header announces would let damage hold up
                // the stream.
                if length <= self.max_frame
                    && rest.len() >= length
                    && self.checksum_ok(&rest[..length])
                {
                    self.skipping = false;
                    return (at, Some(Found::Foreign { pid, length }));
                }
                at += self.skip(1);
                continue;
            }
            if length > self.max_frame {
                if self.expected_pid.is_some() {
                    let length = length as u32;
                    return (at, Some(Found::Oversize { length }));
                }
                at += self.skip(1);
                continue;
            }
            if rest.len() < length {
                if eof {
                    at += self.skip(1);
                    continue;
                }
                return (at, None);
            }
            if !self.checksum_ok(&rest[..length]) {
                at += self.skip(1);
                continue;
            }
            self.skipping = false;
            return (at, Some(Found::Frame { pid, length }));
        }
    }

    /// Counts `n` bytes of damage; returns `n`.
    fn skip(&mut self, n: usize) -> usize {
        if !self.skipping {
            self.skipping = true;
            self.damage.resyncs += 1;
        }
        self.damage.skipped_bytes += n as u64;
        n
    }
}

#[inline]
fn read_u32(buf: &[u8], at: usize) -> u32 {
    u32::from_le_bytes([buf[at], buf[at + 1], buf[at + 2], buf[at + 3]])
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frame(pid: u32, payload: &[u8]) -> Bytes {
        let mut out = BytesMut::new();
        write_frame(&mut out, pid, |b| b.extend_from_slice(payload));
        out.freeze()
    }

    fn decode_all(decoder: &mut FrameDecoder, bytes: &[u8]) -> Vec<Decoded> {
        let mut buf = BytesMut::from(bytes);
        let mut out = Vec::new();
        while let Some(d) = decoder.decode_eof(&mut buf) {
            out.push(d);
        }
        out
    }

    #[test]
    fn header_layout_matches_the_doc() {
        let f = frame(0x01020304, b"hello");
        assert_eq!(&f[0..4], &17u32.to_le_bytes());
        assert_eq!(&f[4..8], &[4, 3, 2, 1]);
        let mut crc = crc32fast::Hasher::new();
        crc.update(&f[0..8]);
        crc.update(b"hello");
        assert_eq!(&f[8..12], &crc.finalize().to_le_bytes());
        assert_eq!(&f[12..], b"hello");
    }

    #[test]
    fn round_trip_in_pieces() {
        let frames: Vec<Bytes> = (0..50u32)
            .map(|i| frame(7, &vec![i as u8; i as usize * 3]))
            .collect();
        let stream: Vec<u8> = frames.iter().flat_map(|f| f.to_vec()).collect();
        let mut decoder = FrameDecoder::new(HEADER_LEN, 1 << 20, Some(7));
        let mut buf = BytesMut::new();
        let mut got = Vec::new();
        for chunk in stream.chunks(5) {
            buf.extend_from_slice(chunk);
            while let Some(Decoded::Frame(f)) = decoder.decode(&mut buf) {
                got.push(f.bytes);
            }
        }
        assert_eq!(got, frames);
        assert_eq!(decoder.damage(), Damage::default());
    }

    #[test]
    fn a_corrupt_frame_is_skipped_and_counted() {
        let good1 = frame(9, b"one");
        let mut bad = frame(9, b"two").to_vec();
        bad[13] ^= 0xff;
        let good2 = frame(9, b"three");
        let stream = [good1.to_vec(), bad.clone(), good2.to_vec()].concat();
        let mut decoder = FrameDecoder::new(HEADER_LEN, 1024, Some(9));
        let got = decode_all(&mut decoder, &stream);
        assert_eq!(
            got,
            vec![
                Decoded::Frame(Frame {
                    pid: 9,
                    bytes: good1
                }),
                Decoded::Frame(Frame {
                    pid: 9,
                    bytes: good2
                })
            ]
        );
        assert_eq!(decoder.damage().skipped_bytes, bad.len() as u64);
        assert_eq!(decoder.damage().resyncs, 1);
    }

    #[test]
    fn oversize_from_the_expected_pid_is_reported() {
        let big = frame(9, &[0; 100]);
        let mut decoder = FrameDecoder::new(HEADER_LEN, 64, Some(9));
        let mut buf = BytesMut::from(&big[..HEADER_LEN]);
        assert_eq!(
            decoder.decode(&mut buf),
            Some(Decoded::Oversize { length: 112 })
        );
        // Without an expected pid an oversized header is indistinguishable from damage.
        let mut decoder = FrameDecoder::new(HEADER_LEN, 64, None);
        let got = decode_all(&mut decoder, &big);
        assert!(got.is_empty());
        assert_eq!(decoder.damage().skipped_bytes, big.len() as u64);
    }

    #[test]
    fn a_whole_frame_from_another_pid_is_reported_as_foreign() {
        let other = frame(10, b"x");
        let mine = frame(9, b"y");
        let stream = [other.to_vec(), mine.to_vec()].concat();
        let mut decoder = FrameDecoder::new(HEADER_LEN, 1024, Some(9));
        let got = decode_all(&mut decoder, &stream);
        assert_eq!(
            got,
            vec![
                Decoded::Foreign(Frame {
                    pid: 10,
                    bytes: other.clone()
                }),
                Decoded::Frame(Frame {
                    pid: 9,
                    bytes: mine
                })
            ]
        );
        // Half of one is only damage: the decoder does not wait on another pid's header.
        let mut buf = BytesMut::from(&other[..other.len() - 1]);
        assert_eq!(decoder.decode(&mut buf), None);
        assert_eq!(decoder.damage().skipped_bytes, 1);
    }

    #[test]
    fn a_trusting_decoder_skips_the_checksum_but_not_the_limits() {
        let mut wrong = frame(0, b"from the hub").to_vec();
        wrong[8] ^= 0xff;
        let checking = decode_all(&mut FrameDecoder::new(HEADER_LEN, 64, None), &wrong);
        assert!(checking.is_empty(), "a checking decoder sees damage");
        let mut trusting = FrameDecoder::new(HEADER_LEN, 64, None).trusting_checksums();
        let got = decode_all(&mut trusting, &wrong);
        assert_eq!(got.len(), 1);
        assert_eq!(trusting.damage(), Damage::default());
        let too_long = frame(0, &[0; 100]);
        let mut trusting = FrameDecoder::new(HEADER_LEN, 64, None).trusting_checksums();
        assert!(decode_all(&mut trusting, &too_long).is_empty());
        assert_eq!(trusting.damage().skipped_bytes, too_long.len() as u64);
    }

    #[test]
    fn checksums_remembering_the_header_match_the_plain_ones() {
        let mut sums = Checksums::default();
        for (pid, payload) in [(1, &b"a"[..]), (1, b"b"), (2, b"b"), (2, b"longer payload")] {
            let f = frame(pid, payload);
            assert_eq!(sums.of(&f), checksum(&f[..8], &f[HEADER_LEN..]));
            assert_eq!(sums.of(&f), read_u32(&f, 8));
        }
        assert_eq!(
            sums.of(b"short"),
            crc32fast::hash(b"short"),
            "no panic on a short slice"
        );
    }

    #[test]
    fn sealing_fills_in_each_frames_checksum() {
        let mut frames = [frame(7, b"one").to_vec(), frame(7, b"three").to_vec()].concat();
        let sealed = frames.clone();
        frames[8..12].fill(0);
        frames[23..27].fill(0);
        seal_frames(&mut frames);
        assert_eq!(frames, sealed);
    }

    #[test]
    fn wanted_is_bounded_by_the_limit() {
        let decoder = FrameDecoder::new(HEADER_LEN, 100, None);
        assert_eq!(decoder.wanted(&[1, 2]), HEADER_LEN);
        let mut head = [0u8; HEADER_LEN];
        head[0..4].copy_from_slice(&50u32.to_le_bytes());
        assert_eq!(decoder.wanted(&head), 50);
        head[0..4].copy_from_slice(&u32::MAX.to_le_bytes());
        assert_eq!(decoder.wanted(&head), 100);
    }
}
