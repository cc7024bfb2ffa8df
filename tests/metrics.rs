//! `GET /metrics` against real `troupe run` nodes: a node with every role, supervised services
//! (one restarted by an operator with `troupe ctl`, one killed and restarted by its plan), the
//! broker answering `troupe call`, ipc messages delivered and held, and a Python service that
//! sends its own metric over its ipc channel. The node is scraped over its Unix socket before
//! and after, and tests/python/metrics_check.py reads both scrapes with the Prometheus text
//! parser (`prometheus_client`). Then the TCP listeners: `bind` needs the API's token, and
//! `metrics_bind` serves `/metrics` only, with its own token or none. `check-config` refuses
//! what `run` would.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use serde_json::Value;
use troupe_tests::{free_port, troupe, Proc};

const START: Duration = Duration::from_secs(30);
const STOP: Duration = Duration::from_secs(20);
const SETTLE: Duration = Duration::from_secs(20);
const API_TOKEN: &str = "api-token-4f1c";
const METRICS_TOKEN: &str = "metrics-token-9b2e";
const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

fn python(script: &str) -> String {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("python")
        .join(script)
        .display()
        .to_string()
}

fn token_file(dir: &Path, name: &str, token: &str, mode: u32) -> PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, format!("{token}\n")).unwrap();
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode)).unwrap();
    path
}

fn text(out: &Output) -> String {
    format!(
        "status {:?}\nstdout: {}\nstderr: {}",
        out.status.code(),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// An HTTP answer: status, headers (names in lower case) and body.
struct Answer {
    status: u16,
    headers: Vec<(String, String)>,
    body: String,
}

impl Answer {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }
}

/// One HTTP/1.1 GET on `stream` (the connection is closed after it), with `token` if given.
fn get<S: Read + Write>(mut stream: S, path: &str, token: Option<&str>) -> Answer {
    let auth = token
        .map(|t| format!("Authorization: Bearer {t}\r\n"))
        .unwrap_or_default();
    let request =
        format!("GET {path} HTTP/1.1\r\nHost: localhost\r\n{auth}Connection: close\r\n\r\n");
    stream.write_all(request.as_bytes()).unwrap();
    let mut answer = Vec::new();
    let _ = stream.read_to_end(&mut answer);
    let answer = String::from_utf8_lossy(&answer).into_owned();
    let (head, body) = answer
        .split_once("\r\n\r\n")
        .unwrap_or_else(|| panic!("not an HTTP answer: {answer:?}"));
    let mut lines = head.lines();
    let status = lines
        .next()
        .and_then(|l| l.split(' ').nth(1))
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("no status line: {answer:?}"));
    let headers = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(n, v)| (n.trim().to_ascii_lowercase(), v.trim().to_string()))
        .collect();
    Answer {
        status,
        headers,
        body: body.to_string(),
    }
}

fn unix_get(socket: &Path, path: &str) -> Answer {
    let stream = UnixStream::connect(socket).unwrap();
    stream.set_read_timeout(Some(START)).unwrap();
    get(stream, path, None)
}

fn tcp_get(port: u16, path: &str, token: Option<&str>) -> Answer {
    let stream = TcpStream::connect(("127.0.0.1", port)).unwrap();
    stream.set_read_timeout(Some(START)).unwrap();
    get(stream, path, token)
}

/// A node with every role, its own beacon, and four supervised services.
struct Node {
    proc: Proc,
    dir: tempfile::TempDir,
    name: String,
    api: u16,
    metrics: u16,
    majordomo: u16,
}

