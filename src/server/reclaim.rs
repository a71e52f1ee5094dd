//! `peerstash reclaim SIZE`: the hosting quota set now, and hosted chunks dropped until the used
//! bytes fit (`ops::reclaim`).

use std::sync::Arc;

use super::Done;
use crate::daemon::Node;
use crate::ops::reclaim::{self, Reclaimed};

pub(crate) async fn reclaim(node: &Arc<Node>, quota: u64) -> Done {
    match reclaim::reclaim(node, quota).await {
        Ok(Reclaimed {
            quota,
            dropped,
            used,
        }) => Done::ok(format!(
            "quota set to {quota} bytes; dropped {dropped} chunks; {used} bytes hosted"
        )),
        Err(e) => e.into(),
    }
}
