//! # troupe-etcd
//!
//! Troupe's cluster membership on etcd (`[cluster] backend = "etcd"`): the same cluster
//! client messages as the beacon client (`troupe_beacon::client`), answered from an etcd
//! cluster instead of beacons.
//!
//! - A node is one key, `PREFIX/nodes/NAME`, holding its registration as JSON
//!   ([`core::Record`]) and attached to a lease whose TTL is its liveness window (heartbeat
//!   interval × liveness), renewed every heartbeat interval. A node that dies loses its lease
//!   and its key within the TTL. A name held by another live lease is refused, never taken.
//! - Lookups, lists and requirements are answered from a mirror of every node, kept by a
//!   range read and a watch (a range read each while the watch is down); subscriptions and
//!   provider watches are etcd watches from a revision, resumed from the last revision seen
//!   and read afresh when etcd compacted it.
//! - [`core`] is the logic, sans-IO and unit-tested; [`actor::EtcdClient`] runs the etcd
//!   calls. The key layout is documented in `docs/protocols/etcd.md`.
//!
//! The `troupe` binary built with its `etcd` feature calls `install` first thing; the node's
//! cluster client and the `troupe cluster …` and `ctl --cluster` commands then start this
//! client when the config asks for etcd. The actor, `install` and `start` need this crate's
//! `client` feature (etcd-client, whose build needs `protoc`); without it the crate is its
//! sans-IO core only.

#![warn(missing_docs, unreachable_pub)]

#[cfg(feature = "client")]
pub mod actor;
pub mod core;

#[cfg(feature = "client")]
pub use actor::EtcdClient;
#[cfg(feature = "client")]
pub use client::{install, start};

#[cfg(feature = "client")]
mod client;
