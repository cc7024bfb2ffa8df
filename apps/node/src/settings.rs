//! Layered node configuration: built-in defaults < TOML file < environment < flags.
//!
//! The layers are merged by the `config` crate into one document, which is then checked key
//! by key: the top level knows `name`, `roles`, `shutdown_timeout`, the `[cluster]` table (the
//! beacons this node registers with, parsed by `troupe_beacon::ClusterConfig`) and one table
//! per known role; each role table is parsed by its role (unknown keys and bad values are
//! errors that name the key). Every known role's table is checked, selected or not, so that a
//! typo in a table for later is found now.

use std::collections::HashMap;
use std::path::Path;

use config::{Environment, File, FileFormat};
use serde_json::{json, Map, Value};
use troupe_beacon::{ClusterClient, ClusterConfig};
use troupe_control::ControlConfig;
use troupe_core::role::start_order;
use troupe_core::settings::Duration;
use troupe_core::{ConfigError, PreparedRole, Role, RoleSet};

/// The config used when no `--config` is given: every role on one machine, on loopback.
/// It is `configs/single.toml`, embedded.
pub const EMBEDDED_DEFAULT: &str = include_str!("../../../configs/single.toml");

/// Prefix of the environment variables read as config (`TROUPE_BROKER__FRONTEND`).
const ENV_PREFIX: &str = "TROUPE_";

/// Environment variables Troupe sets for the processes it supervises; never config keys.
pub const RESERVED_ENV: &[&str] = &[
    troupe_core::services::ENV_SERVICE_ID,
    troupe_core::services::ENV_IPC_SOCKET,
    troupe_core::cluster::ENV_BEACONS,
    troupe_core::cluster::ENV_COOKIE_FILE,
];

/// Prefix of the variables that carry a supervised service's requirements
/// (`TROUPE_REQ_BROKER_MAJORDOMO`); never config keys either.
const RESERVED_ENV_PREFIX: &str = "TROUPE_REQ_";

const TOP_LEVEL_KEYS: &[&str] = &[
    "name",
    "roles",
    "shutdown_timeout",
    "log_level",
    ClusterConfig::TABLE,
    ControlConfig::TABLE,
];

/// What the configuration allows but probably should not (`check-config` prints these, `run`
/// logs them): the deprecated `[cluster] resource`, and the supervisor's, when the node runs
/// it. Each is a key and a sentence.
pub fn warnings(effective: &Value) -> Vec<(String, String)> {
    let mut warnings = Vec::new();
    if let Some(resource) = effective["cluster"]["resource"]
        .as_str()
        .filter(|r| !r.is_empty())
    {
        warnings.push((
            "cluster.resource".to_string(),
            format!(
                "`resource` is deprecated: a node offers one resource per role it runs; write `resources = [\"{resource}\"]` only for a resource beyond its roles (it is read as that now)"
            ),
        ));
    }
    let runs = |role: &str| {
        effective["roles"]
            .as_array()
            .is_some_and(|roles| roles.iter().any(|r| r == role))
    };
    if runs("supervisor") {
        warnings.extend(
            serde_json::from_value::<troupe_supervisor::SupervisorConfig>(
                effective["supervisor"].clone(),
            )
            .map(|config| config.warnings())
            .unwrap_or_default(),
        );
    }
    warnings
}

/// Whether top-level `key` is a role's table (not one of the node's own keys).
pub fn is_role_table(key: &str) -> bool {
    !TOP_LEVEL_KEYS.contains(&key)
}

/// The highest layer: values given as command-line flags.
#[derive(Debug, Default, Clone)]
pub struct Overrides {
    /// `--name`
    pub name: Option<String>,
    /// `--roles`
    pub roles: Option<Vec<String>>,
}

/// A node's validated configuration.
pub struct NodeSettings {
    /// The node's name.
    pub name: String,
    /// Selected roles, in start order.
    pub roles: Vec<PreparedRole>,
    /// Deadline for each role to stop.
    pub shutdown_timeout: Duration,
    /// The cluster client, when `[cluster]` names beacons: started before the roles.
    pub cluster: Option<PreparedRole>,
    /// The `[control]` table: where the node's control API listens.
    pub control: ControlConfig,
    /// The log filter from `log_level`; empty: `RUST_LOG`, else `info`.
    pub log_level: String,
    /// The whole effective document (every default filled in), for display and for roles.
    pub effective: Value,
}

