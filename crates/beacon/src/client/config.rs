//! The node config's `[cluster]` table: which backend holds the membership (the beacons, or
//! an etcd cluster), what this node offers and needs, and the cluster's credentials.
//!
//! A node offers one resource per role it runs (named after the role), plus the resources
//! declared in `resources` (and the deprecated `resource`). `endpoints` belong to the first
//! declared resource if there is one, else to the first role's.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use troupe_core::settings::{Duration, ZmqEndpoint};
use troupe_core::ConfigError;

use crate::auth::Cookie;
use crate::protocol::{check_name, Registration, MAX_HEARTBEAT_MS, MAX_OFFERS, MIN_HEARTBEAT_MS};

/// Where the cluster's membership lives.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Backend {
    /// Troupe's own beacons (`beacons`): small clusters, no dependency.
    #[default]
    Beacon,
    /// An etcd cluster (`etcd_endpoints`): replicated and consistent.
    Etcd,
}

impl Backend {
    /// The name as the config writes it.
    pub fn as_str(self) -> &'static str {
        match self {
            Backend::Beacon => "beacon",
            Backend::Etcd => "etcd",
        }
    }
}

/// The default `etcd_prefix`.
pub const DEFAULT_ETCD_PREFIX: &str = "/troupe/default/";

/// The `[cluster]` table.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ClusterConfig {
    /// Where the membership lives: `beacon` (the default) or `etcd`.
    pub backend: Backend,
    /// Beacons to register with; the node registers with each of them. Empty: the node runs no
    /// cluster client.
    pub beacons: Vec<ZmqEndpoint>,
    /// Resources this node offers in addition to one per role it runs.
    pub resources: Vec<String>,
    /// Deprecated: one more resource in `resources` when not empty.
    pub resource: String,
    /// Resources this node needs.
    pub requires: Vec<String>,
    /// Endpoints of the first resource in `resources` (of the first role's resource when none
    /// is declared): name → address. Roles add theirs at run time.
    pub endpoints: BTreeMap<String, String>,
    /// Free-form data registered with the node.
    pub metadata: Map<String, Value>,
    /// The cluster's shared secret. Prefer `cookie_file`: this value shows in `check-config`.
    pub cookie: String,
    /// A file holding the cookie, readable by its owner only (mode 0600).
    pub cookie_file: PathBuf,
    /// How often this node heartbeats to each beacon.
    pub heartbeat_interval: Duration,
    /// Heartbeat intervals without any answer after which a beacon counts as unreachable and
    /// its connection is rebuilt.
    pub liveness: u32,
    /// How long one beacon may take to answer a query before the next beacon is asked.
    pub request_timeout: Duration,
    /// With `backend = "etcd"`: the etcd cluster's client URLs.
    pub etcd_endpoints: Vec<String>,
    /// With `backend = "etcd"`: the key prefix of this Troupe cluster (one etcd may hold
    /// several); starts and ends with `/`.
    pub etcd_prefix: String,
    /// With `backend = "etcd"`: the CA certificate (PEM) that signs the etcd servers'.
    pub etcd_ca_file: PathBuf,
    /// With `backend = "etcd"`: this node's client certificate (PEM), with `etcd_key_file`.
    pub etcd_cert_file: PathBuf,
    /// With `backend = "etcd"`: the key (PEM) of `etcd_cert_file`, readable by its owner only.
    pub etcd_key_file: PathBuf,
    /// With `backend = "etcd"`: the etcd user, with `etcd_password_file`.
    pub etcd_user: String,
    /// With `backend = "etcd"`: a file holding `etcd_user`'s password (mode 0600).
    pub etcd_password_file: PathBuf,
}

impl Default for ClusterConfig {
    fn default() -> Self {
        ClusterConfig {
            backend: Backend::Beacon,
            beacons: Vec::new(),
            resources: Vec::new(),
            resource: String::new(),
            requires: Vec::new(),
            endpoints: BTreeMap::new(),
            metadata: Map::new(),
            cookie: String::new(),
            cookie_file: PathBuf::new(),
            heartbeat_interval: Duration::from_secs(1),
            liveness: 3,
            request_timeout: Duration::from_secs(2),
            etcd_endpoints: Vec::new(),
            etcd_prefix: DEFAULT_ETCD_PREFIX.to_string(),
            etcd_ca_file: PathBuf::new(),
            etcd_cert_file: PathBuf::new(),
            etcd_key_file: PathBuf::new(),
            etcd_user: String::new(),
            etcd_password_file: PathBuf::new(),
        }
    }
}

