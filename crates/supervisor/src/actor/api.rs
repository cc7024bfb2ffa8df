//! The supervisor's API handlers: director's calls, answered from the core; the operators'
//! calls (statuses, restart, signals, recent output, adding a service, reloading the
//! configuration); and the ipc contract's `push_config` / `invoke`, forwarded to the hub.

use std::time::Instant;

use actix::prelude::*;
use tokio::sync::oneshot;
use troupe_core::services::{ChannelError, Invoke, PushConfig};
use troupe_core::Role;

use super::Supervisor;
use crate::config::SupervisorConfig;
use crate::core::ChildError;
use crate::core::Command;
use crate::logs::ServiceLogs;
use crate::messages::*;
use crate::reload::{ReloadFailure, ReloadReport};
use crate::role::{configured_children, SupervisorRole};
use crate::spec::{ChildSpec, ReadyCheck};
use crate::status::{BrokerStatus, ServiceState, ServiceStatus};

/// Longest wait for the broker's answer to a `ready = { broker = ... }` child's status.
const BROKER_STATUS_WAIT: std::time::Duration = std::time::Duration::from_millis(200);

impl Supervisor {
    /// Says how a process child's processes are contained (see `contain.rs`).
    fn show_containment(&self, status: &mut crate::status::ServiceStatus) {
        if status.kind == "process" {
            status.containment = Some(crate::contain::describe(
                &self.cgroup_scope.name(&status.id),
            ));
        }
    }

    /// Runs an API call that may start a child, answering once it has started.
    fn start_call(
        &mut self,
        id: String,
        result: Result<Vec<Command>, ChildError>,
        ctx: &mut Context<Self>,
    ) -> ResponseFuture<Result<Option<u32>, ChildError>> {
        let commands = match result {
            Ok(commands) => commands,
            Err(e) => return Box::pin(std::future::ready(Err(e))),
        };
        let generation = commands.iter().find_map(|c| match c {
            Command::Start {
                id: started,
                generation,
            } if *started == id => Some(*generation),
            _ => None,
        });
        let answer = generation.map(|generation| {
            let (tx, rx) = oneshot::channel();
            self.start_waiters
                .entry((id.clone(), generation))
                .or_default()
                .push(tx);
            rx
        });
        self.execute(commands, ctx);
        Box::pin(async move {
            match answer {
                Some(rx) => rx.await.unwrap_or(Err(ChildError::Stopping)),
                None => Ok(None),
            }
        })
    }
}

impl Handler<StartChild> for Supervisor {
    type Result = ResponseFuture<Result<Option<u32>, ChildError>>;

    fn handle(&mut self, msg: StartChild, ctx: &mut Self::Context) -> Self::Result {
        let id = msg.0.id.clone();
        let result = self.core.start_child(msg.0, Instant::now());
        self.start_call(id, result, ctx)
    }
}

impl Handler<RestartChild> for Supervisor {
    type Result = ResponseFuture<Result<Option<u32>, ChildError>>;

    fn handle(&mut self, msg: RestartChild, ctx: &mut Self::Context) -> Self::Result {
        let result = self.core.restart_child(&msg.0, Instant::now());
        self.start_call(msg.0, result, ctx)
    }
}

impl Handler<TerminateChild> for Supervisor {
    type Result = ResponseFuture<Result<(), ChildError>>;

    fn handle(&mut self, msg: TerminateChild, ctx: &mut Self::Context) -> Self::Result {
        let commands = match self.core.terminate_child(&msg.0) {
            Ok(commands) => commands,
            Err(e) => return Box::pin(std::future::ready(Err(e))),
        };
        let (tx, rx) = oneshot::channel();
        if self.instances.contains_key(&msg.0) {
            self.stop_waiters.entry(msg.0).or_default().push(tx);
        } else {
            let _ = tx.send(());
        }
        self.execute(commands, ctx);
        Box::pin(async move {
            let _ = rx.await;
            Ok(())
        })
    }
}

