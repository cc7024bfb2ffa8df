//! Services and the cluster registry, without I/O: the names and addresses a service may
//! declare (`requires`, `endpoints`), the `${cluster.RESOURCE.ENDPOINT}` references of its
//! `args`, and what a service that requires resources is given from their providers: its
//! environment (`TROUPE_REQ_<RESOURCE>_<ENDPOINT>`, `TROUPE_REQ_<RESOURCE>_NODES`), its
//! expanded arguments and, for `on_requirement_change = "notify"`, the payload sent over its
//! service channel.
//!
//! The decisions (wait, start, restart, notify, offer, withdraw) are the core's
//! ([`SupervisorCore`](crate::SupervisorCore)); the views it hands out are built here.

use std::collections::BTreeMap;
use std::fmt;

use serde::{Deserialize, Serialize};
use troupe_core::cluster::{requirement_env_name, Provider};

/// What a service sees of its requirements: for each resource it requires, its online
/// providers in node-name order (empty: none).
pub type RequirementsView = BTreeMap<String, Vec<Provider>>;

/// What a running service does when the providers of its requirements change (a provider
/// comes or goes, or changes its endpoints) or a requirement loses its last provider.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum OnRequirementChange {
    /// Restart it (not a crash: no plan element is used) so that it gets the new environment;
    /// if a requirement has no provider left, stop it and wait for one.
    #[default]
    Restart,
    /// Keep it running and send it the new picture over its service channel.
    Notify,
    /// Do nothing.
    Ignore,
}

impl fmt::Display for OnRequirementChange {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            OnRequirementChange::Restart => "restart",
            OnRequirementChange::Notify => "notify",
            OnRequirementChange::Ignore => "ignore",
        })
    }
}

/// Longest resource or endpoint name.
pub const MAX_NAME_BYTES: usize = 128;
/// Longest endpoint address.
pub const MAX_ADDRESS_BYTES: usize = 512;
/// What starts a reference to a provider's address in `args`.
pub const CLUSTER_REF: &str = "${cluster.";

/// A resource or endpoint name, as the beacons take it: 1 to 128 bytes of ASCII letters,
/// digits and `- _ . @ : /`. The message says what is wrong (without a field name).
pub fn check_name(name: &str) -> Result<(), String> {
    let valid = |c: char| c.is_ascii_alphanumeric() || "-_.@:/".contains(c);
    if name.is_empty() || name.len() > MAX_NAME_BYTES || !name.chars().all(valid) {
        return Err(format!(
            "\"{name}\" is not a valid name; use 1 to 128 ASCII letters, digits and - _ . @ : /"
        ));
    }
    Ok(())
}

/// An endpoint address, as the beacons take it: 1 to 512 bytes, no spaces or control
/// characters; and no `${cluster.…}` reference (an address is offered as written).
pub fn check_address(address: &str) -> Result<(), String> {
    if address.is_empty() || address.len() > MAX_ADDRESS_BYTES {
        return Err(format!(
            "\"{address}\" is not a valid address; use 1 to 512 bytes"
        ));
    }
    if address.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err(format!(
            "\"{}\" is not a valid address; it must not contain spaces or control characters",
            address.escape_debug()
        ));
    }
    if address.contains(CLUSTER_REF) {
        return Err(format!(
            "\"{address}\": ${{cluster.…}} references are for args, not endpoints"
        ));
    }
    Ok(())
}

/// The environment variable listing the nodes that provide `resource`:
/// `TROUPE_REQ_<RESOURCE>_NODES`, upper-cased as
/// [`requirement_env_name`] does. (An endpoint named `nodes` would have the same variable:
/// the node list wins.)
pub fn nodes_env_name(resource: &str) -> String {
    requirement_env_name(resource, "nodes")
}

/// One `${cluster.RESOURCE.ENDPOINT}` reference: `RESOURCE` is the text up to the first `.`,
/// `ENDPOINT` the rest.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClusterRef {
    /// Where it starts in the argument (byte offset of `$`).
    pub start: usize,
    /// Where it ends (byte offset after `}`).
    pub end: usize,
    /// The resource.
    pub resource: String,
    /// The endpoint.
    pub endpoint: String,
}

impl fmt::Display for ClusterRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "${{cluster.{}.{}}}", self.resource, self.endpoint)
    }
}

