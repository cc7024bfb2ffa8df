//! The supervisor's API: one actix message per director call, sent to
//! [`Addr<Supervisor>`](crate::Supervisor) (published by the role in the node's registry).
//! The ipc calls `push_config` and `invoke` are the core contract's
//! [`PushConfig`](troupe_core::services::PushConfig) and
//! [`Invoke`](troupe_core::services::Invoke) messages.

use actix::Message;

use crate::core::{ChildCounts, ChildError, ChildInfo};
use crate::plan::{Count, Plan};
use crate::spec::{ChildSpec, DefaultSpec};

/// Adds a child and starts it. Answers once it has started (its pid for a process, `None` for
/// an actor or a child that waits for its `after` children).
#[derive(Debug, Message)]
#[rtype(result = "Result<Option<u32>, ChildError>")]
pub struct StartChild(pub ChildSpec);

/// Starts a child that is down (plan `wait`, terminated). Answers like [`StartChild`].
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
