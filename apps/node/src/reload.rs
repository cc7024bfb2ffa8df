//! Reloading the configuration of a running node (`POST /v1/reload`, `troupe ctl reload`,
//! SIGHUP): re-read the same sources (the same file, the environment, the same flags),
//! validate the whole new configuration, and apply the difference.
//!
//! - The supervisor and the broker apply their own parts (services added, removed or changed;
//!   the supervisor's default spec and log rings) and report what they did.
//! - A changed `log_level` replaces the log filter (unless `--log-level` was given: a flag
//!   stays on top); a changed `shutdown_timeout` applies to the next stop.
//! - Every other changed key needs a node restart: it is listed and left alone, and stays
//!   listed on later reloads until the node restarts.
//!
//! A configuration that does not validate changes nothing: the answer is `check-config`'s
//! one-line error. A role that cannot apply a valid configuration (an address already taken)
//! keeps its running one, the others apply theirs, and the answer lists it under `failed`.

use std::collections::BTreeSet;

use actix::Addr;
use serde_json::{json, Map, Value};
use troupe_broker::actor::UpdateServices;
use troupe_broker::{BrokerActor, BrokerConfig};
use troupe_control::ReloadError;
use troupe_core::RoleSet;
use troupe_supervisor::messages::ApplyConfig;
use troupe_supervisor::{Supervisor, SupervisorConfig};

use crate::cli::NodeArgs;
use crate::compose::RunningNode;
use crate::settings::{self, NodeSettings};

/// Keys a reload applies while the node runs; every other changed key needs a restart.
const LIVE_KEYS: &[&str] = &[
    "log_level",
    "shutdown_timeout",
    "supervisor.services",
    "supervisor.services_dir",
    "supervisor.default",
    "supervisor.log_lines",
    "supervisor.log_bytes",
    "broker.service",
    "broker.frontend",
    "broker.backend",
    "broker.services",
    "broker.request_timeout",
    "broker.queue_limit",
    "broker.max_workers",
    "broker.retry_on_worker_loss",
    "broker.max_attempts",
];

/// What the node reloads from, and what it runs now.
pub struct Reloader<'a> {
    /// The roles this binary knows.
    pub known: &'a RoleSet,
    /// The flags the node was started with (config file, overrides).
    pub args: &'a NodeArgs,
    /// Where the config came from, as `/v1/node` shows it.
    pub source: String,
    /// The configuration in force: what the node started with, with the parts applied by
    /// reloads since.
    pub current: Value,
}

impl Reloader<'_> {
    /// Loads the configuration again and applies it to `node` (or, with `dry_run`, says what
    /// would change). Answers as `POST /v1/reload` does.
    pub async fn reload(
        &mut self,
        node: &mut RunningNode,
        dry_run: bool,
    ) -> Result<Value, ReloadError> {
        let new = crate::load(self.known, self.args)
            .map_err(|err| ReloadError::Invalid(err.to_string()))?;
        let changed = changed_keys(&self.current, &new.effective);
        let mut needs_restart: BTreeSet<String> = changed
            .iter()
            .filter(|key| !is_live(key))
            .cloned()
            .collect();
        let roles = role_names(&self.current);
        let mut report = Map::new();
        let mut changes = 0usize;

        // A role that cannot apply its part (a port already taken, say) keeps its running
        // configuration; the others still apply theirs, and the answer says what failed.
        let mut failed: Vec<(&str, String)> = Vec::new();
        if roles.contains("supervisor") {
            let config: SupervisorConfig = section(&new, "supervisor")?;
            let supervisor: Addr<Supervisor> =
                node.published.lookup().ok_or(ReloadError::Stopping)?;
            let answer = supervisor
                .send(ApplyConfig { config, dry_run })
                .await
                .map_err(|_| ReloadError::Stopping)?;
            match answer {
                Ok(done) => {
                    changes += done.added.len() + done.removed.len() + done.changed.len();
                    needs_restart.extend(done.needs_restart.iter().cloned());
                    report.insert("supervisor".into(), json!(done));
                }
                Err(err) => failed.push(("supervisor", err.to_string())),
            }
        }
        if roles.contains("broker") {
            let config: BrokerConfig = section(&new, "broker")?;
            let broker: Addr<BrokerActor> = node.published.lookup().ok_or(ReloadError::Stopping)?;
            let answer = broker
                .send(UpdateServices { config, dry_run })
                .await
                .map_err(|_| ReloadError::Stopping)?;
            match answer {
                Ok(done) => {
                    changes += done.added.len() + done.removed.len() + done.changed.len();
                    needs_restart.extend(done.needs_restart.iter().cloned());
                    report.insert("broker".into(), json!(done));
                }
                Err(err) => failed.push(("broker", err.to_string())),
            }
        }
        if changed.contains("log_level") && self.args.log_level.is_none() {
            let to = crate::logging::filter_text(&new.log_level);
            let from = crate::logging::current_filter();
            if !dry_run {
                crate::logging::set_filter(&new.log_level).map_err(ReloadError::Invalid)?;
            }
            changes += 1;
            report.insert("log_level".into(), json!({ "from": from, "to": to }));
        }
        if changed.contains("shutdown_timeout") {
            report.insert(
                "shutdown_timeout".into(),
                json!({ "from": node.shutdown_timeout.to_string(), "to": new.shutdown_timeout.to_string() }),
            );
            if !dry_run {
                node.shutdown_timeout = new.shutdown_timeout;
            }
            changes += 1;
        }
        if !dry_run {
            let mut kept = needs_restart.clone();
            kept.extend(failed.iter().map(|(role, _)| role.to_string()));
            self.current = applied(&self.current, &new.effective, &kept);
        }
        for (role, error) in &failed {
            report.insert((*role).into(), json!({ "error": error }));
        }
        report.insert(
            "failed".into(),
            json!(failed
                .iter()
                .map(|(role, error)| format!("{role}: {error}"))
                .collect::<Vec<_>>()),
        );
        report.insert("dry_run".into(), json!(dry_run));
        report.insert("config_source".into(), json!(self.source));
        report.insert("changes".into(), json!(changes));
        report.insert("needs_restart".into(), json!(needs_restart));
        Ok(Value::Object(report))
    }
}

