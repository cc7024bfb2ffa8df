//! The supervisor's actix API against real child processes, in-process: director's calls and
//! error cases, nested supervisors, and the ipc service-channel contract.

mod common;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use actix::prelude::*;
use common::*;
use nix::sys::signal::Signal;
use troupe_core::services::{ChannelError, Invoke, PushConfig, ServiceChannels, ServiceLifecycle};
use troupe_supervisor::messages::*;
use troupe_supervisor::{
    nested_supervisor, ChildError, ChildStatus, Count, ExitReason, Plan, PlanElement, PlanFn,
};

#[actix_rt::test]
async fn wait_then_restart_child() {
    let (sup, _) = start(setup(vec![sh("w", "exec sleep 1000", r#"["wait"]"#)], None));
    let pid = running(&sup, "w").await.unwrap();
    kill(pid, Signal::SIGKILL);
    until(&sup, "w", "waiting", |c| {
        c.is_some_and(|c| c.status == ChildStatus::Waiting)
    })
    .await;
    assert_eq!(
        sup.send(GetPid("w".into())).await.unwrap(),
        Err(ChildError::NotFound("w".into()))
    );
    let new = sup.send(RestartChild("w".into())).await.unwrap().unwrap();
    assert_ne!(new, Some(pid));
    assert_eq!(
        sup.send(GetPid("w".into())).await.unwrap(),
        Ok(new.unwrap())
    );
    assert_eq!(
        sup.send(RestartChild("w".into())).await.unwrap(),
        Err(ChildError::Running("w".into()))
    );
    sup.send(troupe_core::Shutdown).await.unwrap();
}

#[actix_rt::test]
async fn terminate_keeps_the_spec_and_the_error_cases_match_director() {
    let (sup, requests) = start(setup(vec![sh("t", "exec sleep 1000", "[]")], None));
    let pid = running(&sup, "t").await.unwrap();
    assert_eq!(
        sup.send(StartChild(sh("t", "true", "[]"))).await.unwrap(),
        Err(ChildError::AlreadyStarted("t".into()))
    );
    assert_eq!(
        sup.send(DeleteChild("t".into())).await.unwrap(),
        Err(ChildError::Running("t".into()))
    );
    // terminate_child answers once the process is gone; an empty plan does not escalate.
    sup.send(TerminateChild("t".into())).await.unwrap().unwrap();
    assert!(!alive(pid));
    assert_eq!(child(&sup, "t").await.unwrap().status, ChildStatus::Waiting);
    assert!(requests.is_empty());
    assert_eq!(
        sup.send(StartChild(sh("t", "true", "[]"))).await.unwrap(),
        Err(ChildError::AlreadyPresent("t".into()))
    );
    assert!(sup.send(GetChildSpec("t".into())).await.unwrap().is_ok());
    sup.send(DeleteChild("t".into())).await.unwrap().unwrap();
    for missing in [
        sup.send(TerminateChild("t".into())).await.unwrap(),
        sup.send(DeleteChild("t".into())).await.unwrap(),
    ] {
        assert_eq!(missing, Err(ChildError::NotFound("t".into())));
    }
    assert_eq!(
        sup.send(RestartChild("t".into())).await.unwrap(),
        Err(ChildError::NotFound("t".into()))
    );
    assert_eq!(
        sup.send(GetPlan("t".into())).await.unwrap(),
        Err(ChildError::NotFound("t".into()))
    );
    sup.send(troupe_core::Shutdown).await.unwrap();
}

#[actix_rt::test]
async fn start_child_get_pids_count_and_change_plan() {
    let (sup, requests) = start(setup(vec![], None));
    let pid = sup
        .send(StartChild(sh("a", "exec sleep 1000", r#"["restart"]"#)))
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    running(&sup, "a").await;
    assert_eq!(sup.send(GetPids).await.unwrap(), [("a".to_string(), pid)]);
    let counts = sup.send(CountChildren).await.unwrap();
    assert_eq!((counts.specs, counts.active, counts.workers), (1, 1, 1));
    // A crash uses the plan's one element: restarted...
    kill(pid, Signal::SIGKILL);
    let pid2 = until(&sup, "a", "restarted", |c| {
        c.is_some_and(|c| c.status == ChildStatus::Running && c.pid != Some(pid))
    })
    .await
    .unwrap()
    .pid
    .unwrap();
    // ...and changing the plan resets the counters.
    sup.send(ChangePlan {
        id: "a".into(),
        plan: serde_json::from_str(r#"["restart", "wait"]"#).unwrap(),
        count: Some(Count::Finite(1)),
    })
    .await
    .unwrap()
    .unwrap();
    assert_eq!(
        sup.send(GetPlan("a".into()))
            .await
            .unwrap()
            .unwrap()
            .to_string(),
        "[restart, wait]"
    );
    kill(pid2, Signal::SIGKILL);
    let pid3 = until(&sup, "a", "restarted", |c| {
        c.is_some_and(|c| c.status == ChildStatus::Running && c.pid != Some(pid2))
    })
    .await
    .unwrap()
    .pid
    .unwrap();
    kill(pid3, Signal::SIGKILL);
    until(&sup, "a", "waiting", |c| {
        c.is_some_and(|c| c.status == ChildStatus::Waiting)
    })
    .await;
    assert!(requests.is_empty(), "escalated");
    // A command that cannot run is reported by start_child and handled by the plan.
    let err = sup
        .send(StartChild(
            troupe_supervisor::ChildSpec::process("bad", "/nonexistent/prog")
                .with_plan(serde_json::from_str(r#"["wait"]"#).unwrap()),
        ))
        .await
        .unwrap()
        .unwrap_err();
    assert!(
        matches!(&err, ChildError::Failed(id, why) if id == "bad" && why.contains("/nonexistent/prog")),
        "{err}"
    );
    sup.send(troupe_core::Shutdown).await.unwrap();
}

#[actix_rt::test]
async fn the_default_child_spec_is_appended() {
    let (sup, _) = start(setup(vec![], None));
    let default = troupe_supervisor::DefaultSpec {
        command: Some("sh".into()),
        args: vec!["-c".into()],
        plan: Plan(vec![PlanElement::Wait]),
        count: Count::Finite(2),
        ..Default::default()
    };
    sup.send(ChangeDefaultChildSpec(default.clone()))
        .await
        .unwrap();
    assert_eq!(sup.send(GetDefaultChildSpec).await.unwrap(), default);
    let mut spec =
        troupe_supervisor::ChildSpec::process("x", "unused").with_args(["exec sleep 1000"]);
    if let troupe_supervisor::ChildStart::Process(p) = &mut spec.start {
        p.command = None;
    }
    spec.append = true;
    let pid = sup.send(StartChild(spec)).await.unwrap().unwrap().unwrap();
    let merged = sup.send(GetChildSpec("x".into())).await.unwrap().unwrap();
    // 2 + the child's own 5.
    assert_eq!(merged.count, Count::Finite(7));
    assert_eq!(merged.plan.to_string(), "[wait, fn:default]");
    kill(pid, Signal::SIGKILL);
    until(&sup, "x", "waiting", |c| {
        c.is_some_and(|c| c.status == ChildStatus::Waiting)
    })
    .await;
    sup.send(troupe_core::Shutdown).await.unwrap();
}

#[actix_rt::test]
async fn a_nested_supervisor_escalates_to_its_parent() {
    let seen: Arc<Mutex<Vec<ExitReason>>> = Arc::default();
    let record = seen.clone();
    let parent_plan = Plan(vec![PlanElement::Decide(PlanFn::new(
        "record",
        move |reason, _| {
            record.lock().unwrap().push(reason.clone());
            PlanElement::Wait
        },
    ))]);
    let inner = setup(
        vec![
            sh("doomed", "exec sleep 1000", "[]"),
            sh("peer", "exec sleep 1000", "[]"),
        ],
        None,
    );
    let nested = nested_supervisor("nested", inner).with_plan(parent_plan);
    let (sup, requests) = start(setup(vec![nested], None));
    running(&sup, "nested").await;
    // Find the nested supervisor's children through its processes' environment.
    let doomed = find_service_pid("doomed").await;
    let peer = find_service_pid("peer").await;
    kill(doomed, Signal::SIGKILL);
    until(&sup, "nested", "waiting", |c| {
        c.is_some_and(|c| c.status == ChildStatus::Waiting)
    })
    .await;
    let reasons = seen.lock().unwrap().clone();
    assert_eq!(reasons.len(), 1, "{reasons:?}");
    let ExitReason::Escalated(why) = &reasons[0] else {
        panic!("{reasons:?}")
    };
    assert!(why.contains("child `doomed`: empty restart plan"), "{why}");
    assert!(why.contains("killed by signal 9"), "{why}");
    // The nested supervisor stopped its other child; the parent did not escalate.
    assert!(!alive(peer));
    assert!(requests.is_empty());
    sup.send(troupe_core::Shutdown).await.unwrap();
}

/// The pid of the process whose environment has TROUPE_SERVICE_ID=`id` and is ours.
async fn find_service_pid(id: &str) -> u32 {
    let needle = format!("TROUPE_SERVICE_ID={id}");
    let deadline = std::time::Instant::now() + DEADLINE;
    loop {
        for entry in std::fs::read_dir("/proc").unwrap().flatten() {
            let Ok(pid) = entry.file_name().to_string_lossy().parse::<u32>() else {
                continue;
            };
            let Ok(env) = std::fs::read(format!("/proc/{pid}/environ")) else {
                continue;
            };
            let ours = std::fs::read_to_string(format!("/proc/{pid}/stat"))
                .ok()
                .and_then(|s| s.rfind(')').map(|i| s[i + 2..].to_string()))
                .and_then(|rest| rest.split(' ').nth(1).map(str::to_string))
                .is_some_and(|ppid| ppid == std::process::id().to_string());
            if ours && env.split(|&b| b == 0).any(|var| var == needle.as_bytes()) {
                return pid;
            }
        }
        assert!(std::time::Instant::now() < deadline, "no process for {id}");
        actix_rt::time::sleep(Duration::from_millis(10)).await;
    }
}

/// A stand-in ipc hub: records lifecycle events, acknowledges pushes, echoes invokes.
#[derive(Default)]
struct FakeHub {
    events: Arc<Mutex<Vec<ServiceLifecycle>>>,
}

impl Actor for FakeHub {
    type Context = Context<Self>;
}

impl Handler<ServiceLifecycle> for FakeHub {
    type Result = ();
    fn handle(&mut self, msg: ServiceLifecycle, _: &mut Self::Context) {
        self.events.lock().unwrap().push(msg);
    }
}

impl Handler<PushConfig> for FakeHub {
    type Result = Result<(), ChannelError>;
    fn handle(&mut self, msg: PushConfig, _: &mut Self::Context) -> Self::Result {
        if msg.service == "svc" {
            Ok(())
        } else {
            Err(ChannelError::NotAlive)
        }
    }
}

impl Handler<Invoke> for FakeHub {
    type Result = Result<Vec<u8>, ChannelError>;
    fn handle(&mut self, msg: Invoke, _: &mut Self::Context) -> Self::Result {
        Ok(msg.payload)
    }
}

#[actix_rt::test]
async fn service_channels_get_lifecycle_events_and_forwarded_calls() {
    let events: Arc<Mutex<Vec<ServiceLifecycle>>> = Arc::default();
    let hub = FakeHub {
        events: events.clone(),
    }
    .start();
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("env.txt");
    let channels = ServiceChannels {
        socket_path: dir.path().join("hub.sock"),
        lifecycle: hub.clone().recipient(),
        push_config: hub.clone().recipient(),
        invoke: hub.clone().recipient(),
    };
    let script = format!(
        "echo \"$TROUPE_SERVICE_ID $TROUPE_IPC_SOCKET\" > {}; exec sleep 1000",
        out.display()
    );
    let mut s = setup(vec![sh("svc", &script, r#"["wait"]"#)], Some(channels));
    s.state_dir = dir.path().join("state");
    let (sup, _) = start(s);
    let pid = running(&sup, "svc").await.unwrap();
    let deadline = std::time::Instant::now() + DEADLINE;
    while !std::fs::read_to_string(&out).is_ok_and(|t| t.ends_with('\n')) {
        assert!(std::time::Instant::now() < deadline, "service wrote no env");
        actix_rt::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(
        std::fs::read_to_string(&out).unwrap().trim(),
        format!("svc {}", dir.path().join("hub.sock").display())
    );
    let push = PushConfig {
        service: "svc".into(),
        config: serde_json::json!({"a": 1}),
        timeout: Duration::from_secs(1),
    };
    assert_eq!(sup.send(push).await.unwrap(), Ok(()));
    let invoke = Invoke {
        service: "svc".into(),
        payload: b"ping".to_vec(),
        timeout: Duration::from_secs(1),
    };
    assert_eq!(sup.send(invoke).await.unwrap(), Ok(b"ping".to_vec()));
    kill(pid, Signal::SIGKILL);
    until(&sup, "svc", "waiting", |c| {
        c.is_some_and(|c| c.status == ChildStatus::Waiting)
    })
    .await;
    let events = events.lock().unwrap().clone();
    assert_eq!(events.len(), 2, "{events:?}");
    match &events[0] {
        ServiceLifecycle::Started {
            id,
            pid: started,
            config_path,
        } => {
            assert_eq!((id.as_str(), *started), ("svc", pid));
            assert_eq!(config_path, &dir.path().join("state/svc/config.json"));
            assert!(dir.path().join("state/svc").is_dir());
        }
        other => panic!("{other:?}"),
    }
    assert!(
        matches!(&events[1], ServiceLifecycle::Exited { id, pid: p } if id == "svc" && *p == pid)
    );
    sup.send(troupe_core::Shutdown).await.unwrap();
}

#[actix_rt::test]
async fn without_service_channels_calls_answer_not_alive() {
    let (sup, _) = start(setup(vec![], None));
    let push = PushConfig {
        service: "svc".into(),
        config: serde_json::json!({}),
        timeout: Duration::from_secs(60),
    };
    assert_eq!(sup.send(push).await.unwrap(), Err(ChannelError::NotAlive));
    let invoke = Invoke {
        service: "svc".into(),
        payload: vec![],
        timeout: Duration::from_secs(60),
    };
    assert_eq!(sup.send(invoke).await.unwrap(), Err(ChannelError::NotAlive));
}
