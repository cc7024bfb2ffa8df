//! The command line: `troupe run`, `troupe check-config` and their shared node flags, the
//! broker's tools `troupe echo-worker` and `troupe call`, `troupe cluster` and `troupe ctl`.

use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, Parser, Subcommand, ValueEnum};

/// Troupe: one node of an actor platform whose roles are chosen by configuration.
#[derive(Debug, Parser)]
#[command(name = "troupe", version, propagate_version = true)]
pub struct Cli {
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// The subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Start a node and run it until SIGINT or SIGTERM.
    Run(NodeArgs),
    /// Validate the configuration and print the effective merged result as TOML.
    CheckConfig(NodeArgs),
    /// Run a Paranoid Pirate worker that answers every request with its own body.
    EchoWorker(EchoWorkerArgs),
    /// Send one request to a service through a broker's Majordomo socket and print the reply.
    Call(CallArgs),
    /// Ask the cluster's beacons: list nodes, look up a resource, show a node's requirements,
    /// or watch changes.
    Cluster(troupe_beacon::cli::ClusterArgs),
    /// Talk to a running node's control API: status, services, start/stop/restart, logs,
    /// reload, the broker's and the ipc hub's view.
    Ctl(troupe_control::ctl::CtlArgs),
    /// The node's guard (started by the node itself): kills the node's services when the
    /// node dies.
    #[command(name = "__guard", hide = true)]
    Guard {
        /// The node's services folder in the cgroup hierarchy.
        dir: PathBuf,
    },
}

/// Where `troupe echo-worker` and `troupe call` find brokers through the beacons, instead of
/// one given address. Without any of these (and without `--connect`/`--endpoint`), the
/// environment's `TROUPE_BEACONS` (space-separated) and `TROUPE_COOKIE_FILE` are used when
/// set (a supervisor gives them to its services); otherwise the default address.
#[derive(Debug, Clone, Default, Args)]
pub struct BrokerDiscoveryArgs {
    /// Find the brokers through this beacon (repeat for several).
    #[arg(long = "beacon", value_name = "ENDPOINT")]
    pub beacons: Vec<String>,
    /// The cluster's cookie file (mode 0600), when the beacons require one.
    #[arg(long, value_name = "FILE")]
    pub cookie_file: Option<PathBuf>,
    /// Take the beacons and the cookie file from this node config's `[cluster]` table, or
    /// follow the brokers through etcd when it has `backend = "etcd"` (`--beacon` and
    /// `--cookie-file` win over it).
    #[arg(long, short = 'c', value_name = "FILE")]
    pub config: Option<PathBuf>,
}

/// Flags of `troupe echo-worker`.
#[derive(Debug, Clone, Args)]
pub struct EchoWorkerArgs {
    /// The broker backend to connect to [default: tcp://127.0.0.1:7502, when no beacon is
    /// given or in TROUPE_BEACONS].
    #[arg(long, value_name = "ENDPOINT", conflicts_with_all = ["beacons", "cookie_file", "config"])]
    pub connect: Option<String>,
    /// With beacons: the broker service to serve; the worker joins the `<service>.backend` of
    /// every online broker that has one, and follows them as they come and go.
    #[arg(long, value_name = "NAME", default_value = "echo")]
    pub service: String,
    /// Finding the brokers through the beacons.
    #[command(flatten)]
    pub discovery: BrokerDiscoveryArgs,
    /// Requests handled at once (1 to 255), announced to the broker as free concurrency.
    #[arg(long, value_name = "N", default_value_t = 1, value_parser = clap::value_parser!(u8).range(1..))]
    pub concurrency: u8,
    /// Framing: `seed` (announces its concurrency, leaves with STOP) or `pirate` (standard
    /// Paranoid Pirate, concurrency 1 as far as the broker knows).
    #[arg(long, value_enum, default_value_t = EchoFraming::Seed)]
    pub framing: EchoFraming,
    /// Time between heartbeats; must match the broker's `heartbeat_interval`.
    #[arg(long, value_name = "DURATION", default_value = "1s", value_parser = parse_duration)]
    pub heartbeat_interval: Duration,
    /// Silent heartbeat intervals after which the broker is considered gone (reconnect).
    #[arg(long, value_name = "N", default_value_t = 3, value_parser = clap::value_parser!(u32).range(1..))]
    pub liveness: u32,
    /// How long each request takes before its reply is sent (to simulate work).
    #[arg(long, value_name = "DURATION", default_value = "0s", value_parser = parse_duration)]
    pub delay: Duration,
    /// On SIGTERM/SIGINT, how long to keep serving requests already sent before leaving.
    #[arg(long, value_name = "DURATION", default_value = "5s", value_parser = parse_duration)]
    pub drain_timeout: Duration,
    /// Log filter (default: RUST_LOG, else `info`).
    #[arg(long, value_name = "LEVEL")]
    pub log_level: Option<String>,
}

