//! The commands of the control socket, carried out by the daemon: backup, restore, versions,
//! delete, reclaim, state. Each returns a `Done` (exit code, one-line message, optional data)
//! and may report progress lines on the way.

use std::fs::File;
use std::io::Read;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileExt, MetadataExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use sha2::{Digest, Sha256};
use tokio::sync::mpsc;
use tokio::task::{spawn_blocking, JoinSet};

use super::peer::{remove_chunk_files, replicate_chunk, Outcome, Resend};
use super::Node;
use crate::control::{
    exit, shown, ChunkState, FileState, PeerState, Restored, StoredState, UnavailableFolder,
    VersionInfo,
};
use crate::engine::backup::Window;
use crate::engine::reclaim::{choose_victims, Candidate};
use crate::engine::restore::{expected_len, Action as FetchAction, ChunkFetch};
use crate::fsx;
use crate::protocol::{
    chunk_count, hex, sha256_hex, ChunkId, ChunkNo, FileId, FileIdentity, MessageKind, PeerId, Rd,
    CHUNK_SIZE,
};
use crate::store::{BackupId, CatalogHandle, FileRow, Forget, StoreError};

/// The final answer to a command.
pub struct Done {
    pub code: i32,
    pub message: String,
    pub data: Option<serde_json::Value>,
}

impl Done {
    fn ok(message: impl Into<String>) -> Done {
        Done {
            code: exit::OK,
            message: message.into(),
            data: None,
        }
    }

    fn failed(message: impl Into<String>) -> Done {
        Done {
            code: exit::FAILED,
            message: message.into(),
            data: None,
        }
    }
}

impl From<StoreError> for Done {
    fn from(e: StoreError) -> Done {
        Done::failed(e.to_string())
    }
}

/// Progress lines for the client; a slow client misses some rather than slowing the work.
pub type Progress = mpsc::Sender<String>;

fn report(progress: &Progress, line: String) {
    let _ = progress.try_send(line);
}

// ---- quota and reclaim --------------------------------------------------------------------

const QUOTA_KEY: &str = "quota_override";
const QUOTA_CONFIG_KEY: &str = "quota_override_config";

/// The quota in force: the config's, unless `peerstash reclaim` set another since the config's
/// quota last changed (the admin's latest word wins).
pub(crate) async fn effective_quota(
    catalog: &CatalogHandle,
    configured: u64,
) -> Result<u64, StoreError> {
    catalog
        .call(move |c| {
            let set = c.meta(QUOTA_KEY)?.and_then(|v| v.parse::<u64>().ok());
            let under = c
                .meta(QUOTA_CONFIG_KEY)?
                .and_then(|v| v.parse::<u64>().ok());
            Ok(match (set, under) {
                (Some(q), Some(cfg)) if cfg == configured => q,
                _ => configured,
            })
        })
        .await
}

pub(super) async fn reclaim(node: &Arc<Node>, quota: u64) -> Done {
    let configured = node.config().storage.quota;
    let r = node
        .catalog
        .call(move |c| {
            c.set_meta(QUOTA_KEY, &quota.to_string())?;
            c.set_meta(QUOTA_CONFIG_KEY, &configured.to_string())
        })
        .await;
    if let Err(e) = r {
        return e.into();
    }
    node.store.set_quota(quota);
    let freed = reclaim_to_quota(node.clone()).await;
    let used = node.store.usage().used;
    Done::ok(format!(
        "quota set to {quota} bytes; dropped {freed} chunks; {used} bytes hosted"
    ))
}

/// Drops hosted chunks (most over-replicated first) until the used bytes fit the quota, and
/// tells the peers with REMOVED. Returns how many chunks were dropped.
pub(crate) async fn reclaim_to_quota(node: Arc<Node>) -> usize {
    let mut dropped = 0;
    // Writes under way when the quota was lowered may land after a pass: a few passes catch them.
    for _ in 0..3 {
        let usage = node.store.usage();
        let hosted = match node.catalog.call(|c| c.all_hosted()).await {
            Ok(h) => h,
            Err(e) => {
                tracing::error!("reclaim: cannot list hosted chunks: {e}");
                break;
            }
        };
        // Quota 0 hosts nothing, not even empty chunks.
        let over = if usage.quota == 0 {
            !hosted.is_empty()
        } else {
            usage.used > usage.quota
        };
        if !over {
            break;
        }
        let candidates = hosted
            .into_iter()
            .map(|(row, perceived)| Candidate {
                key: ChunkId {
                    file_id: row.file_id,
                    chunk_no: row.chunk_no,
                },
                // What dropping it gives back: its charge, as the used bytes count it.
                size: node.store.charge(row.size),
                desired_rd: u32::from(row.desired_rd),
                perceived_rd: perceived,
            })
            .collect();
        let victims = choose_victims(candidates, usage.used, usage.quota);
        if victims.is_empty() {
            break;
        }
        for chunk in victims {
            let c = chunk.clone();
            match node
                .catalog
                .call(move |cat| cat.delete_hosted(&c.file_id, c.chunk_no))
                .await
            {
                Ok(Some(size)) => {
                    remove_chunk_files(&node, &chunk.file_id, vec![(chunk.chunk_no, size)]).await;
                    send_removed(&node, chunk);
                    dropped += 1;
                }
                Ok(None) => {}
                Err(e) => tracing::error!("reclaim: cannot drop {chunk}: {e}"),
            }
        }
    }
    if dropped > 0 {
        tracing::info!(
            "reclaimed space: dropped {dropped} chunks, {} bytes hosted",
            node.store.usage().used
        );
    }
    dropped
}

