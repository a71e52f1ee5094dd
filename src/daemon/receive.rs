//! The receive side: one loop per channel checks each datagram's LAN key tag and freshness,
//! parses it and queues it for the engine task (bounded; beyond, dropped and counted); a 2.0
//! holder answers a requester's TCP pull; every message goes out signed.

use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::mpsc;

use super::{disk, Node};
use crate::net::{ChannelSocket, MAX_DATAGRAM};
use crate::protocol::auth;
use crate::protocol::{ChunkId, Message, MessageKind, Version};

/// Datagrams waiting for the engine; beyond this one is dropped and counted (the protocol's
/// resends make up for it), so a flood cannot take memory without bound.
const DATAGRAM_QUEUE: usize = 4096;

/// Receives one channel's datagrams: checks the LAN key tag, parses, and hands well-formed
/// messages to the engine; what fails is dropped and counted.
pub(crate) async fn receive_loop(
    node: Arc<Node>,
    ch: Arc<ChannelSocket>,
    to_engine: mpsc::Sender<(Message, SocketAddr)>,
    mut shutdown: crate::shutdown::Shutdown,
) {
    let mut buf = vec![0u8; MAX_DATAGRAM];
    loop {
        let received = tokio::select! {
            _ = shutdown.recv() => return,
            r = ch.socket.recv_from(&mut buf) => r,
        };
        let (n, from) = match received {
            Ok(r) => {
                node.counters.traffic(ch.channel, false, r.0);
                r
            }
            Err(e) => {
                tracing::warn!("receiving on {:?}: {e}", ch.channel);
                // Not a protocol delay: keeps a persistent socket error from spinning.
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let now = crate::clock::unix_s();
        let (datagram, stamp) = match stamped(&node, &buf[..n], now) {
            Ok(d) => d,
            Err(e) => {
                tracing::debug!(%from, "dropped a datagram ({n} bytes) on {:?}: {e}", ch.channel);
                continue;
            }
        };
        let msg = match Message::parse(&datagram) {
            Ok(msg) if msg.channel() == ch.channel => msg,
            Ok(msg) => {
                node.counters.malformed.fetch_add(1, Ordering::Relaxed);
                tracing::debug!(%from, "dropped a {} that came on {:?}", msg.type_name(), ch.channel);
                continue;
            }
            Err(e) => {
                node.counters.malformed.fetch_add(1, Ordering::Relaxed);
                tracing::debug!(%from, "dropped a malformed datagram ({n} bytes) on {:?}: {e}", ch.channel);
                continue;
            }
        };
        if let Err(e) = fresh(&node, &msg, stamp, now) {
            tracing::debug!(%from, "dropped a {} on {:?}: {e}", msg.type_name(), ch.channel);
            continue;
        }
        match &node.net.faults {
            None => enqueue(&node, &to_engine, (msg, from)),
            // Fault injection (tests): the message is lost, delivered late, or twice.
            Some(faults) => {
                for delay in faults.fate().delays {
                    let (node, to_engine, msg) = (node.clone(), to_engine.clone(), msg.clone());
                    tokio::spawn(async move {
                        tokio::time::sleep(delay).await;
                        enqueue(&node, &to_engine, (msg, from));
                    });
                }
            }
        }
    }
}

/// A datagram or TCP frame as it may be read: with a LAN key, only what carries its valid tag
/// (SPEC §3), without the tag's line; what fails is counted.
fn authenticated<'a>(
    node: &Node,
    bytes: &'a [u8],
) -> Result<std::borrow::Cow<'a, [u8]>, auth::AuthError> {
    stamped(node, bytes, crate::clock::unix_s()).map(|(bytes, _)| bytes)
}

/// `authenticated`, with the time and tag of the AUTH line (None: we have no LAN key).
fn stamped<'a>(
    node: &Node,
    bytes: &'a [u8],
    now: u64,
) -> Result<(std::borrow::Cow<'a, [u8]>, Option<auth::Stamp>), auth::AuthError> {
    let Some(key) = node.lan_key() else {
        return Ok((std::borrow::Cow::Borrowed(bytes), None));
    };
    auth::verify_stamped(&key, bytes, now)
        .map(|(bytes, stamp)| (std::borrow::Cow::Owned(bytes), Some(stamp)))
        .inspect_err(|_| {
            node.counters
                .unauthenticated
                .fetch_add(1, Ordering::Relaxed);
        })
}

/// With a LAN key, a datagram already taken (replayed) is refused and counted as one without a
/// valid tag; a copy within a second of the first is refused uncounted (the sender's own
/// repeats look like that). Ours echo back from multicast and are left to the engine, which
/// ignores them.
fn fresh(
    node: &Node,
    msg: &Message,
    stamp: Option<auth::Stamp>,
    now: u64,
) -> Result<(), auth::AuthError> {
    let Some(stamp) = stamp else {
        return Ok(());
    };
    if msg.sender == node.id {
        return Ok(());
    }
    let taken = node.replay_guard().check(msg.sender, stamp, now);
    if taken
        .as_ref()
        .is_err_and(|e| *e != auth::AuthError::Repeated)
    {
        node.counters
            .unauthenticated
            .fetch_add(1, Ordering::Relaxed);
    }
    taken
}

