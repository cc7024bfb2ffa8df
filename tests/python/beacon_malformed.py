#!/usr/bin/env python3
"""Sends a beacon malformed input and checks that every bad message is answered with an error
naming the problem, that odd envelopes work or are refused cleanly, and that the beacon keeps
answering afterwards.

    beacon_malformed.py ENDPOINT [--cookie-file FILE]

Prints one line per case; exits 0 when every check passed, 1 otherwise.
"""

import argparse
import json
import sys

import zmq

from beacon_client import Beacon, check


def expect_error(beacon, frames, code, mentions, what):
    beacon.send_raw(*frames)
    reply = beacon.receive()
    check(reply["op"] == "error" and reply["code"] == code and mentions in reply["error"],
          f"{what}: {reply.get('code')}: {reply.get('error')}")
    return reply


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("endpoint")
    parser.add_argument("--cookie-file")
    args = parser.parse_args()
    cookie = None
    if args.cookie_file:
        with open(args.cookie_file, "rb") as f:
            cookie = f.read().strip()

    beacon = Beacon(args.endpoint)
    if cookie is not None:
        # Before authenticating, real requests are refused.
        expect_error(beacon, [b'{"v":1,"op":"list"}'], "auth_required", "cookie",
                     "a request before authentication")
        beacon.open_session("malformed", cookie)

    expect_error(beacon, [b"{not json"], "bad_json", "not valid JSON", "broken JSON")
    expect_error(beacon, [b"\xff\xfe"], "bad_json", "not valid JSON", "binary garbage")
    expect_error(beacon, [b"[1, 2, 3]"], "bad_json", "expected a JSON object", "a JSON array")
    expect_error(beacon, [b""], "bad_json", "not valid JSON", "an empty frame")
    expect_error(beacon, [b'{"op":"list"}'], "bad_request", "missing field `v`", "no version")
    expect_error(beacon, [b'{"v":99,"op":"list"}'], "unsupported_version", "version 99",
                 "a future version")
    reply = expect_error(beacon, [b'{"v":1,"op":"teleport","id":41}'], "unknown_op",
                         "\"teleport\"", "an unknown operation")
    check(reply.get("id") == 41, "the error carries the request's id")
    expect_error(beacon, [b'{"v":1,"op":"heartbeat","node":42}'], "bad_request",
                 "field `node`", "a number where a name goes")
    expect_error(beacon,
                 [json.dumps({"v": 1, "op": "register", "node": "n", "resource": "r",
                              "requires": ["ok", 7], "heartbeat_ms": 1000}).encode()],
                 "bad_request", "`requires[1]`", "a number in a list of names")
    expect_error(beacon,
                 [json.dumps({"v": 1, "op": "register", "node": "n", "resource": "r",
                              "heartbeat_ms": 0}).encode()],
                 "bad_request", "heartbeat_ms", "a heartbeat interval out of range")
    expect_error(beacon, [b'{"v":1,"op":"lookup","resource":"a b"}'], "bad_request",
                 "contains ' '", "a name with a space")
    expect_error(beacon, [b'{"v":1,"op":"list","everything":true}'], "bad_request",
                 "unknown field `everything`", "an unknown field")
    big = json.dumps({"v": 1, "op": "lookup", "resource": "x" * 100_000}).encode()
    expect_error(beacon, [big], "too_large", "max_frame", "a 100 kB frame")
    expect_error(beacon, [b'{"v":1,"op":"list"}', b'{"v":1,"op":"list"}'], "bad_frame",
                 "got 2 frames", "two body frames")
    expect_error(beacon, [b'{"v":1,"op":"heartbeat","node":"ghost"}'], "unknown_node",
                 "ghost", "a heartbeat for an unknown node")

    # A REQ socket's envelope (an empty delimiter frame) is accepted and answered in kind.
    req = beacon.context.socket(zmq.REQ)
    req.setsockopt(zmq.LINGER, 0)
    req.setsockopt(zmq.RCVTIMEO, 5000)
    req.connect(args.endpoint)
    req.send(b'{"v":1,"op":"ping","id":1}')
    pong = json.loads(req.recv())
    check(pong["op"] in ("pong", "error"), f"a REQ client is answered ({pong['op']})")
    req.close(0)

    # A flood of garbage is answered message by message and the beacon still works after it.
    # (Sent in chunks of 100, reading the answers of each: the beacon keeps at most 256
    # answers waiting for a connection that does not read.)
    answered = 0
    for chunk in range(20):
        for i in range(100):
            beacon.send_raw(b"garbage %d" % (chunk * 100 + i))
        for _ in range(100):
            reply = beacon.receive()
            if reply["op"] == "error" and reply["code"] == "bad_json":
                answered += 1
    check(answered == 2000, "2000 garbage frames, 2000 error replies")
    pong = beacon.request("ping")
    check(pong["op"] == "pong", "the beacon still answers")
    beacon.close()
    print("all checks passed", flush=True)


if __name__ == "__main__":
    sys.exit(main())
