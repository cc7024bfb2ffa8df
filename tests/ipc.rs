//! Integration tests of the `ipc` role, running real `troupe` processes: the hub's socket
//! file, Python clients speaking the documented protocol, pid spoofing, mailboxes, ordering
//! with many sender processes, and config errors.

use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::UnixListener;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use troupe_ipc::client::{Client, Incoming};
use troupe_tests::{run_to_end, troupe, Proc};

const START: Duration = Duration::from_secs(30);
const STOP: Duration = Duration::from_secs(15);
const WAIT: Duration = Duration::from_secs(20);

fn unique_name(tag: &str) -> String {
    format!("ipc-{tag}-{}", std::process::id())
}

/// A node running only the ipc role on `socket`, with `env` on top.
fn ipc_node(tag: &str, socket: &Path, env: &[(&str, &str)]) -> Proc {
    let mut cmd = troupe();
    cmd.args(["run", "--name", &unique_name(tag), "--roles", "ipc"])
        .env("TROUPE_IPC__SOCKET", socket);
    for (key, value) in env {
        cmd.env(key, value);
    }
    Proc::spawn(cmd)
}

fn python(script: &str) -> Command {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("python")
        .join(script);
    let mut cmd = Command::new("python3");
    cmd.arg(path);
    cmd
}

fn socket_in(dir: &tempfile::TempDir) -> PathBuf {
    dir.path().join("hub.sock")
}

#[test]
fn serves_python_and_rust_clients_on_a_private_socket_removed_at_sigterm() {
    let dir = tempfile::tempdir().unwrap();
    let socket = socket_in(&dir);
    let mut node = ipc_node("serve", &socket, &[]);
    node.wait_for(&["ipc hub listening", "mode=\"0600\""], START);
    let mode = std::fs::metadata(&socket).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600);

    let mut echo = python("ipc_peer.py");
    echo.args(["echo", "--name", "py-echo", "--socket"])
        .arg(&socket);
    let mut echo = Proc::spawn(echo);
    echo.wait_for(&["ready"], WAIT);

    let mut rust = Client::connect(&socket).unwrap();
    rust.register(Some("rust")).unwrap();
    let reply = rust.request("py-echo", b"ping", WAIT).unwrap();
    assert_eq!(reply, b"ping");
    rust.send("py-echo", b"a message").unwrap();
    echo.wait_for(&["message", &rust.pid().to_string(), "a message"], WAIT);
    // Queued one after another, these go as one Batch frame.
    for body in ["first of three", "second of three", "third of three"] {
        rust.queue("py-echo", body.as_bytes());
    }
    rust.flush().unwrap();
    for body in ["first of three", "second of three", "third of three"] {
        echo.wait_for(&["message", &rust.pid().to_string(), body], WAIT);
    }

    // A frame per message, then batches of two from the Python client.
    for batch in ["1", "2"] {
        let mut sender = python("ipc_peer.py");
        sender
            .args(["send", "--to", "rust", "--count", "3", "--batch", batch])
            .args(["--tag", "py", "--socket"])
            .arg(&socket);
        let mut sender = Proc::spawn(sender);
        for i in 0..3 {
            match rust.recv_timeout(WAIT).unwrap() {
                Some(Incoming::Message(m)) => {
                    assert_eq!(m.body, format!("py:{i}").as_bytes(), "batch {batch}");
                    assert_eq!(m.from, sender.pid());
                }
                other => panic!("{other:?}"),
            }
        }
        sender.wait_exit(WAIT);
    }

    node.signal(libc::SIGTERM);
    assert_eq!(node.wait_exit(STOP).code(), Some(0), "{}", node.output());
    assert!(!socket.exists(), "socket file left behind");
    echo.wait_for(&["hub closed"], WAIT);
    assert!(node.printed(&["ipc socket removed"]));
}

