//! The envelope: the first 20 bytes of every frame's payload, then a name, then the body.
//!
//! ```text
//! offset  size  field
//!  0      u8    version (1)
//!  1      u8    kind           see [`Kind`]
//!  2      u16   name_len       bytes of UTF-8 name after the fixed part
//!  4      u32   pid            destination pid (or the counterpart's pid, see the protocol doc)
//!  8      u64   corr           correlation id
//! 16      u32   arg            kind-specific: request timeout in ms, error code, event type
//! 20      name  (name_len bytes)
//! 20+n    body  (the rest of the frame)
//! ```
//!
//! All integers are little-endian. `docs/protocols/ipc.md` is the full specification.

use bytes::BytesMut;

use super::frame::seal;

/// The envelope version this crate speaks.
pub const VERSION: u8 = 1;
/// Bytes of the fixed part of the envelope.
pub const ENVELOPE_LEN: usize = 20;
/// Smallest valid frame: header and fixed envelope.
pub const MIN_FRAME: usize = super::frame::HEADER_LEN + ENVELOPE_LEN;
/// Longest name (registered name, service id, broadcast prefix), in bytes.
pub const MAX_NAME_LEN: usize = 255;

macro_rules! kinds {
    ($($(#[$doc:meta])* $name:ident = $value:literal,)*) => {
        /// What a frame is.
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
        #[repr(u8)]
        pub enum Kind {
            $($(#[$doc])* $name = $value,)*
        }

        impl Kind {
            /// The kind with wire value `value`.
            #[inline]
            pub fn from_u8(value: u8) -> Option<Kind> {
                match value {
                    $($value => Some(Kind::$name),)*
                    _ => None,
                }
            }
        }
    };
}

kinds! {
    /// Client → hub: register the connection's pid (and optionally a name).
    Register = 0x01,
    /// A message to a pid or a name.
    Send = 0x02,
    /// A message that expects a `Reply` (or an `Error`) with the same correlation id.
    Request = 0x03,
    /// The answer to a `Request`, or to a hub's `PushConfig` / `Invoke` / `Stats` /
    /// `RequestConfig`.
    Reply = 0x04,
    /// A message to every connection whose name starts with a prefix.
    Broadcast = 0x05,
    /// Client → hub: ask for the hub's counters (answered with a JSON `Reply`).
    Stats = 0x06,
    /// Several messages to one pid or name, delivered like `Send`: `arg` is how many, the
    /// body holds them (see [`batch`](super::batch)), message i has correlation id `corr + i`.
    Batch = 0x07,
    /// Service → hub: attach this connection as the channel of the named service.
    Attach = 0x10,
    /// Service → hub: ask for the service's persisted config (answered with a `Reply`).
    RequestConfig = 0x11,
    /// Service → hub: a metric for the node's event stream.
    Metric = 0x12,
    /// Service → hub: an event for the node's event stream.
    Event = 0x13,
    /// Hub → service: a new config (JSON) to acknowledge with a `Reply`.
    PushConfig = 0x20,
    /// Hub → service: a call to answer with a `Reply`.
    Invoke = 0x21,
    /// Hub → client: the `Register` or `Attach` with this correlation id succeeded.
    Ok = 0x40,
    /// Something with this correlation id failed; `arg` is an [`ErrorCode`], the body says
    /// why in UTF-8. Also sent by a client to refuse a request.
    Error = 0x41,
}

macro_rules! error_codes {
    ($($(#[$doc:meta])* $name:ident = $value:literal,)*) => {
        /// Why something failed: the `arg` of an [`Kind::Error`] frame.
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
        pub enum ErrorCode {
            $($(#[$doc])* $name,)*
            /// A code this version does not know.
            Other(u32),
        }

        impl ErrorCode {
            /// The wire value.
            pub fn as_u32(self) -> u32 {
                match self {
                    $(ErrorCode::$name => $value,)*
                    ErrorCode::Other(code) => code,
                }
            }

            /// The code with wire value `value`.
            pub fn from_u32(value: u32) -> ErrorCode {
                match value {
                    $($value => ErrorCode::$name,)*
                    other => ErrorCode::Other(other),
                }
            }
        }
    };
}

error_codes! {
    /// The frame's envelope cannot be understood (version, kind, name, body layout).
    Malformed = 1,
    /// The connection must `Register` first.
    NotRegistered = 2,
    /// The pid given is not the connecting process's pid.
    PidMismatch = 3,
    /// Another live connection holds the name.
    NameTaken = 4,
    /// The connection is already registered.
    AlreadyRegistered = 5,
    /// The receiver is not connected and its mailbox is full.
    MailboxFull = 6,
    /// The receiver did not connect within the mailbox TTL.
    Expired = 7,
    /// No reply arrived within the request's timeout.
    Timeout = 8,
    /// A reply names no request in flight (answered already, timed out, or never sent).
    NoSuchRequest = 9,
    /// Reserved; not sent by this version.
    RequesterGone = 10,
    /// Too many requests of this connection are in flight.
    TooManyPending = 11,
    /// The frame is longer than the hub's `max_frame_bytes`.
    FrameTooLarge = 12,
    /// The service already has an attached channel.
    ChannelExists = 13,
    /// This process may not do that (attach another process's service channel).
    NotPermitted = 14,
    /// The supervisor has reported no such service.
    UnknownService = 15,
    /// The connection is not an attached service channel.
    NotAttached = 16,
    /// The hub is stopping.
    ShuttingDown = 17,
    /// The hub has `max_connections` connections already.
    TooManyConnections = 18,
    /// The hub could not do it (I/O error, queue full); the message says what.
    Internal = 19,
    /// The receiver refused the request.
    Refused = 20,
    /// The correlation id is already used by a request of this process in flight.
    DuplicateRequest = 21,
    /// The receiver disconnected after getting the request and before replying.
    ReceiverGone = 22,
    /// The connection sent more damaged data than `max_damage_bytes`.
    TooMuchDamage = 23,
}

/// Why an envelope was rejected.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EnvelopeError {
    /// Shorter than the fixed part, or the name runs past the end.
    #[error("the payload is {0} bytes, too short for the envelope it announces")]
    Truncated(usize),
    /// Unknown version.
    #[error("unsupported envelope version {0} (this hub speaks version {VERSION})")]
    Version(u8),
    /// Unknown kind.
    #[error("unknown kind 0x{0:02x}")]
    Kind(u8),
    /// The name is not UTF-8.
    #[error("the name is not valid UTF-8")]
    NameNotUtf8,
}

/// A parsed envelope borrowing the frame's bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Envelope<'a> {
    /// What the frame is.
    pub kind: Kind,
    /// Destination or counterpart pid.
    pub pid: u32,
    /// Correlation id.
    pub corr: u64,
    /// Kind-specific argument.
    pub arg: u32,
    /// Name (destination name, service id, broadcast prefix); may be empty.
    pub name: &'a str,
    /// The body.
    pub body: &'a [u8],
}

impl<'a> Envelope<'a> {
    /// An envelope of `kind` with every other field empty.
    pub fn new(kind: Kind) -> Envelope<'static> {
        Envelope {
            kind,
            pid: 0,
            corr: 0,
            arg: 0,
            name: "",
            body: &[],
        }
    }

    /// Parses a frame's payload.
    #[inline]
    pub fn parse(payload: &'a [u8]) -> Result<Envelope<'a>, EnvelopeError> {
        RawEnvelope::parse(payload)?.checked()
    }

    /// Appends the whole frame (header, envelope, name, body) sent by `sender_pid` to `out`.
    pub fn write(&self, out: &mut BytesMut, sender_pid: u32) {
        let start = out.len();
        self.write_unsealed(out, sender_pid);
        seal(&mut out[start..]);
    }

    /// Like [`write`](Self::write), leaving the checksum to
    /// [`seal_frames`](crate::wire::frame::seal_frames). A writer that queues many frames
    /// seals them all just before they go out: the checksum then reads bytes that are
    /// already settled in the cache instead of bytes still being stored.
    #[inline]
    pub fn write_unsealed(&self, out: &mut BytesMut, sender_pid: u32) {
        let name = &self.name.as_bytes()[..self.name.len().min(u16::MAX as usize)];
        let length = MIN_FRAME + name.len() + self.body.len();
        let mut fixed = [0u8; MIN_FRAME];
        fixed[0..4].copy_from_slice(&(length as u32).to_le_bytes());
        fixed[4..8].copy_from_slice(&sender_pid.to_le_bytes());
        fixed[12] = VERSION;
        fixed[13] = self.kind as u8;
        fixed[14..16].copy_from_slice(&(name.len() as u16).to_le_bytes());
        fixed[16..20].copy_from_slice(&self.pid.to_le_bytes());
        fixed[20..28].copy_from_slice(&self.corr.to_le_bytes());
        fixed[28..32].copy_from_slice(&self.arg.to_le_bytes());
        out.reserve(length);
        let start = out.len();
        let spare = &mut out.spare_capacity_mut()[..length];
        // SAFETY: `spare` has room for `length` bytes (reserved above), and the three copies
        // below fill exactly those bytes, from sources that cannot overlap `out`'s spare room.
        unsafe {
            let at = spare.as_mut_ptr().cast::<u8>();
            std::ptr::copy_nonoverlapping(fixed.as_ptr(), at, MIN_FRAME);
            // (A call to copy nothing is not free: messages to a pid have no name.)
            if !name.is_empty() {
                std::ptr::copy_nonoverlapping(name.as_ptr(), at.add(MIN_FRAME), name.len());
            }
            let body_at = at.add(MIN_FRAME + name.len());
            std::ptr::copy_nonoverlapping(self.body.as_ptr(), body_at, self.body.len());
            out.set_len(start + length);
        }
    }

    /// The whole frame as its own buffer.
    pub fn to_frame(&self, sender_pid: u32) -> bytes::Bytes {
        let mut out = BytesMut::with_capacity(MIN_FRAME + self.name.len() + self.body.len());
        self.write(&mut out, sender_pid);
        out.freeze()
    }
}

/// An envelope whose name is not yet checked as UTF-8: a reader that knows the name it
/// expects compares bytes and checks only a name it has not seen.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RawEnvelope<'a> {
    /// What the frame is.
    pub kind: Kind,
    /// Destination or counterpart pid.
    pub pid: u32,
    /// Correlation id.
    pub corr: u64,
    /// Kind-specific argument.
    pub arg: u32,
    /// The name's bytes.
    pub name: &'a [u8],
    /// The body.
    pub body: &'a [u8],
}

impl<'a> RawEnvelope<'a> {
    /// Parses a frame's payload, all but the name's encoding.
    #[inline]
    pub fn parse(payload: &'a [u8]) -> Result<RawEnvelope<'a>, EnvelopeError> {
        if payload.len() < ENVELOPE_LEN {
            return Err(EnvelopeError::Truncated(payload.len()));
        }
        if payload[0] != VERSION {
            return Err(EnvelopeError::Version(payload[0]));
        }
        let kind = Kind::from_u8(payload[1]).ok_or(EnvelopeError::Kind(payload[1]))?;
        let name_len = u16::from_le_bytes([payload[2], payload[3]]) as usize;
        let pid = u32::from_le_bytes(payload[4..8].try_into().expect("4 bytes"));
        let corr = u64::from_le_bytes(payload[8..16].try_into().expect("8 bytes"));
        let arg = u32::from_le_bytes(payload[16..20].try_into().expect("4 bytes"));
        let name_end = ENVELOPE_LEN + name_len;
        if payload.len() < name_end {
            return Err(EnvelopeError::Truncated(payload.len()));
        }
        Ok(RawEnvelope {
            kind,
            pid,
            corr,
            arg,
            name: &payload[ENVELOPE_LEN..name_end],
            body: &payload[name_end..],
        })
    }

    /// The envelope, once its name is checked.
    #[inline]
    pub fn checked(self) -> Result<Envelope<'a>, EnvelopeError> {
        let name = std::str::from_utf8(self.name).map_err(|_| EnvelopeError::NameNotUtf8)?;
        Ok(Envelope {
            kind: self.kind,
            pid: self.pid,
            corr: self.corr,
            arg: self.arg,
            name,
            body: self.body,
        })
    }
}

/// When `payload` is a well-formed `Send` or `Batch`, its destination pid and name (not yet
/// checked as UTF-8) and how many messages it carries: what the hub needs to route the
/// common message without parsing it whole.
#[inline]
pub fn send_destination(payload: &[u8]) -> Option<(u32, &[u8], u32)> {
    let fixed = payload.get(..ENVELOPE_LEN)?;
    let is_batch = fixed[1] == Kind::Batch as u8;
    if fixed[0] != VERSION || (fixed[1] != Kind::Send as u8 && !is_batch) {
        return None;
    }
    let name_len = u16::from_le_bytes([fixed[2], fixed[3]]) as usize;
    let pid = u32::from_le_bytes([fixed[4], fixed[5], fixed[6], fixed[7]]);
    let name_end = ENVELOPE_LEN + name_len;
    let name = payload.get(ENVELOPE_LEN..name_end)?;
    if !is_batch {
        return Some((pid, name, 1));
    }
    let count = u32::from_le_bytes([fixed[16], fixed[17], fixed[18], fixed[19]]);
    super::batch::check(&payload[name_end..], count).ok()?;
    Some((pid, name, count))
}

/// How many messages a whole frame carries: `arg` for a `Batch`, else 1.
#[inline]
pub fn messages_in(frame: &[u8]) -> u32 {
    let at = super::frame::HEADER_LEN;
    match frame.get(at..at + ENVELOPE_LEN) {
        Some(fixed) if fixed[1] == Kind::Batch as u8 => {
            u32::from_le_bytes([fixed[16], fixed[17], fixed[18], fixed[19]])
        }
        _ => 1,
    }
}

/// Whether two destination names are the same, compared in place: names are short, and a
/// call to `memcmp` for each frame or message (even for two empty names) was a noticeable
/// share of the hub's and the sending client's time per message.
#[inline]
pub fn same_name(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    let mut chunks_a = a.chunks_exact(8);
    let mut chunks_b = b.chunks_exact(8);
    let word = |chunk: &[u8]| u64::from_ne_bytes(chunk.try_into().expect("8 bytes"));
    let whole = chunks_a
        .by_ref()
        .zip(chunks_b.by_ref())
        .all(|(x, y)| word(x) == word(y));
    whole
        && chunks_a
            .remainder()
            .iter()
            .zip(chunks_b.remainder())
            .all(|(x, y)| x == y)
}

/// Checks a name a client registers or addresses: 1 to 255 bytes, no control characters.
pub fn check_name(name: &str) -> Result<(), String> {
    if name.is_empty() {
        return Err("the name is empty".into());
    }
    if name.len() > MAX_NAME_LEN {
        return Err(format!(
            "the name is {} bytes long; the limit is {MAX_NAME_LEN}",
            name.len()
        ));
    }
    if name.chars().any(char::is_control) {
        return Err("the name contains control characters".into());
    }
    Ok(())
}

/// Encodes the body of a `Metric`: `u16 len, device, u16 len, route_key, data`.
pub fn encode_metric(device: &str, route_key: &str, data: &[u8]) -> Vec<u8> {
    let device = &device.as_bytes()[..device.len().min(u16::MAX as usize)];
    let route_key = &route_key.as_bytes()[..route_key.len().min(u16::MAX as usize)];
    let mut body = Vec::with_capacity(4 + device.len() + route_key.len() + data.len());
    body.extend_from_slice(&(device.len() as u16).to_le_bytes());
    body.extend_from_slice(device);
    body.extend_from_slice(&(route_key.len() as u16).to_le_bytes());
    body.extend_from_slice(route_key);
    body.extend_from_slice(data);
    body
}

/// Decodes the body of a `Metric` into (device, route_key, data).
pub fn decode_metric(body: &[u8]) -> Result<(&str, &str, &[u8]), String> {
    fn field(body: &[u8]) -> Result<(&str, &[u8]), String> {
        if body.len() < 2 {
            return Err("metric body truncated".into());
        }
        let len = u16::from_le_bytes([body[0], body[1]]) as usize;
        let text = body
            .get(2..2 + len)
            .ok_or_else(|| "metric body truncated".to_string())?;
        let text = std::str::from_utf8(text).map_err(|_| "metric field is not UTF-8")?;
        Ok((text, &body[2 + len..]))
    }
    let (device, rest) = field(body)?;
    let (route_key, data) = field(rest)?;
    Ok((device, route_key, data))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::frame::{Decoded, FrameDecoder};

    #[test]
    fn envelope_round_trip_through_a_frame() {
        let env = Envelope {
            kind: Kind::Request,
            pid: 4242,
            corr: 0x0102030405060708,
            arg: 1500,
            name: "printer",
            body: b"payload",
        };
        let frame = env.to_frame(77);
        assert_eq!(frame.len(), MIN_FRAME + 7 + 7);
        assert_eq!(frame[12], VERSION);
        assert_eq!(frame[13], 0x03);
        let mut buf = BytesMut::from(&frame[..]);
        let Some(Decoded::Frame(f)) = FrameDecoder::new(MIN_FRAME, 1024, Some(77)).decode(&mut buf)
        else {
            panic!("no frame")
        };
        assert_eq!(Envelope::parse(f.payload()).unwrap(), env);
    }

    /// The worked example of `docs/protocols/ipc.md`, byte for byte.
    #[test]
    fn the_documented_example_frame() {
        let frame = Envelope {
            pid: 4242,
            corr: 1,
            name: "py",
            ..Envelope::new(Kind::Register)
        }
        .to_frame(4242);
        let expected: [u8; 34] = [
            0x22, 0, 0, 0, 0x92, 0x10, 0, 0, 0x72, 0xf7, 0x4f, 0x67, 1, 1, 2, 0, 0x92, 0x10, 0, 0,
            1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0x70, 0x79,
        ];
        assert_eq!(&frame[..], &expected[..]);
    }

    #[test]
    fn bad_envelopes_are_named() {
        assert_eq!(
            Envelope::parse(&[1, 2, 3]),
            Err(EnvelopeError::Truncated(3))
        );
        let mut p = Envelope::new(Kind::Send).to_frame(1)[12..].to_vec();
        p[0] = 9;
        assert_eq!(Envelope::parse(&p), Err(EnvelopeError::Version(9)));
        p[0] = 1;
        p[1] = 0x7e;
        assert_eq!(Envelope::parse(&p), Err(EnvelopeError::Kind(0x7e)));
        p[1] = 0x02;
        p[2] = 5;
        assert_eq!(Envelope::parse(&p), Err(EnvelopeError::Truncated(20)));
    }

    #[test]
    fn error_codes_round_trip() {
        for code in 1..=22 {
            assert_eq!(ErrorCode::from_u32(code).as_u32(), code);
            assert!(!matches!(ErrorCode::from_u32(code), ErrorCode::Other(_)));
        }
        assert_eq!(ErrorCode::from_u32(999), ErrorCode::Other(999));
    }

    #[test]
    fn metric_bodies_round_trip() {
        let body = encode_metric("dev-1", "temp", b"\x00\x01");
        assert_eq!(
            decode_metric(&body).unwrap(),
            ("dev-1", "temp", &b"\x00\x01"[..])
        );
        assert!(decode_metric(&body[..4]).is_err());
    }

    #[test]
    fn names_are_checked() {
        assert!(check_name("svc.a").is_ok());
        assert!(check_name("").is_err());
        assert!(check_name("a\nb").is_err());
        assert!(check_name(&"x".repeat(256)).is_err());
    }

    #[test]
    fn names_compare_equal_only_when_every_byte_matches() {
        assert!(same_name(b"", b""));
        assert!(same_name(b"bench-sink", b"bench-sink"));
        assert!(same_name(b"a-name-of-sixteen", b"a-name-of-sixteen"));
        assert!(!same_name(b"bench-sink", b"bench-sinK"));
        assert!(!same_name(b"Bench-sink", b"bench-sink"));
        assert!(!same_name(b"bench", b"bench-sink"));
        assert!(!same_name(b"", b"x"));
        for len in 1..40 {
            let a: Vec<u8> = (0..len as u8).collect();
            for i in 0..len {
                let mut b = a.clone();
                b[i] ^= 0x20;
                assert!(!same_name(&a, &b), "a difference at {i} of {len}");
            }
            assert!(same_name(&a, &a.clone()));
        }
    }
}
