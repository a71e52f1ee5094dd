//! The disk and catalog work the engine asks for: storing a chunk (file first, then its row),
//! reading a hosted chunk checked against its hash, deleting, recording holders; and what the
//! store needs at start (reconcile after a crash, rebuild a lost catalog).

use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Instant;

use tokio::sync::{mpsc, oneshot};

use super::inbox::Input;
use super::Node;
use crate::engine::peer::{Put, Role, MAX_CONCURRENT_STORES, UNKNOWN_RD};
use crate::engine::store::{self, Admit, Hosting};
use crate::protocol::{ChunkId, ChunkNo, FileId, PeerId, Rd};
use crate::store::catalog::MAX_HOLDERS;
use crate::store::{CatalogHandle, ChunkRole, ChunkStore, HostedRow, NewChunk};

/// Most STOREDs recorded in one call to the catalog.
const MAX_STORED_BATCH: usize = 1024;
/// STOREDs waiting to be recorded; beyond this one is dropped and counted (its sender's resends
/// and the next STORED make up for it), so a flood cannot take memory without bound.
pub(crate) const STORED_QUEUE: usize = 4096;

/// What the STORED recorder is handed: a STORED heard, or a caller waiting until every STORED
/// handed before it is recorded (`Node::storeds_recorded`).
pub(crate) enum ToRecord {
    Stored(ChunkId, PeerId),
    Flushed(oneshot::Sender<()>),
}
/// Set while chunks re-indexed by `--rebuild-catalog` are still to be announced.
const ANNOUNCE_KEY: &str = "announce_hosted";

impl From<ChunkRole> for Role {
    fn from(role: ChunkRole) -> Role {
        match role {
            ChunkRole::Unknown => Role::Unknown,
            ChunkRole::Forgotten => Role::Forgotten,
            ChunkRole::Own { desired_rd } => Role::Own { desired_rd },
            ChunkRole::Hosted { desired_rd } => Role::Hosted { desired_rd },
        }
    }
}

/// Stores a chunk if this peer may (`engine::store::admit`: never a chunk of its own file, one
/// copy at most), within the quota. `write` false: only say whether it is held (2.0: enough
/// peers stored it).
pub(crate) async fn store_chunk(
    node: &Arc<Node>,
    chunk: &ChunkId,
    rd: Rd,
    body: Vec<u8>,
    sender: PeerId,
    write: bool,
) -> Put {
    let role = match node.catalog.role(chunk).await {
        Ok(role) => Role::from(role),
        Err(e) => {
            tracing::warn!("could not store chunk {chunk}: {e}");
            return Put::Refused;
        }
    };
    match store::admit(role, write) {
        Admit::Refuse => Put::Refused,
        Admit::Held { learn_rd: learn } => {
            if learn {
                learn_rd(node, chunk, rd).await;
            }
            Put::Held
        }
        Admit::Write => store::after_write(write_hosted(node, chunk, rd, body, sender).await),
    }
}

/// Writes an admitted chunk: its bytes reserved within the quota, its file written (synced),
/// its catalog row recorded; how far it got. Each step runs only if
/// the one before succeeded, and a failed step undoes what the earlier ones did.
async fn write_hosted(
    node: &Arc<Node>,
    chunk: &ChunkId,
    rd: Rd,
    body: Vec<u8>,
    sender: PeerId,
) -> Hosting {
    let size = body.len() as u64;
    let Some(reservation) = node.store.reserve(size) else {
        tracing::debug!("no room for chunk {chunk} ({size} bytes) within the quota");
        return Hosting::NoRoom;
    };
    // The chunk file first (synced), then the catalog row: a crash in between leaves a stray
    // file that the next start quarantines, never a row without its file. The reservation
    // becomes used bytes before the row exists, so whoever deletes the row may free them.
    let hash = match node.writer.write(chunk.clone(), body).await {
        Ok(hash) => hash,
        Err(e) => {
            node.store.release(reservation);
            tracing::warn!("could not write chunk {chunk}: {e}");
            return Hosting::WriteFailed;
        }
    };
    node.store.commit(reservation);
    let row = HostedRow {
        file_id: chunk.file_id.clone(),
        chunk_no: chunk.chunk_no,
        size,
        hash,
        desired_rd: rd.get(),
        sender,
    };
    match node.catalog.store_hosted(row, node.id).await {
        Ok(()) => Hosting::Recorded,
        Err(e) => {
            tracing::warn!("could not record chunk {chunk}: {e}");
            remove_chunk_files(node, &chunk.file_id, vec![(chunk.chunk_no, size)]).await;
            Hosting::NotRecorded
        }
    }
}

