//! How a service's own metric (a `Metric` frame on its ipc channel: `device`, `route_key`,
//! `data`) becomes a series, and what is refused.
//!
//! - The **name** is the `route_key`. Every byte outside `[A-Za-z0-9_]` becomes `_`
//!   (`queue.depth` → `queue_depth`, `http-2xx` → `http_2xx`); a name that is empty, longer
//!   than [`MAX_NAME_BYTES`] or has no letter or digit is refused (`name`). It is exposed as
//!   [`SERVICE_METRIC_PREFIX`]`<name>`: `troupe_service_metric_queue_depth`.
//! - The **value** is `data`: a number in text (`21.5`, `-3`, `1e6`), which is a gauge, or a
//!   JSON object `{"value": 42, "type": "counter"}` (`type`: `gauge`, the default, or
//!   `counter`). A counter's name loses a trailing `_total`, which the exposition adds back
//!   (`requests_total` → `troupe_service_metric_requests_total`). A value that is not a
//!   finite number, or a negative counter, is refused (`value`).
//! - The **device**, when not empty, is the series' `device` label (at most
//!   [`MAX_DEVICE_BYTES`] bytes, else refused: `label`); the service's id is its `service`
//!   label.
//! - One exposed name has one type: a name first seen as a gauge and then sent as a counter
//!   (by any service) is refused (`type`).
//! - Series are bounded per service and per node (`limit`): see [`super::store`].

use serde::Deserialize;

/// What every service metric's exposed name starts with.
pub const SERVICE_METRIC_PREFIX: &str = "troupe_service_metric_";
/// Longest metric name (`route_key`) accepted.
pub const MAX_NAME_BYTES: usize = 100;
/// Longest `device` accepted.
pub const MAX_DEVICE_BYTES: usize = 128;
/// Longest `data` accepted.
pub const MAX_DATA_BYTES: usize = 1024;

/// A service metric's type.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Kind {
    /// A value that goes up and down.
    Gauge,
    /// A count that only grows (it may start again from zero when the service restarts).
    Counter,
}

/// Why a service metric was refused: `troupe_service_metrics_refused_total{reason}`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// The name cannot be made a Prometheus name.
    Name,
    /// The device is too long.
    Label,
    /// The value is not a number (or a negative counter).
    Value,
    /// The name is exposed with another type already.
    Type,
    /// The service (or the node) holds its maximum of series.
    Limit,
}

impl Refusal {
    /// Every reason, in the order metrics list them.
    pub const ALL: [Refusal; 5] = [
        Refusal::Name,
        Refusal::Label,
        Refusal::Value,
        Refusal::Type,
        Refusal::Limit,
    ];

    /// The reason's label value.
    pub fn as_str(self) -> &'static str {
        match self {
            Refusal::Name => "name",
            Refusal::Label => "label",
            Refusal::Value => "value",
            Refusal::Type => "type",
            Refusal::Limit => "limit",
        }
    }

    /// Its index in [`Refusal::ALL`].
    pub fn index(self) -> usize {
        self as usize
    }
}

/// The name a metric is exposed under, without the `_total` the exposition adds to counters:
/// [`SERVICE_METRIC_PREFIX`] and the sanitised `route_key`.
pub fn family_name(route_key: &str, kind: Kind) -> Result<String, Refusal> {
    let key = route_key.trim();
    if key.is_empty() || key.len() > MAX_NAME_BYTES {
        return Err(Refusal::Name);
    }
    let mut name: String = key
        .bytes()
        .map(|b| match b {
            b'a'..=b'z' | b'A'..=b'Z' | b'0'..=b'9' | b'_' => b as char,
            _ => '_',
        })
        .collect();
    if kind == Kind::Counter {
        if let Some(base) = name.strip_suffix("_total") {
            name.truncate(base.len());
        }
    }
    if !name.bytes().any(|b| b.is_ascii_alphanumeric()) {
        return Err(Refusal::Name);
    }
    Ok(format!("{SERVICE_METRIC_PREFIX}{name}"))
}

/// The name a family's samples carry: a counter's ends in `_total`. Two metrics whose sample
/// names are equal must have one type.
pub fn sample_name(family: &str, kind: Kind) -> String {
    match kind {
        Kind::Gauge => family.to_string(),
        Kind::Counter => format!("{family}_total"),
    }
}

#[derive(Deserialize)]
struct Structured {
    value: f64,
    #[serde(default, rename = "type")]
    kind: Option<Kind>,
}

