//! What the broker registers with the cluster's beacons: one named endpoint per socket
//! (`<service>.frontend`, `<service>.backend`, `majordomo`), with wildcard hosts replaced by an
//! address other machines can reach.

use std::collections::BTreeMap;

use troupe_core::cluster::advertised;

use crate::socket_loop::{BoundEndpoints, ServicesApplied};

/// Name of the Majordomo socket's endpoint.
pub const MAJORDOMO_ENDPOINT: &str = "majordomo";

/// The endpoints to register for `bound` sockets. A socket bound to every interface
/// (`tcp://0.0.0.0:…`, `tcp://[::]:…`, `tcp://*:…`) is advertised at `advertise_host`, or at
/// `host_name` when that is empty; other addresses are registered as bound.
pub fn advertised_endpoints(
    bound: &BoundEndpoints,
    advertise_host: &str,
    host_name: &str,
) -> BTreeMap<String, String> {
    let host = if advertise_host.is_empty() {
        host_name
    } else {
        advertise_host
    };
    let mut endpoints = BTreeMap::new();
    for service in &bound.services {
        endpoints.insert(
            format!("{}.frontend", service.name),
            advertised(&service.frontend, host),
        );
        endpoints.insert(
            format!("{}.backend", service.name),
            advertised(&service.backend, host),
        );
    }
    if let Some(majordomo) = &bound.majordomo {
        endpoints.insert(MAJORDOMO_ENDPOINT.to_string(), advertised(majordomo, host));
    }
    endpoints
}

/// What a live update changes in the registration: the endpoints of the services it started
/// (added, or moved: the same names at new addresses), and the names of the removed services'
/// endpoints.
pub fn registration_changes(
    applied: &ServicesApplied,
    advertise_host: &str,
    host_name: &str,
) -> (BTreeMap<String, String>, Vec<String>) {
    let started = BoundEndpoints {
        services: applied.started.clone(),
        majordomo: None,
    };
    let add = advertised_endpoints(&started, advertise_host, host_name);
    let remove = applied
        .report
        .removed
        .iter()
        .flat_map(|name| [format!("{name}.frontend"), format!("{name}.backend")])
        .collect();
    (add, remove)
}

/// This machine's host name, or an empty string if it has none.
pub fn host_name() -> String {
    troupe_core::cluster::host_name()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::socket_loop::ServiceEndpoints;

    fn bound(frontend: &str, backend: &str, majordomo: Option<&str>) -> BoundEndpoints {
        BoundEndpoints {
            services: vec![ServiceEndpoints {
                name: "echo".into(),
                frontend: frontend.into(),
                backend: backend.into(),
            }],
            majordomo: majordomo.map(String::from),
        }
    }

    #[test]
    fn every_socket_is_registered_by_name() {
        let endpoints = advertised_endpoints(
            &bound(
                "tcp://127.0.0.1:7501",
                "tcp://127.0.0.1:7502",
                Some("tcp://127.0.0.1:7500"),
            ),
            "",
            "hub-1",
        );
        let expected: BTreeMap<String, String> = [
            ("echo.backend", "tcp://127.0.0.1:7502"),
            ("echo.frontend", "tcp://127.0.0.1:7501"),
            ("majordomo", "tcp://127.0.0.1:7500"),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
        assert_eq!(endpoints, expected);
    }

    #[test]
    fn an_update_registers_started_services_and_withdraws_removed_ones() {
        let applied = ServicesApplied {
            report: crate::update::ServicesUpdate {
                added: vec!["resize".into()],
                removed: vec!["old".into()],
                changed: vec!["echo".into()],
                ..Default::default()
            },
            endpoints: bound("tcp://127.0.0.1:1", "tcp://127.0.0.1:2", None),
            started: vec![
                ServiceEndpoints {
                    name: "resize".into(),
                    frontend: "tcp://0.0.0.0:7511".into(),
                    backend: "tcp://127.0.0.1:7512".into(),
                },
                ServiceEndpoints {
                    name: "echo".into(),
                    frontend: "tcp://127.0.0.1:1".into(),
                    backend: "tcp://127.0.0.1:2".into(),
                },
            ],
        };
        let (add, remove) = registration_changes(&applied, "", "hub-1");
        let add: Vec<(&str, &str)> = add.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
        assert_eq!(
            add,
            [
                ("echo.backend", "tcp://127.0.0.1:2"),
                ("echo.frontend", "tcp://127.0.0.1:1"),
                ("resize.backend", "tcp://127.0.0.1:7512"),
                ("resize.frontend", "tcp://hub-1:7511"),
            ]
        );
        assert_eq!(remove, ["old.frontend", "old.backend"]);
    }

    #[test]
    fn wildcard_hosts_are_advertised_at_a_reachable_name() {
        let b = bound("tcp://0.0.0.0:7501", "tcp://[::]:7502", None);
        let by_host_name = advertised_endpoints(&b, "", "hub-1");
        assert_eq!(by_host_name["echo.frontend"], "tcp://hub-1:7501");
        assert_eq!(by_host_name["echo.backend"], "tcp://hub-1:7502");
        assert!(!by_host_name.contains_key("majordomo"));
        let configured = advertised_endpoints(&b, "10.0.0.1", "hub-1");
        assert_eq!(configured["echo.frontend"], "tcp://10.0.0.1:7501");
        let ipc = bound("ipc:///run/b.sock", "tcp://10.0.0.2:7502", None);
        let kept = advertised_endpoints(&ipc, "10.0.0.1", "hub-1");
        assert_eq!(kept["echo.frontend"], "ipc:///run/b.sock");
        assert_eq!(kept["echo.backend"], "tcp://10.0.0.2:7502");
    }
}
