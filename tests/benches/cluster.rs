//! One platform, measured against real release `troupe` nodes (`make bench` builds them):
//!
//! 1. **Joining a new broker.** A beacon node runs; an echo worker waits for a broker. Then a
//!    broker node starts, and the time from its launch to the broker seeing the worker's READY
//!    is measured, for a worker that discovers brokers through the beacon (`--service echo
//!    --beacon …`) and for the baseline, a worker given the broker's address (`--connect`),
//!    which ZeroMQ reconnects every 100 ms. The time from the broker's registration reaching a
//!    beacon watcher to the READY is shown as well.
//! 2. **A supervised worker's death.** A request is held by an echo worker (`--delay 30s`);
//!    the worker is killed with SIGKILL; the time from the kill to the client's answer is
//!    measured for a worker the node's own supervisor runs (the supervisor tells the broker at
//!    once) and for the baseline, the same worker run outside the node, as another node's
//!    worker is: the broker learns of its death from heartbeats only (here at its next
//!    heartbeat, which the closed connection refuses; after the whole liveness window when the
//!    connection is not closed, as with a machine cut off).
//!
//! Environment: `TROUPE_BENCH_RUNS` (default 5).

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::mpsc;
use std::time::{Duration, Instant};

use serde_json::Value;
use troupe_tests::bench::{median, Api};
use troupe_tests::{free_port, troupe, Proc};

const WAIT: Duration = Duration::from_secs(60);

fn runs() -> usize {
    std::env::var("TROUPE_BENCH_RUNS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(5)
}

/// Writes `config` (with a name and a control socket added) into `dir` and starts the node;
/// returns the process, unwaited, and its control socket.
fn launch(dir: &Path, name: &str, config: &str) -> (Proc, PathBuf) {
    let socket = dir.join(format!("{name}.ctl"));
    let path = dir.join(format!("{name}.toml"));
    std::fs::write(
        &path,
        format!(
            "name = \"{name}\"\nshutdown_timeout = \"30s\"\n{config}\n[control]\nsocket = \"{}\"\n",
            socket.display()
        ),
    )
    .unwrap();
    let mut cmd = troupe();
    cmd.args(["run", "--log-level", "warn,troupe_node=info", "--config"])
        .arg(&path);
    (Proc::spawn(cmd), socket)
}

fn stop(mut node: Proc) {
    node.signal(libc::SIGTERM);
    node.wait_exit(WAIT);
}

fn get_json(api: &mut Api, path: &str) -> Option<Value> {
    let (status, body) = api.get(path);
    (status == 200)
        .then(|| serde_json::from_slice(&body).ok())
        .flatten()
}

/// Connects to a node's control socket as soon as it exists.
fn api_when_up(socket: &Path) -> Api {
    let deadline = Instant::now() + WAIT;
    while std::os::unix::net::UnixStream::connect(socket).is_err() {
        assert!(
            Instant::now() < deadline,
            "{} never answered",
            socket.display()
        );
        std::thread::sleep(Duration::from_millis(1));
    }
    Api::connect(socket)
}

/// The broker's `echo` service as `/v1/broker` shows it.
fn echo_service(api: &mut Api) -> Option<Value> {
    get_json(api, "/v1/broker")?["services"]
        .as_array()?
        .iter()
        .find(|s| s["name"] == "echo")
        .cloned()
}

fn worker_count(api: &mut Api) -> usize {
    echo_service(api)
        .and_then(|s| s["worker_list"].as_array().map(|w| w.len()))
        .unwrap_or(0)
}

fn held(api: &mut Api) -> bool {
    echo_service(api).is_some_and(|s| {
        s["worker_list"].as_array().is_some_and(|workers| {
            workers
                .iter()
                .any(|w| w["held"].as_u64().is_some_and(|h| h > 0))
        })
    })
}

fn until(what: &str, mut check: impl FnMut() -> bool) {
    let deadline = Instant::now() + WAIT;
    while !check() {
        assert!(Instant::now() < deadline, "{what} within {WAIT:?}");
        std::thread::sleep(Duration::from_millis(1));
    }
}

struct Ports {
    beacon: u16,
    frontend: u16,
    backend: u16,
    majordomo: u16,
}

impl Ports {
    fn new() -> Ports {
        Ports {
            beacon: free_port(),
            frontend: free_port(),
            backend: free_port(),
            majordomo: free_port(),
        }
    }

    fn beacon(&self) -> String {
        format!("tcp://127.0.0.1:{}", self.beacon)
    }

    fn broker_tables(&self) -> String {
        format!(
            "[broker]\nservice = \"echo\"\nfrontend = \"tcp://127.0.0.1:{}\"\nbackend = \"tcp://127.0.0.1:{}\"\n[broker.majordomo]\nbind = \"tcp://127.0.0.1:{}\"\n",
            self.frontend, self.backend, self.majordomo
        )
    }
}

/// Prints every line `troupe cluster watch broker` writes with the time it arrived.
fn watch_broker(beacon: &str) -> (std::process::Child, mpsc::Receiver<(Instant, String)>) {
    let mut cmd = troupe();
    cmd.args(["cluster", "watch", "broker", "--json", "--beacon", beacon])
        .stdout(Stdio::piped())
        .stderr(Stdio::null());
    let mut child = cmd.spawn().unwrap();
    let out = child.stdout.take().unwrap();
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(out).lines().map_while(Result::ok) {
            if tx.send((Instant::now(), line)).is_err() {
                break;
            }
        }
    });
    (child, rx)
}

