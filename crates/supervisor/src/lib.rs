//! # troupe-supervisor
//!
//! The `supervisor` role: keeps OS services and actors alive under per-child restart plans in
//! the style of Erlang's `director`.
//!
//! - [`plan`]: restart plans ([`Plan`], [`PlanElement`], [`Count`] within a period:
//!   [`Intensity`]) and their evaluation.
//! - [`spec`]: child specs ([`ChildSpec`]), the default spec and director's `append` merge.
//! - [`core`]: [`SupervisorCore`], the sans-IO state machine: children, ordering, decisions,
//!   API rules.
//! - [`status`]: what operators see of a child ([`ServiceStatus`]); [`logs`]: each service's
//!   recent output lines ([`LogLine`]); [`reload`]: applying a new `[supervisor]` table
//!   ([`ReloadReport`]).
//! - [`requirements`]: services and the cluster: the names and addresses of `requires` and
//!   `endpoints`, `${cluster.RESOURCE.ENDPOINT}` arguments, the `TROUPE_REQ_…` environment
//!   and the `notify` payload ([`OnRequirementChange`]).
//! - [`config`] and [`manifest`]: the `[supervisor]` table and `services_dir` manifests;
//!   [`limits`]: a service's identity and resource limits (`user`, `group`, `rlimits`,
//!   `memory_max`, `cpu_max`, `pids_max`, `umask`) and its `env_file`.
//! - [`Supervisor`]: the actor that owns processes, actor children and timers; its API is in
//!   [`messages`]. [`SupervisorRole`] is the role; it uses the cluster client's
//!   `ClusterHandle` and publishes a `SupervisorLink` (see `troupe_core::cluster` and
//!   `troupe_core::services`).
//!
//! Internals: `process` and `exec` (clone + exec on dedicated threads, pidfd exit watch,
//! process groups), `output` (bounded line capture, rotated log files), `ready` (readiness probes),
//! [`actor_child`] (actor children on their own arbiters).

#![warn(missing_docs, unreachable_pub)]

pub mod actor_child;
pub mod config;
pub mod contain;
pub mod core;
pub mod limits;
pub mod logs;
pub mod manifest;
pub mod messages;
pub mod plan;
pub mod reload;
pub mod requirements;
pub mod spec;
pub mod status;

mod actor;
mod exec;
mod output;
mod process;
mod ready;
mod role;

pub use actor::{nested_supervisor, Escalation, Supervisor, SupervisorSetup};
pub use actor_child::{ActorFactory, ExitNotice};
pub use config::{DefaultConfig, ServiceConfig, SupervisorConfig};
pub use core::{ChildCounts, ChildError, ChildInfo, ChildStatus, SupervisorCore};
pub use logs::{LogLine, ServiceLogs};
pub use plan::{Backoff, Count, Exhaustion, ExitReason, Intensity, Plan, PlanElement, PlanFn};
pub use reload::{ReloadFailure, ReloadReport};
pub use requirements::{OnRequirementChange, RequirementsView};
pub use role::SupervisorRole;
pub use spec::{
    ChildSpec, ChildStart, ChildType, DefaultSpec, OnExhausted, ProcessSpec, ReadyCheck,
};
pub use status::{
    BrokerStatus, ExitCounts, ExitKind, LastExit, RequirementsStatus, ServiceMetrics, ServiceState,
    ServiceStatus,
};
