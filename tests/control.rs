//! Integration tests of the control plane: real `troupe run` nodes with real `sh` (and Python)
//! services, steered with real `troupe ctl` processes over the node's Unix socket and over
//! TCP with its token; reloads by API and by SIGHUP; the systemd notify protocol.

use std::io::{Read, Write};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::{UnixDatagram, UnixStream};
use std::path::{Path, PathBuf};
use std::process::Output;
use std::time::{Duration, Instant};

use serde_json::Value;
use troupe_tests::{free_port, troupe, Proc};

const START: Duration = Duration::from_secs(30);
const STOP: Duration = Duration::from_secs(20);
const SETTLE: Duration = Duration::from_secs(20);

fn unique(tag: &str) -> String {
    format!("ctl-{tag}-{}", std::process::id())
}

/// A node test: its process, its folder (config, state, control socket).
struct Node {
    proc: Proc,
    dir: tempfile::TempDir,
}

impl Node {
    /// Starts a node from `config` (a whole TOML file but for `name`, `state_dir` and the
    /// control socket, which are added).
    fn start(tag: &str, config: &str) -> Node {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("node.toml");
        std::fs::write(&path, Node::complete(tag, &dir, config)).unwrap();
        let mut cmd = troupe();
        cmd.arg("run").arg("--config").arg(&path);
        let mut proc = Proc::spawn(cmd);
        proc.wait_for(&["node ready"], START);
        Node { proc, dir }
    }

    fn complete(tag: &str, dir: &tempfile::TempDir, config: &str) -> String {
        format!(
            "name = \"{}\"\nshutdown_timeout = \"10s\"\n{config}\n[control]\nsocket = \"{}\"\n",
            unique(tag),
            dir.path().join("ctl.sock").display()
        )
    }

    fn config_path(&self) -> PathBuf {
        self.dir.path().join("node.toml")
    }

    fn rewrite(&self, tag: &str, config: &str) {
        std::fs::write(self.config_path(), Node::complete(tag, &self.dir, config)).unwrap();
    }

    fn socket(&self) -> PathBuf {
        self.dir.path().join("ctl.sock")
    }

    /// `troupe ctl --socket S ARGS…`, run to its end.
    fn ctl(&self, args: &[&str]) -> Output {
        ctl_at(&self.socket(), args)
    }

    /// `ctl … --json`, which must succeed; its JSON.
    fn json(&self, args: &[&str]) -> Value {
        let mut all = args.to_vec();
        all.push("--json");
        let out = self.ctl(&all);
        assert!(out.status.success(), "ctl {args:?} failed: {}", text(&out));
        serde_json::from_slice(&out.stdout)
            .unwrap_or_else(|e| panic!("ctl {args:?}: not JSON ({e}): {}", text(&out)))
    }

    fn service(&self, id: &str) -> Value {
        self.json(&["service", id])
    }

    fn pid(&self, id: &str) -> u64 {
        self.service(id)["pid"]
            .as_u64()
            .unwrap_or_else(|| panic!("{id} has no pid: {}", self.service(id)))
    }

