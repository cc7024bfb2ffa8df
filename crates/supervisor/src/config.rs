//! The `[supervisor]` config table: where services come from (`[[supervisor.services]]`, a
//! `services_dir` of manifests), the default child spec, limits, and the conversion of a
//! service entry into a [`ChildSpec`]. A manifest's `manifest.json` has the same fields as a
//! `[[supervisor.services]]` entry.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use troupe_core::settings::Duration as ConfigDuration;
use troupe_core::ConfigError;

use crate::limits::{
    check_identity, parse_rlimits, ByteSize, CpuMax, IdOrName, RlimitSetting, Umask,
};
use crate::plan::{Count, Plan, PlanElement};
use crate::requirements::OnRequirementChange;
use crate::spec::{
    check_id, ChildSpec, ChildStart, ChildType, DefaultSpec, LogFileSpec, OnExhausted, ProcessSpec,
    ReadyConfig, DEFAULT_COUNT, DEFAULT_MIN_RESTART_INTERVAL, DEFAULT_PERIOD,
    DEFAULT_REQUIREMENTS_TIMEOUT, DEFAULT_START_TIMEOUT,
};

/// In `command` and `args`, stands for the path of the running troupe executable.
pub const TROUPE_EXE: &str = "${TROUPE_EXE}";

/// Default of `log_lines`.
pub const DEFAULT_LOG_LINES: usize = 1000;
/// Largest `log_lines`.
pub const MAX_LOG_LINES: usize = 100_000;
/// Default of `log_bytes` (256 KiB).
pub const DEFAULT_LOG_BYTES: usize = 256 << 10;
/// Largest `log_bytes` (64 MiB).
pub const MAX_LOG_BYTES: usize = 64 << 20;

/// The `[supervisor]` table.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SupervisorConfig {
    /// Folder whose sub-folders each hold one service's `manifest.json` (and optionally its
    /// `config.json`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub services_dir: Option<PathBuf>,
    /// Where services from this file keep their `config.json` (`<state_dir>/<id>/`). Empty:
    /// `$STATE_DIRECTORY`, else `$XDG_STATE_HOME/troupe/<node>`, else
    /// `$HOME/.local/state/troupe/<node>`, else `/var/tmp/troupe-<node>`.
    pub state_dir: String,
    /// Most children this supervisor holds (services, manifests and API-started children).
    pub max_children: usize,
    /// Longer output lines are cut into pieces of this many bytes.
    pub max_line_bytes: usize,
    /// Recent output lines kept per service for the API (0: none; at most 100000).
    pub log_lines: usize,
    /// Bytes of recent output text kept per service for the API.
    pub log_bytes: usize,
    /// The default child spec that `append = true` services are merged with.
    pub default: DefaultConfig,
    /// The services.
    pub services: Vec<ServiceConfig>,
}

impl Default for SupervisorConfig {
    fn default() -> Self {
        SupervisorConfig {
            services_dir: None,
            state_dir: String::new(),
            max_children: 4096,
            max_line_bytes: 16 * 1024,
            log_lines: DEFAULT_LOG_LINES,
            log_bytes: DEFAULT_LOG_BYTES,
            default: DefaultConfig::default(),
            services: Vec::new(),
        }
    }
}

/// The `[supervisor.default]` table: director's default child spec.
#[derive(Debug, Clone, Serialize, Deserialize, Default)]
#[serde(deny_unknown_fields, default)]
pub struct DefaultConfig {
    /// Program of appending services that name none.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub command: Option<String>,
    /// Arguments put before an appending service's.
    pub args: Vec<String>,
    /// Environment under an appending service's.
    pub env: BTreeMap<String, String>,
    /// Plan put before an appending service's.
    pub plan: Plan,
    /// Added to an appending service's count.
    pub count: Count,
    /// Added to an appending service's terminate timeout.
    pub terminate_timeout_ms: u64,
}

impl DefaultConfig {
    /// Checks what parsing does not (a plan built in code may hold a bad backoff); the
    /// message names the field (`plan: ...`).
    pub fn check(&self) -> Result<(), String> {
        for element in &self.plan.0 {
            if let PlanElement::RestartBackoff(backoff) = element {
                if let Err(why) = backoff.check() {
                    return Err(format!("plan: invalid element {element}: {why}"));
                }
            }
        }
        Ok(())
    }

    /// As the core takes it.
    pub fn to_spec(&self) -> DefaultSpec {
        DefaultSpec {
            command: self.command.clone(),
            args: self.args.clone(),
            env: self.env.clone(),
            plan: self.plan.clone(),
            count: self.count,
            terminate_timeout: Duration::from_millis(self.terminate_timeout_ms),
        }
    }
}

