//! `peerstash scrub`: every hosted chunk read back and checked against the hash recorded when it
//! was stored. A missing or damaged copy is dropped and announced with REMOVED, so the peers that
//! know the chunk (its home peer, its other holders) make a new copy elsewhere (SPEC §2 "Space
//! reclaim"); one the disk cannot read now (EIO) is kept and reported. Run weekly by the
//! packages' timer (`peerstash-scrub.timer`).

use std::sync::Arc;

use tokio::task::spawn_blocking;

use super::Done;
use crate::daemon::disk;
use crate::daemon::inbox::Input;
use crate::daemon::Node;
use crate::ops::{report, Progress};
use crate::protocol::ChunkId;
use crate::store::HostedRow;

/// What a scrub found wrong with a hosted chunk.
enum Verdict {
    /// No good copy here (missing, wrong bytes): dropped, and REMOVED sent.
    Damaged(String),
    /// The disk did not answer: kept, as it may be fine on the next try.
    Unreadable(String),
}

/// Chunks read in one blocking task.
const BATCH: usize = 64;

pub(crate) async fn scrub(node: &Arc<Node>, progress: &Progress) -> Done {
    let total = match node.catalog.hosted_count().await {
        Ok(n) => n,
        Err(e) => return Done::failed(format!("cannot count the hosted chunks: {e}")),
    };
    let (mut checked, mut dropped, mut unreadable) = (0usize, 0usize, 0usize);
    let mut after: Option<ChunkId> = None;
    loop {
        // A page at a time: a large store is never listed whole in memory.
        let from = after.clone();
        let page = node.catalog.hosted_page(from, Some(BATCH)).await;
        let batch: Vec<HostedRow> = match page {
            Ok(rows) => rows.into_iter().map(|(row, _)| row).collect(),
            Err(e) => return Done::failed(format!("cannot list the hosted chunks: {e}")),
        };
        let Some(last) = batch.last() else {
            break;
        };
        after = Some(last.chunk_id());
        let batch_len = batch.len();
        let store = node.store.clone();
        // Read away from the runtime; the store checks each body against its slot's hash as
        // it reads, which is compared with the catalog's.
        let damaged = spawn_blocking(move || {
            batch
                .into_iter()
                .filter_map(|row| {
                    let verdict = match store.read_hashed(&row.file_id, row.chunk_no) {
                        Ok((body, _)) if body.len() as u64 != row.size => {
                            Verdict::Damaged(format!("{} bytes, not {}", body.len(), row.size))
                        }
                        Ok((_, hash)) if hash != row.hash => {
                            Verdict::Damaged("another hash".to_string())
                        }
                        Ok(_) => return None,
                        // Missing, or bytes that do not match their hash: no good copy here.
                        Err(e)
                            if matches!(
                                e.kind(),
                                std::io::ErrorKind::NotFound | std::io::ErrorKind::InvalidData
                            ) =>
                        {
                            Verdict::Damaged(e.to_string())
                        }
                        // The disk failed to answer (EIO, …): kept, for a scrub to try again.
                        Err(e) => Verdict::Unreadable(e.to_string()),
                    };
                    Some((row.chunk_id(), verdict))
                })
                .collect::<Vec<(ChunkId, Verdict)>>()
        })
        .await;
        let damaged = match damaged {
            Ok(d) => d,
            Err(e) => return Done::failed(format!("internal error: {e}")),
        };
        checked += batch_len;
        for (chunk, verdict) in damaged {
            let why = match verdict {
                Verdict::Damaged(why) => why,
                Verdict::Unreadable(e) => {
                    unreadable += 1;
                    tracing::error!("scrub: cannot read hosted chunk {chunk}: {e}");
                    report(progress, format!("cannot read {chunk} ({e}): kept"));
                    continue;
                }
            };
            match disk::unhost(node, &chunk).await {
                Ok(true) => {
                    node.engine(Input::SendRemoved(chunk.clone()));
                    dropped += 1;
                    tracing::warn!(
                        "scrub: hosted chunk {chunk} is damaged ({why}): dropped, REMOVED sent"
                    );
                    report(
                        progress,
                        format!("damaged {chunk} ({why}): dropped, REMOVED sent"),
                    );
                }
                Ok(false) => {} // gone meanwhile (deleted, reclaimed)
                Err(e) => return Done::failed(format!("cannot drop damaged chunk {chunk}: {e}")),
            }
        }
        if checked % (BATCH * 64) == 0 {
            report(
                progress,
                format!("checked {checked} of {total} hosted chunks"),
            );
        }
    }
    let mut message = format!(
        "checked {checked} hosted chunks: {} damaged{}",
        dropped,
        match dropped {
            0 => String::new(),
            _ =>
                ", dropped and announced with REMOVED (their other holders make new copies)".into(),
        }
    );
    if unreadable > 0 {
        message.push_str(&format!(
            "; {unreadable} could not be read (kept; see the log, check the disk, run scrub again)"
        ));
        return Done::failed(message);
    }
    Done::ok(message)
}
