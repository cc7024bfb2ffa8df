//! `troupe ctl`: the operator's command line, a thin client of the control API. Each
//! subcommand is one or two API calls; the answer is printed as a table for people, or exactly
//! as the API's JSON with `--json`. Exit codes: 0 done, 1 the node refused or did not answer
//! (the message says why), 2 usage.

pub mod cluster;
mod render;

use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Duration;

use clap::{Args, Subcommand};
use hyper::Method;
use serde_json::{json, Value};

use crate::client::{Answer, Client, ClientError, Target};

/// How long an action may take on the node (stops wait for services' terminate timeouts).
const ACTION_WAIT: Duration = Duration::from_secs(300);

/// Flags of `troupe ctl`.
#[derive(Debug, Clone, Args)]
pub struct CtlArgs {
    /// The node to talk to, by name: its socket is found from the name
    /// (`$XDG_RUNTIME_DIR/troupe-NAME.ctl`, else `/tmp/troupe-NAME.ctl`).
    #[arg(long, value_name = "NAME", global = true, conflicts_with_all = ["socket", "url"])]
    pub node: Option<String>,
    /// The node's control socket.
    #[arg(long, value_name = "PATH", global = true, conflicts_with = "url")]
    pub socket: Option<PathBuf>,
    /// The node's TCP control address, e.g. `http://127.0.0.1:7600` (needs `--token-file`).
    #[arg(long, value_name = "URL", global = true)]
    pub url: Option<String>,
    /// File holding the bearer token for `--url`.
    #[arg(long, value_name = "FILE", global = true)]
    pub token_file: Option<PathBuf>,
    /// Config file whose node (`name`, `[control] socket`) to talk to, when no other flag
    /// says; without it, the embedded default's node (named after the host).
    #[arg(long, short = 'c', value_name = "FILE", global = true)]
    pub config: Option<PathBuf>,
    /// Print the API's JSON as it is.
    #[arg(long, global = true)]
    pub json: bool,
    /// With `status`: every online node that registered a control endpoint, found through the
    /// beacons of the config's `[cluster]` table (or `--beacon`), asked in parallel with the
    /// same token (`--token-file`, else the config's `[control] token_file`).
    #[arg(long, global = true, conflicts_with_all = ["node", "socket", "url"])]
    pub cluster: bool,
    /// With `--cluster`: ask this beacon instead of the configured ones (repeat for several).
    #[arg(long = "beacon", value_name = "ENDPOINT", global = true)]
    pub beacons: Vec<troupe_core::settings::ZmqEndpoint>,
    /// How long to wait for the node to connect and answer a question. Actions (start,
    /// stop, reload, …) wait for the node to finish them.
    #[arg(long, value_name = "DURATION", default_value = "5s", value_parser = parse_duration, global = true)]
    pub timeout: Duration,
    /// What to do.
    #[command(subcommand)]
    pub command: CtlCommand,
}

