//! `peerstash restore PATH`: a version fetched chunk by chunk (GETCHUNK on the engine's
//! schedule, within its window) into the file the caller opened, then checked against the
//! content hash recorded at backup.

use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use sha2::{Digest, Sha256};
use tokio::task::{spawn_blocking, JoinSet};

use super::Done;
use crate::control::{exit, shown, Answer, RestoreAnswer, RestoreFailed, Restored, Unit};
use crate::daemon::inbox::{Input, JobEvent};
use crate::daemon::Node;
use crate::engine::peer::{Expect, JobKind};
use crate::ops::{meter, report, Progress};
use crate::protocol::seal::{Cut, FileKey};
use crate::protocol::{hex, ChunkId};
use crate::store::{FileChunkRow, FileRow, StoreError};

/// Chunk writes waiting to finish before more are started.
const MAX_PENDING_WRITES: usize = 64;

/// Restores the first of `rows` (versions of `path` chosen by `restore_choice`, best first)
/// that can be restored whole into `out`, a regular file the caller opened for reading and
/// writing (the caller gives it its owner, mode, mtime and final name: see `Restored`).
/// Versions whose every chunk has a known holder are tried first, newest first; a version
/// whose chunks cannot all be fetched gives way to the next. The answer says which version
/// was restored when it is not the first.
pub(crate) async fn restore(
    node: &Arc<Node>,
    path: PathBuf,
    rows: Vec<FileRow>,
    out: File,
    progress: &Progress,
) -> Done {
    let Some(first) = rows.first().map(|r| r.version) else {
        return Done::failed(format!("no backed-up version of {}", shown(&path)));
    };
    // Each version's chunk list is read again when it is tried: one at a time in memory.
    let mut whole = Vec::new();
    let mut unsure = Vec::new();
    for row in rows {
        match node.catalog.file_chunks(&row.file_id).await {
            Ok(chunks) if held_whole(&row, &chunks) => whole.push(row),
            Ok(_) => unsure.push(row),
            Err(e) => return Done::failed(format!("restore of {} failed: {e}", shown(&path))),
        }
    }
    let mut first_error = None;
    let out = Arc::new(out);
    for row in whole.into_iter().chain(unsure) {
        let chunks = match node.catalog.file_chunks(&row.file_id).await {
            Ok(chunks) => chunks,
            Err(e) => return Done::failed(format!("restore of {} failed: {e}", shown(&path))),
        };
        report(
            progress,
            format!(
                "restoring {} version {} ({} bytes)",
                shown(&path),
                row.version,
                row.size
            ),
        );
        match restore_file(node, &row, chunks, &out, progress).await {
            Ok(()) => return restored(&path, row, first),
            // Another version may still be whole on the peers.
            Err(e @ (RestoreError::Missing(..) | RestoreError::HashMismatch)) => {
                tracing::info!(
                    "restore of {} version {}: {e}; trying an older version",
                    shown(&path),
                    row.version
                );
                first_error.get_or_insert(e);
            }
            Err(RestoreError::DiskFull(e)) => {
                return Done {
                    code: exit::FAILED,
                    message: format!(
                        "disk full where the restore writes ({e}): free space and run the restore again"
                    ),
                    data: Some(Answer::Restore(RestoreAnswer::Failed(RestoreFailed {
                        disk_full: true,
                    }))),
                }
            }
            Err(e) => return Done::failed(format!("restore of {} failed: {e}", shown(&path))),
        }
    }
    let e = first_error.map_or_else(|| "no version to restore".to_owned(), |e| e.to_string());
    Done::failed(format!("restore of {} failed: {e}", shown(&path)))
}

/// Whether every chunk of `row` is recorded, with at least one known holder.
fn held_whole(row: &FileRow, chunks: &[FileChunkRow]) -> bool {
    chunks.len() as u64 == Cut::of(row.encrypted).count(row.size)
        && chunks.iter().all(|c| c.perceived_rd > 0)
}

/// The answer for a restored `row`; `first` is the version tried first (the newest complete).
fn restored(path: &Path, row: FileRow, first: u32) -> Done {
    let message = match row.version == first {
        true => format!(
            "restored {} version {} ({} bytes, content hash checked)",
            shown(path),
            row.version,
            row.size
        ),
        false => format!(
            "restored version {} of {}: version {first} is not whole on the peers ({} bytes, content hash checked)",
            row.version,
            shown(path),
            row.size
        ),
    };
    Done {
        code: exit::OK,
        message,
        data: Some(Answer::Restore(RestoreAnswer::Restored(Restored {
            path: row.path,
            version: row.version,
            size: row.size,
            mode: row.mode,
            uid: row.uid,
            gid: row.gid,
            mtime_ns: row.mtime_ns,
            not_whole: (row.version != first).then_some(first),
        }))),
    }
}