impl Handler<DeleteChild> for Supervisor {
    type Result = Result<(), ChildError>;

    fn handle(&mut self, msg: DeleteChild, ctx: &mut Self::Context) -> Self::Result {
        self.core.delete_child(&msg.0)?;
        self.forget_if_deleted(&msg.0);
        self.sync_watch(ctx);
        Ok(())
    }
}

impl Handler<WhichChildren> for Supervisor {
    type Result = MessageResult<WhichChildren>;

    fn handle(&mut self, _: WhichChildren, _: &mut Self::Context) -> Self::Result {
        MessageResult(self.core.which_children())
    }
}

impl Handler<CountChildren> for Supervisor {
    type Result = MessageResult<CountChildren>;

    fn handle(&mut self, _: CountChildren, _: &mut Self::Context) -> Self::Result {
        MessageResult(self.core.count_children())
    }
}

impl Handler<GetPids> for Supervisor {
    type Result = MessageResult<GetPids>;

    fn handle(&mut self, _: GetPids, _: &mut Self::Context) -> Self::Result {
        MessageResult(self.core.get_pids())
    }
}

impl Handler<GetPid> for Supervisor {
    type Result = Result<u32, ChildError>;

    fn handle(&mut self, msg: GetPid, _: &mut Self::Context) -> Self::Result {
        self.core.get_pid(&msg.0)
    }
}

impl Handler<GetChildSpec> for Supervisor {
    type Result = Result<ChildSpec, ChildError>;

    fn handle(&mut self, msg: GetChildSpec, _: &mut Self::Context) -> Self::Result {
        self.core
            .spec(&msg.0)
            .cloned()
            .ok_or(ChildError::NotFound(msg.0))
    }
}

impl Handler<GetPlan> for Supervisor {
    type Result = Result<crate::plan::Plan, ChildError>;

    fn handle(&mut self, msg: GetPlan, _: &mut Self::Context) -> Self::Result {
        self.core.get_plan(&msg.0)
    }
}

impl Handler<ChangePlan> for Supervisor {
    type Result = Result<(), ChildError>;

    fn handle(&mut self, msg: ChangePlan, _: &mut Self::Context) -> Self::Result {
        self.core.change_plan(&msg.id, msg.plan, msg.count)
    }
}

impl Handler<GetDefaultChildSpec> for Supervisor {
    type Result = MessageResult<GetDefaultChildSpec>;

    fn handle(&mut self, _: GetDefaultChildSpec, _: &mut Self::Context) -> Self::Result {
        MessageResult(self.core.default_spec().clone())
    }
}

impl Handler<ChangeDefaultChildSpec> for Supervisor {
    type Result = ();

    fn handle(&mut self, msg: ChangeDefaultChildSpec, _: &mut Self::Context) {
        self.core.change_default_spec(msg.0);
    }
}

impl Handler<PushConfig> for Supervisor {
    type Result = ResponseFuture<Result<(), ChannelError>>;

    fn handle(&mut self, msg: PushConfig, _: &mut Self::Context) -> Self::Result {
        let Some(channels) = &self.channels else {
            return Box::pin(std::future::ready(Err(ChannelError::NotAlive)));
        };
        let to = channels.push_config.clone();
        Box::pin(async move {
            to.send(msg).await.unwrap_or_else(|e| {
                Err(ChannelError::Failed(format!(
                    "the ipc hub did not answer: {e}"
                )))
            })
        })
    }
}

impl Handler<Invoke> for Supervisor {
    type Result = ResponseFuture<Result<Vec<u8>, ChannelError>>;

    fn handle(&mut self, msg: Invoke, _: &mut Self::Context) -> Self::Result {
        let Some(channels) = &self.channels else {
            return Box::pin(std::future::ready(Err(ChannelError::NotAlive)));
        };
        let to = channels.invoke.clone();
        Box::pin(async move {
            to.send(msg).await.unwrap_or_else(|e| {
                Err(ChannelError::Failed(format!(
                    "the ipc hub did not answer: {e}"
                )))
            })
        })
    }
}