/// The subcommands of `troupe ctl`.
#[derive(Debug, Clone, Subcommand)]
pub enum CtlCommand {
    /// The node: name, version, uptime, roles, and its services.
    Status,
    /// Every service with its state, pid and restarts.
    Services,
    /// One service in full: state, plan position, last exit, spec.
    Service {
        /// The service's id.
        id: String,
    },
    /// Start a service that is down (plan `wait`, stopped).
    Start {
        /// The service's id.
        id: String,
    },
    /// Stop a service and keep its spec (it stays down until `start`).
    Stop {
        /// The service's id.
        id: String,
    },
    /// Stop a service and start it again (not counted as a crash).
    Restart {
        /// The service's id.
        id: String,
    },
    /// Send a signal to a service's main process.
    Signal {
        /// The service's id.
        id: String,
        /// A name (`HUP`, `SIGUSR1`) or number.
        signal: String,
    },
    /// Forget a service that is down.
    Delete {
        /// The service's id.
        id: String,
    },
    /// Add and start a service from a TOML file holding one service entry (the fields of a
    /// `[[supervisor.services]]` table, `id` included).
    Add {
        /// The TOML file.
        file: PathBuf,
    },
    /// Show a service's restart plan, or replace it (its counters are reset).
    Plan {
        /// The service's id.
        id: String,
        /// The new plan, as in the config: `'["restart", "wait"]'` or
        /// `'[{ restart_after_ms = 500 }]'` (TOML or JSON).
        #[arg(long, value_name = "PLAN")]
        set: Option<String>,
        /// With `--set`: a new count (a number or `infinity`).
        #[arg(long, value_name = "COUNT", requires = "set")]
        count: Option<String>,
    },
    /// Show the default child spec, or replace it from a TOML file (the fields of
    /// `[supervisor.default]`).
    DefaultSpec {
        /// The TOML file.
        #[arg(long, value_name = "FILE")]
        set: Option<PathBuf>,
    },
    /// Push a config (a JSON file) to a service over its channel; it is kept once the service
    /// acknowledges it.
    PushConfig {
        /// The service's id.
        id: String,
        /// The JSON file.
        file: PathBuf,
        /// How long to wait for the service's acknowledgement.
        #[arg(long, value_name = "DURATION", default_value = "5s", value_parser = parse_duration)]
        call_timeout: Duration,
    },
    /// Invoke a method of a service over its channel and print its answer.
    Invoke {
        /// The service's id.
        id: String,
        /// The method's name.
        method: String,
        /// Its parameters, as JSON.
        params: Option<String>,
        /// How long to wait for the service's answer.
        #[arg(long, value_name = "DURATION", default_value = "5s", value_parser = parse_duration)]
        call_timeout: Duration,
    },
    /// A service's recent output lines.
    Logs {
        /// The service's id.
        id: String,
        /// How many lines.
        #[arg(short = 'n', long = "lines", value_name = "N", default_value_t = 20)]
        lines: usize,
        /// Keep printing new lines until interrupted.
        #[arg(short = 'f', long)]
        follow: bool,
    },
    /// The broker: services, workers, queues and counters.
    Broker,
    /// The ipc hub: connections, mailboxes and counters.
    Ipc,
    /// What this node's cluster client knows: registration, beacons, requirements.
    Cluster,
    /// Re-read the config and apply what changed.
    Reload {
        /// Only show what would change.
        #[arg(long)]
        dry_run: bool,
    },
}

fn parse_duration(text: &str) -> Result<Duration, String> {
    text.parse::<troupe_core::settings::Duration>()
        .map(|d| d.get())
}

/// Where a failed command ends: the message to print and the exit code.
#[derive(Debug)]
pub struct Failure {
    /// The message, without the `troupe: ` prefix.
    pub message: String,
    /// 1 (refused, unreachable) or 2 (usage).
    pub code: i32,
}

impl Failure {
    fn usage(message: impl Into<String>) -> Self {
        Failure {
            message: message.into(),
            code: 2,
        }
    }

    fn refused(message: impl Into<String>) -> Self {
        Failure {
            message: message.into(),
            code: 1,
        }
    }
}

impl From<ClientError> for Failure {
    fn from(err: ClientError) -> Self {
        Failure::refused(err.to_string())
    }
}

/// The target the flags name, when they name one: `--socket`, `--url` (with `--token-file`)
/// or `--node`. `None`: the caller derives it from the config.
pub fn explicit_target(args: &CtlArgs) -> Result<Option<Target>, Failure> {
    if let Some(path) = &args.socket {
        return Ok(Some(Target::Unix(path.clone())));
    }
    if let Some(url) = &args.url {
        let authority = url
            .strip_prefix("http://")
            .unwrap_or(url)
            .trim_end_matches('/')
            .to_string();
        if authority.is_empty() || authority.contains('/') || url.starts_with("https://") {
            return Err(Failure::usage(format!(
                "--url \"{url}\": expected http://HOST:PORT"
            )));
        }
        let token = match &args.token_file {
            Some(path) => Some(
                crate::token::Token::from_file(path)
                    .map_err(|why| Failure::usage(format!("--token-file {why}")))?,
            ),
            None => None,
        };
        return Ok(Some(Target::Tcp { authority, token }));
    }
    if !args.beacons.is_empty() && !args.cluster {
        return Err(Failure::usage("--beacon goes with --cluster"));
    }
    if args.token_file.is_some() && !args.cluster {
        return Err(Failure::usage("--token-file goes with --url or --cluster"));
    }
    Ok(args
        .node
        .as_deref()
        .map(|node| Target::Unix(troupe_core::unix_socket::runtime_socket_path(node, "ctl"))))
}

