//! The crate's Rust APIs together in one process over real loopback sockets: the socket loop,
//! the worker, both clients, the counters and the drain.

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
