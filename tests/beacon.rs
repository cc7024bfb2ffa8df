//! Integration tests of the `beacon` role and the cluster client, running real `troupe`
//! processes on free loopback ports: registration and requirements, liveness after `kill -9`,
//! beacon restarts, several beacons, the cookie, resumable watches, a Python client and
//! malformed input.
//!
//! Nodes heartbeat every 200 ms here (liveness 3), so "offline" takes 600 ms; every wait adds
//! a generous margin because the machine is shared.

use std::io::Write;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use serde_json::Value;
use troupe_tests::{free_port, run_to_end, troupe, Proc};

const START: Duration = Duration::from_secs(30);
const STOP: Duration = Duration::from_secs(15);
const HEARTBEAT: Duration = Duration::from_millis(200);
const LIVENESS: u32 = 3;
/// Added to every computed bound: the machine is shared with other builds and tests.
const MARGIN: Duration = Duration::from_secs(5);

/// A temporary directory holding one test's config files, cookies and snapshots.
struct Scene {
    dir: tempfile::TempDir,
    tag: String,
}

impl Scene {
    fn new(tag: &str) -> Scene {
        Scene {
            dir: tempfile::tempdir().unwrap(),
            tag: format!("{tag}-{}", std::process::id()),
        }
    }

    /// A node name unique to this test run.
    fn name(&self, node: &str) -> String {
        format!("{}-{node}", self.tag)
    }

    fn path(&self, file: &str) -> PathBuf {
        self.dir.path().join(file)
    }

    fn write(&self, file: &str, text: &str) -> PathBuf {
        let path = self.path(file);
        let mut f = std::fs::File::create(&path).unwrap();
        f.write_all(text.as_bytes()).unwrap();
        path
    }

    /// A cookie file readable by its owner only.
    fn cookie(&self, file: &str, secret: &str) -> PathBuf {
        let path = self.write(file, &format!("{secret}\n"));
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
        path
    }

    /// A node running only the beacon role on `port`; `extra` goes into its `[beacon]` table,
    /// `cluster` into its `[cluster]` table.
    fn beacon(&self, node: &str, port: u16, extra: &str, cluster: &str) -> Proc {
        let name = self.name(node);
        let config = self.write(
            &format!("{node}.toml"),
            &format!(
                "name = \"{name}\"\nroles = [\"beacon\"]\n\
                 [beacon]\nbind = \"tcp://127.0.0.1:{port}\"\n{extra}\n\
                 [cluster]\n{cluster}\n"
            ),
        );
        let mut proc = run(&config);
        proc.wait_for(&["beacon listening", &format!("127.0.0.1:{port}")], START);
        proc
    }

    /// The text of a member node's config: it runs the example role and registers with
    /// `beacons`, offering `resource` and needing `requires`; `cluster` adds keys to its
    /// `[cluster]` table (replacing the defaults for `endpoints` and `heartbeat_interval`).
    fn member_config(
        &self,
        node: &str,
        beacons: &[u16],
        resource: &str,
        requires: &[&str],
        cluster: &str,
    ) -> PathBuf {
        let name = self.name(node);
        let beacons: Vec<String> = beacons
            .iter()
            .map(|p| format!("\"tcp://127.0.0.1:{p}\""))
            .collect();
        let requires: Vec<String> = requires.iter().map(|r| format!("\"{r}\"")).collect();
        let mut table = format!(
            "beacons = [{}]\nresources = [\"{resource}\"]\nrequires = [{}]\nrequest_timeout = \"1s\"\n{cluster}\n",
            beacons.join(", "),
            requires.join(", "),
        );
        if !cluster.contains("endpoints") {
            table.push_str("endpoints = { api = \"tcp://10.9.9.9:1\" }\n");
        }
        if !cluster.contains("heartbeat_interval") {
            table.push_str(&format!(
                "heartbeat_interval = \"{}ms\"\n",
                HEARTBEAT.as_millis()
            ));
        }
        self.write(
            &format!("{node}.toml"),
            &format!(
                "name = \"{name}\"\nroles = [\"heartbeat\"]\n[heartbeat]\ninterval = \"1h\"\n[cluster]\n{table}"
            ),
        )
    }

