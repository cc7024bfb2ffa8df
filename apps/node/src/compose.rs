//! Role composition: start the selected roles in order, each on its own arbiter; stop them in
//! reverse, each within the shutdown timeout. When `[cluster]` names beacons, the cluster
//! client starts first on an arbiter of its own (so that roles find its address in the
//! published registry) and stops last (so that the node deregisters once its roles are down).
//!
//! Each role gets an arbiter (an OS thread with its own event loop) whose thread enters the
//! role's tracing span and is marked as the role's for the panic policy. A role's lifetime on
//! that arbiter is one task: launch, report started, wait for the stop request, stop, report
//! stopped. Dropping the stop request's sender also stops the role, so a role still starting
//! when the node gives up stops as soon as it has started.

use std::sync::Arc;
use std::time::Instant;

use actix_rt::Arbiter;
use tokio::sync::{mpsc, oneshot};
use troupe_control::{NodeHandle, RoleState};
use troupe_core::context::Published;
use troupe_core::settings::Duration;
use troupe_core::{span, NodeControl, NodeStopRequest, PreparedRole, RoleContext, RoleError};

/// A role running on its arbiter.
struct RoleSlot {
    name: &'static str,
    arbiter: Arbiter,
    stop: Option<oneshot::Sender<()>>,
    stopped: oneshot::Receiver<()>,
}

/// A node whose roles have all started.
pub struct RunningNode {
    name: Arc<str>,
    roles: Vec<RoleSlot>,
    cluster: Option<RoleSlot>,
    /// Deadline for each role to stop (a reload may change it).
    pub shutdown_timeout: Duration,
    /// Handles roles published, for in-process callers (tests, embedding programs).
    pub published: Published,
    status: NodeHandle,
    stop_requests: mpsc::UnboundedReceiver<NodeStopRequest>,
}

/// Why the node did not finish starting. Roles already started have been stopped.
#[derive(Debug)]
pub struct StartAborted {
    /// What to tell the operator.
    pub message: String,
    /// The process exit code: 1 when a role failed, 0 when a signal interrupted the start.
    pub exit_code: i32,
}

/// What a node is built from.
pub struct NodePlan {
    /// The node's name.
    pub name: Arc<str>,
    /// Roles in start order.
    pub roles: Vec<PreparedRole>,
    /// The cluster client, started before the roles.
    pub cluster: Option<PreparedRole>,
    /// Deadline for each role to stop.
    pub shutdown_timeout: Duration,
    /// The node's effective configuration.
    pub effective: Arc<serde_json::Value>,
    /// Where roles publish their handles (shared with the control API).
    pub published: Published,
    /// Where the roles' states are shown (shared with the control API).
    pub status: NodeHandle,
}

impl NodePlan {
    /// The plan for a node built from `settings`, configured from `source` (a file's path, or
    /// `embedded default`), with a fresh registry of published handles.
    pub fn from_settings(settings: crate::settings::NodeSettings, source: &str) -> Self {
        NodePlan {
            status: NodeHandle::new(&settings.name, source),
            name: Arc::from(settings.name.as_str()),
            roles: settings.roles,
            shutdown_timeout: settings.shutdown_timeout,
            cluster: settings.cluster,
            effective: Arc::new(settings.effective),
            published: Published::default(),
        }
    }
}

