-- The catalog schema of the releases before binary fileIds (schema 1): a fixture for the
-- migration to schema 2 (`catalog::schema`). Columns added later came by ALTER TABLE.
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
CREATE TABLE IF NOT EXISTS snapshots (
    file_id TEXT PRIMARY KEY,         -- a catalog snapshot of ours (sent, or being sent)
    day INTEGER NOT NULL,             -- SnapshotNo: -1 numbered (n is its number), else its
    n INTEGER NOT NULL,               -- dated slot (day, n); never used twice
    at_rd INTEGER NOT NULL DEFAULT 0, -- every chunk reached the desired RD
    UNIQUE (day, n)
);
