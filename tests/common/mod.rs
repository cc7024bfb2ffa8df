//! Harness for integration tests that run the real `troupe` binary: spawn a node, read its log
//! lines as they come, wait for a line with a deadline, send signals, wait for its exit.
//!
//! The binary is looked up next to the test executable (`target/<profile>/troupe`), or at
//! `$TROUPE_BIN`; `make test` builds it first.

use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc::{channel, Receiver, RecvTimeoutError};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Path of the `troupe` binary under test.
pub fn troupe_bin() -> PathBuf {
    if let Some(path) = std::env::var_os("TROUPE_BIN") {
        return PathBuf::from(path);
    }
    let exe = std::env::current_exe().expect("test executable path");
    let profile_dir = exe
        .parent()
        .and_then(|deps| deps.parent())
        .expect("target/<profile>/deps");
    let bin = profile_dir.join("troupe");
    assert!(
        bin.exists(),
        "{} not found: build it first (`cargo build --bins`, or `make test`)",
        bin.display()
    );
    bin
}

/// A `troupe` command with a quiet, predictable environment. Each command gets a runtime
/// folder of its own (`XDG_RUNTIME_DIR`), so that nodes started by tests running at the same
/// time never meet on a default socket path; tests that talk to a node name its socket.
pub fn troupe() -> Command {
    let mut cmd = Command::new(troupe_bin());
    cmd.env_remove("RUST_LOG");
    for (key, _) in std::env::vars() {
        if key.starts_with("TROUPE_") && key != "TROUPE_BIN" {
            cmd.env_remove(key);
        }
    }
    for var in ["NOTIFY_SOCKET", "WATCHDOG_USEC", "WATCHDOG_PID"] {
        cmd.env_remove(var);
    }
    cmd.env("XDG_RUNTIME_DIR", runtime_dir());
    cmd
}

/// A new, private folder for one command's sockets.
pub fn runtime_dir() -> PathBuf {
    use std::os::unix::fs::DirBuilderExt;
    use std::sync::atomic::{AtomicU64, Ordering};
    static NEXT: AtomicU64 = AtomicU64::new(0);
    let n = NEXT.fetch_add(1, Ordering::Relaxed);
    let dir = std::env::temp_dir().join(format!("troupe-test-{}-{n}", std::process::id()));
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(&dir)
        .expect("create a runtime folder");
    dir
}

pub mod bench;
pub mod etcd;
pub mod netns;
mod ports;
pub use ports::free_port;

/// A running process whose stderr and stdout lines are collected as they arrive.
pub struct Proc {
    child: Option<Child>,
    lines: Receiver<String>,
    seen: Arc<Mutex<Vec<String>>>,
    status: Option<ExitStatus>,
}

impl Proc {
    /// Spawns `cmd` with piped output.
    pub fn spawn(mut cmd: Command) -> Proc {
        cmd.stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .stdin(Stdio::null());
        let mut child = cmd.spawn().expect("spawn");
        let (tx, rx) = channel();
        let seen = Arc::new(Mutex::new(Vec::new()));
        let out = child.stdout.take().expect("stdout");
        let err = child.stderr.take().expect("stderr");
        for stream in [
            Box::new(out) as Box<dyn std::io::Read + Send>,
            Box::new(err),
        ] {
            let tx = tx.clone();
            let seen = seen.clone();
            std::thread::spawn(move || {
                for line in BufReader::new(stream).lines() {
                    let Ok(line) = line else { break };
                    if std::env::var_os("TROUPE_TEST_ECHO").is_some() {
                        eprintln!("| {line}");
                    }
                    seen.lock().unwrap().push(line.clone());
                    if tx.send(line).is_err() {
                        break;
                    }
                }
            });
        }
        Proc {
            child: Some(child),
            lines: rx,
            seen,
            status: None,
        }
    }

    /// The process id.
    pub fn pid(&self) -> u32 {
        self.child.as_ref().map(|c| c.id()).unwrap_or(0)
    }

