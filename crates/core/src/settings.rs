//! Validated value types that role config sections are built from. Each one rejects bad input
//! at parse time with a message saying what was expected, so a config error names the key
//! (added by the caller) and the accepted forms.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// A duration written with a unit in config files: `"5s"`, `"250ms"`, `"1m 30s"`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Duration(pub std::time::Duration);

impl Duration {
    /// `secs` seconds.
    pub const fn from_secs(secs: u64) -> Self {
        Duration(std::time::Duration::from_secs(secs))
    }

    /// `millis` milliseconds.
    pub const fn from_millis(millis: u64) -> Self {
        Duration(std::time::Duration::from_millis(millis))
    }

    /// The standard library value.
    pub const fn get(self) -> std::time::Duration {
        self.0
    }
}

impl From<Duration> for std::time::Duration {
    fn from(d: Duration) -> Self {
        d.0
    }
}

impl FromStr for Duration {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        humantime::parse_duration(text.trim())
            .map(Duration)
            .map_err(|err| {
                format!(
                    "invalid duration \"{text}\" ({err}); write a number with a unit, like \"5s\", \"250ms\" or \"1m\""
                )
            })
    }
}

impl fmt::Display for Duration {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", humantime::format_duration(self.0))
    }
}

impl Serialize for Duration {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Duration {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct Visitor;
        impl serde::de::Visitor<'_> for Visitor {
            type Value = Duration;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a duration with a unit, like \"5s\" or \"250ms\"")
            }
            fn visit_str<E: serde::de::Error>(self, text: &str) -> Result<Duration, E> {
                text.parse().map_err(E::custom)
            }
            fn visit_i64<E: serde::de::Error>(self, n: i64) -> Result<Duration, E> {
                Err(E::custom(format!(
                    "invalid duration {n}: a duration needs a unit, like \"{n}s\" or \"{n}ms\""
                )))
            }
            fn visit_u64<E: serde::de::Error>(self, n: u64) -> Result<Duration, E> {
                self.visit_i64(n as i64)
            }
        }
        deserializer.deserialize_any(Visitor)
    }
}

/// A ZeroMQ endpoint: `tcp://HOST:PORT` (HOST may be `*` when binding), `ipc://PATH` or
/// `inproc://NAME`.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct ZmqEndpoint(String);

impl ZmqEndpoint {
    /// The endpoint as ZeroMQ takes it.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl FromStr for ZmqEndpoint {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let bad = |why: &str| {
            format!(
                "invalid ZeroMQ address \"{text}\" ({why}); expected tcp://HOST:PORT, ipc://PATH or inproc://NAME"
            )
        };
        if let Some(rest) = text.strip_prefix("tcp://") {
            let (host, port) = rest.rsplit_once(':').ok_or_else(|| bad("no port"))?;
            if host.is_empty() {
                return Err(bad("no host"));
            }
            if port != "*" && port.parse::<u16>().is_err() {
                return Err(bad("port is not a number from 0 to 65535"));
            }
            Ok(ZmqEndpoint(text.to_string()))
        } else if let Some(rest) = text
            .strip_prefix("ipc://")
            .or_else(|| text.strip_prefix("inproc://"))
        {
            if rest.is_empty() {
                return Err(bad("empty path"));
            }
            Ok(ZmqEndpoint(text.to_string()))
        } else {
            Err(bad("unknown transport"))
        }
    }
}

impl fmt::Display for ZmqEndpoint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl Serialize for ZmqEndpoint {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(&self.0)
    }
}

impl<'de> Deserialize<'de> for ZmqEndpoint {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = String::deserialize(deserializer)?;
        text.parse().map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_need_units() {
        assert_eq!(
            "250ms".parse::<Duration>().unwrap(),
            Duration::from_millis(250)
        );
        assert_eq!("5s".parse::<Duration>().unwrap(), Duration::from_secs(5));
        assert!("5".parse::<Duration>().unwrap_err().contains("\"5s\""));
        let err = serde_json::from_str::<Duration>("5")
            .unwrap_err()
            .to_string();
        assert!(err.contains("needs a unit"), "{err}");
        assert_eq!(Duration::from_millis(1500).to_string(), "1s 500ms");
    }

    #[test]
    fn endpoints_are_checked() {
        for good in [
            "tcp://127.0.0.1:7400",
            "tcp://*:5555",
            "tcp://localhost:*",
            "ipc:///tmp/x",
            "inproc://a",
        ] {
            assert!(good.parse::<ZmqEndpoint>().is_ok(), "{good}");
        }
        for bad in [
            "127.0.0.1:7400",
            "tcp://127.0.0.1",
            "tcp://h:99999",
            "ipc://",
            "udp://x:1",
        ] {
            let err = bad.parse::<ZmqEndpoint>().unwrap_err();
            assert!(err.contains("expected tcp://HOST:PORT"), "{bad}: {err}");
        }
    }
}
