//! What the hub has queued towards one connection: one contiguous buffer of whole frames
//! waiting for the connection's writer, and the batch the writer is writing now.
//!
//! Frames are copied in once — a run of frames lying back to back in a sender's read with
//! one copy — and handed to the writer as one buffer, so a frame costs a copy of its bytes
//! and no allocation of its own. The outbox remembers each run's size and frame count, not
//! each frame; frames are self-delimiting (their first four bytes are their length), so where
//! one ends is read from the bytes in the rare cases that need it (a run larger than a batch,
//! a batch written in part). A writer's buffer comes back once written and is reused.

use std::collections::VecDeque;

use bytes::{Bytes, BytesMut};

use crate::wire::frame::HEADER_LEN;
use crate::wire::Envelope;

/// Most bytes handed to a writer at once (at least one frame is always handed), so that
/// its progress reports come regularly.
const BATCH_BYTES: usize = 256 * 1024;

/// Frames queued towards one connection, in order.
#[derive(Debug, Default)]
pub(crate) struct Outbox {
    /// Frames not yet handed to the writer.
    waiting: BytesMut,
    /// `(bytes, frames)` of every queued run of frames, handed ones first.
    runs: VecDeque<(usize, usize)>,
    /// The batch the writer has, and how many runs it holds.
    handed: Option<(Bytes, usize)>,
    /// The part of a batch its writer did not write (the connection is ending).
    leftover: Option<Bytes>,
    /// A written batch's buffer, for the frames after the next batch.
    spare: Option<BytesMut>,
    /// Bytes of every queued frame, handed or not.
    bytes: usize,
}

/// The length of the frame that starts `frames` (all of `frames` if that is shorter, as
/// only a batch cut short by a failed write can be).
fn frame_len(frames: &[u8]) -> usize {
    match frames.get(..4) {
        Some(head) => {
            let length = u32::from_le_bytes([head[0], head[1], head[2], head[3]]) as usize;
            length.clamp(HEADER_LEN.min(frames.len()), frames.len())
        }
        None => frames.len(),
    }
}

/// How many whole frames the first `bytes` bytes of `frames` hold, and their size.
fn whole_frames(frames: &[u8], bytes: usize) -> (usize, usize) {
    let (mut count, mut size) = (0, 0);
    while size < frames.len() {
        let length = frame_len(&frames[size..]);
        if size + length > bytes {
            break;
        }
        size += length;
        count += 1;
    }
    (count, size)
}

impl Outbox {
    /// Queues a copy of `count` whole frames lying back to back in `frames`.
    pub(crate) fn push_run(&mut self, frames: &[u8], count: usize) {
        self.waiting.extend_from_slice(frames);
        self.queued(frames.len(), count);
    }

    /// Queues a copy of one whole frame.
    #[cfg(test)]
    pub(crate) fn push(&mut self, frame: &[u8]) {
        self.push_run(frame, 1);
    }

    /// Queues the frame `env` makes, sent by `sender_pid`.
    pub(crate) fn push_envelope(&mut self, env: &Envelope<'_>, sender_pid: u32) {
        let before = self.waiting.len();
        env.write(&mut self.waiting, sender_pid);
        self.queued(self.waiting.len() - before, 1);
    }

    fn queued(&mut self, bytes: usize, frames: usize) {
        self.bytes += bytes;
        let handed = self.handed.as_ref().map_or(0, |(_, runs)| *runs);
        let has_unhanded = self.runs.len() > handed;
        match self.runs.back_mut() {
            // Runs are kept apart only where a batch may need to be cut.
            Some(last) if has_unhanded && last.0 + bytes <= BATCH_BYTES => {
                last.0 += bytes;
                last.1 += frames;
            }
            _ => self.runs.push_back((bytes, frames)),
        }
    }

    /// Bytes queued (handed or not).
    pub(crate) fn bytes(&self) -> usize {
        self.bytes
    }

    /// Whether the writer is writing a batch.
    pub(crate) fn busy(&self) -> bool {
        self.handed.is_some()
    }

