//! Service channels: the supervisor reports each service's process, that process (and only
//! it) attaches one connection as the service's channel, and the node calls the service
//! through it (`push_config`, `invoke`); the service sends `request_config`, metrics and
//! events back.
//!
//! A channel call ends exactly once: with the service's answer, a timeout, the service's
//! exit, the channel closing, or the hub stopping.

use std::collections::HashMap;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use bytes::Bytes;
use troupe_core::services::ChannelError;

use super::timers::Timer;
use super::{ConnId, Effect, Hub};
use crate::events::ServiceEvent;
use crate::wire::{envelope, Envelope, ErrorCode, Kind};

#[derive(Debug, Default)]
pub(super) struct Channels {
    services: HashMap<String, Service>,
    /// Calls in flight, by the hub's correlation id.
    calls: HashMap<u64, Call>,
    /// Attaches waiting for the supervisor to report their process, by connection.
    parked: HashMap<ConnId, Parked>,
    next_corr: u64,
}

#[derive(Debug)]
struct Service {
    /// The process the supervisor reported running, if any.
    pid: Option<u32>,
    config_path: PathBuf,
    channel: Option<ConnId>,
}

#[derive(Debug)]
struct Call {
    id: super::CallId,
    service: String,
    /// The config of a `push_config`; `None` for an `invoke`.
    config: Option<Bytes>,
    deadline: Instant,
    timeout: Duration,
}

#[derive(Debug)]
struct Parked {
    service: String,
    corr: u64,
    deadline: Instant,
}

impl Channels {
    pub(super) fn attached(&self) -> usize {
        self.services
            .values()
            .filter(|s| s.channel.is_some())
            .count()
    }

    pub(super) fn calls_in_flight(&self) -> usize {
        self.calls.len()
    }

    pub(super) fn unpark(&mut self, conn: ConnId) {
        self.parked.remove(&conn);
    }

    fn calls_of(&self, service: &str) -> usize {
        self.calls.values().filter(|c| c.service == service).count()
    }
}

impl Hub {
    /// The supervisor started process `pid` of service `id`.
    pub fn service_started(&mut self, id: String, pid: u32, config_path: PathBuf) {
        let previous = self.channels.services.get(&id).and_then(|s| {
            s.channel
                .filter(|_| s.pid != Some(pid))
                .map(|conn| (conn, s.pid))
        });
        if let Some((conn, old_pid)) = previous {
            tracing::warn!(service = %id, ?old_pid, pid, "a new process replaces the one holding the channel");
            self.detach(&id, conn, ChannelError::ServiceExited);
        }
        let service = self.channels.services.entry(id.clone()).or_insert(Service {
            pid: None,
            config_path: config_path.clone(),
            channel: None,
        });
        service.pid = Some(pid);
        service.config_path = config_path;
        let waiting: Vec<(ConnId, u64)> = self
            .channels
            .parked
            .iter()
            .filter(|(conn, p)| {
                p.service == id && self.conns.get(conn).is_some_and(|c| c.peer.pid == pid)
            })
            .map(|(conn, p)| (*conn, p.corr))
            .collect();
        for (conn, corr) in waiting {
            self.channels.parked.remove(&conn);
            self.attach_now(conn, &id, corr);
        }
    }

    /// Process `pid` of service `id` exited: its calls fail at once, its channel is freed.
    pub fn service_exited(&mut self, id: &str, pid: u32) {
        let Some(service) = self.channels.services.get_mut(id) else {
            return;
        };
        if service.pid != Some(pid) {
            tracing::debug!(service = %id, pid, current = ?service.pid, "exit of a process that no longer holds the service");
            return;
        }
        service.pid = None;
        match service.channel {
            Some(conn) => self.detach(id, conn, ChannelError::ServiceExited),
            None => self.fail_calls_of(id, ChannelError::ServiceExited),
        }
    }

    /// The node pushes `config` to service `service`; the answer comes as
    /// [`Effect::PersistConfig`] (acknowledged) or [`Effect::CallDone`] (failed).
    pub fn push_config(
        &mut self,
        call: super::CallId,
        service: &str,
        config: Bytes,
        timeout: Duration,
        now: Instant,
    ) {
        self.call(call, service, Kind::PushConfig, config, timeout, now);
    }

    /// The node invokes service `service`; the answer comes as [`Effect::CallDone`].
    pub fn invoke(
        &mut self,
        call: super::CallId,
        service: &str,
        payload: Bytes,
        timeout: Duration,
        now: Instant,
    ) {
        self.call(call, service, Kind::Invoke, payload, timeout, now);
    }

