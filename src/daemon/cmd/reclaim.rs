//! `peerstash reclaim SIZE`: the hosting quota set now, and hosted chunks dropped (most
//! over-replicated first) until the used bytes fit; the peers are told with REMOVED.

use std::sync::Arc;

use super::Done;
use crate::daemon::driver::Input;
use crate::daemon::{disk, Node};
use crate::engine::reclaim::{choose_victims, Candidate};
use crate::store::{CatalogHandle, StoreError};

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

pub(crate) async fn reclaim(node: &Arc<Node>, quota: u64) -> Done {
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
                key: row.chunk_id(),
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
