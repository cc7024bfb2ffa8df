"""Two ipc clients of one node's hub that send each other numbered messages, for the chaos
soak (tests/soak/soak.py). Built on tests/python/ipc_client.py (docs/protocols/ipc.md).

    ipc_pair.py --socket PATH [--rate R] [--drain S]

One process, two connections registered as `soak-a` and `soak-b`. Each sends the other
`Send` messages "m <own name> <seq>" at R per second, numbered from 0 across reconnections,
and echoes every message it receives back to its sender's name as "e <name> <seq>". Every
Nth message (`--absent-every`) goes to `soak-nobody`, a name nobody registers: the hub holds
it in a mailbox for `mailbox_ttl`, then must report it `Expired` (or the sender's connection
closes first). Each
sender then knows, for each of its messages, whether it was echoed (how many times), whether
the hub reported an error for it (an `Error` frame carrying its `corr`), and whether its
connection to the hub closed after it was sent (the node was killed). A connection that
closes is opened again (and registered again) as soon as the hub accepts it.

It prints "ready" once each side has had one echo, runs until its standard input closes, then
stops sending and waits until every message is settled (echoed, or reported failed, or its
connection closed) or `--drain` seconds pass, and prints one line "RESULT <json>".
"""

import argparse
import json
import os
import select
import socket
import sys
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "python"))
import ipc_client  # noqa: E402
from ipc_client import Client, encode, next_corr  # noqa: E402

WRITE_TIMEOUT = 5.0
# A name nobody registers: messages to it wait in the hub's mailbox, then expire.
ABSENT = "soak-nobody"