impl ClusterConfig {
    /// The name of the config table.
    pub const TABLE: &'static str = "cluster";

    /// Checks the rules the types cannot express; errors name the key.
    pub fn validate(&self) -> Result<(), ConfigError> {
        for (i, beacon) in self.beacons.iter().enumerate() {
            if self.beacons[..i].contains(beacon) {
                return Err(ConfigError::new(
                    "beacons",
                    format!("{beacon} is listed twice"),
                ));
            }
        }
        if self.resources.len() > MAX_OFFERS {
            return Err(ConfigError::new(
                "resources",
                format!(
                    "{} resources, at most {MAX_OFFERS} allowed",
                    self.resources.len()
                ),
            ));
        }
        for (i, resource) in self.resources.iter().enumerate() {
            check_name(&format!("resources[{i}]"), resource)
                .map_err(|err| ConfigError::new("resources", err.to_string()))?;
            if self.resources[..i].contains(resource) {
                return Err(ConfigError::new(
                    "resources",
                    format!("\"{resource}\" is listed twice"),
                ));
            }
        }
        if !self.resource.is_empty() {
            check_name("resource", &self.resource)
                .map_err(|err| ConfigError::new("resource", err.to_string()))?;
        }
        // The rules of a registration for `requires`, `endpoints` and `metadata` (the
        // resources are checked above, the roles' names as the roles are).
        let registration = Registration {
            resource: "-".into(),
            requires: self.requires.clone(),
            endpoints: self.endpoints.clone(),
            offers: BTreeMap::new(),
            metadata: self.metadata.clone(),
        };
        registration.check().map_err(|err| {
            let key = err.field.split(['[', '.']).next().unwrap_or_default();
            ConfigError::new(key, err.to_string())
        })?;
        if !self.cookie.is_empty() && !self.cookie_file.as_os_str().is_empty() {
            return Err(ConfigError::new(
                "cookie",
                "set `cookie` or `cookie_file`, not both",
            ));
        }
        if !self.cookie.is_empty() && self.cookie.trim().is_empty() {
            return Err(ConfigError::new("cookie", "must not be only whitespace"));
        }
        let interval = self.heartbeat_interval.get().as_millis() as u64;
        if !(MIN_HEARTBEAT_MS..=MAX_HEARTBEAT_MS).contains(&interval) {
            return Err(ConfigError::new(
                "heartbeat_interval",
                format!(
                    "{} is out of range; use {MIN_HEARTBEAT_MS}ms to {}m",
                    self.heartbeat_interval,
                    MAX_HEARTBEAT_MS / 60_000
                ),
            ));
        }
        if !(1..=100).contains(&self.liveness) {
            return Err(ConfigError::new(
                "liveness",
                format!("{} is out of range 1..=100", self.liveness),
            ));
        }
        if self.request_timeout.get().is_zero() {
            return Err(ConfigError::new(
                "request_timeout",
                "must be longer than 0s",
            ));
        }
        self.validate_etcd()
    }

    /// This config asking `beacons` instead (a command's `--beacon`): the beacon backend,
    /// with the same cookie.
    pub fn with_beacons(&self, beacons: Vec<ZmqEndpoint>) -> ClusterConfig {
        ClusterConfig {
            backend: Backend::Beacon,
            beacons,
            etcd_endpoints: Vec::new(),
            etcd_prefix: DEFAULT_ETCD_PREFIX.to_string(),
            ..self.clone()
        }
    }

