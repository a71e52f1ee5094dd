//! The SQLite catalog: the one source of truth for what this peer backed up (files, versions,
//! chunk hashes), what it hosts for others, and who holds what (holder sets = perceived RD).
//! `Catalog` is synchronous; `CatalogHandle` runs it on a dedicated thread and commits the calls
//! queued at the same moment in one transaction, so a burst of STOREDs costs one fsync.

use std::ffi::OsStr;
use std::ffi::OsString;
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc as std_mpsc;
use std::sync::Arc;

use rusqlite::{params, Connection, OptionalExtension};
use tokio::sync::oneshot;

use crate::protocol::auth;
use crate::protocol::hex;
use crate::protocol::message::{ChunkId, ChunkNo, FileId, PeerId};

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

/// One backed-up version of one of our own files.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FileRow {
    pub file_id: FileId,
    pub path: PathBuf,
    pub version: u32,
    pub size: u64,
    pub mtime_ns: i64,
    pub mode: u32,
    pub content_hash: String,
    pub desired_rd: u8,
    pub complete: bool,
    pub inode: u64,
    pub uid: u32,
    pub gid: u32,
    /// Unix seconds when the local file was found gone (its versions then expire per policy).
    pub deleted_at: Option<i64>,
    /// The inode change time (ns) seen when this version was last read in full: a change that
    /// keeps size and mtime (a write followed by `touch -r`) still moves it.
    pub ctime_ns: i64,
    /// Its chunks are encrypted under the master key (`protocol::seal`).
    pub encrypted: bool,
    /// Encrypted: the fingerprint of the master key it is encrypted under
    /// (`MasterKey::fingerprint`); None in clear, or for a version recorded before they were.
    pub key_fp: Option<String>,
}

/// A folder as last seen when a file below it was backed up (`Catalog::note_folders`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FolderRow {
    pub path: PathBuf,
    pub uid: u32,
    pub gid: u32,
    /// The permission bits (`mode & 0o7777`).
    pub mode: u32,
    pub mtime_ns: i64,
}

/// The meta key of the fingerprint of the master key this peer last ran with.
pub const MASTER_KEY_FP: &str = "master_key_fp";

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

/// Why a version of our own is forgotten (its row and chunk records dropped, DELETE sent to
/// the peers). `Catalog::forget` is the only way a version is deleted, and it enforces:
///
/// **A version, once complete, is deleted only by an explicit policy decision** —
/// `keep_versions` (newer complete versions exist), `keep_deleted` (the path is really gone:
/// still marked deleted, for long enough) or `peerstash delete` — **never by an error path of
/// another backup.** A backup that gives up (the file changed while it was read) may forget
/// only a version that is not complete and that this very backup inserted; a version it resumed
/// is left as it was.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Forget {
    /// Beyond the folder's `keep_versions`: allowed for a complete version when `keep` newer
    /// complete versions of its path exist, for an incomplete one when a newer complete exists.
    KeepVersions { keep: u32 },
    /// The path is still marked gone (the caller checked it again by lstat just before), and
    /// has been absent at least `keep_deleted_ms` while its folder was available, as the daemon
    /// measured it with its monotonic clock (`absent_ms`): not by the wall clock, which jumps.
    DeletedExpired { keep_deleted_ms: i64 },
    /// `peerstash delete`: the user's explicit word.
    UserDelete,
    /// A backup abandoned the version it inserted (the file changed while it was read).
    Abandoned { backup: BackupId },
    /// A backup found no peer with room for some of its chunks: allowed for an unfinished
    /// version (never a complete one, never a catalog snapshot), whose chunks are freed.
    DoesNotFit,
}

/// A path whose local file was found gone (`Catalog::deleted_paths`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DeletedPath {
    pub path: PathBuf,
    /// Unix seconds when it was found gone: shown to users, never used for expiry.
    pub deleted_at: i64,
    /// How long it has been counted absent while its folder was available.
    pub absent_ms: i64,
}

/// A chunk this peer hosts for another peer.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HostedRow {
    pub file_id: FileId,
    pub chunk_no: ChunkNo,
    pub size: u64,
    pub hash: String,
    pub desired_rd: u8,
    /// The peer whose PUTCHUNK was stored: `PeerId(0)` when unknown (recorded before senders
    /// were, or re-indexed by `--rebuild-catalog`).
    pub sender: PeerId,
}

/// One chunk of a version this peer backed up, as recorded before its first PUTCHUNK.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FileChunkRow {
    pub chunk_no: ChunkNo,
    pub size: u64,
    /// SHA-256 of its bytes: a restore takes only a CHUNK that matches.
    pub hash: String,
    /// Distinct peers known to hold it.
    pub perceived_rd: u32,
}

impl HostedRow {
    /// The chunk, with the fileId text exactly as its home peer wrote it.
    pub fn chunk_id(&self) -> ChunkId {
        ChunkId {
            file_id: self.file_id.clone(),
            chunk_no: self.chunk_no,
        }
    }
}

/// How long a forgotten version of ours is remembered (`ChunkRole::Forgotten`): 90 days.
const FORGOTTEN_KEPT_S: i64 = 90 * 86_400;

/// Most rows of `peers` that `heard_peers` lets grow by peers holding nothing of ours: any
/// datagram names a sender id, so a flood of forged ids must not grow the table without end.
pub const MAX_PEER_ROWS: u64 = 4096;

/// Unix ms by the system clock: the catalog's timestamps (peers heard and lost, deletes owed).
pub fn unix_ms() -> i64 {
    let ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64);
    ms.saturating_add(test_clock_offset_s().saturating_mul(1000))
}

/// Tests only: in a debug build, `PEERSTASH_CLOCK_OFFSET_S` moves this process's wall clock
/// (`unix_ms`, `daemon::unix_now`) by that many seconds, as a clock set ahead or back would
/// (tests/durability_snapshots.rs). A release build never reads it.
pub fn test_clock_offset_s() -> i64 {
    #[cfg(debug_assertions)]
    {
        static OFFSET: std::sync::OnceLock<i64> = std::sync::OnceLock::new();
        *OFFSET.get_or_init(|| {
            std::env::var("PEERSTASH_CLOCK_OFFSET_S")
                .ok()
                .and_then(|v| v.parse().ok())
                .unwrap_or(0)
        })
    }
    #[cfg(not(debug_assertions))]
    0
}

/// One peer as `peerstash peers` lists it (`Catalog::peers_report`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PeerRow {
    pub id: PeerId,
    /// The highest protocol version heard from it ("1.0", "2.0"); empty if never heard.
    pub protocol: String,
    /// Unix ms of its latest message heard; None if never heard.
    pub last_heard_ms: Option<i64>,
    /// Unix ms since when it is counted lost (silent longer than `peer.holder_timeout`).
    pub lost_at_ms: Option<i64>,
    /// Chunks of our own files it holds (holder rows).
    pub chunks_of_ours: u64,
    /// Bytes of its chunks we host (those whose PUTCHUNK it sent).
    pub hosted_bytes: u64,
    /// Deleted versions of ours it has not acknowledged.
    pub unacked_deletes: u64,
}

/// What a chunk is to this peer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ChunkRole {
    /// A chunk of one of our files (we are its home peer; we never host it).
    Own {
        desired_rd: u8,
    },
    Hosted {
        desired_rd: u8,
    },
    /// A chunk of a version of ours that was forgotten (deleted): still ours, never hosted. A
    /// holder's late re-backup of it would otherwise make us host our own chunk.
    Forgotten,
    Unknown,
}

