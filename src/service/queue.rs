//! The backup queue: paths to look at, kept in the catalog so the work survives a restart.
//! A few workers take due paths, back up what changed, apply the folder's version policy, note
//! files that are gone, and retry failures later with a growing delay.

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use tokio::sync::Notify;
use tokio::task::JoinSet;

use crate::config::WatchConfig;
use crate::daemon::Node;
use crate::fsx::{self, Stamp};
use crate::ops::backup::{
    backup_file, backup_handle, standing, standing_of, BackupError, BackupReport, Plan, Standing,
    Why,
};
use crate::ops::delete::{forget_versions, Policy};
use crate::service::presence::{self, Absence, Presence};
use crate::shutdown::Shutdown;
use crate::store::catalog::FolderRow;
use crate::workers::Worker;

/// Files backed up at once; each has its own window of chunks in flight (a small file's
/// backup is mostly the wait for its STOREDs).
const WORKERS: usize = 64;
/// Longest wait before a failed or under-replicated path is tried again.
const MAX_RETRY_DELAY: Duration = Duration::from_secs(3600);
/// A file that does not fit on the peers is tried again after this long (or when it changes,
/// or on reload); meanwhile its chunks are not sent again and again.
const REFUSED_RETRY: Duration = Duration::from_secs(3600);
/// A file that found no room is tried again this soon once old versions were pruned for it.
const SPACE_RETRY: Duration = Duration::from_secs(3);
/// Refused files whose message `status` shows, at most (each is logged anyway).
pub const MAX_REFUSED: usize = 1000;

/// Queues paths (due now, changed now) and wakes the workers.
pub async fn enqueue(node: &Arc<Node>, wake: &Notify, paths: Vec<PathBuf>) {
    let now = crate::clock::unix_ms();
    enqueue_since(node, wake, paths.into_iter().map(|p| (p, now)).collect()).await
}

/// `enqueue`, each path with the unix ms of its first change not yet backed up (the watcher's
/// first event about it): from then on, its folder's `max_delay` runs.
pub async fn enqueue_since(node: &Arc<Node>, wake: &Notify, paths: Vec<(PathBuf, i64)>) {
    if paths.is_empty() {
        return;
    }
    let n = paths.len();
    let r = node
        .catalog
        .enqueue_since(paths, crate::clock::unix_ms())
        .await;
    match r {
        Ok(()) => {
            tracing::debug!("queued {n} paths");
            wake.notify_one();
        }
        Err(e) => tracing::error!("cannot queue {n} paths for backup: {e}"),
    }
}

/// Runs the workers until shutdown. Then backups under way are cut where they wait: their paths
/// stay queued as they were (neither done nor counted as a failed attempt), so the next start
/// backs them up again, and the same content resumes its version (only chunks below their RD
/// are sent).
pub async fn run(node: Arc<Node>, wake: Arc<Notify>, mut shutdown: Shutdown) {
    let slots: Vec<Arc<Worker>> = (1..=WORKERS)
        .map(|i| Arc::new(node.workers.register(format!("queue {i}"))))
        .collect();
    let mut free: Vec<usize> = (0..WORKERS).rev().collect();
    let mut running: JoinSet<()> = JoinSet::new();
    // Which slot each task holds, by task id (a task that panicked returns nothing).
    let mut slot_of: HashMap<tokio::task::Id, usize> = HashMap::new();
    loop {
        if !free.is_empty() {
            let busy = node
                .in_progress
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .clone();
            let due = node
                .catalog
                .due(crate::clock::unix_ms(), WORKERS * 4)
                .await
                .unwrap_or_default();
            let n = free.len();
            for (path, gen, attempts) in due.into_iter().filter(|d| !busy.contains(&d.0)).take(n) {
                let Some(slot) = free.pop() else { break };
                let guard = InProgress::mark(&node, &path);
                let (node, wake, worker) = (node.clone(), wake.clone(), slots[slot].clone());
                let task = running.spawn(async move {
                    worker.busy("backing up", Some(&path));
                    match work_on(&node, &wake, &path, gen, attempts).await {
                        Ok(()) => worker.idle(),
                        Err(error) => worker.failed(&error, Some(&path)),
                    }
                    drop(guard);
                });
                slot_of.insert(task.id(), slot);
            }
        }
        let next_due = node.catalog.next_due().await.ok().flatten();
        let wait = next_due
            .map(|t| Duration::from_millis((t - crate::clock::unix_ms()).clamp(50, 60_000) as u64))
            .unwrap_or(Duration::from_secs(60));
        tokio::select! {
            _ = shutdown.recv() => break,
            _ = wake.notified() => {}
            _ = tokio::time::sleep(wait) => {}
            Some(ended) = running.join_next_with_id() => {
                let (id, panicked) = match ended {
                    Ok((id, ())) => (id, None),
                    Err(e) => (e.id(), Some(format!("internal error: {e}"))),
                };
                if let Some(slot) = slot_of.remove(&id) {
                    if let Some(error) = panicked {
                        tracing::error!("backup queue: {error}");
                        slots[slot].failed(&error, None);
                    }
                    free.push(slot);
                }
            }
        }
    }
    let cut = running.len();
    // Aborted where they wait, and waited for.
    running.shutdown().await;
    if cut > 0 {
        tracing::info!("stopped {cut} backups under way: they resume at the next start");
    }
}

