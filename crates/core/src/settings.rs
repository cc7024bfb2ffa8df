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

/// A size in bytes: a number of bytes, or a number with a unit: `"512MiB"`, `"2GiB"`
/// (`KiB`, `MiB`, `GiB`, `TiB`; `KB`, `MB`, `GB`, `TB` are powers of 1000).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct ByteSize(pub u64);

impl ByteSize {
    /// The size as a `usize`, saturating on targets where it does not fit.
    pub fn as_usize(self) -> usize {
        usize::try_from(self.0).unwrap_or(usize::MAX)
    }
}

impl FromStr for ByteSize {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let bad = || {
            format!(
                "invalid size \"{text}\"; write bytes or a number with a unit, like \"4096\", \"64KiB\" or \"2GiB\""
            )
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
            "tib" => 1 << 40,
            "kb" => 1_000,
            "mb" => 1_000_000,
            "gb" => 1_000_000_000,
            "tb" => 1_000_000_000_000,
            _ => return Err(bad()),
        };
        number.checked_mul(scale).map(ByteSize).ok_or_else(bad)
    }
}

impl fmt::Display for ByteSize {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let n = self.0;
        for (unit, scale) in [
            ("TiB", 1u64 << 40),
            ("GiB", 1 << 30),
            ("MiB", 1 << 20),
            ("KiB", 1 << 10),
        ] {
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
                f.write_str("a size, like 4096 or \"512MiB\"")
            }
            fn visit_str<E: serde::de::Error>(self, text: &str) -> Result<ByteSize, E> {
                text.parse().map_err(E::custom)
            }
            fn visit_u64<E: serde::de::Error>(self, n: u64) -> Result<ByteSize, E> {
                Ok(ByteSize(n))
            }
            fn visit_i64<E: serde::de::Error>(self, n: i64) -> Result<ByteSize, E> {
                u64::try_from(n)
                    .map(ByteSize)
                    .map_err(|_| E::custom(format!("invalid size {n}: a size cannot be negative")))
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
