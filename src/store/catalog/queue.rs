//! The `queue` table: paths waiting to be backed up, each with its due time and a generation
//! that tells a worker whether the path was queued again while it was busy.

use super::*;
use crate::clock::unix_ms;

impl Catalog {
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
}