/// A path the queue is working on, shown in `state`; unmarked however its work ends (a task
/// aborted at shutdown included).
struct InProgress {
    node: Arc<Node>,
    path: PathBuf,
}

impl InProgress {
    fn mark(node: &Arc<Node>, path: &Path) -> InProgress {
        node.in_progress
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(path.to_path_buf());
        InProgress {
            node: node.clone(),
            path: path.to_path_buf(),
        }
    }
}

impl Drop for InProgress {
    fn drop(&mut self) {
        self.node
            .in_progress
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&self.path);
    }
}

/// How long ago the file last changed by its ctime (which every write moves and nobody can set
/// back), if that is less than `quiet`: a write no event told of (a long copy in one call, a
/// write through a hard link outside the folder) still makes the file wait out its quiet time.
fn changed_within(stamp: &Stamp, quiet: Duration) -> Option<Duration> {
    let age = crate::clock::unix_ms() * 1_000_000 - stamp.ctime_ns;
    // A ctime in the future (the clock was set back) says nothing: the read is checked anyway.
    (0..quiet.as_nanos() as i64)
        .contains(&age)
        .then(|| Duration::from_nanos(age as u64))
}

/// Whether a path whose oldest change not backed up was seen at `since` (unix ms; None: not
/// known) has waited its folder's `max_delay` at `now`: then it is backed up although it is not
/// quiet.
fn overdue(since: Option<i64>, now: i64, max_delay: Duration) -> bool {
    since.is_some_and(|since| now.saturating_sub(since) >= max_delay.as_millis() as i64)
}

/// Backs up a consistent copy of `path` (`service::copy`), under its name: for a file that
/// changed during every read and has waited its `max_delay`.
async fn backup_copy(
    node: &Arc<Node>,
    path: &Path,
    plan: Plan,
) -> Result<BackupReport, BackupError> {
    let config = node.config();
    let base = config
        .watch_of(path)
        .map_or(PathBuf::from("/"), |w| w.path.clone());
    let state_dir = config.peer.state_dir.clone();
    let p = path.to_path_buf();
    let copied = tokio::task::spawn_blocking(move || {
        let file = fsx::open_under(&base, &p, fsx::Kind::File)?;
        crate::service::copy::consistent_copy(&file, &state_dir)
    })
    .await??;
    let Some((copy, method)) = copied else {
        tracing::warn!(
            "{} changed during every read for its max_delay, and not only at its end: no consistent copy of it yet",
            path.display()
        );
        return Err(BackupError::Changed);
    };
    tracing::info!(
        "{} is never quiet: backing up a copy taken by {}",
        path.display(),
        method.word()
    );
    backup_handle(node, path, copy, plan).await
}

/// Records the folders from the watched folder `base` down to the backed-up file `path` as
/// they are now (`Catalog::note_folders`: only what changed is written), for `restore --all`
/// to give them back. A folder that cannot be looked at is left as last recorded.
async fn note_folders(node: &Arc<Node>, base: &Path, path: &Path) {
    let (b, p) = (base.to_path_buf(), path.to_path_buf());
    let found = tokio::task::spawn_blocking(move || fsx::folders_on_the_way(&b, &p)).await;
    let rows: Vec<FolderRow> = match found {
        Ok(Ok(found)) => (found.into_iter())
            .map(|(path, s)| FolderRow {
                path,
                uid: s.uid,
                gid: s.gid,
                mode: s.mode,
                mtime_ns: s.mtime_ns,
            })
            .collect(),
        Ok(Err(e)) => {
            tracing::debug!("cannot look at the folders above {}: {e}", path.display());
            return;
        }
        Err(_) => return,
    };
    if let Err(e) = node.catalog.note_folders(rows).await {
        tracing::warn!("cannot record the folders above {}: {e}", path.display());
    }
}

