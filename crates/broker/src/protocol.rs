//! Wire formats, as pure functions over message frames: Paranoid Pirate (RFC 6), the seed's
//! variant of it, Majordomo 0.1 (RFC 7) and Troupe's error reply.
//!
//! Parsing never copies a frame and never panics: anything that does not fit a format comes
//! back as [`Invalid`] with a reason, for the caller to drop and count.

use crate::config::check_service_name;

/// Paranoid Pirate READY (also the seed's).
pub const PPP_READY: u8 = 0x01;
/// Paranoid Pirate HEARTBEAT (also the seed's).
pub const PPP_HEARTBEAT: u8 = 0x02;
/// The seed's STOP: the worker is leaving.
pub const SEED_STOP: u8 = 0x03;
/// Majordomo client protocol header.
pub const MDP_CLIENT: &[u8] = b"MDPC01";
/// Majordomo worker protocol header.
pub const MDP_WORKER: &[u8] = b"MDPW01";
/// Majordomo worker commands.
pub const MDP_READY: u8 = 0x01;
/// Broker → worker request.
pub const MDP_REQUEST: u8 = 0x02;
/// Worker → broker reply.
pub const MDP_REPLY: u8 = 0x03;
/// Heartbeat, both ways.
pub const MDP_HEARTBEAT: u8 = 0x04;
/// Disconnect, both ways.
pub const MDP_DISCONNECT: u8 = 0x05;
/// Every error reply's single frame starts with these bytes.
pub const ERROR_PREFIX: &str = "TROUPE-ERROR ";
/// The broker's own Majordomo service namespace.
pub const MMI_PREFIX: &[u8] = b"mmi.";
/// Prefix of the routing frame a Paranoid Pirate worker sees for a request that came in over
/// Majordomo. Starting with a zero byte and being longer than 5 bytes, it can never equal a
/// ROUTER identity: generated ones are exactly 5 bytes, chosen ones cannot start with zero.
pub const MAJORDOMO_ROUTE_TAG: &[u8] = b"\0troupe-mdp:";

/// Most body frames a request or a reply may have, in either direction. Only the body counts:
/// routing frames (identities, envelopes, delimiters, protocol headers) do not.
pub const MAX_BODY_FRAMES: usize = 64;
/// Most routing frames a client request's envelope may have (its identity and those of the
/// proxies it passed).
pub const MAX_ENVELOPE_FRAMES: usize = 16;
/// Frames the socket loop keeps of one received message: the most a message within both
/// limits can have (identity, delimiters and protocol headers included). The socket loop
/// keeps one frame more of a longer message and discards the rest, so the engine sees that it
/// is over a limit and can still answer it.
pub const MAX_RECEIVED_FRAMES: usize = MAX_BODY_FRAMES + MAX_ENVELOPE_FRAMES + 8;

/// A message frame: `zmq::Message` in the socket loop, `Vec<u8>` in tests.
pub trait Frame: Sized {
    /// The frame's bytes.
    fn bytes(&self) -> &[u8];
    /// A frame holding a copy of `bytes`.
    fn copy_of(bytes: &[u8]) -> Self;
    /// A frame taking ownership of `bytes`.
    fn from_vec(bytes: Vec<u8>) -> Self;
}

impl Frame for Vec<u8> {
    fn bytes(&self) -> &[u8] {
        self
    }
    fn copy_of(bytes: &[u8]) -> Self {
        bytes.to_vec()
    }
    fn from_vec(bytes: Vec<u8>) -> Self {
        bytes
    }
}

impl Frame for zmq::Message {
    fn bytes(&self) -> &[u8] {
        self
    }
    fn copy_of(bytes: &[u8]) -> Self {
        zmq::Message::from(bytes)
    }
    fn from_vec(bytes: Vec<u8>) -> Self {
        zmq::Message::from(bytes)
    }
}

/// How a worker frames its messages; the broker answers each worker in its own framing.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Framing {
    /// Standard Paranoid Pirate: nothing between the worker id and the payload.
    Pirate,
    /// The seed's variant: an empty frame after the worker id.
    Seed,
    /// Majordomo worker protocol.
    Majordomo,
}

