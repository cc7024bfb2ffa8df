//! # troupe-ipc
//!
//! The `ipc` role: the node-local message hub on a Unix domain socket.
//!
//! This crate currently provides the role's actor and its `[ipc]` config section only; the
//! hub's protocol, client library and service channels are not implemented yet.

#![warn(missing_docs, unreachable_pub)]

use actix::prelude::*;
use serde::{Deserialize, Serialize};
use troupe_core::{Role, RoleContext, RoleError, Shutdown};

/// The `[ipc]` table.
#[derive(Debug, Clone, Serialize, Deserialize, Default)]
#[serde(deny_unknown_fields, default)]
pub struct IpcConfig {
    /// Path of the hub's Unix socket; empty means `$XDG_RUNTIME_DIR/troupe-NODE.sock`
    /// (or `/tmp/troupe-NODE.sock`).
    pub socket: String,
}

/// The hub actor.
pub struct IpcHub;

impl Actor for IpcHub {
    type Context = Context<Self>;
}

impl Handler<Shutdown> for IpcHub {
    type Result = ();
    fn handle(&mut self, _: Shutdown, ctx: &mut Self::Context) {
        ctx.stop();
    }
}

/// The running `ipc` role.
pub struct IpcRole {
    hub: Addr<IpcHub>,
}

impl Role for IpcRole {
    const NAME: &'static str = "ipc";
    type Config = IpcConfig;

    async fn start(_config: IpcConfig, _ctx: RoleContext) -> Result<Self, RoleError> {
        tracing::warn!("ipc hub not implemented yet: no socket is opened");
        Ok(IpcRole {
            hub: IpcHub.start(),
        })
    }

    async fn stop(self) {
        let _ = self.hub.send(Shutdown).await;
    }
}
