#!/usr/bin/env python3
"""The chaos soak: a real Troupe cluster on this machine, attacked for a while, then checked.

    soak.py --troupe target/release/troupe [--secs 600] [--seed N] [--keep]

The cluster, generated into a fresh temporary folder on free loopback ports: two beacons
(`beacon-1`, `beacon-2`), a broker node (`broker`), and two edge nodes (`edge-1`, `edge-2`:
ipc hub and supervisor, each with two supervised `troupe echo-worker`s that find the broker
through the beacons). Every node registers with both beacons with a shared cookie, and serves
its control API on a Unix socket and on a loopback TCP port with a token.

Against it, for `--secs` seconds:
- `load.py`: a pipelining Paranoid Pirate client and Majordomo clients calling `echo` at a
  steady rate, every request numbered;
- `ipc_pair.py` on each edge: two ipc clients sending each other numbered messages that are
  echoed back;
- chaos, one action at a time, in random order within blocks of five (two workers, the
  broker, a beacon, an edge): SIGKILL a supervised worker on either edge (its supervisor
  restarts it), or SIGKILL the broker node, `beacon-1` or `edge-1` (the driver restarts it
  after a random pause and waits for its `/readyz`). `beacon-2` and `edge-2` are never
  killed, so their memory and descriptors are watched over the whole run;
  between two actions, a burst of malformed input at every socket (beacon ROUTERs, broker
  frontend, backend and Majordomo, both ipc hubs, every control HTTP port), each socket then
  probed.

Then it stops the clients, stops every node (SIGTERM), and prints a markdown summary of the
checks (see docs/RELIABILITY.md, "Chaos soak"). Exit status: 0 every check passed, 1 a check
failed, 2 the cluster could not be set up. Every random choice comes from `--seed` (printed
at the start): the same seed replays the same actions, pauses and malformed inputs in the same
order (the timing of the processes is the machine's). Every wait has a deadline; everything
the driver starts is killed when it exits, however it exits.
"""

import argparse
import atexit
import ctypes
import json
import os
import random
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
import garbage  # noqa: E402

PR_SET_PDEATHSIG = 1
PR_SET_CHILD_SUBREAPER = 36
LIBC = ctypes.CDLL(None, use_errno=True)

# Timing of the cluster: heartbeats and the broker's bounds.
BEAT = "500ms"
REQUEST_TIMEOUT = "3s"
MAILBOX_TTL_S = 5
MAILBOX_TTL = f"{MAILBOX_TTL_S}s"
# Each echo takes this long in the workers, so that a killed worker holds requests.
WORK = "50ms"
# How long a request may take to be answered by a broker that stays alive: the queue wait
# (request_timeout), then a worker lost at the last moment (liveness x the worker's learned
# heartbeat, at least 3 x 0.5 s), with room for a loaded 2-core machine.
ANSWER_BOUND = 15.0
# After a node stops (SIGKILL or SIGTERM), how long its processes may outlive it.
CONTAIN_BOUND = 5.0
# A worker SIGKILLed is running again (new pid) within this.
RESTART_BOUND = 10.0
START_BOUND = 60.0
PROBE_TIMEOUT = 5.0


def log(*parts):
    print(time.strftime("%H:%M:%S"), *parts, file=sys.stderr, flush=True)


# -- processes --------------------------------------------------------------------------------

def proc_stat(pid):
    """(state, start time in ticks, ppid) of a process, or None when it does not exist."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            data = f.read().decode(errors="replace")
    except OSError:
        return None
    rest = data[data.rindex(")") + 2:].split()
    return rest[0], int(rest[19]), int(rest[1])


def proc_key(pid):
    stat = proc_stat(pid)
    return None if stat is None else (pid, stat[1])


def alive(key):
    """Whether the process `key` (pid, start time) still runs (a zombie does not)."""
    stat = proc_stat(key[0])
    return stat is not None and stat[1] == key[1] and stat[0] not in ("Z", "X")


def cmdline(pid):
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return f.read().replace(b"\0", b" ").decode(errors="replace").strip()
    except OSError:
        return "?"


def mentions(pid, token):
    """Whether a process's command line or environment contains `token`."""
    for name in ("cmdline", "environ"):
        try:
            with open(f"/proc/{pid}/{name}", "rb") as f:
                if token.encode() in f.read():
                    return True
        except OSError:
            pass
    return False


def all_pids():
    return [int(p) for p in os.listdir("/proc") if p.isdigit()]


def descendants(root):
    children = {}
    for pid in all_pids():
        stat = proc_stat(pid)
        if stat is not None:
            children.setdefault(stat[2], []).append(pid)
    found, todo = [], [root]
    while todo:
        for child in children.get(todo.pop(), []):
            found.append(child)
            todo.append(child)
    return found


def reap_orphans(me, ours):
    """Reaps the zombies re-parented to this driver (a child subreaper) that it did not
    start itself (those are waited for by their Popen)."""
    for pid in all_pids():
        stat = proc_stat(pid)
        if stat and stat[2] == me and stat[0] == "Z" and pid not in ours:
            try:
                os.waitpid(pid, os.WNOHANG)
            except ChildProcessError:
                pass