/// What the queue does with one path. Err: why it failed (the path is tried again later).
async fn work_on(
    node: &Arc<Node>,
    wake: &Notify,
    path: &Path,
    gen: i64,
    attempts: u32,
) -> Result<(), String> {
    tracing::debug!("looking at {} (attempt {})", path.display(), attempts + 1);
    let config = node.config();
    let Some(watch) = config.watch_of(path).cloned() else {
        // Not in a watched folder (backed up by hand, or no longer watched): only repaired.
        return repair_unwatched(node, path, gen).await;
    };
    if watch.excludes(&watch.exclude_set(), path) {
        done(node, path, gen).await;
        return Ok(());
    }
    if is_unavailable(node, &watch.path) {
        // Its disk is not mounted: nothing there is ours. Rescanned when it is back.
        done(node, path, gen).await;
        return Ok(());
    }
    let meta = tokio::task::spawn_blocking({
        let path = path.to_path_buf();
        move || std::fs::symlink_metadata(path)
    })
    .await;
    match meta {
        Ok(Ok(meta)) if meta.is_file() => {
            let stamp = Stamp::of(&meta);
            if up_to_date(node, path, &stamp, &watch).await {
                note_folders(node, &watch.path, path).await;
                done(node, path, gen).await;
                return Ok(());
            }
            let since = (node.catalog.queued_since(path).await).ok().flatten();
            // Changed for max_delay and never quiet: backed up now, from a consistent copy if
            // a read finds it changing.
            let overdue = overdue(since, crate::clock::unix_ms(), watch.max_delay);
            if let Some(age) = changed_within(&stamp, watch.quiet).filter(|_| !overdue) {
                let due = crate::clock::unix_ms() + (watch.quiet - age).as_millis() as i64 + 1;
                let _ = node.catalog.retry_later(path, gen, due).await;
                return Ok(());
            }
            if stamp.nlink > 1 {
                // A change made through this name is a change of the file's other names too,
                // and inotify tells only of this one.
                other_names(node, wake, path, stamp.inode, &watch).await;
            }
            let plan = Plan {
                desired: watch.replication,
                encrypt: watch.encrypt,
            };
            let backed_up = match backup_file(node, path, plan).await {
                Err(BackupError::Changed) if overdue => backup_copy(node, path, plan).await,
                other => other,
            };
            if backed_up.is_ok() {
                note_folders(node, &watch.path, path).await;
            }
            if let Some(r) = backed_up.as_ref().ok().filter(|r| r.changed) {
                note_change(node, &watch, path, r.turned_random).await;
            }
            match backed_up {
                Ok(r) if r.below == 0 => {
                    refused(node, path, None);
                    (node
                        .space_freed_for
                        .lock()
                        .unwrap_or_else(|e| e.into_inner()))
                    .remove(path);
                    tracing::info!(
                        "backed up {} (version {}, {} bytes)",
                        path.display(),
                        r.version,
                        r.size
                    );
                    // The new version is fully replicated: older ones beyond the policy go, once
                    // a catalog snapshot names it (taken soon: the snapshot worker is woken).
                    node.snapshot_wake.notify_one();
                    let policy = Policy::history(&watch);
                    let forgotten = forget_versions(node, path, policy).await;
                    if let Err(e) = &forgotten {
                        tracing::error!("cannot delete old versions of {}: {e}", path.display());
                    }
                    done(node, path, gen).await;
                    forgotten
                        .map(drop)
                        .map_err(|e| format!("cannot delete old versions: {e}"))
                }
                Ok(r) => {
                    tracing::warn!(
                        "{} is backed up but {} of {} chunks are below RD {}: will try again",
                        path.display(),
                        r.below,
                        r.chunks,
                        watch.replication
                    );
                    later(node, path, gen, attempts).await;
                    Err(format!(
                        "{} of {} chunks below RD {}",
                        r.below, r.chunks, watch.replication
                    ))
                }
                // The daemon is stopping (the engine is gone): the path stays queued as it
                // is, neither done nor a failed attempt, and resumes at the next start.
                Err(BackupError::Stopping) => Ok(()),
                Err(e @ BackupError::DoesNotFit { size }) => {
                    let message = format!("{}: {e}", path.display());
                    // The oldest history goes first, to make room for the new version.
                    let needed = size.saturating_mul(u64::from(watch.replication));
                    let retry = match make_room(node, path, needed).await {
                        true => SPACE_RETRY,
                        false => {
                            tracing::error!("{message}");
                            refused(node, path, Some(message.clone()));
                            REFUSED_RETRY
                        }
                    };
                    let due = crate::clock::unix_ms() + retry.as_millis() as i64;
                    let _ = node.catalog.retry_later(path, gen, due).await;
                    Err(message)
                }
                Err(BackupError::Changed) => {
                    // Still being written: look again once it has been quiet.
                    let due = crate::clock::unix_ms() + watch.quiet.as_millis() as i64;
                    let _ = node.catalog.retry_later(path, gen, due).await;
                    Ok(())
                }
                Err(e) => {
                    tracing::warn!("cannot back up {}: {e}", path.display());
                    later(node, path, gen, attempts).await;
                    Err(format!("cannot back up: {e}"))
                }
            }
        }
        Ok(Ok(_)) | Ok(Err(_)) => {
            gone(node, path, gen, &watch).await;
            Ok(())
        }
        Err(e) => {
            tracing::error!("internal error looking at {}: {e}", path.display());
            Err(format!("internal error: {e}"))
        }
    }
}

