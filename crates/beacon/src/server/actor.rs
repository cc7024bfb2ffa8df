//! The beacon actor: owns the [`BeaconCore`], feeds it the socket thread's batches and a
//! periodic tick, hands the resulting messages back to the thread, and writes snapshots.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use actix::prelude::*;
use troupe_core::zmq_thread::{CommandSender, SendError};
use troupe_core::Shutdown;

use crate::log_limit::LogLimiter;
use crate::registry::PeerId;
use crate::server::core::{BeaconCore, BeaconCounters, Outbound, Undelivered};
use crate::server::socket::{ConnectionCounts, NotDelivered, Received, ToSocket};
use crate::snapshot;

/// How often deadlines are checked: the precision of failure detection.
pub(crate) const TICK: Duration = Duration::from_millis(50);

/// How often free heap memory is handed back to the system.
pub(crate) const RELEASE_MEMORY: Duration = Duration::from_secs(10);

/// Hands free heap memory back to the system. Each connection costs libzmq about 27 KB, freed
/// when it closes; but glibc keeps freed memory in its heaps (thread arenas are never trimmed
/// on their own), so 10,000 connections that came and went left the process 270 MB larger for
/// good. `malloc_trim` returns it (measured: 273 MB with 10,000 connections, 8 MB after they
/// closed). It costs little when there is nothing to give back.
fn release_free_memory() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: malloc_trim only releases free memory of the allocator's heaps.
    unsafe {
        libc::malloc_trim(0);
    }
}

/// Where and how often the registry is saved.
pub(crate) struct SnapshotPlan {
    pub(crate) path: PathBuf,
    pub(crate) interval: Duration,
}

/// Snapshot bytes to write, numbered in the order they were taken. Writes go through one
/// [`SnapshotGate`], so a save taken earlier (a periodic save still running at shutdown) never
/// replaces one taken later (the final save).
pub(crate) struct SnapshotWrite {
    bytes: Vec<u8>,
    seq: u64,
    gate: SnapshotGate,
}

/// The sequence number of the last snapshot written, under a lock held while writing.
pub(crate) type SnapshotGate = Arc<Mutex<u64>>;

impl SnapshotWrite {
    /// Writes the snapshot to `path` (blocking) unless a later one was written already; `Ok(false)`
    /// when skipped for that reason.
    pub(crate) fn write(self, path: &Path) -> std::io::Result<bool> {
        let mut last = self
            .gate
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        if *last >= self.seq {
            return Ok(false);
        }
        snapshot::write(path, &self.bytes)?;
        *last = self.seq;
        Ok(true)
    }
}

/// The beacon server actor.
pub struct BeaconServer {
    core: BeaconCore,
    socket: CommandSender<ToSocket>,
    snapshot: Option<SnapshotPlan>,
    saved_rev: Option<(String, u64)>,
    saving: bool,
    snapshot_seq: u64,
    snapshot_gate: SnapshotGate,
    connections: Arc<ConnectionCounts>,
    /// Batches answered whose acknowledgement the socket thread has not received yet (it
    /// reads no more than a few unanswered batches).
    unsent_acks: usize,
    /// Commands the socket thread's full queue refused, and their log lines' limit.
    bridge_full: u64,
    bridge_full_log: LogLimiter,
}

impl BeaconServer {
    pub(crate) fn new(
        core: BeaconCore,
        socket: CommandSender<ToSocket>,
        snapshot: Option<SnapshotPlan>,
        connections: Arc<ConnectionCounts>,
    ) -> Self {
        BeaconServer {
            core,
            socket,
            snapshot,
            saved_rev: None,
            saving: false,
            snapshot_seq: 0,
            snapshot_gate: SnapshotGate::default(),
            connections,
            unsent_acks: 0,
            bridge_full: 0,
            bridge_full_log: LogLimiter::default(),
        }
    }

    fn send(&mut self, messages: Vec<Outbound>, answers_batch: bool) {
        let answered_batches = self.unsent_acks + usize::from(answers_batch);
        if messages.is_empty() && answered_batches == 0 {
            return;
        }
        match self.socket.send(ToSocket::Send {
            messages,
            answered_batches,
        }) {
            Ok(()) => self.unsent_acks = 0,
            Err(SendError::Stopped(_)) => tracing::error!("the beacon's socket thread has stopped"),
            Err(SendError::Full(waiting, command)) => {
                // The thread is not keeping up: the replies cannot wait anywhere bounded, so
                // their peers' sessions are dropped (counted, and they will register again),
                // never left without an answer silently.
                let ToSocket::Send { messages, .. } = command else {
                    return;
                };
                self.unsent_acks = answered_batches;
                self.bridge_full += 1;
                let mut peers: Vec<PeerId> = messages.into_iter().map(|m| m.peer).collect();
                peers.sort();
                peers.dedup();
                if let Some(suppressed) = self.bridge_full_log.allow(Instant::now()) {
                    tracing::error!(
                        waiting,
                        refused = self.bridge_full,
                        suppressed,
                        peers = peers.len(),
                        "the beacon's socket thread is not keeping up; the sessions of the peers whose replies it refused are dropped"
                    );
                }
                for peer in peers {
                    self.core.undelivered(&peer, None, Undelivered::Overflow);
                }
            }
        }
    }

    fn tick(&mut self) {
        let mut out = Vec::new();
        self.core.tick(Instant::now(), &mut out);
        self.send(out, false);
    }

    /// The registry as snapshot bytes, unless it has not changed since the last save.
    fn snapshot_bytes(&mut self, force: bool) -> Option<SnapshotWrite> {
        let registry = self.core.registry();
        let at = (registry.epoch().to_string(), registry.rev());
        if !force && self.saved_rev.as_ref() == Some(&at) {
            return None;
        }
        let bytes = snapshot::encode(&at.0, at.1, &registry.snapshot());
        self.saved_rev = Some(at);
        self.snapshot_seq += 1;
        Some(SnapshotWrite {
            bytes,
            seq: self.snapshot_seq,
            gate: self.snapshot_gate.clone(),
        })
    }

