//! The SQLite catalog: the one source of truth for what this peer backed up (files, versions,
//! chunk hashes), what it hosts for others, and who holds what (holder sets = perceived RD).
//! `Catalog` is synchronous; `CatalogHandle` runs it on a dedicated thread and commits the calls
//! queued at the same moment in one transaction, so a burst of STOREDs costs one fsync.
//!
//! This file owns the `Catalog` type, its schema and migrations, and the `meta` table; each
//! other table has its file (`files`, `folders`, `forget`, `queue`, `hosted`, `holders`,
//! `peers`, `snapshots`), and `handle` runs the catalog thread. Outside the catalog, callers use
//! `CatalogHandle`'s named verbs (`verbs_own`, `verbs_peer`): each runs one `Catalog` method,
//! so a rule of several steps ("resume or insert a version", "forget only by policy") is
//! written once, here.

use std::ffi::OsStr;
use std::ffi::OsString;
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::path::{Path, PathBuf};

use rusqlite::{params, Connection, OptionalExtension};

use crate::protocol::auth;
use crate::protocol::hex;
use crate::protocol::message::{ChunkId, ChunkNo, FileId, PeerId};

mod files;
mod folders;
mod forget;
mod handle;
mod holders;
mod hosted;
mod overview;
mod peers;
mod queue;
mod schema;
pub(in crate::store) mod snapshots;
#[cfg(test)]
pub(in crate::store) mod tests;
mod verbs_own;
mod verbs_peer;

use files::{path_at, path_key};
pub use files::{Begun, FileRow};
use folders::below_key;
pub use folders::{DeletedPath, FolderRow};
pub use forget::{Forget, HistoryHold, Policy};
pub use handle::CatalogHandle;
pub use holders::{FileChunkRow, MAX_HOLDERS};
pub use hosted::{ChunkRole, HostedRow};
pub use overview::{Overview, StateView, StatusView};
pub use peers::{PeerRow, MAX_PEER_ROWS};
pub use snapshots::{SnapshotLook, SnapshotRow};

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("catalog error: {0}")]
    Sqlite(#[from] rusqlite::Error),
    #[error("catalog commit failed: {0}")]
    Commit(String),
    #[error("the catalog thread has stopped")]
    Closed,
    #[error("catalog holds an invalid value: {0}")]
    Corrupt(String),
    #[error("the catalog's disk is full ({0}): free some space there")]
    DiskFull(String),
}

impl StoreError {
    /// The catalog's disk (or the disk of a database written beside it) is full.
    pub fn is_disk_full(&self) -> bool {
        match self {
            StoreError::DiskFull(_) => true,
            StoreError::Sqlite(e) => is_disk_full(e),
            _ => false,
        }
    }

    /// A batch that failed with `e` as a whole (at its begin or its commit).
    fn batch(what: &str, e: &rusqlite::Error) -> StoreError {
        match is_disk_full(e) {
            true => StoreError::DiskFull(format!("{what}: {e}")),
            false => StoreError::Commit(format!("{what}: {e}")),
        }
    }
}

fn is_disk_full(e: &rusqlite::Error) -> bool {
    e.sqlite_error_code() == Some(rusqlite::ErrorCode::DiskFull)
}

/// A write failed because its disk (or the user's disk quota) is full.
pub fn io_disk_full(e: &std::io::Error) -> bool {
    use std::io::ErrorKind::{QuotaExceeded, StorageFull};
    matches!(e.kind(), StorageFull | QuotaExceeded)
}

/// The meta key of the fingerprint of the master key this peer last ran with.
pub const MASTER_KEY_FP: &str = "master_key_fp";

/// The meta key of the running clock: ms the daemon has run, in all, counted by the monotonic
/// clock (`Catalog::advance_run_clock`). Versions' ages (`history`) are counted on it, so that a
/// wall clock set wrong, or a computer off for a month, prunes no history early.
pub const RUN_CLOCK: &str = "run_ms";

/// The meta key of the master key made here: "fingerprint unix_ms".
pub const MASTER_KEY_MADE: &str = "master_key_made";

