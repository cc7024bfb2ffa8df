//! The checks `run` makes before it starts anything, which `check-config` makes too, so that
//! `check-config` refuses what `run` would refuse, with the same message:
//!
//! - the cookie file (`[cluster]`) is readable by its owner only, and so are the etcd
//!   password and key files; the etcd TLS files can be read;
//! - the folders of the sockets (ipc, control) can be created, the beacon's snapshot folder
//!   and the services' log file folders exist;
//! - every TCP address the node binds is free, and no two keys name the same one;
//! - every service's command (from the config file) can be found and run.
//!
//! They read the file system and try the addresses, so the node's commands that only read
//! the config (`ctl`, `cluster`) and reloads do not run them: a running node holds its own
//! addresses.

use std::net::{TcpListener, ToSocketAddrs};
use std::path::{Path, PathBuf};

use serde_json::Value;
use troupe_beacon::ClusterConfig;
use troupe_broker::BrokerConfig;
use troupe_control::ControlConfig;
use troupe_core::ConfigError;
use troupe_ipc::IpcConfig;
use troupe_supervisor::SupervisorConfig;

use crate::settings::NodeSettings;

/// Runs every check; the first failure names its key.
pub fn check(settings: &NodeSettings) -> Result<(), ConfigError> {
    let doc = &settings.effective;
    let runs = |role: &str| {
        doc["roles"]
            .as_array()
            .is_some_and(|roles| roles.iter().any(|r| r == role))
    };
    let cluster: ClusterConfig = section(doc, "cluster")?;
    if !cluster.beacons.is_empty() || runs("beacon") {
        cluster
            .read_cookie()
            .map_err(|why| ConfigError::new("cluster.cookie_file", why))?;
    }
    if cluster.backend == troupe_beacon::client::Backend::Etcd {
        cluster
            .read_etcd_credentials()
            .map_err(|err| err.within("cluster"))?;
    }
    let control: ControlConfig = section(doc, "control")?;
    creatable_folder("control.socket", &control.socket_path(&settings.name))?;
    let mut addresses: Vec<(String, String)> = Vec::new();
    if !control.metrics_bind.is_empty() {
        addresses.push(("control.metrics_bind".into(), control.metrics_bind.clone()));
    }
    if !control.bind.is_empty() {
        addresses.push(("control.bind".into(), control.bind.clone()));
    }
    if runs("ipc") {
        let ipc: IpcConfig = section(doc, "ipc")?;
        creatable_folder("ipc.socket", &ipc.socket_path(&settings.name))?;
    }
    if runs("beacon") {
        let beacon = &doc["beacon"];
        if let Some(bind) = beacon["bind"].as_str() {
            addresses.push(("beacon.bind".into(), bind.to_string()));
        }
        if let Some(file) = beacon["snapshot_file"].as_str().filter(|f| !f.is_empty()) {
            troupe_beacon::snapshot::check_directory(Path::new(file)).map_err(|err| {
                ConfigError::new(
                    "beacon.snapshot_file",
                    format!("{file}: {}", describe(&err)),
                )
            })?;
        }
    }
    if runs("broker") {
        let broker: BrokerConfig = section(doc, "broker")?;
        for (i, service) in broker.pirate_services().into_iter().enumerate() {
            let key = match i {
                0 => "broker".to_string(),
                n => format!("broker.services[{}]", n - 1),
            };
            addresses.push((format!("{key}.frontend"), service.frontend.as_str().into()));
            addresses.push((format!("{key}.backend"), service.backend.as_str().into()));
        }
        if broker.majordomo.enabled {
            addresses.push((
                "broker.majordomo.bind".into(),
                broker.majordomo.bind.as_str().into(),
            ));
        }
    }
    if runs("supervisor") {
        let supervisor: SupervisorConfig = section(doc, "supervisor")?;
        for (i, service) in supervisor.services.iter().enumerate() {
            let key = format!("supervisor.services[{i}]");
            if let Some(command) = &service.command {
                runnable(&format!("{key}.command"), command, service)?;
            }
            if let Some(log) = &service.log_file {
                existing_folder(&format!("{key}.log_file.path"), &log.path)?;
            }
        }
    }
    free_addresses(&addresses)
}

