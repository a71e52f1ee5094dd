//! Answering other peers: store PUTCHUNKs and confirm with STORED, record holders, serve
//! GETCHUNKs, delete on DELETE, re-back up after REMOVED. Also the backup of one chunk, which
//! both a file backup and a re-backup use.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Instant;

use tokio::time::{sleep, sleep_until};

use super::{publish, random_reply_delay, remember, seen_since, Node, Storing};
use crate::engine::backup::{Action, ChunkBackup};
use crate::engine::serve::PendingReply;
use crate::protocol::{sha256_hex, ChunkId, Message, MessageKind, PeerId, Rd};
use crate::store::chunks::Reservation;
use crate::store::{ChunkRole, HostedRow, StoreError};

/// Dispatches one message from another peer. Never blocks, and does a bounded amount of work:
/// what needs the catalog goes to a bounded queue or a bounded set of tasks, and a datagram
/// that finds them full is dropped and counted.
pub(super) fn handle(node: &Arc<Node>, msg: Message) {
    let sender = msg.sender;
    let now = Instant::now();
    match msg.kind {
        MessageKind::PutChunk { chunk, rd, body } => {
            let permit = {
                let mut t = node.transient();
                remember(&mut t.putchunk_seen, &chunk, now);
                if t.storing.contains_key(&chunk) {
                    return; // a resend of a chunk being written: its STORED is on its way
                }
                let Ok(permit) = node.store_permits.clone().try_acquire_owned() else {
                    node.counters.dropped_busy.fetch_add(1, Ordering::Relaxed);
                    tracing::debug!("busy: dropped PUTCHUNK {chunk}; its sender will resend");
                    return;
                };
                t.storing.insert(chunk.clone(), Storing::default());
                permit
            };
            let node = node.clone();
            tokio::spawn(async move {
                let reply_at = tokio::time::Instant::now() + random_reply_delay();
                match on_putchunk(&node, &chunk, rd, body).await {
                    Ok(true) => {
                        drop(permit);
                        sleep_until(reply_at).await;
                        // Deleted meanwhile (the DELETE removed the chunk): nothing to confirm.
                        if !deleted_since(&node, &chunk.file_id, now) {
                            node.send(MessageKind::Stored { chunk }).await;
                        }
                    }
                    Ok(false) => {}
                    Err(e) => tracing::warn!("could not store chunk {chunk}: {e}"),
                }
            });
        }
        MessageKind::Stored { chunk } => {
            {
                let mut t = node.transient();
                publish(&t.stored_subs, &chunk, sender);
                if let Some(storing) = t.storing.get_mut(&chunk) {
                    storing.heard(sender);
                    return;
                }
            }
            if node.stored_tx.try_send((chunk, sender)).is_err() {
                node.counters.dropped_queue.fetch_add(1, Ordering::Relaxed);
            }
        }
        MessageKind::GetChunk { chunk } => {
            let permit = {
                let mut t = node.transient();
                if t.replying.contains_key(&chunk) {
                    return;
                }
                let Some(permit) = node.datagram_permit() else {
                    return;
                };
                t.replying.insert(chunk.clone(), PendingReply::default());
                permit
            };
            let node = node.clone();
            tokio::spawn(async move {
                serve_getchunk(&node, &chunk).await;
                node.transient().replying.remove(&chunk);
                drop(permit);
            });
        }
        MessageKind::Chunk { chunk, body } => on_chunk(node, &chunk, body),
        MessageKind::Delete { file_id } => {
            // Chunks of the file being written are removed once written (see on_putchunk).
            {
                let mut t = node.transient();
                for (c, storing) in t.storing.iter_mut() {
                    if c.file_id == file_id {
                        storing.deleted = true;
                    }
                }
                t.delete_seen.insert(file_id.clone(), now);
            }
            let Some(permit) = node.datagram_permit() else {
                return;
            };
            let node = node.clone();
            tokio::spawn(async move {
                let f = file_id.clone();
                let r = node.catalog.call(move |c| c.delete_hosted_file(&f)).await;
                drop(permit);
                match r {
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
            let Some(permit) = node.datagram_permit() else {
                return;
            };
            let node = node.clone();
            tokio::spawn(async move { on_removed(&node, chunk, sender, permit).await });
        }
    }
}

/// A CHUNK heard on MDR. Its body is hashed only where a good copy matters: a reply this peer is
/// about to send (only a good copy silences it), and a restore of ours whose queue is nearly full
/// (its last place is kept for a good copy, so junk cannot crowd the real one out).
fn on_chunk(node: &Arc<Node>, chunk: &ChunkId, body: Vec<u8>) {
    let len = body.len() as u64;
    let (for_reply, for_restore) = {
        let mut t = node.transient();
        let for_reply = t.replying.get_mut(chunk).is_some_and(|r| r.wants_hash(len));
        // A restore wants only the length and hash it expects; others are not even hashed.
        let for_restore = match t.chunk_subs.contains_key(chunk) {
            true => t
                .chunk_expect
                .get(chunk)
                .filter(|(l, _)| *l == len)
                .cloned(),
            false => None,
        };
        (for_reply, for_restore)
    };
    if !for_reply && for_restore.is_none() {
        return;
    }
    let hash = sha256_hex(&body);
    let t = &mut *node.transient();
    if for_reply {
        if let Some(reply) = t.replying.get_mut(chunk) {
            reply.hashed(&hash);
        }
    }
    match for_restore {
        Some((_, expected)) if expected == hash => publish(&t.chunk_subs, chunk, body),
        Some(_) => tracing::warn!("ignored a CHUNK {chunk} with wrong bytes"),
        None => {}
    }
}

/// What became of a PUTCHUNK.
enum Put {
    /// A chunk of our own file, or no room for it: not stored.
    Refused,
    /// Held already (the first STORED may have been lost).
    Held,
    /// Written and recorded now.
    Written { size: u64 },
}

/// Stores a chunk if we may. Ok(true): we hold it (now or already) and owe a STORED.
async fn on_putchunk(
    node: &Arc<Node>,
    chunk: &ChunkId,
    rd: Rd,
    body: Vec<u8>,
) -> Result<bool, StoreError> {
    let put = try_store(node, chunk, rd, body).await;
    // Every path ends here, so the entry handle() made is always taken out, exactly once.
    let storing = node.transient().storing.remove(chunk).unwrap_or_default();
    match put? {
        Put::Refused => Ok(false),
        Put::Held => Ok(!storing.deleted),
        Put::Written { size } if storing.deleted => {
            // A DELETE of its file came while it was written: no STORED, and it goes too.
            let c = chunk.clone();
            let gone = node
                .catalog
                .call(move |cat| cat.delete_hosted(&c.file_id, c.chunk_no))
                .await?;
            // None: the DELETE's own pass found the row and frees it.
            if gone.is_some() {
                remove_chunk_files(node, &chunk.file_id, vec![(chunk.chunk_no, size)]).await;
            }
            tracing::debug!("chunk {chunk} was deleted while it was written: removed");
            Ok(false)
        }
        Put::Written { .. } => {
            // STOREDs that arrived while the chunk was being written.
            if !storing.heard.is_empty() {
                let c = chunk.clone();
                node.catalog
                    .call(move |cat| {
                        cat.add_holders(&c.file_id, c.chunk_no, &storing.heard)
                            .map(|_| ())
                    })
                    .await?;
            }
            Ok(true)
        }
    }
}

async fn try_store(
    node: &Arc<Node>,
    chunk: &ChunkId,
    rd: Rd,
    body: Vec<u8>,
) -> Result<Put, StoreError> {
    let c = chunk.clone();
    match node
        .catalog
        .call(move |cat| cat.role(&c.file_id, c.chunk_no))
        .await?
    {
        ChunkRole::Own { .. } => return Ok(Put::Refused), // never host a chunk of our own file
        ChunkRole::Hosted { .. } => return Ok(Put::Held),
        ChunkRole::Unknown => {}
    }
    let size = body.len() as u64;
    let Some(reservation) = node.store.reserve(size) else {
        tracing::debug!("no room for chunk {chunk} ({size} bytes) within the quota");
        return Ok(Put::Refused);
    };
    write_and_record(node, chunk, rd, body, reservation).await?;
    Ok(Put::Written { size })
}

/// The chunk file first (synced), then the catalog row: a crash in between leaves a stray file
/// that the next start removes, never a row without its file. The reservation becomes used bytes
/// before the row exists, so whoever deletes the row may free them.
async fn write_and_record(
    node: &Arc<Node>,
    chunk: &ChunkId,
    rd: Rd,
    body: Vec<u8>,
    reservation: Reservation,
) -> Result<(), StoreError> {
    let size = body.len() as u64;
    let (store, c) = (node.store.clone(), chunk.clone());
    let written = tokio::task::spawn_blocking(move || {
        store.write(&c.file_id, c.chunk_no, &body)?;
        Ok::<_, std::io::Error>(sha256_hex(&body))
    })
    .await
    .map_err(|e| StoreError::Corrupt(e.to_string()))
    .and_then(|r| r.map_err(|e| StoreError::Commit(format!("writing the chunk file: {e}"))));
    let hash = match written {
        Ok(hash) => hash,
        Err(e) => {
            node.store.release(reservation);
            return Err(e);
        }
    };
    node.store.commit(reservation);
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
        remove_chunk_files(node, &chunk.file_id, vec![(chunk.chunk_no, size)]).await;
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
    let body = read_verified(node, &row).await?;
    Some((row, body))
}

async fn read_verified(node: &Arc<Node>, row: &HostedRow) -> Option<Vec<u8>> {
    let (store, f, no) = (node.store.clone(), row.file_id.clone(), row.chunk_no);
    let body = tokio::task::spawn_blocking(move || store.read(&f, no))
        .await
        .ok()?;
    let chunk = format!("{}#{}", row.file_id, row.chunk_no.0);
    match body {
        Ok(body) if sha256_hex(&body) == row.hash => Some(body),
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

/// Answers a GETCHUNK for a chunk we host: after the random wait, and no sooner than a second
/// after our last CHUNK of it; not at all if a good copy was heard meanwhile.
async fn serve_getchunk(node: &Arc<Node>, chunk: &ChunkId) {
    let c = chunk.clone();
    let Ok(Some(row)) = node
        .catalog
        .call(move |cat| cat.hosted(&c.file_id, c.chunk_no))
        .await
    else {
        return;
    };
    let reply_at = {
        let mut t = node.transient();
        if let Some(reply) = t.replying.get_mut(chunk) {
            reply.expect(row.size, row.hash.clone());
        }
        let at = Instant::now() + random_reply_delay();
        t.chunk_sent
            .next_allowed(chunk)
            .map_or(at, |next| next.max(at))
    };
    sleep_until(reply_at.into()).await;
    let answered = |node: &Node| {
        node.transient()
            .replying
            .get(chunk)
            .is_some_and(|r| r.suppressed())
    };
    if answered(node) {
        return; // another holder answered first, with the right bytes
    }
    let Some(body) = read_verified(node, &row).await else {
        return;
    };
    {
        let mut t = node.transient();
        if t.replying.get(chunk).is_some_and(|r| r.suppressed())
            || !t.chunk_sent.take(chunk, Instant::now())
        {
            return;
        }
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

async fn on_removed(
    node: &Arc<Node>,
    chunk: ChunkId,
    sender: PeerId,
    permit: tokio::sync::OwnedSemaphorePermit,
) {
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
    drop(permit); // a re-backup may take a while: it is bounded by `rebacking`, one per chunk
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
    let started = Instant::now();
    loop {
        match backup.poll(Instant::now()) {
            Action::SendPutChunk => {
                if backup.sends() > 1 {
                    first_round = None;
                }
                // Its file was deleted meanwhile (a holder's re-backup hears its home peer's
                // DELETE): a resend would put the chunk back on peers that just freed it.
                if deleted_since(node, &chunk.file_id, started) {
                    break;
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
        tokio::task::spawn_blocking(move || {
            store.quarantine(&c.file_id, c.chunk_no, "its size is not the one recorded")
        })
        .await??;
    }
    // A chunk file the catalog does not know: most often a write that a crash cut between the
    // file and its row (no STORED was sent), but never deleted on that guess.
    for (chunk, _) in disk {
        let store = node.store.clone();
        tokio::task::spawn_blocking(move || {
            store.quarantine(
                &chunk.file_id,
                chunk.chunk_no,
                "the catalog does not know it: an interrupted write?",
            )
        })
        .await??;
    }
    let store = node.store.clone();
    let now = crate::daemon::unix_now();
    match tokio::task::spawn_blocking(move || store.purge_quarantine(now)).await? {
        Ok(n) if n > 0 => tracing::info!("deleted {n} files kept in the quarantine for a week"),
        Ok(_) => {}
        Err(e) => tracing::warn!("cannot clean the quarantine: {e}"),
    }
    let store = node.store.clone();
    let used = node
        .catalog
        .call(move |c| c.used_bytes(|size| store.charge(size)))
        .await?;
    node.store.set_used(used);
    Ok(lost)
}

/// Set while chunks re-indexed by `--rebuild-catalog` are still to be announced.
const ANNOUNCE_KEY: &str = "announce_hosted";

/// `peerstashd --rebuild-catalog`: every chunk file of the store the catalog does not know gets
/// its row back (size and hash from the file). What was lost with the catalog: the desired RD
/// (1 is recorded, so reclaim drops these first) and the fileId's exact text (lower case).
pub(super) async fn rebuild_catalog(
    catalog: &crate::store::CatalogHandle,
    store: &Arc<crate::store::ChunkStore>,
    me: PeerId,
) -> anyhow::Result<()> {
    let s = store.clone();
    let rows = tokio::task::spawn_blocking(move || -> std::io::Result<Vec<HostedRow>> {
        s.scan()?
            .into_iter()
            .map(|(file_id, chunk_no, size)| {
                let body = s.read(&file_id, chunk_no)?;
                Ok(HostedRow {
                    file_id,
                    chunk_no,
                    size,
                    hash: sha256_hex(&body),
                    desired_rd: 1,
                })
            })
            .collect()
    })
    .await??;
    let found = rows.len();
    let added = catalog
        .call(move |c| {
            let mut added = 0;
            for row in &rows {
                if c.hosted(&row.file_id, row.chunk_no)?.is_none() {
                    c.insert_hosted(row, &[me])?;
                    added += 1;
                }
            }
            c.set_meta(ANNOUNCE_KEY, "1")?;
            Ok(added)
        })
        .await?;
    tracing::warn!(
        "rebuilt the catalog: {added} of {found} chunk files re-indexed; they are announced to their home peers"
    );
    Ok(())
}

/// Announces the chunks re-indexed by `--rebuild-catalog` with one STORED each (paced), so
/// their home peers count this peer as a holder again; done once, even across a restart.
pub(super) async fn announce_rebuilt(node: Arc<Node>) {
    let pending = node.catalog.call(|c| c.meta(ANNOUNCE_KEY)).await;
    if !matches!(pending, Ok(Some(ref v)) if v == "1") {
        return;
    }
    let hosted = match node.catalog.call(|c| c.all_hosted()).await {
        Ok(h) => h,
        Err(e) => {
            tracing::error!("cannot list the re-indexed chunks to announce them: {e}");
            return;
        }
    };
    let n = hosted.len();
    for (i, (row, _)) in hosted.into_iter().enumerate() {
        if i % 100 == 99 {
            sleep(std::time::Duration::from_millis(100)).await;
        }
        let chunk = ChunkId {
            file_id: row.file_id,
            chunk_no: row.chunk_no,
        };
        node.send(MessageKind::Stored { chunk }).await;
    }
    let _ = node.catalog.call(|c| c.set_meta(ANNOUNCE_KEY, "0")).await;
    tracing::info!("announced {n} hosted chunks after the catalog was rebuilt");
}

/// A PUTCHUNK carrying our own id. Ours echo back (multicast loops to this host); one for a
/// file we neither backed up nor host was sent by another peer with our id: a copied config.
/// Checked once a second at most; logged at ERROR once a minute at most.
pub(super) fn own_id_putchunk(node: &Arc<Node>, chunk: ChunkId) {
    {
        // Our own re-backup of a chunk we may have dropped or seen deleted meanwhile.
        let t = node.transient();
        let recently = Instant::now() - std::time::Duration::from_secs(60);
        if t.rebacking.contains(&chunk)
            || t.delete_seen
                .get(&chunk.file_id)
                .is_some_and(|at| *at >= recently)
        {
            return;
        }
    }
    let now = crate::daemon::unix_now();
    if node.counters.own_id_checked.swap(now, Ordering::Relaxed) == now {
        return;
    }
    let node = node.clone();
    tokio::spawn(async move {
        let c = chunk.clone();
        let role = node
            .catalog
            .call(move |cat| cat.role(&c.file_id, c.chunk_no))
            .await;
        if !matches!(role, Ok(ChunkRole::Unknown)) {
            return;
        }
        let log = {
            let mut d = node.duplicate_id.lock().unwrap_or_else(|e| e.into_inner());
            d.evidence = Some((Instant::now(), chunk.file_id.clone()));
            let due = d
                .logged
                .is_none_or(|t| t.elapsed() >= std::time::Duration::from_secs(60));
            if due {
                d.logged = Some(Instant::now());
            }
            due
        };
        if log {
            if let Some(warning) = node.duplicate_id_warning() {
                tracing::error!("{warning}");
            }
        }
    });
}

/// Whether a DELETE of the file was heard at or after `since`.
fn deleted_since(node: &Node, file_id: &crate::protocol::FileId, since: Instant) -> bool {
    node.transient()
        .delete_seen
        .get(file_id)
        .is_some_and(|at| *at >= since)
}
