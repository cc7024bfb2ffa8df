"""Bursts of malformed input for every socket of a Troupe cluster, and the probes that check
each socket still serves afterwards. Used by the chaos soak (tests/soak/soak.py).

Every burst function takes a `random.Random` (so a seed replays it) and returns how many
malformed messages or connections it sent. Every probe returns None when the socket answered
as documented, else a sentence saying what went wrong. Nothing here waits without a limit.
"""

import json
import os
import socket
import struct
import sys
import time
import urllib.error
import urllib.request
import zlib

import zmq

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "python"))
import ipc_client  # noqa: E402
from beacon_client import Beacon  # noqa: E402

CTX = zmq.Context.instance()


def _rand_bytes(rng, low=0, high=200):
    return bytes(rng.getrandbits(8) for _ in range(rng.randint(low, high)))


def _host_port(endpoint):
    host, port = endpoint.replace("tcp://", "").rsplit(":", 1)
    return host, int(port)


def _raw_tcp(rng, host, port, payloads, read_for=0.2):
    """Opens one TCP connection per payload, writes it, reads briefly, closes."""
    sent = 0
    for payload in payloads:
        try:
            with socket.create_connection((host, port), timeout=2) as s:
                s.settimeout(read_for)
                s.sendall(payload)
                sent += 1
                try:
                    s.recv(65536)
                except OSError:
                    pass
        except OSError:
            pass
    return sent


def _zmtp_junk(rng):
    """Raw TCP payloads that are not ZMTP, or start like it and then go wrong."""
    greeting = b"\xff" + b"\x00" * 8 + b"\x7f" + b"\x03\x00" + b"NULL" + b"\x00" * 16
    return [
        _rand_bytes(rng, 1, 4096),
        greeting[:10] + _rand_bytes(rng, 1, 100),
        greeting + b"\x00" * 20 + _rand_bytes(rng, 1, 300),
        greeting + b"\x04\xff" + b"\xff" * 8,  # a command frame announcing an enormous size
        b"GET / HTTP/1.1\r\nHost: x\r\n\r\n",
    ]


def _zmq_burst(endpoint, messages, read_for=0.3):
    """Sends `messages` (lists of frames) on a fresh DEALER, reads what comes back for a
    moment, and closes it."""
    sock = CTX.socket(zmq.DEALER)
    sock.setsockopt(zmq.LINGER, 0)
    sock.setsockopt(zmq.SNDHWM, 100000)
    sock.connect(endpoint)
    sent = 0
    try:
        for frames in messages:
            try:
                sock.send_multipart(frames, zmq.NOBLOCK)
                sent += 1
            except zmq.Again:
                break
        deadline = time.monotonic() + read_for
        while time.monotonic() < deadline:
            if sock.poll(50, zmq.POLLIN):
                sock.recv_multipart()
    finally:
        sock.close(0)
    return sent


# -- beacon ---------------------------------------------------------------------------------

def beacon_burst(rng, endpoint):
    messages = []
    for i in range(rng.randint(40, 120)):
        choice = rng.randrange(8)
        if choice == 0:
            messages.append([_rand_bytes(rng)])
        elif choice == 1:
            messages.append([b"{not json %d" % i])
        elif choice == 2:
            messages.append([json.dumps({"v": 1, "op": rng.choice(
                ["register", "heartbeat", "lookup", "watch", "auth", "teleport"]),
                "id": i, "node": rng.choice([42, "a b", "", None])}).encode()])
        elif choice == 3:
            messages.append([json.dumps({"v": rng.choice([0, 2, 99, "1"]), "op": "list"}).encode()])
        elif choice == 4:
            messages.append([_rand_bytes(rng, 0, 50) for _ in range(rng.randint(2, 5))])
        elif choice == 5:
            messages.append([b""])
        elif choice == 6:
            messages.append([json.dumps({"v": 1, "op": "hello", "node": "x",
                                         "nonce": "zz"}).encode()])
        else:
            messages.append([json.dumps({"v": 1, "op": "lookup",
                                         "resource": "x" * rng.randint(1000, 100000)}).encode()])
    n = _zmq_burst(endpoint, messages)
    host, port = _host_port(endpoint)
    return n + _raw_tcp(rng, host, port, _zmtp_junk(rng))


def beacon_probe(endpoint, cookie, timeout=5.0):
    beacon = Beacon(endpoint, timeout_ms=int(timeout * 1000))
    try:
        beacon.open_session("soak-probe", cookie)
        pong = beacon.request("ping")
        if pong.get("op") != "pong":
            return f"ping answered {pong}"
        return None
    except Exception as err:  # noqa: BLE001 - any failure is the probe's answer
        return f"{type(err).__name__}: {err}"
    finally:
        beacon.close()


# -- broker ---------------------------------------------------------------------------------

