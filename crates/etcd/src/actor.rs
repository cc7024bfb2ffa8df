//! The etcd client actor: owns the [`EtcdCore`], runs the etcd calls it asks for (one
//! membership call at a time, each with a deadline), the range reads that answer queries, and
//! the watch tasks that feed the mirror and the subscriptions; logs what an operator must
//! know (etcd unreachable, lease lost, name refused).
//!
//! etcd-client is async (tonic): its calls run as futures on this actor's arbiter; its
//! balanced channel spawns one tokio task per client, on the same runtime. Nothing blocks.

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use actix::prelude::*;
use etcd_client::{
    Client, Compare, CompareOp, ConnectOptions, GetOptions, LeaseKeepAliveStream, LeaseKeeper,
    PutOptions, Txn, TxnOp, TxnOpResponse, WatchOptions,
};
use tokio::sync::{oneshot, watch};
use troupe_beacon::client::{
    refusal, AwaitRequirements, ClientError, ClusterEvent, GetRequirements, GetRequirementsOf,
    GetStatus, Leave, ListNodes, LookupResource, Offer, ProvidersChanged, Requirements, Subscribe,
    SubscriptionId, Unsubscribe, Unwatch, WatchId, WatchProviders, Withdraw,
};
use troupe_beacon::protocol::{Node, Position};
use troupe_core::Shutdown;

use crate::core::{
    self, after_compaction, decode_all, epoch, map_event, may_claim, nodes_prefix, prefix_end,
    requirements_of, start_from, subscription_events, watched, Action, Claim, EtcdCore, Note,
    OfferChanges, Op, RawEvent, Start, SOURCE,
};

/// Most queries (range reads) running at once.
pub const MAX_QUERIES: usize = 256;
/// Most subscriptions at once (each is an etcd watch).
pub const MAX_SUBSCRIPTIONS: usize = 15;
/// Keys read per page of a range read.
const PAGE: i64 = 1000;
/// Most invalid entries logged per read or batch of events.
const SKIPPED_LOGGED: usize = 5;

/// How the actor reaches etcd.
#[derive(Clone)]
pub struct Connection {
    /// The endpoints.
    pub endpoints: Vec<String>,
    /// Options (TLS, user, keep-alive).
    pub options: ConnectOptions,
    /// The deadline of each call.
    pub timeout: Duration,
}

/// Which feed a watch task serves.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum Feed {
    Mirror,
    Subscription(SubscriptionId),
}

/// What a watch task reports.
#[derive(Debug)]
enum FeedBody {
    /// Every node, read at this position.
    Snapshot {
        position: Position,
        nodes: Vec<Node>,
    },
    /// Changes, in order.
    Events { epoch: String, raw: Vec<RawEvent> },
    /// The watch is (again) in place: what it reports from here follows what came before.
    Watching,
    /// The watch failed more than once in a row: etcd is unreachable.
    Down(String),
}

#[derive(Message)]
#[rtype(result = "()")]
struct FeedMsg {
    feed: Feed,
    body: FeedBody,
}

struct Subscriber {
    resources: Vec<String>,
    recipient: Recipient<ClusterEvent>,
    task: actix_rt::task::JoinHandle<()>,
}

/// The cluster client on etcd. It answers the same messages as the beacon client (see
/// `troupe_beacon::client`).
pub struct EtcdClient {
    core: EtcdCore,
    connection: Connection,
    client: Option<Client>,
    /// The client once connected, for queries and watches started before.
    clients: watch::Sender<Option<Client>>,
    keeper: Option<(LeaseKeeper, LeaseKeepAliveStream)>,
    awaiting: HashMap<u64, oneshot::Sender<Result<Requirements, ClientError>>>,
    watchers: HashMap<WatchId, Recipient<ProvidersChanged>>,
    subscribers: HashMap<SubscriptionId, Subscriber>,
    mirror: Option<actix_rt::task::JoinHandle<()>>,
    queries: Arc<AtomicUsize>,
    next_token: u64,
    done: Option<oneshot::Sender<()>>,
}

impl EtcdClient {
    /// A client of `core`, reaching etcd through `connection`; `done` fires once it stopped.
    pub fn new(core: EtcdCore, connection: Connection, done: oneshot::Sender<()>) -> Self {
        EtcdClient {
            core,
            connection,
            client: None,
            clients: watch::channel(None).0,
            keeper: None,
            awaiting: HashMap::new(),
            watchers: HashMap::new(),
            subscribers: HashMap::new(),
            mirror: None,
            queries: Arc::new(AtomicUsize::new(0)),
            next_token: 1,
            done: Some(done),
        }
    }