/// A PUTCHUNK told the desired RD of a chunk re-indexed by `--rebuild-catalog`: recorded.
async fn learn_rd(node: &Arc<Node>, chunk: &ChunkId, rd: Rd) {
    match node.catalog.learn_hosted_rd(chunk, rd.get()).await {
        Ok(true) => tracing::info!("chunk {chunk}: its desired RD {rd} heard again"),
        Ok(false) => {}
        Err(e) => tracing::warn!("could not record the desired RD of chunk {chunk}: {e}"),
    }
}

/// Chunks waiting for the writer thread (the engine stores at most `MAX_CONCURRENT_STORES`
/// at once: this never fills).
const WRITE_QUEUE: usize = 2 * MAX_CONCURRENT_STORES;
/// Most chunks (and bytes) one group commit writes before its sync.
const MAX_WRITE_BATCH: usize = 256;
const MAX_WRITE_BATCH_BYTES: usize = 16 << 20;

/// A chunk for the writer thread, and where its outcome (its hash) goes.
struct WriteJob {
    chunk: ChunkId,
    body: Vec<u8>,
    done: oneshot::Sender<std::io::Result<String>>,
}

/// The thread that writes hosted chunks: it takes every chunk waiting when it is free and
/// writes them with one sync of the disk (group commit), so a burst of PUTCHUNKs costs one
/// sync, not one per chunk, and no runtime thread ever blocks on the disk.
pub(crate) struct ChunkWriter {
    jobs: mpsc::Sender<WriteJob>,
}

impl ChunkWriter {
    pub(crate) fn start(store: Arc<ChunkStore>) -> std::io::Result<ChunkWriter> {
        let (jobs, rx) = mpsc::channel(WRITE_QUEUE);
        std::thread::Builder::new()
            .name("chunk-writer".into())
            .spawn(move || write_batches(&store, rx))?;
        Ok(ChunkWriter { jobs })
    }

    /// Writes a chunk for good; its SHA-256 (hex) once it is on disk.
    async fn write(&self, chunk: ChunkId, body: Vec<u8>) -> std::io::Result<String> {
        let (done, outcome) = oneshot::channel();
        let gone = || std::io::Error::other("the chunk writer stopped");
        (self.jobs.send(WriteJob { chunk, body, done }).await).map_err(|_| gone())?;
        outcome.await.unwrap_or_else(|_| Err(gone()))
    }
}

fn write_batches(store: &ChunkStore, mut rx: mpsc::Receiver<WriteJob>) {
    while let Some(first) = rx.blocking_recv() {
        let mut bytes = first.body.len();
        let mut batch = vec![first];
        while batch.len() < MAX_WRITE_BATCH && bytes < MAX_WRITE_BATCH_BYTES {
            let Ok(job) = rx.try_recv() else { break };
            bytes += job.body.len();
            batch.push(job);
        }
        let chunks: Vec<NewChunk> = (batch.iter())
            .map(|j| NewChunk {
                file_id: &j.chunk.file_id,
                chunk_no: j.chunk.chunk_no,
                body: &j.body,
            })
            .collect();
        let results = store.write_batch(&chunks);
        for (job, result) in batch.into_iter().zip(results) {
            let _ = job.done.send(result);
        }
    }
}

/// Stops hosting a chunk: its row first, then its file, and its bytes freed. Whether it was
/// hosted (false: someone else's pass removed it already).
pub(crate) async fn unhost(
    node: &Arc<Node>,
    chunk: &ChunkId,
) -> Result<bool, crate::store::StoreError> {
    let size = node.catalog.unhost(chunk).await?;
    if let Some(size) = size {
        remove_chunk_files(node, &chunk.file_id, vec![(chunk.chunk_no, size)]).await;
    }
    Ok(size.is_some())
}

/// A chunk written after its file's DELETE was heard: it goes too.
pub(crate) async fn drop_hosted(node: &Arc<Node>, chunk: &ChunkId) {
    match unhost(node, chunk).await {
        Ok(true) => tracing::debug!("chunk {chunk} was deleted while it was written: removed"),
        Ok(false) => {}
        Err(e) => tracing::warn!("could not drop chunk {chunk}: {e}"),
    }
}

