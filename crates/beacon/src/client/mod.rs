//! The cluster client: the actor every node whose `[cluster]` table names beacons runs, so
//! that the node is registered, heartbeats, and its roles can ask the cluster questions.
//!
//! The node starts it before its roles (as the internal role `cluster`, see
//! [`ClusterClient`]) and publishes its [`BeaconClient`] address, so a role finds it with
//! `ctx.published.lookup::<Addr<BeaconClient>>()`. The messages it answers:
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
pub(crate) mod providers;
pub(crate) mod socket;

use std::collections::BTreeSet;
use std::time::Duration;

use actix::prelude::*;
use tokio::sync::oneshot;
pub use troupe_core::cluster::{
    ClusterHandle, Offer, Provider, ProvidersChanged, Unwatch, WatchId, WatchProviders, Withdraw,
};
use troupe_core::{span, zmq_thread, ConfigError, Role, RoleContext, RoleError, Shutdown};

pub use actor::BeaconClient;
pub use config::ClusterConfig;
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

/// The cluster client as the node runs it: the internal role `cluster`, started before the
/// node's roles and stopped after them. Users never list it in `roles`; it runs when the
/// `[cluster]` table names beacons.
pub struct ClusterClient {
    actor: Addr<BeaconClient>,
    thread_done: oneshot::Receiver<()>,
    leave_within: Duration,
}

impl Role for ClusterClient {
    const NAME: &'static str = ClusterConfig::TABLE;
    type Config = ClusterConfig;

    fn validate(config: &ClusterConfig) -> Result<(), ConfigError> {
        config.validate()
    }

    async fn start(config: ClusterConfig, ctx: RoleContext) -> Result<Self, RoleError> {
        let roles: Vec<String> = match ctx.config.get("roles").and_then(|r| r.as_array()) {
            Some(roles) => roles
                .iter()
                .filter_map(|r| r.as_str().map(str::to_string))
                .collect(),
            None => ctx.roles.to_vec(),
        };
        let (actor, thread_done) = start_node_client(&config, &ctx.node, &roles).await?;
        ctx.published.publish(actor.clone());
        ctx.published.publish(ClusterHandle {
            offer: actor.clone().recipient(),
            withdraw: actor.clone().recipient(),
            watch: actor.clone().recipient(),
            unwatch: actor.clone().recipient(),
            beacons: config.beacons.iter().map(|b| b.to_string()).collect(),
            cookie_file: (!config.cookie_file.as_os_str().is_empty())
                .then(|| config.cookie_file.clone()),
        });
        let resources = config
            .registration(&roles)
            .map(|r| r.offers.keys().cloned().collect::<Vec<_>>().join(" "))
            .unwrap_or_default();
        tracing::info!(
            beacons = %config.beacons.iter().map(|b| b.as_str()).collect::<Vec<_>>().join(" "),
            %resources,
            requires = %config.requires.join(" "),
            "cluster client started"
        );
        Ok(ClusterClient {
            actor,
            thread_done,
            leave_within: config.request_timeout.get(),
        })
    }

    async fn stop(self) {
        let _ = self.actor.send(actor::Leave(self.leave_within)).await;
        let _ = self.actor.send(Shutdown).await;
        let _ = self.thread_done.await;
    }
}

/// Starts a client for `config.beacons` on the current arbiter, as node `node`. With
/// `register`, it registers the node, offering the resources `config` declares (see
/// [`start_node_client`] for a node that runs roles); without, it only asks questions (and
/// follows providers). Returns the actor and a receiver that fires when its socket thread has
/// ended.
pub async fn start_client(
    config: &ClusterConfig,
    node: &str,
    register: bool,
) -> Result<(Addr<BeaconClient>, oneshot::Receiver<()>), RoleError> {
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
) -> Result<(Addr<BeaconClient>, oneshot::Receiver<()>), RoleError> {
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
    registration: Option<(Registration, BTreeSet<String>)>,
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
