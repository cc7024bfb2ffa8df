//! The supervisor's logic, without I/O: the table of children and their states, start ordering,
//! plan decisions on exits, the API's rules and error cases, and orderly shutdown; for
//! operators, each child's status (with its last exit, and the last [`TOMBSTONES`] deleted
//! children), restarts that are not crashes, and what a reload changes.
//!
//! Restart limits: a child's plan may complete `count` cycles within `period` (older cycles drop
//! out), and no start its plan decides comes sooner than `min_restart_interval` after its
//! previous start. When the plan is used up, the node's own supervisor
//! ([`SupervisorCore::with_escalation_to_node`]) marks the child failed (`on_exhausted =
//! "fail"`) and keeps running; otherwise the supervisor escalates.
//!
//! Cluster requirements: a child that `requires` resources starts only once each has an online
//! provider, as the cluster client last reported ([`SupervisorCore::on_providers`]); until then
//! it waits (its `requirements_timeout` bounds the wait), and a change of its providers while
//! it runs restarts it, notifies it or is ignored (`on_requirement_change`). A child with
//! `endpoints` has them offered while it runs (and is ready) and withdrawn when it stops or
//! exits ([`Command::Offer`], [`Command::Withdraw`]).
//!
//! The actor feeds it events (a child spawned, became ready, exited; a timer fired; an API
//! call; the providers changed) with the current time, and executes the [`Command`]s it
//! returns. Every event and
//! command names the child's *generation*: each start and each armed restart timer gets a new
//! one, so an event about an earlier incarnation is recognised and ignored.

use std::collections::{BTreeMap, HashSet, VecDeque};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use troupe_core::cluster::Provider;

use crate::plan::{duration_text, Count, ExitReason, Outcome, Plan, PlanState};
use crate::reload::{ReloadFailure, ReloadReport};
use crate::requirements::{self, OnRequirementChange, RequirementsView};
use crate::spec::OnExhausted;
use crate::spec::{ChildSpec, ChildStart, ChildType, DefaultSpec};
use crate::status::{
    is_signal, spec_json, ExitCounts, ExitKind, LastExit, RequirementsStatus, ServiceMetrics,
    ServiceState, ServiceStatus,
};

/// Deleted children whose last status is kept for operators.
pub const TOMBSTONES: usize = 64;

/// Restart times remembered per child for
/// [`ServiceStatus::restarts_last_hour`]: the latest ones within the hour, at most this many.
pub const RESTART_RECORD: usize = 1000;

/// The window of [`ServiceStatus::restarts_last_hour`].
const HOUR: Duration = Duration::from_secs(3600);

/// What the actor must do.
#[derive(Debug, Clone, PartialEq)]
pub enum Command {
    /// Start generation `generation` of child `id` (its spec: [`SupervisorCore::spec`]).
    Start {
        /// The child.
        id: String,
        /// The new generation.
        generation: u64,
    },
    /// Stop the running generation of child `id`: `timeout` zero means SIGKILL at once.
    Stop {
        /// The child.
        id: String,
        /// The generation to stop.
        generation: u64,
        /// Time between the polite request and the kill.
        timeout: Duration,
    },
    /// Call [`SupervisorCore::on_restart_timer`] after `delay`.
    ArmRestart {
        /// The child.
        id: String,
        /// The timer's generation.
        generation: u64,
        /// How long to wait.
        delay: Duration,
    },
    /// The supervisor must stop: escalate to its parent (or stop the node).
    Escalate {
        /// Why.
        reason: String,
    },
    /// Every child has stopped after [`SupervisorCore::shutdown`].
    ShutdownComplete,
    /// Call [`SupervisorCore::on_requirements_timeout`] after `delay`.
    ArmRequirementsTimeout {
        /// The child.
        id: String,
        /// The wait's generation.
        generation: u64,
        /// How long to wait.
        delay: Duration,
    },
    /// Offer `endpoints` as resource `id` to the cluster (the child runs, and is ready).
    Offer {
        /// The child, which is the resource.
        id: String,
        /// Name → address.
        endpoints: BTreeMap<String, String>,
    },
    /// Withdraw resource `id` (offered by [`Command::Offer`]) from the cluster: the child is
    /// being stopped or has exited.
    Withdraw {
        /// The child, which is the resource.
        id: String,
    },
    /// Send the running child `id` the new picture of its requirements over its service
    /// channel (`on_requirement_change = "notify"`).
    NotifyRequirements {
        /// The child.
        id: String,
        /// The JSON document to send (see [`requirements::notify_payload`]).
        payload: serde_json::Value,
    },
}

/// A child's state as the API shows it.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ChildStatus {
    /// Waiting for the children named in its `after` to be running.
    Pending,
    /// Started, not yet ready.
    Starting,
    /// Running (and ready).
    Running,
    /// Down, a restart timer is armed.
    Restarting,
    /// Down until `restart_child` (plan `wait`, or `terminate_child`).
    Waiting,
    /// Down until each of these required resources has an online provider.
    WaitingForRequirements(Vec<String>),
    /// Being stopped.
    Stopping,
    /// Down until an operator starts it; the reason says why (its restart plan is used up, or
    /// it cannot be started at all: a broken manifest).
    Failed(String),
}

/// One row of `which_children`.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct ChildInfo {
    /// The child's id.
    pub id: String,
    /// Its OS process id, when it is a running process.
    pub pid: Option<u32>,
    /// Its state.
    pub status: ChildStatus,
    /// Worker or supervisor.
    pub child_type: ChildType,
    /// `process` or `actor`.
    pub kind: &'static str,
    /// Restarts its plan has decided so far.
    pub restarts: u64,
}

/// `count_children`, as director reports it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize)]
pub struct ChildCounts {
    /// Children known.
    pub specs: usize,
    /// Children started or running.
    pub active: usize,
    /// Children of type supervisor.
    pub supervisors: usize,
    /// Children of type worker.
    pub workers: usize,
}

/// Why an API call was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ChildError {
    /// `start_child` for a child that runs.
    #[error("child `{0}` is already started")]
    AlreadyStarted(String),
    /// `start_child` for a child that is known but not running.
    #[error("child `{0}` is already present; use restart_child to start it")]
    AlreadyPresent(String),
    /// The call needs the child to be stopped.
    #[error("child `{0}` is running")]
    Running(String),
    /// The call needs the child not to have a restart pending.
    #[error("child `{0}` is restarting")]
    Restarting(String),
    /// No child has this id.
    #[error("child `{0}` not found")]
    NotFound(String),
    /// The child cannot be started at all (a broken manifest, or a command that does not
    /// run).
    #[error("child `{0}` cannot be started: {1}")]
    Failed(String, String),
    /// The spec is invalid.
    #[error("invalid child spec: {0}")]
    Invalid(String),
    /// The supervisor holds its maximum number of children.
    #[error("the supervisor already has its maximum of {0} children")]
    TooMany(usize),
    /// The supervisor is stopping.
    #[error("the supervisor is stopping")]
    Stopping,
    /// The call needs the child to run.
    #[error("child `{0}` is not running")]
    NotRunning(String),
    /// The call is for process children only.
    #[error("child `{0}` is an actor; only process children take signals")]
    NotAProcess(String),
}

impl ChildError {
    /// The rule the call broke, as a snake_case name (`not_found`, `already_started`, ...).
    pub fn rule(&self) -> &'static str {
        match self {
            ChildError::AlreadyStarted(_) => "already_started",
            ChildError::AlreadyPresent(_) => "already_present",
            ChildError::Running(_) => "running",
            ChildError::Restarting(_) => "restarting",
            ChildError::NotFound(_) => "not_found",
            ChildError::Failed(_, _) => "failed",
            ChildError::Invalid(_) => "invalid",
            ChildError::TooMany(_) => "too_many",
            ChildError::Stopping => "stopping",
            ChildError::NotRunning(_) => "not_running",
            ChildError::NotAProcess(_) => "not_a_process",
        }
    }

    /// The child the error names, if any.
    pub fn child(&self) -> Option<&str> {
        match self {
            ChildError::AlreadyStarted(id)
            | ChildError::AlreadyPresent(id)
            | ChildError::Running(id)
            | ChildError::Restarting(id)
            | ChildError::NotFound(id)
            | ChildError::Failed(id, _)
            | ChildError::NotRunning(id)
            | ChildError::NotAProcess(id) => Some(id),
            ChildError::Invalid(_) | ChildError::TooMany(_) | ChildError::Stopping => None,
        }
    }
}

/// What to do once a requested stop has completed.
#[derive(Debug, Clone, PartialEq)]
enum AfterStop {
    Wait,
    Shutdown,
    /// The stop was forced by a failed start: apply the plan to this reason.
    Crash(ExitReason),
    /// An operator's restart: start this (reserved) generation at once, no plan applied.
    Restart {
        generation: u64,
    },
    /// Removed by a reload: forget the child once it has stopped.
    Delete,
}

#[derive(Debug, Clone, PartialEq)]
enum State {
    Pending,
    Starting {
        generation: u64,
        pid: Option<u32>,
        since: Instant,
    },
    Running {
        generation: u64,
        pid: Option<u32>,
        since: Instant,
    },
    Restarting {
        generation: u64,
        at: Instant,
    },
    Waiting,
    Stopping {
        generation: u64,
        pid: Option<u32>,
        since: Instant,
        then: AfterStop,
    },
    /// Cannot be started (a broken manifest).
    Failed(String),
    /// Its plan is used up (the node's supervisor, `on_exhausted = "fail"`): down until an
    /// operator starts it, which resets its plan counters.
    Exhausted(String),
    /// Waiting for providers of the resources it requires; `generation` is the start the
    /// wait stands for (and names its timeout).
    AwaitingRequirements {
        generation: u64,
        since: Instant,
    },
    /// Its requirements were not met within its `requirements_timeout`: down until an
    /// operator starts it, which makes it wait again.
    Unmet(String),
}

impl State {
    fn is_live(&self) -> bool {
        matches!(
            self,
            State::Starting { .. } | State::Running { .. } | State::Stopping { .. }
        )
    }
}

struct Child {
    spec: ChildSpec,
    state: State,
    counters: PlanState,
    /// Generation of the current or last run (0: never started).
    run: u64,
    /// When the current or last run was started.
    last_start: Option<Instant>,
    last_exit: Option<LastExit>,
    /// The providers of its requirements the current run was started with (or last told
    /// of, or chose to ignore).
    seen: Option<RequirementsView>,
    /// Its endpoints are offered to the cluster.
    offered: bool,
    /// What metrics count of its runs since it was added.
    history: RunHistory,
}

/// A child's restarts and exits since it was added: never reset (unlike its plan counters).
#[derive(Debug, Clone, Default)]
struct RunHistory {
    /// Restarts its plan decided.
    restarts: u64,
    /// When the latest of them were decided, oldest first: none older than an hour once
    /// pruned, at most [`RESTART_RECORD`].
    restart_times: VecDeque<Instant>,
    /// Exits by kind.
    exits: ExitCounts,
}

impl RunHistory {
    fn restarted(&mut self, now: Instant) {
        self.restarts = self.restarts.saturating_add(1);
        while self
            .restart_times
            .front()
            .is_some_and(|t| now.saturating_duration_since(*t) > HOUR)
            || self.restart_times.len() >= RESTART_RECORD
        {
            self.restart_times.pop_front();
        }
        self.restart_times.push_back(now);
    }

    /// Restarts decided within the hour before `now`.
    fn restarts_last_hour(&self, now: Instant) -> u64 {
        self.restart_times
            .iter()
            .filter(|t| now.saturating_duration_since(**t) <= HOUR)
            .count() as u64
    }
}

impl Child {
    /// The withdrawal of its endpoints, if they are offered.
    fn withdraw(&mut self) -> Option<Command> {
        std::mem::take(&mut self.offered).then(|| Command::Withdraw {
            id: self.spec.id.clone(),
        })
    }

    /// If the child is starting or running: marks it stopping, to do `then` once it has
    /// stopped, and returns what to carry out (its endpoints withdrawn, then the stop).
    /// Otherwise changes nothing.
    fn stop_running(&mut self, then: AfterStop) -> Vec<Command> {
        let (State::Starting {
            generation,
            pid,
            since,
        }
        | State::Running {
            generation,
            pid,
            since,
        }) = self.state
        else {
            return Vec::new();
        };
        self.state = State::Stopping {
            generation,
            pid,
            since,
            then,
        };
        let mut commands: Vec<Command> = self.withdraw().into_iter().collect();
        commands.push(Command::Stop {
            id: self.spec.id.clone(),
            generation,
            timeout: self.spec.terminate_timeout,
        });
        commands
    }
}

impl Child {
    /// The delay before a restart its plan decided with `planned` delay at `now`: at least
    /// what keeps the start `min_restart_interval` after the previous one.
    fn restart_delay(&self, planned: Duration, now: Instant) -> Duration {
        let floor = self
            .last_start
            .and_then(|start| start.checked_add(self.spec.min_restart_interval))
            .map_or(Duration::ZERO, |earliest| {
                earliest.saturating_duration_since(now)
            });
        planned.max(floor)
    }

    fn new(spec: ChildSpec, state: State) -> Self {
        Child {
            spec,
            state,
            counters: PlanState::default(),
            run: 0,
            last_start: None,
            last_exit: None,
            seen: None,
            offered: false,
            history: RunHistory::default(),
        }
    }
}

/// The supervisor's children and the rules that govern them.
pub struct SupervisorCore {
    children: Vec<Child>,
    default: DefaultSpec,
    max_children: usize,
    generation: u64,
    created: Instant,
    /// Milliseconds since the Unix epoch at `created`.
    created_unix_ms: u64,
    /// Deleted children: their last status and metrics, oldest first.
    tombstones: VecDeque<(ServiceStatus, ServiceMetrics)>,
    all_running_announced: bool,
    shutting_down: bool,
    escalated: bool,
    /// This is the node's own supervisor: an escalation stops the node.
    escalates_to_node: bool,
    /// A cluster client is there to follow requirements and take offers.
    has_cluster: bool,
    /// The online providers of the watched resources, as last reported; a resource not here
    /// is not known yet.
    providers: BTreeMap<String, Vec<Provider>>,
    /// The resources the current watch follows (sorted, no duplicates).
    watched: Vec<String>,
    /// A child with requirements was added or removed since the watch was last settled.
    watch_dirty: bool,
}

