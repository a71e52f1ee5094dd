//! Watching the configured folders: inotify (through `notify`) on every folder, recursively,
//! symlinks not followed. A changed path is queued once no event was seen for the folder's quiet
//! time (and the backup itself checks that the file did not change while it was read), so a
//! file is never backed up half written. A scan compares a folder with the catalog (at start,
//! after an event queue overflow, every `rescan` for what inotify cannot report, and every
//! minute where the kernel's watch limit left parts unwatched): nothing is missed.

use std::collections::{HashMap, HashSet};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use notify::{EventKind, RecursiveMode, Watcher as _};
use tokio::sync::{mpsc, Notify};

use super::queue::enqueue;
use crate::config::WatchConfig;
use crate::daemon::Node;

/// How often folders the watch limit left unwatched are scanned.
const FALLBACK_RESCAN: Duration = Duration::from_secs(60);
/// Events waiting for the debouncer; beyond this they are dropped and everything is rescanned.
const EVENT_BACKLOG: usize = 8192;
/// Paths waiting for their quiet time; beyond this a rescan replaces them.
const MAX_PENDING: usize = 100_000;
/// Files compared with the catalog per catalog call during a scan.
const SCAN_BATCH: usize = 512;

enum Input {
    Event(notify::Event),
    Error(notify::Error),
    Overflow,
}

pub struct Watchers {
    watcher: Arc<std::sync::Mutex<notify::RecommendedWatcher>>,
    watched: HashSet<PathBuf>,
    /// Folders not (fully) watched, rescanned periodically by these tasks.
    fallbacks: HashMap<PathBuf, tokio::task::JoinHandle<()>>,
    /// Every folder's periodic rescan (its `rescan` period and task).
    periodic: HashMap<PathBuf, (Duration, tokio::task::JoinHandle<()>)>,
    rescan: mpsc::UnboundedSender<PathBuf>,
}

impl Watchers {
    /// Starts the watcher and its debouncer; `wake` is the work queue's.
    pub fn start(node: Arc<Node>, wake: Arc<Notify>) -> notify::Result<Watchers> {
        let (tx, rx) = mpsc::channel::<Input>(EVENT_BACKLOG);
        let overflow = tx.clone();
        let watcher = notify::RecommendedWatcher::new(
            move |res: notify::Result<notify::Event>| {
                let input = match res {
                    Ok(e) => Input::Event(e),
                    Err(e) => Input::Error(e),
                };
                // The backlog is full: drop the event, but make sure a rescan happens.
                if tx.try_send(input).is_err() {
                    let _ = overflow.try_send(Input::Overflow);
                }
            },
            notify::Config::default().with_follow_symlinks(false),
        )?;
        let (rescan, rescans) = mpsc::unbounded_channel();
        tokio::spawn(debounce(node, wake, rx, rescans));
        Ok(Watchers {
            watcher: Arc::new(std::sync::Mutex::new(watcher)),
            watched: HashSet::new(),
            fallbacks: HashMap::new(),
            periodic: HashMap::new(),
            rescan,
        })
    }

