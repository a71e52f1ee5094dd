//! `peerstash delete PATH`: every version of PATH, or of every file below it, deleted from the
//! peers (`ops::delete`).

use std::path::PathBuf;
use std::sync::Arc;

use super::Done;
use crate::control::shown;
use crate::daemon::Node;
use crate::ops::{self, CmdError};

pub(crate) async fn delete(node: &Arc<Node>, path: PathBuf) -> Result<Done, CmdError> {
    let forgotten = ops::delete::delete(node, &path).await?;
    Ok(Done::ok(format!(
        "deleted {forgotten} backed-up versions of {} from the peers",
        shown(&path)
    )))
}
