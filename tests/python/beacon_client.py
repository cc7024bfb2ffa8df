#!/usr/bin/env python3
"""A beacon client written from docs/protocols/beacon.md alone, with pyzmq and the standard
library (hmac, hashlib, json, secrets).

Run as a program it performs a whole session against a running beacon and checks every answer:

    beacon_client.py ENDPOINT --node NAME --requires RES [--cookie-file FILE] [--expect-provider NODE]

It authenticates (when a cookie is given, verifying the beacon's own proof), registers NAME,
asks get_requirements, lookup and list, watches its own resource, heartbeats, deregisters, and
checks that the beacon then no longer knows it. It prints one line per step and exits 0 when
every check passed, 1 otherwise.
"""

import argparse
import hashlib
import hmac
import json
import secrets
import sys

import zmq

VERSION = 1


class BeaconError(Exception):
    """The beacon answered with an error."""

    def __init__(self, code, message):
        super().__init__(f"{code}: {message}")
        self.code = code
        self.message = message


def proof(cookie, label, first, second):
    """HMAC-SHA256(cookie, "troupe-beacon/1 " + label + "\\n" + first + "\\n" + second), hex."""
    message = f"troupe-beacon/1 {label}\n{first}\n{second}".encode()
    return hmac.new(cookie, message, hashlib.sha256).hexdigest()


class Beacon:
    """One DEALER connection to a beacon; requests carry an id and wait for the matching reply.
    Pushed events that arrive meanwhile are kept in `self.pushed`."""

    def __init__(self, endpoint, timeout_ms=5000):
        self.context = zmq.Context.instance()
        self.socket = self.context.socket(zmq.DEALER)
        self.socket.setsockopt(zmq.LINGER, 0)
        self.socket.connect(endpoint)
        self.poller = zmq.Poller()
        self.poller.register(self.socket, zmq.POLLIN)
        self.timeout_ms = timeout_ms
        self.next_id = 0
        self.pushed = []

    def close(self):
        self.socket.close(0)

    def send_raw(self, *frames):
        self.socket.send_multipart(list(frames))

    def receive(self):
        """The next message from the beacon, decoded; raises TimeoutError."""
        if not self.poller.poll(self.timeout_ms):
            raise TimeoutError(f"no answer within {self.timeout_ms} ms")
        frames = self.socket.recv_multipart()
        if len(frames) != 1:
            raise ValueError(f"expected one frame, got {len(frames)}")
        message = json.loads(frames[0])
        if message.get("v") != VERSION:
            raise ValueError(f"unexpected protocol version in {message}")
        return message

    def request(self, op, **fields):
        """Sends a request and returns its reply; raises BeaconError for an error reply."""
        self.next_id += 1
        request_id = self.next_id
        self.send_raw(json.dumps({"v": VERSION, "op": op, "id": request_id, **fields}).encode())
        while True:
            message = self.receive()
            if message.get("id") != request_id:
                self.pushed.append(message)
                continue
            if message["op"] == "error":
                raise BeaconError(message["code"], message["error"])
            return message

    def open_session(self, node, cookie=None):
        """hello (+ auth): returns the welcome. With a cookie, checks the beacon's proof."""
        client_nonce = secrets.token_hex(32)
        reply = self.request("hello", node=node, nonce=client_nonce)
        if reply["op"] == "welcome":
            if cookie is not None:
                raise ValueError("the beacon does not check cookies but we have one")
            return reply
        assert reply["op"] == "challenge", reply
        if cookie is None:
            raise ValueError("the beacon requires a cookie")
        beacon_nonce = reply["nonce"]
        welcome = self.request("auth", proof=proof(cookie, "client", beacon_nonce, client_nonce))
        expected = proof(cookie, "server", client_nonce, beacon_nonce)
        if not (welcome["op"] == "welcome" and welcome.get("auth") is True
                and hmac.compare_digest(welcome.get("proof", ""), expected)):
            raise ValueError(f"the beacon's proof is wrong: {welcome}")
        return welcome


def check(condition, what):
    print(("ok   " if condition else "FAIL ") + what, flush=True)
    if not condition:
        sys.exit(1)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("endpoint")
    parser.add_argument("--node", required=True)
    parser.add_argument("--resource", default="pyclient")
    parser.add_argument("--requires", action="append", default=[])
    parser.add_argument("--cookie-file")
    parser.add_argument("--expect-provider", help="a node that must offer each requirement")
    args = parser.parse_args()

    cookie = None
    if args.cookie_file:
        with open(args.cookie_file, "rb") as f:
            cookie = f.read().strip()

    beacon = Beacon(args.endpoint)
    welcome = beacon.open_session(args.node, cookie)
    check(welcome["op"] == "welcome" and welcome["auth"] == (cookie is not None),
          f"session open (auth={welcome['auth']}, epoch {welcome['epoch']})")

    registered = beacon.request(
        "register", node=args.node, resource=args.resource, requires=args.requires,
        endpoints={"api": "tcp://127.0.0.1:1"}, metadata={"language": "python"},
        heartbeat_ms=1000)
    check(registered["op"] == "registered" and registered["node"] == args.node, "registered")
    again = beacon.request(
        "register", node=args.node, resource=args.resource, requires=args.requires,
        endpoints={"api": "tcp://127.0.0.1:1"}, metadata={"language": "python"},
        heartbeat_ms=1000)
    check(again["rev"] == registered["rev"], "re-registering the same entry changes nothing")

    requirements = beacon.request("get_requirements", node=args.node)
    check(requirements["op"] == "requirements", "get_requirements answered")
    if args.expect_provider:
        for role in args.requires:
            names = [n["name"] for n in requirements["offers"][role]]
            check(args.expect_provider in names, f"{role} offered by {names}")
            offered = requirements["offers"][role][0]
            check(offered["status"] == "online", "offers are online")
        check(requirements["unmet"] == [], "no requirement unmet")

    for role in args.requires:
        found = beacon.request("lookup", resource=role)
        check(all(n["status"] == "online" for n in found["nodes"]) and found["nodes"],
              f"lookup {role}: {[n['name'] for n in found['nodes']]}")

    listed = beacon.request("list")
    mine = [n for n in listed["nodes"] if n["name"] == args.node]
    check(len(mine) == 1 and mine[0]["metadata"] == {"language": "python"}
          and mine[0]["last_seen_ms"] >= 0, "list shows this node once, with its metadata")

    snapshot = beacon.request("watch", watch="w1", resources=[args.resource])
    check(snapshot["op"] == "snapshot" and [n["name"] for n in snapshot["nodes"]] == [args.node],
          f"watch starts with a snapshot at rev {snapshot['rev']}")

    ack = beacon.request("heartbeat", node=args.node)
    check(ack["op"] == "ack", "heartbeat acknowledged")

    gone = beacon.request("deregister", node=args.node)
    check(gone["op"] == "deregistered", "deregistered")
    event = None
    while event is None:
        message = beacon.pushed.pop(0) if beacon.pushed else beacon.receive()
        if message["op"] == "event" and message["watch"] == "w1":
            event = message
    check(event["event"]["kind"] == "removed" and event["event"]["node"]["name"] == args.node
          and event["event"]["rev"] == snapshot["rev"] + 1,
          "the watch saw the removal, next revision")

    try:
        beacon.request("heartbeat", node=args.node)
        check(False, "heartbeat after deregister refused")
    except BeaconError as err:
        check(err.code == "unknown_node", f"heartbeat after deregister refused ({err.code})")
    beacon.close()
    print("all checks passed", flush=True)


if __name__ == "__main__":
    main()
