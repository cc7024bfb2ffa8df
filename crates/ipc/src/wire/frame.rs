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
//!
//! Resynchronising costs work: each offset that could start a frame (a header whose length
//! is in range and, for the hub, whose pid is the sender's) is checksummed over its whole
//! announced length before it is known to be damage, and a sender can forge such headers
//! every few bytes. So the decoder keeps a **damage budget** ([`with_damage_limit`]
//! (FrameDecoder::with_damage_limit)): the bytes it skipped plus the bytes it checksummed in
//! vain ([`Damage::wasted_bytes`]). Past it, it reports [`Found::Damaged`] and looks no
//! further, so the work spent on a stream is linear in its length (each byte is examined
//! once as a possible header start, and checksummed at most four times as part of a frame,
//! as frames are checked four at a time) plus the budget plus one longest frame, whatever
//! the stream holds.

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

/// Fills in the checksum of the one frame that `frame` holds.
pub fn seal(frame: &mut [u8]) {
    let crc = crc::frame(frame);
    frame[8..HEADER_LEN].copy_from_slice(&crc.to_le_bytes());
}

/// Fills in the checksum of every frame in `frames`, which holds whole frames written
/// unsealed (their length fields are right).
pub fn seal_frames(frames: &mut [u8]) {
    // Four at a time, as the checksums of four frames can be computed together.
    let sums = crc::FrameSums::new();
    let mut group = [(0, 0); 4];
    let mut grouped = 0;
    let mut at = 0;
    while frames.len() - at >= HEADER_LEN {
        let length = (read_u32(frames, at) as usize).clamp(HEADER_LEN, frames.len() - at);
        group[grouped] = (at, length);
        grouped += 1;
        at += length;
        if grouped == 4 {
            // Element by element: a copy of the whole array would be made with vector
            // moves, which wait for the scalar writes just made to it.
            let frame = |i: usize| &frames[group[i].0..group[i].0 + group[i].1];
            let four = sums.four(&[frame(0), frame(1), frame(2), frame(3)]);
            for ((at, _), sum) in group.into_iter().zip(four) {
                frames[at + 8..at + HEADER_LEN].copy_from_slice(&sum.to_le_bytes());
            }
            grouped = 0;
        }
    }
    for &(at, length) in &group[..grouped] {
        let sum = sums.one(&frames[at..at + length]);
        frames[at + 8..at + HEADER_LEN].copy_from_slice(&sum.to_le_bytes());
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
    /// The stream sent more damage than the decoder's damage limit: the decoder looks no
    /// further (it reports this again on every call), and the reader should close it.
    Damaged,
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
    /// The damage budget is spent; see [`Decoded::Damaged`].
    Damaged,
}

/// Counters of damage seen by a decoder.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Damage {
    /// Bytes skipped because they did not start a valid frame.
    pub skipped_bytes: u64,
    /// Times the decoder lost and found the frame boundary again (runs of skipped bytes).
    pub resyncs: u64,
    /// Bytes checksummed for candidate frames whose checksum turned out wrong: the work that
    /// damage cost beyond skipping it.
    pub wasted_bytes: u64,
}

impl Damage {
    /// What `self` holds beyond `earlier` (a reader reports its damage in pieces).
    pub fn since(&self, earlier: &Damage) -> Damage {
        Damage {
            skipped_bytes: self.skipped_bytes - earlier.skipped_bytes,
            resyncs: self.resyncs - earlier.resyncs,
            wasted_bytes: self.wasted_bytes - earlier.wasted_bytes,
        }
    }

    /// Skipped plus wasted bytes: what the damage budget counts.
    pub fn cost(&self) -> u64 {
        self.skipped_bytes + self.wasted_bytes
    }
}

