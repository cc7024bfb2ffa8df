//! The broker's command-line tools: `troupe echo-worker` (a worker built on
//! `troupe_broker::worker` that answers every request with its body) and `troupe call` (one
//! Majordomo request, reply printed on stdout).
//!
//! Both reach one broker at a given address (`--connect`, `--endpoint`), or find the brokers
//! through the beacons (`--beacon`, `--config`, or `TROUPE_BEACONS` in the environment, see
//! [`broker_source`]) or etcd (a `--config` whose `[cluster]` uses etcd, or `TROUPE_CLUSTER`):
//! the echo worker then serves every online broker that has the service's
//! backend and follows them as they come and go; `call` sends its request to one of them.

use std::collections::BTreeSet;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use troupe_beacon::client::{Backend, ClusterConfig};
use troupe_broker::client::{ClientError, ClientOptions, MajordomoClient, MultiMajordomoClient};
use troupe_broker::discover::{self, DiscoverKind, DiscoverOptions};
use troupe_broker::worker::{Handler, Worker, WorkerFraming, WorkerOptions};
use troupe_broker::worker_set::WorkerSet;
use troupe_core::cluster::{ENV_BEACONS, ENV_CLUSTER, ENV_COOKIE_FILE};

use crate::cli::{BrokerDiscoveryArgs, CallArgs, EchoFraming, EchoWorkerArgs, LogFormat};

/// `echo-worker`'s broker backend when none is given and no beacon is known.
pub const DEFAULT_BACKEND: &str = "tcp://127.0.0.1:7502";
/// `call`'s Majordomo socket when none is given and no beacon is known.
pub const DEFAULT_MAJORDOMO: &str = "tcp://127.0.0.1:7500";

/// Where a tool finds its broker(s).
#[derive(Debug, Clone, PartialEq)]
pub enum BrokerSource {
    /// One broker at this address.
    Direct(String),
    /// The online brokers, through these beacons.
    Beacons {
        /// The beacons to ask.
        beacons: Vec<String>,
        /// The cluster's cookie file, if any.
        cookie_file: Option<PathBuf>,
    },
    /// The online brokers, through another backend (etcd): its `[cluster]` keys.
    Cluster(Box<ClusterConfig>),
}

impl BrokerSource {
    fn describe_beacons(beacons: &[String]) -> String {
        match beacons {
            [one] => format!("beacon {one}"),
            many => format!("beacons {}", many.join(", ")),
        }
    }
}

