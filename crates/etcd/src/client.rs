//! Starting the etcd client: the node's `[cluster]` table turned into connect options (TLS,
//! user), the core's settings and the actor, published as a `ClusterClientHandle`; and
//! [`install`], which makes `backend = "etcd"` available to this process.

use std::time::Instant;

use actix::prelude::*;
use etcd_client::{Certificate, ConnectOptions, Identity, TlsOptions};
use tokio::sync::oneshot;
use troupe_beacon::client::{
    install_etcd_backend, Backend, ClusterClientHandle, ClusterConfig, StartedClient, ToRegister,
};
use troupe_core::RoleError;

use crate::{actor, core, EtcdClient};

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