/// DELETE: every hosted chunk of the file goes. Whether some chunk was freed.
pub(crate) async fn delete_file(node: &Arc<Node>, file_id: &FileId, sender: PeerId) -> bool {
    match node.catalog.unhost_file(file_id).await {
        Ok(gone) if !gone.is_empty() => {
            let n = gone.len();
            remove_chunk_files(node, file_id, gone).await;
            tracing::info!("DELETE from peer {sender}: freed {n} chunks of {file_id}");
            true
        }
        Ok(_) => false,
        Err(e) => {
            tracing::warn!("could not delete chunks of {file_id}: {e}");
            false
        }
    }
}

/// A chunk's role here and its perceived RD now, once `gone` (a REMOVED's sender) is taken out
/// of its holders; `gone` None: only look (2.0, a re-backup left to another holder, looked at
/// again).
pub(crate) async fn role_and_rd(
    node: &Arc<Node>,
    chunk: &ChunkId,
    gone: Option<PeerId>,
) -> Option<(Role, u32)> {
    match node.catalog.role_and_rd(chunk, gone).await {
        Ok((role, perceived)) => Some((role.into(), perceived)),
        Err(e) => {
            match gone {
                Some(peer) => {
                    tracing::warn!("could not record REMOVED of {chunk} from peer {peer}: {e}")
                }
                None => tracing::warn!("could not look at chunk {chunk} again: {e}"),
            }
            None
        }
    }
}

/// A hosted chunk to back up again: as the home peer wrote its fileId, its RD, its bytes
/// (checked) and its known holders.
pub(crate) async fn read_for_rebackup(
    node: &Arc<Node>,
    chunk: &ChunkId,
    desired: u8,
) -> Option<(ChunkId, Rd, Vec<u8>, Vec<PeerId>)> {
    let rd = Rd::new(desired)?;
    let (row, body) = read_hosted(node, chunk).await?;
    let known = (node.catalog.holders(chunk).await).unwrap_or_else(|_| vec![node.id]);
    Some((row.chunk_id(), rd, body, known))
}

