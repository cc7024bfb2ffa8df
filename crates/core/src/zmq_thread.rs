//! The bridge between actors and ZeroMQ sockets.
//!
//! ZeroMQ sockets are not `Sync` and their blocking calls must never run on an arbiter, so each
//! set of sockets is created, bound and used on a dedicated OS thread running a `zmq::poll`
//! loop. Actors send that thread commands through a [`CommandSender`]: the command goes into a
//! bounded queue and one byte goes into a non-blocking socket pair (the doorbell) whose other
//! end the loop polls next to its ZeroMQ sockets. The loop drains the queue through its
//! [`CommandInbox`]. Events travel the other way with `Addr::do_send` / `Recipient::do_send`,
//! which never block.
//!
//! Creating a channel touches no ZeroMQ context, and sending never blocks: a full queue is an
//! error the sender handles ([`SendError::Full`]), never a wait.

use std::io::{ErrorKind, Read, Write};
use std::os::fd::AsRawFd;
use std::os::unix::net::UnixStream;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc;
use std::sync::Arc;

/// Commands waiting at most, unless a channel is made with another capacity.
pub const DEFAULT_CAPACITY: usize = 1024;

/// The sending half: cheap to clone, usable from any thread.
pub struct CommandSender<C> {
    queue: mpsc::SyncSender<C>,
    doorbell: Arc<UnixStream>,
    /// Whether a ring is pending: senders write the doorbell only once per drain.
    rung: Arc<AtomicBool>,
    capacity: usize,
}

impl<C> Clone for CommandSender<C> {
    fn clone(&self) -> Self {
        CommandSender {
            queue: self.queue.clone(),
            doorbell: self.doorbell.clone(),
            rung: self.rung.clone(),
            capacity: self.capacity,
        }
    }
}

/// Why a command was not delivered; it comes back with the error.
#[derive(thiserror::Error)]
pub enum SendError<C> {
    /// The poll loop has ended.
    #[error("the socket thread has stopped")]
    Stopped(C),
    /// The loop has `capacity` commands waiting already: it is not keeping up.
    #[error("the socket thread has {0} commands waiting already")]
    Full(usize, C),
}

impl<C> std::fmt::Debug for SendError<C> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            SendError::Stopped(_) => f.write_str("Stopped"),
            SendError::Full(capacity, _) => write!(f, "Full({capacity})"),
        }
    }
}

impl<C> SendError<C> {
    /// The command that was not delivered.
    pub fn into_command(self) -> C {
        match self {
            SendError::Stopped(command) | SendError::Full(_, command) => command,
        }
    }
}

impl<C> CommandSender<C> {
    /// Queues `command` and wakes the loop. Never blocks.
    pub fn send(&self, command: C) -> Result<(), SendError<C>> {
        self.queue.try_send(command).map_err(|err| match err {
            mpsc::TrySendError::Full(command) => SendError::Full(self.capacity, command),
            mpsc::TrySendError::Disconnected(command) => SendError::Stopped(command),
        })?;
        // The command is queued before the flag is read, and the inbox clears the flag before it
        // takes commands, so a command is either taken by a drain under way or rings again.
        // A full doorbell already has a wake-up pending; a closed one means the loop has ended,
        // which the next send reports.
        if !self.rung.swap(true, Ordering::SeqCst) {
            let _ = (&*self.doorbell).write(&[1]);
        }
        Ok(())
    }
}

/// The receiving half, owned by the poll loop.
pub struct CommandInbox<C> {
    queue: mpsc::Receiver<C>,
    doorbell: UnixStream,
    rung: Arc<AtomicBool>,
}

impl<C> CommandInbox<C> {
    /// A poll item for the doorbell: readable when commands wait.
    pub fn poll_item(&self) -> zmq::PollItem<'static> {
        zmq::PollItem::from_fd(self.doorbell.as_raw_fd(), zmq::POLLIN)
    }

    /// Every waiting command, in the order sent; clears the doorbell. Call it when a poll
    /// reported the doorbell readable.
    pub fn drain(&self) -> Vec<C> {
        let mut rings = [0u8; 256];
        loop {
            match (&self.doorbell).read(&mut rings) {
                Ok(n) if n == rings.len() => continue,
                Err(err) if err.kind() == ErrorKind::Interrupted => continue,
                _ => break,
            }
        }
        // Only after the rings are read: a sender that finds the flag cleared rings again, and
        // that ring is still to come, so a command queued after this point always wakes the
        // loop. (Clearing it before the read could swallow a new ring and leave the flag set
        // with no ring pending, so that later commands would never wake the loop.)
        self.rung.store(false, Ordering::SeqCst);
        self.queue.try_iter().collect()
    }

    /// [`CommandInbox::drain`] for a loop that did not poll: costs no system call when nothing
    /// was sent since the last drain. A ring it leaves behind makes the next poll return, and
    /// that poll's `drain` clears it.
    pub fn drain_if_rung(&self) -> Vec<C> {
        if self.rung.load(Ordering::SeqCst) {
            self.drain()
        } else {
            Vec::new()
        }
    }
}