/// REMOVED is sent three times (0, 0.2, 0.6 s): a lost one would leave the holders believing
/// the chunk safer than it is. Receiving it twice is harmless.
pub(crate) fn send_removed(node: &Arc<Node>, chunk: ChunkId) {
    let node = node.clone();
    tokio::spawn(async move {
        for wait in [0, 200, 400] {
            tokio::time::sleep(Duration::from_millis(wait)).await;
            node.send(MessageKind::Removed {
                chunk: chunk.clone(),
            })
            .await;
        }
    });
}

// ---- backup -------------------------------------------------------------------------------

/// Chunks in flight per file backup: the window starts here and adapts (engine::backup::Window).
const WINDOW_INITIAL: usize = 32;
const WINDOW_MIN: usize = 4;
const WINDOW_MAX: usize = 1024;
/// Chunks past their first round (resending on the 1, 2, 4, 8, 16 s schedule) cost little: their
/// bytes are read again from the file for each resend. Bounded all the same.
const MAX_CHUNKS_IN_BACKOFF: usize = 4096;
/// Chunks read and recorded in the catalog in one go before they are sent.
const READ_BATCH: usize = 32;

/// Backs up what `root` names: a file, or every regular file below a folder (entered through
/// handles, symlinks never followed). `path` is the name the caller gave it (checked to be the
/// same file). `owner`: a non-root caller's uid; only its own files and folders are backed up,
/// the others are skipped and counted.
pub(super) async fn backup(
    node: &Arc<Node>,
    path: PathBuf,
    root: File,
    rd: Option<u8>,
    owner: Option<u32>,
    progress: &Progress,
) -> Done {
    let root = Arc::new(root);
    let listed = spawn_blocking({
        let root = root.clone();
        move || -> std::io::Result<Option<Vec<PathBuf>>> {
            match root.metadata()?.is_dir() {
                true => fsx::list_files(&root, owner).map(Some),
                false => Ok(None),
            }
        }
    })
    .await;
    // None: `root` is the file itself.
    let files: Vec<Option<PathBuf>> = match listed {
        Ok(Ok(Some(rels))) => rels.into_iter().map(Some).collect(),
        Ok(Ok(None)) => vec![None],
        Ok(Err(e)) => return Done::failed(format!("cannot read {}: {e}", shown(&path))),
        Err(e) => return Done::failed(e.to_string()),
    };
    let (mut ok, mut below, mut failed, mut skipped) = (0usize, 0usize, 0usize, 0usize);
    // The fewest peers heard by a backup that ended below its RD, and that RD: why it did.
    let mut short: Option<(usize, u8)> = None;
    let mut last_error = String::new();
    for rel in &files {
        let file_path = rel.as_ref().map_or(path.clone(), |r| path.join(r));
        let opened = spawn_blocking({
            let (root, rel) = (root.clone(), rel.clone());
            move || -> std::io::Result<File> {
                match rel {
                    Some(rel) => fsx::open_below(&root, &rel, fsx::Kind::File),
                    None => root.try_clone(),
                }
            }
        })
        .await;
        let file = match opened {
            Ok(Ok(f)) => f,
            Ok(Err(e)) => {
                failed += 1;
                last_error = format!("{}: {e}", shown(&file_path));
                report(progress, format!("failed {last_error}"));
                continue;
            }
            Err(e) => return Done::failed(e.to_string()),
        };
        // The owner as the handle says, never as a path looked up again.
        if owner.is_some_and(|uid| file.metadata().map(|m| m.uid()).ok() != Some(uid)) {
            skipped += 1;
            continue;
        }
        let desired = rd.unwrap_or_else(|| default_rd(node, &file_path));
        match backup_handle(node, &file_path, file, desired).await {
            Ok(r) => {
                let state = if r.below == 0 {
                    ok += 1;
                    format!("every chunk at RD ≥ {desired}")
                } else {
                    below += 1;
                    short = Some(
                        short.map_or((r.peers_heard, desired), |(n, d)| (n.min(r.peers_heard), d)),
                    );
                    format!("{} of {} chunks below RD {desired}", r.below, r.chunks)
                };
                report(
                    progress,
                    format!(
                        "backed up {} (version {}, {} bytes, {} chunks): {state}",
                        shown(&file_path),
                        r.version,
                        r.size,
                        r.chunks
                    ),
                );
            }
            Err(e) => {
                failed += 1;
                last_error = format!("{}: {e}", shown(&file_path));
                report(progress, format!("failed {last_error}"));
            }
        }
    }
    if skipped > 0 && ok + below + failed == 0 {
        return Done::failed(format!(
            "you may back up only files you own, and none below {} is yours",
            shown(&path)
        ));
    }
    // In the final line, which a slow client never misses (progress lines it may).
    let not_yours = match skipped {
        0 => String::new(),
        n => format!(", {n} skipped (not yours)"),
    };
    let summary = format!(
        "{} files: {ok} fully replicated, {below} below their desired RD, {failed} failed{not_yours}",
        ok + below + failed
    );
    let code = if failed > 0 {
        exit::FAILED
    } else if below > 0 {
        exit::BELOW_RD
    } else {
        exit::OK
    };
    let mut message = if failed > 0 {
        format!("{summary} (last error: {last_error})")
    } else {
        summary
    };
    if let Some((heard, rd)) = short {
        message.push_str(&format!(
            "; only {heard} other peers confirmed chunks, and RD {rd} needs {rd} other peers running with room in their quota (see their `peerstash state`)"
        ));
        if let Some(warning) = node.duplicate_id_warning() {
            message.push_str(&format!("; {warning}"));
        }
    }
    Done {
        code,
        message,
        data: None,
    }
}