/// Runs `args` against `target`. Returns the exit code (having printed the outcome).
pub fn run(args: CtlArgs, target: Target) -> i32 {
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(err) => {
            eprintln!("troupe: ctl: {err}");
            return 1;
        }
    };
    let client = Client::new(target, args.timeout);
    let result = runtime.block_on(execute(&args, &client));
    match result {
        Ok(()) => 0,
        Err(failure) => {
            eprintln!("troupe: {}", failure.message);
            failure.code
        }
    }
}

/// A session with one node.
struct Session<'a> {
    args: &'a CtlArgs,
    client: &'a Client,
}

impl Session<'_> {
    async fn get(&self, path: &str) -> Result<Value, Failure> {
        self.send(Method::GET, path, None, self.args.timeout).await
    }

    async fn act(&self, method: Method, path: &str, body: Option<Value>) -> Result<Value, Failure> {
        self.send(
            method,
            path,
            body.as_ref(),
            ACTION_WAIT.max(self.args.timeout),
        )
        .await
    }

    async fn send(
        &self,
        method: Method,
        path: &str,
        body: Option<&Value>,
        wait: Duration,
    ) -> Result<Value, Failure> {
        let answer = self.client.call(method, path, body, wait).await?;
        decode(answer)
    }

    /// Prints `value` as JSON with `--json`, else with `human`.
    fn show(&self, value: &Value, human: impl FnOnce(&Value) -> String) {
        let text = if self.args.json {
            serde_json::to_string_pretty(value).unwrap_or_default() + "\n"
        } else {
            human(value)
        };
        let mut out = std::io::stdout().lock();
        let _ = out.write_all(text.as_bytes());
        let _ = out.flush();
    }
}

/// The JSON of a successful answer; a refusal becomes a [`Failure`] carrying the node's
/// message (and the service it names).
fn decode(answer: Answer) -> Result<Value, Failure> {
    let value: Value = serde_json::from_slice(&answer.body).map_err(|e| {
        Failure::refused(format!(
            "the node answered {} with a body that is not JSON: {e}",
            answer.status
        ))
    })?;
    if answer.status < 300 {
        return Ok(value);
    }
    let message = value["error"]["message"]
        .as_str()
        .map(str::to_string)
        .unwrap_or_else(|| format!("the node answered {}: {value}", answer.status));
    Err(Failure::refused(message))
}

fn path_segment(id: &str) -> String {
    // Service ids are plain (letters, digits, - _ . @); anything else is escaped so that it
    // reaches the node, which names it in its refusal.
    id.bytes()
        .map(|b| match b {
            b'a'..=b'z' | b'A'..=b'Z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'@' => {
                (b as char).to_string()
            }
            other => format!("%{other:02X}"),
        })
        .collect()
}

fn read_file(path: &Path) -> Result<String, Failure> {
    std::fs::read_to_string(path).map_err(|e| Failure::usage(format!("{}: {e}", path.display())))
}

/// A TOML file as JSON (a TOML document is a table).
fn toml_file(path: &Path) -> Result<Value, Failure> {
    let text = read_file(path)?;
    let table: toml::Table = toml::from_str(&text)
        .map_err(|e| Failure::usage(format!("{}: not TOML: {e}", path.display())))?;
    serde_json::to_value(table).map_err(|e| Failure::usage(format!("{}: {e}", path.display())))
}

