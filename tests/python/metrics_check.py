"""Checks two scrapes of a node's `GET /metrics` with the Prometheus text parser
(`prometheus_client.parser.text_string_to_metric_families`), for tests/metrics.rs.

The scenario between the two scrapes (see tests/metrics.rs): `--calls` requests answered by
the broker service `--broker-service`; service `--crashed` killed once (its plan restarted
it); service `--restarted` restarted by an operator (it sends its own metric
`temperature` = 21.5 about `dev-1` as it attaches its ipc channel); `--delivered` ipc
messages delivered and `--held` held for an absent receiver.

Checks: the exposition parses; each family the node must expose is there with its type; every
sample carries the node's label and only labels from the documented set; histograms are
cumulative and end in `+Inf` = `_count`; counters never go down; and the counters the
scenario moves have moved. Prints "metrics_check: N checks passed" or each failure (exit 1).
"""

import argparse
import math
import sys

from prometheus_client.parser import text_string_to_metric_families

# Family name (as the parser names it: a counter's without `_total`) -> type.
EXPECTED = {
    "process_cpu_seconds": "counter",
    "process_resident_memory_bytes": "gauge",
    "process_virtual_memory_bytes": "gauge",
    "process_open_fds": "gauge",
    "process_max_fds": "gauge",
    "process_start_time_seconds": "gauge",
    "troupe_node_info": "gauge",
    "troupe_role_up": "gauge",
    "troupe_node_reloads": "counter",
    "troupe_scrape_errors": "counter",
    "troupe_scrape_duration_seconds": "gauge",
    "troupe_service_up": "gauge",
    "troupe_service_state": "gauge",
    "troupe_service_restarts": "counter",
    "troupe_service_exits": "counter",
    "troupe_service_start_time_seconds": "gauge",
    "troupe_service_last_exit_code": "gauge",
    "troupe_broker_requests": "counter",
    "troupe_broker_queue_depth": "gauge",
    "troupe_broker_held_requests": "gauge",
    "troupe_broker_workers": "gauge",
    "troupe_broker_request_duration_seconds": "histogram",
    "troupe_broker_received_bytes": "counter",
    "troupe_broker_sent_bytes": "counter",
    "troupe_broker_malformed_messages": "counter",
    "troupe_broker_undeliverable_replies": "counter",
    "troupe_broker_dropped_replies": "counter",
    "troupe_broker_held_replies": "gauge",
    "troupe_beacon_nodes": "gauge",
    "troupe_beacon_requests": "counter",
    "troupe_beacon_sessions": "gauge",
    "troupe_beacon_watches": "gauge",
    "troupe_beacon_events_sent": "counter",
    "troupe_beacon_peers_dropped": "counter",
    "troupe_beacon_connections": "gauge",
    "troupe_beacon_connections_refused": "counter",
    "troupe_beacon_revision": "gauge",
    "troupe_ipc_connections": "gauge",
    "troupe_ipc_registered_connections": "gauge",
    "troupe_ipc_channels": "gauge",
    "troupe_ipc_connections_accepted": "counter",
    "troupe_ipc_frames": "counter",
    "troupe_ipc_received_bytes": "counter",
    "troupe_ipc_messages_delivered": "counter",
    "troupe_ipc_messages_held": "counter",
    "troupe_ipc_messages_expired": "counter",
    "troupe_ipc_messages_overflowed": "counter",
    "troupe_ipc_mailbox_messages": "gauge",
    "troupe_ipc_mailbox_bytes": "gauge",
    "troupe_ipc_requests_in_flight": "gauge",
    "troupe_ipc_corrupt_bytes": "counter",
    "troupe_ipc_resyncs": "counter",
    "troupe_ipc_malformed_frames": "counter",
    "troupe_ipc_events_published": "counter",
    "troupe_ipc_events_missed": "counter",
    "troupe_service_metric_temperature": "gauge",
    "troupe_service_metrics_series": "gauge",
    "troupe_service_metrics_refused": "counter",
    "troupe_service_metrics_dropped": "counter",
}

