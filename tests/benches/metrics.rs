//! What scraping `/metrics` costs the broker, against a real release `troupe` node (`make
//! bench` builds it): the node runs the broker, the ipc hub and a supervisor with
//! `TROUPE_BENCH_SERVICES` (100) `sleep` services, so that a scrape has a node's worth of
//! series to gather and encode. DEALER clients keep 64 requests in flight through the broker to
//! two echo workers. Runs alternate between quiet and scraped (`GET /metrics` on the control
//! socket once a second, as a Prometheus server would); the ratio of the medians, scraped /
//! quiet, must stay at or above 0.97. The size of a scrape, its median latency under load,
//! and what one scrape costs the node in CPU time (50 scrapes back to back, no load) are shown
//! too.
//!
//! Environment: `TROUPE_BENCH_QUICK=1` (1 s windows, 2 runs), `TROUPE_BENCH_SECONDS` (3),
//! `TROUPE_BENCH_RUNS` (5), `TROUPE_BENCH_SERVICES` (100).

use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use troupe_tests::bench::{echo_worker, load, median, start_node, Api, Params};
use troupe_tests::free_port;

/// The goal: scraped throughput / quiet throughput.
const GOAL: f64 = 0.97;
/// How often the scraper asks.
const SCRAPE_EVERY: Duration = Duration::from_secs(1);

/// Load while `/metrics` is scraped once a second; each scrape's latency (ms) goes to
/// `latencies`.
fn scraped_load(
    frontend: &str,
    socket: &Path,
    window: Duration,
    latencies: &Mutex<Vec<f64>>,
) -> f64 {
    let scraping = Arc::new(AtomicBool::new(true));
    let scraper = {
        let (scraping, socket) = (scraping.clone(), socket.to_path_buf());
        std::thread::spawn(move || {
            let mut api = Api::connect(&socket);
            let mut taken = Vec::new();
            let mut next = Instant::now();
            while scraping.load(Ordering::Relaxed) {
                let since = Instant::now();
                let (status, body) = api.get("/metrics");
                assert_eq!(status, 200, "{}", String::from_utf8_lossy(&body));
                taken.push(since.elapsed().as_secs_f64() * 1000.0);
                next += SCRAPE_EVERY;
                // Sleep in short steps, so that the end of the window is not overrun.
                while scraping.load(Ordering::Relaxed) && Instant::now() < next {
                    std::thread::sleep(Duration::from_millis(10));
                }
            }
            taken
        })
    };
    let throughput = load(frontend, window);
    scraping.store(false, Ordering::Relaxed);
    let taken = scraper.join().unwrap();
    latencies.lock().unwrap().extend(taken);
    throughput
}

/// User + system CPU time of process `pid`, from `/proc/<pid>/stat`.
fn cpu_seconds(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    let fields: Vec<&str> = stat[stat.rfind(')').unwrap() + 2..]
        .split_whitespace()
        .collect();
    // utime and stime are fields 14 and 15 of proc(5); `fields` starts at field 3.
    let ticks: u64 = fields[11].parse::<u64>().unwrap() + fields[12].parse::<u64>().unwrap();
    // SAFETY: sysconf(3) has no side effect.
    ticks as f64 / unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64
}