impl Framing {
    /// Its name in the operator's view: `"pirate"`, `"seed"` or `"majordomo"`.
    pub fn as_str(self) -> &'static str {
        match self {
            Framing::Pirate => "pirate",
            Framing::Seed => "seed",
            Framing::Majordomo => "majordomo",
        }
    }
}

/// Why a message was not understood.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Invalid(pub &'static str);

/// A Paranoid Pirate (or seed) control command.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Control {
    /// The worker is (again) ready.
    Ready,
    /// Still alive.
    Heartbeat,
    /// Leaving (seed only).
    Stop,
}

/// A message a worker sent on a Paranoid Pirate backend, frame 0 being its identity.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BackendMessage {
    /// READY, HEARTBEAT or STOP, with the free concurrency it announces.
    Control {
        /// The worker's framing.
        framing: Framing,
        /// The command.
        control: Control,
        /// Requests the worker can take now.
        concurrency: u8,
    },
    /// A reply: frames `envelope.0..envelope.1` are the envelope (without the empty
    /// delimiter, which follows), the rest the body.
    Reply {
        /// The worker's framing.
        framing: Framing,
        /// Index range of the envelope frames.
        envelope: (usize, usize),
    },
}

/// Parses a backend message. `frames[0]` is the worker identity.
pub fn parse_backend<F: Frame>(frames: &[F]) -> Result<BackendMessage, Invalid> {
    if frames.len() < 2 {
        return Err(Invalid("no frame after the worker id"));
    }
    let (framing, start) = if frames[1].bytes().is_empty() {
        (Framing::Seed, 2)
    } else {
        (Framing::Pirate, 1)
    };
    let rest = &frames[start..];
    match rest.len() {
        0 => Err(Invalid("empty frame after the worker id and nothing else")),
        1 => {
            let ctrl = rest[0].bytes();
            let control = match ctrl.first() {
                Some(&PPP_READY) => Control::Ready,
                Some(&PPP_HEARTBEAT) => Control::Heartbeat,
                Some(&SEED_STOP) => Control::Stop,
                _ => return Err(Invalid("unknown control command")),
            };
            let concurrency = if ctrl.len() >= 3 { ctrl[2] } else { 1 };
            Ok(BackendMessage::Control {
                framing,
                control,
                concurrency,
            })
        }
        _ => {
            let delimiter = envelope_end(rest).ok_or(Invalid(
                "reply without an envelope, an empty delimiter and a body",
            ))?;
            Ok(BackendMessage::Reply {
                framing,
                envelope: (start, start + delimiter),
            })
        }
    }
}

/// Index of the empty delimiter ending a REQ-style envelope: the first empty frame, which must
/// follow at least one routing frame and precede at least one body frame.
pub fn envelope_end<F: Frame>(frames: &[F]) -> Option<usize> {
    let d = frames.iter().position(|f| f.bytes().is_empty())?;
    (d >= 1 && d + 1 < frames.len()).then_some(d)
}

/// A message on the Majordomo socket, frame 0 being the sender's identity.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MajordomoMessage<'a> {
    /// A client request for `service`; the body is `frames[4..]`.
    Request {
        /// The requested service.
        service: &'a str,
    },
    /// Worker READY for `service`.
    Ready {
        /// The service the worker offers.
        service: &'a str,
    },
    /// Worker reply to client `frames[4]`; the body is `frames[6..]`.
    Reply,
    /// Worker heartbeat.
    Heartbeat,
    /// Worker disconnect.
    Disconnect,
}

/// Parses a Majordomo message. A client request with a malformed service name is
/// `Err(Invalid)` like any other malformed message.
pub fn parse_majordomo<F: Frame>(frames: &[F]) -> Result<MajordomoMessage<'_>, Invalid> {
    if frames.len() < 3 || !frames[1].bytes().is_empty() {
        return Err(Invalid("no empty delimiter after the sender id"));
    }
    match frames[2].bytes() {
        MDP_CLIENT => {
            if frames.len() < 5 {
                return Err(Invalid("client request without a service and a body"));
            }
            let service = service_name(frames[3].bytes())?;
            Ok(MajordomoMessage::Request { service })
        }
        MDP_WORKER => {
            let command = match frames.get(3).map(|f| f.bytes()) {
                Some([c]) => *c,
                _ => return Err(Invalid("worker message without a one-byte command")),
            };
            match (command, frames.len()) {
                (MDP_READY, 5) => Ok(MajordomoMessage::Ready {
                    service: service_name(frames[4].bytes())?,
                }),
                (MDP_REPLY, n) if n >= 7 && frames[5].bytes().is_empty() => {
                    if frames[4].bytes().is_empty() {
                        return Err(Invalid("reply with an empty client address"));
                    }
                    Ok(MajordomoMessage::Reply)
                }
                (MDP_HEARTBEAT, 4) => Ok(MajordomoMessage::Heartbeat),
                (MDP_DISCONNECT, 4) => Ok(MajordomoMessage::Disconnect),
                _ => Err(Invalid("unknown or malformed worker command")),
            }
        }
        _ => Err(Invalid("neither MDPC01 nor MDPW01")),
    }
}

