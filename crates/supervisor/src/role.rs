//! The `supervisor` role: builds the children from the `[supervisor]` table and the
//! `services_dir`, starts the [`Supervisor`] actor (publishing its address and a
//! [`SupervisorLink`] for other roles), and stops every child when the node stops. It uses the
//! ipc hub's [`ServiceChannels`] and the cluster client's [`ClusterHandle`] when they are
//! published.

use std::path::{Path, PathBuf};

use actix::prelude::*;
use tokio::sync::oneshot;
use troupe_core::cluster::ClusterHandle;
use troupe_core::services::{ServiceChannels, SupervisorLink};
use troupe_core::{ConfigError, Role, RoleContext, RoleError, Shutdown};

use crate::actor::{Escalation, Supervisor, SupervisorSetup};
use crate::config::{field_error, order_by_after, SupervisorConfig, MAX_LOG_BYTES, MAX_LOG_LINES};
use crate::manifest::{load_services_dir, Loaded};
use crate::spec::ChildSpec;

/// The running `supervisor` role.
pub struct SupervisorRole {
    actor: Addr<Supervisor>,
    stopped: oneshot::Receiver<()>,
}

impl SupervisorRole {
    /// The supervisor actor's address (also published in the node's registry).
    pub fn address(&self) -> &Addr<Supervisor> {
        &self.actor
    }
}

impl Role for SupervisorRole {
    const NAME: &'static str = "supervisor";
    type Config = SupervisorConfig;

    fn start_after() -> &'static [&'static str] {
        &["ipc"]
    }

    fn validate(config: &SupervisorConfig) -> Result<(), ConfigError> {
        if config.max_children == 0 {
            return Err(ConfigError::new("max_children", "must be at least 1"));
        }
        if !(64..=1 << 20).contains(&config.max_line_bytes) {
            return Err(ConfigError::new(
                "max_line_bytes",
                "must be from 64 to 1048576 (1 MiB)",
            ));
        }
        if config.services.len() > config.max_children {
            return Err(ConfigError::new(
                "services",
                format!(
                    "{} services, more than max_children ({})",
                    config.services.len(),
                    config.max_children
                ),
            ));
        }
        if config.log_lines > MAX_LOG_LINES {
            return Err(ConfigError::new(
                "log_lines",
                format!("must be at most {MAX_LOG_LINES} (0 keeps none)"),
            ));
        }
        if config.log_bytes > MAX_LOG_BYTES {
            return Err(ConfigError::new(
                "log_bytes",
                format!("must be at most {MAX_LOG_BYTES} (64 MiB; 0 keeps none)"),
            ));
        }
        config
            .default
            .check()
            .map_err(|e| field_error("default", &e))?;
        config.service_specs(&PathBuf::from("/")).map(|_| ())
    }

    async fn start(config: SupervisorConfig, ctx: RoleContext) -> Result<Self, RoleError> {
        let instance = ctx
            .published
            .lookup::<troupe_core::context::NodeInstance>()
            .map_or_else(|| ctx.node.to_string(), |i| i.0);
        crate::contain::start_for_node(ctx.node.to_string(), instance).await;
        let state_dir = config.state_dir(&ctx.node);
        let (children, failed) = configured_children(&config, &state_dir)
            .await
            .map_err(RoleError::new)?;
        let channels = ctx.published.lookup::<ServiceChannels>();
        let cluster = ctx.published.lookup::<ClusterHandle>();
        tracing::info!(
            services = children.len(),
            failed = failed.len(),
            state_dir = %state_dir.display(),
            ipc = channels.is_some(),
            cluster = cluster.is_some(),
            "supervisor starting"
        );
        let setup = SupervisorSetup {
            children,
            failed,
            default: config.default.to_spec(),
            max_children: config.max_children,
            max_line_bytes: config.max_line_bytes,
            log_lines: config.log_lines,
            log_bytes: config.log_bytes,
            state_dir,
            channels,
            cluster,
            config: Some(config),
        };
        let (stopped_tx, stopped) = oneshot::channel();
        let actor = Supervisor::new(setup, Escalation::Node(ctx.clone()), Some(stopped_tx)).start();
        ctx.published.publish(actor.clone());
        ctx.published.publish(SupervisorLink {
            subscribe: actor.clone().recipient(),
            attach_broker: actor.clone().recipient(),
        });
        Ok(SupervisorRole { actor, stopped })
    }

    async fn stop(self) {
        if self.actor.send(Shutdown).await.is_ok() {
            let _ = self.stopped.await;
        }
        let _ = tokio::task::spawn_blocking(crate::contain::remove_services_dir).await;
    }
}