    /// Makes the watched folders those of the config: new ones are watched and scanned,
    /// removed ones stop being watched (their backups stay).
    pub fn sync(&mut self, watches: &[WatchConfig]) {
        let wanted: HashSet<PathBuf> = watches.iter().map(|w| w.path.clone()).collect();
        for gone in self
            .watched
            .difference(&wanted)
            .cloned()
            .collect::<Vec<_>>()
        {
            let _ = self.lock().unwatch(&gone);
            if let Some(task) = self.fallbacks.remove(&gone) {
                task.abort();
            }
            if let Some((_, task)) = self.periodic.remove(&gone) {
                task.abort();
            }
            self.watched.remove(&gone);
            tracing::info!("stopped watching {}", gone.display());
        }
        for w in watches {
            if self.periodic.get(&w.path).map(|p| p.0) != Some(w.rescan) {
                if let Some((_, task)) = self.periodic.remove(&w.path) {
                    task.abort();
                }
                if !w.rescan.is_zero() {
                    let task =
                        tokio::spawn(periodic(self.rescan.clone(), w.path.clone(), w.rescan));
                    self.periodic.insert(w.path.clone(), (w.rescan, task));
                }
            }
            if self.watched.contains(&w.path) {
                continue;
            }
            let result = self.lock().watch(&w.path, RecursiveMode::Recursive);
            match result {
                Ok(()) => tracing::info!("watching {}", w.path.display()),
                Err(e) => {
                    let limit = matches!(e.kind, notify::ErrorKind::MaxFilesWatch);
                    if limit {
                        watch_limit_reached(&w.path);
                    } else {
                        tracing::error!(
                            "cannot watch {}: {e}; it is scanned every {}s and watched once it can be",
                            w.path.display(),
                            FALLBACK_RESCAN.as_secs()
                        );
                    }
                    // At the watch limit, retrying would only fail again: rescans until reload.
                    let retry = (!limit).then(|| self.watcher.clone());
                    let task = tokio::spawn(fallback(retry, self.rescan.clone(), w.path.clone()));
                    self.fallbacks.insert(w.path.clone(), task);
                }
            }
            self.watched.insert(w.path.clone());
            let _ = self.rescan.send(w.path.clone());
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, notify::RecommendedWatcher> {
        self.watcher.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Queues a scan of every watched folder (after changes RD, say).
    pub fn rescan_all(&self) {
        for p in &self.watched {
            let _ = self.rescan.send(p.clone());
        }
    }
}

fn watch_limit_reached(path: &Path) {
    tracing::warn!(
        "the kernel's inotify watch limit is reached while watching {}: raise it with \
         `sysctl fs.inotify.max_user_watches=1048576`; meanwhile it is scanned every {}s",
        path.display(),
        FALLBACK_RESCAN.as_secs()
    );
}

/// Rescans a folder every `every`: inotify cannot tell of every change (a write through a hard
/// link outside the folder, a file changed on a network or FUSE file system).
async fn periodic(rescan: mpsc::UnboundedSender<PathBuf>, root: PathBuf, every: Duration) {
    loop {
        tokio::time::sleep(every).await;
        tracing::debug!("periodic rescan of {}", root.display());
        if rescan.send(root.clone()).is_err() {
            return;
        }
    }
}

/// Rescans a folder that is not (fully) watched every FALLBACK_RESCAN, and, when `retry` is
/// given, tries to watch it again each time (a folder missing at start, say).
async fn fallback(
    retry: Option<Arc<std::sync::Mutex<notify::RecommendedWatcher>>>,
    rescan: mpsc::UnboundedSender<PathBuf>,
    root: PathBuf,
) {
    loop {
        tokio::time::sleep(FALLBACK_RESCAN).await;
        if let Some(watcher) = &retry {
            let mut w = watcher.lock().unwrap_or_else(|e| e.into_inner());
            if w.watch(&root, RecursiveMode::Recursive).is_ok() {
                tracing::info!("watching {} now", root.display());
                let _ = rescan.send(root.clone());
                return;
            }
        }
        if rescan.send(root.clone()).is_err() {
            return;
        }
    }
}

/// Turns events into queued paths once they have been quiet, and runs the scans.
async fn debounce(
    node: Arc<Node>,
    wake: Arc<Notify>,
    mut events: mpsc::Receiver<Input>,
    mut rescans: mpsc::UnboundedReceiver<PathBuf>,
) {
    let mut pending: HashMap<PathBuf, Instant> = HashMap::new();
    let mut tick = tokio::time::interval(Duration::from_millis(200));
    let mut limit_warned = false;
    loop {
        tokio::select! {
            Some(input) = events.recv() => match input {
                Input::Event(event) => {
                    if event.need_rescan() {
                        rescan_everything(&node, &wake).await;
                        continue;
                    }
                    if matches!(event.kind, EventKind::Access(_)) {
                        continue;
                    }
                    let now = Instant::now();
                    let config = node.config();
                    for path in event.paths {
                        // The daemon's own files (a state folder inside a watched folder)
                        // change all the time: dropped here, never queued.
                        if !config.watch_of(&path).is_some_and(|w| w.is_own(&path)) {
                            pending.insert(path, now);
                        }
                    }
                    if pending.len() > MAX_PENDING {
                        pending.clear();
                        rescan_everything(&node, &wake).await;
                    }
                }
                Input::Error(e) if matches!(e.kind, notify::ErrorKind::MaxFilesWatch) => {
                    if !limit_warned {
                        limit_warned = true;
                        for w in &node.config().watch {
                            watch_limit_reached(&w.path);
                        }
                    }
                    rescan_everything(&node, &wake).await;
                }
                Input::Error(e) => tracing::warn!("file watcher: {e}"),
                Input::Overflow => {
                    tracing::warn!("too many file events at once: rescanning the watched folders");
                    pending.clear();
                    rescan_everything(&node, &wake).await;
                }
            },
            Some(root) = rescans.recv() => scan(&node, &wake, &root).await,
            _ = tick.tick() => {
                let config = node.config();
                let now = Instant::now();
                let quiet: Vec<PathBuf> = pending
                    .iter()
                    .filter(|(p, at)| {
                        let wait = config.watch_of(p).map_or(Duration::from_secs(2), |w| w.quiet);
                        now.duration_since(**at) >= wait
                    })
                    .map(|(p, _)| p.clone())
                    .collect();
                for p in &quiet {
                    pending.remove(p);
                }
                if !quiet.is_empty() {
                    settle(&node, &wake, quiet).await;
                }
            }
        }
    }
}

/// Paths that stopped changing: files are queued; a folder that appeared is scanned (its files
/// may predate its watch); a path that is gone may have been a folder: its files are queued.
async fn settle(node: &Arc<Node>, wake: &Notify, paths: Vec<PathBuf>) {
    let config = node.config();
    let (dirs, mut files, missing) = tokio::task::spawn_blocking(move || {
        let (mut dirs, mut files, mut missing) = (Vec::new(), Vec::new(), Vec::new());
        for path in paths {
            let Some(watch) = config.watch_of(&path) else {
                continue;
            };
            match std::fs::symlink_metadata(&path) {
                Ok(m) if m.is_dir() => dirs.push(path),
                Ok(m) if m.is_file() => {
                    if !watch.excludes(&watch.exclude_set(), &path) {
                        files.push(path);
                    }
                }
                Ok(_) => {} // symlinks, sockets, devices: not backed up
                Err(_) => missing.push(path),
            }
        }
        (dirs, files, missing)
    })
    .await
    .unwrap_or_default();
    for dir in dirs {
        scan(node, wake, &dir).await;
    }
    for path in missing {
        if let Ok(below) = node.catalog.call(move |c| c.live_paths_under(&path)).await {
            files.extend(below);
        }
    }
    enqueue(node, wake, files).await;
}

async fn rescan_everything(node: &Arc<Node>, wake: &Notify) {
    for w in &node.config().watch {
        scan(node, wake, &w.path).await;
    }
}

/// Compares a folder with the catalog and queues what differs: files new or changed since
/// their newest version (size, mtime, ctime, inode), files back where they had been found gone,
/// and backed-up files that are gone.
pub async fn scan(node: &Arc<Node>, wake: &Notify, root: &Path) {
    let config = node.config();
    let Some(watch) = config.watch_of(root).cloned() else {
        return;
    };
    let (tx, mut rx) = mpsc::channel::<Vec<Seen>>(4);
    let walker = {
        let (root, watch) = (root.to_path_buf(), watch.clone());
        tokio::task::spawn_blocking(move || walk(&root, &watch, &tx))
    };
    let mut queued = 0;
    while let Some(batch) = rx.recv().await {
        let changed = node
            .catalog
            .call(move |c| {
                let mut changed = Vec::new();
                for seen in batch {
                    let same = c.latest(&seen.path)?.is_some_and(|f| {
                        f.size == seen.size
                            && f.mtime_ns == seen.mtime_ns
                            && f.ctime_ns == seen.ctime_ns
                            && f.inode == seen.inode
                            && f.complete
                            && f.deleted_at.is_none()
                    });
                    let path = seen.path;
                    if !same {
                        changed.push(path);
                    }
                }
                Ok(changed)
            })
            .await
            .unwrap_or_default();
        queued += changed.len();
        enqueue(node, wake, changed).await;
    }
    let _ = walker.await;
    // Files backed up before and now gone.
    let r = root.to_path_buf();
    let known = node
        .catalog
        .call(move |c| c.live_paths_under(&r))
        .await
        .unwrap_or_default();
    let gone: Vec<PathBuf> = tokio::task::spawn_blocking(move || {
        known
            .into_iter()
            .filter(|p| std::fs::symlink_metadata(p).map_or(true, |m| !m.is_file()))
            .collect()
    })
    .await
    .unwrap_or_default();
    queued += gone.len();
    enqueue(node, wake, gone).await;
    tracing::info!("scanned {}: {queued} paths to look at", root.display());
}

/// A regular file found by a scan, with what tells whether it changed.
struct Seen {
    path: PathBuf,
    size: u64,
    mtime_ns: i64,
    ctime_ns: i64,
    inode: u64,
}

/// Walks a folder (symlinks not followed), sending every regular file not excluded, in batches.
fn walk(root: &Path, watch: &WatchConfig, tx: &mpsc::Sender<Vec<Seen>>) {
    let excludes = watch.exclude_set();
    let mut batch = Vec::with_capacity(SCAN_BATCH);
    let mut dirs = vec![root.to_path_buf()];
    while let Some(dir) = dirs.pop() {
        let entries = match std::fs::read_dir(&dir) {
            Ok(e) => e,
            Err(e) => {
                tracing::warn!("cannot read {}: {e}", dir.display());
                continue;
            }
        };
        for entry in entries.flatten() {
            let Ok(meta) = entry.metadata() else { continue };
            let path = entry.path();
            if meta.is_dir() {
                if !watch.is_own(&path) {
                    dirs.push(path);
                }
            } else if meta.is_file() && !watch.excludes(&excludes, &path) {
                batch.push(Seen {
                    path,
                    size: meta.len(),
                    mtime_ns: meta.mtime() * 1_000_000_000 + meta.mtime_nsec(),
                    ctime_ns: meta.ctime() * 1_000_000_000 + meta.ctime_nsec(),
                    inode: meta.ino(),
                });
                if batch.len() == SCAN_BATCH
                    && tx.blocking_send(std::mem::take(&mut batch)).is_err()
                {
                    return;
                }
            }
        }
    }
    if !batch.is_empty() {
        let _ = tx.blocking_send(batch);
    }
}
