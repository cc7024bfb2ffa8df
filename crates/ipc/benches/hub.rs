//! Throughput and round-trip latency through the ipc hub, against a baseline measured in the
//! same run: a minimal relay on a raw Unix socket with length-prefixed frames.
//!
//! Every party is its own process, as in real use: the hub is the release `troupe` binary
//! running only the ipc role; the relay, senders, receivers and echoes are this benchmark
//! executable started again with a mode argument.
//!
//! - Throughput: a sender queues N messages of S bytes as fast as it can and writes them
//!   64 KiB at a time, addressed to the receiver's name or to its pid, in `Batch` frames as
//!   the client gathers them by default or a frame per message; a receiver takes them one
//!   by one as owned buffers; the time runs from the sender's first write to the receiver's
//!   last message (CLOCK_MONOTONIC, shared by the processes).
//! - Latency: a ping client sends one message of S bytes and waits for the echo, N times;
//!   through the hub this is `request` / `reply`.
//!
//! Each throughput run also adds up the CPU time every process on the path spent (sender,
//! hub or relay, receiver) and reports it per message: on a shared machine that figure moves
//! much less than the rate, and `relay CPU / hub CPU` is what the rate ratio tends to when the
//! processes do not wait for each other.
//!
//! Run with `make bench`, or `cargo bench -p troupe-ipc --bench hub` after
//! `cargo build --release --bin troupe`. `IPC_BENCH_QUICK=1` runs a short version;
//! `IPC_BENCH_RUNS=N` sets the repetitions (medians are reported).

#[path = "common/clock.rs"]
mod clock;

use std::io::{BufRead, BufReader, BufWriter, Read, Write};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use troupe_ipc::client::{Client, ClientOptions, Incoming};

const SIZES: [usize; 2] = [64, 4096];

/// How the hub's sender addresses the receiver: by its registered name (`"bench-sink"`, ten
/// bytes in every frame and a name to match), or by its pid (gproc's `send(pid, data)`).
#[derive(Clone, Copy, PartialEq, Eq)]
enum Addressing {
    Name,
    Pid,
}

impl Addressing {
    fn label(self) -> &'static str {
        match self {
            Addressing::Name => "to a name",
            Addressing::Pid => "to a pid",
        }
    }
}

/// How the hub's sender frames what it queues: as the client does by default (messages
/// queued back to back to one receiver share a `Batch` frame of up to 16 KiB), or a frame per
/// message (`batch_bytes = 0`), which shows the hub's cost per frame.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Framing {
    Batched,
    FramePerMessage,
}

impl Framing {
    fn batch_bytes(self) -> usize {
        match self {
            Framing::Batched => ClientOptions::default().batch_bytes,
            Framing::FramePerMessage => 0,
        }
    }

    fn label(self) -> &'static str {
        match self {
            Framing::Batched => "batched (default)",
            Framing::FramePerMessage => "a frame per message",
        }
    }
}
const BATCH: usize = 64 * 1024;
const WAIT: Duration = Duration::from_secs(60);

fn main() {
    let args: Vec<String> = std::env::args().collect();
    match args.get(1).map(String::as_str) {
        Some("relay") => relay(Path::new(&args[2])),
        Some("relay-send") => relay_send(Path::new(&args[2]), num(&args[3]), num(&args[4])),
        Some("relay-recv") => relay_recv(Path::new(&args[2]), num(&args[3])),
        Some("relay-echo") => relay_echo(Path::new(&args[2])),
        Some("hub-send") => hub_send(
            Path::new(&args[2]),
            num(&args[3]),
            num(&args[4]),
            num(&args[5]),
            args.get(6).map(|pid| num(pid) as u32),
        ),
        Some("hub-recv") => hub_recv(Path::new(&args[2]), num(&args[3])),
        Some("hub-echo") => hub_echo(Path::new(&args[2])),
        _ => orchestrate(),
    }
}

fn num(text: &str) -> usize {
    text.parse().expect("a number")
}