/// Loads and validates the configuration from its layers.
pub fn load(
    known: &RoleSet,
    file: Option<&Path>,
    env: impl IntoIterator<Item = (String, String)>,
    overrides: &Overrides,
) -> Result<NodeSettings, ConfigError> {
    let merged = merge(known, file, env, overrides)?;
    validate(known, merged)
}

fn merge(
    known: &RoleSet,
    file: Option<&Path>,
    env: impl IntoIterator<Item = (String, String)>,
    overrides: &Overrides,
) -> Result<Value, ConfigError> {
    let mut defaults = json!({
        "name": default_node_name(),
        "roles": [],
        "shutdown_timeout": "5s",
        "log_level": "",
    });
    for (name, section) in known.default_sections() {
        defaults[name] = section;
    }
    defaults[ClusterConfig::TABLE] = serde_json::to_value(ClusterConfig::default())
        .map_err(|err| ConfigError::new(ClusterConfig::TABLE, err.to_string()))?;
    defaults[ControlConfig::TABLE] = serde_json::to_value(ControlConfig::default())
        .map_err(|err| ConfigError::new(ControlConfig::TABLE, err.to_string()))?;
    let mut builder = config::Config::builder()
        .add_source(File::from_str(&defaults.to_string(), FileFormat::Json));
    builder = match file {
        Some(path) => {
            if !path.is_file() {
                return Err(ConfigError::new(
                    "--config",
                    format!("config file \"{}\" does not exist", path.display()),
                ));
            }
            builder.add_source(File::from(path).format(FileFormat::Toml).required(true))
        }
        None => builder.add_source(File::from_str(EMBEDDED_DEFAULT, FileFormat::Toml)),
    };
    let mut env = config_env(known, env)?;
    // An empty list variable means an empty list (`TROUPE_CLUSTER__BEACONS=` runs a node
    // outside any cluster), not a list of one empty string.
    let mut emptied = Vec::new();
    for (variable, key) in [
        ("TROUPE_CLUSTER__BEACONS", "cluster.beacons"),
        ("TROUPE_CLUSTER__REQUIRES", "cluster.requires"),
    ] {
        if env
            .get(variable)
            .is_some_and(|value| value.trim().is_empty())
        {
            env.remove(variable);
            emptied.push(key);
        }
    }
    let mut builder = builder.add_source(
        Environment::with_prefix("TROUPE")
            .prefix_separator("_")
            .separator("__")
            .try_parsing(true)
            .list_separator(",")
            .with_list_parse_key("roles")
            .with_list_parse_key("cluster.beacons")
            .with_list_parse_key("cluster.requires")
            .source(Some(env)),
    );
    for key in emptied {
        builder = builder
            .set_override(key, Vec::<String>::new())
            .map_err(|err| ConfigError::new(key, err.to_string()))?;
    }
    if let Some(name) = &overrides.name {
        builder = builder
            .set_override("name", name.as_str())
            .map_err(|err| ConfigError::new("--name", err.to_string()))?;
    }
    if let Some(roles) = &overrides.roles {
        builder = builder
            .set_override("roles", roles.clone())
            .map_err(|err| ConfigError::new("--roles", err.to_string()))?;
    }
    let merged = builder
        .build()
        .map_err(|err| ConfigError::new("", err.to_string()))?;
    merged
        .try_deserialize::<Value>()
        .map_err(|err| ConfigError::new("", err.to_string()))
}

/// The `TROUPE_*` variables that are config keys, with unknown top-level keys refused here so
/// that the error can name the variable.
fn config_env(
    known: &RoleSet,
    env: impl IntoIterator<Item = (String, String)>,
) -> Result<HashMap<String, String>, ConfigError> {
    let mut keep = HashMap::new();
    for (var, value) in env {
        let Some(key) = var.strip_prefix(ENV_PREFIX) else {
            continue;
        };
        if RESERVED_ENV.contains(&var.as_str()) || var.starts_with(RESERVED_ENV_PREFIX) {
            continue;
        }
        let top = key.split("__").next().unwrap_or_default().to_lowercase();
        if !TOP_LEVEL_KEYS.contains(&top.as_str()) && !known.contains(&top) {
            return Err(ConfigError::new(
                top,
                format!(
                    "environment variable {var} sets an unknown key; valid top-level keys: {}",
                    valid_top_keys(known)
                ),
            ));
        }
        keep.insert(var, value);
    }
    Ok(keep)
}