    /// What a service (or a tool) needs of this table to ask the same cluster: the backend,
    /// where it is, the credentials' files and the intervals; not what this node offers, nor
    /// an inline cookie.
    pub fn for_services(&self) -> ClusterConfig {
        ClusterConfig {
            backend: self.backend,
            beacons: self.beacons.clone(),
            cookie_file: self.cookie_file.clone(),
            heartbeat_interval: self.heartbeat_interval,
            liveness: self.liveness,
            request_timeout: self.request_timeout,
            etcd_endpoints: self.etcd_endpoints.clone(),
            etcd_prefix: self.etcd_prefix.clone(),
            etcd_ca_file: self.etcd_ca_file.clone(),
            etcd_cert_file: self.etcd_cert_file.clone(),
            etcd_key_file: self.etcd_key_file.clone(),
            etcd_user: self.etcd_user.clone(),
            etcd_password_file: self.etcd_password_file.clone(),
            ..ClusterConfig::default()
        }
    }

    /// Whether this node runs a cluster client: it names beacons, or uses etcd.
    pub fn runs_client(&self) -> bool {
        match self.backend {
            Backend::Beacon => !self.beacons.is_empty(),
            Backend::Etcd => true,
        }
    }

    /// Where the client asks, for logs and messages: the beacons or the etcd endpoints.
    pub fn targets(&self) -> Vec<String> {
        match self.backend {
            Backend::Beacon => self.beacons.iter().map(|b| b.to_string()).collect(),
            Backend::Etcd => self.etcd_endpoints.clone(),
        }
    }

    fn validate_etcd(&self) -> Result<(), ConfigError> {
        let etcd_keys_set = !self.etcd_endpoints.is_empty()
            || self.etcd_prefix != DEFAULT_ETCD_PREFIX
            || !self.etcd_ca_file.as_os_str().is_empty()
            || !self.etcd_cert_file.as_os_str().is_empty()
            || !self.etcd_key_file.as_os_str().is_empty()
            || !self.etcd_user.is_empty()
            || !self.etcd_password_file.as_os_str().is_empty();
        if self.backend == Backend::Beacon {
            if etcd_keys_set {
                return Err(ConfigError::new(
                    "backend",
                    "etcd_* keys are set but the backend is \"beacon\"; set `backend = \"etcd\"` or remove them",
                ));
            }
            return Ok(());
        }
        if !self.beacons.is_empty() {
            return Err(ConfigError::new(
                "beacons",
                "the backend is \"etcd\": the node registers in etcd, not with beacons; remove `beacons`",
            ));
        }
        if self.etcd_endpoints.is_empty() {
            return Err(ConfigError::new(
                "etcd_endpoints",
                "backend = \"etcd\" needs at least one endpoint, e.g. [\"http://127.0.0.1:2379\"]",
            ));
        }
        if self.etcd_cert_file.as_os_str().is_empty() != self.etcd_key_file.as_os_str().is_empty() {
            return Err(ConfigError::new(
                "etcd_cert_file",
                "set both `etcd_cert_file` and `etcd_key_file`, or neither",
            ));
        }
        if !self.etcd_cert_file.as_os_str().is_empty() && self.etcd_ca_file.as_os_str().is_empty() {
            return Err(ConfigError::new(
                "etcd_ca_file",
                "a client certificate needs `etcd_ca_file` (the CA of the etcd servers)",
            ));
        }
        if self.etcd_user.is_empty() != self.etcd_password_file.as_os_str().is_empty() {
            return Err(ConfigError::new(
                "etcd_user",
                "set both `etcd_user` and `etcd_password_file`, or neither",
            ));
        }
        let tls = !self.etcd_ca_file.as_os_str().is_empty()
            || !self.etcd_cert_file.as_os_str().is_empty();
        for (i, endpoint) in self.etcd_endpoints.iter().enumerate() {
            let rest = endpoint
                .strip_prefix("http://")
                .or_else(|| endpoint.strip_prefix("https://"));
            let valid = rest.is_some_and(|r| {
                !r.is_empty() && !r.contains(char::is_whitespace) && r.contains(':')
            });
            if !valid {
                return Err(ConfigError::new(
                    "etcd_endpoints",
                    format!("\"{endpoint}\" is not an etcd URL; write http://HOST:PORT or https://HOST:PORT"),
                ));
            }
            if endpoint.starts_with("https://") != tls {
                return Err(ConfigError::new(
                    "etcd_endpoints",
                    match tls {
                        true => format!("\"{endpoint}\": with TLS files set, every endpoint is https://"),
                        false => format!("\"{endpoint}\" is https: set `etcd_ca_file` (and `etcd_cert_file`/`etcd_key_file` for client certificates)"),
                    },
                ));
            }
            if self.etcd_endpoints[..i].contains(endpoint) {
                return Err(ConfigError::new(
                    "etcd_endpoints",
                    format!("{endpoint} is listed twice"),
                ));
            }
        }
        let prefix = &self.etcd_prefix;
        if !prefix.starts_with('/')
            || !prefix.ends_with('/')
            || prefix.len() < 2
            || prefix.len() > 256
            || prefix.chars().any(|c| c.is_control() || c.is_whitespace())
        {
            return Err(ConfigError::new(
                "etcd_prefix",
                format!("\"{prefix}\" must start and end with `/`, e.g. \"/troupe/CLUSTER/\" (at most 256 bytes, no spaces)"),
            ));
        }
        if !self.etcd_user.is_empty() {
            check_name("etcd_user", &self.etcd_user)
                .map_err(|err| ConfigError::new("etcd_user", err.to_string()))?;
        }
        Ok(())
    }

