//! The contract between the cluster client (the node's link to its beacons) and the roles that
//! use the registry without depending on the beacon crate: the supervisor registers its
//! services' endpoints and follows its services' requirements through it.
//!
//! When `[cluster]` names beacons, the cluster client starts before every role and publishes a
//! [`ClusterHandle`] in the node's [`Published`](crate::context::Published) registry.
//!
//! - [`Offer`] adds or replaces endpoints of one resource this node offers (creating the
//!   resource when it is new); [`Withdraw`] removes a resource added at run time. Both
//!   re-register the node with every beacon at once.
//! - [`WatchProviders`] follows the online providers of some resources: the recipient gets a
//!   [`ProvidersChanged`] with the whole current picture first and after every change.

use std::collections::BTreeMap;

use actix::{Message, Recipient};

/// One online node offering a resource, with the endpoints it registered for it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Provider {
    /// The node's name.
    pub node: String,
    /// The endpoints it offers for this resource: name → address.
    pub endpoints: BTreeMap<String, String>,
}

impl Provider {
    /// Node `node` offering `endpoints` (name, address).
    pub fn new<'a>(
        node: &str,
        endpoints: impl IntoIterator<Item = &'a (&'a str, &'a str)>,
    ) -> Self {
        Provider {
            node: node.to_string(),
            endpoints: endpoints
                .into_iter()
                .map(|(name, address)| (name.to_string(), address.to_string()))
                .collect(),
        }
    }
}

/// The current online providers of the watched resources.
#[derive(Debug, Clone, PartialEq, Eq, Message)]
#[rtype(result = "()")]
pub struct ProvidersChanged {
    /// For every watched resource, its online providers sorted by node name (possibly none).
    pub providers: BTreeMap<String, Vec<Provider>>,
    /// False while no beacon answers: the picture is unknown, and every list above is empty.
    pub reachable: bool,
}

impl ProvidersChanged {
    /// The watched resources with no online provider.
    pub fn unmet(&self) -> Vec<String> {
        self.providers
            .iter()
            .filter(|(_, providers)| providers.is_empty())
            .map(|(resource, _)| resource.clone())
            .collect()
    }
}

/// Names one [`WatchProviders`] subscription.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct WatchId(pub u64);

/// Follows the online providers of `resources` (the node itself included when it offers one).
/// `recipient` receives a [`ProvidersChanged`] as soon as the picture is known, then after
/// every change to it (and only then).
#[derive(Message)]
#[rtype(result = "Result<WatchId, String>")]
pub struct WatchProviders {
    /// The resources to follow (at least one).
    pub resources: Vec<String>,
    /// Who is told.
    pub recipient: Recipient<ProvidersChanged>,
}

/// Ends a [`WatchProviders`] subscription.
#[derive(Debug, Clone, Copy, Message)]
#[rtype(result = "()")]
pub struct Unwatch(pub WatchId);

/// Adds `endpoints` to what this node offers for `resource` (replacing endpoints of the same
/// name) and re-registers the node. A resource the node did not offer yet is added. An invalid
/// name or address is refused with a sentence naming it.
#[derive(Debug, Clone, Message)]
#[rtype(result = "Result<(), String>")]
pub struct Offer {
    /// The resource, e.g. `broker` or a supervised service's id.
    pub resource: String,
    /// Name → address.
    pub endpoints: BTreeMap<String, String>,
}

/// Removes endpoints this node offers for `resource` and re-registers the node: the named
/// ones, or with `names` empty the resource itself (a resource of one of the node's roles or
/// one declared in `[cluster] resources` stays offered, with no endpoints).
#[derive(Debug, Clone, Message)]
#[rtype(result = "Result<(), String>")]
pub struct Withdraw {
    /// The resource.
    pub resource: String,
    /// Endpoint names to remove; empty: all of them, and the resource if it was added at run
    /// time.
    pub names: Vec<String>,
}

/// What the cluster client publishes for the roles.
#[derive(Clone)]
pub struct ClusterHandle {
    /// Where [`Offer`]s go.
    pub offer: Recipient<Offer>,
    /// Where [`Withdraw`]s go.
    pub withdraw: Recipient<Withdraw>,
    /// Where [`WatchProviders`] go.
    pub watch: Recipient<WatchProviders>,
    /// Where [`Unwatch`]es go.
    pub unwatch: Recipient<Unwatch>,
    /// The beacons the node uses, as configured (given to supervised services in
    /// [`ENV_BEACONS`], so that they can discover through the same registry).
    pub beacons: Vec<String>,
    /// The cluster cookie file, if the node uses one (given to services in
    /// [`ENV_COOKIE_FILE`]).
    pub cookie_file: Option<std::path::PathBuf>,
    /// For a node whose membership is in etcd: what a service needs to reach it, as JSON
    /// (given to services in [`ENV_CLUSTER`]).
    pub cluster: Option<String>,
}

/// Environment variable carrying, on a node whose membership is in etcd, the `[cluster]` keys a
/// supervised service needs to discover through it: JSON with `backend`, the `etcd_*` keys and
/// the intervals (no secret: the password is in `etcd_password_file`).
pub const ENV_CLUSTER: &str = "TROUPE_CLUSTER";