/// The RD of the watched folder holding `path`, or 2.
fn default_rd(node: &Node, path: &Path) -> u8 {
    node.config().watch_of(path).map_or(2, |w| w.replication)
}

#[derive(Debug, thiserror::Error)]
pub(crate) enum BackupError {
    #[error("{0}")]
    Io(#[from] std::io::Error),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("the file changed while it was being backed up; back it up again once it is stable")]
    Changed,
    #[error("the file is larger than the protocol's 64 GB limit")]
    TooLarge,
    #[error("this version was deleted (`peerstash delete`?) while it was being backed up")]
    Deleted,
    #[error("internal error: {0}")]
    Join(#[from] tokio::task::JoinError),
}

pub(crate) struct BackupReport {
    pub version: u32,
    pub size: u64,
    pub chunks: u64,
    pub below: u64,
    /// Distinct peers that confirmed at least one chunk of this backup.
    pub peers_heard: usize,
}

/// What tells that a file changed: size, mtime and ctime (every write moves ctime, and nobody
/// can set it back). Compared from the handle (fstat) before and after reading.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Stamp {
    size: u64,
    mtime_ns: i64,
    ctime_ns: i64,
}

impl Stamp {
    /// Whether the file stayed as it was from `self` (before reading) to `after`. A ctime that
    /// moved while size and mtime did not (a hard link made or renamed, a chmod — or a write
    /// followed by `touch -r`) is decided by the content: `same_content` says whether the two
    /// reads of the file (the scan and the chunks) agreed.
    fn stable(&self, after: &Stamp, same_content: bool) -> bool {
        self.size == after.size
            && self.mtime_ns == after.mtime_ns
            && (self.ctime_ns == after.ctime_ns || same_content)
    }

