//! The `snapshots` table: the numbers of our catalog snapshots (one is never used twice), when
//! each was taken and which reached their RD; and the meta keys a recover leaves. What a
//! snapshot file is, and which snapshots are kept, is `store::snapshot`'s (it looks down here).

use super::*;
use crate::protocol::seal::{Slot, SnapshotNo};

/// Meta key: the highest snapshot number a recover found (numbers up to far above it are
/// skipped: the lost computer may have sent some that the recover did not find).
pub(in crate::store) const NO_FLOOR: &str = "snapshot_no_floor";
/// Meta key: set on a reinstalled peer (a new catalog, a master key that existed): no snapshot
/// is taken until `peerstash recover` or `peerstash recover --none`.
pub const WAIT_RECOVER: &str = "snapshots_wait_recover";
/// Meta key: after a recover, nothing expires (`keep_deleted`) until `restore --all` has run,
/// or for this many more ms of the daemon's running time.
pub const EXPIRY_HOLD: &str = "recovered_expiry_hold_ms";
/// How long a recover holds expiry at most, if `restore --all` is not run: 7 days.
pub const EXPIRY_HOLD_MS: i64 = 7 * 86_400_000;
/// Meta key: counts versions that became complete (`files.completed_no`); a snapshot records
/// the count when it is taken (`snapshots.mark`), so the versions it names are known.
pub const COMPLETIONS: &str = "completions";
/// Meta key: after a recover, when the snapshot it installed was taken (unix ms, by the clock
/// of then): what existed then is what `restore --all` brings back (`restore_cutoff_ms`).
pub const RECOVERED_TAKEN: &str = "recovered_snapshot_taken_ms";

/// One snapshot of ours.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SnapshotRow {
    pub file_id: FileId,
    pub slot: SnapshotNo,
    pub at_rd: bool,
    /// When it was taken (unix ms by the clock of then): a label, never an order.
    pub taken_ms: Option<i64>,
}

/// The table's (day, n) of `no`.
pub(in crate::store) fn columns(no: SnapshotNo) -> (i64, i64) {
    match no {
        SnapshotNo::Dated(s) => (i64::from(s.day), i64::from(s.n)),
        SnapshotNo::Numbered(n) => (-1, n as i64),
    }
}

pub(in crate::store) fn from_columns(day: i64, n: i64) -> Option<SnapshotNo> {
    match day {
        -1 => Some(SnapshotNo::Numbered(u64::try_from(n).ok()?)),
        _ => Some(SnapshotNo::Dated(Slot {
            day: u32::try_from(day).ok()?,
            n: u16::try_from(n).ok()?,
        })),
    }
}

/// The first number after a recover that found snapshots up to `floor`: the lost computer may
/// have sent a few more that no probe found (below their RD), so far above it; a power of two,
/// so that a recover's first probes (the powers of two) find it.
pub(in crate::store) fn after_recover(floor: u64) -> u64 {
    floor
        .saturating_add(1024)
        .saturating_mul(2)
        .checked_next_power_of_two()
        .unwrap_or(1 << 63)
}

impl Catalog {
    /// Our snapshots, oldest first.
    pub fn snapshots(&self) -> Result<Vec<SnapshotRow>, StoreError> {
        let mut stmt = self
            .conn
            .prepare_cached("SELECT file_id, day, n, at_rd, taken_ms FROM snapshots")?;
        let rows = stmt.query_map([], |r| {
            Ok((
                r.get::<_, FileId>(0)?,
                r.get::<_, i64>(1)?,
                r.get::<_, i64>(2)?,
                r.get::<_, bool>(3)?,
                r.get::<_, Option<i64>>(4)?,
            ))
        })?;
        let mut out = Vec::new();
        for row in rows {
            let (file_id, day, n, at_rd, taken_ms) = row?;
            let slot = from_columns(day, n)
                .ok_or_else(|| StoreError::Corrupt(format!("snapshot slot {day}:{n}")))?;
            out.push(SnapshotRow {
                file_id,
                slot,
                at_rd,
                taken_ms,
            });
        }
        out.sort_by_key(|r| r.slot);
        Ok(out)
    }

