//! The broker actor as the control API uses it, over real loopback sockets: `GetStats` (the
//! operator's view of services and workers) and `UpdateServices` (services added and removed
//! while the broker runs, their clients answered rather than left in silence).
//!
//! The role runs in an actix System on a thread of its own; the test drives it from outside,
//! as another role's thread would, and blocks only its own thread.

use std::sync::mpsc;
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use actix::prelude::*;
use troupe_broker::client::{ClientError, ClientOptions, PirateClient};
use troupe_broker::config::{BrokerConfig, ServiceConfig};
use troupe_broker::socket_loop::BoundEndpoints;
use troupe_broker::worker::{Worker, WorkerOptions};
use troupe_broker::{
    BrokerActor, BrokerError, BrokerRole, BrokerStats, GetEndpoints, GetStats, ServiceSnapshot,
    ServicesUpdate, UpdateServices,
};
use troupe_core::context::Published;
use troupe_core::{NodeControl, Role, RoleContext};

const DEADLINE: Duration = Duration::from_secs(20);

/// A broker role running in its own actix System.
struct Node {
    actor: Addr<BrokerActor>,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<JoinHandle<()>>,
}

impl Node {
    fn start(config: BrokerConfig) -> Node {
        let (addr_tx, addr_rx) = mpsc::channel();
        let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
        let thread = std::thread::spawn(move || {
            System::new().block_on(async move {
                let (control, _requests) = NodeControl::channel();
                let ctx = RoleContext {
                    node: Arc::from("test-node"),
                    role: "broker",
                    roles: Arc::from(vec!["broker".to_string()]),
                    config: Arc::new(serde_json::Value::Null),
                    published: Published::default(),
                    control,
                };
                let role = BrokerRole::start(config, ctx.clone())
                    .await
                    .expect("the broker starts");
                let actor = ctx.published.lookup::<Addr<BrokerActor>>().unwrap();
                addr_tx.send(actor).unwrap();
                let _ = stop_rx.await;
                role.stop().await;
            });
        });
        let actor = addr_rx.recv_timeout(DEADLINE).expect("the broker starts");
        Node {
            actor,
            stop: Some(stop_tx),
            thread: Some(thread),
        }
    }

    fn ask<M>(&self, message: M) -> M::Result
    where
        M: Message + Send + 'static,
        M::Result: Send,
        BrokerActor: Handler<M>,
    {
        futures::executor::block_on(self.actor.send(message)).expect("the actor answers")
    }

    fn stats(&self) -> BrokerStats {
        self.ask(GetStats).expect("the broker answers")
    }

    fn update(&self, config: &BrokerConfig, dry_run: bool) -> Result<ServicesUpdate, BrokerError> {
        self.ask(UpdateServices {
            config: config.clone(),
            dry_run,
        })
    }