// ---- the orchestrator ----

struct Plan {
    runs: usize,
    messages: [usize; 2],
    pings: usize,
}

fn orchestrate() {
    let quick = std::env::var_os("IPC_BENCH_QUICK").is_some();
    let mut plan = if quick {
        Plan {
            runs: 1,
            messages: [100_000, 20_000],
            pings: 1_000,
        }
    } else {
        Plan {
            runs: 5,
            messages: [1_000_000, 200_000],
            pings: 10_000,
        }
    };
    if let Some(runs) = std::env::var("IPC_BENCH_RUNS")
        .ok()
        .and_then(|r| r.parse().ok())
    {
        plan.runs = runs;
    }
    let troupe = troupe_binary();
    let dir = tempfile::tempdir().expect("a temporary folder");
    println!(
        "ipc hub benchmark: {} run(s) each, medians; hub = {}",
        plan.runs,
        troupe.display()
    );
    let hub_socket = dir.path().join("hub.sock");
    let mut node = start_hub(&troupe, &hub_socket);

    println!();
    println!("| payload | framing | hub msg/s | relay msg/s | hub / relay | target | hub CPU/msg | relay CPU/msg | CPU ratio |");
    println!("|---|---|---|---|---|---|---|---|---|");
    let mut throughput_ratios = Vec::new();
    let cases = SIZES.iter().enumerate().flat_map(|(i, &size)| {
        [Framing::Batched, Framing::FramePerMessage]
            .into_iter()
            .flat_map(move |f| [Addressing::Name, Addressing::Pid].map(move |a| (i, size, f, a)))
    });
    for (i, size, framing, addressing) in cases {
        let count = plan.messages[i];
        let mut hub = Vec::new();
        let mut relay = Vec::new();
        for run in 0..plan.runs {
            // Alternate which goes first, so neither always gets the quieter moment.
            let order: [bool; 2] = if run.is_multiple_of(2) {
                [true, false]
            } else {
                [false, true]
            };
            for through_hub in order {
                if through_hub {
                    let hub_pid = node.id();
                    hub.push(hub_throughput(
                        &hub_socket,
                        hub_pid,
                        (count, size),
                        framing,
                        addressing,
                    ));
                } else {
                    relay.push(relay_throughput(dir.path(), count, size));
                }
            }
        }
        let mut hub_rate: Vec<f64> = hub.iter().map(|t| t.per_second).collect();
        let mut relay_rate: Vec<f64> = relay.iter().map(|t| t.per_second).collect();
        let mut hub_cpu: Vec<f64> = hub.iter().map(|t| t.cpu_ns_per_message).collect();
        let mut relay_cpu: Vec<f64> = relay.iter().map(|t| t.cpu_ns_per_message).collect();
        let (h, r) = (median(&mut hub_rate), median(&mut relay_rate));
        let (hc, rc) = (median(&mut hub_cpu), median(&mut relay_cpu));
        let ratio = h / r;
        // The target is for the client as it comes; a frame per message is for reference.
        let target = if framing == Framing::Batched {
            throughput_ratios.push(ratio);
            if ratio >= 0.7 {
                "≥ 0.70 met"
            } else {
                "≥ 0.70 NOT met"
            }
        } else {
            "(reference)"
        };
        println!(
            "| {size} B, {} | {} | {h:.0} | {r:.0} | {ratio:.2} | {target} | {:.2} µs | {:.2} µs | {:.2} |",
            addressing.label(),
            framing.label(),
            hc / 1e3,
            rc / 1e3,
            rc / hc
        );
    }

    println!();
    println!("| payload | hub RTT p50 | relay RTT p50 | hub p99 | relay p99 | hub / relay (p50) |");
    println!("|---|---|---|---|---|---|");
    for &size in &SIZES {
        let mut hub = Vec::new();
        let mut relay = Vec::new();
        for _ in 0..plan.runs {
            hub.push(hub_latency(&hub_socket, plan.pings, size));
            relay.push(relay_latency(dir.path(), plan.pings, size));
        }
        let mut hub50: Vec<f64> = hub.iter().map(|(p50, _)| *p50).collect();
        let mut hub99: Vec<f64> = hub.iter().map(|(_, p99)| *p99).collect();
        let mut relay50: Vec<f64> = relay.iter().map(|(p50, _)| *p50).collect();
        let mut relay99: Vec<f64> = relay.iter().map(|(_, p99)| *p99).collect();
        let (h50, r50) = (median(&mut hub50), median(&mut relay50));
        println!(
            "| {size} B | {:.1} µs | {:.1} µs | {:.1} µs | {:.1} µs | {:.2} |",
            h50 / 1e3,
            r50 / 1e3,
            median(&mut hub99) / 1e3,
            median(&mut relay99) / 1e3,
            h50 / r50
        );
    }

    stop_hub(&mut node);
    if throughput_ratios.iter().any(|r| *r < 0.7) {
        println!("\nthe hub is below 0.7× the relay's throughput for some payload");
    }
}

