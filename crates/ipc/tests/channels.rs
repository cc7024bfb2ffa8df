//! Service channels driven through the `ServiceChannels` the role publishes, as the
//! supervisor drives them, with a real service process (tests/python/ipc_service.py) that
//! this test starts, kills and restarts itself.

mod support;

use std::path::Path;
use std::time::{Duration, Instant};

use futures::executor::block_on;
use support::{eventually, python, quick_config, ChildProc, TestHub, WAIT};
use troupe_core::services::{
    ChannelError, Invoke, PushConfig, ServiceLifecycle, ENV_IPC_SOCKET, ENV_SERVICE_ID,
};
use troupe_ipc::client::{Client, ClientError};
use troupe_ipc::events::ServiceEvent;
use troupe_ipc::wire::ErrorCode;

fn start_service(hub: &TestHub, id: &str) -> ChildProc {
    let mut cmd = python("ipc_service.py");
    cmd.env(ENV_SERVICE_ID, id).env(ENV_IPC_SOCKET, &hub.path);
    ChildProc::spawn(cmd)
}

fn started(hub: &TestHub, id: &str, pid: u32, config_path: &Path) {
    hub.channels.lifecycle.do_send(ServiceLifecycle::Started {
        id: id.into(),
        pid,
        config_path: config_path.to_path_buf(),
    });
}

fn invoke(
    hub: &TestHub,
    id: &str,
    payload: &[u8],
    timeout: Duration,
) -> Result<Vec<u8>, ChannelError> {
    block_on(hub.channels.invoke.send(Invoke {
        service: id.into(),
        payload: payload.to_vec(),
        timeout,
    }))
    .expect("hub alive")
}

fn push(hub: &TestHub, id: &str, config: serde_json::Value) -> Result<(), ChannelError> {
    block_on(hub.channels.push_config.send(PushConfig {
        service: id.into(),
        config,
        timeout: WAIT,
    }))
    .expect("hub alive")
}

#[test]
fn a_service_attaches_gets_config_answers_invokes_dies_mid_invoke_and_reattaches() {
    let hub = TestHub::start(quick_config());
    let config_path = hub.dir.path().join("svc-a").join("config.json");

    // No channel yet: the caller is told at once.
    assert_eq!(
        push(&hub, "svc-a", serde_json::json!({})),
        Err(ChannelError::NotAlive)
    );

    let mut service = start_service(&hub, "svc-a");
    started(&hub, "svc-a", service.pid(), &config_path);
    service.wait_for("attached svc-a", WAIT);
    service.wait_for("stored-config <none>", WAIT);

    // Metrics and events reach the event stream.
    let events = eventually(WAIT, || {
        let events = hub.events.lock().unwrap().clone();
        (events.len() >= 2).then_some(events)
    });
    assert_eq!(
        events[0],
        ServiceEvent::Metric {
            service: "svc-a".into(),
            device: "dev-1".into(),
            route_key: "temperature".into(),
            data: b"21.5".to_vec()
        }
    );
    assert!(matches!(
        &events[1],
        ServiceEvent::Event { event_type: 7, .. }
    ));

    // A refused config is not persisted; an acknowledged one is.
    let refused = push(&hub, "svc-a", serde_json::json!({"reject": true}));
    assert!(
        matches!(refused, Err(ChannelError::Refused(_))),
        "{refused:?}"
    );
    assert!(!config_path.exists());
    push(&hub, "svc-a", serde_json::json!({"threshold": 3})).unwrap();
    service.wait_for("config-applied", WAIT);
    let saved: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&config_path).unwrap()).unwrap();
    assert_eq!(saved, serde_json::json!({"threshold": 3}));

    assert_eq!(invoke(&hub, "svc-a", b"hi", WAIT).unwrap(), b"echo:hi");

    // A second attach, from a process that is not the service's, is refused.
    let mut intruder = Client::connect(&hub.path).unwrap();
    intruder.register(None).unwrap();
    match intruder.attach("svc-a") {
        Err(ClientError::Hub { code, message }) => {
            assert_eq!(code, ErrorCode::NotPermitted, "{message}")
        }
        other => panic!("{other:?}"),
    }

    // Killed mid-invoke: the caller gets an error at once, not at the timeout.
    let caller = {
        let channels = hub.channels.clone();
        std::thread::spawn(move || {
            let since = Instant::now();
            let result = block_on(channels.invoke.send(Invoke {
                service: "svc-a".into(),
                payload: b"hang".to_vec(),
                timeout: Duration::from_secs(60),
            }))
            .unwrap();
            (result, since.elapsed())
        })
    };
    service.wait_for("hanging", WAIT);
    let old_pid = service.pid();
    service.kill();
    let (result, took) = caller.join().unwrap();
    assert!(result.is_err(), "{result:?}");
    assert!(
        took < Duration::from_secs(60),
        "the caller waited for the timeout"
    );
    hub.channels.lifecycle.do_send(ServiceLifecycle::Exited {
        id: "svc-a".into(),
        pid: old_pid,
    });
    eventually(WAIT, || {
        (invoke(&hub, "svc-a", b"x", WAIT) == Err(ChannelError::NotAlive)).then_some(())
    });

    // The restarted process attaches again and finds its persisted config.
    let mut restarted = start_service(&hub, "svc-a");
    started(&hub, "svc-a", restarted.pid(), &config_path);
    restarted.wait_for("attached svc-a", WAIT);
    let stored = restarted.wait_for("stored-config", WAIT);
    assert!(stored.contains("\"threshold\":3"), "{stored}");
    assert_eq!(
        invoke(&hub, "svc-a", b"pid", WAIT).unwrap(),
        restarted.pid().to_string().as_bytes()
    );
}

#[test]
fn exit_fails_calls_in_flight_at_once_with_service_exited() {
    let hub = TestHub::start(quick_config());
    let config_path = hub.dir.path().join("svc-b").join("config.json");
    let mut service = start_service(&hub, "svc-b");
    started(&hub, "svc-b", service.pid(), &config_path);
    service.wait_for("attached svc-b", WAIT);
    let caller = {
        let channels = hub.channels.clone();
        std::thread::spawn(move || {
            block_on(channels.invoke.send(Invoke {
                service: "svc-b".into(),
                payload: b"hang".to_vec(),
                timeout: Duration::from_secs(60),
            }))
            .unwrap()
        })
    };
    service.wait_for("hanging", WAIT);
    // The supervisor's report may come before the socket closes (a process that exits
    // while something else holds its socket open): the call fails on the report itself.
    hub.channels.lifecycle.do_send(ServiceLifecycle::Exited {
        id: "svc-b".into(),
        pid: service.pid(),
    });
    assert_eq!(caller.join().unwrap(), Err(ChannelError::ServiceExited));
}

#[test]
fn invoke_without_an_answer_times_out() {
    let hub = TestHub::start(quick_config());
    let config_path = hub.dir.path().join("svc-c").join("config.json");
    let mut service = start_service(&hub, "svc-c");
    started(&hub, "svc-c", service.pid(), &config_path);
    service.wait_for("attached svc-c", WAIT);
    let timeout = Duration::from_millis(300);
    assert_eq!(
        invoke(&hub, "svc-c", b"hang", timeout),
        Err(ChannelError::Timeout(timeout))
    );
}