def free_ports(count, rng_seed):
    """Loopback ports below the ephemeral range that were free a moment ago."""
    ports, start = [], 20000 + (os.getpid() * 7919 + rng_seed) % 12000
    for step in range(12000):
        port = 20000 + (start + step) % 12000
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
        ports.append(port)
        if len(ports) == count:
            return ports
    raise RuntimeError("not enough free ports")


def child_setup():
    """In a started process: its own session, and SIGKILL when the driver dies."""
    LIBC.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)


# -- the cluster --------------------------------------------------------------------------------

class Node:
    """One `troupe run` and its folder, config, ports and logs."""

    def __init__(self, soak, name, kind, config, http_port):
        self.soak, self.name, self.kind = soak, name, kind
        self.dir = os.path.join(soak.root, name)
        os.makedirs(self.dir, mode=0o700, exist_ok=True)
        self.config = os.path.join(self.dir, "node.toml")
        self.http_port = http_port
        self.proc = None
        self.incarnation = 0
        self.down_since = None
        with open(self.config, "w") as f:
            f.write(config)

    def start(self):
        self.incarnation += 1
        out = open(os.path.join(self.dir, f"log.{self.incarnation}"), "wb")
        self.proc = subprocess.Popen(
            [self.soak.troupe, "run", "--config", self.config],
            stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
            env=self.soak.node_env, start_new_session=True, preexec_fn=child_setup)
        out.close()

    def running(self):
        return self.proc is not None and self.proc.poll() is None

    def http(self, path, timeout=5.0):
        """GET path with the token; (status, decoded JSON or text)."""
        request = urllib.request.Request(
            f"http://127.0.0.1:{self.http_port}{path}",
            headers={"Authorization": f"Bearer {self.soak.token}"})
        try:
            with urllib.request.urlopen(request, timeout=timeout) as r:
                body = r.read()
                status = r.status
        except urllib.error.HTTPError as err:
            body, status = err.read(), err.code
        try:
            return status, json.loads(body)
        except ValueError:
            return status, body.decode(errors="replace")

    def wait_ready(self, bound=START_BOUND):
        deadline = time.monotonic() + bound
        last = None
        while time.monotonic() < deadline:
            if not self.running():
                raise SetupError(f"{self.name} exited with {self.proc.returncode} while "
                                 f"starting; see {self.dir}/log.{self.incarnation}")
            try:
                status, body = self.http("/readyz", timeout=2)
                if status == 200:
                    return
                last = body
            except OSError as err:
                last = err
            time.sleep(0.05)
        raise SetupError(f"{self.name} not ready within {bound}s: {last}")

    def services(self):
        """{service id: pid} of its supervised services that run now."""
        if self.kind != "edge":
            return {}
        status, body = self.http("/v1/services")
        if status != 200:
            raise RuntimeError(f"{self.name}: GET /v1/services answered {status}: {body}")
        return {s["id"]: s["pid"] for s in body["services"] if s.get("pid")}

    def rss_fds(self):
        pid = self.proc.pid
        try:
            with open(f"/proc/{pid}/status") as f:
                rss = next(int(line.split()[1]) for line in f if line.startswith("VmRSS:"))
            fds = len(os.listdir(f"/proc/{pid}/fd"))
            return rss, fds
        except (OSError, StopIteration):
            return None


class SetupError(Exception):
    """The cluster could not be set up: not a finding about Troupe's behaviour under chaos."""