    fn token(&mut self) -> u64 {
        self.next_token += 1;
        self.next_token
    }

    fn apply(&mut self, actions: Vec<Action>) {
        for action in actions {
            match action {
                Action::Awaited { token, result } => {
                    if let Some(caller) = self.awaiting.remove(&token) {
                        let _ = caller.send(result);
                    }
                }
                Action::Providers { watch, changed } => match self.watchers.get(&watch) {
                    Some(recipient) if recipient.connected() => recipient.do_send(changed),
                    _ => {
                        self.watchers.remove(&watch);
                        self.core.unwatch_providers(watch);
                    }
                },
            }
        }
    }

    fn log(&self, notes: Vec<Note>) {
        for note in notes {
            match note {
                Note::Unreachable(why) => tracing::warn!(
                    endpoints = %self.connection.endpoints.join(" "),
                    error = %why,
                    "etcd is unreachable; the node and its services run on, and it registers again once etcd answers"
                ),
                Note::Reachable(after) => tracing::info!(
                    after = %humanize(after),
                    "etcd answers again"
                ),
                Note::Registered { lease, again } => tracing::info!(
                    lease = format!("{lease:x}"),
                    again,
                    ttl_s = self.core.settings().ttl(),
                    "registered in etcd"
                ),
                Note::LeaseLost => tracing::warn!(
                    "the node's lease expired while etcd was out of reach; registering again"
                ),
                Note::Refused(why) => tracing::error!("etcd registration refused: {why}"),
            }
        }
    }

    /// Runs the next membership call, if one is due.
    fn step(&mut self, ctx: &mut Context<Self>) {
        let Some(op) = self.core.next_op(Instant::now()) else {
            return;
        };
        let timeout = self.connection.timeout;
        match op {
            Op::Connect => {
                let connection = self.connection.clone();
                let fut = async move {
                    let connect = Client::connect(&connection.endpoints, Some(connection.options));
                    match tokio::time::timeout(connection.timeout, connect).await {
                        Ok(Ok(client)) => Ok(client),
                        Ok(Err(err)) => Err(err.to_string()),
                        Err(_) => Err(format!("no answer within {:?}", connection.timeout)),
                    }
                };
                ctx.spawn(fut.into_actor(self).map(|result, actor, ctx| {
                    let outcome = match result {
                        Ok(client) => {
                            actor.client = Some(client.clone());
                            actor.clients.send_replace(Some(client));
                            Ok(())
                        }
                        Err(why) => Err(why),
                    };
                    let notes = actor.core.connected(Instant::now(), outcome);
                    actor.log(notes);
                    actor.step(ctx);
                }));
            }
            Op::Grant { ttl } => {
                let Some(client) = self.client.clone() else {
                    return;
                };
                let fut = async move {
                    let granted = retried(timeout, || {
                        let mut client = client.clone();
                        async move { client.lease_grant(ttl, None).await }
                    });
                    granted.await.map(|granted| granted.id())
                };
                ctx.spawn(fut.into_actor(self).map(|result, actor, ctx| {
                    actor.keeper = None;
                    let notes = actor.core.granted(Instant::now(), result);
                    actor.log(notes);
                    actor.step(ctx);
                }));
            }
            Op::Register { lease, key, value } => {
                let Some(client) = self.client.clone() else {
                    return;
                };
                let stored = value.clone();
                let fut = claim(client, key, value, lease, timeout);
                ctx.spawn(fut.into_actor(self).map(move |result, actor, ctx| {
                    let notes = actor.core.claimed(Instant::now(), stored, result);
                    actor.log(notes);
                    actor.step(ctx);
                }));
            }
            Op::KeepAlive { lease } => {
                let Some(client) = self.client.clone() else {
                    return;
                };
                let keeper = self.keeper.take();
                let fut = keep_alive(client, keeper, lease, timeout);
                ctx.spawn(fut.into_actor(self).map(|(result, keeper), actor, ctx| {
                    actor.keeper = keeper;
                    let notes = actor.core.kept_alive(Instant::now(), result);
                    actor.log(notes);
                    actor.step(ctx);
                }));
            }
        }
    }

    fn start_mirror(&mut self, ctx: &mut Context<Self>) {
        self.mirror = Some(actix_rt::spawn(follow(
            self.clients.subscribe(),
            self.core.settings().prefix.clone(),
            None,
            self.core.settings().heartbeat,
            self.connection.timeout,
            ctx.address().recipient(),
            Feed::Mirror,
        )));
    }

