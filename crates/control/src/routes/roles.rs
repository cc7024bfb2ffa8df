//! `/healthz`, `/v1/node`, `/v1/broker`, `/v1/ipc`, `/v1/cluster` and `/v1/reload`.

use actix::Addr;
use actix_web::{web, HttpResponse};
use serde::Deserialize;
use serde_json::json;
use tokio::sync::oneshot;
use troupe_beacon::client::{BeaconClient, GetRequirements, GetStatus};
use troupe_broker::actor::{BrokerActor, GetStats as BrokerStats};
use troupe_ipc::{GetView, HubActor};

use super::{ask, Api, ACTION_WAIT, READ_WAIT};
use crate::error::ApiError;
use crate::state::{ReloadError, ReloadRequest};

/// Connections and mailboxes `GET /v1/ipc` lists at most.
const IPC_LIST_LIMIT: usize = 1000;

pub(super) fn configure(cfg: &mut web::ServiceConfig) {
    cfg.route("/node", web::get().to(node))
        .route("/broker", web::get().to(broker))
        .route("/ipc", web::get().to(ipc))
        .route("/cluster", web::get().to(cluster))
        .route("/reload", web::post().to(reload));
}

pub(super) async fn healthz(api: web::Data<Api>) -> HttpResponse {
    HttpResponse::Ok().json(json!({ "status": "ok", "node": api.node.name() }))
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
    let client: Addr<BeaconClient> = api.published.lookup().ok_or_else(|| {
        ApiError::new(
            404,
            "no_cluster_client",
            "this node runs no cluster client ([cluster] beacons is empty)",
        )
    })?;
    let status = ask(&client, "cluster", GetStatus, READ_WAIT).await?;
    // The beacons' current answer; when none answers, what the client last saw stands.
    let requirements = match ask(&client, "cluster", GetRequirements, READ_WAIT).await? {
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
