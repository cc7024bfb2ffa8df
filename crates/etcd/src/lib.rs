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
//! - Lookups, lists and requirements are range reads; subscriptions and provider watches are
//!   etcd watches from a revision, resumed from the last revision seen and read afresh when
//!   etcd compacted it.
//! - [`core`] is the logic, sans-IO and unit-tested; [`actor::EtcdClient`] runs the etcd
//!   calls. The key layout is documented in `docs/protocols/etcd.md`.
//!
//! The `troupe` binary built with its `etcd` feature calls [`install`] first thing; the
//! node's cluster client and the `troupe cluster …` and `ctl --cluster` commands then start
//! this client when the config asks for etcd.

#![warn(missing_docs, unreachable_pub)]

pub mod actor;
pub mod core;

use std::time::Instant;

use actix::prelude::*;
use etcd_client::{Certificate, ConnectOptions, Identity, TlsOptions};
use tokio::sync::oneshot;
use troupe_beacon::client::{
    install_etcd_backend, Backend, ClusterClientHandle, ClusterConfig, StartedClient, ToRegister,
};
use troupe_core::RoleError;

pub use actor::EtcdClient;

/// Makes `backend = "etcd"` available to this process's cluster clients.
pub fn install() {
    install_etcd_backend(|config, node, to_register| Box::pin(start(config, node, to_register)));
}

/// Starts an etcd client for `config` on the current arbiter, as node `node`, registering
/// `to_register` when given. It connects in the background: an unreachable etcd is reported
/// in its status and logs, not as an error here.
pub async fn start(
    config: ClusterConfig,
    node: String,
    to_register: ToRegister,
) -> Result<StartedClient, RoleError> {
    let reading = config.clone();
    let credentials = tokio::task::spawn_blocking(move || reading.read_etcd_credentials())
        .await
        .map_err(|err| RoleError::new(format!("reading the etcd credentials failed: {err}")))?
        .map_err(|err| RoleError::new(err.within("cluster").to_string()))?;
    let heartbeat = config.heartbeat_interval.get();
    let timeout = config.request_timeout.get();
    let mut options = ConnectOptions::new()
        .with_connect_timeout(timeout)
        .with_keep_alive(
            heartbeat.max(std::time::Duration::from_millis(100)),
            timeout,
        )
        .with_keep_alive_while_idle(true)
        .with_require_leader(true);
    if credentials.ca.is_some() || credentials.cert.is_some() {
        let mut tls = TlsOptions::new();
        if let Some(ca) = &credentials.ca {
            tls = tls.ca_certificate(Certificate::from_pem(ca));
        }
        if let (Some(cert), Some(key)) = (&credentials.cert, &credentials.key) {
            tls = tls.identity(Identity::from_pem(cert, key));
        }
        options = options.with_tls(tls);
    }
    if let Some((user, password)) = credentials.user {
        options = options.with_user(user, password);
    }
    let (registration, base_resources) = match to_register {
        Some((registration, base)) => (Some(registration), base),
        None => (None, Default::default()),
    };
    let settings = core::Settings {
        node,
        registration,
        base_resources,
        heartbeat,
        liveness: config.liveness,
        prefix: config.etcd_prefix.clone(),
        endpoints: config.etcd_endpoints.clone(),
    };
    let connection = actor::Connection {
        endpoints: config.etcd_endpoints.clone(),
        options,
        timeout,
    };
    let (done_tx, done_rx) = oneshot::channel();
    let core = core::EtcdCore::new(settings, Instant::now());
    let actor = EtcdClient::new(core, connection, done_tx).start();
    Ok((ClusterClientHandle::of(Backend::Etcd, &actor), done_rx))
}
