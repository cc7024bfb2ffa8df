//! The control plane: the `broker` role and its actor. The actor owns the handle on the
//! socket thread, answers stats queries ([`GetStats`]), applies live service updates
//! ([`UpdateServices`]), offers the broker's endpoints under the resource `broker` through the
//! node's [`ClusterHandle`] when the node has one (and keeps them in step with the updates),
//! and on stop withdraws them, then drains the broker.
//!
//! When the node runs a supervisor (a [`SupervisorLink`] is published), the role subscribes
//! the actor to its services' starts and exits ([`ServiceLifecycle`]: an exit fails the dead
//! process's workers over at once) and attaches it for readiness checks ([`BrokerWorkers`]).

use std::collections::BTreeMap;
use std::time::Duration;

use actix::prelude::*;
use troupe_core::cluster::{ClusterHandle, Offer, Withdraw};
use troupe_core::services::{
    AttachBroker, BrokerWorkers, BrokerWorkersAnswer, ServiceLifecycle, SubscribeLifecycle,
    SupervisorLink,
};
use troupe_core::{Role, RoleContext, RoleError, Shutdown};

use crate::config::BrokerConfig;
use crate::discovery;
use crate::engine::BrokerStats;
use crate::error::BrokerError;
use crate::socket_loop::{self, BoundEndpoints, BrokerHandle};
use crate::update::ServicesUpdate;

/// Longest wait for the cluster client to take an endpoint change.
const CLUSTER_CALL: Duration = Duration::from_secs(1);
/// Longest wait for the supervisor to take the broker's subscription.
const SUPERVISOR_CALL: Duration = Duration::from_secs(1);

/// The resource the broker's endpoints are offered under.
pub const BROKER_RESOURCE: &str = "broker";

/// The broker's actor.
pub struct BrokerActor {
    handle: BrokerHandle,
    endpoints: BoundEndpoints,
    drain_timeout: Duration,
    /// The host registered for sockets bound to every interface (`broker.advertise_host`).
    advertise_host: String,
    /// The cluster client and the endpoint names offered through it under
    /// [`BROKER_RESOURCE`].
    registered: Option<(ClusterHandle, Vec<String>)>,
}

impl Actor for BrokerActor {
    type Context = Context<Self>;
}

/// Asks for the broker's counters and the operator's view of its services and workers (each
/// Paranoid Pirate service's bound addresses, each worker's framing, credit, held requests and
/// silence).
#[derive(Debug, Message)]
#[rtype(result = "Result<BrokerStats, BrokerError>")]
pub struct GetStats;

impl Handler<GetStats> for BrokerActor {
    type Result = ResponseFuture<Result<BrokerStats, BrokerError>>;

    fn handle(&mut self, _: GetStats, _: &mut Self::Context) -> Self::Result {
        let handle = self.handle.clone();
        Box::pin(async move { handle.stats().await })
    }
}

/// Changes the broker's Paranoid Pirate services to those of `config` while it runs (a
/// reload), or with `dry_run` only reports what would change. See [`crate::update`] for what
/// each kind of change does. Services whose sockets are bound or moved are registered with
/// the cluster client, removed ones withdrawn, when the broker registered at start.
///
/// Errors: [`BrokerError::Config`] for an invalid table, [`BrokerError::ServiceBind`] when a
/// socket cannot be bound (nothing changed), [`BrokerError::Draining`] once stopping.
/// Updates are applied one at a time.
#[derive(Debug, Clone, Message)]
#[rtype(result = "Result<ServicesUpdate, BrokerError>")]
pub struct UpdateServices {
    /// The new `[broker]` table.
    pub config: BrokerConfig,
    /// Report only; change nothing.
    pub dry_run: bool,
}

impl Handler<UpdateServices> for BrokerActor {
    type Result = AtomicResponse<Self, Result<ServicesUpdate, BrokerError>>;

