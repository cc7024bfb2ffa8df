//! The `beacon` role: the registry server. [`BeaconConfig`] is its `[beacon]` table,
//! [`BeaconRole`] its `Role` impl; the logic is in [`core`] (sans-IO), the socket on the
//! thread in `socket`, and the actor between them in [`actor`].

pub mod actor;
pub mod core;
pub mod socket;

use std::path::PathBuf;
use std::time::Instant;

use actix::prelude::*;
use rand::RngCore;
use serde::{Deserialize, Serialize};
use tokio::sync::oneshot;
use troupe_core::settings::{Duration, ZmqEndpoint};
use troupe_core::{span, zmq_thread, ConfigError, Role, RoleContext, RoleError, Shutdown};

use crate::client::ClusterConfig;
use crate::registry::{Registry, RegistryConfig};
use crate::snapshot;
use actor::{BeaconServer, FinalSnapshot, SnapshotPlan};
use core::{BeaconCore, SessionLimits};

/// The `[beacon]` table.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct BeaconConfig {
    /// Where the beacon's ROUTER socket binds.
    pub bind: ZmqEndpoint,
    /// Heartbeat intervals a node may miss before it is offline (each node declares its own
    /// interval when it registers).
    pub liveness: u32,
    /// How long an offline node stays listed before it is removed.
    pub offline_ttl: Duration,
    /// How many changes are kept so that a watcher that reconnects can resume.
    pub history: usize,
    /// Most nodes registered at once.
    pub max_nodes: usize,
    /// Most watches at once, over all peers.
    pub max_watchers: usize,
    /// Most peer sessions (authenticated connections and watchers) at once.
    pub max_sessions: usize,
    /// Most TCP connections at once; one more is closed as soon as it is accepted.
    pub max_connections: usize,
    /// Largest request frame answered, in bytes; larger ones get a `too_large` error.
    pub max_frame: usize,
    /// A session (authentication, watches) with no message for this long is forgotten.
    pub session_ttl: Duration,
    /// Where to save the registry and restore it from on start. Empty: no snapshot.
    pub snapshot_file: PathBuf,
    /// How often the snapshot is saved (when something changed), and once more at shutdown.
    pub snapshot_interval: Duration,
}

impl Default for BeaconConfig {
    fn default() -> Self {
        BeaconConfig {
            bind: "tcp://127.0.0.1:7400".parse().expect("valid default"),
            liveness: 3,
            offline_ttl: Duration::from_secs(300),
            history: 1000,
            max_nodes: 10_000,
            max_watchers: 1000,
            max_sessions: 16_384,
            max_connections: 16_384,
            max_frame: 64 * 1024,
            session_ttl: Duration::from_secs(60),
            snapshot_file: PathBuf::new(),
            snapshot_interval: Duration::from_secs(10),
        }
    }
}

impl BeaconConfig {
    fn check(&self) -> Result<(), ConfigError> {
        let positive = |key: &str, value: Duration| {
            if value.get().is_zero() {
                Err(ConfigError::new(key, "must be longer than 0s"))
            } else {
                Ok(())
            }
        };
        if !(1..=100).contains(&self.liveness) {
            return Err(ConfigError::new(
                "liveness",
                format!("{} is out of range 1..=100", self.liveness),
            ));
        }
        positive("offline_ttl", self.offline_ttl)?;
        positive("session_ttl", self.session_ttl)?;
        positive("snapshot_interval", self.snapshot_interval)?;
        if self.history > 1_000_000 {
            return Err(ConfigError::new("history", "at most 1000000 events"));
        }
        if self.max_connections == 0 {
            return Err(ConfigError::new("max_connections", "must be at least 1"));
        }
        if self.max_nodes == 0 {
            return Err(ConfigError::new("max_nodes", "must be at least 1"));
        }
        if !(1024..=(16 << 20)).contains(&self.max_frame) {
            return Err(ConfigError::new(
                "max_frame",
                format!("{} is out of range 1024..=16777216 bytes", self.max_frame),
            ));
        }
        Ok(())
    }
}

/// The running `beacon` role.
pub struct BeaconRole {
    actor: Addr<BeaconServer>,
    snapshot_file: Option<PathBuf>,
    thread_done: oneshot::Receiver<()>,
}

impl BeaconRole {
    /// The beacon actor's address.
    pub fn addr(&self) -> &Addr<BeaconServer> {
        &self.actor
    }
}

impl Role for BeaconRole {
    const NAME: &'static str = "beacon";
    type Config = BeaconConfig;

    fn validate(config: &BeaconConfig) -> Result<(), ConfigError> {
        config.check()
    }

    async fn start(config: BeaconConfig, ctx: RoleContext) -> Result<Self, RoleError> {
        let cluster: ClusterConfig = match ctx.config.get(ClusterConfig::TABLE) {
            Some(section) => serde_json::from_value(section.clone())
                .map_err(|err| RoleError::new(format!("invalid [cluster] table: {err}")))?,
            None => ClusterConfig::default(),
        };
        let cookie = cluster.load_cookie().await.map_err(RoleError::new)?;
        let (actor, thread_done) = start_server(&config, cookie).await?;
        ctx.published.publish(actor.clone());
        let router = troupe_core::cluster::advertised(
            config.bind.as_str(),
            &troupe_core::cluster::host_name(),
        );
        let endpoints = [("router".to_string(), router)].into();
        troupe_core::cluster::offer_if_clustered(&ctx.published, Self::NAME, endpoints).await;
        let snapshot_file =
            (!config.snapshot_file.as_os_str().is_empty()).then(|| config.snapshot_file.clone());
        Ok(BeaconRole {
            actor,
            snapshot_file,
            thread_done,
        })
    }

