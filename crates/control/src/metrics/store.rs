//! The latest value of every metric services send over their ipc channels.
//!
//! [`ServiceMetricsStore`] is an actor on a thread of its own, subscribed to the node's event
//! stream ([`troupe_ipc::events`]) before the ipc role starts; [`MetricStore`] is its
//! sans-IO core. A metric is checked and named as [`super::names`] says, then kept as the
//! latest value of its series (service, name, device) until the service is deleted. What is
//! kept is bounded: [`StoreLimits`].

use std::collections::{BTreeMap, HashMap, HashSet};
use std::time::Instant;

use actix::prelude::*;
use troupe_ipc::events::ServiceEvent;

use super::names::{self, Kind, Refusal};

/// Series of services' own metrics kept over all services at most.
pub const MAX_SERIES_PER_NODE: usize = 100_000;
/// Services whose metrics are kept at most (the supervisor holds at most 4096 children, and
/// keeps 64 deleted ones listed).
pub const MAX_SERVICES: usize = 8192;
/// Events the store's mailbox holds before the hub counts the next ones as missed.
pub const MAILBOX: usize = 8192;

/// What the store keeps at most.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StoreLimits {
    /// Series per service (`[control] max_service_series`).
    pub series_per_service: usize,
    /// Series over all services.
    pub series: usize,
    /// Services.
    pub services: usize,
}

impl StoreLimits {
    /// The node's limits with `series_per_service` series per service.
    pub fn with_series_per_service(series_per_service: usize) -> Self {
        StoreLimits {
            series_per_service,
            series: MAX_SERIES_PER_NODE,
            services: MAX_SERVICES,
        }
    }
}

#[derive(Debug, Clone, Copy)]
struct Sample {
    kind: Kind,
    value: f64,
}

#[derive(Debug)]
struct ServiceEntry {
    /// By (family name, device).
    series: BTreeMap<(String, String), Sample>,
    refused: [u64; Refusal::ALL.len()],
    updated: Instant,
}

/// One exposed family of services' metrics.
#[derive(Debug, Clone, PartialEq)]
pub struct FamilySnapshot {
    /// Its name (a counter's without `_total`).
    pub name: String,
    /// Its type.
    pub kind: Kind,
    /// `(service, device, value)`; an empty device means no `device` label.
    pub samples: Vec<(String, String, f64)>,
}

/// One service's bookkeeping.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServiceCounts {
    /// The service.
    pub service: String,
    /// Series kept.
    pub series: usize,
    /// Metrics refused, by reason (in [`Refusal::ALL`] order).
    pub refused: [u64; Refusal::ALL.len()],
}

/// Everything the store holds, sorted by name.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct StoreSnapshot {
    /// The families.
    pub families: Vec<FamilySnapshot>,
    /// Each service's series and refusals.
    pub services: Vec<ServiceCounts>,
    /// Metrics of services beyond [`StoreLimits::services`], dropped.
    pub dropped: u64,
}

/// The store's logic.
#[derive(Debug)]
pub struct MetricStore {
    limits: StoreLimits,
    services: BTreeMap<String, ServiceEntry>,
    /// Type and series count of each sample name in use.
    families: HashMap<String, (Kind, usize)>,
    series: usize,
    dropped: u64,
}

impl MetricStore {
    /// An empty store.
    pub fn new(limits: StoreLimits) -> Self {
        MetricStore {
            limits,
            services: BTreeMap::new(),
            families: HashMap::new(),
            series: 0,
            dropped: 0,
        }
    }

    /// Records the metric `route_key` = `data` about `device` from `service` at `now`.
    pub fn record(
        &mut self,
        service: &str,
        device: &str,
        route_key: &str,
        data: &[u8],
        now: Instant,
    ) -> Result<(), Refusal> {
        if !self.services.contains_key(service) {
            if self.services.len() >= self.limits.services {
                self.dropped += 1;
                return Err(Refusal::Limit);
            }
            self.services.insert(
                service.to_string(),
                ServiceEntry {
                    series: BTreeMap::new(),
                    refused: [0; Refusal::ALL.len()],
                    updated: now,
                },
            );
        }
        let outcome = self.admit(service, device, route_key, data);
        let entry = self.services.get_mut(service).expect("inserted above");
        entry.updated = now;
        if let Err(why) = outcome {
            entry.refused[why.index()] += 1;
        }
        outcome
    }