fn section<T: serde::de::DeserializeOwned>(doc: &Value, table: &str) -> Result<T, ConfigError> {
    serde_json::from_value(doc[table].clone())
        .map_err(|err| ConfigError::new(table, err.to_string()))
}

fn describe(err: &troupe_beacon::snapshot::ReadError) -> String {
    match err {
        troupe_beacon::snapshot::ReadError::Unusable(why)
        | troupe_beacon::snapshot::ReadError::Damaged(why) => why.clone(),
    }
}

/// A socket's folder is created when missing: its nearest existing ancestor must be a
/// folder the node may write in.
fn creatable_folder(key: &str, socket: &Path) -> Result<(), ConfigError> {
    let Some(folder) = socket.parent().filter(|p| !p.as_os_str().is_empty()) else {
        return Ok(());
    };
    let mut existing = folder;
    while !existing.exists() {
        match existing.parent() {
            Some(parent) => existing = parent,
            None => break,
        }
    }
    if !existing.is_dir() {
        return Err(ConfigError::new(
            key,
            format!(
                "{}: {} is not a folder",
                socket.display(),
                existing.display()
            ),
        ));
    }
    if !writable(existing) {
        return Err(ConfigError::new(
            key,
            format!(
                "{}: the node cannot create it in {} (no write permission)",
                socket.display(),
                existing.display()
            ),
        ));
    }
    Ok(())
}

fn existing_folder(key: &str, file: &Path) -> Result<(), ConfigError> {
    match file.parent().filter(|p| !p.as_os_str().is_empty()) {
        Some(folder) if !folder.is_dir() => Err(ConfigError::new(
            key,
            format!(
                "{}: the folder {} does not exist",
                file.display(),
                folder.display()
            ),
        )),
        _ => Ok(()),
    }
}

fn writable(path: &Path) -> bool {
    use std::os::unix::ffi::OsStrExt;
    let Ok(c) = std::ffi::CString::new(path.as_os_str().as_bytes()) else {
        return false;
    };
    // SAFETY: access(2) reads the NUL-terminated path we own.
    unsafe { libc::access(c.as_ptr(), libc::W_OK | libc::X_OK) == 0 }
}

/// The service's command can be run: `${TROUPE_EXE}` always; a path is an executable file
/// (relative ones from the service's `cwd`); a bare name is found on the service's `PATH`
/// (its own `env`, else the node's).
fn runnable(
    key: &str,
    command: &str,
    service: &troupe_supervisor::ServiceConfig,
) -> Result<(), ConfigError> {
    if command.starts_with(troupe_supervisor::config::TROUPE_EXE) {
        return Ok(());
    }
    let candidates: Vec<PathBuf> = if command.contains('/') {
        let path = PathBuf::from(command);
        vec![match (&service.cwd, path.is_relative()) {
            (Some(cwd), true) => cwd.join(path),
            _ => path,
        }]
    } else {
        let search = service
            .env
            .get("PATH")
            .cloned()
            .or_else(|| std::env::var("PATH").ok())
            .unwrap_or_else(|| "/usr/local/bin:/usr/bin:/bin".into());
        std::env::split_paths(&search)
            .map(|dir| dir.join(command))
            .collect()
    };
    let found: Vec<&PathBuf> = candidates.iter().filter(|p| p.is_file()).collect();
    if found.is_empty() {
        return Err(ConfigError::new(
            key,
            match command.contains('/') {
                true => format!("\"{command}\" does not exist"),
                false => format!("\"{command}\" is not found on the service's PATH"),
            },
        ));
    }
    if !found.iter().any(|p| executable(p)) {
        return Err(ConfigError::new(
            key,
            format!("\"{}\" is not executable", found[0].display()),
        ));
    }
    Ok(())
}

