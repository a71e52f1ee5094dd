//! Watching the configured folders: inotify (through `notify`) on every folder, recursively,
//! symlinks not followed. A changed path is queued once no event was seen for the folder's quiet
//! time (and the backup itself checks that the file did not change while it was read), so a
//! file is never backed up half written. A scan compares a folder with the catalog (at start,
//! after an event queue overflow, every `rescan` for what inotify cannot report, and every
//! minute where the kernel's watch limit left parts unwatched): nothing is missed.

use std::collections::{HashMap, HashSet};
use std::ops::ControlFlow;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use notify::{EventKind, RecursiveMode, Watcher as _};
use tokio::sync::{mpsc, Notify};

use super::presence::{self, Presence};
use super::queue::enqueue;
use super::until_stopped;
use crate::config::WatchConfig;
use crate::daemon::Node;
use crate::fsx::{self, Stamp};
use crate::ops::backup::{other_key, unchanged};
use crate::shutdown::Shutdown;
use crate::workers::Worker;
use debounce::{Admitted, Debounce};

mod debounce;

/// How often folders the watch limit left unwatched are scanned.
const FALLBACK_RESCAN: Duration = Duration::from_secs(60);
/// How often every watched folder is looked at: there, on its file system, still watched.
const PRESENCE_CHECK: Duration = Duration::from_secs(10);
/// Events waiting for the debouncer; beyond this they are dropped and everything is rescanned.
const EVENT_BACKLOG: usize = 8192;
/// Paths waiting for their quiet time; beyond this a rescan replaces them.
const MAX_PENDING: usize = 100_000;
/// The quiet time of a path no watch holds any more (its folder was removed on reload).
const DEFAULT_QUIET: Duration = Duration::from_secs(2);
/// Files compared with the catalog per call to the catalog during a scan.
const SCAN_BATCH: usize = 512;

enum Input {
    Event(notify::Event),
    Error(notify::Error),
    Overflow,
}

pub struct Watchers {
    /// The configured folders (as of the last sync).
    watched: HashSet<PathBuf>,
    /// Every folder's periodic rescan (its `rescan` period and task).
    periodic: HashMap<PathBuf, (Duration, tokio::task::JoinHandle<()>)>,
    rescan: mpsc::UnboundedSender<PathBuf>,
    keeper: mpsc::UnboundedSender<Keep>,
    /// Each periodic rescan task gets a clone (drop `Watchers` before waiting for the stop).
    shutdown: Shutdown,
}

/// What the keeper of the inotify watches is asked to do.
enum Keep {
    /// These are the watched folders now.
    Sync(Vec<WatchConfig>),
    /// Look at every folder now (a root was removed, say).
    Check,
    /// The kernel dropped the sentinel's watch with this descriptor (IN_IGNORED: its folder
    /// was unmounted, deleted or moved): notify's watches there are gone too.
    Lost(inotify::WatchDescriptor),
    /// These folders lie too deep below their watched folder, or are on a pseudo file system (a
    /// scan found them): their watches, and those below them, are dropped (notify watches every
    /// folder, however deep).
    TooDeep(Vec<PathBuf>),
}

impl Watchers {
    /// Starts the watcher and its debouncer; `wake` is the work queue's. Every task it starts
    /// ends at `shutdown`.
    pub fn start(
        node: Arc<Node>,
        wake: Arc<Notify>,
        shutdown: Shutdown,
    ) -> notify::Result<Watchers> {
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
        let (keeper, orders) = mpsc::unbounded_channel();
        let sentinel = match start_sentinel(keeper.clone()) {
            Ok(s) => Some(s),
            Err(e) => {
                tracing::warn!(
                    "cannot watch for unmounts ({e}): noticed within {}s instead",
                    PRESENCE_CHECK.as_secs()
                );
                None
            }
        };
        let keep = Keeper {
            sentinel,
            sentinel_wds: HashMap::new(),
            node: node.clone(),
            watcher,
            rescan: rescan.clone(),
            watches: Vec::new(),
            roots: HashMap::new(),
            told: HashSet::new(),
            worker: node.workers.register("watch keeper"),
            shutdown: shutdown.clone(),
        };
        tokio::spawn(until_stopped(shutdown.clone(), keep.run(orders)));
        let worker = node.workers.register("watcher");
        let debouncer = debounce(node, wake, rx, rescans, keeper.clone(), worker);
        tokio::spawn(until_stopped(shutdown.clone(), debouncer));
        Ok(Watchers {
            watched: HashSet::new(),
            periodic: HashMap::new(),
            rescan,
            keeper,
            shutdown,
        })
    }