/// What the catalog says of the master key its encrypted versions need (`Catalog::key_facts`).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct KeyFacts {
    /// The fingerprint of the key this peer last ran with (else of its newest encrypted
    /// version's key); None if it never had one, or only before fingerprints were kept.
    pub expected: Option<String>,
    /// The encrypted versions (catalog snapshots included) under that key, or of unknown key.
    pub versions: u64,
}

/// Which backup inserted a version (random per backup run): an abandoned backup may forget only
/// the version it inserted itself.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BackupId(pub i64);

impl BackupId {
    pub fn new() -> BackupId {
        BackupId(rand::random::<i64>())
    }
}

impl Default for BackupId {
    fn default() -> BackupId {
        BackupId::new()
    }
}

pub struct Catalog {
    pub(super) conn: Connection,
    /// Where it is: `CatalogHandle::read` opens it again, read-only.
    path: PathBuf,
}

/// The catalog is the daemon's alone: mode 0600 whatever the umask (SQLite would create it
/// 0644 less the umask, and gives the -wal and -shm files the same mode).
fn make_private(path: &Path) -> Result<(), StoreError> {
    use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
    let private = |e: std::io::Error| {
        StoreError::Commit(format!("cannot make {} private: {e}", path.display()))
    };
    std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .mode(0o600)
        .open(path)
        .map_err(private)?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600)).map_err(private)
}

/// A fileId as the catalog keeps it: its 32 bytes (`schema::SCHEMA_VERSION` 2).
impl rusqlite::ToSql for FileId {
    fn to_sql(&self) -> rusqlite::Result<rusqlite::types::ToSqlOutput<'_>> {
        Ok(self.digest().to_vec().into())
    }
}

impl rusqlite::types::FromSql for FileId {
    fn column_result(value: rusqlite::types::ValueRef<'_>) -> rusqlite::types::FromSqlResult<Self> {
        let blob = value.as_blob()?;
        let digest: &[u8; 32] =
            blob.try_into()
                .map_err(|_| rusqlite::types::FromSqlError::InvalidBlobSize {
                    expected_size: 32,
                    blob_size: blob.len(),
                })?;
        Ok(FileId::from_digest(digest))
    }
}

/// A fileId kept as text: `hosted.wire_id`, as its home peer wrote it.
fn file_id_of(text: String) -> Result<FileId, StoreError> {
    FileId::parse(&text).map_err(|e| StoreError::Corrupt(e.to_string()))
}

fn chunk_no_of(n: i64) -> Result<ChunkNo, StoreError> {
    u32::try_from(n)
        .ok()
        .and_then(ChunkNo::new)
        .ok_or_else(|| StoreError::Corrupt(format!("chunk number {n}")))
}

/// A path as the catalog stores it: its bytes, whatever they are.
/// `meta` key of the folders ever watched (`Catalog::note_watched`), and how many it keeps.
const WATCHED_KEY: &str = "watched_folders";

const MAX_WATCHED_KEPT: usize = 1024;

/// The bytes of lower- or upper-case hex text; None when it is not hex.
fn unhex(text: &str) -> Option<Vec<u8>> {
    let t = text.as_bytes();
    if t.len() % 2 != 0 {
        return None;
    }
    (t.chunks(2))
        .map(|p| u8::from_str_radix(std::str::from_utf8(p).ok()?, 16).ok())
        .collect()
}

impl Catalog {
    pub fn open(path: &Path) -> Result<Catalog, StoreError> {
        Catalog::open_with(path, true)
    }

    /// A catalog made to be copied once, then deleted (a snapshot being written): no log and
    /// no sync, so that it writes nothing but itself (on a full disk, its writes fail as
    /// SQLITE_FULL, not as an I/O error of a log). Whoever copies it syncs the copy.
    pub fn open_scratch(path: &Path) -> Result<Catalog, StoreError> {
        Catalog::open_with(path, false)
    }