fn troupe_binary() -> PathBuf {
    if let Some(path) = std::env::var_os("TROUPE_BIN") {
        return PathBuf::from(path);
    }
    let exe = std::env::current_exe().expect("own path");
    let release = exe
        .parent()
        .and_then(Path::parent)
        .expect("target/release/deps");
    let bin = release.join("troupe");
    if !bin.exists() {
        eprintln!(
            "{} not found: build it first (`cargo build --release --bin troupe`, or `make bench`)",
            bin.display()
        );
        std::process::exit(1);
    }
    bin
}

fn start_hub(troupe: &Path, socket: &Path) -> Child {
    let node = Command::new(troupe)
        .args(["run", "--roles", "ipc", "--log-level", "warn", "--name"])
        .arg(format!("ipc-bench-{}", std::process::id()))
        .env("TROUPE_IPC__SOCKET", socket)
        .env("TROUPE_CLUSTER__BEACONS", "")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("start troupe");
    wait_until(|| UnixStream::connect(socket).is_ok());
    node
}

fn stop_hub(node: &mut Child) {
    // SAFETY: kill(2) on our own child.
    unsafe {
        libc::kill(node.id() as i32, libc::SIGTERM);
    }
    let _ = node.wait();
}

fn wait_until(mut ready: impl FnMut() -> bool) {
    let deadline = Instant::now() + WAIT;
    while !ready() {
        assert!(Instant::now() < deadline, "not ready within {WAIT:?}");
        std::thread::sleep(Duration::from_millis(10));
    }
}

fn median(values: &mut [f64]) -> f64 {
    values.sort_by(|a, b| a.partial_cmp(b).expect("numbers"));
    let n = values.len();
    if !n.is_multiple_of(2) {
        values[n / 2]
    } else {
        (values[n / 2 - 1] + values[n / 2]) / 2.0
    }
}

/// Starts this executable in `mode`; returns it once it printed `ready`.
fn party(mode: &str, args: &[String]) -> (Child, BufReader<std::process::ChildStdout>) {
    let mut child = Command::new(std::env::current_exe().expect("own path"))
        .arg(mode)
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("start a benchmark party");
    let mut out = BufReader::new(child.stdout.take().expect("stdout"));
    let mut line = String::new();
    out.read_line(&mut line).expect("a line");
    assert_eq!(line.trim(), "ready", "{mode} did not start");
    (child, out)
}

/// The number on the next line a party prints, which must start with `name`.
fn value(out: &mut BufReader<std::process::ChildStdout>, name: &str) -> f64 {
    let mut line = String::new();
    out.read_line(&mut line).expect("a line");
    line.trim()
        .strip_prefix(name)
        .and_then(|rest| rest.trim().parse().ok())
        .unwrap_or_else(|| panic!("expected `{name} <number>`, got {line:?}"))
}