    /// Starts a member node and waits until it is registered with every beacon.
    fn member(
        &self,
        node: &str,
        beacons: &[u16],
        resource: &str,
        requires: &[&str],
        cluster: &str,
    ) -> Proc {
        let config = self.member_config(node, beacons, resource, requires, cluster);
        let mut proc = run(&config);
        for _ in beacons {
            proc.wait_for(&["registered with the beacon"], START);
        }
        proc
    }

    /// Runs `troupe cluster ARGS --json` against `beacons` (with `cluster` keys such as the
    /// cookie) and returns its exit code and the JSON document it printed.
    fn ask(&self, beacons: &[u16], cluster: &str, args: &[&str]) -> (Option<i32>, Value) {
        let config = self.member_config("ops", beacons, "ops", &[], cluster);
        let mut cmd = troupe();
        cmd.arg("cluster")
            .arg("--config")
            .arg(&config)
            .arg("--json")
            .args(args);
        let (status, output) = run_to_end(cmd, START);
        let json = output
            .lines()
            .find(|line| line.starts_with('{'))
            .map(|line| serde_json::from_str(line).expect("JSON output"))
            .unwrap_or(Value::Null);
        (status.code(), json)
    }
}

fn run(config: &Path) -> Proc {
    let mut cmd = troupe();
    cmd.arg("run").arg("--config").arg(config);
    Proc::spawn(cmd)
}

fn names(nodes: &Value) -> Vec<String> {
    nodes
        .as_array()
        .map(|nodes| {
            nodes
                .iter()
                .map(|n| n["name"].as_str().unwrap_or_default().to_string())
                .collect()
        })
        .unwrap_or_default()
}

/// How long a silent node may stay online: liveness × interval, plus the margin.
fn offline_bound() -> Duration {
    HEARTBEAT * LIVENESS + MARGIN
}

/// Waits for a line with every needle, unless one was printed already (an earlier wait may
/// have read past it).
fn wait_printed(proc: &mut Proc, needles: &[&str], within: Duration) {
    if !proc.printed(needles) {
        proc.wait_for(needles, within);
    }
}

/// Waits until the beacon's log shows `node` up (by name).
fn wait_up(beacon: &mut Proc, node: &str, within: Duration) {
    wait_printed(beacon, &["node up", &format!("node={node} ")], within);
}

/// A watch started with `troupe cluster watch --json --count N`, read line by line.
fn watch(scene: &Scene, beacons: &[u16], cluster: &str, args: &[&str]) -> Proc {
    let config = scene.member_config("watcher", beacons, "ops", &[], cluster);
    let mut cmd = troupe();
    cmd.arg("cluster")
        .arg("--config")
        .arg(&config)
        .args(["--json", "watch"])
        .args(args);
    Proc::spawn(cmd)
}

/// The next JSON line of a watch.
fn next_event(watcher: &mut Proc, within: Duration) -> Value {
    let line = watcher.wait_for(&["{\""], within);
    serde_json::from_str(&line).expect("a JSON event")
}

