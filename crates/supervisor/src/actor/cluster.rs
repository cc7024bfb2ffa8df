//! The supervisor actor's links to the other roles: the cluster client (one
//! [`WatchProviders`] over every child's requirements, the children's endpoints offered and
//! withdrawn, the `notify` of a requirement change over the ipc hub), and what it publishes
//! for the broker ([`SupervisorLink`]: lifecycle subscribers, the attached broker that
//! answers `ready = { broker = "..." }` checks). The decisions are the core's; this only
//! carries them out.

use std::future::Future;
use std::time::{Duration, Instant};

use actix::prelude::*;
use troupe_core::cluster::{
    Offer, ProvidersChanged, Unwatch, WatchId, WatchProviders, Withdraw, ENV_BEACONS, ENV_CLUSTER,
    ENV_COOKIE_FILE,
};
use troupe_core::services::{
    AttachBroker, BrokerWorkers, Invoke, ServiceLifecycle, SubscribeLifecycle,
};

use super::{Supervisor, Timer};
use crate::requirements::{expand_args, requirement_env};
use crate::spec::ProcessSpec;

/// Most lifecycle subscribers kept (besides the ipc hub); the oldest goes first.
pub(super) const MAX_LIFECYCLE_SUBSCRIBERS: usize = 16;
/// How long a service has to answer a requirements notification.
const NOTIFY_TIMEOUT: Duration = Duration::from_secs(5);
/// At most one warning per service this often about notifications that did not arrive.
const NOTIFY_WARN_EVERY: Duration = Duration::from_secs(60);
/// Time before a refused or unanswered watch is asked for again.
const WATCH_RETRY: Duration = Duration::from_secs(1);

/// What a process child gets from the cluster at a start: variables, and its arguments
/// with `${cluster.…}` expanded.
pub(super) type ClusterLaunch = (Vec<(String, String)>, Vec<String>);

/// The current [`WatchProviders`] subscription.
#[derive(Default)]
pub(super) struct Watch {
    /// Bumped at every new request: an answer to an older one is unwatched at once.
    seq: u64,
    /// The subscription, once answered.
    id: Option<WatchId>,
    /// What the current request follows.
    resources: Vec<String>,
}

/// Sends `msg` to `to` at once, in order with every earlier send: a fresh clone of a
/// recipient is never parked, so its `send` queues the message now (a recipient whose
/// earlier send found the mailbox full would queue it only when polled, possibly after a
/// later `do_send`). An offer and the withdrawal that follows it thus arrive in that order.
fn send_now<M>(to: &Recipient<M>, msg: M) -> impl Future<Output = Result<M::Result, MailboxError>>
where
    M: Message + Send + 'static,
    M::Result: Send,
{
    to.clone().send(msg)
}

/// A watch answer, back on the actor.
#[derive(Message)]
#[rtype(result = "()")]
pub(super) struct WatchAnswered {
    seq: u64,
    result: Result<WatchId, String>,
}

/// A requirements notification that did not reach its service.
#[derive(Message)]
#[rtype(result = "()")]
pub(super) struct NotifyFailed {
    id: String,
    error: String,
}

impl Supervisor {
    /// Re-makes the watch when the resources the children require have changed.
    pub(super) fn sync_watch(&mut self, ctx: &mut Context<Self>) {
        let Some(resources) = self.core.take_watch_change() else {
            return;
        };
        let Some(cluster) = &self.cluster else {
            return;
        };
        self.watch.seq += 1;
        if let Some(id) = self.watch.id.take() {
            cluster.unwatch.do_send(Unwatch(id));
        }
        self.watch.resources = resources;
        if !self.watch.resources.is_empty() {
            self.request_watch(ctx);
        }
    }

    fn request_watch(&mut self, ctx: &mut Context<Self>) {
        let Some(cluster) = &self.cluster else {
            return;
        };
        let seq = self.watch.seq;
        tracing::info!(resources = ?self.watch.resources, "following the providers of required resources");
        let request = send_now(
            &cluster.watch,
            WatchProviders {
                resources: self.watch.resources.clone(),
                recipient: ctx.address().recipient(),
            },
        );
        let me = ctx.address().downgrade();
        actix_rt::spawn(async move {
            let result = match request.await {
                Ok(answer) => answer,
                Err(e) => Err(format!("the cluster client did not answer: {e}")),
            };
            if let Some(me) = me.upgrade() {
                me.do_send(WatchAnswered { seq, result });
            }
        });
    }

