//! One connection's two tasks, both on the hub's arbiter: the reader decodes frames and hands
//! them to the hub actor a read at a time (and waits when the actor says so); the writer
//! writes the batches the actor hands it and reports how many frames went out.

use std::io;

use actix::Addr;
use bytes::{Bytes, BytesMut};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::unix::{OwnedReadHalf, OwnedWriteHalf};
use tokio::sync::mpsc;

use super::actor::{Hangup, HubActor, Inbound, Written};
use crate::hub::ConnId;
use crate::wire::frame::{Damage, Found};
use crate::wire::{FrameDecoder, MIN_FRAME};

/// Bytes asked of the socket per read (more when a longer frame is being assembled).
const READ_CHUNK: usize = 64 * 1024;

/// Reads until the peer hangs up, the socket fails, the hub stops it, or the peer sends a
/// frame over the limit or more damage than the decoder's limit.
pub(crate) async fn read_loop(
    conn: ConnId,
    mut socket: OwnedReadHalf,
    mut decoder: FrameDecoder,
    hub: Addr<HubActor>,
) {
    let mut buf = BytesMut::with_capacity(READ_CHUNK);
    let mut reported = Damage::default();
    let mut partial = 0;
    loop {
        let wanted = decoder.wanted(&buf).saturating_sub(buf.len());
        buf.reserve(wanted.max(READ_CHUNK));
        match socket.read_buf(&mut buf).await {
            Ok(0) | Err(_) => break,
            Ok(_) => {}
        }
        // The frames are handed to the hub in place, as one shared piece of the read
        // buffer; the hub is done with it by the time this task reads again, so the buffer
        // is reused rather than reallocated.
        let mut found = Vec::new();
        let at = decoder.scan_read(&buf, &mut found);
        let last = matches!(
            found.last(),
            Some((_, Found::Oversize { .. } | Found::Damaged))
        );
        // An oversized frame's envelope (its correlation id) goes to the hub too.
        let keep = if matches!(found.last(), Some((_, Found::Oversize { .. }))) {
            (at + MIN_FRAME).min(buf.len())
        } else {
            at
        };
        let frames = buf.split_to(keep).freeze();
        let total = decoder.damage();
        let damage = total.since(&reported);
        reported = total;
        // The hub bounds the bytes all readers hold for partial frames: it hears of this
        // one's whenever it changes. What counts is the room the frame will take (its
        // announced length), which the next read reserves, not only what has come yet.
        let held = if buf.is_empty() {
            0
        } else {
            decoder.wanted(&buf).max(buf.len())
        };
        if found.is_empty() && damage == Damage::default() && held == partial {
            continue;
        }
        partial = held;
        let batch = Inbound {
            conn,
            frames,
            found,
            damage,
            partial,
        };
        match hub.send(batch).await {
            Ok(true) if !last => {}
            // The hub closes the connection; it stops this task itself.
            _ => return,
        }
    }
    hub.do_send(Hangup { conn });
}

/// Writes each batch in full, reporting it; ends when the hub drops the sending half or a
/// write fails.
pub(crate) async fn write_loop(
    conn: ConnId,
    mut socket: OwnedWriteHalf,
    mut batches: mpsc::UnboundedReceiver<Bytes>,
    hub: Addr<HubActor>,
) {
    while let Some(batch) = batches.recv().await {
        let (bytes, failed) = match write_all(&mut socket, &batch).await {
            Ok(()) => (batch.len(), false),
            Err(written) => (written, true),
        };
        // Let go of the batch before reporting, so that the hub can reuse its buffer.
        drop(batch);
        hub.do_send(Written {
            conn,
            bytes,
            failed,
        });
        if failed {
            return;
        }
    }
    let _ = socket.shutdown().await;
}

/// Writes `data`; on failure, how many bytes went out.
async fn write_all(socket: &mut OwnedWriteHalf, data: &[u8]) -> Result<(), usize> {
    let mut written = 0;
    while written < data.len() {
        match socket.write(&data[written..]).await {
            Ok(0) => return Err(written),
            Ok(n) => written += n,
            Err(err) if err.kind() == io::ErrorKind::Interrupted => {}
            Err(_) => return Err(written),
        }
    }
    Ok(())
}