pub struct Catalog {
    pub(super) conn: Connection,
    /// Where it is: `CatalogHandle::read` opens it again, read-only.
    path: PathBuf,
}

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS files (
    file_id TEXT PRIMARY KEY,         -- lower-case fileId of one version of one of our files
    path BLOB NOT NULL,               -- the path's bytes (names need not be UTF-8)
    version INTEGER NOT NULL,
    size INTEGER NOT NULL,
    mtime_ns INTEGER NOT NULL,
    mode INTEGER NOT NULL,
    content_hash TEXT NOT NULL,
    desired_rd INTEGER NOT NULL,
    complete INTEGER NOT NULL DEFAULT 0,
    inode INTEGER NOT NULL DEFAULT 0,
    uid INTEGER NOT NULL DEFAULT 0,   -- owner and group, given back at restore
    gid INTEGER NOT NULL DEFAULT 0,
    deleted_at INTEGER,               -- unix seconds when the local file was found gone
    ctime_ns INTEGER NOT NULL DEFAULT 0, -- inode change time when last read in full
    backup_id INTEGER,                -- the backup run that inserted this version
    absent_ms INTEGER NOT NULL DEFAULT 0, -- while deleted_at is set: ms counted absent (monotonic)
    encrypted INTEGER NOT NULL DEFAULT 0, -- chunks encrypted under the master key
    completed_ms INTEGER,             -- unix ms when it became complete
    no_resume INTEGER NOT NULL DEFAULT 0, -- unfinished, never resumed (`Catalog::sealed_version`)
    key_fp TEXT,                      -- encrypted: its master key's fingerprint (NULL: before they were kept)
    UNIQUE (path, version)
);
CREATE TABLE IF NOT EXISTS last_versions (
    path BLOB PRIMARY KEY,            -- the highest version number ever given to a path:
    version INTEGER NOT NULL          -- a forgotten version's number is never reused
);
CREATE TABLE IF NOT EXISTS queue (
    path BLOB PRIMARY KEY,            -- a path (bytes) to look at: back it up, or note that it is gone
    due_at INTEGER NOT NULL,          -- unix ms; later after a failure
    attempts INTEGER NOT NULL DEFAULT 0,
    gen INTEGER NOT NULL DEFAULT 0,   -- bumped when queued again while being worked on
    since INTEGER                     -- unix ms of its first change not yet backed up (max_delay)
);
CREATE TABLE IF NOT EXISTS file_chunks (
    file_id TEXT NOT NULL REFERENCES files(file_id) ON DELETE CASCADE,
    chunk_no INTEGER NOT NULL,
    size INTEGER NOT NULL,
    hash TEXT NOT NULL,
    PRIMARY KEY (file_id, chunk_no)
);
CREATE TABLE IF NOT EXISTS hosted (
    file_id TEXT NOT NULL,            -- lower case, the key
    chunk_no INTEGER NOT NULL,
    wire_id TEXT NOT NULL,            -- the fileId exactly as its home peer wrote it
    size INTEGER NOT NULL,
    hash TEXT NOT NULL,
    desired_rd INTEGER NOT NULL,
    sender INTEGER NOT NULL DEFAULT 0, -- the peer whose PUTCHUNK we stored (0: unknown)
    PRIMARY KEY (file_id, chunk_no)
);
CREATE TABLE IF NOT EXISTS pending_deletes (
    file_id TEXT PRIMARY KEY          -- versions forgotten here whose DELETE is still to be sent
);
CREATE TABLE IF NOT EXISTS forgotten (
    file_id TEXT PRIMARY KEY,         -- our own versions forgotten here: never hosted by us
    at INTEGER NOT NULL               -- unix seconds, for pruning
);
CREATE TABLE IF NOT EXISTS holders (
    file_id TEXT NOT NULL,
    chunk_no INTEGER NOT NULL,
    peer INTEGER NOT NULL,
    PRIMARY KEY (file_id, chunk_no, peer)
);
CREATE TABLE IF NOT EXISTS peers (
    id INTEGER PRIMARY KEY,           -- a peer heard, or counted lost
    protocol TEXT NOT NULL,           -- the highest version heard from it ('': never heard)
    last_heard INTEGER NOT NULL,      -- unix ms of its latest message heard (0: never heard)
    lost_at INTEGER,                  -- unix ms when it was counted lost; NULL while not lost
    auth_mark INTEGER NOT NULL DEFAULT 0, -- LAN key: the newest AUTH time taken from it (its clock, unix s)
    auth_mark_at INTEGER NOT NULL DEFAULT 0 -- when that was taken (our clock, unix s)
);
CREATE TABLE IF NOT EXISTS folders (
    path BLOB PRIMARY KEY,            -- a folder from a watched folder down to a backed-up file
    uid INTEGER NOT NULL,             -- its owner, group, permission bits and mtime when last
    gid INTEGER NOT NULL,             -- seen (lstat through the walk's handles), given back by
    mode INTEGER NOT NULL,            -- `restore --all` to the folders it makes
    mtime_ns INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS delete_acks (
    file_id TEXT NOT NULL,            -- a version of ours forgotten here (its DELETE queued)
    peer INTEGER NOT NULL,            -- a holder of its chunks that has not acknowledged (DELETED)
    since INTEGER NOT NULL,           -- unix ms when the version was forgotten
    PRIMARY KEY (file_id, peer)
);
";

/// Each chunk's perceived RD, kept by triggers as holders come and go, so that neither an insert
/// nor a report recounts a holder set.
const HOLDER_COUNTS: &str = "
CREATE TABLE holder_counts (
    file_id TEXT NOT NULL,
    chunk_no INTEGER NOT NULL,
    n INTEGER NOT NULL,
    PRIMARY KEY (file_id, chunk_no)
);
INSERT INTO holder_counts (file_id, chunk_no, n)
    SELECT file_id, chunk_no, COUNT(*) FROM holders GROUP BY file_id, chunk_no;
CREATE TRIGGER holder_added AFTER INSERT ON holders BEGIN
    INSERT OR IGNORE INTO holder_counts (file_id, chunk_no, n) VALUES (NEW.file_id, NEW.chunk_no, 0);
    UPDATE holder_counts SET n = n + 1 WHERE file_id = NEW.file_id AND chunk_no = NEW.chunk_no;
END;
CREATE TRIGGER holder_removed AFTER DELETE ON holders BEGIN
    UPDATE holder_counts SET n = n - 1 WHERE file_id = OLD.file_id AND chunk_no = OLD.chunk_no;
    DELETE FROM holder_counts WHERE file_id = OLD.file_id AND chunk_no = OLD.chunk_no AND n <= 0;
END;
";

/// Most distinct holders recorded per chunk. A real LAN has far fewer peers than this; STOREDs
/// from more senders (forged ids) are ignored, so a flood cannot grow a holder set.
pub const MAX_HOLDERS: u32 = 64;

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

/// Brings a catalog made by an older release up to the current schema (idempotent).
fn migrate(conn: &Connection) -> Result<(), StoreError> {
    for (table, name, definition) in ADDED_COLUMNS {
        let have: Vec<String> = conn
            .prepare(&format!("SELECT name FROM pragma_table_info('{table}')"))?
            .query_map([], |r| r.get(0))?
            .collect::<Result<_, _>>()?;
        if !have.iter().any(|h| h == name) {
            conn.execute_batch(&format!(
                "ALTER TABLE {table} ADD COLUMN {name} {definition}"
            ))?;
        }
    }
    // Indexes on columns an older catalog may have just gained (so not in SCHEMA). By peer:
    // a lost holder is dropped, and the distinct holders are listed, without a full scan. By
    // due time: the queue's workers take the next due paths in a step, not in a sort of the
    // whole queue (100,000 paths after the first scan of a large folder).
    conn.execute_batch(
        "CREATE INDEX IF NOT EXISTS files_inode ON files (inode);
         CREATE INDEX IF NOT EXISTS holders_peer ON holders (peer);
         CREATE INDEX IF NOT EXISTS delete_acks_peer ON delete_acks (peer, since);
         CREATE INDEX IF NOT EXISTS queue_due ON queue (due_at);",
    )?;
    Ok(())
}

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

fn path_key(path: &Path) -> &[u8] {
    path.as_os_str().as_bytes()
}

/// The key of every path below the folder `path` starts with this.
fn below_key(path: &Path) -> Vec<u8> {
    let mut key = path_key(path).to_vec();
    while key.last() == Some(&b'/') {
        key.pop();
    }
    key.push(b'/');
    key
}

/// The first key after every key that starts with `below` (which ends with `/`): `/` + 1.
fn past_key(below: &[u8]) -> Vec<u8> {
    let mut key = below.to_vec();
    if let Some(last) = key.last_mut() {
        *last += 1;
    }
    key
}

/// A stored path (bytes; text in catalogs written before paths were bytes).
fn path_at(r: &rusqlite::Row<'_>, i: usize) -> rusqlite::Result<PathBuf> {
    use rusqlite::types::ValueRef;
    match r.get_ref(i)? {
        ValueRef::Blob(b) | ValueRef::Text(b) => Ok(PathBuf::from(OsStr::from_bytes(b))),
        other => Err(rusqlite::Error::InvalidColumnType(
            i,
            "path".into(),
            other.data_type(),
        )),
    }
}

const FILE_COLUMNS: &str = "file_id, path, version, size, mtime_ns, mode, content_hash, \
     desired_rd, complete, inode, deleted_at, uid, gid, ctime_ns, encrypted, key_fp";

/// Columns added after the first release: (table, name, definition), added to an older catalog
/// at open. (Tables added later need nothing: SCHEMA creates what is missing.)
const ADDED_COLUMNS: &[(&str, &str, &str)] = &[
    ("files", "ctime_ns", "INTEGER NOT NULL DEFAULT 0"),
    ("files", "backup_id", "INTEGER"),
    ("files", "absent_ms", "INTEGER NOT NULL DEFAULT 0"),
    ("hosted", "sender", "INTEGER NOT NULL DEFAULT 0"),
    ("files", "encrypted", "INTEGER NOT NULL DEFAULT 0"),
    ("files", "completed_ms", "INTEGER"),
    ("peers", "auth_mark", "INTEGER NOT NULL DEFAULT 0"),
    ("peers", "auth_mark_at", "INTEGER NOT NULL DEFAULT 0"),
    ("files", "no_resume", "INTEGER NOT NULL DEFAULT 0"),
    ("files", "key_fp", "TEXT"),
    ("queue", "since", "INTEGER"),
    ("peers", "incarnation", "TEXT"), // 2.0: its chunk store's incarnation (`engine::verify`)
    ("files", "completed_no", "INTEGER"),
    ("snapshots", "taken_ms", "INTEGER"),
    ("snapshots", "mark", "INTEGER NOT NULL DEFAULT 0"),
];

fn file_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<(String, FileRowRaw)> {
    Ok((
        r.get(0)?,
        FileRowRaw {
            path: path_at(r, 1)?,
            version: r.get(2)?,
            size: r.get(3)?,
            mtime_ns: r.get(4)?,
            mode: r.get(5)?,
            content_hash: r.get(6)?,
            desired_rd: r.get(7)?,
            complete: r.get(8)?,
            inode: r.get::<_, i64>(9)? as u64,
            deleted_at: r.get(10)?,
            uid: r.get(11)?,
            gid: r.get(12)?,
            ctime_ns: r.get(13)?,
            encrypted: r.get(14)?,
            key_fp: r.get(15)?,
        },
    ))
}

struct FileRowRaw {
    path: PathBuf,
    version: u32,
    size: i64,
    mtime_ns: i64,
    mode: u32,
    content_hash: String,
    desired_rd: u8,
    complete: bool,
    inode: u64,
    deleted_at: Option<i64>,
    uid: u32,
    gid: u32,
    ctime_ns: i64,
    encrypted: bool,
    key_fp: Option<String>,
}

fn finish_file((id, raw): (String, FileRowRaw)) -> Result<FileRow, StoreError> {
    Ok(FileRow {
        file_id: file_id_of(id)?,
        path: raw.path,
        version: raw.version,
        size: raw.size as u64,
        mtime_ns: raw.mtime_ns,
        mode: raw.mode,
        content_hash: raw.content_hash,
        desired_rd: raw.desired_rd,
        complete: raw.complete,
        inode: raw.inode,
        uid: raw.uid,
        gid: raw.gid,
        deleted_at: raw.deleted_at,
        ctime_ns: raw.ctime_ns,
        encrypted: raw.encrypted,
        key_fp: raw.key_fp,
    })
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
        conn.pragma_update(None, "foreign_keys", "ON")?;
        conn.execute_batch(SCHEMA)?;
        conn.execute_batch(super::snapshot::SCHEMA)?;
        let version: i64 = conn.pragma_query_value(None, "user_version", |r| r.get(0))?;
        if version < 1 {
            // Paths were stored as text (lossily for names that are not UTF-8): bytes now, so
            // that they compare with what is looked up.
            conn.execute_batch(
                "BEGIN;
                 UPDATE files SET path = CAST(path AS BLOB) WHERE typeof(path) = 'text';
                 UPDATE queue SET path = CAST(path AS BLOB) WHERE typeof(path) = 'text';
                 PRAGMA user_version = 1;
                 COMMIT;",
            )?;
        }
        // SQLite gives the -wal and -shm files the database's mode; older stores may have them.
        for suffix in ["-wal", "-shm"] {
            let mut other = path.as_os_str().to_owned();
            other.push(suffix);
            if Path::new(&other).exists() {
                make_private(Path::new(&other))?;
            }
        }
        let counted: bool = conn
            .prepare_cached(
                "SELECT EXISTS (SELECT 1 FROM sqlite_master WHERE name = 'holder_counts')",
            )?
            .query_row([], |r| r.get(0))?;
        if !counted {
            conn.execute_batch(&format!("BEGIN; {HOLDER_COUNTS} COMMIT;"))?;
        }
        migrate(&conn)?;
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

    pub fn delete_meta(&self, key: &str) -> Result<(), StoreError> {
        self.conn
            .prepare_cached("DELETE FROM meta WHERE key = ?1")?
            .execute([key])?;
        Ok(())
    }

    // ---- our own files -------------------------------------------------------------------

    pub fn file(&self, file_id: &FileId) -> Result<Option<FileRow>, StoreError> {
        let sql = format!("SELECT {FILE_COLUMNS} FROM files WHERE file_id = ?1");
        self.conn
            .prepare_cached(&sql)?
            .query_row([file_id.key()], file_row)
            .optional()?
            .map(finish_file)
            .transpose()
    }

    /// The encrypted version of `path` with this size, mtime and content that a backup may
    /// resume (its fileId is random per attempt: `seal::MasterKey::file_id`), if any. Resuming
    /// seals pieces again under its key, which is safe only where the catalog recorded the hash
    /// of every chunk ever sent (`record_file_chunk` refuses other bytes), and useful only where
    /// those hashes are of this content. So not an unfinished version marked `no_resume`: one
    /// that came with a recovered catalog (its computer may have sent more chunks after the
    /// snapshot), or one a resumed backup found changed (a chunk may be recorded with the
    /// changed bytes, and every later resume would fail on it). The next backup makes a new
    /// version instead; the old one goes as `keep_versions` says.
    pub fn sealed_version(
        &self,
        path: &Path,
        size: u64,
        mtime_ns: i64,
        content_hash: &str,
    ) -> Result<Option<FileRow>, StoreError> {
        let sql = format!(
            "SELECT {FILE_COLUMNS} FROM files
             WHERE path = ?1 AND size = ?2 AND mtime_ns = ?3 AND content_hash = ?4
               AND encrypted = 1 AND (complete = 1 OR no_resume = 0)
             ORDER BY version DESC LIMIT 1"
        );
        self.conn
            .prepare_cached(&sql)?
            .query_row(
                params![path_key(path), size as i64, mtime_ns, content_hash],
                file_row,
            )
            .optional()?
            .map(finish_file)
            .transpose()
    }

    /// An unfinished encrypted version is never resumed again (`sealed_version`).
    pub fn stop_resuming(&self, file_id: &FileId) -> Result<(), StoreError> {
        self.conn
            .prepare_cached("UPDATE files SET no_resume = 1 WHERE file_id = ?1 AND complete = 0")?
            .execute([file_id.key()])?;
        Ok(())
    }

    /// Every kept version of every path equal to `path` or below it (a folder), oldest first:
    /// for the commands that name a folder (`versions DIR`, `delete DIR`). Policies that concern
    /// one path use `versions_of`.
    pub fn versions(&self, path: &Path) -> Result<Vec<FileRow>, StoreError> {
        let (exact, below) = (path_key(path), below_key(path));
        let sql = format!(
            "SELECT {FILE_COLUMNS} FROM files
             WHERE path = ?1 OR substr(path, 1, length(?2)) = ?2 ORDER BY path, version"
        );
        let mut stmt = self.conn.prepare_cached(&sql)?;
        let rows = stmt.query_map(params![exact, below], file_row)?;
        rows.map(|r| finish_file(r?)).collect()
    }

    /// Records the folders on the way to a backed-up file as they are now: a row is written
    /// only when it is new or changed (most calls write nothing).
    pub fn note_folders(&self, folders: &[FolderRow]) -> Result<(), StoreError> {
        self.atomically(|| {
            let mut stmt = self.conn.prepare_cached(
                "INSERT INTO folders (path, uid, gid, mode, mtime_ns) VALUES (?1, ?2, ?3, ?4, ?5)
                 ON CONFLICT (path) DO UPDATE SET uid = excluded.uid, gid = excluded.gid,
                     mode = excluded.mode, mtime_ns = excluded.mtime_ns
                 WHERE uid != excluded.uid OR gid != excluded.gid OR mode != excluded.mode
                     OR mtime_ns != excluded.mtime_ns",
            )?;
            for f in folders {
                stmt.execute(params![path_key(&f.path), f.uid, f.gid, f.mode, f.mtime_ns])?;
            }
            Ok(())
        })
    }

    /// The recorded folders at or below `path`, parents first.
    pub fn folders_below(&self, path: &Path) -> Result<Vec<FolderRow>, StoreError> {
        let (exact, below) = (path_key(path), below_key(path));
        let mut stmt = self.conn.prepare_cached(
            "SELECT path, uid, gid, mode, mtime_ns FROM folders
             WHERE path = ?1 OR (path >= ?2 AND path < ?3) ORDER BY path",
        )?;
        let rows = stmt.query_map(params![exact, below, past_key(&below)], |r| {
            Ok(FolderRow {
                path: path_at(r, 0)?,
                uid: r.get(1)?,
                gid: r.get(2)?,
                mode: r.get(3)?,
                mtime_ns: r.get(4)?,
            })
        })?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    /// Forgets the recorded folders above `path` (a path whose last version went) that no
    /// longer hold any version: one indexed look per folder on the way.
    fn forget_empty_folders(&self, path: &Path) -> Result<(), StoreError> {
        for dir in path.ancestors().skip(1) {
            let below = below_key(dir);
            let held: Option<i64> = self
                .conn
                .prepare_cached("SELECT 1 FROM files WHERE path >= ?1 AND path < ?2 LIMIT 1")?
                .query_row(params![below, past_key(&below)], |r| r.get(0))
                .optional()?;
            if held.is_some() {
                break;
            }
            self.conn
                .prepare_cached("DELETE FROM folders WHERE path = ?1")?
                .execute([path_key(dir)])?;
        }
        Ok(())
    }

    /// Whether `uid` owns a version at or below `root` (one row looked for, not listed).
    pub fn owns_any_under(&self, root: &Path, uid: u32) -> Result<bool, StoreError> {
        let (exact, below) = (path_key(root), below_key(root));
        let found: Option<i64> = self
            .conn
            .prepare_cached(
                "SELECT 1 FROM files WHERE uid = ?3
                   AND (path = ?1 OR substr(path, 1, length(?2)) = ?2) LIMIT 1",
            )?
            .query_row(params![exact, below, uid], |r| r.get(0))
            .optional()?;
        Ok(found.is_some())
    }

    /// Every kept version of exactly `path` (nothing below it, should it be a folder now),
    /// oldest first.
    pub fn versions_of(&self, path: &Path) -> Result<Vec<FileRow>, StoreError> {
        let sql = format!("SELECT {FILE_COLUMNS} FROM files WHERE path = ?1 ORDER BY version");
        let mut stmt = self.conn.prepare_cached(&sql)?;
        let rows = stmt.query_map([path_key(path)], file_row)?;
        rows.map(|r| finish_file(r?)).collect()
    }

    pub fn all_files(&self) -> Result<Vec<FileRow>, StoreError> {
        let sql = format!("SELECT {FILE_COLUMNS} FROM files ORDER BY path, version");
        let mut stmt = self.conn.prepare_cached(&sql)?;
        let rows = stmt.query_map([], file_row)?;
        rows.map(|r| finish_file(r?)).collect()
    }

    /// For the newest version of each of our files (its newest complete one, else its newest;
    /// catalog snapshots aside; only `owner`'s files if given): its path, its desired RD, how many of its
    /// chunks are below its desired RD, and how many of those are at risk (no holder, or one
    /// while more were desired: as `health::health` counts). `status` and the metrics ask it.
    /// Two scans in storage order (the versions, then the chunks with their holder counts by
    /// fileId), merged here: looking each version's chunks up in path order reads the catalog
    /// at random, four times slower for 100,000 files.
    pub fn newest_health(
        &self,
        owner: Option<u32>,
    ) -> Result<Vec<(PathBuf, u8, u32, u32)>, StoreError> {
        struct Newest {
            file_id: String,
            desired: u8,
            complete: bool,
            version: u32,
        }
        let mut newest: std::collections::HashMap<Vec<u8>, Newest> = Default::default();
        let mut stmt = self.conn.prepare_cached(
            "SELECT path, file_id, desired_rd, complete, version FROM files
             WHERE file_id NOT IN (SELECT file_id FROM snapshots) AND (?1 IS NULL OR uid = ?1)",
        )?;
        let mut rows = stmt.query([owner])?;
        while let Some(r) = rows.next()? {
            let v = Newest {
                file_id: r.get(1)?,
                desired: r.get(2)?,
                complete: r.get(3)?,
                version: r.get(4)?,
            };
            let path = path_at(r, 0)?.into_os_string().into_vec();
            match newest.get_mut(&path) {
                Some(kept) if (kept.complete, kept.version) >= (v.complete, v.version) => {}
                Some(kept) => *kept = v,
                None => {
                    newest.insert(path, v);
                }
            }
        }
        // fileId -> (desired RD, chunks below it, of which at risk).
        let mut counts: std::collections::HashMap<String, (u8, u32, u32)> = (newest.values())
            .map(|v| (v.file_id.clone(), (v.desired, 0, 0)))
            .collect();
        // Per fileId: how many chunks have fewer than d holders, for each RD d from 1 to 9.
        let mut stmt = self.conn.prepare_cached(
            "SELECT file_id, SUM(rd < 1), SUM(rd < 2), SUM(rd < 3), SUM(rd < 4), SUM(rd < 5),
                    SUM(rd < 6), SUM(rd < 7), SUM(rd < 8), SUM(rd < 9)
             FROM (SELECT c.file_id AS file_id, COALESCE(h.n, 0) AS rd FROM file_chunks c
                   LEFT JOIN holder_counts h ON h.file_id = c.file_id AND h.chunk_no = c.chunk_no)
             GROUP BY file_id",
        )?;
        let mut rows = stmt.query([])?;
        while let Some(r) = rows.next()? {
            let file_id: String = r.get(0)?;
            let Some((desired, below, at_risk)) = counts.get_mut(&file_id) else {
                continue;
            };
            let fewer_than = |d: u8| -> rusqlite::Result<u32> { r.get(usize::from(d.clamp(1, 9))) };
            *below = fewer_than(*desired)?;
            // No holder; or a single one while more were desired.
            *at_risk = fewer_than(if *desired >= 2 { 2 } else { 1 })?;
        }
        Ok(newest
            .into_iter()
            .map(|(path, v)| {
                let (_, below, at_risk) = counts.get(&v.file_id).copied().unwrap_or_default();
                (
                    PathBuf::from(OsString::from_vec(path)),
                    v.desired,
                    below,
                    at_risk,
                )
            })
            .collect())
    }

    /// Records a new version; its number is one more than any the path ever had (a forgotten
    /// version's number is never given to other content).
    pub fn insert_file(&self, row: &FileRow) -> Result<u32, StoreError> {
        let path = path_key(&row.path);
        let version: u32 = self
            .conn
            .prepare_cached(
                "SELECT MAX(COALESCE((SELECT MAX(version) FROM files WHERE path = ?1), 0),
                        COALESCE((SELECT version FROM last_versions WHERE path = ?1), 0)) + 1",
            )?
            .query_row([path], |r| r.get(0))?;
        self.conn
            .prepare_cached(
                "INSERT INTO files (file_id, path, version, size, mtime_ns, mode, content_hash,
                                desired_rd, complete, inode, uid, gid, ctime_ns, encrypted,
                                key_fp)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, 0, ?9, ?10, ?11, ?12, ?13, ?14)",
            )?
            .execute(params![
                row.file_id.key(),
                path,
                version,
                row.size as i64,
                row.mtime_ns,
                row.mode,
                row.content_hash,
                row.desired_rd,
                row.inode as i64,
                row.uid,
                row.gid,
                row.ctime_ns,
                row.encrypted,
                row.key_fp
            ])?;
        self.conn
            .prepare_cached(
                "INSERT INTO last_versions (path, version) VALUES (?1, ?2)
             ON CONFLICT (path) DO UPDATE SET version = MAX(version, excluded.version)",
            )?
            .execute(params![path, version])?;
        // The path exists again: its versions no longer expire as deleted.
        self.conn
            .prepare_cached("UPDATE files SET deleted_at = NULL WHERE path = ?1")?
            .execute([&path])?;
        Ok(version)
    }

    /// Records a new version inserted by the backup run `backup` (see `Forget::Abandoned`).
    pub fn insert_version(&self, row: &FileRow, backup: BackupId) -> Result<u32, StoreError> {
        let version = self.insert_file(row)?;
        // The same content at the same path again (the same fileId): no longer forgotten, and
        // no DELETE of it is owed to anyone any more.
        self.conn
            .prepare_cached("DELETE FROM forgotten WHERE file_id = ?1")?
            .execute([row.file_id.key()])?;
        self.conn
            .prepare_cached("DELETE FROM delete_acks WHERE file_id = ?1")?
            .execute([row.file_id.key()])?;
        // Nor a DELETE still to be sent (a restart or the next forget would send it, and the
        // holders would drop this new version's chunks).
        self.clear_pending_delete(&row.file_id)?;
        self.conn
            .prepare_cached("UPDATE files SET backup_id = ?2 WHERE file_id = ?1")?
            .execute(params![row.file_id.key(), backup.0])?;
        Ok(version)
    }

    /// Marks a version complete; false if it is not (any more) in the catalog. It gets the
    /// next count of completions (`completed_no`), by which a snapshot's `mark` says whether
    /// it names it.
    pub fn set_file_complete(&self, file_id: &FileId) -> Result<bool, StoreError> {
        self.conn
            .prepare_cached(
                "INSERT INTO meta (key, value) VALUES ('completions', 1)
                 ON CONFLICT (key) DO UPDATE SET value = CAST(value AS INTEGER) + 1",
            )?
            .execute([])?;
        Ok(self
            .conn
            .prepare_cached(
                "UPDATE files SET complete = 1, completed_ms = COALESCE(completed_ms, ?2),
                 completed_no = COALESCE(completed_no,
                     (SELECT CAST(value AS INTEGER) FROM meta WHERE key = 'completions'))
                 WHERE file_id = ?1",
            )?
            .execute(params![file_id.key(), unix_ms()])?
            == 1)
    }

    /// When the newest backup of a file at or below `path` completed (unix ms), if any did.
    pub fn last_completed_below(&self, path: &Path) -> Result<Option<i64>, StoreError> {
        let (exact, below) = (path_key(path), below_key(path));
        Ok(self
            .conn
            .prepare_cached(
                "SELECT MAX(completed_ms) FROM files
                 WHERE path = ?1 OR substr(path, 1, length(?2)) = ?2",
            )?
            .query_row(params![exact, below], |r| r.get(0))?)
    }

    /// A version was just read in full, unchanged, from a file with this inode and ctime (a
    /// restored copy, a file renamed back, a chmod): remember them, so the file is found up to
    /// date next time without reading it.
    pub fn note_seen(&self, file_id: &FileId, inode: u64, ctime_ns: i64) -> Result<(), StoreError> {
        self.conn
            .prepare_cached("UPDATE files SET inode = ?2, ctime_ns = ?3 WHERE file_id = ?1")?
            .execute(params![file_id.key(), inode as i64, ctime_ns])?;
        Ok(())
    }

    /// The path of this version exists again (a backup found it there): none of the path's
    /// versions expire as deleted any more.
    pub fn undelete(&self, file_id: &FileId) -> Result<usize, StoreError> {
        Ok(self
            .conn
            .prepare_cached(
                "UPDATE files SET deleted_at = NULL
             WHERE deleted_at IS NOT NULL
               AND path = (SELECT path FROM files WHERE file_id = ?1)",
            )?
            .execute([file_id.key()])?)
    }

    /// Paths whose newest version was read from inode `inode` and that are not known gone:
    /// the other names of a hard-linked file.
    pub fn latest_paths_with_inode(&self, inode: u64) -> Result<Vec<PathBuf>, StoreError> {
        let mut stmt = self.conn.prepare_cached(
            "SELECT f.path FROM files f
             WHERE f.inode = ?1 AND f.deleted_at IS NULL
               AND f.version = (SELECT MAX(version) FROM files g WHERE g.path = f.path)",
        )?;
        let rows = stmt.query_map([inode as i64], |r| path_at(r, 0))?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    /// Forgets a version of our own if `why` allows it (see `Forget` for the rule); a refusal
    /// is logged at ERROR and returns false. Every deletion of a version goes through here.
    /// `now_ms` (unix ms, `unix_ms()`) dates the forgetting: the holders that must still
    /// acknowledge its DELETE are recorded since then (`delete_acks`).
    pub fn forget(&self, file_id: &FileId, why: Forget, now_ms: i64) -> Result<bool, StoreError> {
        let Some(row) = self.file(file_id)? else {
            return Ok(false);
        };
        let backup_id: Option<i64> = self
            .conn
            .prepare_cached("SELECT backup_id FROM files WHERE file_id = ?1")?
            .query_row([file_id.key()], |r| r.get(0))?;
        // Complete versions of the same path newer than this one.
        let newer_complete: u32 = self
            .conn
            .prepare_cached(
                "SELECT COUNT(*) FROM files g, files f
             WHERE f.file_id = ?1 AND g.path = f.path AND g.version > f.version AND g.complete = 1",
            )?
            .query_row([file_id.key()], |r| r.get(0))?;
        let refused = match why {
            Forget::UserDelete => None,
            Forget::KeepVersions { keep } => {
                let needed = if row.complete { keep.max(1) } else { 1 };
                if newer_complete < needed {
                    Some(format!(
                        "only {newer_complete} newer complete versions, {needed} needed"
                    ))
                } else if self.newer_snapshotted(file_id)? < needed {
                    // Not an error: it goes once a snapshot at its RD names the newer ones
                    // (else a recover would find a catalog naming only this version, gone).
                    tracing::debug!(
                        "version {} of {} is kept until a catalog snapshot names the newer ones",
                        row.version,
                        row.path.display()
                    );
                    return Ok(false);
                } else {
                    None
                }
            }
            Forget::DeletedExpired { .. } if self.meta(super::snapshot::EXPIRY_HOLD)?.is_some() => {
                // A recovered catalog: every file looks deleted until `restore --all` ran.
                tracing::debug!(
                    "version {} of {} does not expire: the catalog was recovered and `peerstash restore --all` has not run",
                    row.version,
                    row.path.display()
                );
                return Ok(false);
            }
            Forget::DeletedExpired { keep_deleted_ms } => {
                let absent_ms: i64 = self
                    .conn
                    .prepare_cached("SELECT absent_ms FROM files WHERE file_id = ?1")?
                    .query_row([file_id.key()], |r| r.get(0))?;
                match row.deleted_at {
                    None => Some("its path is not (any more) marked deleted".to_owned()),
                    Some(_) if absent_ms < keep_deleted_ms => Some(format!(
                        "absent only {} ms of the {keep_deleted_ms} ms to keep it",
                        absent_ms
                    )),
                    Some(_) => None,
                }
            }
            Forget::DoesNotFit => {
                if row.complete {
                    Some("it is complete".to_owned())
                } else if self.is_snapshot(file_id)? {
                    Some("it is a catalog snapshot: its slot stays used".to_owned())
                } else {
                    None
                }
            }
            Forget::Abandoned { backup } => {
                if row.complete {
                    Some("it is complete".to_owned())
                } else if self.is_snapshot(file_id)? {
                    // Its fileId (and key) comes from its slot: forgotten, the slot could be
                    // given back and sealed again with other bytes (`release_snapshot`).
                    Some("it is a catalog snapshot: its slot stays used".to_owned())
                } else if backup_id != Some(backup.0) {
                    Some("another backup inserted it".to_owned())
                } else {
                    None
                }
            }
        };
        if let Some(reason) = refused {
            tracing::error!(
                "refused to delete version {} of {} ({why:?}): {reason}",
                row.version,
                row.path.display()
            );
            return Ok(false);
        }
        self.atomically(|| {
            self.delete_file(file_id, now_ms)?;
            self.forget_empty_folders(&row.path)
        })?;
        Ok(true)
    }

    /// Complete versions of `file_id`'s path newer than it that a catalog snapshot at its RD
    /// names (`Catalog::snapshotted_mark`).
    fn newer_snapshotted(&self, file_id: &FileId) -> Result<u32, StoreError> {
        let mark = self.snapshotted_mark()?;
        Ok(self
            .conn
            .prepare_cached(
                "SELECT COUNT(*) FROM files g, files f
                 WHERE f.file_id = ?1 AND g.path = f.path AND g.version > f.version
                   AND g.complete = 1 AND COALESCE(g.completed_no, 0) <= ?2",
            )?
            .query_row(params![file_id.key(), mark], |r| r.get(0))?)
    }

    pub fn set_file_rd(&self, file_id: &FileId, rd: u8) -> Result<(), StoreError> {
        self.conn
            .prepare_cached("UPDATE files SET desired_rd = ?2 WHERE file_id = ?1")?
            .execute(params![file_id.key(), rd])?;
        Ok(())
    }

    /// Records a chunk of a version being backed up. A chunk already recorded keeps its record:
    /// returns false (and changes nothing) if it was recorded with other bytes — the file
    /// changed since that version was read, and the version must stay as it was.
    pub fn record_file_chunk(
        &self,
        file_id: &FileId,
        chunk_no: ChunkNo,
        size: u64,
        hash: &str,
    ) -> Result<bool, StoreError> {
        let known: Option<(i64, String)> = self
            .conn
            .prepare_cached(
                "SELECT size, hash FROM file_chunks WHERE file_id = ?1 AND chunk_no = ?2",
            )?
            .query_row(params![file_id.key(), chunk_no.0], |r| {
                Ok((r.get(0)?, r.get(1)?))
            })
            .optional()?;
        match known {
            Some((s, h)) => Ok(s as u64 == size && h == hash),
            None => {
                self.put_file_chunk(file_id, chunk_no, size, hash)?;
                Ok(true)
            }
        }
    }

    pub fn put_file_chunk(
        &self,
        file_id: &FileId,
        chunk_no: ChunkNo,
        size: u64,
        hash: &str,
    ) -> Result<(), StoreError> {
        self.conn.prepare_cached("INSERT INTO file_chunks (file_id, chunk_no, size, hash) VALUES (?1, ?2, ?3, ?4)
             ON CONFLICT (file_id, chunk_no) DO UPDATE SET size = excluded.size, hash = excluded.hash")?.execute(params![file_id.key(), chunk_no.0, size as i64, hash],
        )?;
        Ok(())
    }

    /// (chunkNo, size, hash, perceived RD) of every chunk of one of our files.
    pub fn file_chunks(&self, file_id: &FileId) -> Result<Vec<FileChunkRow>, StoreError> {
        let mut stmt = self.conn.prepare_cached(
            "SELECT c.chunk_no, c.size, c.hash,
                    COALESCE((SELECT n FROM holder_counts h WHERE h.file_id = c.file_id AND h.chunk_no = c.chunk_no), 0)
             FROM file_chunks c WHERE c.file_id = ?1 ORDER BY c.chunk_no",
        )?;
        let rows = stmt.query_map([file_id.key()], |r| {
            Ok((
                r.get::<_, i64>(0)?,
                r.get::<_, i64>(1)?,
                r.get(2)?,
                r.get(3)?,
            ))
        })?;
        rows.map(|r| {
            let (no, size, hash, perceived_rd) = r?;
            Ok(FileChunkRow {
                chunk_no: chunk_no_of(no)?,
                size: size as u64,
                hash,
                perceived_rd,
            })
        })
        .collect()
    }

    /// The lowest perceived RD over a file's chunks (0 when a chunk has no holder).
    pub fn min_perceived_rd(&self, file_id: &FileId) -> Result<u32, StoreError> {
        Ok(self
            .conn
            .prepare_cached(
                "SELECT COALESCE(MIN(COALESCE((SELECT n FROM holder_counts h
                                  WHERE h.file_id = c.file_id AND h.chunk_no = c.chunk_no), 0)), 0)
             FROM file_chunks c WHERE c.file_id = ?1",
            )?
            .query_row([file_id.key()], |r| r.get(0))?)
    }

    /// Forgets a version of our own (its row, its chunks and their holder sets) and remembers
    /// that the peers must be told, so a crash before the DELETEs went out loses nothing, and
    /// which of them must acknowledge it (every distinct holder of its chunks).
    /// Only through `forget`, which checks that the deletion is allowed.
    pub(super) fn delete_file(&self, file_id: &FileId, now_ms: i64) -> Result<(), StoreError> {
        let key = file_id.key();
        self.conn
            .prepare_cached("INSERT OR IGNORE INTO pending_deletes (file_id) VALUES (?1)")?
            .execute([&key])?;
        self.conn
            .prepare_cached(
                "INSERT OR REPLACE INTO delete_acks (file_id, peer, since)
             SELECT DISTINCT file_id, peer, ?2 FROM holders WHERE file_id = ?1",
            )?
            .execute(params![key, now_ms])?;
        let now = now_ms.div_euclid(1000);
        self.conn
            .prepare_cached("INSERT OR REPLACE INTO forgotten (file_id, at) VALUES (?1, ?2)")?
            .execute(params![key, now])?;
        // Remembered long enough for any late re-backup of its chunks to have come and gone.
        self.conn
            .prepare_cached("DELETE FROM forgotten WHERE at < ?1")?
            .execute([now - FORGOTTEN_KEPT_S])?;
        self.conn
            .prepare_cached("DELETE FROM holders WHERE file_id = ?1")?
            .execute([&key])?;
        self.conn
            .prepare_cached("DELETE FROM files WHERE file_id = ?1")?
            .execute([&key])?;
        Ok(())
    }

    /// The newest version of a path, if any.
    pub fn latest(&self, path: &Path) -> Result<Option<FileRow>, StoreError> {
        let sql = format!(
            "SELECT {FILE_COLUMNS} FROM files WHERE path = ?1 ORDER BY version DESC LIMIT 1"
        );
        self.conn
            .prepare_cached(&sql)?
            .query_row([path_key(path)], file_row)
            .optional()?
            .map(finish_file)
            .transpose()
    }

    /// Paths whose newest version is complete but has a chunk below its desired RD (holders
    /// dropped it, or died during a re-backup): the home peer backs them up again.
    /// (Catalog snapshots aside: one is backed up under its slot's fileId or not at all, and the
    /// next one is due within a day.)
    pub fn paths_below_rd(&self) -> Result<Vec<PathBuf>, StoreError> {
        let mut stmt = self.conn.prepare_cached(
            "SELECT f.path FROM files f
             WHERE f.complete = 1 AND f.deleted_at IS NULL
               AND f.file_id NOT IN (SELECT file_id FROM snapshots)
               AND f.version = (SELECT MAX(version) FROM files g WHERE g.path = f.path)
               AND EXISTS (SELECT 1 FROM file_chunks c WHERE c.file_id = f.file_id
                   AND COALESCE((SELECT n FROM holder_counts h
                        WHERE h.file_id = c.file_id AND h.chunk_no = c.chunk_no), 0) < f.desired_rd)",
        )?;
        let rows = stmt.query_map([], |r| path_at(r, 0))?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    /// Versions the policy keeps that have a chunk below their desired RD and that the queue's
    /// repair (which reads the local file) does not cover: older versions, and every version of
    /// a file deleted locally (kept for `keep_deleted`). Repaired from a surviving copy on the
    /// peers, so only chunks with a holder left count. At most `limit`, the newest first.
    /// Catalog snapshots aside, as in `paths_below_rd`.
    pub fn kept_versions_below_rd(&self, limit: usize) -> Result<Vec<FileId>, StoreError> {
        let mut stmt = self.conn.prepare_cached(
            "SELECT f.file_id FROM files f
             WHERE f.complete = 1
               AND f.file_id NOT IN (SELECT file_id FROM snapshots)
               AND (f.deleted_at IS NOT NULL
                    OR f.version < (SELECT MAX(version) FROM files g WHERE g.path = f.path))
               AND EXISTS (SELECT 1 FROM file_chunks c WHERE c.file_id = f.file_id
                   AND COALESCE((SELECT n FROM holder_counts h
                        WHERE h.file_id = c.file_id AND h.chunk_no = c.chunk_no), 0)
                       BETWEEN 1 AND f.desired_rd - 1)
             ORDER BY f.version DESC LIMIT ?1",
        )?;
        let rows = stmt.query_map([limit as i64], |r| r.get::<_, String>(0))?;
        rows.map(|r| file_id_of(r?)).collect()
    }

    /// Notes that a path's local file is gone (once: the first time counts for expiry; its
    /// absent time starts from zero).
    pub fn mark_deleted(&self, path: &Path, now: i64) -> Result<usize, StoreError> {
        Ok(self.conn.prepare_cached("UPDATE files SET deleted_at = ?2, absent_ms = 0 WHERE path = ?1 AND deleted_at IS NULL")?.execute(params![path_key(path), now],
        )?)
    }

    /// The path's file is there again: its versions no longer expire as deleted.
    pub fn unmark_deleted(&self, path: &Path) -> Result<usize, StoreError> {
        Ok(self
            .conn
            .prepare_cached(
                "UPDATE files SET deleted_at = NULL WHERE path = ?1 AND deleted_at IS NOT NULL",
            )?
            .execute([path_key(path)])?)
    }

    /// Paths whose local file is gone: when it was found gone (unix seconds, shown to users)
    /// and for how long it was counted absent (ms, what expiry goes by).
    pub fn deleted_paths(&self) -> Result<Vec<DeletedPath>, StoreError> {
        let mut stmt = self.conn.prepare_cached(
            "SELECT path, MIN(deleted_at), MIN(absent_ms) FROM files
             WHERE deleted_at IS NOT NULL GROUP BY path",
        )?;
        let rows = stmt.query_map([], |r| {
            Ok(DeletedPath {
                path: path_at(r, 0)?,
                deleted_at: r.get(1)?,
                absent_ms: r.get(2)?,
            })
        })?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    /// Counts `ms` more of absence for the versions of a path still marked deleted.
    pub fn add_absent(&self, path: &Path, ms: i64) -> Result<(), StoreError> {
        self.conn.prepare_cached("UPDATE files SET absent_ms = absent_ms + ?2 WHERE path = ?1 AND deleted_at IS NOT NULL")?.execute(params![path_key(path), ms],
        )?;
        Ok(())
    }

    /// Up to `limit` paths backed up at or below `root` whose file is not known to be gone (to
    /// tell whether a file system holds a watched folder's files).
    pub fn some_live_paths_under(
        &self,
        root: &Path,
        limit: usize,
    ) -> Result<Vec<PathBuf>, StoreError> {
        let (exact, below) = (path_key(root), below_key(root));
        let mut stmt = self.conn.prepare_cached(
            "SELECT DISTINCT path FROM files WHERE deleted_at IS NULL
               AND (path = ?1 OR substr(path, 1, length(?2)) = ?2) LIMIT ?3",
        )?;
        let rows = stmt.query_map(params![exact, below, limit as i64], |r| path_at(r, 0))?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    /// Distinct paths backed up at or below `root` whose file is not known to be gone.
    pub fn live_paths_under(&self, root: &Path) -> Result<Vec<PathBuf>, StoreError> {
        let (exact, below) = (path_key(root), below_key(root));
        let mut stmt = self.conn.prepare_cached(
            "SELECT DISTINCT path FROM files WHERE deleted_at IS NULL
               AND (path = ?1 OR substr(path, 1, length(?2)) = ?2)",
        )?;
        let rows = stmt.query_map(params![exact, below], |r| path_at(r, 0))?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    // ---- the work queue -------------------------------------------------------------------

    /// Queues a path (again): due now, or kept at its current due time if already queued.
    pub fn enqueue(&self, path: &Path, due_ms: i64) -> Result<(), StoreError> {
        self.enqueue_since(path, due_ms, due_ms)
    }

    /// `enqueue`, the path changed first at `since_ms` (unix ms): a path queued again keeps its
    /// earliest change (`queued_since`).
    pub fn enqueue_since(&self, path: &Path, due_ms: i64, since_ms: i64) -> Result<(), StoreError> {
        self.conn
            .prepare_cached(
                "INSERT INTO queue (path, due_at, since) VALUES (?1, ?2, ?3)
             ON CONFLICT (path) DO UPDATE SET gen = gen + 1, attempts = 0,
                 due_at = MIN(due_at, excluded.due_at),
                 since = MIN(COALESCE(since, excluded.since), excluded.since)",
            )?
            .execute(params![path_key(path), due_ms, since_ms])?;
        Ok(())
    }

    /// When `path`'s oldest change not yet backed up was seen (unix ms), if it is queued.
    pub fn queued_since(&self, path: &Path) -> Result<Option<i64>, StoreError> {
        Ok(self
            .conn
            .prepare_cached("SELECT since FROM queue WHERE path = ?1")?
            .query_row([path_key(path)], |r| r.get::<_, Option<i64>>(0))
            .optional()?
            .flatten())
    }

    /// The queued path that has waited longest since its first change under each of `roots`:
    /// (root, path, since unix ms).
    pub fn oldest_queued_under(
        &self,
        roots: &[PathBuf],
    ) -> Result<Vec<(PathBuf, PathBuf, i64)>, StoreError> {
        let mut out = Vec::new();
        for root in roots {
            let found = self
                .conn
                .prepare_cached(
                    "SELECT path, since FROM queue WHERE substr(path, 1, length(?1)) = ?1
                       AND since IS NOT NULL ORDER BY since LIMIT 1",
                )?
                .query_row(params![below_key(root)], |r| {
                    Ok((path_at(r, 0)?, r.get::<_, i64>(1)?))
                })
                .optional()?;
            if let Some((path, since)) = found {
                out.push((root.clone(), path, since));
            }
        }
        Ok(out)
    }

    /// The next due paths not in `busy`, with their generation.
    pub fn due(&self, now_ms: i64, limit: usize) -> Result<Vec<(PathBuf, i64, u32)>, StoreError> {
        let mut stmt = self.conn.prepare_cached(
            "SELECT path, gen, attempts FROM queue WHERE due_at <= ?1 ORDER BY due_at LIMIT ?2",
        )?;
        let rows = stmt.query_map(params![now_ms, limit as i64], |r| {
            Ok((path_at(r, 0)?, r.get(1)?, r.get(2)?))
        })?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    /// When the next queued path is due, if any.
    pub fn next_due(&self) -> Result<Option<i64>, StoreError> {
        Ok(self
            .conn
            .prepare_cached("SELECT MIN(due_at) FROM queue")?
            .query_row([], |r| r.get(0))?)
    }

    pub fn queue_len(&self) -> Result<u64, StoreError> {
        Ok(self
            .conn
            .prepare_cached("SELECT COUNT(*) FROM queue")?
            .query_row([], |r| r.get::<_, i64>(0))? as u64)
    }

    /// Done with a path: forgotten unless it was queued again meanwhile (generation changed).
    pub fn dequeue(&self, path: &Path, gen: i64) -> Result<(), StoreError> {
        self.conn
            .prepare_cached("DELETE FROM queue WHERE path = ?1 AND gen = ?2")?
            .execute(params![path_key(path), gen])?;
        // Queued again while worked on: its oldest change not backed up is that one, not older.
        self.conn
            .prepare_cached("UPDATE queue SET since = ?2 WHERE path = ?1")?
            .execute(params![path_key(path), unix_ms()])?;
        Ok(())
    }

    /// Try a path again later.
    pub fn retry_later(&self, path: &Path, gen: i64, due_ms: i64) -> Result<(), StoreError> {
        self.conn.prepare_cached("UPDATE queue SET due_at = ?3, attempts = attempts + 1 WHERE path = ?1 AND gen = ?2")?.execute(params![path_key(path), gen, due_ms],
        )?;
        Ok(())
    }

    pub fn pending_deletes(&self) -> Result<Vec<FileId>, StoreError> {
        let mut stmt = self
            .conn
            .prepare_cached("SELECT file_id FROM pending_deletes")?;
        let rows = stmt.query_map([], |r| r.get::<_, String>(0))?;
        rows.map(|r| file_id_of(r?)).collect()
    }

    pub fn clear_pending_delete(&self, file_id: &FileId) -> Result<(), StoreError> {
        self.conn
            .prepare_cached("DELETE FROM pending_deletes WHERE file_id = ?1")?
            .execute([file_id.key()])?;
        Ok(())
    }

    // ---- chunks we host -------------------------------------------------------------------

    pub fn role(&self, file_id: &FileId, chunk_no: ChunkNo) -> Result<ChunkRole, StoreError> {
        let key = file_id.key();
        let own: Option<u8> = self
            .conn
            .prepare_cached("SELECT desired_rd FROM files WHERE file_id = ?1")?
            .query_row([&key], |r| r.get(0))
            .optional()?;
        if let Some(desired_rd) = own {
            return Ok(ChunkRole::Own { desired_rd });
        }
        let hosted: Option<u8> = self
            .conn
            .prepare_cached("SELECT desired_rd FROM hosted WHERE file_id = ?1 AND chunk_no = ?2")?
            .query_row(params![key, chunk_no.0], |r| r.get(0))
            .optional()?;
        if let Some(desired_rd) = hosted {
            return Ok(ChunkRole::Hosted { desired_rd });
        }
        let forgotten: bool = self
            .conn
            .prepare_cached("SELECT EXISTS (SELECT 1 FROM forgotten WHERE file_id = ?1)")?
            .query_row([&key], |r| r.get(0))?;
        Ok(match forgotten {
            true => ChunkRole::Forgotten,
            false => ChunkRole::Unknown,
        })
    }

    /// Records a chunk now on disk, with the holders known so far (ourselves included).
    pub fn insert_hosted(&self, row: &HostedRow, holders: &[PeerId]) -> Result<(), StoreError> {
        let key = row.file_id.key();
        self.conn
            .prepare_cached(
                "INSERT INTO hosted (file_id, chunk_no, wire_id, size, hash, desired_rd, sender)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
            )?
            .execute(params![
                key,
                row.chunk_no.0,
                row.file_id.as_wire(),
                row.size as i64,
                row.hash,
                row.desired_rd,
                row.sender.0
            ])?;
        self.insert_holders(&key, row.chunk_no, holders)?;
        Ok(())
    }

    /// Records a hosted chunk's desired RD heard in a PUTCHUNK, when it was unknown (re-indexed
    /// by `--rebuild-catalog`, `engine::peer::UNKNOWN_RD`). Returns whether it was.
    pub fn learn_hosted_rd(
        &self,
        file_id: &FileId,
        chunk_no: ChunkNo,
        rd: u8,
    ) -> Result<bool, StoreError> {
        let n = self
            .conn
            .prepare_cached(
                "UPDATE hosted SET desired_rd = ?3
                 WHERE file_id = ?1 AND chunk_no = ?2 AND desired_rd = 0",
            )?
            .execute(params![file_id.key(), chunk_no.0, rd])?;
        Ok(n > 0)
    }

    pub fn hosted(
        &self,
        file_id: &FileId,
        chunk_no: ChunkNo,
    ) -> Result<Option<HostedRow>, StoreError> {
        self.conn
            .prepare_cached(
                "SELECT wire_id, size, hash, desired_rd, sender FROM hosted
                 WHERE file_id = ?1 AND chunk_no = ?2",
            )?
            .query_row(params![file_id.key(), chunk_no.0], |r| {
                Ok((
                    r.get::<_, String>(0)?,
                    r.get::<_, i64>(1)?,
                    r.get(2)?,
                    r.get(3)?,
                    r.get(4)?,
                ))
            })
            .optional()?
            .map(|(wire, size, hash, desired_rd, sender)| {
                Ok(HostedRow {
                    file_id: file_id_of(wire)?,
                    chunk_no,
                    size: size as u64,
                    hash,
                    desired_rd,
                    sender: PeerId(sender),
                })
            })
            .transpose()
    }

    /// Every hosted chunk with its perceived RD.
    pub fn all_hosted(&self) -> Result<Vec<(HostedRow, u32)>, StoreError> {
        self.hosted_page(None, None)
    }

    /// How many chunks this peer hosts.
    pub fn hosted_count(&self) -> Result<usize, StoreError> {
        let n: i64 = self
            .conn
            .prepare_cached("SELECT COUNT(*) FROM hosted")?
            .query_row([], |r| r.get(0))?;
        Ok(n as usize)
    }

    /// Hosted chunks (with their perceived RD) in (fileId, chunkNo) order: those after `after`,
    /// at most `limit` of them (a scrub of a large store never lists it whole in memory).
    pub fn hosted_page(
        &self,
        after: Option<&ChunkId>,
        limit: Option<usize>,
    ) -> Result<Vec<(HostedRow, u32)>, StoreError> {
        let mut stmt = self.conn.prepare_cached(
            "SELECT s.wire_id, s.chunk_no, s.size, s.hash, s.desired_rd,
                    COALESCE((SELECT n FROM holder_counts h WHERE h.file_id = s.file_id AND h.chunk_no = s.chunk_no), 0),
                    s.sender
             FROM hosted s
             WHERE ?1 IS NULL OR (s.file_id, s.chunk_no) > (?1, ?2)
             ORDER BY s.file_id, s.chunk_no LIMIT ?3",
        )?;
        let limit = limit.map_or(-1, |n| n as i64);
        let (file, no) = after.map_or((None, 0), |c| (Some(c.file_id.key()), c.chunk_no.0));
        let rows = stmt.query_map(params![file, no, limit], |r| {
            Ok((
                r.get::<_, String>(0)?,
                r.get::<_, i64>(1)?,
                r.get::<_, i64>(2)?,
                r.get::<_, String>(3)?,
                r.get::<_, u8>(4)?,
                r.get::<_, u32>(5)?,
                r.get::<_, u32>(6)?,
            ))
        })?;
        rows.map(|r| {
            let (wire, no, size, hash, desired_rd, perceived, sender) = r?;
            Ok((
                HostedRow {
                    file_id: file_id_of(wire)?,
                    chunk_no: chunk_no_of(no)?,
                    size: size as u64,
                    hash,
                    desired_rd,
                    sender: PeerId(sender),
                },
                perceived,
            ))
        })
        .collect()
    }

    /// Forgets one hosted chunk and its holder set; returns its size if it was hosted.
    pub fn delete_hosted(
        &self,
        file_id: &FileId,
        chunk_no: ChunkNo,
    ) -> Result<Option<u64>, StoreError> {
        let key = file_id.key();
        let size: Option<i64> = self
            .conn
            .prepare_cached(
                "DELETE FROM hosted WHERE file_id = ?1 AND chunk_no = ?2 RETURNING size",
            )?
            .query_row(params![key, chunk_no.0], |r| r.get(0))
            .optional()?;
        self.conn
            .prepare_cached("DELETE FROM holders WHERE file_id = ?1 AND chunk_no = ?2")?
            .execute(params![key, chunk_no.0])?;
        Ok(size.map(|s| s as u64))
    }

    /// Forgets every hosted chunk of a file; returns (chunkNo, size) of each.
    pub fn delete_hosted_file(&self, file_id: &FileId) -> Result<Vec<(ChunkNo, u64)>, StoreError> {
        let key = file_id.key();
        let mut stmt = self
            .conn
            .prepare_cached("DELETE FROM hosted WHERE file_id = ?1 RETURNING chunk_no, size")?;
        let gone: Vec<(i64, i64)> = stmt
            .query_map([&key], |r| Ok((r.get(0)?, r.get(1)?)))?
            .collect::<Result<_, _>>()?;
        self.conn
            .prepare_cached("DELETE FROM holders WHERE file_id = ?1")?
            .execute([&key])?;
        gone.into_iter()
            .map(|(no, size)| Ok((chunk_no_of(no)?, size as u64)))
            .collect()
    }

    /// The hosted chunks' cost against the quota, each chunk's size charged by `charge` (the
    /// store's: what the disk pays for it).
    pub fn used_bytes(&self, charge: impl Fn(u64) -> u64) -> Result<u64, StoreError> {
        let mut stmt = self.conn.prepare_cached("SELECT size FROM hosted")?;
        let sizes = stmt.query_map([], |r| r.get::<_, i64>(0))?;
        sizes.map(|s| Ok(charge(s? as u64))).sum()
    }

    // ---- holder sets ----------------------------------------------------------------------

    /// Records that `peer` holds a chunk, if the chunk is ours or hosted here (others' chunks are
    /// not our business in 1.0). Returns the perceived RD after the update, or None if ignored.
    pub fn add_holder(
        &self,
        file_id: &FileId,
        chunk_no: ChunkNo,
        peer: PeerId,
    ) -> Result<Option<u32>, StoreError> {
        self.add_holders(file_id, chunk_no, &[peer])
    }

    /// Records the STOREDs heard from `peers` for one chunk, if the chunk is ours or hosted here
    /// (others' chunks are not our business in 1.0), up to `MAX_HOLDERS` distinct holders.
    /// Returns the perceived RD after the update, or None if ignored.
    pub fn add_holders(
        &self,
        file_id: &FileId,
        chunk_no: ChunkNo,
        peers: &[PeerId],
    ) -> Result<Option<u32>, StoreError> {
        let key = file_id.key();
        let known: bool = self
            .conn
            .prepare_cached(
                "SELECT EXISTS (SELECT 1 FROM file_chunks WHERE file_id = ?1 AND chunk_no = ?2)
                 OR EXISTS (SELECT 1 FROM hosted WHERE file_id = ?1 AND chunk_no = ?2)",
            )?
            .query_row(params![key, chunk_no.0], |r| r.get(0))?;
        if !known {
            return Ok(None);
        }
        self.insert_holders(&key, chunk_no, peers).map(Some)
    }

    /// Inserts holders up to the cap; returns the perceived RD after.
    fn insert_holders(
        &self,
        key: &str,
        chunk_no: ChunkNo,
        peers: &[PeerId],
    ) -> Result<u32, StoreError> {
        let mut perceived: u32 = self
            .conn
            .prepare_cached("SELECT n FROM holder_counts WHERE file_id = ?1 AND chunk_no = ?2")?
            .query_row(params![key, chunk_no.0], |r| r.get(0))
            .optional()?
            .unwrap_or(0);
        let mut insert = self.conn.prepare_cached(
            "INSERT OR IGNORE INTO holders (file_id, chunk_no, peer) VALUES (?1, ?2, ?3)",
        )?;
        for peer in peers {
            if perceived >= MAX_HOLDERS {
                break; // a peer already in the set stays there; a new one is not recorded
            }
            perceived += insert.execute(params![key, chunk_no.0, peer.0])? as u32;
        }
        Ok(perceived)
    }

    /// Removes `peer` from a chunk's holder set; returns the perceived RD after the update.
    pub fn remove_holder(
        &self,
        file_id: &FileId,
        chunk_no: ChunkNo,
        peer: PeerId,
    ) -> Result<u32, StoreError> {
        self.conn
            .prepare_cached(
                "DELETE FROM holders WHERE file_id = ?1 AND chunk_no = ?2 AND peer = ?3",
            )?
            .execute(params![file_id.key(), chunk_no.0, peer.0])?;
        self.perceived(file_id, chunk_no)
    }

    pub fn holders(&self, file_id: &FileId, chunk_no: ChunkNo) -> Result<Vec<PeerId>, StoreError> {
        let mut stmt = self.conn.prepare_cached(
            "SELECT peer FROM holders WHERE file_id = ?1 AND chunk_no = ?2 ORDER BY peer",
        )?;
        let rows = stmt.query_map(params![file_id.key(), chunk_no.0], |r| r.get(0))?;
        rows.map(|r| Ok(PeerId(r?))).collect()
    }

    /// A chunk's perceived RD (kept by the triggers: no recount).
    pub fn perceived(&self, file_id: &FileId, chunk_no: ChunkNo) -> Result<u32, StoreError> {
        Ok(self
            .conn
            .prepare_cached("SELECT n FROM holder_counts WHERE file_id = ?1 AND chunk_no = ?2")?
            .query_row(params![file_id.key(), chunk_no.0], |r| r.get(0))
            .optional()?
            .unwrap_or(0))
    }

    // ---- peers: when heard, when lost, what they owe us ----------------------------------

    /// Records the peers heard since the last call: `(peer, the protocol version it is known to
    /// speak ("1.0", "2.0"; '' not known yet: `daemon::heard`), unix ms when heard)`, in one
    /// transaction. Each peer keeps its latest time and the highest version it ever spoke, and
    /// is no longer lost. A
    /// peer not yet in the table is added only while the table has fewer than `MAX_PEER_ROWS`
    /// rows, or if it holds chunks of ours or hosted here (sender ids are easily forged).
    pub fn heard_peers(&self, heard: &[(PeerId, String, i64)]) -> Result<(), StoreError> {
        self.atomically(|| {
            let mut rows: u64 = self
                .conn
                .prepare_cached("SELECT COUNT(*) FROM peers")?
                .query_row([], |r| r.get::<_, i64>(0))? as u64;
            // Versions are "<digit>.<digit>": text order is version order.
            let mut update = self.conn.prepare_cached(
                "UPDATE peers SET last_heard = MAX(last_heard, ?2),
                                  protocol = MAX(protocol, ?3), lost_at = NULL
                 WHERE id = ?1",
            )?;
            let mut holds = self
                .conn
                .prepare_cached("SELECT EXISTS (SELECT 1 FROM holders WHERE peer = ?1)")?;
            let mut insert = self.conn.prepare_cached(
                "INSERT INTO peers (id, protocol, last_heard) VALUES (?1, ?3, ?2)",
            )?;
            for (peer, protocol, at) in heard {
                let values = params![peer.0, at, protocol];
                if update.execute(values)? == 1 {
                    continue;
                }
                if rows >= MAX_PEER_ROWS && !holds.query_row([peer.0], |r| r.get::<_, bool>(0))? {
                    continue;
                }
                insert.execute(values)?;
                rows += 1;
            }
            Ok(())
        })
    }

    /// LAN key: keeps each peer's newest AUTH time taken (`auth::ReplayGuard`), so that what was
    /// taken before a restart is refused after it. Written as given (a mark capped after a
    /// clock set wrong goes down); a peer without a row (`heard_peers` did not add it) is left
    /// out.
    pub fn record_auth_marks(&self, marks: &[auth::Mark]) -> Result<(), StoreError> {
        if marks.is_empty() {
            return Ok(());
        }
        self.atomically(|| {
            let mut update = self.conn.prepare_cached(
                "UPDATE peers SET auth_mark = ?2, auth_mark_at = ?3 WHERE id = ?1",
            )?;
            let secs = |s: u64| i64::try_from(s).unwrap_or(i64::MAX);
            for m in marks {
                update.execute(params![m.sender.0, secs(m.mark), secs(m.marked_at)])?;
            }
            Ok(())
        })
    }

    /// The marks `record_auth_marks` kept, for `auth::ReplayGuard::load` at start.
    pub fn auth_marks(&self) -> Result<Vec<auth::Mark>, StoreError> {
        let secs = |s: i64| u64::try_from(s).unwrap_or(0);
        let marks = self
            .conn
            .prepare_cached("SELECT id, auth_mark, auth_mark_at FROM peers WHERE auth_mark > 0")?
            .query_map([], |r| {
                Ok(auth::Mark {
                    sender: PeerId(r.get(0)?),
                    mark: secs(r.get(1)?),
                    marked_at: secs(r.get(2)?),
                })
            })?
            .collect::<Result<_, _>>()?;
        Ok(marks)
    }

    /// The holders (of our chunks or of chunks hosted here) not already counted lost that have
    /// been silent longer than `timeout_ms` at `now_ms`. Silence is counted from their last
    /// message or from `since_ms` (when this daemon started), whichever is later: a peer never
    /// heard counts as heard at `since_ms`, and our own downtime is no peer's silence.
    /// This peer is itself a holder of every chunk it hosts and never hears itself: the caller
    /// leaves its own id out (the catalog does not know it).
    pub fn lost_holders(
        &self,
        now_ms: i64,
        timeout_ms: i64,
        since_ms: i64,
    ) -> Result<Vec<PeerId>, StoreError> {
        // The distinct holders by hopping along the index on peer: one lookup per peer, not a
        // scan of every holder row.
        let mut stmt = self.conn.prepare_cached(
            "WITH RECURSIVE holder (peer) AS (
                 SELECT MIN(peer) FROM holders
                 UNION ALL
                 SELECT (SELECT MIN(peer) FROM holders WHERE peer > holder.peer)
                 FROM holder WHERE holder.peer IS NOT NULL
             )
             SELECT h.peer FROM holder h LEFT JOIN peers p ON p.id = h.peer
             WHERE h.peer IS NOT NULL AND p.lost_at IS NULL
               AND ?1 - MAX(COALESCE(p.last_heard, ?3), ?3) > ?2
             ORDER BY h.peer",
        )?;
        let rows = stmt.query_map(params![now_ms, timeout_ms, since_ms], |r| r.get(0))?;
        rows.map(|r| Ok(PeerId(r?))).collect()
    }

    /// Counts `peer` lost at `now_ms`, in one transaction: it leaves every holder set (of our
    /// chunks and of hosted ones; the perceived RDs follow), and its row says since when it is
    /// lost (the first time, until it is heard again). Returns how many holder rows it left.
    pub fn drop_lost_holder(&self, peer: PeerId, now_ms: i64) -> Result<u64, StoreError> {
        self.atomically(|| {
            let removed = self
                .conn
                .prepare_cached("DELETE FROM holders WHERE peer = ?1")?
                .execute([peer.0])?;
            self.conn
                .prepare_cached(
                    "INSERT INTO peers (id, protocol, last_heard, lost_at) VALUES (?1, '', 0, ?2)
                 ON CONFLICT (id) DO UPDATE SET lost_at = COALESCE(lost_at, excluded.lost_at)",
                )?
                .execute(params![peer.0, now_ms])?;
            Ok(removed as u64)
        })
    }

    /// 2.0: `peer` announced its store's incarnation `inc`. Recorded; if it differs from the
    /// one recorded, the store it had is gone: the peer leaves every holder set (it is not
    /// counted lost: it is alive). Returns how many holder rows it left (None: not changed).
    /// A peer without a row gets one only as `heard_peers` would add it.
    pub fn peer_incarnation(&self, peer: PeerId, inc: &str) -> Result<Option<u64>, StoreError> {
        self.atomically(|| {
            let known: Option<Option<String>> = self
                .conn
                .prepare_cached("SELECT incarnation FROM peers WHERE id = ?1")?
                .query_row([peer.0], |r| r.get(0))
                .optional()?;
            match known {
                Some(Some(k)) if k == inc => return Ok(None),
                Some(_) => {}
                None => {
                    let rows: i64 = (self.conn.prepare_cached("SELECT COUNT(*) FROM peers")?)
                        .query_row([], |r| r.get(0))?;
                    let holds: bool = (self.conn)
                        .prepare_cached("SELECT EXISTS (SELECT 1 FROM holders WHERE peer = ?1)")?
                        .query_row([peer.0], |r| r.get(0))?;
                    if rows as u64 >= MAX_PEER_ROWS && !holds {
                        return Ok(None);
                    }
                    (self.conn.prepare_cached(
                        "INSERT INTO peers (id, protocol, last_heard) VALUES (?1, '', 0)",
                    )?)
                    .execute([peer.0])?;
                }
            }
            (self
                .conn
                .prepare_cached("UPDATE peers SET incarnation = ?2 WHERE id = ?1")?)
            .execute(params![peer.0, inc])?;
            let Some(Some(_)) = known else {
                return Ok(None); // the first one heard: nothing to compare with
            };
            let removed = (self
                .conn
                .prepare_cached("DELETE FROM holders WHERE peer = ?1")?)
            .execute([peer.0])?;
            Ok(Some(removed as u64))
        })
    }

    /// 2.0: up to `per_holder` random chunks of our own files counted at each of up to
    /// `max_holders` holders that announced an incarnation (peerstash 2.0 peers: the ones that
    /// answer PROVE) and are not counted lost: `(holder, chunk, size, hash)`.
    pub fn verify_samples(
        &self,
        per_holder: usize,
        max_holders: usize,
    ) -> Result<Vec<(PeerId, ChunkId, u64, String)>, StoreError> {
        let holders: Vec<u32> = self
            .conn
            .prepare_cached(
                "SELECT id FROM peers WHERE incarnation IS NOT NULL AND lost_at IS NULL
                 AND EXISTS (SELECT 1 FROM holders WHERE peer = peers.id)
                 ORDER BY random() LIMIT ?1",
            )?
            .query_map([max_holders as i64], |r| r.get(0))?
            .collect::<Result<_, _>>()?;
        // A random row of the holder's, found by a seek along the index on (peer, rowid) from a
        // random rowid (wrapping to the start): no sort of all its rows.
        let max_rowid: i64 = (self.conn)
            .prepare_cached("SELECT COALESCE(MAX(rowid), 0) FROM holders")?
            .query_row([], |r| r.get(0))?;
        let mut stmt = self.conn.prepare_cached(
            "SELECT h.file_id, h.chunk_no, c.size, c.hash FROM holders h
             JOIN file_chunks c ON c.file_id = h.file_id AND c.chunk_no = h.chunk_no
             WHERE h.peer = ?1 AND h.rowid >= ?2 ORDER BY h.rowid LIMIT 1",
        )?;
        let mut out = Vec::new();
        for peer in holders {
            let mut picked: Vec<(String, i64)> = Vec::new();
            for _ in 0..per_holder * 3 {
                let from = (rand::random::<u64>() >> 1) as i64 % (max_rowid + 1);
                let mut row = |start: i64| {
                    stmt.query_row(params![peer, start], |r| {
                        Ok((
                            r.get::<_, String>(0)?,
                            r.get::<_, i64>(1)?,
                            r.get::<_, i64>(2)?,
                            r.get::<_, String>(3)?,
                        ))
                    })
                    .optional()
                };
                let found = match row(from)? {
                    Some(found) => Some(found),
                    None => row(0)?,
                };
                let Some((file_id, chunk_no, size, hash)) = found else {
                    break; // it holds none of our chunks
                };
                if picked.contains(&(file_id.clone(), chunk_no)) {
                    continue;
                }
                picked.push((file_id.clone(), chunk_no));
                let chunk = ChunkId {
                    file_id: file_id_of(file_id)?,
                    chunk_no: chunk_no_of(chunk_no)?,
                };
                out.push((PeerId(peer), chunk, size as u64, hash));
                if picked.len() >= per_holder {
                    break;
                }
            }
        }
        Ok(out)
    }

    /// `peer` acknowledged the DELETE of a version of ours (DELETED): it owes nothing more for
    /// it. True if it was still owed.
    pub fn delete_acked(&self, file_id: &FileId, peer: PeerId) -> Result<bool, StoreError> {
        Ok(self
            .conn
            .prepare_cached("DELETE FROM delete_acks WHERE file_id = ?1 AND peer = ?2")?
            .execute(params![file_id.key(), peer.0])?
            == 1)
    }

    /// Up to `limit` versions of ours whose DELETE `peer` has not acknowledged, oldest first:
    /// what to send it again when it says HELLO.
    pub fn unacked_deletes_for(
        &self,
        peer: PeerId,
        limit: usize,
    ) -> Result<Vec<FileId>, StoreError> {
        let mut stmt = self.conn.prepare_cached(
            "SELECT file_id FROM delete_acks WHERE peer = ?1 ORDER BY since, file_id LIMIT ?2",
        )?;
        let rows = stmt.query_map(params![peer.0, limit as i64], |r| r.get::<_, String>(0))?;
        rows.map(|r| file_id_of(r?)).collect()
    }

    /// Gives up on the acknowledgements owed since before `older_than_ms` (the delete deadline
    /// passed: a peer that never answers, a 1.0 peer). Returns how many were dropped.
    pub fn expire_delete_acks(&self, older_than_ms: i64) -> Result<usize, StoreError> {
        Ok(self
            .conn
            .prepare_cached("DELETE FROM delete_acks WHERE since < ?1")?
            .execute([older_than_ms])?)
    }

    /// Acknowledgements still owed: (version, peer) pairs.
    pub fn unacked_delete_count(&self) -> Result<u64, StoreError> {
        Ok(self
            .conn
            .prepare_cached("SELECT COUNT(*) FROM delete_acks")?
            .query_row([], |r| r.get::<_, i64>(0))? as u64)
    }

    /// Other peers ever heard, and of those counted lost now.
    pub fn peers_heard_lost(&self) -> Result<(u64, u64), StoreError> {
        // As `peers_report` counts them (last_heard 0: never heard), without its walk over
        // every holder.
        Ok(self
            .conn
            .prepare_cached(
                "SELECT COALESCE(SUM(last_heard != 0), 0), COALESCE(SUM(lost_at IS NOT NULL), 0)
                 FROM peers",
            )?
            .query_row([], |r| Ok((r.get(0)?, r.get(1)?)))?)
    }

    /// Every peer heard, counted lost, holding chunks of our own files, sending the chunks we
    /// host, or owing a delete acknowledgement, ordered by id, with what it does for us and we
    /// for it.
    pub fn peers_report(&self) -> Result<Vec<PeerRow>, StoreError> {
        let mut stmt = self.conn.prepare_cached(
            "WITH own (id, n) AS (
                 SELECT h.peer, COUNT(*) FROM holders h
                 WHERE h.file_id IN (SELECT file_id FROM files) GROUP BY h.peer
             ),
             sent (id, bytes) AS (
                 SELECT sender, SUM(size) FROM hosted WHERE sender != 0 GROUP BY sender
             ),
             owed (id, n) AS (SELECT peer, COUNT(*) FROM delete_acks GROUP BY peer),
             ids (id) AS (
                 SELECT id FROM peers UNION SELECT id FROM own
                 UNION SELECT id FROM sent UNION SELECT id FROM owed
             )
             SELECT ids.id, p.protocol, p.last_heard, p.lost_at,
                    COALESCE(own.n, 0), COALESCE(sent.bytes, 0), COALESCE(owed.n, 0)
             FROM ids
             LEFT JOIN peers p ON p.id = ids.id
             LEFT JOIN own ON own.id = ids.id
             LEFT JOIN sent ON sent.id = ids.id
             LEFT JOIN owed ON owed.id = ids.id
             ORDER BY ids.id",
        )?;
        let rows = stmt.query_map([], |r| {
            Ok(PeerRow {
                id: PeerId(r.get(0)?),
                protocol: r.get::<_, Option<String>>(1)?.unwrap_or_default(),
                // 0: a row made when it was counted lost, never heard.
                last_heard_ms: r.get::<_, Option<i64>>(2)?.filter(|&t| t != 0),
                lost_at_ms: r.get(3)?,
                chunks_of_ours: r.get::<_, i64>(4)? as u64,
                hosted_bytes: r.get::<_, i64>(5)? as u64,
                unacked_deletes: r.get::<_, i64>(6)? as u64,
            })
        })?;
        Ok(rows.collect::<Result<_, _>>()?)
    }
}

// ---- the catalog thread -------------------------------------------------------------------

type Deliver = Box<dyn FnOnce(Result<(), StoreError>) + Send>;
/// A queued call: run on the catalog (Some), or failed unrun (None) when its batch could not
/// begin; either way it returns whether it succeeded and how to hand over its result.
type Job = Box<dyn FnOnce(Option<&Catalog>) -> (bool, Deliver) + Send>;

/// Read-only connections (`CatalogHandle::read`) open at once.
const READERS: usize = 2;

/// Most calls committed in one transaction.
const MAX_BATCH: usize = 512;

/// Async access to the catalog, cheap to clone. Results are delivered only after the
/// transaction holding them committed, so "recorded" means "on disk".
#[derive(Clone)]
pub struct CatalogHandle {
    tx: std_mpsc::Sender<Job>,
    /// The catalog's file, for `read`.
    path: PathBuf,
    readers: Arc<tokio::sync::Semaphore>,
    /// Asks the thread to merge the write-ahead log after its next commit (outside any
    /// transaction, where SQLite allows it).
    checkpoint: Arc<AtomicBool>,
}

impl CatalogHandle {
    pub fn start(catalog: Catalog) -> CatalogHandle {
        let (tx, rx) = std_mpsc::channel::<Job>();
        let checkpoint = Arc::new(AtomicBool::new(false));
        let flag = checkpoint.clone();
        let path = catalog.path.clone();
        std::thread::Builder::new()
            .name("catalog".into())
            .spawn(move || run(catalog, rx, flag))
            .expect("spawning the catalog thread");
        CatalogHandle {
            tx,
            checkpoint,
            path,
            readers: Arc::new(tokio::sync::Semaphore::new(READERS)),
        }
    }

    /// Runs `f` on a read-only connection of its own, in one read transaction, off the
    /// catalog's thread: WAL lets it read one consistent state while the thread goes on
    /// committing. For the long reads (`status`, `state`, the metrics: a walk over every file)
    /// that would otherwise hold up every write. At most `READERS` at once.
    pub async fn read<R, F>(&self, f: F) -> Result<R, StoreError>
    where
        R: Send + 'static,
        F: FnOnce(&Catalog) -> Result<R, StoreError> + Send + 'static,
    {
        let _permit = self
            .readers
            .acquire()
            .await
            .map_err(|_| StoreError::Closed)?;
        let path = self.path.clone();
        tokio::task::spawn_blocking(move || {
            use rusqlite::OpenFlags;
            let conn = Connection::open_with_flags(
                &path,
                OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX,
            )?;
            conn.busy_timeout(std::time::Duration::from_secs(10))?;
            conn.execute_batch("BEGIN")?;
            let catalog = Catalog { conn, path };
            let read = f(&catalog);
            let _ = catalog.conn.execute_batch("COMMIT");
            read
        })
        .await
        .map_err(|_| StoreError::Closed)?
    }

    /// Merges the write-ahead log into the database file (at a clean stop: the file alone is
    /// then the whole catalog, for a copy or a check). Returns once done.
    pub async fn checkpoint(&self) -> Result<(), StoreError> {
        self.checkpoint.store(true, Ordering::SeqCst);
        self.call(|_| Ok(())).await
    }

    pub async fn call<R, F>(&self, f: F) -> Result<R, StoreError>
    where
        R: Send + 'static,
        F: FnOnce(&Catalog) -> Result<R, StoreError> + Send + 'static,
    {
        let (done, result) = oneshot::channel();
        let job: Job = Box::new(move |cat| {
            let r = match cat {
                Some(cat) => f(cat),
                None => Err(StoreError::Commit("the batch could not begin".into())),
            };
            let ok = r.is_ok();
            let deliver: Deliver = Box::new(move |commit| {
                let _ = done.send(commit.and(r));
            });
            (ok, deliver)
        });
        self.tx.send(job).map_err(|_| StoreError::Closed)?;
        result.await.map_err(|_| StoreError::Closed)?
    }
}

fn run(catalog: Catalog, rx: std_mpsc::Receiver<Job>, checkpoint: Arc<AtomicBool>) {
    while let Ok(first) = rx.recv() {
        let mut jobs = vec![first];
        while jobs.len() < MAX_BATCH {
            match rx.try_recv() {
                Ok(job) => jobs.push(job),
                Err(_) => break,
            }
        }
        let mut delivers = Vec::with_capacity(jobs.len());
        if let Err(e) = catalog.conn.execute_batch("BEGIN IMMEDIATE") {
            // Outside a transaction each write would commit on its own while being reported
            // failed: fail the whole batch without running it.
            tracing::error!("catalog: cannot begin a transaction: {e}");
            for job in jobs {
                let (_, deliver) = job(None);
                deliver(Err(StoreError::batch("cannot begin a transaction", &e)));
            }
            continue;
        }
        for job in jobs {
            // A failing call must not undo the others in its batch.
            let _ = catalog.conn.execute_batch("SAVEPOINT call");
            let (ok, deliver) = job(Some(&catalog));
            if !ok {
                let _ = catalog.conn.execute_batch("ROLLBACK TO call");
            }
            let _ = catalog.conn.execute_batch("RELEASE call");
            delivers.push(deliver);
        }
        let committed = catalog.conn.execute_batch("COMMIT").map_err(|e| {
            let _ = catalog.conn.execute_batch("ROLLBACK");
            tracing::error!("catalog commit failed: {e}");
            (is_disk_full(&e), e.to_string())
        });
        if checkpoint.swap(false, Ordering::SeqCst) {
            if let Err(e) = catalog.checkpoint() {
                tracing::warn!("cannot merge the catalog's log into it: {e}");
            }
        }
        for deliver in delivers {
            deliver(committed.clone().map_err(|(full, e)| match full {
                true => StoreError::DiskFull(e),
                false => StoreError::Commit(e),
            }));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fid(c: char) -> FileId {
        FileId::parse(&c.to_string().repeat(64)).unwrap()
    }

    fn file(c: char, path: &str) -> FileRow {
        FileRow {
            file_id: fid(c),
            path: PathBuf::from(path),
            version: 0,
            size: 10,
            mtime_ns: 1,
            mode: 0o644,
            content_hash: "h".into(),
            desired_rd: 2,
            complete: false,
            inode: 0,
            uid: 0,
            gid: 0,
            deleted_at: None,
            ctime_ns: 0,
            encrypted: false,
            key_fp: None,
        }
    }

    #[test]
    fn folders_are_written_only_when_changed_listed_below_a_path_and_forgotten_when_empty() {
        let dir = tempfile::tempdir().unwrap();
        let cat = Catalog::open(&dir.path().join("c.db")).unwrap();
        let odd = PathBuf::from(OsStr::from_bytes(b"/w/\xff"));
        let row = |path: &Path, mode: u32| FolderRow {
            path: path.to_path_buf(),
            uid: 7,
            gid: 8,
            mode,
            mtime_ns: -5,
        };
        let changes = || cat.conn.changes();
        cat.note_folders(&[row(Path::new("/w"), 0o750), row(&odd, 0o700)])
            .unwrap();
        cat.note_folders(&[row(Path::new("/w"), 0o750)]).unwrap();
        assert_eq!(changes(), 0, "an unchanged row is not written");
        cat.note_folders(&[row(Path::new("/w"), 0o755)]).unwrap();
        assert_eq!(changes(), 1);
        // `/w0` and `/wx` are not below `/w`; `/w` itself and names of any bytes are.
        cat.note_folders(&[row(Path::new("/w0"), 1), row(Path::new("/wx"), 1)])
            .unwrap();
        let below = cat.folders_below(Path::new("/w")).unwrap();
        assert_eq!(below, vec![row(Path::new("/w"), 0o755), row(&odd, 0o700)]);
        // A folder that holds no version any more is forgotten when the last one goes.
        let mut f = file('a', "/unused");
        f.path = odd.join("f");
        cat.insert_file(&f).unwrap();
        cat.insert_file(&file('b', "/w/g")).unwrap();
        assert!(cat.forget(&fid('a'), Forget::UserDelete, 0).unwrap());
        assert_eq!(
            cat.folders_below(Path::new("/w")).unwrap(),
            vec![row(Path::new("/w"), 0o755)],
            "/w still holds /w/g"
        );
        assert!(cat.forget(&fid('b'), Forget::UserDelete, 0).unwrap());
        assert!(cat.folders_below(Path::new("/w")).unwrap().is_empty());
        assert_eq!(cat.folders_below(Path::new("/")).unwrap().len(), 2);
    }

    #[test]
    fn watched_folders_are_kept_once_each_and_odd_names_survive() {
        let dir = tempfile::tempdir().unwrap();
        let cat = Catalog::open(&dir.path().join("c.db")).unwrap();
        assert!(cat.watched_folders().unwrap().is_empty());
        let odd = PathBuf::from(OsStr::from_bytes(b"/w/\xff\nb"));
        cat.note_watched(&[PathBuf::from("/w/a"), odd.clone()])
            .unwrap();
        cat.note_watched(&[PathBuf::from("/w/c"), odd.clone()])
            .unwrap();
        assert_eq!(
            cat.watched_folders().unwrap(),
            vec![PathBuf::from("/w/a"), odd, PathBuf::from("/w/c")]
        );
        // Whose they are, for a caller other than root.
        let mut row = file('a', "/w/a/x");
        row.uid = 1000;
        cat.insert_file(&row).unwrap();
        assert!(cat.owns_any_under(Path::new("/w/a"), 1000).unwrap());
        assert!(!cat.owns_any_under(Path::new("/w/a"), 1001).unwrap());
        assert!(!cat.owns_any_under(Path::new("/w/c"), 1000).unwrap());
    }

    #[test]
    fn each_encrypted_version_keeps_its_keys_fingerprint() {
        let dir = tempfile::tempdir().unwrap();
        let cat = Catalog::open(&dir.path().join("c.db")).unwrap();
        assert_eq!(cat.key_facts().unwrap(), KeyFacts::default());
        let sealed = |c: char, path: &str, fp: Option<&str>| FileRow {
            encrypted: true,
            key_fp: fp.map(str::to_owned),
            ..file(c, path)
        };
        cat.insert_version(&file('c', "/clear"), BackupId::new())
            .unwrap();
        cat.insert_version(&sealed('a', "/a", Some("aa")), BackupId::new())
            .unwrap();
        cat.insert_version(&sealed('b', "/b", None), BackupId::new())
            .unwrap();
        assert_eq!(
            cat.file(&fid('a')).unwrap().unwrap().key_fp.as_deref(),
            Some("aa")
        );
        let facts = cat.key_facts().unwrap();
        assert_eq!((facts.expected.as_deref(), facts.versions), (Some("aa"), 2));
        // The key this peer runs with is what the next start checks against.
        cat.set_meta(MASTER_KEY_FP, "bb").unwrap();
        cat.insert_version(&sealed('d', "/a", Some("bb")), BackupId::new())
            .unwrap();
        let facts = cat.key_facts().unwrap();
        assert_eq!((facts.expected.as_deref(), facts.versions), (Some("bb"), 2));
        // Under "bb": /a's old version is not readable, its newest is; unknown keys count as
        // the running one's.
        assert_eq!(cat.undecryptable(Some("bb"), None).unwrap(), (1, vec![]));
        // A complete version is the newest that counts.
        cat.set_file_complete(&fid('a')).unwrap();
        let (n, paths) = cat.undecryptable(Some("bb"), None).unwrap();
        assert_eq!((n, paths), (1, vec![PathBuf::from("/a")]));
        // No key: every encrypted version.
        let (n, mut paths) = cat.undecryptable(None, None).unwrap();
        paths.sort();
        assert_eq!(
            (n, paths),
            (3, vec![PathBuf::from("/a"), PathBuf::from("/b")])
        );
    }

    #[test]
    fn queue_keeps_work_queued_again_while_busy() {
        let dir = tempfile::tempdir().unwrap();
        let cat = Catalog::open(&dir.path().join("c.db")).unwrap();
        let p = Path::new("/w/a");
        cat.enqueue(p, 100).unwrap();
        let due = cat.due(100, 10).unwrap();
        assert_eq!(due.len(), 1);
        let gen = due[0].1;
        cat.enqueue(p, 200).unwrap(); // changed again while being backed up
        cat.dequeue(p, gen).unwrap();
        assert_eq!(cat.queue_len().unwrap(), 1, "the newer change stays queued");
        let (_, gen, _) = cat.due(100, 10).unwrap()[0].clone();
        cat.retry_later(p, gen, 5000).unwrap();
        assert!(cat.due(4999, 10).unwrap().is_empty());
        assert_eq!(cat.next_due().unwrap(), Some(5000));
        cat.dequeue(p, gen).unwrap();
        assert_eq!(cat.queue_len().unwrap(), 0);
    }

    #[test]
    fn deleted_paths_expire_and_come_back() {
        let dir = tempfile::tempdir().unwrap();
        let cat = Catalog::open(&dir.path().join("c.db")).unwrap();
        cat.insert_file(&file('a', "/w/f")).unwrap();
        assert_eq!(cat.live_paths_under(Path::new("/w")).unwrap().len(), 1);
        assert_eq!(cat.mark_deleted(Path::new("/w/f"), 50).unwrap(), 1);
        assert_eq!(
            cat.mark_deleted(Path::new("/w/f"), 60).unwrap(),
            0,
            "first time counts"
        );
        cat.add_absent(Path::new("/w/f"), 700).unwrap();
        assert_eq!(
            cat.deleted_paths().unwrap(),
            vec![DeletedPath {
                path: PathBuf::from("/w/f"),
                deleted_at: 50,
                absent_ms: 700
            }]
        );
        assert!(cat.live_paths_under(Path::new("/w")).unwrap().is_empty());
        cat.insert_file(&file('b', "/w/f")).unwrap();
        assert!(cat.deleted_paths().unwrap().is_empty());
        assert_eq!(cat.latest(Path::new("/w/f")).unwrap().unwrap().version, 2);
    }

    #[test]
    fn paths_written_as_text_by_an_older_catalog_are_found_as_bytes() {
        let dir = tempfile::tempdir().unwrap();
        let db = dir.path().join("c.db");
        {
            let cat = Catalog::open(&db).unwrap();
            cat.insert_file(&file('a', "/x/f")).unwrap();
            cat.enqueue(Path::new("/x/g"), 5).unwrap();
            // As the first release wrote them.
            cat.conn
                .execute_batch(
                    "UPDATE files SET path = CAST(path AS TEXT);
                     UPDATE queue SET path = CAST(path AS TEXT);
                     PRAGMA user_version = 0;",
                )
                .unwrap();
        }
        let cat = Catalog::open(&db).unwrap();
        assert_eq!(cat.versions(Path::new("/x/f")).unwrap().len(), 1);
        assert_eq!(cat.insert_file(&file('b', "/x/f")).unwrap(), 2);
        cat.dequeue(Path::new("/x/g"), 0).unwrap();
        assert_eq!(cat.queue_len().unwrap(), 0);
        // Names that are not UTF-8 stay apart.
        let latin1 = |b: &[u8]| PathBuf::from(OsStr::from_bytes(b));
        let mut e = file('c', "");
        e.path = latin1(b"/x/caf\xe9");
        let mut f = file('d', "");
        f.path = latin1(b"/x/caf\xe8");
        assert_eq!(cat.insert_file(&e).unwrap(), 1);
        assert_eq!(cat.insert_file(&f).unwrap(), 1);
        assert_eq!(cat.latest(&e.path).unwrap().unwrap().file_id, fid('c'));
    }

    #[test]
    fn versions_and_holders() {
        let dir = tempfile::tempdir().unwrap();
        let cat = Catalog::open(&dir.path().join("c.db")).unwrap();
        assert_eq!(cat.insert_file(&file('a', "/x/f")).unwrap(), 1);
        assert_eq!(cat.insert_file(&file('b', "/x/f")).unwrap(), 2);
        assert_eq!(cat.insert_file(&file('c', "/x/ff")).unwrap(), 1);
        let v: Vec<u32> = cat
            .versions(Path::new("/x/f"))
            .unwrap()
            .iter()
            .map(|f| f.version)
            .collect();
        assert_eq!(v, vec![1, 2]);
        assert_eq!(cat.versions(Path::new("/x")).unwrap().len(), 3);
        // STORED for a chunk we do not know is ignored.
        assert_eq!(
            cat.add_holder(&fid('a'), ChunkNo(0), PeerId(2)).unwrap(),
            None
        );
        cat.put_file_chunk(&fid('a'), ChunkNo(0), 10, "h0").unwrap();
        assert_eq!(
            cat.add_holder(&fid('a'), ChunkNo(0), PeerId(2)).unwrap(),
            Some(1)
        );
        // A duplicated STORED never inflates the perceived RD.
        assert_eq!(
            cat.add_holder(&fid('a'), ChunkNo(0), PeerId(2)).unwrap(),
            Some(1)
        );
        assert_eq!(
            cat.add_holder(&fid('a'), ChunkNo(0), PeerId(3)).unwrap(),
            Some(2)
        );
        assert_eq!(
            cat.remove_holder(&fid('a'), ChunkNo(0), PeerId(2)).unwrap(),
            1
        );
        assert!(cat.forget(&fid('a'), Forget::UserDelete, 1_000).unwrap());
        assert!(cat.file_chunks(&fid('a')).unwrap().is_empty());
        assert_eq!(cat.pending_deletes().unwrap(), vec![fid('a')]);
        // Still ours: a late re-backup of its chunks by a holder is never hosted here.
        assert_eq!(
            cat.role(&fid('a'), ChunkNo(0)).unwrap(),
            ChunkRole::Forgotten
        );
        cat.clear_pending_delete(&fid('a')).unwrap();
        assert!(cat.pending_deletes().unwrap().is_empty());
        assert_eq!(cat.perceived(&fid('a'), ChunkNo(0)).unwrap(), 0);
    }

    #[test]
    fn a_version_backed_up_again_is_owed_no_delete() {
        let dir = tempfile::tempdir().unwrap();
        let cat = Catalog::open(&dir.path().join("c.db")).unwrap();
        let run = BackupId(7);
        cat.insert_version(&file('a', "/w/f"), run).unwrap();
        // Abandoned (the file changed while read): its DELETE is owed...
        assert!(cat
            .forget(&fid('a'), Forget::Abandoned { backup: run }, 1_000)
            .unwrap());
        assert_eq!(cat.pending_deletes().unwrap(), vec![fid('a')]);
        // ...until the same content (the same fileId) is backed up again before it went out.
        cat.insert_version(&file('a', "/w/f"), BackupId(8)).unwrap();
        assert!(cat.pending_deletes().unwrap().is_empty());
    }

    #[test]
    fn complete_versions_are_forgotten_only_by_policy() {
        let dir = tempfile::tempdir().unwrap();
        let cat = Catalog::open(&dir.path().join("c.db")).unwrap();
        let (mine, other) = (BackupId(7), BackupId(8));
        assert_eq!(cat.insert_version(&file('a', "/w/f"), mine).unwrap(), 1);
        cat.set_file_complete(&fid('a')).unwrap();
        // A backup that resumed the complete version 1 gives up: version 1 stays.
        assert!(!cat
            .forget(&fid('a'), Forget::Abandoned { backup: mine }, 1_000)
            .unwrap());
        // A version inserted by another backup run is not this backup's to forget.
        assert_eq!(cat.insert_version(&file('b', "/w/f"), other).unwrap(), 2);
        assert!(!cat
            .forget(&fid('b'), Forget::Abandoned { backup: mine }, 1_000)
            .unwrap());
        // keep_versions = 1 does not drop version 1 while version 2 is incomplete.
        assert!(!cat
            .forget(&fid('a'), Forget::KeepVersions { keep: 1 }, 1_000)
            .unwrap());
        // Not marked deleted: does not expire.
        let expired = Forget::DeletedExpired { keep_deleted_ms: 0 };
        assert!(!cat.forget(&fid('a'), expired, 1_000).unwrap());
        // The backup that inserted version 2 abandons it: forgotten, and its number is not
        // given to other content.
        assert!(cat
            .forget(&fid('b'), Forget::Abandoned { backup: other }, 1_000)
            .unwrap());
        assert_eq!(cat.pending_deletes().unwrap(), vec![fid('b')]);
        assert_eq!(cat.insert_version(&file('c', "/w/f"), mine).unwrap(), 3);
        cat.set_file_complete(&fid('c')).unwrap();
        // Issue 24, case 2: not before a catalog snapshot at its RD names version 3.
        assert!(!cat
            .forget(&fid('a'), Forget::KeepVersions { keep: 1 }, 1_000)
            .unwrap());
        let snap = FileId::from_digest(&[0x5A; 32]);
        cat.claim_snapshot(&snap, crate::protocol::seal::SnapshotNo::Numbered(1), 0)
            .unwrap();
        cat.set_snapshot_at_rd(&snap).unwrap();
        assert!(cat
            .forget(&fid('a'), Forget::KeepVersions { keep: 1 }, 1_000)
            .unwrap());
        assert!(!cat
            .forget(&fid('c'), Forget::KeepVersions { keep: 1 }, 1_000)
            .unwrap());
        // Absent for long enough (as counted, whatever the wall clock says), and still marked:
        // expires.
        cat.mark_deleted(Path::new("/w/f"), 50).unwrap();
        cat.add_absent(Path::new("/w/f"), 2999).unwrap();
        let expired = Forget::DeletedExpired {
            keep_deleted_ms: 3000,
        };
        assert!(!cat.forget(&fid('c'), expired, 1_000).unwrap());
        cat.add_absent(Path::new("/w/f"), 1).unwrap();
        assert!(cat.forget(&fid('c'), expired, 1_000).unwrap());
        assert!(cat.versions_of(Path::new("/w/f")).unwrap().is_empty());
    }

    #[test]
    fn one_path_is_not_the_folder_below_it() {
        let dir = tempfile::tempdir().unwrap();
        let cat = Catalog::open(&dir.path().join("c.db")).unwrap();
        cat.insert_file(&file('a', "/w/x")).unwrap();
        cat.insert_file(&file('b', "/w/x/y")).unwrap();
        assert_eq!(cat.versions_of(Path::new("/w/x")).unwrap().len(), 1);
        assert_eq!(cat.versions(Path::new("/w/x")).unwrap().len(), 2);
        // A backup that reuses the row of a path marked deleted clears the mark.
        cat.mark_deleted(Path::new("/w/x"), 5).unwrap();
        cat.mark_deleted(Path::new("/w/x/y"), 5).unwrap();
        assert_eq!(cat.undelete(&fid('a')).unwrap(), 1);
        assert_eq!(
            cat.deleted_paths().unwrap(),
            vec![DeletedPath {
                path: PathBuf::from("/w/x/y"),
                deleted_at: 5,
                absent_ms: 0
            }]
        );
    }

    #[test]
    fn a_recorded_chunk_keeps_its_bytes() {
        let dir = tempfile::tempdir().unwrap();
        let cat = Catalog::open(&dir.path().join("c.db")).unwrap();
        cat.insert_file(&file('a', "/w/f")).unwrap();
        assert!(cat
            .record_file_chunk(&fid('a'), ChunkNo(0), 10, "h0")
            .unwrap());
        assert!(cat
            .record_file_chunk(&fid('a'), ChunkNo(0), 10, "h0")
            .unwrap());
        assert!(!cat
            .record_file_chunk(&fid('a'), ChunkNo(0), 10, "h1")
            .unwrap());
        assert_eq!(cat.file_chunks(&fid('a')).unwrap()[0].hash, "h0");
    }

    #[test]
    fn an_older_catalog_gains_the_new_columns() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("c.db");
        {
            let conn = Connection::open(&path).unwrap();
            conn.execute_batch(
                "CREATE TABLE files (file_id TEXT PRIMARY KEY, path TEXT NOT NULL,
                    version INTEGER NOT NULL, size INTEGER NOT NULL, mtime_ns INTEGER NOT NULL,
                    mode INTEGER NOT NULL, content_hash TEXT NOT NULL,
                    desired_rd INTEGER NOT NULL, complete INTEGER NOT NULL DEFAULT 0,
                    inode INTEGER NOT NULL DEFAULT 0, uid INTEGER NOT NULL DEFAULT 0,
                    gid INTEGER NOT NULL DEFAULT 0, deleted_at INTEGER, UNIQUE (path, version));",
            )
            .unwrap();
            conn.execute(
                "INSERT INTO files (file_id, path, version, size, mtime_ns, mode, content_hash,
                                    desired_rd, complete)
                 VALUES (?1, '/w/f', 4, 10, 1, 420, 'h', 2, 1)",
                [fid('a').key()],
            )
            .unwrap();
        }
        let cat = Catalog::open(&path).unwrap();
        let row = cat.latest(Path::new("/w/f")).unwrap().unwrap();
        assert_eq!((row.version, row.ctime_ns, row.complete), (4, 0, true));
        assert_eq!(cat.insert_file(&file('b', "/w/f")).unwrap(), 5);
        drop(cat);
        // Opening again is harmless.
        Catalog::open(&path).unwrap();
    }

    #[test]
    fn hosted_keeps_wire_text_and_counts_bytes() {
        let dir = tempfile::tempdir().unwrap();
        let cat = Catalog::open(&dir.path().join("c.db")).unwrap();
        let upper = FileId::parse(&"A".repeat(64)).unwrap();
        let row = HostedRow {
            file_id: upper.clone(),
            chunk_no: ChunkNo(4),
            size: 64_000,
            hash: "h".into(),
            desired_rd: 2,
            sender: PeerId(1),
        };
        cat.insert_hosted(&row, &[PeerId(1)]).unwrap();
        assert_eq!(
            cat.role(&fid('a'), ChunkNo(4)).unwrap(),
            ChunkRole::Hosted { desired_rd: 2 }
        );
        let back = cat.hosted(&fid('a'), ChunkNo(4)).unwrap().unwrap();
        assert_eq!(back.file_id.as_wire(), upper.as_wire());
        assert_eq!(back.sender, PeerId(1));
        assert_eq!(cat.all_hosted().unwrap()[0].0, back);
        assert_eq!(cat.used_bytes(|s| s + 1).unwrap(), 64_001);
        assert_eq!(
            cat.delete_hosted_file(&fid('a')).unwrap(),
            vec![(ChunkNo(4), 64_000)]
        );
        assert_eq!(cat.used_bytes(|s| s + 1).unwrap(), 0);
    }

    #[tokio::test]
    async fn handle_batches_and_isolates_failures() {
        let dir = tempfile::tempdir().unwrap();
        let handle = CatalogHandle::start(Catalog::open(&dir.path().join("c.db")).unwrap());
        let a = handle.call(|c| c.insert_file(&file('a', "/f")));
        let b = handle.call(|c| c.insert_file(&file('a', "/f"))); // duplicate fileId: fails
        let d = handle.call(|c| c.insert_file(&file('d', "/g")));
        let (a, b, d) = tokio::join!(a, b, d);
        assert_eq!(a.unwrap(), 1);
        assert!(b.is_err());
        assert_eq!(d.unwrap(), 1);
        let all = handle.call(|c| c.all_files()).await.unwrap();
        assert_eq!(all.len(), 2);
    }

    #[test]
    fn holder_sets_are_capped_and_counted_without_recount() {
        let dir = tempfile::tempdir().unwrap();
        let cat = Catalog::open(&dir.path().join("c.db")).unwrap();
        cat.insert_file(&file('a', "/f")).unwrap();
        cat.put_file_chunk(&fid('a'), ChunkNo(0), 10, "h0").unwrap();
        // A flood of STOREDs from forged ids, in batches as the daemon records them.
        let forged: Vec<PeerId> = (1000..201_000).map(PeerId).collect();
        for batch in forged.chunks(1024) {
            let rd = cat.add_holders(&fid('a'), ChunkNo(0), batch).unwrap();
            assert_eq!(rd, Some(MAX_HOLDERS));
        }
        assert_eq!(cat.holders(&fid('a'), ChunkNo(0)).unwrap().len(), 64);
        assert_eq!(
            cat.file_chunks(&fid('a')).unwrap()[0].perceived_rd,
            MAX_HOLDERS
        );
        // Beyond the cap a new peer is ignored; one already in the set stays counted once.
        assert_eq!(
            cat.add_holder(&fid('a'), ChunkNo(0), PeerId(7)).unwrap(),
            Some(64)
        );
        assert_eq!(
            cat.add_holder(&fid('a'), ChunkNo(0), PeerId(1000)).unwrap(),
            Some(64)
        );
        // The counts follow removals and deletes.
        assert_eq!(
            cat.remove_holder(&fid('a'), ChunkNo(0), PeerId(1000))
                .unwrap(),
            63
        );
        assert_eq!(
            cat.add_holder(&fid('a'), ChunkNo(0), PeerId(7)).unwrap(),
            Some(64)
        );
        assert_eq!(cat.min_perceived_rd(&fid('a')).unwrap(), 64);
        cat.delete_file(&fid('a'), 1_000).unwrap();
        assert_eq!(cat.perceived(&fid('a'), ChunkNo(0)).unwrap(), 0);
        let rows: i64 = cat
            .conn
            .query_row("SELECT COUNT(*) FROM holder_counts", [], |r| r.get(0))
            .unwrap();
        assert_eq!(rows, 0);
        // STOREDs for a chunk we do not know cost nothing.
        assert_eq!(
            cat.add_holders(&fid('b'), ChunkNo(0), &forged[..10])
                .unwrap(),
            None
        );
    }

    #[test]
    fn counts_are_built_for_a_catalog_of_an_older_version() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("c.db");
        {
            let cat = Catalog::open(&path).unwrap();
            cat.put_file_chunk(&fid('a'), ChunkNo(0), 10, "h0").ok();
            cat.conn
                .execute_batch(
                    "DROP TRIGGER holder_added; DROP TRIGGER holder_removed;
                     DROP TABLE holder_counts;
                     INSERT INTO holders VALUES ('x', 1, 5), ('x', 1, 6), ('y', 0, 5);",
                )
                .unwrap();
        }
        let cat = Catalog::open(&path).unwrap();
        let count = |f: &str, n: i64| -> u32 {
            cat.conn
                .query_row(
                    "SELECT n FROM holder_counts WHERE file_id = ?1 AND chunk_no = ?2",
                    params![f, n],
                    |r| r.get(0),
                )
                .unwrap()
        };
        assert_eq!((count("x", 1), count("y", 0)), (2, 1));
    }

    #[test]
    fn hosted_chunks_are_listed_a_page_at_a_time_in_order() {
        let dir = tempfile::tempdir().unwrap();
        let cat = Catalog::open(&dir.path().join("c.db")).unwrap();
        for (c, no) in [('b', 1), ('a', 2), ('b', 0), ('a', 0), ('c', 7)] {
            cat.insert_hosted(&hosted(c, no, 10, 2), &[]).unwrap();
        }
        assert_eq!(cat.hosted_count().unwrap(), 5);
        let mut seen = Vec::new();
        let mut after: Option<ChunkId> = None;
        loop {
            let page = cat.hosted_page(after.as_ref(), Some(2)).unwrap();
            assert!(page.len() <= 2);
            let Some((last, _)) = page.last() else {
                break;
            };
            after = Some(last.chunk_id());
            seen.extend(page.iter().map(|(r, _)| (r.file_id.key(), r.chunk_no.0)));
        }
        let key = |c: char| fid(c).key();
        let expected = [
            (key('a'), 0),
            (key('a'), 2),
            (key('b'), 0),
            (key('b'), 1),
            (key('c'), 7),
        ];
        assert_eq!(seen, expected);
    }

    fn hosted(c: char, chunk_no: u32, size: u64, sender: u32) -> HostedRow {
        HostedRow {
            file_id: fid(c),
            chunk_no: ChunkNo(chunk_no),
            size,
            hash: "h".into(),
            desired_rd: 2,
            sender: PeerId(sender),
        }
    }

    fn heard(peer: u32, protocol: &str, at: i64) -> (PeerId, String, i64) {
        (PeerId(peer), protocol.to_owned(), at)
    }

    fn report_of(cat: &Catalog, peer: u32) -> Option<PeerRow> {
        cat.peers_report()
            .unwrap()
            .into_iter()
            .find(|r| r.id == PeerId(peer))
    }

    fn peer_rows(cat: &Catalog) -> u64 {
        cat.conn
            .query_row("SELECT COUNT(*) FROM peers", [], |r| r.get::<_, i64>(0))
            .unwrap() as u64
    }

    #[test]
    fn a_peer_heard_keeps_its_latest_time_and_highest_protocol() {
        let dir = tempfile::tempdir().unwrap();
        let cat = Catalog::open(&dir.path().join("c.db")).unwrap();
        cat.heard_peers(&[heard(2, "1.0", 100), heard(3, "2.0", 50)])
            .unwrap();
        // Batches may arrive out of order; a 2.0 peer may also send 1.0 messages.
        cat.heard_peers(&[heard(2, "2.0", 90)]).unwrap();
        cat.heard_peers(&[heard(2, "1.0", 200)]).unwrap();
        let two = report_of(&cat, 2).unwrap();
        assert_eq!(
            (two.protocol.as_str(), two.last_heard_ms, two.lost_at_ms),
            ("2.0", Some(200), None)
        );
        // A peer counted lost is back as soon as it is heard.
        cat.drop_lost_holder(PeerId(3), 300).unwrap();
        assert_eq!(report_of(&cat, 3).unwrap().lost_at_ms, Some(300));
        cat.heard_peers(&[heard(3, "2.0", 400)]).unwrap();
        let three = report_of(&cat, 3).unwrap();
        assert_eq!((three.last_heard_ms, three.lost_at_ms), (Some(400), None));
        // Nothing to record, nothing done.
        cat.heard_peers(&[]).unwrap();
        assert_eq!(peer_rows(&cat), 2);
    }

    #[test]
    fn auth_marks_are_kept_for_peers_heard_and_an_older_catalog_gains_them() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("c.db");
        let mark = |p, mark, marked_at| auth::Mark {
            sender: PeerId(p),
            mark,
            marked_at,
        };
        {
            let cat = Catalog::open(&path).unwrap();
            // As the release before the replay guard left it.
            cat.conn
                .execute_batch(
                    "ALTER TABLE peers DROP COLUMN auth_mark;
                     ALTER TABLE peers DROP COLUMN auth_mark_at;",
                )
                .unwrap();
            cat.heard_peers(&[heard(2, "2.0", 100)]).unwrap();
        }
        let cat = Catalog::open(&path).unwrap();
        assert_eq!(cat.auth_marks().unwrap(), vec![], "none yet");
        // Peer 9 was never recorded as heard: left out.
        cat.record_auth_marks(&[mark(2, 1000, 990), mark(9, 5, 5)])
            .unwrap();
        assert_eq!(cat.auth_marks().unwrap(), vec![mark(2, 1000, 990)]);
        // Written as given, even lower (a mark capped after a clock set wrong).
        cat.record_auth_marks(&[mark(2, 900, 995)]).unwrap();
        cat.heard_peers(&[heard(2, "2.0", 200)]).unwrap();
        drop(cat);
        let cat = Catalog::open(&path).unwrap();
        assert_eq!(cat.auth_marks().unwrap(), vec![mark(2, 900, 995)]);
    }

    #[test]
    fn forged_sender_ids_cannot_grow_the_peers_table_without_end() {
        let dir = tempfile::tempdir().unwrap();
        let cat = Catalog::open(&dir.path().join("c.db")).unwrap();
        cat.insert_file(&file('a', "/f")).unwrap();
        cat.put_file_chunk(&fid('a'), ChunkNo(0), 10, "h0").unwrap();
        cat.add_holder(&fid('a'), ChunkNo(0), PeerId(8)).unwrap();
        cat.heard_peers(&[heard(2, "2.0", 10)]).unwrap();
        // A flood of datagrams from forged ids, in batches as the daemon records them.
        let forged: Vec<_> = (10_000..20_000).map(|id| heard(id, "2.0", 20)).collect();
        for batch in forged.chunks(1000) {
            cat.heard_peers(batch).unwrap();
        }
        assert_eq!(peer_rows(&cat), MAX_PEER_ROWS);
        // Full: a new peer holding nothing of ours is not recorded; one holding a chunk is, and
        // a peer already known is still kept up to date.
        cat.heard_peers(&[
            heard(7, "2.0", 30),
            heard(8, "1.0", 30),
            heard(2, "2.0", 30),
        ])
        .unwrap();
        assert_eq!(report_of(&cat, 7), None);
        assert_eq!(report_of(&cat, 8).unwrap().last_heard_ms, Some(30));
        assert_eq!(report_of(&cat, 2).unwrap().last_heard_ms, Some(30));
        assert_eq!(peer_rows(&cat), MAX_PEER_ROWS + 1);
    }

    #[test]
    fn lost_holders_are_silent_past_the_timeout_counted_from_our_start() {
        let dir = tempfile::tempdir().unwrap();
        let cat = Catalog::open(&dir.path().join("c.db")).unwrap();
        cat.insert_file(&file('a', "/f")).unwrap();
        cat.put_file_chunk(&fid('a'), ChunkNo(0), 10, "h0").unwrap();
        cat.add_holders(&fid('a'), ChunkNo(0), &[PeerId(2), PeerId(3), PeerId(4)])
            .unwrap();
        cat.insert_hosted(&hosted('b', 0, 100, 6), &[PeerId(1), PeerId(5)])
            .unwrap();
        // Peer 6 sent us a chunk but holds nothing: not a holder, never lost.
        cat.heard_peers(&[
            heard(2, "2.0", 1_000),
            heard(3, "2.0", 9_000),
            heard(6, "2.0", 0),
        ])
        .unwrap();
        let (timeout, since) = (10_000, 5_000);
        // Peer 2 was last heard at 1 s, before we started at 5 s: its silence counts from 5 s.
        // Peers 4 and 5 were never heard: from 5 s as well.
        assert!(cat.lost_holders(15_000, timeout, since).unwrap().is_empty());
        let lost = cat.lost_holders(15_001, timeout, since).unwrap();
        assert_eq!(lost, vec![PeerId(1), PeerId(2), PeerId(4), PeerId(5)]);
        // Once dropped, a holder is not listed again; peer 3 follows at its own time.
        cat.drop_lost_holder(PeerId(2), 15_001).unwrap();
        assert_eq!(
            cat.lost_holders(19_000, timeout, since).unwrap(),
            vec![PeerId(1), PeerId(4), PeerId(5)]
        );
        assert_eq!(
            cat.lost_holders(19_001, timeout, since).unwrap(),
            vec![PeerId(1), PeerId(3), PeerId(4), PeerId(5)]
        );
        // After a restart at 30 s, every holder gets a full timeout again.
        assert!(cat
            .lost_holders(40_000, timeout, 30_000)
            .unwrap()
            .is_empty());
    }

    #[test]
    fn a_new_incarnation_takes_the_peer_out_of_every_holder_set() {
        let dir = tempfile::tempdir().unwrap();
        let cat = Catalog::open(&dir.path().join("c.db")).unwrap();
        cat.insert_file(&file('a', "/f")).unwrap();
        for n in 0..3 {
            cat.put_file_chunk(&fid('a'), ChunkNo(n), 10, &format!("h{n}"))
                .unwrap();
            cat.add_holders(&fid('a'), ChunkNo(n), &[PeerId(2), PeerId(3)])
                .unwrap();
        }
        cat.insert_hosted(&hosted('b', 0, 100, 3), &[PeerId(2)])
            .unwrap();
        // The first one heard is only recorded; the same again changes nothing.
        assert_eq!(cat.peer_incarnation(PeerId(2), "aa").unwrap(), None);
        assert_eq!(cat.peer_incarnation(PeerId(2), "aa").unwrap(), None);
        assert_eq!(cat.perceived(&fid('a'), ChunkNo(0)).unwrap(), 2);
        // Another one: peer 2 holds nothing any more (ours, hosted); peer 3 is untouched.
        assert_eq!(cat.peer_incarnation(PeerId(2), "bb").unwrap(), Some(4));
        assert_eq!(cat.holders(&fid('a'), ChunkNo(1)).unwrap(), vec![PeerId(3)]);
        assert_eq!(
            cat.holders(&fid('b'), ChunkNo(0)).unwrap(),
            Vec::<PeerId>::new()
        );
        // Verification picks only holders with an incarnation, and only our own chunks.
        cat.add_holders(&fid('a'), ChunkNo(2), &[PeerId(2)])
            .unwrap();
        cat.add_holders(&fid('b'), ChunkNo(0), &[PeerId(2)])
            .unwrap();
        let picked = cat.verify_samples(3, 64).unwrap();
        assert_eq!(picked.len(), 1, "{picked:?}");
        assert_eq!((picked[0].0, picked[0].1.chunk_no), (PeerId(2), ChunkNo(2)));
        assert_eq!((picked[0].2, picked[0].3.as_str()), (10, "h2"));
        cat.peer_incarnation(PeerId(3), "cc").unwrap();
        let mut picked = cat.verify_samples(3, 64).unwrap();
        picked.retain(|p| p.0 == PeerId(3));
        let mut nos: Vec<u32> = picked.iter().map(|p| p.1.chunk_no.0).collect();
        nos.sort();
        assert!(
            !nos.is_empty() && nos.windows(2).all(|w| w[0] < w[1]),
            "{picked:?}"
        );
    }

    #[test]
    fn a_lost_holder_leaves_every_holder_set() {
        let dir = tempfile::tempdir().unwrap();
        let cat = Catalog::open(&dir.path().join("c.db")).unwrap();
        cat.insert_file(&file('a', "/f")).unwrap();
        for n in 0..2 {
            cat.put_file_chunk(&fid('a'), ChunkNo(n), 10, "h").unwrap();
            cat.add_holders(&fid('a'), ChunkNo(n), &[PeerId(2), PeerId(3)])
                .unwrap();
        }
        cat.insert_hosted(&hosted('b', 0, 100, 3), &[PeerId(1), PeerId(3)])
            .unwrap();
        cat.heard_peers(&[heard(3, "2.0", 50)]).unwrap();
        assert_eq!(cat.drop_lost_holder(PeerId(3), 1_000).unwrap(), 3);
        assert_eq!(cat.min_perceived_rd(&fid('a')).unwrap(), 1);
        assert_eq!(cat.all_hosted().unwrap()[0].1, 1);
        assert_eq!(cat.holders(&fid('b'), ChunkNo(0)).unwrap(), vec![PeerId(1)]);
        assert_eq!(cat.paths_below_rd().unwrap(), Vec::<PathBuf>::new()); // not complete yet
        cat.set_file_complete(&fid('a')).unwrap();
        assert_eq!(cat.paths_below_rd().unwrap(), vec![PathBuf::from("/f")]);
        // Lost since the first time; a peer never heard gets a row of its own.
        assert_eq!(cat.drop_lost_holder(PeerId(3), 2_000).unwrap(), 0);
        assert_eq!(cat.drop_lost_holder(PeerId(9), 2_000).unwrap(), 0);
        let three = report_of(&cat, 3).unwrap();
        assert_eq!(
            (three.last_heard_ms, three.lost_at_ms),
            (Some(50), Some(1_000))
        );
        let nine = report_of(&cat, 9).unwrap();
        assert_eq!(
            (nine.protocol.as_str(), nine.last_heard_ms, nine.lost_at_ms),
            ("", None, Some(2_000))
        );
    }

    #[test]
    fn kept_versions_below_rd_are_the_old_and_the_deleted_with_a_copy_left() {
        let dir = tempfile::tempdir().unwrap();
        let cat = Catalog::open(&dir.path().join("c.db")).unwrap();
        // /f: versions a (old) and b (newest); /g: version c, deleted locally.
        for (c, path) in [('a', "/f"), ('b', "/f"), ('c', "/g")] {
            cat.insert_version(&file(c, path), BackupId(1)).unwrap();
            cat.put_file_chunk(&fid(c), ChunkNo(0), 10, "h").unwrap();
            cat.put_file_chunk(&fid(c), ChunkNo(1), 10, "h").unwrap();
            for n in 0..2 {
                cat.add_holders(&fid(c), ChunkNo(n), &[PeerId(2), PeerId(3)])
                    .unwrap();
            }
            cat.set_file_complete(&fid(c)).unwrap();
        }
        cat.mark_deleted(Path::new("/g"), 5).unwrap();
        assert!(
            cat.kept_versions_below_rd(10).unwrap().is_empty(),
            "all at RD 2"
        );
        cat.drop_lost_holder(PeerId(3), 1_000).unwrap();
        let mut below = cat.kept_versions_below_rd(10).unwrap();
        below.sort_by_key(|f| f.key());
        // The newest version of a file on disk is the queue's (read from the file).
        assert_eq!(below, vec![fid('a'), fid('c')]);
        assert_eq!(cat.paths_below_rd().unwrap(), vec![PathBuf::from("/f")]);
        assert_eq!(cat.kept_versions_below_rd(1).unwrap().len(), 1);
        // No copy left: nothing to fetch from.
        cat.drop_lost_holder(PeerId(2), 2_000).unwrap();
        assert!(cat.kept_versions_below_rd(10).unwrap().is_empty());
    }

    #[test]
    fn a_forgotten_version_is_owed_an_ack_by_each_distinct_holder() {
        let dir = tempfile::tempdir().unwrap();
        let cat = Catalog::open(&dir.path().join("c.db")).unwrap();
        let backup = BackupId(1);
        cat.insert_version(&file('a', "/f"), backup).unwrap();
        cat.put_file_chunk(&fid('a'), ChunkNo(0), 10, "h0").unwrap();
        cat.put_file_chunk(&fid('a'), ChunkNo(1), 10, "h1").unwrap();
        cat.add_holders(&fid('a'), ChunkNo(0), &[PeerId(2), PeerId(3)])
            .unwrap();
        cat.add_holders(&fid('a'), ChunkNo(1), &[PeerId(3), PeerId(4)])
            .unwrap();
        cat.insert_file(&file('b', "/g")).unwrap();
        cat.put_file_chunk(&fid('b'), ChunkNo(0), 10, "h0").unwrap();
        cat.add_holder(&fid('b'), ChunkNo(0), PeerId(3)).unwrap();
        // A refused forget owes nothing.
        assert!(!cat
            .forget(&fid('b'), Forget::KeepVersions { keep: 1 }, 500)
            .unwrap());
        assert_eq!(cat.unacked_delete_count().unwrap(), 0);
        assert!(cat.forget(&fid('a'), Forget::UserDelete, 1_000).unwrap());
        assert_eq!(cat.unacked_delete_count().unwrap(), 3);
        assert!(cat.forget(&fid('b'), Forget::UserDelete, 2_000).unwrap());
        assert_eq!(
            cat.unacked_deletes_for(PeerId(3), 10).unwrap(),
            vec![fid('a'), fid('b')],
            "oldest first"
        );
        assert_eq!(
            cat.unacked_deletes_for(PeerId(3), 1).unwrap(),
            vec![fid('a')]
        );
        assert_eq!(
            cat.unacked_deletes_for(PeerId(2), 10).unwrap(),
            vec![fid('a')]
        );
        assert!(cat.unacked_deletes_for(PeerId(5), 10).unwrap().is_empty());
        assert_eq!(report_of(&cat, 3).unwrap().unacked_deletes, 2);
        // DELETED (fileIds compare ignoring case).
        let upper = FileId::parse(&"A".repeat(64)).unwrap();
        assert!(cat.delete_acked(&upper, PeerId(3)).unwrap());
        assert!(!cat.delete_acked(&fid('a'), PeerId(3)).unwrap(), "once");
        assert_eq!(cat.unacked_delete_count().unwrap(), 3);
        // The deadline passed for the acks owed since 1 s (peers 2 and 4, for 'a').
        assert_eq!(cat.expire_delete_acks(1_500).unwrap(), 2);
        assert_eq!(cat.unacked_delete_count().unwrap(), 1);
        // The same content backed up again (the same fileId): its old DELETE is owed no more.
        cat.insert_version(&file('b', "/g"), backup).unwrap();
        assert_eq!(cat.unacked_delete_count().unwrap(), 0);
    }

    #[test]
    fn the_peers_report_names_every_peer_and_what_it_does_for_us() {
        let dir = tempfile::tempdir().unwrap();
        let cat = Catalog::open(&dir.path().join("c.db")).unwrap();
        cat.heard_peers(&[heard(2, "2.0", 100)]).unwrap();
        cat.insert_file(&file('a', "/f")).unwrap();
        for n in 0..3 {
            cat.put_file_chunk(&fid('a'), ChunkNo(n), 10, "h").unwrap();
            cat.add_holder(&fid('a'), ChunkNo(n), PeerId(2)).unwrap();
        }
        cat.add_holder(&fid('a'), ChunkNo(0), PeerId(3)).unwrap();
        // Hosted: peer 5 sent two chunks; a chunk of unknown sender counts for nobody; the
        // holders of hosted chunks (ourselves, 4) hold nothing of ours.
        cat.insert_hosted(&hosted('b', 0, 1_000, 5), &[PeerId(1), PeerId(4)])
            .unwrap();
        cat.insert_hosted(&hosted('b', 1, 24, 5), &[PeerId(1)])
            .unwrap();
        cat.insert_hosted(&hosted('c', 0, 7, 0), &[PeerId(1)])
            .unwrap();
        // Peer 6 held a version since forgotten and has not acknowledged its DELETE.
        cat.insert_file(&file('d', "/g")).unwrap();
        cat.put_file_chunk(&fid('d'), ChunkNo(0), 10, "h").unwrap();
        cat.add_holder(&fid('d'), ChunkNo(0), PeerId(6)).unwrap();
        assert!(cat.forget(&fid('d'), Forget::UserDelete, 9).unwrap());
        let row = |id, protocol: &str, heard, ours, bytes, owed| PeerRow {
            id: PeerId(id),
            protocol: protocol.into(),
            last_heard_ms: heard,
            lost_at_ms: None,
            chunks_of_ours: ours,
            hosted_bytes: bytes,
            unacked_deletes: owed,
        };
        assert_eq!(
            cat.peers_report().unwrap(),
            vec![
                row(2, "2.0", Some(100), 3, 0, 0),
                row(3, "", None, 1, 0, 0),
                row(5, "", None, 0, 1_024, 0),
                row(6, "", None, 0, 0, 1),
            ]
        );
    }

    #[test]
    fn an_older_catalog_gains_the_peer_tables_and_the_hosted_sender() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("c.db");
        {
            let cat = Catalog::open(&path).unwrap();
            cat.insert_hosted(&hosted('b', 0, 100, 0), &[PeerId(1), PeerId(2)])
                .unwrap();
            // As the release before protocol 2.0 left it.
            cat.conn
                .execute_batch(
                    "DROP TABLE peers; DROP TABLE delete_acks; DROP INDEX holders_peer;
                     ALTER TABLE hosted DROP COLUMN sender;",
                )
                .unwrap();
        }
        let cat = Catalog::open(&path).unwrap();
        assert_eq!(
            cat.hosted(&fid('b'), ChunkNo(0)).unwrap().unwrap().sender,
            PeerId(0),
            "unknown"
        );
        cat.insert_hosted(&hosted('b', 1, 50, 2), &[PeerId(1)])
            .unwrap();
        cat.heard_peers(&[heard(2, "1.0", 5)]).unwrap();
        assert_eq!(report_of(&cat, 2).unwrap().hosted_bytes, 50);
        assert_eq!(
            cat.lost_holders(i64::MAX, 1, 0).unwrap(),
            vec![PeerId(1), PeerId(2)]
        );
        let indexed: bool = cat
            .conn
            .query_row(
                "SELECT EXISTS (SELECT 1 FROM sqlite_master WHERE name = 'holders_peer')",
                [],
                |r| r.get(0),
            )
            .unwrap();
        assert!(indexed);
        drop(cat);
        // Opening again is harmless.
        Catalog::open(&path).unwrap();
    }

    #[test]
    fn the_catalog_is_not_group_readable() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("c.db");
        std::fs::write(&path, b"").unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o664)).unwrap();
        let cat = Catalog::open(&path).unwrap();
        cat.set_meta("k", "v").unwrap();
        for name in ["c.db", "c.db-wal", "c.db-shm"] {
            let mode = std::fs::metadata(dir.path().join(name))
                .unwrap()
                .permissions()
                .mode();
            assert_eq!(mode & 0o777, 0o600, "{name}");
        }
    }

    #[tokio::test]
    async fn a_batch_that_cannot_begin_runs_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("c.db");
        let cat = Catalog::open(&path).unwrap();
        cat.conn
            .busy_timeout(std::time::Duration::from_millis(20))
            .unwrap();
        let handle = CatalogHandle::start(cat);
        // Another writer holds the database: BEGIN IMMEDIATE fails. Were the call run anyway, it
        // would let the other writer go and then write in autocommit.
        let other = Connection::open(&path).unwrap();
        other.execute_batch("BEGIN IMMEDIATE").unwrap();
        let r = handle
            .call(move |c| {
                other.execute_batch("COMMIT")?;
                c.insert_file(&file('a', "/f"))
            })
            .await;
        assert!(r.is_err(), "reported failed");
        // The unrun call was dropped with the other connection: its lock is gone.
        let all = handle.call(|c| c.all_files()).await.unwrap();
        assert!(all.is_empty(), "and not written either: {all:?}");
    }

    #[tokio::test]
    async fn a_read_answers_while_the_catalog_thread_is_busy_and_cannot_write() {
        let dir = tempfile::tempdir().unwrap();
        let handle = CatalogHandle::start(Catalog::open(&dir.path().join("c.db")).unwrap());
        handle.call(|c| c.set_meta("k", "v")).await.unwrap();
        // A long call holds the catalog's thread until told to end.
        let (started, is_started) = oneshot::channel();
        let (end, ended) = std_mpsc::channel::<()>();
        let h = handle.clone();
        let busy = tokio::spawn(async move {
            h.call(move |_| {
                started.send(()).unwrap();
                ended.recv().unwrap();
                Ok(())
            })
            .await
        });
        is_started.await.unwrap();
        let read = tokio::time::timeout(
            std::time::Duration::from_secs(5),
            handle.read(|c| c.meta("k")),
        )
        .await
        .expect("a read does not wait for the catalog's thread");
        assert_eq!(read.unwrap().as_deref(), Some("v"));
        let write = handle.read(|c| c.set_meta("k", "w")).await;
        assert!(write.is_err(), "a read's connection is read-only");
        end.send(()).unwrap();
        busy.await.unwrap().unwrap();
        assert_eq!(
            handle.call(|c| c.meta("k")).await.unwrap().as_deref(),
            Some("v")
        );
    }
}
