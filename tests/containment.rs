//! Integration tests of containment: whatever a service starts (grandchildren, double-forked
//! `setsid` daemons, processes in a group of their own) dies with the service and with the
//! node, even a SIGKILLed node; restarts do not pile processes up; descriptors the node
//! inherited are not passed on; a role abandoned at shutdown leaves nothing behind.

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use troupe_tests::{troupe, Proc};

const START: Duration = Duration::from_secs(30);
const STOP: Duration = Duration::from_secs(20);

fn unique(tag: &str) -> String {
    format!("contain-{tag}-{}", std::process::id())
}

/// A node running the supervisor with `services`, its control socket in `dir`.
fn node(tag: &str, dir: &Path, services: &str) -> Proc {
    node_with(tag, dir, services, |_| {})
}

fn node_with(tag: &str, dir: &Path, services: &str, adjust: impl FnOnce(&mut Command)) -> Proc {
    let config = dir.join("node.toml");
    std::fs::write(
        &config,
        format!(
            "name = \"{}\"\nroles = [\"supervisor\"]\nshutdown_timeout = \"10s\"\n[supervisor]\nstate_dir = \"{}\"\n{services}\n[control]\nsocket = \"{}\"\n",
            unique(tag),
            dir.join("state").display(),
            dir.join("ctl.sock").display()
        ),
    )
    .unwrap();
    let mut cmd = troupe();
    cmd.arg("run").arg("--config").arg(&config);
    adjust(&mut cmd);
    let mut proc = Proc::spawn(cmd);
    proc.wait_for(&["node ready"], START);
    proc
}

fn alive(pid: u32) -> bool {
    let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
        return false;
    };
    let state = stat[stat.rfind(')').unwrap() + 2..].chars().next();
    !matches!(state, Some('Z' | 'X'))
}

/// Waits for `file` to hold a pid.
fn pid_in(file: &Path) -> u32 {
    let deadline = Instant::now() + START;
    loop {
        if let Some(pid) = std::fs::read_to_string(file)
            .ok()
            .and_then(|t| t.trim().parse().ok())
        {
            return pid;
        }
        assert!(
            Instant::now() < deadline,
            "{} never written",
            file.display()
        );
        std::thread::sleep(Duration::from_millis(10));
    }
}

