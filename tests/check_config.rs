//! `check-config` refuses what `run` would refuse, with the same message and exit code 2:
//! each case is checked with both commands.

use std::io::Write;
use std::os::unix::fs::PermissionsExt;

use troupe_tests::{free_port, troupe};

/// Runs `check-config` and `run` on `config`; both must exit 2 with the same message, which
/// names `key` and contains `says`.
fn refused(config: &str, key: &str, says: &str) {
    let mut file = tempfile::Builder::new().suffix(".toml").tempfile().unwrap();
    file.write_all(config.as_bytes()).unwrap();
    let mut messages = Vec::new();
    for command in ["check-config", "run"] {
        let mut cmd = troupe();
        cmd.arg(command).arg("--config").arg(file.path());
        let out = cmd.output().unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
        assert_eq!(
            out.status.code(),
            Some(2),
            "{command} on {config}:\n{stderr}"
        );
        assert!(
            stderr.contains(key) && stderr.contains(says),
            "{command}: {stderr}"
        );
        messages.push(stderr);
    }
    assert_eq!(
        messages[0], messages[1],
        "check-config and run say the same"
    );
}

#[test]
fn a_cookie_file_others_can_read() {
    let dir = tempfile::tempdir().unwrap();
    let cookie = dir.path().join("cookie");
    std::fs::write(&cookie, "secret").unwrap();
    std::fs::set_permissions(&cookie, std::fs::Permissions::from_mode(0o644)).unwrap();
    refused(
        &format!(
            "roles = [\"supervisor\"]\n[cluster]\nbeacons = [\"tcp://127.0.0.1:{}\"]\ncookie_file = \"{}\"\n",
            free_port(),
            cookie.display()
        ),
        "cluster.cookie_file",
        "chmod 600",
    );
}

#[test]
fn a_missing_snapshot_folder() {
    refused(
        &format!(
            "roles = [\"beacon\"]\n[beacon]\nbind = \"tcp://127.0.0.1:{}\"\nsnapshot_file = \"/nonexistent/troupe/beacon.json\"\n[cluster]\nbeacons = []\n",
            free_port()
        ),
        "beacon.snapshot_file",
        "does not exist",
    );
}

#[test]
fn an_address_already_taken() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = taken.local_addr().unwrap().port();
    refused(
        &format!("roles = [\"beacon\"]\n[beacon]\nbind = \"tcp://127.0.0.1:{port}\"\n[cluster]\nbeacons = []\n"),
        "beacon.bind",
        "already in use",
    );
    let (shared, back, mdp) = (free_port(), free_port(), free_port());
    refused(
        &format!("roles = [\"beacon\", \"broker\"]\n[beacon]\nbind = \"tcp://127.0.0.1:{shared}\"\n[broker]\nfrontend = \"tcp://127.0.0.1:{shared}\"\nbackend = \"tcp://127.0.0.1:{back}\"\n[broker.majordomo]\nbind = \"tcp://127.0.0.1:{mdp}\"\n[cluster]\nbeacons = []\n"),
        "broker.frontend",
        "beacon.bind uses the same port",
    );
}

#[test]
fn a_service_command_that_cannot_run() {
    refused(
        "roles = [\"supervisor\"]\n[cluster]\nbeacons = []\n[[supervisor.services]]\nid = \"x\"\ncommand = \"no-such-command-for-troupe\"\n",
        "supervisor.services[0].command",
        "not found on the service's PATH",
    );
    let dir = tempfile::tempdir().unwrap();
    let script = dir.path().join("not-executable.sh");
    std::fs::write(&script, "#!/bin/sh\n").unwrap();
    std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o644)).unwrap();
    refused(
        &format!(
            "roles = [\"supervisor\"]\n[cluster]\nbeacons = []\n[[supervisor.services]]\nid = \"x\"\ncommand = \"{}\"\n",
            script.display()
        ),
        "supervisor.services[0].command",
        "is not executable",
    );
}

#[test]
fn a_terminate_timeout_longer_than_the_shutdown_timeout() {
    refused(
        "roles = [\"supervisor\"]\nshutdown_timeout = \"2s\"\n[cluster]\nbeacons = []\n[[supervisor.services]]\nid = \"slow\"\ncommand = \"sh\"\nterminate_timeout_ms = 5000\n",
        "supervisor.services[0].terminate_timeout_ms",
        "longer than shutdown_timeout",
    );
}

#[test]
fn a_cluster_resource_the_node_does_not_run() {
    refused(
        "roles = [\"supervisor\"]\n[cluster]\nbeacons = []\nresource = \"broker\"\n",
        "cluster.resource",
        "does not run",
    );
}

#[test]
fn a_log_file_folder_that_does_not_exist() {
    refused(
        "roles = [\"supervisor\"]\n[cluster]\nbeacons = []\n[[supervisor.services]]\nid = \"x\"\ncommand = \"sh\"\nlog_file = { path = \"/nonexistent/troupe/x.log\" }\n",
        "supervisor.services[0].log_file.path",
        "does not exist",
    );
}
