//! `peerstash restore PATH`: a version fetched chunk by chunk (GETCHUNK on the engine's
//! schedule, within its window) into the file the caller opened, then checked against the
//! content hash recorded at backup.

use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use sha2::{Digest, Sha256};
use tokio::task::{spawn_blocking, JoinSet};

use super::{meter, report, Done, Progress};
use crate::control::{exit, shown, Restored, Unit};
use crate::daemon::driver::{Input, JobEvent};
use crate::daemon::Node;
use crate::engine::peer::{Expect, JobKind};
use crate::protocol::seal::{Cut, FileKey};
use crate::protocol::{hex, ChunkId};
use crate::store::{FileChunkRow, FileRow, StoreError};

/// Chunk writes waiting to finish before more are started.
const MAX_PENDING_WRITES: usize = 64;

/// Restores `row`, a version of `path` chosen by `restore_choice`, into `out`, a regular file
/// the caller opened for reading and writing (the caller gives it its owner, mode, mtime and
/// final name: see `Restored`).
pub(crate) async fn restore(
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
    match restore_file(node, &row, out, progress).await {
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
pub(crate) async fn restore_choice(
    node: &Arc<Node>,
    path: &Path,
    version: Option<u32>,
    owner: Option<u32>,
) -> Result<FileRow, String> {
    let p = path.to_path_buf();
    // A non-root caller chooses among its own versions only, and is answered as if the others
    // did not exist: nothing tells it that another user backed up this path.
    let of_path: Vec<FileRow> = node
        .catalog
        .call(move |c| c.versions_of(&p))
        .await
        .map_err(|e| e.to_string())?
        .into_iter()
        .filter(|f| owner.is_none_or(|uid| uid == f.uid))
        .collect();
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
        Some(row) => Ok(row),
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
    out: File,
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
    let f = row.file_id.clone();
    let chunks = node.catalog.call(move |c| c.file_chunks(&f)).await?;
    if chunks.len() as u64 != cut.count(row.size) {
        return Err(RestoreError::Missing(
            (cut.count(row.size) as usize).saturating_sub(chunks.len()),
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
    fetch_all(node, row, chunks, &out, key, progress).await?;
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
    let mut writes: JoinSet<Result<(), u32>> = JoinSet::new();
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
                            out.write_all_at(&piece, offset).map_err(|_| no)
                        });
                        while writes.len() > MAX_PENDING_WRITES {
                            if let Some(Ok(Err(no))) = writes.join_next().await {
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
            Ok(Err(no)) => missing.push(no),
            Err(e) => return Err(e.into()),
        }
    }
    missing.sort_unstable();
    match missing.first() {
        Some(first) => Err(RestoreError::Missing(missing.len(), *first)),
        None => Ok(()),
    }
}
