//! Child specs: what a child is (a process or an actor), its plan and how often it may run
//! (`count` within `period`, at most one start per `min_restart_interval`), what happens when
//! the plan is used up, its timeouts and its start ordering; the default child spec and
//! director's `append` merge.

use std::collections::BTreeMap;
use std::fmt;
use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::actor_child::ActorFactory;
use crate::limits::{CpuMax, IdOrName, Resource, Rlimit, Umask, MIN_MEMORY_MAX};
use crate::plan::{duration_text, Count, Intensity, Plan, PlanElement};
use crate::requirements::{self, OnRequirementChange};

/// Whether a child is a worker or a supervisor of its own children.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ChildType {
    /// An ordinary child.
    #[default]
    Worker,
    /// A child that supervises children itself; its escalation reaches this supervisor as its
    /// exit.
    Supervisor,
}

impl ChildType {
    /// The terminate timeout a child of this type gets when its spec names none.
    pub fn default_terminate_timeout(self) -> Duration {
        match self {
            ChildType::Worker => Duration::from_millis(1000),
            // Director waits forever for a supervisor; a node's shutdown is bounded, so a
            // nested supervisor gets a long but finite time to stop its own children.
            ChildType::Supervisor => Duration::from_millis(5000),
        }
    }
}

/// What the node's own supervisor does with a child that used up its restart plan (ran it
/// `count` times within `period`, or has an empty plan). A nested supervisor always escalates
/// to its parent.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum OnExhausted {
    /// Mark the child `failed` (with its last exit); the node and the other children keep
    /// running, and `restart_child` starts it again with fresh plan counters.
    #[default]
    Fail,
    /// Escalate: the node stops with exit code 1 (for a child the node is useless without).
    StopNode,
}

impl fmt::Display for OnExhausted {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            OnExhausted::Fail => "fail",
            OnExhausted::StopNode => "stop_node",
        })
    }
}

/// Default `count`: how many cycles of the plan may complete within `period`.
pub const DEFAULT_COUNT: Count = Count::Finite(5);
/// Default `period`.
pub const DEFAULT_PERIOD: Duration = Duration::from_secs(60);
/// Default `min_restart_interval`: at most 10 starts per second of a crash-looping child.
pub const DEFAULT_MIN_RESTART_INTERVAL: Duration = Duration::from_millis(100);
/// Longest `period` (30 days).
pub const MAX_PERIOD: Duration = Duration::from_secs(30 * 24 * 3600);
/// Longest `min_restart_interval` (1 hour).
pub const MAX_MIN_RESTART_INTERVAL: Duration = Duration::from_secs(3600);
/// Default `requirements_timeout`.
pub const DEFAULT_REQUIREMENTS_TIMEOUT: Duration = Duration::from_secs(60);
/// Longest `requirements_timeout` (30 days; `"0s"` waits forever).
pub const MAX_REQUIREMENTS_TIMEOUT: Duration = Duration::from_secs(30 * 24 * 3600);
/// Longest broker service name in `ready = { broker = "..." }`.
pub const MAX_BROKER_SERVICE_BYTES: usize = 255;

/// A readiness check: a child counts as running only once it passes.
#[derive(Debug, Clone)]
pub enum ReadyCheck {
    /// A TCP connection to this address succeeds.
    Tcp(String),
    /// A line of the child's stdout or stderr matches this expression.
    LogLine(regex::Regex),
    /// This command (program and arguments) exits with status 0.
    Exec(Vec<String>),
    /// The broker on this node has seen a worker of the child's process say READY for this
    /// broker service (asked with
    /// [`BrokerWorkers`](troupe_core::services::BrokerWorkers)).
    Broker(String),
}

impl PartialEq for ReadyCheck {
    fn eq(&self, other: &Self) -> bool {
        match (self, other) {
            (ReadyCheck::Tcp(a), ReadyCheck::Tcp(b)) => a == b,
            (ReadyCheck::LogLine(a), ReadyCheck::LogLine(b)) => a.as_str() == b.as_str(),
            (ReadyCheck::Exec(a), ReadyCheck::Exec(b)) => a == b,
            (ReadyCheck::Broker(a), ReadyCheck::Broker(b)) => a == b,
            _ => false,
        }
    }
}

