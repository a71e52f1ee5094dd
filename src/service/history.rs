//! The folders' history as time passes: the running clock moves on with the monotonic clock
//! (`Catalog::advance_run_clock`: versions' ages are counted on it), and the versions that aged
//! out of their folder's `keep` are let go (`Policy::History`), as they are after each new
//! version.

use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::daemon::Node;
use crate::ops::delete::forget_versions;
use crate::store::catalog::Policy;
use crate::workers::Worker;

/// The running clock is written this often: a daemon killed loses at most this much of it
/// (versions then look younger: kept longer, never pruned early).
const RUN_CLOCK_EVERY: Duration = Duration::from_secs(10);

/// Every folder's history is looked at this often (and after each new version of a file).
const PRUNE_EVERY: Duration = Duration::from_secs(600);

pub(super) async fn keep_history(node: Arc<Node>, worker: Worker) {
    let mut last = Instant::now();
    let mut next_prune = last + PRUNE_EVERY;
    loop {
        tokio::time::sleep(RUN_CLOCK_EVERY).await;
        let now = Instant::now();
        let ran = now.duration_since(last).as_millis() as i64;
        last = now;
        if let Err(e) = node.catalog.advance_run_clock(ran).await {
            tracing::warn!("cannot note the daemon's running time: {e}");
        }
        release_held(&node).await;
        if now < next_prune {
            continue;
        }
        next_prune = now + PRUNE_EVERY;
        worker.busy("pruning history", None);
        match prune(&node).await {
            Ok(0) => worker.idle(),
            Ok(n) => {
                tracing::info!("history: {n} versions aged out of their folders' `keep`");
                worker.idle();
            }
            Err(e) => {
                tracing::error!("cannot prune history: {e}");
                worker.failed(&format!("cannot prune history: {e}"), None);
            }
        }
    }
}

/// A folder held by its guard is released once its `guard_hold` passed, if it has one
/// (otherwise only `peerstash history resume DIR` releases it).
async fn release_held(node: &Arc<Node>) {
    let holds = match node.catalog.history_holds().await {
        Ok(h) => h,
        Err(e) => return tracing::warn!("cannot read which histories are held: {e}"),
    };
    let config = node.config();
    let now = crate::clock::unix_ms();
    for h in holds {
        let hold = (config.watch.iter())
            .find(|w| w.path == h.root)
            .and_then(|w| w.guard)
            .and_then(|g| g.hold);
        let Some(hold) = hold else { continue };
        if now.saturating_sub(h.since_ms) < hold.as_millis() as i64 {
            continue;
        }
        match node.catalog.resume_history(&h.root).await {
            Ok(true) => tracing::warn!(
                "history of {} resumed: its guard_hold ({} s) has passed since it was held ({})",
                h.root.display(),
                hold.as_secs(),
                h.why
            ),
            Ok(false) => {}
            Err(e) => tracing::error!("cannot resume the history of {}: {e}", h.root.display()),
        }
    }
}

/// Applies each watched folder's history to its files with more than one version.
async fn prune(node: &Arc<Node>) -> Result<usize, crate::store::catalog::StoreError> {
    let config = node.config();
    let mut forgotten = 0;
    for watch in &config.watch {
        for path in node.catalog.paths_with_history(&watch.path).await? {
            // The folder that governs it (a nested watch may have its own rule).
            if config.watch_of(&path).map(|w| &w.path) != Some(&watch.path) {
                continue;
            }
            forgotten += forget_versions(node, &path, Policy::history(watch)).await?;
        }
    }
    Ok(forgotten)
}
