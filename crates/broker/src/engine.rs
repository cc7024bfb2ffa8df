//! The broker's whole logic, sans-IO: every message received on any socket goes in with the
//! current time, the messages to send come out. The socket loop owns the sockets and the clock;
//! this owns the services, the Majordomo service table, heartbeat timing and the drain.
//!
//! Invariants: a service's index is its slot in `services`, for as long as it exists; a
//! Paranoid Pirate service's index is also that of its frontend/backend pair
//! (`Socket::Frontend(i)`, `Socket::Backend(i)`). The configured services take indices
//! `0..n` at start; a service added by a live update takes a free slot, and a removed one
//! frees its slot only after everything it held or queued was answered, so a reused index
//! never meets an earlier service's requests. Majordomo-only services are created on demand,
//! at most `max_services` at once, and forgotten once they have neither workers nor requests.

use std::collections::{HashMap, VecDeque};
use std::time::{Duration, Instant};

use serde::Serialize;
use troupe_core::services::{parse_worker_identity, BrokerWorkers, BrokerWorkersAnswer};

use crate::config::BrokerConfig;
use crate::protocol::{self, BackendMessage, Control, Frame, Framing, MajordomoMessage};
use crate::service::{
    body_bytes, show_id, Loss, Origin, Outgoing, Purpose, Request, Service, ServiceStats, Socket,
    WorkerId, WorkerSnapshot,
};
use crate::update::UpdatePlan;

/// [`ServiceSnapshot::kind`] of a Paranoid Pirate service (its own frontend and backend).
pub const KIND_PIRATE: &str = "pirate";
/// [`ServiceSnapshot::kind`] of a service known only through the Majordomo socket.
pub const KIND_MAJORDOMO: &str = "majordomo";

/// What the broker has done since it started, and what it serves now.
#[derive(Debug, Clone, Default, Serialize)]
pub struct BrokerStats {
    /// Each service's counters and current state.
    pub services: Vec<ServiceSnapshot>,
    /// Messages dropped because they fit no protocol.
    pub malformed: u64,
    /// Replies to clients that the frontend could not route (client gone).
    pub undeliverable_replies: u64,
    /// Majordomo workers refused (and ignored for a while) because a Paranoid Pirate service
    /// has the name they offered.
    pub refused_majordomo_workers: u64,
    /// Replies dropped because their client was not reading and its held replies reached a
    /// bound (see [`crate::backlog`]). Filled in by the socket loop.
    pub dropped_replies: u64,
    /// Replies held now for clients that are not reading. Filled in by the socket loop.
    pub held_replies: usize,
}

/// One service in [`BrokerStats`].
#[derive(Debug, Clone, Serialize)]
pub struct ServiceSnapshot {
    /// Its name.
    pub name: String,
    /// [`KIND_PIRATE`] (`"pirate"`): a Paranoid Pirate service with its own sockets;
    /// [`KIND_MAJORDOMO`] (`"majordomo"`): one known only through the Majordomo socket.
    pub kind: &'static str,
    /// Where its clients connect (Paranoid Pirate services; the bound address).
    pub frontend: Option<String>,
    /// Where its workers connect (Paranoid Pirate services; the bound address).
    pub backend: Option<String>,
    /// Known workers.
    pub workers: usize,
    /// Requests waiting for a worker.
    pub waiting: usize,
    /// Their bytes (envelopes and bodies), bounded by `queue_max_bytes`.
    pub waiting_bytes: u64,
    /// Requests held by workers.
    pub held: usize,
    /// Counters.
    pub stats: ServiceStats,
    /// Every known worker (at most the service's `max_workers`).
    pub worker_list: Vec<WorkerSnapshot>,
}

/// Processes whose exit the supervisor reported that the engine remembers at most (see
/// [`Engine::process_exited`]).
const EXITED_REMEMBERED: usize = 1024;

/// The supervised processes reported dead recently, oldest first: a message still queued from
/// one of their workers is dropped, so that a dead worker is not registered again by its last
/// heartbeat. An entry is forgotten after a worker window (such messages arrive within
/// milliseconds of the exit), when the supervisor reports a start of the same service with
/// the same pid (the pid was reused), or when [`EXITED_REMEMBERED`] newer ones push it out.
#[derive(Default)]
struct ExitedProcesses {
    /// Service ids by pid.
    by_pid: HashMap<u32, Vec<String>>,
    order: VecDeque<(Instant, u32, String)>,
}