#[test]
fn a_live_nodes_socket_is_never_taken_and_a_stale_one_is_replaced() {
    let dir = tempfile::tempdir().unwrap();
    let socket = socket_in(&dir);
    let mut first = ipc_node("live", &socket, &[]);
    first.wait_for(&["node ready"], START);

    let mut second = troupe();
    second
        .args(["run", "--name", &unique_name("thief"), "--roles", "ipc"])
        .env("TROUPE_IPC__SOCKET", &socket);
    let (status, output) = run_to_end(second, START);
    assert_eq!(status.code(), Some(1), "{output}");
    assert!(output.contains("another node"), "{output}");
    let mut client = Client::connect(&socket).unwrap();
    client.register(None).unwrap();

    // SIGKILL leaves the socket file behind: stale.
    first.signal(libc::SIGKILL);
    first.wait_exit(STOP);
    assert!(socket.exists());
    let mut third = ipc_node("after", &socket, &[]);
    third.wait_for(&["node ready"], START);
    assert!(
        third.printed(&["replacing a stale socket file"]),
        "{}",
        third.output()
    );
    let mut client = Client::connect(&socket).unwrap();
    client.register(Some("after")).unwrap();

    // A socket some other program listens on is not taken either.
    let other = dir.path().join("other.sock");
    let _listener = UnixListener::bind(&other).unwrap();
    let mut fourth = troupe();
    fourth
        .args(["run", "--name", &unique_name("other"), "--roles", "ipc"])
        .env("TROUPE_IPC__SOCKET", &other);
    let (status, output) = run_to_end(fourth, START);
    assert_eq!(status.code(), Some(1), "{output}");
    assert!(output.contains("a live node is listening"), "{output}");
}

#[test]
fn a_process_cannot_register_as_another() {
    let dir = tempfile::tempdir().unwrap();
    let socket = socket_in(&dir);
    let mut node = ipc_node("spoof", &socket, &[]);
    node.wait_for(&["node ready"], START);
    let mut spoof = python("ipc_peer.py");
    spoof
        .args(["spoof", "--claim", "1", "--socket"])
        .arg(&socket);
    let mut spoof = Proc::spawn(spoof);
    let line = spoof.wait_for(&["refused"], WAIT);
    assert!(line.contains("PidMismatch"), "{line}");
    assert!(line.contains("pid 1 is not yours"), "{line}");
    spoof.wait_for(&["closed"], WAIT);
    node.wait_for(
        &["refused a registration under another process's pid"],
        WAIT,
    );
}

#[test]
fn an_absent_receivers_mailbox_reports_overflow_and_expiry_to_the_sender() {
    let dir = tempfile::tempdir().unwrap();
    let socket = socket_in(&dir);
    let ttl_ms = 300;
    let mut node = ipc_node(
        "mailbox",
        &socket,
        &[
            ("TROUPE_IPC__MAILBOX_TTL", &format!("{ttl_ms}ms")),
            ("TROUPE_IPC__MAILBOX_MAX_MESSAGES", "2"),
        ],
    );
    node.wait_for(&["node ready"], START);
    let linger = (Duration::from_millis(ttl_ms) + WAIT)
        .as_secs_f64()
        .to_string();
    // A frame per message, then batches of two: either way each message is reported.
    for batch in ["1", "2"] {
        let mut sender = python("ipc_peer.py");
        sender
            .args(["send", "--to", "nobody", "--count", "4", "--batch", batch])
            .args(["--linger", &linger, "--socket"])
            .arg(&socket);
        let mut sender = Proc::spawn(sender);
        for seq in ["seq=2", "seq=3"] {
            let full = sender.wait_for(&["error MailboxFull"], WAIT);
            assert!(
                full.contains(seq) && full.contains("to=nobody"),
                "batch {batch}: {full}"
            );
            assert!(full.contains("mailbox_max_messages"), "{full}");
        }
        let first = sender.wait_for(&["error Expired"], WAIT);
        assert!(
            first.contains("seq=0") && first.contains("mailbox_ttl"),
            "batch {batch}: {first}"
        );
        let second = sender.wait_for(&["error Expired"], WAIT);
        assert!(second.contains("seq=1"), "batch {batch}: {second}");
    }
}