impl RunningNode {
    /// Starts every role in order. On failure, stops those already started (in reverse) and
    /// returns the failing role's error. `control` must be the handle the panic policy uses.
    pub async fn start(
        plan: NodePlan,
        control: NodeControl,
        stop_requests: mpsc::UnboundedReceiver<NodeStopRequest>,
        signals: &mut crate::signals::Signals,
    ) -> Result<RunningNode, StartAborted> {
        let names: Arc<[String]> = plan.roles.iter().map(|r| r.name.to_string()).collect();
        let mut node = RunningNode {
            name: plan.name.clone(),
            roles: Vec::new(),
            cluster: None,
            shutdown_timeout: plan.shutdown_timeout,
            published: plan.published.clone(),
            status: plan.status.clone(),
            stop_requests,
        };
        let cluster = plan.cluster.into_iter().map(|client| (true, client));
        let roles = plan.roles.into_iter().map(|role| (false, role));
        for (is_cluster, role) in cluster.chain(roles) {
            let name = role.name;
            let ctx = RoleContext {
                node: plan.name.clone(),
                role: name,
                roles: names.clone(),
                config: plan.effective.clone(),
                published: node.published.clone(),
                control: control.clone(),
            };
            if is_cluster {
                tracing::info!(node = %node.name, "starting the cluster client");
            } else {
                tracing::info!(node = %node.name, role = name, "starting role");
            }
            let since = Instant::now();
            node.status.set_role(name, RoleState::Starting);
            let (slot, started) = launch(role, ctx);
            node.status.set_arbiter(name, slot.arbiter.handle());
            node.roles.push(slot);
            let outcome = tokio::select! {
                started = started => started.unwrap_or_else(|_| {
                    Err(RoleError::new("the role panicked while starting"))
                }),
                request = node.stop_requests.recv() => Err(RoleError::new(match request {
                    Some(r) => format!("node asked to stop while starting ({})", r.reason),
                    None => "node control closed".to_string(),
                })),
                signal = signals.recv() => {
                    tracing::info!(node = %node.name, signal, "signal received while starting; stopping");
                    node.stop().await;
                    return Err(StartAborted { message: format!("interrupted by signal {signal} while starting"), exit_code: 0 });
                }
            };
            if outcome.is_ok() {
                node.status.set_role(name, RoleState::Running);
            }
            match outcome {
                Ok(()) if is_cluster => {
                    node.cluster = node.roles.pop();
                    tracing::info!(node = %node.name, "cluster client started");
                }
                Ok(()) => tracing::info!(
                    node = %node.name,
                    role = name,
                    elapsed_ms = since.elapsed().as_millis() as u64,
                    "role started"
                ),
                Err(error) => {
                    tracing::error!(node = %node.name, role = name, %error, "role failed to start");
                    node.stop().await;
                    return Err(StartAborted {
                        message: format!("role `{name}` failed to start: {error}"),
                        exit_code: 1,
                    });
                }
            }
        }
        Ok(node)
    }

    /// Waits for a stop: SIGINT/SIGTERM, or a role asking (escalation, panic). Returns the exit
    /// code the node should end with once stopped.
    pub async fn wait_for_stop(&mut self, signals: &mut crate::signals::Signals) -> i32 {
        tokio::select! {
            signal = signals.recv() => {
                tracing::info!(node = %self.name, signal, "signal received; stopping node");
                0
            }
            request = self.stop_requests.recv() => match request {
                Some(request) => {
                    if request.exit_code == 0 {
                        tracing::info!(node = %self.name, role = %request.role, reason = %request.reason, "node stop requested");
                    } else {
                        tracing::error!(node = %self.name, role = %request.role, reason = %request.reason, exit_code = request.exit_code, "node stopping on failure");
                    }
                    request.exit_code
                }
                None => 0,
            }
        }
    }

    /// Stops every role in reverse start order, then the cluster client, each within the
    /// shutdown timeout. Returns the roles abandoned because they did not stop in time.
    pub async fn stop(&mut self) -> Vec<&'static str> {
        let mut abandoned = Vec::new();
        while let Some(mut slot) = self.roles.pop().or_else(|| self.cluster.take()) {
            let since = Instant::now();
            self.status.set_role(slot.name, RoleState::Stopping);
            drop(slot.stop.take());
            match tokio::time::timeout(self.shutdown_timeout.get(), &mut slot.stopped).await {
                Ok(_) => {
                    self.status.set_role(slot.name, RoleState::Stopped);
                    tracing::info!(
                    node = %self.name,
                    role = slot.name,
                    elapsed_ms = since.elapsed().as_millis() as u64,
                    "role stopped"
                    )
                }
                Err(_) => {
                    abandoned.push(slot.name);
                    self.status.set_role(slot.name, RoleState::Abandoned);
                    tracing::warn!(
                        node = %self.name,
                        role = slot.name,
                        timeout = %self.shutdown_timeout,
                        "role did not stop within the shutdown timeout; abandoning it"
                    )
                }
            }
            slot.arbiter.stop();
        }
        abandoned
    }

    /// Where the roles' states are shown.
    pub fn status(&self) -> &NodeHandle {
        &self.status
    }

    /// Names of the running roles, in start order.
    pub fn role_names(&self) -> Vec<&'static str> {
        self.roles.iter().map(|r| r.name).collect()
    }
}

