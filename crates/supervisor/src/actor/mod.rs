//! The supervisor actor: owns the child processes, actor-child arbiters and timers, feeds what
//! happens to them into the [`SupervisorCore`] and carries out the commands it returns. Its
//! API handlers are in [`api`].

mod api;
mod cluster;

use std::collections::{HashMap, HashSet};
use std::os::fd::{AsFd, OwnedFd};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use actix::prelude::*;
use futures::FutureExt;
use nix::sys::signal::Signal;
use tokio::sync::oneshot;
use troupe_core::cluster::ClusterHandle;
use troupe_core::services::{
    BrokerWorkers, ServiceChannels, ServiceLifecycle, ENV_IPC_SOCKET, ENV_SERVICE_ID,
};
use troupe_core::{RoleContext, Shutdown};

use crate::actor_child::{ActorExited, ActorStarted, ExitNotice};
use crate::config::SupervisorConfig;
use crate::contain::{CgroupLimits, ServiceCgroup};
use crate::core::{ChildError, Command, SupervisorCore};
use crate::logs::{LogLine, LogRing};
use crate::output::{self, read_lines, LogFiles};
use crate::plan::ExitReason;
use crate::process::{self, expand_exe, signal_group, Launch, ServiceSetup, Spawned};
use crate::reload::RestartOnly;
use crate::spec::{ChildSpec, ChildStart, DefaultSpec, ReadyCheck};

/// Where the supervisor's escalation goes.
pub enum Escalation {
    /// The node's top-level supervisor: stop the node with a non-zero exit. A child whose
    /// plan is used up is marked failed instead, unless its `on_exhausted` is `stop_node`.
    Node(RoleContext),
    /// A nested supervisor: stop, and let the parent see the escalation as this child's exit.
    Parent(ExitNotice),
}

/// What a new supervisor starts with.
#[derive(Clone)]
pub struct SupervisorSetup {
    /// Children to start, in an order that respects their `after`.
    pub children: Vec<ChildSpec>,
    /// Children that cannot start (broken manifests): spec and reason.
    pub failed: Vec<(ChildSpec, String)>,
    /// The default child spec.
    pub default: DefaultSpec,
    /// Most children held.
    pub max_children: usize,
    /// Longest output line kept whole.
    pub max_line_bytes: usize,
    /// Recent output lines kept per service for [`GetLogs`](crate::messages::GetLogs) (0: none).
    pub log_lines: usize,
    /// Bytes of recent output text kept per service.
    pub log_bytes: usize,
    /// Where `config.json` lives for children that name none.
    pub state_dir: PathBuf,
    /// The ipc hub's service channels, when the ipc role runs on the node.
    pub channels: Option<ServiceChannels>,
    /// The cluster client, when the node has `[cluster] beacons`: children's requirements
    /// are followed and their endpoints offered through it.
    pub cluster: Option<ClusterHandle>,
    /// The `[supervisor]` table `children` and `failed` were built from, if they come from
    /// configuration: they are then the services that
    /// [`ApplyConfig`](crate::messages::ApplyConfig) replaces, and the keys that need a node
    /// restart are compared with it. `None`: children built in code, which a reload leaves
    /// alone.
    pub config: Option<SupervisorConfig>,
}

/// A child generation the actor holds resources for.
enum Instance {
    /// Spawn requested, not answered yet.
    Spawning { generation: u64 },
    /// A process; `pidfd` is shared with its exit watcher.
    Process {
        generation: u64,
        pid: u32,
        pidfd: Arc<OwnedFd>,
        probe_cancel: Option<oneshot::Sender<()>>,
        cgroup: Option<Arc<ServiceCgroup>>,
    },
    /// An actor on its own arbiter.
    Actor {
        generation: u64,
        arbiter: Arbiter,
        stop: Option<Recipient<Shutdown>>,
    },
}

impl Instance {
    fn generation(&self) -> u64 {
        match self {
            Instance::Spawning { generation }
            | Instance::Process { generation, .. }
            | Instance::Actor { generation, .. } => *generation,
        }
    }
}

type StartReply = oneshot::Sender<Result<Option<u32>, ChildError>>;

/// Longest wait for a dead service's output pipes to close before its exit is handled.
const OUTPUT_DRAIN: Duration = Duration::from_millis(200);