    fn handle(&mut self, update: UpdateServices, _: &mut Self::Context) -> Self::Result {
        let handle = self.handle.clone();
        let cluster = self.registered.as_ref().map(|(cluster, _)| cluster.clone());
        let advertise_host = self.advertise_host.clone();
        let UpdateServices { config, dry_run } = update;
        AtomicResponse::new(Box::pin(
            async move {
                let applied = handle.update(config, dry_run).await?;
                let registration = match cluster {
                    Some(cluster) if !dry_run => {
                        let (add, remove) = discovery::registration_changes(
                            &applied,
                            &advertise_host,
                            &discovery::host_name(),
                        );
                        Some(update_registration(&cluster, add, remove).await)
                    }
                    _ => None,
                };
                Ok::<_, BrokerError>((applied, registration))
            }
            .into_actor(self)
            .map(move |result, actor, _| {
                let (applied, registration) = result?;
                if !dry_run {
                    actor.endpoints = applied.endpoints;
                }
                if let (Some((_, names)), Some((added, removed))) =
                    (actor.registered.as_mut(), registration)
                {
                    names.retain(|name| !removed.contains(name));
                    for name in added {
                        if !names.contains(&name) {
                            names.push(name);
                        }
                    }
                }
                Ok(applied.report)
            }),
        ))
    }
}

/// The supervisor's report of a service process's start or exit (the broker subscribes when
/// the node has a supervisor, see [`SupervisorLink`]). On an exit, every worker whose
/// identity names that process is dead at once: what it held is retried or answered with a
/// 502 now, not after the liveness window (see [`crate::engine::Engine::process_exited`]).
impl Handler<ServiceLifecycle> for BrokerActor {
    type Result = ();

    fn handle(&mut self, event: ServiceLifecycle, _: &mut Self::Context) {
        let sent = match event {
            ServiceLifecycle::Exited { id, pid } => self.handle.process_exited(id, pid),
            ServiceLifecycle::Started { id, pid, .. } => self.handle.process_started(id, pid),
        };
        match sent {
            Ok(()) => {}
            Err(BrokerError::Busy(waiting)) => tracing::warn!(
                waiting,
                "the broker's socket thread is not keeping up; a service start or exit is not applied at once (its workers are judged by their heartbeats)"
            ),
            Err(_) => tracing::debug!("a service start or exit arrived after the broker stopped"),
        }
    }
}

/// The supervisor's readiness question: what the broker sees of a broker service and of the
/// workers one supervised process opened to it (see
/// [`crate::engine::Engine::broker_workers`]). Once the broker has stopped, everything is
/// `false`/0.
impl Handler<BrokerWorkers> for BrokerActor {
    type Result = ResponseFuture<BrokerWorkersAnswer>;

    fn handle(&mut self, query: BrokerWorkers, _: &mut Self::Context) -> Self::Result {
        let handle = self.handle.clone();
        Box::pin(async move { handle.workers(query).await.unwrap_or_default() })
    }
}

/// Asks for the addresses the broker is bound to.
#[derive(Debug, Message)]
#[rtype(result = "BoundEndpoints")]
pub struct GetEndpoints;

impl Handler<GetEndpoints> for BrokerActor {
    type Result = MessageResult<GetEndpoints>;

    fn handle(&mut self, _: GetEndpoints, _: &mut Self::Context) -> Self::Result {
        MessageResult(self.endpoints.clone())
    }
}

/// Deregisters from the beacons, drains the broker (see
/// [`crate::socket_loop::Command::Drain`]), then stops the actor. Answered once the socket
/// thread has ended.
impl Handler<Shutdown> for BrokerActor {
    type Result = ResponseActFuture<Self, ()>;

