//! The commands of the control socket, carried out by the daemon: backup, restore, versions,
//! delete, reclaim, state. Each returns a `Done` (exit code, one-line message, optional data)
//! and may report progress lines on the way.

use std::fs::File;
use std::io::Read;
use std::os::unix::fs::{FileExt, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use sha2::{Digest, Sha256};
use tokio::sync::mpsc;
use tokio::task::{spawn_blocking, JoinSet};

use super::peer::{remove_chunk_files, replicate_chunk, Outcome, Resend};
use super::Node;
use crate::control::{exit, ChunkState, FileState, PeerState, StoredState, VersionInfo};
use crate::engine::backup::Window;
use crate::engine::reclaim::{choose_victims, Candidate};
use crate::engine::restore::{expected_len, Action as FetchAction, ChunkFetch};
use crate::protocol::{
    chunk_count, hex, sha256_hex, ChunkId, ChunkNo, FileId, FileIdentity, MessageKind, PeerId, Rd,
    CHUNK_SIZE,
};
use crate::store::{CatalogHandle, FileRow, StoreError};

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

/// Backs up a file or every file below a folder; `owner`: only the files of that uid (a
/// non-root caller's), the others are skipped and counted.
pub(super) async fn backup(
    node: &Arc<Node>,
    path: PathBuf,
    rd: Option<u8>,
    owner: Option<u32>,
    progress: &Progress,
) -> Done {
    let files = match spawn_blocking({
        let path = path.clone();
        move || {
            list_files(&path).map(|files| {
                let all = files.len();
                let mine: Vec<PathBuf> = files
                    .into_iter()
                    .filter(|f| {
                        owner.is_none_or(|uid| {
                            std::fs::symlink_metadata(f).is_ok_and(|m| m.uid() == uid)
                        })
                    })
                    .collect();
                (all - mine.len(), mine)
            })
        }
    })
    .await
    {
        Ok(Ok((0, files))) => files,
        Ok(Ok((skipped, files))) => {
            report(
                progress,
                format!(
                    "skipped {skipped} files that are not yours below {}",
                    path.display()
                ),
            );
            if files.is_empty() {
                return Done::failed(format!(
                    "you may back up only files you own, and none below {} is yours",
                    path.display()
                ));
            }
            files
        }
        Ok(Err(e)) => return Done::failed(format!("cannot read {}: {e}", path.display())),
        Err(e) => return Done::failed(e.to_string()),
    };
    let (mut ok, mut below, mut failed) = (0usize, 0usize, 0usize);
    let mut last_error = String::new();
    for file in &files {
        let desired = rd.unwrap_or_else(|| default_rd(node, file));
        match backup_file(node, file, desired).await {
            Ok(r) => {
                let state = if r.below == 0 {
                    ok += 1;
                    format!("every chunk at RD ≥ {desired}")
                } else {
                    below += 1;
                    format!("{} of {} chunks below RD {desired}", r.below, r.chunks)
                };
                report(
                    progress,
                    format!(
                        "backed up {} (version {}, {} bytes, {} chunks): {state}",
                        file.display(),
                        r.version,
                        r.size,
                        r.chunks
                    ),
                );
            }
            Err(e) => {
                failed += 1;
                last_error = format!("{}: {e}", file.display());
                report(progress, format!("failed {last_error}"));
            }
        }
    }
    let summary = format!(
        "{} files: {ok} fully replicated, {below} below their desired RD, {failed} failed",
        files.len()
    );
    let code = if failed > 0 {
        exit::FAILED
    } else if below > 0 {
        exit::BELOW_RD
    } else {
        exit::OK
    };
    let message = if failed > 0 {
        format!("{summary} (last error: {last_error})")
    } else {
        summary
    };
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

/// Regular files at or below `path`, symlinks not followed.
fn list_files(path: &Path) -> std::io::Result<Vec<PathBuf>> {
    let meta = std::fs::symlink_metadata(path)?;
    if meta.is_file() {
        return Ok(vec![path.to_path_buf()]);
    }
    if !meta.is_dir() {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidInput,
            "not a regular file or a folder",
        ));
    }
    let mut files = Vec::new();
    let mut dirs = vec![path.to_path_buf()];
    while let Some(dir) = dirs.pop() {
        for entry in std::fs::read_dir(&dir)? {
            let entry = entry?;
            let kind = entry.file_type()?;
            if kind.is_dir() {
                dirs.push(entry.path());
            } else if kind.is_file() {
                files.push(entry.path());
            }
        }
    }
    files.sort();
    Ok(files)
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
    #[error("internal error: {0}")]
    Join(#[from] tokio::task::JoinError),
}

pub(crate) struct BackupReport {
    pub version: u32,
    pub size: u64,
    pub chunks: u64,
    pub below: u64,
}

struct Scanned {
    inode: u64,
    uid: u32,
    gid: u32,
    size: u64,
    mtime_ns: i64,
    mode: u32,
    content_hash: String,
}

fn scan_file(path: &Path) -> std::io::Result<(File, Scanned)> {
    let mut file = File::open(path)?;
    let meta = file.metadata()?;
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

pub(crate) async fn backup_file(
    node: &Arc<Node>,
    path: &Path,
    desired: u8,
) -> Result<BackupReport, BackupError> {
    let rd = Rd::new(desired).unwrap_or_else(|| Rd::new(1).expect("1 is a valid RD"));
    let (file, scanned) = spawn_blocking({
        let path = path.to_path_buf();
        move || scan_file(&path)
    })
    .await??;
    let chunks = chunk_count(scanned.size);
    if chunks > u64::from(crate::protocol::message::MAX_CHUNK_NO) + 1 {
        return Err(BackupError::TooLarge);
    }
    let path_text = path.to_string_lossy().into_owned();
    let file_id = FileIdentity {
        peer: node.id,
        path: &path_text,
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
    };
    // The same content backed up again is the same version: resume it (only chunks below
    // their RD are sent again), under the RD asked now.
    let (version, resumed) = node
        .catalog
        .call(move |c| match c.file(&row.file_id)? {
            Some(existing) => {
                c.set_file_rd(&row.file_id, row.desired_rd)?;
                Ok((existing.version, true))
            }
            None => Ok((c.insert_file(&row)?, false)),
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
                resent += u64::from(o.sends.saturating_sub(1));
                if !o.reached {
                    below += 1;
                }
            }
        }
    }
    let rehash = reader.await??;
    if sent != chunks {
        return Err(BackupError::Changed);
    }
    if rehash != scanned.content_hash {
        let f = file_id.clone();
        node.catalog.call(move |c| c.delete_file(&f)).await?;
        tokio::spawn(send_pending_deletes(node.clone()));
        return Err(BackupError::Changed);
    }
    let f = file_id.clone();
    node.catalog.call(move |c| c.set_file_complete(&f)).await?;
    tracing::info!(
        "backed up {} ({chunks} chunks, {resent} PUTCHUNKs resent, window {})",
        path.display(),
        window.size()
    );
    Ok(BackupReport {
        version,
        size: scanned.size,
        chunks,
        below,
    })
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
/// what it read, to be compared with the one the fileId was made from.
async fn prepare_chunks(
    node: Arc<Node>,
    file: Arc<File>,
    file_id: FileId,
    size: u64,
    resumed: bool,
    ready: mpsc::Sender<Prepared>,
) -> Result<String, BackupError> {
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
                    c.put_file_chunk(&f, *no, *size, hash)?;
                    known.push(if resumed {
                        c.holders(&f, *no)?
                    } else {
                        Vec::new()
                    });
                }
                Ok(known)
            })
            .await?;
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
    }
    Ok(hex(&rehash.finalize()))
}