/// Chooses where the brokers are, in this order:
///
/// 1. `direct` (`--connect` / `--endpoint`): that broker;
/// 2. `--beacon` flags, else the `[cluster]` table of `--config` (its `beacons`, which must
///    not be empty), else `TROUPE_BEACONS` from `env` (space-separated): the brokers found
///    through those beacons, with the cookie file of `--cookie-file`, else of the config's
///    `cookie_file`, else (with beacons from the environment) `TROUPE_COOKIE_FILE`;
/// 3. otherwise `default`.
pub fn broker_source(
    direct: Option<&str>,
    default: &str,
    args: &BrokerDiscoveryArgs,
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<BrokerSource, String> {
    if let Some(direct) = direct {
        return Ok(BrokerSource::Direct(direct.to_string()));
    }
    let nonempty = |value: Option<String>| value.filter(|v| !v.trim().is_empty());
    if args.beacons.is_empty() {
        if let Some(cluster) = other_backend(args.config.as_deref(), env)? {
            return Ok(BrokerSource::Cluster(Box::new(cluster)));
        }
    }
    let from_file = match &args.config {
        Some(path) => Some(read_cluster_table(path)?),
        None => None,
    };
    let (beacons, fallback_cookie) = if !args.beacons.is_empty() {
        let cookie = from_file.as_ref().and_then(|(_, cookie)| cookie.clone());
        (args.beacons.clone(), cookie)
    } else if let Some((beacons, cookie)) = from_file {
        if beacons.is_empty() {
            let path = args.config.as_deref().unwrap_or(Path::new(""));
            return Err(format!(
                "the [cluster] table of {} names no beacons; pass --beacon",
                path.display()
            ));
        }
        (beacons, cookie)
    } else if let Some(listed) = nonempty(env(ENV_BEACONS)) {
        let beacons = listed.split_whitespace().map(String::from).collect();
        (beacons, nonempty(env(ENV_COOKIE_FILE)).map(PathBuf::from))
    } else {
        if args.cookie_file.is_some() {
            return Err(format!(
                "--cookie-file needs beacons: pass --beacon or --config, or set {ENV_BEACONS}"
            ));
        }
        return Ok(BrokerSource::Direct(default.to_string()));
    };
    Ok(BrokerSource::Beacons {
        beacons,
        cookie_file: args.cookie_file.clone().or(fallback_cookie),
    })
}

/// Where a tool follows the brokers: beacons (with their cookie file), or another backend.
struct Through {
    beacons: Vec<String>,
    cookie_file: Option<PathBuf>,
    cluster: Option<ClusterConfig>,
}

impl Through {
    /// For messages: "beacon X", "beacons X, Y" or "etcd X Y".
    fn describe(&self) -> String {
        match &self.cluster {
            Some(cluster) => format!(
                "{} {}",
                cluster.backend.as_str(),
                cluster.targets().join(" ")
            ),
            None => BrokerSource::describe_beacons(&self.beacons),
        }
    }
}

/// The `[cluster]` table of the config file, when it uses another backend than beacons; else,
/// without a config file and without `TROUPE_BEACONS`, `TROUPE_CLUSTER` from `env`.
fn other_backend(
    config: Option<&Path>,
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<Option<ClusterConfig>, String> {
    let cluster: ClusterConfig = match config {
        Some(path) => {
            let shown = path.display();
            let text = std::fs::read_to_string(path)
                .map_err(|err| format!("cannot read the config file {shown}: {err}"))?;
            let document: toml::Table =
                toml::from_str(&text).map_err(|err| format!("{shown} is not valid TOML: {err}"))?;
            match document.get("cluster") {
                Some(table) if table.get("backend").and_then(|b| b.as_str()) == Some("etcd") => {
                    table
                        .clone()
                        .try_into()
                        .map_err(|err| format!("the [cluster] table of {shown}: {err}"))?
                }
                _ => return Ok(None),
            }
        }
        None => {
            let beacons = env(ENV_BEACONS).filter(|b| !b.trim().is_empty());
            match env(ENV_CLUSTER).filter(|c| !c.trim().is_empty()) {
                Some(json) if beacons.is_none() => serde_json::from_str(&json)
                    .map_err(|err| format!("{ENV_CLUSTER} is not a [cluster] table: {err}"))?,
                _ => return Ok(None),
            }
        }
    };
    if cluster.backend == Backend::Beacon {
        return Ok(None);
    }
    cluster
        .validate()
        .map_err(|err| err.within("cluster").to_string())?;
    Ok(Some(cluster.for_services()))
}

/// The `beacons` and `cookie_file` of a node config's `[cluster]` table.
fn read_cluster_table(path: &Path) -> Result<(Vec<String>, Option<PathBuf>), String> {
    let shown = path.display();
    let text = std::fs::read_to_string(path)
        .map_err(|err| format!("cannot read the config file {shown}: {err}"))?;
    let document: toml::Table =
        toml::from_str(&text).map_err(|err| format!("{shown} is not valid TOML: {err}"))?;
    let Some(cluster) = document.get("cluster") else {
        return Ok((Vec::new(), None));
    };
    let cluster = cluster
        .as_table()
        .ok_or_else(|| format!("`cluster` in {shown} must be a table"))?;
    let beacons = match cluster.get("beacons") {
        None => Vec::new(),
        Some(list) => list
            .as_array()
            .and_then(|items| {
                items
                    .iter()
                    .map(|item| item.as_str().map(String::from))
                    .collect::<Option<Vec<_>>>()
            })
            .ok_or_else(|| format!("`cluster.beacons` in {shown} must be a list of addresses"))?,
    };
    let cookie_file = match cluster.get("cookie_file") {
        None => None,
        Some(value) => {
            let file = value
                .as_str()
                .ok_or_else(|| format!("`cluster.cookie_file` in {shown} must be a path"))?;
            (!file.is_empty()).then(|| PathBuf::from(file))
        }
    };
    let inline_cookie = cluster
        .get("cookie")
        .and_then(|c| c.as_str())
        .is_some_and(|c| !c.is_empty());
    if inline_cookie && cookie_file.is_none() {
        return Err(format!(
            "the [cluster] table of {shown} sets `cookie`, which this tool does not read; put the cookie in a file (`cookie_file`) or pass --cookie-file"
        ));
    }
    Ok((beacons, cookie_file))
}

fn env_var(name: &str) -> Option<String> {
    std::env::var(name).ok()
}

/// Runs the echo worker until SIGTERM/SIGINT, then leaves gracefully. Returns the exit code.
pub fn echo_worker(args: EchoWorkerArgs) -> i32 {
    if let Err(err) = crate::logging::init(args.log_level.as_deref(), LogFormat::Text) {
        eprintln!("troupe: {err}");
        return 2;
    }
    let source = match broker_source(
        args.connect.as_deref(),
        DEFAULT_BACKEND,
        &args.discovery,
        &env_var,
    ) {
        Ok(source) => source,
        Err(err) => {
            eprintln!("troupe: echo-worker: {err}");
            return 2;
        }
    };
    let endpoint = match &source {
        BrokerSource::Direct(endpoint) => endpoint.clone(),
        BrokerSource::Beacons { .. } | BrokerSource::Cluster(_) => String::new(),
    };
    let options = WorkerOptions {
        framing: match args.framing {
            EchoFraming::Seed => WorkerFraming::Seed,
            EchoFraming::Pirate => WorkerFraming::Pirate,
        },
        concurrency: args.concurrency,
        heartbeat_interval: args.heartbeat_interval,
        liveness: args.liveness,
        drain_timeout: args.drain_timeout,
        ..WorkerOptions::new(endpoint)
    };
    if let Err(err) = options.validate() {
        eprintln!("troupe: echo-worker: {err}");
        return 2;
    }
    let delay = args.delay;
    let handler: Handler = Arc::new(move |body: Vec<Vec<u8>>| {
        tracing::debug!(frames = body.len(), "request received");
        if !delay.is_zero() {
            std::thread::sleep(delay);
        }
        body
    });
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(err) => {
            eprintln!("troupe: echo-worker: {err}");
            return 1;
        }
    };
    runtime.block_on(async move {
        let mut signals = match crate::signals::Signals::new() {
            Ok(signals) => signals,
            Err(err) => {
                eprintln!("troupe: echo-worker: cannot listen for signals: {err}");
                return 1;
            }
        };
        let (done_tx, done_rx) = tokio::sync::oneshot::channel();
        let started = match source {
            BrokerSource::Direct(connect) => start_one(&args, &connect, options, handler, done_tx),
            BrokerSource::Beacons {
                beacons,
                cookie_file,
            } => {
                let through = Through {
                    beacons,
                    cookie_file,
                    cluster: None,
                };
                start_following(&args, through, options, handler, done_tx)
            }
            BrokerSource::Cluster(cluster) => {
                let through = Through {
                    beacons: Vec::new(),
                    cookie_file: None,
                    cluster: Some(*cluster),
                };
                start_following(&args, through, options, handler, done_tx)
            }
        };
        let running = match started {
            Ok(running) => running,
            Err(code) => return code,
        };
        tokio::select! {
            signal = signals.recv() => {
                tracing::info!(signal, "signal received; leaving the brokers");
                (running.stop)();
            }
            _ = done_rx => {}
        }
        if let Some(discovery) = running.discovery {
            discovery.stop();
        }
        match running.thread.join() {
            Ok(Ok((handled, reconnects))) => {
                tracing::info!(handled, reconnects, "echo worker stopped");
                0
            }
            Ok(Err(err)) => {
                eprintln!("troupe: echo-worker: {err}");
                1
            }
            Err(_) => 1,
        }
    })
}

/// A running echo worker: how to make it leave, the thread that returns (handled,
/// reconnects) once it has left, and the discovery it follows, if any.
struct RunningWorker {
    stop: Box<dyn Fn() + Send>,
    thread: std::thread::JoinHandle<Result<(u64, u64), String>>,
    discovery: Option<discover::Discovery>,
}

/// The echo worker of one broker at `connect`; `done` fires when it has left. An error is
/// the exit code.
fn start_one(
    args: &EchoWorkerArgs,
    connect: &str,
    options: WorkerOptions,
    handler: Handler,
    done: tokio::sync::oneshot::Sender<()>,
) -> Result<RunningWorker, i32> {
    let (worker, stop) = Worker::new(options).map_err(|err| {
        eprintln!("troupe: echo-worker: {err}");
        2
    })?;
    let thread = std::thread::spawn(move || {
        let result = worker.run(handler);
        let _ = done.send(());
        result
            .map(|s| (s.handled, s.reconnects))
            .map_err(|err| err.to_string())
    });
    tracing::info!(
        connect = %connect,
        concurrency = args.concurrency,
        framing = ?args.framing,
        pid = std::process::id(),
        "echo worker started"
    );
    Ok(RunningWorker {
        stop: Box::new(move || stop.stop()),
        thread,
        discovery: None,
    })
}

/// The echo worker of every online broker found through `beacons` that has a backend for
/// `args.service`, following them as they come and go; `done` fires when it has left them
/// all. An error is the exit code.
fn start_following(
    args: &EchoWorkerArgs,
    through: Through,
    options: WorkerOptions,
    handler: Handler,
    done: tokio::sync::oneshot::Sender<()>,
) -> Result<RunningWorker, i32> {
    let set = WorkerSet::start(options, BTreeSet::new(), handler).map_err(|err| {
        eprintln!("troupe: echo-worker: {err}");
        2
    })?;
    let handle = set.handle();
    let service = args.service.clone();
    let shown = through.describe();
    let follow = DiscoverOptions {
        beacons: through.beacons,
        cookie_file: through.cookie_file,
        cluster: through.cluster,
        service: args.service.clone(),
        kind: DiscoverKind::Worker,
    };
    let updates = handle.clone();
    let discovery = discover::follow(follow, move |endpoints| {
        if endpoints.is_empty() {
            tracing::info!(%service, "no online broker has a backend for the service; waiting for one");
        }
        updates.set_endpoints(endpoints);
    });
    let discovery = match discovery {
        Ok(discovery) => discovery,
        Err(err) => {
            set.stop();
            eprintln!(
                "troupe: echo-worker: cannot find the brokers of service {}: {err}",
                args.service
            );
            return Err(1);
        }
    };
    let thread = std::thread::spawn(move || {
        let summary = set.wait();
        let _ = done.send(());
        Ok((summary.handled, summary.reconnects))
    });
    tracing::info!(
        service = %args.service,
        through = %shown,
        concurrency = args.concurrency,
        framing = ?args.framing,
        pid = std::process::id(),
        "echo worker started; following the brokers"
    );
    Ok(RunningWorker {
        stop: Box::new(move || handle.stop()),
        thread,
        discovery: Some(discovery),
    })
}

/// Sends one request and prints the reply's frames, one per line. Returns the exit code: 0
/// for a reply, 1 for an error reply or no reply.
pub fn call(args: CallArgs) -> i32 {
    let management = args.service.starts_with("mmi.");
    if let Err(err) = troupe_broker::config::check_service_name(&args.service) {
        if !management {
            eprintln!("troupe: call: {err}");
            return 2;
        }
    }
    let source = match broker_source(
        args.endpoint.as_deref(),
        DEFAULT_MAJORDOMO,
        &args.discovery,
        &env_var,
    ) {
        Ok(source) => source,
        Err(err) => {
            eprintln!("troupe: call {}: {err}", args.service);
            return 2;
        }
    };
    let options = ClientOptions {
        timeout: args.timeout,
        retries: args.retries,
    };
    let body = vec![args.payload.clone().into_bytes()];
    match source {
        BrokerSource::Direct(endpoint) => {
            let mut client = MajordomoClient::new(endpoint.clone(), options);
            match client.request(&args.service, body) {
                Ok(frames) => print_frames(frames),
                Err(ClientError::NoReply { timeout, .. }) => {
                    eprintln!(
                        "troupe: call {}: no reply from {} within {} (is the broker running with its Majordomo socket there?)",
                        args.service,
                        endpoint,
                        troupe_core::settings::Duration(timeout)
                    );
                    1
                }
                Err(err) => {
                    eprintln!("troupe: call {}: {err}", args.service);
                    1
                }
            }
        }
        BrokerSource::Beacons {
            beacons,
            cookie_file,
        } => {
            let through = Through {
                beacons,
                cookie_file,
                cluster: None,
            };
            call_discovered(&args, options, body, through)
        }
        BrokerSource::Cluster(cluster) => {
            let through = Through {
                beacons: Vec::new(),
                cookie_file: None,
                cluster: Some(*cluster),
            };
            call_discovered(&args, options, body, through)
        }
    }
}

/// `call` through the brokers found by the beacons.
fn call_discovered(
    args: &CallArgs,
    options: ClientOptions,
    body: Vec<Vec<u8>>,
    through: Through,
) -> i32 {
    // Only errors: a broken cookie or a beacon refusing us shows; routine chatter does not.
    let _ = crate::logging::init(Some("error"), LogFormat::Text);
    let service = &args.service;
    let shown = through.describe();
    let (mut client, brokers) = match MultiMajordomoClient::new(options) {
        Ok(pair) => pair,
        Err(err) => {
            eprintln!("troupe: call {service}: {err}");
            return 1;
        }
    };
    let follow = DiscoverOptions {
        beacons: through.beacons,
        cookie_file: through.cookie_file,
        cluster: through.cluster,
        service: service.clone(),
        kind: DiscoverKind::Client,
    };
    let discovery = match discover::follow(follow, move |endpoints| {
        brokers.set_endpoints(endpoints);
    }) {
        Ok(discovery) => discovery,
        Err(err) => {
            eprintln!("troupe: call {service}: cannot find a broker: {err}");
            return 1;
        }
    };
    let timeout = troupe_core::settings::Duration(args.timeout);
    if !client.wait_for_broker(args.timeout) {
        discovery.stop();
        eprintln!(
            "troupe: call {service}: no online broker with a Majordomo socket found through the {shown} within {timeout}"
        );
        return 1;
    }
    let result = client.request(service, body);
    discovery.stop();
    match result {
        Ok(frames) => print_frames(frames),
        Err(ClientError::NoReply {
            endpoint, attempts, ..
        }) => {
            eprintln!(
                "troupe: call {service}: no reply from the broker at {endpoint} (found through the {shown}) within {timeout}, after {attempts} attempt(s)"
            );
            1
        }
        Err(ClientError::BrokerLost { endpoint, attempts }) => {
            eprintln!(
                "troupe: call {service}: the broker at {endpoint} left the cluster while it held the request (after {attempts} attempt(s); --retries sends it to another broker)"
            );
            1
        }
        Err(ClientError::NoBroker) => {
            eprintln!(
                "troupe: call {service}: the brokers found through the {shown} went away before the request was sent"
            );
            1
        }
        Err(err) => {
            eprintln!("troupe: call {service}: {err}");
            1
        }
    }
}

fn print_frames(frames: Vec<Vec<u8>>) -> i32 {
    let mut stdout = std::io::stdout().lock();
    for frame in frames {
        let _ = stdout.write_all(&frame);
        let _ = stdout.write_all(b"\n");
    }
    0
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use super::*;

    fn env(vars: &[(&str, &str)]) -> impl Fn(&str) -> Option<String> {
        let vars: HashMap<String, String> = vars
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        move |name| vars.get(name).cloned()
    }

    fn flags(beacons: &[&str], cookie: Option<&str>, config: Option<&Path>) -> BrokerDiscoveryArgs {
        BrokerDiscoveryArgs {
            beacons: beacons.iter().map(|b| b.to_string()).collect(),
            cookie_file: cookie.map(PathBuf::from),
            config: config.map(Path::to_path_buf),
        }
    }

    fn beacons(list: &[&str], cookie: Option<&str>) -> BrokerSource {
        BrokerSource::Beacons {
            beacons: list.iter().map(|b| b.to_string()).collect(),
            cookie_file: cookie.map(PathBuf::from),
        }
    }

    const SUPERVISED: &[(&str, &str)] = &[
        ("TROUPE_BEACONS", "tcp://10.0.0.1:7400 tcp://10.0.0.2:7400"),
        ("TROUPE_COOKIE_FILE", "/run/cookie"),
    ];

    #[test]
    fn an_address_wins_then_flags_then_the_environment_then_the_default() {
        let none = flags(&[], None, None);
        assert_eq!(
            broker_source(Some("tcp://b:1"), DEFAULT_BACKEND, &none, &env(SUPERVISED)),
            Ok(BrokerSource::Direct("tcp://b:1".into()))
        );
        assert_eq!(
            broker_source(None, DEFAULT_BACKEND, &none, &env(&[])),
            Ok(BrokerSource::Direct(DEFAULT_BACKEND.into()))
        );
        assert_eq!(
            broker_source(
                None,
                DEFAULT_BACKEND,
                &none,
                &env(&[("TROUPE_BEACONS", " ")])
            ),
            Ok(BrokerSource::Direct(DEFAULT_BACKEND.into()))
        );
        assert_eq!(
            broker_source(None, DEFAULT_BACKEND, &none, &env(SUPERVISED)),
            Ok(beacons(
                &["tcp://10.0.0.1:7400", "tcp://10.0.0.2:7400"],
                Some("/run/cookie")
            ))
        );
        let flagged = flags(&["tcp://h:7400"], None, None);
        assert_eq!(
            broker_source(None, DEFAULT_BACKEND, &flagged, &env(SUPERVISED)),
            Ok(beacons(&["tcp://h:7400"], None))
        );
        let with_cookie = flags(&["tcp://h:7400"], Some("/c"), None);
        assert_eq!(
            broker_source(None, DEFAULT_BACKEND, &with_cookie, &env(&[])),
            Ok(beacons(&["tcp://h:7400"], Some("/c")))
        );
        let cookie_only = flags(&[], Some("/c"), None);
        let err = broker_source(None, DEFAULT_BACKEND, &cookie_only, &env(&[])).unwrap_err();
        assert!(err.contains("--cookie-file needs beacons"), "{err}");
    }

    #[test]
    fn a_config_file_gives_its_cluster_beacons_and_cookie_file() {
        let dir = tempfile::tempdir().unwrap();
        let config = dir.path().join("edge.toml");
        std::fs::write(
            &config,
            "roles = [\"supervisor\"]\n[cluster]\nbeacons = [\"tcp://10.0.0.1:7400\"]\ncookie_file = \"/etc/troupe/cookie\"\n",
        )
        .unwrap();
        let from_file = flags(&[], None, Some(&config));
        assert_eq!(
            broker_source(None, DEFAULT_BACKEND, &from_file, &env(SUPERVISED)),
            Ok(beacons(
                &["tcp://10.0.0.1:7400"],
                Some("/etc/troupe/cookie")
            ))
        );
        // Flags win over the file.
        let overridden = flags(&["tcp://other:7400"], Some("/mine"), Some(&config));
        assert_eq!(
            broker_source(None, DEFAULT_BACKEND, &overridden, &env(&[])),
            Ok(beacons(&["tcp://other:7400"], Some("/mine")))
        );

        let empty = dir.path().join("single.toml");
        std::fs::write(&empty, "roles = [\"broker\"]\n").unwrap();
        let err = broker_source(
            None,
            DEFAULT_BACKEND,
            &flags(&[], None, Some(&empty)),
            &env(&[]),
        )
        .unwrap_err();
        assert!(err.contains("names no beacons"), "{err}");
        assert!(err.contains("single.toml"), "{err}");

        let inline = dir.path().join("inline.toml");
        std::fs::write(
            &inline,
            "[cluster]\nbeacons = [\"tcp://a:1\"]\ncookie = \"x\"\n",
        )
        .unwrap();
        let err = broker_source(
            None,
            DEFAULT_BACKEND,
            &flags(&[], None, Some(&inline)),
            &env(&[]),
        )
        .unwrap_err();
        assert!(err.contains("cookie_file"), "{err}");

        let missing = dir.path().join("nope.toml");
        let err = broker_source(
            None,
            DEFAULT_BACKEND,
            &flags(&[], None, Some(&missing)),
            &env(&[]),
        )
        .unwrap_err();
        assert!(err.contains("cannot read the config file"), "{err}");
    }
}
