//! The hub's wire format, shared by the hub and the client library: [`frame`] (the seed's
//! length / pid / checksum header, with CRC-32 computed by [`crc`]) and [`envelope`] (kind, destination,
//! correlation id and body inside the payload), and [`batch`] (the body of a frame carrying
//! several messages). `docs/protocols/ipc.md` specifies them.

pub mod batch;
pub mod crc;
pub mod envelope;
pub mod frame;

pub use envelope::{Envelope, ErrorCode, Kind, MIN_FRAME};
pub use frame::{Decoded, Frame, FrameDecoder};
