//! # troupe-beacon
//!
//! The cluster registry: which nodes are up, what each offers (its *resource*, one role name)
//! and needs (its *requirements*), and where to reach it (its *endpoints*).
//!
//! - [`BeaconRole`] is the `beacon` role: a ZeroMQ ROUTER (on its own thread) in front of the
//!   sans-IO [`registry::Registry`] and [`server::core::BeaconCore`]. Configured by the
//!   `[beacon]` table ([`BeaconConfig`]).
//! - [`client::BeaconClient`] is the actor every node whose `[cluster]` table
//!   ([`ClusterConfig`]) names beacons runs: it registers the node with each beacon,
//!   heartbeats, re-registers with a beacon that forgot it, and answers its roles'
//!   questions (`GetRequirements`, `LookupResource`, `AwaitRequirements`, `Subscribe`,
//!   `AddEndpoints`...). The node runs it as the internal role [`client::ClusterClient`].
//! - [`protocol`] is the wire format (JSON, one document per frame), documented for other
//!   languages in `docs/protocols/beacon.md`; [`auth`] the cookie challenge–response.
//! - [`cli`] holds the operator commands `troupe cluster list|lookup|requirements|watch`.

#![warn(missing_docs, unreachable_pub)]

pub mod auth;
pub mod cli;
pub mod client;
pub mod protocol;
pub mod registry;
pub mod server;
pub mod snapshot;

pub use client::{BeaconClient, ClusterClient, ClusterConfig};
pub use server::{BeaconConfig, BeaconRole};