impl Handler<ServiceStatuses> for Supervisor {
    type Result = MessageResult<ServiceStatuses>;

    fn handle(&mut self, _: ServiceStatuses, _: &mut Self::Context) -> Self::Result {
        let mut statuses = self.core.service_statuses(Instant::now());
        for status in &mut statuses {
            self.show_containment(status);
        }
        MessageResult(statuses)
    }
}

impl Handler<GetServiceMetrics> for Supervisor {
    type Result = MessageResult<GetServiceMetrics>;

    fn handle(&mut self, _: GetServiceMetrics, _: &mut Self::Context) -> Self::Result {
        let mut metrics = self.core.service_metrics();
        if let Some(dir) = &crate::contain::current().services_dir {
            for service in &mut metrics {
                let runs = matches!(
                    service.state,
                    ServiceState::Starting
                        | ServiceState::Running
                        | ServiceState::Ready
                        | ServiceState::Stopping
                );
                if service.kind == "process" && runs {
                    service.cgroup = Some(dir.join(self.cgroup_scope.name(&service.id)));
                }
            }
        }
        MessageResult(metrics)
    }
}

impl Handler<GetServiceStatus> for Supervisor {
    type Result = ResponseFuture<Result<ServiceStatus, ChildError>>;

    fn handle(&mut self, msg: GetServiceStatus, _: &mut Self::Context) -> Self::Result {
        let mut status = match self.core.service_status(&msg.0, Instant::now()) {
            Ok(status) => status,
            Err(e) => return Box::pin(std::future::ready(Err(e))),
        };
        self.show_containment(&mut status);
        // A `ready = { broker = ... }` child that runs: what the broker sees of it, if a
        // broker is attached and answers at once.
        let service = match self.core.spec(&msg.0).and_then(|s| s.ready.as_ref()) {
            Some(ReadyCheck::Broker(service)) => Some(service.clone()),
            _ => None,
        };
        let broker = self.broker.borrow().clone();
        let (Some(service), Some(pid), Some(broker)) = (service, status.pid, broker) else {
            return Box::pin(std::future::ready(Ok(status)));
        };
        let question = super::cluster::broker_question(&service, &msg.0, pid);
        Box::pin(async move {
            if let Ok(Ok(answer)) =
                tokio::time::timeout(BROKER_STATUS_WAIT, broker.send(question)).await
            {
                status.broker = Some(BrokerStatus {
                    service,
                    known: answer.known,
                    ready: answer.ready,
                    workers: answer.workers,
                    queue_depth: answer.queue_depth,
                });
            }
            Ok(status)
        })
    }
}

impl Handler<RestartService> for Supervisor {
    type Result = ResponseFuture<Result<Option<u32>, ChildError>>;

    fn handle(&mut self, msg: RestartService, ctx: &mut Self::Context) -> Self::Result {
        let (commands, generation) = match self.core.restart_service(&msg.0, Instant::now()) {
            Ok(planned) => planned,
            Err(e) => return Box::pin(std::future::ready(Err(e))),
        };
        self.execute(commands, ctx);
        // It may wait for its requirements instead (or cannot start at all): answer now.
        if !self.core.awaits_start(&msg.0, generation) {
            return Box::pin(std::future::ready(self.not_started(&msg.0)));
        }
        // The start's outcome comes back in a later turn of the actor, after this.
        let (tx, rx) = oneshot::channel();
        self.start_waiters
            .entry((msg.0, generation))
            .or_default()
            .push(tx);
        Box::pin(async move { rx.await.unwrap_or(Err(ChildError::Stopping)) })
    }
}

impl Handler<SignalChild> for Supervisor {
    type Result = Result<(), ChildError>;

