//! The subprotocols' timing and choices as plain state machines: they take events (a STORED
//! heard, a CHUNK arrived, time passed) and say what to do next. No sockets, no tokio, no SQLite:
//! the daemon drives them, and the unit tests drive them with made-up instants.
pub mod lru;
pub mod peer;
pub mod retry;

pub use peer::{backup, presence, reclaim, restore, serve, store, verify};