/// The `${cluster.…}` references of `arg`, in order. A reference that is not closed or lacks
/// its resource or endpoint is an error quoting it.
pub fn cluster_refs(arg: &str) -> Result<Vec<ClusterRef>, String> {
    let mut refs = Vec::new();
    let mut from = 0;
    while let Some(found) = arg[from..].find(CLUSTER_REF) {
        let start = from + found;
        let inner_start = start + CLUSTER_REF.len();
        let Some(close) = arg[inner_start..].find('}') else {
            return Err(format!(
                "\"{}\" is not closed: write ${{cluster.RESOURCE.ENDPOINT}}",
                &arg[start..]
            ));
        };
        let inner = &arg[inner_start..inner_start + close];
        let end = inner_start + close + 1;
        match inner.split_once('.') {
            Some((resource, endpoint)) if !resource.is_empty() && !endpoint.is_empty() => {
                refs.push(ClusterRef {
                    start,
                    end,
                    resource: resource.to_string(),
                    endpoint: endpoint.to_string(),
                });
            }
            _ => {
                return Err(format!(
                    "\"{}\" names no endpoint: write ${{cluster.RESOURCE.ENDPOINT}}",
                    &arg[start..end]
                ))
            }
        }
        from = end;
    }
    Ok(refs)
}

/// Checks the `${cluster.…}` references of `args` against `requires`; the message names the
/// argument (`args[2]: ...`).
pub fn check_args(args: &[String], requires: &[String]) -> Result<(), String> {
    for (i, arg) in args.iter().enumerate() {
        for r in cluster_refs(arg).map_err(|e| format!("args[{i}]: {e}"))? {
            if !requires.contains(&r.resource) {
                return Err(format!(
                    "args[{i}]: {r} names resource \"{}\", which is not in requires",
                    r.resource
                ));
            }
        }
    }
    Ok(())
}

/// The first provider's address of `endpoint` among `providers` (those that offer it).
fn first_address<'a>(providers: &'a [Provider], endpoint: &str) -> Option<&'a str> {
    providers
        .iter()
        .find_map(|p| p.endpoints.get(endpoint))
        .map(String::as_str)
}

/// `args` with each `${cluster.RESOURCE.ENDPOINT}` replaced by the address of `ENDPOINT` of
/// the first provider (in node-name order) of `RESOURCE` that offers it. A reference nothing
/// answers is an error naming it.
pub fn expand_args(args: &[String], view: &RequirementsView) -> Result<Vec<String>, String> {
    args.iter()
        .enumerate()
        .map(|(i, arg)| {
            let refs = cluster_refs(arg).map_err(|e| format!("args[{i}]: {e}"))?;
            if refs.is_empty() {
                return Ok(arg.clone());
            }
            let mut out = String::with_capacity(arg.len());
            let mut from = 0;
            for r in refs {
                let providers = view.get(&r.resource).map(Vec::as_slice).unwrap_or(&[]);
                let Some(address) = first_address(providers, &r.endpoint) else {
                    return Err(format!(
                        "args[{i}]: {r}: no provider of \"{}\" offers an endpoint \"{}\"",
                        r.resource, r.endpoint
                    ));
                };
                out.push_str(&arg[from..r.start]);
                out.push_str(address);
                from = r.end;
            }
            out.push_str(&arg[from..]);
            Ok(out)
        })
        .collect()
}

/// The variables a service that requires the resources of `view` gets: for each resource R
/// and each endpoint name E its providers offer, `TROUPE_REQ_<R>_<E>` = the addresses of E of
/// every provider offering it, comma-separated, in node-name order; and
/// `TROUPE_REQ_<R>_NODES` = the providers' node names, comma-separated (empty without
/// providers).
pub fn requirement_env(view: &RequirementsView) -> Vec<(String, String)> {
    let mut env = Vec::new();
    for (resource, providers) in view {
        let mut names: Vec<&str> = providers
            .iter()
            .flat_map(|p| p.endpoints.keys().map(String::as_str))
            .collect();
        names.sort_unstable();
        names.dedup();
        for name in names {
            let addresses: Vec<&str> = providers
                .iter()
                .filter_map(|p| p.endpoints.get(name).map(String::as_str))
                .collect();
            env.push((requirement_env_name(resource, name), addresses.join(",")));
        }
        let nodes: Vec<&str> = providers.iter().map(|p| p.node.as_str()).collect();
        env.push((nodes_env_name(resource), nodes.join(",")));
    }
    env
}

/// The resources of `view` without a provider.
pub fn unmet(view: &RequirementsView) -> Vec<String> {
    view.iter()
        .filter(|(_, providers)| providers.is_empty())
        .map(|(resource, _)| resource.clone())
        .collect()
}