class Soak:
    def __init__(self, args):
        self.args = args
        self.troupe = os.path.abspath(args.troupe)
        self.rng = random.Random(args.seed)
        self.run_id = "%06x" % random.SystemRandom().getrandbits(24)
        self.root = tempfile.mkdtemp(prefix=f"troupe-soak-{self.run_id}-")
        self.token = "soak-%x" % random.SystemRandom().getrandbits(64)
        self.node_env = {k: v for k, v in os.environ.items()
                         if not k.startswith("TROUPE_") and k not in
                         ("RUST_LOG", "NOTIFY_SOCKET", "WATCHDOG_USEC", "WATCHDOG_PID")}
        self.node_env["SOAK_RUN"] = self.run_id
        self.nodes = {}
        self.helpers = []
        self.problems = {}  # check -> [sentences]
        self.samples = {}  # node -> [(t, incarnation, rss_kb, fds)]
        self.broker_down = []  # [t_killed, t_ready]
        self.kills = {"worker": 0, "broker": 0, "beacon": 0, "edge": 0}
        self.contain = {"node_kills": 0, "stops": 0, "pids_checked": 0, "max_gone_s": 0.0,
                        "worker_kills": 0, "max_restart_s": 0.0, "stops_ok": 0,
                        "max_ready_s": 0.0, "unasked_exits": 0}
        self.bursts = {"rounds": 0, "sockets": 0, "messages": 0, "probes": 0}
        self.stop_sampling = threading.Event()
        self.lock = threading.Lock()

    def problem(self, check, sentence):
        log(f"PROBLEM [{check}] {sentence}")
        with self.lock:
            self.problems.setdefault(check, []).append(sentence)

    # -- set-up ---------------------------------------------------------------------------

    def write_files(self):
        self.cookie = os.path.join(self.root, "cookie")
        with open(self.cookie, "w") as f:
            f.write("soak-cookie-%x\n" % self.rng.getrandbits(128))
        os.chmod(self.cookie, 0o600)
        self.token_file = os.path.join(self.root, "token")
        with open(self.token_file, "w") as f:
            f.write(self.token + "\n")
        os.chmod(self.token_file, 0o600)

    def build(self):
        self.write_files()
        names = ["beacon-1", "beacon-2", "broker", "edge-1", "edge-2"]
        ports = free_ports(5 + 2 + 3, self.args.seed)
        http = dict(zip(names, ports[:5]))
        self.beacon_eps = [f"tcp://127.0.0.1:{p}" for p in ports[5:7]]
        self.frontend, self.backend, self.majordomo = (f"tcp://127.0.0.1:{p}" for p in ports[7:10])
        beacons = json.dumps(self.beacon_eps)

        def head(name, roles):
            d = os.path.join(self.root, f"soak-{self.run_id}-{name}")
            return d, (
                f'name = "soak-{self.run_id}-{name}"\nroles = {json.dumps(roles)}\n'
                f'shutdown_timeout = "10s"\n\n[control]\nsocket = "{d}/ctl.sock"\n'
                f'bind = "127.0.0.1:{http[name]}"\ntoken_file = "{self.token_file}"\n\n'
                f'[cluster]\nbeacons = {beacons}\ncookie_file = "{self.cookie}"\n'
                f'heartbeat_interval = "{BEAT}"\n\n')

        configs = {}
        for i, name in enumerate(["beacon-1", "beacon-2"]):
            d, text = head(name, ["beacon"])
            port = self.beacon_eps[i].rsplit(":", 1)[1]
            configs[name] = text + (f'[beacon]\nbind = "tcp://127.0.0.1:{port}"\n'
                                    f'snapshot_file = "{d}/beacon.json"\n')
        d, text = head("broker", ["broker"])
        configs["broker"] = text + (
            f'[broker]\nservice = "echo"\nfrontend = "{self.frontend}"\n'
            f'backend = "{self.backend}"\nheartbeat_interval = "{BEAT}"\nliveness = 3\n'
            f'request_timeout = "{REQUEST_TIMEOUT}"\ndrain_timeout = "2s"\n\n'
            f'[broker.majordomo]\nbind = "{self.majordomo}"\n')
        for name in ["edge-1", "edge-2"]:
            d, text = head(name, ["ipc", "supervisor"])
            workers = ""
            for wid in ["echo-a", "echo-b"]:
                workers += (
                    f'\n[[supervisor.services]]\nid = "{wid}"\ncommand = "${{TROUPE_EXE}}"\n'
                    f'args = ["echo-worker", "--service", "echo", "--concurrency", "4", '
                    f'"--heartbeat-interval", "{BEAT}", "--delay", "{WORK}"]\nrequires = ["broker"]\n'
                    f'on_requirement_change = "ignore"\n'
                    f'plan = [{{ restart_backoff = {{ initial_ms = 100, factor = 2.0, '
                    f'max_ms = 1000 }} }}]\ncount = "infinity"\nterminate_timeout_ms = 3000\n')
            configs[name] = text + (
                f'[ipc]\nsocket = "{d}/ipc.sock"\nmailbox_ttl = "{MAILBOX_TTL}"\n\n'
                f'[supervisor]\nstate_dir = "{d}/state"\n' + workers)
        for name in names:
            node = Node(self, f"soak-{self.run_id}-{name}", name.split("-")[0], configs[name],
                        http[name])
            node.short = name
            self.nodes[name] = node
        for name, node in self.nodes.items():
            out = subprocess.run([self.troupe, "check-config", "--config", node.config],
                                 env=self.node_env, capture_output=True, timeout=60)
            if out.returncode != 0:
                raise SetupError(f"check-config refused {name}'s config: "
                                 f"{out.stderr.decode(errors='replace')}")
        self.ipc_sockets = {n: os.path.join(self.nodes[n].dir, "ipc.sock")
                            for n in ("edge-1", "edge-2")}

    def start_cluster(self):
        for name in ["beacon-1", "beacon-2"]:
            self.nodes[name].start()
        for name in ["beacon-1", "beacon-2"]:
            self.nodes[name].wait_ready()
        for name in ["broker", "edge-1", "edge-2"]:
            self.nodes[name].start()
        for name in ["broker", "edge-1", "edge-2"]:
            self.nodes[name].wait_ready()
        # Every worker has joined the broker: 4 workers on `echo`.
        deadline = time.monotonic() + START_BOUND
        while True:
            status, body = self.nodes["broker"].http("/v1/broker")
            if status == 200:
                echo = [s for s in body["services"] if s["name"] == "echo"]
                if echo and echo[0]["workers"] >= 4:
                    break
            if time.monotonic() > deadline:
                raise SetupError(f"the 4 workers did not join the broker within "
                                 f"{START_BOUND}s: {body}")
            time.sleep(0.1)

    def start_helper(self, name, argv):
        proc = subprocess.Popen([sys.executable, *argv], stdin=subprocess.PIPE,
                                stdout=subprocess.PIPE, stderr=open(
                                    os.path.join(self.root, f"{name}.stderr"), "wb"),
                                start_new_session=True, preexec_fn=child_setup)
        helper = {"name": name, "proc": proc, "lines": [], "event": threading.Event()}

        def reader():
            for line in proc.stdout:
                text = line.decode(errors="replace").rstrip("\n")
                helper["lines"].append(text)
                helper["event"].set()

        threading.Thread(target=reader, daemon=True).start()
        self.helpers.append(helper)
        return helper

    def wait_line(self, helper, prefix, bound):
        deadline = time.monotonic() + bound
        while time.monotonic() < deadline:
            if any(line.startswith(prefix) for line in helper["lines"]):
                return next(line for line in helper["lines"] if line.startswith(prefix))
            if helper["proc"].poll() is not None and not helper["event"].is_set():
                break
            helper["event"].wait(0.2)
            helper["event"].clear()
        raise SetupError(f"{helper['name']} printed no '{prefix}' within {bound}s "
                         f"(exit {helper['proc'].poll()}): {helper['lines'][-5:]}")

    def start_load(self):
        self.load = self.start_helper("load", [
            os.path.join(HERE, "load.py"), "--frontend", self.frontend,
            "--majordomo", self.majordomo, "--bound", str(ANSWER_BOUND)])
        self.pairs = {edge: self.start_helper(f"ipc-{edge}", [
            os.path.join(HERE, "ipc_pair.py"), "--socket", path,
            "--drain", str(MAILBOX_TTL_S + 10)]) for edge, path in self.ipc_sockets.items()}
        self.wait_line(self.load, "first-answer", START_BOUND)
        for pair in self.pairs.values():
            self.wait_line(pair, "ready", START_BOUND)

    # -- sampling ---------------------------------------------------------------------------

    def sampler(self):
        me = os.getpid()
        while not self.stop_sampling.wait(1.0):
            now = time.monotonic()
            for name, node in list(self.nodes.items()):
                if node.running():
                    got = node.rss_fds()
                    if got is not None:
                        self.samples.setdefault(name, []).append(
                            (now, node.incarnation, got[0], got[1]))
            reap_orphans(me, {n.proc.pid for n in self.nodes.values() if n.proc} | {
                h["proc"].pid for h in self.helpers})

    # -- chaos ------------------------------------------------------------------------------

    def node_processes(self, node):
        """Every process a node runs: its services' pids from the control API and every
        descendant of the node's process (the guard, services, their children)."""
        keys = {}
        try:
            for sid, pid in node.services().items():
                key = proc_key(pid)
                if key:
                    keys[key] = f"service {sid} pid {pid}"
        except (OSError, RuntimeError) as err:
            self.problem("containment", f"{node.short}: could not list its services: {err}")
        for pid in descendants(node.proc.pid):
            key = proc_key(pid)
            if key and key not in keys:
                keys[key] = f"pid {pid} ({cmdline(pid)[:80]})"
        return keys

    def check_gone(self, node, keys, how):
        """After `node` exited: every process in `keys`, and every process that mentions the
        node's name, is gone within CONTAIN_BOUND."""
        since = time.monotonic()
        deadline = since + CONTAIN_BOUND
        left = dict(keys)
        while left and time.monotonic() < deadline:
            left = {k: v for k, v in left.items() if alive(k)}
            if left:
                time.sleep(0.02)
        took = time.monotonic() - since
        self.contain["pids_checked"] += len(keys)
        self.contain["max_gone_s"] = max(self.contain["max_gone_s"], took)
        for what in left.values():
            self.problem("containment", f"{node.short} ({how}): {what} still runs "
                         f"{CONTAIN_BOUND}s after the node exited")
        helpers = {h["proc"].pid for h in self.helpers} | {os.getpid()}
        for pid in all_pids():
            if pid in helpers:
                continue
            stat = proc_stat(pid)
            if stat and stat[0] not in ("Z", "X") and proc_key(pid) not in keys and (
                    node.name in cmdline(pid) or mentions(pid, node.dir + "/")):
                self.problem("containment", f"{node.short} ({how}): pid {pid} "
                             f"({cmdline(pid)[:100]}) of that node still runs")

    def kill_node(self, short):
        node = self.nodes[short]
        keys = self.node_processes(node)
        t_kill = time.monotonic()
        os.kill(node.proc.pid, signal.SIGKILL)
        node.proc.wait(timeout=30)
        self.contain["node_kills"] += 1
        self.check_gone(node, keys, "SIGKILL")
        pause = self.rng.uniform(0.2, 2.0)
        time.sleep(pause)  # pacing: how long the node stays down
        self.restart(node)
        if short == "broker":
            self.broker_down.append([t_kill, time.monotonic()])
        log(f"killed {short} ({len(keys)} processes), restarted after {pause:.1f}s")

    def restart(self, node):
        """Starts a node again and waits for its /readyz; one that does not come back is a
        finding, and is tried again (the run goes on)."""
        for attempt in (1, 2):
            if attempt == 2 and node.running():
                os.killpg(node.proc.pid, signal.SIGKILL)
                node.proc.wait(timeout=30)
            node.start()
            since = time.monotonic()
            try:
                node.wait_ready()
                self.contain["max_ready_s"] = max(self.contain["max_ready_s"],
                                                  time.monotonic() - since)
                return
            except SetupError as err:
                self.problem("restarts", f"{node.short}: start {node.incarnation}: {err}")
        raise SetupError(f"{node.short} did not come back after two starts")

    def services_or_problem(self, edge):
        try:
            return edge.services()
        except (OSError, RuntimeError) as err:
            self.problem("restarts", f"{edge.short}: GET /v1/services failed: {err}")
            return {}

    def kill_worker(self):
        edge = self.nodes[self.rng.choice(["edge-1", "edge-2"])]
        sid = self.rng.choice(["echo-a", "echo-b"])
        deadline = time.monotonic() + RESTART_BOUND
        pid = None
        while pid is None and time.monotonic() < deadline:
            pid = self.services_or_problem(edge).get(sid)
            if pid is None:
                time.sleep(0.05)
        if pid is None:
            self.problem("restarts", f"{edge.short}/{sid}: no pid to kill within "
                         f"{RESTART_BOUND}s")
            return
        key = proc_key(pid)
        t_kill = time.monotonic()
        os.kill(pid, signal.SIGKILL)
        self.contain["worker_kills"] += 1
        while time.monotonic() < t_kill + RESTART_BOUND:
            new = self.services_or_problem(edge).get(sid)
            if new is not None and new != pid and (key is None or not alive(key)):
                took = time.monotonic() - t_kill
                self.contain["max_restart_s"] = max(self.contain["max_restart_s"], took)
                log(f"killed worker {edge.short}/{sid} pid {pid}; pid {new} after {took:.2f}s")
                return
            time.sleep(0.02)
        self.problem("restarts", f"{edge.short}/{sid}: pid {pid} SIGKILLed, not running "
                     f"again (new pid) within {RESTART_BOUND}s")

    def chaos_action(self, kind):
        self.kills[kind] += 1
        if kind == "worker":
            self.kill_worker()
        elif kind == "broker":
            self.kill_node("broker")
        elif kind == "beacon":
            self.kill_node("beacon-1")
        else:
            self.kill_node("edge-1")

    def check_nodes_alive(self):
        """A node the driver did not kill must still run; one that exited is a finding (and
        is started again, so that the run goes on)."""
        for short, node in self.nodes.items():
            if not node.running():
                self.contain["unasked_exits"] += 1
                self.problem("restarts", f"{short} exited by itself with status "
                             f"{node.proc.returncode}; see {node.dir}/log.{node.incarnation}")
                self.restart(node)

    def burst_round(self):
        rng = self.rng
        targets = []
        for i, ep in enumerate(self.beacon_eps):
            targets.append((f"beacon-{i + 1} ROUTER", lambda ep=ep: garbage.beacon_burst(rng, ep),
                            lambda ep=ep: garbage.beacon_probe(ep, self.cookie_bytes(),
                                                               PROBE_TIMEOUT)))
        targets.append(("broker frontend", lambda: garbage.broker_frontend_burst(
            rng, self.frontend), lambda: garbage.pirate_probe(self.frontend, ANSWER_BOUND)))
        targets.append(("broker backend", lambda: garbage.broker_backend_burst(
            rng, self.backend), lambda: garbage.pirate_probe(self.frontend, ANSWER_BOUND)))
        targets.append(("broker majordomo", lambda: garbage.majordomo_burst(
            rng, self.majordomo), lambda: garbage.majordomo_probe(self.majordomo,
                                                                  PROBE_TIMEOUT)))
        for edge, path in self.ipc_sockets.items():
            targets.append((f"{edge} ipc", lambda p=path: garbage.ipc_burst(rng, p),
                            lambda p=path: garbage.ipc_probe(p, PROBE_TIMEOUT)))
        for short, node in self.nodes.items():
            targets.append((f"{short} control HTTP",
                            lambda n=node: garbage.http_burst(rng, "127.0.0.1", n.http_port),
                            lambda n=node: garbage.http_probe("127.0.0.1", n.http_port,
                                                              self.token, PROBE_TIMEOUT)))
        rng.shuffle(targets)
        self.bursts["rounds"] += 1
        for what, burst, probe in targets:
            self.bursts["messages"] += burst()
            self.bursts["sockets"] += 1
            self.bursts["probes"] += 1
            trouble = probe()
            if trouble is not None:
                self.problem("malformed input", f"{what}: after a burst: {trouble}")

    def cookie_bytes(self):
        with open(self.cookie, "rb") as f:
            return f.read().strip()

    def chaos(self):
        end = time.monotonic() + self.args.secs
        block = []
        while True:
            pause = self.rng.uniform(0.5 * self.args.interval, 1.5 * self.args.interval)
            if time.monotonic() + pause >= end:
                break
            time.sleep(pause)  # pacing of the chaos schedule
            if not block:
                block = ["worker", "worker", "broker", "beacon", "edge"]
                self.rng.shuffle(block)
            self.check_nodes_alive()
            self.chaos_action(block.pop())
            if time.monotonic() >= end:
                break
            self.burst_round()
        left = end - time.monotonic()
        if left > 0:
            time.sleep(left)  # pacing: the load runs for the whole --secs
        self.check_nodes_alive()

    # -- the end ----------------------------------------------------------------------------

    def stop_helpers(self):
        results = {}
        for helper in self.helpers:
            try:
                helper["proc"].stdin.close()
            except OSError:
                pass
        for helper in self.helpers:
            try:
                helper["proc"].wait(timeout=ANSWER_BOUND + 30)
            except subprocess.TimeoutExpired:
                helper["proc"].kill()
                helper["proc"].wait()
            line = next((x for x in helper["lines"] if x.startswith("RESULT ")), None)
            if line is None:
                raise SetupError(f"{helper['name']} gave no result (exit "
                                 f"{helper['proc'].returncode}); see {self.root}")
            results[helper["name"]] = json.loads(line[len("RESULT "):])
        return results

    def stop_nodes(self):
        order = ["edge-1", "edge-2", "broker", "beacon-1", "beacon-2"]
        for short in order:
            node = self.nodes[short]
            keys = self.node_processes(node)
            node.proc.send_signal(signal.SIGTERM)
            try:
                code = node.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                node.proc.kill()
                node.proc.wait()
                code = "none within 30s"
            if code != 0:
                self.problem("containment", f"{short}: SIGTERM: exit status {code}, not 0")
            else:
                self.contain["stops_ok"] += 1
            self.contain["stops"] += 1
            self.check_gone(node, keys, "SIGTERM")

    def leftovers(self):
        """Processes of this run (their command line or environment names it) still running."""
        me = os.getpid()
        found = []
        for pid in all_pids():
            if pid == me:
                continue
            stat = proc_stat(pid)
            if stat and stat[0] not in ("Z", "X") and (
                    mentions(pid, self.root) or mentions(pid, f"SOAK_RUN={self.run_id}")
                    or mentions(pid, f"soak-{self.run_id}-")):
                found.append(pid)
        return found

    def cleanup(self):
        """Kills whatever is left (on any exit). Safe to call twice."""
        for helper in self.helpers:
            if helper["proc"].poll() is None:
                helper["proc"].kill()
        for node in self.nodes.values():
            if node.running():
                try:
                    os.killpg(node.proc.pid, signal.SIGKILL)
                except OSError:
                    pass
                node.proc.wait()
        deadline = time.monotonic() + CONTAIN_BOUND
        while time.monotonic() < deadline:
            left = self.leftovers()
            if not left:
                break
            for pid in left:
                try:
                    os.kill(pid, signal.SIGKILL)
                except OSError:
                    pass
            time.sleep(0.05)
        reap_orphans(os.getpid(), set())


