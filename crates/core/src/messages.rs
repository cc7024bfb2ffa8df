//! Messages every role actor understands.

use actix::Message;

/// Asks an actor to stop. Answered once the actor has begun stopping; roles send it from
/// [`Role::stop`](crate::Role::stop) and then wait for their actor's own shutdown work.
#[derive(Debug, Clone, Copy, Message)]
#[rtype(result = "()")]
pub struct Shutdown;
