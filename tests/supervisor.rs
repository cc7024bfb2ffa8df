//! Integration tests of the `supervisor` role, running real `troupe` processes that supervise
//! real `sh` services: restarts per plan, escalation, stop and kill hygiene (process groups,
//! parent-death signal, reaping), manifests, readiness and log files.

use std::io::Write;
use std::time::{Duration, Instant};

use troupe_tests::{free_port, run_to_end, troupe, Proc};

const START: Duration = Duration::from_secs(30);
const STOP: Duration = Duration::from_secs(20);
/// Slack for "within X" assertions on a shared, busy machine.
const MARGIN: Duration = Duration::from_secs(5);

fn unique(tag: &str) -> String {
    format!("sv-{tag}-{}", std::process::id())
}

/// A node running only the supervisor, with `services` appended to its `[supervisor]` table.
fn node(tag: &str, supervisor: &str) -> (Proc, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("node.toml");
    let text = format!(
        "name = \"{}\"\nroles = [\"supervisor\"]\nshutdown_timeout = \"10s\"\n[supervisor]\nstate_dir = \"{}\"\n{supervisor}",
        unique(tag),
        dir.path().join("state").display()
    );
    std::fs::write(&config, text).unwrap();
    let mut cmd = troupe();
    cmd.arg("run").arg("--config").arg(&config);
    let mut proc = Proc::spawn(cmd);
    proc.wait_for(&["node ready"], START);
    (proc, dir)
}

/// The number after `key=` in a log line.
fn field(line: &str, key: &str) -> u32 {
    let at = line
        .find(&format!(" {key}="))
        .unwrap_or_else(|| panic!("no {key}= in {line}"));
    line[at + key.len() + 2..]
        .chars()
        .take_while(char::is_ascii_digit)
        .collect::<String>()
        .parse()
        .unwrap_or_else(|_| panic!("no number after {key}= in {line}"))
}

/// The state letter of process `pid` (`R`, `S`, `Z`, ...), or None once it is gone.
fn state(pid: u32) -> Option<char> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let after_name = &stat[stat.rfind(')')? + 2..];
    after_name.chars().next()
}

fn running(pid: u32) -> bool {
    matches!(state(pid), Some(s) if s != 'Z' && s != 'X')
}

