//! `peerstash snapshot`: a catalog snapshot now, before a computer is reinstalled, say
//! (`ops::snapshot`).

use std::sync::Arc;

use super::Done;
use crate::daemon::Node;
use crate::ops::snapshot::{take, SNAPSHOT_EVERY};

pub(crate) async fn snapshot(node: &Arc<Node>) -> Done {
    match take(node).await {
        Ok(t) => Done::ok(format!(
            "catalog snapshot {} backed up ({} bytes in {} encrypted chunks, {}); {} older snapshots deleted{}",
            t.slot,
            t.bytes,
            t.chunks,
            match t.at_rd {
                true => "every chunk at its RD".to_owned(),
                false => format!(
                    "some chunks below their RD: they are sent again every {} minutes until they reach it",
                    SNAPSHOT_EVERY.as_secs() / 60
                ),
            },
            t.forgotten,
            match t.completed {
                0 => String::new(),
                n => format!("; {n} earlier snapshots that were below their RD reached it"),
            }
        )),
        Err(e) => Done::failed(format!("catalog snapshot failed: {e}")),
    }
}