/// A value written as TOML (`["restart", { restart_after_ms = 500 }]`) or JSON.
fn inline_value(flag: &str, text: &str) -> Result<Value, Failure> {
    if let Ok(value) = serde_json::from_str::<Value>(text) {
        return Ok(value);
    }
    let doc = format!("value = {text}");
    let table: toml::Table = toml::from_str(&doc).map_err(|e| {
        Failure::usage(format!(
            "{flag} \"{text}\": neither JSON nor a TOML value: {e}"
        ))
    })?;
    serde_json::to_value(&table["value"]).map_err(|e| Failure::usage(format!("{flag}: {e}")))
}

async fn execute(args: &CtlArgs, client: &Client) -> Result<(), Failure> {
    let s = Session { args, client };
    match &args.command {
        CtlCommand::Status => {
            let node = s.get("/v1/node").await?;
            if args.json {
                s.show(&node, |_| String::new());
                return Ok(());
            }
            let runs_supervisor = node["roles"]
                .as_array()
                .is_some_and(|roles| roles.iter().any(|r| r["name"] == "supervisor"));
            let services = match runs_supervisor {
                true => Some(s.get("/v1/services").await?),
                false => None,
            };
            // The cluster client's state, when the node runs one (404 otherwise).
            let cluster = s.get("/v1/cluster").await.ok();
            s.show(&node, |node| {
                render::status(node, services.as_ref(), cluster.as_ref())
            });
        }
        CtlCommand::Services => {
            let services = s.get("/v1/services").await?;
            s.show(&services, render::services);
        }
        CtlCommand::Service { id } => {
            let service = s.get(&format!("/v1/services/{}", path_segment(id))).await?;
            s.show(&service, render::service);
        }
        CtlCommand::Start { id } => {
            let done = s
                .act(
                    Method::POST,
                    &format!("/v1/services/{}/start", path_segment(id)),
                    None,
                )
                .await?;
            s.show(&done, |v| format!("{id}: started{}\n", render::pid_note(v)));
        }
        CtlCommand::Stop { id } => {
            let done = s
                .act(
                    Method::POST,
                    &format!("/v1/services/{}/stop", path_segment(id)),
                    None,
                )
                .await?;
            s.show(&done, |_| format!("{id}: stopped\n"));
        }
        CtlCommand::Restart { id } => {
            let done = s
                .act(
                    Method::POST,
                    &format!("/v1/services/{}/restart", path_segment(id)),
                    None,
                )
                .await?;
            s.show(&done, |v| {
                format!("{id}: restarted{}\n", render::pid_note(v))
            });
        }
        CtlCommand::Signal { id, signal } => {
            let body = json!({ "signal": signal });
            let done = s
                .act(
                    Method::POST,
                    &format!("/v1/services/{}/signal", path_segment(id)),
                    Some(body),
                )
                .await?;
            s.show(&done, |v| {
                format!("{id}: sent {}\n", v["signal"].as_str().unwrap_or(signal))
            });
        }
        CtlCommand::Delete { id } => {
            let done = s
                .act(
                    Method::DELETE,
                    &format!("/v1/services/{}", path_segment(id)),
                    None,
                )
                .await?;
            s.show(&done, |_| format!("{id}: deleted\n"));
        }
        CtlCommand::Add { file } => {
            let spec = toml_file(file)?;
            let done = s.act(Method::POST, "/v1/services", Some(spec)).await?;
            s.show(&done, |v| {
                format!(
                    "{}: added{}\n",
                    v["id"].as_str().unwrap_or("?"),
                    render::pid_note(v)
                )
            });
        }
        CtlCommand::Plan { id, set, count } => {
            let path = format!("/v1/services/{}/plan", path_segment(id));
            match set {
                None => {
                    let plan = s.get(&path).await?;
                    s.show(&plan, render::plan);
                }
                Some(text) => {
                    let plan = inline_value("--set", text)?;
                    let mut body = json!({ "plan": plan });
                    if let Some(count) = count {
                        body["count"] = match count.parse::<u64>() {
                            Ok(n) => json!(n),
                            Err(_) => json!(count),
                        };
                    }
                    let done = s.act(Method::PUT, &path, Some(body)).await?;
                    s.show(&done, |v| {
                        format!(
                            "{id}: plan is now {} (counters reset)\n",
                            v["plan"].as_str().unwrap_or("?")
                        )
                    });
                }
            }
        }
        CtlCommand::DefaultSpec { set } => match set {
            None => {
                let spec = s.get("/v1/supervisor/default-spec").await?;
                s.show(&spec, render::toml);
            }
            Some(file) => {
                let spec = toml_file(file)?;
                let done = s
                    .act(Method::PUT, "/v1/supervisor/default-spec", Some(spec))
                    .await?;
                s.show(&done, |v| {
                    format!("default spec replaced:\n{}", render::toml(v))
                });
            }
        },
        CtlCommand::PushConfig {
            id,
            file,
            call_timeout,
        } => {
            let text = read_file(file)?;
            let config: Value = serde_json::from_str(&text)
                .map_err(|e| Failure::usage(format!("{}: not JSON: {e}", file.display())))?;
            let path = format!(
                "/v1/services/{}/config?timeout={}ms",
                path_segment(id),
                call_timeout.as_millis()
            );
            let done = s.act(Method::POST, &path, Some(config)).await?;
            s.show(&done, |_| format!("{id}: config acknowledged\n"));
        }
        CtlCommand::Invoke {
            id,
            method,
            params,
            call_timeout,
        } => {
            let params = match params {
                Some(text) => serde_json::from_str::<Value>(text)
                    .map_err(|e| Failure::usage(format!("parameters \"{text}\": not JSON: {e}")))?,
                None => Value::Null,
            };
            let body = json!({
                "method": method,
                "params": params,
                "timeout": format!("{}ms", call_timeout.as_millis()),
            });
            let path = format!("/v1/services/{}/invoke", path_segment(id));
            let done = s.act(Method::POST, &path, Some(body)).await?;
            s.show(&done, |v| match &v["result"] {
                Value::String(text) => format!("{text}\n"),
                other => serde_json::to_string_pretty(other).unwrap_or_default() + "\n",
            });
        }
        CtlCommand::Logs { id, lines, follow } => {
            let path = format!(
                "/v1/services/{}/logs?lines={lines}{}",
                path_segment(id),
                if *follow { "&follow=1" } else { "" }
            );
            if !*follow {
                let logs = s.get(&path).await?;
                s.show(&logs, render::log_lines);
                return Ok(());
            }
            let json_out = args.json;
            let mut pending = Vec::new();
            let answer = client
                .stream(&path, args.timeout, |chunk| {
                    pending.extend_from_slice(chunk);
                    while let Some(end) = pending.iter().position(|&b| b == b'\n') {
                        let line: Vec<u8> = pending.drain(..=end).collect();
                        render::follow_line(&line[..end], json_out);
                    }
                })
                .await?;
            if answer.status >= 300 {
                decode(answer)?;
            }
        }
        CtlCommand::Broker => {
            let broker = s.get("/v1/broker").await?;
            s.show(&broker, render::broker);
        }
        CtlCommand::Ipc => {
            let ipc = s.get("/v1/ipc").await?;
            s.show(&ipc, render::ipc);
        }
        CtlCommand::Cluster => {
            let cluster = s.get("/v1/cluster").await?;
            s.show(&cluster, render::cluster);
        }
        CtlCommand::Reload { dry_run } => {
            let path = if *dry_run {
                "/v1/reload?dry_run=1"
            } else {
                "/v1/reload"
            };
            let done = s.act(Method::POST, path, None).await?;
            s.show(&done, render::reload);
            if let Some(failed) = done["failed"].as_array().filter(|f| !f.is_empty()) {
                let failed: Vec<String> = failed
                    .iter()
                    .map(|f| f.as_str().unwrap_or_default().to_string())
                    .collect();
                return Err(Failure::refused(format!(
                    "reload partly failed: {}",
                    failed.join("; ")
                )));
            }
        }
    }
    Ok(())
}
