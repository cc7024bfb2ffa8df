//! The hub's counters, answered to a `Stats` frame as JSON and logged when the hub stops.

use serde::Serialize;

/// Counters since the hub started, and gauges of now.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct HubStats {
    /// Connections open now.
    pub connections: usize,
    /// Registered connections now.
    pub registered: usize,
    /// Service channels attached now.
    pub channels_attached: usize,
    /// Messages held in mailboxes now.
    pub mailbox_messages: usize,
    /// Bytes held in mailboxes now.
    pub mailbox_bytes: usize,
    /// Requests between clients in flight now.
    pub requests_in_flight: usize,
    /// `push_config` and `invoke` calls waiting for a service's answer now.
    pub calls_in_flight: usize,
    /// Bytes held for partial frames by all readers now (bounded by `max_partial_bytes`).
    pub partial_bytes: usize,
    /// Connections accepted.
    pub connections_accepted: u64,
    /// Valid frames received.
    pub frames_in: u64,
    /// Bytes of valid frames received.
    pub bytes_in: u64,
    /// Frames written to clients.
    pub frames_out: u64,
    /// Messages, requests and replies queued to a receiving connection (each message of a
    /// batch counts).
    pub delivered: u64,
    /// Messages held for a receiver that was not connected.
    pub held: u64,
    /// Held messages that expired (their senders were told).
    pub expired: u64,
    /// Messages refused because a mailbox was full (their senders were told).
    pub overflowed: u64,
    /// Requests that got no reply in time.
    pub requests_timed_out: u64,
    /// Answers for connections that had gone.
    pub undeliverable: u64,
    /// Error frames sent.
    pub errors_sent: u64,
    /// Frames whose envelope could not be parsed.
    pub malformed: u64,
    /// Bytes skipped as damage between frames.
    pub corrupt_bytes: u64,
    /// Times a stream was resynchronised after damage.
    pub resyncs: u64,
    /// Frames over `max_frame_bytes` (their connections were closed).
    pub oversize_frames: u64,
    /// Connections refused over `max_connections_per_uid`.
    pub refused_per_uid: u64,
    /// Connections closed for not registering within `register_timeout`.
    pub register_timeouts: u64,
    /// Connections closed because partial frames held more than `max_partial_bytes`.
    pub partial_refused: u64,
    /// Connections closed for sending more than `max_damage_bytes` of damage.
    pub damaged_closed: u64,
    /// Frames carrying another process's pid (their connections were closed).
    pub foreign_frames: u64,
    /// Registrations under another process's pid (refused).
    pub spoofing_refused: u64,
    /// Connections closed because they stopped reading.
    pub stalled_closed: u64,
    /// Metrics and events published.
    pub events_published: u64,
    /// Events a subscriber missed because its mailbox was full (counted per subscriber).
    pub events_missed: u64,
}

/// One connection, as an operator sees it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ConnectionInfo {
    /// The connecting process.
    pub pid: u32,
    /// Its user.
    pub uid: u32,
    /// Whether it has registered.
    pub registered: bool,
    /// The name it registered under, if any.
    pub name: Option<String>,
    /// The service whose channel it is, if any.
    pub service: Option<String>,
    /// Bytes queued towards it now.
    pub outbox_bytes: usize,
    /// Requests it sent that are in flight.
    pub requests_in_flight: usize,
}

/// One mailbox holding messages for an absent receiver.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct MailboxInfo {
    /// Who the messages are for: `pid N` or `name "x"`.
    pub receiver: String,
    /// Messages held (a batch counts its messages).
    pub messages: usize,
    /// Bytes held.
    pub bytes: usize,
}

/// What the hub holds now: its connections (sorted by pid), its mailboxes (largest first)
/// and its counters. Both lists are cut at `limit` entries; the counts say how many there are.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct HubView {
    /// Connections, at most `limit`.
    pub connections: Vec<ConnectionInfo>,
    /// Mailboxes, at most `limit`.
    pub mailboxes: Vec<MailboxInfo>,
    /// Mailboxes in all.
    pub mailbox_count: usize,
    /// The counters.
    pub stats: HubStats,
}
