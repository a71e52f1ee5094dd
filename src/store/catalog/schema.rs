//! The catalog's schema, and how a catalog made by an older release is brought up to it at
//! open: columns added since (`ADDED_COLUMNS`), paths stored as bytes (schema 1), fileIds stored
//! as their 32 bytes (schema 2). A catalog made by a newer release is refused: its rows would
//! be misread.

use super::*;

/// The schema this release writes (`PRAGMA user_version`). 1: paths as bytes; 2: fileIds as
/// 32-byte blobs (`FileId::digest`) in every table but `hosted.wire_id` (the text as its home
/// peer wrote it, answered back on the wire).
pub(super) const SCHEMA_VERSION: i64 = 2;

/// Every table, as (name, columns): `CREATE TABLE IF NOT EXISTS` makes what a catalog lacks.
/// A fileId column is `FILE_ID` (its 32 bytes).
const TABLES: &[(&str, &str)] = &[
    ("meta", "key TEXT PRIMARY KEY, value TEXT NOT NULL"),
    (
        "files",
        "file_id BLOB NOT NULL PRIMARY KEY CHECK (length(file_id) = 32), -- one version of one of our files
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
    completed_no INTEGER,             -- `snapshots::COMPLETIONS` when it became complete
    completed_run_ms INTEGER,         -- the running clock (`RUN_CLOCK`) when it became complete
    random INTEGER NOT NULL DEFAULT 0, -- its first bytes look like ciphertext (`history::looks_random`)
    UNIQUE (path, version)",
    ),
    (
        "last_versions",
        "path BLOB PRIMARY KEY,            -- the highest version number ever given to a path:
    version INTEGER NOT NULL          -- a forgotten version's number is never reused",
    ),
    (
        "queue",
        "path BLOB PRIMARY KEY,            -- a path (bytes) to look at: back it up, or note that it is gone
    due_at INTEGER NOT NULL,          -- unix ms; later after a failure
    attempts INTEGER NOT NULL DEFAULT 0,
    gen INTEGER NOT NULL DEFAULT 0,   -- bumped when queued again while being worked on
    since INTEGER                     -- unix ms of its first change not yet backed up (max_delay)",
    ),
    (
        "file_chunks",
        "file_id BLOB NOT NULL REFERENCES files(file_id) ON DELETE CASCADE,
    chunk_no INTEGER NOT NULL,
    size INTEGER NOT NULL,
    hash TEXT NOT NULL,
    PRIMARY KEY (file_id, chunk_no)",
    ),
    (
        "hosted",
        "file_id BLOB NOT NULL CHECK (length(file_id) = 32),
    chunk_no INTEGER NOT NULL,
    wire_id TEXT NOT NULL,            -- the fileId exactly as its home peer wrote it
    size INTEGER NOT NULL,
    hash TEXT NOT NULL,
    desired_rd INTEGER NOT NULL,
    sender INTEGER NOT NULL DEFAULT 0, -- the peer whose PUTCHUNK we stored (0: unknown)
    PRIMARY KEY (file_id, chunk_no)",
    ),
    (
        "pending_deletes",
        "file_id BLOB NOT NULL PRIMARY KEY CHECK (length(file_id) = 32) -- forgotten here, its DELETE still to be sent",
    ),
    (
        "forgotten",
        "file_id BLOB NOT NULL PRIMARY KEY CHECK (length(file_id) = 32), -- our own versions forgotten here: never hosted by us
    at INTEGER NOT NULL               -- unix seconds, for pruning",
    ),
    (
        "holders",
        "file_id BLOB NOT NULL CHECK (length(file_id) = 32),
    chunk_no INTEGER NOT NULL,
    peer INTEGER NOT NULL,
    PRIMARY KEY (file_id, chunk_no, peer)",
    ),
    (
        "peers",
        "id INTEGER PRIMARY KEY,           -- a peer heard, or counted lost
    protocol TEXT NOT NULL,           -- the highest version heard from it ('': never heard)
    last_heard INTEGER NOT NULL,      -- unix ms of its latest message heard (0: never heard)
    lost_at INTEGER,                  -- unix ms when it was counted lost; NULL while not lost
    auth_mark INTEGER NOT NULL DEFAULT 0, -- LAN key: the newest AUTH time taken from it (its clock, unix s)
    auth_mark_at INTEGER NOT NULL DEFAULT 0, -- when that was taken (our clock, unix s)
    incarnation TEXT                  -- 2.0: its chunk store's incarnation (`engine::verify`)",
    ),
    (
        "folders",
        "path BLOB PRIMARY KEY,            -- a folder from a watched folder down to a backed-up file
    uid INTEGER NOT NULL,             -- its owner, group, permission bits and mtime when last
    gid INTEGER NOT NULL,             -- seen (lstat through the walk's handles), given back by
    mode INTEGER NOT NULL,            -- `restore --all` to the folders it makes
    mtime_ns INTEGER NOT NULL",
    ),
    (
        "delete_acks",
        "file_id BLOB NOT NULL CHECK (length(file_id) = 32), -- a version of ours forgotten here (its DELETE queued)
    peer INTEGER NOT NULL,            -- a holder of its chunks that has not acknowledged (DELETED)
    since INTEGER NOT NULL,           -- unix ms when the version was forgotten
    PRIMARY KEY (file_id, peer)",
    ),
    (
        "snapshots",
        "file_id BLOB NOT NULL PRIMARY KEY CHECK (length(file_id) = 32), -- a catalog snapshot of ours (sent, or being sent)
    day INTEGER NOT NULL,             -- SnapshotNo: -1 numbered (n is its number), else its
    n INTEGER NOT NULL,               -- dated slot (day, n); never used twice
    at_rd INTEGER NOT NULL DEFAULT 0, -- every chunk reached the desired RD
    taken_ms INTEGER,                 -- when it was taken (unix ms by the clock of then): a label
    mark INTEGER NOT NULL DEFAULT 0,  -- `snapshots::COMPLETIONS` when it was taken
    UNIQUE (day, n)",
    ),
    // Made (and filled from `holders`) by `HOLDER_COUNTS` when a catalog lacks it.
    (
        "holder_counts",
        "file_id BLOB NOT NULL CHECK (length(file_id) = 32),
    chunk_no INTEGER NOT NULL,
    n INTEGER NOT NULL,
    PRIMARY KEY (file_id, chunk_no)",
    ),
];

/// Each chunk's perceived RD, kept by triggers as holders come and go, so that neither an insert
/// nor a report recounts a holder set. Made once, from the holders then known.
const HOLDER_COUNTS: &str = "
INSERT INTO holder_counts (file_id, chunk_no, n)
    SELECT file_id, chunk_no, COUNT(*) FROM holders GROUP BY file_id, chunk_no;";

const HOLDER_TRIGGERS: &str = "
CREATE TRIGGER holder_added AFTER INSERT ON holders BEGIN
    INSERT OR IGNORE INTO holder_counts (file_id, chunk_no, n) VALUES (NEW.file_id, NEW.chunk_no, 0);
    UPDATE holder_counts SET n = n + 1 WHERE file_id = NEW.file_id AND chunk_no = NEW.chunk_no;
END;
CREATE TRIGGER holder_removed AFTER DELETE ON holders BEGIN
    UPDATE holder_counts SET n = n - 1 WHERE file_id = OLD.file_id AND chunk_no = OLD.chunk_no;
    DELETE FROM holder_counts WHERE file_id = OLD.file_id AND chunk_no = OLD.chunk_no AND n <= 0;
END;";

/// Columns added after the first release: (table, name, definition), added to an older catalog
/// at open. (Tables added later need nothing: `TABLES` makes what is missing.)
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
    ("peers", "incarnation", "TEXT"),
    ("files", "completed_no", "INTEGER"),
    ("snapshots", "taken_ms", "INTEGER"),
    ("snapshots", "mark", "INTEGER NOT NULL DEFAULT 0"),
    ("files", "completed_run_ms", "INTEGER"),
    ("files", "random", "INTEGER NOT NULL DEFAULT 0"),
];

