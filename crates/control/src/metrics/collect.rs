//! The snapshots of one scrape, and the [`Collector`] that encodes them.

use std::borrow::Cow;
use std::fmt;

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{
    prometheus_text, DescriptorEncoder, EncodeCounterValue, EncodeGaugeValue, NoLabelSet,
};
use prometheus_client::metrics::MetricType;
use prometheus_client::registry::{Registry, Unit};
use troupe_beacon::server::actor::BeaconMetrics;
use troupe_broker::BrokerStats;
use troupe_ipc::hub::HubStats;
use troupe_supervisor::{ExitKind, ServiceMetrics, ServiceState};

use super::names::{Kind, Refusal};
use super::process::{self, CgroupSample, ProcessSample};
use super::store::StoreSnapshot;
use crate::state::{NodeView, RoleState};

/// What one scrape found; a role that does not run, or did not answer, is `None`.
#[derive(Debug)]
pub(crate) struct Gathered {
    pub(crate) node: NodeView,
    pub(crate) supervisor: Option<Vec<ServiceMetrics>>,
    pub(crate) broker: Option<BrokerStats>,
    pub(crate) beacon: Option<BeaconMetrics>,
    pub(crate) ipc: Option<HubStats>,
    pub(crate) services: Option<StoreSnapshot>,
    pub(crate) scrape_errors: Vec<(&'static str, u64)>,
    pub(crate) gather_seconds: f64,
    pub(crate) process: Option<ProcessSample>,
    /// By service id, for the running services that have a cgroup.
    pub(crate) cgroups: Vec<(String, CgroupSample)>,
}

impl Gathered {
    /// Reads the cgroup of every running service that has one (blocking).
    pub(crate) fn read_cgroups(&mut self) {
        let Some(services) = &self.supervisor else {
            return;
        };
        self.cgroups = services
            .iter()
            .filter_map(|s| Some((s.id.clone(), process::read_cgroup(s.cgroup.as_ref()?))))
            .collect();
    }
}

/// The exposition of `gathered`, every series labelled with the node's name.
pub(crate) fn encode(gathered: Gathered) -> Result<String, fmt::Error> {
    let node = gathered.node.name.clone();
    let mut registry =
        Registry::with_labels(std::iter::once((Cow::Borrowed("node"), Cow::Owned(node))));
    registry.register_collector(Box::new(gathered));
    let mut text = String::new();
    prometheus_text::encode(&mut text, &registry)?;
    Ok(text)
}

type Labels<'a> = Vec<(&'static str, &'a str)>;

/// One family of gauges; nothing when there is no sample.
fn gauges<V: EncodeGaugeValue>(
    encoder: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    unit: Option<&Unit>,
    samples: Vec<(Labels<'_>, V)>,
) -> fmt::Result {
    if samples.is_empty() {
        return Ok(());
    }
    let mut metric = encoder.encode_descriptor(name, help, unit, MetricType::Gauge)?;
    for (labels, value) in &samples {
        metric.encode_family(labels)?.encode_gauge(value)?;
    }
    Ok(())
}

/// One family of counters (the exposition adds `_total`); nothing when there is no sample.
fn counters<V: EncodeCounterValue>(
    encoder: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    unit: Option<&Unit>,
    samples: Vec<(Labels<'_>, V)>,
) -> fmt::Result {
    if samples.is_empty() {
        return Ok(());
    }
    let mut metric = encoder.encode_descriptor(name, help, unit, MetricType::Counter)?;
    for (labels, value) in &samples {
        metric
            .encode_family(labels)?
            .encode_counter::<NoLabelSet, V, u64>(value, None)?;
    }
    Ok(())
}

impl Collector for Gathered {
    fn encode(&self, mut encoder: DescriptorEncoder) -> fmt::Result {
        self.node(&mut encoder)?;
        self.process(&mut encoder)?;
        self.supervisor(&mut encoder)?;
        self.broker(&mut encoder)?;
        self.beacon(&mut encoder)?;
        self.ipc(&mut encoder)?;
        self.services(&mut encoder)
    }
}

impl Gathered {
    fn node(&self, encoder: &mut DescriptorEncoder) -> fmt::Result {
        encoder
            .encode_descriptor(
                "troupe_node",
                "The node's Troupe version.",
                None,
                MetricType::Info,
            )?
            .encode_info(&[("version", self.node.version)])?;
        let roles = &self.node.roles;
        gauges(
            encoder,
            "troupe_role_up",
            "Whether the role runs (1) or is starting, stopping or stopped (0).",
            None,
            roles
                .iter()
                .map(|r| {
                    let up = i64::from(r.state == RoleState::Running);
                    (vec![("role", r.name.as_str())], up)
                })
                .collect(),
        )?;
        counters(
            encoder,
            "troupe_node_reloads",
            "Configuration reloads applied since the node started.",
            None,
            vec![(vec![], self.node.reloads)],
        )?;
        counters(
            encoder,
            "troupe_scrape_errors",
            "Scrapes that left a role out because it did not answer in time.",
            None,
            self.scrape_errors
                .iter()
                .map(|(role, n)| (vec![("role", *role)], *n))
                .collect(),
        )?;
        gauges(
            encoder,
            "troupe_scrape_duration",
            "Time this scrape took to gather the roles' snapshots.",
            Some(&Unit::Seconds),
            vec![(vec![], self.gather_seconds)],
        )
    }

    fn process(&self, encoder: &mut DescriptorEncoder) -> fmt::Result {
        let Some(p) = &self.process else {
            return Ok(());
        };
        counters(
            encoder,
            "process_cpu",
            "User and system CPU time of the node process.",
            Some(&Unit::Seconds),
            vec![(vec![], p.cpu_seconds)],
        )?;
        gauges(
            encoder,
            "process_resident_memory",
            "Resident memory of the node process.",
            Some(&Unit::Bytes),
            vec![(vec![], p.resident_bytes)],
        )?;
        gauges(
            encoder,
            "process_virtual_memory",
            "Virtual memory of the node process.",
            Some(&Unit::Bytes),
            vec![(vec![], p.virtual_bytes)],
        )?;
        gauges(
            encoder,
            "process_open_fds",
            "Open file descriptors of the node process.",
            None,
            vec![(vec![], p.open_fds)],
        )?;
        gauges(
            encoder,
            "process_max_fds",
            "The node process's limit on open file descriptors.",
            None,
            p.max_fds.map(|max| (vec![], max)).into_iter().collect(),
        )?;
        gauges(
            encoder,
            "process_start_time",
            "When the node process started, in seconds since the Unix epoch.",
            Some(&Unit::Seconds),
            vec![(vec![], p.start_time_seconds)],
        )
    }

    fn supervisor(&self, encoder: &mut DescriptorEncoder) -> fmt::Result {
        let Some(services) = &self.supervisor else {
            return Ok(());
        };
        fn id(s: &ServiceMetrics) -> Labels<'_> {
            vec![("service", s.id.as_str())]
        }
        gauges(
            encoder,
            "troupe_service_up",
            "Whether the service runs and, with a readiness check, passed it (state running or ready).",
            None,
            services
                .iter()
                .map(|s| (id(s), i64::from(s.state.is_up())))
                .collect(),
        )?;
        gauges(
            encoder,
            "troupe_service_state",
            "The service's state: 1 for the current one, 0 for the others.",
            None,
            services
                .iter()
                .flat_map(|s| {
                    ServiceState::ALL.iter().map(move |state| {
                        let labels = vec![("service", s.id.as_str()), ("state", state.as_str())];
                        (labels, i64::from(s.state == *state))
                    })
                })
                .collect(),
        )?;
        counters(
            encoder,
            "troupe_service_restarts",
            "Restarts the service's plan decided (crashes restarted; an operator's restart is not one).",
            None,
            services.iter().map(|s| (id(s), s.restarts_total)).collect(),
        )?;
        counters(
            encoder,
            "troupe_service_exits",
            "Ends of the service's runs, by reason.",
            None,
            services
                .iter()
                .flat_map(|s| {
                    ExitKind::for_child(s.kind).iter().map(move |kind| {
                        let labels = vec![("service", s.id.as_str()), ("reason", kind.as_str())];
                        (labels, s.exits.get(*kind))
                    })
                })
                .collect(),
        )?;
        gauges(
            encoder,
            "troupe_service_start_time",
            "When the service's current run started, in seconds since the Unix epoch.",
            Some(&Unit::Seconds),
            services
                .iter()
                .filter_map(|s| Some((id(s), s.started_at_unix_ms? as f64 / 1000.0)))
                .collect(),
        )?;
        gauges(
            encoder,
            "troupe_service_last_exit_code",
            "How the service's last run ended: its exit status, or 128 + the signal that killed it.",
            None,
            services
                .iter()
                .filter_map(|s| Some((id(s), i64::from(s.last_exit_code?))))
                .collect(),
        )?;
        gauges(
            encoder,
            "troupe_service_memory",
            "Memory used by the service's processes (its cgroup's memory.current).",
            Some(&Unit::Bytes),
            self.cgroups
                .iter()
                .filter_map(|(s, c)| Some((vec![("service", s.as_str())], c.memory_bytes?)))
                .collect(),
        )?;
        counters(
            encoder,
            "troupe_service_cpu",
            "CPU time used by the service's processes in their current run (its cgroup's cpu.stat usage_usec).",
            Some(&Unit::Seconds),
            self.cgroups
                .iter()
                .filter_map(|(s, c)| Some((vec![("service", s.as_str())], c.cpu_seconds?)))
                .collect(),
        )
    }

    fn broker(&self, encoder: &mut DescriptorEncoder) -> fmt::Result {
        let Some(broker) = &self.broker else {
            return Ok(());
        };
        let services = &broker.services;
        fn name(s: &troupe_broker::ServiceSnapshot) -> &str {
            s.name.as_str()
        }
        counters(
            encoder,
            "troupe_broker_requests",
            "Requests by outcome: reply (a worker's reply forwarded), 502 (its worker was lost), 503 (refused: queue full, draining), 504 (no worker in time), retried (given to another worker after a loss).",
            None,
            services
                .iter()
                .flat_map(|s| {
                    let st = &s.stats;
                    [
                        ("reply", st.replies),
                        ("502", st.lost),
                        ("503", st.refused),
                        ("504", st.timed_out),
                        ("retried", st.retried),
                    ]
                    .map(|(outcome, n)| (vec![("service", name(s)), ("outcome", outcome)], n))
                })
                .collect(),
        )?;
        gauges(
            encoder,
            "troupe_broker_queue_depth",
            "Requests waiting for a worker.",
            None,
            services
                .iter()
                .map(|s| (vec![("service", name(s))], s.waiting as u64))
                .collect(),
        )?;
        gauges(
            encoder,
            "troupe_broker_held_requests",
            "Requests held by workers.",
            None,
            services
                .iter()
                .map(|s| (vec![("service", name(s))], s.held as u64))
                .collect(),
        )?;
        gauges(
            encoder,
            "troupe_broker_workers",
            "Workers connected.",
            None,
            services
                .iter()
                .map(|s| (vec![("service", name(s))], s.workers as u64))
                .collect(),
        )?;
        if !services.is_empty() {
            let mut metric = encoder.encode_descriptor(
                "troupe_broker_request_duration",
                "Time from a request's arrival to its worker's reply, for replies forwarded.",
                Some(&Unit::Seconds),
                MetricType::Histogram,
            )?;
            for s in services {
                let durations = &s.stats.durations;
                let buckets: Vec<(f64, u64)> = durations.buckets().collect();
                metric
                    .encode_family(&vec![("service", name(s))])?
                    .encode_histogram::<NoLabelSet>(
                        durations.sum_seconds(),
                        durations.count(),
                        &buckets,
                        None,
                    )?;
            }
        }
        counters(
            encoder,
            "troupe_broker_received",
            "Bytes of request bodies received from clients.",
            Some(&Unit::Bytes),
            services
                .iter()
                .map(|s| (vec![("service", name(s))], s.stats.received_bytes))
                .collect(),
        )?;
        counters(
            encoder,
            "troupe_broker_sent",
            "Bytes of reply bodies forwarded from workers to clients.",
            Some(&Unit::Bytes),
            services
                .iter()
                .map(|s| (vec![("service", name(s))], s.stats.sent_bytes))
                .collect(),
        )?;
        counters(
            encoder,
            "troupe_broker_malformed_messages",
            "Messages dropped because they fit no protocol.",
            None,
            vec![(vec![], broker.malformed)],
        )?;
        counters(
            encoder,
            "troupe_broker_undeliverable_replies",
            "Replies the broker could not hand to their client because it is gone.",
            None,
            vec![(vec![], broker.undeliverable_replies)],
        )?;
        counters(
            encoder,
            "troupe_broker_dropped_replies",
            "Replies dropped because their client did not read and its held replies reached a bound.",
            None,
            vec![(vec![], broker.dropped_replies)],
        )?;
        gauges(
            encoder,
            "troupe_broker_held_replies",
            "Replies held now for clients that are not reading.",
            None,
            vec![(vec![], broker.held_replies as i64)],
        )?;
        counters(
            encoder,
            "troupe_broker_refused_majordomo_workers",
            "Majordomo workers refused because a Paranoid Pirate service has the name they offered.",
            None,
            vec![(vec![], broker.refused_majordomo_workers)],
        )
    }

    fn beacon(&self, encoder: &mut DescriptorEncoder) -> fmt::Result {
        let Some(beacon) = &self.beacon else {
            return Ok(());
        };
        let stats = &beacon.stats;
        gauges(
            encoder,
            "troupe_beacon_nodes",
            "Nodes the beacon lists, by status.",
            None,
            vec![
                (vec![("status", "online")], stats.online as u64),
                (
                    vec![("status", "offline")],
                    stats.nodes.saturating_sub(stats.online) as u64,
                ),
            ],
        )?;
        counters(
            encoder,
            "troupe_beacon_requests",
            "Requests answered, by op and outcome (ok, or the error code answered).",
            None,
            beacon
                .counters
                .requests
                .iter()
                .map(|((op, outcome), n)| (vec![("op", *op), ("outcome", *outcome)], *n))
                .collect(),
        )?;
        gauges(
            encoder,
            "troupe_beacon_sessions",
            "Peer sessions held.",
            None,
            vec![(vec![], stats.sessions as u64)],
        )?;
        gauges(
            encoder,
            "troupe_beacon_watches",
            "Watches held.",
            None,
            vec![(vec![], stats.watchers as u64)],
        )?;
        counters(
            encoder,
            "troupe_beacon_events_sent",
            "Events pushed to watches.",
            None,
            vec![(vec![], beacon.counters.events_sent)],
        )?;
        counters(
            encoder,
            "troupe_beacon_peers_dropped",
            "Peer sessions dropped because their unread replies overflowed.",
            None,
            vec![(vec![], beacon.peers_dropped)],
        )?;
        gauges(
            encoder,
            "troupe_beacon_connections",
            "TCP connections open.",
            None,
            vec![(vec![], beacon.connections.open as u64)],
        )?;
        counters(
            encoder,
            "troupe_beacon_connections_refused",
            "TCP connections closed at once because max_connections were open.",
            None,
            vec![(vec![], beacon.connections.refused)],
        )?;
        gauges(
            encoder,
            "troupe_beacon_revision",
            "The registry's current revision.",
            None,
            vec![(vec![], stats.rev)],
        )
    }

    fn ipc(&self, encoder: &mut DescriptorEncoder) -> fmt::Result {
        let Some(hub) = &self.ipc else {
            return Ok(());
        };
        let now = |name: &str, help: &str, unit: Option<&Unit>, value: usize| {
            (
                name.to_string(),
                help.to_string(),
                unit.cloned(),
                value as u64,
            )
        };
        for (name, help, unit, value) in [
            now(
                "troupe_ipc_connections",
                "Connections open.",
                None,
                hub.connections,
            ),
            now(
                "troupe_ipc_registered_connections",
                "Registered connections.",
                None,
                hub.registered,
            ),
            now(
                "troupe_ipc_channels",
                "Service channels attached.",
                None,
                hub.channels_attached,
            ),
            now(
                "troupe_ipc_mailbox_messages",
                "Messages held in mailboxes for absent receivers.",
                None,
                hub.mailbox_messages,
            ),
            now(
                "troupe_ipc_mailbox",
                "Bytes held in mailboxes for absent receivers.",
                Some(&Unit::Bytes),
                hub.mailbox_bytes,
            ),
            now(
                "troupe_ipc_requests_in_flight",
                "Requests between clients waiting for their reply.",
                None,
                hub.requests_in_flight,
            ),
        ] {
            gauges(encoder, &name, &help, unit.as_ref(), vec![(vec![], value)])?;
        }
        counters(
            encoder,
            "troupe_ipc_frames",
            "Frames received (in, valid ones) and written (out).",
            None,
            vec![
                (vec![("direction", "in")], hub.frames_in),
                (vec![("direction", "out")], hub.frames_out),
            ],
        )?;
        for (name, help, unit, value) in [
            (
                "troupe_ipc_connections_accepted",
                "Connections accepted.",
                None,
                hub.connections_accepted,
            ),
            (
                "troupe_ipc_received",
                "Bytes of valid frames received.",
                Some(Unit::Bytes),
                hub.bytes_in,
            ),
            (
                "troupe_ipc_messages_delivered",
                "Messages, requests and replies handed to their receiving connection.",
                None,
                hub.delivered,
            ),
            (
                "troupe_ipc_messages_held",
                "Messages held for a receiver that was not connected.",
                None,
                hub.held,
            ),
            (
                "troupe_ipc_messages_expired",
                "Held messages that expired (their senders were told).",
                None,
                hub.expired,
            ),
            (
                "troupe_ipc_messages_overflowed",
                "Messages refused because a mailbox was full (their senders were told).",
                None,
                hub.overflowed,
            ),
            (
                "troupe_ipc_corrupt",
                "Bytes skipped as damage between frames.",
                Some(Unit::Bytes),
                hub.corrupt_bytes,
            ),
            (
                "troupe_ipc_resyncs",
                "Times a stream was resynchronised after damage.",
                None,
                hub.resyncs,
            ),
            (
                "troupe_ipc_malformed_frames",
                "Frames whose envelope could not be parsed.",
                None,
                hub.malformed,
            ),
            (
                "troupe_ipc_events_published",
                "Metrics and events services sent over their channels.",
                None,
                hub.events_published,
            ),
            (
                "troupe_ipc_events_missed",
                "Events a subscriber missed because it was not keeping up.",
                None,
                hub.events_missed,
            ),
        ] {
            counters(encoder, name, help, unit.as_ref(), vec![(vec![], value)])?;
        }
        Ok(())
    }

    fn services(&self, encoder: &mut DescriptorEncoder) -> fmt::Result {
        let Some(store) = &self.services else {
            return Ok(());
        };
        for family in &store.families {
            let samples = family.samples.iter().map(|(service, device, value)| {
                let mut labels = vec![("service", service.as_str())];
                if !device.is_empty() {
                    labels.push(("device", device.as_str()));
                }
                (labels, *value)
            });
            let help = "A service's own metric, sent over its ipc channel.";
            match family.kind {
                Kind::Gauge => gauges(encoder, &family.name, help, None, samples.collect())?,
                Kind::Counter => counters(encoder, &family.name, help, None, samples.collect())?,
            }
        }
        gauges(
            encoder,
            "troupe_service_metrics_series",
            "Series of its own metrics kept for the service.",
            None,
            store
                .services
                .iter()
                .map(|s| (vec![("service", s.service.as_str())], s.series as u64))
                .collect(),
        )?;
        counters(
            encoder,
            "troupe_service_metrics_refused",
            "Metrics a service sent that were refused, by reason: name, label, value, type, limit.",
            None,
            store
                .services
                .iter()
                .flat_map(|s| {
                    Refusal::ALL.iter().map(move |why| {
                        let labels =
                            vec![("service", s.service.as_str()), ("reason", why.as_str())];
                        (labels, s.refused[why.index()])
                    })
                })
                .collect(),
        )?;
        counters(
            encoder,
            "troupe_service_metrics_dropped",
            "Metrics dropped because the store holds its maximum of services.",
            None,
            vec![(vec![], store.dropped)],
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::{BTreeMap, HashSet};
    use std::time::{Duration, Instant};
    use troupe_beacon::server::actor::{Connections, ServerStats};
    use troupe_beacon::server::core::BeaconCounters;
    use troupe_broker::{ServiceSnapshot, ServiceStats};
    use troupe_supervisor::ExitCounts;

    use crate::metrics::store::{MetricStore, StoreLimits};
    use crate::state::NodeHandle;

    fn gathered() -> Gathered {
        let node = NodeHandle::new("n1", "test");
        node.set_role("ipc", RoleState::Running);
        node.set_role("broker", RoleState::Starting);
        let mut exits = ExitCounts::default();
        exits.count(ExitKind::Killed);
        let services = vec![
            ServiceMetrics {
                id: "web".into(),
                kind: "process",
                state: ServiceState::Running,
                restarts_total: 1,
                exits,
                started_at_unix_ms: Some(1_700_000_000_500),
                last_exit_code: Some(137),
                cgroup: None,
            },
            ServiceMetrics {
                id: "job".into(),
                kind: "actor",
                state: ServiceState::Failed,
                restarts_total: 0,
                exits: ExitCounts::default(),
                started_at_unix_ms: None,
                last_exit_code: None,
                cgroup: None,
            },
        ];
        let mut stats = ServiceStats {
            requests: 3,
            replies: 2,
            refused: 1,
            received_bytes: 30,
            sent_bytes: 20,
            ..ServiceStats::default()
        };
        stats.durations.observe(Duration::from_micros(90));
        stats.durations.observe(Duration::from_millis(3));
        let broker = BrokerStats {
            services: vec![ServiceSnapshot {
                name: "echo".into(),
                kind: "pirate",
                frontend: None,
                backend: None,
                workers: 2,
                waiting: 1,
                held: 0,
                waiting_bytes: 0,
                stats,
                worker_list: Vec::new(),
            }],
            malformed: 4,
            undeliverable_replies: 0,
            ..BrokerStats::default()
        };
        let beacon = BeaconMetrics {
            stats: ServerStats {
                nodes: 3,
                online: 2,
                rev: 9,
                sessions: 1,
                watchers: 1,
            },
            counters: BeaconCounters {
                requests: BTreeMap::from([
                    (("register", "ok"), 2),
                    (("heartbeat", "unknown_node"), 1),
                ]),
                events_sent: 5,
            },
            peers_dropped: 2,
            connections: Connections {
                open: 4,
                refused: 7,
            },
        };
        let mut store = MetricStore::new(StoreLimits::with_series_per_service(10));
        let now = Instant::now();
        store
            .record("web", "dev-1", "temperature", b"21.5", now)
            .unwrap();
        store
            .record(
                "web",
                "",
                "jobs_total",
                br#"{"value": 3, "type": "counter"}"#,
                now,
            )
            .unwrap();
        store.record("web", "", "...", b"1", now).unwrap_err();
        store.prune(&HashSet::from(["web".to_string()]), now);
        Gathered {
            node: node.view(),
            supervisor: Some(services),
            broker: Some(broker),
            beacon: Some(beacon),
            ipc: Some(HubStats {
                connections: 2,
                frames_in: 10,
                frames_out: 8,
                delivered: 6,
                ..HubStats::default()
            }),
            services: Some(store.snapshot()),
            scrape_errors: vec![("supervisor", 0), ("broker", 1)],
            gather_seconds: 0.002,
            process: Some(ProcessSample {
                cpu_seconds: 1.5,
                resident_bytes: 4096,
                virtual_bytes: 8192,
                open_fds: 7,
                max_fds: Some(1024),
                start_time_seconds: 1_700_000_000.25,
            }),
            cgroups: vec![(
                "web".into(),
                CgroupSample {
                    memory_bytes: Some(65536),
                    cpu_seconds: None,
                },
            )],
        }
    }

    #[test]
    fn the_exposition_names_types_and_labels_every_series() {
        let text = encode(gathered()).unwrap();
        for line in [
            "# TYPE troupe_node_info gauge",
            r#"troupe_node_info{node="n1",version=""#,
            r#"troupe_role_up{node="n1",role="ipc"} 1"#,
            r#"troupe_role_up{node="n1",role="broker"} 0"#,
            "# TYPE troupe_scrape_errors_total counter",
            r#"troupe_scrape_errors_total{node="n1",role="broker"} 1"#,
            "# TYPE process_cpu_seconds_total counter",
            r#"process_cpu_seconds_total{node="n1"} 1.5"#,
            r#"process_resident_memory_bytes{node="n1"} 4096"#,
            r#"process_open_fds{node="n1"} 7"#,
            r#"process_start_time_seconds{node="n1"} 1700000000.25"#,
            r#"troupe_service_up{node="n1",service="web"} 1"#,
            r#"troupe_service_up{node="n1",service="job"} 0"#,
            r#"troupe_service_state{node="n1",service="web",state="running"} 1"#,
            r#"troupe_service_state{node="n1",service="web",state="ready"} 0"#,
            r#"troupe_service_state{node="n1",service="job",state="failed"} 1"#,
            "# TYPE troupe_service_restarts_total counter",
            r#"troupe_service_restarts_total{node="n1",service="web"} 1"#,
            r#"troupe_service_exits_total{node="n1",service="web",reason="killed"} 1"#,
            r#"troupe_service_exits_total{node="n1",service="web",reason="exited"} 0"#,
            r#"troupe_service_exits_total{node="n1",service="job",reason="panicked"} 0"#,
            r#"troupe_service_start_time_seconds{node="n1",service="web"} 1700000000.5"#,
            r#"troupe_service_last_exit_code{node="n1",service="web"} 137"#,
            r#"troupe_service_memory_bytes{node="n1",service="web"} 65536"#,
            r#"troupe_broker_requests_total{node="n1",service="echo",outcome="reply"} 2"#,
            r#"troupe_broker_requests_total{node="n1",service="echo",outcome="503"} 1"#,
            r#"troupe_broker_queue_depth{node="n1",service="echo"} 1"#,
            r#"troupe_broker_workers{node="n1",service="echo"} 2"#,
            "# TYPE troupe_broker_request_duration_seconds histogram",
            r#"troupe_broker_request_duration_seconds_bucket{node="n1",service="echo",le="0.0001"} 1"#,
            r#"troupe_broker_request_duration_seconds_bucket{node="n1",service="echo",le="0.005"} 2"#,
            r#"troupe_broker_request_duration_seconds_bucket{node="n1",service="echo",le="+Inf"} 2"#,
            r#"troupe_broker_request_duration_seconds_sum{node="n1",service="echo"} 0.00309"#,
            r#"troupe_broker_request_duration_seconds_count{node="n1",service="echo"} 2"#,
            r#"troupe_broker_received_bytes_total{node="n1",service="echo"} 30"#,
            r#"troupe_broker_sent_bytes_total{node="n1",service="echo"} 20"#,
            r#"troupe_broker_malformed_messages_total{node="n1"} 4"#,
            r#"troupe_beacon_nodes{node="n1",status="offline"} 1"#,
            r#"troupe_beacon_requests_total{node="n1",op="heartbeat",outcome="unknown_node"} 1"#,
            r#"troupe_beacon_events_sent_total{node="n1"} 5"#,
            r#"troupe_beacon_peers_dropped_total{node="n1"} 2"#,
            r#"troupe_beacon_connections{node="n1"} 4"#,
            r#"troupe_beacon_connections_refused_total{node="n1"} 7"#,
            r#"troupe_ipc_connections{node="n1"} 2"#,
            r#"troupe_ipc_frames_total{node="n1",direction="out"} 8"#,
            r#"troupe_ipc_messages_delivered_total{node="n1"} 6"#,
            "# TYPE troupe_ipc_mailbox_bytes gauge",
            "# TYPE troupe_service_metric_temperature gauge",
            r#"troupe_service_metric_temperature{node="n1",service="web",device="dev-1"} 21.5"#,
            "# TYPE troupe_service_metric_jobs_total counter",
            r#"troupe_service_metric_jobs_total{node="n1",service="web"} 3"#,
            r#"troupe_service_metrics_series{node="n1",service="web"} 2"#,
            r#"troupe_service_metrics_refused_total{node="n1",service="web",reason="name"} 1"#,
        ] {
            assert!(
                text.lines().any(|l| l.starts_with(line)),
                "no line {line:?} in:\n{text}"
            );
        }
        // No cgroup CPU reading: no series for it.
        assert!(
            !text.contains("troupe_service_cpu_seconds_total{"),
            "{text}"
        );
        // Each family once; every sample carries the node label.
        let mut types = HashSet::new();
        for line in text.lines() {
            if let Some(family) = line.strip_prefix("# TYPE ") {
                assert!(
                    types.insert(family.split(' ').next().unwrap().to_string()),
                    "{line}"
                );
            } else if !line.starts_with('#') {
                assert!(line.contains(r#"{node="n1""#), "{line}");
            }
        }
        assert!(types.len() > 50, "{}", types.len());
    }

    #[test]
    fn roles_that_do_not_run_or_answer_leave_no_series() {
        let mut gathered = gathered();
        gathered.broker = None;
        gathered.beacon = None;
        gathered.supervisor = None;
        gathered.process = None;
        let text = encode(gathered).unwrap();
        assert!(!text.contains("troupe_broker_"), "{text}");
        assert!(!text.contains("troupe_beacon_"), "{text}");
        assert!(!text.contains("troupe_service_up"), "{text}");
        assert!(!text.contains("process_"), "{text}");
        assert!(text.contains("troupe_ipc_connections"), "{text}");
    }

    #[test]
    fn label_values_are_escaped() {
        let mut gathered = gathered();
        let mut store = MetricStore::new(StoreLimits::with_series_per_service(10));
        store
            .record("web", "a \"quoted\"\\ device\n", "t", b"1", Instant::now())
            .unwrap();
        gathered.services = Some(store.snapshot());
        let text = encode(gathered).unwrap();
        assert!(
            text.contains(r#"device="a \"quoted\"\\ device\n"} 1"#),
            "{text}"
        );
    }
}
