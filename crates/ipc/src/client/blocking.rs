//! [`Client`]: the blocking client over a `std` Unix stream.

use std::io::{self, Write};
use std::os::fd::AsRawFd;
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::{Duration, Instant};

use super::state::{Answer, ClientState};
use super::{
    service_from_env, socket_from_env, timeout_ms, ClientError, ClientOptions, Incoming, Request,
    RequestKind, Target, REQUEST_GRACE,
};
use crate::wire::envelope::encode_metric;
use crate::wire::{Envelope, ErrorCode, Kind};

/// A blocking connection to the hub; see the [module doc](super).
pub struct Client {
    stream: UnixStream,
    state: ClientState,
    options: ClientOptions,
    /// The socket's read timeout now, to set it only when it changes.
    read_timeout: Option<Duration>,
}

impl Client {
    /// Connects to the hub at `path` (not registered yet).
    pub fn connect(path: impl AsRef<Path>) -> Result<Client, ClientError> {
        Client::connect_with(path, ClientOptions::default())
    }

    /// Connects with `options`.
    pub fn connect_with(
        path: impl AsRef<Path>,
        options: ClientOptions,
    ) -> Result<Client, ClientError> {
        let path = path.as_ref();
        let stream = UnixStream::connect(path).map_err(|source| ClientError::Connect {
            path: path.to_path_buf(),
            source,
        })?;
        Ok(Client::from_stream(stream, options))
    }

    /// A client on a connection made elsewhere: a descriptor inherited from a parent, or
    /// one end of a socket pair.
    pub fn from_stream(stream: UnixStream, options: ClientOptions) -> Client {
        Client {
            stream,
            state: ClientState::new(&options),
            options,
            read_timeout: None,
        }
    }

    /// Connects to the hub named by `TROUPE_IPC_SOCKET`.
    pub fn connect_env() -> Result<Client, ClientError> {
        Client::connect(socket_from_env()?)
    }

    /// This process's pid, as the hub knows it.
    pub fn pid(&self) -> u32 {
        self.state.pid
    }

    /// A second handle on the socket, for writing whole frames from another thread.
    pub(crate) fn try_clone_stream(&self) -> Result<UnixStream, ClientError> {
        Ok(self.stream.try_clone()?)
    }

    /// Registers this connection under this process's pid, and `name` if given.
    pub fn register(&mut self, name: Option<&str>) -> Result<(), ClientError> {
        let env = Envelope {
            pid: self.state.pid,
            name: name.unwrap_or(""),
            ..Envelope::new(Kind::Register)
        };
        self.call(env, self.options.op_timeout).map(drop)
    }

    /// Sends `body` to `to`; returns the message's correlation id, which a later
    /// [`Incoming::Failure`] names if it cannot be delivered.
    pub fn send(&mut self, to: impl Target, body: &[u8]) -> Result<u64, ClientError> {
        let corr = self.queue(to, body);
        self.flush()?;
        Ok(corr)
    }

    /// Like [`send`](Self::send) without writing yet: the message waits in the client until
    /// [`flush`](Self::flush) (or any other operation) writes everything queued at once.
    /// Messages queued one after another to the same destination travel in one frame (a
    /// `Batch` of up to [`ClientOptions::batch_bytes`](super::ClientOptions::batch_bytes));
    /// the receiver gets them one by one, each with its own correlation id.
    #[inline]
    pub fn queue(&mut self, to: impl Target, body: &[u8]) -> u64 {
        self.state.queue_to(Kind::Send, &to, body, 0)
    }

    /// Bytes queued and not yet written.
    pub fn queued_bytes(&self) -> usize {
        self.state.write_buf.len()
    }

    /// Writes everything queued.
    pub fn flush(&mut self) -> Result<(), ClientError> {
        if !self.state.write_buf.is_empty() {
            self.stream.write_all(self.state.outgoing())?;
            self.state.written();
        }
        Ok(())
    }

    /// Sends `body` to every connection whose name starts with `prefix`.
    pub fn broadcast(&mut self, prefix: &str, body: &[u8]) -> Result<(), ClientError> {
        self.state.queue(Envelope {
            name: prefix,
            body,
            ..Envelope::new(Kind::Broadcast)
        });
        self.flush()
    }

    /// Sends a request and waits for its reply (or the hub's error, at `timeout`).
    pub fn request(
        &mut self,
        to: impl Target,
        body: &[u8],
        timeout: Duration,
    ) -> Result<Vec<u8>, ClientError> {
        let corr = self
            .state
            .queue_to(Kind::Request, &to, body, timeout_ms(timeout));
        self.flush()?;
        self.wait(corr, timeout + REQUEST_GRACE)?.into_result()
    }

    /// The next delivered message, request or failure report; blocks until one arrives.
    #[inline]
    pub fn recv(&mut self) -> Result<Incoming, ClientError> {
        loop {
            if let Some(message) = self.state.next_message() {
                return Ok(Incoming::Message(message));
            }
            if let Some(incoming) = self.state.next_incoming()? {
                return Ok(incoming);
            }
            self.fill(None)?;
        }
    }