impl From<&DefaultSpec> for DefaultConfig {
    /// The `[supervisor.default]` table of a default spec (a plan function shows as
    /// `"fn:<name>"` when serialized and cannot be read back).
    fn from(spec: &DefaultSpec) -> Self {
        DefaultConfig {
            command: spec.command.clone(),
            args: spec.args.clone(),
            env: spec.env.clone(),
            plan: spec.plan.clone(),
            count: spec.count,
            terminate_timeout_ms: u64::try_from(spec.terminate_timeout.as_millis())
                .unwrap_or(u64::MAX),
        }
    }
}

fn yes() -> bool {
    true
}

/// One `[[supervisor.services]]` entry, or one `manifest.json`.
#[derive(Debug, Clone, Serialize, Deserialize, Default, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct ServiceConfig {
    /// Unique id; in a manifest it defaults to the folder's name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub id: Option<String>,
    /// The program. A relative path with a `/` is taken from `cwd` (for a manifest, from its
    /// folder); a bare name is looked up in `PATH`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub command: Option<String>,
    /// Its arguments.
    #[serde(default)]
    pub args: Vec<String>,
    /// Extra environment variables.
    #[serde(default)]
    pub env: BTreeMap<String, String>,
    /// Pass the node's environment on (default true).
    #[serde(default = "yes")]
    pub inherit_env: bool,
    /// Working directory (for a manifest, default: its folder).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cwd: Option<PathBuf>,
    /// Restart plan (default: delete on a clean exit, restart otherwise).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub plan: Option<Plan>,
    /// How many cycles of the plan may complete within `period` (default 5; `"infinity"`:
    /// never used up).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub count: Option<Count>,
    /// The window `count` applies to (default `"60s"`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub period: Option<ConfigDuration>,
    /// Shortest time between two starts decided by the plan (default `"100ms"`; `"0s"`
    /// allowed).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub min_restart_interval: Option<ConfigDuration>,
    /// `"fail"` (default) or `"stop_node"`: what the node's supervisor does when the plan is
    /// used up.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub on_exhausted: Option<OnExhausted>,
    /// 0: SIGKILL at once; else SIGTERM to the group, wait, SIGKILL (default 1000, 5000 for
    /// type supervisor).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub terminate_timeout_ms: Option<u64>,
    /// `worker` (default) or `supervisor`.
    #[serde(default, rename = "type")]
    pub child_type: ChildType,
    /// Merge with `[supervisor.default]`.
    #[serde(default)]
    pub append: bool,
    /// Services that must be running before this one starts.
    #[serde(default)]
    pub after: Vec<String>,
    /// Readiness check: running only once it passes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ready: Option<ReadyConfig>,
    /// Time allowed for the readiness check (default 30000).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub start_timeout_ms: Option<u64>,
    /// Also write output lines to this file, rotated by size.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub log_file: Option<LogFileSpec>,
    /// Run as this user, by name or number (the node must run as root).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user: Option<IdOrName>,
    /// Run with this primary group, by name or number (the node must run as root).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub group: Option<IdOrName>,
    /// Resource limits by name (`nofile`, `nproc`, `core`, `as`, ...): a number, a size for
    /// amounts of memory, `"infinity"`, or `[soft, hard]`.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub rlimits: BTreeMap<String, RlimitSetting>,
    /// The service cgroup's `memory.max` (`"512MiB"`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub memory_max: Option<ByteSize>,
    /// The service cgroup's `cpu.max` (`"50%"` of one CPU, or a number of CPUs).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cpu_max: Option<CpuMax>,
    /// The service cgroup's `pids.max`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pids_max: Option<u64>,
    /// A file of `KEY=VALUE` lines read at every start, under `env`. A relative path is taken
    /// from `cwd` (for a manifest, from its folder).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub env_file: Option<PathBuf>,
    /// File mode creation mask, an octal string (`"0027"`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub umask: Option<Umask>,
    /// Cluster resources that must each have an online provider before the service starts
    /// (needs `[cluster] beacons`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub requires: Vec<String>,
    /// How long the service may wait for them before it is marked failed (default `"60s"`;
    /// `"0s"`: for ever).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub requirements_timeout: Option<ConfigDuration>,
    /// `"restart"` (default), `"notify"` or `"ignore"`: what a change of the providers of
    /// `requires` does to the running service.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub on_requirement_change: Option<OnRequirementChange>,
    /// Endpoints the node offers as resource `<id>` while the service runs (and is ready):
    /// name → address (needs `[cluster] beacons`).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub endpoints: BTreeMap<String, String>,
}