    /// A range read of every node, answered through `answer` with the nodes read: for queries
    /// while the mirror is not current (each handler answers from the mirror first).
    fn query<T: 'static>(
        &self,
        answer: impl for<'n> FnOnce(Vec<&'n Node>) -> Result<T, ClientError> + 'static,
    ) -> ResponseFuture<Result<T, ClientError>> {
        let clients = self.clients.subscribe();
        let last_error = self
            .core
            .status(Instant::now(), 0)
            .beacons
            .first()
            .and_then(|b| b.refusal.clone());
        let Some(slot) = QuerySlot::take(&self.queries) else {
            return Box::pin(async { Err(ClientError::Busy(MAX_QUERIES)) });
        };
        let prefix = self.core.settings().prefix.clone();
        let timeout = self.connection.timeout;
        Box::pin(async move {
            let read = match connected(clients, timeout).await {
                Some(client) => read_all(client, &prefix, timeout).await,
                None => Err(last_error.unwrap_or_else(|| timed_out(timeout))),
            };
            drop(slot);
            let (_, _, entries) = read.map_err(ClientError::Unreachable)?;
            let mut skipped = Vec::new();
            let nodes = decode_all(&prefix, entries, &mut skipped);
            log_skipped(&skipped);
            answer(nodes.iter().collect())
        })
    }
}

/// One of the [`MAX_QUERIES`] queries that may run at once, given back when dropped (also
/// when the query's future is dropped unfinished).
struct QuerySlot(Arc<AtomicUsize>);

impl QuerySlot {
    fn take(running: &Arc<AtomicUsize>) -> Option<QuerySlot> {
        let taken = running.fetch_add(1, Ordering::Relaxed);
        let slot = QuerySlot(running.clone());
        (taken < MAX_QUERIES).then_some(slot)
    }
}

impl Drop for QuerySlot {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

/// The position and the nodes of a snapshot read at `(epoch, rev)`.
fn snapshot(
    prefix: &str,
    (epoch, rev): (String, i64),
    entries: Vec<(Vec<u8>, Vec<u8>)>,
    skipped: &mut Vec<String>,
) -> (Position, Vec<Node>) {
    let position = Position {
        epoch,
        rev: rev.max(0) as u64,
    };
    (position, decode_all(prefix, entries, skipped))
}

/// The client, waiting at most `timeout` for the connection.
async fn connected(
    mut clients: watch::Receiver<Option<Client>>,
    timeout: Duration,
) -> Option<Client> {
    let wait = clients.wait_for(Option::is_some);
    match tokio::time::timeout(timeout, wait).await {
        Ok(Ok(client)) => client.clone(),
        _ => None,
    }
}

fn humanize(duration: Duration) -> String {
    format!("{:.1}s", duration.as_secs_f64())
}

fn log_skipped(skipped: &[String]) {
    for why in skipped.iter().take(SKIPPED_LOGGED) {
        tracing::warn!("etcd entry skipped: {why}");
    }
    if skipped.len() > SKIPPED_LOGGED {
        tracing::warn!(
            more = skipped.len() - SKIPPED_LOGGED,
            "more etcd entries skipped"
        );
    }
}

impl Actor for EtcdClient {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Self::Context) {
        let heartbeat = self.core.settings().heartbeat;
        let tick = (heartbeat / 4).clamp(Duration::from_millis(5), Duration::from_millis(100));
        self.start_mirror(ctx);
        self.step(ctx);
        ctx.run_interval(tick, |actor, ctx| {
            let actions = actor.core.tick(Instant::now());
            actor.apply(actions);
            actor.step(ctx);
        });
    }

    fn stopped(&mut self, _: &mut Self::Context) {
        if let Some(task) = self.mirror.take() {
            task.abort();
        }
        for (_, subscriber) in self.subscribers.drain() {
            subscriber.task.abort();
        }
        if let Some(done) = self.done.take() {
            let _ = done.send(());
        }
    }
}

impl Handler<FeedMsg> for EtcdClient {
    type Result = ();

