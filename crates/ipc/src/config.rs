//! The `[ipc]` config table, the [`ByteSize`] value type its size keys use, and where the
//! hub's socket goes when `socket` is empty.

use std::fmt;
use std::path::PathBuf;
use std::str::FromStr;

use serde::{Deserialize, Deserializer, Serialize, Serializer};
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
}

impl Default for IpcConfig {
    fn default() -> Self {
        IpcConfig {
            socket: String::new(),
            socket_group: String::new(),
            max_connections: 1024,
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
        }
    }
}

impl IpcConfig {
    /// Checks what the types cannot: every limit positive, sizes that fit together.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let positive = [
            ("max_connections", self.max_connections),
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

/// A size in bytes, written as a number of bytes or with a unit: `4096`, `"64KiB"`,
/// `"1MiB"`, `"1GiB"` (`KB`, `MB`, `GB` are powers of 1000).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct ByteSize(pub usize);

impl FromStr for ByteSize {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let bad = || {
            format!("invalid size \"{text}\"; write bytes or a number with a unit, like \"4096\", \"64KiB\" or \"1MiB\"")
        };
        let trimmed = text.trim();
        let split = trimmed
            .find(|c: char| !c.is_ascii_digit())
            .unwrap_or(trimmed.len());
        let (number, unit) = trimmed.split_at(split);
        let number: u64 = number.parse().map_err(|_| bad())?;
        let scale: u64 = match unit.trim().to_ascii_lowercase().as_str() {
            "" | "b" => 1,
            "kib" => 1 << 10,
            "mib" => 1 << 20,
            "gib" => 1 << 30,
            "kb" => 1_000,
            "mb" => 1_000_000,
            "gb" => 1_000_000_000,
            _ => return Err(bad()),
        };
        number
            .checked_mul(scale)
            .and_then(|n| usize::try_from(n).ok())
            .map(ByteSize)
            .ok_or_else(bad)
    }
}

impl fmt::Display for ByteSize {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let n = self.0;
        for (unit, scale) in [("GiB", 1usize << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)] {
            if n >= scale && n.is_multiple_of(scale) {
                return write!(f, "{}{unit}", n / scale);
            }
        }
        write!(f, "{n}B")
    }
}

impl Serialize for ByteSize {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for ByteSize {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct Visitor;
        impl serde::de::Visitor<'_> for Visitor {
            type Value = ByteSize;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a size, like 4096 or \"64KiB\"")
            }
            fn visit_str<E: serde::de::Error>(self, text: &str) -> Result<ByteSize, E> {
                text.parse().map_err(E::custom)
            }
            fn visit_u64<E: serde::de::Error>(self, n: u64) -> Result<ByteSize, E> {
                usize::try_from(n)
                    .map(ByteSize)
                    .map_err(|_| E::custom(format!("size {n} is too large")))
            }
            fn visit_i64<E: serde::de::Error>(self, n: i64) -> Result<ByteSize, E> {
                u64::try_from(n)
                    .map_err(|_| E::custom(format!("invalid size {n}: a size cannot be negative")))
                    .and_then(|n| self.visit_u64(n))
            }
        }
        deserializer.deserialize_any(Visitor)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_parse_with_and_without_units() {
        assert_eq!("4096".parse::<ByteSize>().unwrap(), ByteSize(4096));
        assert_eq!("64KiB".parse::<ByteSize>().unwrap(), ByteSize(65536));
        assert_eq!("1 MiB".parse::<ByteSize>().unwrap(), ByteSize(1 << 20));
        assert_eq!("2kb".parse::<ByteSize>().unwrap(), ByteSize(2000));
        assert!("1.5MiB".parse::<ByteSize>().is_err());
        assert!("lots"
            .parse::<ByteSize>()
            .unwrap_err()
            .contains("\"64KiB\""));
        assert_eq!(ByteSize(1 << 20).to_string(), "1MiB");
        assert_eq!(ByteSize(1000).to_string(), "1000B");
        let parsed: ByteSize = serde_json::from_str("2048").unwrap();
        assert_eq!(parsed, ByteSize(2048));
        assert!(serde_json::from_str::<ByteSize>("-1")
            .unwrap_err()
            .to_string()
            .contains("negative"));
    }

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