    /// Like [`recv`](Self::recv), giving up after `timeout`.
    pub fn recv_timeout(&mut self, timeout: Duration) -> Result<Option<Incoming>, ClientError> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(incoming) = self.state.next_incoming()? {
                return Ok(Some(incoming));
            }
            match self.fill(Some(deadline)) {
                Ok(()) => {}
                Err(ClientError::Timeout(_)) => return Ok(None),
                Err(err) => return Err(err),
            }
        }
    }

    /// Answers `request` with `body` (for a `PushConfig`, any reply acknowledges it).
    pub fn reply(&mut self, request: &Request, body: &[u8]) -> Result<(), ClientError> {
        self.state.queue(Envelope {
            pid: request.from,
            corr: request.corr,
            body,
            ..Envelope::new(Kind::Reply)
        });
        self.flush()
    }

    /// Refuses `request`, saying why; a refused `PushConfig` is not persisted.
    pub fn refuse(&mut self, request: &Request, why: &str) -> Result<(), ClientError> {
        self.state.queue(Envelope {
            pid: request.from,
            corr: request.corr,
            arg: ErrorCode::Refused.as_u32(),
            body: why.as_bytes(),
            ..Envelope::new(Kind::Error)
        });
        self.flush()
    }

    /// The hub's counters, as JSON.
    pub fn stats(&mut self) -> Result<serde_json::Value, ClientError> {
        let body = self.call(Envelope::new(Kind::Stats), self.options.op_timeout)?;
        serde_json::from_slice(&body).map_err(|err| ClientError::Protocol(err.to_string()))
    }

    /// Attaches this connection as the channel of service `service` (registering it first
    /// if needed is the caller's job). Only the service's own process may.
    pub fn attach(&mut self, service: &str) -> Result<(), ClientError> {
        let env = Envelope {
            name: service,
            ..Envelope::new(Kind::Attach)
        };
        self.call(env, self.options.op_timeout).map(drop)
    }

    /// Registers (no name) and attaches the channel of the service named by
    /// `TROUPE_SERVICE_ID`; returns the id.
    pub fn attach_from_env(&mut self) -> Result<String, ClientError> {
        let service = service_from_env()?;
        self.register(None)?;
        self.attach(&service)?;
        Ok(service)
    }

    /// The service's persisted config (empty if none was ever acknowledged).
    pub fn request_config(&mut self) -> Result<Vec<u8>, ClientError> {
        self.call(Envelope::new(Kind::RequestConfig), self.options.op_timeout)
    }

    /// Publishes a metric on the node's event stream.
    pub fn metric(
        &mut self,
        device: &str,
        route_key: &str,
        data: &[u8],
    ) -> Result<(), ClientError> {
        let body = encode_metric(device, route_key, data);
        self.state.queue(Envelope {
            body: &body,
            ..Envelope::new(Kind::Metric)
        });
        self.flush()
    }

    /// Publishes an event on the node's event stream.
    pub fn event(&mut self, event_type: u32, params: &[u8]) -> Result<(), ClientError> {
        self.state.queue(Envelope {
            arg: event_type,
            body: params,
            ..Envelope::new(Kind::Event)
        });
        self.flush()
    }

    /// Whether `request` comes from the node rather than a process.
    pub fn is_from_node(request: &Request) -> bool {
        request.kind != RequestKind::Request
    }

    fn call(&mut self, env: Envelope<'_>, timeout: Duration) -> Result<Vec<u8>, ClientError> {
        let corr = self.state.queue(env);
        self.flush()?;
        self.wait(corr, timeout)?.into_result()
    }

    fn wait(&mut self, corr: u64, timeout: Duration) -> Result<Answer, ClientError> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(answer) = self.state.answer_for(corr)? {
                return Ok(answer);
            }
            self.fill(Some(deadline))?;
        }
    }

    /// Reads more bytes, waiting at most until `deadline`.
    fn fill(&mut self, deadline: Option<Instant>) -> Result<(), ClientError> {
        let timeout = match deadline {
            Some(deadline) => {
                let left = deadline.saturating_duration_since(Instant::now());
                if left.is_zero() {
                    return Err(ClientError::Timeout(Duration::ZERO));
                }
                Some(left)
            }
            None => None,
        };
        if timeout != self.read_timeout {
            self.stream.set_read_timeout(timeout)?;
            self.read_timeout = timeout;
        }
        match read_into(&self.stream, &mut self.state) {
            Ok(0) => Err(ClientError::Closed),
            Ok(_) => Ok(()),
            Err(err) => match err.kind() {
                io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut => {
                    Err(ClientError::Timeout(timeout.unwrap_or_default()))
                }
                io::ErrorKind::Interrupted => Ok(()),
                _ => Err(ClientError::Io(err)),
            },
        }
    }
}

/// One read(2) from `stream` straight into the spare room of the state's read buffer.
fn read_into(stream: &UnixStream, state: &mut ClientState) -> io::Result<usize> {
    state.reserve_for_read();
    let spare = state.read_buf.spare_capacity_mut();
    // SAFETY: read(2) writes at most `spare.len()` bytes to the buffer it is given.
    let n = unsafe { libc::read(stream.as_raw_fd(), spare.as_mut_ptr().cast(), spare.len()) };
    if n < 0 {
        return Err(io::Error::last_os_error());
    }
    let n = n as usize;
    let filled = state.read_buf.len() + n;
    // SAFETY: the first `n` bytes of the spare room were just written by read(2).
    unsafe { state.read_buf.set_len(filled) };
    Ok(n)
}
