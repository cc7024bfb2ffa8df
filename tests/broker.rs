//! Integration tests of the `broker` role, running real `troupe` processes with real sockets
//! and signals: Python programs written from the protocols alone (Paranoid Pirate worker, Lazy
//! Pirate client, seed-framed worker, Majordomo worker and client), `troupe echo-worker`,
//! `troupe call`, lost workers, timeouts, a full queue and the drain on SIGTERM.
//!
//! Every node gets its own free ports and name; heartbeats are short (200 ms × liveness 5), and
//! every "within" bound is computed from those values plus a margin for a busy machine.

use std::io::Write;
use std::path::PathBuf;
use std::process::Command;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use troupe_broker::client::{ClientError, ClientOptions, MajordomoClient, PirateClient};
use troupe_tests::{free_port, run_to_end, troupe, Proc};

const START: Duration = Duration::from_secs(30);
const STOP: Duration = Duration::from_secs(20);
const HEARTBEAT: Duration = Duration::from_millis(200);
const LIVENESS: u32 = 5;
/// Slack for a machine shared with other builds and tests.
const MARGIN: Duration = Duration::from_secs(3);

/// A broker node on free ports, with its config file.
struct Broker {
    node: Proc,
    frontend: String,
    backend: String,
    majordomo: String,
    config: tempfile::NamedTempFile,
}

/// Starts a node running only the broker; `extra` goes into its `[broker]` table.
fn start_broker(tag: &str, extra: &str) -> Broker {
    let (f, b, m) = (free_port(), free_port(), free_port());
    let defaults: String = [("request_timeout", "\"10s\""), ("drain_timeout", "\"5s\"")]
        .iter()
        .filter(|(key, _)| !extra.contains(key))
        .map(|(key, value)| format!("{key} = {value}\n"))
        .collect();
    let text = format!(
        r#"
roles = ["broker"]
shutdown_timeout = "15s"
[broker]
frontend = "tcp://127.0.0.1:{f}"
backend = "tcp://127.0.0.1:{b}"
heartbeat_interval = "{hb}ms"
liveness = {LIVENESS}
{defaults}
{extra}
[broker.majordomo]
bind = "tcp://127.0.0.1:{m}"
"#,
        hb = HEARTBEAT.as_millis()
    );
    let mut config = tempfile::Builder::new().suffix(".toml").tempfile().unwrap();
    config.write_all(text.as_bytes()).unwrap();
    let mut cmd = troupe();
    cmd.arg("run")
        .arg("--config")
        .arg(config.path())
        .args(["--name", &format!("broker-{tag}-{}", std::process::id())]);
    let mut node = Proc::spawn(cmd);
    node.wait_for(&["node ready"], START);
    Broker {
        node,
        frontend: format!("tcp://127.0.0.1:{f}"),
        backend: format!("tcp://127.0.0.1:{b}"),
        majordomo: format!("tcp://127.0.0.1:{m}"),
        config,
    }
}

fn python(program: &str, args: &[&str]) -> Proc {
    let path: PathBuf = [env!("CARGO_MANIFEST_DIR"), "python", program]
        .iter()
        .collect();
    let mut cmd = Command::new("python3");
    cmd.arg("-u").arg(path).args(args);
    Proc::spawn(cmd)
}

/// `troupe echo-worker` connected to `backend` with the tests' heartbeat, plus `args`.
fn echo_worker(backend: &str, args: &[&str]) -> Proc {
    let mut cmd = troupe();
    cmd.args(["echo-worker", "--connect", backend, "--log-level", "debug"])
        .args([
            "--heartbeat-interval",
            &format!("{}ms", HEARTBEAT.as_millis()),
        ])
        .args(["--liveness", &LIVENESS.to_string()])
        .args(args);
    Proc::spawn(cmd)
}

fn options(timeout: Duration) -> ClientOptions {
    ClientOptions {
        timeout,
        retries: 0,
    }
}

