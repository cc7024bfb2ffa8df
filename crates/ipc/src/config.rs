//! The `[ipc]` config table, the [`ByteSize`] value type its size keys use, and where the
//! hub's socket goes when `socket` is empty.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};
use troupe_core::settings::Duration;
use troupe_core::ConfigError;

/// The `[ipc]` table.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct IpcConfig {
    /// Path of the hub's Unix socket; empty means `$XDG_RUNTIME_DIR/troupe-NODE.sock`
    /// (or `/tmp/troupe-NODE.sock` without `XDG_RUNTIME_DIR`).
    pub socket: String,
    /// A group whose members may connect too (socket mode 0660); empty: owner only (0600).
    pub socket_group: String,
    /// Most connections at once; more are refused with an error.
    pub max_connections: usize,
    /// Most connections at once from one user (the peer's uid); more are refused.
    pub max_connections_per_uid: usize,
    /// A connection that has not registered this long after connecting is closed.
    pub register_timeout: Duration,
    /// Most bytes held in partial frames (read, waiting for the rest) over all
    /// connections; past it, the connection whose read went over is closed.
    pub max_partial_bytes: ByteSize,
    /// Longest frame accepted; a longer one gets an error and its connection is closed.
    pub max_frame_bytes: ByteSize,
    /// How long messages for a receiver that is not connected are held.
    pub mailbox_ttl: Duration,
    /// Most messages held for one absent receiver.
    pub mailbox_max_messages: usize,
    /// Most bytes held for one absent receiver.
    pub mailbox_max_bytes: ByteSize,
    /// Most bytes held for all absent receivers together.
    pub mailbox_total_bytes: ByteSize,
    /// Timeout of a request that does not name its own.
    pub request_timeout: Duration,
    /// Most requests in flight per connection (and channel calls per service).
    pub max_pending_requests: usize,
    /// Bytes queued towards one connection above which its senders are paused.
    pub outbox_high_water: ByteSize,
    /// A connection that reads nothing for this long while its queue is full is closed.
    pub stall_timeout: Duration,
    /// How long a service's attach waits for the supervisor to report its process.
    pub attach_timeout: Duration,
    /// Damage a connection may send (bytes skipped while resynchronising plus bytes of
    /// would-be frames checksummed in vain) before it is closed with `TooMuchDamage`.
    pub max_damage_bytes: ByteSize,
}

impl Default for IpcConfig {
    fn default() -> Self {
        IpcConfig {
            socket: String::new(),
            socket_group: String::new(),
            max_connections: 1024,
            max_connections_per_uid: 64,
            register_timeout: Duration::from_secs(5),
            max_partial_bytes: ByteSize(64 << 20),
            max_frame_bytes: ByteSize(1 << 20),
            mailbox_ttl: Duration::from_secs(10),
            mailbox_max_messages: 1000,
            mailbox_max_bytes: ByteSize(4 << 20),
            mailbox_total_bytes: ByteSize(64 << 20),
            request_timeout: Duration::from_secs(5),
            max_pending_requests: 1024,
            outbox_high_water: ByteSize(4 << 20),
            stall_timeout: Duration::from_secs(10),
            attach_timeout: Duration::from_secs(5),
            max_damage_bytes: ByteSize(4 << 20),
        }
    }
}

