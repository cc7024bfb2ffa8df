//! The cluster client actor: owns the [`ClientCore`], drives it with a tick and the frames from
//! the socket thread, and keeps the callers waiting for answers.

use std::collections::{HashMap, VecDeque};
use std::time::{Duration, Instant};

use actix::prelude::*;
use tokio::sync::oneshot;
use troupe_core::zmq_thread::{CommandSender, SendError};
use troupe_core::Shutdown;

use crate::client::core::{Action, Answer, ClientCore, OfferChanges, Query, MAX_PENDING};
use crate::client::socket::{Frames, LinkEvent, SocketAction, ToDealers};
use crate::client::{
    AwaitRequirements, ClientError, ClusterEvent, GetRequirements, GetRequirementsOf, GetStatus,
    ListNodes, LookupResource, Offer, ProvidersChanged, Requirements, Subscribe, SubscriptionId,
    Unsubscribe, Unwatch, WatchId, WatchProviders, Withdraw,
};
use crate::log_limit::LogLimiter;
use crate::protocol::Node;

/// The cluster client actor. See the [module docs](crate::client) for its messages.
pub struct BeaconClient {
    core: ClientCore,
    socket: CommandSender<ToDealers>,
    answers: HashMap<u64, oneshot::Sender<Result<Answer, ClientError>>>,
    awaiting: HashMap<u64, oneshot::Sender<Result<Requirements, ClientError>>>,
    subscribers: HashMap<SubscriptionId, Recipient<ClusterEvent>>,
    watchers: HashMap<WatchId, Recipient<ProvidersChanged>>,
    left: Vec<oneshot::Sender<()>>,
    next_token: u64,
    tick: Duration,
    /// Batches answered whose acknowledgement the socket thread has not received yet.
    unsent_acks: usize,
    /// Commands the socket thread's full queue refused, and their log lines' limit.
    bridge_full: u64,
    bridge_full_log: LogLimiter,
}

impl BeaconClient {
    pub(crate) fn new(core: ClientCore, socket: CommandSender<ToDealers>) -> Self {
        BeaconClient {
            core,
            socket,
            answers: HashMap::new(),
            awaiting: HashMap::new(),
            subscribers: HashMap::new(),
            watchers: HashMap::new(),
            left: Vec::new(),
            next_token: 1,
            tick: Duration::from_millis(50),
            unsent_acks: 0,
            bridge_full: 0,
            bridge_full_log: LogLimiter::default(),
        }
    }

    fn token(&mut self) -> u64 {
        self.next_token += 1;
        self.next_token
    }

    /// Carries out the core's actions; `answers_batch` when they answer a batch of frames.
    /// Subscribers and provider watchers that are gone are dropped on the way.
    fn apply(&mut self, actions: Vec<Action>, answers_batch: bool) {
        let mut socket_actions = Vec::new();
        let mut actions = VecDeque::from(actions);
        while let Some(action) = actions.pop_front() {
            match action {
                Action::Send { link, frame } => {
                    socket_actions.push(SocketAction::Send { link, frame })
                }
                Action::Reset { link } => socket_actions.push(SocketAction::Reset { link }),
                Action::Answer { token, result } => {
                    if let Some(caller) = self.answers.remove(&token) {
                        let _ = caller.send(result);
                    }
                }
                Action::Awaited { token, result } => {
                    if let Some(caller) = self.awaiting.remove(&token) {
                        let _ = caller.send(result);
                    }
                }
                Action::Deliver {
                    subscription,
                    event,
                } => match self.subscribers.get(&subscription) {
                    Some(recipient) if recipient.connected() => recipient.do_send(event),
                    _ => {
                        if self.subscribers.remove(&subscription).is_some() {
                            actions.extend(self.core.unsubscribe(subscription));
                        }
                    }
                },
                Action::Providers { watch, changed } => match self.watchers.get(&watch) {
                    Some(recipient) if recipient.connected() => recipient.do_send(changed),
                    _ => {
                        if self.watchers.remove(&watch).is_some() {
                            actions.extend(self.core.unwatch_providers(Instant::now(), watch));
                        }
                    }
                },
                Action::Left => {
                    for caller in self.left.drain(..) {
                        let _ = caller.send(());
                    }
                }
            }
        }
        let answered_batches = self.unsent_acks + usize::from(answers_batch);
        if !socket_actions.is_empty() || answered_batches > 0 {
            let command = ToDealers::Run {
                actions: socket_actions,
                answered_batches,
            };
            match self.socket.send(command) {
                Ok(()) => self.unsent_acks = 0,
                Err(SendError::Stopped(_)) => {
                    tracing::error!("the cluster client's socket thread has stopped")
                }
                Err(SendError::Full(waiting, _)) => {
                    // Frames lost here are like frames a beacon never got: requests time out
                    // and a silent beacon's connection is rebuilt, as after any loss.
                    self.unsent_acks = answered_batches;
                    self.bridge_full += 1;
                    if let Some(suppressed) = self.bridge_full_log.allow(Instant::now()) {
                        tracing::error!(
                            waiting,
                            refused = self.bridge_full,
                        suppressed,
                            "the cluster client's socket thread is not keeping up; frames to the beacons are dropped"
                        );
                    }
                }
            }
        }
    }

