//! Supervisor benchmarks, each running Troupe and supervisord on the same workload in the same
//! run:
//!
//! 1. restart latency: a service is SIGKILLed N times (default 200); the time from the kill to
//!    the replacement process running (it writes its pid to a FIFO as its first act);
//! 2. scale: 1000 `sleep` services; the time until all of them have exec'd `sleep` (seen in
//!    /proc), and the supervisor's RSS growth per service against the same supervisor with
//!    none.
//!
//! Run with `make bench`, or `cargo bench -p troupe-supervisor --bench supervisor` after
//! `cargo build --release --bins`. `SUPERVISOR_BENCH_QUICK=1` runs a short version;
//! `SUPERVISOR_BENCH_RUNS` sets the number of runs (default 3); `SUPERVISOR_BENCH_ONLY=restart`
//! or `=scale` runs one of the two. supervisord is installed with pip if missing.

use std::collections::HashMap;
use std::fs::{File, OpenOptions};
use std::io::{BufRead, BufReader, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::os::unix::io::AsRawFd;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const TARGET_RESTART_MEDIAN_MS: f64 = 5.0;
const TARGET_ALL_RUNNING_S: f64 = 1.0;
const TARGET_RSS_PER_SERVICE_KIB: f64 = 20.0;

struct Settings {
    kills: usize,
    services: usize,
    runs: usize,
}

fn main() {
    let quick = std::env::var_os("SUPERVISOR_BENCH_QUICK").is_some();
    let settings = Settings {
        kills: if quick { 20 } else { 200 },
        services: if quick { 100 } else { 1000 },
        runs: std::env::var("SUPERVISOR_BENCH_RUNS")
            .ok()
            .and_then(|r| r.parse().ok())
            .unwrap_or(if quick { 1 } else { 3 }),
    };
    // `cargo bench` passes `--bench`; a plain `cargo test --benches` passes nothing useful.
    let troupe = troupe_bin();
    ensure_supervisord();
    println!(
        "supervisor benchmarks: {} kills, {} services, {} runs (machine shared; medians)",
        settings.kills, settings.services, settings.runs
    );

    let only = std::env::var("SUPERVISOR_BENCH_ONLY").unwrap_or_default();
    let mut restart: HashMap<&str, Vec<(f64, f64)>> = HashMap::new();
    let mut scale: HashMap<&str, Vec<(f64, f64)>> = HashMap::new();
    for run in 1..=settings.runs {
        for kind in [Kind::Troupe, Kind::Supervisord] {
            if only != "scale" {
                let (median, p99) = restart_latency(kind, &troupe, settings.kills);
                println!(
                    "run {run} restart {:<11} median {median:7.2} ms  p99 {p99:7.2} ms",
                    kind.name()
                );
                restart.entry(kind.name()).or_default().push((median, p99));
            }
            if only != "restart" {
                let (all, per) = scale_run(kind, &troupe, settings.services);
                println!(
                    "run {run} scale   {:<11} all running {all:6.3} s  RSS {per:6.2} KiB/service",
                    kind.name()
                );
                scale.entry(kind.name()).or_default().push((all, per));
            }
        }
    }

    println!();
    if only != "scale" {
        report_restart(&restart, &settings);
    }
    if only != "restart" {
        report_scale(&scale, &settings);
    }
}

type Samples<'a> = HashMap<&'a str, Vec<(f64, f64)>>;

fn report_restart(restart: &Samples, settings: &Settings) {
    let (t, s) = (&restart["troupe"], &restart["supervisord"]);
    let (tm, tp, sm, sp) = (med(t, true), med(t, false), med(s, true), med(s, false));
    println!(
        "restart latency (median of {} runs of {} kills)",
        settings.runs, settings.kills
    );
    println!("  troupe      median {tm:7.2} ms  p99 {tp:7.2} ms   target median < {TARGET_RESTART_MEDIAN_MS} ms: {}", verdict(tm < TARGET_RESTART_MEDIAN_MS));
    println!("  supervisord median {sm:7.2} ms  p99 {sp:7.2} ms");
    println!(
        "  ratio supervisord/troupe: median {:.1}x, p99 {:.1}x",
        sm / tm,
        sp / tp
    );
}

fn report_scale(scale: &Samples, settings: &Settings) {
    let (t, s) = (&scale["troupe"], &scale["supervisord"]);
    let (ta, tr, sa, sr) = (med(t, true), med(t, false), med(s, true), med(s, false));
    println!(
        "scale: {} sleep services (median of {} runs)",
        settings.services, settings.runs
    );
    println!("  troupe      all running {ta:6.3} s  RSS {tr:6.2} KiB/service   targets < {TARGET_ALL_RUNNING_S} s: {}, < {TARGET_RSS_PER_SERVICE_KIB} KiB: {}", verdict(ta < TARGET_ALL_RUNNING_S), verdict(tr < TARGET_RSS_PER_SERVICE_KIB));
    println!("  supervisord all running {sa:6.3} s  RSS {sr:6.2} KiB/service");
    println!(
        "  ratio supervisord/troupe: time {:.1}x, RSS/service {:.1}x",
        sa / ta,
        sr / tr
    );
}

/// The median of the first (or second) member of each run's pair.
fn med(runs: &[(f64, f64)], first: bool) -> f64 {
    median(
        &runs
            .iter()
            .map(|p| if first { p.0 } else { p.1 })
            .collect::<Vec<_>>(),
    )
}

fn verdict(ok: bool) -> &'static str {
    if ok {
        "met"
    } else {
        "MISSED"
    }
}

