//! Clients for Rust programs: [`PirateClient`] (the Guide's "Lazy Pirate": a REQ socket
//! that, on timeout, closes, reconnects and resends up to `retries` times) for a Paranoid
//! Pirate frontend, and [`MajordomoClient`] (the same over Majordomo, naming the service).
//! Both turn the broker's error replies into [`ClientError::Broker`].
//!
//! Retrying resends the request: use `retries > 0` only for requests that are safe to repeat.
//!
//! ```no_run
//! use std::time::Duration;
//! use troupe_broker::client::{ClientError, ClientOptions, MajordomoClient};
//!
//! let options = ClientOptions { timeout: Duration::from_secs(2), retries: 1 };
//! let mut client = MajordomoClient::new("tcp://127.0.0.1:7500", options);
//! match client.request("echo", vec![b"hello".to_vec()]) {
//!     Ok(reply) => println!("{}", String::from_utf8_lossy(&reply[0])),
//!     Err(ClientError::Broker { code, message }) => eprintln!("broker error {code}: {message}"),
//!     Err(other) => eprintln!("{other}"),
//! }
//! ```

use std::time::Duration;

use crate::protocol::{self, MDP_CLIENT};

/// Why a request got no usable reply.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// No reply within the timeout, after every attempt.
    #[error("no reply from {endpoint} within {timeout:?} (after {attempts} attempt(s))")]
    NoReply {
        /// Where the request was sent.
        endpoint: String,
        /// The per-attempt timeout.
        timeout: Duration,
        /// Attempts made.
        attempts: u32,
    },
    /// The broker answered with an error reply.
    #[error("broker error {code}: {message}")]
    Broker {
        /// 502 worker lost, 503 refused, 504 no worker in time.
        code: u16,
        /// `<service>: <text>`.
        message: String,
    },
    /// The reply was not in the protocol's format.
    #[error("malformed reply: {0}")]
    Malformed(&'static str),
    /// ZeroMQ refused something.
    #[error("client socket: {0}")]
    Socket(#[from] zmq::Error),
}

/// Per-request timing of a client.
#[derive(Debug, Clone, Copy)]
pub struct ClientOptions {
    /// How long one attempt waits for its reply.
    pub timeout: Duration,
    /// Attempts after the first.
    pub retries: u32,
}

impl Default for ClientOptions {
    fn default() -> Self {
        ClientOptions {
            timeout: Duration::from_secs(5),
            retries: 0,
        }
    }
}

struct LazySocket {
    context: zmq::Context,
    endpoint: String,
    socket: Option<zmq::Socket>,
}

impl LazySocket {
    fn socket(&mut self) -> Result<&zmq::Socket, zmq::Error> {
        if self.socket.is_none() {
            let socket = self.context.socket(zmq::REQ)?;
            socket.set_linger(0)?;
            socket.connect(&self.endpoint)?;
            self.socket = Some(socket);
        }
        Ok(self.socket.as_ref().expect("just created"))
    }

    /// Sends `frames` and waits for the reply, reconnecting between attempts.
    fn request(
        &mut self,
        frames: &[Vec<u8>],
        options: ClientOptions,
    ) -> Result<Vec<Vec<u8>>, ClientError> {
        let attempts = options.retries + 1;
        for _ in 0..attempts {
            let socket = self.socket()?;
            socket.send_multipart(frames, 0)?;
            let mut items = [socket.as_poll_item(zmq::POLLIN)];
            let ready = zmq::poll(&mut items, options.timeout.as_millis() as i64)?;
            if ready > 0 && items[0].is_readable() {
                return Ok(socket.recv_multipart(0)?);
            }
            // A REQ socket that got no reply cannot send again: start over with a new one.
            self.socket = None;
        }
        Err(ClientError::NoReply {
            endpoint: self.endpoint.clone(),
            timeout: options.timeout,
            attempts,
        })
    }
}

fn check_error(body: &[Vec<u8>]) -> Result<(), ClientError> {
    if let [only] = body {
        if let Some((code, message)) = protocol::parse_error(only) {
            return Err(ClientError::Broker { code, message });
        }
    }
    Ok(())
}

/// A Lazy Pirate client of one Paranoid Pirate frontend.
pub struct PirateClient {
    socket: LazySocket,
    options: ClientOptions,
}

impl PirateClient {
    /// A client of the frontend at `endpoint` (connects on first use).
    pub fn new(endpoint: impl Into<String>, options: ClientOptions) -> Self {
        PirateClient {
            socket: LazySocket {
                context: zmq::Context::new(),
                endpoint: endpoint.into(),
                socket: None,
            },
            options,
        }
    }

    /// Sends `body` and returns the reply's frames.
    pub fn request(&mut self, body: Vec<Vec<u8>>) -> Result<Vec<Vec<u8>>, ClientError> {
        let reply = self.socket.request(&body, self.options)?;
        check_error(&reply)?;
        Ok(reply)
    }
}

/// A Majordomo client of one broker.
pub struct MajordomoClient {
    socket: LazySocket,
    options: ClientOptions,
}

impl MajordomoClient {
    /// A client of the Majordomo socket at `endpoint` (connects on first use).
    pub fn new(endpoint: impl Into<String>, options: ClientOptions) -> Self {
        MajordomoClient {
            socket: LazySocket {
                context: zmq::Context::new(),
                endpoint: endpoint.into(),
                socket: None,
            },
            options,
        }
    }

    /// Sends `body` to `service` and returns the reply's body frames.
    pub fn request(
        &mut self,
        service: &str,
        body: Vec<Vec<u8>>,
    ) -> Result<Vec<Vec<u8>>, ClientError> {
        let mut frames = Vec::with_capacity(2 + body.len());
        frames.push(MDP_CLIENT.to_vec());
        frames.push(service.as_bytes().to_vec());
        frames.extend(body);
        let mut reply = self.socket.request(&frames, self.options)?;
        if reply.len() < 2 || reply[0] != MDP_CLIENT {
            return Err(ClientError::Malformed("reply without the MDPC01 header"));
        }
        if reply[1] != service.as_bytes() {
            return Err(ClientError::Malformed("reply names another service"));
        }
        let body = reply.split_off(2);
        check_error(&body)?;
        Ok(body)
    }
}
