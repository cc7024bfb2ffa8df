//! The cluster client: the actor every node whose `[cluster]` table names beacons (or uses
//! etcd) runs, so that the node is registered, heartbeats, and its roles can ask the cluster
//! questions.
//!
//! The node starts it before its roles (as the internal role `cluster`, see
//! [`ClusterClient`]) and publishes a [`ClusterClientHandle`], so a role finds it with
//! `ctx.published.lookup::<ClusterClientHandle>()` whichever backend runs: the beacons'
//! [`BeaconClient`] here, or the etcd client of the `troupe-etcd` crate, which a binary built
//! with it installs with [`install_etcd_backend`]. The messages it answers:
//!
//! | message | answer |
//! |---|---|
//! | [`GetRequirements`] | this node's requirements, each with its online providers |
//! | [`GetRequirementsOf`] | the same for another node |
//! | [`LookupResource`] | the online nodes offering a resource |
//! | [`ListNodes`] | every node, online and offline |
//! | [`AwaitRequirements`] | waits until every requirement has an online provider |
//! | [`Subscribe`] / [`Unsubscribe`] | [`ClusterEvent`]s for some resources, to a `Recipient` |
//! | [`GetStatus`] | what the client knows: registration, beacons up or down |
//!
//! and the [`troupe_core::cluster`] contract, which the node also publishes as a
//! [`ClusterHandle`] for roles that do not depend on this crate:
//!
//! | message | answer |
//! |---|---|
//! | [`Offer`] / [`Withdraw`] | change what this node offers, resource by resource |
//! | [`WatchProviders`] / [`Unwatch`] | [`ProvidersChanged`] for some resources, to a `Recipient` |
//!
//! A node offers one resource per role it runs (named after the role) and those declared in
//! `[cluster] resources`; roles add their endpoints with [`Offer`] once their sockets are open.

pub(crate) mod actor;
pub mod config;
pub mod core;
pub mod providers;
pub(crate) mod socket;

use std::collections::BTreeSet;
use std::future::Future;
use std::pin::Pin;
use std::sync::OnceLock;
use std::time::Duration;

use actix::prelude::*;
use tokio::sync::oneshot;
pub use troupe_core::cluster::{
    ClusterHandle, Offer, Provider, ProvidersChanged, Unwatch, WatchId, WatchProviders, Withdraw,
};
use troupe_core::{span, zmq_thread, ConfigError, Role, RoleContext, RoleError, Shutdown};

pub use actor::{refusal, watch_refusal, BeaconClient, Leave};
pub use config::{Backend, ClusterConfig, EtcdCredentials};
pub use core::{BeaconStatus, ClientStatus};
pub use providers::MAX_PROVIDER_WATCHES;

use crate::protocol::{ErrorCode, Event, Node, Offers, Position, Registration};
use core::{ClientCore, ClientSettings};

/// Names one subscription of one client.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct SubscriptionId(pub u64);

/// A node's requirements and who offers them.
#[derive(Debug, Clone, PartialEq)]
pub struct Requirements {
    /// The node asked about.
    pub node: String,
    /// For each requirement, its online providers (possibly none).
    pub offers: Offers,
    /// Requirements with no online provider.
    pub unmet: Vec<String>,
}

/// What a subscriber receives.
#[derive(Debug, Clone, PartialEq, Message)]
#[rtype(result = "()")]
pub enum ClusterEvent {
    /// Every watched node as it is now. The first event of a subscription, and again when the
    /// subscription moved to another beacon or fell too far behind: replace what you knew.
    Snapshot {
        /// The beacon that sent it.
        beacon: String,
        /// Where the snapshot stands; changes follow from here.
        position: Position,
        /// The watched nodes, online and offline.
        nodes: Vec<Node>,
    },
    /// One change, in order.
    Change {
        /// The beacon that sent it.
        beacon: String,
        /// That beacon's run.
        epoch: String,
        /// The change.
        event: Event,
    },
}

impl ClusterEvent {
    /// Where this event leaves the subscription: resume from here with [`Subscribe::since`].
    pub fn position(&self) -> Position {
        match self {
            ClusterEvent::Snapshot { position, .. } => position.clone(),
            ClusterEvent::Change { epoch, event, .. } => Position {
                epoch: epoch.clone(),
                rev: event.rev,
            },
        }
    }
}

