//! The subprotocols' timing and choices as plain state machines: they take events (a STORED
//! heard, a CHUNK arrived, time passed) and say what to do next. No sockets, no tokio, no SQLite:
//! the daemon drives them, and the unit tests drive them with made-up instants.
pub mod backup;
mod delete;
mod jobs;
pub mod lru;
mod out;
pub mod peer;
pub mod presence;
pub mod reclaim;
pub mod restore;
pub mod retry;
pub mod serve;
pub mod store;
pub mod verify;