fn executable(path: &Path) -> bool {
    use std::os::unix::ffi::OsStrExt;
    let Ok(c) = std::ffi::CString::new(path.as_os_str().as_bytes()) else {
        return false;
    };
    // SAFETY: access(2) reads the NUL-terminated path we own.
    unsafe { libc::access(c.as_ptr(), libc::X_OK) == 0 }
}

/// The host and port of a TCP address (`tcp://HOST:PORT`, `HOST:PORT`); `None` for other
/// transports and for ports the system picks (`*`, `0`).
fn tcp_address(address: &str) -> Option<(String, u16)> {
    let rest = match address.strip_prefix("tcp://") {
        Some(rest) => rest,
        None if address.contains("://") => return None,
        None => address,
    };
    let (host, port) = rest.rsplit_once(':')?;
    let port: u16 = port.parse().ok().filter(|p| *p != 0)?;
    let host = match host.trim_start_matches('[').trim_end_matches(']') {
        "*" | "" => "0.0.0.0",
        host => host,
    };
    Some((host.to_string(), port))
}

/// Every address is free now, and no two keys name the same port on overlapping hosts.
fn free_addresses(addresses: &[(String, String)]) -> Result<(), ConfigError> {
    let tcp: Vec<(&str, &str, (String, u16))> = addresses
        .iter()
        .filter_map(|(key, address)| {
            tcp_address(address).map(|a| (key.as_str(), address.as_str(), a))
        })
        .collect();
    for (i, (key, address, (host, port))) in tcp.iter().enumerate() {
        if let Some((other, _, _)) = tcp[..i]
            .iter()
            .find(|(_, _, (h, p))| p == port && (h == host || h == "0.0.0.0" || host == "0.0.0.0"))
        {
            return Err(ConfigError::new(
                *key,
                format!("{address}: {other} uses the same port"),
            ));
        }
        let resolved: Vec<_> = (host.as_str(), *port)
            .to_socket_addrs()
            .map_err(|err| ConfigError::new(*key, format!("{address}: {err}")))?
            .collect();
        if let Some(addr) = resolved.first() {
            TcpListener::bind(addr).map_err(|err| {
                let why = match err.kind() {
                    std::io::ErrorKind::AddrInUse => {
                        "already in use (is another node or program listening there?)".to_string()
                    }
                    _ => err.to_string(),
                };
                ConfigError::new(*key, format!("cannot listen on {address}: {why}"))
            })?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tcp_addresses_are_read_and_wildcards_skipped() {
        assert_eq!(
            tcp_address("tcp://127.0.0.1:7500"),
            Some(("127.0.0.1".into(), 7500))
        );
        assert_eq!(tcp_address("tcp://*:7500"), Some(("0.0.0.0".into(), 7500)));
        assert_eq!(
            tcp_address("127.0.0.1:7600"),
            Some(("127.0.0.1".into(), 7600))
        );
        assert_eq!(tcp_address("tcp://127.0.0.1:*"), None);
        assert_eq!(tcp_address("tcp://127.0.0.1:0"), None);
        assert_eq!(tcp_address("ipc:///tmp/x"), None);
    }

    #[test]
    fn a_taken_port_and_a_port_named_twice_are_refused_by_key() {
        let taken = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = taken.local_addr().unwrap().port();
        let err = free_addresses(&[("broker.frontend".into(), format!("tcp://127.0.0.1:{port}"))])
            .unwrap_err();
        assert_eq!(err.key, "broker.frontend");
        assert!(err.message.contains("already in use"), "{err}");
        drop(taken);
        let err = free_addresses(&[
            ("beacon.bind".into(), format!("tcp://127.0.0.1:{port}")),
            ("broker.backend".into(), format!("tcp://*:{port}")),
        ])
        .unwrap_err();
        assert_eq!(err.key, "broker.backend");
        assert!(err.message.contains("beacon.bind"), "{err}");
    }
}
