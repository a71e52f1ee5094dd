//! Catalog snapshots (`store::snapshot`): taken after our own files changed (at most every
//! `SNAPSHOT_EVERY`, within 15 seconds while an older version waits for one to name its
//! successor) and at least daily, or now with `peerstash snapshot`; each is backed up encrypted
//! under its number's fileId, and the ones a newer snapshot at its RD supersedes are deleted
//! from the peers. Once one reaches its RD, the older versions it makes safe to delete go
//! (`Forget::History`). None is taken on a reinstalled peer until `peerstash recover`.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::task::spawn_blocking;

use super::backup::{backup_handle_as, BackupError, Plan};
use super::delete::send_pending_deletes;
use super::delete::{forget_versions, Policy};
use crate::clock::unix_ms;
use crate::daemon::Node;
use crate::protocol::seal::SnapshotNo;
use crate::store::snapshot;
use crate::store::{io_disk_full, SnapshotLook, StoreError};
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
/// While an older version waits for a snapshot to name its successor (`Catalog::versions_held`):
/// one at most this often per `BYTES_PER_PERIOD` of catalog, not `SNAPSHOT_EVERY`.
const HELD_EVERY: Duration = Duration::from_secs(15);
/// How often the worker looks meanwhile (and at least this long after being woken).
const HELD_LOOK: Duration = Duration::from_secs(5);

#[derive(Debug, thiserror::Error)]
pub(crate) enum SnapshotError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("{0}")]
    Io(#[from] std::io::Error),
    #[error("catalog snapshots are encrypted and this peer has no master key, and cannot make one at {0}: make it with `peerstash keygen {0}` and restart peerstashd")]
    NoMasterKey(PathBuf),
    #[error("this peer was reinstalled (a new catalog, a master key not made on this computer): no catalog snapshot is taken until `peerstash recover` has installed the lost computer's catalog, or `peerstash recover --none` says there is none to recover")]
    WaitRecover,
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
    pub slot: SnapshotNo,
    pub bytes: u64,
    pub chunks: u64,
    /// Every chunk reached its RD.
    pub at_rd: bool,
    pub forgotten: usize,
    /// Earlier snapshots that had ended below their RD and reached it now.
    pub completed: usize,
}

/// The RD of the snapshots: the highest of the watched folders' (2 without any).
pub(crate) fn snapshot_rd(node: &Node) -> u8 {
    let config = node.config();
    (config.watch.iter().map(|w| w.replication).max()).unwrap_or(2)
}

/// The folder of snapshot files, in the state folder.
fn folder(node: &Node) -> PathBuf {
    node.config().peer.state_dir.join("snapshots")
}

fn file_of(node: &Node, slot: SnapshotNo) -> PathBuf {
    folder(node).join(match slot {
        SnapshotNo::Dated(s) => format!("catalog-{}-{}.snap", s.day, s.n),
        SnapshotNo::Numbered(n) => format!("catalog-n{n}.snap"),
    })
}

/// Takes a snapshot now (after sending again what the earlier ones below their RD miss), backs
/// it up, and forgets the ones it supersedes.
pub(crate) async fn take(node: &Arc<Node>) -> Result<Taken, SnapshotError> {
    let _one = node.snapshotting.lock().await;
    let taken = async {
        let completed = complete_locked(node).await?;
        Ok(Taken {
            completed,
            ..take_locked(node).await?
        })
    };
    taken.await.map_err(|e| explained(node, e))
}

/// Sends again what the kept snapshots that ended below their RD miss; how many reached it.
pub(crate) async fn complete(node: &Arc<Node>) -> Result<usize, SnapshotError> {
    let _one = node.snapshotting.lock().await;
    complete_locked(node).await.map_err(|e| explained(node, e))
}

fn explained(node: &Node, e: SnapshotError) -> SnapshotError {
    match e.is_disk_full() {
        true => SnapshotError::DiskFull(node.config().peer.state_dir.clone()),
        false => e,
    }
}

