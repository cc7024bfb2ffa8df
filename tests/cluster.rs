//! Several machines, one platform: a hub (beacon + broker) and edges (ipc + supervisor with
//! supervised echo workers that find the broker through the beacon), each machine a network
//! namespace of its own with its own address. Nothing on an edge names the broker: only the
//! beacon's address is configured.
//!
//! Needs root and iproute2 (CI runs as root and installs it); without them the tests fail
//! saying so.

use std::path::PathBuf;
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use serde_json::Value;
use troupe_tests::netns::{Lab, Machine};
use troupe_tests::{troupe, Proc};

const START: Duration = Duration::from_secs(30);
const SETTLE: Duration = Duration::from_secs(20);
/// The heartbeat of every node, beacon client and worker in these tests.
const BEAT: &str = "250ms";
const BEAT_MS: u64 = 250;
/// Heartbeats missed before a peer counts as gone (the defaults).
const LIVENESS: u64 = 3;

/// One node on one machine: its process and folder (config, sockets, state).
struct Node {
    proc: Option<Proc>,
    dir: tempfile::TempDir,
    machine: Machine,
}

impl Node {
    /// Starts `troupe run` on `machine` with `config` (a whole node config but for its control
    /// socket, state folder and ipc socket, which are added) and waits for "node ready".
    fn start(machine: &Machine, name: &str, config: &str) -> Node {
        let dir = tempfile::tempdir().unwrap();
        let full = format!(
            "name = \"{name}\"\nshutdown_timeout = \"10s\"\n{config}\n[control]\nsocket = \"{}\"\n",
            dir.path().join("ctl.sock").display()
        )
        .replace("@DIR@", &dir.path().display().to_string());
        std::fs::write(dir.path().join("node.toml"), full).unwrap();
        let mut node = Node {
            proc: None,
            dir,
            machine: machine.clone(),
        };
        node.launch();
        node
    }

    fn launch(&mut self) {
        let mut cmd = troupe();
        cmd.arg("run")
            .arg("--config")
            .arg(self.dir.path().join("node.toml"));
        let mut proc = Proc::spawn(self.machine.wrap(cmd));
        proc.wait_for(&["node ready"], START);
        self.proc = Some(proc);
    }

    fn proc(&self) -> &Proc {
        self.proc.as_ref().expect("the node runs")
    }

    fn socket(&self) -> PathBuf {
        self.dir.path().join("ctl.sock")
    }

    /// `troupe ctl … --json` against this node; its JSON, or None if ctl failed.
    fn ctl_json(&self, args: &[&str]) -> Option<Value> {
        let mut cmd = troupe();
        cmd.arg("ctl")
            .arg("--socket")
            .arg(self.socket())
            .args(args)
            .arg("--json");
        let out = cmd.output().unwrap();
        out.status
            .success()
            .then(|| serde_json::from_slice(&out.stdout).unwrap())
    }

