//! [`HubActor`]: the thin actor around [`Hub`]. It accepts connections (checking their peer
//! credentials), runs each connection's reader and writer tasks, keeps the hub's timer
//! armed, answers the supervisor's channel calls, persists and reads configs through the
//! config thread, and fans service events out to subscribers.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use actix::prelude::*;
use bytes::Bytes;
use tokio::net::{UnixListener, UnixStream};
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;
use troupe_core::services::{ChannelError, Invoke, PushConfig, ServiceLifecycle};

use super::config_store::ConfigStore;
use super::connection::{read_loop, write_loop};
use crate::events::{ServiceEvent, SubscribeEvents, TooManySubscribers, MAX_SUBSCRIBERS};
use crate::hub::{CallId, ConnId, Effect, Flow, Hub, HubStats, Limits, Peer};
use crate::wire::frame::{Damage, Found};
use crate::wire::{FrameDecoder, MIN_FRAME};

/// How long a stopping hub waits for its connections to take their last frames.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(2);
/// Pause after a failed `accept` (out of file descriptors, ...), so it does not spin.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(100);

/// The hub actor; see the module doc.
pub struct HubActor {
    hub: Hub,
    limits: Limits,
    listener: Option<UnixListener>,
    accepting: Option<SpawnHandle>,
    conns: HashMap<ConnId, ConnTasks>,
    next_conn: ConnId,
    calls: HashMap<CallId, CallReply>,
    next_call: CallId,
    store: ConfigStore,
    subscribers: Vec<Recipient<ServiceEvent>>,
    events_missed: u64,
    timer: Option<(Instant, SpawnHandle)>,
    own_uid: u32,
    group_access: bool,
    drained: Vec<oneshot::Sender<()>>,
}

struct ConnTasks {
    writer: mpsc::UnboundedSender<Bytes>,
    reader_task: JoinHandle<()>,
    writer_task: JoinHandle<()>,
    paused: Option<oneshot::Sender<()>>,
}

enum CallReply {
    Push(oneshot::Sender<Result<(), ChannelError>>),
    Invoke(oneshot::Sender<Result<Vec<u8>, ChannelError>>),
}

impl HubActor {
    pub(crate) fn new(
        limits: Limits,
        listener: UnixListener,
        store: ConfigStore,
        group_access: bool,
    ) -> HubActor {
        HubActor {
            hub: Hub::new(limits.clone()),
            limits,
            listener: Some(listener),
            accepting: None,
            conns: HashMap::new(),
            next_conn: 0,
            calls: HashMap::new(),
            next_call: 0,
            store,
            subscribers: Vec::new(),
            events_missed: 0,
            timer: None,
            own_uid: nix::unistd::geteuid().as_raw(),
            group_access,
            drained: Vec::new(),
        }
    }

    /// Carries out what the hub decided: hands batches to writers, then effects, then
    /// re-arms the timer.
    fn after(&mut self, ctx: &mut Context<Self>) {
        for (conn, batch) in self.hub.take_writes() {
            if let Some(tasks) = self.conns.get(&conn) {
                // A closed writer means the socket failed; its report is on the way.
                let _ = tasks.writer.send(batch);
            }
        }
        for effect in self.hub.take_effects() {
            self.carry_out(effect, ctx);
        }
        self.arm_timer(ctx);
        if !self.drained.is_empty() && self.hub.is_empty() {
            for waiter in self.drained.drain(..) {
                let _ = waiter.send(());
            }
        }
    }

