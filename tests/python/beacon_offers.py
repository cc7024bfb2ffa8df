#!/usr/bin/env python3
"""Checks the beacon's several-resources-per-node protocol (docs/protocols/beacon.md, "Several
resources per node"), written from the document alone with pyzmq and the standard library.

    beacon_offers.py ENDPOINT --node NAME [--cookie-file FILE]

It registers NAME offering a primary resource and two more through `offers`, checks that each
lookup shows the node projected onto the resource looked up, that `list` shows it with every
resource, that a register breaking a limit is refused naming the field, and that watches are
told a change of the node's resources as it concerns each of them (live, and when resumed).
It prints one line per step and exits 0 when every check passed, 1 otherwise.
"""

import argparse

from beacon_client import Beacon, BeaconError, check


def next_event(beacon, watch):
    """The next event pushed to `watch` (events of other watches stay queued for them)."""
    for i, message in enumerate(beacon.pushed):
        if message["op"] == "event" and message["watch"] == watch:
            return beacon.pushed.pop(i)["event"]
    while True:
        message = beacon.receive()
        if message["op"] == "event" and message["watch"] == watch:
            return message["event"]
        beacon.pushed.append(message)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("endpoint")
    parser.add_argument("--node", required=True)
    parser.add_argument("--cookie-file")
    args = parser.parse_args()
    cookie = None
    if args.cookie_file:
        with open(args.cookie_file, "rb") as f:
            cookie = f.read().strip()

    node = args.node
    primary, first, second = f"{node}-ipc", f"{node}-broker", f"{node}-db"
    beacon = Beacon(args.endpoint)
    beacon.open_session(node, cookie)

    def register(offers, endpoints=None):
        return beacon.request(
            "register", node=node, resource=primary,
            endpoints=endpoints or {"socket": "ipc:///tmp/py.sock"}, offers=offers,
            heartbeat_ms=1000)

    registered = register({first: {"frontend": "tcp://127.0.0.1:7501"}, "unused-" + node: {}})
    check(registered["op"] == "registered", "registered with offers")

    found = beacon.request("lookup", resource=first)["nodes"]
    mine = [n for n in found if n["name"] == node]
    check(len(mine) == 1 and mine[0]["resource"] == first
          and mine[0]["endpoints"] == {"frontend": "tcp://127.0.0.1:7501"},
          f"lookup {first}: projected onto it")
    check(set(mine[0]["offers"]) == {primary, first, "unused-" + node},
          "offers lists every resource, the primary one included")
    found = beacon.request("lookup", resource=primary)["nodes"]
    mine = [n for n in found if n["name"] == node]
    check(len(mine) == 1 and mine[0]["endpoints"] == {"socket": "ipc:///tmp/py.sock"},
          f"lookup {primary}: its own endpoints")
    listed = [n for n in beacon.request("list")["nodes"] if n["name"] == node]
    check(len(listed) == 1 and listed[0]["resource"] == primary
          and listed[0]["offers"][primary] == listed[0]["endpoints"],
          "list shows the primary resource, with its endpoints also in offers")

    try:
        register({first: {"frontend": "tcp://a b"}})
        check(False, "a bad address in offers is refused")
    except BeaconError as err:
        check(err.code == "bad_request" and f"offers.{first}.frontend" in err.message,
              f"a bad address in offers is refused, named ({err.message})")
    try:
        register({f"r{i}": {} for i in range(64)})
        check(False, "more than 64 resources are refused")
    except BeaconError as err:
        check(err.code == "bad_request" and "`offers`" in err.message,
              f"more than 64 resources are refused ({err.message})")

    # One watch per point of view; then the node trades `first` for `second`.
    snapshots = {}
    for watch, resources in [("all", []), ("first", [first]), ("second", [second]),
                             ("primary", [primary])]:
        snapshots[watch] = beacon.request("watch", watch=watch, resources=resources)
    at = snapshots["all"]["rev"]
    shown = [n for n in snapshots["first"]["nodes"] if n["name"] == node]
    check(len(shown) == 1 and shown[0]["resource"] == first,
          "a filtered watch's snapshot is projected onto the watched resource")
    changed = register({second: {"main": "tcp://127.0.0.1:5432"}})
    check(changed["rev"] == at + 1, "a change of resources is one revision")
    expected = {"all": ("changed", primary), "first": ("removed", first),
                "second": ("nodeup", second), "primary": ("changed", primary)}
    for watch, (kind, resource) in expected.items():
        event = next_event(beacon, watch)
        check(event["rev"] == at + 1 and event["kind"] == kind
              and event["node"]["resource"] == resource,
              f"watch {watch} is told {event['kind']} for {event['node']['resource']}")
    epoch = snapshots["all"]["epoch"]
    for watch, (kind, resource) in expected.items():
        resumed = beacon.request("watch", watch=watch + "-again",
                                 resources=[] if watch == "all" else [resource],
                                 since={"epoch": epoch, "rev": at})
        events = [e for e in resumed["events"] if e["node"]["name"] == node]
        check(resumed["op"] == "resumed" and [(e["kind"], e["node"]["resource"]) for e in events]
              == [(kind, resource)], f"resumed watch {watch} is told the same")
        beacon.request("unwatch", watch=watch + "-again")

    beacon.request("deregister", node=node)
    beacon.close()
    print("all checks passed", flush=True)


if __name__ == "__main__":
    main()