    fn handle(&mut self, msg: FeedMsg, _: &mut Self::Context) {
        let now = Instant::now();
        let prefix = self.core.settings().prefix.clone();
        let mut skipped = Vec::new();
        match msg.feed {
            Feed::Mirror => {
                let actions = match msg.body {
                    FeedBody::Snapshot { position, nodes } => {
                        self.core.mirror_snapshot(position, nodes)
                    }
                    FeedBody::Events { epoch, raw } => {
                        let events = raw
                            .iter()
                            .filter_map(|raw| map_event(&prefix, raw, &mut skipped))
                            .collect();
                        self.core.mirror_events(&epoch, events)
                    }
                    FeedBody::Watching => self.core.mirror_watching(),
                    FeedBody::Down(why) => {
                        let notes = self.core.unreachable(now, why);
                        self.log(notes);
                        self.core.mirror_down()
                    }
                };
                self.apply(actions);
            }
            Feed::Subscription(id) => {
                let Some(subscriber) = self.subscribers.get(&id) else {
                    return;
                };
                let events = match msg.body {
                    FeedBody::Snapshot { position, nodes } => vec![ClusterEvent::Snapshot {
                        beacon: SOURCE.to_string(),
                        position,
                        nodes: watched(&nodes, &subscriber.resources),
                    }],
                    FeedBody::Events { epoch, raw } => subscription_events(
                        &prefix,
                        &epoch,
                        &subscriber.resources,
                        &raw,
                        &mut skipped,
                    ),
                    FeedBody::Watching | FeedBody::Down(_) => Vec::new(),
                };
                if !subscriber.recipient.connected() {
                    if let Some(gone) = self.subscribers.remove(&id) {
                        gone.task.abort();
                    }
                    return;
                }
                for event in events {
                    subscriber.recipient.do_send(event);
                }
            }
        }
        log_skipped(&skipped);
    }
}

/// Follows the nodes under `prefix` for `feed`: a snapshot (or, with `since`, the changes
/// after it), then every change, resuming from the last revision seen after a disconnection
/// and reading afresh when that revision was compacted. Reports to `sink`, waiting for each
/// report to be handled (so nothing piles up).
async fn follow(
    mut clients: watch::Receiver<Option<Client>>,
    prefix: String,
    since: Option<Position>,
    heartbeat: Duration,
    timeout: Duration,
    sink: Recipient<FeedMsg>,
    feed: Feed,
) {
    let client = match clients.wait_for(Option::is_some).await {
        Ok(client) => match client.clone() {
            Some(client) => client,
            None => return,
        },
        Err(_) => return,
    };
    let mut next = Next::Since(since);
    let mut failures = 0u32;
    loop {
        let step: Result<Next, (Next, String)> = match next {
            Next::Since(since) => match header(client.clone(), &prefix, timeout).await {
                Ok((epoch, current)) => Ok(match start_from(since.as_ref(), &epoch, current) {
                    Start::Snapshot => Next::Snapshot,
                    Start::From(rev) => Next::From(epoch, rev),
                }),
                Err(why) => Err((Next::Since(since), why)),
            },
            Next::Snapshot => match read_all(client.clone(), &prefix, timeout).await {
                Ok((epoch, rev, entries)) => {
                    let mut skipped = Vec::new();
                    let at = (epoch.clone(), rev);
                    let (position, nodes) = snapshot(&prefix, at, entries, &mut skipped);
                    log_skipped(&skipped);
                    let body = FeedBody::Snapshot { position, nodes };
                    if sink.send(FeedMsg { feed, body }).await.is_err() {
                        return;
                    }
                    Ok(Next::From(epoch, rev + 1))
                }
                Err(why) => Err((Next::Snapshot, why)),
            },
            Next::From(epoch, from) => {
                match watch(client.clone(), &prefix, epoch, from, timeout, &sink, feed).await {
                    WatchEnd::Stopped => return,
                    WatchEnd::Restart(next) => Ok(next),
                    WatchEnd::Failed(next, why, delivered) => {
                        if delivered {
                            failures = 0;
                        }
                        Err((next, why))
                    }
                }
            }
        };
        next = match step {
            Ok(following) => {
                failures = 0;
                following
            }
            Err((again, why)) => {
                failures += 1;
                if failures > 1 {
                    let body = FeedBody::Down(why);
                    if sink.send(FeedMsg { feed, body }).await.is_err() {
                        return;
                    }
                    let wait = heartbeat * failures.min(5);
                    tokio::time::sleep(wait).await;
                }
                again
            }
        };
    }
}

/// Where a watch task goes on.
enum Next {
    /// Decide from this position (none: a snapshot).
    Since(Option<Position>),
    /// Read every node.
    Snapshot,
    /// Watch from this revision of this epoch.
    From(String, i64),
}

/// How a watch ended.
enum WatchEnd {
    /// Nobody listens any more.
    Stopped,
    /// etcd cancelled it: go on from there.
    Restart(Next),
    /// It failed (after delivering something, or not): go on from there after the error.
    Failed(Next, String, bool),
}

