//! What operators see of a child: its state in plain words, the current run (pid, generation,
//! start time), where it is in its plan, how its last run ended and the spec it runs with, in
//! the keys of a `[[supervisor.services]]` entry. Built by the core
//! ([`SupervisorCore::service_statuses`](crate::SupervisorCore::service_statuses)).

use serde::Serialize;

use crate::limits::{ByteSize, RlimitSetting};
use crate::plan::{duration_text, ExitReason};
use crate::spec::{ChildSpec, ChildStart, ChildType, OnExhausted, ReadyCheck};

/// A child's state as operators see it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ServiceState {
    /// Spawned (or being spawned); its readiness check has not passed yet.
    Starting,
    /// Up; it has no readiness check.
    Running,
    /// Up, and its readiness check passed.
    Ready,
    /// Being stopped.
    Stopping,
    /// Down; `waiting_for` says until what.
    Waiting,
    /// Down until every resource it `requires` has an online provider; `waiting_for` lists
    /// the missing ones (`broker, db`).
    WaitingForRequirements,
    /// Down for good until an operator starts it (`failure` says why): its restart plan is
    /// used up, or it cannot be started at all (a broken manifest).
    Failed,
    /// Removed (plan `delete`, `delete_child` or a reload); kept for a while for operators.
    Deleted,
}

impl ServiceState {
    /// Every state, in the order metrics list them.
    pub const ALL: [ServiceState; 8] = [
        ServiceState::Starting,
        ServiceState::Running,
        ServiceState::Ready,
        ServiceState::Stopping,
        ServiceState::Waiting,
        ServiceState::WaitingForRequirements,
        ServiceState::Failed,
        ServiceState::Deleted,
    ];

    /// The state's name, as the API shows it (`waiting_for_requirements`).
    pub fn as_str(self) -> &'static str {
        match self {
            ServiceState::Starting => "starting",
            ServiceState::Running => "running",
            ServiceState::Ready => "ready",
            ServiceState::Stopping => "stopping",
            ServiceState::Waiting => "waiting",
            ServiceState::WaitingForRequirements => "waiting_for_requirements",
            ServiceState::Failed => "failed",
            ServiceState::Deleted => "deleted",
        }
    }

    /// Whether the service is up: it runs and, when it has a readiness check, passed it.
    pub fn is_up(self) -> bool {
        matches!(self, ServiceState::Running | ServiceState::Ready)
    }
}

/// How a run of a child ended, as metrics count exits: a small fixed set.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ExitKind {
    /// A process exited by itself with a status (0 included).
    Exited,
    /// A process was killed by a signal it was not asked to die of.
    Killed,
    /// A process was killed by the kernel's OOM killer.
    OomKilled,
    /// The child could not be started.
    StartFailed,
    /// The child did not pass its readiness check in time (and was stopped).
    NotReady,
    /// An actor stopped itself.
    Stopped,
    /// An actor panicked.
    Panicked,
    /// A nested supervisor escalated.
    Escalated,
    /// The node or an operator asked for the stop (stop, restart, reload, shutdown): not a
    /// crash.
    Requested,
}

impl ExitKind {
    /// Every kind, in the order metrics list them.
    pub const ALL: [ExitKind; 9] = [
        ExitKind::Exited,
        ExitKind::Killed,
        ExitKind::OomKilled,
        ExitKind::StartFailed,
        ExitKind::NotReady,
        ExitKind::Stopped,
        ExitKind::Panicked,
        ExitKind::Escalated,
        ExitKind::Requested,
    ];

    /// The kinds a process child's runs can end with.
    pub const PROCESS: [ExitKind; 6] = [
        ExitKind::Exited,
        ExitKind::Killed,
        ExitKind::OomKilled,
        ExitKind::StartFailed,
        ExitKind::NotReady,
        ExitKind::Requested,
    ];