    fn of(meta: &std::fs::Metadata) -> Stamp {
        Stamp {
            size: meta.len(),
            mtime_ns: meta.mtime() * 1_000_000_000 + meta.mtime_nsec(),
            ctime_ns: meta.ctime() * 1_000_000_000 + meta.ctime_nsec(),
        }
    }
}

struct Scanned {
    inode: u64,
    uid: u32,
    gid: u32,
    size: u64,
    mtime_ns: i64,
    mode: u32,
    content_hash: String,
    /// The file as it was before it was read.
    stamp: Stamp,
    /// Whether it was the same after it was read (and as long as it said), leaving a moved
    /// ctime to the second read (`Stamp::stable`).
    stable: bool,
}

fn scan_file(mut file: File) -> std::io::Result<(File, Scanned)> {
    let meta = file.metadata()?;
    let stamp = Stamp::of(&meta);
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    let mut size = 0u64;
    loop {
        let n = file.read(&mut buf)?;
        if n == 0 {
            break;
        }
        size += n as u64;
        hasher.update(&buf[..n]);
    }
    let scanned = Scanned {
        inode: meta.ino(),
        uid: meta.uid(),
        gid: meta.gid(),
        size,
        mtime_ns: meta.mtime() * 1_000_000_000 + meta.mtime_nsec(),
        mode: meta.mode() & 0o7777,
        content_hash: hex(&hasher.finalize()),
        stamp,
        // A moved ctime alone is left to the second read (the chunks), compared with this one.
        stable: size == stamp.size && stamp.stable(&Stamp::of(&file.metadata()?), true),
    };
    Ok((file, scanned))
}

/// Reads chunk `no` of `size`-byte file (short only for the last chunk).
fn read_chunk(file: &File, size: u64, no: u64) -> std::io::Result<Vec<u8>> {
    let len = expected_len(size, no as u32).unwrap_or(0);
    let mut body = vec![0u8; len];
    file.read_exact_at(&mut body, no * CHUNK_SIZE as u64)?;
    Ok(body)
}

/// Backs up the file at `path`, which the daemon opens itself (a watched file, or one it
/// repairs): below its watched folder (or `/`) no symlink is followed, so a user who owns a
/// folder there cannot swap in a link to a file it may not read.
pub(crate) async fn backup_file(
    node: &Arc<Node>,
    path: &Path,
    desired: u8,
) -> Result<BackupReport, BackupError> {
    let base = node
        .config()
        .watch_of(path)
        .map_or(PathBuf::from("/"), |w| w.path.clone());
    let file = spawn_blocking({
        let path = path.to_path_buf();
        move || fsx::open_under(&base, &path, fsx::Kind::File)
    })
    .await??;
    backup_handle(node, path, file, desired).await
}

/// Backs up the open file `file` under the name `path`.
pub(crate) async fn backup_handle(
    node: &Arc<Node>,
    path: &Path,
    file: File,
    desired: u8,
) -> Result<BackupReport, BackupError> {
    let rd = Rd::new(desired).unwrap_or_else(|| Rd::new(1).expect("1 is a valid RD"));
    tracing::debug!("reading {} to back it up", path.display());
    let (file, scanned) = spawn_blocking(move || scan_file(file)).await??;
    if !scanned.stable {
        // Being written: what was read is no version of the file. Nothing was recorded.
        return Err(BackupError::Changed);
    }
    let chunks = chunk_count(scanned.size);
    if chunks > u64::from(crate::protocol::message::MAX_CHUNK_NO) + 1 {
        return Err(BackupError::TooLarge);
    }
    let file_id = FileIdentity {
        peer: node.id,
        path: path.as_os_str().as_bytes(),
        size: scanned.size,
        mtime_ns: scanned.mtime_ns,
        content_hash: &scanned.content_hash,
    }
    .file_id();
    let row = FileRow {
        file_id: file_id.clone(),
        path: path.to_path_buf(),
        version: 0,
        size: scanned.size,
        mtime_ns: scanned.mtime_ns,
        mode: scanned.mode,
        content_hash: scanned.content_hash.clone(),
        desired_rd: rd.get(),
        complete: false,
        inode: scanned.inode,
        uid: scanned.uid,
        gid: scanned.gid,
        deleted_at: None,
        ctime_ns: scanned.stamp.ctime_ns,
    };
    // The same content backed up again is the same version: resume it (only chunks below
    // their RD are sent again), under the RD asked now. Either way the path exists: its
    // versions no longer expire as deleted.
    let backup = BackupId::new();
    let (version, resumed) = node
        .catalog
        .call(move |c| match c.file(&row.file_id)? {
            Some(existing) => {
                c.set_file_rd(&row.file_id, row.desired_rd)?;
                c.undelete(&row.file_id)?;
                Ok((existing.version, true))
            }
            None => Ok((c.insert_version(&row, backup)?, false)),
        })
        .await?;

    let file = Arc::new(file);
    // Reading, hashing and recording chunks runs ahead of sending them, a few batches deep.
    let (ready_tx, mut ready) = mpsc::channel::<Prepared>(2 * READ_BATCH);
    let reader = tokio::spawn(prepare_chunks(
        node.clone(),
        file.clone(),
        file_id.clone(),
        scanned.size,
        resumed,
        ready_tx,
    ));
    let mut window = Window::new(WINDOW_INITIAL, WINDOW_MIN, WINDOW_MAX);
    let mut heard = std::collections::HashSet::new();
    let first_round = Arc::new(FirstRoundCount::default());
    let mut in_flight: JoinSet<Outcome> = JoinSet::new();
    let (mut sent, mut below, mut resent) = (0u64, 0u64, 0u64);
    let mut reading = true;
    while reading || !in_flight.is_empty() {
        let room = first_round.get() < window.size() && in_flight.len() < MAX_CHUNKS_IN_BACKOFF;
        tokio::select! {
            next = ready.recv(), if reading && room => {
                let Some(p) = next else {
                    reading = false;
                    continue;
                };
                let chunk = ChunkId {
                    file_id: file_id.clone(),
                    chunk_no: p.chunk_no,
                };
                let resend = Resend::Reread {
                    file: file.clone(),
                    offset: u64::from(p.chunk_no.0) * CHUNK_SIZE as u64,
                    hash: p.hash,
                };
                let (node, guard) = (node.clone(), first_round.enter());
                in_flight.spawn(async move {
                    replicate_chunk(&node, &chunk, rd, p.body, resend, p.known, Some(guard)).await
                });
                sent += 1;
            }
            // A chunk left its first round: room in the window.
            _ = first_round.left.notified(), if reading && !room => {}
            Some(done) = in_flight.join_next() => {
                let o = done?;
                window.on_done(o.sends, o.reached, o.recovered_by_resend);
                heard.extend(o.holders.iter().copied().filter(|p| *p != node.id));
                resent += u64::from(o.sends.saturating_sub(1));
                if !o.reached {
                    below += 1;
                }
            }
        }
    }
    // The file must have stayed as it was scanned: same bytes, same size, mtime and ctime from
    // before the first read to after the last (a ctime that alone moved is judged by the bytes:
    // both reads agreed, or the rehash check fails). Otherwise it is still being written (a copy the
    // kernel makes in one call sends no event for its whole length): try again once quiet.
    let checked = match reader.await? {
        Err(e) => Err(e),
        Ok(_) if sent != chunks => Err(BackupError::Changed),
        Ok((rehash, after)) => {
            let same_content = rehash == scanned.content_hash;
            match same_content && scanned.stamp.stable(&after, same_content) {
                true => Ok(()),
                false => Err(BackupError::Changed),
            }
        }
    };
    if let Err(e) = checked {
        if matches!(e, BackupError::Changed) {
            abandon(node, path, &file_id, version, resumed, backup).await?;
        }
        return Err(e);
    }
    let (f, inode, ctime_ns) = (file_id.clone(), scanned.inode, scanned.stamp.ctime_ns);
    let recorded = node
        .catalog
        .call(move |c| {
            let complete = c.set_file_complete(&f)?;
            if complete {
                c.note_seen(&f, inode, ctime_ns)?;
            }
            Ok(complete)
        })
        .await?;
    if !recorded {
        return Err(BackupError::Deleted);
    }
    tracing::info!(
        "backed up {} ({chunks} chunks, {resent} PUTCHUNKs resent, window {})",
        shown(path),
        window.size()
    );
    Ok(BackupReport {
        version,
        size: scanned.size,
        chunks,
        below,
        peers_heard: heard.len(),
    })
}

/// A backup found the file changed while reading it. A version it resumed (complete or not) is
/// left exactly as it was; a version it inserted is forgotten (its chunks deleted from the peers)
/// — through `Catalog::forget`, which refuses anything else.
async fn abandon(
    node: &Arc<Node>,
    path: &Path,
    file_id: &FileId,
    version: u32,
    resumed: bool,
    backup: BackupId,
) -> Result<(), BackupError> {
    if resumed {
        tracing::info!(
            "{} changed while being read: its version {version} is left as it was",
            path.display()
        );
        return Ok(());
    }
    let f = file_id.clone();
    let forgotten = node
        .catalog
        .call(move |c| c.forget(&f, Forget::Abandoned { backup }))
        .await?;
    if forgotten {
        tracing::info!(
            "{} changed while being read: the version {version} begun is dropped",
            path.display()
        );
        tokio::spawn(send_pending_deletes(node.clone()));
    }
    Ok(())
}

/// How many chunks of a backup are in their first round (the window counts these).
#[derive(Default)]
struct FirstRoundCount {
    count: std::sync::atomic::AtomicUsize,
    left: tokio::sync::Notify,
}

impl FirstRoundCount {
    fn get(&self) -> usize {
        self.count.load(std::sync::atomic::Ordering::Acquire)
    }

