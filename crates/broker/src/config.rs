//! The `[broker]` config table: the default service, extra services, the Majordomo socket,
//! heartbeats, queue limits and the shutdown drain window.
//!
//! The simple form is three keys (`service`, `frontend`, `backend`); `[[broker.services]]`
//! adds more Paranoid Pirate services, each with its own pair of sockets and optional overrides
//! of the broker-wide request settings.

use std::collections::HashSet;

use serde::{Deserialize, Serialize};
use troupe_core::settings::{ByteSize, Duration, ZmqEndpoint};
use troupe_core::ConfigError;

/// The `[broker]` table.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct BrokerConfig {
    /// Name of the default service (the one served on `frontend`/`backend`).
    pub service: String,
    /// Where clients of the default service connect (ROUTER bind address).
    pub frontend: ZmqEndpoint,
    /// Where workers of the default service connect (ROUTER bind address).
    pub backend: ZmqEndpoint,
    /// More Paranoid Pirate services, each with its own sockets.
    pub services: Vec<ServiceConfig>,
    /// The Majordomo socket (one ROUTER for clients and workers of named services).
    pub majordomo: MajordomoConfig,
    /// Time between heartbeats to each worker.
    pub heartbeat_interval: Duration,
    /// Silent heartbeat intervals after which a worker is dead.
    pub liveness: u32,
    /// How long a request may wait for a worker before it is answered with an error.
    pub request_timeout: Duration,
    /// Requests that may wait for a worker, per service; one more is refused at once.
    pub queue_limit: usize,
    /// Bytes (envelopes and bodies) of the requests that may wait for a worker, per service;
    /// a request that would go past it is refused at once.
    pub queue_max_bytes: ByteSize,
    /// Workers a service accepts; a further READY is ignored (and logged).
    pub max_workers: usize,
    /// Give the requests held by a lost worker to another worker instead of failing them.
    pub retry_on_worker_loss: bool,
    /// With `retry_on_worker_loss`, how many workers a request may be given in all.
    pub max_attempts: u32,
    /// Answer a Paranoid Pirate client's failed request with a `TROUPE-ERROR` reply; false:
    /// drop it silently (the client times out, as with the Guide's `ppqueue`).
    pub error_replies: bool,
    /// On shutdown, how long requests in flight may take to finish before they fail.
    pub drain_timeout: Duration,
    /// High-water mark (messages) of every socket, both directions.
    pub hwm: i32,
    /// Largest message frame accepted from a peer, in bytes; larger ones disconnect the peer.
    pub max_message_size: i64,
    /// How long unsent messages are kept when a socket closes at shutdown.
    pub linger: Duration,
    /// The host other machines reach this broker at, registered with the beacons for sockets
    /// bound to every interface (`0.0.0.0`, `*`); empty: this machine's host name.
    pub advertise_host: String,
}

impl Default for BrokerConfig {
    fn default() -> Self {
        BrokerConfig {
            service: "echo".to_string(),
            frontend: "tcp://127.0.0.1:7501".parse().expect("valid default"),
            backend: "tcp://127.0.0.1:7502".parse().expect("valid default"),
            services: Vec::new(),
            majordomo: MajordomoConfig::default(),
            heartbeat_interval: Duration::from_secs(1),
            liveness: 3,
            request_timeout: Duration::from_secs(5),
            queue_limit: 1000,
            queue_max_bytes: ByteSize(64 * 1024 * 1024),
            max_workers: 1024,
            retry_on_worker_loss: false,
            max_attempts: 2,
            error_replies: true,
            drain_timeout: Duration::from_secs(3),
            hwm: 10_000,
            max_message_size: 16 * 1024 * 1024,
            linger: Duration::from_millis(500),
            advertise_host: String::new(),
        }
    }
}

/// One extra Paranoid Pirate service (`[[broker.services]]`). Unset request settings take the
/// broker-wide value.
#[derive(Debug, Clone, Serialize, Deserialize, Default)]
#[serde(deny_unknown_fields, default)]
pub struct ServiceConfig {
    /// The service's name (unique; also its Majordomo name).
    pub name: String,
    /// Where its clients connect.
    pub frontend: Option<ZmqEndpoint>,
    /// Where its workers connect.
    pub backend: Option<ZmqEndpoint>,
    /// Overrides `broker.request_timeout`.
    pub request_timeout: Option<Duration>,
    /// Overrides `broker.queue_limit`.
    pub queue_limit: Option<usize>,
    /// Overrides `broker.queue_max_bytes`.
    pub queue_max_bytes: Option<ByteSize>,
    /// Overrides `broker.max_workers`.
    pub max_workers: Option<usize>,
    /// Overrides `broker.retry_on_worker_loss`.
    pub retry_on_worker_loss: Option<bool>,
    /// Overrides `broker.max_attempts`.
    pub max_attempts: Option<u32>,
    /// Overrides `broker.error_replies`.
    pub error_replies: Option<bool>,
}

