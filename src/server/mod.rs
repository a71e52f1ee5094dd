//! The control socket: who may connect and ask what (`socket`), and one thin file per request:
//! each turns its use case's outcome (`ops`, or its own for a request no worker shares) into the
//! request's final reply (`Done`): backup, check, delete, peers, reclaim, recover, restore, scrub,
//! snapshot, state, status, versions.

pub(crate) mod backup;
pub(crate) mod check;
pub(crate) mod delete;
pub(crate) mod history;
pub(crate) mod peers;
pub(crate) mod reclaim;
pub(crate) mod recover;
pub(crate) mod restore;
pub(crate) mod scrub;
pub(crate) mod snapshot;
mod socket;
pub(crate) mod state;
pub(crate) mod status;
pub(crate) mod versions;

pub use socket::serve;

use crate::control::{exit, Answer};
use crate::ops::CmdError;
use crate::store::StoreError;

/// The final answer to a request.
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

/// A request's result as its reply: the outcome, or the error mapped to its exit code.
pub(crate) fn reply(r: Result<Done, CmdError>) -> Done {
    r.unwrap_or_else(Done::from)
}