impl SupervisorCore {
    /// An empty supervisor holding at most `max_children`. `now` is taken to be the wall
    /// clock's present time (see [`SupervisorCore::with_wall_clock`]).
    pub fn new(default: DefaultSpec, max_children: usize, now: Instant) -> Self {
        let created_unix_ms = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
            .unwrap_or(0);
        SupervisorCore {
            children: Vec::new(),
            default,
            max_children,
            generation: 0,
            created: now,
            created_unix_ms,
            tombstones: VecDeque::new(),
            all_running_announced: false,
            shutting_down: false,
            escalated: false,
            escalates_to_node: false,
            has_cluster: false,
            providers: BTreeMap::new(),
            watched: Vec::new(),
            watch_dirty: false,
        }
    }

    /// Whether a cluster client runs on the node (the default: none). Without one, a child
    /// that requires resources or offers endpoints cannot start: it is marked failed, and
    /// `start_child` refuses it.
    pub fn with_cluster(mut self, has_cluster: bool) -> Self {
        self.has_cluster = has_cluster;
        self
    }

    /// Whether this supervisor's escalation stops the node (the node's own supervisor) rather
    /// than reaching a parent supervisor (the default). For the node's supervisor, a child
    /// with `on_exhausted = "fail"` whose plan is used up is marked failed instead of
    /// escalating.
    pub fn with_escalation_to_node(mut self, to_node: bool) -> Self {
        self.escalates_to_node = to_node;
        self
    }

    /// The same core, with the `now` given to [`SupervisorCore::new`] being `unix_ms`
    /// milliseconds since the Unix epoch. Wall-clock times shown to operators are that plus
    /// the time elapsed since.
    pub fn with_wall_clock(mut self, unix_ms: u64) -> Self {
        self.created_unix_ms = unix_ms;
        self
    }

    fn unix_ms(&self, at: Instant) -> u64 {
        let since = at.saturating_duration_since(self.created).as_millis();
        self.created_unix_ms
            .saturating_add(u64::try_from(since).unwrap_or(u64::MAX))
    }

    /// Adds a child without starting it (see [`SupervisorCore::start_all`]).
    pub fn add(&mut self, spec: ChildSpec) -> Result<(), ChildError> {
        let spec = self.default.merge(spec);
        spec.check().map_err(ChildError::Invalid)?;
        if let Some(child) = self.get(&spec.id) {
            return Err(if child.state.is_live() {
                ChildError::AlreadyStarted(spec.id)
            } else {
                ChildError::AlreadyPresent(spec.id)
            });
        }
        if self.children.len() >= self.max_children {
            return Err(ChildError::TooMany(self.max_children));
        }
        if let Some(missing) = spec.after.iter().find(|a| self.get(a).is_none()) {
            return Err(ChildError::Invalid(format!(
                "after: no child `{missing}` (a child may only start after children added before it)"
            )));
        }
        self.tombstones.retain(|(t, _)| t.id != spec.id);
        self.watch_dirty |= !spec.requires.is_empty();
        self.children.push(Child::new(spec, State::Pending));
        Ok(())
    }

    /// Records a child that cannot be started (a broken manifest) so the API shows it.
    pub fn add_failed(
        &mut self,
        spec: ChildSpec,
        reason: impl Into<String>,
    ) -> Result<(), ChildError> {
        if self.get(&spec.id).is_some() {
            return Err(ChildError::AlreadyPresent(spec.id));
        }
        if self.children.len() >= self.max_children {
            return Err(ChildError::TooMany(self.max_children));
        }
        self.tombstones.retain(|(t, _)| t.id != spec.id);
        self.children
            .push(Child::new(spec, State::Failed(reason.into())));
        Ok(())
    }

    /// Starts every pending child whose `after` children are running.
    pub fn start_all(&mut self, now: Instant) -> Vec<Command> {
        let mut commands = Vec::new();
        self.start_pending(now, &mut commands);
        for child in &self.children {
            if child.state == State::Pending {
                let waiting: Vec<&str> = child
                    .spec
                    .after
                    .iter()
                    .map(String::as_str)
                    .filter(|a| !self.is_running(a))
                    .collect();
                tracing::info!(id = %child.spec.id, waiting_for = ?waiting, "child waits for the children it starts after");
            }
        }
        commands
    }

    /// The spec of child `id` (merged with the default when it appends).
    pub fn spec(&self, id: &str) -> Option<&ChildSpec> {
        self.get(id).map(|c| &c.spec)
    }

    /// Generation `generation` of `id` has been spawned as process `pid` (None for actors).
    pub fn on_spawned(
        &mut self,
        id: &str,
        generation: u64,
        pid: Option<u32>,
        now: Instant,
    ) -> Vec<Command> {
        let mut commands = Vec::new();
        let Some(child) = self.get_mut(id) else {
            return commands;
        };
        match &mut child.state {
            State::Starting {
                generation: g,
                pid: p,
                ..
            }
            | State::Stopping {
                generation: g,
                pid: p,
                ..
            } if *g == generation => *p = pid,
            _ => return commands,
        }
        let ready_check = child.spec.ready.clone();
        tracing::info!(
            id,
            pid,
            generation,
            restart_count = child.counters.restarts,
            plan = %child.spec.plan,
            ready_check = ready_check.as_ref().map(|r| r.to_string()),
            "child started"
        );
        if ready_check.is_none() {
            self.become_running(id, generation, now, &mut commands);
        }
        commands
    }

    /// Generation `generation` of `id` passed its readiness check.
    pub fn on_ready(&mut self, id: &str, generation: u64, now: Instant) -> Vec<Command> {
        let mut commands = Vec::new();
        if let Some(child) = self.get(id) {
            tracing::info!(id, generation, pid = child_pid(&child.state), "child ready");
        }
        self.become_running(id, generation, now, &mut commands);
        commands
    }

    /// Generation `generation` of `id` did not become ready in time: stop it, then apply its
    /// plan.
    pub fn on_start_timeout(&mut self, id: &str, generation: u64, _now: Instant) -> Vec<Command> {
        let Some(child) = self.get_mut(id) else {
            return Vec::new();
        };
        match child.state {
            State::Starting {
                generation: g,
                pid,
                since,
            } if g == generation => {
                let timeout = child.spec.start_timeout;
                tracing::warn!(
                    id,
                    pid,
                    timeout_ms = timeout.as_millis() as u64,
                    "child not ready in time; stopping it"
                );
                child.state = State::Stopping {
                    generation,
                    pid,
                    since,
                    then: AfterStop::Crash(ExitReason::NotReady(timeout)),
                };
                vec![Command::Stop {
                    id: id.to_string(),
                    generation,
                    timeout: child.spec.terminate_timeout,
                }]
            }
            _ => Vec::new(),
        }
    }

    /// Generation `generation` of `id` could not be spawned.
    pub fn on_spawn_failed(
        &mut self,
        id: &str,
        generation: u64,
        error: String,
        now: Instant,
    ) -> Vec<Command> {
        self.on_exit(id, generation, ExitReason::StartFailed(error), now)
    }

    /// Generation `generation` of `id` has exited for `reason`.
    pub fn on_exit(
        &mut self,
        id: &str,
        generation: u64,
        reason: ExitReason,
        now: Instant,
    ) -> Vec<Command> {
        let mut commands = Vec::new();
        let shutting_down = self.shutting_down || self.escalated;
        let Some(index) = self.index(id) else {
            return commands;
        };
        let child = &mut self.children[index];
        let (pid, since, requested) = match &child.state {
            State::Starting {
                generation: g,
                pid,
                since,
            }
            | State::Running {
                generation: g,
                pid,
                since,
            } if *g == generation => (*pid, *since, None),
            State::Stopping {
                generation: g,
                pid,
                since,
                then,
            } if *g == generation => (*pid, *since, Some(then.clone())),
            _ => return commands,
        };
        // A dead process is never offered: withdraw before anything else happens.
        commands.extend(child.withdraw());
        let ran_for = now.saturating_duration_since(since);
        let ran_ms = ran_for.as_millis() as u64;
        let crash = match &requested {
            // No plan applies during shutdown, not even to a failed readiness check.
            Some(AfterStop::Crash(cause)) if !shutting_down => Some(cause.clone()),
            Some(_) => None,
            None if shutting_down => None,
            None => Some(reason.clone()),
        };
        let at_unix_ms = self.unix_ms(now);
        let child = &mut self.children[index];
        child.history.exits.count(match &requested {
            Some(AfterStop::Crash(cause)) => ExitKind::of(cause),
            Some(_) => ExitKind::Requested,
            None => ExitKind::of(&reason),
        });
        child.last_exit = Some(LastExit::new(
            crash.as_ref().unwrap_or(&reason),
            &reason,
            at_unix_ms,
            requested.is_some(),
        ));
        let Some(cause) = crash else {
            tracing::info!(id, pid, exit = %reason, status = reason.status(), signal = reason.signal(), ran_ms, "child stopped");
            match requested {
                Some(AfterStop::Restart { generation: next }) if !shutting_down => {
                    self.start_index_as(index, next, now, &mut commands);
                }
                Some(AfterStop::Delete) => {
                    self.remove_index(index);
                    self.after_stop(&mut commands);
                }
                _ => {
                    child.state = State::Waiting;
                    self.after_stop(&mut commands);
                }
            }
            return commands;
        };
        let mut decision = child.counters.decide(
            &child.spec.plan,
            child.spec.intensity(),
            &cause,
            ran_for,
            now,
        );
        if let Outcome::Restart { delay } = &mut decision.outcome {
            *delay = child.restart_delay(*delay, now);
            child.history.restarted(now);
        }
        let fail = matches!(decision.outcome, Outcome::Exhausted(_))
            && self.escalates_to_node
            && child.spec.on_exhausted == OnExhausted::Fail;
        let fields = ReportFields::of(child, now);
        let decided = match &decision.outcome {
            Outcome::Restart { delay } if delay.is_zero() => "restart".to_string(),
            Outcome::Restart { delay } => format!("restart in {} ms", delay.as_millis()),
            Outcome::Delete => "delete".into(),
            Outcome::Wait => "wait".into(),
            Outcome::Exhausted(_) if fail => "fail".into(),
            Outcome::Exhausted(_) | Outcome::Escalate(_) => "escalate".into(),
        };
        let level_clean = cause.is_clean();
        macro_rules! report {
            ($level:ident) => {
                tracing::$level!(
                    id,
                    pid,
                    exit = %cause,
                    status = cause.status(),
                    signal = cause.signal(),
                    ran_ms,
                    plan = %fields.plan,
                    plan_index = decision.index,
                    plan_length = fields.plan_length,
                    plan_element = decision.element.as_deref(),
                    cycle = fields.cycles,
                    cycles_in_period = fields.cycles_in_period,
                    count = %fields.count,
                    period_ms = fields.period_ms,
                    restart_count = fields.restarts,
                    decision = %decided,
                    "child exited"
                )
            };
        }
        if level_clean {
            report!(info);
        } else {
            report!(warn);
        }
        match decision.outcome {
            Outcome::Restart { delay } if delay.is_zero() => {
                self.start_index(index, now, &mut commands);
            }
            Outcome::Restart { delay } => {
                let generation = self.next_generation();
                self.children[index].state = State::Restarting {
                    generation,
                    at: now + delay,
                };
                commands.push(Command::ArmRestart {
                    id: id.to_string(),
                    generation,
                    delay,
                });
            }
            Outcome::Delete => self.remove_index(index),
            Outcome::Wait => self.children[index].state = State::Waiting,
            Outcome::Exhausted(why) if fail => {
                let failure = why.failure(&cause);
                tracing::error!(
                    id,
                    pid,
                    exit = %cause,
                    count = %fields.count,
                    period_ms = fields.period_ms,
                    cycle = fields.cycles,
                    restart_count = fields.restarts,
                    failure = %failure,
                    "child failed: restart plan exhausted"
                );
                self.children[index].state = State::Exhausted(failure);
            }
            Outcome::Exhausted(why) => {
                self.children[index].state = State::Waiting;
                self.escalated = true;
                commands.push(Command::Escalate {
                    reason: format!("child `{id}`: {}", why.escalation(&cause)),
                });
            }
            Outcome::Escalate(reason) => {
                self.children[index].state = State::Waiting;
                self.escalated = true;
                commands.push(Command::Escalate {
                    reason: format!("child `{id}`: {reason}"),
                });
            }
        }
        commands
    }

    /// A restart timer armed by [`Command::ArmRestart`] has fired.
    pub fn on_restart_timer(&mut self, id: &str, generation: u64, now: Instant) -> Vec<Command> {
        let mut commands = Vec::new();
        if self.shutting_down || self.escalated {
            return commands;
        }
        if let Some(index) = self.index(id) {
            if matches!(self.children[index].state, State::Restarting { generation: g, .. } if g == generation)
            {
                self.start_index(index, now, &mut commands);
            }
        }
        commands
    }

    /// `start_child`: adds `spec` and starts it (once its `after` children run).
    pub fn start_child(
        &mut self,
        spec: ChildSpec,
        now: Instant,
    ) -> Result<Vec<Command>, ChildError> {
        if self.shutting_down || self.escalated {
            return Err(ChildError::Stopping);
        }
        if let Some(why) = self.cluster_refusal(&self.default.merge(spec.clone())) {
            return Err(ChildError::Invalid(why));
        }
        self.add(spec)?;
        let mut commands = Vec::new();
        self.start_pending(now, &mut commands);
        Ok(commands)
    }

