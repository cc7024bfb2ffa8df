//! What a starting role receives from its node: the node's identity, a registry where roles
//! publish the actor addresses other roles may use, and a handle to ask the node to stop.

use std::any::{Any, TypeId};
use std::collections::HashMap;
use std::sync::{Arc, Mutex};

/// Why a role asks its node to stop, and with which exit code.
#[derive(Debug, Clone)]
pub struct NodeStopRequest {
    /// The role asking.
    pub role: String,
    /// A sentence for the log.
    pub reason: String,
    /// The process exit code once every role has stopped (0 for a clean stop).
    pub exit_code: i32,
}

/// A handle any thread may use to ask the node to stop.
#[derive(Clone)]
pub struct NodeControl {
    tx: tokio::sync::mpsc::UnboundedSender<NodeStopRequest>,
}

impl NodeControl {
    /// A control handle and the receiving end the node listens on.
    pub fn channel() -> (Self, tokio::sync::mpsc::UnboundedReceiver<NodeStopRequest>) {
        let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
        (NodeControl { tx }, rx)
    }

    /// Asks the node to stop all roles and exit with `request.exit_code`.
    pub fn request_stop(&self, request: NodeStopRequest) {
        // A closed channel means the node is already stopping.
        let _ = self.tx.send(request);
    }
}

/// Actor addresses and other handles published by running roles, keyed by type.
#[derive(Clone, Default)]
pub struct Published {
    slots: Arc<Mutex<HashMap<TypeId, Box<dyn Any + Send>>>>,
}

impl Published {
    /// Makes `value` available to roles that start later.
    pub fn publish<T: Clone + Send + 'static>(&self, value: T) {
        let mut slots = self.slots.lock().unwrap_or_else(|e| e.into_inner());
        slots.insert(TypeId::of::<T>(), Box::new(value));
    }

    /// The published value of type `T`, if a role published one.
    pub fn lookup<T: Clone + Send + 'static>(&self) -> Option<T> {
        let slots = self.slots.lock().unwrap_or_else(|e| e.into_inner());
        slots
            .get(&TypeId::of::<T>())
            .and_then(|value| value.downcast_ref::<T>())
            .cloned()
    }
}

/// What names this node among the nodes of the same name on its machine: the path of its
/// control socket, which only one live node holds. The node publishes it before its roles
/// start.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeInstance(pub String);

/// Everything a role gets when it starts.
#[derive(Clone)]
pub struct RoleContext {
    /// The node's name (unique in a cluster).
    pub node: Arc<str>,
    /// The role being started.
    pub role: &'static str,
    /// Names of every role selected on this node, in start order.
    pub roles: Arc<[String]>,
    /// The node's whole effective configuration, for roles that read shared sections.
    pub config: Arc<serde_json::Value>,
    /// Addresses published by roles started earlier.
    pub published: Published,
    /// Asks the node to stop (escalation, fatal errors).
    pub control: NodeControl,
}

impl RoleContext {
    /// Whether `role` runs on this node.
    pub fn has_role(&self, role: &str) -> bool {
        self.roles.iter().any(|r| r == role)
    }

    /// Asks the node to stop with `exit_code`, naming this role and `reason`.
    pub fn stop_node(&self, reason: impl Into<String>, exit_code: i32) {
        self.control.request_stop(NodeStopRequest {
            role: self.role.to_string(),
            reason: reason.into(),
            exit_code,
        });
    }
}
