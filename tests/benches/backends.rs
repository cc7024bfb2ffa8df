//! Membership on etcd against membership on the beacon, in one run on this machine: a
//! three-member etcd cluster (Debian's `etcd-server`) and a beacon node (the release `troupe`
//! binary, built with the `etcd` feature), measured the same way in turn:
//!
//! 1. **registrations/s** — 10,000 nodes registered in 5 rounds of 2,000 by 16 concurrent
//!    clients with 32 registrations in flight each, while the nodes already registered
//!    heartbeat every second (the default interval). On the beacon a registration is its
//!    `register` request; on etcd it is what Troupe's etcd client does: grant a lease of 3 s
//!    (interval × liveness), then claim the node's key in a transaction
//!    (`troupe_etcd::actor::claim`), and keep the lease alive every second.
//! 2. **memory** — resident memory (VmRSS) idle and with the 10,000 nodes heartbeating: the
//!    beacon process, and the three etcd members together.
//! 3. **lookups/s** — `LookupResource` through Troupe's own cluster client
//!    (`ClusterClientHandle`, as every role and tool uses it) by 16 concurrent callers, with the
//!    10,000 nodes registered. On etcd the client answers from its watched mirror; the range
//!    read a client makes without a current mirror (a short-lived `troupe cluster lookup`) is
//!    measured as well.
//! 4. **failure detection** — real `troupe` nodes at the defaults (heartbeat 1 s, liveness 3)
//!    killed with SIGKILL at a random moment of their heartbeat cycle, one at a time; the time
//!    from the kill to the node's `nodedown` (beacon) or `removed` (etcd) event at a watcher.
//!
//! Each backend is measured alone on the machine, the beacon first, then etcd: the other's
//! servers and clients are stopped, so that neither's background load (10,000 heartbeats a
//! second) weighs on the other's figures.
//!
//! Run by `make bench`, or alone:
//! `cargo build --release --features troupe-node/etcd --bin troupe && cargo bench -p troupe-tests
//! --features etcd --bench backends`. `TROUPE_BENCH_QUICK=1` makes it short (1,000 nodes, 1 s
//! windows, 3 kills); `TROUPE_BENCH_HEARTBEAT=5` makes the 10,000 nodes heartbeat every 5 s
//! (a lease TTL of 15 s) instead of every second.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use actix::prelude::*;
use futures::StreamExt;
use rand::Rng;
use serde_json::{json, Value};
use troupe_beacon::client::{start_client, ClusterClientHandle, ClusterEvent, LookupResource};
use troupe_beacon::protocol::{EventKind, Registration};
use troupe_beacon::ClusterConfig;
use troupe_tests::bench::median;
use troupe_tests::etcd::Etcd;
use troupe_tests::{free_port, troupe, Proc};

const CLIENTS: usize = 16;
const WINDOW: usize = 32;
const ROUNDS: usize = 5;
const PREFIX: &str = "/troupe/bench/";
const WAIT: Duration = Duration::from_secs(60);

struct Plan {
    nodes: usize,
    window: Duration,
    kills: usize,
    /// The registered nodes' heartbeat interval (1 s, the default; `TROUPE_BENCH_HEARTBEAT`
    /// in seconds): their lease TTL on etcd is 3 of them.
    heartbeat: u64,
}

fn plan() -> Plan {
    let heartbeat = std::env::var("TROUPE_BENCH_HEARTBEAT")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1);
    match std::env::var_os("TROUPE_BENCH_QUICK").is_some() {
        true => Plan {
            nodes: 1_000,
            window: Duration::from_secs(1),
            kills: 3,
            heartbeat,
        },
        false => Plan {
            nodes: 10_000,
            window: Duration::from_secs(3),
            kills: 10,
            heartbeat,
        },
    }
}