# Every label a series may carry: none takes request ids, client identities or pids.
LABELS = {
    "node", "role", "service", "state", "reason", "outcome", "op", "status",
    "direction", "device", "version", "le",
}

SERVICE_STATES = [
    "starting", "running", "ready", "stopping", "waiting", "waiting_for_requirements",
    "failed", "deleted",
]


class Scrape:
    def __init__(self, path):
        with open(path, encoding="utf-8") as f:
            self.text = f.read()
        self.families = {f.name: f for f in text_string_to_metric_families(self.text)}

    def value(self, sample, **labels):
        """The value of the sample named `sample` whose labels include `labels` (None if none)."""
        for family in self.families.values():
            for s in family.samples:
                if s.name == sample and all(s.labels.get(k) == v for k, v in labels.items()):
                    return s.value
        return None


class Checks:
    def __init__(self):
        self.passed = 0
        self.failed = []

    def check(self, ok, what):
        if ok:
            self.passed += 1
        else:
            self.failed.append(what)


# Families that only appear once something happened (before the first exit, a service has no
# last exit code).
AFTER_ONLY = {"troupe_service_last_exit_code"}


def shape(c, scrape, node, which):
    for name, kind in EXPECTED.items():
        if which == "before" and name in AFTER_ONLY:
            continue
        family = scrape.families.get(name)
        c.check(family is not None, f"{which}: no family {name}")
        if family is not None:
            c.check(family.type == kind, f"{which}: {name} is a {family.type}, not a {kind}")
            c.check(len(family.samples) > 0, f"{which}: {name} has no sample")
    for family in scrape.families.values():
        c.check(family.type != "unknown", f"{which}: {family.name} has no TYPE")
        c.check(family.documentation != "", f"{which}: {family.name} has no HELP")
        for s in family.samples:
            c.check(s.labels.get("node") == node, f"{which}: {s.name}{s.labels} lacks node={node}")
            extra = set(s.labels) - LABELS
            c.check(not extra, f"{which}: {s.name} has unexpected labels {extra}")
            c.check(not math.isnan(s.value), f"{which}: {s.name}{s.labels} is NaN")
        if family.type == "histogram":
            series = {}
            for s in family.samples:
                key = tuple(sorted((k, v) for k, v in s.labels.items() if k != "le"))
                series.setdefault(key, {"buckets": [], "count": None})
                if s.name.endswith("_bucket"):
                    series[key]["buckets"].append((float(s.labels["le"]), s.value))
                elif s.name.endswith("_count"):
                    series[key]["count"] = s.value
            for key, h in series.items():
                counts = [v for _, v in h["buckets"]]
                c.check(counts == sorted(counts), f"{which}: {family.name}{key} buckets not cumulative")
                c.check(h["buckets"] and h["buckets"][-1][0] == math.inf,
                        f"{which}: {family.name}{key} has no +Inf bucket")
                c.check(h["buckets"] and h["buckets"][-1][1] == h["count"],
                        f"{which}: {family.name}{key}: +Inf bucket != _count")


def counters_never_go_down(c, before, after):
    """Counters only grow, except those of a service's current run (its cgroup's CPU time,
    its own counters), which start again when it restarts."""
    def restarted(service):
        return (before.value("troupe_service_start_time_seconds", service=service)
                != after.value("troupe_service_start_time_seconds", service=service))

    for name, family in before.families.items():
        if family.type not in ("counter", "histogram") or name not in after.families:
            continue
        run_scoped = name == "troupe_service_cpu_seconds" or name.startswith("troupe_service_metric_")
        for s in family.samples:
            if run_scoped and restarted(s.labels.get("service")):
                continue
            later = after.value(s.name, **s.labels)
            if later is not None:
                c.check(later >= s.value, f"{s.name}{s.labels} went down: {s.value} -> {later}")