/// Why the client could not answer.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum ClientError {
    /// No beacon was ready to answer in time.
    #[error("no beacon answered within {0:?} (are the [cluster] beacons running and reachable?)")]
    NoBeacon(Duration),
    /// The etcd cluster could not be reached (or refused the request): the sentence says why.
    #[error("etcd is unreachable: {0}")]
    Unreachable(String),
    /// The last beacon tried did not answer in time.
    #[error("no beacon answered within {0:?}")]
    Timeout(Duration),
    /// The beacon answered with an error.
    #[error("the beacon refused: {code}: {message}")]
    Refused {
        /// The error code.
        code: ErrorCode,
        /// The beacon's sentence.
        message: String,
    },
    /// `await_requirements` timed out with these requirements still unmet.
    #[error("requirements still unmet: {}", .0.join(", "))]
    Unmet(Vec<String>),
    /// A value given to the client breaks a rule.
    #[error("invalid input: {0}")]
    Invalid(String),
    /// Too many callers are waiting; the limit is given.
    #[error("too many requests waiting (at most {0})")]
    Busy(usize),
    /// This client registers no node (it was started to ask questions only).
    #[error("this client registers no node")]
    NotRegistering,
    /// The beacon answered with a message of the wrong kind.
    #[error("the beacon answered with an unexpected message")]
    Unexpected,
    /// The client has stopped.
    #[error("the cluster client has stopped")]
    Stopped,
}

/// This node's requirements, each with its online providers.
#[derive(Debug, Clone, Message)]
#[rtype(result = "Result<Requirements, ClientError>")]
pub struct GetRequirements;

/// Another node's requirements, each with its online providers.
#[derive(Debug, Clone, Message)]
#[rtype(result = "Result<Requirements, ClientError>")]
pub struct GetRequirementsOf(pub String);

/// The online nodes offering a resource, sorted by name, each projected onto it: its
/// `resource` is that one and its `endpoints` are those it offers for it.
#[derive(Debug, Clone, Message)]
#[rtype(result = "Result<Vec<Node>, ClientError>")]
pub struct LookupResource(pub String);

/// Every registered node, online and offline, sorted by name.
#[derive(Debug, Clone, Message)]
#[rtype(result = "Result<Vec<Node>, ClientError>")]
pub struct ListNodes;

/// Waits until every requirement of this node has an online provider — instead of failing
/// while a provider is still starting. Answers the requirements once met, or
/// [`ClientError::Unmet`] after `timeout`.
#[derive(Debug, Clone, Message)]
#[rtype(result = "Result<Requirements, ClientError>")]
pub struct AwaitRequirements {
    /// How long to wait at most.
    pub timeout: Duration,
}

/// Subscribes `recipient` to changes of `resources` (every resource when empty). The first
/// event is a [`ClusterEvent::Snapshot`] (or, with `since`, the changes missed since then).
#[derive(Message)]
#[rtype(result = "Result<SubscriptionId, ClientError>")]
pub struct Subscribe {
    /// Resources to watch; empty for all.
    pub resources: Vec<String>,
    /// Resume after this position (from an earlier [`ClusterEvent::position`]).
    pub since: Option<Position>,
    /// Who receives the events.
    pub recipient: Recipient<ClusterEvent>,
}

/// Ends a subscription.
#[derive(Debug, Clone, Message)]
#[rtype(result = "()")]
pub struct Unsubscribe(pub SubscriptionId);

/// What the client knows now: registration, beacons up or down, requirements as last seen.
/// Answered from the client's state, without asking a beacon.
#[derive(Debug, Clone, Message)]
#[rtype(result = "ClientStatus")]
pub struct GetStatus;

