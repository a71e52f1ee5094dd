//! `peerstash status`: the overview of what is backed up (`ops::status`), its exit status the
//! most serious problem's.

use std::sync::Arc;

use super::Done;
use crate::control::Answer;
use crate::daemon::Node;
use crate::ops::status::{self, exit_code};

pub(crate) async fn status(node: &Arc<Node>, owner: Option<u32>) -> Done {
    match status::status(node, owner).await {
        Ok(s) => Done {
            code: exit_code(&s.problems),
            message: String::new(),
            data: Some(Answer::Status(s.report)),
        },
        Err(e) => e.into(),
    }
}
