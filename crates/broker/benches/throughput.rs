//! Broker throughput and latency against libzmq's own `zmq::proxy`, in the same run with the
//! same clients and workers.
//!
//! Clients are DEALER sockets keeping a fixed number of requests in flight (64 in all by
//! default, 64-byte bodies); workers are DEALER echo loops that answer each request with its
//! own frames. Targets, each measured `runs` times, interleaved:
//!
//! - `proxy`: ROUTER ↔ DEALER `zmq::proxy` (round robin, no heartbeats, no flow control);
//! - `broker`: the Troupe broker's socket loop, Paranoid Pirate frontend; the workers announce
//!   their free concurrency in 3-byte control frames without the seed's empty frame, so they
//!   get exactly the frames the proxy gives them (`[client, "", body]`);
//! - `broker/seed`: the same with the seed framing (an empty frame before everything);
//! - `majordomo/pp`: Majordomo clients to the `broker` workers, by service name;
//! - `majordomo`: Majordomo clients and Majordomo workers (one request per worker at a time,
//!   as the protocol has it).
//!
//! Environment: `TROUPE_BENCH_QUICK=1` (1 s, one run each), `TROUPE_BENCH_SECONDS`,
//! `TROUPE_BENCH_RUNS`, `TROUPE_BENCH_WORKERS`, `TROUPE_BENCH_CLIENTS`,
//! `TROUPE_BENCH_IN_FLIGHT` (total), `TROUPE_BENCH_BODY` (bytes).

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use troupe_broker::config::BrokerConfig;
use troupe_broker::socket_loop;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Target {
    Proxy,
    Broker,
    BrokerSeed,
    MajordomoToPirate,
    Majordomo,
}

impl Target {
    fn name(self) -> &'static str {
        match self {
            Target::Proxy => "proxy",
            Target::Broker => "broker",
            Target::BrokerSeed => "broker/seed",
            Target::MajordomoToPirate => "majordomo/pp",
            Target::Majordomo => "majordomo",
        }
    }
}

#[derive(Clone, Copy)]
struct Params {
    seconds: f64,
    warmup: Duration,
    runs: usize,
    workers: usize,
    clients: usize,
    in_flight: usize,
    body: usize,
}

