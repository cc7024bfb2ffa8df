//! The client's protocol state, sans IO: frames to write (messages queued back to back for
//! one destination gathered into a `Batch`), bytes read, what they decode to (a received
//! batch handed out message by message), and which answer an operation is waiting for. The
//! blocking and async clients are thin loops around it.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, Ordering};

use bytes::{Buf, BytesMut};

use super::{
    Addressed, ClientError, ClientOptions, Destination, Failure, Incoming, Message, Request,
    RequestKind, Target,
};
use crate::wire::envelope::{same_name, EnvelopeError, RawEnvelope};
use crate::wire::frame::{seal_frames, Found, HEADER_LEN};
use crate::wire::{batch, Envelope, ErrorCode, FrameDecoder, Kind, MIN_FRAME};

/// Correlation ids are unique per process, so the hub can key requests by (pid, id) even
/// when a process has several connections.
static NEXT_CORR: AtomicU64 = AtomicU64::new(1);

/// Where a frame keeps its envelope's kind.
const KIND_AT: usize = HEADER_LEN + 1;
/// Where a frame keeps its envelope's `arg` (a batch's message count).
const ARG_AT: usize = HEADER_LEN + 16;

/// Ids a client takes from [`NEXT_CORR`] at once, so that queueing a message does not
/// touch a shared counter every time.
const CORR_BLOCK: u64 = 1 << 16;

/// A fresh correlation id.
pub(crate) fn next_corr() -> u64 {
    NEXT_CORR.fetch_add(1, Ordering::Relaxed)
}

/// A client's own supply of correlation ids, unique in the process.
struct CorrIds {
    next: u64,
    end: u64,
}

impl CorrIds {
    /// Whether the next id is `corr` (without taking it).
    #[inline]
    fn next_is(&self, corr: u64) -> bool {
        self.next != self.end && self.next == corr
    }

    #[inline]
    fn next(&mut self) -> u64 {
        if self.next == self.end {
            self.next = NEXT_CORR.fetch_add(CORR_BLOCK, Ordering::Relaxed);
            self.end = self.next + CORR_BLOCK;
        }
        self.next += 1;
        self.next - 1
    }
}

/// The answer to an operation: the hub's `Ok`, a `Reply`, or an `Error`.
#[derive(Debug)]
pub(crate) enum Answer {
    Ok,
    Reply(Vec<u8>),
    Error(ErrorCode, String),
}

impl Answer {
    pub(crate) fn into_result(self) -> Result<Vec<u8>, ClientError> {
        match self {
            Answer::Ok => Ok(Vec::new()),
            Answer::Reply(body) => Ok(body),
            Answer::Error(code, message) => Err(ClientError::Hub { code, message }),
        }
    }
}

pub(crate) struct ClientState {
    pub(crate) pid: u32,
    pub(crate) read_buf: BytesMut,
    pub(crate) write_buf: BytesMut,
    decoder: FrameDecoder,
    inbox: VecDeque<Incoming>,
    inbox_max: usize,
    corr_ids: CorrIds,
    batch_bytes: usize,
    /// The last queued frame, while it is a `Send` or `Batch` that a further message to the
    /// same destination may join. Its header's length and count are brought up to date when
    /// it is closed ([`close_batch`](Self::close_batch)).
    open_batch: Option<OpenBatch>,
    /// The `Batch` at the front of the read buffer whose messages are being handed out;
    /// while there is one, the inbox is empty.
    unbatching: Option<Unbatching>,
}

/// Where [`ClientState::next_message`] is in a received `Batch`.
struct Unbatching {
    from: u32,
    to: Addressed,
    next_corr: u64,
    /// The next message's entry, in the read buffer.
    at: usize,
    /// The frame's end: the batch is done when `at` gets here.
    end: usize,
}

/// What [`ClientState::join_batch`] needs of the open frame, kept here rather than read
/// back from bytes just written.
#[derive(Clone, Copy)]
struct OpenBatch {
    /// Where the frame starts in the write buffer.
    start: usize,
    pid: u32,
    name_len: usize,
    /// Messages in it (1: still a `Send`).
    count: u32,
    /// The correlation id the next message must have to join.
    next_corr: u64,
}

