//! Messages held for receivers that are not connected, by address, up to a TTL and caps.
//!
//! Every held message gets a sequence number; a receiver that connects under both a pid and
//! a name gets both mailboxes merged in arrival order. All messages share one TTL, so they
//! expire in arrival order and one queue of deadlines serves every mailbox.

use std::collections::{HashMap, VecDeque};
use std::time::{Duration, Instant};

use bytes::Bytes;

use super::{Address, ConnId};
use crate::wire::{envelope, Kind};

/// A message held for an absent receiver.
#[derive(Debug, Clone)]
pub(crate) struct Held {
    seq: u64,
    /// The whole frame as the sender wrote it.
    pub(crate) frame: Bytes,
    /// The connection that sent it (told if it expires).
    pub(crate) sender: ConnId,
    /// `Send`, `Batch` or `Request`.
    pub(crate) kind: Kind,
    /// The sender's correlation id (of its first message, for a `Batch`).
    pub(crate) corr: u64,
    /// Messages in the frame: more than one for a `Batch`.
    pub(crate) messages: u32,
    /// The sender's pid.
    pub(crate) sender_pid: u32,
}

/// The caps.
#[derive(Debug, Clone, Copy)]
pub(crate) struct MailboxLimits {
    pub(crate) ttl: Duration,
    pub(crate) max_messages: usize,
    pub(crate) max_bytes: usize,
    pub(crate) total_bytes: usize,
}

/// Why a message could not be held.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Overflow(pub(crate) String);

#[derive(Debug, Default)]
struct Queue {
    items: VecDeque<Held>,
    messages: usize,
    bytes: usize,
}

#[derive(Debug)]
pub(crate) struct Mailboxes {
    limits: MailboxLimits,
    boxes: HashMap<Address, Queue>,
    deadlines: VecDeque<(Instant, Address, u64)>,
    total_bytes: usize,
    next_seq: u64,
}

impl Mailboxes {
    pub(crate) fn new(limits: MailboxLimits) -> Self {
        Mailboxes {
            limits,
            boxes: HashMap::new(),
            deadlines: VecDeque::new(),
            total_bytes: 0,
            next_seq: 0,
        }
    }

    /// Holds a message for `address`, or says which cap it would break.
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn hold(
        &mut self,
        address: &Address,
        frame: Bytes,
        sender: ConnId,
        sender_pid: u32,
        kind: Kind,
        corr: u64,
        now: Instant,
    ) -> Result<(), Overflow> {
        let size = frame.len();
        let messages = envelope::messages_in(&frame);
        let queue = self.boxes.get(address);
        let (count, bytes) = queue.map_or((0, 0), |q| (q.messages, q.bytes));
        if count + messages as usize > self.limits.max_messages {
            let these = match messages {
                1 => String::new(),
                n => format!("; a batch of {n} does not fit"),
            };
            return Err(Overflow(format!(
                "the mailbox for {address} already holds {count} messages (mailbox_max_messages){these}"
            )));
        }
        if bytes + size > self.limits.max_bytes {
            return Err(Overflow(format!(
                "the mailbox for {address} holds {bytes} bytes; {size} more would pass mailbox_max_bytes ({})",
                self.limits.max_bytes
            )));
        }
        if self.total_bytes + size > self.limits.total_bytes {
            return Err(Overflow(format!(
                "all mailboxes hold {} bytes; {size} more would pass mailbox_total_bytes ({})",
                self.total_bytes, self.limits.total_bytes
            )));
        }
        let seq = self.next_seq;
        self.next_seq += 1;
        let queue = self.boxes.entry(address.clone()).or_default();
        queue.bytes += size;
        queue.messages += messages as usize;
        queue.items.push_back(Held {
            seq,
            frame,
            sender,
            kind,
            corr,
            messages,
            sender_pid,
        });
        self.total_bytes += size;
        self.deadlines
            .push_back((now + self.limits.ttl, address.clone(), seq));
        Ok(())
    }

    /// Everything held for any of `addresses`, in arrival order; removed.
    pub(crate) fn take(&mut self, addresses: &[Address]) -> Vec<Held> {
        let mut taken = Vec::new();
        for address in addresses {
            if let Some(queue) = self.boxes.remove(address) {
                self.total_bytes -= queue.bytes;
                taken.extend(queue.items);
            }
        }
        taken.sort_by_key(|held| held.seq);
        taken
    }

    /// Messages whose TTL has passed at `now`, with their address; removed.
    pub(crate) fn expire(&mut self, now: Instant) -> Vec<(Address, Held)> {
        let mut expired = Vec::new();
        while let Some((deadline, _, _)) = self.deadlines.front() {
            if *deadline > now {
                break;
            }
            let (_, address, seq) = self.deadlines.pop_front().expect("front exists");
            // Held messages of one address are in seq order and expire in seq order, so a
            // message still held is at the front of its queue; one delivered since is gone.
            let Some(queue) = self.boxes.get_mut(&address) else {
                continue;
            };
            if queue.items.front().map(|h| h.seq) != Some(seq) {
                continue;
            }
            let held = queue.items.pop_front().expect("front exists");
            queue.bytes -= held.frame.len();
            queue.messages -= held.messages as usize;
            self.total_bytes -= held.frame.len();
            if queue.items.is_empty() {
                self.boxes.remove(&address);
            }
            expired.push((address, held));
        }
        if self.boxes.is_empty() {
            self.deadlines.clear();
        }
        expired
    }