    /// The snapshot `recover` would take: the newest at its RD, else the newest, shown below
    /// its RD (`at_rd` false) when a recover would not find it.
    pub fn newest_snapshot(&self) -> Result<Option<SnapshotRow>, StoreError> {
        Ok(newest_findable(self.snapshots()?))
    }

    /// What `restore --all` takes for "before the loss" (unix ms): while a recover holds expiry
    /// back (until `restore --all` has run), when the snapshot it installed was taken; else
    /// when the newest snapshot was taken. None when no snapshot says when it was taken. (The
    /// daemon of a recovered catalog finds its watched folders empty and marks their files
    /// deleted: after this time, so they are still restored.)
    pub fn restore_cutoff_ms(&self) -> Result<Option<i64>, StoreError> {
        let recovered = match self.meta(EXPIRY_HOLD)? {
            Some(_) => self.meta(RECOVERED_TAKEN)?.and_then(|t| t.parse().ok()),
            None => None,
        };
        if recovered.is_some() {
            return Ok(recovered);
        }
        Ok(self
            .conn
            .prepare_cached("SELECT MAX(taken_ms) FROM snapshots")?
            .query_row([], |r| r.get(0))?)
    }

    /// The number the next snapshot takes: one more than the newest, never one used before nor
    /// one a lost computer may have used (after a recover, `after_recover`).
    pub fn next_snapshot_no(&self) -> Result<u64, StoreError> {
        let top = (self.snapshots()?.iter())
            .filter_map(|r| r.slot.number())
            .max()
            .unwrap_or(0);
        let floor = self.meta(NO_FLOOR)?.and_then(|t| t.parse::<u64>().ok());
        Ok(match floor {
            Some(f) if f >= top => after_recover(f),
            _ => top.saturating_add(1),
        })
    }

    /// No snapshot number up to far above `seen` (the highest a lost computer may have used)
    /// is taken again (`next_snapshot_no`); a floor already higher stays.
    pub fn raise_snapshot_floor(&self, seen: u64) -> Result<(), StoreError> {
        let floor = self.meta(NO_FLOOR)?.and_then(|t| t.parse::<u64>().ok());
        match floor {
            Some(f) if f >= seen => Ok(()),
            _ => self.set_meta(NO_FLOOR, &seen.to_string()),
        }
    }

    /// Whether `file_id` is one of our catalog snapshots.
    pub fn is_snapshot(&self, file_id: &FileId) -> Result<bool, StoreError> {
        Ok(self
            .conn
            .prepare_cached("SELECT EXISTS (SELECT 1 FROM snapshots WHERE file_id = ?1)")?
            .query_row([&file_id], |r| r.get(0))?)
    }

    /// Records that `slot` is taken by `file_id` at `taken_ms` (a label), before anything of it
    /// is sent, with the count of completed versions it names (`COMPLETIONS`).
    pub fn claim_snapshot(
        &self,
        file_id: &FileId,
        slot: SnapshotNo,
        taken_ms: i64,
    ) -> Result<(), StoreError> {
        let (day, n) = columns(slot);
        let mark: i64 = self
            .meta(COMPLETIONS)?
            .and_then(|t| t.parse().ok())
            .unwrap_or(0);
        self.conn
            .prepare_cached(
                "INSERT INTO snapshots (file_id, day, n, taken_ms, mark) VALUES (?1, ?2, ?3, ?4, ?5)",
            )?
            .execute(params![&file_id, day, n, taken_ms, mark])?;
        Ok(())
    }

