//! Integration tests of a service's identity and limits, with real nodes and real `sh`
//! services: `user` and `group` (seen with `id`), `rlimits` (seen with `ulimit`), `umask`,
//! `env_file` (its values, its reading at each start, a bad line failing the start with the
//! file and line named), `memory_max` (an OOM kill reported as such, or, where the machine
//! offers no memory controller to cgroup v2, the start refused saying why), `ctl add` with
//! these keys, and `check-config` refusing bad ones by key.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Output;
use std::time::{Duration, Instant};

use serde_json::Value;
use troupe_tests::{troupe, Proc};

const START: Duration = Duration::from_secs(30);
const STOP: Duration = Duration::from_secs(20);
const SETTLE: Duration = Duration::from_secs(30);

fn unique(tag: &str) -> String {
    format!("limits-{tag}-{}", std::process::id())
}

fn root() -> bool {
    // SAFETY: geteuid(2) has no arguments and cannot fail.
    unsafe { libc::geteuid() == 0 }
}

/// A running node with the supervisor role; its folder holds its config, state and socket.
struct Node {
    proc: Proc,
    dir: tempfile::TempDir,
}

impl Node {
    fn start(tag: &str, services: &str) -> Node {
        Node::start_in(tag, tempfile::tempdir().unwrap(), services, None)
    }

    /// Starts a node in `dir` from `services` (TOML after `[supervisor]`), in cgroup
    /// `cgroup` (a cgroup v2 folder) when given.
    fn start_in(tag: &str, dir: tempfile::TempDir, services: &str, cgroup: Option<&Path>) -> Node {
        let config = dir.path().join("node.toml");
        std::fs::write(&config, node_config(tag, dir.path(), services)).unwrap();
        let mut cmd = troupe();
        cmd.arg("run").arg("--config").arg(&config);
        if let Some(cgroup) = cgroup {
            use std::os::unix::process::CommandExt;
            let procs =
                std::ffi::CString::new(cgroup.join("cgroup.procs").to_string_lossy().into_owned())
                    .unwrap();
            // SAFETY: between fork and exec only open(2), write(2) and close(2) on memory
            // prepared before the fork.
            unsafe {
                cmd.pre_exec(move || {
                    let fd = libc::open(procs.as_ptr(), libc::O_WRONLY);
                    if fd == -1 {
                        return Err(std::io::Error::last_os_error());
                    }
                    let written = libc::write(fd, c"0".as_ptr().cast(), 1);
                    libc::close(fd);
                    if written != 1 {
                        return Err(std::io::Error::last_os_error());
                    }
                    Ok(())
                });
            }
        }
        let mut proc = Proc::spawn(cmd);
        proc.wait_for(&["node ready"], START);
        Node { proc, dir }
    }

    fn socket(&self) -> PathBuf {
        self.dir.path().join("ctl.sock")
    }

    fn ctl(&self, args: &[&str]) -> Output {
        let mut cmd = troupe();
        cmd.arg("ctl").arg("--socket").arg(self.socket()).args(args);
        cmd.output().expect("run troupe ctl")
    }

    fn service(&self, id: &str) -> Value {
        let out = self.ctl(&["service", id, "--json"]);
        assert!(out.status.success(), "ctl service {id}: {}", text(&out));
        serde_json::from_slice(&out.stdout).unwrap()
    }

