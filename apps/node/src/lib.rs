//! # troupe-node
//!
//! The node: command line, layered configuration, logging, the panic policy, and the
//! composition of roles in one actix System. The `troupe` binary is [`main_with`] called with
//! [`roles::known_roles`]; a program that adds its own roles calls [`main_with`] with a longer
//! list.
//!
//! Exit codes: 0 after a clean stop, 1 when a role fails (to start, by escalation or by a
//! panic), 2 for usage and configuration errors, 128+N after a second signal N.

#![warn(missing_docs, unreachable_pub)]

pub mod broker_tools;
pub mod cli;
pub mod compose;
pub mod heartbeat;
pub mod logging;
pub mod roles;
pub mod settings;
pub mod signals;

use std::sync::Arc;

use clap::Parser;
use troupe_core::{ConfigError, NodeControl, RoleSet};

use crate::cli::{Cli, Command, NodeArgs};
use crate::compose::{NodePlan, RunningNode};

/// Parses the command line and runs it with `known` as the roles this binary knows. Returns
/// the process exit code.
pub fn main_with(known: RoleSet) -> i32 {
    let cli = Cli::parse();
    match cli.command {
        Command::Run(args) => run(&known, args),
        Command::CheckConfig(args) => check_config(&known, args),
        Command::EchoWorker(args) => broker_tools::echo_worker(args),
        Command::Call(args) => broker_tools::call(args),
        Command::Cluster(args) => cluster(&known, args),
    }
}

fn load(known: &RoleSet, args: &NodeArgs) -> Result<settings::NodeSettings, ConfigError> {
    settings::load(
        known,
        args.config.as_deref(),
        std::env::vars(),
        &settings::Overrides {
            name: args.name.clone(),
            roles: args.roles.clone(),
        },
    )
}

fn config_failure(err: ConfigError) -> i32 {
    eprintln!("troupe: {err}");
    2
}

fn check_config(known: &RoleSet, args: NodeArgs) -> i32 {
    match load(known, &args) {
        Ok(settings) => {
            print!("{}", settings::to_toml(&settings.effective));
            0
        }
        Err(err) => config_failure(err),
    }
}

/// `troupe cluster …`: the node's `[cluster]` table says which beacons to ask, and how.
fn cluster(known: &RoleSet, args: troupe_beacon::cli::ClusterArgs) -> i32 {
    let node_args = NodeArgs {
        config: args.config.clone(),
        roles: None,
        name: None,
        log_level: None,
        log_format: cli::LogFormat::Text,
    };
    let settings = match load(known, &node_args) {
        Ok(settings) => settings,
        Err(err) => return config_failure(err),
    };
    let level = args.log_level.clone().unwrap_or_else(|| "warn".to_string());
    if let Err(err) = logging::init(Some(&level), cli::LogFormat::Text) {
        return config_failure(err);
    }
    let table = settings.effective[troupe_beacon::ClusterConfig::TABLE].clone();
    let cluster = match serde_json::from_value(table) {
        Ok(cluster) => cluster,
        Err(err) => return config_failure(ConfigError::new("cluster", err.to_string())),
    };
    troupe_beacon::cli::run(args, cluster, &settings.name)
}

fn run(known: &RoleSet, args: NodeArgs) -> i32 {
    let settings = match load(known, &args) {
        Ok(settings) => settings,
        Err(err) => return config_failure(err),
    };
    if let Err(err) = logging::init(args.log_level.as_deref(), args.log_format) {
        return config_failure(err);
    }
    let plan = NodePlan {
        name: Arc::from(settings.name.as_str()),
        roles: settings.roles,
        shutdown_timeout: settings.shutdown_timeout,
        cluster: settings.cluster,
        effective: Arc::new(settings.effective),
    };
    actix_rt::System::new().block_on(run_node(plan))
}

async fn run_node(plan: NodePlan) -> i32 {
    let node = plan.name.clone();
    let mut signals = match signals::Signals::new() {
        Ok(signals) => signals,
        Err(err) => {
            tracing::error!(node = %node, %err, "cannot listen for signals");
            return 1;
        }
    };
    let (control, stop_requests) = NodeControl::channel();
    troupe_core::panic::install(node.clone(), control.clone());
    tracing::info!(node = %node, version = env!("CARGO_PKG_VERSION"), pid = std::process::id(), "node starting");
    let mut running = match RunningNode::start(plan, control, stop_requests, &mut signals).await {
        Ok(running) => running,
        Err(aborted) => {
            if aborted.exit_code != 0 {
                eprintln!("troupe: {}", aborted.message);
            }
            return aborted.exit_code;
        }
    };
    tracing::info!(node = %node, roles = ?running.role_names(), "node ready");
    let code = running.wait_for_stop(&mut signals).await;
    actix_rt::spawn(async move {
        let signal = signals.recv().await;
        tracing::warn!(signal, "second signal; exiting at once");
        std::process::exit(128 + signal);
    });
    running.stop().await;
    tracing::info!(node = %node, exit_code = code, "node stopped");
    actix_rt::System::current().stop();
    code
}