    /// Gives back a number claimed by a snapshot that failed before anything of it was sent
    /// (its file could not be written: a full disk, or the daemon was killed), so that the
    /// next one takes it: numbers stay without gaps, which a recover's search relies on. Never
    /// once a chunk of it may have been sent (its version row exists; its fileId is then not
    /// used again). Whether it was given back.
    pub fn release_snapshot(&self, file_id: &FileId) -> Result<bool, StoreError> {
        Ok(self
            .conn
            .prepare_cached(
                "DELETE FROM snapshots WHERE file_id = ?1
                 AND NOT EXISTS (SELECT 1 FROM files WHERE file_id = ?1)",
            )?
            .execute([&file_id])?
            == 1)
    }

    /// The snapshots below RD `desired`: those that never reached it, and those that did and
    /// lost a holder since (a peer reclaimed its space, or was found wiped or lost). Oldest
    /// first, as `snapshots` lists them.
    pub fn snapshots_below_rd(&self, desired: u8) -> Result<Vec<SnapshotRow>, StoreError> {
        let mut below = Vec::new();
        for r in self.snapshots()? {
            if !self.snapshot_at_rd_now(&r, desired)? {
                below.push(r);
            }
        }
        Ok(below)
    }

    /// Whether snapshot `r` is at RD `desired` as its holders known now say. A snapshot a
    /// recover installed has no chunk rows here (it was found whole on the peers; what holds
    /// it was not recorded): its flag is all that is known.
    pub fn snapshot_at_rd_now(&self, r: &SnapshotRow, desired: u8) -> Result<bool, StoreError> {
        if !r.at_rd {
            return Ok(false);
        }
        let chunks: i64 = self
            .conn
            .prepare_cached("SELECT COUNT(*) FROM file_chunks WHERE file_id = ?1")?
            .query_row([&r.file_id], |row| row.get(0))?;
        Ok(chunks == 0 || self.min_perceived_rd(&r.file_id)? >= u32::from(desired))
    }

    pub fn set_snapshot_at_rd(&self, file_id: &FileId) -> Result<(), StoreError> {
        self.conn
            .prepare_cached("UPDATE snapshots SET at_rd = 1 WHERE file_id = ?1")?
            .execute([&file_id])?;
        Ok(())
    }

    /// The count of completed versions (`COMPLETIONS`) that a snapshot at its RD names: a
    /// version whose `completed_no` is at most this is in a snapshot a recover finds.
    pub fn snapshotted_mark(&self) -> Result<i64, StoreError> {
        Ok(self
            .conn
            .prepare_cached("SELECT COALESCE(MAX(mark), 0) FROM snapshots WHERE at_rd = 1")?
            .query_row([], |r| r.get(0))?)
    }

    /// Paths of our files with an older version kept while a newer complete one, completed
    /// after `from` (a `COMPLETIONS` count), waits for a snapshot at its RD up to `to` to name
    /// it (`Forget::History`). Snapshots aside.
    pub fn held_paths(&self, from: i64, to: i64) -> Result<Vec<PathBuf>, StoreError> {
        let mut stmt = self.conn.prepare_cached(
            "SELECT DISTINCT g.path FROM files g
             WHERE g.complete = 1 AND COALESCE(g.completed_no, 0) > ?1
               AND COALESCE(g.completed_no, 0) <= ?2
               AND g.file_id NOT IN (SELECT file_id FROM snapshots)
               AND EXISTS (SELECT 1 FROM files f WHERE f.path = g.path AND f.version < g.version)",
        )?;
        let rows = stmt.query_map(params![from, to], |r| r.get::<_, Vec<u8>>(0))?;
        let mut out = Vec::new();
        for row in rows {
            use std::os::unix::ffi::OsStringExt;
            out.push(PathBuf::from(std::ffi::OsString::from_vec(row?)));
        }
        Ok(out)
    }

    /// Whether an older version waits (is kept) for a snapshot at its RD to name a newer one.
    pub fn versions_held(&self) -> Result<bool, StoreError> {
        let mark = self.snapshotted_mark()?;
        Ok(!self.held_paths(mark, i64::MAX)?.is_empty())
    }

