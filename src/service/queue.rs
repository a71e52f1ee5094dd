//! The backup queue: paths to look at, kept in the catalog so the work survives a restart.
//! A few workers take due paths, back up what changed, apply the folder's version policy, note
//! files that are gone, and retry failures later with a growing delay.

use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::Notify;
use tokio::task::JoinSet;

use crate::config::WatchConfig;
use crate::daemon::jobs::{backup_file, forget_versions, BackupError};
use crate::daemon::Node;

/// Files backed up at once; each has its own window of chunks in flight.
const WORKERS: usize = 2;
/// Longest wait before a failed or under-replicated path is tried again.
const MAX_RETRY_DELAY: Duration = Duration::from_secs(3600);

pub fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

/// Queues paths (due now) and wakes the workers.
pub async fn enqueue(node: &Arc<Node>, wake: &Notify, paths: Vec<PathBuf>) {
    if paths.is_empty() {
        return;
    }
    let n = paths.len();
    let r = node
        .catalog
        .call(move |c| {
            let now = now_ms();
            paths.iter().try_for_each(|p| c.enqueue(p, now))
        })
        .await;
    match r {
        Ok(()) => {
            tracing::debug!("queued {n} paths");
            wake.notify_one();
        }
        Err(e) => tracing::error!("cannot queue {n} paths for backup: {e}"),
    }
}

/// Runs the workers for as long as the daemon runs.
pub async fn run(node: Arc<Node>, wake: Arc<Notify>) {
    let mut running: JoinSet<()> = JoinSet::new();
    loop {
        let free = WORKERS - running.len();
        if free > 0 {
            let busy = node
                .in_progress
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .clone();
            let due = node
                .catalog
                .call(move |c| c.due(now_ms(), WORKERS * 4))
                .await
                .unwrap_or_default();
            for (path, gen, attempts) in due.into_iter().filter(|d| !busy.contains(&d.0)).take(free)
            {
                node.in_progress
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .insert(path.clone());
                let node = node.clone();
                running.spawn(async move {
                    work_on(&node, &path, gen, attempts).await;
                    node.in_progress
                        .lock()
                        .unwrap_or_else(|e| e.into_inner())
                        .remove(&path);
                });
            }
        }
        let next_due = node.catalog.call(|c| c.next_due()).await.ok().flatten();
        let wait = next_due
            .map(|t| Duration::from_millis((t - now_ms()).clamp(50, 60_000) as u64))
            .unwrap_or(Duration::from_secs(60));
        tokio::select! {
            _ = wake.notified() => {}
            _ = tokio::time::sleep(wait) => {}
            Some(_) = running.join_next() => {}
        }
    }
}

/// What the queue does with one path.
async fn work_on(node: &Arc<Node>, path: &Path, gen: i64, attempts: u32) {
    let config = node.config();
    let Some(watch) = config.watch_of(path).cloned() else {
        // Not in a watched folder (backed up by hand, or no longer watched): only repaired.
        return repair_unwatched(node, path, gen).await;
    };
    if watch.excludes(&watch.exclude_set(), path) {
        return done(node, path, gen).await;
    }
    let meta = tokio::task::spawn_blocking({
        let path = path.to_path_buf();
        move || std::fs::symlink_metadata(path)
    })
    .await;
    match meta {
        Ok(Ok(meta)) if meta.is_file() => {
            if up_to_date(node, path, &meta, &watch).await {
                return done(node, path, gen).await;
            }
            match backup_file(node, path, watch.replication).await {
                Ok(r) if r.below == 0 => {
                    tracing::info!(
                        "backed up {} (version {}, {} bytes)",
                        path.display(),
                        r.version,
                        r.size
                    );
                    // The new version is fully replicated: older ones beyond the policy go.
                    if let Err(e) = forget_versions(node, path, watch.keep_versions as usize).await
                    {
                        tracing::error!("cannot delete old versions of {}: {e}", path.display());
                    }
                    done(node, path, gen).await
                }
                Ok(r) => {
                    tracing::warn!(
                        "{} is backed up but {} of {} chunks are below RD {}: will try again",
                        path.display(),
                        r.below,
                        r.chunks,
                        watch.replication
                    );
                    later(node, path, gen, attempts).await
                }
                Err(BackupError::Changed) => {
                    // Still being written: look again once it has been quiet.
                    let due = crate::service::queue::now_ms() + watch.quiet.as_millis() as i64;
                    let p = path.to_path_buf();
                    let _ = node
                        .catalog
                        .call(move |c| c.retry_later(&p, gen, due))
                        .await;
                }
                Err(e) => {
                    tracing::warn!("cannot back up {}: {e}", path.display());
                    later(node, path, gen, attempts).await
                }
            }
        }
        Ok(Ok(_)) | Ok(Err(_)) => gone(node, path, gen, &watch).await,
        Err(e) => tracing::error!("internal error looking at {}: {e}", path.display()),
    }
}