    /// Reads the etcd credentials the config names (blocking): what `check-config` and `run`
    /// check, with the same messages. Errors name the key.
    pub fn read_etcd_credentials(&self) -> Result<EtcdCredentials, ConfigError> {
        let read =
            |key: &str, path: &Path, private: bool| -> Result<Option<Vec<u8>>, ConfigError> {
                if path.as_os_str().is_empty() {
                    return Ok(None);
                }
                read_small_file(path, private, "file")
                    .map(Some)
                    .map_err(|why| ConfigError::new(key, why))
            };
        let password = read("etcd_password_file", &self.etcd_password_file, true)?
            .map(|bytes| {
                String::from_utf8(bytes)
                    .map(|p| p.trim_end_matches(['\r', '\n']).to_string())
                    .map_err(|_| ConfigError::new("etcd_password_file", "is not UTF-8 text"))
            })
            .transpose()?;
        if password.as_ref().is_some_and(|p| p.is_empty()) {
            return Err(ConfigError::new(
                "etcd_password_file",
                format!("{} is empty", self.etcd_password_file.display()),
            ));
        }
        Ok(EtcdCredentials {
            ca: read("etcd_ca_file", &self.etcd_ca_file, false)?,
            cert: read("etcd_cert_file", &self.etcd_cert_file, false)?,
            key: read("etcd_key_file", &self.etcd_key_file, true)?,
            user: (!self.etcd_user.is_empty())
                .then(|| (self.etcd_user.clone(), password.unwrap_or_default())),
        })
    }

    /// The resources declared in `resources`, then `resource` (when set and not listed).
    pub fn declared_resources(&self) -> Vec<String> {
        let mut declared = self.resources.clone();
        if !self.resource.is_empty() && !declared.contains(&self.resource) {
            declared.push(self.resource.clone());
        }
        declared
    }

    /// What a node running `roles` (in start order) registers: one resource per role, then
    /// the declared ones, each with no endpoints but the first declared resource (or, with
    /// none declared, the first role's), which has `endpoints`. The primary resource is the
    /// first role's (the first declared one's when `roles` is empty). Normalized; `None` when
    /// there is nothing to offer.
    pub fn registration(&self, roles: &[String]) -> Option<Registration> {
        let declared = self.declared_resources();
        let primary = roles.first().or(declared.first())?.clone();
        let owner = declared.first().unwrap_or(&primary).clone();
        let mut offers: BTreeMap<String, BTreeMap<String, String>> = roles
            .iter()
            .chain(&declared)
            .map(|resource| (resource.clone(), BTreeMap::new()))
            .collect();
        offers.insert(owner, self.endpoints.clone());
        let mut registration = Registration {
            resource: primary,
            requires: self.requires.clone(),
            endpoints: BTreeMap::new(),
            offers,
            metadata: self.metadata.clone(),
        };
        registration.normalize();
        Some(registration)
    }