#[derive(Clone, Copy)]
enum Kind {
    Troupe,
    Supervisord,
}

impl Kind {
    fn name(self) -> &'static str {
        match self {
            Kind::Troupe => "troupe",
            Kind::Supervisord => "supervisord",
        }
    }
}

fn troupe_bin() -> PathBuf {
    if let Some(bin) = std::env::var_os("TROUPE_BIN") {
        return PathBuf::from(bin);
    }
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    let bin = root.join("target/release/troupe");
    assert!(
        bin.exists(),
        "{} not found: run `cargo build --release --bins` first (make bench does)",
        bin.display()
    );
    bin
}

fn ensure_supervisord() {
    let present = |py: &str| {
        Command::new(py)
            .args(["-c", "import supervisor.supervisord"])
            .status()
            .is_ok_and(|s| s.success())
    };
    if !present("python3") {
        println!("installing supervisor (pip) for the baseline");
        let ok = Command::new("python3")
            .args(["-m", "pip", "install", "--quiet", "supervisor"])
            .status()
            .is_ok_and(|s| s.success());
        assert!(
            ok && present("python3"),
            "cannot install supervisor with pip"
        );
    }
}

/// A supervisor process under test, killed (with its services) when dropped.
struct Running {
    child: Child,
    _dir: tempfile::TempDir,
}