/// What an output reader needs to know about its service. Each line is logged once (see
/// [`output::log_line`]), kept in `ring`, queued for the log file and matched against
/// `ready_line`; nothing it does waits on a write.
struct OutputReader {
    service: Arc<str>,
    stream: &'static str,
    pid: u32,
    generation: u64,
    ready_line: Option<regex::Regex>,
    logs: Option<(LogFiles, Arc<crate::spec::LogFileSpec>)>,
    ring: Arc<LogRing>,
}

/// The supervisor actor. Its API is in [`crate::messages`].
pub struct Supervisor {
    core: SupervisorCore,
    setup_children: Vec<ChildSpec>,
    setup_failed: Vec<(ChildSpec, String)>,
    instances: HashMap<String, Instance>,
    /// Stops requested before the generation's process or actor was known.
    pending_stops: HashMap<(String, u64), Duration>,
    start_waiters: HashMap<(String, u64), Vec<StartReply>>,
    stop_waiters: HashMap<String, Vec<oneshot::Sender<()>>>,
    channels: Option<ServiceChannels>,
    /// The cluster client, if any.
    cluster: Option<ClusterHandle>,
    /// The current watch of the children's requirements.
    watch: cluster::Watch,
    /// Who else hears of service starts and exits (the broker).
    lifecycle_subscribers: Vec<Recipient<ServiceLifecycle>>,
    /// The broker on this node, once attached (for `ready = { broker = ... }`).
    broker: tokio::sync::watch::Sender<Option<Recipient<BrokerWorkers>>>,
    /// When each service was last warned about a notification that did not reach it.
    notify_warned: HashMap<String, Instant>,
    escalation: Option<Escalation>,
    log_files: Option<LogFiles>,
    max_line_bytes: usize,
    /// Each child's recent output, created at its first start or read; dropped with it.
    rings: HashMap<String, Arc<LogRing>>,
    /// Bounds of the rings: lines, bytes.
    ring_limits: (usize, usize),
    /// Children that came from configuration, which a reload replaces.
    configured: Vec<String>,
    /// The running values of the keys only a node restart changes.
    restart_only: RestartOnly,
    /// One reload at a time.
    reload_lock: Arc<tokio::sync::Mutex<()>>,
    /// Services a reload is replacing (stopped, then added again): their rings are kept.
    replacing: HashSet<String>,
    /// Where this supervisor's services' cgroups are named (see `contain.rs`).
    cgroup_scope: crate::contain::CgroupScope,
    state_dir: PathBuf,
    span: tracing::Span,
    stopped: Option<oneshot::Sender<()>>,
}

impl Supervisor {
    /// A supervisor for `setup`, escalating to `escalation`. `stopped` fires once it has
    /// stopped every child and itself.
    pub fn new(
        setup: SupervisorSetup,
        escalation: Escalation,
        stopped: Option<oneshot::Sender<()>>,
    ) -> Self {
        let configured = match &setup.config {
            Some(_) => setup
                .children
                .iter()
                .map(|c| c.id.clone())
                .chain(setup.failed.iter().map(|(c, _)| c.id.clone()))
                .collect(),
            None => Vec::new(),
        };
        let restart_only =
            RestartOnly::of(&setup.config.clone().unwrap_or_else(|| SupervisorConfig {
                max_children: setup.max_children,
                max_line_bytes: setup.max_line_bytes,
                state_dir: setup.state_dir.to_string_lossy().into_owned(),
                ..SupervisorConfig::default()
            }));
        Supervisor {
            core: SupervisorCore::new(setup.default, setup.max_children, Instant::now())
                .with_escalation_to_node(matches!(escalation, Escalation::Node(_)))
                .with_cluster(setup.cluster.is_some()),
            setup_children: setup.children,
            setup_failed: setup.failed,
            instances: HashMap::new(),
            pending_stops: HashMap::new(),
            start_waiters: HashMap::new(),
            stop_waiters: HashMap::new(),
            channels: setup.channels,
            cluster: setup.cluster,
            watch: cluster::Watch::default(),
            lifecycle_subscribers: Vec::new(),
            broker: tokio::sync::watch::Sender::new(None),
            notify_warned: HashMap::new(),
            escalation: Some(escalation),
            log_files: None,
            max_line_bytes: setup.max_line_bytes,
            rings: HashMap::new(),
            ring_limits: (setup.log_lines, setup.log_bytes),
            configured,
            restart_only,
            reload_lock: Arc::default(),
            replacing: HashSet::new(),
            state_dir: setup.state_dir,
            cgroup_scope: crate::contain::CgroupScope::claim(),
            span: tracing::Span::current(),
            stopped,
        }
    }