/// Cuts frames out of a byte stream; see the module doc.
#[derive(Debug, Clone)]
pub struct FrameDecoder {
    min_frame: usize,
    max_frame: usize,
    expected_pid: Option<u32>,
    verify_checksums: bool,
    sums: crc::FrameSums,
    damage: Damage,
    skipping: bool,
    damage_limit: u64,
    checked_bytes: u64,
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
            sums: crc::FrameSums::new(),
            damage: Damage::default(),
            skipping: false,
            damage_limit: u64::MAX,
            checked_bytes: 0,
        }
    }

    /// The same decoder giving up on a stream once its [`Damage::cost`] (bytes skipped plus
    /// bytes checksummed in vain) passes `limit`: it then finds only [`Found::Damaged`]. The
    /// work it spends on damage is at most `limit` plus one longest frame. Without this, the
    /// budget is unlimited (for a stream from a trusted writer).
    pub fn with_damage_limit(mut self, limit: u64) -> Self {
        self.damage_limit = limit;
        self
    }

    /// Bytes checksummed so far, for valid frames and damage alike: with the bytes skipped,
    /// the work this decoder did.
    pub fn checked_bytes(&self) -> u64 {
        self.checked_bytes
    }

    #[inline]
    fn over_budget(&self) -> bool {
        self.damage.cost() > self.damage_limit
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
        if !self.verify_checksums {
            return true;
        }
        self.checked_bytes += frame.len() as u64;
        let ok = read_u32(frame, 8) == self.sums.one(frame);
        if !ok {
            self.damage.wasted_bytes += frame.len() as u64;
        }
        ok
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
            Found::Damaged => Decoded::Damaged,
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

    /// Everything found in `buf`, appended to `found` with where it starts: frames and
    /// foreign frames, up to the end of the whole frames there, or up to and including an
    /// oversized one (after which the stream cannot go on). Returns how many bytes were
    /// scanned: the frames found and the damage between them, so the caller keeps
    /// `buf[returned..]` for the next read.
    pub fn scan_read(&mut self, buf: &[u8], found: &mut Vec<(usize, Found)>) -> usize {
        let mut run = [(0, 0); 4];
        let mut at = 0;
        loop {
            if self.over_budget() {
                found.push((at, Found::Damaged));
                return at;
            }
            let (whole, first_bad) = self.frames_at_start(&buf[at..], &mut run);
            if whole > 0 {
                for &(pid, length) in &run[..whole] {
                    found.push((at, Found::Frame { pid, length }));
                    at += length;
                }
                continue;
            }
            // A header whose frame failed its checksum just now is damage: it is not
            // checksummed again.
            let start = if first_bad { self.skip(1) } else { 0 };
            let (skipped, item) = self.scan_slow(&buf[at..], start, false);
            at += skipped;
            let Some(item) = item else {
                return at;
            };
            found.push((at, item));
            match item {
                Found::Frame { length, .. } | Found::Foreign { length, .. } => at += length,
                Found::Oversize { .. } | Found::Damaged => return at,
            }
        }
    }

    /// The valid frames from the expected sender (any sender without one) that follow one
    /// another from the start of `buf`, whole, up to four, their checksums computed
    /// together: `(pid, length)` of each in `run`, and how many. 0 leaves what starts `buf`
    /// to [`scan`](Self::scan); with it, whether the first frame there failed its checksum
    /// (which is then counted as wasted work).
    #[inline]
    fn frames_at_start(&mut self, buf: &[u8], run: &mut [(u32, usize); 4]) -> (usize, bool) {
        let mut headers = 0;
        let mut at = 0;
        while headers < 4 && buf.len() - at >= HEADER_LEN {
            let length = read_u32(buf, at) as usize;
            let pid = read_u32(buf, at + 4);
            if length < self.min_frame
                || length > self.max_frame
                || buf.len() - at < length
                || self.expected_pid.is_some_and(|p| p != pid)
            {
                break;
            }
            run[headers] = (pid, length);
            headers += 1;
            at += length;
        }
        // Checking several frames at once must not spend more than the damage budget left
        // if they all turn out bad.
        let left = self.damage_limit.saturating_sub(self.damage.cost());
        while headers > 1 && run[..headers].iter().map(|r| r.1 as u64).sum::<u64>() > left {
            headers -= 1;
        }
        let mut valid = headers;
        if self.verify_checksums && headers > 0 {
            let mut starts = [0; 4];
            for i in 1..headers {
                starts[i] = starts[i - 1] + run[i - 1].1;
            }
            let frame = |i: usize| &buf[starts[i]..starts[i] + run[i].1];
            self.checked_bytes += (0..headers).map(|i| run[i].1 as u64).sum::<u64>();
            let sums = if headers == 4 {
                self.sums.four(&[frame(0), frame(1), frame(2), frame(3)])
            } else {
                [0, 1, 2, 3].map(|i| {
                    if i < headers {
                        self.sums.one(frame(i))
                    } else {
                        0
                    }
                })
            };
            valid = (0..headers)
                .position(|i| read_u32(frame(i), 8) != sums[i])
                .unwrap_or(headers);
            // The first bad frame and those after it were checksummed in vain (the ones
            // after it are checked again if the scan gets to them).
            self.damage.wasted_bytes += (valid..headers).map(|i| run[i].1 as u64).sum::<u64>();
        }
        if valid > 0 {
            self.skipping = false;
        }
        (valid, valid == 0 && headers > 0 && self.verify_checksums)
    }

    /// Looks for the next frame in `buf` without consuming anything: returns how many bytes
    /// of damage come before it (all of `buf` that cannot start a frame when there is none
    /// yet) and the frame, which then starts at that offset. Damage is counted here, so
    /// the caller must not scan the same damage twice.
    #[inline]
    pub fn scan(&mut self, buf: &[u8], eof: bool) -> (usize, Option<Found>) {
        // The common case, kept small enough to inline: a whole valid frame right here.
        match self.check_at_start(buf) {
            AtStart::Frame(pid, length) => (0, Some(Found::Frame { pid, length })),
            AtStart::BadChecksum => {
                let start = self.skip(1);
                self.scan_slow(buf, start, eof)
            }
            AtStart::Other => self.scan_slow(buf, 0, eof),
        }
    }

    /// `(pid, length)` of a valid frame from the expected sender (any sender without one)
    /// that starts `buf` and is whole in it; `None` leaves everything else to
    /// [`scan`](Self::scan).
    #[inline]
    pub fn frame_at_start(&mut self, buf: &[u8]) -> Option<(u32, usize)> {
        match self.check_at_start(buf) {
            AtStart::Frame(pid, length) => Some((pid, length)),
            _ => None,
        }
    }

    #[inline]
    fn check_at_start(&mut self, buf: &[u8]) -> AtStart {
        if buf.len() < HEADER_LEN || self.over_budget() {
            return AtStart::Other;
        }
        let length = read_u32(buf, 0) as usize;
        let pid = read_u32(buf, 4);
        if length < self.min_frame
            || length > self.max_frame
            || buf.len() < length
            || self.expected_pid.is_some_and(|p| p != pid)
        {
            return AtStart::Other;
        }
        if !self.checksum_ok(&buf[..length]) {
            return AtStart::BadChecksum;
        }
        self.skipping = false;
        AtStart::Frame(pid, length)
    }

    /// Scans `buf` from `at` on (the bytes before it are damage already counted).
    #[inline(never)]
    fn scan_slow(&mut self, buf: &[u8], mut at: usize, eof: bool) -> (usize, Option<Found>) {
        loop {
            // Each turn skips a byte or checksums one candidate, so the work past the
            // budget is at most one longest frame.
            if self.over_budget() {
                return (at, Some(Found::Damaged));
            }
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
                    // Reported at once, not when more of it is in: a peer that sent only
                    // the header must not wait for its answer.
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

/// What starts a buffer, as [`FrameDecoder::check_at_start`] found it.
enum AtStart {
    /// A whole valid frame: pid and length.
    Frame(u32, usize),
    /// A whole frame from the expected sender whose checksum is wrong.
    BadChecksum,
    /// Anything else, for the slow scan.
    Other,
}

#[inline]
fn read_u32(buf: &[u8], at: usize) -> u32 {
    let bytes = &buf[at..at + 4];
    u32::from_le_bytes([bytes[0], bytes[1], bytes[2], bytes[3]])
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
    fn sealing_fills_in_the_checksum_of_frames_four_at_a_time_and_the_rest() {
        // 4 + 4 + 3 frames of mixed lengths, some alike (folded together), some not.
        let frames: Vec<Bytes> = (0..11u32)
            .map(|i| {
                frame(
                    40 + i % 3,
                    &vec![i as u8; [3, 60, 61, 90, 200][i as usize % 5]],
                )
            })
            .collect();
        let sealed: Vec<u8> = frames.iter().flat_map(|f| f.to_vec()).collect();
        let mut unsealed = sealed.clone();
        let mut at = 0;
        for f in &frames {
            unsealed[at + 8..at + HEADER_LEN].fill(0);
            at += f.len();
        }
        seal_frames(&mut unsealed);
        assert_eq!(unsealed, sealed);
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

    /// The damage that does not depend on how the frames were checked: the bytes skipped and
    /// the runs of them. (`wasted_bytes` does: four frames checked at once waste more.)
    fn skipped(damage: Damage) -> (u64, u64) {
        (damage.skipped_bytes, damage.resyncs)
    }

    /// What `scan_read` finds, the way the hub reads: frame by frame with `scan`.
    fn scan_one_at_a_time(decoder: &mut FrameDecoder, buf: &[u8]) -> (usize, Vec<(usize, Found)>) {
        let mut found = Vec::new();
        let mut at = 0;
        loop {
            let (skipped, item) = decoder.scan(&buf[at..], false);
            at += skipped;
            let Some(item) = item else {
                return (at, found);
            };
            found.push((at, item));
            match item {
                Found::Frame { length, .. } | Found::Foreign { length, .. } => at += length,
                Found::Oversize { .. } | Found::Damaged => return (at, found),
            }
        }
    }

    #[test]
    fn a_read_scanned_at_once_finds_what_frame_by_frame_scanning_finds() {
        let mut stream = Vec::new();
        for i in 0..40u32 {
            let mut f = frame(
                if i == 17 { 8 } else { 7 },
                &vec![i as u8; 40 + i as usize % 7],
            )
            .to_vec();
            match i {
                // A bad checksum in the middle of a group of four, then one at its end.
                5 | 11 => f[20] ^= 1,
                // Garbage between frames.
                23 => stream.extend_from_slice(&[0xee; 9]),
                _ => {}
            }
            stream.extend_from_slice(&f);
        }
        // A frame cut short by the end of the read.
        stream.extend_from_slice(&frame(7, &[1; 50])[..30]);
        let mut at_once = FrameDecoder::new(HEADER_LEN, 1 << 10, Some(7));
        let mut found = Vec::new();
        let scanned = at_once.scan_read(&stream, &mut found);
        let mut one_by_one = FrameDecoder::new(HEADER_LEN, 1 << 10, Some(7));
        assert_eq!(
            (scanned, found),
            scan_one_at_a_time(&mut one_by_one, &stream)
        );
        assert_eq!(skipped(at_once.damage()), skipped(one_by_one.damage()));
        assert_eq!(at_once.damage().resyncs, 3);
        assert_eq!(scanned, stream.len() - 30);
    }

    #[test]
    fn a_read_scanned_at_once_stops_at_an_oversized_frame() {
        let mut stream = [frame(7, b"one"), frame(7, b"two")].concat();
        let mut big = frame(7, &[0; 100]).to_vec();
        stream.append(&mut big);
        let mut decoder = FrameDecoder::new(HEADER_LEN, 64, Some(7));
        let mut found = Vec::new();
        let scanned = decoder.scan_read(&stream, &mut found);
        assert_eq!(found.len(), 3);
        assert_eq!(found[2], (30, Found::Oversize { length: 112 }));
        assert_eq!(scanned, 30);
    }

    proptest::proptest! {
        #[test]
        fn scanning_a_read_at_once_agrees_with_frame_by_frame_on_any_damage(
            pieces in proptest::collection::vec(
                (proptest::collection::vec(proptest::prelude::any::<u8>(), 0..70),
                 proptest::collection::vec(proptest::prelude::any::<u8>(), 0..6),
                 0..4u8),
                1..30),
        ) {
            let mut stream = Vec::new();
            for (payload, garbage, flip) in &pieces {
                let mut f = frame(7, payload).to_vec();
                if *flip == 0 {
                    let at = payload.len() % f.len();
                    f[at] ^= 0x10;
                }
                stream.extend_from_slice(&f);
                stream.extend_from_slice(garbage);
            }
            let mut at_once = FrameDecoder::new(HEADER_LEN, 1 << 10, Some(7));
            let mut found = Vec::new();
            let scanned = at_once.scan_read(&stream, &mut found);
            let mut one_by_one = FrameDecoder::new(HEADER_LEN, 1 << 10, Some(7));
            proptest::prop_assert_eq!((scanned, found), scan_one_at_a_time(&mut one_by_one, &stream));
            proptest::prop_assert_eq!(skipped(at_once.damage()), skipped(one_by_one.damage()));
            // Checking four frames at once may waste more work on a bad one, never less.
            proptest::prop_assert!(at_once.damage().wasted_bytes >= one_by_one.damage().wasted_bytes);
        }
    }

    /// Feeds `stream` the way the hub's reader does (reads of `chunk` bytes, each scanned at
    /// once, the rest kept): how many bytes were consumed when the decoder gave up, if it did.
    fn read_like_the_hub(decoder: &mut FrameDecoder, stream: &[u8], chunk: usize) -> Option<usize> {
        let mut buf = BytesMut::new();
        let mut consumed = 0;
        for piece in stream.chunks(chunk) {
            buf.extend_from_slice(piece);
            let mut found = Vec::new();
            let at = decoder.scan_read(&buf, &mut found);
            consumed += at;
            buf.advance(at);
            if matches!(found.last(), Some((_, Found::Damaged))) {
                return Some(consumed);
            }
        }
        None
    }

    /// 2 MiB of fake headers carrying the sender's own pid and the longest length, one every
    /// 8 bytes: each is a candidate that can only be refuted by checksumming 1 MiB.
    fn forged_headers(pid: u32, max_frame: usize, total: usize) -> Vec<u8> {
        let mut stream = Vec::with_capacity(total);
        while stream.len() < total {
            stream.extend_from_slice(&(max_frame as u32).to_le_bytes());
            stream.extend_from_slice(&pid.to_le_bytes());
        }
        stream
    }

    #[test]
    fn forged_headers_cost_linear_work_and_the_stream_is_given_up_after_the_budget() {
        const MAX_FRAME: usize = 1 << 20;
        const LIMIT: u64 = 1 << 20;
        let stream = forged_headers(7, MAX_FRAME, 2 << 20);
        let mut decoder = FrameDecoder::new(32, MAX_FRAME, Some(7)).with_damage_limit(LIMIT);
        let gave_up = read_like_the_hub(&mut decoder, &stream, 64 * 1024);
        let consumed = gave_up.expect("the decoder gives up on the stream");
        let damage = decoder.damage();
        // Work: every byte is examined once as a header start (skipped), and checksumming in
        // vain stops within one longest frame past the budget.
        let work = damage.skipped_bytes + decoder.checked_bytes();
        assert!(damage.cost() > LIMIT, "{damage:?}");
        assert!(
            decoder.checked_bytes() <= LIMIT + MAX_FRAME as u64,
            "checked {} bytes",
            decoder.checked_bytes()
        );
        assert!(
            work <= stream.len() as u64 + LIMIT + MAX_FRAME as u64,
            "work {work}"
        );
        assert_eq!(damage.skipped_bytes, consumed as u64);
        // It keeps saying so.
        let mut rest = BytesMut::from(&stream[consumed..]);
        assert_eq!(decoder.decode(&mut rest), Some(Decoded::Damaged));
        assert!(decoder.checked_bytes() <= LIMIT + MAX_FRAME as u64);
    }

    #[test]
    fn forged_headers_between_valid_frames_do_not_reset_the_budget() {
        // Valid frames between the forgeries find the boundary again, but the damage counts
        // on: the budget is per stream.
        let mut stream = Vec::new();
        for i in 0..400u32 {
            stream.extend_from_slice(&frame(7, &[i as u8; 24]));
            stream.extend_from_slice(&forged_headers(7, 4096, 64)[..60]);
        }
        let mut decoder = FrameDecoder::new(32, 4096, Some(7)).with_damage_limit(8192);
        let consumed = read_like_the_hub(&mut decoder, &stream, 1000).expect("given up");
        assert!(consumed < stream.len());
        assert!(decoder.checked_bytes() <= consumed as u64 + 8192 + 4096);
        // Without a budget the same stream decodes to its frames (but for the last ones,
        // behind a forged header that announces more bytes than are left).
        let mut unlimited = FrameDecoder::new(32, 4096, Some(7));
        let mut found = Vec::new();
        unlimited.scan_read(&stream, &mut found);
        assert!(found.len() > 300, "{}", found.len());
        assert!(found.iter().all(|(_, f)| matches!(f, Found::Frame { .. })));
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