    fn enter(self: &Arc<Self>) -> FirstRound {
        self.count.fetch_add(1, std::sync::atomic::Ordering::AcqRel);
        FirstRound(self.clone())
    }
}

/// Held by a chunk during its first round.
struct FirstRound(Arc<FirstRoundCount>);

impl Drop for FirstRound {
    fn drop(&mut self) {
        self.0
            .count
            .fetch_sub(1, std::sync::atomic::Ordering::AcqRel);
        self.0.left.notify_one();
    }
}

/// A chunk read, hashed and recorded in the catalog, ready to be sent.
struct Prepared {
    chunk_no: ChunkNo,
    body: Vec<u8>,
    hash: String,
    known: Vec<PeerId>,
}

/// Reads the file chunk by chunk, records each chunk's size and hash in the catalog (before its
/// first PUTCHUNK, so every STORED finds its chunk) and hands it on. Returns the content hash of
/// what it read, to be compared with the one the fileId was made from, and the file's stamp
/// right after the last read. A chunk recorded before with other bytes (a resumed version, and
/// the file changed since) stops it with `Changed` before that chunk is recorded or sent.
async fn prepare_chunks(
    node: Arc<Node>,
    file: Arc<File>,
    file_id: FileId,
    size: u64,
    resumed: bool,
    ready: mpsc::Sender<Prepared>,
) -> Result<(String, Stamp), BackupError> {
    let chunks = chunk_count(size);
    let mut rehash = Sha256::new();
    let mut next = 0u64;
    while next < chunks {
        let batch = (READ_BATCH as u64).min(chunks - next);
        let (bodies, hashes) = spawn_blocking({
            let (file, first) = (file.clone(), next);
            move || -> std::io::Result<_> {
                let bodies = (first..first + batch)
                    .map(|no| read_chunk(&file, size, no))
                    .collect::<std::io::Result<Vec<_>>>()?;
                let hashes: Vec<String> = bodies.iter().map(|b| sha256_hex(b)).collect();
                Ok((bodies, hashes))
            }
        })
        .await??;
        let rows: Vec<(ChunkNo, u64, String)> = bodies
            .iter()
            .zip(&hashes)
            .enumerate()
            .map(|(i, (b, h))| {
                rehash.update(b);
                (ChunkNo((next + i as u64) as u32), b.len() as u64, h.clone())
            })
            .collect();
        let f = file_id.clone();
        let known = node
            .catalog
            .call(move |c| {
                let mut known = Vec::with_capacity(rows.len());
                for (no, size, hash) in &rows {
                    if !c.record_file_chunk(&f, *no, *size, hash)? {
                        break;
                    }
                    known.push(if resumed {
                        c.holders(&f, *no)?
                    } else {
                        Vec::new()
                    });
                }
                Ok(known)
            })
            .await?;
        let same = known.len() == bodies.len();
        // Chunks up to the first one that differs are as recorded: they may still be sent.
        for ((body, hash), known) in bodies.into_iter().zip(hashes).zip(known) {
            let p = Prepared {
                chunk_no: ChunkNo(next as u32),
                body,
                hash,
                known,
            };
            if ready.send(p).await.is_err() {
                return Err(BackupError::Changed);
            }
            next += 1;
        }
        if !same {
            return Err(BackupError::Changed);
        }
    }
    let after = spawn_blocking(move || file.metadata()).await??;
    Ok((hex(&rehash.finalize()), Stamp::of(&after)))
}

// ---- restore ------------------------------------------------------------------------------

/// GETCHUNKs in flight per restore: adapts like the backup window (a chunk that needed a
/// retransmission halves it).
const RESTORE_WINDOW_INITIAL: usize = 64;
const RESTORE_WINDOW_MAX: usize = 512;

/// Restores `row`, a version of `path` chosen by `restore_choice`, into `out`, a regular file
/// the caller opened for reading and writing (the caller gives it its owner, mode, mtime and
/// final name: see `Restored`).
pub(super) async fn restore(
    node: &Arc<Node>,
    path: PathBuf,
    row: FileRow,
    out: File,
    progress: &Progress,
) -> Done {
    report(
        progress,
        format!(
            "restoring {} version {} ({} bytes)",
            shown(&path),
            row.version,
            row.size
        ),
    );
    match restore_file(node, &row, out).await {
        Ok(()) => Done {
            code: exit::OK,
            message: format!(
                "restored {} version {} ({} bytes, content hash checked)",
                shown(&path),
                row.version,
                row.size
            ),
            data: serde_json::to_value(Restored {
                path: row.path,
                version: row.version,
                size: row.size,
                mode: row.mode,
                uid: row.uid,
                gid: row.gid,
                mtime_ns: row.mtime_ns,
            })
            .ok(),
        },
        Err(e) => Done::failed(format!("restore of {} failed: {e}", shown(&path))),
    }
}

/// The version a restore of `path` takes: `version`, or the newest complete one (the newest of
/// all when none is complete). A non-root caller (`owner`) may take only its own.
pub(super) async fn restore_choice(
    node: &Arc<Node>,
    path: &Path,
    version: Option<u32>,
    owner: Option<u32>,
) -> Result<FileRow, String> {
    let p = path.to_path_buf();
    let of_path = node
        .catalog
        .call(move |c| c.versions_of(&p))
        .await
        .map_err(|e| e.to_string())?;
    let row = match version {
        Some(n) => of_path.into_iter().find(|f| f.version == n),
        None => {
            let newest_complete = of_path.iter().rposition(|f| f.complete);
            let mut of_path = of_path;
            match newest_complete {
                Some(i) => Some(of_path.swap_remove(i)),
                None => of_path.pop(),
            }
        }
    };
    match row {
        Some(row) if owner.is_none_or(|uid| uid == row.uid) => Ok(row),
        Some(_) => Err(format!(
            "{} is not yours: you may restore only your own files",
            shown(path)
        )),
        None => Err(format!(
            "no backed-up version{} of {} (see `peerstash versions {}`)",
            version.map(|n| format!(" {n}")).unwrap_or_default(),
            shown(path),
            shown(path)
        )),
    }
}

#[derive(Debug, thiserror::Error)]
enum RestoreError {
    #[error("{0}")]
    Io(#[from] std::io::Error),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("{0} chunks could not be fetched from any peer (first: chunk {1}); are the holders running?")]
    Missing(usize, u32),
    #[error("the rebuilt file does not match the content hash recorded at backup")]
    HashMismatch,
    #[error("internal error: {0}")]
    Join(#[from] tokio::task::JoinError),
}

async fn restore_file(node: &Arc<Node>, row: &FileRow, out: File) -> Result<(), RestoreError> {
    let f = row.file_id.clone();
    let chunks = node.catalog.call(move |c| c.file_chunks(&f)).await?;
    if chunks.len() as u64 != chunk_count(row.size) {
        return Err(RestoreError::Missing(
            (chunk_count(row.size) as usize).saturating_sub(chunks.len()),
            chunks.len() as u32,
        ));
    }
    // Emptied, then sized: chunks of zeros are not written, so a sparse file stays sparse.
    let size = row.size;
    let out = spawn_blocking(move || -> std::io::Result<File> {
        out.set_len(0)?;
        out.set_len(size)?;
        Ok(out)
    })
    .await??;
    let out = Arc::new(out);
    fetch_all(node, row, chunks, &out).await?;
    let hash = row.content_hash.clone();
    spawn_blocking(move || finish_restore(&out, &hash)).await?
}

/// Checks the whole file's hash as written, and syncs it.
fn finish_restore(out: &File, hash: &str) -> Result<(), RestoreError> {
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    let mut offset = 0u64;
    loop {
        let n = out.read_at(&mut buf, offset)?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
        offset += n as u64;
    }
    if hex(&hasher.finalize()) != *hash {
        return Err(RestoreError::HashMismatch);
    }
    out.sync_all()?;
    Ok(())
}

async fn fetch_all(
    node: &Arc<Node>,
    row: &FileRow,
    chunks: Vec<(ChunkNo, u64, String, u32)>,
    out: &Arc<File>,
) -> Result<(), RestoreError> {
    let mut todo = chunks.into_iter();
    let mut in_flight: JoinSet<(u32, Result<(), u32>)> = JoinSet::new();
    let mut missing = Vec::new();
    let mut window = Window::new(RESTORE_WINDOW_INITIAL, WINDOW_MIN, RESTORE_WINDOW_MAX);
    loop {
        while in_flight.len() < window.size() {
            let Some((no, size, hash, _)) = todo.next() else {
                break;
            };
            let (node, out, file_id, file_size) =
                (node.clone(), out.clone(), row.file_id.clone(), row.size);
            in_flight.spawn(async move {
                let chunk = ChunkId {
                    file_id,
                    chunk_no: no,
                };
                let (sends, body) = fetch_chunk(&node, &chunk, file_size, size, &hash).await;
                let written = match body {
                    // A hole already reads as zeros.
                    Some(body) if body.iter().all(|b| *b == 0) => Ok(()),
                    Some(body) => {
                        let offset = u64::from(no.0) * CHUNK_SIZE as u64;
                        match spawn_blocking(move || out.write_all_at(&body, offset)).await {
                            Ok(Ok(())) => Ok(()),
                            _ => Err(no.0),
                        }
                    }
                    None => Err(no.0),
                };
                (sends, written)
            });
        }
        match in_flight.join_next().await {
            Some(Ok((sends, Ok(())))) => window.on_done(sends, true, sends > 1),
            Some(Ok((_, Err(no)))) => missing.push(no),
            Some(Err(e)) => return Err(e.into()),
            None => break,
        }
    }
    missing.sort_unstable();
    match missing.first() {
        Some(first) => Err(RestoreError::Missing(missing.len(), *first)),
        None => Ok(()),
    }
}

/// GETCHUNK until a CHUNK of the right length and hash arrives (a wrong one is ignored where it
/// is received: another holder may still send the right bytes).
async fn fetch_chunk(
    node: &Arc<Node>,
    chunk: &ChunkId,
    file_size: u64,
    size: u64,
    hash: &str,
) -> (u32, Option<Vec<u8>>) {
    if expected_len(file_size, chunk.chunk_no.0).is_none_or(|e| e as u64 != size) {
        return (0, None);
    }
    // Only bodies of this length and hash come through the subscription.
    let mut sub = node.subscribe_chunk(chunk, size, hash);
    let mut fetch = ChunkFetch::default();
    loop {
        match fetch.poll(std::time::Instant::now()) {
            FetchAction::SendGetChunk => {
                node.send(MessageKind::GetChunk {
                    chunk: chunk.clone(),
                })
                .await
            }
            FetchAction::WaitUntil(t) => {
                tokio::select! {
                    _ = tokio::time::sleep_until(t.into()) => {}
                    Some(body) = sub.rx.recv() => return (fetch.sends(), Some(body)),
                }
            }
            FetchAction::GaveUp => return (fetch.sends(), None),
        }
    }
}

// ---- versions, delete, state --------------------------------------------------------------

/// The versions of `path` (or below it); a non-root caller (`owner`) sees only its own.
pub(super) async fn versions(node: &Arc<Node>, path: PathBuf, owner: Option<u32>) -> Done {
    let p = path.clone();
    let rows = node
        .catalog
        .call(move |c| {
            c.versions(&p)?
                .into_iter()
                .filter(|f| owner.is_none_or(|uid| uid == f.uid))
                .map(|f| {
                    let min = c.min_perceived_rd(&f.file_id)?;
                    Ok(VersionInfo {
                        path: f.path,
                        version: f.version,
                        file_id: f.file_id.as_wire().to_owned(),
                        size: f.size,
                        mtime_ns: f.mtime_ns,
                        desired_rd: f.desired_rd,
                        complete: f.complete,
                        min_perceived_rd: min,
                    })
                })
                .collect::<Result<Vec<_>, StoreError>>()
        })
        .await;
    match rows {
        Ok(rows) if rows.is_empty() => {
            Done::failed(format!("no backed-up version of {}", shown(&path)))
        }
        Ok(rows) => Done {
            code: exit::OK,
            message: format!("{} versions", rows.len()),
            data: serde_json::to_value(rows).ok(),
        },
        Err(e) => e.into(),
    }
}

/// How often, and how far apart, a DELETE is sent: the network loses messages.
const DELETE_SENDS: u32 = 8;
const DELETE_SPACING: Duration = Duration::from_millis(300);

/// `peerstash delete PATH`: every version of PATH, or of every file below it, by the user's word.
pub(super) async fn delete(node: &Arc<Node>, path: PathBuf) -> Done {
    let p = path.clone();
    let forgotten = node
        .catalog
        .call(move |c| {
            let mut n = 0;
            for f in c.versions(&p)? {
                n += usize::from(c.forget(&f.file_id, Forget::UserDelete)?);
            }
            Ok(n)
        })
        .await;
    match forgotten {
        Ok(0) => Done::failed(format!("no backed-up version of {}", shown(&path))),
        Ok(n) => {
            send_pending_deletes(node.clone()).await;
            Done::ok(format!(
                "deleted {n} backed-up versions of {} from the peers",
                shown(&path)
            ))
        }
        Err(e) => e.into(),
    }
}

/// Why the versions of one path are forgotten by a folder's policy.
#[derive(Clone, Copy, Debug)]
pub(crate) enum Policy {
    /// After a new version completed: all but the newest `keep` complete versions go (and
    /// unfinished versions older than the newest complete one).
    KeepVersions(u32),
    /// The path is gone (checked again just before) and was counted absent at least
    /// `keep_deleted_ms` while its folder was available.
    Expired { keep_deleted_ms: i64 },
}

/// Applies a folder's policy to the versions of exactly `path` (never to files below it, should
/// it be a folder now) and tells the peers to delete what was forgotten. Each version goes
/// through `Catalog::forget`, which refuses what the policy does not allow. Returns how many
/// versions were forgotten.
pub(crate) async fn forget_versions(
    node: &Arc<Node>,
    path: &Path,
    policy: Policy,
) -> Result<usize, StoreError> {
    let p = path.to_path_buf();
    let n = node
        .catalog
        .call(move |c| {
            let rows = c.versions_of(&p)?; // oldest first
            let doomed: Vec<(FileId, Forget)> = match policy {
                Policy::KeepVersions(keep) => {
                    let mut complete_seen = 0u32;
                    let mut doomed = Vec::new();
                    for f in rows.iter().rev() {
                        if f.complete {
                            complete_seen += 1;
                            if complete_seen > keep.max(1) {
                                doomed.push(f.file_id.clone());
                            }
                        } else if complete_seen > 0 {
                            doomed.push(f.file_id.clone()); // superseded, never finished
                        }
                    }
                    doomed
                        .into_iter()
                        .map(|id| (id, Forget::KeepVersions { keep }))
                        .collect()
                }
                Policy::Expired { keep_deleted_ms } => rows
                    .into_iter()
                    .map(|f| (f.file_id, Forget::DeletedExpired { keep_deleted_ms }))
                    .collect(),
            };
            let mut forgotten = 0;
            for (id, why) in doomed {
                forgotten += usize::from(c.forget(&id, why)?);
            }
            Ok(forgotten)
        })
        .await?;
    if n > 0 {
        tracing::info!(
            "deleting {n} versions of {} from the peers ({policy:?})",
            shown(path)
        );
        send_pending_deletes(node.clone()).await;
    }
    Ok(n)
}

/// Sends DELETE for every version forgotten here (several times each), then clears them.
pub(crate) async fn send_pending_deletes(node: Arc<Node>) {
    let pending = match node.catalog.call(|c| c.pending_deletes()).await {
        Ok(p) => p,
        Err(e) => {
            tracing::error!("cannot list pending deletes: {e}");
            return;
        }
    };
    if pending.is_empty() {
        return;
    }
    for round in 0..DELETE_SENDS {
        if round > 0 {
            tokio::time::sleep(DELETE_SPACING).await;
        }
        for file_id in &pending {
            node.send(MessageKind::Delete {
                file_id: file_id.clone(),
            })
            .await;
        }
    }
    let _ = node
        .catalog
        .call(move |c| {
            pending
                .iter()
                .try_for_each(|f: &FileId| c.clear_pending_delete(f))
        })
        .await;
}

/// `peerstash check`: SQLite's full integrity check of the catalog.
pub(super) async fn check(node: &Arc<Node>) -> Done {
    match node.catalog.call(|c| c.integrity_check()).await {
        Ok(()) => Done::ok("the catalog is sound (integrity_check: ok)"),
        Err(e) => Done::failed(format!(
            "the catalog is damaged ({e}): stop the daemon, keep a copy of {}, move it away and run `peerstashd --rebuild-catalog`",
            node.config().peer.state_dir.join("catalog.db").display()
        )),
    }
}

/// The peer's state. A non-root caller (`owner`) sees only its own files, and what this peer
/// hosts for others only as totals (no fileIds).
pub(super) async fn state(node: &Arc<Node>, owner: Option<u32>) -> Done {
    let r = node
        .catalog
        .call(move |c| {
            let mut files = Vec::new();
            for f in c.all_files()? {
                if owner.is_some_and(|uid| uid != f.uid) {
                    continue;
                }
                let chunks = c
                    .file_chunks(&f.file_id)?
                    .into_iter()
                    .map(|(no, _, _, perceived)| ChunkState {
                        chunk_no: no.0,
                        perceived_rd: perceived,
                    })
                    .collect();
                files.push(FileState {
                    path: f.path,
                    file_id: f.file_id.as_wire().to_owned(),
                    version: f.version,
                    size: f.size,
                    desired_rd: f.desired_rd,
                    complete: f.complete,
                    chunks,
                });
            }
            let hosted = match owner {
                None => c.all_hosted()?,
                Some(_) => Vec::new(),
            };
            let stored = hosted
                .into_iter()
                .map(|(h, perceived)| StoredState {
                    file_id: h.file_id.as_wire().to_owned(),
                    chunk_no: h.chunk_no.0,
                    size: h.size,
                    desired_rd: h.desired_rd,
                    perceived_rd: perceived,
                })
                .collect();
            Ok((files, stored, c.queue_len()?))
        })
        .await;
    let (files, stored, queue_length) = match r {
        Ok(x) => x,
        Err(e) => return e.into(),
    };
    let usage = node.store.usage();
    let state = PeerState {
        peer_id: node.id.0,
        protocol: node.config().peer.protocol.clone(),
        quota_bytes: usage.quota,
        used_bytes: usage.used,
        files,
        stored,
        warnings: node.duplicate_id_warning().into_iter().collect(),
        queue_length,
        // The watched folders' paths are root's business.
        in_progress: match owner {
            None => node
                .in_progress
                .lock()
                .map(|s| s.iter().cloned().collect())
                .unwrap_or_default(),
            Some(_) => Vec::new(),
        },
        malformed_datagrams: node.counters.malformed.load(Ordering::Relaxed),
        busy_drops: node.counters.dropped_busy.load(Ordering::Relaxed),
        unauthenticated_datagrams: node.counters.unauthenticated.load(Ordering::Relaxed),
        queue_drops: node.counters.dropped_queue.load(Ordering::Relaxed),
        unavailable: match owner {
            None => node
                .unavailable
                .lock()
                .map(|u| {
                    u.iter()
                        .map(|(path, reason)| UnavailableFolder {
                            path: path.clone(),
                            reason: reason.clone(),
                        })
                        .collect()
                })
                .unwrap_or_default(),
            Some(_) => Vec::new(),
        },
        workers: node
            .workers
            .report(owner.is_none(), std::time::Instant::now()),
    };
    Done {
        code: exit::OK,
        message: String::new(),
        data: serde_json::to_value(state).ok(),
    }
}