impl ClientState {
    pub(crate) fn new(options: &ClientOptions) -> ClientState {
        let decoder = FrameDecoder::new(MIN_FRAME, options.max_frame_bytes, None);
        let decoder = if options.verify_checksums {
            decoder
        } else {
            decoder.trusting_checksums()
        };
        ClientState {
            pid: std::process::id(),
            read_buf: BytesMut::with_capacity(64 * 1024),
            write_buf: BytesMut::new(),
            decoder,
            inbox: VecDeque::new(),
            inbox_max: options.inbox_max,
            corr_ids: CorrIds { next: 0, end: 0 },
            batch_bytes: options.batch_bytes,
            open_batch: None,
            unbatching: None,
        }
    }

    /// Queues a frame with a fresh correlation id (or `corr` when not 0); returns the id.
    /// (Inlined into the caller, which usually knows the kind, and often that there is no
    /// name: messages are queued one at a time, by the million.)
    #[inline]
    pub(crate) fn queue(&mut self, mut env: Envelope<'_>) -> u64 {
        self.close_batch();
        if env.corr == 0 {
            env.corr = self.corr_ids.next();
        }
        env.write_unsealed(&mut self.write_buf, self.pid);
        env.corr
    }

    /// Everything queued, sealed and ready to write; [`written`](Self::written) once it is.
    pub(crate) fn outgoing(&mut self) -> &[u8] {
        self.close_batch();
        seal_frames(&mut self.write_buf);
        &self.write_buf
    }

    /// The queued frames were written (after [`outgoing`](Self::outgoing), which closed any
    /// open batch).
    pub(crate) fn written(&mut self) {
        self.open_batch = None;
        self.write_buf.clear();
    }

    /// Queues a message or request to `to`. A message to the destination of the message
    /// queued just before it joins that one's frame (a `Batch`) while the frame stays
    /// within `batch_bytes`.
    #[inline]
    pub(crate) fn queue_to(&mut self, kind: Kind, to: &impl Target, body: &[u8], arg: u32) -> u64 {
        let (pid, name) = to.parts();
        let batching = kind == Kind::Send && self.batch_bytes > 0;
        if batching {
            if let Some(corr) = self.join_batch(pid, name.as_bytes(), body) {
                return corr;
            }
        }
        let start = self.write_buf.len();
        let corr = self.queue(Envelope {
            kind,
            pid,
            arg,
            name,
            body,
            corr: 0,
        });
        if batching {
            self.open_batch = Some(OpenBatch {
                start,
                pid,
                name_len: name.len(),
                count: 1,
                next_corr: corr.wrapping_add(1),
            });
        }
        corr
    }

    /// Adds `body` to the open `Send` or `Batch` frame when it goes to `pid`/`name`, has
    /// room, and the next correlation id continues its own; the id, if so. A `Send` becomes
    /// a `Batch` of one first. (Not inlined: it would make `queue` too big to inline into
    /// a sender's loop, which cost a frame per message about 6 ns in the core bench.)
    #[inline(never)]
    fn join_batch(&mut self, pid: u32, name: &[u8], body: &[u8]) -> Option<u64> {
        let open = self.open_batch.as_mut()?;
        let start = open.start;
        let body_at = start + MIN_FRAME + open.name_len;
        let grows = batch::ENTRY_HEADER * (1 + (open.count == 1) as usize) + body.len();
        if open.pid != pid
            || open.name_len != name.len()
            || open.count >= batch::MAX_BATCH_MESSAGES
            || self.write_buf.len() - start + grows > self.batch_bytes
            || !self.corr_ids.next_is(open.next_corr)
            || !same_name(&self.write_buf[start + MIN_FRAME..body_at], name)
        {
            return None;
        }
        if open.count == 1 {
            // The single message's body gets its length in front of it.
            let body_len = self.write_buf.len() - body_at;
            self.write_buf.extend_from_slice(&[0; batch::ENTRY_HEADER]);
            let entry_at = body_at + batch::ENTRY_HEADER;
            self.write_buf
                .copy_within(body_at..body_at + body_len, entry_at);
            self.write_buf[body_at..entry_at].copy_from_slice(&(body_len as u32).to_le_bytes());
            self.write_buf[start + KIND_AT] = Kind::Batch as u8;
        }
        open.count += 1;
        open.next_corr = open.next_corr.wrapping_add(1);
        batch::append(&mut self.write_buf, body);
        Some(self.corr_ids.next())
    }