/// `[broker.majordomo]`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct MajordomoConfig {
    /// Whether the Majordomo socket is bound.
    pub enabled: bool,
    /// Its ROUTER bind address.
    pub bind: ZmqEndpoint,
    /// Named services that may exist at once (services with neither workers nor waiting
    /// requests are forgotten).
    pub max_services: usize,
    /// Overrides `broker.queue_max_bytes` for the services known only through the Majordomo
    /// socket.
    pub queue_max_bytes: Option<ByteSize>,
}

impl Default for MajordomoConfig {
    fn default() -> Self {
        MajordomoConfig {
            enabled: true,
            bind: "tcp://127.0.0.1:7500".parse().expect("valid default"),
            max_services: 256,
            queue_max_bytes: None,
        }
    }
}

/// The request settings of one service, with the broker-wide defaults applied.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServiceSettings {
    /// The service's name.
    pub name: String,
    /// See [`BrokerConfig::request_timeout`].
    pub request_timeout: std::time::Duration,
    /// See [`BrokerConfig::queue_limit`].
    pub queue_limit: usize,
    /// See [`BrokerConfig::queue_max_bytes`], in bytes.
    pub queue_max_bytes: u64,
    /// See [`BrokerConfig::max_workers`].
    pub max_workers: usize,
    /// See [`BrokerConfig::retry_on_worker_loss`].
    pub retry_on_worker_loss: bool,
    /// See [`BrokerConfig::max_attempts`].
    pub max_attempts: u32,
    /// See [`BrokerConfig::error_replies`] (Paranoid Pirate clients only).
    pub error_replies: bool,
}

/// A Paranoid Pirate service's sockets and settings.
#[derive(Debug, Clone)]
pub struct PirateService {
    /// Request settings.
    pub settings: ServiceSettings,
    /// Client socket.
    pub frontend: ZmqEndpoint,
    /// Worker socket.
    pub backend: ZmqEndpoint,
}

impl BrokerConfig {
    /// Every Paranoid Pirate service, the default one first, with defaults applied.
    pub fn pirate_services(&self) -> Vec<PirateService> {
        let mut all = vec![PirateService {
            settings: self.settings_for(&self.service),
            frontend: self.frontend.clone(),
            backend: self.backend.clone(),
        }];
        for extra in &self.services {
            let mut settings = self.settings_for(&extra.name);
            if let Some(t) = extra.request_timeout {
                settings.request_timeout = t.get();
            }
            if let Some(n) = extra.queue_limit {
                settings.queue_limit = n;
            }
            if let Some(n) = extra.queue_max_bytes {
                settings.queue_max_bytes = n.0;
            }
            if let Some(n) = extra.max_workers {
                settings.max_workers = n;
            }
            if let Some(r) = extra.retry_on_worker_loss {
                settings.retry_on_worker_loss = r;
            }
            if let Some(n) = extra.max_attempts {
                settings.max_attempts = n;
            }
            if let Some(e) = extra.error_replies {
                settings.error_replies = e;
            }
            all.push(PirateService {
                settings,
                frontend: extra.frontend.clone().expect("validated"),
                backend: extra.backend.clone().expect("validated"),
            });
        }
        all
    }

    /// Broker-wide request settings for a service called `name`.
    pub fn settings_for(&self, name: &str) -> ServiceSettings {
        ServiceSettings {
            name: name.to_string(),
            request_timeout: self.request_timeout.get(),
            queue_limit: self.queue_limit,
            queue_max_bytes: self.queue_max_bytes.0,
            max_workers: self.max_workers,
            retry_on_worker_loss: self.retry_on_worker_loss,
            max_attempts: self.max_attempts,
            error_replies: self.error_replies,
        }
    }

    /// Request settings of a service known only through the Majordomo socket called `name`:
    /// the broker-wide ones, with `majordomo.queue_max_bytes` when set.
    pub fn majordomo_settings_for(&self, name: &str) -> ServiceSettings {
        let mut settings = self.settings_for(name);
        if let Some(n) = self.majordomo.queue_max_bytes {
            settings.queue_max_bytes = n.0;
        }
        settings
    }

