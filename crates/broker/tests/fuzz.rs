//! Fuzz targets of the broker's engine, as property tests: arbitrary sequences of frames from
//! Paranoid Pirate clients, Paranoid Pirate and seed-framed workers, Majordomo clients and
//! Majordomo workers (well-formed, mutated and garbage), with the clock moving, sends refused
//! and supervised processes exiting. Checked after every step: no panic, queues within their
//! limits; at the end: every request got at most one answer, and exactly one once every
//! worker is gone and the clock has run past every bound.
//!
//! The corpus in `tests/fuzz_corpus/*.json` (each a JSON array of [`Op`]) always runs. Then
//! `TROUPE_FUZZ_SECS=N` keeps generating new cases for N seconds (`make fuzz`); without it a
//! modest number of cases runs.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use proptest::prelude::*;
use proptest::test_runner::{Config, TestCaseError, TestRunner};
use serde::{Deserialize, Serialize};
use troupe_broker::config::BrokerConfig;
use troupe_broker::engine::Engine;
use troupe_broker::service::{Outgoing, Purpose, Socket, MAX_HELD};

/// One step.
#[derive(Debug, Clone, Serialize, Deserialize)]
enum Op {
    /// A Paranoid Pirate client request (a new client) with `proxies` extra routing frames and
    /// `body` body frames of `size` bytes each.
    PirateRequest { proxies: u8, body: u8, size: u16 },
    /// A Paranoid Pirate or seed worker's control message: `command` 1 READY, 2 HEARTBEAT,
    /// 3 STOP, other: unknown; `free` its free concurrency.
    PirateControl {
        worker: u8,
        seed: bool,
        command: u8,
        free: u8,
    },
    /// A worker replies to the `pick`-th request delivered to it (modulo), with `extra` more
    /// body frames (possibly over the limit).
    Reply { pick: u16, extra: u8 },
    /// A Majordomo client request (a new client) for service `service` (modulo the list).
    MajordomoRequest { service: u8, body: u8 },
    /// A Majordomo worker command: 1 READY (service `service`), 4 HEARTBEAT, 5 DISCONNECT.
    MajordomoWorker {
        worker: u8,
        command: u8,
        service: u8,
    },
    /// Frames as they come, on socket 0 frontend, 1 backend, 2 Majordomo.
    Raw { socket: u8, frames: Vec<Vec<u8>> },
    /// The clock moves on by `ms`, then the timer runs.
    Wait { ms: u16 },
    /// The next step's dispatches are refused by the socket (`gone`: no such peer).
    RefuseNext { gone: bool },
    /// The supervisor reports that the process behind worker identities `troupe/svc/<pid>/…`
    /// exited.
    ProcessExited { pid: u8 },
    /// The control plane asks for the counters.
    Stats,
}

const SERVICES: [&str; 5] = ["echo", "weather", "news", "mmi.service", "mmi.nope"];

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        4 => (0..3u8, prop_oneof![1..4u8, 60..70u8], prop_oneof![0..16u16, 1000..5000u16])
            .prop_map(|(proxies, body, size)| Op::PirateRequest { proxies, body, size }),
        3 => (0..4u8, any::<bool>(), 0..5u8, 0..4u8)
            .prop_map(|(worker, seed, command, free)| Op::PirateControl { worker, seed, command, free }),
        4 => (any::<u16>(), prop_oneof![Just(0u8), 60..70u8])
            .prop_map(|(pick, extra)| Op::Reply { pick, extra }),
        3 => (0..SERVICES.len() as u8, prop_oneof![1..4u8, 62..68u8])
            .prop_map(|(service, body)| Op::MajordomoRequest { service, body }),
        3 => (0..4u8, prop_oneof![Just(1u8), Just(4u8), Just(5u8), 0..9u8], 0..SERVICES.len() as u8)
            .prop_map(|(worker, command, service)| Op::MajordomoWorker { worker, command, service }),
        1 => (0..3u8, prop::collection::vec(prop::collection::vec(any::<u8>(), 0..8), 0..100))
            .prop_map(|(socket, frames)| Op::Raw { socket, frames }),
        3 => prop_oneof![0..200u16, 0..5000u16].prop_map(|ms| Op::Wait { ms }),
        1 => any::<bool>().prop_map(|gone| Op::RefuseNext { gone }),
        1 => (0..3u8).prop_map(|pid| Op::ProcessExited { pid }),
        1 => Just(Op::Stats),
    ]
}

