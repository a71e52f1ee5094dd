//! The use cases that the control socket's requests and the service's workers share: the
//! backup pipeline (`backup`), the version policy and the sending of deletions (`delete`), the
//! quota (`reclaim`), catalog snapshots (`snapshot`) and the overview of what is backed up
//! (`status`). Each returns its outcome (a typed struct) or a typed error (`CmdError`, or the
//! use case's own) and may report progress lines on the way; `server` turns them into replies.

pub(crate) mod backup;
pub(crate) mod delete;
pub(crate) mod reclaim;
pub(crate) mod snapshot;
pub(crate) mod status;

use tokio::sync::mpsc;

use crate::store::StoreError;

/// Why a use case failed. Every one is a failure (exit 1) with its message as the one line the
/// user sees; a catalog error says what went wrong with the catalog.
#[derive(Debug, thiserror::Error)]
pub enum CmdError {
    #[error(transparent)]
    Store(#[from] StoreError),
    /// Nothing backed up under the path the user named.
    #[error("{0}")]
    NotFound(String),
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
