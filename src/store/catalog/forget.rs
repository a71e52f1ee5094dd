//! Forgetting a version of ours: the one rule by which a version is deleted (`Forget`), the
//! `forgotten` table (`ChunkRole::Forgotten`) and `pending_deletes` (the DELETEs owed).

use super::*;

/// Why a version of our own is forgotten (its row and chunk records dropped, DELETE sent to
/// the peers). `Catalog::forget` is the only way a version is deleted, and it enforces:
///
/// **A version, once complete, is deleted only by an explicit policy decision** —
/// the folder's history (`keep`, `keep_versions`: a newer complete version exists), `keep_deleted` (the path is really gone:
/// still marked deleted, for long enough) or `peerstash delete` — **never by an error path of
/// another backup.** A backup that gives up (the file changed while it was read) may forget
/// only a version that is not complete and that this very backup inserted; a version it resumed
/// is left as it was.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Forget {
    /// Not kept by the folder's history (`keep`, `keep_versions`: `history::Keep`): allowed
    /// when a newer complete version of its path exists (for a complete one: that a catalog
    /// snapshot at its RD names).
    History,
    /// The path is still marked gone (the caller checked it again by lstat just before), and
    /// has been absent at least `keep_deleted_ms` while its folder was available, as the daemon
    /// measured it with its monotonic clock (`absent_ms`): not by the wall clock, which jumps.
    DeletedExpired { keep_deleted_ms: i64 },
    /// The peers have no room for a new version: the oldest history goes first
    /// (`Catalog::prune_for_space`), allowed as `History` is (a newer complete version exists,
    /// named by a catalog snapshot at its RD).
    ForSpace,
    /// `peerstash delete`: the user's explicit word.
    UserDelete,
    /// A backup abandoned the version it inserted (the file changed while it was read).
    Abandoned { backup: BackupId },
    /// A backup found no peer with room for some of its chunks: allowed for an unfinished
    /// version (never a complete one, never a catalog snapshot), whose chunks are freed.
    DoesNotFit,
}

/// How long a forgotten version of ours is remembered (`ChunkRole::Forgotten`): 90 days.
pub(super) const FORGOTTEN_KEPT_S: i64 = 90 * 86_400;