#[test]
fn many_sender_processes_each_arrive_in_order() {
    const SENDERS: usize = 6;
    const MESSAGES: usize = 400;
    let dir = tempfile::tempdir().unwrap();
    let socket = socket_in(&dir);
    let mut node = ipc_node("order", &socket, &[]);
    node.wait_for(&["node ready"], START);
    let mut sink = Client::connect(&socket).unwrap();
    sink.register(Some("sink")).unwrap();
    let senders: Vec<Proc> = (0..SENDERS)
        .map(|s| {
            let mut cmd = python("ipc_peer.py");
            cmd.args(["send", "--to", "sink", "--count", &MESSAGES.to_string()])
                .args(["--tag", &s.to_string(), "--size", "64", "--socket"])
                .arg(&socket);
            Proc::spawn(cmd)
        })
        .collect();
    let mut next = [0usize; SENDERS];
    for _ in 0..SENDERS * MESSAGES {
        let body = match sink.recv_timeout(WAIT).unwrap() {
            Some(Incoming::Message(m)) => m.body,
            other => panic!("{other:?}"),
        };
        let text = String::from_utf8(body).unwrap();
        let (s, rest) = text.split_once(':').unwrap();
        let i: usize = rest.trim_end_matches('.').parse().unwrap();
        let s: usize = s.parse().unwrap();
        assert_eq!(i, next[s], "sender {s} out of order");
        next[s] += 1;
    }
    assert_eq!(next, [MESSAGES; SENDERS]);
    for mut sender in senders {
        sender.wait_exit(WAIT);
    }
}

#[test]
fn bad_ipc_settings_exit_2_naming_the_key() {
    for (key, value, needle) in [
        ("TROUPE_IPC__MAILBOX_TTL", "0s", "`ipc.mailbox_ttl`"),
        (
            "TROUPE_IPC__MAX_FRAME_BYTES",
            "lots",
            "`ipc.max_frame_bytes`",
        ),
        (
            "TROUPE_IPC__MAILBOX_MAX_BYTES",
            "1KiB",
            "`ipc.mailbox_max_bytes`",
        ),
    ] {
        let mut cmd = troupe();
        cmd.args(["run", "--roles", "ipc"]).env(key, value);
        let (status, output) = run_to_end(cmd, STOP);
        assert_eq!(status.code(), Some(2), "{key}={value}: {output}");
        assert!(output.contains(needle), "{key}={value}: {output}");
    }
}