    /// Polls the counters until `check` holds for service `name`, up to [`DEADLINE`].
    fn wait_for(&self, name: &str, what: &str, check: impl Fn(&ServiceSnapshot) -> bool) {
        let deadline = Instant::now() + DEADLINE;
        loop {
            let now = self.stats();
            if now.services.iter().any(|s| s.name == name && check(s)) {
                return;
            }
            assert!(Instant::now() < deadline, "{what}: {now:#?}");
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

fn base_config() -> BrokerConfig {
    let config: BrokerConfig = toml::from_str(
        r#"
        frontend = "tcp://127.0.0.1:*"
        backend = "tcp://127.0.0.1:*"
        heartbeat_interval = "100ms"
        liveness = 10
        request_timeout = "30s"
        drain_timeout = "200ms"
        linger = "100ms"
        majordomo.bind = "tcp://127.0.0.1:*"
        "#,
    )
    .unwrap();
    config.validate().unwrap();
    config
}

fn with_resize(mut config: BrokerConfig, backend: &str) -> BrokerConfig {
    config.services.push(ServiceConfig {
        name: "resize".into(),
        frontend: Some("tcp://127.0.0.1:*".parse().unwrap()),
        backend: Some(backend.parse().unwrap()),
        ..Default::default()
    });
    config
}

/// A Paranoid Pirate worker that says READY, heartbeats, and never replies.
struct SilentWorker {
    stop: Arc<std::sync::atomic::AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl SilentWorker {
    fn connect(endpoint: &str) -> SilentWorker {
        let endpoint = endpoint.to_string();
        let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let stopping = stop.clone();
        let thread = std::thread::spawn(move || {
            let context = zmq::Context::new();
            let socket = context.socket(zmq::DEALER).unwrap();
            socket.set_linger(0).unwrap();
            socket.set_identity(b"silent").unwrap();
            socket.connect(&endpoint).unwrap();
            socket.send(&b"\x01"[..], 0).unwrap();
            while !stopping.load(std::sync::atomic::Ordering::Relaxed) {
                // Reads (and ignores) what arrives; heartbeats every 100 ms.
                if socket.poll(zmq::POLLIN, 100).unwrap_or(0) > 0 {
                    let _ = socket.recv_multipart(0);
                } else {
                    socket.send(&b"\x02"[..], zmq::DONTWAIT).ok();
                }
            }
        });
        SilentWorker {
            stop,
            thread: Some(thread),
        }
    }
}

impl Drop for SilentWorker {
    fn drop(&mut self) {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

fn endpoints_of(node: &Node, name: &str) -> (String, String) {
    let bound: BoundEndpoints = node.ask(GetEndpoints);
    bound
        .services
        .iter()
        .find(|s| s.name == name)
        .map(|s| (s.frontend.clone(), s.backend.clone()))
        .unwrap_or_else(|| panic!("{name} is not bound: {bound:?}"))
}

#[test]
fn a_service_added_live_serves_and_a_removed_one_answers_its_clients() {
    let node = Node::start(base_config());
    let running = base_config();
    let wanted = with_resize(running.clone(), "tcp://127.0.0.1:*");

    // A dry run reports and changes nothing.
    let report = node.update(&wanted, true).unwrap();
    assert_eq!(report.added, ["resize"]);
    assert_eq!(report.unchanged, ["echo"]);
    assert!(report.needs_restart.is_empty());
    assert_eq!(node.stats().services.len(), 1);

    let report = node.update(&wanted, false).unwrap();
    assert_eq!(report.added, ["resize"]);
    let (frontend, backend) = endpoints_of(&node, "resize");
    let resize = node
        .stats()
        .services
        .into_iter()
        .find(|s| s.name == "resize")
        .unwrap();
    assert_eq!(resize.kind, "pirate");
    assert_eq!(resize.frontend.as_deref(), Some(frontend.as_str()));
    assert_eq!(resize.backend.as_deref(), Some(backend.as_str()));

    // A seed-framed worker with concurrency 2 on the new backend: listed with its framing
    // and credit, and it answers a client of the new frontend.
    let options = WorkerOptions {
        concurrency: 2,
        heartbeat_interval: Duration::from_millis(100),
        liveness: 10,
        ..WorkerOptions::new(backend.clone())
    };
    let (worker, stop) = Worker::new(options).unwrap();
    let running_worker = std::thread::spawn(move || {
        worker.run(Arc::new(|mut body: Vec<Vec<u8>>| {
            body.push(b"resized".to_vec());
            body
        }))
    });
    node.wait_for("resize", "the worker is listed", |s| {
        s.worker_list.len() == 1
    });
    let listed = node
        .stats()
        .services
        .into_iter()
        .find(|s| s.name == "resize")
        .unwrap();
    let w = &listed.worker_list[0];
    assert_eq!((w.framing, w.credit, w.held), ("seed", 2, 0), "{w:?}");
    assert!(w.last_heard_ms_ago < DEADLINE.as_millis() as u64);
    let json = serde_json::to_value(&listed).unwrap();
    assert_eq!(json["worker_list"][0]["framing"], "seed");
    assert_eq!(json["worker_list"][0]["credit"], 2);

    let timing = ClientOptions {
        timeout: DEADLINE,
        retries: 0,
    };
    let mut client = PirateClient::new(frontend.clone(), timing);
    assert_eq!(
        client.request(vec![b"cat.png".to_vec()]).unwrap(),
        [b"cat.png".to_vec(), b"resized".to_vec()]
    );
    stop.stop();
    running_worker.join().unwrap().unwrap();
    node.wait_for("resize", "the seed worker leaves", |s| s.workers == 0);

    // A worker that holds a request without answering, and a second client waiting behind
    // it: removing the service answers both.
    let silent = SilentWorker::connect(&backend);
    node.wait_for("resize", "the silent worker is listed", |s| {
        s.worker_list
            .iter()
            .any(|w| w.identity == "silent" && w.framing == "pirate" && w.credit == 1)
    });
    let clients: Vec<_> = ["held", "queued"]
        .into_iter()
        .map(|body| {
            let frontend = frontend.clone();
            std::thread::spawn(move || {
                PirateClient::new(frontend, timing).request(vec![body.as_bytes().to_vec()])
            })
        })
        .collect();
    node.wait_for("resize", "one request held, one waiting", |s| {
        s.held == 1 && s.waiting == 1
    });
    let report = node.update(&running, false).unwrap();
    assert_eq!(report.removed, ["resize"]);
    assert_eq!(report.unchanged, ["echo"]);
    for client in clients {
        match client.join().unwrap() {
            Err(ClientError::Broker { code, message }) => {
                assert_eq!(code, 503);
                assert!(message.starts_with("resize: "), "{message}");
            }
            other => panic!("expected an error reply, got {other:?}"),
        }
    }
    drop(silent);
    let after = node.stats();
    assert_eq!(after.services.len(), 1, "{after:#?}");
    let bound: BoundEndpoints = node.ask(GetEndpoints);
    assert_eq!(bound.services.len(), 1);
}

#[test]
fn an_update_that_cannot_bind_changes_nothing() {
    let node = Node::start(base_config());
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = taken.local_addr().unwrap().port();
    let wanted = with_resize(base_config(), &format!("tcp://127.0.0.1:{port}"));
    match node.update(&wanted, false) {
        Err(BrokerError::ServiceBind {
            service,
            socket,
            endpoint,
            ..
        }) => {
            assert_eq!((service.as_str(), socket), ("resize", "backend"));
            assert_eq!(endpoint, format!("tcp://127.0.0.1:{port}"));
        }
        other => panic!("expected a bind error, got {other:?}"),
    }
    assert_eq!(node.stats().services.len(), 1);
    let bound: BoundEndpoints = node.ask(GetEndpoints);
    assert_eq!(bound.services.len(), 1);

    // An invalid table is refused with its key; keys a restart needs are reported only.
    let mut invalid = base_config();
    invalid.liveness = 0;
    match node.update(&invalid, false) {
        Err(BrokerError::Config(err)) => assert_eq!(err.key, "broker.liveness"),
        other => panic!("expected a config error, got {other:?}"),
    }
    let mut slower = base_config();
    slower.heartbeat_interval = "1s".parse().unwrap();
    let report = node.update(&slower, false).unwrap();
    assert_eq!(report.needs_restart, ["broker.heartbeat_interval"]);
    assert_eq!(report.unchanged, ["echo"]);
    drop(taken);
}

#[test]
fn a_service_whose_frontend_moves_keeps_its_backend_and_its_workers() {
    let node = Node::start(base_config());
    let first = with_resize(base_config(), "tcp://127.0.0.1:*");
    node.update(&first, false).unwrap();
    let (old_frontend, backend) = endpoints_of(&node, "resize");
    let silent = SilentWorker::connect(&backend);
    node.wait_for("resize", "the worker is listed", |s| s.workers == 1);

    let mut moved = first.clone();
    moved.services[0].frontend = Some("tcp://127.0.0.2:*".parse().unwrap());
    let report = node.update(&moved, false).unwrap();
    assert_eq!(report.changed, ["resize"]);
    let (new_frontend, same_backend) = endpoints_of(&node, "resize");
    assert_ne!(new_frontend, old_frontend);
    assert_eq!(same_backend, backend, "the backend socket is kept");
    // The worker was forgotten with the old service, and is known again from its next
    // heartbeat on the same connection.
    node.wait_for("resize", "the worker rejoins", |s| {
        s.worker_list.iter().any(|w| w.identity == "silent")
    });
    drop(silent);
}
