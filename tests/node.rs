//! The `troupe` binary as an operator uses it: start, readiness, signals, exit codes, config
//! errors, and a custom role composed with built-in ones.

use std::io::Write;
use std::time::Duration;

use troupe_tests::{run_to_end, troupe, Proc};

const START: Duration = Duration::from_secs(30);
const STOP: Duration = Duration::from_secs(15);

fn unique_name(tag: &str) -> String {
    format!("{tag}-{}", std::process::id())
}

fn config_file(text: &str) -> tempfile::NamedTempFile {
    let mut f = tempfile::Builder::new().suffix(".toml").tempfile().unwrap();
    f.write_all(text.as_bytes()).unwrap();
    f
}

#[test]
fn embedded_default_starts_and_sigterm_stops_every_role() {
    let name = unique_name("default");
    let mut cmd = troupe();
    cmd.args(["run", "--name", &name]);
    let mut node = Proc::spawn(cmd);
    node.wait_for(&["node ready", &name], START);
    for role in ["ipc", "supervisor", "beacon", "broker"] {
        assert!(
            node.printed(&["role started", &format!("role=\"{role}\"")]),
            "{role} not started:\n{}",
            node.output()
        );
    }
    node.signal(libc::SIGTERM);
    let status = node.wait_exit(STOP);
    assert_eq!(status.code(), Some(0), "{}", node.output());
    for role in ["ipc", "supervisor", "beacon", "broker"] {
        assert!(
            node.printed(&["role stopped", &format!("role=\"{role}\"")]),
            "{role} not logged as stopped:\n{}",
            node.output()
        );
    }
    assert!(node.printed(&["node stopped", "exit_code=0"]));
}

#[test]
fn sigint_stops_the_node_too() {
    let mut cmd = troupe();
    cmd.args([
        "run",
        "--name",
        &unique_name("sigint"),
        "--roles",
        "heartbeat",
    ]);
    let mut node = Proc::spawn(cmd);
    node.wait_for(&["node ready"], START);
    node.signal(libc::SIGINT);
    assert_eq!(node.wait_exit(STOP).code(), Some(0), "{}", node.output());
    assert!(node.printed(&["role stopped", "heartbeat"]));
}

#[test]
fn unknown_role_exits_2_naming_the_valid_roles() {
    let mut cmd = troupe();
    cmd.args(["run", "--roles", "bogus"]);
    let (status, output) = run_to_end(cmd, STOP);
    assert_eq!(status.code(), Some(2), "{output}");
    assert!(output.contains("unknown role `bogus`"), "{output}");
    assert!(
        output.contains("valid roles: ipc, supervisor, beacon, broker, heartbeat"),
        "{output}"
    );
    assert!(!output.contains("backtrace"), "{output}");
    assert_eq!(
        output.lines().count(),
        1,
        "one paragraph expected: {output}"
    );
}

#[test]
fn unknown_key_in_a_file_exits_2_naming_the_key() {
    let file = config_file("roles = [\"heartbeat\"]\n[heartbeat]\nintervall = \"1s\"\n");
    let mut cmd = troupe();
    cmd.arg("run").arg("--config").arg(file.path());
    let (status, output) = run_to_end(cmd, STOP);
    assert_eq!(status.code(), Some(2), "{output}");
    assert!(output.contains("`heartbeat.intervall`"), "{output}");
    assert!(output.contains("expected `interval`"), "{output}");
}

#[test]
fn check_config_prints_the_merged_layers() {
    let file =
        config_file("name = \"from-file\"\nroles = [\"heartbeat\"]\nshutdown_timeout = \"7s\"\n");
    let mut cmd = troupe();
    cmd.arg("check-config")
        .arg("--config")
        .arg(file.path())
        .args(["--name", "from-flag"])
        .env("TROUPE_HEARTBEAT__INTERVAL", "250ms");
    let (status, output) = run_to_end(cmd, STOP);
    assert_eq!(status.code(), Some(0), "{output}");
    assert!(output.contains("name = \"from-flag\""), "{output}");
    assert!(output.contains("shutdown_timeout = \"7s\""), "{output}");
    assert!(output.contains("interval = \"250ms\""), "{output}");
}

