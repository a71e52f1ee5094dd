//! The `files` table: each version of each of our own files (its path, stamp, desired RD,
//! whether complete), and `last_versions`, the version numbers a path has used.

use super::*;
use crate::clock::unix_ms;

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
    /// When it became complete (unix ms, by the wall clock then): what `restore --at` goes by.
    pub completed_ms: Option<i64>,
    /// Its first bytes look like ciphertext or compressed data (`history::looks_random`).
    pub random: bool,
}

pub(super) fn path_key(path: &Path) -> &[u8] {
    path.as_os_str().as_bytes()
}

/// A stored path (bytes; text in catalogs written before paths were bytes).
pub(super) fn path_at(r: &rusqlite::Row<'_>, i: usize) -> rusqlite::Result<PathBuf> {
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

pub(super) const FILE_COLUMNS: &str =
    "file_id, path, version, size, mtime_ns, mode, content_hash, \
     desired_rd, complete, inode, deleted_at, uid, gid, ctime_ns, encrypted, key_fp, completed_ms, random";

pub(super) fn file_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<(FileId, FileRowRaw)> {
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
            completed_ms: r.get(16)?,
            random: r.get(17)?,
        },
    ))
}

pub(super) struct FileRowRaw {
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
    completed_ms: Option<i64>,
    random: bool,
}

pub(super) fn finish_file((id, raw): (FileId, FileRowRaw)) -> Result<FileRow, StoreError> {
    Ok(FileRow {
        file_id: id,
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
        completed_ms: raw.completed_ms,
        random: raw.random,
    })
}

impl Catalog {
    pub fn file(&self, file_id: &FileId) -> Result<Option<FileRow>, StoreError> {
        let sql = format!("SELECT {FILE_COLUMNS} FROM files WHERE file_id = ?1");
        self.conn
            .prepare_cached(&sql)?
            .query_row([&file_id], file_row)
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

    /// The newest version of `row.path` if it holds what `row` would: the same content hash
    /// and size, encrypted alike (under the same key, and resumable if unfinished:
    /// `sealed_version`), and not a catalog snapshot (whose fileId is its slot's). Only a
    /// change of content makes a new version: a file touched, or rewritten with the same bytes,
    /// is its newest version with new times.
    fn same_content_as_newest(&self, row: &FileRow) -> Result<Option<FileRow>, StoreError> {
        let sql = format!(
            "SELECT {FILE_COLUMNS} FROM files
             WHERE path = ?1 AND version = (SELECT MAX(version) FROM files WHERE path = ?1)
               AND content_hash = ?2 AND size = ?3 AND encrypted = ?4
               AND (encrypted = 0 OR ((key_fp IS NULL OR key_fp IS ?5)
                                      AND (complete = 1 OR no_resume = 0)))
               AND file_id NOT IN (SELECT file_id FROM snapshots)"
        );
        self.conn
            .prepare_cached(&sql)?
            .query_row(
                params![
                    path_key(&row.path),
                    row.content_hash,
                    row.size as i64,
                    row.encrypted,
                    row.key_fp
                ],
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
            .execute([&file_id])?;
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
            file_id: Vec<u8>,
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
        let mut counts: std::collections::HashMap<Vec<u8>, (u8, u32, u32)> = (newest.values())
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
            let file_id: Vec<u8> = r.get(0)?;
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
                                key_fp, random)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, 0, ?9, ?10, ?11, ?12, ?13, ?14, ?15)",
            )?
            .execute(params![
                &row.file_id,
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
                row.key_fp,
                row.random
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
            .execute([&row.file_id])?;
        self.conn
            .prepare_cached("DELETE FROM delete_acks WHERE file_id = ?1")?
            .execute([&row.file_id])?;
        // Nor a DELETE still to be sent (a restart or the next forget would send it, and the
        // holders would drop this new version's chunks).
        self.clear_pending_delete(&row.file_id)?;
        self.conn
            .prepare_cached("UPDATE files SET backup_id = ?2 WHERE file_id = ?1")?
            .execute(params![&row.file_id, backup.0])?;
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
                     (SELECT CAST(value AS INTEGER) FROM meta WHERE key = 'completions')),
                 completed_run_ms = COALESCE(completed_run_ms,
                     (SELECT CAST(value AS INTEGER) FROM meta WHERE key = 'run_ms'), 0)
                 WHERE file_id = ?1",
            )?
            .execute(params![&file_id, unix_ms()])?
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
            .execute(params![&file_id, inode as i64, ctime_ns])?;
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
            .execute([&file_id])?)
    }

    pub fn set_file_rd(&self, file_id: &FileId, rd: u8) -> Result<(), StoreError> {
        self.conn
            .prepare_cached("UPDATE files SET desired_rd = ?2 WHERE file_id = ?1")?
            .execute(params![&file_id, rd])?;
        Ok(())
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
        let rows = stmt.query_map([limit as i64], |r| r.get::<_, FileId>(0))?;
        Ok(rows.collect::<Result<_, _>>()?)
    }
}

