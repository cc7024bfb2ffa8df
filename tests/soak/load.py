"""Steady clients of the broker for the chaos soak (tests/soak/soak.py): one pipelining
Paranoid Pirate DEALER on the `echo` frontend and several Majordomo DEALERs (one request in
flight each, as a Lazy Pirate client), every request numbered and checked.

    load.py --frontend EP --majordomo EP [--pp-rate R] [--mdp-sockets N] [--mdp-rate R]
            [--bound S]

It prints "first-answer" once a request got the echo of its own body, then sends at the
given rates until its standard input closes, then stops sending and waits until every request
is answered or older than `--bound`, and prints one line "RESULT <json>".

How answers are matched:
- Paranoid Pirate: each request is `[rid, "", rid]`; the broker carries the envelope (`rid`)
  back unchanged with the reply or its `TROUPE-ERROR` reply, so every answer names its
  request exactly.
- Majordomo: the protocol carries no envelope for a DEALER client, so each socket has at most
  one request in flight: an answer arriving while nothing is in flight, or carrying another
  request's body, is counted as unknown or duplicate. A request unanswered after `--bound`
  seconds is given up (the socket is closed and a new one opened, as Lazy Pirate does).

Times are CLOCK_MONOTONIC seconds (time.monotonic), the same clock as the driver's, which
decides which unanswered requests were held by a broker it killed.
"""

import argparse
import json
import os
import sys
import time

import zmq

ERROR_PREFIX = b"TROUPE-ERROR "


def error_code(body):
    """The code of a TROUPE-ERROR reply ("502"), or None for a normal reply."""
    if len(body) == 1 and body[0].startswith(ERROR_PREFIX):
        parts = body[0].split(b" ", 2)
        return parts[1].decode(errors="replace") if len(parts) > 1 else "?"
    return None


