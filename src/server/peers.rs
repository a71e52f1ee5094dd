//! `peerstash peers`: every other peer heard, counted lost, or holding chunks of ours, with what
//! it does for us and we for it. Names no path, so any caller may ask. When it was last heard
//! and what it speaks are told as heard since this daemon started (`daemon::heard`): a time
//! from before is shown as such, never as if heard now.

use std::sync::Arc;

use super::Done;
use crate::control::{exit, Answer, PeerInfo, PeersReport};
use crate::daemon::Node;

pub(crate) async fn peers(node: &Arc<Node>) -> Done {
    let rows = match node.catalog.peers_report().await {
        Ok(rows) => rows,
        Err(e) => return e.into(),
    };
    let since_start = match node.heard.lock() {
        Ok(s) => rows.iter().map(|r| s.get(r.id).copied()).collect(),
        Err(_) => vec![None; rows.len()],
    };
    let peers: Vec<PeerInfo> = (rows.into_iter().zip(since_start))
        .map(|(r, heard)| PeerInfo {
            id: r.id.0,
            protocol: heard.and_then(|h| h.protocol()).map(|v| v.to_string()),
            last_heard_ms: heard.map(|h| h.last_ms),
            heard_since_start: heard.is_some(),
            last_heard_before_start_ms: match heard {
                Some(_) => None,
                None => r.last_heard_ms,
            },
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
        data: Some(Answer::Peers(report)),
    }
}
