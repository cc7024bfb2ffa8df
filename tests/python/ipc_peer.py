"""A process that talks to the troupe ipc hub, for the integration tests (stdlib only).

Modes (every line printed is flushed; tests wait on them):
  send --to NAME|PID --count N --tag T [--size B] [--batch K] [--linger S]
        register, send N messages "T:i" (padded to B bytes; K to a Batch frame when K > 1),
        print "sent N", then print
        "error <ErrorName> corr=<c> to=<dest> <text>" for every failure report that
        arrives within S seconds, then "done".
  echo --name NAME
        register as NAME, print "ready", reply to requests with the same body, print
        "message <from> <body>" for messages; run until the hub closes.
  spoof --claim PID
        try to register as PID, print the hub's answer ("refused <ErrorName> <text>"),
        then whether the connection was closed ("closed").
"""

import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import ipc_client  # noqa: E402
from ipc_client import Client, HubError  # noqa: E402


def say(*parts):
    print(*parts, flush=True)


def dest(text):
    return int(text) if text.isdigit() else text


def send(args):
    c = Client.connect(args.socket)
    c.register()
    corrs = {}
    bodies = []
    for i in range(args.count):
        body = f"{args.tag}:{i}".encode()
        bodies.append(body + b"." * max(0, args.size - len(body)))
    for start in range(0, args.count, max(1, args.batch)):
        group = bodies[start:start + max(1, args.batch)]
        if args.batch > 1:
            first = c.send_batch(dest(args.to), group)
        else:
            first = c.send(dest(args.to), group[0])
        for i in range(len(group)):
            corrs[first + i] = start + i
    say("sent", args.count)
    try:
        while True:
            kind, f = c.recv(timeout=args.linger)
            if kind == ipc_client.ERROR:
                to = f.name or f.pid
                say("error", ipc_client.ERROR_NAMES.get(f.arg, f.arg), f"corr={f.corr}",
                    f"seq={corrs.get(f.corr)}", f"to={to}", f.body.decode(errors="replace"))
    except TimeoutError:
        pass
    say("done")


def echo(args):
    c = Client.connect(args.socket)
    c.register(args.name)
    say("ready", os.getpid())
    try:
        while True:
            kind, f = c.recv()
            if kind == ipc_client.REQUEST:
                c.reply(f, f.body)
            elif kind in (ipc_client.SEND, ipc_client.BROADCAST):
                say("message", f.sender, f.body.decode(errors="replace"))
    except ConnectionError:
        say("hub closed")


def spoof(args):
    c = Client.connect(args.socket)
    try:
        corr = ipc_client.next_corr()
        c.call(ipc_client.encode(ipc_client.REGISTER, pid=args.claim, corr=corr), corr)
        say("registered")
    except HubError as err:
        say("refused", err.name, err.text)
    try:
        c.recv(timeout=10)
        say("still open")
    except ConnectionError:
        say("closed")
    except TimeoutError:
        say("still open")


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("mode", choices=["send", "echo", "spoof"])
    parser.add_argument("--socket", default=os.environ.get("TROUPE_IPC_SOCKET"))
    parser.add_argument("--to")
    parser.add_argument("--count", type=int, default=1)
    parser.add_argument("--tag", default="m")
    parser.add_argument("--size", type=int, default=0)
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--linger", type=float, default=0.0)
    parser.add_argument("--name", default="")
    parser.add_argument("--claim", type=int, default=1)
    args = parser.parse_args()
    {"send": send, "echo": echo, "spoof": spoof}[args.mode](args)


if __name__ == "__main__":
    main()