    /// Waits until service `id`'s status satisfies `check`.
    fn until(&self, id: &str, what: &str, check: impl Fn(&Value) -> bool) -> Value {
        let deadline = Instant::now() + SETTLE;
        loop {
            let out = self.ctl(&["service", id, "--json"]);
            if out.status.success() {
                let status: Value = serde_json::from_slice(&out.stdout).unwrap();
                if check(&status) {
                    return status;
                }
                assert!(
                    Instant::now() < deadline,
                    "{id}: not {what} within {SETTLE:?}: {status}"
                );
            } else {
                assert!(
                    Instant::now() < deadline,
                    "{id}: not {what}: {}",
                    text(&out)
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    fn stop(mut self) {
        self.proc.signal(libc::SIGTERM);
        let status = self.proc.wait_exit(STOP);
        assert!(status.success(), "{status:?}\n{}", self.proc.output());
    }
}

fn ctl_at(socket: &Path, args: &[&str]) -> Output {
    let mut cmd = troupe();
    cmd.arg("ctl").arg("--socket").arg(socket).args(args);
    cmd.output().expect("run troupe ctl")
}

fn text(out: &Output) -> String {
    format!(
        "status {:?}\nstdout: {}\nstderr: {}",
        out.status.code(),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// One raw HTTP/1.1 exchange on `stream` (the connection is closed after it). Returns the
/// status code and the body.
fn http<S: Read + Write>(mut stream: S, head: &str, body: &[u8]) -> (u16, String) {
    let request = format!(
        "{head}\r\nHost: localhost\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    );
    let _ = stream.write_all(request.as_bytes());
    let _ = stream.write_all(body);
    let mut answer = Vec::new();
    let _ = stream.read_to_end(&mut answer);
    let answer = String::from_utf8_lossy(&answer).into_owned();
    let status = answer
        .split(' ')
        .nth(1)
        .and_then(|code| code.parse().ok())
        .unwrap_or_else(|| panic!("not an HTTP answer: {answer:?}"));
    let body = answer
        .split("\r\n\r\n")
        .nth(1)
        .unwrap_or_default()
        .to_string();
    (status, body)
}

fn unix_http(socket: &Path, head: &str, body: &[u8]) -> (u16, String) {
    let stream = UnixStream::connect(socket).unwrap();
    stream.set_read_timeout(Some(START)).unwrap();
    http(stream, head, body)
}

fn python_service() -> String {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("python/ipc_service.py")
        .display()
        .to_string()
}

const SERVICES: &str = r#"
roles = ["ipc", "supervisor"]

[[supervisor.services]]
id = "steady"
command = "sh"
args = ["-c", "while :; do sleep 1; done"]
plan = [{ restart_after_ms = 100 }]
count = "infinity"

[[supervisor.services]]
id = "chatty"
command = "sh"
args = ["-c", "i=0; while :; do i=$((i+1)); echo line-$i; sleep 0.1; done"]

[[supervisor.services]]
id = "trap"
command = "sh"
args = ["-c", "trap 'echo got-usr1' USR1; echo trap-ready; while :; do sleep 0.1; done"]

[[supervisor.services]]
id = "waiter"
command = "sh"
args = ["-c", "echo waiter-ran; exit 3"]
plan = ["wait"]
count = "infinity"

[[supervisor.services]]
id = "flaky"
command = "sh"
args = ["-c", "sleep 0.2; exit 1"]
plan = [{ restart_after_ms = 100 }]
count = "infinity"
"#;

fn with_python(config: &str) -> String {
    format!(
        "{config}\n[[supervisor.services]]\nid = \"py\"\ncommand = \"python3\"\nargs = [\"-u\", \"{}\"]\nplan = [{{ restart_after_ms = 200 }}]\ncount = \"infinity\"\n",
        python_service()
    )
}

#[test]
fn an_operator_sees_and_steers_every_service() {
    let mut node = Node::start("steer", &with_python(SERVICES));

    // status and services: a table for people, the API's JSON with --json.
    let out = node.ctl(&["status"]);
    assert!(out.status.success(), "{}", text(&out));
    let shown = String::from_utf8_lossy(&out.stdout);
    assert!(
        shown.contains("supervisor running") && shown.contains("steady"),
        "{shown}"
    );
    let node_json = node.json(&["status"]);
    assert_eq!(node_json["name"], unique("steer"));
    let services = node.json(&["services"]);
    assert_eq!(services["services"].as_array().unwrap().len(), 6);

    // restart: a new pid, the plan counters untouched.
    let before = node.until("steady", "running", |v| v["state"] == "running");
    let out = node.ctl(&["restart", "steady"]);
    assert!(out.status.success(), "{}", text(&out));
    assert!(String::from_utf8_lossy(&out.stdout).contains("steady: restarted (pid "));
    let after = node.until("steady", "running again", |v| v["state"] == "running");
    assert_ne!(after["pid"], before["pid"]);
    assert!(after["generation"].as_u64() > before["generation"].as_u64());
    assert_eq!(after["restarts"], before["restarts"]);
    assert_eq!(after["plan_position"], before["plan_position"]);
    assert_eq!(after["last_exit"]["requested"], true);

    // stop, then start.
    let out = node.ctl(&["stop", "steady"]);
    assert!(out.status.success(), "{}", text(&out));
    let stopped = node.service("steady");
    assert_eq!(stopped["state"], "waiting", "{stopped}");
    assert_eq!(stopped["waiting_for"], "start");
    assert_eq!(
        stopped["restarts"], before["restarts"],
        "an operator's stop is no crash"
    );
    let out = node.ctl(&["start", "steady"]);
    assert!(out.status.success(), "{}", text(&out));
    node.until("steady", "running after start", |v| v["state"] == "running");

    // signal reaches the service's process.
    node.proc.wait_printed(&["trap-ready"], START);
    let out = node.ctl(&["signal", "trap", "USR1"]);
    assert!(out.status.success(), "{}", text(&out));
    assert!(String::from_utf8_lossy(&out.stdout).contains("SIGUSR1"));
    let deadline = Instant::now() + SETTLE;
    while !String::from_utf8_lossy(&node.ctl(&["logs", "trap", "-n", "50"]).stdout)
        .contains("got-usr1")
    {
        assert!(Instant::now() < deadline, "the trap never saw USR1");
        std::thread::sleep(Duration::from_millis(50));
    }

    // A `wait` service is brought back with start.
    let waiting = node.until("waiter", "waiting", |v| v["state"] == "waiting");
    assert_eq!(waiting["waiting_for"], "start");
    let out = node.ctl(&["start", "waiter"]);
    assert!(out.status.success(), "{}", text(&out));
    node.until("waiter", "run twice", |v| {
        v["state"] == "waiting" && v["generation"].as_u64() > waiting["generation"].as_u64()
    });

    // A changed plan takes effect: the crash-looping service now waits.
    let out = node.ctl(&["plan", "flaky", "--set", r#"["wait"]"#]);
    assert!(out.status.success(), "{}", text(&out));
    let plan = node.json(&["plan", "flaky"]);
    assert_eq!(plan["plan"], serde_json::json!(["wait"]), "{plan}");
    node.until("flaky", "waiting under its new plan", |v| {
        v["state"] == "waiting" && v["waiting_for"] == "start"
    });

    // add and delete.
    let spec = node.dir.path().join("extra.toml");
    std::fs::write(
        &spec,
        "id = \"extra\"\ncommand = \"sh\"\nargs = [\"-c\", \"while :; do sleep 1; done\"]\n",
    )
    .unwrap();
    let out = node.ctl(&["add", spec.to_str().unwrap()]);
    assert!(out.status.success(), "{}", text(&out));
    node.until("extra", "running", |v| v["state"] == "running");
    let out = node.ctl(&["delete", "extra"]);
    assert_eq!(
        out.status.code(),
        Some(1),
        "a running service is not deleted: {}",
        text(&out)
    );
    assert!(
        stderr(&out).contains("extra") && stderr(&out).contains("running"),
        "{}",
        text(&out)
    );
    assert!(node.ctl(&["stop", "extra"]).status.success());
    let out = node.ctl(&["delete", "extra"]);
    assert!(out.status.success(), "{}", text(&out));
    assert_eq!(node.service("extra")["state"], "deleted");
    let ids: Vec<Value> = node.json(&["services"])["services"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|v| v["state"] != "deleted")
        .map(|v| v["id"].clone())
        .collect();
    assert!(!ids.contains(&Value::from("extra")), "{ids:?}");

    // logs -n: the latest lines, each with its stream and generation.
    let logs = node.json(&["logs", "chatty", "-n", "5"]);
    let lines = logs["lines"].as_array().unwrap();
    assert_eq!(lines.len(), 5, "{logs}");
    assert!(lines
        .iter()
        .all(|l| l["stream"] == "stdout" && l["generation"].as_u64().is_some()));
    let out = node.ctl(&["logs", "chatty", "-n", "3"]);
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).lines().count(),
        3,
        "{}",
        text(&out)
    );

    // logs -f: new lines as they come.
    let mut follow = troupe();
    follow
        .arg("ctl")
        .arg("--socket")
        .arg(node.socket())
        .args(["logs", "chatty", "-n", "1", "-f"]);
    let mut follow = Proc::spawn(follow);
    let first = follow.wait_for(&["line-"], START);
    let n: u64 = first
        .rsplit("line-")
        .next()
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    follow.wait_for(&[&format!("line-{}", n + 3)], START);
    drop(follow);

    // push-config and invoke over the service's channel.
    node.proc.wait_printed(&["attached py"], START);
    let config = node.dir.path().join("config.json");
    std::fs::write(&config, r#"{"threshold": 3}"#).unwrap();
    let out = node.ctl(&["push-config", "py", config.to_str().unwrap()]);
    assert!(out.status.success(), "{}", text(&out));
    node.proc.wait_for(&["config-applied", "threshold"], START);
    let answer = node.json(&["invoke", "py", "ping", r#"{"x": 1}"#]);
    let result = answer["result"].as_str().unwrap_or_default();
    assert!(
        result.starts_with("echo:") && result.contains("\"method\":\"ping\""),
        "{answer}"
    );

    // The ipc hub shows the service's channel connection.
    let ipc = node.json(&["ipc"]);
    let connections = ipc["connections"].as_array().unwrap();
    assert!(connections.iter().any(|c| c["service"] == "py"), "{ipc}");
    assert!(String::from_utf8_lossy(&node.ctl(&["ipc"]).stdout).contains("py"));

    // The default child spec, read and replaced.
    let default = node.json(&["default-spec"]);
    assert_eq!(default["terminate_timeout_ms"], 0, "{default}");
    let file = node.dir.path().join("default.toml");
    std::fs::write(&file, "args = [\"--base\"]\nterminate_timeout_ms = 250\n").unwrap();
    let out = node.ctl(&["default-spec", "--set", file.to_str().unwrap()]);
    assert!(out.status.success(), "{}", text(&out));
    assert_eq!(node.json(&["default-spec"])["terminate_timeout_ms"], 250);
    std::fs::write(
        &file,
        "plan = [{ restart_backoff = { initial_ms = 500, max_ms = 1 } }]\n",
    )
    .unwrap();
    let out = node.ctl(&["default-spec", "--set", file.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));

    // A node without a cluster client says so.
    let out = node.ctl(&["cluster"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(stderr(&out).contains("no cluster client"), "{}", text(&out));

    // Bad input: clear errors, nothing changed.
    let out = node.ctl(&["service", "nosuch"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stderr(&out).contains("nosuch") && stderr(&out).contains("not found"),
        "{}",
        text(&out)
    );
    let out = node.ctl(&["plan", "steady", "--set", r#"["reboot"]"#]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert!(stderr(&out).contains("reboot"), "{}", text(&out));
    let out = node.ctl(&["signal", "trap", "BOGUS"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(stderr(&out).contains("not a signal"), "{}", text(&out));
    let (status, body) = unix_http(
        &node.socket(),
        "POST /v1/services HTTP/1.1\r\nContent-Type: application/json",
        b"{\"id\": ",
    );
    assert_eq!(status, 400, "{body}");
    assert!(body.contains("bad_json"), "{body}");
    let (status, body) = unix_http(
        &node.socket(),
        "POST /v1/services HTTP/1.1\r\nContent-Type: application/json",
        br#"{"id": "x", "command": "sh", "bogus": 1}"#,
    );
    assert_eq!(status, 400, "{body}");
    assert!(body.contains("bogus"), "an unknown field is named: {body}");
    let big = vec![b' '; 2 * 1024 * 1024];
    let (status, body) = unix_http(
        &node.socket(),
        "POST /v1/services/steady/config HTTP/1.1\r\nContent-Type: application/json",
        &big,
    );
    assert_eq!(status, 413, "{body}");
    let (status, _) = unix_http(&node.socket(), "GET /v1/nothing-here HTTP/1.1", b"");
    assert_eq!(status, 404);
    assert_eq!(node.service("steady")["state"], "running");

    // 20 ctl calls at once are all answered.
    let calls: Vec<_> = (0..20)
        .map(|_| {
            let mut cmd = troupe();
            cmd.arg("ctl")
                .arg("--socket")
                .arg(node.socket())
                .args(["services", "--json"]);
            cmd.stdout(std::process::Stdio::piped())
                .stderr(std::process::Stdio::piped());
            cmd.spawn().unwrap()
        })
        .collect();
    for call in calls {
        let out = call.wait_with_output().unwrap();
        assert!(out.status.success(), "{}", text(&out));
        let answer: Value = serde_json::from_slice(&out.stdout).unwrap();
        assert!(answer["services"].as_array().is_some());
    }
    node.stop();
}

const RELOADED: &str = r#"
roles = ["supervisor"]

[[supervisor.services]]
id = "keep"
command = "sh"
args = ["-c", "while :; do sleep 1; done"]

[[supervisor.services]]
id = "drop"
command = "sh"
args = ["-c", "while :; do sleep 1; done"]

[[supervisor.services]]
id = "change"
command = "sh"
args = ["-c", "while :; do sleep 1; done", "v1"]
"#;

#[test]
fn reload_applies_the_difference_and_refuses_a_broken_config() {
    let node = Node::start("reload", RELOADED);
    let s = &node;
    for id in ["keep", "drop", "change"] {
        s.until(id, "running", |v| v["state"] == "running");
    }
    let keep = s.pid("keep");
    let change = s.pid("change");
    let edited = RELOADED
        .replace("id = \"drop\"", "id = \"added\"")
        .replace("\"v1\"", "\"v2\"");
    node.rewrite("reload", &edited);

    // A dry run says what would change and changes nothing.
    let plan = s.json(&["reload", "--dry-run"]);
    assert_eq!(plan["dry_run"], true);
    assert_eq!(
        plan["supervisor"]["added"],
        serde_json::json!(["added"]),
        "{plan}"
    );
    assert_eq!(
        plan["supervisor"]["removed"],
        serde_json::json!(["drop"]),
        "{plan}"
    );
    assert_eq!(
        plan["supervisor"]["changed"],
        serde_json::json!(["change"]),
        "{plan}"
    );
    assert_eq!(s.pid("change"), change);
    assert!(s.ctl(&["service", "added"]).status.code() == Some(1));

    // The reload itself: added started, removed deleted, changed restarted, unchanged untouched.
    let out = s.ctl(&["reload"]);
    assert!(out.status.success(), "{}", text(&out));
    let shown = String::from_utf8_lossy(&out.stdout);
    assert!(
        shown.contains("added") && shown.contains("removed"),
        "{shown}"
    );
    s.until("added", "running", |v| v["state"] == "running");
    s.until("change", "running its new spec", |v| {
        v["state"] == "running" && v["spec"]["args"][2] == "v2"
    });
    assert_ne!(s.pid("change"), change);
    assert_eq!(
        s.pid("keep"),
        keep,
        "an unchanged service keeps its process"
    );
    let dropped = s.service("drop");
    assert_eq!(dropped["state"], "deleted", "{dropped}");

    // A broken config changes nothing and is refused with check-config's message.
    std::fs::write(node.config_path(), "roles = [\"supervisor\"\nname = 3").unwrap();
    let out = s.ctl(&["reload"]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    let mut check = troupe();
    check
        .arg("check-config")
        .arg("--config")
        .arg(node.config_path());
    let check = check.output().unwrap();
    assert_eq!(check.status.code(), Some(2));
    assert_eq!(
        stderr(&out),
        stderr(&check),
        "the same one-line error as check-config"
    );
    assert_eq!(s.pid("keep"), keep);
    assert_eq!(s.service("added")["state"], "running");

    // SIGHUP reloads, and the node keeps running.
    node.rewrite("reload", &format!("{edited}\n[[supervisor.services]]\nid = \"hup\"\ncommand = \"sh\"\nargs = [\"-c\", \"while :; do sleep 1; done\"]\n"));
    node.proc.signal(libc::SIGHUP);
    s.until("hup", "started by the SIGHUP reload", |v| {
        v["state"] == "running"
    });
    assert_eq!(s.pid("keep"), keep);
    assert_eq!(s.json(&["status"])["reloads"], 2);
    node.stop();
}

#[test]
fn tcp_needs_the_bearer_token() {
    let dir = tempfile::tempdir().unwrap();
    let token = dir.path().join("token");
    std::fs::write(&token, "s3cret-token\n").unwrap();
    std::fs::set_permissions(&token, std::fs::Permissions::from_mode(0o600)).unwrap();
    let port = free_port();
    let config = format!(
        "roles = [\"supervisor\"]\n[[supervisor.services]]\nid = \"steady\"\ncommand = \"sh\"\nargs = [\"-c\", \"while :; do sleep 1; done\"]\n[control]\nbind = \"127.0.0.1:{port}\"\ntoken_file = \"{}\"",
        token.display()
    );
    // The [control] table of the helper comes after; TOML refuses a table twice, so the
    // socket goes through the environment here.
    let path = dir.path().join("node.toml");
    std::fs::write(&path, format!("name = \"{}\"\n{config}\n", unique("tcp"))).unwrap();
    let mut cmd = troupe();
    cmd.arg("run")
        .arg("--config")
        .arg(&path)
        .env("TROUPE_CONTROL__SOCKET", dir.path().join("ctl.sock"));
    let mut proc = Proc::spawn(cmd);
    proc.wait_for(&["node ready"], START);
    let socket = dir.path().join("ctl.sock");
    let tcp = || {
        let stream = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
        stream.set_read_timeout(Some(START)).unwrap();
        stream
    };

    let running = |socket: &Path| {
        let out = ctl_at(socket, &["service", "steady", "--json"]);
        serde_json::from_slice::<Value>(&out.stdout).unwrap_or_default()
    };
    let deadline = Instant::now() + SETTLE;
    while running(&socket)["state"] != "running" {
        assert!(Instant::now() < deadline, "steady never ran");
        std::thread::sleep(Duration::from_millis(20));
    }
    let (status, body) = http(tcp(), "GET /v1/node HTTP/1.1", b"");
    assert_eq!(status, 401, "{body}");
    assert!(body.contains("unauthorized"), "{body}");
    let (status, _) = http(
        tcp(),
        "GET /v1/node HTTP/1.1\r\nAuthorization: Bearer wrong",
        b"",
    );
    assert_eq!(status, 401);
    let (status, _) = http(
        tcp(),
        "POST /v1/services/steady/stop HTTP/1.1\r\nAuthorization: Bearer s3cret-tokeN",
        b"",
    );
    assert_eq!(status, 401);
    assert_eq!(
        running(&socket)["state"],
        "running",
        "a refused request changes nothing"
    );
    let (status, body) = http(tcp(), "GET /healthz HTTP/1.1", b"");
    assert_eq!(status, 200, "health needs no token: {body}");
    let (status, body) = http(
        tcp(),
        "GET /v1/node HTTP/1.1\r\nAuthorization: Bearer s3cret-token",
        b"",
    );
    assert_eq!(status, 200, "{body}");

    // ctl over TCP with the token file.
    let mut cmd = troupe();
    cmd.arg("ctl")
        .args(["--url", &format!("http://127.0.0.1:{port}"), "--token-file"])
        .arg(&token)
        .args(["services", "--json"]);
    let out = cmd.output().unwrap();
    assert!(out.status.success(), "{}", text(&out));
    assert!(
        !proc.output().contains("s3cret-token"),
        "the token is never logged"
    );
    proc.signal(libc::SIGTERM);
    assert!(proc.wait_exit(STOP).success());

    // A token file others can read: check-config and run refuse, naming the file.
    std::fs::set_permissions(&token, std::fs::Permissions::from_mode(0o644)).unwrap();
    for command in ["check-config", "run"] {
        let mut cmd = troupe();
        cmd.arg(command).arg("--config").arg(&path);
        let out = cmd.output().unwrap();
        assert_eq!(out.status.code(), Some(2), "{command}: {}", text(&out));
        assert!(
            stderr(&out).contains("control.token_file")
                && stderr(&out).contains(&token.display().to_string()),
            "{command}: {}",
            text(&out)
        );
    }
    // `bind` without a token file is a config error.
    std::fs::write(
        &path,
        format!("roles = [\"supervisor\"]\n[control]\nbind = \"127.0.0.1:{port}\"\n"),
    )
    .unwrap();
    let mut cmd = troupe();
    cmd.arg("check-config").arg("--config").arg(&path);
    let out = cmd.output().unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(
        stderr(&out).contains("control.token_file"),
        "{}",
        text(&out)
    );
}

#[test]
fn the_broker_view_lists_its_workers() {
    let (frontend, backend, mdp, beacon) = (free_port(), free_port(), free_port(), free_port());
    let node = Node::start(
        "broker",
        &format!(
            "roles = [\"beacon\", \"broker\"]\n[beacon]\nbind = \"tcp://127.0.0.1:{beacon}\"\n[cluster]\nbeacons = [\"tcp://127.0.0.1:{beacon}\"]\n[broker]\nfrontend = \"tcp://127.0.0.1:{frontend}\"\nbackend = \"tcp://127.0.0.1:{backend}\"\n[broker.majordomo]\nbind = \"tcp://127.0.0.1:{mdp}\"\n"
        ),
    );
    // The cluster client's view: its registration and its beacon, up.
    let deadline = Instant::now() + SETTLE;
    loop {
        let cluster = node.json(&["cluster"]);
        if cluster["client"]["beacons"][0]["state"] == "up" {
            assert_eq!(
                cluster["client"]["registration"]["resource"], "beacon",
                "{cluster}"
            );
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the beacon is never up: {cluster}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(String::from_utf8_lossy(&node.ctl(&["cluster"]).stdout)
        .contains(&format!("tcp://127.0.0.1:{beacon}")));
    let mut worker = troupe();
    worker.args([
        "echo-worker",
        "--connect",
        &format!("tcp://127.0.0.1:{backend}"),
        "--concurrency",
        "3",
    ]);
    let worker = Proc::spawn(worker);
    let deadline = Instant::now() + SETTLE;
    let broker = loop {
        let broker = node.json(&["broker"]);
        if broker["services"][0]["worker_list"]
            .as_array()
            .is_some_and(|w| !w.is_empty())
        {
            break broker;
        }
        assert!(Instant::now() < deadline, "no worker listed: {broker}");
        std::thread::sleep(Duration::from_millis(50));
    };
    let listed = &broker["services"][0]["worker_list"][0];
    assert_eq!(listed["framing"], "seed", "{broker}");
    assert_eq!(listed["credit"], 3, "{broker}");
    let out = node.ctl(&["broker"]);
    let shown = String::from_utf8_lossy(&out.stdout);
    assert!(shown.contains("echo") && shown.contains("seed"), "{shown}");
    // A reload adds a Paranoid Pirate service and applies a changed log filter.
    let (front2, back2) = (free_port(), free_port());
    node.rewrite(
        "broker",
        &format!(
            "roles = [\"beacon\", \"broker\"]\nlog_level = \"debug\"\n[beacon]\nbind = \"tcp://127.0.0.1:{beacon}\"\n[cluster]\nbeacons = [\"tcp://127.0.0.1:{beacon}\"]\n[broker]\nfrontend = \"tcp://127.0.0.1:{frontend}\"\nbackend = \"tcp://127.0.0.1:{backend}\"\n[[broker.services]]\nname = \"resize\"\nfrontend = \"tcp://127.0.0.1:{front2}\"\nbackend = \"tcp://127.0.0.1:{back2}\"\n[broker.majordomo]\nbind = \"tcp://127.0.0.1:{mdp}\"\n"
        ),
    );
    let report = node.json(&["reload"]);
    assert_eq!(
        report["broker"]["added"],
        serde_json::json!(["resize"]),
        "{report}"
    );
    assert_eq!(report["log_level"]["to"], "debug", "{report}");
    let broker = node.json(&["broker"]);
    let names: Vec<&str> = broker["services"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|s| s["name"].as_str())
        .collect();
    assert!(names.contains(&"resize"), "{broker}");
    // A service whose address is taken is not added; the rest of the reload stands.
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let taken = taken.local_addr().unwrap().port();
    let back3 = free_port();
    let with_taken = std::fs::read_to_string(node.config_path()).unwrap().replace(
        "[broker.majordomo]",
        &format!("[[broker.services]]\nname = \"taken\"\nfrontend = \"tcp://127.0.0.1:{taken}\"\nbackend = \"tcp://127.0.0.1:{back3}\"\n[broker.majordomo]"),
    );
    std::fs::write(node.config_path(), with_taken).unwrap();
    let out = node.ctl(&["reload"]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert!(
        stderr(&out).contains("broker") && stderr(&out).contains(&taken.to_string()),
        "{}",
        text(&out)
    );
    let broker = node.json(&["broker"]);
    assert!(!broker.to_string().contains("\"taken\""), "{broker}");
    assert!(broker.to_string().contains("\"resize\""), "{broker}");
    // A node without the supervisor says so.
    let out = node.ctl(&["services"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stderr(&out).contains("does not run the supervisor role"),
        "{}",
        text(&out)
    );
    drop(worker);
    node.stop();
}

#[test]
fn systemd_hears_ready_reloading_watchdog_and_stopping() {
    let unit = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../configs/troupe.service"
    ))
    .unwrap();
    for line in [
        "Type=notify",
        "ExecReload=/bin/kill -HUP $MAINPID",
        "KillMode=mixed",
    ] {
        assert!(
            unit.lines().any(|l| l == line),
            "configs/troupe.service lacks {line}"
        );
    }
    let dir = tempfile::tempdir().unwrap();
    let notify = dir.path().join("notify.sock");
    let listener = UnixDatagram::bind(&notify).unwrap();
    listener.set_read_timeout(Some(START)).unwrap();
    let config = dir.path().join("node.toml");
    std::fs::write(
        &config,
        format!(
            "name = \"{}\"\nroles = [\"supervisor\"]\n[[supervisor.services]]\nid = \"late\"\ncommand = \"sh\"\nargs = [\"-c\", \"sleep 0.3; echo up; while :; do sleep 1; done\"]\nready = {{ log_line = \"^up$\" }}\n[control]\nsocket = \"{}\"\n",
            unique("notify"),
            dir.path().join("ctl.sock").display()
        ),
    )
    .unwrap();
    let mut cmd = troupe();
    cmd.arg("run")
        .arg("--config")
        .arg(&config)
        .env("NOTIFY_SOCKET", &notify)
        .env("WATCHDOG_USEC", "1000000");
    let mut proc = Proc::spawn(cmd);
    let next = |wanted: &str| loop {
        let mut buf = [0u8; 256];
        let n = listener
            .recv(&mut buf)
            .unwrap_or_else(|e| panic!("no {wanted}: {e}"));
        let got = String::from_utf8_lossy(&buf[..n]).into_owned();
        if got == wanted {
            return;
        }
        assert_eq!(got, "WATCHDOG=1", "expected {wanted}");
    };
    next("READY=1");
    // READY only once the service with a readiness check is ready.
    let out = ctl_at(&dir.path().join("ctl.sock"), &["service", "late", "--json"]);
    let late: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(late["state"], "ready", "{late}");
    next("WATCHDOG=1");
    proc.signal(libc::SIGHUP);
    next("RELOADING=1");
    next("READY=1");
    proc.signal(libc::SIGTERM);
    next("STOPPING=1");
    assert!(proc.wait_exit(STOP).success());
    assert!(
        !proc.output().contains("cannot notify"),
        "{}",
        proc.output()
    );
}

#[test]
fn ctl_names_the_socket_it_tried_and_finds_nodes_by_name() {
    let out = ctl_at(Path::new("/nonexistent/troupe.ctl"), &["status"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stderr(&out).contains("/nonexistent/troupe.ctl") && stderr(&out).contains("troupe run"),
        "{}",
        text(&out)
    );
    let mut usage = troupe();
    usage.args(["ctl", "restart"]);
    assert_eq!(usage.output().unwrap().status.code(), Some(2));

    // --node NAME finds the socket the node took by default, in the same runtime folder.
    let runtime = troupe_tests::runtime_dir();
    let name = unique("byname");
    let mut cmd = troupe();
    cmd.args(["run", "--roles", "supervisor", "--name", &name])
        .env("XDG_RUNTIME_DIR", &runtime);
    let mut proc = Proc::spawn(cmd);
    proc.wait_for(&["node ready"], START);
    let mut cmd = troupe();
    cmd.args(["ctl", "--node", &name, "status", "--json"])
        .env("XDG_RUNTIME_DIR", &runtime);
    let out = cmd.output().unwrap();
    assert!(out.status.success(), "{}", text(&out));
    let status: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(status["name"], name);
    // A second node of that name does not steal the live socket.
    let mut cmd = troupe();
    cmd.args(["run", "--roles", "supervisor", "--name", &name])
        .env("XDG_RUNTIME_DIR", &runtime);
    let out = cmd.output().unwrap();
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert!(stderr(&out).contains("control socket"), "{}", text(&out));
    proc.signal(libc::SIGTERM);
    assert!(proc.wait_exit(STOP).success());
    assert!(
        !runtime.join(format!("troupe-{name}.ctl")).exists(),
        "the socket is removed"
    );
}

#[test]
fn a_service_that_uses_its_plan_up_fails_alone_and_ctl_start_revives_it() {
    let node = Node::start(
        "exhaust",
        r#"
roles = ["supervisor"]

[[supervisor.services]]
id = "broken"
command = "sh"
args = ["-c", "exit 3"]
plan = ["restart"]
count = 2
period = "60s"
min_restart_interval = "0s"

[[supervisor.services]]
id = "steady"
command = "sh"
args = ["-c", "while :; do sleep 1; done"]
"#,
    );
    let steady = node.until("steady", "running", |v| v["state"] == "running");
    let failed = node.until("broken", "failed", |v| v["state"] == "failed");
    let failure = failed["failure"].as_str().unwrap_or_default();
    assert!(
        failure.contains("exhausted its restart plan") && failure.contains("exit status 3"),
        "{failed}"
    );
    assert_eq!(
        node.service("steady")["pid"],
        steady["pid"],
        "the other service is untouched"
    );
    assert!(
        node.ctl(&["status"]).status.success(),
        "the node keeps running"
    );
    let out = node.ctl(&["start", "broken"]);
    assert!(out.status.success(), "{}", text(&out));
    node.until("broken", "failed again after a fresh plan", |v| {
        v["state"] == "failed" && v["generation"].as_u64() > failed["generation"].as_u64()
    });
    node.stop();
}

/// Starts a node from `config` with its control API on the Unix socket `DIR/NAME.ctl` and on
/// TCP `port`, guarded by `token` (both given through the environment, since `config` may
/// hold a `[control]` table of its own).
fn start_tcp_node(dir: &Path, name: &str, config: &str, port: u16, token: &Path) -> Proc {
    let path = dir.join(format!("{name}.toml"));
    std::fs::write(&path, format!("name = \"{name}\"\n{config}\n")).unwrap();
    let mut cmd = troupe();
    cmd.arg("run")
        .arg("--config")
        .arg(&path)
        .env("TROUPE_CONTROL__SOCKET", dir.join(format!("{name}.ctl")))
        .env("TROUPE_CONTROL__BIND", format!("127.0.0.1:{port}"))
        .env("TROUPE_CONTROL__TOKEN_FILE", token);
    let mut proc = Proc::spawn(cmd);
    proc.wait_for(&["node ready"], START);
    proc
}

fn token_file(dir: &Path) -> PathBuf {
    let token = dir.join("token");
    std::fs::write(&token, "cluster-token\n").unwrap();
    std::fs::set_permissions(&token, std::fs::Permissions::from_mode(0o600)).unwrap();
    token
}

fn tcp_get(port: u16, path: &str) -> (u16, Value) {
    let stream = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
    stream.set_read_timeout(Some(START)).unwrap();
    let (status, body) = http(stream, &format!("GET {path} HTTP/1.1"), b"");
    (status, serde_json::from_str(&body).unwrap_or(Value::Null))
}

#[test]
fn health_and_readiness_answer_without_the_token() {
    let dir = tempfile::tempdir().unwrap();
    let token = token_file(dir.path());
    let flag = dir.path().join("ready-now");
    let port = free_port();
    let config = format!(
        "roles = [\"supervisor\"]\n[[supervisor.services]]\nid = \"gate\"\ncommand = \"sleep\"\nargs = [\"1000\"]\nready = {{ exec = [\"test\", \"-e\", \"{}\"] }}\nstart_timeout_ms = 60000\n",
        flag.display()
    );
    let mut node = start_tcp_node(dir.path(), &unique("health"), &config, port, &token);

    let (status, body) = tcp_get(port, "/readyz");
    assert_eq!(status, 503, "a readiness check is pending: {body}");
    assert!(body.to_string().contains("service gate"), "{body}");
    let (status, body) = tcp_get(port, "/healthz");
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["status"], "ok");
    assert_eq!(
        tcp_get(port, "/v1/node").0,
        401,
        "the API still needs the token"
    );

    std::fs::write(&flag, "").unwrap();
    let deadline = Instant::now() + SETTLE;
    loop {
        let (status, body) = tcp_get(port, "/readyz");
        if status == 200 {
            assert_eq!(body["status"], "ready");
            break;
        }
        assert!(Instant::now() < deadline, "never ready: {body}");
        std::thread::sleep(Duration::from_millis(20));
    }
    assert_eq!(tcp_get(port, "/healthz").0, 200);
    node.signal(libc::SIGTERM);
    assert!(node.wait_exit(STOP).success());
}

#[test]
fn ctl_cluster_status_asks_every_node_and_names_the_silent_one() {
    let dir = tempfile::tempdir().unwrap();
    let token = token_file(dir.path());
    let beacon = free_port();
    let cluster = format!(
        "[cluster]\nbeacons = [\"tcp://127.0.0.1:{beacon}\"]\nheartbeat_interval = \"1s\"\n"
    );
    let names: Vec<String> = ["hub", "one", "two"]
        .iter()
        .map(|n| unique(&format!("cl-{n}")))
        .collect();
    let hub = start_tcp_node(
        dir.path(),
        &names[0],
        &format!("roles = [\"beacon\"]\n[beacon]\nbind = \"tcp://127.0.0.1:{beacon}\"\n{cluster}"),
        free_port(),
        &token,
    );
    let services = "roles = [\"supervisor\"]\n[[supervisor.services]]\nid = \"a\"\ncommand = \"sleep\"\nargs = [\"1000\"]\n[[supervisor.services]]\nid = \"b\"\ncommand = \"sleep\"\nargs = [\"1000\"]\n";
    let one = start_tcp_node(
        dir.path(),
        &names[1],
        &format!("{services}{cluster}"),
        free_port(),
        &token,
    );
    let two = start_tcp_node(
        dir.path(),
        &names[2],
        &format!("{services}{cluster}"),
        free_port(),
        &token,
    );
    let ask = |timeout: &str| {
        let mut cmd = troupe();
        cmd.args(["ctl", "--cluster", "status", "--json", "--timeout", timeout])
            .args(["--beacon", &format!("tcp://127.0.0.1:{beacon}")])
            .arg("--token-file")
            .arg(&token);
        let out = cmd.output().unwrap();
        let rows: Value = serde_json::from_slice(&out.stdout).unwrap_or(Value::Null);
        (out.status.code(), rows, text(&out))
    };
    let row = |rows: &Value, name: &str| {
        rows.as_array()
            .and_then(|rows| rows.iter().find(|r| r["node"] == name).cloned())
    };
    // Every node registers its control endpoint once it is ready.
    let deadline = Instant::now() + SETTLE;
    let rows = loop {
        let (code, rows, shown) = ask("5s");
        let all = names.iter().all(|n| row(&rows, n).is_some());
        let up = row(&rows, &names[1]).is_some_and(|r| r["services_up"] == 2);
        if code == Some(0) && all && up {
            break rows;
        }
        assert!(Instant::now() < deadline, "not every node listed: {shown}");
        std::thread::sleep(Duration::from_millis(50));
    };
    let hub_row = row(&rows, &names[0]).unwrap();
    assert_eq!(hub_row["roles"], serde_json::json!(["beacon"]), "{rows}");
    assert_eq!(hub_row["services_total"], Value::Null, "{rows}");
    let one_row = row(&rows, &names[1]).unwrap();
    assert_eq!(one_row["services_total"], 2, "{rows}");

    // A node that stops answering (SIGSTOP: its port still accepts) is named within --timeout,
    // while its registration still stands.
    two.signal(libc::SIGSTOP);
    let asked = Instant::now();
    let (code, rows, shown) = ask("1s");
    two.signal(libc::SIGCONT);
    assert_eq!(code, Some(1), "{shown}");
    let silent = row(&rows, &names[2]).unwrap_or_else(|| panic!("{shown}"));
    assert!(
        silent["error"]
            .as_str()
            .is_some_and(|e| e.contains("within 1s")),
        "{shown}"
    );
    assert_eq!(
        row(&rows, &names[1]).unwrap()["error"],
        Value::Null,
        "{shown}"
    );
    assert!(asked.elapsed() < Duration::from_secs(5), "{shown}");

    // The table for people.
    let mut cmd = troupe();
    cmd.args(["ctl", "--cluster", "status"])
        .args(["--beacon", &format!("tcp://127.0.0.1:{beacon}")])
        .arg("--token-file")
        .arg(&token);
    let out = cmd.output().unwrap();
    let table = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(table.contains("SERVICES UP"), "{}", text(&out));
    assert!(table.contains("2/2"), "{}", text(&out));
    for mut node in [two, one, hub] {
        node.signal(libc::SIGTERM);
        node.wait_exit(STOP);
    }
}