/// A connected sender/inbox pair holding at most [`DEFAULT_CAPACITY`] commands.
pub fn channel<C>() -> std::io::Result<(CommandSender<C>, CommandInbox<C>)> {
    channel_with_capacity(DEFAULT_CAPACITY)
}

/// A connected sender/inbox pair holding at most `capacity` commands.
pub fn channel_with_capacity<C>(
    capacity: usize,
) -> std::io::Result<(CommandSender<C>, CommandInbox<C>)> {
    let (ring, doorbell) = UnixStream::pair()?;
    ring.set_nonblocking(true)?;
    doorbell.set_nonblocking(true)?;
    let (tx, rx) = mpsc::sync_channel(capacity);
    let rung = Arc::new(AtomicBool::new(false));
    Ok((
        CommandSender {
            queue: tx,
            doorbell: Arc::new(ring),
            rung: rung.clone(),
            capacity,
        },
        CommandInbox {
            queue: rx,
            doorbell,
            rung,
        },
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::{Duration, Instant};

    fn wait_for_ring<C>(inbox: &CommandInbox<C>, deadline: Instant) -> bool {
        while Instant::now() < deadline {
            let mut items = [inbox.poll_item()];
            if zmq::poll(&mut items, 100).unwrap() > 0 && items[0].is_readable() {
                return true;
            }
        }
        false
    }

    #[test]
    fn commands_arrive_in_order_and_wake_the_poll() {
        let (tx, inbox) = channel::<u32>().unwrap();
        let sender = std::thread::spawn(move || {
            let mut sent = 0;
            while sent < 10_000 {
                match tx.send(sent) {
                    Ok(()) => sent += 1,
                    Err(SendError::Full(..)) => std::thread::yield_now(),
                    Err(SendError::Stopped(_)) => panic!("inbox gone"),
                }
            }
        });
        let mut got = Vec::new();
        let deadline = Instant::now() + Duration::from_secs(10);
        while got.len() < 10_000 && wait_for_ring(&inbox, deadline) {
            got.extend(inbox.drain());
        }
        sender.join().unwrap();
        assert_eq!(got, (0..10_000).collect::<Vec<_>>());
    }

    /// A loop that drains only when its poll says so must never sleep while commands wait:
    /// senders on several threads race the drains, and every poll must wake in time.
    #[test]
    fn no_wake_up_is_lost_between_senders_and_drains() {
        const SENDERS: u32 = 4;
        const EACH: u32 = 20_000;
        let (tx, inbox) = channel::<u32>().unwrap();
        let senders: Vec<_> = (0..SENDERS)
            .map(|_| {
                let tx = tx.clone();
                std::thread::spawn(move || {
                    let mut sent = 0;
                    while sent < EACH {
                        match tx.send(sent) {
                            Ok(()) => sent += 1,
                            Err(SendError::Full(..)) => std::thread::yield_now(),
                            Err(SendError::Stopped(_)) => panic!("inbox gone"),
                        }
                    }
                })
            })
            .collect();
        let mut got = 0;
        while got < SENDERS * EACH {
            let mut items = [inbox.poll_item()];
            let woken = zmq::poll(&mut items, 5_000).unwrap();
            assert!(woken > 0, "commands waited with no ring: {got} taken");
            got += inbox.drain().len() as u32;
        }
        for sender in senders {
            sender.join().unwrap();
        }
    }

    #[test]
    fn a_full_queue_gives_the_command_back_without_blocking() {
        let (tx, inbox) = channel_with_capacity::<u32>(2).unwrap();
        tx.send(1).unwrap();
        tx.send(2).unwrap();
        match tx.send(3) {
            Err(SendError::Full(2, 3)) => {}
            other => panic!("expected Full(2, 3), got {other:?}"),
        }
        assert!(wait_for_ring(
            &inbox,
            Instant::now() + Duration::from_secs(5)
        ));
        assert_eq!(inbox.drain(), vec![1, 2]);
        tx.send(3).unwrap();
        assert_eq!(inbox.drain(), vec![3]);
    }

    #[test]
    fn a_drained_doorbell_is_quiet_until_the_next_command() {
        let (tx, inbox) = channel::<u32>().unwrap();
        for i in 0..1000 {
            tx.send(i).unwrap();
        }
        assert_eq!(inbox.drain().len(), 1000);
        let mut items = [inbox.poll_item()];
        assert_eq!(zmq::poll(&mut items, 0).unwrap(), 0);
    }

    #[test]
    fn a_loop_that_does_not_poll_takes_commands_without_reading_the_doorbell() {
        let (tx, inbox) = channel::<u32>().unwrap();
        assert!(inbox.drain_if_rung().is_empty());
        tx.send(1).unwrap();
        tx.send(2).unwrap();
        assert_eq!(inbox.drain_if_rung(), vec![1, 2]);
        assert!(inbox.drain_if_rung().is_empty());
        let mut items = [inbox.poll_item()];
        assert_eq!(zmq::poll(&mut items, 0).unwrap(), 0);
    }

    #[test]
    fn sending_to_an_ended_loop_says_so() {
        let (tx, inbox) = channel::<u32>().unwrap();
        drop(inbox);
        assert!(matches!(tx.send(7), Err(SendError::Stopped(7))));
    }
}