fn valid_top_keys(known: &RoleSet) -> String {
    TOP_LEVEL_KEYS
        .iter()
        .copied()
        .chain(known.names())
        .collect::<Vec<_>>()
        .join(", ")
}

fn validate(known: &RoleSet, merged: Value) -> Result<NodeSettings, ConfigError> {
    let Value::Object(mut doc) = merged else {
        return Err(ConfigError::new("", "the configuration is not a table"));
    };
    if let Some(unknown) = doc
        .keys()
        .find(|k| !TOP_LEVEL_KEYS.contains(&k.as_str()) && !known.contains(k))
    {
        return Err(ConfigError::new(
            unknown.clone(),
            format!(
                "unknown key; valid top-level keys: {}",
                valid_top_keys(known)
            ),
        ));
    }
    let name = parse_name(doc.remove("name"))?;
    let shutdown_timeout: Duration =
        serde_json::from_value(doc.remove("shutdown_timeout").unwrap_or(Value::Null))
            .map_err(|err| ConfigError::new("shutdown_timeout", err.to_string()))?;
    let log_level = parse_log_level(doc.remove("log_level"))?;
    let selected = parse_roles(known, doc.remove("roles"))?;
    let (cluster_effective, cluster) = parse_cluster(doc.remove(ClusterConfig::TABLE))?;
    let control = parse_control(doc.remove(ControlConfig::TABLE))?;

    let mut effective = Map::new();
    effective.insert("name".into(), Value::String(name.clone()));
    effective.insert("roles".into(), json!(selected));
    effective.insert(
        "shutdown_timeout".into(),
        Value::String(shutdown_timeout.to_string()),
    );
    effective.insert("log_level".into(), Value::String(log_level.clone()));
    let mut prepared = Vec::new();
    for role in known.names() {
        let section = doc.remove(role).unwrap_or_else(|| json!({}));
        effective.insert(role.to_string(), known.parse(role, section.clone())?);
        if selected.iter().any(|s| s == role) {
            prepared.push(known.prepare(role, section)?);
        }
    }
    // Start in dependency order; ties keep the order the user listed.
    prepared.sort_by_key(|p| selected.iter().position(|s| s == p.name));
    let order = start_order(&prepared)?;
    let mut slots: Vec<Option<PreparedRole>> = prepared.into_iter().map(Some).collect();
    let roles = order
        .into_iter()
        .filter_map(|i| slots[i].take())
        .collect::<Vec<_>>();
    effective.insert(
        "roles".into(),
        json!(roles.iter().map(|r| r.name).collect::<Vec<_>>()),
    );
    check_cluster_resources(&cluster_effective, known, &selected)?;
    check_cluster_users(&effective, &selected, cluster.is_some())?;
    check_terminate_timeouts(&effective, &selected, shutdown_timeout)?;
    effective.insert(ClusterConfig::TABLE.into(), cluster_effective);
    effective.insert(
        ControlConfig::TABLE.into(),
        serde_json::to_value(&control)
            .map_err(|err| ConfigError::new(ControlConfig::TABLE, err.to_string()))?,
    );
    Ok(NodeSettings {
        name,
        roles,
        shutdown_timeout,
        cluster,
        control,
        log_level,
        effective: Value::Object(effective),
    })
}

/// A resource declared in `[cluster] resources` (or the deprecated `resource`) that names a
/// Troupe role must name one this node runs: other nodes would look for that role here.
fn check_cluster_resources(
    cluster: &Value,
    known: &RoleSet,
    selected: &[String],
) -> Result<(), ConfigError> {
    let declared = cluster["resources"]
        .as_array()
        .into_iter()
        .flatten()
        .enumerate()
        .filter_map(|(i, r)| Some((format!("cluster.resources[{i}]"), r.as_str()?)))
        .chain(
            cluster["resource"]
                .as_str()
                .map(|r| ("cluster.resource".to_string(), r)),
        );
    for (key, resource) in declared {
        if known.contains(resource) && !selected.iter().any(|r| r == resource) {
            return Err(ConfigError::new(
                key,
                format!(
                    "`{resource}` is a Troupe role this node does not run (it runs {}); other nodes would look for it here",
                    selected.join(", ")
                ),
            ));
        }
    }
    Ok(())
}