impl fmt::Display for ReadyCheck {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ReadyCheck::Tcp(addr) => write!(f, "tcp {addr}"),
            ReadyCheck::LogLine(re) => write!(f, "log line /{}/", re.as_str()),
            ReadyCheck::Exec(argv) => write!(f, "exec {}", argv.join(" ")),
            ReadyCheck::Broker(service) => write!(f, "broker {service}"),
        }
    }
}

/// The config form of a [`ReadyCheck`]: `{ tcp = "HOST:PORT" }`, `{ log_line = "regex" }`,
/// `{ exec = ["program", "arg", ...] }` or `{ broker = "SERVICE" }`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "snake_case")]
pub enum ReadyConfig {
    /// See [`ReadyCheck::Tcp`].
    Tcp(String),
    /// See [`ReadyCheck::LogLine`].
    LogLine(String),
    /// See [`ReadyCheck::Exec`].
    Exec(Vec<String>),
    /// See [`ReadyCheck::Broker`].
    Broker(String),
}

impl ReadyConfig {
    /// Checks and compiles the check; the message says what is wrong.
    pub fn compile(&self) -> Result<ReadyCheck, String> {
        match self {
            ReadyConfig::Tcp(addr) => {
                let ok = addr
                    .rsplit_once(':')
                    .is_some_and(|(host, port)| !host.is_empty() && port.parse::<u16>().is_ok());
                if ok {
                    Ok(ReadyCheck::Tcp(addr.clone()))
                } else {
                    Err(format!("tcp: \"{addr}\" is not HOST:PORT"))
                }
            }
            ReadyConfig::LogLine(re) => regex::Regex::new(re)
                .map(ReadyCheck::LogLine)
                .map_err(|e| format!("log_line: invalid regular expression: {e}")),
            ReadyConfig::Exec(argv) if argv.is_empty() || argv[0].is_empty() => {
                Err("exec: needs a program, e.g. [\"pg_isready\", \"-q\"]".into())
            }
            ReadyConfig::Exec(argv) => Ok(ReadyCheck::Exec(argv.clone())),
            ReadyConfig::Broker(service)
                if service.is_empty()
                    || service.len() > MAX_BROKER_SERVICE_BYTES
                    || service.chars().any(char::is_control) =>
            {
                Err(format!(
                    "broker: \"{}\" is not a broker service name; use 1 to {MAX_BROKER_SERVICE_BYTES} bytes without control characters",
                    service.escape_debug()
                ))
            }
            ReadyConfig::Broker(service) => Ok(ReadyCheck::Broker(service.clone())),
        }
    }
}

/// A per-service log file, rotated by size and optionally by age: `path`, then `path.1` …
/// `path.<backups>`. Each line is written as `<RFC 3339 UTC timestamp> <stream> <text>`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LogFileSpec {
    /// The file the service's output lines are appended to.
    pub path: PathBuf,
    /// Size at which the file is rotated (default 10 MiB).
    #[serde(default = "LogFileSpec::default_max_bytes")]
    pub max_bytes: u64,
    /// Rotated files kept (default 3; 0 truncates instead of keeping one).
    #[serde(default = "LogFileSpec::default_backups")]
    pub backups: u32,
    /// Age at which the file is rotated, counted from its first line and checked when a line
    /// is written (unset: never by age). A duration with a unit (`"1d"`, `"12h"`), from
    /// [`LogFileSpec::MIN_AGE`] to [`LogFileSpec::MAX_AGE`].
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        serialize_with = "LogFileSpec::serialize_age",
        deserialize_with = "LogFileSpec::deserialize_age"
    )]
    pub max_age: Option<Duration>,
}

impl LogFileSpec {
    /// Shortest `max_age`.
    pub const MIN_AGE: Duration = Duration::from_secs(1);
    /// Longest `max_age` (366 days).
    pub const MAX_AGE: Duration = Duration::from_secs(366 * 24 * 3600);

    fn default_max_bytes() -> u64 {
        10 * 1024 * 1024
    }
    fn default_backups() -> u32 {
        3
    }