    fn execute(&mut self, commands: Vec<Command>, ctx: &mut Context<Self>) {
        for command in commands {
            match command {
                Command::Start { id, generation } => self.start(id, generation, ctx),
                Command::Stop {
                    id,
                    generation,
                    timeout,
                } => self.stop_instance(id, generation, timeout, ctx),
                Command::ArmRestart {
                    id,
                    generation,
                    delay,
                } => {
                    self.after(delay, Timer::Restart { id, generation }, ctx);
                }
                Command::Escalate { reason } => self.escalate(reason, ctx),
                Command::ShutdownComplete => ctx.stop(),
                Command::ArmRequirementsTimeout {
                    id,
                    generation,
                    delay,
                } => {
                    self.after(delay, Timer::Requirements { id, generation }, ctx);
                }
                Command::Offer { id, endpoints } => self.offer(id, endpoints),
                Command::Withdraw { id } => self.withdraw(id),
                Command::NotifyRequirements { id, payload } => {
                    self.notify_requirements(id, payload, ctx)
                }
            }
        }
        self.sync_watch(ctx);
    }

    fn escalate(&mut self, reason: String, ctx: &mut Context<Self>) {
        match self.escalation.as_mut() {
            Some(Escalation::Node(role)) => {
                tracing::error!(%reason, exit_code = 1, "supervisor escalated: stopping the node");
                role.stop_node(format!("supervisor escalated: {reason}"), 1);
            }
            Some(Escalation::Parent(notice)) => {
                tracing::error!(%reason, "nested supervisor escalated: stopping its children");
                notice.escalate(reason);
                let commands = self.core.shutdown();
                self.execute(commands, ctx);
            }
            None => {}
        }
    }

    fn start(&mut self, id: String, generation: u64, ctx: &mut Context<Self>) {
        let Some(spec) = self.core.spec(&id).cloned() else {
            return;
        };
        match &spec.start {
            ChildStart::Process(_) => self.start_process(id, generation, spec, ctx),
            ChildStart::Actor(factory) => {
                let arbiter = Arbiter::new();
                let addr = ctx.address();
                factory.start_on(
                    &arbiter.handle(),
                    id.clone(),
                    generation,
                    self.span.clone(),
                    addr.clone().recipient(),
                    addr.recipient(),
                );
                self.instances.insert(
                    id,
                    Instance::Actor {
                        generation,
                        arbiter,
                        stop: None,
                    },
                );
            }
        }
    }

    fn start_process(
        &mut self,
        id: String,
        generation: u64,
        spec: ChildSpec,
        ctx: &mut Context<Self>,
    ) {
        let Some(p) = spec.process_spec() else {
            return;
        };
        self.instances
            .insert(id.clone(), Instance::Spawning { generation });
        // Lowest first (over the env_file): the cluster's, the service's own `env`, then the
        // supervisor's own variables.
        let (mut env, args) = match self.cluster_launch(&id, p) {
            Ok(launch) => launch,
            Err(error) => {
                ctx.notify(SpawnDone {
                    id,
                    generation,
                    result: Err(error),
                });
                return;
            }
        };
        env.extend(p.env.iter().map(|(k, v)| (k.clone(), v.clone())));
        env.push((ENV_SERVICE_ID.to_string(), id.clone()));
        if let Some(channels) = &self.channels {
            env.push((
                ENV_IPC_SOCKET.to_string(),
                channels.socket_path.to_string_lossy().into_owned(),
            ));
        }
        let make_dir = self
            .channels
            .as_ref()
            .and_then(|_| self.config_path(&id, &spec).parent().map(PathBuf::from));
        let launch = Launch {
            program: expand_exe(p.command.as_deref().unwrap_or_default()),
            args: args.iter().map(|a| expand_exe(a)).collect(),
            env,
            inherit_env: p.inherit_env,
            cwd: p.cwd.clone(),
            capture_output: true,
            make_dir,
            cgroup: Some(self.cgroup_scope.name(&id)),
            setup: ServiceSetup {
                user: p.user.clone(),
                group: p.group.clone(),
                rlimits: p.rlimits.clone(),
                cgroup_limits: CgroupLimits {
                    memory_max: p.memory_max,
                    cpu_max: p.cpu_max,
                    pids_max: p.pids_max,
                },
                env_file: p.env_file.clone(),
                umask: p.umask,
            },
        };
        let me = ctx.address().downgrade();
        actix_rt::spawn(async move {
            let result = process::spawn(launch).await;
            if let Some(me) = me.upgrade() {
                me.do_send(SpawnDone {
                    id,
                    generation,
                    result,
                });
            } else if let Ok(spawned) = result {
                // The supervisor is gone: do not leave the process unsupervised.
                signal_group(spawned.pid, Signal::SIGKILL);
            }
        });
    }