/// Queues the other names (in the same watched folder) of the hard-linked file `path`, as the
/// catalog knows them by the inode of their newest version.
async fn other_names(
    node: &Arc<Node>,
    wake: &Notify,
    path: &Path,
    inode: u64,
    watch: &WatchConfig,
) {
    let names = (node.catalog.latest_paths_with_inode(inode).await).unwrap_or_default();
    let others: Vec<PathBuf> = names
        .into_iter()
        .filter(|p| p != path && p.starts_with(&watch.path))
        .collect();
    if !others.is_empty() {
        tracing::debug!(
            "{} is hard-linked: looking at its {} other names too",
            path.display(),
            others.len()
        );
        enqueue(node, wake, others).await;
    }
}

/// A file outside the watched folders is only brought back to its RD, if it is unchanged (its
/// size and mtime are its newest version's: `standing` leaves the rest to the content).
async fn repair_unwatched(node: &Arc<Node>, path: &Path, gen: i64) -> Result<(), String> {
    let meta = tokio::task::spawn_blocking({
        let path = path.to_path_buf();
        move || std::fs::symlink_metadata(path).ok()
    })
    .await
    .ok()
    .flatten();
    let mut outcome = Ok(());
    if let Some(stamp) = meta.filter(|m| m.is_file()).map(|m| Stamp::of(&m)) {
        let looked = (node.catalog.latest_with_rd(path).await).map(|latest| {
            latest.map(|(f, min)| {
                // Repaired as it was backed up: at its RD, encrypted or not.
                let plan = Plan {
                    desired: f.desired_rd,
                    encrypt: f.encrypted,
                };
                let standing = standing(Some(&f), min, &stamp, plan.desired, plan.encrypt);
                (plan, standing)
            })
        });
        let repair = match looked {
            Ok(Some((rd, Standing::BelowRd { .. }))) => Some(rd),
            Ok(Some((rd, Standing::Read(Why::Touched | Why::Unfinished | Why::Deleted)))) => {
                Some(rd)
            }
            // At its RD, changed, or never backed up.
            Ok(_) => None,
            Err(e) => {
                outcome = Err(format!("cannot look it up in the catalog: {e}"));
                None
            }
        };
        if let Some(plan) = repair {
            match backup_file(node, path, plan).await {
                // Stopping: stays queued for the next start.
                Err(BackupError::Stopping) => return Ok(()),
                Err(e) => {
                    tracing::warn!("cannot repair {}: {e}", path.display());
                    outcome = Err(format!("cannot repair: {e}"));
                }
                Ok(_) => {}
            }
        }
    }
    done(node, path, gen).await;
    outcome
}

