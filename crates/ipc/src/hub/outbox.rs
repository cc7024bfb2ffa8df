//! What the hub has queued towards one connection: frames waiting for the connection's
//! writer, and the batch the writer is writing now.

use std::collections::VecDeque;

use bytes::Bytes;

/// Most frames handed to a writer at once.
const BATCH_FRAMES: usize = 1024;
/// Most bytes handed to a writer at once (at least one frame is always handed).
const BATCH_BYTES: usize = 256 * 1024;

/// Frames queued towards one connection, in order.
#[derive(Debug, Default)]
pub(crate) struct Outbox {
    queue: VecDeque<Bytes>,
    /// Frames at the front handed to the writer and not yet reported written.
    handed: usize,
    /// Bytes of every queued frame, handed or not.
    bytes: usize,
}

impl Outbox {
    pub(crate) fn push(&mut self, frame: Bytes) {
        self.bytes += frame.len();
        self.queue.push_back(frame);
    }

    /// Bytes queued (handed or not).
    pub(crate) fn bytes(&self) -> usize {
        self.bytes
    }

    /// Whether the writer is writing a batch.
    pub(crate) fn busy(&self) -> bool {
        self.handed > 0
    }

    /// Whether frames wait for the writer.
    pub(crate) fn has_unhanded(&self) -> bool {
        self.queue.len() > self.handed
    }

    /// The next batch for an idle writer: frames not yet handed, in order.
    pub(crate) fn take_batch(&mut self) -> Option<Vec<Bytes>> {
        if self.busy() || self.queue.is_empty() {
            return None;
        }
        let mut batch = Vec::new();
        let mut size = 0;
        for frame in self.queue.iter() {
            if !batch.is_empty()
                && (batch.len() == BATCH_FRAMES || size + frame.len() > BATCH_BYTES)
            {
                break;
            }
            size += frame.len();
            batch.push(frame.clone());
        }
        self.handed = batch.len();
        Some(batch)
    }

    /// The writer wrote the first `frames` frames of its batch and is idle again.
    pub(crate) fn written(&mut self, frames: usize) {
        for _ in 0..frames.min(self.handed) {
            if let Some(frame) = self.queue.pop_front() {
                self.bytes -= frame.len();
            }
        }
        self.handed = 0;
    }

    /// Everything not reported written, in order; the outbox is empty afterwards.
    pub(crate) fn drain(&mut self) -> VecDeque<Bytes> {
        self.handed = 0;
        self.bytes = 0;
        std::mem::take(&mut self.queue)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn batches_follow_the_writer() {
        let mut outbox = Outbox::default();
        outbox.push(Bytes::from_static(b"aa"));
        outbox.push(Bytes::from_static(b"bbb"));
        assert_eq!(outbox.bytes(), 5);
        let batch = outbox.take_batch().unwrap();
        assert_eq!(batch.len(), 2);
        assert!(outbox.busy());
        outbox.push(Bytes::from_static(b"c"));
        assert!(outbox.take_batch().is_none(), "one batch at a time");
        outbox.written(2);
        assert_eq!(outbox.bytes(), 1);
        assert_eq!(outbox.take_batch().unwrap(), vec![Bytes::from_static(b"c")]);
        outbox.written(0);
        assert_eq!(outbox.drain().len(), 1, "an unwritten frame stays queued");
        assert_eq!(outbox.bytes(), 0);
    }

    #[test]
    fn a_batch_is_bounded_but_never_empty() {
        let mut outbox = Outbox::default();
        outbox.push(Bytes::from(vec![0; BATCH_BYTES * 2]));
        outbox.push(Bytes::from_static(b"x"));
        assert_eq!(outbox.take_batch().unwrap().len(), 1);
        outbox.written(1);
        for _ in 0..BATCH_FRAMES + 5 {
            outbox.push(Bytes::from_static(b"y"));
        }
        outbox.written(0);
        assert_eq!(outbox.take_batch().unwrap().len(), BATCH_FRAMES);
    }
}