impl ServiceConfig {
    /// The child spec for this entry. `home` is the service's folder (manifests), whose
    /// relative paths are resolved against it; `config_path` is where its `config.json` lives.
    /// `user` and `group` are refused unless this process runs as root, and must name an
    /// existing user and group; `rlimits` names are checked. The error names the field
    /// (`user: ...`, `rlimits.nofile: ...`).
    pub fn to_spec(
        &self,
        id: &str,
        home: Option<&Path>,
        config_path: PathBuf,
    ) -> Result<ChildSpec, String> {
        check_id(id)?;
        let cwd = match (&self.cwd, home) {
            (Some(cwd), Some(home)) => Some(home.join(cwd)),
            (Some(cwd), None) => Some(cwd.clone()),
            (None, home) => home.map(Path::to_path_buf),
        };
        let command = self.command.as_ref().map(|c| match &cwd {
            Some(dir) if c.contains('/') && !c.starts_with('/') && !c.starts_with(TROUPE_EXE) => {
                dir.join(c).to_string_lossy().into_owned()
            }
            _ => c.clone(),
        });
        if command.as_deref() == Some("") {
            return Err("command: must not be empty".into());
        }
        if command.is_none() && !self.append {
            return Err("command: missing (required unless append = true)".into());
        }
        let log_file = match (&self.log_file, home) {
            (Some(lf), Some(home)) => Some(LogFileSpec {
                path: home.join(&lf.path),
                ..lf.clone()
            }),
            (lf, _) => lf.clone(),
        };
        if let Some(lf) = &log_file {
            if lf.max_bytes < 1024 {
                return Err("log_file.max_bytes: must be at least 1024".into());
            }
        }
        let ready = self
            .ready
            .as_ref()
            .map(|r| r.compile().map_err(|e| format!("ready.{e}")))
            .transpose()?;
        // SAFETY: geteuid(2) has no arguments and cannot fail.
        let euid = unsafe { libc::geteuid() };
        check_identity(self.user.as_ref(), self.group.as_ref(), euid)?;
        let rlimits = parse_rlimits(&self.rlimits)?;
        let env_file = self.env_file.as_ref().map(|file| match &cwd {
            Some(dir) => dir.join(file),
            None => file.clone(),
        });
        let spec = ChildSpec {
            id: id.to_string(),
            start: ChildStart::Process(ProcessSpec {
                command,
                args: self.args.clone(),
                env: self.env.clone(),
                inherit_env: self.inherit_env,
                cwd,
                log_file,
                config_path: Some(config_path),
                user: self.user.clone(),
                group: self.group.clone(),
                rlimits,
                memory_max: self.memory_max.map(|b| b.0),
                cpu_max: self.cpu_max,
                pids_max: self.pids_max,
                env_file,
                umask: self.umask,
            }),
            plan: self.plan.clone().unwrap_or_else(Plan::default_plan),
            count: self.count.unwrap_or(DEFAULT_COUNT),
            period: self.period.map_or(DEFAULT_PERIOD, ConfigDuration::get),
            min_restart_interval: self
                .min_restart_interval
                .map_or(DEFAULT_MIN_RESTART_INTERVAL, ConfigDuration::get),
            on_exhausted: self.on_exhausted.unwrap_or_default(),
            terminate_timeout: self
                .terminate_timeout_ms
                .map(Duration::from_millis)
                .unwrap_or_else(|| self.child_type.default_terminate_timeout()),
            child_type: self.child_type,
            append: self.append,
            after: self.after.clone(),
            ready,
            start_timeout: self
                .start_timeout_ms
                .map(Duration::from_millis)
                .unwrap_or(DEFAULT_START_TIMEOUT),
            requires: self.requires.clone(),
            requirements_timeout: self
                .requirements_timeout
                .map_or(DEFAULT_REQUIREMENTS_TIMEOUT, ConfigDuration::get),
            on_requirement_change: self.on_requirement_change.unwrap_or_default(),
            endpoints: self.endpoints.clone(),
        };
        if spec.append {
            // Checked again once merged; here only what does not depend on the default.
            spec.check().or_else(|e| {
                if e.starts_with("command") {
                    Ok(())
                } else {
                    Err(e)
                }
            })?;
        } else {
            spec.check()?;
        }
        Ok(spec)
    }
}

impl SupervisorConfig {
    /// Warnings about entries that are valid but unwise, as `(key, message)` with the key in
    /// full (`supervisor.services[2].plan`): an infinite `count` with a plan that restarts at
    /// once (a bare `"restart"`, or the default plan), which retries a broken command for
    /// ever. Entries that do not convert are skipped (validation reports them).
    pub fn warnings(&self) -> Vec<(String, String)> {
        let default = self.default.to_spec();
        self.services
            .iter()
            .enumerate()
            .filter_map(|(i, service)| {
                let id = service.id.as_deref().unwrap_or("unnamed");
                let spec = service.to_spec(id, None, PathBuf::new()).ok()?;
                let warning = default.merge(spec).plan_warning()?;
                Some((format!("supervisor.services[{i}].plan"), warning))
            })
            .collect()
    }

