//! `peerstash state`: the peer, its backed-up files with each chunk's perceived RD and the
//! file's health, and what it hosts. A non-root caller sees only its own files.

use std::path::PathBuf;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use super::Done;
use crate::control::Answer;
use crate::control::{
    exit, ChunkState, FileState, PeerState, SnapshotInfo, StoredState, UnavailableFolder,
};
use crate::daemon::Node;

/// The peer's state. A non-root caller (`owner`) sees only its own files, and what this peer
/// hosts for others only as totals (no fileIds). With `below`, only the versions of paths at or
/// below it (whole components: `/a/b` is below `/a`, `/ab` is not), and no hosted chunks.
pub(crate) async fn state(node: &Arc<Node>, owner: Option<u32>, below: Option<PathBuf>) -> Done {
    let v = match node.catalog.state_view(owner, below).await {
        Ok(v) => v,
        Err(e) => return e.into(),
    };
    let files = (v.files.into_iter())
        .map(|(f, chunks)| {
            let chunks = (chunks.into_iter())
                .map(|c| ChunkState {
                    chunk_no: c.chunk_no.0,
                    perceived_rd: c.perceived_rd,
                })
                .collect();
            FileState::new(
                f.path,
                f.file_id.as_wire().to_owned(),
                f.version,
                f.size,
                f.desired_rd,
                f.complete,
                chunks,
            )
        })
        .collect();
    let stored = (v.hosted.into_iter())
        .map(|(h, perceived)| StoredState {
            file_id: h.file_id.as_wire().to_owned(),
            chunk_no: h.chunk_no.0,
            size: h.size,
            desired_rd: h.desired_rd,
            perceived_rd: perceived,
        })
        .collect();
    let (queue_length, unacked_deletes) = (v.queue_len, v.unacked_deletes);
    let (catalog_snapshot, waiting) = (v.snapshot.map(SnapshotInfo::from), v.waits_recover);
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