/// Node `i` of client `c`: client 0's first three offer `store`; every node requires it.
fn registration(c: usize, i: usize) -> (String, Registration) {
    let name = format!("c{c}-n{i}");
    let resource = match (c, i) {
        (0, 0..=2) => "store",
        _ => "gate",
    };
    let endpoint = |port: u16| format!("tcp://10.{}.{}.{}:{port}", c, i / 250, i % 250);
    let registration: Registration = serde_json::from_value(json!({
        "resource": resource,
        "requires": ["store"],
        "endpoints": {"frontend": endpoint(7501), "backend": endpoint(7502)},
        "metadata": {"zone": format!("z{}", i % 3), "version": "1.4.2"},
    }))
    .unwrap();
    (name, registration)
}

fn rss_bytes(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        .map_or(0, |kb| kb * 1024)
}

fn mb(bytes: u64) -> f64 {
    bytes as f64 / 1e6
}

/// The beacon node: `troupe run --roles beacon` on a free port.
fn start_beacon(dir: &std::path::Path) -> (Proc, u16) {
    let port = free_port();
    let config = dir.join("beacon.toml");
    std::fs::write(
        &config,
        format!(
            "name = \"bench-beacon\"\nroles = [\"beacon\"]\n[control]\nsocket = \"{}/beacon.ctl\"\n\
             [beacon]\nbind = \"tcp://127.0.0.1:{port}\"\nmax_nodes = 20000\n",
            dir.display()
        ),
    )
    .unwrap();
    let mut cmd = troupe();
    cmd.args(["run", "--log-level", "warn,troupe_node=info", "--config"])
        .arg(&config);
    let mut proc = Proc::spawn(cmd);
    proc.wait_for(&["node ready"], WAIT);
    (proc, port)
}

// ---- beacon clients: DEALER sockets, one thread each ----

fn request(op: &str, mut body: Value) -> Vec<u8> {
    body["v"] = json!(1);
    body["op"] = json!(op);
    serde_json::to_vec(&body).unwrap()
}

/// Sends every frame with `WINDOW` in flight and reads every answer; returns the errors.
fn pump(socket: &zmq::Socket, frames: &[Vec<u8>]) -> u64 {
    let (mut sent, mut answered, mut errors) = (0, 0, 0);
    while answered < frames.len() {
        while sent < frames.len() && sent - answered < WINDOW {
            socket.send(&frames[sent], 0).unwrap();
            sent += 1;
        }
        let reply = socket.recv_bytes(0).expect("a beacon answer within 10 s");
        if reply.get(7..19) == Some(b"\"op\":\"error\"".as_slice()) {
            errors += 1;
        }
        answered += 1;
    }
    errors
}

enum Work {
    Register(Vec<(String, Registration)>),
    Stop,
}

/// A beacon client thread: registers what it is given, and heartbeats every node it
/// registered every `heartbeat`. Reports each round's end.
fn beacon_client(
    context: zmq::Context,
    port: u16,
    heartbeat: Duration,
    work: std::sync::mpsc::Receiver<Work>,
    done: std::sync::mpsc::Sender<u64>,
) {
    let socket = context.socket(zmq::DEALER).unwrap();
    socket.set_linger(0).unwrap();
    socket.set_rcvtimeo(10_000).unwrap();
    socket.set_sndhwm(100_000).unwrap();
    socket.set_rcvhwm(100_000).unwrap();
    socket.connect(&format!("tcp://127.0.0.1:{port}")).unwrap();
    let mut beats: Vec<Vec<u8>> = Vec::new();
    let mut next_beat = Instant::now();
    loop {
        match work.recv_timeout(next_beat.saturating_duration_since(Instant::now())) {
            Ok(Work::Register(nodes)) => {
                let frames: Vec<Vec<u8>> = nodes
                    .iter()
                    .map(|(name, r)| {
                        let mut body = serde_json::to_value(r).unwrap();
                        body["node"] = json!(name);
                        body["heartbeat_ms"] = json!(heartbeat.as_millis() as u64);
                        request("register", body)
                    })
                    .collect();
                let errors = pump(&socket, &frames);
                beats.extend(
                    nodes
                        .iter()
                        .map(|(name, _)| request("heartbeat", json!({"node": name}))),
                );
                done.send(errors).unwrap();
            }
            Ok(Work::Stop) | Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => return,
            Err(std::sync::mpsc::RecvTimeoutError::Timeout) => {
                let errors = pump(&socket, &beats);
                assert_eq!(errors, 0, "heartbeats refused");
                next_beat += heartbeat;
            }
        }
    }
}

