//! The `folders` table (folders as last seen, given back at restore) and the deleted-path
//! marks of `files` (when a local file was found gone, how long it has been absent).

use super::*;

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

/// A path whose local file was found gone (`Catalog::deleted_paths`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DeletedPath {
    pub path: PathBuf,
    /// Unix seconds when it was found gone: shown to users, never used for expiry.
    pub deleted_at: i64,
    /// How long it has been counted absent while its folder was available.
    pub absent_ms: i64,
}

/// The key of every path below the folder `path` starts with this.
pub(super) fn below_key(path: &Path) -> Vec<u8> {
    let mut key = path_key(path).to_vec();
    while key.last() == Some(&b'/') {
        key.pop();
    }
    key.push(b'/');
    key
}

/// The first key after every key that starts with `below` (which ends with `/`): `/` + 1.
pub(super) fn past_key(below: &[u8]) -> Vec<u8> {
    let mut key = below.to_vec();
    if let Some(last) = key.last_mut() {
        *last += 1;
    }
    key
}

impl Catalog {
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
    pub(super) fn forget_empty_folders(&self, path: &Path) -> Result<(), StoreError> {
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
}

impl Catalog {
    /// The folders ever watched (`watched_folders`); with `owner`, only those holding a file of
    /// theirs.
    pub fn watched_folders_of(&self, owner: Option<u32>) -> Result<Vec<PathBuf>, StoreError> {
        let mut kept = Vec::new();
        for f in self.watched_folders()? {
            let mine = match owner {
                None => true,
                Some(uid) => self.owns_any_under(&f, uid)?,
            };
            if mine {
                kept.push(f);
            }
        }
        Ok(kept)
    }

    /// What a restore of the folders below `path` needs: those folders (with `owner`, only those
    /// holding a file of theirs) and the time a recovered snapshot cuts the restore at
    /// (`restore_cutoff_ms`).
    pub fn folders_for_restore(
        &self,
        path: &Path,
        owner: Option<u32>,
    ) -> Result<(Vec<FolderRow>, Option<i64>), StoreError> {
        let mut folders = Vec::new();
        for f in self.folders_below(path)? {
            if let Some(uid) = owner {
                if !self.owns_any_under(&f.path, uid)? {
                    continue;
                }
            }
            folders.push(f);
        }
        Ok((folders, self.restore_cutoff_ms()?))
    }

    /// Whether a watched folder is the one backed up: the device recorded under `dev_key` and,
    /// unless it is `dev`, up to `sample` live paths under `root` to look for.
    pub fn recorded_dev_or_sample(
        &self,
        dev_key: &str,
        dev: u64,
        root: &Path,
        sample: usize,
    ) -> Result<(Option<u64>, Vec<PathBuf>), StoreError> {
        let recorded = self.meta(dev_key)?.and_then(|v| v.parse::<u64>().ok());
        if recorded == Some(dev) {
            return Ok((recorded, Vec::new()));
        }
        Ok((recorded, self.some_live_paths_under(root, sample)?))
    }
}