    fn save(&mut self, ctx: &mut Context<Self>) {
        if self.saving {
            return;
        }
        let Some(path) = self.snapshot.as_ref().map(|s| s.path.clone()) else {
            return;
        };
        let Some(write) = self.snapshot_bytes(false) else {
            return;
        };
        self.saving = true;
        let nodes = self.core.registry().len();
        let write = async move {
            tokio::task::spawn_blocking(move || write.write(&path).map(|_| path)).await
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
        ctx.run_interval(RELEASE_MEMORY, |_, _| release_free_memory());
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
#[rtype(result = "Option<SnapshotWrite>")]
pub(crate) struct FinalSnapshot;

impl Handler<FinalSnapshot> for BeaconServer {
    type Result = Option<SnapshotWrite>;

    fn handle(&mut self, _: FinalSnapshot, _: &mut Self::Context) -> Option<SnapshotWrite> {
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
    /// Sessions dropped since it started because their unread replies overflowed.
    pub peers_dropped: u64,
    /// Its TCP connections: open now, refused since it started.
    pub connections: Connections,
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
            peers_dropped: self.core.peers_dropped(),
            connections: <Self as Handler<GetConnections>>::handle(self, GetConnections, ctx),
        }
    }
}

/// Asks the beacon how many peers it dropped since it started because they left more replies
/// unread than it queues for one peer (see `docs/protocols/beacon.md`).
#[derive(Message)]
#[rtype(result = "u64")]
pub struct GetPeersDropped;

impl Handler<GetPeersDropped> for BeaconServer {
    type Result = u64;

    fn handle(&mut self, _: GetPeersDropped, _: &mut Self::Context) -> u64 {
        self.core.peers_dropped()
    }
}

/// The beacon's TCP connections.
#[derive(Debug, Clone, Copy, PartialEq, Eq, MessageResponse)]
pub struct Connections {
    /// Open now.
    pub open: usize,
    /// Closed at once since the beacon started, because `max_connections` were open.
    pub refused: u64,
}

/// Asks the beacon for its [`Connections`].
#[derive(Message)]
#[rtype(result = "Connections")]
pub struct GetConnections;

impl Handler<GetConnections> for BeaconServer {
    type Result = Connections;

    fn handle(&mut self, _: GetConnections, _: &mut Self::Context) -> Connections {
        use std::sync::atomic::Ordering;
        Connections {
            open: self.connections.open.load(Ordering::Relaxed),
            refused: self.connections.refused.load(Ordering::Relaxed),
        }
    }
}

impl Handler<Shutdown> for BeaconServer {
    type Result = ();

    fn handle(&mut self, _: Shutdown, ctx: &mut Self::Context) {
        ctx.stop();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_older_snapshot_never_replaces_a_newer_one() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("beacon.json");
        let gate = SnapshotGate::default();
        let take = |seq: u64, bytes: &[u8]| SnapshotWrite {
            bytes: bytes.to_vec(),
            seq,
            gate: gate.clone(),
        };
        let (periodic, last) = (take(1, b"periodic"), take(2, b"final"));
        // The final save finishes first; the periodic one, taken before it, is then skipped.
        assert!(last.write(&path).unwrap());
        assert!(!periodic.write(&path).unwrap());
        assert_eq!(std::fs::read(&path).unwrap(), b"final");
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1);
    }

    /// A socket thread that does not take its commands: the peers whose replies cannot be
    /// queued lose their sessions (counted), and the batch acknowledgements are carried to the
    /// next command that gets through, so the thread never stops reading for good.
    #[actix_rt::test]
    async fn a_full_socket_queue_drops_the_peers_sessions_and_keeps_the_acks() {
        use crate::protocol::{encode_request, Hello, Request};
        use crate::registry::{Registry, RegistryConfig};
        use crate::server::core::{Inbound, SessionLimits};

        let registry = Registry::new(
            RegistryConfig {
                liveness: 3,
                offline_ttl: Duration::from_secs(60),
                history: 100,
                max_nodes: 10,
            },
            "e1".into(),
        );
        let core = BeaconCore::new(registry, None, SessionLimits::default());
        let (socket, inbox) = troupe_core::zmq_thread::channel_with_capacity(1).unwrap();
        let actor = BeaconServer::new(core, socket, None, Arc::default()).start();
        let hello = |peer: u8| Inbound {
            peer: PeerId(vec![peer]),
            delimited: false,
            frame: crate::protocol::decode_request(
                &encode_request(
                    Some(1),
                    &Request::Hello(Hello {
                        node: None,
                        nonce: format!("n{peer}"),
                    }),
                ),
                4096,
            ),
        };
        // The first answer fills the queue; the second finds it full.
        actor.send(Received(vec![hello(1)])).await.unwrap();
        actor.send(Received(vec![hello(2)])).await.unwrap();
        assert_eq!(actor.send(GetPeersDropped).await.unwrap(), 1);

        let first = inbox.drain();
        let [ToSocket::Send {
            messages,
            answered_batches: 1,
        }] = first.as_slice()
        else {
            panic!("expected one answer to one batch");
        };
        assert_eq!(messages[0].peer, PeerId(vec![1]));
        // The next command carries the refused batch's acknowledgement too.
        actor.send(Received(vec![hello(3)])).await.unwrap();
        let next = inbox.drain();
        let [ToSocket::Send {
            answered_batches: 2,
            ..
        }] = next.as_slice()
        else {
            panic!("expected the next command to acknowledge two batches");
        };
    }
}
