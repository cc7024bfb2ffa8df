//! The `[control]` table: where the node's control API listens and who may use it, and where
//! its metrics are served.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};
use troupe_core::unix_socket::{check_socket_path, runtime_socket_path};
use troupe_core::ConfigError;

use crate::token::Token;

/// Default of [`ControlConfig::max_service_series`].
pub const DEFAULT_MAX_SERVICE_SERIES: usize = 1000;
/// Largest [`ControlConfig::max_service_series`] accepted.
pub const MAX_SERVICE_SERIES_LIMIT: usize = 100_000;

/// The `[control]` table.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ControlConfig {
    /// The API's Unix socket; empty: `$XDG_RUNTIME_DIR/troupe-NODE.ctl`, else
    /// `/tmp/troupe-NODE.ctl`.
    pub socket: String,
    /// A group whose members may use the socket too (mode 0660); empty: the node's user only
    /// (mode 0600).
    pub socket_group: String,
    /// Also listen on this TCP address (`HOST:PORT`); every request but the health checks and
    /// the console's assets then needs the bearer token from `token_file`. Empty: no TCP
    /// listener.
    pub bind: String,
    /// File holding the bearer token for TCP clients; must be readable by its owner only.
    pub token_file: String,
    /// Also serve `GET /metrics` (and nothing else) on this TCP address (`HOST:PORT`), for
    /// scrapers that should not hold the API's token. Empty: no such listener (`/metrics` is
    /// still served on the socket and on `bind`).
    pub metrics_bind: String,
    /// File holding the bearer token `metrics_bind` requires (same rules as `token_file`);
    /// empty: `metrics_bind` needs no token.
    pub metrics_token_file: String,
    /// Most series of services' own metrics (sent over their ipc channels) kept per service;
    /// metrics beyond are refused and counted.
    pub max_service_series: usize,
}

impl Default for ControlConfig {
    fn default() -> Self {
        ControlConfig {
            socket: String::new(),
            socket_group: String::new(),
            bind: String::new(),
            token_file: String::new(),
            metrics_bind: String::new(),
            metrics_token_file: String::new(),
            max_service_series: DEFAULT_MAX_SERVICE_SERIES,
        }
    }
}

impl ControlConfig {
    /// The table's name in the node's config.
    pub const TABLE: &'static str = "control";

    /// The socket path for node `node`: `socket`, or the default described on the field.
    pub fn socket_path(&self, node: &str) -> PathBuf {
        if self.socket.is_empty() {
            runtime_socket_path(node, "ctl")
        } else {
            PathBuf::from(&self.socket)
        }
    }

    /// Checks every rule `run` would apply before it binds anything, including the token
    /// files (present, mode 0600, not empty). Errors name the key.
    pub fn validate(&self) -> Result<(), ConfigError> {
        self.validate_metrics()?;
        if !self.socket.is_empty() {
            check_socket_path(&PathBuf::from(&self.socket))
                .map_err(|why| ConfigError::new("socket", why))?;
        }
        if !self.socket_group.is_empty() {
            troupe_core::unix_socket::resolve_group(&self.socket_group)
                .map_err(|err| ConfigError::new("socket_group", err.to_string()))?;
        }
        if self.bind.is_empty() {
            if !self.token_file.is_empty() {
                self.token()?;
            }
            return Ok(());
        }
        if self.bind.parse::<std::net::SocketAddr>().is_err() {
            return Err(ConfigError::new(
                "bind",
                format!(
                    "\"{}\" is not an address; expected HOST:PORT with a numeric host, e.g. \"127.0.0.1:7600\"",
                    self.bind
                ),
            ));
        }
        if self.token_file.is_empty() {
            return Err(ConfigError::new(
                "token_file",
                "required with `bind`: every TCP request needs a bearer token, read from this file (mode 0600)",
            ));
        }
        self.token().map(|_| ())
    }

    /// The bearer token, read from `token_file`.
    pub fn token(&self) -> Result<Token, ConfigError> {
        Token::from_file(self.token_file.as_ref())
            .map_err(|why| ConfigError::new("token_file", why))
    }

    /// The bearer token `metrics_bind` requires, read from `metrics_token_file`; `None` when
    /// the key is empty.
    pub fn metrics_token(&self) -> Result<Option<Token>, ConfigError> {
        if self.metrics_token_file.is_empty() {
            return Ok(None);
        }
        Token::from_file(self.metrics_token_file.as_ref())
            .map(Some)
            .map_err(|why| ConfigError::new("metrics_token_file", why))
    }