/// The cluster client of whichever backend runs, as roles and tools reach it: one
/// [`Recipient`] per message of the [module docs](self). The node publishes it; a tool gets it
/// from [`start_client`].
#[derive(Clone)]
pub struct ClusterClientHandle {
    /// The backend behind it.
    pub backend: Backend,
    /// Where [`GetRequirements`] go.
    pub requirements: Recipient<GetRequirements>,
    /// Where [`GetRequirementsOf`] go.
    pub requirements_of: Recipient<GetRequirementsOf>,
    /// Where [`LookupResource`]s go.
    pub lookup: Recipient<LookupResource>,
    /// Where [`ListNodes`] go.
    pub list: Recipient<ListNodes>,
    /// Where [`AwaitRequirements`] go.
    pub await_requirements: Recipient<AwaitRequirements>,
    /// Where [`Subscribe`]s go.
    pub subscribe: Recipient<Subscribe>,
    /// Where [`Unsubscribe`]s go.
    pub unsubscribe: Recipient<Unsubscribe>,
    /// Where [`GetStatus`] goes.
    pub status: Recipient<GetStatus>,
    /// Where [`Offer`]s go.
    pub offer: Recipient<Offer>,
    /// Where [`Withdraw`]s go.
    pub withdraw: Recipient<Withdraw>,
    /// Where [`WatchProviders`] go.
    pub watch: Recipient<WatchProviders>,
    /// Where [`Unwatch`]es go.
    pub unwatch: Recipient<Unwatch>,
    /// Where [`Leave`] goes: deregister the node before stopping.
    pub leave: Recipient<Leave>,
    /// Where [`Shutdown`] goes: stop the client.
    pub shutdown: Recipient<Shutdown>,
}

impl ClusterClientHandle {
    /// The handle of an actor that answers every message of the client.
    pub fn of<A>(backend: Backend, actor: &Addr<A>) -> Self
    where
        A: Actor<Context = Context<A>>
            + Handler<GetRequirements>
            + Handler<GetRequirementsOf>
            + Handler<LookupResource>
            + Handler<ListNodes>
            + Handler<AwaitRequirements>
            + Handler<Subscribe>
            + Handler<Unsubscribe>
            + Handler<GetStatus>
            + Handler<Offer>
            + Handler<Withdraw>
            + Handler<WatchProviders>
            + Handler<Unwatch>
            + Handler<Leave>
            + Handler<Shutdown>,
    {
        ClusterClientHandle {
            backend,
            requirements: actor.clone().recipient(),
            requirements_of: actor.clone().recipient(),
            lookup: actor.clone().recipient(),
            list: actor.clone().recipient(),
            await_requirements: actor.clone().recipient(),
            subscribe: actor.clone().recipient(),
            unsubscribe: actor.clone().recipient(),
            status: actor.clone().recipient(),
            offer: actor.clone().recipient(),
            withdraw: actor.clone().recipient(),
            watch: actor.clone().recipient(),
            unwatch: actor.clone().recipient(),
            leave: actor.clone().recipient(),
            shutdown: actor.clone().recipient(),
        }
    }

    /// The [`troupe_core::cluster`] contract of this client, for the node's roles.
    pub fn cluster_handle(&self, config: &ClusterConfig) -> ClusterHandle {
        ClusterHandle {
            offer: self.offer.clone(),
            withdraw: self.withdraw.clone(),
            watch: self.watch.clone(),
            unwatch: self.unwatch.clone(),
            beacons: config.beacons.iter().map(|b| b.to_string()).collect(),
            cookie_file: (!config.cookie_file.as_os_str().is_empty())
                .then(|| config.cookie_file.clone()),
            cluster: (config.backend == Backend::Etcd)
                .then(|| serde_json::to_string(&config.for_services()).ok())
                .flatten(),
        }
    }
}

/// The recipient of a [`ClusterClientHandle`] for message `M`: what lets
/// [`ClusterClientHandle::send`] take any message of the client.
pub trait Route<M>
where
    M: Message + Send,
    M::Result: Send,
{
    /// The recipient of `M`.
    fn recipient(&self) -> &Recipient<M>;
}

impl ClusterClientHandle {
    /// Sends `msg` to the client and waits for the answer, like `Addr::send`.
    pub fn send<M>(&self, msg: M) -> actix::dev::RecipientRequest<M>
    where
        M: Message + Send + 'static,
        M::Result: Send,
        Self: Route<M>,
    {
        self.recipient().send(msg)
    }

    /// Sends `msg` to the client without waiting, like `Addr::do_send`.
    pub fn do_send<M>(&self, msg: M)
    where
        M: Message + Send + 'static,
        M::Result: Send,
        Self: Route<M>,
    {
        self.recipient().do_send(msg)
    }
}

impl Route<GetRequirements> for ClusterClientHandle {
    fn recipient(&self) -> &Recipient<GetRequirements> {
        &self.requirements
    }
}

impl Route<GetRequirementsOf> for ClusterClientHandle {
    fn recipient(&self) -> &Recipient<GetRequirementsOf> {
        &self.requirements_of
    }
}