fn main() {
    let p = Params::from_env(100);
    let dir = tempfile::tempdir().unwrap();
    let (front, back, mdp) = (free_port(), free_port(), free_port());
    let mut config = format!(
        "roles = [\"ipc\", \"supervisor\", \"broker\"]\n[ipc]\nsocket = \"{}/ipc.sock\"\n[supervisor]\nstate_dir = \"{}/state\"\n[broker]\nservice = \"echo\"\nfrontend = \"tcp://127.0.0.1:{front}\"\nbackend = \"tcp://127.0.0.1:{back}\"\n[broker.majordomo]\nbind = \"tcp://127.0.0.1:{mdp}\"\n",
        dir.path().display(),
        dir.path().display()
    );
    for i in 0..p.services {
        config.push_str(&format!(
            "[[supervisor.services]]\nid = \"s{i}\"\ncommand = \"sleep\"\nargs = [\"3600\"]\nterminate_timeout_ms = 0\n"
        ));
    }
    let (mut node, socket) = start_node(dir.path(), &config, "bench-metrics");
    let stop = Arc::new(AtomicBool::new(false));
    let workers: Vec<_> = (0..2)
        .map(|_| {
            let (endpoint, stop) = (format!("tcp://127.0.0.1:{back}"), stop.clone());
            std::thread::spawn(move || echo_worker(endpoint, stop))
        })
        .collect();
    let frontend = format!("tcp://127.0.0.1:{front}");
    let window = Duration::from_secs_f64(p.seconds);
    // Warm up until both workers serve and every service runs.
    let mut api = Api::connect(&socket);
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let broker = String::from_utf8_lossy(&api.get("/v1/broker").1).into_owned();
        let services = String::from_utf8_lossy(&api.get("/v1/services").1).into_owned();
        let running = services.matches("\"state\":\"running\"").count();
        if broker.contains("\"workers\":2") && running == p.services {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "workers or services never came up ({running} running)"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    let (status, body) = api.get("/metrics");
    assert_eq!(status, 200);
    let text = String::from_utf8_lossy(&body);
    let series = text.lines().filter(|l| !l.starts_with('#')).count();
    let families = text.lines().filter(|l| l.starts_with("# TYPE")).count();
    load(&frontend, Duration::from_millis(500));

    let (mut quiet, mut scraped) = (Vec::new(), Vec::new());
    let latencies = Mutex::new(Vec::new());
    for run in 0..p.runs {
        // Alternate which goes first, so that neither always runs on a warmer node.
        for step in 0..2 {
            if (run + step) % 2 == 0 {
                quiet.push(load(&frontend, window));
            } else {
                scraped.push(scraped_load(&frontend, &socket, window, &latencies));
            }
        }
    }
    println!(
        "  per run (req/s): quiet   {:?}\n                   scraped {:?}",
        quiet.iter().map(|v| *v as u64).collect::<Vec<_>>(),
        scraped.iter().map(|v| *v as u64).collect::<Vec<_>>(),
    );
    stop.store(true, Ordering::Relaxed);
    for worker in workers {
        let _ = worker.join();
    }
    // What one scrape costs the node, without load: its CPU time over back-to-back scrapes.
    let idle_scrapes = 50;
    // The warm-up connection has been idle past the server's keep-alive: a new one.
    let mut api = Api::connect(&socket);
    let cpu_before = cpu_seconds(node.pid());
    let since = Instant::now();
    for _ in 0..idle_scrapes {
        assert_eq!(api.get("/metrics").0, 200);
    }
    let idle_latency = since.elapsed().as_secs_f64() * 1000.0 / idle_scrapes as f64;
    let cpu_per_scrape = (cpu_seconds(node.pid()) - cpu_before) * 1000.0 / idle_scrapes as f64;
    let mut latencies = latencies.into_inner().unwrap();
    let scrapes = latencies.len();
    let (quiet, scraped, latency) = (
        median(&mut quiet),
        median(&mut scraped),
        median(&mut latencies),
    );
    let ratio = scraped / quiet;
    println!(
        "metrics/broker: {} runs of {:.1} s each, 64 requests in flight, {} services (medians)",
        p.runs, p.seconds, p.services
    );
    println!(
        "  one scrape: {} bytes, {series} series in {families} families",
        body.len()
    );
    println!("  broker, not scraped         {quiet:10.0} req/s");
    println!(
        "  broker, scraped every 1 s   {scraped:10.0} req/s   ratio {ratio:.3} (goal >= {GOAL}): {}",
        if ratio >= GOAL { "met" } else { "NOT met" }
    );
    println!("  GET /metrics under load     {latency:10.2} ms    ({scrapes} scrapes)");
    println!(
        "  GET /metrics idle           {idle_latency:10.2} ms    node CPU per scrape {cpu_per_scrape:.2} ms ({idle_scrapes} scrapes back to back)"
    );
    drop(api);
    node.signal(libc::SIGTERM);
    node.wait_exit(Duration::from_secs(120));
}
