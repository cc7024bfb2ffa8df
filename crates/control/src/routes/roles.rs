//! `/healthz`, `/readyz`, `/v1/node`, `/v1/broker`, `/v1/ipc`, `/v1/cluster` and `/v1/reload`.

use actix::Addr;
use actix_web::{web, HttpResponse};
use serde::Deserialize;
use serde_json::json;
use tokio::sync::oneshot;
use troupe_beacon::client::{GetRequirements, GetStatus};
use troupe_broker::actor::{BrokerActor, GetStats as BrokerStats};
use troupe_ipc::{GetView, HubActor};

use super::{ask, ask_recipient, cluster_client, Api, ACTION_WAIT, READ_WAIT};
use crate::error::ApiError;
use crate::state::{ReloadError, ReloadRequest, RoleState};
use std::time::Duration;
use troupe_supervisor::messages::ServiceStatuses;
use troupe_supervisor::{ServiceState, ServiceStatus, Supervisor};

/// Connections and mailboxes `GET /v1/ipc` lists at most.
const IPC_LIST_LIMIT: usize = 1000;

pub(super) fn configure(cfg: &mut web::ServiceConfig) {
    cfg.route("/node", web::get().to(node))
        .route("/broker", web::get().to(broker))
        .route("/ipc", web::get().to(ipc))
        .route("/cluster", web::get().to(cluster))
        .route("/reload", web::post().to(reload));
}

/// How long a role's arbiter may take to run a task before the node counts as unhealthy.
const ARBITER_ANSWER: Duration = Duration::from_secs(1);

/// `GET /healthz`: 200 while every role is starting or running and every role's arbiter runs
/// a task within [`ARBITER_ANSWER`]; otherwise 503 naming what is wrong.
pub(super) async fn healthz(api: web::Data<Api>) -> HttpResponse {
    let mut problems = Vec::new();
    for role in api.node.view().roles {
        if !matches!(role.state, RoleState::Starting | RoleState::Running) {
            problems.push(
                json!({"role": role.name, "problem": format!("{:?}", role.state).to_lowercase()}),
            );
        }
    }
    let pings = api
        .node
        .arbiters()
        .into_iter()
        .map(|(role, arbiter)| async move {
            let (tx, rx) = tokio::sync::oneshot::channel();
            let sent = arbiter.spawn(async move {
                let _ = tx.send(());
            });
            let answered = sent
                && tokio::time::timeout(ARBITER_ANSWER, rx)
                    .await
                    .is_ok_and(|r| r.is_ok());
            (role, answered)
        });
    for (role, answered) in futures::future::join_all(pings).await {
        if !answered {
            problems.push(json!({
                "role": role,
                "problem": format!("its arbiter did not answer within {ARBITER_ANSWER:?}"),
            }));
        }
    }
    let healthy = problems.is_empty();
    let body = json!({
        "status": if healthy { "ok" } else { "unhealthy" },
        "node": api.node.name(),
        "problems": problems,
    });
    if healthy {
        HttpResponse::Ok().json(body)
    } else {
        HttpResponse::ServiceUnavailable().json(body)
    }
}

/// `GET /readyz`: 200 once every role has started and every service with a readiness check is
/// ready; otherwise 503 listing what is not. A service an operator stopped (waiting for
/// `start`) or deleted does not hold readiness back.
pub(super) async fn readyz(api: web::Data<Api>) -> HttpResponse {
    let mut not_ready = Vec::new();
    if !api.node.all_started() {
        not_ready.push(json!({"what": "node", "why": "its roles are still starting"}));
    }
    for role in api.node.view().roles {
        if role.state != RoleState::Running {
            not_ready.push(json!({"what": format!("role {}", role.name), "why": format!("{:?}", role.state).to_lowercase()}));
        }
    }
    if let Ok(supervisor) = api.actor::<Supervisor>("supervisor") {
        match ask(&supervisor, "supervisor", ServiceStatuses, READ_WAIT).await {
            Ok(services) => not_ready.extend(services.iter().filter_map(unready_service)),
            Err(err) => not_ready.push(json!({"what": "supervisor", "why": err.to_string()})),
        }
    }
    let body = json!({
        "status": if not_ready.is_empty() { "ready" } else { "not_ready" },
        "node": api.node.name(),
        "not_ready": not_ready,
    });
    if not_ready.is_empty() {
        HttpResponse::Ok().json(body)
    } else {
        HttpResponse::ServiceUnavailable().json(body)
    }
}

