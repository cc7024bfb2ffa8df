//! # troupe-broker
//!
//! The `broker` role: a ZeroMQ load balancer between clients and workers.
//!
//! This crate currently provides the role's actor and its `[broker]` config section only; the
//! protocols and the worker queue are not implemented yet.

#![warn(missing_docs, unreachable_pub)]

use actix::prelude::*;
use serde::{Deserialize, Serialize};
use troupe_core::settings::ZmqEndpoint;
use troupe_core::{Role, RoleContext, RoleError, Shutdown};

/// The `[broker]` table.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct BrokerConfig {
    /// Where clients connect (ROUTER bind address).
    pub frontend: ZmqEndpoint,
    /// Where workers connect (ROUTER bind address).
    pub backend: ZmqEndpoint,
}

impl Default for BrokerConfig {
    fn default() -> Self {
        BrokerConfig {
            frontend: "tcp://127.0.0.1:7501".parse().expect("valid default"),
            backend: "tcp://127.0.0.1:7502".parse().expect("valid default"),
        }
    }
}

/// The broker's control-plane actor.
pub struct Broker;

impl Actor for Broker {
    type Context = Context<Self>;
}

impl Handler<Shutdown> for Broker {
    type Result = ();
    fn handle(&mut self, _: Shutdown, ctx: &mut Self::Context) {
        ctx.stop();
    }
}

/// The running `broker` role.
pub struct BrokerRole {
    actor: Addr<Broker>,
}

impl Role for BrokerRole {
    const NAME: &'static str = "broker";
    type Config = BrokerConfig;

    fn start_after() -> &'static [&'static str] {
        &["beacon", "supervisor"]
    }

    async fn start(_config: BrokerConfig, _ctx: RoleContext) -> Result<Self, RoleError> {
        tracing::warn!("broker not implemented yet: no sockets are bound");
        Ok(BrokerRole {
            actor: Broker.start(),
        })
    }

    async fn stop(self) {
        let _ = self.actor.send(Shutdown).await;
    }
}