/// Environment variable listing the node's beacons (space-separated) for supervised services.
pub const ENV_BEACONS: &str = "TROUPE_BEACONS";
/// Environment variable naming the node's cluster cookie file for supervised services.
pub const ENV_COOKIE_FILE: &str = "TROUPE_COOKIE_FILE";

/// The environment variable that carries the addresses of `endpoint` of the providers of
/// `resource` to a service that requires it: `TROUPE_REQ_<RESOURCE>_<ENDPOINT>`, upper case,
/// every character other than an ASCII letter or digit written `_`.
pub fn requirement_env_name(resource: &str, endpoint: &str) -> String {
    let mut name = String::from("TROUPE_REQ_");
    push_env_part(&mut name, resource);
    name.push('_');
    push_env_part(&mut name, endpoint);
    name
}

fn push_env_part(name: &mut String, part: &str) {
    name.extend(part.chars().map(|c| match c {
        c if c.is_ascii_alphanumeric() => c.to_ascii_uppercase(),
        _ => '_',
    }));
}

/// `endpoint` as other machines can reach it: a TCP socket bound to every interface
/// (`tcp://0.0.0.0:…`, `tcp://[::]:…`, `tcp://*:…`) is given `host` instead (when `host` is not
/// empty); other addresses are returned as they are.
pub fn advertised(endpoint: &str, host: &str) -> String {
    let Some(rest) = endpoint.strip_prefix("tcp://") else {
        return endpoint.to_string();
    };
    let Some((bound_host, port)) = rest.rsplit_once(':') else {
        return endpoint.to_string();
    };
    match bound_host {
        "*" | "0.0.0.0" | "[::]" | "::" if !host.is_empty() => format!("tcp://{host}:{port}"),
        _ => endpoint.to_string(),
    }
}

/// This machine's host name, or an empty string if it has none.
pub fn host_name() -> String {
    let mut buf = [0u8; 256];
    // SAFETY: gethostname writes at most buf.len() bytes into the buffer we own.
    let rc = unsafe { libc::gethostname(buf.as_mut_ptr().cast(), buf.len()) };
    if rc != 0 {
        return String::new();
    }
    let end = buf.iter().position(|&b| b == 0).unwrap_or(buf.len());
    String::from_utf8_lossy(&buf[..end]).into_owned()
}

/// Offers `endpoints` under `resource` through the node's cluster client, if it has one; a
/// refusal or a stopped client is logged (the role serves all the same, it is only not
/// discoverable).
pub async fn offer_if_clustered(
    published: &crate::context::Published,
    resource: &str,
    endpoints: BTreeMap<String, String>,
) {
    let Some(cluster) = published.lookup::<ClusterHandle>() else {
        return;
    };
    let shown = format!("{endpoints:?}");
    let offer = Offer {
        resource: resource.to_string(),
        endpoints,
    };
    match cluster.offer.send(offer).await {
        Ok(Ok(())) => {
            tracing::info!(resource, endpoints = %shown, "endpoints registered with the cluster")
        }
        Ok(Err(err)) => {
            tracing::warn!(resource, endpoints = %shown, %err, "the cluster client refused the endpoints")
        }
        Err(_) => tracing::warn!(
            resource,
            "the cluster client has stopped; endpoints not registered"
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wildcard_hosts_are_advertised_at_the_given_host() {
        assert_eq!(
            advertised("tcp://0.0.0.0:7400", "hub-1"),
            "tcp://hub-1:7400"
        );
        assert_eq!(
            advertised("tcp://*:7400", "10.0.0.1"),
            "tcp://10.0.0.1:7400"
        );
        assert_eq!(advertised("tcp://[::]:7400", "h"), "tcp://h:7400");
        assert_eq!(advertised("tcp://0.0.0.0:7400", ""), "tcp://0.0.0.0:7400");
        assert_eq!(advertised("tcp://127.0.0.1:1", "h"), "tcp://127.0.0.1:1");
        assert_eq!(advertised("ipc:///tmp/x", "h"), "ipc:///tmp/x");
    }

    #[test]
    fn requirement_env_names_are_upper_case_and_safe() {
        assert_eq!(
            requirement_env_name("broker", "majordomo"),
            "TROUPE_REQ_BROKER_MAJORDOMO"
        );
        assert_eq!(
            requirement_env_name("broker", "echo.backend"),
            "TROUPE_REQ_BROKER_ECHO_BACKEND"
        );
        assert_eq!(
            requirement_env_name("db-main", "a/b"),
            "TROUPE_REQ_DB_MAIN_A_B"
        );
    }

    #[test]
    fn unmet_lists_resources_without_providers() {
        let provider = Provider {
            node: "hub".into(),
            endpoints: BTreeMap::new(),
        };
        let changed = ProvidersChanged {
            providers: [
                ("broker".to_string(), vec![provider]),
                ("db".to_string(), vec![]),
            ]
            .into(),
            reachable: true,
        };
        assert_eq!(changed.unmet(), ["db"]);
    }
}
