//! Restart limits against real child processes, in-process: a crash-looping service of the
//! node's supervisor uses its plan up (count 5 within 60 s, at least 100 ms between starts)
//! and is marked failed while the node and the other services run on; `restart_child`
//! revives it; `on_exhausted = "stop_node"` stops the node instead.

mod common;

use common::*;
use troupe_supervisor::messages::*;
use troupe_supervisor::{Count, OnExhausted, ServiceState};

#[actix_rt::test]
async fn a_crash_loop_ends_failed_and_the_rest_runs_on_until_an_operator_starts_it() {
    let flag = tempfile::tempdir().unwrap();
    let healed = flag.path().join("healed");
    // Exits 1 at once, until the flag file exists; each run prints a line first.
    let script = format!(
        "echo run; test -e {} && exec sleep 1000; exit 1",
        healed.display()
    );
    let (sup, requests) = start(setup(
        vec![
            sh("loop", &script, r#"["restart"]"#),
            sh("steady", "exec sleep 1000", r#"["wait"]"#),
        ],
        None,
    ));
    let steady = running(&sup, "steady").await.unwrap();
    let failed = status_until(&sup, "loop", "failed", |s| s.state == ServiceState::Failed).await;
    // Five restarts (five cycles of its one-element plan), then the sixth exit used it up.
    assert_eq!(
        failed.failure.as_deref(),
        Some("exhausted its restart plan: 5 cycles within 60s; last exit: exit status 1")
    );
    assert_eq!((failed.restarts, failed.cycle), (5, 5));
    assert_eq!(failed.cycles_in_period, Some(5));
    assert_eq!(failed.count, "5");
    assert_eq!(
        (failed.period_ms, failed.min_restart_interval_ms),
        (60_000, 100)
    );
    assert_eq!(failed.on_exhausted, OnExhausted::Fail);
    assert_eq!(failed.spec["period"], "60s");
    assert_eq!(failed.spec["on_exhausted"], "fail");
    let exit = failed.last_exit.clone().unwrap();
    assert_eq!((exit.status, exit.requested), (Some(1), false));
    assert_eq!(failed.pid, None);
    // Six starts, each at least 100 ms after the one before: its output lines (read
    // shortly after each start) span about half a second at least.
    let lines = sup
        .send(GetLogs {
            id: "loop".into(),
            lines: 100,
            follow: false,
        })
        .await
        .unwrap()
        .unwrap()
        .lines;
    assert_eq!(lines.len(), 6, "{lines:?}");
    let span = lines[5].at_unix_ms - lines[0].at_unix_ms;
    assert!(span >= 400, "six starts within {span} ms");
    // The node was not asked to stop; the other service kept its process.
    assert!(requests.is_empty(), "the node was asked to stop");
    assert_eq!(sup.send(GetPid("steady".into())).await.unwrap(), Ok(steady));
    assert!(alive(steady));
    // Still failed a while later: nothing restarts it by itself.
    let later = status_until(&sup, "loop", "still failed", |s| {
        s.state == ServiceState::Failed
    })
    .await;
    assert_eq!(later.generation, failed.generation);

    // Fixed, and started by an operator: it runs, with its plan counters from zero.
    std::fs::write(&healed, b"").unwrap();
    let pid = sup
        .send(RestartChild("loop".into()))
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    let revived = status_until(&sup, "loop", "running again", |s| {
        s.state == ServiceState::Running
    })
    .await;
    assert_eq!(revived.pid, Some(pid));
    assert!(revived.generation > failed.generation);
    assert_eq!((revived.restarts, revived.cycle), (0, 0));
    assert_eq!((revived.failure, revived.cycles_in_period), (None, Some(0)));
    assert!(requests.is_empty());
    sup.send(troupe_core::Shutdown).await.unwrap();
}

#[actix_rt::test]
async fn on_exhausted_stop_node_asks_the_node_to_stop() {
    let vital = sh("vital", "exit 3", r#"["restart"]"#)
        .with_count(Count::Finite(1))
        .with_on_exhausted(OnExhausted::StopNode);
    let (sup, mut requests) = start(setup(vec![vital], None));
    let request = tokio::time::timeout(DEADLINE, requests.recv())
        .await
        .expect("no stop request in time")
        .unwrap();
    assert_eq!(request.exit_code, 1);
    assert!(
        request.reason.contains(
            "child `vital`: reached max restart plan (count 1 within 60s); last exit: exit status 3"
        ),
        "{}",
        request.reason
    );
    sup.send(troupe_core::Shutdown).await.unwrap();
}
