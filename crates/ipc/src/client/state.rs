//! The client's protocol state, sans IO: frames to write, bytes read, what they decode to,
//! and which answer an operation is waiting for. The blocking and async clients are thin
//! loops around it.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, Ordering};

use bytes::{Buf, BytesMut};

use super::{
    Addressed, ClientError, ClientOptions, Destination, Failure, Incoming, Message, Request,
    RequestKind, Target,
};
use crate::wire::envelope::{EnvelopeError, RawEnvelope};
use crate::wire::frame::{seal_frames, Found, HEADER_LEN};
use crate::wire::{Envelope, ErrorCode, FrameDecoder, Kind, MIN_FRAME};

/// Correlation ids are unique per process, so the hub can key requests by (pid, id) even
/// when a process has several connections.
static NEXT_CORR: AtomicU64 = AtomicU64::new(1);

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
        }
    }

    /// Queues a frame with a fresh correlation id (or `corr` when not 0); returns the id.
    /// (Inlined into the caller, which usually knows the kind, and often that there is no
    /// name: messages are queued one at a time, by the million.)
    #[inline]
    pub(crate) fn queue(&mut self, mut env: Envelope<'_>) -> u64 {
        if env.corr == 0 {
            env.corr = self.corr_ids.next();
        }
        env.write_unsealed(&mut self.write_buf, self.pid);
        env.corr
    }

    /// Everything queued, sealed and ready to write; [`written`](Self::written) once it is.
    pub(crate) fn outgoing(&mut self) -> &[u8] {
        seal_frames(&mut self.write_buf);
        &self.write_buf
    }

    /// The queued frames were written.
    pub(crate) fn written(&mut self) {
        self.write_buf.clear();
    }

    /// Queues a message or request to `to`.
    pub(crate) fn queue_to(&mut self, kind: Kind, to: &impl Target, body: &[u8], arg: u32) -> u64 {
        let (pid, name) = to.parts();
        self.queue(Envelope {
            kind,
            pid,
            arg,
            name,
            body,
            corr: 0,
        })
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
        loop {
            match self.decode_one()? {
                None => return Ok(None),
                Some(Item::Incoming(incoming)) => return Ok(Some(incoming)),
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
        if !self.inbox.is_empty() {
            return None;
        }
        let (sender, length) = self.decoder.frame_at_start(&self.read_buf)?;
        let raw = RawEnvelope::parse(&self.read_buf[HEADER_LEN..length]).ok()?;
        if !matches!(raw.kind, Kind::Send | Kind::Broadcast) {
            return None;
        }
        let message = Message {
            from: sender,
            to: addressed(raw.kind, raw.name),
            corr: raw.corr,
            body: raw.body.to_vec(),
        };
        self.read_buf.advance(length);
        Some(message)
    }

    /// The answer to `awaited` among what has been read; everything else read meanwhile
    /// goes to the inbox.
    pub(crate) fn answer_for(&mut self, awaited: u64) -> Result<Option<Answer>, ClientError> {
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
            }
        }
    }

    #[inline]
    fn item(&mut self, sender: u32, length: usize) -> Result<Item, ClientError> {
        let raw = RawEnvelope::parse(&self.read_buf[HEADER_LEN..length]).map_err(bad_frame)?;
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
            Kind::Ok => Item::Answer(env.corr, Answer::Ok),
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
    ClientError::Protocol(format!("bad frame from the hub: {err}"))
}

/// One decoded frame.
enum Item {
    Answer(u64, Answer),
    Error(Failure),
    Incoming(Incoming),
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