    /// Ends the watch (the supervisor stops).
    pub(super) fn unwatch(&mut self) {
        self.watch.seq += 1;
        if let (Some(cluster), Some(id)) = (&self.cluster, self.watch.id.take()) {
            cluster.unwatch.do_send(Unwatch(id));
        }
    }

    /// The watch request `seq` may be asked for again.
    pub(super) fn retry_watch(&mut self, seq: u64, ctx: &mut Context<Self>) {
        if seq == self.watch.seq && self.watch.id.is_none() && !self.watch.resources.is_empty() {
            self.request_watch(ctx);
        }
    }

    /// Offers child `id`'s endpoints.
    pub(super) fn offer(&self, id: String, endpoints: std::collections::BTreeMap<String, String>) {
        let Some(cluster) = &self.cluster else {
            return;
        };
        tracing::info!(id, endpoints = ?endpoints, "offering the service's endpoints");
        let request = send_now(
            &cluster.offer,
            Offer {
                resource: id.clone(),
                endpoints,
            },
        );
        actix_rt::spawn(async move {
            match request.await {
                Ok(Ok(())) => {}
                Ok(Err(e)) => {
                    tracing::warn!(id, error = %e, "the cluster client refused the service's endpoints")
                }
                Err(e) => {
                    tracing::warn!(id, error = %e, "the cluster client did not take the service's endpoints")
                }
            }
        });
    }

    /// Withdraws child `id`'s endpoints.
    pub(super) fn withdraw(&self, id: String) {
        let Some(cluster) = &self.cluster else {
            return;
        };
        tracing::info!(id, "withdrawing the service's endpoints");
        let request = send_now(
            &cluster.withdraw,
            Withdraw {
                resource: id.clone(),
                names: Vec::new(),
            },
        );
        actix_rt::spawn(async move {
            match request.await {
                Ok(Ok(())) => {}
                Ok(Err(e)) => {
                    tracing::warn!(id, error = %e, "the cluster client refused to withdraw the service's endpoints")
                }
                Err(e) => {
                    tracing::warn!(id, error = %e, "the cluster client did not take the withdrawal of the service's endpoints")
                }
            }
        });
    }

    /// Sends child `id` the new picture of its requirements over its service channel.
    pub(super) fn notify_requirements(
        &mut self,
        id: String,
        payload: serde_json::Value,
        ctx: &mut Context<Self>,
    ) {
        let Some(channels) = &self.channels else {
            self.notify_failed(
                id,
                "the node has no service channels (the ipc role does not run)".into(),
            );
            return;
        };
        let request = channels.invoke.send(Invoke {
            service: id.clone(),
            payload: serde_json::to_vec(&payload).unwrap_or_default(),
            timeout: NOTIFY_TIMEOUT,
        });
        let me = ctx.address().downgrade();
        actix_rt::spawn(async move {
            let error = match request.await {
                Ok(Ok(_)) => return,
                Ok(Err(e)) => e.to_string(),
                Err(e) => format!("the ipc hub did not answer: {e}"),
            };
            if let Some(me) = me.upgrade() {
                me.do_send(NotifyFailed { id, error });
            }
        });
    }

    fn notify_failed(&mut self, id: String, error: String) {
        let now = Instant::now();
        let due = self
            .notify_warned
            .get(&id)
            .is_none_or(|last| now.saturating_duration_since(*last) >= NOTIFY_WARN_EVERY);
        if due {
            tracing::warn!(
                id,
                error,
                "cannot tell the service that its requirements changed"
            );
            self.notify_warned.insert(id, now);
        } else {
            tracing::debug!(
                id,
                error,
                "cannot tell the service that its requirements changed"
            );
        }
    }

    /// Reports a service process's start or exit to the ipc hub and every subscriber.
    pub(super) fn lifecycle(&mut self, event: ServiceLifecycle) {
        if let Some(channels) = &self.channels {
            channels.lifecycle.do_send(event.clone());
        }
        self.lifecycle_subscribers.retain(|s| s.connected());
        for subscriber in &self.lifecycle_subscribers {
            subscriber.do_send(event.clone());
        }
    }