fn config() -> BrokerConfig {
    let config: BrokerConfig = toml::from_str(
        r#"
        heartbeat_interval = "100ms"
        request_timeout = "500ms"
        queue_limit = 8
        queue_max_bytes = "16KiB"
        max_workers = 3
        majordomo.max_services = 2
        [[services]]
        name = "resize"
        frontend = "tcp://127.0.0.1:1"
        backend = "tcp://127.0.0.1:2"
        retry_on_worker_loss = true
        error_replies = false
        "#,
    )
    .expect("valid");
    config.validate().expect("valid");
    config
}

/// A worker's identity: supervised-looking for some, so that `ProcessExited` finds them.
fn worker_id(prefix: &str, n: u8) -> Vec<u8> {
    if n.is_multiple_of(2) {
        format!("troupe/svc/{}/{prefix}{n}", n % 3).into_bytes()
    } else {
        format!("{prefix}{n}").into_bytes()
    }
}

/// Dispatches the socket refused: service, worker, the messages in order, whether it is gone.
type Refused = (usize, Vec<u8>, Vec<Vec<Vec<u8>>>, bool);

struct Harness {
    engine: Engine<Vec<u8>>,
    start: Instant,
    now_ms: u64,
    next_client: u64,
    /// Requests the engine took (well-formed), by the first frame its answer carries, with
    /// whether they may go unanswered (the service keeps silent towards its clients).
    requests: HashMap<Vec<u8>, bool>,
    /// Answers per first frame.
    answers: HashMap<Vec<u8>, u32>,
    /// Dispatches delivered to workers, oldest first: (socket, frames).
    delivered: Vec<(Socket, Vec<Vec<u8>>)>,
    refuse_next: Option<bool>,
}

impl Harness {
    fn new() -> Self {
        let start = Instant::now();
        Harness {
            engine: Engine::new(config(), start),
            start,
            now_ms: 0,
            next_client: 0,
            requests: HashMap::new(),
            answers: HashMap::new(),
            delivered: Vec::new(),
            refuse_next: None,
        }
    }

    fn now(&self) -> Instant {
        self.start + Duration::from_millis(self.now_ms)
    }

    fn client(&mut self, prefix: &str) -> Vec<u8> {
        self.next_client += 1;
        format!("{prefix}{}", self.next_client).into_bytes()
    }

    /// Takes the engine's output as the socket loop would.
    fn flush(&mut self, mut out: Vec<Outgoing<Vec<u8>>>) -> Result<(), TestCaseError> {
        let refuse = self.refuse_next.take();
        let now = self.now();
        let mut rounds = 0;
        while !out.is_empty() {
            rounds += 1;
            prop_assert!(rounds < 1000, "the engine keeps producing messages");
            let mut refused: Vec<Refused> = Vec::new();
            for message in std::mem::take(&mut out) {
                match message.purpose {
                    Purpose::Reply => {
                        prop_assert!(matches!(
                            message.socket,
                            Socket::Frontend(_) | Socket::Majordomo
                        ));
                        let key = message.frames[0].clone();
                        *self.answers.entry(key).or_default() += 1;
                    }
                    Purpose::Dispatch { service, worker } => match refuse {
                        Some(gone) if rounds == 1 => {
                            match refused
                                .iter_mut()
                                .find(|(s, w, _, _)| *s == service && *w == worker)
                            {
                                Some(entry) => entry.2.push(message.frames),
                                None => refused.push((service, worker, vec![message.frames], gone)),
                            }
                        }
                        _ => self.delivered.push((message.socket, message.frames)),
                    },
                    Purpose::Heartbeat { .. } | Purpose::Control => {}
                }
            }
            for (service, worker, batch, gone) in refused {
                self.engine
                    .undeliverable(service, &worker, batch, gone, now, &mut out);
            }
        }
        Ok(())
    }