    /// Forgets a snapshot a newer one superseded (`superseded`): its version (if it has a row:
    /// one the recover found has none) and its chunks go, with DELETE to the peers. Refuses
    /// anything that is not a snapshot of ours.
    pub fn forget_snapshot(&self, file_id: &FileId, now_ms: i64) -> Result<bool, StoreError> {
        if !self.is_snapshot(file_id)? {
            tracing::error!("refused to delete {file_id}: it is not a catalog snapshot");
            return Ok(false);
        }
        self.atomically(|| {
            self.delete_file(file_id, now_ms)?;
            self.conn
                .prepare_cached("DELETE FROM snapshots WHERE file_id = ?1")?
                .execute([&file_id])?;
            Ok(())
        })?;
        Ok(true)
    }

    /// What changes when our own files do (a version added, finished or forgotten), snapshots
    /// aside: a snapshot is taken when it moved.
    pub fn own_changes(&self) -> Result<String, StoreError> {
        let (n, top, done): (i64, i64, i64) = self
            .conn
            .prepare_cached(
                "SELECT COUNT(*), COALESCE(MAX(rowid), 0), COALESCE(SUM(complete), 0) FROM files
                 WHERE file_id NOT IN (SELECT file_id FROM snapshots)",
            )?
            .query_row([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))?;
        Ok(format!("{n}/{top}/{done}"))
    }

    /// Versions of our own files, snapshots aside.
    pub fn own_versions(&self) -> Result<u64, StoreError> {
        Ok(self
            .conn
            .prepare_cached(
                "SELECT COUNT(*) FROM files WHERE file_id NOT IN (SELECT file_id FROM snapshots)",
            )?
            .query_row([], |r| r.get(0))?)
    }

    /// After a recover: `file_id` (snapshot `slot`) is the snapshot this catalog came from (it
    /// goes once a newer one reached its RD), and no number up to far above `found` (the
    /// highest number the recover saw) is used again. Nothing expires until `restore --all`
    /// ran (`EXPIRY_HOLD`), and snapshots are taken again.
    pub fn adopt_snapshot(
        &self,
        file_id: &FileId,
        slot: SnapshotNo,
        found: u64,
    ) -> Result<(), StoreError> {
        let (day, n) = columns(slot);
        self.atomically(|| {
            self.conn
                .prepare_cached(
                    "INSERT OR REPLACE INTO snapshots (file_id, day, n, at_rd, mark, taken_ms)
                     VALUES (?1, ?2, ?3, 1,
                             COALESCE((SELECT mark FROM snapshots WHERE file_id = ?1), 0),
                             (SELECT taken_ms FROM snapshots WHERE file_id = ?1))",
                )?
                .execute(params![&file_id, day, n])?;
            let taken: Option<i64> = self
                .conn
                .prepare_cached("SELECT taken_ms FROM snapshots WHERE file_id = ?1")?
                .query_row([&file_id], |r| r.get(0))?;
            match taken {
                Some(ms) => self.set_meta(RECOVERED_TAKEN, &ms.to_string())?,
                None => self.delete_meta(RECOVERED_TAKEN)?,
            }
            // The key that opened it was not made here.
            self.conn
                .prepare_cached(
                    "DELETE FROM meta WHERE key IN ('master_key_made', 'snapshots_wait_recover')",
                )?
                .execute([])?;
            // What the lost computer sent after this snapshot is not recorded here: an
            // unfinished encrypted version is never resumed (`Catalog::sealed_version`).
            self.conn
                .prepare_cached("UPDATE files SET no_resume = 1 WHERE complete = 0")?
                .execute([])?;
            self.set_meta(EXPIRY_HOLD, &EXPIRY_HOLD_MS.to_string())?;
            self.set_meta(NO_FLOOR, &found.to_string())
        })
    }
}