impl ExitedProcesses {
    fn insert(&mut self, service_id: &str, pid: u32, now: Instant) {
        if self.contains(service_id, pid) {
            return;
        }
        if self.order.len() >= EXITED_REMEMBERED {
            if let Some((_, old_pid, old_id)) = self.order.pop_front() {
                self.forget_entry(&old_id, old_pid);
            }
        }
        self.by_pid
            .entry(pid)
            .or_default()
            .push(service_id.to_string());
        self.order.push_back((now, pid, service_id.to_string()));
    }

    fn forget_entry(&mut self, service_id: &str, pid: u32) {
        if let Some(ids) = self.by_pid.get_mut(&pid) {
            ids.retain(|id| id != service_id);
            if ids.is_empty() {
                self.by_pid.remove(&pid);
            }
        }
    }

    /// Forgets `(service_id, pid)`: a process of that service started with that pid again.
    fn forget(&mut self, service_id: &str, pid: u32) {
        if self.contains(service_id, pid) {
            self.forget_entry(service_id, pid);
            self.order
                .retain(|(_, p, id)| !(*p == pid && id == service_id));
        }
    }

    /// Forgets the entries recorded before `before`.
    fn purge(&mut self, before: Instant) {
        while self.order.front().is_some_and(|(at, _, _)| *at < before) {
            let (_, pid, id) = self.order.pop_front().expect("checked");
            self.forget_entry(&id, pid);
        }
    }

    fn contains(&self, service_id: &str, pid: u32) -> bool {
        self.by_pid
            .get(&pid)
            .is_some_and(|ids| ids.iter().any(|id| id == service_id))
    }

    /// Whether worker identity `id` names a process reported dead.
    fn owns(&self, id: &[u8]) -> bool {
        !self.order.is_empty()
            && parse_worker_identity(id)
                .is_some_and(|(service_id, pid)| self.contains(service_id, pid))
    }
}

/// The error text of a request whose worker replied with more than
/// [`protocol::MAX_BODY_FRAMES`] body frames (502).
const TOO_MANY_REPLY_FRAMES: &str = "the worker's reply has more than 64 frames";

/// Why a request with `envelope` routing frames and `body` body frames is refused at once, if
/// it is over a limit ([`protocol::MAX_ENVELOPE_FRAMES`], [`protocol::MAX_BODY_FRAMES`]).
fn oversized_request(envelope: usize, body: usize) -> Option<&'static str> {
    if envelope > protocol::MAX_ENVELOPE_FRAMES {
        Some("the request's envelope has more than 16 routing frames")
    } else if body > protocol::MAX_BODY_FRAMES {
        Some("the request has more than 64 frames")
    } else {
        None
    }
}

/// The broker's logic.
pub struct Engine<F> {
    config: BrokerConfig,
    services: Vec<Option<Service<F>>>,
    /// Paranoid Pirate services (the others are Majordomo-only).
    pirate_count: usize,
    by_name: HashMap<String, usize>,
    majordomo_workers: HashMap<WorkerId, usize>,
    worker_window: Duration,
    next_heartbeat: Instant,
    drain_deadline: Option<Instant>,
    malformed: u64,
    malformed_unreported: u64,
    undeliverable_replies: u64,
    exited: ExitedProcesses,
    /// Majordomo workers refused because a Paranoid Pirate service has their service's name,
    /// with when the refusal ends: their messages are ignored until then (see
    /// [`Engine::refuse_majordomo_worker`]).
    refused_workers: HashMap<WorkerId, Instant>,
    /// The same, oldest first (each refusal ends [`REFUSAL_BACKOFF`] after it began).
    refused_order: VecDeque<(Instant, WorkerId)>,
    /// Refusals not logged yet, and when the last warning was.
    refusals_unreported: u64,
    last_refusal_warning: Option<Instant>,
    /// Majordomo workers refused that way since start.
    refused_majordomo_workers: u64,
}

/// How long a refused Majordomo worker identity is ignored (see
/// [`Engine::refuse_majordomo_worker`]).
pub const REFUSAL_BACKOFF: Duration = Duration::from_secs(60);
/// Refused identities remembered at most.
const REFUSED_REMEMBERED: usize = 4096;
/// Refusals are logged at most this often.
const REFUSAL_WARN_EVERY: Duration = Duration::from_secs(10);

