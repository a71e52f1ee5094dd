//! Persistence: the SQLite catalog (source of truth) and the hosted chunk files. A backed-up
//! file's health (`control::health`, what `state` reports) is re-exported here.
pub mod catalog;
pub mod chunks;
pub mod incarnation;
pub mod snapshot;

pub use crate::control::health::{self, health, Health};
pub use catalog::{
    io_disk_full, BackupId, Begun, Catalog, CatalogHandle, ChunkRole, FileChunkRow, FileRow,
    Forget, HostedRow, KeyFacts, Overview, PeerRow, Policy, SnapshotLook, StoreError,
    MASTER_KEY_FP, MASTER_KEY_MADE, MAX_PEER_ROWS,
};
pub use chunks::{ChunkStore, NewChunk};