/// Polls `check` until it holds, up to `timeout`.
fn eventually(timeout: Duration, what: &str, mut check: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    while !check() {
        assert!(Instant::now() < deadline, "not within {timeout:?}: {what}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// The first line printed so far that contains every one of `needles`, waiting for it.
/// For events that may be logged before `node ready` (which `wait_for` has consumed).
fn seen(node: &Proc, needles: &[&str]) -> String {
    eventually(START, &format!("a line with {needles:?}"), || {
        node.printed(needles)
    });
    node.output()
        .lines()
        .find(|l| needles.iter().all(|n| l.contains(n)))
        .unwrap()
        .to_string()
}

/// Zombie children of `parent`.
fn zombies_of(parent: u32) -> Vec<u32> {
    let mut found = Vec::new();
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
            continue;
        };
        let Some(close) = stat.rfind(')') else {
            continue;
        };
        let rest: Vec<&str> = stat[close + 2..].split(' ').collect();
        if rest.first() == Some(&"Z") && rest.get(1).and_then(|p| p.parse().ok()) == Some(parent) {
            found.push(pid);
        }
    }
    found
}

/// Seconds since midnight of a log line's timestamp (`2026-01-01T12:34:56.789012Z ...`).
fn timestamp(line: &str) -> f64 {
    let time = &line[11..line.find('Z').expect("timestamp")];
    let parts: Vec<f64> = time.split(':').map(|p| p.parse().unwrap()).collect();
    parts[0] * 3600.0 + parts[1] * 60.0 + parts[2]
}

fn stop(mut proc: Proc) -> (i32, String) {
    proc.signal(libc::SIGTERM);
    let status = proc.wait_exit(STOP);
    (status.code().unwrap_or(-1), proc.output())
}

#[test]
fn a_killed_service_is_restarted_reaped_and_its_output_logged() {
    let (mut node, _dir) = node(
        "restart",
        r#"
        [[supervisor.services]]
        id = "svc"
        command = "sh"
        args = ["-c", "echo hello from $TROUPE_SERVICE_ID; echo oops >&2; exec sleep 1000"]
        plan = ["restart"]
        count = "infinity"
        "#,
    );
    let first = seen(&node, &["child started", "id=\"svc\""]);
    // stdout and stderr are separate pipes: their lines may arrive in either order.
    eventually(START, "both output lines logged", || {
        node.printed(&["hello from svc", "service=svc", "stream=\"stdout\""])
            && node.printed(&["oops", "service=svc", "stream=\"stderr\""])
    });
    let mut old = field(&first, "pid");
    for _ in 0..3 {
        // SAFETY: kill(2) on a pid we just read from the log; touches no memory.
        unsafe { libc::kill(old as i32, libc::SIGKILL) };
        let exited = node.wait_for(&["child exited", "id=\"svc\""], START);
        assert!(exited.contains("signal=9"), "{exited}");
        assert!(exited.contains("decision=restart"), "{exited}");
        let again = node.wait_for(&["child started", "id=\"svc\""], START);
        let new = field(&again, "pid");
        assert_ne!(new, old);
        assert!(running(new));
        assert!(state(old).is_none(), "old process {old} not reaped");
        old = new;
    }
    assert!(
        zombies_of(node.pid()).is_empty(),
        "zombies: {:?}",
        zombies_of(node.pid())
    );
    let (code, out) = stop(node);
    assert_eq!(code, 0, "{out}");
}

#[test]
fn restart_after_ms_is_honoured() {
    let delay_ms = 400;
    let (node, _dir) = node(
        "after",
        &format!(
            r#"
        [[supervisor.services]]
        id = "flaky"
        command = "sh"
        args = ["-c", "exit 3"]
        plan = [{{ restart_after_ms = {delay_ms} }}]
        count = "infinity"
        "#
        ),
    );
    let lines_of = |what: &str| -> Vec<String> {
        node.output()
            .lines()
            .filter(|l| l.contains(what) && l.contains("id=\"flaky\""))
            .map(String::from)
            .collect()
    };
    eventually(START, "three starts", || {
        lines_of("child started").len() >= 3
    });
    let (starts, exits) = (lines_of("child started"), lines_of("child exited"));
    for i in 0..2 {
        assert!(exits[i].contains("status=3"), "{}", exits[i]);
        assert!(
            exits[i].contains(&format!("restart in {delay_ms} ms")),
            "{}",
            exits[i]
        );
        let gap = timestamp(&starts[i + 1]) - timestamp(&exits[i]);
        assert!(gap >= delay_ms as f64 / 1000.0, "restarted after {gap} s");
        assert!(
            gap <= (Duration::from_millis(delay_ms) + MARGIN).as_secs_f64(),
            "restarted after {gap} s"
        );
    }
    let (code, out) = stop(node);
    assert_eq!(code, 0, "{out}");
}

#[test]
fn delete_forgets_the_service_and_the_node_keeps_running() {
    let (node, _dir) = node(
        "delete",
        r#"
        [[supervisor.services]]
        id = "once"
        command = "sh"
        args = ["-c", "exit 1"]
        plan = ["delete"]
        [[supervisor.services]]
        id = "clean"
        command = "true"
        "#,
    );
    let once = seen(&node, &["child exited", "id=\"once\""]);
    assert!(once.contains("decision=delete"), "{once}");
    // The default plan deletes a service that exits with status 0.
    let clean = seen(&node, &["child exited", "id=\"clean\""]);
    assert!(clean.contains("decision=delete"), "{clean}");
    assert!(
        clean.contains("plan_element=\"fn:default -> delete\""),
        "{clean}"
    );
    let (code, out) = stop(node);
    assert_eq!(code, 0, "{out}");
    assert_eq!(out.matches("child started id=\"once\"").count(), 1, "{out}");
}

#[test]
fn escalation_stops_the_node_with_a_non_zero_exit() {
    let (mut node, _dir) = node(
        "escalate",
        r#"
        [[supervisor.services]]
        id = "doomed"
        command = "sh"
        args = ["-c", "exit 7"]
        plan = ["restart"]
        count = 1
        on_exhausted = "stop_node"
        [[supervisor.services]]
        id = "bystander"
        command = "sleep"
        args = ["1000"]
        "#,
    );
    let bystander = field(&seen(&node, &["child started", "id=\"bystander\""]), "pid");
    let status = node.wait_exit(START);
    assert_eq!(status.code(), Some(1), "{}", node.output());
    let line = node.wait_for(&["supervisor escalated"], STOP);
    assert!(line.contains("ERROR"), "{line}");
    assert!(
        line.contains("child `doomed`: reached max restart plan"),
        "{line}"
    );
    assert!(line.contains("exit status 7"), "{line}");
    assert!(node.printed(&["node stopping on failure", "exit_code=1"]));
    eventually(STOP, "bystander stopped", || !running(bystander));
}

#[test]
fn a_service_that_ignores_sigterm_is_killed_after_its_terminate_timeout() {
    let timeout_ms = 600;
    let (mut node, _dir) = node(
        "stubborn",
        &format!(
            r#"
        [[supervisor.services]]
        id = "stubborn"
        command = "sh"
        args = ["-c", "trap '' TERM; echo trapped; while :; do sleep 0.05; done"]
        terminate_timeout_ms = {timeout_ms}
        "#
        ),
    );
    let pid = field(&seen(&node, &["child started", "id=\"stubborn\""]), "pid");
    seen(&node, &["trapped"]);
    node.signal(libc::SIGTERM);
    let killed = node.wait_for(
        &[
            "did not stop within its terminate timeout",
            "id=\"stubborn\"",
        ],
        STOP,
    );
    let stopping = node
        .output()
        .lines()
        .find(|l| l.contains("stopping children"))
        .unwrap()
        .to_string();
    let waited = timestamp(&killed) - timestamp(&stopping);
    assert!(
        waited >= timeout_ms as f64 / 1000.0,
        "killed after {waited} s"
    );
    let status = node.wait_exit(STOP);
    assert_eq!(status.code(), Some(0), "{}", node.output());
    assert!(node.printed(&["child stopped", "id=\"stubborn\"", "signal=9"]));
    assert!(!running(pid));
}

#[test]
fn stopping_a_service_kills_its_grandchildren() {
    let (node, _dir) = node(
        "group",
        r#"
        [[supervisor.services]]
        id = "parent"
        command = "sh"
        args = ["-c", "sleep 1000 & echo grandchild=$!; wait"]
        "#,
    );
    let line = seen(&node, &["grandchild="]);
    let grandchild = field(&line.replace("grandchild=", " grandchild="), "grandchild");
    assert!(running(grandchild));
    let (code, out) = stop(node);
    assert_eq!(code, 0, "{out}");
    eventually(STOP, "grandchild gone", || !running(grandchild));
}

#[test]
fn a_sigkilled_node_leaves_no_service_running() {
    let (mut node, _dir) = node(
        "sigkill",
        r#"
        [[supervisor.services]]
        id = "a"
        command = "sleep"
        args = ["1000"]
        [[supervisor.services]]
        id = "b"
        command = "sh"
        args = ["-c", "exec sleep 1000"]
        [[supervisor.services]]
        id = "c"
        command = "sleep"
        args = ["1000"]
        "#,
    );
    let all = seen(&node, &["all children running"]);
    assert!(all.contains("running=3"), "{all}");
    let pids: Vec<u32> = node
        .output()
        .lines()
        .filter(|l| l.contains("child started"))
        .map(|l| field(l, "pid"))
        .collect();
    assert_eq!(pids.len(), 3);
    assert!(pids.iter().all(|&p| running(p)));
    node.signal(libc::SIGKILL);
    node.wait_exit(STOP);
    for pid in pids {
        eventually(STOP, &format!("service {pid} gone"), || !running(pid));
    }
}

#[test]
fn manifests_load_and_a_broken_one_is_reported_by_file_and_field() {
    let services = tempfile::tempdir().unwrap();
    let write = |folder: &str, manifest: &str| {
        let dir = services.path().join(folder);
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("manifest.json"), manifest).unwrap();
    };
    write(
        "good",
        r#"{"id": "good", "command": "./run.sh", "plan": ["restart"], "count": 2}"#,
    );
    let run = services.path().join("good/run.sh");
    std::fs::write(
        &run,
        "#!/bin/sh\necho running in $(pwd) as $TROUPE_SERVICE_ID\nexec sleep 1000\n",
    )
    .unwrap();
    std::fs::set_permissions(&run, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    write(
        "broken",
        r#"{"id": "broken", "command": "/bin/true", "plan": [{"restart_after": 5}]}"#,
    );
    let (node, _dir) = node(
        "manifests",
        &format!("services_dir = \"{}\"\n", services.path().display()),
    );
    let failed = seen(&node, &["service cannot start", "broken"]);
    assert!(
        failed.contains("broken/manifest.json: field `plan[0]`"),
        "{failed}"
    );
    assert!(failed.contains("unknown field `restart_after`"), "{failed}");
    let line = seen(&node, &["running in", "service=good"]);
    assert!(
        line.contains(&services.path().join("good").display().to_string()),
        "{line}"
    );
    assert!(line.contains("as good"), "{line}");
    let (code, out) = stop(node);
    assert_eq!(code, 0, "{out}");
}

#[test]
fn readiness_gates_the_services_that_start_after() {
    let port = free_port();
    let listener = format!(
        "import socket,time; time.sleep(0.3); s=socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1); s.bind(('127.0.0.1',{port})); s.listen(); print('listening', flush=True); time.sleep(1000)"
    );
    let (node, _dir) = node(
        "ready",
        &format!(
            r#"
        [[supervisor.services]]
        id = "db"
        command = "python3"
        args = ["-c", "{listener}"]
        ready = {{ tcp = "127.0.0.1:{port}" }}
        start_timeout_ms = 20000
        [[supervisor.services]]
        id = "logger"
        command = "sh"
        args = ["-c", "sleep 0.2; echo service is UP; exec sleep 1000"]
        ready = {{ log_line = "is UP$" }}
        [[supervisor.services]]
        id = "app"
        command = "sleep"
        args = ["1000"]
        after = ["db", "logger"]
        "#
        ),
    );
    seen(&node, &["all children running", "running=3"]);
    let out = node.output();
    let pos = |needle: &str| {
        out.find(needle)
            .unwrap_or_else(|| panic!("no {needle} in:\n{out}"))
    };
    assert!(
        pos("child ready id=\"db\"") < pos("child started id=\"app\""),
        "{out}"
    );
    assert!(
        pos("child ready id=\"logger\"") < pos("child started id=\"app\""),
        "{out}"
    );
    stop(node);
}

#[test]
fn a_service_that_never_becomes_ready_follows_its_plan() {
    let (node, _dir) = node(
        "notready",
        r#"
        [[supervisor.services]]
        id = "mute"
        command = "sleep"
        args = ["1000"]
        ready = { exec = ["false"] }
        start_timeout_ms = 500
        plan = ["wait"]
        "#,
    );
    let line = seen(&node, &["child exited", "id=\"mute\""]);
    assert!(line.contains("not ready within 500 ms"), "{line}");
    assert!(line.contains("decision=wait"), "{line}");
    stop(node);
}

#[test]
fn troupe_exe_is_expanded_and_output_goes_to_a_rotated_log_file() {
    let logs = tempfile::tempdir().unwrap();
    let log = logs.path().join("v.log");
    let (node, _dir) = node(
        "exe",
        &format!(
            r#"
        [[supervisor.services]]
        id = "version"
        command = "${{TROUPE_EXE}}"
        args = ["--version"]
        [[supervisor.services]]
        id = "chatty"
        command = "sh"
        args = ["-c", "i=0; while [ $i -lt 60 ]; do echo line-$i-xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx; i=$((i+1)); done; echo done-writing; exec sleep 1000"]
        log_file = {{ path = "{}", max_bytes = 1024, backups = 2 }}
        "#,
            log.display()
        ),
    );
    let line = seen(&node, &["service=version"]);
    assert!(line.contains("troupe "), "{line}");
    seen(&node, &["done-writing"]);
    eventually(START, "log file rotated", || {
        std::fs::read_to_string(&log).is_ok_and(|t| t.contains("done-writing"))
    });
    for path in [
        log.clone(),
        logs.path().join("v.log.1"),
        logs.path().join("v.log.2"),
    ] {
        let size = std::fs::metadata(&path).map(|m| m.len()).unwrap_or(0);
        assert!(size > 0 && size <= 1024, "{}: {size} bytes", path.display());
    }
    assert!(!logs.path().join("v.log.3").exists());
    stop(node);
}

#[test]
fn a_bad_service_entry_is_a_config_error_naming_the_key() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("bad.toml");
    let mut f = std::fs::File::create(&config).unwrap();
    writeln!(
        f,
        "roles = [\"supervisor\"]\n[[supervisor.services]]\nid = \"x\"\ncommand = \"true\"\nplan = [\"reboot\"]"
    )
    .unwrap();
    let mut cmd = troupe();
    cmd.arg("run").arg("--config").arg(&config);
    let (status, out) = run_to_end(cmd, STOP);
    assert_eq!(status.code(), Some(2), "{out}");
    assert!(out.contains("supervisor.services[0].plan[0]"), "{out}");
    assert!(out.contains("unknown plan element \"reboot\""), "{out}");
}
