//! The client's protocol state, sans IO: frames to write, bytes read, what they decode to,
//! and which answer an operation is waiting for. The blocking and async clients are thin
//! loops around it.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, Ordering};

use bytes::BytesMut;

use super::{ClientError, Destination, Failure, Incoming, Message, Request, RequestKind};
use crate::wire::{Decoded, Envelope, ErrorCode, FrameDecoder, Kind, MIN_FRAME};

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
    pub(crate) fn queue_to(&mut self, kind: Kind, to: &Destination, body: &[u8], arg: u32) -> u64 {
        let (pid, name) = match to {
            Destination::Pid(pid) => (*pid, ""),
            Destination::Name(name) => (0, name.as_str()),
        };
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

    /// A message taken from the inbox.
    pub(crate) fn pop_incoming(&mut self) -> Option<Incoming> {
        self.inbox.pop_front()
    }

    /// Decodes what has been read. An answer to `awaited` is returned as soon as it is
    /// found; everything else goes to the inbox.
    pub(crate) fn decode(&mut self, awaited: Option<u64>) -> Result<Option<Answer>, ClientError> {
        while let Some(decoded) = self.decoder.decode(&mut self.read_buf) {
            let Decoded::Frame(frame) = decoded else {
                continue;
            };
            let env = Envelope::parse(frame.payload())
                .map_err(|err| ClientError::Protocol(format!("bad frame from the hub: {err}")))?;
            let is_answer = matches!(env.kind, Kind::Ok | Kind::Reply | Kind::Error);
            if is_answer && Some(env.corr) == awaited {
                return Ok(Some(match env.kind {
                    Kind::Ok => Answer::Ok,
                    Kind::Reply => Answer::Reply(env.body.to_vec()),
                    _ => Answer::Error(
                        ErrorCode::from_u32(env.arg),
                        String::from_utf8_lossy(env.body).into_owned(),
                    ),
                }));
            }
            let incoming = match env.kind {
                Kind::Send | Kind::Broadcast => Incoming::Message(Message {
                    from: frame.pid,
                    to: destination(&env),
                    corr: env.corr,
                    broadcast: env.kind == Kind::Broadcast,
                    body: env.body.to_vec(),
                }),
                Kind::Request | Kind::PushConfig | Kind::Invoke => {
                    let kind = match env.kind {
                        Kind::Request => RequestKind::Request,
                        Kind::PushConfig => RequestKind::PushConfig,
                        _ => RequestKind::Invoke,
                    };
                    Incoming::Request(Request {
                        from: frame.pid,
                        corr: env.corr,
                        kind,
                        body: env.body.to_vec(),
                    })
                }
                Kind::Error => Incoming::Failure(Failure {
                    corr: env.corr,
                    code: ErrorCode::from_u32(env.arg),
                    destination: (env.pid != 0 || !env.name.is_empty()).then(|| destination(&env)),
                    message: String::from_utf8_lossy(env.body).into_owned(),
                }),
                // An answer nobody waits for any more (its caller gave up).
                _ => continue,
            };
            if self.inbox.len() >= self.inbox_max {
                return Err(ClientError::InboxFull(self.inbox.len()));
            }
            self.inbox.push_back(incoming);
        }
        Ok(None)
    }
}

fn destination(env: &Envelope<'_>) -> Destination {
    if env.name.is_empty() {
        Destination::Pid(env.pid)
    } else {
        Destination::Name(env.name.to_string())
    }
}