/// Indexes. By inode: a file renamed is found by it. By peer: a lost holder is dropped, and the
/// distinct holders are listed, without a full scan. By due time: the queue's workers take the
/// next due paths in a step, not in a sort of the whole queue (100,000 paths after the first
/// scan of a large folder).
const INDEXES: &str = "
CREATE INDEX IF NOT EXISTS files_inode ON files (inode);
CREATE INDEX IF NOT EXISTS holders_peer ON holders (peer);
CREATE INDEX IF NOT EXISTS delete_acks_peer ON delete_acks (peer, since);
CREATE INDEX IF NOT EXISTS queue_due ON queue (due_at);";

/// Makes `conn`'s catalog the current schema: creates what it lacks and migrates what an older
/// release wrote, each step in one transaction (a crash leaves it before or after the step).
/// Err if a newer release made it.
pub(super) fn bring_up(conn: &Connection, path: &Path) -> Result<(), StoreError> {
    let version: i64 = conn.pragma_query_value(None, "user_version", |r| r.get(0))?;
    if version > SCHEMA_VERSION {
        return Err(StoreError::Corrupt(format!(
            "{} was written by a newer peerstash (catalog schema {version}; this release reads \
             up to {SCHEMA_VERSION}): install that release again",
            path.display()
        )));
    }
    let fresh: bool = conn.query_row("SELECT COUNT(*) = 0 FROM sqlite_master", [], |r| r.get(0))?;
    let counted = table_exists(conn, "holder_counts")?;
    let mut create = String::from("BEGIN;");
    for (table, columns) in TABLES {
        create.push_str(&format!(
            "CREATE TABLE IF NOT EXISTS {table} (\n{columns}\n);"
        ));
    }
    if !counted {
        create.push_str(HOLDER_COUNTS);
        create.push_str(HOLDER_TRIGGERS);
    }
    create.push_str("COMMIT;");
    conn.execute_batch(&create)?;
    if fresh {
        conn.execute_batch(&format!(
            "BEGIN; {INDEXES} PRAGMA user_version = {SCHEMA_VERSION}; COMMIT;"
        ))?;
        return Ok(());
    }
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
    add_columns(conn)?;
    if version < 2 {
        binary_file_ids(conn, path)?;
    }
    conn.execute_batch(INDEXES)?;
    Ok(())
}