// ---- restore ------------------------------------------------------------------------------

/// GETCHUNKs in flight per restore: adapts like the backup window (a chunk that needed a
/// retransmission halves it).
const RESTORE_WINDOW_INITIAL: usize = 64;
const RESTORE_WINDOW_MAX: usize = 512;

pub(super) async fn restore(
    node: &Arc<Node>,
    path: PathBuf,
    version: Option<u32>,
    to: Option<PathBuf>,
    force: bool,
    progress: &Progress,
) -> Done {
    let p = path.clone();
    let versions = match node.catalog.call(move |c| c.versions(&p)).await {
        Ok(v) => v,
        Err(e) => return e.into(),
    };
    let mut of_path: Vec<FileRow> = versions.into_iter().filter(|f| f.path == path).collect();
    let row = match version {
        Some(n) => of_path.into_iter().find(|f| f.version == n),
        None => of_path.pop(),
    };
    let Some(row) = row else {
        return Done::failed(format!(
            "no backed-up version{} of {} (see `peerstash versions {}`)",
            version.map(|n| format!(" {n}")).unwrap_or_default(),
            path.display(),
            path.display()
        ));
    };
    let (dest, exists) = {
        let (path, to) = (path.clone(), to.clone());
        match spawn_blocking(move || {
            let dest = restore_destination(&path, to.as_deref());
            let exists = std::fs::symlink_metadata(&dest).is_ok();
            (dest, exists)
        })
        .await
        {
            Ok(r) => r,
            Err(e) => return Done::failed(e.to_string()),
        }
    };
    if !force && exists {
        return Done::failed(format!(
            "{} exists: pass --force to overwrite it, or --to another place",
            dest.display()
        ));
    }
    report(
        progress,
        format!(
            "restoring {} version {} ({} bytes) to {}",
            path.display(),
            row.version,
            row.size,
            dest.display()
        ),
    );
    match restore_file(node, &row, &dest).await {
        Ok(()) => Done::ok(format!(
            "restored {} version {} to {} ({} bytes, content hash checked)",
            path.display(),
            row.version,
            dest.display(),
            row.size
        )),
        Err(e) => Done::failed(format!("restore of {} failed: {e}", path.display())),
    }
}

