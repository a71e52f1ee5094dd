//! A watched folder's scan: walked through handles from its root (never following a link, to a
//! depth limit), each file compared with its catalog row, the changed ones queued; what a scan
//! finds gone is marked deleted.

use super::*;

pub(super) async fn rescan_everything(
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
pub(super) async fn scan(
    node: &Arc<Node>,
    wake: &Notify,
    root: &Path,
    keeper: &mpsc::UnboundedSender<Keep>,
) {
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
pub(super) struct SeenPaths(std::hash::RandomState, std::hash::RandomState);

impl SeenPaths {
    fn key(&self, path: &Path) -> u128 {
        use std::hash::BuildHasher;
        let bytes = path.as_os_str().as_encoded_bytes();
        (u128::from(self.0.hash_one(bytes)) << 64) | u128::from(self.1.hash_one(bytes))
    }
}

/// A regular file found by a scan, with what tells whether it changed.
pub(super) struct Seen {
    path: PathBuf,
    stamp: Stamp,
}

/// Walks the folder `root` (below the watched folder `watch`) through handles, symlinks never
/// followed, and sends every regular file that is neither excluded nor the daemon's own, in
/// batches, with the stamp the walk took of it (no second lookup). Returns the folders it did
/// not enter because they lie more than `fsx::DEPTH_LIMIT` levels below `watch` (the first
/// few): their watches are to be dropped.
pub(super) fn walk(root: &Path, watch: &WatchConfig, tx: &mpsc::Sender<Vec<Seen>>) -> Vec<PathBuf> {
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
pub(super) fn too_deep(watch: &WatchConfig, first: &Path, count: u64) {
    tracing::warn!(
        "{count} folders more than {} levels below the watched folder {} are neither backed up \
         nor watched (the first: {}); the rest of the folder is backed up as usual",
        fsx::DEPTH_LIMIT,
        watch.path.display(),
        first.display()
    );
}