    fn carry_out(&mut self, effect: Effect, ctx: &mut Context<Self>) {
        match effect {
            Effect::StopReading { conn } => {
                if let Some(tasks) = self.conns.get_mut(&conn) {
                    tasks.reader_task.abort();
                    tasks.paused = None;
                }
            }
            Effect::Finish { conn } => {
                if let Some(tasks) = self.conns.remove(&conn) {
                    tasks.reader_task.abort();
                    tasks.writer_task.abort();
                }
            }
            Effect::Resume { conn } => {
                if let Some(paused) = self.conns.get_mut(&conn).and_then(|t| t.paused.take()) {
                    let _ = paused.send(());
                }
            }
            Effect::CallDone { call, result } => self.answer_call(call, result),
            Effect::PersistConfig {
                call,
                service,
                path,
                config,
            } => {
                let store = self.store.clone();
                let write = async move { store.write(path, config).await };
                ctx.spawn(write.into_actor(self).map(move |result, act, _| {
                    let result = result.map(|()| Vec::new()).map_err(|why| {
                        ChannelError::Failed(format!(
                            "service {service} acknowledged the config but it was not persisted: {why}"
                        ))
                    });
                    act.answer_call(call, result);
                }));
            }
            Effect::ReadConfig { conn, corr, path } => {
                let store = self.store.clone();
                let limit = self.limits.max_frame_bytes - MIN_FRAME;
                let read = async move { store.read(path, limit).await };
                ctx.spawn(read.into_actor(self).map(move |result, act, ctx| {
                    act.hub.config_read(conn, corr, result);
                    act.after(ctx);
                }));
            }
            Effect::Publish(event) => self.publish(event),
        }
    }

    fn answer_call(&mut self, call: CallId, result: Result<Vec<u8>, ChannelError>) {
        match self.calls.remove(&call) {
            Some(CallReply::Push(reply)) => {
                let _ = reply.send(result.map(|_| ()));
            }
            Some(CallReply::Invoke(reply)) => {
                let _ = reply.send(result);
            }
            None => {}
        }
    }

    fn publish(&mut self, event: ServiceEvent) {
        self.subscribers.retain(|s| s.connected());
        for subscriber in &self.subscribers {
            if subscriber.try_send(event.clone()).is_err() {
                self.events_missed += 1;
                if self.events_missed.is_power_of_two() {
                    tracing::warn!(
                        missed = self.events_missed,
                        "an event stream subscriber is not keeping up; it missed events"
                    );
                }
            }
        }
    }

    fn arm_timer(&mut self, ctx: &mut Context<Self>) {
        let Some(next) = self.hub.next_deadline() else {
            return;
        };
        if let Some((armed, handle)) = self.timer {
            if armed <= next {
                return;
            }
            ctx.cancel_future(handle);
        }
        let delay = next.saturating_duration_since(Instant::now());
        let handle = ctx.run_later(delay, |act, ctx| {
            act.timer = None;
            act.hub.tick(Instant::now());
            act.after(ctx);
        });
        self.timer = Some((next, handle));
    }

    fn accepted(&mut self, stream: UnixStream, ctx: &mut Context<Self>) {
        let peer = match stream.peer_cred() {
            Ok(cred) => cred,
            Err(err) => {
                tracing::warn!(%err, "cannot read a new connection's credentials; dropping it");
                return;
            }
        };
        let Some(pid) = peer.pid().and_then(|p| u32::try_from(p).ok()) else {
            tracing::warn!("a new connection has no peer pid; dropping it");
            return;
        };
        let uid = peer.uid();
        if uid != self.own_uid && uid != 0 && !self.group_access {
            tracing::warn!(pid, uid, "refused a connection from another user");
            return;
        }
        self.next_conn += 1;
        let conn = self.next_conn;
        let (read, write) = stream.into_split();
        let (writer, batches) = mpsc::unbounded_channel();
        let addr = ctx.address();
        let decoder = FrameDecoder::new(MIN_FRAME, self.limits.max_frame_bytes, Some(pid))
            .with_damage_limit(self.limits.max_damage_bytes);
        let reader_task = actix_rt::spawn(read_loop(conn, read, decoder, addr.clone()));
        let writer_task = actix_rt::spawn(write_loop(conn, write, batches, addr));
        self.conns.insert(
            conn,
            ConnTasks {
                writer,
                reader_task,
                writer_task,
                paused: None,
            },
        );
        self.hub.connect(conn, Peer { pid, uid }, Instant::now());
        self.after(ctx);
    }
}