    /// Makes the watched folders those of the config: new ones are watched and scanned (once
    /// available), removed ones stop being watched (their backups stay; a folder that another
    /// watch still covers stays watched).
    pub fn sync(&mut self, watches: &[WatchConfig]) {
        let wanted: HashSet<PathBuf> = watches.iter().map(|w| w.path.clone()).collect();
        for gone in self.watched.difference(&wanted) {
            if let Some((_, task)) = self.periodic.remove(gone) {
                task.abort();
            }
        }
        for w in watches {
            if self.periodic.get(&w.path).map(|p| p.0) != Some(w.rescan) {
                if let Some((_, task)) = self.periodic.remove(&w.path) {
                    task.abort();
                }
                if !w.rescan.is_zero() {
                    let rescan = periodic(self.rescan.clone(), w.path.clone(), w.rescan);
                    let task = tokio::spawn(until_stopped(self.shutdown.clone(), rescan));
                    self.periodic.insert(w.path.clone(), (w.rescan, task));
                }
            }
        }
        self.watched = wanted;
        let _ = self.keeper.send(Keep::Sync(watches.to_vec()));
    }

    /// Queues a scan of every watched folder (after changes RD, say).
    pub fn rescan_all(&self) {
        for p in &self.watched {
            let _ = self.rescan.send(p.clone());
        }
    }
}

/// Where a watched folder stands with the keeper.
enum Root {
    /// Watched by inotify, on this mount (a new mount means the kernel dropped our watches).
    Watched { mount: Option<u64> },
    /// The kernel's watch limit is reached: scanned every FALLBACK_RESCAN by this task.
    Limited(tokio::task::JoinHandle<()>),
    /// Available but inotify refused it: tried again at every check.
    Unwatchable { error: String, scanned: Instant },
    /// Missing, or its disk not mounted: why.
    Unavailable(String),
}

/// Keeps the inotify watches in line with the folders: watches a folder once it is available
/// (and scans it), drops the watch when it becomes unavailable (WARN once, shown in `state`),
/// watches it again when it comes back or was mounted again, and restores what removing one
/// watch took from another that overlaps it. Looks every PRESENCE_CHECK and when asked.
struct Keeper {
    node: Arc<Node>,
    /// A watch on each watched root alone, in an inotify instance of our own, to hear IN_IGNORED
    /// (which notify does not report): an unmount and a mount again between two checks would
    /// otherwise leave the folder unwatched.
    sentinel: Option<inotify::Watches>,
    sentinel_wds: HashMap<PathBuf, inotify::WatchDescriptor>,
    watcher: notify::RecommendedWatcher,
    rescan: mpsc::UnboundedSender<PathBuf>,
    watches: Vec<WatchConfig>,
    roots: HashMap<PathBuf, Root>,
    /// (folder, own path inside it) already told of in the log.
    told: HashSet<(PathBuf, PathBuf)>,
    /// Failing while a folder cannot be watched.
    worker: Worker,
    /// For the fallback rescan tasks it starts.
    shutdown: Shutdown,
}