/// Starts `role` on a new arbiter. The receiver reports the outcome of its start.
fn launch(
    role: PreparedRole,
    ctx: RoleContext,
) -> (RoleSlot, oneshot::Receiver<Result<(), RoleError>>) {
    let name = role.name;
    let arbiter = Arbiter::new();
    let role_span = span::role_span(&ctx.node, name);
    let (started_tx, started_rx) = oneshot::channel();
    let (stop_tx, stop_rx) = oneshot::channel::<()>();
    let (stopped_tx, stopped_rx) = oneshot::channel();
    // The role's futures need not be Send: they are created on the arbiter's own thread.
    arbiter.spawn_fn(move || {
        span::enter_for_thread(role_span, name);
        actix_rt::spawn(lifetime(role, ctx, started_tx, stop_rx, stopped_tx));
    });
    (
        RoleSlot {
            name,
            arbiter,
            stop: Some(stop_tx),
            stopped: stopped_rx,
        },
        started_rx,
    )
}

/// A role's whole life on its arbiter.
async fn lifetime(
    role: PreparedRole,
    ctx: RoleContext,
    started_tx: oneshot::Sender<Result<(), RoleError>>,
    stop_rx: oneshot::Receiver<()>,
    stopped_tx: oneshot::Sender<()>,
) {
    match role.launch(ctx).await {
        Ok(running) => {
            let _ = started_tx.send(Ok(()));
            // Either a stop request or its sender dropped means: stop now.
            let _ = stop_rx.await;
            running.stop().await;
        }
        Err(error) => {
            let _ = started_tx.send(Err(error));
        }
    }
    let _ = stopped_tx.send(());
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::heartbeat::{GetStatus, HeartbeatActor};
    use crate::settings::{load, Overrides};

    /// The example role composes with built-in roles in one node, answers its status query,
    /// and every role stops.
    #[test]
    fn custom_role_composes_with_builtin_roles() {
        let settings = load(
            &crate::roles::known_roles(),
            None,
            vec![("TROUPE_HEARTBEAT__INTERVAL".into(), "20ms".into())],
            &Overrides {
                name: Some("compose-test".into()),
                roles: Some(vec!["heartbeat".into(), "supervisor".into()]),
            },
        )
        .unwrap();
        actix_rt::System::new().block_on(async move {
            let (control, requests) = NodeControl::channel();
            let mut signals = crate::signals::Signals::new().unwrap();
            let plan = NodePlan::from_settings(settings, "embedded default");
            let mut node = RunningNode::start(plan, control, requests, &mut signals)
                .await
                .map_err(|e| e.message)
                .unwrap();
            assert_eq!(node.role_names(), ["heartbeat", "supervisor"]);
            let heartbeat = node
                .published
                .lookup::<actix::Addr<HeartbeatActor>>()
                .expect("heartbeat publishes its address");
            let deadline = Instant::now() + std::time::Duration::from_secs(10);
            loop {
                let status = heartbeat.send(GetStatus).await.unwrap();
                if status.ticks >= 2 && !status.uptime.is_zero() {
                    break;
                }
                assert!(Instant::now() < deadline, "heartbeat never ticked twice");
                tokio::time::sleep(std::time::Duration::from_millis(10)).await;
            }
            node.stop().await;
            assert!(node.role_names().is_empty());
            assert!(
                heartbeat.send(GetStatus).await.is_err(),
                "actor still alive"
            );
        });
    }
}
