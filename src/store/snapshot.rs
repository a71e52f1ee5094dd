//! Catalog snapshots: the catalog survives the loss of its computer. A snapshot is a copy of
//! what the catalog knows of our own files (not the chunks we host, nor the queue), written as
//! one file (`HEADER_LEN` bytes of header, then an SQLite database) and backed up encrypted
//! under a fileId derived from the peer id, the master key and its number alone
//! (`MasterKey::snapshot_no_file_id`), so that `peerstash recover` on a reinstalled computer
//! finds it with nothing but its config and key. The `snapshots` table (`catalog::snapshots`,
//! which this file looks down to) lists the numbers used (one is never used twice: the same key
//! and nonce must never seal other bytes), when each was taken (a label only) and which reached
//! their RD. Which are kept (`superseded`) lets a recover find the newest in O(log n) probes
//! without a clock.

use std::path::{Path, PathBuf};

use rusqlite::{Connection, OptionalExtension};
use sha2::{Digest, Sha256};

use super::catalog::{Catalog, StoreError};
use crate::protocol::seal::{Slot, SnapshotNo};

// The `snapshots` table and the meta keys of a recover are the catalog's (`catalog::snapshots`):
// the catalog never looks up here.
pub use super::catalog::snapshots::{
    newest_findable, superseded, SnapshotRow, COMPLETIONS, EXPIRY_HOLD, EXPIRY_HOLD_MS,
    RECOVERED_TAKEN, WAIT_RECOVER,
};

/// The first bytes of a snapshot file: its catalog keeps fileIds as bytes (catalog schema 2).
pub const MAGIC: &[u8; 8] = b"PSCATLG2";
/// The first bytes of a snapshot taken by a release that kept fileIds as text (schema 1): it
/// is recovered too, and migrated when installed.
const MAGIC_TEXT_IDS: &[u8; 8] = b"PSCATLG1";
/// Magic, the database's length (u64 big-endian), its SHA-256.
pub const HEADER_LEN: usize = 48;
/// Where `peerstash recover` leaves the catalog it found, installed at the next start.
pub const RECOVERED: &str = "catalog.recovered";
/// The catalog a recovered one replaced, kept beside it.
pub const REPLACED: &str = "catalog.db.before-recover";

/// The tables a snapshot carries: everything about our own files, their holders and the
/// peers. Not the chunks we host (lost with the disk) nor the queue (a scan fills it again).
const CARRIED: &[&str] = &[
    "meta",
    "files",
    "last_versions",
    "file_chunks",
    "pending_deletes",
    "forgotten",
    "holders",
    "peers",
    "delete_acks",
    "snapshots",
    "folders",
];

/// The header of a snapshot file holding a database of `len` bytes with SHA-256 `hash`.
pub fn header(len: u64, hash: &[u8; 32]) -> [u8; HEADER_LEN] {
    let mut h = [0u8; HEADER_LEN];
    h[..8].copy_from_slice(MAGIC);
    h[8..16].copy_from_slice(&len.to_be_bytes());
    h[16..].copy_from_slice(hash);
    h
}

/// The database's length and hash, if `bytes` starts with a snapshot header.
pub fn parse_header(bytes: &[u8]) -> Option<(u64, [u8; 32])> {
    let h = bytes.get(..HEADER_LEN)?;
    if &h[..8] != MAGIC && &h[..8] != MAGIC_TEXT_IDS {
        return None;
    }
    let len = u64::from_be_bytes(h[8..16].try_into().ok()?);
    Some((len, h[16..].try_into().ok()?))
}

/// Why `bytes` is not read as a snapshot.
pub fn no_header(bytes: &[u8]) -> String {
    match bytes.starts_with(&MAGIC[..7]) {
        true => "a snapshot written by a newer peerstash: recover it with that release".into(),
        false => "no snapshot header".into(),
    }
}

/// When snapshot `slot` was taken (`taken_ms`, by the clock of then), as shown to the admin.
pub fn taken_label(slot: SnapshotNo, taken_ms: Option<i64>) -> String {
    match (taken_ms, slot) {
        (Some(ms), _) => taken_at(ms),
        (None, SnapshotNo::Dated(d)) => format!("taken {}", Slot::day_text(d.day)),
        (None, SnapshotNo::Numbered(_)) => "taken at an unknown time".into(),
    }
}

/// "taken 2026-12-07 21:44 UTC": when a snapshot was taken (unix ms, by the clock of then).
pub fn taken_at(ms: i64) -> String {
    let s = ms.div_euclid(1000);
    format!(
        "taken {} {:02}:{:02} UTC",
        Slot::day_text(s.div_euclid(86_400).clamp(0, u32::MAX as i64) as u32),
        s.rem_euclid(86_400) / 3600,
        s.rem_euclid(3600) / 60
    )
}