fn gone_within(pids: &[u32], within: Duration, what: &str) {
    let deadline = Instant::now() + within;
    while pids.iter().any(|p| alive(*p)) {
        let left: Vec<u32> = pids.iter().copied().filter(|p| alive(*p)).collect();
        assert!(
            Instant::now() < deadline,
            "{what}: still running after {within:?}: {left:?}"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// Three services, each leaving something behind in its own way: a background grandchild,
/// a double-forked `setsid` daemon, and a child in a process group of its own. Each writes
/// the pid of what it left into `dir`.
fn escapers(dir: &Path) -> String {
    let d = dir.display();
    format!(
        r#"
[[supervisor.services]]
id = "grandchild"
command = "sh"
args = ["-c", "sleep 1000 & echo $! > {d}/grandchild.pid; exec sleep 1001"]
terminate_timeout_ms = 500

[[supervisor.services]]
id = "daemon"
command = "sh"
args = ["-c", "setsid sh -c 'echo $$ > {d}/daemon.pid; exec sleep 1002' & while :; do sleep 1; done"]
terminate_timeout_ms = 500

[[supervisor.services]]
id = "group"
command = "sh"
args = ["-c", "set -m; sleep 1003 & echo $! > {d}/group.pid; wait"]
terminate_timeout_ms = 500
"#
    )
}

fn escaped_pids(dir: &Path) -> Vec<u32> {
    ["grandchild", "daemon", "group"]
        .iter()
        .map(|name| pid_in(&dir.join(format!("{name}.pid"))))
        .collect()
}

fn uses_cgroups(node: &Proc) -> bool {
    node.printed(&["services are contained in cgroups"])
}

#[test]
fn nothing_a_service_started_survives_a_killed_node() {
    let dir = tempfile::tempdir().unwrap();
    let mut first = node("kill", dir.path(), &escapers(dir.path()));
    let pids = escaped_pids(dir.path());
    assert!(pids.iter().all(|p| alive(*p)));
    let cgroups = uses_cgroups(&first);
    first.signal(libc::SIGKILL);
    first.wait_exit(STOP);
    if cgroups {
        gone_within(
            &pids,
            Duration::from_secs(1),
            "after the node was SIGKILLed",
        );
    }
    // With the process-group mechanism, survivors are killed when the node starts again; with
    // cgroups there are none left to find, and the start cleans up the node's cgroups.
    let mut again = node("kill", dir.path(), "");
    gone_within(&pids, Duration::from_secs(1), "once the node started again");
    again.signal(libc::SIGTERM);
    assert!(again.wait_exit(STOP).success());
}

#[test]
fn a_stopped_or_crashed_service_takes_everything_it_started_along() {
    let dir = tempfile::tempdir().unwrap();
    let mut node = node("stop", dir.path(), &escapers(dir.path()));
    if !uses_cgroups(&node) {
        // A process that left its group escapes the process-group mechanism by design.
        node.signal(libc::SIGTERM);
        node.wait_exit(STOP);
        return;
    }
    let pids = escaped_pids(dir.path());
    for id in ["grandchild", "daemon", "group"] {
        let mut ctl = troupe();
        ctl.arg("ctl")
            .arg("--socket")
            .arg(dir.path().join("ctl.sock"))
            .args(["stop", id]);
        assert!(ctl.output().unwrap().status.success());
    }
    gone_within(&pids, Duration::from_secs(2), "after ctl stop");
    node.signal(libc::SIGTERM);
    assert!(node.wait_exit(STOP).success());
}

/// Live `sleep MARKER` processes.
fn count_marked(marker: &str) -> usize {
    let wanted = format!("sleep\0{marker}\0");
    std::fs::read_dir("/proc")
        .unwrap()
        .flatten()
        .filter(|e| {
            e.file_name()
                .to_string_lossy()
                .chars()
                .all(|c| c.is_ascii_digit())
        })
        .filter(|e| {
            std::fs::read(e.path().join("cmdline"))
                .map(|c| c == wanted.as_bytes())
                .unwrap_or(false)
        })
        .filter(|e| alive(e.file_name().to_string_lossy().parse().unwrap_or(0)))
        .count()
}

#[test]
fn crash_restarts_do_not_pile_up_daemons() {
    let dir = tempfile::tempdir().unwrap();
    let marker = format!("{}", 2_000_000 + std::process::id());
    let services = format!(
        r#"
[[supervisor.services]]
id = "crashy"
command = "sh"
args = ["-c", "setsid sleep {marker} & sleep 0.05; exit 1"]
plan = [{{ restart_after_ms = 20 }}]
count = "infinity"
"#
    );
    let mut node = node("pile", dir.path(), &services);
    let cgroups = uses_cgroups(&node);
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let mut ctl = troupe();
        ctl.arg("ctl")
            .arg("--socket")
            .arg(dir.path().join("ctl.sock"))
            .args(["service", "crashy", "--json"]);
        let out = ctl.output().unwrap();
        let status: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        if status["generation"].as_u64().unwrap_or(0) >= 20 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "fewer than 20 restarts: {status}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    if cgroups {
        let left = count_marked(&marker);
        assert!(left <= 1, "{left} daemons left after 20 restarts");
    }
    node.signal(libc::SIGTERM);
    assert!(node.wait_exit(STOP).success());
    if cgroups {
        assert_eq!(count_marked(&marker), 0);
    }
}

#[test]
fn services_get_only_the_standard_descriptors() {
    let dir = tempfile::tempdir().unwrap();
    let services = r#"
[[supervisor.services]]
id = "fds"
command = "sh"
args = ["-c", "if [ -e /proc/$$/fd/9 ]; then echo fd9-open; else echo fd9-closed; fi; exec sleep 1000"]
"#;
    let mut node = node_with("fds", dir.path(), services, |cmd| {
        use std::os::unix::process::CommandExt;
        // SAFETY: dup2(2) in the child before exec: descriptor 9 is inherited without
        // close-on-exec, as a careless parent would leave it.
        unsafe {
            cmd.pre_exec(|| {
                if libc::dup2(2, 9) == -1 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
    });
    node.wait_printed(&["fd9-"], START);
    assert!(node.printed(&["fd9-closed"]), "{}", node.output());
    node.signal(libc::SIGTERM);
    assert!(node.wait_exit(STOP).success());
}

#[test]
fn a_role_abandoned_at_shutdown_leaves_no_process_and_fails_the_exit() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path().display();
    let services = format!(
        r#"
[[supervisor.services]]
id = "first"
command = "sh"
args = ["-c", "trap '' TERM; while :; do sleep 0.1; done"]
terminate_timeout_ms = 800

# Stopped before `first`, which it starts after: the two stops together outlast the 1 s
# shutdown timeout, though each fits in it.
[[supervisor.services]]
id = "stubborn"
command = "sh"
args = ["-c", "trap '' TERM; sleep 1004 & echo $! > {d}/child.pid; while :; do sleep 0.1; done"]
terminate_timeout_ms = 800
after = ["first"]
"#
    );
    let config = dir.path().join("node.toml");
    std::fs::write(
        &config,
        format!(
            "name = \"{}\"\nroles = [\"supervisor\"]\nshutdown_timeout = \"1s\"\n[supervisor]\nstate_dir = \"{}\"\n{services}\n[control]\nsocket = \"{}\"\n",
            unique("abandon"),
            dir.path().join("state").display(),
            dir.path().join("ctl.sock").display()
        ),
    )
    .unwrap();
    let mut cmd = troupe();
    cmd.arg("run").arg("--config").arg(&config);
    let mut node = Proc::spawn(cmd);
    node.wait_for(&["node ready"], START);
    let child = pid_in(&dir.path().join("child.pid"));
    node.signal(libc::SIGTERM);
    let status = node.wait_exit(STOP);
    assert_eq!(status.code(), Some(1), "{}", node.output());
    assert!(
        node.printed(&["did not stop within the shutdown timeout", "supervisor"]),
        "{}",
        node.output()
    );
    gone_within(&[child], Duration::from_secs(2), "after the abandoned role");
}