/// One join: returns (launch → READY, registration seen by a watcher → READY), in ms.
fn join_once(dir: &Path, ports: &Ports, discover: bool) -> (f64, f64) {
    let mut worker = troupe();
    worker.args(["echo-worker", "--log-level", "warn"]);
    if discover {
        worker.args(["--service", "echo", "--beacon", &ports.beacon()]);
    } else {
        worker.args(["--connect", &format!("tcp://127.0.0.1:{}", ports.backend)]);
    }
    let worker = Proc::spawn(worker);
    let (mut watcher, events) = watch_broker(&ports.beacon());
    // The watcher's snapshot (no broker yet) arrives first.
    events.recv_timeout(WAIT).expect("the watch's snapshot");
    let launched = Instant::now();
    let (broker, socket) = launch(
        dir,
        "bench-broker",
        &format!(
            "roles = [\"broker\"]\n{}[cluster]\nbeacons = [\"{}\"]\n",
            ports.broker_tables(),
            ports.beacon()
        ),
    );
    let mut api = api_when_up(&socket);
    until("the worker joins the new broker", || {
        worker_count(&mut api) > 0
    });
    let ready = Instant::now();
    let registered = events
        .try_iter()
        .find(|(_, line)| line.contains("echo.backend"))
        .map(|(at, _)| at)
        .expect("the watcher saw the broker's endpoints");
    let _ = watcher.kill();
    let _ = watcher.wait();
    stop(broker);
    drop(worker);
    (
        ready.duration_since(launched).as_secs_f64() * 1e3,
        ready.saturating_duration_since(registered).as_secs_f64() * 1e3,
    )
}

fn join(runs: usize) {
    let dir = tempfile::tempdir().unwrap();
    let ports = Ports::new();
    let (beacon, _) = launch(
        dir.path(),
        "bench-beacon",
        &format!(
            "roles = [\"beacon\"]\n[beacon]\nbind = \"{}\"\n",
            ports.beacon()
        ),
    );
    let mut beacon = beacon;
    beacon.wait_for(&["node ready"], WAIT);
    let (mut found, mut given, mut after_registration) = (Vec::new(), Vec::new(), Vec::new());
    for _ in 0..runs {
        let (total, since_registration) = join_once(dir.path(), &ports, true);
        found.push(total);
        after_registration.push(since_registration);
        given.push(join_once(dir.path(), &ports, false).0);
    }
    stop(beacon);
    let (found, given, after) = (
        median(&mut found),
        median(&mut given),
        median(&mut after_registration),
    );
    println!("cluster/join: {runs} runs each (medians)");
    println!(
        "  broker launch → READY of a discovering worker (--service --beacon)  {found:8.1} ms"
    );
    println!("  broker launch → READY of a worker given the address (--connect)    {given:8.1} ms");
    println!(
        "  ratio discovering / given                                          {:8.2}",
        found / given
    );
    println!(
        "  registration seen by a watcher → READY (discovering)              {after:8.1} ms (goal < 1000 ms)"
    );
}

