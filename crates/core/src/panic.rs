//! The node's panic policy.
//!
//! A panic anywhere in the node is logged as one error event with the node's name, the role
//! that owns the panicking thread, the thread and the source location. Then:
//!
//! - on a thread a supervisor has marked as owned by a supervised child
//!   ([`mark_thread_supervised`]), nothing more happens here: that supervisor sees its child
//!   die and applies the child's restart plan;
//! - anywhere else the node is asked to stop (every role in reverse order, exit code 1). A role
//!   whose actor died would leave a half-alive node that looks healthy to its service manager;
//!   stopping it lets the service manager restart the whole node cleanly.

use std::cell::Cell;
use std::sync::Arc;

use crate::{NodeControl, NodeStopRequest};

/// Exit code of a node stopped because of a panic.
pub const PANIC_EXIT_CODE: i32 = 1;

thread_local! {
    static THREAD_ROLE: Cell<Option<&'static str>> = const { Cell::new(None) };
    static SUPERVISED: Cell<bool> = const { Cell::new(false) };
}

/// Records `role` as the owner of the current thread.
pub fn set_thread_role(role: &'static str) {
    THREAD_ROLE.with(|r| r.set(Some(role)));
}

/// The role that owns the current thread, if any.
pub fn thread_role() -> Option<&'static str> {
    THREAD_ROLE.with(|r| r.get())
}

/// Marks the current thread as running a supervised child: its panics are left to the
/// supervisor instead of stopping the node.
pub fn mark_thread_supervised() {
    SUPERVISED.with(|s| s.set(true));
}

/// Installs the panic hook for a node named `node`; `control` is used to stop the node.
pub fn install(node: Arc<str>, control: NodeControl) {
    std::panic::set_hook(Box::new(move |info| {
        let message = info
            .payload()
            .downcast_ref::<&str>()
            .map(|s| s.to_string())
            .or_else(|| info.payload().downcast_ref::<String>().cloned())
            .unwrap_or_else(|| "(non-string panic payload)".to_string());
        let location = info
            .location()
            .map(|l| format!("{}:{}", l.file(), l.line()))
            .unwrap_or_default();
        let role = thread_role().unwrap_or("node");
        let thread = std::thread::current()
            .name()
            .unwrap_or("unnamed")
            .to_string();
        let supervised = SUPERVISED.with(|s| s.get());
        tracing::error!(
            node = %node,
            role,
            thread,
            location,
            supervised,
            "panic: {message}"
        );
        if !supervised {
            control.request_stop(NodeStopRequest {
                role: role.to_string(),
                reason: format!("panic in role {role}: {message}"),
                exit_code: PANIC_EXIT_CODE,
            });
        }
    }));
}