fn service_name(bytes: &[u8]) -> Result<&str, Invalid> {
    if bytes.starts_with(MMI_PREFIX) {
        return std::str::from_utf8(bytes).map_err(|_| Invalid("service name is not UTF-8"));
    }
    let name = std::str::from_utf8(bytes).map_err(|_| Invalid("service name is not UTF-8"))?;
    check_service_name(name).map_err(|_| Invalid("invalid service name"))?;
    Ok(name)
}

/// The error codes of an error reply.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorCode {
    /// 502: the worker holding the request was lost.
    WorkerLost,
    /// 503: refused at once (queue full, too many services, shutting down).
    Unavailable,
    /// 504: no worker took the request within the service's `request_timeout`.
    Timeout,
}

impl ErrorCode {
    /// The number written in the reply.
    pub fn number(self) -> u16 {
        match self {
            ErrorCode::WorkerLost => 502,
            ErrorCode::Unavailable => 503,
            ErrorCode::Timeout => 504,
        }
    }
}

/// The body of an error reply: `TROUPE-ERROR <code> <service>: <text>`.
pub fn error_body(code: ErrorCode, service: &str, text: &str) -> Vec<u8> {
    format!("{ERROR_PREFIX}{} {service}: {text}", code.number()).into_bytes()
}

/// If `body` is an error reply, its code and the rest of the text.
pub fn parse_error(body: &[u8]) -> Option<(u16, String)> {
    let text = std::str::from_utf8(body).ok()?.strip_prefix(ERROR_PREFIX)?;
    let (code, rest) = text.split_once(' ')?;
    Some((code.parse().ok()?, rest.to_string()))
}

/// A Paranoid Pirate control frame towards a worker of `framing` (Pirate or Seed).
pub fn pirate_control<F: Frame>(worker: &[u8], framing: Framing, command: u8) -> Vec<F> {
    let mut out = Vec::with_capacity(3);
    out.push(F::copy_of(worker));
    if framing == Framing::Seed {
        out.push(F::from_vec(Vec::new()));
    }
    out.push(F::copy_of(&[command]));
    out
}

/// A Majordomo command towards a worker: `[wid, "", MDPW01, command, tail…]`.
pub fn majordomo_command<F: Frame>(worker: &[u8], command: u8, tail: Vec<F>) -> Vec<F> {
    let mut out = Vec::with_capacity(4 + tail.len());
    out.push(F::copy_of(worker));
    out.push(F::from_vec(Vec::new()));
    out.push(F::copy_of(MDP_WORKER));
    out.push(F::copy_of(&[command]));
    out.extend(tail);
    out
}

/// A Majordomo reply towards a client: `[cid, "", MDPC01, service, body…]`.
pub fn majordomo_client_reply<F: Frame>(client: F, service: &str, body: Vec<F>) -> Vec<F> {
    let mut out = Vec::with_capacity(4 + body.len());
    out.push(client);
    out.push(F::from_vec(Vec::new()));
    out.push(F::copy_of(MDP_CLIENT));
    out.push(F::copy_of(service.as_bytes()));
    out.extend(body);
    out
}