/// Watches the nodes from revision `from` until the watch fails or is cancelled.
async fn watch(
    client: Client,
    prefix: &str,
    epoch: String,
    from: i64,
    timeout: Duration,
    sink: &Recipient<FeedMsg>,
    feed: Feed,
) -> WatchEnd {
    let options = WatchOptions::new()
        .with_prefix()
        .with_prev_key()
        .with_progress_notify()
        .with_start_revision(from);
    let mut last = from - 1;
    let key = nodes_prefix(prefix);
    let opened = retried(timeout, || {
        let mut client = client.clone();
        let (key, options) = (key.clone(), options.clone());
        async move { client.watch(key, Some(options)).await }
    });
    let mut stream = match opened.await {
        Ok(stream) => stream,
        Err(why) => return WatchEnd::Failed(Next::From(epoch, from), why, false),
    };
    let mut delivered = false;
    loop {
        let message = match stream.message().await {
            Ok(Some(message)) => message,
            Ok(None) => {
                let why = "the watch stream ended".to_string();
                return WatchEnd::Failed(Next::From(epoch, last + 1), why, delivered);
            }
            Err(err) => {
                return WatchEnd::Failed(Next::From(epoch, last + 1), err.to_string(), delivered)
            }
        };
        delivered = true;
        if message.created() && !message.canceled() {
            let body = FeedBody::Watching;
            if sink.send(FeedMsg { feed, body }).await.is_err() {
                return WatchEnd::Stopped;
            }
            continue;
        }
        if message.canceled() {
            return match after_compaction(message.compact_revision(), last) {
                Start::Snapshot => WatchEnd::Restart(Next::Snapshot),
                Start::From(rev) => WatchEnd::Failed(
                    Next::From(epoch, rev),
                    format!("etcd cancelled the watch: {}", message.cancel_reason()),
                    false,
                ),
            };
        }
        let current = message.header().map(|h| epoch_of(h.cluster_id()));
        if let Some(current) = current.filter(|c| *c != epoch) {
            // Another etcd cluster answers under the same endpoints: read afresh.
            let _ = current;
            return WatchEnd::Restart(Next::Snapshot);
        }
        let raw: Vec<RawEvent> = message
            .events()
            .iter()
            .filter_map(|event| {
                let kv = event.kv()?;
                let value = match event.event_type() {
                    etcd_client::EventType::Put => Some(kv.value().to_vec()),
                    etcd_client::EventType::Delete => None,
                };
                Some(RawEvent {
                    rev: kv.mod_revision(),
                    key: kv.key().to_vec(),
                    value,
                    prev: event.prev_kv().map(|prev| prev.value().to_vec()),
                })
            })
            .collect();
        if let Some(rev) = raw.iter().map(|e| e.rev).max() {
            last = last.max(rev);
        } else if let Some(header) = message.header() {
            // A progress notification: everything up to here was seen.
            last = last.max(header.revision());
        }
        if raw.is_empty() {
            continue;
        }
        let body = FeedBody::Events {
            epoch: epoch.clone(),
            raw,
        };
        if sink.send(FeedMsg { feed, body }).await.is_err() {
            return WatchEnd::Stopped;
        }
    }
}

fn epoch_of(cluster_id: u64) -> String {
    epoch(cluster_id)
}

fn timed_out(timeout: Duration) -> String {
    format!("no answer within {timeout:?}")
}

/// The epoch and revision of the etcd cluster, from a count-only read.
async fn header(client: Client, prefix: &str, timeout: Duration) -> Result<(String, i64), String> {
    let options = GetOptions::new().with_prefix().with_count_only();
    let response = get(&client, nodes_prefix(prefix).into_bytes(), options, timeout).await?;
    let header = response
        .header()
        .ok_or_else(|| "etcd answered without a header".to_string())?;
    Ok((epoch(header.cluster_id()), header.revision()))
}

