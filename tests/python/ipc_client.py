"""A client of the troupe ipc hub, written from docs/protocols/ipc.md with the standard
library only. Imported by the ipc_*.py test programs; usable on its own:

    from ipc_client import Client
    c = Client.connect("/tmp/troupe-edge-1.sock")
    c.register("py")
    c.send("printer", b"page 1")
    kind, frame = c.recv()
"""

import os
import socket
import struct
import time
import zlib

VERSION = 1
HEADER = struct.Struct("<III")  # length, pid, checksum
ENVELOPE = struct.Struct("<BBHIQI")  # version, kind, name_len, pid, corr, arg
MIN_FRAME = HEADER.size + ENVELOPE.size

REGISTER, SEND, REQUEST, REPLY, BROADCAST, STATS, BATCH = 0x01, 0x02, 0x03, 0x04, 0x05, 0x06, 0x07
ATTACH, REQUEST_CONFIG, METRIC, EVENT = 0x10, 0x11, 0x12, 0x13
PUSH_CONFIG, INVOKE, OK, ERROR = 0x20, 0x21, 0x40, 0x41

ERROR_NAMES = {
    1: "Malformed", 2: "NotRegistered", 3: "PidMismatch", 4: "NameTaken",
    5: "AlreadyRegistered", 6: "MailboxFull", 7: "Expired", 8: "Timeout",
    9: "NoSuchRequest", 10: "RequesterGone", 11: "TooManyPending", 12: "FrameTooLarge",
    13: "ChannelExists", 14: "NotPermitted", 15: "UnknownService", 16: "NotAttached",
    17: "ShuttingDown", 18: "TooManyConnections", 19: "Internal", 20: "Refused",
    21: "DuplicateRequest", 22: "ReceiverGone", 23: "TooMuchDamage",
}
REFUSED = 20

_corr = [1]


class HubError(Exception):
    """The hub (or the process asked) answered with an Error frame."""

    def __init__(self, code, text):
        super().__init__(f"{ERROR_NAMES.get(code, code)}: {text}")
        self.code = code
        self.name = ERROR_NAMES.get(code, str(code))
        self.text = text


class Frame:
    """A decoded frame: header pid and envelope fields."""

    def __init__(self, sender, kind, pid, corr, arg, name, body):
        self.sender, self.kind, self.pid, self.corr = sender, kind, pid, corr
        self.arg, self.name, self.body = arg, name, body

    def __repr__(self):
        return (f"Frame(sender={self.sender}, kind=0x{self.kind:02x}, pid={self.pid}, "
                f"corr={self.corr}, arg={self.arg}, name={self.name!r}, body={self.body!r})")


def encode(kind, pid=0, corr=0, arg=0, name="", body=b"", sender=None):
    """One whole frame, as section 1 and 2 of the protocol describe it."""
    name = name.encode() if isinstance(name, str) else name
    payload = ENVELOPE.pack(VERSION, kind, len(name), pid, corr, arg) + name + body
    head = struct.pack("<II", HEADER.size + len(payload), os.getpid() if sender is None else sender)
    return head + struct.pack("<I", zlib.crc32(head + payload)) + payload


def next_corr(count=1):
    """The first of `count` fresh, consecutive correlation ids (a batch needs one each)."""
    first = _corr[0]
    _corr[0] += count
    return first


def batch_body(bodies):
    """The body of a Batch frame (section 3): each message as u32 length, then its bytes."""
    return b"".join(struct.pack("<I", len(b)) + b for b in bodies)


def unbatch(frame):
    """A Batch frame's messages as the Send frames they stand for (message i has corr + i)."""
    bodies, at = [], 0
    for _ in range(frame.arg):
        if at + 4 > len(frame.body):
            break
        (length,) = struct.unpack_from("<I", frame.body, at)
        bodies.append(frame.body[at + 4:at + 4 + length])
        at += 4 + length
    if at != len(frame.body) or len(bodies) != frame.arg:
        raise ValueError("a batch whose messages do not fill its body exactly")
    return [Frame(frame.sender, SEND, frame.pid, frame.corr + i, 0, frame.name, body)
            for i, body in enumerate(bodies)]


