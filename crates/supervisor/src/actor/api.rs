//! The supervisor's API handlers: director's calls, answered from the core, and the ipc
//! contract's `push_config` / `invoke`, forwarded to the hub.

use std::time::Instant;

use actix::prelude::*;
use tokio::sync::oneshot;
use troupe_core::services::{ChannelError, Invoke, PushConfig};

use super::Supervisor;
use crate::core::ChildError;
use crate::core::Command;
use crate::messages::*;
use crate::spec::ChildSpec;

impl Supervisor {
    /// Runs an API call that may start a child, answering once it has started.
    fn start_call(
        &mut self,
        id: String,
        result: Result<Vec<Command>, ChildError>,
        ctx: &mut Context<Self>,
    ) -> ResponseFuture<Result<Option<u32>, ChildError>> {
        let commands = match result {
            Ok(commands) => commands,
            Err(e) => return Box::pin(std::future::ready(Err(e))),
        };
        let generation = commands.iter().find_map(|c| match c {
            Command::Start {
                id: started,
                generation,
            } if *started == id => Some(*generation),
            _ => None,
        });
        let answer = generation.map(|generation| {
            let (tx, rx) = oneshot::channel();
            self.start_waiters
                .entry((id.clone(), generation))
                .or_default()
                .push(tx);
            rx
        });
        self.execute(commands, ctx);
        Box::pin(async move {
            match answer {
                Some(rx) => rx.await.unwrap_or(Err(ChildError::Stopping)),
                None => Ok(None),
            }
        })
    }
}

impl Handler<StartChild> for Supervisor {
    type Result = ResponseFuture<Result<Option<u32>, ChildError>>;

    fn handle(&mut self, msg: StartChild, ctx: &mut Self::Context) -> Self::Result {
        let id = msg.0.id.clone();
        let result = self.core.start_child(msg.0, Instant::now());
        self.start_call(id, result, ctx)
    }
}

impl Handler<RestartChild> for Supervisor {
    type Result = ResponseFuture<Result<Option<u32>, ChildError>>;

    fn handle(&mut self, msg: RestartChild, ctx: &mut Self::Context) -> Self::Result {
        let result = self.core.restart_child(&msg.0, Instant::now());
        self.start_call(msg.0, result, ctx)
    }
}

impl Handler<TerminateChild> for Supervisor {
    type Result = ResponseFuture<Result<(), ChildError>>;

    fn handle(&mut self, msg: TerminateChild, ctx: &mut Self::Context) -> Self::Result {
        let commands = match self.core.terminate_child(&msg.0) {
            Ok(commands) => commands,
            Err(e) => return Box::pin(std::future::ready(Err(e))),
        };
        let (tx, rx) = oneshot::channel();
        if self.instances.contains_key(&msg.0) {
            self.stop_waiters.entry(msg.0).or_default().push(tx);
        } else {
            let _ = tx.send(());
        }
        self.execute(commands, ctx);
        Box::pin(async move {
            let _ = rx.await;
            Ok(())
        })
    }
}

impl Handler<DeleteChild> for Supervisor {
    type Result = Result<(), ChildError>;

    fn handle(&mut self, msg: DeleteChild, _: &mut Self::Context) -> Self::Result {
        self.core.delete_child(&msg.0)
    }
}

impl Handler<WhichChildren> for Supervisor {
    type Result = MessageResult<WhichChildren>;

    fn handle(&mut self, _: WhichChildren, _: &mut Self::Context) -> Self::Result {
        MessageResult(self.core.which_children())
    }
}

impl Handler<CountChildren> for Supervisor {
    type Result = MessageResult<CountChildren>;

    fn handle(&mut self, _: CountChildren, _: &mut Self::Context) -> Self::Result {
        MessageResult(self.core.count_children())
    }
}

impl Handler<GetPids> for Supervisor {
    type Result = MessageResult<GetPids>;

    fn handle(&mut self, _: GetPids, _: &mut Self::Context) -> Self::Result {
        MessageResult(self.core.get_pids())
    }
}

impl Handler<GetPid> for Supervisor {
    type Result = Result<u32, ChildError>;

    fn handle(&mut self, msg: GetPid, _: &mut Self::Context) -> Self::Result {
        self.core.get_pid(&msg.0)
    }
}

impl Handler<GetChildSpec> for Supervisor {
    type Result = Result<ChildSpec, ChildError>;

    fn handle(&mut self, msg: GetChildSpec, _: &mut Self::Context) -> Self::Result {
        self.core
            .spec(&msg.0)
            .cloned()
            .ok_or(ChildError::NotFound(msg.0))
    }
}

impl Handler<GetPlan> for Supervisor {
    type Result = Result<crate::plan::Plan, ChildError>;

    fn handle(&mut self, msg: GetPlan, _: &mut Self::Context) -> Self::Result {
        self.core.get_plan(&msg.0)
    }
}

impl Handler<ChangePlan> for Supervisor {
    type Result = Result<(), ChildError>;

    fn handle(&mut self, msg: ChangePlan, _: &mut Self::Context) -> Self::Result {
        self.core.change_plan(&msg.id, msg.plan, msg.count)
    }
}

impl Handler<GetDefaultChildSpec> for Supervisor {
    type Result = MessageResult<GetDefaultChildSpec>;

    fn handle(&mut self, _: GetDefaultChildSpec, _: &mut Self::Context) -> Self::Result {
        MessageResult(self.core.default_spec().clone())
    }
}

impl Handler<ChangeDefaultChildSpec> for Supervisor {
    type Result = ();

    fn handle(&mut self, msg: ChangeDefaultChildSpec, _: &mut Self::Context) {
        self.core.change_default_spec(msg.0);
    }
}

impl Handler<PushConfig> for Supervisor {
    type Result = ResponseFuture<Result<(), ChannelError>>;

    fn handle(&mut self, msg: PushConfig, _: &mut Self::Context) -> Self::Result {
        let Some(channels) = &self.channels else {
            return Box::pin(std::future::ready(Err(ChannelError::NotAlive)));
        };
        let to = channels.push_config.clone();
        Box::pin(async move {
            to.send(msg).await.unwrap_or_else(|e| {
                Err(ChannelError::Failed(format!(
                    "the ipc hub did not answer: {e}"
                )))
            })
        })
    }
}

impl Handler<Invoke> for Supervisor {
    type Result = ResponseFuture<Result<Vec<u8>, ChannelError>>;

    fn handle(&mut self, msg: Invoke, _: &mut Self::Context) -> Self::Result {
        let Some(channels) = &self.channels else {
            return Box::pin(std::future::ready(Err(ChannelError::NotAlive)));
        };
        let to = channels.invoke.clone();
        Box::pin(async move {
            to.send(msg).await.unwrap_or_else(|e| {
                Err(ChannelError::Failed(format!(
                    "the ipc hub did not answer: {e}"
                )))
            })
        })
    }
}
