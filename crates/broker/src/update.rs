//! Live changes to the broker's Paranoid Pirate services, sans-IO: [`plan`] compares the
//! running `[broker]` table with a new one, service by service (by name), and says what a
//! reload does. The socket thread binds what the plan needs, then [`crate::engine::Engine`]
//! carries it out.
//!
//! - a service only in the new table is *added*: its sockets are bound, it serves from then on;
//! - a service only in the running table is *removed*: what it holds or queues is answered
//!   with an error, its sockets are closed, its workers forgotten;
//! - a service in both is *changed* when its request settings differ (applied in place) or
//!   when its frontend or backend address differs (it is removed and added again);
//! - broker-wide keys that only a restart can change are reported in `needs_restart` and keep
//!   their running values.
//!
//! Majordomo-only services are not in any list: they are not configured by name.

use serde::Serialize;

use crate::config::{BrokerConfig, MajordomoConfig, PirateService, ServiceSettings};

/// What a [`crate::UpdateServices`] did, or would do with `dry_run`: service names in each list
/// (configured order; `removed` in the running order), and the `broker.` keys that differ but
/// need a restart.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct ServicesUpdate {
    /// Services that were not running and now serve.
    pub added: Vec<String>,
    /// Services that no longer serve.
    pub removed: Vec<String>,
    /// Services whose settings changed in place, or whose sockets moved.
    pub changed: Vec<String>,
    /// Services left as they were.
    pub unchanged: Vec<String>,
    /// Keys that differ but only take effect after a restart, as `broker.<key>`.
    pub needs_restart: Vec<String>,
}

impl ServicesUpdate {
    /// Whether the update changes what the broker serves.
    pub fn changes_services(&self) -> bool {
        !(self.added.is_empty() && self.removed.is_empty() && self.changed.is_empty())
    }
}

/// What an update does, as the socket thread and the engine carry it out.
#[derive(Debug, Clone)]
pub struct UpdatePlan {
    /// The report.
    pub report: ServicesUpdate,
    /// Services to stop serving, by name: the removed ones, and changed ones whose sockets
    /// move. Everything they hold or queue is answered with an error.
    pub stop: Vec<String>,
    /// Services to start serving: the added ones, and changed ones whose sockets move.
    pub start: Vec<PirateService>,
    /// Services whose request settings change in place.
    pub retune: Vec<ServiceSettings>,
    /// The table the broker runs after the update: the new one, with the keys that need a
    /// restart kept at their running values (so that a later update reports them again).
    pub config: BrokerConfig,
}

/// Compares the `running` table with a `new` one (both validated).
pub fn plan(running: &BrokerConfig, new: &BrokerConfig) -> UpdatePlan {
    let before = running.pirate_services();
    let after = new.pirate_services();
    let mut plan = UpdatePlan {
        report: ServicesUpdate {
            needs_restart: restart_keys(running, new),
            ..ServicesUpdate::default()
        },
        stop: Vec::new(),
        start: Vec::new(),
        retune: Vec::new(),
        config: adopted(running, new),
    };
    for old in &before {
        if !after.iter().any(|s| s.settings.name == old.settings.name) {
            plan.report.removed.push(old.settings.name.clone());
            plan.stop.push(old.settings.name.clone());
        }
    }
    for service in after {
        let name = service.settings.name.clone();
        match before.iter().find(|s| s.settings.name == name) {
            None => {
                plan.report.added.push(name);
                plan.start.push(service);
            }
            Some(old)
                if old.frontend.as_str() != service.frontend.as_str()
                    || old.backend.as_str() != service.backend.as_str() =>
            {
                plan.report.changed.push(name.clone());
                plan.stop.push(name);
                plan.start.push(service);
            }
            Some(old) if old.settings != service.settings => {
                plan.report.changed.push(name);
                plan.retune.push(service.settings);
            }
            Some(_) => plan.report.unchanged.push(name),
        }
    }
    plan
}

/// `new`, with every key a restart needs taken from `running`. Destructured in full so that a
/// new key must be sorted into one kind or the other.
fn adopted(running: &BrokerConfig, new: &BrokerConfig) -> BrokerConfig {
    let BrokerConfig {
        service,
        frontend,
        backend,
        services,
        majordomo: _,
        heartbeat_interval: _,
        liveness: _,
        request_timeout,
        queue_limit,
        queue_max_bytes,
        max_workers,
        retry_on_worker_loss,
        max_attempts,
        error_replies,
        drain_timeout: _,
        hwm: _,
        max_message_size: _,
        linger: _,
        advertise_host: _,
    } = new.clone();
    BrokerConfig {
        service,
        frontend,
        backend,
        services,
        request_timeout,
        queue_limit,
        queue_max_bytes,
        max_workers,
        retry_on_worker_loss,
        max_attempts,
        error_replies,
        majordomo: MajordomoConfig {
            queue_max_bytes: new.majordomo.queue_max_bytes,
            ..running.majordomo.clone()
        },
        ..running.clone()
    }
}