    fn handle(&mut self, msg: SignalChild, _: &mut Self::Context) -> Self::Result {
        let SignalChild { id, signal } = msg;
        let pid = self.core.signal_target(&id, signal)?;
        // The core names a pid only while its process is not reaped, so it cannot have been
        // reused by another process.
        let pid_t = libc::pid_t::try_from(pid).map_err(|_| ChildError::NotRunning(id.clone()))?;
        // SAFETY: kill(2) takes plain integers and has no memory effects.
        if unsafe { libc::kill(pid_t, signal) } == 0 {
            tracing::info!(id, pid, signal, "signal sent to child on request");
            return Ok(());
        }
        let error = std::io::Error::last_os_error();
        if error.raw_os_error() == Some(libc::ESRCH) {
            return Err(ChildError::NotRunning(id));
        }
        Err(ChildError::Failed(
            id,
            format!("cannot send signal {signal} to process {pid}: {error}"),
        ))
    }
}

impl Handler<GetLogs> for Supervisor {
    type Result = Result<ServiceLogs, ChildError>;

    fn handle(&mut self, msg: GetLogs, _: &mut Self::Context) -> Self::Result {
        if self.core.spec(&msg.id).is_none() {
            return Err(ChildError::NotFound(msg.id));
        }
        Ok(self.ring(&msg.id).snapshot(msg.lines, msg.follow))
    }
}

impl Handler<AddService> for Supervisor {
    type Result = ResponseFuture<Result<Option<u32>, ChildError>>;

    fn handle(&mut self, msg: AddService, ctx: &mut Self::Context) -> Self::Result {
        let Some(id) = msg.0.id.clone() else {
            return Box::pin(std::future::ready(Err(ChildError::Invalid(
                "id: missing".into(),
            ))));
        };
        let config_path = self.state_dir.join(&id).join("config.json");
        let result = match msg.0.to_spec(&id, None, config_path) {
            Ok(spec) => {
                let merged = self.core.default_spec().merge(spec.clone());
                if let Some(warning) = merged.plan_warning() {
                    tracing::warn!(id, "{warning}");
                }
                self.core.start_child(spec, Instant::now())
            }
            Err(e) => Err(ChildError::Invalid(e)),
        };
        self.start_call(id, result, ctx)
    }
}

/// First step of a reload, on the actor: decide, and start the stops.
#[derive(Message)]
#[rtype(result = "Result<ReloadStep, ChildError>")]
struct ReloadStart {
    config: SupervisorConfig,
    dry_run: bool,
    desired: Vec<ChildSpec>,
    broken: Vec<(ChildSpec, String)>,
}

enum ReloadStep {
    /// Nothing more to do (a dry run).
    Done(ReloadReport),
    /// Once every receiver has fired (the stops are done), send [`ReloadFinish`].
    Stopping {
        stopped: Vec<oneshot::Receiver<()>>,
        finish: ReloadFinish,
    },
}

/// Last step of a reload, once the stops are done: add and start.
#[derive(Message)]
#[rtype(result = "Result<ReloadReport, ChildError>")]
struct ReloadFinish {
    report: ReloadReport,
    add: Vec<ChildSpec>,
    add_failed: Vec<(ChildSpec, String)>,
}

impl Handler<ApplyConfig> for Supervisor {
    type Result = ResponseFuture<Result<ReloadReport, ChildError>>;

    fn handle(&mut self, msg: ApplyConfig, ctx: &mut Self::Context) -> Self::Result {
        if self.core.is_stopping() {
            return Box::pin(std::future::ready(Err(ChildError::Stopping)));
        }
        if let Err(e) = SupervisorRole::validate(&msg.config) {
            let e = e.within("supervisor");
            return Box::pin(std::future::ready(Err(ChildError::Invalid(format!(
                "{}: {}",
                e.key, e.message
            )))));
        }
        let lock = self.reload_lock.clone();
        let state_dir = self.state_dir.clone();
        let me = ctx.address();
        Box::pin(async move {
            // Reloads run one after the other; the actor keeps serving meanwhile.
            let _one_at_a_time = lock.lock().await;
            let (desired, broken) = configured_children(&msg.config, &state_dir)
                .await
                .map_err(ChildError::Invalid)?;
            let start = ReloadStart {
                config: msg.config,
                dry_run: msg.dry_run,
                desired,
                broken,
            };
            match me.send(start).await.map_err(|_| ChildError::Stopping)?? {
                ReloadStep::Done(report) => Ok(report),
                ReloadStep::Stopping { stopped, finish } => {
                    // Each stop ends within its terminate timeout (then SIGKILL).
                    futures::future::join_all(stopped).await;
                    me.send(finish).await.map_err(|_| ChildError::Stopping)?
                }
            }
        })
    }
}

