//! The supervisor's logic, without I/O: the table of children and their states, start ordering,
//! plan decisions on exits, the API's rules and error cases, and orderly shutdown.
//!
//! The actor feeds it events (a child spawned, became ready, exited; a timer fired; an API
//! call) with the current time, and executes the [`Command`]s it returns. Every event and
//! command names the child's *generation*: each start and each armed restart timer gets a new
//! one, so an event about an earlier incarnation is recognised and ignored.

use std::time::{Duration, Instant};

use crate::plan::{Count, ExitReason, Outcome, Plan, PlanState};
use crate::spec::{ChildSpec, ChildStart, ChildType, DefaultSpec};

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
    /// Being stopped.
    Stopping,
    /// Cannot be started; the reason says why (e.g. a broken manifest).
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
    /// The child cannot be started at all.
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
}

/// What to do once a requested stop has completed.
#[derive(Debug, Clone, PartialEq)]
enum AfterStop {
    Wait,
    Shutdown,
    /// The stop was forced by a failed start: apply the plan to this reason.
    Crash(ExitReason),
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
    },
    Waiting,
    Stopping {
        generation: u64,
        pid: Option<u32>,
        since: Instant,
        then: AfterStop,
    },
    Failed(String),
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
}

/// The supervisor's children and the rules that govern them.
pub struct SupervisorCore {
    children: Vec<Child>,
    default: DefaultSpec,
    max_children: usize,
    generation: u64,
    created: Instant,
    all_running_announced: bool,
    shutting_down: bool,
    escalated: bool,
}