fn env<T: std::str::FromStr>(name: &str, default: T) -> T {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

struct Measure {
    requests_per_second: f64,
    p50_us: f64,
    p99_us: f64,
}

fn main() {
    let quick = std::env::var_os("TROUPE_BENCH_QUICK").is_some();
    let params = Params {
        seconds: env("TROUPE_BENCH_SECONDS", if quick { 1.0 } else { 5.0 }),
        warmup: Duration::from_millis(if quick { 200 } else { 1000 }),
        runs: env("TROUPE_BENCH_RUNS", if quick { 1 } else { 5 }),
        workers: env("TROUPE_BENCH_WORKERS", 2),
        clients: env("TROUPE_BENCH_CLIENTS", 4),
        in_flight: env("TROUPE_BENCH_IN_FLIGHT", 64),
        body: env("TROUPE_BENCH_BODY", 64),
    };
    println!(
        "broker throughput: {} clients, {} requests in flight, {} B bodies, {} echo workers, {} s × {} runs",
        params.clients, params.in_flight, params.body, params.workers, params.seconds, params.runs
    );
    let targets = [
        Target::Proxy,
        Target::Broker,
        Target::BrokerSeed,
        Target::MajordomoToPirate,
        Target::Majordomo,
    ];
    let mut results: Vec<(Target, Vec<Measure>)> =
        targets.iter().map(|t| (*t, Vec::new())).collect();
    for run in 0..params.runs {
        for (target, measures) in results.iter_mut() {
            let m = measure(*target, params);
            println!(
                "  run {} {:<13} {:>10.0} req/s   p50 {:>7.0} µs   p99 {:>7.0} µs",
                run + 1,
                target.name(),
                m.requests_per_second,
                m.p50_us,
                m.p99_us
            );
            measures.push(m);
        }
    }
    println!("medians over {} runs:", params.runs);
    let mut proxy_rps = 0.0;
    for (target, measures) in &results {
        let rps = median(measures.iter().map(|m| m.requests_per_second).collect());
        let p50 = median(measures.iter().map(|m| m.p50_us).collect());
        let p99 = median(measures.iter().map(|m| m.p99_us).collect());
        if *target == Target::Proxy {
            proxy_rps = rps;
        }
        println!(
            "  {:<13} {:>10.0} req/s   p50 {:>7.0} µs   p99 {:>7.0} µs   {:.2}× proxy",
            target.name(),
            rps,
            p50,
            p99,
            rps / proxy_rps
        );
    }
    let broker = &results[1].1; // Target::Broker
    let ratio = median(broker.iter().map(|m| m.requests_per_second).collect()) / proxy_rps;
    println!(
        "broker/proxy throughput ratio {ratio:.2} (target ≥ 0.80): {}",
        if ratio >= 0.8 { "met" } else { "NOT met" }
    );
}

fn median(mut values: Vec<f64>) -> f64 {
    values.sort_by(|a, b| a.total_cmp(b));
    let n = values.len();
    if n == 0 {
        return 0.0;
    }
    if !n.is_multiple_of(2) {
        values[n / 2]
    } else {
        (values[n / 2 - 1] + values[n / 2]) / 2.0
    }
}

/// One measurement of `target`: start it, its workers and clients, warm up, count replies.
fn measure(target: Target, params: Params) -> Measure {
    let (client_endpoint, worker_endpoint, stop_target) = start_target(target);
    let stop = Arc::new(AtomicBool::new(false));
    let workers: Vec<JoinHandle<()>> = (0..params.workers)
        .map(|_| {
            let endpoint = worker_endpoint.clone();
            let stop = stop.clone();
            let framing = match target {
                Target::Majordomo => WorkerFraming::Majordomo,
                Target::BrokerSeed => WorkerFraming::Seed,
                _ => WorkerFraming::Pirate,
            };
            std::thread::spawn(move || echo_worker(&endpoint, framing, &stop))
        })
        .collect();
    let start = Instant::now();
    let measure_from = start + params.warmup;
    let measure_until = measure_from + Duration::from_secs_f64(params.seconds);
    let per_client = (params.in_flight / params.clients).max(1);
    let clients: Vec<JoinHandle<Vec<u32>>> = (0..params.clients)
        .map(|_| {
            let endpoint = client_endpoint.clone();
            let service: Option<&'static [u8]> = match target {
                Target::MajordomoToPirate => Some(b"echo"),
                Target::Majordomo => Some(b"echo-mdp"),
                _ => None,
            };
            std::thread::spawn(move || {
                client(
                    &endpoint,
                    service,
                    per_client,
                    params.body,
                    measure_from,
                    measure_until,
                )
            })
        })
        .collect();
    let mut latencies: Vec<u32> = clients
        .into_iter()
        .flat_map(|c| c.join().expect("client thread"))
        .collect();
    stop.store(true, Ordering::Relaxed);
    for w in workers {
        let _ = w.join();
    }
    stop_target();
    latencies.sort_unstable();
    let pct = |p: f64| -> f64 {
        if latencies.is_empty() {
            return 0.0;
        }
        latencies[((latencies.len() as f64 * p) as usize).min(latencies.len() - 1)] as f64
    };
    Measure {
        requests_per_second: latencies.len() as f64 / params.seconds,
        p50_us: pct(0.50),
        p99_us: pct(0.99),
    }
}

type Stop = Box<dyn FnOnce()>;