/// Reads a hosted chunk and checks it against the hash recorded when it was stored.
pub(crate) async fn read_hosted(node: &Arc<Node>, chunk: &ChunkId) -> Option<(HostedRow, Vec<u8>)> {
    let row = node.catalog.hosted(chunk).await.ok()??;
    let (store, f, no) = (node.store.clone(), row.file_id.clone(), row.chunk_no);
    // The store checked the body against its slot's hash: that hash is compared with the row's.
    let body = tokio::task::spawn_blocking(move || store.read_hashed(&f, no))
        .await
        .ok()?;
    match body {
        Ok((body, hash)) if hash == row.hash => Some((row, body)),
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

pub(crate) async fn remove_chunk_files(
    node: &Arc<Node>,
    file_id: &FileId,
    chunks: Vec<(ChunkNo, u64)>,
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

/// Records the STOREDs heard, many per call to the catalog: what a burst costs is one call per batch,
/// not one per datagram. At shutdown, what is queued is recorded before it returns.
pub(crate) async fn record_stored(
    catalog: CatalogHandle,
    mut rx: mpsc::Receiver<ToRecord>,
    mut shutdown: crate::shutdown::Shutdown,
) {
    let mut batch = Vec::with_capacity(MAX_STORED_BATCH);
    let mut waiting = Vec::new();
    loop {
        let stopping = tokio::select! {
            _ = shutdown.recv() => true,
            n = rx.recv_many(&mut batch, MAX_STORED_BATCH) => {
                if n == 0 {
                    return;
                }
                false
            }
        };
        if stopping {
            while let Ok(heard) = rx.try_recv() {
                batch.push(heard);
            }
        }
        let heard = batch.drain(..).filter_map(|r| match r {
            ToRecord::Stored(chunk, peer) => Some((chunk, peer)),
            ToRecord::Flushed(done) => {
                waiting.push(done);
                None
            }
        });
        let heard: Vec<_> = heard.collect();
        record_batch(&catalog, heard.into_iter()).await;
        // Recorded: everything handed before each of these (and some after) is in the catalog.
        for done in waiting.drain(..) {
            let _ = done.send(());
        }
        if stopping {
            return;
        }
    }
}

async fn record_batch(catalog: &CatalogHandle, heard: impl Iterator<Item = (ChunkId, PeerId)>) {
    let mut by_chunk: HashMap<ChunkId, Vec<PeerId>> = HashMap::new();
    for (chunk, peer) in heard {
        let peers = by_chunk.entry(chunk).or_default();
        if peers.len() < MAX_HOLDERS as usize && !peers.contains(&peer) {
            peers.push(peer);
        }
    }
    if by_chunk.is_empty() {
        return;
    }
    let r = catalog.record_storeds(by_chunk.into_iter().collect()).await;
    if let Err(e) = r {
        tracing::warn!("could not record STOREDs: {e}");
    }
}

/// A PUTCHUNK with our own id for a chunk this peer neither backed up nor hosts was sent by
/// another peer with our id: a copied config. Logged at ERROR once a minute at most.
pub(crate) async fn check_own_id(node: &Arc<Node>, chunk: ChunkId) {
    let role = node.catalog.role(&chunk).await;
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
}

/// Makes the catalog and the chunk files agree after a crash: rows whose file is gone or of the
/// wrong size are forgotten (returned, so the peers can be told with REMOVED), files the
/// catalog does not know are quarantined. Sets the store's used bytes from the catalog.
pub(crate) async fn reconcile_store(node: &Arc<Node>) -> anyhow::Result<Vec<ChunkId>> {
    let store = node.store.clone();
    let on_disk = tokio::task::spawn_blocking(move || store.scan()).await??;
    let hosted = node.catalog.all_hosted().await?;
    let mut disk: HashMap<ChunkId, u64> = on_disk
        .into_iter()
        .map(|(file_id, chunk_no, size)| (ChunkId { file_id, chunk_no }, size))
        .collect();
    let mut lost = Vec::new();
    for (row, _) in hosted {
        let chunk = row.chunk_id();
        match disk.remove(&chunk) {
            Some(size) if size == row.size => {}
            _ => lost.push(chunk),
        }
    }
    for chunk in &lost {
        tracing::warn!("hosted chunk {chunk} is missing or damaged on disk: forgetting it");
        node.catalog.unhost(chunk).await?;
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
    let now = crate::clock::unix_s();
    match tokio::task::spawn_blocking(move || store.purge_quarantine(now)).await? {
        Ok(n) if n > 0 => tracing::info!("deleted {n} files kept in the quarantine for a week"),
        Ok(_) => {}
        Err(e) => tracing::warn!("cannot clean the quarantine: {e}"),
    }
    let store = node.store.clone();
    let used = node
        .catalog
        .used_bytes(move |size| store.charge(size))
        .await?;
    node.store.set_used(used);
    Ok(lost)
}

/// `meta` key of the chunks `--rebuild-catalog` set aside as damaged (`fileId chunkNo`, one a
/// line), announced with REMOVED once the engine runs.
const SET_ASIDE_KEY: &str = "removed_after_rebuild";
/// Most chunks set aside that are announced (each further one is still set aside and counted;
/// its home peer finds it missing when it next checks).
const MAX_SET_ASIDE_ANNOUNCED: usize = 4096;

/// `peerstashd --rebuild-catalog`: every chunk file of the store the catalog does not know gets
/// its row back (size and hash from the file). What was lost with the catalog: the desired RD
/// (`UNKNOWN_RD` until a PUTCHUNK tells it again) and the fileId's exact text (lower case). A
/// chunk whose bytes do not match its hash is set aside in the quarantine (REMOVED sent once
/// the daemon runs, so its home peer backs it up again); one the disk cannot read is left where
/// it is, not indexed. Either way the rebuild goes on.
pub(crate) async fn rebuild_catalog(
    catalog: &CatalogHandle,
    store: &Arc<ChunkStore>,
    me: PeerId,
) -> anyhow::Result<()> {
    let s = store.clone();
    let (rows, set_aside, unreadable) = tokio::task::spawn_blocking(move || {
        let (mut rows, mut set_aside, mut unreadable) = (Vec::new(), Vec::new(), 0usize);
        for (file_id, chunk_no, size) in s.scan()? {
            match s.read_hashed(&file_id, chunk_no) {
                Ok((_, hash)) => rows.push(HostedRow {
                    file_id,
                    chunk_no,
                    size,
                    hash,
                    desired_rd: UNKNOWN_RD,
                    sender: PeerId(0),
                }),
                Err(e) if e.kind() == std::io::ErrorKind::InvalidData => {
                    s.quarantine(&file_id, chunk_no, "damaged, found by --rebuild-catalog")?;
                    set_aside.push(ChunkId { file_id, chunk_no });
                }
                Err(e) => {
                    tracing::error!(
                        "--rebuild-catalog: cannot read chunk {chunk_no} of {file_id}: {e}"
                    );
                    unreadable += 1;
                }
            }
        }
        Ok::<_, std::io::Error>((rows, set_aside, unreadable))
    })
    .await??;
    let found = rows.len() + set_aside.len() + unreadable;
    let damaged = set_aside.len();
    let announced: Vec<String> = (set_aside.iter())
        .take(MAX_SET_ASIDE_ANNOUNCED)
        .map(|c| format!("{} {}", c.file_id.key(), c.chunk_no.0))
        .collect();
    let notes = vec![
        (SET_ASIDE_KEY, announced.join("\n")),
        (ANNOUNCE_KEY, "1".to_owned()),
    ];
    let added = catalog.host_rebuilt(rows, me, notes).await?;
    let mut problems = String::new();
    if damaged > 0 {
        problems.push_str(&format!(
            "; {damaged} damaged chunks set aside in {} and announced as removed (their home peers back them up again: nothing to do but check the disk, e.g. smartctl)",
            store.quarantine_dir().display()
        ));
    }
    if unreadable > 0 {
        problems.push_str(&format!(
            "; {unreadable} chunks the disk could not read were left out (see the errors above: check the disk, then run --rebuild-catalog again)"
        ));
    }
    tracing::warn!(
        "rebuilt the catalog: {added} of {found} chunk files re-indexed; they are announced to their home peers{problems}"
    );
    Ok(())
}

/// Hands the chunks re-indexed by `--rebuild-catalog` to the engine, which announces them with
/// one STORED each (paced); done once, even across a restart (`announced` clears the mark).
pub(crate) async fn announce_rebuilt(node: &Arc<Node>) {
    let pending = node.catalog.meta(ANNOUNCE_KEY).await;
    if !matches!(pending, Ok(Some(ref v)) if v == "1") {
        return;
    }
    // The chunks set aside as damaged: their home peers stop counting this copy.
    let set_aside = node.catalog.meta(SET_ASIDE_KEY).await;
    let set_aside: Vec<ChunkId> = (set_aside.ok().flatten().unwrap_or_default().lines())
        .filter_map(|l| {
            let (f, n) = l.split_once(' ')?;
            Some(ChunkId {
                file_id: FileId::parse(f).ok()?,
                chunk_no: ChunkNo::new(n.parse().ok()?)?,
            })
        })
        .collect();
    if !set_aside.is_empty() {
        tracing::info!(
            "announcing {} chunks set aside as damaged with REMOVED",
            set_aside.len()
        );
    }
    for chunk in set_aside {
        node.engine(Input::SendRemoved(chunk));
    }
    let _ = node.catalog.set_meta(SET_ASIDE_KEY, String::new()).await;
    match node.catalog.all_hosted().await {
        Ok(hosted) => {
            let chunks: Vec<ChunkId> = hosted.into_iter().map(|(row, _)| row.chunk_id()).collect();
            tracing::info!(
                "announcing {} hosted chunks after the catalog was rebuilt",
                chunks.len()
            );
            node.engine(Input::Announce(chunks));
        }
        Err(e) => tracing::error!("cannot list the re-indexed chunks to announce them: {e}"),
    }
}

pub(crate) async fn announced(node: &Arc<Node>) {
    let _ = node.catalog.set_meta(ANNOUNCE_KEY, "0".to_owned()).await;
    tracing::info!("announced the hosted chunks re-indexed after the catalog was rebuilt");
}

/// A place among the tasks that handle DELETEs and REMOVEDs (each needs the catalog); None
/// (counted) when all are taken.
impl Node {
    pub(crate) fn datagram_permit(&self) -> Option<tokio::sync::OwnedSemaphorePermit> {
        let permit = self.datagram_permits.clone().try_acquire_owned().ok();
        if permit.is_none() {
            self.counters.dropped_queue.fetch_add(1, Ordering::Relaxed);
        }
        permit
    }

    /// Returns once every STORED handed to the recorder before the call is in the catalog (at
    /// once if the recorder is gone: the daemon is stopping). `peerstash backup` waits for it
    /// before it answers (`server::socket`), so that what it printed is what `state` reads next (once per request,
    /// not per file: a wait per file cost small files 10-15% of their speed).
    pub(crate) async fn storeds_recorded(&self) {
        let (done, recorded) = oneshot::channel();
        if self.stored_tx.send(ToRecord::Flushed(done)).await.is_ok() {
            let _ = recorded.await;
        }
    }
}