    fn call(
        &mut self,
        id: super::CallId,
        service: &str,
        kind: Kind,
        body: Bytes,
        timeout: Duration,
        now: Instant,
    ) {
        let channel = self.channels.services.get(service).and_then(|s| s.channel);
        let Some(conn) = channel.filter(|_| !self.stopping) else {
            self.done(id, Err(ChannelError::NotAlive));
            return;
        };
        if self.channels.calls_of(service) >= self.limits.max_pending_requests {
            let why = format!(
                "{} calls to service {service} are in flight (max_pending_requests)",
                self.limits.max_pending_requests
            );
            self.done(id, Err(ChannelError::Failed(why)));
            return;
        }
        self.channels.next_corr += 1;
        let corr = self.channels.next_corr;
        let frame = Envelope {
            corr,
            name: service,
            body: &body,
            ..Envelope::new(kind)
        };
        self.push_env(conn, &frame);
        let deadline = now + timeout;
        self.channels.calls.insert(
            corr,
            Call {
                id,
                service: service.to_string(),
                config: (kind == Kind::PushConfig).then_some(body),
                deadline,
                timeout,
            },
        );
        self.timers.at(deadline, Timer::Call(corr));
    }

    pub(super) fn attach(&mut self, conn: ConnId, env: &Envelope<'_>, now: Instant) {
        let service = env.name;
        if let Err(why) = envelope::check_name(service) {
            let why = format!("bad service id: {why}");
            self.send_error(conn, env.corr, ErrorCode::Malformed, None, &why);
            return;
        }
        if let Some(held) = &self.conns[&conn].service {
            let why = format!("this connection is already the channel of service \"{held}\"");
            self.send_error(conn, env.corr, ErrorCode::ChannelExists, None, &why);
            return;
        }
        if self.channels.parked.contains_key(&conn) {
            let why = "an attach of this connection is already waiting";
            self.send_error(conn, env.corr, ErrorCode::ChannelExists, None, why);
            return;
        }
        let pid = self.conns[&conn].peer.pid;
        match self.channels.services.get(service) {
            Some(s) if s.pid == Some(pid) => {
                if s.channel.is_some() {
                    let why = format!(
                        "channel exists: service \"{service}\" already has an attached channel"
                    );
                    self.send_error(conn, env.corr, ErrorCode::ChannelExists, None, &why);
                } else {
                    self.attach_now(conn, service, env.corr);
                }
            }
            _ => {
                // The supervisor's report of a just-started process may not have arrived.
                let deadline = now + self.limits.attach_timeout;
                self.channels.parked.insert(
                    conn,
                    Parked {
                        service: service.to_string(),
                        corr: env.corr,
                        deadline,
                    },
                );
                self.timers.at(deadline, Timer::Attach(conn));
            }
        }
    }

    fn attach_now(&mut self, conn: ConnId, service: &str, corr: u64) {
        let Some(s) = self.channels.services.get_mut(service) else {
            return;
        };
        if s.channel.is_some() {
            let why =
                format!("channel exists: service \"{service}\" already has an attached channel");
            self.send_error(conn, corr, ErrorCode::ChannelExists, None, &why);
            return;
        }
        s.channel = Some(conn);
        let Some(c) = self.conns.get_mut(&conn) else {
            return;
        };
        c.service = Some(service.to_string());
        tracing::info!(service = %service, pid = c.peer.pid, "service channel attached");
        let ok = Envelope {
            corr,
            name: service,
            ..Envelope::new(Kind::Ok)
        };
        self.push_env(conn, &ok);
    }

    pub(super) fn attach_timed_out(&mut self, conn: ConnId, when: Instant) {
        match self.channels.parked.get(&conn) {
            Some(p) if p.deadline == when => {}
            _ => return,
        }
        let parked = self.channels.parked.remove(&conn).expect("checked above");
        let pid = self.conns.get(&conn).map_or(0, |c| c.peer.pid);
        let service = &parked.service;
        let (code, why) = match self.channels.services.get(service).and_then(|s| s.pid) {
            Some(owner) => (
                ErrorCode::NotPermitted,
                format!("process {pid} is not service \"{service}\"'s process (the supervisor reported pid {owner})"),
            ),
            None => (
                ErrorCode::UnknownService,
                format!(
                    "the supervisor reported no running process for service \"{service}\" within attach_timeout ({:?})",
                    self.limits.attach_timeout
                ),
            ),
        };
        tracing::warn!(service = %service, pid, "attach refused: {why}");
        self.send_error(conn, parked.corr, code, None, &why);
    }

