//! Catalog snapshots: the catalog survives the loss of its computer. A snapshot is a copy of
//! what the catalog knows of our own files (not the chunks we host, nor the queue), written as
//! one file (`HEADER_LEN` bytes of header, then an SQLite database) and backed up encrypted
//! under a fileId derived from the peer id, the master key and its number alone
//! (`MasterKey::snapshot_no_file_id`), so that `peerstash recover` on a reinstalled computer
//! finds it with nothing but its config and key. The `snapshots` table lists the numbers used
//! (one is never used twice: the same key and nonce must never seal other bytes), when each was
//! taken (a label only) and which reached their RD. Which are kept (`superseded`) lets a recover
//! find the newest in O(log n) probes without a clock.

use std::path::{Path, PathBuf};

use rusqlite::{params, Connection, OptionalExtension};
use sha2::{Digest, Sha256};

use super::catalog::{Catalog, StoreError};
use crate::protocol::seal::{Slot, SnapshotNo};
use crate::protocol::FileId;

/// The first bytes of a snapshot file.
pub const MAGIC: &[u8; 8] = b"PSCATLG1";
/// Magic, the database's length (u64 big-endian), its SHA-256.
pub const HEADER_LEN: usize = 48;
/// Where `peerstash recover` leaves the catalog it found, installed at the next start.
pub const RECOVERED: &str = "catalog.recovered";
/// The catalog a recovered one replaced, kept beside it.
pub const REPLACED: &str = "catalog.db.before-recover";
/// Snapshots newer than the newest one at its RD that are kept while they have not reached it.
const UNFINISHED_KEPT: usize = 3;
/// Meta key: the highest snapshot number a recover found (numbers up to far above it are
/// skipped: the lost computer may have sent some that the recover did not find).
const NO_FLOOR: &str = "snapshot_no_floor";
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

/// Columns `taken_ms` and `mark` are added by `catalog::ADDED_COLUMNS`.
pub(super) const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS snapshots (
    file_id TEXT PRIMARY KEY,         -- a catalog snapshot of ours (sent, or being sent)
    day INTEGER NOT NULL,             -- SnapshotNo: -1 numbered (n is its number), else its
    n INTEGER NOT NULL,               -- dated slot (day, n); never used twice
    at_rd INTEGER NOT NULL DEFAULT 0, -- every chunk reached the desired RD
    UNIQUE (day, n)
);
";

/// One snapshot of ours.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SnapshotRow {
    pub file_id: FileId,
    pub slot: SnapshotNo,
    pub at_rd: bool,
    /// When it was taken (unix ms by the clock of then): a label, never an order.
    pub taken_ms: Option<i64>,
}

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
    if &h[..8] != MAGIC {
        return None;
    }
    let len = u64::from_be_bytes(h[8..16].try_into().ok()?);
    Some((len, h[16..].try_into().ok()?))
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

/// The table's (day, n) of `no`.
fn columns(no: SnapshotNo) -> (i64, i64) {
    match no {
        SnapshotNo::Dated(s) => (i64::from(s.day), i64::from(s.n)),
        SnapshotNo::Numbered(n) => (-1, n as i64),
    }
}