impl Catalog {
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
            .query_row([&file_id], |r| r.get(0))?;
        // Complete versions of the same path newer than this one.
        let newer_complete: u32 = self
            .conn
            .prepare_cached(
                "SELECT COUNT(*) FROM files g, files f
             WHERE f.file_id = ?1 AND g.path = f.path AND g.version > f.version AND g.complete = 1",
            )?
            .query_row([&file_id], |r| r.get(0))?;
        let refused = match why {
            Forget::UserDelete => None,
            Forget::History | Forget::ForSpace => {
                let needed = 1;
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
            Forget::DeletedExpired { .. } if self.meta(snapshots::EXPIRY_HOLD)?.is_some() => {
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
                    .query_row([&file_id], |r| r.get(0))?;
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
    pub(super) fn newer_snapshotted(&self, file_id: &FileId) -> Result<u32, StoreError> {
        let mark = self.snapshotted_mark()?;
        Ok(self
            .conn
            .prepare_cached(
                "SELECT COUNT(*) FROM files g, files f
                 WHERE f.file_id = ?1 AND g.path = f.path AND g.version > f.version
                   AND g.complete = 1 AND COALESCE(g.completed_no, 0) <= ?2",
            )?
            .query_row(params![&file_id, mark], |r| r.get(0))?)
    }

    /// Forgets a version of our own (its row, its chunks and their holder sets) and remembers
    /// that the peers must be told, so a crash before the DELETEs went out loses nothing, and
    /// which of them must acknowledge it (every distinct holder of its chunks).
    /// Only through `forget`, which checks that the deletion is allowed.
    pub(super) fn delete_file(&self, file_id: &FileId, now_ms: i64) -> Result<(), StoreError> {
        let key = file_id.digest();
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

    pub fn pending_deletes(&self) -> Result<Vec<FileId>, StoreError> {
        let mut stmt = self
            .conn
            .prepare_cached("SELECT file_id FROM pending_deletes")?;
        let rows = stmt.query_map([], |r| r.get::<_, FileId>(0))?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    pub fn clear_pending_delete(&self, file_id: &FileId) -> Result<(), StoreError> {
        self.conn
            .prepare_cached("DELETE FROM pending_deletes WHERE file_id = ?1")?
            .execute([&file_id])?;
        Ok(())
    }

    // ---- chunks we host -------------------------------------------------------------------
}

/// Meta key: the folders whose history is held, one `HistoryHold` a line.
const HOLDS_KEY: &str = "history_holds";

/// A folder whose history the guard holds (`Catalog::hold_history`): since when, and why.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HistoryHold {
    pub root: PathBuf,
    pub since_ms: i64,
    pub why: String,
}

impl HistoryHold {
    /// "hex-of-path since_ms why".
    fn line(&self) -> String {
        format!(
            "{} {} {}",
            hex(path_key(&self.root)),
            self.since_ms,
            self.why
        )
    }

    fn parse(line: &str) -> Option<HistoryHold> {
        let mut parts = line.splitn(3, ' ');
        let root = PathBuf::from(OsString::from_vec(unhex(parts.next()?)?));
        let since_ms = parts.next()?.parse().ok()?;
        Some(HistoryHold {
            root,
            since_ms,
            why: parts.next().unwrap_or_default().to_owned(),
        })
    }
}

/// Why the versions of one path are forgotten by a folder's policy (`Catalog::forget_by_policy`).
#[derive(Clone, Debug)]
pub enum Policy {
    /// After a new version completed, and as versions age: the complete versions that `keep`
    /// does not keep at their age (at most `cap`, the newest first; the newest always) go, and
    /// unfinished versions older than the newest complete one.
    /// In an encrypted folder (`sealed`), a version in clear older than a complete encrypted
    /// one goes too: the admin asked for no clear copy on the peers.
    /// A version replaced less than `grace_ms` ago stays (the guard's window: `history`).
    History {
        keep: crate::history::Keep,
        cap: u32,
        sealed: bool,
        grace_ms: i64,
    },
    /// The path is gone (checked again just before) and was counted absent at least
    /// `keep_deleted_ms` while its folder was available.
    Expired { keep_deleted_ms: i64 },
}

impl std::fmt::Display for Policy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Policy::History { keep, cap, .. } => {
                write!(f, "history: keep = \"{keep}\", at most {cap}")
            }
            Policy::Expired { .. } => write!(f, "deleted locally for longer than keep_deleted"),
        }
    }
}

impl Policy {
    /// The history a watched folder keeps (`keep`, capped by `keep_versions`).
    pub fn history(watch: &crate::config::WatchConfig) -> Policy {
        Policy::History {
            keep: watch.keep.clone(),
            cap: watch.keep_versions,
            sealed: watch.encrypt,
            grace_ms: watch.guard.map_or(0, |g| g.within.as_millis() as i64),
        }
    }
}

impl Catalog {
    /// When `f` became complete: (running clock, wall clock), in ms.
    fn completed_at(&self, f: &FileRow) -> Result<(Option<i64>, Option<i64>), StoreError> {
        Ok(self
            .conn
            .prepare_cached("SELECT completed_run_ms, completed_ms FROM files WHERE file_id = ?1")?
            .query_row([&f.file_id], |r| Ok((r.get(0)?, r.get(1)?)))
            .optional()?
            .unwrap_or((None, None)))
    }

    /// The folders whose history is held (`hold_history`): nothing below them is forgotten
    /// by a policy.
    pub fn history_holds(&self) -> Result<Vec<HistoryHold>, StoreError> {
        let text = self.meta(HOLDS_KEY)?.unwrap_or_default();
        Ok(text.lines().filter_map(HistoryHold::parse).collect())
    }

