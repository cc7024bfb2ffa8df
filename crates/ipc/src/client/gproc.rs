//! gproc-style helpers: one implicit connection per process, registered under the
//! process's pid on first use, at the hub named by `TROUPE_IPC_SOCKET` (or the path given
//! to [`connect`]).
//!
//! ```no_run
//! use troupe_ipc::client::gproc;
//! gproc::send(4242, b"hello")?;
//! let msg = gproc::receive()?;
//! println!("{} says {:?}", msg.pid, msg.data);
//! # Ok::<(), troupe_ipc::client::ClientError>(())
//! ```
//!
//! Unlike the seed, nothing is lost silently: a message the hub could not deliver (its
//! receiver did not connect within the mailbox TTL, or its mailbox was full) comes back
//! from [`receive`] as [`ClientError::Undelivered`]. Requests sent to a gproc process are
//! refused on its behalf, since it has no way to reply.

use std::io::Write;
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::sync::{Mutex, OnceLock};

use bytes::BytesMut;

use super::state::next_corr;
use super::{socket_from_env, Client, ClientError, Incoming};
use crate::wire::{Envelope, ErrorCode, Kind};

/// A message from another process.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Msg {
    /// The sender's pid (checked by the hub).
    pub pid: u32,
    /// The bytes.
    pub data: Vec<u8>,
}

/// The process's connection. Sending writes through a second handle on the same socket, so
/// that a thread blocked in [`receive`] does not hold up [`send`], and reports about what
/// was sent arrive where [`receive`] reads.
struct Shared {
    receiver: Mutex<Client>,
    sender: Mutex<(UnixStream, BytesMut)>,
}

static SHARED: OnceLock<Result<Shared, String>> = OnceLock::new();

/// Connects to the hub at `path` (instead of `TROUPE_IPC_SOCKET`); only the first call of
/// `connect`, `send` or `receive` in a process chooses the hub.
pub fn connect(path: impl AsRef<Path>) -> Result<(), ClientError> {
    let path = path.as_ref().to_path_buf();
    shared_with(|| Ok(path)).map(drop)
}

/// Sends `data` to process `pid`.
pub fn send(pid: u32, data: impl AsRef<[u8]>) -> Result<(), ClientError> {
    let shared = shared_with(socket_from_env)?;
    write_frame(
        shared,
        Envelope {
            pid,
            corr: next_corr(),
            body: data.as_ref(),
            ..Envelope::new(Kind::Send)
        },
    )
}

/// Writes one whole frame through the sending handle.
fn write_frame(shared: &Shared, env: Envelope<'_>) -> Result<(), ClientError> {
    let mut sender = shared.sender.lock().unwrap_or_else(|e| e.into_inner());
    let (stream, buf) = &mut *sender;
    buf.clear();
    env.write(buf, std::process::id());
    stream.write_all(buf)?;
    Ok(())
}

/// The next message for this process; blocks until one arrives.
pub fn receive() -> Result<Msg, ClientError> {
    let shared = shared_with(socket_from_env)?;
    let mut receiver = shared.receiver.lock().unwrap_or_else(|e| e.into_inner());
    loop {
        match receiver.recv()? {
            Incoming::Message(message) => {
                return Ok(Msg {
                    pid: message.from,
                    data: message.body,
                })
            }
            Incoming::Request(request) => {
                // Written through the sending handle, under its lock, so that it cannot
                // interleave with a frame another thread is sending.
                let why = "this process receives messages only (gproc)";
                write_frame(
                    shared,
                    Envelope {
                        pid: request.from,
                        corr: request.corr,
                        arg: ErrorCode::Refused.as_u32(),
                        body: why.as_bytes(),
                        ..Envelope::new(Kind::Error)
                    },
                )?;
            }
            Incoming::Failure(failure) => return Err(ClientError::Undelivered(failure)),
        }
    }
}

fn shared_with(
    path: impl FnOnce() -> Result<std::path::PathBuf, ClientError>,
) -> Result<&'static Shared, ClientError> {
    if let Some(shared) = SHARED.get() {
        return shared
            .as_ref()
            .map_err(|why| ClientError::Protocol(why.clone()));
    }
    let path = path()?;
    let made = (|| {
        let mut receiver = Client::connect(&path)?;
        receiver.register(None)?;
        let sender = receiver.try_clone_stream()?;
        Ok::<_, ClientError>(Shared {
            receiver: Mutex::new(receiver),
            sender: Mutex::new((sender, BytesMut::new())),
        })
    })();
    match made {
        Ok(shared) => {
            let _ = SHARED.set(Ok(shared));
            SHARED
                .get()
                .expect("just set")
                .as_ref()
                .map_err(|why| ClientError::Protocol(why.clone()))
        }
        // Not cached: a hub that is not up yet may be up at the next call.
        Err(err) => Err(err),
    }
}
