//! `peerstash delete PATH`, and the versions a folder's policy lets go: forgotten in the
//! catalog (through `Catalog::forget`, the one place that decides), then DELETE to the peers on
//! the engine's schedule.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use super::{CmdError, Done};
use crate::control::shown;
use crate::daemon::Node;
use crate::protocol::FileId;
use crate::store::{unix_ms, Forget, StoreError};

/// `peerstash delete PATH`: every version of PATH, or of every file below it, by the user's word.
pub(crate) async fn delete(node: &Arc<Node>, path: PathBuf) -> Result<Done, CmdError> {
    let p = path.clone();
    let forgotten = node
        .catalog
        .call(move |c| {
            let (mut n, now) = (0, unix_ms());
            for f in c.versions(&p)? {
                n += usize::from(c.forget(&f.file_id, Forget::UserDelete, now)?);
            }
            Ok(n)
        })
        .await?;
    if forgotten == 0 {
        return Err(CmdError::NotFound(nothing_of(&path)));
    }
    send_pending_deletes(node.clone()).await;
    Ok(Done::ok(format!(
        "deleted {forgotten} backed-up versions of {} from the peers",
        shown(&path)
    )))
}

/// The answer when nothing is backed up at or below `path` (for a non-root caller: nothing of
/// its own, whatever other users backed up there).
pub(crate) fn nothing_of(path: &Path) -> String {
    format!("no backed-up version of {}", shown(path))
}

/// Why the versions of one path are forgotten by a folder's policy.
#[derive(Clone, Copy, Debug)]
pub(crate) enum Policy {
    /// After a new version completed: all but the newest `keep` complete versions go (and
    /// unfinished versions older than the newest complete one).
    KeepVersions(u32),
    /// The path is gone (checked again just before) and was counted absent at least
    /// `keep_deleted_ms` while its folder was available.
    Expired { keep_deleted_ms: i64 },
}

/// Applies a folder's policy to the versions of exactly `path` (never to files below it, should
/// it be a folder now) and tells the peers to delete what was forgotten. Each version goes
/// through `Catalog::forget`, which refuses what the policy does not allow. Returns how many
/// versions were forgotten.
pub(crate) async fn forget_versions(
    node: &Arc<Node>,
    path: &Path,
    policy: Policy,
) -> Result<usize, StoreError> {
    let p = path.to_path_buf();
    let n = node
        .catalog
        .call(move |c| {
            let rows = c.versions_of(&p)?; // oldest first
            let doomed: Vec<(FileId, Forget)> = match policy {
                Policy::KeepVersions(keep) => {
                    let mut complete_seen = 0u32;
                    let mut doomed = Vec::new();
                    for f in rows.iter().rev() {
                        if f.complete {
                            complete_seen += 1;
                            if complete_seen > keep.max(1) {
                                doomed.push(f.file_id.clone());
                            }
                        } else if complete_seen > 0 {
                            doomed.push(f.file_id.clone()); // superseded, never finished
                        }
                    }
                    doomed
                        .into_iter()
                        .map(|id| (id, Forget::KeepVersions { keep }))
                        .collect()
                }
                Policy::Expired { keep_deleted_ms } => rows
                    .into_iter()
                    .map(|f| (f.file_id, Forget::DeletedExpired { keep_deleted_ms }))
                    .collect(),
            };
            let (mut forgotten, now) = (0, unix_ms());
            for (id, why) in doomed {
                forgotten += usize::from(c.forget(&id, why, now)?);
            }
            Ok(forgotten)
        })
        .await?;
    if n > 0 {
        tracing::info!(
            "deleting {n} versions of {} from the peers ({policy:?})",
            shown(path)
        );
        send_pending_deletes(node.clone()).await;
    }
    Ok(n)
}

/// Sends DELETE for every version forgotten here (on the engine's schedule: several sends),
/// then clears them; returns once the last send is out.
pub(crate) async fn send_pending_deletes(node: Arc<Node>) {
    match node.catalog.call(|c| c.pending_deletes()).await {
        Ok(pending) if pending.is_empty() => {}
        Ok(pending) => node.send_delete(pending).await,
        Err(e) => tracing::error!("cannot list pending deletes: {e}"),
    }
}