/// A request's result and how long it took.
type Outcome = (Result<Vec<Vec<u8>>, ClientError>, Duration);

/// One request on a Lazy Pirate client in a thread; joins to the outcome and its duration.
fn request_in_thread(endpoint: &str, body: &str, timeout: Duration) -> JoinHandle<Outcome> {
    let endpoint = endpoint.to_string();
    let body = body.as_bytes().to_vec();
    std::thread::spawn(move || {
        let since = Instant::now();
        let mut client = PirateClient::new(endpoint, options(timeout));
        let result = client.request(vec![body]);
        (result, since.elapsed())
    })
}

fn broker_error(result: &Result<Vec<Vec<u8>>, ClientError>) -> (u16, String) {
    match result {
        Err(ClientError::Broker { code, message }) => (*code, message.clone()),
        other => panic!("expected an error reply, got {other:?}"),
    }
}

/// Waits until a Python worker has received `count` more heartbeats from the broker.
fn wait_for_heartbeats(worker: &mut Proc, count: u32) {
    for _ in 0..count {
        worker.wait_for(&["heartbeat from the broker"], START);
    }
}

fn stop_node(broker: &mut Broker) {
    broker.node.signal(libc::SIGTERM);
    let status = broker.node.wait_exit(STOP);
    assert_eq!(status.code(), Some(0), "{}", broker.node.output());
}

#[test]
fn a_python_pirate_worker_and_lazy_pirate_client_work_unchanged() {
    let mut broker = start_broker("ppp", "");
    let interval = HEARTBEAT.as_millis().to_string();
    let mut worker = python(
        "broker_ppp_worker.py",
        &[
            &broker.backend,
            &interval,
            &LIVENESS.to_string(),
            "--tag",
            "py",
        ],
    );
    broker
        .node
        .wait_for(&["worker ready", "service=echo", "framing=Pirate"], START);
    let mut client = python(
        "broker_lazy_pirate.py",
        &[
            &broker.frontend,
            "20",
            "5000",
            "2",
            "--expect-prefix",
            "py:",
        ],
    );
    let status = client.wait_exit(START);
    assert!(status.success(), "client:\n{}", client.output());
    // Heartbeats keep flowing both ways for two liveness windows without a reconnect, and
    // nothing the broker sent was rejected by the standard worker.
    wait_for_heartbeats(&mut worker, LIVENESS * 2);
    assert!(!worker.printed(&["INVALID"]), "{}", worker.output());
    assert!(!worker.printed(&["reconnecting"]), "{}", worker.output());
    // The same worker serves Majordomo clients of the service by name.
    let mut mdp = MajordomoClient::new(broker.majordomo.clone(), options(START));
    let reply = mdp.request("echo", vec![b"by name".to_vec()]).unwrap();
    assert_eq!(reply, [b"py:by name".to_vec()]);
    assert!(!worker.printed(&["INVALID"]), "{}", worker.output());
    stop_node(&mut broker);
}

#[test]
fn malformed_messages_on_every_socket_are_dropped_and_the_broker_keeps_serving() {
    let mut broker = start_broker("malformed", "");
    let mut worker = echo_worker(&broker.backend, &["--framing", "pirate"]);
    broker
        .node
        .wait_for(&["worker ready", "framing=Pirate"], START);
    let context = zmq::Context::new();
    for endpoint in [&broker.frontend, &broker.backend, &broker.majordomo] {
        let socket = context.socket(zmq::DEALER).unwrap();
        socket.set_linger(1000).unwrap();
        socket.connect(endpoint).unwrap();
        for garbage in [
            vec![b"no delimiter".to_vec()],
            vec![b"\x77".to_vec()],
            vec![Vec::new()],
            vec![b"MDPW01".to_vec(), b"\x09".to_vec()],
            (0..200).map(|i| vec![i as u8]).collect(),
        ] {
            socket.send_multipart(garbage, 0).unwrap();
        }
    }
    broker.node.wait_for(&["dropped malformed messages"], START);
    let mut client = PirateClient::new(broker.frontend.clone(), options(START));
    assert_eq!(
        client.request(vec![b"still here".to_vec()]).unwrap(),
        [b"still here".to_vec()]
    );
    worker.signal(libc::SIGTERM);
    assert!(worker.wait_exit(STOP).success());
    stop_node(&mut broker);
}