/// Of `rows` (oldest first), the newest that a recover finds: the newest at its RD (a dated
/// one only if its day's anchor is at its RD too: a recover finds a day by its anchor); else
/// the newest, with `at_rd` false.
pub fn newest_findable(mut rows: Vec<SnapshotRow>) -> Option<SnapshotRow> {
    let anchor_at_rd = |day: u32| {
        rows.iter()
            .any(|r| r.slot == SnapshotNo::Dated(Slot::anchor(day)) && r.at_rd)
    };
    let findable = |r: &SnapshotRow| match r.slot {
        SnapshotNo::Numbered(_) => r.at_rd,
        SnapshotNo::Dated(s) => r.at_rd && anchor_at_rd(s.day),
    };
    match rows.iter().rposition(findable) {
        Some(i) => Some(rows.swap_remove(i)),
        None => rows.pop().map(|r| SnapshotRow { at_rd: false, ..r }),
    }
}

/// Snapshots newer than the newest one at its RD that are kept while they have not reached it.
const UNFINISHED_KEPT: usize = 3;

/// Of the numbered snapshots `nos`, those a recover needs to find `tip` by its search
/// (`recover::search`): for each k, the newest one at most `tip` whose number is a multiple of
/// 2^k. O(log n) of them.
fn chain(nos: &[u64], tip: u64) -> Vec<u64> {
    (0..64)
        .filter_map(|k| {
            nos.iter()
                .copied()
                .filter(|n| *n <= tip && n.trailing_zeros() >= k)
                .max()
        })
        .collect()
}

/// The snapshots to forget once `rows` are known. Numbered: all but the newest one at its RD,
/// the (at most `UNFINISHED_KEPT`) newest ones after it, and the chains (`chain`) of the newest
/// and of the newest at its RD. Retention goes by number alone: a snapshot taken under a clock
/// set ahead deletes nothing older. Dated ones (taken before an upgrade) all go once a
/// numbered one is at its RD; until then, the newest at its RD, a few newer ones and the
/// anchors of their days.
pub fn superseded(rows: &[SnapshotRow]) -> Vec<FileId> {
    let numbered: Vec<(u64, bool, &FileId)> = (rows.iter())
        .filter_map(|r| r.slot.number().map(|n| (n, r.at_rd, &r.file_id)))
        .collect();
    let nos: Vec<u64> = numbered.iter().map(|(n, ..)| *n).collect();
    let newest_at_rd = numbered
        .iter()
        .filter(|(_, rd, _)| *rd)
        .map(|(n, ..)| *n)
        .max();
    let mut newer: Vec<u64> = (nos.iter().copied())
        .filter(|n| newest_at_rd.is_none_or(|r| *n > r))
        .collect();
    newer.sort_unstable_by(|a, b| b.cmp(a));
    let mut kept: Vec<u64> = newer.into_iter().take(UNFINISHED_KEPT).collect();
    for tip in newest_at_rd.into_iter().chain(nos.iter().copied().max()) {
        kept.push(tip);
        kept.extend(chain(&nos, tip));
    }
    let mut gone: Vec<FileId> = (numbered.iter())
        .filter(|(n, ..)| !kept.contains(n))
        .map(|(.., id)| (*id).clone())
        .collect();
    let dated: Vec<&SnapshotRow> = (rows.iter())
        .filter(|r| matches!(r.slot, SnapshotNo::Dated(_)))
        .collect();
    if newest_at_rd.is_some() {
        gone.extend(dated.iter().map(|r| r.file_id.clone()));
    } else {
        gone.extend(superseded_dated(&dated));
    }
    gone
}