    /// Whether frames wait for the writer.
    pub(crate) fn has_unhanded(&self) -> bool {
        !self.waiting.is_empty()
    }

    /// The next batch for an idle writer: waiting frames, in order.
    pub(crate) fn take_batch(&mut self) -> Option<Bytes> {
        if self.busy() || self.waiting.is_empty() || self.leftover.is_some() {
            return None;
        }
        let (mut size, mut runs) = (0, 0);
        for &(bytes, _) in &self.runs {
            if runs > 0 && size + bytes > BATCH_BYTES {
                break;
            }
            size += bytes;
            runs += 1;
        }
        if size > BATCH_BYTES {
            // One run larger than a batch: hand its first frames only.
            let (count, cut) = whole_frames(&self.waiting, BATCH_BYTES);
            let (count, cut) = if count == 0 {
                (1, frame_len(&self.waiting))
            } else {
                (count, cut)
            };
            let first = self.runs.front_mut().expect("a run");
            first.0 -= cut;
            first.1 -= count;
            self.runs.push_front((cut, count));
            size = cut;
        }
        let batch = if size == self.waiting.len() {
            let fresh = self.spare.take().unwrap_or_default();
            std::mem::replace(&mut self.waiting, fresh).freeze()
        } else {
            self.waiting.split_to(size).freeze()
        };
        self.handed = Some((batch.clone(), runs));
        Some(batch)
    }

    /// The writer wrote the first `written` bytes of its batch and is idle again (and let go
    /// of the batch). Returns how many whole frames that was.
    pub(crate) fn written(&mut self, written: usize) -> usize {
        let Some((batch, runs)) = self.handed.take() else {
            return 0;
        };
        let (mut frames, mut bytes) = (0, 0);
        for _ in 0..runs {
            let (run_bytes, run_frames) = self.runs.pop_front().expect("handed runs are queued");
            bytes += run_bytes;
            frames += run_frames;
        }
        let covered = if written >= batch.len() {
            batch.len()
        } else {
            // Written in part: the connection is ending, and the rest is given back by
            // `drain`, frame by frame.
            let (count, size) = whole_frames(&batch, written);
            frames = count;
            size
        };
        debug_assert_eq!(bytes, batch.len());
        self.bytes -= covered;
        if covered < batch.len() {
            self.leftover = Some(batch.slice(covered..));
        } else if let Ok(mut buffer) = batch.try_into_mut() {
            buffer.clear();
            if self.spare.is_none() {
                self.spare = Some(buffer);
            }
        }
        frames
    }

