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
pub mod notify;
pub mod preflight;
pub mod reload;
pub mod roles;
pub mod settings;
pub mod signals;

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
        Command::Ctl(args) => ctl(&known, args),
        Command::Guard { dir } => troupe_supervisor::contain::run_guard(&dir),
    }
}

pub(crate) fn load(
    known: &RoleSet,
    args: &NodeArgs,
) -> Result<settings::NodeSettings, ConfigError> {
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
    match load(known, &args).and_then(|settings| preflight::check(&settings).map(|()| settings)) {
        Ok(settings) => {
            for (key, warning) in settings::warnings(&settings.effective) {
                eprintln!("troupe: warning: {key}: {warning}");
            }
            print!("{}", settings::to_toml(&settings.effective));
            0
        }
        Err(err) => config_failure(err),
    }
}

/// `troupe cluster …`: the node's `[cluster]` table says which beacons to ask, and how.
fn cluster(known: &RoleSet, args: troupe_beacon::cli::ClusterArgs) -> i32 {
    let node_args = NodeArgs::from_config(args.config.clone());
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

/// `troupe ctl …`: the flags name the node, else the config (`--config`, else the embedded
/// default) does.
fn ctl(known: &RoleSet, args: troupe_control::ctl::CtlArgs) -> i32 {
    if args.cluster {
        return ctl_cluster(known, args);
    }
    let target = match troupe_control::ctl::explicit_target(&args) {
        Ok(Some(target)) => target,
        Ok(None) => {
            let node_args = NodeArgs::from_config(args.config.clone());
            match load(known, &node_args) {
                Ok(settings) => troupe_control::client::Target::Unix(
                    settings.control.socket_path(&settings.name),
                ),
                Err(err) => return config_failure(err),
            }
        }
        Err(failure) => {
            eprintln!("troupe: {}", failure.message);
            return failure.code;
        }
    };
    troupe_control::ctl::run(args, target)
}

/// `troupe ctl --cluster status`: the config names the beacons and the token file.
fn ctl_cluster(known: &RoleSet, args: troupe_control::ctl::CtlArgs) -> i32 {
    if !matches!(args.command, troupe_control::ctl::CtlCommand::Status) {
        eprintln!("troupe: ctl: --cluster goes with `status` only");
        return 2;
    }
    let node_args = NodeArgs::from_config(args.config.clone());
    let settings = match load(known, &node_args) {
        Ok(settings) => settings,
        Err(err) => return config_failure(err),
    };
    let mut cluster: troupe_beacon::ClusterConfig =
        match serde_json::from_value(settings.effective["cluster"].clone()) {
            Ok(cluster) => cluster,
            Err(err) => {
                eprintln!("troupe: invalid [cluster] table: {err}");
                return 2;
            }
        };
    if !args.beacons.is_empty() {
        cluster = cluster.with_beacons(args.beacons.clone());
    }
    let token_file = args.token_file.clone().or_else(|| {
        (!settings.control.token_file.is_empty())
            .then(|| std::path::PathBuf::from(&settings.control.token_file))
    });
    let token = match token_file.map(|path| troupe_control::token::Token::from_file(&path)) {
        None => None,
        Some(Ok(token)) => Some(token),
        Some(Err(why)) => {
            eprintln!("troupe: ctl --cluster: token file {why}");
            return 2;
        }
    };
    troupe_control::ctl::cluster::status(&cluster, token, args.timeout, args.json)
}

fn run(known: &RoleSet, args: NodeArgs) -> i32 {
    // Before any thread exists: the notify variables are the node's, not its services'.
    let notifier = notify::Notifier::take_from_env();
    let settings = match load(known, &args).and_then(|s| preflight::check(&s).map(|()| s)) {
        Ok(settings) => settings,
        Err(err) => return config_failure(err),
    };
    let level = args
        .log_level
        .clone()
        .or_else(|| Some(settings.log_level.clone()).filter(|l| !l.is_empty()));
    if let Err(err) = logging::init(level.as_deref(), args.log_format) {
        return config_failure(err);
    }
    for (key, warning) in settings::warnings(&settings.effective) {
        tracing::warn!(key, "{warning}");
    }
    let source = match &args.config {
        Some(path) => path.display().to_string(),
        None => "embedded default".to_string(),
    };
    let reloader = reload::Reloader {
        known,
        args: &args,
        source: source.clone(),
        current: settings.effective.clone(),
    };
    let control = settings.control.clone();
    let plan = NodePlan::from_settings(settings, &source);
    actix_rt::System::new().block_on(run_node(plan, control, reloader, notifier))
}

async fn run_node(
    plan: NodePlan,
    control: troupe_control::ControlConfig,
    mut reloader: reload::Reloader<'_>,
    notifier: notify::Notifier,
) -> i32 {
    let node = plan.name.clone();
    let (mut signals, mut hangups) = match (signals::Signals::new(), signals::Hangups::new()) {
        (Ok(signals), Ok(hangups)) => (signals, hangups),
        (Err(err), _) | (_, Err(err)) => {
            tracing::error!(node = %node, %err, "cannot listen for signals");
            return 1;
        }
    };
    let (control_tx, stop_requests) = NodeControl::channel();
    troupe_core::panic::install(node.clone(), control_tx.clone());
    tracing::info!(node = %node, version = env!("CARGO_PKG_VERSION"), pid = std::process::id(), "node starting");
    let (reloads, mut reload_requests) = tokio::sync::mpsc::channel(1);
    let setup = troupe_control::ControlSetup {
        config: control,
        node: plan.status.clone(),
        published: plan.published.clone(),
        reloads,
    };
    let api = match troupe_control::ControlServer::start(setup).await {
        Ok(api) => api,
        Err(message) => {
            tracing::error!(node = %node, error = %message, "control API failed to start");
            eprintln!("troupe: {message}");
            return 1;
        }
    };
    plan.published.publish(troupe_core::context::NodeInstance(
        api.socket_path().display().to_string(),
    ));
    let published = plan.published.clone();
    let mut running = match RunningNode::start(plan, control_tx, stop_requests, &mut signals).await
    {
        Ok(running) => running,
        Err(aborted) => {
            api.stop().await;
            if aborted.exit_code != 0 {
                eprintln!("troupe: {}", aborted.message);
            }
            return aborted.exit_code;
        }
    };
    running.status().set_all_started();
    if let Some(addr) = api.tcp_addr() {
        let endpoints = [("control".to_string(), control_url(addr))].into();
        troupe_core::cluster::offer_if_clustered(&published, "control", endpoints).await;
    }
    tracing::info!(node = %node, roles = ?running.role_names(), "node ready");
    notify::spawn_ready_and_watchdog(notifier.clone(), published);
    let code = loop {
        tokio::select! {
            code = running.wait_for_stop(&mut signals) => break code,
            _ = hangups.recv() => {
                tracing::info!(node = %node, "SIGHUP received; reloading the configuration");
                notifier.notify("RELOADING=1");
                match reloader.reload(&mut running, false).await {
                    Ok(report) => {
                        running.status().reloaded();
                        log_reload(&node, &report);
                    }
                    Err(err) => tracing::error!(node = %node, error = %err, "reload refused; nothing changed"),
                }
                notifier.notify("READY=1");
            }
            Some(request) = reload_requests.recv() => {
                if !request.dry_run {
                    notifier.notify("RELOADING=1");
                }
                let outcome = reloader.reload(&mut running, request.dry_run).await;
                match &outcome {
                    Ok(report) if !request.dry_run => {
                        running.status().reloaded();
                        log_reload(&node, report);
                    }
                    Ok(_) => {}
                    Err(err) => tracing::warn!(node = %node, error = %err, "reload refused; nothing changed"),
                }
                if !request.dry_run {
                    notifier.notify("READY=1");
                }
                let _ = request.reply.send(outcome);
            }
        }
    };
    notifier.notify("STOPPING=1");
    actix_rt::spawn(async move {
        let signal = signals.recv().await;
        tracing::warn!(signal, "second signal; exiting at once");
        std::process::exit(128 + signal);
    });
    let abandoned = running.stop().await;
    let code = match abandoned.is_empty() {
        true => code,
        false => {
            // An abandoned role may still hold processes: none may outlive the node.
            troupe_supervisor::contain::kill_everything();
            tracing::error!(node = %node, roles = ?abandoned, "roles did not stop within the shutdown timeout; killed every service process left");
            eprintln!(
                "troupe: roles {} did not stop within the shutdown timeout; their processes were killed",
                abandoned.join(", ")
            );
            if code == 0 {
                1
            } else {
                code
            }
        }
    };
    api.stop().await;
    tracing::info!(node = %node, exit_code = code, "node stopped");
    actix_rt::System::current().stop();
    code
}

fn log_reload(node: &str, report: &serde_json::Value) {
    match report["failed"].as_array().filter(|f| !f.is_empty()) {
        Some(failed) => {
            tracing::warn!(node, report = %report, failed = ?failed, "configuration reloaded, except where it failed")
        }
        None => tracing::info!(node, report = %report, "configuration reloaded"),
    }
}

/// The control API's TCP address as other machines reach it: `http://HOST:PORT`, with the host
/// name for an address bound to every interface.
fn control_url(addr: std::net::SocketAddr) -> String {
    let host = match addr.ip() {
        ip if ip.is_unspecified() => troupe_core::cluster::host_name(),
        std::net::IpAddr::V6(ip) => format!("[{ip}]"),
        ip => ip.to_string(),
    };
    format!("http://{host}:{}", addr.port())
}
