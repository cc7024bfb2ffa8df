//! [`IpcRole`]: claims the socket, starts the hub actor and the config thread, and publishes
//! the [`ServiceChannels`] the supervisor uses and the [`IpcEvents`] other roles subscribe
//! through.

use actix::prelude::*;
use troupe_core::services::ServiceChannels;
use troupe_core::{ConfigError, Role, RoleContext, RoleError};

use crate::config::IpcConfig;
use crate::events::{IpcEvents, NodeSubscriber, SubscribeEvents};
use crate::hub::Limits;
use crate::server::actor::{HubActor, StopHub};
use crate::server::config_store::ConfigStore;
use troupe_core::unix_socket::{self as socket, SocketFile};

/// The running `ipc` role.
pub struct IpcRole {
    hub: Addr<HubActor>,
    socket: SocketFile,
}

impl Role for IpcRole {
    const NAME: &'static str = "ipc";
    type Config = IpcConfig;

    fn validate(config: &IpcConfig) -> Result<(), ConfigError> {
        config.validate()
    }

    async fn start(config: IpcConfig, ctx: RoleContext) -> Result<Self, RoleError> {
        let path = config.socket_path(&ctx.node);
        let group = socket::resolve_group(&config.socket_group)
            .map_err(|err| RoleError::new(format!("ipc {err}")))?;
        let store = ConfigStore::start(tracing::Span::current())?;
        let (listener, socket) = socket::claim(&path, group)
            .await
            .map_err(|err| RoleError::new(format!("ipc socket {err}")))?;
        let listener = match tokio::net::UnixListener::from_std(listener) {
            Ok(listener) => listener,
            Err(err) => {
                let _ = tokio::task::spawn_blocking(move || socket.remove()).await;
                return Err(err.into());
            }
        };
        let hub = HubActor::new(
            Limits::from_config(&config),
            listener,
            store,
            group.is_some(),
        )
        .start();
        // Before anything can attach: the node's own subscriber misses no event.
        if let Some(NodeSubscriber(subscriber)) = ctx.published.lookup::<NodeSubscriber>() {
            hub.do_send(SubscribeEvents(subscriber));
        }
        ctx.published.publish(ServiceChannels {
            socket_path: path.clone(),
            lifecycle: hub.clone().recipient(),
            push_config: hub.clone().recipient(),
            invoke: hub.clone().recipient(),
        });
        ctx.published.publish(IpcEvents {
            subscribe: hub.clone().recipient(),
        });
        ctx.published.publish(hub.clone());
        tracing::info!(
            socket = %path.display(),
            mode = if group.is_some() { "0660" } else { "0600" },
            "ipc hub listening"
        );
        let endpoints = [("socket".to_string(), path.display().to_string())].into();
        troupe_core::cluster::offer_if_clustered(&ctx.published, Self::NAME, endpoints).await;
        Ok(IpcRole { hub, socket })
    }

    async fn stop(self) {
        let _ = self.hub.send(StopHub).await;
        let socket = self.socket;
        let path = socket.path().to_path_buf();
        match tokio::task::spawn_blocking(move || socket.remove()).await {
            Ok(None) => tracing::info!(socket = %path.display(), "ipc socket removed"),
            Ok(Some(problem)) => tracing::warn!(socket = %path.display(), "{problem}"),
            Err(err) => {
                tracing::warn!(socket = %path.display(), %err, "removing the socket failed")
            }
        }
    }
}