impl Handler<ReloadStart> for Supervisor {
    type Result = Result<ReloadStep, ChildError>;

    fn handle(&mut self, msg: ReloadStart, ctx: &mut Self::Context) -> Self::Result {
        if self.core.is_stopping() {
            return Err(ChildError::Stopping);
        }
        let default = msg.config.default.to_spec();
        let plan = self
            .core
            .plan_reload(&self.configured, msg.desired, msg.broken, &default);
        let mut report = plan.report;
        report.needs_restart = self.restart_only.changed_in(&msg.config);
        if msg.dry_run {
            return Ok(ReloadStep::Done(report));
        }
        tracing::info!(
            added = ?report.added,
            removed = ?report.removed,
            changed = ?report.changed,
            unchanged = report.unchanged.len(),
            failed = report.failed.len(),
            needs_restart = ?report.needs_restart,
            "applying a new configuration"
        );
        for failure in &report.failed {
            tracing::error!(id = %failure.id, reason = %failure.error, "service not applied");
        }
        self.core.change_default_spec(default);
        self.set_ring_limits(msg.config.log_lines, msg.config.log_bytes);
        self.configured = plan.configured;
        self.replacing = plan
            .add
            .iter()
            .map(|spec| spec.id.clone())
            .chain(plan.add_failed.iter().map(|(spec, _)| spec.id.clone()))
            .collect();
        let mut stopped = Vec::new();
        for id in &plan.retire {
            let commands = self.core.retire(id);
            if self.instances.contains_key(id) {
                let (tx, rx) = oneshot::channel();
                self.stop_waiters.entry(id.clone()).or_default().push(tx);
                stopped.push(rx);
            }
            self.after_child_event(id);
            self.execute(commands, ctx);
        }
        Ok(ReloadStep::Stopping {
            stopped,
            finish: ReloadFinish {
                report,
                add: plan.add,
                add_failed: plan.add_failed,
            },
        })
    }
}

impl Handler<ReloadFinish> for Supervisor {
    type Result = Result<ReloadReport, ChildError>;

    fn handle(&mut self, msg: ReloadFinish, ctx: &mut Self::Context) -> Self::Result {
        let ReloadFinish {
            mut report,
            add,
            add_failed,
        } = msg;
        let replacing = std::mem::take(&mut self.replacing);
        if !self.core.is_stopping() {
            for (spec, reason) in add_failed {
                let id = spec.id.clone();
                tracing::error!(id, %reason, "service cannot start");
                if let Err(e) = self.core.add_failed(spec, reason) {
                    tracing::error!(id, error = %e, "service not added");
                }
            }
            for spec in add {
                let id = spec.id.clone();
                if let Err(e) = self.core.add(spec) {
                    tracing::error!(id, error = %e, "service not added");
                    report.added.retain(|a| *a != id);
                    report.changed.retain(|c| *c != id);
                    report.failed.push(ReloadFailure {
                        id,
                        error: e.to_string(),
                    });
                }
            }
        }
        for id in &replacing {
            self.forget_if_deleted(id);
        }
        if self.core.is_stopping() {
            return Err(ChildError::Stopping);
        }
        let commands = self.core.start_all(Instant::now());
        self.execute(commands, ctx);
        Ok(report)
    }
}