def moved(c, before, after, sample, at_least, **labels):
    a, b = before.value(sample, **labels), after.value(sample, **labels)
    ok = a is not None and b is not None and b - a >= at_least
    c.check(ok, f"{sample}{labels} moved from {a} to {b}, expected at least +{at_least}")


def scenario(c, before, after, args):
    svc = {"service": args.broker_service}
    moved(c, before, after, "troupe_broker_requests_total", args.calls, outcome="reply", **svc)
    moved(c, before, after, "troupe_broker_request_duration_seconds_count", args.calls, **svc)
    moved(c, before, after, "troupe_broker_received_bytes_total", args.calls, **svc)
    moved(c, before, after, "troupe_broker_sent_bytes_total", args.calls, **svc)
    c.check(after.value("troupe_broker_workers", **svc) >= 1, "the broker service has no worker")

    crashed = {"service": args.crashed}
    moved(c, before, after, "troupe_service_restarts_total", 1, **crashed)
    moved(c, before, after, "troupe_service_exits_total", 1, reason="killed", **crashed)
    c.check(after.value("troupe_service_last_exit_code", **crashed) == 137,
            f"{args.crashed}: last exit code is not 128 + SIGKILL")

    restarted = {"service": args.restarted}
    moved(c, before, after, "troupe_service_exits_total", 1, reason="requested", **restarted)
    c.check(after.value("troupe_service_restarts_total", **restarted)
            == before.value("troupe_service_restarts_total", **restarted),
            f"{args.restarted}: an operator's restart counted as a plan restart")
    moved(c, before, after, "troupe_service_start_time_seconds", 0.001, **restarted)

    for scrape, which in ((before, "before"), (after, "after")):
        for name in (args.crashed, args.restarted):
            states = {s: scrape.value("troupe_service_state", service=name, state=s)
                      for s in SERVICE_STATES}
            c.check(sorted(states.values()) == [0.0] * 7 + [1.0],
                    f"{which}: {name} is not in exactly one state: {states}")
            c.check(scrape.value("troupe_service_up", service=name) == 1.0,
                    f"{which}: {name} is not up")
        value = scrape.value("troupe_service_metric_temperature",
                             service=args.restarted, device="dev-1")
        c.check(value == 21.5, f"{which}: the service's own metric is {value}, not 21.5")

    moved(c, before, after, "troupe_ipc_messages_delivered_total", args.delivered)
    moved(c, before, after, "troupe_ipc_messages_held_total", args.held)
    moved(c, before, after, "troupe_ipc_frames_total", 1, direction="in")
    moved(c, before, after, "troupe_ipc_events_published_total", 1)
    moved(c, before, after, "troupe_ipc_connections_accepted_total", 1)
    c.check(after.value("troupe_beacon_nodes", status="online") == 1.0,
            "the node is not online at its own beacon")
    moved(c, before, after, "process_cpu_seconds_total", 0.0)
    c.check(after.value("troupe_scrape_errors_total", role="supervisor") == 0.0,
            "a scrape left the supervisor out")


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--node", required=True)
    parser.add_argument("--before", required=True)
    parser.add_argument("--after", required=True)
    parser.add_argument("--broker-service", default="echo")
    parser.add_argument("--calls", type=int, required=True)
    parser.add_argument("--crashed", required=True)
    parser.add_argument("--restarted", required=True)
    parser.add_argument("--delivered", type=int, required=True)
    parser.add_argument("--held", type=int, required=True)
    args = parser.parse_args()

    c = Checks()
    before, after = Scrape(args.before), Scrape(args.after)
    shape(c, before, args.node, "before")
    shape(c, after, args.node, "after")
    counters_never_go_down(c, before, after)
    scenario(c, before, after, args)
    if c.failed:
        for failure in c.failed:
            print("FAILED:", failure)
        print(f"metrics_check: {len(c.failed)} of {c.passed + len(c.failed)} checks failed")
        sys.exit(1)
    print(f"metrics_check: {c.passed} checks passed")


if __name__ == "__main__":
    main()
