//! `peerstash status`: the first thing an admin types. One health line over the newest version
//! of every backed-up file (the degraded and at-risk ones by name), quota and use, the queue,
//! the last completed backup of each watched folder, the peers heard and lost, and the newest
//! catalog snapshot. A non-root caller sees its own files only, and no folders.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;

use super::Done;
use crate::control::{exit, FolderStatus, SnapshotInfo, StatusReport};
use crate::daemon::Node;
use crate::store::{health, Catalog, FileRow, Health, StoreError};

/// The newest complete version of each of our files (else its newest), catalog snapshots
/// aside; only `owner`'s files if given.
pub(crate) fn newest_versions(
    c: &Catalog,
    owner: Option<u32>,
) -> Result<BTreeMap<PathBuf, FileRow>, StoreError> {
    let snapshots: std::collections::HashSet<_> = c
        .snapshots()?
        .into_iter()
        .map(|s| s.file_id.key())
        .collect();
    let mut newest: BTreeMap<PathBuf, FileRow> = BTreeMap::new();
    for f in c.all_files()? {
        if owner.is_some_and(|uid| uid != f.uid) || snapshots.contains(&f.file_id.key()) {
            continue;
        }
        match newest.get(&f.path) {
            Some(kept) if kept.complete && !f.complete => {}
            _ => {
                newest.insert(f.path.clone(), f);
            }
        }
    }
    Ok(newest)
}

/// The health of the newest version of each of our files (`newest_versions`), with how many
/// of its chunks are below their desired RD.
pub(crate) fn newest_health(
    c: &Catalog,
    owner: Option<u32>,
) -> Result<Vec<(PathBuf, Health, u64)>, StoreError> {
    let mut out = Vec::new();
    for (path, f) in newest_versions(c, owner)? {
        let chunks = c.file_chunks(&f.file_id)?;
        let desired = u32::from(f.desired_rd);
        let below = chunks.iter().filter(|c| c.perceived_rd < desired).count() as u64;
        let h = health(f.desired_rd, chunks.iter().map(|c| c.perceived_rd));
        out.push((path, h, below));
    }
    Ok(out)
}

/// What `status` and the metrics read from the catalog in one call.
pub(crate) struct Overview {
    /// `newest_health`.
    pub health: Vec<(PathBuf, Health, u64)>,
    /// Each folder asked, with when a backup below it last completed (unix ms).
    pub folders: Vec<(PathBuf, Option<i64>)>,
    pub queue: u64,
    /// Other peers heard, and of those counted lost.
    pub peers: (u64, u64),
}

/// Our files' health (only `owner`'s if given), `folders`' last completed backups, the queue
/// and the peers.
pub(crate) fn overview(
    c: &Catalog,
    owner: Option<u32>,
    folders: Vec<PathBuf>,
) -> Result<Overview, StoreError> {
    let mut last = Vec::new();
    for path in folders {
        let t = c.last_completed_below(&path)?;
        last.push((path, t));
    }
    Ok(Overview {
        health: newest_health(c, owner)?,
        folders: last,
        queue: c.queue_len()?,
        peers: c.peers_heard_lost()?,
    })
}

pub(crate) async fn status(node: &Arc<Node>, owner: Option<u32>) -> Done {
    let watched: Vec<PathBuf> = node.config().watch.iter().map(|w| w.path.clone()).collect();
    let folders_asked = match owner {
        None => watched,
        Some(_) => Vec::new(),
    };
    let r = node
        .catalog
        .call(move |c| {
            let snapshot = match owner {
                None => c.newest_snapshot()?.map(SnapshotInfo::from),
                Some(_) => None,
            };
            Ok((overview(c, owner, folders_asked)?, snapshot))
        })
        .await;
    let (o, catalog_snapshot) = match r {
        Ok(x) => x,
        Err(e) => return e.into(),
    };
    let unavailable = node
        .unavailable
        .lock()
        .map(|u| u.clone())
        .unwrap_or_default();
    let usage = node.store.usage();
    let mut report = StatusReport {
        peer_id: node.id.0,
        files: o.health.len() as u64,
        healthy: 0,
        degraded: Vec::new(),
        at_risk: Vec::new(),
        quota_bytes: usage.quota,
        used_bytes: usage.used,
        queue_length: o.queue,
        folders: (o.folders.into_iter())
            .map(|(path, completed)| FolderStatus {
                unavailable: unavailable.get(&path).cloned(),
                last_backup_ms: node.last_backed_up(&path, completed),
                path,
            })
            .collect(),
        peers_heard: o.peers.0,
        peers_lost: o.peers.1,
        catalog_snapshot,
        warnings: node.duplicate_id_warning().into_iter().collect(),
    };
    for (path, h, _) in o.health {
        match h {
            Health::Healthy => report.healthy += 1,
            Health::Degraded { .. } => report.degraded.push(path),
            Health::AtRisk { .. } => report.at_risk.push(path),
        }
    }
    let code = match report.degraded.len() + report.at_risk.len() {
        0 => exit::OK,
        _ => exit::BELOW_RD,
    };
    Done {
        code,
        message: String::new(),
        data: serde_json::to_value(report).ok(),
    }
}