#[test]
fn custom_role_composes_with_a_builtin_role() {
    let mut cmd = troupe();
    cmd.args([
        "run",
        "--name",
        &unique_name("custom"),
        "--roles",
        "supervisor,heartbeat",
    ])
    .env("TROUPE_HEARTBEAT__INTERVAL", "50ms");
    let mut node = Proc::spawn(cmd);
    node.wait_for(&["node ready"], START);
    node.wait_for(&["role=heartbeat", "tick", "tick=2"], START);
    assert!(node.printed(&["role started", "role=\"supervisor\""]));
    node.signal(libc::SIGTERM);
    assert_eq!(node.wait_exit(STOP).code(), Some(0), "{}", node.output());
    assert!(node.printed(&["role stopped", "role=\"heartbeat\""]));
    assert!(node.printed(&["role stopped", "role=\"supervisor\""]));
}

#[test]
fn a_panicking_actor_stops_the_whole_node_with_exit_1() {
    let name = unique_name("panic");
    let mut cmd = troupe();
    cmd.args(["run", "--name", &name, "--roles", "heartbeat,supervisor"])
        .env("TROUPE_HEARTBEAT__INTERVAL", "20ms")
        .env("TROUPE_HEARTBEAT__PANIC_ON_TICK", "3");
    let mut node = Proc::spawn(cmd);
    let status = node.wait_exit(START);
    assert_eq!(status.code(), Some(1), "{}", node.output());
    let panic_line = node.wait_for(&["panic: heartbeat told to panic"], STOP);
    assert!(panic_line.contains(&format!("node={name}")), "{panic_line}");
    assert!(panic_line.contains("role=heartbeat"), "{panic_line}");
    assert!(node.printed(&["role stopped", "role=\"supervisor\""]));
}

#[test]
fn json_logs_carry_node_and_role() {
    let name = unique_name("json");
    let mut cmd = troupe();
    cmd.args([
        "run",
        "--name",
        &name,
        "--roles",
        "heartbeat",
        "--log-format",
        "json",
    ])
    .env("TROUPE_HEARTBEAT__INTERVAL", "20ms");
    let mut node = Proc::spawn(cmd);
    let tick = node.wait_for(&["\"tick\""], START);
    let event: serde_json::Value = serde_json::from_str(&tick).expect("a JSON line");
    assert_eq!(event["span"]["node"], name.as_str(), "{tick}");
    assert_eq!(event["span"]["role"], "heartbeat", "{tick}");
    node.signal(libc::SIGTERM);
    assert_eq!(node.wait_exit(STOP).code(), Some(0));
}

#[test]
fn a_second_signal_ends_a_slow_shutdown_at_once() {
    // A service that ignores SIGTERM holds the supervisor's stop for a minute; the second
    // signal must end the node at once instead.
    let state = tempfile::tempdir().unwrap();
    let file = config_file(&format!(
        r#"
roles = ["supervisor"]
shutdown_timeout = "60s"
[supervisor]
state_dir = "{}"
[[supervisor.services]]
id = "stubborn"
command = "sh"
args = ["-c", "trap '' TERM; echo stubborn up; while :; do sleep 1; done"]
terminate_timeout_ms = 60000
"#,
        state.path().display()
    ));
    let mut cmd = troupe();
    cmd.arg("run")
        .arg("--config")
        .arg(file.path())
        .args(["--name", &unique_name("second-signal")]);
    let mut node = Proc::spawn(cmd);
    node.wait_for(&["node ready"], START);
    // The service's first line may come before or after `node ready`.
    node.wait_printed(&["stubborn up"], START);
    node.signal(libc::SIGTERM);
    node.wait_for(&["signal received; stopping node"], STOP);
    node.signal(libc::SIGTERM);
    let status = node.wait_exit(STOP);
    assert_eq!(
        status.code(),
        Some(128 + libc::SIGTERM),
        "{}",
        node.output()
    );
    assert!(node.printed(&["second signal; exiting at once"]));
}

#[test]
fn check_config_warns_of_a_bare_restart_forever_and_still_accepts_it() {
    let f = config_file(
        "roles = [\"supervisor\"]\n[[supervisor.services]]\nid = \"loop\"\ncommand = \"sh\"\nplan = [\"restart\"]\ncount = \"infinity\"\n",
    );
    let mut cmd = troupe();
    cmd.arg("check-config").arg("--config").arg(f.path());
    let out = cmd.output().unwrap();
    assert_eq!(out.status.code(), Some(0));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("warning: supervisor.services[0].plan")
            && stderr.contains("restart_backoff"),
        "{stderr}"
    );
}
