//! Loopback ports for tests, unique within the test process.
//!
//! Asking the kernel for port 0 and releasing it can hand the same port out twice in a row, and
//! ports from the ephemeral range can be taken at any moment by an outgoing connection (ZeroMQ
//! connects from one). So ports are taken from below the ephemeral range, each one checked free by
//! binding it, and none is handed out twice by the same process.

use std::collections::HashSet;
use std::net::TcpListener;
use std::sync::Mutex;

/// First port of the range tests use; the kernel's ephemeral range starts at 32768 by default.
const FIRST: u16 = 20_000;
/// Number of ports in the range.
const SPAN: u16 = 12_000;

static HANDED_OUT: Mutex<Option<HashSet<u16>>> = Mutex::new(None);

/// A port on 127.0.0.1 that was free a moment ago and that this process has not handed out before.
pub fn free_port() -> u16 {
    let mut handed_out = HANDED_OUT.lock().unwrap_or_else(|e| e.into_inner());
    let handed_out = handed_out.get_or_insert_with(HashSet::new);
    // Spread processes over the range so that test binaries running at once rarely meet.
    let start = (std::process::id() as u64 * 7919 % SPAN as u64) as u16;
    for step in 0..SPAN {
        let port = FIRST + (start + step) % SPAN;
        if handed_out.contains(&port) {
            continue;
        }
        if TcpListener::bind(("127.0.0.1", port)).is_ok() {
            handed_out.insert(port);
            return port;
        }
    }
    panic!(
        "no free port on 127.0.0.1 between {FIRST} and {}",
        FIRST + SPAN
    );
}