// ---- etcd clients: Troupe's registration calls on a tokio runtime of their own ----

/// One etcd client: registers its nodes as Troupe's etcd client does, and hands each lease to
/// its keeper as soon as the key is claimed.
async fn etcd_client(
    endpoints: Vec<String>,
    heartbeat: Duration,
    mut work: tokio::sync::mpsc::UnboundedReceiver<Work>,
    done: tokio::sync::mpsc::UnboundedSender<u64>,
    lost: Arc<AtomicU64>,
) {
    let client = etcd_client::Client::connect(&endpoints, None)
        .await
        .expect("etcd answers");
    let timeout = Duration::from_secs(10);
    let (leases, granted) = tokio::sync::mpsc::unbounded_channel();
    let keeper = tokio::spawn(keep_alive(client.clone(), heartbeat, granted, lost));
    while let Some(Work::Register(nodes)) = work.recv().await {
        let results: Vec<Result<(), String>> = futures::stream::iter(nodes)
            .map(|(name, registration)| {
                let (mut client, leases) = (client.clone(), leases.clone());
                async move {
                    let lease = client
                        .lease_grant(3 * heartbeat.as_secs() as i64, None)
                        .await
                        .map_err(|e| e.to_string())?
                        .id();
                    let key = troupe_etcd::core::node_key(PREFIX, &name);
                    let value = troupe_etcd::core::encode(&name, &registration, heartbeat);
                    match troupe_etcd::actor::claim(client, key, value, lease, timeout).await? {
                        troupe_etcd::core::Claim::Put => leases
                            .send(lease)
                            .map_err(|_| "the keeper stopped".to_string()),
                        other => Err(format!("{other:?}")),
                    }
                }
            })
            .buffer_unordered(WINDOW)
            .collect()
            .await;
        let errors = results.iter().filter(|r| r.is_err()).count() as u64;
        done.send(errors).unwrap();
    }
    keeper.abort();
}

/// Keeps every lease it is given alive every `heartbeat`, each on its own keep-alive stream as
/// each node's client does: all renewals of a beat are sent, then their answers read. A lease
/// etcd no longer knows (it expired) is counted in `lost` and dropped.
async fn keep_alive(
    client: etcd_client::Client,
    heartbeat: Duration,
    mut granted: tokio::sync::mpsc::UnboundedReceiver<i64>,
    lost: Arc<AtomicU64>,
) {
    let mut keepers = Vec::new();
    let mut tick = tokio::time::interval(heartbeat);
    loop {
        tick.tick().await;
        let mut fresh = Vec::new();
        while let Ok(lease) = granted.try_recv() {
            fresh.push(lease);
        }
        let opened = futures::future::join_all(fresh.into_iter().map(|lease| {
            let mut client = client.clone();
            async move { client.lease_keep_alive(lease).await }
        }))
        .await;
        for stream in opened {
            match stream {
                Ok(stream) => keepers.push(stream),
                Err(_) => {
                    lost.fetch_add(1, Ordering::Relaxed);
                }
            }
        }
        let mut sent = Vec::with_capacity(keepers.len());
        for (keeper, _) in keepers.iter_mut() {
            sent.push(keeper.keep_alive().await.is_ok());
        }
        let answered = futures::future::join_all(keepers.iter_mut().zip(&sent).map(
            |((_, stream), sent)| async move {
                *sent && matches!(stream.message().await, Ok(Some(a)) if a.ttl() > 0)
            },
        ))
        .await;
        let before = keepers.len();
        let mut alive = answered.into_iter();
        keepers.retain(|_| alive.next().unwrap_or(false));
        lost.fetch_add((before - keepers.len()) as u64, Ordering::Relaxed);
    }
}

// ---- one backend under measurement ----

/// Where a round of registrations goes.
enum Registrars {
    Beacon(
        Vec<std::sync::mpsc::Sender<Work>>,
        std::sync::mpsc::Receiver<u64>,
    ),
    Etcd(
        Vec<tokio::sync::mpsc::UnboundedSender<Work>>,
        tokio::sync::mpsc::UnboundedReceiver<u64>,
    ),
}

