//! The beacon actor: owns the [`BeaconCore`], feeds it the socket thread's batches and a
//! periodic tick, hands the resulting messages back to the thread, and writes snapshots.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use actix::prelude::*;
use troupe_core::zmq_thread::CommandSender;
use troupe_core::Shutdown;

use crate::server::core::{BeaconCore, BeaconCounters, Outbound};
use crate::server::socket::{NotDelivered, Received, ToSocket};
use crate::snapshot;

/// How often deadlines are checked: the precision of failure detection.
pub(crate) const TICK: Duration = Duration::from_millis(50);

/// Where and how often the registry is saved.
pub(crate) struct SnapshotPlan {
    pub(crate) path: PathBuf,
    pub(crate) interval: Duration,
}

/// The beacon server actor.
pub struct BeaconServer {
    core: BeaconCore,
    socket: CommandSender<ToSocket>,
    snapshot: Option<SnapshotPlan>,
    saved_rev: Option<(String, u64)>,
    saving: bool,
}

impl BeaconServer {
    pub(crate) fn new(
        core: BeaconCore,
        socket: CommandSender<ToSocket>,
        snapshot: Option<SnapshotPlan>,
    ) -> Self {
        BeaconServer {
            core,
            socket,
            snapshot,
            saved_rev: None,
            saving: false,
        }
    }

    fn send(&self, messages: Vec<Outbound>, answers_batch: bool) {
        if messages.is_empty() && !answers_batch {
            return;
        }
        if self
            .socket
            .send(ToSocket::Send {
                messages,
                answers_batch,
            })
            .is_err()
        {
            tracing::error!("the beacon's socket thread has stopped");
        }
    }

    fn tick(&mut self) {
        let mut out = Vec::new();
        self.core.tick(Instant::now(), &mut out);
        self.send(out, false);
    }

    /// The registry as snapshot bytes, unless it has not changed since the last save.
    fn snapshot_bytes(&mut self, force: bool) -> Option<Vec<u8>> {
        let registry = self.core.registry();
        let at = (registry.epoch().to_string(), registry.rev());
        if !force && self.saved_rev.as_ref() == Some(&at) {
            return None;
        }
        let bytes = snapshot::encode(&at.0, at.1, &registry.snapshot());
        self.saved_rev = Some(at);
        Some(bytes)
    }

    fn save(&mut self, ctx: &mut Context<Self>) {
        if self.saving {
            return;
        }
        let Some(path) = self.snapshot.as_ref().map(|s| s.path.clone()) else {
            return;
        };
        let Some(bytes) = self.snapshot_bytes(false) else {
            return;
        };
        self.saving = true;
        let nodes = self.core.registry().len();
        let write = async move {
            tokio::task::spawn_blocking(move || snapshot::write(&path, &bytes).map(|()| path)).await
        };
        ctx.spawn(write.into_actor(self).map(move |result, actor, _| {
            actor.saving = false;
            match result {
                Ok(Ok(path)) => {
                    tracing::debug!(path = %path.display(), nodes, "snapshot written")
                }
                Ok(Err(err)) => {
                    // Write it again next time.
                    actor.saved_rev = None;
                    tracing::error!(%err, "cannot write the snapshot file")
                }
                Err(err) => {
                    actor.saved_rev = None;
                    tracing::error!(%err, "snapshot writer failed")
                }
            }
        }));
    }
}

impl Actor for BeaconServer {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Self::Context) {
        ctx.run_interval(TICK, |actor, _| actor.tick());
        if let Some(interval) = self.snapshot.as_ref().map(|s| s.interval) {
            ctx.run_interval(interval, |actor, ctx| actor.save(ctx));
        }
    }

    fn stopped(&mut self, _: &mut Self::Context) {
        let _ = self.socket.send(ToSocket::Stop);
    }
}

impl Handler<Received> for BeaconServer {
    type Result = ();

    fn handle(&mut self, batch: Received, _: &mut Self::Context) {
        let now = Instant::now();
        let mut out = Vec::with_capacity(batch.0.len());
        for inbound in batch.0 {
            self.core.handle(now, inbound, &mut out);
        }
        self.send(out, true);
    }
}

impl Handler<NotDelivered> for BeaconServer {
    type Result = ();

    fn handle(&mut self, failed: NotDelivered, _: &mut Self::Context) {
        for (peer, watch, why) in failed.0 {
            self.core.undelivered(&peer, watch.as_deref(), why);
        }
    }
}

/// Asks for the registry as snapshot bytes, for the final save at shutdown.
#[derive(Message)]
#[rtype(result = "Option<Vec<u8>>")]
pub(crate) struct FinalSnapshot;

impl Handler<FinalSnapshot> for BeaconServer {
    type Result = Option<Vec<u8>>;

    fn handle(&mut self, _: FinalSnapshot, _: &mut Self::Context) -> Option<Vec<u8>> {
        self.snapshot.as_ref()?;
        self.snapshot_bytes(true)
    }
}

/// Counts of what the beacon holds, for tests and operators.
#[derive(Debug, Clone, Copy, PartialEq, Eq, MessageResponse)]
pub struct ServerStats {
    /// Nodes registered (online and offline).
    pub nodes: usize,
    /// Nodes online.
    pub online: usize,
    /// The current revision.
    pub rev: u64,
    /// Peer sessions held.
    pub sessions: usize,
    /// Watches held.
    pub watchers: usize,
}

/// Asks the beacon for its [`ServerStats`].
#[derive(Message)]
#[rtype(result = "ServerStats")]
pub struct GetServerStats;

impl Handler<GetServerStats> for BeaconServer {
    type Result = ServerStats;

    fn handle(&mut self, _: GetServerStats, _: &mut Self::Context) -> ServerStats {
        let registry = self.core.registry();
        ServerStats {
            nodes: registry.len(),
            online: registry.online(),
            rev: registry.rev(),
            sessions: self.core.sessions(),
            watchers: self.core.watchers(),
        }
    }
}

/// What metrics show of the beacon: [`ServerStats`] and [`BeaconCounters`].
#[derive(Debug, Clone, PartialEq, Eq, MessageResponse)]
pub struct BeaconMetrics {
    /// Counts of what the beacon holds now.
    pub stats: ServerStats,
    /// What it has answered and pushed since it started.
    pub counters: BeaconCounters,
}

/// Asks the beacon for its [`BeaconMetrics`].
#[derive(Message)]
#[rtype(result = "BeaconMetrics")]
pub struct GetBeaconMetrics;

impl Handler<GetBeaconMetrics> for BeaconServer {
    type Result = BeaconMetrics;

    fn handle(&mut self, _: GetBeaconMetrics, ctx: &mut Self::Context) -> BeaconMetrics {
        BeaconMetrics {
            stats: <Self as Handler<GetServerStats>>::handle(self, GetServerStats, ctx),
            counters: self.core.counters().clone(),
        }
    }
}

impl Handler<Shutdown> for BeaconServer {
    type Result = ();

    fn handle(&mut self, _: Shutdown, ctx: &mut Self::Context) {
        ctx.stop();
    }
}