/// Dated snapshots: all but the newest one at its RD, the (at most `UNFINISHED_KEPT`) newest
/// ones after it, and the anchors of those days (a recover finds a day by its anchor).
fn superseded_dated(rows: &[&SnapshotRow]) -> Vec<FileId> {
    let mut sorted: Vec<&SnapshotRow> = rows.to_vec();
    sorted.sort_by_key(|r| std::cmp::Reverse(r.slot));
    let newest_at_rd = sorted.iter().position(|r| r.at_rd);
    let newer = newest_at_rd.unwrap_or(sorted.len());
    let mut kept: Vec<SnapshotNo> = sorted[..newer]
        .iter()
        .take(UNFINISHED_KEPT)
        .map(|r| r.slot)
        .collect();
    if let Some(i) = newest_at_rd {
        kept.push(sorted[i].slot);
    }
    let anchors: Vec<SnapshotNo> = (kept.iter())
        .filter_map(|s| match s {
            SnapshotNo::Dated(d) => Some(SnapshotNo::Dated(Slot::anchor(d.day))),
            SnapshotNo::Numbered(_) => None,
        })
        .collect();
    kept.extend(anchors);
    sorted
        .into_iter()
        .filter(|r| !kept.contains(&r.slot))
        .map(|r| r.file_id.clone())
        .collect()
}

/// Meta keys of the snapshot worker: the own changes (`own_changes`) when the last snapshot was
/// sent, when (unix ms), and its size in bytes.
const LAST_CHANGES: &str = "snapshot_changes";
const LAST_AT: &str = "snapshot_at_ms";
const LAST_BYTES: &str = "snapshot_bytes";
/// Meta key: the completion count (`COMPLETIONS`) up to which the versions a snapshot at its RD
/// names were looked at by their folder's `keep_versions` (`held_since_pruned`).
const PRUNED_UPTO: &str = "pruned_upto";

/// What the snapshot worker looks at to decide whether a snapshot is due
/// (`Catalog::snapshot_look`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SnapshotLook {
    /// Our versions (`own_versions`).
    pub own: u64,
    /// What our versions are now (`own_changes`).
    pub changes: String,
    /// `changes` when the last snapshot was sent; when (unix ms) and its size, as meta text.
    pub last_changes: Option<String>,
    pub last_at: Option<String>,
    pub last_bytes: Option<String>,
    /// Old versions wait for a snapshot at its RD to name their successors (`versions_held`).
    pub held: bool,
    /// A reinstalled peer waits for `peerstash recover` (`WAIT_RECOVER`).
    pub waiting: bool,
}

impl Catalog {
    /// Whether this peer waits for `peerstash recover` before it takes snapshots.
    pub fn waits_for_recover(&self) -> Result<bool, StoreError> {
        Ok(self.meta(WAIT_RECOVER)?.is_some())
    }

    /// The number the next snapshot takes (`next_snapshot_no`) and what our versions are now
    /// (`own_changes`), read together.
    pub fn next_snapshot(&self) -> Result<(u64, String), StoreError> {
        Ok((self.next_snapshot_no()?, self.own_changes()?))
    }

    /// A snapshot was sent: at its RD if `at_rd`; and what it was taken of (`changes`), when
    /// (`now_ms`) and its size are noted for the next look. One transaction.
    pub fn snapshot_sent(
        &self,
        file_id: &FileId,
        at_rd: bool,
        changes: &str,
        now_ms: i64,
        size: u64,
    ) -> Result<(), StoreError> {
        self.atomically(|| {
            if at_rd {
                self.set_snapshot_at_rd(file_id)?;
            }
            self.set_meta(LAST_CHANGES, changes)?;
            self.set_meta(LAST_AT, &now_ms.to_string())?;
            self.set_meta(LAST_BYTES, &size.to_string())
        })
    }

    /// What the snapshot worker looks at (`SnapshotLook`), read together.
    pub fn snapshot_look(&self) -> Result<SnapshotLook, StoreError> {
        Ok(SnapshotLook {
            own: self.own_versions()?,
            changes: self.own_changes()?,
            last_changes: self.meta(LAST_CHANGES)?,
            last_at: self.meta(LAST_AT)?,
            last_bytes: self.meta(LAST_BYTES)?,
            held: self.versions_held()?,
            waiting: self.waits_for_recover()?,
        })
    }