    /// The guard tripped on `root`: no version at or below it is forgotten by a policy until
    /// `resume_history`. Returns false if it was held already (the first reason stays).
    pub fn hold_history(&self, root: &Path, since_ms: i64, why: &str) -> Result<bool, StoreError> {
        let mut holds = self.history_holds()?;
        if holds.iter().any(|h| h.root == root) {
            return Ok(false);
        }
        holds.push(HistoryHold {
            root: root.to_path_buf(),
            since_ms,
            why: why.replace('\n', " "),
        });
        self.set_holds(&holds)?;
        Ok(true)
    }

    /// `peerstash history resume DIR` (or the guard's `hold` passed): pruning goes on at and
    /// below `root`. Returns whether it was held.
    pub fn resume_history(&self, root: &Path) -> Result<bool, StoreError> {
        let mut holds = self.history_holds()?;
        let before = holds.len();
        holds.retain(|h| h.root != root);
        self.set_holds(&holds)?;
        Ok(holds.len() != before)
    }

    fn set_holds(&self, holds: &[HistoryHold]) -> Result<(), StoreError> {
        match holds.is_empty() {
            true => self.delete_meta(HOLDS_KEY),
            false => {
                let lines: Vec<String> = holds.iter().map(HistoryHold::line).collect();
                self.set_meta(HOLDS_KEY, &lines.join("\n"))
            }
        }
    }

    /// Forget only by policy: applies a folder's `policy` to the versions of exactly `path`
    /// (never to files below it, should it be a folder now). The policy picks the versions;
    /// each still goes through `forget`, which refuses what its reason does not allow. Returns
    /// how many versions were forgotten. One transaction.
    pub fn forget_by_policy(
        &self,
        path: &Path,
        policy: Policy,
        now_ms: i64,
    ) -> Result<usize, StoreError> {
        if let Some(hold) = (self.history_holds()?.into_iter()).find(|h| path.starts_with(&h.root))
        {
            tracing::debug!(
                "{}: nothing pruned while the history of {} is held ({})",
                path.display(),
                hold.root.display(),
                hold.why
            );
            return Ok(0);
        }
        self.atomically(|| {
            let rows = self.versions_of(path)?; // oldest first
            let doomed: Vec<(FileId, Forget)> = match policy {
                Policy::History {
                    keep,
                    cap,
                    sealed,
                    grace_ms,
                } => {
                    let (now_run, now_wall) = (self.run_clock()?, now_ms);
                    let mut complete: Vec<(FileId, crate::history::Version)> = Vec::new();
                    let mut doomed = Vec::new();
                    let mut sealed_newer = false;
                    for f in rows.into_iter().rev() {
                        if f.complete && sealed && !f.encrypted && sealed_newer {
                            doomed.push(f.file_id); // in clear, an encrypted one newer
                        } else if f.complete {
                            sealed_newer |= f.encrypted;
                            let (run_ms, wall_ms) = self.completed_at(&f)?;
                            let age_ms = crate::history::age_ms(now_run, run_ms, now_wall, wall_ms);
                            complete.push((f.file_id, crate::history::Version { age_ms }));
                        } else if !complete.is_empty() {
                            doomed.push(f.file_id); // superseded, never finished
                        }
                    }
                    let ages: Vec<_> = complete.iter().map(|(_, v)| *v).collect();
                    for i in keep.forget(&ages, cap, grace_ms) {
                        doomed.push(complete[i].0.clone());
                    }
                    doomed.into_iter().map(|id| (id, Forget::History)).collect()
                }
                Policy::Expired { keep_deleted_ms } => rows
                    .into_iter()
                    .map(|f| (f.file_id, Forget::DeletedExpired { keep_deleted_ms }))
                    .collect(),
            };
            let mut forgotten = 0;
            for (id, why) in doomed {
                forgotten += usize::from(self.forget(&id, why, now_ms)?);
            }
            Ok(forgotten)
        })
    }

