//! Cluster membership on etcd (`[cluster] backend = "etcd"`), with real `etcd` processes
//! (Debian's `etcd-server`, at /usr/bin/etcd or `$ETCD_BIN`) on free loopback ports with their
//! data in temporary folders, and real `troupe` nodes built with the `etcd` feature. Every
//! process is killed by its pid when the test ends, on a panic too (their guards' `Drop`).
//!
//! Needs the feature: `cargo test -p troupe-tests --features etcd --test etcd` (`make test`
//! passes it).

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use serde_json::Value;
use troupe_tests::etcd::{post, status, Etcd, Tls};
use troupe_tests::{eventually, free_port, troupe, Proc};

const START: Duration = Duration::from_secs(30);
const SETTLE: Duration = Duration::from_secs(20);
/// The heartbeat of every node here: a 250ms interval, 3 intervals of liveness, so a lease
/// TTL of 1s (etcd makes it at least its minimum, 2s with the default election timeout).
const BEAT: &str = "250ms";
/// The longest a lease lives here, with etcd's minimum TTL.
const TTL: Duration = Duration::from_secs(2);

/// A troupe node on etcd: its process (SIGKILLed on drop if still running) and folder.
struct Node {
    name: String,
    proc: Option<Proc>,
    dir: tempfile::TempDir,
}

impl Node {
    /// Starts `troupe run` as `name` with `body` (roles, tables) and a `[cluster]` table on
    /// `etcd` with `cluster` added; waits for "node ready".
    fn start(name: &str, etcd: &Etcd, body: &str, cluster: &str) -> Node {
        Node::configure(name, etcd, body, cluster, "").run()
    }

    /// [`Node::start`] with more keys in `[control]`.
    fn start_with_control(name: &str, etcd: &Etcd, body: &str, control: &str) -> Node {
        Node::configure(name, etcd, body, "", control).run()
    }

    fn configure(name: &str, etcd: &Etcd, body: &str, cluster: &str, control: &str) -> Node {
        let dir = tempfile::tempdir().unwrap();
        let config = format!(
            "name = \"{name}\"\nshutdown_timeout = \"10s\"\n{body}\n[control]\nsocket = \"{}\"\n{control}\n[cluster]\nbackend = \"etcd\"\netcd_endpoints = [{}]\netcd_prefix = \"/troupe/test/\"\nheartbeat_interval = \"{BEAT}\"\n{cluster}\n",
            dir.path().join("ctl.sock").display(),
            etcd.endpoints()
        )
        .replace("@DIR@", &dir.path().display().to_string());
        std::fs::write(dir.path().join("node.toml"), config).unwrap();
        Node {
            name: name.to_string(),
            proc: None,
            dir,
        }
    }

    fn run(mut self) -> Node {
        let mut cmd = troupe();
        cmd.arg("run").arg("--config").arg(self.config());
        let mut proc = Proc::spawn(cmd);
        proc.wait_for(&["node ready"], START);
        self.proc = Some(proc);
        self
    }

    fn config(&self) -> PathBuf {
        self.dir.path().join("node.toml")
    }

    fn proc(&self) -> &Proc {
        self.proc.as_ref().expect("the node runs")
    }

    /// `troupe ctl … --json` against this node.
    fn ctl_json(&self, args: &[&str]) -> Option<Value> {
        let out = troupe()
            .arg("ctl")
            .arg("--socket")
            .arg(self.dir.path().join("ctl.sock"))
            .args(args)
            .arg("--json")
            .output()
            .unwrap();
        out.status
            .success()
            .then(|| serde_json::from_slice(&out.stdout).ok())
            .flatten()
    }