# -- the checks and the summary -------------------------------------------------------------------

def overlaps_outage(t_sent, outages):
    """Whether the broker was killed, or down, between sending and the answer's deadline."""
    return any(kill <= t_sent + ANSWER_BOUND and ready >= t_sent for kill, ready in outages)


def judge_requests(soak, load):
    rows = []
    for proto, key in (("Paranoid Pirate", "pp"), ("Majordomo", "mdp")):
        r = load[key]
        lost = [u for u in r["unanswered"] if overlaps_outage(u[1], soak.broker_down)]
        unanswered = [u for u in r["unanswered"] if not overlaps_outage(u[1], soak.broker_down)]
        late = [x for x in r["late"] if not overlaps_outage(x[1], soak.broker_down)]
        late_lost = len(r["late"]) - len(late)
        for what, items in (("duplicate answers", r["duplicates"]),
                            ("answers to no request sent", r["unknown"]),
                            ("wrong echoes", r["wrong"]),
                            ("unanswered with the broker alive", unanswered),
                            (f"answered after {ANSWER_BOUND}s with the broker alive", late)):
            if items:
                soak.problem("requests", f"{proto}: {len(items)} {what}: {items[:5]}")
        errors = ", ".join(f"{c}: {n}" for c, n in sorted(r["errors"].items())) or "none"
        rows.append((proto, r, len(lost), len(unanswered), len(late), late_lost, errors))
    return rows