    /// The variables a process child gets from the cluster: the node's beacons and cookie
    /// file (unless its own `env` sets them), and its requirements' providers; and its
    /// arguments with `${cluster.…}` expanded (an error names a reference nothing answers).
    pub(super) fn cluster_launch(
        &self,
        id: &str,
        p: &ProcessSpec,
    ) -> Result<ClusterLaunch, String> {
        let mut env = Vec::new();
        if let Some(cluster) = &self.cluster {
            if !p.env.contains_key(ENV_BEACONS) {
                env.push((ENV_BEACONS.to_string(), cluster.beacons.join(" ")));
            }
            if let Some(json) = cluster
                .cluster
                .as_ref()
                .filter(|_| !p.env.contains_key(ENV_CLUSTER))
            {
                env.push((ENV_CLUSTER.to_string(), json.clone()));
            }
            if let Some(file) = cluster
                .cookie_file
                .as_ref()
                .filter(|_| !p.env.contains_key(ENV_COOKIE_FILE))
            {
                env.push((
                    ENV_COOKIE_FILE.to_string(),
                    file.to_string_lossy().into_owned(),
                ));
            }
        }
        let view = self.core.requirements_view(id);
        env.extend(requirement_env(&view));
        let args = expand_args(&p.args, &view)?;
        Ok((env, args))
    }
}

impl Handler<ProvidersChanged> for Supervisor {
    type Result = ();

    fn handle(&mut self, msg: ProvidersChanged, ctx: &mut Self::Context) {
        tracing::debug!(reachable = msg.reachable, unmet = ?msg.unmet(), "providers changed");
        let commands = self
            .core
            .on_providers(msg.providers, msg.reachable, Instant::now());
        self.execute(commands, ctx);
    }
}

impl Handler<WatchAnswered> for Supervisor {
    type Result = ();

    fn handle(&mut self, msg: WatchAnswered, ctx: &mut Self::Context) {
        match msg.result {
            Ok(id) if msg.seq != self.watch.seq => {
                if let Some(cluster) = &self.cluster {
                    cluster.unwatch.do_send(Unwatch(id));
                }
            }
            Ok(id) => self.watch.id = Some(id),
            Err(_) if msg.seq != self.watch.seq => {}
            Err(error) => {
                tracing::error!(
                    resources = ?self.watch.resources,
                    error,
                    retry_ms = WATCH_RETRY.as_millis() as u64,
                    "cannot follow the providers of required resources"
                );
                self.after(WATCH_RETRY, Timer::Watch { seq: msg.seq }, ctx);
            }
        }
    }
}

impl Handler<NotifyFailed> for Supervisor {
    type Result = ();

    fn handle(&mut self, msg: NotifyFailed, _: &mut Self::Context) {
        self.notify_failed(msg.id, msg.error);
    }
}

impl Handler<SubscribeLifecycle> for Supervisor {
    type Result = ();

    fn handle(&mut self, msg: SubscribeLifecycle, _: &mut Self::Context) {
        self.lifecycle_subscribers.retain(|s| s.connected());
        if self.lifecycle_subscribers.len() >= MAX_LIFECYCLE_SUBSCRIBERS {
            tracing::warn!(
                max = MAX_LIFECYCLE_SUBSCRIBERS,
                "too many lifecycle subscribers; dropping the oldest"
            );
            self.lifecycle_subscribers.remove(0);
        }
        self.lifecycle_subscribers.push(msg.0);
    }
}

impl Handler<AttachBroker> for Supervisor {
    type Result = ();

    fn handle(&mut self, msg: AttachBroker, _: &mut Self::Context) {
        tracing::info!("broker attached for readiness checks");
        self.broker.send_replace(Some(msg.0));
    }
}

/// What `ready = { broker = "..." }` asks the broker.
pub(super) fn broker_question(service: &str, id: &str, pid: u32) -> BrokerWorkers {
    BrokerWorkers {
        broker_service: service.to_string(),
        service_id: id.to_string(),
        pid,
    }
}