    fn serialize_age<S: serde::Serializer>(
        age: &Option<Duration>,
        serializer: S,
    ) -> Result<S::Ok, S::Error> {
        match age {
            Some(age) => serializer.serialize_str(&duration_text(*age)),
            None => serializer.serialize_none(),
        }
    }

    fn deserialize_age<'de, D: serde::Deserializer<'de>>(
        deserializer: D,
    ) -> Result<Option<Duration>, D::Error> {
        let age = Option::<troupe_core::settings::Duration>::deserialize(deserializer)?;
        match age.map(troupe_core::settings::Duration::get) {
            Some(age) if age < Self::MIN_AGE || age > Self::MAX_AGE => {
                Err(serde::de::Error::custom(format!(
                    "must be at least {} and at most {} (366 days), got {}",
                    duration_text(Self::MIN_AGE),
                    duration_text(Self::MAX_AGE),
                    duration_text(age)
                )))
            }
            age => Ok(age),
        }
    }
}

/// An OS process to run.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct ProcessSpec {
    /// The program; `None` takes the default child spec's when appending. `${TROUPE_EXE}`
    /// stands for the running troupe executable.
    pub command: Option<String>,
    /// Its arguments (`${TROUPE_EXE}` expanded too).
    pub args: Vec<String>,
    /// Extra environment variables.
    pub env: BTreeMap<String, String>,
    /// Whether the node's own environment is passed on (default true).
    pub inherit_env: bool,
    /// Working directory (default: the node's).
    pub cwd: Option<PathBuf>,
    /// Where its output lines are also written.
    pub log_file: Option<LogFileSpec>,
    /// Where its persisted `config.json` lives (given to the ipc hub).
    pub config_path: Option<PathBuf>,
    /// Run as this user (the node must run as root): its uid, its primary group unless
    /// `group` says otherwise, and its supplementary groups from the group database.
    pub user: Option<IdOrName>,
    /// Run with this primary group (the node must run as root).
    pub group: Option<IdOrName>,
    /// Resource limits set with `setrlimit` before `execve`.
    pub rlimits: BTreeMap<Resource, Rlimit>,
    /// The service cgroup's `memory.max`, in bytes (at least 1 MiB).
    pub memory_max: Option<u64>,
    /// The service cgroup's `cpu.max`.
    pub cpu_max: Option<CpuMax>,
    /// The service cgroup's `pids.max` (at least 1).
    pub pids_max: Option<u64>,
    /// `KEY=VALUE` lines read at every start, under `env` (see
    /// [`parse_env_file`](crate::limits::parse_env_file)).
    pub env_file: Option<PathBuf>,
    /// The file mode creation mask (default: the node's).
    pub umask: Option<Umask>,
}

impl ProcessSpec {
    /// Checks the resource limits the types cannot; the message names the field.
    pub fn check_limits(&self) -> Result<(), String> {
        if let Some(bytes) = self.memory_max.filter(|b| *b < MIN_MEMORY_MAX) {
            return Err(format!(
                "memory_max: must be at least 1MiB, got {}",
                crate::limits::ByteSize(bytes)
            ));
        }
        if self.pids_max == Some(0) {
            return Err("pids_max: must be at least 1".into());
        }
        if let Some(cpu) = self.cpu_max.filter(|c| c.quota_us < 1000) {
            return Err(format!("cpu_max: must be at least 1%, got {cpu}"));
        }
        if let Some((resource, limit)) = self.rlimits.iter().find(|(_, l)| l.soft > l.hard) {
            return Err(format!(
                "rlimits.{resource}: the soft limit ({}) is above the hard limit ({})",
                limit.soft, limit.hard
            ));
        }
        if self
            .env_file
            .as_ref()
            .is_some_and(|f| f.as_os_str().is_empty())
        {
            return Err("env_file: must not be empty".into());
        }
        Ok(())
    }
}

/// What a child is.
#[derive(Clone)]
// One per child, moved rarely: a box would buy nothing.
#[allow(clippy::large_enum_variant)]
pub enum ChildStart {
    /// An OS process.
    Process(ProcessSpec),
    /// An actor made by a factory, run on its own arbiter.
    Actor(ActorFactory),
}