    fn config_path(&self, id: &str, spec: &ChildSpec) -> PathBuf {
        spec.process_spec()
            .and_then(|p| p.config_path.clone())
            .unwrap_or_else(|| self.state_dir.join(id).join("config.json"))
    }

    fn on_spawn_result(
        &mut self,
        id: String,
        generation: u64,
        result: Result<Spawned, String>,
        ctx: &mut Context<Self>,
    ) {
        let now = Instant::now();
        let spawned = match result {
            Ok(spawned) => spawned,
            Err(error) => {
                self.instances.remove(&id);
                self.pending_stops.remove(&(id.clone(), generation));
                self.reply_start(
                    &id,
                    generation,
                    Err(ChildError::Failed(id.clone(), error.clone())),
                );
                let commands = self.core.on_spawn_failed(&id, generation, error, now);
                self.after_child_event(&id);
                self.execute(commands, ctx);
                return;
            }
        };
        let Some(spec) = self.core.spec(&id).cloned() else {
            // Cannot happen (a starting child is never deleted); do not leave it unsupervised.
            signal_group(spawned.pid, Signal::SIGKILL);
            return;
        };
        let pid = spawned.pid;
        let pidfd = Arc::new(spawned.pidfd);
        let cgroup = spawned.cgroup.clone();
        self.instances.insert(
            id.clone(),
            Instance::Process {
                generation,
                pid,
                pidfd: pidfd.clone(),
                probe_cancel: None,
                cgroup: cgroup.clone(),
            },
        );
        // Output readers; each reports when its pipe is closed.
        let ready_line = match &spec.ready {
            Some(ReadyCheck::LogLine(re)) => Some(re.clone()),
            _ => None,
        };
        let log_file = spec
            .process_spec()
            .and_then(|p| p.log_file.clone())
            .map(Arc::new);
        let logs = match log_file {
            Some(file) => self.log_files().map(|writer| (writer, file)),
            None => None,
        };
        let service: Arc<str> = Arc::from(id.as_str());
        let ring = self.ring(&id);
        let mut closed = Vec::new();
        for (stream, fd) in [("stdout", spawned.stdout), ("stderr", spawned.stderr)] {
            let Some(fd) = fd else { continue };
            let (done, is_done) = oneshot::channel::<()>();
            closed.push(is_done);
            let reader = OutputReader {
                service: service.clone(),
                stream,
                pid,
                generation,
                ready_line: ready_line.clone(),
                logs: logs.clone(),
                ring: ring.clone(),
            };
            self.read_output(reader, fd, done, ctx);
        }
        // Exit watcher. The exit is reported once the output is read to its end (the pipes
        // close when the group dies), so a service's last lines are logged before its exit;
        // a pipe held open by a process that left the group delays it by at most OUTPUT_DRAIN.
        let (watched, me) = (id.clone(), ctx.address().downgrade());
        actix_rt::spawn(async move {
            let reason = process::wait_exit(pid, pidfd, cgroup).await;
            let _ = tokio::time::timeout(OUTPUT_DRAIN, futures::future::join_all(closed)).await;
            if let Some(me) = me.upgrade() {
                me.do_send(ProcessExited {
                    id: watched,
                    generation,
                    pid,
                    reason,
                });
            }
        });
        let config_path = self.config_path(&id, &spec);
        self.lifecycle(ServiceLifecycle::Started {
            id: id.clone(),
            pid,
            config_path,
        });
        let commands = self.core.on_spawned(&id, generation, Some(pid), now);
        self.reply_start(&id, generation, Ok(Some(pid)));
        if let Some(timeout) = self.pending_stops.remove(&(id.clone(), generation)) {
            self.stop_instance(id.clone(), generation, timeout, ctx);
        } else if let Some(check) = &spec.ready {
            self.watch_readiness(
                id.clone(),
                generation,
                check.clone(),
                spec.start_timeout,
                Some(pid),
                ctx,
            );
        }
        self.execute(commands, ctx);
    }

