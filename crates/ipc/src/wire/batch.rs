//! The body of a `Batch` frame: several messages to one destination in one frame, each
//! `u32 length | bytes` (little-endian), exactly `arg` of them and nothing after. The i-th
//! message (from 0) has correlation id `corr + i`.
//!
//! A sender that queues many small messages to one receiver puts them in one batch, so the
//! frame header, envelope, checksum and routing are paid once per batch instead of once per
//! message; the receiver's client hands them out one at a time, as if sent one per frame.

/// Most messages in one batch. It bounds the error reports one failed batch produces (one
/// per message).
pub const MAX_BATCH_MESSAGES: u32 = 1024;

/// Bytes in front of each message in a batch body.
pub const ENTRY_HEADER: usize = 4;

/// Checks that `body` holds exactly `count` messages (1 to [`MAX_BATCH_MESSAGES`]).
#[inline]
pub fn check(body: &[u8], count: u32) -> Result<(), String> {
    if count == 0 || count > MAX_BATCH_MESSAGES {
        return Err(format!(
            "a batch holds 1 to {MAX_BATCH_MESSAGES} messages; this one says {count}"
        ));
    }
    let mut at = 0usize;
    for index in 0..count {
        let Some(header) = body.get(at..at + ENTRY_HEADER) else {
            return Err(format!(
                "the batch body ends inside the length of message {index} of {count}"
            ));
        };
        let length = u32::from_le_bytes(header.try_into().expect("4 bytes")) as usize;
        at += ENTRY_HEADER;
        if body.len() - at < length {
            return Err(format!(
                "message {index} of the batch announces {length} bytes; the body has {} left",
                body.len() - at
            ));
        }
        at += length;
    }
    if at != body.len() {
        return Err(format!(
            "{} bytes follow the last of the batch's {count} messages",
            body.len() - at
        ));
    }
    Ok(())
}

/// The messages of a batch body, in order. It stops at the first entry that does not fit
/// (a body that passed [`check`] has none).
#[derive(Debug, Clone)]
pub struct Entries<'a> {
    rest: &'a [u8],
}

impl<'a> Entries<'a> {
    /// The messages of `body`.
    pub fn new(body: &'a [u8]) -> Entries<'a> {
        Entries { rest: body }
    }
}

impl<'a> Iterator for Entries<'a> {
    type Item = &'a [u8];

    #[inline]
    fn next(&mut self) -> Option<&'a [u8]> {
        let header = self.rest.get(..ENTRY_HEADER)?;
        let length = u32::from_le_bytes(header.try_into().expect("4 bytes")) as usize;
        let message = self.rest.get(ENTRY_HEADER..ENTRY_HEADER + length)?;
        self.rest = &self.rest[ENTRY_HEADER + length..];
        Some(message)
    }
}

/// Appends one message's entry to a batch body.
#[inline]
pub fn append(body: &mut bytes::BytesMut, message: &[u8]) {
    body.reserve(ENTRY_HEADER + message.len());
    body.extend_from_slice(&(message.len() as u32).to_le_bytes());
    body.extend_from_slice(message);
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::BytesMut;

    fn body(messages: &[&[u8]]) -> Vec<u8> {
        let mut out = BytesMut::new();
        for message in messages {
            append(&mut out, message);
        }
        out.to_vec()
    }

    #[test]
    fn entries_come_back_in_order() {
        let messages: [&[u8]; 4] = [b"one", b"", b"three", &[0u8; 300]];
        let body = body(&messages);
        check(&body, 4).unwrap();
        assert_eq!(Entries::new(&body).collect::<Vec<_>>(), messages);
    }

    #[test]
    fn every_bad_layout_is_named() {
        let good = body(&[b"ab", b"cd"]);
        let cases: [(&[u8], u32, &str); 6] = [
            (&good, 0, "1 to 1024"),
            (&good, MAX_BATCH_MESSAGES + 1, "this one says 1025"),
            (&good, 3, "ends inside the length of message 2 of 3"),
            (
                &good,
                1,
                "6 bytes follow the last of the batch's 1 messages",
            ),
            (
                &good[..good.len() - 1],
                2,
                "message 1 of the batch announces 2 bytes; the body has 1 left",
            ),
            (&good[..2], 1, "ends inside the length of message 0"),
        ];
        for (body, count, expected) in cases {
            let err = check(body, count).unwrap_err();
            assert!(err.contains(expected), "{count}: {err}");
        }
    }

    #[test]
    fn a_huge_length_is_refused_not_overflowed() {
        let mut body = u32::MAX.to_le_bytes().to_vec();
        body.extend_from_slice(b"xy");
        assert!(check(&body, 1)
            .unwrap_err()
            .contains("announces 4294967295"));
        assert_eq!(Entries::new(&body).count(), 0);
    }
}
