//! Shared helpers: a supervisor actor running in-process with real child processes.

#![allow(dead_code)]

use std::sync::Arc;
use std::time::{Duration, Instant};

use actix::prelude::*;
use troupe_core::context::Published;
use troupe_core::services::ServiceChannels;
use troupe_core::{NodeControl, NodeStopRequest, RoleContext};
use troupe_supervisor::{
    ChildInfo, ChildSpec, ChildStatus, DefaultSpec, Escalation, Supervisor, SupervisorSetup,
};

/// Generous bound for anything that should happen promptly on a busy machine.
pub const DEADLINE: Duration = Duration::from_secs(20);

/// A supervisor's setup with `children`.
pub fn setup(children: Vec<ChildSpec>, channels: Option<ServiceChannels>) -> SupervisorSetup {
    SupervisorSetup {
        children,
        failed: Vec::new(),
        default: DefaultSpec::default(),
        max_children: 100,
        max_line_bytes: 4096,
        log_lines: 1000,
        log_bytes: 1 << 20,
        state_dir: std::env::temp_dir().join(format!("troupe-sv-test-{}", std::process::id())),
        channels,
        cluster: None,
        config: None,
    }
}

/// A role context whose stop requests arrive on the returned receiver.
pub fn role_context() -> (
    RoleContext,
    tokio::sync::mpsc::UnboundedReceiver<NodeStopRequest>,
) {
    let (control, requests) = NodeControl::channel();
    let ctx = RoleContext {
        node: Arc::from("test-node"),
        role: "supervisor",
        roles: Arc::from(vec!["supervisor".to_string()]),
        config: Arc::new(serde_json::Value::Null),
        published: Published::default(),
        control,
    };
    (ctx, requests)
}

/// Starts a top-level supervisor.
pub fn start(
    setup: SupervisorSetup,
) -> (
    Addr<Supervisor>,
    tokio::sync::mpsc::UnboundedReceiver<NodeStopRequest>,
) {
    let (ctx, requests) = role_context();
    (
        Supervisor::new(setup, Escalation::Node(ctx), None).start(),
        requests,
    )
}

/// The row of child `id`.
pub async fn child(addr: &Addr<Supervisor>, id: &str) -> Option<ChildInfo> {
    addr.send(troupe_supervisor::messages::WhichChildren)
        .await
        .unwrap()
        .into_iter()
        .find(|c| c.id == id)
}

/// Polls child `id` until `check` holds for its row (None: the child is gone).
pub async fn until(
    addr: &Addr<Supervisor>,
    id: &str,
    what: &str,
    check: impl Fn(Option<&ChildInfo>) -> bool,
) -> Option<ChildInfo> {
    let deadline = Instant::now() + DEADLINE;
    loop {
        let row = child(addr, id).await;
        if check(row.as_ref()) {
            return row;
        }
        assert!(
            Instant::now() < deadline,
            "{id}: not {what} within {DEADLINE:?}; last: {row:?}"
        );
        actix_rt::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Waits until child `id` is running and returns its pid (None for actors).
pub async fn running(addr: &Addr<Supervisor>, id: &str) -> Option<u32> {
    until(addr, id, "running", |c| {
        c.is_some_and(|c| c.status == ChildStatus::Running)
    })
    .await
    .and_then(|c| c.pid)
}

/// Whether process `pid` exists and is not a zombie.
pub fn alive(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|s| s.rfind(')').and_then(|i| s[i + 2..].chars().next()))
        .is_some_and(|state| state != 'Z' && state != 'X')
}

/// Sends `signal` to `pid`.
pub fn kill(pid: u32, signal: nix::sys::signal::Signal) {
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid as i32), signal).unwrap();
}

/// A process child running `sh -c script`.
pub fn sh(id: &str, script: &str, plan: &str) -> ChildSpec {
    ChildSpec::process(id, "sh")
        .with_args(["-c", script])
        .with_plan(serde_json::from_str(plan).unwrap())
}

/// Polls child `id`'s status until `check` holds.
pub async fn status_until(
    sup: &Addr<Supervisor>,
    id: &str,
    what: &str,
    check: impl Fn(&troupe_supervisor::ServiceStatus) -> bool,
) -> troupe_supervisor::ServiceStatus {
    let deadline = Instant::now() + DEADLINE;
    loop {
        let status = sup
            .send(troupe_supervisor::messages::GetServiceStatus(id.into()))
            .await
            .unwrap();
        if let Ok(s) = &status {
            if check(s) {
                return s.clone();
            }
        }
        assert!(
            Instant::now() < deadline,
            "{id}: not {what} within {DEADLINE:?}; last: {status:?}"
        );
        actix_rt::time::sleep(Duration::from_millis(10)).await;
    }
}