    async fn stop(self) {
        if let (Some(path), Ok(Some(write))) =
            (self.snapshot_file, self.actor.send(FinalSnapshot).await)
        {
            let shown = path.display().to_string();
            match tokio::task::spawn_blocking(move || write.write(&path)).await {
                Ok(Ok(_)) => tracing::info!(path = %shown, "snapshot saved"),
                Ok(Err(err)) => tracing::error!(path = %shown, %err, "cannot save the snapshot"),
                Err(err) => tracing::error!(%err, "snapshot writer failed"),
            }
        }
        let _ = self.actor.send(Shutdown).await;
        let _ = self.thread_done.await;
    }
}

/// Binds the socket, restores the snapshot and starts the actor and its socket thread on the
/// current arbiter. Returns the actor and a receiver that fires when the thread has ended.
pub async fn start_server(
    config: &BeaconConfig,
    cookie: Option<crate::auth::Cookie>,
) -> Result<(Addr<BeaconServer>, oneshot::Receiver<()>), RoleError> {
    let mut epoch = [0u8; 8];
    rand::thread_rng().fill_bytes(&mut epoch);
    let registry = Registry::new(
        RegistryConfig {
            liveness: config.liveness,
            offline_ttl: config.offline_ttl.get(),
            history: config.history,
            max_nodes: config.max_nodes,
        },
        hex::encode(epoch),
    );
    let limits = SessionLimits {
        max_sessions: config.max_sessions,
        max_watchers: config.max_watchers,
        session_ttl: config.session_ttl.get(),
        ..SessionLimits::default()
    };
    let authenticated = cookie.is_some();
    let mut core = BeaconCore::new(registry, cookie, limits);

    let snapshot = if config.snapshot_file.as_os_str().is_empty() {
        None
    } else {
        let path = config.snapshot_file.clone();
        let shown = path.display().to_string();
        let read = tokio::task::spawn_blocking(move || {
            snapshot::check_directory(&path)?;
            snapshot::read(&path)
        })
        .await
        .map_err(|err| RoleError::new(format!("snapshot reader failed: {err}")))?;
        match read {
            Ok(Some(nodes)) => {
                let (restored, skipped) = core.registry_mut().restore(Instant::now(), nodes);
                for why in &skipped {
                    tracing::warn!(path = %shown, "snapshot entry skipped: {why}");
                }
                tracing::info!(
                    path = %shown,
                    restored,
                    "registry restored from the snapshot; its nodes count as offline until they heartbeat (from any connection, which then owns them) or register"
                );
            }
            Ok(None) => tracing::info!(path = %shown, "no snapshot yet; starting empty"),
            Err(snapshot::ReadError::Unusable(why)) => {
                return Err(RoleError::new(format!("snapshot_file {shown}: {why}")))
            }
            Err(snapshot::ReadError::Damaged(why)) => tracing::error!(
                path = %shown,
                "cannot restore the snapshot ({why}); starting empty, it will be overwritten"
            ),
        }
        Some(SnapshotPlan {
            path: config.snapshot_file.clone(),
            interval: config.snapshot_interval.get(),
        })
    };

    // The sockets are created and bound on the socket thread, never on the arbiter; the
    // actor's address exists before it runs, so the thread can be handed its recipients.
    let (commands, inbox) = zmq_thread::channel()
        .map_err(|err| RoleError::new(format!("cannot create the socket bridge: {err}")))?;
    let connections = std::sync::Arc::new(socket::ConnectionCounts::default());
    let context = actix::Context::<BeaconServer>::new();
    let address = context.address();
    let received = address.clone().recipient();
    let not_delivered = address.clone().recipient();
    let (bound_tx, bound_rx) = oneshot::channel();
    let (done_tx, done_rx) = oneshot::channel();
    let bind = config.bind.to_string();
    let max_frame = config.max_frame;
    let max_connections = config.max_connections;
    let counts = connections.clone();
    span::spawn_role_thread(
        "beacon-socket",
        tracing::Span::current(),
        BeaconRole::NAME,
        move || {
            match socket::open(&bind, max_frame, max_connections, counts) {
                Ok((router, guard)) => {
                    let _ = bound_tx.send(Ok(()));
                    socket::run(router, inbox, received, not_delivered, max_frame, guard);
                }
                Err(why) => {
                    let _ = bound_tx.send(Err(why));
                }
            }
            let _ = done_tx.send(());
        },
    )
    .map_err(|err| RoleError::new(format!("cannot start the beacon's socket thread: {err}")))?;
    bound_rx
        .await
        .map_err(|_| RoleError::new("the beacon's socket thread ended while binding"))?
        .map_err(RoleError::new)?;
    let actor = context.run(BeaconServer::new(core, commands, snapshot, connections));
    let bind = config.bind.as_str();
    tracing::info!(
        bind,
        authenticated,
        max_nodes = config.max_nodes,
        "beacon listening"
    );
    Ok((actor, done_rx))
}
