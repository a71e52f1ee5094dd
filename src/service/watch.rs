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

mod events;
use events::*;

mod scan;
use scan::*;

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