/// Whether the file is already backed up at its folder's RD (`backup::standing`, the one rule):
/// then there is nothing to do. Any other standing is the backup's to handle: a ctime that alone
/// moved (`touch -r` after a write, a chmod, a new hard link) makes it read the file again,
/// where the same content is the same fileId and is only resumed, other content a new version.
async fn up_to_date(node: &Arc<Node>, path: &Path, stamp: &Stamp, watch: &WatchConfig) -> bool {
    match standing_of(node, path, *stamp, watch.replication, watch.encrypt).await {
        Ok(Standing::AtRd { .. }) => true,
        Ok(_) => false,
        Err(e) => {
            tracing::warn!("cannot look up {} in the catalog: {e}", path.display());
            false
        }
    }
}

fn is_unavailable(node: &Node, root: &Path) -> bool {
    node.unavailable
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .contains_key(root)
}

/// The local file is gone: its versions are kept for `keep_deleted`, then deleted. Unless its
/// folder is unavailable (looked at after the file was): then it is not gone, only out of
/// reach, and the folder is rescanned when it is back.
async fn gone(node: &Arc<Node>, path: &Path, gen: i64, watch: &WatchConfig) {
    if let Presence::Unavailable(why) = presence::probe(node, &watch.path).await {
        tracing::debug!(
            "{} is out of reach, not deleted: {} is unavailable ({why})",
            path.display(),
            watch.path.display()
        );
        return done(node, path, gen).await;
    }
    refused(node, path, None);
    let now = crate::clock::unix_ms() / 1000;
    match node.catalog.mark_deleted(path, now).await {
        Ok(n) if n > 0 => {
            tracing::info!("{} was deleted locally", path.display());
            note_change(node, watch, path, false).await;
        }
        Ok(_) => {}
        Err(e) => tracing::error!("cannot note that {} is gone: {e}", path.display()),
    }
    if watch.keep_deleted.is_zero() {
        let policy = Policy::Expired { keep_deleted_ms: 0 };
        if let Err(e) = forget_versions(node, path, policy).await {
            tracing::error!("cannot delete the versions of {}: {e}", path.display());
        }
    }
    done(node, path, gen).await
}

/// `path`, in `watch`, got other content or went: counted against the folder's guard
/// (`history::Guard`), which holds the folder's history (nothing pruned there) when too many of
/// its files changed within its window.
async fn note_change(node: &Arc<Node>, watch: &WatchConfig, path: &Path, turned_random: bool) {
    use std::os::unix::ffi::OsStrExt;
    let Some(guard) = watch.guard else {
        return;
    };
    let now = node.started.elapsed().as_millis() as i64;
    let (changed, turned) = {
        let mut all = (node.history_changes.lock()).unwrap_or_else(|e| e.into_inner());
        let changes = all.entry(watch.path.clone()).or_default();
        let bytes = path.as_os_str().as_bytes();
        let changed = changes.note(bytes, now, guard.within);
        let turned = match turned_random {
            true => changes.note_turned(bytes, now, guard.within),
            false => 0,
        };
        (changed, turned)
    };
    let why = if guard.trips_on_ciphertext(turned) {
        format!(
            "{turned} of its files got content that looks encrypted within {} s, where their version before did not",
            guard.within.as_secs()
        )
    } else {
        if changed < u64::from(guard.min_files) {
            return;
        }
        let files = match node.catalog.paths_below(&watch.path).await {
            Ok(n) => n,
            Err(e) => {
                return tracing::error!("cannot count the files of {}: {e}", watch.path.display())
            }
        };
        if !guard.trips(changed, files) {
            return;
        }
        format!(
            "{changed} of its {files} files changed or went within {} s",
            guard.within.as_secs()
        )
    };
    match node.catalog.hold_history(&watch.path, why.clone()).await {
        Ok(true) => tracing::error!(
            "history guard: {} held: {why} (ransomware, a sync gone wrong, a script on the wrong folder?); none of its old versions is pruned until `peerstash history resume {}`",
            watch.path.display(),
            watch.path.display()
        ),
        Ok(false) => {}
        Err(e) => tracing::error!("cannot hold the history of {}: {e}", watch.path.display()),
    }
}