fn section<T: serde::de::DeserializeOwned>(
    new: &NodeSettings,
    role: &str,
) -> Result<T, ReloadError> {
    serde_json::from_value(new.effective[role].clone())
        .map_err(|err| ReloadError::Invalid(format!("{role}: {err}")))
}

fn role_names(effective: &Value) -> BTreeSet<String> {
    effective["roles"]
        .as_array()
        .map(|roles| {
            roles
                .iter()
                .filter_map(|r| r.as_str().map(str::to_string))
                .collect()
        })
        .unwrap_or_default()
}

fn is_live(key: &str) -> bool {
    LIVE_KEYS.iter().any(|live| {
        key == *live
            || key
                .strip_prefix(live)
                .is_some_and(|rest| rest.starts_with('.'))
    })
}

/// The dotted keys whose values differ between `old` and `new` (a list is one value). Only
/// the node's own keys and the tables of the roles it runs are compared: a table kept for a
/// role the node does not run changes nothing.
pub fn changed_keys(old: &Value, new: &Value) -> BTreeSet<String> {
    let roles = role_names(old);
    let mut changed = BTreeSet::new();
    let keys: BTreeSet<&String> = object_keys(old).chain(object_keys(new)).collect();
    for key in keys {
        let compared = !settings::is_role_table(key) || roles.contains(key.as_str());
        if compared {
            diff(key, &old[key.as_str()], &new[key.as_str()], &mut changed);
        }
    }
    changed
}

fn object_keys(value: &Value) -> impl Iterator<Item = &String> {
    value.as_object().into_iter().flat_map(|map| map.keys())
}

fn diff(path: &str, old: &Value, new: &Value, changed: &mut BTreeSet<String>) {
    match (old, new) {
        (Value::Object(a), Value::Object(b)) => {
            let keys: BTreeSet<&String> = a.keys().chain(b.keys()).collect();
            for key in keys {
                let inner = format!("{path}.{key}");
                diff(
                    &inner,
                    a.get(key).unwrap_or(&Value::Null),
                    b.get(key).unwrap_or(&Value::Null),
                    changed,
                );
            }
        }
        (a, b) if a != b => {
            changed.insert(path.to_string());
        }
        _ => {}
    }
}

/// `new`, except at the keys that need a restart, which keep their `old` values: what the
/// node runs after a reload.
fn applied(old: &Value, new: &Value, needs_restart: &BTreeSet<String>) -> Value {
    let mut result = new.clone();
    for key in needs_restart {
        let pointer = format!("/{}", key.replace('.', "/"));
        let before = old.pointer(&pointer).cloned().unwrap_or(Value::Null);
        if let Some(slot) = result.pointer_mut(&pointer) {
            *slot = before;
        }
    }
    result
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn changed_keys_name_leaves_and_skip_tables_of_roles_not_run() {
        let old = json!({
            "roles": ["supervisor"],
            "log_level": "",
            "supervisor": { "max_children": 10, "services": [{ "id": "a" }] },
            "broker": { "frontend": "tcp://127.0.0.1:1" },
            "control": { "socket": "" },
        });
        let mut new = old.clone();
        new["log_level"] = json!("debug");
        new["supervisor"]["max_children"] = json!(20);
        new["supervisor"]["services"] = json!([{ "id": "b" }]);
        new["broker"]["frontend"] = json!("tcp://127.0.0.1:2");
        new["control"]["socket"] = json!("/run/x.ctl");
        let changed = changed_keys(&old, &new);
        let changed: Vec<&str> = changed.iter().map(String::as_str).collect();
        assert_eq!(
            changed,
            [
                "control.socket",
                "log_level",
                "supervisor.max_children",
                "supervisor.services"
            ]
        );
        assert!(is_live("supervisor.services"));
        assert!(is_live("log_level"));
        assert!(!is_live("supervisor.max_children"));
        assert!(!is_live("supervisor.services_dirx"));
    }

    #[test]
    fn keys_that_need_a_restart_keep_their_running_value() {
        let old = json!({ "control": { "socket": "/a" }, "log_level": "" });
        let new = json!({ "control": { "socket": "/b" }, "log_level": "debug" });
        let restart = BTreeSet::from(["control.socket".to_string()]);
        let now = applied(&old, &new, &restart);
        assert_eq!(now["control"]["socket"], "/a");
        assert_eq!(now["log_level"], "debug");
    }
}