    fn admit(
        &mut self,
        service: &str,
        device: &str,
        route_key: &str,
        data: &[u8],
    ) -> Result<(), Refusal> {
        let (kind, value) = names::parse_value(data)?;
        let family = names::family_name(route_key, kind)?;
        names::check_device(device)?;
        let sample_name = names::sample_name(&family, kind);
        if self
            .families
            .get(&sample_name)
            .is_some_and(|(known, _)| *known != kind)
        {
            return Err(Refusal::Type);
        }
        let entry = self.services.get_mut(service).expect("checked by record");
        let key = (family, device.to_string());
        if let Some(sample) = entry.series.get_mut(&key) {
            if sample.kind != kind {
                return Err(Refusal::Type);
            }
            sample.value = value;
            return Ok(());
        }
        if entry.series.len() >= self.limits.series_per_service || self.series >= self.limits.series
        {
            return Err(Refusal::Limit);
        }
        entry.series.insert(key, Sample { kind, value });
        self.series += 1;
        self.families.entry(sample_name).or_insert((kind, 0)).1 += 1;
        Ok(())
    }

    /// Forgets the services not in `live` that sent nothing since `before` (deleted ones).
    pub fn prune(&mut self, live: &HashSet<String>, before: Instant) {
        let gone: Vec<String> = self
            .services
            .iter()
            .filter(|(id, entry)| !live.contains(*id) && entry.updated < before)
            .map(|(id, _)| id.clone())
            .collect();
        for id in gone {
            let Some(entry) = self.services.remove(&id) else {
                continue;
            };
            for ((family, _), sample) in entry.series {
                self.series -= 1;
                let name = names::sample_name(&family, sample.kind);
                if let Some((_, count)) = self.families.get_mut(&name) {
                    *count -= 1;
                    if *count == 0 {
                        self.families.remove(&name);
                    }
                }
            }
        }
    }

    /// Everything held, sorted by family, service and device.
    pub fn snapshot(&self) -> StoreSnapshot {
        let mut families: BTreeMap<&str, FamilySnapshot> = BTreeMap::new();
        let mut services = Vec::with_capacity(self.services.len());
        for (service, entry) in &self.services {
            for ((family, device), sample) in &entry.series {
                families
                    .entry(family)
                    .or_insert_with(|| FamilySnapshot {
                        name: family.clone(),
                        kind: sample.kind,
                        samples: Vec::new(),
                    })
                    .samples
                    .push((service.clone(), device.clone(), sample.value));
            }
            services.push(ServiceCounts {
                service: service.clone(),
                series: entry.series.len(),
                refused: entry.refused,
            });
        }
        StoreSnapshot {
            families: families.into_values().collect(),
            services,
            dropped: self.dropped,
        }
    }
}

/// The store's actor: feeds [`ServiceEvent`]s to a [`MetricStore`] and answers
/// [`TakeSnapshot`].
pub struct ServiceMetricsStore {
    store: MetricStore,
}

impl ServiceMetricsStore {
    /// A store with `limits`.
    pub fn new(limits: StoreLimits) -> Self {
        ServiceMetricsStore {
            store: MetricStore::new(limits),
        }
    }
}

impl Actor for ServiceMetricsStore {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Self::Context) {
        // The hub never waits for a subscriber: a burst beyond this is missed (and counted).
        ctx.set_mailbox_capacity(MAILBOX);
    }
}

impl Handler<ServiceEvent> for ServiceMetricsStore {
    type Result = ();

    fn handle(&mut self, event: ServiceEvent, _: &mut Self::Context) {
        let ServiceEvent::Metric {
            service,
            device,
            route_key,
            data,
        } = event
        else {
            return;
        };
        if let Err(why) = self
            .store
            .record(&service, &device, &route_key, &data, Instant::now())
        {
            tracing::debug!(%service, %route_key, reason = why.as_str(), "service metric refused");
        }
    }
}

/// Asks the store for a [`StoreSnapshot`], first forgetting the services not in `live` that
/// sent nothing since `since` (when the supervisor said which services exist).
#[derive(Debug, Message)]
#[rtype(result = "StoreSnapshot")]
pub struct TakeSnapshot {
    /// The supervisor's services (deleted ones excepted), if it answered.
    pub live: Option<HashSet<String>>,
    /// When the supervisor was asked.
    pub since: Instant,
}

impl Handler<TakeSnapshot> for ServiceMetricsStore {
    type Result = MessageResult<TakeSnapshot>;