impl fmt::Debug for ChildStart {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ChildStart::Process(p) => f.debug_tuple("Process").field(p).finish(),
            ChildStart::Actor(_) => f.write_str("Actor"),
        }
    }
}

/// One child: what to start and how to keep it alive.
#[derive(Debug, Clone)]
pub struct ChildSpec {
    /// Unique among the supervisor's children.
    pub id: String,
    /// What to start.
    pub start: ChildStart,
    /// The restart plan.
    pub plan: Plan,
    /// How many cycles of the plan may complete within `period` before it is used up.
    pub count: Count,
    /// The window `count` applies to (default 60 s); older cycles no longer count.
    pub period: Duration,
    /// No restart decided by the plan starts the child sooner than this after its previous
    /// start (default 100 ms; zero allowed). Operators' starts are not delayed.
    pub min_restart_interval: Duration,
    /// What the node's supervisor does when the plan is used up.
    pub on_exhausted: OnExhausted,
    /// 0: SIGKILL at once; otherwise SIGTERM, wait this long, SIGKILL (actors: ask, wait, drop).
    pub terminate_timeout: Duration,
    /// Worker or supervisor.
    pub child_type: ChildType,
    /// Merge with the default child spec (director's `append`).
    pub append: bool,
    /// Children that must be running before this one starts.
    pub after: Vec<String>,
    /// The child is running only once this passes.
    pub ready: Option<ReadyCheck>,
    /// How long the readiness check may take.
    pub start_timeout: Duration,
    /// Cluster resources that must each have an online provider before the child starts.
    pub requires: Vec<String>,
    /// How long the child may wait for them before it is marked failed (zero: for ever).
    pub requirements_timeout: Duration,
    /// What a change of the providers of `requires` does to the running child.
    pub on_requirement_change: OnRequirementChange,
    /// Endpoints this node offers, as resource `<id>`, while the child runs (and is ready).
    pub endpoints: BTreeMap<String, String>,
}

/// Default of `start_timeout` when a readiness check is given.
pub const DEFAULT_START_TIMEOUT: Duration = Duration::from_secs(30);

impl ChildSpec {
    /// A process child with the defaults of a `[[supervisor.services]]` entry: the default plan,
    /// count 5 within 60 s, at least 100 ms between starts, `on_exhausted` fail, a worker.
    pub fn process(id: impl Into<String>, command: impl Into<String>) -> Self {
        Self::new(
            id,
            ChildStart::Process(ProcessSpec {
                command: Some(command.into()),
                inherit_env: true,
                ..ProcessSpec::default()
            }),
        )
    }

    /// An actor child with the same defaults as [`ChildSpec::process`]; see
    /// [`ActorFactory::new`].
    pub fn actor(id: impl Into<String>, factory: ActorFactory) -> Self {
        Self::new(id, ChildStart::Actor(factory))
    }

    fn new(id: impl Into<String>, start: ChildStart) -> Self {
        ChildSpec {
            id: id.into(),
            start,
            plan: Plan::default_plan(),
            count: DEFAULT_COUNT,
            period: DEFAULT_PERIOD,
            min_restart_interval: DEFAULT_MIN_RESTART_INTERVAL,
            on_exhausted: OnExhausted::Fail,
            terminate_timeout: ChildType::Worker.default_terminate_timeout(),
            child_type: ChildType::Worker,
            append: false,
            after: Vec::new(),
            ready: None,
            start_timeout: DEFAULT_START_TIMEOUT,
            requires: Vec::new(),
            requirements_timeout: DEFAULT_REQUIREMENTS_TIMEOUT,
            on_requirement_change: OnRequirementChange::Restart,
            endpoints: BTreeMap::new(),
        }
    }

    /// Sets the cluster resources the child requires.
    pub fn with_requires<I: IntoIterator<Item = S>, S: Into<String>>(
        mut self,
        requires: I,
    ) -> Self {
        self.requires = requires.into_iter().map(Into::into).collect();
        self
    }

    /// Sets how long the child may wait for its requirements (zero: for ever).
    pub fn with_requirements_timeout(mut self, timeout: Duration) -> Self {
        self.requirements_timeout = timeout;
        self
    }

