//! # troupe-broker
//!
//! The `broker` role: a ZeroMQ load balancer between clients and workers, speaking Paranoid
//! Pirate (RFC 6), the seed's variant of it (free concurrency in the control frame, STOP), and
//! Majordomo 0.1 (RFC 7).
//!
//! - [`BrokerConfig`] is the `[broker]` table; [`BrokerRole`] the role, [`BrokerActor`] its
//!   control-plane actor.
//! - The logic is sans-IO: [`service::Service`] is one service's worker queue (credit, least
//!   recently used among equals, expiry, requests waiting and held), [`engine::Engine`]
//!   routes every socket's messages to services; both take the time as an input.
//! - [`socket_loop`] is the thread that owns the sockets and runs the engine;
//!   [`discovery`] is what it registers with the cluster's beacons.
//! - The operator's view: [`GetStats`] answers [`BrokerStats`] (services, their addresses,
//!   workers and counters, all `serde::Serialize`); [`UpdateServices`] adds, removes and
//!   retunes Paranoid Pirate services live, as [`update`] plans it.
//! - [`worker`] and [`client`] are the Rust APIs for programs on either side of the broker;
//!   [`worker_set`] and [`client::MultiMajordomoClient`] serve or use several brokers at once,
//!   following a changing set of them, which [`discover`] finds through the beacons;
//!   [`protocol`] holds the frame formats, including the documented error reply.
//! - Under a supervisor, a worker's socket identity names its process
//!   ([`troupe_core::services::worker_identity`]), and the broker, subscribed to the
//!   supervisor's service exits, fails a dead process's workers over at once
//!   ([`engine::Engine::process_exited`]).

#![warn(missing_docs, unreachable_pub)]

pub mod actor;
pub mod backlog;
pub mod client;
pub mod config;
pub mod discover;
pub mod discovery;
pub mod engine;
pub mod error;
pub mod protocol;
pub mod service;
pub mod socket_loop;
pub mod update;
pub mod worker;
pub mod worker_set;

pub use actor::{BrokerActor, BrokerRole, GetEndpoints, GetStats, UpdateServices};
pub use config::BrokerConfig;
pub use engine::{BrokerStats, ServiceSnapshot};
pub use error::BrokerError;
pub use service::{ServiceStats, WorkerSnapshot};
pub use update::ServicesUpdate;
