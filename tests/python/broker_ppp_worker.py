"""A standard Paranoid Pirate worker (ZeroMQ RFC 6), written from the protocol alone.

It speaks exactly what a PPP queue expects: READY (0x01) first, HEARTBEAT (0x02) every
interval, requests as [client, "", body] and replies the same way. Like the Guide's worker it
rejects any message that is not 1 frame (heartbeat) or 3 frames (request): it prints
"INVALID <frames>" and exits 3, so a broker that inserts an extra frame is caught.

usage: broker_ppp_worker.py ENDPOINT INTERVAL_MS LIVENESS [--tag TAG] [--delay-ms N]
Replies are TAG + ":" + body when --tag is given, else the body.
"""

import argparse
import signal
import sys
import time

import zmq

READY = b"\x01"
HEARTBEAT = b"\x02"


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("endpoint")
    parser.add_argument("interval_ms", type=int)
    parser.add_argument("liveness", type=int)
    parser.add_argument("--tag", default=None)
    parser.add_argument("--delay-ms", type=int, default=0)
    args = parser.parse_args()
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))

    interval = args.interval_ms / 1000.0
    context = zmq.Context()

    def connect():
        socket = context.socket(zmq.DEALER)
        socket.setsockopt(zmq.LINGER, 0)
        socket.connect(args.endpoint)
        socket.send(READY)
        return socket

    socket = connect()
    poller = zmq.Poller()
    poller.register(socket, zmq.POLLIN)
    liveness = args.liveness
    heartbeat_at = time.monotonic() + interval
    print("worker started", flush=True)
    while True:
        events = dict(poller.poll(args.interval_ms))
        if events.get(socket) == zmq.POLLIN:
            frames = socket.recv_multipart()
            if len(frames) == 3 and frames[1] == b"":
                liveness = args.liveness
                if args.delay_ms:
                    time.sleep(args.delay_ms / 1000.0)
                body = frames[2]
                if args.tag:
                    body = args.tag.encode() + b":" + body
                print("request", frames[2].decode(errors="replace"), flush=True)
                socket.send_multipart([frames[0], b"", body])
            elif len(frames) == 1 and frames[0] == HEARTBEAT:
                liveness = args.liveness
                print("heartbeat from the broker", flush=True)
            else:
                print("INVALID", frames, flush=True)
                sys.exit(3)
        else:
            liveness -= 1
            if liveness == 0:
                print("broker silent; reconnecting", flush=True)
                poller.unregister(socket)
                socket.close()
                time.sleep(interval)
                socket = connect()
                poller.register(socket, zmq.POLLIN)
                liveness = args.liveness
        if time.monotonic() > heartbeat_at:
            heartbeat_at = time.monotonic() + interval
            socket.send(HEARTBEAT)


if __name__ == "__main__":
    main()