fn table_exists(conn: &Connection, table: &str) -> Result<bool, StoreError> {
    Ok(conn.query_row(
        "SELECT EXISTS (SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = ?1)",
        [table],
        |r| r.get(0),
    )?)
}

fn column_names(conn: &Connection, table: &str) -> Result<Vec<String>, StoreError> {
    Ok(conn
        .prepare(&format!("SELECT name FROM pragma_table_info('{table}')"))?
        .query_map([], |r| r.get(0))?
        .collect::<Result<_, _>>()?)
}

/// Adds the columns of `ADDED_COLUMNS` that an older catalog lacks (idempotent).
fn add_columns(conn: &Connection) -> Result<(), StoreError> {
    for (table, name, definition) in ADDED_COLUMNS {
        if !column_names(conn, table)?.iter().any(|h| h == name) {
            conn.execute_batch(&format!(
                "ALTER TABLE {table} ADD COLUMN {name} {definition}"
            ))?;
        }
    }
    Ok(())
}

/// Schema 1 -> 2: every table with a fileId column is made again with the column as 32 bytes
/// (the hex text an older release wrote, in either case, becomes its bytes), in one
/// transaction: a crash, a full disk or a value that is not a fileId leaves the catalog as it
/// was, and the daemon does not start. It rewrites the whole catalog once (minutes for millions
/// of chunks on a slow disk), logged before and after.
fn binary_file_ids(conn: &Connection, path: &Path) -> Result<(), StoreError> {
    let rows: i64 = conn.query_row(
        "SELECT (SELECT COUNT(*) FROM files) + (SELECT COUNT(*) FROM file_chunks)
              + (SELECT COUNT(*) FROM hosted) + (SELECT COUNT(*) FROM holders)",
        [],
        |r| r.get(0),
    )?;
    tracing::info!(
        "catalog {}: storing fileIds as bytes (once, after an upgrade; {rows} rows)",
        path.display()
    );
    // Tables are dropped and made again: the foreign key from file_chunks to files must not
    // cascade meanwhile. Off only outside a transaction.
    conn.pragma_update(None, "foreign_keys", "OFF")?;
    let step = || -> Result<(), StoreError> {
        conn.execute_batch(
            "BEGIN IMMEDIATE;
             DROP TRIGGER IF EXISTS holder_added;
             DROP TRIGGER IF EXISTS holder_removed;",
        )?;
        for (table, columns) in TABLES.iter().filter(|(_, c)| c.contains("file_id BLOB")) {
            let new = format!("{table}_binary_ids");
            conn.execute_batch(&format!("CREATE TABLE {new} (\n{columns}\n)"))?;
            let old = column_names(conn, table)?;
            let kept: Vec<String> = (column_names(conn, &new)?.into_iter())
                .filter(|c| old.contains(c))
                .collect();
            let values: Vec<String> = (kept.iter())
                .map(|c| match c.as_str() {
                    "file_id" => "CASE typeof(file_id) WHEN 'text' THEN unhex(file_id) \
                                  ELSE file_id END"
                        .to_owned(),
                    _ => c.clone(),
                })
                .collect();
            conn.execute_batch(&format!(
                "INSERT INTO {new} ({}) SELECT {} FROM {table};
                 DROP TABLE {table};
                 ALTER TABLE {new} RENAME TO {table};",
                kept.join(", "),
                values.join(", "),
            ))?;
        }
        conn.execute_batch(&format!(
            "{HOLDER_TRIGGERS} PRAGMA user_version = 2; COMMIT;"
        ))?;
        Ok(())
    };
    let done = step();
    if done.is_err() {
        let _ = conn.execute_batch("ROLLBACK");
    }
    conn.pragma_update(None, "foreign_keys", "ON")?;
    done.map_err(|e| match e {
        StoreError::Sqlite(e) => StoreError::batch(
            &format!(
                "cannot store the fileIds of {} as bytes (it is left as it was)",
                path.display()
            ),
            &e,
        ),
        e => e,
    })?;
    // The old tables' pages are free now: given back to the disk (a copy of the catalog is
    // written meanwhile; if there is no room for it, the free pages are reused as it grows).
    if let Err(e) = conn.execute_batch("VACUUM") {
        tracing::warn!(
            "catalog {}: not compacted after the migration: {e}",
            path.display()
        );
    }
    conn.query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |_| Ok(()))?;
    tracing::info!("catalog {}: fileIds stored as bytes", path.display());
    Ok(())
}
