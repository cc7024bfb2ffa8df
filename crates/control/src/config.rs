//! The `[control]` table: where the node's control API listens and who may use it.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};
use troupe_core::unix_socket::{check_socket_path, runtime_socket_path};
use troupe_core::ConfigError;

use crate::token::Token;

/// The `[control]` table.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ControlConfig {
    /// The API's Unix socket; empty: `$XDG_RUNTIME_DIR/troupe-NODE.ctl`, else
    /// `/tmp/troupe-NODE.ctl`.
    pub socket: String,
    /// A group whose members may use the socket too (mode 0660); empty: the node's user only
    /// (mode 0600).
    pub socket_group: String,
    /// Also listen on this TCP address (`HOST:PORT`); every request but `GET /healthz` then
    /// needs the bearer token from `token_file`. Empty: no TCP listener.
    pub bind: String,
    /// File holding the bearer token for TCP clients; must be readable by its owner only.
    pub token_file: String,
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

    /// Checks every rule `run` would apply before it binds anything, including the token file
    /// (present, mode 0600, not empty). Errors name the key.
    pub fn validate(&self) -> Result<(), ConfigError> {
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
}