#[test]
fn a_seed_framed_worker_is_answered_in_its_framing() {
    let mut broker = start_broker("seed", "");
    let interval = HEARTBEAT.as_millis().to_string();
    let mut worker = python("broker_seed_worker.py", &[&broker.backend, &interval, "3"]);
    broker
        .node
        .wait_for(&["worker ready", "framing=Seed", "concurrency=3"], START);
    let mut client = python(
        "broker_lazy_pirate.py",
        &[
            &broker.frontend,
            "10",
            "5000",
            "0",
            "--expect-prefix",
            "seed:",
        ],
    );
    assert!(client.wait_exit(START).success(), "{}", client.output());
    wait_for_heartbeats(&mut worker, 3);
    assert!(!worker.printed(&["INVALID"]), "{}", worker.output());
    worker.signal(libc::SIGTERM);
    worker.wait_exit(STOP);
    stop_node(&mut broker);
}

#[test]
fn stop_from_a_worker_holding_a_request_fails_it_at_once() {
    let mut broker = start_broker("stop", "");
    let interval = HEARTBEAT.as_millis().to_string();
    let mut worker = python("broker_seed_worker.py", &[&broker.backend, &interval, "1"]);
    broker.node.wait_for(&["worker ready"], START);
    let since = Instant::now();
    let mut client = PirateClient::new(broker.frontend.clone(), options(START));
    let result = client.request(vec![b"stop".to_vec()]);
    let (code, message) = broker_error(&result);
    assert_eq!(code, 502, "{message}");
    assert!(message.starts_with("echo: "), "{message}");
    assert!(message.contains("left"), "{message}");
    // At once: well before the liveness window would have noticed a silent worker.
    assert!(
        since.elapsed() < HEARTBEAT * LIVENESS + MARGIN,
        "took {:?}",
        since.elapsed()
    );
    assert!(worker.wait_exit(STOP).success(), "{}", worker.output());
    broker
        .node
        .wait_for(&["worker left; removed", "held=1"], START);
    stop_node(&mut broker);
}

#[test]
fn a_python_majordomo_worker_and_client_work_unchanged() {
    let mut broker = start_broker("mdp", "");
    let interval = HEARTBEAT.as_millis().to_string();
    let mut worker = python(
        "broker_mdp_worker.py",
        &[
            &broker.majordomo,
            "weather",
            &interval,
            &LIVENESS.to_string(),
        ],
    );
    broker.node.wait_for(
        &["worker ready", "service=weather", "framing=Majordomo"],
        START,
    );
    let mut client = python(
        "broker_mdp_client.py",
        &[
            &broker.majordomo,
            "10000",
            "weather",
            "paris",
            "weather",
            "oslo",
            "mmi.service",
            "weather",
            "mmi.service",
            "nothing",
            "mmi.other",
            "x",
        ],
    );
    assert!(client.wait_exit(START).success(), "{}", client.output());
    for line in [
        "weather -> weather:paris",
        "weather -> weather:oslo",
        "mmi.service -> 200",
        "mmi.service -> 404",
        "mmi.other -> 501",
    ] {
        assert!(
            client.printed(&[line]),
            "{line} missing:\n{}",
            client.output()
        );
    }
    // Two liveness windows pass with heartbeats only: the worker stays registered.
    wait_for_heartbeats(&mut worker, LIVENESS * 2);
    assert!(!worker.printed(&["reconnecting"]), "{}", worker.output());
    assert!(!worker.printed(&["INVALID"]), "{}", worker.output());
    let mut mdp = MajordomoClient::new(broker.majordomo.clone(), options(START));
    assert_eq!(
        mdp.request("weather", vec![b"rome".to_vec()]).unwrap(),
        [b"weather:rome".to_vec()]
    );
    stop_node(&mut broker);
    // At shutdown the broker tells Majordomo workers to disconnect.
    worker.wait_for(&["disconnected by the broker"], STOP);
}

