//! The control plane against real release `troupe` nodes (`make bench` builds them):
//!
//! 1. **`ctl status` with 1000 services.** A node supervises 1000 `sleep` services; the
//!    median wall time of `troupe ctl status` (a whole process: start, connect, two API calls,
//!    print) is compared with the goal (50 ms) and with its floor, `troupe --version` (the
//!    same process start, no node). The median of `GET /v1/services` alone is shown too.
//! 2. **Broker throughput while the API is polled.** A node runs the broker; DEALER clients
//!    keep 64 requests in flight through it to echo workers. Runs alternate between quiet and
//!    polled (`GET /v1/broker` and `GET /v1/node` ten times a second each); the ratio of the
//!    medians, polled / quiet, must stay at or above 0.95.
//! 3. **API requests per second under load.** During the same load, one client sends
//!    `GET /v1/node` back to back on one connection; its rate is reported with the broker's
//!    throughput at the time (and that throughput's ratio to the quiet runs).
//!
//! Environment: `TROUPE_BENCH_QUICK=1` (1 s windows, 2 runs), `TROUPE_BENCH_SECONDS`,
//! `TROUPE_BENCH_RUNS`, `TROUPE_BENCH_SERVICES`.

use std::path::Path;
use std::process::Command;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use troupe_tests::bench::{echo_worker, load, median, start_node, Api, Params};
use troupe_tests::{free_port, troupe, Proc};

fn stop_node(mut node: Proc) {
    node.signal(libc::SIGTERM);
    node.wait_exit(Duration::from_secs(120));
}

fn time_command(mut cmd: Command) -> f64 {
    let since = Instant::now();
    let out = cmd.output().expect("run");
    let elapsed = since.elapsed().as_secs_f64() * 1000.0;
    assert!(
        out.status.success(),
        "{:?}: {}",
        cmd,
        String::from_utf8_lossy(&out.stderr)
    );
    elapsed
}

fn status_latency(p: &Params) {
    let dir = tempfile::tempdir().unwrap();
    let mut config = String::from("roles = [\"supervisor\"]\n");
    for i in 0..p.services {
        config.push_str(&format!(
            "[[supervisor.services]]\nid = \"s{i}\"\ncommand = \"sleep\"\nargs = [\"3600\"]\nterminate_timeout_ms = 0\n"
        ));
    }
    let (node, socket) = start_node(dir.path(), &config, "bench");
    let mut api = Api::connect(&socket);
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let (_, body) = api.get("/v1/services");
        let running = String::from_utf8_lossy(&body)
            .matches("\"state\":\"running\"")
            .count();
        if running == p.services {
            break;
        }
        assert!(Instant::now() < deadline, "only {running} services running");
        std::thread::sleep(Duration::from_millis(100));
    }
    let samples = (p.runs * 10).max(20);
    let mut ctl = Vec::new();
    let mut floor = Vec::new();
    let mut list = Vec::new();
    for _ in 0..samples {
        let mut cmd = troupe();
        cmd.arg("ctl").arg("--socket").arg(&socket).arg("status");
        ctl.push(time_command(cmd));
        let mut cmd = troupe();
        cmd.arg("--version");
        floor.push(time_command(cmd));
        let since = Instant::now();
        let (status, _) = api.get("/v1/services");
        assert_eq!(status, 200);
        list.push(since.elapsed().as_secs_f64() * 1000.0);
    }
    let (ctl, floor, list) = (median(&mut ctl), median(&mut floor), median(&mut list));
    println!(
        "control/status: {} services, {samples} samples each (medians)",
        p.services
    );
    println!(
        "  troupe ctl status       {ctl:8.2} ms   goal 50 ms: ratio {:.2} (below 1 meets it)",
        ctl / 50.0
    );
    println!(
        "  troupe --version        {floor:8.2} ms   (process start: ctl status / floor = {:.2})",
        ctl / floor
    );
    println!("  GET /v1/services        {list:8.2} ms");
    drop(api);
    stop_node(node);
}

const ECHO: &str = "echo";

/// Load while the API is polled ten times a second (each of two routes).
fn polled_load(frontend: &str, socket: &Path, window: Duration) -> f64 {
    let polling = Arc::new(AtomicBool::new(true));
    let poller = {
        let (polling, socket) = (polling.clone(), socket.to_path_buf());
        std::thread::spawn(move || {
            let mut api = Api::connect(&socket);
            let mut next = Instant::now();
            while polling.load(Ordering::Relaxed) {
                assert_eq!(api.get("/v1/broker").0, 200);
                assert_eq!(api.get("/v1/node").0, 200);
                next += Duration::from_millis(100);
                std::thread::sleep(next.saturating_duration_since(Instant::now()));
            }
        })
    };
    let throughput = load(frontend, window);
    polling.store(false, Ordering::Relaxed);
    poller.join().unwrap();
    throughput
}

