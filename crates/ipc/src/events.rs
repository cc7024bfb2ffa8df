//! The node's event stream: metrics and events that services send over their channels.
//!
//! Every one is logged as a tracing event (`service metric`, `service event`) and handed to
//! each subscriber. Another role subscribes by looking up [`IpcEvents`] in the node's
//! published registry and sending [`SubscribeEvents`] with its own recipient; what starts
//! before the roles publishes a [`NodeSubscriber`] instead, which the ipc role subscribes as
//! it starts. Delivery to a
//! subscriber never blocks the hub: a subscriber whose mailbox is full misses the event,
//! and the hub counts and logs what it missed.

use actix::{Message, Recipient};

/// A metric or an event from a service.
#[derive(Debug, Clone, PartialEq, Eq, Message)]
#[rtype(result = "()")]
pub enum ServiceEvent {
    /// `metric(device, route_key, data)`.
    Metric {
        /// The service that sent it.
        service: String,
        /// The device the metric is about.
        device: String,
        /// Where the metric is to be routed.
        route_key: String,
        /// The metric, opaque.
        data: Vec<u8>,
    },
    /// `event(type, params)`.
    Event {
        /// The service that sent it.
        service: String,
        /// The event's type.
        event_type: u32,
        /// Its parameters, opaque.
        params: Vec<u8>,
    },
}

/// Subscribes a recipient to every later [`ServiceEvent`]. Subscribers that have stopped
/// are dropped; at most [`MAX_SUBSCRIBERS`] are kept.
#[derive(Message)]
#[rtype(result = "Result<(), TooManySubscribers>")]
pub struct SubscribeEvents(pub Recipient<ServiceEvent>);

/// Most subscribers at once.
pub const MAX_SUBSCRIBERS: usize = 64;

/// The hub already has [`MAX_SUBSCRIBERS`] live subscribers.
#[derive(Debug, Clone, thiserror::Error)]
#[error("the event stream already has {MAX_SUBSCRIBERS} subscribers")]
pub struct TooManySubscribers;

/// A subscriber the node publishes before its roles start: the ipc role subscribes it as it
/// starts, before any service can attach, so it misses no event (the control API's store of
/// services' metrics). One per node.
#[derive(Clone)]
pub struct NodeSubscriber(pub Recipient<ServiceEvent>);

/// What the ipc role publishes for roles that want the event stream.
#[derive(Clone)]
pub struct IpcEvents {
    /// Where to send [`SubscribeEvents`].
    pub subscribe: Recipient<SubscribeEvents>,
}