/// Every key and value under the nodes folder, read page by page at one revision: the
/// epoch, that revision, and the entries (at most [`core::MAX_NODES`]).
pub async fn read_all(
    client: Client,
    prefix: &str,
    timeout: Duration,
) -> Result<(String, i64, Vec<(Vec<u8>, Vec<u8>)>), String> {
    let folder = nodes_prefix(prefix).into_bytes();
    let end = prefix_end(&folder);
    let mut from = folder.clone();
    let mut at: Option<(String, i64)> = None;
    let mut entries = Vec::new();
    loop {
        let mut options = GetOptions::new().with_range(end.clone()).with_limit(PAGE);
        if let Some((_, rev)) = &at {
            options = options.with_revision(*rev);
        }
        let mut response = get(&client, from.clone(), options, timeout).await?;
        if at.is_none() {
            let header = response
                .header()
                .ok_or_else(|| "etcd answered without a header".to_string())?;
            at = Some((epoch(header.cluster_id()), header.revision()));
        }
        let more = response.more();
        let kvs = response.take_kvs();
        let Some(last) = kvs.last().map(|kv| kv.key().to_vec()) else {
            break;
        };
        entries.extend(kvs.into_iter().map(|kv| kv.into_key_value()));
        if !more || entries.len() >= core::MAX_NODES {
            break;
        }
        from = last;
        from.push(0);
    }
    let (epoch, rev) = at.unwrap_or_default();
    Ok((epoch, rev, entries))
}

/// A call made again (every 50ms at first, then less often) until `timeout` when it fails:
/// with several endpoints, the client may first pick one that is down. Only for calls that
/// can be made twice without harm (reads, transactions that compare first, lease renewals).
async fn retried<T, F, Fut>(timeout: Duration, mut call: F) -> Result<T, String>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, etcd_client::Error>>,
{
    let deadline = tokio::time::Instant::now() + timeout;
    let mut pause = Duration::from_millis(50);
    loop {
        let why = match tokio::time::timeout_at(deadline, call()).await {
            Ok(Ok(answer)) => return Ok(answer),
            Ok(Err(err)) => err.to_string(),
            Err(_) => return Err(timed_out(timeout)),
        };
        if tokio::time::Instant::now() + pause >= deadline {
            return Err(why);
        }
        tokio::time::sleep(pause).await;
        pause = (pause * 2).min(Duration::from_millis(500));
    }
}

/// A range read of `key` with `options`, [`retried`].
async fn get(
    client: &Client,
    key: Vec<u8>,
    options: GetOptions,
    timeout: Duration,
) -> Result<etcd_client::GetResponse, String> {
    retried(timeout, || {
        let mut client = client.clone();
        let (key, options) = (key.clone(), options.clone());
        async move { client.get(key, Some(options)).await }
    })
    .await
}

/// Puts `value` under `key` with `lease` unless another lease holds the key: first as a
/// creation, then (the key exists) only if it is on this lease.
pub async fn claim(
    mut client: Client,
    key: String,
    value: Vec<u8>,
    lease: i64,
    timeout: Duration,
) -> Result<Claim, String> {
    let put = TxnOp::put(
        key.clone(),
        value.clone(),
        Some(PutOptions::new().with_lease(lease)),
    );
    let create = Txn::new()
        .when([Compare::create_revision(key.clone(), CompareOp::Equal, 0)])
        .and_then([put.clone()])
        .or_else([TxnOp::get(key.clone(), None)]);
    let response = run_txn(&mut client, create, timeout).await?;
    if response.0 {
        return Ok(Claim::Put);
    }
    let Some(holder) = response.1 else {
        return Err("the node's key changed while registering; trying again".into());
    };
    if !may_claim(holder, lease) {
        return Ok(Claim::HeldBy { lease: holder });
    }
    let update = Txn::new()
        .when([Compare::lease(key.clone(), CompareOp::Equal, lease)])
        .and_then([put])
        .or_else([TxnOp::get(key, None)]);
    match run_txn(&mut client, update, timeout).await? {
        (true, _) => Ok(Claim::Put),
        (false, Some(holder)) => Ok(Claim::HeldBy { lease: holder }),
        (false, None) => Err("the node's key changed while registering; trying again".into()),
    }
}

/// Runs `txn`: whether it succeeded, and the lease of the key its `else` branch read (when
/// the key exists).
async fn run_txn(
    client: &mut Client,
    txn: Txn,
    timeout: Duration,
) -> Result<(bool, Option<i64>), String> {
    let response = retried(timeout, || {
        let mut client = client.clone();
        let txn = txn.clone();
        async move { client.txn(txn).await }
    })
    .await?;
    if response.succeeded() {
        return Ok((true, None));
    }
    let holder = response.op_responses().into_iter().find_map(|op| match op {
        TxnOpResponse::Get(get) => get.kvs().first().map(|kv| kv.lease()),
        _ => None,
    });
    Ok((false, holder))
}

/// A lease's keep-alive stream.
type Keeper = (LeaseKeeper, LeaseKeepAliveStream);