    /// `restart_child`: starts a child that is down (waiting, terminated, pending, or failed
    /// because its plan is used up: its plan counters start afresh). A child that cannot be
    /// started at all (a broken manifest) answers [`ChildError::Failed`].
    pub fn restart_child(&mut self, id: &str, now: Instant) -> Result<Vec<Command>, ChildError> {
        if self.shutting_down || self.escalated {
            return Err(ChildError::Stopping);
        }
        let index = self
            .index(id)
            .ok_or_else(|| ChildError::NotFound(id.into()))?;
        match &self.children[index].state {
            s if s.is_live() => Err(ChildError::Running(id.into())),
            State::Restarting { .. } => Err(ChildError::Restarting(id.into())),
            State::Failed(reason) => Err(ChildError::Failed(id.into(), reason.clone())),
            State::Exhausted(_) => {
                self.revive(index);
                let mut commands = Vec::new();
                self.start_index(index, now, &mut commands);
                Ok(commands)
            }
            // A child whose requirements were not met in time waits for them again.
            State::Pending
            | State::Waiting
            | State::AwaitingRequirements { .. }
            | State::Unmet(_) => {
                let mut commands = Vec::new();
                self.start_index(index, now, &mut commands);
                Ok(commands)
            }
            _ => Err(ChildError::Running(id.into())),
        }
    }

    /// `terminate_child`: stops the child and keeps its spec; it stays down until
    /// `restart_child`.
    pub fn terminate_child(&mut self, id: &str) -> Result<Vec<Command>, ChildError> {
        let child = self
            .get_mut(id)
            .ok_or_else(|| ChildError::NotFound(id.into()))?;
        match child.state.clone() {
            State::Starting { .. } | State::Running { .. } => {
                Ok(child.stop_running(AfterStop::Wait).into_iter().collect())
            }
            State::Stopping { then, .. } => {
                // A stop for an operator's restart becomes a plain stop.
                if let (AfterStop::Restart { .. }, State::Stopping { then, .. }) =
                    (then, &mut child.state)
                {
                    *then = AfterStop::Wait;
                }
                Ok(Vec::new())
            }
            State::Failed(_) | State::Exhausted(_) | State::Unmet(_) => Ok(Vec::new()),
            State::Restarting { .. }
            | State::Pending
            | State::Waiting
            | State::AwaitingRequirements { .. } => {
                child.state = State::Waiting;
                Ok(Vec::new())
            }
        }
    }

    /// `delete_child`: forgets a child that is down.
    pub fn delete_child(&mut self, id: &str) -> Result<(), ChildError> {
        let index = self
            .index(id)
            .ok_or_else(|| ChildError::NotFound(id.into()))?;
        match self.children[index].state {
            ref s if s.is_live() => return Err(ChildError::Running(id.into())),
            State::Restarting { .. } => return Err(ChildError::Restarting(id.into())),
            _ => {}
        }
        self.remove_index(index);
        Ok(())
    }

    /// An operator's restart. A child that runs (starting, running) is stopped as
    /// `terminate_child` stops it, then started again at once; the stop is not a crash: no plan
    /// element is used and the counters stay as they are. A child being stopped is started
    /// once its stop completes. A child that is down (waiting, pending, or with a restart
    /// timer armed, which is cancelled) is started now, as is one whose plan is used up (its
    /// plan counters start afresh). Returns the commands and the generation the new run will
    /// have.
    pub fn restart_service(
        &mut self,
        id: &str,
        now: Instant,
    ) -> Result<(Vec<Command>, u64), ChildError> {
        if self.shutting_down || self.escalated {
            return Err(ChildError::Stopping);
        }
        let index = self
            .index(id)
            .ok_or_else(|| ChildError::NotFound(id.into()))?;
        let mut commands = Vec::new();
        match self.children[index].state.clone() {
            State::Failed(reason) => Err(ChildError::Failed(id.into(), reason)),
            State::Starting {
                generation, pid, ..
            }
            | State::Running {
                generation, pid, ..
            } => {
                let next = self.next_generation();
                tracing::info!(id, pid, generation, "restarting child on request");
                let child = &mut self.children[index];
                commands.extend(child.stop_running(AfterStop::Restart { generation: next }));
                Ok((commands, next))
            }
            // Being removed by a reload: it is about to be gone.
            State::Stopping {
                then: AfterStop::Delete,
                ..
            } => Err(ChildError::NotFound(id.into())),
            State::Stopping {
                generation,
                pid,
                since,
                then,
            } => {
                let next = match then {
                    AfterStop::Restart { generation } => generation,
                    _ => self.next_generation(),
                };
                self.children[index].state = State::Stopping {
                    generation,
                    pid,
                    since,
                    then: AfterStop::Restart { generation: next },
                };
                Ok((commands, next))
            }
            State::Exhausted(_) => {
                self.revive(index);
                let next = self.next_generation();
                self.start_index_as(index, next, now, &mut commands);
                Ok((commands, next))
            }
            State::Pending
            | State::Waiting
            | State::Restarting { .. }
            | State::AwaitingRequirements { .. }
            | State::Unmet(_) => {
                let next = self.next_generation();
                self.start_index_as(index, next, now, &mut commands);
                Ok((commands, next))
            }
        }
    }

    /// Whether a start of generation `generation` of `id` is still to come or under way (an
    /// API call waiting for it still has an answer coming).
    pub fn awaits_start(&self, id: &str, generation: u64) -> bool {
        self.get(id).is_some_and(|c| match &c.state {
            State::Starting { generation: g, .. } => *g == generation,
            State::Stopping {
                then: AfterStop::Restart { generation: g },
                ..
            } => *g == generation,
            _ => false,
        })
    }

    /// The pid to send `signal` to: the main process of a process child that runs (or is
    /// being stopped).
    pub fn signal_target(&self, id: &str, signal: i32) -> Result<u32, ChildError> {
        let child = self
            .get(id)
            .ok_or_else(|| ChildError::NotFound(id.into()))?;
        if !is_signal(signal) {
            return Err(ChildError::Invalid(format!(
                "signal: {signal} is not a signal number (1 to {})",
                libc::SIGRTMAX()
            )));
        }
        if matches!(child.spec.start, ChildStart::Actor(_)) {
            return Err(ChildError::NotAProcess(id.into()));
        }
        child_pid(&child.state).ok_or_else(|| ChildError::NotRunning(id.into()))
    }

    /// Removes a child for a reload: one that runs is stopped (not a crash) and forgotten once
    /// it has stopped; one that is down is forgotten now.
    pub fn retire(&mut self, id: &str) -> Vec<Command> {
        let Some(index) = self.index(id) else {
            return Vec::new();
        };
        let child = &mut self.children[index];
        match child.state.clone() {
            State::Starting { .. } | State::Running { .. } => {
                child.stop_running(AfterStop::Delete).into_iter().collect()
            }
            State::Stopping { .. } => {
                if let State::Stopping { then, .. } = &mut child.state {
                    if *then != AfterStop::Shutdown {
                        *then = AfterStop::Delete;
                    }
                }
                Vec::new()
            }
            State::Pending
            | State::Waiting
            | State::Restarting { .. }
            | State::Failed(_)
            | State::Exhausted(_)
            | State::AwaitingRequirements { .. }
            | State::Unmet(_) => {
                self.remove_index(index);
                Vec::new()
            }
        }
    }

    /// What a reload to `desired` (and `broken` manifests) with default spec `default` would
    /// do, for the children that came from configuration (`configured`). Children added
    /// through the API are never touched; a desired id that one of them holds is reported as
    /// failed. Nothing changes here: [`ReloadPlan`] says what to retire and what to add.
    pub fn plan_reload(
        &self,
        configured: &[String],
        desired: Vec<ChildSpec>,
        broken: Vec<(ChildSpec, String)>,
        default: &DefaultSpec,
    ) -> ReloadPlan {
        let mut plan = ReloadPlan::default();
        let configured_set: HashSet<&str> = configured.iter().map(String::as_str).collect();
        let is_configured = |id: &str| configured_set.contains(id);
        let mut wanted: Vec<String> = Vec::new();
        let mut wanted_set: HashSet<String> = HashSet::new();
        for spec in desired {
            let id = spec.id.clone();
            match self.get(&id) {
                None => {
                    plan.report.added.push(id.clone());
                    plan.add.push(spec);
                }
                Some(_) if !is_configured(&id) => {
                    plan.report.failed.push(ReloadFailure {
                        id,
                        error: "the id is used by a child added through the API".into(),
                    });
                    continue;
                }
                Some(child) => {
                    let same = !matches!(child.state, State::Failed(_))
                        && child.spec.same_as(&default.merge(spec.clone()));
                    if same {
                        plan.report.unchanged.push(id.clone());
                    } else {
                        plan.report.changed.push(id.clone());
                        plan.retire.push(id.clone());
                        plan.add.push(spec);
                    }
                }
            }
            wanted_set.insert(id.clone());
            wanted.push(id);
        }
        for (spec, reason) in broken {
            let id = spec.id.clone();
            plan.report.failed.push(ReloadFailure {
                id: id.clone(),
                error: reason.clone(),
            });
            if wanted_set.contains(&id) {
                continue;
            }
            match self.get(&id) {
                None => plan.add_failed.push((spec, reason)),
                Some(child) if is_configured(&id) => {
                    // What runs keeps running until its manifest is fixed; a failed entry
                    // gets the new reason.
                    if matches!(child.state, State::Failed(_)) {
                        plan.retire.push(id.clone());
                        plan.add_failed.push((spec, reason));
                    }
                }
                Some(_) => continue,
            }
            wanted_set.insert(id.clone());
            wanted.push(id);
        }
        for id in configured {
            if !wanted_set.contains(id) {
                plan.report.removed.push(id.clone());
                if self.get(id).is_some() {
                    plan.retire.push(id.clone());
                }
            }
        }
        plan.configured = wanted;
        plan
    }

    /// Every child in the order added, then the recently deleted ones (oldest first).
    pub fn service_statuses(&self, now: Instant) -> Vec<ServiceStatus> {
        self.children
            .iter()
            .map(|c| self.status_at(c, now))
            .chain(self.tombstones.iter().map(|(status, _)| status.clone()))
            .collect()
    }

    /// Child `id`'s status, or its tombstone if it was deleted recently.
    pub fn service_status(&self, id: &str, now: Instant) -> Result<ServiceStatus, ChildError> {
        if let Some(child) = self.get(id) {
            return Ok(self.status_at(child, now));
        }
        self.tombstones
            .iter()
            .rev()
            .find(|(t, _)| t.id == id)
            .map(|(status, _)| status.clone())
            .ok_or_else(|| ChildError::NotFound(id.into()))
    }

    /// Every child's metrics in the order added, then the recently deleted ones' (oldest
    /// first). The cgroup folders are left to the actor, which knows where they are.
    pub fn service_metrics(&self) -> Vec<ServiceMetrics> {
        self.children
            .iter()
            .map(|c| self.metrics_of(c))
            .chain(self.tombstones.iter().map(|(_, metrics)| metrics.clone()))
            .collect()
    }

    fn metrics_of(&self, child: &Child) -> ServiceMetrics {
        ServiceMetrics {
            id: child.spec.id.clone(),
            kind: kind_of(&child.spec),
            state: service_state(child),
            restarts_total: child.history.restarts,
            exits: child.history.exits,
            started_at_unix_ms: run_since(&child.state).map(|s| self.unix_ms(s)),
            last_exit_code: child
                .last_exit
                .as_ref()
                .and_then(|e| e.status.or(e.signal.map(|s| 128 + s))),
            cgroup: None,
        }
    }

    fn status_at(&self, child: &Child, now: Instant) -> ServiceStatus {
        let spec = &child.spec;
        let state = service_state(child);
        let waiting_for = match &child.state {
            State::Pending => Some("after".to_string()),
            State::Restarting { .. } => Some("restart".to_string()),
            State::Waiting => Some("start".to_string()),
            State::AwaitingRequirements { .. } => Some(self.unmet_of(spec).join(", ")),
            _ => None,
        };
        let since = run_since(&child.state);
        let millis = |d: Duration| u64::try_from(d.as_millis()).unwrap_or(u64::MAX);
        let plan_length = spec.plan.0.len();
        // Once every element is used, the next exit starts the next cycle.
        let (plan_position, cycle) = if plan_length > 0 && child.counters.index >= plan_length {
            (0, child.counters.cycles.saturating_add(1))
        } else {
            (child.counters.index, child.counters.cycles)
        };
        ServiceStatus {
            id: spec.id.clone(),
            kind: kind_of(spec),
            child_type: spec.child_type,
            state,
            waiting_for,
            restart_in_ms: match &child.state {
                State::Restarting { at, .. } => Some(millis(at.saturating_duration_since(now))),
                _ => None,
            },
            failure: match &child.state {
                State::Failed(reason) | State::Exhausted(reason) | State::Unmet(reason) => {
                    Some(reason.clone())
                }
                _ => None,
            },
            pid: child_pid(&child.state),
            generation: child.run,
            started_at_unix_ms: since.map(|s| self.unix_ms(s)),
            uptime_ms: since.map(|s| millis(now.saturating_duration_since(s))),
            restarts: child.counters.restarts,
            restarts_last_hour: child.history.restarts_last_hour(now),
            plan: spec.plan.to_string(),
            plan_position,
            plan_length,
            cycle,
            count: spec.count.to_string(),
            cycles_in_period: child.counters.cycles_in_period(spec.intensity(), now),
            period_ms: millis(spec.period),
            min_restart_interval_ms: millis(spec.min_restart_interval),
            on_exhausted: spec.on_exhausted,
            // Filled in by the actor, which knows where its processes live.
            containment: None,
            last_exit: child.last_exit.clone(),
            requirements: (!spec.requires.is_empty()).then(|| RequirementsStatus {
                unmet: self.unmet_of(spec),
                providers: spec
                    .requires
                    .iter()
                    .map(|r| {
                        let nodes = self.providers.get(r).map(Vec::as_slice).unwrap_or(&[]);
                        (r.clone(), nodes.iter().map(|p| p.node.clone()).collect())
                    })
                    .collect(),
            }),
            // Filled in by the actor, which asks the broker.
            broker: None,
            spec: spec_json(spec),
        }
    }

