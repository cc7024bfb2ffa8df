//! Shared by the crate's integration tests: a hub running in its own actix System on a
//! thread (a real role on a real socket), and child processes whose output lines can be
//! waited for with a deadline.

#![allow(dead_code, unreachable_pub)]

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc::{channel, Receiver, RecvTimeoutError};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use actix::prelude::*;
use troupe_core::context::Published;
use troupe_core::services::ServiceChannels;
use troupe_core::{NodeControl, Role, RoleContext};
use troupe_ipc::events::{IpcEvents, ServiceEvent, SubscribeEvents};
use troupe_ipc::{HubActor, IpcConfig, IpcRole};

/// Generous: the machine is shared.
pub const WAIT: Duration = Duration::from_secs(20);

/// A hub on a socket in its own temporary folder.
pub struct TestHub {
    pub dir: tempfile::TempDir,
    pub path: PathBuf,
    pub channels: ServiceChannels,
    pub hub: Addr<HubActor>,
    pub events: Arc<Mutex<Vec<ServiceEvent>>>,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

struct Collector(Arc<Mutex<Vec<ServiceEvent>>>);

impl Actor for Collector {
    type Context = Context<Self>;
}

impl Handler<ServiceEvent> for Collector {
    type Result = ();
    fn handle(&mut self, event: ServiceEvent, _: &mut Self::Context) {
        self.0.lock().unwrap().push(event);
    }
}

impl TestHub {
    /// Starts the role with `config` (its `socket` is set to a fresh temporary path).
    pub fn start(config: IpcConfig) -> TestHub {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("hub.sock");
        TestHub::start_at(dir, path, config).unwrap()
    }

    /// Starts the role on `path`; `Err` is the role's start error.
    pub fn start_at(
        dir: tempfile::TempDir,
        path: PathBuf,
        mut config: IpcConfig,
    ) -> Result<TestHub, String> {
        config.socket = path.to_string_lossy().into_owned();
        let (ready_tx, ready_rx) = channel();
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let events = Arc::new(Mutex::new(Vec::new()));
        let collected = events.clone();
        let thread = std::thread::spawn(move || {
            actix_rt::System::new().block_on(async move {
                let published = Published::default();
                let (control, _requests) = NodeControl::channel();
                let ctx = RoleContext {
                    node: Arc::from("test"),
                    role: "ipc",
                    roles: Arc::from(vec!["ipc".to_string()]),
                    config: Arc::new(serde_json::json!({})),
                    published: published.clone(),
                    control,
                };
                match IpcRole::start(config, ctx).await {
                    Ok(role) => {
                        let collector = Collector(collected).start();
                        let events = published.lookup::<IpcEvents>().unwrap();
                        events
                            .subscribe
                            .send(SubscribeEvents(collector.recipient()))
                            .await
                            .unwrap()
                            .unwrap();
                        let found = (
                            published.lookup::<ServiceChannels>().unwrap(),
                            published.lookup::<Addr<HubActor>>().unwrap(),
                        );
                        ready_tx.send(Ok(found)).unwrap();
                        let _ = stopped.await;
                        role.stop().await;
                    }
                    Err(err) => ready_tx.send(Err(err.to_string())).unwrap(),
                }
            });
        });
        match ready_rx
            .recv_timeout(WAIT)
            .expect("the role starts or fails")
        {
            Ok((channels, hub)) => Ok(TestHub {
                dir,
                path,
                channels,
                hub,
                events,
                stop: Some(stop),
                thread: Some(thread),
            }),
            Err(err) => {
                thread.join().unwrap();
                Err(err)
            }
        }
    }

    /// Stops the role and waits for it.
    pub fn stop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(thread) = self.thread.take() {
            thread.join().unwrap();
        }
    }
}

impl Drop for TestHub {
    fn drop(&mut self) {
        self.stop();
    }
}

/// A test config with short timers.
pub fn quick_config() -> IpcConfig {
    IpcConfig {
        mailbox_ttl: "300ms".parse().unwrap(),
        request_timeout: "2s".parse().unwrap(),
        attach_timeout: "2s".parse().unwrap(),
        ..IpcConfig::default()
    }
}

/// A Python test program from `tests/python`.
pub fn python(script: &str) -> Command {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../tests/python")
        .join(script);
    let mut cmd = Command::new("python3");
    cmd.arg(path);
    cmd
}

/// A child process whose output lines are collected as they arrive.
pub struct ChildProc {
    pub child: Child,
    lines: Receiver<String>,
    seen: Arc<Mutex<Vec<String>>>,
}

impl ChildProc {
    pub fn spawn(mut cmd: Command) -> ChildProc {
        cmd.stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .stdin(Stdio::null());
        let mut child = cmd.spawn().expect("spawn");
        let (tx, lines) = channel();
        let seen = Arc::new(Mutex::new(Vec::new()));
        for stream in [
            Box::new(child.stdout.take().unwrap()) as Box<dyn std::io::Read + Send>,
            Box::new(child.stderr.take().unwrap()),
        ] {
            let tx = tx.clone();
            let seen = seen.clone();
            std::thread::spawn(move || {
                for line in BufReader::new(stream).lines() {
                    let Ok(line) = line else { break };
                    seen.lock().unwrap().push(line.clone());
                    if tx.send(line).is_err() {
                        break;
                    }
                }
            });
        }
        ChildProc { child, lines, seen }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Waits for a line containing `needle`; returns it.
    pub fn wait_for(&mut self, needle: &str, timeout: Duration) -> String {
        let deadline = Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(line) if line.contains(needle) => return line,
                Ok(_) => {}
                Err(RecvTimeoutError::Timeout) | Err(RecvTimeoutError::Disconnected) => panic!(
                    "no line with {needle:?} within {timeout:?}; output so far:\n{}",
                    self.seen.lock().unwrap().join("\n")
                ),
            }
        }
    }

    pub fn output(&self) -> String {
        self.seen.lock().unwrap().join("\n")
    }

    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Waits for the exit, up to `timeout`.
    pub fn wait_exit(&mut self, timeout: Duration) -> std::process::ExitStatus {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status;
            }
            assert!(
                Instant::now() < deadline,
                "no exit within {timeout:?}:\n{}",
                self.output()
            );
            std::thread::sleep(Duration::from_millis(10));
        }
    }
}

impl Drop for ChildProc {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Polls `check` until it returns `Some`, up to `timeout`.
pub fn eventually<T>(timeout: Duration, mut check: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(value) = check() {
            return value;
        }
        assert!(
            Instant::now() < deadline,
            "condition not met within {timeout:?}"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
}