impl<F: Frame> Engine<F> {
    /// An engine for a validated `config`, starting at `now`.
    pub fn new(config: BrokerConfig, now: Instant) -> Self {
        let interval = config.heartbeat_interval.get();
        let worker_window = interval * config.liveness;
        let mut services = Vec::new();
        let mut by_name = HashMap::new();
        for (i, pirate) in config.pirate_services().into_iter().enumerate() {
            by_name.insert(pirate.settings.name.clone(), i);
            services.push(Some(Service::new(
                i,
                pirate.settings,
                Socket::Backend(i),
                interval,
                config.liveness,
            )));
        }
        Engine {
            pirate_count: services.len(),
            services,
            by_name,
            majordomo_workers: HashMap::new(),
            worker_window,
            next_heartbeat: now + interval,
            drain_deadline: None,
            malformed: 0,
            malformed_unreported: 0,
            undeliverable_replies: 0,
            exited: ExitedProcesses::default(),
            refused_workers: HashMap::new(),
            refused_order: VecDeque::new(),
            refusals_unreported: 0,
            last_refusal_warning: None,
            refused_majordomo_workers: 0,
            config,
        }
    }

    fn service(&mut self, index: usize) -> Option<&mut Service<F>> {
        self.services.get_mut(index).and_then(|s| s.as_mut())
    }

    /// Paranoid Pirate service `index`, whose sockets are `Frontend(index)`/`Backend(index)`.
    fn pirate(&mut self, index: usize) -> Option<&mut Service<F>> {
        self.service(index)
            .filter(|svc| svc.socket() == Socket::Backend(index))
    }

    /// The table the engine runs (after live updates: the adopted one).
    pub fn config(&self) -> &BrokerConfig {
        &self.config
    }

    fn malformed(&mut self, socket: Socket, why: protocol::Invalid) {
        self.malformed += 1;
        self.malformed_unreported += 1;
        tracing::debug!(?socket, reason = why.0, "dropped a malformed message");
    }

    /// Whether the broker is draining (refusing new requests).
    pub fn is_draining(&self) -> bool {
        self.drain_deadline.is_some()
    }

    /// A message from a client on the frontend of Paranoid Pirate service `index`.
    pub fn on_frontend(
        &mut self,
        index: usize,
        mut frames: Vec<F>,
        now: Instant,
        out: &mut Vec<Outgoing<F>>,
    ) {
        let Some(delimiter) = protocol::envelope_end(&frames) else {
            return self.malformed(
                Socket::Frontend(index),
                protocol::Invalid("request without an envelope, an empty delimiter and a body"),
            );
        };
        let body = frames.split_off(delimiter + 1);
        frames.truncate(delimiter);
        let too_large = oversized_request(frames.len(), body.len());
        let request = Request {
            origin: Origin::Frontend(index),
            envelope: frames,
            body,
            attempts: 0,
            received: now,
        };
        let draining = self.is_draining();
        let Some(service) = self.pirate(index) else {
            return;
        };
        if draining {
            service.refuse(request, "the broker is shutting down", out);
        } else if let Some(text) = too_large {
            service.refuse(request, text, out);
        } else {
            service.offer(request, now, out);
        }
    }

    /// A message from a worker on the backend of Paranoid Pirate service `index`.
    pub fn on_backend(
        &mut self,
        index: usize,
        mut frames: Vec<F>,
        now: Instant,
        out: &mut Vec<Outgoing<F>>,
    ) {
        let message = match protocol::parse_backend(&frames) {
            Ok(message) => message,
            Err(why) => return self.malformed(Socket::Backend(index), why),
        };
        if self.exited.owns(frames[0].bytes()) {
            tracing::debug!(worker = %show_id(frames[0].bytes()), "dropped a message from a worker whose process exited");
            return;
        }
        let Some(service) = self.pirate(index) else {
            return;
        };
        let max_workers = service.settings().max_workers;
        let id = frames[0].bytes();
        match message {
            BackendMessage::Control {
                framing,
                control: Control::Ready,
                concurrency,
            } => {
                if !service.worker_ready(id, framing, concurrency, now, out) {
                    tracing::warn!(service = %service.name(), worker = %show_id(id), max_workers, "worker refused: the service has max_workers workers");
                }
            }
            BackendMessage::Control {
                framing,
                control: Control::Heartbeat,
                concurrency,
            } => {
                // A heartbeat from an unknown worker (the broker restarted, or it was purged
                // while partitioned) registers it: PPP workers only send READY on connect.
                if !service.worker_heartbeat(id, Some(concurrency), now, out)
                    && !service.worker_ready(id, framing, concurrency, now, out)
                {
                    tracing::debug!(worker = %show_id(id), "heartbeat from a refused worker");
                }
            }
            BackendMessage::Control {
                control: Control::Stop,
                ..
            } => {
                service.remove_worker(id, Loss::Stopped, now, out);
            }
            BackendMessage::Reply { envelope, .. } => {
                let (start, end) = envelope;
                let held = service.worker_reply(id, &frames[start..end], now, out);
                let held = match held {
                    Ok(held) => held,
                    Err(why) => {
                        tracing::debug!(worker = %show_id(id), ?why, "dropped a reply matching no request in flight");
                        return;
                    }
                };
                let body_frames = frames.len().saturating_sub(end + 1);
                if body_frames > protocol::MAX_BODY_FRAMES {
                    return service.reply_refused(id, held, TOO_MANY_REPLY_FRAMES, out);
                }
                service.stats.sent_bytes += body_bytes(frames.get(end + 1..).unwrap_or(&[]));
                match held.origin {
                    Origin::Frontend(i) => {
                        let reply = frames.split_off(start);
                        out.push(Outgoing {
                            socket: Socket::Frontend(i),
                            frames: reply,
                            purpose: Purpose::Reply,
                        });
                    }
                    Origin::Majordomo => {
                        let body = frames.split_off(end + 1);
                        let tagged = frames[start].bytes();
                        let client = F::copy_of(&tagged[protocol::MAJORDOMO_ROUTE_TAG.len()..]);
                        out.push(Outgoing {
                            socket: Socket::Majordomo,
                            frames: protocol::majordomo_client_reply(client, service.name(), body),
                            purpose: Purpose::Reply,
                        });
                    }
                }
            }
        }
    }