#[test]
fn troupe_call_prints_the_reply_of_an_echo_worker() {
    let mut broker = start_broker("call", "");
    let mut worker = echo_worker(&broker.backend, &["--concurrency", "4"]);
    broker
        .node
        .wait_for(&["worker ready", "concurrency=4"], START);
    let mut call = troupe();
    call.args(["call", "echo", "hello", "--endpoint", &broker.majordomo]);
    let (status, output) = run_to_end(call, START);
    assert!(status.success(), "{output}");
    assert_eq!(output.trim(), "hello");

    let mut call = troupe();
    call.args([
        "call",
        "mmi.service",
        "echo",
        "--endpoint",
        &broker.majordomo,
    ]);
    let (status, output) = run_to_end(call, START);
    assert!(status.success(), "{output}");
    assert_eq!(output.trim(), "200");

    // No such broker: a clear message and exit 1.
    let mut call = troupe();
    call.args(["call", "echo", "x", "--timeout", "300ms"])
        .args(["--endpoint", &format!("tcp://127.0.0.1:{}", free_port())]);
    let (status, output) = run_to_end(call, START);
    assert_eq!(status.code(), Some(1), "{output}");
    assert!(
        output.contains("no reply from tcp://127.0.0.1:"),
        "{output}"
    );

    // A graceful worker exit: STOP, so the broker removes it at once.
    worker.signal(libc::SIGTERM);
    assert!(worker.wait_exit(STOP).success(), "{}", worker.output());
    broker.node.wait_for(&["worker left; removed"], START);
    stop_node(&mut broker);
}

#[test]
fn a_worker_killed_mid_request_fails_the_request_within_the_liveness_window() {
    let mut broker = start_broker("killed", "");
    let mut worker = echo_worker(&broker.backend, &["--delay", "60s"]);
    broker.node.wait_for(&["worker ready"], START);
    let pending = request_in_thread(&broker.frontend, "doomed", START);
    worker.wait_for(&["request received"], START);
    let killed_at = Instant::now();
    worker.signal(libc::SIGKILL);
    let (result, _) = pending.join().unwrap();
    let elapsed = killed_at.elapsed();
    let (code, message) = broker_error(&result);
    assert_eq!(code, 502, "{message}");
    // Noticed by the liveness window at the latest (one more interval for the purge tick).
    let bound = HEARTBEAT * (LIVENESS + 1) + MARGIN;
    assert!(elapsed < bound, "error after {elapsed:?}, bound {bound:?}");
    stop_node(&mut broker);
}

#[test]
fn with_retry_on_worker_loss_the_request_goes_to_another_worker() {
    let mut broker = start_broker("retry", "retry_on_worker_loss = true");
    let mut slow = echo_worker(&broker.backend, &["--delay", "60s"]);
    broker.node.wait_for(&["worker ready"], START);
    let pending = request_in_thread(&broker.frontend, "survivor", START);
    slow.wait_for(&["request received"], START);
    let mut fast = echo_worker(&broker.backend, &[]);
    broker.node.wait_for(&["worker ready", "workers=2"], START);
    slow.signal(libc::SIGKILL);
    let (result, _) = pending.join().unwrap();
    assert_eq!(result.unwrap(), [b"survivor".to_vec()]);
    fast.wait_for(&["request received"], STOP);
    stop_node(&mut broker);
}

