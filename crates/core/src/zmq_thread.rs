//! The bridge between actors and ZeroMQ sockets.
//!
//! ZeroMQ sockets are not `Sync` and their blocking calls must never run on an arbiter, so each
//! set of sockets lives on a dedicated OS thread running a `zmq::poll` loop. Actors send that
//! thread commands through a [`CommandSender`]: the command goes into a queue and a one-byte
//! doorbell goes over an `inproc://` PAIR socket that the loop polls next to its own sockets.
//! The loop drains the queue through its [`CommandInbox`]. Events travel the other way with
//! `Addr::do_send` / `Recipient::do_send`, which never block.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};

static NEXT_DOORBELL: AtomicU64 = AtomicU64::new(0);

/// The sending half: cheap to clone, usable from any thread.
pub struct CommandSender<C> {
    queue: mpsc::Sender<C>,
    doorbell: Arc<Mutex<zmq::Socket>>,
}

impl<C> Clone for CommandSender<C> {
    fn clone(&self) -> Self {
        CommandSender {
            queue: self.queue.clone(),
            doorbell: self.doorbell.clone(),
        }
    }
}

/// The poll loop has ended; the command was not delivered.
#[derive(Debug, thiserror::Error)]
#[error("the socket thread has stopped")]
pub struct ThreadStopped;

impl<C> CommandSender<C> {
    /// Queues `command` and wakes the loop. Never blocks.
    pub fn send(&self, command: C) -> Result<(), ThreadStopped> {
        self.queue.send(command).map_err(|_| ThreadStopped)?;
        let doorbell = self.doorbell.lock().unwrap_or_else(|e| e.into_inner());
        // A full doorbell already has a wake-up pending; the queue holds the command.
        match doorbell.send(&[][..], zmq::DONTWAIT) {
            Ok(()) | Err(zmq::Error::EAGAIN) => Ok(()),
            Err(_) => Err(ThreadStopped),
        }
    }
}

/// The receiving half, owned by the poll loop.
pub struct CommandInbox<C> {
    queue: mpsc::Receiver<C>,
    doorbell: zmq::Socket,
}

impl<C> CommandInbox<C> {
    /// The socket to add to the loop's poll items (readable when commands wait).
    pub fn socket(&self) -> &zmq::Socket {
        &self.doorbell
    }

    /// A poll item for the doorbell.
    pub fn poll_item(&self) -> zmq::PollItem<'_> {
        self.doorbell.as_poll_item(zmq::POLLIN)
    }

    /// Every waiting command, in the order sent. Also clears the doorbell.
    pub fn drain(&self) -> Vec<C> {
        while self.doorbell.recv_bytes(zmq::DONTWAIT).is_ok() {}
        self.queue.try_iter().collect()
    }
}

/// A connected sender/inbox pair on `context`.
pub fn channel<C>(context: &zmq::Context) -> zmq::Result<(CommandSender<C>, CommandInbox<C>)> {
    let endpoint = format!(
        "inproc://troupe-doorbell-{}",
        NEXT_DOORBELL.fetch_add(1, Ordering::Relaxed)
    );
    let inbox_socket = context.socket(zmq::PAIR)?;
    inbox_socket.bind(&endpoint)?;
    let sender_socket = context.socket(zmq::PAIR)?;
    sender_socket.set_linger(0)?;
    sender_socket.connect(&endpoint)?;
    let (tx, rx) = mpsc::channel();
    Ok((
        CommandSender {
            queue: tx,
            doorbell: Arc::new(Mutex::new(sender_socket)),
        },
        CommandInbox {
            queue: rx,
            doorbell: inbox_socket,
        },
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn commands_arrive_in_order_and_wake_the_poll() {
        let context = zmq::Context::new();
        let (tx, inbox) = channel::<u32>(&context).unwrap();
        let sender = std::thread::spawn(move || {
            for i in 0..1000 {
                tx.send(i).unwrap();
            }
        });
        let mut got = Vec::new();
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        while got.len() < 1000 && std::time::Instant::now() < deadline {
            let mut items = [inbox.poll_item()];
            zmq::poll(&mut items, 100).unwrap();
            got.extend(inbox.drain());
        }
        sender.join().unwrap();
        assert_eq!(got, (0..1000).collect::<Vec<_>>());
    }
}