impl SupervisorCore {
    /// An empty supervisor holding at most `max_children`.
    pub fn new(default: DefaultSpec, max_children: usize, now: Instant) -> Self {
        SupervisorCore {
            children: Vec::new(),
            default,
            max_children,
            generation: 0,
            created: now,
            all_running_announced: false,
            shutting_down: false,
            escalated: false,
        }
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
        self.children.push(Child {
            spec,
            state: State::Pending,
            counters: PlanState::default(),
        });
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
        self.children.push(Child {
            spec,
            state: State::Failed(reason.into()),
            counters: PlanState::default(),
        });
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
        let ran_for = now.saturating_duration_since(since);
        let ran_ms = ran_for.as_millis() as u64;
        let crash = match requested {
            Some(AfterStop::Crash(cause)) => Some(cause),
            Some(_) => None,
            None if shutting_down => None,
            None => Some(reason.clone()),
        };
        let Some(cause) = crash else {
            tracing::info!(id, pid, exit = %reason, status = reason.status(), signal = reason.signal(), ran_ms, "child stopped");
            child.state = State::Waiting;
            self.after_stop(&mut commands);
            return commands;
        };
        let decision = child
            .counters
            .decide(&child.spec.plan, child.spec.count, &cause, ran_for);
        let fields = ReportFields::of(child);
        let decided = match &decision.outcome {
            Outcome::Restart { delay } if delay.is_zero() => "restart".to_string(),
            Outcome::Restart { delay } => format!("restart in {} ms", delay.as_millis()),
            Outcome::Delete => "delete".into(),
            Outcome::Wait => "wait".into(),
            Outcome::Escalate(_) => "escalate".into(),
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
                    count = %fields.count,
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
                self.generation += 1;
                let generation = self.generation;
                self.children[index].state = State::Restarting { generation };
                commands.push(Command::ArmRestart {
                    id: id.to_string(),
                    generation,
                    delay,
                });
            }
            Outcome::Delete => {
                self.children.remove(index);
            }
            Outcome::Wait => self.children[index].state = State::Waiting,
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
            if self.children[index].state == (State::Restarting { generation }) {
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
        self.add(spec)?;
        let mut commands = Vec::new();
        self.start_pending(now, &mut commands);
        Ok(commands)
    }

    /// `restart_child`: starts a child that is down (waiting, terminated, pending).
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
            State::Pending | State::Waiting => {
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
            State::Starting {
                generation,
                pid,
                since,
            }
            | State::Running {
                generation,
                pid,
                since,
            } => {
                child.state = State::Stopping {
                    generation,
                    pid,
                    since,
                    then: AfterStop::Wait,
                };
                Ok(vec![Command::Stop {
                    id: id.into(),
                    generation,
                    timeout: child.spec.terminate_timeout,
                }])
            }
            State::Stopping { .. } | State::Failed(_) => Ok(Vec::new()),
            State::Restarting { .. } | State::Pending | State::Waiting => {
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
        self.children.remove(index);
        Ok(())
    }

    /// `which_children`, in the order the children were added.
    pub fn which_children(&self) -> Vec<ChildInfo> {
        self.children
            .iter()
            .map(|c| ChildInfo {
                id: c.spec.id.clone(),
                pid: child_pid(&c.state),
                status: status_of(&c.state),
                child_type: c.spec.child_type,
                kind: match c.spec.start {
                    ChildStart::Process(_) => "process",
                    ChildStart::Actor(_) => "actor",
                },
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
            if matches!(child.state, State::Restarting { .. } | State::Pending) {
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
            if let State::Starting {
                generation,
                pid,
                since,
            }
            | State::Running {
                generation,
                pid,
                since,
            } = child.state
            {
                child.state = State::Stopping {
                    generation,
                    pid,
                    since,
                    then: AfterStop::Shutdown,
                };
                commands.push(Command::Stop {
                    id: id.clone(),
                    generation,
                    timeout: child.spec.terminate_timeout,
                });
            }
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
            }
            _ => return,
        }
        self.start_pending(now, commands);
        if !self.all_running_announced
            && self
                .children
                .iter()
                .all(|c| matches!(c.state, State::Running { .. } | State::Failed(_)))
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

    fn start_index(&mut self, index: usize, now: Instant, commands: &mut Vec<Command>) {
        self.generation += 1;
        let generation = self.generation;
        let child = &mut self.children[index];
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

/// The plan fields of director's reports.
struct ReportFields {
    plan: String,
    plan_length: usize,
    cycles: u64,
    count: Count,
    restarts: u64,
}

impl ReportFields {
    fn of(child: &Child) -> Self {
        ReportFields {
            plan: child.spec.plan.to_string(),
            plan_length: child.spec.plan.0.len(),
            cycles: child.counters.cycles,
            count: child.spec.count,
            restarts: child.counters.restarts,
        }
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
        State::Failed(reason) => ChildStatus::Failed(reason.clone()),
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
        let clock = Clock::new();
        let (mut core, g1) = one(
            spec("a", r#"["restart"]"#).with_count(Count::Infinity),
            &clock,
        );
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
        let clock = Clock::new();
        let mut core = SupervisorCore::new(DefaultSpec::default(), 10, clock.now());
        core.add(spec("a", r#"["restart"]"#)).unwrap();
        core.add(spec("b", r#"["restart"]"#).with_count(Count::Infinity))
            .unwrap();
        let gens = started(&core.start_all(clock.now()));
        for (id, g) in &gens {
            core.on_spawned(id, *g, Some(1), clock.now());
        }
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
        let clock = Clock::new();
        let (mut core, g) = one(spec("a", r#"["restart"]"#), &clock);
        let g2 = started(&core.on_exit("a", g, ExitReason::Exited(1), clock.now()))[0].1;
        core.on_spawned("a", g2, Some(1), clock.now());
        // Count 1 is used up: the next crash would escalate. A new plan starts afresh.
        core.change_plan("a", serde_json::from_str(r#"["restart"]"#).unwrap(), None)
            .unwrap();
        assert_eq!(core.which_children()[0].restarts, 0);
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
        assert_eq!(core.spec("a").unwrap().count, Count::Finite(3));
    }
}
