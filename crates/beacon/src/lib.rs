//! # troupe-beacon
//!
//! The cluster registry: which nodes are up, what each offers (its *resources*: one per role it
//! runs, plus declared ones), what each needs (its *requirements*), and where to reach it (each
//! resource's *endpoints*).
//!
//! - [`BeaconRole`] is the `beacon` role: a ZeroMQ ROUTER (on its own thread) in front of the
//!   sans-IO [`registry::Registry`] and [`server::core::BeaconCore`]. Configured by the
//!   `[beacon]` table ([`BeaconConfig`]).
//! - [`client::BeaconClient`] is the actor every node whose `[cluster]` table
//!   ([`ClusterConfig`]) names beacons runs: it registers the node with each beacon,
//!   heartbeats, re-registers with a beacon that forgot it, and answers its roles'
//!   questions (`GetRequirements`, `LookupResource`, `AwaitRequirements`, `Subscribe`...) and
//!   the [`troupe_core::cluster`] contract (`Offer`, `Withdraw`, `WatchProviders`), which the
//!   node also publishes as a `ClusterHandle`. The node runs it as the internal role
//!   [`client::ClusterClient`], and publishes it as a [`client::ClusterClientHandle`],
//!   which the etcd backend (crate `troupe-etcd`) publishes too: roles and tools use the
//!   handle and work on either backend.
//! - [`protocol`] is the wire format (JSON, one document per frame), documented for other
//!   languages in `docs/protocols/beacon.md`; [`auth`] the cookie challenge–response.
//! - [`cli`] holds the operator commands `troupe cluster list|lookup|requirements|watch`.
//!
//! A role uses the cluster through the client the node publishes — here, waiting for its
//! requirements at start instead of failing, then offering the endpoints it opened for its
//! resource:
//!
//! ```no_run
//! use std::time::Duration;
//! use troupe_beacon::client::{AwaitRequirements, ClusterClientHandle, Offer};
//!
//! # async fn start(ctx: troupe_core::RoleContext) -> Result<(), troupe_core::RoleError> {
//! let cluster = ctx
//!     .published
//!     .lookup::<ClusterClientHandle>()
//!     .ok_or_else(|| troupe_core::RoleError::new("this role needs a [cluster] client"))?;
//! let wait = AwaitRequirements { timeout: Duration::from_secs(30) };
//! match cluster.await_requirements.send(wait).await {
//!     Ok(Ok(requirements)) => {
//!         for node in &requirements.offers["broker"] {
//!             tracing::info!(node = %node.name, frontend = ?node.endpoints.get("frontend"), "broker found");
//!         }
//!     }
//!     Ok(Err(err)) => tracing::warn!(%err, "starting without every requirement"),
//!     Err(_) => return Err(troupe_core::RoleError::new("the cluster client has stopped")),
//! }
//! let endpoints = [("api".to_string(), "tcp://10.0.0.5:9000".to_string())];
//! let offer = Offer { resource: "app".into(), endpoints: endpoints.into() };
//! if let Ok(Err(why)) = cluster.offer.send(offer).await {
//!     tracing::warn!("endpoints not offered: {why}");
//! }
//! # Ok(())
//! # }
//! ```

#![warn(missing_docs, unreachable_pub)]

pub mod auth;
pub mod cli;
pub mod client;
pub(crate) mod log_limit;
pub mod protocol;
pub mod registry;
pub mod server;
pub mod snapshot;

pub use client::{BeaconClient, ClusterClient, ClusterConfig};
pub use server::{BeaconConfig, BeaconRole};