def judge_ipc(soak, results):
    rows = []
    for edge in ("edge-1", "edge-2"):
        for side in results[f"ipc-{edge}"]["sides"]:
            who = f"{edge} {side['name']}"
            if side["duplicated"]:
                soak.problem("ipc", f"{who}: {len(side['duplicated'])} messages echoed more "
                             f"than once: {side['duplicated'][:10]}")
            if side["lost"]:
                soak.problem("ipc", f"{who}: {len(side['lost'])} messages neither echoed nor "
                             f"reported failed, their connection open: {side['lost'][:10]}")
            if side["absent_echoed"]:
                soak.problem("ipc", f"{who}: messages to a name nobody registered were echoed: "
                             f"{side['absent_echoed'][:10]}")
            if side["unknown_echo_count"]:
                soak.problem("ipc", f"{who}: {side['unknown_echo_count']} echoes of messages "
                             f"never sent: {side['unknown_echoes'][:10]}")
            rows.append((who, side))
    return rows


def growth(values):
    third = len(values) // 3
    return statistics.median(values[:third]), statistics.median(values[-third:])


def judge_resources(soak):
    rows = []
    cap_rss, cap_fds = soak.args.max_rss_mib * 1024, soak.args.max_fds
    for short, node in soak.nodes.items():
        samples = soak.samples.get(short, [])
        if not samples:
            soak.problem("resources", f"{short}: no samples")
            continue
        max_rss = max(s[2] for s in samples)
        max_fds = max(s[3] for s in samples)
        if max_rss > cap_rss:
            soak.problem("resources", f"{short}: RSS {max_rss // 1024} MiB over the cap "
                         f"{cap_rss // 1024} MiB")
        if max_fds > cap_fds:
            soak.problem("resources", f"{short}: {max_fds} fds over the cap {cap_fds}")
        # Growth is judged within the longest-lived incarnation (a restart resets both).
        by_inc = {}
        for s in samples:
            by_inc.setdefault(s[1], []).append(s)
        longest = max(by_inc.values(), key=len)
        trend = "too short"
        if len(longest) >= 12:
            rss_a, rss_b = growth([s[2] for s in longest])
            fds_a, fds_b = growth([s[3] for s in longest])
            trend = (f"RSS {rss_a / 1024:.1f} → {rss_b / 1024:.1f} MiB, "
                     f"fds {fds_a:.0f} → {fds_b:.0f}")
            if rss_b > 1.5 * rss_a + soak.args.rss_slack_mib * 1024:
                soak.problem("resources", f"{short}: RSS grew: median {rss_a / 1024:.1f} MiB "
                             f"in the first third, {rss_b / 1024:.1f} MiB in the last")
            if fds_b > 1.5 * fds_a + soak.args.fd_slack:
                soak.problem("resources", f"{short}: fds grew: median {fds_a:.0f} in the "
                             f"first third, {fds_b:.0f} in the last")
        span = longest[-1][0] - longest[0][0]
        rows.append((short, len(samples), node.incarnation, max_rss, max_fds, len(longest),
                     span, trend))
    return rows


