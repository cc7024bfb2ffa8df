//! Beacon benchmarks, run by `make bench` (or `cargo bench -p troupe-beacon --bench beacon`).
//!
//! Each part runs the real `troupe` binary (release build) as the beacon and measures it from
//! this process through real sockets:
//!
//! 1. **throughput** — registrations/s and get_requirements/s from many concurrent Rust
//!    clients (DEALER sockets, each with a window of requests in flight). The baseline, run
//!    the same way in the same run, is a bare ZeroMQ ROUTER that answers every request with a
//!    canned reply of the same size: the transport's ceiling on this machine. The target is
//!    50,000 get_requirements/s.
//! 2. **failure detection** — real `troupe` nodes at default settings (heartbeat 1 s,
//!    liveness 3) are killed with SIGKILL at random moments; the time from the kill to the
//!    `nodedown` event a watcher receives is recorded. Target ≤ 3.5 s; the reference
//!    figures are Erlang's net_ticktime (45–75 s) and ZooKeeper sessions (4–40 s).
//! 3. **memory** — the beacon's resident memory with 10,000 registered, heartbeating nodes.
//!    Target < 50 MB.
//!
//! Medians over several runs are reported, never best runs. `BEACON_BENCH_QUICK=1` makes
//! every part short (for a smoke run), `BEACON_BENCH_SECONDS` sets how long each throughput
//! measurement lasts, `TROUPE_BIN` points at another `troupe` binary, and naming a part
//! (`throughput`, `failure_detection`, `memory`) runs only that part.

#[path = "../../../tests/common/ports.rs"]
mod ports;
use ports::free_port;

use std::io::Write;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use rand::Rng;
use serde_json::{json, Value};

struct Plan {
    runs: usize,
    seconds: f64,
    clients: usize,
    window: usize,
    kills: usize,
}

fn plan() -> Plan {
    let mut plan = base_plan();
    if let Some(seconds) = std::env::var("BEACON_BENCH_SECONDS")
        .ok()
        .and_then(|s| s.parse().ok())
    {
        plan.seconds = seconds;
    }
    plan
}

fn base_plan() -> Plan {
    if std::env::var_os("BEACON_BENCH_QUICK").is_some() {
        Plan {
            runs: 1,
            seconds: 1.0,
            clients: 8,
            window: 32,
            kills: 4,
        }
    } else {
        Plan {
            runs: 5,
            seconds: 5.0,
            clients: 16,
            window: 32,
            kills: 30,
        }
    }
}

fn troupe_bin() -> PathBuf {
    if let Some(bin) = std::env::var_os("TROUPE_BIN") {
        return PathBuf::from(bin);
    }
    let bin = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../target/release/troupe");
    if !bin.exists() {
        eprintln!(
            "{} not found: build it first (`cargo build --release --bin troupe`, or `make bench`)",
            bin.display()
        );
        std::process::exit(1);
    }
    bin
}

/// A `troupe` process, killed when dropped.
struct Node {
    child: Child,
    _config: tempfile::NamedTempFile,
}

impl Node {
    fn start(config: &str) -> Node {
        let mut file = tempfile::Builder::new().suffix(".toml").tempfile().unwrap();
        file.write_all(config.as_bytes()).unwrap();
        let child = Command::new(troupe_bin())
            .arg("run")
            .arg("--config")
            .arg(file.path())
            .env_remove("RUST_LOG")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start troupe");
        Node {
            child,
            _config: file,
        }
    }

    fn beacon(port: u16, extra: &str) -> Node {
        let node = Node::start(&format!(
            "name = \"bench-beacon-{port}\"\nroles = [\"beacon\"]\n[beacon]\nbind = \"tcp://127.0.0.1:{port}\"\n{extra}\n"
        ));
        wait_until_answering(port);
        node
    }

    fn pid(&self) -> u32 {
        self.child.id()
    }

    fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// CPU time the process has used (user + system).
    fn cpu(&self) -> Duration {
        let stat = std::fs::read_to_string(format!("/proc/{}/stat", self.pid())).unwrap();
        // Fields after the command (which is in parentheses): utime and stime are 14 and 15.
        let after = &stat[stat.rfind(')').unwrap() + 2..];
        let fields: Vec<&str> = after.split_whitespace().collect();
        let ticks: u64 = fields[11].parse::<u64>().unwrap() + fields[12].parse::<u64>().unwrap();
        // SAFETY: sysconf only reads a configuration value.
        let per_second = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as u64;
        Duration::from_millis(ticks * 1000 / per_second)
    }