    /// Waits until `check` holds for `ctl ARGS --json`; returns that JSON.
    fn until(&self, args: &[&str], what: &str, check: impl Fn(&Value) -> bool) -> Value {
        let deadline = Instant::now() + SETTLE;
        loop {
            let seen = self.ctl_json(args);
            if let Some(value) = seen.as_ref().filter(|v| check(v)) {
                return value.clone();
            }
            assert!(
                Instant::now() < deadline,
                "{:?}: not {what} within {SETTLE:?}: {seen:?}\n{}",
                args,
                self.proc().output()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    fn state(&self, service: &str, state: &str) -> Value {
        self.until(&["service", service], state, |s| s["state"] == state)
    }

    fn kill(&mut self) {
        if let Some(mut proc) = self.proc.take() {
            proc.signal(libc::SIGKILL);
            proc.wait_exit(START);
        }
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        if let Some(proc) = self.proc.as_mut() {
            proc.signal(libc::SIGTERM);
            proc.wait_exit(START);
        }
    }
}

fn hub_config(ip: &str, roles: &str) -> String {
    format!(
        r#"roles = [{roles}]
[beacon]
bind = "tcp://0.0.0.0:7400"
[broker]
service = "echo"
frontend = "tcp://0.0.0.0:7501"
backend = "tcp://0.0.0.0:7502"
heartbeat_interval = "{BEAT}"
advertise_host = "{ip}"
[broker.majordomo]
bind = "tcp://0.0.0.0:7500"
[cluster]
beacons = ["tcp://127.0.0.1:7400"]
heartbeat_interval = "{BEAT}"
"#
    )
}

/// A broker-only node registering with `beacon`.
fn broker_config(ip: &str, beacon: &str) -> String {
    format!(
        r#"roles = ["broker"]
[broker]
service = "echo"
frontend = "tcp://0.0.0.0:7501"
backend = "tcp://0.0.0.0:7502"
heartbeat_interval = "{BEAT}"
advertise_host = "{ip}"
[broker.majordomo]
bind = "tcp://0.0.0.0:7500"
[cluster]
beacons = ["{beacon}"]
heartbeat_interval = "{BEAT}"
"#
    )
}

/// An edge: ipc + supervisor, an echo worker that discovers the brokers (it gets the beacon
/// from the node), and `gated`, which needs a broker and is restarted when the brokers change.
fn edge_config(beacon: &str) -> String {
    format!(
        r#"roles = ["ipc", "supervisor"]
[ipc]
socket = "@DIR@/ipc.sock"
[supervisor]
state_dir = "@DIR@/state"
[cluster]
beacons = ["{beacon}"]
heartbeat_interval = "{BEAT}"

[[supervisor.services]]
id = "echo"
command = "${{TROUPE_EXE}}"
args = ["echo-worker", "--service", "echo", "--heartbeat-interval", "{BEAT}"]
plan = [{{ restart_backoff = {{ initial_ms = 100, factor = 2.0, max_ms = 1000 }} }}]
count = "infinity"

[[supervisor.services]]
id = "gated"
command = "/bin/sh"
args = ["-c", "echo \"broker at $TROUPE_REQ_BROKER_MAJORDOMO\"; exec sleep 1000"]
requires = ["broker"]
on_requirement_change = "restart"
"#
    )
}

/// A lab with a hub machine (address .1) and `edges` more machines (.2, .3, …); the hub is
/// not started yet. Returns the lab, the hub's machine, the edges and the beacon's address.
fn lab_with_hub(edges: &[&str]) -> (Lab, Machine, Vec<Machine>, String) {
    let mut lab = Lab::new();
    let hub = lab.machine("hub", 1);
    let others = edges
        .iter()
        .zip(2u8..)
        .map(|(name, host)| lab.machine(name, host))
        .collect();
    let beacon = format!("tcp://{}:7400", hub.ip);
    (lab, hub, others, beacon)
}

/// Starts the hub node (beacon and broker) on `machine`.
fn start_hub(machine: &Machine) -> Node {
    Node::start(
        machine,
        "hub",
        &hub_config(&machine.ip, "\"beacon\", \"broker\""),
    )
}

/// `troupe call echo PAYLOAD`, run on `machine`, finding the broker through `beacon`.
fn call(machine: &Machine, beacon: &str, payload: &str, timeout: &str) -> Output {
    let mut cmd = troupe();
    cmd.args([
        "call",
        "echo",
        payload,
        "--beacon",
        beacon,
        "--timeout",
        timeout,
    ]);
    machine.wrap(cmd).output().unwrap()
}

/// Calls until one answers `payload`; returns how long it took.
fn call_until_answered(machine: &Machine, beacon: &str, payload: &str) -> Duration {
    let since = Instant::now();
    let deadline = since + SETTLE;
    loop {
        let out = call(machine, beacon, payload, "1s");
        if out.status.success() && String::from_utf8_lossy(&out.stdout).trim() == payload {
            return since.elapsed();
        }
        assert!(
            Instant::now() < deadline,
            "no answer to `call echo {payload}` within {SETTLE:?}: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

/// What the beacon at `beacon` says about every node (`troupe cluster list --json`), asked
/// from `machine`.
fn cluster_list(machine: &Machine, beacon: &str) -> Value {
    let mut cmd = troupe();
    cmd.args(["cluster", "list", "--json", "--beacon", beacon]);
    let out = machine.wrap(cmd).output().unwrap();
    assert!(
        out.status.success(),
        "cluster list: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

fn node_status(list: &Value, name: &str) -> Option<String> {
    list["nodes"]
        .as_array()?
        .iter()
        .find(|n| n["name"] == name)
        .and_then(|n| n["status"].as_str().map(String::from))
}

fn workers(node: &Node) -> u64 {
    node.ctl_json(&["broker"])
        .and_then(|b| {
            b["services"]
                .as_array()?
                .iter()
                .find(|s| s["name"] == "echo")
                .and_then(|s| s["worker_list"].as_array().map(|w| w.len() as u64))
        })
        .unwrap_or(0)
}

fn until_workers(node: &Node, at_least: u64) {
    let deadline = Instant::now() + SETTLE;
    while workers(node) < at_least {
        assert!(
            Instant::now() < deadline,
            "the broker did not get {at_least} workers within {SETTLE:?}: {:?}",
            node.ctl_json(&["broker"])
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn the_network_between_machines_is_real() {
    let mut lab = Lab::new();
    let a = lab.machine("a", 1);
    let b = lab.machine("b", 2);
    let mut serve = a.command("python3");
    serve.args([
        "-c",
        "import socket\ns=socket.socket()\ns.bind(('0.0.0.0',9000))\ns.listen()\nprint('listening',flush=True)\nc,_=s.accept()\nc.sendall(b'hi')",
    ]);
    let mut listener = Proc::spawn(serve);
    listener.wait_for(&["listening"], START);
    let fetch = format!(
        "import socket\ns=socket.create_connection(('{}',9000),timeout=5)\nprint(s.recv(2).decode())",
        a.ip
    );
    let out = b.command("python3").args(["-c", &fetch]).output().unwrap();
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "hi");
    // From the host's loopback the machine's port is not reachable: they are separate.
    let host = Command::new("python3")
        .args([
            "-c",
            "import socket\ntry:\n socket.create_connection(('127.0.0.1',9000),timeout=1)\n print('reached')\nexcept OSError:\n print('refused')",
        ])
        .output()
        .unwrap();
    assert_eq!(String::from_utf8_lossy(&host.stdout).trim(), "refused");
}

#[test]
fn requirements_hold_a_service_until_a_provider_is_online() {
    let (_lab, hub_machine, machines, beacon) = lab_with_hub(&["edge"]);
    let edge_machine = &machines[0];

    let unmet = format!(
        "{}\n[[supervisor.services]]\nid = \"lonely\"\ncommand = \"/bin/sleep\"\nargs = [\"1000\"]\nrequires = [\"nobody-offers-this\"]\nrequirements_timeout = \"1s\"\n\n[[supervisor.services]]\nid = \"api\"\ncommand = \"/bin/sleep\"\nargs = [\"1000\"]\nendpoints = {{ http = \"tcp://{}:8080\" }}\n",
        edge_config(&beacon),
        edge_machine.ip
    );
    let edge = Node::start(edge_machine, "edge-a", &unmet);
    let waiting = edge.state("gated", "waiting_for_requirements");
    assert!(
        waiting.to_string().contains("broker"),
        "it says what it waits for: {waiting}"
    );

    let _hub = start_hub(&hub_machine);
    edge.state("gated", "running");
    let logs = edge.until(&["logs", "gated"], "logging its broker", |logs| {
        logs.to_string()
            .contains(&format!("tcp://{}:7500", hub_machine.ip))
    });
    assert!(!logs.to_string().contains("broker at \\n"), "{logs}");

    let failed = edge.state("lonely", "failed");
    assert!(
        failed.to_string().contains("nobody-offers-this"),
        "the failure names what is missing: {failed}"
    );

    // A service's endpoints are offered while it runs and withdrawn when it stops.
    let lookup = |resource: &str| {
        let mut cmd = troupe();
        cmd.args(["cluster", "lookup", resource, "--json", "--beacon", &beacon]);
        let out = hub_machine.wrap(cmd).output().unwrap();
        serde_json::from_slice::<Value>(&out.stdout).unwrap()["nodes"].clone()
    };
    let api = format!("tcp://{}:8080", edge_machine.ip);
    let deadline = Instant::now() + SETTLE;
    while lookup("api")[0]["endpoints"]["http"] != api.as_str() {
        assert!(
            Instant::now() < deadline,
            "api never offered: {}",
            lookup("api")
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    edge.ctl_json(&["stop", "api"]).expect("ctl stop api");
    let deadline = Instant::now() + SETTLE;
    while lookup("api")
        .as_array()
        .is_some_and(|nodes| !nodes.is_empty())
    {
        assert!(
            Instant::now() < deadline,
            "api still offered: {}",
            lookup("api")
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn a_worker_on_one_edge_answers_a_call_from_another() {
    let (_lab, hub_machine, machines, beacon) = lab_with_hub(&["a", "b"]);
    let (a, b) = (&machines[0], &machines[1]);
    let hub = start_hub(&hub_machine);
    let _edge = Node::start(a, "edge-a", &edge_config(&beacon));
    until_workers(&hub, 1);
    let took = call_until_answered(b, &beacon, "hello");
    eprintln!("first answer from edge b after {took:?}");

    // The README's lookup shows the broker with its endpoints.
    let mut cmd = troupe();
    cmd.args(["cluster", "lookup", "broker", "--json", "--beacon", &beacon]);
    let out = b.wrap(cmd).output().unwrap();
    let nodes: Value = serde_json::from_slice(&out.stdout).unwrap();
    let nodes = &nodes["nodes"];
    assert_eq!(nodes[0]["name"], "hub", "{nodes}");
    assert_eq!(
        nodes[0]["endpoints"]["majordomo"],
        format!("tcp://{}:7500", hub_machine.ip),
        "{nodes}"
    );
}

#[test]
fn a_second_broker_joins_and_the_workers_attach_to_it() {
    let (_lab, hub_machine, machines, beacon) = lab_with_hub(&["hub2", "a"]);
    let (second, a) = (&machines[0], &machines[1]);
    let hub = start_hub(&hub_machine);
    let edge = Node::start(a, "edge-a", &edge_config(&beacon));
    until_workers(&hub, 1);
    let hub2 = Node::start(second, "hub2", &broker_config(&second.ip, &beacon));
    until_workers(&hub2, 1);
    // Clients reach the worker through either broker.
    let mut cmd = troupe();
    cmd.args([
        "call",
        "echo",
        "via-second",
        "--endpoint",
        &format!("tcp://{}:7500", second.ip),
    ]);
    let out = a.wrap(cmd).output().unwrap();
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "via-second");
    // The gated service was restarted with both brokers in its environment.
    edge_has_both_brokers(&edge, &hub_machine, second);

    // The second broker goes away: the workers leave it, and calls go on through the first.
    drop(hub2);
    let left = format!("left broker endpoint=tcp://{}:7502", second.ip);
    edge.until(&["logs", "echo"], "leaving the stopped broker", |logs| {
        logs.to_string().contains(&left)
    });
    call_until_answered(a, &beacon, "after-the-second");
}

fn edge_has_both_brokers(edge: &Node, one: &Machine, two: &Machine) {
    let both = format!("tcp://{}:7500,tcp://{}:7500", one.ip, two.ip);
    edge.until(&["logs", "gated"], "restarted with both brokers", |logs| {
        logs.to_string().contains(&both)
    });
}

#[test]
fn the_hub_is_killed_and_restarted_and_everything_recovers() {
    let (_lab, hub_machine, machines, beacon) = lab_with_hub(&["a", "b"]);
    let (a, b) = (&machines[0], &machines[1]);
    let mut hub = start_hub(&hub_machine);
    let _edge = Node::start(a, "edge-a", &edge_config(&beacon));
    until_workers(&hub, 1);
    call_until_answered(b, &beacon, "before");

    hub.kill();
    hub.launch();
    let ready = Instant::now();
    let took = call_until_answered(b, &beacon, "after");
    // Liveness plus one interval, and room for a loaded machine to schedule the processes.
    let bound = Duration::from_millis((LIVENESS + 1) * BEAT_MS) + Duration::from_secs(3);
    assert!(
        ready.elapsed() <= bound,
        "recovered only after {:?} (bound {bound:?})",
        ready.elapsed()
    );
    eprintln!("answered again {took:?} after the hub was ready");
}

#[test]
fn an_edge_cut_off_goes_offline_waits_and_comes_back() {
    let (_lab, hub_machine, machines, beacon) = lab_with_hub(&["a", "b"]);
    let (a, b) = (&machines[0], &machines[1]);
    let hub = start_hub(&hub_machine);
    let edge = Node::start(a, "edge-a", &edge_config(&beacon));
    edge.state("gated", "running");
    until_workers(&hub, 1);

    a.cut();
    let local_beacon = "tcp://127.0.0.1:7400";
    let cut_at = Instant::now();
    let deadline = cut_at + SETTLE;
    while node_status(&cluster_list(&hub_machine, local_beacon), "edge-a").as_deref()
        != Some("offline")
    {
        assert!(Instant::now() < deadline, "edge-a never went offline");
        std::thread::sleep(Duration::from_millis(20));
    }
    let window = Duration::from_millis(LIVENESS * BEAT_MS);
    eprintln!(
        "edge-a offline after {:?} (liveness window {window:?})",
        cut_at.elapsed()
    );
    edge.state("gated", "waiting_for_requirements");

    a.heal();
    edge.state("gated", "running");
    let deadline = Instant::now() + SETTLE;
    while node_status(&cluster_list(&hub_machine, local_beacon), "edge-a").as_deref()
        != Some("online")
    {
        assert!(Instant::now() < deadline, "edge-a never came back online");
        std::thread::sleep(Duration::from_millis(20));
    }
    call_until_answered(b, &beacon, "healed");
}

#[test]
fn a_killed_supervised_worker_fails_its_requests_at_once() {
    let mut lab = Lab::new();
    let machine = lab.machine("one", 1);
    let config = format!(
        r#"{}
[supervisor]
state_dir = "@DIR@/state"
[[supervisor.services]]
id = "slow"
command = "${{TROUPE_EXE}}"
args = ["echo-worker", "--connect", "tcp://127.0.0.1:7502", "--delay", "30s", "--heartbeat-interval", "{BEAT}"]
ready = {{ broker = "echo" }}
"#,
        hub_config(&machine.ip, "\"supervisor\", \"beacon\", \"broker\"")
    );
    let node = Node::start(&machine, "one", &config);
    let status = node.state("slow", "ready");
    let pid = status["pid"].as_u64().expect("a pid") as i32;

    let mut cmd = troupe();
    cmd.args([
        "call",
        "echo",
        "held",
        "--endpoint",
        "tcp://127.0.0.1:7500",
        "--timeout",
        "30s",
    ]);
    let mut client = Proc::spawn(machine.wrap(cmd));
    let deadline = Instant::now() + SETTLE;
    while !held(&node) {
        assert!(Instant::now() < deadline, "the request was never held");
        std::thread::sleep(Duration::from_millis(5));
    }
    let killed = Instant::now();
    unsafe { libc::kill(pid, libc::SIGKILL) };
    let exit = client.wait_exit(SETTLE);
    let answered = killed.elapsed();
    assert!(!exit.success(), "the request failed: {}", client.output());
    // Today's heartbeat window would be liveness × interval; the supervisor's word is
    // faster by far (docs/PERFORMANCE.md measures it).
    let window = Duration::from_millis(LIVENESS * BEAT_MS);
    assert!(
        answered < window,
        "answered after {answered:?}, not before the heartbeat window {window:?}: {}",
        client.output()
    );
    eprintln!("answered {answered:?} after the kill");
}

fn held(node: &Node) -> bool {
    node.ctl_json(&["broker"]).is_some_and(|b| {
        b["services"].as_array().is_some_and(|services| {
            services.iter().any(|s| {
                s["worker_list"].as_array().is_some_and(|workers| {
                    workers
                        .iter()
                        .any(|w| w["held"].as_u64().is_some_and(|h| h > 0))
                })
            })
        })
    })
}
