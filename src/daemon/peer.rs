//! Answering other peers: store PUTCHUNKs and confirm with STORED, record holders, serve
//! GETCHUNKs, delete on DELETE, re-back up after REMOVED. Also the backup of one chunk, which
//! both a file backup and a re-backup use.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Instant;

use tokio::time::{sleep, sleep_until};

use super::{publish, random_reply_delay, remember, seen_since, Node};
use crate::engine::backup::{Action, ChunkBackup};
use crate::protocol::{sha256_hex, ChunkId, Message, MessageKind, PeerId, Rd};
use crate::store::{ChunkRole, HostedRow, StoreError};

/// Dispatches one message from another peer. Never blocks: work goes to tasks.
pub(super) fn handle(node: &Arc<Node>, msg: Message) {
    let sender = msg.sender;
    let now = Instant::now();
    match msg.kind {
        MessageKind::PutChunk { chunk, rd, body } => {
            remember(&mut node.transient().putchunk_seen, &chunk, now);
            if node.transient().storing.contains_key(&chunk) {
                return; // a resend of a chunk being written: its STORED is on its way
            }
            let Ok(permit) = node.store_permits.clone().try_acquire_owned() else {
                node.counters.dropped_busy.fetch_add(1, Ordering::Relaxed);
                tracing::debug!("busy: dropped PUTCHUNK {chunk}; its sender will resend");
                return;
            };
            let node = node.clone();
            tokio::spawn(async move {
                let reply_at = tokio::time::Instant::now() + random_reply_delay();
                match on_putchunk(&node, &chunk, rd, body).await {
                    Ok(true) => {
                        drop(permit);
                        sleep_until(reply_at).await;
                        node.send(MessageKind::Stored { chunk }).await;
                    }
                    Ok(false) => {}
                    Err(e) => tracing::warn!("could not store chunk {chunk}: {e}"),
                }
            });
        }
        MessageKind::Stored { chunk } => {
            {
                let mut t = node.transient();
                if let Some(heard) = t.storing.get_mut(&chunk) {
                    heard.push(sender);
                }
                publish(&t.stored_subs, &chunk, sender);
            }
            let node = node.clone();
            tokio::spawn(async move {
                let c = chunk.clone();
                let r = node
                    .catalog
                    .call(move |cat| cat.add_holder(&c.file_id, c.chunk_no, sender))
                    .await;
                if let Err(e) = r {
                    tracing::warn!("could not record STORED of {chunk} from peer {sender}: {e}");
                }
            });
        }
        MessageKind::GetChunk { chunk } => {
            if !node.transient().replying.insert(chunk.clone()) {
                return;
            }
            let node = node.clone();
            tokio::spawn(async move {
                serve_getchunk(&node, &chunk, now).await;
                node.transient().replying.remove(&chunk);
            });
        }
        MessageKind::Chunk { chunk, body } => {
            let mut t = node.transient();
            remember(&mut t.chunk_seen, &chunk, now);
            publish(&t.chunk_subs, &chunk, body);
        }
        MessageKind::Delete { file_id } => {
            let node = node.clone();
            tokio::spawn(async move {
                let f = file_id.clone();
                match node.catalog.call(move |c| c.delete_hosted_file(&f)).await {
                    Ok(gone) if !gone.is_empty() => {
                        let n = gone.len();
                        remove_chunk_files(&node, &file_id, gone).await;
                        tracing::info!("DELETE from peer {sender}: freed {n} chunks of {file_id}");
                    }
                    Ok(_) => {}
                    Err(e) => tracing::warn!("could not delete chunks of {file_id}: {e}"),
                }
            });
        }
        MessageKind::Removed { chunk } => {
            let node = node.clone();
            tokio::spawn(async move { on_removed(&node, chunk, sender).await });
        }
    }
}