    /// Resident and peak resident memory, in bytes.
    fn memory(&self) -> (u64, u64) {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.pid())).unwrap();
        let field = |name: &str| {
            status
                .lines()
                .find(|l| l.starts_with(name))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|kb| kb.parse::<u64>().ok())
                .map(|kb| kb * 1024)
                .unwrap_or(0)
        };
        (field("VmRSS:"), field("VmHWM:"))
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        self.kill();
    }
}

fn request(op: &str, fields: Value) -> Vec<u8> {
    let mut body = fields;
    body["v"] = json!(1);
    body["op"] = json!(op);
    serde_json::to_vec(&body).unwrap()
}

fn dealer(context: &zmq::Context, port: u16) -> zmq::Socket {
    let socket = context.socket(zmq::DEALER).unwrap();
    socket.set_linger(0).unwrap();
    socket.set_rcvtimeo(10_000).unwrap();
    socket.set_sndhwm(100_000).unwrap();
    socket.set_rcvhwm(100_000).unwrap();
    socket.connect(&format!("tcp://127.0.0.1:{port}")).unwrap();
    socket
}

fn wait_until_answering(port: u16) {
    let context = zmq::Context::new();
    let socket = dealer(&context, port);
    socket.set_rcvtimeo(200).unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    while Instant::now() < deadline {
        socket.send(request("ping", json!({})), 0).unwrap();
        if socket.recv_bytes(0).is_ok() {
            return;
        }
    }
    panic!("the beacon on port {port} never answered");
}

/// Sends `frames` (cycled) through one DEALER with `window` requests in flight, until `stop`;
/// returns (answered, answers that were errors).
fn pump(
    socket: &zmq::Socket,
    frames: &[Vec<u8>],
    window: usize,
    until: &dyn Fn(u64) -> bool,
) -> (u64, u64) {
    let (mut sent, mut answered, mut errors) = (0u64, 0u64, 0u64);
    let mut next = 0;
    loop {
        while sent - answered < window as u64 && !until(sent) {
            socket.send(&frames[next], 0).unwrap();
            next = (next + 1) % frames.len();
            sent += 1;
        }
        if answered == sent {
            return (answered, errors);
        }
        let reply = socket.recv_bytes(0).expect("an answer within 10 s");
        // Answers to requests without an id start with {"v":1,"op":...
        if reply.get(7..19) == Some(b"\"op\":\"error\"".as_slice()) {
            errors += 1;
        }
        answered += 1;
    }
}

/// Runs `clients` threads pumping their own frames; returns answers per second and errors.
fn load(port: u16, per_client: Vec<Vec<Vec<u8>>>, window: usize, limit: Limit) -> (f64, u64) {
    let context = zmq::Context::new();
    let stop = Arc::new(AtomicBool::new(false));
    let start = Instant::now();
    let threads: Vec<_> = per_client
        .into_iter()
        .map(|frames| {
            let socket = dealer(&context, port);
            let stop = stop.clone();
            std::thread::spawn(move || {
                let total = frames.len() as u64;
                match limit {
                    Limit::Once => pump(&socket, &frames, window, &|sent| sent >= total),
                    Limit::For(_) => {
                        pump(&socket, &frames, window, &|_| stop.load(Ordering::Relaxed))
                    }
                }
            })
        })
        .collect();
    if let Limit::For(duration) = limit {
        std::thread::sleep(duration);
        stop.store(true, Ordering::Relaxed);
    }
    let mut answered = 0;
    let mut errors = 0;
    for thread in threads {
        let (a, e) = thread.join().unwrap();
        answered += a;
        errors += e;
    }
    (answered as f64 / start.elapsed().as_secs_f64(), errors)
}

#[derive(Clone, Copy)]
enum Limit {
    Once,
    For(Duration),
}