/// What an `on_requirement_change = "notify"` service is sent over its channel:
/// `{"troupe":"requirements","requirements":{"broker":[{"node":"hub-1","endpoints":{...}}]},
/// "unmet":["db"]}`.
pub fn notify_payload(view: &RequirementsView) -> serde_json::Value {
    let requirements: serde_json::Map<String, serde_json::Value> = view
        .iter()
        .map(|(resource, providers)| {
            let list = providers
                .iter()
                .map(|p| serde_json::json!({ "node": p.node, "endpoints": p.endpoints }))
                .collect();
            (resource.clone(), serde_json::Value::Array(list))
        })
        .collect();
    serde_json::json!({
        "troupe": "requirements",
        "requirements": requirements,
        "unmet": unmet(view),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn provider(node: &str, endpoints: &[(&str, &str)]) -> Provider {
        Provider::new(node, endpoints)
    }

    fn view() -> RequirementsView {
        BTreeMap::from([
            (
                "broker".to_string(),
                vec![
                    provider(
                        "hub-1",
                        &[("frontend", "tcp://h1:5555"), ("backend", "tcp://h1:5556")],
                    ),
                    provider("hub-2", &[("frontend", "tcp://h2:5555")]),
                ],
            ),
            ("db".to_string(), vec![]),
        ])
    }

    #[test]
    fn names_and_addresses_follow_the_beacon_rules() {
        for good in ["broker", "db-main", "a.b_c@d:e/f", &"x".repeat(128)] {
            assert!(check_name(good).is_ok(), "{good}");
        }
        for bad in ["", "a b", "é", &"x".repeat(129), "a=b"] {
            assert!(check_name(bad).is_err(), "{bad}");
        }
        for good in [
            "tcp://127.0.0.1:5555",
            "ipc:///run/x.sock",
            &"a".repeat(512),
        ] {
            assert!(check_address(good).is_ok(), "{good}");
        }
        for bad in [
            "",
            "tcp://a b",
            "tcp://a\tb",
            "x\u{7}",
            &"a".repeat(513),
            "${cluster.broker.frontend}",
        ] {
            assert!(check_address(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn cluster_references_parse_and_are_checked_against_requires() {
        let refs = cluster_refs("--to=${cluster.broker.echo.backend},${cluster.db.sql}").unwrap();
        assert_eq!(refs.len(), 2);
        assert_eq!(
            (refs[0].resource.as_str(), refs[0].endpoint.as_str()),
            ("broker", "echo.backend")
        );
        assert_eq!(refs[1].to_string(), "${cluster.db.sql}");
        assert!(cluster_refs("${cluster.broker")
            .unwrap_err()
            .contains("not closed"));
        assert!(cluster_refs("${cluster.broker}")
            .unwrap_err()
            .contains("names no endpoint"));
        assert!(cluster_refs("plain ${HOME}").unwrap().is_empty());

        let requires = vec!["broker".to_string()];
        assert!(check_args(&["${cluster.broker.x}".into()], &requires).is_ok());
        let err = check_args(&["a".into(), "${cluster.db.sql}".into()], &requires).unwrap_err();
        assert_eq!(
            err,
            "args[1]: ${cluster.db.sql} names resource \"db\", which is not in requires"
        );
    }

    #[test]
    fn args_expand_to_the_first_provider_offering_the_endpoint() {
        let args = vec![
            "--front=${cluster.broker.frontend}".to_string(),
            "${cluster.broker.backend}|${cluster.broker.frontend}".to_string(),
            "plain".to_string(),
        ];
        assert_eq!(
            expand_args(&args, &view()).unwrap(),
            [
                "--front=tcp://h1:5555",
                "tcp://h1:5556|tcp://h1:5555",
                "plain"
            ]
        );
        let err = expand_args(&["${cluster.broker.nope}".into()], &view()).unwrap_err();
        assert_eq!(
            err,
            "args[0]: ${cluster.broker.nope}: no provider of \"broker\" offers an endpoint \"nope\""
        );
        assert!(expand_args(&["${cluster.db.sql}".into()], &view())
            .unwrap_err()
            .contains("${cluster.db.sql}"));
    }

    #[test]
    fn the_environment_lists_every_providers_addresses_and_nodes() {
        let env: BTreeMap<String, String> = requirement_env(&view()).into_iter().collect();
        assert_eq!(
            env,
            BTreeMap::from([
                (
                    "TROUPE_REQ_BROKER_FRONTEND".to_string(),
                    "tcp://h1:5555,tcp://h2:5555".to_string()
                ),
                (
                    "TROUPE_REQ_BROKER_BACKEND".to_string(),
                    "tcp://h1:5556".to_string()
                ),
                (
                    "TROUPE_REQ_BROKER_NODES".to_string(),
                    "hub-1,hub-2".to_string()
                ),
                ("TROUPE_REQ_DB_NODES".to_string(), String::new()),
            ])
        );
        assert_eq!(nodes_env_name("db-main"), "TROUPE_REQ_DB_MAIN_NODES");
    }

    #[test]
    fn the_notify_payload_names_providers_and_unmet_resources() {
        let payload = notify_payload(&view());
        assert_eq!(payload["troupe"], "requirements");
        assert_eq!(payload["requirements"]["broker"][0]["node"], "hub-1");
        assert_eq!(
            payload["requirements"]["broker"][1]["endpoints"]["frontend"],
            "tcp://h2:5555"
        );
        assert_eq!(payload["requirements"]["db"], serde_json::json!([]));
        assert_eq!(payload["unmet"], serde_json::json!(["db"]));
    }
}