    /// Ends the open batch, if any: its frame's length and message count, left behind while
    /// messages joined it, are written into its header.
    #[inline]
    fn close_batch(&mut self) {
        let Some(open) = self.open_batch.take() else {
            return;
        };
        if open.count > 1 {
            let length = (self.write_buf.len() - open.start) as u32;
            let frame = &mut self.write_buf[open.start..];
            frame[0..4].copy_from_slice(&length.to_le_bytes());
            frame[ARG_AT..ARG_AT + 4].copy_from_slice(&open.count.to_le_bytes());
        }
    }

    /// Bytes the next read should make room for.
    pub(crate) fn reserve_for_read(&mut self) {
        let wanted = self
            .decoder
            .wanted(&self.read_buf)
            .saturating_sub(self.read_buf.len());
        self.read_buf.reserve(wanted.max(64 * 1024));
    }

    /// The next delivered message, request or failure report among what has been read.
    #[inline]
    pub(crate) fn next_incoming(&mut self) -> Result<Option<Incoming>, ClientError> {
        if let Some(incoming) = self.inbox.pop_front() {
            return Ok(Some(incoming));
        }
        if let Some(message) = self.next_of_batch() {
            return Ok(Some(Incoming::Message(message)));
        }
        loop {
            match self.decode_one()? {
                None => return Ok(None),
                Some(Item::Incoming(incoming)) => return Ok(Some(incoming)),
                Some(Item::Queued) => return Ok(self.inbox.pop_front()),
                // An answer nobody waits for any more (its caller gave up).
                Some(Item::Answer(..)) => {}
                Some(Item::Error(failure)) => return Ok(Some(Incoming::Failure(failure))),
            }
        }
    }

    /// The common case, built in place: a whole, well-formed message at the front of the
    /// read buffer. Anything else is left to the general decoder, which reports problems.
    #[inline]
    pub(crate) fn next_message(&mut self) -> Option<Message> {
        if self.unbatching.is_some() {
            return self.next_of_batch();
        }
        if !self.inbox.is_empty() {
            return None;
        }
        let (sender, length) = self.decoder.frame_at_start(&self.read_buf)?;
        let raw = RawEnvelope::parse(&self.read_buf[HEADER_LEN..length]).ok()?;
        let message = match raw.kind {
            Kind::Send | Kind::Broadcast => Message {
                from: sender,
                to: addressed(raw.kind, raw.name),
                corr: raw.corr,
                body: raw.body.to_vec(),
            },
            Kind::Batch => {
                // A bad batch is left to the general decoder, which reports it.
                batch::check(raw.body, raw.arg).ok()?;
                self.unbatching = Some(Unbatching {
                    from: sender,
                    to: addressed(raw.kind, raw.name),
                    next_corr: raw.corr,
                    at: length - raw.body.len(),
                    end: length,
                });
                return self.next_of_batch();
            }
            _ => return None,
        };
        self.read_buf.advance(length);
        Some(message)
    }

    /// The next message of the batch being handed out, if any; the batch leaves the read
    /// buffer with its last message.
    #[inline]
    fn next_of_batch(&mut self) -> Option<Message> {
        let batch = self.unbatching.as_mut()?;
        let entry = &self.read_buf[batch.at..batch.end];
        let Some(body) = batch::Entries::new(entry).next().map(<[u8]>::to_vec) else {
            // Not after `batch::check`; but never stall on the frame.
            self.read_buf.advance(batch.end);
            self.unbatching = None;
            return None;
        };
        let message = Message {
            from: batch.from,
            to: batch.to,
            corr: batch.next_corr,
            body,
        };
        batch.at += batch::ENTRY_HEADER + message.body.len();
        batch.next_corr = batch.next_corr.wrapping_add(1);
        if batch.at >= batch.end {
            self.read_buf.advance(batch.end);
            self.unbatching = None;
        }
        Some(message)
    }