    fn check_bounds(&self) -> Result<(), TestCaseError> {
        let stats = self.engine.stats(self.now());
        let config = self.engine.config();
        for svc in &stats.services {
            prop_assert!(svc.waiting <= config.queue_limit, "{svc:?}");
            prop_assert!(svc.waiting_bytes <= config.queue_max_bytes.0, "{svc:?}");
            prop_assert!(svc.workers <= config.max_workers, "{svc:?}");
            prop_assert!(svc.held <= svc.workers.max(1) * MAX_HELD, "{svc:?}");
        }
        prop_assert!(stats.services.len() <= 2 + config.majordomo.max_services);
        Ok(())
    }

    fn step(&mut self, op: &Op) -> Result<(), TestCaseError> {
        let mut out = Vec::new();
        let now = self.now();
        match op {
            Op::PirateRequest {
                proxies,
                body,
                size,
            } => {
                // Alternate between the default service and the silent one.
                let index = (self.next_client % 2) as usize;
                let client = self.client("c");
                let mut frames = vec![client.clone()];
                for p in 0..*proxies {
                    frames.push(format!("proxy{p}").into_bytes());
                }
                frames.push(Vec::new());
                frames.extend((0..*body).map(|_| vec![b'x'; *size as usize]));
                frames.truncate(troupe_broker::protocol::MAX_RECEIVED_FRAMES + 1);
                self.requests.insert(client, index == 1);
                self.engine.on_frontend(index, frames, now, &mut out);
            }
            Op::PirateControl {
                worker,
                seed,
                command,
                free,
            } => {
                let mut frames = vec![worker_id("w", *worker)];
                if *seed {
                    frames.push(Vec::new());
                    frames.push(vec![*command, 1, *free]);
                } else {
                    frames.push(vec![*command]);
                }
                self.engine
                    .on_backend((*worker % 2) as usize, frames, now, &mut out);
            }
            Op::Reply { pick, extra } => {
                if !self.delivered.is_empty() {
                    let (socket, mut frames) =
                        self.delivered[*pick as usize % self.delivered.len()].clone();
                    frames.extend((0..*extra).map(|_| b"more".to_vec()));
                    frames.truncate(troupe_broker::protocol::MAX_RECEIVED_FRAMES + 1);
                    match socket {
                        Socket::Backend(i) => self.engine.on_backend(i, frames, now, &mut out),
                        Socket::Majordomo => {
                            if frames.len() > 3 {
                                frames[3] = vec![3];
                            }
                            self.engine.on_majordomo(frames, now, &mut out)
                        }
                        Socket::Frontend(_) => prop_assert!(false, "dispatch to a frontend"),
                    }
                }
            }
            Op::MajordomoRequest { service, body } => {
                let client = self.client("m");
                let mut frames = vec![
                    client.clone(),
                    Vec::new(),
                    b"MDPC01".to_vec(),
                    SERVICES[*service as usize % SERVICES.len()]
                        .as_bytes()
                        .to_vec(),
                ];
                frames.extend((0..*body).map(|i| vec![i]));
                self.requests.insert(client, false);
                self.engine.on_majordomo(frames, now, &mut out);
            }
            Op::MajordomoWorker {
                worker,
                command,
                service,
            } => {
                let mut frames = vec![
                    worker_id("mw", *worker),
                    Vec::new(),
                    b"MDPW01".to_vec(),
                    vec![*command],
                ];
                if *command == 1 {
                    frames.push(
                        SERVICES[*service as usize % SERVICES.len()]
                            .as_bytes()
                            .to_vec(),
                    );
                }
                self.engine.on_majordomo(frames, now, &mut out);
            }
            Op::Raw { socket, frames } => {
                let mut frames = frames.clone();
                if frames
                    .first()
                    .is_some_and(|f| f.starts_with(b"c") || f.starts_with(b"m"))
                {
                    // Never collide with a tracked client.
                    frames[0].insert(0, b'~');
                }
                match socket % 3 {
                    0 if !frames.is_empty() => {
                        self.engine.on_frontend(0, frames, now, &mut out);
                    }
                    1 if !frames.is_empty() => self.engine.on_backend(0, frames, now, &mut out),
                    2 if !frames.is_empty() => self.engine.on_majordomo(frames, now, &mut out),
                    _ => {}
                }
            }
            Op::Wait { ms } => {
                self.now_ms += u64::from(*ms);
                let now = self.now();
                self.engine.on_timer(now, &mut out);
            }
            Op::RefuseNext { gone } => self.refuse_next = Some(*gone),
            Op::ProcessExited { pid } => {
                self.engine
                    .process_exited("svc", u32::from(*pid), now, &mut out);
            }
            Op::Stats => {
                let stats = self.engine.stats(now);
                serde_json::to_string(&stats).map_err(|e| TestCaseError::fail(e.to_string()))?;
            }
        }
        self.flush(out)?;
        self.check_bounds()
    }