    fn read_output(
        &mut self,
        reader: OutputReader,
        fd: OwnedFd,
        done: oneshot::Sender<()>,
        ctx: &mut Context<Self>,
    ) {
        let addr = ctx.address().downgrade();
        let OutputReader {
            service,
            stream,
            pid,
            generation,
            mut ready_line,
            logs,
            ring,
        } = reader;
        let id = service.clone();
        let on_line = move |line: &[u8]| {
            let text = String::from_utf8_lossy(line);
            output::log_line(&id, stream, pid, &text);
            ring.push_with(|| LogLine {
                at_unix_ms: unix_ms_now(),
                stream,
                generation,
                pid,
                text: text.clone().into_owned(),
            });
            if let Some((writer, file)) = &logs {
                writer.write(file, stream, line);
            }
            if ready_line.as_ref().is_some_and(|re| re.is_match(&text)) {
                ready_line = None;
                if let Some(addr) = addr.upgrade() {
                    addr.do_send(ChildReady {
                        id: id.to_string(),
                        generation,
                    });
                }
            }
        };
        let max = self.max_line_bytes;
        actix_rt::spawn(async move {
            if let Err(e) = read_lines(fd, max, on_line).await {
                tracing::warn!(service = %service, stream, error = %e, "cannot read service output");
            }
            let _ = done.send(());
        });
    }

    /// Child `id`'s ring of recent output (created empty if it has none yet).
    fn ring(&mut self, id: &str) -> Arc<LogRing> {
        let (lines, bytes) = self.ring_limits;
        self.rings
            .entry(id.to_string())
            .or_insert_with(|| Arc::new(LogRing::new(lines, bytes)))
            .clone()
    }

    /// New ring bounds, for every ring from now on.
    fn set_ring_limits(&mut self, lines: usize, bytes: usize) {
        self.ring_limits = (lines, bytes);
        for ring in self.rings.values() {
            ring.set_limits(lines, bytes);
        }
    }

    fn log_files(&mut self) -> Option<LogFiles> {
        if self.log_files.is_none() {
            match LogFiles::start() {
                Ok(files) => self.log_files = Some(files),
                Err(e) => tracing::error!(error = %e, "cannot start the log file writer"),
            }
        }
        self.log_files.clone()
    }

    fn watch_readiness(
        &mut self,
        id: String,
        generation: u64,
        check: ReadyCheck,
        timeout: Duration,
        pid: Option<u32>,
        ctx: &mut Context<Self>,
    ) {
        self.after(
            timeout,
            Timer::StartTimeout {
                id: id.clone(),
                generation,
            },
            ctx,
        );
        let (cancel, cancelled) = oneshot::channel();
        let probe = match check {
            ReadyCheck::LogLine(_) => return,
            ReadyCheck::Tcp(addr) => crate::ready::tcp(addr, cancelled).boxed_local(),
            ReadyCheck::Exec(argv) => crate::ready::exec(argv, cancelled).boxed_local(),
            // Refused for actors by the spec check: they have no process.
            ReadyCheck::Broker(service) => {
                let Some(pid) = pid else { return };
                let question = cluster::broker_question(&service, &id, pid);
                crate::ready::broker(self.broker.subscribe(), question, cancelled).boxed_local()
            }
        };
        if let Some(Instance::Process { probe_cancel, .. }) = self.instances.get_mut(&id) {
            *probe_cancel = Some(cancel);
        }
        let me = ctx.address().downgrade();
        actix_rt::spawn(async move {
            if probe.await {
                if let Some(me) = me.upgrade() {
                    me.do_send(ChildReady { id, generation });
                }
            }
        });
    }

