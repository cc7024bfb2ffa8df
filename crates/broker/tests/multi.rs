//! Several brokers at once, over real loopback sockets: a worker set following changes to its
//! set of brokers, a Majordomo client whose broker goes away while it holds a request, and the
//! broker role failing a supervised process's requests over the moment the supervisor
//! reports its exit.
//!
//! Every wait is on an event with a deadline; nothing sleeps a fixed time to let things
//! happen.

use std::collections::BTreeSet;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc, Arc};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use actix::prelude::*;
use troupe_broker::client::{ClientError, ClientOptions, MultiMajordomoClient, PirateClient};
use troupe_broker::config::BrokerConfig;
use troupe_broker::socket_loop::{self, BoundEndpoints, BrokerHandle};
use troupe_broker::worker::{WorkerFraming, WorkerOptions};
use troupe_broker::worker_set::WorkerSet;
use troupe_broker::{BrokerActor, BrokerRole, BrokerStats, GetEndpoints, GetStats};
use troupe_core::context::Published;
use troupe_core::services::{
    worker_identity, AttachBroker, BrokerWorkers, BrokerWorkersAnswer, ServiceLifecycle,
    SubscribeLifecycle, SupervisorLink,
};
use troupe_core::{NodeControl, Role, RoleContext};

const DEADLINE: Duration = Duration::from_secs(20);

fn config(heartbeat: &str, liveness: u32) -> BrokerConfig {
    let config: BrokerConfig = toml::from_str(&format!(
        r#"
        frontend = "tcp://127.0.0.1:*"
        backend = "tcp://127.0.0.1:*"
        heartbeat_interval = "{heartbeat}"
        liveness = {liveness}
        request_timeout = "30s"
        drain_timeout = "200ms"
        linger = "100ms"
        majordomo.bind = "tcp://127.0.0.1:*"
        "#
    ))
    .unwrap();
    config.validate().unwrap();
    config
}

/// A broker's socket loop, drained when dropped.
struct Broker {
    handle: BrokerHandle,
    bound: BoundEndpoints,
}

impl Broker {
    fn start() -> Broker {
        let (handle, bound) =
            socket_loop::start_blocking(config("100ms", 10), tracing::Span::none()).unwrap();
        Broker { handle, bound }
    }

    fn backend(&self) -> String {
        self.bound.services[0].backend.clone()
    }

    fn frontend(&self) -> String {
        self.bound.services[0].frontend.clone()
    }

    fn majordomo(&self) -> String {
        self.bound.majordomo.clone().unwrap()
    }

    fn stats(&self) -> BrokerStats {
        futures::executor::block_on(self.handle.stats()).expect("the broker answers")
    }

    /// Polls the counters until `check` holds, up to [`DEADLINE`].
    fn wait_until(&self, what: &str, check: impl Fn(&BrokerStats) -> bool) {
        let deadline = Instant::now() + DEADLINE;
        loop {
            let now = self.stats();
            if check(&now) {
                return;
            }
            assert!(Instant::now() < deadline, "{what}: {now:#?}");
            std::thread::sleep(Duration::from_millis(10));
        }
    }
}

impl Drop for Broker {
    fn drop(&mut self) {
        let _ = self.handle.drain_blocking(Duration::from_millis(200));
    }
}

fn wait_for(what: &str, check: impl Fn() -> bool) {
    let deadline = Instant::now() + DEADLINE;
    while !check() {
        assert!(Instant::now() < deadline, "{what}");
        std::thread::sleep(Duration::from_millis(10));
    }
}

fn set(endpoints: &[&str]) -> BTreeSet<String> {
    endpoints.iter().map(|e| e.to_string()).collect()
}

