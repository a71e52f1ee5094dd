//! Catalog snapshots (`store::snapshot`): taken after our own files changed (at most every
//! `SNAPSHOT_EVERY`) and at least daily, or now with `peerstash snapshot`; each is backed up
//! encrypted under its slot's fileId, and the ones a newer snapshot at its RD supersedes are
//! deleted from the peers.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use tokio::task::spawn_blocking;

use super::backup::{backup_handle_as, BackupError, Plan};
use super::delete::send_pending_deletes;
use super::Done;
use crate::daemon::{unix_now, Node};
use crate::protocol::seal::Slot;
use crate::store::snapshot::{self, superseded};
use crate::store::{io_disk_full, unix_ms, StoreError};
use crate::workers::Worker;

/// At most one snapshot per this while our files change, for a catalog of up to
/// `BYTES_PER_PERIOD`; a larger one waits a period more per `BYTES_PER_PERIOD` (a 50 MB catalog
/// of 100,000 files: about every 2 hours), so that snapshots send at most that much (times the
/// RD) per period, and never less often than `SLOWEST`.
pub const SNAPSHOT_EVERY: Duration = Duration::from_secs(600);
pub const BYTES_PER_PERIOD: u64 = 4_000_000;
pub const SLOWEST: Duration = Duration::from_secs(6 * 3600);
/// At least one per this while there is anything to recover (so the newest is found by the
/// anchors of the days the peer was up).
pub const SNAPSHOT_AT_LEAST: Duration = Duration::from_secs(86_400);
/// How often the worker looks whether one is due.
const LOOK_EVERY: Duration = Duration::from_secs(60);