/// The versions a restore of `path` may take, best first: `version` alone, or the complete ones
/// newest first (the newest of all when none is complete). A non-root caller (`owner`) may take
/// only its own.
pub(crate) async fn restore_choice(
    node: &Arc<Node>,
    path: &Path,
    version: Option<u32>,
    owner: Option<u32>,
) -> Result<Vec<FileRow>, String> {
    // A non-root caller chooses among its own versions only, and is answered as if the others
    // did not exist: nothing tells it that another user backed up this path.
    let mut of_path: Vec<FileRow> = node
        .catalog
        .versions_of(path)
        .await
        .map_err(|e| e.to_string())?
        .into_iter()
        .filter(|f| owner.is_none_or(|uid| uid == f.uid))
        .collect();
    let rows: Vec<FileRow> = match version {
        Some(n) => of_path.into_iter().filter(|f| f.version == n).collect(),
        None => {
            let newest = of_path.pop();
            let mut complete: Vec<FileRow> =
                (newest.iter().cloned().chain(of_path.into_iter().rev()))
                    .filter(|f| f.complete)
                    .collect();
            if complete.is_empty() {
                complete.extend(newest);
            }
            complete
        }
    };
    match rows.is_empty() {
        false => Ok(rows),
        true => Err(format!(
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
    #[error("{0}")]
    DiskFull(std::io::Error),
    #[error("{0} chunks could not be fetched from any peer (first: chunk {1}); are the holders running?")]
    Missing(usize, u32),
    #[error("the rebuilt file does not match the content hash recorded at backup")]
    HashMismatch,
    #[error("the daemon stopped before this request ended; run the restore again once the daemon is back")]
    Stopping,
    #[error("this version is encrypted under master key {0} and this peer has no master key: put back the copy of that key you kept as peer.master_key_file and restart peerstashd")]
    NoMasterKey(String),
    #[error("this version is encrypted under master key {0}, and this peer runs with key {1}: put the key file with fingerprint {0} back as peer.master_key_file and restart peerstashd")]
    OtherKey(String, String),
    #[error(transparent)]
    Unsealed(#[from] crate::protocol::seal::Unsealed),
    #[error("internal error: {0}")]
    Join(#[from] tokio::task::JoinError),
}

async fn restore_file(
    node: &Arc<Node>,
    row: &FileRow,
    chunks: Vec<FileChunkRow>,
    out: &Arc<File>,
    progress: &Progress,
) -> Result<(), RestoreError> {
    let cut = Cut::of(row.encrypted);
    let key = match row.encrypted {
        true => {
            let needs = || {
                row.key_fp
                    .clone()
                    .unwrap_or_else(|| "(not recorded)".into())
            };
            let master = node
                .master_key()
                .ok_or_else(|| RestoreError::NoMasterKey(needs()))?;
            if let Some(needed) = row.key_fp.clone().filter(|fp| *fp != master.fingerprint()) {
                return Err(RestoreError::OtherKey(needed, master.fingerprint()));
            }
            Some(Arc::new(master.file_key(&row.file_id)))
        }
        false => None,
    };
    if chunks.len() as u64 != cut.count(row.size) {
        return Err(RestoreError::Missing(
            (cut.count(row.size) as usize).saturating_sub(chunks.len()),
            chunks.len() as u32,
        ));
    }
    // Emptied, then sized: chunks of zeros are not written, so a sparse file stays sparse.
    let size = row.size;
    let file = out.clone();
    spawn_blocking(move || -> std::io::Result<()> {
        file.set_len(0)?;
        file.set_len(size)
    })
    .await?
    .map_err(RestoreError::of_io)?;
    fetch_all(node, row, chunks, out, key, progress).await?;
    let (hash, out) = (row.content_hash.clone(), out.clone());
    spawn_blocking(move || finish_restore(&out, &hash)).await?
}

impl RestoreError {
    /// An I/O error of the file being written: a full disk (or quota) is said as such.
    fn of_io(e: std::io::Error) -> RestoreError {
        let full = [nix::libc::ENOSPC, nix::libc::EDQUOT];
        match e.raw_os_error().is_some_and(|n| full.contains(&n)) {
            true => RestoreError::DiskFull(e),
            false => RestoreError::Io(e),
        }
    }
}

/// Checks the whole file's hash as written, and syncs it.
fn finish_restore(out: &File, hash: &str) -> Result<(), RestoreError> {
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    let mut offset = 0u64;
    loop {
        let n = out.read_at(&mut buf, offset).map_err(RestoreError::of_io)?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
        offset += n as u64;
    }
    if hex(&hasher.finalize()) != *hash {
        return Err(RestoreError::HashMismatch);
    }
    out.sync_all().map_err(RestoreError::of_io)?;
    Ok(())
}

/// A chunk's write failed: a full disk ends the restore (no other chunk or version would fit);
/// another error counts the chunk as missing.
fn write_failed(e: std::io::Error) -> Result<(), RestoreError> {
    match RestoreError::of_io(e) {
        full @ RestoreError::DiskFull(_) => Err(full),
        other => {
            tracing::warn!("a restored chunk could not be written: {other}");
            Ok(())
        }
    }
}

/// Fetches every chunk within the credit the engine gives, and writes each where it belongs.
async fn fetch_all(
    node: &Arc<Node>,
    row: &FileRow,
    chunks: Vec<FileChunkRow>,
    out: &Arc<File>,
    key: Option<Arc<FileKey>>,
    progress: &Progress,
) -> Result<(), RestoreError> {
    let cut = Cut::of(key.is_some());
    let mut fetched = 0u64;
    let mut job = node.start_job(JobKind::Restore);
    let mut todo = chunks.into_iter();
    let mut writes: JoinSet<Result<(), (u32, std::io::Error)>> = JoinSet::new();
    let (mut credit, mut outstanding, mut missing) = (0usize, 0usize, Vec::new());
    loop {
        while credit > 0 {
            let Some(FileChunkRow {
                chunk_no: no,
                size,
                hash,
                ..
            }) = todo.next()
            else {
                break;
            };
            // A recorded length that the chunking rule does not allow: no CHUNK can be right.
            if cut
                .chunk_len(row.size, no.0)
                .is_none_or(|e| e as u64 != size)
            {
                missing.push(no.0);
                continue;
            }
            credit -= 1;
            outstanding += 1;
            let chunk = ChunkId {
                file_id: row.file_id.clone(),
                chunk_no: no,
            };
            node.engine(Input::FetchChunk {
                job: job.id,
                chunk,
                expect: Expect::bytes(size, hash),
            });
        }
        if outstanding == 0 && todo.len() == 0 {
            break;
        }
        let Some(event) = job.events.recv().await else {
            return Err(RestoreError::Stopping);
        };
        match event {
            JobEvent::Credit(n) => credit += n,
            JobEvent::Fetched(chunk, body) => {
                outstanding -= 1;
                let no = chunk.chunk_no.0;
                match body {
                    None => missing.push(no),
                    Some(body) => {
                        fetched += 1;
                        let done = (fetched * cut.piece()).min(row.size);
                        meter(progress, done, row.size, Unit::Bytes);
                        let (out, key) = (out.clone(), key.clone());
                        let offset = cut.offset(chunk.chunk_no);
                        // Its hash was checked against the catalog's: a chunk that does not
                        // decrypt then is under another master key.
                        let piece = match key {
                            Some(key) => key.open(chunk.chunk_no, &body)?,
                            None => body,
                        };
                        // A hole already reads as zeros.
                        if piece.iter().all(|b| *b == 0) {
                            continue;
                        }
                        writes.spawn_blocking(move || {
                            out.write_all_at(&piece, offset).map_err(|e| (no, e))
                        });
                        while writes.len() > MAX_PENDING_WRITES {
                            if let Some(Ok(Err((no, e)))) = writes.join_next().await {
                                write_failed(e)?;
                                missing.push(no);
                            }
                        }
                    }
                }
            }
            JobEvent::BackedUp(_) => {}
        }
    }
    while let Some(w) = writes.join_next().await {
        match w {
            Ok(Ok(())) => {}
            Ok(Err((no, e))) => {
                write_failed(e)?;
                missing.push(no);
            }
            Err(e) => return Err(e.into()),
        }
    }
    missing.sort_unstable();
    match missing.first() {
        Some(first) => Err(RestoreError::Missing(missing.len(), *first)),
        None => Ok(()),
    }
}