/// One throughput run.
struct Throughput {
    /// Messages per second from the sender's first write to the receiver's last message.
    per_second: f64,
    /// CPU time per message of every process on the path (sender, middle, receiver).
    cpu_ns_per_message: f64,
}

/// Reads a sender's and a receiver's reports: `result` (start / end stamps), then `cpu`.
fn measure(
    count: usize,
    sender: (&mut Child, &mut BufReader<std::process::ChildStdout>),
    receiver: (&mut Child, &mut BufReader<std::process::ChildStdout>),
) -> (f64, f64) {
    let start = value(sender.1, "result");
    let end = value(receiver.1, "result");
    let cpu = value(sender.1, "cpu") + value(receiver.1, "cpu");
    let _ = sender.0.wait();
    let _ = receiver.0.wait();
    (count as f64 / ((end - start) / 1e9), cpu)
}

fn hub_throughput(
    socket: &Path,
    hub_pid: u32,
    (count, size): (usize, usize),
    framing: Framing,
    addressing: Addressing,
) -> Throughput {
    let s = |v: &dyn ToString| v.to_string();
    let path = socket.display().to_string();
    let hub_cpu = process_cpu_ns(hub_pid);
    let (mut receiver, mut out) = party("hub-recv", &[path.clone(), s(&count)]);
    let mut send_args = vec![path, s(&count), s(&size), s(&framing.batch_bytes())];
    if addressing == Addressing::Pid {
        send_args.push(s(&receiver.id()));
    }
    let (mut sender, mut sent) = party("hub-send", &send_args);
    let (per_second, cpu) = measure(count, (&mut sender, &mut sent), (&mut receiver, &mut out));
    let hub_cpu = process_cpu_ns(hub_pid) - hub_cpu;
    Throughput {
        per_second,
        cpu_ns_per_message: (cpu + hub_cpu) / count as f64,
    }
}

fn relay_throughput(dir: &Path, count: usize, size: usize) -> Throughput {
    let s = |v: &dyn ToString| v.to_string();
    let socket = dir.join(format!("relay-{count}-{size}.sock"));
    let path = socket.display().to_string();
    let (mut relay, mut relayed) = party("relay", std::slice::from_ref(&path));
    let (mut receiver, mut out) = party("relay-recv", &[path.clone(), s(&count)]);
    let (mut sender, mut sent) = party("relay-send", &[path, s(&count), s(&size)]);
    let (per_second, cpu) = measure(count, (&mut sender, &mut sent), (&mut receiver, &mut out));
    let relay_cpu = value(&mut relayed, "cpu");
    let _ = relay.wait();
    let _ = std::fs::remove_file(&socket);
    Throughput {
        per_second,
        cpu_ns_per_message: (cpu + relay_cpu) / count as f64,
    }
}

/// CPU time (user and system) of this process so far, in nanoseconds.
fn own_cpu_ns() -> f64 {
    // SAFETY: getrusage fills the struct it is given.
    let usage = unsafe {
        let mut usage: libc::rusage = std::mem::zeroed();
        libc::getrusage(libc::RUSAGE_SELF, &mut usage);
        usage
    };
    let micros = |t: libc::timeval| t.tv_sec as f64 * 1e6 + t.tv_usec as f64;
    (micros(usage.ru_utime) + micros(usage.ru_stime)) * 1e3
}

/// CPU time of process `pid` so far, in nanoseconds (from /proc, in clock ticks).
fn process_cpu_ns(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).expect("the hub's stat");
    // Fields after the command name, which is in parentheses and may hold spaces.
    let fields: Vec<&str> = stat[stat.rfind(')').expect("stat format") + 2..]
        .split(' ')
        .collect();
    let ticks: f64 =
        fields[11].parse::<f64>().expect("utime") + fields[12].parse::<f64>().expect("stime");
    // SAFETY: sysconf has no preconditions.
    let per_second = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64;
    ticks / per_second * 1e9
}

fn report_cpu() {
    println!("cpu {}", own_cpu_ns());
}

