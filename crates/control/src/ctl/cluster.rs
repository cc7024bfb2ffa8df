//! `troupe ctl --cluster status`: every online node that registered a control endpoint (the
//! `control` resource, endpoint `control`), asked in parallel with the same token, summed up in
//! one table. A node that does not answer within the timeout is listed as such.

use std::time::Duration;

use hyper::Method;
use serde::Serialize;
use serde_json::Value;
use troupe_beacon::client::{start_client, LookupResource};
use troupe_beacon::ClusterConfig;

use crate::client::{Client, Target};
use crate::token::Token;

/// The resource a node registers its TCP control address under, and the endpoint's name.
pub const CONTROL_RESOURCE: &str = "control";

/// One node's line.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct NodeSummary {
    /// The node's name in the registry.
    pub node: String,
    /// Its control URL.
    pub url: String,
    /// Its roles, in start order (empty when it did not answer).
    pub roles: Vec<String>,
    /// Services up (running or ready).
    pub services_up: Option<u64>,
    /// Services listed (deleted ones left out).
    pub services_total: Option<u64>,
    /// Restarts within the last hour, over its services.
    pub restarts_last_hour: Option<u64>,
    /// Requests waiting in its broker, over the broker's services.
    pub broker_queue_depth: Option<u64>,
    /// Why it could not be asked, if it could not.
    pub error: Option<String>,
}

/// Sums up `/v1/node`, `/v1/services` (`{"services": [...]}`) and `/v1/broker` (each `None`
/// when the node does not run that role).
pub fn summarize(
    node: &str,
    url: &str,
    view: &Value,
    services: Option<&Value>,
    broker: Option<&Value>,
) -> NodeSummary {
    let roles = view["roles"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|r| r["name"].as_str())
        .filter(|r| *r != "cluster")
        .map(String::from)
        .collect();
    let listed: Vec<&Value> = services
        .and_then(|s| s["services"].as_array())
        .into_iter()
        .flatten()
        .filter(|s| s["state"] != "deleted")
        .collect();
    let up = listed
        .iter()
        .filter(|s| s["state"] == "running" || s["state"] == "ready")
        .count() as u64;
    let restarts = listed
        .iter()
        .map(|s| s["restarts_last_hour"].as_u64().unwrap_or(0))
        .sum();
    let queue = broker.map(|b| {
        b["services"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|s| s["waiting"].as_u64().unwrap_or(0))
            .sum()
    });
    NodeSummary {
        node: node.to_string(),
        url: url.to_string(),
        roles,
        services_up: services.map(|_| up),
        services_total: services.map(|_| listed.len() as u64),
        restarts_last_hour: services.map(|_| restarts),
        broker_queue_depth: queue,
        error: None,
    }
}

/// The table `ctl --cluster status` prints.
pub fn render(summaries: &[NodeSummary]) -> String {
    let dash = |v: Option<u64>| v.map_or("-".to_string(), |v| v.to_string());
    let rows: Vec<Vec<String>> = summaries
        .iter()
        .map(|s| {
            let services = match (s.services_up, s.services_total) {
                (Some(up), Some(total)) => format!("{up}/{total}"),
                _ => "-".to_string(),
            };
            vec![
                s.node.clone(),
                match &s.error {
                    Some(_) => "-".to_string(),
                    None => s.roles.join(","),
                },
                services,
                dash(s.restarts_last_hour),
                dash(s.broker_queue_depth),
                s.error.clone().unwrap_or_else(|| "ok".to_string()),
            ]
        })
        .collect();
    if rows.is_empty() {
        return "no online node has registered a control endpoint ([control] bind)\n".to_string();
    }
    super::render::table(
        &[
            "NODE",
            "ROLES",
            "SERVICES UP",
            "RESTARTS (1H)",
            "BROKER QUEUE",
            "STATUS",
        ],
        &rows,
    )
}