    /// The `state_dir` in effect for node `node`.
    pub fn state_dir(&self, node: &str) -> PathBuf {
        if !self.state_dir.is_empty() {
            return PathBuf::from(&self.state_dir);
        }
        let var = |name: &str| std::env::var_os(name).filter(|v| !v.is_empty());
        if let Some(dir) = var("STATE_DIRECTORY") {
            // systemd's StateDirectory=: may list several, the first is ours.
            let first = dir
                .to_string_lossy()
                .split(':')
                .next()
                .unwrap_or("")
                .to_string();
            return PathBuf::from(first);
        }
        if let Some(dir) = var("XDG_STATE_HOME") {
            return PathBuf::from(dir).join("troupe").join(node);
        }
        if let Some(home) = var("HOME") {
            return PathBuf::from(home).join(".local/state/troupe").join(node);
        }
        PathBuf::from(format!("/var/tmp/troupe-{node}"))
    }

    /// The child specs of `[[supervisor.services]]`, in an order where each comes after the
    /// services it names in `after`. Errors name the key (`services[2].after`).
    pub fn service_specs(&self, state_dir: &Path) -> Result<Vec<ChildSpec>, ConfigError> {
        let mut specs = Vec::with_capacity(self.services.len());
        for (i, service) in self.services.iter().enumerate() {
            let prefix = format!("services[{i}]");
            let id = service.id.clone().ok_or_else(|| {
                ConfigError::new(format!("{prefix}.id"), "missing: every service needs an id")
            })?;
            let spec = service
                .to_spec(&id, None, state_dir.join(&id).join("config.json"))
                .map_err(|e| field_error(&prefix, &e))?;
            if specs.iter().any(|s: &ChildSpec| s.id == id) {
                return Err(ConfigError::new(
                    format!("{prefix}.id"),
                    format!("duplicate id \"{id}\": ids must be unique"),
                ));
            }
            specs.push(spec);
        }
        order_by_after(specs).map_err(|(index, e)| field_error(&format!("services[{index}]"), &e))
    }
}

/// `message` starts with the field it is about (`ready.tcp: ...`): move it into the key.
pub(crate) fn field_error(prefix: &str, message: &str) -> ConfigError {
    match message.split_once(": ") {
        Some((field, rest)) if !field.contains(' ') => {
            ConfigError::new(format!("{prefix}.{field}"), rest)
        }
        _ => ConfigError::new(prefix, message),
    }
}