    /// `which_children`, in the order the children were added.
    pub fn which_children(&self) -> Vec<ChildInfo> {
        self.children
            .iter()
            .map(|c| ChildInfo {
                id: c.spec.id.clone(),
                pid: child_pid(&c.state),
                status: match c.state {
                    State::AwaitingRequirements { .. } => {
                        ChildStatus::WaitingForRequirements(self.unmet_of(&c.spec))
                    }
                    ref state => status_of(state),
                },
                child_type: c.spec.child_type,
                kind: kind_of(&c.spec),
                restarts: c.counters.restarts,
            })
            .collect()
    }

    /// `count_children`.
    pub fn count_children(&self) -> ChildCounts {
        let mut counts = ChildCounts {
            specs: self.children.len(),
            ..ChildCounts::default()
        };
        for c in &self.children {
            if matches!(c.state, State::Starting { .. } | State::Running { .. }) {
                counts.active += 1;
            }
            match c.spec.child_type {
                ChildType::Worker => counts.workers += 1,
                ChildType::Supervisor => counts.supervisors += 1,
            }
        }
        counts
    }

    /// `get_pids`: every running process child and its pid.
    pub fn get_pids(&self) -> Vec<(String, u32)> {
        self.children
            .iter()
            .filter_map(|c| match c.state {
                State::Running { pid: Some(pid), .. } => Some((c.spec.id.clone(), pid)),
                _ => None,
            })
            .collect()
    }

    /// `get_pid`: the pid of a running process child.
    pub fn get_pid(&self, id: &str) -> Result<u32, ChildError> {
        match self.get(id).map(|c| &c.state) {
            Some(State::Running { pid: Some(pid), .. }) => Ok(*pid),
            _ => Err(ChildError::NotFound(id.into())),
        }
    }

    /// `get_plan`.
    pub fn get_plan(&self, id: &str) -> Result<Plan, ChildError> {
        self.spec(id)
            .map(|s| s.plan.clone())
            .ok_or_else(|| ChildError::NotFound(id.into()))
    }

    /// `change_plan`: replaces the plan (and count, if given) and resets the plan counters.
    pub fn change_plan(
        &mut self,
        id: &str,
        plan: Plan,
        count: Option<Count>,
    ) -> Result<(), ChildError> {
        let child = self
            .get_mut(id)
            .ok_or_else(|| ChildError::NotFound(id.into()))?;
        tracing::info!(id, old = %child.spec.plan, new = %plan, "plan changed; counters reset");
        child.spec.plan = plan;
        if let Some(count) = count {
            child.spec.count = count;
        }
        child.counters = PlanState::default();
        Ok(())
    }

    /// `get_default_childspec`.
    pub fn default_spec(&self) -> &DefaultSpec {
        &self.default
    }

    /// `change_default_childspec`: applies to children added from now on.
    pub fn change_default_spec(&mut self, default: DefaultSpec) {
        self.default = default;
    }

    /// Ids of children that run or are being stopped.
    pub fn live_children(&self) -> usize {
        self.children.iter().filter(|c| c.state.is_live()).count()
    }

    /// Whether the supervisor is stopping (shutdown or escalation).
    pub fn is_stopping(&self) -> bool {
        self.shutting_down || self.escalated
    }

    /// Whether the supervisor has escalated.
    pub fn has_escalated(&self) -> bool {
        self.escalated
    }

    /// Stops every child, dependents before the children they start after; no plan applies
    /// from now on. Ends with [`Command::ShutdownComplete`] once none is left running.
    pub fn shutdown(&mut self) -> Vec<Command> {
        self.shutting_down = true;
        let mut commands = Vec::new();
        for child in &mut self.children {
            if matches!(
                child.state,
                State::Restarting { .. } | State::Pending | State::AwaitingRequirements { .. }
            ) {
                child.state = State::Waiting;
            }
        }
        self.after_stop(&mut commands);
        commands
    }

    fn after_stop(&mut self, commands: &mut Vec<Command>) {
        if !self.shutting_down {
            return;
        }
        let depended_on: Vec<String> = self
            .children
            .iter()
            .filter(|c| c.state.is_live())
            .flat_map(|c| c.spec.after.iter().cloned())
            .collect();
        for child in &mut self.children {
            let id = &child.spec.id;
            if depended_on.contains(id) {
                continue;
            }
            commands.extend(child.stop_running(AfterStop::Shutdown));
        }
        if self.live_children() == 0 {
            commands.push(Command::ShutdownComplete);
        }
    }

    fn become_running(
        &mut self,
        id: &str,
        generation: u64,
        now: Instant,
        commands: &mut Vec<Command>,
    ) {
        let has_cluster = self.has_cluster;
        let Some(child) = self.get_mut(id) else {
            return;
        };
        match child.state {
            State::Starting {
                generation: g,
                pid,
                since,
            } if g == generation => {
                child.state = State::Running {
                    generation,
                    pid,
                    since,
                };
                if !child.spec.endpoints.is_empty() && has_cluster {
                    child.offered = true;
                    commands.push(Command::Offer {
                        id: id.to_string(),
                        endpoints: child.spec.endpoints.clone(),
                    });
                }
            }
            _ => return,
        }
        self.start_pending(now, commands);
        if !self.all_running_announced
            && self.children.iter().all(|c| {
                matches!(
                    c.state,
                    State::Running { .. }
                        | State::Failed(_)
                        | State::Exhausted(_)
                        | State::Unmet(_)
                )
            })
        {
            self.all_running_announced = true;
            let running = self
                .children
                .iter()
                .filter(|c| matches!(c.state, State::Running { .. }))
                .count();
            tracing::info!(
                running,
                failed = self.children.len() - running,
                elapsed_ms = now.saturating_duration_since(self.created).as_millis() as u64,
                "all children running"
            );
        }
    }

    fn start_pending(&mut self, now: Instant, commands: &mut Vec<Command>) {
        if self.shutting_down || self.escalated {
            return;
        }
        // One pass suffices: a child started here is not running yet, so nothing that waits
        // for it can start in the same pass.
        for index in 0..self.children.len() {
            let child = &self.children[index];
            if child.state == State::Pending && child.spec.after.iter().all(|a| self.is_running(a))
            {
                self.start_index(index, now, commands);
            }
        }
    }

    /// The cluster client reports the online providers of watched resources (each resource
    /// listed replaces what was known of it; `reachable: false` means no provider is known;
    /// resources not watched, see [`SupervisorCore::take_watch_change`], are ignored).
    /// Children waiting for requirements now met start; running children whose requirements'
    /// providers changed are restarted (stopped to wait, when one has none left), notified or
    /// left alone, as their `on_requirement_change` says.
    pub fn on_providers(
        &mut self,
        providers: BTreeMap<String, Vec<Provider>>,
        reachable: bool,
        now: Instant,
    ) -> Vec<Command> {
        // A late report from a watch since replaced may name a resource no longer watched.
        for (resource, list) in providers {
            if self.watched.binary_search(&resource).is_ok() {
                let list = if reachable { list } else { Vec::new() };
                self.providers.insert(resource, list);
            }
        }
        let mut commands = Vec::new();
        if self.shutting_down || self.escalated {
            return commands;
        }
        for index in 0..self.children.len() {
            if self.children[index].spec.requires.is_empty() {
                continue;
            }
            match self.children[index].state {
                State::AwaitingRequirements { generation, .. }
                    if self.unmet_of(&self.children[index].spec).is_empty() =>
                {
                    tracing::info!(id = %self.children[index].spec.id, "requirements met; starting child");
                    self.launch_index_as(index, generation, now, &mut commands);
                }
                State::Starting { .. } | State::Running { .. } => {
                    let view = self.view_of(&self.children[index].spec);
                    if self.children[index].seen.as_ref() == Some(&view) {
                        continue;
                    }
                    let unmet = requirements::unmet(&view);
                    let next = self.next_generation();
                    let child = &mut self.children[index];
                    let id = child.spec.id.clone();
                    let policy = child.spec.on_requirement_change;
                    tracing::info!(
                        id,
                        unmet = ?unmet,
                        on_requirement_change = %policy,
                        "the providers of the child's requirements changed"
                    );
                    match policy {
                        OnRequirementChange::Restart => {
                            // Not a crash: started again at once, or once they are met.
                            commands.extend(
                                child.stop_running(AfterStop::Restart { generation: next }),
                            );
                        }
                        OnRequirementChange::Notify => {
                            commands.push(Command::NotifyRequirements {
                                id,
                                payload: requirements::notify_payload(&view),
                            });
                            child.seen = Some(view);
                        }
                        OnRequirementChange::Ignore => child.seen = Some(view),
                    }
                }
                _ => {}
            }
        }
        commands
    }

    /// The requirements timeout armed by [`Command::ArmRequirementsTimeout`] has passed: a
    /// child still waiting in that wait is marked failed, naming what is missing.
    pub fn on_requirements_timeout(
        &mut self,
        id: &str,
        generation: u64,
        _now: Instant,
    ) -> Vec<Command> {
        let Some(index) = self.index(id) else {
            return Vec::new();
        };
        if !matches!(self.children[index].state, State::AwaitingRequirements { generation: g, .. } if g == generation)
        {
            return Vec::new();
        }
        let unmet = self.unmet_of(&self.children[index].spec);
        let child = &mut self.children[index];
        let failure = format!(
            "requirements not met within {}: {}",
            duration_text(child.spec.requirements_timeout),
            unmet.join(", ")
        );
        tracing::error!(id, unmet = ?unmet, failure = %failure, "child failed: requirements not met");
        child.state = State::Unmet(failure);
        Vec::new()
    }

    /// The resources every child requires, sorted, when they changed since the last call (a
    /// child with requirements was added or removed): the watch to make now (empty: none).
    /// What is known of resources no longer watched is forgotten.
    pub fn take_watch_change(&mut self) -> Option<Vec<String>> {
        if !std::mem::take(&mut self.watch_dirty) {
            return None;
        }
        let mut resources: Vec<String> = self
            .children
            .iter()
            .flat_map(|c| c.spec.requires.iter().cloned())
            .collect();
        resources.sort_unstable();
        resources.dedup();
        if resources == self.watched {
            return None;
        }
        self.providers
            .retain(|r, _| resources.binary_search(r).is_ok());
        self.watched = resources.clone();
        Some(resources)
    }

    /// The providers of child `id`'s requirements, as they are known now (what a start of it
    /// now is given).
    pub fn requirements_view(&self, id: &str) -> RequirementsView {
        self.get(id)
            .map(|c| self.view_of(&c.spec))
            .unwrap_or_default()
    }

    /// Why child `id` is failed, if it is.
    pub fn failure(&self, id: &str) -> Option<String> {
        match &self.get(id)?.state {
            State::Failed(reason) | State::Exhausted(reason) | State::Unmet(reason) => {
                Some(reason.clone())
            }
            _ => None,
        }
    }

    /// Whether child `id` waits for providers of its requirements.
    pub fn waits_for_requirements(&self, id: &str) -> bool {
        self.get(id)
            .is_some_and(|c| matches!(c.state, State::AwaitingRequirements { .. }))
    }

    /// Why `spec` cannot start on this node: it needs a cluster client and there is none.
    fn cluster_refusal(&self, spec: &ChildSpec) -> Option<String> {
        if self.has_cluster {
            return None;
        }
        let key = if !spec.requires.is_empty() {
            "requires"
        } else if !spec.endpoints.is_empty() {
            "endpoints"
        } else {
            return None;
        };
        Some(format!(
            "{key}: needs the node's cluster client: set [cluster] beacons in the node's config"
        ))
    }

    fn view_of(&self, spec: &ChildSpec) -> RequirementsView {
        spec.requires
            .iter()
            .map(|r| {
                (
                    r.clone(),
                    self.providers.get(r).cloned().unwrap_or_default(),
                )
            })
            .collect()
    }

    fn unmet_of(&self, spec: &ChildSpec) -> Vec<String> {
        spec.requires
            .iter()
            .filter(|r| self.providers.get(*r).is_none_or(Vec::is_empty))
            .cloned()
            .collect()
    }

    fn next_generation(&mut self) -> u64 {
        self.generation += 1;
        self.generation
    }

    fn start_index(&mut self, index: usize, now: Instant, commands: &mut Vec<Command>) {
        let generation = self.next_generation();
        self.start_index_as(index, generation, now, commands);
    }

    /// Starts child `index` as `generation` (new, or reserved by an operator's restart), once
    /// its requirements are met: until then it waits for them (or, without a cluster client,
    /// it fails).
    fn start_index_as(
        &mut self,
        index: usize,
        generation: u64,
        now: Instant,
        commands: &mut Vec<Command>,
    ) {
        if let Some(why) = self.cluster_refusal(&self.children[index].spec) {
            let child = &mut self.children[index];
            tracing::error!(id = %child.spec.id, reason = %why, "child cannot start");
            child.state = State::Failed(why);
            return;
        }
        let unmet = self.unmet_of(&self.children[index].spec);
        if !unmet.is_empty() {
            let child = &mut self.children[index];
            let timeout = child.spec.requirements_timeout;
            tracing::info!(
                id = %child.spec.id,
                waiting_for = ?unmet,
                timeout_ms = timeout.as_millis() as u64,
                "child waits for providers of the resources it requires"
            );
            child.state = State::AwaitingRequirements {
                generation,
                since: now,
            };
            if !timeout.is_zero() {
                commands.push(Command::ArmRequirementsTimeout {
                    id: child.spec.id.clone(),
                    generation,
                    delay: timeout,
                });
            }
            return;
        }
        self.launch_index_as(index, generation, now, commands);
    }

    /// Starts child `index` as `generation` now.
    fn launch_index_as(
        &mut self,
        index: usize,
        generation: u64,
        now: Instant,
        commands: &mut Vec<Command>,
    ) {
        let seen = self.view_of(&self.children[index].spec);
        let child = &mut self.children[index];
        child.seen = Some(seen);
        child.run = generation;
        child.last_start = Some(now);
        child.state = State::Starting {
            generation,
            pid: None,
            since: now,
        };
        commands.push(Command::Start {
            id: child.spec.id.clone(),
            generation,
        });
    }