/// Load while one client asks the API `GET /v1/node` back to back: the broker's throughput
/// and the API's answers per second.
fn asked_load(frontend: &str, socket: &Path, window: Duration) -> (f64, f64) {
    let asking = Arc::new(AtomicBool::new(true));
    let answered = Arc::new(AtomicU64::new(0));
    let asker = {
        let (asking, answered, socket) = (asking.clone(), answered.clone(), socket.to_path_buf());
        std::thread::spawn(move || {
            let mut api = Api::connect(&socket);
            while asking.load(Ordering::Relaxed) {
                assert_eq!(api.get("/v1/node").0, 200);
                answered.fetch_add(1, Ordering::Relaxed);
            }
        })
    };
    let since = Instant::now();
    let throughput = load(frontend, window);
    let rate = answered.load(Ordering::Relaxed) as f64 / since.elapsed().as_secs_f64();
    asking.store(false, Ordering::Relaxed);
    asker.join().unwrap();
    (throughput, rate)
}

fn broker_under_polling(p: &Params) {
    let dir = tempfile::tempdir().unwrap();
    let (front, back, mdp) = (free_port(), free_port(), free_port());
    let config = format!(
        "roles = [\"broker\"]\n[broker]\nservice = \"{ECHO}\"\nfrontend = \"tcp://127.0.0.1:{front}\"\nbackend = \"tcp://127.0.0.1:{back}\"\n[broker.majordomo]\nbind = \"tcp://127.0.0.1:{mdp}\"\n"
    );
    let (node, socket) = start_node(dir.path(), &config, "bench");
    let stop = Arc::new(AtomicBool::new(false));
    let workers: Vec<_> = (0..2)
        .map(|_| {
            let (endpoint, stop) = (format!("tcp://127.0.0.1:{back}"), stop.clone());
            std::thread::spawn(move || echo_worker(endpoint, stop))
        })
        .collect();
    let frontend = format!("tcp://127.0.0.1:{front}");
    let window = Duration::from_secs_f64(p.seconds);
    // Warm up until both workers serve.
    let mut api = Api::connect(&socket);
    let deadline = Instant::now() + Duration::from_secs(30);
    while !String::from_utf8_lossy(&api.get("/v1/broker").1).contains("\"workers\":2") {
        assert!(Instant::now() < deadline, "workers never joined");
        std::thread::sleep(Duration::from_millis(50));
    }
    load(&frontend, Duration::from_millis(500));

    let (mut quiet, mut polled, mut busy, mut api_rates) =
        (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    for run in 0..p.runs {
        // The three conditions in a rotating order, so that none always runs first.
        for step in 0..3 {
            match (run + step) % 3 {
                0 => quiet.push(load(&frontend, window)),
                1 => polled.push(polled_load(&frontend, &socket, window)),
                _ => {
                    let (throughput, rate) = asked_load(&frontend, &socket, window);
                    busy.push(throughput);
                    api_rates.push(rate);
                }
            }
        }
    }
    println!(
        "  per run (req/s): quiet {:?}\n                   polled {:?}\n                   asked {:?}",
        quiet.iter().map(|v| *v as u64).collect::<Vec<_>>(),
        polled.iter().map(|v| *v as u64).collect::<Vec<_>>(),
        busy.iter().map(|v| *v as u64).collect::<Vec<_>>(),
    );
    stop.store(true, Ordering::Relaxed);
    for worker in workers {
        let _ = worker.join();
    }
    let (quiet, polled, busy, api_rate) = (
        median(&mut quiet),
        median(&mut polled),
        median(&mut busy),
        median(&mut api_rates),
    );
    println!(
        "control/broker: {} runs of {:.1} s each, 64 requests in flight (medians)",
        p.runs, p.seconds
    );
    println!("  broker, API quiet           {quiet:10.0} req/s");
    println!(
        "  broker, API polled 10x/s    {polled:10.0} req/s   ratio {:.3} (goal >= 0.95)",
        polled / quiet
    );
    println!(
        "  broker, API asked flat out  {busy:10.0} req/s   ratio {:.3}",
        busy / quiet
    );
    println!("  API GET /v1/node under load {api_rate:10.0} req/s");
    drop(api);
    stop_node(node);
}

fn main() {
    // `cargo bench` passes `--bench`; a filter argument picks one part.
    let filter = std::env::args().skip(1).find(|a| !a.starts_with("--"));
    let p = Params::from_env(1000);
    if filter.as_deref().is_none_or(|f| "status".contains(f)) {
        status_latency(&p);
    }
    if filter.as_deref().is_none_or(|f| "broker".contains(f)) {
        broker_under_polling(&p);
    }
}