class Tally:
    """What happened to every request of one client."""

    def __init__(self, bound):
        self.bound = bound
        self.sent = {}  # rid -> send time
        self.answered = {}  # rid -> (time, "reply" | "error <code>" | "wrong")
        self.duplicates = []
        self.unknown = []
        self.wrong = []
        self.send_refused = 0

    def answer(self, rid, body, now):
        if rid not in self.sent:
            self.unknown.append(rid.decode(errors="replace"))
            return
        if rid in self.answered:
            self.duplicates.append(rid.decode(errors="replace"))
            return
        code = error_code(body)
        if code is not None:
            kind = "error " + code
        elif body == [rid]:
            kind = "reply"
        else:
            kind = "wrong"
            self.wrong.append([rid.decode(errors="replace"), repr(body)[:200]])
        self.answered[rid] = (now, kind)

    def pending(self, now):
        """Requests neither answered nor past the bound."""
        return [r for r, t in self.sent.items()
                if r not in self.answered and now - t <= self.bound]

    def result(self):
        errors = {}
        replies = 0
        late = []
        latencies = []
        for rid, (t, kind) in self.answered.items():
            latency = t - self.sent[rid]
            latencies.append(latency)
            if latency > self.bound:
                late.append([rid.decode(), self.sent[rid], round(latency, 3)])
            if kind == "reply":
                replies += 1
            elif kind.startswith("error "):
                errors[kind[6:]] = errors.get(kind[6:], 0) + 1
        latencies.sort()
        unanswered = [[r.decode(), t] for r, t in self.sent.items() if r not in self.answered]
        return {
            "sent": len(self.sent),
            "replies": replies,
            "errors": errors,
            "wrong": self.wrong,
            "duplicates": self.duplicates,
            "unknown": self.unknown,
            "unanswered": unanswered,
            "late": late,
            "send_refused": self.send_refused,
            "latency_p50": latencies[len(latencies) // 2] if latencies else None,
            "latency_p99": latencies[int(len(latencies) * 0.99)] if latencies else None,
            "latency_max": latencies[-1] if latencies else None,
        }


class MdpSocket:
    """One Majordomo client socket with at most one request in flight."""

    def __init__(self, ctx, endpoint, index):
        self.ctx, self.endpoint, self.index = ctx, endpoint, index
        self.sock = None
        self.inflight = None  # (rid, t)
        self.history = set()  # rids this socket sent
        self.open()

    def open(self):
        if self.sock is not None:
            self.sock.close(0)
        self.sock = self.ctx.socket(zmq.DEALER)
        self.sock.setsockopt(zmq.LINGER, 0)
        self.sock.connect(self.endpoint)
        self.history = set()


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--frontend", required=True)
    parser.add_argument("--majordomo", required=True)
    parser.add_argument("--service", default="echo")
    parser.add_argument("--pp-rate", type=float, default=50.0)
    parser.add_argument("--mdp-sockets", type=int, default=4)
    parser.add_argument("--mdp-rate", type=float, default=5.0, help="per socket")
    parser.add_argument("--bound", type=float, default=15.0)
    args = parser.parse_args()
    service = args.service.encode()

    ctx = zmq.Context()
    pp = ctx.socket(zmq.DEALER)
    pp.setsockopt(zmq.LINGER, 0)
    pp.connect(args.frontend)
    pp_tally = Tally(args.bound)
    mdp_tally = Tally(args.bound)
    mdps = [MdpSocket(ctx, args.majordomo, i) for i in range(args.mdp_sockets)]
    gave_up = 0

    counter = [0]

    def next_rid(prefix):
        counter[0] += 1
        return b"%s-%d-%d" % (prefix, os.getpid(), counter[0])

    start = time.monotonic()
    next_pp = start
    next_mdp = [start + i / max(1, args.mdp_sockets) / args.mdp_rate for i in range(len(mdps))]
    stopping = False
    first = False
    stdin_open = True

    while True:
        now = time.monotonic()
        if not stopping:
            while next_pp <= now:
                rid = next_rid(b"pp")
                try:
                    pp.send_multipart([rid, b"", rid], zmq.NOBLOCK)
                    pp_tally.sent[rid] = now
                except zmq.Again:
                    pp_tally.send_refused += 1
                next_pp += 1.0 / args.pp_rate
            for i, m in enumerate(mdps):
                if m.inflight is None and next_mdp[i] <= now:
                    rid = next_rid(b"mdp")
                    try:
                        m.sock.send_multipart([b"", b"MDPC01", service, rid], zmq.NOBLOCK)
                        mdp_tally.sent[rid] = now
                        m.inflight = (rid, now)
                        m.history.add(rid)
                    except zmq.Again:
                        mdp_tally.send_refused += 1
                    next_mdp[i] = max(next_mdp[i] + 1.0 / args.mdp_rate, now)
        for m in mdps:
            if m.inflight is not None and now - m.inflight[1] > args.bound:
                # Lazy Pirate: give the request up, and the socket with it.
                m.inflight = None
                m.open()
                gave_up += 1
        if stopping and not pp_tally.pending(now) and all(m.inflight is None for m in mdps):
            break

        poller = zmq.Poller()
        poller.register(pp, zmq.POLLIN)
        for m in mdps:
            poller.register(m.sock, zmq.POLLIN)
        if stdin_open:
            poller.register(sys.stdin.fileno(), zmq.POLLIN)
        due = [next_pp] + [t for t, m in zip(next_mdp, mdps) if m.inflight is None]
        wait = 0.1 if stopping else max(0.0, min(due) - now)
        events = dict(poller.poll(min(wait, 0.1) * 1000))
        now = time.monotonic()
        if stdin_open and events.get(sys.stdin.fileno()):
            if not os.read(sys.stdin.fileno(), 4096):
                stdin_open = False
                stopping = True
        while pp.poll(0, zmq.POLLIN):
            frames = pp.recv_multipart()
            if len(frames) >= 3 and frames[1] == b"":
                pp_tally.answer(frames[0], frames[2:], now)
                if not first and pp_tally.answered[frames[0]][1] == "reply":
                    first = True
                    print("first-answer", flush=True)
            else:
                pp_tally.unknown.append(repr(frames)[:200])
        for m in mdps:
            while m.sock.poll(0, zmq.POLLIN):
                frames = m.sock.recv_multipart()
                if len(frames) < 4 or frames[:3] != [b"", b"MDPC01", service]:
                    mdp_tally.unknown.append(repr(frames)[:200])
                    continue
                body = frames[3:]
                if m.inflight is None:
                    if len(body) == 1 and body[0] in m.history:
                        mdp_tally.duplicates.append(body[0].decode(errors="replace"))
                    else:
                        mdp_tally.unknown.append(repr(frames)[:200])
                    continue
                rid = m.inflight[0]
                if len(body) == 1 and body[0] != rid and body[0] in m.history:
                    mdp_tally.duplicates.append(body[0].decode(errors="replace"))
                    continue
                mdp_tally.answer(rid, body, now)
                m.inflight = None

    result = {"pp": pp_tally.result(), "mdp": mdp_tally.result(), "mdp_gave_up": gave_up,
              "duration": time.monotonic() - start}
    print("RESULT " + json.dumps(result), flush=True)
    for m in mdps:
        m.sock.close(0)
    pp.close(0)
    ctx.term()


if __name__ == "__main__":
    main()