/// Waits (bounded, polling) until some line printed so far has every needle.
fn wait_printed(node: &Proc, needles: &[&str], timeout: Duration) {
    let deadline = std::time::Instant::now() + timeout;
    while !node.printed(needles) {
        assert!(
            std::time::Instant::now() < deadline,
            "no line with {needles:?} within {timeout:?}:\n{}",
            node.output()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// The value of `key=` in a log line.
fn field(line: &str, key: &str) -> String {
    let at = line
        .find(&format!(" {key}="))
        .unwrap_or_else(|| panic!("no {key}= in {line}"));
    line[at + key.len() + 2..]
        .split_whitespace()
        .next()
        .unwrap()
        .trim_matches('"')
        .to_string()
}

#[test]
fn a_supervised_service_attaches_its_channel_and_reattaches_after_a_kill() {
    let dir = tempfile::tempdir().unwrap();
    let socket = socket_in(&dir);
    let state = dir.path().join("state");
    // A config the service acknowledged in an earlier life, where the supervisor keeps it.
    std::fs::create_dir_all(state.join("svc-e2e")).unwrap();
    std::fs::write(state.join("svc-e2e").join("config.json"), r#"{"level":2}"#).unwrap();
    let script = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("python/ipc_service.py");
    let config = format!(
        r#"name = "{name}"
roles = ["ipc", "supervisor"]
shutdown_timeout = "10s"
[ipc]
socket = "{socket}"
[supervisor]
state_dir = "{state}"
[[supervisor.services]]
id = "svc-e2e"
command = "python3"
args = ["{script}"]
plan = [{{ restart_after_ms = 100 }}]
count = "infinity"
"#,
        name = unique_name("supervised"),
        socket = socket.display(),
        state = state.display(),
        script = script.display(),
    );
    let file = dir.path().join("node.toml");
    std::fs::write(&file, config).unwrap();
    let mut cmd = troupe();
    cmd.arg("run").arg("--config").arg(&file);
    let mut node = Proc::spawn(cmd);

    let attached = node.wait_for(&["attached svc-e2e", "service=svc-e2e"], START);
    let first_pid: i32 = field(&attached, "pid").parse().unwrap();
    for needles in [
        &[
            "service channel attached",
            "service=svc-e2e",
            &format!("pid={first_pid}"),
        ][..],
        &["stored-config", r#"{"level":2}"#],
        &[
            "service metric",
            "service=svc-e2e",
            "device=dev-1",
            "data=21.5",
        ],
        &["service event", "service=svc-e2e", "event_type=7"],
    ] {
        wait_printed(&node, needles, WAIT);
    }

    // Killed: the supervisor restarts it and the new process attaches the channel again.
    // SAFETY: kill(2) on the service process this node started.
    unsafe {
        libc::kill(first_pid, libc::SIGKILL);
    }
    let again = node.wait_for(&["attached svc-e2e", "service=svc-e2e"], START);
    let second_pid: i32 = field(&again, "pid").parse().unwrap();
    assert_ne!(first_pid, second_pid);
    let pid = format!("pid={second_pid}");
    wait_printed(
        &node,
        &["service channel attached", "service=svc-e2e", &pid],
        WAIT,
    );
    assert!(node.printed(&["service channel detached", "service=svc-e2e"]));

    node.signal(libc::SIGTERM);
    assert_eq!(node.wait_exit(STOP).code(), Some(0), "{}", node.output());
    assert!(!socket.exists());
}

/// A node with the real ipc and supervisor roles, in this process so that the test can use
/// the supervisor's API (`push_config`, `invoke`), which a node does not expose outside its
/// process yet. The service is a real process the supervisor runs, kills are real signals.
#[test]
fn push_config_and_invoke_through_the_supervisor_reach_a_service_that_dies_and_returns() {
    use troupe_core::services::{ChannelError, Invoke, PushConfig};
    use troupe_node::compose::{NodePlan, RunningNode};
    use troupe_supervisor::messages::GetPid;
    use troupe_supervisor::Supervisor;

    let dir = tempfile::tempdir().unwrap();
    let socket = socket_in(&dir);
    let state = dir.path().join("state");
    let script = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("python/ipc_service.py");
    let file = dir.path().join("node.toml");
    std::fs::write(
        &file,
        format!(
            r#"name = "{name}"
roles = ["ipc", "supervisor"]
[ipc]
socket = "{socket}"
[supervisor]
state_dir = "{state}"
[[supervisor.services]]
id = "svc-api"
command = "python3"
args = ["{script}"]
plan = [{{ restart_after_ms = 100 }}]
count = "infinity"
"#,
            name = unique_name("api"),
            socket = socket.display(),
            state = state.display(),
            script = script.display(),
        ),
    )
    .unwrap();
    let settings = troupe_node::settings::load(
        &troupe_node::roles::known_roles(),
        Some(&file),
        Vec::new(),
        &troupe_node::settings::Overrides::default(),
    )
    .map_err(|e| e.to_string())
    .unwrap();

    actix_rt::System::new().block_on(async move {
        let (control, requests) = troupe_core::NodeControl::channel();
        let mut signals = troupe_node::signals::Signals::new().unwrap();
        let plan = NodePlan::from_settings(settings, "test");
        let mut node = RunningNode::start(plan, control, requests, &mut signals)
            .await
            .map_err(|e| e.message)
            .unwrap();
        let supervisor = node
            .published
            .lookup::<actix::Addr<Supervisor>>()
            .expect("the supervisor publishes its address");
        let invoke = |payload: &[u8], timeout: Duration| Invoke {
            service: "svc-api".into(),
            payload: payload.to_vec(),
            timeout,
        };

        // Until the service has attached, calls fail at once; then it answers.
        let deadline = std::time::Instant::now() + WAIT;
        let first_pid = loop {
            match supervisor.send(invoke(b"pid", WAIT)).await.unwrap() {
                Ok(pid) => break String::from_utf8(pid).unwrap(),
                Err(ChannelError::NotAlive) => {
                    assert!(std::time::Instant::now() < deadline, "never attached");
                    actix_rt::time::sleep(Duration::from_millis(20)).await;
                }
                Err(other) => panic!("{other}"),
            }
        };
        let running = supervisor
            .send(GetPid("svc-api".into()))
            .await
            .unwrap()
            .unwrap();
        assert_eq!(first_pid, running.to_string());

        // push_config: refused is not persisted; acknowledged is, as the service's config.json.
        let config_path = state.join("svc-api").join("config.json");
        let push = |config: serde_json::Value| PushConfig {
            service: "svc-api".into(),
            config,
            timeout: WAIT,
        };
        let refused = supervisor
            .send(push(serde_json::json!({"reject": 1})))
            .await
            .unwrap();
        assert!(
            matches!(refused, Err(ChannelError::Refused(_))),
            "{refused:?}"
        );
        assert!(!config_path.exists());
        supervisor
            .send(push(serde_json::json!({"rate": 5})))
            .await
            .unwrap()
            .unwrap();
        let saved: serde_json::Value =
            serde_json::from_slice(&std::fs::read(&config_path).unwrap()).unwrap();
        assert_eq!(saved, serde_json::json!({"rate": 5}));
        let echoed = supervisor
            .send(invoke(b"hello", WAIT))
            .await
            .unwrap()
            .unwrap();
        assert_eq!(echoed, b"echo:hello");

        // Killed mid-invoke: the caller gets an error at once, not at its 60 s timeout.
        let pending = supervisor.send(invoke(b"hang", Duration::from_secs(60)));
        let caller = actix_rt::spawn(async move {
            let since = std::time::Instant::now();
            (pending.await.unwrap(), since.elapsed())
        });
        let hub = node
            .published
            .lookup::<actix::Addr<troupe_ipc::HubActor>>()
            .expect("the hub publishes its address");
        let deadline = std::time::Instant::now() + WAIT;
        while hub
            .send(troupe_ipc::GetStats)
            .await
            .unwrap()
            .calls_in_flight
            == 0
        {
            assert!(
                std::time::Instant::now() < deadline,
                "the invoke never reached the hub"
            );
            actix_rt::time::sleep(Duration::from_millis(10)).await;
        }
        // SAFETY: kill(2) on the service process the supervisor started.
        unsafe {
            libc::kill(running as i32, libc::SIGKILL);
        }
        let (result, took) = caller.await.unwrap();
        assert!(result.is_err(), "{result:?}");
        assert!(took < Duration::from_secs(30), "the caller waited {took:?}");

        // The restarted process attaches again and reads back the persisted config.
        let deadline = std::time::Instant::now() + WAIT;
        let second_pid = loop {
            match supervisor.send(invoke(b"pid", WAIT)).await.unwrap() {
                Ok(pid) if String::from_utf8_lossy(&pid) != first_pid => {
                    break String::from_utf8(pid).unwrap()
                }
                Ok(_) | Err(ChannelError::NotAlive) => {
                    assert!(std::time::Instant::now() < deadline, "never re-attached");
                    actix_rt::time::sleep(Duration::from_millis(20)).await;
                }
                Err(other) => panic!("{other}"),
            }
        };
        let restarted = supervisor
            .send(GetPid("svc-api".into()))
            .await
            .unwrap()
            .unwrap();
        assert_eq!(second_pid, restarted.to_string());
        let config = supervisor
            .send(invoke(b"config", WAIT))
            .await
            .unwrap()
            .unwrap();
        let config: serde_json::Value = serde_json::from_slice(&config).unwrap();
        assert_eq!(config, serde_json::json!({"rate": 5}));

        node.stop().await;
    });
    assert!(!socket.exists());
}