#[test]
fn without_a_worker_a_request_gets_an_error_after_the_request_timeout() {
    let timeout = Duration::from_millis(800);
    let mut broker = start_broker(
        "timeout",
        &format!("request_timeout = \"{}ms\"", timeout.as_millis()),
    );
    let (result, elapsed) = request_in_thread(&broker.frontend, "anyone?", START)
        .join()
        .unwrap();
    let (code, message) = broker_error(&result);
    assert_eq!(code, 504, "{message}");
    assert_eq!(message, "echo: no worker took the request within 800ms");
    assert!(
        elapsed >= timeout,
        "answered after {elapsed:?}, before the timeout"
    );
    // Deadlines are checked at the latest at each heartbeat.
    assert!(
        elapsed < timeout + HEARTBEAT + MARGIN,
        "answered after {elapsed:?}"
    );
    stop_node(&mut broker);
}

#[test]
fn a_full_queue_refuses_at_once_naming_the_service() {
    let mut broker = start_broker(
        "full",
        "service = \"resize\"\nqueue_limit = 2\nrequest_timeout = \"30s\"",
    );
    let context = zmq::Context::new();
    let client = context.socket(zmq::DEALER).unwrap();
    client.set_linger(0).unwrap();
    client.connect(&broker.frontend).unwrap();
    for body in ["a", "b", "c"] {
        client
            .send_multipart([&b""[..], body.as_bytes()], 0)
            .unwrap();
    }
    // Two wait; the third is answered at once. One connection keeps the order.
    let mut items = [client.as_poll_item(zmq::POLLIN)];
    zmq::poll(&mut items, (HEARTBEAT * 10 + MARGIN).as_millis() as i64).unwrap();
    assert!(
        items[0].is_readable(),
        "no refusal:\n{}",
        broker.node.output()
    );
    let reply = client.recv_multipart(0).unwrap();
    assert_eq!(reply.len(), 2, "{reply:?}");
    let text = String::from_utf8(reply[1].clone()).unwrap();
    assert_eq!(
        text,
        "TROUPE-ERROR 503 resize: no worker available and 2 requests are already waiting"
    );
    stop_node(&mut broker);
}

#[test]
fn sigterm_lets_requests_in_flight_finish_and_refuses_new_ones() {
    let mut broker = start_broker("drain", "");
    let delay = Duration::from_millis(1500);
    let mut worker = echo_worker(
        &broker.backend,
        &[
            "--concurrency",
            "4",
            "--delay",
            &format!("{}ms", delay.as_millis()),
        ],
    );
    broker.node.wait_for(&["worker ready"], START);
    let in_flight: Vec<_> = (0..4)
        .map(|i| request_in_thread(&broker.frontend, &format!("in-flight-{i}"), START))
        .collect();
    for _ in 0..4 {
        worker.wait_for(&["request received"], START);
    }
    let signalled = Instant::now();
    broker.node.signal(libc::SIGTERM);
    broker
        .node
        .wait_for(&["draining: new requests are refused", "held=4"], START);
    let (late, _) = request_in_thread(&broker.frontend, "too late", START)
        .join()
        .unwrap();
    let (code, message) = broker_error(&late);
    assert_eq!(
        (code, message.as_str()),
        (503, "echo: the broker is shutting down")
    );
    for (i, request) in in_flight.into_iter().enumerate() {
        let (result, _) = request.join().unwrap();
        assert_eq!(result.unwrap(), [format!("in-flight-{i}").into_bytes()]);
    }
    let status = broker.node.wait_exit(STOP);
    assert_eq!(status.code(), Some(0), "{}", broker.node.output());
    // The drain ended when the last reply went out, not at the end of its 5 s window.
    assert!(
        signalled.elapsed() < delay + MARGIN,
        "stopped after {:?}",
        signalled.elapsed()
    );
    assert!(broker.node.printed(&["broker service totals", "replies=4"]));
}

