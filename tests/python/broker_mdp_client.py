"""A Majordomo client (ZeroMQ RFC 7, MDP/Client 0.1) over REQ, written from the protocol alone:
request ["MDPC01", service, body], reply ["MDPC01", service, body...].

usage: broker_mdp_client.py ENDPOINT TIMEOUT_MS SERVICE BODY [SERVICE BODY ...]
Prints "<service> -> <reply body>" per request; exits 1 on a malformed reply, 2 on timeout.
"""

import sys

import zmq

MDPC = b"MDPC01"


def main():
    endpoint, timeout_ms = sys.argv[1], int(sys.argv[2])
    pairs = sys.argv[3:]
    context = zmq.Context()
    client = context.socket(zmq.REQ)
    client.setsockopt(zmq.LINGER, 0)
    client.connect(endpoint)
    for service, body in zip(pairs[0::2], pairs[1::2]):
        client.send_multipart([MDPC, service.encode(), body.encode()])
        if not client.poll(timeout_ms, zmq.POLLIN) & zmq.POLLIN:
            print("timeout waiting for", service, flush=True)
            sys.exit(2)
        reply = client.recv_multipart()
        if len(reply) < 3 or reply[0] != MDPC or reply[1] != service.encode():
            print("MALFORMED", reply, flush=True)
            sys.exit(1)
        print(service, "->", b"|".join(reply[2:]).decode(errors="replace"), flush=True)


if __name__ == "__main__":
    main()