#[derive(Debug, thiserror::Error)]
pub(crate) enum SnapshotError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("{0}")]
    Io(#[from] std::io::Error),
    #[error("catalog snapshots are encrypted and this peer has no master key, and cannot make one at {0}: make it with `peerstash keygen {0}` and restart peerstashd")]
    NoMasterKey(PathBuf),
    #[error("no snapshot slot is left today (256 are used): the next one is taken tomorrow")]
    NoSlot,
    #[error("the snapshot could not be backed up: {0}")]
    Backup(#[from] BackupError),
    #[error("internal error: {0}")]
    Join(#[from] tokio::task::JoinError),
    #[error("the disk of {0} is full: free some space there; the snapshot is taken again in {} minutes, or now with `peerstash snapshot`", SNAPSHOT_EVERY.as_secs() / 60)]
    DiskFull(PathBuf),
}

impl SnapshotError {
    fn is_disk_full(&self) -> bool {
        match self {
            SnapshotError::Store(e) | SnapshotError::Backup(BackupError::Store(e)) => {
                e.is_disk_full()
            }
            SnapshotError::Io(e) | SnapshotError::Backup(BackupError::Io(e)) => io_disk_full(e),
            _ => false,
        }
    }
}

/// A snapshot taken.
pub(crate) struct Taken {
    pub slot: Slot,
    pub bytes: u64,
    pub chunks: u64,
    /// Every chunk reached its RD.
    pub at_rd: bool,
    pub forgotten: usize,
}

/// The RD of the snapshots: the highest of the watched folders' (2 without any).
fn snapshot_rd(node: &Node) -> u8 {
    let config = node.config();
    (config.watch.iter().map(|w| w.replication).max()).unwrap_or(2)
}

/// The folder of snapshot files, in the state folder.
fn folder(node: &Node) -> PathBuf {
    node.config().peer.state_dir.join("snapshots")
}

fn file_of(node: &Node, slot: Slot) -> PathBuf {
    folder(node).join(format!("catalog-{}-{}.snap", slot.day, slot.n))
}

/// Takes a snapshot now, backs it up, and forgets the ones it supersedes.
pub(crate) async fn take(node: &Arc<Node>) -> Result<Taken, SnapshotError> {
    let _one = node.snapshotting.lock().await;
    take_locked(node).await.map_err(|e| match e.is_disk_full() {
        true => SnapshotError::DiskFull(node.config().peer.state_dir.clone()),
        false => e,
    })
}

async fn take_locked(node: &Arc<Node>) -> Result<Taken, SnapshotError> {
    let master = {
        let n = node.clone();
        spawn_blocking(move || n.master_key_or_make()).await?
    }
    .ok_or_else(|| SnapshotError::NoMasterKey(node.config().peer.master_key_file.clone()))?;
    let (last, changes) = node
        .catalog
        .call(|c| Ok((c.last_snapshot_slot()?, c.own_changes()?)))
        .await?;
    let slot = Slot::next(unix_now(), last).ok_or(SnapshotError::NoSlot)?;
    let file_id = master.snapshot_file_id(node.id, slot);
    {
        let f = file_id.clone();
        node.catalog
            .call(move |c| c.claim_snapshot(&f, slot))
            .await?;
    }
    let (dir, path) = (folder(node), file_of(node, slot));
    let live = node.config().peer.state_dir.join("catalog.db");
    let written = {
        let path = path.clone();
        spawn_blocking(move || -> Result<std::fs::File, SnapshotError> {
            use std::os::unix::fs::DirBuilderExt;
            std::fs::DirBuilder::new()
                .recursive(true)
                .mode(0o700)
                .create(&dir)?;
            let db = dir.join("catalog.db.tmp");
            let written = snapshot::write_database(&live, &db)
                .map_err(SnapshotError::from)
                .and_then(|()| Ok(snapshot::write_file(&db, &path)?));
            // Nothing half-written is left (on a full disk, it would keep it full).
            let _ = std::fs::remove_file(&db);
            if written.is_err() {
                let _ = std::fs::remove_file(&path);
            }
            written?;
            Ok(std::fs::File::open(&path)?)
        })
        .await?
    };
    let file = match written {
        Ok(file) => file,
        Err(e) => {
            let f = file_id.clone();
            if let Err(released) = node.catalog.call(move |c| c.release_snapshot(&f)).await {
                tracing::warn!(
                    "snapshot slot {}:{} stays used: {released}",
                    slot.day,
                    slot.n
                );
            }
            return Err(e);
        }
    };
    let plan = Plan {
        desired: snapshot_rd(node),
        encrypt: true,
    };
    let report = backup_handle_as(node, &path, file, plan, Some(file_id.clone()), None).await?;
    let at_rd = report.below == 0;
    let (f, now_ms, size) = (file_id.clone(), unix_ms(), report.size);
    let doomed = node
        .catalog
        .call(move |c| {
            if at_rd {
                c.set_snapshot_at_rd(&f)?;
            }
            c.set_meta("snapshot_changes", &changes)?;
            c.set_meta("snapshot_at_ms", &now_ms.to_string())?;
            c.set_meta("snapshot_bytes", &size.to_string())?;
            let rows = c.snapshots()?;
            let mut forgotten = Vec::new();
            for id in superseded(&rows) {
                let slot = rows.iter().find(|s| s.file_id == id).map(|s| s.slot);
                if c.forget_snapshot(&id, now_ms)? {
                    forgotten.extend(slot);
                }
            }
            Ok(forgotten)
        })
        .await?;
    let files: Vec<PathBuf> = doomed.iter().map(|s| file_of(node, *s)).collect();
    let _ = spawn_blocking(move || files.iter().for_each(|f| drop(std::fs::remove_file(f)))).await;
    if !doomed.is_empty() {
        send_pending_deletes(node.clone()).await;
    }
    tracing::info!(
        "catalog snapshot {}:{} backed up ({} bytes, {} chunks{}); {} older ones deleted",
        slot.day,
        slot.n,
        report.size,
        report.chunks,
        if at_rd {
            ", at its RD"
        } else {
            ", below its RD"
        },
        doomed.len()
    );
    Ok(Taken {
        slot,
        bytes: report.size,
        chunks: report.chunks,
        at_rd,
        forgotten: doomed.len(),
    })
}

/// `peerstash snapshot`: one now (before a computer is reinstalled, say).
pub(crate) async fn snapshot(node: &Arc<Node>) -> Done {
    match take(node).await {
        Ok(t) => Done::ok(format!(
            "catalog snapshot {}:{} backed up ({} bytes in {} encrypted chunks, {}); {} older snapshots deleted",
            t.slot.day,
            t.slot.n,
            t.bytes,
            t.chunks,
            if t.at_rd { "every chunk at its RD" } else { "some chunks below their RD: it is taken again later" },
            t.forgotten
        )),
        Err(e) => Done::failed(format!("catalog snapshot failed: {e}")),
    }
}

/// Whether a snapshot is due: our files changed since the last one and it is `interval` old,
/// or it is a day old; never while there is nothing of ours to recover.
fn due(own: u64, changed: bool, since_last_ms: Option<i64>, last_bytes: u64) -> bool {
    let age = |d: Duration| since_last_ms.is_none_or(|ms| ms >= d.as_millis() as i64);
    own > 0 && ((changed && age(interval(last_bytes))) || age(SNAPSHOT_AT_LEAST))
}

/// The least time between two snapshots taken for changes, after one of `bytes`.
fn interval(bytes: u64) -> Duration {
    let periods = bytes.div_ceil(BYTES_PER_PERIOD).max(1);
    (SNAPSHOT_EVERY.saturating_mul(periods.min(u32::MAX as u64) as u32)).min(SLOWEST)
}

/// The background worker that takes the snapshots when due.
pub(crate) async fn keep_taking(node: Arc<Node>, worker: Worker) {
    loop {
        tokio::time::sleep(LOOK_EVERY).await;
        let looked = node
            .catalog
            .call(|c| {
                Ok((
                    c.own_versions()?,
                    c.own_changes()?,
                    c.meta("snapshot_changes")?,
                    c.meta("snapshot_at_ms")?,
                    c.meta("snapshot_bytes")?,
                ))
            })
            .await;
        let (own, changes, last_changes, last_at, last_bytes) = match looked {
            Ok(l) => l,
            Err(e) => {
                worker.failed(&e.to_string(), None);
                continue;
            }
        };
        let since = last_at
            .and_then(|t| t.parse::<i64>().ok())
            .map(|t| unix_ms() - t);
        let last_bytes = last_bytes.and_then(|b| b.parse().ok()).unwrap_or(0);
        let changed = last_changes.as_deref() != Some(&changes);
        if !due(own, changed, since, last_bytes) {
            continue;
        }
        worker.busy("backing up a catalog snapshot", None);
        match take(&node).await {
            Ok(_) => worker.idle(),
            Err(e) => {
                tracing::error!("catalog snapshot failed: {e}");
                worker.failed(&e.to_string(), None);
                // Not every minute: the cause (a missing key, a full disk) takes a hand.
                tokio::time::sleep(SNAPSHOT_EVERY).await;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_snapshot_follows_changes_at_most_every_ten_minutes_and_at_least_daily() {
        let min = 60_000;
        let small = 300_000;
        assert!(
            !due(0, true, None, 0),
            "nothing of ours: nothing to recover"
        );
        assert!(due(3, true, None, 0), "never taken");
        assert!(!due(3, true, Some(5 * min), small));
        assert!(due(3, true, Some(10 * min), small));
        assert!(!due(3, false, Some(10 * min), small));
        assert!(due(3, false, Some(24 * 60 * min), small));
    }

    #[test]
    fn a_large_catalog_is_snapshotted_less_often_but_at_least_daily() {
        let min = 60_000;
        assert_eq!(interval(0), SNAPSHOT_EVERY);
        assert_eq!(interval(BYTES_PER_PERIOD), SNAPSHOT_EVERY);
        assert_eq!(interval(BYTES_PER_PERIOD + 1), 2 * SNAPSHOT_EVERY);
        // 50 MB (100,000 files): 13 periods, 130 minutes.
        assert_eq!(interval(50_000_000), Duration::from_secs(130 * 60));
        assert_eq!(interval(u64::MAX), SLOWEST);
        assert!(!due(3, true, Some(60 * min), 50_000_000));
        assert!(due(3, true, Some(130 * min), 50_000_000));
        assert!(
            due(3, false, Some(24 * 60 * min), u64::MAX),
            "daily whatever its size"
        );
    }
}