/// A request held by a `--delay 30s` worker; SIGKILL; returns ms until the client's answer.
fn death_once(api: &mut Api, ports: &Ports, pid: i32) -> f64 {
    let context = zmq::Context::new();
    let client = context.socket(zmq::REQ).unwrap();
    client.set_linger(0).unwrap();
    client.set_rcvtimeo(30_000).unwrap();
    client
        .connect(&format!("tcp://127.0.0.1:{}", ports.frontend))
        .unwrap();
    client.send("held", 0).unwrap();
    until("the request is held by the worker", || held(api));
    let killed = Instant::now();
    unsafe { libc::kill(pid, libc::SIGKILL) };
    let answer = client.recv_multipart(0);
    let took = killed.elapsed().as_secs_f64() * 1e3;
    assert!(answer.is_ok(), "the client got no answer at all");
    took
}

fn supervised_pid(api: &mut Api, id: &str, not: Option<i32>) -> i32 {
    let mut pid = 0;
    until("the supervised worker is ready at the broker", || {
        let status = get_json(api, &format!("/v1/services/{id}"));
        let Some(status) = status else { return false };
        pid = status["pid"].as_i64().unwrap_or(0) as i32;
        status["state"] == "ready" && pid != 0 && Some(pid) != not
    });
    pid
}

fn death(runs: usize) {
    let dir = tempfile::tempdir().unwrap();
    let ports = Ports::new();
    let worker_args = |backend: u16| {
        format!(
            "[\"echo-worker\", \"--connect\", \"tcp://127.0.0.1:{backend}\", \"--delay\", \"30s\", \"--log-level\", \"warn\"]"
        )
    };
    let (mut node, socket) = launch(
        dir.path(),
        "bench-death",
        &format!(
            "roles = [\"supervisor\", \"broker\"]\n{}[supervisor]\nstate_dir = \"{}\"\n[[supervisor.services]]\nid = \"slow\"\ncommand = \"${{TROUPE_EXE}}\"\nargs = {}\nready = {{ broker = \"echo\" }}\ncount = \"infinity\"\nmin_restart_interval = \"0s\"\n",
            ports.broker_tables(),
            dir.path().join("state").display(),
            worker_args(ports.backend)
        ),
    );
    node.wait_for(&["node ready"], WAIT);
    let mut api = Api::connect(&socket);
    let (mut supervised, mut outside) = (Vec::new(), Vec::new());
    let mut last = None;
    for _ in 0..runs {
        let pid = supervised_pid(&mut api, "slow", last);
        supervised.push(death_once(&mut api, &ports, pid));
        last = Some(pid);
    }
    // The baseline: the same worker, run outside the node; the supervised one is stopped so
    // that the request goes to the outsider.
    let (status, _) = api.post("/v1/services/slow/stop");
    assert_eq!(status, 200, "stop the supervised worker");
    for _ in 0..runs {
        let mut cmd = troupe();
        cmd.args([
            "echo-worker",
            "--connect",
            &format!("tcp://127.0.0.1:{}", ports.backend),
            "--delay",
            "30s",
            "--log-level",
            "warn",
        ]);
        let worker = Proc::spawn(cmd);
        until("the outside worker joins", || worker_count(&mut api) > 0);
        outside.push(death_once(&mut api, &ports, worker.pid() as i32));
        drop(worker);
        until("the dead worker is gone", || worker_count(&mut api) == 0);
    }
    stop(node);
    let (supervised, outside) = (median(&mut supervised), median(&mut outside));
    println!("cluster/death: {runs} runs each (medians), heartbeat 1 s × liveness 3");
    println!(
        "  supervised worker killed → client answered      {supervised:8.1} ms (goal < 50 ms)"
    );
    println!(
        "  worker outside the node killed → answered       {outside:8.1} ms (the heartbeat window)"
    );
    println!(
        "  ratio supervised / outside                      {:8.4}",
        supervised / outside
    );
}

fn main() {
    let filter: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| !a.starts_with('-'))
        .collect();
    let wants = |part: &str| filter.is_empty() || filter.iter().any(|f| f == part);
    let runs = runs();
    if wants("join") {
        join(runs);
    }
    if wants("death") {
        death(runs);
    }
}