    /// A message on the Majordomo socket, from a client or a worker.
    pub fn on_majordomo(&mut self, mut frames: Vec<F>, now: Instant, out: &mut Vec<Outgoing<F>>) {
        let message = match protocol::parse_majordomo(&frames) {
            Ok(message) => message,
            Err(why) => return self.malformed(Socket::Majordomo, why),
        };
        let id = frames[0].bytes().to_vec();
        if !matches!(message, MajordomoMessage::Request { .. }) && self.exited.owns(&id) {
            tracing::debug!(worker = %show_id(&id), "dropped a message from a worker whose process exited");
            return;
        }
        if !matches!(message, MajordomoMessage::Request { .. })
            && !self.refused_workers.is_empty()
            && self
                .refused_workers
                .get(&id)
                .is_some_and(|&until| now < until)
        {
            return;
        }
        match message {
            MajordomoMessage::Request { service } => {
                let service = service.to_string();
                if service.as_bytes().starts_with(protocol::MMI_PREFIX) {
                    let answer = self.management(&service, frames[4].bytes());
                    let client = frames.swap_remove(0);
                    out.push(Outgoing {
                        socket: Socket::Majordomo,
                        frames: protocol::majordomo_client_reply(
                            client,
                            &service,
                            vec![F::copy_of(answer.as_bytes())],
                        ),
                        purpose: Purpose::Reply,
                    });
                    return;
                }
                let body = frames.split_off(4);
                frames.truncate(1);
                let too_large = oversized_request(1, body.len());
                let request = Request {
                    origin: Origin::Majordomo,
                    envelope: frames,
                    body,
                    attempts: 0,
                    received: now,
                };
                let draining = self.is_draining();
                match self.service_for(&service, now) {
                    Some(index) => {
                        let svc = self.service(index).expect("index just looked up");
                        if draining {
                            svc.refuse(request, "the broker is shutting down", out);
                        } else if let Some(text) = too_large {
                            svc.refuse(request, text, out);
                        } else {
                            svc.offer(request, now, out);
                        }
                    }
                    None => {
                        // A throwaway service only to phrase the refusal in the usual format.
                        let settings = self.config.majordomo_settings_for(&service);
                        let mut temp: Service<F> = Service::new(
                            usize::MAX,
                            settings,
                            Socket::Majordomo,
                            self.config.heartbeat_interval.get(),
                            self.config.liveness,
                        );
                        let text = format!(
                            "the broker already has {} Majordomo services",
                            self.config.majordomo.max_services
                        );
                        temp.refuse(request, &text, out);
                    }
                }
            }
            MajordomoMessage::Ready { service } => {
                let service = service.to_string();
                if let Some(old) = self.majordomo_workers.remove(&id) {
                    // RFC 7: READY from a worker already registered is a protocol error.
                    if let Some(svc) = self.service(old) {
                        svc.remove_worker(&id, Loss::Restarted, now, out);
                    }
                    return self.disconnect(&id, out);
                }
                if service.as_bytes().starts_with(protocol::MMI_PREFIX) {
                    return self.disconnect(&id, out);
                }
                if let Some(&index) = self.by_name.get(&service) {
                    if self.is_pirate(index) {
                        return self.refuse_majordomo_worker(id, &service, now);
                    }
                }
                let Some(index) = self.service_for(&service, now) else {
                    tracing::warn!(%service, "Majordomo worker refused: too many services");
                    return self.disconnect(&id, out);
                };
                let svc = self.service(index).expect("index just looked up");
                if svc.worker_ready(&id, Framing::Majordomo, 1, now, out) {
                    self.majordomo_workers.insert(id, index);
                } else {
                    tracing::warn!(%service, "Majordomo worker refused: the service has max_workers workers");
                    self.disconnect(&id, out);
                }
            }
            MajordomoMessage::Reply => {
                let Some(&index) = self.majordomo_workers.get(&id) else {
                    return self.disconnect(&id, out);
                };
                let svc = self.service(index).expect("mapped workers have a service");
                let held = svc.worker_reply(&id, &frames[4..5], now, out);
                if let Err(why) = held {
                    tracing::debug!(worker = %show_id(&id), ?why, "dropped a reply matching no request in flight");
                    return;
                }
                let held = held.expect("checked");
                if frames.len() - 6 > protocol::MAX_BODY_FRAMES {
                    return svc.reply_refused(&id, held, TOO_MANY_REPLY_FRAMES, out);
                }
                let body = frames.split_off(6);
                svc.stats.sent_bytes += body_bytes(&body);
                let client = frames.swap_remove(4);
                out.push(Outgoing {
                    socket: Socket::Majordomo,
                    frames: protocol::majordomo_client_reply(client, svc.name(), body),
                    purpose: Purpose::Reply,
                });
            }
            MajordomoMessage::Heartbeat => {
                let known = match self.majordomo_workers.get(&id) {
                    Some(&index) => self
                        .service(index)
                        .is_some_and(|svc| svc.worker_heartbeat(&id, None, now, out)),
                    None => false,
                };
                if !known {
                    self.disconnect(&id, out);
                }
            }
            MajordomoMessage::Disconnect => {
                if let Some(index) = self.majordomo_workers.remove(&id) {
                    if let Some(svc) = self.service(index) {
                        svc.remove_worker(&id, Loss::Stopped, now, out);
                    }
                }
            }
        }
    }

