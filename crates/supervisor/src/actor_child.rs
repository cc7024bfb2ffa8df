//! Actor children: each start runs the child's factory on a new arbiter whose thread is marked
//! as supervised (its panics are left to the supervisor, not the node's panic policy) and
//! enters the role's span.
//!
//! Death is detected by an [`ExitNotice`] that lives inside the child actor's context: the
//! context is dropped when the actor stops, and also when a handler panics (tokio drops a
//! panicking task's future while unwinding), so the notice's `Drop` reports every end exactly
//! once, telling a panic (the thread is unwinding) from a normal stop.

use std::sync::Arc;

use actix::prelude::*;
use troupe_core::Shutdown;

use crate::plan::ExitReason;

/// Tells the supervisor that an actor child's generation has ended.
#[derive(Debug, Message)]
#[rtype(result = "()")]
pub(crate) struct ActorExited {
    pub(crate) id: String,
    pub(crate) generation: u64,
    pub(crate) reason: ExitReason,
}

/// Tells the supervisor that an actor child's generation has started.
#[derive(Message)]
#[rtype(result = "()")]
pub(crate) struct ActorStarted {
    pub(crate) id: String,
    pub(crate) generation: u64,
    pub(crate) stop: Recipient<Shutdown>,
}

/// Reports the end of one generation of an actor child when dropped.
pub struct ExitNotice {
    id: String,
    generation: u64,
    to: Recipient<ActorExited>,
    escalation: Option<String>,
}

impl ExitNotice {
    pub(crate) fn new(id: String, generation: u64, to: Recipient<ActorExited>) -> Self {
        ExitNotice {
            id,
            generation,
            to,
            escalation: None,
        }
    }

    /// Marks the end as an escalation (a nested supervisor giving up) rather than a stop.
    pub fn escalate(&mut self, reason: String) {
        self.escalation = Some(reason);
    }
}

impl Drop for ExitNotice {
    fn drop(&mut self) {
        let reason = match self.escalation.take() {
            Some(reason) => ExitReason::Escalated(reason),
            None if std::thread::panicking() => ExitReason::Panicked,
            None => ExitReason::Stopped,
        };
        self.to.do_send(ActorExited {
            id: std::mem::take(&mut self.id),
            generation: self.generation,
            reason,
        });
    }
}

type Make = dyn Fn(ExitNotice) -> Recipient<Shutdown> + Send + Sync;

/// Makes one generation of an actor child. Called on the child's own arbiter at every start.
#[derive(Clone)]
pub struct ActorFactory(Arc<Make>);

impl ActorFactory {
    /// A factory for actor `A`, built by `make` at every start. `A` must stop when it gets
    /// [`Shutdown`]; it is dropped if it has not stopped within its terminate timeout.
    pub fn new<A, F>(make: F) -> Self
    where
        A: Actor<Context = Context<A>> + Handler<Shutdown>,
        F: Fn() -> A + Send + Sync + 'static,
    {
        ActorFactory(Arc::new(move |notice: ExitNotice| {
            // The notice is owned here first, so a panicking `make` is reported too.
            let actor = make();
            A::create(move |ctx| {
                ctx.spawn(actix::fut::wrap_future(async move {
                    let _notice = notice;
                    std::future::pending::<()>().await
                }));
                actor
            })
            .recipient()
        }))
    }

    /// A factory whose actor holds its own notice (to mark an escalation before stopping).
    pub fn with_notice<A, F>(make: F) -> Self
    where
        A: Actor<Context = Context<A>> + Handler<Shutdown>,
        F: Fn(ExitNotice) -> A + Send + Sync + 'static,
    {
        ActorFactory(Arc::new(move |notice: ExitNotice| {
            make(notice).start().recipient()
        }))
    }

    /// Whether `self` and `other` are clones of one factory.
    pub fn same_factory(&self, other: &ActorFactory) -> bool {
        Arc::ptr_eq(&self.0, &other.0)
    }

    /// Starts one generation on `arbiter`, reporting to `events`.
    pub(crate) fn start_on(
        &self,
        arbiter: &actix::ArbiterHandle,
        id: String,
        generation: u64,
        span: tracing::Span,
        events: Recipient<ActorExited>,
        started: Recipient<ActorStarted>,
    ) -> bool {
        let make = self.0.clone();
        arbiter.spawn_fn(move || {
            troupe_core::panic::mark_thread_supervised();
            troupe_core::span::enter_for_thread(span, "supervisor");
            let notice = ExitNotice::new(id.clone(), generation, events);
            let stop = make(notice);
            started.do_send(ActorStarted {
                id,
                generation,
                stop,
            });
        })
    }
}
