#!/usr/bin/env python3
"""Measures a beacon's memory under many hello-only connections.

Starts `beacon_rss` (the binary given, e.g. target/release/examples/beacon_rss), opens N DEALER
connections (from 2 worker processes, to stay under the fd limit) that each send one `hello`
and read its answer, closes them all, and prints the beacon's resident memory (VmRSS) at each
step, twice over:

    python3 crates/beacon/examples/hello_flood.py target/release/examples/beacon_rss 10000 [cookie]
"""
import json, multiprocessing, socket, subprocess, sys, time

import zmq

WORKERS = 2


def worker(port, n, conn):
    ctx = zmq.Context()
    ctx.MAX_SOCKETS = n + 100
    hello = json.dumps({"v": 1, "op": "hello", "id": 1, "nonce": "ab" * 32}).encode()
    while conn.recv() == "open":
        socks = []
        for _ in range(n):
            s = ctx.socket(zmq.DEALER)
            s.linger = 0
            s.connect(f"tcp://127.0.0.1:{port}")
            s.send(hello)
            socks.append(s)
        answered = 0
        deadline = time.time() + 120
        for s in socks:
            if s.poll(max(0, int((deadline - time.time()) * 1000))):
                s.recv()
                answered += 1
        conn.send(answered)
        conn.recv()  # "close"
        for s in socks:
            s.close()
        conn.send("closed")
    ctx.term()


def main():
    binary, n = sys.argv[1], int(sys.argv[2])
    mode = sys.argv[3] if len(sys.argv) > 3 else ""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    beacon = subprocess.Popen([binary, str(port), mode], stdin=subprocess.PIPE, stdout=subprocess.PIPE)
    assert beacon.stdout.readline().strip() == b"ready"
    status = open(f"/proc/{beacon.pid}/status")

    def rss():
        status.seek(0)
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024

    print(f"start: {rss():.1f} MiB", flush=True)
    pipes = []
    for _ in range(WORKERS):
        ours, theirs = multiprocessing.Pipe()
        multiprocessing.Process(target=worker, args=(port, n // WORKERS, theirs), daemon=True).start()
        pipes.append(ours)
    for rnd in range(2):
        for p in pipes:
            p.send("open")
        answered = sum(p.recv() for p in pipes)
        print(f"round {rnd}: {n} connected, {answered} answered: {rss():.1f} MiB", flush=True)
        for p in pipes:
            p.send("close")
        for p in pipes:
            p.recv()
        time.sleep(12)  # the beacon notices the disconnections and trims within 10 s
        print(f"round {rnd}: all closed: {rss():.1f} MiB", flush=True)
    for p in pipes:
        p.send("stop")
    beacon.stdin.close()
    beacon.wait(timeout=30)


if __name__ == "__main__":
    main()
