//! `peerstash check`: SQLite's full integrity check of the catalog.

use std::sync::Arc;

use super::Done;
use crate::daemon::Node;

/// `peerstash check`: SQLite's full integrity check of the catalog.
pub(crate) async fn check(node: &Arc<Node>) -> Done {
    match node.catalog.integrity_check().await {
        Ok(()) => Done::ok("the catalog is sound (integrity_check: ok)"),
        Err(e) => Done::failed(format!(
            "the catalog is damaged ({e}): stop the daemon, keep a copy of {}, move it away and run `peerstashd --rebuild-catalog`",
            node.config().peer.state_dir.join("catalog.db").display()
        )),
    }
}
