//! Persistence: the SQLite catalog (source of truth) and the hosted chunk files; a backed-up
//! file's health, from what the catalog knows of its chunks.
pub mod catalog;
pub mod chunks;
pub mod health;
pub mod incarnation;
pub mod snapshot;

pub use catalog::{
    io_disk_full, BackupId, Begun, Catalog, CatalogHandle, ChunkRole, FileChunkRow, FileRow,
    Forget, HostedRow, KeyFacts, PeerRow, Policy, SnapshotLook, StoreError, MASTER_KEY_FP,
    MASTER_KEY_MADE, MAX_PEER_ROWS,
};
pub use chunks::{ChunkStore, NewChunk};
pub use health::{health, Health};
