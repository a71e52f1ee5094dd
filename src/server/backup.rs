//! `peerstash backup PATH`: the answer to a backup (`ops::backup`): a summary line, and the exit
//! code of the worst outcome among its files.

use std::path::Path;

use super::Done;
use crate::control::{exit, shown};
use crate::daemon::Node;
use crate::ops::backup::{Stopped, Tally};

/// The reply to a backup of `path` that ended as `ended`.
pub(crate) fn done(node: &Node, path: &Path, ended: Result<Tally, Stopped>) -> Done {
    let tally = match ended {
        Ok(tally) => tally,
        Err(e) => return Done::failed(e.to_string()),
    };
    let (ok, below, failed, skipped) = (tally.ok, tally.below, tally.failed, tally.skipped);
    if skipped > 0 && ok + below + failed == 0 {
        return Done::failed(format!(
            "you may back up only files you own, and none below {} is yours",
            shown(path)
        ));
    }
    // In the final line, which a slow client never misses (progress lines it may).
    let not_yours = match skipped {
        0 => String::new(),
        n => format!(", {n} skipped (not yours)"),
    };
    let summary = format!(
        "{} files: {ok} fully replicated, {below} below their desired RD, {failed} failed{not_yours}",
        ok + below + failed
    );
    let code = if failed > 0 {
        exit::FAILED
    } else if below > 0 {
        exit::BELOW_RD
    } else {
        exit::OK
    };
    let mut message = if failed > 0 {
        format!("{summary} (last error: {})", tally.last_error)
    } else {
        summary
    };
    if let Some((heard, rd)) = tally.short {
        message.push_str(&format!(
            "; only {heard} other peers confirmed chunks, and RD {rd} needs {rd} other peers running with room in their quota (see their `peerstash state`)"
        ));
        if let Some(warning) = node.duplicate_id_warning() {
            message.push_str(&format!("; {warning}"));
        }
    }
    Done {
        code,
        message,
        data: None,
    }
}
