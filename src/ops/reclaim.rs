//! `peerstash reclaim SIZE`: the hosting quota set now, and hosted chunks dropped (most
//! over-replicated first) until the used bytes fit; the peers are told with REMOVED. A chunk
//! that may be the last copy is handed on to another peer first (`engine::reclaim`).

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::oneshot;
use tokio::task::JoinSet;

use crate::daemon::inbox::Input;
use crate::daemon::quota;
use crate::daemon::{disk, Node};
use crate::engine::reclaim::{choose_victims, hand_on_first, Candidate, HandOnBudget};
use crate::protocol::ChunkId;
use crate::store::StoreError;

/// Chunks handed on at once (each is one chunk in memory and one backup in the engine).
const HAND_ON_AT_ONCE: usize = 8;
/// The engine gives up a hand-on after its five sends (about 31 s); this bounds the wait even
/// if its answer were lost.
const HAND_ON_WITHIN: Duration = Duration::from_secs(45);

/// What `reclaim` did: the quota set, the chunks dropped, the bytes hosted after.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Reclaimed {
    pub quota: u64,
    pub dropped: usize,
    pub used: u64,
}

/// `peerstash reclaim SIZE`: the quota set (kept in the catalog, with the configured one it
/// overrides) and hosted chunks dropped until the used bytes fit.
pub(crate) async fn reclaim(node: &Arc<Node>, quota: u64) -> Result<Reclaimed, StoreError> {
    let configured = node.config().storage.quota;
    (node.catalog)
        .set_metas(vec![
            (quota::SET_KEY, quota.to_string()),
            (quota::CONFIG_KEY, configured.to_string()),
        ])
        .await?;
    node.store.set_quota(quota);
    let dropped = reclaim_to_quota(node.clone()).await;
    let used = node.store.usage().used;
    Ok(Reclaimed {
        quota,
        dropped,
        used,
    })
}

/// Drops hosted chunks (most over-replicated first) until the used bytes fit the quota, and
/// tells the peers with REMOVED. Returns how many chunks were dropped.
pub(crate) async fn reclaim_to_quota(node: Arc<Node>) -> usize {
    let mut dropped = 0;
    let mut budget = HandOnBudget::default();
    // Writes under way when the quota was lowered may land after a pass: a few passes catch them.
    for _ in 0..3 {
        let usage = node.store.usage();
        let hosted = match node.catalog.all_hosted().await {
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
        let candidates: Vec<Candidate<_>> = hosted
            .into_iter()
            .map(|(row, perceived)| Candidate {
                key: (row.chunk_id(), row.desired_rd),
                // What dropping it gives back: its charge, as the used bytes count it.
                size: node.store.charge(row.size),
                desired_rd: u32::from(row.desired_rd),
                perceived_rd: perceived,
            })
            .collect();
        let candidates = candidates
            .into_iter()
            .map(|c| Candidate {
                key: (c.key.clone(), hand_on_first(&c)),
                size: c.size,
                desired_rd: c.desired_rd,
                perceived_rd: c.perceived_rd,
            })
            .collect();
        let victims = choose_victims(candidates, usage.used, usage.quota);
        if victims.is_empty() {
            break;
        }
        let mut handing: JoinSet<Option<((ChunkId, u8), bool)>> = JoinSet::new();
        let mut ready = Vec::new();
        for victim in victims {
            while handing.len() >= HAND_ON_AT_ONCE {
                if let Some(Ok(Some((chunk, taken)))) = handing.join_next().await {
                    budget.on_result(taken);
                    ready.push(chunk);
                }
            }
            if !victim.1 || !budget.may_try() {
                ready.push(victim.0);
                continue;
            }
            handing.spawn(hand_on(node.clone(), victim.0));
        }
        while let Some(done) = handing.join_next().await {
            if let Ok(Some((chunk, taken))) = done {
                budget.on_result(taken);
                ready.push(chunk);
            }
        }
        if !budget.may_try() {
            tracing::error!(
                "reclaim: no peer took the last copies handed on: the rest is dropped without waiting"
            );
        }
        for (chunk, _) in ready {
            match disk::unhost(&node, &chunk).await {
                Ok(true) => {
                    node.engine(Input::SendRemoved(chunk));
                    dropped += 1;
                }
                Ok(false) => {}
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

/// Hands a chunk that may be the last copy on to another peer (a PUTCHUNK of its home's fileId,
/// on the backup schedule) and waits, bounded, for a STORED. Returns the chunk and whether
/// another peer took it; either way it is then dropped (the quota is the admin's word), and
/// not taken is said loudly. None: the daemon is stopping; the chunk stays (the next start
/// reclaims again).
async fn hand_on(
    node: Arc<Node>,
    (chunk, desired): (ChunkId, u8),
) -> Option<((ChunkId, u8), bool)> {
    let taken = match disk::read_for_rebackup(&node, &chunk, desired.max(1)).await {
        None => false,
        Some((wire, rd, body, holders)) => {
            let (done, taken) = oneshot::channel();
            node.engine(Input::HandOn {
                chunk: wire,
                rd,
                body,
                others: holders,
                done,
            });
            match tokio::time::timeout(HAND_ON_WITHIN, taken).await {
                Ok(Ok(taken)) => taken,
                Ok(Err(_)) => return None, // the engine stopped
                Err(_) => false,
            }
        }
    };
    if taken {
        tracing::info!(
            "reclaim: chunk {chunk} may have been the last copy: handed on to another peer first"
        );
    } else {
        tracing::error!(
            "reclaim: chunk {chunk} may be the last copy and no peer took it (no room?): dropped as the quota says"
        );
    }
    Some(((chunk, desired), taken))
}