impl Registrars {
    /// Registers nodes `from..to` of every client; the rate and the refusals.
    async fn round(&mut self, from: usize, to: usize) -> (f64, u64) {
        let start = Instant::now();
        let mut errors = 0;
        match self {
            Registrars::Beacon(clients, done) => {
                for (c, client) in clients.iter().enumerate() {
                    let nodes = (from..to).map(|i| registration(c, i)).collect();
                    client.send(Work::Register(nodes)).unwrap();
                }
                for _ in 0..clients.len() {
                    // Blocking this thread is harmless: the etcd clients have their own.
                    errors += done.recv_timeout(WAIT).expect("a round ends");
                }
            }
            Registrars::Etcd(clients, done) => {
                for (c, client) in clients.iter().enumerate() {
                    let nodes = (from..to).map(|i| registration(c, i)).collect();
                    client.send(Work::Register(nodes)).unwrap();
                }
                for _ in 0..clients.len() {
                    errors += tokio::time::timeout(WAIT * 5, done.recv())
                        .await
                        .expect("a round ends")
                        .expect("a client runs");
                }
            }
        }
        let count = (to - from) * CLIENTS;
        (count as f64 / start.elapsed().as_secs_f64(), errors)
    }

    fn stop(self) {
        match self {
            Registrars::Beacon(clients, _) => clients.iter().for_each(|c| {
                let _ = c.send(Work::Stop);
            }),
            Registrars::Etcd(clients, _) => clients.iter().for_each(|c| {
                let _ = c.send(Work::Stop);
            }),
        }
    }
}

