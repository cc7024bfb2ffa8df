//! Readiness probes that poll: a TCP connect, a command's exit status and the broker's view of
//! a service's workers. (The `log_line` check is matched by the output reader.) Each probe runs until it passes or is cancelled;
//! the supervisor's start timeout bounds how long it is waited for.

use std::time::Duration;

use actix::Recipient;
use tokio::sync::{oneshot, watch};
use troupe_core::services::BrokerWorkers;

use crate::plan::ExitReason;
use crate::process::{self, Launch};

/// Time between two attempts.
const RETRY: Duration = Duration::from_millis(50);
/// Longest single attempt of a probe command or connect.
const ATTEMPT: Duration = Duration::from_secs(5);

/// Passes (true) once a TCP connection to `addr` succeeds; false if cancelled.
pub(crate) async fn tcp(addr: String, mut cancelled: oneshot::Receiver<()>) -> bool {
    loop {
        let attempt = tokio::time::timeout(ATTEMPT, tokio::net::TcpStream::connect(addr.as_str()));
        tokio::select! {
            result = attempt => if let Ok(Ok(_)) = result { return true },
            _ = &mut cancelled => return false,
        }
        tokio::select! {
            _ = tokio::time::sleep(RETRY) => {}
            _ = &mut cancelled => return false,
        }
    }
}

/// Passes (true) once `argv` exits with status 0; false if cancelled. A probe process that
/// hangs is killed after one attempt's time; every probe process is reaped.
pub(crate) async fn exec(argv: Vec<String>, mut cancelled: oneshot::Receiver<()>) -> bool {
    let launch = Launch {
        program: process::expand_exe(&argv[0]),
        args: argv[1..].iter().map(|a| process::expand_exe(a)).collect(),
        env: Vec::new(),
        inherit_env: true,
        cwd: None,
        capture_output: false,
        make_dir: None,
        cgroup: None,
        setup: Default::default(),
    };
    loop {
        match process::spawn(launch.clone()).await {
            Ok(spawned) => {
                let pid = spawned.pid;
                let exit = process::wait_exit(pid, std::sync::Arc::new(spawned.pidfd), None);
                tokio::pin!(exit);
                let reason = tokio::select! {
                    reason = &mut exit => reason,
                    _ = tokio::time::sleep(ATTEMPT) => {
                        process::signal_group(pid, nix::sys::signal::Signal::SIGKILL);
                        exit.await
                    }
                };
                if reason == ExitReason::Exited(0) {
                    return true;
                }
            }
            Err(e) => tracing::debug!(error = %e, "readiness command cannot run"),
        }
        tokio::select! {
            _ = tokio::time::sleep(RETRY) => {}
            _ = &mut cancelled => return false,
        }
    }
}

/// Passes (true) once the broker on this node answers `question` with `ready: true`; false
/// if cancelled. Until a broker is attached (`broker` holds `None`), it keeps polling.
pub(crate) async fn broker(
    mut broker: watch::Receiver<Option<Recipient<BrokerWorkers>>>,
    question: BrokerWorkers,
    mut cancelled: oneshot::Receiver<()>,
) -> bool {
    loop {
        let attached = broker.borrow_and_update().clone();
        if let Some(to) = attached {
            let attempt = tokio::time::timeout(ATTEMPT, to.send(question.clone()));
            tokio::select! {
                answer = attempt => {
                    if let Ok(Ok(answer)) = answer {
                        if answer.ready {
                            return true;
                        }
                    }
                }
                _ = &mut cancelled => return false,
            }
        }
        tokio::select! {
            _ = tokio::time::sleep(RETRY) => {}
            _ = &mut cancelled => return false,
        }
    }
}