#[test]
fn the_drain_window_fails_requests_that_do_not_finish() {
    let drain = Duration::from_millis(1000);
    let mut broker = start_broker(
        "drain-window",
        &format!("drain_timeout = \"{}ms\"", drain.as_millis()),
    );
    let mut worker = echo_worker(&broker.backend, &["--delay", "60s"]);
    broker.node.wait_for(&["worker ready"], START);
    let pending = request_in_thread(&broker.frontend, "too slow", START);
    worker.wait_for(&["request received"], START);
    let signalled = Instant::now();
    broker.node.signal(libc::SIGTERM);
    let (result, _) = pending.join().unwrap();
    let (code, message) = broker_error(&result);
    assert_eq!(
        (code, message.as_str()),
        (503, "echo: the broker stopped before the request completed")
    );
    assert!(
        signalled.elapsed() >= drain,
        "failed before the window ended"
    );
    assert_eq!(broker.node.wait_exit(STOP).code(), Some(0));
    assert!(
        signalled.elapsed() < drain + MARGIN,
        "took {:?}",
        signalled.elapsed()
    );
}

#[test]
fn config_mistakes_exit_2_naming_the_key() {
    for (env, value, expected) in [
        (
            "TROUPE_BROKER__LIVENESS",
            "0",
            "`broker.liveness`: must be at least 1",
        ),
        (
            "TROUPE_BROKER__FRONTEND",
            "127.0.0.1:1",
            "`broker.frontend`",
        ),
        ("TROUPE_BROKER__QUEUE_LIMT", "3", "queue_limt"),
        ("TROUPE_BROKER__SERVICE", "mmi.x", "`broker.service`"),
    ] {
        let mut cmd = troupe();
        cmd.args(["check-config", "--roles", "broker"])
            .env(env, value);
        let (status, output) = run_to_end(cmd, STOP);
        assert_eq!(status.code(), Some(2), "{env}: {output}");
        assert!(output.contains(expected), "{env}: {output}");
    }
}

#[test]
fn an_address_in_use_fails_the_start_naming_the_key() {
    let mut first = start_broker("in-use", "");
    let mut cmd = troupe();
    cmd.args(["run", "--roles", "broker", "--name", "in-use-2"])
        .env(
            "TROUPE_BROKER__FRONTEND",
            format!("tcp://127.0.0.1:{}", free_port()),
        )
        .env("TROUPE_BROKER__BACKEND", &first.backend)
        .env("TROUPE_BROKER__MAJORDOMO__ENABLED", "false");
    let (status, output) = run_to_end(cmd, START);
    // Refused before anything starts, as check-config refuses it.
    assert_eq!(status.code(), Some(2), "{output}");
    assert!(output.contains("`broker.backend`"), "{output}");
    assert!(output.contains("already in use"), "{output}");
    stop_node(&mut first);
}

#[test]
fn a_worker_rejoins_a_broker_that_restarted() {
    let mut broker = start_broker("restart", "");
    let mut worker = echo_worker(&broker.backend, &[]);
    broker.node.wait_for(&["worker ready"], START);
    let config = broker.config.path().to_path_buf();
    broker.node.signal(libc::SIGKILL);
    broker.node.wait_exit(STOP);
    // Silent for its liveness window, the worker reconnects with a new socket (and backs off
    // while nobody answers).
    worker.wait_for(&["broker silent; reconnecting"], START);
    let mut cmd = troupe();
    cmd.arg("run")
        .arg("--config")
        .arg(&config)
        .args(["--name", &format!("broker-restart2-{}", std::process::id())]);
    let mut restarted = Proc::spawn(cmd);
    restarted.wait_for(&["node ready"], START);
    restarted.wait_for(&["worker ready"], START);
    let mut client = PirateClient::new(broker.frontend.clone(), options(START));
    assert_eq!(
        client.request(vec![b"again".to_vec()]).unwrap(),
        [b"again".to_vec()]
    );
    restarted.signal(libc::SIGTERM);
    assert_eq!(
        restarted.wait_exit(STOP).code(),
        Some(0),
        "{}",
        restarted.output()
    );
}

