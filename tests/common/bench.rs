//! What the benchmarks share: medians, a keep-alive HTTP/1.1 client for a node's control
//! socket, and a seed-framed echo worker with DEALER clients to load a broker.

use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// A benchmark's knobs from the environment: `TROUPE_BENCH_QUICK=1` (1 s windows, 2 runs),
/// `TROUPE_BENCH_SECONDS` (3), `TROUPE_BENCH_RUNS` (5), `TROUPE_BENCH_SERVICES`.
pub struct Params {
    /// Length of one measuring window.
    pub seconds: f64,
    /// Runs to take the median of.
    pub runs: usize,
    /// Services the node supervises.
    pub services: usize,
}

impl Params {
    /// The knobs, with `services` supervised by default.
    pub fn from_env(services: usize) -> Params {
        let quick = std::env::var_os("TROUPE_BENCH_QUICK").is_some();
        let get = |name: &str, default: f64| {
            std::env::var(name)
                .ok()
                .and_then(|v| v.parse().ok())
                .unwrap_or(default)
        };
        Params {
            seconds: get("TROUPE_BENCH_SECONDS", if quick { 1.0 } else { 3.0 }),
            runs: get("TROUPE_BENCH_RUNS", if quick { 2.0 } else { 5.0 }) as usize,
            services: get("TROUPE_BENCH_SERVICES", services as f64) as usize,
        }
    }
}

/// Starts a node from `config` (named `TAG-PID`, its control socket in `dir`), waits until it
/// is ready, and returns it with its control socket.
pub fn start_node(dir: &Path, config: &str, tag: &str) -> (crate::Proc, std::path::PathBuf) {
    let socket = dir.join("ctl.sock");
    let path = dir.join("node.toml");
    std::fs::write(
        &path,
        format!(
            "name = \"{tag}-{}\"\nshutdown_timeout = \"60s\"\n{config}\n[control]\nsocket = \"{}\"\n",
            std::process::id(),
            socket.display()
        ),
    )
    .unwrap();
    let mut cmd = crate::troupe();
    cmd.args(["run", "--log-level", "warn,troupe_node=info", "--config"])
        .arg(&path);
    let mut node = crate::Proc::spawn(cmd);
    node.wait_for(&["node ready"], Duration::from_secs(120));
    (node, socket)
}

/// The median of `values` (sorted in place); NaN when empty.
pub fn median(values: &mut [f64]) -> f64 {
    values.sort_by(|a, b| a.total_cmp(b));
    let n = values.len();
    if n == 0 {
        return f64::NAN;
    }
    if n % 2 == 1 {
        values[n / 2]
    } else {
        (values[n / 2 - 1] + values[n / 2]) / 2.0
    }
}

/// A keep-alive HTTP/1.1 connection to a node's control socket.
pub struct Api {
    reader: BufReader<UnixStream>,
    writer: UnixStream,
}

impl Api {
    /// Connects to the control socket at `socket`.
    pub fn connect(socket: &Path) -> Api {
        let stream = UnixStream::connect(socket).expect("connect to the control socket");
        stream
            .set_read_timeout(Some(Duration::from_secs(30)))
            .unwrap();
        Api {
            reader: BufReader::new(stream.try_clone().unwrap()),
            writer: stream,
        }
    }

    /// GET `path`; returns the status and the body.
    pub fn get(&mut self, path: &str) -> (u16, Vec<u8>) {
        write!(
            self.writer,
            "GET {path} HTTP/1.1\r\nHost: localhost\r\n\r\n"
        )
        .unwrap();
        self.response()
    }

    /// POST `path` with an empty body; returns the status and the body.
    pub fn post(&mut self, path: &str) -> (u16, Vec<u8>) {
        write!(
            self.writer,
            "POST {path} HTTP/1.1\r\nHost: localhost\r\nContent-Length: 0\r\n\r\n"
        )
        .unwrap();
        self.response()
    }

    fn response(&mut self) -> (u16, Vec<u8>) {
        let mut line = String::new();
        self.reader.read_line(&mut line).unwrap();
        let status = line
            .split(' ')
            .nth(1)
            .and_then(|s| s.parse().ok())
            .unwrap_or(0);
        let mut length = 0usize;
        loop {
            line.clear();
            self.reader.read_line(&mut line).unwrap();
            if line == "\r\n" || line.is_empty() {
                break;
            }
            if let Some((name, value)) = line.split_once(':') {
                if name.eq_ignore_ascii_case("content-length") {
                    length = value.trim().parse().unwrap_or(0);
                }
            }
        }
        let mut body = vec![0; length];
        self.reader.read_exact(&mut body).unwrap();
        (status, body)
    }
}

/// An echo worker in the seed framing announcing 64 free (as the broker bench's).
pub fn echo_worker(endpoint: String, stop: Arc<AtomicBool>) {
    let context = zmq::Context::new();
    let socket = context.socket(zmq::DEALER).unwrap();
    socket.set_linger(0).unwrap();
    socket.connect(&endpoint).unwrap();
    socket
        .send_multipart([&b""[..], b"\x01\x01\x40"], 0)
        .unwrap();
    let mut next_heartbeat = Instant::now();
    while !stop.load(Ordering::Relaxed) {
        if socket.poll(zmq::POLLIN, 100).unwrap_or(0) > 0 {
            while let Ok(frames) = socket.recv_multipart(zmq::DONTWAIT) {
                if frames.len() > 3 {
                    let _ = socket.send_multipart(frames, zmq::DONTWAIT);
                }
            }
        }
        if Instant::now() >= next_heartbeat {
            next_heartbeat = Instant::now() + Duration::from_millis(500);
            let _ = socket.send_multipart([&b""[..], b"\x02\x01\x40"], zmq::DONTWAIT);
        }
    }
}

/// A client keeping `in_flight` requests outstanding for `window`; returns the replies.
pub fn client(endpoint: &str, in_flight: usize, window: Duration) -> u64 {
    let context = zmq::Context::new();
    let socket = context.socket(zmq::DEALER).unwrap();
    socket.set_linger(0).unwrap();
    socket.connect(endpoint).unwrap();
    let body = [7u8; 64];
    for _ in 0..in_flight {
        socket.send_multipart([&b""[..], &body], 0).unwrap();
    }
    let until = Instant::now() + window;
    let mut replies = 0;
    while Instant::now() < until {
        if socket.poll(zmq::POLLIN, 100).unwrap_or(0) == 0 {
            continue;
        }
        while socket.recv_multipart(zmq::DONTWAIT).is_ok() {
            replies += 1;
            socket.send_multipart([&b""[..], &body], 0).unwrap();
        }
    }
    replies
}

/// Load through the broker for `window`: replies per second.
pub fn load(frontend: &str, window: Duration) -> f64 {
    let clients: Vec<_> = (0..4)
        .map(|_| {
            let endpoint = frontend.to_string();
            std::thread::spawn(move || client(&endpoint, 16, window))
        })
        .collect();
    let replies: u64 = clients.into_iter().map(|c| c.join().unwrap()).sum();
    replies as f64 / window.as_secs_f64()
}