    /// Forgets the snapshots the kept ones supersede (`superseded`), each through
    /// `forget_snapshot`. Returns the slots forgotten (their files here are the caller's). One
    /// transaction.
    pub fn forget_superseded_snapshots(&self, now_ms: i64) -> Result<Vec<SnapshotNo>, StoreError> {
        self.atomically(|| {
            let rows = self.snapshots()?;
            let mut forgotten = Vec::new();
            for id in superseded(&rows) {
                let slot = rows.iter().find(|s| s.file_id == id).map(|s| s.slot);
                if self.forget_snapshot(&id, now_ms)? {
                    forgotten.extend(slot);
                }
            }
            Ok(forgotten)
        })
    }

    /// The paths whose old versions a snapshot at its RD has come to name since they were last
    /// looked at (`held_paths` from `PRUNED_UPTO` to `snapshotted_mark`), and that mark, to be
    /// noted (`note_pruned`) once they were.
    pub fn held_since_pruned(&self) -> Result<(Vec<PathBuf>, i64), StoreError> {
        let from = (self.meta(PRUNED_UPTO)?)
            .and_then(|t| t.parse().ok())
            .unwrap_or(0);
        let to = self.snapshotted_mark()?;
        Ok((self.held_paths(from, to)?, to))
    }

    /// The versions held up to `to` (`held_since_pruned`) were looked at.
    pub fn note_pruned(&self, to: i64) -> Result<(), StoreError> {
        self.set_meta(PRUNED_UPTO, &to.to_string())
    }

    /// For the pacing of the resends: the keys of our snapshots below `desired`, and how many
    /// peers are heard and not lost.
    pub fn resend_situation(&self, desired: u8) -> Result<(Vec<String>, u64), StoreError> {
        let below = self.snapshots_below_rd(desired)?;
        let (heard, lost) = self.peers_heard_lost()?;
        let ids = below.iter().map(|r| r.file_id.key()).collect();
        Ok((ids, heard.saturating_sub(lost)))
    }

    /// What `peerstash recover` looks at first: our versions, the note of the master key made
    /// here (`MASTER_KEY_MADE`), and whether this peer waits for a recover.
    pub fn recover_facts(&self) -> Result<(u64, Option<String>, bool), StoreError> {
        Ok((
            self.own_versions()?,
            self.meta(MASTER_KEY_MADE)?,
            self.waits_for_recover()?,
        ))
    }

    /// `peerstash recover --none`: snapshots are taken from now on, numbered above `highest`
    /// (the highest a search found, if any). Returns whether this peer was waiting. One
    /// transaction.
    pub fn recover_none(&self, highest: Option<u64>) -> Result<bool, StoreError> {
        self.atomically(|| {
            let waited = self.waits_for_recover()?;
            self.delete_meta(WAIT_RECOVER)?;
            self.raise_snapshot_floor(highest.unwrap_or(0))?;
            Ok(waited)
        })
    }

    /// `restore --all` has run: the hold a recover put on expiry is lifted. Returns whether
    /// there was one.
    pub fn lift_expiry_hold(&self) -> Result<bool, StoreError> {
        self.atomically(|| {
            let held = self.meta(EXPIRY_HOLD)?.is_some();
            self.delete_meta(EXPIRY_HOLD)?;
            Ok(held)
        })
    }

    /// Counts `passed_ms` of running time off the hold a recover put on expiry, and lifts it
    /// once used up. None: no hold; Some(still held).
    pub fn count_down_expiry_hold(&self, passed_ms: i64) -> Result<Option<bool>, StoreError> {
        self.atomically(|| {
            let Some(left) = self.meta(EXPIRY_HOLD)?.and_then(|t| t.parse::<i64>().ok()) else {
                return Ok(None);
            };
            let left = left.saturating_sub(passed_ms);
            match left > 0 {
                true => self.set_meta(EXPIRY_HOLD, &left.to_string())?,
                false => self.delete_meta(EXPIRY_HOLD)?,
            }
            Ok(Some(left > 0))
        })
    }
}