/// Services that use the registry (`requires`, `endpoints`) need the node to have a cluster
/// client: `run` would refuse to start them.
fn check_cluster_users(
    effective: &Map<String, Value>,
    selected: &[String],
    has_cluster: bool,
) -> Result<(), ConfigError> {
    if has_cluster || !selected.iter().any(|r| r == "supervisor") {
        return Ok(());
    }
    let services = effective
        .get("supervisor")
        .and_then(|s| s["services"].as_array())
        .into_iter()
        .flatten()
        .enumerate();
    for (i, service) in services {
        for key in ["requires", "endpoints"] {
            let used = match &service[key] {
                Value::Array(list) => !list.is_empty(),
                Value::Object(map) => !map.is_empty(),
                _ => false,
            };
            if used {
                return Err(ConfigError::new(
                    format!("supervisor.services[{i}].{key}"),
                    format!(
                        "service `{}` uses the cluster registry, but `[cluster] beacons` is empty: name the beacons this node registers with",
                        service["id"].as_str().unwrap_or_default()
                    ),
                ));
            }
        }
    }
    Ok(())
}

/// No service may take longer to stop than the node gives its supervisor: the node would
/// abandon the stop half done.
fn check_terminate_timeouts(
    effective: &Map<String, Value>,
    selected: &[String],
    shutdown_timeout: Duration,
) -> Result<(), ConfigError> {
    if !selected.iter().any(|r| r == "supervisor") {
        return Ok(());
    }
    let Some(section) = effective.get("supervisor") else {
        return Ok(());
    };
    let config: troupe_supervisor::SupervisorConfig = serde_json::from_value(section.clone())
        .map_err(|err| ConfigError::new("supervisor", err.to_string()))?;
    let default = config.default.to_spec();
    for (i, service) in config.services.iter().enumerate() {
        // An entry the supervisor refuses is reported by its own validation.
        let id = service.id.clone().unwrap_or_default();
        let Ok(spec) = service.to_spec(&id, None, Path::new("/").join("config.json")) else {
            continue;
        };
        let timeout = default.merge(spec).terminate_timeout;
        if timeout > shutdown_timeout.get() {
            return Err(ConfigError::new(
                format!("supervisor.services[{i}].terminate_timeout_ms"),
                format!(
                    "{} ms is longer than shutdown_timeout ({shutdown_timeout}): the node would abandon the service's stop half done; raise shutdown_timeout or lower terminate_timeout_ms",
                    timeout.as_millis()
                ),
            ));
        }
    }
    Ok(())
}

/// Parses `log_level`: a tracing filter (`info`, `info,troupe_broker=debug`), or empty.
fn parse_log_level(value: Option<Value>) -> Result<String, ConfigError> {
    let level = match value {
        None | Some(Value::Null) => String::new(),
        Some(Value::String(s)) => s.trim().to_string(),
        Some(other) => {
            return Err(ConfigError::new(
                "log_level",
                format!("expected a log filter like \"info\", found {other}"),
            ))
        }
    };
    if !level.is_empty() {
        crate::logging::parse_filter(&level).map_err(|why| ConfigError::new("log_level", why))?;
    }
    Ok(level)
}

/// Parses and checks the `[control]` table, its token file included.
fn parse_control(section: Option<Value>) -> Result<ControlConfig, ConfigError> {
    let section = section.unwrap_or_else(|| json!({}));
    let control: ControlConfig = serde_path_to_error::deserialize(section).map_err(|err| {
        let path = err.path().to_string();
        let key = if path == "." { String::new() } else { path };
        ConfigError::new(key, err.into_inner().to_string()).within(ControlConfig::TABLE)
    })?;
    control
        .validate()
        .map_err(|err| err.within(ControlConfig::TABLE))?;
    Ok(control)
}