#[test]
fn registers_and_answers_get_requirements_with_online_providers() {
    let scene = Scene::new("reqs");
    let port = free_port();
    let mut beacon = scene.beacon("beacon", port, "", "");
    let provider = scene.member("store", &[port], "store", &[], "");
    wait_up(&mut beacon, &scene.name("store"), START);
    let mut consumer = scene.member("app", &[port], "app", &["store", "cache"], "");
    // The consumer says what it still waits for instead of failing.
    wait_printed(&mut consumer, &["requirements unmet", "cache"], START);

    let (code, answer) = scene.ask(&[port], "", &["requirements", &scene.name("app")]);
    assert_eq!(code, Some(0), "{answer}");
    assert_eq!(names(&answer["offers"]["store"]), [scene.name("store")]);
    let offered = &answer["offers"]["store"][0];
    assert_eq!(offered["status"], "online");
    assert_eq!(offered["endpoints"]["api"], "tcp://10.9.9.9:1");
    assert_eq!(answer["offers"]["cache"], serde_json::json!([]));
    assert_eq!(answer["unmet"], serde_json::json!(["cache"]));

    let (code, answer) = scene.ask(&[port], "", &["lookup", "store"]);
    assert_eq!(code, Some(0));
    assert_eq!(names(&answer["nodes"]), [scene.name("store")]);

    // The store restarts at once (kill -9, so no deregistration) with another endpoint: the
    // entry is updated, never duplicated.
    provider.signal(libc::SIGKILL);
    drop(provider);
    let config = scene.member_config(
        "store",
        &[port],
        "store",
        &[],
        "endpoints = { api = \"tcp://10.9.9.9:2\" }",
    );
    let mut provider = run(&config);
    provider.wait_for(&["registered with the beacon"], START);
    let (_, answer) = scene.ask(&[port], "", &["list"]);
    let stores: Vec<&Value> = answer["nodes"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|n| n["name"] == scene.name("store").as_str())
        .collect();
    assert_eq!(stores.len(), 1, "{answer}");
    assert_eq!(stores[0]["offers"]["store"]["api"], "tcp://10.9.9.9:2");
    assert_eq!(stores[0]["status"], "online");
}

#[test]
fn a_killed_node_goes_offline_in_time_is_never_offered_and_watchers_are_told() {
    let scene = Scene::new("liveness");
    let port = free_port();
    let mut beacon = scene.beacon("beacon", port, "", "");
    let store = scene.member("store", &[port], "store", &[], "");
    let mut app = scene.member("app", &[port], "app", &["store"], "");
    wait_printed(&mut app, &["requirements met"], START);
    let mut watcher = watch(&scene, &[port], "", &["store"]);
    let snapshot = next_event(&mut watcher, START);
    assert_eq!(snapshot["snapshot"], true);
    assert_eq!(names(&snapshot["nodes"]), [scene.name("store")]);

    let killed = Instant::now();
    store.signal(libc::SIGKILL);
    let down = next_event(&mut watcher, offline_bound());
    let detected = killed.elapsed();
    assert_eq!(down["kind"], "nodedown", "{down}");
    assert_eq!(down["node"]["name"], scene.name("store").as_str());
    assert_eq!(down["node"]["status"], "offline");
    assert_eq!(down["rev"], snapshot["rev"].as_u64().unwrap() + 1);
    assert!(detected <= offline_bound(), "detected after {detected:?}");
    beacon.wait_for(&["node down", &scene.name("store")], MARGIN);

    // Offline nodes are never offered; the consumer notices too.
    let (_, answer) = scene.ask(&[port], "", &["requirements", &scene.name("app")]);
    assert_eq!(answer["offers"]["store"], serde_json::json!([]), "{answer}");
    assert_eq!(answer["unmet"], serde_json::json!(["store"]));
    let (_, answer) = scene.ask(&[port], "", &["lookup", "store"]);
    assert_eq!(answer["nodes"], serde_json::json!([]));
    app.wait_for(&["requirements unmet", "store"], START);

    // It comes back: online again, watchers told, the consumer's requirements met again.
    let mut store = run(&scene.path("store.toml"));
    store.wait_for(&["registered with the beacon"], START);
    let up = next_event(&mut watcher, START);
    assert_eq!(
        (up["kind"].as_str(), up["node"]["status"].as_str()),
        (Some("nodeup"), Some("online"))
    );
    app.wait_for(&["requirements met"], START);

    // A graceful stop deregisters at once: `removed`, with no `nodedown` before it.
    store.signal(libc::SIGTERM);
    assert_eq!(store.wait_exit(STOP).code(), Some(0), "{}", store.output());
    let removed = next_event(&mut watcher, START);
    assert_eq!(removed["kind"], "removed", "{removed}");
}

