//! What the node shares with its control API: who it is, its roles' states, and the channel
//! through which reloads reach the node's main task. The API keeps no other state: everything
//! else it shows, it asks the roles' actors for at the time of the request.

use std::sync::{Arc, Mutex};
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use serde::Serialize;
use tokio::sync::{mpsc, oneshot};

/// A role's life, as the node reports it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum RoleState {
    /// Being started.
    Starting,
    /// Started.
    Running,
    /// Being stopped.
    Stopping,
    /// Stopped.
    Stopped,
    /// Did not stop within the shutdown timeout.
    Abandoned,
}

/// One role in [`NodeView`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct RoleView {
    /// The role's name (`cluster` is the node's cluster client).
    pub name: String,
    /// Its state.
    pub state: RoleState,
}

/// `GET /v1/node`.
#[derive(Debug, Clone, Serialize)]
pub struct NodeView {
    /// The node's name.
    pub name: String,
    /// Troupe's version.
    pub version: &'static str,
    /// The node's process id.
    pub pid: u32,
    /// When the node started (Unix time, milliseconds).
    pub started_at_unix_ms: u64,
    /// Time since it started.
    pub uptime_ms: u64,
    /// The config file, or `embedded default`.
    pub config_source: String,
    /// Its roles in start order, with the cluster client first when it runs.
    pub roles: Vec<RoleView>,
    /// Successful reloads since start.
    pub reloads: u64,
}

struct Inner {
    name: String,
    config_source: String,
    started_wall: SystemTime,
    started: Instant,
    roles: Mutex<(Vec<RoleView>, u64)>,
    arbiters: Mutex<Vec<(String, actix_rt::ArbiterHandle)>>,
    all_started: std::sync::atomic::AtomicBool,
}

/// The node's identity and its roles' states, shared by the node (which updates it) and the
/// API (which shows it).
#[derive(Clone)]
pub struct NodeHandle(Arc<Inner>);

impl NodeHandle {
    /// A node called `name`, configured from `config_source`, starting now.
    pub fn new(name: &str, config_source: &str) -> Self {
        NodeHandle(Arc::new(Inner {
            name: name.to_string(),
            config_source: config_source.to_string(),
            started_wall: SystemTime::now(),
            started: Instant::now(),
            roles: Mutex::new((Vec::new(), 0)),
            arbiters: Mutex::new(Vec::new()),
            all_started: std::sync::atomic::AtomicBool::new(false),
        }))
    }

    /// Records the arbiter role `name` runs on, for the health check to ask.
    pub fn set_arbiter(&self, name: &str, arbiter: actix_rt::ArbiterHandle) {
        let mut guard = self.0.arbiters.lock().unwrap_or_else(|e| e.into_inner());
        guard.retain(|(role, _)| role != name);
        guard.push((name.to_string(), arbiter));
    }

    /// The roles' arbiters, in start order.
    pub fn arbiters(&self) -> Vec<(String, actix_rt::ArbiterHandle)> {
        self.0
            .arbiters
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Records that every role has started (the node is past its start).
    pub fn set_all_started(&self) {
        self.0
            .all_started
            .store(true, std::sync::atomic::Ordering::Release);
    }

    /// Whether every role has started.
    pub fn all_started(&self) -> bool {
        self.0
            .all_started
            .load(std::sync::atomic::Ordering::Acquire)
    }

    /// The node's name.
    pub fn name(&self) -> &str {
        &self.0.name
    }

    /// Records that role `name` is now in `state`.
    pub fn set_role(&self, name: &str, state: RoleState) {
        let mut guard = self.0.roles.lock().unwrap_or_else(|e| e.into_inner());
        match guard.0.iter_mut().find(|r| r.name == name) {
            Some(role) => role.state = state,
            None => guard.0.push(RoleView {
                name: name.to_string(),
                state,
            }),
        }
    }

    /// Counts a successful reload.
    pub fn reloaded(&self) {
        let mut guard = self.0.roles.lock().unwrap_or_else(|e| e.into_inner());
        guard.1 += 1;
    }

    /// The node as `GET /v1/node` shows it.
    pub fn view(&self) -> NodeView {
        let guard = self.0.roles.lock().unwrap_or_else(|e| e.into_inner());
        NodeView {
            name: self.0.name.clone(),
            version: env!("CARGO_PKG_VERSION"),
            pid: std::process::id(),
            started_at_unix_ms: unix_ms(self.0.started_wall),
            uptime_ms: self.0.started.elapsed().as_millis() as u64,
            config_source: self.0.config_source.clone(),
            roles: guard.0.clone(),
            reloads: guard.1,
        }
    }
}

/// Milliseconds since the Unix epoch.
pub fn unix_ms(at: SystemTime) -> u64 {
    at.duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// Why a reload changed nothing.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ReloadError {
    /// The new configuration does not validate; the text is `check-config`'s.
    #[error("{0}")]
    Invalid(String),
    /// Another reload is being applied.
    #[error("a reload is already in progress")]
    Busy,
    /// The node is stopping.
    #[error("the node is stopping")]
    Stopping,
}

/// A reload asked of the node's main task (by `POST /v1/reload`).
#[derive(Debug)]
pub struct ReloadRequest {
    /// Only say what would change.
    pub dry_run: bool,
    /// Receives what was done, as `POST /v1/reload` answers it.
    pub reply: oneshot::Sender<Result<serde_json::Value, ReloadError>>,
}

/// The sending end of the node's reload channel.
pub type Reloads = mpsc::Sender<ReloadRequest>;