    fn handle(&mut self, _: Shutdown, _: &mut Self::Context) -> Self::Result {
        let handle = self.handle.clone();
        let window = self.drain_timeout;
        let registered = self.registered.take();
        Box::pin(
            async move {
                if let Some((cluster, names)) = registered {
                    deregister(&cluster, names).await;
                }
                handle.drain(window).await
            }
            .into_actor(self)
            .map(|result, _, ctx| {
                match result {
                    Ok(stats) => log_summary(&stats),
                    Err(err) => tracing::warn!(%err, "broker drain did not complete"),
                }
                ctx.stop();
            }),
        )
    }
}

fn log_summary(stats: &BrokerStats) {
    for service in &stats.services {
        let s = &service.stats;
        tracing::info!(
            service = %service.name,
            requests = s.requests,
            replies = s.replies,
            refused = s.refused,
            timed_out = s.timed_out,
            lost = s.lost,
            retried = s.retried,
            workers_exited = s.workers_exited,
            "broker service totals"
        );
    }
    tracing::info!(
        malformed = stats.malformed,
        undeliverable_replies = stats.undeliverable_replies,
        "broker stopped"
    );
}

/// The running `broker` role.
pub struct BrokerRole {
    actor: Addr<BrokerActor>,
}

impl Role for BrokerRole {
    const NAME: &'static str = "broker";
    type Config = BrokerConfig;

    fn start_after() -> &'static [&'static str] {
        &["beacon", "supervisor"]
    }

    fn validate(config: &BrokerConfig) -> Result<(), troupe_core::ConfigError> {
        config.validate()
    }

    async fn start(config: BrokerConfig, ctx: RoleContext) -> Result<Self, RoleError> {
        warn_if_drain_outlasts_shutdown(&config, &ctx);
        let drain_timeout = config.drain_timeout.get();
        let advertise_host = config.advertise_host.clone();
        let advertised_at = advertise_host.clone();
        let (handle, endpoints) = socket_loop::start(config, tracing::Span::current())
            .await
            .map_err(RoleError::new)?;
        for service in &endpoints.services {
            tracing::info!(
                service = %service.name,
                frontend = %service.frontend,
                backend = %service.backend,
                "broker service listening"
            );
        }
        if let Some(majordomo) = &endpoints.majordomo {
            tracing::info!(%majordomo, "broker Majordomo socket listening");
        }
        let registered = match ctx.published.lookup::<ClusterHandle>() {
            Some(cluster) => {
                let advertised = discovery::advertised_endpoints(
                    &endpoints,
                    &advertise_host,
                    &discovery::host_name(),
                );
                register(&cluster, advertised)
                    .await
                    .map(|names| (cluster, names))
            }
            None => None,
        };
        let actor = BrokerActor {
            handle,
            endpoints,
            drain_timeout,
            advertise_host: advertised_at,
            registered,
        }
        .start();
        if let Some(link) = ctx.published.lookup::<SupervisorLink>() {
            attach_to_supervisor(&link, &actor).await;
        }
        ctx.published.publish(actor.clone());
        Ok(BrokerRole { actor })
    }

    async fn stop(self) {
        let _ = self.actor.send(Shutdown).await;
    }
}

/// Subscribes the broker to the supervisor's service starts and exits and attaches it for
/// the supervisor's `ready = { broker = … }` checks. A failure is logged: the broker serves
/// all the same, and notices dead workers after their liveness window.
async fn attach_to_supervisor(link: &SupervisorLink, actor: &Addr<BrokerActor>) {
    let subscribed = tokio::time::timeout(
        SUPERVISOR_CALL,
        link.subscribe
            .send(SubscribeLifecycle(actor.clone().recipient())),
    )
    .await;
    let attached = tokio::time::timeout(
        SUPERVISOR_CALL,
        link.attach_broker
            .send(AttachBroker(actor.clone().recipient())),
    )
    .await;
    match (subscribed, attached) {
        (Ok(Ok(())), Ok(Ok(()))) => {
            tracing::debug!("broker attached to the supervisor: service exits fail their workers over at once")
        }
        _ => tracing::warn!(
            "the supervisor did not take the broker's subscription; workers of exited services are noticed after the liveness window"
        ),
    }
}