/// A recover's first probes for numbered snapshots: the powers of two. The newest found is the
/// top bit of the newest number (kept: `chain`).
pub fn search_start() -> Vec<u64> {
    (0..64).map(|k| 1u64 << k).collect()
}

/// The next round of a recover's search once `base` is found with its `bits` lowest bits still
/// to learn: the multiples of the round's step above `base` (`SEARCH_BITS` bits a round, 63
/// probes); the newest found is the new base. Returns the probes and the bits left after.
pub fn search_round(base: u64, bits: u32) -> (Vec<u64>, u32) {
    let b = bits.min(SEARCH_BITS);
    let step = 1u64 << (bits - b);
    let probes = (1..1u64 << b)
        .filter_map(|x| base.checked_add(x * step))
        .collect();
    (probes, bits - b)
}

/// Bits of a snapshot number a recover learns per round.
const SEARCH_BITS: u32 = 6;

/// Writes a snapshot of the catalog at `live` into `out` (a new database with the catalog's
/// schema): the `CARRIED` tables, as of one instant (one read transaction; the daemon goes on
/// writing meanwhile). Blocking: run it off the async runtime.
pub fn write_database(live: &Path, out: &Path) -> Result<(), StoreError> {
    let _ = std::fs::remove_file(out);
    drop(Catalog::open_scratch(out)?);
    let conn = Connection::open(out)?;
    conn.busy_timeout(std::time::Duration::from_secs(10))?;
    // One file, no log beside it: on any error, `out` is deleted.
    conn.pragma_update(None, "journal_mode", "OFF")?;
    conn.pragma_update(None, "synchronous", "OFF")?;
    conn.execute("ATTACH DATABASE ?1 AS live", [path_text(live)?])?;
    conn.execute_batch("BEGIN")?;
    for table in CARRIED {
        copy_rows(&conn, table, "live", "INSERT")?;
    }
    conn.execute_batch("COMMIT; DETACH DATABASE live")?;
    drop(conn);
    Ok(())
}

/// Writes the snapshot file `out` (header, then the database at `db`), synced; returns its
/// length. Blocking. Streams: memory stays at a buffer's size whatever the catalog's.
pub fn write_file(db: &Path, out: &Path) -> std::io::Result<u64> {
    use std::io::{Seek, Write};
    use std::os::unix::fs::OpenOptionsExt;
    let mut source = std::fs::File::open(db)?;
    let (len, hash) = hash_file(&mut source)?;
    source.rewind()?;
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(out)?;
    f.write_all(&header(len, &hash))?;
    let copied = std::io::copy(&mut source, &mut f)?;
    if copied != len {
        return Err(std::io::Error::other(format!(
            "{} changed while it was copied ({len} bytes, then {copied})",
            db.display()
        )));
    }
    f.sync_all()?;
    Ok(HEADER_LEN as u64 + len)
}

/// The snapshot file `f` is whole: the database after its header has the length and hash the
/// header says (a daemon killed while writing it leaves it short). Leaves `f` at its start.
pub fn check_file(f: &mut std::fs::File) -> Result<(), String> {
    use std::io::{Read, Seek};
    let mut head = [0u8; HEADER_LEN];
    f.read_exact(&mut head).map_err(|e| e.to_string())?;
    let (len, hash) = parse_header(&head).ok_or_else(|| no_header(&head))?;
    let (got_len, got) = hash_file(f).map_err(|e| e.to_string())?;
    f.rewind().map_err(|e| e.to_string())?;
    match (got_len == len, got == hash) {
        (false, _) => Err(format!(
            "{got_len} bytes after its header, which says {len}"
        )),
        (true, false) => Err("its bytes do not match the hash in its header".into()),
        (true, true) => Ok(()),
    }
}

/// The length and SHA-256 of what `f` holds from where it is, read through a buffer.
fn hash_file(f: &mut std::fs::File) -> std::io::Result<(u64, [u8; 32])> {
    let mut hasher = Sha256::new();
    let len = std::io::copy(f, &mut hasher)?;
    Ok((len, hasher.finalize().into()))
}

/// Copies every row of `table` from the attached database `from` into the main one, column by
/// name (an older catalog added its columns in another order), with `insert` ("INSERT", "INSERT
/// OR IGNORE").
fn copy_rows(conn: &Connection, table: &str, from: &str, insert: &str) -> Result<(), StoreError> {
    let columns: Vec<String> = conn
        .prepare(&format!("SELECT name FROM pragma_table_info('{table}')"))?
        .query_map([], |r| r.get(0))?
        .collect::<Result<_, _>>()?;
    let columns = columns.join(", ");
    conn.execute_batch(&format!(
        "{insert} INTO main.{table} ({columns}) SELECT {columns} FROM {from}.{table}"
    ))?;
    Ok(())
}

