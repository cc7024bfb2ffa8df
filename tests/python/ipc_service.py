"""A service with an ipc channel, as the supervisor runs it (stdlib only).

It reads TROUPE_SERVICE_ID and TROUPE_IPC_SOCKET, registers, attaches its channel and prints
"attached <service> <pid>", prints "stored-config <json>" (its persisted config, empty if
none), sends one metric and one event, then serves the node:
  PushConfig: acknowledged and printed as "config-applied <json>", unless the config has a
              "reject" key: then refused ("config-refused <json>").
  Invoke:     body "hang" is never answered ("hanging <pid>"); "pid" is answered with the
              pid; "config" with the persisted config it asks the hub for; anything else
              with "echo:<body>" ("invoked <body>").
Every line is flushed; it runs until the hub closes or it is killed.
"""

import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import ipc_client  # noqa: E402
from ipc_client import Client  # noqa: E402


def say(*parts):
    print(*parts, flush=True)


def main():
    service = os.environ["TROUPE_SERVICE_ID"]
    c = Client.connect(os.environ["TROUPE_IPC_SOCKET"])
    c.register()
    c.attach(service)
    say("attached", service, os.getpid())
    say("stored-config", c.request_config().decode() or "<none>")
    c.metric("dev-1", "temperature", b"21.5")
    c.event(7, b"service ready")
    try:
        while True:
            kind, f = c.recv()
            if kind == ipc_client.PUSH_CONFIG:
                config = json.loads(f.body)
                if "reject" in config:
                    c.refuse(f, "config has a reject key")
                    say("config-refused", f.body.decode())
                else:
                    c.reply(f)
                    say("config-applied", f.body.decode())
            elif kind == ipc_client.INVOKE:
                say("invoked", f.body.decode(errors="replace"))
                if f.body == b"hang":
                    say("hanging", os.getpid())
                elif f.body == b"pid":
                    c.reply(f, str(os.getpid()).encode())
                elif f.body == b"config":
                    c.reply(f, c.request_config())
                else:
                    c.reply(f, b"echo:" + f.body)
    except ConnectionError:
        say("hub closed")


if __name__ == "__main__":
    main()
