//! `peerstash history resume DIR`: the guard held DIR's history (too many of its files changed
//! at once); once the admin has looked, pruning goes on there (`Catalog::resume_history`).

use std::path::PathBuf;
use std::sync::Arc;

use super::Done;
use crate::control::shown;
use crate::daemon::Node;

pub(crate) async fn resume(node: &Arc<Node>, path: PathBuf) -> Done {
    let held = match node.catalog.history_holds().await {
        Ok(h) => h,
        Err(e) => return e.into(),
    };
    // DIR itself, or a watched folder below it.
    let mut resumed = Vec::new();
    for h in held.iter().filter(|h| h.root.starts_with(&path)) {
        match node.catalog.resume_history(&h.root).await {
            Ok(true) => resumed.push(shown(&h.root).to_string()),
            Ok(false) => {}
            Err(e) => return e.into(),
        }
    }
    // The window starts again: the changes that tripped the guard are not counted twice.
    let mut changes = node
        .history_changes
        .lock()
        .unwrap_or_else(|e| e.into_inner());
    changes.retain(|root, _| !root.starts_with(&path));
    drop(changes);
    if resumed.is_empty() {
        return Done::failed(format!(
            "the history of {} is not held (`peerstash status` says which folders are)",
            shown(&path)
        ));
    }
    tracing::warn!(
        "history of {} resumed by the admin: old versions are pruned again",
        resumed.join(", ")
    );
    Done::ok(format!(
        "history resumed: {} (old versions are pruned again as `keep` says)",
        resumed.join(", ")
    ))
}