/// Renews `lease` on `keeper`'s stream, or on a new one when there is none or it fails: the
/// TTL left, 0 when the lease is gone; and the stream to keep for the next renewal.
async fn keep_alive(
    client: Client,
    keeper: Option<Keeper>,
    lease: i64,
    timeout: Duration,
) -> (Result<i64, String>, Option<Keeper>) {
    if let Some((mut keeper, mut stream)) = keeper.filter(|(k, _)| k.id() == lease) {
        let renew = async {
            keeper.keep_alive().await?;
            stream.message().await
        };
        match tokio::time::timeout(timeout, renew).await {
            Ok(Ok(Some(response))) if response.ttl() > 0 => {
                return (Ok(response.ttl()), Some((keeper, stream)))
            }
            Ok(Ok(Some(_))) => return (Ok(0), None),
            // The stream broke (its member went, say): open another one.
            _ => {}
        }
    }
    let opened = retried(timeout, || {
        let mut client = client.clone();
        async move {
            match client.lease_keep_alive(lease).await {
                // etcd answered that the lease is gone.
                Err(etcd_client::Error::LeaseKeepAliveError(_)) => Ok(None),
                other => other.map(Some),
            }
        }
    });
    match opened.await {
        // Opening the stream renewed the lease once already.
        Ok(Some(keeper)) => (Ok(1), Some(keeper)),
        Ok(None) => (Ok(0), None),
        Err(why) => (Err(why), None),
    }
}

impl Handler<GetRequirements> for EtcdClient {
    type Result = ResponseFuture<Result<Requirements, ClientError>>;

    fn handle(&mut self, _: GetRequirements, _: &mut Self::Context) -> Self::Result {
        let node = self.core.settings().node.clone();
        let registering = self.core.settings().registration.is_some();
        if !registering {
            return Box::pin(async { Err(ClientError::NotRegistering) });
        }
        if let Some(answer) = self.core.mirrored_requirements(&node) {
            return Box::pin(async move { answer });
        }
        self.query(move |nodes| requirements_of(&node, &nodes))
    }
}

impl Handler<GetRequirementsOf> for EtcdClient {
    type Result = ResponseFuture<Result<Requirements, ClientError>>;

    fn handle(&mut self, of: GetRequirementsOf, _: &mut Self::Context) -> Self::Result {
        if let Some(answer) = self.core.mirrored_requirements(&of.0) {
            return Box::pin(async move { answer });
        }
        self.query(move |nodes| requirements_of(&of.0, &nodes))
    }
}

impl Handler<LookupResource> for EtcdClient {
    type Result = ResponseFuture<Result<Vec<Node>, ClientError>>;

    fn handle(&mut self, lookup: LookupResource, _: &mut Self::Context) -> Self::Result {
        if let Some(found) = self.core.mirrored_lookup(&lookup.0) {
            return Box::pin(async move { Ok(found) });
        }
        self.query(move |nodes| Ok(core::lookup(nodes, &lookup.0)))
    }
}

impl Handler<ListNodes> for EtcdClient {
    type Result = ResponseFuture<Result<Vec<Node>, ClientError>>;

    fn handle(&mut self, _: ListNodes, _: &mut Self::Context) -> Self::Result {
        if let Some(nodes) = self.core.mirrored() {
            let listed = nodes.into_iter().cloned().collect();
            return Box::pin(async move { Ok(listed) });
        }
        self.query(|nodes| Ok(nodes.into_iter().cloned().collect()))
    }
}

impl Handler<AwaitRequirements> for EtcdClient {
    type Result = ResponseFuture<Result<Requirements, ClientError>>;

    fn handle(&mut self, wait: AwaitRequirements, _: &mut Self::Context) -> Self::Result {
        let token = self.token();
        match self
            .core
            .await_requirements(token, Instant::now() + wait.timeout)
        {
            Ok(actions) => {
                let (tx, rx) = oneshot::channel();
                self.awaiting.insert(token, tx);
                self.apply(actions);
                Box::pin(async move { rx.await.unwrap_or(Err(ClientError::Stopped)) })
            }
            Err(err) => Box::pin(async move { Err(err) }),
        }
    }
}

impl Handler<Subscribe> for EtcdClient {
    type Result = Result<SubscriptionId, ClientError>;