/// (p50, p99) round trip in nanoseconds.
fn hub_latency(socket: &Path, pings: usize, size: usize) -> (f64, f64) {
    let (mut echo, _) = party("hub-echo", &[socket.display().to_string()]);
    let mut client = Client::connect(socket).expect("connect to the hub");
    client.register(None).expect("register");
    let payload = vec![0x5a; size];
    let mut rtts = Vec::with_capacity(pings);
    for _ in 0..pings {
        let since = Instant::now();
        let reply = client
            .request("bench-echo", &payload, Duration::from_secs(10))
            .expect("an echo");
        rtts.push(since.elapsed().as_nanos() as f64);
        assert_eq!(reply.len(), size);
    }
    drop(client);
    let _ = echo.kill();
    let _ = echo.wait();
    percentiles(&mut rtts)
}

fn relay_latency(dir: &Path, pings: usize, size: usize) -> (f64, f64) {
    let socket = dir.join(format!("relay-rtt-{size}.sock"));
    let path = socket.display().to_string();
    let (mut relay, _relay_reports) = party("relay", std::slice::from_ref(&path));
    let (mut echo, _) = party("relay-echo", std::slice::from_ref(&path));
    let mut stream = UnixStream::connect(&socket).expect("connect to the relay");
    let payload = vec![0x5a; size];
    let mut frame = Vec::with_capacity(4 + size);
    frame.extend_from_slice(&(size as u32).to_le_bytes());
    frame.extend_from_slice(&payload);
    let mut reader = BufReader::with_capacity(BATCH, stream.try_clone().expect("clone"));
    let mut rtts = Vec::with_capacity(pings);
    for _ in 0..pings {
        let since = Instant::now();
        stream.write_all(&frame).expect("write");
        let reply = read_frame(&mut reader).expect("an echo");
        rtts.push(since.elapsed().as_nanos() as f64);
        assert_eq!(reply.len(), size);
    }
    // Both handles, so the relay sees the connection end and ends the echo's.
    drop(reader);
    drop(stream);
    let _ = echo.wait();
    let _ = relay.wait();
    let _ = std::fs::remove_file(&socket);
    percentiles(&mut rtts)
}

fn percentiles(rtts: &mut [f64]) -> (f64, f64) {
    rtts.sort_by(|a, b| a.partial_cmp(b).expect("numbers"));
    let at = |q: f64| rtts[((rtts.len() as f64 * q) as usize).min(rtts.len() - 1)];
    (at(0.5), at(0.99))
}

fn ready() {
    println!("ready");
    std::io::stdout().flush().expect("stdout");
}

/// CLOCK_MONOTONIC in nanoseconds: one clock for every process on the machine, so a
/// sender's start and a receiver's end can be compared.
fn monotonic_ns() -> u64 {
    clock::clock_ns(libc::CLOCK_MONOTONIC)
}

// ---- through the hub ----

fn hub_client(socket: &Path, name: &str, batch_bytes: usize) -> Client {
    let options = ClientOptions {
        inbox_max: 1 << 22,
        batch_bytes,
        ..ClientOptions::default()
    };
    let mut client = Client::connect_with(socket, options).expect("connect to the hub");
    client.register(Some(name)).expect("register");
    client
}

fn hub_send(socket: &Path, count: usize, size: usize, batch_bytes: usize, to_pid: Option<u32>) {
    let mut client = hub_client(socket, "bench-source", batch_bytes);
    ready();
    let payload = vec![0xa5; size];
    println!("result {}", monotonic_ns());
    for _ in 0..count {
        match to_pid {
            Some(pid) => client.queue(pid, &payload),
            None => client.queue("bench-sink", &payload),
        };
        if client.queued_bytes() >= BATCH {
            client.flush().expect("write");
        }
    }
    client.flush().expect("write");
    report_cpu();
}