    fn handle(&mut self, msg: TakeSnapshot, _: &mut Self::Context) -> Self::Result {
        if let Some(live) = &msg.live {
            self.store.prune(live, msg.since);
        }
        MessageResult(self.store.snapshot())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn limits(per_service: usize, total: usize, services: usize) -> StoreLimits {
        StoreLimits {
            series_per_service: per_service,
            series: total,
            services,
        }
    }

    #[test]
    fn the_latest_value_of_each_series_is_kept_under_its_service() {
        let now = Instant::now();
        let mut store = MetricStore::new(StoreLimits::with_series_per_service(10));
        store
            .record("py", "dev-1", "temperature", b"21.5", now)
            .unwrap();
        store
            .record("py", "dev-1", "temperature", b"22", now)
            .unwrap();
        store
            .record("py", "dev-2", "temperature", b"19", now)
            .unwrap();
        store.record("web", "", "temperature", b"30", now).unwrap();
        store
            .record(
                "web",
                "",
                "requests_total",
                br#"{"value": 7, "type": "counter"}"#,
                now,
            )
            .unwrap();
        let snapshot = store.snapshot();
        assert_eq!(
            snapshot.families,
            [
                FamilySnapshot {
                    name: "troupe_service_metric_requests".into(),
                    kind: Kind::Counter,
                    samples: vec![("web".into(), "".into(), 7.0)],
                },
                FamilySnapshot {
                    name: "troupe_service_metric_temperature".into(),
                    kind: Kind::Gauge,
                    samples: vec![
                        ("py".into(), "dev-1".into(), 22.0),
                        ("py".into(), "dev-2".into(), 19.0),
                        ("web".into(), "".into(), 30.0),
                    ],
                },
            ]
        );
        assert_eq!(
            snapshot
                .services
                .iter()
                .map(|s| s.series)
                .collect::<Vec<_>>(),
            [2, 2]
        );
    }

    #[test]
    fn refusals_are_counted_by_service_and_reason() {
        let now = Instant::now();
        let mut store = MetricStore::new(limits(2, 100, 10));
        assert_eq!(store.record("a", "", "...", b"1", now), Err(Refusal::Name));
        assert_eq!(
            store.record("a", "", "x", b"warm", now),
            Err(Refusal::Value)
        );
        assert_eq!(
            store.record("a", &"d".repeat(200), "x", b"1", now),
            Err(Refusal::Label)
        );
        store.record("a", "", "x", b"1", now).unwrap();
        // `x` is a gauge: not a counter, here or in another service.
        let counter = br#"{"value": 1, "type": "counter"}"#;
        store.record("b", "", "x_total", b"1", now).unwrap();
        assert_eq!(store.record("a", "", "x", counter, now), Err(Refusal::Type));
        assert_eq!(
            store.record("c", "", "x_total", counter, now),
            Err(Refusal::Type)
        );
        store.record("a", "", "y", b"1", now).unwrap();
        assert_eq!(store.record("a", "", "z", b"1", now), Err(Refusal::Limit));
        // An existing series still takes new values at the limit.
        store.record("a", "", "y", b"2", now).unwrap();
        let snapshot = store.snapshot();
        let a = &snapshot.services[0];
        assert_eq!((a.service.as_str(), a.series), ("a", 2));
        assert_eq!(a.refused, [1, 1, 1, 1, 1]);
        assert_eq!(snapshot.services[2].refused[Refusal::Type.index()], 1);
    }

    #[test]
    fn the_node_wide_bounds_hold() {
        let now = Instant::now();
        let mut store = MetricStore::new(limits(10, 3, 2));
        store.record("a", "", "m1", b"1", now).unwrap();
        store.record("a", "", "m2", b"1", now).unwrap();
        store.record("b", "", "m1", b"1", now).unwrap();
        assert_eq!(store.record("b", "", "m2", b"1", now), Err(Refusal::Limit));
        assert_eq!(store.record("c", "", "m1", b"1", now), Err(Refusal::Limit));
        let snapshot = store.snapshot();
        assert_eq!((snapshot.services.len(), snapshot.dropped), (2, 1));
    }

    #[test]
    fn deleted_services_are_forgotten_with_their_series_and_types() {
        let t0 = Instant::now();
        let t1 = t0 + Duration::from_secs(1);
        let mut store = MetricStore::new(limits(10, 2, 10));
        store.record("gone", "", "x", b"1", t0).unwrap();
        store.record("kept", "", "y", b"1", t0).unwrap();
        // A service not listed but heard from after the supervisor answered stays.
        store.record("new", "", "z", b"1", t1).unwrap_err();
        let live: HashSet<String> = ["kept".to_string()].into();
        store.prune(&live, t1);
        let snapshot = store.snapshot();
        let ids: Vec<&str> = snapshot
            .services
            .iter()
            .map(|s| s.service.as_str())
            .collect();
        assert_eq!(ids, ["kept", "new"]);
        // Its series and its name's type are free again.
        let counter = br#"{"value": 1, "type": "counter"}"#;
        store.record("new", "", "x_total", counter, t1).unwrap();
        assert_eq!(store.snapshot().families.len(), 2);
    }
}
