//! Real etcd clusters for tests and benchmarks: members of Debian's `etcd-server` (at
//! /usr/bin/etcd or `$ETCD_BIN`) on free loopback ports, their data in a temporary folder,
//! each killed by its pid when dropped. A cluster serves plain HTTP, or TLS with client
//! certificates made by `openssl` for the test ([`Tls`]); user/password authentication is
//! turned on through the JSON gateway ([`Etcd::enable_auth`]).

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use base64::Engine as _;
use serde_json::{json, Value};

use crate::{free_port, Proc};

const START: Duration = Duration::from_secs(30);
const SETTLE: Duration = Duration::from_secs(20);

/// The etcd binary.
pub fn etcd_bin() -> PathBuf {
    std::env::var_os("ETCD_BIN")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/usr/bin/etcd"))
}

/// One etcd member: its process (killed on drop) and its ports; the data folder belongs to
/// the cluster.
pub struct Member {
    /// Its name in the cluster.
    pub name: String,
    /// Its client port.
    pub client: u16,
    peer: u16,
    proc: Option<Proc>,
}

impl Member {
    /// Its pid, while it runs.
    pub fn pid(&self) -> Option<u32> {
        self.proc.as_ref().map(Proc::pid)
    }
}

/// Certificates for a TLS cluster, made with `openssl`: a CA, the members' certificate (for
/// 127.0.0.1) and a client certificate, each key mode 0600.
#[derive(Clone)]
pub struct Tls {
    /// The CA certificate (PEM).
    pub ca: PathBuf,
    /// The members' certificate and key.
    pub server: (PathBuf, PathBuf),
    /// A client certificate and key the members trust.
    pub client: (PathBuf, PathBuf),
}