    /// Waits until a line containing every one of `needles` arrives; returns it.
    pub fn wait_for(&mut self, needles: &[&str], timeout: Duration) -> String {
        let deadline = Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(line) if needles.iter().all(|n| line.contains(n)) => return line,
                Ok(_) => {}
                Err(RecvTimeoutError::Timeout) | Err(RecvTimeoutError::Disconnected) => {
                    panic!(
                        "no line with {needles:?} within {timeout:?}; output so far:\n{}",
                        self.output()
                    )
                }
            }
        }
    }

    /// Waits until some line, printed before or after this call, contains every one of
    /// `needles` (for lines that may come before the one a test waited for last).
    pub fn wait_printed(&self, needles: &[&str], timeout: Duration) {
        let deadline = Instant::now() + timeout;
        while !self.printed(needles) {
            if Instant::now() >= deadline {
                panic!(
                    "no line with {needles:?} within {timeout:?}; output so far:\n{}",
                    self.output()
                );
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// The `n`-th line (from 1) the process printed that contains every one of `needles`,
    /// waiting for it; lines printed before this call count.
    pub fn nth_printed(&self, needles: &[&str], n: usize, timeout: Duration) -> String {
        let deadline = Instant::now() + timeout;
        loop {
            let found = self
                .seen
                .lock()
                .unwrap()
                .iter()
                .filter(|line| needles.iter().all(|needle| line.contains(needle)))
                .nth(n.saturating_sub(1))
                .cloned();
            if let Some(line) = found {
                return line;
            }
            if Instant::now() >= deadline {
                panic!(
                    "no line {n} with {needles:?} within {timeout:?}; output so far:\n{}",
                    self.output()
                );
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// Everything the process printed so far.
    pub fn output(&self) -> String {
        self.seen.lock().unwrap().join("\n")
    }

    /// Whether any line so far contains every one of `needles`.
    pub fn printed(&self, needles: &[&str]) -> bool {
        self.seen
            .lock()
            .unwrap()
            .iter()
            .any(|line| needles.iter().all(|n| line.contains(n)))
    }

    /// Sends `signal` to the process.
    pub fn signal(&self, signal: i32) {
        // SAFETY: kill(2) on our own child's pid; no memory is touched.
        unsafe {
            libc::kill(self.pid() as i32, signal);
        }
    }

    /// Kills the process with SIGKILL and reaps it.
    pub fn kill_now(&mut self) -> ExitStatus {
        self.signal(libc::SIGKILL);
        self.wait_exit(Duration::from_secs(30))
    }

    /// Waits for the exit, up to `timeout`; panics (after killing it) if it does not exit.
    pub fn wait_exit(&mut self, timeout: Duration) -> ExitStatus {
        if let Some(status) = self.status {
            return status;
        }
        let deadline = Instant::now() + timeout;
        let child = self.child.as_mut().expect("child");
        loop {
            if let Some(status) = child.try_wait().expect("try_wait") {
                self.status = Some(status);
                // Let the reader threads drain what is left.
                std::thread::sleep(Duration::from_millis(50));
                return status;
            }
            if Instant::now() >= deadline {
                let _ = child.kill();
                let _ = child.wait();
                panic!(
                    "process did not exit within {timeout:?}; output:\n{}",
                    self.output()
                );
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        if let Some(child) = self.child.as_mut() {
            if self.status.is_none() {
                let _ = child.kill();
                let _ = child.wait();
            }
        }
    }
}

/// Asks `probe` every 20ms until it answers `Ok`, for at most `timeout`; then panics saying
/// what was awaited (`what`) and the last answer.
pub fn eventually<T>(
    timeout: Duration,
    what: &str,
    mut probe: impl FnMut() -> Result<T, String>,
) -> T {
    let deadline = Instant::now() + timeout;
    loop {
        match probe() {
            Ok(found) => return found,
            Err(last) if Instant::now() >= deadline => {
                panic!("not {what} within {timeout:?}; last seen: {last}")
            }
            Err(_) => std::thread::sleep(Duration::from_millis(20)),
        }
    }
}

/// Runs `cmd` to completion (bounded by `timeout`) and returns (status, stdout, stderr).
pub fn run_to_end(cmd: Command, timeout: Duration) -> (ExitStatus, String) {
    let mut proc = Proc::spawn(cmd);
    let status = proc.wait_exit(timeout);
    (status, proc.output())
}