    /// The cookie, from `cookie` or read from `cookie_file`; `None` when neither is set.
    pub async fn load_cookie(&self) -> Result<Option<Cookie>, String> {
        let config = self.clone();
        tokio::task::spawn_blocking(move || config.read_cookie())
            .await
            .map_err(|err| format!("reading the cookie failed: {err}"))?
    }

    /// [`ClusterConfig::load_cookie`], blocking: also what `check-config` runs, so that it
    /// refuses the cookie file `run` would refuse, with the same message.
    pub fn read_cookie(&self) -> Result<Option<Cookie>, String> {
        if !self.cookie.is_empty() {
            return Ok(Cookie::new(&self.cookie));
        }
        if self.cookie_file.as_os_str().is_empty() {
            return Ok(None);
        }
        read_cookie_file(&self.cookie_file).map(Some)
    }
}

/// The etcd credentials a `[cluster]` table names, read.
#[derive(Clone, Default, PartialEq)]
pub struct EtcdCredentials {
    /// The CA certificate (PEM).
    pub ca: Option<Vec<u8>>,
    /// The client certificate (PEM).
    pub cert: Option<Vec<u8>>,
    /// Its key (PEM).
    pub key: Option<Vec<u8>>,
    /// User and password.
    pub user: Option<(String, String)>,
}

impl std::fmt::Debug for EtcdCredentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EtcdCredentials")
            .field("ca", &self.ca.is_some())
            .field("cert", &self.cert.is_some())
            .field("key", &self.key.is_some())
            .field("user", &self.user.as_ref().map(|(user, _)| user))
            .finish()
    }
}

/// The most a credential file may hold.
const MAX_CREDENTIAL_FILE: u64 = 1 << 20;

/// Reads a file of at most 1 MiB; with `private`, it must be readable by its owner only.
/// `what` names it in messages ("cookie file").
fn read_small_file(path: &Path, private: bool, what: &str) -> Result<Vec<u8>, String> {
    use std::os::unix::fs::PermissionsExt;
    let shown = path.display();
    let metadata =
        std::fs::metadata(path).map_err(|err| format!("cannot read the {what} {shown}: {err}"))?;
    let mode = metadata.permissions().mode();
    if private && mode & 0o077 != 0 {
        return Err(format!(
            "the {what} {shown} is readable by other users (mode {:o}); run `chmod 600 {shown}`",
            mode & 0o777
        ));
    }
    if metadata.len() > MAX_CREDENTIAL_FILE {
        return Err(format!(
            "the {what} {shown} is {} bytes; at most {MAX_CREDENTIAL_FILE}",
            metadata.len()
        ));
    }
    std::fs::read(path).map_err(|err| format!("cannot read the {what} {shown}: {err}"))
}

