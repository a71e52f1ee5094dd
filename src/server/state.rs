//! `peerstash state`: the peer, its backed-up files with each chunk's perceived RD and the
//! file's health, and what it hosts. A non-root caller sees only its own files.

use std::path::PathBuf;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use crate::control::Answer;
use crate::control::{
    exit, ChunkState, FileState, PeerState, SnapshotInfo, StoredState, UnavailableFolder,
};
use crate::daemon::Node;
use crate::ops::Done;

/// The peer's state. A non-root caller (`owner`) sees only its own files, and what this peer
/// hosts for others only as totals (no fileIds). With `below`, only the versions of paths at or
/// below it (whole components: `/a/b` is below `/a`, `/ab` is not), and no hosted chunks.
pub(crate) async fn state(node: &Arc<Node>, owner: Option<u32>, below: Option<PathBuf>) -> Done {
    let r = node
        .catalog
        .read(move |c| {
            let mut files = Vec::new();
            for f in c.all_files()? {
                if owner.is_some_and(|uid| uid != f.uid) {
                    continue;
                }
                if below.as_ref().is_some_and(|b| !f.path.starts_with(b)) {
                    continue;
                }
                let chunks = c
                    .file_chunks(&f.file_id)?
                    .into_iter()
                    .map(|c| ChunkState {
                        chunk_no: c.chunk_no.0,
                        perceived_rd: c.perceived_rd,
                    })
                    .collect();
                files.push(FileState::new(
                    f.path,
                    f.file_id.as_wire().to_owned(),
                    f.version,
                    f.size,
                    f.desired_rd,
                    f.complete,
                    chunks,
                ));
            }
            let hosted = match (owner, &below) {
                (None, None) => c.all_hosted()?,
                _ => Vec::new(),
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
            let snapshot = match owner {
                None => c.newest_snapshot()?.map(SnapshotInfo::from),
                Some(_) => None,
            };
            let waiting = owner.is_none() && crate::daemon::waits_for_recover(c)?;
            Ok((
                files,
                stored,
                c.queue_len()?,
                c.unacked_delete_count()?,
                (snapshot, waiting),
            ))
        })
        .await;
    let (files, stored, queue_length, unacked_deletes, (catalog_snapshot, waiting)) = match r {
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
        warnings: (node.duplicate_id_warning().into_iter())
            .chain(waiting.then(crate::daemon::wait_recover_warning))
            .collect(),
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
        unacked_deletes,
        catalog_snapshot,
    };
    Done {
        code: exit::OK,
        message: String::new(),
        data: Some(Answer::State(state)),
    }
}
