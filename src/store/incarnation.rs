//! The chunk store's incarnation (2.0, `engine::verify`): a random id made with the state folder,
//! kept in `<state_dir>/incarnation` and in the catalog's meta. A new one whenever either is
//! missing or they disagree (a wiped state folder, a catalog replaced or rebuilt): peers then
//! stop counting this store as a holder of what the old one held.

use std::io::Write;
use std::path::Path;

use super::catalog::{Catalog, StoreError};

pub const FILE: &str = "incarnation";
const META_KEY: &str = "incarnation";

/// This store's incarnation: the one on record if the file and the catalog agree, else a new
/// one, written to both (the file atomically: a temporary file, synced, then renamed).
pub fn load_or_make(state_dir: &Path, catalog: &Catalog) -> Result<u64, StoreError> {
    let path = state_dir.join(FILE);
    let in_file = std::fs::read_to_string(&path)
        .ok()
        .and_then(|t| u64::from_str_radix(t.trim(), 16).ok());
    let in_meta = catalog
        .meta(META_KEY)?
        .and_then(|t| u64::from_str_radix(t.trim(), 16).ok());
    if let (Some(f), Some(m)) = (in_file, in_meta) {
        if f == m {
            return Ok(f);
        }
    }
    let inc: u64 = rand::random();
    let text = format!("{inc:016x}");
    let io =
        |e: std::io::Error| StoreError::Commit(format!("cannot write {}: {e}", path.display()));
    let tmp = state_dir.join(format!("{FILE}.tmp"));
    {
        let mut f = std::fs::File::create(&tmp).map_err(io)?;
        f.write_all(format!("{text}\n").as_bytes()).map_err(io)?;
        f.sync_all().map_err(io)?;
    }
    catalog.set_meta(META_KEY, &text)?;
    std::fs::rename(&tmp, &path).map_err(io)?;
    std::fs::File::open(state_dir)
        .and_then(|d| d.sync_all())
        .map_err(io)?;
    tracing::info!(
        "this chunk store's incarnation is {text} (new: the state folder or its catalog is new)"
    );
    Ok(inc)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kept_while_file_and_catalog_agree_new_otherwise() {
        let dir = tempfile::tempdir().unwrap();
        let db = dir.path().join("catalog.db");
        let cat = Catalog::open(&db).unwrap();
        let a = load_or_make(dir.path(), &cat).unwrap();
        assert_eq!(load_or_make(dir.path(), &cat).unwrap(), a);
        // The file lost (a state folder put together again): a new one.
        std::fs::remove_file(dir.path().join(FILE)).unwrap();
        let b = load_or_make(dir.path(), &cat).unwrap();
        assert_ne!(a, b);
        // Another catalog (an old catalog.db put back, or a rebuilt one): a new one.
        let other = Catalog::open(&dir.path().join("other.db")).unwrap();
        let c = load_or_make(dir.path(), &other).unwrap();
        assert_ne!(c, b);
        assert_ne!(load_or_make(dir.path(), &cat).unwrap(), c);
    }
}