/// Asks one node; every question within `timeout` of the start.
async fn ask(node: String, url: String, token: Option<Token>, timeout: Duration) -> NodeSummary {
    let failed = |error: String| NodeSummary {
        node: node.clone(),
        url: url.clone(),
        roles: Vec::new(),
        services_up: None,
        services_total: None,
        restarts_last_hour: None,
        broker_queue_depth: None,
        error: Some(error),
    };
    let Some(authority) = url.strip_prefix("http://").map(|a| a.trim_end_matches('/')) else {
        return failed(format!(
            "its control endpoint \"{url}\" is not http://HOST:PORT"
        ));
    };
    let client = Client::new(
        Target::Tcp {
            authority: authority.to_string(),
            token,
        },
        timeout,
    );
    let get = |path: &'static str| {
        let client = &client;
        async move {
            let answer = client.call(Method::GET, path, None, timeout).await?;
            let value: Value = serde_json::from_slice(&answer.body).unwrap_or(Value::Null);
            Ok::<_, crate::client::ClientError>((answer.status, value))
        }
    };
    let asked = tokio::time::timeout(timeout, async {
        let (view, services, broker) =
            futures::join!(get("/v1/node"), get("/v1/services"), get("/v1/broker"));
        (view, services, broker)
    })
    .await;
    let Ok((view, services, broker)) = asked else {
        return failed(format!(
            "no answer within {}",
            troupe_core::settings::Duration(timeout)
        ));
    };
    let (status, view) = match view {
        Ok(answer) => answer,
        Err(err) => return failed(err.to_string()),
    };
    if status != 200 {
        let message = view["error"]["message"]
            .as_str()
            .map(String::from)
            .unwrap_or_else(|| format!("answered {status}"));
        return failed(message);
    }
    let found = |answer: Result<(u16, Value), _>| match answer {
        Ok((200, value)) => Some(value),
        _ => None,
    };
    let (services, broker) = (found(services), found(broker));
    summarize(&node, &url, &view, services.as_ref(), broker.as_ref())
}

/// Runs `ctl --cluster status`: finds the control endpoints through `cluster`'s beacons (or
/// etcd) and
/// asks every node. Returns the exit code: 0 when every node answered, 1 otherwise.
pub fn status(cluster: &ClusterConfig, token: Option<Token>, timeout: Duration, json: bool) -> i32 {
    if !cluster.runs_client() {
        eprintln!(
            "troupe: ctl --cluster: no beacon to ask: set `beacons` in the config's [cluster] table or pass --beacon"
        );
        return 2;
    }
    let cluster = cluster.clone();
    let outcome = actix_rt::System::new().block_on(async move {
        let node = format!("{}.ctl", troupe_core::cluster::host_name());
        let (client, done) = start_client(&cluster, &node, false)
            .await
            .map_err(|err| err.to_string())?;
        let found = client
            .lookup
            .send(LookupResource(CONTROL_RESOURCE.to_string()))
            .await;
        let _ = client.shutdown.send(troupe_core::Shutdown).await;
        let _ = done.await;
        let nodes = found
            .map_err(|_| "the cluster client stopped".to_string())?
            .map_err(|err| err.to_string())?;
        let asks = nodes.iter().filter_map(|node| {
            let url = node
                .endpoints_for(CONTROL_RESOURCE)?
                .get(CONTROL_RESOURCE)?;
            Some(ask(node.name.clone(), url.clone(), token.clone(), timeout))
        });
        Ok::<_, String>(futures::future::join_all(asks).await)
    });
    let summaries = match outcome {
        Ok(summaries) => summaries,
        Err(err) => {
            eprintln!("troupe: ctl --cluster: {err}");
            return 1;
        }
    };
    let text = match json {
        true => serde_json::to_string_pretty(&summaries).unwrap_or_default() + "\n",
        false => render(&summaries),
    };
    print!("{text}");
    if summaries.iter().any(|s| s.error.is_some()) {
        1
    } else {
        0
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn a_node_is_summed_up_from_its_answers() {
        let view =
            json!({"roles": [{"name": "cluster"}, {"name": "supervisor"}, {"name": "broker"}]});
        let services = json!({"services": [
            {"state": "running", "restarts_last_hour": 2},
            {"state": "ready", "restarts_last_hour": 1},
            {"state": "failed", "restarts_last_hour": 5},
            {"state": "deleted", "restarts_last_hour": 9},
        ]});
        let broker = json!({"services": [{"waiting": 3}, {"waiting": 4}]});
        let s = summarize("a", "http://a:1", &view, Some(&services), Some(&broker));
        assert_eq!(s.roles, ["supervisor", "broker"]);
        assert_eq!((s.services_up, s.services_total), (Some(2), Some(3)));
        assert_eq!(s.restarts_last_hour, Some(8));
        assert_eq!(s.broker_queue_depth, Some(7));
        let none = summarize("b", "http://b:1", &view, None, None);
        assert_eq!((none.services_total, none.broker_queue_depth), (None, None));
    }

    #[test]
    fn the_table_lists_silent_nodes_as_such() {
        let view = json!({"roles": [{"name": "beacon"}]});
        let mut silent = summarize("b", "http://b:1", &view, None, None);
        silent.error = Some("no answer within 2s".into());
        let text = render(&[summarize("a", "http://a:1", &view, None, None), silent]);
        assert!(text.contains("NODE"), "{text}");
        assert!(
            text.lines()
                .any(|l| l.starts_with("a ") && l.ends_with("ok")),
            "{text}"
        );
        assert!(text.contains("no answer within 2s"), "{text}");
        assert!(render(&[]).contains("no online node"));
    }
}