/// The routing frame a Paranoid Pirate worker sees for Majordomo client `client`.
pub fn tag_majordomo_client(client: &[u8]) -> Vec<u8> {
    let mut tagged = Vec::with_capacity(MAJORDOMO_ROUTE_TAG.len() + client.len());
    tagged.extend_from_slice(MAJORDOMO_ROUTE_TAG);
    tagged.extend_from_slice(client);
    tagged
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frames(parts: &[&[u8]]) -> Vec<Vec<u8>> {
        parts.iter().map(|p| p.to_vec()).collect()
    }

    #[test]
    fn pirate_and_seed_control_frames() {
        let ready = parse_backend(&frames(&[b"w", b"\x01"])).unwrap();
        assert_eq!(
            ready,
            BackendMessage::Control {
                framing: Framing::Pirate,
                control: Control::Ready,
                concurrency: 1
            }
        );
        let seed = parse_backend(&frames(&[b"w", b"", b"\x02\x01\x07"])).unwrap();
        assert_eq!(
            seed,
            BackendMessage::Control {
                framing: Framing::Seed,
                control: Control::Heartbeat,
                concurrency: 7
            }
        );
        let stop = parse_backend(&frames(&[b"w", b"", b"\x03\x01"])).unwrap();
        assert!(matches!(
            stop,
            BackendMessage::Control {
                control: Control::Stop,
                ..
            }
        ));
        assert!(parse_backend(&frames(&[b"w", b"\x09"])).is_err());
        assert!(parse_backend(&frames(&[b"w", b""])).is_err());
        assert!(parse_backend(&frames(&[b"w"])).is_err());
    }

    #[test]
    fn replies_in_both_framings() {
        let pirate = parse_backend(&frames(&[b"w", b"c", b"", b"body"])).unwrap();
        assert_eq!(
            pirate,
            BackendMessage::Reply {
                framing: Framing::Pirate,
                envelope: (1, 2)
            }
        );
        let seed = parse_backend(&frames(&[
            b"w", b"", b"proxy", b"", b"client", b"", b"data",
        ]))
        .unwrap();
        assert_eq!(
            seed,
            BackendMessage::Reply {
                framing: Framing::Seed,
                envelope: (2, 3)
            }
        );
        assert!(parse_backend(&frames(&[b"w", b"c", b"body"])).is_err());
        assert!(parse_backend(&frames(&[b"w", b"c", b""])).is_err());
    }

    #[test]
    fn majordomo_messages() {
        let req = frames(&[b"c", b"", b"MDPC01", b"echo", b"hi"]);
        assert_eq!(
            parse_majordomo(&req).unwrap(),
            MajordomoMessage::Request { service: "echo" }
        );
        let ready = frames(&[b"w", b"", b"MDPW01", b"\x01", b"echo"]);
        assert_eq!(
            parse_majordomo(&ready).unwrap(),
            MajordomoMessage::Ready { service: "echo" }
        );
        let reply = frames(&[b"w", b"", b"MDPW01", b"\x03", b"c", b"", b"hi"]);
        assert_eq!(parse_majordomo(&reply).unwrap(), MajordomoMessage::Reply);
        let hb = frames(&[b"w", b"", b"MDPW01", b"\x04"]);
        assert_eq!(parse_majordomo(&hb).unwrap(), MajordomoMessage::Heartbeat);
        for bad in [
            frames(&[b"c", b"x", b"MDPC01", b"echo", b"hi"]),
            frames(&[b"c", b"", b"MDPC02", b"echo", b"hi"]),
            frames(&[b"c", b"", b"MDPC01", b"echo"]),
            frames(&[b"c", b"", b"MDPC01", b"two words", b"hi"]),
            frames(&[b"w", b"", b"MDPW01", b"\x09"]),
            frames(&[b"w", b"", b"MDPW01", b"\x03", b"c", b"x", b"hi"]),
        ] {
            assert!(parse_majordomo(&bad).is_err(), "{bad:?}");
        }
        let mmi = frames(&[b"c", b"", b"MDPC01", b"mmi.service", b"echo"]);
        assert_eq!(
            parse_majordomo(&mmi).unwrap(),
            MajordomoMessage::Request {
                service: "mmi.service"
            }
        );
    }

    #[test]
    fn error_bodies_round_trip() {
        let body = error_body(ErrorCode::Timeout, "echo", "no worker within 5s");
        assert_eq!(
            parse_error(&body),
            Some((504, "echo: no worker within 5s".to_string()))
        );
        assert_eq!(parse_error(b"hello"), None);
    }

    #[test]
    fn the_majordomo_tag_is_never_a_router_identity() {
        let tagged = tag_majordomo_client(b"");
        assert_eq!(tagged[0], 0);
        assert_ne!(tagged.len(), 5);
    }
}