impl Keeper {
    async fn run(mut self, mut orders: mpsc::UnboundedReceiver<Keep>) {
        let mut tick = tokio::time::interval(PRESENCE_CHECK);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                order = orders.recv() => match order {
                    Some(Keep::Sync(watches)) => self.sync(watches),
                    Some(Keep::Check) => {}
                    Some(Keep::Lost(wd)) => self.lost(wd),
                    Some(Keep::TooDeep(paths)) => {
                        for p in paths {
                            // Not watched (beyond the kernel's path length, say): nothing to do.
                            let _ = self.watcher.unwatch(&p);
                        }
                        continue;
                    }
                    None => return,
                },
                _ = tick.tick() => {}
            }
            self.worker.busy("checking the watched folders", None);
            self.check_all().await;
            let unwatchable = self.roots.iter().find_map(|(path, root)| match root {
                Root::Unwatchable { error, .. } => Some((path, error)),
                _ => None,
            });
            match unwatchable {
                Some((path, error)) => self
                    .worker
                    .failed(&format!("cannot watch the folder: {error}"), Some(path)),
                None => self.worker.idle(),
            }
        }
    }

    /// The kernel dropped a root's watches: watched again (and rescanned) at the check that
    /// follows, if it is available.
    fn lost(&mut self, wd: inotify::WatchDescriptor) {
        let Some(path) = self
            .sentinel_wds
            .iter()
            .find(|(_, w)| **w == wd)
            .map(|(p, _)| p.clone())
        else {
            return; // one we removed ourselves
        };
        self.sentinel_wds.remove(&path);
        if matches!(self.roots.get(&path), Some(Root::Watched { .. })) {
            tracing::warn!(
                "the watch of {} was dropped by the kernel (unmounted, deleted or moved)",
                path.display()
            );
            self.roots.remove(&path);
            self.unwatch(&path);
        }
    }

    fn watch_sentinel(&mut self, path: &Path) {
        use inotify::WatchMask;
        if let Some(s) = &mut self.sentinel {
            let mask = WatchMask::DELETE_SELF | WatchMask::MOVE_SELF | WatchMask::ONLYDIR;
            if let Ok(wd) = s.add(path, mask) {
                self.sentinel_wds.insert(path.to_path_buf(), wd);
            }
        }
    }

    fn unwatch_sentinel(&mut self, path: &Path) {
        if let (Some(s), Some(wd)) = (&mut self.sentinel, self.sentinel_wds.remove(path)) {
            let _ = s.remove(wd);
        }
    }

    fn sync(&mut self, watches: Vec<WatchConfig>) {
        let wanted: HashSet<&PathBuf> = watches.iter().map(|w| &w.path).collect();
        let gone: Vec<PathBuf> = self
            .roots
            .keys()
            .filter(|p| !wanted.contains(p))
            .cloned()
            .collect();
        self.watches = watches;
        for path in gone {
            if let Some(root) = self.roots.remove(&path) {
                if let Root::Limited(task) = &root {
                    task.abort();
                }
                if matches!(root, Root::Watched { .. } | Root::Limited(_)) {
                    self.unwatch_sentinel(&path);
                    self.unwatch(&path);
                }
            }
            self.node
                .unavailable
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .remove(&path);
            tracing::info!("stopped watching {}", path.display());
        }
    }

    /// Drops the watch of `path`. notify drops every watch below it, overlapping watches
    /// included: those are watched again (and rescanned for what happened meanwhile).
    fn unwatch(&mut self, path: &Path) {
        let _ = self.watcher.unwatch(path);
        let overlapping: Vec<PathBuf> = self
            .roots
            .iter()
            .filter(|(p, r)| {
                matches!(r, Root::Watched { .. }) && (p.starts_with(path) || path.starts_with(p))
            })
            .map(|(p, _)| p.clone())
            .filter(|p| p != path)
            .collect();
        for p in overlapping {
            match self.watcher.watch(&p, RecursiveMode::Recursive) {
                Ok(()) => {
                    self.unwatch_own(&p);
                    tracing::debug!(
                        "watching {} again (it overlaps {})",
                        p.display(),
                        path.display()
                    );
                }
                // Looked at again at the next check.
                Err(_) => {
                    self.roots.remove(&p);
                }
            }
            let _ = self.rescan.send(p);
        }
    }

    /// The daemon's own folders inside a watched folder are not watched (notify watches every
    /// subfolder; dropping these stops their events at the source).
    fn unwatch_own(&mut self, root: &Path) {
        let own: Vec<PathBuf> = self
            .watches
            .iter()
            .filter(|w| w.path.starts_with(root) || root.starts_with(&w.path))
            .flat_map(|w| w.own.iter().cloned())
            .collect();
        for o in own {
            let _ = self.watcher.unwatch(&o);
        }
    }

    async fn check_all(&mut self) {
        for w in self.watches.clone() {
            let presence = presence::probe(&self.node, &w.path).await;
            match presence {
                Presence::Available { .. } => self.available(&w).await,
                Presence::Unavailable(why) => self.unavailable(&w.path, why),
            }
        }
    }

    async fn available(&mut self, w: &WatchConfig) {
        let path = &w.path;
        // A watched folder on proc or sysfs is never walked nor watched.
        let pseudo = {
            let p = path.clone();
            tokio::task::spawn_blocking(move || {
                fsx::open_path(&p, fsx::Kind::Probe)
                    .or_else(|_| std::fs::File::open(&p))
                    .and_then(|f| fsx::pseudo_fs(&f))
            })
            .await
        };
        if let Ok(Ok(Some(fs))) = pseudo {
            let why = format!("on the kernel's {fs} file system, whose files are not data: never backed up nor watched");
            self.unavailable(path, why);
            return;
        }
        let mount = {
            let p = path.clone();
            tokio::task::spawn_blocking(move || presence::mount_of(&p))
                .await
                .ok()
                .flatten()
        };
        let again = match self.roots.get(path) {
            Some(Root::Watched { mount: m }) if *m == mount => return,
            Some(Root::Limited(_)) => return,
            Some(Root::Unwatchable { .. }) | None => false,
            Some(Root::Watched { .. }) => {
                tracing::warn!(
                    "{} was mounted again: watching it again and rescanning it",
                    path.display()
                );
                true
            }
            Some(Root::Unavailable(_)) => {
                tracing::warn!(
                    "{} is available again: watching and rescanning it",
                    path.display()
                );
                true
            }
        };
        if again {
            // notify still lists the watches the kernel dropped at the unmount.
            self.roots.remove(path);
            self.unwatch(path);
        }
        self.node
            .unavailable
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(path);
        for own in &w.own {
            if self.told.insert((path.clone(), own.clone())) {
                tracing::warn!(
                    "{} (the daemon's own) is inside the watched folder {}: excluded from it, \
                     never backed up nor watched",
                    own.display(),
                    path.display()
                );
            }
        }
        match self.watcher.watch(path, RecursiveMode::Recursive) {
            Ok(()) => {
                self.unwatch_own(path);
                self.watch_sentinel(path);
                tracing::info!("watching {}", path.display());
                self.roots.insert(path.clone(), Root::Watched { mount });
                let _ = self.rescan.send(path.clone());
            }
            Err(e) if matches!(e.kind, notify::ErrorKind::MaxFilesWatch) => {
                watch_limit_reached(path);
                // Retrying would only fail again: rescans until reload.
                let rescans = fallback(self.rescan.clone(), path.clone());
                let task = tokio::spawn(until_stopped(self.shutdown.clone(), rescans));
                self.roots.insert(path.clone(), Root::Limited(task));
                let _ = self.rescan.send(path.clone());
            }
            Err(e) => {
                let error = e.to_string();
                let scanned = match self.roots.get(path) {
                    Some(Root::Unwatchable {
                        error: was,
                        scanned,
                    }) => {
                        if *was != error {
                            tracing::error!("cannot watch {}: {error}", path.display());
                        }
                        *scanned
                    }
                    _ => {
                        tracing::error!(
                            "cannot watch {}: {error}; tried again every {}s, and scanned every {}s meanwhile",
                            path.display(),
                            PRESENCE_CHECK.as_secs(),
                            FALLBACK_RESCAN.as_secs()
                        );
                        Instant::now() - FALLBACK_RESCAN
                    }
                };
                let scanned = if scanned.elapsed() >= FALLBACK_RESCAN {
                    let _ = self.rescan.send(path.clone());
                    Instant::now()
                } else {
                    scanned
                };
                self.roots
                    .insert(path.clone(), Root::Unwatchable { error, scanned });
            }
        }
    }

    fn unavailable(&mut self, path: &Path, why: String) {
        if matches!(self.roots.get(path), Some(Root::Unavailable(w)) if *w == why) {
            return;
        }
        tracing::warn!(
            "watched folder {} is unavailable: {why}; nothing in it counts as deleted until it \
             is back (looked at every {}s)",
            path.display(),
            PRESENCE_CHECK.as_secs()
        );
        self.node
            .unavailable
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(path.to_path_buf(), why.clone());
        match self
            .roots
            .insert(path.to_path_buf(), Root::Unavailable(why))
        {
            Some(Root::Limited(task)) => {
                task.abort();
                self.unwatch(path);
            }
            Some(Root::Watched { .. }) => {
                self.unwatch_sentinel(path);
                self.unwatch(path);
            }
            _ => {}
        }
    }
}