impl Actor for HubActor {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Self::Context) {
        let Some(listener) = self.listener.take() else {
            return;
        };
        let incoming = futures::stream::unfold(listener, |listener| async move {
            let next = listener.accept().await.map(|(stream, _)| stream);
            if next.is_err() {
                tokio::time::sleep(ACCEPT_BACKOFF).await;
            }
            Some((next, listener))
        });
        self.accepting = Some(ctx.add_stream(incoming));
    }

    fn stopped(&mut self, _: &mut Self::Context) {
        for (_, tasks) in self.conns.drain() {
            tasks.reader_task.abort();
            tasks.writer_task.abort();
        }
        let stats = self.hub.stats();
        tracing::info!(
            frames_in = stats.frames_in,
            delivered = stats.delivered,
            expired = stats.expired,
            overflowed = stats.overflowed,
            corrupt_bytes = stats.corrupt_bytes,
            "ipc hub stopped"
        );
    }
}

impl StreamHandler<std::io::Result<UnixStream>> for HubActor {
    fn handle(&mut self, item: std::io::Result<UnixStream>, ctx: &mut Self::Context) {
        match item {
            Ok(stream) => self.accepted(stream, ctx),
            Err(err) => tracing::warn!(%err, "accepting a connection failed"),
        }
    }

    fn finished(&mut self, _: &mut Self::Context) {}
}

/// A reader's batch of decoded frames. Answered `true` when the reader may read on (at
/// once, or once the receivers it filled have drained), `false` when it must stop.
#[derive(Message)]
#[rtype(result = "bool")]
pub(crate) struct Inbound {
    pub(crate) conn: ConnId,
    /// The bytes the frames are in.
    pub(crate) frames: Bytes,
    /// What the reader found, in order, with where it starts in `frames`.
    pub(crate) found: Vec<(usize, Found)>,
    pub(crate) damage: Damage,
    /// Bytes of a partial frame the reader holds after this read.
    pub(crate) partial: usize,
}

impl Handler<Inbound> for HubActor {
    type Result = ResponseFuture<bool>;

    fn handle(&mut self, msg: Inbound, ctx: &mut Self::Context) -> Self::Result {
        let flow = self.hub.receive(
            msg.conn,
            &msg.frames,
            &msg.found,
            msg.damage,
            Instant::now(),
        );
        if !self.hub.partial(msg.conn, msg.partial, Instant::now()) {
            self.after(ctx);
            return Box::pin(async { false });
        }
        let waiting = match (flow, self.conns.get_mut(&msg.conn)) {
            (Flow::Paused, Some(tasks)) => {
                let (resume, resumed) = oneshot::channel();
                tasks.paused = Some(resume);
                Some(resumed)
            }
            _ => None,
        };
        self.after(ctx);
        Box::pin(async move {
            match waiting {
                Some(resumed) => resumed.await.is_ok(),
                None => true,
            }
        })
    }
}

/// A writer finished its batch (or failed part way, after `bytes`).
#[derive(Message)]
#[rtype(result = "()")]
pub(crate) struct Written {
    pub(crate) conn: ConnId,
    pub(crate) bytes: usize,
    pub(crate) failed: bool,
}

impl Handler<Written> for HubActor {
    type Result = ();

    fn handle(&mut self, msg: Written, ctx: &mut Self::Context) {
        let now = Instant::now();
        self.hub.written(msg.conn, msg.bytes, now);
        if msg.failed {
            self.hub.hangup(msg.conn, now);
        }
        self.after(ctx);
    }
}

/// A reader saw the peer hang up.
#[derive(Message)]
#[rtype(result = "()")]
pub(crate) struct Hangup {
    pub(crate) conn: ConnId,
}

impl Handler<Hangup> for HubActor {
    type Result = ();

    fn handle(&mut self, msg: Hangup, ctx: &mut Self::Context) {
        self.hub.hangup(msg.conn, Instant::now());
        self.after(ctx);
    }
}

impl Handler<ServiceLifecycle> for HubActor {
    type Result = ();

    fn handle(&mut self, msg: ServiceLifecycle, ctx: &mut Self::Context) {
        match msg {
            ServiceLifecycle::Started {
                id,
                pid,
                config_path,
            } => {
                tracing::debug!(service = %id, pid, "service process started");
                self.hub.service_started(id, pid, config_path);
            }
            ServiceLifecycle::Exited { id, pid } => {
                tracing::debug!(service = %id, pid, "service process exited");
                self.hub.service_exited(&id, pid);
            }
        }
        self.after(ctx);
    }
}

