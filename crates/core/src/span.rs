//! Tracing spans that give every event of a role its `node` and `role` fields.
//!
//! Each role runs on its own arbiter thread, which enters the role's span for its whole life;
//! threads a role spawns (ZeroMQ poll loops, blocking helpers) do the same through
//! [`enter_for_thread`].

use tracing::Span;

/// The span every event of `role` on `node` is recorded in.
pub fn role_span(node: &str, role: &str) -> Span {
    tracing::info_span!("role", node = %node, role = %role)
}

/// Enters `span` on the current thread until the thread ends, and records `role` as the
/// thread's owner for the panic policy. Call once, first thing, on a thread owned by a role.
pub fn enter_for_thread(span: Span, role: &'static str) {
    crate::panic::set_thread_role(role);
    // The guard must live as long as the thread; dropping it would leave the span.
    std::mem::forget(span.entered());
}

/// Spawns an OS thread named `name` that runs `body` inside `span`, owned by `role`.
pub fn spawn_role_thread<F, T>(
    name: &str,
    span: Span,
    role: &'static str,
    body: F,
) -> std::io::Result<std::thread::JoinHandle<T>>
where
    F: FnOnce() -> T + Send + 'static,
    T: Send + 'static,
{
    std::thread::Builder::new()
        .name(name.to_string())
        .spawn(move || {
            enter_for_thread(span, role);
            body()
        })
}