    /// An operator starts child `index` whose plan is used up: its plan starts afresh.
    fn revive(&mut self, index: usize) {
        let child = &mut self.children[index];
        tracing::info!(id = %child.spec.id, "starting a failed child on request; plan counters reset");
        child.counters = PlanState::default();
    }

    /// Forgets child `index`, keeping its last status among the tombstones.
    fn remove_index(&mut self, index: usize) {
        let child = self.children.remove(index);
        self.watch_dirty |= !child.spec.requires.is_empty();
        let mut status = self.status_at(&child, self.created);
        status.state = ServiceState::Deleted;
        (status.waiting_for, status.restart_in_ms, status.failure) = (None, None, None);
        (status.pid, status.started_at_unix_ms, status.uptime_ms) = (None, None, None);
        status.restarts_last_hour = 0;
        let mut metrics = self.metrics_of(&child);
        (metrics.state, metrics.started_at_unix_ms) = (ServiceState::Deleted, None);
        tracing::info!(id = %child.spec.id, "child deleted");
        self.tombstones.retain(|(t, _)| t.id != status.id);
        if self.tombstones.len() >= TOMBSTONES {
            self.tombstones.pop_front();
        }
        self.tombstones.push_back((status, metrics));
    }

    fn is_running(&self, id: &str) -> bool {
        self.get(id)
            .is_some_and(|c| matches!(c.state, State::Running { .. }))
    }

    fn index(&self, id: &str) -> Option<usize> {
        self.children.iter().position(|c| c.spec.id == id)
    }

    fn get(&self, id: &str) -> Option<&Child> {
        self.children.iter().find(|c| c.spec.id == id)
    }

    fn get_mut(&mut self, id: &str) -> Option<&mut Child> {
        self.children.iter_mut().find(|c| c.spec.id == id)
    }
}

/// What [`SupervisorCore::plan_reload`] decided.
#[derive(Debug, Default)]
pub struct ReloadPlan {
    /// What the reload does, by id (its `needs_restart` is left to the caller).
    pub report: ReloadReport,
    /// Children to stop and forget first (removed, changed, failed entries to refresh).
    pub retire: Vec<String>,
    /// Specs to add then (changed and added), in start order, as configured (not merged).
    pub add: Vec<ChildSpec>,
    /// Broken manifests to list as failed children.
    pub add_failed: Vec<(ChildSpec, String)>,
    /// The ids that come from configuration after the reload.
    pub configured: Vec<String>,
}

fn kind_of(spec: &ChildSpec) -> &'static str {
    match spec.start {
        ChildStart::Process(_) => "process",
        ChildStart::Actor(_) => "actor",
    }
}

/// The plan fields of director's reports, with the restart window.
struct ReportFields {
    plan: String,
    plan_length: usize,
    cycles: u64,
    cycles_in_period: Option<u64>,
    count: Count,
    period_ms: u64,
    restarts: u64,
}

impl ReportFields {
    fn of(child: &Child, now: Instant) -> Self {
        ReportFields {
            plan: child.spec.plan.to_string(),
            plan_length: child.spec.plan.0.len(),
            cycles: child.counters.cycles,
            cycles_in_period: child.counters.cycles_in_period(child.spec.intensity(), now),
            count: child.spec.count,
            period_ms: u64::try_from(child.spec.period.as_millis()).unwrap_or(u64::MAX),
            restarts: child.counters.restarts,
        }
    }
}

/// A child's state as operators see it.
fn service_state(child: &Child) -> ServiceState {
    match &child.state {
        State::Pending | State::Restarting { .. } | State::Waiting => ServiceState::Waiting,
        State::Starting { .. } => ServiceState::Starting,
        State::Running { .. } if child.spec.ready.is_some() => ServiceState::Ready,
        State::Running { .. } => ServiceState::Running,
        State::Stopping { .. } => ServiceState::Stopping,
        State::Failed(_) | State::Exhausted(_) | State::Unmet(_) => ServiceState::Failed,
        State::AwaitingRequirements { .. } => ServiceState::WaitingForRequirements,
    }
}

/// When the current run started, if one runs.
fn run_since(state: &State) -> Option<Instant> {
    match state {
        State::Starting { since, .. }
        | State::Running { since, .. }
        | State::Stopping { since, .. } => Some(*since),
        _ => None,
    }
}

fn child_pid(state: &State) -> Option<u32> {
    match state {
        State::Starting { pid, .. } | State::Running { pid, .. } | State::Stopping { pid, .. } => {
            *pid
        }
        _ => None,
    }
}