def _not_a_worker_command(frames):
    """True unless `frames` could be read as a worker's READY, HEARTBEAT or STOP (a valid
    message that would register a fake worker, which is not malformed input)."""
    if not frames:
        return True
    if len(frames[0]) >= 1 and frames[0][0] in (1, 2) and len(frames) == 1:
        return False
    if frames[0] == b"" and len(frames) >= 2 and frames[1][:1] in (b"\x01", b"\x02", b"\x03"):
        return False
    if frames[0] == b"" and len(frames) >= 2 and frames[1] == b"MDPW01":
        return False
    return True


def broker_frontend_burst(rng, endpoint):
    messages = []
    for _ in range(rng.randint(40, 120)):
        choice = rng.randrange(5)
        if choice == 0:
            messages.append([_rand_bytes(rng, 1, 100)])  # no empty delimiter
        elif choice == 1:
            messages.append([b"soak-garbage", b""])  # nothing after the delimiter
        elif choice == 2:
            messages.append([b"g"] * 20 + [b"", b"x"])  # more than 16 routing frames
        elif choice == 3:
            messages.append([b"soak-garbage", b""] + [b"f"] * rng.randint(65, 100))  # >64 frames
        else:
            messages.append([_rand_bytes(rng, 1, 30) for _ in range(rng.randint(1, 6))])
    n = _zmq_burst(endpoint, messages)
    host, port = _host_port(endpoint)
    return n + _raw_tcp(rng, host, port, _zmtp_junk(rng))


def broker_backend_burst(rng, endpoint):
    messages = []
    count = rng.randint(40, 120)
    while len(messages) < count:
        choice = rng.randrange(5)
        if choice == 0:
            frames = [_rand_bytes(rng, 2, 100)]
        elif choice == 1:
            frames = [b"", bytes([rng.randint(4, 255)]) + _rand_bytes(rng, 0, 5)]
        elif choice == 2:
            # A reply for a request nobody gave this "worker".
            frames = [b"client-that-never-was", b"", b"reply"]
        elif choice == 3:
            frames = [b"", b"", b"", _rand_bytes(rng, 0, 20)]
        else:
            frames = [_rand_bytes(rng, 0, 30) for _ in range(rng.randint(1, 6))]
        if _not_a_worker_command(frames):
            messages.append(frames)
    n = _zmq_burst(endpoint, messages)
    host, port = _host_port(endpoint)
    return n + _raw_tcp(rng, host, port, _zmtp_junk(rng))


def majordomo_burst(rng, endpoint):
    messages = []
    for _ in range(rng.randint(40, 120)):
        choice = rng.randrange(7)
        if choice == 0:
            messages.append([b"", b"MDPC01"])  # no service
        elif choice == 1:
            messages.append([b"", b"MDPC01", b"bad service name", b"x"])
        elif choice == 2:
            messages.append([b"", b"MDPX99", b"echo", b"x"])
        elif choice == 3:
            # Worker commands from a worker the broker never saw: answered DISCONNECT.
            messages.append([b"", b"MDPW01", rng.choice([b"\x03", b"\x04", b"\x09", b""]),
                             b"nobody", b"", b"x"])
        elif choice == 4:
            messages.append([b"", b"MDPC01", b"mmi.nonsense", b"x"])
        elif choice == 5:
            messages.append([_rand_bytes(rng, 0, 40) for _ in range(rng.randint(1, 5))])
        else:
            messages.append([b"", b"MDPC01", b"echo"])  # a request without a body
    n = _zmq_burst(endpoint, messages)
    host, port = _host_port(endpoint)
    return n + _raw_tcp(rng, host, port, _zmtp_junk(rng))


def majordomo_probe(endpoint, timeout=5.0):
    """`mmi.service` for `echo`: the broker itself answers "200" or "404"."""
    sock = CTX.socket(zmq.DEALER)
    sock.setsockopt(zmq.LINGER, 0)
    sock.connect(endpoint)
    try:
        sock.send_multipart([b"", b"MDPC01", b"mmi.service", b"echo"])
        if not sock.poll(int(timeout * 1000), zmq.POLLIN):
            return f"no answer to mmi.service within {timeout}s"
        frames = sock.recv_multipart()
        if frames[:3] != [b"", b"MDPC01", b"mmi.service"] or frames[3:] not in ([b"200"], [b"404"]):
            return f"mmi.service answered {frames}"
        return None
    finally:
        sock.close(0)


def pirate_probe(endpoint, timeout=5.0):
    """One Paranoid Pirate request: any answer (reply or TROUPE-ERROR) within the timeout."""
    sock = CTX.socket(zmq.DEALER)
    sock.setsockopt(zmq.LINGER, 0)
    sock.connect(endpoint)
    try:
        sock.send_multipart([b"probe", b"", b"probe"])
        if not sock.poll(int(timeout * 1000), zmq.POLLIN):
            return f"no answer within {timeout}s"
        frames = sock.recv_multipart()
        if frames[:2] != [b"probe", b""]:
            return f"answered {frames}"
        return None
    finally:
        sock.close(0)


# -- ipc ------------------------------------------------------------------------------------

def _ipc_frame_bad_checksum(rng):
    frame = bytearray(ipc_client.encode(ipc_client.SEND, corr=1, name="soak-a", body=b"x"))
    frame[8:12] = struct.pack("<I", rng.getrandbits(32))
    return bytes(frame)