    /// Checks the rules the types cannot express. Keys in errors are relative to `[broker]`.
    pub fn validate(&self) -> Result<(), ConfigError> {
        positive(self.heartbeat_interval, "heartbeat_interval")?;
        positive(self.request_timeout, "request_timeout")?;
        at_least_bytes(self.queue_max_bytes, "queue_max_bytes")?;
        if let Some(n) = self.majordomo.queue_max_bytes {
            at_least_bytes(n, "majordomo.queue_max_bytes")?;
        }
        at_least(self.liveness as i64, 1, "liveness")?;
        at_least(self.max_workers as i64, 1, "max_workers")?;
        at_least(self.max_attempts as i64, 1, "max_attempts")?;
        at_least(self.hwm as i64, 1, "hwm")?;
        at_least(self.max_message_size, 1, "max_message_size")?;
        at_least(
            self.majordomo.max_services as i64,
            1,
            "majordomo.max_services",
        )?;
        check_service_name(&self.service).map_err(|m| ConfigError::new("service", m))?;
        if self
            .advertise_host
            .contains(|c: char| !(c.is_ascii_alphanumeric() || "-.:[]".contains(c)))
        {
            return Err(ConfigError::new(
                "advertise_host",
                format!(
                    "\"{}\" is not a host name or IP address",
                    self.advertise_host.escape_debug()
                ),
            ));
        }

        let mut names = HashSet::from([self.service.as_str()]);
        let mut endpoints = HashSet::new();
        let mut claim = |endpoint: &ZmqEndpoint, key: String| {
            if is_wildcard_port(endpoint.as_str())
                || endpoints.insert(endpoint.as_str().to_string())
            {
                Ok(())
            } else {
                Err(ConfigError::new(
                    key,
                    format!("{endpoint} is already used by another broker socket"),
                ))
            }
        };
        claim(&self.frontend, "frontend".into())?;
        claim(&self.backend, "backend".into())?;
        if self.majordomo.enabled {
            claim(&self.majordomo.bind, "majordomo.bind".into())?;
        }
        for (i, extra) in self.services.iter().enumerate() {
            let key = |k: &str| format!("services[{i}].{k}");
            check_service_name(&extra.name).map_err(|m| ConfigError::new(key("name"), m))?;
            if !names.insert(extra.name.as_str()) {
                return Err(ConfigError::new(
                    key("name"),
                    format!("service \"{}\" is defined twice", extra.name),
                ));
            }
            for (field, value) in [("frontend", &extra.frontend), ("backend", &extra.backend)] {
                match value {
                    Some(endpoint) => claim(endpoint, key(field))?,
                    None => {
                        return Err(ConfigError::new(
                            key(field),
                            "is required for every [[broker.services]] entry",
                        ))
                    }
                }
            }
            if let Some(t) = extra.request_timeout {
                positive(t, &key("request_timeout"))?;
            }
            if let Some(n) = extra.queue_max_bytes {
                at_least_bytes(n, &key("queue_max_bytes"))?;
            }
            if let Some(n) = extra.max_workers {
                at_least(n as i64, 1, &key("max_workers"))?;
            }
            if let Some(n) = extra.max_attempts {
                at_least(n as i64, 1, &key("max_attempts"))?;
            }
        }
        Ok(())
    }
}

/// Whether `endpoint` lets the system choose the port (`:*` or `:0`).
pub(crate) fn is_wildcard_port(endpoint: &str) -> bool {
    endpoint.ends_with(":*") || endpoint.ends_with(":0")
}

fn positive(value: Duration, key: &str) -> Result<(), ConfigError> {
    if value.get().is_zero() {
        return Err(ConfigError::new(key, "must be longer than 0s"));
    }
    Ok(())
}

/// A queue byte bound below one frame's worth of bytes would refuse every request.
fn at_least_bytes(value: ByteSize, key: &str) -> Result<(), ConfigError> {
    if value.0 < 1024 {
        return Err(ConfigError::new(key, "must be at least 1KiB"));
    }
    Ok(())
}

fn at_least(value: i64, min: i64, key: &str) -> Result<(), ConfigError> {
    if value < min {
        return Err(ConfigError::new(key, format!("must be at least {min}")));
    }
    Ok(())
}

/// Longest service name, in bytes.
pub const MAX_SERVICE_NAME: usize = 128;