    /// When the next message expires.
    pub(crate) fn next_expiry(&self) -> Option<Instant> {
        self.deadlines.front().map(|(deadline, _, _)| *deadline)
    }

    /// Everything held, with its address; the mailboxes are empty afterwards.
    pub(crate) fn drain(&mut self) -> Vec<(Address, Held)> {
        let mut all: Vec<(Address, Held)> = self
            .boxes
            .drain()
            .flat_map(|(address, queue)| queue.items.into_iter().map(move |h| (address.clone(), h)))
            .collect();
        all.sort_by_key(|(_, held)| held.seq);
        self.deadlines.clear();
        self.total_bytes = 0;
        all
    }

    /// Messages held, in all mailboxes (a batch counts its messages).
    pub(crate) fn len(&self) -> usize {
        self.boxes.values().map(|q| q.messages).sum()
    }

    /// Bytes held, in all mailboxes.
    pub(crate) fn total_bytes(&self) -> usize {
        self.total_bytes
    }

    /// Each mailbox: its receiver, messages and bytes.
    pub(crate) fn each(&self) -> impl Iterator<Item = (&Address, usize, usize)> {
        self.boxes.iter().map(|(a, q)| (a, q.messages, q.bytes))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits() -> MailboxLimits {
        MailboxLimits {
            ttl: Duration::from_secs(10),
            max_messages: 3,
            max_bytes: 100,
            total_bytes: 150,
        }
    }

    fn hold(
        m: &mut Mailboxes,
        to: &Address,
        size: usize,
        corr: u64,
        now: Instant,
    ) -> Result<(), Overflow> {
        m.hold(to, Bytes::from(vec![0; size]), 1, 1, Kind::Send, corr, now)
    }

    #[test]
    fn caps_on_count_bytes_and_total() {
        let t0 = Instant::now();
        let mut m = Mailboxes::new(limits());
        let a = Address::Name("a".into());
        let b = Address::Pid(7);
        for corr in 0..3 {
            hold(&mut m, &a, 10, corr, t0).unwrap();
        }
        let err = hold(&mut m, &a, 10, 3, t0).unwrap_err();
        assert!(err.0.contains("mailbox_max_messages"), "{err:?}");
        let err = hold(&mut m, &b, 101, 4, t0).unwrap_err();
        assert!(err.0.contains("mailbox_max_bytes"), "{err:?}");
        hold(&mut m, &b, 90, 5, t0).unwrap();
        let err = hold(&mut m, &Address::Pid(8), 40, 6, t0).unwrap_err();
        assert!(err.0.contains("mailbox_total_bytes"), "{err:?}");
    }

    #[test]
    fn expiry_in_arrival_order_skips_what_was_taken() {
        let t0 = Instant::now();
        let mut m = Mailboxes::new(limits());
        let a = Address::Name("a".into());
        let b = Address::Pid(7);
        hold(&mut m, &a, 1, 1, t0).unwrap();
        hold(&mut m, &b, 1, 2, t0 + Duration::from_secs(1)).unwrap();
        hold(&mut m, &a, 1, 3, t0 + Duration::from_secs(2)).unwrap();
        assert_eq!(m.next_expiry(), Some(t0 + Duration::from_secs(10)));
        assert!(m.expire(t0 + Duration::from_secs(9)).is_empty());
        let taken = m.take(std::slice::from_ref(&b));
        assert_eq!(taken.len(), 1);
        let expired = m.expire(t0 + Duration::from_secs(12));
        let corrs: Vec<u64> = expired.iter().map(|(_, h)| h.corr).collect();
        assert_eq!(corrs, vec![1, 3]);
        assert_eq!(m.len(), 0);
        assert_eq!(m.total_bytes(), 0);
        assert_eq!(m.next_expiry(), None);
    }

    #[test]
    fn take_merges_addresses_in_arrival_order() {
        let t0 = Instant::now();
        let mut m = Mailboxes::new(limits());
        let name = Address::Name("svc".into());
        let pid = Address::Pid(9);
        hold(&mut m, &pid, 1, 1, t0).unwrap();
        hold(&mut m, &name, 1, 2, t0).unwrap();
        hold(&mut m, &pid, 1, 3, t0).unwrap();
        let corrs: Vec<u64> = m.take(&[name, pid]).iter().map(|h| h.corr).collect();
        assert_eq!(corrs, vec![1, 2, 3]);
        assert!(m.expire(t0 + Duration::from_secs(60)).is_empty());
    }
}
