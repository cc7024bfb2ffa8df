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

    let mut sender = python("ipc_peer.py");
    sender
        .args([
            "send", "--to", "rust", "--count", "3", "--tag", "py", "--socket",
        ])
        .arg(&socket);
    let mut sender = Proc::spawn(sender);
    for i in 0..3 {
        match rust.recv_timeout(WAIT).unwrap() {
            Some(Incoming::Message(m)) => {
                assert_eq!(m.body, format!("py:{i}").as_bytes());
                assert_eq!(m.from, sender.pid());
            }
            other => panic!("{other:?}"),
        }
    }
    sender.wait_exit(WAIT);

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
    let mut sender = python("ipc_peer.py");
    sender
        .args([
            "send", "--to", "nobody", "--count", "3", "--linger", &linger, "--socket",
        ])
        .arg(&socket);
    let mut sender = Proc::spawn(sender);
    let full = sender.wait_for(&["error MailboxFull"], WAIT);
    assert!(
        full.contains("seq=2") && full.contains("to=nobody"),
        "{full}"
    );
    assert!(full.contains("mailbox_max_messages"), "{full}");
    let first = sender.wait_for(&["error Expired"], WAIT);
    assert!(
        first.contains("seq=0") && first.contains("mailbox_ttl"),
        "{first}"
    );
    let second = sender.wait_for(&["error Expired"], WAIT);
    assert!(second.contains("seq=1"), "{second}");
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