    fn ask(&mut self, query: Query) -> oneshot::Receiver<Result<Answer, ClientError>> {
        let (tx, rx) = oneshot::channel();
        if self.answers.len() >= MAX_PENDING {
            let _ = tx.send(Err(ClientError::Busy(MAX_PENDING)));
            return rx;
        }
        let token = self.token();
        self.answers.insert(token, tx);
        let actions = self.core.query(Instant::now(), token, query);
        self.apply(actions, false);
        rx
    }
}

impl Actor for BeaconClient {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Self::Context) {
        let actions = self.core.start(Instant::now());
        self.apply(actions, false);
        ctx.run_interval(self.tick, |actor, _| {
            let actions = actor.core.tick(Instant::now());
            actor.apply(actions, false);
        });
    }

    fn stopped(&mut self, _: &mut Self::Context) {
        let _ = self.socket.send(ToDealers::Stop);
    }
}

impl Handler<Frames> for BeaconClient {
    type Result = ();

    fn handle(&mut self, frames: Frames, _: &mut Self::Context) {
        let now = Instant::now();
        let mut actions = Vec::new();
        for (link, event) in frames.0 {
            actions.extend(match event {
                LinkEvent::Frame(frame) => self.core.received(now, link, &frame),
                LinkEvent::Connected => self.core.connected(now, link),
                LinkEvent::Disconnected => self.core.disconnected(now, link),
            });
        }
        self.apply(actions, true);
    }
}

async fn requirements(
    rx: oneshot::Receiver<Result<Answer, ClientError>>,
) -> Result<Requirements, ClientError> {
    match rx.await {
        Ok(Ok(Answer::Requirements(requirements))) => Ok(requirements),
        Ok(Ok(Answer::Nodes(_))) => Err(ClientError::Unexpected),
        Ok(Err(err)) => Err(err),
        Err(_) => Err(ClientError::Stopped),
    }
}

async fn nodes(
    rx: oneshot::Receiver<Result<Answer, ClientError>>,
) -> Result<Vec<Node>, ClientError> {
    match rx.await {
        Ok(Ok(Answer::Nodes(nodes))) => Ok(nodes),
        Ok(Ok(Answer::Requirements(_))) => Err(ClientError::Unexpected),
        Ok(Err(err)) => Err(err),
        Err(_) => Err(ClientError::Stopped),
    }
}

impl Handler<GetRequirements> for BeaconClient {
    type Result = ResponseFuture<Result<Requirements, ClientError>>;

    fn handle(&mut self, _: GetRequirements, _: &mut Self::Context) -> Self::Result {
        let node = self.core.node().to_string();
        Box::pin(requirements(self.ask(Query::Requirements(node))))
    }
}

impl Handler<GetRequirementsOf> for BeaconClient {
    type Result = ResponseFuture<Result<Requirements, ClientError>>;

    fn handle(&mut self, of: GetRequirementsOf, _: &mut Self::Context) -> Self::Result {
        Box::pin(requirements(self.ask(Query::Requirements(of.0))))
    }
}

impl Handler<LookupResource> for BeaconClient {
    type Result = ResponseFuture<Result<Vec<Node>, ClientError>>;

    fn handle(&mut self, lookup: LookupResource, _: &mut Self::Context) -> Self::Result {
        Box::pin(nodes(self.ask(Query::Lookup(lookup.0))))
    }
}

impl Handler<ListNodes> for BeaconClient {
    type Result = ResponseFuture<Result<Vec<Node>, ClientError>>;

    fn handle(&mut self, _: ListNodes, _: &mut Self::Context) -> Self::Result {
        Box::pin(nodes(self.ask(Query::List)))
    }
}

impl Handler<AwaitRequirements> for BeaconClient {
    type Result = ResponseFuture<Result<Requirements, ClientError>>;

