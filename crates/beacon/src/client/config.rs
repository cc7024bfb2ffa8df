//! The node config's `[cluster]` table: which beacons this node registers with, what it
//! offers and needs, and the cluster's shared cookie.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use troupe_core::settings::{Duration, ZmqEndpoint};
use troupe_core::ConfigError;

use crate::auth::Cookie;
use crate::protocol::{Registration, MAX_HEARTBEAT_MS, MIN_HEARTBEAT_MS};

/// The `[cluster]` table.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ClusterConfig {
    /// Beacons to register with; the node registers with each of them. Empty: the node runs no
    /// cluster client.
    pub beacons: Vec<ZmqEndpoint>,
    /// The role this node offers. Empty in a file: the first role in the node's `roles`.
    pub resource: String,
    /// Roles this node needs.
    pub requires: Vec<String>,
    /// Where to reach this node's services: name → address. Roles may add more at run time.
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
}

impl Default for ClusterConfig {
    fn default() -> Self {
        ClusterConfig {
            beacons: Vec::new(),
            resource: String::new(),
            requires: Vec::new(),
            endpoints: BTreeMap::new(),
            metadata: Map::new(),
            cookie: String::new(),
            cookie_file: PathBuf::new(),
            heartbeat_interval: Duration::from_secs(1),
            liveness: 3,
            request_timeout: Duration::from_secs(2),
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
        self.registration().check().map_err(|err| {
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
        Ok(())
    }

    /// What this node registers, from config.
    pub fn registration(&self) -> Registration {
        Registration {
            resource: self.resource.clone(),
            requires: self.requires.clone(),
            endpoints: self.endpoints.clone(),
            metadata: self.metadata.clone(),
        }
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

fn read_cookie_file(path: &Path) -> Result<Cookie, String> {
    use std::os::unix::fs::PermissionsExt;
    let shown = path.display();
    let metadata = std::fs::metadata(path)
        .map_err(|err| format!("cannot read the cookie file {shown}: {err}"))?;
    let mode = metadata.permissions().mode();
    if mode & 0o077 != 0 {
        return Err(format!(
            "the cookie file {shown} is readable by other users (mode {:o}); run `chmod 600 {shown}`",
            mode & 0o777
        ));
    }
    if metadata.len() > 4096 {
        return Err(format!(
            "the cookie file {shown} is {} bytes; a cookie is at most 4096",
            metadata.len()
        ));
    }
    let text = std::fs::read_to_string(path)
        .map_err(|err| format!("cannot read the cookie file {shown}: {err}"))?;
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