/// Starts the sentinel's inotify instance and the thread that reads it: each IN_IGNORED (a
/// watched root unmounted, deleted or moved away) is told to the keeper.
fn start_sentinel(keeper: mpsc::UnboundedSender<Keep>) -> std::io::Result<inotify::Watches> {
    let mut inotify = inotify::Inotify::init()?;
    let watches = inotify.watches();
    std::thread::Builder::new()
        .name("unmount-sentinel".into())
        .spawn(move || {
            let mut buffer = [0u8; 4096];
            loop {
                let Ok(events) = inotify.read_events_blocking(&mut buffer) else {
                    return;
                };
                for e in events {
                    if e.mask.contains(inotify::EventMask::IGNORED)
                        && keeper.send(Keep::Lost(e.wd.clone())).is_err()
                    {
                        return;
                    }
                }
            }
        })?;
    Ok(watches)
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

/// Rescans a folder that the watch limit left (partly) unwatched every FALLBACK_RESCAN.
async fn fallback(rescan: mpsc::UnboundedSender<PathBuf>, root: PathBuf) {
    loop {
        tokio::time::sleep(FALLBACK_RESCAN).await;
        if rescan.send(root.clone()).is_err() {
            return;
        }
    }
}

/// Turns events into queued paths once they have been quiet (`Debounce`), and runs the scans.
async fn debounce(
    node: Arc<Node>,
    wake: Arc<Notify>,
    mut events: mpsc::Receiver<Input>,
    mut rescans: mpsc::UnboundedReceiver<PathBuf>,
    keeper: mpsc::UnboundedSender<Keep>,
    worker: Worker,
) {
    let mut pending = Debounce::new(MAX_PENDING);
    let mut limit_warned = false;
    loop {
        let deadline = pending.next_deadline();
        let quiet_until = tokio::time::Instant::from_std(deadline.unwrap_or_else(Instant::now));
        tokio::select! {
            Some(input) = events.recv() => match input {
                Input::Event(event) => {
                    if event.need_rescan() {
                        rescan_everything(&node, &wake, &worker, &keeper).await;
                        continue;
                    }
                    if matches!(event.kind, EventKind::Access(_)) {
                        continue;
                    }
                    let now = Instant::now();
                    let config = node.config();
                    if matches!(event.kind, EventKind::Remove(_) | EventKind::Modify(notify::event::ModifyKind::Name(_)))
                        && event.paths.iter().any(|p| config.watch.iter().any(|w| w.path == *p))
                    {
                        // A watched folder itself went away: the keeper looks at once.
                        let _ = keeper.send(Keep::Check);
                    }
                    let mut overflowed = false;
                    for path in event.paths {
                        let watch = config.watch_of(&path);
                        // The daemon's own files (a state folder inside a watched folder)
                        // change all the time: dropped here, never queued.
                        if watch.is_some_and(|w| w.is_own(&path)) {
                            continue;
                        }
                        let quiet = watch.map_or(DEFAULT_QUIET, |w| w.quiet);
                        let max_delay = watch.map_or(DEFAULT_QUIET, |w| w.max_delay);
                        if pending.on_event(path, quiet, max_delay, now) == Admitted::Overflowed {
                            overflowed = true;
                            break;
                        }
                    }
                    if overflowed {
                        rescan_everything(&node, &wake, &worker, &keeper).await;
                    }
                }
                Input::Error(e) if matches!(e.kind, notify::ErrorKind::MaxFilesWatch) => {
                    if !limit_warned {
                        limit_warned = true;
                        for w in &node.config().watch {
                            watch_limit_reached(&w.path);
                        }
                    }
                    rescan_everything(&node, &wake, &worker, &keeper).await;
                }
                Input::Error(e) => {
                    tracing::warn!("file watcher: {e}");
                    worker.failed(&format!("file watcher: {e}"), None);
                    let _ = keeper.send(Keep::Check);
                }
                Input::Overflow => {
                    tracing::warn!("too many file events at once: rescanning the watched folders");
                    pending.clear();
                    rescan_everything(&node, &wake, &worker, &keeper).await;
                }
            },
            Some(root) = rescans.recv() => {
                worker.busy("scanning", Some(&root));
                scan(&node, &wake, &root, &keeper).await;
                worker.idle();
            }
            _ = tokio::time::sleep_until(quiet_until), if deadline.is_some() => {
                let quiet = pending.poll(Instant::now());
                if !quiet.is_empty() {
                    worker.busy("queueing changed files", None);
                    settle(&node, &wake, quiet, &keeper).await;
                    worker.idle();
                }
            }
        }
    }
}

/// Paths that stopped changing: files are queued; a folder that appeared is scanned (its files
/// may predate its watch); a path that is gone may have been a folder: its files are queued.
async fn settle(
    node: &Arc<Node>,
    wake: &Notify,
    paths: Vec<(PathBuf, Instant)>,
    keeper: &mpsc::UnboundedSender<Keep>,
) {
    let config = node.config();
    // Each path's first event, as a wall time for the queue (`Catalog::enqueue_since`).
    let (now, now_ms) = (Instant::now(), crate::clock::unix_ms());
    let since: std::collections::HashMap<PathBuf, i64> = (paths.iter())
        .map(|(p, at)| {
            (
                p.clone(),
                now_ms - now.duration_since(*at).as_millis() as i64,
            )
        })
        .collect();
    let paths: Vec<PathBuf> = paths.into_iter().map(|(p, _)| p).collect();
    let (dirs, files, missing) = tokio::task::spawn_blocking(move || {
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
        scan(node, wake, &dir, keeper).await;
    }
    let mut files: Vec<(PathBuf, i64)> = (files.into_iter())
        .map(|p| {
            let at = since.get(&p).copied().unwrap_or(now_ms);
            (p, at)
        })
        .collect();
    for path in missing {
        let at = since.get(&path).copied().unwrap_or(now_ms);
        if let Ok(below) = node.catalog.live_paths_under(&path).await {
            files.extend(below.into_iter().map(|p| (p, at)));
        }
    }
    crate::service::queue::enqueue_since(node, wake, files).await;
}

async fn rescan_everything(
    node: &Arc<Node>,
    wake: &Notify,
    worker: &Worker,
    keeper: &mpsc::UnboundedSender<Keep>,
) {
    for w in &node.config().watch {
        worker.busy("scanning", Some(&w.path));
        scan(node, wake, &w.path, keeper).await;
    }
    worker.idle();
}

/// Compares a folder with the catalog and queues what differs: files new or changed since
/// their newest version (size, mtime, ctime, inode), files back where they had been found gone,
/// and backed-up files that are gone. Nothing is scanned in a folder that is unavailable (its
/// disk not mounted: its files are not gone). Folders deeper than `fsx::DEPTH_LIMIT` below
/// the watched folder are neither scanned nor watched: the keeper is told to drop their watches.
async fn scan(node: &Arc<Node>, wake: &Notify, root: &Path, keeper: &mpsc::UnboundedSender<Keep>) {
    let config = node.config();
    let Some(watch) = config.watch_of(root).cloned() else {
        return;
    };
    if let Presence::Unavailable(why) = presence::probe(node, &watch.path).await {
        tracing::debug!(
            "not scanning {}: {} is unavailable ({why})",
            root.display(),
            watch.path.display()
        );
        return;
    }
    let (tx, mut rx) = mpsc::channel::<Vec<Seen>>(4);
    let walker = {
        let (root, watch) = (root.to_path_buf(), watch.clone());
        tokio::task::spawn_blocking(move || walk(&root, &watch, &tx))
    };
    let mut queued = 0;
    let encrypt = watch.encrypt;
    let running = node.master_key().map(|k| k.fingerprint());
    let seen = SeenPaths::default();
    let mut seen_paths = std::collections::HashSet::new();
    while let Some(batch) = rx.recv().await {
        seen_paths.extend(batch.iter().map(|s| seen.key(&s.path)));
        let paths = batch.iter().map(|s| s.path.clone()).collect();
        let changed: Vec<PathBuf> = match node.catalog.latest_of(paths).await {
            Ok(latest) => (batch.into_iter().zip(latest))
                .filter(|(seen, latest)| {
                    // The RD is the queue's to look at (and the repair's); a version not
                    // encrypted as the folder now says is backed up again.
                    unchanged(latest.as_ref(), &seen.stamp).map_or(true, |f| {
                        f.encrypted != encrypt || (encrypt && other_key(f, running.as_deref()))
                    })
                })
                .map(|(seen, _)| seen.path)
                .collect(),
            Err(_) => Vec::new(),
        };
        queued += changed.len();
        enqueue(node, wake, changed).await;
    }
    if let Ok(too_deep) = walker.await {
        if !too_deep.is_empty() {
            let _ = keeper.send(Keep::TooDeep(too_deep));
        }
    }
    // Files backed up before and now gone.
    let known = (node.catalog.live_paths_under(root).await).unwrap_or_default();
    // Those the walk found are there; the others are looked at once more (excluded since, or
    // no longer a regular file, they are gone too).
    let gone: Vec<PathBuf> = tokio::task::spawn_blocking(move || {
        known
            .into_iter()
            .filter(|p| !seen_paths.contains(&seen.key(p)))
            .filter(|p| std::fs::symlink_metadata(p).map_or(true, |m| !m.is_file()))
            .collect()
    })
    .await
    .unwrap_or_default();
    // Unmounted during the scan: what looked gone is not.
    if !gone.is_empty() && !presence::probe(node, &watch.path).await.is_available() {
        tracing::info!(
            "{} became unavailable during its scan",
            watch.path.display()
        );
        return;
    }
    queued += gone.len();
    enqueue(node, wake, gone).await;
    tracing::info!("scanned {}: {queued} paths to look at", root.display());
    if queued == 0 && root == watch.path {
        if let Ok(mut checked) = node.folders_checked.lock() {
            checked.insert(watch.path.clone(), crate::clock::unix_ms());
        }
    }
}

/// The paths a scan's walk found, kept as 128 bits each (2 MB for 100,000 files, whatever their
/// names' length), from two hashers keyed at random: no name can be made to collide with
/// another on purpose, and by chance only once in 2^64 or so for the largest folders.
#[derive(Default)]
struct SeenPaths(std::hash::RandomState, std::hash::RandomState);

impl SeenPaths {
    fn key(&self, path: &Path) -> u128 {
        use std::hash::BuildHasher;
        let bytes = path.as_os_str().as_encoded_bytes();
        (u128::from(self.0.hash_one(bytes)) << 64) | u128::from(self.1.hash_one(bytes))
    }
}

/// A regular file found by a scan, with what tells whether it changed.
struct Seen {
    path: PathBuf,
    stamp: Stamp,
}

/// Walks the folder `root` (below the watched folder `watch`) through handles, symlinks never
/// followed, and sends every regular file that is neither excluded nor the daemon's own, in
/// batches, with the stamp the walk took of it (no second lookup). Returns the folders it did
/// not enter because they lie more than `fsx::DEPTH_LIMIT` levels below `watch` (the first
/// few): their watches are to be dropped.
fn walk(root: &Path, watch: &WatchConfig, tx: &mpsc::Sender<Vec<Seen>>) -> Vec<PathBuf> {
    let excludes = watch.exclude_set();
    // A folder that appeared deep in the tree is scanned by itself: the limit counts from the
    // watched folder, not from it.
    let depth = root
        .strip_prefix(&watch.path)
        .map_or(0, |rel| rel.components().count());
    let Some(max_depth) = fsx::DEPTH_LIMIT.checked_sub(depth) else {
        too_deep(watch, root, 1);
        return vec![root.to_path_buf()];
    };
    let dir = match fsx::open_under(&watch.path, root, fsx::Kind::Dir) {
        Ok(dir) => dir,
        Err(e) => {
            tracing::warn!("cannot read {}: {e}", root.display());
            return Vec::new();
        }
    };
    let keep = |rel: &Path, entry| {
        let path = root.join(rel);
        match entry {
            fsx::Entry::Dir => !watch.is_own(&path),
            fsx::Entry::File => !watch.excludes(&excludes, &path),
        }
    };
    let send = |found: Vec<fsx::Found>| {
        let batch = found
            .into_iter()
            .map(|f| Seen {
                path: root.join(&f.rel),
                stamp: f.stamp,
            })
            .collect();
        match tx.blocking_send(batch) {
            Ok(()) => ControlFlow::Continue(()),
            Err(_) => ControlFlow::Break(()),
        }
    };
    let walk = fsx::Walk {
        owner: None,
        batch: SCAN_BATCH,
        max_depth,
    };
    match walk.run(&dir, keep, send) {
        Ok(walked) => {
            let mut unwatch: Vec<PathBuf> = walked.too_deep.iter().map(|r| root.join(r)).collect();
            if let Some(first) = unwatch.first() {
                too_deep(watch, first, walked.too_deep_count);
            }
            for (rel, e) in walked.unreadable {
                tracing::warn!("cannot read {}: {e}", root.join(&rel).display());
                // A pseudo file system mounted below (proc, say): not watched either.
                if e.kind() == std::io::ErrorKind::Unsupported {
                    unwatch.push(root.join(rel));
                }
            }
            unwatch
        }
        Err(e) => {
            tracing::warn!("cannot read {}: {e}", root.display());
            Vec::new()
        }
    }
}

/// Root's log names the first folder (it may see every name); the limit and what it means.
fn too_deep(watch: &WatchConfig, first: &Path, count: u64) {
    tracing::warn!(
        "{count} folders more than {} levels below the watched folder {} are neither backed up \
         nor watched (the first: {}); the rest of the folder is backed up as usual",
        fsx::DEPTH_LIMIT,
        watch.path.display(),
        first.display()
    );
}
