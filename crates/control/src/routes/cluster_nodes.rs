//! `GET /v1/cluster/nodes`: every node the cluster (beacons or etcd) knows, online and offline (the cluster
//! client's `ListNodes`), with the resources each offers and requires. The web console draws
//! its cluster map from it.

use actix_web::{web, HttpResponse};
use serde_json::json;
use troupe_beacon::client::ListNodes;

use super::{ask_recipient, cluster_client, Api, READ_WAIT};
use crate::error::ApiError;

pub(super) fn configure(cfg: &mut web::ServiceConfig) {
    cfg.route("/cluster/nodes", web::get().to(nodes));
}

/// `{"node": THIS NODE, "nodes": [...]}`, the nodes sorted by name, each as the beacon shows
/// it (`name`, `resource`, `requires`, `offers`, `status`, `last_seen_ms`, ...).
async fn nodes(api: web::Data<Api>) -> Result<HttpResponse, ApiError> {
    let client = cluster_client(&api)?;
    let nodes = ask_recipient(&client.list, "cluster", ListNodes, READ_WAIT)
        .await?
        .map_err(|e| ApiError::unavailable("cluster", e))?;
    Ok(HttpResponse::Ok().json(json!({ "node": api.node.name(), "nodes": nodes })))
}
