//! What the hub has queued towards one connection: chunks of whole frames waiting for the
//! connection's writer, and the chunk the writer is writing now.
//!
//! Frames are copied in once — a run of frames lying back to back in a sender's read with
//! one copy — at the end of the last chunk, and each chunk goes to the writer whole, so a
//! frame costs a copy of its bytes and no allocation of its own. A chunk takes new frames
//! until it holds [`CHUNK_BYTES`] (a run is never split, so a chunk can exceed that by one
//! read). A written chunk's buffer comes back and is reused, so a busy connection cycles
//! through the same few buffers, which stay in the CPU's caches, instead of asking the
//! allocator for fresh memory that the kernel must first map and zero. The buffers go back to
//! a [`ChunkPool`] shared by every connection of the hub.
//!
//! Each chunk counts its frames; frames are self-delimiting (their first four bytes are their
//! length), so where one ends is read from the bytes only when a chunk was written in part.

use std::collections::VecDeque;

use bytes::{Bytes, BytesMut};

use crate::wire::frame::HEADER_LEN;
use crate::wire::Envelope;

/// Bytes after which a chunk takes no more frames: also about the most handed to a writer at
/// once, so that its progress reports come regularly.
const CHUNK_BYTES: usize = 256 * 1024;

/// Room a new chunk is made with: enough to finish it with one more read's frames.
const CHUNK_CAPACITY: usize = CHUNK_BYTES + 64 * 1024;

/// Emptied chunks a hub keeps for reuse (8 MiB and a bit).
const POOL_CHUNKS: usize = 32;

/// Emptied chunk buffers, shared by every connection's outbox.
#[derive(Debug, Default)]
pub(crate) struct ChunkPool {
    free: Vec<BytesMut>,
}

impl ChunkPool {
    fn take(&mut self) -> BytesMut {
        self.free
            .pop()
            .unwrap_or_else(|| BytesMut::with_capacity(CHUNK_CAPACITY))
    }

    /// Keeps `buffer` for reuse unless the pool is full or the buffer grew unusually large
    /// (for a frame longer than a chunk).
    fn give(&mut self, mut buffer: BytesMut) {
        if self.free.len() < POOL_CHUNKS && buffer.capacity() <= 2 * CHUNK_CAPACITY {
            buffer.clear();
            self.free.push(buffer);
        }
    }
}

/// Whole frames back to back, and how many.
#[derive(Debug, Default)]
struct Chunk {
    bytes: BytesMut,
    frames: usize,
}

/// Frames queued towards one connection, in order.
#[derive(Debug, Default)]
pub(crate) struct Outbox {
    /// Frames not yet handed to the writer, oldest chunk first.
    waiting: VecDeque<Chunk>,
    /// The chunk the writer has, and how many frames it holds.
    handed: Option<(Bytes, usize)>,
    /// The part of a chunk its writer did not write (the connection is ending).
    leftover: Option<Bytes>,
    /// Bytes of every queued frame, handed or not.
    bytes: usize,
}