    /// The paths at or below `root` with more than one version kept: those the history may
    /// prune as their versions age (`Policy::History`).
    pub fn paths_with_history(&self, root: &Path) -> Result<Vec<PathBuf>, StoreError> {
        let (exact, below) = (path_key(root), below_key(root));
        let mut stmt = self.conn.prepare_cached(
            "SELECT path FROM files WHERE path = ?1 OR substr(path, 1, length(?2)) = ?2
             GROUP BY path HAVING COUNT(*) > 1",
        )?;
        let mut rows = stmt.query(params![exact, below])?;
        let mut out = Vec::new();
        while let Some(r) = rows.next()? {
            out.push(path_at(r, 0)?);
        }
        Ok(out)
    }

    /// The peers are full: the oldest versions that are not their file's newest complete one
    /// (nor a catalog snapshot, nor in a folder whose history is held) are forgotten, oldest
    /// first, until about `needed` bytes (times each version's RD) are freed on the peers.
    /// Returns how many versions, and the bytes (times RD) freed. One transaction.
    pub fn prune_for_space(&self, needed: u64, now_ms: i64) -> Result<(usize, u64), StoreError> {
        let held = self.history_holds()?;
        self.atomically(|| {
            let mut stmt = self.conn.prepare_cached(
                "SELECT f.file_id, f.path, f.size, f.desired_rd FROM files f
                 WHERE f.complete = 1 AND f.file_id NOT IN (SELECT file_id FROM snapshots)
                   AND EXISTS (SELECT 1 FROM files g WHERE g.path = f.path AND g.complete = 1
                               AND g.version > f.version)
                 ORDER BY COALESCE(f.completed_ms, 0), f.version LIMIT 1000",
            )?;
            let mut rows = stmt.query([])?;
            let mut candidates = Vec::new();
            while let Some(r) = rows.next()? {
                let size: i64 = r.get(2)?;
                let rd: u8 = r.get(3)?;
                candidates.push((r.get::<_, FileId>(0)?, path_at(r, 1)?, size as u64, rd));
            }
            drop(rows);
            drop(stmt);
            let (mut n, mut freed) = (0usize, 0u64);
            for (id, path, size, rd) in candidates {
                if freed >= needed {
                    break;
                }
                if held.iter().any(|h| path.starts_with(&h.root)) {
                    continue;
                }
                if self.forget(&id, Forget::ForSpace, now_ms)? {
                    n += 1;
                    freed += size.saturating_mul(u64::from(rd.max(1)));
                }
            }
            Ok((n, freed))
        })
    }

    /// How many paths at or below `root` have a version (what the guard's share is of).
    pub fn paths_below(&self, root: &Path) -> Result<u64, StoreError> {
        let (exact, below) = (path_key(root), below_key(root));
        Ok(self
            .conn
            .prepare_cached(
                "SELECT COUNT(DISTINCT path) FROM files
                 WHERE path = ?1 OR substr(path, 1, length(?2)) = ?2",
            )?
            .query_row(params![exact, below], |r| r.get(0))?)
    }

    /// `peerstash delete PATH`: every version of exactly `path` (`versions`) is forgotten, by
    /// the user's word. Returns how many. One transaction.
    pub fn forget_path(&self, path: &Path, now_ms: i64) -> Result<usize, StoreError> {
        self.atomically(|| {
            let mut n = 0;
            for f in self.versions(path)? {
                n += usize::from(self.forget(&f.file_id, Forget::UserDelete, now_ms)?);
            }
            Ok(n)
        })
    }

    /// The DELETEs of `file_ids` were all sent: they are no longer pending.
    pub fn clear_pending_deletes(&self, file_ids: &[FileId]) -> Result<(), StoreError> {
        self.atomically(|| {
            file_ids
                .iter()
                .try_for_each(|f| self.clear_pending_delete(f))
        })
    }
}