class Side:
    """One registered connection and the fate of every message it sent."""

    def __init__(self, path, name, other):
        self.path, self.name, self.other = path, name, other
        self.client = None
        self.epoch = 0
        self.seq = 0
        self.corrs = {}  # corr -> ("m", seq) | ("e", None)
        self.sent_epoch = {}  # seq -> epoch it was sent on
        self.echoes = {}  # seq -> count
        self.errors = {}  # seq -> [error names]
        self.closed = set()  # seqs unsettled when their connection closed
        self.unknown_echoes = []
        self.echo_errors = {}
        self.other_errors = []
        self.connects = 0
        self.connect_failures = 0
        self.write_stalls = 0
        self.next_try = 0.0
        self.to_absent = set()  # seqs sent to ABSENT

    def connect(self):
        """One attempt to connect and register; False if the hub is not there (yet)."""
        try:
            client = Client.connect(self.path)
        except OSError:
            self.connect_failures += 1
            return False
        try:
            client.sock.settimeout(WRITE_TIMEOUT)
            corr = next_corr()
            client.call(encode(ipc_client.REGISTER, pid=os.getpid(), corr=corr, name=self.name),
                        corr, timeout=5.0)
        except (OSError, TimeoutError, ConnectionError, ipc_client.HubError) as err:
            self.other_errors.append(f"register: {err}")
            client.close()
            self.connect_failures += 1
            return False
        self.client = client
        self.epoch += 1
        self.connects += 1
        # Frames that came with the Ok are handled by the caller's next read.
        return True

    def lost_connection(self):
        """The connection closed: every unsettled message sent on it was told so."""
        if self.client is not None:
            self.client.close()
        self.client = None
        for seq, epoch in self.sent_epoch.items():
            if epoch == self.epoch and self.echoes.get(seq, 0) == 0 and seq not in self.errors:
                self.closed.add(seq)

    def write(self, frame):
        try:
            self.client.sock.settimeout(WRITE_TIMEOUT)
            self.client.sock.sendall(frame)
            return True
        except socket.timeout:
            self.write_stalls += 1
            self.lost_connection()
        except OSError:
            self.lost_connection()
        return False

    def send_next(self, absent_every):
        seq = self.seq
        corr = next_corr()
        body = f"m {self.name} {seq}".encode()
        self.corrs[corr] = ("m", seq)
        self.sent_epoch[seq] = self.epoch
        self.seq += 1
        to = self.other
        if absent_every and seq % absent_every == absent_every - 1:
            to = ABSENT
            self.to_absent.add(seq)
        self.write(encode(ipc_client.SEND, corr=corr, name=to, body=body))

    def handle(self, frame):
        if frame.kind == ipc_client.SEND:
            parts = frame.body.decode(errors="replace").split(" ")
            if len(parts) == 3 and parts[0] == "m":
                corr = next_corr()
                self.corrs[corr] = ("e", None)
                self.write(encode(ipc_client.SEND, corr=corr, name=parts[1],
                                  body=f"e {parts[1]} {parts[2]}".encode()))
            elif len(parts) == 3 and parts[0] == "e" and parts[1] == self.name:
                seq = int(parts[2])
                if seq not in self.sent_epoch:
                    self.unknown_echoes.append(seq)
                else:
                    self.echoes[seq] = self.echoes.get(seq, 0) + 1
            else:
                self.unknown_echoes.append(frame.body[:100].decode(errors="replace"))
        elif frame.kind == ipc_client.ERROR:
            name = ipc_client.ERROR_NAMES.get(frame.arg, str(frame.arg))
            what = self.corrs.get(frame.corr)
            if what is None:
                self.other_errors.append(f"{name} corr={frame.corr}")
            elif what[0] == "m":
                self.errors.setdefault(what[1], []).append(name)
            else:
                self.echo_errors[name] = self.echo_errors.get(name, 0) + 1
        else:
            self.other_errors.append(f"unexpected frame kind 0x{frame.kind:02x}")

    def read(self):
        try:
            data = self.client.sock.recv(65536)
        except (BlockingIOError, socket.timeout):
            return
        except OSError:
            self.lost_connection()
            return
        if not data:
            self.lost_connection()
            return
        self.client.decoder.feed(data)
        self.drain_inbox()

    def drain_inbox(self):
        client = self.client
        frames = list(client.inbox) + list(client.decoder.frames())
        client.inbox = []
        for frame in frames:
            if self.client is not client:
                break
            self.handle(frame)

    def unsettled(self):
        return [s for s in self.sent_epoch
                if self.echoes.get(s, 0) == 0 and s not in self.errors and s not in self.closed]

    def result(self):
        once = sum(1 for s in self.sent_epoch if self.echoes.get(s, 0) == 1)
        dups = sorted(s for s in self.sent_epoch if self.echoes.get(s, 0) > 1)
        told_error = sorted(s for s in self.sent_epoch
                            if self.echoes.get(s, 0) == 0 and s in self.errors)
        told_closed = sorted(s for s in self.sent_epoch if self.echoes.get(s, 0) == 0
                             and s not in self.errors and s in self.closed)
        echoed_and_error = sorted(s for s in self.sent_epoch
                                  if self.echoes.get(s, 0) > 0 and s in self.errors)
        absent_echoed = sorted(s for s in self.to_absent if self.echoes.get(s, 0) > 0)
        absent_expired = sum(1 for s in self.to_absent if "Expired" in self.errors.get(s, []))
        error_names = {}
        for s in told_error:
            for name in self.errors[s]:
                error_names[name] = error_names.get(name, 0) + 1
        return {
            "name": self.name, "sent": self.seq, "echoed_once": once, "duplicated": dups,
            "told_error": len(told_error), "error_names": error_names,
            "told_closed": len(told_closed), "lost": self.unsettled(),
            "echoed_and_error": echoed_and_error, "unknown_echoes": self.unknown_echoes[:50],
            "unknown_echo_count": len(self.unknown_echoes), "echo_errors": self.echo_errors,
            "other_errors": self.other_errors[:20], "connects": self.connects,
            "write_stalls": self.write_stalls, "to_absent": len(self.to_absent),
            "absent_expired": absent_expired, "absent_echoed": absent_echoed,
        }


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--socket", required=True)
    parser.add_argument("--rate", type=float, default=50.0)
    parser.add_argument("--absent-every", type=int, default=20,
                        help="every Nth message goes to a name nobody registers")
    parser.add_argument("--drain", type=float, default=15.0)
    args = parser.parse_args()

    sides = [Side(args.socket, "soak-a", "soak-b"), Side(args.socket, "soak-b", "soak-a")]
    start = time.monotonic()
    next_send = [start, start + 0.5 / args.rate]
    stopping_at = None
    ready = False
    stdin_open = True

    while True:
        now = time.monotonic()
        for side in sides:
            if side.client is None and now >= side.next_try:
                if side.connect():
                    side.drain_inbox()
                else:
                    side.next_try = now + 0.05
        if stopping_at is None:
            for i, side in enumerate(sides):
                while next_send[i] <= now:
                    if side.client is not None:
                        side.send_next(args.absent_every)
                    next_send[i] += 1.0 / args.rate
        else:
            if not any(side.unsettled() for side in sides):
                break
            if now - stopping_at > args.drain:
                break
        if not ready and all(any(c > 0 for c in s.echoes.values()) for s in sides):
            ready = True
            print("ready", flush=True)

        readers = [s.client.sock for s in sides if s.client is not None]
        if stdin_open:
            readers.append(sys.stdin)
        timeout = 0.05 if stopping_at is not None else max(0.0, min(min(next_send) - now, 0.05))
        readable, _, _ = select.select(readers, [], [], timeout)
        if stdin_open and sys.stdin in readable:
            if not os.read(sys.stdin.fileno(), 4096):
                stdin_open = False
                stopping_at = time.monotonic()
        for side in sides:
            if side.client is not None and side.client.sock in readable:
                side.client.sock.settimeout(0)
                side.read()

    print("RESULT " + json.dumps({"sides": [s.result() for s in sides],
                                  "duration": time.monotonic() - start}), flush=True)


if __name__ == "__main__":
    main()