/// Starts `target`; returns where clients connect, where workers connect, and how to stop it.
fn start_target(target: Target) -> (String, String, Stop) {
    match target {
        Target::Proxy => {
            let mut context = zmq::Context::new();
            let frontend = context.socket(zmq::ROUTER).unwrap();
            let backend = context.socket(zmq::DEALER).unwrap();
            for s in [&frontend, &backend] {
                s.set_linger(0).unwrap();
                s.bind("tcp://127.0.0.1:*").unwrap();
            }
            let front = frontend.get_last_endpoint().unwrap().unwrap();
            let back = backend.get_last_endpoint().unwrap().unwrap();
            let thread = std::thread::Builder::new()
                .name("zmq-proxy".into())
                .spawn(move || {
                    // Returns with ETERM once the context is destroyed.
                    let _ = zmq::proxy(&frontend, &backend);
                })
                .unwrap();
            let stop: Stop = Box::new(move || {
                let _ = context.destroy();
                let _ = thread.join();
            });
            (front, back, stop)
        }
        Target::Broker | Target::BrokerSeed | Target::MajordomoToPirate | Target::Majordomo => {
            let config: BrokerConfig = toml::from_str(
                r#"
                frontend = "tcp://127.0.0.1:*"
                backend = "tcp://127.0.0.1:*"
                linger = "0ms"
                drain_timeout = "100ms"
                majordomo.bind = "tcp://127.0.0.1:*"
                "#,
            )
            .unwrap();
            config.validate().unwrap();
            let (handle, bound) =
                socket_loop::start_blocking(config, tracing::Span::none()).expect("broker starts");
            let majordomo = bound.majordomo.clone().unwrap();
            let (clients, workers) = match target {
                Target::Broker | Target::BrokerSeed => (
                    bound.services[0].frontend.clone(),
                    bound.services[0].backend.clone(),
                ),
                Target::MajordomoToPirate => (majordomo, bound.services[0].backend.clone()),
                _ => (majordomo.clone(), majordomo),
            };
            let stop: Stop = Box::new(move || {
                let _ = handle.drain_blocking(Duration::from_millis(100));
            });
            (clients, workers, stop)
        }
    }
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum WorkerFraming {
    /// Paranoid Pirate frames, 3-byte control frames announcing 64 free.
    Pirate,
    /// The seed framing, announcing 64 free.
    Seed,
    /// Majordomo.
    Majordomo,
}

/// A DEALER echo loop: READY and a heartbeat every 500 ms in its framing; any request is
/// answered with its own frames.
fn echo_worker(endpoint: &str, framing: WorkerFraming, stop: &AtomicBool) {
    let context = zmq::Context::new();
    let socket = context.socket(zmq::DEALER).unwrap();
    socket.set_linger(0).unwrap();
    socket.connect(endpoint).unwrap();
    let majordomo = framing == WorkerFraming::Majordomo;
    let (ready, heartbeat): (Vec<&[u8]>, Vec<&[u8]>) = match framing {
        WorkerFraming::Pirate => (vec![b"\x01\x01\x40"], vec![b"\x02\x01\x40"]),
        WorkerFraming::Seed => (vec![b"", b"\x01\x01\x40"], vec![b"", b"\x02\x01\x40"]),
        WorkerFraming::Majordomo => (
            vec![b"", b"MDPW01", b"\x01", b"echo-mdp"],
            vec![b"", b"MDPW01", b"\x04"],
        ),
    };
    socket.send_multipart(&ready, 0).unwrap();
    let mut next_heartbeat = Instant::now() + Duration::from_millis(500);
    while !stop.load(Ordering::Relaxed) {
        if socket.poll(zmq::POLLIN, 100).unwrap_or(0) > 0 {
            while let Ok(mut frames) = socket.recv_multipart(zmq::DONTWAIT) {
                if majordomo {
                    // [“”, MDPW01, 0x02, client, “”, body…] → REPLY with the same tail.
                    if frames.len() >= 6 && frames[2] == b"\x02" {
                        frames[2] = b"\x03".to_vec();
                        let _ = socket.send_multipart(frames, zmq::DONTWAIT);
                    }
                } else if frames.len() > 2 {
                    let _ = socket.send_multipart(frames, zmq::DONTWAIT);
                }
            }
        }
        if Instant::now() >= next_heartbeat {
            next_heartbeat = Instant::now() + Duration::from_millis(500);
            let _ = socket.send_multipart(&heartbeat, zmq::DONTWAIT);
        }
    }
}

/// A DEALER client keeping `in_flight` requests outstanding, over Paranoid Pirate framing or,
/// with `service`, Majordomo; returns the latency (µs) of every reply received within the
/// measurement window.
fn client(
    endpoint: &str,
    service: Option<&[u8]>,
    in_flight: usize,
    body_size: usize,
    from: Instant,
    until: Instant,
) -> Vec<u32> {
    let context = zmq::Context::new();
    let socket = context.socket(zmq::DEALER).unwrap();
    socket.set_linger(0).unwrap();
    socket.connect(endpoint).unwrap();
    let epoch = Instant::now();
    let mut body = vec![0u8; body_size.max(8)];
    let mut send = |socket: &zmq::Socket| {
        let sent = epoch.elapsed().as_nanos() as u64;
        body[..8].copy_from_slice(&sent.to_le_bytes());
        let frames: Vec<&[u8]> = match service {
            Some(name) => vec![b"", b"MDPC01", name, &body],
            None => vec![b"", &body],
        };
        socket.send_multipart(frames, 0).unwrap();
    };
    for _ in 0..in_flight {
        send(&socket);
    }
    let mut latencies = Vec::with_capacity(1 << 20);
    let mut outstanding = in_flight;
    let mut sending = true;
    while outstanding > 0 {
        if sending && Instant::now() >= until {
            sending = false;
        }
        // After the window, wait a little for the last replies, then give up on them.
        let timeout = if sending { 1000 } else { 200 };
        if socket.poll(zmq::POLLIN, timeout).unwrap_or(0) == 0 {
            if sending {
                continue;
            }
            break;
        }
        let frames = socket.recv_multipart(0).unwrap();
        outstanding -= 1;
        let now = Instant::now();
        let Some(reply) = frames.last().filter(|b| b.len() >= 8) else {
            continue;
        };
        let sent = u64::from_le_bytes(reply[..8].try_into().unwrap());
        let latency = epoch.elapsed().as_nanos() as u64 - sent;
        if now >= from && now < until {
            latencies.push((latency / 1000) as u32);
        }
        if sending {
            send(&socket);
            outstanding += 1;
        }
    }
    latencies
}
