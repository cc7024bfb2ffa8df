//! The operators' calls against real child processes, in-process: restart, signals, recent
//! output (snapshot and follow), adding a service from a config entry, and applying a new
//! `[supervisor]` table to a running role.

mod common;

use std::path::Path;
use std::time::{Duration, Instant};

use actix::prelude::*;
use common::*;
use troupe_core::Role;
use troupe_supervisor::messages::*;
use troupe_supervisor::{
    ChildError, ServiceConfig, ServiceLogs, ServiceState, Supervisor, SupervisorConfig,
    SupervisorRole,
};

async fn up(sup: &Addr<Supervisor>, id: &str) -> u32 {
    status_until(sup, id, "running", |s| s.state == ServiceState::Running)
        .await
        .pid
        .unwrap()
}

async fn logs(sup: &Addr<Supervisor>, id: &str, lines: usize, follow: bool) -> ServiceLogs {
    sup.send(GetLogs {
        id: id.into(),
        lines,
        follow,
    })
    .await
    .unwrap()
    .unwrap()
}

/// Polls child `id`'s recent output until a line reads `text`.
async fn line_seen(sup: &Addr<Supervisor>, id: &str, text: &str) -> ServiceLogs {
    let deadline = Instant::now() + DEADLINE;
    loop {
        let got = logs(sup, id, usize::MAX, false).await;
        if got.lines.iter().any(|l| l.text == text) {
            return got;
        }
        assert!(
            Instant::now() < deadline,
            "{id}: no line {text:?} within {DEADLINE:?}; got {:?}",
            got.lines
        );
        actix_rt::time::sleep(Duration::from_millis(10)).await;
    }
}

#[actix_rt::test]
async fn restart_service_gives_a_new_pid_and_counts_no_restart() {
    let (sup, requests) = start(setup(vec![sh("a", "exec sleep 1000", "[]")], None));
    let old = up(&sup, "a").await;
    let before = sup
        .send(GetServiceStatus("a".into()))
        .await
        .unwrap()
        .unwrap();
    let new = sup
        .send(RestartService("a".into()))
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert_ne!(new, old);
    assert!(!alive(old));
    let after = status_until(&sup, "a", "running", |s| s.state == ServiceState::Running).await;
    assert_eq!(after.pid, Some(new));
    assert!(after.generation > before.generation);
    assert_eq!(
        (after.restarts, after.plan_position, after.cycle),
        (0, 0, 0)
    );
    let exit = after.last_exit.unwrap();
    assert!(exit.requested, "{exit:?}");
    assert_eq!(exit.signal_name.as_deref(), Some("SIGTERM"));
    // An empty plan would have escalated on a crash: this was none.
    assert!(requests.is_empty());
    // A child that is down is started at once.
    sup.send(TerminateChild("a".into())).await.unwrap().unwrap();
    let again = sup
        .send(RestartService("a".into()))
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert_eq!(up(&sup, "a").await, again);
    assert_eq!(
        sup.send(RestartService("zz".into())).await.unwrap(),
        Err(ChildError::NotFound("zz".into()))
    );
    sup.send(troupe_core::Shutdown).await.unwrap();
}