/// `LookupResource("store")` by `CLIENTS` concurrent callers for `window`: answers (naming a
/// store) per second, and the calls that failed or found none.
async fn lookups(handle: &ClusterClientHandle, window: Duration) -> (f64, u64) {
    let answered = Arc::new(AtomicU64::new(0));
    let failed = Arc::new(AtomicU64::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let callers: Vec<_> = (0..CLIENTS)
        .map(|_| {
            let (handle, answered, stop) = (handle.clone(), answered.clone(), stop.clone());
            let failed = failed.clone();
            actix_rt::spawn(async move {
                while !stop.load(Ordering::Relaxed) {
                    let found = handle
                        .send(LookupResource("store".into()))
                        .await
                        .expect("the client runs");
                    match found {
                        Ok(found) if !found.is_empty() => answered.fetch_add(1, Ordering::Relaxed),
                        _ => failed.fetch_add(1, Ordering::Relaxed),
                    };
                }
            })
        })
        .collect();
    let start = Instant::now();
    let before = answered.load(Ordering::Relaxed);
    tokio::time::sleep(window).await;
    let rate = (answered.load(Ordering::Relaxed) - before) as f64 / start.elapsed().as_secs_f64();
    stop.store(true, Ordering::Relaxed);
    for caller in callers {
        caller.await.unwrap();
    }
    (rate, failed.load(Ordering::Relaxed))
}

/// The range read a client without a current mirror makes, then the lookup over its nodes,
/// by `CLIENTS` concurrent callers for `window`: reads per second.
async fn range_read_lookups(endpoints: Vec<String>, window: Duration) -> f64 {
    let client = etcd_client::Client::connect(&endpoints, None)
        .await
        .unwrap();
    let answered = Arc::new(AtomicU64::new(0));
    let deadline = tokio::time::Instant::now() + window;
    let start = Instant::now();
    let callers: Vec<_> = (0..CLIENTS)
        .map(|_| {
            let (client, answered) = (client.clone(), answered.clone());
            tokio::spawn(async move {
                while tokio::time::Instant::now() < deadline {
                    let timeout = Duration::from_secs(30);
                    let read = troupe_etcd::actor::read_all(client.clone(), PREFIX, timeout).await;
                    let Ok((_, _, entries)) = read else {
                        continue;
                    };
                    let nodes = troupe_etcd::core::decode_all(PREFIX, entries, &mut Vec::new());
                    if !troupe_etcd::core::lookup(&nodes, "store").is_empty() {
                        answered.fetch_add(1, Ordering::Relaxed);
                    }
                }
            })
        })
        .collect();
    for caller in callers {
        caller.await.unwrap();
    }
    answered.load(Ordering::Relaxed) as f64 / start.elapsed().as_secs_f64()
}

// ---- failure detection ----

/// Records when each node came up and went down, as a subscription tells it.
struct Watcher {
    seen: tokio::sync::mpsc::UnboundedSender<(String, bool, Instant)>,
}

impl Actor for Watcher {
    type Context = Context<Self>;
}

impl Handler<ClusterEvent> for Watcher {
    type Result = ();

    fn handle(&mut self, event: ClusterEvent, _: &mut Self::Context) {
        let now = Instant::now();
        match event {
            ClusterEvent::Snapshot { nodes, .. } => {
                for node in nodes {
                    let _ = self.seen.send((node.name.clone(), true, now));
                }
            }
            ClusterEvent::Change { event, .. } => {
                let up = matches!(event.kind, EventKind::Nodeup | EventKind::Changed);
                let _ = self.seen.send((event.node.name.clone(), up, now));
            }
        }
    }
}

/// The events of one backend's watcher: who is up, and when each went down.
struct Seen {
    events: tokio::sync::mpsc::UnboundedReceiver<(String, bool, Instant)>,
    up: HashMap<String, bool>,
    down_at: HashMap<String, Instant>,
}

impl Seen {
    async fn watch(handle: &ClusterClientHandle) -> Seen {
        let (tx, events) = tokio::sync::mpsc::unbounded_channel();
        let recipient = Watcher { seen: tx }.start().recipient();
        handle
            .send(troupe_beacon::client::Subscribe {
                resources: vec!["victim".into()],
                since: None,
                recipient,
            })
            .await
            .unwrap()
            .expect("subscribed");
        Seen {
            events,
            up: HashMap::new(),
            down_at: HashMap::new(),
        }
    }

    async fn until(&mut self, what: &str, check: impl Fn(&Seen) -> bool) {
        let deadline = tokio::time::Instant::now() + WAIT;
        while !check(self) {
            match tokio::time::timeout_at(deadline, self.events.recv()).await {
                Ok(Some((name, up, at))) => {
                    if !up {
                        self.down_at.entry(name.clone()).or_insert(at);
                    }
                    self.up.insert(name, up);
                }
                _ => panic!("not {what} within {WAIT:?}"),
            }
        }
    }
}

/// A real node at the defaults that registers `victim`.
fn victim(dir: &std::path::Path, name: &str, cluster: &str) -> Proc {
    let config = dir.join(format!("{name}.toml"));
    std::fs::write(
        &config,
        format!(
            "name = \"{name}\"\nroles = [\"ipc\"]\n[ipc]\nsocket = \"{d}/{name}.ipc\"\n\
             [control]\nsocket = \"{d}/{name}.ctl\"\n[cluster]\nresources = [\"victim\"]\n{cluster}\n",
            d = dir.display()
        ),
    )
    .unwrap();
    let mut cmd = troupe();
    cmd.args(["run", "--log-level", "warn", "--config"])
        .arg(&config);
    Proc::spawn(cmd)
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    let rank = ((p / 100.0) * (sorted.len() as f64 - 1.0)).round() as usize;
    sorted[rank.min(sorted.len() - 1)]
}

fn summary(label: &str, mut values: Vec<f64>) -> f64 {
    values.sort_by(|a, b| a.partial_cmp(b).unwrap());
    let med = median(&mut values.clone());
    println!(
        "{label}: min {:.2} s, median {med:.2} s, p90 {:.2} s, max {:.2} s ({} kills)",
        values[0],
        percentile(&values, 90.0),
        values[values.len() - 1],
        values.len()
    );
    med
}

/// What one backend measured.
struct Measured {
    registrations: f64,
    idle: u64,
    loaded: u64,
    lookups: f64,
    range_reads: Option<f64>,
    detection: Vec<f64>,
    lost: u64,
}

/// The servers of one backend: a beacon node, or a three-member etcd cluster.
enum Server {
    Beacon(Proc, u16),
    Etcd(Etcd),
}

impl Server {
    fn rss(&self) -> u64 {
        match self {
            Server::Beacon(proc, _) => rss_bytes(proc.pid()),
            Server::Etcd(etcd) => etcd
                .members
                .iter()
                .filter_map(|m| m.pid())
                .map(rss_bytes)
                .sum(),
        }
    }

    /// The `[cluster]` keys of a client of this backend.
    fn cluster(&self) -> String {
        match self {
            Server::Beacon(_, port) => format!("beacons = [\"tcp://127.0.0.1:{port}\"]\n"),
            Server::Etcd(etcd) => format!(
                "backend = \"etcd\"\netcd_endpoints = [{}]\netcd_prefix = \"{PREFIX}\"\n",
                etcd.endpoints()
            ),
        }
    }

    fn config(&self) -> ClusterConfig {
        let value = match self {
            Server::Beacon(_, port) => json!({"beacons": [format!("tcp://127.0.0.1:{port}")]}),
            Server::Etcd(etcd) => json!({
                "backend": "etcd",
                "etcd_endpoints": etcd.urls(),
                "etcd_prefix": PREFIX,
                "request_timeout": "30s",
            }),
        };
        serde_json::from_value(value).unwrap()
    }
}

/// Every measure of one backend, alone on the machine: its servers start, and stop at the end.
async fn measure(name: &str, plan: &Plan, dir: &std::path::Path) -> Measured {
    let server = match name {
        "beacon" => {
            let (proc, port) = start_beacon(dir);
            Server::Beacon(proc, port)
        }
        _ => Server::Etcd(Etcd::start(3)),
    };
    println!("## {name}");
    let idle = server.rss();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let lost = Arc::new(AtomicU64::new(0));

    // 1. Registrations, while the nodes registered so far heartbeat.
    let mut registrars = match &server {
        Server::Beacon(_, port) => {
            let context = zmq::Context::new();
            let (done_tx, done) = std::sync::mpsc::channel();
            let clients = (0..CLIENTS)
                .map(|_| {
                    let (tx, rx) = std::sync::mpsc::channel();
                    let (context, done, port) = (context.clone(), done_tx.clone(), *port);
                    let heartbeat = Duration::from_secs(plan.heartbeat);
                    std::thread::spawn(move || beacon_client(context, port, heartbeat, rx, done));
                    tx
                })
                .collect();
            Registrars::Beacon(clients, done)
        }
        Server::Etcd(etcd) => {
            let (done_tx, done) = tokio::sync::mpsc::unbounded_channel();
            let clients = (0..CLIENTS)
                .map(|_| {
                    let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
                    let heartbeat = Duration::from_secs(plan.heartbeat);
                    let urls = etcd.urls();
                    runtime.spawn(etcd_client(
                        urls,
                        heartbeat,
                        rx,
                        done_tx.clone(),
                        lost.clone(),
                    ));
                    tx
                })
                .collect();
            Registrars::Etcd(clients, done)
        }
    };
    let per_client = plan.nodes / CLIENTS;
    let step = per_client / ROUNDS;
    let mut rates = Vec::new();
    for round in 0..ROUNDS {
        let (rate, errors) = registrars.round(round * step, (round + 1) * step).await;
        println!(
            "round {}: {rate:.0} registrations/s ({errors} failed)",
            round + 1
        );
        rates.push(rate);
    }
    let registrations = median(&mut rates);

    // 2. Memory with every node registered and heartbeating (three beats after the last).
    tokio::time::sleep(Duration::from_secs(3 * plan.heartbeat)).await;
    let loaded = server.rss();
    println!(
        "memory: {:.1} MB idle, {:.1} MB with {} nodes; leases lost so far: {}",
        mb(idle),
        mb(loaded),
        plan.nodes,
        lost.load(Ordering::Relaxed)
    );

    // 3. Lookups through Troupe's client (and, on etcd, by range reads).
    let (handle, _) = start_client(&server.config(), &format!("bench-lookups-{name}"), false)
        .await
        .unwrap();
    // Warm-up: the client connects; on etcd its mirror reads the cluster and starts watching.
    let deadline = Instant::now() + WAIT;
    while lookups(&handle, Duration::from_secs(1)).await.1 > 0 {
        assert!(Instant::now() < deadline, "{name}: lookups never answered");
    }
    let (mut looked, mut read) = (Vec::new(), Vec::new());
    for run in 0..3 {
        let (rate, failed) = lookups(&handle, plan.window).await;
        looked.push(rate);
        print!("run {}: {rate:.0} lookups/s ({failed} failed)", run + 1);
        if let Server::Etcd(etcd) = &server {
            let rate = runtime
                .spawn(range_read_lookups(etcd.urls(), plan.window))
                .await
                .unwrap();
            read.push(rate);
            print!(", {rate:.1} lookups/s by range read");
        }
        println!();
    }
    let lookups = median(&mut looked);
    let range_reads = (!read.is_empty()).then(|| median(&mut read));

    // 4. Failure detection at the defaults, one node at a time.
    let mut seen = Seen::watch(&handle).await;
    let mut detection = Vec::new();
    for kill in 0..plan.kills {
        let victim_name = format!("victim-{name}-{kill}");
        let mut node = victim(dir, &victim_name, &server.cluster());
        seen.until(&format!("{victim_name} up"), |s| {
            s.up.get(&victim_name) == Some(&true)
        })
        .await;
        // A random moment of its heartbeat cycle.
        let pause = Duration::from_millis(1000 + rand::thread_rng().gen_range(0..1000));
        tokio::time::sleep(pause).await;
        node.kill_now();
        let at = Instant::now();
        seen.until(&format!("{victim_name} down"), |s| {
            s.down_at.contains_key(&victim_name)
        })
        .await;
        detection.push((seen.down_at[&victim_name] - at).as_secs_f64());
    }
    let lost = lost.load(Ordering::Relaxed);
    registrars.stop();
    runtime.shutdown_background();
    drop(server);
    Measured {
        registrations,
        idle,
        loaded,
        lookups,
        range_reads,
        detection,
        lost,
    }
}

async fn bench() {
    let plan = plan();
    let dir = tempfile::tempdir().unwrap();
    troupe_etcd::install();
    println!(
        "# membership backends, each alone in turn: {} nodes heartbeating every {} s, {CLIENTS} clients × {WINDOW} in flight",
        plan.nodes, plan.heartbeat
    );
    let beacon = measure("beacon", &plan, dir.path()).await;
    let etcd = measure("etcd", &plan, dir.path()).await;
    println!("## summary: etcd (three members) against the beacon, in this run");
    println!(
        "registrations/s, median of {ROUNDS} rounds: beacon {:.0}, etcd {:.0}; etcd / beacon {:.3}",
        beacon.registrations,
        etcd.registrations,
        etcd.registrations / beacon.registrations
    );
    println!(
        "memory: beacon {:.1} MB idle, {:.1} MB with {} nodes; etcd {:.1} MB idle, {:.1} MB; etcd / beacon {:.1}",
        mb(beacon.idle),
        mb(beacon.loaded),
        plan.nodes,
        mb(etcd.idle),
        mb(etcd.loaded),
        etcd.loaded as f64 / beacon.loaded as f64
    );
    println!(
        "lookups/s, median of 3: beacon {:.0}, etcd from the client's mirror {:.0} ({:.1} × the beacon), etcd by range read {:.1}",
        beacon.lookups,
        etcd.lookups,
        etcd.lookups / beacon.lookups,
        etcd.range_reads.unwrap_or_default()
    );
    let b = summary("failure detection, beacon (nodedown)", beacon.detection);
    let e = summary("failure detection, etcd (removed)", etcd.detection);
    println!("failure detection medians: etcd / beacon {:.2}", e / b);
    println!(
        "etcd leases lost (expired before a renewal was answered): {} of {}",
        etcd.lost, plan.nodes
    );
}

fn main() {
    // `cargo bench` passes `--bench`; this benchmark takes no other argument.
    actix_rt::System::new().block_on(bench());
}
