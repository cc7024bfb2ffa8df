//! The short chaos soak: `tests/soak/soak.py` runs a real cluster (two beacons, a broker node,
//! two edge nodes with supervised echo workers, ipc clients and broker clients) for 60 s while
//! it SIGKILLs workers and nodes and throws malformed input at every socket, then checks that
//! every request got exactly one answer, that no ipc message was lost or duplicated untold,
//! that no process outlived its node, and that the nodes' RSS and descriptors stayed bounded.
//! The test fails with the driver's summary when any check fails. `make soak` runs the long
//! one (docs/RELIABILITY.md, "Chaos soak").
//!
//! `SOAK_SECS` changes the length, `SOAK_SEED` replays a seed (the summary
//! prints the one it used).

use std::io::Read;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use troupe_tests::troupe_bin;

/// How long the driver may take beyond its load-and-chaos time: set-up, draining the clients
/// (their answer bound), stopping the nodes.
const OVERHEAD: Duration = Duration::from_secs(240);

#[test]
fn a_cluster_under_chaos_keeps_every_promise() {
    let secs: u64 = std::env::var("SOAK_SECS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(60);
    let driver: PathBuf = [env!("CARGO_MANIFEST_DIR"), "soak", "soak.py"]
        .iter()
        .collect();
    let mut cmd = Command::new("python3");
    cmd.arg(&driver)
        .arg("--troupe")
        .arg(troupe_bin())
        .arg("--secs")
        .arg(secs.to_string());
    if let Ok(seed) = std::env::var("SOAK_SEED") {
        cmd.arg("--seed").arg(seed);
    }
    cmd.stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let started = Instant::now();
    let mut child = cmd.spawn().expect("run python3 tests/soak/soak.py");
    let mut stdout = child.stdout.take().expect("stdout");
    let mut stderr = child.stderr.take().expect("stderr");
    let out = std::thread::spawn(move || {
        let mut text = String::new();
        let _ = stdout.read_to_string(&mut text);
        text
    });
    let err = std::thread::spawn(move || {
        let mut text = String::new();
        let _ = stderr.read_to_string(&mut text);
        text
    });
    let limit = Duration::from_secs(secs) + OVERHEAD;
    let status = loop {
        if let Some(status) = child.try_wait().expect("wait for the driver") {
            break Some(status);
        }
        if started.elapsed() > limit {
            // SIGTERM lets the driver kill everything it started before it exits.
            // SAFETY: kill(2) on our own child's pid; no memory is touched.
            unsafe {
                libc::kill(child.id() as i32, libc::SIGTERM);
            }
            let grace = Instant::now();
            while child.try_wait().expect("wait").is_none() && grace.elapsed().as_secs() < 20 {
                std::thread::sleep(Duration::from_millis(100));
            }
            let _ = child.kill();
            let _ = child.wait();
            break None;
        }
        std::thread::sleep(Duration::from_millis(200));
    };
    let stdout = out.join().unwrap_or_default();
    let stderr = err.join().unwrap_or_default();
    eprintln!("{stdout}");
    eprintln!("soak driver took {:.1} s", started.elapsed().as_secs_f64());
    match status {
        Some(status) if status.success() => {}
        Some(status) => panic!(
            "the chaos soak failed ({status}):\n{stdout}\n--- driver log ---\n{stderr}"
        ),
        None => panic!(
            "the chaos soak did not finish within {limit:?}:\n{stdout}\n--- driver log ---\n{stderr}"
        ),
    }
}