/// Stores a chunk if we may. Ok(true): we hold it (now or already) and owe a STORED.
async fn on_putchunk(
    node: &Arc<Node>,
    chunk: &ChunkId,
    rd: Rd,
    body: Vec<u8>,
) -> Result<bool, StoreError> {
    let c = chunk.clone();
    match node
        .catalog
        .call(move |cat| cat.role(&c.file_id, c.chunk_no))
        .await?
    {
        ChunkRole::Own { .. } => return Ok(false), // never host a chunk of our own file
        ChunkRole::Hosted { .. } => return Ok(true), // the first STORED may have been lost
        ChunkRole::Unknown => {}
    }
    let size = body.len() as u64;
    let Some(reservation) = node.store.reserve(size) else {
        tracing::debug!("no room for chunk {chunk} ({size} bytes) within the quota");
        return Ok(false);
    };
    {
        let mut t = node.transient();
        if t.storing.contains_key(chunk) {
            node.store.release(reservation);
            return Ok(false);
        }
        t.storing.insert(chunk.clone(), Vec::new());
    }
    let stored = write_and_record(node, chunk, rd, body).await;
    let heard = node.transient().storing.remove(chunk).unwrap_or_default();
    match stored {
        Ok(()) => {
            node.store.commit(reservation);
            // STOREDs that arrived while the chunk was being written.
            if !heard.is_empty() {
                let c = chunk.clone();
                node.catalog
                    .call(move |cat| {
                        for peer in heard {
                            cat.add_holder(&c.file_id, c.chunk_no, peer)?;
                        }
                        Ok(())
                    })
                    .await?;
            }
            Ok(true)
        }
        Err(e) => {
            node.store.release(reservation);
            Err(e)
        }
    }
}

/// The chunk file first (synced), then the catalog row: a crash in between leaves a stray file
/// that the next start removes, never a row without its file.
async fn write_and_record(
    node: &Arc<Node>,
    chunk: &ChunkId,
    rd: Rd,
    body: Vec<u8>,
) -> Result<(), StoreError> {
    let size = body.len() as u64;
    let (store, c) = (node.store.clone(), chunk.clone());
    let hash = tokio::task::spawn_blocking(move || {
        store.write(&c.file_id, c.chunk_no, &body)?;
        Ok::<_, std::io::Error>(sha256_hex(&body))
    })
    .await
    .map_err(|e| StoreError::Corrupt(e.to_string()))?
    .map_err(|e| StoreError::Commit(format!("writing the chunk file: {e}")))?;
    let row = HostedRow {
        file_id: chunk.file_id.clone(),
        chunk_no: chunk.chunk_no,
        size,
        hash,
        desired_rd: rd.get(),
    };
    let me = node.id;
    let r = node
        .catalog
        .call(move |cat| cat.insert_hosted(&row, &[me]))
        .await;
    if r.is_err() {
        let (store, c) = (node.store.clone(), chunk.clone());
        let _ = tokio::task::spawn_blocking(move || store.remove(&c.file_id, c.chunk_no)).await;
    }
    r
}

/// Reads a hosted chunk and checks it against the hash recorded when it was stored.
pub(super) async fn read_hosted(node: &Arc<Node>, chunk: &ChunkId) -> Option<(HostedRow, Vec<u8>)> {
    let c = chunk.clone();
    let row = node
        .catalog
        .call(move |cat| cat.hosted(&c.file_id, c.chunk_no))
        .await
        .ok()??;
    let (store, c) = (node.store.clone(), chunk.clone());
    let body = tokio::task::spawn_blocking(move || store.read(&c.file_id, c.chunk_no))
        .await
        .ok()?;
    match body {
        Ok(body) if sha256_hex(&body) == row.hash => Some((row, body)),
        Ok(_) => {
            tracing::error!("hosted chunk {chunk} does not match its hash: not serving it");
            None
        }
        Err(e) => {
            tracing::error!("cannot read hosted chunk {chunk}: {e}");
            None
        }
    }
}

async fn serve_getchunk(node: &Arc<Node>, chunk: &ChunkId, asked_at: Instant) {
    sleep(random_reply_delay()).await;
    if seen_since(&node.transient().chunk_seen, chunk, asked_at) {
        return; // another holder answered first
    }
    let Some((row, body)) = read_hosted(node, chunk).await else {
        return;
    };
    if seen_since(&node.transient().chunk_seen, chunk, asked_at) {
        return;
    }
    // The fileId text exactly as the home peer wrote it.
    let chunk = ChunkId {
        file_id: row.file_id,
        chunk_no: chunk.chunk_no,
    };
    node.send(MessageKind::Chunk { chunk, body }).await;
}