#[test]
fn extra_services_have_their_own_sockets_and_are_reachable_by_name() {
    let (front, back) = (free_port(), free_port());
    let mut broker = start_broker(
        "services",
        &format!(
            "[[broker.services]]\nname = \"resize\"\nfrontend = \"tcp://127.0.0.1:{front}\"\nbackend = \"tcp://127.0.0.1:{back}\"\n"
        ),
    );
    assert!(broker
        .node
        .printed(&["broker service listening", "service=resize"]));
    let _echo = echo_worker(&broker.backend, &[]);
    let _resize = echo_worker(&format!("tcp://127.0.0.1:{back}"), &["--concurrency", "2"]);
    broker
        .node
        .wait_for(&["worker ready", "service=resize"], START);
    if !broker.node.printed(&["worker ready", "service=echo"]) {
        broker
            .node
            .wait_for(&["worker ready", "service=echo"], START);
    }
    let mut resize = PirateClient::new(format!("tcp://127.0.0.1:{front}"), options(START));
    assert_eq!(
        resize.request(vec![b"big".to_vec()]).unwrap(),
        [b"big".to_vec()]
    );
    let mut mdp = MajordomoClient::new(broker.majordomo.clone(), options(START));
    assert_eq!(
        mdp.request("resize", vec![b"r".to_vec()]).unwrap(),
        [b"r".to_vec()]
    );
    assert_eq!(
        mdp.request("echo", vec![b"e".to_vec()]).unwrap(),
        [b"e".to_vec()]
    );
    assert_eq!(
        mdp.request("mmi.service", vec![b"resize".to_vec()])
            .unwrap(),
        [b"200".to_vec()]
    );
    stop_node(&mut broker);
}

#[test]
fn a_supervised_echo_worker_answers_troupe_call() {
    // The layout of the default node (configs/single.toml), on free ports: the supervisor
    // keeps `troupe echo-worker` running behind the broker.
    let (f, b, m) = (free_port(), free_port(), free_port());
    let state = tempfile::tempdir().unwrap();
    let text = format!(
        r#"
roles = ["supervisor", "broker"]
shutdown_timeout = "10s"
[supervisor]
state_dir = "{state}"
[[supervisor.services]]
id = "echo"
command = "${{TROUPE_EXE}}"
args = ["echo-worker", "--connect", "tcp://127.0.0.1:{b}", "--concurrency", "4"]
terminate_timeout_ms = 3000
[broker]
frontend = "tcp://127.0.0.1:{f}"
backend = "tcp://127.0.0.1:{b}"
[broker.majordomo]
bind = "tcp://127.0.0.1:{m}"
"#,
        state = state.path().display()
    );
    let mut config = tempfile::Builder::new().suffix(".toml").tempfile().unwrap();
    config.write_all(text.as_bytes()).unwrap();
    let mut cmd = troupe();
    cmd.arg("run").arg("--config").arg(config.path()).args([
        "--name",
        &format!("broker-supervised-{}", std::process::id()),
    ]);
    let mut node = Proc::spawn(cmd);
    node.wait_for(&["node ready"], START);
    node.wait_for(&["worker ready", "service=echo", "concurrency=4"], START);
    let mut call = troupe();
    call.args([
        "call",
        "echo",
        "hello",
        "--endpoint",
        &format!("tcp://127.0.0.1:{m}"),
    ]);
    let (status, output) = run_to_end(call, START);
    assert!(status.success(), "{output}");
    assert_eq!(output.trim(), "hello");
    node.signal(libc::SIGTERM);
    assert_eq!(node.wait_exit(STOP).code(), Some(0), "{}", node.output());
}