    fn stop_instance(
        &mut self,
        id: String,
        generation: u64,
        timeout: Duration,
        ctx: &mut Context<Self>,
    ) {
        match self.instances.get(&id) {
            Some(Instance::Process {
                generation: g, pid, ..
            }) if *g == generation => {
                let pid = *pid;
                if timeout.is_zero() {
                    signal_group(pid, Signal::SIGKILL);
                    return;
                }
                signal_group(pid, Signal::SIGTERM);
                self.after(
                    timeout,
                    Timer::Kill {
                        id,
                        generation,
                        timeout,
                    },
                    ctx,
                );
            }
            Some(Instance::Actor {
                generation: g,
                stop: Some(stop),
                ..
            }) if *g == generation => {
                if timeout.is_zero() {
                    self.drop_actor(&id);
                    return;
                }
                stop.do_send(Shutdown);
                self.after(
                    timeout,
                    Timer::Kill {
                        id,
                        generation,
                        timeout,
                    },
                    ctx,
                );
            }
            Some(i) if i.generation() == generation => {
                self.pending_stops.insert((id, generation), timeout);
            }
            _ => {}
        }
    }

    /// Delivers `timer` to this actor after `delay`. Timers, like every per-child task, run as
    /// their own tasks on the arbiter rather than inside the actor's context, whose futures
    /// are all polled on every wake-up (quadratic with a thousand children).
    fn after(&self, delay: Duration, timer: Timer, ctx: &mut Context<Self>) {
        let me = ctx.address().downgrade();
        actix_rt::spawn(async move {
            tokio::time::sleep(delay).await;
            if let Some(me) = me.upgrade() {
                me.do_send(timer);
            }
        });
    }

    /// A terminate timeout has passed: kill the generation if it is still there.
    fn kill_overdue(&mut self, id: String, generation: u64, timeout: Duration) {
        let timeout_ms = timeout.as_millis() as u64;
        match self.instances.get(&id) {
            Some(Instance::Process {
                generation: g,
                pid,
                cgroup,
                ..
            }) if *g == generation => {
                tracing::warn!(
                    id,
                    pid,
                    timeout_ms,
                    "child did not stop within its terminate timeout; killing its processes"
                );
                signal_group(*pid, Signal::SIGKILL);
                if let Some(cgroup) = cgroup {
                    cgroup.kill();
                }
            }
            Some(Instance::Actor { generation: g, .. }) if *g == generation => {
                tracing::warn!(
                    id,
                    timeout_ms,
                    "actor child did not stop within its terminate timeout; dropping it"
                );
                self.drop_actor(&id);
            }
            _ => {}
        }
    }

    /// Stops an actor child's arbiter: its event loop ends and the actor is dropped, which
    /// reports its exit.
    fn drop_actor(&mut self, id: &str) {
        if let Some(Instance::Actor { arbiter, .. }) = self.instances.get(id) {
            arbiter.stop();
        }
    }

    fn on_process_exit(
        &mut self,
        id: String,
        generation: u64,
        pid: u32,
        reason: ExitReason,
        ctx: &mut Context<Self>,
    ) {
        if matches!(self.instances.get(&id), Some(i) if i.generation() == generation) {
            if let Some(Instance::Process {
                probe_cancel: Some(cancel),
                ..
            }) = self.instances.remove(&id)
            {
                let _ = cancel.send(());
            }
        }
        self.lifecycle(ServiceLifecycle::Exited {
            id: id.clone(),
            pid,
        });
        let commands = self.core.on_exit(&id, generation, reason, Instant::now());
        self.after_child_event(&id);
        self.execute(commands, ctx);
    }

    fn reply_start(&mut self, id: &str, generation: u64, result: Result<Option<u32>, ChildError>) {
        for waiter in self
            .start_waiters
            .remove(&(id.to_string(), generation))
            .unwrap_or_default()
        {
            let _ = waiter.send(result.clone());
        }
    }

    /// After an exit of child `id`: answers the calls its exit settles (stops done, starts
    /// that will not happen) and drops its ring if it was deleted.
    fn after_child_event(&mut self, id: &str) {
        self.resolve_stop_waiters(id);
        let stale: Vec<(String, u64)> = self
            .start_waiters
            .keys()
            .filter(|(waiting, generation)| {
                waiting == id && !self.core.awaits_start(id, *generation)
            })
            .cloned()
            .collect();
        for key in stale {
            let answer = self.not_started(id);
            for waiter in self.start_waiters.remove(&key).unwrap_or_default() {
                let _ = waiter.send(answer.clone());
            }
        }
        self.forget_if_deleted(id);
    }