    /// The kinds an actor child's runs can end with.
    pub const ACTOR: [ExitKind; 5] = [
        ExitKind::Stopped,
        ExitKind::Panicked,
        ExitKind::Escalated,
        ExitKind::StartFailed,
        ExitKind::Requested,
    ];

    /// The kind's name (`oom_killed`).
    pub fn as_str(self) -> &'static str {
        match self {
            ExitKind::Exited => "exited",
            ExitKind::Killed => "killed",
            ExitKind::OomKilled => "oom_killed",
            ExitKind::StartFailed => "start_failed",
            ExitKind::NotReady => "not_ready",
            ExitKind::Stopped => "stopped",
            ExitKind::Panicked => "panicked",
            ExitKind::Escalated => "escalated",
            ExitKind::Requested => "requested",
        }
    }

    /// The kind of an exit for `reason` that nobody asked for.
    pub fn of(reason: &ExitReason) -> ExitKind {
        match reason {
            ExitReason::Exited(_) => ExitKind::Exited,
            ExitReason::Signaled(_) => ExitKind::Killed,
            ExitReason::OomKilled(_) => ExitKind::OomKilled,
            ExitReason::StartFailed(_) => ExitKind::StartFailed,
            ExitReason::NotReady(_) => ExitKind::NotReady,
            ExitReason::Stopped => ExitKind::Stopped,
            ExitReason::Panicked => ExitKind::Panicked,
            ExitReason::Escalated(_) => ExitKind::Escalated,
        }
    }

    /// The kinds a child of `kind` (`process` or `actor`) can end with.
    pub fn for_child(kind: &str) -> &'static [ExitKind] {
        if kind == "actor" {
            &ExitKind::ACTOR
        } else {
            &ExitKind::PROCESS
        }
    }

    fn index(self) -> usize {
        self as usize
    }
}

/// A child's exits counted by [`ExitKind`] since it was added.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ExitCounts([u64; ExitKind::ALL.len()]);

impl ExitCounts {
    /// Exits of `kind`.
    pub fn get(&self, kind: ExitKind) -> u64 {
        self.0[kind.index()]
    }

    /// Counts one exit of `kind`.
    pub fn count(&mut self, kind: ExitKind) {
        self.0[kind.index()] = self.0[kind.index()].saturating_add(1);
    }
}

/// What metrics show of one child (see [`crate::messages::GetServiceMetrics`]).
#[derive(Debug, Clone, PartialEq)]
pub struct ServiceMetrics {
    /// The child's id.
    pub id: String,
    /// `process` or `actor`.
    pub kind: &'static str,
    /// Its state.
    pub state: ServiceState,
    /// Restarts its plan decided since it was added to this supervisor (never reset, unlike
    /// [`ServiceStatus::restarts`]).
    pub restarts_total: u64,
    /// Its exits since it was added, by kind.
    pub exits: ExitCounts,
    /// Start of the current run, in milliseconds since the Unix epoch.
    pub started_at_unix_ms: Option<u64>,
    /// How its last run ended: the exit status, or 128 + the signal number for a process
    /// killed by a signal; `None` before the first exit and for actors.
    pub last_exit_code: Option<i32>,
    /// The cgroup folder of the current run (a running process child, with the cgroup
    /// mechanism).
    pub cgroup: Option<std::path::PathBuf>,
}

/// How a child's last run ended.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct LastExit {
    /// The reason, as the logs show it (for a failed readiness check: `not ready within N ms`).
    pub reason: String,
    /// Exit status, when the process exited.
    pub status: Option<i32>,
    /// Signal number, when the process was killed by one.
    pub signal: Option<i32>,
    /// Its name, e.g. `SIGTERM`.
    pub signal_name: Option<String>,
    /// When the exit was handled, in milliseconds since the Unix epoch.
    pub at_unix_ms: u64,
    /// The supervisor or an operator asked for this stop (not a crash).
    pub requested: bool,
}