/// A file outside the watched folders is only brought back to its RD, if it is unchanged.
async fn repair_unwatched(node: &Arc<Node>, path: &Path, gen: i64) {
    let p = path.to_path_buf();
    let latest = node
        .catalog
        .call(move |c| c.latest(&p))
        .await
        .ok()
        .flatten();
    let meta = tokio::task::spawn_blocking({
        let path = path.to_path_buf();
        move || std::fs::symlink_metadata(path).ok()
    })
    .await
    .ok()
    .flatten();
    if let (Some(f), Some(meta)) = (latest, meta) {
        let mtime_ns = meta.mtime() * 1_000_000_000 + meta.mtime_nsec();
        if meta.is_file() && f.size == meta.len() && f.mtime_ns == mtime_ns {
            if let Err(e) = backup_file(node, path, f.desired_rd).await {
                tracing::warn!("cannot repair {}: {e}", path.display());
            }
        }
    }
    done(node, path, gen).await
}

/// Whether the newest version is this very file (same size, mtime and inode), complete and at
/// the folder's RD.
async fn up_to_date(
    node: &Arc<Node>,
    path: &Path,
    meta: &std::fs::Metadata,
    watch: &WatchConfig,
) -> bool {
    let p = path.to_path_buf();
    let latest = node
        .catalog
        .call(move |c| {
            let Some(f) = c.latest(&p)? else {
                return Ok(None);
            };
            let min = c.min_perceived_rd(&f.file_id)?;
            Ok(Some((f, min)))
        })
        .await;
    let Ok(Some((f, min_rd))) = latest else {
        return false;
    };
    let mtime_ns = meta.mtime() * 1_000_000_000 + meta.mtime_nsec();
    f.size == meta.len()
        && f.mtime_ns == mtime_ns
        && f.inode == meta.ino()
        && f.complete
        && f.deleted_at.is_none()
        && f.desired_rd == watch.replication
        && min_rd >= u32::from(watch.replication)
}

/// The local file is gone: its versions are kept for `keep_deleted`, then deleted.
async fn gone(node: &Arc<Node>, path: &Path, gen: i64, watch: &WatchConfig) {
    let p = path.to_path_buf();
    let now = now_ms() / 1000;
    match node.catalog.call(move |c| c.mark_deleted(&p, now)).await {
        Ok(n) if n > 0 => tracing::info!("{} was deleted locally", path.display()),
        Ok(_) => {}
        Err(e) => tracing::error!("cannot note that {} is gone: {e}", path.display()),
    }
    if watch.keep_deleted.is_zero() {
        if let Err(e) = forget_versions(node, path, 0).await {
            tracing::error!("cannot delete the versions of {}: {e}", path.display());
        }
    }
    done(node, path, gen).await
}

async fn done(node: &Arc<Node>, path: &Path, gen: i64) {
    let p = path.to_path_buf();
    if let Err(e) = node.catalog.call(move |c| c.dequeue(&p, gen)).await {
        tracing::error!("cannot update the queue for {}: {e}", path.display());
    }
}

async fn later(node: &Arc<Node>, path: &Path, gen: i64, attempts: u32) {
    let delay = retry_delay(attempts);
    let (p, due) = (path.to_path_buf(), now_ms() + delay.as_millis() as i64);
    let _ = node
        .catalog
        .call(move |c| c.retry_later(&p, gen, due))
        .await;
}

/// 30 s, doubling per failed attempt, at most an hour.
pub fn retry_delay(attempts: u32) -> Duration {
    (Duration::from_secs(30) * 2u32.saturating_pow(attempts.min(10))).min(MAX_RETRY_DELAY)
}

/// Expires the versions of files deleted locally longer than their folder's `keep_deleted` ago.
pub async fn expire_deleted(node: &Arc<Node>) {
    let Ok(deleted) = node.catalog.call(|c| c.deleted_paths()).await else {
        return;
    };
    let config = node.config();
    let now = now_ms() / 1000;
    for (path, since) in deleted {
        let Some(watch) = config.watch_of(&path) else {
            continue; // not watched (any more): kept until deleted by hand
        };
        if now - since >= watch.keep_deleted.as_secs() as i64 {
            match forget_versions(node, &path, 0).await {
                Ok(n) => tracing::info!(
                    "{} was deleted {}s ago: its {n} versions are deleted from the peers",
                    path.display(),
                    now - since
                ),
                Err(e) => tracing::error!("cannot expire {}: {e}", path.display()),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retry_delays_grow_and_are_capped() {
        assert_eq!(retry_delay(0), Duration::from_secs(30));
        assert_eq!(retry_delay(1), Duration::from_secs(60));
        assert_eq!(retry_delay(30), MAX_RETRY_DELAY);
    }
}
