//! Services and the cluster, against real processes: a fake cluster client (a tiny actor that
//! records offers and withdrawals and lets the test report providers) and a fake broker.
//! Requirements' environment and `${cluster…}` arguments as a `sh -c` service sees them,
//! waiting until a provider appears, restarts and stops on changes, the timeout, notify over
//! the service channel, endpoints withdrawn at a `kill -9`, `ready = { broker = ... }`, and the
//! `SupervisorLink` the role publishes.

mod common;

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use actix::prelude::*;
use common::*;
use nix::sys::signal::Signal;
use troupe_core::cluster::{
    ClusterHandle, Offer, Provider, ProvidersChanged, Unwatch, WatchId, WatchProviders, Withdraw,
};
use troupe_core::services::{
    AttachBroker, BrokerWorkers, BrokerWorkersAnswer, ChannelError, Invoke, PushConfig,
    ServiceChannels, ServiceLifecycle, SubscribeLifecycle, SupervisorLink,
};
use troupe_core::Role;
use troupe_supervisor::messages::*;
use troupe_supervisor::{
    ChildError, ChildSpec, OnRequirementChange, ReadyCheck, ServiceConfig, ServiceState,
    Supervisor, SupervisorConfig, SupervisorRole,
};

/// What the fake cluster client was told, with when.
#[derive(Debug, Clone, PartialEq)]
enum Told {
    Offer(String, BTreeMap<String, String>),
    Withdraw(String),
    Watch(Vec<String>),
    Unwatch,
}

/// A cluster client: records offers and withdrawals, answers watches with the picture the
/// test sets.
#[derive(Default)]
struct FakeCluster {
    told: Arc<Mutex<Vec<(Instant, Told)>>>,
    watches: Vec<(WatchId, Vec<String>, Recipient<ProvidersChanged>)>,
    next: u64,
    providers: BTreeMap<String, Vec<Provider>>,
    reachable: bool,
}

impl Actor for FakeCluster {
    type Context = Context<Self>;
}

impl FakeCluster {
    fn tell(&self, told: Told) {
        self.told.lock().unwrap().push((Instant::now(), told));
    }

    fn picture(&self, resources: &[String]) -> ProvidersChanged {
        ProvidersChanged {
            providers: resources
                .iter()
                .map(|r| {
                    let list = match self.reachable {
                        true => self.providers.get(r).cloned().unwrap_or_default(),
                        false => Vec::new(),
                    };
                    (r.clone(), list)
                })
                .collect(),
            reachable: self.reachable,
        }
    }
}

impl Handler<Offer> for FakeCluster {
    type Result = Result<(), String>;
    fn handle(&mut self, msg: Offer, _: &mut Self::Context) -> Self::Result {
        self.tell(Told::Offer(msg.resource, msg.endpoints));
        Ok(())
    }
}

impl Handler<Withdraw> for FakeCluster {
    type Result = Result<(), String>;
    fn handle(&mut self, msg: Withdraw, _: &mut Self::Context) -> Self::Result {
        assert!(msg.names.is_empty());
        self.tell(Told::Withdraw(msg.resource));
        Ok(())
    }
}

impl Handler<WatchProviders> for FakeCluster {
    type Result = Result<WatchId, String>;
    fn handle(&mut self, msg: WatchProviders, _: &mut Self::Context) -> Self::Result {
        self.tell(Told::Watch(msg.resources.clone()));
        self.next += 1;
        let id = WatchId(self.next);
        msg.recipient.do_send(self.picture(&msg.resources));
        self.watches.push((id, msg.resources, msg.recipient));
        Ok(id)
    }
}

impl Handler<Unwatch> for FakeCluster {
    type Result = ();
    fn handle(&mut self, msg: Unwatch, _: &mut Self::Context) {
        self.tell(Told::Unwatch);
        self.watches.retain(|(id, _, _)| *id != msg.0);
    }
}