impl LastExit {
    /// An exit shown as `shown` (what the plan was applied to) that happened as `actual`.
    pub(crate) fn new(
        shown: &ExitReason,
        actual: &ExitReason,
        at_unix_ms: u64,
        requested: bool,
    ) -> Self {
        let signal = actual.signal();
        LastExit {
            reason: shown.to_string(),
            status: actual.status(),
            signal,
            signal_name: signal.and_then(signal_name),
            at_unix_ms,
            requested,
        }
    }
}

/// One child, for operators.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ServiceStatus {
    /// The child's id.
    pub id: String,
    /// `process` or `actor`.
    pub kind: &'static str,
    /// Worker or supervisor.
    pub child_type: ChildType,
    /// Its state.
    pub state: ServiceState,
    /// For [`ServiceState::Waiting`]: `restart` (a restart timer is armed), `after` (it waits
    /// for the children named in its `after`), `start` (down until started: plan `wait`, or
    /// stopped by an operator). For [`ServiceState::WaitingForRequirements`]: the required
    /// resources without a provider, comma-separated (`broker, db`).
    pub waiting_for: Option<String>,
    /// Time left before the armed restart timer fires.
    pub restart_in_ms: Option<u64>,
    /// For [`ServiceState::Failed`]: why (`exhausted its restart plan: 5 cycles within 60s;
    /// last exit: ...`, or what is wrong with its manifest).
    pub failure: Option<String>,
    /// Process id of the current run.
    pub pid: Option<u32>,
    /// Generation of the current or last run (0: never started).
    pub generation: u64,
    /// Start of the current run, in milliseconds since the Unix epoch.
    pub started_at_unix_ms: Option<u64>,
    /// Age of the current run.
    pub uptime_ms: Option<u64>,
    /// Restarts its plan has decided so far.
    pub restarts: u64,
    /// Restarts its plan decided within the last hour (at most the latest
    /// [`RESTART_RECORD`](crate::core::RESTART_RECORD) are remembered).
    pub restarts_last_hour: u64,
    /// The plan, as `get_plan` shows it.
    pub plan: String,
    /// Index (from 0) of the plan element the next unplanned exit will use.
    pub plan_position: usize,
    /// Number of elements in the plan.
    pub plan_length: usize,
    /// Completed runs of the whole plan.
    pub cycle: u64,
    /// How many cycles may complete within `period_ms`.
    pub count: String,
    /// Cycles completed within the last `period_ms` (the plan is used up at the next
    /// unplanned exit once this reaches `count`); `None` with count `infinity`.
    pub cycles_in_period: Option<u64>,
    /// The window of `count`, in milliseconds.
    pub period_ms: u64,
    /// Shortest time between two starts its plan decides, in milliseconds.
    pub min_restart_interval_ms: u64,
    /// What happens when its plan is used up: `fail` or `stop_node`.
    pub on_exhausted: OnExhausted,
    /// How its processes are contained (process children): `cgroup` (with the cgroup's path)
    /// or `process group`; see `contain.rs`.
    pub containment: Option<String>,
    /// How its last run ended.
    pub last_exit: Option<LastExit>,
    /// For a child that `requires` resources: their providers as the supervisor last heard.
    pub requirements: Option<RequirementsStatus>,
    /// For a child with `ready = { broker = "..." }` that runs, what the broker on this node
    /// says of that broker service (only in a single service's status, and only when a broker
    /// is attached and answers at once).
    pub broker: Option<BrokerStatus>,
    /// The spec as it runs (merged with the default when it appends), in the keys of a
    /// `[[supervisor.services]]` entry; for an actor `{id, kind, plan, count, period,
    /// min_restart_interval, on_exhausted, terminate_timeout_ms, type}`.
    pub spec: serde_json::Value,
}

/// What a child that requires cluster resources sees of them.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct RequirementsStatus {
    /// The required resources without an online provider (or not heard of yet).
    pub unmet: Vec<String>,
    /// For each required resource, the nodes that provide it, in name order.
    pub providers: std::collections::BTreeMap<String, Vec<String>>,
}