/// The kept snapshots below their RD (no peer, or too few, took them, or a holder lost them
/// since) get their missing chunks sent again from their files, oldest first. Among them may be a day's anchor:
/// a recover finds a day's snapshots by it, so an anchor that no peer took would hide the
/// whole day. One whose file is missing or cut short was never sent if it has no version row
/// yet (the daemon was killed while making it): its slot is given back. Else (a recovered
/// catalog's, whose files were lost with the computer) it is left until a newer one supersedes
/// it.
async fn complete_locked(node: &Arc<Node>) -> Result<usize, SnapshotError> {
    let desired = snapshot_rd(node);
    // Those that never reached their RD, and those that did and have lost a holder since (a
    // peer reclaimed its space, or was found wiped or lost): a copy counts only while it is
    // known to exist.
    let rows = node.catalog.snapshots_below_rd(desired).await?;
    let plan = Plan {
        desired,
        encrypt: true,
    };
    let mut completed = 0;
    for row in rows {
        let path = file_of(node, row.slot);
        let opened = {
            let path = path.clone();
            // Err: whether it is missing, and why it cannot be sent.
            spawn_blocking(move || -> Result<std::fs::File, (bool, String)> {
                let mut f = std::fs::File::open(path)
                    .map_err(|e| (e.kind() == std::io::ErrorKind::NotFound, e.to_string()))?;
                snapshot::check_file(&mut f).map_err(|why| (false, why))?;
                Ok(f)
            })
            .await?
        };
        let file = match opened {
            Ok(file) => file,
            Err((missing, why)) => {
                if node.catalog.release_snapshot(&row.file_id).await? {
                    let _ = spawn_blocking(move || std::fs::remove_file(path)).await;
                    tracing::info!(
                        "catalog snapshot {} was never sent ({why}): its number is free again",
                        row.slot
                    );
                } else if missing {
                    tracing::debug!(
                        "catalog snapshot {} below its RD has no file here: left as it is",
                        row.slot
                    );
                } else {
                    tracing::warn!(
                        "catalog snapshot {} below its RD is not sent again: {}: {why}",
                        row.slot,
                        path.display()
                    );
                }
                continue;
            }
        };
        let id = row.file_id.clone();
        let report = backup_handle_as(node, &path, file, plan, Some(id.clone()), None).await?;
        if report.below == 0 {
            node.catalog.set_snapshot_at_rd(&id).await?;
            completed += 1;
            tracing::info!("catalog snapshot {} reached its RD", row.slot);
        }
    }
    if completed > 0 {
        forget_superseded(node).await?;
        release_held(node).await;
    }
    Ok(completed)
}

/// Forgets the snapshots the kept ones supersede (`superseded`): their files here, and their
/// chunks on the peers (DELETE). Returns how many.
async fn forget_superseded(node: &Arc<Node>) -> Result<usize, SnapshotError> {
    let now_ms = unix_ms();
    let doomed = node.catalog.forget_superseded_snapshots(now_ms).await?;
    let files: Vec<PathBuf> = doomed.iter().map(|s| file_of(node, *s)).collect();
    let _ = spawn_blocking(move || files.iter().for_each(|f| drop(std::fs::remove_file(f)))).await;
    if !doomed.is_empty() {
        send_pending_deletes(node.clone()).await;
    }
    Ok(doomed.len())
}

/// The older versions that waited for a snapshot at its RD to name their successors, now
/// named: their folders' history applies to them (`Forget::History`).
async fn release_held(node: &Arc<Node>) {
    let held = node.catalog.held_since_pruned().await;
    let (paths, to) = match held {
        Ok(p) => p,
        Err(e) => return tracing::error!("cannot list the versions a snapshot now names: {e}"),
    };
    let config = node.config();
    for path in paths {
        let Some(watch) = config.watch_of(&path) else {
            continue; // backed up by hand: no policy deletes its versions
        };
        if let Err(e) = forget_versions(node, &path, Policy::history(watch)).await {
            tracing::error!("cannot delete old versions of {}: {e}", path.display());
        }
    }
    // Only once they were looked at (a kill before: looked at again next time).
    let noted = node.catalog.note_pruned(to).await;
    if let Err(e) = noted {
        tracing::warn!("cannot note which older versions were let go: {e}");
    }
}

