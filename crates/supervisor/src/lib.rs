//! # troupe-supervisor
//!
//! The `supervisor` role: keeps OS services and actors alive under restart plans.
//!
//! This crate currently provides the role's actor and its `[supervisor]` config section only;
//! restart plans and process supervision are not implemented yet.

#![warn(missing_docs, unreachable_pub)]

use actix::prelude::*;
use serde::{Deserialize, Serialize};
use troupe_core::{Role, RoleContext, RoleError, Shutdown};

/// The `[supervisor]` table.
#[derive(Debug, Clone, Serialize, Deserialize, Default)]
#[serde(deny_unknown_fields, default)]
pub struct SupervisorConfig {
    /// Folder whose sub-folders each hold one service's `manifest.json`.
    pub services_dir: Option<String>,
}

/// The supervisor actor.
pub struct Supervisor;

impl Actor for Supervisor {
    type Context = Context<Self>;
}

impl Handler<Shutdown> for Supervisor {
    type Result = ();
    fn handle(&mut self, _: Shutdown, ctx: &mut Self::Context) {
        ctx.stop();
    }
}

/// The running `supervisor` role.
pub struct SupervisorRole {
    actor: Addr<Supervisor>,
}

impl Role for SupervisorRole {
    const NAME: &'static str = "supervisor";
    type Config = SupervisorConfig;

    fn start_after() -> &'static [&'static str] {
        &["ipc"]
    }

    async fn start(_config: SupervisorConfig, _ctx: RoleContext) -> Result<Self, RoleError> {
        tracing::warn!("supervisor not implemented yet: no services are started");
        Ok(SupervisorRole {
            actor: Supervisor.start(),
        })
    }

    async fn stop(self) {
        let _ = self.actor.send(Shutdown).await;
    }
}