/// Offers `endpoints` under the [`BROKER_RESOURCE`] resource; returns their names if the
/// cluster client took them. A refusal is logged: the broker serves all the same, it is only
/// not discoverable.
async fn register(
    cluster: &ClusterHandle,
    endpoints: BTreeMap<String, String>,
) -> Option<Vec<String>> {
    let names: Vec<String> = endpoints.keys().cloned().collect();
    let shown = format!("{endpoints:?}");
    let offer = Offer {
        resource: BROKER_RESOURCE.to_string(),
        endpoints,
    };
    match tokio::time::timeout(CLUSTER_CALL, cluster.offer.send(offer)).await {
        Ok(Ok(Ok(()))) => {
            tracing::info!(endpoints = %shown, "broker endpoints registered with the cluster");
            Some(names)
        }
        Ok(Ok(Err(err))) => {
            tracing::warn!(%err, endpoints = %shown, "the cluster client refused the broker's endpoints; clients must be given them");
            None
        }
        Ok(Err(_)) | Err(_) => {
            tracing::warn!(endpoints = %shown, "the cluster client did not take the broker's endpoints");
            None
        }
    }
}

/// Withdraws the [`BROKER_RESOURCE`] endpoints named in `names` (never an empty list, which
/// would withdraw the whole resource). `Ok` once the cluster client took it; a refusal is
/// logged.
async fn withdraw(cluster: &ClusterHandle, names: Vec<String>) -> Result<(), ()> {
    if names.is_empty() {
        return Ok(());
    }
    let withdraw = Withdraw {
        resource: BROKER_RESOURCE.to_string(),
        names: names.clone(),
    };
    match tokio::time::timeout(CLUSTER_CALL, cluster.withdraw.send(withdraw)).await {
        Ok(Ok(Ok(()))) => {
            tracing::info!(endpoints = ?names, "broker endpoints removed from the cluster");
            Ok(())
        }
        Ok(Ok(Err(err))) => {
            tracing::warn!(%err, endpoints = ?names, "the cluster client refused to remove broker endpoints");
            Err(())
        }
        Ok(Err(_)) | Err(_) => {
            tracing::warn!(endpoints = ?names, "the cluster client did not remove broker endpoints");
            Err(())
        }
    }
}

/// Withdraws the endpoints named in `remove`, then offers `add`; returns the names of those
/// the cluster client took, added and removed. A refusal is logged: the broker serves all
/// the same.
async fn update_registration(
    cluster: &ClusterHandle,
    add: BTreeMap<String, String>,
    remove: Vec<String>,
) -> (Vec<String>, Vec<String>) {
    let removed = match withdraw(cluster, remove.clone()).await {
        Ok(()) => remove,
        Err(()) => Vec::new(),
    };
    let added = if add.is_empty() {
        Vec::new()
    } else {
        register(cluster, add).await.unwrap_or_default()
    };
    (added, removed)
}

/// Removes the broker's endpoints from the node's registration, so that no new client finds
/// a broker that is going away.
async fn deregister(cluster: &ClusterHandle, names: Vec<String>) {
    let _ = withdraw(cluster, names).await;
}

fn warn_if_drain_outlasts_shutdown(config: &BrokerConfig, ctx: &RoleContext) {
    let shutdown = ctx
        .config
        .get("shutdown_timeout")
        .and_then(|v| v.as_str())
        .and_then(|s| s.parse::<troupe_core::settings::Duration>().ok());
    if let Some(shutdown) = shutdown {
        if config.drain_timeout >= shutdown {
            tracing::warn!(
                drain_timeout = %config.drain_timeout,
                shutdown_timeout = %shutdown,
                "broker.drain_timeout is not shorter than shutdown_timeout: the node may abandon the broker before its drain ends"
            );
        }
    }
}
