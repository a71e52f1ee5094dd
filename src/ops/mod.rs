//! The use cases that the control socket's requests and the service's workers share: the
//! backup pipeline (`backup`), the version policy and the sending of deletions (`delete`), the
//! quota (`reclaim`), catalog snapshots (`snapshot`) and the overview of what is backed up
//! (`status`). Each returns a `Done` (exit code, one-line message, its typed answer if it has one) and may report
//! progress lines on the way. Errors are typed (`CmdError`) and mapped to an exit code and a
//! reply here, in one place.

pub(crate) mod backup;
pub(crate) mod delete;
pub(crate) mod reclaim;
pub(crate) mod snapshot;
pub(crate) mod status;

use tokio::sync::mpsc;

use crate::control::{exit, Answer};
use crate::store::StoreError;

/// The final answer to a command.
pub struct Done {
    pub code: i32,
    pub message: String,
    /// What the request answers with besides the message (`control::Answer`), if anything.
    pub data: Option<Answer>,
}

impl Done {
    pub(crate) fn ok(message: impl Into<String>) -> Done {
        Done {
            code: exit::OK,
            message: message.into(),
            data: None,
        }
    }

    pub(crate) fn failed(message: impl Into<String>) -> Done {
        Done {
            code: exit::FAILED,
            message: message.into(),
            data: None,
        }
    }
}

/// Why a command failed. Every one is a failure (exit 1) with its message as the one line the
/// user sees; a catalog error says what went wrong with the catalog.
#[derive(Debug, thiserror::Error)]
pub enum CmdError {
    #[error(transparent)]
    Store(#[from] StoreError),
    /// Nothing backed up under the path the user named.
    #[error("{0}")]
    NotFound(String),
}

impl From<CmdError> for Done {
    fn from(e: CmdError) -> Done {
        Done::failed(e.to_string())
    }
}

impl From<StoreError> for Done {
    fn from(e: StoreError) -> Done {
        CmdError::from(e).into()
    }
}

/// A command's result as its reply: the outcome, or the error mapped to its exit code.
pub(crate) fn reply(r: Result<Done, CmdError>) -> Done {
    r.unwrap_or_else(Done::from)
}

/// Progress lines for the client; a slow client misses some rather than slowing the work.
pub type Progress = mpsc::Sender<crate::control::ProgressEvent>;

pub(crate) fn report(progress: &Progress, line: String) {
    let _ = progress.try_send(crate::control::ProgressEvent {
        message: line,
        amount: None,
    });
}

/// How far the work is: `done` of `total` `unit`s (dropped if the client reads slowly, as
/// lines are; the next one says more).
pub(crate) fn meter(progress: &Progress, done: u64, total: u64, unit: crate::control::Unit) {
    let _ = progress.try_send(crate::control::ProgressEvent {
        message: String::new(),
        amount: Some(crate::control::Amount { done, total, unit }),
    });
}