#[test]
fn a_worker_set_follows_its_brokers() {
    let one = Broker::start();
    let two = Broker::start();
    let options = WorkerOptions {
        framing: WorkerFraming::Seed,
        concurrency: 2,
        heartbeat_interval: Duration::from_millis(100),
        liveness: 10,
        service_id: Some("echo-set".into()),
        ..WorkerOptions::new("")
    };
    let workers = WorkerSet::start(
        options,
        set(&[&one.backend()]),
        Arc::new(|mut body: Vec<Vec<u8>>| {
            body.push(b"!".to_vec());
            body
        }),
    )
    .unwrap();
    let handle = workers.handle();
    one.wait_until("the first broker is joined", |s| s.services[0].workers == 1);
    // Its identity names this process, as under a supervisor.
    let listed = &one.stats().services[0].worker_list[0];
    assert_eq!(listed.service_id.as_deref(), Some("echo-set"));
    assert_eq!(listed.pid, Some(std::process::id()));

    handle.set_endpoints(set(&[&one.backend(), &two.backend()]));
    two.wait_until("the second broker is joined", |s| {
        s.services[0].workers == 1
    });
    assert_eq!(
        handle.status().active,
        set(&[&one.backend(), &two.backend()])
    );
    let timing = ClientOptions {
        timeout: DEADLINE,
        retries: 0,
    };
    for broker in [&one, &two] {
        let mut client = PirateClient::new(broker.frontend(), timing);
        assert_eq!(
            client.request(vec![b"hi".to_vec()]).unwrap(),
            [b"hi".to_vec(), b"!".to_vec()]
        );
    }
    // Each connection has an identity of its own.
    let first = one.stats().services[0].worker_list[0].identity.clone();
    let second = two.stats().services[0].worker_list[0].identity.clone();
    assert_ne!(first, second);

    // The first broker is removed: its connection leaves with STOP (the broker forgets it at
    // once, long before its 1 s liveness window) and its thread ends.
    let removed_at = Instant::now();
    handle.set_endpoints(set(&[&two.backend()]));
    one.wait_until("the worker leaves the first broker", |s| {
        s.services[0].workers == 0
    });
    let left_after = removed_at.elapsed();
    wait_for("the connection's thread ends", || {
        let status = handle.status();
        status.leaving == 0 && status.active == set(&[&two.backend()])
    });
    assert_eq!(one.stats().services[0].stats.workers_lost, 1);
    assert_eq!(two.stats().services[0].workers, 1);
    assert!(
        left_after < Duration::from_secs(1),
        "left after {left_after:?}"
    );
    eprintln!("the removed broker forgot the worker {left_after:?} after the update");

    let summary = workers.stop();
    assert_eq!(summary.handled, 2);
    assert_eq!((summary.joined, summary.left, summary.failed), (2, 2, 0));
    two.wait_until("the worker leaves the second broker", |s| {
        s.services[0].workers == 0
    });
}