impl Route<LookupResource> for ClusterClientHandle {
    fn recipient(&self) -> &Recipient<LookupResource> {
        &self.lookup
    }
}

impl Route<ListNodes> for ClusterClientHandle {
    fn recipient(&self) -> &Recipient<ListNodes> {
        &self.list
    }
}

impl Route<AwaitRequirements> for ClusterClientHandle {
    fn recipient(&self) -> &Recipient<AwaitRequirements> {
        &self.await_requirements
    }
}

impl Route<Subscribe> for ClusterClientHandle {
    fn recipient(&self) -> &Recipient<Subscribe> {
        &self.subscribe
    }
}

impl Route<Unsubscribe> for ClusterClientHandle {
    fn recipient(&self) -> &Recipient<Unsubscribe> {
        &self.unsubscribe
    }
}

impl Route<GetStatus> for ClusterClientHandle {
    fn recipient(&self) -> &Recipient<GetStatus> {
        &self.status
    }
}

impl Route<Offer> for ClusterClientHandle {
    fn recipient(&self) -> &Recipient<Offer> {
        &self.offer
    }
}

impl Route<Withdraw> for ClusterClientHandle {
    fn recipient(&self) -> &Recipient<Withdraw> {
        &self.withdraw
    }
}

impl Route<WatchProviders> for ClusterClientHandle {
    fn recipient(&self) -> &Recipient<WatchProviders> {
        &self.watch
    }
}

impl Route<Unwatch> for ClusterClientHandle {
    fn recipient(&self) -> &Recipient<Unwatch> {
        &self.unwatch
    }
}

impl Route<Leave> for ClusterClientHandle {
    fn recipient(&self) -> &Recipient<Leave> {
        &self.leave
    }
}

impl Route<Shutdown> for ClusterClientHandle {
    fn recipient(&self) -> &Recipient<Shutdown> {
        &self.shutdown
    }
}

/// A started client: its handle, and a receiver that fires once it has released what it held
/// (its socket thread, its connections).
pub type StartedClient = (ClusterClientHandle, oneshot::Receiver<()>);

/// What a client registers: the registration and the base resources (see
/// [`ClientSettings::base_resources`]); `None` for a client that only asks.
pub type ToRegister = Option<(Registration, BTreeSet<String>)>;

/// Starts a client of another backend on the current arbiter: `(config, node, to_register)`.
pub type BackendStarter = fn(
    ClusterConfig,
    String,
    ToRegister,
) -> Pin<Box<dyn Future<Output = Result<StartedClient, RoleError>>>>;

static ETCD_BACKEND: OnceLock<BackendStarter> = OnceLock::new();

/// Makes `backend = "etcd"` available in this process (the `troupe` binary built with the
/// `etcd` feature calls it first thing). Later calls change nothing.
pub fn install_etcd_backend(start: BackendStarter) {
    let _ = ETCD_BACKEND.set(start);
}

/// Whether [`install_etcd_backend`] was called.
pub fn etcd_backend_installed() -> bool {
    ETCD_BACKEND.get().is_some()
}

/// The error of a config that asks for etcd in a binary built without it.
pub fn etcd_missing() -> ConfigError {
    ConfigError::new(
        "backend",
        "\"etcd\" is not available: this troupe was built without etcd support; build it with `cargo build --release --features etcd` (needs protoc, Debian's protobuf-compiler)",
    )
}

/// The cluster client as the node runs it: the internal role `cluster`, started before the
/// node's roles and stopped after them. Users never list it in `roles`; it runs when the
/// `[cluster]` table names beacons or uses etcd.
pub struct ClusterClient {
    client: ClusterClientHandle,
    done: oneshot::Receiver<()>,
    leave_within: Duration,
}

impl Role for ClusterClient {
    const NAME: &'static str = ClusterConfig::TABLE;
    type Config = ClusterConfig;

    fn validate(config: &ClusterConfig) -> Result<(), ConfigError> {
        config.validate()?;
        if config.backend == Backend::Etcd && !etcd_backend_installed() {
            return Err(etcd_missing());
        }
        Ok(())
    }