impl Handler<PushConfig> for HubActor {
    type Result = ResponseFuture<Result<(), ChannelError>>;

    fn handle(&mut self, msg: PushConfig, ctx: &mut Self::Context) -> Self::Result {
        let config = match serde_json::to_vec(&msg.config) {
            Ok(config) => Bytes::from(config),
            Err(err) => {
                let why = format!("the config cannot be written as JSON: {err}");
                return Box::pin(async move { Err(ChannelError::Failed(why)) });
            }
        };
        self.next_call += 1;
        let call = self.next_call;
        let (reply, answer) = oneshot::channel();
        self.calls.insert(call, CallReply::Push(reply));
        self.hub
            .push_config(call, &msg.service, config, msg.timeout, Instant::now());
        self.after(ctx);
        Box::pin(async move { answer.await.unwrap_or_else(|_| Err(hub_gone())) })
    }
}

impl Handler<Invoke> for HubActor {
    type Result = ResponseFuture<Result<Vec<u8>, ChannelError>>;

    fn handle(&mut self, msg: Invoke, ctx: &mut Self::Context) -> Self::Result {
        self.next_call += 1;
        let call = self.next_call;
        let (reply, answer) = oneshot::channel();
        self.calls.insert(call, CallReply::Invoke(reply));
        self.hub.invoke(
            call,
            &msg.service,
            Bytes::from(msg.payload),
            msg.timeout,
            Instant::now(),
        );
        self.after(ctx);
        Box::pin(async move { answer.await.unwrap_or_else(|_| Err(hub_gone())) })
    }
}

fn hub_gone() -> ChannelError {
    ChannelError::Failed("the ipc hub stopped".into())
}

impl Handler<SubscribeEvents> for HubActor {
    type Result = Result<(), TooManySubscribers>;

    fn handle(&mut self, msg: SubscribeEvents, _: &mut Self::Context) -> Self::Result {
        self.subscribers.retain(|s| s.connected());
        if self.subscribers.len() >= MAX_SUBSCRIBERS {
            return Err(TooManySubscribers);
        }
        self.subscribers.push(msg.0);
        Ok(())
    }
}

/// Asks the hub for its counters.
#[derive(Message)]
#[rtype(result = "HubStats")]
pub struct GetStats;

impl Handler<GetStats> for HubActor {
    type Result = MessageResult<GetStats>;

    fn handle(&mut self, _: GetStats, _: &mut Self::Context) -> Self::Result {
        let mut stats = self.hub.stats();
        stats.events_missed = self.events_missed;
        MessageResult(stats)
    }
}

/// Asks the hub what it holds now: connections and mailboxes (each list cut at the limit
/// given) and its counters.
#[derive(Message)]
#[rtype(result = "crate::hub::HubView")]
pub struct GetView(pub usize);

impl Handler<GetView> for HubActor {
    type Result = MessageResult<GetView>;

    fn handle(&mut self, msg: GetView, _: &mut Self::Context) -> Self::Result {
        let mut view = self.hub.view(msg.0);
        view.stats.events_missed = self.events_missed;
        MessageResult(view)
    }
}

/// Stops the hub: stop accepting, fail what waits, let connections take their last frames
/// (bounded), then stop the actor.
#[derive(Message)]
#[rtype(result = "()")]
pub(crate) struct StopHub;

impl Handler<StopHub> for HubActor {
    type Result = ResponseActFuture<Self, ()>;

    fn handle(&mut self, _: StopHub, ctx: &mut Self::Context) -> Self::Result {
        if let Some(accepting) = self.accepting.take() {
            ctx.cancel_future(accepting);
        }
        let (drained, done) = oneshot::channel();
        self.drained.push(drained);
        self.hub.shutdown(Instant::now());
        self.after(ctx);
        let wait = async move {
            let _ = tokio::time::timeout(DRAIN_TIMEOUT, done).await;
        };
        Box::pin(wait.into_actor(self).map(|(), _, ctx| ctx.stop()))
    }
}