/// A bare ROUTER answering every request with `reply`: the transport's ceiling.
fn echo_baseline(port: u16, reply: Vec<u8>, stop: Arc<AtomicBool>) -> std::thread::JoinHandle<()> {
    std::thread::spawn(move || {
        let context = zmq::Context::new();
        let router = context.socket(zmq::ROUTER).unwrap();
        router.set_linger(0).unwrap();
        router.set_rcvtimeo(100).unwrap();
        router.set_sndhwm(100_000).unwrap();
        router.bind(&format!("tcp://127.0.0.1:{port}")).unwrap();
        while !stop.load(Ordering::Relaxed) {
            if let Ok(mut parts) = router.recv_multipart(0) {
                let peer = parts.swap_remove(0);
                router.send_multipart([&peer[..], &reply[..]], 0).unwrap();
            }
        }
    })
}

fn median(values: &mut [f64]) -> f64 {
    values.sort_by(|a, b| a.partial_cmp(b).unwrap());
    let n = values.len();
    if !n.is_multiple_of(2) {
        values[n / 2]
    } else {
        (values[n / 2 - 1] + values[n / 2]) / 2.0
    }
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    let rank = ((p / 100.0) * (sorted.len() as f64 - 1.0)).round() as usize;
    sorted[rank.min(sorted.len() - 1)]
}

/// Registrations of `nodes` nodes named `c{client}-n{i}`. Client 0's first six nodes offer
/// `store` and `broker` (three each); every other node is a `gate` that requires both, so a
/// `get_requirements` answer lists six nodes with their endpoints, as in a small cluster.
fn register_frames(client: usize, nodes: usize, heartbeat_ms: u64) -> Vec<Vec<u8>> {
    (0..nodes)
        .map(|i| {
            let resource = match (client, i) {
                (0, 0..=2) => "store",
                (0, 3..=5) => "broker",
                _ => "gate",
            };
            request(
                "register",
                json!({
                    "node": format!("c{client}-n{i}"),
                    "resource": resource,
                    "requires": ["store", "broker"],
                    "endpoints": {
                        "frontend": format!("tcp://10.{}.{}.{}:7501", client, i / 250, i % 250),
                        "backend": format!("tcp://10.{}.{}.{}:7502", client, i / 250, i % 250),
                    },
                    "metadata": {"zone": format!("z{}", i % 3), "version": "1.4.2"},
                    "heartbeat_ms": heartbeat_ms,
                }),
            )
        })
        .collect()
}

fn throughput(plan: &Plan) {
    println!(
        "## throughput: {} clients, {} requests in flight each",
        plan.clients, plan.window
    );
    let mut registrations = Vec::new();
    let mut lookups = Vec::new();
    let mut baselines = Vec::new();
    let mut cpu_costs = Vec::new();
    let mut reply_size = 0;
    for run in 0..plan.runs {
        let port = free_port();
        let mut beacon = Node::beacon(port, "max_nodes = 100000");
        // Nodes heartbeat every 10 minutes (the longest allowed) so that they stay online
        // through the run without heartbeat traffic.
        let nodes_per_client = 1000;
        let frames: Vec<Vec<Vec<u8>>> = (0..plan.clients)
            .map(|c| register_frames(c, nodes_per_client, 600_000))
            .collect();
        let (rate, errors) = load(port, frames, plan.window, Limit::Once);
        assert_eq!(errors, 0, "registrations refused");
        registrations.push(rate);

        // Each client asks for the requirements of its own gates, in turn.
        let frames: Vec<Vec<Vec<u8>>> = (0..plan.clients)
            .map(|c| {
                (6..nodes_per_client)
                    .map(|i| request("get_requirements", json!({"node": format!("c{c}-n{i}")})))
                    .collect()
            })
            .collect();
        let cpu_before = beacon.cpu();
        let timer = Instant::now();
        let (rate, errors) = load(
            port,
            frames.clone(),
            plan.window,
            Limit::For(Duration::from_secs_f64(plan.seconds)),
        );
        assert_eq!(errors, 0, "get_requirements refused");
        lookups.push(rate);
        let answered = rate * timer.elapsed().as_secs_f64();
        cpu_costs.push((beacon.cpu() - cpu_before).as_secs_f64() * 1e6 / answered);

        // The size of one answer, for the baseline.
        let context = zmq::Context::new();
        let socket = dealer(&context, port);
        socket.send(&frames[0][0], 0).unwrap();
        let sample = socket.recv_bytes(0).unwrap();
        reply_size = sample.len();
        drop(socket);
        let memory = beacon.memory();
        beacon.kill();

        let port = free_port();
        let stop = Arc::new(AtomicBool::new(false));
        let echo = echo_baseline(port, sample, stop.clone());
        let ping = vec![request("get_requirements", json!({"node": "c1-n6"}))];
        let (rate, _) = load(
            port,
            vec![ping; plan.clients],
            plan.window,
            Limit::For(Duration::from_secs_f64(plan.seconds)),
        );
        stop.store(true, Ordering::Relaxed);
        echo.join().unwrap();
        baselines.push(rate);
        println!(
            "run {}: registrations/s {:>8.0}  get_requirements/s {:>8.0} ({:.1} µs beacon CPU each)  bare ROUTER {:>8.0}  (beacon RSS {} MB)",
            run + 1,
            registrations[run],
            lookups[run],
            cpu_costs[run],
            baselines[run],
            memory.0 >> 20
        );
    }
    let reg = median(&mut registrations);
    let get = median(&mut lookups);
    let base = median(&mut baselines);
    let cpu = median(&mut cpu_costs);
    println!("median registrations/s:     {reg:>8.0}");
    println!(
        "median get_requirements/s:  {get:>8.0}  target 50000: ratio {:.2}  (answers of {reply_size} bytes, {cpu:.1} µs of beacon CPU each)",
        get / 50_000.0
    );
    println!(
        "median bare ROUTER/s:       {base:>8.0}  beacon / bare ROUTER: {:.2}",
        get / base
    );
}

