//! Clients for Rust programs: [`PirateClient`] (the Guide's "Lazy Pirate": a REQ socket
//! that, on timeout, closes, reconnects and resends up to `retries` times) for a Paranoid
//! Pirate frontend, and [`MajordomoClient`] (the same over Majordomo, naming the service).
//! Both turn the broker's error replies into [`ClientError::Broker`].
//!
//! [`MultiMajordomoClient`] is the Majordomo client of a changing set of brokers (as
//! [`crate::discover`] finds them): each request goes to one broker, in turn; a broker that
//! leaves the set while it holds a request is given up at once (see
//! [`MultiMajordomoClient::request`]).
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

use std::collections::{BTreeSet, HashMap};
use std::ops::Bound;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use troupe_core::zmq_thread::{self, CommandInbox, CommandSender, SendError};

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
    /// The broker holding the request left the set of brokers (see
    /// [`MultiMajordomoClient`]) and no retry was left, or no other broker was known.
    #[error("the broker at {endpoint} went away while it held the request (after {attempts} attempt(s))")]
    BrokerLost {
        /// The broker that went away.
        endpoint: String,
        /// Attempts made.
        attempts: u32,
    },
    /// No broker is known to send the request to (see [`MultiMajordomoClient`]).
    #[error("no broker is known")]
    NoBroker,
    /// ZeroMQ refused something.
    #[error("client socket: {0}")]
    Socket(#[from] zmq::Error),
    /// The channel for broker updates could not be created.
    #[error("cannot create the client's update channel: {0}")]
    Bridge(std::io::Error),
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
        let frames = majordomo_request(service, body);
        let reply = self.socket.request(&frames, self.options)?;
        majordomo_reply(service, reply)
    }
}

/// A Majordomo request's frames: `["MDPC01", service, body…]`.
fn majordomo_request(service: &str, body: Vec<Vec<u8>>) -> Vec<Vec<u8>> {
    let mut frames = Vec::with_capacity(2 + body.len());
    frames.push(MDP_CLIENT.to_vec());
    frames.push(service.as_bytes().to_vec());
    frames.extend(body);
    frames
}