/// Why a service with a readiness check holds readiness back, if it does.
fn unready_service(service: &ServiceStatus) -> Option<serde_json::Value> {
    let has_check = !service.spec["ready"].is_null();
    let stopped_on_purpose = service.state == ServiceState::Deleted
        || (service.state == ServiceState::Waiting
            && service.waiting_for.as_deref() == Some("start"));
    if !has_check || stopped_on_purpose || service.state == ServiceState::Ready {
        return None;
    }
    let state = serde_json::to_value(service.state).unwrap_or_default();
    Some(json!({
        "what": format!("service {}", service.id),
        "why": format!("its readiness check has not passed (state {})", state.as_str().unwrap_or("?")),
    }))
}

async fn node(api: web::Data<Api>) -> HttpResponse {
    HttpResponse::Ok().json(api.node.view())
}

async fn broker(api: web::Data<Api>) -> Result<HttpResponse, ApiError> {
    let broker: Addr<BrokerActor> = api.actor("broker")?;
    let stats = ask(&broker, "broker", BrokerStats, READ_WAIT)
        .await?
        .map_err(|e| ApiError::unavailable("broker", e))?;
    Ok(HttpResponse::Ok().json(stats))
}

async fn ipc(api: web::Data<Api>) -> Result<HttpResponse, ApiError> {
    let hub: Addr<HubActor> = api.actor("ipc")?;
    let view = ask(&hub, "ipc", GetView(IPC_LIST_LIMIT), READ_WAIT).await?;
    Ok(HttpResponse::Ok().json(view))
}

async fn cluster(api: web::Data<Api>) -> Result<HttpResponse, ApiError> {
    let client = cluster_client(&api)?;
    let status = ask_recipient(&client.status, "cluster", GetStatus, READ_WAIT).await?;
    // The backend's current answer; when it does not answer, what the client last saw stands.
    let requirements =
        match ask_recipient(&client.requirements, "cluster", GetRequirements, READ_WAIT).await? {
            Ok(requirements) => json!({
                "offers": requirements.offers,
                "unmet": requirements.unmet,
            }),
            Err(err) => json!({ "error": err.to_string() }),
        };
    Ok(HttpResponse::Ok().json(json!({ "client": status, "requirements": requirements })))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ReloadQuery {
    #[serde(default)]
    dry_run: Option<String>,
}

async fn reload(
    api: web::Data<Api>,
    query: web::Query<ReloadQuery>,
) -> Result<HttpResponse, ApiError> {
    let dry_run = matches!(query.dry_run.as_deref(), Some("1" | "true" | "yes"));
    let (reply, answer) = oneshot::channel();
    api.reloads
        .try_send(ReloadRequest { dry_run, reply })
        .map_err(|_| ApiError::new(409, "busy", ReloadError::Busy.to_string()))?;
    let outcome = tokio::time::timeout(ACTION_WAIT, answer)
        .await
        .map_err(|_| ApiError::new(504, "timeout", "the reload did not finish in time"))?
        .map_err(|_| ApiError::new(503, "stopping", ReloadError::Stopping.to_string()))?;
    match outcome {
        Ok(report) => Ok(HttpResponse::Ok().json(report)),
        Err(ReloadError::Invalid(message)) => Err(ApiError::bad_request("invalid_config", message)),
        Err(err @ ReloadError::Busy) => Err(ApiError::new(409, "busy", err.to_string())),
        Err(err @ ReloadError::Stopping) => Err(ApiError::new(503, "stopping", err.to_string())),
    }
}
