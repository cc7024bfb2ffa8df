//! The contract between the supervisor, which owns service processes, and the ipc hub, which
//! owns their channels.
//!
//! The ipc role starts first and publishes a [`ServiceChannels`] in the node's
//! [`Published`](crate::context::Published) registry. The supervisor looks it up when it
//! starts: it gives every service the hub's socket path (`TROUPE_IPC_SOCKET`), reports each
//! service process's start and exit as [`ServiceLifecycle`] events, and forwards its own
//! `push_config` / `invoke` API calls as [`PushConfig`] / [`Invoke`]. Without the ipc role the
//! supervisor runs services without channels, and those calls fail with
//! [`ChannelError::NotAlive`].

use std::path::PathBuf;
use std::time::Duration;

use actix::{Message, Recipient};

/// A service process's life, as the supervisor reports it to the hub.
#[derive(Debug, Clone, Message)]
#[rtype(result = "()")]
pub enum ServiceLifecycle {
    /// Process `pid` of service `id` has started; its persisted config lives at `config_path`
    /// (`config.json`), which the hub reads for `request_config` and writes after an
    /// acknowledged `push_config`.
    Started {
        /// The service id.
        id: String,
        /// The OS process id; only this process may attach the service's channel.
        pid: u32,
        /// Where the service's `config.json` is kept.
        config_path: PathBuf,
    },
    /// Process `pid` of service `id` has exited: every request in flight to it fails at once
    /// and its channel may be attached again by the next process.
    Exited {
        /// The service id.
        id: String,
        /// The process that exited.
        pid: u32,
    },
}

/// Why a request to a service's channel failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ChannelError {
    /// No channel is attached for the service.
    #[error("channel is not alive")]
    NotAlive,
    /// The service did not answer in time.
    #[error("no reply from the service within {0:?}")]
    Timeout(Duration),
    /// The service's process exited while the request was in flight.
    #[error("the service exited while the request was in flight")]
    ServiceExited,
    /// The service's channel connection closed while the request was in flight, before
    /// the supervisor saw its process exit (it may have closed the connection, or be exiting).
    #[error("the service's channel closed while the request was in flight")]
    ChannelClosed,
    /// The service answered with an error.
    #[error("the service refused: {0}")]
    Refused(String),
    /// Anything else (I/O on the hub, persisting the config, ...).
    #[error("{0}")]
    Failed(String),
}

/// Push a new config to service `service`; persisted as its `config.json` only once the
/// service acknowledges it.
#[derive(Debug, Clone, Message)]
#[rtype(result = "Result<(), ChannelError>")]
pub struct PushConfig {
    /// The service id.
    pub service: String,
    /// The config document.
    pub config: serde_json::Value,
    /// How long to wait for the acknowledgement.
    pub timeout: Duration,
}

/// Invoke service `service` with `payload` and wait for its reply.
#[derive(Debug, Clone, Message)]
#[rtype(result = "Result<Vec<u8>, ChannelError>")]
pub struct Invoke {
    /// The service id.
    pub service: String,
    /// Opaque request bytes.
    pub payload: Vec<u8>,
    /// How long to wait for the reply.
    pub timeout: Duration,
}

/// What the ipc role publishes for the supervisor.
#[derive(Clone)]
pub struct ServiceChannels {
    /// The hub's Unix socket, given to services as `TROUPE_IPC_SOCKET`.
    pub socket_path: PathBuf,
    /// Where the supervisor reports service starts and exits.
    pub lifecycle: Recipient<ServiceLifecycle>,
    /// Where `push_config` calls go.
    pub push_config: Recipient<PushConfig>,
    /// Where `invoke` calls go.
    pub invoke: Recipient<Invoke>,
}

/// Environment variable naming a supervised service's id.
pub const ENV_SERVICE_ID: &str = "TROUPE_SERVICE_ID";
/// Environment variable naming the ipc hub's socket.
pub const ENV_IPC_SOCKET: &str = "TROUPE_IPC_SOCKET";

/// What the supervisor publishes for the roles that start after it (the broker): they
/// subscribe to its services' starts and exits, and the broker attaches itself so that a
/// service's readiness can be "the broker has seen its worker's READY".
#[derive(Clone)]
pub struct SupervisorLink {
    /// Where [`SubscribeLifecycle`] goes.
    pub subscribe: Recipient<SubscribeLifecycle>,
    /// Where [`AttachBroker`] goes.
    pub attach_broker: Recipient<AttachBroker>,
}

/// Subscribes a recipient to every later [`ServiceLifecycle`] event of the supervisor's
/// services, delivered as they happen (an exit within a millisecond of the process's end).
#[derive(Message)]
#[rtype(result = "()")]
pub struct SubscribeLifecycle(pub Recipient<ServiceLifecycle>);

/// The broker on this node, for the supervisor's `ready = { broker = "SERVICE" }` checks.
#[derive(Message)]
#[rtype(result = "()")]
pub struct AttachBroker(pub Recipient<BrokerWorkers>);

/// Asks the broker what it sees of one broker service and of the workers that one supervised
/// process opened to it.
#[derive(Debug, Clone, Message)]
#[rtype(result = "BrokerWorkersAnswer")]
pub struct BrokerWorkers {
    /// The broker service (`echo`).
    pub broker_service: String,
    /// The supervised service whose workers are asked about.
    pub service_id: String,
    /// Its current process.
    pub pid: u32,
}

/// The broker's answer to [`BrokerWorkers`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct BrokerWorkersAnswer {
    /// Whether the broker serves that service at all.
    pub known: bool,
    /// Whether a worker of that process has said READY and is connected.
    pub ready: bool,
    /// Workers connected to the service, from every process.
    pub workers: usize,
    /// Requests waiting for a worker.
    pub queue_depth: usize,
}

/// The first part of the ZeroMQ identity of a worker started by the supervisor.
pub const WORKER_IDENTITY_PREFIX: &str = "troupe/";

/// The identity the worker API gives the `connection`-th socket that process `pid` of
/// supervised service `service_id` opens to a broker: `troupe/<service id>/<pid>/<connection>`.
/// The broker reads it back with [`parse_worker_identity`] to tie the worker to the process.
pub fn worker_identity(service_id: &str, pid: u32, connection: u64) -> Vec<u8> {
    format!("{WORKER_IDENTITY_PREFIX}{service_id}/{pid}/{connection}").into_bytes()
}

/// The service id and pid in a worker identity made by [`worker_identity`]; `None` for any
/// other identity.
pub fn parse_worker_identity(identity: &[u8]) -> Option<(&str, u32)> {
    let text = std::str::from_utf8(identity).ok()?;
    let rest = text.strip_prefix(WORKER_IDENTITY_PREFIX)?;
    let (rest, connection) = rest.rsplit_once('/')?;
    connection.parse::<u64>().ok()?;
    let (service_id, pid) = rest.rsplit_once('/')?;
    let pid = pid.parse().ok()?;
    (!service_id.is_empty()).then_some((service_id, pid))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn worker_identities_round_trip() {
        let identity = worker_identity("echo/a", 42, 7);
        assert_eq!(identity, b"troupe/echo/a/42/7");
        assert_eq!(parse_worker_identity(&identity), Some(("echo/a", 42)));
        for other in [
            &b"troupe//42/1"[..],
            b"troupe/echo/x/1",
            b"other/echo/1/1",
            b"\xff",
        ] {
            assert_eq!(parse_worker_identity(other), None, "{other:?}");
        }
    }
}