    /// Every worker is gone (nothing more is heard from any) and the clock runs past every
    /// bound: each request must have exactly one answer (at most one, for a service that keeps
    /// silent).
    fn finish(&mut self) -> Result<(), TestCaseError> {
        // The longest a worker can live unheard: 3 × 10 s learned interval × the busy grace.
        for _ in 0..400 {
            self.now_ms += 1000;
            let mut out = Vec::new();
            let now = self.now();
            self.engine.on_timer(now, &mut out);
            self.flush(out)?;
        }
        let stats = self.engine.stats(self.now());
        for svc in &stats.services {
            prop_assert_eq!(svc.workers, 0, "{:?}", svc);
            prop_assert_eq!(svc.waiting + svc.held, 0, "{:?}", svc);
        }
        for (client, silent) in &self.requests {
            let answers = self.answers.get(client).copied().unwrap_or(0);
            if *silent {
                prop_assert!(answers <= 1, "{} answers to {:?}", answers, client);
            } else {
                prop_assert_eq!(
                    answers,
                    1,
                    "answers to {:?}",
                    String::from_utf8_lossy(client)
                );
            }
        }
        Ok(())
    }
}

fn run_case(ops: &[Op]) -> Result<(), TestCaseError> {
    let mut harness = Harness::new();
    for op in ops {
        harness.step(op)?;
        for client in harness.requests.keys() {
            let answers = harness.answers.get(client).copied().unwrap_or(0);
            prop_assert!(answers <= 1, "{} answers to {:?}", answers, client);
        }
    }
    harness.finish()
}

#[test]
fn the_corpus_runs_clean() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fuzz_corpus");
    let mut count = 0;
    let mut entries: Vec<_> = std::fs::read_dir(&dir)
        .expect("the corpus directory")
        .map(|e| e.expect("entry").path())
        .filter(|p| p.extension().is_some_and(|e| e == "json"))
        .collect();
    entries.sort();
    for path in entries {
        let text = std::fs::read_to_string(&path).expect("readable");
        let ops: Vec<Op> =
            serde_json::from_str(&text).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        if let Err(e) = run_case(&ops) {
            panic!("{}: {e}", path.display());
        }
        count += 1;
    }
    assert!(count >= 3, "the corpus has {count} cases");
}

#[test]
fn generated_sequences_run_clean() {
    let budget = std::env::var("TROUPE_FUZZ_SECS")
        .ok()
        .and_then(|s| s.parse::<u64>().ok())
        .map(Duration::from_secs);
    let strategy = prop::collection::vec(op(), 1..120);
    let cases = if budget.is_some() { 256 } else { 48 };
    let deadline = budget.map(|b| Instant::now() + b);
    loop {
        let mut runner = TestRunner::new(Config {
            cases,
            failure_persistence: None,
            ..Config::default()
        });
        if let Err(e) = runner.run(&strategy, |ops| run_case(&ops)) {
            panic!("{e}");
        }
        match deadline {
            Some(deadline) if Instant::now() < deadline => continue,
            _ => break,
        }
    }
}