    /// `troupe ctl ARGS` against this node, as text.
    fn ctl_text(&self, args: &[&str]) -> String {
        let out = troupe()
            .arg("ctl")
            .arg("--socket")
            .arg(self.dir.path().join("ctl.sock"))
            .args(args)
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// Waits until `check` holds for `ctl ARGS --json`.
    fn until(&self, args: &[&str], what: &str, check: impl Fn(&Value) -> bool) -> Value {
        let what = format!("{}: {args:?} {what}", self.name);
        eventually(SETTLE, &what, || match self.ctl_json(args) {
            Some(value) if check(&value) => Ok(value),
            seen => Err(format!("{seen:?}\n{}", self.proc().output())),
        })
    }

    /// Waits until this node's cluster client says `state` (registered, unreachable, …).
    fn cluster_state(&self, state: &str) -> Value {
        self.until(&["cluster"], state, |v| {
            v["client"]["beacons"][0]["state"] == state
        })
    }

    /// Kills the node with SIGKILL (a node still running when the test ends is killed when its
    /// `Proc` is dropped).
    fn kill(&mut self) {
        self.proc.take().expect("the node runs").kill_now();
    }
}

/// `troupe cluster ARGS --json` with `config`'s `[cluster]` table; its JSON on success.
fn cluster_json(config: &Path, args: &[&str]) -> Result<Value, String> {
    let out = troupe()
        .arg("cluster")
        .arg("--config")
        .arg(config)
        .args(args)
        .arg("--json")
        .output()
        .unwrap();
    match out.status.success() {
        true => serde_json::from_slice(&out.stdout).map_err(|e| e.to_string()),
        false => Err(String::from_utf8_lossy(&out.stderr).into_owned()),
    }
}

/// The names `troupe cluster list` shows.
fn listed(config: &Path) -> Option<Vec<String>> {
    let nodes = cluster_json(config, &["list"]).ok()?;
    Some(
        nodes["nodes"]
            .as_array()?
            .iter()
            .filter_map(|n| n["name"].as_str().map(String::from))
            .collect(),
    )
}

/// Waits until `check` holds for the listed names.
fn until_listed(config: &Path, what: &str, check: impl Fn(&[String]) -> bool) {
    eventually(SETTLE, &format!("listed {what}"), || match listed(config) {
        Some(names) if check(&names) => Ok(()),
        seen => Err(format!("{seen:?}")),
    })
}

fn ipc(extra: &str) -> String {
    format!("roles = [\"ipc\"]\n[ipc]\nsocket = \"@DIR@/ipc.sock\"\n{extra}")
}

#[test]
fn one_member_registers_looks_up_and_meets_requirements() {
    let etcd = Etcd::start(1);
    let db = Node::start("db-1", &etcd, &ipc(""), "resources = [\"db\"]\n");
    let app = Node::start("app-1", &etcd, &ipc(""), "requires = [\"db\"]\n");
    // The node's own view: registered, requirements met.
    let status = app.cluster_state("registered");
    assert_eq!(status["client"]["backend"], "etcd");
    app.until(&["cluster"], "met", |v| {
        v["client"]["requirements"] == "met"
    });
    let requirements = app.ctl_json(&["cluster"]).unwrap()["requirements"].clone();
    assert_eq!(
        requirements["offers"]["db"][0]["name"], "db-1",
        "{requirements}"
    );
    // The operator's commands, unchanged.
    until_listed(&app.config(), "both nodes", |names| {
        names.contains(&"db-1".to_string()) && names.contains(&"app-1".to_string())
    });
    let found = cluster_json(&app.config(), &["lookup", "db"]).unwrap();
    assert_eq!(found["nodes"][0]["name"], "db-1", "{found}");
    assert_eq!(found["nodes"][0]["status"], "online");
    let needs = cluster_json(&app.config(), &["requirements", "app-1"]).unwrap();
    assert!(needs.to_string().contains("db-1"), "{needs}");
    let unknown = cluster_json(&app.config(), &["requirements", "nobody"]).unwrap_err();
    assert!(unknown.contains("nobody"), "{unknown}");
    drop(db);
}

#[test]
fn one_member_watch_resumes_from_a_position() {
    let etcd = Etcd::start(1);
    let first = Node::start("w-1", &etcd, &ipc(""), "");
    let snapshot = cluster_json(&first.config(), &["watch", "--count", "1"]).unwrap();
    assert_eq!(snapshot["snapshot"], true, "{snapshot}");
    let names = snapshot["nodes"].to_string();
    assert!(names.contains("w-1"), "{snapshot}");
    let since = format!(
        "{}:{}",
        snapshot["epoch"].as_str().unwrap(),
        snapshot["rev"].as_u64().unwrap()
    );
    // A node registers after the snapshot; a watch resumed from there sees it come, with no
    // snapshot first.
    let second = Node::start("w-2", &etcd, &ipc(""), "");
    let resumed = cluster_json(
        &first.config(),
        &["watch", "--since", &since, "--count", "1"],
    )
    .unwrap();
    assert_eq!(resumed["kind"], "nodeup", "{resumed}");
    assert_eq!(resumed["node"]["name"], "w-2", "{resumed}");
    // A position of another etcd (or a future one) starts with a snapshot.
    let elsewhere = cluster_json(
        &first.config(),
        &["watch", "--since", "etcd-0:1", "--count", "1"],
    )
    .unwrap();
    assert_eq!(elsewhere["snapshot"], true, "{elsewhere}");
    // Once etcd compacted the history past a position, resuming from it reads afresh. (A key
    // outside the prefix moves the revision past the one the resume would start from.)
    let put = r#"{"key": "L290aGVyL3g=", "value": "MQ=="}"#;
    post(etcd.members[0].client, "/v3/kv/put", put).unwrap();
    let now = status(etcd.members[0].client).unwrap()["header"]["revision"]
        .as_str()
        .unwrap()
        .to_string();
    let compaction = format!("{{\"revision\": \"{now}\", \"physical\": true}}");
    post(etcd.members[0].client, "/v3/kv/compaction", &compaction).unwrap();
    let compacted = cluster_json(
        &first.config(),
        &["watch", "--since", &since, "--count", "1"],
    )
    .unwrap();
    assert_eq!(compacted["snapshot"], true, "{compacted}");
    assert_eq!(
        compacted["nodes"].as_array().unwrap().len(),
        2,
        "{compacted}"
    );
    drop(second);
}

#[test]
fn one_member_a_killed_node_disappears_within_its_ttl() {
    let etcd = Etcd::start(1);
    let watcher = Node::start("watcher", &etcd, &ipc(""), "");
    let mut victim = Node::start("victim", &etcd, &ipc(""), "");
    until_listed(&watcher.config(), "the victim", |n| {
        n.contains(&"victim".to_string())
    });
    let killed = Instant::now();
    victim.kill();
    until_listed(&watcher.config(), "without the victim", |n| {
        !n.contains(&"victim".to_string())
    });
    let gone = killed.elapsed();
    assert!(
        gone <= TTL + Duration::from_secs(2),
        "the killed node went after {gone:?}, its TTL is at most {TTL:?}"
    );
}

#[test]
fn one_member_a_node_cut_off_beyond_its_ttl_registers_again() {
    let etcd = Etcd::start(1);
    let watcher = Node::start("watcher", &etcd, &ipc(""), "");
    let sleeper = Node::start("sleeper", &etcd, &ipc(""), "");
    sleeper.cluster_state("registered");
    // Frozen (as if cut off), its lease expires and etcd forgets it...
    sleeper.proc().signal(libc::SIGSTOP);
    until_listed(&watcher.config(), "without the frozen node", |n| {
        !n.contains(&"sleeper".to_string())
    });
    // ...and once it runs again it sees its lease gone and registers anew.
    sleeper.proc().signal(libc::SIGCONT);
    sleeper
        .proc()
        .wait_printed(&["lease expired while etcd was out of reach"], SETTLE);
    until_listed(&watcher.config(), "the node back", |n| {
        n.contains(&"sleeper".to_string())
    });
    sleeper.cluster_state("registered");
}

#[test]
fn one_member_node_names_are_unique() {
    let etcd = Etcd::start(1);
    let first = Node::start("same", &etcd, &ipc(""), "");
    first.cluster_state("registered");
    let second = Node::start("same", &etcd, &ipc(""), "");
    second
        .proc()
        .wait_printed(&["held by another live node"], SETTLE);
    let refused = second.cluster_state("refused");
    let why = refused["client"]["beacons"][0]["refusal"].to_string();
    assert!(why.contains("/troupe/test/nodes/same"), "{why}");
    // The holder keeps its name.
    first.cluster_state("registered");
    let listed = cluster_json(&first.config(), &["list"]).unwrap();
    assert_eq!(listed["nodes"].as_array().unwrap().len(), 1, "{listed}");
}

#[test]
fn three_members_membership_survives_a_member_and_the_leader() {
    let mut etcd = Etcd::start(3);
    let db = Node::start("db-1", &etcd, &ipc(""), "resources = [\"db\"]\n");
    let app = Node::start("app-1", &etcd, &ipc(""), "requires = [\"db\"]\n");
    app.until(&["cluster"], "met", |v| {
        v["client"]["requirements"] == "met"
    });
    // A follower killed: nodes still register and are found.
    let leader = etcd.leader();
    let follower = (leader + 1) % 3;
    etcd.kill(follower);
    let late = Node::start("late-1", &etcd, &ipc(""), "resources = [\"db\"]\n");
    late.cluster_state("registered");
    let found = cluster_json(&app.config(), &["lookup", "db"]).unwrap();
    assert_eq!(found["nodes"].as_array().unwrap().len(), 2, "{found}");
    etcd.restart(follower);
    // The leader killed while the nodes heartbeat: a watch sees no node go.
    let mut watch = troupe();
    watch
        .arg("cluster")
        .arg("--config")
        .arg(app.config())
        .arg("watch")
        .arg("--json");
    let watch = Proc::spawn(watch);
    watch.wait_printed(&["\"snapshot\":true"], SETTLE);
    let leader = etcd.leader();
    etcd.kill(leader);
    // Through the election and beyond every lease's TTL, the nodes stay registered.
    let observe_until = Instant::now() + TTL * 3;
    while Instant::now() < observe_until {
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(
        !watch.printed(&["\"kind\":\"removed\""]),
        "a node was reported gone while it heartbeats:\n{}",
        watch.output()
    );
    until_listed(&app.config(), "all three nodes", |n| n.len() == 3);
    app.until(&["cluster"], "met", |v| {
        v["client"]["requirements"] == "met"
    });
    drop((db, late));
}

#[test]
fn etcd_stopped_the_node_runs_on_and_registers_again() {
    let mut etcd = Etcd::start(1);
    let body = "roles = [\"supervisor\"]\n[supervisor]\nstate_dir = \"@DIR@/state\"\n[[supervisor.services]]\nid = \"sleeper\"\ncommand = \"/bin/sleep\"\nargs = [\"1000\"]\n";
    let node = Node::start("edge-1", &etcd, body, "");
    node.cluster_state("registered");
    let service = node.until(&["service", "sleeper"], "running", |s| {
        s["state"] == "running"
    });
    let pid = service["pid"].clone();
    etcd.kill(0);
    node.proc().wait_printed(&["etcd is unreachable"], SETTLE);
    let down = node.cluster_state("unreachable");
    assert!(
        down["client"]["beacons"][0]["refusal"].is_string(),
        "{down}"
    );
    let status = node.ctl_text(&["status"]);
    assert!(
        status.contains("cluster  etcd: ") && status.contains("unreachable"),
        "{status}"
    );
    // Beyond the lease's TTL: etcd forgets the node meanwhile.
    let out_until = Instant::now() + TTL + Duration::from_secs(1);
    while Instant::now() < out_until {
        std::thread::sleep(Duration::from_millis(50));
    }
    assert_eq!(node.ctl_json(&["service", "sleeper"]).unwrap()["pid"], pid);
    etcd.restart(0);
    node.proc().wait_printed(&["etcd answers again"], SETTLE);
    node.cluster_state("registered");
    until_listed(&node.config(), "the node back", |n| {
        n.contains(&"edge-1".to_string())
    });
    let service = node.ctl_json(&["service", "sleeper"]).unwrap();
    assert_eq!(service["pid"], pid, "the service was touched: {service}");
    assert_eq!(service["state"], "running");
}

#[test]
fn one_member_workers_and_clients_find_the_broker_through_etcd() {
    let etcd = Etcd::start(1);
    let (front, back, majordomo) = (free_port(), free_port(), free_port());
    let hub = format!(
        "roles = [\"broker\"]\n[broker]\nservice = \"echo\"\nfrontend = \"tcp://127.0.0.1:{front}\"\nbackend = \"tcp://127.0.0.1:{back}\"\nheartbeat_interval = \"{BEAT}\"\nadvertise_host = \"127.0.0.1\"\n[broker.majordomo]\nbind = \"tcp://127.0.0.1:{majordomo}\"\n"
    );
    let _hub = Node::start("hub", &etcd, &hub, "");
    // The worker is given no broker and no beacon: the node passes it TROUPE_CLUSTER.
    let edge = format!(
        "roles = [\"supervisor\"]\n[supervisor]\nstate_dir = \"@DIR@/state\"\n[[supervisor.services]]\nid = \"echo\"\ncommand = \"${{TROUPE_EXE}}\"\nargs = [\"echo-worker\", \"--service\", \"echo\", \"--heartbeat-interval\", \"{BEAT}\"]\nrequires = [\"broker\"]\n"
    );
    let edge = Node::start("edge", &etcd, &edge, "");
    edge.until(&["service", "echo"], "running", |s| s["state"] == "running");
    // A client with the edge's config finds the broker through etcd, and the worker answers.
    eventually(SETTLE, "answered through etcd", || {
        let out = troupe()
            .args(["call", "echo", "hello", "--timeout", "1s", "--config"])
            .arg(edge.config())
            .output()
            .unwrap();
        let answer = String::from_utf8_lossy(&out.stdout).trim().to_string();
        match out.status.success() && answer == "hello" {
            true => Ok(()),
            false => Err(format!("{answer} {}", String::from_utf8_lossy(&out.stderr))),
        }
    });
}

#[test]
fn the_example_config_passes_check_config() {
    let config = Path::new(env!("CARGO_MANIFEST_DIR")).join("../configs/etcd.toml");
    let out = troupe()
        .arg("check-config")
        .arg("--config")
        .arg(&config)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn one_member_ctl_cluster_status_finds_every_node_through_etcd() {
    use std::os::unix::fs::PermissionsExt;
    let etcd = Etcd::start(1);
    let dir = tempfile::tempdir().unwrap();
    let token = dir.path().join("token");
    std::fs::write(&token, "etcd-token\n").unwrap();
    std::fs::set_permissions(&token, std::fs::Permissions::from_mode(0o600)).unwrap();
    let control = |port: u16| {
        format!(
            "bind = \"127.0.0.1:{port}\"\ntoken_file = \"{}\"\n",
            token.display()
        )
    };
    let one = Node::start_with_control("c-1", &etcd, &ipc(""), &control(free_port()));
    let _two = Node::start_with_control("c-2", &etcd, &ipc(""), &control(free_port()));
    let rows = eventually(SETTLE, "both nodes in ctl --cluster status", || {
        let out = troupe()
            .args(["ctl", "--cluster", "status", "--json", "--timeout", "5s"])
            .arg("--config")
            .arg(one.config())
            .arg("--token-file")
            .arg(&token)
            .output()
            .unwrap();
        let rows: Value = serde_json::from_slice(&out.stdout).unwrap_or(Value::Null);
        let names: Vec<&str> = rows
            .as_array()
            .map(|rows| rows.iter().filter_map(|r| r["node"].as_str()).collect())
            .unwrap_or_default();
        match out.status.success() && names.contains(&"c-1") && names.contains(&"c-2") {
            true => Ok(rows.clone()),
            false => Err(format!("{rows} {}", String::from_utf8_lossy(&out.stderr))),
        }
    });
    assert!(rows.to_string().contains("\"ipc\""), "{rows}");
}

/// Writes `secret` to `dir/NAME` with mode 0600, as `check-config` requires of secrets.
fn secret_file(dir: &Path, name: &str, secret: &str) -> PathBuf {
    use std::os::unix::fs::PermissionsExt;
    let path = dir.join(name);
    std::fs::write(&path, secret).unwrap();
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
    path
}

#[test]
fn tls_member_admits_a_client_certificate_and_refuses_none() {
    let certs = tempfile::tempdir().unwrap();
    let tls = Tls::make(certs.path());
    let etcd = Etcd::start_with(1, Some(tls.clone()));
    let with_cert = format!(
        "resources = [\"db\"]\netcd_ca_file = \"{}\"\netcd_cert_file = \"{}\"\netcd_key_file = \"{}\"\n",
        tls.ca.display(),
        tls.client.0.display(),
        tls.client.1.display()
    );
    let db = Node::start("tls-db", &etcd, &ipc(""), &with_cert);
    let app = Node::start(
        "tls-app",
        &etcd,
        &ipc(""),
        &format!("{with_cert}requires = [\"db\"]\n"),
    );
    app.cluster_state("registered");
    app.until(&["cluster"], "met", |v| {
        v["client"]["requirements"] == "met"
    });
    // The operator's command, through the same TLS settings.
    until_listed(&db.config(), "both nodes over TLS", |names| {
        names.contains(&"tls-db".to_string()) && names.contains(&"tls-app".to_string())
    });
    // Trusting the CA but showing no certificate: the member refuses the connection, and the
    // node says etcd is unreachable rather than registering.
    let only_ca = format!("etcd_ca_file = \"{}\"\n", tls.ca.display());
    let stranger = Node::start("tls-stranger", &etcd, &ipc(""), &only_ca);
    stranger.cluster_state("unreachable");
    stranger
        .proc()
        .wait_printed(&["etcd is unreachable"], SETTLE);
    let names = listed(&db.config()).unwrap_or_default();
    assert!(!names.contains(&"tls-stranger".to_string()), "{names:?}");
}

#[test]
fn auth_member_admits_its_user_and_names_a_wrong_password() {
    let etcd = Etcd::start(1);
    etcd.enable_auth("troupe", "node-secret", "/troupe/test/");
    let secrets = tempfile::tempdir().unwrap();
    let good = secret_file(secrets.path(), "good", "node-secret\n");
    let bad = secret_file(secrets.path(), "bad", "not-the-secret\n");
    let user = |file: &Path| {
        format!(
            "etcd_user = \"troupe\"\netcd_password_file = \"{}\"\n",
            file.display()
        )
    };
    let db = Node::start(
        "auth-db",
        &etcd,
        &ipc(""),
        &format!("resources = [\"db\"]\n{}", user(&good)),
    );
    let app = Node::start(
        "auth-app",
        &etcd,
        &ipc(""),
        &format!("requires = [\"db\"]\n{}", user(&good)),
    );
    app.cluster_state("registered");
    app.until(&["cluster"], "met", |v| {
        v["client"]["requirements"] == "met"
    });
    until_listed(&db.config(), "both nodes with a password", |names| {
        names.contains(&"auth-db".to_string()) && names.contains(&"auth-app".to_string())
    });
    // A wrong password is named, in the status and in the log, and registers nothing.
    let intruder = Node::start("auth-intruder", &etcd, &ipc(""), &user(&bad));
    let status = intruder.until(&["cluster"], "a refusal naming authentication", |v| {
        v.to_string().contains("authentication failed")
    });
    assert_ne!(status["client"]["beacons"][0]["state"], "registered");
    intruder
        .proc()
        .wait_printed(&["authentication failed"], SETTLE);
    // Without a user, etcd refuses to answer at all.
    let anonymous = Node::start("auth-anonymous", &etcd, &ipc(""), "");
    anonymous.until(&["cluster"], "unreachable or refused", |v| {
        let state = &v["client"]["beacons"][0]["state"];
        state == "unreachable" || state == "refused"
    });
    let names = listed(&db.config()).unwrap_or_default();
    assert!(
        !names
            .iter()
            .any(|n| n == "auth-intruder" || n == "auth-anonymous"),
        "{names:?}"
    );
}