#[test]
fn a_restarted_beacon_has_the_whole_registry_again_within_an_interval() {
    let scene = Scene::new("restart");
    let port = free_port();
    let snapshot = scene.path("beacon.json");
    let beacon_keys = format!(
        "snapshot_file = \"{}\"\nsnapshot_interval = \"100ms\"",
        snapshot.display()
    );
    let mut beacon = scene.beacon("beacon", port, &beacon_keys, "");
    let _store = scene.member("store", &[port], "store", &[], "");
    let _app = scene.member("app", &[port], "app", &["store"], "");
    // Wait until the snapshot holds both nodes (bounded polling of a file).
    let deadline = Instant::now() + START;
    loop {
        let text = std::fs::read_to_string(&snapshot).unwrap_or_default();
        if text.contains(&scene.name("store")) && text.contains(&scene.name("app")) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "snapshot never held both nodes: {text}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }

    beacon.signal(libc::SIGKILL);
    beacon.wait_exit(STOP);
    let mut beacon = run(&scene.path("beacon.toml"));
    // Restored from the snapshot, but offline until each node is heard from again.
    beacon.wait_for(&["registry restored", "restored=2"], START);
    beacon.wait_for(&["beacon listening"], START);
    let listening = Instant::now();
    let bound = HEARTBEAT + MARGIN;
    for _ in 0..2 {
        beacon.wait_for(&["node up"], bound.saturating_sub(listening.elapsed()));
    }
    for node in ["store", "app"] {
        assert!(
            beacon.printed(&["node up", &format!("node={} ", scene.name(node))]),
            "{}",
            beacon.output()
        );
    }
    let (_, answer) = scene.ask(&[port], "", &["list"]);
    let nodes = answer["nodes"].as_array().unwrap();
    let online = nodes.iter().filter(|n| n["status"] == "online").count();
    assert!(online >= 2, "{answer}");
}

#[test]
fn with_two_beacons_one_killed_lookups_are_still_answered() {
    let scene = Scene::new("two");
    let (p1, p2) = (free_port(), free_port());
    let mut b1 = scene.beacon("b1", p1, "", "");
    let mut b2 = scene.beacon("b2", p2, "", "");
    let _store = scene.member("store", &[p1, p2], "store", &[], "");
    let mut app = scene.member("app", &[p1, p2], "app", &["store"], "");
    for beacon in [&mut b1, &mut b2] {
        wait_up(beacon, &scene.name("store"), START);
        wait_up(beacon, &scene.name("app"), START);
    }
    wait_printed(&mut app, &["requirements met"], START);

    b1.signal(libc::SIGKILL);
    b1.wait_exit(STOP);
    // The operator's client is configured with both beacons, the dead one first.
    let (code, answer) = scene.ask(&[p1, p2], "", &["lookup", "store"]);
    assert_eq!(code, Some(0), "{answer}");
    assert_eq!(names(&answer["nodes"]), [scene.name("store")]);
    let (code, answer) = scene.ask(&[p1, p2], "", &["requirements", &scene.name("app")]);
    assert_eq!(code, Some(0), "{answer}");
    assert_eq!(names(&answer["offers"]["store"]), [scene.name("store")]);
    // The nodes keep heartbeating the survivor: still online there after liveness intervals.
    let (_, answer) = scene.ask(&[p2], "", &["list"]);
    assert!(
        answer["nodes"]
            .as_array()
            .unwrap()
            .iter()
            .all(|n| n["status"] == "online"),
        "{answer}"
    );
    assert!(!app.printed(&["requirements unmet"]), "{}", app.output());
}

#[test]
fn a_wrong_cookie_is_refused_and_logged() {
    let scene = Scene::new("cookie");
    let port = free_port();
    let right = scene.cookie("right", "correct horse battery staple");
    let wrong = scene.cookie("wrong", "tr0ub4dor&3");
    let right_key = format!("cookie_file = \"{}\"", right.display());
    let wrong_key = format!("cookie_file = \"{}\"", wrong.display());
    let mut beacon = scene.beacon("beacon", port, "", &right_key);
    assert!(beacon.printed(&["beacon listening", "authenticated=true"]));
    let _good = scene.member("good", &[port], "store", &[], &right_key);
    wait_up(&mut beacon, &scene.name("good"), START);

    let mut bad = run(&scene.member_config("bad", &[port], "store", &[], &wrong_key));
    bad.wait_for(&["refused this node's cookie"], START);
    beacon.wait_for(
        &["authentication failed: wrong cookie", &scene.name("bad")],
        START,
    );
    let mut none = run(&scene.member_config("none", &[port], "store", &[], ""));
    none.wait_for(&["requires a cookie and this node has none"], START);

    let (code, answer) = scene.ask(&[port], &right_key, &["list"]);
    assert_eq!(code, Some(0));
    assert_eq!(names(&answer["nodes"]), [scene.name("good")]);
    // An operator with the wrong cookie gets no answer, and is told why.
    let config = scene.member_config("ops", &[port], "ops", &[], &wrong_key);
    let mut cmd = troupe();
    cmd.arg("cluster").arg("--config").arg(&config).arg("list");
    let (status, output) = run_to_end(cmd, START);
    assert_eq!(status.code(), Some(1), "{output}");
    assert!(output.contains("refused this node's cookie"), "{output}");
    // The secret never appears in any log.
    for proc in [&beacon, &bad] {
        assert!(!proc.output().contains("battery") && !proc.output().contains("tr0ub4dor"));
    }
}

#[test]
fn a_watch_resumes_from_its_revision_or_gets_a_snapshot() {
    // Exact revision counts: slower heartbeats, so that a loaded machine cannot make a node
    // flap and add changes.
    const SLOW: &str = "heartbeat_interval = \"2s\"";
    let scene = Scene::new("resume");
    let port = free_port();
    let mut beacon = scene.beacon("beacon", port, "history = 4", "");
    let _s1 = scene.member("s1", &[port], "store", &[], SLOW);
    let mut first = watch(&scene, &[port], "", &["store", "--count", "2"]);
    let snapshot = next_event(&mut first, START);
    assert_eq!(names(&snapshot["nodes"]), [scene.name("s1")]);
    let _s2 = scene.member("s2", &[port], "store", &[], SLOW);
    let up = next_event(&mut first, START);
    assert_eq!(
        (up["kind"].as_str(), up["node"]["name"].as_str()),
        (Some("nodeup"), Some(scene.name("s2").as_str()))
    );
    assert_eq!(first.wait_exit(STOP).code(), Some(0));
    let epoch = up["epoch"].as_str().unwrap().to_string();
    let seen = up["rev"].as_u64().unwrap();

    // A change while nobody watches, then a watch that resumes after `seen`: exactly that change.
    let _s3 = scene.member("s3", &[port], "store", &[], SLOW);
    wait_up(&mut beacon, &scene.name("s3"), START);
    let since = format!("{epoch}:{seen}");
    let mut resumed = watch(
        &scene,
        &[port],
        "",
        &["store", "--since", &since, "--count", "1"],
    );
    let missed = next_event(&mut resumed, START);
    assert_eq!(missed.get("snapshot"), None, "{missed}");
    assert_eq!(
        (missed["kind"].as_str(), missed["rev"].as_u64()),
        (Some("nodeup"), Some(seen + 1))
    );
    assert_eq!(missed["node"]["name"], scene.name("s3").as_str());
    assert_eq!(resumed.wait_exit(STOP).code(), Some(0));

    // More changes than the history keeps (4), to another resource: resuming from `seen + 1`
    // is no longer possible, so the watch starts with a snapshot.
    let churn: Vec<Proc> = (0..5)
        .map(|i| scene.member(&format!("other{i}"), &[port], "other", &[], SLOW))
        .collect();
    for i in 0..5 {
        wait_up(&mut beacon, &scene.name(&format!("other{i}")), START);
    }
    let since = format!("{epoch}:{}", seen + 1);
    let mut late = watch(
        &scene,
        &[port],
        "",
        &["store", "--since", &since, "--count", "1"],
    );
    let snapshot = next_event(&mut late, START);
    assert_eq!(snapshot["snapshot"], true, "{snapshot}");
    assert_eq!(
        names(&snapshot["nodes"]),
        [scene.name("s1"), scene.name("s2"), scene.name("s3")]
    );
    drop(churn);
}

fn python(script: &str) -> Command {
    let mut cmd = Command::new("python3");
    cmd.arg(
        Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("python")
            .join(script),
    );
    cmd
}

#[test]
fn a_python_client_speaks_the_documented_protocol() {
    let scene = Scene::new("python");
    let port = free_port();
    let cookie = scene.cookie("cookie", "shared secret");
    let cookie_key = format!("cookie_file = \"{}\"", cookie.display());
    let mut beacon = scene.beacon("beacon", port, "", &cookie_key);
    let _store = scene.member("store", &[port], "store", &[], &cookie_key);
    wait_up(&mut beacon, &scene.name("store"), START);

    let py_node = scene.name("py");
    let mut cmd = python("beacon_client.py");
    cmd.arg(format!("tcp://127.0.0.1:{port}"))
        .args(["--node", &py_node, "--requires", "store"])
        .arg("--cookie-file")
        .arg(&cookie)
        .args(["--expect-provider", &scene.name("store")]);
    let (status, output) = run_to_end(cmd, START);
    assert_eq!(status.code(), Some(0), "{output}");
    assert!(output.contains("all checks passed"), "{output}");
    beacon.wait_for(&["node removed", &format!("node={py_node} ")], START);
}

#[test]
fn a_python_client_registers_several_resources_as_documented() {
    let scene = Scene::new("offers");
    let port = free_port();
    let cookie = scene.cookie("cookie", "shared secret");
    let cookie_key = format!("cookie_file = \"{}\"", cookie.display());
    let _beacon = scene.beacon("beacon", port, "", &cookie_key);
    let mut cmd = python("beacon_offers.py");
    cmd.arg(format!("tcp://127.0.0.1:{port}"))
        .args(["--node", &scene.name("multi")])
        .arg("--cookie-file")
        .arg(&cookie);
    let (status, output) = run_to_end(cmd, START);
    assert_eq!(status.code(), Some(0), "{output}");
    assert!(output.contains("all checks passed"), "{output}");
}

#[test]
fn malformed_input_is_answered_with_errors_and_the_beacon_keeps_going() {
    let scene = Scene::new("malformed");
    let port = free_port();
    let cookie = scene.cookie("cookie", "shared secret");
    let cookie_key = format!("cookie_file = \"{}\"", cookie.display());
    let mut beacon = scene.beacon("beacon", port, "", &cookie_key);
    let mut cmd = python("beacon_malformed.py");
    cmd.arg(format!("tcp://127.0.0.1:{port}"))
        .arg("--cookie-file")
        .arg(&cookie);
    let (status, output) = run_to_end(cmd, START);
    assert_eq!(status.code(), Some(0), "{output}");
    assert!(output.contains("all checks passed"), "{output}");
    assert!(beacon.printed(&["bad request", "code=bad_json"]));
    // Still serving: a node registers afterwards.
    let _store = scene.member("store", &[port], "store", &[], &cookie_key);
    wait_up(&mut beacon, &scene.name("store"), START);
    beacon.signal(libc::SIGTERM);
    assert_eq!(
        beacon.wait_exit(STOP).code(),
        Some(0),
        "{}",
        beacon.output()
    );
}

#[test]
fn the_shipped_single_machine_config_runs_a_beacon_and_registers_with_it() {
    let scene = Scene::new("single");
    let text = std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../configs/single.toml"),
    )
    .unwrap();
    // The same file on free ports, so that it cannot collide with anything else running.
    let mut text = text;
    for fixed in ["7400", "7501", "7502"] {
        text = text.replace(&format!(":{fixed}\""), &format!(":{}\"", free_port()));
    }
    let config = scene.write("single.toml", &text);
    let name = scene.name("single");
    let mut cmd = troupe();
    cmd.arg("run")
        .arg("--config")
        .arg(&config)
        .args(["--name", &name]);
    let mut node = Proc::spawn(cmd);
    node.wait_for(&["registered with the beacon"], START);
    assert!(
        node.printed(&["node up", &format!("node={name} "), "resource=ipc"]),
        "{}",
        node.output()
    );
    node.signal(libc::SIGTERM);
    assert_eq!(node.wait_exit(STOP).code(), Some(0), "{}", node.output());
    assert!(node.printed(&["role stopped", "role=\"cluster\""]));

    // The two-machine example checks out, with the edge registering at the hub's beacon.
    for (file, needle) in [
        ("beacon.toml", "beacons = [\"tcp://127.0.0.1:7400\"]"),
        ("edge.toml", "beacons = [\"tcp://10.0.0.1:7400\"]"),
    ] {
        let mut cmd = troupe();
        cmd.arg("check-config").arg("--config").arg(
            Path::new(env!("CARGO_MANIFEST_DIR"))
                .join("../configs")
                .join(file),
        );
        // The hub's snapshot folder (/var/lib/troupe) exists on a hub, not here.
        cmd.env(
            "TROUPE_BEACON__SNAPSHOT_FILE",
            scene
                .write("snapshot-folder-probe", "")
                .with_file_name("beacon.json"),
        );
        let (status, output) = run_to_end(cmd, STOP);
        assert_eq!(status.code(), Some(0), "{file}: {output}");
        assert!(output.contains(needle), "{file}: {output}");
    }
}