/// The `broker.` keys that only a restart applies and whose values differ.
fn restart_keys(running: &BrokerConfig, new: &BrokerConfig) -> Vec<String> {
    let MajordomoConfig {
        enabled,
        bind,
        max_services,
        queue_max_bytes: _,
    } = &running.majordomo;
    let differs = [
        (
            "heartbeat_interval",
            running.heartbeat_interval != new.heartbeat_interval,
        ),
        ("liveness", running.liveness != new.liveness),
        ("hwm", running.hwm != new.hwm),
        (
            "max_message_size",
            running.max_message_size != new.max_message_size,
        ),
        ("linger", running.linger != new.linger),
        ("drain_timeout", running.drain_timeout != new.drain_timeout),
        (
            "advertise_host",
            running.advertise_host != new.advertise_host,
        ),
        ("majordomo.enabled", *enabled != new.majordomo.enabled),
        (
            "majordomo.bind",
            bind.as_str() != new.majordomo.bind.as_str(),
        ),
        (
            "majordomo.max_services",
            *max_services != new.majordomo.max_services,
        ),
    ];
    differs
        .into_iter()
        .filter(|(_, differs)| *differs)
        .map(|(key, _)| format!("broker.{key}"))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(text: &str) -> BrokerConfig {
        let config: BrokerConfig = toml::from_str(text).unwrap();
        config.validate().unwrap();
        config
    }

    const RUNNING: &str = r#"
        frontend = "tcp://127.0.0.1:9001"
        backend = "tcp://127.0.0.1:9002"
        [[services]]
        name = "resize"
        frontend = "tcp://127.0.0.1:9011"
        backend = "tcp://127.0.0.1:9012"
        [[services]]
        name = "old"
        frontend = "tcp://127.0.0.1:9021"
        backend = "tcp://127.0.0.1:9022"
        [[services]]
        name = "moving"
        frontend = "tcp://127.0.0.1:9031"
        backend = "tcp://127.0.0.1:9032"
    "#;

    #[test]
    fn services_are_compared_by_name() {
        let running = config(RUNNING);
        let new = config(
            r#"
            frontend = "tcp://127.0.0.1:9001"
            backend = "tcp://127.0.0.1:9002"
            [[services]]
            name = "fresh"
            frontend = "tcp://127.0.0.1:9041"
            backend = "tcp://127.0.0.1:9042"
            [[services]]
            name = "moving"
            frontend = "tcp://127.0.0.1:9031"
            backend = "tcp://127.0.0.1:9052"
            [[services]]
            name = "resize"
            frontend = "tcp://127.0.0.1:9011"
            backend = "tcp://127.0.0.1:9012"
            queue_limit = 5
            "#,
        );
        let plan = plan(&running, &new);
        assert_eq!(
            plan.report,
            ServicesUpdate {
                added: vec!["fresh".into()],
                removed: vec!["old".into()],
                changed: vec!["moving".into(), "resize".into()],
                unchanged: vec!["echo".into()],
                needs_restart: vec![],
            }
        );
        assert_eq!(plan.stop, ["old", "moving"]);
        let started: Vec<&str> = plan
            .start
            .iter()
            .map(|s| s.settings.name.as_str())
            .collect();
        assert_eq!(started, ["fresh", "moving"]);
        assert_eq!(plan.retune.len(), 1);
        assert_eq!(plan.retune[0].queue_limit, 5);
        assert!(plan.report.changes_services());
    }

    #[test]
    fn a_broker_wide_request_setting_changes_the_services_that_inherit_it() {
        let running = config(RUNNING);
        let mut new = running.clone();
        new.request_timeout = "9s".parse().unwrap();
        new.services[0].request_timeout = Some("1s".parse().unwrap());
        let plan = plan(&running, &new);
        assert_eq!(plan.report.changed, ["echo", "resize", "old", "moving"]);
        assert!(plan.stop.is_empty() && plan.start.is_empty());
        assert_eq!(plan.config.request_timeout, new.request_timeout);
    }

    #[test]
    fn keys_a_restart_needs_are_reported_and_kept() {
        let running = config(RUNNING);
        let mut new = running.clone();
        new.heartbeat_interval = "2s".parse().unwrap();
        new.majordomo.bind = "tcp://127.0.0.1:9999".parse().unwrap();
        new.advertise_host = "hub".into();
        new.linger = "1s".parse().unwrap();
        let plan = plan(&running, &new);
        assert_eq!(
            plan.report.needs_restart,
            [
                "broker.heartbeat_interval",
                "broker.linger",
                "broker.advertise_host",
                "broker.majordomo.bind",
            ]
        );
        assert!(!plan.report.changes_services());
        assert_eq!(plan.report.unchanged.len(), 4);
        assert_eq!(plan.config.heartbeat_interval, running.heartbeat_interval);
        assert_eq!(plan.config.majordomo.bind, running.majordomo.bind);
        assert_eq!(plan.config.advertise_host, "");
        // The next comparison against the adopted table reports them again.
        assert_eq!(
            super::plan(&plan.config, &new).report.needs_restart.len(),
            4
        );
    }

    #[test]
    fn renaming_the_default_service_removes_one_and_adds_the_other() {
        let running = config(RUNNING);
        let mut new = running.clone();
        new.service = "ping".into();
        let plan = plan(&running, &new);
        assert_eq!(plan.report.added, ["ping"]);
        assert_eq!(plan.report.removed, ["echo"]);
        assert_eq!(plan.config.service, "ping");
    }
}