/// A Paranoid Pirate worker that says READY, heartbeats, and never replies.
struct SilentWorker {
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl SilentWorker {
    fn connect(endpoint: &str, identity: &[u8]) -> SilentWorker {
        let endpoint = endpoint.to_string();
        let identity = identity.to_vec();
        let stop = Arc::new(AtomicBool::new(false));
        let stopping = stop.clone();
        let thread = std::thread::spawn(move || {
            let context = zmq::Context::new();
            let socket = context.socket(zmq::DEALER).unwrap();
            socket.set_linger(0).unwrap();
            socket.set_identity(&identity).unwrap();
            socket.connect(&endpoint).unwrap();
            socket.send(&b"\x01"[..], 0).unwrap();
            while !stopping.load(Ordering::Relaxed) {
                if socket.poll(zmq::POLLIN, 50).unwrap_or(0) > 0 {
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
        self.stop.store(true, Ordering::Relaxed);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// An echo worker set on `broker`.
fn echo_on(broker: &Broker) -> WorkerSet {
    let options = WorkerOptions {
        heartbeat_interval: Duration::from_millis(100),
        liveness: 10,
        service_id: None,
        ..WorkerOptions::new("")
    };
    WorkerSet::start(options, set(&[&broker.backend()]), Arc::new(|body| body)).unwrap()
}

/// Requests the broker has for its default service, held or waiting.
fn at_broker_now(stats: &BrokerStats) -> usize {
    stats.services[0].held + stats.services[0].waiting
}

fn at_broker(broker: &Broker) -> usize {
    at_broker_now(&broker.stats())
}

#[test]
fn a_client_whose_broker_goes_away_retries_or_fails_at_once() {
    let holding = Broker::start();
    let serving = Broker::start();
    let _silent = SilentWorker::connect(&holding.backend(), b"silent");
    holding.wait_until("the silent worker is known", |s| s.services[0].workers == 1);
    let _echo = echo_on(&serving);
    serving.wait_until("the echo worker is known", |s| s.services[0].workers == 1);

    for retries in [1, 0] {
        let (mut client, brokers) = MultiMajordomoClient::new(ClientOptions {
            timeout: DEADLINE,
            retries,
        })
        .unwrap();
        brokers.set_endpoints(set(&[&holding.majordomo()]));
        assert!(client.wait_for_broker(DEADLINE));
        let before = at_broker(&holding);
        let requesting = std::thread::spawn(move || {
            let result = client.request("echo", vec![b"ping".to_vec()]);
            (result, Instant::now())
        });
        holding.wait_until("the request reaches the broker", |s| {
            at_broker_now(s) == before + 1
        });
        let removed_at = Instant::now();
        brokers.set_endpoints(set(&[&serving.majordomo()]));
        let (result, answered_at) = requesting.join().unwrap();
        let after = answered_at.duration_since(removed_at);
        assert!(after < Duration::from_secs(2), "answered {after:?} later");
        eprintln!("retries {retries}: answered {after:?} after the broker left the set");
        match (retries, result) {
            (1, Ok(reply)) => assert_eq!(reply, [b"ping".to_vec()]),
            (0, Err(ClientError::BrokerLost { endpoint, attempts })) => {
                assert_eq!(endpoint, holding.majordomo());
                assert_eq!(attempts, 1);
            }
            (retries, other) => panic!("retries {retries}: unexpected {other:?}"),
        }
    }

    // With no broker left at all, a held request ends at once even with retries.
    let (mut client, brokers) = MultiMajordomoClient::new(ClientOptions {
        timeout: DEADLINE,
        retries: 3,
    })
    .unwrap();
    brokers.set_endpoints(set(&[&holding.majordomo()]));
    assert!(client.wait_for_broker(DEADLINE));
    let before = at_broker(&holding);
    let requesting = std::thread::spawn(move || client.request("echo", vec![b"lost".to_vec()]));
    holding.wait_until("the request reaches the broker", |s| {
        at_broker_now(s) == before + 1
    });
    brokers.set_endpoints(BTreeSet::new());
    match requesting.join().unwrap() {
        Err(ClientError::BrokerLost { endpoint, .. }) => assert_eq!(endpoint, holding.majordomo()),
        other => panic!("expected the lost broker, got {other:?}"),
    }
}

#[test]
fn a_client_rotates_over_its_brokers_and_waits_for_a_first_one() {
    let one = Broker::start();
    let two = Broker::start();
    let _w1 = echo_on(&one);
    let _w2 = echo_on(&two);
    one.wait_until("a worker on the first broker", |s| {
        s.services[0].workers == 1
    });
    two.wait_until("a worker on the second broker", |s| {
        s.services[0].workers == 1
    });
    let (mut client, brokers) = MultiMajordomoClient::new(ClientOptions {
        timeout: DEADLINE,
        retries: 0,
    })
    .unwrap();
    assert!(!client.wait_for_broker(Duration::from_millis(50)));
    assert!(matches!(
        client.request("echo", vec![b"x".to_vec()]),
        Err(ClientError::NoBroker)
    ));
    let pusher = std::thread::spawn({
        let endpoints = set(&[&one.majordomo(), &two.majordomo()]);
        move || brokers.set_endpoints(endpoints)
    });
    assert!(client.wait_for_broker(DEADLINE));
    pusher.join().unwrap();
    for n in 0..4 {
        let body = format!("n{n}").into_bytes();
        assert_eq!(client.request("echo", vec![body.clone()]).unwrap(), [body]);
    }
    for broker in [&one, &two] {
        assert_eq!(broker.stats().services[0].stats.replies, 2);
    }
}

/// What a fake supervisor received from the broker role.
struct Attached {
    lifecycle: Recipient<ServiceLifecycle>,
    broker: Recipient<BrokerWorkers>,
}

/// Stands in for the supervisor: publishes a [`SupervisorLink`] and hands what the broker
/// sends it to the test.
struct FakeSupervisor {
    lifecycle: Option<Recipient<ServiceLifecycle>>,
    broker: Option<Recipient<BrokerWorkers>>,
    attached: mpsc::Sender<Attached>,
}

impl Actor for FakeSupervisor {
    type Context = Context<Self>;
}

impl FakeSupervisor {
    fn report(&mut self) {
        if let (Some(lifecycle), Some(broker)) = (&self.lifecycle, &self.broker) {
            let _ = self.attached.send(Attached {
                lifecycle: lifecycle.clone(),
                broker: broker.clone(),
            });
        }
    }
}

impl Handler<SubscribeLifecycle> for FakeSupervisor {
    type Result = ();

    fn handle(&mut self, subscribe: SubscribeLifecycle, _: &mut Self::Context) {
        self.lifecycle = Some(subscribe.0);
        self.report();
    }
}

impl Handler<AttachBroker> for FakeSupervisor {
    type Result = ();

    fn handle(&mut self, attach: AttachBroker, _: &mut Self::Context) {
        self.broker = Some(attach.0);
        self.report();
    }
}

#[test]
fn a_supervised_process_exit_answers_its_held_requests_at_once() {
    // A 1 s heartbeat and liveness 3: a dead worker would be noticed after 3 s at best.
    let broker_config = config("1s", 3);
    let (attached_tx, attached_rx) = mpsc::channel();
    let (addr_tx, addr_rx) = mpsc::channel();
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let node = std::thread::spawn(move || {
        System::new().block_on(async move {
            let published = Published::default();
            let supervisor = FakeSupervisor {
                lifecycle: None,
                broker: None,
                attached: attached_tx,
            }
            .start();
            published.publish(SupervisorLink {
                subscribe: supervisor.clone().recipient(),
                attach_broker: supervisor.clone().recipient(),
            });
            let (control, _requests) = NodeControl::channel();
            let ctx = RoleContext {
                node: Arc::from("test-node"),
                role: "broker",
                roles: Arc::from(vec!["supervisor".to_string(), "broker".to_string()]),
                config: Arc::new(serde_json::Value::Null),
                published,
                control,
            };
            let role = BrokerRole::start(broker_config, ctx.clone())
                .await
                .expect("the broker starts");
            addr_tx
                .send(ctx.published.lookup::<Addr<BrokerActor>>().unwrap())
                .unwrap();
            let _ = stop_rx.await;
            role.stop().await;
        });
    });
    let actor = addr_rx.recv_timeout(DEADLINE).expect("the broker starts");
    let attached = attached_rx
        .recv_timeout(DEADLINE)
        .expect("the broker subscribes and attaches");
    let ask = |query: BrokerWorkers| -> BrokerWorkersAnswer {
        futures::executor::block_on(attached.broker.send(query)).unwrap()
    };
    let stats = || -> BrokerStats {
        futures::executor::block_on(actor.send(GetStats))
            .unwrap()
            .unwrap()
    };
    let bound: BoundEndpoints = futures::executor::block_on(actor.send(GetEndpoints)).unwrap();
    let echo = bound.services[0].clone();
    let query = BrokerWorkers {
        broker_service: "echo".into(),
        service_id: "echo-svc".into(),
        pid: 4242,
    };
    assert_eq!(
        ask(query.clone()),
        BrokerWorkersAnswer {
            known: true,
            ..Default::default()
        }
    );

    // "Process 4242 of service echo-svc" opens a worker, takes a request and holds it.
    let silent = SilentWorker::connect(&echo.backend, &worker_identity("echo-svc", 4242, 0));
    wait_for("the worker of pid 4242 is ready", || {
        ask(query.clone()).ready
    });
    let listed = stats().services[0].worker_list[0].clone();
    assert_eq!(
        (listed.service_id.as_deref(), listed.pid),
        (Some("echo-svc"), Some(4242))
    );
    let frontend = echo.frontend.clone();
    let client = std::thread::spawn(move || {
        let result = PirateClient::new(
            frontend,
            ClientOptions {
                timeout: DEADLINE,
                retries: 0,
            },
        )
        .request(vec![b"work".to_vec()]);
        (result, Instant::now())
    });
    wait_for("the request is held", || stats().services[0].held == 1);

    let exited_at = Instant::now();
    attached.lifecycle.do_send(ServiceLifecycle::Exited {
        id: "echo-svc".into(),
        pid: 4242,
    });
    let (result, answered_at) = client.join().unwrap();
    let after = answered_at.duration_since(exited_at);
    match result {
        Err(ClientError::Broker { code, message }) => {
            assert_eq!(code, 502);
            assert!(message.starts_with("echo: "), "{message}");
            assert!(message.contains("exited"), "{message}");
        }
        other => panic!("expected a 502, got {other:?}"),
    }
    assert!(
        after < Duration::from_millis(500),
        "answered {after:?} after the exit"
    );
    let now = stats();
    assert_eq!(now.services[0].workers, 0);
    assert_eq!(now.services[0].stats.workers_exited, 1);
    // The dead worker's heartbeats still in flight do not bring it back.
    assert_eq!(
        ask(query.clone()),
        BrokerWorkersAnswer {
            known: true,
            ..Default::default()
        }
    );
    drop(silent);
    eprintln!("held request answered {after:?} after the exit report");

    let _ = stop_tx.send(());
    node.join().unwrap();
}