    /// The answer to `awaited` among what has been read; everything else read meanwhile
    /// goes to the inbox.
    pub(crate) fn answer_for(&mut self, awaited: u64) -> Result<Option<Answer>, ClientError> {
        // What is left of a batch being handed out comes before anything decoded after it.
        while let Some(message) = self.next_of_batch() {
            self.inbox.push_back(Incoming::Message(message));
        }
        loop {
            let incoming = match self.decode_one()? {
                None => return Ok(None),
                Some(Item::Answer(corr, answer)) if corr == awaited => return Ok(Some(answer)),
                Some(Item::Answer(..)) => continue,
                Some(Item::Error(failure)) if failure.corr == awaited => {
                    return Ok(Some(Answer::Error(failure.code, failure.message)))
                }
                Some(Item::Error(failure)) => Incoming::Failure(failure),
                Some(Item::Incoming(incoming)) => incoming,
                Some(Item::Queued) => continue,
            };
            if self.inbox.len() >= self.inbox_max {
                return Err(ClientError::InboxFull(self.inbox.len()));
            }
            self.inbox.push_back(incoming);
        }
    }

    /// Decodes the next frame in place.
    #[inline]
    fn decode_one(&mut self) -> Result<Option<Item>, ClientError> {
        debug_assert!(
            self.unbatching.is_none(),
            "a batch is still being handed out"
        );
        loop {
            let (skipped, found) = self.decoder.scan(&self.read_buf, false);
            if skipped > 0 {
                self.read_buf.advance(skipped);
            }
            match found {
                None => return Ok(None),
                Some(Found::Frame { pid, length }) => {
                    let item = self.item(pid, length);
                    self.read_buf.advance(length);
                    return item.map(Some);
                }
                // A decoder that expects no particular pid finds neither of these; skip
                // such a frame all the same rather than stall on it.
                Some(Found::Foreign { length, .. }) => self.read_buf.advance(length),
                Some(Found::Oversize { length }) => {
                    return Err(ClientError::Protocol(format!(
                        "the hub sent a frame of {length} bytes, over max_frame_bytes"
                    )))
                }
                Some(Found::Damaged) => {
                    return Err(ClientError::Protocol(
                        "the stream from the hub is damaged past the decoder's limit".into(),
                    ))
                }
            }
        }
    }

    #[inline]
    fn item(&mut self, sender: u32, length: usize) -> Result<Item, ClientError> {
        let raw = RawEnvelope::parse(&self.read_buf[HEADER_LEN..length]).map_err(bad_frame)?;
        if raw.kind == Kind::Batch {
            let messages = unbatch(sender, &raw)?;
            self.inbox.extend(messages.map(Incoming::Message));
            return Ok(Item::Queued);
        }
        if matches!(raw.kind, Kind::Send | Kind::Broadcast) {
            return Ok(Item::Incoming(Incoming::Message(Message {
                from: sender,
                to: addressed(raw.kind, raw.name),
                corr: raw.corr,
                body: raw.body.to_vec(),
            })));
        }
        let env = raw.checked().map_err(bad_frame)?;
        Ok(match env.kind {
            Kind::Ok => {
                // The `Ok` to a `Register` says how long a frame the hub accepts.
                if env.arg > 0 {
                    self.batch_bytes = self.batch_bytes.min(env.arg as usize);
                }
                Item::Answer(env.corr, Answer::Ok)
            }
            Kind::Reply => Item::Answer(env.corr, Answer::Reply(env.body.to_vec())),
            Kind::Error => Item::Error(Failure {
                corr: env.corr,
                code: ErrorCode::from_u32(env.arg),
                destination: (env.pid != 0 || !env.name.is_empty()).then(|| {
                    if env.name.is_empty() {
                        Destination::Pid(env.pid)
                    } else {
                        Destination::Name(env.name.into())
                    }
                }),
                message: String::from_utf8_lossy(env.body).into_owned(),
            }),
            Kind::Request | Kind::PushConfig | Kind::Invoke => {
                let kind = match env.kind {
                    Kind::Request => RequestKind::Request,
                    Kind::PushConfig => RequestKind::PushConfig,
                    _ => RequestKind::Invoke,
                };
                Item::Incoming(Incoming::Request(Request {
                    from: sender,
                    corr: env.corr,
                    kind,
                    body: env.body.to_vec(),
                }))
            }
            other => {
                return Err(ClientError::Protocol(format!(
                    "the hub sent a {other:?} frame, which only clients send"
                )))
            }
        })
    }
}