    /// The answer to a call waiting for a start of child `id` that is not coming: none yet
    /// (it waits for its requirements), or why not.
    fn not_started(&self, id: &str) -> Result<Option<u32>, ChildError> {
        if self.core.is_stopping() {
            Err(ChildError::Stopping)
        } else if self.core.waits_for_requirements(id) {
            Ok(None)
        } else if let Some(reason) = self.core.failure(id) {
            Err(ChildError::Failed(id.to_string(), reason))
        } else if self.core.spec(id).is_some() {
            Err(ChildError::NotRunning(id.to_string()))
        } else {
            Err(ChildError::NotFound(id.to_string()))
        }
    }

    /// Drops what is kept about child `id` if it is no longer known: its ring, and its place
    /// among the configured children (an API child may take the id later).
    fn forget_if_deleted(&mut self, id: &str) {
        if self.core.spec(id).is_none() && !self.replacing.contains(id) {
            self.rings.remove(id);
            self.configured.retain(|c| c != id);
            self.notify_warned.remove(id);
        }
    }

    fn resolve_stop_waiters(&mut self, id: &str) {
        if self.instances.contains_key(id) {
            return;
        }
        for waiter in self.stop_waiters.remove(id).unwrap_or_default() {
            let _ = waiter.send(());
        }
    }
}

/// A spawn request has been answered.
#[derive(Message)]
#[rtype(result = "()")]
struct SpawnDone {
    id: String,
    generation: u64,
    result: Result<Spawned, String>,
}

/// A service process has exited (and been reaped).
#[derive(Message)]
#[rtype(result = "()")]
struct ProcessExited {
    id: String,
    generation: u64,
    pid: u32,
    reason: ExitReason,
}

/// A timer armed with [`Supervisor::after`] has fired.
#[derive(Message)]
#[rtype(result = "()")]
enum Timer {
    Restart {
        id: String,
        generation: u64,
    },
    StartTimeout {
        id: String,
        generation: u64,
    },
    Kill {
        id: String,
        generation: u64,
        timeout: Duration,
    },
    Requirements {
        id: String,
        generation: u64,
    },
    Watch {
        seq: u64,
    },
}

/// A child passed its readiness check (`log_line` match or probe).
#[derive(Message)]
#[rtype(result = "()")]
struct ChildReady {
    id: String,
    generation: u64,
}

impl Actor for Supervisor {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Self::Context) {
        let now = Instant::now();
        for (spec, reason) in std::mem::take(&mut self.setup_failed) {
            tracing::error!(id = %spec.id, %reason, "service cannot start");
            if let Err(e) = self.core.add_failed(spec, reason) {
                tracing::error!(error = %e, "service not added");
            }
        }
        for spec in std::mem::take(&mut self.setup_children) {
            let id = spec.id.clone();
            if let Err(e) = self.core.add(spec) {
                tracing::error!(id, error = %e, "child not added");
            }
        }
        let commands = self.core.start_all(now);
        self.execute(commands, ctx);
    }

    fn stopped(&mut self, _: &mut Self::Context) {
        self.unwatch();
        if let Some(stopped) = self.stopped.take() {
            let _ = stopped.send(());
        }
    }
}

impl Drop for Supervisor {
    /// Normally every child has stopped by now. If the supervisor itself died (a panic), its
    /// process groups are killed and reaped here so that none runs unsupervised or lingers as
    /// a zombie; actor children's arbiters are stopped.
    fn drop(&mut self) {
        let mut orphans = Vec::new();
        for (_, instance) in self.instances.drain() {
            match instance {
                Instance::Process {
                    pid, pidfd, cgroup, ..
                } => {
                    signal_group(pid, Signal::SIGKILL);
                    if let Some(cgroup) = cgroup {
                        cgroup.kill();
                    }
                    orphans.push(pidfd);
                }
                Instance::Actor { arbiter, .. } => {
                    arbiter.stop();
                }
                Instance::Spawning { .. } => {}
            }
        }
        if !orphans.is_empty() {
            let _ = std::thread::Builder::new()
                .name("troupe-reaper".into())
                .spawn(move || {
                    for pidfd in orphans {
                        let _ = rustix::process::waitid(
                            rustix::process::WaitId::PidFd(pidfd.as_fd()),
                            rustix::process::WaitIdOptions::EXITED,
                        );
                    }
                });
        }
    }
}

impl Handler<Shutdown> for Supervisor {
    type Result = ();

    fn handle(&mut self, _: Shutdown, ctx: &mut Self::Context) {
        tracing::info!(children = self.core.live_children(), "stopping children");
        let commands = self.core.shutdown();
        self.execute(commands, ctx);
    }
}