    /// Every frame not reported written, in order; the outbox is empty afterwards.
    pub(crate) fn drain(&mut self) -> Vec<Bytes> {
        let mut frames = Vec::new();
        let sources = [
            self.leftover.take(),
            self.handed.take().map(|(batch, _)| batch),
            Some(self.waiting.split().freeze()),
        ];
        for mut source in sources.into_iter().flatten() {
            while !source.is_empty() {
                let length = frame_len(&source);
                frames.push(source.split_to(length));
            }
        }
        self.runs.clear();
        self.bytes = 0;
        frames
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A frame-shaped piece of bytes: its length, eight bytes of header, then `tag`.
    fn f(tag: &[u8]) -> Vec<u8> {
        let mut frame = ((HEADER_LEN + tag.len()) as u32).to_le_bytes().to_vec();
        frame.extend_from_slice(&[0; 8]);
        frame.extend_from_slice(tag);
        frame
    }

    fn cat(frames: &[&[u8]]) -> Bytes {
        Bytes::from(frames.iter().flat_map(|t| f(t)).collect::<Vec<u8>>())
    }

    #[test]
    fn batches_follow_the_writer() {
        let mut outbox = Outbox::default();
        outbox.push(&f(b"aa"));
        outbox.push(&f(b"bbb"));
        assert_eq!(outbox.bytes(), 29);
        assert_eq!(outbox.take_batch().unwrap(), cat(&[b"aa", b"bbb"]));
        assert!(outbox.busy());
        outbox.push(&f(b"c"));
        assert!(outbox.take_batch().is_none(), "one batch at a time");
        assert_eq!(outbox.written(29), 2);
        assert_eq!(outbox.bytes(), 13);
        assert_eq!(outbox.take_batch().unwrap(), cat(&[b"c"]));
        assert_eq!(outbox.written(0), 0);
        assert_eq!(
            outbox.drain(),
            vec![cat(&[b"c"])],
            "an unwritten frame stays"
        );
        assert_eq!(outbox.bytes(), 0);
    }

    #[test]
    fn a_run_of_frames_pushed_at_once_is_counted_frame_by_frame() {
        let mut outbox = Outbox::default();
        outbox.push(&cat(&[b"one", b"two", b"three"]));
        outbox.take_batch().unwrap();
        assert_eq!(outbox.written(30), 2);
        assert_eq!(outbox.drain(), vec![cat(&[b"three"])]);
    }

    #[test]
    fn a_partly_written_batch_gives_back_its_unwritten_frames_in_order() {
        let mut outbox = Outbox::default();
        for frame in [&b"one"[..], b"two", b"three"] {
            outbox.push(&f(frame));
        }
        outbox.take_batch().unwrap();
        outbox.push(&f(b"four"));
        // "one" and a piece of "two" reached the socket.
        assert_eq!(outbox.written(19), 1);
        assert_eq!(outbox.bytes(), 15 + 17 + 16);
        let rest: Vec<Bytes> = outbox.drain();
        assert_eq!(
            rest,
            vec![cat(&[b"two"]), cat(&[b"three"]), cat(&[b"four"])]
        );
    }

    #[test]
    fn a_batch_is_bounded_but_never_empty() {
        let mut outbox = Outbox::default();
        let big = f(&vec![0; BATCH_BYTES * 2]);
        outbox.push(&big);
        outbox.push(&f(b"x"));
        assert_eq!(outbox.take_batch().unwrap().len(), big.len());
        outbox.written(big.len());
        assert_eq!(outbox.take_batch().unwrap(), cat(&[b"x"]));

        let mut outbox = Outbox::default();
        let third = f(&vec![1; BATCH_BYTES / 3]);
        for _ in 0..4 {
            outbox.push(&third);
        }
        assert_eq!(outbox.take_batch().unwrap().len(), 2 * third.len());
        assert_eq!(outbox.written(2 * third.len()), 2);
        assert_eq!(outbox.take_batch().unwrap().len(), 2 * third.len());
    }

    #[test]
    fn a_run_larger_than_a_batch_is_cut_between_frames() {
        let mut outbox = Outbox::default();
        let frame = f(&vec![7; BATCH_BYTES / 4]);
        let run: Vec<u8> = (0..10).flat_map(|_| frame.clone()).collect();
        outbox.push_run(&run, 10);
        outbox.push(&f(b"after"));
        let mut frames = 0;
        let mut bytes = 0;
        while let Some(batch) = outbox.take_batch() {
            assert!(batch.len() <= BATCH_BYTES);
            assert_eq!(
                whole_frames(&batch, batch.len()).1,
                batch.len(),
                "a batch holds whole frames only"
            );
            bytes += batch.len();
            frames += outbox.written(batch.len());
        }
        assert_eq!(frames, 11);
        assert_eq!(bytes, run.len() + 17);
        assert_eq!(outbox.bytes(), 0);
    }

    #[test]
    fn envelopes_are_written_in_place() {
        let mut outbox = Outbox::default();
        outbox.push_envelope(&Envelope::new(crate::wire::Kind::Ok), 0);
        assert_eq!(outbox.bytes(), crate::wire::MIN_FRAME);
        let frames = outbox.drain();
        assert_eq!(frames.len(), 1);
        assert_eq!(
            Envelope::parse(&frames[0][12..]).unwrap().kind,
            crate::wire::Kind::Ok
        );
    }
}
