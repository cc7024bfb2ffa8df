//! `GET /v1/cluster/nodes`: every node the beacons know, online and offline (the cluster
//! client's `ListNodes`), with the resources each offers and requires. The web console draws
//! its cluster map from it.

use actix::Addr;
use actix_web::{web, HttpResponse};
use serde_json::json;
use troupe_beacon::client::{BeaconClient, ListNodes};

use super::{ask, Api, READ_WAIT};
use crate::error::ApiError;

pub(super) fn configure(cfg: &mut web::ServiceConfig) {
    cfg.route("/cluster/nodes", web::get().to(nodes));
}

/// `{"node": THIS NODE, "nodes": [...]}`, the nodes sorted by name, each as the beacon shows
/// it (`name`, `resource`, `requires`, `offers`, `status`, `last_seen_ms`, ...).
async fn nodes(api: web::Data<Api>) -> Result<HttpResponse, ApiError> {
    let client: Addr<BeaconClient> = api.published.lookup().ok_or_else(|| {
        ApiError::new(
            404,
            "no_cluster_client",
            "this node runs no cluster client ([cluster] beacons is empty)",
        )
    })?;
    let nodes = ask(&client, "cluster", ListNodes, READ_WAIT)
        .await?
        .map_err(|e| ApiError::unavailable("cluster", e))?;
    Ok(HttpResponse::Ok().json(json!({ "node": api.node.name(), "nodes": nodes })))
}
