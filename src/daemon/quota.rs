//! The quota in force: the config's `storage.quota`, unless `peerstash reclaim` set another
//! since the config's quota last changed (kept in the catalog's meta).

use crate::store::{CatalogHandle, StoreError};

/// The quota `peerstash reclaim` set.
pub(crate) const SET_KEY: &str = "quota_override";
/// The config's quota when it was set: a new one in the config wins over it.
pub(crate) const CONFIG_KEY: &str = "quota_override_config";

/// The quota in force: the config's, unless `peerstash reclaim` set another since the config's
/// quota last changed (the admin's latest word wins).
pub(crate) async fn effective(catalog: &CatalogHandle, configured: u64) -> Result<u64, StoreError> {
    let read = catalog.metas(&[SET_KEY, CONFIG_KEY]).await?;
    let parsed = |i: usize| read[i].as_deref().and_then(|v| v.parse::<u64>().ok());
    Ok(match (parsed(0), parsed(1)) {
        (Some(q), Some(cfg)) if cfg == configured => q,
        _ => configured,
    })
}