/// What the broker on this node says of a `ready = { broker = "SERVICE" }` child.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct BrokerStatus {
    /// The broker service.
    pub service: String,
    /// Whether the broker serves it.
    pub known: bool,
    /// Whether a worker of the child's current process has said READY and is connected.
    pub ready: bool,
    /// Workers connected to the broker service, from every process.
    pub workers: usize,
    /// Requests waiting for a worker.
    pub queue_depth: usize,
}

/// The name of signal `signal` (`SIGTERM`, `SIGRTMIN+3`), if it is one.
pub fn signal_name(signal: i32) -> Option<String> {
    if let Ok(known) = nix::sys::signal::Signal::try_from(signal) {
        return Some(known.as_str().to_string());
    }
    let (min, max) = (libc::SIGRTMIN(), libc::SIGRTMAX());
    (min..=max)
        .contains(&signal)
        .then(|| format!("SIGRTMIN+{}", signal - min))
}

/// Whether `signal` is a signal number that can be sent (1 to `SIGRTMAX`).
pub fn is_signal(signal: i32) -> bool {
    (1..=libc::SIGRTMAX()).contains(&signal)
}

/// `spec` in the keys of a `[[supervisor.services]]` entry (every key, `null` when unset).
/// A plan function shows as `"fn:<name>"`.
pub fn spec_json(spec: &ChildSpec) -> serde_json::Value {
    use serde_json::json;
    let millis = |d: std::time::Duration| u64::try_from(d.as_millis()).unwrap_or(u64::MAX);
    match &spec.start {
        ChildStart::Actor(_) => json!({
            "id": spec.id,
            "kind": "actor",
            "plan": spec.plan,
            "count": spec.count,
            "period": duration_text(spec.period),
            "min_restart_interval": duration_text(spec.min_restart_interval),
            "on_exhausted": spec.on_exhausted,
            "terminate_timeout_ms": millis(spec.terminate_timeout),
            "type": spec.child_type,
            "requires": spec.requires,
            "requirements_timeout": duration_text(spec.requirements_timeout),
            "on_requirement_change": spec.on_requirement_change,
            "endpoints": spec.endpoints,
        }),
        ChildStart::Process(p) => {
            let ready = spec.ready.as_ref().map(|r| match r {
                ReadyCheck::Tcp(addr) => json!({ "tcp": addr }),
                ReadyCheck::LogLine(re) => json!({ "log_line": re.as_str() }),
                ReadyCheck::Exec(argv) => json!({ "exec": argv }),
                ReadyCheck::Broker(service) => json!({ "broker": service }),
            });
            json!({
                "id": spec.id,
                "command": p.command,
                "args": p.args,
                "env": p.env,
                "inherit_env": p.inherit_env,
                "cwd": p.cwd.as_ref().map(|c| c.to_string_lossy()),
                "plan": spec.plan,
                "count": spec.count,
                "period": duration_text(spec.period),
                "min_restart_interval": duration_text(spec.min_restart_interval),
                "on_exhausted": spec.on_exhausted,
                "terminate_timeout_ms": millis(spec.terminate_timeout),
                "type": spec.child_type,
                "append": spec.append,
                "after": spec.after,
                "ready": ready,
                "start_timeout_ms": millis(spec.start_timeout),
                "log_file": p.log_file,
                "user": p.user,
                "group": p.group,
                "rlimits": p
                    .rlimits
                    .iter()
                    .map(|(resource, limit)| {
                        (resource.name().to_string(), RlimitSetting::of(*resource, *limit))
                    })
                    .collect::<std::collections::BTreeMap<_, _>>(),
                "memory_max": p.memory_max.map(ByteSize),
                "cpu_max": p.cpu_max,
                "pids_max": p.pids_max,
                "env_file": p.env_file.as_ref().map(|f| f.to_string_lossy()),
                "umask": p.umask,
                "requires": spec.requires,
                "requirements_timeout": duration_text(spec.requirements_timeout),
                "on_requirement_change": spec.on_requirement_change,
                "endpoints": spec.endpoints,
            })
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::ServiceConfig;

    #[test]
    fn signals_have_names_and_bounds() {
        assert_eq!(signal_name(15).as_deref(), Some("SIGTERM"));
        assert_eq!(signal_name(9).as_deref(), Some("SIGKILL"));
        assert_eq!(
            signal_name(libc::SIGRTMIN() + 1).as_deref(),
            Some("SIGRTMIN+1")
        );
        assert_eq!(signal_name(0), None);
        assert_eq!(signal_name(1000), None);
        assert!(is_signal(libc::SIGUSR1));
        assert!(!is_signal(0) && !is_signal(-1) && !is_signal(libc::SIGRTMAX() + 1));
    }

    #[test]
    fn a_process_spec_reads_back_as_a_service_entry() {
        let entry: ServiceConfig = serde_json::from_value(serde_json::json!({
            "id": "web",
            "command": "/bin/web",
            "args": ["-p", "80", "--broker=${cluster.broker.frontend}"],
            "env": {"MODE": "x"},
            "cwd": "/srv",
            "plan": ["restart", {"restart_after_ms": 100}],
            "count": "infinity",
            "min_restart_interval": "0s",
            "after": [],
            "ready": {"log_line": "listening"},
            "start_timeout_ms": 2000,
            "log_file": {"path": "/tmp/web.log"},
            "rlimits": {"nofile": 4096, "nproc": [256, 512], "core": 0, "as": "2GiB", "cpu": "infinity"},
            "memory_max": "512MiB",
            "cpu_max": "50%",
            "pids_max": 64,
            "env_file": "/etc/web.env",
            "umask": "0027",
            "requires": ["broker"],
            "on_requirement_change": "notify",
            "endpoints": {"http": "tcp://127.0.0.1:8080"}
        }))
        .unwrap();
        let spec = entry
            .to_spec("web", None, "/state/web/config.json".into())
            .unwrap();
        let shown = spec_json(&spec);
        assert_eq!(shown["terminate_timeout_ms"], 1000);
        assert_eq!(shown["type"], "worker");
        assert_eq!(shown["ready"]["log_line"], "listening");
        assert_eq!(shown["period"], "60s");
        assert_eq!(shown["min_restart_interval"], "0s");
        assert_eq!(shown["on_exhausted"], "fail");
        assert_eq!(shown["rlimits"]["as"], "2GiB");
        assert_eq!(shown["rlimits"]["nproc"], serde_json::json!([256, 512]));
        assert_eq!(shown["memory_max"], "512MiB");
        assert_eq!(shown["cpu_max"], "50%");
        assert_eq!(shown["umask"], "0027");
        assert_eq!(shown["user"], serde_json::Value::Null);
        assert_eq!(shown["requires"], serde_json::json!(["broker"]));
        assert_eq!(shown["requirements_timeout"], "60s");
        assert_eq!(shown["on_requirement_change"], "notify");
        assert_eq!(shown["endpoints"]["http"], "tcp://127.0.0.1:8080");
        // Every key of an entry, and it parses back to the same entry.
        let again: ServiceConfig = serde_json::from_value(shown).unwrap();
        assert_eq!(
            again,
            ServiceConfig {
                terminate_timeout_ms: Some(1000),
                period: Some(troupe_core::settings::Duration::from_secs(60)),
                on_exhausted: Some(OnExhausted::Fail),
                requirements_timeout: Some(troupe_core::settings::Duration::from_secs(60)),
                ..entry
            }
        );
        assert!(again
            .to_spec("web", None, "/state/web/config.json".into())
            .unwrap()
            .same_as(&spec));
    }
}