def verdict(soak, check):
    return "**FAIL**" if soak.problems.get(check) else "pass"


def summary(soak, started, load, ipc_rows, req_rows, res_rows, leftover):
    a = soak.args
    out = []
    out.append(f"## Chaos soak: seed {a.seed}, {a.secs:.0f} s of load and chaos "
               f"({time.monotonic() - started:.0f} s in all)")
    out.append("")
    out.append(f"Binary: `{soak.troupe}`. Chaos: {soak.kills['worker']} worker, "
               f"{soak.kills['broker']} broker, {soak.kills['beacon']} beacon and "
               f"{soak.kills['edge']} edge SIGKILLs; {soak.bursts['rounds']} rounds of "
               f"malformed input ({soak.bursts['sockets']} socket bursts, "
               f"{soak.bursts['messages']} malformed messages or connections).")
    out.append("")
    out.append("| check | result | details |")
    out.append("|---|---|---|")
    total = sum(r[1]["sent"] for r in req_rows)
    details = []
    for proto, r, lost, unanswered, late, late_lost, errors in req_rows:
        details.append(
            f"{proto}: {r['sent']} sent, {r['replies']} replies, "
            f"{sum(r['errors'].values())} error replies ({errors}), {lost} broker lost, "
            f"{len(r['duplicates'])} duplicate, {len(r['unknown'])} unknown, "
            f"{len(r['wrong'])} wrong, {unanswered} unanswered, {late} late; "
            f"latency p50 {fmt_s(r['latency_p50'])}, p99 {fmt_s(r['latency_p99'])}, "
            f"max {fmt_s(r['latency_max'])}")
    out.append(f"| every request gets exactly one answer | {verdict(soak, 'requests')} | "
               f"{total} requests. " + "; ".join(details) + " |")
    sent = sum(s["sent"] for _, s in ipc_rows)
    once = sum(s["echoed_once"] for _, s in ipc_rows)
    told_e = sum(s["told_error"] for _, s in ipc_rows)
    told_c = sum(s["told_closed"] for _, s in ipc_rows)
    dup = sum(len(s["duplicated"]) for _, s in ipc_rows)
    lost = sum(len(s["lost"]) for _, s in ipc_rows)
    names = {}
    for _, s in ipc_rows:
        for k, v in s["error_names"].items():
            names[k] = names.get(k, 0) + v
    both = sum(len(s["echoed_and_error"]) for _, s in ipc_rows)
    out.append(f"| no ipc message lost or duplicated untold | {verdict(soak, 'ipc')} | "
               f"{sent} messages: {once} echoed exactly once, {told_e} reported failed "
               f"({', '.join(f'{k}: {v}' for k, v in sorted(names.items())) or 'none'}), "
               f"{told_c} sender saw its connection close, {dup} duplicated, {lost} lost; "
               f"{both} echoed yet also reported failed; of these, "
               f"{sum(s['to_absent'] for _, s in ipc_rows)} were sent to a name nobody "
               f"registers, {sum(s['absent_expired'] for _, s in ipc_rows)} of them reported "
               f"Expired; "
               f"{sum(s['connects'] for _, s in ipc_rows)} connections opened |")
    c = soak.contain
    out.append(f"| no process outlives its service | {verdict(soak, 'containment')} | "
               f"{c['node_kills']} node SIGKILLs and {c['stops']} SIGTERM stops: "
               f"{c['pids_checked']} processes checked, the last gone "
               f"{c['max_gone_s']:.2f} s after its node (bound {CONTAIN_BOUND:.0f} s); "
               f"{c['stops_ok']} of {c['stops']} SIGTERM stops exited 0; "
               f"{len(leftover)} processes of the run left at the end |")
    out.append(f"| killed processes come back | {verdict(soak, 'restarts')} | "
               f"{c['node_kills']} SIGKILLed nodes started again (bound for `/readyz`: "
               f"{START_BOUND:.0f} s), the slowest ready after {c['max_ready_s']:.2f} s; "
               f"{c['worker_kills']} SIGKILLed workers, the slowest running again (new pid) "
               f"after {c['max_restart_s']:.2f} s (bound {RESTART_BOUND:.0f} s); "
               f"{c['unasked_exits']} nodes exited unasked |")
    res = "; ".join(f"{short}: max {rss / 1024:.0f} MiB, {fds} fds" for
                    short, _, _, rss, fds, _, _, _ in res_rows)
    out.append(f"| RSS and fds stay bounded | {verdict(soak, 'resources')} | caps "
               f"{a.max_rss_mib} MiB, {a.max_fds} fds; {res} |")
    out.append(f"| every socket serves after malformed input | "
               f"{verdict(soak, 'malformed input')} | {soak.bursts['probes']} probes after "
               f"bursts, each within {PROBE_TIMEOUT:.0f} s (a Paranoid Pirate request: "
               f"{ANSWER_BOUND:.0f} s) |")
    out.append("")
    out.append("| node | samples | starts | max RSS | max fds | longest run: samples, "
               "span | first third → last third (medians) |")
    out.append("|---|---|---|---|---|---|---|")
    for short, n, starts, rss, fds, n_long, span, trend in res_rows:
        out.append(f"| {short} | {n} | {starts} | {rss / 1024:.1f} MiB | {fds} | {n_long}, "
                   f"{span:.0f} s | {trend} |")
    if soak.problems:
        out.append("")
        out.append("Problems:")
        for check, sentences in soak.problems.items():
            for s in sentences[:20]:
                out.append(f"- [{check}] {s}")
            if len(sentences) > 20:
                out.append(f"- [{check}] … and {len(sentences) - 20} more")
    out.append("")
    out.append(f"Replay: `python3 tests/soak/soak.py --troupe {a.troupe} --secs {a.secs:g} "
               f"--seed {a.seed}`")
    return "\n".join(out)


