//! The watcher's event loop: inotify events turned into queued paths once quiet (`Debounce`),
//! the scans it asks for run, and a changed path settled against its catalog row before it is
//! queued.

use super::*;

/// Turns events into queued paths once they have been quiet (`Debounce`), and runs the scans.
pub(super) async fn debounce(
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
pub(super) async fn settle(
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
