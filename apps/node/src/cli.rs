//! The command line: `troupe run`, `troupe check-config` and their shared node flags.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand, ValueEnum};

/// Troupe: one node of an actor platform whose roles are chosen by configuration.
#[derive(Debug, Parser)]
#[command(name = "troupe", version, about, propagate_version = true)]
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
    /// Ask the cluster's beacons: list nodes, look up a resource, show a node's requirements,
    /// or watch changes.
    Cluster(troupe_beacon::cli::ClusterArgs),
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

/// How log events are written to stderr.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    /// Human-readable lines.
    Text,
    /// One JSON object per line.
    Json,
}