fn hub_recv(socket: &Path, count: usize) {
    let mut client = hub_client(socket, "bench-sink", 0);
    ready();
    let mut bytes = 0;
    for _ in 0..count {
        match client.recv().expect("a message") {
            Incoming::Message(m) => bytes += m.body.len(),
            other => panic!("unexpected {other:?}"),
        }
    }
    let end = monotonic_ns();
    assert!(bytes > 0);
    println!("result {end}");
    report_cpu();
}

fn hub_echo(socket: &Path) {
    let mut client = hub_client(socket, "bench-echo", 0);
    ready();
    while let Ok(incoming) = client.recv() {
        if let Incoming::Request(request) = incoming {
            if client.reply(&request, &request.body).is_err() {
                return;
            }
        }
    }
}

// ---- the baseline: a minimal relay ----

/// Accepts two connections and copies length-prefixed frames between them, one thread per
/// direction, flushing whenever no more input is buffered.
fn relay(socket: &Path) {
    let listener = UnixListener::bind(socket).expect("bind the relay");
    ready();
    let (a, _) = listener.accept().expect("first peer");
    let (b, _) = listener.accept().expect("second peer");
    let (a2, b2) = (a.try_clone().expect("clone"), b.try_clone().expect("clone"));
    let forward = std::thread::spawn(move || copy_frames(a, b));
    copy_frames(b2, a2);
    let _ = forward.join();
    report_cpu();
}

fn copy_frames(from: UnixStream, to: UnixStream) {
    let mut reader = BufReader::with_capacity(BATCH, from);
    let mut writer = BufWriter::with_capacity(BATCH, to.try_clone().expect("clone"));
    let mut payload = Vec::new();
    loop {
        let mut len = [0u8; 4];
        if reader.read_exact(&mut len).is_err() {
            break;
        }
        let n = u32::from_le_bytes(len) as usize;
        payload.resize(n, 0);
        if reader.read_exact(&mut payload).is_err() {
            break;
        }
        if writer.write_all(&len).is_err() || writer.write_all(&payload).is_err() {
            break;
        }
        if reader.buffer().is_empty() && writer.flush().is_err() {
            break;
        }
    }
    let _ = writer.flush();
    let _ = to.shutdown(std::net::Shutdown::Both);
}

fn read_frame(reader: &mut impl Read) -> Option<Vec<u8>> {
    let mut len = [0u8; 4];
    reader.read_exact(&mut len).ok()?;
    let mut payload = vec![0; u32::from_le_bytes(len) as usize];
    reader.read_exact(&mut payload).ok()?;
    Some(payload)
}

fn relay_send(socket: &Path, count: usize, size: usize) {
    let stream = UnixStream::connect(socket).expect("connect to the relay");
    ready();
    let payload = vec![0xa5; size];
    println!("result {}", monotonic_ns());
    let mut writer = BufWriter::with_capacity(BATCH, stream);
    for _ in 0..count {
        writer
            .write_all(&(size as u32).to_le_bytes())
            .expect("write");
        writer.write_all(&payload).expect("write");
    }
    writer.flush().expect("write");
    drop(writer);
    report_cpu();
}

fn relay_recv(socket: &Path, count: usize) {
    let stream = UnixStream::connect(socket).expect("connect to the relay");
    ready();
    let mut reader = BufReader::with_capacity(BATCH, stream);
    let mut bytes = 0;
    for _ in 0..count {
        bytes += read_frame(&mut reader).expect("a frame").len();
    }
    let end = monotonic_ns();
    assert!(bytes > 0);
    println!("result {end}");
    report_cpu();
}

fn relay_echo(socket: &Path) {
    let stream = UnixStream::connect(socket).expect("connect to the relay");
    ready();
    let mut reader = BufReader::with_capacity(BATCH, stream.try_clone().expect("clone"));
    let mut writer = stream;
    while let Some(payload) = read_frame(&mut reader) {
        let mut frame = Vec::with_capacity(4 + payload.len());
        frame.extend_from_slice(&(payload.len() as u32).to_le_bytes());
        frame.extend_from_slice(&payload);
        if writer.write_all(&frame).is_err() {
            return;
        }
    }
}