    /// A Majordomo worker offered the name of a Paranoid Pirate service. It is not answered
    /// (a DISCONNECT would make it reconnect and offer again at once, in a loop): its identity
    /// is remembered and everything it sends is ignored for [`REFUSAL_BACKOFF`], so it gets no
    /// heartbeat and reconnects only after its own liveness window. Refusals are logged at
    /// WARN at most every 10 s, with their count.
    fn refuse_majordomo_worker(&mut self, id: WorkerId, service: &str, now: Instant) {
        while self.refused_order.len() >= REFUSED_REMEMBERED {
            self.forget_oldest_refusal();
        }
        let until = now + REFUSAL_BACKOFF;
        self.refused_workers.insert(id.clone(), until);
        self.refused_order.push_back((until, id.clone()));
        self.refused_majordomo_workers += 1;
        self.refusals_unreported += 1;
        let due = self
            .last_refusal_warning
            .is_none_or(|at| now.saturating_duration_since(at) >= REFUSAL_WARN_EVERY);
        if due {
            tracing::warn!(%service, worker = %show_id(&id), refused = self.refusals_unreported, "Majordomo worker refused: this service is served by Paranoid Pirate workers on its backend; the worker is ignored for 60s");
            self.refusals_unreported = 0;
            self.last_refusal_warning = Some(now);
        }
    }

    fn forget_oldest_refusal(&mut self) {
        if let Some((until, id)) = self.refused_order.pop_front() {
            if self.refused_workers.get(&id) == Some(&until) {
                self.refused_workers.remove(&id);
            }
        }
    }

    fn disconnect(&self, worker: &[u8], out: &mut Vec<Outgoing<F>>) {
        out.push(Outgoing {
            socket: Socket::Majordomo,
            frames: protocol::majordomo_command(worker, protocol::MDP_DISCONNECT, Vec::new()),
            purpose: Purpose::Control,
        });
    }

