//! Workers for several brokers at once: a [`WorkerSet`] runs one [`Worker`] connection per
//! broker backend, all sharing one handler, and follows changes to the set of backends (as
//! [`crate::discover`] finds them through the beacons).
//!
//! - [`WorkerSetHandle::set_endpoints`] replaces the set: a new endpoint gets a connection at
//!   once; a removed one is left gracefully, as [`WorkerStop::stop`] leaves (seed framing:
//!   zero free concurrency, serve what still arrives, then STOP; standard Paranoid Pirate:
//!   disconnect), and its thread is joined.
//! - [`WorkerSetHandle::stop`] leaves every broker; [`WorkerSet::wait`] returns once all have
//!   been left.
//! - `concurrency` in the [`WorkerOptions`] applies **per connection**: with three brokers
//!   and concurrency 4 the process runs up to 12 requests at once, each broker giving it at
//!   most 4.
//! - Each connection's socket has an identity of its own; under a supervisor that is
//!   `troupe/<service id>/<pid>/<n>` (see [`WorkerOptions::service_id`]).
//!
//! A connection whose worker fails (a socket error; an invalid endpoint) is logged and
//! dropped; it is tried again the next time the set is given with that endpoint in it.
//!
//! ```no_run
//! use std::collections::BTreeSet;
//! use std::sync::Arc;
//! use troupe_broker::worker::WorkerOptions;
//! use troupe_broker::worker_set::WorkerSet;
//!
//! # fn main() -> Result<(), troupe_broker::worker::WorkerError> {
//! let first = BTreeSet::from(["tcp://10.0.0.1:7502".to_string()]);
//! let set = WorkerSet::start(WorkerOptions::new(""), first, Arc::new(|body| body))?;
//! let handle = set.handle();
//! handle.set_endpoints(BTreeSet::from([
//!     "tcp://10.0.0.1:7502".to_string(),
//!     "tcp://10.0.0.2:7502".to_string(),
//! ]));
//! handle.stop();
//! let summary = set.wait();
//! println!("handled {} requests", summary.handled);
//! # Ok(())
//! # }
//! ```

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;

use crate::worker::{Handler, Worker, WorkerError, WorkerOptions, WorkerStop, WorkerSummary};

/// What a [`WorkerSet`] did, returned when it has left every broker.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct WorkerSetSummary {
    /// Requests handled and replied to, over every connection.
    pub handled: u64,
    /// Reconnections after a broker went silent, over every connection.
    pub reconnects: u64,
    /// Malformed messages ignored, over every connection.
    pub ignored: u64,
    /// Connections opened (one per broker joined).
    pub joined: u64,
    /// Connections that ended (left, or failed).
    pub left: u64,
    /// Connections whose worker failed with an error.
    pub failed: u64,
}

impl WorkerSetSummary {
    fn add(&mut self, summary: &WorkerSummary) {
        self.handled += summary.handled;
        self.reconnects += summary.reconnects;
        self.ignored += summary.ignored;
    }
}

/// What the set runs now.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct WorkerSetStatus {
    /// Backends with a connection serving (not leaving).
    pub active: BTreeSet<String>,
    /// Connections leaving whose threads have not ended yet.
    pub leaving: usize,
    /// Whether [`WorkerSetHandle::stop`] was called.
    pub stopping: bool,
}

enum SetCommand {
    Endpoints(BTreeSet<String>),
    Stop,
    Finished {
        key: u64,
        result: Result<WorkerSummary, WorkerError>,
    },
}

/// Steers a running [`WorkerSet`] from any thread. Cheap to clone.
#[derive(Clone)]
pub struct WorkerSetHandle {
    commands: mpsc::Sender<SetCommand>,
    status: Arc<Mutex<WorkerSetStatus>>,
}

impl WorkerSetHandle {
    /// Serves exactly the brokers at `endpoints` from now on: connects to the new ones at
    /// once, leaves the removed ones gracefully. Ignored once stopping.
    pub fn set_endpoints(&self, endpoints: BTreeSet<String>) {
        let _ = self.commands.send(SetCommand::Endpoints(endpoints));
    }

    /// Leaves every broker gracefully; [`WorkerSet::wait`] returns when all are left.
    /// Idempotent.
    pub fn stop(&self) {
        let _ = self.commands.send(SetCommand::Stop);
    }

    /// What the set runs now.
    pub fn status(&self) -> WorkerSetStatus {
        self.status
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }
}

/// Worker connections to a changing set of brokers, sharing one handler.
pub struct WorkerSet {
    handle: WorkerSetHandle,
    manager: Option<JoinHandle<WorkerSetSummary>>,
}

impl WorkerSet {
    /// Starts serving the brokers at `endpoints` (possibly none yet) with `handler`. Every
    /// connection uses `options` with its own endpoint (`options.endpoint` is not used).
    pub fn start(
        options: WorkerOptions,
        endpoints: BTreeSet<String>,
        handler: Handler,
    ) -> Result<WorkerSet, WorkerError> {
        options.validate()?;
        let (commands, inbox) = mpsc::channel();
        let status = Arc::new(Mutex::new(WorkerSetStatus::default()));
        let handle = WorkerSetHandle {
            commands: commands.clone(),
            status: status.clone(),
        };
        let manager = Manager {
            options,
            handler,
            commands,
            status,
            active: BTreeMap::new(),
            leaving: HashMap::new(),
            next_key: 0,
            stopping: false,
            summary: WorkerSetSummary::default(),
        };
        let thread = std::thread::Builder::new()
            .name("worker-set".into())
            .spawn(move || manager.run(inbox))
            .map_err(WorkerError::Thread)?;
        handle.set_endpoints(endpoints);
        Ok(WorkerSet {
            handle,
            manager: Some(thread),
        })
    }

