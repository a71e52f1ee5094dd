//! `peerstash delete PATH`, and the versions a folder's policy lets go: forgotten in the
//! catalog (through `Catalog::forget`, the one place that decides), then DELETE to the peers on
//! the engine's schedule.

use std::path::Path;
use std::sync::Arc;

use super::CmdError;
use crate::control::shown;
use crate::daemon::Node;
use crate::store::StoreError;

/// `peerstash delete PATH`: every version of PATH, or of every file below it, by the user's
/// word, forgotten and sent DELETE. Returns how many versions were forgotten (at least one).
pub(crate) async fn delete(node: &Arc<Node>, path: &Path) -> Result<usize, CmdError> {
    let forgotten = node.catalog.forget_path(path).await?;
    if forgotten == 0 {
        return Err(CmdError::NotFound(nothing_of(path)));
    }
    send_pending_deletes(node.clone()).await;
    Ok(forgotten)
}

/// The answer when nothing is backed up at or below `path` (for a non-root caller: nothing of
/// its own, whatever other users backed up there).
pub(crate) fn nothing_of(path: &Path) -> String {
    format!("no backed-up version of {}", shown(path))
}

/// Why the versions of one path are forgotten by a folder's policy (the rule is the catalog's).
pub(crate) use crate::store::Policy;

/// Applies a folder's policy to the versions of exactly `path` (never to files below it, should
/// it be a folder now) and tells the peers to delete what was forgotten. Each version goes
/// through `Catalog::forget`, which refuses what the policy does not allow. Returns how many
/// versions were forgotten.
pub(crate) async fn forget_versions(
    node: &Arc<Node>,
    path: &Path,
    policy: Policy,
) -> Result<usize, StoreError> {
    let why = policy.to_string();
    let n = node.catalog.forget_by_policy(path, policy).await?;
    if n > 0 {
        tracing::info!(
            "deleting {n} versions of {} from the peers ({why})",
            shown(path)
        );
        send_pending_deletes(node.clone()).await;
    }
    Ok(n)
}

/// Sends DELETE for every version forgotten here (on the engine's schedule: several sends),
/// then clears them; returns once the last send is out.
pub(crate) async fn send_pending_deletes(node: Arc<Node>) {
    match node.catalog.pending_deletes().await {
        Ok(pending) if pending.is_empty() => {}
        Ok(pending) => node.send_delete(pending).await,
        Err(e) => tracing::error!("cannot list pending deletes: {e}"),
    }
}