impl Node {
    fn start() -> Node {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        let name = format!("metrics-{}", std::process::id());
        let (api, metrics) = (free_port(), free_port());
        let (front, back, majordomo, beacon) = (free_port(), free_port(), free_port(), free_port());
        let api_token = token_file(d, "api.token", API_TOKEN, 0o600);
        let metrics_token = token_file(d, "metrics.token", METRICS_TOKEN, 0o600);
        let config = format!(
            r#"
name = "{name}"
roles = ["ipc", "supervisor", "beacon", "broker"]
shutdown_timeout = "10s"

[control]
socket = "{d}/ctl.sock"
bind = "127.0.0.1:{api}"
token_file = "{api_token}"
metrics_bind = "127.0.0.1:{metrics}"
metrics_token_file = "{metrics_token}"

[ipc]
socket = "{d}/ipc.sock"

[supervisor]
state_dir = "{d}/state"

[[supervisor.services]]
id = "py"
command = "python3"
args = ["-u", "{ipc_service}"]
plan = [{{ restart_after_ms = 200 }}]
count = "infinity"

[[supervisor.services]]
id = "sink"
command = "python3"
args = ["-u", "{ipc_peer}", "echo", "--name", "sink"]

[[supervisor.services]]
id = "worker"
command = "${{TROUPE_EXE}}"
args = ["echo-worker", "--connect", "tcp://127.0.0.1:{back}"]

[[supervisor.services]]
id = "steady"
command = "sh"
args = ["-c", "while :; do sleep 1; done"]
plan = [{{ restart_after_ms = 100 }}]
count = "infinity"

[beacon]
bind = "tcp://127.0.0.1:{beacon}"

[broker]
service = "echo"
frontend = "tcp://127.0.0.1:{front}"
backend = "tcp://127.0.0.1:{back}"

[broker.majordomo]
bind = "tcp://127.0.0.1:{majordomo}"

[cluster]
beacons = ["tcp://127.0.0.1:{beacon}"]
"#,
            d = d.display(),
            api_token = api_token.display(),
            metrics_token = metrics_token.display(),
            ipc_service = python("ipc_service.py"),
            ipc_peer = python("ipc_peer.py"),
        );
        let path = d.join("node.toml");
        std::fs::write(&path, config).unwrap();
        let mut cmd = troupe();
        cmd.arg("run").arg("--config").arg(&path);
        let mut proc = Proc::spawn(cmd);
        proc.wait_for(&["node ready"], START);
        Node {
            proc,
            dir,
            name,
            api,
            metrics,
            majordomo,
        }
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    fn scrape(&self) -> String {
        let answer = unix_get(&self.path("ctl.sock"), "/metrics");
        assert_eq!(answer.status, 200, "{}", answer.body);
        assert_eq!(answer.header("content-type"), Some(CONTENT_TYPE));
        answer.body
    }

    /// Scrapes until the exposition holds a line starting with each of `lines`.
    fn scrape_until(&self, lines: &[String]) -> String {
        let deadline = Instant::now() + SETTLE;
        loop {
            let text = self.scrape();
            if lines
                .iter()
                .all(|want| text.lines().any(|l| l.starts_with(want.as_str())))
            {
                return text;
            }
            assert!(
                Instant::now() < deadline,
                "not all of {lines:?} within {SETTLE:?} in:\n{text}"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    fn ctl(&self, args: &[&str]) -> Output {
        let mut cmd = troupe();
        cmd.arg("ctl")
            .arg("--socket")
            .arg(self.path("ctl.sock"))
            .args(args);
        let out = cmd.output().expect("run troupe ctl");
        assert!(out.status.success(), "ctl {args:?}: {}", text(&out));
        out
    }

    /// Waits until service `id`'s status satisfies `check`.
    fn until(&self, id: &str, what: &str, check: impl Fn(&Value) -> bool) -> Value {
        let deadline = Instant::now() + SETTLE;
        loop {
            let out = self.ctl(&["service", id, "--json"]);
            let status: Value = serde_json::from_slice(&out.stdout).unwrap();
            if check(&status) {
                return status;
            }
            assert!(
                Instant::now() < deadline,
                "{id}: not {what} within {SETTLE:?}: {status}"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    fn line(&self, family: &str, labels: &str) -> String {
        format!("{family}{{node=\"{}\"{labels}}}", self.name)
    }

    fn stop(mut self) {
        self.proc.signal(libc::SIGTERM);
        let status = self.proc.wait_exit(STOP);
        assert!(status.success(), "{status:?}\n{}", self.proc.output());
    }
}

fn run(mut cmd: Command, what: &str) -> String {
    let out = cmd.output().unwrap_or_else(|e| panic!("{what}: {e}"));
    assert!(out.status.success(), "{what}: {}", text(&out));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[test]
fn a_node_exposes_its_metrics_and_they_move_with_what_it_does() {
    let node = Node::start();
    // Everything the first scrape must see: the service's own metric (sent as it attached),
    // the echo worker at the broker, the node registered at its beacon.
    let before = node.scrape_until(&[
        node.line(
            "troupe_service_metric_temperature",
            r#",service="py",device="dev-1""#,
        ) + " 21.5",
        node.line("troupe_broker_workers", r#",service="echo""#) + " 1",
        node.line("troupe_beacon_nodes", r#",status="online""#) + " 1",
        node.line("troupe_service_up", r#",service="sink""#) + " 1",
    ]);
    // The sink registered its name (its own output line), so messages to it are delivered.
    node.proc
        .wait_printed(&["ready", "service=sink", "stream=\"stdout\""], START);
    let steady = node.until("steady", "running", |s| s["state"] == "running");
    let py = node.until("py", "running", |s| s["state"] == "running");

    // The broker answers three calls.
    let calls = 3;
    for i in 0..calls {
        let mut call = troupe();
        call.args(["call", "echo", &format!("hello-{i}"), "--endpoint"])
            .arg(format!("tcp://127.0.0.1:{}", node.majordomo));
        assert_eq!(run(call, "troupe call").trim(), format!("hello-{i}"));
    }
    // Three ipc messages delivered to the sink, two held for a receiver that is not there.
    let ipc_socket = node.path("ipc.sock");
    for (to, count) in [("sink", 3), ("absent", 2)] {
        let mut send = Command::new("python3");
        send.arg(python("ipc_peer.py"))
            .args([
                "send",
                "--to",
                to,
                "--count",
                &count.to_string(),
                "--tag",
                to,
            ])
            .arg("--socket")
            .arg(&ipc_socket);
        assert!(run(send, "ipc_peer.py send").contains(&format!("sent {count}")));
    }
    node.proc
        .nth_printed(&["message", "sink:2", "service=sink"], 1, START);
    // An operator restarts `py` (not a crash); `steady` is killed (a crash its plan restarts).
    node.ctl(&["restart", "py"]);
    node.proc
        .nth_printed(&["service metric", "service=py", "temperature"], 2, START);
    node.ctl(&["signal", "steady", "KILL"]);
    let restarted = node.until("steady", "restarted by its plan", |s| {
        s["state"] == "running" && s["pid"] != steady["pid"] && s["restarts"] == 1
    });
    assert_eq!(restarted["restarts_last_hour"], 1, "{restarted}");
    let py_now = node.until("py", "running again", |s| {
        s["state"] == "running" && s["pid"] != py["pid"]
    });
    assert_eq!(py_now["restarts_last_hour"], 0, "{py_now}");
    // Held messages are counted as the hub reads them: wait for both.
    let after = node.scrape_until(&[node.line("troupe_ipc_messages_held_total", "") + " 2"]);

    std::fs::write(node.path("before.txt"), &before).unwrap();
    std::fs::write(node.path("after.txt"), &after).unwrap();
    let mut check = Command::new("python3");
    check
        .arg(python("metrics_check.py"))
        .args(["--node", &node.name, "--before"])
        .arg(node.path("before.txt"))
        .arg("--after")
        .arg(node.path("after.txt"))
        .args(["--calls", &calls.to_string()])
        .args(["--crashed", "steady", "--restarted", "py"])
        .args(["--delivered", "3", "--held", "2"]);
    let out = check.output().expect("run metrics_check.py");
    println!("{}", String::from_utf8_lossy(&out.stdout));
    assert!(
        out.status.success(),
        "metrics_check.py: {}\nbefore:\n{before}\nafter:\n{after}",
        text(&out)
    );

    // Over TCP `bind`, /metrics needs the API's token, like every API route.
    let refused = tcp_get(node.api, "/metrics", None);
    assert_eq!(refused.status, 401, "{}", refused.body);
    let refused = tcp_get(node.api, "/metrics", Some(METRICS_TOKEN));
    assert_eq!(refused.status, 401, "the metrics token is not the API's");
    let served = tcp_get(node.api, "/metrics", Some(API_TOKEN));
    assert_eq!(served.status, 200, "{}", served.body);
    assert_eq!(served.header("content-type"), Some(CONTENT_TYPE));
    let info = format!("troupe_node_info{{node=\"{}\",version=", node.name);
    assert!(served.body.contains(&info), "{}", served.body);

    // `metrics_bind` serves /metrics only, with its own token.
    let refused = tcp_get(node.metrics, "/metrics", None);
    assert_eq!(refused.status, 401, "{}", refused.body);
    assert_eq!(refused.header("www-authenticate"), Some("Bearer"));
    assert!(
        refused.body.contains("metrics_token_file"),
        "{}",
        refused.body
    );
    let refused = tcp_get(node.metrics, "/metrics", Some(API_TOKEN));
    assert_eq!(
        refused.status, 401,
        "the API's token is not the metrics one"
    );
    let served = tcp_get(node.metrics, "/metrics", Some(METRICS_TOKEN));
    assert_eq!(served.status, 200, "{}", served.body);
    assert_eq!(served.header("content-type"), Some(CONTENT_TYPE));
    assert!(served
        .body
        .contains(&node.line("troupe_service_up", r#",service="py""#)));
    for path in ["/v1/node", "/healthz", "/", "/metrics/x"] {
        let other = tcp_get(node.metrics, path, Some(METRICS_TOKEN));
        assert_eq!(other.status, 404, "{path}: {}", other.body);
    }
    node.stop();
}

fn refused(config: &str, key: &str, says: &str) {
    let mut file = tempfile::Builder::new().suffix(".toml").tempfile().unwrap();
    file.write_all(config.as_bytes()).unwrap();
    let mut messages = Vec::new();
    for command in ["check-config", "run"] {
        let mut cmd = troupe();
        cmd.arg(command).arg("--config").arg(file.path());
        let out = cmd.output().unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
        assert_eq!(out.status.code(), Some(2), "{command}: {stderr}");
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
fn a_metrics_listener_without_a_token_is_open_and_bad_keys_are_refused_before_start() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let metrics = free_port();
    let config = format!(
        "name = \"metrics-open-{}\"\nroles = [\"ipc\"]\n[control]\nsocket = \"{}/ctl.sock\"\nmetrics_bind = \"127.0.0.1:{metrics}\"\n[ipc]\nsocket = \"{}/ipc.sock\"\n",
        std::process::id(),
        d.display(),
        d.display()
    );
    let path = d.join("node.toml");
    std::fs::write(&path, &config).unwrap();
    let mut cmd = troupe();
    cmd.arg("run").arg("--config").arg(&path);
    let mut node = Proc::spawn(cmd);
    node.wait_for(&["node ready"], START);
    let served = tcp_get(metrics, "/metrics", None);
    assert_eq!(served.status, 200, "{}", served.body);
    assert!(
        served.body.contains("troupe_ipc_connections{"),
        "{}",
        served.body
    );
    assert!(!served.body.contains("troupe_broker_"), "{}", served.body);
    assert_eq!(tcp_get(metrics, "/v1/node", None).status, 404);
    node.signal(libc::SIGTERM);
    assert!(node.wait_exit(STOP).success(), "{}", node.output());

    // What `run` would refuse, `check-config` refuses, naming the key.
    let api = free_port();
    let token = token_file(d, "api.token", API_TOKEN, 0o600);
    let base = format!(
        "roles = [\"ipc\"]\n[control]\nsocket = \"{}/ctl2.sock\"\nbind = \"127.0.0.1:{api}\"\ntoken_file = \"{}\"\n",
        d.display(),
        token.display()
    );
    refused(
        &format!("{base}metrics_bind = \"127.0.0.1:{api}\"\n"),
        "control.metrics_bind",
        "address of its own",
    );
    refused(
        &format!("{base}metrics_bind = \"localhost:9\"\n"),
        "control.metrics_bind",
        "not an address",
    );
    let loose = token_file(d, "loose.token", METRICS_TOKEN, 0o644);
    refused(
        &format!(
            "{base}metrics_bind = \"127.0.0.1:{}\"\nmetrics_token_file = \"{}\"\n",
            free_port(),
            loose.display()
        ),
        "control.metrics_token_file",
        "chmod 600",
    );
    refused(
        &format!("{base}max_service_series = 0\n"),
        "control.max_service_series",
        "out of range",
    );
}
