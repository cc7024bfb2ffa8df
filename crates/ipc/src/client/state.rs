//! The client's protocol state, sans IO: frames to write, bytes read, what they decode to,
//! and which answer an operation is waiting for. The blocking and async clients are thin
//! loops around it.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use bytes::{Buf, BytesMut};

use super::{ClientError, Destination, Failure, Incoming, Message, Request, RequestKind, Target};
use crate::wire::frame::{Found, HEADER_LEN};
use crate::wire::{Envelope, ErrorCode, FrameDecoder, Kind, MIN_FRAME};

/// Correlation ids are unique per process, so the hub can key requests by (pid, id) even
/// when a process has several connections.
static NEXT_CORR: AtomicU64 = AtomicU64::new(1);

/// A fresh correlation id.
pub(crate) fn next_corr() -> u64 {
    NEXT_CORR.fetch_add(1, Ordering::Relaxed)
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
    last_name: Option<Arc<str>>,
}

impl ClientState {
    pub(crate) fn new(max_frame: usize, inbox_max: usize) -> ClientState {
        ClientState {
            pid: std::process::id(),
            read_buf: BytesMut::with_capacity(64 * 1024),
            write_buf: BytesMut::new(),
            decoder: FrameDecoder::new(MIN_FRAME, max_frame, None),
            inbox: VecDeque::new(),
            inbox_max,
            last_name: None,
        }
    }

    /// Queues a frame with a fresh correlation id (or `corr` when not 0); returns the id.
    pub(crate) fn queue(&mut self, mut env: Envelope<'_>) -> u64 {
        if env.corr == 0 {
            env.corr = next_corr();
        }
        env.write(&mut self.write_buf, self.pid);
        env.corr
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
    fn decode_one(&mut self) -> Result<Option<Item>, ClientError> {
        loop {
            let Some(found) = self.decoder.locate(&mut self.read_buf, false) else {
                return Ok(None);
            };
            let Found::Frame { pid, length } = found else {
                continue; // the hub does not send these
            };
            let item = self.item(pid, length);
            self.read_buf.advance(length);
            return item.map(Some);
        }
    }

    fn item(&mut self, sender: u32, length: usize) -> Result<Item, ClientError> {
        let env = Envelope::parse(&self.read_buf[HEADER_LEN..length])
            .map_err(|err| ClientError::Protocol(format!("bad frame from the hub: {err}")))?;
        Ok(match env.kind {
            Kind::Ok => Item::Answer(env.corr, Answer::Ok),
            Kind::Reply => Item::Answer(env.corr, Answer::Reply(env.body.to_vec())),
            Kind::Error => Item::Error(Failure {
                corr: env.corr,
                code: ErrorCode::from_u32(env.arg),
                destination: (env.pid != 0 || !env.name.is_empty())
                    .then(|| destination(&env, &mut self.last_name)),
                message: String::from_utf8_lossy(env.body).into_owned(),
            }),
            Kind::Send | Kind::Broadcast => Item::Incoming(Incoming::Message(Message {
                from: sender,
                to: destination(&env, &mut self.last_name),
                corr: env.corr,
                broadcast: env.kind == Kind::Broadcast,
                body: env.body.to_vec(),
            })),
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

/// One decoded frame.
enum Item {
    Answer(u64, Answer),
    Error(Failure),
    Incoming(Incoming),
}

/// The frame's destination; a name equal to the last one seen shares its allocation.
fn destination(env: &Envelope<'_>, last_name: &mut Option<Arc<str>>) -> Destination {
    if env.name.is_empty() {
        return Destination::Pid(env.pid);
    }
    match last_name {
        Some(name) if &**name == env.name => Destination::Name(name.clone()),
        _ => {
            let name: Arc<str> = Arc::from(env.name);
            *last_name = Some(name.clone());
            Destination::Name(name)
        }
    }
}