impl IpcConfig {
    /// Checks what the types cannot: every limit positive, sizes that fit together.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let positive = [
            ("max_connections", self.max_connections),
            ("max_connections_per_uid", self.max_connections_per_uid),
            ("mailbox_max_messages", self.mailbox_max_messages),
            ("max_pending_requests", self.max_pending_requests),
        ];
        for (key, value) in positive {
            if value == 0 {
                return Err(ConfigError::new(key, "must be at least 1"));
            }
        }
        let durations = [
            ("mailbox_ttl", self.mailbox_ttl),
            ("request_timeout", self.request_timeout),
            ("stall_timeout", self.stall_timeout),
            ("attach_timeout", self.attach_timeout),
            ("register_timeout", self.register_timeout),
        ];
        for (key, value) in durations {
            if value.get().is_zero() {
                return Err(ConfigError::new(key, "must be longer than 0s"));
            }
        }
        let max_frame = self.max_frame_bytes.0;
        if !(1024..=(1 << 30)).contains(&max_frame) {
            return Err(ConfigError::new(
                "max_frame_bytes",
                format!("{} is out of range: use 1KiB to 1GiB", self.max_frame_bytes),
            ));
        }
        let at_least_a_frame = [
            ("mailbox_max_bytes", self.mailbox_max_bytes),
            ("mailbox_total_bytes", self.mailbox_total_bytes),
            ("outbox_high_water", self.outbox_high_water),
            ("max_partial_bytes", self.max_partial_bytes),
        ];
        for (key, value) in at_least_a_frame {
            if value.0 < max_frame {
                return Err(ConfigError::new(
                    key,
                    format!(
                        "{value} is smaller than max_frame_bytes ({}): a largest frame would never fit",
                        self.max_frame_bytes
                    ),
                ));
            }
        }
        if self.mailbox_total_bytes.0 < self.mailbox_max_bytes.0 {
            return Err(ConfigError::new(
                "mailbox_total_bytes",
                format!(
                    "{} is smaller than mailbox_max_bytes ({})",
                    self.mailbox_total_bytes, self.mailbox_max_bytes
                ),
            ));
        }
        if !self.socket.is_empty() {
            check_socket_path(&PathBuf::from(&self.socket))
                .map_err(|why| ConfigError::new("socket", why))?;
        }
        Ok(())
    }

    /// The socket path for node `node`: `socket`, or the default described on the field.
    pub fn socket_path(&self, node: &str) -> PathBuf {
        if !self.socket.is_empty() {
            return PathBuf::from(&self.socket);
        }
        troupe_core::unix_socket::runtime_socket_path(node, "sock")
    }
}

pub use troupe_core::unix_socket::{check_socket_path, MAX_SOCKET_PATH};

pub use troupe_core::settings::ByteSize;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_default_is_valid_and_round_trips() {
        let config = IpcConfig::default();
        config.validate().unwrap();
        let json = serde_json::to_value(&config).unwrap();
        assert_eq!(json["max_frame_bytes"], "1MiB");
        let back: IpcConfig = serde_json::from_value(json).unwrap();
        assert_eq!(back.max_frame_bytes, config.max_frame_bytes);
    }

    #[test]
    fn validation_names_the_key() {
        let mut config = IpcConfig {
            mailbox_max_bytes: ByteSize(100),
            ..IpcConfig::default()
        };
        assert_eq!(config.validate().unwrap_err().key, "mailbox_max_bytes");
        config.mailbox_max_bytes = ByteSize(4 << 20);
        config.mailbox_ttl = Duration::from_secs(0);
        assert_eq!(config.validate().unwrap_err().key, "mailbox_ttl");
        config.mailbox_ttl = Duration::from_secs(1);
        config.socket = format!("/tmp/{}", "x".repeat(120));
        let err = config.validate().unwrap_err();
        assert_eq!(err.key, "socket");
        assert!(err.message.contains("at most 107"), "{err}");
        config.socket = String::new();
        config.max_connections_per_uid = 0;
        assert_eq!(
            config.validate().unwrap_err().key,
            "max_connections_per_uid"
        );
        config.max_connections_per_uid = 64;
        config.register_timeout = Duration::from_secs(0);
        assert_eq!(config.validate().unwrap_err().key, "register_timeout");
        config.register_timeout = Duration::from_secs(5);
        config.max_partial_bytes = ByteSize(1000);
        assert_eq!(config.validate().unwrap_err().key, "max_partial_bytes");
        config.max_partial_bytes = ByteSize(64 << 20);
        config.validate().unwrap();
        let unknown = serde_json::from_value::<IpcConfig>(serde_json::json!({"sokcet": ""}));
        assert!(unknown.unwrap_err().to_string().contains("unknown field"));
    }

    #[test]
    fn default_socket_path_uses_a_file_safe_node_name() {
        let config = IpcConfig::default();
        let path = config.socket_path("edge/1 a");
        assert!(
            path.to_string_lossy().ends_with("/troupe-edge_1_a.sock"),
            "{}",
            path.display()
        );
        let explicit = IpcConfig {
            socket: "/run/x.sock".into(),
            ..IpcConfig::default()
        };
        assert_eq!(explicit.socket_path("n"), PathBuf::from("/run/x.sock"));
    }
}