def _ipc_frame(length, pid, payload):
    head = struct.pack("<II", length, pid)
    return head + struct.pack("<I", zlib.crc32(head + payload)) + payload


def ipc_burst(rng, path):
    pid = os.getpid()
    payloads = [
        _rand_bytes(rng, 1, 4096),
        _ipc_frame_bad_checksum(rng) * rng.randint(1, 20),
        struct.pack("<III", 0xFFFFFFFF, pid, 0) + _rand_bytes(rng, 0, 100),
        struct.pack("<III", 31, pid, 0) + _rand_bytes(rng, 0, 100),
        # A valid header and checksum around an envelope of an unknown version and kind.
        _ipc_frame(12 + 20, pid, struct.pack("<BBHIQI", 9, 0x7F, 0, 0, 7, 0)),
        # name_len pointing past the end of the frame.
        _ipc_frame(12 + 20, pid, struct.pack("<BBHIQI", 1, 0x02, 500, 0, 8, 0)),
        # Register claiming another pid (PidMismatch, connection closed).
        ipc_client.encode(ipc_client.REGISTER, pid=1, corr=9),
        # Messages before registering (NotRegistered), then a batch whose body lies.
        ipc_client.encode(ipc_client.SEND, corr=10, name="soak-b", body=b"unregistered")
        + ipc_client.encode(ipc_client.REGISTER, pid=pid, corr=11)
        + ipc_client.encode(ipc_client.BATCH, corr=12, arg=5, name="nobody", body=b"\x01\x00"),
        # A frame announcing 900 KiB, of which only a little ever arrives.
        struct.pack("<III", 900 * 1024, pid, 0) + _rand_bytes(rng, 0, 1000),
    ]
    rng.shuffle(payloads)
    sent = 0
    for payload in payloads:
        try:
            with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
                s.settimeout(2)
                s.connect(path)
                s.sendall(payload)
                sent += 1
                s.settimeout(0.1)
                try:
                    s.recv(65536)
                except OSError:
                    pass
        except OSError:
            pass
    return sent


def ipc_probe(path, timeout=5.0):
    try:
        client = ipc_client.Client.connect(path)
    except OSError as err:
        return f"connect: {err}"
    try:
        client.sock.settimeout(timeout)
        corr = ipc_client.next_corr()
        client.call(ipc_client.encode(ipc_client.REGISTER, pid=os.getpid(), corr=corr),
                    corr, timeout=timeout)
        corr = ipc_client.next_corr()
        stats = json.loads(client.call(ipc_client.encode(ipc_client.STATS, corr=corr), corr,
                                       timeout=timeout).body)
        if not isinstance(stats, dict):
            return f"stats answered {stats!r}"
        return None
    except Exception as err:  # noqa: BLE001 - any failure is the probe's answer
        return f"{type(err).__name__}: {err}"
    finally:
        client.close()


# -- control HTTP ---------------------------------------------------------------------------

def http_burst(rng, host, port):
    junk_path = "/" + "".join(rng.choice("abc/%..?&=") for _ in range(rng.randint(1, 60)))
    payloads = [
        _rand_bytes(rng, 1, 2048),
        b"GET /v1/services HTTP/1.1\r\nHost: x\r\n\r\n",  # no token: 401
        b"POST /v1/services/echo/stop HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer wrong\r\n"
        b"Content-Length: 0\r\n\r\n",
        b"GET / HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * rng.randint(10000, 200000) + b"\r\n\r\n",
        ("GET %s HTTP/1.1\r\nHost: x\r\n\r\n" % junk_path).encode(),
        b"GET /../../etc/passwd HTTP/1.1\r\nHost: x\r\n\r\n",
        b"POST /v1/reload HTTP/1.1\r\nHost: x\r\nContent-Length: 99999999\r\n\r\nabc",
        b"POST /v1/services HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n",
        b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03" + _rand_bytes(rng, 32, 200),  # TLS hello
        b"GET /healthz HTTP/9.9\r\n\r\n",
        b"GET /\xff\xfe HTTP/1.1\r\nHost: x\r\n\r\n",
    ]
    rng.shuffle(payloads)
    return _raw_tcp(rng, host, port, payloads, read_for=0.3)


def http_probe(host, port, token, timeout=5.0):
    try:
        with urllib.request.urlopen(f"http://{host}:{port}/healthz", timeout=timeout) as r:
            if r.status != 200:
                return f"/healthz answered {r.status}"
        request = urllib.request.Request(f"http://{host}:{port}/v1/node",
                                         headers={"Authorization": f"Bearer {token}"})
        with urllib.request.urlopen(request, timeout=timeout) as r:
            body = json.loads(r.read())
            if r.status != 200 or "name" not in json.dumps(body):
                return f"/v1/node answered {r.status} {body}"
        return None
    except urllib.error.HTTPError as err:
        return f"HTTP {err.code}: {err.read()[:200]!r}"
    except Exception as err:  # noqa: BLE001 - any failure is the probe's answer
        return f"{type(err).__name__}: {err}"