/// Orders `specs` so that each comes after the ones it names in `after`. On an unknown id or
/// a cycle, returns the index of the offending spec and the error.
pub fn order_by_after(specs: Vec<ChildSpec>) -> Result<Vec<ChildSpec>, (usize, String)> {
    for (i, spec) in specs.iter().enumerate() {
        if let Some(missing) = spec
            .after
            .iter()
            .find(|a| !specs.iter().any(|s| &s.id == *a))
        {
            return Err((i, format!("after: no service has the id \"{missing}\"")));
        }
    }
    let mut placed = vec![false; specs.len()];
    let mut order = Vec::with_capacity(specs.len());
    while order.len() < specs.len() {
        let next = (0..specs.len()).find(|&i| {
            !placed[i]
                && specs[i].after.iter().all(|a| {
                    specs
                        .iter()
                        .position(|s| &s.id == a)
                        .is_some_and(|j| placed[j])
                })
        });
        match next {
            Some(i) => {
                placed[i] = true;
                order.push(i);
            }
            None => {
                let stuck = (0..specs.len()).find(|&i| !placed[i]).unwrap_or(0);
                let ids: Vec<&str> = (0..specs.len())
                    .filter(|&i| !placed[i])
                    .map(|i| specs[i].id.as_str())
                    .collect();
                return Err((
                    stuck,
                    format!(
                        "after: services {} start after each other in a cycle",
                        ids.join(", ")
                    ),
                ));
            }
        }
    }
    let mut slots: Vec<Option<ChildSpec>> = specs.into_iter().map(Some).collect();
    Ok(order.into_iter().filter_map(|i| slots[i].take()).collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(toml_text: &str) -> Result<SupervisorConfig, String> {
        let value: toml::Value = toml::from_str(toml_text).map_err(|e| e.to_string())?;
        let json = serde_json::to_value(value).unwrap();
        serde_path_to_error::deserialize(json).map_err(|e| format!("{}: {}", e.path(), e.inner()))
    }

    fn specs(toml_text: &str) -> Result<Vec<ChildSpec>, ConfigError> {
        parse(toml_text).unwrap().service_specs(Path::new("/state"))
    }

    #[test]
    fn a_full_service_entry_parses() {
        let s = specs(
            r#"
            [[services]]
            id = "db"
            command = "/usr/bin/db"
            ready = { tcp = "127.0.0.1:5432" }
            [[services]]
            id = "app"
            command = "${TROUPE_EXE}"
            args = ["echo-worker"]
            env = { MODE = "fast" }
            inherit_env = false
            cwd = "/srv"
            plan = ["restart", { restart_after_ms = 100 }, { restart_backoff = { initial_ms = 10, factor = 2.0, max_ms = 1000 } }, "wait", { stop = "gave up" }]
            count = "infinity"
            terminate_timeout_ms = 0
            type = "supervisor"
            after = ["db"]
            ready = { log_line = "listening on \\d+" }
            start_timeout_ms = 2000
            log_file = { path = "/var/log/app.log", max_bytes = 4096, backups = 2 }
            "#,
        )
        .unwrap();
        assert_eq!(s[1].id, "app");
        assert_eq!(s[1].plan.0.len(), 5);
        assert_eq!(s[1].count, Count::Infinity);
        assert_eq!(s[1].terminate_timeout, Duration::ZERO);
        assert_eq!(s[1].child_type, ChildType::Supervisor);
        assert_eq!(s[1].start_timeout, Duration::from_millis(2000));
        let p = s[1].process_spec().unwrap();
        assert_eq!(p.command.as_deref(), Some("${TROUPE_EXE}"));
        assert_eq!(
            p.config_path.as_deref(),
            Some(Path::new("/state/app/config.json"))
        );
        assert!(!p.inherit_env);
        // Defaults: director's plan, count 5 within 60 s, 100 ms between starts, fail when
        // used up, 1 s terminate timeout.
        assert_eq!(s[0].count, Count::Finite(5));
        assert_eq!(s[0].period, Duration::from_secs(60));
        assert_eq!(s[0].min_restart_interval, Duration::from_millis(100));
        assert_eq!(s[0].on_exhausted, OnExhausted::Fail);
        assert_eq!(s[0].plan.to_string(), "[fn:default]");
        assert_eq!(s[0].terminate_timeout, Duration::from_millis(1000));
    }

    #[test]
    fn services_are_ordered_by_after() {
        let s = specs(
            r#"
            [[services]]
            id = "c"
            command = "x"
            after = ["b"]
            [[services]]
            id = "a"
            command = "x"
            [[services]]
            id = "b"
            command = "x"
            after = ["a"]
            "#,
        )
        .unwrap();
        let ids: Vec<_> = s.iter().map(|s| s.id.as_str()).collect();
        assert_eq!(ids, ["a", "b", "c"]);
    }

    #[test]
    fn errors_name_the_service_and_field() {
        let cases = [
            ("[[services]]\ncommand = \"x\"", "services[0].id", "missing"),
            ("[[services]]\nid = \"a b\"\ncommand = \"x\"", "services[0].id", "not a valid"),
            ("[[services]]\nid = \"a\"", "services[0].command", "missing"),
            (
                "[[services]]\nid = \"a\"\ncommand = \"x\"\n[[services]]\nid = \"a\"\ncommand = \"y\"",
                "services[1].id",
                "duplicate",
            ),
            (
                "[[services]]\nid = \"a\"\ncommand = \"x\"\nafter = [\"zz\"]",
                "services[0].after",
                "zz",
            ),
            (
                "[[services]]\nid = \"a\"\ncommand = \"x\"\nafter = [\"b\"]\n[[services]]\nid = \"b\"\ncommand = \"x\"\nafter = [\"a\"]",
                "services[0].after",
                "cycle",
            ),
            (
                "[[services]]\nid = \"a\"\ncommand = \"x\"\nready = { log_line = \"(\" }",
                "services[0].ready.log_line",
                "regular expression",
            ),
            (
                "[[services]]\nid = \"a\"\ncommand = \"x\"\nenv = { \"A=B\" = \"1\" }",
                "services[0].env",
                "not a valid variable",
            ),
        ];
        for (text, key, needle) in cases {
            let err = specs(text).unwrap_err();
            assert_eq!(err.key, key, "{text}: {err}");
            assert!(err.message.contains(needle), "{text}: {err}");
        }
    }

    #[test]
    fn unknown_keys_and_bad_values_are_refused_with_their_path() {
        let err = parse("[[services]]\nid = \"a\"\ncommand = \"x\"\nrestart = true").unwrap_err();
        assert!(err.starts_with("services[0]"), "{err}");
        assert!(err.contains("unknown field `restart`"), "{err}");
        let err = parse("[[services]]\nid = \"a\"\nplan = [\"reboot\"]").unwrap_err();
        assert!(err.contains("services[0].plan[0]"), "{err}");
        assert!(err.contains("unknown plan element"), "{err}");
        let err = parse("[default]\ncount = \"lots\"").unwrap_err();
        assert!(err.contains("default.count"), "{err}");
    }

    #[test]
    fn state_dir_has_a_documented_default() {
        let c = SupervisorConfig {
            state_dir: "/data".into(),
            ..SupervisorConfig::default()
        };
        assert_eq!(c.state_dir("n1"), Path::new("/data"));
        let default = SupervisorConfig::default().state_dir("n1");
        assert!(
            default.ends_with("n1")
                || default.starts_with("/var/tmp/troupe-n1")
                || std::env::var_os("STATE_DIRECTORY").is_some(),
            "{default:?}"
        );
    }

    #[test]
    fn the_default_table_round_trips() {
        let c = parse(
            "[default]\ncommand = \"/bin/w\"\nargs = [\"-v\"]\nplan = [\"restart\"]\ncount = 5\nterminate_timeout_ms = 1000",
        )
        .unwrap();
        let d = c.default.to_spec();
        assert_eq!(d.count, Count::Finite(5));
        assert_eq!(d.terminate_timeout, Duration::from_millis(1000));
        let again: SupervisorConfig =
            serde_json::from_value(serde_json::to_value(&c).unwrap()).unwrap();
        assert_eq!(again.default.to_spec(), d);
        // And back from the spec the core holds.
        let table = DefaultConfig::from(&d);
        assert_eq!(table.to_spec(), d);
        assert_eq!(table.terminate_timeout_ms, 1000);
        assert!(table.check().is_ok());
    }

    #[test]
    fn a_default_with_a_bad_backoff_is_refused() {
        let bad = DefaultConfig {
            plan: Plan(vec![
                PlanElement::Restart,
                PlanElement::RestartBackoff(crate::plan::Backoff {
                    initial_ms: 100,
                    factor: 0.5,
                    max_ms: 10,
                    reset_after_ms: None,
                }),
            ]),
            ..DefaultConfig::default()
        };
        let err = bad.check().unwrap_err();
        assert!(
            err.starts_with("plan: invalid element restart_backoff"),
            "{err}"
        );
        assert!(err.contains("factor"), "{err}");
    }

    #[test]
    fn restart_limits_parse_and_bad_ones_name_their_key() {
        let s = specs(
            r#"
            [[services]]
            id = "a"
            command = "x"
            count = 3
            period = "10s"
            min_restart_interval = "0s"
            on_exhausted = "stop_node"
            "#,
        )
        .unwrap();
        assert_eq!(s[0].count, Count::Finite(3));
        assert_eq!(s[0].period, Duration::from_secs(10));
        assert_eq!(s[0].min_restart_interval, Duration::ZERO);
        assert_eq!(s[0].on_exhausted, OnExhausted::StopNode);
        let err = specs("[[services]]\nid = \"a\"\ncommand = \"x\"\nperiod = \"0s\"").unwrap_err();
        assert_eq!(err.key, "services[0].period", "{err}");
        assert!(err.message.contains("more than 0s"), "{err}");
        let err = specs("[[services]]\nid = \"a\"\ncommand = \"x\"\nmin_restart_interval = \"2h\"")
            .unwrap_err();
        assert_eq!(err.key, "services[0].min_restart_interval", "{err}");
        for (text, path) in [
            ("period = 60", "services[0].period"),
            ("period = \"soon\"", "services[0].period"),
            (
                "min_restart_interval = \"-1s\"",
                "services[0].min_restart_interval",
            ),
            ("on_exhausted = \"explode\"", "services[0].on_exhausted"),
        ] {
            let err = parse(&format!(
                "[[services]]\nid = \"a\"\ncommand = \"x\"\n{text}"
            ))
            .unwrap_err();
            assert!(err.starts_with(path), "{text}: {err}");
        }
        // The default child spec has none of them: a service's own apply.
        let err = parse("[default]\nperiod = \"5s\"").unwrap_err();
        assert!(err.contains("unknown field `period`"), "{err}");
    }

    #[test]
    fn limits_and_identity_parse_and_bad_ones_name_their_key() {
        let s = specs(
            r#"
            [[services]]
            id = "a"
            command = "x"
            cwd = "/srv/a"
            rlimits = { nofile = 4096, nproc = [256, 512], core = 0, as = "2GiB" }
            memory_max = "512MiB"
            cpu_max = "50%"
            pids_max = 64
            env_file = "a.env"
            umask = "0027"
            [[services]]
            id = "b"
            command = "x"
            cpu_max = 1.5
            env_file = "/etc/b.env"
            "#,
        )
        .unwrap();
        let a = s[0].process_spec().unwrap();
        assert_eq!(a.rlimits.len(), 4);
        assert_eq!(a.memory_max, Some(512 << 20));
        assert_eq!(
            a.cpu_max.map(|c| c.cgroup_value()).as_deref(),
            Some("50000 100000")
        );
        assert_eq!(a.pids_max, Some(64));
        assert_eq!(a.env_file.as_deref(), Some(Path::new("/srv/a/a.env")));
        assert_eq!(a.umask, Some(crate::limits::Umask(0o027)));
        let b = s[1].process_spec().unwrap();
        assert_eq!(b.cpu_max.map(|c| c.to_string()).as_deref(), Some("150%"));
        assert_eq!(b.env_file.as_deref(), Some(Path::new("/etc/b.env")));

        // A manifest's relative env_file is taken from its folder.
        let entry = ServiceConfig {
            command: Some("x".into()),
            env_file: Some("app.env".into()),
            ..ServiceConfig::default()
        };
        let spec = entry
            .to_spec(
                "m",
                Some(Path::new("/svc/m")),
                PathBuf::from("/svc/m/config.json"),
            )
            .unwrap();
        assert_eq!(
            spec.process_spec().unwrap().env_file.as_deref(),
            Some(Path::new("/svc/m/app.env"))
        );

        for (text, key, needle) in [
            (
                "rlimits = { files = 1 }",
                "services[0].rlimits.files",
                "valid ones are as, core",
            ),
            (
                "rlimits = { nofile = \"1MiB\" }",
                "services[0].rlimits.nofile",
                "invalid limit",
            ),
            (
                "rlimits = { nofile = [10, 5] }",
                "services[0].rlimits.nofile",
                "above the hard limit",
            ),
            (
                "memory_max = 4096",
                "services[0].memory_max",
                "at least 1MiB",
            ),
            ("pids_max = 0", "services[0].pids_max", "at least 1"),
            ("user = \"no-such-user-troupe\"", "services[0].user", ""),
            ("group = \"no-such-group-troupe\"", "services[0].group", ""),
        ] {
            let err = specs(&format!(
                "[[services]]\nid = \"a\"\ncommand = \"x\"\n{text}"
            ))
            .unwrap_err();
            assert_eq!(err.key, key, "{text}: {err}");
            assert!(err.message.contains(needle), "{text}: {err}");
        }
        // SAFETY: geteuid(2) cannot fail.
        let root = unsafe { libc::geteuid() } == 0;
        let err = specs("[[services]]\nid = \"a\"\ncommand = \"x\"\nuser = \"nobody\"");
        if root {
            assert!(err.is_ok(), "{err:?}");
        } else {
            let err = err.unwrap_err();
            assert_eq!(err.key, "services[0].user");
            assert!(err.message.contains("not root"), "{err}");
        }
        for (text, path) in [
            ("umask = \"0999\"", "services[0].umask"),
            ("umask = 27", "services[0].umask"),
            ("cpu_max = \"fast\"", "services[0].cpu_max"),
            ("cpu_max = \"0%\"", "services[0].cpu_max"),
            ("memory_max = \"lots\"", "services[0].memory_max"),
            ("pids_max = -1", "services[0].pids_max"),
            ("user = \"\"", "services[0].user"),
            ("rlimits = { nofile = true }", "services[0].rlimits.nofile"),
        ] {
            let err = parse(&format!(
                "[[services]]\nid = \"a\"\ncommand = \"x\"\n{text}"
            ))
            .unwrap_err();
            assert!(err.starts_with(path), "{text}: {err}");
        }
    }

    #[test]
    fn cluster_keys_parse_and_bad_ones_name_their_key() {
        let s = specs(
            r#"
            [[services]]
            id = "worker"
            command = "x"
            args = ["--broker", "${cluster.broker.frontend}", "--db=${cluster.db-main.sql}"]
            requires = ["broker", "db-main"]
            requirements_timeout = "0s"
            on_requirement_change = "notify"
            ready = { broker = "echo" }
            [[services]]
            id = "web"
            command = "x"
            endpoints = { http = "tcp://0.0.0.0:8080", "admin.api" = "tcp://127.0.0.1:9" }
            "#,
        )
        .unwrap();
        assert_eq!(s[0].requires, ["broker", "db-main"]);
        assert_eq!(s[0].requirements_timeout, Duration::ZERO);
        assert_eq!(s[0].on_requirement_change, OnRequirementChange::Notify);
        assert_eq!(
            s[0].ready,
            Some(crate::spec::ReadyCheck::Broker("echo".into()))
        );
        assert_eq!(s[1].requires, Vec::<String>::new());
        assert_eq!(s[1].requirements_timeout, Duration::from_secs(60));
        assert_eq!(s[1].on_requirement_change, OnRequirementChange::Restart);
        assert_eq!(s[1].endpoints["admin.api"], "tcp://127.0.0.1:9");
        assert!(s[1].needs_cluster() && s[0].needs_cluster());

        for (text, key, needle) in [
            (
                "requires = [\"a b\"]",
                "services[0].requires[0]",
                "not a valid name",
            ),
            (
                "requires = [\"db\", \"db\"]",
                "services[0].requires[1]",
                "named twice",
            ),
            (
                "args = [\"${cluster.db.sql}\"]",
                "services[0].args[0]",
                "not in requires",
            ),
            (
                "requires = [\"db\"]\nargs = [\"${cluster.db}\"]",
                "services[0].args[0]",
                "names no endpoint",
            ),
            (
                "endpoints = { http = \"tcp://a b\" }",
                "services[0].endpoints.http",
                "spaces",
            ),
            (
                "endpoints = { http = \"${cluster.db.sql}\" }",
                "services[0].endpoints.http",
                "not endpoints",
            ),
            (
                "endpoints = { \"a b\" = \"tcp://x:1\" }",
                "services[0].endpoints",
                "not a valid name",
            ),
            (
                "ready = { broker = \"\" }",
                "services[0].ready.broker",
                "not a broker service name",
            ),
            (
                "requires = [\"db\"]\nrequirements_timeout = \"31d\"",
                "services[0].requirements_timeout",
                "at most",
            ),
        ] {
            let err = specs(&format!(
                "[[services]]\nid = \"a\"\ncommand = \"x\"\n{text}"
            ))
            .unwrap_err();
            assert_eq!(err.key, key, "{text}: {err}");
            assert!(err.message.contains(needle), "{text}: {err}");
        }
        for (text, path) in [
            (
                "on_requirement_change = \"explode\"",
                "services[0].on_requirement_change",
            ),
            (
                "requirements_timeout = 5",
                "services[0].requirements_timeout",
            ),
            ("requires = \"db\"", "services[0].requires"),
            ("endpoints = [\"x\"]", "services[0].endpoints"),
            ("ready = { broker = 1 }", "services[0].ready"),
            ("require = [\"db\"]", "services[0]"),
        ] {
            let err = parse(&format!(
                "[[services]]\nid = \"a\"\ncommand = \"x\"\n{text}"
            ))
            .unwrap_err();
            assert!(err.starts_with(path), "{text}: {err}");
        }
        // A manifest takes the same keys, as JSON.
        let entry: ServiceConfig = serde_json::from_value(serde_json::json!({
            "command": "x",
            "requires": ["broker"],
            "requirements_timeout": "5s",
            "on_requirement_change": "ignore",
            "endpoints": {"http": "tcp://127.0.0.1:80"},
            "ready": {"broker": "echo"},
        }))
        .unwrap();
        let spec = entry
            .to_spec("m", Some(Path::new("/svc/m")), "/svc/m/config.json".into())
            .unwrap();
        assert_eq!(spec.requirements_timeout, Duration::from_secs(5));
        assert_eq!(spec.on_requirement_change, OnRequirementChange::Ignore);
    }

    #[test]
    fn warnings_name_endless_immediate_restarts() {
        let c = parse(
            r#"
            [[services]]
            id = "fine"
            command = "x"
            plan = ["restart"]
            [[services]]
            id = "bare"
            command = "x"
            plan = ["wait", "restart"]
            count = "infinity"
            [[services]]
            id = "delayed"
            command = "x"
            plan = [{ restart_backoff = { initial_ms = 100, max_ms = 5000 } }]
            count = "infinity"
            [[services]]
            id = "default-plan"
            command = "x"
            count = "infinity"
            min_restart_interval = "0s"
            [[services]]
            id = "appends"
            command = "x"
            plan = [{ restart_after_ms = 100 }]
            append = true
            [default]
            plan = ["restart"]
            count = "infinity"
            "#,
        )
        .unwrap();
        let warnings = c.warnings();
        let keys: Vec<&str> = warnings.iter().map(|(k, _)| k.as_str()).collect();
        assert_eq!(
            keys,
            [
                "supervisor.services[1].plan",
                "supervisor.services[3].plan",
                "supervisor.services[4].plan"
            ]
        );
        assert!(
            warnings[0].1.starts_with(
                "a bare \"restart\" with count \"infinity\" restarts a broken command forever (every min_restart_interval, 100ms)"
            ),
            "{}",
            warnings[0].1
        );
        assert!(
            warnings[0].1.contains("restart_backoff"),
            "{}",
            warnings[0].1
        );
        assert!(warnings[1].1.contains("default plan"), "{}", warnings[1].1);
        assert!(warnings[1].1.contains("tight loop"), "{}", warnings[1].1);
        assert!(SupervisorConfig::default().warnings().is_empty());
    }
}
