//! Actor children: a panicking actor is restarted per its plan without stopping the node, and
//! terminating an actor asks it to stop, then drops it. Its own test binary, because it
//! installs the node's process-wide panic hook.

mod common;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use actix::prelude::*;
use common::*;
use troupe_core::{NodeControl, Shutdown};
use troupe_supervisor::messages::*;
use troupe_supervisor::{ActorFactory, ChildError, ChildSpec, ChildStatus};

/// The address of the current generation of a [`Fragile`] child.
type Slot = Arc<Mutex<Option<Addr<Fragile>>>>;

/// Panics when told to; publishes its address when it starts.
struct Fragile {
    slot: Slot,
}

#[derive(Message)]
#[rtype(result = "()")]
struct Boom;

impl Actor for Fragile {
    type Context = Context<Self>;
    fn started(&mut self, ctx: &mut Self::Context) {
        *self.slot.lock().unwrap() = Some(ctx.address());
    }
}

impl Handler<Boom> for Fragile {
    type Result = ();
    fn handle(&mut self, _: Boom, _: &mut Self::Context) {
        panic!("fragile actor told to panic");
    }
}

impl Handler<Shutdown> for Fragile {
    type Result = ();
    fn handle(&mut self, _: Shutdown, ctx: &mut Self::Context) {
        ctx.stop();
    }
}

/// Ignores Shutdown.
struct Deaf;

impl Actor for Deaf {
    type Context = Context<Self>;
}

impl Handler<Shutdown> for Deaf {
    type Result = ();
    fn handle(&mut self, _: Shutdown, _: &mut Self::Context) {}
}

#[test]
fn a_panicking_actor_child_is_restarted_per_its_plan_and_the_node_keeps_running() {
    let (control, mut node_stops) = NodeControl::channel();
    troupe_core::panic::install(Arc::from("test-node"), control);
    actix_rt::System::new().block_on(async move {
        let starts = Arc::new(AtomicUsize::new(0));
        let slot: Slot = Arc::default();
        let (counter, shared) = (starts.clone(), slot.clone());
        let factory = ActorFactory::new(move || {
            counter.fetch_add(1, Ordering::SeqCst);
            Fragile {
                slot: shared.clone(),
            }
        });
        let spec = ChildSpec::actor("fragile", factory)
            .with_plan(serde_json::from_str(r#"["restart", "wait"]"#).unwrap());
        let (sup, escalations) = start(setup(vec![spec], None));
        running(&sup, "fragile").await;
        assert_eq!(starts.load(Ordering::SeqCst), 1);

        // Panic #1: restarted at once, on a fresh arbiter.
        boom(&slot);
        until(&sup, "fragile", "restarted", |c| {
            c.is_some_and(|c| c.status == ChildStatus::Running && c.restarts == 1)
        })
        .await;
        assert_eq!(starts.load(Ordering::SeqCst), 2);

        // Panic #2: the plan says wait.
        boom(&slot);
        until(&sup, "fragile", "waiting", |c| {
            c.is_some_and(|c| c.status == ChildStatus::Waiting)
        })
        .await;
        assert!(escalations.is_empty());
        assert!(
            node_stops.try_recv().is_err(),
            "a supervised panic stopped the node"
        );
        sup.send(RestartChild("fragile".into()))
            .await
            .unwrap()
            .unwrap();
        assert_eq!(starts.load(Ordering::SeqCst), 3);
        sup.send(Shutdown).await.unwrap();
    });
}

/// Tells the current generation to panic (and forgets it: the next start publishes anew).
fn boom(slot: &Slot) {
    slot.lock()
        .unwrap()
        .take()
        .expect("a running generation")
        .do_send(Boom);
}

#[actix_rt::test]
async fn terminating_an_actor_asks_it_to_stop_then_drops_it() {
    let mut polite = ChildSpec::actor(
        "polite",
        ActorFactory::new(|| Fragile {
            slot: Slot::default(),
        }),
    );
    polite.terminate_timeout = Duration::from_secs(30);
    let mut deaf = ChildSpec::actor("deaf", ActorFactory::new(|| Deaf));
    deaf.terminate_timeout = Duration::from_millis(200);
    let (sup, _) = start(setup(vec![polite, deaf], None));
    running(&sup, "polite").await;
    running(&sup, "deaf").await;
    sup.send(TerminateChild("polite".into()))
        .await
        .unwrap()
        .unwrap();
    sup.send(TerminateChild("deaf".into()))
        .await
        .unwrap()
        .unwrap();
    for id in ["polite", "deaf"] {
        assert_eq!(child(&sup, id).await.unwrap().status, ChildStatus::Waiting);
    }
    assert_eq!(
        sup.send(GetPid("polite".into())).await.unwrap(),
        Err(ChildError::NotFound("polite".into()))
    );
    sup.send(Shutdown).await.unwrap();
}
