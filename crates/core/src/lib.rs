//! # troupe-core
//!
//! The shared foundation every Troupe role builds on.
//!
//! - [`Role`] is the extension point: one type per role, naming its config section, how it
//!   starts and how it stops. [`RoleSet`] is the list of roles a binary knows.
//! - [`RoleContext`] is what a starting role receives: the node's name, a place to publish and
//!   look up other roles' actor addresses, and a way to ask the node to stop.
//! - [`settings`] holds the validated value types config sections are built from
//!   ([`settings::Duration`], [`settings::ZmqEndpoint`], [`settings::ByteSize`]) and
//!   [`ConfigError`].
//! - [`panic`] implements the node's panic policy; [`span`] gives every role's events their
//!   `node` and `role` fields.
//! - [`unix_socket`] claims a node's Unix socket files without stealing a live node's.
//! - [`cluster`] and [`services`] are the contracts between roles: the cluster client and the
//!   roles that use the registry; the supervisor, the ipc hub and the broker.
//! - [`zmq_thread`] is the bridge between actors and ZeroMQ sockets owned by a dedicated thread.

#![warn(missing_docs, unreachable_pub)]

pub mod atomic_file;
pub mod cluster;
pub mod context;
pub mod error;
pub mod messages;
pub mod panic;
pub mod role;
pub mod services;
pub mod settings;
pub mod span;
pub mod unix_socket;
pub mod zmq_thread;

pub use context::{NodeControl, NodeStopRequest, RoleContext};
pub use error::{ConfigError, RoleError};
pub use messages::Shutdown;
pub use role::{PreparedRole, Role, RoleSet, RunningRole};