/// Reads events pushed to a watch of every resource; records when each node went down.
fn watcher(
    port: u16,
    down: Arc<std::sync::Mutex<Vec<(String, Instant)>>>,
    stop: Arc<AtomicBool>,
) -> std::thread::JoinHandle<()> {
    let context = zmq::Context::new();
    let socket = dealer(&context, port);
    socket.set_rcvtimeo(100).unwrap();
    std::thread::spawn(move || {
        let _context = context;
        socket
            .send(
                request("watch", json!({"watch": "bench", "resources": []})),
                0,
            )
            .unwrap();
        let mut last_ping = Instant::now();
        while !stop.load(Ordering::Relaxed) {
            if last_ping.elapsed() > Duration::from_secs(10) {
                socket.send(request("ping", json!({})), 0).unwrap();
                last_ping = Instant::now();
            }
            let Ok(frame) = socket.recv_bytes(0) else {
                continue;
            };
            let at = Instant::now();
            let message: Value = serde_json::from_slice(&frame).unwrap();
            if message["op"] == "event" && message["event"]["kind"] == "nodedown" {
                let name = message["event"]["node"]["name"]
                    .as_str()
                    .unwrap()
                    .to_string();
                down.lock().unwrap().push((name, at));
            }
        }
    })
}

fn failure_detection(plan: &Plan) {
    println!("## failure detection: {} nodes at default settings (heartbeat 1s, liveness 3), killed with SIGKILL", plan.kills);
    let port = free_port();
    let _beacon = Node::beacon(port, "");
    let down = Arc::new(std::sync::Mutex::new(Vec::new()));
    let stop = Arc::new(AtomicBool::new(false));
    let watch = watcher(port, down.clone(), stop.clone());
    let mut nodes: Vec<(String, Node)> = (0..plan.kills)
        .map(|i| {
            let name = format!("victim-{port}-{i}");
            let node = Node::start(&format!(
                "name = \"{name}\"\nroles = [\"heartbeat\"]\n[heartbeat]\ninterval = \"1h\"\n\
                 [cluster]\nbeacons = [\"tcp://127.0.0.1:{port}\"]\nresource = \"victim\"\n"
            ));
            (name, node)
        })
        .collect();
    // Let every node register and settle into its heartbeat rhythm.
    std::thread::sleep(Duration::from_secs(3));
    let mut rng = rand::thread_rng();
    let mut killed = Vec::new();
    for (name, node) in &mut nodes {
        // A random phase against the node's heartbeats.
        std::thread::sleep(Duration::from_millis(rng.gen_range(0..1000)));
        killed.push((name.clone(), Instant::now()));
        node.kill();
    }
    let deadline = Instant::now() + Duration::from_secs(30);
    while down.lock().unwrap().len() < killed.len() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(50));
    }
    stop.store(true, Ordering::Relaxed);
    watch.join().unwrap();
    let down = down.lock().unwrap();
    let mut times: Vec<f64> = killed
        .iter()
        .filter_map(|(name, at)| {
            down.iter()
                .find(|(n, _)| n == name)
                .map(|(_, seen)| seen.duration_since(*at).as_secs_f64())
        })
        .collect();
    let missed = killed.len() - times.len();
    times.sort_by(|a, b| a.partial_cmp(b).unwrap());
    let (p50, p90, p99) = (
        percentile(&times, 50.0),
        percentile(&times, 90.0),
        percentile(&times, 99.0),
    );
    println!(
        "detected {}/{}: min {:.2}s  median {:.2}s  p90 {:.2}s  p99 {:.2}s  max {:.2}s",
        times.len(),
        killed.len(),
        times[0],
        p50,
        p90,
        p99,
        times[times.len() - 1]
    );
    println!(
        "target 3.5s: max / target {:.2}",
        times[times.len() - 1] / 3.5
    );
    println!(
        "reference figures (not run here): Erlang net_ticktime 45-75s: median / 45s = {:.3}; ZooKeeper sessions 4-40s: median / 4s = {:.2}",
        p50 / 45.0,
        p50 / 4.0
    );
    assert_eq!(missed, 0, "some kills were never detected");
}