/// Parses the `[cluster]` table. Returns its effective value and, when it names beacons or
/// uses etcd, the
/// client ready to start (it offers one resource per role, see `troupe_beacon::client`).
fn parse_cluster(section: Option<Value>) -> Result<(Value, Option<PreparedRole>), ConfigError> {
    let section = section.unwrap_or_else(|| json!({}));
    let client = RoleSet::new().with::<ClusterClient>();
    let effective = client.parse(ClusterClient::NAME, section.clone())?;
    let runs_client = effective["beacons"]
        .as_array()
        .is_some_and(|beacons| !beacons.is_empty())
        || effective["backend"] == "etcd";
    let prepared = match runs_client {
        true => Some(client.prepare(ClusterClient::NAME, section)?),
        false => None,
    };
    Ok((effective, prepared))
}

fn parse_name(value: Option<Value>) -> Result<String, ConfigError> {
    let name = match value {
        Some(Value::String(s)) => s,
        Some(Value::Number(n)) => n.to_string(),
        _ => return Err(ConfigError::new("name", "expected a string")),
    };
    let valid = |c: char| c.is_ascii_alphanumeric() || "-_.@".contains(c);
    if name.is_empty() || !name.chars().all(valid) {
        return Err(ConfigError::new(
            "name",
            format!("\"{name}\" is not a valid node name; use letters, digits and - _ . @ only"),
        ));
    }
    Ok(name)
}

fn parse_roles(known: &RoleSet, value: Option<Value>) -> Result<Vec<String>, ConfigError> {
    let valid = || known.names().join(", ");
    let list: Vec<String> = match value {
        Some(Value::Array(items)) => items
            .into_iter()
            .map(|item| match item {
                Value::String(s) => Ok(s.trim().to_string()),
                other => Err(ConfigError::new(
                    "roles",
                    format!(
                        "expected role names, found {other}; valid roles: {}",
                        valid()
                    ),
                )),
            })
            .collect::<Result<_, _>>()?,
        Some(Value::String(s)) => s.split(',').map(|r| r.trim().to_string()).collect(),
        _ => {
            return Err(ConfigError::new(
                "roles",
                format!("expected a list of role names; valid roles: {}", valid()),
            ))
        }
    };
    let list: Vec<String> = list.into_iter().filter(|r| !r.is_empty()).collect();
    if list.is_empty() {
        return Err(ConfigError::new(
            "roles",
            format!(
                "no roles selected; set `roles` in the config or pass --roles (valid roles: {})",
                valid()
            ),
        ));
    }
    for (i, role) in list.iter().enumerate() {
        if !known.contains(role) {
            return Err(ConfigError::new(
                "roles",
                format!("unknown role `{role}`; valid roles: {}", valid()),
            ));
        }
        if list[..i].contains(role) {
            return Err(ConfigError::new(
                "roles",
                format!("role `{role}` is listed twice"),
            ));
        }
    }
    Ok(list)
}

fn default_node_name() -> String {
    let mut buf = [0u8; 256];
    // SAFETY: gethostname writes at most buf.len() bytes into the buffer we own.
    let rc = unsafe { libc::gethostname(buf.as_mut_ptr().cast(), buf.len()) };
    let host = if rc == 0 {
        let end = buf.iter().position(|&b| b == 0).unwrap_or(buf.len());
        String::from_utf8_lossy(&buf[..end]).into_owned()
    } else {
        String::new()
    };
    let host: String = host
        .chars()
        .filter(|c| c.is_ascii_alphanumeric() || "-_.".contains(*c))
        .collect();
    if host.is_empty() {
        "troupe".to_string()
    } else {
        host
    }
}

/// The effective configuration as TOML, as `check-config` prints it.
pub fn to_toml(effective: &Value) -> String {
    match json_to_toml(effective) {
        Some(toml::Value::Table(table)) => {
            toml::to_string_pretty(&table).unwrap_or_else(|err| format!("# cannot render: {err}\n"))
        }
        _ => String::new(),
    }
}