    /// Waits until service `id`'s status satisfies `check`.
    fn until(&self, id: &str, what: &str, check: impl Fn(&Value) -> bool) -> Value {
        let deadline = Instant::now() + SETTLE;
        loop {
            let status = self.service(id);
            if check(&status) {
                return status;
            }
            assert!(
                Instant::now() < deadline,
                "{id}: not {what} within {SETTLE:?}: {status}"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// The reason of service `id`'s last exit, once it has one.
    fn last_exit(&self, id: &str) -> String {
        let status = self.until(id, "exited", |s| s["last_exit"]["reason"].is_string());
        status["last_exit"]["reason"]
            .as_str()
            .unwrap_or_default()
            .to_string()
    }

    /// The first line the node printed with `needle`, waiting for it (whatever lines were
    /// waited for before).
    fn printed(&self, needle: &str) -> String {
        let deadline = Instant::now() + START;
        loop {
            let output = self.proc.output();
            if let Some(line) = output.lines().find(|l| l.contains(needle)) {
                return line.to_string();
            }
            assert!(
                Instant::now() < deadline,
                "no line with {needle:?} within {START:?}:\n{output}"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    fn stop(mut self) {
        self.proc.signal(libc::SIGTERM);
        let status = self.proc.wait_exit(STOP);
        assert!(status.success(), "{status:?}\n{}", self.proc.output());
    }
}

fn node_config(tag: &str, dir: &Path, services: &str) -> String {
    format!(
        "name = \"{}\"\nroles = [\"supervisor\"]\nshutdown_timeout = \"10s\"\n[supervisor]\nstate_dir = \"{}\"\n{services}\n[control]\nsocket = \"{}\"\n",
        unique(tag),
        dir.join("state").display(),
        dir.join("ctl.sock").display()
    )
}

fn text(out: &Output) -> String {
    format!(
        "status {:?}\nstdout: {}\nstderr: {}",
        out.status.code(),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// `check-config` on a node with `services`: must refuse (exit 2) naming `key` and saying
/// `says`.
fn check_config_refuses(services: &str, key: &str, says: &str) {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("node.toml");
    std::fs::write(&config, node_config("check", dir.path(), services)).unwrap();
    let mut cmd = troupe();
    cmd.arg("check-config").arg("--config").arg(&config);
    let out = cmd.output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    assert!(
        stderr.contains(key) && stderr.contains(says),
        "expected {key} and {says:?}: {stderr}"
    );
}

/// The name and id of the first entry of `/etc/passwd` or `/etc/group` (`file`) whose name
/// is one of `names`.
fn account(file: &str, names: &[&str]) -> Option<(String, u32)> {
    let text = std::fs::read_to_string(file).ok()?;
    names.iter().find_map(|name| {
        text.lines().find_map(|line| {
            let fields: Vec<&str> = line.split(':').collect();
            (fields.first() == Some(name))
                .then(|| fields.get(2)?.parse().ok())
                .flatten()
                .map(|id| (name.to_string(), id))
        })
    })
}

#[test]
fn services_run_as_the_user_and_group_they_name() {
    let user_entry = "[[supervisor.services]]\nid = \"as-nobody\"\ncommand = \"sh\"\nargs = [\"-c\", \"sleep 1000\"]\nuser = \"nobody\"\n";
    if !root() {
        check_config_refuses(user_entry, "supervisor.services[0].user", "not root");
        return;
    }
    let (user, uid) = account("/etc/passwd", &["nobody"]).expect("a nobody user");
    let (group, gid) = account("/etc/group", &["nogroup", "nobody"]).expect("a nobody group");
    let report = r#"echo \"ident $(id -u) $(id -g) [$(id -G)] $USER $HOME\"; exec sleep 1000"#;
    let services = format!(
        r#"
[[supervisor.services]]
id = "named"
command = "sh"
args = ["-c", "{report}"]
user = "{user}"
group = "{group}"

[[supervisor.services]]
id = "numbered"
command = "sh"
args = ["-c", "echo \"numbered $(id -u) $(id -g)\"; exec sleep 1000"]
user = {uid}
group = {gid}
"#
    );
    let node = Node::start("user", &services);
    // The two services print in either order.
    let line = node.printed("ident ");
    assert!(
        line.contains(&format!("ident {uid} {gid} [{gid}] {user} ")),
        "{line}"
    );
    let line = node.printed("numbered ");
    assert!(line.contains(&format!("numbered {uid} {gid}")), "{line}");
    let spec = &node.service("named")["spec"];
    assert_eq!(spec["user"], user.as_str());
    assert_eq!(spec["group"], group.as_str());
    assert_eq!(node.service("numbered")["spec"]["user"], uid);
    node.stop();

    check_config_refuses(
        "[[supervisor.services]]\nid = \"ghost\"\ncommand = \"sh\"\nuser = \"no-such-user-troupe\"\n",
        "supervisor.services[0].user",
        "no user \"no-such-user-troupe\"",
    );
}

#[test]
fn rlimits_are_seen_from_inside_and_a_refused_one_is_named() {
    let services = r#"
[[supervisor.services]]
id = "limited"
command = "sh"
args = ["-c", "echo \"limits n=$(ulimit -n) hn=$(ulimit -H -n) c=$(ulimit -c) s=$(ulimit -s) v=$(ulimit -v)\"; exec sleep 1000"]
rlimits = { nofile = [256, 512], core = 0, stack = "8MiB", as = "infinity" }

[[supervisor.services]]
id = "too-many"
command = "sh"
args = ["-c", "exec sleep 1000"]
rlimits = { nofile = 1073741824 }
plan = ["wait"]
"#;
    let node = Node::start("rlimits", services);
    let line = node.proc.nth_printed(&["limits n="], 1, START);
    assert!(
        line.contains("limits n=256 hn=512 c=0 s=8192 v=unlimited"),
        "{line}"
    );
    let spec = &node.service("limited")["spec"]["rlimits"];
    assert_eq!(spec["nofile"], serde_json::json!([256, 512]));
    assert_eq!(spec["stack"], "8MiB");
    assert_eq!(spec["as"], "infinity");
    // Above the kernel's nr_open: refused even to root, and the error names the key.
    let reason = node.last_exit("too-many");
    assert!(
        reason.contains("rlimits.nofile: setrlimit to 1073741824 (soft), 1073741824 (hard)"),
        "{reason}"
    );
    node.stop();

    check_config_refuses(
        "[[supervisor.services]]\nid = \"a\"\ncommand = \"sh\"\nrlimits = { files = 10 }\n",
        "supervisor.services[0].rlimits.files",
        "valid ones are as, core, cpu",
    );
}

#[test]
fn the_umask_applies_to_what_the_service_creates() {
    let dir = tempfile::tempdir().unwrap();
    let made = dir.path().join("made");
    let services = format!(
        r#"
[[supervisor.services]]
id = "masked"
command = "sh"
args = ["-c", "echo \"mask $(umask)\"; : > {made}; echo \"mode $(stat -c %a {made})\"; exec sleep 1000"]
umask = "0027"
"#,
        made = made.display()
    );
    let node = Node::start_in("umask", dir, &services, None);
    let line = node.proc.nth_printed(&["mask "], 1, START);
    assert!(line.contains("mask 0027"), "{line}");
    let line = node.proc.nth_printed(&["mode "], 1, START);
    assert!(line.contains("mode 640"), "{line}");
    assert_eq!(node.service("masked")["spec"]["umask"], "0027");
    node.stop();

    check_config_refuses(
        "[[supervisor.services]]\nid = \"a\"\ncommand = \"sh\"\numask = \"0999\"\n",
        "supervisor.services[0].umask",
        "octal",
    );
}

#[test]
fn env_file_values_apply_at_each_start_and_a_bad_line_fails_the_start() {
    let dir = tempfile::tempdir().unwrap();
    let env = dir.path().join("app.env");
    std::fs::write(
        &env,
        "# the app's settings\nA=from-file\nB=\"two words\"\nexport C=c\n\nSHARED=file\n",
    )
    .unwrap();
    let bad = dir.path().join("bad.env");
    std::fs::write(&bad, "GOOD=1\nthis line is wrong\n").unwrap();
    let services = format!(
        r#"
[[supervisor.services]]
id = "envy"
command = "sh"
args = ["-c", "echo \"envy A=$A B=$B C=$C SHARED=$SHARED\"; exec sleep 1000"]
cwd = "{dir}"
env_file = "app.env"
env = {{ SHARED = "env" }}

[[supervisor.services]]
id = "broken"
command = "sh"
args = ["-c", "exec sleep 1000"]
env_file = "{bad}"
plan = ["wait"]
"#,
        dir = dir.path().display(),
        bad = bad.display()
    );
    let node = Node::start_in("env", dir, &services, None);
    let line = node.proc.nth_printed(&["envy A="], 1, START);
    assert!(
        line.contains("envy A=from-file B=two words C=c SHARED=env"),
        "{line}"
    );
    // Read again at the next start.
    std::fs::write(&env, "A=changed\n").unwrap();
    let out = node.ctl(&["restart", "envy"]);
    assert!(out.status.success(), "{}", text(&out));
    let line = node.proc.nth_printed(&["envy A="], 2, START);
    assert!(line.contains("envy A=changed B= C= SHARED=env"), "{line}");

    let reason = node.last_exit("broken");
    assert!(
        reason.contains(&format!(
            "env_file {}, line 2: expected KEY=VALUE",
            bad.display()
        )),
        "{reason}"
    );
    assert_eq!(node.service("broken")["state"], "waiting");
    node.stop();
}

/// Where the cgroup v2 hierarchy is mounted.
fn cgroup2_mount() -> Option<PathBuf> {
    let mountinfo = std::fs::read_to_string("/proc/self/mountinfo").ok()?;
    mountinfo.lines().find_map(|line| {
        let (left, right) = line.split_once(" - ")?;
        let mount = left.split_whitespace().nth(4)?;
        (right.split_whitespace().next()? == "cgroup2").then(|| PathBuf::from(mount))
    })
}

fn lists(file: &Path, controller: &str) -> bool {
    std::fs::read_to_string(file)
        .map(|t| t.split_whitespace().any(|c| c == controller))
        .unwrap_or(false)
}

/// Whether `/proc/cgroups` binds `controller` to a cgroup v1 hierarchy.
fn bound_to_v1(controller: &str) -> bool {
    std::fs::read_to_string("/proc/cgroups")
        .unwrap_or_default()
        .lines()
        .map(|l| l.split_whitespace().collect::<Vec<_>>())
        .any(|f| f.first() == Some(&controller) && f.get(1).is_some_and(|h| *h != "0"))
}

const HOG: &str = r#"
[[supervisor.services]]
id = "hog"
command = "sh"
args = ["-c", "exec tail /dev/zero"]
memory_max = "32MiB"
cpu_max = "50%"
pids_max = 16
plan = ["wait"]
"#;

/// `memory_max` where the machine offers the memory controller to cgroup v2: the node runs in
/// a cgroup of its own (as under systemd with `Delegate=yes`), the limits are written to the
/// service's cgroup, and the service's OOM kill is reported as such. Where it does not, the
/// start is refused with the key and the reason.
#[test]
fn memory_max_reports_an_oom_kill_or_refuses_the_start_saying_why() {
    let Some(mount) = cgroup2_mount() else {
        let node = Node::start("oom", HOG);
        let reason = node.last_exit("hog");
        assert!(
            reason.contains("memory_max: it is applied through the service's cgroup, and this node's services get none"),
            "{reason}"
        );
        node.stop();
        return;
    };
    if !lists(&mount.join("cgroup.controllers"), "memory") {
        // This machine: the memory controller is bound to cgroup v1 (a hybrid layout).
        let node = Node::start("oom", HOG);
        let reason = node.last_exit("hog");
        let mut expected = format!(
            "memory_max: the memory controller is not available in the cgroup v2 hierarchy at {}",
            mount.display()
        );
        if bound_to_v1("memory") {
            expected.push_str(" (it is bound to cgroup v1)");
        }
        if !root() && !reason.contains("memory_max: ") {
            // Without write access to cgroups there is no cgroup mechanism at all.
            assert!(reason.contains("get none"), "{reason}");
        } else {
            assert!(reason.contains(&expected), "{reason}\nexpected: {expected}");
        }
        assert_eq!(node.service("hog")["state"], "waiting");
        node.stop();
        return;
    }
    if !root() {
        eprintln!("skipped: the OOM case needs root to give the node a cgroup of its own");
        return;
    }
    // A cgroup for the node alone, under the hierarchy's root, with the controllers offered.
    let own = mount.join(format!("troupe-limits-test-{}", std::process::id()));
    std::fs::create_dir_all(&own).unwrap();
    for controller in ["memory", "cpu", "pids"] {
        let _ = std::fs::write(
            mount.join("cgroup.subtree_control"),
            format!("+{controller}"),
        );
    }
    let dir = tempfile::tempdir().unwrap();
    let node = Node::start_in("oom", dir, HOG, Some(&own));
    let status = node.until("hog", "exited", |s| s["last_exit"]["reason"].is_string());
    let reason = status["last_exit"]["reason"].as_str().unwrap_or_default();
    if lists(&own.join("cgroup.controllers"), "memory") {
        assert_eq!(
            reason, "killed by the kernel's OOM killer (memory_max 32MiB)",
            "{status}"
        );
        assert_eq!(status["last_exit"]["signal_name"], "SIGKILL");
        let cgroup = status["containment"]
            .as_str()
            .and_then(|c| c.strip_prefix("cgroup "))
            .map(PathBuf::from)
            .expect("a cgroup");
        let read = |file: &str| {
            std::fs::read_to_string(cgroup.join(file))
                .unwrap_or_default()
                .trim()
                .to_string()
        };
        assert_eq!(read("memory.max"), (32u64 << 20).to_string());
        assert_eq!(read("cpu.max"), "50000 100000");
        assert_eq!(read("pids.max"), "16");
    } else {
        // The hierarchy's root would not offer memory to a new cgroup (a cgroup namespace,
        // say): the node says so.
        assert!(
            reason.contains(
                "memory_max: the memory controller is not delegated to the node's cgroup"
            ),
            "{reason}"
        );
    }
    node.stop();
    // The node moved itself to a leaf of `own` to enable the controllers: remove both.
    if let Ok(entries) = std::fs::read_dir(&own) {
        for entry in entries.flatten().filter(|e| e.path().is_dir()) {
            let _ = std::fs::remove_dir(entry.path());
        }
    }
    let _ = std::fs::remove_dir(&own);
}

#[test]
fn ctl_add_takes_limits_and_refuses_bad_ones_by_key() {
    let node = Node::start("add", "");
    let spec = node.dir.path().join("added.toml");
    std::fs::write(
        &spec,
        "id = \"added\"\ncommand = \"sh\"\nargs = [\"-c\", \"echo \\\"added $(umask) $(ulimit -n)\\\"; exec sleep 1000\"]\numask = \"0077\"\nrlimits = { nofile = 128 }\n",
    )
    .unwrap();
    let out = node.ctl(&["add", spec.to_str().unwrap()]);
    assert!(out.status.success(), "{}", text(&out));
    let node = node;
    let line = node.proc.nth_printed(&["added "], 1, START);
    assert!(line.contains("added 0077 128"), "{line}");
    let status = node.service("added");
    assert_eq!(status["spec"]["umask"], "0077");
    assert_eq!(status["spec"]["rlimits"]["nofile"], 128);

    let mut bad = std::fs::File::create(node.dir.path().join("bad.toml")).unwrap();
    bad.write_all(b"id = \"bad\"\ncommand = \"sh\"\nrlimits = { files = 1 }\n")
        .unwrap();
    let out = node.ctl(&["add", node.dir.path().join("bad.toml").to_str().unwrap()]);
    assert!(!out.status.success(), "{}", text(&out));
    let said = text(&out);
    assert!(
        said.contains("rlimits.files") && said.contains("valid ones are"),
        "{said}"
    );
    node.stop();
}
