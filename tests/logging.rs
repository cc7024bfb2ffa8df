//! Integration tests of the node's logging, running the real `troupe` binary: a stderr that
//! nobody reads stalls nothing (crash detection and restarts go on at full speed, lines are
//! dropped and counted), and the count is logged once stderr is read again.

use std::io::{BufRead, BufReader};
use std::os::fd::AsRawFd;
use std::path::Path;
use std::process::{Child, ChildStderr, Stdio};
use std::sync::mpsc::{channel, Receiver};
use std::time::{Duration, Instant};

use troupe_tests::troupe;

const START: Duration = Duration::from_secs(30);
const STOP: Duration = Duration::from_secs(20);
/// The issue's bound: a killed service is running again within this, stderr blocked or not.
const RESTART_BOUND: Duration = Duration::from_millis(50);
/// Lines the noisy service writes: far more than the node's queue (8192 lines) and a pipe
/// (64 KiB) hold together.
const NOISE_LINES: usize = 40_000;

/// Kills the node (and so its services) if the test fails before it stopped it.
struct Node(Child);

impl Drop for Node {
    fn drop(&mut self) {
        if let Ok(None) = self.0.try_wait() {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
}

/// The pid a service wrote to `path` (`echo $$ > path`), once the whole line is there.
fn read_pid(path: &Path) -> Option<u32> {
    let text = std::fs::read_to_string(path).ok()?;
    text.strip_suffix('\n')?.trim().parse().ok()
}

/// Polls `check` until it gives a value, up to `timeout`.
fn poll<T>(timeout: Duration, what: &str, mut check: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(value) = check() {
            return value;
        }
        assert!(Instant::now() < deadline, "not within {timeout:?}: {what}");
        std::thread::sleep(Duration::from_millis(1));
    }
}

/// Whether the pipe behind `stderr` is full: the node's next log line cannot be written.
fn pipe_full(stderr: &ChildStderr) -> bool {
    let fd = stderr.as_raw_fd();
    let mut queued: libc::c_int = 0;
    // SAFETY: fcntl(F_GETPIPE_SZ) and ioctl(FIONREAD) on a pipe we own; FIONREAD writes one
    // c_int into `queued`.
    let (size, ok) = unsafe {
        (
            libc::fcntl(fd, libc::F_GETPIPE_SZ),
            libc::ioctl(fd, libc::FIONREAD, &mut queued as *mut libc::c_int),
        )
    };
    // A line of at most 4 KiB is written whole or not at all.
    size > 0 && ok == 0 && queued >= size - 4096
}

/// Reads `stderr` line by line from now on.
fn read_lines(stderr: ChildStderr) -> Receiver<String> {
    let (tx, rx) = channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines() {
            let Ok(line) = line else { break };
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    rx
}

/// Waits for a line containing `needle`; returns it and every line before it.
fn wait_line(lines: &Receiver<String>, needle: &str, timeout: Duration) -> (String, Vec<String>) {
    let deadline = Instant::now() + timeout;
    let mut seen = Vec::new();
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match lines.recv_timeout(left) {
            Ok(line) if line.contains(needle) => return (line, seen),
            Ok(line) => seen.push(line),
            Err(_) => panic!(
                "no line with {needle:?} within {timeout:?}; the last lines:\n{}",
                seen[seen.len().saturating_sub(20)..].join("\n")
            ),
        }
    }
}

/// The number after ` key=` in a log line.
fn field(line: &str, key: &str) -> u64 {
    let at = line
        .find(&format!(" {key}="))
        .unwrap_or_else(|| panic!("no {key}= in {line}"));
    line[at + key.len() + 2..]
        .chars()
        .take_while(char::is_ascii_digit)
        .collect::<String>()
        .parse()
        .unwrap_or_else(|_| panic!("no number after {key}= in {line}"))
}

#[test]
fn a_stderr_nobody_reads_does_not_delay_crash_detection() {
    let dir = tempfile::tempdir().unwrap();
    let pid_file = dir.path().join("victim.pid");
    let noise_done = dir.path().join("noise.done");
    let config = dir.path().join("node.toml");
    std::fs::write(
        &config,
        format!(
            r#"
name = "log-stall-{node}"
roles = ["supervisor"]
shutdown_timeout = "10s"
[supervisor]
state_dir = "{state}"
[[supervisor.services]]
id = "noisy"
command = "sh"
args = ["-c", "yes 'noise line, long enough to fill pipes and queues quickly: 0123456789' | head -n {NOISE_LINES}; touch {done}; exec sleep 1000"]
[[supervisor.services]]
id = "victim"
command = "sh"
args = ["-c", "echo $$ > {pid_file}; exec sleep 1000"]
plan = ["restart"]
count = "infinity"
min_restart_interval = "0s"
"#,
            node = std::process::id(),
            state = dir.path().join("state").display(),
            done = noise_done.display(),
            pid_file = pid_file.display(),
        ),
    )
    .unwrap();
    let mut cmd = troupe();
    cmd.arg("run")
        .arg("--config")
        .arg(&config)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    let mut node = Node(cmd.spawn().expect("spawn troupe"));
    // Not read until the restarts are measured.
    let stderr = node.0.stderr.take().expect("stderr");

    // The noise is written (the node read all of it but what its pipe holds), and the node's
    // stderr is full: every line it logs from here on finds its queue full.
    poll(START, "the noisy service wrote its lines", || {
        noise_done.exists().then_some(())
    });
    poll(START, "the node's stderr pipe is full", || {
        pipe_full(&stderr).then_some(())
    });
    let mut pid = poll(START, "the victim wrote its pid", || read_pid(&pid_file));

    let mut took = Vec::new();
    for _ in 0..3 {
        let killed_at = Instant::now();
        // SAFETY: kill(2) on the pid the service wrote; touches no memory.
        assert_eq!(unsafe { libc::kill(pid as i32, libc::SIGKILL) }, 0);
        let new = poll(START, "the victim was restarted", || {
            read_pid(&pid_file).filter(|&new| new != pid)
        });
        took.push(killed_at.elapsed());
        pid = new;
    }
    assert!(pipe_full(&stderr), "stderr drained while it was not read");
    eprintln!("restarted {took:?} after SIGKILL, with the node's stderr blocked");
    for elapsed in &took {
        assert!(
            *elapsed <= RESTART_BOUND,
            "restarted {elapsed:?} after SIGKILL (bound {RESTART_BOUND:?}); all: {took:?}"
        );
    }

    // Once stderr is read again, the node says how many lines it dropped.
    let lines = read_lines(stderr);
    let (report, _) = wait_line(&lines, "log lines dropped", START);
    assert!(report.contains("WARN"), "{report}");
    let dropped = field(&report, "dropped");
    assert!(
        dropped > 0 && field(&report, "total") >= dropped,
        "{report}"
    );
    eprintln!("{report}");

    // And it still stops cleanly.
    // SAFETY: kill(2) on our own child's pid.
    unsafe { libc::kill(node.0.id() as i32, libc::SIGTERM) };
    let status = poll(STOP, "the node exited", || node.0.try_wait().ok().flatten());
    assert_eq!(status.code(), Some(0), "{status:?}");
    // Its last line was written before it exited (`logging::flush`).
    wait_line(&lines, "node stopped", STOP);
}