/// The children `config` describes, as the role starts them: config services, then the
/// manifests of its `services_dir` (read off the arbiter), each after the services its `after`
/// names; and the manifests that cannot be used, with why. Config services get their
/// `config.json` under `state_dir`. The error is one line naming the key or the folder.
pub(crate) async fn configured_children(
    config: &SupervisorConfig,
    state_dir: &Path,
) -> Result<(Vec<ChildSpec>, Vec<(ChildSpec, String)>), String> {
    let children = config
        .service_specs(state_dir)
        .map_err(|e| e.within("supervisor").to_string())?;
    let Some(dir) = config.services_dir.clone() else {
        return Ok((children, Vec::new()));
    };
    let limit = config.max_children.saturating_sub(children.len());
    let loaded = actix_rt::task::spawn_blocking(move || load_services_dir(&dir, limit))
        .await
        .map_err(|e| format!("loading services_dir: {e}"))?
        .map_err(|e| format!("supervisor.{e}"))?;
    let (services, mut failed) = split_manifests(loaded, &children);
    // Config services' warnings are the node's to print (`SupervisorConfig::warnings`).
    let default = config.default.to_spec();
    for spec in &services {
        if let Some(warning) = default.merge(spec.clone()).plan_warning() {
            tracing::warn!(id = %spec.id, manifest = %manifest_path(spec), "{warning}");
        }
    }
    let children = order_manifests(children, services, &mut failed);
    Ok((children, failed))
}

/// Good manifests, and broken ones (with duplicates of an id already used marked broken).
fn split_manifests(
    loaded: Vec<Loaded>,
    config_children: &[ChildSpec],
) -> (Vec<ChildSpec>, Vec<(ChildSpec, String)>) {
    let mut services: Vec<ChildSpec> = Vec::new();
    let mut broken = Vec::new();
    for item in loaded {
        match item {
            Loaded::Service(spec) => {
                let taken = config_children
                    .iter()
                    .chain(services.iter())
                    .any(|s| s.id == spec.id);
                if taken {
                    let reason = format!(
                        "{}: field `id`: \"{}\" is already used by another service",
                        manifest_path(&spec),
                        spec.id
                    );
                    broken.push((placeholder(&spec.id), reason));
                } else {
                    services.push(*spec);
                }
            }
            Loaded::Broken { id, reason } => broken.push((placeholder(&id), reason)),
        }
    }
    (services, broken)
}

/// Config services first, then manifests, each after the services it names in `after`. A
/// manifest whose `after` names no service or closes a cycle is marked broken instead.
fn order_manifests(
    config_children: Vec<ChildSpec>,
    mut services: Vec<ChildSpec>,
    broken: &mut Vec<(ChildSpec, String)>,
) -> Vec<ChildSpec> {
    let first = config_children.len();
    loop {
        let all: Vec<ChildSpec> = config_children
            .iter()
            .chain(services.iter())
            .cloned()
            .collect();
        match order_by_after(all) {
            Ok(ordered) => return ordered,
            Err((index, reason)) if index >= first => {
                let spec = services.remove(index - first);
                let reason = format!(
                    "{}: field `{}",
                    manifest_path(&spec),
                    reason.replacen(": ", "`: ", 1)
                );
                broken.push((placeholder(&spec.id), reason));
            }
            // Config services were validated alone; an error can only come from a manifest.
            Err(_) => return config_children,
        }
    }
}

fn manifest_path(spec: &ChildSpec) -> String {
    spec.process_spec()
        .and_then(|p| p.config_path.as_ref())
        .and_then(|c| c.parent())
        .map(|d| d.join("manifest.json").display().to_string())
        .unwrap_or_else(|| "manifest.json".into())
}

fn placeholder(id: &str) -> ChildSpec {
    ChildSpec::process(id, "")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn output_ring_bounds_are_validated_by_key() {
        let ok = SupervisorConfig {
            log_lines: 0,
            log_bytes: 0,
            ..SupervisorConfig::default()
        };
        assert!(SupervisorRole::validate(&ok).is_ok());
        let lines = SupervisorConfig {
            log_lines: MAX_LOG_LINES + 1,
            ..SupervisorConfig::default()
        };
        assert_eq!(
            SupervisorRole::validate(&lines).unwrap_err().key,
            "log_lines"
        );
        let bytes = SupervisorConfig {
            log_bytes: MAX_LOG_BYTES + 1,
            ..SupervisorConfig::default()
        };
        assert_eq!(
            SupervisorRole::validate(&bytes).unwrap_err().key,
            "log_bytes"
        );
        let mut default = SupervisorConfig::default();
        default.default.plan = crate::plan::Plan(vec![crate::plan::PlanElement::RestartBackoff(
            crate::plan::Backoff {
                initial_ms: 10,
                factor: 2.0,
                max_ms: 1,
                reset_after_ms: None,
            },
        )]);
        let err = SupervisorRole::validate(&default).unwrap_err();
        assert_eq!(err.key, "default.plan");
        assert!(err.message.starts_with("invalid element"), "{err}");
    }
}