impl Drop for Running {
    fn drop(&mut self) {
        // SIGTERM lets both supervisors stop their services; then make sure.
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(self.child.id() as i32),
            nix::sys::signal::Signal::SIGTERM,
        );
        let deadline = Instant::now() + Duration::from_secs(30);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Running {
    /// Waits until the supervisor says it has started (its own log line).
    fn wait_started(&self, kind: Kind) {
        let (file, marker) = match kind {
            Kind::Troupe => ("troupe.log", "node ready"),
            Kind::Supervisord => ("supervisord.log", "supervisord started with pid"),
        };
        let path = self._dir.path().join(file);
        let deadline = Instant::now() + Duration::from_secs(60);
        while !std::fs::read_to_string(&path).is_ok_and(|t| t.contains(marker)) {
            assert!(
                Instant::now() < deadline,
                "{}: not started in 60 s",
                kind.name()
            );
            std::thread::sleep(Duration::from_millis(10));
        }
    }
}

/// Starts `kind` supervising `services` (id, shell-free argv), in `dir`. Troupe's services
/// have no restart floor (`min_restart_interval = "0s"`), as supervisord's have none: the
/// latency benchmark kills each replacement as soon as it runs.
fn launch(
    kind: Kind,
    troupe: &Path,
    dir: tempfile::TempDir,
    services: &[(String, Vec<String>)],
) -> Running {
    let mut cmd = match kind {
        Kind::Troupe => {
            let mut text = format!(
                "name = \"bench-{}\"\nroles = [\"supervisor\"]\nshutdown_timeout = \"30s\"\n[supervisor]\nstate_dir = \"{}\"\n",
                std::process::id(),
                dir.path().join("state").display()
            );
            for (id, argv) in services {
                let quoted: Vec<String> = argv[1..].iter().map(|a| format!("{a:?}")).collect();
                text.push_str(&format!(
                    "[[supervisor.services]]\nid = \"{id}\"\ncommand = {:?}\nargs = [{}]\nplan = [\"restart\"]\ncount = \"infinity\"\nmin_restart_interval = \"0s\"\nterminate_timeout_ms = 0\n",
                    argv[0],
                    quoted.join(", ")
                ));
            }
            let config = dir.path().join("troupe.toml");
            std::fs::write(&config, text).unwrap();
            let mut cmd = Command::new(troupe);
            cmd.arg("run").arg("--config").arg(&config);
            cmd.stderr(File::create(dir.path().join("troupe.log")).unwrap());
            cmd
        }
        Kind::Supervisord => {
            let mut text = format!(
                "[supervisord]\nnodaemon=true\nlogfile={0}/supervisord.log\npidfile={0}/supervisord.pid\nloglevel=info\nminfds=4096\nminprocs=2048\n",
                dir.path().display()
            );
            for (id, argv) in services {
                let command: Vec<String> = argv.iter().map(|a| shell_quote(a)).collect();
                text.push_str(&format!(
                    "[program:{id}]\ncommand={}\nautostart=true\nautorestart=true\nstartsecs=0\nstartretries=1000000\nstopsignal=KILL\nstdout_logfile=NONE\nstderr_logfile=NONE\n",
                    command.join(" ")
                ));
            }
            let config = dir.path().join("supervisord.conf");
            std::fs::write(&config, text).unwrap();
            let mut cmd = Command::new("python3");
            cmd.args(["-m", "supervisor.supervisord", "-n", "-c"])
                .arg(&config);
            cmd.stderr(Stdio::null());
            cmd
        }
    };
    cmd.stdin(Stdio::null()).stdout(Stdio::null());
    let child = cmd.spawn().expect("start the supervisor");
    Running { child, _dir: dir }
}

fn shell_quote(arg: &str) -> String {
    if arg
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || "/._-".contains(c))
    {
        arg.to_string()
    } else {
        format!("'{}'", arg.replace('\'', "'\\''").replace('%', "%%"))
    }
}

/// Kills the service `kills` times; returns the median and p99 kill-to-replacement times (ms).
fn restart_latency(kind: Kind, troupe: &Path, kills: usize) -> (f64, f64) {
    let dir = tempfile::tempdir().unwrap();
    let fifo = dir.path().join("pids.fifo");
    nix::unistd::mkfifo(&fifo, nix::sys::stat::Mode::from_bits_truncate(0o600)).unwrap();
    // Opened read-write so that it never sees end of file between writers.
    let reader = OpenOptions::new()
        .read(true)
        .write(true)
        .custom_flags(libc::O_NONBLOCK)
        .open(&fifo)
        .unwrap();
    let script = format!("echo $$ > {}; exec sleep 100000", fifo.display());
    let services = vec![("svc".to_string(), vec!["sh".into(), "-c".into(), script])];
    let _running = launch(kind, troupe, dir, &services);
    let mut pids = PidReader::new(reader);
    let mut pid = pids.next(Duration::from_secs(30)).expect("first start");
    let mut samples = Vec::with_capacity(kills);
    for _ in 0..kills {
        let since = Instant::now();
        nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(pid as i32),
            nix::sys::signal::Signal::SIGKILL,
        )
        .unwrap();
        let next = pids
            .next(Duration::from_secs(30))
            .unwrap_or_else(|| panic!("{}: no restart within 30 s", kind.name()));
        samples.push(since.elapsed().as_secs_f64() * 1000.0);
        pid = next;
    }
    samples.sort_by(f64::total_cmp);
    (median(&samples), percentile(&samples, 0.99))
}

/// Reads pids, one per line, from the FIFO, waiting with poll(2).
struct PidReader {
    file: File,
    buf: Vec<u8>,
}

impl PidReader {
    fn new(file: File) -> Self {
        PidReader {
            file,
            buf: Vec::new(),
        }
    }

    fn next(&mut self, timeout: Duration) -> Option<u32> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(end) = self.buf.iter().position(|&b| b == b'\n') {
                let line: Vec<u8> = self.buf.drain(..=end).collect();
                return String::from_utf8_lossy(&line).trim().parse().ok();
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return None;
            }
            let mut fds = [libc::pollfd {
                fd: self.file.as_raw_fd(),
                events: libc::POLLIN,
                revents: 0,
            }];
            // SAFETY: poll(2) on one pollfd we own, for at most `left`.
            unsafe {
                libc::poll(
                    fds.as_mut_ptr(),
                    1,
                    left.as_millis().min(i32::MAX as u128) as i32,
                )
            };
            let mut chunk = [0u8; 256];
            if let Ok(n) = std::io::Read::read(&mut self.file, &mut chunk) {
                self.buf.extend_from_slice(&chunk[..n]);
            }
        }
    }
}