    /// A handle to change the endpoints or stop, from any thread.
    pub fn handle(&self) -> WorkerSetHandle {
        self.handle.clone()
    }

    /// Blocks until the set has been stopped (see [`WorkerSetHandle::stop`]) and has left
    /// every broker.
    pub fn wait(mut self) -> WorkerSetSummary {
        self.join()
    }

    /// Leaves every broker and waits until all are left.
    pub fn stop(self) -> WorkerSetSummary {
        self.handle.stop();
        self.wait()
    }

    fn join(&mut self) -> WorkerSetSummary {
        match self.manager.take() {
            Some(thread) => thread.join().unwrap_or_default(),
            None => WorkerSetSummary::default(),
        }
    }
}

impl Drop for WorkerSet {
    /// Leaves every broker and waits, so that no connection outlives the set.
    fn drop(&mut self) {
        if self.manager.is_some() {
            self.handle.stop();
            self.join();
        }
    }
}

struct Connection {
    key: u64,
    stop: WorkerStop,
    thread: JoinHandle<()>,
}

struct Manager {
    options: WorkerOptions,
    handler: Handler,
    /// For the connections' threads to report their end.
    commands: mpsc::Sender<SetCommand>,
    status: Arc<Mutex<WorkerSetStatus>>,
    active: BTreeMap<String, Connection>,
    /// Connections asked to leave, by key: endpoint and thread.
    leaving: HashMap<u64, (String, JoinHandle<()>)>,
    next_key: u64,
    stopping: bool,
    summary: WorkerSetSummary,
}

impl Manager {
    fn run(mut self, inbox: mpsc::Receiver<SetCommand>) -> WorkerSetSummary {
        loop {
            if self.stopping && self.active.is_empty() && self.leaving.is_empty() {
                return self.summary;
            }
            // The manager holds a sender itself, so the channel never closes under it.
            let Ok(command) = inbox.recv() else {
                return self.summary;
            };
            match command {
                SetCommand::Endpoints(endpoints) if !self.stopping => self.set(endpoints),
                SetCommand::Endpoints(_) => {}
                SetCommand::Stop => {
                    if !self.stopping {
                        self.stopping = true;
                        let all: Vec<String> = self.active.keys().cloned().collect();
                        for endpoint in all {
                            self.leave(&endpoint);
                        }
                    }
                }
                SetCommand::Finished { key, result } => self.finished(key, result),
            }
            self.publish();
        }
    }

    fn set(&mut self, endpoints: BTreeSet<String>) {
        let removed: Vec<String> = self
            .active
            .keys()
            .filter(|endpoint| !endpoints.contains(*endpoint))
            .cloned()
            .collect();
        for endpoint in removed {
            self.leave(&endpoint);
        }
        for endpoint in endpoints {
            if !self.active.contains_key(&endpoint) {
                self.join(endpoint);
            }
        }
    }

    fn join(&mut self, endpoint: String) {
        let options = WorkerOptions {
            endpoint: endpoint.clone(),
            ..self.options.clone()
        };
        let (worker, stop) = match Worker::new(options) {
            Ok(pair) => pair,
            Err(err) => {
                tracing::error!(%endpoint, %err, "cannot start a worker for the broker");
                return;
            }
        };
        let key = self.next_key;
        self.next_key += 1;
        let handler = self.handler.clone();
        let report = self.commands.clone();
        let spawned = std::thread::Builder::new()
            .name(format!("worker-{key}"))
            .spawn(move || {
                let result = worker.run(handler);
                let _ = report.send(SetCommand::Finished { key, result });
            });
        match spawned {
            Ok(thread) => {
                self.summary.joined += 1;
                tracing::info!(%endpoint, "joined broker");
                self.active
                    .insert(endpoint, Connection { key, stop, thread });
            }
            Err(err) => {
                tracing::error!(%endpoint, %err, "cannot start a worker thread for the broker");
            }
        }
    }

    fn leave(&mut self, endpoint: &str) {
        if let Some(connection) = self.active.remove(endpoint) {
            tracing::info!(%endpoint, "leaving broker");
            connection.stop.stop();
            self.leaving
                .insert(connection.key, (endpoint.to_string(), connection.thread));
        }
    }

    fn finished(&mut self, key: u64, result: Result<WorkerSummary, WorkerError>) {
        let (endpoint, thread) = match self.leaving.remove(&key) {
            Some(left) => left,
            None => {
                let Some(endpoint) = self
                    .active
                    .iter()
                    .find(|(_, c)| c.key == key)
                    .map(|(e, _)| e.clone())
                else {
                    return;
                };
                let connection = self.active.remove(&endpoint).expect("just found");
                (endpoint, connection.thread)
            }
        };
        // The thread has sent its last message; it ends now.
        let _ = thread.join();
        self.summary.left += 1;
        match result {
            Ok(summary) => {
                self.summary.add(&summary);
                tracing::info!(%endpoint, handled = summary.handled, "left broker");
            }
            Err(err) => {
                self.summary.failed += 1;
                tracing::error!(%endpoint, %err, "the worker for the broker failed; dropped until the broker is listed again");
            }
        }
    }

    fn publish(&self) {
        let mut status = self.status.lock().unwrap_or_else(|e| e.into_inner());
        status.active = self.active.keys().cloned().collect();
        status.leaving = self.leaving.len();
        status.stopping = self.stopping;
    }
}