    fn handle(&mut self, subscribe: Subscribe, ctx: &mut Self::Context) -> Self::Result {
        if self.subscribers.len() >= MAX_SUBSCRIPTIONS {
            return Err(ClientError::Busy(MAX_SUBSCRIPTIONS));
        }
        for resource in &subscribe.resources {
            troupe_beacon::protocol::check_name("resource", resource)
                .map_err(|err| ClientError::Invalid(err.to_string()))?;
        }
        let id = SubscriptionId(self.token());
        let task = actix_rt::spawn(follow(
            self.clients.subscribe(),
            self.core.settings().prefix.clone(),
            subscribe.since,
            self.core.settings().heartbeat,
            self.connection.timeout,
            ctx.address().recipient(),
            Feed::Subscription(id),
        ));
        self.subscribers.insert(
            id,
            Subscriber {
                resources: subscribe.resources,
                recipient: subscribe.recipient,
                task,
            },
        );
        Ok(id)
    }
}

impl Handler<Unsubscribe> for EtcdClient {
    type Result = ();

    fn handle(&mut self, unsubscribe: Unsubscribe, _: &mut Self::Context) {
        if let Some(subscriber) = self.subscribers.remove(&unsubscribe.0) {
            subscriber.task.abort();
        }
    }
}

impl EtcdClient {
    /// Applies a change of what the node offers (`action` on `resource`): the actions it
    /// leads to, and the registration put at once.
    fn change(
        &mut self,
        ctx: &mut Context<Self>,
        (action, resource): (&str, &str),
        changed: Result<Vec<Action>, ClientError>,
    ) -> Result<(), String> {
        let actions = changed.map_err(|err| refusal(action, resource, err))?;
        self.apply(actions);
        self.step(ctx);
        Ok(())
    }
}

impl Handler<Offer> for EtcdClient {
    type Result = Result<(), String>;

    fn handle(&mut self, offer: Offer, ctx: &mut Self::Context) -> Self::Result {
        let changed = self
            .core
            .offer(Instant::now(), &offer.resource, offer.endpoints);
        self.change(ctx, ("offer", &offer.resource), changed)
    }
}

impl Handler<Withdraw> for EtcdClient {
    type Result = Result<(), String>;

    fn handle(&mut self, withdraw: Withdraw, ctx: &mut Self::Context) -> Self::Result {
        let changed = self
            .core
            .withdraw(Instant::now(), &withdraw.resource, &withdraw.names);
        self.change(ctx, ("withdraw", &withdraw.resource), changed)
    }
}

impl Handler<WatchProviders> for EtcdClient {
    type Result = Result<WatchId, String>;

    fn handle(&mut self, watch: WatchProviders, _: &mut Self::Context) -> Self::Result {
        let id = WatchId(self.token());
        match self.core.watch_providers(id, watch.resources) {
            Ok(actions) => {
                self.watchers.insert(id, watch.recipient);
                self.apply(actions);
                Ok(id)
            }
            Err(why) => Err(why),
        }
    }
}

impl Handler<Unwatch> for EtcdClient {
    type Result = ();

    fn handle(&mut self, unwatch: Unwatch, _: &mut Self::Context) {
        if self.watchers.remove(&unwatch.0).is_some() {
            self.core.unwatch_providers(unwatch.0);
        }
    }
}

impl Handler<Leave> for EtcdClient {
    type Result = ResponseActFuture<Self, ()>;

    fn handle(&mut self, leave: Leave, _: &mut Self::Context) -> Self::Result {
        let lease = self.core.lease();
        let client = self.client.clone();
        let fut = async move {
            if let (Some(lease), Some(mut client)) = (lease, client) {
                match tokio::time::timeout(leave.0, client.lease_revoke(lease)).await {
                    Ok(Ok(_)) => tracing::info!("deregistered from etcd (lease revoked)"),
                    Ok(Err(err)) => tracing::warn!(
                        error = %err,
                        "could not revoke the lease; the registration goes when its TTL runs out"
                    ),
                    Err(_) => tracing::warn!(
                        "etcd did not answer the deregistration in time; the registration goes when its TTL runs out"
                    ),
                }
            }
        };
        Box::pin(fut.into_actor(self).map(|_, actor, _| actor.core.left()))
    }
}

impl Handler<Shutdown> for EtcdClient {
    type Result = ();

    fn handle(&mut self, _: Shutdown, ctx: &mut Self::Context) {
        ctx.stop();
    }
}

impl Handler<GetStatus> for EtcdClient {
    type Result = MessageResult<GetStatus>;

    fn handle(&mut self, _: GetStatus, _: &mut Self::Context) -> Self::Result {
        MessageResult(self.core.status(Instant::now(), self.subscribers.len()))
    }
}