fn path_text(path: &Path) -> Result<&str, StoreError> {
    path.to_str().ok_or_else(|| {
        StoreError::Commit(format!(
            "{} is not UTF-8: SQLite cannot attach it",
            path.display()
        ))
    })
}

/// At start, before the catalog opens: a catalog `peerstash recover` left as `RECOVERED`
/// replaces `catalog.db`. The chunks hosted by the catalog it replaces stay hosted (their rows
/// are carried over); the replaced catalog is kept as `REPLACED`. Each step can be repeated
/// after a crash. Returns whether a catalog was installed.
pub fn install_recovered(state_dir: &Path) -> Result<bool, StoreError> {
    let recovered = state_dir.join(RECOVERED);
    if !recovered.exists() {
        return Ok(false);
    }
    let db = state_dir.join("catalog.db");
    // The hosted rows are carried over as bytes: the replaced catalog is brought to this
    // release's schema first (it may not have been opened since an upgrade). A snapshot of
    // schema 1 keeps fileIds as text: the migration at its first open takes both kinds.
    if db.exists() {
        drop(Catalog::open(&db)?);
        let conn = Connection::open(&recovered)?;
        conn.busy_timeout(std::time::Duration::from_secs(10))?;
        conn.execute("ATTACH DATABASE ?1 AS old", [path_text(&db)?])?;
        let has_hosted: bool = conn.query_row(
            "SELECT EXISTS (SELECT 1 FROM old.sqlite_master WHERE name = 'hosted')",
            [],
            |r| r.get(0),
        )?;
        if has_hosted {
            copy_rows(&conn, "hosted", "old", "INSERT OR IGNORE")?;
        }
        conn.execute_batch("DETACH DATABASE old")?;
        conn.pragma_update(None, "journal_mode", "DELETE")?;
        drop(conn);
        // The old catalog's log merged into its file, so that no log is left to be applied
        // to the new one.
        let old = Connection::open(&db)?;
        old.query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |_| Ok(()))?;
        old.pragma_update(None, "journal_mode", "DELETE")?;
        drop(old);
        std::fs::rename(&db, state_dir.join(REPLACED))
            .map_err(|e| StoreError::Commit(format!("cannot set {} aside: {e}", db.display())))?;
    }
    for suffix in ["-wal", "-shm"] {
        let mut log = db.as_os_str().to_owned();
        log.push(suffix);
        let _ = std::fs::remove_file(PathBuf::from(log));
    }
    std::fs::rename(&recovered, &db)
        .map_err(|e| StoreError::Commit(format!("cannot install {}: {e}", recovered.display())))?;
    if let Ok(dir) = std::fs::File::open(state_dir) {
        let _ = dir.sync_all();
    }
    Ok(true)
}

/// The database at `db` (a snapshot's plaintext after its header) has the length and hash its
/// header (`header_bytes`) says. Streams, as `write_file` does.
pub fn check_database(header_bytes: &[u8], db: &Path) -> Result<(), String> {
    let (len, hash) = parse_header(header_bytes).ok_or_else(|| no_header(header_bytes))?;
    let mut f = std::fs::File::open(db).map_err(|e| format!("{}: {e}", db.display()))?;
    let (got_len, got) = hash_file(&mut f).map_err(|e| format!("{}: {e}", db.display()))?;
    if got_len != len {
        return Err(format!("{got_len} bytes, the header says {len}"));
    }
    if got != hash {
        return Err("its bytes do not match the hash in its header".into());
    }
    Ok(())
}

/// The catalog in `db` opens, passes SQLite's quick check and has our tables.
pub fn check_catalog(db: &Path) -> Result<u64, StoreError> {
    let conn = Connection::open(db)?;
    let found: String = conn.query_row("PRAGMA quick_check", [], |r| r.get(0))?;
    if found != "ok" {
        return Err(StoreError::Corrupt(found));
    }
    let files: Option<u64> = conn
        .query_row("SELECT COUNT(*) FROM files", [], |r| r.get(0))
        .optional()?;
    files.ok_or_else(|| StoreError::Corrupt("no files table".into()))
}

/// A snapshot as `state` shows it.
impl From<SnapshotRow> for crate::control::SnapshotInfo {
    fn from(s: SnapshotRow) -> crate::control::SnapshotInfo {
        crate::control::SnapshotInfo {
            snapshot: s.slot.to_string(),
            taken: taken_label(s.slot, s.taken_ms),
            at_rd: s.at_rd,
        }
    }
}

#[cfg(test)]
#[path = "snapshot_tests.rs"]
mod tests;