impl Handler<SpawnDone> for Supervisor {
    type Result = ();

    fn handle(&mut self, msg: SpawnDone, ctx: &mut Self::Context) {
        self.on_spawn_result(msg.id, msg.generation, msg.result, ctx);
    }
}

impl Handler<ProcessExited> for Supervisor {
    type Result = ();

    fn handle(&mut self, msg: ProcessExited, ctx: &mut Self::Context) {
        self.on_process_exit(msg.id, msg.generation, msg.pid, msg.reason, ctx);
    }
}

impl Handler<Timer> for Supervisor {
    type Result = ();

    fn handle(&mut self, timer: Timer, ctx: &mut Self::Context) {
        let now = Instant::now();
        let commands = match timer {
            Timer::Restart { id, generation } => self.core.on_restart_timer(&id, generation, now),
            Timer::StartTimeout { id, generation } => {
                self.core.on_start_timeout(&id, generation, now)
            }
            Timer::Kill {
                id,
                generation,
                timeout,
            } => {
                self.kill_overdue(id, generation, timeout);
                Vec::new()
            }
            Timer::Requirements { id, generation } => {
                self.core.on_requirements_timeout(&id, generation, now)
            }
            Timer::Watch { seq } => {
                self.retry_watch(seq, ctx);
                Vec::new()
            }
        };
        self.execute(commands, ctx);
    }
}

impl Handler<ChildReady> for Supervisor {
    type Result = ();

    fn handle(&mut self, msg: ChildReady, ctx: &mut Self::Context) {
        let commands = self.core.on_ready(&msg.id, msg.generation, Instant::now());
        self.execute(commands, ctx);
    }
}

impl Handler<ActorStarted> for Supervisor {
    type Result = ();

    fn handle(&mut self, msg: ActorStarted, ctx: &mut Self::Context) {
        let ActorStarted {
            id,
            generation,
            stop: recipient,
        } = msg;
        match self.instances.get_mut(&id) {
            Some(Instance::Actor {
                generation: g,
                stop,
                ..
            }) if *g == generation => *stop = Some(recipient),
            _ => return,
        }
        let commands = self.core.on_spawned(&id, generation, None, Instant::now());
        self.reply_start(&id, generation, Ok(None));
        if let Some(timeout) = self.pending_stops.remove(&(id.clone(), generation)) {
            self.stop_instance(id.clone(), generation, timeout, ctx);
        } else if let Some(spec) = self.core.spec(&id) {
            if let Some(check) = spec.ready.clone() {
                let timeout = spec.start_timeout;
                self.watch_readiness(id, generation, check, timeout, None, ctx);
            }
        }
        self.execute(commands, ctx);
    }
}

impl Handler<ActorExited> for Supervisor {
    type Result = ();

    fn handle(&mut self, msg: ActorExited, ctx: &mut Self::Context) {
        let ActorExited {
            id,
            generation,
            reason,
        } = msg;
        if matches!(self.instances.get(&id), Some(i) if i.generation() == generation) {
            if let Some(Instance::Actor { arbiter, .. }) = self.instances.remove(&id) {
                arbiter.stop();
            }
            self.pending_stops.remove(&(id.clone(), generation));
            self.reply_start(
                &id,
                generation,
                Err(ChildError::Failed(id.clone(), reason.to_string())),
            );
        }
        let commands = self.core.on_exit(&id, generation, reason, Instant::now());
        self.after_child_event(&id);
        self.execute(commands, ctx);
    }
}

/// Milliseconds since the Unix epoch.
fn unix_ms_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
        .unwrap_or(0)
}

/// A child that is itself a supervisor of `setup`'s children, run as an actor on its own
/// arbiter. When it escalates it stops its children and exits with
/// [`ExitReason::Escalated`], which its parent's plan then handles.
pub fn nested_supervisor(id: impl Into<String>, setup: SupervisorSetup) -> ChildSpec {
    let factory = crate::actor_child::ActorFactory::with_notice(move |notice| {
        Supervisor::new(setup.clone(), Escalation::Parent(notice), None)
    });
    let mut spec = ChildSpec::actor(id, factory);
    spec.child_type = crate::spec::ChildType::Supervisor;
    spec.terminate_timeout = spec.child_type.default_terminate_timeout();
    spec
}