fn bad_frame(err: EnvelopeError) -> ClientError {
    bad_frame_text(err.to_string())
}

fn bad_frame_text(why: String) -> ClientError {
    ClientError::Protocol(format!("bad frame from the hub: {why}"))
}

/// One decoded frame.
enum Item {
    Answer(u64, Answer),
    Error(Failure),
    Incoming(Incoming),
    /// A batch's messages, put at the back of the inbox.
    Queued,
}

/// The messages of a `Batch` frame from `sender`, each with its own correlation id.
fn unbatch<'a>(
    sender: u32,
    raw: &RawEnvelope<'a>,
) -> Result<impl Iterator<Item = Message> + 'a, ClientError> {
    batch::check(raw.body, raw.arg).map_err(|why| bad_frame_text(format!("bad batch: {why}")))?;
    let to = addressed(raw.kind, raw.name);
    let first = raw.corr;
    Ok(batch::Entries::new(raw.body)
        .enumerate()
        .map(move |(index, body)| Message {
            from: sender,
            to,
            corr: first.wrapping_add(index as u64),
            body: body.to_vec(),
        }))
}

/// How a `Send` or `Broadcast` frame addressed this client: the name in it is this
/// connection's (or a prefix of it), as the hub routed it here, so only its length matters.
#[inline]
fn addressed(kind: Kind, name: &[u8]) -> Addressed {
    match (kind, name.is_empty()) {
        (Kind::Broadcast, _) => Addressed::Broadcast {
            prefix_len: name.len(),
        },
        (_, true) => Addressed::Pid,
        (_, false) => Addressed::Name,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::frame::FrameDecoder;

    fn state(batch_bytes: usize) -> ClientState {
        ClientState::new(&ClientOptions {
            batch_bytes,
            verify_checksums: true,
            ..ClientOptions::default()
        })
    }

    /// The kinds and message counts of the frames `sender` has queued, checked as a hub
    /// checks them.
    fn frames(sender: &mut ClientState) -> Vec<(Kind, u32, usize)> {
        let bytes = sender.outgoing().to_vec();
        let mut decoder = FrameDecoder::new(MIN_FRAME, 1 << 20, Some(sender.pid));
        let mut found = Vec::new();
        assert_eq!(decoder.scan_read(&bytes, &mut found), bytes.len());
        assert_eq!(
            decoder.damage(),
            Default::default(),
            "every frame is sealed"
        );
        found
            .iter()
            .map(|&(at, item)| {
                let Found::Frame { length, .. } = item else {
                    panic!("{item:?}")
                };
                let frame = &bytes[at..at + length];
                let raw = RawEnvelope::parse(&frame[HEADER_LEN..]).unwrap();
                if raw.kind == Kind::Batch {
                    batch::check(raw.body, raw.arg).unwrap();
                }
                (raw.kind, crate::wire::envelope::messages_in(frame), length)
            })
            .collect()
    }

    /// Everything `sender` queued, as a receiver's client hands it out.
    fn received(sender: &mut ClientState) -> Vec<Incoming> {
        let mut receiver = state(0);
        receiver.read_buf.extend_from_slice(sender.outgoing());
        let mut got = Vec::new();
        loop {
            if let Some(message) = receiver.next_message() {
                got.push(Incoming::Message(message));
            } else if let Some(incoming) = receiver.next_incoming().unwrap() {
                got.push(incoming);
            } else {
                break;
            }
        }
        assert!(receiver.read_buf.is_empty());
        got
    }

    #[test]
    fn messages_queued_to_one_destination_share_a_frame_and_arrive_one_by_one() {
        let mut sender = state(16 * 1024);
        let mut sent = Vec::new();
        for i in 0..5u8 {
            sent.push((sender.queue_to(Kind::Send, &"a", &[i; 3], 0), vec![i; 3]));
        }
        sent.push((
            sender.queue_to(Kind::Send, &7u32, b"to a pid", 0),
            b"to a pid".to_vec(),
        ));
        let request = sender.queue_to(Kind::Request, &"a", b"question", 100);
        for body in [&b""[..], b"last"] {
            sent.push((sender.queue_to(Kind::Send, &"a", body, 0), body.to_vec()));
        }
        assert_eq!(
            frames(&mut sender)
                .iter()
                .map(|&(kind, messages, _)| (kind, messages))
                .collect::<Vec<_>>(),
            [
                (Kind::Batch, 5),
                (Kind::Send, 1),
                (Kind::Request, 1),
                (Kind::Batch, 2)
            ]
        );
        let got = received(&mut sender);
        let mut messages = Vec::new();
        for incoming in got {
            match incoming {
                Incoming::Message(m) => messages.push((m.corr, m.body, m.to)),
                Incoming::Request(r) => {
                    assert_eq!((r.corr, r.body), (request, b"question".to_vec()))
                }
                other => panic!("{other:?}"),
            }
        }
        let expected: Vec<(u64, Vec<u8>, Addressed)> = sent
            .into_iter()
            .enumerate()
            .map(|(i, (corr, body))| {
                let to = if i == 5 {
                    Addressed::Pid
                } else {
                    Addressed::Name
                };
                (corr, body, to)
            })
            .collect();
        assert_eq!(messages, expected);
    }

    #[test]
    fn a_batch_stays_within_batch_bytes_and_the_message_cap() {
        let mut sender = state(1000);
        for _ in 0..100 {
            sender.queue_to(Kind::Send, &9u32, &[1; 60], 0);
        }
        let sizes = frames(&mut sender);
        assert!(
            sizes.iter().all(|&(_, _, length)| length <= 1000),
            "{sizes:?}"
        );
        assert_eq!(sizes.iter().map(|&(_, m, _)| m).sum::<u32>(), 100);
        assert_eq!(sizes[0].1, (1000 - MIN_FRAME) as u32 / 64);

        let mut sender = state(1 << 20);
        for _ in 0..batch::MAX_BATCH_MESSAGES + 1 {
            sender.queue_to(Kind::Send, &9u32, b"", 0);
        }
        let counts: Vec<u32> = frames(&mut sender).iter().map(|&(_, m, _)| m).collect();
        assert_eq!(counts, [batch::MAX_BATCH_MESSAGES, 1]);
        assert_eq!(
            received(&mut sender).len(),
            batch::MAX_BATCH_MESSAGES as usize + 1
        );
    }

    #[test]
    fn without_batch_bytes_or_across_a_write_every_message_has_its_frame() {
        let mut sender = state(0);
        for _ in 0..3 {
            sender.queue_to(Kind::Send, &"a", b"m", 0);
        }
        assert_eq!(frames(&mut sender).len(), 3);

        let mut sender = state(16 * 1024);
        sender.queue_to(Kind::Send, &"a", b"m", 0);
        let _ = sender.outgoing();
        // Sealed frames do not change: the next message starts a frame of its own.
        sender.queue_to(Kind::Send, &"a", b"m", 0);
        let kinds: Vec<Kind> = frames(&mut sender).iter().map(|&(k, _, _)| k).collect();
        assert_eq!(kinds, [Kind::Send, Kind::Send]);
        sender.written();
        sender.queue_to(Kind::Send, &"a", b"m", 0);
        sender.queue_to(Kind::Send, &"b", b"m", 0);
        assert_eq!(frames(&mut sender).len(), 2, "another name starts a frame");
    }

    #[test]
    fn an_answer_awaited_mid_batch_leaves_the_rest_of_the_batch_in_order() {
        let mut sender = state(16 * 1024);
        let corrs: Vec<u64> = (0..3u8)
            .map(|i| sender.queue_to(Kind::Send, &"a", &[i], 0))
            .collect();
        let mut receiver = state(0);
        receiver.read_buf.extend_from_slice(sender.outgoing());
        Envelope {
            corr: 99,
            body: b"answer",
            ..Envelope::new(Kind::Reply)
        }
        .write(&mut receiver.read_buf, 0);
        let first = receiver.next_message().unwrap();
        assert_eq!((first.corr, first.body), (corrs[0], vec![0]));
        match receiver.answer_for(99).unwrap() {
            Some(Answer::Reply(body)) => assert_eq!(body, b"answer"),
            other => panic!("{other:?}"),
        }
        for (i, corr) in corrs.iter().enumerate().skip(1) {
            match receiver.next_incoming().unwrap() {
                Some(Incoming::Message(m)) => assert_eq!((m.corr, m.body), (*corr, vec![i as u8])),
                other => panic!("{other:?}"),
            }
        }
        assert!(receiver.next_incoming().unwrap().is_none());
        assert!(receiver.read_buf.is_empty());
    }

    proptest::proptest! {
        #[test]
        fn whatever_is_queued_arrives_as_sent_however_it_is_batched(
            sends in proptest::collection::vec(
                (0..3usize, proptest::collection::vec(proptest::prelude::any::<u8>(), 0..200)),
                1..120),
            batch_bytes in proptest::prop_oneof![proptest::strategy::Just(0usize), 40..2000usize],
            flush_every in 1..50usize,
        ) {
            let destinations = [(Kind::Send, 0, "a"), (Kind::Send, 7, ""), (Kind::Request, 0, "a")];
            let mut sender = state(batch_bytes);
            let mut receiver = state(0);
            let mut expected = Vec::new();
            for (i, (to, body)) in sends.iter().enumerate() {
                let (kind, pid, name) = destinations[*to];
                let corr = if pid == 0 {
                    sender.queue_to(kind, &name, body, 0)
                } else {
                    sender.queue_to(kind, &pid, body, 0)
                };
                expected.push((kind == Kind::Request, corr, body.clone()));
                if (i + 1) % flush_every == 0 {
                    receiver.read_buf.extend_from_slice(sender.outgoing());
                    sender.written();
                }
            }
            receiver.read_buf.extend_from_slice(sender.outgoing());
            let mut got = Vec::new();
            loop {
                match receiver.next_message() {
                    Some(m) => got.push((false, m.corr, m.body)),
                    None => match receiver.next_incoming().unwrap() {
                        Some(Incoming::Message(m)) => got.push((false, m.corr, m.body)),
                        Some(Incoming::Request(r)) => got.push((true, r.corr, r.body)),
                        Some(other) => panic!("{other:?}"),
                        None => break,
                    },
                }
            }
            proptest::prop_assert_eq!(got, expected);
            proptest::prop_assert!(receiver.read_buf.is_empty());
        }
    }

    #[test]
    fn batches_stay_within_the_frame_size_the_hub_announces() {
        let mut client = state(16 * 1024);
        Envelope {
            corr: 1,
            arg: 1024,
            ..Envelope::new(Kind::Ok)
        }
        .write(&mut client.read_buf, 0);
        assert!(matches!(client.answer_for(1), Ok(Some(Answer::Ok))));
        for _ in 0..100 {
            client.queue_to(Kind::Send, &9u32, &[1; 60], 0);
        }
        let sizes = frames(&mut client);
        assert!(
            sizes.iter().all(|&(_, _, length)| length <= 1024),
            "{sizes:?}"
        );
        assert_eq!(sizes.iter().map(|&(_, m, _)| m).sum::<u32>(), 100);
    }

    #[test]
    fn a_batch_from_the_hub_that_does_not_add_up_is_an_error() {
        let mut receiver = state(0);
        let body = [3u8, 0, 0, 0, b'a'];
        let frame = Envelope {
            arg: 1,
            body: &body,
            ..Envelope::new(Kind::Batch)
        }
        .to_frame(42);
        receiver.read_buf.extend_from_slice(&frame);
        assert!(receiver.next_message().is_none());
        let err = receiver.next_incoming().unwrap_err().to_string();
        assert!(err.contains("bad batch"), "{err}");
    }
}
