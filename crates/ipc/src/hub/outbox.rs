//! What the hub has queued towards one connection: one contiguous buffer of whole frames
//! waiting for the connection's writer, and the batch the writer is writing now.
//!
//! Frames are copied in once and handed to the writer as one buffer, so a frame costs a
//! copy of its bytes and no allocation of its own.

use std::collections::VecDeque;

use bytes::{Bytes, BytesMut};

use crate::wire::Envelope;

/// Most bytes handed to a writer at once (at least one frame is always handed), so that
/// its progress reports come regularly.
const BATCH_BYTES: usize = 256 * 1024;

/// Frames queued towards one connection, in order.
#[derive(Debug, Default)]
pub(crate) struct Outbox {
    /// Frames not yet handed to the writer.
    waiting: BytesMut,
    /// Lengths of every queued frame, handed ones first.
    lengths: VecDeque<usize>,
    /// The batch the writer has, and how many frames it holds.
    handed: Option<(Bytes, usize)>,
    /// The part of a batch its writer did not write (the connection is ending).
    leftover: Option<Bytes>,
    /// Bytes of every queued frame, handed or not.
    bytes: usize,
}

impl Outbox {
    /// Queues a copy of a whole frame.
    pub(crate) fn push(&mut self, frame: &[u8]) {
        self.waiting.extend_from_slice(frame);
        self.queued(frame.len());
    }

    /// Queues the frame `env` makes, sent by `sender_pid`.
    pub(crate) fn push_envelope(&mut self, env: &Envelope<'_>, sender_pid: u32) {
        let before = self.waiting.len();
        env.write(&mut self.waiting, sender_pid);
        self.queued(self.waiting.len() - before);
    }

    fn queued(&mut self, length: usize) {
        self.lengths.push_back(length);
        self.bytes += length;
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
        if self.busy() || self.waiting.is_empty() {
            return None;
        }
        let mut size = 0;
        let mut frames = 0;
        for &length in &self.lengths {
            if frames > 0 && size + length > BATCH_BYTES {
                break;
            }
            size += length;
            frames += 1;
        }
        let batch = self.waiting.split_to(size).freeze();
        self.handed = Some((batch.clone(), frames));
        Some(batch)
    }

    /// The writer wrote the first `written` bytes of its batch and is idle again. Returns
    /// how many whole frames that was.
    pub(crate) fn written(&mut self, written: usize) -> usize {
        let Some((batch, handed)) = self.handed.take() else {
            return 0;
        };
        let mut done = 0;
        let mut covered = 0;
        while done < handed {
            let length = self.lengths[0];
            if covered + length > written {
                break;
            }
            covered += length;
            done += 1;
            self.lengths.pop_front();
            self.bytes -= length;
        }
        if done < handed {
            self.leftover = Some(batch.slice(covered..));
        }
        done
    }

    /// Every frame not reported written, in order; the outbox is empty afterwards.
    pub(crate) fn drain(&mut self) -> Vec<Bytes> {
        let mut frames = Vec::with_capacity(self.lengths.len());
        let mut lengths = std::mem::take(&mut self.lengths).into_iter();
        let sources = [
            self.leftover.take(),
            self.handed.take().map(|(batch, _)| batch),
            Some(self.waiting.split().freeze()),
        ];
        for mut source in sources.into_iter().flatten() {
            while !source.is_empty() {
                let Some(length) = lengths.next() else {
                    break;
                };
                frames.push(source.split_to(length.min(source.len())));
            }
        }
        self.bytes = 0;
        frames
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn batches_follow_the_writer() {
        let mut outbox = Outbox::default();
        outbox.push(b"aa");
        outbox.push(b"bbb");
        assert_eq!(outbox.bytes(), 5);
        assert_eq!(outbox.take_batch().unwrap(), Bytes::from_static(b"aabbb"));
        assert!(outbox.busy());
        outbox.push(b"c");
        assert!(outbox.take_batch().is_none(), "one batch at a time");
        assert_eq!(outbox.written(5), 2);
        assert_eq!(outbox.bytes(), 1);
        assert_eq!(outbox.take_batch().unwrap(), Bytes::from_static(b"c"));
        assert_eq!(outbox.written(0), 0);
        assert_eq!(
            outbox.drain(),
            vec![Bytes::from_static(b"c")],
            "an unwritten frame stays"
        );
        assert_eq!(outbox.bytes(), 0);
    }

    #[test]
    fn a_partly_written_batch_gives_back_its_unwritten_frames_in_order() {
        let mut outbox = Outbox::default();
        for frame in [&b"one"[..], b"two", b"three"] {
            outbox.push(frame);
        }
        outbox.take_batch().unwrap();
        outbox.push(b"four");
        // Four bytes: "one" and a piece of "two" reached the socket.
        assert_eq!(outbox.written(4), 1);
        let rest: Vec<Bytes> = outbox.drain();
        assert_eq!(
            rest,
            vec![
                Bytes::from_static(b"two"),
                Bytes::from_static(b"three"),
                Bytes::from_static(b"four")
            ]
        );
    }

    #[test]
    fn a_batch_is_bounded_but_never_empty() {
        let mut outbox = Outbox::default();
        outbox.push(&vec![0; BATCH_BYTES * 2]);
        outbox.push(b"x");
        assert_eq!(outbox.take_batch().unwrap().len(), BATCH_BYTES * 2);
        outbox.written(BATCH_BYTES * 2);
        assert_eq!(outbox.take_batch().unwrap(), Bytes::from_static(b"x"));
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