/// The type and value `data` carries (see the module's documentation).
pub fn parse_value(data: &[u8]) -> Result<(Kind, f64), Refusal> {
    if data.len() > MAX_DATA_BYTES {
        return Err(Refusal::Value);
    }
    let text = std::str::from_utf8(data)
        .map_err(|_| Refusal::Value)?
        .trim();
    let (kind, value) = if text.starts_with('{') {
        let parsed: Structured = serde_json::from_str(text).map_err(|_| Refusal::Value)?;
        (parsed.kind.unwrap_or(Kind::Gauge), parsed.value)
    } else {
        let value: f64 = text.parse().map_err(|_| Refusal::Value)?;
        (Kind::Gauge, value)
    };
    if !value.is_finite() || (kind == Kind::Counter && value < 0.0) {
        return Err(Refusal::Value);
    }
    Ok((kind, value))
}

/// Checks a `device`: empty (no label) or at most [`MAX_DEVICE_BYTES`].
pub fn check_device(device: &str) -> Result<(), Refusal> {
    match device.len() <= MAX_DEVICE_BYTES {
        true => Ok(()),
        false => Err(Refusal::Label),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_sanitised_prefixed_or_refused() {
        let gauge = |key: &str| family_name(key, Kind::Gauge);
        assert_eq!(
            gauge("temperature").unwrap(),
            "troupe_service_metric_temperature"
        );
        assert_eq!(
            gauge(" queue.depth ").unwrap(),
            "troupe_service_metric_queue_depth"
        );
        assert_eq!(
            gauge("http-2xx/s").unwrap(),
            "troupe_service_metric_http_2xx_s"
        );
        assert_eq!(gauge("2fast").unwrap(), "troupe_service_metric_2fast");
        assert_eq!(
            gauge("température").unwrap(),
            "troupe_service_metric_temp__rature"
        );
        assert_eq!(gauge("a:b").unwrap(), "troupe_service_metric_a_b");
        for bad in ["", "   ", "...", "__", &"x".repeat(MAX_NAME_BYTES + 1)] {
            assert_eq!(gauge(bad), Err(Refusal::Name), "{bad:?}");
        }
        assert!(gauge(&"x".repeat(MAX_NAME_BYTES)).is_ok());
    }

    #[test]
    fn a_counter_loses_its_total_suffix_which_the_exposition_adds() {
        let family = family_name("requests_total", Kind::Counter).unwrap();
        assert_eq!(family, "troupe_service_metric_requests");
        assert_eq!(
            sample_name(&family, Kind::Counter),
            "troupe_service_metric_requests_total"
        );
        // The same name as a gauge keeps it, and so collides with the counter's samples.
        let gauge = family_name("requests_total", Kind::Gauge).unwrap();
        assert_eq!(
            sample_name(&gauge, Kind::Gauge),
            sample_name(&family, Kind::Counter)
        );
        assert_eq!(family_name("_total", Kind::Counter), Err(Refusal::Name));
    }

    #[test]
    fn values_are_numbers_or_typed_json_objects() {
        assert_eq!(parse_value(b"21.5"), Ok((Kind::Gauge, 21.5)));
        assert_eq!(parse_value(b" -3\n"), Ok((Kind::Gauge, -3.0)));
        assert_eq!(parse_value(b"1e3"), Ok((Kind::Gauge, 1000.0)));
        assert_eq!(
            parse_value(br#"{"value": 42, "type": "counter"}"#),
            Ok((Kind::Counter, 42.0))
        );
        assert_eq!(
            parse_value(br#"{"value": 0.5, "help": "ignored"}"#),
            Ok((Kind::Gauge, 0.5))
        );
        for bad in [
            &b"warm"[..],
            b"",
            b"NaN",
            b"inf",
            b"\xff",
            br#"{"value": -1, "type": "counter"}"#,
            br#"{"value": 1, "type": "histogram"}"#,
            br#"{"type": "gauge"}"#,
        ] {
            assert_eq!(parse_value(bad), Err(Refusal::Value), "{bad:?}");
        }
        assert_eq!(
            parse_value(&vec![b'1'; MAX_DATA_BYTES + 1]),
            Err(Refusal::Value)
        );
    }

    #[test]
    fn devices_are_bounded() {
        assert!(check_device("").is_ok());
        assert!(check_device(&"d".repeat(MAX_DEVICE_BYTES)).is_ok());
        assert_eq!(
            check_device(&"d".repeat(MAX_DEVICE_BYTES + 1)),
            Err(Refusal::Label)
        );
    }
}