/// The body of a Majordomo reply for `service`, or the error it carries.
fn majordomo_reply(service: &str, mut reply: Vec<Vec<u8>>) -> Result<Vec<Vec<u8>>, ClientError> {
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

/// Gives a [`MultiMajordomoClient`] a new set of brokers, from any thread, even while it
/// waits for a reply. Cheap to clone.
#[derive(Clone)]
pub struct BrokerEndpoints {
    latest: Arc<Mutex<Option<BTreeSet<String>>>>,
    wake: CommandSender<()>,
}

impl BrokerEndpoints {
    /// The client's brokers are `endpoints` (Majordomo sockets) from now on. Returns false if
    /// the client is gone.
    pub fn set_endpoints(&self, endpoints: BTreeSet<String>) -> bool {
        // Only the newest set matters: it replaces one not yet taken, so nothing queues up.
        *self.latest.lock().unwrap_or_else(|e| e.into_inner()) = Some(endpoints);
        match self.wake.send(()) {
            Ok(()) | Err(SendError::Full(..)) => true,
            Err(SendError::Stopped(_)) => false,
        }
    }
}

/// How one attempt ended without a reply.
enum Failed {
    /// No reply within the timeout.
    Timeout,
    /// The broker left the set.
    Lost,
}

/// A Majordomo client of a changing set of brokers.
///
/// - Each request goes to one broker, taking the brokers in turn (in address order, after
///   the one used last).
/// - When the broker holding a request leaves the set (a [`BrokerEndpoints::set_endpoints`]
///   without it), the request is sent at once to the next broker if retries are left and
///   another broker is known; otherwise it ends at once with [`ClientError::BrokerLost`]
///   naming the broker.
/// - When no reply comes within the timeout and retries are left, the request is sent to the
///   next broker (the same one if it is the only one).
/// - With no broker known, a request fails at once with [`ClientError::NoBroker`]; use
///   [`MultiMajordomoClient::wait_for_broker`] first.
///
/// ```no_run
/// use std::collections::BTreeSet;
/// use std::time::Duration;
/// use troupe_broker::client::{ClientOptions, MultiMajordomoClient};
///
/// let (mut client, brokers) = MultiMajordomoClient::new(ClientOptions::default()).unwrap();
/// // From any thread, e.g. one following the beacons:
/// brokers.set_endpoints(BTreeSet::from(["tcp://10.0.0.1:7500".to_string()]));
/// if client.wait_for_broker(Duration::from_secs(2)) {
///     let reply = client.request("echo", vec![b"hello".to_vec()]);
/// }
/// ```
pub struct MultiMajordomoClient {
    context: zmq::Context,
    latest: Arc<Mutex<Option<BTreeSet<String>>>>,
    updates: CommandInbox<()>,
    endpoints: BTreeSet<String>,
    /// REQ sockets kept between requests, by endpoint.
    sockets: HashMap<String, zmq::Socket>,
    /// The broker used last, for the rotation.
    last: Option<String>,
    options: ClientOptions,
}

impl MultiMajordomoClient {
    /// A client with no broker yet, and the handle that gives it its brokers.
    pub fn new(
        options: ClientOptions,
    ) -> Result<(MultiMajordomoClient, BrokerEndpoints), ClientError> {
        let (wake, inbox) = zmq_thread::channel_with_capacity(1).map_err(ClientError::Bridge)?;
        let latest = Arc::new(Mutex::new(None));
        Ok((
            MultiMajordomoClient {
                context: zmq::Context::new(),
                latest: latest.clone(),
                updates: inbox,
                endpoints: BTreeSet::new(),
                sockets: HashMap::new(),
                last: None,
                options,
            },
            BrokerEndpoints { latest, wake },
        ))
    }

    /// The brokers known now (updates sent so far included).
    pub fn endpoints(&mut self) -> &BTreeSet<String> {
        self.apply_updates();
        &self.endpoints
    }

    /// Replaces the set of brokers directly (the same as an update through
    /// [`BrokerEndpoints`]).
    pub fn set_endpoints(&mut self, endpoints: BTreeSet<String>) {
        self.apply_updates();
        self.install(endpoints);
    }

    /// Waits up to `timeout` until at least one broker is known; returns whether one is.
    pub fn wait_for_broker(&mut self, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        loop {
            self.apply_updates();
            if !self.endpoints.is_empty() {
                return true;
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return false;
            }
            let mut items = [self.updates.poll_item()];
            let _ = zmq::poll(&mut items, millis(left));
        }
    }

    fn install(&mut self, endpoints: BTreeSet<String>) {
        self.sockets
            .retain(|endpoint, _| endpoints.contains(endpoint));
        self.endpoints = endpoints;
    }

    /// Takes the updates sent so far; returns whether there were any.
    fn apply_updates(&mut self) -> bool {
        self.updates.drain();
        let taken = self.latest.lock().unwrap_or_else(|e| e.into_inner()).take();
        match taken {
            Some(latest) => {
                self.install(latest);
                true
            }
            None => false,
        }
    }

    /// The broker after `self.last` in address order, wrapping around.
    fn next_broker(&self) -> Option<String> {
        let after = match &self.last {
            Some(last) => self
                .endpoints
                .range::<String, _>((Bound::Excluded(last), Bound::Unbounded))
                .next(),
            None => None,
        };
        after.or_else(|| self.endpoints.iter().next()).cloned()
    }

    fn socket(&mut self, endpoint: &str) -> Result<&zmq::Socket, zmq::Error> {
        if !self.sockets.contains_key(endpoint) {
            let socket = self.context.socket(zmq::REQ)?;
            socket.set_linger(0)?;
            socket.connect(endpoint)?;
            self.sockets.insert(endpoint.to_string(), socket);
        }
        Ok(&self.sockets[endpoint])
    }

    /// Sends `body` to `service` on one broker and returns the reply's body frames; see
    /// [`MultiMajordomoClient`] for which broker, and for what happens when it goes away.
    pub fn request(
        &mut self,
        service: &str,
        body: Vec<Vec<u8>>,
    ) -> Result<Vec<Vec<u8>>, ClientError> {
        let frames = majordomo_request(service, body);
        self.apply_updates();
        let allowed = self.options.retries.saturating_add(1);
        let mut attempts = 0;
        let mut failure: Option<(String, Failed)> = None;
        loop {
            let Some(endpoint) = self.next_broker() else {
                return Err(match failure {
                    Some((endpoint, Failed::Lost)) => {
                        ClientError::BrokerLost { endpoint, attempts }
                    }
                    Some((endpoint, Failed::Timeout)) => ClientError::NoReply {
                        endpoint,
                        timeout: self.options.timeout,
                        attempts,
                    },
                    None => ClientError::NoBroker,
                });
            };
            self.last = Some(endpoint.clone());
            attempts += 1;
            match self.attempt(&endpoint, &frames)? {
                Ok(reply) => return majordomo_reply(service, reply),
                Err(failed) => {
                    // A REQ socket that got no reply cannot send again.
                    self.sockets.remove(&endpoint);
                    if attempts >= allowed {
                        return Err(match failed {
                            Failed::Lost => ClientError::BrokerLost { endpoint, attempts },
                            Failed::Timeout => ClientError::NoReply {
                                endpoint,
                                timeout: self.options.timeout,
                                attempts,
                            },
                        });
                    }
                    failure = Some((endpoint, failed));
                }
            }
        }
    }

    /// One attempt on `endpoint`: the reply, or how it failed.
    fn attempt(
        &mut self,
        endpoint: &str,
        frames: &[Vec<u8>],
    ) -> Result<Result<Vec<Vec<u8>>, Failed>, ClientError> {
        let timeout = self.options.timeout;
        self.socket(endpoint)?.send_multipart(frames, 0)?;
        let deadline = Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let socket = &self.sockets[endpoint];
            let mut items = [socket.as_poll_item(zmq::POLLIN), self.updates.poll_item()];
            zmq::poll(&mut items, millis(left))?;
            if items[0].is_readable() {
                return Ok(Ok(socket.recv_multipart(0)?));
            }
            if items[1].is_readable() && self.apply_updates() && !self.endpoints.contains(endpoint)
            {
                return Ok(Err(Failed::Lost));
            }
            if Instant::now() >= deadline {
                return Ok(Err(Failed::Timeout));
            }
        }
    }
}

/// `d` in whole milliseconds for `zmq::poll`, rounded up.
fn millis(d: Duration) -> i64 {
    d.as_micros().div_ceil(1000).min(i64::MAX as u128) as i64
}