fn read_cookie_file(path: &Path) -> Result<Cookie, String> {
    let shown = path.display();
    let len = std::fs::metadata(path).map(|m| m.len()).unwrap_or(0);
    if len > 4096 {
        return Err(format!(
            "the cookie file {shown} is {len} bytes; a cookie is at most 4096"
        ));
    }
    let bytes = read_small_file(path, true, "cookie file")?;
    let text = String::from_utf8(bytes)
        .map_err(|_| format!("cannot read the cookie file {shown}: it is not UTF-8 text"))?;
    Cookie::new(&text).ok_or_else(|| format!("the cookie file {shown} is empty"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn valid() -> ClusterConfig {
        ClusterConfig {
            beacons: vec!["tcp://127.0.0.1:7400".parse().unwrap()],
            resource: "broker".into(),
            ..ClusterConfig::default()
        }
    }

    #[test]
    fn bad_values_name_their_key() {
        assert!(valid().validate().is_ok());
        let cases: Vec<(ClusterConfig, &str)> = vec![
            (
                ClusterConfig {
                    beacons: vec![valid().beacons[0].clone(), valid().beacons[0].clone()],
                    ..valid()
                },
                "beacons",
            ),
            (
                ClusterConfig {
                    resource: "a b".into(),
                    ..valid()
                },
                "resource",
            ),
            (
                ClusterConfig {
                    requires: vec!["ok".into(), "".into()],
                    ..valid()
                },
                "requires",
            ),
            (
                ClusterConfig {
                    endpoints: [("api".to_string(), "".to_string())].into(),
                    ..valid()
                },
                "endpoints",
            ),
            (
                ClusterConfig {
                    cookie: "x".into(),
                    cookie_file: "/tmp/c".into(),
                    ..valid()
                },
                "cookie",
            ),
            (
                ClusterConfig {
                    heartbeat_interval: Duration::from_millis(1),
                    ..valid()
                },
                "heartbeat_interval",
            ),
            (
                ClusterConfig {
                    liveness: 0,
                    ..valid()
                },
                "liveness",
            ),
        ];
        for (config, key) in cases {
            let err = config.validate().unwrap_err();
            assert_eq!(err.key, key, "{err}");
        }
    }

    fn strings(items: &[&str]) -> Vec<String> {
        items.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn a_node_offers_its_roles_and_its_declared_resources() {
        let config = ClusterConfig {
            resources: strings(&["store", "cache"]),
            resource: "legacy".into(),
            requires: strings(&["db"]),
            endpoints: [("api".to_string(), "tcp://h:1".to_string())].into(),
            ..valid()
        };
        assert_eq!(
            config.declared_resources(),
            strings(&["store", "cache", "legacy"])
        );
        let r = config.registration(&strings(&["ipc", "broker"])).unwrap();
        assert_eq!(r.resource, "ipc");
        assert!(r.endpoints.is_empty());
        assert_eq!(
            r.offers.keys().collect::<Vec<_>>(),
            ["broker", "cache", "ipc", "legacy", "store"]
        );
        assert_eq!(r.offers["store"]["api"], "tcp://h:1");
        assert!(r.offers["broker"].is_empty());
        assert_eq!(r.requires, ["db"]);
        assert!(r.check().is_ok());
        // Nothing declared: the endpoints are the first role's.
        let plain = ClusterConfig {
            resource: String::new(),
            endpoints: [("api".to_string(), "tcp://h:1".to_string())].into(),
            ..valid()
        };
        let r = plain.registration(&strings(&["ipc", "broker"])).unwrap();
        assert_eq!((r.resource.as_str(), r.endpoints.len()), ("ipc", 1));
        // No roles: the first declared resource is the primary one.
        let r = config.registration(&[]).unwrap();
        assert_eq!((r.resource.as_str(), r.endpoints.len()), ("store", 1));
        assert_eq!(plain.registration(&[]), None);
        // A declared resource that is also a role's is offered once.
        let r = config.registration(&strings(&["store"])).unwrap();
        assert_eq!(r.offers.len(), 3);
        assert_eq!(r.endpoints["api"], "tcp://h:1");
    }

    #[test]
    fn bad_resources_name_their_key() {
        for resources in [
            strings(&["ok", "not ok"]),
            strings(&["a", "a"]),
            (0..=MAX_OFFERS).map(|i| format!("r{i}")).collect(),
        ] {
            let err = ClusterConfig {
                resources,
                ..valid()
            }
            .validate()
            .unwrap_err();
            assert_eq!(err.key, "resources", "{err}");
        }
        let ok = ClusterConfig {
            resources: strings(&["store"]),
            resource: String::new(),
            ..valid()
        };
        assert!(ok.validate().is_ok());
        let parsed: ClusterConfig =
            serde_json::from_value(serde_json::json!({"resources": ["a", "b"]})).unwrap();
        assert_eq!(parsed.resources, strings(&["a", "b"]));
    }

    fn etcd() -> ClusterConfig {
        ClusterConfig {
            backend: Backend::Etcd,
            etcd_endpoints: vec!["http://127.0.0.1:2379".into()],
            resource: "broker".into(),
            ..ClusterConfig::default()
        }
    }

    #[test]
    fn etcd_keys_are_checked_and_name_their_key() {
        assert!(etcd().validate().is_ok());
        assert!(etcd().runs_client());
        let cases: Vec<(ClusterConfig, &str)> = vec![
            (
                ClusterConfig {
                    etcd_endpoints: vec![],
                    ..etcd()
                },
                "etcd_endpoints",
            ),
            (
                ClusterConfig {
                    etcd_endpoints: vec!["127.0.0.1:2379".into()],
                    ..etcd()
                },
                "etcd_endpoints",
            ),
            (
                ClusterConfig {
                    etcd_endpoints: vec!["https://h:2379".into()],
                    ..etcd()
                },
                "etcd_endpoints",
            ),
            (
                ClusterConfig {
                    etcd_prefix: "troupe".into(),
                    ..etcd()
                },
                "etcd_prefix",
            ),
            (
                ClusterConfig {
                    etcd_cert_file: "/c.pem".into(),
                    ..etcd()
                },
                "etcd_cert_file",
            ),
            (
                ClusterConfig {
                    etcd_user: "u".into(),
                    ..etcd()
                },
                "etcd_user",
            ),
            (
                ClusterConfig {
                    beacons: valid().beacons,
                    ..etcd()
                },
                "beacons",
            ),
            (
                ClusterConfig {
                    etcd_endpoints: vec!["http://h:1".into()],
                    ..valid()
                },
                "backend",
            ),
        ];
        for (config, key) in cases {
            let err = config.validate().unwrap_err();
            assert_eq!(err.key, key, "{err}");
        }
        // Without the etcd backend in the binary, the role refuses it, saying how to build it.
        use troupe_core::Role;
        let err = crate::client::ClusterClient::validate(&etcd()).unwrap_err();
        assert_eq!(err.key, "backend");
        assert!(err.to_string().contains("--features etcd"), "{err}");
        // --beacon on an etcd config asks those beacons.
        let asked = etcd().with_beacons(valid().beacons);
        assert_eq!(asked.backend, Backend::Beacon);
        assert!(asked.validate().is_ok());
    }

    #[test]
    fn etcd_secrets_must_be_private() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let password = dir.path().join("password");
        std::fs::write(&password, "pw\n").unwrap();
        std::fs::set_permissions(&password, std::fs::Permissions::from_mode(0o644)).unwrap();
        let config = ClusterConfig {
            etcd_user: "troupe".into(),
            etcd_password_file: password.clone(),
            ..etcd()
        };
        let err = config.read_etcd_credentials().unwrap_err();
        assert_eq!(err.key, "etcd_password_file");
        assert!(err.to_string().contains("chmod 600"), "{err}");
        std::fs::set_permissions(&password, std::fs::Permissions::from_mode(0o600)).unwrap();
        let read = config.read_etcd_credentials().unwrap();
        assert_eq!(read.user, Some(("troupe".into(), "pw".into())));
        assert!(
            !format!("{read:?}").contains("pw\""),
            "the password never shows"
        );
        let missing = ClusterConfig {
            etcd_ca_file: dir.path().join("nope.pem"),
            etcd_endpoints: vec!["https://h:2379".into()],
            ..etcd()
        };
        assert_eq!(
            missing.read_etcd_credentials().unwrap_err().key,
            "etcd_ca_file"
        );
    }

    #[test]
    fn unknown_keys_are_refused() {
        let err = serde_json::from_value::<ClusterConfig>(serde_json::json!({"beacon": []}))
            .unwrap_err()
            .to_string();
        assert!(err.contains("unknown field `beacon`"), "{err}");
    }

    #[tokio::test]
    async fn the_cookie_file_must_be_private() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("cookie");
        std::fs::write(&path, "s3cret\n").unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
        let config = ClusterConfig {
            cookie_file: path.clone(),
            ..valid()
        };
        let err = config.load_cookie().await.unwrap_err();
        assert!(err.contains("chmod 600"), "{err}");
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
        assert_eq!(config.load_cookie().await.unwrap(), Cookie::new("s3cret"));
        let missing = ClusterConfig {
            cookie_file: dir.path().join("nope"),
            ..valid()
        };
        assert!(missing.load_cookie().await.unwrap_err().contains("nope"));
        assert_eq!(valid().load_cookie().await.unwrap(), None);
    }
}