#[test]
fn bad_cluster_and_beacon_keys_exit_2_naming_the_key() {
    let scene = Scene::new("badkeys");
    for (text, key) in [
        (
            "[cluster]\nbeacons = [\"127.0.0.1:7400\"]",
            "`cluster.beacons[0]`",
        ),
        ("[cluster]\nheartbeat = \"1s\"", "`cluster.heartbeat`"),
        ("[beacon]\nliveness = 0", "`beacon.liveness`"),
        ("[beacon]\noffline_ttl = 5", "`beacon.offline_ttl`"),
    ] {
        let config = scene.write("bad.toml", &format!("roles = [\"heartbeat\"]\n{text}\n"));
        let mut cmd = troupe();
        cmd.arg("run").arg("--config").arg(&config);
        let (status, output) = run_to_end(cmd, STOP);
        assert_eq!(status.code(), Some(2), "{output}");
        assert!(output.contains(key), "{key}: {output}");
    }
    // A cookie file others can read is refused before anything starts, as a config error.
    let cookie = scene.write("open-cookie", "secret\n");
    std::fs::set_permissions(&cookie, std::fs::Permissions::from_mode(0o644)).unwrap();
    let config = scene.member_config(
        "open",
        &[free_port()],
        "store",
        &[],
        &format!("cookie_file = \"{}\"", cookie.display()),
    );
    let mut cmd = troupe();
    cmd.arg("run").arg("--config").arg(&config);
    let (status, output) = run_to_end(cmd, STOP);
    assert_eq!(status.code(), Some(2), "{output}");
    assert!(
        output.contains("cluster.cookie_file") && output.contains("chmod 600"),
        "{output}"
    );
}
