"""A Majordomo worker (ZeroMQ RFC 7, MDP/Worker 0.1), written from the protocol alone.

Frames on its DEALER: ["", "MDPW01", command, ...]. READY carries the service name; REQUEST
is [client, "", body...]; REPLY goes back as [client, "", body...]; HEARTBEAT both ways;
DISCONNECT from the broker makes it reconnect with a new socket (and READY again).

usage: broker_mdp_worker.py ENDPOINT SERVICE INTERVAL_MS LIVENESS
Replies "<SERVICE>:<body>".
"""

import argparse
import signal
import sys
import time

import zmq

MDPW = b"MDPW01"
READY, REQUEST, REPLY, HEARTBEAT, DISCONNECT = (bytes([c]) for c in range(1, 6))


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("endpoint")
    parser.add_argument("service")
    parser.add_argument("interval_ms", type=int)
    parser.add_argument("liveness", type=int)
    args = parser.parse_args()
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))

    context = zmq.Context()
    interval = args.interval_ms / 1000.0

    def connect():
        socket = context.socket(zmq.DEALER)
        socket.setsockopt(zmq.LINGER, 0)
        socket.connect(args.endpoint)
        socket.send_multipart([b"", MDPW, READY, args.service.encode()])
        return socket

    socket = connect()
    liveness = args.liveness
    heartbeat_at = time.monotonic() + interval
    print("worker started", flush=True)
    while True:
        if socket.poll(args.interval_ms, zmq.POLLIN) & zmq.POLLIN:
            frames = socket.recv_multipart()
            liveness = args.liveness
            if len(frames) < 3 or frames[0] != b"" or frames[1] != MDPW:
                print("INVALID", frames, flush=True)
                sys.exit(3)
            command = frames[2]
            if command == REQUEST:
                client, empty, body = frames[3], frames[4], frames[5:]
                assert empty == b""
                print("request", body[0].decode(errors="replace"), flush=True)
                reply = [args.service.encode() + b":" + body[0]] + body[1:]
                socket.send_multipart([b"", MDPW, REPLY, client, b""] + reply)
            elif command == HEARTBEAT:
                print("heartbeat from the broker", flush=True)
            elif command == DISCONNECT:
                print("disconnected by the broker; reconnecting", flush=True)
                socket.close()
                socket = connect()
            else:
                print("INVALID", frames, flush=True)
                sys.exit(3)
        else:
            liveness -= 1
            if liveness == 0:
                socket.close()
                time.sleep(interval)
                socket = connect()
                liveness = args.liveness
        if time.monotonic() > heartbeat_at:
            heartbeat_at = time.monotonic() + interval
            socket.send_multipart([b"", MDPW, HEARTBEAT])


if __name__ == "__main__":
    main()