    /// Sets what a change of its requirements' providers does to the running child.
    pub fn with_on_requirement_change(mut self, on_change: OnRequirementChange) -> Self {
        self.on_requirement_change = on_change;
        self
    }

    /// Sets the endpoints offered while the child runs.
    pub fn with_endpoints<I, K, V>(mut self, endpoints: I) -> Self
    where
        I: IntoIterator<Item = (K, V)>,
        K: Into<String>,
        V: Into<String>,
    {
        self.endpoints = endpoints
            .into_iter()
            .map(|(k, v)| (k.into(), v.into()))
            .collect();
        self
    }

    /// Sets the readiness check.
    pub fn with_ready(mut self, ready: ReadyCheck) -> Self {
        self.ready = Some(ready);
        self
    }

    /// Whether the child needs the cluster client (it requires resources or offers
    /// endpoints).
    pub fn needs_cluster(&self) -> bool {
        !self.requires.is_empty() || !self.endpoints.is_empty()
    }

    /// Sets the plan.
    pub fn with_plan(mut self, plan: Plan) -> Self {
        self.plan = plan;
        self
    }

    /// Sets the count.
    pub fn with_count(mut self, count: Count) -> Self {
        self.count = count;
        self
    }

    /// Sets the period `count` applies to.
    pub fn with_period(mut self, period: Duration) -> Self {
        self.period = period;
        self
    }

    /// Sets the shortest time between two starts decided by the plan.
    pub fn with_min_restart_interval(mut self, interval: Duration) -> Self {
        self.min_restart_interval = interval;
        self
    }

    /// Sets what happens when the plan is used up.
    pub fn with_on_exhausted(mut self, on_exhausted: OnExhausted) -> Self {
        self.on_exhausted = on_exhausted;
        self
    }

    /// `count` within `period`, as the plan takes it.
    pub fn intensity(&self) -> Intensity {
        Intensity {
            count: self.count,
            period: self.period,
        }
    }

    /// Sets the arguments of a process child.
    pub fn with_args<I: IntoIterator<Item = S>, S: Into<String>>(mut self, args: I) -> Self {
        if let ChildStart::Process(p) = &mut self.start {
            p.args = args.into_iter().map(Into::into).collect();
        }
        self
    }

    /// The process part, if this is a process child.
    pub fn process_spec(&self) -> Option<&ProcessSpec> {
        match &self.start {
            ChildStart::Process(p) => Some(p),
            ChildStart::Actor(_) => None,
        }
    }

    /// Whether `self` and `other` run alike: every field equal, plans compared with
    /// [`Plan::same_as`], readiness patterns by their text. Process children compare their
    /// whole [`ProcessSpec`] (command, arguments, environment, working directory, log file,
    /// `config.json` path, identity and limits); actor children are the same only when they
    /// share one factory.
    pub fn same_as(&self, other: &ChildSpec) -> bool {
        let start = match (&self.start, &other.start) {
            (ChildStart::Process(a), ChildStart::Process(b)) => a == b,
            (ChildStart::Actor(a), ChildStart::Actor(b)) => a.same_factory(b),
            _ => false,
        };
        start
            && self.id == other.id
            && self.plan.same_as(&other.plan)
            && self.count == other.count
            && self.period == other.period
            && self.min_restart_interval == other.min_restart_interval
            && self.on_exhausted == other.on_exhausted
            && self.terminate_timeout == other.terminate_timeout
            && self.child_type == other.child_type
            && self.append == other.append
            && self.after == other.after
            && self.ready == other.ready
            && self.start_timeout == other.start_timeout
            && self.requires == other.requires
            && self.requirements_timeout == other.requirements_timeout
            && self.on_requirement_change == other.on_requirement_change
            && self.endpoints == other.endpoints
    }

