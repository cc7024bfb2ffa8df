//! The core's decisions about cluster requirements and endpoints: waiting, the timeout,
//! starting once met, `on_requirement_change`, offers and withdrawals, and the watch set.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use troupe_core::cluster::Provider;

use super::*;
use crate::spec::ReadyCheck;

struct Clock(Instant, Duration);

impl Clock {
    fn new() -> Self {
        Clock(Instant::now(), Duration::ZERO)
    }
    fn now(&self) -> Instant {
        self.0 + self.1
    }
    fn advance(&mut self, ms: u64) {
        self.1 += Duration::from_millis(ms);
    }
}

fn provider(node: &str, endpoints: &[(&str, &str)]) -> Provider {
    Provider::new(node, endpoints)
}

fn picture(entries: Vec<(&str, Vec<Provider>)>) -> BTreeMap<String, Vec<Provider>> {
    entries
        .into_iter()
        .map(|(r, p)| (r.to_string(), p))
        .collect()
}

fn hub(n: u32) -> Provider {
    provider(
        &format!("hub-{n}"),
        &[("frontend", &format!("tcp://h{n}:5555"))],
    )
}

/// A process child that requires `requires`, restarted by its plan on a crash.
fn needs(id: &str, requires: &[&str]) -> ChildSpec {
    ChildSpec::process(id, "/bin/true")
        .with_plan(serde_json::from_str(r#"["restart"]"#).unwrap())
        .with_requires(requires.iter().copied())
}

/// The node's supervisor with a cluster client, holding `specs` (not started), whose watch
/// (see [`SupervisorCore::take_watch_change`]) is not made yet.
fn unwatched(specs: Vec<ChildSpec>, clock: &Clock) -> SupervisorCore {
    let mut core = SupervisorCore::new(DefaultSpec::default(), 10, clock.now())
        .with_escalation_to_node(true)
        .with_cluster(true);
    for spec in specs {
        core.add(spec).unwrap();
    }
    core
}

/// As [`unwatched`], with the watch made as the actor makes it.
fn core_with(specs: Vec<ChildSpec>, clock: &Clock) -> SupervisorCore {
    let mut core = unwatched(specs, clock);
    core.take_watch_change();
    core
}

fn started(commands: &[Command]) -> Vec<(String, u64)> {
    commands
        .iter()
        .filter_map(|c| match c {
            Command::Start { id, generation } => Some((id.clone(), *generation)),
            _ => None,
        })
        .collect()
}

fn stops(commands: &[Command]) -> Vec<u64> {
    commands
        .iter()
        .filter_map(|c| match c {
            Command::Stop { generation, .. } => Some(*generation),
            _ => None,
        })
        .collect()
}

fn timeouts(commands: &[Command]) -> Vec<(u64, Duration)> {
    commands
        .iter()
        .filter_map(|c| match c {
            Command::ArmRequirementsTimeout {
                generation, delay, ..
            } => Some((*generation, *delay)),
            _ => None,
        })
        .collect()
}

fn status(core: &SupervisorCore, id: &str, clock: &Clock) -> ServiceStatus {
    core.service_status(id, clock.now()).unwrap()
}

/// Starts `id` (waiting for nothing) and reports it spawned as `pid`: its generation.
fn run(core: &mut SupervisorCore, commands: &[Command], pid: u32, clock: &Clock) -> u64 {
    let [(id, generation)] = &started(commands)[..] else {
        panic!("one start expected: {commands:?}")
    };
    core.on_spawned(id, *generation, Some(pid), clock.now());
    *generation
}

#[test]
fn a_child_waits_for_its_requirements_and_starts_once_they_have_providers() {
    let clock = Clock::new();
    let mut core = unwatched(vec![needs("app", &["broker", "db"])], &clock);
    assert_eq!(
        core.take_watch_change(),
        Some(vec!["broker".to_string(), "db".to_string()])
    );
    let commands = core.start_all(clock.now());
    assert!(started(&commands).is_empty(), "{commands:?}");
    let [(wait, delay)] = timeouts(&commands)[..] else {
        panic!("{commands:?}")
    };
    assert_eq!(delay, Duration::from_secs(60));
    let app = status(&core, "app", &clock);
    assert_eq!(app.state, ServiceState::WaitingForRequirements);
    assert_eq!(app.waiting_for.as_deref(), Some("broker, db"));
    assert_eq!(app.requirements.unwrap().unmet, ["broker", "db"]);
    assert_eq!(
        core.which_children()[0].status,
        ChildStatus::WaitingForRequirements(vec!["broker".into(), "db".into()])
    );
    // One of two: still waiting, and the status says which one is missing.
    let commands = core.on_providers(
        picture(vec![("broker", vec![hub(1)]), ("db", vec![])]),
        true,
        clock.now(),
    );
    assert!(commands.is_empty(), "{commands:?}");
    let app = status(&core, "app", &clock);
    assert_eq!(app.waiting_for.as_deref(), Some("db"));
    assert_eq!(
        app.requirements.unwrap().providers["broker"],
        ["hub-1".to_string()]
    );
    // Both: started as the generation the wait stood for.
    let commands = core.on_providers(
        picture(vec![(
            "db",
            vec![provider("db-1", &[("sql", "tcp://d:1")])],
        )]),
        true,
        clock.now(),
    );
    assert_eq!(started(&commands), [("app".to_string(), wait)]);
    let view = core.requirements_view("app");
    assert_eq!(view["broker"], [hub(1)]);
    assert_eq!(view["db"][0].node, "db-1");
    // The timeout of that wait no longer does anything.
    assert!(core
        .on_requirements_timeout("app", wait, clock.now())
        .is_empty());
    core.on_spawned("app", wait, Some(10), clock.now());
    assert_eq!(status(&core, "app", &clock).state, ServiceState::Running);
}

#[test]
fn a_wait_that_times_out_fails_the_child_and_an_operator_start_waits_again() {
    let mut clock = Clock::new();
    let mut core = core_with(
        vec![needs("app", &["broker"]).with_requirements_timeout(Duration::from_secs(5))],
        &clock,
    );
    let commands = core.start_all(clock.now());
    let [(wait, delay)] = timeouts(&commands)[..] else {
        panic!("{commands:?}")
    };
    assert_eq!(delay, Duration::from_secs(5));
    clock.advance(5_000);
    assert!(core
        .on_requirements_timeout("app", wait + 1, clock.now())
        .is_empty());
    assert_eq!(
        status(&core, "app", &clock).state,
        ServiceState::WaitingForRequirements
    );
    core.on_requirements_timeout("app", wait, clock.now());
    let failed = status(&core, "app", &clock);
    assert_eq!(failed.state, ServiceState::Failed);
    assert_eq!(
        failed.failure.as_deref(),
        Some("requirements not met within 5s: broker")
    );
    assert_eq!(core.failure("app").as_deref(), failed.failure.as_deref());
    // Waiting is not a crash: nothing counted.
    assert_eq!(
        (failed.restarts, failed.cycle, failed.last_exit),
        (0, 0, None)
    );
    // Providers arriving now do not start a failed child...
    assert!(core
        .on_providers(picture(vec![("broker", vec![])]), true, clock.now())
        .is_empty());
    // ...an operator's start makes it wait again, with a new timeout.
    let commands = core.restart_child("app", clock.now()).unwrap();
    let [(again, _)] = timeouts(&commands)[..] else {
        panic!("{commands:?}")
    };
    assert!(again > wait);
    assert!(core.waits_for_requirements("app"));
    let commands = core.on_providers(picture(vec![("broker", vec![hub(1)])]), true, clock.now());
    assert_eq!(started(&commands), [("app".to_string(), again)]);
    // An operator's restart of a waiting child waits again too.
    let mut core = core_with(vec![needs("w", &["broker"])], &clock);
    core.start_all(clock.now());
    let (commands, generation) = core.restart_service("w", clock.now()).unwrap();
    assert_eq!(timeouts(&commands), [(generation, Duration::from_secs(60))]);
    assert!(!core.awaits_start("w", generation) && core.waits_for_requirements("w"));
    // terminate_child takes it out of the wait; delete then works.
    assert_eq!(core.terminate_child("w"), Ok(vec![]));
    assert_eq!(status(&core, "w", &clock).state, ServiceState::Waiting);
    assert!(core.delete_child("w").is_ok());
}

#[test]
fn a_zero_timeout_waits_for_ever() {
    let clock = Clock::new();
    let mut core = core_with(
        vec![needs("app", &["broker"]).with_requirements_timeout(Duration::ZERO)],
        &clock,
    );
    let commands = core.start_all(clock.now());
    assert!(commands.is_empty(), "{commands:?}");
    assert!(core.waits_for_requirements("app"));
}

#[test]
fn without_a_cluster_client_requirements_and_endpoints_cannot_start() {
    let clock = Clock::new();
    let mut core =
        SupervisorCore::new(DefaultSpec::default(), 10, clock.now()).with_escalation_to_node(true);
    core.add(needs("app", &["broker"])).unwrap();
    core.add(ChildSpec::process("web", "/bin/true").with_endpoints([("http", "tcp://x:80")]))
        .unwrap();
    core.add(ChildSpec::process("plain", "/bin/true")).unwrap();
    let commands = core.start_all(clock.now());
    assert_eq!(started(&commands), [("plain".to_string(), 3)]);
    let app = status(&core, "app", &clock);
    assert_eq!(app.state, ServiceState::Failed);
    assert_eq!(
        app.failure.as_deref(),
        Some(
            "requires: needs the node's cluster client: set [cluster] beacons in the node's config"
        )
    );
    assert!(status(&core, "web", &clock)
        .failure
        .unwrap()
        .starts_with("endpoints: needs the node's cluster client"));
    assert!(matches!(
        core.restart_child("app", clock.now()),
        Err(ChildError::Failed(_, why)) if why.contains("[cluster] beacons")
    ));
    // Through the API: refused at once.
    assert!(matches!(
        core.start_child(needs("api", &["broker"]), clock.now()),
        Err(ChildError::Invalid(why)) if why.contains("[cluster] beacons")
    ));
}

#[test]
fn restart_restarts_a_running_child_on_a_change_without_counting_it() {
    let mut clock = Clock::new();
    let mut core = core_with(vec![needs("app", &["broker"])], &clock);
    core.start_all(clock.now());
    let commands = core.on_providers(picture(vec![("broker", vec![hub(1)])]), true, clock.now());
    let g = run(&mut core, &commands, 100, &clock);
    // The same picture again (a provider of another resource changed): nothing.
    assert!(core
        .on_providers(
            picture(vec![("broker", vec![hub(1)]), ("other", vec![hub(3)])]),
            true,
            clock.now()
        )
        .is_empty());
    // A second provider: stopped (not a crash) and started again at once with the new view.
    clock.advance(10);
    let commands = core.on_providers(
        picture(vec![("broker", vec![hub(1), hub(2)])]),
        true,
        clock.now(),
    );
    assert_eq!(stops(&commands), [g]);
    assert_eq!(status(&core, "app", &clock).state, ServiceState::Stopping);
    let commands = core.on_exit("app", g, ExitReason::Signaled(15), clock.now());
    let g2 = run(&mut core, &commands, 101, &clock);
    assert!(g2 > g);
    assert_eq!(core.requirements_view("app")["broker"].len(), 2);
    let app = status(&core, "app", &clock);
    assert_eq!(
        (app.state, app.restarts, app.plan_position),
        (ServiceState::Running, 0, 0)
    );
    assert!(app.last_exit.unwrap().requested);
    // A provider's endpoints changing is a change too.
    let moved = provider("hub-1", &[("frontend", "tcp://elsewhere:1")]);
    let commands = core.on_providers(
        picture(vec![("broker", vec![moved, hub(2)])]),
        true,
        clock.now(),
    );
    assert_eq!(stops(&commands), [g2]);
}

#[test]
fn restart_stops_a_child_whose_requirement_is_lost_and_starts_it_when_it_returns() {
    let mut clock = Clock::new();
    let mut core = core_with(vec![needs("app", &["broker"])], &clock);
    core.start_all(clock.now());
    let commands = core.on_providers(picture(vec![("broker", vec![hub(1)])]), true, clock.now());
    let mut g = run(&mut core, &commands, 100, &clock);
    for (round, (lost, reachable)) in [
        (picture(vec![("broker", vec![])]), true),
        // Beacons unreachable: nothing is known, which counts as lost.
        (picture(vec![("broker", vec![hub(1)])]), false),
    ]
    .into_iter()
    .enumerate()
    {
        clock.advance(1_000);
        let commands = core.on_providers(lost, reachable, clock.now());
        assert_eq!(stops(&commands), [g], "round {round}");
        let commands = core.on_exit("app", g, ExitReason::Signaled(15), clock.now());
        assert!(started(&commands).is_empty(), "round {round}: {commands:?}");
        let [(wait, delay)] = timeouts(&commands)[..] else {
            panic!("round {round}: {commands:?}")
        };
        assert_eq!(delay, Duration::from_secs(60));
        assert_eq!(
            status(&core, "app", &clock).waiting_for.as_deref(),
            Some("broker")
        );
        let commands =
            core.on_providers(picture(vec![("broker", vec![hub(2)])]), true, clock.now());
        assert_eq!(
            started(&commands),
            [("app".to_string(), wait)],
            "round {round}"
        );
        core.on_spawned("app", wait, Some(200), clock.now());
        g = wait;
    }
    // Never a crash, never counted.
    let app = status(&core, "app", &clock);
    assert_eq!(
        (app.restarts, app.cycle, app.cycles_in_period),
        (0, 0, Some(0))
    );
}

#[test]
fn notify_sends_the_new_picture_and_keeps_the_child_running() {
    let clock = Clock::new();
    let mut core = core_with(
        vec![
            needs("app", &["broker", "db"]).with_on_requirement_change(OnRequirementChange::Notify)
        ],
        &clock,
    );
    core.start_all(clock.now());
    let db = provider("db-1", &[("sql", "tcp://d:1")]);
    let commands = core.on_providers(
        picture(vec![("broker", vec![hub(1)]), ("db", vec![db.clone()])]),
        true,
        clock.now(),
    );
    run(&mut core, &commands, 100, &clock);
    let commands = core.on_providers(
        picture(vec![("broker", vec![hub(1), hub(2)]), ("db", vec![])]),
        true,
        clock.now(),
    );
    let [Command::NotifyRequirements { id, payload }] = &commands[..] else {
        panic!("{commands:?}")
    };
    assert_eq!(id, "app");
    assert_eq!(
        payload,
        &serde_json::json!({
            "troupe": "requirements",
            "requirements": {
                "broker": [
                    {"node": "hub-1", "endpoints": {"frontend": "tcp://h1:5555"}},
                    {"node": "hub-2", "endpoints": {"frontend": "tcp://h2:5555"}},
                ],
                "db": [],
            },
            "unmet": ["db"],
        })
    );
    assert_eq!(status(&core, "app", &clock).state, ServiceState::Running);
    // Told once per change.
    assert!(core
        .on_providers(picture(vec![("db", vec![])]), true, clock.now())
        .is_empty());
    let commands = core.on_providers(picture(vec![("db", vec![db])]), true, clock.now());
    assert!(
        matches!(&commands[..], [Command::NotifyRequirements { payload, .. }] if payload["unmet"] == serde_json::json!([])),
        "{commands:?}"
    );
}

#[test]
fn ignore_does_nothing() {
    let clock = Clock::new();
    let mut core = core_with(
        vec![needs("app", &["broker"]).with_on_requirement_change(OnRequirementChange::Ignore)],
        &clock,
    );
    core.start_all(clock.now());
    let commands = core.on_providers(picture(vec![("broker", vec![hub(1)])]), true, clock.now());
    run(&mut core, &commands, 100, &clock);
    for change in [vec![hub(1), hub(2)], vec![]] {
        let commands = core.on_providers(picture(vec![("broker", change)]), true, clock.now());
        assert!(commands.is_empty(), "{commands:?}");
    }
    assert_eq!(status(&core, "app", &clock).state, ServiceState::Running);
}

#[test]
fn endpoints_are_offered_while_the_child_runs_and_withdrawn_before_anything_else() {
    let mut clock = Clock::new();
    let endpoints = [("http", "tcp://127.0.0.1:8080")];
    let offer = Command::Offer {
        id: "web".into(),
        endpoints: BTreeMap::from([("http".to_string(), "tcp://127.0.0.1:8080".to_string())]),
    };
    let withdraw = Command::Withdraw { id: "web".into() };
    let web = ChildSpec::process("web", "/bin/true")
        .with_plan(serde_json::from_str(r#"["restart"]"#).unwrap())
        .with_endpoints(endpoints);
    let mut core = core_with(vec![web.clone()], &clock);
    let commands = core.start_all(clock.now());
    let [(_, g)] = started(&commands)[..] else {
        panic!("{commands:?}")
    };
    // No readiness check: offered as soon as it runs.
    assert_eq!(
        core.on_spawned("web", g, Some(100), clock.now()),
        std::slice::from_ref(&offer)
    );
    // Its exit withdraws them first, then restarts it (and it is offered again).
    clock.advance(1_000);
    let commands = core.on_exit("web", g, ExitReason::Signaled(9), clock.now());
    assert_eq!(commands[0], withdraw);
    let [(_, g2)] = started(&commands)[..] else {
        panic!("{commands:?}")
    };
    assert_eq!(
        core.on_spawned("web", g2, Some(101), clock.now()),
        std::slice::from_ref(&offer)
    );
    // A stop withdraws them before the stop; its exit does not withdraw twice.
    let commands = core.terminate_child("web").unwrap();
    assert_eq!(commands[0], withdraw);
    assert_eq!(stops(&commands), [g2]);
    assert!(!core
        .on_exit("web", g2, ExitReason::Signaled(15), clock.now())
        .contains(&withdraw));

    // With a readiness check: offered once ready, not before; an exit before it is not
    // withdrawn (nothing was offered).
    let ready = web.clone().with_ready(ReadyCheck::Broker("echo".into()));
    let mut core = core_with(vec![ready], &clock);
    let g = started(&core.start_all(clock.now()))[0].1;
    assert!(core.on_spawned("web", g, Some(100), clock.now()).is_empty());
    assert_eq!(status(&core, "web", &clock).state, ServiceState::Starting);
    clock.advance(1_000);
    let commands = core.on_exit("web", g, ExitReason::Exited(1), clock.now());
    assert!(!commands.contains(&withdraw), "{commands:?}");
    let g = started(&commands)[0].1;
    core.on_spawned("web", g, Some(101), clock.now());
    assert_eq!(core.on_ready("web", g, clock.now()), [offer]);
    assert_eq!(status(&core, "web", &clock).state, ServiceState::Ready);
    // Shutdown withdraws too.
    let commands = core.shutdown();
    assert_eq!(commands[0], withdraw);
    assert_eq!(stops(&commands), [g]);
}

#[test]
fn the_watch_follows_the_union_of_requirements() {
    let clock = Clock::new();
    let mut core = unwatched(
        vec![
            needs("a", &["broker", "db"]),
            needs("b", &["broker"]),
            ChildSpec::process("c", "/bin/true"),
        ],
        &clock,
    );
    assert_eq!(
        core.take_watch_change(),
        Some(vec!["broker".to_string(), "db".to_string()])
    );
    assert_eq!(core.take_watch_change(), None);
    core.start_all(clock.now());
    core.on_providers(
        picture(vec![("broker", vec![hub(1)]), ("db", vec![])]),
        true,
        clock.now(),
    );
    // A child without requirements changes nothing; one with the same ones neither.
    core.start_child(ChildSpec::process("d", "/bin/true"), clock.now())
        .unwrap();
    core.start_child(needs("e", &["db"]), clock.now()).unwrap();
    assert_eq!(core.take_watch_change(), None);
    // Removing the children that required db: the watch shrinks, db is forgotten.
    assert!(core.retire("a").is_empty());
    assert_eq!(core.take_watch_change(), None);
    assert!(core.retire("e").is_empty());
    assert_eq!(core.take_watch_change(), Some(vec!["broker".to_string()]));
    // A late report about db (from the replaced watch) is ignored...
    core.on_providers(
        picture(vec![("db", vec![provider("db-1", &[])])]),
        true,
        clock.now(),
    );
    // ...so a new child requiring db again waits until db is reported anew.
    core.start_child(needs("f", &["db"]), clock.now()).unwrap();
    assert_eq!(
        core.take_watch_change(),
        Some(vec!["broker".to_string(), "db".to_string()])
    );
    assert_eq!(
        status(&core, "f", &clock).waiting_for.as_deref(),
        Some("db")
    );
    // Every child gone: nothing to watch.
    for id in ["b", "c", "d", "f"] {
        // Those that run are forgotten once stopped.
        for generation in stops(&core.retire(id)) {
            core.on_exit(id, generation, ExitReason::Signaled(15), clock.now());
        }
    }
    assert_eq!(core.take_watch_change(), Some(vec![]));
}

#[test]
fn after_and_requirements_combine() {
    let clock = Clock::new();
    let mut core = core_with(
        vec![
            needs("a", &["broker"]),
            ChildSpec {
                after: vec!["a".into()],
                ..ChildSpec::process("b", "/bin/true")
            },
        ],
        &clock,
    );
    assert!(started(&core.start_all(clock.now())).is_empty());
    assert_eq!(
        status(&core, "b", &clock).waiting_for.as_deref(),
        Some("after")
    );
    let commands = core.on_providers(picture(vec![("broker", vec![hub(1)])]), true, clock.now());
    let g = run(&mut core, &commands, 100, &clock);
    assert_eq!(g, core.service_status("a", clock.now()).unwrap().generation);
    assert_eq!(status(&core, "b", &clock).state, ServiceState::Starting);
}

#[test]
fn a_child_being_stopped_or_restarting_is_left_to_its_next_start() {
    let mut clock = Clock::new();
    let mut core = core_with(
        vec![needs("app", &["broker"])
            .with_plan(serde_json::from_str(r#"[{"restart_after_ms": 500}]"#).unwrap())],
        &clock,
    );
    core.start_all(clock.now());
    let commands = core.on_providers(picture(vec![("broker", vec![hub(1)])]), true, clock.now());
    let g = run(&mut core, &commands, 100, &clock);
    // It crashes: a restart timer is armed. The requirement goes away meanwhile: nothing.
    let commands = core.on_exit("app", g, ExitReason::Exited(1), clock.now());
    let Some(Command::ArmRestart { generation, .. }) = commands.last().cloned() else {
        panic!("{commands:?}")
    };
    assert!(core
        .on_providers(picture(vec![("broker", vec![])]), true, clock.now())
        .is_empty());
    // The timer fires: it waits for the requirement instead of starting.
    clock.advance(500);
    let commands = core.on_restart_timer("app", generation, clock.now());
    assert!(started(&commands).is_empty(), "{commands:?}");
    assert_eq!(timeouts(&commands).len(), 1);
    assert_eq!(status(&core, "app", &clock).restarts, 1);
}
