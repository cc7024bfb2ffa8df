//! `GET /metrics`: the node's metrics in the Prometheus text exposition format (version
//! 0.0.4), encoded by the `prometheus-client` crate.
//!
//! Nothing is counted here: at each scrape, the handler asks each role's actor for a
//! snapshot of the counters it keeps anyway (the supervisor's services, the broker's engine,
//! the beacon's core, the ipc hub, and the [`store`] of services' own metrics), each within
//! [`ROLE_WAIT`]; a role that does not answer in time is left out of that scrape and counted
//! (`troupe_scrape_errors_total{role}`). The node's own process and its services' cgroups are
//! read from `/proc` and `/sys/fs/cgroup` off the event loop, then everything is encoded by a
//! [`prometheus_client::collector::Collector`] over the snapshots, in a registry whose
//! constant label is the node's name (`node`).
//!
//! The series, their types and labels are listed in docs/operations.md ("Metrics").
//! Cardinality is bounded: labels take service ids, broker service names, role names and
//! values from fixed lists, never request ids, client identities or pids.

mod collect;
pub mod names;
mod process;
pub mod store;

use std::collections::HashSet;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use actix::dev::ToEnvelope;
use actix::{Actor, Addr, Handler, Message};
use actix_web::{web, HttpRequest, HttpResponse};
use prometheus_client::encoding::prometheus_text;
use tokio::sync::Semaphore;
use troupe_beacon::server::actor::{BeaconServer, GetBeaconMetrics};
use troupe_broker::actor::{BrokerActor, GetStats as BrokerStats};
use troupe_core::context::Published;
use troupe_ipc::{GetStats as HubStats, HubActor};
use troupe_supervisor::messages::GetServiceMetrics;
use troupe_supervisor::{ServiceState, Supervisor};

use crate::error::ApiError;
use crate::state::NodeHandle;
pub use store::{ServiceMetricsStore, StoreLimits};

/// Longest wait for one role's snapshot.
pub const ROLE_WAIT: Duration = Duration::from_secs(2);
/// Scrapes served at once; more are answered 503.
pub const MAX_CONCURRENT_SCRAPES: usize = 4;
/// The `Content-Type` of the answer (Prometheus text format 0.0.4).
pub const CONTENT_TYPE: &str = prometheus_text::CONTENT_TYPE;

/// The sources a scrape asks, as `troupe_scrape_errors_total{role}` names them.
pub const SOURCES: [&str; 6] = [
    "supervisor",
    "broker",
    "beacon",
    "ipc",
    "service_metrics",
    "process",
];

/// What the `/metrics` handler shares: the node, where roles publish their actors, the store
/// of services' metrics, and the scrape error counters.
pub struct Metrics {
    node: NodeHandle,
    published: Published,
    store: Addr<ServiceMetricsStore>,
    errors: Arc<[AtomicU64; SOURCES.len()]>,
    scrapes: Arc<Semaphore>,
}

impl Metrics {
    /// Metrics of `node`, asking the roles in `published` and the services' `store`.
    pub fn new(node: NodeHandle, published: Published, store: Addr<ServiceMetricsStore>) -> Self {
        Metrics {
            node,
            published,
            store,
            errors: Arc::new(Default::default()),
            scrapes: Arc::new(Semaphore::new(MAX_CONCURRENT_SCRAPES)),
        }
    }

    fn failed(&self, source: &str) {
        if let Some(i) = SOURCES.iter().position(|s| *s == source) {
            self.errors[i].fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Asks `role`'s published actor `msg` within [`ROLE_WAIT`]: `None` when the role does not
    /// run, or (counted) does not answer.
    async fn ask<A, M>(&self, role: &'static str, msg: M) -> Option<M::Result>
    where
        A: Actor + Handler<M>,
        A::Context: ToEnvelope<A, M>,
        M: Message + Send + 'static,
        M::Result: Send,
    {
        let actor = self.published.lookup::<Addr<A>>()?;
        self.answer(role, actor, msg).await
    }

    async fn answer<A, M>(&self, role: &'static str, actor: Addr<A>, msg: M) -> Option<M::Result>
    where
        A: Actor + Handler<M>,
        A::Context: ToEnvelope<A, M>,
        M: Message + Send + 'static,
        M::Result: Send,
    {
        match actor.send(msg).timeout(ROLE_WAIT).await {
            Ok(answer) => Some(answer),
            Err(err) => {
                self.failed(role);
                tracing::warn!(role, %err, "a role did not answer the metrics scrape; left out");
                None
            }
        }
    }

    /// Every role's snapshot.
    async fn gather(&self) -> collect::Gathered {
        let started = Instant::now();
        let (supervisor, broker, beacon, ipc) = futures::join!(
            self.ask::<Supervisor, _>("supervisor", GetServiceMetrics),
            self.ask::<BrokerActor, _>("broker", BrokerStats),
            self.ask::<BeaconServer, _>("beacon", GetBeaconMetrics),
            self.ask::<HubActor, _>("ipc", HubStats),
        );
        let broker = match broker {
            Some(Ok(stats)) => Some(stats),
            Some(Err(err)) => {
                self.failed("broker");
                tracing::debug!(%err, "the broker did not answer the metrics scrape");
                None
            }
            None => None,
        };
        // The services the supervisor lists (deleted ones excepted): the store forgets the
        // metrics of the others.
        let live = supervisor.as_ref().map(|services| {
            services
                .iter()
                .filter(|s| s.state != ServiceState::Deleted)
                .map(|s| s.id.clone())
                .collect::<HashSet<_>>()
        });
        let take = store::TakeSnapshot {
            live,
            since: started,
        };
        let services = self
            .answer("service_metrics", self.store.clone(), take)
            .await;
        collect::Gathered {
            node: self.node.view(),
            supervisor,
            broker,
            beacon,
            ipc,
            services,
            scrape_errors: Vec::new(),
            gather_seconds: started.elapsed().as_secs_f64(),
            process: None,
            cgroups: Vec::new(),
        }
    }

    fn scrape_errors(&self) -> Vec<(&'static str, u64)> {
        SOURCES
            .iter()
            .zip(self.errors.iter())
            .map(|(source, count)| (*source, count.load(Ordering::Relaxed)))
            .collect()
    }
}

/// `GET /metrics`.
pub async fn serve(metrics: web::Data<Metrics>) -> Result<HttpResponse, ApiError> {
    let _permit = metrics.scrapes.clone().try_acquire_owned().map_err(|_| {
        ApiError::new(
            503,
            "too_many_scrapes",
            format!("{MAX_CONCURRENT_SCRAPES} scrapes are being answered; try again"),
        )
    })?;
    let mut gathered = metrics.gather().await;
    let shared = metrics.clone();
    let text = web::block(move || {
        gathered.process = process::read_self();
        if gathered.process.is_none() {
            shared.failed("process");
        }
        gathered.read_cgroups();
        gathered.scrape_errors = shared.scrape_errors();
        collect::encode(gathered)
    })
    .await
    .map_err(|e| ApiError::new(500, "internal", format!("metrics could not be read: {e}")))?
    .map_err(|_| ApiError::new(500, "internal", "metrics could not be encoded"))?;
    Ok(HttpResponse::Ok().content_type(CONTENT_TYPE).body(text))
}

/// Anything but `GET /metrics` on the metrics listener.
pub async fn not_found(req: HttpRequest) -> ApiError {
    ApiError::new(
        404,
        "no_such_route",
        format!(
            "no route {} {}; this listener serves GET /metrics only",
            req.method(),
            req.path()
        ),
    )
}