/// A version begun or resumed (`Catalog::begin_or_resume_version`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Begun {
    pub file_id: FileId,
    pub version: u32,
    /// An existing version is resumed (only its chunks below their RD are sent again).
    pub resumed: bool,
    /// The version resumed was complete already.
    pub was_complete: bool,
    /// The version resumed is the path's newest, which holds the same content: only the file's
    /// times, mode or owner changed (`touch`, a file rewritten identical), which it now has.
    pub retouched: bool,
    /// A new version: whether the path's newest version before it looked like ciphertext
    /// (None: it had none).
    pub previous_random: Option<bool>,
}

impl Catalog {
    /// Resume or insert a version: the same content backed up again is the same version, so
    /// an existing one (for a `sealed` backup, the unfinished version of the same stamp,
    /// `sealed_version`; else the row of `row.file_id`) is resumed under the RD asked now and
    /// is no longer deleted; else `row` is inserted as a new version by `backup`. A version under
    /// another master key is never resumed: its chunks would not open under one key. One
    /// transaction.
    pub fn begin_or_resume_version(
        &self,
        row: &FileRow,
        sealed: bool,
        backup: BackupId,
    ) -> Result<Begun, StoreError> {
        self.atomically(|| {
            let existing = match sealed {
                true => {
                    self.sealed_version(&row.path, row.size, row.mtime_ns, &row.content_hash)?
                }
                false => self.file(&row.file_id)?,
            }
            .filter(|f| f.key_fp.is_none() || f.key_fp == row.key_fp);
            let (existing, retouched) = match existing {
                Some(existing) => (Some(existing), false),
                None => {
                    let same = self.same_content_as_newest(row)?;
                    let retouched = same.is_some();
                    (same, retouched)
                }
            };
            match existing {
                Some(existing) => {
                    self.set_file_rd(&existing.file_id, row.desired_rd)?;
                    self.undelete(&existing.file_id)?;
                    if retouched {
                        self.conn
                            .prepare_cached(
                                "UPDATE files SET mtime_ns = ?2, mode = ?3, uid = ?4, gid = ?5
                                 WHERE file_id = ?1",
                            )?
                            .execute(params![
                                &existing.file_id,
                                row.mtime_ns,
                                row.mode,
                                row.uid,
                                row.gid
                            ])?;
                    }
                    Ok(Begun {
                        file_id: existing.file_id,
                        version: existing.version,
                        resumed: true,
                        was_complete: existing.complete,
                        retouched,
                        previous_random: None,
                    })
                }
                None => {
                    let previous_random = self.latest(&row.path)?.map(|f| f.random);
                    Ok(Begun {
                        version: self.insert_version(row, backup)?,
                        file_id: row.file_id.clone(),
                        resumed: false,
                        was_complete: false,
                        retouched: false,
                        previous_random,
                    })
                }
            }
        })
    }

    /// Every chunk sent: the version becomes complete and, if it did (it was not forgotten
    /// meanwhile), the inode and change time read are noted with it. Returns whether it is
    /// complete. One transaction.
    pub fn complete_version(
        &self,
        file_id: &FileId,
        inode: u64,
        ctime_ns: i64,
    ) -> Result<bool, StoreError> {
        self.atomically(|| {
            let complete = self.set_file_complete(file_id)?;
            if complete {
                self.note_seen(file_id, inode, ctime_ns)?;
            }
            Ok(complete)
        })
    }

    /// The newest version of `path` and the lowest perceived RD of its chunks.
    pub fn latest_with_rd(&self, path: &Path) -> Result<Option<(FileRow, u32)>, StoreError> {
        match self.latest(path)? {
            Some(f) => {
                let min = self.min_perceived_rd(&f.file_id)?;
                Ok(Some((f, min)))
            }
            None => Ok(None),
        }
    }

    /// The versions of `path` (`versions`), only `owner`'s if given, each with the lowest
    /// perceived RD of its chunks.
    pub fn versions_with_rd(
        &self,
        path: &Path,
        owner: Option<u32>,
    ) -> Result<Vec<(FileRow, u32)>, StoreError> {
        (self.versions(path)?.into_iter())
            .filter(|f| owner.is_none_or(|uid| uid == f.uid))
            .map(|f| {
                let min = self.min_perceived_rd(&f.file_id)?;
                Ok((f, min))
            })
            .collect()
    }

    /// What the repair looks at first: the newest version of each path in `refused` (refused
    /// as too big: not queued again, repaired from the peers' copies), then at most `limit`
    /// kept versions below their RD (`kept_versions_below_rd`).
    pub fn versions_to_repair(
        &self,
        refused: &[PathBuf],
        limit: usize,
    ) -> Result<Vec<FileId>, StoreError> {
        let mut versions = Vec::new();
        for path in refused {
            versions.extend(self.latest(path)?.map(|f| f.file_id));
        }
        versions.extend(self.kept_versions_below_rd(limit)?);
        Ok(versions)
    }
}