/// The peers had no room for a version of `path` (`needed` bytes, times its RD): the oldest
/// versions that are not their file's newest go first (`Catalog::prune_for_space`), and
/// `status` says that history is being cut for space. Returns whether any went.
async fn make_room(node: &Arc<Node>, path: &Path, needed: u64) -> bool {
    let freed_before = {
        let freed = node
            .space_freed_for
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        freed.get(path).copied().unwrap_or(0)
    };
    if freed_before >= needed.saturating_mul(2) {
        tracing::warn!(
            "{}: {freed_before} bytes of old versions were pruned for it and it still does not fit: no more history goes for it",
            path.display()
        );
        return false;
    }
    match node.catalog.prune_for_space(needed).await {
        Ok((0, _)) => false,
        Ok((n, freed)) => {
            tracing::warn!(
                "the peers are full: {n} old versions ({freed} bytes on the peers) pruned to make room for {}; the newest version of every file is kept (add a peer or raise the quotas to keep more history)",
                path.display()
            );
            let mut cuts = node.space_cuts.lock().unwrap_or_else(|e| e.into_inner());
            let (since, count) = cuts.unwrap_or((crate::clock::unix_ms(), 0));
            *cuts = Some((since, count + n as u64));
            drop(cuts);
            let mut freed_for = node
                .space_freed_for
                .lock()
                .unwrap_or_else(|e| e.into_inner());
            *freed_for.entry(path.to_path_buf()).or_default() += freed;
            drop(freed_for);
            tokio::spawn(crate::ops::delete::send_pending_deletes(node.clone()));
            true
        }
        Err(e) => {
            tracing::error!("cannot prune old versions for space: {e}");
            false
        }
    }
}

/// Notes (`Some`) or clears a file's refusal, shown by `status`.
fn refused(node: &Node, path: &Path, message: Option<String>) {
    let mut refused = node.refused.lock().unwrap_or_else(|e| e.into_inner());
    match message {
        Some(m) if refused.len() < MAX_REFUSED || refused.contains_key(path) => {
            refused.insert(path.to_path_buf(), m);
        }
        Some(_) => {}
        None => {
            refused.remove(path);
        }
    }
}

async fn done(node: &Arc<Node>, path: &Path, gen: i64) {
    if let Err(e) = node.catalog.dequeue(path, gen).await {
        tracing::error!("cannot update the queue for {}: {e}", path.display());
    }
}

async fn later(node: &Arc<Node>, path: &Path, gen: i64, attempts: u32) {
    let delay = retry_delay(attempts);
    let due = crate::clock::unix_ms() + delay.as_millis() as i64;
    let _ = node.catalog.retry_later(path, gen, due).await;
}

/// 30 s, doubling per failed attempt, at most an hour.
pub fn retry_delay(attempts: u32) -> Duration {
    (Duration::from_secs(30) * 2u32.saturating_pow(attempts.min(10))).min(MAX_RETRY_DELAY)
}

