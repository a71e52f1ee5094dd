//! The control socket: who may connect and ask what (`socket`), and one thin file per request
//! that is not a shared use case (those live in `ops`): check, peers, recover, restore, scrub,
//! state, versions.

pub(crate) mod check;
pub(crate) mod peers;
pub(crate) mod recover;
pub(crate) mod restore;
pub(crate) mod scrub;
mod socket;
pub(crate) mod state;
pub(crate) mod versions;

pub use socket::serve;