impl Tls {
    /// Makes the certificates in `dir` (valid for a day).
    pub fn make(dir: &Path) -> Tls {
        let openssl = |args: &[&str]| {
            let out = Command::new("openssl")
                .args(args)
                .current_dir(dir)
                .output()
                .expect("openssl (Debian's openssl package) runs");
            assert!(
                out.status.success(),
                "openssl {args:?}: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        };
        let key = [
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:prime256v1",
            "-nodes",
        ];
        let mut ca_args = vec!["req", "-x509", "-days", "1", "-subj", "/CN=troupe test CA"];
        ca_args.extend(key);
        ca_args.extend(["-keyout", "ca.key", "-out", "ca.crt"]);
        openssl(&ca_args);
        for (name, usage) in [
            ("server", "serverAuth,clientAuth"),
            ("client", "clientAuth"),
        ] {
            let (csr, cert, keyfile) = (
                format!("{name}.csr"),
                format!("{name}.crt"),
                format!("{name}.key"),
            );
            let mut req = vec!["req", "-subj", "/CN=troupe-test"];
            req.extend(key);
            req.extend(["-keyout", &keyfile, "-out", &csr]);
            openssl(&req);
            let ext = format!("{name}.ext");
            std::fs::write(
                dir.join(&ext),
                format!("subjectAltName=IP:127.0.0.1\nextendedKeyUsage={usage}\n"),
            )
            .unwrap();
            openssl(&[
                "x509",
                "-req",
                "-days",
                "1",
                "-in",
                &csr,
                "-CA",
                "ca.crt",
                "-CAkey",
                "ca.key",
                "-CAcreateserial",
                "-extfile",
                &ext,
                "-out",
                &cert,
            ]);
        }
        for key in ["ca.key", "server.key", "client.key"] {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::Permissions::from_mode(0o600);
            std::fs::set_permissions(dir.join(key), mode).unwrap();
        }
        Tls {
            ca: dir.join("ca.crt"),
            server: (dir.join("server.crt"), dir.join("server.key")),
            client: (dir.join("client.crt"), dir.join("client.key")),
        }
    }
}

/// An etcd cluster of one or more members on loopback.
pub struct Etcd {
    /// The members, in start order.
    pub members: Vec<Member>,
    dir: tempfile::TempDir,
    token: String,
    tls: Option<Tls>,
}

impl Etcd {
    /// Starts `n` members serving plain HTTP and waits until each serves clients.
    pub fn start(n: usize) -> Etcd {
        Etcd::start_with(n, None)
    }

    /// Starts `n` members, serving TLS and requiring client certificates when `tls` is given.
    pub fn start_with(n: usize, tls: Option<Tls>) -> Etcd {
        assert!(
            etcd_bin().exists(),
            "{} not found: install Debian's etcd-server (or set ETCD_BIN)",
            etcd_bin().display()
        );
        let members = (0..n)
            .map(|i| Member {
                name: format!("m{i}"),
                client: free_port(),
                peer: free_port(),
                proc: None,
            })
            .collect();
        let mut etcd = Etcd {
            members,
            dir: tempfile::tempdir().unwrap(),
            token: format!("troupe-test-{}-{}", std::process::id(), free_port()),
            tls,
        };
        for i in 0..n {
            etcd.launch(i);
        }
        for i in 0..n {
            etcd.wait_ready(i);
        }
        etcd
    }

    fn data_dir(&self, i: usize) -> PathBuf {
        self.dir.path().join(&self.members[i].name)
    }

    fn scheme(&self) -> &'static str {
        match self.tls {
            Some(_) => "https",
            None => "http",
        }
    }

    /// Starts member `i` (again, with the same data and ports, after a kill).
    pub fn launch(&mut self, i: usize) {
        let cluster = self
            .members
            .iter()
            .map(|m| format!("{}=http://127.0.0.1:{}", m.name, m.peer))
            .collect::<Vec<_>>()
            .join(",");
        let m = &self.members[i];
        let url = format!("{}://127.0.0.1:{}", self.scheme(), m.client);
        let mut cmd = Command::new(etcd_bin());
        cmd.arg("--name")
            .arg(&m.name)
            .arg("--data-dir")
            .arg(self.data_dir(i))
            .arg("--listen-client-urls")
            .arg(&url)
            .arg("--advertise-client-urls")
            .arg(&url)
            .arg("--listen-peer-urls")
            .arg(format!("http://127.0.0.1:{}", m.peer))
            .arg("--initial-advertise-peer-urls")
            .arg(format!("http://127.0.0.1:{}", m.peer))
            .arg("--initial-cluster")
            .arg(cluster)
            .arg("--initial-cluster-state")
            .arg("new")
            .arg("--initial-cluster-token")
            .arg(&self.token);
        if let Some(tls) = &self.tls {
            cmd.arg("--cert-file")
                .arg(&tls.server.0)
                .arg("--key-file")
                .arg(&tls.server.1)
                .arg("--trusted-ca-file")
                .arg(&tls.ca)
                .arg("--client-cert-auth");
        }
        for key in ["ETCD_NAME", "ETCD_DATA_DIR", "ETCDCTL_API"] {
            cmd.env_remove(key);
        }
        self.members[i].proc = Some(Proc::spawn(cmd));
    }

    fn wait_ready(&mut self, i: usize) {
        if self.tls.is_some() {
            // The JSON gateway needs a client certificate here: the member's own word.
            let proc = self.members[i].proc.as_mut().expect("the member runs");
            proc.wait_for(&["ready to serve client requests"], START);
            return;
        }
        let deadline = Instant::now() + START;
        while status(self.members[i].client).is_none() {
            assert!(
                Instant::now() < deadline,
                "etcd member {i} not serving within {START:?}:\n{}",
                self.members[i]
                    .proc
                    .as_ref()
                    .map(|p| p.output())
                    .unwrap_or_default()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Kills member `i` with SIGKILL, by its pid.
    pub fn kill(&mut self, i: usize) {
        self.members[i]
            .proc
            .take()
            .expect("the member runs")
            .kill_now();
    }

    /// Starts member `i` again after [`Etcd::kill`] and waits until it serves.
    pub fn restart(&mut self, i: usize) {
        self.launch(i);
        self.wait_ready(i);
    }

    /// The client URLs, quoted and comma-separated, as `etcd_endpoints = [...]` lists them.
    pub fn endpoints(&self) -> String {
        self.urls()
            .iter()
            .map(|url| format!("\"{url}\""))
            .collect::<Vec<_>>()
            .join(", ")
    }

    /// The client URLs.
    pub fn urls(&self) -> Vec<String> {
        self.members
            .iter()
            .map(|m| format!("{}://127.0.0.1:{}", self.scheme(), m.client))
            .collect()
    }

    /// The member that is the leader now, as a running member sees it (plain HTTP only).
    pub fn leader(&self) -> usize {
        let deadline = Instant::now() + SETTLE;
        loop {
            for m in self.members.iter().filter(|m| m.proc.is_some()) {
                let Some(status) = status(m.client) else {
                    continue;
                };
                let leader = status["leader"].as_str().unwrap_or_default().to_string();
                for (i, other) in self.members.iter().enumerate() {
                    let Some(theirs) = status_of(other) else {
                        continue;
                    };
                    if theirs["header"]["member_id"].as_str() == Some(leader.as_str()) {
                        return i;
                    }
                }
            }
            assert!(
                Instant::now() < deadline,
                "no etcd leader within {SETTLE:?}"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Turns on user/password authentication (plain HTTP only): a `root` user, and `user`
    /// with `password` allowed to read and write the keys under `prefix`, nothing else.
    pub fn enable_auth(&self, user: &str, password: &str, prefix: &str) {
        let port = self.members[0].client;
        let b64 = |bytes: &[u8]| base64::engine::general_purpose::STANDARD.encode(bytes);
        let mut end = prefix.as_bytes().to_vec();
        *end.last_mut().expect("a prefix") += 1;
        let steps = [
            (
                "/v3/auth/user/add",
                json!({"name": "root", "password": "root-secret"}),
            ),
            ("/v3/auth/role/add", json!({"name": "root"})),
            (
                "/v3/auth/user/grant",
                json!({"user": "root", "role": "root"}),
            ),
            (
                "/v3/auth/user/add",
                json!({"name": user, "password": password}),
            ),
            ("/v3/auth/role/add", json!({"name": "troupe-nodes"})),
            (
                "/v3/auth/role/grant",
                json!({"name": "troupe-nodes", "perm": {
                    "permType": "READWRITE",
                    "key": b64(prefix.as_bytes()),
                    "range_end": b64(&end),
                }}),
            ),
            (
                "/v3/auth/user/grant",
                json!({"user": user, "role": "troupe-nodes"}),
            ),
            ("/v3/auth/enable", json!({})),
        ];
        for (path, body) in steps {
            let answer = post(port, path, &body.to_string());
            assert!(
                answer.as_ref().is_some_and(|a| a.get("error").is_none()),
                "etcd {path} {body}: {answer:?}"
            );
        }
    }
}

fn status_of(member: &Member) -> Option<Value> {
    member.proc.as_ref()?;
    status(member.client)
}

/// `POST /v3/maintenance/status` on a plain HTTP member (etcd's JSON gateway), with a short
/// deadline.
pub fn status(port: u16) -> Option<Value> {
    post(port, "/v3/maintenance/status", "{}")
}

/// `POST PATH` with a JSON `body` on a plain HTTP member's JSON gateway.
pub fn post(port: u16, path: &str, body: &str) -> Option<Value> {
    let mut stream = TcpStream::connect(("127.0.0.1", port)).ok()?;
    stream.set_read_timeout(Some(Duration::from_secs(2))).ok()?;
    let request = format!(
        "POST {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    stream.write_all(request.as_bytes()).ok()?;
    let mut response = String::new();
    stream.read_to_string(&mut response).ok()?;
    let body = response.split("\r\n\r\n").nth(1)?;
    let start = body.find('{')?;
    let end = body.rfind('}')?;
    serde_json::from_str(&body[start..=end]).ok()
}