/// Starts `n` sleep services; returns (seconds until all have exec'd sleep, RSS growth per
/// service in KiB against the same supervisor with none).
fn scale_run(kind: Kind, troupe: &Path, n: usize) -> (f64, f64) {
    let idle = {
        let running = launch(kind, troupe, tempfile::tempdir().unwrap(), &[]);
        running.wait_started(kind);
        settle_rss(running.child.id())
    };
    let services: Vec<(String, Vec<String>)> = (0..n)
        .map(|i| (format!("s{i}"), vec!["sleep".into(), "100000".into()]))
        .collect();
    let since = Instant::now();
    let running = launch(kind, troupe, tempfile::tempdir().unwrap(), &services);
    let pid = running.child.id();
    // pid -> Some(running sleep) for our children, None for other processes (never ours:
    // a pid is not reused while it exists).
    let mut seen: HashMap<u32, Option<bool>> = HashMap::new();
    let deadline = Instant::now() + Duration::from_secs(300);
    loop {
        scan_children(pid, &mut seen);
        if seen.values().filter(|&&s| s == Some(true)).count() >= n {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "{}: not all running in 300 s",
            kind.name()
        );
        std::thread::sleep(Duration::from_millis(10));
    }
    let all = since.elapsed().as_secs_f64();
    if let Kind::Troupe = kind {
        // The node's own measure, from its supervisor's start to its last child running.
        let log =
            std::fs::read_to_string(running._dir.path().join("troupe.log")).unwrap_or_default();
        if let Some(line) = log.lines().find(|l| l.contains("all children running")) {
            let own = line.split("elapsed_ms=").nth(1).unwrap_or("?");
            println!("        (troupe's own report: all children running after {own} ms)");
        }
    }
    let full = settle_rss(pid);
    (all, (full - idle) / n as f64)
}

/// Updates `seen` from /proc: which processes are children of `parent` and whether they run
/// `sleep` yet. Processes already classified as running sleep or as not ours are skipped.
fn scan_children(parent: u32, seen: &mut HashMap<u32, Option<bool>>) {
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return;
    };
    for entry in entries.flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        if matches!(seen.get(&pid), Some(None) | Some(Some(true))) {
            continue;
        }
        let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
            continue;
        };
        let (Some(open), Some(close)) = (stat.find('('), stat.rfind(')')) else {
            continue;
        };
        let ppid = stat[close + 2..]
            .split(' ')
            .nth(1)
            .and_then(|p| p.parse::<u32>().ok());
        let state = (ppid == Some(parent)).then(|| &stat[open + 1..close] == "sleep");
        seen.insert(pid, state);
    }
}

/// The process's RSS in KiB once it has stopped changing (three equal readings 100 ms apart,
/// at most 5 s).
fn settle_rss(pid: u32) -> f64 {
    let read = || -> f64 {
        let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
        BufReader::new(status.as_bytes())
            .lines()
            .map_while(Result::ok)
            .find_map(|l| {
                l.strip_prefix("VmRSS:").map(|v| {
                    v.trim()
                        .trim_end_matches(" kB")
                        .trim()
                        .parse()
                        .unwrap_or(0.0)
                })
            })
            .unwrap_or(0.0)
    };
    // Wait for the process to be up at all.
    let deadline = Instant::now() + Duration::from_secs(5);
    let (mut last, mut same) = (read(), 0);
    while same < 3 && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(100));
        let now = read();
        same = if now == last && now > 0.0 {
            same + 1
        } else {
            0
        };
        last = now;
    }
    let _ = std::io::stdout().flush();
    last
}

fn median(sorted_or_not: &[f64]) -> f64 {
    let mut v = sorted_or_not.to_vec();
    v.sort_by(f64::total_cmp);
    if v.is_empty() {
        return f64::NAN;
    }
    let mid = v.len() / 2;
    if v.len().is_multiple_of(2) {
        (v[mid - 1] + v[mid]) / 2.0
    } else {
        v[mid]
    }
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    let index = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[index.min(sorted.len() - 1)]
}