fn memory(plan: &Plan) {
    let nodes = 10_000;
    let clients = 10;
    println!("## memory: {nodes} registered nodes heartbeating every 1s (default max_nodes)");
    let mut rss = Vec::new();
    let mut peaks = Vec::new();
    let mut idles = Vec::new();
    for run in 0..plan.runs.min(3) {
        let port = free_port();
        let beacon = Node::beacon(port, "");
        let idle = beacon.memory().0;
        let frames: Vec<Vec<Vec<u8>>> = (0..clients)
            .map(|c| register_frames(c, nodes / clients, 1000))
            .collect();
        // Each client registers its nodes, then heartbeats every one of them once a second for
        // a few seconds, as real nodes would (the beacon accepts heartbeats from the
        // connection that registered).
        let context = zmq::Context::new();
        let threads: Vec<_> = frames
            .into_iter()
            .enumerate()
            .map(|(c, frames)| {
                let socket = dealer(&context, port);
                let beats: Vec<Vec<u8>> = (0..nodes / clients)
                    .map(|i| request("heartbeat", json!({"node": format!("c{c}-n{i}")})))
                    .collect();
                std::thread::spawn(move || {
                    let total = frames.len() as u64;
                    let (answered, errors) = pump(&socket, &frames, 64, &|sent| sent >= total);
                    assert_eq!((answered, errors), (total, 0), "registrations refused");
                    for _ in 0..3 {
                        let second = Instant::now();
                        let total = beats.len() as u64;
                        let (_, errors) = pump(&socket, &beats, 64, &|sent| sent >= total);
                        assert_eq!(errors, 0, "heartbeats refused");
                        std::thread::sleep(Duration::from_secs(1).saturating_sub(second.elapsed()));
                    }
                })
            })
            .collect();
        for thread in threads {
            thread.join().unwrap();
        }
        let (now, peak) = beacon.memory();
        println!(
            "run {}: idle {:.1} MB, with {nodes} nodes {:.1} MB (peak {:.1} MB)",
            run + 1,
            idle as f64 / 1e6,
            now as f64 / 1e6,
            peak as f64 / 1e6
        );
        idles.push(idle as f64 / 1e6);
        rss.push(now as f64 / 1e6);
        peaks.push(peak as f64 / 1e6);
    }
    let (idle, now, peak) = (median(&mut idles), median(&mut rss), median(&mut peaks));
    println!(
        "median RSS with {nodes} nodes: {now:.1} MB (idle {idle:.1} MB, peak {peak:.1} MB); target 50 MB: ratio {:.2}",
        now / 50.0
    );
}

fn main() {
    // `cargo bench` passes `--bench`; a name filter selects parts.
    let filter: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| !a.starts_with("--"))
        .collect();
    let wanted = |part: &str| filter.is_empty() || filter.iter().any(|f| part.contains(f.as_str()));
    let plan = plan();
    println!(
        "# beacon benchmarks ({} run(s) per figure; the machine may be shared)",
        plan.runs
    );
    if wanted("throughput") {
        throughput(&plan);
    }
    if wanted("failure_detection") {
        failure_detection(&plan);
    }
    if wanted("memory") {
        memory(&plan);
    }
}
