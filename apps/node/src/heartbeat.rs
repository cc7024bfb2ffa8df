//! `heartbeat`: the example role. It logs a tick every `interval` and answers a status query;
//! `docs/extending.md` walks through it line by line. It is the template for a new role: one
//! config type, one actor, one `Role` impl, one line in `roles.rs`.

use std::time::Instant;

use actix::prelude::*;
use serde::{Deserialize, Serialize};
use troupe_core::settings::Duration;
use troupe_core::{ConfigError, Role, RoleContext, RoleError, Shutdown};

/// The `[heartbeat]` table.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct HeartbeatConfig {
    /// Time between ticks.
    pub interval: Duration,
    /// Panic on this tick; exists to demonstrate the node's panic policy. Leave unset.
    pub panic_on_tick: Option<u64>,
}

impl Default for HeartbeatConfig {
    fn default() -> Self {
        HeartbeatConfig {
            interval: Duration::from_secs(1),
            panic_on_tick: None,
        }
    }
}

/// The actor: counts ticks.
pub struct HeartbeatActor {
    config: HeartbeatConfig,
    ticks: u64,
    since: Instant,
}

impl Actor for HeartbeatActor {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Self::Context) {
        ctx.run_interval(self.config.interval.get(), |actor, _| {
            actor.ticks += 1;
            tracing::info!(tick = actor.ticks, "tick");
            if actor.config.panic_on_tick == Some(actor.ticks) {
                panic!("heartbeat told to panic on tick {}", actor.ticks);
            }
        });
    }
}

/// Asks the heartbeat for its status.
#[derive(Message)]
#[rtype(result = "HeartbeatStatus")]
pub struct GetStatus;

/// The answer to [`GetStatus`].
#[derive(Debug, Clone, MessageResponse)]
pub struct HeartbeatStatus {
    /// Ticks so far.
    pub ticks: u64,
    /// Time since the role started.
    pub uptime: std::time::Duration,
}

impl Handler<GetStatus> for HeartbeatActor {
    type Result = HeartbeatStatus;

    fn handle(&mut self, _: GetStatus, _: &mut Self::Context) -> HeartbeatStatus {
        HeartbeatStatus {
            ticks: self.ticks,
            uptime: self.since.elapsed(),
        }
    }
}

impl Handler<Shutdown> for HeartbeatActor {
    type Result = ();

    fn handle(&mut self, _: Shutdown, ctx: &mut Self::Context) {
        ctx.stop();
    }
}

/// The running role: a handle on its actor.
pub struct Heartbeat {
    actor: Addr<HeartbeatActor>,
}

impl Role for Heartbeat {
    const NAME: &'static str = "heartbeat";
    type Config = HeartbeatConfig;

    fn validate(config: &HeartbeatConfig) -> Result<(), ConfigError> {
        if config.interval.get().is_zero() {
            return Err(ConfigError::new("interval", "must be longer than 0s"));
        }
        Ok(())
    }

    async fn start(config: HeartbeatConfig, ctx: RoleContext) -> Result<Self, RoleError> {
        tracing::info!(interval = %config.interval, "heartbeat ticking");
        let actor = HeartbeatActor {
            config,
            ticks: 0,
            since: Instant::now(),
        }
        .start();
        ctx.published.publish(actor.clone());
        Ok(Heartbeat { actor })
    }

    async fn stop(self) {
        let _ = self.actor.send(Shutdown).await;
    }
}
