//! The web console in a real browser: a real node (supervisor with a supervised echo worker,
//! broker, beacon, ipc hub, control API on TCP with a token) and a peer node of the same
//! cluster, driven by `tests/python/console_browser.py` through headless Chromium
//! (selenium and chromedriver); with the `etcd` feature, once more with the membership on a
//! real etcd member. Screenshots are kept under `target/console-test/<test>/`.

use std::io::{Read, Write};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use troupe_tests::{free_port, run_to_end, troupe, Proc};

const START: Duration = Duration::from_secs(30);
const STOP: Duration = Duration::from_secs(20);
/// The whole browser session: sign-in, a restart, the panels, two screenshots.
const BROWSER: Duration = Duration::from_secs(180);

/// Starts `troupe run` with `config` (written to `dir/FILE`) and waits until it is ready.
fn node(dir: &Path, file: &str, config: &str) -> Proc {
    let path = dir.join(file);
    std::fs::write(&path, config).unwrap();
    let mut cmd = troupe();
    cmd.arg("run").arg("--config").arg(&path);
    let mut proc = Proc::spawn(cmd);
    proc.wait_for(&["node ready"], START);
    proc
}

fn stop(mut proc: Proc) {
    proc.signal(libc::SIGTERM);
    let status = proc.wait_exit(STOP);
    assert!(status.success(), "{status:?}\n{}", proc.output());
}

/// `target/console-test`, next to the binaries under test.
fn artifacts() -> PathBuf {
    let exe = std::env::current_exe().unwrap();
    let target = exe
        .ancestors()
        .nth(3)
        .expect("target/<profile>/deps/<test>")
        .to_path_buf();
    let dir = target.join("console-test");
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// One plain HTTP/1.1 GET; the status and the whole answer (head and body).
fn get(port: u16, path: &str) -> (u16, String) {
    let mut stream = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
    stream.set_read_timeout(Some(START)).unwrap();
    let request = format!("GET {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n");
    stream.write_all(request.as_bytes()).unwrap();
    let mut answer = String::new();
    stream.read_to_string(&mut answer).unwrap();
    let status = answer
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("not an HTTP answer: {answer:?}"));
    (status, answer)
}

#[test]
fn the_console_shows_and_steers_the_node_in_a_browser() {
    let beacon = free_port();
    browser_session(
        "console",
        Membership {
            role: "\"beacon\", ",
            table: &format!("[beacon]\nbind = \"tcp://127.0.0.1:{beacon}\"\n"),
            cluster: &format!("beacons = [\"tcp://127.0.0.1:{beacon}\"]\n"),
        },
    );
}

/// The same session with the membership on etcd (one real member): the console, the cluster
/// map and the peer's link work unchanged.
#[cfg(feature = "etcd")]
#[test]
fn the_console_works_the_same_on_etcd() {
    let etcd = troupe_tests::etcd::Etcd::start(1);
    let cluster = format!(
        "backend = \"etcd\"\netcd_endpoints = [{}]\netcd_prefix = \"/troupe/console/\"\n",
        etcd.endpoints()
    );
    browser_session(
        "console-etcd",
        Membership {
            role: "",
            table: "",
            cluster: &cluster,
        },
    );
}

/// Where the cluster's membership lives: the beacon role and its table on the main node, or
/// nothing; and the `[cluster]` keys both nodes use.
struct Membership<'a> {
    role: &'a str,
    table: &'a str,
    cluster: &'a str,
}

/// A node and its peer, named after `tag`, and the browser session against them.
fn browser_session(tag: &str, membership: Membership<'_>) {
    let dir = tempfile::tempdir().unwrap();
    let token = dir.path().join("token");
    std::fs::write(&token, "console-browser-token\n").unwrap();
    std::fs::set_permissions(&token, std::fs::Permissions::from_mode(0o600)).unwrap();
    let (http, peer_http) = (free_port(), free_port());
    let (frontend, backend, mdp) = (free_port(), free_port(), free_port());
    let name = format!("{tag}-{}", std::process::id());
    let peer = format!("{tag}-peer-{}", std::process::id());
    let Membership {
        role,
        table,
        cluster,
    } = membership;
    let d = dir.path().display();
    let tok = token.display();

    let main = node(
        dir.path(),
        "node.toml",
        &format!(
            r#"
name = "{name}"
roles = ["ipc", "supervisor", {role}"broker"]
shutdown_timeout = "10s"
[control]
socket = "{d}/ctl.sock"
bind = "127.0.0.1:{http}"
token_file = "{tok}"
[supervisor]
state_dir = "{d}/state"
[[supervisor.services]]
id = "echo"
command = "${{TROUPE_EXE}}"
args = ["echo-worker", "--connect", "tcp://127.0.0.1:{backend}", "--concurrency", "2"]
terminate_timeout_ms = 3000
[[supervisor.services]]
id = "chatty"
command = "sh"
args = ["-c", "i=0; while :; do i=$((i+1)); echo line-$i; sleep 0.2; done"]
{table}
[broker]
frontend = "tcp://127.0.0.1:{frontend}"
backend = "tcp://127.0.0.1:{backend}"
[broker.majordomo]
bind = "tcp://127.0.0.1:{mdp}"
[cluster]
{cluster}"#
        ),
    );
    // A peer that needs the broker the first node offers, with a console of its own.
    let second = node(
        dir.path(),
        "peer.toml",
        &format!(
            r#"
name = "{peer}"
roles = ["ipc"]
shutdown_timeout = "10s"
[control]
socket = "{d}/peer-ctl.sock"
bind = "127.0.0.1:{peer_http}"
token_file = "{tok}"
[cluster]
{cluster}requires = ["broker"]
"#
        ),
    );

    // Over TCP the page is open; the API is not.
    let (status, page) = get(http, "/");
    assert_eq!(status, 200, "{page}");
    assert!(
        page.to_ascii_lowercase()
            .contains("content-security-policy: default-src 'self'"),
        "{page}"
    );
    let (status, answer) = get(http, "/v1/node");
    assert_eq!(status, 401, "{answer}");

    let out = artifacts().join(tag);
    std::fs::create_dir_all(&out).unwrap();
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("python/console_browser.py");
    let mut browser = Command::new("python3");
    browser
        .arg(&script)
        .args(["--url", &format!("http://127.0.0.1:{http}")])
        .arg("--token-file")
        .arg(&token)
        .args(["--node", &name, "--service", "echo", "--chatty", "chatty"])
        .args(["--peer", &peer])
        .args(["--peer-url", &format!("http://127.0.0.1:{peer_http}")])
        .args(["--requires", "broker"])
        .arg("--out")
        .arg(&out);
    let (status, output) = run_to_end(browser, BROWSER);
    assert!(
        status.success(),
        "the browser test failed ({status:?}); it needs python3 with selenium \
         (tests/python/requirements.txt), chromium and chromium-driver:\n{output}\n\
         node log:\n{}",
        main.output()
    );
    for shot in ["console-laptop.png", "console-phone.png"] {
        let png = std::fs::read(out.join(shot)).unwrap_or_else(|e| panic!("{shot}: {e}"));
        assert!(png.starts_with(b"\x89PNG"), "{shot} is not a PNG");
    }
    assert!(
        !main.output().contains("console-browser-token"),
        "the token is never logged"
    );
    stop(second);
    stop(main);
}
