//! Persistence: the SQLite catalog (source of truth) and the hosted chunk files.
pub mod catalog;
pub mod chunks;

pub use catalog::{
    BackupId, Catalog, CatalogHandle, ChunkRole, FileChunkRow, FileRow, Forget, HostedRow,
    StoreError,
};
pub use chunks::ChunkStore;