/// The endpoints of the online nodes offering `broker`, as `troupe cluster lookup` reports
/// them, by node name.
fn broker_lookup(beacon: &str) -> Vec<(String, serde_json::Value)> {
    let mut cmd = troupe();
    cmd.args(["cluster", "lookup", "broker", "--json", "--beacon", beacon]);
    let (status, output) = run_to_end(cmd, START);
    assert!(status.success(), "{output}");
    let json_line = output
        .lines()
        .find(|l| l.starts_with('{'))
        .unwrap_or_else(|| panic!("no JSON in {output}"));
    let answer: serde_json::Value = serde_json::from_str(json_line).unwrap();
    answer["nodes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|n| {
            (
                n["name"].as_str().unwrap().to_string(),
                n["endpoints"].clone(),
            )
        })
        .collect()
}

/// Asks the beacon until `check` holds for the broker node's endpoints (`Null` when the node
/// is not offered), up to [`START`].
fn wait_for_lookup(
    beacon: &str,
    node: &str,
    what: &str,
    check: impl Fn(&serde_json::Value) -> bool,
) {
    let deadline = Instant::now() + START;
    loop {
        let nodes = broker_lookup(beacon);
        let endpoints = nodes
            .iter()
            .find(|(name, _)| name == node)
            .map(|(_, e)| e.clone())
            .unwrap_or(serde_json::Value::Null);
        if check(&endpoints) {
            return;
        }
        assert!(Instant::now() < deadline, "{what}: {nodes:?}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn the_broker_registers_with_the_beacon_and_deregisters_before_draining() {
    let beacon_port = free_port();
    let beacon_at = format!("tcp://127.0.0.1:{beacon_port}");
    let mut beacon_config = tempfile::Builder::new().suffix(".toml").tempfile().unwrap();
    write!(
        beacon_config,
        "roles = [\"beacon\"]\n[beacon]\nbind = \"{beacon_at}\"\n"
    )
    .unwrap();
    let mut cmd = troupe();
    cmd.arg("run")
        .arg("--config")
        .arg(beacon_config.path())
        .args([
            "--name",
            &format!("beacon-for-broker-{}", std::process::id()),
        ]);
    let mut beacon = Proc::spawn(cmd);
    beacon.wait_for(&["node ready"], START);

    let mut broker = start_broker(
        "registered",
        &format!(
            "drain_timeout = \"10s\"\n[cluster]\nbeacons = [\"{beacon_at}\"]\nresource = \"broker\"\n"
        ),
    );
    let node = format!("broker-registered-{}", std::process::id());
    assert!(
        broker
            .node
            .printed(&["broker endpoints registered with the cluster"]),
        "{}",
        broker.node.output()
    );
    let (frontend, backend, majordomo) = (
        broker.frontend.clone(),
        broker.backend.clone(),
        broker.majordomo.clone(),
    );
    wait_for_lookup(&beacon_at, &node, "the broker's endpoints", |e| {
        e["echo.frontend"] == frontend.as_str()
            && e["echo.backend"] == backend.as_str()
            && e["majordomo"] == majordomo.as_str()
    });

    // A request in flight, then SIGTERM: the endpoints are withdrawn first, and the request
    // still completes during the drain.
    let mut worker = echo_worker(&broker.backend, &["--delay", "5s"]);
    broker.node.wait_for(&["worker ready"], START);
    let pending = request_in_thread(&broker.frontend, "last one", START);
    worker.wait_for(&["request received"], START);
    broker.node.signal(libc::SIGTERM);
    broker
        .node
        .wait_for(&["broker endpoints removed from the cluster"], START);
    // The node itself is still registered (draining), without the broker's endpoints.
    wait_for_lookup(&beacon_at, &node, "the endpoints withdrawn", |e| {
        e.is_object() && e.get("echo.frontend").is_none() && e.get("majordomo").is_none()
    });
    let (result, _) = pending.join().unwrap();
    assert_eq!(result.unwrap(), [b"last one".to_vec()]);
    assert_eq!(
        broker.node.wait_exit(STOP).code(),
        Some(0),
        "{}",
        broker.node.output()
    );
    beacon.signal(libc::SIGTERM);
    assert_eq!(beacon.wait_exit(STOP).code(), Some(0));
}