/// The test sets the providers of some resources (and whether the beacons answer).
#[derive(Message)]
#[rtype(result = "()")]
struct SetProviders(Vec<(&'static str, Vec<Provider>)>, bool);

impl Handler<SetProviders> for FakeCluster {
    type Result = ();
    fn handle(&mut self, msg: SetProviders, _: &mut Self::Context) {
        for (resource, list) in msg.0 {
            self.providers.insert(resource.to_string(), list);
        }
        self.reachable = msg.1;
        for (_, resources, recipient) in &self.watches {
            recipient.do_send(self.picture(resources));
        }
    }
}

struct Cluster {
    addr: Addr<FakeCluster>,
    told: Arc<Mutex<Vec<(Instant, Told)>>>,
    handle: ClusterHandle,
}

fn cluster() -> Cluster {
    let told: Arc<Mutex<Vec<(Instant, Told)>>> = Arc::default();
    let addr = FakeCluster {
        told: told.clone(),
        reachable: true,
        ..FakeCluster::default()
    }
    .start();
    let handle = ClusterHandle {
        offer: addr.clone().recipient(),
        withdraw: addr.clone().recipient(),
        watch: addr.clone().recipient(),
        unwatch: addr.clone().recipient(),
        beacons: vec!["tcp://b1:7000".into(), "tcp://b2:7000".into()],
        cookie_file: Some("/etc/troupe/cookie".into()),
        cluster: None,
    };
    Cluster { addr, told, handle }
}

impl Cluster {
    async fn set(&self, providers: Vec<(&'static str, Vec<Provider>)>) {
        self.addr.send(SetProviders(providers, true)).await.unwrap();
    }

    fn told(&self) -> Vec<Told> {
        self.told
            .lock()
            .unwrap()
            .iter()
            .map(|(_, t)| t.clone())
            .collect()
    }

    /// Waits until the fake was told `what`; when.
    async fn until_told(&self, what: &Told) -> Instant {
        let deadline = Instant::now() + DEADLINE;
        loop {
            if let Some((at, _)) = self.told.lock().unwrap().iter().find(|(_, t)| t == what) {
                return *at;
            }
            assert!(
                Instant::now() < deadline,
                "not told {what:?} within {DEADLINE:?}; told {:?}",
                self.told()
            );
            actix_rt::time::sleep(Duration::from_millis(5)).await;
        }
    }
}

fn provider(node: &str, endpoints: &[(&str, &str)]) -> Provider {
    Provider::new(node, endpoints)
}

fn hub(n: u32) -> Provider {
    provider(
        &format!("hub-{n}"),
        &[
            ("frontend", &format!("tcp://h{n}:5555")),
            ("echo.backend", &format!("tcp://h{n}:5556")),
        ],
    )
}

/// A supervisor with the fake cluster client.
fn start_with(children: Vec<ChildSpec>, cluster: &Cluster) -> Addr<Supervisor> {
    let mut setup = setup(children, None);
    setup.cluster = Some(cluster.handle.clone());
    start(setup).0
}

/// Waits until `id` runs a process other than `not`; its pid.
async fn up(sup: &Addr<Supervisor>, id: &str, not: Option<u32>) -> u32 {
    status_until(sup, id, "running", |s| {
        matches!(s.state, ServiceState::Running | ServiceState::Ready) && s.pid != not
    })
    .await
    .pid
    .unwrap()
}

/// Waits for a line of process `pid` of `id` starting with `prefix`.
async fn line_of(sup: &Addr<Supervisor>, id: &str, pid: u32, prefix: &str) -> String {
    let deadline = Instant::now() + DEADLINE;
    loop {
        let logs = sup
            .send(GetLogs {
                id: id.into(),
                lines: usize::MAX,
                follow: false,
            })
            .await
            .unwrap()
            .unwrap();
        if let Some(line) = logs
            .lines
            .iter()
            .find(|l| l.pid == pid && l.text.starts_with(prefix))
        {
            return line.text.clone();
        }
        assert!(
            Instant::now() < deadline,
            "{id}: no line {prefix:?} from {pid} within {DEADLINE:?}; got {:?}",
            logs.lines
        );
        actix_rt::time::sleep(Duration::from_millis(10)).await;
    }
}

/// A `sh -c` service that requires `broker` and prints what it got, then sleeps.
fn broker_client(id: &str) -> ChildSpec {
    let script = r#"echo "GOT B=$TROUPE_BEACONS C=$TROUPE_COOKIE_FILE F=$TROUPE_REQ_BROKER_FRONTEND E=$TROUPE_REQ_BROKER_ECHO_BACKEND N=$TROUPE_REQ_BROKER_NODES A=$1"; exec sleep 1000"#;
    ChildSpec::process(id, "sh")
        .with_args(["-c", script, "sh", "${cluster.broker.frontend}"])
        .with_plan(serde_json::from_str(r#"["restart"]"#).unwrap())
        .with_requires(["broker"])
}

#[actix_rt::test]
async fn a_service_waits_for_providers_and_gets_them_in_its_environment_and_args() {
    let cluster = cluster();
    let mut overriding = ChildSpec::process("own", "sh")
        .with_args(["-c", r#"echo "GOT B=$TROUPE_BEACONS"; exec sleep 1000"#]);
    if let troupe_supervisor::ChildStart::Process(p) = &mut overriding.start {
        p.env.insert("TROUPE_BEACONS".into(), "mine".into());
    }
    let sup = start_with(vec![broker_client("app"), overriding], &cluster);
    // Only the one that requires nothing starts; the other waits, saying for what.
    let own = up(&sup, "own", None).await;
    assert_eq!(line_of(&sup, "own", own, "GOT").await, "GOT B=mine");
    let waiting = status_until(&sup, "app", "waiting", |s| {
        s.state == ServiceState::WaitingForRequirements
    })
    .await;
    assert_eq!(waiting.waiting_for.as_deref(), Some("broker"));
    assert_eq!(waiting.pid, None);
    cluster
        .until_told(&Told::Watch(vec!["broker".into()]))
        .await;
    // A provider appears: it starts.
    cluster.set(vec![("broker", vec![hub(1), hub(2)])]).await;
    let pid = up(&sup, "app", None).await;
    assert_eq!(
        line_of(&sup, "app", pid, "GOT").await,
        "GOT B=tcp://b1:7000 tcp://b2:7000 C=/etc/troupe/cookie \
         F=tcp://h1:5555,tcp://h2:5555 E=tcp://h1:5556,tcp://h2:5556 N=hub-1,hub-2 \
         A=tcp://h1:5555"
    );
    let status = sup
        .send(GetServiceStatus("app".into()))
        .await
        .unwrap()
        .unwrap();
    let requirements = status.requirements.unwrap();
    assert!(requirements.unmet.is_empty());
    assert_eq!(requirements.providers["broker"], ["hub-1", "hub-2"]);
    sup.send(troupe_core::Shutdown).await.unwrap();
}

#[actix_rt::test]
async fn restart_on_a_change_and_stop_then_wait_on_a_loss() {
    let cluster = cluster();
    cluster.set(vec![("broker", vec![hub(1), hub(2)])]).await;
    let sup = start_with(vec![broker_client("app")], &cluster);
    let first = up(&sup, "app", None).await;
    line_of(&sup, "app", first, "GOT").await;
    // hub-1 goes: restarted with the new picture, not counted as a restart.
    cluster.set(vec![("broker", vec![hub(2)])]).await;
    let second = up(&sup, "app", Some(first)).await;
    assert!(!alive(first));
    let line = line_of(&sup, "app", second, "GOT").await;
    assert!(
        line.ends_with("F=tcp://h2:5555 E=tcp://h2:5556 N=hub-2 A=tcp://h2:5555"),
        "{line}"
    );
    let status = sup
        .send(GetServiceStatus("app".into()))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(status.restarts, 0);
    assert!(status.last_exit.unwrap().requested);
    // The last provider goes: stopped, waiting again.
    cluster.set(vec![("broker", vec![])]).await;
    status_until(&sup, "app", "waiting", |s| {
        s.state == ServiceState::WaitingForRequirements && s.pid.is_none()
    })
    .await;
    assert!(!alive(second));
    // The beacons not answering is no better; a provider's return starts it again.
    cluster
        .addr
        .send(SetProviders(vec![("broker", vec![hub(3)])], false))
        .await
        .unwrap();
    // The fake told the supervisor before answering, so the status below comes after it.
    let status = sup
        .send(GetServiceStatus("app".into()))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(status.state, ServiceState::WaitingForRequirements);
    cluster.set(vec![("broker", vec![hub(3)])]).await;
    let third = up(&sup, "app", Some(second)).await;
    assert!(line_of(&sup, "app", third, "GOT")
        .await
        .ends_with("N=hub-3 A=tcp://h3:5555"));
    sup.send(troupe_core::Shutdown).await.unwrap();
}

#[actix_rt::test]
async fn a_wait_that_times_out_fails_and_a_start_waits_again() {
    let cluster = cluster();
    let spec = broker_client("app").with_requirements_timeout(Duration::from_millis(200));
    let sup = start_with(vec![spec], &cluster);
    let failed = status_until(&sup, "app", "failed", |s| s.state == ServiceState::Failed).await;
    assert_eq!(
        failed.failure.as_deref(),
        Some("requirements not met within 200ms: broker")
    );
    // `ctl start`: it waits again (the call answers at once, with no pid).
    assert_eq!(
        sup.send(RestartChild("app".into())).await.unwrap(),
        Ok(None)
    );
    assert_eq!(
        sup.send(RestartService("app".into())).await.unwrap(),
        Ok(None)
    );
    status_until(&sup, "app", "waiting", |s| {
        s.state == ServiceState::WaitingForRequirements
    })
    .await;
    cluster.set(vec![("broker", vec![hub(1)])]).await;
    up(&sup, "app", None).await;
    sup.send(troupe_core::Shutdown).await.unwrap();
}

#[actix_rt::test]
async fn an_argument_no_provider_answers_fails_the_start_naming_it() {
    let cluster = cluster();
    cluster.set(vec![("broker", vec![hub(1)])]).await;
    let spec = ChildSpec::process("app", "sh")
        .with_args(["-c", "exec sleep 1000", "sh", "--at=${cluster.broker.nope}"])
        .with_plan(serde_json::from_str(r#"["wait"]"#).unwrap())
        .with_requires(["broker"]);
    let sup = start_with(vec![spec], &cluster);
    let down = status_until(&sup, "app", "down", |s| s.last_exit.is_some()).await;
    assert_eq!(down.state, ServiceState::Waiting);
    assert_eq!(
        down.last_exit.unwrap().reason,
        "failed to start: args[3]: ${cluster.broker.nope}: no provider of \"broker\" offers an endpoint \"nope\""
    );
    sup.send(troupe_core::Shutdown).await.unwrap();
}

#[actix_rt::test]
async fn without_a_cluster_client_requirements_fail_at_once() {
    let (sup, _) = start(setup(vec![broker_client("app")], None));
    let failed = status_until(&sup, "app", "failed", |s| s.state == ServiceState::Failed).await;
    assert!(
        failed
            .failure
            .as_deref()
            .unwrap()
            .contains("[cluster] beacons"),
        "{failed:?}"
    );
    let refused = sup
        .send(AddService(ServiceConfig {
            id: Some("web".into()),
            command: Some("true".into()),
            endpoints: [("http".to_string(), "tcp://x:1".to_string())].into(),
            ..ServiceConfig::default()
        }))
        .await
        .unwrap();
    assert!(
        matches!(&refused, Err(ChildError::Invalid(why)) if why.starts_with("endpoints:") && why.contains("[cluster] beacons")),
        "{refused:?}"
    );
    sup.send(troupe_core::Shutdown).await.unwrap();
}

/// An ipc hub whose `invoke` records what it is sent.
struct FakeHub {
    invoked: Arc<Mutex<Vec<Invoke>>>,
}

impl Actor for FakeHub {
    type Context = Context<Self>;
}

impl Handler<ServiceLifecycle> for FakeHub {
    type Result = ();
    fn handle(&mut self, _: ServiceLifecycle, _: &mut Self::Context) {}
}

impl Handler<PushConfig> for FakeHub {
    type Result = Result<(), ChannelError>;
    fn handle(&mut self, _: PushConfig, _: &mut Self::Context) -> Self::Result {
        Err(ChannelError::NotAlive)
    }
}

impl Handler<Invoke> for FakeHub {
    type Result = Result<Vec<u8>, ChannelError>;
    fn handle(&mut self, msg: Invoke, _: &mut Self::Context) -> Self::Result {
        self.invoked.lock().unwrap().push(msg);
        Ok(b"ok".to_vec())
    }
}

#[actix_rt::test]
async fn notify_sends_the_picture_over_the_service_channel_and_keeps_it_running() {
    let cluster = cluster();
    cluster.set(vec![("broker", vec![hub(1)])]).await;
    let invoked: Arc<Mutex<Vec<Invoke>>> = Arc::default();
    let hub_addr = FakeHub {
        invoked: invoked.clone(),
    }
    .start();
    let channels = ServiceChannels {
        socket_path: "/nonexistent/ipc.sock".into(),
        lifecycle: hub_addr.clone().recipient(),
        push_config: hub_addr.clone().recipient(),
        invoke: hub_addr.recipient(),
    };
    let spec = broker_client("app").with_on_requirement_change(OnRequirementChange::Notify);
    let mut setup = setup(vec![spec], Some(channels));
    setup.cluster = Some(cluster.handle.clone());
    let (sup, _) = start(setup);
    let pid = up(&sup, "app", None).await;
    cluster.set(vec![("broker", vec![])]).await;
    let deadline = Instant::now() + DEADLINE;
    while invoked.lock().unwrap().is_empty() {
        assert!(Instant::now() < deadline, "no notification");
        actix_rt::time::sleep(Duration::from_millis(5)).await;
    }
    let sent = invoked.lock().unwrap()[0].clone();
    assert_eq!(sent.service, "app");
    let payload: serde_json::Value = serde_json::from_slice(&sent.payload).unwrap();
    assert_eq!(
        payload,
        serde_json::json!({"troupe": "requirements", "requirements": {"broker": []}, "unmet": ["broker"]})
    );
    // Still the same process.
    assert_eq!(up(&sup, "app", None).await, pid);
    sup.send(troupe_core::Shutdown).await.unwrap();
}

/// Records the lifecycle events it hears, with when.
struct Listener(Arc<Mutex<Vec<(Instant, ServiceLifecycle)>>>);

impl Actor for Listener {
    type Context = Context<Self>;
}

impl Handler<ServiceLifecycle> for Listener {
    type Result = ();
    fn handle(&mut self, msg: ServiceLifecycle, _: &mut Self::Context) {
        self.0.lock().unwrap().push((Instant::now(), msg));
    }
}

#[actix_rt::test]
async fn endpoints_are_withdrawn_at_a_kill_9_before_the_restart_offers_them_again() {
    let cluster = cluster();
    let endpoints = BTreeMap::from([("http".to_string(), "tcp://127.0.0.1:8080".to_string())]);
    let web = sh("web", "exec sleep 1000", r#"["restart"]"#)
        .with_endpoints(endpoints.clone())
        .with_min_restart_interval(Duration::ZERO);
    let sup = start_with(vec![web], &cluster);
    let heard: Arc<Mutex<Vec<(Instant, ServiceLifecycle)>>> = Arc::default();
    sup.send(SubscribeLifecycle(
        Listener(heard.clone()).start().recipient(),
    ))
    .await
    .unwrap();
    let offer = Told::Offer("web".into(), endpoints);
    cluster.until_told(&offer).await;
    let pid = up(&sup, "web", None).await;
    let killed = Instant::now();
    kill(pid, Signal::SIGKILL);
    let withdrawn = cluster.until_told(&Told::Withdraw("web".into())).await;
    let next = up(&sup, "web", Some(pid)).await;
    // Withdrawn right at the exit event, before the restarted process was offered again.
    let told = cluster.told();
    let withdraw_at = told
        .iter()
        .position(|t| *t == Told::Withdraw("web".into()))
        .unwrap();
    assert_eq!(told[withdraw_at - 1], offer, "{told:?}");
    let deadline = Instant::now() + DEADLINE;
    while !cluster.told()[withdraw_at..].contains(&offer) {
        assert!(Instant::now() < deadline, "not offered again: {told:?}");
        actix_rt::time::sleep(Duration::from_millis(5)).await;
    }
    let exited = heard
        .lock()
        .unwrap()
        .iter()
        .find_map(|(at, e)| match e {
            ServiceLifecycle::Exited { pid: p, .. } if *p == pid => Some(*at),
            _ => None,
        })
        .expect("the subscriber heard the exit");
    let apart = if withdrawn > exited {
        withdrawn - exited
    } else {
        exited - withdrawn
    };
    assert!(apart < Duration::from_millis(50), "{apart:?}");
    assert!(
        withdrawn - killed < Duration::from_secs(2),
        "{:?}",
        withdrawn - killed
    );
    // The subscriber heard both processes start, and the first exit.
    let heard: Vec<(String, u32, bool)> = heard
        .lock()
        .unwrap()
        .iter()
        .map(|(_, e)| match e {
            ServiceLifecycle::Started { id, pid, .. } => (id.clone(), *pid, true),
            ServiceLifecycle::Exited { id, pid } => (id.clone(), *pid, false),
        })
        .collect();
    assert!(heard.contains(&("web".into(), pid, false)), "{heard:?}");
    assert!(heard.contains(&("web".into(), next, true)), "{heard:?}");
    // A stop withdraws them too.
    sup.send(TerminateChild("web".into()))
        .await
        .unwrap()
        .unwrap();
    let withdrawals = || {
        cluster
            .told()
            .iter()
            .filter(|t| **t == Told::Withdraw("web".into()))
            .count()
    };
    let deadline = Instant::now() + DEADLINE;
    while withdrawals() < 2 {
        assert!(Instant::now() < deadline, "not withdrawn at the stop");
        actix_rt::time::sleep(Duration::from_millis(5)).await;
    }
    sup.send(troupe_core::Shutdown).await.unwrap();
}

/// A broker that says a worker is ready once `ready` is set, and records the questions.
struct FakeBroker {
    ready: Arc<Mutex<bool>>,
    asked: Arc<Mutex<Vec<BrokerWorkers>>>,
}

impl Actor for FakeBroker {
    type Context = Context<Self>;
}

impl Handler<BrokerWorkers> for FakeBroker {
    type Result = MessageResult<BrokerWorkers>;
    fn handle(&mut self, msg: BrokerWorkers, _: &mut Self::Context) -> Self::Result {
        self.asked.lock().unwrap().push(msg);
        MessageResult(BrokerWorkersAnswer {
            known: true,
            ready: *self.ready.lock().unwrap(),
            workers: 2,
            queue_depth: 3,
        })
    }
}

#[actix_rt::test]
async fn ready_broker_waits_for_the_brokers_word_and_offers_only_then() {
    let cluster = cluster();
    let endpoints = BTreeMap::from([("api".to_string(), "tcp://127.0.0.1:9".to_string())]);
    let spec = sh("echo", "exec sleep 1000", "[]")
        .with_ready(ReadyCheck::Broker("echo".into()))
        .with_endpoints(endpoints.clone());
    let sup = start_with(vec![spec], &cluster);
    // No broker attached: starting (the start timeout bounds it).
    let starting = status_until(&sup, "echo", "starting", |s| {
        s.state == ServiceState::Starting && s.pid.is_some()
    })
    .await;
    let pid = starting.pid.unwrap();
    // Attached, not ready yet: still starting, asked about this very process.
    let ready = Arc::new(Mutex::new(false));
    let asked: Arc<Mutex<Vec<BrokerWorkers>>> = Arc::default();
    let broker = FakeBroker {
        ready: ready.clone(),
        asked: asked.clone(),
    }
    .start();
    sup.send(AttachBroker(broker.recipient())).await.unwrap();
    let deadline = Instant::now() + DEADLINE;
    while asked.lock().unwrap().is_empty() {
        assert!(Instant::now() < deadline, "the broker was never asked");
        actix_rt::time::sleep(Duration::from_millis(5)).await;
    }
    let question = asked.lock().unwrap()[0].clone();
    assert_eq!(
        (
            question.broker_service.as_str(),
            question.service_id.as_str(),
            question.pid
        ),
        ("echo", "echo", pid)
    );
    let status = sup
        .send(GetServiceStatus("echo".into()))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(status.state, ServiceState::Starting);
    assert!(!cluster.told().iter().any(|t| matches!(t, Told::Offer(..))));
    // The worker says READY: ready, then offered.
    *ready.lock().unwrap() = true;
    let status = status_until(&sup, "echo", "ready", |s| s.state == ServiceState::Ready).await;
    assert_eq!(status.pid, Some(pid));
    let shown = status.broker.unwrap();
    assert_eq!(
        (
            shown.service.as_str(),
            shown.ready,
            shown.workers,
            shown.queue_depth
        ),
        ("echo", true, 2, 3)
    );
    cluster
        .until_told(&Told::Offer("echo".into(), endpoints))
        .await;
    sup.send(troupe_core::Shutdown).await.unwrap();
}

#[actix_rt::test]
async fn the_role_publishes_a_supervisor_link_and_uses_the_cluster_handle() {
    let cluster = cluster();
    cluster.set(vec![("broker", vec![hub(1)])]).await;
    let (ctx, _) = role_context();
    ctx.published.publish(cluster.handle.clone());
    let config: SupervisorConfig = serde_json::from_value(serde_json::json!({
        "services": [{
            "id": "app",
            "command": "sh",
            "args": ["-c", "echo \"GOT $TROUPE_REQ_BROKER_NODES $1\"; exec sleep 1000", "sh", "${cluster.broker.echo.backend}"],
            "requires": ["broker"],
        }]
    }))
    .unwrap();
    let role = SupervisorRole::start(config, ctx.clone()).await.unwrap();
    let link = ctx.published.lookup::<SupervisorLink>().expect("published");
    let heard: Arc<Mutex<Vec<(Instant, ServiceLifecycle)>>> = Arc::default();
    link.subscribe
        .send(SubscribeLifecycle(
            Listener(heard.clone()).start().recipient(),
        ))
        .await
        .unwrap();
    let sup = role.address().clone();
    let pid = up(&sup, "app", None).await;
    assert_eq!(
        line_of(&sup, "app", pid, "GOT").await,
        "GOT hub-1 tcp://h1:5556"
    );
    sup.send(RestartService("app".into()))
        .await
        .unwrap()
        .unwrap();
    let deadline = Instant::now() + DEADLINE;
    while !heard
        .lock()
        .unwrap()
        .iter()
        .any(|(_, e)| matches!(e, ServiceLifecycle::Exited { pid: p, .. } if *p == pid))
    {
        assert!(Instant::now() < deadline, "no exit heard");
        actix_rt::time::sleep(Duration::from_millis(5)).await;
    }
    role.stop().await;
    // The watch ends with the supervisor.
    cluster.until_told(&Told::Unwatch).await;
}