fn status_of(state: &State) -> ChildStatus {
    match state {
        State::Pending => ChildStatus::Pending,
        State::Starting { .. } => ChildStatus::Starting,
        State::Running { .. } => ChildStatus::Running,
        State::Restarting { .. } => ChildStatus::Restarting,
        State::Waiting => ChildStatus::Waiting,
        State::Stopping { .. } => ChildStatus::Stopping,
        State::Failed(reason) | State::Exhausted(reason) | State::Unmet(reason) => {
            ChildStatus::Failed(reason.clone())
        }
        State::AwaitingRequirements { .. } => ChildStatus::WaitingForRequirements(Vec::new()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::plan::PlanElement;
    use crate::spec::ReadyCheck;

    /// A fake clock: a fixed origin plus a settable offset.
    struct Clock(Instant, Duration);

    impl Clock {
        fn new() -> Self {
            Clock(Instant::now(), Duration::ZERO)
        }
        fn now(&self) -> Instant {
            self.0 + self.1
        }
        fn advance(&mut self, ms: u64) {
            self.1 += Duration::from_millis(ms);
        }
    }

    fn spec(id: &str, plan: &str) -> ChildSpec {
        ChildSpec::process(id, "/bin/true").with_plan(serde_json::from_str(plan).unwrap())
    }

    fn started(commands: &[Command]) -> Vec<(String, u64)> {
        commands
            .iter()
            .filter_map(|c| match c {
                Command::Start { id, generation } => Some((id.clone(), *generation)),
                _ => None,
            })
            .collect()
    }

    fn status(core: &SupervisorCore, id: &str) -> Option<ChildStatus> {
        core.which_children()
            .into_iter()
            .find(|c| c.id == id)
            .map(|c| c.status)
    }

    /// Starts `spec` alone and returns the core and the running generation.
    fn one(spec: ChildSpec, clock: &Clock) -> (SupervisorCore, u64) {
        let mut core = SupervisorCore::new(DefaultSpec::default(), 10, clock.now());
        let id = spec.id.clone();
        core.add(spec).unwrap();
        let gens = started(&core.start_all(clock.now()));
        assert_eq!(gens.len(), 1);
        core.on_spawned(&id, gens[0].1, Some(100), clock.now());
        assert_eq!(status(&core, &id), Some(ChildStatus::Running));
        (core, gens[0].1)
    }

    #[test]
    fn a_crash_restarts_with_a_new_generation_and_stale_events_are_ignored() {
        let mut clock = Clock::new();
        let (mut core, g1) = one(
            spec("a", r#"["restart"]"#).with_count(Count::Infinity),
            &clock,
        );
        clock.advance(100);
        let commands = core.on_exit("a", g1, ExitReason::Signaled(9), clock.now());
        let g2 = started(&commands)[0].1;
        assert!(g2 > g1);
        // The same exit reported twice, or for the old generation, changes nothing.
        assert!(core
            .on_exit("a", g1, ExitReason::Signaled(9), clock.now())
            .is_empty());
        assert!(core.on_spawned("a", g1, Some(5), clock.now()).is_empty());
        core.on_spawned("a", g2, Some(101), clock.now());
        assert_eq!(core.get_pid("a"), Ok(101));
        assert_eq!(core.which_children()[0].restarts, 1);
    }

    #[test]
    fn restart_after_arms_a_timer_and_only_its_generation_restarts() {
        let mut clock = Clock::new();
        let (mut core, g1) = one(spec("a", r#"[{"restart_after_ms": 500}]"#), &clock);
        let commands = core.on_exit("a", g1, ExitReason::Exited(1), clock.now());
        let Command::ArmRestart {
            generation, delay, ..
        } = commands[0].clone()
        else {
            panic!("{commands:?}")
        };
        assert_eq!(delay, Duration::from_millis(500));
        assert_eq!(status(&core, "a"), Some(ChildStatus::Restarting));
        assert_eq!(
            core.restart_child("a", clock.now()),
            Err(ChildError::Restarting("a".into()))
        );
        assert_eq!(
            core.delete_child("a"),
            Err(ChildError::Restarting("a".into()))
        );
        clock.advance(500);
        assert!(core
            .on_restart_timer("a", generation + 1, clock.now())
            .is_empty());
        assert_eq!(
            started(&core.on_restart_timer("a", generation, clock.now())).len(),
            1
        );
    }

    #[test]
    fn delete_forgets_and_wait_needs_restart_child() {
        let clock = Clock::new();
        let (mut core, g) = one(spec("a", r#"["delete"]"#), &clock);
        core.on_exit("a", g, ExitReason::Exited(2), clock.now());
        assert_eq!(status(&core, "a"), None);

        let (mut core, g) = one(spec("b", r#"["wait", "restart"]"#), &clock);
        assert!(core
            .on_exit("b", g, ExitReason::Exited(2), clock.now())
            .is_empty());
        assert_eq!(status(&core, "b"), Some(ChildStatus::Waiting));
        assert_eq!(core.get_pid("b"), Err(ChildError::NotFound("b".into())));
        let g2 = started(&core.restart_child("b", clock.now()).unwrap())[0].1;
        core.on_spawned("b", g2, Some(7), clock.now());
        assert_eq!(
            core.restart_child("b", clock.now()),
            Err(ChildError::Running("b".into()))
        );
    }

    #[test]
    fn escalation_is_reported_once_and_stops_all_decisions() {
        // A nested supervisor (the core's default): a used-up plan escalates.
        let mut clock = Clock::new();
        let mut core = SupervisorCore::new(DefaultSpec::default(), 10, clock.now());
        core.add(spec("a", r#"["restart"]"#).with_count(Count::Finite(1)))
            .unwrap();
        core.add(spec("b", r#"["restart"]"#).with_count(Count::Infinity))
            .unwrap();
        let gens = started(&core.start_all(clock.now()));
        for (id, g) in &gens {
            core.on_spawned(id, *g, Some(1), clock.now());
        }
        clock.advance(100);
        let ga = started(&core.on_exit("a", gens[0].1, ExitReason::Exited(1), clock.now()))[0].1;
        core.on_spawned("a", ga, Some(2), clock.now());
        let commands = core.on_exit("a", ga, ExitReason::Exited(4), clock.now());
        let [Command::Escalate { reason }] = commands.as_slice() else {
            panic!("{commands:?}")
        };
        assert!(reason.contains("child `a`"), "{reason}");
        assert!(reason.contains("reached max restart plan"), "{reason}");
        assert!(reason.contains("exit status 4"), "{reason}");
        assert!(core.has_escalated());
        // Another crash after escalation is not restarted.
        assert!(
            started(&core.on_exit("b", gens[1].1, ExitReason::Exited(1), clock.now())).is_empty()
        );
        assert_eq!(
            core.start_child(spec("c", "[]"), clock.now()).unwrap_err(),
            ChildError::Stopping
        );
    }

    #[test]
    fn terminate_keeps_the_spec_and_its_exit_is_not_a_crash() {
        let clock = Clock::new();
        let (mut core, g) = one(spec("a", "[]"), &clock);
        let commands = core.terminate_child("a").unwrap();
        assert_eq!(
            commands,
            [Command::Stop {
                id: "a".into(),
                generation: g,
                timeout: Duration::from_millis(1000)
            }]
        );
        assert_eq!(core.delete_child("a"), Err(ChildError::Running("a".into())));
        // An empty plan would escalate on a crash; a requested stop is no crash.
        assert!(core
            .on_exit("a", g, ExitReason::Signaled(15), clock.now())
            .is_empty());
        assert_eq!(status(&core, "a"), Some(ChildStatus::Waiting));
        assert!(core.get_plan("a").is_ok());
        core.delete_child("a").unwrap();
        assert_eq!(
            core.terminate_child("a"),
            Err(ChildError::NotFound("a".into()))
        );
    }

    #[test]
    fn start_child_reports_already_started_and_already_present() {
        let clock = Clock::new();
        let (mut core, g) = one(spec("a", r#"["wait"]"#), &clock);
        assert_eq!(
            core.start_child(spec("a", "[]"), clock.now()).unwrap_err(),
            ChildError::AlreadyStarted("a".into())
        );
        core.on_exit("a", g, ExitReason::Exited(1), clock.now());
        assert_eq!(
            core.start_child(spec("a", "[]"), clock.now()).unwrap_err(),
            ChildError::AlreadyPresent("a".into())
        );
        assert!(matches!(
            core.start_child(spec("bad id", "[]"), clock.now()),
            Err(ChildError::Invalid(_))
        ));
    }

    #[test]
    fn change_plan_resets_the_counters() {
        let mut clock = Clock::new();
        let (mut core, g) = one(
            spec("a", r#"["restart"]"#).with_count(Count::Finite(1)),
            &clock,
        );
        clock.advance(100);
        let g2 = started(&core.on_exit("a", g, ExitReason::Exited(1), clock.now()))[0].1;
        core.on_spawned("a", g2, Some(1), clock.now());
        // Count 1 is used up: the next crash would escalate. A new plan starts afresh.
        core.change_plan("a", serde_json::from_str(r#"["restart"]"#).unwrap(), None)
            .unwrap();
        assert_eq!(core.which_children()[0].restarts, 0);
        clock.advance(100);
        let commands = core.on_exit("a", g2, ExitReason::Exited(1), clock.now());
        assert_eq!(started(&commands).len(), 1, "{commands:?}");
        assert_eq!(
            core.change_plan("zz", Plan(vec![]), None),
            Err(ChildError::NotFound("zz".into()))
        );
    }

    #[test]
    fn after_orders_starts_and_readiness_gates_running() {
        let clock = Clock::new();
        let mut core = SupervisorCore::new(DefaultSpec::default(), 10, clock.now());
        let mut db = spec("db", "[]");
        db.ready = Some(ReadyCheck::Tcp("127.0.0.1:1".into()));
        let mut app = spec("app", "[]");
        app.after = vec!["db".into()];
        core.add(db).unwrap();
        core.add(app).unwrap();
        let mut bad = spec("web", "[]");
        bad.after = vec!["nope".into()];
        assert!(matches!(core.add(bad), Err(ChildError::Invalid(_))));
        let first = started(&core.start_all(clock.now()));
        assert_eq!(first, [("db".to_string(), first[0].1)]);
        assert_eq!(status(&core, "app"), Some(ChildStatus::Pending));
        assert!(started(&core.on_spawned("db", first[0].1, Some(1), clock.now())).is_empty());
        assert_eq!(status(&core, "db"), Some(ChildStatus::Starting));
        let next = started(&core.on_ready("db", first[0].1, clock.now()));
        assert_eq!(next[0].0, "app");
    }

    #[test]
    fn a_start_timeout_stops_the_child_then_applies_its_plan() {
        let clock = Clock::new();
        let mut s = spec("a", r#"["wait"]"#);
        s.ready = Some(ReadyCheck::Tcp("127.0.0.1:1".into()));
        let mut core = SupervisorCore::new(DefaultSpec::default(), 10, clock.now());
        core.add(s).unwrap();
        let g = started(&core.start_all(clock.now()))[0].1;
        core.on_spawned("a", g, Some(3), clock.now());
        let stop = core.on_start_timeout("a", g, clock.now());
        assert!(matches!(stop[0], Command::Stop { .. }));
        core.on_exit("a", g, ExitReason::Signaled(15), clock.now());
        assert_eq!(status(&core, "a"), Some(ChildStatus::Waiting));
        assert_eq!(core.which_children()[0].restarts, 0);
    }

    #[test]
    fn shutdown_stops_dependents_first_then_completes() {
        let clock = Clock::new();
        let mut core = SupervisorCore::new(DefaultSpec::default(), 10, clock.now());
        core.add(spec("db", "[]")).unwrap();
        let mut app = spec("app", "[]");
        app.after = vec!["db".into()];
        core.add(app).unwrap();
        let gdb = started(&core.start_all(clock.now()))[0].1;
        let gapp = started(&core.on_spawned("db", gdb, Some(1), clock.now()))[0].1;
        core.on_spawned("app", gapp, Some(2), clock.now());
        let first = core.shutdown();
        assert_eq!(
            first,
            [Command::Stop {
                id: "app".into(),
                generation: gapp,
                timeout: Duration::from_millis(1000)
            }]
        );
        let second = core.on_exit("app", gapp, ExitReason::Signaled(15), clock.now());
        assert!(
            matches!(&second[..], [Command::Stop { id, .. }] if id == "db"),
            "{second:?}"
        );
        let last = core.on_exit("db", gdb, ExitReason::Exited(0), clock.now());
        assert_eq!(last, [Command::ShutdownComplete]);
    }

    #[test]
    fn shutdown_with_nothing_running_completes_at_once() {
        let clock = Clock::new();
        let mut core = SupervisorCore::new(DefaultSpec::default(), 10, clock.now());
        assert_eq!(core.shutdown(), [Command::ShutdownComplete]);
    }

    #[test]
    fn failed_children_are_listed_and_cannot_restart() {
        let clock = Clock::new();
        let mut core = SupervisorCore::new(DefaultSpec::default(), 10, clock.now());
        core.add_failed(spec("m", "[]"), "manifest.json: command: missing")
            .unwrap();
        assert!(core.start_all(clock.now()).is_empty());
        assert!(matches!(
            core.restart_child("m", clock.now()),
            Err(ChildError::Failed(_, _))
        ));
        assert_eq!(
            core.count_children(),
            ChildCounts {
                specs: 1,
                active: 0,
                supervisors: 0,
                workers: 1
            }
        );
    }

    #[test]
    fn the_children_table_is_bounded() {
        let clock = Clock::new();
        let mut core = SupervisorCore::new(DefaultSpec::default(), 2, clock.now());
        core.add(spec("a", "[]")).unwrap();
        core.add(spec("b", "[]")).unwrap();
        assert_eq!(core.add(spec("c", "[]")), Err(ChildError::TooMany(2)));
    }

    #[test]
    fn appended_children_get_the_default_merged_in() {
        let clock = Clock::new();
        let default = DefaultSpec {
            plan: Plan(vec![PlanElement::Wait]),
            count: Count::Finite(2),
            ..DefaultSpec::default()
        };
        let mut core = SupervisorCore::new(default, 10, clock.now());
        let mut child = spec("a", r#"["restart"]"#);
        child.append = true;
        core.add(child).unwrap();
        assert_eq!(core.get_plan("a").unwrap().to_string(), "[wait, restart]");
        // 2 + the child's own 5.
        assert_eq!(core.spec("a").unwrap().count, Count::Finite(7));
    }

    fn service(core: &SupervisorCore, id: &str, clock: &Clock) -> ServiceStatus {
        core.service_status(id, clock.now()).unwrap()
    }

    fn stops(commands: &[Command]) -> Vec<(String, u64)> {
        commands
            .iter()
            .filter_map(|c| match c {
                Command::Stop { id, generation, .. } => Some((id.clone(), *generation)),
                _ => None,
            })
            .collect()
    }

    #[test]
    fn an_operator_restart_is_no_crash_and_starts_a_new_generation() {
        let mut clock = Clock::new();
        let (mut core, g1) = one(spec("a", r#"["restart", "wait"]"#), &clock);
        clock.advance(100);
        // One crash: one restart decided, the plan moved on by one element.
        let g2 = started(&core.on_exit("a", g1, ExitReason::Exited(1), clock.now()))[0].1;
        core.on_spawned("a", g2, Some(200), clock.now());
        let before = service(&core, "a", &clock);
        assert_eq!(
            (before.restarts, before.plan_position, before.cycle),
            (1, 1, 0)
        );

        let (commands, g3) = core.restart_service("a", clock.now()).unwrap();
        assert_eq!(stops(&commands), [("a".to_string(), g2)]);
        assert!(g3 > g2);
        assert!(core.awaits_start("a", g3));
        assert_eq!(service(&core, "a", &clock).state, ServiceState::Stopping);
        // Asked again while it stops: the same start is awaited, nothing more is done.
        assert_eq!(
            core.restart_service("a", clock.now()).unwrap(),
            (vec![], g3)
        );
        // Its SIGTERM exit starts the reserved generation at once; the plan is untouched.
        let commands = core.on_exit("a", g2, ExitReason::Signaled(15), clock.now());
        assert_eq!(started(&commands), [("a".to_string(), g3)]);
        core.on_spawned("a", g3, Some(300), clock.now());
        let after = service(&core, "a", &clock);
        assert_eq!(after.state, ServiceState::Running);
        assert_eq!((after.pid, after.generation), (Some(300), g3));
        assert_eq!(
            (after.restarts, after.plan_position, after.cycle),
            (1, 1, 0)
        );
        let exit = after.last_exit.unwrap();
        assert!(exit.requested);
        assert_eq!(exit.signal_name.as_deref(), Some("SIGTERM"));
        assert!(!core.awaits_start("a", g3));
    }

    #[test]
    fn an_operator_restart_of_a_child_that_is_down_starts_it_now() {
        let clock = Clock::new();
        // A restart timer is cancelled: its firing later changes nothing.
        let (mut core, g1) = one(spec("r", r#"[{"restart_after_ms": 500}]"#), &clock);
        let commands = core.on_exit("r", g1, ExitReason::Exited(1), clock.now());
        let [Command::ArmRestart {
            generation: timer, ..
        }] = commands[..]
        else {
            panic!("{commands:?}")
        };
        let (commands, g2) = core.restart_service("r", clock.now()).unwrap();
        assert_eq!(started(&commands), [("r".to_string(), g2)]);
        assert!(core.on_restart_timer("r", timer, clock.now()).is_empty());

        // Waiting (plan wait), and waiting after terminate_child.
        let (mut core, g1) = one(spec("w", r#"["wait"]"#), &clock);
        core.on_exit("w", g1, ExitReason::Exited(1), clock.now());
        let (commands, g2) = core.restart_service("w", clock.now()).unwrap();
        assert_eq!(started(&commands), [("w".to_string(), g2)]);
        core.on_spawned("w", g2, Some(5), clock.now());
        core.terminate_child("w").unwrap();
        // Being stopped: started once the stop completes.
        let (commands, g3) = core.restart_service("w", clock.now()).unwrap();
        assert!(commands.is_empty());
        let commands = core.on_exit("w", g2, ExitReason::Signaled(15), clock.now());
        assert_eq!(started(&commands), [("w".to_string(), g3)]);

        // Failed, unknown, and during shutdown.
        let mut core = SupervisorCore::new(DefaultSpec::default(), 10, clock.now());
        core.add_failed(spec("m", "[]"), "broken").unwrap();
        assert_eq!(
            core.restart_service("m", clock.now()).unwrap_err(),
            ChildError::Failed("m".into(), "broken".into())
        );
        assert_eq!(
            core.restart_service("x", clock.now()).unwrap_err(),
            ChildError::NotFound("x".into())
        );
        core.shutdown();
        assert_eq!(
            core.restart_service("m", clock.now()).unwrap_err(),
            ChildError::Stopping
        );
    }

    #[test]
    fn a_restart_interrupted_by_terminate_or_shutdown_does_not_start() {
        let clock = Clock::new();
        let (mut core, g1) = one(spec("a", "[]"), &clock);
        let (_, g2) = core.restart_service("a", clock.now()).unwrap();
        // terminate_child wins: the child stays down.
        assert!(core.terminate_child("a").unwrap().is_empty());
        assert!(started(&core.on_exit("a", g1, ExitReason::Signaled(15), clock.now())).is_empty());
        assert!(!core.awaits_start("a", g2));
        assert_eq!(
            service(&core, "a", &clock).waiting_for.as_deref(),
            Some("start")
        );

        let (mut core, g1) = one(spec("b", "[]"), &clock);
        let (_, g2) = core.restart_service("b", clock.now()).unwrap();
        assert!(core.shutdown().is_empty());
        let last = core.on_exit("b", g1, ExitReason::Signaled(15), clock.now());
        assert_eq!(last, [Command::ShutdownComplete]);
        assert!(!core.awaits_start("b", g2));
    }

    #[test]
    fn statuses_show_each_state_in_plain_words() {
        let mut clock = Clock::new();
        let mut core =
            SupervisorCore::new(DefaultSpec::default(), 10, clock.now()).with_wall_clock(1_000_000);
        let mut db = spec("db", "[]");
        db.ready = Some(ReadyCheck::Tcp("127.0.0.1:1".into()));
        let mut app = spec("app", "[]");
        app.after = vec!["db".into()];
        core.add(db).unwrap();
        core.add(app).unwrap();
        core.add(spec("w", r#"["wait", "restart"]"#)).unwrap();
        core.add(spec("r", r#"[{"restart_after_ms": 500}]"#).with_count(Count::Finite(2)))
            .unwrap();
        core.add_failed(spec("m", "[]"), "manifest.json: field `command`: missing")
            .unwrap();
        let first = started(&core.start_all(clock.now()));
        let generation = |id: &str| first.iter().find(|(i, _)| i == id).unwrap().1;
        let app = service(&core, "app", &clock);
        assert_eq!(
            (app.state, app.waiting_for),
            (ServiceState::Waiting, Some("after".to_string()))
        );
        assert_eq!((app.generation, app.pid, app.uptime_ms), (0, None, None));
        let db = service(&core, "db", &clock);
        assert_eq!((db.state, db.pid), (ServiceState::Starting, None));
        assert_eq!(db.started_at_unix_ms, Some(1_000_000));
        clock.advance(40);
        core.on_spawned("db", generation("db"), Some(11), clock.now());
        core.on_spawned("w", generation("w"), Some(12), clock.now());
        core.on_spawned("r", generation("r"), Some(13), clock.now());
        let db = service(&core, "db", &clock);
        assert_eq!(
            (db.state, db.pid, db.uptime_ms),
            (ServiceState::Starting, Some(11), Some(40))
        );
        let gapp = started(&core.on_ready("db", generation("db"), clock.now()))[0].1;
        assert_eq!(service(&core, "db", &clock).state, ServiceState::Ready);
        core.on_spawned("app", gapp, Some(14), clock.now());
        let app = service(&core, "app", &clock);
        assert_eq!((app.state, app.generation), (ServiceState::Running, gapp));
        assert_eq!(app.started_at_unix_ms, Some(1_000_040));
        assert_eq!(app.kind, "process");

        clock.advance(10);
        core.on_exit("w", generation("w"), ExitReason::Exited(3), clock.now());
        let w = service(&core, "w", &clock);
        assert_eq!(
            (w.state, w.waiting_for),
            (ServiceState::Waiting, Some("start".to_string()))
        );
        assert_eq!((w.plan_position, w.plan_length, w.cycle), (1, 2, 0));
        assert_eq!(w.plan, "[wait, restart]");
        assert_eq!(w.generation, generation("w"));
        let exit = w.last_exit.unwrap();
        assert_eq!(exit.reason, "exit status 3");
        assert_eq!(
            (exit.status, exit.signal, exit.requested),
            (Some(3), None, false)
        );
        assert_eq!(exit.at_unix_ms, 1_000_050);

        core.on_exit("r", generation("r"), ExitReason::Signaled(9), clock.now());
        clock.advance(200);
        let r = service(&core, "r", &clock);
        assert_eq!(
            (r.state, r.waiting_for),
            (ServiceState::Waiting, Some("restart".to_string()))
        );
        assert_eq!(r.restart_in_ms, Some(300));
        assert_eq!((r.restarts, r.count.as_str()), (1, "2"));
        // Its one element is used: the next exit starts the second cycle.
        assert_eq!((r.plan_position, r.cycle), (0, 1));
        assert_eq!(r.last_exit.unwrap().signal_name.as_deref(), Some("SIGKILL"));

        let m = service(&core, "m", &clock);
        assert_eq!(m.state, ServiceState::Failed);
        assert!(m.failure.unwrap().contains("command"));

        core.terminate_child("app").unwrap();
        assert_eq!(service(&core, "app", &clock).state, ServiceState::Stopping);
        let all: Vec<String> = core
            .service_statuses(clock.now())
            .into_iter()
            .map(|s| s.id)
            .collect();
        assert_eq!(all, ["db", "app", "w", "r", "m"]);
        let spec = &service(&core, "db", &clock).spec;
        assert_eq!(spec["ready"]["tcp"], "127.0.0.1:1");
        assert_eq!(spec["command"], "/bin/true");
    }

    #[test]
    fn metrics_count_restarts_and_exits_by_kind_and_never_reset() {
        let mut clock = Clock::new();
        let (mut core, g1) = one(
            spec("a", r#"["restart"]"#).with_count(Count::Infinity),
            &clock,
        );
        let metrics = |core: &SupervisorCore| core.service_metrics().remove(0);
        let m = metrics(&core);
        assert_eq!(
            (m.state, m.restarts_total, m.last_exit_code),
            (ServiceState::Running, 0, None)
        );
        assert_eq!(m.started_at_unix_ms, Some(core.unix_ms(clock.now())));
        clock.advance(1000);
        // A crash: a plan restart and a `killed` exit (128 + 9).
        let g2 = started(&core.on_exit("a", g1, ExitReason::Signaled(9), clock.now()))[0].1;
        core.on_spawned("a", g2, Some(101), clock.now());
        let m = metrics(&core);
        assert_eq!((m.restarts_total, m.last_exit_code), (1, Some(137)));
        assert_eq!(m.exits.get(ExitKind::Killed), 1);
        assert_eq!(service(&core, "a", &clock).restarts_last_hour, 1);
        // An operator's restart: a `requested` exit, no plan restart.
        clock.advance(1000);
        let (commands, g3) = core.restart_service("a", clock.now()).unwrap();
        assert_eq!(stops(&commands), [("a".to_string(), g2)]);
        core.on_exit("a", g2, ExitReason::Exited(0), clock.now());
        core.on_spawned("a", g3, Some(102), clock.now());
        let m = metrics(&core);
        assert_eq!(m.restarts_total, 1);
        assert_eq!(
            (
                m.exits.get(ExitKind::Requested),
                m.exits.get(ExitKind::Exited)
            ),
            (1, 0)
        );
        assert_eq!(m.last_exit_code, Some(0));
        // A plain exit with a status.
        clock.advance(1000);
        let g4 = started(&core.on_exit("a", g3, ExitReason::Exited(3), clock.now()))[0].1;
        let m = metrics(&core);
        assert_eq!((m.restarts_total, m.exits.get(ExitKind::Exited)), (2, 1));
        assert_eq!(m.last_exit_code, Some(3));
        // A new plan resets the plan's counters, not the metrics'.
        core.change_plan("a", Plan(vec![PlanElement::Restart]), None)
            .unwrap();
        assert_eq!(service(&core, "a", &clock).restarts, 0);
        assert_eq!(metrics(&core).restarts_total, 2);
        // Restarts older than an hour leave `restarts_last_hour`.
        core.on_spawned("a", g4, Some(103), clock.now());
        assert_eq!(service(&core, "a", &clock).restarts_last_hour, 2);
        clock.advance(3600 * 1000 - 500);
        assert_eq!(service(&core, "a", &clock).restarts_last_hour, 1);
        clock.advance(1000);
        assert_eq!(service(&core, "a", &clock).restarts_last_hour, 0);
        assert_eq!(metrics(&core).restarts_total, 2);
        // A deleted child keeps its counts among the tombstones.
        core.terminate_child("a").unwrap();
        core.on_exit("a", g4, ExitReason::Signaled(15), clock.now());
        core.delete_child("a").unwrap();
        let m = metrics(&core);
        assert_eq!((m.state, m.restarts_total), (ServiceState::Deleted, 2));
        assert_eq!(m.exits.get(ExitKind::Requested), 2);
        assert_eq!(m.started_at_unix_ms, None);
    }

    #[test]
    fn the_restart_record_is_bounded() {
        let mut clock = Clock::new();
        let (mut core, mut g) = one(
            spec("a", r#"["restart"]"#)
                .with_count(Count::Infinity)
                .with_min_restart_interval(Duration::ZERO),
            &clock,
        );
        for _ in 0..RESTART_RECORD + 10 {
            clock.advance(1);
            g = started(&core.on_exit("a", g, ExitReason::Exited(1), clock.now()))[0].1;
            core.on_spawned("a", g, Some(100), clock.now());
        }
        let a = service(&core, "a", &clock);
        assert_eq!(a.restarts_last_hour, RESTART_RECORD as u64);
        assert_eq!(
            core.service_metrics()[0].restarts_total,
            RESTART_RECORD as u64 + 10
        );
    }

    #[test]
    fn deleted_children_leave_a_bounded_list_of_tombstones() {
        let clock = Clock::new();
        let (mut core, g) = one(spec("d", r#"["delete"]"#), &clock);
        core.on_exit("d", g, ExitReason::Exited(0), clock.now());
        let d = service(&core, "d", &clock);
        assert_eq!(d.state, ServiceState::Deleted);
        assert_eq!((d.generation, d.pid, d.waiting_for), (g, None, None));
        assert_eq!(d.last_exit.unwrap().reason, "exit status 0");

        let mut core = SupervisorCore::new(DefaultSpec::default(), 10, clock.now());
        for i in 0..TOMBSTONES + 6 {
            let id = format!("c{i}");
            core.add(spec(&id, "[]")).unwrap();
            core.delete_child(&id).unwrap();
        }
        let all = core.service_statuses(clock.now());
        assert_eq!(all.len(), TOMBSTONES);
        assert_eq!(all[0].id, "c6");
        assert!(all.iter().all(|s| s.state == ServiceState::Deleted));
        assert_eq!(
            core.service_status("c5", clock.now()).unwrap_err(),
            ChildError::NotFound("c5".into())
        );
        // Adding the id again takes its tombstone away.
        core.add(spec("c69", "[]")).unwrap();
        let all = core.service_statuses(clock.now());
        assert_eq!(all.len(), TOMBSTONES);
        assert_eq!(all[0].id, "c69");
        assert_eq!(all[0].state, ServiceState::Waiting);
    }

    #[derive(Default)]
    struct Idle;

    impl actix::Actor for Idle {
        type Context = actix::Context<Self>;
    }

    impl actix::Handler<troupe_core::Shutdown> for Idle {
        type Result = ();
        fn handle(&mut self, _: troupe_core::Shutdown, _: &mut Self::Context) {}
    }

    #[test]
    fn signals_go_only_to_running_processes() {
        let clock = Clock::new();
        let (mut core, g) = one(spec("p", r#"["wait"]"#), &clock);
        core.add(ChildSpec::actor(
            "act",
            crate::ActorFactory::new(Idle::default),
        ))
        .unwrap();
        assert_eq!(core.signal_target("p", libc::SIGUSR1), Ok(100));
        assert_eq!(
            core.signal_target("zz", 15),
            Err(ChildError::NotFound("zz".into()))
        );
        for bad in [0, -3, libc::SIGRTMAX() + 1] {
            let err = core.signal_target("p", bad).unwrap_err();
            assert!(
                matches!(&err, ChildError::Invalid(m) if m.starts_with("signal:")),
                "{err}"
            );
            assert_eq!(err.rule(), "invalid");
        }
        let err = core.signal_target("act", 15).unwrap_err();
        assert_eq!(err, ChildError::NotAProcess("act".into()));
        assert_eq!(
            err.to_string(),
            "child `act` is an actor; only process children take signals"
        );
        core.on_exit("p", g, ExitReason::Exited(1), clock.now());
        let err = core.signal_target("p", 15).unwrap_err();
        assert_eq!(err, ChildError::NotRunning("p".into()));
        assert_eq!(err.to_string(), "child `p` is not running");
        assert_eq!((err.rule(), err.child()), ("not_running", Some("p")));
        // Started but not spawned yet: no pid to signal.
        let g2 = started(&core.restart_child("p", clock.now()).unwrap())[0].1;
        assert!(core.signal_target("p", 15).is_err());
        core.on_spawned("p", g2, Some(101), clock.now());
        assert_eq!(core.signal_target("p", 15), Ok(101));
    }

    #[test]
    fn every_error_names_its_rule_and_child() {
        let cases = [
            (
                ChildError::AlreadyStarted("a".into()),
                "already_started",
                Some("a"),
            ),
            (
                ChildError::AlreadyPresent("a".into()),
                "already_present",
                Some("a"),
            ),
            (ChildError::Running("a".into()), "running", Some("a")),
            (ChildError::Restarting("a".into()), "restarting", Some("a")),
            (ChildError::NotFound("a".into()), "not_found", Some("a")),
            (
                ChildError::Failed("a".into(), "x".into()),
                "failed",
                Some("a"),
            ),
            (ChildError::Invalid("x".into()), "invalid", None),
            (ChildError::TooMany(3), "too_many", None),
            (ChildError::Stopping, "stopping", None),
            (ChildError::NotRunning("a".into()), "not_running", Some("a")),
            (
                ChildError::NotAProcess("a".into()),
                "not_a_process",
                Some("a"),
            ),
        ];
        for (error, rule, child) in cases {
            assert_eq!((error.rule(), error.child()), (rule, child), "{error}");
        }
    }

    /// A config service as the reload gets it: `sh -c script`, default plan.
    fn configured(id: &str, script: &str) -> ChildSpec {
        ChildSpec::process(id, "sh").with_args(["-c", script])
    }

    #[test]
    fn a_reload_adds_removes_restarts_changed_and_leaves_the_rest() {
        let mut clock = Clock::new();
        let mut core = SupervisorCore::new(DefaultSpec::default(), 20, clock.now());
        let mut appender = configured("e", "x");
        appender.append = true;
        for spec in [
            configured("a", "a"),
            configured("b", "b"),
            configured("c", "c"),
            appender.clone(),
        ] {
            core.add(spec).unwrap();
        }
        core.add(configured("api", "mine")).unwrap();
        let gens = started(&core.start_all(clock.now()));
        for (i, (id, g)) in gens.iter().enumerate() {
            core.on_spawned(id, *g, Some(10 + i as u32), clock.now());
        }
        let configured_ids: Vec<String> = ["a", "b", "c", "e"].map(String::from).to_vec();
        // a: same (a fresh default plan counts as the same); b: new args; c: gone; d: new;
        // e: same entry, but appends to a default that now has an argument; api: taken.
        let new_default = DefaultSpec {
            args: vec!["-x".into()],
            ..DefaultSpec::default()
        };
        let desired = vec![
            configured("a", "a"),
            configured("b", "b2"),
            configured("d", "d"),
            appender,
            configured("api", "theirs"),
        ];
        let broken = vec![(configured("m", ""), "m/manifest.json: broken".to_string())];
        let plan = core.plan_reload(&configured_ids, desired, broken, &new_default);
        let r = &plan.report;
        assert_eq!(r.added, ["d"]);
        assert_eq!(r.removed, ["c"]);
        assert_eq!(r.changed, ["b", "e"]);
        assert_eq!(r.unchanged, ["a"]);
        let failed: Vec<&str> = r.failed.iter().map(|f| f.id.as_str()).collect();
        assert_eq!(failed, ["api", "m"]);
        assert_eq!(plan.retire, ["b", "e", "c"]);
        let adds: Vec<&str> = plan.add.iter().map(|s| s.id.as_str()).collect();
        assert_eq!(adds, ["b", "d", "e"]);
        assert_eq!(plan.add_failed.len(), 1);
        assert_eq!(plan.configured, ["a", "b", "d", "e", "m"]);
        // With the old default, e is unchanged.
        let same_default = core.plan_reload(
            &configured_ids,
            vec![configured("e", "x")]
                .into_iter()
                .map(|mut s| {
                    s.append = true;
                    s
                })
                .collect(),
            vec![],
            &DefaultSpec::default(),
        );
        assert_eq!(same_default.report.unchanged, ["e"]);

        // Carry it out: the retired children stop (no crash, no plan) and are forgotten.
        core.change_default_spec(new_default);
        let mut stopping = Vec::new();
        for id in &plan.retire {
            stopping.extend(stops(&core.retire(id)));
        }
        assert_eq!(stopping.len(), 3);
        clock.advance(5);
        for (id, g) in &stopping {
            assert!(core
                .on_exit(id, *g, ExitReason::Signaled(15), clock.now())
                .is_empty());
        }
        for id in ["b", "c", "e"] {
            let gone = service(&core, id, &clock);
            assert_eq!(gone.state, ServiceState::Deleted);
            assert!(gone.last_exit.unwrap().requested);
        }
        for spec in plan.add {
            core.add(spec).unwrap();
        }
        let restarted: Vec<String> = started(&core.start_all(clock.now()))
            .into_iter()
            .map(|(id, _)| id)
            .collect();
        assert_eq!(restarted, ["b", "d", "e"]);
        assert_eq!(
            core.spec("e").unwrap().process_spec().unwrap().args,
            ["-x", "-c", "x"]
        );
        // a and api were not touched.
        assert_eq!(service(&core, "a", &clock).pid, Some(10));
        assert_eq!(service(&core, "api", &clock).pid, Some(14));
        let ids: Vec<String> = core
            .service_statuses(clock.now())
            .into_iter()
            .filter(|s| s.state != ServiceState::Deleted)
            .map(|s| s.id)
            .collect();
        assert_eq!(ids, ["a", "api", "b", "d", "e"]);
    }

    #[test]
    fn a_reload_forgets_children_that_are_down_at_once() {
        let clock = Clock::new();
        let mut core = SupervisorCore::new(DefaultSpec::default(), 10, clock.now());
        core.add(configured("w", "w")).unwrap();
        core.add_failed(configured("m", ""), "old reason").unwrap();
        let configured_ids = vec!["w".to_string(), "m".to_string()];
        // m is still broken, with a new reason; w is gone from the configuration.
        let plan = core.plan_reload(
            &configured_ids,
            vec![],
            vec![(configured("m", ""), "new reason".into())],
            &DefaultSpec::default(),
        );
        assert_eq!(plan.report.removed, ["w"]);
        assert_eq!(plan.retire, ["m", "w"]);
        for id in &plan.retire {
            assert!(core.retire(id).is_empty());
        }
        for (spec, reason) in plan.add_failed {
            core.add_failed(spec, reason).unwrap();
        }
        assert_eq!(
            service(&core, "m", &clock).failure.as_deref(),
            Some("new reason")
        );
        assert_eq!(service(&core, "w", &clock).state, ServiceState::Deleted);
        // A reload that names an id the plan deleted starts it again.
        let plan = core.plan_reload(
            &["w".to_string()],
            vec![configured("w", "w")],
            vec![],
            &DefaultSpec::default(),
        );
        assert_eq!(plan.report.added, ["w"]);
    }

    /// The node's own supervisor, with `specs` started and spawned (pids from 500).
    fn top(specs: Vec<ChildSpec>, clock: &Clock) -> (SupervisorCore, Vec<(String, u64)>) {
        let mut core = SupervisorCore::new(DefaultSpec::default(), 10, clock.now())
            .with_escalation_to_node(true);
        for spec in specs {
            core.add(spec).unwrap();
        }
        let gens = started(&core.start_all(clock.now()));
        for (i, (id, g)) in gens.iter().enumerate() {
            core.on_spawned(id, *g, Some(500 + i as u32), clock.now());
        }
        (core, gens)
    }

    /// Child `id`, generation `g`, exits with status 1 at the clock's time; a restart
    /// started at once is spawned (pid 900). The commands and the new generation.
    fn crash(
        core: &mut SupervisorCore,
        id: &str,
        g: u64,
        clock: &Clock,
    ) -> (Vec<Command>, Option<u64>) {
        let commands = core.on_exit(id, g, ExitReason::Exited(1), clock.now());
        let next = started(&commands).first().map(|(_, g)| *g);
        if let Some(next) = next {
            core.on_spawned(id, next, Some(900), clock.now());
        }
        (commands, next)
    }

    #[test]
    fn count_cycles_within_the_period_fail_a_top_level_child_and_the_node_keeps_running() {
        let mut clock = Clock::new();
        let (mut core, gens) = top(
            vec![
                spec("loop", r#"["restart"]"#),
                spec("other", r#"["restart"]"#),
            ],
            &clock,
        );
        let mut g = gens[0].1;
        // Count 5: five crashes are restarted (five cycles of the plan)...
        for n in 1..=5 {
            clock.advance(1_000);
            let (commands, next) = crash(&mut core, "loop", g, &clock);
            g = next.unwrap_or_else(|| panic!("crash {n}: {commands:?}"));
            let status = service(&core, "loop", &clock);
            assert_eq!(status.cycles_in_period, Some(n), "crash {n}");
        }
        // ...and the sixth within 60 s of the first finds the plan used up: failed, not
        // escalated.
        clock.advance(1_000);
        let (commands, next) = crash(&mut core, "loop", g, &clock);
        assert!(commands.is_empty(), "{commands:?}");
        assert_eq!(next, None);
        assert!(!core.has_escalated() && !core.is_stopping());
        let failed = service(&core, "loop", &clock);
        assert_eq!(failed.state, ServiceState::Failed);
        assert_eq!(
            failed.failure.as_deref(),
            Some("exhausted its restart plan: 5 cycles within 60s; last exit: exit status 1")
        );
        assert_eq!(failed.last_exit.unwrap().status, Some(1));
        assert_eq!((failed.restarts, failed.cycle), (5, 5));
        assert_eq!(failed.cycles_in_period, Some(5));
        assert_eq!(
            (failed.period_ms, failed.min_restart_interval_ms),
            (60_000, 100)
        );
        assert_eq!(failed.on_exhausted, OnExhausted::Fail);
        assert!(matches!(
            status(&core, "loop"),
            Some(ChildStatus::Failed(why)) if why.starts_with("exhausted its restart plan")
        ));
        // The other child runs on, and the supervisor still takes calls.
        let other = service(&core, "other", &clock);
        assert_eq!((other.state, other.pid), (ServiceState::Running, Some(501)));
        assert!(core
            .start_child(spec("new", "[]"), clock.now())
            .is_ok_and(|c| started(&c).len() == 1));
        // A stop is a no-op; a later event about the old run changes nothing.
        assert_eq!(core.terminate_child("loop"), Ok(vec![]));
        assert!(core
            .on_exit("loop", g, ExitReason::Exited(1), clock.now())
            .is_empty());
        assert_eq!(service(&core, "loop", &clock).state, ServiceState::Failed);
    }

    #[test]
    fn cycles_spread_over_more_than_the_period_never_fail() {
        let mut clock = Clock::new();
        let (mut core, gens) = top(vec![spec("slow", r#"["restart"]"#)], &clock);
        let mut g = gens[0].1;
        // One crash every 13 s: never 5 cycles within 60 s.
        for n in 0..50 {
            clock.advance(13_000);
            let (commands, next) = crash(&mut core, "slow", g, &clock);
            g = next.unwrap_or_else(|| panic!("crash {n}: {commands:?}"));
        }
        let slow = service(&core, "slow", &clock);
        assert_eq!(slow.state, ServiceState::Running);
        // The last 5 cycles all fall within 60 s of now, but the next crash, 13 s on, no
        // longer sees the oldest.
        assert_eq!((slow.restarts, slow.cycles_in_period), (50, Some(5)));
        // Five quick ones after a long quiet time are restarted too: the old cycles are out
        // of the window.
        clock.advance(3_600_000);
        for n in 0..5 {
            clock.advance(100);
            let (commands, next) = crash(&mut core, "slow", g, &clock);
            g = next.unwrap_or_else(|| panic!("quick crash {n}: {commands:?}"));
        }
        assert_eq!(service(&core, "slow", &clock).cycles_in_period, Some(5));
    }

    #[test]
    fn an_infinite_count_never_fails() {
        let mut clock = Clock::new();
        let (mut core, gens) = top(
            vec![spec("forever", r#"["restart"]"#).with_count(Count::Infinity)],
            &clock,
        );
        let mut g = gens[0].1;
        for n in 0..1_000 {
            clock.advance(100);
            let (commands, next) = crash(&mut core, "forever", g, &clock);
            g = next.unwrap_or_else(|| panic!("crash {n}: {commands:?}"));
        }
        let forever = service(&core, "forever", &clock);
        assert_eq!((forever.restarts, forever.cycles_in_period), (1_000, None));
    }

    fn armed(commands: &[Command]) -> Vec<(u64, Duration)> {
        commands
            .iter()
            .filter_map(|c| match c {
                Command::ArmRestart {
                    generation, delay, ..
                } => Some((*generation, *delay)),
                _ => None,
            })
            .collect()
    }

    #[test]
    fn no_plan_restarts_a_child_sooner_than_its_min_restart_interval() {
        let mut clock = Clock::new();
        let backoff = r#"[{"restart_backoff": {"initial_ms": 10, "max_ms": 1000}}]"#;
        let (mut core, gens) = top(
            vec![
                spec("bare", r#"["restart"]"#).with_count(Count::Infinity),
                spec("after", r#"[{"restart_after_ms": 30}]"#).with_count(Count::Infinity),
                spec("backoff", backoff).with_count(Count::Infinity),
                spec("zero", r#"["restart"]"#)
                    .with_count(Count::Infinity)
                    .with_min_restart_interval(Duration::ZERO),
                spec("slow", r#"[{"restart_after_ms": 250}]"#),
            ],
            &clock,
        );
        let g = |id: &str| gens.iter().find(|(i, _)| i == id).unwrap().1;
        clock.advance(40);
        // A bare restart 40 ms after the start waits the 60 ms left of the floor.
        let commands = core.on_exit("bare", g("bare"), ExitReason::Exited(1), clock.now());
        let [(timer, delay)] = armed(&commands)[..] else {
            panic!("{commands:?}")
        };
        assert_eq!(delay, Duration::from_millis(60));
        assert_eq!(service(&core, "bare", &clock).restart_in_ms, Some(60));
        // So do a shorter planned delay and a shorter backoff delay.
        for id in ["after", "backoff"] {
            let commands = core.on_exit(id, g(id), ExitReason::Exited(1), clock.now());
            assert_eq!(armed(&commands)[0].1, Duration::from_millis(60), "{id}");
        }
        // A delay longer than the floor is kept as planned.
        let commands = core.on_exit("slow", g("slow"), ExitReason::Exited(1), clock.now());
        assert_eq!(armed(&commands)[0].1, Duration::from_millis(250));
        // An explicit 0 restarts at once.
        let (commands, _) = crash(&mut core, "zero", g("zero"), &clock);
        assert_eq!(started(&commands).len(), 1, "{commands:?}");
        // The timer starts it 100 ms after its previous start; a crash right away waits the
        // whole floor again.
        clock.advance(60);
        let next = started(&core.on_restart_timer("bare", timer, clock.now()))[0].1;
        core.on_spawned("bare", next, Some(7), clock.now());
        let commands = core.on_exit("bare", next, ExitReason::Exited(1), clock.now());
        assert_eq!(armed(&commands)[0].1, Duration::from_millis(100));
        // An operator's start is not delayed.
        let (commands, _) = core.restart_service("bare", clock.now()).unwrap();
        assert_eq!(started(&commands).len(), 1, "{commands:?}");
        let (mut core, gens) = top(vec![spec("w", r#"["wait"]"#)], &clock);
        core.on_exit("w", gens[0].1, ExitReason::Exited(1), clock.now());
        assert_eq!(
            started(&core.restart_child("w", clock.now()).unwrap()).len(),
            1
        );
    }

    #[test]
    fn on_exhausted_stop_node_and_stop_elements_escalate_from_the_top() {
        let mut clock = Clock::new();
        let (mut core, gens) = top(
            vec![spec("vital", r#"["restart"]"#)
                .with_count(Count::Finite(1))
                .with_on_exhausted(OnExhausted::StopNode)],
            &clock,
        );
        clock.advance(100);
        let (_, g) = crash(&mut core, "vital", gens[0].1, &clock);
        clock.advance(100);
        let (commands, _) = crash(&mut core, "vital", g.unwrap(), &clock);
        let [Command::Escalate { reason }] = commands.as_slice() else {
            panic!("{commands:?}")
        };
        assert_eq!(
            reason,
            "child `vital`: reached max restart plan (count 1 within 60s); last exit: exit status 1"
        );
        assert!(core.has_escalated());

        // A stop element is an explicit choice: it escalates whatever on_exhausted says.
        let (mut core, gens) = top(vec![spec("s", r#"[{"stop": "enough"}]"#)], &clock);
        let (commands, _) = crash(&mut core, "s", gens[0].1, &clock);
        assert_eq!(
            commands,
            [Command::Escalate {
                reason: "child `s`: enough".into()
            }]
        );
        // An empty plan is used up at the first crash: failed, from the top.
        let (mut core, gens) = top(vec![spec("e", "[]")], &clock);
        let (commands, _) = crash(&mut core, "e", gens[0].1, &clock);
        assert!(commands.is_empty(), "{commands:?}");
        assert_eq!(
            service(&core, "e", &clock).failure.as_deref(),
            Some("exhausted its restart plan: the plan is empty; last exit: exit status 1")
        );
    }

    #[test]
    fn a_nested_supervisor_escalates_when_a_plan_is_used_up() {
        let mut clock = Clock::new();
        // Not the node's supervisor: on_exhausted does not apply.
        let (mut core, g) = one(
            spec("a", r#"["restart"]"#).with_count(Count::Finite(1)),
            &clock,
        );
        assert_eq!(core.spec("a").unwrap().on_exhausted, OnExhausted::Fail);
        clock.advance(100);
        let (_, g) = crash(&mut core, "a", g, &clock);
        clock.advance(100);
        let (commands, _) = crash(&mut core, "a", g.unwrap(), &clock);
        assert!(
            matches!(&commands[..], [Command::Escalate { reason }] if reason.contains("reached max restart plan (count 1 within 60s)")),
            "{commands:?}"
        );
    }

    #[test]
    fn starting_a_child_whose_plan_is_used_up_starts_its_plan_afresh() {
        let mut clock = Clock::new();
        let (mut core, gens) = top(
            vec![spec("a", r#"["restart"]"#).with_count(Count::Finite(1))],
            &clock,
        );
        core.add_failed(spec("m", "[]"), "manifest.json: broken")
            .unwrap();
        clock.advance(100);
        let (_, g) = crash(&mut core, "a", gens[0].1, &clock);
        clock.advance(100);
        crash(&mut core, "a", g.unwrap(), &clock);
        assert_eq!(service(&core, "a", &clock).state, ServiceState::Failed);
        // Started at once (no floor), with fresh counters: one more restart is allowed.
        let commands = core.restart_child("a", clock.now()).unwrap();
        let g = started(&commands)[0].1;
        core.on_spawned("a", g, Some(800), clock.now());
        let revived = service(&core, "a", &clock);
        assert_eq!(revived.state, ServiceState::Running);
        assert_eq!(
            (revived.restarts, revived.cycle, revived.plan_position),
            (0, 0, 0)
        );
        assert_eq!((revived.failure, revived.cycles_in_period), (None, Some(0)));
        clock.advance(100);
        let (_, g) = crash(&mut core, "a", g, &clock);
        clock.advance(100);
        crash(&mut core, "a", g.unwrap(), &clock);
        assert_eq!(service(&core, "a", &clock).state, ServiceState::Failed);
        // An operator's restart revives it too.
        let (commands, g) = core.restart_service("a", clock.now()).unwrap();
        assert_eq!(started(&commands), [("a".to_string(), g)]);
        assert_eq!(service(&core, "a", &clock).restarts, 0);
        // A broken manifest still cannot be started.
        assert_eq!(
            core.restart_child("m", clock.now()),
            Err(ChildError::Failed(
                "m".into(),
                "manifest.json: broken".into()
            ))
        );
    }
}

#[cfg(test)]
#[path = "core_requirements_tests.rs"]
mod requirements_tests;