fn enqueue(
    node: &Node,
    to_engine: &mpsc::Sender<(Message, SocketAddr)>,
    msg: (Message, SocketAddr),
) {
    if to_engine.try_send(msg).is_err() {
        node.counters.dropped_queue.fetch_add(1, Ordering::Relaxed);
    }
}

pub(crate) type Datagrams = (
    mpsc::Sender<(Message, SocketAddr)>,
    mpsc::Receiver<(Message, SocketAddr)>,
);

pub(crate) fn datagram_queue() -> Datagrams {
    mpsc::channel(DATAGRAM_QUEUE)
}

/// 2.0: asks the holder at `from` for a chunk over TCP (a GETCHUNK, signed with the LAN key
/// when there is one) and gives back its answer: a CHUNK of that chunk, signed likewise. Its
/// bytes are checked by the fetch, as a multicast CHUNK's are.
pub(crate) async fn pull(
    node: &Arc<Node>,
    from: SocketAddr,
    chunk: &ChunkId,
) -> Result<Message, String> {
    let mut ask = Message::new(
        node.id,
        MessageKind::GetChunk {
            chunk: chunk.clone(),
        },
    );
    ask.version = Version::V2_0;
    let frame = (node.pulls)
        .pull(from, &node.sign(ask.encode()))
        .await
        .map_err(|e| e.to_string())?;
    let bytes = authenticated(node, &frame).map_err(|e| e.to_string())?;
    let msg = Message::parse(&bytes).map_err(|e| {
        node.counters.malformed.fetch_add(1, Ordering::Relaxed);
        format!("a malformed answer: {e}")
    })?;
    match &msg.kind {
        MessageKind::Chunk { chunk: got, .. } if got == chunk => Ok(msg),
        _ => {
            node.counters.malformed.fetch_add(1, Ordering::Relaxed);
            Err(format!(
                "answered with a {} of another chunk",
                msg.type_name()
            ))
        }
    }
}

/// 2.0: the holder's side of a pull: a request (one GETCHUNK, signed with the LAN key when there
/// is one) is answered with the chunk if this peer hosts it, read and checked against its
/// recorded hash; anything else closes the connection. The TCP handshake proved the address,
/// so the bytes go to whoever asked, as a multicast CHUNK goes to the whole LAN.
pub(crate) async fn answer_pull(
    node: Arc<Node>,
    request: Vec<u8>,
    from: SocketAddr,
) -> Option<Vec<u8>> {
    let bytes = match authenticated(&node, &request) {
        Ok(b) => b,
        Err(e) => {
            tracing::debug!(%from, "dropped a TCP request: {e}");
            return None;
        }
    };
    let chunk = match Message::parse(&bytes) {
        Ok(Message {
            kind: MessageKind::GetChunk { chunk },
            sender,
            ..
        }) if sender != node.id => chunk,
        Ok(msg) => {
            node.counters.malformed.fetch_add(1, Ordering::Relaxed);
            tracing::debug!(%from, "dropped a {} that came over TCP", msg.type_name());
            return None;
        }
        Err(e) => {
            node.counters.malformed.fetch_add(1, Ordering::Relaxed);
            tracing::debug!(%from, "dropped a malformed TCP request: {e}");
            return None;
        }
    };
    let (_, body) = disk::read_hosted(&node, &chunk).await?;
    // The fileId text exactly as the requester wrote it: the one its fetch waits for.
    let mut msg = Message::new(node.id, MessageKind::Chunk { chunk, body });
    msg.version = Version::V2_0;
    let frame = node.sign(msg.encode());
    Some(frame)
}

impl Node {
    /// The replay guard; held only for one check or one take of its marks, never across an
    /// await.
    pub(super) fn replay_guard(&self) -> std::sync::MutexGuard<'_, auth::ReplayGuard> {
        // A panic while it was held left it consistent enough: at worst a tag not remembered.
        self.replay.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// An encoded message as it goes out: with the LAN key's tag when there is a key.
    pub(crate) fn sign(&self, bytes: Vec<u8>) -> Vec<u8> {
        match self.lan_key() {
            Some(key) => auth::sign(&key, &bytes, crate::clock::unix_s()),
            None => bytes,
        }
    }

    /// Encodes, signs (LAN key) and sends a message on its channel. A send error is logged, not
    /// fatal: the protocol's retransmissions cover a lost datagram.
    pub(crate) async fn send(&self, msg: Message) {
        let (channel, what) = (msg.channel(), msg.type_name());
        let bytes = self.sign(msg.encode());
        match self.net.send(channel, &bytes).await {
            Ok(()) => self.counters.traffic(channel, true, bytes.len()),
            Err(e) => tracing::warn!("sending {what} on {channel:?} failed: {e}"),
        }
    }
}