/// Expires the versions of files gone locally for their folder's `keep_deleted`, counted by
/// `absence` (the monotonic clock, only while the folder is available: see `presence::Absence`;
/// the wall clock is not used, so a clock set ahead expires nothing). "Gone" means gone now:
/// each path is looked at again (lstat) first, and its folder after it. A regular file there
/// again clears the mark and is queued (the same content resumes its version, other content is
/// a new one); a folder, a symlink or nothing there is not the file, and only that path's own
/// versions expire (never those of files below a folder of the same name). Err: the last
/// thing that failed (each is logged).
pub async fn expire_deleted(
    node: &Arc<Node>,
    wake: &Notify,
    absence: &mut Absence,
) -> Result<(), String> {
    let deleted = (node.catalog.deleted_paths().await)
        .map_err(|e| format!("cannot list the deleted files: {e}"))?;
    let mut outcome = Ok(());
    let config = node.config();
    // Each folder holding deleted paths is looked at once per check.
    let mut available: HashMap<PathBuf, bool> = HashMap::new();
    let mut absent = Vec::new();
    for d in &deleted {
        let Some(watch) = config.watch_of(&d.path) else {
            continue; // not watched (any more): kept until deleted by hand
        };
        if !available.contains_key(&watch.path) {
            let there = presence::probe(node, &watch.path).await.is_available();
            available.insert(watch.path.clone(), there);
        }
        if available[&watch.path] {
            absent.push(d.path.clone());
        }
    }
    let credit = absence.check(Instant::now(), SystemTime::now(), absent);
    if let Some(jump) = credit.wall_jump_s {
        tracing::warn!(
            "the wall clock moved {jump:+}s more than the time that passed since the last check: \
             keep_deleted goes by the time the daemon measures, not by the wall clock"
        );
    }
    let held = hold_expiry(node, credit.time).await;
    let credited: HashSet<PathBuf> = credit.paths.iter().cloned().collect();
    let ms = credit.time.as_millis() as i64;
    if ms > 0 && !credit.paths.is_empty() {
        let paths = credit.paths;
        let r = node.catalog.add_absent(paths, ms).await;
        if let Err(e) = r {
            tracing::error!("cannot count how long deleted files have been gone: {e}");
            return Err(format!(
                "cannot count how long deleted files have been gone: {e}"
            ));
        }
    }
    let mut back = Vec::new();
    for d in deleted {
        let Some(watch) = config.watch_of(&d.path) else {
            continue;
        };
        if !available.get(&watch.path).copied().unwrap_or(false) {
            continue; // out of reach, not gone: no time counted, nothing expires
        }
        let absent_ms = d.absent_ms + if credited.contains(&d.path) { ms } else { 0 };
        let keep_deleted_ms = watch.keep_deleted.as_millis() as i64;
        if absent_ms < keep_deleted_ms {
            continue;
        }
        let path = d.path;
        let is_file = tokio::task::spawn_blocking({
            let path = path.clone();
            move || std::fs::symlink_metadata(path).is_ok_and(|m| m.is_file())
        })
        .await
        .unwrap_or(true);
        if is_file {
            tracing::info!("{} is there again: its versions are kept", path.display());
            back.push(path);
            continue;
        }
        if held {
            continue; // a recovered catalog, before `restore --all`: nothing expires
        }
        // Looked at after the path: a folder unmounted before the lstat is caught here.
        if !presence::probe(node, &watch.path).await.is_available() {
            available.insert(watch.path.clone(), false);
            continue;
        }
        match forget_versions(node, &path, Policy::Expired { keep_deleted_ms }).await {
            Ok(n) => tracing::info!(
                "{} has been gone for {}s: its {n} versions are deleted from the peers",
                path.display(),
                absent_ms / 1000
            ),
            Err(e) => {
                tracing::error!("cannot expire {}: {e}", path.display());
                outcome = Err(format!("cannot expire a deleted file: {e}"));
            }
        }
    }
    if !back.is_empty() {
        let paths = back.clone();
        let r = node.catalog.unmark_deleted(paths).await;
        if let Err(e) = r {
            tracing::error!("cannot note that deleted files are back: {e}");
            outcome = Err(format!("cannot note that deleted files are back: {e}"));
        }
        enqueue(node, wake, back).await;
    }
    outcome
}

/// Whether a recover holds expiry back (`snapshot::EXPIRY_HOLD`: until `restore --all` has
/// run); `passed` (the daemon's running time since the last check) counts down the most it is
/// held, and the log says when that ends.
async fn hold_expiry(node: &Arc<Node>, passed: Duration) -> bool {
    let passed_ms = passed.as_millis().min(i64::MAX as u128) as i64;
    let held = node.catalog.count_down_expiry_hold(passed_ms).await;
    match held {
        Ok(Some(true)) => true,
        Ok(Some(false)) => {
            tracing::warn!(
                "the catalog was recovered 7 days of running ago and `peerstash restore --all` has not run: deleted files expire again as keep_deleted says"
            );
            false
        }
        Ok(None) => false,
        Err(e) => {
            tracing::error!("cannot read whether expiry is held after a recover: {e}");
            true
        }
    }
}

/// How often deleted files are checked for expiry: every 30 s, or more often when a folder keeps
/// them less than a minute (half its `keep_deleted`, at least every second).
pub fn expiry_interval(config: &crate::config::Config) -> Duration {
    config
        .watch
        .iter()
        .map(|w| w.keep_deleted / 2)
        .fold(EXPIRY_CHECK, Duration::min)
        .max(Duration::from_secs(1))
}

/// How often, at most, versions of locally deleted files are checked for expiry.
const EXPIRY_CHECK: Duration = Duration::from_secs(30);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_path_is_overdue_once_it_waited_its_max_delay() {
        let max = Duration::from_secs(8);
        assert!(
            !overdue(None, 1_000_000, max),
            "not known: waits to be quiet"
        );
        assert!(!overdue(Some(1_000), 8_999, max));
        assert!(overdue(Some(1_000), 9_000, max));
        // A first change dated in the future (the clock was set back) is not overdue yet.
        assert!(!overdue(Some(50_000), 9_000, max));
    }

    #[test]
    fn retry_delays_grow_and_are_capped() {
        assert_eq!(retry_delay(0), Duration::from_secs(30));
        assert_eq!(retry_delay(1), Duration::from_secs(60));
        assert_eq!(retry_delay(30), MAX_RETRY_DELAY);
    }
}
