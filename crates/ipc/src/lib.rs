//! # troupe-ipc
//!
//! The `ipc` role: the node-local message hub on a Unix domain socket, the service channels
//! it carries, and the client library local processes link.
//!
//! - [`wire`]: the frame (length, sender pid, CRC-32) and the envelope inside it.
//! - [`hub::Hub`]: the hub's logic, sans IO: registration, routing, mailboxes, requests,
//!   service channels.
//! - [`IpcRole`] and [`IpcConfig`]: the role and its `[ipc]` table; the actor in `server`
//!   owns the socket and feeds the hub.
//! - [`events`]: the node's event stream of service metrics and events.
//! - [`client`]: blocking and async clients, and gproc-style helpers.

#![warn(missing_docs, unreachable_pub)]

pub mod client;
pub mod config;
pub mod events;
pub mod hub;
mod role;
pub mod server;
pub mod wire;

pub use config::{ByteSize, IpcConfig};
pub use role::IpcRole;
pub use server::actor::{GetStats, GetView, HubActor};
