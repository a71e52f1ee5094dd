//! Persistence: the SQLite catalog (source of truth) and the hosted chunk files.
pub mod catalog;
pub mod chunks;

pub use catalog::{Catalog, CatalogHandle, ChunkRole, FileRow, HostedRow, StoreError};
pub use chunks::ChunkStore;