pub(super) async fn remove_chunk_files(
    node: &Arc<Node>,
    file_id: &crate::protocol::FileId,
    chunks: Vec<(crate::protocol::ChunkNo, u64)>,
) {
    let (n, f) = (node.clone(), file_id.clone());
    let _ = tokio::task::spawn_blocking(move || {
        for (no, size) in chunks {
            match n.store.remove(&f, no) {
                Ok(()) => n.store.freed(size),
                Err(e) => tracing::error!("cannot remove chunk file {f}#{no}: {e}", no = no.0),
            }
        }
    })
    .await;
}

async fn on_removed(node: &Arc<Node>, chunk: ChunkId, sender: PeerId) {
    let c = chunk.clone();
    let r = node
        .catalog
        .call(move |cat| {
            let role = cat.role(&c.file_id, c.chunk_no)?;
            let perceived = match role {
                ChunkRole::Unknown => 0,
                _ => cat.remove_holder(&c.file_id, c.chunk_no, sender)?,
            };
            Ok((role, perceived))
        })
        .await;
    let desired = match r {
        Ok((ChunkRole::Hosted { desired_rd }, perceived)) if perceived < u32::from(desired_rd) => {
            desired_rd
        }
        Ok((ChunkRole::Own { desired_rd }, perceived)) if perceived < u32::from(desired_rd) => {
            // A holder re-backs it up; should that fail, the home peer's repair will.
            node.repair.notify_one();
            return;
        }
        Ok(_) => return,
        Err(e) => {
            tracing::warn!("could not record REMOVED of {chunk} from peer {sender}: {e}");
            return;
        }
    };
    if !node.transient().rebacking.insert(chunk.clone()) {
        return;
    }
    let waited_from = Instant::now();
    sleep(random_reply_delay()).await;
    if !seen_since(&node.transient().putchunk_seen, &chunk, waited_from) {
        rebackup(node, &chunk, desired).await;
    }
    node.transient().rebacking.remove(&chunk);
}

/// A holder restores a chunk's RD after a REMOVED: it backs the chunk up itself.
async fn rebackup(node: &Arc<Node>, chunk: &ChunkId, desired: u8) {
    let Some((row, body)) = read_hosted(node, chunk).await else {
        return;
    };
    let Some(rd) = Rd::new(desired) else {
        return;
    };
    let c = chunk.clone();
    let known = node
        .catalog
        .call(move |cat| cat.holders(&c.file_id, c.chunk_no))
        .await
        .unwrap_or_else(|_| vec![node.id]);
    tracing::info!("chunk {chunk} fell below RD {desired}: backing it up again");
    let chunk = ChunkId {
        file_id: row.file_id,
        chunk_no: chunk.chunk_no,
    };
    let outcome = replicate_chunk(node, &chunk, rd, body, Resend::Keep, known, None::<()>).await;
    if !outcome.reached {
        tracing::warn!(
            "chunk {chunk} is still below its desired RD {desired} ({} holders) after {} PUTCHUNKs",
            outcome.holders.len(),
            outcome.sends
        );
    }
}

pub(crate) struct Outcome {
    pub reached: bool,
    pub sends: u32,
    pub recovered_by_resend: bool,
    pub holders: Vec<PeerId>,
}

/// Where a resend gets the chunk's bytes. Keeping every in-flight chunk in memory would cost
/// 64 KB per chunk of the window; a file backup reads them again from the file instead.
pub(crate) enum Resend {
    Keep,
    Reread {
        file: Arc<std::fs::File>,
        offset: u64,
        hash: String,
    },
}

impl Resend {
    /// The chunk's bytes again, if the file still holds them unchanged.
    async fn body(&self, len: usize) -> Option<Vec<u8>> {
        let Resend::Reread { file, offset, hash } = self else {
            return None;
        };
        let (file, offset) = (file.clone(), *offset);
        let body = tokio::task::spawn_blocking(move || {
            let mut body = vec![0u8; len];
            std::os::unix::fs::FileExt::read_exact_at(&*file, &mut body, offset).map(|_| body)
        })
        .await
        .ok()?
        .ok()?;
        (sha256_hex(&body) == *hash).then_some(body)
    }
}

