//! Applying a new `[supervisor]` table to a running supervisor
//! ([`ApplyConfig`](crate::messages::ApplyConfig)): what the reload did, by service id.
//!
//! The supervisor remembers which children came from configuration (config services and
//! `services_dir` manifests). A reload builds the new set as the role does at start, and
//! compares it by id with what runs: new ids are started, ids no longer configured are stopped
//! and deleted, ids whose spec would run differently (including through a changed
//! `[supervisor.default]` for `append = true` services) are stopped and started again, and the
//! others are not touched. Children added through the API are never part of it. The decision
//! is [`SupervisorCore::plan_reload`](crate::SupervisorCore::plan_reload).

use serde::Serialize;

use crate::config::SupervisorConfig;

/// What a reload did (or, for a dry run, would do).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct ReloadReport {
    /// Services started (new ids, or configured ids no longer present).
    pub added: Vec<String>,
    /// Services stopped and deleted (no longer configured).
    pub removed: Vec<String>,
    /// Services stopped and started again with their new spec.
    pub changed: Vec<String>,
    /// Services left as they are.
    pub unchanged: Vec<String>,
    /// Services that could not be used (broken manifests, ids held by API children, refused
    /// specs).
    pub failed: Vec<ReloadFailure>,
    /// Changed keys that take effect only when the node restarts (`supervisor.max_children`,
    /// `supervisor.state_dir`, `supervisor.max_line_bytes`).
    pub needs_restart: Vec<String>,
}

/// A service a reload could not use.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ReloadFailure {
    /// The service.
    pub id: String,
    /// Why; a manifest's names the file and the field.
    pub error: String,
}

/// The keys only a node restart applies.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct RestartOnly {
    max_children: usize,
    state_dir: String,
    max_line_bytes: usize,
}

impl RestartOnly {
    pub(crate) fn of(config: &SupervisorConfig) -> Self {
        RestartOnly {
            max_children: config.max_children,
            state_dir: config.state_dir.clone(),
            max_line_bytes: config.max_line_bytes,
        }
    }

    /// The keys of `new` that differ from the running ones.
    pub(crate) fn changed_in(&self, new: &SupervisorConfig) -> Vec<String> {
        let mut keys = Vec::new();
        if new.max_children != self.max_children {
            keys.push("supervisor.max_children".to_string());
        }
        if new.state_dir != self.state_dir {
            keys.push("supervisor.state_dir".to_string());
        }
        if new.max_line_bytes != self.max_line_bytes {
            keys.push("supervisor.max_line_bytes".to_string());
        }
        keys
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn restart_only_keys_are_named() {
        let running = RestartOnly::of(&SupervisorConfig::default());
        assert!(running.changed_in(&SupervisorConfig::default()).is_empty());
        let new = SupervisorConfig {
            max_children: 5,
            state_dir: "/x".into(),
            log_lines: 3,
            ..SupervisorConfig::default()
        };
        assert_eq!(
            running.changed_in(&new),
            ["supervisor.max_children", "supervisor.state_dir"]
        );
    }
}