/// A service name is 1 to 128 printable ASCII characters without spaces, and does not start
/// with `mmi.` (the Majordomo management namespace).
pub fn check_service_name(name: &str) -> Result<(), String> {
    if name.is_empty() {
        return Err("a service name cannot be empty".into());
    }
    if name.len() > MAX_SERVICE_NAME {
        return Err(format!(
            "service name is {} bytes long; at most {MAX_SERVICE_NAME} are allowed",
            name.len()
        ));
    }
    if !name.bytes().all(|b| b.is_ascii_graphic()) {
        return Err(format!(
            "service name \"{}\" may only hold printable ASCII characters without spaces",
            name.escape_debug()
        ));
    }
    if name.starts_with("mmi.") {
        return Err(format!(
            "service name \"{name}\" is reserved: `mmi.` names are answered by the broker"
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(toml_text: &str) -> Result<BrokerConfig, String> {
        let value: toml::Value = toml::from_str(toml_text).map_err(|e| e.to_string())?;
        let config: BrokerConfig = value.try_into().map_err(|e| e.to_string())?;
        config.validate().map_err(|e| e.to_string())?;
        Ok(config)
    }

    #[test]
    fn the_simple_form_is_one_service() {
        let config =
            parse("frontend = \"tcp://127.0.0.1:9001\"\nbackend = \"tcp://127.0.0.1:9002\"")
                .unwrap();
        let services = config.pirate_services();
        assert_eq!(services.len(), 1);
        assert_eq!(services[0].settings.name, "echo");
        assert_eq!(services[0].frontend.as_str(), "tcp://127.0.0.1:9001");
        assert_eq!(
            services[0].settings.request_timeout,
            std::time::Duration::from_secs(5)
        );
    }

    #[test]
    fn extra_services_inherit_and_override() {
        let config = parse(
            r#"
            request_timeout = "2s"
            [[services]]
            name = "resize"
            frontend = "tcp://127.0.0.1:9011"
            backend = "tcp://127.0.0.1:9012"
            retry_on_worker_loss = true
            "#,
        )
        .unwrap();
        let services = config.pirate_services();
        assert_eq!(services[1].settings.name, "resize");
        assert!(services[1].settings.retry_on_worker_loss);
        assert!(!services[0].settings.retry_on_worker_loss);
        assert_eq!(
            services[1].settings.request_timeout,
            std::time::Duration::from_secs(2)
        );
    }

    #[test]
    fn mistakes_name_their_key() {
        let cases = [
            ("liveness = 0", "`liveness`"),
            ("heartbeat_interval = \"0s\"", "`heartbeat_interval`"),
            ("service = \"mmi.x\"", "reserved"),
            ("service = \"a b\"", "without spaces"),
            ("advertise_host = \"a/b\"", "`advertise_host`"),
            ("backend = \"tcp://127.0.0.1:7501\"", "`backend`"),
            (
                "[[services]]\nname = \"echo\"\nfrontend = \"tcp://a:1\"\nbackend = \"tcp://a:2\"",
                "`services[0].name`",
            ),
            (
                "[[services]]\nname = \"x\"\nfrontend = \"tcp://a:1\"",
                "`services[0].backend`",
            ),
        ];
        for (text, expected) in cases {
            let err = parse(text).unwrap_err();
            assert!(err.contains(expected), "{text}: {err}");
        }
        let err = parse("queue_limt = 3").unwrap_err();
        assert!(err.contains("queue_limt"), "{err}");
    }

    #[test]
    fn queue_max_bytes_defaults_overrides_and_validation() {
        let config = parse(
            r#"
            queue_max_bytes = "32MiB"
            majordomo.queue_max_bytes = "1MiB"
            [[services]]
            name = "resize"
            frontend = "tcp://127.0.0.1:9011"
            backend = "tcp://127.0.0.1:9012"
            queue_max_bytes = "2GiB"
            "#,
        )
        .unwrap();
        let pirate = config.pirate_services();
        assert_eq!(pirate[0].settings.queue_max_bytes, 32 << 20);
        assert_eq!(pirate[1].settings.queue_max_bytes, 2 << 30);
        assert_eq!(config.majordomo_settings_for("x").queue_max_bytes, 1 << 20);
        assert_eq!(
            BrokerConfig::default().settings_for("x").queue_max_bytes,
            64 << 20
        );
        let err = parse("queue_max_bytes = \"12 apples\"").unwrap_err();
        assert!(err.contains("invalid size"), "{err}");
        let err = parse("queue_max_bytes = 10").unwrap_err();
        assert!(err.contains("queue_max_bytes"), "{err}");
        let err = parse(
            r#"
            [[services]]
            name = "resize"
            frontend = "tcp://127.0.0.1:9011"
            backend = "tcp://127.0.0.1:9012"
            queue_max_bytes = 0
            "#,
        )
        .unwrap_err();
        assert!(err.contains("services[0].queue_max_bytes"), "{err}");
    }
}