/// Backs up one chunk: PUTCHUNK, count distinct STORED senders, resend per the engine's schedule.
/// `first_round` is dropped when the first wait is over (the caller's window counts it).
pub(crate) async fn replicate_chunk<G>(
    node: &Arc<Node>,
    chunk: &ChunkId,
    rd: Rd,
    body: Vec<u8>,
    resend: Resend,
    known: Vec<PeerId>,
    mut first_round: Option<G>,
) -> Outcome {
    let mut sub = node.subscribe_stored(chunk);
    let len = body.len();
    let encode = |body| {
        Message::new(
            node.id,
            MessageKind::PutChunk {
                chunk: chunk.clone(),
                rd,
                body,
            },
        )
        .encode()
    };
    let mut datagram = Some(encode(body));
    let mut backup = ChunkBackup::new(rd.get(), known);
    loop {
        match backup.poll(Instant::now()) {
            Action::SendPutChunk => {
                if backup.sends() > 1 {
                    first_round = None;
                }
                if datagram.is_none() {
                    match resend.body(len).await {
                        Some(body) => datagram = Some(encode(body)),
                        None => {
                            tracing::warn!("chunk {chunk} changed on disk during its backup");
                            break;
                        }
                    }
                }
                if let Some(d) = &datagram {
                    node.send_encoded(crate::protocol::Channel::Mdb, d, "PUTCHUNK")
                        .await;
                }
                if matches!(resend, Resend::Reread { .. }) {
                    datagram = None;
                }
            }
            Action::WaitUntil(t) => {
                tokio::select! {
                    _ = sleep_until(t.into()) => {}
                    Some(peer) = sub.rx.recv() => backup.on_stored(peer),
                }
            }
            Action::Done { .. } => break,
        }
    }
    drop(first_round);
    Outcome {
        reached: backup.holders().len() >= usize::from(rd.get()),
        sends: backup.sends(),
        recovered_by_resend: backup.recovered_by_resend(),
        holders: backup.holders().iter().copied().collect(),
    }
}

/// Makes the catalog and the chunk files agree after a crash: stray files are removed, rows whose
/// file is gone or of the wrong size are forgotten (returned, so the peers can be told with
/// REMOVED). Sets the store's used bytes from the catalog.
pub(super) async fn reconcile_store(node: &Arc<Node>) -> anyhow::Result<Vec<ChunkId>> {
    let store = node.store.clone();
    let on_disk = tokio::task::spawn_blocking(move || store.scan()).await??;
    let hosted = node.catalog.call(|c| c.all_hosted()).await?;
    let mut disk: std::collections::HashMap<ChunkId, u64> = on_disk
        .into_iter()
        .map(|(file_id, chunk_no, size)| (ChunkId { file_id, chunk_no }, size))
        .collect();
    let mut lost = Vec::new();
    for (row, _) in hosted {
        let chunk = ChunkId {
            file_id: row.file_id.clone(),
            chunk_no: row.chunk_no,
        };
        match disk.remove(&chunk) {
            Some(size) if size == row.size => {}
            _ => lost.push(chunk),
        }
    }
    for chunk in &lost {
        tracing::warn!("hosted chunk {chunk} is missing or damaged on disk: forgetting it");
        let c = chunk.clone();
        node.catalog
            .call(move |cat| cat.delete_hosted(&c.file_id, c.chunk_no))
            .await?;
        let (store, c) = (node.store.clone(), chunk.clone());
        tokio::task::spawn_blocking(move || store.remove(&c.file_id, c.chunk_no)).await??;
    }
    for (chunk, _) in disk {
        tracing::info!(
            "removing chunk file {chunk} that the catalog does not know (interrupted write)"
        );
        let store = node.store.clone();
        tokio::task::spawn_blocking(move || store.remove(&chunk.file_id, chunk.chunk_no)).await??;
    }
    let used = node.catalog.call(|c| c.used_bytes()).await?;
    node.store.set_used(used);
    Ok(lost)
}