    fn handle(&mut self, wait: AwaitRequirements, _: &mut Self::Context) -> Self::Result {
        let (tx, rx) = oneshot::channel();
        let token = self.token();
        self.awaiting.insert(token, tx);
        let actions = self
            .core
            .await_requirements(Instant::now(), token, wait.timeout);
        self.apply(actions, false);
        Box::pin(async move { rx.await.unwrap_or(Err(ClientError::Stopped)) })
    }
}

impl Handler<Subscribe> for BeaconClient {
    type Result = Result<SubscriptionId, ClientError>;

    fn handle(&mut self, subscribe: Subscribe, _: &mut Self::Context) -> Self::Result {
        let id = SubscriptionId(self.token());
        let actions =
            self.core
                .subscribe(Instant::now(), id, subscribe.resources, subscribe.since)?;
        self.subscribers.insert(id, subscribe.recipient);
        self.apply(actions, false);
        Ok(id)
    }
}

impl Handler<Unsubscribe> for BeaconClient {
    type Result = ();

    fn handle(&mut self, unsubscribe: Unsubscribe, _: &mut Self::Context) {
        if self.subscribers.remove(&unsubscribe.0).is_some() {
            let actions = self.core.unsubscribe(unsubscribe.0);
            self.apply(actions, false);
        }
    }
}

/// The sentence a role is answered with when the client refuses a change of what the node
/// offers (either backend).
pub fn refusal(action: &str, resource: &str, err: ClientError) -> String {
    match err {
        ClientError::Invalid(why) => format!("cannot {action} \"{resource}\": {why}"),
        ClientError::NotRegistering => format!(
            "cannot {action} \"{resource}\": this cluster client registers no node (it only asks questions)"
        ),
        other => format!("cannot {action} \"{resource}\": {other}"),
    }
}

/// The sentence a role is answered with when the client refuses a provider watch (either
/// backend).
pub fn watch_refusal(err: ClientError) -> String {
    match err {
        ClientError::Invalid(why) => why,
        other => other.to_string(),
    }
}

impl Handler<Offer> for BeaconClient {
    type Result = Result<(), String>;

    fn handle(&mut self, offer: Offer, _: &mut Self::Context) -> Self::Result {
        let actions = self
            .core
            .offer(Instant::now(), &offer.resource, offer.endpoints)
            .map_err(|err| refusal("offer", &offer.resource, err))?;
        self.apply(actions, false);
        Ok(())
    }
}

impl Handler<Withdraw> for BeaconClient {
    type Result = Result<(), String>;

    fn handle(&mut self, withdraw: Withdraw, _: &mut Self::Context) -> Self::Result {
        let actions = self
            .core
            .withdraw(Instant::now(), &withdraw.resource, &withdraw.names)
            .map_err(|err| refusal("withdraw", &withdraw.resource, err))?;
        self.apply(actions, false);
        Ok(())
    }
}

impl Handler<WatchProviders> for BeaconClient {
    type Result = Result<WatchId, String>;

    fn handle(&mut self, watch: WatchProviders, _: &mut Self::Context) -> Self::Result {
        let id = WatchId(self.token());
        let actions = self
            .core
            .watch_providers(Instant::now(), id, watch.resources)
            .map_err(watch_refusal)?;
        self.watchers.insert(id, watch.recipient);
        self.apply(actions, false);
        Ok(id)
    }
}

impl Handler<Unwatch> for BeaconClient {
    type Result = ();

    fn handle(&mut self, unwatch: Unwatch, _: &mut Self::Context) {
        if self.watchers.remove(&unwatch.0).is_some() {
            let actions = self.core.unwatch_providers(Instant::now(), unwatch.0);
            self.apply(actions, false);
        }
    }
}

/// Deregisters the node (from every beacon, or from etcd), waiting at most the given time
/// for the answers.
#[derive(Debug, Clone, Copy, Message)]
#[rtype(result = "()")]
pub struct Leave(pub Duration);

impl Handler<Leave> for BeaconClient {
    type Result = ResponseFuture<()>;

    fn handle(&mut self, leave: Leave, _: &mut Self::Context) -> Self::Result {
        let (tx, rx) = oneshot::channel();
        self.left.push(tx);
        let now = Instant::now();
        let actions = self.core.leave(now + leave.0);
        self.apply(actions, false);
        Box::pin(async move {
            let _ = rx.await;
        })
    }
}

impl Handler<Shutdown> for BeaconClient {
    type Result = ();

    fn handle(&mut self, _: Shutdown, ctx: &mut Self::Context) {
        ctx.stop();
    }
}

impl Handler<GetStatus> for BeaconClient {
    type Result = MessageResult<GetStatus>;

    fn handle(&mut self, _: GetStatus, _: &mut Self::Context) -> Self::Result {
        MessageResult(self.core.status(Instant::now()))
    }
}