    /// `metrics_bind`, `metrics_token_file` and `max_service_series`.
    fn validate_metrics(&self) -> Result<(), ConfigError> {
        if !(1..=MAX_SERVICE_SERIES_LIMIT).contains(&self.max_service_series) {
            return Err(ConfigError::new(
                "max_service_series",
                format!(
                    "{} is out of range 1..={MAX_SERVICE_SERIES_LIMIT}",
                    self.max_service_series
                ),
            ));
        }
        self.metrics_token()?;
        if self.metrics_bind.is_empty() {
            return Ok(());
        }
        let Ok(metrics) = self.metrics_bind.parse::<std::net::SocketAddr>() else {
            return Err(ConfigError::new(
                "metrics_bind",
                format!(
                    "\"{}\" is not an address; expected HOST:PORT with a numeric host, e.g. \"127.0.0.1:9600\"",
                    self.metrics_bind
                ),
            ));
        };
        if let Ok(api) = self.bind.parse::<std::net::SocketAddr>() {
            // The same port on an address the other covers (itself, or every interface) is
            // the same listener.
            let overlap = api.ip() == metrics.ip()
                || api.ip().is_unspecified()
                || metrics.ip().is_unspecified();
            if overlap && api.port() == metrics.port() && api.port() != 0 {
                return Err(ConfigError::new(
                    "metrics_bind",
                    format!(
                        "\"{}\" is where `bind` listens (\"{}\"); the metrics listener needs an address of its own",
                        self.metrics_bind, self.bind
                    ),
                ));
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    fn token_file(dir: &tempfile::TempDir, name: &str, mode: u32) -> String {
        let path = dir.path().join(name);
        std::fs::write(&path, "s3cret\n").unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode)).unwrap();
        path.display().to_string()
    }

    fn refused(config: &ControlConfig) -> String {
        config.validate().unwrap_err().to_string()
    }

    #[test]
    fn the_metrics_keys_are_checked_as_run_would_use_them() {
        let dir = tempfile::tempdir().unwrap();
        let good = ControlConfig {
            bind: "127.0.0.1:7600".into(),
            token_file: token_file(&dir, "api", 0o600),
            metrics_bind: "127.0.0.1:9600".into(),
            metrics_token_file: token_file(&dir, "metrics", 0o600),
            ..ControlConfig::default()
        };
        good.validate().unwrap();
        assert_eq!(good.max_service_series, DEFAULT_MAX_SERVICE_SERIES);
        assert!(good.metrics_token().unwrap().is_some());
        // No token for the metrics listener is allowed.
        ControlConfig {
            metrics_token_file: String::new(),
            ..good.clone()
        }
        .validate()
        .unwrap();

        let why = refused(&ControlConfig {
            metrics_bind: "localhost:9600".into(),
            ..good.clone()
        });
        assert!(
            why.contains("metrics_bind") && why.contains("not an address"),
            "{why}"
        );
        for same in ["127.0.0.1:7600", "0.0.0.0:7600"] {
            let why = refused(&ControlConfig {
                metrics_bind: same.into(),
                ..good.clone()
            });
            assert!(why.contains("metrics_bind") && why.contains("own"), "{why}");
        }
        let why = refused(&ControlConfig {
            metrics_token_file: token_file(&dir, "loose", 0o644),
            ..good.clone()
        });
        assert!(
            why.contains("metrics_token_file") && why.contains("chmod 600"),
            "{why}"
        );
        let why = refused(&ControlConfig {
            metrics_token_file: "/nonexistent/token".into(),
            metrics_bind: String::new(),
            ..good.clone()
        });
        assert!(why.contains("metrics_token_file"), "{why}");
        let why = refused(&ControlConfig {
            max_service_series: 0,
            ..good.clone()
        });
        assert!(why.contains("max_service_series"), "{why}");
    }

    #[test]
    fn the_table_reads_its_metrics_keys_with_defaults() {
        let config: ControlConfig =
            toml::from_str("metrics_bind = \"127.0.0.1:9600\"\nmax_service_series = 50\n").unwrap();
        assert_eq!(
            (config.metrics_bind.as_str(), config.max_service_series),
            ("127.0.0.1:9600", 50)
        );
        let config: ControlConfig = toml::from_str("").unwrap();
        assert_eq!(config, ControlConfig::default());
        assert!(toml::from_str::<ControlConfig>("metrics = 1").is_err());
    }
}
