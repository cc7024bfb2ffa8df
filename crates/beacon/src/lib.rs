//! # troupe-beacon
//!
//! The `beacon` role: the cluster registry of nodes, resources and requirements.
//!
//! This crate currently provides the role's actor and its `[beacon]` config section only; the
//! registry protocol and the client actor are not implemented yet.

#![warn(missing_docs, unreachable_pub)]

use actix::prelude::*;
use serde::{Deserialize, Serialize};
use troupe_core::settings::ZmqEndpoint;
use troupe_core::{Role, RoleContext, RoleError, Shutdown};

/// The `[beacon]` table.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct BeaconConfig {
    /// Where the beacon's ROUTER socket binds.
    pub bind: ZmqEndpoint,
}

impl Default for BeaconConfig {
    fn default() -> Self {
        BeaconConfig {
            bind: "tcp://127.0.0.1:7400".parse().expect("valid default"),
        }
    }
}

/// The beacon actor.
pub struct Beacon;

impl Actor for Beacon {
    type Context = Context<Self>;
}

impl Handler<Shutdown> for Beacon {
    type Result = ();
    fn handle(&mut self, _: Shutdown, ctx: &mut Self::Context) {
        ctx.stop();
    }
}

/// The running `beacon` role.
pub struct BeaconRole {
    actor: Addr<Beacon>,
}

impl Role for BeaconRole {
    const NAME: &'static str = "beacon";
    type Config = BeaconConfig;

    async fn start(_config: BeaconConfig, _ctx: RoleContext) -> Result<Self, RoleError> {
        tracing::warn!("beacon not implemented yet: no socket is bound");
        Ok(BeaconRole {
            actor: Beacon.start(),
        })
    }

    async fn stop(self) {
        let _ = self.actor.send(Shutdown).await;
    }
}