/// Where a restore writes: `to` (into it, when it is a folder), else the file's own path.
pub(crate) fn restore_destination(path: &Path, to: Option<&Path>) -> PathBuf {
    let dest = to.unwrap_or(path).to_path_buf();
    match path.file_name() {
        Some(name) if dest.is_dir() => dest.join(name),
        _ => dest,
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
    #[error(
        "the rebuilt file does not match the content hash recorded at backup; nothing was written"
    )]
    HashMismatch,
    #[error("internal error: {0}")]
    Join(#[from] tokio::task::JoinError),
}

async fn restore_file(node: &Arc<Node>, row: &FileRow, dest: &Path) -> Result<(), RestoreError> {
    let f = row.file_id.clone();
    let chunks = node.catalog.call(move |c| c.file_chunks(&f)).await?;
    if chunks.len() as u64 != chunk_count(row.size) {
        return Err(RestoreError::Missing(
            (chunk_count(row.size) as usize).saturating_sub(chunks.len()),
            chunks.len() as u32,
        ));
    }
    let dir = dest.parent().unwrap_or(Path::new("/")).to_path_buf();
    let name = dest
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let tmp = dir.join(format!(".{name}.peerstash-{:08x}", rand::random::<u32>()));
    let out = {
        let (tmp, size) = (tmp.clone(), row.size);
        spawn_blocking(move || -> std::io::Result<File> {
            let f = File::create(&tmp)?;
            f.set_len(size)?;
            Ok(f)
        })
        .await??
    };
    let out = Arc::new(out);
    let result = fetch_all(node, row, chunks, &out).await;
    let result = match result {
        Ok(()) => {
            let (tmp, dest, row) = (tmp.clone(), dest.to_path_buf(), row.clone());
            spawn_blocking(move || finish_restore(&out, &tmp, &dest, &row)).await?
        }
        Err(e) => Err(e),
    };
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result
}

/// Checks the whole file's hash, then gives it back its owner, group (when we may), mode and
/// mtime, and its final name.
fn finish_restore(out: &File, tmp: &Path, dest: &Path, row: &FileRow) -> Result<(), RestoreError> {
    let (hash, mode, mtime_ns) = (&row.content_hash, row.mode, row.mtime_ns);
    let mut hasher = Sha256::new();
    let mut reader = File::open(tmp)?;
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = reader.read(&mut buf)?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
    }
    if hex(&hasher.finalize()) != *hash {
        return Err(RestoreError::HashMismatch);
    }
    if nix::unistd::geteuid().is_root() {
        std::os::unix::fs::fchown(out, Some(row.uid), Some(row.gid))?;
    }
    out.set_permissions(std::fs::Permissions::from_mode(mode))?;
    let mtime = std::time::UNIX_EPOCH + Duration::from_nanos(mtime_ns.max(0) as u64);
    out.set_times(std::fs::FileTimes::new().set_modified(mtime))?;
    out.sync_all()?;
    std::fs::rename(tmp, dest)?;
    if let Some(dir) = dest.parent() {
        File::open(dir)?.sync_all()?;
    }
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