async fn take_locked(node: &Arc<Node>) -> Result<Taken, SnapshotError> {
    if node.catalog.waits_for_recover().await? {
        return Err(SnapshotError::WaitRecover);
    }
    let master = {
        let n = node.clone();
        spawn_blocking(move || n.master_key_or_make()).await?
    }
    .ok_or_else(|| SnapshotError::NoMasterKey(node.config().peer.master_key_file.clone()))?;
    let (no, changes) = node.catalog.next_snapshot().await?;
    let slot = SnapshotNo::Numbered(no);
    let file_id = master.snapshot_no_file_id(node.id, slot);
    {
        let taken_ms = unix_ms();
        (node.catalog)
            .claim_snapshot(&file_id, slot, taken_ms)
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
            if let Err(released) = node.catalog.release_snapshot(&file_id).await {
                tracing::warn!("snapshot number {slot} stays used: {released}");
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
    let (now_ms, size) = (unix_ms(), report.size);
    (node.catalog)
        .snapshot_sent(&file_id, at_rd, changes, now_ms, size)
        .await?;
    let forgotten = forget_superseded(node).await?;
    if at_rd {
        release_held(node).await;
    }
    tracing::info!(
        "catalog snapshot {} backed up ({} bytes, {} chunks{}); {} older ones deleted",
        slot,
        report.size,
        report.chunks,
        if at_rd {
            ", at its RD"
        } else {
            ", below its RD"
        },
        forgotten
    );
    Ok(Taken {
        slot,
        bytes: report.size,
        chunks: report.chunks,
        at_rd,
        forgotten,
        completed: 0,
    })
}

/// Whether a snapshot is due: our files changed since the last one and it is `interval` old
/// (`held_interval` while an older version waits for one: `held`), or it is a day old; never
/// while there is nothing of ours to recover. A last one dated after now (the clock was set
/// back since) is as good as none: a clock never stops snapshots.
fn due(own: u64, changed: bool, held: bool, since_last_ms: Option<i64>, last_bytes: u64) -> bool {
    let age = |d: Duration| since_last_ms.is_none_or(|ms| ms < 0 || ms >= d.as_millis() as i64);
    let wait = match held {
        true => held_interval(last_bytes),
        false => interval(last_bytes),
    };
    own > 0 && ((changed && age(wait)) || age(SNAPSHOT_AT_LEAST))
}

/// The least time between two snapshots while an older version waits for one.
fn held_interval(bytes: u64) -> Duration {
    let periods = bytes.div_ceil(BYTES_PER_PERIOD).max(1);
    (HELD_EVERY.saturating_mul(periods.min(u32::MAX as u64) as u32)).min(SLOWEST)
}

/// The least time between two snapshots taken for changes, after one of `bytes`.
fn interval(bytes: u64) -> Duration {
    let periods = bytes.div_ceil(BYTES_PER_PERIOD).max(1);
    (SNAPSHOT_EVERY.saturating_mul(periods.min(u32::MAX as u64) as u32)).min(SLOWEST)
}

/// When the snapshots below their RD are sent again. What decides whether a try can succeed
/// is which snapshots are below and which peers are live: when either changed since the last
/// try (a holder lost or reclaimed, a peer back or new), the next look tries; otherwise the
/// tries space out, from `LOOK_EVERY` doubling to `SNAPSHOT_EVERY`, so that a LAN with no room
/// is not sent the same chunks every minute.
#[derive(Debug)]
struct CompletionPace {
    last: Option<(Instant, Situation)>,
    wait: Duration,
}

/// The snapshots below their RD (their fileIds) and the count of live peers.
type Situation = (Vec<String>, u64);

impl CompletionPace {
    fn new() -> CompletionPace {
        CompletionPace {
            last: None,
            wait: LOOK_EVERY,
        }
    }

    /// Whether to try now, in `situation`; a try is then recorded.
    fn try_now(&mut self, now: Instant, situation: Situation) -> bool {
        if situation.0.is_empty() {
            return false;
        }
        let due = match &self.last {
            None => true,
            Some((_, before)) if *before != situation => {
                self.wait = LOOK_EVERY;
                true
            }
            Some((at, _)) => {
                let due = now.saturating_duration_since(*at) >= self.wait;
                if due {
                    self.wait = (self.wait * 2).min(SNAPSHOT_EVERY);
                }
                due
            }
        };
        if due {
            self.last = Some((now, situation));
        }
        due
    }
}

/// The background worker that takes the snapshots when due, and meanwhile brings the ones that
/// ended below their RD to it.
pub(crate) async fn keep_taking(node: Arc<Node>, worker: Worker) {
    // A recovered catalog still lists the snapshots that the one it came from superseded (the
    // lost computer deleted them on the peers once it reached its RD), with holders that no
    // longer hold them: forgotten (DELETE sent again) before anything counts them. Otherwise
    // nothing to do.
    if let Err(e) = forget_superseded(&node).await {
        tracing::warn!("cannot forget the catalog snapshots a newer one supersedes: {e}");
    }
    let mut pace = CompletionPace::new();
    let mut look_in = LOOK_EVERY;
    loop {
        tokio::select! {
            _ = tokio::time::sleep(look_in) => {}
            _ = node.snapshot_wake.notified() => {}
        }
        // Woken at every version backed up: at most one look per HELD_LOOK all the same.
        tokio::time::sleep(HELD_LOOK).await;
        look_in = LOOK_EVERY;
        let looked = node.catalog.snapshot_look().await;
        let SnapshotLook {
            own,
            changes,
            last_changes,
            last_at,
            last_bytes,
            held,
            waiting,
        } = match looked {
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
        if held {
            look_in = HELD_LOOK;
        }
        if waiting {
            if own > 0 {
                worker.failed(&SnapshotError::WaitRecover.to_string(), None);
            }
            continue;
        }
        if !due(own, changed, held, since, last_bytes) {
            complete_in_background(&node, &worker, &mut pace).await;
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

/// `complete`, when there is anything below its RD and `pace` says so, reported on the worker.
async fn complete_in_background(node: &Arc<Node>, worker: &Worker, pace: &mut CompletionPace) {
    let desired = snapshot_rd(node);
    let situation = node.catalog.resend_situation(desired).await;
    let Ok(situation) = situation else { return };
    if !pace.try_now(Instant::now(), situation) {
        return;
    }
    worker.busy(
        "sending again what catalog snapshots below their RD miss",
        None,
    );
    match complete(node).await {
        Ok(_) => worker.idle(),
        Err(e) => {
            tracing::warn!("catalog snapshots below their RD: {e}");
            worker.failed(&e.to_string(), None);
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
            !due(0, true, false, None, 0),
            "nothing of ours: nothing to recover"
        );
        assert!(due(3, true, false, None, 0), "never taken");
        assert!(!due(3, true, false, Some(5 * min), small));
        assert!(due(3, true, false, Some(10 * min), small));
        assert!(!due(3, false, false, Some(10 * min), small));
        assert!(due(3, false, false, Some(24 * 60 * min), small));
        // An older version waits for a snapshot naming its successor: within 15 s.
        assert!(!due(3, true, true, Some(10_000), small));
        assert!(due(3, true, true, Some(15_000), small));
        // The last one is dated a year ahead (the clock was set back since): due now.
        assert!(due(3, true, false, Some(-365 * 24 * 60 * min), small));
        assert!(due(3, false, false, Some(-1), small));
    }

    #[test]
    fn snapshots_below_their_rd_are_tried_again_sooner_when_something_changed() {
        let t = Instant::now();
        let min = Duration::from_secs(60);
        let below = |ids: &[&str], live: u64| (ids.iter().map(|s| s.to_string()).collect(), live);
        let mut pace = CompletionPace::new();
        assert!(!pace.try_now(t, below(&[], 2)), "nothing below");
        assert!(pace.try_now(t, below(&["a"], 1)), "at the first look");
        // Nothing changed: 1, 2, 4, 8 minutes, then every 10.
        assert!(!pace.try_now(t + min / 2, below(&["a"], 1)));
        assert!(pace.try_now(t + min, below(&["a"], 1)));
        assert!(!pace.try_now(t + 2 * min, below(&["a"], 1)));
        assert!(pace.try_now(t + 3 * min, below(&["a"], 1)));
        assert!(!pace.try_now(t + 6 * min, below(&["a"], 1)));
        assert!(pace.try_now(t + 7 * min, below(&["a"], 1)));
        assert!(pace.try_now(t + 15 * min, below(&["a"], 1)));
        assert!(!pace.try_now(t + 24 * min, below(&["a"], 1)));
        assert!(pace.try_now(t + 25 * min, below(&["a"], 1)));
        // A peer back: at once, then a minute again.
        assert!(pace.try_now(t + 26 * min, below(&["a"], 2)));
        assert!(!pace.try_now(t + 26 * min + min / 2, below(&["a"], 2)));
        assert!(pace.try_now(t + 27 * min, below(&["a"], 2)));
        // Another snapshot lost a holder: at once.
        assert!(pace.try_now(t + 27 * min, below(&["a", "b"], 2)));
        // A clock read late never makes a try due.
        assert!(!pace.try_now(t, below(&["a", "b"], 2)));
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
        assert!(!due(3, true, false, Some(60 * min), 50_000_000));
        assert!(due(3, true, false, Some(130 * min), 50_000_000));
        assert!(!due(3, true, true, Some(3 * min), 50_000_000));
        assert!(due(3, true, true, Some(195_000), 50_000_000));
        assert!(
            due(3, false, false, Some(24 * 60 * min), u64::MAX),
            "daily whatever its size"
        );
    }
}