    /// A warning about a plan that retries a broken command for ever without slowing down:
    /// `count` is infinite and the plan has a bare `restart` (or is the default plan, which
    /// restarts at once after a crash). `min_restart_interval` bounds the loop, but it never
    /// ends. Call it on the spec as it runs (merged with the default when it appends).
    pub fn plan_warning(&self) -> Option<String> {
        if self.count != Count::Infinity {
            return None;
        }
        let floor = if self.min_restart_interval.is_zero() {
            "min_restart_interval is 0s: in a tight loop".to_string()
        } else {
            format!(
                "every min_restart_interval, {}",
                duration_text(self.min_restart_interval)
            )
        };
        let fix = "use { restart_backoff = { initial_ms = 100, max_ms = 30000 } } (or a delay, or a finite count)";
        let bare = self
            .plan
            .0
            .iter()
            .any(|e| matches!(e, PlanElement::Restart));
        let default = self
            .plan
            .0
            .iter()
            .any(|e| matches!(e, PlanElement::Decide(f) if f.name() == "default"));
        if bare {
            Some(format!(
                "a bare \"restart\" with count \"infinity\" restarts a broken command forever ({floor}); {fix}"
            ))
        } else if default {
            Some(format!(
                "the default plan restarts at once after a crash: with count \"infinity\" it restarts a broken command forever ({floor}); {fix}"
            ))
        } else {
            None
        }
    }

    /// Checks what the types cannot; the message names the field.
    pub fn check(&self) -> Result<(), String> {
        check_id(&self.id)?;
        match &self.start {
            ChildStart::Process(p) => {
                if p.command.as_deref().is_none_or(str::is_empty) {
                    return Err(
                        "command: missing (and the default child spec has none to append to)"
                            .into(),
                    );
                }
                if let Some(key) = p
                    .env
                    .keys()
                    .find(|k| k.is_empty() || k.contains('=') || k.contains('\0'))
                {
                    return Err(format!("env: \"{key}\" is not a valid variable name"));
                }
                p.check_limits()?;
                requirements::check_args(&p.args, &self.requires)?;
            }
            ChildStart::Actor(_) => {
                if matches!(self.ready, Some(ReadyCheck::LogLine(_))) {
                    return Err("ready: an actor child has no output for log_line".into());
                }
                if matches!(self.ready, Some(ReadyCheck::Broker(_))) {
                    return Err("ready: an actor child has no process for broker".into());
                }
            }
        }
        for (i, resource) in self.requires.iter().enumerate() {
            requirements::check_name(resource).map_err(|e| format!("requires[{i}]: {e}"))?;
            if self.requires[..i].contains(resource) {
                return Err(format!("requires[{i}]: \"{resource}\" is named twice"));
            }
        }
        if self.requirements_timeout > MAX_REQUIREMENTS_TIMEOUT {
            return Err(format!(
                "requirements_timeout: must be at most {} (30 days; \"0s\" waits for ever), got {}",
                duration_text(MAX_REQUIREMENTS_TIMEOUT),
                duration_text(self.requirements_timeout)
            ));
        }
        for (name, address) in &self.endpoints {
            requirements::check_name(name).map_err(|e| format!("endpoints: {e}"))?;
            requirements::check_address(address).map_err(|e| format!("endpoints.{name}: {e}"))?;
        }
        if self.after.iter().any(|a| a == &self.id) {
            return Err(format!("after: \"{}\" cannot start after itself", self.id));
        }
        if self.period.is_zero() || self.period > MAX_PERIOD {
            return Err(format!(
                "period: must be more than 0s and at most {} (30 days), got {}; count = \"infinity\" never uses the plan up",
                duration_text(MAX_PERIOD),
                duration_text(self.period)
            ));
        }
        if self.min_restart_interval > MAX_MIN_RESTART_INTERVAL {
            return Err(format!(
                "min_restart_interval: must be at most {} (1 hour), got {}",
                duration_text(MAX_MIN_RESTART_INTERVAL),
                duration_text(self.min_restart_interval)
            ));
        }
        Ok(())
    }
}

/// Ids are used in logs, environment variables and file names: keep them plain.
pub fn check_id(id: &str) -> Result<(), String> {
    let valid = |c: char| c.is_ascii_alphanumeric() || "-_.@".contains(c);
    if id.is_empty() || id.len() > 128 || !id.chars().all(valid) || id.starts_with('.') {
        return Err(format!(
            "id: \"{id}\" is not a valid child id; use 1 to 128 letters, digits and - _ . @ (not starting with .)"
        ));
    }
    Ok(())
}