/// GETCHUNK until a CHUNK of the right length and hash arrives (a wrong one is ignored: another
/// holder may still send the right bytes).
async fn fetch_chunk(
    node: &Arc<Node>,
    chunk: &ChunkId,
    file_size: u64,
    size: u64,
    hash: &str,
) -> (u32, Option<Vec<u8>>) {
    let Some(expected) = expected_len(file_size, chunk.chunk_no.0).filter(|e| *e as u64 == size)
    else {
        return (0, None);
    };
    let mut sub = node.subscribe_chunk(chunk);
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
                    Some(body) = sub.rx.recv() => {
                        if body.len() == expected && sha256_hex(&body) == hash {
                            return (fetch.sends(), Some(body));
                        }
                        tracing::warn!("ignored a CHUNK {chunk} with wrong bytes");
                    }
                }
            }
            FetchAction::GaveUp => return (fetch.sends(), None),
        }
    }
}

// ---- versions, delete, state --------------------------------------------------------------

pub(super) async fn versions(node: &Arc<Node>, path: PathBuf) -> Done {
    let p = path.clone();
    let rows = node
        .catalog
        .call(move |c| {
            c.versions(&p)?
                .into_iter()
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
            Done::failed(format!("no backed-up version of {}", path.display()))
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

pub(super) async fn delete(node: &Arc<Node>, path: PathBuf) -> Done {
    match forget_versions(node, &path, 0).await {
        Ok(0) => Done::failed(format!("no backed-up version of {}", path.display())),
        Ok(n) => Done::ok(format!(
            "deleted {n} backed-up versions of {} from the peers",
            path.display()
        )),
        Err(e) => e.into(),
    }
}

/// Forgets every version of `path` (or below it) but the newest `keep`, and tells the peers to
/// delete their chunks. Returns how many versions were forgotten.
pub(crate) async fn forget_versions(
    node: &Arc<Node>,
    path: &Path,
    keep: usize,
) -> Result<usize, StoreError> {
    let p = path.to_path_buf();
    let n = node
        .catalog
        .call(move |c| {
            let mut rows = c.versions(&p)?;
            // Newest first within each path.
            rows.sort_by(|a, b| a.path.cmp(&b.path).then(b.version.cmp(&a.version)));
            let mut forgotten = 0;
            let mut kept_of_path = 0;
            let mut current: Option<PathBuf> = None;
            for f in rows {
                if current.as_ref() != Some(&f.path) {
                    current = Some(f.path.clone());
                    kept_of_path = 0;
                }
                if kept_of_path < keep {
                    kept_of_path += 1;
                    continue;
                }
                c.delete_file(&f.file_id)?;
                forgotten += 1;
            }
            Ok(forgotten)
        })
        .await?;
    if n > 0 {
        tracing::info!(
            "deleting {n} old versions of {} from the peers",
            path.display()
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

pub(super) async fn state(node: &Arc<Node>) -> Done {
    let r = node
        .catalog
        .call(|c| {
            let mut files = Vec::new();
            for f in c.all_files()? {
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
            let stored = c
                .all_hosted()?
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
        queue_length,
        in_progress: node
            .in_progress
            .lock()
            .map(|s| s.iter().cloned().collect())
            .unwrap_or_default(),
        malformed_datagrams: node.counters.malformed.load(Ordering::Relaxed),
        busy_drops: node.counters.dropped_busy.load(Ordering::Relaxed),
        queue_drops: node.counters.dropped_queue.load(Ordering::Relaxed),
    };
    Done {
        code: exit::OK,
        message: String::new(),
        data: serde_json::to_value(state).ok(),
    }
}