    /// `RequestConfig`, `Metric` and `Event` from a connection that must be a channel.
    pub(super) fn channel_message(&mut self, conn: ConnId, env: &Envelope<'_>) {
        let Some(service) = self.conns[&conn].service.clone() else {
            let why = format!(
                "{:?} needs an attached service channel; attach first",
                env.kind
            );
            self.send_error(conn, env.corr, ErrorCode::NotAttached, None, &why);
            return;
        };
        match env.kind {
            Kind::RequestConfig => {
                let path = self.channels.services[&service].config_path.clone();
                self.effects.push(Effect::ReadConfig {
                    conn,
                    corr: env.corr,
                    path,
                });
            }
            Kind::Metric => match envelope::decode_metric(env.body) {
                Ok((device, route_key, data)) => {
                    tracing::info!(
                        service = %service,
                        device = %device,
                        route_key = %route_key,
                        data = %String::from_utf8_lossy(&data[..data.len().min(256)]),
                        bytes = data.len(),
                        "service metric"
                    );
                    self.publish(ServiceEvent::Metric {
                        service,
                        device: device.to_string(),
                        route_key: route_key.to_string(),
                        data: data.to_vec(),
                    });
                }
                Err(why) => self.send_error(conn, env.corr, ErrorCode::Malformed, None, &why),
            },
            Kind::Event => {
                let params = env.body;
                tracing::info!(
                    service = %service,
                    event_type = env.arg,
                    params = %String::from_utf8_lossy(&params[..params.len().min(256)]),
                    bytes = params.len(),
                    "service event"
                );
                self.publish(ServiceEvent::Event {
                    service,
                    event_type: env.arg,
                    params: params.to_vec(),
                });
            }
            _ => {}
        }
    }

    fn publish(&mut self, event: ServiceEvent) {
        self.stats.events_published += 1;
        self.effects.push(Effect::Publish(event));
    }

    /// A `Reply` or `Error` addressed to the hub (pid 0): the answer to a channel call.
    pub(super) fn service_answer(&mut self, conn: ConnId, env: &Envelope<'_>) {
        let valid = self.channels.calls.get(&env.corr).is_some_and(|call| {
            self.channels
                .services
                .get(&call.service)
                .is_some_and(|s| s.channel == Some(conn))
        });
        if !valid {
            let why = format!(
                "no call {} from the node is waiting for this connection's answer",
                env.corr
            );
            self.send_error(conn, env.corr, ErrorCode::NoSuchRequest, None, &why);
            return;
        }
        let call = self
            .channels
            .calls
            .remove(&env.corr)
            .expect("checked above");
        if env.kind == Kind::Error {
            let why = String::from_utf8_lossy(env.body).into_owned();
            self.done(call.id, Err(ChannelError::Refused(why)));
            return;
        }
        match call.config {
            Some(config) => {
                let path = self.channels.services[&call.service].config_path.clone();
                self.effects.push(Effect::PersistConfig {
                    call: call.id,
                    service: call.service,
                    path,
                    config,
                });
            }
            None => self.done(call.id, Ok(env.body.to_vec())),
        }
    }

    pub(super) fn call_timed_out(&mut self, corr: u64, when: Instant) {
        match self.channels.calls.get(&corr) {
            Some(call) if call.deadline == when => {}
            _ => return,
        }
        let call = self.channels.calls.remove(&corr).expect("checked above");
        self.done(call.id, Err(ChannelError::Timeout(call.timeout)));
    }

    /// The channel connection `conn` of `service` has gone.
    pub(super) fn channel_closed(&mut self, service: &str, conn: ConnId) {
        self.detach(service, conn, ChannelError::ChannelClosed);
    }

    fn detach(&mut self, service: &str, conn: ConnId, error: ChannelError) {
        if let Some(s) = self.channels.services.get_mut(service) {
            if s.channel == Some(conn) {
                s.channel = None;
                tracing::info!(service = %service, "service channel detached");
            }
        }
        if let Some(c) = self.conns.get_mut(&conn) {
            c.service = None;
        }
        self.fail_calls_of(service, error);
    }

    fn fail_calls_of(&mut self, service: &str, error: ChannelError) {
        let failed: Vec<u64> = self
            .channels
            .calls
            .iter()
            .filter(|(_, call)| call.service == service)
            .map(|(corr, _)| *corr)
            .collect();
        for corr in failed {
            let call = self.channels.calls.remove(&corr).expect("listed above");
            self.done(call.id, Err(error.clone()));
        }
    }

    pub(super) fn fail_all_calls(&mut self, error: ChannelError) {
        let calls: Vec<Call> = self.channels.calls.drain().map(|(_, c)| c).collect();
        for call in calls {
            self.done(call.id, Err(error.clone()));
        }
    }

    fn done(&mut self, call: super::CallId, result: Result<Vec<u8>, ChannelError>) {
        self.effects.push(Effect::CallDone { call, result });
    }
}
