"""A Lazy Pirate client (REQ), written from the protocol alone: send a request, wait up to a
timeout, and on silence close the socket, reconnect and resend, up to RETRIES times.

usage: broker_lazy_pirate.py ENDPOINT COUNT TIMEOUT_MS RETRIES [--expect-prefix P]
Sends "request-<i>" COUNT times and checks each reply equals it (or P + it). Prints each
reply; exits 0 if all matched, 1 on a wrong reply, 2 when the server seems offline.
"""

import argparse
import sys

import zmq


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("endpoint")
    parser.add_argument("count", type=int)
    parser.add_argument("timeout_ms", type=int)
    parser.add_argument("retries", type=int)
    parser.add_argument("--expect-prefix", default="")
    args = parser.parse_args()

    context = zmq.Context()

    def connect():
        socket = context.socket(zmq.REQ)
        socket.setsockopt(zmq.LINGER, 0)
        socket.connect(args.endpoint)
        return socket

    client = connect()
    for i in range(args.count):
        request = ("request-%d" % i).encode()
        retries_left = args.retries
        while True:
            client.send(request)
            if client.poll(args.timeout_ms, zmq.POLLIN) & zmq.POLLIN:
                reply = client.recv()
                print("reply", reply.decode(errors="replace"), flush=True)
                if reply != args.expect_prefix.encode() + request:
                    print("WRONG reply to", request, flush=True)
                    sys.exit(1)
                break
            retries_left -= 1
            client.setsockopt(zmq.LINGER, 0)
            client.close()
            if retries_left < 0:
                print("server seems to be offline, abandoning", flush=True)
                sys.exit(2)
            print("no response, retrying", flush=True)
            client = connect()
    print("all replies ok", flush=True)


if __name__ == "__main__":
    main()
