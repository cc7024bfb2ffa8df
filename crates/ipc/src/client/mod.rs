//! The client library: talk to a node's ipc hub from any Rust program.
//!
//! - [`Client`]: blocking. [`AsyncClient`]: the same operations on tokio.
//! - Both: `connect`, `register`, `send` (to a pid or a name), `queue` + `flush` (messages
//!   queued back to back for one receiver travel in one `Batch` frame), `recv`, `request` /
//!   `reply`, `broadcast`, `stats`; and for a supervised service: `attach` (or `attach_from_env`),
//!   `request_config`, `metric`, `event`, answering `PushConfig` / `Invoke` with
//!   `reply` or `refuse`.
//! - [`gproc`]: the seed's style, one implicit connection per process: `send(pid, data)`
//!   and `receive()`.
//!
//! ```no_run
//! use troupe_ipc::client::{Client, Incoming};
//! let mut client = Client::connect("/run/troupe/edge.sock")?;
//! client.register(Some("printer"))?;
//! client.send("spooler", b"page 1")?;
//! match client.recv()? {
//!     Incoming::Request(request) => client.reply(&request, b"done")?,
//!     other => println!("{other:?}"),
//! }
//! # Ok::<(), troupe_ipc::client::ClientError>(())
//! ```

mod asynchronous;
mod blocking;
pub mod gproc;
mod state;

use std::path::PathBuf;
use std::time::Duration;

pub use asynchronous::AsyncClient;
pub use blocking::Client;
pub use smol_str::SmolStr;

use crate::wire::ErrorCode;

/// Where a message goes: a process or a registered name.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Destination {
    /// The connection the process registered first.
    Pid(u32),
    /// The connection holding the name.
    Name(SmolStr),
}

impl From<u32> for Destination {
    fn from(pid: u32) -> Self {
        Destination::Pid(pid)
    }
}

impl From<&str> for Destination {
    fn from(name: &str) -> Self {
        Destination::Name(SmolStr::new(name))
    }
}

impl From<String> for Destination {
    fn from(name: String) -> Self {
        Destination::Name(SmolStr::new(name))
    }
}

/// Anything a message can be sent to: a pid (`u32`), a name (`&str`, `String`), or a
/// [`Destination`]. Borrowed as is, so sending to a name allocates nothing.
pub trait Target {
    /// The envelope's destination: a pid (0 with a name) and a name ("" with a pid).
    fn parts(&self) -> (u32, &str);
}

impl Target for u32 {
    fn parts(&self) -> (u32, &str) {
        (*self, "")
    }
}

impl Target for &str {
    fn parts(&self) -> (u32, &str) {
        (0, self)
    }
}

impl Target for String {
    fn parts(&self) -> (u32, &str) {
        (0, self)
    }
}

impl Target for &String {
    fn parts(&self) -> (u32, &str) {
        (0, self)
    }
}

impl Target for Destination {
    fn parts(&self) -> (u32, &str) {
        match self {
            Destination::Pid(pid) => (*pid, ""),
            Destination::Name(name) => (0, name),
        }
    }
}

impl Target for &Destination {
    fn parts(&self) -> (u32, &str) {
        (*self).parts()
    }
}

/// Something the hub delivered.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Incoming {
    /// A message (or a broadcast).
    Message(Message),
    /// A request from a process, or a `PushConfig` / `Invoke` from the node: answer it with
    /// [`Client::reply`] or [`Client::refuse`].
    Request(Request),
    /// A message this client sent earlier could not be delivered.
    Failure(Failure),
}

/// A delivered message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Message {
    /// The sending process (checked by the hub).
    pub from: u32,
    /// How the sender addressed it.
    pub to: Addressed,
    /// The sender's correlation id.
    pub corr: u64,
    /// The bytes.
    pub body: Vec<u8>,
}

/// How a delivered message was addressed. The hub delivers a message only to the connection
/// its address names, so the address itself is this client's: its pid, its registered name,
/// or a prefix of that name.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Addressed {
    /// To this process's pid.
    Pid,
    /// To this connection's registered name.
    Name,
    /// A broadcast to every name starting with the first `prefix_len` bytes of this
    /// connection's name.
    Broadcast {
        /// The prefix's length in bytes.
        prefix_len: usize,
    },
}

/// What kind of answer a [`Request`] wants.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RequestKind {
    /// A request from another process.
    Request,
    /// A new config (JSON) from the node; reply (empty) to acknowledge it, refuse to
    /// reject it. Only an acknowledged config is persisted.
    PushConfig,
    /// A call from the node; reply with the result.
    Invoke,
}