/// The length of the frame that starts `frames` (all of `frames` if that is shorter, as
/// only a chunk cut short by a failed write can be).
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
    pub(crate) fn push_run(&mut self, frames: &[u8], count: usize, pool: &mut ChunkPool) {
        let chunk = self.open_chunk(pool);
        chunk.bytes.extend_from_slice(frames);
        chunk.frames += count;
        self.bytes += frames.len();
    }

    /// Queues a copy of one whole frame.
    #[cfg(test)]
    pub(crate) fn push(&mut self, frame: &[u8]) {
        self.push_run(frame, 1, &mut ChunkPool::default());
    }

    /// Queues the frame `env` makes, sent by `sender_pid`.
    pub(crate) fn push_envelope(
        &mut self,
        env: &Envelope<'_>,
        sender_pid: u32,
        pool: &mut ChunkPool,
    ) {
        let chunk = self.open_chunk(pool);
        let before = chunk.bytes.len();
        env.write(&mut chunk.bytes, sender_pid);
        chunk.frames += 1;
        self.bytes += chunk.bytes.len() - before;
    }

    /// The chunk new frames go to: the last one, or a new one once that is full.
    fn open_chunk(&mut self, pool: &mut ChunkPool) -> &mut Chunk {
        if self
            .waiting
            .back()
            .is_none_or(|last| last.bytes.len() >= CHUNK_BYTES)
        {
            self.waiting.push_back(Chunk {
                bytes: pool.take(),
                frames: 0,
            });
        }
        self.waiting.back_mut().expect("a chunk was just ensured")
    }

    /// Bytes queued (handed or not).
    pub(crate) fn bytes(&self) -> usize {
        self.bytes
    }

    /// Whether the writer is writing a chunk.
    pub(crate) fn busy(&self) -> bool {
        self.handed.is_some()
    }

    /// Whether frames wait for the writer.
    pub(crate) fn has_unhanded(&self) -> bool {
        !self.waiting.is_empty()
    }

    /// The next batch for an idle writer: the oldest waiting chunk.
    pub(crate) fn take_batch(&mut self) -> Option<Bytes> {
        if self.busy() || self.leftover.is_some() {
            return None;
        }
        let chunk = self.waiting.pop_front()?;
        let batch = chunk.bytes.freeze();
        self.handed = Some((batch.clone(), chunk.frames));
        Some(batch)
    }

    /// The writer wrote the first `written` bytes of its batch and is idle again (and let go
    /// of the batch, whose buffer goes back to `pool`). Returns how many whole frames that was.
    pub(crate) fn written(&mut self, written: usize, pool: &mut ChunkPool) -> usize {
        let Some((batch, frames)) = self.handed.take() else {
            return 0;
        };
        if written < batch.len() {
            // Written in part: the connection is ending, and the rest is given back by
            // `drain`, frame by frame.
            let (count, size) = whole_frames(&batch, written);
            self.bytes -= size;
            self.leftover = Some(batch.slice(size..));
            return count;
        }
        self.bytes -= batch.len();
        if let Ok(buffer) = batch.try_into_mut() {
            pool.give(buffer);
        }
        frames
    }

    /// Every frame not reported written, in order; the outbox is empty afterwards.
    pub(crate) fn drain(&mut self) -> Vec<Bytes> {
        let mut frames = Vec::new();
        let sources = [
            self.leftover.take(),
            self.handed.take().map(|(batch, _)| batch),
        ]
        .into_iter()
        .chain(
            self.waiting
                .drain(..)
                .map(|chunk| Some(chunk.bytes.freeze())),
        );
        for mut source in sources.flatten() {
            while !source.is_empty() {
                let length = frame_len(&source);
                frames.push(source.split_to(length));
            }
        }
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

    impl Outbox {
        fn written_(&mut self, written: usize) -> usize {
            self.written(written, &mut ChunkPool::default())
        }
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
        assert_eq!(outbox.written_(29), 2);
        assert_eq!(outbox.bytes(), 13);
        assert_eq!(outbox.take_batch().unwrap(), cat(&[b"c"]));
        assert_eq!(outbox.written_(0), 0);
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
        assert_eq!(outbox.written_(30), 2);
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
        assert_eq!(outbox.written_(19), 1);
        assert_eq!(outbox.bytes(), 15 + 17 + 16);
        let rest: Vec<Bytes> = outbox.drain();
        assert_eq!(
            rest,
            vec![cat(&[b"two"]), cat(&[b"three"]), cat(&[b"four"])]
        );
    }

    #[test]
    fn a_chunk_is_bounded_but_never_empty() {
        let mut outbox = Outbox::default();
        let big = f(&vec![0; CHUNK_BYTES * 2]);
        outbox.push(&big);
        outbox.push(&f(b"x"));
        assert_eq!(outbox.take_batch().unwrap().len(), big.len());
        assert_eq!(outbox.written_(big.len()), 1);
        assert_eq!(outbox.take_batch().unwrap(), cat(&[b"x"]));

        let mut outbox = Outbox::default();
        let third = f(&vec![1; CHUNK_BYTES / 3]);
        for _ in 0..6 {
            outbox.push(&third);
        }
        // A chunk takes frames until it holds CHUNK_BYTES: three of these just pass it.
        assert!(3 * third.len() >= CHUNK_BYTES);
        assert_eq!(outbox.take_batch().unwrap().len(), 3 * third.len());
        assert_eq!(outbox.written_(3 * third.len()), 3);
        assert_eq!(outbox.take_batch().unwrap().len(), 3 * third.len());
        assert_eq!(outbox.written_(3 * third.len()), 3);
        assert_eq!(outbox.bytes(), 0);
    }

    #[test]
    fn written_chunks_are_reused_through_the_pool() {
        let mut pool = ChunkPool::default();
        let mut first = Outbox::default();
        let frame = f(&vec![3; CHUNK_BYTES / 2]);
        first.push_run(&frame, 1, &mut pool);
        let batch = first.take_batch().unwrap();
        let address = batch.as_ptr();
        drop(batch);
        first.written(frame.len(), &mut pool);

        // Another connection's next chunk is that buffer.
        let mut second = Outbox::default();
        second.push_run(&f(b"next"), 1, &mut pool);
        let batch = second.take_batch().unwrap();
        assert_eq!(
            batch.as_ptr(),
            address,
            "the written chunk's buffer is reused"
        );
        assert_eq!(batch, cat(&[b"next"]));
    }

    #[test]
    fn the_pool_keeps_neither_too_many_nor_outsized_buffers() {
        let mut pool = ChunkPool::default();
        for _ in 0..POOL_CHUNKS + 5 {
            pool.give(BytesMut::with_capacity(CHUNK_CAPACITY));
        }
        assert_eq!(pool.free.len(), POOL_CHUNKS);
        let mut pool = ChunkPool::default();
        pool.give(BytesMut::with_capacity(4 * CHUNK_CAPACITY));
        assert!(pool.free.is_empty());
    }

    #[test]
    fn frames_queued_while_a_chunk_is_written_follow_it_in_order() {
        let mut outbox = Outbox::default();
        let mut expected = Vec::new();
        let mut frames = 0;
        let mut out = Vec::new();
        for i in 0..2_000u32 {
            let frame = f(&i.to_le_bytes().repeat(100));
            expected.extend_from_slice(&frame);
            outbox.push(&frame);
            if i % 300 == 0 {
                if let Some(batch) = outbox.take_batch() {
                    out.extend_from_slice(&batch);
                    frames += outbox.written_(batch.len());
                }
            }
        }
        while let Some(batch) = outbox.take_batch() {
            assert!(batch.len() < CHUNK_BYTES + 500);
            out.extend_from_slice(&batch);
            frames += outbox.written_(batch.len());
        }
        assert_eq!(frames, 2_000);
        assert!(out == expected, "every frame once, in order");
        assert_eq!(outbox.bytes(), 0);
    }

    #[test]
    fn envelopes_are_written_in_place() {
        let mut outbox = Outbox::default();
        outbox.push_envelope(
            &Envelope::new(crate::wire::Kind::Ok),
            0,
            &mut ChunkPool::default(),
        );
        assert_eq!(outbox.bytes(), crate::wire::MIN_FRAME);
        let frames = outbox.drain();
        assert_eq!(frames.len(), 1);
        assert_eq!(
            Envelope::parse(&frames[0][12..]).unwrap().kind,
            crate::wire::Kind::Ok
        );
    }
}