    fn open_with(path: &Path, durable: bool) -> Result<Catalog, StoreError> {
        make_private(path)?;
        let conn = Connection::open(path)?;
        conn.busy_timeout(std::time::Duration::from_secs(10))?;
        // WAL + FULL: a committed transaction survives kill -9 and power loss; batching commits
        // keeps the cost to one fsync per batch.
        // Every hot statement is prepared once (`prepare_cached`).
        conn.set_prepared_statement_cache_capacity(128);
        let (journal, synchronous) = match durable {
            true => ("WAL", "FULL"),
            false => ("OFF", "OFF"),
        };
        conn.pragma_update(None, "journal_mode", journal)?;
        conn.pragma_update(None, "synchronous", synchronous)?;
        schema::bring_up(&conn, path)?;
        conn.pragma_update(None, "foreign_keys", "ON")?;
        // SQLite gives the -wal and -shm files the database's mode; older stores may have them.
        for suffix in ["-wal", "-shm"] {
            let mut other = path.as_os_str().to_owned();
            other.push(suffix);
            if Path::new(&other).exists() {
                make_private(Path::new(&other))?;
            }
        }
        Ok(Catalog {
            conn,
            path: path.to_path_buf(),
        })
    }

    /// Runs `f` all or nothing: in a savepoint, nested in the catalog thread's transaction, or
    /// a transaction of its own when the catalog is used directly.
    pub(super) fn atomically<R>(
        &self,
        f: impl FnOnce() -> Result<R, StoreError>,
    ) -> Result<R, StoreError> {
        self.conn.execute_batch("SAVEPOINT atomically")?;
        let done = f().and_then(|r| {
            self.conn.execute_batch("RELEASE atomically")?;
            Ok(r)
        });
        if done.is_err() {
            let _ = self
                .conn
                .execute_batch("ROLLBACK TO atomically; RELEASE atomically");
        }
        done
    }

    /// Merges the write-ahead log into the database file; outside a transaction only.
    fn checkpoint(&self) -> Result<(), StoreError> {
        self.conn
            .prepare_cached("PRAGMA wal_checkpoint(TRUNCATE)")?
            .query_row([], |_| Ok(()))?;
        Ok(())
    }

    /// SQLite's quick check of the whole file: Err with what it found when it is damaged.
    pub fn quick_check(&self) -> Result<(), StoreError> {
        self.pragma_check("quick_check")
    }

    /// SQLite's full check (indexes against tables too): slower, on demand.
    pub fn integrity_check(&self) -> Result<(), StoreError> {
        self.pragma_check("integrity_check")
    }

    fn pragma_check(&self, pragma: &str) -> Result<(), StoreError> {
        let mut stmt = self.conn.prepare_cached(&format!("PRAGMA {pragma}"))?;
        let found: Vec<String> = stmt
            .query_map([], |r| r.get(0))?
            .collect::<Result<_, _>>()?;
        match found.as_slice() {
            [ok] if ok == "ok" => Ok(()),
            _ => Err(StoreError::Corrupt(found.join("; "))),
        }
    }

    pub fn meta(&self, key: &str) -> Result<Option<String>, StoreError> {
        Ok(self
            .conn
            .prepare_cached("SELECT value FROM meta WHERE key = ?1")?
            .query_row([key], |r| r.get(0))
            .optional()?)
    }

    pub fn set_meta(&self, key: &str, value: &str) -> Result<(), StoreError> {
        self.conn
            .prepare_cached(
                "INSERT INTO meta (key, value) VALUES (?1, ?2)
             ON CONFLICT (key) DO UPDATE SET value = excluded.value",
            )?
            .execute(params![key, value])?;
        Ok(())
    }

    pub fn delete_meta(&self, key: &str) -> Result<(), StoreError> {
        self.conn
            .prepare_cached("DELETE FROM meta WHERE key = ?1")?
            .execute([key])?;
        Ok(())
    }

    /// The running clock (`RUN_CLOCK`), in ms.
    pub fn run_clock(&self) -> Result<i64, StoreError> {
        Ok(self
            .meta(RUN_CLOCK)?
            .and_then(|v| v.parse().ok())
            .unwrap_or(0))
    }

    /// The daemon ran `ms` more (by its monotonic clock): the running clock moves on.
    pub fn advance_run_clock(&self, ms: i64) -> Result<(), StoreError> {
        self.conn
            .prepare_cached(
                "INSERT INTO meta (key, value) VALUES (?1, ?2)
                 ON CONFLICT (key) DO UPDATE SET value = CAST(value AS INTEGER) + ?2",
            )?
            .execute(params![RUN_CLOCK, ms.max(0)])?;
        Ok(())
    }