fn from_columns(day: i64, n: i64) -> Option<SnapshotNo> {
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
fn after_recover(floor: u64) -> u64 {
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
                r.get::<_, String>(0)?,
                r.get::<_, i64>(1)?,
                r.get::<_, i64>(2)?,
                r.get::<_, bool>(3)?,
                r.get::<_, Option<i64>>(4)?,
            ))
        })?;
        let mut out = Vec::new();
        for row in rows {
            let (id, day, n, at_rd, taken_ms) = row?;
            let file_id = FileId::parse(&id)
                .map_err(|_| StoreError::Corrupt(format!("snapshot fileId {id:?}")))?;
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
            .query_row([file_id.key()], |r| r.get(0))?)
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
            .execute(params![file_id.key(), day, n, taken_ms, mark])?;
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
            .execute([file_id.key()])?
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
            .query_row([r.file_id.key()], |row| row.get(0))?;
        Ok(chunks == 0 || self.min_perceived_rd(&r.file_id)? >= u32::from(desired))
    }

    pub fn set_snapshot_at_rd(&self, file_id: &FileId) -> Result<(), StoreError> {
        self.conn
            .prepare_cached("UPDATE snapshots SET at_rd = 1 WHERE file_id = ?1")?
            .execute([file_id.key()])?;
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
    /// it (`Forget::KeepVersions`). Snapshots aside.
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
                .execute([file_id.key()])?;
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
                .execute(params![file_id.key(), day, n])?;
            let taken: Option<i64> = self
                .conn
                .prepare_cached("SELECT taken_ms FROM snapshots WHERE file_id = ?1")?
                .query_row([file_id.key()], |r| r.get(0))?;
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
    let (len, hash) = parse_header(&head).ok_or("no snapshot header")?;
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
    if db.exists() {
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
    let (len, hash) = parse_header(header_bytes).ok_or("no snapshot header")?;
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

#[cfg(test)]
mod tests {
    use super::*;

    fn row(day: u32, n: u16, at_rd: bool) -> SnapshotRow {
        SnapshotRow {
            file_id: FileId::from_digest(&[(day as u8).wrapping_mul(16) ^ n as u8; 32]),
            slot: SnapshotNo::Dated(Slot { day, n }),
            at_rd,
            taken_ms: None,
        }
    }

    fn numbered(n: u64, at_rd: bool) -> SnapshotRow {
        let mut digest = [0xEE; 32];
        digest[..8].copy_from_slice(&n.to_be_bytes());
        SnapshotRow {
            file_id: FileId::from_digest(&digest),
            slot: SnapshotNo::Numbered(n),
            at_rd,
            taken_ms: None,
        }
    }

    fn kept(rows: &[SnapshotRow]) -> Vec<SnapshotNo> {
        let gone = superseded(rows);
        let mut k: Vec<SnapshotNo> = (rows.iter())
            .filter(|r| !gone.contains(&r.file_id))
            .map(|r| r.slot)
            .collect();
        k.sort();
        k
    }

    #[test]
    fn dated_ones_keep_the_newest_at_rd_its_anchor_and_a_few_newer_ones() {
        let s = |day, n| SnapshotNo::Dated(Slot { day, n });
        // Day 10: anchor, 5, 9 (at RD); day 11: anchor (not yet at RD).
        let rows = [
            row(9, 0, true),
            row(10, 0, true),
            row(10, 5, true),
            row(10, 9, true),
            row(11, 0, false),
        ];
        assert_eq!(kept(&rows), vec![s(10, 0), s(10, 9), s(11, 0)]);
        // Once day 11's anchor is at RD, day 10 goes.
        let rows = [row(10, 0, true), row(10, 9, true), row(11, 0, true)];
        assert_eq!(kept(&rows), vec![s(11, 0)]);
        // None at RD (no peer to hold them): the three newest and their anchors.
        let rows: Vec<SnapshotRow> = (0..6).map(|n| row(12, n, false)).collect();
        assert_eq!(kept(&rows), vec![s(12, 0), s(12, 3), s(12, 4), s(12, 5)]);
        assert!(superseded(&[]).is_empty());
        // A numbered one below its RD deletes none of them; at its RD, all.
        let mut rows = vec![row(10, 0, true), row(10, 9, true), numbered(1, false)];
        assert_eq!(kept(&rows).len(), 3);
        rows[2].at_rd = true;
        assert_eq!(kept(&rows), vec![SnapshotNo::Numbered(1)]);
    }

    /// Issue 24, case 6: snapshots are taken one after another (each kept set as `superseded`
    /// leaves it), and at every step a recover's search (`search_start`, `search_round`),
    /// asking only for what is kept, finds the newest, in O(log n) rounds; O(log n) are kept.
    /// After a recover the numbers jump (`after_recover`) and the search still finds the newest.
    #[test]
    fn the_newest_numbered_snapshot_is_found_in_log_n_rounds_among_log_n_kept() {
        fn search(kept: &[u64]) -> (Option<u64>, usize) {
            let hit = |probes: Vec<u64>| probes.into_iter().filter(|p| kept.contains(p)).max();
            let Some(mut base) = hit(search_start()) else {
                return (None, 1);
            };
            let (mut bits, mut rounds) = (base.trailing_zeros(), 1);
            while bits > 0 {
                let (probes, left) = search_round(base, bits);
                base = hit(probes).unwrap_or(base);
                (bits, rounds) = (left, rounds + 1);
            }
            (Some(base), rounds)
        }
        let mut rows: Vec<SnapshotRow> = Vec::new();
        let mut next = 1u64;
        for step in 0..1500u64 {
            if step == 700 {
                next = after_recover(next - 1); // a recover that found the newest
            }
            rows.push(numbered(next, true));
            let gone = superseded(&rows);
            rows.retain(|r| !gone.contains(&r.file_id));
            let nos: Vec<u64> = (rows.iter())
                .filter_map(|r| match r.slot {
                    SnapshotNo::Numbered(n) => Some(n),
                    SnapshotNo::Dated(_) => None,
                })
                .collect();
            let (found, rounds) = search(&nos);
            assert_eq!(found, Some(next), "step {step}, kept {nos:?}");
            let log = 64 - next.leading_zeros() as usize;
            assert!(rounds <= 1 + log.div_ceil(6), "{rounds} rounds for {next}");
            assert!(nos.len() <= log + 2, "{} kept for {next}", nos.len());
            next += 1;
        }
        assert_eq!(search(&[]), (None, 1));
        // The newest below its RD: the newest at RD, its chain and the newer ones stay.
        let rows: Vec<SnapshotRow> = (1..=20).map(|n| numbered(n, n <= 13)).collect();
        let k = kept(&rows);
        for n in [13, 12, 8, 20, 19, 18, 16] {
            assert!(k.contains(&SnapshotNo::Numbered(n)), "{n} kept: {k:?}");
        }
    }

    /// Issue 24, case 6: the numbers come from the catalog alone: one more each time, never one
    /// used before, far above what a recover found; no clock is read.
    #[test]
    fn restore_all_takes_the_installed_snapshots_time_until_it_ran_then_the_newest() {
        let dir = tempfile::tempdir().unwrap();
        let cat = Catalog::open(&dir.path().join("c.db")).unwrap();
        assert_eq!(cat.restore_cutoff_ms().unwrap(), None);
        let (one, two) = (FileId::from_digest(&[1; 32]), FileId::from_digest(&[2; 32]));
        cat.claim_snapshot(&one, SnapshotNo::Numbered(1), 5_000)
            .unwrap();
        cat.claim_snapshot(&two, SnapshotNo::Numbered(2), 9_000)
            .unwrap();
        assert_eq!(cat.restore_cutoff_ms().unwrap(), Some(9_000));
        // Recovered from snapshot 1 (its own row, as it carries it): its time is kept, and is
        // the loss's until restore --all has run, whatever is taken meanwhile.
        cat.adopt_snapshot(&one, SnapshotNo::Numbered(1), 2)
            .unwrap();
        assert_eq!(cat.snapshots().unwrap()[0].taken_ms, Some(5_000));
        let later = FileId::from_digest(&[3; 32]);
        cat.claim_snapshot(&later, SnapshotNo::Numbered(4096), 20_000)
            .unwrap();
        assert_eq!(cat.restore_cutoff_ms().unwrap(), Some(5_000));
        cat.delete_meta(EXPIRY_HOLD).unwrap();
        assert_eq!(cat.restore_cutoff_ms().unwrap(), Some(20_000));
    }

    #[test]
    fn a_snapshot_counts_at_its_rd_only_while_its_holders_are_known_to_hold_it() {
        use crate::protocol::{ChunkNo, PeerId};
        let dir = tempfile::tempdir().unwrap();
        let cat = Catalog::open(&dir.path().join("c.db")).unwrap();
        let one = numbered(1, false).file_id;
        cat.claim_snapshot(&one, SnapshotNo::Numbered(1), 5_000)
            .unwrap();
        let now = |cat: &Catalog| {
            let r = cat.snapshots().unwrap().pop().unwrap();
            cat.snapshot_at_rd_now(&r, 2).unwrap()
        };
        assert!(!now(&cat), "never reached its RD");
        // Installed by a recover: found whole on the peers, no chunk rows here.
        cat.set_snapshot_at_rd(&one).unwrap();
        assert!(now(&cat));
        assert!(cat.snapshots_below_rd(2).unwrap().is_empty());
        // Sent from here: its chunk rows and their holders decide.
        let version = crate::store::FileRow {
            file_id: one.clone(),
            path: "/var/lib/peerstash/snapshots/1".into(),
            version: 0,
            size: 128_000,
            mtime_ns: 1,
            mode: 0o600,
            content_hash: "h".into(),
            desired_rd: 2,
            complete: true,
            inode: 0,
            uid: 0,
            gid: 0,
            deleted_at: None,
            ctime_ns: 0,
            encrypted: true,
            key_fp: None,
        };
        cat.insert_version(&version, crate::store::catalog::BackupId::new())
            .unwrap();
        for c in 0..2 {
            cat.record_file_chunk(&one, ChunkNo(c), 64_000, "h")
                .unwrap();
            cat.add_holders(&one, ChunkNo(c), &[PeerId(2), PeerId(3)])
                .unwrap();
        }
        assert!(now(&cat));
        // A holder reclaimed one chunk (REMOVED): below its RD, sent again.
        cat.remove_holder(&one, ChunkNo(1), PeerId(3)).unwrap();
        assert!(!now(&cat));
        assert_eq!(cat.snapshots_below_rd(2).unwrap().len(), 1);
    }

    #[test]
    fn numbers_go_up_by_one_never_repeat_and_jump_after_a_recover() {
        let dir = tempfile::tempdir().unwrap();
        let cat = Catalog::open(&dir.path().join("c.db")).unwrap();
        assert_eq!(cat.next_snapshot_no().unwrap(), 1);
        // A dated one of before the upgrade: numbers start at 1 all the same.
        cat.claim_snapshot(
            &FileId::from_digest(&[9; 32]),
            SnapshotNo::Dated(Slot::anchor(3)),
            0,
        )
        .unwrap();
        assert_eq!(cat.next_snapshot_no().unwrap(), 1);
        let one = FileId::from_digest(&[1; 32]);
        cat.claim_snapshot(&one, SnapshotNo::Numbered(1), 5)
            .unwrap();
        assert!(cat
            .claim_snapshot(&FileId::from_digest(&[2; 32]), SnapshotNo::Numbered(1), 6)
            .is_err());
        assert_eq!(cat.next_snapshot_no().unwrap(), 2);
        // The time is a label: a snapshot dated a year ahead changes nothing of the order.
        let two = FileId::from_digest(&[2; 32]);
        cat.claim_snapshot(&two, SnapshotNo::Numbered(2), i64::MAX / 2)
            .unwrap();
        assert_eq!(cat.next_snapshot_no().unwrap(), 3);
        assert_eq!(cat.snapshots().unwrap()[2].taken_ms, Some(i64::MAX / 2));
        // Given back before anything was sent: taken again.
        assert!(cat.release_snapshot(&two).unwrap());
        assert_eq!(cat.next_snapshot_no().unwrap(), 2);
        // A recover that saw numbers up to 40: a power of two far above.
        cat.adopt_snapshot(&FileId::from_digest(&[4; 32]), SnapshotNo::Numbered(37), 40)
            .unwrap();
        let jumped = cat.next_snapshot_no().unwrap();
        assert_eq!(jumped, 4096);
        cat.claim_snapshot(
            &FileId::from_digest(&[5; 32]),
            SnapshotNo::Numbered(jumped),
            7,
        )
        .unwrap();
        assert_eq!(cat.next_snapshot_no().unwrap(), jumped + 1);
        assert_eq!(
            cat.meta(EXPIRY_HOLD).unwrap(),
            Some(EXPIRY_HOLD_MS.to_string())
        );
    }

    /// Issue 24, case 2: with keep_versions = 1, version 1 goes only once a snapshot at its RD,
    /// claimed after version 2 completed, names version 2.
    #[test]
    fn an_old_version_goes_only_once_a_snapshot_at_its_rd_names_its_successor() {
        use crate::store::catalog::Forget;
        let dir = tempfile::tempdir().unwrap();
        let cat = Catalog::open(&dir.path().join("c.db")).unwrap();
        let (v1, v2) = (FileId::from_digest(&[1; 32]), FileId::from_digest(&[2; 32]));
        for (id, version) in [(&v1, 1), (&v2, 2)] {
            cat.conn
                .execute(
                    "INSERT INTO files (file_id, path, version, size, mtime_ns, mode, content_hash, desired_rd)
                     VALUES (?1, X'2F66', ?2, 3, 0, 420, 'h', 2)",
                    params![id.key(), version],
                )
                .unwrap();
        }
        let keep = Forget::KeepVersions { keep: 1 };
        cat.set_file_complete(&v1).unwrap();
        let early = FileId::from_digest(&[7; 32]);
        cat.claim_snapshot(&early, SnapshotNo::Numbered(1), 0)
            .unwrap();
        cat.set_snapshot_at_rd(&early).unwrap();
        cat.set_file_complete(&v2).unwrap();
        assert!(cat.versions_held().unwrap());
        assert!(!cat.forget(&v1, keep, 0).unwrap(), "no snapshot names v2");
        let named = FileId::from_digest(&[8; 32]);
        cat.claim_snapshot(&named, SnapshotNo::Numbered(2), 0)
            .unwrap();
        assert!(!cat.forget(&v1, keep, 0).unwrap(), "not at its RD yet");
        assert_eq!(
            cat.held_paths(0, cat.snapshotted_mark().unwrap())
                .unwrap()
                .len(),
            0
        );
        cat.set_snapshot_at_rd(&named).unwrap();
        assert!(!cat.versions_held().unwrap());
        assert_eq!(
            cat.held_paths(1, cat.snapshotted_mark().unwrap()).unwrap(),
            vec![PathBuf::from("/f")]
        );
        assert!(cat.forget(&v1, keep, 0).unwrap());
    }

    #[test]
    fn a_snapshot_carries_our_files_and_not_what_we_host_and_installs_over_a_new_catalog() {
        let dir = tempfile::tempdir().unwrap();
        let live = dir.path().join("live.db");
        let cat = Catalog::open(&live).unwrap();
        cat.set_meta("k", "v").unwrap();
        cat.conn
            .execute_batch(
                "INSERT INTO files (file_id, path, version, size, mtime_ns, mode, content_hash, desired_rd)
                 VALUES ('aa', X'2F77', 1, 3, 0, 420, 'h', 2);
                 INSERT INTO holders VALUES ('aa', 0, 7);
                 INSERT INTO hosted (file_id, chunk_no, wire_id, size, hash, desired_rd)
                 VALUES ('bb', 0, 'BB', 1, 'h', 1);
                 INSERT INTO queue (path, due_at) VALUES (X'2F78', 0);",
            )
            .unwrap();
        cat.note_folders(&[crate::store::catalog::FolderRow {
            path: "/w".into(),
            uid: 1234,
            gid: 99,
            mode: 0o750,
            mtime_ns: 5,
        }])
        .unwrap();
        let copy = dir.path().join("copy.db");
        write_database(&live, &copy).unwrap();
        let snap = Catalog::open(&copy).unwrap();
        let count = |c: &Catalog, t: &str| -> i64 {
            c.conn
                .query_row(&format!("SELECT COUNT(*) FROM {t}"), [], |r| r.get(0))
                .unwrap()
        };
        assert_eq!(count(&snap, "files"), 1);
        assert_eq!(count(&snap, "holders"), 1);
        assert_eq!(count(&snap, "holder_counts"), 1, "kept by its triggers");
        assert_eq!(count(&snap, "hosted"), 0);
        assert_eq!(count(&snap, "queue"), 0);
        assert_eq!(
            snap.folders_below(Path::new("/")).unwrap().len(),
            1,
            "folders carried"
        );
        assert_eq!(snap.meta("k").unwrap().as_deref(), Some("v"));
        drop(snap);
        assert_eq!(check_catalog(&copy).unwrap(), 1);

        // Installed in a state folder whose new catalog hosts a chunk: the chunk stays.
        let state = dir.path().join("state");
        std::fs::create_dir(&state).unwrap();
        let db = state.join("catalog.db");
        let fresh = Catalog::open(&db).unwrap();
        fresh
            .conn
            .execute_batch(
                "INSERT INTO hosted (file_id, chunk_no, wire_id, size, hash, desired_rd)
                 VALUES ('cc', 0, 'CC', 1, 'h', 1);",
            )
            .unwrap();
        drop(fresh); // installed at start, before the catalog opens
        std::fs::copy(&copy, state.join(RECOVERED)).unwrap();
        assert!(install_recovered(&state).unwrap());
        assert!(!install_recovered(&state).unwrap(), "installed once");
        let installed = Catalog::open(&db).unwrap();
        assert_eq!(count(&installed, "files"), 1);
        assert_eq!(count(&installed, "hosted"), 1);
        assert!(state.join(REPLACED).exists());
    }

    /// Issue 23, case 6: a snapshot whose backup found its file changed keeps its version row,
    /// so its slot (its fileId, its key) is never given back and sealed again with other bytes.
    /// A file's abandoned version, inserted by the same backup run, is forgotten as before.
    #[test]
    fn an_abandoned_snapshot_keeps_its_slot() {
        use crate::store::catalog::{BackupId, Forget};
        let dir = tempfile::tempdir().unwrap();
        let cat = Catalog::open(&dir.path().join("c.db")).unwrap();
        let (snap, file) = (FileId::from_digest(&[1; 32]), FileId::from_digest(&[2; 32]));
        let slot = SnapshotNo::Numbered(7);
        cat.claim_snapshot(&snap, slot, 0).unwrap();
        for (id, path) in [(&snap, "X'2F73'"), (&file, "X'2F66'")] {
            cat.conn
                .execute(
                    &format!(
                        "INSERT INTO files (file_id, path, version, size, mtime_ns, mode,
                                            content_hash, desired_rd, backup_id, encrypted)
                         VALUES (?1, {path}, 1, 3, 0, 384, 'h', 2, 5, 1)"
                    ),
                    [id.key()],
                )
                .unwrap();
        }
        let abandoned = Forget::Abandoned {
            backup: BackupId(5),
        };
        assert!(!cat.forget(&snap, abandoned, 0).unwrap(), "snapshot kept");
        assert!(!cat.release_snapshot(&snap).unwrap());
        assert_eq!(cat.next_snapshot_no().unwrap(), 8);
        assert!(
            cat.forget(&file, abandoned, 0).unwrap(),
            "a file's forgotten"
        );
    }

    /// Issue 23, case 6: a version is resumed (sealed again under its key) only where every
    /// chunk ever sent is recorded, with this content's bytes. An unfinished encrypted version
    /// that a resumed backup found changed, or that came with a recovered catalog (more chunks
    /// may have been sent after the snapshot), is never resumed; a complete one is.
    #[test]
    fn an_unfinished_encrypted_version_is_resumed_only_while_its_records_hold() {
        const A: &str = "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa";
        const B: &str = "bbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbb";
        let dir = tempfile::tempdir().unwrap();
        let cat = Catalog::open(&dir.path().join("c.db")).unwrap();
        cat.conn
            .execute_batch(
                "INSERT INTO files (file_id, path, version, size, mtime_ns, mode, content_hash,
                                    desired_rd, complete, encrypted)
                 VALUES ('aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa', X'2F61', 1, 3, 5, 420, 'h', 2, 0, 1),
                        ('bbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbb', X'2F62', 1, 3, 5, 420, 'h', 2, 1, 1),
                        ('cccccccccccccccccccccccccccccccccccccccccccccccccccccccccccccccc', X'2F63', 1, 3, 5, 420, 'h', 2, 0, 0);",
            )
            .unwrap();
        let found = |path: &str| {
            cat.sealed_version(Path::new(path), 3, 5, "h")
                .unwrap()
                .map(|f| f.file_id.key())
        };
        assert_eq!(found("/a").as_deref(), Some(A), "unfinished here: resumed");
        assert_eq!(
            cat.sealed_version(Path::new("/a"), 3, 6, "h").unwrap(),
            None
        );
        assert_eq!(found("/c"), None, "not encrypted");
        // A resumed backup found the file changed: resumed no more while unfinished.
        let (a, b) = (FileId::parse(A).unwrap(), FileId::parse(B).unwrap());
        cat.stop_resuming(&b).unwrap();
        assert_eq!(found("/b").as_deref(), Some(B), "complete: still resumed");
        cat.stop_resuming(&a).unwrap();
        assert_eq!(found("/a"), None, "unfinished, found changed: not resumed");
        cat.conn
            .execute_batch("UPDATE files SET no_resume = 0")
            .unwrap();
        assert_eq!(found("/a").as_deref(), Some(A));
        cat.adopt_snapshot(&FileId::from_digest(&[1; 32]), SnapshotNo::Numbered(9), 9)
            .unwrap();
        assert_eq!(found("/a"), None, "unfinished, recovered: not resumed");
        assert_eq!(
            found("/b").as_deref(),
            Some(B),
            "complete: every chunk recorded"
        );
    }

    #[test]
    fn a_snapshot_file_cut_short_or_changed_is_not_whole() {
        let dir = tempfile::tempdir().unwrap();
        let db = dir.path().join("db");
        std::fs::write(&db, vec![7u8; 10_000]).unwrap();
        let out = dir.path().join("snap");
        write_file(&db, &out).unwrap();
        let open = || {
            std::fs::File::options()
                .read(true)
                .write(true)
                .open(&out)
                .unwrap()
        };
        assert_eq!(check_file(&mut open()), Ok(()));
        let f = open();
        f.set_len((HEADER_LEN + 5_000) as u64).unwrap();
        assert!(check_file(&mut open()).unwrap_err().contains("5000 bytes"));
        std::fs::write(&out, [&header(3, &[0; 32])[..], b"abc"].concat()).unwrap();
        assert!(check_file(&mut open()).unwrap_err().contains("hash"));
    }

    #[test]
    fn headers_round_trip_and_check_the_bytes() {
        let dir = tempfile::tempdir().unwrap();
        let db = b"database bytes";
        let hash: [u8; 32] = Sha256::digest(db).into();
        let h = header(db.len() as u64, &hash);
        assert_eq!(parse_header(&h), Some((db.len() as u64, hash)));
        let file = |bytes: &[u8]| {
            let p = dir.path().join("db");
            std::fs::write(&p, bytes).unwrap();
            p
        };
        assert!(check_database(&h, &file(db)).is_ok());
        assert!(check_database(&h, &file(b"database bytez")).is_err());
        assert!(check_database(&h, &file(b"database")).is_err());
        assert!(check_database(&h, &dir.path().join("none")).is_err());
        assert!(parse_header(b"PSCATLG2").is_none());
        // A written snapshot file: header, then the database, whole.
        let out = dir.path().join("snap");
        let len = write_file(&file(db), &out).unwrap();
        let written = std::fs::read(&out).unwrap();
        assert_eq!(len as usize, written.len());
        assert_eq!(&written[..HEADER_LEN], &h[..]);
        assert_eq!(&written[HEADER_LEN..], db);
    }

    #[test]
    fn the_snapshot_shown_is_the_newest_a_recover_finds() {
        let newest = |rows: Vec<SnapshotRow>| newest_findable(rows).map(|r| (r.slot, r.at_rd));
        let s = |day, n| SnapshotNo::Dated(Slot { day, n });
        // Numbered: the newest at its RD, whatever the dated ones.
        assert_eq!(
            newest(vec![row(4, 0, true), numbered(1, true), numbered(2, false)]),
            Some((SnapshotNo::Numbered(1), true))
        );
        assert_eq!(newest(vec![]), None);
        assert_eq!(
            newest(vec![row(4, 0, true), row(4, 2, true), row(4, 3, false)]),
            Some((s(4, 2), true))
        );
        // Day 5's anchor reached no peer: a recover finds day 4, not day 5's later snapshot.
        assert_eq!(
            newest(vec![row(4, 0, true), row(5, 0, false), row(5, 1, true)]),
            Some((s(4, 0), true))
        );
        // None found: the newest, below its RD.
        assert_eq!(
            newest(vec![row(5, 0, false), row(5, 1, true)]),
            Some((s(5, 1), false))
        );
    }

    /// Issue 24, case 11: a recovered catalog expires nothing (every file looks deleted while
    /// the watched folders are empty) until the hold is lifted (`restore --all`, or 7 days).
    #[test]
    fn a_recovered_catalog_expires_nothing_until_the_hold_is_lifted() {
        use crate::store::catalog::Forget;
        let dir = tempfile::tempdir().unwrap();
        let cat = Catalog::open(&dir.path().join("c.db")).unwrap();
        let f = FileId::from_digest(&[3; 32]);
        cat.conn
            .execute(
                "INSERT INTO files (file_id, path, version, size, mtime_ns, mode, content_hash, desired_rd, complete)
                 VALUES (?1, X'2F66', 1, 3, 0, 420, 'h', 2, 1)",
                [f.key()],
            )
            .unwrap();
        cat.set_meta(WAIT_RECOVER, "1").unwrap();
        cat.adopt_snapshot(&FileId::from_digest(&[4; 32]), SnapshotNo::Numbered(2), 2)
            .unwrap();
        assert_eq!(cat.meta(WAIT_RECOVER).unwrap(), None, "snapshots go on");
        cat.mark_deleted(Path::new("/f"), 5).unwrap();
        let expired = Forget::DeletedExpired { keep_deleted_ms: 0 };
        assert!(!cat.forget(&f, expired, 0).unwrap(), "held");
        cat.delete_meta(EXPIRY_HOLD).unwrap();
        assert!(cat.forget(&f, expired, 0).unwrap());
    }

    #[test]
    fn a_number_is_given_back_only_while_nothing_of_it_was_sent() {
        let dir = tempfile::tempdir().unwrap();
        let cat = Catalog::open(&dir.path().join("c.db")).unwrap();
        let unsent = FileId::from_digest(&[1; 32]);
        cat.claim_snapshot(&unsent, SnapshotNo::Numbered(1), 0)
            .unwrap();
        assert!(cat.release_snapshot(&unsent).unwrap());
        assert_eq!(cat.next_snapshot_no().unwrap(), 1, "1 is free again");
        // Once its version row exists (its backup began), the number stays used.
        let sent = FileId::from_digest(&[2; 32]);
        cat.claim_snapshot(&sent, SnapshotNo::Numbered(1), 0)
            .unwrap();
        cat.conn
            .execute(
                "INSERT INTO files (file_id, path, version, size, mtime_ns, mode, content_hash, desired_rd)
                 VALUES (?1, X'2F73', 1, 3, 0, 384, 'h', 2)",
                [sent.key()],
            )
            .unwrap();
        assert!(!cat.release_snapshot(&sent).unwrap());
        assert_eq!(cat.next_snapshot_no().unwrap(), 2);
    }
}