    /// The answer to a `mmi.` request.
    fn management(&self, service: &str, body: &[u8]) -> &'static str {
        if service != "mmi.service" {
            return "501";
        }
        let has_workers = std::str::from_utf8(body)
            .ok()
            .and_then(|name| self.by_name.get(name))
            .and_then(|&i| self.services.get(i).and_then(|s| s.as_ref()))
            .is_some_and(|svc| svc.worker_count() > 0);
        if has_workers {
            "200"
        } else {
            "404"
        }
    }

    fn is_pirate(&self, index: usize) -> bool {
        self.services
            .get(index)
            .and_then(|s| s.as_ref())
            .is_some_and(|svc| svc.socket() == Socket::Backend(index))
    }

    /// The lowest free slot (a new one at the end if none is free).
    fn free_slot(&mut self) -> usize {
        match self.services.iter().position(|s| s.is_none()) {
            Some(free) => free,
            None => {
                self.services.push(None);
                self.services.len() - 1
            }
        }
    }

    /// The index of service `name`, creating a Majordomo service if there is room.
    fn service_for(&mut self, name: &str, _now: Instant) -> Option<usize> {
        if let Some(&index) = self.by_name.get(name) {
            return Some(index);
        }
        let majordomo_services = self.by_name.len() - self.pirate_count;
        if majordomo_services >= self.config.majordomo.max_services {
            return None;
        }
        let index = self.free_slot();
        let settings = self.config.majordomo_settings_for(name);
        self.services[index] = Some(Service::new(
            index,
            settings,
            Socket::Majordomo,
            self.config.heartbeat_interval.get(),
            self.config.liveness,
        ));
        self.by_name.insert(name.to_string(), index);
        Some(index)
    }

    /// Sends the socket refused. `batch` holds every refused dispatch to `worker` of
    /// `service`, in the order they were produced; `gone` says the peer is disconnected
    /// (rather than not reading).
    pub fn undeliverable(
        &mut self,
        service: usize,
        worker: &[u8],
        batch: Vec<Vec<F>>,
        gone: bool,
        now: Instant,
        out: &mut Vec<Outgoing<F>>,
    ) {
        if let Some(svc) = self.service(service) {
            svc.undeliverable(worker, batch, gone, now, out);
        }
        if gone && self.majordomo_workers.get(worker) == Some(&service) {
            self.majordomo_workers.remove(worker);
        }
    }

    /// A heartbeat the socket could not route: the worker's connection is gone, so it is
    /// removed now rather than after its liveness window.
    pub fn worker_unreachable(
        &mut self,
        service: usize,
        worker: &[u8],
        now: Instant,
        out: &mut Vec<Outgoing<F>>,
    ) {
        if let Some(svc) = self.service(service) {
            svc.remove_worker(worker, Loss::Disconnected, now, out);
        }
        if self.majordomo_workers.get(worker) == Some(&service) {
            self.majordomo_workers.remove(worker);
        }
    }

    /// The supervisor reports that process `pid` of supervised service `service_id` has
    /// exited: every worker whose identity names that process (see
    /// [`troupe_core::services::worker_identity`]), in every service, is removed now. What
    /// each held is given to another worker where the service retries on worker loss and
    /// attempts remain, or answered at once with the error a lost worker's requests get
    /// (502), without waiting for the liveness window. Messages still queued from those
    /// workers are dropped afterwards. Returns how many workers were removed.
    pub fn process_exited(
        &mut self,
        service_id: &str,
        pid: u32,
        now: Instant,
        out: &mut Vec<Outgoing<F>>,
    ) -> usize {
        self.exited.insert(service_id, pid, now);
        let mut removed = 0;
        for index in 0..self.services.len() {
            let Some(svc) = self.services[index].as_mut() else {
                continue;
            };
            for worker in svc.workers_of_process(service_id, pid) {
                if svc.remove_worker(&worker, Loss::Exited, now, out) {
                    removed += 1;
                }
                if self.majordomo_workers.get(&worker) == Some(&index) {
                    self.majordomo_workers.remove(&worker);
                }
            }
        }
        removed
    }

    /// The supervisor reports that process `pid` of supervised service `service_id` has
    /// started. Only matters when an earlier process of the service had the same pid: its
    /// workers' identities are accepted again.
    pub fn process_started(&mut self, service_id: &str, pid: u32) {
        self.exited.forget(service_id, pid);
    }

    /// What the broker sees of broker service `query.broker_service` and of the workers of
    /// process `query.pid` of supervised service `query.service_id`. `known` is true for a
    /// Paranoid Pirate service, for a Majordomo service that exists now, and, when the
    /// Majordomo socket is enabled, for any valid service name (Majordomo services are made
    /// on demand, so one that has no worker yet is served all the same).
    pub fn broker_workers(&self, query: &BrokerWorkers) -> BrokerWorkersAnswer {
        let name = query.broker_service.as_str();
        let service = self
            .by_name
            .get(name)
            .and_then(|&index| self.services.get(index))
            .and_then(|s| s.as_ref());
        match service {
            Some(svc) => BrokerWorkersAnswer {
                known: true,
                ready: !svc
                    .workers_of_process(&query.service_id, query.pid)
                    .is_empty(),
                workers: svc.worker_count(),
                queue_depth: svc.waiting_count(),
            },
            None => BrokerWorkersAnswer {
                known: self.config.majordomo.enabled
                    && !name.as_bytes().starts_with(protocol::MMI_PREFIX)
                    && crate::config::check_service_name(name).is_ok(),
                ..BrokerWorkersAnswer::default()
            },
        }
    }

    /// A reply the frontend could not route: counted.
    pub fn reply_undeliverable(&mut self) {
        self.undeliverable_replies += 1;
    }

    /// When the socket loop must call [`Engine::on_timer`] next.
    pub fn next_wake(&self) -> Instant {
        let mut wake = self.next_heartbeat;
        for svc in self.services.iter().flatten() {
            if let Some(deadline) = svc.next_deadline() {
                wake = wake.min(deadline);
            }
        }
        if let Some(deadline) = self.drain_deadline {
            wake = wake.min(deadline);
        }
        wake
    }

    /// Timed work: heartbeats and purges when due, expired waits.
    pub fn on_timer(&mut self, now: Instant, out: &mut Vec<Outgoing<F>>) {
        if now >= self.next_heartbeat {
            self.next_heartbeat = now + self.config.heartbeat_interval.get();
            for svc in self.services.iter_mut().flatten() {
                svc.tick(now, out);
            }
            let services = &self.services;
            self.majordomo_workers.retain(|id, index| {
                services
                    .get(*index)
                    .and_then(|s| s.as_ref())
                    .is_some_and(|svc| svc.knows(id))
            });
            for index in 0..self.services.len() {
                let unused = self.services[index].as_ref().is_some_and(|svc| {
                    svc.socket() == Socket::Majordomo && svc.worker_count() == 0 && svc.is_idle()
                });
                if unused {
                    let svc = self.services[index].take().expect("checked");
                    self.by_name.remove(svc.name());
                }
            }
            if let Some(before) = now.checked_sub(self.worker_window) {
                self.exited.purge(before);
            }
            while self
                .refused_order
                .front()
                .is_some_and(|(until, _)| *until <= now)
            {
                self.forget_oldest_refusal();
            }
            if self.malformed_unreported > 0 {
                tracing::warn!(
                    count = self.malformed_unreported,
                    total = self.malformed,
                    "dropped malformed messages since the last heartbeat"
                );
                self.malformed_unreported = 0;
            }
        } else {
            for svc in self.services.iter_mut().flatten() {
                if svc.next_deadline().is_some_and(|d| d <= now) {
                    svc.expire_waiting(now, out);
                }
            }
        }
    }

    /// Stops accepting requests; the drain ends when nothing waits or is held, or at
    /// `now + window`. Requests waiting for a service that has no worker at all are answered
    /// at once: nothing could serve them within the window.
    pub fn start_drain(&mut self, now: Instant, window: Duration, out: &mut Vec<Outgoing<F>>) {
        self.drain_deadline = Some(now + window);
        for svc in self.services.iter_mut().flatten() {
            if svc.worker_count() == 0 {
                svc.fail_everything(
                    "the broker is shutting down and the service has no worker",
                    out,
                );
            }
        }
        tracing::info!(
            window = %troupe_core::settings::Duration(window),
            held = self.services.iter().flatten().map(|s| s.held_count()).sum::<usize>(),
            waiting = self.services.iter().flatten().map(|s| s.waiting_count()).sum::<usize>(),
            "draining: new requests are refused"
        );
    }

    /// During a drain: whether it has ended. When the window has run out, every remaining
    /// request is answered with an error first. Majordomo workers are told to disconnect.
    pub fn drain_finished(&mut self, now: Instant, out: &mut Vec<Outgoing<F>>) -> bool {
        let Some(deadline) = self.drain_deadline else {
            return false;
        };
        let idle = self.services.iter().flatten().all(|s| s.is_idle());
        if !idle && now < deadline {
            return false;
        }
        if !idle {
            let left: usize = self
                .services
                .iter()
                .flatten()
                .map(|s| s.held_count() + s.waiting_count())
                .sum();
            tracing::warn!(
                left,
                "drain window over; answering the remaining requests with errors"
            );
        }
        for svc in self.services.iter_mut().flatten() {
            svc.fail_everything("the broker stopped before the request completed", out);
            svc.disconnect_workers(out);
        }
        true
    }

    /// A snapshot of the counters and of every service and worker at `now`, in index order.
    /// Addresses are left to the socket loop, which knows what it bound.
    pub fn stats(&self, now: Instant) -> BrokerStats {
        BrokerStats {
            services: self
                .services
                .iter()
                .flatten()
                .map(|svc| ServiceSnapshot {
                    name: svc.name().to_string(),
                    kind: match svc.socket() {
                        Socket::Majordomo => KIND_MAJORDOMO,
                        Socket::Backend(_) | Socket::Frontend(_) => KIND_PIRATE,
                    },
                    frontend: None,
                    backend: None,
                    workers: svc.worker_count(),
                    waiting: svc.waiting_count(),
                    waiting_bytes: svc.waiting_bytes(),
                    held: svc.held_count(),
                    stats: svc.stats.clone(),
                    worker_list: svc.worker_snapshots(now),
                })
                .collect(),
            malformed: self.malformed,
            undeliverable_replies: self.undeliverable_replies,
            refused_majordomo_workers: self.refused_majordomo_workers,
            dropped_replies: 0,
            held_replies: 0,
        }
    }

    /// The index of Paranoid Pirate service `name`.
    pub fn pirate_index(&self, name: &str) -> Option<usize> {
        self.by_name
            .get(name)
            .copied()
            .filter(|&index| self.is_pirate(index))
    }

    /// Carries out a live update `plan` made by [`crate::update::plan`] against
    /// [`Engine::config`]; returns the index of each service in `plan.start`, in order, whose
    /// sockets the caller installs at that index once it has sent `out` (which answers the
    /// stopped services' clients on their old sockets).
    ///
    /// - each service in `plan.stop` answers everything it holds or queues with a 503, its
    ///   workers are forgotten, its slot freed;
    /// - each service in `plan.retune` takes its new settings in place, and Majordomo-only
    ///   services take the new broker-wide ones;
    /// - each service in `plan.start` gets a free slot. A Majordomo-only service of the same
    ///   name is replaced: its waiting requests move to the new service, what its workers hold
    ///   is answered with a 503 and they are sent DISCONNECT (a Majordomo worker is refused a
    ///   Paranoid Pirate service's name).
    pub fn apply_update(&mut self, plan: &UpdatePlan, out: &mut Vec<Outgoing<F>>) -> Vec<usize> {
        for name in &plan.stop {
            let text = if plan.report.removed.contains(name) {
                "the service was removed before the request completed"
            } else {
                "the service was reconfigured before the request completed"
            };
            self.remove_pirate(name, text, out);
        }
        for settings in &plan.retune {
            if let Some(index) = self.pirate_index(&settings.name) {
                if let Some(svc) = self.service(index) {
                    svc.set_settings(settings.clone());
                }
            }
        }
        self.config = plan.config.clone();
        for svc in self.services.iter_mut().flatten() {
            if svc.socket() == Socket::Majordomo {
                svc.set_settings(self.config.majordomo_settings_for(svc.name()));
            }
        }
        let mut started = Vec::with_capacity(plan.start.len());
        for pirate in &plan.start {
            let name = &pirate.settings.name;
            // A plan made against another table could name a running service: replaced.
            self.remove_pirate(
                name,
                "the service was reconfigured before the request completed",
                out,
            );
            let replaced = match self.by_name.remove(name) {
                Some(index) => {
                    self.majordomo_workers
                        .retain(|_, service| *service != index);
                    self.services.get_mut(index).and_then(|s| s.take())
                }
                None => None,
            };
            let index = self.free_slot();
            let mut svc = Service::new(
                index,
                pirate.settings.clone(),
                Socket::Backend(index),
                self.config.heartbeat_interval.get(),
                self.config.liveness,
            );
            if let Some(mut old) = replaced {
                tracing::warn!(service = %name, workers = old.worker_count(), "the Majordomo service of that name is now served on its Paranoid Pirate backend; its Majordomo workers are disconnected");
                svc.adopt_waiting(&mut old, out);
                old.fail_held(
                    "the service moved to a Paranoid Pirate backend before the request completed",
                    out,
                );
                old.disconnect_workers(out);
            }
            self.services[index] = Some(svc);
            self.by_name.insert(name.clone(), index);
            self.pirate_count += 1;
            started.push(index);
        }
        started
    }

    /// Stops serving Paranoid Pirate service `name`: everything it holds or queues is answered
    /// with `text` (503), its workers are forgotten and its slot freed.
    fn remove_pirate(&mut self, name: &str, text: &str, out: &mut Vec<Outgoing<F>>) {
        let Some(index) = self.pirate_index(name) else {
            return;
        };
        let Some(mut svc) = self.services[index].take() else {
            return;
        };
        self.by_name.remove(name);
        self.pirate_count -= 1;
        let (held, waiting) = (svc.held_count(), svc.waiting_count());
        svc.fail_everything(text, out);
        tracing::info!(service = %name, held, waiting, workers = svc.worker_count(), "broker service stopped serving");
    }
}

#[cfg(test)]
mod tests;