/// How `troupe echo-worker` frames its messages.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum EchoFraming {
    /// The seed's framing.
    Seed,
    /// Standard Paranoid Pirate.
    Pirate,
}

/// Flags of `troupe call`.
#[derive(Debug, Clone, Args)]
pub struct CallArgs {
    /// The service to call, e.g. `echo`.
    pub service: String,
    /// The request body (one frame).
    pub payload: String,
    /// The broker's Majordomo socket [default: tcp://127.0.0.1:7500, when no beacon is given
    /// or in TROUPE_BEACONS].
    #[arg(long, value_name = "ENDPOINT", conflicts_with_all = ["beacons", "cookie_file", "config"])]
    pub endpoint: Option<String>,
    /// Finding the brokers through the beacons: the request goes to one online broker with a
    /// Majordomo socket (one serving SERVICE on its own sockets, if any does).
    #[command(flatten)]
    pub discovery: BrokerDiscoveryArgs,
    /// How long to wait for the reply (per attempt); with beacons, also how long to wait for
    /// a first broker.
    #[arg(long, value_name = "DURATION", default_value = "5s", value_parser = parse_duration)]
    pub timeout: Duration,
    /// Attempts after the first when no reply comes, or when the broker goes away (with
    /// beacons: on the next broker). Only for requests safe to repeat.
    #[arg(long, value_name = "N", default_value_t = 0)]
    pub retries: u32,
}

fn parse_duration(text: &str) -> Result<Duration, String> {
    text.parse::<troupe_core::settings::Duration>()
        .map(|d| d.get())
}

/// Flags shared by `run` and `check-config`. Flags override the environment, which overrides
/// the config file, which overrides built-in defaults.
#[derive(Debug, Clone, Args)]
pub struct NodeArgs {
    /// TOML config file; without it the embedded single-machine default is used.
    #[arg(long, short = 'c', value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// Roles to run, comma-separated (overrides `roles` from the config).
    #[arg(long, value_delimiter = ',', value_name = "ROLE,...")]
    pub roles: Option<Vec<String>>,
    /// Node name, unique in the cluster (default: the host name).
    #[arg(long, value_name = "NAME")]
    pub name: Option<String>,
    /// Log filter, e.g. `info` or `troupe_broker=debug` (default: RUST_LOG, else `info`).
    #[arg(long, value_name = "LEVEL")]
    pub log_level: Option<String>,
    /// Log output format.
    #[arg(long, value_enum, default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,
}

impl NodeArgs {
    /// The flags of a command that only reads a node's config (`-c FILE`, or the embedded
    /// default): `cluster`, `ctl`.
    pub fn from_config(config: Option<PathBuf>) -> Self {
        NodeArgs {
            config,
            roles: None,
            name: None,
            log_level: None,
            log_format: LogFormat::Text,
        }
    }
}

/// How log events are written to stderr.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    /// Human-readable lines.
    Text,
    /// One JSON object per line.
    Json,
}