    async fn start(config: ClusterConfig, ctx: RoleContext) -> Result<Self, RoleError> {
        let roles: Vec<String> = match ctx.config.get("roles").and_then(|r| r.as_array()) {
            Some(roles) => roles
                .iter()
                .filter_map(|r| r.as_str().map(str::to_string))
                .collect(),
            None => ctx.roles.to_vec(),
        };
        let (client, done) = start_node_client(&config, &ctx.node, &roles).await?;
        ctx.published.publish(client.clone());
        ctx.published.publish(client.cluster_handle(&config));
        let resources = config
            .registration(&roles)
            .map(|r| r.offers.keys().cloned().collect::<Vec<_>>().join(" "))
            .unwrap_or_default();
        tracing::info!(
            backend = config.backend.as_str(),
            at = %config.targets().join(" "),
            %resources,
            requires = %config.requires.join(" "),
            "cluster client started"
        );
        Ok(ClusterClient {
            client,
            done,
            leave_within: config.request_timeout.get(),
        })
    }

    async fn stop(self) {
        let _ = self.client.leave.send(Leave(self.leave_within)).await;
        let _ = self.client.shutdown.send(Shutdown).await;
        let _ = self.done.await;
    }
}

/// Starts a client for `config` (its beacons, or etcd) on the current arbiter, as node `node`.
/// With `register`, it registers the node, offering the resources `config` declares (see
/// [`start_node_client`] for a node that runs roles); without, it only asks questions (and
/// follows providers).
pub async fn start_client(
    config: &ClusterConfig,
    node: &str,
    register: bool,
) -> Result<StartedClient, RoleError> {
    if !register {
        return start(config, node, None).await;
    }
    start_node_client(config, node, &[]).await
}

/// Starts the client of a node that runs `roles` (in start order): it registers the node,
/// offering one resource per role and those `config` declares ([`ClusterConfig::registration`]).
pub async fn start_node_client(
    config: &ClusterConfig,
    node: &str,
    roles: &[String],
) -> Result<StartedClient, RoleError> {
    let registration = config.registration(roles).ok_or_else(|| {
        RoleError::new(
            "the node offers nothing to register: it runs no role and [cluster] declares no resources",
        )
    })?;
    let base: BTreeSet<String> = registration.offers.keys().cloned().collect();
    start(config, node, Some((registration, base))).await
}

async fn start(
    config: &ClusterConfig,
    node: &str,
    registration: ToRegister,
) -> Result<StartedClient, RoleError> {
    if config.backend == Backend::Etcd {
        let Some(start) = ETCD_BACKEND.get() else {
            return Err(RoleError::new(etcd_missing().to_string()));
        };
        return start(config.clone(), node.to_string(), registration).await;
    }
    let (actor, done) = start_beacon_client(config, node, registration).await?;
    Ok((ClusterClientHandle::of(Backend::Beacon, &actor), done))
}

async fn start_beacon_client(
    config: &ClusterConfig,
    node: &str,
    registration: ToRegister,
) -> Result<(Addr<BeaconClient>, oneshot::Receiver<()>), RoleError> {
    let cookie = config.load_cookie().await.map_err(RoleError::new)?;
    let (registration, base_resources) = match registration {
        Some((registration, base)) => (Some(registration), base),
        None => (None, BTreeSet::new()),
    };
    let settings = ClientSettings {
        node: node.to_string(),
        registration,
        base_resources,
        cookie,
        heartbeat: config.heartbeat_interval.get(),
        liveness: config.liveness,
        request_timeout: config.request_timeout.get(),
    };
    let endpoints: Vec<String> = config.beacons.iter().map(|b| b.to_string()).collect();
    let reconnect = socket::Reconnect::for_heartbeat(config.heartbeat_interval.get());
    let core = ClientCore::new(settings, endpoints.clone(), std::time::Instant::now());
    let (commands, inbox) = zmq_thread::channel()
        .map_err(|err| RoleError::new(format!("cannot create the socket bridge: {err}")))?;
    let actor = BeaconClient::new(core, commands).start();
    let frames = actor.clone().recipient();
    let (done_tx, done_rx) = oneshot::channel();
    span::spawn_role_thread(
        "cluster-socket",
        tracing::Span::current(),
        ClusterClient::NAME,
        move || {
            socket::run(endpoints, reconnect, inbox, frames);
            let _ = done_tx.send(());
        },
    )
    .map_err(|err| {
        RoleError::new(format!(
            "cannot start the cluster client's socket thread: {err}"
        ))
    })?;
    Ok((actor, done_rx))
}
