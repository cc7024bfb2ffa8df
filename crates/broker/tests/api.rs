//! The crate's Rust APIs together in one process over real loopback sockets: the socket loop,
//! the worker, both clients, the counters and the drain, and a client that stops reading
//! (its replies are held, not dropped, and reach it in order once it reads again).

use std::sync::Arc;
use std::time::{Duration, Instant};

use troupe_broker::client::{ClientOptions, MajordomoClient, PirateClient};
use troupe_broker::config::BrokerConfig;
use troupe_broker::socket_loop::{self, BrokerHandle};
use troupe_broker::worker::{Worker, WorkerOptions};
use troupe_broker::BrokerStats;

const DEADLINE: Duration = Duration::from_secs(20);

fn stats(handle: &BrokerHandle) -> BrokerStats {
    futures::executor::block_on(handle.stats()).expect("the broker answers")
}

/// Polls the counters until `check` holds, up to [`DEADLINE`].
fn wait_until(handle: &BrokerHandle, what: &str, check: impl Fn(&BrokerStats) -> bool) {
    let deadline = Instant::now() + DEADLINE;
    loop {
        let now = stats(handle);
        if check(&now) {
            return;
        }
        assert!(Instant::now() < deadline, "{what}: {now:?}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn a_worker_and_clients_through_the_socket_loop() {
    let config: BrokerConfig = toml::from_str(
        r#"
        frontend = "tcp://127.0.0.1:*"
        backend = "tcp://127.0.0.1:*"
        heartbeat_interval = "100ms"
        liveness = 10
        majordomo.bind = "tcp://127.0.0.1:*"
        "#,
    )
    .unwrap();
    config.validate().unwrap();
    let (handle, bound) = socket_loop::start_blocking(config, tracing::Span::none()).unwrap();
    let service = &bound.services[0];

    let options = WorkerOptions {
        concurrency: 2,
        heartbeat_interval: Duration::from_millis(100),
        liveness: 10,
        ..WorkerOptions::new(service.backend.clone())
    };
    let (worker, stop) = Worker::new(options).unwrap();
    let running = std::thread::spawn(move || {
        worker.run(Arc::new(|mut body: Vec<Vec<u8>>| {
            body.push(b"!".to_vec());
            body
        }))
    });
    wait_until(&handle, "the worker registers", |s| {
        s.services[0].workers == 1
    });

    let timing = ClientOptions {
        timeout: DEADLINE,
        retries: 0,
    };
    let mut pirate = PirateClient::new(service.frontend.clone(), timing);
    assert_eq!(
        pirate.request(vec![b"hi".to_vec()]).unwrap(),
        [b"hi".to_vec(), b"!".to_vec()]
    );
    let mut majordomo = MajordomoClient::new(bound.majordomo.clone().unwrap(), timing);
    assert_eq!(
        majordomo
            .request("echo", vec![b"a".to_vec(), b"b".to_vec()])
            .unwrap(),
        [b"a".to_vec(), b"b".to_vec(), b"!".to_vec()]
    );
    let now = stats(&handle);
    assert_eq!(now.services[0].stats.requests, 2);
    assert_eq!(now.services[0].stats.replies, 2);
    assert_eq!(now.services[0].held, 0);

    // A graceful exit: STOP, so the broker forgets the worker at once.
    stop.stop();
    let summary = running.join().unwrap().unwrap();
    assert_eq!(summary.handled, 2);
    wait_until(&handle, "the worker leaves", |s| s.services[0].workers == 0);

    let last = handle.drain_blocking(Duration::from_secs(1)).unwrap();
    assert_eq!(last.services[0].stats.workers_lost, 1);
    assert_eq!(last.malformed, 0);
}

#[test]
fn replies_to_a_client_that_does_not_read_are_held_then_delivered_in_order() {
    let config: BrokerConfig = toml::from_str(
        r#"
        frontend = "tcp://127.0.0.1:*"
        backend = "tcp://127.0.0.1:*"
        heartbeat_interval = "100ms"
        liveness = 10
        hwm = 4
        majordomo.enabled = false
        "#,
    )
    .unwrap();
    config.validate().unwrap();
    let (handle, bound) = socket_loop::start_blocking(config, tracing::Span::none()).unwrap();
    let service = &bound.services[0];
    let options = WorkerOptions {
        concurrency: 1,
        heartbeat_interval: Duration::from_millis(100),
        liveness: 10,
        ..WorkerOptions::new(service.backend.clone())
    };
    let (worker, stop) = Worker::new(options).unwrap();
    let running = std::thread::spawn(move || {
        worker.run(Arc::new(|body: Vec<Vec<u8>>| {
            // A large reply, so that the client's TCP buffers fill.
            let mut reply = body;
            reply.push(vec![7u8; 64 * 1024]);
            reply
        }))
    });
    wait_until(&handle, "the worker registers", |s| {
        s.services[0].workers == 1
    });

    const REQUESTS: usize = 200;
    let context = zmq::Context::new();
    let client = context.socket(zmq::DEALER).unwrap();
    client.set_rcvhwm(1).unwrap();
    client.set_rcvbuf(64 * 1024).unwrap();
    client.connect(service.frontend.as_str()).unwrap();
    for i in 0..REQUESTS {
        client
            .send_multipart([b"".to_vec(), i.to_string().into_bytes()], 0)
            .unwrap();
    }
    // The worker answers everything while the client reads nothing: some replies are held.
    wait_until(&handle, "every request is answered", |s| {
        s.services[0].stats.replies == REQUESTS as u64
    });
    let held = stats(&handle).held_replies;
    assert!(
        held > 0,
        "no reply was held: the test did not fill the client's pipe"
    );
    for i in 0..REQUESTS {
        assert!(
            client
                .poll(zmq::POLLIN, DEADLINE.as_millis() as i64)
                .unwrap()
                > 0,
            "reply {i} never came"
        );
        let reply = client.recv_multipart(0).unwrap();
        assert_eq!(reply[1], i.to_string().into_bytes(), "replies in order");
    }
    let now = stats(&handle);
    assert_eq!((now.dropped_replies, now.held_replies), (0, 0), "{now:?}");
    stop.stop();
    running.join().unwrap().unwrap();
    handle.drain_blocking(Duration::from_secs(1)).unwrap();
}