class Decoder:
    """Cuts frames out of the byte stream; skips one byte at a time over damage."""

    def __init__(self, max_frame=1 << 20):
        self.buf = bytearray()
        self.max_frame = max_frame
        self.skipped = 0

    def feed(self, data):
        self.buf += data

    def frames(self):
        while len(self.buf) >= HEADER.size:
            length, sender, checksum = HEADER.unpack_from(self.buf)
            if length < MIN_FRAME or length > self.max_frame:
                del self.buf[0]
                self.skipped += 1
                continue
            if len(self.buf) < length:
                return
            if zlib.crc32(bytes(self.buf[0:8]) + bytes(self.buf[12:length])) != checksum:
                del self.buf[0]
                self.skipped += 1
                continue
            frame = bytes(self.buf[:length])
            del self.buf[:length]
            _, kind, name_len, pid, corr, arg = ENVELOPE.unpack_from(frame, HEADER.size)
            name = frame[MIN_FRAME:MIN_FRAME + name_len].decode()
            whole = Frame(sender, kind, pid, corr, arg, name, frame[MIN_FRAME + name_len:])
            if kind == BATCH:
                yield from unbatch(whole)
            else:
                yield whole


class Client:
    """One connection to the hub. Blocking; not thread-safe."""

    def __init__(self, sock):
        self.sock = sock
        self.decoder = Decoder()
        self.inbox = []

    @classmethod
    def connect(cls, path=None):
        path = path or os.environ["TROUPE_IPC_SOCKET"]
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.connect(path)
        return cls(sock)

    def close(self):
        self.sock.close()

    def write(self, frame):
        self.sock.sendall(frame)

    def _read(self, deadline):
        left = None if deadline is None else deadline - time.monotonic()
        if left is not None and left <= 0:
            raise TimeoutError("no frame from the hub in time")
        self.sock.settimeout(left)
        try:
            data = self.sock.recv(65536)
        except socket.timeout:
            raise TimeoutError("no frame from the hub in time") from None
        if not data:
            raise ConnectionError("the hub closed the connection")
        self.decoder.feed(data)

    def recv(self, timeout=None):
        """The next frame that is not an answer somebody waits for: (kind, Frame)."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while not self.inbox:
            self.inbox.extend(self.decoder.frames())
            if not self.inbox:
                self._read(deadline)
        frame = self.inbox.pop(0)
        return frame.kind, frame

    def call(self, frame, corr, timeout=10.0):
        """Writes `frame` and waits for the Ok, Reply or Error carrying `corr`."""
        self.write(frame)
        deadline = time.monotonic() + timeout
        while True:
            for i, f in enumerate(self.inbox):
                if f.corr == corr and f.kind in (OK, REPLY, ERROR):
                    del self.inbox[i]
                    if f.kind == ERROR:
                        raise HubError(f.arg, f.body.decode(errors="replace"))
                    return f
            self.inbox.extend(self.decoder.frames())
            if not any(f.corr == corr and f.kind in (OK, REPLY, ERROR) for f in self.inbox):
                self._read(deadline)

    # -- operations --

    def register(self, name=""):
        corr = next_corr()
        return self.call(encode(REGISTER, pid=os.getpid(), corr=corr, name=name), corr)

    def send(self, to, body):
        corr = next_corr()
        if isinstance(to, int):
            self.write(encode(SEND, pid=to, corr=corr, body=body))
        else:
            self.write(encode(SEND, corr=corr, name=to, body=body))
        return corr

    def send_batch(self, to, bodies):
        """Sends `bodies` to `to` in one Batch frame; returns the first message's corr."""
        corr = next_corr(len(bodies))
        pid, name = (to, "") if isinstance(to, int) else (0, to)
        self.write(encode(BATCH, pid=pid, corr=corr, arg=len(bodies), name=name,
                          body=batch_body(bodies)))
        return corr

    def request(self, to, body, timeout=5.0):
        corr = next_corr()
        ms = max(1, int(timeout * 1000))
        if isinstance(to, int):
            frame = encode(REQUEST, pid=to, corr=corr, arg=ms, body=body)
        else:
            frame = encode(REQUEST, corr=corr, arg=ms, name=to, body=body)
        return self.call(frame, corr, timeout + 2.0).body

    def reply(self, request, body=b""):
        self.write(encode(REPLY, pid=request.sender, corr=request.corr, body=body))

    def refuse(self, request, why):
        self.write(encode(ERROR, pid=request.sender, corr=request.corr, arg=REFUSED,
                          body=why.encode()))

    def stats(self):
        import json
        corr = next_corr()
        return json.loads(self.call(encode(STATS, corr=corr), corr).body)

    def attach(self, service):
        corr = next_corr()
        return self.call(encode(ATTACH, corr=corr, name=service), corr)

    def request_config(self):
        corr = next_corr()
        return self.call(encode(REQUEST_CONFIG, corr=corr), corr).body

    def metric(self, device, route_key, data):
        d, r = device.encode(), route_key.encode()
        body = struct.pack("<H", len(d)) + d + struct.pack("<H", len(r)) + r + data
        self.write(encode(METRIC, corr=next_corr(), body=body))

    def event(self, event_type, params):
        self.write(encode(EVENT, corr=next_corr(), arg=event_type, body=params))