/// The default child spec (director's `DefaultChildspec`): what `append = true` children are
/// merged with. Its built-in value adds nothing: no command, no args, empty plan, count 0,
/// terminate timeout 0. It has no `period`, `min_restart_interval` or `on_exhausted`: an
/// appending child keeps its own.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct DefaultSpec {
    /// Program for appended children that name none.
    pub command: Option<String>,
    /// Put before an appended child's arguments.
    pub args: Vec<String>,
    /// Under an appended child's environment (the child's values win).
    pub env: BTreeMap<String, String>,
    /// Put before an appended child's plan.
    pub plan: Plan,
    /// Added to an appended child's count.
    pub count: Count,
    /// Added to an appended child's terminate timeout.
    pub terminate_timeout: Duration,
}

impl Default for Count {
    fn default() -> Self {
        Count::Finite(0)
    }
}

impl DefaultSpec {
    /// `child` as it runs: unchanged unless it appends, else merged as director does (counts
    /// and timeouts added, plan = default's then the child's, args appended, command taken
    /// from the default when the child names none). `period`, `min_restart_interval` and
    /// `on_exhausted` stay the child's.
    pub fn merge(&self, mut child: ChildSpec) -> ChildSpec {
        if !child.append {
            return child;
        }
        let mut plan = self.plan.0.clone();
        plan.append(&mut child.plan.0);
        child.plan = Plan(plan);
        child.count = self.count.plus(child.count);
        child.terminate_timeout = self
            .terminate_timeout
            .saturating_add(child.terminate_timeout);
        if let ChildStart::Process(p) = &mut child.start {
            if p.command.is_none() {
                p.command = self.command.clone();
            }
            let mut args = self.args.clone();
            args.append(&mut p.args);
            p.args = args;
            let mut env = self.env.clone();
            env.append(&mut p.env);
            p.env = env;
        }
        child
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::plan::PlanElement;

    #[test]
    fn append_merges_as_director_does() {
        let default = DefaultSpec {
            command: Some("/bin/worker".into()),
            args: vec!["--base".into()],
            env: BTreeMap::from([("A".into(), "1".into()), ("B".into(), "1".into())]),
            plan: Plan(vec![PlanElement::Restart]),
            count: Count::Finite(5),
            terminate_timeout: Duration::from_millis(1000),
        };
        let mut child = ChildSpec::process("one", "x");
        if let ChildStart::Process(p) = &mut child.start {
            p.command = None;
            p.args = vec!["--mine".into()];
            p.env = BTreeMap::from([("B".into(), "2".into())]);
        }
        child.append = true;
        let merged = default.merge(child.clone());
        // Count 5 (the child's built-in) + 5, timeout 1000 + 1000, plan default's then child's.
        assert_eq!(merged.count, Count::Finite(10));
        assert_eq!(merged.terminate_timeout, Duration::from_millis(2000));
        assert_eq!(merged.plan.0.len(), 2);
        assert_eq!(merged.plan.0[0], PlanElement::Restart);
        assert!(matches!(merged.plan.0[1], PlanElement::Decide(_)));
        let p = merged.process_spec().unwrap();
        assert_eq!(p.command.as_deref(), Some("/bin/worker"));
        assert_eq!(p.args, ["--base", "--mine"]);
        assert_eq!(p.env["A"], "1");
        assert_eq!(p.env["B"], "2");

        // Without append, the default is not used at all.
        child.append = false;
        let alone = default.merge(child);
        assert_eq!(alone.count, Count::Finite(5));
        assert_eq!(alone.process_spec().unwrap().command, None);
        assert!(alone.check().unwrap_err().contains("command"));
    }

    #[test]
    fn the_built_in_default_adds_nothing() {
        let mut child = ChildSpec::process("one", "/bin/true").with_args(["a"]);
        child.append = true;
        let merged = DefaultSpec::default().merge(child.clone());
        assert_eq!(merged.count, child.count);
        assert_eq!(merged.terminate_timeout, child.terminate_timeout);
        assert_eq!(merged.plan.0.len(), 1);
        assert_eq!(merged.process_spec(), child.process_spec());
    }

    #[test]
    fn infinity_absorbs_in_append() {
        let default = DefaultSpec {
            count: Count::Infinity,
            ..DefaultSpec::default()
        };
        let mut child = ChildSpec::process("one", "/bin/true");
        child.append = true;
        assert_eq!(default.merge(child).count, Count::Infinity);
    }

    #[test]
    fn ids_and_ready_checks_are_checked() {
        for bad in ["", "a b", "../x", ".hidden", "é"] {
            assert!(check_id(bad).is_err(), "{bad}");
        }
        for good in ["echo", "db-1", "a.b_c@d"] {
            assert!(check_id(good).is_ok(), "{good}");
        }
        assert!(ReadyConfig::Tcp("127.0.0.1:80".into()).compile().is_ok());
        assert!(ReadyConfig::Tcp("127.0.0.1".into())
            .compile()
            .unwrap_err()
            .contains("HOST:PORT"));
        assert!(ReadyConfig::LogLine("(".into())
            .compile()
            .unwrap_err()
            .contains("log_line"));
        assert!(ReadyConfig::Exec(vec![]).compile().is_err());
    }

    #[test]
    fn the_restart_limits_have_defaults_bounds_and_stay_the_childs_in_append() {
        let child = ChildSpec::process("one", "/bin/true");
        assert_eq!(child.count, Count::Finite(5));
        assert_eq!(child.period, Duration::from_secs(60));
        assert_eq!(child.min_restart_interval, Duration::from_millis(100));
        assert_eq!(child.on_exhausted, OnExhausted::Fail);
        assert!(child.check().is_ok());
        let zero = child.clone().with_min_restart_interval(Duration::ZERO);
        assert!(zero.check().is_ok());
        for (bad, field) in [
            (child.clone().with_period(Duration::ZERO), "period: "),
            (
                child
                    .clone()
                    .with_period(MAX_PERIOD + Duration::from_secs(1)),
                "period: ",
            ),
            (
                child
                    .clone()
                    .with_min_restart_interval(Duration::from_secs(3601)),
                "min_restart_interval: ",
            ),
        ] {
            let err = bad.check().unwrap_err();
            assert!(err.starts_with(field), "{err}");
        }
        let mut appending = child
            .with_period(Duration::from_secs(5))
            .with_min_restart_interval(Duration::ZERO)
            .with_on_exhausted(OnExhausted::StopNode);
        appending.append = true;
        let merged = DefaultSpec::default().merge(appending.clone());
        assert_eq!(merged.period, Duration::from_secs(5));
        assert_eq!(merged.min_restart_interval, Duration::ZERO);
        assert_eq!(merged.on_exhausted, OnExhausted::StopNode);
        assert!(merged.same_as(&appending));
        assert!(!merged.same_as(&appending.clone().with_period(Duration::from_secs(6))));
    }

    #[test]
    fn an_endless_bare_restart_is_warned_about() {
        let bare = ChildSpec::process("a", "x").with_plan(Plan(vec![PlanElement::Restart]));
        assert_eq!(bare.plan_warning(), None);
        let endless = bare.clone().with_count(Count::Infinity);
        let warning = endless.plan_warning().unwrap();
        assert!(warning.contains("bare \"restart\""), "{warning}");
        assert!(
            warning.contains("every min_restart_interval, 100ms"),
            "{warning}"
        );
        assert!(warning.contains("restart_backoff"), "{warning}");
        let tight = endless.with_min_restart_interval(Duration::ZERO);
        assert!(tight.plan_warning().unwrap().contains("tight loop"));
        let default = ChildSpec::process("a", "x").with_count(Count::Infinity);
        assert!(default.plan_warning().unwrap().contains("default plan"));
        for fine in [
            r#"[{"restart_after_ms": 100}]"#,
            r#"[{"restart_backoff": {"initial_ms": 10, "max_ms": 100}}]"#,
            r#"["wait"]"#,
        ] {
            let spec = ChildSpec::process("a", "x")
                .with_plan(serde_json::from_str(fine).unwrap())
                .with_count(Count::Infinity);
            assert_eq!(spec.plan_warning(), None, "{fine}");
        }
    }
}