/// TOML has no null: absent optional values are left out.
fn json_to_toml(value: &Value) -> Option<toml::Value> {
    Some(match value {
        Value::Null => return None,
        Value::Bool(b) => toml::Value::Boolean(*b),
        Value::Number(n) => match n.as_i64() {
            Some(i) => toml::Value::Integer(i),
            None => toml::Value::Float(n.as_f64().unwrap_or_default()),
        },
        Value::String(s) => toml::Value::String(s.clone()),
        Value::Array(items) => toml::Value::Array(items.iter().filter_map(json_to_toml).collect()),
        Value::Object(map) => toml::Value::Table(
            map.iter()
                .filter_map(|(k, v)| json_to_toml(v).map(|v| (k.clone(), v)))
                .collect(),
        ),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    fn known() -> RoleSet {
        crate::roles::known_roles()
    }

    fn file(text: &str) -> tempfile::NamedTempFile {
        let mut f = tempfile::Builder::new().suffix(".toml").tempfile().unwrap();
        f.write_all(text.as_bytes()).unwrap();
        f
    }

    fn env(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    fn load_err(text: &str, vars: &[(&str, &str)]) -> ConfigError {
        let f = file(text);
        match load(&known(), Some(f.path()), env(vars), &Overrides::default()) {
            Ok(_) => panic!("expected an error for {text:?} {vars:?}"),
            Err(err) => err,
        }
    }

    const FILE: &str = r#"
        name = "from-file"
        roles = ["heartbeat"]
        shutdown_timeout = "7s"
        [broker]
        frontend = "tcp://127.0.0.1:1001"
        [heartbeat]
        interval = "2s"
    "#;

    #[test]
    fn each_layer_overrides_the_one_below() {
        // Defaults only (an empty file): built-in values.
        let f = file("roles = [\"heartbeat\"]");
        let s = load(&known(), Some(f.path()), vec![], &Overrides::default()).unwrap();
        assert_eq!(s.shutdown_timeout, Duration::from_secs(5));
        assert_eq!(s.effective["broker"]["frontend"], "tcp://127.0.0.1:7501");
        assert_eq!(s.effective["heartbeat"]["interval"], "1s");
        assert_eq!(s.name, default_node_name());

        // File over defaults.
        let f = file(FILE);
        let s = load(&known(), Some(f.path()), vec![], &Overrides::default()).unwrap();
        assert_eq!(s.name, "from-file");
        assert_eq!(s.shutdown_timeout, Duration::from_secs(7));
        assert_eq!(s.effective["broker"]["frontend"], "tcp://127.0.0.1:1001");
        assert_eq!(s.effective["heartbeat"]["interval"], "2s");

        // Environment over file.
        let vars = env(&[
            ("TROUPE_NAME", "from-env"),
            ("TROUPE_SHUTDOWN_TIMEOUT", "9s"),
            ("TROUPE_BROKER__FRONTEND", "tcp://127.0.0.1:1002"),
            ("TROUPE_HEARTBEAT__INTERVAL", "3s"),
            ("TROUPE_ROLES", "heartbeat,ipc"),
            ("TROUPE_SERVICE_ID", "not-a-key"),
            ("PATH", "/bin"),
        ]);
        let s = load(
            &known(),
            Some(f.path()),
            vars.clone(),
            &Overrides::default(),
        )
        .unwrap();
        assert_eq!(s.name, "from-env");
        assert_eq!(s.shutdown_timeout, Duration::from_secs(9));
        assert_eq!(s.effective["broker"]["frontend"], "tcp://127.0.0.1:1002");
        assert_eq!(s.effective["heartbeat"]["interval"], "3s");
        assert_eq!(s.effective["roles"], json!(["heartbeat", "ipc"]));

        // Flags over environment.
        let flags = Overrides {
            name: Some("from-flag".into()),
            roles: Some(vec!["supervisor".into(), "heartbeat".into()]),
        };
        let s = load(&known(), Some(f.path()), vars, &flags).unwrap();
        assert_eq!(s.name, "from-flag");
        assert_eq!(s.effective["roles"], json!(["supervisor", "heartbeat"]));
    }

    #[test]
    fn embedded_default_runs_every_builtin_role() {
        let s = load(&known(), None, vec![], &Overrides::default()).unwrap();
        let names: Vec<_> = s.roles.iter().map(|r| r.name).collect();
        for role in ["ipc", "supervisor", "beacon", "broker"] {
            assert!(names.contains(&role), "{names:?}");
        }
    }

    #[test]
    fn roles_start_after_their_dependencies() {
        let flags = Overrides {
            roles: Some(vec!["broker".into(), "supervisor".into(), "ipc".into()]),
            ..Overrides::default()
        };
        let s = load(&known(), None, vec![], &flags).unwrap();
        let names: Vec<_> = s.roles.iter().map(|r| r.name).collect();
        assert_eq!(names, ["ipc", "supervisor", "broker"]);
    }

    #[test]
    fn unknown_top_level_key_names_it_and_the_valid_keys() {
        let err = load_err("roles = [\"ipc\"]\nnmae = \"x\"", &[]);
        assert_eq!(err.key, "nmae");
        assert!(
            err.message.contains("valid top-level keys: name, roles"),
            "{err}"
        );
    }

    #[test]
    fn unknown_key_in_a_role_table_names_it() {
        let err = load_err(
            "roles = [\"ipc\"]\n[broker]\nfrontendd = \"tcp://a:1\"",
            &[],
        );
        assert_eq!(err.key, "broker.frontendd");
        assert!(
            err.message.contains("expected one of") && err.message.contains("`frontend`"),
            "{err}"
        );
    }

    #[test]
    fn unknown_role_lists_the_valid_ones() {
        let err = load_err("roles = [\"ipc\", \"bogus\"]", &[]);
        assert_eq!(err.key, "roles");
        assert!(err.message.contains("unknown role `bogus`"), "{err}");
        assert!(
            err.message
                .contains("ipc, supervisor, beacon, broker, heartbeat"),
            "{err}"
        );
        let err = load_err("roles = []", &[]);
        assert!(err.message.contains("no roles selected"), "{err}");
        let err = load_err("roles = [\"ipc\", \"ipc\"]", &[]);
        assert!(err.message.contains("listed twice"), "{err}");
    }

    #[test]
    fn bad_address_names_the_key_and_the_accepted_forms() {
        let err = load_err(
            "roles = [\"ipc\"]\n[beacon]\nbind = \"127.0.0.1:7400\"",
            &[],
        );
        assert_eq!(err.key, "beacon.bind");
        assert!(err.message.contains("expected tcp://HOST:PORT"), "{err}");
        let err = load_err(
            "roles = [\"ipc\"]",
            &[("TROUPE_BROKER__BACKEND", "tcp://x")],
        );
        assert_eq!(err.key, "broker.backend");
    }

    #[test]
    fn bad_duration_names_the_key() {
        let err = load_err("roles = [\"ipc\"]\nshutdown_timeout = \"soon\"", &[]);
        assert_eq!(err.key, "shutdown_timeout");
        assert!(err.message.contains("like \"5s\""), "{err}");
        let err = load_err("roles = [\"ipc\"]\n[heartbeat]\ninterval = 5", &[]);
        assert_eq!(err.key, "heartbeat.interval");
        assert!(err.message.contains("needs a unit"), "{err}");
        let err = load_err("roles = [\"ipc\"]\n[heartbeat]\ninterval = \"0s\"", &[]);
        assert_eq!(err.key, "heartbeat.interval");
    }

    #[test]
    fn unknown_environment_key_names_the_variable() {
        let err = load_err(
            "roles = [\"ipc\"]",
            &[("TROUPE_BROKR__FRONTEND", "tcp://a:1")],
        );
        assert!(err.message.contains("TROUPE_BROKR__FRONTEND"), "{err}");
    }

    #[test]
    fn bad_toml_and_missing_file_are_reported() {
        let err = load_err("roles = [", &[]);
        assert!(!err.message.is_empty());
        let missing = Path::new("/nonexistent/troupe.toml");
        let err = match load(&known(), Some(missing), vec![], &Overrides::default()) {
            Err(err) => err,
            Ok(_) => panic!("missing file accepted"),
        };
        assert!(err.message.contains("does not exist"), "{err}");
    }

    #[test]
    fn cluster_table_is_checked() {
        let f = file("roles = [\"supervisor\", \"ipc\"]\n[cluster]\nrequires = [\"broker\"]");
        let s = load(&known(), Some(f.path()), vec![], &Overrides::default()).unwrap();
        assert_eq!(s.effective["cluster"]["resources"], serde_json::json!([]));
        assert!(s.cluster.is_none(), "no beacons: no cluster client");
        let vars = env(&[(
            "TROUPE_CLUSTER__BEACONS",
            "tcp://127.0.0.1:1,tcp://127.0.0.1:2",
        )]);
        let s = load(&known(), Some(f.path()), vars, &Overrides::default()).unwrap();
        assert!(s.cluster.is_some());
        let none = env(&[("TROUPE_CLUSTER__BEACONS", "")]);
        let s = load(&known(), None, none, &Overrides::default()).unwrap();
        assert!(s.cluster.is_none(), "an empty variable empties the list");
        assert_eq!(s.effective["cluster"]["beacons"], serde_json::json!([]));
        let vars = env(&[(
            "TROUPE_CLUSTER__BEACONS",
            "tcp://127.0.0.1:1,tcp://127.0.0.1:2",
        )]);
        let s = load(&known(), Some(f.path()), vars, &Overrides::default()).unwrap();
        assert_eq!(
            s.effective["cluster"]["beacons"].as_array().unwrap().len(),
            2
        );
        assert!(s.cluster.is_some());
        let s = load(&known(), None, vec![], &Overrides::default()).unwrap();
        assert!(
            s.cluster.is_some(),
            "the embedded default registers with its beacon"
        );

        let err = load_err("roles = [\"ipc\"]\n[cluster]\nbeacon = []", &[]);
        assert_eq!(err.key, "cluster.beacon");
        let err = load_err(
            "roles = [\"ipc\"]\n[cluster]\nbeacons = [\"localhost:7400\"]",
            &[],
        );
        assert_eq!(err.key, "cluster.beacons[0]");
        let err = load_err("roles = [\"ipc\"]\n[cluster]\nresource = \"a b\"", &[]);
        assert_eq!(err.key, "cluster.resource");
        let err = load_err(
            "roles = [\"ipc\"]\n[cluster]\nresources = [\"db\", \"broker\"]",
            &[],
        );
        assert_eq!(err.key, "cluster.resources[1]");
        assert!(err.message.contains("does not run"), "{err}");
        let err = load_err("roles = [\"ipc\"]", &[("TROUPE_CLUSTER__LIVENESS", "0")]);
        assert_eq!(err.key, "cluster.liveness");
    }

    #[test]
    fn the_single_resource_key_is_an_alias_with_a_warning() {
        let f = file("roles = [\"broker\"]\n[cluster]\nresource = \"broker\"");
        let s = load(&known(), Some(f.path()), vec![], &Overrides::default()).unwrap();
        let warnings = warnings(&s.effective);
        assert_eq!(warnings.len(), 1, "{warnings:?}");
        assert_eq!(warnings[0].0, "cluster.resource");
        assert!(
            warnings[0].1.contains("resources = [\"broker\"]"),
            "{warnings:?}"
        );
    }

    #[test]
    fn registry_users_need_beacons() {
        let service = "[[supervisor.services]]\nid = \"w\"\ncommand = \"/bin/true\"";
        let err = load_err(
            &format!("roles = [\"supervisor\"]\n{service}\nrequires = [\"broker\"]"),
            &[],
        );
        assert_eq!(err.key, "supervisor.services[0].requires");
        assert!(err.message.contains("[cluster] beacons"), "{err}");
        let f = file(&format!(
            "roles = [\"supervisor\"]\n[cluster]\nbeacons = [\"tcp://127.0.0.1:1\"]\n{service}\nrequires = [\"broker\"]"
        ));
        assert!(load(&known(), Some(f.path()), vec![], &Overrides::default()).is_ok());
    }

    #[test]
    fn bad_node_name_is_refused() {
        let err = load_err("roles = [\"ipc\"]\nname = \"a b\"", &[]);
        assert_eq!(err.key, "name");
    }

    #[test]
    fn effective_config_renders_as_toml_that_loads_back() {
        let f = file(FILE);
        let s = load(&known(), Some(f.path()), vec![], &Overrides::default()).unwrap();
        let text = to_toml(&s.effective);
        let again = file(&text);
        let s2 = load(&known(), Some(again.path()), vec![], &Overrides::default()).unwrap();
        assert_eq!(s.effective, s2.effective);
    }
}
