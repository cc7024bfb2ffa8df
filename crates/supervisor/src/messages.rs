//! The supervisor's API: one actix message per director call, sent to
//! [`Addr<Supervisor>`](crate::Supervisor) (published by the role in the node's registry),
//! and the operators' calls: statuses, restart, signals, recent output, adding a service from
//! a config entry, and applying a new `[supervisor]` table.
//! The ipc calls `push_config` and `invoke` are the core contract's
//! [`PushConfig`](troupe_core::services::PushConfig) and
//! [`Invoke`](troupe_core::services::Invoke) messages.

use actix::Message;

use crate::config::{ServiceConfig, SupervisorConfig};
use crate::core::{ChildCounts, ChildError, ChildInfo};
use crate::logs::ServiceLogs;
use crate::plan::{Count, Plan};
use crate::reload::ReloadReport;
use crate::spec::{ChildSpec, DefaultSpec};
use crate::status::{ServiceMetrics, ServiceStatus};

/// Adds a child and starts it. Answers once it has started (its pid for a process, `None` for
/// an actor or a child that waits for its `after` children).
#[derive(Debug, Message)]
#[rtype(result = "Result<Option<u32>, ChildError>")]
pub struct StartChild(pub ChildSpec);

/// Starts a child that is down (plan `wait`, terminated), or failed because its restart plan
/// was used up (its plan counters start from zero); a child that cannot be started at all (a
/// broken manifest) answers [`ChildError::Failed`]. Answers like [`StartChild`].
#[derive(Debug, Message)]
#[rtype(result = "Result<Option<u32>, ChildError>")]
pub struct RestartChild(pub String);

/// Stops a child and keeps its spec. Answers once it has stopped.
#[derive(Debug, Message)]
#[rtype(result = "Result<(), ChildError>")]
pub struct TerminateChild(pub String);

/// Forgets a child that is down.
#[derive(Debug, Message)]
#[rtype(result = "Result<(), ChildError>")]
pub struct DeleteChild(pub String);

/// Every child and its state.
#[derive(Debug, Message)]
#[rtype(result = "Vec<ChildInfo>")]
pub struct WhichChildren;

/// Counts of children, as director reports them.
#[derive(Debug, Message)]
#[rtype(result = "ChildCounts")]
pub struct CountChildren;

/// Every running process child and its pid.
#[derive(Debug, Message)]
#[rtype(result = "Vec<(String, u32)>")]
pub struct GetPids;

/// The pid of a running process child.
#[derive(Debug, Message)]
#[rtype(result = "Result<u32, ChildError>")]
pub struct GetPid(pub String);

/// A child's spec as it runs (merged with the default when it appends).
#[derive(Debug, Message)]
#[rtype(result = "Result<ChildSpec, ChildError>")]
pub struct GetChildSpec(pub String);

/// A child's plan.
#[derive(Debug, Message)]
#[rtype(result = "Result<Plan, ChildError>")]
pub struct GetPlan(pub String);

/// Replaces a child's plan (and count, if given) and resets its plan counters.
#[derive(Debug, Message)]
#[rtype(result = "Result<(), ChildError>")]
pub struct ChangePlan {
    /// The child.
    pub id: String,
    /// The new plan.
    pub plan: Plan,
    /// A new count, or keep the current one.
    pub count: Option<Count>,
}

/// The default child spec.
#[derive(Debug, Message)]
#[rtype(result = "DefaultSpec")]
pub struct GetDefaultChildSpec;

/// Replaces the default child spec; children added from now on that append are merged with
/// it.
#[derive(Debug, Message)]
#[rtype(result = "()")]
pub struct ChangeDefaultChildSpec(pub DefaultSpec);

/// Every child's status, in the order added, followed by the recently deleted ones (at most
/// [`TOMBSTONES`](crate::core::TOMBSTONES), oldest first).
#[derive(Debug, Message)]
#[rtype(result = "Vec<ServiceStatus>")]
pub struct ServiceStatuses;

/// What metrics show of every child, in the order added, followed by the recently deleted
/// ones: a lean answer (no spec, no plan text), cheap enough to ask at every scrape.
#[derive(Debug, Message)]
#[rtype(result = "Vec<ServiceMetrics>")]
pub struct GetServiceMetrics;

/// One child's status; a recently deleted id answers its last status (state `deleted`).
#[derive(Debug, Message)]
#[rtype(result = "Result<ServiceStatus, ChildError>")]
pub struct GetServiceStatus(pub String);

/// An operator's restart: a running child is stopped (SIGTERM, terminate timeout, SIGKILL;
/// not a crash: the plan and its counters are left alone) and started again at once; a child
/// that is down is started now (an armed restart timer is cancelled; one whose restart plan
/// was used up gets its plan counters from zero); a child being stopped is started once it
/// has stopped. Answers the new pid (`None` for an actor) once started.
#[derive(Debug, Message)]
#[rtype(result = "Result<Option<u32>, ChildError>")]
pub struct RestartService(pub String);

/// Sends a signal to a running process child's main process (not its group). An exit it
/// causes is handled by the plan like any other.
#[derive(Debug, Message)]
#[rtype(result = "Result<(), ChildError>")]
pub struct SignalChild {
    /// The child.
    pub id: String,
    /// The signal number.
    pub signal: i32,
}

/// A service's recent output lines, and optionally the lines that follow.
#[derive(Debug, Message)]
#[rtype(result = "Result<ServiceLogs, ChildError>")]
pub struct GetLogs {
    /// The child.
    pub id: String,
    /// How many of the latest lines.
    pub lines: usize,
    /// Also answer a receiver of every later line.
    pub follow: bool,
}

/// Adds a service from a `[[supervisor.services]]` entry (checked as config services are; its
/// `config.json` is `<state_dir>/<id>/config.json`) and starts it. Answers like
/// [`StartChild`]. A reload does not touch it.
#[derive(Debug, Message)]
#[rtype(result = "Result<Option<u32>, ChildError>")]
pub struct AddService(pub ServiceConfig);

/// Applies a new `[supervisor]` table: services from configuration are added, removed,
/// restarted when their spec changed, or left alone; the default spec and the output ring
/// bounds take effect; other changed keys are listed as needing a node restart. With
/// `dry_run` nothing changes. Answers once the stops have completed and the starts have been
/// issued.
#[derive(Debug, Message)]
#[rtype(result = "Result<ReloadReport, ChildError>")]
pub struct ApplyConfig {
    /// The new table.
    pub config: SupervisorConfig,
    /// Only report what would change.
    pub dry_run: bool,
}