#[actix_rt::test]
async fn signal_child_reaches_the_main_process() {
    let script = r#"trap "echo got-usr1" USR1; echo trapped; while :; do sleep 0.1; done"#;
    let (sup, _) = start(setup(vec![sh("u", script, r#"["wait"]"#)], None));
    let pid = up(&sup, "u").await;
    line_seen(&sup, "u", "trapped").await;
    let usr1 = SignalChild {
        id: "u".into(),
        signal: libc::SIGUSR1,
    };
    sup.send(usr1).await.unwrap().unwrap();
    let seen = line_seen(&sup, "u", "got-usr1").await;
    let line = seen.lines.iter().find(|l| l.text == "got-usr1").unwrap();
    assert_eq!((line.stream, line.pid), ("stdout", pid));
    assert!(alive(pid));
    let signal = |id: &str, signal: i32| {
        sup.send(SignalChild {
            id: id.into(),
            signal,
        })
    };
    assert!(matches!(
        signal("u", 0).await.unwrap(),
        Err(ChildError::Invalid(_))
    ));
    assert_eq!(
        signal("zz", 15).await.unwrap(),
        Err(ChildError::NotFound("zz".into()))
    );
    // A signal that ends it is an ordinary exit: the plan (wait) applies.
    signal("u", libc::SIGKILL).await.unwrap().unwrap();
    let down = status_until(&sup, "u", "waiting", |s| s.state == ServiceState::Waiting).await;
    assert_eq!(down.last_exit.as_ref().unwrap().signal, Some(9));
    assert!(!down.last_exit.unwrap().requested);
    assert_eq!(
        signal("u", 15).await.unwrap(),
        Err(ChildError::NotRunning("u".into()))
    );
    sup.send(troupe_core::Shutdown).await.unwrap();
}

#[actix_rt::test]
async fn get_logs_returns_the_latest_lines_and_follows_new_ones() {
    let dir = tempfile::tempdir().unwrap();
    let trigger = dir.path().join("go");
    let script = format!(
        "echo err-line >&2; for i in 1 2 3 4 5; do echo line-$i; done; \
         while [ ! -e {t} ]; do sleep 0.02; done; rm -f {t}; echo late; exec sleep 1000",
        t = trigger.display()
    );
    let (sup, _) = start(setup(vec![sh("l", &script, "[]")], None));
    let pid = up(&sup, "l").await;
    let generation = sup
        .send(GetServiceStatus("l".into()))
        .await
        .unwrap()
        .unwrap()
        .generation;
    // stdout and stderr are read apart: wait for both.
    line_seen(&sup, "l", "line-5").await;
    let all = line_seen(&sup, "l", "err-line").await;
    assert_eq!(all.lines.len(), 6, "{:?}", all.lines);
    let stdout: Vec<&str> = all
        .lines
        .iter()
        .filter(|l| l.stream == "stdout")
        .map(|l| l.text.as_str())
        .collect();
    assert_eq!(stdout, ["line-1", "line-2", "line-3", "line-4", "line-5"]);
    let err = all.lines.iter().find(|l| l.stream == "stderr").unwrap();
    assert_eq!(err.text, "err-line");
    assert!(all
        .lines
        .iter()
        .all(|l| l.generation == generation && l.pid == pid && l.at_unix_ms > 0));
    // The latest two, oldest first; following from there.
    let mut tail = logs(&sup, "l", 2, true).await;
    assert_eq!(tail.lines, all.lines[4..]);
    std::fs::write(&trigger, b"").unwrap();
    let mut follow = tail.follow.take().unwrap();
    let late = tokio::time::timeout(DEADLINE, follow.recv())
        .await
        .expect("no line followed")
        .unwrap();
    assert_eq!((late.text.as_str(), late.generation), ("late", generation));
    // The ring survives a restart; the new run's lines have the new generation.
    sup.send(RestartService("l".into())).await.unwrap().unwrap();
    let next = tokio::time::timeout(DEADLINE, follow.recv())
        .await
        .expect("no line after the restart")
        .unwrap();
    assert!(next.generation > generation, "{next:?}");
    let kept = logs(&sup, "l", usize::MAX, false).await;
    assert!(kept.lines.iter().any(|l| l.generation == generation));
    assert_eq!(
        sup.send(GetLogs {
            id: "zz".into(),
            lines: 1,
            follow: false
        })
        .await
        .unwrap()
        .unwrap_err(),
        ChildError::NotFound("zz".into())
    );
    sup.send(troupe_core::Shutdown).await.unwrap();
}

fn entry(value: serde_json::Value) -> ServiceConfig {
    serde_json::from_value(value).unwrap()
}

#[actix_rt::test]
async fn add_service_builds_the_child_from_a_config_entry() {
    let s = setup(vec![], None);
    let state_dir = s.state_dir.clone();
    let (sup, _) = start(s);
    let added = entry(serde_json::json!({
        "id": "added", "command": "sh", "args": ["-c", "exec sleep 1000"], "plan": ["wait"]
    }));
    let pid = sup
        .send(AddService(added.clone()))
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert_eq!(up(&sup, "added").await, pid);
    let spec = sup
        .send(GetChildSpec("added".into()))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        spec.process_spec().unwrap().config_path.as_deref(),
        Some(state_dir.join("added/config.json").as_path())
    );
    let status = sup
        .send(GetServiceStatus("added".into()))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(status.spec["plan"], serde_json::json!(["wait"]));
    assert_eq!(
        sup.send(AddService(added)).await.unwrap(),
        Err(ChildError::AlreadyStarted("added".into()))
    );
    let refused = [
        (serde_json::json!({"command": "sh"}), "id: missing"),
        (serde_json::json!({"id": "x"}), "command: missing"),
        (serde_json::json!({"id": "a b", "command": "sh"}), "id: "),
        (
            serde_json::json!({"id": "y", "command": "sh", "ready": {"log_line": "("}}),
            "ready.log_line: ",
        ),
        (
            serde_json::json!({"id": "z", "command": "sh", "after": ["nope"]}),
            "after: ",
        ),
    ];
    for (value, needle) in refused {
        let err = sup
            .send(AddService(entry(value)))
            .await
            .unwrap()
            .unwrap_err();
        assert!(
            matches!(&err, ChildError::Invalid(m) if m.starts_with(needle)),
            "{needle}: {err}"
        );
    }
    sup.send(troupe_core::Shutdown).await.unwrap();
}

fn write_manifest(dir: &Path, folder: &str, text: &str) {
    std::fs::create_dir_all(dir.join(folder)).unwrap();
    std::fs::write(dir.join(folder).join("manifest.json"), text).unwrap();
}

fn config(dir: &Path, services: serde_json::Value) -> SupervisorConfig {
    serde_json::from_value(serde_json::json!({
        "state_dir": dir.join("state"),
        "services_dir": dir.join("services"),
        "services": services,
    }))
    .unwrap()
}

async fn pids(sup: &Addr<Supervisor>) -> Vec<(String, ServiceState, Option<u32>)> {
    sup.send(ServiceStatuses)
        .await
        .unwrap()
        .into_iter()
        .map(|s| (s.id, s.state, s.pid))
        .collect()
}

#[actix_rt::test]
async fn apply_config_adds_removes_and_restarts_only_what_changed() {
    let dir = tempfile::tempdir().unwrap();
    let services = dir.path().join("services");
    let sleeper = r#"{"command": "sh", "args": ["-c", "exec sleep 1000"], "plan": ["wait"]}"#;
    write_manifest(&services, "m1", sleeper);
    let service = |id: &str, script: &str| serde_json::json!({"id": id, "command": "sh", "args": ["-c", script], "plan": ["wait"]});
    let first = config(
        dir.path(),
        serde_json::json!([
            service("keep", "exec sleep 1000"),
            service("change", "exec sleep 1000"),
            service("drop", "exec sleep 1000"),
        ]),
    );
    let (ctx, requests) = role_context();
    let role = SupervisorRole::start(first.clone(), ctx).await.unwrap();
    let sup = role.address().clone();
    let keep = up(&sup, "keep").await;
    let change = up(&sup, "change").await;
    let drop = up(&sup, "drop").await;
    let m1 = up(&sup, "m1").await;
    // A child added through the API is never part of a reload.
    let api = sup
        .send(StartChild(sh("api", "exec sleep 1000", "[]")))
        .await
        .unwrap()
        .unwrap()
        .unwrap();

    write_manifest(&services, "m2", sleeper);
    write_manifest(&services, "m3", r#"{"command": "sh", "plan": ["reboot"]}"#);
    let mut second = config(
        dir.path(),
        serde_json::json!([
            service("keep", "exec sleep 1000"),
            service("change", "exec sleep 2000"),
            service("new", "exec sleep 1000"),
        ]),
    );
    second.max_line_bytes = 8192;
    second.log_lines = 10;

    // A dry run says what would happen and changes nothing.
    let before = pids(&sup).await;
    let dry = sup
        .send(ApplyConfig {
            config: second.clone(),
            dry_run: true,
        })
        .await
        .unwrap()
        .unwrap();
    assert_eq!(dry.added, ["new", "m2"]);
    assert_eq!(dry.removed, ["drop"]);
    assert_eq!(dry.changed, ["change"]);
    assert_eq!(dry.unchanged, ["keep", "m1"]);
    assert_eq!(dry.failed.len(), 1, "{:?}", dry.failed);
    assert_eq!(dry.failed[0].id, "m3");
    assert!(dry.failed[0].error.contains("plan[0]"), "{:?}", dry.failed);
    assert_eq!(dry.needs_restart, ["supervisor.max_line_bytes"]);
    assert_eq!(pids(&sup).await, before);
    assert!(alive(drop));

    let report = sup
        .send(ApplyConfig {
            config: second.clone(),
            dry_run: false,
        })
        .await
        .unwrap()
        .unwrap();
    assert_eq!(report, dry);
    // The stops are done when it answers.
    assert!(!alive(drop) && !alive(change));
    assert_eq!(
        sup.send(GetServiceStatus("drop".into()))
            .await
            .unwrap()
            .unwrap()
            .state,
        ServiceState::Deleted
    );
    let changed = up(&sup, "change").await;
    assert_ne!(changed, change);
    assert_eq!(
        sup.send(GetChildSpec("change".into()))
            .await
            .unwrap()
            .unwrap()
            .process_spec()
            .unwrap()
            .args,
        ["-c", "exec sleep 2000"]
    );
    up(&sup, "new").await;
    up(&sup, "m2").await;
    assert_eq!(up(&sup, "keep").await, keep);
    assert_eq!(up(&sup, "m1").await, m1);
    assert_eq!(
        sup.send(GetPid("api".into())).await.unwrap(),
        Ok(api),
        "the API child was touched"
    );
    let m3 = sup
        .send(GetServiceStatus("m3".into()))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(m3.state, ServiceState::Failed);
    // The same table again changes nothing.
    let again = sup
        .send(ApplyConfig {
            config: second.clone(),
            dry_run: false,
        })
        .await
        .unwrap()
        .unwrap();
    assert!(again.added.is_empty() && again.removed.is_empty() && again.changed.is_empty());
    assert_eq!(up(&sup, "change").await, changed);
    // A configured service deleted by an operator and added again through the API is the
    // API's from then on.
    sup.send(TerminateChild("keep".into()))
        .await
        .unwrap()
        .unwrap();
    sup.send(DeleteChild("keep".into())).await.unwrap().unwrap();
    let mine = sup
        .send(AddService(entry(service("keep", "exec sleep 3000"))))
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    let third = sup
        .send(ApplyConfig {
            config: second.clone(),
            dry_run: false,
        })
        .await
        .unwrap()
        .unwrap();
    assert!(third.failed.iter().any(|f| f.id == "keep"), "{third:?}");
    assert!(!third.changed.contains(&"keep".to_string()));
    assert_eq!(up(&sup, "keep").await, mine);
    // A table that does not validate is refused as a whole, naming the key.
    let mut bad = first;
    bad.log_lines = 1_000_000;
    let err = sup
        .send(ApplyConfig {
            config: bad,
            dry_run: true,
        })
        .await
        .unwrap()
        .unwrap_err();
    assert!(
        matches!(&err, ChildError::Invalid(m) if m.starts_with("supervisor.log_lines")),
        "{err}"
    );
    assert!(requests.is_empty(), "escalated");
    role.stop().await;
    assert!(!alive(mine) && !alive(api));
}

#[actix_rt::test]
async fn apply_config_restarts_append_services_when_the_default_changes() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(dir.path().join("services")).unwrap();
    let table = |default_args: serde_json::Value| {
        let mut c = config(
            dir.path(),
            serde_json::json!([
                {"id": "plain", "command": "sh", "args": ["-c", "exec sleep 1000"]},
                {"id": "appends", "append": true, "args": ["exec sleep 1000"]},
            ]),
        );
        c.default = serde_json::from_value(serde_json::json!({
            "command": "sh", "args": default_args, "plan": ["wait"]
        }))
        .unwrap();
        c
    };
    let (ctx, _) = role_context();
    let role = SupervisorRole::start(table(serde_json::json!(["-c"])), ctx)
        .await
        .unwrap();
    let sup = role.address().clone();
    let plain = up(&sup, "plain").await;
    let appends = up(&sup, "appends").await;
    let report = sup
        .send(ApplyConfig {
            config: table(serde_json::json!(["-e", "-c"])),
            dry_run: false,
        })
        .await
        .unwrap()
        .unwrap();
    assert_eq!(report.changed, ["appends"]);
    assert_eq!(report.unchanged, ["plain"]);
    assert_ne!(up(&sup, "appends").await, appends);
    assert_eq!(up(&sup, "plain").await, plain);
    let default = sup.send(GetDefaultChildSpec).await.unwrap();
    assert_eq!(default.args, ["-e", "-c"]);
    role.stop().await;
}
