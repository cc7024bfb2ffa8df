//! The API's routes, under `/v1/` (and `/healthz`). Handlers hold no state: each asks the
//! actor of the role concerned (looked up in the node's published registry) and shapes its
//! answer as JSON. [`services`] covers the supervisor, [`roles`] the node, the broker, the
//! ipc hub, the cluster client and reloads, [`cluster_nodes`] every node of the cluster. The
//! web console's page and assets are mounted from [`crate::console`].

mod cluster_nodes;
mod roles;
mod services;

use std::time::Duration;

use actix::dev::ToEnvelope;
use actix::{Actor, Addr, Handler, Message};
use actix_web::error::JsonPayloadError;
use actix_web::{web, HttpRequest};
use tokio::sync::Semaphore;
use troupe_core::context::Published;

use crate::error::ApiError;
use crate::state::{NodeHandle, Reloads};

/// Largest request body accepted.
pub const MAX_BODY_BYTES: usize = 1024 * 1024;
/// `logs?follow=1` streams open at once, over all services.
pub const MAX_FOLLOWERS: usize = 64;
/// How long a read waits for a role's actor.
const READ_WAIT: Duration = Duration::from_secs(10);
/// How long an action waits for a role's actor: stops are bounded by the services' terminate
/// timeouts, which may be long.
const ACTION_WAIT: Duration = Duration::from_secs(300);

/// What every handler shares.
pub struct Api {
    node: NodeHandle,
    published: Published,
    reloads: Reloads,
    followers: std::sync::Arc<Semaphore>,
}

impl Api {
    /// The API of `node`, finding roles in `published` and sending reloads to `reloads`.
    pub fn new(node: NodeHandle, published: Published, reloads: Reloads) -> Self {
        Api {
            node,
            published,
            reloads,
            followers: std::sync::Arc::new(Semaphore::new(MAX_FOLLOWERS)),
        }
    }

    /// The address of the actor a role published, or 404 naming the role.
    fn actor<A: Actor>(&self, role: &str) -> Result<Addr<A>, ApiError> {
        self.published
            .lookup::<Addr<A>>()
            .ok_or_else(|| ApiError::role_not_running(role))
    }
}

/// Asks `actor` (of `role`) `msg`, waiting at most `wait`.
async fn ask<A, M>(
    actor: &Addr<A>,
    role: &str,
    msg: M,
    wait: Duration,
) -> Result<M::Result, ApiError>
where
    A: Actor + Handler<M>,
    A::Context: ToEnvelope<A, M>,
    M: Message + Send + 'static,
    M::Result: Send,
{
    ask_recipient(&actor.clone().recipient(), role, msg, wait).await
}

/// Asks `recipient` (of `role`) `msg`, waiting at most `wait`.
async fn ask_recipient<M>(
    recipient: &actix::Recipient<M>,
    role: &str,
    msg: M,
    wait: Duration,
) -> Result<M::Result, ApiError>
where
    M: Message + Send + 'static,
    M::Result: Send,
{
    recipient
        .send(msg)
        .timeout(wait)
        .await
        .map_err(|e| ApiError::unavailable(role, e))
}

/// The node's cluster client, whichever backend runs it.
fn cluster_client(api: &Api) -> Result<troupe_beacon::client::ClusterClientHandle, ApiError> {
    api.published.lookup().ok_or_else(|| {
        ApiError::new(
            404,
            "no_cluster_client",
            "this node runs no cluster client ([cluster] names no beacons and does not use etcd)",
        )
    })
}

/// Every route.
pub fn configure(cfg: &mut web::ServiceConfig) {
    cfg.app_data(
        web::JsonConfig::default()
            .limit(MAX_BODY_BYTES)
            .error_handler(json_error),
    )
    .app_data(web::PayloadConfig::new(MAX_BODY_BYTES))
    .app_data(web::QueryConfig::default().error_handler(|err, _| {
        ApiError::bad_request("bad_query", format!("bad query string: {err}")).into()
    }))
    .route("/healthz", web::get().to(roles::healthz))
    .route("/readyz", web::get().to(roles::readyz));
    cfg.configure(crate::console::configure);
    cfg.route("/metrics", web::get().to(crate::metrics::serve));
    cfg.service(
        web::scope("/v1")
            .configure(roles::configure)
            .configure(services::configure)
            .configure(cluster_nodes::configure),
    )
    .default_service(web::to(not_found));
}

fn json_error(err: JsonPayloadError, _: &HttpRequest) -> actix_web::Error {
    match err {
        JsonPayloadError::Overflow { limit }
        | JsonPayloadError::OverflowKnownLength { limit, .. } => ApiError::new(
            413,
            "body_too_large",
            format!("the request body is over {limit} bytes"),
        ),
        JsonPayloadError::ContentType => ApiError::new(
            415,
            "not_json",
            "the request body must be JSON (Content-Type: application/json)",
        ),
        other => ApiError::bad_request(
            "bad_json",
            format!("the request body is not valid: {other}"),
        ),
    }
    .into()
}

async fn not_found(req: HttpRequest) -> ApiError {
    ApiError::new(
        404,
        "no_such_route",
        format!(
            "no route {} {}; the API is described in docs/operations.md",
            req.method(),
            req.path()
        ),
    )
}

impl actix_web::Responder for ApiError {
    type Body = actix_web::body::BoxBody;

    fn respond_to(self, _: &HttpRequest) -> actix_web::HttpResponse {
        actix_web::ResponseError::error_response(&self)
    }
}

/// Parses a duration given in a request (`"5s"`, `"250ms"`), naming the field when it cannot.
fn duration(field: &str, text: &str) -> Result<Duration, ApiError> {
    text.parse::<troupe_core::settings::Duration>()
        .map(|d| d.get())
        .map_err(|e| ApiError::bad_request("bad_duration", format!("{field}: {e}")))
}