def fmt_s(value):
    return "-" if value is None else f"{value * 1000:.0f} ms" if value < 1 else f"{value:.2f} s"


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--troupe", required=True, help="the troupe binary")
    parser.add_argument("--secs", type=float, default=600.0,
                        help="seconds of load and chaos (set-up and drain come on top)")
    parser.add_argument("--seed", type=int, default=None)
    parser.add_argument("--interval", type=float, default=4.0,
                        help="mean seconds between two chaos actions")
    parser.add_argument("--max-rss-mib", type=int, default=256)
    parser.add_argument("--max-fds", type=int, default=512)
    parser.add_argument("--rss-slack-mib", type=int, default=16)
    parser.add_argument("--fd-slack", type=int, default=32)
    parser.add_argument("--keep", action="store_true", help="keep the run's folder")
    parser.add_argument("--summary-file", help="also write the summary here")
    args = parser.parse_args()
    if args.seed is None:
        args.seed = random.SystemRandom().randrange(1, 2**31)
    print(f"soak: seed {args.seed}", flush=True)

    LIBC.prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0)
    soak = Soak(args)
    log(f"run {soak.run_id} in {soak.root}")
    done = [False]

    def finish():
        if not done[0]:
            done[0] = True
            soak.stop_sampling.set()
            soak.cleanup()

    atexit.register(finish)

    def on_signal(signum, _frame):
        log(f"signal {signum}: stopping")
        finish()
        os._exit(128 + signum)

    for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        signal.signal(sig, on_signal)

    started = time.monotonic()
    try:
        soak.build()
        soak.start_cluster()
        threading.Thread(target=soak.sampler, daemon=True).start()
        soak.start_load()
        log(f"cluster up after {time.monotonic() - started:.1f}s; chaos for {args.secs:g}s")
        soak.chaos()
        log("chaos over; draining the clients")
        results = soak.stop_helpers()
        soak.stop_sampling.set()
        soak.stop_nodes()
        leftover = soak.leftovers()
        for pid in leftover:
            soak.problem("containment", f"left at the end: pid {pid} ({cmdline(pid)[:100]})")
    except SetupError as err:
        print(f"soak: set-up failed: {err}\nseed {args.seed}; run folder {soak.root}",
              flush=True)
        finish()
        return 2
    req_rows = judge_requests(soak, results["load"])
    ipc_rows = judge_ipc(soak, results)
    res_rows = judge_resources(soak)
    text = summary(soak, started, results["load"], ipc_rows, req_rows, res_rows, leftover)
    finish()
    print(text, flush=True)
    if args.summary_file:
        with open(args.summary_file, "w") as f:
            f.write(text + "\n")
    with open(os.path.join(soak.root, "results.json"), "w") as f:
        json.dump(results, f)
    if soak.problems or args.keep:
        print(f"\nThe run's folder (configs, node logs, results.json): {soak.root}", flush=True)
    else:
        shutil.rmtree(soak.root, ignore_errors=True)
    return 1 if soak.problems else 0


if __name__ == "__main__":
    sys.exit(main())
