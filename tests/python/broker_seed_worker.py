"""A worker in the seed's framing (an empty frame after the worker id), written from the
protocol facts alone.

Control frames are 3 bytes: command (0x01 READY, 0x02 HEARTBEAT, 0x03 STOP), version (1),
free concurrency. Requests arrive as ["", envelope..., "", body]; replies go back the same way.
Any message from the broker that does not start with the empty frame is printed as INVALID and
the worker exits 3.

A request whose body is "stop" is not answered: the worker sends STOP instead (leaving while
it holds the request) and exits 0.

usage: broker_seed_worker.py ENDPOINT INTERVAL_MS CONCURRENCY
"""

import argparse
import signal
import sys
import time

import zmq

VERSION = 1


def control(command, free):
    return [b"", bytes([command, VERSION, free])]


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("endpoint")
    parser.add_argument("interval_ms", type=int)
    parser.add_argument("concurrency", type=int)
    args = parser.parse_args()
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))

    context = zmq.Context()
    socket = context.socket(zmq.DEALER)
    socket.setsockopt(zmq.LINGER, 1000)
    socket.connect(args.endpoint)
    socket.send_multipart(control(0x01, args.concurrency))
    print("worker started", flush=True)
    interval = args.interval_ms / 1000.0
    heartbeat_at = time.monotonic() + interval
    while True:
        if socket.poll(args.interval_ms, zmq.POLLIN) & zmq.POLLIN:
            frames = socket.recv_multipart()
            if not frames or frames[0] != b"":
                print("INVALID", frames, flush=True)
                sys.exit(3)
            rest = frames[1:]
            if len(rest) == 1:
                if rest[0][:1] != b"\x02":
                    print("INVALID", frames, flush=True)
                    sys.exit(3)
                print("heartbeat from the broker", flush=True)
                continue
            delimiter = rest.index(b"")
            envelope, body = rest[:delimiter], rest[delimiter + 1:]
            print("request", body[0].decode(errors="replace"), flush=True)
            if body == [b"stop"]:
                socket.send_multipart(control(0x03, 0))
                print("sent STOP", flush=True)
                socket.close()
                return
            socket.send_multipart([b""] + envelope + [b""] + [b"seed:" + body[0]])
        if time.monotonic() > heartbeat_at:
            heartbeat_at = time.monotonic() + interval
            socket.send_multipart(control(0x02, args.concurrency))


if __name__ == "__main__":
    main()