/// A request waiting for this client's answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Request {
    /// The requesting process; 0 when the node asks (`PushConfig`, `Invoke`).
    pub from: u32,
    /// Its correlation id.
    pub corr: u64,
    /// What it is.
    pub kind: RequestKind,
    /// The bytes (the config's JSON for `PushConfig`).
    pub body: Vec<u8>,
}

/// A message this client sent that the hub could not deliver.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Failure {
    /// The correlation id [`Client::send`] returned.
    pub corr: u64,
    /// Why.
    pub code: ErrorCode,
    /// Where it was going, when known.
    pub destination: Option<Destination>,
    /// The hub's explanation.
    pub message: String,
}

/// Why a client operation failed.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// The hub's socket could not be reached.
    #[error("cannot connect to the ipc hub at {}: {source}", .path.display())]
    Connect {
        /// The socket path.
        path: PathBuf,
        /// The error.
        source: std::io::Error,
    },
    /// Reading or writing the connection failed.
    #[error("ipc connection failed: {0}")]
    Io(#[from] std::io::Error),
    /// The hub closed the connection.
    #[error("the ipc hub closed the connection")]
    Closed,
    /// The hub (or the requested process) answered with an error.
    #[error("{message} ({code:?})")]
    Hub {
        /// What kind of error.
        code: ErrorCode,
        /// The explanation.
        message: String,
    },
    /// No answer came in time.
    #[error("no answer from the ipc hub within {0:?}")]
    Timeout(Duration),
    /// An environment variable this operation needs is missing.
    #[error("environment variable {0} is not set: is this process supervised by a troupe node?")]
    MissingEnv(&'static str),
    /// The hub sent something this client cannot read.
    #[error("ipc protocol error: {0}")]
    Protocol(String),
    /// A message sent earlier could not be delivered (gproc's `receive` reports it so).
    #[error("a message was not delivered: {}", .0.message)]
    Undelivered(Failure),
    /// Too many delivered messages are waiting to be received.
    #[error("{0} received messages are waiting; call recv before waiting for more answers")]
    InboxFull(usize),
}

/// Tunables of a client.
#[derive(Debug, Clone)]
pub struct ClientOptions {
    /// Longest frame accepted from the hub (match the hub's `max_frame_bytes`).
    pub max_frame_bytes: usize,
    /// Most delivered messages kept while an operation waits for its answer.
    pub inbox_max: usize,
    /// How long `register`, `attach`, `stats` and `request_config` wait for the hub.
    pub op_timeout: Duration,
    /// Recompute the checksum of every frame from the hub. Off by default: the hub verifies
    /// every frame it accepts and forwards it unchanged, or builds it itself, over a local
    /// socket that cannot damage it; lengths and envelopes are checked either way.
    pub verify_checksums: bool,
    /// Largest frame that messages queued one after another to one destination are gathered
    /// into (a `Batch`; the receiver's client hands them out one by one). 0: a frame per
    /// message.
    pub batch_bytes: usize,
}

impl Default for ClientOptions {
    fn default() -> Self {
        ClientOptions {
            max_frame_bytes: 1 << 20,
            inbox_max: 65_536,
            op_timeout: Duration::from_secs(10),
            verify_checksums: false,
            batch_bytes: 16 * 1024,
        }
    }
}

/// Extra time a client waits past a request's own timeout for the hub's answer (the hub
/// answers a timed-out request with an error itself).
const REQUEST_GRACE: Duration = Duration::from_secs(2);

/// A request timeout in whole milliseconds, as the envelope carries it (at least 1).
fn timeout_ms(timeout: Duration) -> u32 {
    timeout.as_millis().clamp(1, u32::MAX as u128) as u32
}

/// The socket path from `TROUPE_IPC_SOCKET`.
pub fn socket_from_env() -> Result<PathBuf, ClientError> {
    std::env::var_os(troupe_core::services::ENV_IPC_SOCKET)
        .filter(|v| !v.is_empty())
        .map(PathBuf::from)
        .ok_or(ClientError::MissingEnv(
            troupe_core::services::ENV_IPC_SOCKET,
        ))
}

/// The service id from `TROUPE_SERVICE_ID`.
pub fn service_from_env() -> Result<String, ClientError> {
    std::env::var(troupe_core::services::ENV_SERVICE_ID)
        .ok()
        .filter(|v| !v.is_empty())
        .ok_or(ClientError::MissingEnv(
            troupe_core::services::ENV_SERVICE_ID,
        ))
}