    /// The master key this peer runs with (its fingerprint, `MASTER_KEY_FP`) and, if it was
    /// just made here, "fingerprint unix_ms" (`MASTER_KEY_MADE`). One transaction.
    pub fn note_master_key(&self, fp: &str, made: Option<&str>) -> Result<(), StoreError> {
        self.atomically(|| {
            self.set_meta(MASTER_KEY_FP, fp)?;
            match made {
                Some(made) => self.set_meta(MASTER_KEY_MADE, made),
                None => Ok(()),
            }
        })
    }

    // ---- our own files -------------------------------------------------------------------

    /// The folders ever watched here (config `[[watch]]`s, as they were loaded), kept in `meta`
    /// so that a snapshot carries them: `restore --all` brings back a folder added after the
    /// config was copied off the machine. Hex of each path's bytes, one a line.
    pub fn note_watched(&self, roots: &[PathBuf]) -> Result<(), StoreError> {
        let mut known = self.watched_folders()?;
        let before = known.len();
        for r in roots {
            if !known.contains(r) && known.len() < MAX_WATCHED_KEPT {
                known.push(r.clone());
            }
        }
        if known.len() == before {
            return Ok(());
        }
        let text: Vec<String> = known.iter().map(|p| hex(path_key(p))).collect();
        self.set_meta(WATCHED_KEY, &text.join("\n"))
    }

    /// The folders `note_watched` kept, oldest first.
    pub fn watched_folders(&self) -> Result<Vec<PathBuf>, StoreError> {
        let text = self.meta(WATCHED_KEY)?.unwrap_or_default();
        Ok(text
            .lines()
            .filter_map(unhex)
            .map(|b| PathBuf::from(std::ffi::OsString::from_vec(b)))
            .collect())
    }

    /// What the start checks the master key against (`KeyFacts`).
    pub fn key_facts(&self) -> Result<KeyFacts, StoreError> {
        let expected = match self.meta(MASTER_KEY_FP)? {
            Some(fp) => Some(fp),
            None => self
                .conn
                .prepare_cached(
                    "SELECT key_fp FROM files WHERE encrypted = 1 AND key_fp IS NOT NULL
                     ORDER BY rowid DESC LIMIT 1",
                )?
                .query_row([], |r| r.get(0))
                .optional()?,
        };
        let versions: i64 = self
            .conn
            .prepare_cached(
                "SELECT COUNT(*) FROM files
                 WHERE encrypted = 1 AND (key_fp IS NULL OR ?1 IS NULL OR key_fp = ?1)",
            )?
            .query_row([&expected], |r| r.get(0))?;
        Ok(KeyFacts {
            expected,
            versions: versions as u64,
        })
    }

    /// Our versions this peer cannot decrypt with the key it runs with (fingerprint `running`,
    /// None: no key): encrypted under another key, or encrypted while it has none. Versions
    /// recorded before fingerprints were kept count as the running key's. Their count, and
    /// the paths (only `owner`'s if given) whose newest version (its newest complete one, else
    /// its newest: as `newest_health` takes it) is one of them.
    pub fn undecryptable(
        &self,
        running: Option<&str>,
        owner: Option<u32>,
    ) -> Result<(u64, Vec<PathBuf>), StoreError> {
        let mut stmt = self.conn.prepare_cached(
            "SELECT f.path, f.file_id = (SELECT g.file_id FROM files g WHERE g.path = f.path
                                         ORDER BY g.complete DESC, g.version DESC LIMIT 1)
             FROM files f
             WHERE f.encrypted = 1 AND (?1 IS NULL OR (f.key_fp IS NOT NULL AND f.key_fp != ?1))
               AND f.file_id NOT IN (SELECT file_id FROM snapshots)
               AND (?2 IS NULL OR f.uid = ?2)",
        )?;
        let mut rows = stmt.query(params![running, owner])?;
        let (mut count, mut newest) = (0u64, Vec::new());
        while let Some(r) = rows.next()? {
            count += 1;
            if r.get::<_, bool>(1)? {
                newest.push(path_at(r, 0)?);
            }
        }
        Ok((count, newest))
    }
}
