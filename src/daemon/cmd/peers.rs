//! `peerstash peers`: every other peer heard, counted lost, or holding chunks of ours, with what
//! it does for us and we for it. Names no path, so any caller may ask.

use std::sync::Arc;

use super::Done;
use crate::control::{exit, PeerInfo, PeersReport};
use crate::daemon::Node;

pub(crate) async fn peers(node: &Arc<Node>) -> Done {
    let rows = match node.catalog.call(|c| c.peers_report()).await {
        Ok(rows) => rows,
        Err(e) => return e.into(),
    };
    let peers: Vec<PeerInfo> = rows
        .into_iter()
        .map(|r| PeerInfo {
            id: r.id.0,
            protocol: (!r.protocol.is_empty()).then_some(r.protocol),
            last_heard_ms: r.last_heard_ms,
            lost: r.lost_at_ms.is_some(),
            lost_at_ms: r.lost_at_ms,
            chunks_of_ours: r.chunks_of_ours,
            hosted_bytes: r.hosted_bytes,
            unacked_deletes: r.unacked_deletes,
        })
        .collect();
    let report = PeersReport {
        peer_id: node.id.0,
        peers,
    };
    Done {
        code: exit::OK,
        message: format!("{} peers", report.peers.len()),
        data: serde_json::to_value(report).ok(),
    }
}
